"""tests/guest - boots flicker's real microVM guest (kernel, root images,
flicker-agent) under QEMU TCG and checks the agent end to end through the
vmproto port: HELLO, runtimes started from every image, the unprivileged
identity and what it cannot reach, the Runtime API relay with the real
runtime clients against a fake Runtime API (http.server on the host), OOM
accounting, protocol faults, and snapshot + RESTORE (new boot id, reseeded
kernel RNG, pending request replayed to the restored VM's host).

Run: /usr/bin/python3 -m pytest tests/guest (after `make guest`).  The
tests skip, with the reason, only when the kernel or images are not built.
"""

import http.server
import json
import os
import queue
import signal
import struct
import threading
import time

import pytest

import guestvm as g

GUEST_DIR = g.guest_dir()
NEEDED = ["vmlinux", "rootfs-provided.erofs", "rootfs-python.erofs", "rootfs-nodejs.erofs"]
MISSING = [n for n in NEEDED if not os.path.exists(os.path.join(GUEST_DIR, n))]
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason="microVM guest not built (make guest failed?): missing %s in %s" % (", ".join(MISSING), GUEST_DIR))

PY_HANDLER = """\
import os

def handler(event, context):
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    return {"echo": event, "boot_id": boot_id, "rand": os.urandom(16).hex(),
            "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
            "request_id": context.aws_request_id}
"""

NODE_HANDLER = """\
exports.handler = async (event, context) => ({
  echo: event, node: process.version, uid: process.getuid(), request_id: context.awsRequestId,
});
"""


# ------------------------------------------------------------ fake Runtime API

