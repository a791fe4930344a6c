/* test_placement_service.c - the placement role's RPC service and its
 * providers, in process.
 *
 * What: a placement_service on a unix socket in this process, driven by
 * rpc_client calls from the same event loop: fake workers are plain RPC
 * clients that register and heartbeat; a "listener" client stands for
 * assignment and collects worker.lost / worker.retired notifications.
 * Covers register -> lease, heartbeats keeping a worker active, missed
 * heartbeats -> LOST + notification, pick (zone spread, capacity, exclude,
 * env_added/removed), NoCapacity, draining and retiring through short
 * leases, status JSON, malformed params (error replies, server keeps
 * serving), the local provider's argv, and its spawn / SIGTERM / reap cycle
 * with an injected harmless binary (a shell script that records its argv
 * and execs sleep) instead of `flicker serve worker`.
 *
 * How: every wait polls the loop against a generous deadline (20 s, 40 s
 * for the spawn test); nothing asserts on timing.  Short leases and
 * heartbeat timeouts make transitions happen within a second or so.
 *
 * Invariants: every test frees its clients, service and provider (no
 * leaks under ASan) and leaves no child process behind. */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "check.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "placement/placement_service.h"
#include "placement/provider.h"

#define DEADLINE_MS 20000

static struct event_base *base;
static struct event *ticker;
static char sock_path[108];
static char addr[128];

static void tick_cb(evutil_socket_t fd, short w, void *a) {}

static void setup(void)
{
    base = event_base_new();
    ticker = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 20000};
    event_add(ticker, &tv);
    snprintf(sock_path, sizeof sock_path, "/tmp/flicker-test-psvc-%d.sock", (int)getpid());
    snprintf(addr, sizeof addr, "unix:%s", sock_path);
}

static void teardown(void)
{
    event_free(ticker);
    event_base_free(base);
    unlink(sock_path);
}

static void run_for(int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
}

/* A synchronous call: runs the loop until the reply arrives. */
typedef struct reply {
    bool done;
    char error[64];
    json_t *result;       /* owned; NULL on error */
} reply_t;

static void reply_cb(const rpc_result_t *r, void *arg)
{
    reply_t *out = arg;
    out->done = true;
    if (r->error)
        snprintf(out->error, sizeof out->error, "%s", r->error);
    else
        out->result = json_incref(r->result);
}

