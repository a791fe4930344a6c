/* test_worker_service.c - the worker role's RPC service, in-process: a real
 * worker (real sandboxes: needs root) behind worker_service on a unix
 * socket, driven by rpc_clients, with a provided runtime whose bootstrap is
 * a `python3 -S` script speaking the Runtime API (written into a temp code
 * dir).  Also a fake placement (an rpc server in the same loop) for
 * registration and heartbeats.
 *
 * Nothing asserts on timing: waits loop on the event base until a
 * condition holds, with 30 s guard deadlines against hangs. */
#include <errno.h>
#include <event2/event.h>
#include <glob.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "worker/fnlog.h"
#include "worker/sandbox.h"
#include "worker/worker.h"
#include "worker/worker_service.h"

#define DEADLINE_MS 30000

static const char BOOTSTRAP[] =
    "#!/usr/bin/python3 -S\n"
    "import http.client, json, os, time\n"
    "host, port = os.environ['AWS_LAMBDA_RUNTIME_API'].split(':')\n"
    "if os.environ.get('INIT_FAIL'):\n"
    "    print('init is failing', flush=True)\n"
    "    c = http.client.HTTPConnection(host, int(port))\n"
    "    c.request('POST', '/2018-06-01/runtime/init/error', "
    "'{\"errorMessage\":\"no\",\"errorType\":\"InitBoom\"}')\n"
    "    c.getresponse().read()\n"
    "    raise SystemExit(1)\n"
    "time.sleep(float(os.environ.get('INIT_SLEEP', '0')))\n"
    "base = '/2018-06-01/runtime/invocation/'\n"
    "while True:\n"
    "    c = http.client.HTTPConnection(host, int(port))\n"
    "    c.request('GET', base + 'next')\n"
    "    r = c.getresponse()\n"
    "    event = r.read()\n"
    "    rid = r.getheader('Lambda-Runtime-Aws-Request-Id')\n"
    "    print('event', rid, flush=True)\n"
    "    if event == b'\"slow\"':\n"
    "        time.sleep(0.5)\n"
    "    if event == b'\"fail\"':\n"
    "        c.request('POST', base + rid + '/error', "
    "json.dumps({'errorMessage': 'asked to', 'errorType': 'TestError'}))\n"
    "    else:\n"
    "        c.request('POST', base + rid + '/response', event)\n"
    "    c.getresponse().read()\n"
    "    c.close()\n";

static struct event_base *base;
static struct event *ticker;
static char tmpdir[64], code_dir[128], sock_addr[160], placement_addr[160];
static fnlog_dir_t *logs;
static worker_t *W;
static worker_service_t *WS;
static rpc_client_t *C;

/* Notifications the main client received. */
static int dead_notes;
static char last_dead[64];

static void tick_cb(evutil_socket_t fd, short w, void *a) {}