class FakeRuntimeAPI:
    """The Runtime API's invocation routes on a ThreadingHTTPServer: GET
    /next hands out queued events (blocking while there are none), POST
    .../response and .../error record what the runtime sent."""

    def __init__(self):
        self.events = queue.Queue()
        self.responses = {}
        self.errors = {}
        self.next_calls = 0
        self.closing = threading.Event()
        self.cond = threading.Condition()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != "/2018-06-01/runtime/invocation/next":
                    return self._reply(404)
                with api.cond:
                    api.next_calls += 1
                    api.cond.notify_all()
                while not api.closing.is_set():
                    try:
                        rid, event = api.events.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                else:
                    self.close_connection = True
                    return
                deadline = int(time.time() * 1000) + 60000
                self._reply(200, json.dumps(event).encode(), [
                    ("Content-Type", "application/json"),
                    ("Lambda-Runtime-Aws-Request-Id", rid),
                    ("Lambda-Runtime-Deadline-Ms", str(deadline)),
                    ("Lambda-Runtime-Invoked-Function-Arn",
                     "arn:aws:lambda:us-east-1:123456789012:function:guest-test"),
                ])

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                parts = self.path.split("/")
                # /2018-06-01/runtime/invocation/<id>/(response|error)
                if len(parts) == 6 and parts[3] == "invocation" and parts[5] in ("response", "error"):
                    with api.cond:
                        (api.responses if parts[5] == "response" else api.errors)[parts[4]] = body
                        api.cond.notify_all()
                    return self._reply(202, b'{"status":"OK"}')
                if self.path == "/2018-06-01/runtime/init/error":
                    with api.cond:
                        api.errors["init"] = body
                        api.cond.notify_all()
                    return self._reply(202, b'{"status":"OK"}')
                self._reply(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return self.server.server_address

    def invoke(self, rid, event):
        self.events.put((rid, event))

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def wait_api(vm, api, pred, timeout=120, what="the fake Runtime API"):
    """Serves vm until pred(api) holds."""
    def check():
        with api.cond:
            return pred(api)
    return vm.pump(check, timeout, what)


# ------------------------------------------------------------------- fixtures

@pytest.fixture
def make_vm(tmp_path):
    made = []

    def make(family, **kw):
        vm = g.GuestVM(str(tmp_path), family, name="vm%d" % len(made), **kw)
        made.append(vm)
        return vm
    yield make
    for vm in made:
        vm.close()


@pytest.fixture
def fake_api():
    apis = []

    def make():
        a = FakeRuntimeAPI()
        apis.append(a)
        return a
    yield make
    for a in apis:
        a.close()


def runtime_env(handler):
    return g.SBX_ENV + ["_HANDLER=" + handler]


# ---------------------------------------------------------------------- tests

def test_clock_frame_sets_the_guest_wall_clock(make_vm):
    """CLOCK (before START) sets the guest's wall clock to the nanosecond
    the host sends, not the RTC's whole seconds: here a fixed instant far
    from now, read back by the runtime."""
    code = {"bootstrap": ("#!/bin/sh\necho \"now=$(date +%s)\"\n", 0o755)}
    vm = make_vm("provided", code=code, console=False).start()
    vm.wait_frame(g.HELLO, timeout=60)
    target = 1900000000  # 2030-03-17
    vm.send(g.CLOCK, 0, struct.pack("<q", target * 1000000000 + 500000000))
    vm.send_start(["/var/task/bootstrap"], g.SBX_ENV)
    _, _, p = vm.wait_frame(g.EXIT)
    line = [l for l in vm.log.decode().splitlines() if l.startswith("now=")]
    assert line, vm.log
    assert abs(int(line[0][4:]) - target) <= 5, line

def test_hello_and_provided_bootstrap(make_vm, capsys):
    code = {"bootstrap": ("#!/bin/sh\necho \"hello from $(id -u):$(id -g) in $(pwd)\"\n"
                          "echo to-stderr >&2\nexit 7\n", 0o755)}
    vm = make_vm("provided", code=code, console=False).start()
    _, stream, payload = vm.wait_frame(g.HELLO, timeout=60)
    # version 1, features: CLOCK
    assert stream == 0 and struct.unpack("<II", payload) == (1, g.FEATURE_CLOCK)
    with capsys.disabled():  # shown even when pytest captures output
        print("\nboot to HELLO (QEMU start included, TCG, no console): %.3f s" % vm.hello_after)
    vm.send_start(["/var/task/bootstrap"], g.SBX_ENV)
    _, _, p = vm.wait_frame(g.EXIT)
    status, ooms = g.decode_exit(p)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, status
    assert ooms == 0
    log = vm.log.decode()
    assert "hello from 993:993 in /var/task\n" in log
    assert "to-stderr\n" in log
    # EXIT comes after every LOG byte, and the agent stays up afterwards.
    assert [t for t, _, _ in vm.frames if t in (g.LOG, g.EXIT)][-1] == g.EXIT
    time.sleep(1)
    assert vm.proc.poll() is None, "the VM went away after EXIT"


def test_host_connects_late(make_vm):
    # The agent boots, finds nobody on the port, and waits: HELLO and the
    # runtime's output arrive once the host connects.
    code = {"bootstrap": ("#!/bin/sh\necho late-host-ok\n", 0o755)}
    vm = make_vm("provided", code=code).start(connect_delay=4)
    status, _ = vm.run_to_exit(["/var/task/bootstrap"])
    assert status == 0 and "late-host-ok\n" in vm.log.decode()


def test_python_one_liner(make_vm):
    vm = make_vm("python").start()
    status, _ = vm.run_to_exit(
        ["/usr/bin/python3", "-c", "import sys, json, ssl, sqlite3; print('py', sys.version_info[:2], json.dumps({'ok': 1}))"])
    assert status == 0, vm.diagnostics()
    assert "py (3, 11) {\"ok\": 1}\n" in vm.log.decode()


def test_nodejs_one_liner(make_vm):
    vm = make_vm("nodejs").start()
    status, _ = vm.run_to_exit(
        ["/usr/bin/node", "-e", "console.log('node', process.version.split('.')[0], require('crypto').randomBytes(4).length)"])
    assert status == 0, vm.diagnostics()
    assert "node v20 4\n" in vm.log.decode()


ISOLATION_SCRIPT = r"""#!/bin/sh
echo "ID $(id -u) $(id -g) $(id -G)"
grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status
if ls /dev | grep -q vport; then echo "PORTNODE present"; else echo "PORTNODE absent"; fi
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = flicker.0 ] && dev=$(cat "$p/dev")
done
echo "PORTDEV ${dev:-none}"
if mknod /tmp/port c "${dev%%:*}" "${dev##*:}" 2>/dev/null; then echo "MKNOD ok"; else echo "MKNOD denied"; fi
check() { if eval "$2" >/dev/null 2>&1; then echo "$1 ok"; else echo "$1 denied"; fi; }
check ROOTWRITE "echo x > /rootfile"
check TASKWRITE "echo x > /var/task/newfile"
check ETCWRITE "echo x >> /etc/passwd"
check TMPWRITE "echo x > /tmp/file && cat /tmp/file"
check PID1FD "ls /proc/1/fd"
check RUNDIR "ls /run/flicker"
check DISKREAD "head -c 512 /dev/vda"
check KILL1 "kill -0 1"
check MOUNT "mount -t tmpfs none /mnt"
check KMSG "dmesg"
echo "TMPFS $(grep ' /tmp ' /proc/mounts | cut -d' ' -f3)"
echo "OOMADJ $(cat /proc/self/oom_score_adj)"
"""


def test_runtime_identity_and_isolation(make_vm):
    vm = make_vm("provided", code={"bootstrap": (ISOLATION_SCRIPT, 0o755)}, tmp_mb=32).start()
    status, _ = vm.run_to_exit(["/var/task/bootstrap"])
    assert status == 0, vm.diagnostics()
    out = dict(line.split(None, 1) for line in vm.log.decode().splitlines() if len(line.split(None, 1)) == 2)
    assert out["ID"] == "993 993 993"
    assert out["CapEff:"].strip() == "0000000000000000"
    assert out["CapPrm:"].strip() == "0000000000000000"
    assert out["CapBnd:"].strip() == "0000000000000000"
    assert out["NoNewPrivs:"].strip() == "1"
    # The port is there (sysfs), but it has no device node and none can be made.
    assert out["PORTNODE"] == "absent"
    assert out["PORTDEV"] != "none"
    assert out["MKNOD"] == "denied"
    for what in ("ROOTWRITE", "TASKWRITE", "ETCWRITE", "PID1FD", "RUNDIR", "DISKREAD", "KILL1",
                 "MOUNT", "KMSG"):
        assert out[what] == "denied", (what, vm.log.decode())
    assert out["TMPWRITE"] == "ok"
    assert out["TMPFS"] == "ext4"  # vdc was given: /tmp is the ext4 disk
    assert out["OOMADJ"] == "0"


def test_exec_failure_and_orphans(make_vm):
    vm = make_vm("provided").start()
    status, _ = vm.run_to_exit(["/var/task/bootstrap"])  # no code disk: nothing there
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 127
    assert "exec /var/task/bootstrap: No such file or directory" in vm.log.decode()

    # An orphan that exits while the runtime lives is reaped by the agent
    # (no zombie); one still running when the runtime exits is killed.
    code = {"bootstrap": ("#!/bin/sh\n( true & )\nsleep 1\n"
                          "echo \"zombies $(cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\"' | wc -l)\"\n"
                          "(sleep 3; echo orphan-survived) &\necho parent-done\n", 0o755)}
    vm2 = make_vm("provided", code=code).start()
    status, _ = vm2.run_to_exit(["/var/task/bootstrap"])
    assert status == 0
    vm2.settle(4)
    assert "parent-done" in vm2.log.decode()
    assert "zombies 0\n" in vm2.log.decode(), vm2.log.decode()
    assert "orphan-survived" not in vm2.log.decode()  # killed with the runtime


def test_python_runtime_through_stream_relay(make_vm, fake_api):
    api = fake_api()
    vm = make_vm("python", code={"lambda_function.py": (PY_HANDLER, 0o644)}, api=api.address).start()
    vm.wait_frame(g.HELLO)
    vm.send_start(["/usr/bin/python3", "-u", "/var/runtime/python/bootstrap.py"],
                  runtime_env("lambda_function.handler"))
    api.invoke("req-1", {"n": 1, "text": "hé"})
    wait_api(vm, api, lambda a: "req-1" in a.responses or a.errors)
    assert not api.errors, (api.errors, vm.diagnostics())
    r = json.loads(api.responses["req-1"])
    assert r["echo"] == {"n": 1, "text": "hé"}
    assert r["uid"] == 993 and r["gid"] == 993 and r["cwd"] == "/var/task"
    assert r["request_id"] == "req-1"
    # The runtime went back for the next event over the relay.
    wait_api(vm, api, lambda a: a.next_calls >= 2)
    assert vm.opened and all(s >= 1 for s in vm.opened)
    assert len(set(vm.opened)) == len(vm.opened)  # stream ids never reused


def test_nodejs_runtime_through_stream_relay(make_vm, fake_api):
    api = fake_api()
    vm = make_vm("nodejs", code={"index.js": (NODE_HANDLER, 0o644)}, api=api.address).start()
    vm.wait_frame(g.HELLO)
    vm.send_start(["/usr/bin/node", "/var/runtime/nodejs/bootstrap.js"], runtime_env("index.handler"))
    api.invoke("req-n", {"k": [1, 2, 3]})
    wait_api(vm, api, lambda a: "req-n" in a.responses or a.errors)
    assert not api.errors, (api.errors, vm.diagnostics())
    r = json.loads(api.responses["req-n"])
    assert r["echo"] == {"k": [1, 2, 3]} and r["uid"] == 993 and r["node"].startswith("v20.")


def test_provided_curl_runtime_through_stream_relay(make_vm, fake_api):
    # tests/functions/provided_echo: a custom runtime in sh + curl + awk.
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "functions", "provided_echo", "bootstrap")) as f:
        bootstrap = f.read()
    api = fake_api()
    vm = make_vm("provided", code={"bootstrap": (bootstrap, 0o755)}, api=api.address).start()
    vm.wait_frame(g.HELLO)
    vm.send_start(["/var/task/bootstrap"], runtime_env("whatever.handler"))
    api.invoke("req-sh", {"from": "curl"})
    wait_api(vm, api, lambda a: "req-sh" in a.responses or a.errors)
    r = json.loads(api.responses["req-sh"])
    assert r["echo"] == {"from": "curl"} and r["request_id"] == "req-sh", r
    assert "provided_echo handling req-sh" in vm.log.decode()


