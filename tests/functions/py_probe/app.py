"""Security probe: tries things a sandboxed function must not be able to do
and reports, for each, whether it SUCCEEDED (succeeded == escape).
Event: {"host_addrs": [[ip, port], ...]   TCP listeners the test opened on the host,
        "flicker_port": P, "server_pid": N, "host_file": "/abs/host/path",
        "data_dir": "/abs/host/data", "secret": "...marker to look for..."}
Also reports "controls": things that must work, so a broken probe cannot
pass the battery by failing everything."""
import ctypes
import ctypes.util
import errno
import json
import os
import socket
import stat

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _err():
    e = ctypes.get_errno()
    return f"errno {e} ({errno.errorcode.get(e, '?')})"


def try_(fn):
    try:
        r = fn()
        if isinstance(r, tuple):
            return {"succeeded": bool(r[0]), "detail": str(r[1])[:300]}
        return {"succeeded": bool(r), "detail": ""}
    except Exception as e:  # noqa: BLE001 - any failure means "not succeeded"
        return {"succeeded": False, "detail": f"{type(e).__name__}: {e}"[:300]}


def read_file(path):
    with open(path, "rb") as f:
        data = f.read(4096)
    return True, f"read {len(data)} bytes"


def write_file(path):
    with open(path, "w") as f:
        f.write("pwned")
    os.unlink(path)
    return True, f"wrote {path}"


def mount_tmpfs():
    os.makedirs("/tmp/probe-mnt", exist_ok=True)
    r = libc.mount(b"none", b"/tmp/probe-mnt", b"tmpfs", 0, None)
    if r == 0:
        libc.umount2(b"/tmp/probe-mnt", 2)
        return True, "mounted tmpfs"
    return False, _err()


def remount_root_rw():
    MS_REMOUNT, MS_BIND = 32, 4096
    r = libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None)
    if r != 0:
        return False, _err()
    # The remount "worked": can we now write to / ?
    return write_file("/flicker-probe-remount")


