#!/usr/bin/env bash
# test.sh - flicker's whole test suite, as CI runs it (.ci/run):
#   1. install the Debian packages (scripts/install-deps.sh)
#   2. build the normal (build/) and the sanitizer (build/asan/) binaries
#   3. unit tests of both builds (scripts/unit.sh prints PASS/FAIL/SKIP)
#   4. tests/runtimes (if present) and tests/integration with pytest, against
#      both builds (FLICKER_BUILD=build, then build/asan)
#   5. the microVM guest, built right after the binaries: `make guest` for
#      the first build (kernel and root images are cached in
#      ${FLICKER_CACHE_DIR:-/var/cache/flicker}, so only a fresh machine or a
#      changed input rebuilds them: ~8 min); after the suites above, the
#      integration suite once more with FLICKER_TEST_ISOLATION=microvm
#      (every environment a QEMU microVM), then tests/guest, which boots the
#      guest directly.  A failed guest build counts as one failure and skips
#      the microVM suites.
# The last line printed is always "N passed, N failed"; skips are reported on
# the line before and are not counted as passed.  A failed install or build
# counts as one failure (and its build's tests are not run).  Exits non-zero
# if anything failed.
#
# Environment: FLICKER_TEST_OUT (results dir, default build/test-results),
# FLICKER_TEST_BUILDS (default "build build/asan"), PYTEST_ARGS (extra args,
# e.g. "-k invoke"), FLICKER_SKIP_INSTALL=1 (skip step 1),
# FLICKER_GUEST_CAP (seconds for tests/guest, default 1200).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=/usr/bin/python3
OUT=${FLICKER_TEST_OUT:-$ROOT/build/test-results}
BUILDS=${FLICKER_TEST_BUILDS:-build build/asan}
# Wall-clock caps per pytest run (SIGINT first, so pytest still writes its
# junit report and stops its servers), keeping CI well under 90 minutes.
INTEGRATION_CAP=${FLICKER_INTEGRATION_CAP:-1200}
RUNTIMES_CAP=${FLICKER_RUNTIMES_CAP:-600}
GUEST_CAP=${FLICKER_GUEST_CAP:-1200}
MICROVM_INTEGRATION_CAP=${FLICKER_MICROVM_INTEGRATION_CAP:-2400}

passed=0
failed=0
skipped=0
failures=()

mkdir -p "$OUT"
start_time=$(date +%s)

note_failure() {
    failed=$((failed + 1))
    failures+=("$1")
    echo "test.sh: FAILED: $1"
}

section() {
    echo
    echo "=== $* ($(($(date +%s) - start_time))s)"
}

# ---------------------------------------------------------------- install
section "install dependencies"
if [ "${FLICKER_SKIP_INSTALL:-0}" = 1 ]; then
    echo "skipped (FLICKER_SKIP_INSTALL=1)"
elif ! bash scripts/install-deps.sh >"$OUT/install.log" 2>&1; then
    tail -n 30 "$OUT/install.log"
    note_failure "install-deps (see $OUT/install.log)"
else
    echo "ok"
fi

# ------------------------------------------------------------------ build
declare -A built=()
for b in $BUILDS; do
    section "build $b"
    if [ "$b" = build ]; then
        make_args=(-j2)
    else
        make_args=(-j2 SAN=1 "BUILD=$b")
    fi
    log="$OUT/make-${b//\//-}.log"
    if make "${make_args[@]}" >"$log" 2>&1; then
        built[$b]=1
        echo "ok"
    else
        tail -n 40 "$log"
        note_failure "make ${make_args[*]} (see $log)"
    fi
done

# ------------------------------------------------------------ microVM guest
# Built before any test runs: the unit tests (test_microvm), the SnapStart
# integration tests and the microvm pass below boot it.  Every build uses
# the first build's images (FLICKER_GUEST_DIR).
guest_build=${BUILDS%% *}
guest_ok=
if [ -n "${built[$guest_build]:-}" ]; then
    section "build guest ($guest_build: kernel, agent, root images)"
    if [ "$guest_build" = build ]; then
        make_args=(-j2 guest)
    else
        make_args=(-j2 SAN=1 "BUILD=$guest_build" guest)
    fi
    log="$OUT/make-guest.log"
    if make "${make_args[@]}" >"$log" 2>&1; then
        grep -E '^(guest-(kernel|rootfs):|/)' "$log" || true
        export FLICKER_GUEST_DIR=$ROOT/$guest_build/guest
        guest_ok=1
        echo "ok"
    else
        tail -n 40 "$log"
        note_failure "make ${make_args[*]} (see $log)"
    fi