STREAM_CLIENT = """
import socket
s = socket.create_connection(("127.0.0.1", 9001))
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    d = s.recv(100)
    if not d:
        break
    data += d
print("got", data.decode())
s2 = socket.create_connection(("127.0.0.1", 9001))
print("eof2", s2.recv(10) == b"")
s2.sendall(b"after-host-close")
s2.close()
"""


def test_stream_close_semantics(make_vm):
    # Each direction ends on its own: the runtime's half-close is a CLOSE,
    # the host's CLOSE is an EOF for the runtime, which may still send.
    vm = make_vm("python").start()
    vm.wait_frame(g.HELLO)
    vm.send_start(["/usr/bin/python3", "-c", STREAM_CLIENT])
    _, sid1, _ = vm.wait_frame(g.OPEN)
    vm.pump(lambda: any(t == g.CLOSE and s == sid1 for t, s, _ in vm.frames), what="CLOSE of stream 1")
    assert b"".join(p for t, s, p in vm.frames if t == g.DATA and s == sid1) == b"ping"
    vm.send(g.DATA, sid1, b"pong")
    vm.send(g.CLOSE, sid1)
    n = len(vm.frames)
    _, sid2, _ = vm.wait_frame(g.OPEN, since=n)
    assert sid2 > sid1
    vm.send(g.CLOSE, sid2)
    vm.pump(lambda: any(t == g.CLOSE and s == sid2 for t, s, _ in vm.frames), what="CLOSE of stream 2")
    assert b"".join(p for t, s, p in vm.frames if t == g.DATA and s == sid2) == b"after-host-close"
    _, _, p = vm.wait_frame(g.EXIT)
    assert g.decode_exit(p)[0] == 0, vm.diagnostics()
    assert "got pong\neof2 True\n" in vm.log.decode()