/* Calls method with params (stolen: pass json_pack(...) directly). */
static reply_t call(rpc_client_t *c, const char *method, json_t *params)
{
    reply_t r = {0};
    rpc_call(c, method, params, NULL, 0, 10000, reply_cb, &r);
    json_decref(params);
    uint64_t end = now_mono_ms() + DEADLINE_MS;
    while (!r.done && now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    if (getenv("PSVC_TEST_LOG"))
        printf("  %s -> %s\n", method, r.done ? (r.error[0] ? r.error : "ok") : "no reply");
    return r;
}

static void reply_free(reply_t *r)
{
    json_decref(r->result);
    r->result = NULL;
}

static const char *rstr(const reply_t *r, const char *key)
{
    return r->result ? json_string_value(json_object_get(r->result, key)) : NULL;
}

/* The listener's notifications. */
typedef struct notes {
    int lost, retired;
    char lost_id[64], lost_addr[128], retired_id[64];
} notes_t;

static void notify_cb(rpc_client_t *c, const char *method, json_t *params, const void *body,
                      size_t len, void *arg)
{
    notes_t *n = arg;
    const char *id = json_string_value(json_object_get(params, "worker_id"));
    if (!strcmp(method, "worker.lost")) {
        n->lost++;
        snprintf(n->lost_id, sizeof n->lost_id, "%s", id ? id : "");
        const char *a = json_string_value(json_object_get(params, "address"));
        snprintf(n->lost_addr, sizeof n->lost_addr, "%s", a ? a : "");
    } else if (!strcmp(method, "worker.retired")) {
        n->retired++;
        snprintf(n->retired_id, sizeof n->retired_id, "%s", id ? id : "");
    }
}

static placement_service_t *start_service(uint64_t lease_ms, uint64_t drain_ms, uint64_t hb_ms)
{
    placement_service_config_t cfg = {0};
    fleet_config_default(&cfg.fleet);
    if (lease_ms)
        cfg.fleet.lease_ms = lease_ms;
    if (drain_ms)
        cfg.fleet.drain_before_ms = drain_ms;
    if (hb_ms)
        cfg.fleet.heartbeat_timeout_ms = hb_ms;
    cfg.tick_ms = 50;
    err_t err = {0};
    placement_service_t *ps = placement_service_new(base, &cfg, &err);
    if (!ps) {
        printf("  placement_service_new: %s\n", err.msg);
        return NULL;
    }
    if (placement_service_listen(ps, addr, &err) < 0) {
        printf("  listen: %s\n", err.msg);
        placement_service_free(ps);
        return NULL;
    }
    return ps;
}

static rpc_client_t *client(void) { return rpc_client_new(base, addr, NULL, NULL); }

static reply_t reg(rpc_client_t *c, const char *id, const char *zone, int mb)
{
    char a[64];
    snprintf(a, sizeof a, "unix:/tmp/%s.sock", id);
    return call(c, "worker.register", json_pack("{s:s,s:s,s:s,s:i,s:i}", "worker_id", id, "address", a,
                                                "zone", zone, "memory_mb", mb, "cpus", 2));
}

static reply_t heartbeat(rpc_client_t *c, const char *id, int mem, int envs)
{
    return call(c, "worker.heartbeat", json_pack("{s:s,s:i,s:i}", "worker_id", id, "memory_used_mb", mem,
                                                 "environments", envs));
}

static reply_t pick(rpc_client_t *c, const char *fn, int mb)
{
    return call(c, "placement.pick", json_pack("{s:s,s:i}", "function", fn, "memory_mb", mb));
}

static reply_t env_added(rpc_client_t *c, const char *worker, const char *fn, int mb)
{
    return call(c, "placement.env_added",
                json_pack("{s:s,s:s,s:i}", "worker_id", worker, "function", fn, "memory_mb", mb));
}

/* ------------------------------------------------------------------ tests */

static void test_register_lease(void)
{
    setup();
    placement_service_t *ps = start_service(0, 0, 0);
    CHECK(ps);
    rpc_client_t *w = client();
    uint64_t before = now_wall_ms();
    reply_t r = reg(w, "w1", "a", 2048);
    CHECK(r.result);
    json_int_t exp = json_integer_value(json_object_get(r.result, "lease_expiry_ms"));
    reply_free(&r);
    /* default lease: 14 h */
    CHECK(exp >= (json_int_t)(before + 14ULL * 3600 * 1000));
    CHECK(exp <= (json_int_t)(now_wall_ms() + 14ULL * 3600 * 1000));

    r = call(w, "placement.workers", json_object());
    CHECK(r.result);
    json_t *ws = json_object_get(r.result, "workers");
    CHECK(json_array_size(ws) == 1);
    json_t *w0 = json_array_get(ws, 0);
    CHECK_STR(json_string_value(json_object_get(w0, "id")), "w1");
    CHECK_STR(json_string_value(json_object_get(w0, "address")), "unix:/tmp/w1.sock");
    CHECK_STR(json_string_value(json_object_get(w0, "zone")), "a");
    CHECK_STR(json_string_value(json_object_get(w0, "state")), "active");
    CHECK(json_integer_value(json_object_get(w0, "lease_expiry_ms")) == exp);
    reply_free(&r);

    r = heartbeat(w, "w1", 100, 1);
    CHECK_STR(rstr(&r, "state"), "active");
    reply_free(&r);
    rpc_client_free(w);
    placement_service_free(ps);
    teardown();
}

static void test_heartbeat_keeps_active(void)
{
    setup();
    /* 3 s timeout, heartbeats every ~100 ms for ~7 s (> two timeouts); the
     * generous timeout keeps a loaded machine's stalls from mattering. */
    placement_service_t *ps = start_service(0, 0, 3000);
    CHECK(ps);
    rpc_client_t *w = client();
    reply_t r = reg(w, "w1", "a", 1024);
    CHECK(r.result);
    reply_free(&r);
    uint64_t end = now_mono_ms() + 7000;
    int beats = 0;
    while (now_mono_ms() < end) {
        r = heartbeat(w, "w1", 0, 0);
        CHECK_STR(rstr(&r, "state"), "active");
        reply_free(&r);
        beats++;
        run_for(100);
    }
    CHECK(beats >= 3);
    const fleet_worker_t *fw = fleet_get(placement_service_fleet(ps), "w1");
    CHECK(fw && fleet_worker_state(fw) == FLEET_ACTIVE);
    /* heartbeats as notifications are accepted too */
    json_t *hb = json_pack("{s:s,s:i,s:i}", "worker_id", "w1", "memory_used_mb", 0, "environments", 0);
    int rc = rpc_client_notify(w, "worker.heartbeat", hb, NULL, 0, NULL);
    json_decref(hb);
    CHECK(rc == 0);
    run_for(100);
    r = call(w, "placement.workers", json_object());
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(r.result, "workers"), 0),
                                                "state")), "active");
    reply_free(&r);
    rpc_client_free(w);
    placement_service_free(ps);
    teardown();
}