fi

# ------------------------------------------------------------- unit tests
for b in $BUILDS; do
    [ -n "${built[$b]:-}" ] || continue
    section "unit tests ($b)"
    log="$OUT/unit-${b//\//-}.log"
    bash scripts/unit.sh "$b" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    p=$(grep -c '^PASS' "$log")
    f=$(grep -c '^FAIL' "$log")
    s=$(grep -c '^SKIP' "$log")
    passed=$((passed + p))
    skipped=$((skipped + s))
    if [ "$f" -gt 0 ]; then
        failed=$((failed + f))
        failures+=("$f unit test(s) in $b")
    elif [ "$rc" -ne 0 ]; then
        # A crash (or sanitizer abort) without a FAIL line still fails.
        note_failure "unit tests of $b exited $rc without a FAIL line (see $log)"
    fi
done

# ----------------------------------------------------------------- pytest
# Counts one junit report: adds to passed/failed/skipped.
count_junit() {
    local xml=$1 label=$2 counts
    if ! counts=$("$PY" - "$xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = e = s = 0
for su in suites:
    t += int(su.get("tests", 0)); f += int(su.get("failures", 0))
    e += int(su.get("errors", 0)); s += int(su.get("skipped", 0))
print(t - f - e - s, f + e, s)
EOF
    ); then
        note_failure "$label: unreadable junit report $xml"
        return
    fi
    read -r p f s <<<"$counts"
    passed=$((passed + p))
    skipped=$((skipped + s))
    if [ "$f" -gt 0 ]; then
        failed=$((failed + f))
        failures+=("$f test(s) in $label")
    fi
}

# Stops any flicker server a pytest run left behind (found by its own
# temporary directory on the command line; never by name alone).
reap_leftovers() {
    local base=$1 pid
    for pid in $(pgrep -f -- "--data $base" 2>/dev/null); do
        echo "test.sh: stopping leftover server $pid"
        kill -TERM "$pid" 2>/dev/null
        sleep 2
        kill -KILL "$pid" 2>/dev/null
    done
}

run_pytest() {
    local dir=$1 b=$2 cap=$3 variant=${4:-}
    local label="${dir#tests/} ($b${variant:+, $variant})"
    local tag="${dir//\//-}-${b//\//-}${variant:+-$variant}"
    local xml="$OUT/junit-$tag.xml"
    local base="$OUT/tmp-$tag"
    section "pytest $label"
    rm -f "$xml"
    rm -rf "$base"
    # shellcheck disable=SC2086 # PYTEST_ARGS is a word list on purpose
    FLICKER_BUILD=$b timeout -s INT -k 60 "$cap" \
        "$PY" -m pytest -p no:cacheprovider -q -rs --basetemp="$base" \
        --junitxml="$xml" ${PYTEST_ARGS:-} "$dir" </dev/null 2>&1 | tee "$OUT/pytest-$tag.log"
    local rc=${PIPESTATUS[0]}
    reap_leftovers "$base"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        note_failure "$label: killed after ${cap}s"
    fi
    if [ -s "$xml" ]; then
        count_junit "$xml" "$label"
        # pytest exit 1 = test failures (counted above); anything else besides
        # 0 and 5 (nothing collected) is a crash of the run itself.
        if [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ] && [ "$rc" -ne 5 ] && [ "$rc" -ne 124 ]; then
            note_failure "$label: pytest exited $rc"
        fi
    else
        note_failure "$label: pytest exited $rc without a report"
    fi
}

for b in $BUILDS; do
    if [ -z "${built[$b]:-}" ]; then
        echo "test.sh: not running tests against $b: its build failed"
        continue
    fi
    if [ -d tests/runtimes ]; then
        run_pytest tests/runtimes "$b" "$RUNTIMES_CAP"
    fi
    run_pytest tests/integration "$b" "$INTEGRATION_CAP"
done

# The integration suite again with every environment in a microVM (QEMU
# TCG here: slower cold starts), against the first build.
if [ -n "$guest_ok" ]; then
    FLICKER_TEST_ISOLATION=microvm run_pytest tests/integration "$guest_build" \
        "$MICROVM_INTEGRATION_CAP" microvm
    run_pytest tests/guest "$guest_build" "$GUEST_CAP"
else
    echo "test.sh: not running the microVM suites: the guest build failed"
fi

# ---------------------------------------------------------------- summary
section "summary"
for f in "${failures[@]}"; do
    echo "  failed: $f"
done
echo "$skipped skipped"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
