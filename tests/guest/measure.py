"""measure.py - timings of the microVM guest under QEMU (docs/guest.md).

    /usr/bin/python3 tests/guest/measure.py [RUNS]

For RUNS boots (default 5) of the python image: QEMU start to HELLO, and
START to the runtime's first GET /next (the cold start a snapshot saves);
then, from a snapshot of one of them taken while it waits in GET /next,
RUNS restores: QEMU start (state load included) to RESTORED, and to the
replayed GET /next reaching the host.  Prints medians and the ratio.  Not a
test: it asserts nothing beyond the steps working.
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import guestvm as g  # noqa: E402
from test_guest import PY_HANDLER, FakeRuntimeAPI, runtime_env, wait_api  # noqa: E402

ARGV = ["/usr/bin/python3", "-u", "/var/runtime/python/bootstrap.py"]
ENV = runtime_env("lambda_function.handler")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    work = tempfile.mkdtemp(prefix="flicker-measure-")
    code = g.make_erofs({"lambda_function.py": (PY_HANDLER, 0o644)}, work, "fn")
    hello, init, snap = [], [], None
    for i in range(runs):
        api = FakeRuntimeAPI()
        vm = g.GuestVM(work, "python", code_img=code, api=api.address, console=False, name="b%d" % i)
        try:
            vm.start()
            vm.wait_frame(g.HELLO)
            hello.append(vm.hello_after)
            t0 = time.monotonic()
            vm.send_start(ARGV, ENV)
            wait_api(vm, api, lambda a: a.next_calls >= 1)
            init.append(time.monotonic() - t0)
            if snap is None:
                vm.settle(0.3)
                snap = os.path.join(work, "state")
                t0 = time.monotonic()
                vm.snapshot(snap)
                print("snapshot: %.3f s, %.1f MB" % (time.monotonic() - t0, os.path.getsize(snap) / 1e6))
        finally:
            vm.close()
            api.close()
    restored, replayed = [], []
    for i in range(runs):
        api = FakeRuntimeAPI()
        vm = g.GuestVM(work, "python", code_img=code, api=api.address, console=False, name="r%d" % i)
        try:
            t0 = time.monotonic()
            vm.start(incoming=snap)
            vm.wait_incoming()
            vm.send(g.RESTORE, 0, os.urandom(48))
            vm.wait_frame(g.RESTORED)
            restored.append(time.monotonic() - t0)
            wait_api(vm, api, lambda a: a.next_calls >= 1)
            replayed.append(time.monotonic() - t0)
        finally:
            vm.close()
            api.close()
    med = statistics.median
    print("boot: QEMU start to HELLO          median %.3f s  (%s)" % (med(hello), " ".join("%.2f" % x for x in hello)))
    print("cold init: START to first GET /next median %.3f s  (%s)" % (med(init), " ".join("%.2f" % x for x in init)))
    print("boot + init                         median %.3f s" % (med(hello) + med(init)))
    print("restore: QEMU start to RESTORED    median %.3f s  (%s)" % (med(restored), " ".join("%.2f" % x for x in restored)))
    print("restore to GET /next at the host    median %.3f s" % med(replayed))
    print("restore / (boot + init)             %.0f %%" % (100 * med(replayed) / (med(hello) + med(init))))


if __name__ == "__main__":
    main()
