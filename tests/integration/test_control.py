"""Control plane through boto3: every operation of lambda-api.md, the shapes
clients read, and the exact error codes of the documented failure cases."""
import re
import uuid

import pytest
from botocore.exceptions import ClientError

from harness import (ACCOUNT, REGION, ROLE, client_error_code, code_sha256, create_function,
                      make_zip, wait_active, wait_updated)

ARN_RE = re.compile(rf"^arn:aws:lambda:{REGION}:{ACCOUNT}:function:[A-Za-z0-9_-]+$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


VALIDATION = ("InvalidParameterValueException", "ValidationException")


def expect_error(code, status, fn, *args, **kw):
    """Asserts fn raises the error code (or one of a tuple of codes) with
    that HTTP status and a request id."""
    with pytest.raises(ClientError) as ei:
        fn(*args, **kw)
    err = ei.value
    codes = code if isinstance(code, tuple) else (code,)
    assert client_error_code(err) in codes, err.response
    assert err.response["ResponseMetadata"]["HTTPStatusCode"] == status, err.response
    assert err.response["ResponseMetadata"].get("RequestId"), "no x-amzn-RequestId on an error"
    return err


# ---------------------------------------------------------------- create/get

def test_create_function_shape(lam, fname):
    z = make_zip("py_echo")
    resp = lam.create_function(FunctionName=fname, Runtime="python3.11", Role=ROLE,
                               Handler="app.handler", Code={"ZipFile": z},
                               Description="echo for tests")
    try:
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 201
        assert resp["FunctionName"] == fname
        assert resp["FunctionArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{fname}"
        assert ARN_RE.match(resp["FunctionArn"])
        assert resp["Runtime"] == "python3.11"
        assert resp["Role"] == ROLE
        assert resp["Handler"] == "app.handler"
        assert resp["Description"] == "echo for tests"
        assert resp["CodeSize"] == len(z)
        assert resp["CodeSha256"] == code_sha256(z)
        assert resp["Timeout"] == 3
        assert resp["MemorySize"] == 128
        assert resp["Version"] == "$LATEST"
        assert TS_RE.match(resp["LastModified"]), resp["LastModified"]
        assert resp["RevisionId"]
        assert resp["State"] in ("Pending", "Active")
        assert resp.get("PackageType", "Zip") == "Zip"
        assert resp.get("Architectures", ["x86_64"]) == ["x86_64"]
        assert resp.get("EphemeralStorage", {"Size": 512}) == {"Size": 512}
        wait_active(lam, fname)
        got = lam.get_function(FunctionName=fname)
        cfg = got["Configuration"]
        assert cfg["State"] == "Active"
        assert cfg["LastUpdateStatus"] == "Successful"
        assert cfg["CodeSha256"] == code_sha256(z)
        assert cfg["RevisionId"] == resp["RevisionId"]
        assert got["Code"]["RepositoryType"] == "S3"
        assert got["Code"]["Location"]
        conf = lam.get_function_configuration(FunctionName=fname)
        assert conf["FunctionArn"] == resp["FunctionArn"]
        assert conf["CodeSha256"] == cfg["CodeSha256"]
    finally:
        lam.delete_function(FunctionName=fname)


def test_create_with_all_options(lam, deploy):
    name = deploy("py_echo", Timeout=7, MemorySize=256, Description="d",
                  Environment={"Variables": {"AA": "1", "BB": "two"}},
                  EphemeralStorage={"Size": 1024}, Architectures=["x86_64"],
                  Tags={"team": "flicker", "env": "test"})
    cfg = lam.get_function_configuration(FunctionName=name)
    assert cfg["Timeout"] == 7
    assert cfg["MemorySize"] == 256
    assert cfg["Environment"]["Variables"] == {"AA": "1", "BB": "two"}
    assert cfg["EphemeralStorage"]["Size"] == 1024
    got = lam.get_function(FunctionName=name)
    assert got.get("Tags") == {"team": "flicker", "env": "test"}


def test_get_function_by_arn(lam, deploy):
    name = deploy("py_echo")
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    assert lam.get_function(FunctionName=arn)["Configuration"]["FunctionName"] == name
    assert lam.get_function_configuration(FunctionName=arn)["FunctionName"] == name


def test_create_duplicate_conflict(lam, deploy):
    name = deploy("py_echo")
    expect_error("ResourceConflictException", 409, create_function, lam, name, "py_echo", wait=False)


def test_get_missing_function(lam):
    name = f"missing-{uuid.uuid4().hex[:8]}"
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=name)
    expect_error("ResourceNotFoundException", 404, lam.get_function_configuration, FunctionName=name)
    expect_error("ResourceNotFoundException", 404, lam.delete_function, FunctionName=name)
    expect_error("ResourceNotFoundException", 404, lam.invoke, FunctionName=name, Payload=b"{}")


# --------------------------------------------------------------- validation

@pytest.mark.parametrize("override", [
    {"Timeout": 0}, {"Timeout": 901}, {"MemorySize": 127}, {"MemorySize": 10241},
    {"Runtime": "cobol85"}, {"EphemeralStorage": {"Size": 511}},
    {"EphemeralStorage": {"Size": 10241}},
    {"Environment": {"Variables": {"BIG": "x" * 5000}}},
], ids=["timeout0", "timeout901", "mem127", "mem10241", "badruntime", "eph511", "eph10241",
        "env5k"])
def test_create_invalid_parameter(lam_novalidate, fname, override):
    params = dict(FunctionName=fname, Runtime="python3.11", Role=ROLE, Handler="app.handler",
                  Code={"ZipFile": make_zip("py_echo")})
    params.update(override)
    if "Environment" in override:
        # Lambda: "...environment variables ... exceeded the 4KB limit".
        expect_error("InvalidParameterValueException", 400, lam_novalidate.create_function, **params)
    else:
        # Range/enum constraints of the API model: Lambda's own front door
        # answers ValidationException; lambda-api.md says
        # InvalidParameterValueException.  Both are 400 and typed.
        expect_error(VALIDATION, 400, lam_novalidate.create_function, **params)
    # Nothing was created.
    expect_error("ResourceNotFoundException", 404, lam_novalidate.get_function, FunctionName=fname)


def test_update_config_invalid_parameter(lam_novalidate, deploy):
    name = deploy("py_echo")
    expect_error(VALIDATION, 400,
                 lam_novalidate.update_function_configuration, FunctionName=name, Timeout=901)
    expect_error(VALIDATION, 400,
                 lam_novalidate.update_function_configuration, FunctionName=name, MemorySize=64)
    assert lam_novalidate.get_function_configuration(FunctionName=name)["Timeout"] == 3


# ------------------------------------------------------------------ listing

def test_list_functions_paging(lam, deploy):
    names = {deploy("py_echo") for _ in range(5)}
    seen, marker, pages = [], None, 0
    while True:
        kw = {"MaxItems": 2}
        if marker:
            kw["Marker"] = marker
        page = lam.list_functions(**kw)
        pages += 1
        assert len(page["Functions"]) <= 2
        seen += [f["FunctionName"] for f in page["Functions"]]
        marker = page.get("NextMarker")
        if not marker:
            break
        assert pages < 500, "paging does not terminate"
    assert len(seen) == len(set(seen)), f"duplicates across pages: {seen}"
    assert names <= set(seen)
    assert pages >= 3
    # The paginator agrees.
    all_names = [f["FunctionName"] for p in lam.get_paginator("list_functions").paginate(
        PaginationConfig={"PageSize": 3}) for f in p["Functions"]]
    assert names <= set(all_names)
    for f in lam.list_functions()["Functions"]:
        if f["FunctionName"] in names:
            assert ARN_RE.match(f["FunctionArn"])
            assert f["Runtime"] == "python3.11"


# ----------------------------------------------------------------- updates

def test_update_code_and_config(lam, deploy):
    name = deploy("py_echo")
    before = lam.get_function_configuration(FunctionName=name)
    z2 = make_zip("py_echo", extra={"marker.txt": "v2"})
    r = lam.update_function_code(FunctionName=name, ZipFile=z2)
    assert r["CodeSha256"] == code_sha256(z2)
    assert r["CodeSize"] == len(z2)
    assert r["RevisionId"] != before["RevisionId"]
    wait_updated(lam, name)
    r2 = lam.update_function_configuration(FunctionName=name, Timeout=10, MemorySize=512,
                                           Description="changed",
                                           Environment={"Variables": {"KK": "V"}})
    assert r2["Timeout"] == 10 and r2["MemorySize"] == 512
    assert r2["RevisionId"] != r["RevisionId"]
    wait_updated(lam, name)
    cfg = lam.get_function_configuration(FunctionName=name)
    assert cfg["LastUpdateStatus"] == "Successful"
    assert cfg["Description"] == "changed"
    assert cfg["Environment"]["Variables"] == {"KK": "V"}
    assert cfg["CodeSha256"] == code_sha256(z2)


def test_revision_id_precondition(lam, deploy):
    name = deploy("py_echo")
    rev = lam.get_function_configuration(FunctionName=name)["RevisionId"]
    new = lam.update_function_configuration(FunctionName=name, Timeout=5, RevisionId=rev)
    wait_updated(lam, name)
    # The old RevisionId is stale now: every guarded write must refuse it.
    expect_error("PreconditionFailedException", 412, lam.update_function_configuration,
                 FunctionName=name, Timeout=6, RevisionId=rev)
    expect_error("PreconditionFailedException", 412, lam.update_function_code,
                 FunctionName=name, ZipFile=make_zip("py_echo"), RevisionId=rev)
    expect_error("PreconditionFailedException", 412, lam.publish_version,
                 FunctionName=name, RevisionId=rev)
    assert lam.get_function_configuration(FunctionName=name)["Timeout"] == 5
    # The current one works.
    lam.publish_version(FunctionName=name, RevisionId=new["RevisionId"])


def test_waiters(lam, fname):
    create_function(lam, fname, "py_echo", wait=False)
    try:
        lam.get_waiter("function_active_v2").wait(FunctionName=fname,
                                                  WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        lam.update_function_configuration(FunctionName=fname, Timeout=4)
        lam.get_waiter("function_updated_v2").wait(FunctionName=fname,
                                                   WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        assert lam.get_function(FunctionName=fname)["Configuration"]["Timeout"] == 4
    finally:
        lam.delete_function(FunctionName=fname)


# ----------------------------------------------------------------- deletion

def test_delete_function(lam, fname):
    create_function(lam, fname, "py_echo")
    r = lam.delete_function(FunctionName=fname)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=fname)
    assert fname not in [f["FunctionName"] for f in lam.get_paginator("list_functions")
                         .paginate().build_full_result()["Functions"]]
    # The name is free again.
    create_function(lam, fname, "py_echo")
    lam.delete_function(FunctionName=fname)


def test_delete_version_keeps_function(lam, deploy):
    name = deploy("py_echo")
    v1 = lam.publish_version(FunctionName=name)["Version"]
    r = lam.delete_function(FunctionName=name, Qualifier=v1)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error("ResourceNotFoundException", 404, lam.get_function, FunctionName=name, Qualifier=v1)
    assert lam.get_function(FunctionName=name)["Configuration"]["Version"] == "$LATEST"
    # $LATEST cannot be deleted on its own (Lambda: InvalidParameterValueException).
    expect_error("InvalidParameterValueException", 400, lam.delete_function,
                 FunctionName=name, Qualifier="$LATEST")


# ----------------------------------------------------------------- versions

def test_publish_and_list_versions(lam, deploy):
    name = deploy("py_echo", Description="first")
    v1 = lam.publish_version(FunctionName=name, Description="v1")
    assert v1["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert v1["Version"] == "1"
    assert v1["FunctionArn"].endswith(f":function:{name}:1")
    assert v1["Description"] == "v1"
    # Unchanged code+config: Lambda returns the existing version, no new one.
    assert lam.publish_version(FunctionName=name)["Version"] == "1"
    lam.update_function_configuration(FunctionName=name, Timeout=9)
    wait_updated(lam, name)
    v2 = lam.publish_version(FunctionName=name)
    assert v2["Version"] == "2"
    assert v2["Timeout"] == 9
    # A version is immutable: later $LATEST changes do not reach it.
    lam.update_function_configuration(FunctionName=name, Timeout=11)
    wait_updated(lam, name)
    assert lam.get_function_configuration(FunctionName=name, Qualifier="1")["Timeout"] == 3
    assert lam.get_function_configuration(FunctionName=name, Qualifier="2")["Timeout"] == 9
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]]
    assert versions == ["$LATEST", "1", "2"]
    expect_error("ResourceNotFoundException", 404, lam.get_function_configuration,
                 FunctionName=name, Qualifier="42")


def test_create_with_publish(lam, deploy):
    name = deploy("py_echo", Publish=True)
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]]
    assert versions == ["$LATEST", "1"]