static bool run_until_fn(bool (*pred)(void *), void *arg)
{
    uint64_t end = now_mono_ms() + DEADLINE_MS;
    while (!pred(arg) && now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return pred(arg);
}

/* ------------------------------------------------------ sync calls */

typedef struct res {
    bool done;
    char *error;
    json_t *result, *detail;
    char *body;
    size_t len;
} res_t;

static void res_free(res_t *r)
{
    free(r->error);
    json_decref(r->result);
    json_decref(r->detail);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static void res_cb(const rpc_result_t *r, void *arg)
{
    res_t *o = arg;
    o->done = true;
    o->error = r->error ? xstrdup(r->error) : NULL;
    o->result = r->result ? json_incref(r->result) : NULL;
    o->detail = r->detail ? json_incref(r->detail) : NULL;
    o->body = xmalloc(r->len + 1);
    memcpy(o->body, r->body ? r->body : "", r->len);
    o->body[r->len] = 0;
    o->len = r->len;
}

static bool res_done(void *a) { return ((res_t *)a)->done; }

/* Sends a call on client cl, params given as a json_pack format (NULL: none). */
static void send_call(rpc_client_t *cl, res_t *out, const char *method, json_t *params,
                      const char *body, size_t len)
{
    memset(out, 0, sizeof *out);
    rpc_call(cl, method, params, body, len, DEADLINE_MS, res_cb, out);
    json_decref(params);
}

static void call(res_t *out, const char *method, json_t *params, const char *body, size_t len)
{
    send_call(C, out, method, params, body, len);
    run_until_fn(res_done, out);
}

static json_t *config(const char *name, const char *env_json)
{
    json_t *env_vars = json_loads(env_json ? env_json : "{}", 0, NULL);
    char *arn = xasprintf("arn:aws:lambda:us-east-1:000000000000:function:%s", name);
    char *key = xasprintf("%s:$LATEST:r1", name);
    json_t *c = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:o,s:s,s:s,s:s,s:i,s:s,s:s,s:i,s:i}",
                          "name", name, "version", "$LATEST", "arn", arn, "runtime",
                          "provided.al2023", "handler", "", "memory_mb", 128, "timeout_s", 20,
                          "ephemeral_mb", 512, "env_vars", env_vars, "code_sha256", "", "code_dir",
                          code_dir, "revision_id", "r1", "reserved_concurrency", -1, "config_key",
                          key, "qualified_arn", arn, "max_retry_attempts", 2, "max_event_age_s",
                          21600);
    free(arn);
    free(key);
    return c;
}

static json_t *create_params(const char *id, const char *name, const char *env_json)
{
    return json_pack("{s:s,s:o}", "env_id", id, "config", config(name, env_json));
}

static json_t *invoke_params(const char *id, const char *rid)
{
    return json_pack("{s:s,s:s}", "env_id", id, "request_id", rid);
}

static bool has_env_in_list(const char *id, const char *state)
{
    res_t r;
    call(&r, "env.list", NULL, NULL, 0);
    bool found = false;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r.result, "envs"), i, e) {
        if (!strcmp(json_string_value(json_object_get(e, "env_id")), id) &&
            (!state || !strcmp(json_string_value(json_object_get(e, "state")), state)))
            found = true;
    }
    res_free(&r);
    return found;
}

static void on_note(rpc_client_t *cl, const char *method, json_t *params, const void *body,
                    size_t len, void *arg)
{
    if (!strcmp(method, "env.dead")) {
        dead_notes++;
        snprintf(last_dead, sizeof last_dead, "%s",
                 json_string_value(json_object_get(params, "env_id")));
    }
}

/* ------------------------------------------------------ fake placement */

static struct {
    rpc_server_t *srv;
    int registers, heartbeats;
    const char *next_state;     /* state for the next heartbeat reply (then "active") */
    const char *next_error;     /* error code for the next heartbeat reply */
    char worker_id[64], address[160];
    int last_envs;
    json_t *last_list;          /* the last heartbeat's `envs` */
} P;

static void placement_handler(rpc_call_t *call_, const char *method, json_t *params,
                              const void *body, size_t len, void *arg)
{
    if (!strcmp(method, "worker.register")) {
        P.registers++;
        snprintf(P.worker_id, sizeof P.worker_id, "%s",
                 json_string_value(json_object_get(params, "worker_id")));
        snprintf(P.address, sizeof P.address, "%s",
                 json_string_value(json_object_get(params, "address")));
        json_t *r = json_pack("{s:I}", "lease_expiry_ms", (json_int_t)(now_wall_ms() + 3600000));
        rpc_reply(call_, r, NULL, 0);
        json_decref(r);
    } else if (!strcmp(method, "worker.heartbeat")) {
        P.heartbeats++;
        P.last_envs = (int)json_integer_value(json_object_get(params, "environments"));
        json_decref(P.last_list);
        P.last_list = json_incref(json_object_get(params, "envs"));
        if (P.next_error) {
            rpc_reply_error(call_, P.next_error, "no such worker");
            P.next_error = NULL;
            return;
        }
        json_t *r = json_pack("{s:s}", "state", P.next_state ? P.next_state : "active");
        P.next_state = NULL;
        rpc_reply(call_, r, NULL, 0);
        json_decref(r);
    } else {
        rpc_reply_error(call_, "UnknownMethod", "%s", method);
    }
}