static void test_missed_heartbeats_lost(void)
{
    setup();
    placement_service_t *ps = start_service(0, 0, 1000);
    CHECK(ps);
    rpc_client_t *listener = client(), *w = client();
    notes_t notes = {0};
    rpc_client_set_notify_cb(listener, notify_cb, &notes);
    reply_t r = call(listener, "placement.status", json_object());   /* be known */
    CHECK(r.result);
    reply_free(&r);
    r = reg(w, "w1", "a", 1024);
    CHECK(r.result);
    reply_free(&r);
    r = env_added(w, "w1", "fn", 128);
    CHECK(r.result);
    reply_free(&r);

    /* silence: LOST, announced once to the listener */
    uint64_t end = now_mono_ms() + DEADLINE_MS;
    while (notes.lost == 0 && now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK(notes.lost == 1);
    CHECK_STR(notes.lost_id, "w1");
    CHECK_STR(notes.lost_addr, "unix:/tmp/w1.sock");
    run_for(300);
    CHECK(notes.lost == 1);

    /* a late heartbeat learns it is lost; env_added on it is refused */
    r = heartbeat(w, "w1", 0, 0);
    CHECK_STR(rstr(&r, "state"), "lost");
    reply_free(&r);
    r = env_added(w, "w1", "fn", 128);
    CHECK_STR(r.error, "WorkerGone");
    r = pick(w, "fn", 128);
    CHECK_STR(r.error, "NoCapacity");

    /* re-registering brings it back */
    r = reg(w, "w1", "a", 1024);
    CHECK(r.result);
    reply_free(&r);
    r = heartbeat(w, "w1", 0, 0);
    CHECK_STR(rstr(&r, "state"), "active");
    reply_free(&r);
    rpc_client_free(w);
    rpc_client_free(listener);
    placement_service_free(ps);
    teardown();
}

static void test_pick_spread_and_capacity(void)
{
    setup();
    placement_service_t *ps = start_service(0, 0, 0);
    CHECK(ps);
    rpc_client_t *c = client();
    reply_t r = reg(c, "wa", "a", 4096);
    CHECK(r.result);
    reply_free(&r);
    r = reg(c, "wb", "b", 2048);
    CHECK(r.result);
    reply_free(&r);

    /* six environments of one function: three per zone */
    int in_a = 0, in_b = 0;
    for (int i = 0; i < 6; i++) {
        r = pick(c, "fn", 128);
        CHECK(r.result);
        const char *id = rstr(&r, "worker_id");
        CHECK(id);
        char wid[16];
        snprintf(wid, sizeof wid, "%s", id);
        if (!strcmp(wid, "wa")) {
            in_a++;
            CHECK_STR(rstr(&r, "zone"), "a");
            CHECK_STR(rstr(&r, "address"), "unix:/tmp/wa.sock");
        } else {
            in_b++;
            CHECK_STR(rstr(&r, "zone"), "b");
        }
        reply_free(&r);
        r = env_added(c, wid, "fn", 128);
        CHECK(r.result);
        reply_free(&r);
    }
    CHECK(in_a == 3 && in_b == 3);

    /* capacity: only wa has 3000 MB free; after committing it nobody has */
    r = pick(c, "big", 3000);
    CHECK_STR(rstr(&r, "worker_id"), "wa");
    reply_free(&r);
    r = env_added(c, "wa", "big", 3000);
    CHECK(r.result);
    reply_free(&r);
    r = pick(c, "big", 3000);
    CHECK_STR(r.error, "NoCapacity");
    /* env_removed frees it again */
    r = call(c, "placement.env_removed",
             json_pack("{s:s,s:s,s:i}", "worker_id", "wa", "function", "big", "memory_mb", 3000));
    CHECK(r.result);
    reply_free(&r);
    r = pick(c, "big", 3000);
    CHECK_STR(rstr(&r, "worker_id"), "wa");
    reply_free(&r);

    /* exclude */
    r = call(c, "placement.pick", json_pack("{s:s,s:i,s:[s]}", "function", "x", "memory_mb", 128,
                                            "exclude", "wa"));
    CHECK_STR(rstr(&r, "worker_id"), "wb");
    reply_free(&r);
    r = call(c, "placement.pick", json_pack("{s:s,s:i,s:[s,s]}", "function", "x", "memory_mb", 128,
                                            "exclude", "wa", "wb"));
    CHECK_STR(r.error, "NoCapacity");

    /* a heartbeat reporting more memory in use than tracked lowers free memory */
    r = heartbeat(c, "wb", 2000, 3);
    reply_free(&r);
    r = call(c, "placement.pick", json_pack("{s:s,s:i,s:[s]}", "function", "x", "memory_mb", 128,
                                            "exclude", "wa"));
    CHECK_STR(r.error, "NoCapacity");
    rpc_client_free(c);
    placement_service_free(ps);
    teardown();
}

static void test_no_capacity_empty_fleet(void)
{
    setup();
    placement_service_t *ps = start_service(0, 0, 0);
    CHECK(ps);
    rpc_client_t *c = client();
    reply_t r = pick(c, "fn", 128);
    CHECK_STR(r.error, "NoCapacity");
    CHECK(!r.result);
    r = call(c, "placement.workers", json_object());
    CHECK(json_array_size(json_object_get(r.result, "workers")) == 0);
    reply_free(&r);
    rpc_client_free(c);
    placement_service_free(ps);
    teardown();
}

static void test_draining_short_lease(void)
{
    setup();
    /* lease 6 s, drain in its last 5.5 s: DRAINING after ~0.5 s */
    placement_service_t *ps = start_service(6000, 5500, 0);
    CHECK(ps);
    rpc_client_t *listener = client(), *w = client();
    notes_t notes = {0};
    rpc_client_set_notify_cb(listener, notify_cb, &notes);
    reply_t r = call(listener, "placement.status", json_object());
    reply_free(&r);
    r = reg(w, "w1", "a", 1024);
    CHECK(r.result);
    reply_free(&r);
    r = env_added(w, "w1", "fn", 128);
    CHECK(r.result);
    reply_free(&r);

    char state[16] = "";
    uint64_t end = now_mono_ms() + DEADLINE_MS;
    while (strcmp(state, "draining") != 0 && now_mono_ms() < end) {
        run_for(50);
        r = heartbeat(w, "w1", 128, 1);
        snprintf(state, sizeof state, "%s", rstr(&r, "state") ? rstr(&r, "state") : "?");
        reply_free(&r);
    }
    CHECK_STR(state, "draining");
    /* a draining worker takes no new environments */
    r = pick(w, "fn", 128);
    CHECK_STR(r.error, "NoCapacity");
    r = call(w, "placement.workers", json_object());
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(r.result, "workers"), 0),
                                                "state")), "draining");
    reply_free(&r);

    /* its last environment goes: RETIRED, announced */
    r = call(w, "placement.env_removed",
             json_pack("{s:s,s:s,s:i}", "worker_id", "w1", "function", "fn", "memory_mb", 128));
    CHECK(r.result);
    reply_free(&r);
    r = heartbeat(w, "w1", 0, 0);
    reply_free(&r);
    end = now_mono_ms() + DEADLINE_MS;
    while (notes.retired == 0 && now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK(notes.retired == 1);
    CHECK_STR(notes.retired_id, "w1");
    CHECK(notes.lost == 0);
    r = heartbeat(w, "w1", 0, 0);
    CHECK_STR(rstr(&r, "state"), "retired");
    reply_free(&r);
    rpc_client_free(w);
    rpc_client_free(listener);
    placement_service_free(ps);
    teardown();
}

