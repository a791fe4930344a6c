"""Concurrency limits: reserved concurrency (0 and 1) and the account limit
(--account-concurrency).  Overlap is established from the function's own
log (it prints STARTED <token> when running), never from sleeps."""
import json
import threading
import uuid

import pytest
from botocore.exceptions import ClientError

from harness import client_error_code, create_function, do_invoke, SLOW


def assert_throttled(client, name, reason):
    with pytest.raises(ClientError) as ei:
        client.invoke(FunctionName=name, Payload=b"{}")
    e = ei.value
    assert client_error_code(e) == "TooManyRequestsException", e.response
    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert e.response.get("Reason") == reason, e.response
    assert e.response["ResponseMetadata"]["HTTPHeaders"].get("retry-after") is not None, \
        "429 without Retry-After"


def test_reserved_zero_throttles(lam, deploy):
    name = deploy("py_echo")
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    assert_throttled(lam, name, "ReservedFunctionConcurrentInvocationLimitExceeded")
    # Removing the limit lets it run again.
    lam.delete_function_concurrency(FunctionName=name)
    assert do_invoke(lam, name, {}).function_error is None


def test_reserved_zero_raw_shape(flicker, lam, deploy):
    name = deploy("py_echo")
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    st, h, body = flicker.raw("POST", f"/2015-03-31/functions/{name}/invocations", body=b"{}")
    assert st == 429
    assert h.get("x-amzn-errortype", "").split(":")[0] == "TooManyRequestsException"
    doc = json.loads(body)
    assert doc["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert doc.get("message") or doc.get("Message")


class Background:
    """Runs one invoke in a thread; join() returns its Invocation."""

    def __init__(self, server, name, payload):
        self.result, self.error = None, None
        self.t = threading.Thread(target=self._run, args=(server.new_client(), name, payload),
                                  daemon=True)
        self.t.start()

    def _run(self, client, name, payload):
        try:
            self.result = do_invoke(client, name, payload)
        except Exception as e:  # noqa: BLE001
            self.error = e

    def join(self, timeout=180 * SLOW):
        self.t.join(timeout)
        assert not self.t.is_alive(), "background invoke did not finish"
        if self.error:
            raise self.error
        return self.result


def test_reserved_one_throttles_second(flicker, lam, deploy):
    name = deploy("py_echo", Timeout=60)
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    token = uuid.uuid4().hex
    bg = Background(flicker, name, {"marker": token, "sleep": 8})
    flicker.wait_log(name, f"STARTED {token}")
    assert_throttled(lam, name, "ReservedFunctionConcurrentInvocationLimitExceeded")
    assert bg.join().function_error is None
    # Once it finished, the slot is free again.
    assert do_invoke(lam, name, {}).function_error is None


def test_account_concurrency_limit(spawn):
    srv = spawn("--account-concurrency", "2")
    c = srv.client()
    assert c.get_account_settings()["AccountLimit"]["ConcurrentExecutions"] == 2
    names = [f"acct-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for n in names:
        create_function(c, n, "py_echo", Timeout=60)
    tokens = [uuid.uuid4().hex for _ in names]
    bgs = [Background(srv, n, {"marker": t, "sleep": 10}) for n, t in zip(names, tokens)]
    for n, t in zip(names, tokens):
        srv.wait_log(n, f"STARTED {t}")
    assert_throttled(c, names[0], "ConcurrentInvocationLimitExceeded")
    for bg in bgs:
        assert bg.join().function_error is None
    assert do_invoke(c, names[1], {}).function_error is None
