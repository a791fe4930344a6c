"""guestvm.py - boots flicker's microVM guest under QEMU (TCG) and speaks
vmproto (src/worker/vmproto.h) with its agent, for tests/guest.

A GuestVM is one QEMU process: the kernel and a root image from the guest
directory (FLICKER_GUEST_DIR, else $FLICKER_BUILD/guest, else build/guest),
an optional code disk (an erofs image made from a dict of files), an
optional ext4 /tmp disk, the virtio-serial port "flicker.0" on a unix socket
(QEMU listens, the test connects), virtio-rng, and QMP on a second socket.
The devices are given in the order the host side uses: vda root, vdb code,
vdc /tmp.

Frames are packed with struct exactly as vmproto.h defines them.  pump()
reads frames until a condition holds, keeping every frame (self.frames), the
LOG bytes (self.log), and relaying streams: each OPEN becomes a TCP
connection to the fake Runtime API address given (bytes both ways, CLOSE
both ways), so a real runtime in the guest talks to a real HTTP server on
the host through the agent.
"""

import ctypes
import json
import os
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import time

HDR = struct.Struct("<BBHII")
START, DATA, CLOSE, RESTORE, CLOCK = 1, 2, 3, 4, 5
FEATURE_CLOCK = 1
HELLO, OPEN, LOG, EXIT, RESTORED, FAULT = 16, 17, 20, 21, 22, 23
NAMES = {START: "START", DATA: "DATA", CLOSE: "CLOSE", RESTORE: "RESTORE", HELLO: "HELLO",
         OPEN: "OPEN", LOG: "LOG", EXIT: "EXIT", RESTORED: "RESTORED", FAULT: "FAULT"}
MAX_PAYLOAD = 1 << 20
CMDLINE = "reboot=t panic=-1 quiet init=/sbin/flicker-agent root=/dev/vda rootfstype=erofs ro"
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"

SBX_ENV = [
    "PATH=/usr/local/bin:/usr/bin/:/bin:/opt/bin",
    "LANG=en_US.UTF-8",
    "TZ=:UTC",
    "LAMBDA_TASK_ROOT=/var/task",
    "LAMBDA_RUNTIME_DIR=/var/runtime",
    "AWS_REGION=us-east-1",
    "AWS_LAMBDA_FUNCTION_NAME=guest-test",
    "AWS_LAMBDA_FUNCTION_VERSION=$LATEST",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
    "AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001",
]


