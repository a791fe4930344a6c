/* test_asg_service.c - `flicker serve assignment` replicas (separate
 * processes: fork+exec of BUILD/flicker) against a real 3-member etcd
 * cluster (scripts/etcd-cluster.sh, free ports, temp dir), with a fake
 * placement and fake workers served by this process (rpc.h servers on its
 * event loop).  Prints SKIP when etcd is absent.
 *
 * Covers: cold and warm acquire, release, throttling (reserved and
 * unreserved pools), concurrent acquires (every holder its own env),
 * env.dead and worker.lost, a paused leader that must not serve once
 * resumed, init failure, keep-alive destroy, NotLeader from a
 * follower with the leader's address, failover (kill -9 of the leader: the
 * follower takes over with the full table and hands the previously idle env
 * out warm; the takeover time is measured and printed, never asserted),
 * reconciliation (orphan destroyed, missing entry dropped, initializing ->
 * idle), a clean SIGTERM exit (status 0: under ASan, no leaks), followers
 * reporting the current term, a replica restarted at the same address
 * after kill -9 (it must win a new, higher term, never resume the dead
 * one's), and a leader cut off from the journal (every etcd member
 * SIGSTOPped) stepping down by its own lease clock.
 *
 * The etcd members run with --election-timeout 500 (via an ETCD wrapper
 * script) so etcd accepts 1 s leases; ASG_ETCD_DEFAULTS=1 keeps etcd's
 * defaults (minimum lease 2 s).  ASG_FAILOVER_RUNS=N sets how many
 * takeovers are measured (default 3); ASG_LOG_DIR=DIR keeps the replicas'
 * logs (replica-N.log) there. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "journal/journal.h"

static char script[PATH_MAX], cdir[PATH_MAX], eps[512], flicker[PATH_MAX];
static struct event_base *base;
static int prefix_seq;

/* ------------------------------------------------------------ cluster */

static int find_paths(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = 0;
    *strrchr(exe, '/') = 0; /* BUILD/tests */
    *strrchr(exe, '/') = 0; /* BUILD */
    if (strlen(exe) + 9 > sizeof flicker)
        return -1;
    strcpy(flicker, exe);
    strcat(flicker, "/flicker");
    for (int up = 0; up < 4; up++) {
        if (snprintf(script, sizeof script, "%s/scripts/etcd-cluster.sh", exe) < (int)sizeof script &&
            access(script, X_OK) == 0)
            return access(flicker, X_OK);
        char *slash = strrchr(exe, '/');
        if (!slash)
            break;
        *slash = 0;
    }
    return -1;
}

static int ports_free(int b)
{
    for (int p = b; p < b + 6; p++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        if (fd >= 0)
            close(fd);
        if (!ok)
            return 0;
    }
    return 1;
}

static int guard_fd = -1;
static pid_t guard_pid;

/* A forked guard stops the cluster and removes cdir when we exit, however. */
static void start_guard(void)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return;
    guard_pid = fork();
    if (guard_pid == 0) {
        close(p[1]);
        setpgid(0, 0);
        char c;
        while (read(p[0], &c, 1) < 0 && errno == EINTR)
            ;
        execl("/bin/sh", "sh", "-c", "\"$0\" stop \"$1\" >/dev/null 2>&1; rm -rf \"$1\"", script,
              cdir, (char *)NULL);
        _exit(127);
    }
    close(p[0]);
    guard_fd = p[1];
}

static void stop_cluster(void)
{
    if (guard_fd >= 0) {
        close(guard_fd);
        guard_fd = -1;
        waitpid(guard_pid, NULL, 0);
    }
}

static int start_cluster(void)
{
    char tmpl[] = "/tmp/flicker-asg-XXXXXX";
    if (!mkdtemp(tmpl))
        return -1;
    snprintf(cdir, sizeof cdir, "%s", tmpl);
    start_guard();
    if (!getenv("ASG_ETCD_DEFAULTS")) {
        char wrap[PATH_MAX + 16];
        snprintf(wrap, sizeof wrap, "%s/etcd-fast", cdir);
        FILE *f = fopen(wrap, "w");
        if (!f)
            return -1;
        fprintf(f, "#!/bin/sh\nexec etcd \"$@\" --heartbeat-interval 50 --election-timeout 500\n");
        fclose(f);
        chmod(wrap, 0755);
        setenv("ETCD", wrap, 1);
    }
    unsigned seed = (unsigned)getpid() ^ (unsigned)now_mono_us();
    for (int attempt = 0; attempt < 4; attempt++) {
        int b = 0;
        for (int k = 0; k < 50 && !b; k++) {
            int c = 20000 + (int)(rand_r(&seed) % 20000u);
            if (ports_free(c))
                b = c;
        }
        if (!b)
            return -1;
        char cmd[PATH_MAX * 2 + 64];
        snprintf(cmd, sizeof cmd, "'%s' start '%s' %d", script, cdir, b);
        FILE *f = popen(cmd, "r");
        if (!f)
            return -1;
        char line[512] = "";
        char *got = fgets(line, sizeof line, f);
        int rc = pclose(f);
        if (got && rc == 0) {
            line[strcspn(line, "\n")] = 0;
            snprintf(eps, sizeof eps, "%s", line);
            return 0;
        }
    }
    return -1;
}

/* ------------------------------------------------------- loop helpers */