# ------------------------------------------------------------------ aliases

def test_alias_lifecycle(lam, deploy):
    name = deploy("py_echo")
    lam.publish_version(FunctionName=name)
    lam.update_function_configuration(FunctionName=name, Timeout=8)
    wait_updated(lam, name)
    lam.publish_version(FunctionName=name)
    a = lam.create_alias(FunctionName=name, Name="prod", FunctionVersion="1", Description="p")
    assert a["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert a["AliasArn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}:prod"
    assert a["FunctionVersion"] == "1"
    assert a["RevisionId"]
    expect_error("ResourceConflictException", 409, lam.create_alias, FunctionName=name,
                 Name="prod", FunctionVersion="1")
    g = lam.get_alias(FunctionName=name, Name="prod")
    assert g["FunctionVersion"] == "1" and g["Description"] == "p"
    u = lam.update_alias(FunctionName=name, Name="prod", FunctionVersion="2",
                         RoutingConfig={"AdditionalVersionWeights": {"1": 0.25}})
    assert u["FunctionVersion"] == "2"
    assert u["RoutingConfig"]["AdditionalVersionWeights"] == {"1": 0.25}
    expect_error("PreconditionFailedException", 412, lam.update_alias, FunctionName=name,
                 Name="prod", FunctionVersion="1", RevisionId=a["RevisionId"])
    lam.create_alias(FunctionName=name, Name="dev", FunctionVersion="$LATEST")
    names = sorted(x["Name"] for x in lam.list_aliases(FunctionName=name)["Aliases"])
    assert names == ["dev", "prod"]
    # The alias qualifies GetFunction.
    assert lam.get_function_configuration(FunctionName=name, Qualifier="prod")["Version"] == "2"
    r = lam.delete_alias(FunctionName=name, Name="dev")
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    expect_error("ResourceNotFoundException", 404, lam.get_alias, FunctionName=name, Name="dev")


