"""`flicker up --split`: every role its own process (placement, three
assignment replicas over the file journal, a worker, the frontend), the
same Lambda API on top.  Checks the invoke path across processes, that
status shows the roles, that killing the assignment leader or the worker
does not stop the service (the supervisor restarts what died; a follower
takes over the table), and the leadership rules over the file journal:
followers report the current term, a leader whose journal stops answering
steps down by its own lease clock, and a replica restarted at its old
address never resumes the dead leader's term.  The replicas are asked
directly over their unix sockets (netns.rpc_call), since the frontend's
status shows only the replica it believes leads."""
import fcntl
import json
import os
import signal
import time
import uuid

import pytest

from harness import ISOLATION, SLOW, create_function, do_invoke
from netns import rpc_call


@pytest.fixture(scope="module")
def split(workroot):
    from harness import Server
    srv = Server(workroot / f"split-{uuid.uuid4().hex[:6]}", args=["--split"], keep_alive=120)
    srv.start()
    yield srv
    if srv.running():
        rc = srv.stop()
        assert rc == 0, f"flicker up --split exited {rc}; log:\n{srv.log_tail()}"


def status(srv):
    st, _, body = srv.raw("GET", "/flicker/status")
    assert st == 200, body
    return json.loads(body)


def wait_for(pred, timeout=60 * SLOW, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # the service may be failing over
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def replica_statuses(srv):
    """address -> asg.status of every assignment replica, asked directly
    (None for one that does not answer)."""
    out = {}
    for addr in status(srv)["assignment"]["replicas"]:
        try:
            out[addr] = rpc_call(addr, "asg.status", timeout=2)
        except (OSError, ValueError):
            out[addr] = None
    return out


def current_leader(srv):
    """(address, term) of the replica that says it leads, or None."""
    for addr, st in replica_statuses(srv).items():
        if st and st.get("role") == "leader":
            return addr, st["term"]
    return None


def role_pids(srv):
    """name -> pid of the supervisor's children, from their command lines."""
    out = {}
    for pid in srv.descendants():
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"serve" in cmd:
            i = cmd.index(b"serve")
            role = cmd[i + 1].decode()
            if b"--id" in cmd:
                role = cmd[cmd.index(b"--id") + 1].decode()
            out[role] = pid
    return out


def test_invoke_across_processes(split):
    c = split.client()
    name = "split-echo-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_echo")
    r1 = do_invoke(c, name, {"n": 1})
    r2 = do_invoke(c, name, {"n": 2})
    assert r1.status == 200 and r1.function_error is None, r1
    assert r1.json["event"] == {"n": 1} and r2.json["event"] == {"n": 2}
    assert r1.json["env_id"] == r2.json["env_id"], "second invoke was not warm"


def test_function_error_and_tail(split):
    c = split.client()
    name = "split-err-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_error")
    r = do_invoke(c, name, {}, LogType="Tail")
    assert r.function_error == "Unhandled"
    assert r.json["errorType"] == "CustomError"
    assert "START RequestId" in r.log_tail and "REPORT RequestId" in r.log_tail


def test_status_shows_roles(split):
    # The frontend refreshes what it knows of assignment and placement
    # every second.
    st = wait_for(lambda: (lambda d: d if d["assignment"].get("role") == "leader"
                           and d.get("placement", {}).get("workers") else None)(status(split)),
                  what="status with the leader and the workers")
    assert st["mode"] == "split"
    assert len(st["assignment"]["replicas"]) == 3
    roles = role_pids(split)
    assert {"assignment-1", "assignment-2", "assignment-3", "worker-1"} <= set(roles), roles
    listed = {r["name"]: r for r in st["roles"]}
    assert set(listed) == {"placement", "assignment-1", "assignment-2", "assignment-3",
                           "worker-1", "frontend"}, listed
    for name, pid in roles.items():
        assert listed[name]["pid"] == pid and listed[name]["state"] == "running"
    assert st["assignment"]["role"] == "leader" and st["assignment"]["term"] >= 1
    workers = st["placement"]["workers"]
    assert [w["id"] for w in workers] == ["worker-1"]
    assert workers[0]["state"] == "active" and workers[0]["lease_remaining_ms"] > 0
    # the isolation backend, and for microVMs the accelerator, said plainly
    assert workers[0]["isolation"] == (ISOLATION or "sandbox")
    if ISOLATION == "microvm":
        assert workers[0]["microvm_accelerator"] in ("kvm", "tcg")


def test_replicas_report_current_term(split):
    """Every replica reports the current term: followers learn it from the
    journal (they never led in it), so all three agree with the leader and
    name it."""
    addr, term = wait_for(lambda: current_leader(split), what="an assignment leader")

    def agree():
        sts = replica_statuses(split)
        ok = all(st and st.get("term") == term and st.get("leader") == addr for st in sts.values())
        return sts if ok else None
    try:
        sts = wait_for(agree, timeout=10 * SLOW, what="every replica reporting the leader's term")
    except AssertionError:
        pytest.fail(f"leader {addr} term {term}; replicas report "
                    f"{ {a: (s or {}).get('term') for a, s in replica_statuses(split).items()} }")
    assert sorted(st["role"] for st in sts.values()) == ["follower", "follower", "leader"]


