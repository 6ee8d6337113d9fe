#!/usr/bin/env python3
"""The push tests' receiver: examples/push/receiver.py (standardwebhooks + cloudevents), with
faults the test turns on and off through a control file read at every request:

    {"status": 500}          answer this status without handling (after verifying)
    {"sleep": 3}             wait this long before answering (the push service times out)
    {"poison": ["K1"]}       answer 400 (and why) for a request holding an event whose subject or
                             sequence is listed (the whole batch, in batched mode)
    {"fail": ["S1"]}         answer 500 for a request holding an event whose sequence is listed
                             (as a receiver does whose handler raises on that event)

Prints one JSON line per event of each request: {"status", "webhook_id", "id", "subject",
"sequence", "batch", "handled"} ("handled" false for a refusal or an event already handled;
"batch" the number of events in the request).

    python push_receiver.py --port P --secret-env S --control FILE [--tls-cert C --tls-key K [--tls-client-ca CA]]
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "push"))
from receiver import BATCH, Receiver, serve  # noqa: E402

out = threading.Lock()


def say(line: dict) -> None:
    with out:
        print(json.dumps(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret-env", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    args = ap.parse_args()

    handled = []
    # (thread, event id) of each event handled: a request's own are those of its thread.
    receiver = Receiver(os.environ[args.secret_env],
                        handle=lambda e: handled.append((threading.get_ident(), e.get_attributes()["id"])))
    inner = receiver.receive

    def control() -> dict:
        try:
            with open(args.control) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def events_of(headers: dict, body: bytes) -> list:
        """id, subject and sequence of each event the request holds, as the test sees them."""
        content_type = headers.get("content-type", "")
        if content_type.startswith(BATCH) or content_type.startswith("application/cloudevents+json"):
            try:
                events = json.loads(body)
                events = events if isinstance(events, list) else [events]
                return [{"id": e.get("id"), "subject": e.get("subject"), "sequence": e.get("sequence")}
                        for e in events]
            except ValueError:
                return [{}]
        return [{"id": headers.get("ce-id"), "subject": headers.get("ce-subject"),
                 "sequence": headers.get("ce-sequence")}]

    def receive(headers: dict, body: bytes) -> int:
        c = control()
        if c.get("sleep"):
            time.sleep(c["sleep"])
        request = {"webhook_id": headers.get("webhook-id"), "sender": headers.get("user-agent"),
                   "at": time.time()}
        events = events_of(headers, body)
        lines = [{**request, **e, "batch": len(events)} for e in events]

        def answer(status, handled=()):
            for line in lines:
                say({**line, "status": status, "handled": line["id"] in handled})
            return status

        try:
            receiver.webhook.verify(body, headers, json_parse=False)
        except Exception:
            return answer(401)
        status = c.get("status")
        poison = c.get("poison", [])
        bad = [l for l in lines if l["subject"] in poison or l["sequence"] in poison]
        if status is None and bad:
            answer(400)
            return (400, f"unknown order {bad[0]['subject']}".encode())
        if status is None and any(l["sequence"] in c.get("fail", []) for l in lines):
            answer(500)
            return (500, b"handler raised")
        if status is not None:
            return answer(status)
        before = len(handled)
        status = inner(headers, body)
        me = threading.get_ident()
        return answer(status, {i for (t, i) in handled[before:] if t == me})

    receiver.receive = receive
    server = serve(receiver, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                   tls_client_ca=args.tls_client_ca)
    say({"listening": args.port})
    server.serve_forever()


if __name__ == "__main__":
    main()
