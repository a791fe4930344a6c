#!/usr/bin/python3
"""bench/failover.py - assignment failover time over repeated leader kills
(part of `make bench`; `make bench-failover` alone).

Starts `flicker up` (one process per role: 3 assignment replicas over the
file journal, leader lease 1 s) on a fresh data directory, creates a
provided-runtime function and keeps one environment warm.  Then, KILLS
times: finds the assignment leader's pid in /flicker/status, sends it
SIGKILL and at once invokes the function (the frontend holds the request
while it looks for the new leader).  Measured per kill:

  takeover  kill -> /flicker/status shows a leader serving a later term
            (polled every 10 ms);
  invoke    kill -> that first invocation's answer (service whole again
            for a client: the new leader reconciled and handed an
            environment out);
  failed    invocations that did not answer 200 (must be 0).

Between kills it waits until the supervisor has restarted the killed
replica and the new leader has served for 2 s.  Prints a Markdown table.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import Client, create, free_port, invoke  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status(port):
    st, _, body = Client(port).request("GET", "/flicker/status")
    return json.loads(body) if st == 200 else None


def leader_of(s):
    """(address, term) of the serving leader, or None."""
    a = (s or {}).get("assignment") or {}
    return (a.get("leader"), a.get("term")) if a.get("role") == "leader" else None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    flicker = os.path.join(args.build, "flicker")
    data = tempfile.mkdtemp(prefix="flicker-failover-bench-")
    port = free_port()
    env = dict(os.environ, FLICKER_ACCESS_KEY_ID="AKIAFLICKERBENCH0001",
               FLICKER_SECRET_ACCESS_KEY="benchsecretbenchsecret")
    log = open(os.path.join(data, "server.log"), "wb")
    proc = subprocess.Popen([flicker, "up", "--listen", "127.0.0.1:%d" % port, "--data", data],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    takeovers, invokes, failed = [], [], 0
    try:
        for _ in range(300):
            try:
                if Client(port).request("GET", "/flicker/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        c = Client(port)
        create(c, "failover", "provided")
        for _ in range(20):
            invoke(c, "failover")
        for k in range(args.kills):
            s = None
            for _ in range(500):
                s = status(port)
                if leader_of(s):
                    break
                time.sleep(0.02)
            old = leader_of(s)
            pid = [r["pid"] for r in s["roles"] if r.get("address") == old[0]][0]
            restarts = {r["name"]: r["restarts"] for r in s["roles"]}
            seen = {}

            def watch():
                end = time.time() + 30
                while time.time() < end:
                    try:
                        now = leader_of(status(port))
                    except OSError:
                        now = None
                    if now and now[1] > old[1]:  # a later term (even the restarted replica's)
                        seen["t"] = time.perf_counter()
                        return
                    time.sleep(0.01)
            w = threading.Thread(target=watch)
            os.kill(pid, signal.SIGKILL)
            t0 = time.perf_counter()
            w.start()
            st = 0
            try:
                st, _, _ = Client(port).request(
                    "POST", "/2015-03-31/functions/failover/invocations", b'{"k":%d}' % k)
            except OSError:
                pass
            t_inv = time.perf_counter()
            w.join()
            if st != 200:
                failed += 1
            invokes.append((t_inv - t0) * 1e3)
            if "t" in seen:
                takeovers.append((seen["t"] - t0) * 1e3)
            # the supervisor restarts the killed replica; let the new leader settle
            for _ in range(300):
                s = status(port)
                back = [r for r in s["roles"] if r["role"] == "assignment" and
                        r["restarts"] > restarts.get(r["name"], 0) and r["state"] == "running"]
                if back and leader_of(s):
                    break
                time.sleep(0.05)
            time.sleep(2)
        print("### Assignment failover, %d kills of the leader (`make bench-failover`)\n" % args.kills)
        print("%s, %d CPUs, %s; `flicker up` (file journal, lease 1 s); a kill -9 of the leader, then "
              "an invoke at once\n" % (platform.node(), os.cpu_count(), time.strftime("%Y-%m-%d")))
        print("| measured from the kill | n | min ms | p50 ms | p90 ms | max ms |")
        print("|---|---|---|---|---|---|")
        for name, xs in (("a new leader in /flicker/status", takeovers),
                         ("the first invoke's answer", invokes)):
            if xs:
                print("| %s | %d | %.0f | %.0f | %.0f | %.0f |" % (
                    name, len(xs), min(xs), pct(xs, .5), pct(xs, .9), max(xs)))
        print("\nInvocations that failed: %d of %d" % (failed, args.kills))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    main()
