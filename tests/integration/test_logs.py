"""Function logs: START/END/REPORT per invocation, the log endpoint with
offsets, Tail's 4 KB cap, and flicker's `logs` CLI command."""
import base64
import re

from harness import SLOW

REPORT_RE = (r"REPORT RequestId: {rid}\tDuration: (?P<dur>[\d.]+) ms\tBilled Duration: (?P<billed>\d+) ms"
             r"\tMemory Size: (?P<mem>\d+) MB\tMax Memory Used: (?P<used>\d+) MB"
             r"(?:\tInit Duration: (?P<init>[\d.]+) ms)?")


def report(text, rid):
    m = re.search(REPORT_RE.format(rid=re.escape(rid)), text)
    assert m, f"no REPORT line for {rid} in:\n{text[-3000:]}"
    return m


def test_log_endpoint_lines(flicker, deploy, invoke):
    name = deploy("py_echo", MemorySize=192)
    r1 = invoke(name, {"print": "first-line-xyz"})
    r2 = invoke(name, {"print": "second-line-xyz"})
    text = flicker.wait_log(name, f"REPORT RequestId: {r2.request_id}")
    for r in (r1, r2):
        assert f"START RequestId: {r.request_id} Version: $LATEST" in text
        assert f"END RequestId: {r.request_id}" in text
    # Order: START, the function's output, END, REPORT.
    i_start = text.index(f"START RequestId: {r1.request_id}")
    i_out = text.index("first-line-xyz")
    i_end = text.index(f"END RequestId: {r1.request_id}")
    i_rep = text.index(f"REPORT RequestId: {r1.request_id}")
    assert i_start < i_out < i_end < i_rep
    m1, m2 = report(text, r1.request_id), report(text, r2.request_id)
    assert m1["mem"] == "192"
    assert m1["init"] is not None, "first (cold) invoke has no Init Duration"
    assert m2["init"] is None, "warm invoke reported an Init Duration"
    for m in (m1, m2):
        dur, billed = float(m["dur"]), int(m["billed"])
        assert billed >= dur, (dur, billed)
        if m["init"] is None:
            # Warm: the duration rounded up to the next ms.  (Cold starts may
            # also bill the Init phase, as Lambda does since 2025.)
            assert billed - dur < 1.0 + 1e-6, (dur, billed)
        assert 0 < int(m["used"]) <= 192


def test_log_endpoint_offsets(flicker, deploy, invoke):
    name = deploy("py_echo")
    r1 = invoke(name, {"print": "alpha-111"})
    flicker.wait_log(name, f"REPORT RequestId: {r1.request_id}")
    text, off = flicker.logs(name, 0)
    assert off >= len(text.encode()) > 0
    r2 = invoke(name, {"print": "beta-222"})
    new = flicker.wait_log(name, f"REPORT RequestId: {r2.request_id}", offset=off)
    assert "beta-222" in new
    assert "alpha-111" not in new, "offset did not skip already-read log"
    # Reading at the end returns nothing new and the same offset.
    _, end = flicker.logs(name, 0)
    tail, end2 = flicker.logs(name, end)
    assert tail == "" and end2 == end


def test_logs_of_missing_function(flicker):
    st, h, _ = flicker.raw("GET", "/flicker/functions/no-such-fn-zz/logs", query={"offset": "0"})
    assert st == 404


def test_logs_endpoint_requires_auth(flicker, deploy):
    name = deploy("py_echo")
    st, _, _ = flicker.raw("GET", f"/flicker/functions/{name}/logs", query={"offset": "0"},
                           sign=False)
    assert st == 403


def test_tail_is_last_4k(deploy, invoke):
    name = deploy("py_logflood", Timeout=60 * SLOW, MemorySize=256)
    r = invoke(name, {"mb": 1}, LogType="Tail")
    assert r.function_error is None, r
    raw = base64.b64decode(r.raw["LogResult"])
    assert len(raw) <= 4096, len(raw)
    assert b"REPORT RequestId" in raw, raw[-500:]


def test_flicker_logs_cli(flicker, deploy, invoke):
    name = deploy("py_echo")
    r = invoke(name, {"print": "cli-log-line-42"})
    flicker.wait_log(name, f"REPORT RequestId: {r.request_id}")
    p = flicker.cli("logs", name)
    assert "cli-log-line-42" in p.stdout
    assert f"START RequestId: {r.request_id}" in p.stdout
    assert f"REPORT RequestId: {r.request_id}" in p.stdout