static void loop_for(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

typedef struct sync_res {
    bool done;
    char error[64], message[256];
    json_t *result, *detail;
    char body[512];
    size_t len;
} sync_res_t;

static void on_sync(const rpc_result_t *r, void *arg)
{
    sync_res_t *s = arg;
    s->done = true;
    if (r->error) {
        snprintf(s->error, sizeof s->error, "%s", r->error);
        snprintf(s->message, sizeof s->message, "%s", r->message);
        s->detail = json_incref(r->detail);
    } else {
        s->result = json_incref(r->result);
    }
    s->len = r->len < sizeof s->body - 1 ? r->len : sizeof s->body - 1;
    if (s->len)
        memcpy(s->body, r->body, s->len);
    s->body[s->len] = 0;
    event_base_loopbreak(base);
}

static void res_clear(sync_res_t *s)
{
    json_decref(s->result);
    json_decref(s->detail);
    memset(s, 0, sizeof *s);
}

/* Calls and runs the loop until the answer (or timeout_ms + 1 s). */
static void call(rpc_client_t *c, const char *m, json_t *params, int timeout_ms, sync_res_t *out)
{
    memset(out, 0, sizeof *out);
    if (rpc_call(c, m, params, NULL, 0, timeout_ms, on_sync, out) < 0) {
        snprintf(out->error, sizeof out->error, "callfailed");
        out->done = true;
    }
    json_decref(params);
    uint64_t end = now_mono_ms() + (uint64_t)timeout_ms + 1000;
    while (!out->done && now_mono_ms() < end)
        loop_for(50);
}

static const char *jget(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* ------------------------------------------------------ fake services */

typedef struct fake_worker {
    char id[16], addr[64];
    rpc_server_t *srv;
    json_t *envs;        /* env_id -> {state, config_key, function} */
    json_t *destroyed;   /* [env_id] */
    int creates;
    rpc_conn_t *conn;    /* the replica's connection (for env.dead) */
} fake_worker_t;

static fake_worker_t W;
static rpc_server_t *P;
static char p_addr[64];
static rpc_conn_t *p_conn; /* the replica's connection to placement (for worker.lost) */

static void on_conn_close(rpc_conn_t *c, void *arg)
{
    rpc_conn_t **slot = arg;
    if (*slot == c)
        *slot = NULL;
}

static void worker_handler(rpc_call_t *c, const char *m, json_t *params, const void *body,
                           size_t len, void *arg)
{
    fake_worker_t *w = arg;
    const char *id = jget(params, "env_id");
    if (!strcmp(m, "env.create")) {
        w->creates++;
        w->conn = rpc_call_conn(c);
        json_t *cfg = json_object_get(params, "config");
        const char *name = jget(cfg, "name");
        if (name && !strncmp(name, "fails", 5)) {
            json_t *x = json_pack("{s:s}", "log_tail", "boom in init");
            const char *b = "{\"errorType\":\"Runtime.ExitError\"}";
            rpc_reply_error_ex(c, "InitFailed", x, b, strlen(b), "%s", "Init failed");
            json_decref(x);
            return;
        }
        json_object_set_new(w->envs, id, json_pack("{s:s,s:s,s:s}", "state", "idle", "config_key",
                                                   jget(cfg, "config_key"), "function", name));
        rpc_reply(c, NULL, NULL, 0);
    } else if (!strcmp(m, "env.destroy")) {
        json_object_del(w->envs, id);
        json_array_append_new(w->destroyed, json_string(id));
        rpc_reply(c, NULL, NULL, 0);
    } else if (!strcmp(m, "env.list")) {
        json_t *arr = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(w->envs, k, v)
            json_array_append_new(arr, json_pack("{s:s,s:O,s:O,s:O,s:s}", "env_id", k, "state",
                                                 json_object_get(v, "state"), "config_key",
                                                 json_object_get(v, "config_key"), "function",
                                                 json_object_get(v, "function"), "version", "1"));
        json_t *r = json_pack("{s:s,s:o}", "worker_id", w->id, "envs", arr);
        rpc_reply(c, r, NULL, 0);
        json_decref(r);
    } else {
        rpc_reply_error(c, "InvalidRequest", "fake worker: %s", m);
    }
}

static void placement_handler(rpc_call_t *c, const char *m, json_t *params, const void *body,
                              size_t len, void *arg)
{
    p_conn = rpc_call_conn(c);
    if (!strcmp(m, "placement.pick")) {
        json_t *r = json_pack("{s:s,s:s,s:s}", "worker_id", W.id, "address", W.addr, "zone", "z1");
        rpc_reply(c, r, NULL, 0);
        json_decref(r);
    } else if (!strcmp(m, "placement.workers")) {
        json_t *r = json_pack("{s:[{s:s,s:s,s:s,s:s,s:i}]}", "workers", "id", W.id, "address",
                              W.addr, "zone", "z1", "state", "active", "lease_expiry_ms", 0);
        rpc_reply(c, r, NULL, 0);
        json_decref(r);
    } else {
        rpc_reply(c, NULL, NULL, 0);
    }
}

static int fakes_start(void)
{
    err_t err = {0};
    snprintf(W.id, sizeof W.id, "w1");
    W.envs = json_object();
    W.destroyed = json_array();
    W.srv = rpc_server_new(base, worker_handler, &W);
    if (rpc_server_listen(W.srv, "tcp:127.0.0.1:0", &err) < 0)
        return -1;
    snprintf(W.addr, sizeof W.addr, "tcp:127.0.0.1:%d", rpc_server_port(W.srv));
    rpc_server_set_close_cb(W.srv, on_conn_close, &W.conn);
    P = rpc_server_new(base, placement_handler, NULL);
    if (rpc_server_listen(P, "tcp:127.0.0.1:0", &err) < 0)
        return -1;
    snprintf(p_addr, sizeof p_addr, "tcp:127.0.0.1:%d", rpc_server_port(P));
    rpc_server_set_close_cb(P, on_conn_close, &p_conn);
    return 0;
}

static void fakes_reset(void)
{
    json_object_clear(W.envs);
    json_array_clear(W.destroyed);
    W.creates = 0;
}

static bool was_destroyed(const char *id)
{
    size_t i;
    json_t *v;
    json_array_foreach(W.destroyed, i, v)
        if (!strcmp(json_string_value(v), id))
            return true;
    return false;
}

/* ------------------------------------------------------------ replicas */

typedef struct replica {
    pid_t pid;
    char addr[64];
    rpc_client_t *c;
} replica_t;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static void new_prefix(char *out, size_t n)
{
    snprintf(out, n, "/asgtest/%d/p%d", (int)getpid(), ++prefix_seq);
}

static pid_t started[64];
static int n_started;

/* Ends replicas a failed check left running (only pids we forked). */
static void reap_all(void)
{
    for (int i = 0; i < n_started; i++)
        if (waitpid(started[i], NULL, WNOHANG) == 0) {
            kill(started[i], SIGKILL);
            waitpid(started[i], NULL, 0);
        }
    n_started = 0;
}

/* Starts a replica at r->addr, or at a free port when r->addr is "". */
static int replica_start(replica_t *r, const char *prefix, const char *keep_alive,
                         const char *account)
{
    if (!r->addr[0])
        snprintf(r->addr, sizeof r->addr, "tcp:127.0.0.1:%d", free_port());
    char spec[700], logf[PATH_MAX + 32];
    snprintf(spec, sizeof spec, "etcd:%s;prefix=%s", eps, prefix);
    static int seq;
    const char *ld = getenv("ASG_LOG_DIR"); /* kept after the test; default: the temp dir */
    snprintf(logf, sizeof logf, "%s/replica-%d.log", ld ? ld : cdir, ++seq);
    r->pid = fork();
    if (r->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(flicker, flicker, "serve", "assignment", "--listen", r->addr, "--journal", spec,
              "--placement", p_addr, "--lease-ms", "1000", "--keep-alive", keep_alive,
              "--account-concurrency", account, "--snapshot-every", "5", (char *)NULL);
        _exit(127);
    }
    if (r->pid > 0 && n_started < 64)
        started[n_started++] = r->pid;
    err_t err = {0};
    r->c = rpc_client_new(base, r->addr, NULL, &err);
    return r->pid > 0 && r->c ? 0 : -1;
}

/* SIGTERM; returns the exit status (0 expected) or -1. */
static int replica_stop(replica_t *r)
{
    if (r->c)
        rpc_client_free(r->c);
    r->c = NULL;
    if (r->pid <= 0)
        return 0;
    kill(r->pid, SIGTERM);
    int st = 0;
    uint64_t end = now_mono_ms() + 20000;
    while (waitpid(r->pid, &st, WNOHANG) == 0) {
        if (now_mono_ms() > end) {
            kill(r->pid, SIGKILL);
            waitpid(r->pid, &st, 0);
            r->pid = 0;
            return -1;
        }
        loop_for(20);
    }
    r->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void replica_kill9(replica_t *r)
{
    if (r->c)
        rpc_client_free(r->c);
    r->c = NULL;
    kill(r->pid, SIGKILL);
    waitpid(r->pid, NULL, 0);
    r->pid = 0;
}

/* asg.status role of r, into role[16]; returns 0 if it answered. */
static int status_role(replica_t *r, char role[16])
{
    sync_res_t s;
    call(r->c, "asg.status", NULL, 2000, &s);
    int rc = -1;
    if (s.result) {
        snprintf(role, 16, "%s", jget(s.result, "role"));
        rc = 0;
    }
    res_clear(&s);
    return rc;
}

/* asg.status term of r, or -1 if it did not answer. */
static long long status_term(replica_t *r)
{
    sync_res_t s;
    call(r->c, "asg.status", NULL, 2000, &s);
    long long t = s.result ? (long long)json_integer_value(json_object_get(s.result, "term")) : -1;
    res_clear(&s);
    return t;
}

static long long status_applied(replica_t *r)
{
    sync_res_t s;
    call(r->c, "asg.status", NULL, 2000, &s);
    long long t = s.result ? (long long)json_integer_value(json_object_get(s.result, "applied")) : -1;
    res_clear(&s);
    return t;
}

/* Waits until r's journal index passes n. */
static int wait_applied_above(replica_t *r, long long n, int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (now_mono_ms() < end) {
        if (status_applied(r) > n)
            return 0;
        usleep(10000);
    }
    return -1;
}

/* Waits until follower f has applied all that leader l has journaled, l
 * having journaled nothing new for 200 ms. */
static int wait_caught_up(replica_t *l, replica_t *f, int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    long long last = -2;
    while (now_mono_ms() < end) {
        long long a = status_applied(l);
        if (a >= 0 && a == last && status_applied(f) == a)
            return 0;
        last = a;
        loop_for(200);
    }
    return -1;
}

/* Waits until r answers asg.status naming `leader` as the leader. */
static int wait_knows_leader(replica_t *r, const char *leader, int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (now_mono_ms() < end) {
        sync_res_t s;
        call(r->c, "asg.status", NULL, 2000, &s);
        bool ok = s.result && jget(s.result, "leader") && !strcmp(jget(s.result, "leader"), leader);
        res_clear(&s);
        if (ok)
            return 0;
        loop_for(50);
    }
    return -1;
}

/* Waits until one of rs[0..n) is leader; returns its index or -1. */
static int wait_leader(replica_t *rs, int n, int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (now_mono_ms() < end) {
        for (int i = 0; i < n; i++) {
            char role[16];
            if (rs[i].pid > 0 && status_role(&rs[i], role) == 0 && !strcmp(role, "leader"))
                return i;
        }
        loop_for(50);
    }
    return -1;
}

static json_t *config(const char *name, int reserved)
{
    char key[128];
    snprintf(key, sizeof key, "%s:1:rev1", name);
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:{},s:s,s:s,s:s,s:i,s:s,s:s,s:i,s:i}",
                     "name", name, "version", "1", "arn", "arn:aws:lambda:us-east-1:1:function:x",
                     "runtime", "python3.12", "handler", "h.h", "memory_mb", 128, "timeout_s", 3,
                     "ephemeral_mb", 512, "env_vars", "code_sha256", "x", "code_dir", "/tmp",
                     "revision_id", "rev1", "reserved_concurrency", reserved, "config_key", key,
                     "qualified_arn", "arn:aws:lambda:us-east-1:1:function:x:1",
                     "max_retry_attempts", 2, "max_event_age_s", 21600);
}

static void acquire(replica_t *r, const char *name, int reserved, int total_reserved,
                    sync_res_t *out)
{
    call(r->c, "asg.acquire", json_pack("{s:o,s:i}", "config", config(name, reserved),
                                        "total_reserved", total_reserved), 10000, out);
}

static void release(replica_t *r, const char *env_id, bool dead, sync_res_t *out)
{
    call(r->c, "asg.release", json_pack("{s:s,s:b}", "env_id", env_id, "dead", dead), 10000, out);
}

static void release_lease(replica_t *r, const char *env_id, json_int_t lease, bool not_ours,
                          sync_res_t *out)
{
    call(r->c, "asg.release", json_pack("{s:s,s:b,s:I,s:b}", "env_id", env_id, "dead", 0, "lease",
                                        lease, "not_ours", not_ours), 10000, out);
}

/* ---------------------------------------------------------------- tests */

static void test_leader_basics(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t r = {0};
    CHECK(replica_start(&r, p, "1.5", "4") == 0);
    CHECK(wait_leader(&r, 1, 15000) == 0);
    sync_res_t a, b, x;

    /* cold, then warm (same env), then a second concurrent one is cold */
    acquire(&r, "fa", -1, 0, &a);
    CHECK(a.result);
    CHECK(json_is_true(json_object_get(a.result, "cold")));
    CHECK_STR(jget(a.result, "worker_id"), "w1");
    CHECK_STR(jget(a.result, "worker_address"), W.addr);
    char e1[64];
    snprintf(e1, sizeof e1, "%s", jget(a.result, "env_id"));
    CHECK(strlen(e1) == 32 && json_object_get(W.envs, e1));
    release(&r, e1, false, &x);
    CHECK(x.done && !x.error[0]);
    res_clear(&x);
    res_clear(&a);
    acquire(&r, "fa", -1, 0, &a);
    CHECK(a.result && json_is_false(json_object_get(a.result, "cold")));
    CHECK_STR(jget(a.result, "env_id"), e1);
    acquire(&r, "fa", -1, 0, &b);
    CHECK(b.result && json_is_true(json_object_get(b.result, "cold")));
    CHECK(strcmp(jget(b.result, "env_id"), e1));
    char e2[64];
    snprintf(e2, sizeof e2, "%s", jget(b.result, "env_id"));

    /* unreserved pool: account 4, total_reserved 2 -> 2 in flight max */
    acquire(&r, "fa", -1, 2, &x);
    CHECK_STR(x.error, "Throttled");
    CHECK_STR(jget(x.detail, "reason"), "ConcurrentInvocationLimitExceeded");
    res_clear(&x);
    release(&r, e1, false, &x);
    res_clear(&x);
    release(&r, e2, false, &x);
    res_clear(&x);
    res_clear(&a);
    res_clear(&b);

    /* reserved pool: 1 */
    acquire(&r, "fr", 1, 1, &a);
    CHECK(a.result);
    acquire(&r, "fr", 1, 1, &x);
    CHECK_STR(x.error, "Throttled");
    CHECK_STR(jget(x.detail, "reason"), "ReservedFunctionConcurrentInvocationLimitExceeded");
    res_clear(&x);
    /* released dead: removed and destroyed */
    char e3[64];
    snprintf(e3, sizeof e3, "%s", jget(a.result, "env_id"));
    release(&r, e3, true, &x);
    CHECK(!x.error[0]);
    res_clear(&x);
    res_clear(&a);
    loop_for(100);
    CHECK(was_destroyed(e3));

    /* init failure: error, body and log tail passed through, no env left */
    acquire(&r, "fails1", -1, 0, &x);
    CHECK_STR(x.error, "InitFailed");
    CHECK(strstr(x.body, "Runtime.ExitError"));
    CHECK_STR(jget(x.detail, "log_tail"), "boom in init");
    res_clear(&x);
    release(&r, "0123456789abcdef0123456789abcdef", false, &x); /* unknown: {} */
    CHECK(x.done && !x.error[0]);
    res_clear(&x);
    call(r.c, "asg.status", NULL, 2000, &x);
    CHECK(x.result && json_array_size(json_object_get(json_object_get(x.result, "table"), "envs")) == 2);
    res_clear(&x);

    /* keep-alive (1.5 s): both idle envs destroyed and gone */
    uint64_t end = now_mono_ms() + 6000;
    while (!(was_destroyed(e1) && was_destroyed(e2)) && now_mono_ms() < end)
        loop_for(100);
    CHECK(was_destroyed(e1) && was_destroyed(e2));
    loop_for(200);
    call(r.c, "asg.status", NULL, 2000, &x);
    CHECK(x.result && json_array_size(json_object_get(json_object_get(x.result, "table"), "envs")) == 0);
    res_clear(&x);
    CHECK(replica_stop(&r) == 0);
}

static int table_size(replica_t *r);

/* Many acquires at once: every holder gets its own env (warm ones first). */
static void test_concurrent_acquires(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t r = {0};
    CHECK(replica_start(&r, p, "60", "100") == 0);
    CHECK(wait_leader(&r, 1, 15000) == 0);
    enum { N = 12, WARM = 3 };
    static sync_res_t res[N];
    for (int round = 0; round < 2; round++) {
        int n = round == 0 ? WARM : N;
        for (int i = 0; i < n; i++) {
            memset(&res[i], 0, sizeof res[i]);
            json_t *pa = json_pack("{s:o,s:i}", "config", config("fc", -1), "total_reserved", 0);
            CHECK(rpc_call(r.c, "asg.acquire", pa, NULL, 0, 10000, on_sync, &res[i]) == 0);
            json_decref(pa);
        }
        uint64_t end = now_mono_ms() + 15000;
        for (int i = 0; i < n; i++)
            while (!res[i].done && now_mono_ms() < end)
                loop_for(20);
        int warm = 0;
        for (int i = 0; i < n; i++) {
            CHECK(res[i].result);
            warm += json_is_false(json_object_get(res[i].result, "cold"));
            for (int k = 0; k < i; k++)
                CHECK(strcmp(jget(res[i].result, "env_id"), jget(res[k].result, "env_id")));
        }
        CHECK(warm == (round == 0 ? 0 : WARM));
        for (int i = 0; i < n; i++) {
            sync_res_t x;
            release(&r, jget(res[i].result, "env_id"), false, &x);
            CHECK(!x.error[0]);
            res_clear(&x);
            res_clear(&res[i]);
        }
    }
    CHECK(table_size(&r) == N);
    CHECK(replica_stop(&r) == 0);
}

static int table_size(replica_t *r)
{
    sync_res_t x;
    call(r->c, "asg.status", NULL, 2000, &x);
    int n = x.result ? (int)json_array_size(json_object_get(json_object_get(x.result, "table"), "envs")) : -1;
    res_clear(&x);
    return n;
}

static int wait_table_size(replica_t *r, int n, int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (now_mono_ms() < end) {
        if (table_size(r) == n)
            return 0;
        loop_for(50);
    }
    return -1;
}

/* env.dead from the worker and worker.lost from placement drop envs. */
static void test_dead_and_lost(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t r = {0};
    CHECK(replica_start(&r, p, "60", "100") == 0);
    CHECK(wait_leader(&r, 1, 15000) == 0);
    sync_res_t a, x;
    acquire(&r, "fd", -1, 0, &a);
    CHECK(a.result && W.conn);
    char id[64];
    snprintf(id, sizeof id, "%s", jget(a.result, "env_id"));
    res_clear(&a);
    release(&r, id, false, &x);
    res_clear(&x);
    CHECK(table_size(&r) == 1);
    json_t *n = json_pack("{s:s}", "env_id", id);
    CHECK(rpc_conn_notify(W.conn, "env.dead", n, NULL, 0, NULL) == 0);
    json_decref(n);
    CHECK(wait_table_size(&r, 0, 5000) == 0);

    acquire(&r, "fd", -1, 0, &a); /* a new one, busy */
    CHECK(a.result && json_is_true(json_object_get(a.result, "cold")));
    snprintf(id, sizeof id, "%s", jget(a.result, "env_id"));
    res_clear(&a);
    CHECK(p_conn);
    n = json_pack("{s:s}", "worker_id", "w1"); /* "id" is reserved in RPC params */
    err_t nerr = {0};
    int nrc = rpc_conn_notify(p_conn, "worker.lost", n, NULL, 0, &nerr);
    if (nrc < 0)
        printf("  notify: %s\n", nerr.msg);
    CHECK(nrc == 0);
    json_decref(n);
    CHECK(wait_table_size(&r, 0, 5000) == 0);
    release(&r, id, false, &x); /* the holder's release of a dropped env: {} */
    CHECK(x.done && !x.error[0]);
    res_clear(&x);
    CHECK(replica_stop(&r) == 0);
}

static void test_not_leader_and_failover_once(int run, double *takeover_ms, int *ok)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t rs[2] = {{0}, {0}};
    *ok = 0;
    CHECK(replica_start(&rs[0], p, "60", "100") == 0);
    CHECK(wait_leader(rs, 1, 15000) == 0);
    CHECK(replica_start(&rs[1], p, "60", "100") == 0);
    replica_t *L = &rs[0], *F = &rs[1];
    CHECK(wait_knows_leader(F, L->addr, 10000) == 0);
    sync_res_t a, x;
    acquire(F, "ff", -1, 0, &x);
    if (strcmp(x.error, "NotLeader"))
        printf("  follower answered %s: %s\n", x.error, x.message);
    CHECK_STR(x.error, "NotLeader");
    if (!jget(x.detail, "leader") || strcmp(jget(x.detail, "leader"), L->addr))
    {
        printf("  NotLeader said leader=%s (want %s) err=%s msg=%s\n", jget(x.detail, "leader"), L->addr, x.error, x.message);
        char cmd[PATH_MAX + 64];
        snprintf(cmd, sizeof cmd, "tail -n 15 %s/replica-*.log", cdir);
        if (system(cmd)) {}
    }
    CHECK_STR(jget(x.detail, "leader"), L->addr);
    res_clear(&x);
    /* the follower reports the leader's term (it never led itself) */
    CHECK(status_term(L) >= 1 && status_term(F) == status_term(L));

    /* an idle env and a busy one on the leader, then more records than
     * --snapshot-every so the follower also crosses a snapshot */
    acquire(L, "ff", -1, 0, &a);
    CHECK(a.result);
    char idle_id[64];
    snprintf(idle_id, sizeof idle_id, "%s", jget(a.result, "env_id"));
    for (int i = 0; i < 3; i++) {
        /* idle<->busy reach the journal lazily: let each be written */
        CHECK(wait_applied_above(L, 1 + 2 * i, 5000) == 0);
        release(L, idle_id, false, &x);
        res_clear(&x);
        res_clear(&a);
        CHECK(wait_applied_above(L, 2 + 2 * i, 5000) == 0);
        acquire(L, "ff", -1, 0, &a);
        CHECK(a.result && !strcmp(jget(a.result, "env_id"), idle_id));
    }
    release(L, idle_id, false, &x);
    res_clear(&x);
    res_clear(&a);
    /* the follower reads the tail (idle<->busy are journaled lazily) */
    CHECK(wait_caught_up(L, F, 10000) == 0);

    uint64_t t0 = now_mono_ms();
    replica_kill9(L);
    /* poll the follower until it hands out an env */
    uint64_t end = t0 + 20000;
    bool got = false;
    while (now_mono_ms() < end) {
        acquire(F, "ff", -1, 0, &a);
        if (a.result) {
            got = true;
            break;
        }
        CHECK(!strcmp(a.error, "NotLeader") || !strcmp(a.error, "Disconnected") ||
              !strcmp(a.error, "Unreachable"));
        res_clear(&a);
        loop_for(10);
    }
    *takeover_ms = (double)(now_mono_ms() - t0);
    CHECK(got);
    printf("# failover run %d: kill -9 of the leader -> follower answers asg.acquire: %.0f ms\n",
           run, *takeover_ms);
    /* the full table survived: the idle env is handed out warm */
    CHECK(json_is_false(json_object_get(a.result, "cold")));
    CHECK_STR(jget(a.result, "env_id"), idle_id);
    release(F, idle_id, false, &x);
    res_clear(&x);
    res_clear(&a);
    CHECK(replica_stop(&rs[1]) == 0);
    /* --snapshot-every 5: the journal holds a snapshot (and the follower
     * loaded the log across it) */
    err_t err = {0};
    journal_t *j = journal_etcd_open(eps, p, &err);
    CHECK(j);
    uint64_t upto = 0;
    void *data = NULL;
    size_t len = 0;
    int has = j->ops->load_snapshot(j, &upto, &data, &len, &err);
    free(data);
    journal_close(j);
    CHECK(has == 1 && upto >= 5);
    *ok = 1;
}

