"""harness.py - the integration-test harness for flicker: drives the real `flicker up` binary
with real clients (boto3, the AWS CLI v2 at /usr/bin/aws, flicker's own CLI).

Fixture API (see docs/testing.md for the full story):

  flicker          session-scoped running server (Server); its log is printed
                   on failure; at session end it is stopped with SIGTERM and
                   must exit 0, leave no sandbox behind, and (ASan build) have
                   no sanitizer report in its output.
  spawn            factory for extra servers with custom flags:
                   spawn("--account-concurrency", "2", auth=False, data=None)
                   -> Server; stopped (and checked) at the end of the test.
  lam              boto3 lambda client on the session server (no retries).
  fname            a unique function name for this test.
  deploy(...)      create a function from tests/functions/<dir> and wait for
                   Active; deleted at the end of the test.
  invoke(...)      Invoke helper returning an Invocation (status, headers,
                   payload bytes, json, function_error, log_tail, ...).
  make_zip(...)    zip bytes from a tests/functions/<dir> (exec bits kept).
  aws              run /usr/bin/aws against the session server.

Server methods: client(), aws(), raw() (signed or unsigned HTTP), logs(),
wait_log(), restart(), stop(), kill9(), descendants(), log_text().

Environment: FLICKER_BUILD (default <repo>/build) selects the binary;
FLICKER_TEST_ISOLATION=microvm starts every server with --isolation microvm.
"""
import atexit
import base64
import hashlib
import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import uuid
import zipfile
from pathlib import Path

import pytest

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = REPO / "tests" / "functions"
BUILD = Path(os.environ.get("FLICKER_BUILD") or (REPO / "build"))
if not BUILD.is_absolute():
    BUILD = REPO / BUILD
BINARY = BUILD / "flicker"
IS_ASAN = "asan" in BUILD.name or os.environ.get("FLICKER_ASAN") == "1"
# FLICKER_TEST_ISOLATION=microvm runs every server's environments in microVMs.
ISOLATION = os.environ.get("FLICKER_TEST_ISOLATION", "")

ACCESS_KEY = "AKIAFLICKERTEST00001"
SECRET_KEY = "flicker-test-secret-key-0000000000000000"
REGION = "us-east-1"
ACCOUNT = "000000000000"
ROLE = "arn:aws:iam::000000000000:role/flicker-test"
AWS_CLI = "/usr/bin/aws"

# Generous: the machine is loaded and the ASan build is slower.
SLOW = 2 if IS_ASAN else 1
READY_TIMEOUT = 60 * SLOW
STOP_TIMEOUT = 30 * SLOW
TEST_TIMEOUT = int(os.environ.get("FLICKER_TEST_TIMEOUT", str(180 * SLOW)))

SANITIZER_PATTERNS = ("ERROR: AddressSanitizer", "runtime error:", "LeakSanitizer")

# Test-session-wide record of sanitizer findings of every server started.
SANITIZER_FINDINGS = []
# Every server started, so that none outlives the test process.
ALL_SERVERS = []


@atexit.register
def _kill_leftover_servers():
    for srv in ALL_SERVERS:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.terminate()
            try:
                srv.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                srv.proc.kill()


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def free_port():
    """A free TCP port on 127.0.0.1, avoiding 9000/9001 (run.sh and the
    in-sandbox Runtime API port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in (9000, 9001):
            return port


def wait_until(pred, timeout, interval=0.2, what="condition"):
    """Polls pred() until it returns a truthy value; returns it, or fails
    the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def is_role_process(pid):
    """True for flicker's own processes (`flicker up`, `flicker serve ROLE`),
    as opposed to sandbox processes, which run runtimes and functions."""
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return len(argv) > 1 and argv[0].endswith(b"/flicker") and argv[1] in (b"up", b"serve")


