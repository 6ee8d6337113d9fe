#!/usr/bin/env python3
"""An external system reading its mes-events consumer, in Python.

Connects as the system (its NKey seed from `mes-events provision credentials`, and its own
inbox prefix, which its permissions require), binds to its durable consumer by name (the
system's account holds only that consumer's pulls and acks, not the JetStream API, and
`pull_subscribe_bind` does not look the consumer up), pulls from it, decodes each
CloudEvent with the official SDK, handles it, and acks it. The consumer is durable: stop this
program at any point and start it again, and it resumes after the last acked event.

    pip install -r requirements.txt
    python consumer.py --url nats://mes-nats:4222 --system erp --seed erp.nk
    # over TLS, with a client certificate: --tls-ca plant-ca.pem --tls-cert erp.crt --tls-key erp.key

Prints one JSON line per event (id, type, subject, sequence).

With --validate, each event's data is also checked against the exact schema its `dataschema`
names, fetched from the bus: `mes-events provision apply` keeps every schema of the catalog in
the key-value bucket MES_SCHEMAS, under the path the URI has below the catalog's `schemaBase`
(itself in the bucket's `catalog.json`). A system may read that bucket with a direct get, not
write it. The line then also says "valid" and, when not, the first error.
"""

import argparse
import asyncio
import json
import ssl

import jsonschema
import nats
import referencing
import referencing.jsonschema
from urllib.parse import urljoin, urldefrag

from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat


BUCKET = "MES_SCHEMAS"


class BusSchemas:
    """Schemas read from the MES_SCHEMAS bucket, by URI, each fetched once."""

    def __init__(self, nc):
        self.nc = nc
        self.docs = {}
        self.base = None

    async def _get(self, key: str) -> dict:
        # A direct get with the key in the subject: served by the bucket's stream itself, so it
        # works from the system's own account (a KV client's get would first ask for the
        # stream's info, which the system may not).
        msg = await self.nc.request(f"$JS.API.DIRECT.GET.KV_{BUCKET}.$KV.{BUCKET}.{key}", b"", timeout=5)
        if msg.headers and msg.headers.get("Status"):
            raise LookupError(f"{key} is not in bucket {BUCKET}: {msg.headers}")
        return json.loads(msg.data)

    async def schema(self, uri: str) -> dict:
        if self.base is None:
            self.base = (await self._get("catalog.json"))["schemaBase"]
        pending = [uri]
        while pending:  # the schema and every schema it refers to
            u = pending.pop()
            if u in self.docs:
                continue
            if not u.startswith(self.base):
                raise LookupError(f"{u} is not under the catalog's schema base {self.base}")
            doc = self.docs[u] = await self._get(u[len(self.base):])
            for ref in refs(doc):
                target, _ = urldefrag(urljoin(u, ref))
                if target and target not in self.docs:
                    pending.append(target)
        return self.docs[uri]

    def registry(self) -> referencing.Registry:
        return referencing.Registry().with_resources(
            (u, referencing.Resource.from_contents(d, default_specification=referencing.jsonschema.DRAFT202012))
            for u, d in self.docs.items())


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


async def check(schemas: BusSchemas, event) -> dict:
    """Whether the event's data is valid against the schema its dataschema names."""
    uri = event.get_attributes()["dataschema"]
    schema = await schemas.schema(uri)
    validator = jsonschema.Draft202012Validator(
        schema, registry=schemas.registry(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    data = event.get_data()
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    out = {"dataschema": uri, "valid": error is None}
    if error is not None:
        out["error"] = f"/{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
    return out


def handle(event, checked=None) -> None:
    """Your integration goes here. Raise to have the event redelivered later."""
    a = event.get_attributes()
    line = {"id": a["id"], "type": a["type"], "subject": a.get("subject"), "sequence": a.get("sequence")}
    line.update(checked or {})
    print(json.dumps(line), flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    ap.add_argument("--system", required=True, help="the system's name in nats/systems/")
    ap.add_argument("--seed", required=True, help="the system's NKey seed file")
    ap.add_argument("--stream", default="MES_EVENTS")
    ap.add_argument("--consumer", help="durable name (default: the system's name)")
    ap.add_argument("--max", type=int, default=0, help="stop after this many events (0: run forever)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--validate", action="store_true",
                    help="check each event against its schema, fetched from the bus")
    ap.add_argument("--tls-ca", help="the CA (PEM) the server's certificate chains to (the plant's)")
    ap.add_argument("--tls-cert", help="this system's client certificate (PEM), where the server verifies clients")
    ap.add_argument("--tls-key", help="its private key (PEM)")
    args = ap.parse_args()

    tls = None
    if args.tls_ca or args.tls_cert:
        tls = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
    nc = await nats.connect(args.url, nkeys_seed=args.seed, inbox_prefix=f"_INBOX_{args.system}",
                            tls=tls)
    js = nc.jetstream()
    schemas = BusSchemas(nc)
    sub = await js.pull_subscribe_bind(consumer=args.consumer or args.system, stream=args.stream)
    handled = 0
    while not args.max or handled < args.max:
        # Ask only for what will be handled: an event fetched but not acked waits ack_wait.
        want = args.batch if not args.max else min(args.batch, args.max - handled)
        try:
            msgs = await sub.fetch(batch=want, timeout=5)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            event = from_http(HTTPMessage(headers=dict(msg.headers or {}), body=msg.data), JSONFormat())
            try:
                checked = await check(schemas, event) if args.validate else None
                handle(event, checked)
            except Exception:
                await msg.nak(delay=5)
                continue
            await msg.ack_sync()  # confirmed by the server: a restart never sees it again
            handled += 1
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