static void test_failover(void)
{
    int runs = getenv("ASG_FAILOVER_RUNS") ? atoi(getenv("ASG_FAILOVER_RUNS")) : 3;
    double sum = 0, mn = 1e9, mx = 0;
    int n = 0;
    for (int i = 0; i < runs && i < 32; i++) {
        int ok = 0;
        double ms = 0;
        test_not_leader_and_failover_once(i + 1, &ms, &ok);
        CHECK(ok);
        n++;
        sum += ms;
        mn = ms < mn ? ms : mn;
        mx = ms > mx ? ms : mx;
    }
    printf("# takeover over %d runs: min %.0f ms, mean %.0f ms, max %.0f ms (lease 1000 ms)\n", n,
           mn, n ? sum / n : 0, mx);
}

static void test_sigterm_hands_over(void)
{
    /* a resigning leader lets the follower in without waiting for the lease */
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t rs[2] = {{0}, {0}};
    CHECK(replica_start(&rs[0], p, "60", "100") == 0);
    CHECK(wait_leader(rs, 1, 15000) == 0);
    CHECK(replica_start(&rs[1], p, "60", "100") == 0);
    CHECK(wait_knows_leader(&rs[1], rs[0].addr, 10000) == 0);
    uint64_t t0 = now_mono_ms();
    CHECK(replica_stop(&rs[0]) == 0);
    CHECK(wait_leader(&rs[1], 1, 15000) == 0);
    printf("# SIGTERM of the leader (resign) -> follower is leader: %llu ms\n",
           (unsigned long long)(now_mono_ms() - t0));
    CHECK(replica_stop(&rs[1]) == 0);
}

