#!/usr/bin/python3
"""chaos/run.py - flicker's chaos suite (`make chaos`).

Every scenario starts a fresh platform, puts a steady mix of synchronous
(RequestResponse) and asynchronous (Event) invokes on it, injects one
fault, keeps the load on until the platform is whole again, drains the
event queue and checks: sync failures (and whether an immediate retry
succeeded), time until whole, accepted events lost, orphaned environments,
environments handed to two requests.  See chaos/scenario.py for what each
number means and docs/chaos.md for the results.

  /usr/bin/python3 chaos/run.py                  # everything (minutes)
  /usr/bin/python3 chaos/run.py --only asg-leader,worker
  /usr/bin/python3 chaos/run.py --smoke          # shorter phases
  /usr/bin/python3 chaos/run.py --write-doc      # also update docs/chaos.md

Exit status 1 if any must-be-zero number (lost, orphans, double-handed,
leftovers) is not zero or a scenario never recovered.
"""
import argparse
import hashlib
import json
import os
import platform as pyplatform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import (REPO, Api, Load, Monitor, Platform, deploy_pair, journal_double_hands,  # noqa: E402
                 journal_records, log, now, queued_event_ids, sanitizer_reports, wait_until)
from scenario import (FULL, SMOKE, Result, analyse, as_json, double_handing, drain_events,  # noqa: E402
                      finish, fmt_s, observe, settle_single, summary_line)

UP_ARGS = ["--workers", "2", "--keep-alive", "600", "--async-retry-delays", "1,1"]


# ----------------------------------------------------------- single host

def run_single(name, fault, build, workroot, timing, args=None, data=None, setup=None, teardown=None):
    """One scenario on a single-host `flicker up`.  fault(p, res, t_fault)
    injects the fault and returns its description."""
    res = Result(name)
    p = Platform(workroot / name, build, args=args or UP_ARGS, data=data)
    load = mon = None
    try:
        if setup:
            setup(p)
        p.start()
        api = Api(p.host, p.port)
        fn, dest = deploy_pair(api, "chaos")
        for i in range(3):
            api.invoke(fn, {"id": f"warm-{i}"})
        mon = Monitor(p.healthy, p.note_pids).start()
        load = Load(p.host, p.port, fn).start()
        time.sleep(timing.pre)
        if load.count_ok() == 0:
            raise RuntimeError("no sync invoke succeeded before the fault: the load is not served")
        t_fault = now()
        res.fault = fault(p, res, t_fault)
        log(f"  fault: {res.fault}")
        observed = observe(load, mon, t_fault, timing, healthy_needed=res.verdict == "ok")
        load.stop()
        mon.stop()
        if mon.recovered_at(t_fault)[0] is None:
            # Not whole by itself: restart it as an operator would, so that
            # the drain still tells whether accepted events survived.
            t = now()
            rc = p.stop()
            p.start()
            res.notes.append(f"not whole {observed:.0f} s after the fault: operator restart (SIGTERM: exit {rc},"
                             f" `flicker up` again, ready after {now() - t:.1f} s) before draining")
        log(f"  observed {observed:.1f} s after the fault; draining events")
        api = Api(p.host, p.port)
        ran, confirmed, fn_log, dest_log = drain_events(api, load, fn, dest, timing.drain)
        invs = analyse(res, load, mon, t_fault, fn_log, ran, confirmed,
                       queued_event_ids(p.data / "async.db"))
        settle_single(p, res, timing.settle)
        try:
            jr = journal_records(p.data / "journal")
        except OSError as e:
            jr = None
            res.notes.append(f"journal not readable: {e}")
        double_handing(res, invs, load.sync, jr)
        (p.workdir / "records.json").write_text(json.dumps({"t_fault": t_fault, "sync": load.sync,
                                                           "events": load.events}))
        restarts = {n: r.get("restarts", 0) for n, r in p.roles().items() if r.get("restarts")}
        if restarts:
            res.details["role restarts"] = restarts
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
            res.stop_rc = p.stop()
            if p.proc is not None:
                wait_until(lambda: not p.leftovers(), 10, 0.5)  # teardown may lag the exit
                res.left = p.leftovers()
        except Exception as e:
            res.notes.append(f"stop: {type(e).__name__}: {e}")
        if res.stop_rc not in (0, None):
            res.notes.append(f"flicker up exited {res.stop_rc} on SIGTERM")
        if teardown:
            teardown(p, res)
        res.sanitizer = sanitizer_reports(p.logs)
        res.details["log"] = str(p.workdir)
    return finish(res)