def test_alias_to_missing_version(lam, deploy):
    name = deploy("py_echo")
    expect_error("ResourceNotFoundException", 404, lam.create_alias, FunctionName=name,
                 Name="ghost", FunctionVersion="7")


# -------------------------------------------------------------- concurrency

def test_function_concurrency(lam, deploy):
    name = deploy("py_echo")
    r = lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=5)
    assert r["ReservedConcurrentExecutions"] == 5
    assert lam.get_function_concurrency(FunctionName=name)["ReservedConcurrentExecutions"] == 5
    assert lam.get_function(FunctionName=name)["Concurrency"]["ReservedConcurrentExecutions"] == 5
    acct = lam.get_account_settings()
    assert acct["AccountLimit"]["UnreservedConcurrentExecutions"] <= \
        acct["AccountLimit"]["ConcurrentExecutions"] - 5
    r = lam.delete_function_concurrency(FunctionName=name)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(FunctionName=name)


def test_concurrency_over_unreserved_minimum(lam, deploy):
    name = deploy("py_echo")
    limit = lam.get_account_settings()["AccountLimit"]["ConcurrentExecutions"]
    # Lambda keeps at least 100 unreserved: reserving limit-50 must fail.
    expect_error("InvalidParameterValueException", 400, lam.put_function_concurrency,
                 FunctionName=name, ReservedConcurrentExecutions=limit - 50)


