"""The store on etcd: hosts share nothing but an etcd cluster.

Three "hosts" made of network namespaces (netns.py, on their own subnet so
the multi-host suite can run at the same time), each with its own data
directory and an etcd member:

  host 1 (A): placement, the assignment replica (etcd journal), frontend A
  host 2 (B): frontend B
  host 3 (C): the only worker

Frontends and the worker run with --store etcd:...: functions, versions,
aliases and code (as content-addressed chunks) live in etcd only, so

  a. a function created through A is invoked through B, and the answer
     comes from C's worker, which fetched the code into its own data dir
     (B never needed it);
  b. code updated through B runs when invoked through A;
  c. versions and aliases published through one frontend are seen and
     invoked through the other;
  d. a corrupted chunk, and a hostile zip planted in etcd with consistent
     hashes, make the invoke fail cleanly while the platform keeps serving.

And `flicker up --store etcd:...` (split and embedded) on a loopback
cluster: two platforms with their own data dirs run each other's functions.
"""
import base64
import hashlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
import zipfile

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

import netns
from harness import (ACCESS_KEY, BINARY, REGION, REPO, SECRET_KEY, SLOW, Server, create_function,
                     do_invoke, make_zip, sandbox_cgroup_dirs, wait_updated)

SUBNET = "10.78.0"
FE_PORT = 9000


class Frontend(Server):
    """Client side of a frontend on host n (the process is a netns.Proc)."""

    def __init__(self, workdir, host, data):
        super().__init__(workdir, port=FE_PORT, data=data)
        self.host = host

    @property
    def endpoint(self):
        return f"http://{SUBNET}.{self.host}:{FE_PORT}"

    def status(self):
        url = self.endpoint + "/flicker/status"
        req = AWSRequest(method="GET", url=url, data=b"", headers={})
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", REGION).add_auth(req)
        with urllib.request.urlopen(urllib.request.Request(url, headers=dict(req.headers.items())),
                                    timeout=5) as r:
            return json.loads(r.read())


