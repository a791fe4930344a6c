"""chaos/scenario.py - one chaos scenario from start to numbers: a fresh
platform, a steady load, one fault, observation, drain, the checks.

The numbers (Result) and what they mean:

  sync            first attempts of RequestResponse invokes (and per second)
  failed          first attempts that did not return the function's own
                  answer (HTTP error, function error, transport error)
  retry ok        of those, how many the client's retries (up to three,
                  after 0.1, 0.2, 0.4 s, as an SDK does) turned into a success
  first ok        seconds from the fault to the first successful sync
                  invoke sent after it
  last fail       seconds from the fault to the end of the last failed
                  attempt (first attempts and retries)
  roles back      seconds from the fault until the monitor saw the
                  platform whole and it stayed so: every role running and
                  answering its status RPC, an assignment leader serving,
                  every worker active in placement (multi-host: the
                  surviving ones, and the dead host's worker marked lost)
  whole           max(last fail, roles back): from then on nothing failed
                  and every part was back
  events          Event invokes accepted (202); refused (not 202); lost =
                  accepted but never run (neither in the function's log nor
                  confirmed by its on-success destination) after draining
  orphans         environments (or table entries) nobody will ever use or
                  reclaim (lib.placement_check): on a worker but not in the
                  assignment table; busy in the table with no request in
                  flight (stuck: never handed out again, never expired,
                  counted as in flight), whether or not a worker has it;
                  sandboxes of a dead worker process; a sandbox cgroup its
                  worker does not list
  phantoms        idle in the table but on no worker (reported, not an
                  orphan: an invoke that meets one is redelivered and the
                  entry removed)
  double          environments ever handed to two requests: from the
                  journal (a `busy` record for an env already busy) and
                  from the function's reports (repeated count, overlap)
  left after stop what `flicker up`'s SIGTERM left behind: sandbox
                  cgroups/processes, role processes, mounts, loop devices
"""
import json
import time
from dataclasses import dataclass, field

from lib import (ORPHAN_KINDS, Api, cgroup_instances, delivered_ids, function_double_hands, journal_double_hands,
                 log, now, parse_function_log, placement_check, proc_starttime, wait_until)


@dataclass
class Timing:
    pre: float = 5.0          # load before the fault (s)
    post_min: float = 12.0    # load after the fault, at least
    post_max: float = 60.0    # ... at most
    calm: float = 5.0         # after recovery, this long without a failure
    drain: float = 150.0      # waiting for accepted events to run
    settle: float = 20.0      # waiting for table and workers to agree


FULL = Timing()
SMOKE = Timing(pre=3.0, post_min=6.0, post_max=40.0, calm=3.0, drain=100.0, settle=15.0)


@dataclass
class Result:
    name: str
    fault: str = ""
    sync: int = 0
    sync_rate: float = 0.0
    failed: int = 0
    retry_ok: int = 0
    first_ok: float = None
    last_fail: float = None
    roles_back: float = None
    whole: float = None
    accepted: int = 0
    refused: int = 0
    delivered: int = 0
    queued: int = 0
    lost: int = 0
    duplicates: int = 0
    event_p99: float = None
    orphans: int = 0
    phantoms: int = 0
    double: int = 0
    handouts: int = 0
    left: dict = field(default_factory=dict)
    sanitizer: list = field(default_factory=list)
    stop_rc: object = None
    errors: dict = field(default_factory=dict)
    unhealthy: list = field(default_factory=list)
    details: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    verdict: str = "ok"
    problems: list = field(default_factory=list)

    def must_be_zero(self):
        """The checks that must hold for every scenario."""
        out = []
        if self.lost:
            out.append(f"{self.lost} accepted events lost")
        if self.queued:
            out.append(f"{self.queued} accepted events still queued, undelivered, at the end")
        if self.orphans is None:
            out.append("orphans could not be checked (no assignment leader)")
        elif self.orphans:
            out.append(f"{self.orphans} orphaned environments")
        if self.double:
            out.append(f"{self.double} environments handed to two requests")
        if self.left:
            out.append(f"left after stop: {self.left}")
        if self.sanitizer:
            out.append(f"sanitizer reports: {self.sanitizer[:5]}")
        if self.whole is None and self.fault and "refus" not in self.verdict:
            out.append("service never whole again")
        return out


def fmt_s(v):
    return "never" if v is None else f"{v:.2f}"


