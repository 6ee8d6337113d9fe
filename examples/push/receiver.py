#!/usr/bin/env python3
"""A system that cannot pull, receiving mes-events webhooks, in Python.

`mes-events push` POSTs each event as a CloudEvents HTTP request, signed as Standard Webhooks
says. This receiver verifies the signature with the specification's own library
(`standardwebhooks`), refusing a tampered body or a timestamp more than 5 minutes off (401),
decodes the CloudEvent with the official SDK (or each event of a batch, in batched mode), skips
an event it already has (by `source` and `id`: an event comes again when an answer was lost),
handles it, and answers 204. Answer anything else and the event (or the batch) is sent again
later, its key waiting meanwhile; events of a batch already handled are skipped then.

    pip install -r requirements.txt
    WEBHOOK_SECRET=whsec_... python receiver.py --port 8080

Prints one JSON line per event handled (id, type, subject, sequence).
"""

import argparse
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from standardwebhooks import Webhook, WebhookVerificationError

# Batched mode (`mode = "batched"`): a JSON array of events, at most one per key.
BATCH = "application/cloudevents-batch+json"


def handle(event) -> None:
    """Your integration goes here. Raise to have the event sent again later."""
    a = event.get_attributes()
    print(json.dumps({"id": a["id"], "type": a["type"], "subject": a.get("subject"),
                      "sequence": a.get("sequence")}), flush=True)


class Receiver:
    """Verifies, decodes and de-duplicates; `handle` does the work."""

    def __init__(self, secret: str, handle=handle):
        self.webhook = Webhook(secret)
        self.handle = handle
        self.seen = set()  # events handled (keep them in your database in production)
        self.lock = threading.Lock()

    def receive(self, headers: dict, body: bytes) -> int:
        """The HTTP status to answer."""
        try:
            self.webhook.verify(body, headers, json_parse=False)
        except WebhookVerificationError:
            return 401
        if headers.get("content-type", "").startswith(BATCH):
            events = [JSONFormat().read(None, json.dumps(e)) for e in json.loads(body)]
        else:
            events = [from_http(HTTPMessage(headers=headers, body=body), JSONFormat())]
        with self.lock:
            for event in events:
                a = event.get_attributes()
                key = f"{a['source']}#{a['id']}"  # unique per event, the same on every retry
                if key in self.seen:
                    continue  # delivered again after a lost answer: already handled
                self.handle(event)
                self.seen.add(key)
        return 204


def serve(receiver: Receiver, port: int, host: str = "127.0.0.1", tls_cert: str = None,
          tls_key: str = None, tls_client_ca: str = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status = receiver.receive(headers, body)
            except Exception as e:
                status = (500, str(e).encode())
            # A status, or a status and a body saying why (the sender keeps an excerpt of it).
            status, text = status if isinstance(status, tuple) else (status, b"")
            self.send_response(status)
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    if tls_cert:
        # HTTPS with the plant's certificate; with a client CA, only senders it signed get in.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_cert, tls_key)
        if tls_client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(tls_client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--secret-env", default="WEBHOOK_SECRET",
                    help="environment variable holding the whsec_ secret")
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="and its key (PEM)")
    ap.add_argument("--tls-client-ca", help="accept only senders with a certificate this CA signed")
    args = ap.parse_args()
    server = serve(Receiver(os.environ[args.secret_env]), args.port, args.host,
                   args.tls_cert, args.tls_key, args.tls_client_ca)
    server.serve_forever()


if __name__ == "__main__":
    main()
