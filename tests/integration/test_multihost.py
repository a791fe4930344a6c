"""Three "hosts" made of network namespaces (tests/integration/netns.py):
each runs an etcd member, an assignment replica (etcd journal) and a
worker; host 1 also runs placement and the frontend.  The test process
reaches the frontend at 10.77.0.1:9000 over the bridge.

  a. invokes work; concurrent invokes spread environments over workers in
     both zones;
  b. stop a host (kill -9 everything on host 3): invokes keep succeeding,
     placement marks w-3 lost;
  c. cut a host off (its bridge port down): the assignment leader there
     steps down by its own lease clock (its asg.status says follower about
     a lease later) and is fenced (it cannot append), a new one is elected
     on the other side, invokes continue; once reconnected it follows the
     new leader.

The code directory is read by workers from the shared data directory path
(docs/distributed.md, "not done yet"), so all hosts share one --data here.
"""
import http.client
import json
import signal
import threading
import time
import uuid

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

import netns
from harness import (ACCESS_KEY, BINARY, REGION, SECRET_KEY, SLOW, Server, create_function,
                     do_invoke, sandbox_cgroup_dirs)

FE_PORT = 9000
ZONES = {1: "zone-a", 2: "zone-b", 3: "zone-a"}


def asg_addr(n):
    return f"tcp:10.77.0.{n}:7200"


