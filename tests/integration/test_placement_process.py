"""test_placement_process.py - `flicker serve placement` as its own process.

What: starts `build/flicker serve placement --listen tcp:127.0.0.1:PORT
--provider none` (short heartbeat timeout) and talks to it with a tiny
Python RPC client written from docs/rpc.md (4-byte big-endian header
length, 4-byte big-endian body length, JSON header, body): two fake workers
register, a pick spreads over their zones, one worker stops heartbeating
and is reported LOST (state + `worker.lost` notification to a connected
client), and SIGTERM makes the process exit 0.  A second test checks how
placement counts environments per function without being told: picks with
an `env_id` reserve room, heartbeats' `envs` lists confirm and replace the
counts, `placement.env_removed {worker_id, env_id}` releases a reservation,
an unconfirmed one lapses after the heartbeat timeout.

How: plain sockets, no event loop; every wait polls against a generous
deadline (nothing asserts on timing).  The process's stderr goes to a file
that is printed on failure and scanned for sanitizer reports (ASan build).

Invariants: the process is always stopped (SIGKILL as a last resort) and
must exit 0 after SIGTERM.
"""
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from harness import BINARY, IS_ASAN, SANITIZER_PATTERNS, SLOW, free_port

DEADLINE = 30 * SLOW


class Rpc:
    """A minimal synchronous client: requests with ids, notifications kept."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.next_id = 1
        self.buf = b""
        self.notes = []

    def close(self):
        self.sock.close()

    def send(self, header, body=b""):
        h = json.dumps(header, separators=(",", ":")).encode()
        self.sock.sendall(struct.pack(">II", len(h), len(body)) + h + body)

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("placement closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        hlen, blen = struct.unpack(">II", self._read_exact(8))
        header = json.loads(self._read_exact(hlen))
        body = self._read_exact(blen)
        return header, body

    def call(self, method, **params):
        rid = self.next_id
        self.next_id += 1
        self.send({"id": rid, "m": method, **params})
        while True:
            header, _ = self.read_frame()
            if header.get("id") == rid:
                header.pop("id")
                return header
            if "m" in header and "id" not in header:
                self.notes.append(header)

    def wait_note(self, method, timeout):
        """Reads frames until a notification `method` arrives."""
        deadline = time.monotonic() + timeout
        while True:
            for n in self.notes:
                if n["m"] == method:
                    return n
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {method} notification within {timeout}s (got {self.notes})")
            self.sock.settimeout(left)
            try:
                header, _ = self.read_frame()
            except socket.timeout:
                continue
            finally:
                self.sock.settimeout(DEADLINE)
            if "m" in header and "id" not in header:
                self.notes.append(header)


@pytest.fixture
def placement(tmp_path):
    port = free_port()
    log_path = tmp_path / "placement.log"
    log = open(log_path, "wb")
    env = dict(os.environ)
    if IS_ASAN:
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    proc = subprocess.Popen(
        [str(BINARY), "serve", "placement", "--listen", f"tcp:127.0.0.1:{port}",
         "--provider", "none", "--heartbeat-timeout-ms", "1500", "--data", str(tmp_path)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("placement did not start:\n" + log_path.read_text(errors="replace"))
            time.sleep(0.05)
    info = {"proc": proc, "port": port, "log": log_path}
    yield info
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    text = log_path.read_text(errors="replace")
    hits = [line for line in text.splitlines() if any(p in line for p in SANITIZER_PATTERNS)]
    assert not hits, "sanitizer report in placement output:\n" + text


def test_placement_process(placement):
    proc, port = placement["proc"], placement["port"]
    try:
        listener = Rpc(port)     # stands for assignment: gets worker.lost
        status = listener.call("placement.status")
        assert status["active"] == 0 and status["workers"] == []

        w1, w2 = Rpc(port), Rpc(port)
        r1 = w1.call("worker.register", worker_id="w1", address="tcp:127.0.0.1:7001",
                     zone="a", memory_mb=2048, cpus=2)
        r2 = w2.call("worker.register", worker_id="w2", address="tcp:127.0.0.1:7002",
                     zone="b", memory_mb=2048, cpus=2)
        now_ms = time.time() * 1000
        assert r1["lease_expiry_ms"] > now_ms + 13 * 3600 * 1000   # 14 h default lease
        assert r2["lease_expiry_ms"] > now_ms + 13 * 3600 * 1000

        # two environments of one function land in different zones
        zones = set()
        for _ in range(2):
            p = listener.call("placement.pick", function="fn", memory_mb=256)
            assert "error" not in p, p
            zones.add(p["zone"])
            assert listener.call("placement.env_added", worker_id=p["worker_id"],
                                 function="fn", memory_mb=256) == {}
        assert zones == {"a", "b"}
        assert listener.call("placement.pick", function="fn", memory_mb=4096)["error"]["code"] \
            == "NoCapacity"
        bad = listener.call("worker.register", worker_id="w3")
        assert bad["error"]["code"] == "InvalidParams"

        # w1 keeps heartbeating; w2 falls silent and is LOST
        deadline = time.monotonic() + DEADLINE
        lost = None
        while time.monotonic() < deadline:
            hb = w1.call("worker.heartbeat", worker_id="w1", memory_used_mb=256, environments=1)
            assert hb == {"state": "active"}, hb
            workers = {w["id"]: w for w in listener.call("placement.workers")["workers"]}
            if workers["w2"]["state"] == "lost":
                lost = workers
                break
            time.sleep(0.2)
        assert lost, "w2 never became lost"
        assert lost["w1"]["state"] == "active"
        note = listener.wait_note("worker.lost", DEADLINE)
        assert note == {"m": "worker.lost", "worker_id": "w2", "address": "tcp:127.0.0.1:7002"}
        assert w2.call("worker.heartbeat", worker_id="w2", memory_used_mb=0,
                       environments=0) == {"state": "lost"}
        # picks avoid the lost worker
        p = listener.call("placement.pick", function="fn", memory_mb=256)
        assert p["worker_id"] == "w1"
        status = listener.call("placement.status")
        assert status["active"] == 1 and status["lost"] == 1
        for c in (listener, w1, w2):
            c.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0
    assert "stopped" in placement["log"].read_text(errors="replace")


def test_counts_from_picks_and_heartbeats(placement):
    """Placement counts each function's environments per worker (what zone
    spread uses) without being told by assignment: `placement.pick` with an
    `env_id` reserves room at once (so the next pick already spreads), a
    heartbeat's `envs` list confirms the reservations it names and replaces
    the counts, `placement.env_removed {worker_id, env_id}` gives back a
    reservation whose environment was not created, and a reservation no
    heartbeat confirms lapses after the heartbeat timeout (1.5 s here)."""
    proc, port = placement["proc"], placement["port"]
    try:
        c, w1, w2 = Rpc(port), Rpc(port), Rpc(port)
        for w, wid, zone in ((w1, "w1", "a"), (w2, "w2", "b")):
            r = w.call("worker.register", worker_id=wid, address=f"tcp:127.0.0.1:70{wid[1]}0",
                       zone=zone, memory_mb=4096, cpus=2)
            assert "error" not in r, r
        placed = {"w1": [], "w2": []}
        for i in range(4):  # no heartbeat in between: only reservations spread them
            p = c.call("placement.pick", function="fn", memory_mb=128, env_id=f"env{i}")
            assert "error" not in p, p
            placed[p["worker_id"]].append(f"env{i}")
        assert sorted(map(len, placed.values())) == [2, 2], placed

        def view():
            st = c.call("placement.status")
            return {w["id"]: (w["functions"], w["environments_reserved"], w["memory_reserved_mb"])
                    for w in st["workers"]}
        assert view() == {"w1": ({"fn": 2}, 2, 256), "w2": ({"fn": 2}, 2, 256)}

        # w1 created both (and runs one of g that placement never placed)
        envs = [{"env_id": e, "function": "fn", "memory_mb": 128} for e in placed["w1"]]
        envs.append({"env_id": "other", "function": "g", "memory_mb": 128})
        hb = w1.call("worker.heartbeat", worker_id="w1", memory_used_mb=384, environments=3, envs=envs)
        assert hb == {"state": "active"}, hb
        assert view()["w1"] == ({"fn": 2, "g": 1}, 0, 0)
        # one of w2's creates failed: assignment gives the room back
        gone = placed["w2"][0]
        assert c.call("placement.env_removed", worker_id="w2", env_id=gone) == {"reserved": True}
        assert c.call("placement.env_removed", worker_id="w2", env_id=gone) == {"reserved": False}
        assert view()["w2"] == ({"fn": 1}, 1, 128)
        assert c.call("placement.env_removed", worker_id="nope", env_id="x")["error"]["code"] \
            == "UnknownWorker"
        # malformed lists are refused and change nothing
        for bad in ("nope", [{"env_id": "y"}], [{"env_id": "", "function": "fn", "memory_mb": 1}]):
            r = w1.call("worker.heartbeat", worker_id="w1", envs=bad)
            assert r.get("error", {}).get("code") == "InvalidParams", (bad, r)
        assert view()["w1"] == ({"fn": 2, "g": 1}, 0, 0)
        # w2's other environment is never reported: its reservation lapses
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and view()["w2"][1]:
            for w, wid in ((w1, "w1"), (w2, "w2")):  # both stay alive meanwhile
                assert w.call("worker.heartbeat", worker_id=wid, memory_used_mb=0,
                              environments=0) == {"state": "active"}
            time.sleep(0.2)
        assert view()["w2"] == ({}, 0, 0)
        # the list replaces: w1's keep-alive ended one of fn
        w1.call("worker.heartbeat", worker_id="w1", envs=envs[1:])
        assert view()["w1"] == ({"fn": 1, "g": 1}, 0, 0)
        for x in (c, w1, w2):
            x.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0