def observe(load, monitor, t_fault, timing, healthy_needed=True):
    """Keeps the load running after the fault until the platform was whole
    for timing.calm seconds without a failed request (between post_min and
    post_max).  Returns the seconds observed."""
    deadline = t_fault + timing.post_max
    while now() < deadline:
        time.sleep(0.5)
        t = now()
        if t - t_fault < timing.post_min:
            continue
        back, _ = monitor.recovered_at(t_fault)
        with load.lock:
            fails = [r["t1"] for r in load.sync if not r["ok"] and r["t1"] >= t_fault]
            recent_ok = sum(1 for r in load.sync if r["ok"] and r["t0"] >= t - timing.calm)
        last_fail = max(fails) if fails else t_fault
        if (back is not None or not healthy_needed) and t - max(last_fail, back or t_fault) >= timing.calm \
                and recent_ok > 0:
            break
    return now() - t_fault


def drain_events(api, load, name, dest, timeout):
    """Waits until every accepted event was run (function log or
    destination record); returns (ran ids, confirmed ids, fn log, dest log)."""
    accepted = load.accepted_ids()
    deadline = time.monotonic() + timeout
    ran = confirmed = set()
    fn_log = dest_log = ""
    while True:
        try:
            fn_log, dest_log = api.logs(name), api.logs(dest)
            ran, confirmed = delivered_ids(fn_log, dest_log)
        except Exception as e:
            log(f"  (logs not readable yet: {e})")
        missing = accepted - ran - confirmed
        if not missing or time.monotonic() >= deadline:
            return ran, confirmed, fn_log, dest_log
        time.sleep(1.0)


def analyse(res, load, monitor, t_fault, fn_log, ran, confirmed, still_queued=()):
    with load.lock:
        sync = list(load.sync)
        events = list(load.events)
    if sync:
        span = max(r["t1"] for r in sync) - min(r["t0"] for r in sync)
        res.sync = len(sync)
        res.sync_rate = len(sync) / span if span > 0 else 0.0
    failed = [r for r in sync if not r["ok"]]
    res.failed = len(failed)
    res.retry_ok = sum(1 for r in failed if r.get("retry_ok"))
    for r in failed:
        for e in [r["error"]] + [x["error"] for x in r.get("retries", [])]:
            if e:
                key = e[:110]
                res.errors[key] = res.errors.get(key, 0) + 1
    for r in events:
        if not r["ok"]:
            key = "Event: " + (r["error"] or "?")[:100]
            res.errors[key] = res.errors.get(key, 0) + 1
    if t_fault is not None:
        oks = [r["t1"] - t_fault for r in sync if r["ok"] and r["t0"] >= t_fault]
        res.first_ok = min(oks) if oks else None
        ends = [r["t1"] for r in failed] + [x["t1"] for r in failed for x in r.get("retries", [])
                                             if not x["ok"]]
        ends = [t - t_fault for t in ends if t >= t_fault]
        res.last_fail = max(ends) if ends else 0.0
        back, reasons = monitor.recovered_at(t_fault)
        res.roles_back = None if back is None else max(0.0, back - t_fault)
        res.unhealthy = reasons[:6]
        res.details["unhealthy stretches (s after the fault)"] = monitor.stretches(t_fault)
        res.whole = None if res.roles_back is None else max(res.last_fail, res.roles_back)
    accepted = {r["id"] for r in events if r["ok"]}
    res.accepted = len(accepted)
    res.refused = sum(1 for r in events if not r["ok"])
    delivered = accepted & (ran | confirmed)
    res.delivered = len(delivered)
    waiting = (accepted - delivered) & set(still_queued)
    res.queued = len(waiting)
    res.lost = len(accepted - delivered - waiting)
    if res.lost:
        res.details["lost ids"] = sorted(accepted - delivered - waiting)[:10]
    invs = parse_function_log(fn_log)
    counts = {}
    for inv in invs:
        if inv["kind"] == "event":
            counts[inv["id"]] = counts.get(inv["id"], 0) + 1
    res.duplicates = sum(1 for i, n in counts.items() if n > 1 and i in accepted)
    sent = {r["id"]: r["t1"] for r in events if r["ok"]}
    lat = sorted(inv["start"] - sent[inv["id"]] for inv in invs
                 if inv["kind"] == "event" and inv["id"] in sent)
    if lat:
        res.event_p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    # Sync requests that failed at the client but ran in the function anyway.
    ran_sync = {inv["id"] for inv in invs if inv["kind"] == "sync"}
    res.details["failed sync that ran anyway"] = sum(1 for r in failed if r["id"] in ran_sync)
    return invs


