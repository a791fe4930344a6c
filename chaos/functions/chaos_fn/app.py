"""The chaos suite's function.  It shares nothing with other invocations
(functions are isolated), so everything the suite learns comes back in the
response or in the function's log:

  ENV      a random id drawn once per execution environment (at Init)
  COUNT    invocations this environment has started, 1, 2, 3, ...

Each invocation writes one line, in a single write(2) (print() writes the
text and the newline separately, and the platform appends the output of
concurrent environments to one log file as it arrives, so two writes can
be split by another environment's line):

  CHAOS <kind> <id> <env> <count> <start> <end> <request id>

and returns the same facts as JSON.  One environment serves one request at
a time, so for one ENV the counts are distinct and the [start, end]
intervals never overlap; a repeated count or an overlap would mean two
requests were run by one environment at once.

Event knobs: {"id": "...", "kind": "sync"|"event", "sleep": seconds}.
As an on-success destination it receives Lambda's record and prints
"CHAOS-DEST <id of the original event>"."""
import os
import time
import uuid

ENV = uuid.uuid4().hex
COUNT = 0


def emit(line):
    os.write(1, (line + "\n").encode())


def handler(event, context):
    global COUNT
    if isinstance(event, dict) and "requestContext" in event and "requestPayload" in event:
        payload = event.get("requestPayload") or {}
        emit("CHAOS-DEST %s %s" % (payload.get("id"), event["requestContext"].get("condition")))
        return {"dest": payload.get("id")}
    COUNT += 1
    count = COUNT
    start = time.time()
    pause = float(event.get("sleep", 0) or 0)
    if pause > 0:
        time.sleep(pause)
    end = time.time()
    emit("CHAOS %s %s %s %d %.6f %.6f %s" % (event.get("kind", "sync"), event.get("id"), ENV, count,
                                             start, end, context.aws_request_id))
    return {"id": event.get("id"), "env": ENV, "count": count, "start": start, "end": end,
            "rid": context.aws_request_id, "pid": os.getpid()}
