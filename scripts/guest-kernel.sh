#!/usr/bin/env bash
# guest-kernel.sh [LINK] - builds (once) the microVM guest kernel and prints
# the path of the cached vmlinux; with LINK, also points a symlink there.
#
# Recipe: untar Debian's linux-source-6.1 (/usr/src/linux-source-6.1.tar.xz),
# `make ARCH=x86_64 tinyconfig`, merge guest/kernel.fragment with the
# kernel's merge_config.sh, `make olddefconfig`, check that every line of the
# fragment is in the final .config (a dependency missing from the fragment
# silently drops an option otherwise: that fails the build here), then
# `make -j$JOBS vmlinux`.
#
# Cache: ${FLICKER_CACHE_DIR:-/var/cache/flicker}/kernel-<key>/ holds
# vmlinux, config and build.log, where <key> is the first 16 hex digits of
# sha256(fragment, linux-source-6.1 package version, RECIPE).  A cache entry
# appears atomically (built in a temporary sibling, then renamed) and is
# never rebuilt; concurrent callers wait on a lock file.  Only the
# FLICKER_CACHE_KEEP (default 3) most recently used kernels are kept.
# Nothing is written in the work tree.
# The body is one block, read whole before it runs: editing this file
# while a (long) build runs cannot change what that build executes.
{
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FRAG=$ROOT/guest/kernel.fragment
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
CACHE=${FLICKER_CACHE_DIR:-/var/cache/flicker}
JOBS=${JOBS:-2}
RECIPE="tinyconfig+fragment+olddefconfig vmlinux x86_64 v1"
link=${1:-}

die() { echo "guest-kernel: $*" >&2; exit 1; }

[ -r "$FRAG" ] || die "missing $FRAG"
[ -r "$SRC_TAR" ] || die "missing $SRC_TAR (apt-get install linux-source-6.1; see scripts/install-deps.sh)"
ver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) || die "linux-source-6.1 is not installed"
key=$( { cat "$FRAG"; printf '\n%s\n%s\n' "$ver" "$RECIPE"; } | sha256sum | cut -c1-16)
dir=$CACHE/kernel-$key

# Keeps the FLICKER_CACHE_KEEP (default 3) most recently used kernels; each
# use refreshes an entry's mtime.
prune() {
    ls -1dt "$CACHE"/kernel-*/ 2>/dev/null | tail -n +$((${FLICKER_CACHE_KEEP:-3} + 1)) | while read -r old; do
        rm -rf "$old"
    done
}

publish() {
    touch "$dir"
    prune
    if [ -n "$link" ]; then
        mkdir -p "$(dirname "$link")"
        ln -sfn "$dir/vmlinux" "$link"
    fi
    echo "$dir/vmlinux"
}

if [ -s "$dir/vmlinux" ]; then
    publish
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/kernel.lock"
flock 9
if [ -s "$dir/vmlinux" ]; then  # built by whoever held the lock before us
    publish
    exit 0
fi

tmp=$(mktemp -d "$CACHE/.kernel-$key.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log=$tmp/build.log
start=$(date +%s)
echo "guest-kernel: building kernel-$key (linux-source-6.1 $ver) in $tmp, log $log" >&2
(
    set -e
    cd "$tmp"
    tar -xJf "$SRC_TAR"
    cd linux-source-6.1
    make ARCH=x86_64 tinyconfig
    scripts/kconfig/merge_config.sh -m .config "$FRAG"
    make ARCH=x86_64 olddefconfig
) >"$log" 2>&1 || { tail -n 30 "$log" >&2; cp "$log" "$CACHE/kernel-$key.failed.log"; die "configuration failed (log: $CACHE/kernel-$key.failed.log)"; }

# Every option of the fragment must have survived olddefconfig.
cfg=$tmp/linux-source-6.1/.config
missing=0
while IFS= read -r line; do
    case "$line" in
    CONFIG_*=*)
        grep -qxF -- "$line" "$cfg" || { echo "guest-kernel: not in .config: $line (have: $(grep -E "^(# )?${line%%=*}[= ]" "$cfg" || echo nothing))" >&2; missing=1; } ;;
    "# CONFIG_"*" is not set")
        opt=${line#\# }; opt=${opt%% *}
        if grep -q "^$opt=" "$cfg"; then echo "guest-kernel: should be off: $opt" >&2; missing=1; fi ;;
    esac
done <"$FRAG"
[ "$missing" = 0 ] || { cp "$cfg" "$CACHE/kernel-$key.failed.config"; die "the merged .config lacks fragment options (a dependency is missing from guest/kernel.fragment); config kept at $CACHE/kernel-$key.failed.config"; }

( cd "$tmp/linux-source-6.1" && make ARCH=x86_64 -j"$JOBS" vmlinux ) >>"$log" 2>&1 \
    || { tail -n 40 "$log" >&2; cp "$log" "$CACHE/kernel-$key.failed.log"; die "make vmlinux failed (log: $CACHE/kernel-$key.failed.log)"; }

out=$tmp/out
mkdir "$out"
cp "$tmp/linux-source-6.1/vmlinux" "$out/vmlinux"
cp "$cfg" "$out/config"
{ cat "$log"; echo "built in $(( $(date +%s) - start )) s"; } >"$out/build.log"
printf '%s\n' "linux-source-6.1 $ver" "$RECIPE" >"$out/source"
rm -rf "$dir"
mv "$out" "$dir"
echo "guest-kernel: kernel-$key built in $(( $(date +%s) - start )) s" >&2
publish
exit
}