def test_account_settings(lam, deploy):
    deploy("py_echo")
    s = lam.get_account_settings()
    assert s["AccountLimit"]["ConcurrentExecutions"] == 1000
    assert 0 < s["AccountLimit"]["UnreservedConcurrentExecutions"] <= 1000
    assert s["AccountUsage"]["FunctionCount"] >= 1


def test_event_invoke_config(lam, lam_novalidate, deploy):
    name = deploy("py_echo")
    r = lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0,
                                             MaximumEventAgeInSeconds=60)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert r["MaximumRetryAttempts"] == 0
    assert r["MaximumEventAgeInSeconds"] == 60
    assert r["FunctionArn"].startswith(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
    expect_error(VALIDATION, 400,
                 lam_novalidate.put_function_event_invoke_config, FunctionName=name,
                 MaximumRetryAttempts=3)


# ------------------------------------------------------------------ bodies

def test_malformed_json_body(flicker):
    st, h, body = flicker.raw("POST", "/2015-03-31/functions", body=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert st == 400, body
    assert h.get("x-amzn-errortype", "").split(":")[0] == "InvalidRequestContentException", h
    assert h.get("x-amzn-requestid")


def test_missing_required_field(flicker):
    st, h, body = flicker.raw("POST", "/2015-03-31/functions", body=b'{"Runtime":"python3.11"}',
                              headers={"Content-Type": "application/json"})
    assert st == 400, body
    assert h.get("x-amzn-errortype", "").split(":")[0] in (
        "InvalidParameterValueException", "ValidationException"), h


def test_trailing_slash_paths(flicker):
    # 2.9-era clients send /functions/ and /account-settings/.
    for path in ("/2015-03-31/functions/", "/2016-08-19/account-settings/"):
        st, h, body = flicker.raw("GET", path)
        assert st == 200, (path, st, body[:200])
        assert h.get("x-amzn-requestid")


def test_status_endpoint(flicker):
    import json
    st, h, body = flicker.raw("GET", "/flicker/status")
    assert st == 200
    assert "version" in json.loads(body)
