"""Tests of runtimes/nodejs/bootstrap.js against the fake Runtime API.

Run: /usr/bin/python3 -m pytest tests/runtimes
"""

import json
import re
import time

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def body(res):
    return json.loads(res["body"].decode("utf-8"))


CONTEXT_APP = '''
exports.handler = async (event, context) => ({
  event,
  awsRequestId: context.awsRequestId,
  invokedFunctionArn: context.invokedFunctionArn,
  functionName: context.functionName,
  functionVersion: context.functionVersion,
  memoryLimitInMB: context.memoryLimitInMB,
  logGroupName: context.logGroupName,
  logStreamName: context.logStreamName,
  remaining: context.getRemainingTimeInMillis(),
  waits: context.callbackWaitsForEmptyEventLoop,
  clientContext: context.clientContext === undefined ? "undef" : context.clientContext,
  identity: context.identity === undefined ? "undef" : context.identity,
  trace: process.env._X_AMZN_TRACE_ID || null,
  cwd: process.cwd(),
  tenantId: context.tenantId === undefined ? null : context.tenantId,
  kinds: [typeof context.succeed, typeof context.fail, typeof context.done],
});
'''


def test_success_with_context_fields(noderic):
    noderic.write("index.js", CONTEXT_APP)
    proc = noderic.start("index.handler")
    cc = {"client": {"app_title": "demo"}, "custom": {"k": "v"}, "env": {}}
    ident = {"cognitoIdentityId": "id-1", "cognitoIdentityPoolId": "pool-1"}
    rid = noderic.api.add_event(
        {"hello": "world"}, timeout_ms=5000,
        headers={"Lambda-Runtime-Trace-Id": "Root=1-abc",
                 "Lambda-Runtime-Aws-Tenant-Id": "tenant-7",
                 "Lambda-Runtime-Client-Context": json.dumps(cc),
                 "Lambda-Runtime-Cognito-Identity": json.dumps(ident)})
    res = noderic.api.wait_result(rid)
    assert res["kind"] == "response"
    b = body(res)
    assert b["event"] == {"hello": "world"}
    assert b["awsRequestId"] == rid
    assert b["invokedFunctionArn"] == noderic.api.function_arn
    assert b["functionName"] == "fn"
    assert b["functionVersion"] == "$LATEST"
    assert b["memoryLimitInMB"] == "256"
    assert b["logGroupName"] == "/aws/lambda/fn"
    assert b["logStreamName"] == "2026/12/07/[$LATEST]abc"
    assert 2000 < b["remaining"] <= 5000
    assert b["waits"] is True
    assert b["clientContext"] == cc
    assert b["identity"] == ident
    assert b["trace"] == "Root=1-abc"
    assert b["cwd"] == noderic.task_root
    assert b["kinds"] == ["function"] * 3
    assert b["tenantId"] == "tenant-7"
    # optional headers absent: undefined, trace id env removed
    b = body(noderic.api.wait_result(noderic.api.add_event({})))
    assert b["clientContext"] == "undef" and b["identity"] == "undef"
    assert b["trace"] is None
    assert b["tenantId"] is None
    noderic.stop(proc)


def test_remaining_time_decreases(noderic):
    noderic.write("index.js", '''
exports.handler = async (event, context) => {
  const a = context.getRemainingTimeInMillis();
  await new Promise((r) => setTimeout(r, 300));
  return [a, context.getRemainingTimeInMillis()];
};
''')
    proc = noderic.start("index.handler")
    a, b = body(noderic.api.wait_result(noderic.api.add_event({}, timeout_ms=3000)))
    assert 1000 < a <= 3000
    assert 250 <= a - b <= 1500
    noderic.stop(proc)


def test_async_handler_throws_error_shape(noderic):
    noderic.write("index.js", '''
class PaymentError extends Error {
  constructor(m) { super(m); this.name = "PaymentError"; }
}
exports.handler = async (event) => { throw new PaymentError("card declined " + event.n); };
''')
    proc = noderic.start("index.handler")
    rid = noderic.api.add_event({"n": 7})
    res = noderic.api.wait_result(rid)
    assert res["kind"] == "error"
    assert res["headers"]["Lambda-Runtime-Function-Error-Type"] == "PaymentError"
    b = body(res)
    assert set(b) == {"errorType", "errorMessage", "trace"}
    assert b["errorType"] == "PaymentError"
    assert b["errorMessage"] == "card declined 7"
    assert b["trace"][0] == "PaymentError: card declined 7"
    assert "index.js:5" in b["trace"][1] and b["trace"][1].startswith("    at ")
    # the environment survives and serves the next event
    res = noderic.api.wait_result(noderic.api.add_event({"n": 8}))
    assert body(res)["errorMessage"] == "card declined 8"
    out, _ = noderic.stop(proc)
    assert re.search(r"^%s\t%s\tERROR\tInvoke Error \t\{\"errorType\":\"PaymentError\","
                     r"\"errorMessage\":\"card declined 7\"" % (TS, rid), out, re.M), out


