#!/usr/bin/env bash
# unit.sh BUILD - runs every unit test binary under BUILD/tests and prints
# the PASS/FAIL/SKIP lines; exits non-zero if any test failed.
set -u
build=${1:-build}
rc=0
for t in "$build"/tests/test_*; do
  [ -x "$t" ] || continue
  echo "# $t"
  "$t" || rc=1
done
exit $rc
