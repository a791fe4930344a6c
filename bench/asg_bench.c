/* asg_bench.c - how many decisions one assignment leader makes per second.
 *
 * Usage: asg_bench ADDRESS CONFIG_JSON CONCURRENCY SECONDS
 *
 * Drives `asg.acquire` + `asg.release` pairs against the assignment
 * replica at ADDRESS (the leader: a follower answers NotLeader and the run
 * fails) with CONCURRENCY loops in flight on one connection (pipelined),
 * for SECONDS.  CONFIG_JSON is a file holding the fn_config JSON of a
 * function whose environments are warm (bench/leader.py sets that up), so
 * every acquire is a warm hand-out: a table lookup plus one journal append
 * (busy), and every release another (idle).  Throttled answers are counted
 * apart (with CONCURRENCY above the warm environments they are the
 * "over the limit" decisions, which need no journal write).
 *
 * Prints one JSON line: {"acquires":N,"releases":N,"throttled":N,
 * "errors":N,"seconds":S,"decisions_per_s":D,"p50_us":..,"p99_us":..}
 * where a decision is one acquire answered (warm or throttled) and the
 * latencies are acquire round trips. */
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/rpc.h"
#include "common/util.h"

typedef struct bench {
    struct event_base *base;
    rpc_client_t *client;
    json_t *acquire_params;
    uint64_t end_us;
    long acquires, releases, throttled, errors;
    int running;
    uint64_t *lat;
    size_t nlat, caplat;
    char first_error[256];
} bench_t;

typedef struct loop {
    bench_t *b;
    uint64_t t0;
} loop_t;

static void start_acquire(loop_t *l);

static void record(bench_t *b, uint64_t us)
{
    if (b->nlat == b->caplat) {
        b->caplat = b->caplat ? b->caplat * 2 : 65536;
        b->lat = xrealloc(b->lat, b->caplat * sizeof *b->lat);
    }
    b->lat[b->nlat++] = us;
}

static void loop_next(loop_t *l)
{
    bench_t *b = l->b;
    if (now_mono_us() >= b->end_us) {
        if (--b->running == 0)
            event_base_loopexit(b->base, NULL);
        free(l);
        return;
    }
    start_acquire(l);
}

static void on_released(const rpc_result_t *r, void *arg)
{
    loop_t *l = arg;
    if (r->error)
        l->b->errors++;
    else
        l->b->releases++;
    loop_next(l);
}

static void on_acquired(const rpc_result_t *r, void *arg)
{
    loop_t *l = arg;
    bench_t *b = l->b;
    record(b, now_mono_us() - l->t0);
    if (r->error) {
        if (!strcmp(r->error, "Throttled")) {
            b->throttled++;
        } else {
            b->errors++;
            if (!b->first_error[0])
                snprintf(b->first_error, sizeof b->first_error, "%s: %s", r->error, r->message);
        }
        loop_next(l);
        return;
    }
    b->acquires++;
    const char *env = json_string_value(json_object_get(r->result, "env_id"));
    json_t *p = json_pack("{s:s,s:b}", "env_id", env ? env : "", "dead", 0);
    if (rpc_call(b->client, "asg.release", p, NULL, 0, 10000, on_released, l) < 0)
        loop_next(l);
    json_decref(p);
}

static void start_acquire(loop_t *l)
{
    l->t0 = now_mono_us();
    if (rpc_call(l->b->client, "asg.acquire", l->b->acquire_params, NULL, 0, 30000, on_acquired, l) < 0)
        loop_next(l);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: asg_bench ADDRESS CONFIG_JSON CONCURRENCY SECONDS\n");
        return 2;
    }
    json_error_t je;
    json_t *config = json_load_file(argv[2], 0, &je);
    if (!config) {
        fprintf(stderr, "asg_bench: %s: %s\n", argv[2], je.text);
        return 2;
    }
    int conc = atoi(argv[3]);
    double secs = atof(argv[4]);
    if (conc < 1 || secs <= 0) {
        fprintf(stderr, "asg_bench: CONCURRENCY >= 1 and SECONDS > 0\n");
        return 2;
    }
    bench_t b = {0};
    b.base = event_base_new();
    err_t err = {0};
    b.client = rpc_client_new(b.base, argv[1], NULL, &err);
    if (!b.client) {
        fprintf(stderr, "asg_bench: %s\n", err.msg);
        return 2;
    }
    b.acquire_params = json_pack("{s:O,s:i}", "config", config, "total_reserved", 0);
    b.end_us = now_mono_us() + (uint64_t)(secs * 1e6);
    uint64_t t0 = now_mono_us();
    b.running = conc;
    for (int i = 0; i < conc; i++) {
        loop_t *l = xcalloc(1, sizeof *l);
        l->b = &b;
        start_acquire(l);
    }
    event_base_dispatch(b.base);
    double took = (double)(now_mono_us() - t0) / 1e6;
    qsort(b.lat, b.nlat, sizeof *b.lat, cmp_u64);
    uint64_t p50 = b.nlat ? b.lat[b.nlat / 2] : 0, p99 = b.nlat ? b.lat[b.nlat * 99 / 100] : 0;
    json_t *out = json_pack("{s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:I,s:s}", "acquires",
                            (json_int_t)b.acquires, "releases", (json_int_t)b.releases,
                            "throttled", (json_int_t)b.throttled, "errors", (json_int_t)b.errors,
                            "seconds", took, "decisions_per_s",
                            (double)(b.acquires + b.releases + b.throttled) / took, "p50_us",
                            (json_int_t)p50, "p99_us", (json_int_t)p99, "first_error",
                            b.first_error);
    char *s = json_dumps(out, JSON_COMPACT);
    puts(s);
    free(s);
    json_decref(out);
    rpc_client_free(b.client);
    json_decref(b.acquire_params);
    json_decref(config);
    free(b.lat);
    event_base_free(b.base);
    return b.errors && !b.acquires ? 1 : 0;
}
