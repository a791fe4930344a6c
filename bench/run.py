#!/usr/bin/python3
"""bench/run.py - flicker's benchmarks (`make bench`).

Starts its own `flicker up` on a free port with a fresh data directory and
measures, in one run so that ratios are comparable on a noisy machine:

  1. warm invoke latency vs. the same client's bare signed HTTP round trip
     (GET /flicker/health): the difference is what the invoke path adds;
     embedded vs split, then embedded vs split with the frontend's warm
     hold turned off (FLICKER_WARM_HOLD_MS=0: every invoke asks the
     assignment leader);
  2. warm throughput with C concurrent clients (own connection each);
  3. cold start latency per runtime (provided, python, node): each sample
     changes the configuration first so the next invoke needs a new
     environment;
  4. memory of idle environments (cgroup usage), per environment.

Prints a Markdown report (paste into docs/benchmarks.md).
"""
import argparse
import base64
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AKID, SECRET = "AKIAFLICKERBENCH0001", "benchsecretbenchsecret"
CREDS = Credentials(AKID, SECRET)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Client:
    """One keep-alive connection, SigV4-signed like botocore signs."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method, path, body=b"", headers=None):
        url = "http://127.0.0.1:%d%s" % (self.port, path)
        req = AWSRequest(method=method, url=url, data=body, headers=headers or {})
        SigV4Auth(CREDS, "lambda", "us-east-1").add_auth(req)
        self.conn.request(method, path, body=body, headers=dict(req.headers.items()))
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, dict(resp.getheaders()), data


def zip_of(files):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, (text, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, text)
    return buf.getvalue()


FUNCTIONS = {
    "provided": ("provided.al2023", "", {
        "bootstrap": ("#!/usr/bin/python3 -S\n"
                      "import http.client, os\n"
                      "api = os.environ['AWS_LAMBDA_RUNTIME_API']\n"
                      "c = http.client.HTTPConnection(api)\n"
                      "while True:\n"
                      "    c.request('GET', '/2018-06-01/runtime/invocation/next')\n"
                      "    r = c.getresponse(); body = r.read()\n"
                      "    rid = r.getheader('Lambda-Runtime-Aws-Request-Id')\n"
                      "    c.request('POST', '/2018-06-01/runtime/invocation/%s/response' % rid, body)\n"
                      "    c.getresponse().read()\n", 0o755)}),
    "python": ("python3.12", "app.handler", {
        "app.py": ("def handler(event, context):\n    return event\n", 0o644)}),
    "node": ("nodejs20.x", "index.handler", {
        "index.js": ("exports.handler = async (event) => event;\n", 0o644)}),
}


def create(client, name, kind, memory=1769):
    runtime, handler, files = FUNCTIONS[kind]
    body = json.dumps({
        "FunctionName": name, "Runtime": runtime, "Handler": handler or "none",
        "Role": "arn:aws:iam::000000000000:role/bench", "MemorySize": memory,
        "Code": {"ZipFile": base64.b64encode(zip_of(files)).decode()},
    }).encode()
    st, _, data = client.request("POST", "/2015-03-31/functions", body,
                                 {"Content-Type": "application/json"})
    assert st == 201, (st, data)


def invoke(client, name, payload=b'{"k":1}'):
    st, h, data = client.request("POST", "/2015-03-31/functions/%s/invocations" % name, payload)
    assert st == 200 and "X-Amz-Function-Error" not in h, (st, h, data)
    return data


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def bench_latency(port, name, n):
    c = Client(port)
    for _ in range(50):
        invoke(c, name)
        c.request("GET", "/flicker/health")
    bare, warm = [], []
    for _ in range(n):  # interleaved so both see the same machine load
        t = time.perf_counter()
        c.request("GET", "/flicker/health")
        bare.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        invoke(c, name)
        warm.append((time.perf_counter() - t) * 1e6)
    return bare, warm


def bench_throughput(port, name, conc, seconds):
    counts = [0] * conc
    stop = time.time() + seconds
    def run(i):
        c = Client(port)
        invoke(c, name)
        while time.time() < stop:
            invoke(c, name)
            counts[i] += 1
    threads = [threading.Thread(target=run, args=(i,)) for i in range(conc)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.time() - t0)


def warm_pair(servers, modes, samples):
    """Warm provided-runtime invoke latency (µs) of the given platforms,
    interleaved sample by sample, and the bare signed round trip."""
    clients = {m: Client(servers[m][1]) for m in modes}
    for c in clients.values():
        for _ in range(50):
            invoke(c, "bench-provided")
    bare, warm = [], {m: [] for m in modes}
    for _ in range(samples):
        t = time.perf_counter()
        clients[modes[0]].request("GET", "/flicker/health")
        bare.append((time.perf_counter() - t) * 1e6)
        for m, c in clients.items():
            t = time.perf_counter()
            invoke(c, "bench-provided")
            warm[m].append((time.perf_counter() - t) * 1e6)
    return bare, warm


def daemon_cpu_s(pid):
    """utime + stime of the flicker process, seconds."""
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_cold(port, name, n):
    c = Client(port)
    times = []
    for i in range(n):
        body = json.dumps({"Environment": {"Variables": {"SAMPLE": str(i)}}}).encode()
        st, _, data = c.request("PUT", "/2015-03-31/functions/%s/configuration" % name, body,
                                {"Content-Type": "application/json"})
        assert st == 200, (st, data)
        t = time.perf_counter()
        invoke(c, name)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def idle_memory(port, name, n):
    """Starts n environments at once, lets them go idle, reads their cgroups."""
    def one():
        invoke(Client(port), name, b'{"sleep":0}')
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.0)
    c = Client(port)
    st, _, data = c.request("GET", "/flicker/status")
    status = json.loads(data)
    envs = [e for w in status["workers"] for e in w["environments"] if e["function"] == name]
    usages = []
    import glob
    for e in envs:
        paths = (glob.glob("/sys/fs/cgroup/memory/flicker/*/%s/memory.usage_in_bytes" % e["id"]) +
                 glob.glob("/sys/fs/cgroup/flicker/*/%s/memory.current" % e["id"]))
        if paths:
            usages.append(int(open(paths[0]).read()))
    return len(envs), usages


def start_server(build, mode, data_root):
    port = free_port()
    data = os.path.join(data_root, mode.replace(" ", "_").replace(",", ""))
    env = dict(os.environ, FLICKER_ACCESS_KEY_ID=AKID, FLICKER_SECRET_ACCESS_KEY=SECRET)
    if mode == "split, no warm hold":  # every invoke asks the assignment leader
        env["FLICKER_WARM_HOLD_MS"] = "0"
    log = open(os.path.join(data_root, mode.replace(" ", "_").replace(",", "") + ".log"), "w")
    args = [os.path.join(build, "flicker"), "up", "--listen", "127.0.0.1:%d" % port, "--data", data]
    if mode == "embedded":
        args.append("--embedded")
    srv = subprocess.Popen(args, env=env, stdout=log, stderr=log)
    for _ in range(400):
        try:
            Client(port).request("GET", "/flicker/health")
            break
        except OSError:
            time.sleep(0.05)
    return srv, port


def front_pid(srv):
    """The process that serves HTTP: the frontend child in split mode."""
    for line in subprocess.run(["pgrep", "-P", str(srv.pid), "-a"], capture_output=True,
                               text=True).stdout.splitlines():
        if "serve frontend" in line:
            return int(line.split()[0])
    return srv.pid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--cold", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    data_root = tempfile.mkdtemp(prefix="flicker-bench-")
    servers = {}
    try:
        for mode in ("split", "embedded"):
            servers[mode] = start_server(args.build, mode, data_root)
            c = Client(servers[mode][1])
            for kind in FUNCTIONS:
                create(c, "bench-" + kind, kind)
        out = []
        out.append("Machine: %s, %d CPUs, %s; build %s; %s" % (
            platform.node(), os.cpu_count(), platform.platform(), args.build,
            time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())))
        out.append("Command: `make bench` (`/usr/bin/python3 bench/run.py --build %s`)\n" % args.build)
        # Warm path, both modes and the bare round trip interleaved.
        bare, warm = warm_pair(servers, ("embedded", "split"), args.samples)
        out.append("| warm path (%d samples, interleaved) | p50 µs | p90 µs | p99 µs |" % args.samples)
        out.append("|---|---|---|---|")
        out.append("| bare signed HTTP round trip (GET /flicker/health) | %.0f | %.0f | %.0f |" %
                   (pct(bare, .5), pct(bare, .9), pct(bare, .99)))
        for m in ("embedded", "split"):
            out.append("| warm invoke, provided runtime, %s | %.0f | %.0f | %.0f |" %
                       (m, pct(warm[m], .5), pct(warm[m], .9), pct(warm[m], .99)))
        out.append("| **split minus embedded (p50)** | **%.0f** | | |\n" %
                   (pct(warm["split"], .5) - pct(warm["embedded"], .5)))
        # The same pair again with the frontend's warm hold off (every
        # invoke asks the assignment leader): what the hold saves.
        nohold = "split, no warm hold"
        servers[nohold] = start_server(args.build, nohold, data_root)
        create(Client(servers[nohold][1]), "bench-provided", "provided")
        _, warm = warm_pair(servers, ("embedded", nohold), args.samples)
        srv, _ = servers.pop(nohold)
        srv.send_signal(signal.SIGTERM)
        srv.wait(60)
        out.append("| the same, warm hold off (%d samples, interleaved) | p50 µs | p90 µs | p99 µs |" %
                   args.samples)
        out.append("|---|---|---|---|")
        for m in ("embedded", nohold):
            out.append("| warm invoke, provided runtime, %s | %.0f | %.0f | %.0f |" %
                       (m, pct(warm[m], .5), pct(warm[m], .9), pct(warm[m], .99)))
        out.append("| **split without the warm hold minus embedded (p50)** | **%.0f** | | |\n" %
                   (pct(warm[nohold], .5) - pct(warm["embedded"], .5)))
        out.append("| mode | concurrency | invokes/s (warm, provided) | frontend CPU µs per invoke |")
        out.append("|---|---|---|---|")
        for m in ("embedded", "split"):
            srv, port = servers[m]
            pid = front_pid(srv)
            for conc in (1, 8, 32):
                cpu0 = daemon_cpu_s(pid)
                rate = bench_throughput(port, "bench-provided", conc, args.seconds)
                cpu = daemon_cpu_s(pid) - cpu0
                out.append("| %s | %d | %.0f | %.0f |" % (m, conc, rate, cpu * 1e6 / max(1, rate * args.seconds)))
        out.append("")
        out.append("| runtime | cold start p50 ms, embedded | p50 ms, split | (n=%d each) |" % args.cold)
        out.append("|---|---|---|---|")
        for kind in FUNCTIONS:
            e = bench_cold(servers["embedded"][1], "bench-" + kind, args.cold)
            sp = bench_cold(servers["split"][1], "bench-" + kind, args.cold)
            out.append("| %s | %.1f | %.1f | |" % (kind, pct(e, .5), pct(sp, .5)))
        n, usages = idle_memory(servers["embedded"][1], "bench-python", 20)
        if usages:
            out.append("\nIdle python environments: %d; cgroup memory each: median %.1f MiB "
                       "(includes the interpreter's own pages)" % (n, statistics.median(usages) / 2**20))
        print("\n".join(out))
    finally:
        for srv, _ in servers.values():
            srv.send_signal(signal.SIGTERM)
            try:
                srv.wait(60)
            except subprocess.TimeoutExpired:
                srv.kill()
        shutil.rmtree(data_root, ignore_errors=True)


if __name__ == "__main__":
    main()