/* ------------------------------------------------------------ tests */

static void test_create_ready(void)
{
    res_t r;
    call(&r, "env.create", create_params("env-1", "echo", NULL), NULL, 0);
    CHECK(r.done && !r.error);
    res_free(&r);
    env_t *e = worker_env_find(W, "env-1");
    CHECK(e && env_state(e) == ENV_IDLE);
    /* same id, same config: idempotent */
    call(&r, "env.create", create_params("env-1", "echo", NULL), NULL, 0);
    CHECK(!r.error);
    res_free(&r);
    /* same id, another config */
    call(&r, "env.create", create_params("env-1", "other", NULL), NULL, 0);
    CHECK(r.error && !strcmp(r.error, "CreateFailed"));
    res_free(&r);
}

static void test_invoke_echo(void)
{
    res_t r;
    call(&r, "env.invoke", invoke_params("env-1", "req-1"), "{\"a\":1}", 7);
    CHECK(!r.error);
    CHECK_STR(json_string_value(json_object_get(r.result, "status")), "ok");
    CHECK(r.len == 7 && !memcmp(r.body, "{\"a\":1}", 7));
    CHECK(strstr(json_string_value(json_object_get(r.result, "log_tail")), "event req-1"));
    CHECK(json_is_number(json_object_get(r.result, "duration_ms")));
    res_free(&r);
    /* binary, with NULs */
    char big[3000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i % 7 ? 'x' : 0);
    call(&r, "env.invoke", invoke_params("env-1", "req-2"), big, sizeof big);
    CHECK(!r.error && r.len == sizeof big && !memcmp(r.body, big, sizeof big));
    res_free(&r);
}

static void test_function_error(void)
{
    res_t r;
    call(&r, "env.invoke", invoke_params("env-1", "req-3"), "\"fail\"", 6);
    CHECK(!r.error);
    CHECK_STR(json_string_value(json_object_get(r.result, "status")), "function_error");
    CHECK(strstr(r.body, "TestError") && strstr(r.body, "asked to"));
    res_free(&r);
    CHECK(env_state(worker_env_find(W, "env-1")) == ENV_IDLE);
}

static void test_invoke_unknown_and_busy(void)
{
    res_t r;
    call(&r, "env.invoke", invoke_params("nope", "req-4"), "{}", 2);
    CHECK(r.error && !strcmp(r.error, "UnknownEnvironment"));
    res_free(&r);
    /* two invokes in one go: the second finds the env busy */
    res_t a, b;
    send_call(C, &a, "env.invoke", invoke_params("env-1", "req-5"), "\"slow\"", 6);
    send_call(C, &b, "env.invoke", invoke_params("env-1", "req-6"), "{}", 2);
    run_until_fn(res_done, &a);
    run_until_fn(res_done, &b);
    CHECK(a.done && !a.error);
    CHECK(b.done && b.error && !strcmp(b.error, "Busy"));
    res_free(&a);
    res_free(&b);
}

static void test_list_and_status(void)
{
    CHECK(has_env_in_list("env-1", "idle"));
    res_t r;
    call(&r, "worker.status", NULL, NULL, 0);
    CHECK(!r.error);
    CHECK_STR(json_string_value(json_object_get(r.result, "worker_id")), "w-test");
    CHECK(json_integer_value(json_object_get(r.result, "environments_count")) == 1);
    res_free(&r);
}

typedef struct dead_wait { int want; } dead_wait_t;
static bool dead_reached(void *a) { return dead_notes >= ((dead_wait_t *)a)->want; }

/* Thaws a sandbox frozen by the idle freezer so a SIGKILL can land (cgroup
 * v1 freezes tasks hard; v2 kills frozen tasks anyway). */
static void thaw(const char *env_id)
{
    char pat[256];
    snprintf(pat, sizeof pat, "/sys/fs/cgroup/freezer/flicker/sbx-%d-*/%s/freezer.state",
             (int)getpid(), env_id);
    glob_t g;
    if (glob(pat, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++)
            write_str(g.gl_pathv[i], "THAWED", NULL);
        globfree(&g);
    }
}