static void test_status_json(void)
{
    setup();
    placement_service_t *ps = start_service(0, 0, 0);
    CHECK(ps);
    rpc_client_t *c = client();
    reply_t r = reg(c, "w1", "a", 2048);
    reply_free(&r);
    r = env_added(c, "w1", "fn", 512);
    reply_free(&r);
    r = call(c, "placement.status", json_object());
    CHECK(r.result);
    CHECK(json_integer_value(json_object_get(r.result, "active")) == 1);
    CHECK(json_integer_value(json_object_get(r.result, "capacity_mb")) == 2048);
    CHECK(json_integer_value(json_object_get(r.result, "committed_mb")) == 512);
    CHECK(json_real_value(json_object_get(r.result, "utilization")) == 0.25);
    json_t *w0 = json_array_get(json_object_get(r.result, "workers"), 0);
    CHECK_STR(json_string_value(json_object_get(w0, "id")), "w1");
    CHECK_STR(json_string_value(json_object_get(w0, "state")), "active");
    CHECK(json_integer_value(json_object_get(w0, "environments")) == 1);
    CHECK(json_integer_value(json_object_get(json_object_get(w0, "functions"), "fn")) == 1);
    CHECK(json_integer_value(json_object_get(w0, "cpus")) == 2);
    reply_free(&r);
    rpc_client_free(c);
    placement_service_free(ps);
    teardown();
}

