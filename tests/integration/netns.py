"""netns.py - "hosts" made of network namespaces on this machine, for the
multi-host integration tests (tests/integration/test_multihost.py).

  Net(tag[, subnet])  a bridge in the root namespace (10.77.0.254/24 on it,
                      so the test process reaches every host) and, per host,
                      a namespace with a veth pair (host side eth0 =
                      10.77.0.N/24, lo up; root side enslaved to the bridge);
                      another subnet ("10.78.0") lets two suites run at once.
  Net.spawn(n, name, argv, log)
                      starts argv inside host n's namespace with
                      `nsenter --net=` (only the network namespace changes:
                      the mount namespace, /sys/fs/cgroup and the shared data
                      directory stay those of this machine); returns a Proc.
  Net.cut(n) / Net.reconnect(n)
                      brings host n's bridge port down / up (a partition:
                      the host keeps its address, its packets go nowhere).
  Net.rpc_call_in(n, addr, method)
                      rpc_call made from inside host n's namespace (so a
                      cut-off host's own roles can still be asked).
  Net.teardown()      kills every process it started (SIGTERM, then SIGKILL,
                      by pid), deletes the namespaces, veths and the bridge.
  etcd_member_argv(...)
                      the etcd command line of one member of a 3-member
                      cluster (the logic of scripts/etcd-cluster.sh, per host).
  rpc_call(addr, method, params)
                      one request over flicker's internal RPC (docs/rpc.md)
  finish(net, roles, order, cg_before, failed, what)
                      a test's teardown: stops the roles, checks exits,
                      sanitizer reports and leftover sandboxes, tears down

Everything is named with the given tag, so concurrent runs do not collide,
and nothing is touched that this module did not create.
"""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

SUBNET = "10.77.0"
ROOT_IP = f"{SUBNET}.254"


def sh(*argv, check=True):
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def unavailable_reason(subnet=SUBNET):
    """Why hosts cannot be built here (None if they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter", "etcd"):
        if shutil.which(tool) is None:
            return f"no {tool} binary"
    # The subnet must be free (another run, or a real network).
    p = sh("ip", "-o", "addr", "show", check=False)
    if f" {subnet}." in p.stdout:
        return f"{subnet}.0/24 is already configured on this machine: {p.stdout.strip()[:200]}"
    probe = f"fkprobe{os.getpid() % 100000}"
    p = sh("ip", "netns", "add", probe, check=False)
    if p.returncode != 0:
        return f"ip netns add fails: {p.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


class Proc:
    def __init__(self, host, name, popen, log):
        self.host, self.name, self.popen, self.log = host, name, popen, log

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def log_text(self):
        try:
            return open(self.log, errors="replace").read()
        except OSError:
            return ""

    def signal(self, sig):
        if self.alive():
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout=20):
        """SIGTERM, then SIGKILL; returns the exit status."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        return self.popen.returncode

    def kill9(self):
        self.signal(signal.SIGKILL)
        self.popen.wait(10)
        return self.popen.returncode