def pid_alive(pid):
    """True when pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
    except OSError:
        return False
    state = st[st.rfind(")") + 2:].split()[0]
    return state not in ("Z", "X")


def all_ppids():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        out[int(d)] = int(rest[1])
    return out


def descendants(pid):
    """Every live descendant pid of pid (host view)."""
    ppids = all_ppids()
    children = {}
    for p, pp in ppids.items():
        children.setdefault(pp, []).append(p)
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def sandbox_cgroup_dirs():
    """Every cgroup directory named flicker-* under /sys/fs/cgroup/*/flicker/
    (the platform's sandboxes), as a set of paths."""
    found = set()
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return found
    candidates = [root / "flicker"] + [p / "flicker" for p in root.iterdir() if p.is_dir()]
    for parent in candidates:
        if not parent.is_dir():
            continue
        # Any depth (an implementation may group sandboxes per instance).
        for root, dirs, _files in os.walk(parent, onerror=lambda e: None):
            for d in list(dirs):
                if d.startswith("flicker-"):
                    found.add(os.path.join(root, d))
                    dirs.remove(d)
    return found


def cgroup_procs(path):
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def sandbox_pids(cgroup_dirs):
    """Every pid in the given cgroup directories (and their sub-cgroups)."""
    pids = set()
    for d in cgroup_dirs:
        for root, _dirs, _files in os.walk(d):
            pids.update(cgroup_procs(root))
    return pids


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return set(line.split(" - ")[0].split(" ", 4)[4] for line in f)


def _zip_add(zf, arcname, data, mode=0o644):
    zi = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.external_attr = ((stat.S_IFREG | mode) & 0xFFFF) << 16
    zf.writestr(zi, data)


def make_zip(source=None, extra=None):
    """Zip bytes of tests/functions/<source>/ (or an absolute dir), with each
    file's permission bits preserved, plus extra {arcname: str|bytes} files
    (a 'bootstrap' or '*.sh' extra gets mode 0755)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if source is not None:
            base = Path(source) if os.path.isabs(str(source)) else FUNCTIONS / source
            assert base.is_dir(), f"no function directory {base}"
            for path in sorted(base.rglob("*")):
                if path.is_dir() or "__pycache__" in path.parts:
                    continue
                mode = path.stat().st_mode & 0o777
                _zip_add(zf, str(path.relative_to(base)), path.read_bytes(), mode)
        for name, data in (extra or {}).items():
            if isinstance(data, str):
                data = data.encode()
            mode = 0o755 if name == "bootstrap" or name.endswith(".sh") else 0o644
            _zip_add(zf, name, data, mode)
    return buf.getvalue()


def code_sha256(zip_bytes):
    return base64.b64encode(hashlib.sha256(zip_bytes).digest()).decode()


def unique_name(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _sanitize(nodename):
    s = re.sub(r"[^A-Za-z0-9-]+", "-", nodename).strip("-")
    return s[:36].strip("-") or "t"


def client_error_code(exc):
    return exc.response.get("Error", {}).get("Code")


# --------------------------------------------------------------------------
# Invocation result
# --------------------------------------------------------------------------

class Invocation:
    """The outcome of one Invoke via boto3."""

    def __init__(self, resp):
        self.raw = resp
        self.status = resp["StatusCode"]
        self.headers = resp["ResponseMetadata"].get("HTTPHeaders", {})
        self.request_id = resp["ResponseMetadata"].get("RequestId")
        self.function_error = resp.get("FunctionError")
        self.executed_version = resp.get("ExecutedVersion")
        self.payload = resp["Payload"].read() if "Payload" in resp else b""
        lr = resp.get("LogResult")
        self.log_tail = base64.b64decode(lr).decode("utf-8", "replace") if lr else None

    @property
    def json(self):
        return json.loads(self.payload)

    def __repr__(self):
        return (f"Invocation(status={self.status}, error={self.function_error}, "
                f"version={self.executed_version}, payload={self.payload[:400]!r})")


# --------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------

class Server:
    """One `flicker up` process.  Its stdout+stderr go to log_path."""

    def __init__(self, workdir, port=None, data=None, args=(), auth=True, keep_alive=None, env=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.data = Path(data) if data else self.workdir / "data"
        self.args = list(args)
        self.auth = auth
        self.keep_alive = keep_alive
        self.extra_env = dict(env or {})
        self.proc = None
        self.generation = 0
        self.log_path = None
        self.logs_seen = []     # every log file of every generation
        self.exit_codes = []
        self._clients = {}
        ALL_SERVERS.append(self)

    # ---- lifecycle ----
    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        cmd = [str(BINARY), "up", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data)]
        if not self.auth:
            cmd.append("--no-auth")
        if self.keep_alive is not None:
            cmd += ["--keep-alive", str(self.keep_alive)]
        if ISOLATION and "--isolation" not in self.args:
            cmd += ["--isolation", ISOLATION]
        return cmd + self.args

    def start(self):
        if not BINARY.exists():
            pytest.fail(f"{BINARY} does not exist: build flicker first (make, or make SAN=1)")
        self.generation += 1
        self.log_path = self.workdir / f"server.{self.generation}.log"
        self.logs_seen.append(self.log_path)
        env = dict(os.environ)
        env.update({
            "FLICKER_ACCESS_KEY_ID": ACCESS_KEY,
            "FLICKER_SECRET_ACCESS_KEY": SECRET_KEY,
            "ASAN_OPTIONS": env.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0"),
            "UBSAN_OPTIONS": env.get("UBSAN_OPTIONS", "print_stacktrace=1"),
        })
        env.update(self.extra_env)
        self.data.mkdir(parents=True, exist_ok=True)
        logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, cwd=str(self.workdir))
        logf.close()
        self.wait_ready()
        return self

    def health(self, timeout=5):
        try:
            st, _, _ = self.raw("GET", "/flicker/health", sign=False, timeout=timeout)
            return st
        except OSError:
            return None

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"flicker up exited with {self.proc.returncode} before becoming ready;"
                            f" log tail:\n{self.log_tail()}")
            if self.health(timeout=2) == 200:
                return
            time.sleep(0.1)
        pytest.fail(f"flicker up not ready after {READY_TIMEOUT}s; log tail:\n{self.log_tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Sends sig and waits for exit; returns the exit status (or None if
        not running).  Kills -9 and fails if it does not exit in time."""
        if self.proc is None:
            return None
        timeout = timeout or STOP_TIMEOUT
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self.exit_codes.append("hung")
                self.check_sanitizer()
                pytest.fail(f"flicker up did not exit within {timeout}s of signal {sig};"
                            f" log tail:\n{self.log_tail()}")
        rc = self.proc.returncode
        self.exit_codes.append(rc)
        self.check_sanitizer()
        return rc

    def kill9(self):
        """SIGKILL the server (no cleanup on its side); returns once reaped."""
        self.proc.kill()
        self.proc.wait(30)
        self.exit_codes.append(self.proc.returncode)
        return self.proc.returncode

    def restart(self, **changes):
        """Stops (SIGTERM; must exit 0) and starts again with the same data dir
        and port; keyword changes (args=, auth=, keep_alive=) apply to the new run."""
        if self.running():
            rc = self.stop()
            assert rc == 0, f"flicker up exited {rc} on SIGTERM; log:\n{self.log_tail()}"
        for k, v in changes.items():
            setattr(self, k, list(v) if k == "args" else v)
        self._clients.clear()
        return self.start()

    # ---- output ----
    def log_text(self, all_generations=False):
        paths = self.logs_seen if all_generations else [self.log_path]
        out = []
        for p in paths:
            if p is None:
                continue
            try:
                out.append(Path(p).read_text(errors="replace"))
            except OSError:
                pass
        return "".join(out)

    def log_tail(self, n=80):
        if self.log_path is None:
            return "(never started)"
        return "\n".join(self.log_text().splitlines()[-n:])

    def check_sanitizer(self):
        """Records sanitizer reports found in the current log; returns them."""
        text = self.log_text()
        hits = [line for line in text.splitlines() if any(p in line for p in SANITIZER_PATTERNS)]
        if hits:
            SANITIZER_FINDINGS.append((str(self.log_path), hits[:20]))
        return hits

    def descendants(self):
        return descendants(self.proc.pid) if self.running() else set()

    # ---- clients ----
    def client(self, access_key=ACCESS_KEY, secret_key=SECRET_KEY, validate=True, read_timeout=None):
        key = (access_key, secret_key, validate, read_timeout)
        if key not in self._clients:
            cfg = Config(
                # total_max_attempts=1: one attempt, no retries (tests must see 429s/5xx).
                retries={"total_max_attempts": 1, "mode": "standard"},
                read_timeout=read_timeout or 120 * SLOW,
                connect_timeout=10,
                parameter_validation=validate,
                max_pool_connections=32,
            )
            self._clients[key] = boto3.session.Session().client(
                "lambda", endpoint_url=self.endpoint, region_name=REGION,
                aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=cfg)
        return self._clients[key]

    def new_client(self, **kw):
        """A fresh client (for use from another thread)."""
        cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                     read_timeout=kw.get("read_timeout", 120 * SLOW), connect_timeout=10)
        return boto3.session.Session().client(
            "lambda", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, config=cfg)

    def cli_env(self):
        env = dict(os.environ)
        env.update({
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_PAGER": "",
            "AWS_MAX_ATTEMPTS": "1",
            "AWS_RETRY_MODE": "standard",
            "AWS_CONFIG_FILE": "/nonexistent/flicker-test-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/flicker-test-credentials",
            "FLICKER_ENDPOINT": self.endpoint,
            "FLICKER_ACCESS_KEY_ID": ACCESS_KEY,
            "FLICKER_SECRET_ACCESS_KEY": SECRET_KEY,
        })
        env.pop("AWS_PROFILE", None)
        env.pop("AWS_SESSION_TOKEN", None)
        return env

    def aws(self, *args, check=True, timeout=None, cwd=None):
        """Runs /usr/bin/aws ARGS against this server; returns CompletedProcess
        (text).  With check, a non-zero exit fails the test with its stderr."""
        cmd = [AWS_CLI, "--endpoint-url", self.endpoint, "--output", "json",
               "--cli-read-timeout", str(120 * SLOW), *[str(a) for a in args]]
        p = subprocess.run(cmd, env=self.cli_env(), capture_output=True, text=True,
                           timeout=timeout or 180 * SLOW, cwd=cwd, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            pytest.fail(f"aws {' '.join(map(str, args))} exited {p.returncode}:\n"
                        f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def cli(self, *args, check=True, timeout=None, input=None):
        """Runs flicker's own CLI (build/flicker ARGS) with FLICKER_ENDPOINT set."""
        p = subprocess.run([str(BINARY), *[str(a) for a in args]], env=self.cli_env(),
                           capture_output=True, text=True, timeout=timeout or 120 * SLOW,
                           input=input)
        hits = [line for line in (p.stderr or "").splitlines()
                if any(x in line for x in SANITIZER_PATTERNS)]
        if hits:
            SANITIZER_FINDINGS.append((f"flicker {' '.join(map(str, args))} (CLI)", hits[:20]))
            pytest.fail("sanitizer report from the flicker CLI:\n" + "\n".join(hits[:20]))
        if check and p.returncode != 0:
            pytest.fail(f"flicker {' '.join(map(str, args))} exited {p.returncode}:\n"
                        f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def raw(self, method, path, body=b"", headers=None, query=None, sign=True,
            access_key=ACCESS_KEY, secret_key=SECRET_KEY, timeout=None, tamper=None):
        """One HTTP request, SigV4-signed with botocore's signer unless
        sign=False.  tamper(headers_dict, body) -> body may alter the request
        after signing.  Returns (status, headers{lower: value}, body bytes)."""
        import http.client
        if isinstance(body, str):
            body = body.encode()
        url = self.endpoint + path + ("?" + urllib.parse.urlencode(query) if query else "")
        hdrs = dict(headers or {})
        if sign:
            req = AWSRequest(method=method, url=url, data=body, headers=hdrs)
            SigV4Auth(Credentials(access_key, secret_key), "lambda", REGION).add_auth(req)
            hdrs = dict(req.headers.items())
        if tamper:
            body = tamper(hdrs, body)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or 120 * SLOW)
        try:
            conn.request(method, path + ("?" + urllib.parse.urlencode(query) if query else ""),
                         body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def logs(self, function_name, offset=0):
        """(text, next_offset) of the function's log via
        GET /flicker/functions/NAME/logs?offset=N."""
        st, h, body = self.raw("GET", f"/flicker/functions/{function_name}/logs",
                               query={"offset": str(offset)})
        assert st == 200, f"logs endpoint answered {st}: {body[:300]!r}"
        assert "x-flicker-log-offset" in h, f"no X-Flicker-Log-Offset header: {h}"
        return body.decode("utf-8", "replace"), int(h["x-flicker-log-offset"])

    def wait_log(self, function_name, needle, timeout=60 * SLOW, offset=0):
        """Waits until the function's log contains needle (str or compiled
        regex); returns the log text."""
        def found():
            text, _ = self.logs(function_name, offset)
            if isinstance(needle, str):
                return text if needle in text else None
            return text if needle.search(text) else None
        return wait_until(found, timeout, 0.25, f"{needle!r} in logs of {function_name}")


# --------------------------------------------------------------------------
# Function deployment helpers
# --------------------------------------------------------------------------

DEFAULT_HANDLERS = {
    "python": "app.handler",
    "nodejs": "index.handler",
    "provided": "bootstrap.handler",
}
DEFAULT_RUNTIMES = {"py": "python3.11", "node": "nodejs20.x", "provided": "provided.al2023"}


def runtime_for(source):
    prefix = str(source).split("_", 1)[0]
    return DEFAULT_RUNTIMES.get(prefix, "python3.11")


def handler_for(runtime):
    for k, v in DEFAULT_HANDLERS.items():
        if runtime.startswith(k):
            return v
    return "app.handler"


def create_function(client, name, source=None, runtime=None, handler=None, zip_bytes=None,
                    wait=True, **kw):
    """CreateFunction from tests/functions/<source> (or zip_bytes) and wait
    for State Active (function_active_v2).  Returns the create response."""
    runtime = runtime or runtime_for(source)
    params = dict(FunctionName=name, Runtime=runtime, Role=ROLE,
                  Handler=handler or handler_for(runtime),
                  Code={"ZipFile": zip_bytes if zip_bytes is not None else make_zip(source)})
    params.update(kw)
    resp = client.create_function(**params)
    if wait:
        wait_active(client, name)
    return resp


def wait_active(client, name):
    client.get_waiter("function_active_v2").wait(
        FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60 * SLOW})


def wait_updated(client, name):
    client.get_waiter("function_updated_v2").wait(
        FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60 * SLOW})


def do_invoke(client, name, payload=None, **kw):
    """Invoke; payload may be a dict/list (JSON-encoded), str or bytes."""
    if payload is None:
        payload = {}
    if not isinstance(payload, (bytes, bytearray, str)):
        payload = json.dumps(payload)
    return Invocation(client.invoke(FunctionName=name, Payload=payload, **kw))


# --------------------------------------------------------------------------
# pytest plumbing
# --------------------------------------------------------------------------

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long-running test (containment, restarts)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """A per-test wall-clock limit (no plugin needed): SIGALRM raises in the
    test's main thread so one hung request cannot eat the CI budget."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {TEST_TIMEOUT}s (FLICKER_TEST_TIMEOUT)")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed and call.when in ("call", "setup"):
        servers = [s for s in getattr(item, "_flicker_servers", []) if s.log_path]
        sess = getattr(item.session, "_flicker_server", None)
        if sess is not None and sess not in servers:
            servers.append(sess)
        for s in servers:
            rep.sections.append((f"flicker log tail ({s.log_path})", s.log_tail(60)))


def pytest_sessionfinish(session, exitstatus):
    if SANITIZER_FINDINGS:
        sys.stderr.write("\nSANITIZER REPORTS in flicker output:\n")
        for path, hits in SANITIZER_FINDINGS:
            sys.stderr.write(f"  {path}:\n")
            for h in hits:
                sys.stderr.write(f"    {h}\n")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def workroot(tmp_path_factory):
    return tmp_path_factory.mktemp("flicker")


@pytest.fixture(scope="session")
def flicker(workroot, request):
    """The session's server.  Teardown: SIGTERM must give exit 0, no live
    descendant, no sandbox cgroup left, no sanitizer report."""
    cg_before = sandbox_cgroup_dirs()
    srv = Server(workroot / "main", keep_alive=120)
    srv.start()
    request.session._flicker_server = srv
    yield srv
    procs = srv.descendants() | sandbox_pids(sandbox_cgroup_dirs() - cg_before)
    rc = srv.stop()
    problems = []
    if rc != 0:
        problems.append(f"exit status {rc} on SIGTERM (expected 0)")
    left = [p for p in procs if pid_alive(p)]
    if left:
        problems.append(f"processes left after shutdown: {left}")
    cg = sorted(sandbox_cgroup_dirs() - cg_before)
    if cg:
        problems.append(f"sandbox cgroups left after shutdown: {cg}")
    hits = srv.check_sanitizer()
    if hits:
        problems.append("sanitizer reports:\n" + "\n".join(hits[:20]))
    if problems:
        pytest.fail("session server shutdown problems:\n" + "\n".join(problems)
                    + f"\nlog tail:\n{srv.log_tail()}")


@pytest.fixture
def spawn(workroot, request):
    """Factory for extra servers: spawn(*args, auth=True, keep_alive=None,
    data=None) -> started Server.  Each is stopped at test end: SIGTERM must
    give exit 0 and no sanitizer report."""
    servers = []
    request.node._flicker_servers = servers

    def _spawn(*args, auth=True, keep_alive=None, data=None, start=True, env=None):
        srv = Server(workroot / f"extra-{uuid.uuid4().hex[:8]}", data=data, args=args,
                     auth=auth, keep_alive=keep_alive, env=env)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield _spawn
    problems = []
    for srv in servers:
        if srv.running():
            rc = srv.stop()
            if rc != 0:
                problems.append(f"{srv.log_path}: exit status {rc} on SIGTERM")
        hits = srv.check_sanitizer()
        if hits:
            problems.append(f"{srv.log_path}: sanitizer reports:\n" + "\n".join(hits[:20]))
    if problems:
        pytest.fail("extra server problems:\n" + "\n".join(problems))


@pytest.fixture
def lam(flicker):
    return flicker.client()


@pytest.fixture
def lam_novalidate(flicker):
    """A client that skips botocore's parameter validation, so the server's
    own validation is what answers."""
    return flicker.client(validate=False)


@pytest.fixture
def fname(request):
    return f"{_sanitize(request.node.name)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def aws(flicker):
    return flicker.aws


@pytest.fixture
def invoke(lam):
    def _invoke(name, payload=None, client=None, **kw):
        return do_invoke(client or lam, name, payload, **kw)
    return _invoke


@pytest.fixture
def deploy(flicker, request):
    """deploy(source, name=None, client=None, **CreateFunction params) ->
    name.  Creates the function and waits for Active; deletes it at the end
    of the test (best effort)."""
    created = []

    def _deploy(source=None, name=None, client=None, **kw):
        client = client or flicker.client()
        name = name or f"{_sanitize(request.node.name)[:30]}-{uuid.uuid4().hex[:8]}"
        create_function(client, name, source, **kw)
        created.append((client, name))
        return name

    yield _deploy
    for client, name in created:
        try:
            client.delete_function(FunctionName=name)
        except Exception:
            pass


@pytest.fixture(scope="session")
def zip_of():
    cache = {}

    def _zip_of(source):
        if source not in cache:
            cache[source] = make_zip(source)
        return cache[source]
    return _zip_of


@pytest.fixture(scope="session", autouse=True)
def _sanitizer_gate():
    """Last line of defence: after all servers stopped, fail loudly (as an
    error of the final teardown) if any sanitizer report was seen."""
    yield
    if SANITIZER_FINDINGS:
        pytest.fail("sanitizer reports in flicker output: "
                    + "; ".join(f"{p}: {h[0]}" for p, h in SANITIZER_FINDINGS))
