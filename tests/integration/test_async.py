"""Asynchronous (Event) invocations: 202 only once durable, retries as
Lambda (function errors retried MaximumRetryAttempts times), destinations
with Lambda's record format, and accepted events surviving kill -9.

These tests use their own server with short retry delays
(--async-retry-delays 1,1) so that retries happen within seconds."""
import json
import time
import uuid

import pytest

from harness import SLOW, create_function

ARGS = ("--async-retry-delays", "1,1")


@pytest.fixture
def srv(spawn):
    return spawn(*ARGS)


def attempts(srv, name, marker):
    return [l for l in srv.logs(name)[0].splitlines() if l.startswith(f"ATTEMPT {marker} ")]


def wait_for(pred, timeout=60 * SLOW, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def event(c, name, payload, **kw):
    r = c.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(payload), **kw)
    assert r["StatusCode"] == 202, r
    assert r["Payload"].read() == b""
    return r["ResponseMetadata"]["RequestId"]


def test_function_error_is_retried_twice(srv):
    c = srv.client()
    name = "async-retry-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    marker = uuid.uuid4().hex
    event(c, name, {"marker": marker, "fail": True})
    wait_for(lambda: len(attempts(srv, name, marker)) >= 3, what="three attempts")
    time.sleep(3)  # a fourth attempt would come 1 s after the third
    lines = attempts(srv, name, marker)
    assert len(lines) == 3, lines
    assert len({l.split()[2] for l in lines}) == 1, "retries keep the request id"


def test_maximum_retry_attempts_zero(srv):
    c = srv.client()
    name = "async-noretry-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    c.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    marker = uuid.uuid4().hex
    event(c, name, {"marker": marker, "fail": True})
    wait_for(lambda: attempts(srv, name, marker), what="the first attempt")
    time.sleep(3)
    assert len(attempts(srv, name, marker)) == 1


def test_destinations_get_lambdas_record(srv):
    c = srv.client()
    name = "async-dest-" + uuid.uuid4().hex[:6]
    dest = "async-sink-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    d = create_function(c, dest, "py_async")
    c.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=1,
        DestinationConfig={"OnSuccess": {"Destination": d["FunctionArn"]},
                           "OnFailure": {"Destination": d["FunctionArn"]}})
    ok, bad = uuid.uuid4().hex, uuid.uuid4().hex
    rid_ok = event(c, name, {"marker": ok})
    rid_bad = event(c, name, {"marker": bad, "fail": True})

    def records():
        out = {}
        for line in srv.logs(dest)[0].splitlines():
            if line.startswith("RECORD "):
                rec = json.loads(line[7:])
                out[rec["requestPayload"]["marker"]] = rec
        return out if ok in out and bad in out else None
    recs = wait_for(records, what="both destination records")
    s, f = recs[ok], recs[bad]
    assert s["version"] == "1.0" and s["timestamp"]
    assert s["requestContext"]["condition"] == "Success"
    assert s["requestContext"]["requestId"] == rid_ok
    assert s["requestContext"]["functionArn"].endswith(f":function:{name}:$LATEST")
    assert s["requestContext"]["approximateInvokeCount"] == 1
    assert s["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert s["responsePayload"] == {"ok": ok}
    assert f["requestContext"]["condition"] == "RetriesExhausted"
    assert f["requestContext"]["requestId"] == rid_bad
    assert f["requestContext"]["approximateInvokeCount"] == 2
    assert f["responseContext"]["functionError"] == "Unhandled"
    assert f["responsePayload"]["errorType"] == "RuntimeError"


def test_accepted_events_survive_kill9(srv):
    """An event accepted while the function is throttled (reserved
    concurrency 0) waits in the queue; kill -9 and a restart lose nothing:
    once the function may run again, the event runs."""
    c = srv.client()
    name = "async-durable-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    c.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    markers = [uuid.uuid4().hex for _ in range(5)]
    for m in markers:
        event(c, name, {"marker": m})
    srv.kill9()
    srv.start()
    c = srv.client()
    c.delete_function_concurrency(FunctionName=name)
    for m in markers:
        wait_for(lambda: attempts(srv, name, m), timeout=120 * SLOW, what=f"event {m}")


def test_event_payload_limit(srv):
    c = srv.client()
    name = "async-big-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as ei:
        c.invoke(FunctionName=name, InvocationType="Event",
                 Payload=json.dumps({"x": "y" * (1024 * 1024 + 10)}))
    assert ei.value.response["Error"]["Code"] == "RequestTooLargeException"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_status_shows_the_queue(srv):
    c = srv.client()
    name = "async-status-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    c.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    for _ in range(3):
        event(c, name, {"marker": "q"})
    st = json.loads(srv.raw("GET", "/flicker/status")[2])
    assert st["async"]["queued"] + st["async"]["running"] >= 3
    assert st["async"]["oldest_age_ms"] >= 0
