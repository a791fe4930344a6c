"""chaos/multihost.py - the chaos scenarios that need several hosts: three
"hosts" made of network namespaces (tests/integration/netns.py), each with
an etcd member, an assignment replica (etcd journal) and a worker; host 1
also runs placement and the frontend (10.78.0.1:9000).  As in
tests/integration/test_multihost.py, all hosts share one data directory
(code is read from the shared path, docs/distributed.md).

  host         the assignment leadership is moved to host 3, then host 3
               dies as a machine does: its link goes down and every process
               on it (etcd member, assignment replica, worker and the
               worker's sandboxes) is killed with SIGKILL
  etcd-member  the etcd member that is the raft leader is killed with
               SIGKILL and stays down

The journal keeps its whole log (--snapshot-every is set beyond the run),
so every hand-out can be read back from etcd afterwards."""
import json
import os
import signal
import sys
import time
import subprocess
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import netns  # noqa: E402
from lib import (ACCESS_KEY, SECRET_KEY, Api, Load, Monitor, cgroup_instances, deploy_pair,  # noqa: E402
                 etcd_journal_records, instance_of, log, now, pid_alive, placement_check,
                 queued_event_ids, rpc_ok, sandboxes_of, sanitizer_reports, wait_until)
from scenario import (Result, analyse, double_handing, drain_events, finish, observe)  # noqa: E402

FE_PORT = 9000
ZONES = {1: "zone-a", 2: "zone-b", 3: "zone-a"}
# Not the integration tests' 10.77.0.0/24: both may run on one machine.
SUBNET = "10.78.0"
PLACEMENT = f"tcp:{SUBNET}.1:7100"


def asg_addr(n):
    return f"tcp:{SUBNET}.{n}:7200"


def worker_addr(n):
    return f"tcp:{SUBNET}.{n}:7300"