class Net:
    def __init__(self, tag, hosts=3, subnet=SUBNET):
        self.tag = tag
        self.subnet = subnet
        self.hosts = hosts
        self.bridge = f"fk{tag}br"
        self.procs = []
        self.created_ns = []
        self.created_links = []
        self.bridge_created = False

    def ns(self, n):
        return f"fk{self.tag}-h{n}"

    def root_veth(self, n):
        return f"fk{self.tag}r{n}"

    def ip(self, n):
        return f"{self.subnet}.{n}"

    def setup(self):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self.bridge_created = True
        sh("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for n in range(1, self.hosts + 1):
            ns, rv, pv = self.ns(n), self.root_veth(n), f"fk{self.tag}p{n}"
            sh("ip", "netns", "add", ns)
            self.created_ns.append(ns)
            sh("ip", "link", "add", rv, "type", "veth", "peer", "name", pv)
            self.created_links.append(rv)
            sh("ip", "link", "set", pv, "netns", ns)
            sh("ip", "link", "set", rv, "master", self.bridge)
            sh("ip", "link", "set", rv, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", pv, "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(n)}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        # (no ping here: reachability is checked by the etcd cluster
        # becoming healthy and the root namespace reaching the frontend)
        return self

    def spawn(self, n, name, argv, log, env=None):
        logf = open(log, "wb")
        try:
            p = subprocess.Popen(["nsenter", f"--net=/run/netns/{self.ns(n)}", "--", *map(str, argv)],
                                 stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        finally:
            logf.close()
        proc = Proc(n, name, p, log)
        self.procs.append(proc)
        return proc

    def cut(self, n):
        sh("ip", "link", "set", self.root_veth(n), "down")

    def reconnect(self, n):
        sh("ip", "link", "set", self.root_veth(n), "up")

    def rpc_call_in(self, n, addr, method, params=None, timeout=3.0):
        """rpc_call(addr, method, params) run by a Python process inside host
        n's network namespace; returns the response header or raises OSError."""
        code = ("import json, sys; sys.path.insert(0, %r); import netns; "
                "print(json.dumps(netns.rpc_call(%r, %r, %r, %r)))"
                % (os.path.dirname(os.path.abspath(__file__)), addr, method, params, timeout))
        try:
            p = subprocess.run(["nsenter", f"--net=/run/netns/{self.ns(n)}", "--", sys.executable,
                                "-c", code], capture_output=True, text=True, timeout=timeout + 20)
        except subprocess.TimeoutExpired as e:
            raise OSError(f"rpc_call_in host {n}: {e}") from e
        if p.returncode != 0:
            raise OSError(f"rpc_call_in host {n}: {p.stderr.strip()[-300:]}")
        return json.loads(p.stdout)

    def teardown(self):
        errors = []
        # flicker roles first (they may talk to etcd while stopping), etcd last.
        for p in sorted(self.procs, key=lambda p: p.name.startswith("etcd")):
            try:
                p.stop()
            except Exception as e:
                errors.append(f"{p.name}: {e}")
        for link in self.created_links:
            sh("ip", "link", "del", link, check=False)
        for ns in self.created_ns:
            p = sh("ip", "netns", "del", ns, check=False)
            if p.returncode != 0:
                errors.append(f"netns del {ns}: {p.stderr.strip()}")
        if self.bridge_created:
            p = sh("ip", "link", "del", self.bridge, check=False)
            if p.returncode != 0:
                errors.append(f"bridge del {self.bridge}: {p.stderr.strip()}")
        return errors


def etcd_member_argv(n, ips, datadir, token):
    """Member n (1-based) of a cluster whose members are at ips; as in
    scripts/etcd-cluster.sh, but on each host's own address."""
    ip = ips[n - 1]
    cluster = ",".join(f"m{i}=http://{a}:2380" for i, a in enumerate(ips, 1))
    return ["etcd", "--name", f"m{n}", "--data-dir", str(datadir),
            "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
            "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", token]


def etcd_healthy(endpoints):
    p = subprocess.run(["etcdctl", f"--endpoints={endpoints}", "--dial-timeout=1s",
                        "--command-timeout=2s", "endpoint", "health"],
                       capture_output=True, text=True)
    return p.returncode == 0


def _connect(addr, timeout):
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(addr[5:])
        except OSError:
            s.close()
            raise
        return s
    assert addr.startswith("tcp:"), addr
    host, port = addr[4:].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def rpc_call(addr, method, params=None, timeout=3.0):
    """One request over flicker's RPC (length-prefixed JSON header + body) to
    tcp:HOST:PORT or unix:PATH; returns the response header (dict) or raises
    OSError."""
    hdr = dict(params or {})
    hdr.update({"id": 1, "m": method})
    h = json.dumps(hdr).encode()
    with _connect(addr, timeout) as s:
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


def finish(net, roles, order, cg_before, failed, what, timeout=30):
    """Teardown of a multi-host test: stops the flicker roles named in
    order (each must exit 0 on SIGTERM), reads every role's log for
    sanitizer reports, tears the network down (etcd last) and looks for
    sandbox processes left behind.  Problems fail the test, or are printed
    when it failed already (failed: its logs' tails are printed first)."""
    import pytest
    from harness import SANITIZER_PATTERNS, pid_alive, sandbox_cgroup_dirs, sandbox_pids
    if failed:
        for name, p in roles.items():
            print(f"----- {name} log tail -----\n" + "\n".join(p.log_text().splitlines()[-25:]))
    problems = []
    exit_codes = {}
    for name in order:
        p = roles.get(name)
        if p is not None and p.alive():
            exit_codes[name] = p.stop(timeout)
    for name, p in roles.items():
        hits = [l for l in p.log_text().splitlines() if any(x in l for x in SANITIZER_PATTERNS)]
        if hits:
            problems.append(f"{name}: sanitizer reports: {hits[:5]}")
    bad = {k: v for k, v in exit_codes.items() if v != 0}
    if bad:
        problems.append(f"roles that did not exit 0 on SIGTERM: {bad}")
    problems += net.teardown()
    left_cg = sorted(sandbox_cgroup_dirs() - cg_before)
    left_pids = [p for p in sandbox_pids(set(left_cg)) if pid_alive(p)]
    if left_pids:
        problems.append(f"sandbox processes left: {left_pids} in {left_cg}")
    if problems and not failed:
        pytest.fail(f"{what} teardown problems:\n" + "\n".join(problems))
    elif problems:
        print("teardown problems:\n" + "\n".join(problems))