static void test_env_dead_notification(void)
{
    res_t r;
    call(&r, "env.create", create_params("env-2", "echo", NULL), NULL, 0);
    CHECK(!r.error);
    res_free(&r);
    call(&r, "worker.status", NULL, NULL, 0);
    pid_t pid = 0;
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r.result, "environments"), i, e) {
        if (!strcmp(json_string_value(json_object_get(e, "id")), "env-2"))
            pid = (pid_t)json_integer_value(json_object_get(e, "pid"));
    }
    res_free(&r);
    CHECK(pid > 0);
    int before = dead_notes;
    CHECK(kill(pid, SIGKILL) == 0);
    thaw("env-2");
    dead_wait_t dw = {before + 1};
    CHECK(run_until_fn(dead_reached, &dw));
    CHECK_STR(last_dead, "env-2");
    CHECK(!has_env_in_list("env-2", NULL));
    call(&r, "env.invoke", invoke_params("env-2", "req-7"), "{}", 2);
    CHECK(r.error && !strcmp(r.error, "UnknownEnvironment"));
    res_free(&r);
}

typedef struct st_wait { const char *id; enum env_state st; } st_wait_t;
static bool state_reached(void *a)
{
    st_wait_t *w = a;
    env_t *e = worker_env_find(W, w->id);
    return e && env_state(e) == w->st;
}

static void test_disconnect_during_create(void)
{
    err_t err;
    rpc_client_t *c2 = rpc_client_new(base, sock_addr, NULL, &err);
    CHECK(c2);
    res_t r;
    send_call(c2, &r, "env.create", create_params("env-3", "echo", "{\"INIT_SLEEP\":\"0.5\"}"),
              NULL, 0);
    st_wait_t starting = {"env-3", ENV_STARTING};
    CHECK(run_until_fn(state_reached, &starting));
    rpc_client_free(c2); /* the caller vanishes while Init runs */
    CHECK(r.done && r.error && !strcmp(r.error, RPC_CANCELLED));
    res_free(&r);
    st_wait_t idle = {"env-3", ENV_IDLE};
    CHECK(run_until_fn(state_reached, &idle));
    CHECK(has_env_in_list("env-3", "idle"));
    /* usable afterwards */
    call(&r, "env.invoke", invoke_params("env-3", "req-8"), "{}", 2);
    CHECK(!r.error && !strcmp(json_string_value(json_object_get(r.result, "status")), "ok"));
    res_free(&r);
}

static void test_disconnect_during_invoke(void)
{
    err_t err;
    rpc_client_t *c3 = rpc_client_new(base, sock_addr, NULL, &err);
    CHECK(c3);
    res_t r;
    send_call(c3, &r, "env.invoke", invoke_params("env-3", "req-9"), "\"slow\"", 6);
    st_wait_t busy = {"env-3", ENV_BUSY};
    CHECK(run_until_fn(state_reached, &busy));
    rpc_client_free(c3);
    res_free(&r);
    st_wait_t idle = {"env-3", ENV_IDLE};
    CHECK(run_until_fn(state_reached, &idle));
    call(&r, "env.invoke", invoke_params("env-3", "req-10"), "{}", 2);
    CHECK(!r.error);
    res_free(&r);
}

