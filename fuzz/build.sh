#!/usr/bin/env bash
# fuzz/build.sh [OUT] - builds the libFuzzer targets with clang into OUT
# (default build/fuzz).  Only the sources the targets need are compiled,
# with ASan+UBSan and libFuzzer instrumentation.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/fuzz}
mkdir -p "$out"
pkgs="jansson sqlite3 libcrypto libzip"
cflags="-std=gnu11 -g -O1 -D_GNU_SOURCE -Isrc -fsanitize=fuzzer,address,undefined \
  -fno-omit-frame-pointer $(pkg-config --cflags $pkgs)"
libs="$(pkg-config --libs $pkgs) -lpthread -lm"
srcs="src/common/err.c src/common/log.c src/common/util.c src/store/store.c \
  src/store/codezip.c src/frontend/control.c"
# shellcheck disable=SC2086
clang $cflags -o "$out/fuzz_control" fuzz/fuzz_control.c $srcs $libs
# shellcheck disable=SC2086
clang $cflags -o "$out/fuzz_codezip" fuzz/fuzz_codezip.c src/common/err.c src/common/log.c \
  src/common/util.c src/store/codezip.c $libs
# shellcheck disable=SC2086
clang $cflags -o "$out/fuzz_vmproto" fuzz/fuzz_vmproto.c src/worker/vmproto.c
echo "built $out/fuzz_control $out/fuzz_codezip $out/fuzz_vmproto"
