#!/usr/bin/env python3
"""The push tests' receiver: examples/push/receiver.py (standardwebhooks + cloudevents), with
faults the test turns on and off through a control file read at every request:

    {"status": 500}          answer this status without handling (after verifying)
    {"sleep": 3}             wait this long before answering (the push service times out)
    {"poison": ["K1"]}       answer 400 (and why) for events whose subject or sequence is listed

Prints one JSON line per request: {"status", "webhook_id", "id", "subject", "sequence",
"handled"} ("handled" false for a refusal or a repeat of a webhook id already handled).

    python push_receiver.py --port P --secret-env S --control FILE
"""

import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "push"))
from receiver import Receiver, serve  # noqa: E402

out = threading.Lock()


def say(line: dict) -> None:
    with out:
        print(json.dumps(line), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secret-env", required=True)
    ap.add_argument("--control", required=True)
    args = ap.parse_args()

    handled = []
    receiver = Receiver(os.environ[args.secret_env], handle=lambda e: handled.append(e))
    inner = receiver.receive

    def control() -> dict:
        try:
            with open(args.control) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def receive(headers: dict, body: bytes) -> int:
        c = control()
        if c.get("sleep"):
            time.sleep(c["sleep"])
        line = {"webhook_id": headers.get("webhook-id"), "id": headers.get("ce-id"),
                "subject": headers.get("ce-subject"), "sequence": headers.get("ce-sequence"),
                "sender": headers.get("user-agent"), "at": time.time()}
        try:
            receiver.webhook.verify(body, headers, json_parse=False)
        except Exception:
            say({**line, "status": 401, "handled": False})
            return 401
        status = c.get("status")
        if status is None and (line["subject"] in c.get("poison", []) or line["sequence"] in c.get("poison", [])):
            say({**line, "status": 400, "handled": False})
            return (400, f"unknown order {line['subject']}".encode())
        if status is not None:
            say({**line, "status": status, "handled": False})
            return status
        before = len(handled)
        status = inner(headers, body)
        say({**line, "status": status, "handled": len(handled) > before})
        return status

    receiver.receive = receive
    server = serve(receiver, args.port)
    say({"listening": args.port})
    server.serve_forever()


if __name__ == "__main__":
    main()