def fault_leader(p, res, t):
    name, st = p.leader()
    pid = p.kill_role(name)
    return f"kill -9 {name}, the assignment leader (term {st['term']}, pid {pid})"


def fault_follower(p, res, t):
    lead = p.leader()[0]
    name = next(n for n, r in sorted(p.roles().items()) if r["role"] == "assignment" and n != lead)
    pid = p.kill_role(name)
    return f"kill -9 {name}, a follower (pid {pid})"


def fault_placement(p, res, t):
    return f"kill -9 placement (pid {p.kill_role('placement')})"


def fault_worker(p, res, t):
    envs = p.worker_envs()
    name = max(sorted(envs), key=lambda w: len(envs[w] or {}))
    n = len(envs[name] or {})
    return f"kill -9 {name} ({n} environments, pid {p.kill_role(name)})"


def fault_frontend(p, res, t):
    return f"kill -9 the frontend (pid {p.kill_role('frontend')})"


def fault_everything(p, res, t):
    pids = p.kill_everything()
    p.start(wait=False)
    return f"kill -9 the supervisor and its {len(pids)} roles at once, then `flicker up` again on the same data"


# ----------------------------------------------------------- journal faults

REC_HDR = struct.Struct("<IIQQQ")


def last_segment(p):
    segs = sorted((p.data / "journal").glob("*.seg"))
    if not segs:
        raise RuntimeError("no journal segment")
    return segs[-1]


