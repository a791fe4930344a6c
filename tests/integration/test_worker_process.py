"""`flicker serve worker` as its own process, driven over flicker's RPC
(docs/protocol.md, Worker) by a small Python client written here from the
wire format in docs/rpc.md: create, invoke, list, destroy, then SIGTERM ->
exit 0 with no sandbox process or cgroup left.  Placement is unreachable
(tcp:127.0.0.1:1): the worker keeps retrying registration in the
background and serves anyway."""
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import BINARY, IS_ASAN, SANITIZER_PATTERNS, SLOW, STOP_TIMEOUT, descendants, pid_alive

BOOTSTRAP = r'''#!/usr/bin/python3 -S
import http.client, json, os, sys
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
base = "/2018-06-01/runtime/invocation/"
while True:
    c = http.client.HTTPConnection(host, int(port))
    c.request("GET", base + "next")
    r = c.getresponse()
    event = r.read()
    rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
    print("got", len(event), "bytes", flush=True)
    if event == b'"fail"':
        path, out = rid + "/error", json.dumps({"errorMessage": "asked to", "errorType": "TestError"})
    else:
        path, out = rid + "/response", event
    c.request("POST", base + path, out)
    c.getresponse().read()
    c.close()
'''


class RpcError(Exception):
    def __init__(self, error, body):
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.error = error
        self.body = body


class Rpc:
    """A blocking client for flicker's RPC frames: u32 BE header length,
    u32 BE body length, JSON header, raw body.  Notifications received
    while waiting for a reply are kept in self.notes."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60 * SLOW)
        self.sock.connect(path)
        self.next_id = 1
        self.notes = []

    def close(self):
        self.sock.close()

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("worker closed the connection")
            buf += chunk
        return buf

    def send(self, method, params=None, body=b""):
        hdr = dict(params or {})
        hdr["id"] = self.next_id
        hdr["m"] = method
        self.next_id += 1
        h = json.dumps(hdr, separators=(",", ":")).encode()
        self.sock.sendall(struct.pack(">II", len(h), len(body)) + h + body)
        return hdr["id"]

    def recv(self):
        hlen, blen = struct.unpack(">II", self._read(8))
        return json.loads(self._read(hlen)), self._read(blen)

    def call(self, method, params=None, body=b""):
        want = self.send(method, params, body)
        while True:
            hdr, b = self.recv()
            if "id" not in hdr:
                self.notes.append((hdr, b))
                continue
            assert hdr["id"] == want, hdr
            if "error" in hdr:
                raise RpcError(hdr["error"], b)
            del hdr["id"]
            return hdr, b


def fn_config(code_dir, name="wp-echo"):
    return {"name": name, "version": "$LATEST", "arn": f"arn:aws:lambda:us-east-1:000000000000:function:{name}",
            "runtime": "provided.al2023", "handler": "", "memory_mb": 128, "timeout_s": 10 * SLOW,
            "ephemeral_mb": 512, "env_vars": {}, "code_sha256": "", "code_dir": str(code_dir),
            "revision_id": "r1", "reserved_concurrency": -1, "config_key": f"{name}:$LATEST:r1",
            "qualified_arn": f"arn:aws:lambda:us-east-1:000000000000:function:{name}:$LATEST",
            "max_retry_attempts": 2, "max_event_age_s": 21600}


def cgroup_dirs_of(pid):
    """The worker's own sandbox cgroup parents (sbx-PID-*) under every hierarchy."""
    found = []
    for parent in Path("/sys/fs/cgroup").glob("*/flicker"):
        found += [str(p) for p in parent.glob(f"sbx-{pid}-*")]
    for p in Path("/sys/fs/cgroup").glob(f"flicker/sbx-{pid}-*"):
        found.append(str(p))
    return found


