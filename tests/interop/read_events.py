#!/usr/bin/env python3
"""Reads every message of JetStream streams with nats-py, decodes each with the official Python
CloudEvents SDK, and validates its data with the `jsonschema` package against the schema its
`dataschema` names (mapped to the files under schemas/).

The SDK has no NATS binding; its HTTP binary binding reads `ce-*` headers by the same rules
(lower-case prefix, percent-decoding, `ce-datacontenttype`), and structured messages carry
`Content-Type: application/cloudevents+json` in both bindings.

Prints one JSON summary line; exits 0 only if exactly --expect events decoded and validated.
"""

import argparse
import asyncio
import json
import pathlib
import sys

import nats
from cloudevents.core.bindings.http import HTTPMessage, from_http
from cloudevents.core.formats.json import JSONFormat
from jsonschema import Draft202012Validator
from referencing import Registry, Resource


def load_schemas(root: pathlib.Path):
    catalog = json.loads((root / "catalog.json").read_text())
    base = catalog["schemaBase"]
    resources = []
    for path in root.rglob("*.json"):
        if path.name.endswith(".examples.json") or path.name in ("catalog.json", "asyncapi.json"):
            continue
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return base, Registry().with_resources(resources)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--stream", action="append", required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--schemas", required=True)
    args = ap.parse_args()

    base, registry = load_schemas(pathlib.Path(args.schemas))
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    decoded, errors, by_type = 0, [], {}
    for stream in args.stream:
        info = await js.stream_info(stream)
        last = info.state.last_seq
        if last == 0:
            continue
        sub = await js.subscribe(">", stream=stream, ordered_consumer=True)
        while True:
            msg = await sub.next_msg(timeout=10)
            seq = msg.metadata.sequence.stream
            try:
                event = from_http(HTTPMessage(headers=dict(msg.headers or {}), body=msg.data), JSONFormat())
                attrs = event.get_attributes()
                for required in ("id", "source", "type", "subject", "time", "dataschema",
                                 "sequence", "partitionkey", "recordedtime"):
                    if attrs.get(required) in (None, ""):
                        raise ValueError(f"attribute {required} missing")
                dataschema = str(attrs["dataschema"])
                if not dataschema.startswith(base):
                    raise ValueError(f"dataschema {dataschema} is outside the catalog")
                schema = registry.contents(dataschema)
                data = event.get_data()
                Draft202012Validator(schema, registry=registry).validate(data)
                if data is None or attrs["subject"] != attrs["partitionkey"]:
                    raise ValueError("subject and partitionkey differ")
                decoded += 1
                by_type[attrs["type"]] = by_type.get(attrs["type"], 0) + 1
            except Exception as e:  # report every failure, keep reading
                errors.append(f"{stream} #{seq}: {type(e).__name__}: {e}")
            if seq >= last:
                break
        await sub.unsubscribe()
    await nc.close()
    print(json.dumps({"decoded": decoded, "errors": errors, "by_type": by_type}))
    return 0 if decoded == args.expect and not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
