"""SigV4 authentication: what is refused (403 + a Lambda error type) and
what is not (health, --no-auth)."""
import datetime
import json

import pytest
from botocore.exceptions import ClientError

from harness import ACCESS_KEY, client_error_code, do_invoke

AUTH_TYPES = {"MissingAuthenticationTokenException", "IncompleteSignatureException",
              "UnrecognizedClientException", "InvalidSignatureException",
              "AccessDeniedException"}


def error_type(h):
    return h.get("x-amzn-errortype", "").split(":")[0]


def test_health_is_unauthenticated(flicker):
    st, _, _ = flicker.raw("GET", "/flicker/health", sign=False)
    assert st == 200


@pytest.mark.parametrize("method,path", [
    ("GET", "/2015-03-31/functions"),
    ("GET", "/2016-08-19/account-settings"),
    ("POST", "/2015-03-31/functions/anything/invocations"),
    ("GET", "/flicker/status"),
])
def test_unsigned_refused(flicker, method, path):
    st, h, body = flicker.raw(method, path, body=b"{}" if method == "POST" else b"", sign=False)
    assert st == 403, body
    assert error_type(h) in AUTH_TYPES, h
    assert error_type(h) == "MissingAuthenticationTokenException", h
    assert h.get("x-amzn-requestid")
    doc = json.loads(body)
    assert doc.get("message") or doc.get("Message")


def test_wrong_secret(flicker):
    c = flicker.client(secret_key="not-the-secret")
    with pytest.raises(ClientError) as ei:
        c.list_functions()
    assert client_error_code(ei.value) == "InvalidSignatureException"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_unknown_access_key(flicker):
    c = flicker.client(access_key="AKIAUNKNOWNKEY000000")
    with pytest.raises(ClientError) as ei:
        c.list_functions()
    assert client_error_code(ei.value) == "UnrecognizedClientException"
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_wrong_secret_cannot_invoke(flicker, deploy):
    name = deploy("py_echo")
    c = flicker.client(secret_key="not-the-secret")
    with pytest.raises(ClientError) as ei:
        c.invoke(FunctionName=name, Payload=b"{}")
    assert client_error_code(ei.value) == "InvalidSignatureException"


def test_tampered_body(flicker):
    def tamper(headers, body):
        return body.replace(b"python3.11", b"python3.12")
    body = json.dumps({"FunctionName": "tampered", "Runtime": "python3.11"}).encode()
    st, h, _ = flicker.raw("POST", "/2015-03-31/functions", body=body, tamper=tamper)
    assert st == 403
    assert error_type(h) == "InvalidSignatureException", h


def test_tampered_path(flicker):
    def tamper(headers, body):
        return body
    # Sign one path, send another: build by hand.
    import http.client
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from harness import SECRET_KEY, REGION
    req = AWSRequest(method="GET", url=flicker.endpoint + "/2015-03-31/functions/a")
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", REGION).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", flicker.port, timeout=30)
    conn.request("GET", "/2015-03-31/functions/b", headers=dict(req.headers.items()))
    r = conn.getresponse()
    r.read()
    assert r.status == 403
    assert error_type({k.lower(): v for k, v in r.getheaders()}) == "InvalidSignatureException"


def test_stale_date(flicker):
    """A signature made 20 minutes ago is refused (±15 min window)."""
    import http.client
    from unittest import mock
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from harness import SECRET_KEY, REGION
    old = datetime.datetime.utcnow() - datetime.timedelta(minutes=20)
    req = AWSRequest(method="GET", url=flicker.endpoint + "/2015-03-31/functions")
    with mock.patch("botocore.auth.datetime") as dt:
        dt.datetime.utcnow.return_value = old
        dt.datetime.strftime = datetime.datetime.strftime
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", REGION).add_auth(req)
    assert req.headers["X-Amz-Date"] == old.strftime("%Y%m%dT%H%M%SZ")
    conn = http.client.HTTPConnection("127.0.0.1", flicker.port, timeout=30)
    conn.request("GET", "/2015-03-31/functions", headers=dict(req.headers.items()))
    r = conn.getresponse()
    r.read()
    assert r.status == 403
    assert error_type({k.lower(): v for k, v in r.getheaders()}) == "InvalidSignatureException"


def test_garbled_authorization(flicker):
    st, h, _ = flicker.raw("GET", "/2015-03-31/functions", sign=False,
                           headers={"Authorization": "AWS4-HMAC-SHA256 garbage",
                                    "X-Amz-Date": "20260101T000000Z"})
    assert st == 403
    assert error_type(h) in AUTH_TYPES, h


def test_colon_in_path_signature(lam, deploy):
    """`name:alias` travels as name%3Aalias and is signed double-encoded;
    a server that canonicalises the path wrongly answers 403 here."""
    name = deploy("py_echo")
    lam.publish_version(FunctionName=name)
    lam.create_alias(FunctionName=name, Name="prod", FunctionVersion="1")
    r = do_invoke(lam, f"{name}:prod", {})
    assert r.function_error is None and r.executed_version == "1"
    assert lam.get_function(FunctionName=f"{name}:prod")["Configuration"]["Version"] == "1"


def test_no_auth_instance(spawn):
    srv = spawn(auth=False)
    st, h, body = srv.raw("GET", "/2015-03-31/functions", sign=False)
    assert st == 200, body
    assert "Functions" in json.loads(body)
    # Signed requests (any key) still work.
    assert "Functions" in srv.client(access_key="AKIAANYTHING00000000").list_functions()