class Cluster:
    def __init__(self, build, workdir):
        self.build = Path(build)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tag = uuid.uuid4().hex[:4]
        self.net = netns.Net(self.tag, subnet=SUBNET)
        self.data = self.workdir / "data"
        self.ips = [self.net.ip(n) for n in (1, 2, 3)]
        self.endpoints = ",".join(f"http://{ip}:2379" for ip in self.ips)
        self.prefix = f"/flicker-chaos-{self.tag}"
        self.roles = {}            # name -> netns.Proc
        self.down = set()          # roles killed on purpose
        self.cut_hosts = set()
        self.worker_instances = set()
        self.argv = {}
        self.env = dict(os.environ)
        self.env.update({"FLICKER_ACCESS_KEY_ID": ACCESS_KEY, "FLICKER_SECRET_ACCESS_KEY": SECRET_KEY})
        self.host, self.port = f"{SUBNET}.1", FE_PORT

    def flicker(self, *args):
        return [str(self.build / "flicker"), *map(str, args)]

    def start_role(self, n, name, argv):
        self.argv[name] = (n, argv)
        p = self.net.spawn(n, name, argv, self.workdir / f"{name}.{len([k for k in self.roles if k == name])}.log",
                           env=self.env)
        self.roles[name] = p
        self.down.discard(name)
        return p

    def restart_role(self, name):
        n, argv = self.argv[name]
        return self.start_role(n, name, argv)

    def start(self):
        self.data.mkdir(parents=True, exist_ok=True)
        self.net.setup()
        for n in (1, 2, 3):
            self.start_role(n, f"etcd-{n}", netns.etcd_member_argv(
                n, self.ips, self.workdir / f"etcd-{n}.data", f"flicker-chaos-{self.tag}"))
        if not wait_until(lambda: netns.etcd_healthy(self.endpoints), 60, 0.5):
            raise RuntimeError("etcd cluster not healthy")
        journal = f"etcd:{self.endpoints};prefix={self.prefix}"
        # Placement's default heartbeat timeout (10 s): the time a dead
        # host's worker takes to be marked lost is part of what is measured.
        self.start_role(1, "placement", self.flicker("serve", "placement", "--listen", PLACEMENT,
                                                     "--provider", "none"))
        for n in (1, 2, 3):
            self.start_role(n, f"asg-{n}", self.flicker(
                "serve", "assignment", "--listen", asg_addr(n), "--id", f"asg-{n}", "--journal", journal,
                "--placement", PLACEMENT, "--keep-alive", "600", "--snapshot-every", "100000000"))
        for n in (1, 2, 3):
            self.start_role(n, f"w-{n}", self.flicker(
                "serve", "worker", "--listen", worker_addr(n), "--id", f"w-{n}", "--zone", ZONES[n],
                "--placement", PLACEMENT, "--data", self.data))
        self.start_role(1, "frontend", self.flicker(
            "serve", "frontend", "--listen", f"{SUBNET}.1:{FE_PORT}", "--data", self.data,
            "--assignment", ",".join(asg_addr(n) for n in (1, 2, 3)), "--placement", PLACEMENT,
            "--async-retry-delays", "1,1"))
        if not wait_until(lambda: self.healthy()[0], 90, 0.5):
            raise RuntimeError(f"cluster not ready: {self.healthy()[1]}")
        self.note_pids()
        return self

    def note_pids(self):
        for name, p in self.roles.items():
            if name.startswith("w-") and p.alive():
                inst = instance_of(p.pid)
                if inst:
                    self.worker_instances.add(inst)

    def replica_status(self, n):
        return rpc_ok(asg_addr(n), "asg.status", timeout=2.0)

    def leader(self):
        for n in (1, 2, 3):
            if f"asg-{n}" in self.down:
                continue
            st = self.replica_status(n)
            if st and st.get("role") == "leader":
                return n, st
        return None

    def healthy(self):
        """Every role not killed on purpose alive and answering, a serving
        leader, the live workers active in placement and the killed ones
        not (lost)."""
        for name, p in self.roles.items():
            if name in self.down:
                continue
            if not p.alive():
                return False, f"{name} exited"
        for n in (1, 2, 3):
            if f"asg-{n}" not in self.down and not self.replica_status(n):
                return False, f"asg-{n} does not answer"
            if f"w-{n}" not in self.down and not rpc_ok(worker_addr(n), "worker.status", 2.0):
                return False, f"w-{n} does not answer"
        if not Api(self.host, self.port).health(2.0):
            return False, "frontend does not answer HTTP"
        if not self.leader():
            return False, "no assignment leader"
        st = rpc_ok(PLACEMENT, "placement.status", 2.0)
        if not st:
            return False, "placement does not answer"
        states = {w.get("id"): w.get("state") for w in st.get("workers", [])}
        for n in (1, 2, 3):
            want_active = f"w-{n}" not in self.down
            if (states.get(f"w-{n}") == "active") != want_active:
                return False, f"placement says w-{n} is {states.get(f'w-{n}')}"
        return True, "ok"

    def move_leader_to(self, target, attempts=8):
        """kill -9 whichever replica leads (and restart it once another
        one leads) until asg-target leads."""
        for _ in range(attempts):
            lead = wait_until(self.leader, 30, 0.25)
            if not lead:
                raise RuntimeError("no assignment leader")
            if lead[0] == target:
                return lead
            name = f"asg-{lead[0]}"
            self.roles[name].kill9()
            wait_until(lambda: (lambda l: l and l[0] != lead[0])(self.leader()), 30, 0.25)
            self.restart_role(name)
            wait_until(lambda: (self.replica_status(lead[0]) or {}).get("role") == "follower", 30, 0.25)
        return None

    def kill_host(self, n):
        """Host n dies: link down, then SIGKILL of everything on it,
        the worker's sandboxes included."""
        self.net.cut(n)
        self.cut_hosts.add(n)
        wp = self.roles.get(f"w-{n}")
        inst = instance_of(wp.pid) if wp and wp.alive() else None
        for name in (f"etcd-{n}", f"asg-{n}", f"w-{n}"):
            if name in self.roles and self.roles[name].alive():
                os.kill(self.roles[name].pid, signal.SIGKILL)
                self.down.add(name)
        killed = 0
        dirs = cgroup_instances().get(inst, []) if inst else []
        for d in dirs:  # v1 freezer: thaw, or SIGKILL waits
            if "/freezer/" in d:
                for sub in os.listdir(d):
                    try:
                        with open(os.path.join(d, sub, "freezer.state"), "w") as f:
                            f.write("THAWED")
                    except OSError:
                        pass
        for pids in sandboxes_of(dirs).values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        for name in (f"etcd-{n}", f"asg-{n}", f"w-{n}"):
            if name in self.roles:
                try:
                    self.roles[name].popen.wait(10)
                except Exception:
                    pass
        return killed

    def worker_envs(self):
        out = {}
        for n in (1, 2, 3):
            if f"w-{n}" in self.down:
                continue
            r = rpc_ok(worker_addr(n), "env.list", 3.0)
            out[f"w-{n}"] = None if r is None else {e["env_id"]: e.get("state") for e in r.get("envs", [])}
        return out

    def stop(self):
        """SIGTERM to every flicker role (frontend first), cleanup workers
        for killed ones (a worker's start removes a dead worker's
        sandboxes), etcd last, then the network.  Returns (exit codes of
        the roles that were up, problems)."""
        problems, codes = [], {}
        for n in sorted(self.cut_hosts):
            self.net.reconnect(n)
        order = ["frontend", "w-1", "w-2", "w-3", "asg-1", "asg-2", "asg-3", "placement"]
        for name in order:
            p = self.roles.get(name)
            if p is not None and p.alive():
                codes[name] = p.stop(30)
        for name in sorted(self.down):
            if name.startswith("w-"):
                n = int(name[2:])
                p = self.start_role(n, f"{name}-cleanup", self.flicker(
                    "serve", "worker", "--listen", f"tcp:{SUBNET}.{n}:7301", "--id", f"{name}-cleanup",
                    "--zone", ZONES[n], "--data", self.data))
                time.sleep(3)
                codes[f"{name}-cleanup"] = p.stop(30)
        for name, p in self.roles.items():
            if name.startswith("etcd") and p.alive():
                p.stop(30)
        problems += self.net.teardown()
        return codes, problems

    def leftovers(self):
        left = {}
        insts = {n: d for n, d in cgroup_instances().items() if n in self.worker_instances}
        if insts:
            left["sandbox cgroups"] = sorted(insts)
            procs = set()
            for dirs in insts.values():
                for pids in sandboxes_of(dirs).values():
                    procs |= {p for p in pids if pid_alive(p)}
            if procs:
                left["sandbox processes"] = sorted(procs)
        alive = [n for n, p in self.roles.items() if p.alive()]
        if alive:
            left["role processes"] = alive
        return left


