"""The cluster key (docs/rpc.md): roles started with --cluster-key-file
refuse internal RPC from peers that do not prove they hold the key.

Placement and two workers run as their own processes over TCP: the worker
started with the key registers, the one without it is turned away (it
never appears in placement.workers).  A Python client written here from
docs/rpc.md is refused without an rpc.auth frame, with a wrong key and
with a replayed one, and served when it sends a fresh HMAC of its own."""
import hashlib
import hmac
import json
import os
import secrets
import socket
import struct
import subprocess
import tempfile
import time

from harness import BINARY, SLOW, STOP_TIMEOUT

KEY = b"integration-cluster-key-" + secrets.token_hex(8).encode()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def frame(hdr, body=b""):
    h = json.dumps(hdr).encode()
    return struct.pack(">II", len(h), len(body)) + h + body


def auth(key, nonce=None, t=None):
    nonce = nonce or secrets.token_hex(16)
    t = int(time.time() * 1000) if t is None else t
    mac = hmac.new(key, ("flicker-rpc-auth-v1\n%s\n%d" % (nonce, t)).encode(), hashlib.sha256)
    return {"m": "rpc.auth", "nonce": nonce, "t": t, "mac": mac.hexdigest()}


def ask(port, first=None, method="placement.workers"):
    """Sends [first], then a request; the reply's header, or None when the
    server closed the connection instead."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10 * SLOW)
    try:
        if first:
            s.sendall(frame(first))
        s.sendall(frame({"id": 1, "m": method}))
        head = b""
        while len(head) < 8:
            chunk = s.recv(8 - len(head))
            if not chunk:
                return None
            head += chunk
        hl, bl = struct.unpack(">II", head)
        data = b""
        while len(data) < hl + bl:
            chunk = s.recv(hl + bl - len(data))
            if not chunk:
                return None
            data += chunk
        return json.loads(data[:hl])
    finally:
        s.close()


def test_roles_refuse_peers_without_the_cluster_key():
    with tempfile.TemporaryDirectory(prefix="flicker-key-") as d:
        key_file = os.path.join(d, "cluster.key")
        with open(key_file, "wb") as f:
            f.write(KEY + b"\n")
        os.chmod(key_file, 0o600)
        pport, wport1, wport2 = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k != "FLICKER_CLUSTER_KEY_FILE"}
        logs = {n: open(os.path.join(d, n + ".log"), "wb") for n in ("placement", "w1", "w2")}
        procs = []
        try:
            procs.append(subprocess.Popen(
                [BINARY, "serve", "placement", "--listen", "tcp:127.0.0.1:%d" % pport,
                 "--data", os.path.join(d, "p"), "--cluster-key-file", key_file],
                stdout=logs["placement"], stderr=subprocess.STDOUT, env=env))
            for name, port, keyed in (("w1", wport1, True), ("w2", wport2, False)):
                argv = [BINARY, "serve", "worker", "--listen", "tcp:127.0.0.1:%d" % port,
                        "--id", name, "--placement", "tcp:127.0.0.1:%d" % pport,
                        "--memory-mb", "1024", "--data", os.path.join(d, name)]
                if keyed:
                    argv += ["--cluster-key-file", key_file]
                procs.append(subprocess.Popen(argv, stdout=logs[name], stderr=subprocess.STDOUT,
                                              env=env))
            # the keyed worker registers; the other never does
            workers = []
            deadline = time.time() + 20 * SLOW
            while time.time() < deadline:
                try:
                    r = ask(pport, auth(KEY))
                except OSError:
                    r = None
                workers = [w["id"] for w in (r or {}).get("workers", [])]
                if "w1" in workers:
                    break
                time.sleep(0.2)
            assert "w1" in workers, workers
            time.sleep(2)  # w2 has been retrying all along
            r = ask(pport, auth(KEY))
            assert [w["id"] for w in r["workers"]] == ["w1"], r
            # a client without the key, with another key, a replay, a stale clock
            assert ask(pport) is None
            assert ask(pport, auth(b"not-the-cluster-key-at-all")) is None
            a = auth(KEY)
            assert ask(pport, a) is not None
            assert ask(pport, a) is None
            assert ask(pport, auth(KEY, t=int(time.time() * 1000) - 300000)) is None
            # the worker's own RPC server wants the key too
            assert ask(wport1, method="env.list") is None
            assert "envs" in ask(wport1, auth(KEY), method="env.list")
            for p in procs:
                assert p.poll() is None, "a role exited"
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for f in logs.values():
                f.close()
        placement_log = open(os.path.join(d, "placement.log"), errors="replace").read()
        assert "rpc.auth" in placement_log or "first frame" in placement_log, placement_log[-2000:]


def test_up_with_a_cluster_key_serves_and_refuses_a_loose_key_file(workroot):
    """`flicker up --cluster-key-file` hands the key to every role it starts
    (the invoke path crosses frontend -> assignment -> placement -> worker);
    a key file others may read is refused before anything starts."""
    import uuid
    from harness import Server, create_function, do_invoke
    d = workroot / ("key-" + uuid.uuid4().hex[:6])
    d.mkdir(parents=True)
    key_file = d / "cluster.key"
    key_file.write_bytes(KEY)
    key_file.chmod(0o644)
    r = subprocess.run([BINARY, "up", "--data", str(d / "data0"), "--listen",
                        "127.0.0.1:%d" % free_port(), "--cluster-key-file", str(key_file)],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "chmod 600" in r.stderr, r.stderr
    key_file.chmod(0o600)
    srv = Server(d / "srv", args=["--cluster-key-file", str(key_file)])
    srv.start()
    try:
        c = srv.client()
        name = "keyed-" + uuid.uuid4().hex[:6]
        create_function(c, name, "py_echo")
        r1 = do_invoke(c, name, {"n": 1})
        r2 = do_invoke(c, name, {"n": 2})
        assert r1.status == 200 and r1.json["event"] == {"n": 1}, r1
        assert r2.status == 200 and r2.json["env_id"] == r1.json["env_id"]
        assert "first frame" not in srv.log_text(), "a role was refused its own cluster's key"
    finally:
        assert srv.stop() == 0, srv.log_tail()