def see_server(pid):
    # The flicker server (or any host process) visible in our /proc?
    seen = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"--listen" in cmd or b"flicker up" in cmd or b"pytest" in cmd:
            seen.append(d)
    if pid and os.path.exists(f"/proc/{pid}"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"flicker" in f.read():
                    seen.append(str(pid))
        except OSError:
            pass
    return bool(seen), f"visible: {seen}"


def count_procs():
    n = sum(1 for d in os.listdir("/proc") if d.isdigit())
    return n > 64, f"{n} processes visible"


def connect(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((addr, int(port)))
        return True, f"connected to {addr}:{port}"
    finally:
        s.close()


def resolve_dns():
    socket.setdefaulttimeout(3)
    r = socket.getaddrinfo("deb.debian.org", 80)
    return True, f"resolved {r[:1]}"


def ptrace_attach(pid):
    # PTRACE_SEIZE, not ATTACH: it never stops the tracee, so even where it
    # wrongly succeeds nothing is left stopped (the tracer's exit detaches).
    PTRACE_SEIZE = 0x4206
    r = libc.ptrace(PTRACE_SEIZE, pid, None, None)
    if r == 0:
        return True, f"seized {pid}"
    return False, _err()


def ptrace_child():
    # Tracing our own child: blocked by a seccomp deny-list of ptrace.
    pid = os.fork()
    if pid == 0:
        import time
        time.sleep(5)
        os._exit(0)
    try:
        return ptrace_attach(pid)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def setuid0():
    if os.getuid() == 0:
        return True, "already uid 0"
    os.setuid(0)
    return os.getuid() == 0, f"uid now {os.getuid()}"


def load_module():
    # finit_module(fd of /dev/null): EPERM when forbidden, ENOEXEC/EINVAL
    # would mean the capability check passed.
    fd = os.open("/proc/self/exe", os.O_RDONLY)
    try:
        r = libc.syscall(313, fd, b"", 0)  # SYS_finit_module on x86_64
        e = ctypes.get_errno()
    finally:
        os.close(fd)
    if r == 0:
        return True, "module loaded"
    return e not in (errno.EPERM, errno.ENOSYS, errno.EACCES), _err()


def mknod_dev():
    path = "/tmp/probe-null"
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    try:
        with open(path, "wb") as f:
            f.write(b"x")
        return True, "created and opened a device node"
    finally:
        os.unlink(path)


def open_dev(path):
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    return True, f"opened {path}"


def chroot_escape(host_file):
    os.makedirs("/tmp/probe-jail", exist_ok=True)
    cwd = os.open("/", os.O_RDONLY)
    os.chroot("/tmp/probe-jail")
    os.fchdir(cwd)
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    return os.path.exists(host_file), "chroot escape done; host file visible=" + str(os.path.exists(host_file))


def host_environ(secret_name):
    hits = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if secret_name.encode() in f.read():
                    hits.append(d)
        except OSError:
            continue
    return bool(hits), f"found in /proc/{hits}/environ"


def env_leak(secret_name, secret):
    keys = [k for k in os.environ if k in (secret_name, "FLICKER_ACCESS_KEY_ID")]
    vals = [k for k, v in os.environ.items() if secret and secret in v]
    return bool(keys or vals), f"keys={keys} values_in={vals}"


def write_existing(path, data):
    """Writes to an existing (kernel) file; never creates one."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def write_cgroup_root():
    found = []
    for p in ("/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/pids/cgroup.procs",
              "/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/unified/cgroup.procs"):
        try:
            write_existing(p, str(os.getpid()))
            found.append(p)
        except OSError:
            continue
    return bool(found), f"moved self via {found}"


def raise_memory_limit():
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            write_existing(p, "max" if p.endswith(".max") else "-1")
            return True, f"wrote {p}"
        except OSError:
            continue
    return False, "no writable memory limit"


def sysrq():
    write_existing("/proc/sysrq-trigger", "h")  # "help": harmless even if it gets through
    return True, "wrote /proc/sysrq-trigger"


def proc_sys_write():
    with open("/proc/sys/kernel/domainname") as f:
        current = f.read().strip()
    write_existing("/proc/sys/kernel/domainname", current)  # same value: harmless
    return True, "wrote /proc/sys/kernel/domainname"


def set_clock():
    class timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
    ts = timespec()
    libc.clock_gettime(0, ctypes.byref(ts))
    r = libc.clock_settime(0, ctypes.byref(ts))  # same time: harmless if it works
    return r == 0, _err() if r else "set CLOCK_REALTIME"


def kill_server(pid):
    if not pid:
        return False, "no pid"
    os.kill(int(pid), 0)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        cmd = b""
    return b"flicker" in cmd, f"signal 0 to {pid} allowed; cmdline={cmd[:80]!r}"


def bpf_prog():
    # BPF_PROG_LOAD with a null attr: EPERM when forbidden; EFAULT/EINVAL
    # would mean the syscall reached the verifier.
    r = libc.syscall(321, 5, None, 0)
    e = ctypes.get_errno()
    return r >= 0 or e in (errno.EFAULT, errno.EINVAL, errno.E2BIG), _err()


def unshare_net_root():
    # A new user namespace + raw socket inside the sandbox's net ns is the
    # classic privilege-escalation surface; CLONE_NEWUSER should be denied.
    CLONE_NEWUSER = 0x10000000
    r = libc.unshare(CLONE_NEWUSER)
    return r == 0, _err() if r else "unshare(CLONE_NEWUSER) worked"


def keyctl():
    # add_key into the session keyring; usually seccomp-denied.
    r = libc.syscall(248, b"user", b"probe", b"x", 1, -3)
    return r >= 0, _err() if r < 0 else "added a key"


def isolated(fn, timeout=10.0):
    import select
    import signal
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = json.dumps(try_(fn)).encode()
        except BaseException as e:  # noqa: BLE001
            out = json.dumps({"succeeded": False, "detail": repr(e)}).encode()
        os.write(w, out)
        os._exit(0)
    os.close(w)
    data, deadline = b"", timeout
    import time
    end = time.time() + deadline
    while True:
        left = end - time.time()
        if left <= 0:
            break
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    os.waitpid(pid, 0)
    if not data:
        return {"succeeded": False, "detail": f"no report within {timeout}s"}
    return json.loads(data)


def handler(event, context):
    ev = event or {}
    host_addrs = ev.get("host_addrs", [])
    secret_name = "FLICKER_SECRET_ACCESS_KEY"
    checks = {
        "read_etc_shadow": lambda: read_file("/etc/shadow"),
        "write_var_task": lambda: write_file("/var/task/probe-written"),
        "write_root": lambda: write_file("/probe-written"),
        "write_usr": lambda: write_file("/usr/probe-written"),
        "write_etc": lambda: write_file("/etc/probe-written"),
        "write_var_runtime": lambda: write_file("/var/runtime/probe-written"),
        "mount_tmpfs": mount_tmpfs,
        "remount_root_rw": remount_root_rw,
        "see_host_processes": lambda: see_server(ev.get("server_pid")),
        "see_many_processes": count_procs,
        "signal_server": lambda: kill_server(ev.get("server_pid")),
        "connect_flicker_port": lambda: connect("127.0.0.1", ev.get("flicker_port", 9000)),
        "dns_resolve": resolve_dns,
        "ptrace_pid1": lambda: ptrace_attach(1),
        "ptrace_child": ptrace_child,
        "setuid_0": setuid0,
        "load_kernel_module": load_module,
        "mknod_device": mknod_dev,
        "open_dev_mem": lambda: open_dev("/dev/mem"),
        "open_dev_kvm": lambda: open_dev("/dev/kvm"),
        "chroot_escape": lambda: chroot_escape(ev.get("host_file", "/nonexistent")),
        "read_host_file": lambda: read_file(ev.get("host_file", "/nonexistent")),
        "read_data_dir": lambda: (os.path.exists(ev.get("data_dir", "/nonexistent")),
                                  "data dir visible"),
        "host_environ": lambda: host_environ(secret_name),
        "env_leak": lambda: env_leak(secret_name, ev.get("secret")),
        "cgroup_escape": write_cgroup_root,
        "raise_memory_limit": raise_memory_limit,
        "sysrq_trigger": sysrq,
        "proc_sys_write": proc_sys_write,
        "set_clock": set_clock,
        "bpf_prog_load": bpf_prog,
        "unshare_user_ns": unshare_net_root,
        "keyctl_add_key": keyctl,
    }
    for i, (addr, port) in enumerate(host_addrs):
        checks[f"connect_host_{i}"] = (lambda a=addr, p=port: connect(a, p))
    # Each check runs in its own child process with a deadline, so side
    # effects (chroot, unshare, cgroup moves) and hangs stay contained.
    report = {name: isolated(fn) for name, fn in checks.items()}

    controls = {
        "write_tmp": try_(lambda: write_file("/tmp/probe-ok")),
        "read_var_task": try_(lambda: read_file("/var/task/app.py")),
        "read_usr": try_(lambda: read_file("/usr/bin/env")),
        "loopback_listen": try_(lambda: (socket.socket().bind(("127.0.0.1", 0)) is None, "bound")),
    }
    return {"checks": report, "controls": controls, "uid": os.getuid(), "gid": os.getgid()}