def double_handing(res, invocations, sync_records, snap_recs):
    """Fills res.double / res.handouts from the journal and the function's reports."""
    invs = list(invocations)
    seen = {(i["env"], i["count"], i["rid"]) for i in invs}
    for r in sync_records:
        if r.get("ok") and (r["env"], r["count"], r["rid"]) not in seen:
            invs.append({"env": r["env"], "count": r["count"], "rid": r["rid"], "start": r["start"],
                         "end": r["end"]})
    fn_bad = function_double_hands(invs)
    j_bad, handouts, anomalies = set(), 0, []
    if snap_recs is not None:
        j_bad, handouts, anomalies = journal_double_hands(*snap_recs)
    res.double += len(fn_bad) + len(j_bad)
    res.handouts += handouts
    res.details["double (journal)"] = sorted(j_bad)[:5]
    res.details["double (function)"] = sorted(fn_bad)[:5]
    if anomalies:
        res.details["journal anomalies"] = anomalies[:5]
    res.details["environments seen"] = len({i["env"] for i in invs})


def settle_single(p, res, timeout):
    """Orphan check of a single-host platform, polled until clean or timeout."""
    api = Api(p.host, p.port)

    def quiet():
        st = api.status()
        return st["frontend"]["invocations_in_flight"] == 0 and \
            st["async"]["queued"] + st["async"]["running"] == 0
    wait_until(quiet, timeout, 0.5)
    last = None
    deadline = time.monotonic() + timeout
    while True:
        p.note_pids()
        lead = p.leader()
        roles = p.roles()
        workers = {n: r for n, r in roles.items() if r["role"] == "worker"}
        wenvs = p.worker_envs()
        insts = cgroup_instances()
        live = {}
        for n, r in workers.items():
            st = proc_starttime(r["pid"])
            name = f"sbx-{r['pid']}-{st}"
            live[n] = insts.get(name, [])
        live_names = {f"sbx-{r['pid']}-{proc_starttime(r['pid'])}" for r in workers.values()}
        dead = {n: d for n, d in insts.items() if n in p.worker_instances and n not in live_names}
        table = lead[1]["table"]["envs"] if lead else []
        chk = placement_check(table, wenvs, set(workers), live, dead)
        if not lead:  # nothing to compare the workers with
            for k in ("not in table", "stuck busy", "stuck in table", "idle phantoms"):
                chk[k] = []
        chk["no leader"] = [] if lead else ["no assignment leader answered"]
        last = chk
        bad = sum(len(v) for k, v in chk.items() if k != "idle phantoms")
        if bad == 0 or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    res.orphans = None if last["no leader"] else sum(len(last[k]) for k in ORPHAN_KINDS)
    res.phantoms = len(last["idle phantoms"])
    res.details["orphan kinds"] = {k: len(v) for k, v in last.items() if v}
    res.details["orphan check"] = {k: v[:4] for k, v in last.items() if v}
    res.details["table size"] = len(table)
    if lead:  # invocations the leader counts as running, with nothing running
        res.details["leader in-flight count at rest"] = lead[1].get("in_flight")
    return last


def finish(res):
    res.problems = res.must_be_zero()
    if res.problems and res.verdict == "ok":
        res.verdict = "FAIL"
    return res


def summary_line(r):
    return (f"{r.name}: {r.fault} | sync {r.sync} ({r.sync_rate:.0f}/s) failed {r.failed} "
            f"(retry ok {r.retry_ok}) | first ok {fmt_s(r.first_ok)} s, last fail {fmt_s(r.last_fail)} s, "
            f"roles back {fmt_s(r.roles_back)} s, whole {fmt_s(r.whole)} s | events {r.accepted} accepted, "
            f"{r.refused} refused, {r.lost} lost, {r.queued} still queued, {r.duplicates} dup | orphans {r.orphans}, "
            f"phantoms {r.phantoms}, double {r.double} | left {r.left or 'nothing'} | {r.verdict}")


def as_json(r):
    d = dict(r.__dict__)
    return json.loads(json.dumps(d, default=str))
