"""Invoke semantics: invocation types, qualifiers and aliases, the three
runtimes' happy paths, the execution environment's contents, payload limits,
warm reuse and code updates."""
import base64
import json
import re
import uuid

import pytest
from botocore.exceptions import ClientError

from harness import (ACCOUNT, REGION, client_error_code, make_zip, wait_updated)

MB = 1024 * 1024


# ------------------------------------------------------------- happy paths

def test_python_echo(lam, deploy, invoke):
    name = deploy("py_echo", MemorySize=256, Timeout=20,
                  Environment={"Variables": {"GREETING": "hello"}})
    r = invoke(name, {"hello": "world", "n": [1, 2, 3]})
    assert r.status == 200
    assert r.function_error is None, r.payload
    assert r.executed_version == "$LATEST"
    out = r.json
    assert out["event"] == {"hello": "world", "n": [1, 2, 3]}
    ctx = out["context"]
    assert ctx["function_name"] == name
    assert ctx["function_version"] == "$LATEST"
    assert ctx["invoked_function_arn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    assert ctx["memory_limit_in_mb"] == "256"
    assert ctx["aws_request_id"] == r.request_id, "context request id != x-amzn-RequestId"
    assert 0 < ctx["remaining_time_in_millis"] <= 20000
    assert ctx["log_group_name"] == f"/aws/lambda/{name}"
    env = out["env"]
    assert env["GREETING"] == "hello"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_REGION"] == REGION
    assert env["AWS_DEFAULT_REGION"] == REGION
    assert env["_HANDLER"] == "app.handler"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["AWS_LAMBDA_RUNTIME_API"]
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{name}"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert "PATH" in env and "LANG" in env and "TZ" in env
    assert out["cwd"] == "/var/task"
    assert "FLICKER_SECRET_ACCESS_KEY" not in env, "flicker's own credentials leaked"
    assert "FLICKER_ACCESS_KEY_ID" not in env, "flicker's own credentials leaked"


@pytest.mark.parametrize("runtime", ["python3.9", "python3.12", "python3.13", "python3.14"])
def test_python_runtime_versions(deploy, invoke, runtime):
    # Every python3.x runtime is served by the host's python3.
    name = deploy("py_echo", Runtime=runtime)
    r = invoke(name, {"rt": runtime})
    assert r.function_error is None, r.payload
    assert r.json["event"] == {"rt": runtime}
    assert r.json["env"]["AWS_EXECUTION_ENV"] == f"AWS_Lambda_{runtime}"


def test_client_context(deploy, invoke):
    name = deploy("py_echo")
    cc = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    r = invoke(name, {}, ClientContext=cc)
    assert r.function_error is None, r.payload
    assert r.json["context"]["client_context"] == {"k": "v"}


@pytest.mark.parametrize("runtime", ["nodejs18.x", "nodejs20.x", "nodejs22.x"])
def test_node_echo(deploy, invoke, runtime):
    name = deploy("node_echo", Runtime=runtime, Handler="index.handler",
                  Environment={"Variables": {"GREETING": "hi"}})
    r = invoke(name, {"a": 1})
    assert r.status == 200 and r.function_error is None, r.payload
    out = r.json
    assert out["event"] == {"a": 1}
    assert out["context"]["function_name"] == name
    assert out["context"]["aws_request_id"] == r.request_id
    assert out["context"]["memory_limit_in_mb"] == "128"
    assert out["env"]["GREETING"] == "hi"
    assert out["env"]["AWS_EXECUTION_ENV"] == f"AWS_Lambda_{runtime}"
    assert out["env"]["LAMBDA_TASK_ROOT"] == "/var/task"


def test_node_callback(deploy, invoke):
    name = deploy("node_callback", Runtime="nodejs20.x", Handler="index.handler")
    r = invoke(name, {"b": 2})
    assert r.function_error is None, r.payload
    assert r.json == {"style": "callback", "event": {"b": 2}, "request_id": r.request_id}


@pytest.mark.parametrize("runtime", ["provided.al2023", "provided.al2", "provided"])
def test_provided_sh_curl(deploy, invoke, runtime):
    name = deploy("provided_echo", Runtime=runtime, Handler="my.handler")
    r = invoke(name, {"c": 3})
    assert r.function_error is None, r.payload
    out = r.json
    assert out["echo"] == {"c": 3}
    assert out["request_id"] == r.request_id
    assert out["handler"] == "my.handler"
    assert out["arn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    assert int(out["deadline_ms"]) > 0


def test_non_json_payload_roundtrip(deploy, invoke):
    # A JSON string payload arrives as a str event and is echoed back.
    name = deploy("py_echo")
    r = invoke(name, '"just a string"')
    assert r.json["event"] == "just a string"


# --------------------------------------------------------- invocation types

def test_dry_run(lam, deploy):
    name = deploy("py_echo")
    r = lam.invoke(FunctionName=name, InvocationType="DryRun", Payload=b"{}")
    assert r["StatusCode"] == 204
    assert r["Payload"].read() == b""


def test_event_invoke(lam, deploy, flicker):
    name = deploy("py_echo")
    token = uuid.uuid4().hex
    r = lam.invoke(FunctionName=name, InvocationType="Event",
                   Payload=json.dumps({"marker": token}))
    assert r["StatusCode"] == 202
    assert r["Payload"].read() == b""
    # Accepted means it runs: the event shows up in the function's log.
    flicker.wait_log(name, f"STARTED {token}")


def test_tail_log_result(deploy, invoke):
    name = deploy("py_echo")
    r = invoke(name, {"print": "hello-from-tail"}, LogType="Tail")
    assert r.log_tail is not None, "no X-Amz-Log-Result with LogType=Tail"
    rid = re.escape(r.request_id)
    assert re.search(rf"START RequestId: {rid} Version: \$LATEST", r.log_tail), r.log_tail
    assert "hello-from-tail" in r.log_tail
    assert re.search(rf"END RequestId: {rid}", r.log_tail), r.log_tail
    assert re.search(rf"REPORT RequestId: {rid}\tDuration: [\d.]+ ms\tBilled Duration: \d+ ms\t"
                     rf"Memory Size: 128 MB\tMax Memory Used: \d+ MB", r.log_tail), r.log_tail
    # No tail unless asked.
    assert invoke(name, {}).log_tail is None


# ------------------------------------------------------ versions and aliases

def _two_versions(lam, deploy):
    name = deploy("py_echo", Environment={"Variables": {"MARK": "one"}})
    lam.publish_version(FunctionName=name)
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": {"MARK": "two"}})
    wait_updated(lam, name)
    lam.publish_version(FunctionName=name)
    lam.update_function_configuration(FunctionName=name,
                                      Environment={"Variables": {"MARK": "latest"}})
    wait_updated(lam, name)
    return name


def test_qualifiers_and_executed_version(lam, deploy, invoke):
    name = _two_versions(lam, deploy)
    lam.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    cases = [
        (dict(FunctionName=name), "$LATEST", "latest"),
        (dict(FunctionName=name, Qualifier="$LATEST"), "$LATEST", "latest"),
        (dict(FunctionName=name, Qualifier="2"), "2", "two"),
        (dict(FunctionName=f"{name}:1"), "1", "one"),
        (dict(FunctionName=f"{name}:live"), "1", "one"),
        (dict(FunctionName=name, Qualifier="live"), "1", "one"),
        (dict(FunctionName=f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}:2"), "2", "two"),
        (dict(FunctionName=f"{ACCOUNT}:function:{name}"), "$LATEST", "latest"),
    ]
    for kw, version, mark in cases:
        r = lam.invoke(Payload=b"{}", **kw)
        body = json.loads(r["Payload"].read())
        assert r.get("FunctionError") is None, (kw, body)
        assert r["ExecutedVersion"] == version, kw
        assert body["env"]["MARK"] == mark, kw
        assert body["context"]["function_version"] == version, kw


def test_invoke_missing_qualifier(lam, deploy):
    name = deploy("py_echo")
    for kw in (dict(FunctionName=name, Qualifier="9"), dict(FunctionName=f"{name}:nosuch")):
        with pytest.raises(ClientError) as ei:
            lam.invoke(Payload=b"{}", **kw)
        assert client_error_code(ei.value) == "ResourceNotFoundException"


def test_weighted_alias_routing(lam, deploy):
    name = _two_versions(lam, deploy)
    lam.create_alias(FunctionName=name, Name="canary", FunctionVersion="1",
                     RoutingConfig={"AdditionalVersionWeights": {"2": 0.5}})
    seen = {}
    for _ in range(40):
        r = lam.invoke(FunctionName=name, Qualifier="canary", Payload=b"{}")
        body = json.loads(r["Payload"].read())
        v = r["ExecutedVersion"]
        assert v in ("1", "2")
        assert body["env"]["MARK"] == {"1": "one", "2": "two"}[v], "reported version != served"
        seen[v] = seen.get(v, 0) + 1
    # P(one version never chosen in 40 tries at 50%) = 2 * 2^-40.
    assert set(seen) == {"1", "2"}, seen


# ---------------------------------------------------------------- limits

def test_request_too_large(lam, deploy, flicker):
    name = deploy("py_echo")
    payload = json.dumps({"blob": "x" * (6 * MB)}).encode()
    with pytest.raises(ClientError) as ei:
        lam.invoke(FunctionName=name, Payload=payload)
    assert client_error_code(ei.value) == "RequestTooLargeException"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert flicker.health() == 200


def test_request_just_under_limit(deploy, invoke):
    name = deploy("py_echo", MemorySize=512, Timeout=30)
    blob = "y" * (6 * MB - 1024)
    r = invoke(name, {"blob": blob})
    assert r.function_error is None, r.payload[:300]
    assert r.json == {"blob_len": len(blob)}


def test_response_too_large(deploy, invoke, flicker):
    name = deploy("py_echo", MemorySize=512, Timeout=30)
    r = invoke(name, {"big": 6 * MB + 100})
    # Lambda: 200, X-Amz-Function-Error: Unhandled and
    # {"errorMessage":"Response payload size exceeded maximum allowed payload size (6291556 bytes).",
    #  "errorType":"Function.ResponseSizeTooLarge"}
    assert r.status == 200
    assert r.function_error == "Unhandled", r
    body = r.json
    assert body["errorType"] == "Function.ResponseSizeTooLarge", body
    assert "exceeded maximum allowed payload size" in body["errorMessage"]
    # A response just under the limit still passes.
    r2 = invoke(name, {"big": 5 * MB})
    assert r2.function_error is None
    assert len(r2.json) == 5 * MB


# ----------------------------------------------------- warm reuse and updates

def test_warm_reuse(deploy, invoke):
    name = deploy("py_echo")
    first = invoke(name, {"write_tmp": "kept"}).json
    second = invoke(name, {}).json
    assert second["env_id"] == first["env_id"], "second invoke was not warm"
    assert second["pid"] == first["pid"]
    assert second["count"] == first["count"] + 1
    assert second["tmp"] == "kept", "/tmp did not survive between warm invokes"


def test_tmp_persists_and_is_private(deploy, invoke):
    name = deploy("py_tmp")
    other = deploy("py_tmp")
    assert invoke(name, {"op": "write", "data": "secret-123"}).json == {"ok": True}
    assert invoke(name, {"op": "read"}).json == {"data": "secret-123"}
    # Another function never sees it.
    assert invoke(other, {"op": "read"}).json == {"data": None}


def test_tmp_size_limit(deploy, invoke):
    # EphemeralStorage 512 MB: filling /tmp stops near 512 MiB.
    name = deploy("py_tmp", MemorySize=1024, Timeout=120)
    r = invoke(name, {"op": "fill", "max_mb": 2048})
    assert r.function_error is None, r.payload
    out = r.json
    assert out["error"] is not None, f"wrote {out['written_mb']} MiB into /tmp without hitting a limit"
    assert 400 <= out["written_mb"] <= 520, out


def test_tmp_is_disk_not_memory(deploy, invoke):
    # /tmp is ephemeral storage, not memory: a 128 MB function writes 400 MB
    # into its 512 MB /tmp without being OOM-killed.
    name = deploy("py_tmp", MemorySize=128, Timeout=120)
    r = invoke(name, {"op": "fill", "max_mb": 400})
    assert r.function_error is None, r.payload
    assert r.json == {"written_mb": 400, "error": None}, r.json


def test_update_code_retires_old_environments(lam, deploy, invoke):
    name = deploy("py_echo", Environment={"Variables": {"MARK": "a"}})
    z1 = make_zip("py_echo", extra={"marker.txt": "v1"})
    lam.update_function_code(FunctionName=name, ZipFile=z1)
    wait_updated(lam, name)
    one = invoke(name, {"write_tmp": "old"}).json
    assert one["code_marker"] == "v1"
    lam.update_function_code(FunctionName=name, ZipFile=make_zip("py_echo", extra={"marker.txt": "v2"}))
    wait_updated(lam, name)
    two = invoke(name, {}).json
    assert two["code_marker"] == "v2", "old code answered after UpdateFunctionCode"
    assert two["env_id"] != one["env_id"]
    assert two["tmp"] is None, "new environment inherited the old /tmp"
    lam.update_function_configuration(FunctionName=name, Environment={"Variables": {"MARK": "b"}})
    wait_updated(lam, name)
    three = invoke(name, {}).json
    assert three["env"]["MARK"] == "b", "old configuration answered after UpdateFunctionConfiguration"
    assert three["env_id"] != two["env_id"]


def test_concurrent_invokes_get_separate_environments(flicker, deploy):
    """N overlapping invokes run in N environments (one event at a time per
    environment).  The handler reports its own start/end times; we assert
    the invocations really overlapped, so a platform that serialises them
    fails here rather than passing by accident."""
    import concurrent.futures
    n = 4
    name = deploy("py_echo", Timeout=60)

    def one(i):
        c = flicker.new_client()
        r = c.invoke(FunctionName=name, Payload=json.dumps({"sleep": 6, "i": i}))
        assert r.get("FunctionError") is None
        return json.loads(r["Payload"].read())

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        outs = list(ex.map(one, range(n)))
    latest_start = max(o["start"] for o in outs)
    earliest_end = min(o["end"] for o in outs)
    assert latest_start < earliest_end, "invocations did not run concurrently"
    envs = {o["env_id"] for o in outs}
    assert len(envs) == n, f"{n} overlapping invokes shared environments: {envs}"
