"""Async probe: prints one line per attempt, then fails or succeeds.
Event knobs: {"marker": "tok", "fail": true}.  As a destination it prints
the record it received ("RECORD <json>")."""
import json


def handler(event, context):
    if isinstance(event, dict) and "requestContext" in event:
        print("RECORD " + json.dumps(event, sort_keys=True), flush=True)
        return "recorded"
    print("ATTEMPT %s %s" % (event.get("marker"), context.aws_request_id), flush=True)
    if event.get("fail"):
        raise RuntimeError("failing on purpose: " + str(event.get("marker")))
    return {"ok": event.get("marker")}