def test_sync_throw_and_non_error_values(noderic):
    noderic.write("index.js", '''
exports.handler = (event, context, callback) => {
  if (event.mode === "throw") throw new TypeError("sync boom");
  if (event.mode === "string") return callback("plain failure");
  if (event.mode === "fail") return context.fail();
  if (event.mode === "reject") return Promise.reject(new RangeError("rejected"));
};
''')
    proc = noderic.start("index.handler")
    api = noderic.api
    b = body(api.wait_result(api.add_event({"mode": "throw"})))
    assert b["errorType"] == "TypeError" and b["errorMessage"] == "sync boom"
    assert b["trace"][0] == "TypeError: sync boom"
    b = body(api.wait_result(api.add_event({"mode": "string"})))
    assert b == {"errorType": "string", "errorMessage": "plain failure", "trace": []}
    b = body(api.wait_result(api.add_event({"mode": "fail"})))
    assert b == {"errorType": "string", "errorMessage": "handled", "trace": []}
    b = body(api.wait_result(api.add_event({"mode": "reject"})))
    assert b["errorType"] == "RangeError" and b["errorMessage"] == "rejected"
    noderic.stop(proc)


def test_callback_handler_waits_for_empty_event_loop(noderic):
    noderic.write("index.js", '''
let fired = 0;
exports.handler = (event, context, callback) => {
  if (event.noWait) context.callbackWaitsForEmptyEventLoop = false;
  setTimeout(() => { fired += 1; }, 400);
  callback(null, { firedAtCallback: fired, t: Date.now() });
};
''')
    proc = noderic.start("index.handler")
    api = noderic.api
    t0 = time.time()
    rid = api.add_event({})
    res = api.wait_result(rid)
    # the response is held until the 400 ms timer has run
    assert res["time"] - t0 >= 0.35
    assert body(res)["firedAtCallback"] == 0
    t1 = time.time()
    rid = api.add_event({"noWait": True})
    res = api.wait_result(rid)
    assert res["time"] - t1 < 0.35  # answered at once
    noderic.stop(proc)


def test_context_succeed_done_and_only_first_call(noderic):
    noderic.write("index.js", '''
exports.handler = (event, context, callback) => {
  if (event.m === "succeed") { context.succeed({ via: "succeed" }); context.fail(new Error("ignored")); }
  else if (event.m === "done") context.done(null, { via: "done" });
  else if (event.m === "doneErr") context.done(new Error("via done"));
  else { callback(null, "first"); callback(null, "second"); }
};
''')
    proc = noderic.start("index.handler")
    api = noderic.api
    assert body(api.wait_result(api.add_event({"m": "succeed"}))) == {"via": "succeed"}
    assert body(api.wait_result(api.add_event({"m": "done"}))) == {"via": "done"}
    r = api.wait_result(api.add_event({"m": "doneErr"}))
    assert r["kind"] == "error" and body(r)["errorMessage"] == "via done"
    assert body(api.wait_result(api.add_event({"m": "cb"}))) == "first"
    noderic.stop(proc)


def test_handler_returning_nothing_answers_null(noderic):
    noderic.write("index.js", "exports.handler = (event) => { setTimeout(() => {}, 100); };\n")
    proc = noderic.start("index.handler")
    res = noderic.api.wait_result(noderic.api.add_event({}))
    assert res["kind"] == "response" and res["body"] == b"null"
    res = noderic.api.wait_result(noderic.api.add_event({}))
    assert res["body"] == b"null"
    noderic.stop(proc)


def test_esm_mjs_handler_with_top_level_await(noderic):
    noderic.write("app.mjs", '''
import { createHash } from "node:crypto";
const salt = await Promise.resolve("s");
export const handler = async (event) => createHash("sha256").update(salt + event.v).digest("hex");
''')
    proc = noderic.start("app.handler")
    import hashlib
    res = noderic.api.wait_result(noderic.api.add_event({"v": "x"}))
    assert body(res) == hashlib.sha256(b"sx").hexdigest()
    noderic.stop(proc)


