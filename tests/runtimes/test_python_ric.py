"""Tests of runtimes/python/bootstrap.py against the fake Runtime API.

Run: /usr/bin/python3 -m pytest tests/runtimes
"""

import json
import os
import re
import time


def body(res):
    return json.loads(res["body"].decode("utf-8"))


CONTEXT_APP = '''
import json, os
def handler(event, context):
    return {
        "event": event,
        "aws_request_id": context.aws_request_id,
        "invoked_function_arn": context.invoked_function_arn,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining": context.get_remaining_time_in_millis(),
        "client_context": None if context.client_context is None else {
            "custom": context.client_context.custom,
            "env": context.client_context.env,
            "app_title": context.client_context.client.app_title,
        },
        "identity_id": context.identity.cognito_identity_id,
        "identity_pool": context.identity.cognito_identity_pool_id,
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "cwd": os.getcwd(),
        "tenant_id": context.tenant_id,
    }
'''


def test_success_with_context_fields(pyric):
    pyric.write("app.py", CONTEXT_APP)
    proc = pyric.start("app.handler")
    cc = {"client": {"app_title": "demo", "installation_id": "i-1"},
          "custom": {"k": "v"}, "env": {"platform": "x"}}
    rid = pyric.api.add_event(
        {"hello": "world", "n": [1, 2.5, None, True]}, timeout_ms=5000,
        headers={"Lambda-Runtime-Trace-Id": "Root=1-abc;Parent=def;Sampled=1",
                 "Lambda-Runtime-Aws-Tenant-Id": "tenant-7",
                 "Lambda-Runtime-Client-Context": json.dumps(cc),
                 "Lambda-Runtime-Cognito-Identity": json.dumps(
                     {"cognitoIdentityId": "id-1",
                      "cognitoIdentityPoolId": "pool-1"})})
    res = pyric.api.wait_result(rid)
    assert res["kind"] == "response"
    assert res["headers"]["Content-Type"] == "application/json"
    b = body(res)
    assert b["event"] == {"hello": "world", "n": [1, 2.5, None, True]}
    assert b["aws_request_id"] == rid
    assert b["invoked_function_arn"] == pyric.api.function_arn
    assert b["function_name"] == "fn"
    assert b["function_version"] == "$LATEST"
    assert b["memory_limit_in_mb"] == "256"  # a str, like AWS's runtime
    assert b["log_group_name"] == "/aws/lambda/fn"
    assert b["log_stream_name"] == "2026/12/07/[$LATEST]abc"
    assert 3000 < b["remaining"] <= 5000
    assert b["client_context"] == {"custom": {"k": "v"},
                                   "env": {"platform": "x"},
                                   "app_title": "demo"}
    assert b["identity_id"] == "id-1" and b["identity_pool"] == "pool-1"
    assert b["trace"] == "Root=1-abc;Parent=def;Sampled=1"
    assert os.path.realpath(b["cwd"]) == os.path.realpath(pyric.task_root)
    assert b["tenant_id"] == "tenant-7"
    pyric.stop(proc)


def test_context_defaults_without_optional_headers(pyric):
    pyric.write("app.py", CONTEXT_APP)
    proc = pyric.start("app.handler")
    b = body(pyric.api.wait_result(pyric.api.add_event({})))
    assert b["client_context"] is None
    assert b["identity_id"] is None and b["identity_pool"] is None
    assert b["trace"] is None
    assert b["tenant_id"] is None
    pyric.stop(proc)


def test_remaining_time_decreases(pyric):
    pyric.write("app.py", '''
import time
def handler(event, context):
    a = context.get_remaining_time_in_millis()
    time.sleep(0.3)
    b = context.get_remaining_time_in_millis()
    return [a, b]
''')
    proc = pyric.start("app.handler")
    a, b = body(pyric.api.wait_result(pyric.api.add_event({}, timeout_ms=2000)))
    assert 1000 < a <= 2000
    assert 250 <= a - b <= 1500
    # a deadline in the past reads as 0, never negative
    a, b = body(pyric.api.wait_result(pyric.api.add_event(
        {}, deadline_ms=int(time.time() * 1000) - 5000)))
    assert a == 0 and b == 0
    pyric.stop(proc)


