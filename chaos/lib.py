"""chaos/lib.py - the pieces of flicker's chaos suite (chaos/run.py).

  Client / Api      SigV4-signed HTTP to a frontend (one keep-alive
                    connection per thread), the few Lambda calls the suite
                    needs, the function log endpoint
  rpc_call          one request over flicker's internal RPC (unix: or tcp:)
  Platform          one single-host `flicker up` (supervised roles) that the
                    suite started: roles from DATA/run/roles.json, kill -9 of
                    one role or of everything, restart on the same data
  Load              a steady mix of RequestResponse and Event invokes from
                    threads; every request's times and outcome are kept
  Monitor           polls the platform's health (every role answering, a
                    leader, the workers registered) and remembers every
                    worker pid it saw
  journal_records / etcd_journal_records
                    the assignment journal, read back after a run
  double_handed     environments handed to two requests at once: from the
                    journal (a `busy` record while already busy) and from
                    the function's own reports (a repeated count, or
                    overlapping [start, end] in one environment)
  placement_check   orphans: the assignment table against what the workers
                    run (env.list) and the sandbox cgroups on the machine
  analyse           the numbers of one scenario

Nothing here kills a process it did not start or that does not belong to
a platform it started (pids come from that platform's roles.json and from
the cgroups of its own workers)."""
import base64
import glob
import http.client
import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
import zipfile
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[1]
FUNCTION_DIR = Path(__file__).resolve().parent / "functions" / "chaos_fn"
ACCESS_KEY = "AKIAFLICKERCHAOS0001"
SECRET_KEY = "flicker-chaos-secret-key-000000000000000"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::000000000000:role/chaos"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")


def sanitizer_reports(paths):
    """Lines of the given log files that are sanitizer reports (ASan build)."""
    hits = []
    for p in paths:
        try:
            text = Path(p).read_text(errors="replace")
        except OSError:
            continue
        hits += [f"{Path(p).name}: {line[:200]}" for line in text.splitlines()
                 if any(x in line for x in SANITIZER_PATTERNS)]
    return hits


def now():
    return time.time()


def log(msg):
    print(time.strftime("%H:%M:%S ") + msg, flush=True)


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (9000, 9001):
            return port


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] not in ("Z", "X")


