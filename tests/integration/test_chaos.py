"""A smoke run of the chaos suite (chaos/run.py, `make chaos`): three of
its faster scenarios, each on its own fresh `flicker up` under a steady mix
of RequestResponse and Event invokes, with shortened phases.

  asg-follower  kill -9 of an assignment follower
  placement     kill -9 of placement
  worker        kill -9 of the worker holding the most environments

What is asserted is what must be zero whatever the timing: accepted
events lost or left undelivered, orphaned environments, environments
handed to two requests, anything left after SIGTERM; and that the
platform became whole again.  Failure counts and recovery times are
printed (pytest -s), not asserted: they depend on the machine's load.

The scenarios that currently find bugs (assignment leader, frontend,
everything at once (a race), disk full, a whole host) run in `make chaos`
only; docs/chaos.md has their numbers and the bugs."""
import importlib.util
import sys

import pytest

from harness import BUILD, REPO, SANITIZER_PATTERNS

CHAOS = REPO / "chaos"
sys.path.insert(0, str(CHAOS))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


chaos_run = _load("flicker_chaos_run", CHAOS / "run.py")
from scenario import SMOKE, summary_line  # noqa: E402  (chaos/, on the path above)

FAULTS = {
    "asg-follower": chaos_run.fault_follower,
    "placement": chaos_run.fault_placement,
    "worker": chaos_run.fault_worker,
}


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="sandboxes need root")
@pytest.mark.parametrize("name", list(FAULTS))
def test_chaos_smoke(name, tmp_path):
    res = chaos_run.run_single(name, FAULTS[name], BUILD, tmp_path, SMOKE)
    print("\n" + summary_line(res))
    logs = sorted((tmp_path / name).glob("flicker.*.log"))
    hits = [line for p in logs for line in p.read_text(errors="replace").splitlines()
            if any(s in line for s in SANITIZER_PATTERNS)]
    assert not hits, f"sanitizer reports: {hits[:10]}"
    assert res.verdict != "ERROR", f"the scenario did not run: {res.notes}"
    # The load really ran, before and after the fault.
    assert res.sync >= 20 and res.accepted >= 10, f"too little load: {res.sync} sync, {res.accepted} events"
    assert res.whole is not None, f"never whole again (monitor saw: {res.unhealthy}); {res.notes}"
    assert res.lost == 0, f"accepted events lost: {res.details.get('lost ids')}"
    assert res.queued == 0, f"{res.queued} accepted events still queued after draining"
    assert res.orphans == 0, f"orphaned environments: {res.details.get('orphan check')}"
    assert res.double == 0, (f"environments handed to two requests: journal "
                             f"{res.details.get('double (journal)')}, function {res.details.get('double (function)')}")
    assert res.handouts > 0, "the journal check saw no hand-out at all"
    assert not res.left, f"left after SIGTERM: {res.left}"
    assert res.stop_rc == 0, f"flicker up exited {res.stop_rc} on SIGTERM"
