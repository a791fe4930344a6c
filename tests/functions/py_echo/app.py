"""Echo: returns the event, the context's fields, the environment and facts
that identify the execution environment (ENV_ID is fixed at import, COUNT
counts invokes in this environment).  Event knobs:
  {"sleep": seconds}       sleep before answering (reports start/end times)
  {"print": "text"}        print it (goes to the function's log)
  {"marker": "tok"}        print "STARTED tok" at the start (flushed)
  {"big": n}               answer with a string of n bytes instead
  {"blob": "..."}          answer only with the blob's length
  {"write_tmp": "text"}    write /tmp/flicker-echo.txt
"""
import os
import sys
import time
import uuid

ENV_ID = uuid.uuid4().hex
COUNT = 0
INIT_TIME = time.time()
try:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "marker.txt")) as f:
        CODE_MARKER = f.read().strip()
except OSError:
    CODE_MARKER = None


def handler(event, context):
    global COUNT
    COUNT += 1
    start = time.time()
    if isinstance(event, dict):
        if "marker" in event:
            print(f"STARTED {event['marker']}", flush=True)
        if "print" in event:
            print(event["print"], flush=True)
        if "blob" in event:
            return {"blob_len": len(event["blob"])}
        if "big" in event:
            return "x" * int(event["big"])
        if "sleep" in event:
            time.sleep(float(event["sleep"]))
        if "write_tmp" in event:
            with open("/tmp/flicker-echo.txt", "w") as f:
                f.write(event["write_tmp"])
    try:
        with open("/tmp/flicker-echo.txt") as f:
            tmp = f.read()
    except OSError:
        tmp = None
    return {
        "event": event,
        "env_id": ENV_ID,
        "count": COUNT,
        "pid": os.getpid(),
        "uid": os.getuid(),
        "code_marker": CODE_MARKER,
        "tmp": tmp,
        "start": start,
        "end": time.time(),
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
        "context": {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "invoked_function_arn": context.invoked_function_arn,
            "memory_limit_in_mb": str(context.memory_limit_in_mb),
            "aws_request_id": context.aws_request_id,
            "log_group_name": context.log_group_name,
            "log_stream_name": context.log_stream_name,
            "remaining_time_in_millis": context.get_remaining_time_in_millis(),
            "client_context": (context.client_context.custom
                               if getattr(context, "client_context", None) is not None
                               and getattr(context.client_context, "custom", None) is not None
                               else None),
        },
        "env": dict(os.environ),
    }