def settle_cluster(c, res, timeout):
    api = Api(c.host, c.port)

    def quiet():
        st = api.status()
        return st["frontend"]["invocations_in_flight"] == 0 and \
            st["async"]["queued"] + st["async"]["running"] == 0
    wait_until(quiet, timeout, 0.5)
    deadline = time.monotonic() + timeout
    while True:
        c.note_pids()
        lead = c.leader()
        table = lead[1]["table"]["envs"] if lead else []
        wenvs = c.worker_envs()
        insts = cgroup_instances()
        live, live_names = {}, set()
        for n in (1, 2, 3):
            name = f"w-{n}"
            if name in c.down:
                continue
            inst = instance_of(c.roles[name].pid)
            live_names.add(inst)
            live[name] = insts.get(inst, [])
        dead = {n: d for n, d in insts.items() if n in c.worker_instances and n not in live_names}
        chk = placement_check(table, wenvs, set(live), live, {})
        del chk["dead sandboxes"]
        # A dead host's sandboxes were killed with it; their empty cgroup
        # directories are what a new worker removes (checked after stop).
        chk["dead host sandboxes still running"] = [
            f"{n}/{sb}" for n, d in dead.items() for sb, pids in sandboxes_of(d).items()
            if any(pid_alive(p) for p in pids)]
        chk["no leader"] = [] if lead else ["no assignment leader answered"]
        bad = sum(len(v) for k, v in chk.items() if k != "idle phantoms")
        if bad == 0 or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if chk["no leader"]:
        res.orphans = None
    else:
        res.orphans = sum(len(v) for k, v in chk.items() if k not in ("idle phantoms", "no leader"))
    res.phantoms = len(chk["idle phantoms"])
    res.details["orphan kinds"] = {k: len(v) for k, v in chk.items() if v}
    res.details["orphan check"] = {k: v[:4] for k, v in chk.items() if v}
    res.details["table size"] = len(table)
    if lead:
        res.details["leader in-flight count at rest"] = lead[1].get("in_flight")
    res.details["table by worker"] = {w: sum(1 for e in table if e.get("worker_id") == w) for w in
                                      sorted({e.get("worker_id") for e in table})}