def test_esm_js_with_package_type_module(noderic):
    noderic.write("package.json", '{"type": "module"}')
    noderic.write("index.js", "export async function handler(e) { return { esm: true, e }; }\n")
    proc = noderic.start("index.handler")
    assert body(noderic.api.wait_result(noderic.api.add_event(1))) == {"esm": True, "e": 1}
    noderic.stop(proc)


def test_cjs_extension_subdir_and_nested_handler(noderic):
    noderic.write("src/lib/h.cjs", "module.exports = { api: { get: async () => 'nested' } };\n")
    proc = noderic.start("src/lib/h.api.get")
    assert body(noderic.api.wait_result(noderic.api.add_event({}))) == "nested"
    noderic.stop(proc)


def test_import_module_error(noderic):
    proc = noderic.start("index.handler")
    rc, out, _ = noderic.finish(proc)
    assert rc == 129
    ie = noderic.api.init_errors[0]
    assert ie["headers"]["Lambda-Runtime-Function-Error-Type"] == "Runtime.ImportModuleError"
    b = json.loads(ie["body"])
    assert b["errorType"] == "Runtime.ImportModuleError"
    assert b["errorMessage"].startswith("Error: Cannot find module 'index'\nRequire stack:\n- ")
    assert b["trace"][0] == "Runtime.ImportModuleError: Error: Cannot find module 'index'"
    assert re.search(r"^%s\tundefined\tERROR\tUncaught Exception \t\{\"errorType\":"
                     r"\"Runtime.ImportModuleError\"" % TS, out, re.M), out
    assert noderic.api.next_calls == 0