def _die_with_parent():
    """In the forked QEMU: SIGKILL when the test process goes away, so an
    interrupted run leaves no VM behind (PR_SET_PDEATHSIG = 1)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)


def guest_dir():
    d = os.environ.get("FLICKER_GUEST_DIR")
    if d:
        return d
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    build = os.environ.get("FLICKER_BUILD", "build")
    return os.path.join(build if os.path.isabs(build) else os.path.join(root, build), "guest")


def frame(ftype, stream=0, payload=b""):
    return HDR.pack(ftype, 0, 0, stream, len(payload)) + payload


def start_payload(argv, envp):
    out = struct.pack("<II", len(argv), len(envp))
    for s in list(argv) + list(envp):
        out += s.encode() + b"\0"
    return out


def decode_exit(payload):
    return struct.unpack("<iI", payload)


def make_erofs(files, workdir, name):
    """files: {relative path: (bytes or str, mode)} -> an erofs image path."""
    tree = os.path.join(workdir, name + ".d")
    for rel, (content, mode) in files.items():
        p = os.path.join(tree, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(p, mode)
    img = os.path.join(workdir, name + ".erofs")
    subprocess.run(["mkfs.erofs", "--quiet", "--all-root", img, tree], check=True)
    return img


def make_ext4(workdir, name, mb):
    img = os.path.join(workdir, name + ".ext4")
    with open(img, "wb") as f:
        f.truncate(mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", img], check=True)
    return img


class Fault(Exception):
    pass


class GuestVM:
    def __init__(self, workdir, family, code=None, tmp_mb=None, mem_mb=128, console=True,
                 api=None, name="vm", code_img=None, tmp_img=None):
        self.workdir = workdir
        self.family = family
        self.name = name
        self.mem_mb = mem_mb
        self.console = console
        self.api = api  # (host, port) of the fake Runtime API, or None
        gd = guest_dir()
        self.kernel = os.path.join(gd, "vmlinux")
        self.rootfs = os.path.join(gd, "rootfs-%s.erofs" % family)
        self.code_img = code_img or (make_erofs(code, workdir, name + "-code") if code else None)
        self.tmp_img = tmp_img or (make_ext4(workdir, name + "-tmp", tmp_mb) if tmp_mb else None)
        # unix socket paths must stay short (108 bytes): a private /tmp dir
        self.sockdir = tempfile.mkdtemp(prefix="flicker-vm-")
        self.sock_path = os.path.join(self.sockdir, "port")
        self.qmp_path = os.path.join(self.sockdir, "qmp")
        self.console_path = os.path.join(workdir, name + ".console")
        self.qemu_log = os.path.join(workdir, name + ".qemu.log")
        self.proc = None
        self.sock = None
        self.qmp = None
        self.buf = b""
        self.frames = []
        self.log = bytearray()
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # stream id -> socket to the fake Runtime API
        self.opened = []  # stream ids in OPEN order
        self.started_at = None
        self.hello_after = None

    # ------------------------------------------------------------ QEMU
    def argv(self, incoming=None):
        # acpi=off: QEMU then lists the virtio-mmio devices on the kernel
        # command line (the guest kernel has no ACPI); rtc=on: the guest
        # reads the wall clock from the CMOS RTC at boot and on RESTORE.
        machine = "microvm,x-option-roms=off,rtc=on,acpi=off,isa-serial=%s" % ("on" if self.console else "off")
        a = [QEMU, "-M", machine, "-accel", "tcg", "-m", str(self.mem_mb), "-nodefaults",
             "-no-user-config", "-nographic", "-no-reboot", "-kernel", self.kernel,
             "-append", CMDLINE + (" console=ttyS0" if self.console else "")]
        if self.console:
            a += ["-serial", "file:" + self.console_path]
        disks = [("root", self.rootfs, True)]
        if self.code_img:
            disks.append(("code", self.code_img, True))
        if self.tmp_img:
            disks.append(("tmp", self.tmp_img, False))
        for ident, path, ro in disks:
            a += ["-drive", "id=%s,file=%s,format=raw,if=none%s" % (ident, path, ",readonly=on" if ro else ""),
                  "-device", "virtio-blk-device,drive=%s" % ident]
        a += ["-device", "virtio-serial-device",
              "-chardev", "socket,id=agent,path=%s,server=on,wait=off" % self.sock_path,
              "-device", "virtserialport,chardev=agent,name=flicker.0",
              "-device", "virtio-rng-device",
              "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
        if incoming:
            a += ["-incoming", "exec:cat " + incoming]
        return a

    def start(self, incoming=None, connect_delay=0):
        for p in (self.sock_path, self.qmp_path):
            if os.path.exists(p):
                os.unlink(p)
        self.started_at = time.monotonic()
        with open(self.qemu_log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(incoming), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, preexec_fn=_die_with_parent)
        if connect_delay:
            time.sleep(connect_delay)  # the guest boots with no host on the port
        self.sock = self._connect(self.sock_path)
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        qs = self._connect(self.qmp_path)
        self.qmp = qs.makefile("rw", encoding="utf-8", newline="\n")
        self._qmp_read()  # greeting
        self.qmp_cmd("qmp_capabilities")
        return self

    def _connect(self, path, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("QEMU exited with %s: %s" % (self.proc.returncode, self.diagnostics()))
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _qmp_read(self):
        line = self.qmp.readline()
        if not line:
            raise RuntimeError("QMP closed: " + self.diagnostics())
        return json.loads(line)

    def qmp_cmd(self, cmd, **args):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.qmp.write(json.dumps(msg) + "\n")
        self.qmp.flush()
        while True:
            r = self._qmp_read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("QMP %s: %s" % (cmd, r["error"]))
            # an event: ignore

    def snapshot(self, path, timeout=60):
        """Pauses the VM and saves its whole state to path (QMP migrate)."""
        self.qmp_cmd("stop")
        self.qmp_cmd("migrate", uri="exec:cat > " + path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.qmp_cmd("query-migrate").get("status")
            if st == "completed":
                return
            if st in ("failed", "cancelled"):
                raise RuntimeError("migration " + st)
            time.sleep(0.02)
        raise TimeoutError("migration did not complete")

    def wait_incoming(self, timeout=60):
        """After start(incoming=...): waits for the state to load, then runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.qmp_cmd("query-status")["status"]
            if st not in ("inmigrate",):
                break
            time.sleep(0.01)
        else:
            raise TimeoutError("incoming migration did not finish")
        self.qmp_cmd("cont")

    def close(self):
        for s in self.conns.values():
            s.close()
        self.conns.clear()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self.sock, self.qmp):
            if f:
                f.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def diagnostics(self):
        out = []
        for p in (self.qemu_log, self.console_path):
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out.append("--- %s\n%s" % (os.path.basename(p), f.read()[-4000:].decode("utf-8", "replace")))
        out.append("--- frames: %s" % [(NAMES.get(t, t), s, p[:80]) for t, s, p in self.frames[-20:]])
        out.append("--- log: %r" % bytes(self.log[-2000:]))
        return "\n".join(out)

    # --------------------------------------------------------- vmproto
    def send(self, ftype, stream=0, payload=b""):
        self.sock.sendall(frame(ftype, stream, payload))

    def send_start(self, argv, envp=SBX_ENV):
        self.send(START, 0, start_payload(argv, envp))

    def _on_frame(self, t, s, p):
        self.frames.append((t, s, p))
        if t == HELLO and self.hello_after is None:
            self.hello_after = time.monotonic() - self.started_at
        elif t == LOG:
            self.log += p
        elif t == OPEN:
            self.opened.append(s)
            if self.api:
                c = socket.create_connection(self.api)
                self.conns[s] = c
                self.sel.register(c, selectors.EVENT_READ, s)
        elif t == DATA:
            c = self.conns.get(s)
            if c:
                c.sendall(p)
        elif t == CLOSE:
            c = self.conns.get(s)
            if c:
                try:
                    c.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _read_port(self):
        data = self.sock.recv(1 << 16)
        if not data:
            raise EOFError("the VM's port closed: " + self.diagnostics())
        self.buf += data
        while len(self.buf) >= HDR.size:
            t, flags, res, s, n = HDR.unpack_from(self.buf)
            assert t in NAMES and flags == 0 and res == 0 and n <= MAX_PAYLOAD, \
                "bad frame header from the agent: %r" % self.buf[:HDR.size]
            if len(self.buf) < HDR.size + n:
                break
            p = self.buf[HDR.size:HDR.size + n]
            self.buf = self.buf[HDR.size + n:]
            self._on_frame(t, s, p)

    def _read_conn(self, c, sid):
        try:
            data = c.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if data:
            self.send(DATA, sid, data)
        else:
            self.sel.unregister(c)
            c.close()
            del self.conns[sid]
            self.send(CLOSE, sid)

    def pump(self, until, timeout=60, what="condition"):
        """Serves the VM until until() is true; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = until()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out waiting for %s\n%s" % (what, self.diagnostics()))
            # short: until() may wait on other threads (the fake Runtime API)
            for key, _ in self.sel.select(min(left, 0.02)):
                if key.fileobj is self.sock:
                    self._read_port()
                elif key.data in self.conns:
                    self._read_conn(key.fileobj, key.data)

    def settle(self, seconds):
        """Serves the VM for a while (frames, relayed streams)."""
        end = time.monotonic() + seconds
        try:
            self.pump(lambda: False, seconds)
        except TimeoutError:
            pass
        assert time.monotonic() >= end - 0.01

    def wait_frame(self, ftype, timeout=60, since=0):
        """Waits for a frame of type ftype at index >= since; FAULT raises."""
        def found():
            for i in range(since, len(self.frames)):
                t, s, p = self.frames[i]
                if t == FAULT and ftype != FAULT:
                    raise Fault(p.decode("utf-8", "replace") + "\n" + self.diagnostics())
                if t == ftype:
                    return (t, s, p)
            return None
        return self.pump(found, timeout, NAMES.get(ftype, ftype))

    def run_to_exit(self, argv, envp=SBX_ENV, timeout=120):
        """HELLO, START argv, then EXIT: returns (wait status, oom kills)."""
        self.wait_frame(HELLO)
        self.send_start(argv, envp)
        _, _, p = self.wait_frame(EXIT, timeout)
        return decode_exit(p)