def test_stuck_journal_leader_steps_down(split):
    """The file journal stops answering (the test holds its lock, so every
    journal call blocks, as on a hung disk): the leader stops being leader
    by its own lease clock, and asg.status says so, about a lease (1 s)
    later instead of whenever the journal answers again.  Released, a
    leader serves again: the same replica in the same term if its waiting
    renew got the lock first (nobody else can have led), or another one
    with a higher term; invokes work."""
    c = split.client()
    name = "split-stuck-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_echo")
    assert do_invoke(c, name, {}).status == 200
    addr, term = wait_for(lambda: current_leader(split), what="an assignment leader")
    fd = os.open(split.data / "journal" / "leader", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t0 = time.time()

        def stepped_down():
            st = rpc_call(addr, "asg.status", timeout=2)
            return st if st.get("role") == "follower" else None
        wait_for(stepped_down, timeout=15 * SLOW, what=f"{addr} to report follower")
        took = time.time() - t0
        print(f"journal locked: the leader reported follower after {took:.2f} s (lease 1 s)")
        assert took < 4 * SLOW, f"the leader said leader for {took:.1f} s with a stuck journal"
        assert not any(st and st.get("role") == "leader" for st in replica_statuses(split).values())
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    new = wait_for(lambda: current_leader(split), what="a leader once the journal answers")
    print(f"journal released: {new[0]} leads with term {new[1]} (was {addr}, term {term})")
    assert new[1] > term or (new[1] == term and new[0] == addr), (new, addr, term)
    r = wait_for(lambda: (lambda x: x if x.status == 200 and x.function_error is None else None)(
        do_invoke(c, name, {"after": "stuck"})), what="an invoke after the journal answered again")
    assert r.json["event"] == {"after": "stuck"}


def test_assignment_leader_killed(split):
    c = split.client()
    name = "split-failover-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_echo")
    first = do_invoke(c, name, {"n": 1})
    assert first.status == 200
    old = wait_for(lambda: current_leader(split), what="the leader and its term")
    pids = role_pids(split)
    victim = next((pids[r] for r in pids if r.startswith("assignment") and f"/{r}.sock" in old[0]), None)
    assert victim, (old, pids)
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    r = wait_for(lambda: do_invoke(c, name, {"n": 2}), what="an invoke after the leader died")
    took = time.time() - t0
    assert r.status == 200 and r.function_error is None, r
    print(f"invoke answered {took:.2f} s after the assignment leader was killed")
    # The supervisor restarts the killed replica at its old address within
    # the old lease; whoever leads now (that one included) won an election:
    # the term is higher, never the dead leader's again.
    new = wait_for(lambda: current_leader(split), what="a leader after the kill")
    assert new[1] > old[1], f"leader {new[0]} has term {new[1]}; the killed leader {old[0]} had {old[1]}"


def test_worker_killed(split):
    c = split.client()
    name = "split-worker-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_echo")
    assert do_invoke(c, name, {}).status == 200
    pids = role_pids(split)
    os.kill(pids["worker-1"], signal.SIGKILL)
    r = wait_for(lambda: (lambda x: x if x.status == 200 and x.function_error is None else None)(
        do_invoke(c, name, {})), what="an invoke after the worker was restarted")
    assert r.json["event"] == {}


def test_events_survive_frontend_kill9(split):
    """Event invocations accepted (202) while the function is throttled stay
    queued through a kill -9 of the frontend process; the supervisor
    restarts it and every event runs."""
    c = split.client()
    name = "split-async-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_async")
    c.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    markers = [uuid.uuid4().hex for _ in range(3)]
    for m in markers:
        r = c.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"marker": m}))
        assert r["StatusCode"] == 202
    os.kill(role_pids(split)["frontend"], signal.SIGKILL)
    wait_for(lambda: split.health() == 200, what="the frontend to be restarted")
    c = split.new_client() if hasattr(split, "new_client") else split.client()
    wait_for(lambda: c.delete_function_concurrency(FunctionName=name) or True,
             what="the control plane after the restart")

    def ran():
        text = split.logs(name)[0]
        return all(f"ATTEMPT {m} " in text for m in markers)
    wait_for(ran, timeout=120 * SLOW, what="every queued event to run")


def test_leases_of_a_killed_frontend_are_reclaimed(spawn):
    """A frontend killed while it holds environments never releases them.
    The assignment leader's sweep finds them busy in its table but idle on
    their worker and makes them idle again, so the account's concurrency is
    not used up for ever (with a limit of 3 and three leases lost, every
    invoke would be throttled without it)."""
    srv = spawn("--account-concurrency", "3", keep_alive=120)
    c = srv.client(read_timeout=60)
    name = "split-reclaim-" + uuid.uuid4().hex[:6]
    create_function(c, name, "py_echo")
    import concurrent.futures as cf

    markers = [uuid.uuid4().hex for _ in range(3)]

    def slow(i):
        try:
            return do_invoke(srv.client(read_timeout=60), name,
                             {"sleep": 3, "marker": markers[i]}).status
        except Exception as e:  # the frontend dies under them
            return type(e).__name__
    with cf.ThreadPoolExecutor(3) as pool:
        futs = [pool.submit(slow, i) for i in range(3)]
        # all three running in their environments (not still starting: a
        # cold start whose requester is gone is kept idle by the leader)
        wait_for(lambda: all(f"STARTED {m}" in srv.logs(name)[0] for m in markers),
                 timeout=60 * SLOW, what="three invocations running")
        os.kill(role_pids(srv)["frontend"], signal.SIGKILL)
        [f.result() for f in futs]
    wait_for(lambda: srv.health() == 200, what="the frontend to be restarted")
    c = srv.client(read_timeout=60)
    # the three leases were never released: the sweep (every 5 s, two
    # sightings) gives them back; then three at once run again
    t0 = time.time()

    def three_ok():
        with cf.ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda _: do_invoke(srv.client(read_timeout=60), name,
                                                    {"sleep": 0.5}).status, range(3)))
        return got if got == [200, 200, 200] else None
    wait_for(three_ok, timeout=60 * SLOW, what="three concurrent invokes after the reclaim")
    print(f"leases reclaimed {time.time() - t0:.1f} s after the frontend came back")
    assert "made idle" in srv.log_text(all_generations=True)
