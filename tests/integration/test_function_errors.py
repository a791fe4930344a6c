"""How function failures reach the caller: the status stays 200, the header
X-Amz-Function-Error says Unhandled, and the body has Lambda's shape."""
import re


from harness import SLOW


def assert_unhandled(r):
    assert r.status == 200, r
    assert r.function_error == "Unhandled", r
    return r.json


def test_python_exception(deploy, invoke):
    name = deploy("py_error")
    body = assert_unhandled(invoke(name, {}))
    assert body["errorType"] == "CustomError"
    assert body["errorMessage"] == "boom from py_error"
    assert isinstance(body["stackTrace"], list) and body["stackTrace"], body
    assert any("app.py" in line for line in body["stackTrace"]), body["stackTrace"]


def test_python_exception_environment_survives(deploy, invoke):
    # A handled-by-runtime exception does not kill the environment.
    name = deploy("py_echo")
    err = deploy("py_error")
    assert_unhandled(invoke(err, {}))
    assert_unhandled(invoke(err, {}))
    a = invoke(name, {}).json
    assert invoke(name, {}).json["env_id"] == a["env_id"]


def test_node_exception(deploy, invoke):
    name = deploy("node_error", Runtime="nodejs20.x", Handler="index.handler")
    body = assert_unhandled(invoke(name, {}))
    assert body["errorType"] == "Error"
    assert body["errorMessage"] == "boom from node"
    trace = body.get("trace", body.get("stackTrace"))
    assert isinstance(trace, list) and trace, body


def test_timeout(deploy, invoke):
    name = deploy("py_timeout", Timeout=1)
    r = invoke(name, {"seconds": 30}, LogType="Tail")
    body = assert_unhandled(r)
    assert re.search(r"Task timed out after 1\.00 seconds", body["errorMessage"]), body
    assert r.request_id in body["errorMessage"], body
    # The environment was reset: the next invoke runs (and times out) again.
    body2 = assert_unhandled(invoke(name, {"seconds": 30}))
    assert "Task timed out after 1.00 seconds" in body2["errorMessage"]
    # A short sleep under the limit succeeds.
    r3 = invoke(name, {"seconds": 0})
    assert r3.function_error is None, r3
    assert r3.json == "woke up"


def test_timeout_tail_log(deploy, invoke):
    name = deploy("py_timeout", Timeout=2)
    r = invoke(name, {"seconds": 30}, LogType="Tail")
    assert_unhandled(r)
    assert r.log_tail and "Task timed out after 2.00 seconds" in r.log_tail, r.log_tail
    assert f"REPORT RequestId: {r.request_id}" in r.log_tail


def test_crash_exit_error(deploy, invoke):
    name = deploy("py_crash")
    body = assert_unhandled(invoke(name, {}))
    assert body["errorType"] == "Runtime.ExitError", body
    assert re.fullmatch(r"RequestId: \S+ Error: Runtime exited with error: exit status 1",
                        body["errorMessage"]), body


def test_crash_then_recovers(deploy, invoke):
    # After a crash the next invoke gets a fresh environment (cold start), not an error.
    name = deploy("py_crash")
    echo = deploy("py_echo")
    assert_unhandled(invoke(name, {}))
    assert_unhandled(invoke(name, {}))
    assert invoke(echo, {}).function_error is None


def test_out_of_memory(deploy, invoke, flicker):
    name = deploy("py_oom", MemorySize=128, Timeout=60 * SLOW)
    body = assert_unhandled(invoke(name, {}))
    if body.get("errorType") == "Runtime.OutOfMemory":
        pass
    else:
        assert body.get("errorType") == "Runtime.ExitError", body
        assert "signal: killed" in body["errorMessage"], body
    assert flicker.health() == 200
    # A bounded allocation well under the limit then works in a new environment.
    r = invoke(name, {"limit_mb": 16})
    assert r.function_error is None, r


def test_init_error_python(deploy, invoke):
    name = deploy("py_init_error")
    body = assert_unhandled(invoke(name, {}))
    assert body["errorType"] == "Runtime.ImportModuleError", body
    assert "Unable to import module 'app'" in body["errorMessage"], body
    assert "flicker_no_such_module_xyz" in body["errorMessage"], body


def test_handler_not_found(deploy, invoke):
    name = deploy("py_echo", Handler="app.nosuchfunction")
    body = assert_unhandled(invoke(name, {}))
    assert body["errorType"] == "Runtime.HandlerNotFound", body


def test_provided_bootstrap_exits(deploy, invoke):
    name = deploy("provided_exit", Runtime="provided.al2023", Handler="x")
    body = assert_unhandled(invoke(name, {}))
    assert body["errorType"] == "Runtime.ExitError", body
    assert "Runtime exited with error: exit status 3" in body["errorMessage"], body


def test_provided_missing_bootstrap(deploy, invoke):
    from harness import make_zip
    name = deploy(zip_bytes=make_zip(extra={"README": "no bootstrap here"}),
                  Runtime="provided.al2023", Handler="x")
    r = invoke(name, {})
    # Lambda: Runtime.InvalidEntrypoint; the caller sees a function error.
    assert r.function_error == "Unhandled", r
    assert r.json["errorType"] in ("Runtime.InvalidEntrypoint", "Runtime.ExitError"), r.json