def test_oom_kill_is_reported(make_vm):
    vm = make_vm("python", mem_mb=128).start()
    status, ooms = vm.run_to_exit(
        ["/usr/bin/python3", "-c", "a = []\nwhile True: a.append(bytearray(8 << 20))"])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (status, vm.diagnostics())
    assert ooms > 0


def test_malformed_frame_is_a_fault(make_vm):
    vm = make_vm("provided").start()
    vm.wait_frame(g.HELLO)
    vm.sock.sendall(struct.pack("<BBHII", 99, 0, 0, 0, 0))
    _, _, text = vm.wait_frame(g.FAULT)
    assert b"protocol" in text
    assert vm.proc.wait(timeout=60) is not None  # the agent ended the VM


def test_start_twice_is_a_fault(make_vm):
    code = {"bootstrap": ("#!/bin/sh\nsleep 30\n", 0o755)}
    vm = make_vm("provided", code=code).start()
    vm.wait_frame(g.HELLO)
    vm.send_start(["/var/task/bootstrap"])
    vm.send_start(["/var/task/bootstrap"])
    _, _, text = vm.wait_frame(g.FAULT)
    assert b"second START" in text


def format_boot_id(raw):
    u = bytearray(raw)
    u[6] = (u[6] & 0x0F) | 0x40
    u[8] = (u[8] & 0x3F) | 0x80
    h = u.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def test_snapshot_restore(make_vm, fake_api, tmp_path, capsys):
    code_img = g.make_erofs({"lambda_function.py": (PY_HANDLER, 0o644)}, str(tmp_path), "fn")
    env = runtime_env("lambda_function.handler")
    argv = ["/usr/bin/python3", "-u", "/var/runtime/python/bootstrap.py"]

    # The original: initialized, answered one event, waiting in GET /next.
    api0 = fake_api()
    vm0 = make_vm("python", code_img=code_img, api=api0.address).start()
    vm0.wait_frame(g.HELLO)
    vm0.send_start(argv, env)
    api0.invoke("before", {"phase": "before"})
    wait_api(vm0, api0, lambda a: "before" in a.responses or a.errors)
    before = json.loads(api0.responses["before"])
    wait_api(vm0, api0, lambda a: a.next_calls >= 2)
    vm0.settle(0.5)  # nothing is in flight when the snapshot is taken
    snap = str(tmp_path / "vm.state")
    t0 = time.monotonic()
    vm0.snapshot(snap)
    snap_s = time.monotonic() - t0
    vm0.close()

    results = []
    for i in range(2):
        api = fake_api()
        vm = make_vm("python", code_img=code_img, api=api.address)
        t0 = time.monotonic()
        vm.start(incoming=snap)
        vm.wait_incoming()
        entropy = os.urandom(32)
        boot_id = os.urandom(16)
        n0 = len(vm.frames)
        vm.send(g.RESTORE, 0, entropy + boot_id)
        vm.wait_frame(g.RESTORED, timeout=60, since=n0)
        restore_s = time.monotonic() - t0
        # The GET /next that was pending at snapshot time was re-sent to
        # this VM's host, before RESTORED, on a fresh stream.
        after = vm.frames[n0:]
        kinds = [t for t, _, _ in after]
        assert kinds.index(g.OPEN) < kinds.index(g.RESTORED)
        sid = after[kinds.index(g.OPEN)][1]
        assert sid not in vm0.opened or sid > max(vm0.opened)
        replay = b"".join(p for t, s, p in after if t == g.DATA and s == sid)
        assert replay.startswith(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\n"), replay
        wait_api(vm, api, lambda a: a.next_calls >= 1)
        api.invoke("after-%d" % i, {"phase": "after", "clone": i})
        wait_api(vm, api, lambda a: ("after-%d" % i) in a.responses or a.errors)
        assert not api.errors, api.errors
        r = json.loads(api.responses["after-%d" % i])
        assert r["echo"] == {"phase": "after", "clone": i}
        assert r["boot_id"] == format_boot_id(boot_id)
        results.append(r)
        with capsys.disabled():
            print("\nsnapshot %.3f s (%.1f MB); clone %d: QEMU start to RESTORED %.3f s"
                  % (snap_s, os.path.getsize(snap) / 1e6, i, restore_s))
        vm.close()

    assert before["boot_id"] not in (results[0]["boot_id"], results[1]["boot_id"])
    # Same memory image, different entropy: the clones' kernel RNGs diverged.
    assert results[0]["rand"] != results[1]["rand"]
    assert before["rand"] not in (results[0]["rand"], results[1]["rand"])