/* A leader paused past its lease (SIGSTOP) is replaced; resumed, it must
 * not hand anything out (NotLeader naming the new leader) and becomes a
 * follower with the new leader's table. */
static void test_paused_leader(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t rs[2] = {{0}, {0}};
    CHECK(replica_start(&rs[0], p, "60", "100") == 0);
    CHECK(wait_leader(rs, 1, 15000) == 0);
    CHECK(replica_start(&rs[1], p, "60", "100") == 0);
    CHECK(wait_knows_leader(&rs[1], rs[0].addr, 10000) == 0);
    sync_res_t a, x;
    acquire(&rs[0], "fp", -1, 0, &a);
    CHECK(a.result);
    char id[64];
    snprintf(id, sizeof id, "%s", jget(a.result, "env_id"));
    res_clear(&a);
    release(&rs[0], id, false, &x);
    res_clear(&x);
    long long term0 = status_term(&rs[0]);
    CHECK(term0 >= 1);
    kill(rs[0].pid, SIGSTOP);
    CHECK(wait_leader(&rs[1], 1, 15000) == 0);
    kill(rs[0].pid, SIGCONT);
    acquire(&rs[0], "fp", -1, 0, &x); /* at once: the old leader's lease is over */
    CHECK_STR(x.error, "NotLeader");
    res_clear(&x);
    CHECK(wait_knows_leader(&rs[0], rs[1].addr, 10000) == 0);
    acquire(&rs[0], "fp", -1, 0, &x);
    CHECK_STR(x.error, "NotLeader");
    CHECK_STR(jget(x.detail, "leader"), rs[1].addr);
    res_clear(&x);
    /* the deposed leader, now a follower, reports the new term, not its own */
    CHECK(status_term(&rs[1]) > term0 && status_term(&rs[0]) == status_term(&rs[1]));
    acquire(&rs[1], "fp", -1, 0, &a); /* the new leader hands the idle env out warm */
    CHECK(a.result && !strcmp(jget(a.result, "env_id"), id));
    res_clear(&a);
    CHECK(replica_stop(&rs[0]) == 0);
    CHECK(replica_stop(&rs[1]) == 0);
}

