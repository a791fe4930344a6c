#!/usr/bin/env bash
# guest-rootfs.sh AGENT OUTDIR [FAMILY...] - builds (once) the read-only
# root filesystem images of flicker microVMs and links them into OUTDIR as
# rootfs-<family>.erofs.  Families: provided, python, nodejs (default: all).
#
#   provided  the agent (/sbin/flicker-agent), busybox-static (/bin/sh and
#             the usual applets), curl (a custom runtime's HTTP client, as
#             AWS's provided.al2023 has), glibc, /etc (passwd with
#             sbx_user1051 = 993, group, hosts, nsswitch.conf, ld.so.cache),
#             the C.utf8 locale, UTC zoneinfo, and the mount points
#   python    provided + Debian's /usr/bin/python3.11 with its standard
#             library (no tests, no static libpython, precompiled .pyc in
#             unchecked-hash mode) and every shared library it and its
#             extension modules need (ldd), + /var/runtime/python
#   nodejs    provided + /usr/bin/node and its libraries, + /var/runtime/nodejs
#
# How: a plan (one line per directory, file, symlink or generated file) is
# computed first; its key is sha256 of this script, the plan, the content of
# the agent and runtimes/ files, the size+mtime of every system file copied
# (package upgrades change them) and the mkfs.erofs version.  The image is
# ${FLICKER_CACHE_DIR:-/var/cache/flicker}/rootfs-<family>-<key>.erofs; only
# a missing one is built (staged in a temporary directory there, made with
# mkfs.erofs, renamed into place).  Images are uncompressed (no
# decompression cost in the guest, pages are read straight from the shared
# file) and reproducible (fixed timestamp, UUID from the key, all root).
# Only the FLICKER_CACHE_KEEP (default 4) most recently used images of each
# family are kept.  Nothing is written in the work tree except the OUTDIR
# links.
# The body is one block, read whole before it runs: editing this file
# while a (long) build runs cannot change what that build executes.
{
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SELF=$ROOT/scripts/guest-rootfs.sh
CACHE=${FLICKER_CACHE_DIR:-/var/cache/flicker}
PY=/usr/bin/python3.11
PYLIB=/usr/lib/python3.11
NODE=/usr/bin/node

die() { echo "guest-rootfs: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: guest-rootfs.sh AGENT OUTDIR [provided|python|nodejs...]"
AGENT=$(readlink -f "$1")
OUTDIR=$2
shift 2
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(provided python nodejs)
[ -x "$AGENT" ] || die "no agent binary at $1 (make \$(BUILD)/flicker-agent)"
command -v mkfs.erofs >/dev/null || die "mkfs.erofs missing (apt-get install erofs-utils)"
[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"

# ------------------------------------------------------------------ plan
# Plan lines (fields separated by one space; paths have no spaces):
#   dir DST MODE | file SRC DST MODE | link TARGET DST | gen NAME DST MODE
# DST is relative to the image root.  Files are copied dereferenced.

PASSWD='root:x:0:0:root:/root:/sbin/nologin
sbx_user1051:x:993:993::/home/sbx_user1051:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin'
GROUP='root:x:0:
sbx_user1051:x:993:
nogroup:x:65534:'
HOSTS='127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback'
NSSWITCH='passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files'
LDSOCONF='/usr/lib/x86_64-linux-gnu
/usr/local/lib'

gen_content() {
    case $1 in
    passwd) echo "$PASSWD" ;;
    group) echo "$GROUP" ;;
    hosts) echo "$HOSTS" ;;
    hostname) echo localhost ;;
    nsswitch) echo "$NSSWITCH" ;;
    resolv) : ;;
    ldsoconf) echo "$LDSOCONF" ;;
    *) die "unknown generated file $1" ;;
    esac
}

# Every shared library (and the loader) the given ELF files need, as real
# paths (one per line, deduplicated).
libs_of() {
    local f
    for f in "$@"; do
        ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' || true
    done | sort -u
}

# A library path as ldd names it -> the same file in the image, under the
# real directory (merged /usr: /lib/x86_64-linux-gnu -> usr/lib/x86_64-linux-gnu).
lib_line() {
    local p=$1 d
    d=$(readlink -f "$(dirname "$p")")
    echo "file $p ${d#/}/$(basename "$p") 0755"
}

