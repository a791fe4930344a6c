"""Forks until fork fails (the pids limit must stop it), then reports.
Children just pause; the environment is torn down around them."""
import os
import signal


def handler(event, context):
    # Bounded even when nothing contains it, so a broken sandbox cannot take
    # the host down: reaching the bound means the pids limit did not work.
    limit = int((event or {}).get("max", 2000))
    n = 0
    error = None
    while n < limit:
        try:
            pid = os.fork()
        except OSError as e:
            error = f"{type(e).__name__}: errno {e.errno}"
            break
        if pid == 0:
            signal.pause()
            os._exit(0)
        n += 1
    print(f"forkbomb forked {n} then {error}", flush=True)
    return {"forked": n, "error": error}