class Frontend(Server):
    """Client side of the frontend on host 1 (the process is a netns.Proc)."""

    @property
    def endpoint(self):
        return f"http://10.77.0.1:{FE_PORT}"

    def raw(self, method, path, body=b"", headers=None, query=None, sign=True, timeout=10, **kw):
        url = self.endpoint + path
        hdrs = dict(headers or {})
        if sign:
            req = AWSRequest(method=method, url=url, data=body, headers=hdrs)
            SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "lambda", REGION).add_auth(req)
            hdrs = dict(req.headers.items())
        conn = http.client.HTTPConnection("10.77.0.1", FE_PORT, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def status(self):
        st, _, body = self.raw("GET", "/flicker/status")
        assert st == 200, body
        return json.loads(body)


class Cluster:
    def __init__(self, net, workdir, data, endpoints, fe):
        self.net, self.workdir, self.data, self.endpoints, self.fe = net, workdir, data, endpoints, fe
        self.roles = {}          # name -> netns.Proc
        self.killed = set()      # names the test killed on purpose
        self.env = None

    def start_role(self, n, name, argv, env=None):
        env = env or self.env
        p = self.net.spawn(n, name, argv, self.workdir / f"{name}.{len(self.roles)}.log", env=env)
        self.roles[name] = p
        return p

    def replica_status(self, n, timeout=2.0):
        try:
            return netns.rpc_call(asg_addr(n), "asg.status", timeout=timeout)
        except (OSError, ValueError):
            return None

    def move_leader_to(self, n, attempts=8):
        """Makes asg-n the assignment leader: kill -9 whichever replica
        leads, wait for another one to win, start the killed one again (as
        a follower: a replica restarted at its old address never resumes
        the dead process's term, it could only win a new election; waiting
        for another leader first keeps it from winning this one); returns
        (n, term) or None."""
        for _ in range(attempts):
            lead = wait_for(self.leader, 30 * SLOW, "an assignment leader")
            if lead[0] == n:
                return lead
            name = f"asg-{lead[0]}"
            p = self.roles[name]
            p.kill9()
            wait_for(lambda: (lambda l: l if l and l[0] != lead[0] else None)(self.leader()),
                     30 * SLOW, "a new leader")
            self.start_role(p.host, name, p.popen.args[p.popen.args.index("--") + 1:])
            wait_for(lambda: (self.replica_status(lead[0]) or {}).get("role") == "follower",
                     30 * SLOW, f"{name} back as follower")
        return None

    def leader(self):
        """(host number, term) of the replica that says it is leader."""
        for n in (1, 2, 3):
            st = self.replica_status(n)
            if st and st.get("role") == "leader":
                return n, st.get("term")
        return None


def wait_for(pred, timeout, what, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
            last = v
        except Exception as e:  # the service may be failing over
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture
def cluster(tmp_path, request):
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(f"multi-host tests need network namespaces: {reason}")
    tag = uuid.uuid4().hex[:4]
    net = netns.Net(tag)
    cg_before = sandbox_cgroup_dirs()
    data = tmp_path / "data"
    data.mkdir()
    ips = [net.ip(n) for n in (1, 2, 3)]
    endpoints = ",".join(f"http://{ip}:2379" for ip in ips)
    fe = Frontend(tmp_path / "fe-client", port=FE_PORT, data=data)
    c = Cluster(net, tmp_path, data, endpoints, fe)
    env = dict(__import__("os").environ)
    env.update({"FLICKER_ACCESS_KEY_ID": ACCESS_KEY, "FLICKER_SECRET_ACCESS_KEY": SECRET_KEY,
                "ASAN_OPTIONS": env.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")})
    c.env = env
    try:
        net.setup()
        t0 = time.time()
        for n in (1, 2, 3):
            c.start_role(n, f"etcd-{n}", netns.etcd_member_argv(
                n, ips, tmp_path / f"etcd-{n}.data", f"flicker-mh-{tag}"))
        wait_for(lambda: netns.etcd_healthy(endpoints), 60 * SLOW, "etcd cluster healthy")
        journal = f"etcd:{endpoints};prefix=/flicker-test-{tag}"
        pl = "tcp:10.77.0.1:7100"
        c.start_role(1, "placement", [BINARY, "serve", "placement", "--listen", pl,
                                      "--provider", "none", "--heartbeat-timeout-ms", "3000"], env)
        for n in (1, 2, 3):
            c.start_role(n, f"asg-{n}", [BINARY, "serve", "assignment", "--listen", asg_addr(n),
                                         "--id", f"asg-{n}", "--journal", journal,
                                         "--placement", pl, "--keep-alive", "60"], env)
        for n in (1, 2, 3):
            c.start_role(n, f"w-{n}", [BINARY, "serve", "worker", "--listen", f"tcp:10.77.0.{n}:7300",
                                       "--id", f"w-{n}", "--zone", ZONES[n], "--placement", pl,
                                       "--data", data], env)
        c.start_role(1, "frontend", [BINARY, "serve", "frontend", "--listen", f"10.77.0.1:{FE_PORT}",
                                     "--data", data, "--assignment",
                                     ",".join(asg_addr(n) for n in (1, 2, 3)),
                                     "--placement", pl], env)

        def ready():
            for name, p in c.roles.items():
                if not p.alive():
                    raise RuntimeError(f"{name} exited {p.popen.returncode}:\n{p.log_text()[-2000:]}")
            st = fe.status()
            workers = st.get("placement", {}).get("workers", [])
            # (the leader asked directly: the frontend's status shows the
            # replica it believes is leader, which may be a follower until
            # an invoke meets NotLeader)
            return (c.leader() is not None
                    and sorted(w["id"] for w in workers if w["state"] == "active") == ["w-1", "w-2", "w-3"])
        try:
            wait_for(ready, 90 * SLOW, "frontend, leader and 3 active workers")
        except AssertionError:
            raise
        print(f"\ncluster up in {time.time() - t0:.1f} s (tag {tag})")
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        # A worker killed with -9 leaves its sandboxes: a new worker process
        # with the same data directory removes them (docs/distributed.md).
        for name in sorted(c.killed):
            if name.startswith("w-"):
                n = int(name[2:])
                p = c.start_role(n, f"{name}-cleanup", [BINARY, "serve", "worker", "--listen",
                                                        f"tcp:10.77.0.{n}:7301", "--id", f"{name}-cleanup",
                                                        "--zone", ZONES[n], "--data", data], env)
                time.sleep(3 * SLOW)
        netns.finish(net, c.roles, ["frontend", "w-1", "w-2", "w-3", "w-3-cleanup", "w-2-cleanup",
                                    "asg-1", "asg-2", "asg-3", "placement"],
                     cg_before, failed, "multi-host", 30 * SLOW)


def ok_invoke(client, name, payload=None):
    r = do_invoke(client, name, payload or {})
    return r if r.status == 200 and r.function_error is None else None


def deploy(c, prefix):
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    create_function(c.fe.client(), name, "py_echo", Timeout=60 * SLOW)
    return name


def env_workers(c, name):
    """worker id -> number of environments of function name, from the
    leader's table (asg.status asked of the leader itself: the frontend's
    /flicker/status shows the replica it believes is leader, which can be a
    follower or a dead replica's last answer)."""
    out = {}
    leader = c.leader()
    if leader is None:
        return out
    for e in (c.replica_status(leader[0]) or {}).get("table", {}).get("envs", []):
        # (keys as asg_table.c writes them: env_id, worker_id, function)
        if e.get("function") == name or str(e.get("function", "")).split(":")[-1] == name \
                or name in str(e.get("function", "")):
            out[e["worker_id"]] = out.get(e["worker_id"], 0) + 1
    return out


def concurrent_invokes(c, name, n, seconds):
    results = [None] * n

    def run(i):
        try:
            results[i] = do_invoke(c.fe.new_client(), name, {"sleep": seconds, "i": i})
        except Exception as e:
            results[i] = e
    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180 * SLOW)
    return results


def test_invoke_across_hosts(cluster):
    c = cluster
    name = deploy(c, "mh-invoke")
    r = do_invoke(c.fe.client(), name, {"n": 1})
    assert r.status == 200 and r.function_error is None and r.json["event"] == {"n": 1}, r
    r2 = do_invoke(c.fe.client(), name, {"n": 2})
    assert r2.json["env_id"] == r.json["env_id"], "second invoke was not warm"
    results = concurrent_invokes(c, name, 6, 3)
    for r in results:
        assert not isinstance(r, Exception) and r.status == 200 and r.function_error is None, r
    envs = {r.json["env_id"] for r in results}
    per_worker = wait_for(lambda: env_workers(c, name), 10 * SLOW, "environments in the table")
    print(f"6 concurrent invokes ran in {len(envs)} environments; per worker {per_worker}")
    assert len(envs) >= 2, "concurrent invokes shared one environment"
    assert sum(per_worker.values()) >= len(envs)


def placement_counts(c, name):
    """worker id -> environments of function name, as placement counts them
    for zone spread (placement.status `functions`, through the frontend,
    which refreshes it every second)."""
    return {w["id"]: w.get("functions", {}).get(name, 0)
            for w in c.fe.status()["placement"]["workers"] if w.get("functions", {}).get(name)}


def test_zone_spread(cluster):
    """Concurrent cold starts of one function land in both zones: each
    placement.pick reserves room for its environment at once (so the next
    pick sees it), and the workers' heartbeats list what they run, which is
    what placement counts from then on (docs/placement.md)."""
    c = cluster
    name = deploy(c, "mh-spread")
    results = concurrent_invokes(c, name, 6, 3)
    for r in results:
        assert not isinstance(r, Exception) and r.status == 200 and r.function_error is None, r
    per_worker = wait_for(lambda: env_workers(c, name), 10 * SLOW, "environments in the table")
    zones = {ZONES[int(w.split("-")[1])] for w in per_worker}
    # What zone spread is computed from: placement's count of the function's
    # environments per worker; it matches the leader's table (heartbeats
    # report every second, the frontend refreshes its copy every second).
    counted = wait_for(lambda: (lambda pc: pc if pc == env_workers(c, name) else None)(
        placement_counts(c, name)), 10 * SLOW, "placement's counts to match the table")
    print(f"environments per worker: {per_worker}; zones {sorted(zones)}; placement counts {counted}")
    assert zones == {"zone-a", "zone-b"}, f"environments not spread over both zones: {per_worker}"
    assert sum(per_worker.values()) >= 2


def test_stop_a_host(cluster):
    c = cluster
    name = deploy(c, "mh-stop")
    client = c.fe.client()
    assert ok_invoke(client, name)
    # Host 3 holds the assignment leadership, so stopping it forces a
    # failover of the table too.
    if c.move_leader_to(3) is None:
        pytest.fail("could not make asg-3 the leader by restarting the others")
    assert ok_invoke(client, name)
    # Several environments (ideally some on w-3, but see test_zone_spread).
    concurrent_invokes(c, name, 4, 1)
    print(f"before: environments per worker {env_workers(c, name)}, leader {c.leader()}")
    t0 = time.time()
    for role in ("etcd-3", "asg-3", "w-3"):
        c.roles[role].kill9()
        c.killed.add(role)
    # Every invoke must eventually succeed; count the failures on the way.
    failures = []

    def attempt():
        try:
            r = ok_invoke(client, name, {"after": "kill"})
            if r is None:
                failures.append("function error")
            return r
        except Exception as e:
            failures.append(type(e).__name__)
            return None
    wait_for(attempt, 60 * SLOW, "an invoke after host 3 was stopped")
    t_first = time.time() - t0
    # Ten in a row now succeed (environments on w-3 are replaced transparently).
    for i in range(10):
        wait_for(attempt, 30 * SLOW, f"invoke {i} after the failover")
    lost = wait_for(lambda: next((w for w in c.fe.status()["placement"]["workers"]
                                  if w["id"] == "w-3" and w["state"] == "lost"), None),
                    60 * SLOW, "placement marks w-3 lost")
    # Placement's counts survive the loss of a worker and a new assignment
    # leader: they come from the surviving workers' heartbeats, so they
    # match the new leader's table.
    counted = wait_for(lambda: (lambda pc: pc if pc and pc == env_workers(c, name) else None)(
        placement_counts(c, name)), 30 * SLOW, "placement's counts to match the new leader's table")
    assert "w-3" not in counted
    t_lost = time.time() - t0
    print(f"host 3 stopped: first invoke ok after {t_first:.2f} s ({len(failures)} failed attempts:"
          f" {sorted(set(failures))}); w-3 lost after {t_lost:.2f} s; leader now {c.leader()}")
    assert lost["state"] == "lost"
    # Concurrent load still spreads over the survivors.
    results = concurrent_invokes(c, name, 3, 1)
    for r in results:
        assert not isinstance(r, Exception) and r.status == 200 and r.function_error is None, r
    assert "w-3" not in wait_for(lambda: env_workers(c, name) or None, 30 * SLOW, "table"), \
        "the leader still lists environments on the stopped worker"


def test_cut_a_host_off(cluster):
    c = cluster
    name = deploy(c, "mh-cut")
    client = c.fe.client()
    assert ok_invoke(client, name)
    leader = c.move_leader_to(2)
    if leader is None:
        pytest.fail("could not make asg-2 the leader by restarting the others")
    cut, term = leader
    print(f"cutting host {cut} (assignment leader, term {term})")
    log_mark = len(c.roles[f"asg-{cut}"].log_text())
    t0 = time.time()
    c.net.cut(cut)
    try:
        # Its own status says follower once its lease ran out by its own
        # clock (lease 1 s), not when its blocked etcd calls give up (15 s).
        # Asked from inside the cut-off host.
        def cut_off_status():
            try:
                st = c.net.rpc_call_in(cut, asg_addr(cut), "asg.status", timeout=2)
            except OSError:
                return None
            return st if st.get("role") == "follower" else None
        st = wait_for(cut_off_status, 30 * SLOW, f"asg-{cut} to report follower while cut off")
        t_follower = time.time() - t0
        print(f"cut-off leader asg-{cut} reports follower after {t_follower:.2f} s (term {st.get('term')})")
        assert t_follower < 6 * SLOW, f"asg-{cut} still said leader {t_follower:.1f} s after the cut"
        failures = []

        def attempt():
            try:
                return ok_invoke(client, name, {"after": "cut"})
            except Exception as e:
                failures.append(type(e).__name__)
                return None
        wait_for(attempt, 90 * SLOW, f"an invoke after host {cut} was cut off")
        t_first = time.time() - t0
        new = wait_for(lambda: (lambda l: l if l and l[0] != cut else None)(c.leader()),
                       60 * SLOW, "a new leader on the connected side")
        t_leader = time.time() - t0
        assert new[1] > term, f"new leader's term {new[1]} not above the old {term}"
        # Fencing: the cut-off replica loses leadership on its own (it can
        # neither renew its lease nor append).
        deposed = wait_for(lambda: (lambda t: t if ("deposed" in t or "no longer leader" in t)
                                    else None)(c.roles[f"asg-{cut}"].log_text()[log_mark:]),
                           60 * SLOW, f"asg-{cut} deposed")
        t_deposed = time.time() - t0
        for i in range(5):
            wait_for(attempt, 30 * SLOW, f"invoke {i} while host {cut} is cut off")
        print(f"host {cut} cut off: first invoke ok after {t_first:.2f} s ({len(failures)} failed"
              f" attempts: {sorted(set(failures))}); new leader asg-{new[0]} term {new[1]} seen"
              f" after {t_leader:.2f} s; old leader deposed after {t_deposed:.2f} s")
        print("cut-off replica log:\n  " + "\n  ".join(
            l for l in deposed.splitlines() if "[assignment]" in l)[:1500])
    finally:
        c.net.reconnect(cut)
    t1 = time.time()
    # It rejoins as a follower of whoever leads now (normally new[0]; etcd
    # may hold one more election when the cut-off member rejoins), reporting
    # that leader's address and term.
    def follows_leader():
        lead, st = c.leader(), c.replica_status(cut)
        if lead and st and st.get("role") == "follower" and st.get("leader") == asg_addr(lead[0]) \
                and st.get("term") == lead[1]:
            return st, lead
        return None
    st, lead = wait_for(follows_leader, 60 * SLOW, f"asg-{cut} following the leader")
    print(f"reconnected: asg-{cut} follows {st.get('leader')} (term {st.get('term')}) after"
          f" {time.time() - t1:.2f} s")
    assert lead[1] >= new[1] > term
    # The worker on the reconnected host is active again, and the service works.
    wait_for(lambda: next((w for w in c.fe.status()["placement"]["workers"]
                           if w["id"] == f"w-{cut}" and w["state"] == "active"), None),
             60 * SLOW, f"w-{cut} active again")
    results = concurrent_invokes(c, name, 4, 1)
    for r in results:
        assert not isinstance(r, Exception) and r.status == 200 and r.function_error is None, r