/* kill -9 of the leader, then a new process at the same address at once
 * (what a supervisor does): the journal's leader record still names that
 * address with a live lease, but the new process is not the one that won
 * it.  It must not resume that term: it leads only after the old lease
 * expired and an election gave it a higher term (fencing: no term is ever
 * used by two leaders). */
static void test_restart_same_address(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t r = {0};
    CHECK(replica_start(&r, p, "60", "100") == 0);
    CHECK(wait_leader(&r, 1, 15000) == 0);
    long long t1 = status_term(&r);
    CHECK(t1 >= 1);
    replica_kill9(&r);
    uint64_t t0 = now_mono_ms();
    CHECK(replica_start(&r, p, "60", "100") == 0); /* same r->addr */
    CHECK(wait_leader(&r, 1, 15000) == 0);
    long long t2 = status_term(&r);
    printf("# restarted at the same address: leader again after %llu ms, term %lld -> %lld\n",
           (unsigned long long)(now_mono_ms() - t0), t1, t2);
    CHECK(t2 > t1);
    CHECK(replica_stop(&r) == 0);
}

/* Sends sig to every member of the test's etcd cluster (pids the cluster
 * script recorded in cdir/m<i>.pid); returns how many were signalled. */
static int etcd_signal(int sig)
{
    int n = 0;
    for (int i = 1; i <= 3; i++) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/m%d.pid", cdir, i);
        FILE *f = fopen(path, "r");
        int pid = 0;
        if (f) {
            if (fscanf(f, "%d", &pid) != 1)
                pid = 0;
            fclose(f);
        }
        if (pid > 1 && kill(pid, sig) == 0)
            n++;
    }
    return n;
}

