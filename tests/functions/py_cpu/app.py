"""Spins 5 processes (itself and 4 forked children) for event
{"seconds": S} (default 10), printing "STARTED <marker>" first."""
import os
import time


def spin(seconds):
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1
    return x


def handler(event, context):
    seconds = float((event or {}).get("seconds", 10))
    print(f"STARTED {(event or {}).get('marker', '')}", flush=True)
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            spin(seconds)
            os._exit(0)
        children.append(pid)
    spin(seconds)
    for pid in children:
        os.waitpid(pid, 0)
    return {"spun": seconds, "pid": os.getpid()}