def proc_starttime(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return int(st[st.rfind(")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def wait_until(pred, timeout, interval=0.2):
    """Polls pred() (exceptions count as falsy) until truthy; returns its value or None."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception:
            pass
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# ---------------------------------------------------------------- HTTP API

class Client:
    """One keep-alive HTTP connection (use one per thread), SigV4-signed as
    botocore signs.  request() raises OSError-like exceptions on transport
    failures and reconnects on the next call."""

    def __init__(self, host, port, timeout=30.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None
        self.creds = Credentials(ACCESS_KEY, SECRET_KEY)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def request(self, method, path, body=b"", headers=None, sign=True, timeout=None):
        if isinstance(body, str):
            body = body.encode()
        hdrs = dict(headers or {})
        if sign:
            req = AWSRequest(method=method, url=f"http://{self.host}:{self.port}{path}", data=body,
                             headers=hdrs)
            SigV4Auth(self.creds, "lambda", REGION).add_auth(req)
            hdrs = dict(req.headers.items())
        if self.conn is None or (timeout and timeout != self.conn.timeout):
            self.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=hdrs)
            r = self.conn.getresponse()
            data = r.read()
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        except Exception:
            self.close()
            raise


class Api:
    """The Lambda calls the suite makes (each thread should have its own Api)."""

    def __init__(self, host, port, timeout=30.0):
        self.host, self.port = host, port
        self.c = Client(host, port, timeout)

    def close(self):
        self.c.close()

    def health(self, timeout=2.0):
        try:
            st, _, _ = Client(self.host, self.port, timeout).request("GET", "/flicker/health", sign=False)
            return st == 200
        except Exception:
            return False

    def call(self, method, path, doc=None, expect=(200,), timeout=None):
        body = json.dumps(doc).encode() if doc is not None else b""
        st, h, data = self.c.request(method, path, body, {"Content-Type": "application/json"},
                                     timeout=timeout)
        if st not in expect:
            raise RuntimeError(f"{method} {path}: {st} {data[:300]!r}")
        return json.loads(data) if data else None

    def create_function(self, name, zip_bytes, memory=128, timeout=30, env=None):
        doc = {"FunctionName": name, "Runtime": "python3.11", "Handler": "app.handler",
               "Role": ROLE_ARN, "MemorySize": memory, "Timeout": timeout,
               "Code": {"ZipFile": base64.b64encode(zip_bytes).decode()}}
        if env:
            doc["Environment"] = {"Variables": env}
        out = self.call("POST", "/2015-03-31/functions", doc, expect=(201,))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cfg = self.call("GET", f"/2015-03-31/functions/{name}/configuration")
            if cfg.get("State") == "Active":
                return out
            time.sleep(0.2)
        raise RuntimeError(f"{name} never became Active")

    def on_success(self, name, destination_arn, retries=2):
        self.call("PUT", f"/2019-09-25/functions/{name}/event-invoke-config",
                  {"MaximumRetryAttempts": retries,
                   "DestinationConfig": {"OnSuccess": {"Destination": destination_arn}}})

    def invoke(self, name, payload, event=False, timeout=None):
        """(status, headers, body bytes)."""
        hdrs = {"X-Amz-Invocation-Type": "Event" if event else "RequestResponse"}
        return self.c.request("POST", f"/2015-03-31/functions/{name}/invocations",
                              json.dumps(payload).encode(), hdrs, timeout=timeout)

    def status(self):
        return self.call("GET", "/flicker/status", timeout=10)

    def logs(self, name):
        """The function's whole log (the endpoint is paged by byte offset)."""
        out, offset = [], 0
        while True:
            st, h, data = self.c.request("GET", f"/flicker/functions/{name}/logs?offset={offset}",
                                         timeout=30)
            if st != 200:
                raise RuntimeError(f"logs of {name}: {st} {data[:200]!r}")
            nxt = int(h.get("x-flicker-log-offset", offset))
            if data:
                out.append(data)
            if not data or nxt == offset:
                break
            offset = nxt
        return b"".join(out).decode("utf-8", "replace")


def function_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(FUNCTION_DIR.iterdir()):
            if p.is_file() and p.suffix == ".py":
                zi = zipfile.ZipInfo(p.name, date_time=(2020, 1, 1, 0, 0, 0))
                zi.external_attr = (0o100644 & 0xFFFF) << 16
                z.writestr(zi, p.read_bytes())
    return buf.getvalue()


def deploy_pair(api, prefix):
    """The function under load and its on-success destination; returns
    (name, destination name)."""
    tag = uuid.uuid4().hex[:6]
    name, dest = f"{prefix}-{tag}", f"{prefix}-dest-{tag}"
    z = function_zip()
    d = api.create_function(dest, z)
    api.create_function(name, z)
    api.on_success(name, d["FunctionArn"])
    return name, dest


# ---------------------------------------------------------------- RPC

def rpc_call(addr, method, params=None, timeout=2.0):
    """One request over flicker's RPC to unix:PATH or tcp:HOST:PORT; returns
    the response header (dict; an error reply has "error") or raises OSError."""
    hdr = dict(params or {})
    hdr.update({"id": 1, "m": method})
    h = json.dumps(hdr).encode()
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(addr[5:])
        except OSError:
            s.close()
            raise
    elif addr.startswith("tcp:"):
        host, port = addr[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
    else:
        raise ValueError(f"bad address {addr}")
    with s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">II", len(h), 0) + h)

        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("connection closed")
                buf += chunk
            return buf
        hl, bl = struct.unpack(">II", read(8))
        out = json.loads(read(hl))
        read(bl)
        return out


def rpc_ok(addr, method, timeout=1.0):
    try:
        r = rpc_call(addr, method, timeout=timeout)
        return None if "error" in r else r
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- sandboxes

def cgroup_instances():
    """{instance name: [instance dirs]} of every sandbox instance
    (flicker/sbx-<worker pid>-<start time>) in every hierarchy."""
    out = {}
    for d in glob.glob(str(CGROUP_ROOT / "*" / "flicker" / "sbx-*")) + \
            glob.glob(str(CGROUP_ROOT / "flicker" / "sbx-*")):
        if os.path.isdir(d):
            out.setdefault(os.path.basename(d), []).append(d)
    return out


def instance_of(pid):
    st = proc_starttime(pid)
    return f"sbx-{pid}-{st}" if st is not None else None


def sandboxes_of(instance_dirs):
    """{sandbox cgroup name: set of pids} under one instance's dirs."""
    out = {}
    for d in instance_dirs:
        for sub in os.listdir(d):
            p = os.path.join(d, sub)
            if not os.path.isdir(p):
                continue
            pids = out.setdefault(sub, set())
            for root, _dirs, files in os.walk(p):
                if "cgroup.procs" in files:
                    try:
                        pids.update(int(x) for x in open(os.path.join(root, "cgroup.procs")).read().split())
                    except (OSError, ValueError):
                        pass
    return out


# ---------------------------------------------------------------- platform

class Platform:
    """One single-host `flicker up` (split mode unless --embedded is in
    args) that this suite starts on a free port with its own data directory."""

    def __init__(self, workdir, build, args=(), port=None, data=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.build = Path(build)
        self.args = list(args)
        self.port = port or free_port()
        self.data = Path(data) if data else self.workdir / "data"
        self.proc = None
        self.generation = 0
        self.logs = []
        self.worker_instances = set()   # every sbx-<pid>-<start> of our workers
        self.pids_seen = set()          # every role pid we saw (ours to kill)

    @property
    def host(self):
        return "127.0.0.1"

    def env(self):
        e = dict(os.environ)
        e.update({"FLICKER_ACCESS_KEY_ID": ACCESS_KEY, "FLICKER_SECRET_ACCESS_KEY": SECRET_KEY})
        return e

    def start(self, wait=True, timeout=60):
        self.generation += 1
        path = self.workdir / f"flicker.{self.generation}.log"
        self.logs.append(path)
        self.data.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as lf:
            self.proc = subprocess.Popen(
                [str(self.build / "flicker"), "up", "--listen", f"127.0.0.1:{self.port}",
                 "--data", str(self.data), *self.args],
                stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                cwd=str(self.workdir), start_new_session=True)
        if wait and not self.wait_ready(timeout):
            raise RuntimeError(f"flicker up not ready after {timeout}s:\n{self.log_tail()}")
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=60):
        api = Api(self.host, self.port)

        def ready():
            if not self.running():
                raise RuntimeError(f"flicker up exited {self.proc.returncode}:\n{self.log_tail()}")
            return api.health() and self.healthy()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                self.note_pids()
                return True
            time.sleep(0.1)
        return False

    def log_text(self, all_generations=True):
        out = []
        for p in (self.logs if all_generations else self.logs[-1:]):
            try:
                out.append(p.read_text(errors="replace"))
            except OSError:
                pass
        return "".join(out)

    def log_tail(self, n=40):
        return "\n".join(self.log_text(False).splitlines()[-n:])

    # ---- roles
    def roles_doc(self):
        try:
            return json.loads((self.data / "run" / "roles.json").read_text())
        except (OSError, ValueError):
            return None

    def roles(self):
        """name -> role dict (pid, address, state, restarts)."""
        doc = self.roles_doc() or {}
        return {r["name"]: r for r in doc.get("roles", [])}

    def note_pids(self):
        for r in self.roles().values():
            if r.get("pid"):
                self.pids_seen.add(r["pid"])
                if r["role"] == "worker":
                    inst = instance_of(r["pid"])
                    if inst:
                        self.worker_instances.add(inst)

    def replicas(self):
        return [r["address"] for n, r in sorted(self.roles().items()) if r["role"] == "assignment"]

    def leader(self):
        """(role name, asg.status) of the replica that says it leads."""
        for n, r in sorted(self.roles().items()):
            if r["role"] != "assignment":
                continue
            st = rpc_ok(r["address"], "asg.status")
            if st and st.get("role") == "leader":
                return n, st
        return None

    def healthy(self):
        """(bool, why): every role running and answering, a serving
        assignment leader, every worker active in placement."""
        roles = self.roles()
        if not roles:
            return False, "no roles.json"
        workers = [r for r in roles.values() if r["role"] == "worker"]
        for n, r in roles.items():
            if r.get("state") != "running" or not pid_alive(r.get("pid", 0)):
                return False, f"{n} down"
            method = {"assignment": "asg.status", "placement": "placement.status",
                      "worker": "worker.status"}.get(r["role"])
            if method and not rpc_ok(r["address"], method, timeout=2.0):
                return False, f"{n} does not answer"
            if r["role"] == "frontend" and not Api(self.host, self.port).health(1.0):
                return False, "frontend does not answer HTTP"
        if not self.leader():
            return False, "no assignment leader"
        pl = next((r for r in roles.values() if r["role"] == "placement"), None)
        st = rpc_ok(pl["address"], "placement.status") if pl else None
        active = {w.get("id") for w in (st or {}).get("workers", []) if w.get("state") == "active"}
        if not {w["name"] for w in workers} <= active:
            return False, f"workers active in placement: {sorted(active)}"
        return True, "ok"

    def worker_envs(self):
        """{worker name: {env_id: state}} from each live worker's env.list (None if it did not answer)."""
        out = {}
        for n, r in self.roles().items():
            if r["role"] == "worker":
                res = rpc_ok(r["address"], "env.list", timeout=3)
                out[n] = None if res is None else {e["env_id"]: e.get("state") for e in res.get("envs", [])}
        return out

    # ---- faults
    def kill_role(self, name):
        r = self.roles()[name]
        pid = r["pid"]
        assert pid in self.pids_seen or self._is_our_child(pid), f"{name} pid {pid} is not ours"
        os.kill(pid, signal.SIGKILL)
        return pid

    def _is_our_child(self, pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
            return int(st[st.rfind(")") + 2:].split()[1]) == self.proc.pid
        except (OSError, ValueError):
            return False

    def kill_everything(self):
        """kill -9 of every role and then the supervisor (within a
        millisecond: the roles' parent-death signal never matters).  The
        sandboxes are left to the next run, as after a crash."""
        pids = [r["pid"] for r in self.roles().values() if r.get("pid") and self._is_our_child(r["pid"])]
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.kill()
        self.proc.wait(30)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 20, 0.05)
        return pids

    def stop(self, timeout=90):
        """SIGTERM and wait; returns the exit status (None if not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.note_pids()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_everything()
            return "hung"

    def leftovers(self):
        """What is left of this platform on the machine (call after stop):
        sandbox cgroups and processes of its workers, mounts and loop
        devices under its data directory, role processes."""
        left = {}
        insts = cgroup_instances()
        cg = {n: d for n, d in insts.items() if n in self.worker_instances}
        if cg:
            left["sandbox cgroups"] = sorted(cg)
            procs = set()
            for dirs in cg.values():
                for pids in sandboxes_of(dirs).values():
                    procs |= {p for p in pids if pid_alive(p)}
            if procs:
                left["sandbox processes"] = sorted(procs)
        roles = [p for p in self.pids_seen if pid_alive(p) and self._cmdline_has_data(p)]
        if roles:
            left["role processes"] = roles
        mounts = [line.split()[4] for line in open("/proc/self/mountinfo")
                  if str(self.data) in line.split()[4] or str(self.data) in line]
        if mounts:
            left["mounts"] = mounts
        loops = loop_devices_under(self.data)
        if loops:
            left["loop devices"] = loops
        return left

    def _cmdline_has_data(self, pid):
        try:
            return str(self.data).encode() in open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            return False


def loop_devices_under(path):
    try:
        out = subprocess.run(["losetup", "-J", "-l"], capture_output=True, text=True, timeout=10).stdout
        devs = json.loads(out or "{}").get("loopdevices", [])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []
    return [d["name"] for d in devs if str(d.get("back-file") or "").startswith(str(path))]


# ---------------------------------------------------------------- load

class Load:
    """sync_threads threads invoking RequestResponse back to back (function
    sleep drawn from sleep_range), and one thread sending Event invokes at
    event_rate per second.  A failed sync request is retried the way an SDK
    does (RETRY_BACKOFF: up to three more tries after 0.1, 0.2 and 0.4 s);
    the retries are recorded with the first attempt, which is what the
    failure counts count."""

    RETRY_BACKOFF = (0.1, 0.2, 0.4)

    def __init__(self, host, port, name, sync_threads=4, event_rate=8.0, sleep_range=(0.01, 0.04),
                 timeout=30.0):
        self.host, self.port, self.name = host, port, name
        self.sync_threads, self.event_rate = sync_threads, event_rate
        self.sleep_range, self.timeout = sleep_range, timeout
        self.sync = []       # dicts, one per first attempt
        self.events = []     # dicts, one per Event invoke
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []
        self.tag = uuid.uuid4().hex[:6]

    def _attempt(self, api, rid, kind):
        payload = {"id": rid, "kind": kind, "sleep": round(random.uniform(*self.sleep_range), 3)}
        t0 = now()
        try:
            st, h, body = api.invoke(self.name, payload, event=(kind == "event"), timeout=self.timeout)
        except Exception as e:  # connection refused/reset, timeout
            return {"id": rid, "t0": t0, "t1": now(), "ok": False, "status": None,
                    "error": type(e).__name__}
        t1 = now()
        rec = {"id": rid, "t0": t0, "t1": t1, "status": st, "ok": False, "error": None}
        if kind == "event":
            rec["ok"] = st == 202
            if not rec["ok"]:
                rec["error"] = f"{st} {body[:160].decode('utf-8', 'replace')}"
            return rec
        ferr = h.get("x-amz-function-error")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if st == 200 and not ferr and isinstance(doc, dict) and doc.get("id") == rid:
            rec.update(ok=True, env=doc["env"], count=doc["count"], start=doc["start"], end=doc["end"],
                       rid=doc["rid"])
        else:
            msg = doc.get("errorMessage") or doc.get("message") or doc.get("Message") \
                if isinstance(doc, dict) else body[:160].decode("utf-8", "replace")
            rec["error"] = f"{st}{' ' + ferr if ferr else ''} {str(msg)[:160]}"
        return rec

    def _sync_loop(self, i):
        api = Api(self.host, self.port, self.timeout)
        n = 0
        while not self.stopping.is_set():
            n += 1
            rid = f"{self.tag}-s{i}-{n}"
            rec = self._attempt(api, rid, "sync")
            if not rec["ok"]:
                rec["retries"] = []
                for k, pause in enumerate(self.RETRY_BACKOFF):
                    time.sleep(pause)
                    r = self._attempt(api, f"{rid}-r{k + 1}", "sync")
                    rec["retries"].append(r)
                    if r["ok"]:
                        break
                rec["retry_ok"] = rec["retries"][-1]["ok"]
            with self.lock:
                self.sync.append(rec)
        api.close()

    def _event_loop(self):
        api = Api(self.host, self.port, 10.0)
        n = 0
        period = 1.0 / self.event_rate
        nxt = time.monotonic()
        while not self.stopping.is_set():
            n += 1
            rec = self._attempt(api, f"{self.tag}-e{n}", "event")
            with self.lock:
                self.events.append(rec)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()
        api.close()

    def start(self):
        for i in range(self.sync_threads):
            self.threads.append(threading.Thread(target=self._sync_loop, args=(i,), daemon=True))
        if self.event_rate > 0:
            self.threads.append(threading.Thread(target=self._event_loop, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout + 15)

    def count_ok(self, since=None):
        with self.lock:
            return sum(1 for r in self.sync if r["ok"] and (since is None or r["t0"] >= since))

    def accepted_ids(self):
        with self.lock:
            return {r["id"] for r in self.events if r["ok"]}


class Monitor:
    """Polls health() every interval seconds in a thread; keeps
    (start, end, healthy, why) samples and calls note() each time (e.g. to
    remember worker pids)."""

    def __init__(self, health, note=None, interval=0.2):
        self.health, self.note, self.interval = health, note, interval
        self.samples = []
        self.stopping = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stopping.is_set():
            t0 = now()
            try:
                ok, why = self.health()
            except Exception as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            self.samples.append((t0, now(), ok, why))
            if self.note:
                try:
                    self.note()
                except Exception:
                    pass
            self.stopping.wait(self.interval)

    def start(self):
        self.t.start()
        return self

    def stop(self):
        self.stopping.set()
        self.t.join(30)

    def recovered_at(self, since):
        """When the platform was whole again after `since`: the end of the
        first healthy check that started after `since` and after the last
        unhealthy one, provided every later check was healthy too (None if
        the last one was not).  Also returns the reasons seen unhealthy."""
        samples = [s for s in self.samples if s[0] >= since]
        reasons, last_bad = [], None
        for t0, _t1, ok, why in samples:
            if not ok:
                last_bad = t0
                if why not in reasons:
                    reasons.append(why)
        if not samples or not samples[-1][2]:
            return None, reasons
        if last_bad is None:
            return samples[0][1], reasons
        return next(t1 for t0, t1, ok, _ in samples if t0 > last_bad), reasons

    def stretches(self, since, limit=6):
        """Unhealthy stretches after `since`: [(from s, to s, reason)],
        relative to `since`, consecutive checks with one reason merged."""
        out = []
        for t0, t1, ok, why in (s for s in self.samples if s[0] >= since):
            if ok:
                continue
            if out and out[-1][2] == why and t0 - since - out[-1][1] < 2 * self.interval + 2.5:
                out[-1][1] = t1 - since
            else:
                out.append([t0 - since, t1 - since, why])
        return [(round(a, 2), round(b, 2), w) for a, b, w in out[:limit]]


# ---------------------------------------------------------------- deliveries

LINE = re.compile(r"CHAOS (sync|event) ([\w-]+) ([0-9a-f]{32}) (\d+) (\d+\.\d{6}) (\d+\.\d{6}) ([0-9a-f-]{36})")
DEST = re.compile(r"CHAOS-DEST ([\w-]+) (\w+)")


def parse_function_log(text):
    """[invocation dicts] from CHAOS lines."""
    out = []
    for m in LINE.finditer(text):
        out.append({"kind": m.group(1), "id": m.group(2), "env": m.group(3), "count": int(m.group(4)),
                    "start": float(m.group(5)), "end": float(m.group(6)), "rid": m.group(7)})
    return out


def delivered_ids(fn_log, dest_log):
    """(ids seen run by the function, ids confirmed by the on-success destination)."""
    ran = {d["id"] for d in parse_function_log(fn_log) if d["kind"] == "event"}
    confirmed = {m.group(1) for m in DEST.finditer(dest_log)}
    return ran, confirmed


def queued_event_ids(db_path):
    """The ids (our payload's "id") of the events still in a frontend's
    durable queue (DATA/async.db), read-only."""
    import sqlite3
    if not Path(db_path).exists():
        return set()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        out = set()
        for (payload,) in con.execute("SELECT payload FROM events"):
            try:
                doc = json.loads(payload)
            except (ValueError, TypeError):
                continue
            if isinstance(doc, dict):
                out.add(doc.get("id") or (doc.get("requestPayload") or {}).get("id"))
        return out
    finally:
        con.close()


# ---------------------------------------------------------------- journal

def journal_records(journal_dir):
    """Every record of a file journal (docs/journal.md: 32-byte header
    {crc, len, index, term, batch} + payload) as (index, term, payload
    bytes), in order, starting from the newest snapshot's state if the log
    was compacted: returns (snapshot json or None, records).  Stops at the
    first incomplete record (a torn tail)."""
    d = Path(journal_dir)
    snap = None
    snaps = sorted(d.glob("snapshot-*.snap"))
    if snaps:
        raw = snaps[-1].read_bytes()
        try:
            snap = json.loads(raw[32:])
        except ValueError:
            snap = None
    recs = []
    for seg in sorted(d.glob("*.seg")):
        raw = seg.read_bytes()
        off = 0
        while off + 32 <= len(raw):
            _crc, ln, index, term, _batch = struct.unpack_from("<IIQQQ", raw, off)
            if ln > 16 << 20 or off + 32 + ln > len(raw):
                break
            recs.append((index, term, raw[off + 32:off + 32 + ln]))
            off += 32 + ln
    if recs and recs[0][0] == 1:
        return None, recs  # the whole history is still there: no need for the snapshot
    if snap is not None and recs:
        upto = int(snaps[-1].name.split("-")[1].split(".")[0])
        recs = [r for r in recs if r[0] > upto]
    return snap, recs


def etcd_journal_records(endpoints, prefix):
    """The etcd backend's log keys P/log/<index> = "<term>\\n<record>"
    (docs/journal-etcd.md) as (None, [(index, term, payload)])."""
    p = subprocess.run(["etcdctl", f"--endpoints={endpoints}", "--command-timeout=10s", "get",
                        "--prefix", f"{prefix}/log/", "-w", "json"], capture_output=True, text=True,
                       timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"etcdctl get: {p.stderr.strip()}")
    recs = []
    for kv in json.loads(p.stdout).get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()
        val = base64.b64decode(kv["value"])
        term, _, payload = val.partition(b"\n")
        recs.append((int(key.rsplit("/", 1)[1]), int(term), payload))
    recs.sort()
    return None, recs


def journal_double_hands(snap, recs):
    """Environments the journal shows handed out while already handed out:
    a `busy` for an env whose last journaled state was `busy` (no idle or
    remove in between).  Idle<->busy changes are journaled lazily (at most
    one per env per 50 ms, a busy-then-idle-again pair not at all:
    docs/assignment.md), so this is a consistency check of the journal and
    the hand-out count a lower bound; the functions' own reports
    (function_double_hands) are the authority on two invocations at once.
    Returns (set of env ids, busy records counted, anomalies (records for
    unknown envs))."""
    state = {}
    if snap:
        for e in snap.get("envs", []):
            state[e["env_id"]] = e.get("state")
    doubles, handouts, anomalies = set(), 0, []
    for index, term, payload in recs:
        try:
            r = json.loads(payload)
        except ValueError:
            anomalies.append(f"record {index}: not JSON")
            continue
        op, env = r.get("op"), r.get("env_id")
        if op == "add":
            state[env] = "initializing"
        elif op == "remove":
            state.pop(env, None)
        elif op == "state":
            st = r.get("state")
            if env not in state:
                anomalies.append(f"record {index} (term {term}): state {st} for unknown env {env}")
            if st == "busy":
                handouts += 1
                if state.get(env) == "busy":
                    doubles.add(env)
            state[env] = st
    return doubles, handouts, anomalies


def function_double_hands(invocations):
    """Environments that ran two invocations at once, from the function's
    own reports: a count seen twice with different request ids, or two
    [start, end] intervals that overlap (by more than 1 ms)."""
    bad = set()
    by_env = {}
    for inv in invocations:
        by_env.setdefault(inv["env"], {})
        prev = by_env[inv["env"]].get(inv["count"])
        if prev is not None and prev["rid"] != inv["rid"]:
            bad.add(inv["env"])
        by_env[inv["env"]][inv["count"]] = inv
    for env, by_count in by_env.items():
        ivs = sorted(by_count.values(), key=lambda x: x["start"])
        for a, b in zip(ivs, ivs[1:]):
            if b["start"] < a["end"] - 0.001:
                bad.add(env)
    return bad


# ---------------------------------------------------------------- orphans

ORPHAN_KINDS = ("not in table", "stuck busy", "stuck in table", "dead sandboxes", "cgroup only")


def placement_check(table_envs, worker_envs, live_worker_ids, instances_of_workers, dead_instances):
    """Compares the assignment table with what runs, once the load stopped
    and the queue drained (so nothing should be busy or initializing):

      table_envs        [{env_id, worker_id, state}] from the leader
      worker_envs       {worker id: {env_id: state}} from env.list
      live_worker_ids   workers that should be running
      instances_of_workers {worker id: [cgroup dirs of its live instance]}
      dead_instances    {instance name: dirs} of this platform's dead workers

    Returns a dict of lists.  Orphans (ORPHAN_KINDS: nobody will ever use
    or reclaim them):
      not in table     on a worker, not in the table
      stuck busy       busy in the table, on its worker, no request in
                       flight: never handed out again, never expired by
                       keep-alive, and counted as in flight
      stuck in table   busy or initializing in the table but on no worker:
                       the same, without even a sandbox
      dead sandboxes   sandboxes of a dead worker process still present
      cgroup only      a sandbox cgroup with processes its worker does not list
    Reported only:
      idle phantoms    idle in the table, on no worker: the next invoke
                       that gets one meets UnknownEnvironment and is
                       redelivered, which removes it (docs/distributed.md)"""
    res = {k: [] for k in ORPHAN_KINDS + ("idle phantoms",)}
    in_table = {e["env_id"]: e for e in table_envs}
    for wid, envs in worker_envs.items():
        for eid in (envs or {}):
            if eid not in in_table:
                res["not in table"].append(f"{eid} on {wid}")
    for eid, e in in_table.items():
        wid, st = e.get("worker_id"), e.get("state")
        envs = worker_envs.get(wid)
        if wid not in live_worker_ids or (envs is not None and eid not in envs):
            res["idle phantoms" if st == "idle" else "stuck in table"].append(f"{eid} ({st}) on {wid}")
        elif st in ("busy", "initializing"):
            res["stuck busy"].append(f"{eid} ({st}) on {wid}")
    for wid, dirs in instances_of_workers.items():
        listed = set((worker_envs.get(wid) or {}).keys())
        for sb, pids in sandboxes_of(dirs).items():
            if sb not in listed and pids:
                res["cgroup only"].append(f"{sb} on {wid} (pids {sorted(pids)[:5]})")
    for name, dirs in dead_instances.items():
        sbs = sandboxes_of(dirs)
        for sb, pids in sbs.items():
            res["dead sandboxes"].append(f"{name}/{sb} ({len(pids)} processes)")
        if not sbs:
            res["dead sandboxes"].append(f"{name} (empty instance directory)")
    return res
