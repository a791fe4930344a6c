#!/usr/bin/env bash
# etcd-cluster.sh - a throwaway 3-member etcd cluster on 127.0.0.1 for tests.
#
#   etcd-cluster.sh start DIR BASEPORT   starts members m1..m3 (data, logs and
#                                        pid files in DIR), waits until every
#                                        member is healthy, prints the client
#                                        endpoints comma-separated on stdout
#   etcd-cluster.sh stop DIR [BASEPORT]  stops exactly the members whose pid
#                                        files are in DIR (SIGTERM, then KILL)
#   etcd-cluster.sh kill DIR N           kills member N (1..3) with SIGKILL,
#                                        simulating a crash (failover tests)
#   etcd-cluster.sh lead DIR N           makes member N the raft leader
#                                        (etcdctl move-leader), so that killing
#                                        it next also forces an election
#   etcd-cluster.sh endpoints DIR        prints the endpoints again
#
# Ports: member i listens for clients on BASEPORT+i-1 and for peers on
# BASEPORT+3+i-1, so BASEPORT..BASEPORT+5 must be free.  Only processes
# recorded in DIR/m<i>.pid whose command line is an etcd are ever signalled.
set -euo pipefail

usage() { echo "usage: $0 start DIR BASEPORT | stop DIR [BASEPORT] | kill DIR N | lead DIR N | endpoints DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2
ETCD=${ETCD:-etcd}
ETCDCTL=${ETCDCTL:-etcdctl}

# is_member PIDFILE: the pid in PIDFILE is alive and is an etcd process.
is_member() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--data-dir $dir/" || return 1
}

stop_member() { # stop_member I SIGNAL
    local pf="$dir/m$1.pid" pid i
    if is_member "$pf"; then
        pid=$(cat "$pf")
        kill "-$2" "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do
            [ -d "/proc/$pid" ] || break
            # a zombie (our own exited child) counts as gone
            grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
            sleep 0.1
        done
        if [ -d "/proc/$pid" ] && is_member "$pf"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pf"
}

case $cmd in
start)
    [ $# -eq 3 ] || usage
    base=$3
    command -v "$ETCD" >/dev/null || { echo "etcd-cluster: no etcd binary" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for i in 1 2 3; do
        if is_member "$dir/m$i.pid"; then
            echo "etcd-cluster: member m$i of $dir is already running" >&2
            exit 1
        fi
        rm -rf "$dir/m$i.data" # left by a failed start: it would pin the old ports
    done
    cluster="" eps=""
    for i in 1 2 3; do
        cluster+="${cluster:+,}m$i=http://127.0.0.1:$((base + 3 + i - 1))"
        eps+="${eps:+,}http://127.0.0.1:$((base + i - 1))"
    done
    for i in 1 2 3; do
        c=$((base + i - 1)) p=$((base + 3 + i - 1))
        setsid "$ETCD" --name "m$i" --data-dir "$dir/m$i.data" \
            --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
            --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "flicker-$base-$$" \
            </dev/null >"$dir/m$i.log" 2>&1 &
        echo $! >"$dir/m$i.pid"
    done
    echo "$eps" >"$dir/endpoints"
    for t in $(seq 1 150); do
        if "$ETCDCTL" --endpoints="$eps" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; then
            echo "$eps"
            exit 0
        fi
        for i in 1 2 3; do
            if ! is_member "$dir/m$i.pid"; then
                echo "etcd-cluster: member m$i exited; its log:" >&2
                tail -n 20 "$dir/m$i.log" >&2 || true
                for k in 1 2 3; do stop_member "$k" TERM; done
                exit 1
            fi
        done
        sleep 0.2
    done
    echo "etcd-cluster: not healthy after 30 s" >&2
    for k in 1 2 3; do stop_member "$k" TERM; done
    exit 1
    ;;
stop)
    [ -d "$dir" ] || exit 0
    dir=$(cd "$dir" && pwd)
    for i in 1 2 3; do stop_member "$i" TERM; done
    ;;
kill)
    [ $# -eq 3 ] || usage
    case $3 in 1|2|3) ;; *) usage ;; esac
    dir=$(cd "$dir" && pwd)
    is_member "$dir/m$3.pid" || { echo "etcd-cluster: member m$3 is not running" >&2; exit 1; }
    stop_member "$3" KILL
    ;;
lead)
    [ $# -eq 3 ] || usage
    eps=$(cat "$dir/endpoints")
    ctl() { "$ETCDCTL" --dial-timeout=1s --command-timeout=5s "$@"; }
    id=$(ctl --endpoints="$eps" member list -w simple | awk -F', ' -v n="m$3" '$3 == n { print $1 }')
    [ -n "$id" ] || { echo "etcd-cluster: no member m$3" >&2; exit 1; }
    for t in $(seq 1 50); do
        # endpoint status columns: endpoint, id, version, size, is-leader, ...
        leader=$(ctl --endpoints="$eps" endpoint status -w simple 2>/dev/null | awk -F', ' '$5 == "true" { print $1 }')
        lid=$(ctl --endpoints="$eps" endpoint status -w simple 2>/dev/null | awk -F', ' '$5 == "true" { print $2 }')
        [ "$lid" = "$id" ] && exit 0
        [ -n "$leader" ] && ctl --endpoints="$leader" move-leader "$id" >/dev/null 2>&1 || true
        sleep 0.2
    done
    echo "etcd-cluster: could not move leadership to m$3" >&2
    exit 1
    ;;
endpoints)
    cat "$dir/endpoints"
    ;;
*) usage ;;
esac
