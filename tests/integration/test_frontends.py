"""Concurrency limits hold across frontends: `flicker up` (split mode) plus
a second `flicker serve frontend` process pointed at the same assignment
replicas and placement.  The limits are enforced by the assignment leader,
so an invoke through frontend 2 must be throttled by invokes in flight
through frontend 1 (account limit and reserved concurrency)."""
import json
import os
import signal
import subprocess
import threading
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from harness import (ACCESS_KEY, BINARY, SECRET_KEY, SLOW, READY_TIMEOUT, STOP_TIMEOUT,
                     Server, create_function, do_invoke, free_port, wait_until)


class ExtraFrontend(Server):
    """A `flicker serve frontend` process (not `flicker up`), reusing the
    Server class for clients, raw(), logs and sanitizer checks."""

    def __init__(self, workdir, data, assignment, placement):
        super().__init__(workdir, data=data)
        self.assignment = assignment
        self.placement = placement

    def command(self):
        return [str(BINARY), "serve", "frontend", "--listen", f"127.0.0.1:{self.port}",
                "--data", str(self.data), "--assignment", ",".join(self.assignment),
                "--placement", self.placement]


@pytest.fixture
def two_frontends(spawn, workroot, request):
    # The account limit: 2 for the account-limit test; 101 for the reserved
    # concurrency test, since PutFunctionConcurrency must leave 100
    # unreserved (as AWS does).
    limit = getattr(request, "param", 2)
    main = spawn("--account-concurrency", str(limit), keep_alive=120)
    # Where the roles listen: `flicker up` lists them in DATA/run/roles.json
    # (the sockets themselves may live in a short directory elsewhere when
    # the data path is deep).
    roles_json = main.data / "run" / "roles.json"

    def addresses():
        try:
            roles = {r["name"]: r for r in json.loads(roles_json.read_text())["roles"]}
        except (OSError, ValueError, KeyError):
            return None
        names = ["assignment-1", "assignment-2", "assignment-3", "placement"]
        if not all(n in roles and roles[n].get("address") for n in names):
            return None
        paths = [roles[n]["address"][len("unix:"):] for n in names]
        if not all(os.path.exists(p) for p in paths):
            return None
        return [roles[n]["address"] for n in names]
    wait_until(lambda: addresses() is not None, 30 * SLOW, what="role sockets")
    addrs = addresses()
    fe2 = ExtraFrontend(workroot / f"fe2-{uuid.uuid4().hex[:6]}", main.data, addrs[:3], addrs[3])
    try:
        fe2.start()
        yield main, fe2
    finally:
        if fe2.running():
            rc = fe2.stop(signal.SIGTERM)
            hits = fe2.check_sanitizer()
            assert not hits, hits
            assert rc == 0, f"extra frontend exited {rc} on SIGTERM:\n{fe2.log_tail()}"


def _slow_invokes(srv, name, n, seconds, results, tag):
    """Starts n threads each invoking name with {"sleep": seconds} through
    srv; invoke i prints "STARTED tag-i" when its handler starts."""
    threads = []
    for i in range(n):
        def run(i=i):
            try:
                results[i] = do_invoke(srv.new_client(), name,
                                       {"sleep": seconds, "marker": f"{tag}-{i}"})
            except Exception as e:  # recorded, checked by the test
                results[i] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    return threads


def _expect_throttle(client, name, reason):
    try:
        r = do_invoke(client, name, {})
    except ClientError as e:
        err = e.response
        assert err["ResponseMetadata"]["HTTPStatusCode"] == 429, err
        assert err["Error"]["Code"] == "TooManyRequestsException", err
        body_reason = err.get("Reason") or err["Error"].get("Reason")
        assert body_reason == reason, err
        return err
    pytest.fail(f"invoke through the second frontend was not throttled: {r}")


def _wait_busy(srv, name, tag, n):
    """Waits until the n slow invokes are running their handler (cold starts
    take a while on a loaded machine): their STARTED markers are in the
    function's log."""
    def started():
        text, _ = srv.logs(name)
        return all(f"STARTED {tag}-{i}" in text for i in range(n))
    t0 = time.time()
    wait_until(started, 90 * SLOW, 0.25, f"{n} slow invokes of {name} running")
    print(f"{n} slow invoke(s) running after {time.time() - t0:.2f} s")


def test_account_limit_across_frontends(two_frontends):
    main, fe2 = two_frontends
    c1 = main.client()
    name = "fe-acct-" + uuid.uuid4().hex[:6]
    create_function(c1, name, "py_echo", Timeout=60 * SLOW)
    # The function is visible through the second frontend (shared store).
    assert fe2.client().get_function(FunctionName=name)["Configuration"]["FunctionName"] == name
    results = {}
    tag = uuid.uuid4().hex[:8]
    threads = _slow_invokes(main, name, 2, 10 * SLOW, results, tag)
    _wait_busy(main, name, tag, 2)
    t0 = time.time()
    _expect_throttle(fe2.client(), name, "ConcurrentInvocationLimitExceeded")
    print(f"throttled through frontend 2 in {time.time() - t0:.2f} s")
    for t in threads:
        t.join(120 * SLOW)
    for i, r in results.items():
        assert not isinstance(r, Exception), f"slow invoke {i} failed: {r!r}"
        assert r.status == 200 and r.function_error is None, r
    # Capacity is back: frontend 2 invokes fine.
    r = do_invoke(fe2.client(), name, {"n": 1})
    assert r.status == 200 and r.json["event"] == {"n": 1}, r


@pytest.mark.parametrize("two_frontends", [101], indirect=True)
def test_reserved_concurrency_across_frontends(two_frontends):
    main, fe2 = two_frontends
    c1 = main.client()
    name = "fe-rsv-" + uuid.uuid4().hex[:6]
    create_function(c1, name, "py_echo", Timeout=60 * SLOW)
    c1.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=1)
    assert fe2.client().get_function_concurrency(FunctionName=name).get(
        "ReservedConcurrentExecutions") == 1
    results = {}
    tag = uuid.uuid4().hex[:8]
    threads = _slow_invokes(main, name, 1, 10 * SLOW, results, tag)
    _wait_busy(main, name, tag, 1)
    _expect_throttle(fe2.client(), name, "ReservedFunctionConcurrentInvocationLimitExceeded")
    for t in threads:
        t.join(120 * SLOW)
    r = results[0]
    assert not isinstance(r, Exception), f"slow invoke failed: {r!r}"
    assert r.status == 200 and r.function_error is None, r
    r = do_invoke(fe2.client(), name, {"n": 2})
    assert r.status == 200 and r.json["event"] == {"n": 2}, r