def run_host_scenario(which, build, workroot, timing):
    res = Result({"host": "host", "etcd-member": "etcd-member"}[which])
    # The subnet (its own, not test_multihost's) may be taken for a while by
    # another run of this suite.
    deadline = time.monotonic() + 120
    while True:
        reason = netns.unavailable_reason(SUBNET)
        if not reason or "already configured" not in reason or time.monotonic() > deadline:
            break
        time.sleep(2)
    if reason:
        res.verdict = "SKIPPED"
        res.fault = "skipped: " + " ".join(reason.split())[:120]
        return res
    return _run_host(res, which, build, workroot, timing)


def _run_host(res, which, build, workroot, timing):
    c = Cluster(build, workroot / res.name)
    load = mon = None
    try:
        t0 = now()
        c.start()
        log(f"  cluster up in {now() - t0:.1f} s (tag {c.tag})")
        if which == "host":
            lead = c.move_leader_to(3)
            if not lead:
                raise RuntimeError("could not move the assignment leadership to host 3")
            if not wait_until(lambda: c.healthy()[0], 60, 0.5):
                raise RuntimeError(f"cluster not healthy after moving the leader: {c.healthy()[1]}")
        api = Api(c.host, c.port)
        fn, dest = deploy_pair(api, "chaos")
        for i in range(3):
            api.invoke(fn, {"id": f"warm-{i}"})
        mon = Monitor(c.healthy, c.note_pids).start()
        load = Load(c.host, c.port, fn).start()
        time.sleep(timing.pre)
        if load.count_ok() == 0:
            raise RuntimeError("no sync invoke succeeded before the fault: the load is not served")
        if which == "host":
            before = c.worker_envs().get("w-3") or {}
            lead = c.leader()
            t_fault = now()
            killed = c.kill_host(3)
            res.fault = (f"host 3 (assignment leader asg-3, term {lead[1]['term'] if lead else '?'}; etcd-3; "
                         f"w-3 with {len(before)} environments) cut off and every process on it killed"
                         f" (incl. {killed} sandbox processes)")
        else:
            member = etcd_leader(c)
            t_fault = now()
            c.roles[f"etcd-{member}"].popen.send_signal(signal.SIGKILL)
            c.roles[f"etcd-{member}"].popen.wait(10)
            c.down.add(f"etcd-{member}")
            res.fault = f"kill -9 etcd-{member} (the etcd raft leader); it stays down"
        log(f"  fault: {res.fault}")
        observed = observe(load, mon, t_fault, timing)
        load.stop()
        log(f"  observed {observed:.1f} s after the fault; draining events")
        mon.stop()
        ran, confirmed, fn_log, dest_log = drain_events(Api(c.host, c.port), load, fn, dest, timing.drain)
        invs = analyse(res, load, mon, t_fault, fn_log, ran, confirmed, queued_event_ids(c.data / "async.db"))
        settle_cluster(c, res, timing.settle)
        try:
            jr = etcd_journal_records(",".join(f"http://{c.ips[n - 1]}:2379" for n in (1, 2, 3)
                                               if f"etcd-{n}" not in c.down), c.prefix)
        except Exception as e:
            jr = None
            res.notes.append(f"etcd journal not readable: {e}")
        double_handing(res, invs, load.sync, jr)
        (c.workdir / "records.json").write_text(json.dumps({"t_fault": t_fault, "sync": load.sync,
                                                           "events": load.events}))
    except Exception as e:
        res.verdict = "ERROR"
        res.notes.append(f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        if load:
            load.stop()
        if mon:
            mon.stop()
        try:
            codes, problems = c.stop()
            bad = {k: v for k, v in codes.items() if v != 0}
            res.stop_rc = bad or 0
            if bad:
                res.notes.append(f"roles that did not exit 0 on SIGTERM: {bad}")
            res.notes += problems
            res.left = c.leftovers()
            res.sanitizer = sanitizer_reports(p for p in c.workdir.glob("*.log") if not p.name.startswith("etcd"))
        except Exception as e:
            res.notes.append(f"stop: {type(e).__name__}: {e}")
        res.details["log"] = str(c.workdir)
    return finish(res)


def etcd_leader(c):
    """Host number of the etcd raft leader."""
    p = subprocess.run(["etcdctl", f"--endpoints={c.endpoints}", "--command-timeout=5s", "endpoint", "status",
                        "-w", "json"], capture_output=True, text=True, timeout=20)
    for st in json.loads(p.stdout or "[]"):
        if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
            ip = st["Endpoint"].split("//")[1].split(":")[0]
            return c.ips.index(ip) + 1
    return 1