static void test_malformed_params(void)
{
    setup();
    placement_service_t *ps = start_service(0, 0, 0);
    CHECK(ps);
    rpc_client_t *c = client();
    reply_t r;
    r = call(c, "worker.register", json_pack("{s:s}", "worker_id", "w1"));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "worker.register", json_pack("{s:s,s:s,s:s,s:s}", "worker_id", "w1", "address", "x",
                                             "zone", "a", "memory_mb", "lots"));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "worker.register", json_pack("{s:s,s:s,s:s,s:i}", "worker_id", "w1", "address", "x",
                                             "zone", "a", "memory_mb", 0));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "worker.register", json_pack("{s:s,s:s,s:s,s:i}", "worker_id", "", "address", "x",
                                             "zone", "a", "memory_mb", 10));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "worker.heartbeat", json_pack("{s:i}", "worker_id", 7));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "worker.heartbeat", json_pack("{s:s,s:i}", "worker_id", "w1", "memory_used_mb", -5));
    CHECK_STR(r.error, "InvalidParams");
    r = heartbeat(c, "nobody", 0, 0);
    CHECK_STR(r.error, "UnknownWorker");
    r = call(c, "placement.pick", json_pack("{s:s}", "function", "fn"));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "placement.pick", json_pack("{s:s,s:i,s:s}", "function", "fn", "memory_mb", 128,
                                            "exclude", "w1"));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "placement.pick", json_pack("{s:s,s:i,s:[i]}", "function", "fn", "memory_mb", 128,
                                            "exclude", 3));
    CHECK_STR(r.error, "InvalidParams");
    r = call(c, "placement.env_added", json_pack("{s:s}", "worker_id", "w1"));
    CHECK_STR(r.error, "InvalidParams");
    r = env_added(c, "nobody", "fn", 128);
    CHECK_STR(r.error, "UnknownWorker");
    r = call(c, "placement.bogus", json_object());
    CHECK_STR(r.error, "UnknownMethod");
    r = call(c, "placement.workers", NULL);
    CHECK(r.result);
    reply_free(&r);
    CHECK(fleet_count(placement_service_fleet(ps)) == 0);

    /* still serving, on the same connection and a new one */
    r = reg(c, "w1", "a", 1024);
    CHECK(r.result);
    reply_free(&r);
    r = call(c, "placement.env_removed",
             json_pack("{s:s,s:s,s:i}", "worker_id", "w1", "function", "never", "memory_mb", 1));
    CHECK_STR(r.error, "InvalidParams");
    rpc_client_t *c2 = client();
    r = pick(c2, "fn", 128);
    CHECK_STR(rstr(&r, "worker_id"), "w1");
    reply_free(&r);
    rpc_client_free(c2);
    rpc_client_free(c);
    placement_service_free(ps);
    teardown();
}

