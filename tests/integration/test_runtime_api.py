"""The Runtime API as a custom runtime sees it (tests/functions/provided_py,
a stdlib-only Python bootstrap): next-invocation headers, the error path,
refusal of double and unknown responses, init errors."""
import json
import time

import pytest

from harness import ACCOUNT, ISOLATION, REGION

pytestmark = pytest.mark.skipif(
    ISOLATION == "microvm",
    reason="this custom runtime is written in Python; the provided microVM image, like Lambda's "
           "provided.al2023, has no Python interpreter (the Runtime API itself is covered on "
           "microVMs by the sh+curl provided_echo runtime and the Python/Node runtimes)")


def deploy_py_runtime(deploy, **kw):
    return deploy("provided_py", Runtime="provided.al2023", Handler="h", **kw)


def test_next_invocation_headers(deploy, invoke):
    name = deploy_py_runtime(deploy, Timeout=7)
    t0 = time.time()
    r = invoke(name, {"mode": "respond", "n": 1})
    t1 = time.time()
    assert r.function_error is None, r
    out = r.json
    h = out["headers"]
    assert out["event"] == {"mode": "respond", "n": 1}
    assert h["lambda-runtime-aws-request-id"] == r.request_id
    assert h["lambda-runtime-invoked-function-arn"] == \
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    assert h.get("lambda-runtime-trace-id"), h
    deadline = int(h["lambda-runtime-deadline-ms"]) / 1000.0
    assert t0 + 7 - 1 <= deadline <= t1 + 7 + 1, (t0, deadline, t1)


def test_error_endpoint(deploy, invoke):
    name = deploy_py_runtime(deploy)
    r = invoke(name, {"mode": "error"})
    assert r.status == 200
    assert r.function_error == "Unhandled", r
    body = r.json
    assert body["errorType"] == "MyCustomError", body
    assert body["errorMessage"] == "custom failure", body
    rec = invoke(name, {"mode": "report"}).json["recorded"]
    assert rec["error_post"] == 202, rec


def test_response_accepted_then_double_refused(deploy, invoke):
    name = deploy_py_runtime(deploy)
    r = invoke(name, {"mode": "double"})
    assert r.function_error is None, r
    assert r.json["event"] == {"mode": "double"}, "the second response replaced the first"
    rec = invoke(name, {"mode": "report"}).json["recorded"]
    assert rec["first_post"] == 202, rec
    assert json.loads(rec["first_post_body"]) == {"status": "OK"}, rec
    assert rec["second_post"] == 400, rec


def test_unknown_request_id_refused(deploy, invoke):
    name = deploy_py_runtime(deploy)
    r = invoke(name, {"mode": "unknown_id"})
    assert r.function_error is None, r
    assert r.json["recorded"]["unknown_id"] == 400, r.json


def test_init_error_reaches_caller(deploy, invoke):
    name = deploy_py_runtime(deploy, Environment={"Variables": {"INIT_FAIL": "1"}})
    r = invoke(name, {})
    assert r.function_error == "Unhandled", r
    body = r.json
    assert body["errorType"] == "MyInitError", body
    assert body["errorMessage"] == "init failed on purpose", body