static void test_init_failed(void)
{
    res_t r;
    call(&r, "env.create", create_params("env-4", "bad", "{\"INIT_FAIL\":\"1\"}"), NULL, 0);
    CHECK(r.error && !strcmp(r.error, "InitFailed"));
    CHECK(strstr(r.body, "InitBoom"));
    CHECK(r.detail && strstr(json_string_value(json_object_get(r.detail, "log_tail")),
                             "init is failing"));
    res_free(&r);
    CHECK(!worker_env_find(W, "env-4") || env_state(worker_env_find(W, "env-4")) == ENV_DEAD);
    /* bad requests */
    call(&r, "env.create", create_params("../x", "echo", NULL), NULL, 0);
    CHECK(r.error && !strcmp(r.error, "InvalidRequest"));
    res_free(&r);
    call(&r, "env.create", json_pack("{s:s,s:{s:s}}", "env_id", "y", "config", "name", "x"), NULL, 0);
    CHECK(r.error && !strcmp(r.error, "InvalidRequest"));
    res_free(&r);
    json_t *p = create_params("env-5", "echo", NULL);
    json_object_set_new(json_object_get(p, "config"), "memory_mb", json_integer(1 << 30));
    call(&r, "env.create", p, NULL, 0);
    CHECK(r.error && !strcmp(r.error, "NoCapacity"));
    res_free(&r);
    call(&r, "no.such", NULL, NULL, 0);
    CHECK(r.error && !strcmp(r.error, "UnknownMethod"));
    res_free(&r);
}

static void test_destroy(void)
{
    res_t r;
    call(&r, "env.destroy", json_pack("{s:s}", "env_id", "env-1"), NULL, 0);
    CHECK(!r.error);
    res_free(&r);
    call(&r, "env.invoke", invoke_params("env-1", "req-11"), "{}", 2);
    CHECK(r.error && !strcmp(r.error, "UnknownEnvironment"));
    res_free(&r);
    CHECK(!has_env_in_list("env-1", NULL));
    call(&r, "env.destroy", json_pack("{s:s}", "env_id", "never-was"), NULL, 0);
    CHECK(!r.error);
    res_free(&r);
    /* the id can be used again once the old sandbox is gone */
    call(&r, "env.create", create_params("env-1", "echo", NULL), NULL, 0);
    if (r.error) { /* teardown of the old one may still be pending: retry once */
        res_free(&r);
        event_base_loop(base, EVLOOP_NONBLOCK);
        call(&r, "env.create", create_params("env-1", "echo", NULL), NULL, 0);
    }
    CHECK(!r.error);
    res_free(&r);
}

static bool registered(void *a) { return worker_service_registered(WS) && P.registers >= *(int *)a; }
static bool heartbeats_at_least(void *a) { return P.heartbeats >= *(int *)a; }

static void test_placement(void)
{
    /* The service has been retrying registration against nothing; now
     * placement appears. */
    CHECK(P.registers == 0 && !worker_service_registered(WS));
    P.srv = rpc_server_new(base, placement_handler, NULL);
    err_t err;
    CHECK(rpc_server_listen(P.srv, placement_addr, &err) == 0);
    int one = 1;
    CHECK(run_until_fn(registered, &one));
    CHECK_STR(P.worker_id, "w-test");
    CHECK_STR(P.address, sock_addr);
    int hb = P.heartbeats + 2;
    CHECK(run_until_fn(heartbeats_at_least, &hb));
    CHECK(P.last_envs == worker_env_count(W));
    /* the heartbeat lists every environment with its function and memory
     * (placement counts environments per function from these lists) */
    CHECK(json_is_array(P.last_list) && (int)json_array_size(P.last_list) == P.last_envs);
    size_t i;
    json_t *e;
    json_array_foreach(P.last_list, i, e) {
        env_t *env = worker_env_find(W, json_string_value(json_object_get(e, "env_id")));
        CHECK(env);
        CHECK_STR(json_string_value(json_object_get(e, "function")), env_config(env)->name);
        CHECK(json_integer_value(json_object_get(e, "memory_mb")) == env_config(env)->memory_mb);
    }
    /* an error reply (placement restarted, unknown id): register again */
    P.next_error = "UnknownWorker";
    int two = 2;
    CHECK(run_until_fn(registered, &two));
    /* "retired": register again */
    P.next_state = "retired";
    int three = 3;
    CHECK(run_until_fn(registered, &three));
    /* "lost": the environments are destroyed (env.dead for each), then register again */
    int n = worker_env_count(W);
    CHECK(n > 0);
    int before = dead_notes;
    P.next_state = "lost";
    int four = 4;
    CHECK(run_until_fn(registered, &four));
    dead_wait_t dw = {before + n};
    CHECK(run_until_fn(dead_reached, &dw));
    CHECK(worker_env_count(W) == 0);
    res_t r;
    call(&r, "env.list", NULL, NULL, 0);
    CHECK(json_array_size(json_object_get(r.result, "envs")) == 0);
    res_free(&r);
}