def fault_torn_tail(p, res, t):
    """kill -9 of everything, then the last record of the journal left
    half-written (a record header and part of its payload, as a crash in
    the middle of a write leaves it), then `flicker up` again."""
    p.kill_everything()
    seg = last_segment(p)
    _snap, recs = journal_records(p.data / "journal")
    index, term, _ = recs[-1]
    payload = json.dumps({"op": "state", "env_id": "0" * 32, "state": "idle"}).encode()
    rec = REC_HDR.pack(0, len(payload), index + 1, term, index + 1) + payload
    before = seg.read_bytes()
    with open(seg, "ab") as f:
        f.write(rec[:REC_HDR.size + len(payload) // 2])
        f.flush()
        os.fsync(f.fileno())
    res.details["torn"] = {"segment": seg.name, "valid bytes": len(before), "last index": index,
                           "torn bytes": REC_HDR.size + len(payload) // 2}
    res.details["_torn_before"] = before
    p.start(wait=False)
    return (f"kill -9 of everything, then a torn record (index {index + 1}, {REC_HDR.size + len(payload) // 2}"
            f" of {len(rec)} bytes) at the end of {seg.name}; `flicker up` again")


def check_torn_tail(p, res):
    """What docs/journal.md promises: a torn tail is cut off with a warning
    and everything before it kept."""
    info = res.details.get("torn")
    before = res.details.pop("_torn_before", None)
    if not info or before is None:
        return
    text = p.log_text()
    warned = "torn tail at offset %d" % info["valid bytes"] in text
    seg = p.data / "journal" / info["segment"]
    kept = seg.exists() and seg.read_bytes()[:len(before)] == before
    _snap, recs = journal_records(p.data / "journal") if seg.exists() else (None, [])
    garbage_gone = not any(json.loads(r[2]).get("env_id") == "0" * 32 for r in recs if r[2].startswith(b"{"))
    res.details["torn tail repaired"] = {"warning logged": warned, "records before it kept": kept,
                                         "torn record dropped": garbage_gone}
    if not (warned and kept and garbage_gone):
        res.verdict = "FAIL"
        res.problems.append("torn tail not repaired as docs/journal.md says")


def fault_corrupt_middle(p, res, t):
    """kill -9 of everything, one byte flipped in the payload of a record
    in the middle of the journal (later batches follow it), `flicker up`
    again: docs/journal.md says the journal refuses (EUCLEAN) and modifies
    nothing.  The platform must not start on it; then the operator's
    remedy (move the journal aside: the table is rebuilt from the workers,
    which are empty after the crash) and `flicker up` once more."""
    p.kill_everything()
    seg = last_segment(p)
    raw = bytearray(seg.read_bytes())
    _snap, recs = journal_records(p.data / "journal")
    target = recs[len(recs) // 2][0]
    off = 0
    while True:
        _c, ln, index, _t, _b = REC_HDR.unpack_from(raw, off)
        if index == target:
            break
        off += REC_HDR.size + ln
    raw[off + REC_HDR.size + ln // 2] ^= 0x20
    seg.write_bytes(bytes(raw))
    digest = hashlib.sha256(bytes(raw)).hexdigest()
    t_start = now()
    p.start(wait=False)
    rc = None
    try:
        rc = p.proc.wait(60)
    except subprocess.TimeoutExpired:
        pass
    t_exit = now()
    text = p.log_text(all_generations=False)
    clear = [l for l in text.splitlines() if "corrupt record" in l or "refusing" in l]
    untouched = hashlib.sha256(seg.read_bytes()).hexdigest() == digest
    res.details["corrupt middle"] = {"record": target, "of": len(recs), "segment": seg.name,
                                     "flicker up exit": rc, "refused after s": round(t_exit - t_start, 2),
                                     "error lines": [l[:220] for l in clear[:3]],
                                     "journal untouched": untouched}
    if rc is None:
        p.kill_everything()
        res.verdict = "FAIL"
        res.problems.append("flicker up kept running on a journal with a corrupt middle record")
    elif rc == 0 or not clear or not untouched:
        res.verdict = "FAIL"
        res.problems.append(f"refusal not as documented (exit {rc}, message {bool(clear)}, untouched {untouched})")
    # Hand-outs before the fault are checked on the refused journal itself.
    bad, handouts, anomalies = journal_double_hands(None, recs)
    res.details["double (journal before the remedy)"] = {"double-handed": sorted(bad)[:5],
                                                         "hand-outs": handouts, "anomalies": anomalies[:3]}
    res.double += len(bad)
    res.handouts += handouts
    aside = p.data / f"journal.corrupt-{int(t)}"
    (p.data / "journal").rename(aside)
    res.details["corrupt middle"]["remedy"] = f"journal moved to {aside.name}"
    p.start(wait=False)
    return (f"kill -9 of everything, one byte flipped in record {target} of {len(recs)}; `flicker up` "
            f"exits {rc} after {t_exit - t_start:.2f} s; journal moved aside, `flicker up` again")


# ----------------------------------------------------------- disk full

class SmallDisk:
    """A small ext4 (loop-mounted, no reserved blocks) for the data
    directory; tmpfs if loop devices are unavailable."""

    def __init__(self, workdir, size_mb=600):
        self.dir = Path(workdir) / "disk"
        self.image = Path(workdir) / "disk.img"
        self.size_mb = size_mb
        self.kind = None

    def mount(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb << 20)
        mk = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)], capture_output=True, text=True)
        mt = subprocess.run(["mount", "-o", "loop", str(self.image), str(self.dir)], capture_output=True, text=True) \
            if mk.returncode == 0 else mk
        if mt.returncode == 0:
            self.kind = f"ext4 on a loop device, {self.size_mb} MiB"
        else:
            self.image.unlink(missing_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.dir)],
                           check=True)
            self.kind = f"tmpfs, {self.size_mb} MiB (loop mount failed: {mt.stderr.strip()[:80]})"
        return self.dir / "data"

    def fill(self):
        """Writes a filler file until ENOSPC; returns bytes written."""
        n = 0
        chunk = b"\0" * (1 << 20)
        with open(self.dir / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    n += f.write(chunk)
            except OSError:
                pass
            try:
                while True:  # the last partial blocks
                    n += f.write(b"\0" * 4096)
            except OSError:
                pass
            try:
                os.fsync(f.fileno())
            except OSError:
                pass
        return n

    def free(self):
        (self.dir / "filler").unlink(missing_ok=True)

    def avail(self):
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def unmount(self):
        for _ in range(20):
            if subprocess.run(["umount", str(self.dir)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        self.image.unlink(missing_ok=True)


def disk_full_scenario(build, workroot, timing, full_for=10.0):
    disk = SmallDisk(workroot / "disk-full")

    def setup(p):
        # The function logs are the suite's instrument (they show which
        # events ran), so they stay off the full disk; everything else of
        # the platform (journal, event queue, store, code, /tmp images) is
        # on it.
        p.data = disk.mount()
        p.data.mkdir()
        logs = p.workdir / "function-logs"
        logs.mkdir(exist_ok=True)
        (p.data / "logs").symlink_to(logs)

    def fault(p, res, t):
        written = disk.fill()
        res.details["disk"] = disk.kind
        res.details["filler MiB"] = round(written / 2**20, 1)
        res.details["free while full (bytes)"] = disk.avail()
        time.sleep(full_for)  # full, under the load
        disk.free()
        res.details["space back after s"] = round(now() - t, 2)
        return (f"data directory's filesystem ({disk.kind}) filled to ENOSPC for {full_for:.0f} s"
                f" under the load, then the filler deleted")

    def teardown(p, res):
        disk.unmount()

    res = run_single("disk-full", fault, build, workroot, timing, setup=setup, teardown=teardown)
    return res


# ----------------------------------------------------------- the suite

def scenario_table():
    return {
        "asg-leader": ("kill -9 the assignment leader", lambda b, w, t: run_single("asg-leader", fault_leader, b, w, t)),
        "asg-follower": ("kill -9 an assignment follower", lambda b, w, t: run_single("asg-follower", fault_follower, b, w, t)),
        "placement": ("kill -9 placement", lambda b, w, t: run_single("placement", fault_placement, b, w, t)),
        "worker": ("kill -9 a worker", lambda b, w, t: run_single("worker", fault_worker, b, w, t)),
        "frontend": ("kill -9 the frontend", lambda b, w, t: run_single("frontend", fault_frontend, b, w, t)),
        "everything": ("kill -9 everything, start again", lambda b, w, t: run_single("everything", fault_everything, b, w, t)),
        "journal-torn-tail": ("torn last journal record", lambda b, w, t: torn_tail(b, w, t)),
        "journal-corrupt-middle": ("corrupted middle journal record", lambda b, w, t: corrupt_middle(b, w, t)),
        "disk-full": ("data disk full", lambda b, w, t: disk_full_scenario(b, w, t)),
        "host": ("kill -9 a whole host (netns)", lambda b, w, t: host_scenario(b, w, t, "host")),
        "etcd-member": ("an etcd member down (netns)", lambda b, w, t: host_scenario(b, w, t, "etcd-member")),
    }


def torn_tail(build, workroot, timing):
    return run_single("journal-torn-tail", fault_torn_tail, build, workroot, timing,
                      teardown=lambda p, res: check_torn_tail(p, res))


def corrupt_middle(build, workroot, timing):
    return run_single("journal-corrupt-middle", fault_corrupt_middle, build, workroot, timing)


def host_scenario(build, workroot, timing, which):
    from multihost import run_host_scenario
    return run_host_scenario(which, build, workroot, timing)


def machine_line():
    try:
        load = os.getloadavg()
    except OSError:
        load = (0, 0, 0)
    return (f"{pyplatform.node()}, {os.cpu_count()} CPUs, {pyplatform.platform()}, "
            f"load average {load[0]:.2f} at the start")


def table(results):
    head = ("| scenario | fault | sync (req/s) | sync failed | retry ok | first ok s | failures end s | whole s "
            "| events accepted / refused | lost | orphans | double-handed | left after stop | verdict |")
    rows = [head, "|" + "---|" * 14]
    for r in results:
        rows.append(
            f"| {r.name} | {r.fault} | {r.sync} ({r.sync_rate:.0f}) | {r.failed} | "
            f"{r.retry_ok}/{r.failed} | {fmt_s(r.first_ok)} | {fmt_s(r.last_fail)} | {fmt_s(r.whole)} | "
            f"{r.accepted} / {r.refused} | "
            f"{r.lost}{f' (+{r.queued} queued)' if r.queued else ''} | {'n/a' if r.orphans is None else r.orphans} | {r.double} | {'nothing' if not r.left else r.left} | {r.verdict} |")
    return "\n".join(rows)


def details_md(results):
    out = []
    for r in results:
        out.append(f"**{r.name}** — {r.fault}")
        out.append("")
        out.append(f"- timing: first ok {fmt_s(r.first_ok)} s, last failure ended {fmt_s(r.last_fail)} s,"
                   f" roles back {fmt_s(r.roles_back)} s after the fault; whole {fmt_s(r.whole)} s")
        if r.unhealthy:
            out.append(f"- monitor saw: {'; '.join(r.unhealthy)}")
        if r.errors:
            errs = sorted(r.errors.items(), key=lambda kv: -kv[1])[:4]
            out.append("- errors: " + "; ".join(f"{n}× `{e}`" for e, n in errs))
        out.append(f"- events: {r.accepted} accepted, {r.delivered} delivered, {r.lost} lost, "
                   f"{r.duplicates} delivered twice, p99 accept→start {fmt_s(r.event_p99)} s")
        out.append(f"- environments: {r.details.get('environments seen', '?')} seen, {r.handouts} hand-outs"
                   f" journaled, double-handed {r.double}, orphans {r.orphans}, phantoms {r.phantoms}")
        for k, v in r.details.items():
            if k in ("log", "environments seen") or v in ([], {}, None, 0):
                continue
            out.append(f"- {k}: `{json.dumps(v, default=str)[:400]}`")
        for n in r.notes + r.problems:
            out.append(f"- **{n}**")
        out.append("")
    return "\n".join(out)


def write_doc(results, argv, started, machine, path):
    text = Path(path).read_text() if Path(path).exists() else ""
    begin, end = "<!-- chaos:results -->", "<!-- /chaos:results -->"
    block = "\n".join([
        begin,
        f"Command: `{' '.join(argv)}`  ",
        f"Machine: {machine}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"{(time.time() - started) / 60:.1f} minutes",
        "",
        table(results),
        "",
        details_md(results),
        end,
    ])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text + "\n" + block + "\n"
    Path(path).write_text(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--smoke", action="store_true", help="shorter phases")
    ap.add_argument("--workdir", default="", help="keep the platforms' directories here")
    ap.add_argument("--write-doc", action="store_true", help="update the results in docs/chaos.md")
    ap.add_argument("--json", default="", help="write the results as JSON to this file")
    args = ap.parse_args()
    scenarios = scenario_table()
    names = [n for n in args.only.split(",") if n] or list(scenarios)
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(scenarios)}")
    timing = SMOKE if args.smoke else FULL
    build = Path(args.build).resolve()
    if not (build / "flicker").exists():
        ap.error(f"{build}/flicker does not exist: build it first (make)")
    workroot = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="flicker-chaos-"))
    workroot.mkdir(parents=True, exist_ok=True)
    started, machine = time.time(), machine_line()
    log(f"chaos: {len(names)} scenarios, work directory {workroot}; {machine}")
    results = []
    for n in names:
        log(f"== {n}: {scenarios[n][0]}")
        t0 = time.time()
        r = scenarios[n][1](build, workroot, timing)
        r.details["scenario seconds"] = round(time.time() - t0, 1)
        results.append(r)
        log("  " + summary_line(r))
    print()
    print(table(results))
    print()
    print(details_md(results))
    if args.json:
        Path(args.json).write_text(json.dumps([as_json(r) for r in results], indent=1, default=str))
    if args.write_doc:
        write_doc(results, [Path(sys.argv[0]).name] + sys.argv[1:], started, machine, REPO / "docs" / "chaos.md")
        log("docs/chaos.md updated")
    if not args.workdir:
        shutil.rmtree(workroot, ignore_errors=True)
    bad = [r.name for r in results if r.verdict not in ("ok", "SKIPPED")]
    if bad:
        log(f"chaos: problems in {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
