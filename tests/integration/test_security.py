"""The sandbox security battery: the probe function tries each forbidden
action; every one is its own test and must have failed.  Control checks
(writing /tmp, reading /var/task) must succeed, so a probe that fails at
everything cannot pass the battery."""
import json
import os
import socket
import threading

import pytest

from harness import ISOLATION, SECRET_KEY, SLOW, create_function, do_invoke, unique_name

FORBIDDEN = [
    "read_etc_shadow", "write_var_task", "write_root", "write_usr", "write_etc",
    "write_var_runtime", "mount_tmpfs", "remount_root_rw", "see_host_processes",
    "see_many_processes", "signal_server", "connect_flicker_port", "dns_resolve",
    "ptrace_pid1", "ptrace_child", "setuid_0", "load_kernel_module", "mknod_device",
    "open_dev_mem", "open_dev_kvm", "chroot_escape", "read_host_file", "read_data_dir",
    "host_environ", "env_leak", "cgroup_escape", "raise_memory_limit", "sysrq_trigger",
    "proc_sys_write", "set_clock", "bpf_prog_load", "unshare_user_ns", "keyctl_add_key",
    "connect_host_0", "connect_host_1",
]


def host_ip():
    """This host's primary non-loopback address (no packet is sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


class Listener:
    """A TCP listener on the host that records whether anyone connected."""

    def __init__(self, addr):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.connected = False
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                self.connected = True
                c.close()
            except OSError:
                continue

    def close(self):
        self.stop = True
        self.t.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def probe(flicker, tmp_path_factory):
    """Runs the probe once for the module and returns its report."""
    client = flicker.client()
    name = unique_name("probe")
    host_dir = tmp_path_factory.mktemp("probe-host")
    host_file = host_dir / "host-only-secret.txt"
    host_file.write_text("host-only")
    ip = host_ip() or "127.0.0.1"
    listeners = [Listener("0.0.0.0"), Listener("127.0.0.1")]
    event = {
        "host_addrs": [[ip, listeners[0].port], ["127.0.0.1", listeners[1].port]],
        "flicker_port": flicker.port,
        "server_pid": flicker.proc.pid,
        "host_file": str(host_file),
        "data_dir": str(flicker.data.resolve()),
        "secret": SECRET_KEY,
    }
    create_function(client, name, "py_probe", Timeout=60 * SLOW, MemorySize=256)
    try:
        r = do_invoke(client, name, event)
        assert r.function_error is None, f"probe failed to run: {r.payload[:2000]!r}"
        report = r.json
        report["listener_connected"] = [x.connected for x in listeners]
        print(json.dumps(report, indent=1))
        yield report
    finally:
        for x in listeners:
            x.close()
        try:
            client.delete_function(FunctionName=name)
        except Exception:
            pass


@pytest.mark.parametrize("check", ["write_tmp", "read_var_task", "read_usr", "loopback_listen"])
def test_probe_controls(probe, check):
    assert probe["controls"][check]["succeeded"], probe["controls"][check]


@pytest.mark.parametrize("check", FORBIDDEN)
def test_forbidden(probe, check):
    if ISOLATION == "microvm" and check == "ptrace_child":
        pytest.skip("in a microVM, tracing the function's own child is guest-internal: the VM "
                    "is the boundary (docs/microvm.md); the sandbox's seccomp deny-list is not "
                    "applied inside the guest")
    assert check in probe["checks"], f"probe did not run {check}"
    res = probe["checks"][check]
    assert not res["succeeded"], f"sandbox allowed {check}: {res['detail']}"


def test_not_root(probe):
    # Lambda runs functions as an unprivileged user (sbx_user1051, uid 993).
    assert probe["uid"] != 0, "function runs as uid 0"


def test_no_host_connection_seen(probe):
    assert probe["listener_connected"] == [False, False], "a host listener got a connection"


def test_host_unchanged(flicker):
    # Nothing the probe tried leaked to the host's view.
    assert not os.path.exists("/probe-written")
    assert not os.path.exists("/usr/probe-written")
    assert not os.path.exists("/etc/probe-written")
    assert flicker.health() == 200