int main(void)
{
    if (geteuid() != 0) {
        SKIP(test_worker_service, "needs root");
        return 0;
    }
    if (!getenv("WS_TEST_LOG"))
        log_set_level(LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    const char *init = getenv("FLICKER_INIT");
    char initbuf[512];
    if (!init) { /* BUILD/tests/test_x -> BUILD/flicker-init */
        char self[400] = {0};
        if (readlink("/proc/self/exe", self, sizeof self - 1) > 0) {
            char *slash = strrchr(self, '/');
            if (slash)
                *slash = 0;
            snprintf(initbuf, sizeof initbuf, "%s/../flicker-init", self);
            init = initbuf;
        }
    }
    err_t err = {0};
    if (!init || sandbox_system_init(init, NULL, &err) < 0) {
        printf("FAIL sandbox_system_init: %s\n", err.msg);
        return 1;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/flicker-wstest-XXXXXX");
    if (!mkdtemp(tmpdir))
        abort();
    chmod(tmpdir, 0700);
    snprintf(code_dir, sizeof code_dir, "%s/code", tmpdir);
    mkdir(code_dir, 0755);
    chmod(code_dir, 0755);
    char *bs = xasprintf("%s/bootstrap", code_dir);
    if (write_file_atomic(bs, BOOTSTRAP, strlen(BOOTSTRAP), 0755, &err) < 0 || chmod(bs, 0755) < 0)
        abort();
    free(bs);
    snprintf(sock_addr, sizeof sock_addr, "unix:%s/worker.sock", tmpdir);
    snprintf(placement_addr, sizeof placement_addr, "unix:%s/placement.sock", tmpdir);
    char *logdir = xasprintf("%s/logs", tmpdir);
    logs = fnlog_open(logdir, &err);
    free(logdir);

    base = event_base_new();
    ticker = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 20000};
    event_add(ticker, &tv);
    worker_config_t wc = {.id = "w-test", .zone = "z", .runtimes_dir = NULL, .region = "us-east-1",
                          .memory_mb = 4096, .cpus = 2, .init_timeout_s = 10, .logs = logs};
    W = worker_new(base, &wc, &err);
    worker_service_config_t sc = {.address = sock_addr, .placement = placement_addr,
                                  .heartbeat_ms = 50};
    WS = worker_service_new(base, W, &sc, &err);
    if (!WS || worker_service_listen(WS, sock_addr, &err) < 0) {
        printf("FAIL worker_service: %s\n", err.msg);
        return 1;
    }
    worker_service_start(WS);
    C = rpc_client_new(base, sock_addr, NULL, &err);
    rpc_client_set_notify_cb(C, on_note, NULL);

    RUN(test_create_ready);
    RUN(test_invoke_echo);
    RUN(test_function_error);
    RUN(test_invoke_unknown_and_busy);
    RUN(test_list_and_status);
    RUN(test_env_dead_notification);
    RUN(test_disconnect_during_create);
    RUN(test_disconnect_during_invoke);
    RUN(test_init_failed);
    RUN(test_destroy);
    RUN(test_placement);

    rpc_client_free(C);
    worker_service_free(WS);
    worker_free(W);
    if (P.srv)
        rpc_server_free(P.srv);
    json_decref(P.last_list);
    /* teardown events scheduled by env_destroy ran in worker_free */
    check_failed_ = sandbox_count() != 0;
    printf("%s test_nothing_left (sandboxes alive: %d)\n", check_failed_ ? "FAIL" : "PASS",
           sandbox_count());
    check_any_failed_ |= check_failed_;
    event_free(ticker);
    event_base_free(base);
    fnlog_close(logs);
    sandbox_system_shutdown();
    rm_rf(tmpdir, NULL);
    CHECK_EXIT();
}