static void test_local_provider_argv(void)
{
    provider_local_config_t lc = {.exe = "/opt/flicker/bin/flicker", .data_dir = "/var/lib/fl",
                                  .placement_addr = "tcp:127.0.0.1:9100", .memory_mb = 3072};
    const char *want1[] = {"/opt/flicker/bin/flicker", "serve", "worker", "--listen",
                           "unix:/var/lib/fl/worker-1.sock", "--id", "local-1", "--zone", "local-a",
                           "--placement", "tcp:127.0.0.1:9100", "--memory-mb", "3072", "--data",
                           "/var/lib/fl", NULL};
    char **a = provider_local_argv(&lc, 1);
    int i = 0;
    for (; want1[i]; i++)
        if (!a[i] || strcmp(a[i], want1[i]) != 0)
            break;
    bool ok = !want1[i] && !a[i];
    provider_argv_free(a);
    CHECK(ok);
    a = provider_local_argv(&lc, 2);
    ok = !strcmp(a[6], "local-2") && !strcmp(a[8], "local-b") &&
         !strcmp(a[4], "unix:/var/lib/fl/worker-2.sock");
    provider_argv_free(a);
    CHECK(ok);
    a = provider_local_argv(&lc, 3);
    ok = !strcmp(a[8], "local-a");
    provider_argv_free(a);
    CHECK(ok);
    /* no exe: this binary */
    lc.exe = NULL;
    a = provider_local_argv(&lc, 1);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    ok = !strcmp(a[0], self);
    provider_argv_free(a);
    CHECK(ok);
    err_t err = {0};
    lc.data_dir = NULL;
    CHECK(provider_local_new(&lc, &err) == NULL);
}

static char *read_args(const char *dir, const char *id)
{
    char *p = xasprintf("%s/args-%s", dir, id);
    char *text = read_file(p, 65536, NULL, NULL);
    free(p);
    return text;
}

/* The local provider with an injected harmless binary: a script that
 * records its arguments and execs `sleep`.  Checks the spawn (argv), the
 * registration bookkeeping, SIGTERM on RETIRED, reaping, the replacement,
 * and that destroy() stops the rest. */
