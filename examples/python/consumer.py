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

Prints one JSON line per event (id, type, subject, sequence).
"""

import argparse
import asyncio
import json

import nats
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat


def handle(event) -> None:
    """Your integration goes here. Raise to have the event redelivered later."""
    a = event.get_attributes()
    print(json.dumps({"id": a["id"], "type": a["type"], "subject": a.get("subject"),
                      "sequence": a.get("sequence")}), flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="nats://127.0.0.1:4222")
    ap.add_argument("--system", required=True, help="the system's name in nats/systems/")
    ap.add_argument("--seed", required=True, help="the system's NKey seed file")
    ap.add_argument("--stream", default="MES_EVENTS")
    ap.add_argument("--consumer", help="durable name (default: the system's name)")
    ap.add_argument("--max", type=int, default=0, help="stop after this many events (0: run forever)")
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()

    nc = await nats.connect(args.url, nkeys_seed=args.seed, inbox_prefix=f"_INBOX_{args.system}")
    js = nc.jetstream()
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
                handle(event)
            except Exception:
                await msg.nak(delay=5)
                continue
            await msg.ack_sync()  # confirmed by the server: a restart never sees it again
            handled += 1
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
