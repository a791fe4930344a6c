"""Spins every CPU it can for event {"seconds": S} (default 10), in several
processes, printing "STARTED <marker>" first."""
import multiprocessing
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
    procs = [multiprocessing.Process(target=spin, args=(seconds,)) for _ in range(4)]
    for p in procs:
        p.start()
    spin(seconds)
    for p in procs:
        p.join()
    return {"spun": seconds, "pid": os.getpid()}