@pytest.fixture
def worker_proc():
    if os.geteuid() != 0:
        pytest.skip("needs root (sandboxes)")
    tmp = tempfile.mkdtemp(prefix="flicker-wp-")
    os.chmod(tmp, 0o700)
    code = Path(tmp) / "code"
    code.mkdir(mode=0o755)
    os.chmod(code, 0o755)
    (code / "bootstrap").write_text(BOOTSTRAP)
    os.chmod(code / "bootstrap", 0o755)
    sock = f"{tmp}/worker.sock"
    log = open(f"{tmp}/worker.log", "w+")
    proc = subprocess.Popen([str(BINARY), "serve", "worker", "--listen", f"unix:{sock}",
                             "--placement", "tcp:127.0.0.1:1", "--id", "wp-test",
                             "--data", f"{tmp}/data", "--heartbeat-ms", "200"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60 * SLOW
    while not os.path.exists(sock):
        assert proc.poll() is None, "worker exited: " + Path(f"{tmp}/worker.log").read_text()
        assert time.monotonic() < deadline, "worker did not start listening"
        time.sleep(0.05)
    state = {"proc": proc, "sock": sock, "code": code, "log": f"{tmp}/worker.log"}
    yield state
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()
    text = Path(f"{tmp}/worker.log").read_text()
    if IS_ASAN:
        assert not any(p in text for p in SANITIZER_PATTERNS), text
    subprocess.run(["rm", "-rf", tmp])


def test_worker_process_lifecycle(worker_proc):
    proc, code = worker_proc["proc"], worker_proc["code"]
    c = Rpc(worker_proc["sock"])
    cfg = fn_config(code)
    # create: answered once Init is done
    assert c.call("env.create", {"env_id": "env-a", "config": cfg}) == ({}, b"")
    # a second create of the same id and config is idempotent
    assert c.call("env.create", {"env_id": "env-a", "config": cfg}) == ({}, b"")
    # invoke: the body is the payload, the reply body the response
    res, body = c.call("env.invoke", {"env_id": "env-a", "request_id": "req-1",
                                      "invoked_arn": cfg["arn"]}, b'{"hello":"worker"}')
    assert res["status"] == "ok" and body == b'{"hello":"worker"}'
    assert "got 18 bytes" in res["log_tail"] and "REPORT RequestId: req-1" in res["log_tail"]
    # binary-safe payload
    res, body = c.call("env.invoke", {"env_id": "env-a", "request_id": "req-2"}, b"a\0b" * 1000)
    assert res["status"] == "ok" and body == b"a\0b" * 1000
    # function error
    res, body = c.call("env.invoke", {"env_id": "env-a", "request_id": "req-3"}, b'"fail"')
    assert res["status"] == "function_error"
    assert json.loads(body) == {"errorMessage": "asked to", "errorType": "TestError"}
    # unknown environment
    with pytest.raises(RpcError) as e:
        c.call("env.invoke", {"env_id": "nope", "request_id": "req-4"}, b"{}")
    assert e.value.code == "UnknownEnvironment"
    # a second environment, then list
    assert c.call("env.create", {"env_id": "env-b", "config": fn_config(code, "wp-other")}) == ({}, b"")
    res, _ = c.call("env.list")
    assert res["worker_id"] == "wp-test"
    envs = {e["env_id"]: e for e in res["envs"]}
    assert set(envs) == {"env-a", "env-b"}
    assert envs["env-a"]["state"] == "idle" and envs["env-a"]["function"] == "wp-echo"
    assert envs["env-a"]["config_key"] == "wp-echo:$LATEST:r1" and envs["env-a"]["version"] == "$LATEST"
    status, _ = c.call("worker.status")
    assert status["worker_id"] == "wp-test" and status["environments_count"] == 2
    assert status["placement"] == "registering"  # placement is unreachable
    sandbox_pids = [e["pid"] for e in status["environments"]]
    assert all(pid_alive(p) for p in sandbox_pids)
    # destroy (unknown ids too)
    assert c.call("env.destroy", {"env_id": "env-b"}) == ({}, b"")
    assert c.call("env.destroy", {"env_id": "never-was"}) == ({}, b"")
    res, _ = c.call("env.list")
    assert [e["env_id"] for e in res["envs"]] == ["env-a"]
    with pytest.raises(RpcError) as e:
        c.call("env.invoke", {"env_id": "env-b", "request_id": "req-5"}, b"{}")
    assert e.value.code == "UnknownEnvironment"
    # registration keeps being retried in the background, and logged
    log = Path(worker_proc["log"]).read_text()
    assert "worker.register" in log
    c.close()

    # SIGTERM with an environment alive: exit 0, nothing left behind
    assert cgroup_dirs_of(proc.pid), "the worker has no sandbox cgroup parent?"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(STOP_TIMEOUT) == 0
    assert not any(pid_alive(p) for p in sandbox_pids)
    assert not descendants(proc.pid)
    assert cgroup_dirs_of(proc.pid) == []
    assert not os.path.exists(worker_proc["sock"])
    assert "stopped" in Path(worker_proc["log"]).read_text()


def test_worker_process_init_failure_and_bad_requests(worker_proc):
    code = worker_proc["code"]
    c = Rpc(worker_proc["sock"])
    # a bootstrap that reports an init error
    bad = code.parent / "bad"
    bad.mkdir(mode=0o755)
    os.chmod(bad, 0o755)
    (bad / "bootstrap").write_text(
        "#!/usr/bin/python3 -S\nimport http.client, os\n"
        "h, p = os.environ['AWS_LAMBDA_RUNTIME_API'].split(':')\n"
        "print('init is failing', flush=True)\n"
        "c = http.client.HTTPConnection(h, int(p))\n"
        "c.request('POST', '/2018-06-01/runtime/init/error', '{\"errorMessage\":\"no\",\"errorType\":\"InitBoom\"}')\n"
        "c.getresponse().read()\n")
    os.chmod(bad / "bootstrap", 0o755)
    with pytest.raises(RpcError) as e:
        c.call("env.create", {"env_id": "bad-1", "config": fn_config(bad, "wp-bad")})
    assert e.value.code == "InitFailed"
    assert json.loads(e.value.body) == {"errorMessage": "no", "errorType": "InitBoom"}
    assert "init is failing" in e.value.error["log_tail"]
    # no bootstrap at all: CreateFailed
    empty = code.parent / "empty"
    empty.mkdir(mode=0o755)
    with pytest.raises(RpcError) as e:
        c.call("env.create", {"env_id": "bad-2", "config": fn_config(empty, "wp-empty")})
    assert e.value.code == "CreateFailed"
    # no capacity
    big = fn_config(code)
    big["memory_mb"] = 1 << 30
    with pytest.raises(RpcError) as e:
        c.call("env.create", {"env_id": "bad-3", "config": big})
    assert e.value.code == "NoCapacity"
    # bad id / config
    with pytest.raises(RpcError) as e:
        c.call("env.create", {"env_id": "../x", "config": fn_config(code)})
    assert e.value.code == "InvalidRequest"
    with pytest.raises(RpcError) as e:
        c.call("env.create", {"env_id": "ok", "config": {"name": "x"}})
    assert e.value.code == "InvalidRequest"
    assert c.call("env.list")[0]["envs"] == []
    c.close()
    proc = worker_proc["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(STOP_TIMEOUT) == 0
    assert cgroup_dirs_of(proc.pid) == []