static void cut_off_body(replica_t *r, long long *t1)
{
    CHECK(wait_leader(r, 1, 15000) == 0);
    *t1 = status_term(r);
    CHECK(*t1 >= 1);
    CHECK(etcd_signal(SIGSTOP) == 3);
    uint64_t t0 = now_mono_ms(), took = 0;
    char role[16] = "";
    while (now_mono_ms() - t0 < 20000) {
        if (status_role(r, role) == 0 && strcmp(role, "leader") != 0) {
            took = now_mono_ms() - t0;
            break;
        }
        loop_for(50);
    }
    printf("# journal unreachable: the leader says '%s' after %llu ms (lease 1000 ms)\n", role,
           (unsigned long long)took);
    CHECK_STR(role, "follower");
    /* the lease is 1 s and renewed every 333 ms: it runs out within about
     * a second; the journal's own calls would take 15 s to give up */
    CHECK(took > 0 && took < 4000);
    sync_res_t x;
    acquire(r, "fcut", -1, 0, &x);
    CHECK_STR(x.error, "NotLeader");
    res_clear(&x);
}

/* A leader cut off from the journal (every etcd member stopped: requests
 * hang rather than fail) stops being leader by its own lease clock: its
 * asg.status says follower about a lease after the cut, not when its
 * blocked journal call gives up.  With the journal back it leads again:
 * in the same term if etcd still granted its lease to the renew that was
 * waiting (nobody else can have led), else after a new election with a
 * higher term. */
