#!/usr/bin/python3
"""bench/leader.py - how far one assignment leader goes (`make bench-leader`).

Starts `flicker up` (one process per role: 3 assignment replicas over the
file journal) on a fresh data directory, creates a provided-runtime
function with reserved concurrency W, warms W environments, then points
build/bench/asg_bench straight at the assignment leader's RPC socket:
CONCURRENCY loops of asg.acquire + asg.release, pipelined on one
connection.  Every warm acquire and every release is a table decision; the
leader answers at once and journals the idle/busy changes lazily (within
50 ms, coalesced: docs/assignment.md); acquires over W are throttled.

Prints a Markdown table (paste into docs/benchmarks.md).
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--warm", type=int, default=8, help="warm environments (reserved concurrency)")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--concurrency", default="1,4,8,32")
    args = ap.parse_args()
    flicker = os.path.join(args.build, "flicker")
    bench = os.path.join(args.build, "bench", "asg_bench")
    data = tempfile.mkdtemp(prefix="flicker-leader-bench-")
    port = free_port()
    env = dict(os.environ, FLICKER_ACCESS_KEY_ID="AKIAFLICKERBENCH0001",
               FLICKER_SECRET_ACCESS_KEY="benchsecretbenchsecret")
    log = open(os.path.join(data, "server.log"), "wb")
    proc = subprocess.Popen([flicker, "up", "--listen", "127.0.0.1:%d" % port, "--data", data],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        c = Client(port)
        for _ in range(200):
            try:
                if c.request("GET", "/flicker/health")[0] == 200:
                    break
            except OSError:
                c = Client(port)
            time.sleep(0.1)
        name = "leaderbench"
        create(c, name, "provided", memory=128)
        st, _, _ = c.request("PUT", "/2017-10-31/functions/%s/concurrency" % name,
                             json.dumps({"ReservedConcurrentExecutions": args.warm}).encode())
        assert st == 200, st
        # warm W environments: W invokes at once, each held ~1 s by a slow event
        threads = [threading.Thread(target=lambda: invoke(Client(port), name, b'{"k":1}'))
                   for _ in range(args.warm)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st, _, body = c.request("GET", "/2015-03-31/functions/%s" % name)
        fn = json.loads(body)["Configuration"]
        st, _, body = c.request("GET", "/flicker/status")
        status = json.loads(body)
        leader = status["assignment"].get("leader") or status["assignment"]["believed_leader"]
        table = status["assignment"].get("table", {})
        code_hex = None
        for d in os.listdir(os.path.join(data, "code")):
            code_hex = d
        arn = fn["FunctionArn"]
        config = {
            "name": name, "version": "$LATEST", "arn": arn, "runtime": fn["Runtime"],
            "handler": fn.get("Handler", ""), "memory_mb": fn["MemorySize"],
            "timeout_s": fn["Timeout"], "ephemeral_mb": 512, "env_vars": {},
            "code_sha256": fn["CodeSha256"], "code_dir": os.path.join(data, "code", code_hex),
            "revision_id": fn["RevisionId"], "reserved_concurrency": args.warm,
            "config_key": "%s:$LATEST:%s" % (name, fn["RevisionId"]),
            "qualified_arn": arn + ":$LATEST", "max_retry_attempts": 2, "max_event_age_s": 21600,
        }
        cfg_path = os.path.join(data, "bench-config.json")
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        rows = []
        for conc in [int(x) for x in args.concurrency.split(",")]:
            out = subprocess.run([bench, leader, cfg_path, str(conc), str(args.seconds)],
                                 capture_output=True, text=True, timeout=args.seconds * 4 + 30)
            if out.returncode != 0:
                print(out.stdout, out.stderr, file=sys.stderr)
                raise SystemExit("asg_bench failed")
            rows.append((conc, json.loads(out.stdout)))
        print("### One assignment leader (`make bench-leader`)\n")
        print("%s, %d CPUs, %s; file journal (idle/busy journaled lazily), %d warm environments, "
              "%.0f s per row; leader %s; table before: %s\n"
              % (platform.node(), os.cpu_count(), time.strftime("%Y-%m-%d"), args.warm,
                 args.seconds, leader, json.dumps(table)[:200]))
        print("| loops in flight | decisions/s | warm acquires/s | releases/s | throttled/s | "
              "acquire p50 µs | acquire p99 µs | errors |")
        print("|---|---|---|---|---|---|---|---|")
        for conc, r in rows:
            s = r["seconds"]
            print("| %d | %.0f | %.0f | %.0f | %.0f | %d | %d | %d |" % (
                conc, r["decisions_per_s"], r["acquires"] / s, r["releases"] / s,
                r["throttled"] / s, r["p50_us"], r["p99_us"], r["errors"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


if __name__ == "__main__":
    main()