def wait_for(pred, timeout, what, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
            last = v
        except Exception as e:  # starting up
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Etcd:
    """Direct access to the cluster's JSON gateway (to plant bad data)."""

    def __init__(self, endpoint, prefix):
        self.endpoint, self.prefix = endpoint, prefix

    def _call(self, path, body):
        req = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def get(self, key):
        r = self._call("/v3/kv/range", {"key": base64.b64encode((self.prefix + key).encode()).decode()})
        kvs = r.get("kvs") or []
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def put(self, key, value):
        self._call("/v3/kv/put", {"key": base64.b64encode((self.prefix + key).encode()).decode(),
                                  "value": base64.b64encode(value).decode()})

    def count(self, under):
        k = (self.prefix + under).encode()
        end = k[:-1] + bytes([k[-1] + 1])
        r = self._call("/v3/kv/range", {"key": base64.b64encode(k).decode(),
                                        "range_end": base64.b64encode(end).decode(), "count_only": True})
        return int(r.get("count", 0))


class Hosts:
    def __init__(self, net, tmp, env):
        self.net, self.tmp, self.env = net, tmp, env
        self.roles = {}

    def start(self, n, name, argv):
        p = self.net.spawn(n, name, argv, self.tmp / f"{name}.log", env=self.env)
        self.roles[name] = p
        return p


@pytest.fixture
def hosts(tmp_path, request):
    reason = netns.unavailable_reason(SUBNET)
    if reason:
        pytest.skip(f"the etcd store test needs network namespaces: {reason}")
    tag = uuid.uuid4().hex[:4]
    net = netns.Net(tag, subnet=SUBNET)
    cg_before = sandbox_cgroup_dirs()
    data = {n: tmp_path / f"data-{n}" for n in (1, 2, 3)}
    for d in data.values():
        d.mkdir()
    ips = [net.ip(n) for n in (1, 2, 3)]
    endpoints = ",".join(f"http://{ip}:2379" for ip in ips)
    env = dict(os.environ)
    env.update({"FLICKER_ACCESS_KEY_ID": ACCESS_KEY, "FLICKER_SECRET_ACCESS_KEY": SECRET_KEY,
                "ASAN_OPTIONS": env.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")})
    h = Hosts(net, tmp_path, env)
    prefix = f"/flicker-store-{tag}"
    store = f"etcd:{endpoints};prefix={prefix}"
    h.data, h.etcd = data, Etcd(f"http://{ips[0]}:2379", prefix)
    h.fe = {1: Frontend(tmp_path / "fe-a", 1, data[1]), 2: Frontend(tmp_path / "fe-b", 2, data[2])}
    try:
        net.setup()
        for n in (1, 2, 3):
            h.start(n, f"etcd-{n}", netns.etcd_member_argv(n, ips, tmp_path / f"etcd-{n}.data",
                                                            f"flicker-st-{tag}"))
        wait_for(lambda: netns.etcd_healthy(endpoints), 60 * SLOW, "etcd cluster healthy")
        pl, asg = f"tcp:{ips[0]}:7100", f"tcp:{ips[0]}:7200"
        h.start(1, "placement", [BINARY, "serve", "placement", "--listen", pl, "--provider", "none",
                                 "--heartbeat-timeout-ms", "5000", "--data", data[1]])
        h.start(1, "asg", [BINARY, "serve", "assignment", "--listen", asg, "--id", "asg-1",
                           "--journal", f"etcd:{endpoints};prefix=/flicker-journal-{tag}",
                           "--placement", pl, "--keep-alive", "60"])
        h.start(3, "w-3", [BINARY, "serve", "worker", "--listen", f"tcp:{ips[2]}:7300", "--id", "w-3",
                           "--zone", "zone-c", "--placement", pl, "--data", data[3], "--store", store])
        for n in (1, 2):
            h.start(n, f"fe-{n}", [BINARY, "serve", "frontend", "--listen", f"{ips[n - 1]}:{FE_PORT}",
                                   "--data", data[n], "--store", store, "--assignment", asg,
                                   "--placement", pl])

        def ready():
            for name, p in h.roles.items():
                if not p.alive():
                    raise RuntimeError(f"{name} exited {p.popen.returncode}:\n{p.log_text()[-2000:]}")
            for n in (1, 2):
                workers = h.fe[n].status().get("placement", {}).get("workers", [])
                if [w["id"] for w in workers if w["state"] == "active"] != ["w-3"]:
                    return False
            st = netns.rpc_call(asg, "asg.status", timeout=2)
            return st.get("role") == "leader"
        wait_for(ready, 90 * SLOW, "frontends, leader and the worker")
        yield h
    finally:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        netns.finish(net, h.roles, ["fe-1", "fe-2", "w-3", "asg", "placement"], cg_before, failed,
                     "etcd store", 30 * SLOW)


def echo_zip(marker):
    return make_zip("py_echo", extra={"marker.txt": marker})


def hexof(zip_bytes):
    return hashlib.sha256(zip_bytes).hexdigest()


def test_hosts_share_only_etcd(hosts):
    h = hosts
    a, b = h.fe[1].client(), h.fe[2].client()
    name = f"st-{uuid.uuid4().hex[:6]}"
    z1 = echo_zip(f"v1-{uuid.uuid4().hex}")
    create_function(a, name, "py_echo", zip_bytes=z1, Timeout=60 * SLOW)

    # a. created through A, invoked through B, run by C from its own copy
    r = do_invoke(b, name, {"n": 1})
    assert r.status == 200 and r.function_error is None, r
    assert r.json["event"] == {"n": 1} and r.json["code_marker"].startswith("v1-"), r.json
    h1 = hexof(z1)
    assert (h.data[1] / "code" / h1).is_dir(), "A extracts what it uploads"
    assert (h.data[3] / "code" / h1 / "app.py").is_file(), "C fetched the code into its data dir"
    assert (h.data[3] / "blobs" / f"{h1}.zip").read_bytes() == z1
    assert not (h.data[2] / "code" / h1).exists(), "B needed no code to route the invoke"
    assert h.etcd.count("/code/") >= 1 and h.etcd.count("/chunk/") >= 1
    assert [f["FunctionName"] for f in b.list_functions()["Functions"]] == [name]

    # b. code updated through B runs when invoked through A
    z2 = echo_zip(f"v2-{uuid.uuid4().hex}")
    b.update_function_code(FunctionName=name, ZipFile=z2)
    wait_updated(a, name)
    assert a.get_function(FunctionName=name)["Configuration"]["CodeSha256"] == \
        base64.b64encode(hashlib.sha256(z2).digest()).decode()
    r = do_invoke(a, name, {"n": 2})
    assert r.status == 200 and r.json["code_marker"].startswith("v2-"), r.json

    # c. versions and aliases: published through one, seen through the other
    v1 = a.publish_version(FunctionName=name)["Version"]
    assert v1 == "1"
    assert [v["Version"] for v in b.list_versions_by_function(FunctionName=name)["Versions"]] == \
        ["$LATEST", "1"]
    b.create_alias(FunctionName=name, Name="live", FunctionVersion="1")
    assert a.get_alias(FunctionName=name, Name="live")["FunctionVersion"] == "1"
    assert [x["Name"] for x in a.list_aliases(FunctionName=name)["Aliases"]] == ["live"]
    z3 = echo_zip(f"v3-{uuid.uuid4().hex}")
    a.update_function_code(FunctionName=name, ZipFile=z3)
    wait_updated(b, name)
    r = do_invoke(a, f"{name}:live")
    assert r.status == 200 and r.json["code_marker"].startswith("v2-"), r.json
    r = do_invoke(b, name)
    assert r.status == 200 and r.json["code_marker"].startswith("v3-"), r.json
    v2 = b.publish_version(FunctionName=name)["Version"]
    a.update_alias(FunctionName=name, Name="live", FunctionVersion=v2)
    r = do_invoke(b, name, Qualifier="live")
    assert r.status == 200 and r.json["code_marker"].startswith("v3-"), r.json
    # a second create of the same name through the other frontend conflicts
    with pytest.raises(ClientError) as ei:
        create_function(b, name, "py_echo", zip_bytes=z1)
    assert ei.value.response["Error"]["Code"] == "ResourceConflictException"


def test_bad_chunks_fail_cleanly(hosts):
    h = hosts
    a, b = h.fe[1].client(), h.fe[2].client()
    good = f"st-good-{uuid.uuid4().hex[:6]}"
    create_function(a, good, "py_echo", zip_bytes=echo_zip("good"), Timeout=60 * SLOW)
    assert do_invoke(b, good).status == 200

    # a chunk altered in etcd: the worker refuses it (hash mismatch)
    bad = f"st-bad-{uuid.uuid4().hex[:6]}"
    zbad = echo_zip(f"bad-{uuid.uuid4().hex}")
    create_function(a, bad, "py_echo", zip_bytes=zbad, Timeout=60 * SLOW)
    hbad = hexof(zbad)
    manifest = json.loads(h.etcd.get(f"/code/{hbad}"))
    assert manifest["size"] == len(zbad) and len(manifest["chunks"]) == 1
    h.etcd.put(f"/chunk/{manifest['chunks'][0]}", b"not the chunk you stored")
    with pytest.raises(ClientError) as ei:
        do_invoke(b, bad)
    err = ei.value.response
    print("corrupt chunk:", err["ResponseMetadata"]["HTTPStatusCode"], err["Error"])
    assert err["ResponseMetadata"]["HTTPStatusCode"] >= 500
    assert "corrupt" in err["Error"].get("Message", ""), err
    assert not (h.data[3] / "code" / hbad).exists()
    # the platform keeps serving
    r = do_invoke(b, good)
    assert r.status == 200 and r.json["code_marker"] == "good", r
    assert h.roles["w-3"].alive()

    # a hostile zip planted in etcd with consistent hashes (path traversal):
    # the worker's extraction refuses it, as uploads are refused
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../escaped.txt", "x")
        zf.writestr("app.py", "def handler(e, c):\n    return 1\n")
    zh = buf.getvalue()
    hh = hexof(zh)
    h.etcd.put(f"/chunk/{hh}", zh)
    h.etcd.put(f"/code/{hh}", json.dumps({"size": len(zh), "chunk_size": 524288,
                                          "chunks": [hh]}).encode())
    evil = f"st-evil-{uuid.uuid4().hex[:6]}"
    create_function(a, evil, "py_echo", zip_bytes=echo_zip("evil"), Timeout=60 * SLOW)
    latest = json.loads(h.etcd.get(f"/latest/{evil}"))
    latest["_CodeHex"] = hh
    latest["CodeSha256"] = base64.b64encode(hashlib.sha256(zh).digest()).decode()
    latest["RevisionId"] = str(uuid.uuid4())
    h.etcd.put(f"/latest/{evil}", json.dumps(latest).encode())
    with pytest.raises(ClientError) as ei:
        do_invoke(b, evil)
    err = ei.value.response
    print("hostile zip:", err["ResponseMetadata"]["HTTPStatusCode"], err["Error"])
    assert err["ResponseMetadata"]["HTTPStatusCode"] >= 500
    assert not (h.data[3] / "code" / hh).exists()
    assert not (h.data[3] / "escaped.txt").exists() and not (h.tmp / "escaped.txt").exists()
    r = do_invoke(a, good)
    assert r.status == 200 and r.json["code_marker"] == "good", r


# ---- `flicker up --store etcd:...` on one machine (loopback etcd) ----

@pytest.fixture
def loopback_etcd(tmp_path):
    """A 3-member cluster on 127.0.0.1 (scripts/etcd-cluster.sh); yields its
    endpoints and stops it."""
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("no etcd/etcdctl binary (apt-get install etcd-server etcd-client)")
    script = REPO / "scripts" / "etcd-cluster.sh"
    d = tmp_path / "etcd"
    d.mkdir()
    eps = None
    for _ in range(4):
        base = random.randint(20000, 39000)
        if not all(port_free(p) for p in range(base, base + 6)):
            continue
        p = subprocess.run([str(script), "start", str(d), str(base)], capture_output=True,
                           text=True, timeout=120)
        if p.returncode == 0:
            eps = p.stdout.strip().splitlines()[-1]
            break
    if eps is None:
        pytest.fail(f"could not start a loopback etcd cluster with {script}")
    try:
        yield eps
    finally:
        subprocess.run([str(script), "stop", str(d)], capture_output=True, timeout=120)


def port_free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("first,second", [("split", "embedded"), ("embedded", "split")])
def test_up_with_etcd_store(loopback_etcd, spawn, first, second):
    """Two platforms on one machine, each with its own data dir and
    `--store etcd:...`: what one creates the other runs (its worker, in a
    process of its own or in-process, fetches the code)."""
    spec = f"etcd:{loopback_etcd};prefix=/flicker-up-{uuid.uuid4().hex[:6]}"
    mode = {"split": (), "embedded": ("--embedded",)}
    one = spawn("--store", spec, *mode[first])
    name = f"st-up-{uuid.uuid4().hex[:6]}"
    z = echo_zip(f"up-{uuid.uuid4().hex}")
    create_function(one.client(), name, "py_echo", zip_bytes=z, Timeout=60 * SLOW)
    r = do_invoke(one.client(), name, {"k": 1})
    assert r.status == 200 and r.json["code_marker"].startswith("up-"), r
    two = spawn("--store", spec, *mode[second])
    assert not (two.data / "code" / hexof(z)).exists()
    r = do_invoke(two.client(), name, {"k": 2})
    assert r.status == 200 and r.json["code_marker"].startswith("up-"), r
    assert (two.data / "code" / hexof(z) / "app.py").is_file()
    two.client().delete_function(FunctionName=name)
    with pytest.raises(ClientError) as ei:
        one.client().get_function(FunctionName=name)
    assert ei.value.response["Error"]["Code"] == "ResourceNotFoundException"