def test_exception_shape(pyric):
    pyric.write("app.py", '''
def helper(x):
    raise ValueError("bad value: %s" % x)

def handler(event, context):
    return helper(event["x"])
''')
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({"x": 42})
    res = pyric.api.wait_result(rid)
    assert res["kind"] == "error"
    assert res["headers"]["Lambda-Runtime-Function-Error-Type"] == "ValueError"
    b = body(res)
    assert set(b) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert b["errorMessage"] == "bad value: 42"
    assert b["errorType"] == "ValueError"
    assert b["requestId"] == rid
    app = os.path.join(pyric.task_root, "app.py")
    assert b["stackTrace"] == [
        '  File "%s", line 6, in handler\n    return helper(event["x"])\n' % app,
        '  File "%s", line 3, in helper\n    raise ValueError("bad value: %%s" %% x)\n' % app,
    ]
    xray = json.loads(res["headers"]["Lambda-Runtime-Function-XRay-Error-Cause"])
    assert xray["exceptions"][0]["type"] == "ValueError"
    # the environment survives a handler error
    res2 = pyric.api.wait_result(pyric.api.add_event({}))
    assert body(res2)["errorType"] == "KeyError"
    assert body(res2)["errorMessage"] == "'x'"
    out, _ = pyric.stop(proc)
    assert "[ERROR] ValueError: bad value: 42\rTraceback (most recent call last):\r" in out
    assert "[ERROR] KeyError: 'x'\r" in out


def test_custom_exception_class_name(pyric):
    pyric.write("app.py", '''
class OrderFailed(Exception):
    pass
def handler(event, context):
    raise OrderFailed("nope")
''')
    proc = pyric.start("app.handler")
    res = pyric.api.wait_result(pyric.api.add_event({}))
    assert body(res)["errorType"] == "OrderFailed"
    assert res["headers"]["Lambda-Runtime-Function-Error-Type"] == "OrderFailed"
    pyric.stop(proc)


def test_import_error_missing_module(pyric):
    proc = pyric.start("nosuchmod.handler")
    rc, out, err = pyric.finish(proc)
    assert rc == 1
    assert len(pyric.api.init_errors) == 1
    ie = pyric.api.init_errors[0]
    assert ie["headers"]["Lambda-Runtime-Function-Error-Type"] == \
        "Runtime.ImportModuleError"
    assert json.loads(ie["body"]) == {
        "errorMessage": "Unable to import module 'nosuchmod': "
                        "No module named 'nosuchmod'",
        "errorType": "Runtime.ImportModuleError",
        "requestId": "",
        "stackTrace": []}
    assert "[ERROR] Runtime.ImportModuleError: Unable to import module " \
           "'nosuchmod': No module named 'nosuchmod'" in out
    assert pyric.api.next_calls == 0