def test_missing_dependency_is_import_error(noderic):
    noderic.write("index.js", "require('left-pad-not-installed');\nexports.handler = async () => 1;\n")
    rc, _, _ = noderic.finish(noderic.start("index.handler"))
    assert rc == 129
    b = json.loads(noderic.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.ImportModuleError"
    assert b["errorMessage"].startswith("Error: Cannot find module 'left-pad-not-installed'")


def test_handler_not_found(noderic):
    noderic.write("index.js", "exports.other = async () => 1;\nexports.notfn = 5;\n")
    rc, _, _ = noderic.finish(noderic.start("index.handler"))
    assert rc == 129
    ie = noderic.api.init_errors[0]
    assert ie["headers"]["Lambda-Runtime-Function-Error-Type"] == "Runtime.HandlerNotFound"
    b = json.loads(ie["body"])
    assert b["errorType"] == "Runtime.HandlerNotFound"
    assert b["errorMessage"] == "index.handler is undefined or not exported"
    noderic.api.init_errors.clear()
    rc, _, _ = noderic.finish(noderic.start("index.notfn"))
    assert json.loads(noderic.api.init_errors[0]["body"])["errorMessage"] == \
        "index.notfn is not a function"


def test_malformed_handler(noderic):
    rc, _, _ = noderic.finish(noderic.start("index"))
    b = json.loads(noderic.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.MalformedHandlerName"
    assert b["errorMessage"] == "Bad handler"


def test_syntax_error(noderic):
    noderic.write("index.js", "exports.handler = async (e) => { return 1 +; };\n")
    rc, _, _ = noderic.finish(noderic.start("index.handler"))
    assert rc == 129
    b = json.loads(noderic.api.init_errors[0]["body"])
    assert b["errorType"] == "Runtime.UserCodeSyntaxError"
    assert b["errorMessage"].startswith("SyntaxError: Unexpected token")


def test_throw_during_init(noderic):
    noderic.write("index.mjs", "throw new Error('no config');\nexport const handler = async () => 1;\n")
    rc, _, _ = noderic.finish(noderic.start("index.handler"))
    assert rc == 129
    b = json.loads(noderic.api.init_errors[0]["body"])
    assert b["errorType"] == "Error" and b["errorMessage"] == "no config"


def test_unhandled_rejection_during_invoke(noderic):
    noderic.write("index.js", '''
exports.handler = async () => {
  Promise.reject(new Error("forgotten"));
  await new Promise((r) => setTimeout(r, 200));
  return "unreached";
};
''')
    proc = noderic.start("index.handler")
    rid = noderic.api.add_event({})
    res = noderic.api.wait_result(rid)
    assert res["kind"] == "error"
    assert res["headers"]["Lambda-Runtime-Function-Error-Type"] == \
        "Runtime.UnhandledPromiseRejection"
    b = body(res)
    assert b["errorType"] == "Runtime.UnhandledPromiseRejection"
    assert b["errorMessage"] == "Error: forgotten"
    rc, out, _ = noderic.finish(proc)
    assert rc == 128
    assert "\tERROR\tUnhandled Promise Rejection \t" in out


def test_uncaught_exception_during_invoke(noderic):
    noderic.write("index.js", '''
exports.handler = (event, context, callback) => {
  setTimeout(() => { throw new Error("from a timer"); }, 10);
};
''')
    proc = noderic.start("index.handler")
    res = noderic.api.wait_result(noderic.api.add_event({}))
    assert res["kind"] == "error"
    assert body(res)["errorMessage"] == "from a timer"
    rc, out, _ = noderic.finish(proc)
    assert rc == 129
    assert "\tERROR\tUncaught Exception \t" in out


def test_non_serializable_result(noderic):
    noderic.write("index.js", '''
exports.handler = async (e) => { if (e.big) return { n: 10n }; const a = {}; a.self = a; return a; };
''')
    proc = noderic.start("index.handler")
    for ev in ({}, {"big": True}):
        res = noderic.api.wait_result(noderic.api.add_event(ev))
        assert res["kind"] == "error"
        b = body(res)
        assert b["errorType"] == "Error"
        assert b["errorMessage"] == "Unable to stringify response body"
    noderic.stop(proc)


def test_invalid_json_event(noderic):
    noderic.write("index.js", "exports.handler = async (e) => e;\n")
    proc = noderic.start("index.handler")
    res = noderic.api.wait_result(noderic.api.add_event(raw=b"{nope"))
    assert res["kind"] == "error" and body(res)["errorType"] == "SyntaxError"
    noderic.stop(proc)


def test_warm_sequential_events_one_connection(noderic):
    noderic.write("index.js", '''
let count = 0;
exports.handler = async (event) => ({ count: ++count, pid: process.pid, i: event.i });
''')
    proc = noderic.start("index.handler")
    rids = [noderic.api.add_event({"i": i}) for i in range(5)]
    res = [body(noderic.api.wait_result(r)) for r in rids]
    assert [r["count"] for r in res] == [1, 2, 3, 4, 5]
    assert [r["i"] for r in res] == list(range(5))
    assert {r["pid"] for r in res} == {proc.pid}
    assert noderic.api.wait_next_calls(6)
    assert noderic.api.connections == 1
    assert proc.poll() is None
    noderic.stop(proc)


def test_large_payload_1mb(noderic):
    noderic.write("index.js", '''
exports.handler = async (e) => ({ len: e.data.length, data: e.data.split("").reverse().join("") });
''')
    proc = noderic.start("index.handler")
    data = "0123456789" * (1024 * 1024 // 10 + 1)
    b = body(noderic.api.wait_result(noderic.api.add_event({"data": data}), timeout=20))
    assert b["len"] == len(data) and b["data"] == data[::-1]
    noderic.stop(proc)


def test_unicode_round_trip(noderic):
    noderic.write("index.js", '''
exports.handler = async (e) => { console.log("got", e.s); return { s: e.s + " ✓", n: [...e.s].length }; };
''')
    proc = noderic.start("index.handler")
    s = "héllo wörld — 日本語 🚀"
    rid = noderic.api.add_event({"s": s})
    res = noderic.api.wait_result(rid)
    assert body(res) == {"s": s + " ✓", "n": len(s)}
    out, _ = noderic.stop(proc)
    assert re.search(r"^%s\t%s\tINFO\tgot %s$" % (TS, rid, re.escape(s)), out, re.M), out


def test_console_format_levels_and_newlines(noderic):
    noderic.write("index.js", '''
console.log("init line");
exports.handler = async () => {
  console.log("a %s b", "X", { k: 1 });
  console.warn("warned");
  console.error("multi\\nline");
  console.debug("dbg");
  return 1;
};
''')
    proc = noderic.start("index.handler")
    rid = noderic.api.add_event({})
    noderic.api.wait_result(rid)
    out, _ = noderic.stop(proc)
    assert re.search(r"^%s\tundefined\tINFO\tinit line$" % TS, out, re.M), out
    assert re.search(r"^%s\t%s\tINFO\ta X b \{ k: 1 \}$" % (TS, rid), out, re.M), out
    assert re.search(r"^%s\t%s\tWARN\twarned$" % (TS, rid), out, re.M), out
    assert re.search(r"^%s\t%s\tERROR\tmulti\rline$" % (TS, rid), out, re.M), out
    assert re.search(r"^%s\t%s\tDEBUG\tdbg$" % (TS, rid), out, re.M), out


def test_json_log_format(noderic):
    noderic.write("index.js", '''
exports.handler = async () => {
  console.log({ a: 1 });
  console.info("n=%d", 5);
  console.error("failed:", new TypeError("bad"));
  throw new Error("thrown");
};
''')
    proc = noderic.start("index.handler", {"AWS_LAMBDA_LOG_FORMAT": "JSON"})
    rid = noderic.api.add_event({})
    assert noderic.api.wait_result(rid)["kind"] == "error"
    out, _ = noderic.stop(proc)
    recs = [json.loads(l) for l in out.splitlines()]
    assert recs[0]["message"] == {"a": 1} and recs[0]["level"] == "INFO"
    assert recs[0]["requestId"] == rid and re.match(TS, recs[0]["timestamp"])
    assert recs[1]["message"] == "n=5"
    assert recs[2]["level"] == "ERROR" and recs[2]["errorType"] == "TypeError"
    assert recs[2]["errorMessage"] == "bad" and recs[2]["stackTrace"][0] == "TypeError: bad"
    assert recs[3]["level"] == "ERROR" and recs[3]["message"].startswith("Invoke Error")


def test_log_level_filter(noderic):
    noderic.write("index.js", "exports.handler = async () => { console.debug('dbg'); console.warn('wrn'); return 1; };\n")
    proc = noderic.start("index.handler", {"AWS_LAMBDA_LOG_LEVEL": "WARN"})
    noderic.api.wait_result(noderic.api.add_event({}))
    out, _ = noderic.stop(proc)
    assert "\tWARN\twrn" in out and "dbg" not in out


def test_rejected_post_exits(noderic):
    noderic.write("index.js", "exports.handler = async () => 1;\n")
    noderic.api.response_status = 500
    proc = noderic.start("index.handler")
    rid = noderic.api.add_event({})
    assert noderic.api.wait_result(rid)["kind"] == "rejected"
    rc, _, err = noderic.finish(proc)
    assert rc == 1 and "returned 500" in err


def test_streamify_response_is_buffered(noderic):
    noderic.write("index.mjs", '''
export const handler = awslambda.streamifyResponse(async (event, responseStream, context) => {
  responseStream.setContentType("text/plain");
  responseStream.write("hello ");
  await new Promise((r) => setTimeout(r, 20));
  responseStream.write(Buffer.from(context.awsRequestId));
  responseStream.end();
});
export const http = awslambda.streamifyResponse(async (event, responseStream) => {
  const s = awslambda.HttpResponseStream.from(responseStream, { statusCode: 201, headers: { a: "b" } });
  s.write("body");
  s.end();
});
export const boom = awslambda.streamifyResponse(async () => { throw new Error("stream boom"); });
''')
    api = noderic.api
    proc = noderic.start("index.handler")
    rid = api.add_event({})
    res = api.wait_result(rid)
    assert res["kind"] == "response"
    assert res["body"] == b"hello " + rid.encode()
    assert res["headers"]["Content-Type"] == "text/plain"
    res = api.wait_result(api.add_event({}))
    assert res["kind"] == "response"  # warm, second streamed invoke
    noderic.stop(proc)
    proc = noderic.start("index.http")
    res = api.wait_result(api.add_event({}))
    assert res["headers"]["Content-Type"] == \
        "application/vnd.awslambda.http-integration-response"
    assert res["body"] == b'{"statusCode":201,"headers":{"a":"b"}}' + b"\0" * 8 + b"body"
    noderic.stop(proc)
    proc = noderic.start("index.boom")
    res = api.wait_result(api.add_event({}))
    assert res["kind"] == "error" and body(res)["errorMessage"] == "stream boom"
    noderic.stop(proc)


def test_server_closing_connections(noderic):
    noderic.api.close_connections = True
    noderic.write("index.js", "exports.handler = async (e) => e * 2;\n")
    proc = noderic.start("index.handler")
    rids = [noderic.api.add_event(i) for i in range(3)]
    assert [body(noderic.api.wait_result(r)) for r in rids] == [0, 2, 4]
    assert noderic.api.connections >= 6
    noderic.stop(proc)


def test_server_silently_dropping_keepalive(noderic):
    noderic.api.silent_close = True
    noderic.write("index.js", "exports.handler = async (e) => e + 1;\n")
    proc = noderic.start("index.handler")
    rids = [noderic.api.add_event(i) for i in range(3)]
    assert [body(noderic.api.wait_result(r)) for r in rids] == [1, 2, 3]
    assert proc.poll() is None
    noderic.stop(proc)


def test_process_exit_in_handler_ends_process(noderic):
    noderic.write("index.js", "exports.handler = async () => { process.exit(3); };\n")
    proc = noderic.start("index.handler")
    rid = noderic.api.add_event({})
    rc, _, _ = noderic.finish(proc)
    assert rc == 3
    assert rid not in noderic.api.results