static void test_cut_off_leader_steps_down(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t r = {0};
    CHECK(replica_start(&r, p, "60", "100") == 0);
    long long t1 = 0;
    cut_off_body(&r, &t1);
    bool failed = check_failed_;
    etcd_signal(SIGCONT); /* always, even after a failed check */
    if (failed)
        return;
    CHECK(wait_leader(&r, 1, 45000) == 0);
    long long t2 = status_term(&r);
    printf("# journal back: leader again in term %lld (%s)\n", t2,
           t2 == t1 ? "its lease was still granted" : "elected again");
    CHECK(t2 >= t1);
    CHECK(replica_stop(&r) == 0);
}

static void test_reconcile(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    fakes_reset();
    /* the journal says: "ghost" (worker lacks it), "init1" initializing
     * (worker has it idle), "busy1" busy (worker: idle - its release was
     * lost with the last leader), "idle1" idle (worker: busy - handed out
     * by a leader whose lazily journaled `busy` never got written); the
     * worker also has "orphan1" (not journaled) */
    err_t err = {0};
    journal_t *j = journal_etcd_open(eps, p, &err);
    CHECK(j);
    uint64_t term = 0, idx;
    CHECK(j->ops->campaign(j, "test", 1000, &term, &err) == 1);
    const char *adds[] = {"ghost", "init1", "busy1", "idle1"};
    json_t *recs[7];
    for (int i = 0; i < 4; i++)
        recs[i] = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i}", "op", "add", "env_id", adds[i],
                            "worker_id", "w1", "worker_address", W.addr, "config_key", "k:1:r",
                            "function", "k", "memory_mb", 128);
    recs[4] = json_pack("{s:s,s:s,s:s}", "op", "state", "env_id", "ghost", "state", "idle");
    recs[5] = json_pack("{s:s,s:s,s:s}", "op", "state", "env_id", "busy1", "state", "busy");
    recs[6] = json_pack("{s:s,s:s,s:s}", "op", "state", "env_id", "idle1", "state", "idle");
    int bad = 0;
    for (int i = 0; i < 7; i++) {
        char *buf = json_dumps(recs[i], JSON_COMPACT);
        bad |= j->ops->append(j, term, buf, strlen(buf), &idx, &err) != 0;
        free(buf);
        json_decref(recs[i]);
    }
    CHECK(!bad);
    CHECK(j->ops->resign(j, term, &err) == 0);
    journal_close(j);
    const char *on_worker[][2] = {{"init1", "idle"}, {"orphan1", "idle"}, {"busy1", "idle"},
                                  {"idle1", "busy"}};
    for (int i = 0; i < 4; i++)
        json_object_set_new(W.envs, on_worker[i][0],
                            json_pack("{s:s,s:s,s:s}", "state", on_worker[i][1], "config_key",
                                      "k:1:r", "function", "k"));

    replica_t r = {0};
    CHECK(replica_start(&r, p, "60", "100") == 0);
    CHECK(wait_leader(&r, 1, 15000) == 0);
    CHECK(was_destroyed("orphan1"));
    sync_res_t x;
    call(r.c, "asg.status", NULL, 2000, &x);
    json_t *envs = x.result ? json_object_get(json_object_get(x.result, "table"), "envs") : NULL;
    CHECK(json_array_size(envs) == 3);
    const char *want[][2] = {{"init1", "idle"}, {"busy1", "idle"}, {"idle1", "busy"}};
    for (int w = 0; w < 3; w++) {
        const char *got = NULL;
        size_t i;
        json_t *e;
        json_array_foreach(envs, i, e)
            if (!strcmp(jget(e, "env_id"), want[w][0]))
                got = jget(e, "state");
        CHECK(got && !strcmp(got, want[w][1]));
    }
    /* idle1 counts in flight (its holder is unknown) until a release */
    CHECK(x.result && json_integer_value(json_object_get(x.result, "in_flight")) == 1);
    res_clear(&x);
    release(&r, "idle1", false, &x);
    res_clear(&x);
    call(r.c, "asg.status", NULL, 2000, &x);
    CHECK(x.result && json_integer_value(json_object_get(x.result, "in_flight")) == 0);
    res_clear(&x);
    CHECK(replica_stop(&r) == 0);
}

