/* test_backend_remote.c - the frontend's remote backend
 * (src/frontend/backend_remote.c) finding the assignment leader among
 * replicas, against fake replicas served by this process (rpc.h servers on
 * its event loop).
 *
 * The rule under test: the belief in which replica leads may only be moved
 * away from a replica *by that replica's failure*.  Before, a failed
 * acquire rotated the belief from wherever it stood: when the background
 * asg.status refresh had meanwhile found the real leader, the failure
 * rotated past it, back to the failing replica, over and over, and the
 * acquire gave up after 10 s although a leader was serving (seen in
 * test_multihost's test_stop_a_host, where each attempt on the killed
 * replica waited out the client's 2 s reconnect backoff).
 *
 * How: replicas "A,C".  A stands for such a replica: it holds every
 * acquire 1.5 s and then fails it as Unreachable (what a dead replica costs
 * once the reconnect backoff has grown), while its asg.status already names
 * C.  C is the leader and hands out an environment.  The belief starts at
 * A; the status refresh (at once, then every second) moves it to C while
 * the acquire waits on A.  The acquire must end at C, long before the
 * give-up; the release must go to C too.  No sleeping: the loop runs until
 * the callback or a deadline. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "frontend/backend.h"
#include "store/store.h"

static struct event_base *base;
static char dir[PATH_MAX], addr_a[PATH_MAX + 16], addr_c[PATH_MAX + 16];
static int acquires_a, acquires_c, releases_c;

typedef struct held {
    rpc_call_t *call;
    struct event *ev;
} held_t;

static void fail_held(evutil_socket_t fd, short what, void *arg)
{
    held_t *h = arg;
    rpc_reply_error(h->call, RPC_UNREACHABLE, "%s", "replica A is not there");
    event_free(h->ev);
    free(h);
}

static void replica_a(rpc_call_t *c, const char *m, json_t *params, const void *body, size_t len,
                      void *arg)
{
    if (!strcmp(m, "asg.acquire")) {
        acquires_a++;
        held_t *h = xcalloc(1, sizeof *h);
        h->call = c;
        h->ev = evtimer_new(base, fail_held, h);
        struct timeval tv = {1, 500000};
        evtimer_add(h->ev, &tv);
    } else if (!strcmp(m, "asg.status")) {
        json_t *r = json_pack("{s:s,s:i,s:s}", "role", "follower", "term", 2, "leader", addr_c);
        rpc_reply(c, r, NULL, 0);
        json_decref(r);
    } else {
        rpc_reply_error(c, RPC_UNREACHABLE, "%s", "replica A is not there");
    }
}

static void leader_c(rpc_call_t *c, const char *m, json_t *params, const void *body, size_t len,
                     void *arg)
{
    json_t *r = NULL;
    if (!strcmp(m, "asg.acquire")) {
        acquires_c++;
        r = json_pack("{s:s,s:s,s:s,s:b}", "env_id", "env-1", "worker_id", "w1", "worker_address",
                      "tcp:127.0.0.1:1", "cold", 0);
    } else if (!strcmp(m, "asg.status")) {
        r = json_pack("{s:s,s:i,s:s}", "role", "leader", "term", 2, "leader", addr_c);
    } else if (!strcmp(m, "asg.release")) {
        releases_c++;
    }
    rpc_reply(c, r, NULL, 0);
    json_decref(r);
}

typedef struct got {
    bool done;
    int status;
    char env_id[40];
    uint64_t at;
} got_t;

static void on_acquired(const acquire_result_t *r, const backend_lease_t *lease, void *arg)
{
    got_t *g = arg;
    g->done = true;
    g->status = r->status;
    g->at = now_mono_ms();
    if (lease)
        snprintf(g->env_id, sizeof g->env_id, "%s", lease->env_id);
}

static void loop_for(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static fn_config_t *config(void)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:{},s:s,s:s,s:s,s:i,s:s,s:s,s:i,s:i}",
                          "name", "fn", "version", "1", "arn", "arn:aws:lambda:us-east-1:1:function:fn",
                          "runtime", "python3.12", "handler", "h.h", "memory_mb", 128, "timeout_s", 3,
                          "ephemeral_mb", 512, "env_vars", "code_sha256", "x", "code_dir", "/tmp",
                          "revision_id", "r1", "reserved_concurrency", -1, "config_key", "fn:1:r1",
                          "qualified_arn", "arn:aws:lambda:us-east-1:1:function:fn:1",
                          "max_retry_attempts", 2, "max_event_age_s", 21600);
    err_t err = {0};
    fn_config_t *cfg = fn_config_from_json(j, &err);
    json_decref(j);
    return cfg;
}

static void test_failure_moves_belief_only_from_the_failed_replica(void)
{
    err_t err = {0};
    rpc_server_t *a = rpc_server_new(base, replica_a, NULL);
    rpc_server_t *c = rpc_server_new(base, leader_c, NULL);
    CHECK(rpc_server_listen(a, addr_a, &err) == 0);
    CHECK(rpc_server_listen(c, addr_c, &err) == 0);
    char list[2 * (PATH_MAX + 16) + 2];
    snprintf(list, sizeof list, "%s,%s", addr_a, addr_c);
    backend_t *be = backend_remote_new(base, list, NULL, NULL, 1000, &err);
    CHECK(be);
    fn_config_t *cfg = config();
    CHECK(cfg);
    got_t g = {0};
    uint64_t t0 = now_mono_ms();
    be->ops->acquire(be, cfg, 0, on_acquired, &g);
    while (!g.done && now_mono_ms() - t0 < 15000)
        loop_for(20);
    printf("# acquire: status %d after %llu ms (A asked %d times, C %d)\n", g.status,
           (unsigned long long)(g.at - t0), acquires_a, acquires_c);
    CHECK(g.done && g.status == ACQUIRE_OK);
    CHECK_STR(g.env_id, "env-1");
    CHECK(acquires_a == 1 && acquires_c == 1); /* one failure on A, then C */
    CHECK(g.at - t0 < 5000);
    backend_lease_t lease = {0};
    snprintf(lease.env_id, sizeof lease.env_id, "%s", g.env_id);
    be->ops->release(be, &lease, false);
    uint64_t t1 = now_mono_ms();
    while (releases_c == 0 && now_mono_ms() - t1 < 5000)
        loop_for(20);
    CHECK(releases_c == 1); /* the release went to the leader */
    /* the next acquire goes straight to C */
    got_t g2 = {0};
    t0 = now_mono_ms();
    be->ops->acquire(be, cfg, 0, on_acquired, &g2);
    while (!g2.done && now_mono_ms() - t0 < 15000)
        loop_for(20);
    CHECK(g2.done && g2.status == ACQUIRE_OK && acquires_a == 1 && acquires_c == 2);
    fn_config_free(cfg);
    be->ops->free(be);
    rpc_server_free(a);
    rpc_server_free(c);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_WARN);
    char tmpl[] = "/tmp/flicker-br-XXXXXX";
    if (!mkdtemp(tmpl)) {
        printf("FAIL setup: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    snprintf(dir, sizeof dir, "%s", tmpl);
    snprintf(addr_a, sizeof addr_a, "unix:%s/a.sock", dir);
    snprintf(addr_c, sizeof addr_c, "unix:%s/c.sock", dir);
    base = event_base_new();
    RUN(test_failure_moves_belief_only_from_the_failed_replica);
    event_base_free(base);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/a.sock", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/c.sock", dir);
    unlink(path);
    rmdir(dir);
    CHECK_EXIT();
}