def test_import_error_missing_dependency(pyric):
    pyric.write("app.py", "import requests_not_here\ndef handler(e, c):\n    return 1\n")
    rc, _, _ = pyric.finish(pyric.start("app.handler"))
    assert rc == 1
    b = json.loads(pyric.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.ImportModuleError"
    assert b["errorMessage"] == \
        "Unable to import module 'app': No module named 'requests_not_here'"


def test_missing_handler_function(pyric):
    pyric.write("app.py", "def other(e, c):\n    return 1\n")
    rc, _, _ = pyric.finish(pyric.start("app.handler"))
    assert rc == 1
    ie = pyric.api.init_errors[0]
    assert ie["headers"]["Lambda-Runtime-Function-Error-Type"] == \
        "Runtime.HandlerNotFound"
    assert json.loads(ie["body"]) == {
        "errorMessage": "Handler 'handler' missing on module 'app'",
        "errorType": "Runtime.HandlerNotFound",
        "requestId": "", "stackTrace": []}


def test_syntax_error(pyric):
    path = pyric.write("app.py", "def handler(event, context)\n    return 1\n")
    rc, _, _ = pyric.finish(pyric.start("app.handler"))
    assert rc == 1
    b = json.loads(pyric.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.UserCodeSyntaxError"
    assert b["errorMessage"].startswith("Syntax error in module 'app': ")
    assert "(app.py, line 1)" in b["errorMessage"]
    assert len(b["stackTrace"]) == 1
    assert b["stackTrace"][0].startswith('  File "%s" Line 1\n    def handler' % path)


def test_exception_during_import(pyric):
    pyric.write("app.py", "raise RuntimeError('config missing')\n")
    rc, out, _ = pyric.finish(pyric.start("app.handler"))
    assert rc == 1
    ie = pyric.api.init_errors[0]
    b = json.loads(ie["body"])
    assert b["errorType"] == "RuntimeError"
    assert b["errorMessage"] == "config missing"
    assert ie["headers"]["Lambda-Runtime-Function-Error-Type"] == "RuntimeError"
    # the trace starts at user code, not at the runtime's own frames
    assert 'app.py", line 1, in <module>' in b["stackTrace"][-1]
    assert all("bootstrap.py" not in l for l in b["stackTrace"][-1:])


def test_malformed_handler_name(pyric):
    rc, _, _ = pyric.finish(pyric.start("nodot"))
    assert rc == 1
    b = json.loads(pyric.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.MalformedHandlerName"
    assert b["errorMessage"].startswith("Bad handler 'nodot': ")


def test_builtin_module_conflict(pyric):
    rc, _, _ = pyric.finish(pyric.start("sys.handler"))
    assert rc == 1
    b = json.loads(pyric.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.BuiltInModuleConflict"
    assert b["errorMessage"] == "Cannot use built-in module sys as a handler module"


def test_non_serializable_result(pyric):
    pyric.write("app.py", "def handler(e, c):\n    return {'s': {1, 2}}\n")
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({})
    res = pyric.api.wait_result(rid)
    assert res["kind"] == "error"
    assert res["headers"]["Lambda-Runtime-Function-Error-Type"] == \
        "Runtime.MarshalError"
    assert body(res) == {
        "errorMessage": "Unable to marshal response: Object of type set "
                        "is not JSON serializable",
        "errorType": "Runtime.MarshalError",
        "requestId": rid, "stackTrace": []}
    pyric.stop(proc)


def test_decimal_and_none_results(pyric):
    pyric.write("app.py", '''
import decimal
def handler(e, c):
    if e == "none":
        return None
    return {"d": decimal.Decimal("1.5")}
''')
    proc = pyric.start("app.handler")
    assert body(pyric.api.wait_result(pyric.api.add_event("x"))) == {"d": 1.5}
    assert pyric.api.wait_result(pyric.api.add_event("none"))["body"] == b"null"
    pyric.stop(proc)


def test_warm_sequential_events_one_connection(pyric):
    pyric.write("app.py", '''
import os
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    return {"count": COUNT, "pid": os.getpid(), "i": event["i"]}
''')
    proc = pyric.start("app.handler")
    rids = [pyric.api.add_event({"i": i}) for i in range(5)]
    results = [body(pyric.api.wait_result(r)) for r in rids]
    assert [r["count"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["i"] for r in results] == [0, 1, 2, 3, 4]
    assert {r["pid"] for r in results} == {proc.pid}
    assert pyric.api.wait_next_calls(6)  # parked on the 6th GET
    assert pyric.api.connections == 1    # one persistent connection
    assert proc.poll() is None
    pyric.stop(proc)


def test_large_payload_1mb(pyric):
    pyric.write("app.py", '''
def handler(event, context):
    return {"len": len(event["data"]), "data": event["data"][::-1]}
''')
    proc = pyric.start("app.handler")
    data = "abcdefghij" * (1024 * 1024 // 10 + 1)
    rid = pyric.api.add_event({"data": data})
    b = body(pyric.api.wait_result(rid, timeout=20))
    assert b["len"] == len(data)
    assert b["data"] == data[::-1]
    pyric.stop(proc)


def test_unicode_round_trip(pyric):
    pyric.write("app.py", '''
def handler(event, context):
    print("got", event["s"])
    return {"s": event["s"] + " ✓", "len": len(event["s"])}
''')
    proc = pyric.start("app.handler")
    s = "héllo wörld — 日本語 🚀"
    rid = pyric.api.add_event({"s": s})
    res = pyric.api.wait_result(rid)
    assert body(res) == {"s": s + " ✓", "len": len(s)}
    # emitted as raw UTF-8 (ensure_ascii=False), like AWS's marshaller
    assert "🚀".encode("utf-8") in res["body"]
    out, _ = pyric.stop(proc)
    assert "got " + s in out


def test_handler_in_subdirectory_and_dotted_module(pyric):
    pyric.write("pkg/sub/mod.py", "def fn(e, c):\n    return 'sub:' + __name__\n")
    pyric.write("lib/deep/m2.py", "def h(e, c):\n    return 'slash:' + __name__\n")
    proc = pyric.start("pkg.sub.mod.fn")
    assert body(pyric.api.wait_result(pyric.api.add_event({}))) == "sub:pkg.sub.mod"
    pyric.stop(proc)
    proc = pyric.start("lib/deep/m2.h")
    assert body(pyric.api.wait_result(pyric.api.add_event({}))) == "slash:lib.deep.m2"
    pyric.stop(proc)


def test_sys_path_and_runtime_dir_hidden(pyric):
    pyric.write("app.py", '''
import sys
def handler(e, c):
    return sys.path
''')
    proc = pyric.start("app.handler")
    path = body(pyric.api.wait_result(pyric.api.add_event({})))
    assert path[0] == pyric.task_root
    assert "/opt/python" in path
    assert not any(p.rstrip("/").endswith("runtimes/python") for p in path)
    pyric.stop(proc)


def test_logging_format_and_print(pyric):
    pyric.write("app.py", '''
import logging
logger = logging.getLogger()
logging.warning("during init")
def handler(event, context):
    print("plain print")
    logger.info("hidden at default WARNING level")
    logger.warning("careful %s", 1)
    logger.error("bad")
    return 1
''')
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({})
    pyric.api.wait_result(rid)
    out, _ = pyric.stop(proc)
    lines = out.splitlines()
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.search(r"^\[WARNING\]\t%s\t\tduring init$" % ts, out, re.M), out
    assert "plain print" in lines
    assert re.search(r"^\[WARNING\]\t%s\t%s\tcareful 1$" % (ts, rid), out, re.M), out
    assert re.search(r"^\[ERROR\]\t%s\t%s\tbad$" % (ts, rid), out, re.M), out
    assert "hidden" not in out


def test_log_level_env(pyric):
    pyric.write("app.py", '''
import logging
def handler(event, context):
    logging.getLogger().debug("dbg line")
    return 1
''')
    proc = pyric.start("app.handler", {"AWS_LAMBDA_LOG_LEVEL": "DEBUG"})
    pyric.api.wait_result(pyric.api.add_event({}))
    out, _ = pyric.stop(proc)
    assert "[DEBUG]" in out and "dbg line" in out


def test_json_log_format(pyric):
    pyric.write("app.py", '''
import logging
log = logging.getLogger("orders")
def handler(event, context):
    log.info("placed %s", "o-1", extra={"order": 7})
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("failed")
    raise KeyError("k")
''')
    proc = pyric.start("app.handler", {"AWS_LAMBDA_LOG_FORMAT": "JSON",
                                       "AWS_LAMBDA_LOG_LEVEL": "INFO"})
    rid = pyric.api.add_event({})
    assert pyric.api.wait_result(rid)["kind"] == "error"
    out, _ = pyric.stop(proc)
    recs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    assert len(recs) == 3, out
    info, exc, err = recs
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", info["timestamp"])
    assert info["level"] == "INFO" and info["message"] == "placed o-1"
    assert info["logger"] == "orders" and info["requestId"] == rid
    assert info["order"] == 7 and info["location"].endswith(":handler:5")
    assert exc["level"] == "ERROR" and exc["errorType"] == "ZeroDivisionError"
    assert exc["errorMessage"] == "division by zero" and exc["stackTrace"]
    assert err["log_level"] == "ERROR" and err["errorType"] == "KeyError"
    assert err["requestId"] == rid and err["errorMessage"] == "'k'"


def test_trace_id_env_removed_when_absent(pyric):
    pyric.write("app.py", "import os\ndef handler(e, c):\n    return os.environ.get('_X_AMZN_TRACE_ID')\n")
    proc = pyric.start("app.handler")
    r1 = pyric.api.add_event({}, headers={"Lambda-Runtime-Trace-Id": "Root=1-a"})
    assert body(pyric.api.wait_result(r1)) == "Root=1-a"
    r2 = pyric.api.add_event({})
    assert body(pyric.api.wait_result(r2)) is None
    pyric.stop(proc)


def test_invalid_json_event(pyric):
    pyric.write("app.py", "def handler(e, c):\n    return e\n")
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event(raw=b"{not json")
    b = body(pyric.api.wait_result(rid))
    assert b["errorType"] == "Runtime.UnmarshalError"
    assert b["errorMessage"].startswith("Unable to unmarshal input: ")
    pyric.stop(proc)


def test_rejected_post_exits(pyric):
    pyric.write("app.py", "def handler(e, c):\n    return 1\n")
    pyric.api.response_status = 500
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({})
    assert pyric.api.wait_result(rid)["kind"] == "rejected"
    rc, _, err = pyric.finish(proc)
    assert rc == 1
    assert "returned 500" in err


def test_response_too_large_413_keeps_serving(pyric):
    """The Runtime API fails an oversized response itself (413); the
    environment stays usable, as on Lambda: the next event is served."""
    pyric.write("app.py", "def handler(e, c):\n    return 'x' * (7 * 1024 * 1024) if e.get('big') else 'ok'\n")
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({"big": True})
    assert pyric.api.wait_result(rid, timeout=20)["kind"] == "too_large"
    res = pyric.api.wait_result(pyric.api.add_event({}), timeout=20)
    assert res["kind"] == "response" and res["body"] == b'"ok"'
    pyric.stop(proc)


def test_bytes_result_passed_through(pyric):
    pyric.write("app.py", "def handler(e, c):\n    return b'\\x00raw'\n")
    proc = pyric.start("app.handler")
    res = pyric.api.wait_result(pyric.api.add_event({}))
    assert res["kind"] == "response" and res["body"] == b"\x00raw"
    pyric.stop(proc)


def test_bootstrap_is_python39_syntax():
    import ast
    src = open(os.path.join(os.path.dirname(__file__), "..", "..", "runtimes",
                            "python", "bootstrap.py")).read()
    ast.parse(src, feature_version=(3, 9))


def test_print_unbuffered_even_without_dash_u(pyric):
    pyric.argv = [a for a in pyric.argv if a != "-u"]
    pyric.write("app.py", "def handler(e, c):\n    print('printed', e)\n    return 1\n")
    proc = pyric.start("app.handler")
    pyric.api.wait_result(pyric.api.add_event("x"))
    out, _ = pyric.stop(proc)  # SIGKILL: anything still buffered is lost
    assert "printed x" in out


def test_event_json_whatever_content_type(pyric):
    pyric.write("app.py", "def handler(e, c):\n    return e\n")
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({"a": 1}, headers={"Content-Type": "application/octet-stream"})
    assert body(pyric.api.wait_result(rid)) == {"a": 1}
    pyric.stop(proc)


def test_server_closing_connections(pyric):
    pyric.api.close_connections = True
    pyric.write("app.py", "def handler(e, c):\n    return e * 2\n")
    proc = pyric.start("app.handler")
    rids = [pyric.api.add_event(i) for i in range(3)]
    assert [body(pyric.api.wait_result(r)) for r in rids] == [0, 2, 4]
    assert pyric.api.connections >= 6  # a new connection per request
    pyric.stop(proc)


def test_server_silently_dropping_keepalive(pyric):
    pyric.api.silent_close = True
    pyric.write("app.py", "def handler(e, c):\n    return e + 1\n")
    proc = pyric.start("app.handler")
    rids = [pyric.api.add_event(i) for i in range(3)]
    assert [body(pyric.api.wait_result(r)) for r in rids] == [1, 2, 3]
    assert proc.poll() is None
    pyric.stop(proc)


def test_sys_exit_in_handler_ends_process(pyric):
    pyric.write("app.py", "import sys\ndef handler(e, c):\n    sys.exit(3)\n")
    proc = pyric.start("app.handler")
    rid = pyric.api.add_event({})
    rc, _, _ = pyric.finish(proc)
    assert rc == 3
    assert rid not in pyric.api.results  # the worker reports Runtime.ExitError