plan_base() {
    local d
    for d in usr usr/bin usr/sbin usr/lib usr/lib64 usr/lib/x86_64-linux-gnu usr/share \
        usr/share/zoneinfo usr/lib/locale etc proc sys dev tmp run var var/task var/runtime opt \
        home mnt; do
        echo "dir $d 0755"
    done
    echo "dir root 0700"
    echo "link usr/bin bin"
    echo "link usr/sbin sbin"
    echo "link usr/lib lib"
    echo "link usr/lib64 lib64"
    echo "file $AGENT usr/sbin/flicker-agent 0755"
    echo "file /bin/busybox usr/bin/busybox 0755"
    echo "file /usr/bin/curl usr/bin/curl 0755"
    echo "gen passwd etc/passwd 0644"
    echo "gen group etc/group 0644"
    echo "gen hosts etc/hosts 0644"
    echo "gen hostname etc/hostname 0644"
    echo "gen nsswitch etc/nsswitch.conf 0644"
    echo "gen resolv etc/resolv.conf 0644"
    echo "gen ldsoconf etc/ld.so.conf 0644"
    echo "file /usr/share/zoneinfo/UTC usr/share/zoneinfo/UTC 0644"
    echo "link ../usr/share/zoneinfo/UTC etc/localtime"
    if [ -d /usr/lib/locale/C.utf8 ]; then
        echo "dir usr/lib/locale/C.utf8 0755"
        find /usr/lib/locale/C.utf8 -type f | sort | while read -r f; do
            echo "file $f ${f#/} 0644"
        done
    fi
    local l
    for l in $(libs_of /usr/bin/curl) /usr/lib/x86_64-linux-gnu/libc.so.6 \
        /usr/lib/x86_64-linux-gnu/libm.so.6 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 \
        /usr/lib/x86_64-linux-gnu/libpthread.so.0 /usr/lib/x86_64-linux-gnu/libdl.so.2 \
        /usr/lib/x86_64-linux-gnu/librt.so.1; do
        lib_line "$l"
    done
    # busybox applets last: they never replace a real program of the plan
    /bin/busybox --list-full | sort | while read -r a; do
        case $a in
        bin/* | usr/bin/*) echo "applet usr/bin/${a##*/}" ;;
        sbin/* | usr/sbin/*) echo "applet usr/sbin/${a##*/}" ;;
        esac
    done
}

