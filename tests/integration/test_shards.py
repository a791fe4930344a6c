"""`flicker up --assignment-shards 2`: the assignment table split by
function over two leader groups (three replicas and a journal each).

Checks that functions land in both shards and are served, that killing one
shard's leader leaves the other shard's functions untouched while its own
fail over, and the documented concurrency rule: reserved concurrency stays
exact, the account's unreserved pool is split evenly between shards."""
import concurrent.futures as cf
import json
import os
import signal
import time
import uuid

import pytest
from botocore.exceptions import ClientError

from harness import SLOW, client_error_code, create_function, do_invoke
from test_split import role_pids, status, wait_for


@pytest.fixture(scope="module")
def sharded(workroot):
    from harness import Server
    srv = Server(workroot / f"shards-{uuid.uuid4().hex[:6]}",
                 args=["--assignment-shards", "2", "--account-concurrency", "4"], keep_alive=120)
    srv.start()
    yield srv
    if srv.running():
        rc = srv.stop()
        assert rc == 0, f"flicker up exited {rc}; log:\n{srv.log_tail()}"


def shard_of(name, shards=2):
    """The documented placement of a function's environments: FNV-1a of the
    name, murmur3's final avalanche, modulo the number of shards."""
    h = 2166136261
    for ch in name.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    h ^= h >> 16
    return h % shards


def shard_tables(srv):
    """shard -> set of function names with environments in it."""
    st = status(srv)
    out = {}
    for sh in st["assignment_shards"]:
        fns = set()
        for env in (sh.get("table") or {}).get("envs", []):
            fns.add(env.get("function"))
        out[sh["shard"]] = fns
    return out


def test_functions_spread_over_shards_and_fail_over(sharded):
    c = sharded.client()
    st = wait_for(lambda: (lambda d: d if all(s.get("role") == "leader" for s in d["assignment_shards"])
                           else None)(status(sharded)), what="a leader in every shard")
    assert len(st["assignment_shards"]) == 2
    names, per = [], {0: 0, 1: 0}
    while len(names) < 6:  # three functions for each shard
        n = f"shard-{uuid.uuid4().hex[:8]}"
        if per[shard_of(n)] < 3:
            per[shard_of(n)] += 1
            names.append(n)
    for n in names:
        create_function(c, n, "py_echo")
        r = do_invoke(c, n, {"n": n})
        assert r.status == 200 and r.json["event"] == {"n": n}
    tables = wait_for(lambda: (lambda t: t if sum(len(v & set(names)) for v in t.values()) == 6
                               else None)(shard_tables(sharded)), what="every function in a table")
    for n in names:
        assert n in tables[shard_of(n)], f"{n} expected in shard {shard_of(n)}: {tables}"
    # no function is in two shards
    assert not (tables[0] & tables[1] & set(names))

    # kill shard 1's leader: shard 0's functions keep their warm environments,
    # shard 1's fail over (a follower of that group takes the table)
    st = status(sharded)
    leader1 = st["assignment_shards"][1]["leader"]
    pids = role_pids(sharded)
    victim = next(pids[r] for r in pids if r.startswith("assignment-s2-") and r in leader1)
    in0 = [n for n in names if n in tables[0]]
    in1 = [n for n in names if n in tables[1]]
    before = {n: do_invoke(c, n, {}).json["env_id"] for n in in0}
    os.kill(victim, signal.SIGKILL)
    for n in in0:
        r = do_invoke(c, n, {})
        assert r.status == 200 and r.json["env_id"] == before[n], "shard 0 was disturbed"
    t0 = time.time()
    for n in in1:
        r = wait_for(lambda: do_invoke(c, n, {}), what=f"{n} after its shard's leader died")
        assert r.status == 200
    print(f"shard 1 served again {time.time() - t0:.2f} s after its leader was killed")


def test_unreserved_pool_is_split_between_shards(sharded):
    """--account-concurrency 4 over 2 shards: an unreserved function gets at
    most 2 at once (its shard's half of the pool), where one leader would
    have given it 4.  (Reserved concurrency needs no split: a function lives
    in one shard; PutFunctionConcurrency keeps 100 unreserved, so that case
    needs a larger account and is covered by test_frontends.py.)"""
    c = sharded.client(read_timeout=120)
    free_fn = "pool-" + uuid.uuid4().hex[:6]
    create_function(c, free_fn, "py_echo")

    def burst(name, n):
        def one(_):
            try:
                return do_invoke(sharded.client(read_timeout=120), name, {"sleep": 3}).status
            except ClientError as e:
                return client_error_code(e)
        with cf.ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))

    got = burst(free_fn, 3)
    assert got.count(200) == 2 and got.count("TooManyRequestsException") == 1, got