static const char *env_state_in(replica_t *r, const char *env_id, char *buf, size_t n)
{
    sync_res_t x;
    call(r->c, "asg.status", NULL, 2000, &x);
    json_t *envs = x.result ? json_object_get(json_object_get(x.result, "table"), "envs") : NULL;
    size_t i;
    json_t *e;
    snprintf(buf, n, "(none)");
    json_array_foreach(envs, i, e)
        if (!strcmp(jget(e, "env_id"), env_id))
            snprintf(buf, n, "%s", jget(e, "state"));
    res_clear(&x);
    return buf;
}

/* Each hand-out has its own lease token; only its holder's release counts
 * (a late one from an earlier hand-out is stale), and "not ours" keeps the
 * environment busy until whoever runs in it releases. */
static void test_lease_tokens(void)
{
    char p[64], st[32];
    new_prefix(p, sizeof p);
    fakes_reset();
    replica_t r = {0};
    CHECK(replica_start(&r, p, "60", "100") == 0);
    CHECK(wait_leader(&r, 1, 15000) == 0);
    sync_res_t a, x;
    acquire(&r, "tok", -1, 0, &a);
    CHECK(a.result);
    char id[64];
    snprintf(id, sizeof id, "%s", a.result ? jget(a.result, "env_id") : "");
    json_int_t t1 = a.result ? json_integer_value(json_object_get(a.result, "lease")) : 0;
    CHECK(t1 != 0);
    res_clear(&a);
    release_lease(&r, id, t1 + 1, false, &x); /* not the holder's */
    CHECK(x.result && json_is_true(json_object_get(x.result, "stale")));
    res_clear(&x);
    CHECK_STR(env_state_in(&r, id, st, sizeof st), "busy");
    release_lease(&r, id, t1, false, &x);
    CHECK(x.done && !x.error[0] && !(x.result && json_object_get(x.result, "stale")));
    res_clear(&x);
    CHECK_STR(env_state_in(&r, id, st, sizeof st), "idle");
    acquire(&r, "tok", -1, 0, &a); /* warm: a new token */
    CHECK(a.result && !strcmp(jget(a.result, "env_id"), id));
    json_int_t t2 = a.result ? json_integer_value(json_object_get(a.result, "lease")) : 0;
    CHECK(t2 != 0 && t2 != t1);
    res_clear(&a);
    release_lease(&r, id, t1, false, &x); /* the first holder, late */
    CHECK(x.result && json_is_true(json_object_get(x.result, "stale")));
    res_clear(&x);
    CHECK_STR(env_state_in(&r, id, st, sizeof st), "busy");
    /* the worker told t2's holder that another request runs in it */
    release_lease(&r, id, t2, true, &x);
    res_clear(&x);
    CHECK_STR(env_state_in(&r, id, st, sizeof st), "busy");
    acquire(&r, "tok", -1, 0, &a); /* so the next one is cold */
    CHECK(a.result && json_is_true(json_object_get(a.result, "cold")));
    res_clear(&a);
    release_lease(&r, id, t1, false, &x); /* that other holder is unknown: any release counts */
    res_clear(&x);
    CHECK_STR(env_state_in(&r, id, st, sizeof st), "idle");
    CHECK(replica_stop(&r) == 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_WARN);
    if (system("command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1") != 0) {
        SKIP(test_asg_service, "no etcd/etcdctl binary (apt-get install etcd-server etcd-client)");
        return 0;
    }
    if (find_paths() < 0) {
        SKIP(test_asg_service, "scripts/etcd-cluster.sh or BUILD/flicker not found");
        return 0;
    }
    if (start_cluster() < 0) {
        printf("FAIL start_cluster: could not start a 3-member etcd cluster\n");
        stop_cluster();
        return 1;
    }
    printf("# etcd cluster: %s (in %s)%s\n", eps, cdir,
           getenv("ASG_ETCD_DEFAULTS") ? " with etcd's default timings" : ", election timeout 500 ms");
    base = event_base_new();
    if (fakes_start() < 0) {
        printf("FAIL fakes_start\n");
        stop_cluster();
        return 1;
    }
    RUN(test_leader_basics);
    RUN(test_reconcile);
    RUN(test_lease_tokens);
    RUN(test_dead_and_lost);
    RUN(test_concurrent_acquires);
    RUN(test_sigterm_hands_over);
    RUN(test_paused_leader);
    RUN(test_restart_same_address);
    RUN(test_cut_off_leader_steps_down);
    RUN(test_failover);
    if (getenv("ASG_KEEP_LOGS"))
        printf("# replica logs in %s (removed at exit)\n", cdir);
    reap_all();
    rpc_server_free(W.srv);
    rpc_server_free(P);
    json_decref(W.envs);
    json_decref(W.destroyed);
    event_base_free(base);
    stop_cluster();
    CHECK_EXIT();
}