plan_python() {
    [ -x "$PY" ] || die "$PY missing (apt-get install python3)"
    echo "file $PY usr/bin/python3.11 0755"
    echo "link python3.11 usr/bin/python3"
    echo "link python3.11 usr/bin/python"
    # The standard library without what a function cannot use at run time.
    (cd "$PYLIB" && find . \( -name __pycache__ -o -name test -o -name tests -o -name idle_test \
        -o -name 'config-3.11-*' -o -name ensurepip -o -name idlelib -o -name tkinter \
        -o -name turtledemo -o -name sitecustomize.py \) -prune -o -print | sort) |
        while read -r p; do
            p=${p#./}
            [ "$p" = . ] && continue
            if [ -d "$PYLIB/$p" ]; then
                echo "dir ${PYLIB#/}/$p 0755"
            elif [ -f "$PYLIB/$p" ]; then
                echo "file $PYLIB/$p ${PYLIB#/}/$p 0644"
            fi
        done
    local l
    for l in $(libs_of "$PY" "$PYLIB"/lib-dynload/*.so); do
        lib_line "$l"
    done
    echo "dir var/runtime/python 0755"
    find "$ROOT/runtimes/python" -name __pycache__ -prune -o -type f -print | sort | while read -r f; do
        echo "file $f var/runtime/python/${f#"$ROOT"/runtimes/python/} 0644"
    done
}

plan_nodejs() {
    [ -x "$NODE" ] || die "$NODE missing (apt-get install nodejs)"
    echo "file $NODE usr/bin/node 0755"
    local l
    for l in $(libs_of "$NODE"); do
        lib_line "$l"
    done
    echo "dir var/runtime/nodejs 0755"
    find "$ROOT/runtimes/nodejs" -name node_modules -prune -o -type f -print | sort | while read -r f; do
        echo "file $f var/runtime/nodejs/${f#"$ROOT"/runtimes/nodejs/} 0644"
    done
}

make_plan() {
    plan_base | grep -v '^applet' || true
    case $1 in
    provided) ;;
    python) plan_python ;;
    nodejs) plan_nodejs ;;
    *) die "unknown family $1 (provided, python, nodejs)" ;;
    esac
    plan_base | grep '^applet' || true
}

# sha256 of everything the image is made of.  The agent's and the work
# tree's paths are replaced by tokens (their content is hashed instead), so
# every work tree and build directory with the same inputs shares an image.
plan_key() {
    local plan=$1
    {
        sha256sum "$SELF" | cut -d' ' -f1
        mkfs.erofs --help 2>&1 | head -1
        mkfs.erofs -V 2>&1 | head -1 || true
        awk -v a="$AGENT" -v r="$ROOT/" '{
            if ($2 == a) $2 = "@AGENT"; else if (index($2, r) == 1) $2 = "@ROOT/" substr($2, length(r) + 1)
            print }' "$plan"
        awk '$1 == "file" {print $2}' "$plan" | while read -r src; do
            case $src in
            "$AGENT") echo "@AGENT $(sha256sum <"$src" | cut -d' ' -f1)" ;;
            "$ROOT"/*) echo "@ROOT/${src#"$ROOT"/} $(sha256sum <"$src" | cut -d' ' -f1)" ;;
            *) stat -L -c '%n %s %Y' "$src" ;;
            esac
        done
    } | sha256sum | cut -c1-16
}

# Makes the tree of a plan under stage.
stage_plan() {
    local plan=$1 stage=$2 op a b c
    while read -r op a b c; do
        case $op in
        dir) mkdir -p "$stage/$a"; chmod "$b" "$stage/$a" ;;
        file)
            mkdir -p "$(dirname "$stage/$b")"
            cp -L "$a" "$stage/$b"
            chmod "$c" "$stage/$b" ;;
        link) mkdir -p "$(dirname "$stage/$b")"; ln -sfn "$a" "$stage/$b" ;;
        gen) gen_content "$a" >"$stage/$b"; chmod "$c" "$stage/$b" ;;
        applet)
            if [ ! -e "$stage/$a" ] && [ ! -L "$stage/$a" ]; then
                case $a in
                usr/bin/*) ln -s busybox "$stage/$a" ;;
                usr/sbin/*) ln -s ../bin/busybox "$stage/$a" ;;
                esac
            fi ;;
        *) die "bad plan line: $op $a $b $c" ;;
        esac
    done <"$plan"
}

# Keeps the KEEP most recently used images of a family (other work trees
# may link to older ones; each use refreshes an image's mtime).
KEEP=${FLICKER_CACHE_KEEP:-4}
prune() {
    ls -1t "$CACHE"/rootfs-"$1"-*.erofs 2>/dev/null | tail -n +$((KEEP + 1)) | while read -r old; do
        rm -f "$old"
    done
}

build_image() {
    local fam=$1 plan key img tmp
    plan=$(mktemp)
    make_plan "$fam" >"$plan"
    key=$(plan_key "$plan")
    img=$CACHE/rootfs-$fam-$key.erofs
    if [ ! -s "$img" ]; then
        mkdir -p "$CACHE"
        tmp=$(mktemp -d "$CACHE/.rootfs-$fam-$key.XXXXXX")
        local start=$SECONDS
        stage_plan "$plan" "$tmp/root"
        ldconfig -X -r "$tmp/root"
        if [ "$fam" = python ]; then
            # unchecked-hash: the image is immutable, so Python need not
            # compare sources; -s/-p record the in-image paths.
            "$PY" -m compileall -q -j 2 --invalidation-mode unchecked-hash \
                -s "$tmp/root" -p / "$tmp/root/${PYLIB#/}" >/dev/null \
                || { rm -rf "$tmp"; die "compileall failed"; }
        fi
        local uuid
        uuid=$(echo "$key$fam" | sha256sum | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
        if ! mkfs.erofs --quiet --all-root -T0 -U "$uuid" "$tmp/img" "$tmp/root" >"$tmp/mkfs.log" 2>&1; then
            cat "$tmp/mkfs.log" >&2
            rm -rf "$tmp"
            die "mkfs.erofs failed for $fam"
        fi
        chmod 0444 "$tmp/img"
        mv "$tmp/img" "$img"
        rm -rf "$tmp"
        echo "guest-rootfs: built $img ($(du -h "$img" | cut -f1), $((SECONDS - start)) s)" >&2
    fi
    rm -f "$plan"
    touch "$img" # in use: pruning keeps the most recently used
    prune "$fam"
    mkdir -p "$OUTDIR"
    ln -sfn "$img" "$OUTDIR/rootfs-$fam.erofs"
    echo "$img"
}

for fam in "${families[@]}"; do
    build_image "$fam"
done
exit
}