static void test_local_provider_spawn_reap(void)
{
    setup();
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/flicker-test-psvc-%d.d", (int)getpid());
    mkdir(dir, 0700);
    char *script = xasprintf("%s/fake-worker.sh", dir);
    const char *text = "#!/bin/sh\n"
                       "d=$(dirname \"$0\")\n"
                       "printf '%s\\n' \"$@\" > \"$d/tmp.$$\" && mv \"$d/tmp.$$\" \"$d/args-$6\"\n"
                       "exec sleep 60\n";
    CHECK(write_file_atomic(script, text, strlen(text), 0700, NULL) == 0);

    placement_service_t *ps = start_service(0, 0, 0);   /* min_workers 1 */
    CHECK(ps);
    provider_local_config_t lc = {.exe = script, .data_dir = dir, .placement_addr = addr,
                                  .memory_mb = 512};
    err_t err = {0};
    placement_provider_t *prov = provider_local_new(&lc, &err);
    CHECK(prov);
    placement_service_set_provider(ps, prov);

    /* the tick wants one worker: local-1 starts, once */
    char *args = NULL;
    uint64_t end = now_mono_ms() + 2 * DEADLINE_MS;
    while (!(args = read_args(dir, "local-1")) && now_mono_ms() < end)
        run_for(50);
    CHECK(args);
    char *want = xasprintf("serve\nworker\n--listen\nunix:%s/worker-1.sock\n--id\nlocal-1\n--zone\n"
                           "local-a\n--placement\n%s\n--memory-mb\n512\n--data\n%s\n",
                           dir, addr, dir);
    bool same = strcmp(args, want) == 0;
    if (!same)
        printf("  args:\n%s  want:\n%s", args, want);
    free(args);
    free(want);
    CHECK(same);
    run_for(300);
    CHECK(provider_local_children(prov) == 1);   /* pending, not started twice */
    pid_t pid1 = provider_local_pid(prov, "local-1");
    CHECK(pid1 > 0);

    /* it "registers" (a fake client under its id), then is drained: RETIRED
     * (no environments) -> SIGTERM -> reaped; a replacement local-2 starts */
    rpc_client_t *w = client();
    reply_t r = reg(w, "local-1", "local-a", 512);
    CHECK(r.result);
    reply_free(&r);
    CHECK(fleet_drain(placement_service_fleet(ps), "local-1", now_wall_ms(), NULL) == 0);
    end = now_mono_ms() + 2 * DEADLINE_MS;
    while (provider_local_pid(prov, "local-1") != 0 && now_mono_ms() < end)
        run_for(50);
    CHECK(provider_local_pid(prov, "local-1") == 0);
    CHECK(kill(pid1, 0) < 0 && errno == ESRCH);     /* reaped, not a zombie */
    end = now_mono_ms() + 2 * DEADLINE_MS;
    while (!(args = read_args(dir, "local-2")) && now_mono_ms() < end)
        run_for(50);
    CHECK(args);
    same = strstr(args, "--zone\nlocal-b\n") != NULL && strstr(args, "worker-2.sock") != NULL;
    free(args);
    CHECK(same);
    pid_t pid2 = provider_local_pid(prov, "local-2");
    CHECK(pid2 > 0);

    rpc_client_free(w);
    placement_service_free(ps);
    provider_free(prov);                                   /* stops local-2 */
    CHECK(kill(pid2, 0) < 0 && errno == ESRCH);
    char *cmd = xasprintf("rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    free(cmd);
    free(script);
    teardown();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (!getenv("PSVC_TEST_LOG"))
        log_set_level(LOG_ERROR);
    RUN(test_register_lease);
    RUN(test_heartbeat_keeps_active);
    RUN(test_missed_heartbeats_lost);
    RUN(test_pick_spread_and_capacity);
    RUN(test_no_capacity_empty_fleet);
    RUN(test_draining_short_lease);
    RUN(test_status_json);
    RUN(test_malformed_params);
    RUN(test_local_provider_argv);
    RUN(test_local_provider_spawn_reap);
    CHECK_EXIT();
}
