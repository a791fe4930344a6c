/* worker.c - execution environments and the Runtime API they talk to.
 *
 * See worker.h for the lifecycle.  How it works:
 *  - worker_env_create() makes a sandbox (worker/sandbox.h) running the
 *    function's runtime, serves the Runtime API on the listening socket the
 *    sandbox made inside its own network namespace (one evhttp per
 *    environment: no relay, no shared port), and watches the sandbox's
 *    output pipe (function logs) and pidfd (exit).
 *  - The runtime's GET /next is held open until an event arrives; the
 *    event is the reply.  POST .../response or .../error finishes the
 *    invocation; REPORT lines and the Tail buffer are written then.
 *  - Everything that kills an environment goes through env_kill(), which
 *    only records the outcome and schedules teardown on a fresh loop
 *    iteration: callbacks and evhttp_free never run inside the evhttp
 *    callback that triggered them.
 *  - Environments are in a list (iteration, worker_free) and a hash table
 *    by id (worker_env_find, per warm invoke of the worker service) until
 *    their teardown ends.  Teardown hands the sandbox or VM to the reaper
 *    thread (worker/reaper.h), which may still be destroying it when the
 *    id has left the table; creating an environment under an id still
 *    being reaped waits for that destroy (their cgroups share the name).
 *
 * Invariants: env->state == ENV_BUSY iff env->inv.active; a pending
 * GET /next is referenced only while its connection is open (close
 * callback clears it); teardown runs exactly once per environment. */
#include "worker/worker.h"
#include "worker/reaper.h"
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <sys/queue.h>
#include <event2/keyvalq_struct.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/log.h"
#include "common/util.h"
#include "worker/isolation.h"
#include "worker/microvm.h"

#define RESPONSE_LIMIT 6291556         /* Lambda's maximum response payload */
#define API_BODY_LIMIT (16u << 20)     /* larger bodies are cut off by evhttp */
#define TAIL_BYTES 4096
#define FREEZE_AFTER_MS 50
#define OUTPUT_CHUNK 65536
#define MICROVM_BOOT_ALLOWANCE_S 30

typedef struct invocation {
    bool active;
    bool delivered;
    env_done_fn done;
    void *arg;
    char request_id[64];
    char *payload;
    size_t payload_len;
    char *client_context;
    char *invoked_arn;
    uint64_t start_us;       /* when the event was handed to the runtime */
} invocation_t;

struct env {
    worker_t *w;
    struct env *next, *prev;
    struct env *hnext;       /* chain in w->table */
    char id[ENV_ID_MAX + 1];
    char log_stream[128];
    fn_config_t *cfg;
    const isolation_ops_t *iso; /* sandbox or microvm */
    void *sb;                /* the backend's handle */
    enum env_state state;
    bool frozen;
    bool ready_called;
    bool silent;             /* env_destroy: no more callbacks */
    bool tearing_down;
    struct evhttp *api;
    struct evhttp_request *next_req;
    struct event *output_ev, *exit_ev, *timer_ev, *freeze_ev, *teardown_ev;
    env_ready_fn ready;
    env_dead_fn dead;
    void *arg;
    invocation_t inv;
    struct evbuffer *tail;   /* current invocation's log (START .. REPORT) */
    struct evbuffer *line;   /* output not yet ended by a newline (log_out) */
    uint64_t created_us;
    double init_ms;
    bool reported_init;
    char *init_error;        /* body posted to /runtime/init/error */
    char *failure;           /* Lambda error body when killed */
    char *failure_log;       /* line to log for the failure (malloc'd) */
    int invocations;
    /* SnapStart */
    bool restored;           /* started from a snapshot instead of Init */
    double restore_ms;
    struct snap_job *snap;   /* set while this env is being snapshotted */
};

/* A snapshot being made (worker_snapshot_create): the env boots and runs
 * Init; its first GET /next (or /restore/next) is held, the state saved,
 * then the env is destroyed and cb called. */
typedef struct snap_job {
    worker_t *w;
    env_t *env;
    char *path;
    worker_snapshot_fn cb;
    void *arg;
    struct event *ev;
    bool done;
} snap_job_t;

struct worker {
    struct event_base *base;
    worker_config_t cfg;
    env_t *envs;
    int n_envs;
    int memory_used;
    env_t **table;           /* id -> env (every env until its teardown ends) */
    size_t table_size;       /* power of two */
};

static void env_kill(env_t *env, char *failure_body, char *log_line);
static void env_go_idle(env_t *env);

/* ------------------------------------------------------------ id table */

static size_t id_hash(const char *id)
{
    size_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ull;
    return h;
}

static void table_put(worker_t *w, env_t *env)
{
    if ((size_t)w->n_envs + 1 > w->table_size) { /* load <= 1: grow and rehash */
        size_t n = w->table_size ? w->table_size * 2 : 64;
        env_t **t = xcalloc(n, sizeof *t);
        for (size_t i = 0; i < w->table_size; i++) {
            for (env_t *e = w->table[i], *nx; e; e = nx) {
                nx = e->hnext;
                size_t b = id_hash(e->id) & (n - 1);
                e->hnext = t[b];
                t[b] = e;
            }
        }
        free(w->table);
        w->table = t;
        w->table_size = n;
    }
    size_t b = id_hash(env->id) & (w->table_size - 1);
    env->hnext = w->table[b];
    w->table[b] = env;
}

static void table_del(worker_t *w, env_t *env)
{
    if (!w->table_size)
        return;
    for (env_t **pp = &w->table[id_hash(env->id) & (w->table_size - 1)]; *pp; pp = &(*pp)->hnext) {
        if (*pp == env) {
            *pp = env->hnext;
            env->hnext = NULL;
            return;
        }
    }
}

static env_t *table_get(const worker_t *w, const char *id)
{
    if (!w->table_size || !id)
        return NULL;
    for (env_t *e = w->table[id_hash(id) & (w->table_size - 1)]; e; e = e->hnext) {
        if (!strcmp(e->id, id))
            return e;
    }
    return NULL;
}

env_t *worker_env_find(const worker_t *w, const char *id)
{
    env_t *e = table_get(w, id);
    return e && !e->silent && !e->snap ? e : NULL; /* snapshot makers are private */
}

bool worker_env_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n < 1 || n > ENV_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
              c == '_'))
            return false;
    }
    return true;
}

/* ---------------------------------------------------------------- logs */

#define LOG_LINE_MAX (256u << 10) /* a longer "line" is written as it comes */

/* The function's log gets whole lines only: output arrives in arbitrary
 * chunks (pipe reads, a microVM's LOG frames) and several environments of
 * one function append to the same log, so a line written in two pieces
 * would otherwise be spliced with another environment's output. */
static void log_flush_line(env_t *env, bool all)
{
    struct evbuffer *b = env->line;
    size_t have = evbuffer_get_length(b);
    if (!have)
        return;
    size_t upto = have;
    if (!all && have <= LOG_LINE_MAX) {
        struct evbuffer_ptr nl = evbuffer_search_eol(b, NULL, NULL, EVBUFFER_EOL_LF);
        if (nl.pos < 0)
            return;
        /* the last newline: search backwards is not offered; scan forward */
        struct evbuffer_ptr last = nl;
        for (;;) {
            struct evbuffer_ptr from = last;
            if (evbuffer_ptr_set(b, &from, 1, EVBUFFER_PTR_ADD) < 0)
                break;
            struct evbuffer_ptr next = evbuffer_search_eol(b, &from, NULL, EVBUFFER_EOL_LF);
            if (next.pos < 0)
                break;
            last = next;
        }
        upto = (size_t)last.pos + 1;
    }
    const char *p = (const char *)evbuffer_pullup(b, (ssize_t)upto);
    fnlog_append(env->w->cfg.logs, env->cfg->name, p, upto);
    evbuffer_drain(b, upto);
}

static void log_out(env_t *env, const char *data, size_t len)
{
    evbuffer_add(env->line, data, len);
    if (memchr(data, '\n', len) || evbuffer_get_length(env->line) > LOG_LINE_MAX)
        log_flush_line(env, false);
    if (env->inv.active || env->state == ENV_STARTING) {
        evbuffer_add(env->tail, data, len);
        size_t have = evbuffer_get_length(env->tail);
        if (have > 2 * TAIL_BYTES)
            evbuffer_drain(env->tail, have - TAIL_BYTES);
    }
}

static void log_outf(env_t *env, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_outf(env_t *env, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 1)
        n = (int)sizeof line - 1;
    log_out(env, line, (size_t)n);
}

/* Moves whatever the runtime has written so far into the logs. */
static void drain_output(env_t *env, size_t max)
{
    int fd = env->iso->output_fd(env->sb);
    char buf[OUTPUT_CHUNK];
    size_t total = 0;
    while (total < max) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0)
            break;
        log_out(env, buf, (size_t)r);
        total += (size_t)r;
    }
}

static void on_output(evutil_socket_t fd, short what, void *arg)
{
    drain_output(arg, 4 * OUTPUT_CHUNK); /* bounded: a log flood can't starve the loop */
}

/* Returns the tail (last 4 KB) of the current invocation's log. */
static char *take_tail(env_t *env)
{
    size_t have = evbuffer_get_length(env->tail);
    if (have > TAIL_BYTES)
        evbuffer_drain(env->tail, have - TAIL_BYTES);
    have = evbuffer_get_length(env->tail);
    char *out = xmalloc(have + 1);
    evbuffer_remove(env->tail, out, have);
    out[have] = 0;
    return out;
}

/* -------------------------------------------------------- invocations */

static void finish_invocation(env_t *env, enum invoke_status status, char *body, size_t len,
                              const char *report_status)
{
    invocation_t inv = env->inv; /* still active while END/REPORT go into the tail */
    if (env->timer_ev)
        evtimer_del(env->timer_ev);

    double duration = inv.delivered ? (double)(now_mono_us() - inv.start_us) / 1000.0 : 0.0;
    drain_output(env, SIZE_MAX);
    uint64_t peak = env->iso->memory_peak(env->sb);
    char init[64] = "";
    if (!env->reported_init) {
        if (env->restored)
            snprintf(init, sizeof init, "\tRestore Duration: %.2f ms\tBilled Restore Duration: %.0f ms",
                     env->restore_ms, ceil(env->restore_ms));
        else
            snprintf(init, sizeof init, "\tInit Duration: %.2f ms", env->init_ms);
        env->reported_init = true;
    }
    log_outf(env, "END RequestId: %s\n", inv.request_id);
    log_outf(env,
             "REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %.0f ms\tMemory Size: %d MB\t"
             "Max Memory Used: %llu MB%s%s%s\t\n",
             inv.request_id, duration, ceil(duration < 1 ? 1 : duration), env->cfg->memory_mb,
             (unsigned long long)((peak + (1u << 20) - 1) >> 20), init,
             report_status ? "\tStatus: " : "", report_status ? report_status : "");
    char *tail = take_tail(env);
    memset(&env->inv, 0, sizeof env->inv);
    invoke_result_t result = {.status = status, .body = body, .body_len = len, .log_tail = tail,
                              .duration_ms = duration};
    free(inv.payload);
    free(inv.client_context);
    free(inv.invoked_arn);
    if (!env->silent && inv.done)
        inv.done(env, &result, inv.arg);
    free(tail);
    free(body);
}

static void add_header(struct evhttp_request *req, const char *k, const char *v)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), k, v);
}

static void on_next_closed(struct evhttp_connection *conn, void *arg)
{
    env_t *env = arg;
    if (env->next_req && evhttp_request_get_connection(env->next_req) == conn)
        env->next_req = NULL;
}

/* Replies to the held GET /next with the current event. */
static void deliver(env_t *env)
{
    struct evhttp_request *req = env->next_req;
    invocation_t *inv = &env->inv;
    env->next_req = NULL;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
    char deadline[32], trace[128];
    uint64_t now = now_wall_ms();
    snprintf(deadline, sizeof deadline, "%llu",
             (unsigned long long)(now + (uint64_t)env->cfg->timeout_s * 1000u));
    unsigned char r[12];
    random_bytes(r, sizeof r);
    char rh[25];
    hex_encode(r, sizeof r, rh);
    snprintf(trace, sizeof trace, "Root=1-%08llx-%s;Parent=%.16s;Sampled=0",
             (unsigned long long)(now / 1000), rh, rh + 8);
    add_header(req, "Lambda-Runtime-Aws-Request-Id", inv->request_id);
    add_header(req, "Lambda-Runtime-Deadline-Ms", deadline);
    add_header(req, "Lambda-Runtime-Invoked-Function-Arn", inv->invoked_arn);
    add_header(req, "Lambda-Runtime-Trace-Id", trace);
    if (inv->client_context)
        add_header(req, "Lambda-Runtime-Client-Context", inv->client_context);
    add_header(req, "Content-Type", "application/json");
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, inv->payload, inv->payload_len);
    inv->delivered = true;
    inv->start_us = now_mono_us();
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

void env_invoke(env_t *env, const invoke_event_t *ev, env_done_fn done, void *arg)
{
    invocation_t *inv = &env->inv;
    inv->active = true;
    inv->delivered = false;
    inv->done = done;
    inv->arg = arg;
    snprintf(inv->request_id, sizeof inv->request_id, "%s", ev->request_id);
    inv->payload = xmalloc(ev->payload_len + 1);
    memcpy(inv->payload, ev->payload, ev->payload_len);
    inv->payload_len = ev->payload_len;
    inv->client_context = ev->client_context ? xstrdup(ev->client_context) : NULL;
    inv->invoked_arn = xstrdup(ev->invoked_arn ? ev->invoked_arn : env->cfg->arn);
    env->state = ENV_BUSY;
    env->invocations++;
    evtimer_del(env->freeze_ev);
    if (env->frozen) {
        err_t err;
        if (env->iso->thaw(env->sb, &err) < 0)
            log_warn("worker", "env %s: thaw: %s", env->id, err.msg);
        env->frozen = false;
    }
    evbuffer_drain(env->tail, evbuffer_get_length(env->tail));
    log_outf(env, "START RequestId: %s Version: %s\n", inv->request_id, env->cfg->version);
    env->iso->reset_peak(env->sb);
    struct timeval tv = {.tv_sec = env->cfg->timeout_s};
    evtimer_add(env->timer_ev, &tv);
    if (env->next_req)
        deliver(env);
}

/* ------------------------------------------------------- Runtime API */

static void reply_json(struct evhttp_request *req, int code, const char *json)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, json, strlen(json));
    add_header(req, "Content-Type", "application/json");
    evhttp_send_reply(req, code, code < 300 ? "Accepted" : "Error", out);
    evbuffer_free(out);
}

static char *body_of(struct evhttp_request *req, size_t *len)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    *len = evbuffer_get_length(in);
    char *body = xmalloc(*len + 1);
    evbuffer_remove(in, body, *len);
    body[*len] = 0;
    return body;
}

/* Builds Lambda's error body {"errorMessage","errorType"} as a string. */
static char *error_body(const char *type, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *error_body(const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s,s:s}", "errorMessage", msg, "errorType", type);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void handle_next(env_t *env, struct evhttp_request *req)
{
    if (env->next_req) {
        reply_json(req, 400, "{\"errorMessage\":\"a GET /next is already pending\","
                             "\"errorType\":\"InvalidStateTransition\"}");
        return;
    }
    env->next_req = req;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_next_closed, env);
    if (env->state == ENV_STARTING && env->snap) {
        /* Init is done: save the state with this request still open (a
         * restored copy re-sends it and goes on from here). */
        evtimer_del(env->timer_ev);
        drain_output(env, SIZE_MAX);
        event_active(env->snap->ev, 0, 0);
        return;
    }
    if (env->state == ENV_STARTING) {
        env->init_ms = (double)(now_mono_us() - env->created_us) / 1000.0;
        if (env->restored)
            env->restore_ms = env->init_ms;
        evtimer_del(env->timer_ev);
        env->state = ENV_IDLE;
        env->ready_called = true;
        err_t cerr;
        if (env->iso->apply_cpu_limit(env->sb, &cerr) < 0)
            log_warn("worker", "env %s: CPU limit: %s", env->id, cerr.msg);
        drain_output(env, SIZE_MAX);
        if (env->ready && !env->silent) {
            invoke_result_t none = {0};
            env->ready(env, true, &none, env->arg);
        }
        return;
    }
    if (env->inv.active && !env->inv.delivered) {
        deliver(env);
        return;
    }
    if (env->inv.active) {
        /* The runtime asked for the next event without answering this one:
         * Lambda treats that as the invocation ending without a result. */
        char *b = error_body("Runtime.NoResponse", "RequestId: %s Error: the runtime asked for "
                             "the next event without responding", env->inv.request_id);
        env->state = ENV_IDLE;
        finish_invocation(env, INVOKE_FUNCTION_ERROR, b, strlen(b), NULL);
    }
    env_go_idle(env);
}

static void handle_result(env_t *env, struct evhttp_request *req, const char *id, bool is_error)
{
    if (!env->inv.active || !env->inv.delivered || strcmp(id, env->inv.request_id) != 0) {
        reply_json(req, 400, "{\"errorMessage\":\"Invalid request ID\",\"errorType\":\"InvalidRequestID\"}");
        return;
    }
    size_t len;
    char *body = body_of(req, &len);
    if (!is_error && len > RESPONSE_LIMIT) {
        free(body);
        reply_json(req, 413, "{\"errorMessage\":\"Response payload size exceeded maximum allowed "
                             "payload size (6291556 bytes).\",\"errorType\":\"RequestEntityTooLarge\"}");
        char *b = error_body("Function.ResponseSizeTooLarge",
                             "Response payload size exceeded maximum allowed payload size "
                             "(%d bytes).", RESPONSE_LIMIT);
        env->state = ENV_IDLE;
        finish_invocation(env, INVOKE_FUNCTION_ERROR, b, strlen(b), NULL);
        return;
    }
    if (is_error) {
        /* Pass the runtime's error object through; make one if it sent junk. */
        json_t *j = json_loadb(body, len, 0, NULL);
        if (!json_is_object(j)) {
            const char *type = evhttp_find_header(evhttp_request_get_input_headers(req),
                                                  "Lambda-Runtime-Function-Error-Type");
            free(body);
            body = error_body(type ? type : "Runtime.Unknown", "%s",
                              "The runtime reported an error without a valid error object");
            len = strlen(body);
        } else if (len > RESPONSE_LIMIT) {
            free(body);
            body = error_body("Function.ResponseSizeTooLarge",
                              "Response payload size exceeded maximum allowed payload size (%d bytes).",
                              RESPONSE_LIMIT);
            len = strlen(body);
        }
        json_decref(j);
    }
    env->state = ENV_IDLE; /* available again: a next event waits for GET /next */
    finish_invocation(env, is_error ? INVOKE_FUNCTION_ERROR : INVOKE_OK, body, len, NULL);
    reply_json(req, 202, "{\"status\":\"OK\"}");
}

static void handle_init_error(env_t *env, struct evhttp_request *req)
{
    size_t len;
    char *body = body_of(req, &len);
    json_t *j = json_loadb(body, len, 0, NULL);
    if (!json_is_object(j)) {
        free(body);
        const char *type = evhttp_find_header(evhttp_request_get_input_headers(req),
                                              "Lambda-Runtime-Function-Error-Type");
        body = error_body(type ? type : "Runtime.Unknown", "%s", "Init failed without an error object");
    }
    json_decref(j);
    reply_json(req, 202, "{\"status\":\"OK\"}");
    free(env->init_error);
    env->init_error = body;
    if (env->state == ENV_STARTING)
        env_kill(env, xstrdup(body), NULL);
}

static void on_api_request(struct evhttp_request *req, void *arg)
{
    env_t *env = arg;
    if (env->state == ENV_DEAD) {
        evhttp_send_error(req, 410, "Gone");
        return;
    }
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    static const char prefix[] = "/2018-06-01/runtime/";
    if (strncmp(uri, prefix, sizeof prefix - 1) != 0)
        goto not_found;
    const char *rest = uri + sizeof prefix - 1;
    if (method == EVHTTP_REQ_GET && !strcmp(rest, "invocation/next")) {
        handle_next(env, req);
        return;
    }
    if (method == EVHTTP_REQ_POST && (!strcmp(rest, "init/error") || !strcmp(rest, "restore/error"))) {
        handle_init_error(env, req);
        return;
    }
    if (method == EVHTTP_REQ_GET && !strcmp(rest, "restore/next")) {
        /* SnapStart: the runtime waits here for its restore.  Held while
         * the snapshot is made; in every other environment the restore
         * (if any) has happened, so it returns at once. */
        if (env->snap && env->state == ENV_STARTING)
            handle_next(env, req);
        else
            reply_json(req, 200, "{}");
        return;
    }
    if (method == EVHTTP_REQ_POST && !strncmp(rest, "invocation/", 11)) {
        const char *id = rest + 11;
        const char *slash = strchr(id, '/');
        if (slash && (size_t)(slash - id) < 64) {
            char rid[64];
            memcpy(rid, id, (size_t)(slash - id));
            rid[slash - id] = 0;
            if (!strcmp(slash, "/response")) {
                handle_result(env, req, rid, false);
                return;
            }
            if (!strcmp(slash, "/error")) {
                handle_result(env, req, rid, true);
                return;
            }
        }
    }
not_found:
    reply_json(req, 404, "{\"errorMessage\":\"Not found\",\"errorType\":\"NotFound\"}");
}

/* -------------------------------------------------------- life and death */

static void on_freeze(evutil_socket_t fd, short what, void *arg)
{
    env_t *env = arg;
    if (env->state != ENV_IDLE || env->frozen || !env->next_req)
        return;
    err_t err;
    if (env->iso->freeze(env->sb, &err) < 0) {
        log_warn("worker", "env %s: freeze: %s", env->id, err.msg);
        return;
    }
    env->frozen = true;
}

static void env_go_idle(env_t *env)
{
    env->state = ENV_IDLE;
    struct timeval tv = {.tv_usec = FREEZE_AFTER_MS * 1000};
    evtimer_add(env->freeze_ev, &tv);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    env_t *env = arg;
    if (env->state == ENV_STARTING) {
        char *b = error_body("Sandbox.Timedout", "Init timed out after %d.00 seconds",
                             env->w->cfg.init_timeout_s);
        env_kill(env, b, xstrdup("Init phase timed out\n"));
        return;
    }
    if (env->inv.active) {
        char ts[40];
        format_iso_time(now_wall_ms(), ts, sizeof ts);
        char *b = error_body("Sandbox.Timedout", "%s %s Task timed out after %d.00 seconds", ts,
                             env->inv.request_id, env->cfg->timeout_s);
        char line[256];
        snprintf(line, sizeof line, "%s %s Task timed out after %d.00 seconds\n", ts,
                 env->inv.request_id, env->cfg->timeout_s);
        env_kill(env, b, xstrdup(line));
    }
}

static void teardown(env_t *env);

static void on_teardown(evutil_socket_t fd, short what, void *arg) { teardown(arg); }

/* Records why the environment dies and schedules the teardown.  Takes
 * ownership of failure_body and log_line (both malloc'd, may be NULL). */
static void env_kill(env_t *env, char *failure_body, char *log_line)
{
    if (env->tearing_down) {
        free(failure_body);
        return;
    }
    env->tearing_down = true;
    env->failure = failure_body;
    env->failure_log = log_line;
    event_active(env->teardown_ev, 0, 0);
}

static void on_exit_ev(evutil_socket_t fd, short what, void *arg)
{
    env_t *env = arg;
    int status = 0;
    err_t err;
    if (env->iso->reap(env->sb, &status, &err) == 0)
        return;
    event_del(env->exit_ev);
    char why[96];
    if (WIFSIGNALED(status))
        snprintf(why, sizeof why, "signal: %s", WTERMSIG(status) == SIGKILL ? "killed" : strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status) && WEXITSTATUS(status) > 128)
        snprintf(why, sizeof why, "signal: %s", WEXITSTATUS(status) - 128 == SIGKILL ? "killed" : strsignal(WEXITSTATUS(status) - 128));
    else
        snprintf(why, sizeof why, "exit status %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    bool oom = env->iso->oom_kills(env->sb) > 0;
    const char *rid = env->inv.active ? env->inv.request_id : "";
    char *b;
    if (env->state == ENV_STARTING && env->init_error)
        b = xstrdup(env->init_error);
    else if (oom)
        b = error_body("Runtime.OutOfMemory", "RequestId: %s Error: Runtime exited with error: %s",
                       rid, why);
    else
        b = error_body("Runtime.ExitError", "RequestId: %s Error: Runtime exited with error: %s",
                       rid, why);
    char *line = xasprintf("RequestId: %s Error: Runtime exited with error: %s\n%s", rid, why,
                           oom ? "Runtime.OutOfMemory\n" : "Runtime.ExitError\n");
    env_kill(env, b, line);
}

static void unlink_env(env_t *env)
{
    worker_t *w = env->w;
    if (env->prev)
        env->prev->next = env->next;
    else
        w->envs = env->next;
    if (env->next)
        env->next->prev = env->prev;
    w->n_envs--;
    w->memory_used -= env->cfg->memory_mb;
    table_del(w, env);
}

static void teardown(env_t *env)
{
    env->tearing_down = true;
    enum env_state was = env->state;
    env->state = ENV_DEAD;
    if (env->sb)
        drain_output(env, 1u << 20);
    if (env->failure_log) {
        log_out(env, env->failure_log, strlen(env->failure_log));
        free(env->failure_log);
        env->failure_log = NULL;
    }
    char *failure = env->failure;
    env->failure = NULL;
    if (!failure)
        failure = error_body("Runtime.Unknown", "%s", "The execution environment was shut down");
    if (env->inv.active) {
        const char *status = strstr(failure, "Timedout") ? "timeout" : "error";
        finish_invocation(env, INVOKE_FAILED, failure, strlen(failure), status);
        failure = NULL;
    } else if (was == ENV_STARTING && !env->ready_called) {
        env->ready_called = true;
        char *tail = take_tail(env);
        invoke_result_t r = {.status = INVOKE_FAILED, .body = failure, .body_len = strlen(failure),
                             .log_tail = tail};
        if (env->ready && !env->silent)
            env->ready(env, false, &r, env->arg);
        free(tail);
    } else if (env->dead && !env->silent) {
        env->dead(env, env->arg);
    }
    free(failure);

    if (env->api)
        evhttp_free(env->api);
    event_free(env->output_ev);
    event_free(env->exit_ev);
    event_free(env->timer_ev);
    event_free(env->freeze_ev);
    event_free(env->teardown_ev);
    /* The environment's events are gone; its processes, cgroup and files
     * go on the reaper thread, so a slow teardown (a fork bomb's thousand
     * processes) never stalls this loop and its heartbeats. */
    if (env->sb)
        reaper_submit(env->iso->destroy, env->sb, env->id);
    env->sb = NULL;
    unlink_env(env);
    log_debug("worker", "env %s (%s:%s) gone after %d invocations", env->id, env->cfg->name,
              env->cfg->version, env->invocations);
    log_flush_line(env, true);
    evbuffer_free(env->line);
    evbuffer_free(env->tail);
    free(env->init_error);
    fn_config_free(env->cfg);
    free(env);
}

void env_destroy(env_t *env)
{
    env->silent = true;
    if (!env->tearing_down)
        env_kill(env, NULL, NULL);
}

/* ------------------------------------------------------------- creation */

static fn_config_t *copy_config(const fn_config_t *c)
{
    fn_config_t *d = xcalloc(1, sizeof *d);
    d->name = xstrdup(c->name);
    d->version = xstrdup(c->version);
    d->arn = xstrdup(c->arn);
    d->runtime = xstrdup(c->runtime);
    d->handler = xstrdup(c->handler ? c->handler : "");
    d->memory_mb = c->memory_mb;
    d->timeout_s = c->timeout_s;
    d->ephemeral_mb = c->ephemeral_mb;
    d->env_vars = c->env_vars ? json_deep_copy(c->env_vars) : json_object();
    d->code_sha256 = xstrdup(c->code_sha256 ? c->code_sha256 : "");
    d->code_dir = xstrdup(c->code_dir);
    d->code_hex = c->code_hex ? xstrdup(c->code_hex) : NULL;
    d->revision_id = xstrdup(c->revision_id ? c->revision_id : "");
    d->reserved_concurrency = c->reserved_concurrency;
    d->config_key = xstrdup(c->config_key ? c->config_key : "");
    d->isolation = c->isolation ? xstrdup(c->isolation) : NULL;
    d->snap_start = c->snap_start;
    d->snapshot_path = c->snapshot_path ? xstrdup(c->snapshot_path) : NULL;
    return d;
}

typedef struct strvec {
    char **v;
    size_t n, cap;
} strvec_t;

static void sv_add(strvec_t *sv, char *s)
{
    if (sv->n + 2 > sv->cap) {
        sv->cap = sv->cap ? sv->cap * 2 : 32;
        sv->v = xrealloc(sv->v, sv->cap * sizeof *sv->v);
    }
    sv->v[sv->n++] = s;
    sv->v[sv->n] = NULL;
}

static void sv_free(strvec_t *sv)
{
    for (size_t i = 0; i < sv->n; i++)
        free(sv->v[i]);
    free(sv->v);
}

/* The command that starts the runtime, as seen inside the sandbox. */
static int runtime_argv(const fn_config_t *c, strvec_t *argv, char **execution_env)
{
    *execution_env = NULL;
    if (!strncmp(c->runtime, "python", 6)) {
        sv_add(argv, xstrdup("/usr/bin/python3"));
        sv_add(argv, xstrdup("-u"));
        sv_add(argv, xstrdup("/var/runtime/python/bootstrap.py"));
        *execution_env = xasprintf("AWS_Lambda_%s", c->runtime);
    } else if (!strncmp(c->runtime, "nodejs", 6)) {
        sv_add(argv, xstrdup("/usr/bin/node"));
        sv_add(argv, xstrdup("/var/runtime/nodejs/bootstrap.js"));
        *execution_env = xasprintf("AWS_Lambda_%s", c->runtime);
    } else {
        sv_add(argv, xstrdup("/var/task/bootstrap"));
    }
    return 0;
}

static void build_env(const worker_t *w, const env_t *env, strvec_t *envp, const char *execution_env)
{
    const fn_config_t *c = env->cfg;
    /* The function's own variables first; Lambda's reserved ones win. */
    const char *k;
    json_t *v;
    json_object_foreach(c->env_vars, k, v) {
        if (json_is_string(v))
            sv_add(envp, xasprintf("%s=%s", k, json_string_value(v)));
    }
    sv_add(envp, xstrdup("PATH=/usr/local/bin:/usr/bin/:/bin:/opt/bin"));
    sv_add(envp, xstrdup("LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"));
    sv_add(envp, xstrdup("LANG=en_US.UTF-8"));
    sv_add(envp, xstrdup("TZ=:UTC"));
    sv_add(envp, xasprintf("_HANDLER=%s", c->handler));
    sv_add(envp, xstrdup("LAMBDA_TASK_ROOT=/var/task"));
    sv_add(envp, xstrdup("LAMBDA_RUNTIME_DIR=/var/runtime"));
    sv_add(envp, xasprintf("AWS_REGION=%s", w->cfg.region));
    sv_add(envp, xasprintf("AWS_DEFAULT_REGION=%s", w->cfg.region));
    sv_add(envp, xasprintf("AWS_LAMBDA_FUNCTION_NAME=%s", c->name));
    sv_add(envp, xasprintf("AWS_LAMBDA_FUNCTION_VERSION=%s", c->version));
    sv_add(envp, xasprintf("AWS_LAMBDA_FUNCTION_MEMORY_SIZE=%d", c->memory_mb));
    sv_add(envp, xasprintf("AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/%s", c->name));
    sv_add(envp, xasprintf("AWS_LAMBDA_LOG_STREAM_NAME=%s", env->log_stream));
    sv_add(envp, xstrdup("AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001"));
    sv_add(envp, xstrdup(c->snap_start ? "AWS_LAMBDA_INITIALIZATION_TYPE=snap-start"
                                        : "AWS_LAMBDA_INITIALIZATION_TYPE=on-demand"));
    if (execution_env)
        sv_add(envp, xasprintf("AWS_EXECUTION_ENV=%s", execution_env));
}

env_t *worker_env_create(worker_t *w, const fn_config_t *cfg, env_ready_fn ready, env_dead_fn dead,
                         void *arg, err_t *err)
{
    return worker_env_create_id(w, NULL, cfg, ready, dead, arg, err);
}

static env_t *env_create(worker_t *w, const char *id, const fn_config_t *cfg, env_ready_fn ready,
                         env_dead_fn dead, void *arg, snap_job_t *snap, err_t *err);

env_t *worker_env_create_id(worker_t *w, const char *id, const fn_config_t *cfg, env_ready_fn ready,
                            env_dead_fn dead, void *arg, err_t *err)
{
    return env_create(w, id, cfg, ready, dead, arg, NULL, err);
}

/* The code hex of cfg: code_hex, else the base64 CodeSha256 decoded (a
 * config from a frontend that does not send code_hex). */
static int config_code_hex(const fn_config_t *cfg, char hex[65], err_t *err)
{
    if (cfg->code_hex && *cfg->code_hex) {
        if (!store_hex_valid(cfg->code_hex))
            return err_set(err, EINVAL, "invalid code hash in the configuration");
        snprintf(hex, 65, "%s", cfg->code_hex);
        return 0;
    }
    size_t n = 0;
    const char *b64 = cfg->code_sha256 ? cfg->code_sha256 : "";
    unsigned char *d = base64_decode(b64, strlen(b64), &n);
    int ok = d && n == 32;
    if (ok)
        hex_encode(d, 32, hex);
    free(d);
    return ok ? 0 : err_set(err, EINVAL, "the configuration names no code hash");
}

/* Sets *dir to this worker's extracted copy of cfg's code, fetching it
 * from the store when absent; -1/err says why the code is unavailable. */
static int local_code_dir(worker_t *w, const fn_config_t *cfg, char **dir, err_t *err)
{
    char hex[65];
    if (config_code_hex(cfg, hex, err) < 0)
        return -1;
    if (store_ensure_code(w->cfg.code_store, hex, dir, err) < 0)
        return err_wrap(err, "fetching the function's code %.12s", hex);
    return 0;
}

/* Creates an environment; with snap, one whose Init ends in a snapshot. */
static env_t *env_create(worker_t *w, const char *id, const fn_config_t *cfg, env_ready_fn ready,
                         env_dead_fn dead, void *arg, snap_job_t *snap, err_t *err)
{
    bool snapshot_only = snap != NULL;
    if (id && !worker_env_id_valid(id)) {
        err_set(err, EINVAL, "invalid environment id (1-%d of [A-Za-z0-9_-])", ENV_ID_MAX);
        return NULL;
    }
    if (id && table_get(w, id)) {
        err_set(err, EEXIST, "environment %s exists", id);
        return NULL;
    }
    /* With a distributed store the code is named by its hash, never by
     * the path the resolving host gave: DATA/code/<hex> of this worker,
     * fetched from the store when absent. */
    char *local_code = NULL;
    if (w->cfg.code_store && local_code_dir(w, cfg, &local_code, err) < 0)
        return NULL;
    env_t *env = xcalloc(1, sizeof *env);
    env->w = w;
    env->cfg = copy_config(cfg);
    if (local_code) {
        free(env->cfg->code_dir);
        env->cfg->code_dir = local_code;
    }
    env->ready = ready;
    env->dead = dead;
    env->arg = arg;
    env->state = ENV_STARTING;
    env->created_us = now_mono_us();
    env->iso = isolation_by_name(cfg->isolation && *cfg->isolation ? cfg->isolation : w->cfg.isolation);
    if (!env->iso) {
        err_set(err, EINVAL, "unknown isolation backend \"%s\" (sandbox or microvm)",
                cfg->isolation && *cfg->isolation ? cfg->isolation : w->cfg.isolation);
        fn_config_free(env->cfg);
        free(env);
        return NULL;
    }
    if (snap && !env->iso->snapshot) {
        err_set(err, ENOTSUP, "SnapStart snapshots need the microvm isolation (this function "
                "runs in %s)", env->iso->name);
        fn_config_free(env->cfg);
        free(env);
        return NULL;
    }
    env->snap = snap;
    if (id) {
        snprintf(env->id, sizeof env->id, "%s", id);
    } else {
        unsigned char rnd[16];
        random_bytes(rnd, sizeof rnd);
        hex_encode(rnd, 16, env->id);
    }
    char day[16];
    {
        char iso[40];
        format_iso_time(now_wall_ms(), iso, sizeof iso);
        snprintf(day, sizeof day, "%.4s/%.2s/%.2s", iso, iso + 5, iso + 8);
    }
    snprintf(env->log_stream, sizeof env->log_stream, "%s/[%s]%s", day, cfg->version, env->id);
    env->tail = evbuffer_new();
    env->line = evbuffer_new();

    strvec_t argv = {0}, envp = {0};
    char *execution_env = NULL;
    runtime_argv(env->cfg, &argv, &execution_env);
    build_env(w, env, &envp, execution_env);
    free(execution_env);

    /* Custom runtimes need an executable bootstrap: say so as Lambda does. */
    if (!strncmp(cfg->runtime, "provided", 8)) {
        char *path = xasprintf("%s/bootstrap", env->cfg->code_dir);
        struct stat st;
        int ok = stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0111);
        free(path);
        if (!ok) {
            sv_free(&argv);
            sv_free(&envp);
            err_set(err, ENOENT, "Couldn't find valid bootstrap(s): [/var/task/bootstrap /opt/bootstrap]");
            evbuffer_free(env->tail);
            evbuffer_free(env->line);
            fn_config_free(env->cfg);
            free(env);
            return NULL;
        }
    }

    /* The code's identity for backends that cache a disk image of it:
     * CodeSha256 (base64) made filename-safe. */
    char code_key[128];
    snprintf(code_key, sizeof code_key, "%s", cfg->code_sha256 ? cfg->code_sha256 : "");
    for (char *p = code_key; *p; p++)
        if (*p == '/')
            *p = '_';
        else if (*p == '+')
            *p = '-';
    /* A caller may reuse the id of an environment it just destroyed; its
     * cgroups carry that name until the reaper is done with them. */
    if (reaper_wait_for(env->id))
        log_info("worker", "env %s: waited for the previous environment of this id to be destroyed", env->id);
    sandbox_spec_t spec = {
        .id = env->id,
        .code_dir = env->cfg->code_dir,
        .runtime_dir = w->cfg.runtimes_dir,
        .memory_mb = cfg->memory_mb,
        .ephemeral_mb = cfg->ephemeral_mb,
        .argv = argv.v,
        .envp = envp.v,
        .defer_cpu_limit = true,
        .runtime = cfg->runtime,
        .code_key = code_key,
        .state_dir = w->cfg.state_dir,
    };
    /* SnapStart: restore the version's snapshot instead of running Init;
     * if that fails (missing, corrupt, made by another guest build), say so
     * in the function's log and start normally. */
    int rc;
    if (cfg->snapshot_path && env->iso->snapshot && !snapshot_only) {
        spec.restore_from = cfg->snapshot_path;
        err_t rerr = {0};
        rc = env->iso->create(&spec, &env->sb, &rerr);
        if (rc == 0) {
            env->restored = true;
        } else {
            log_warn("worker", "env %s: SnapStart restore of %s failed (%s): cold start with Init",
                     env->id, cfg->snapshot_path, rerr.msg);
            log_outf(env, "SnapStart: restoring the snapshot failed (%s); running Init instead\n",
                     rerr.msg);
            spec.restore_from = NULL;
            rc = env->iso->create(&spec, &env->sb, err);
        }
    } else {
        rc = env->iso->create(&spec, &env->sb, err);
    }
    sv_free(&argv);
    sv_free(&envp);
    if (rc < 0) {
        evbuffer_free(env->tail);
        evbuffer_free(env->line);
        fn_config_free(env->cfg);
        free(env);
        return NULL;
    }

    env->api = evhttp_new(w->base);
    evhttp_set_max_body_size(env->api, API_BODY_LIMIT);
    evhttp_set_timeout(env->api, 24 * 3600);
    evhttp_set_allowed_methods(env->api, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_gencb(env->api, on_api_request, env);
    int api_fd = dup(env->iso->api_fd(env->sb));
    evutil_make_socket_nonblocking(api_fd);
    evutil_make_socket_closeonexec(api_fd);
    if (api_fd < 0 || evhttp_accept_socket(env->api, api_fd) < 0) {
        err_sys(err, "serving the Runtime API");
        if (api_fd >= 0)
            close(api_fd);
        evhttp_free(env->api);
        env->iso->destroy(env->sb, NULL);
        evbuffer_free(env->tail);
        evbuffer_free(env->line);
        fn_config_free(env->cfg);
        free(env);
        return NULL;
    }
    env->output_ev = event_new(w->base, env->iso->output_fd(env->sb), EV_READ | EV_PERSIST, on_output, env);
    env->exit_ev = event_new(w->base, env->iso->exit_fd(env->sb), EV_READ | EV_PERSIST, on_exit_ev, env);
    env->timer_ev = evtimer_new(w->base, on_timer, env);
    env->freeze_ev = evtimer_new(w->base, on_freeze, env);
    env->teardown_ev = event_new(w->base, -1, 0, on_teardown, env);
    event_add(env->output_ev, NULL);
    event_add(env->exit_ev, NULL);
    /* A microVM boots its kernel first (seconds under TCG emulation): the
     * Init limit starts counting after a boot allowance. */
    struct timeval tv = {.tv_sec = w->cfg.init_timeout_s +
                                   (env->iso->snapshot ? MICROVM_BOOT_ALLOWANCE_S : 0)};
    evtimer_add(env->timer_ev, &tv);

    env->next = w->envs;
    if (w->envs)
        w->envs->prev = env;
    w->envs = env;
    table_put(w, env);
    w->n_envs++;
    w->memory_used += cfg->memory_mb;
    return env;
}

/* ------------------------------------------------------------ snapshots */

static void snap_job_free(snap_job_t *job)
{
    if (job->ev)
        event_free(job->ev);
    free(job->path);
    free(job);
}

/* The environment failed before its snapshot (Init error, crash, timeout,
 * worker shutdown): the job fails with Lambda's error body. */
static void snap_ready(env_t *env, bool ok, const invoke_result_t *r, void *arg)
{
    snap_job_t *job = arg;
    job->env = NULL;
    if (!job->done) {
        job->done = true;
        job->cb(false, r && r->body ? r->body : "Init failed", job->arg);
    }
    snap_job_free(job);
}

static void snap_dead(env_t *env, void *arg) { snap_ready(env, false, NULL, arg); }

static void on_snap(evutil_socket_t fd, short what, void *arg)
{
    snap_job_t *job = arg;
    env_t *env = job->env;
    err_t e = {0};
    char *tmp = xasprintf("%s.tmp-%d", job->path, (int)getpid());
    uint64_t t0 = now_mono_us();
    int rc = env->iso->snapshot(env->sb, tmp, &e);
    if (rc == 0 && rename(tmp, job->path) < 0)
        rc = err_sys(&e, "rename %s", job->path);
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    if (rc == 0)
        log_info("worker", "SnapStart: %s:%s saved to %s (Init %.0f ms, save %.0f ms)",
                 env->cfg->name, env->cfg->version, job->path,
                 (double)(t0 - env->created_us) / 1000.0, (double)(now_mono_us() - t0) / 1000.0);
    job->env = NULL;
    job->done = true;
    env_destroy(env); /* silent: snap_ready is not called */
    job->cb(rc == 0, rc == 0 ? NULL : e.msg, job->arg);
    snap_job_free(job);
}

int worker_snapshot_create(worker_t *w, const fn_config_t *cfg, const char *path,
                           worker_snapshot_fn cb, void *arg, err_t *err)
{
    snap_job_t *job = xcalloc(1, sizeof *job);
    job->w = w;
    job->path = xstrdup(path);
    job->cb = cb;
    job->arg = arg;
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        if (mkdir_p(dir, 0700, err) < 0) {
            free(dir);
            snap_job_free(job);
            return -1;
        }
    }
    free(dir);
    job->ev = event_new(w->base, -1, 0, on_snap, job);
    fn_config_t *c = copy_config(cfg);
    free(c->snapshot_path); /* boot and Init: never restore while making one */
    c->snapshot_path = NULL;
    c->snap_start = 1;
    job->env = env_create(w, NULL, c, snap_ready, snap_dead, job, job, err);
    fn_config_free(c);
    if (!job->env) {
        snap_job_free(job);
        return -1;
    }
    return 0;
}

/* --------------------------------------------------------------- worker */

worker_t *worker_new(struct event_base *base, const worker_config_t *cfg, err_t *err)
{
    worker_t *w = xcalloc(1, sizeof *w);
    w->base = base;
    w->cfg = *cfg;
    w->cfg.id = xstrdup(cfg->id);
    w->cfg.zone = xstrdup(cfg->zone);
    w->cfg.runtimes_dir = cfg->runtimes_dir ? xstrdup(cfg->runtimes_dir) : NULL;
    w->cfg.region = xstrdup(cfg->region);
    if (w->cfg.init_timeout_s <= 0)
        w->cfg.init_timeout_s = 10;
    return w;
}

void worker_free(worker_t *w)
{
    if (!w)
        return;
    while (w->envs) {
        env_t *env = w->envs;
        if (!env->tearing_down) {
            env->tearing_down = true;
            env->failure = error_body("Runtime.Unknown", "%s", "The worker is shutting down");
        }
        teardown(env);
    }
    reaper_drain(); /* nothing of this worker outlives it */
    free((char *)w->cfg.id);
    free((char *)w->cfg.zone);
    free((char *)w->cfg.runtimes_dir);
    free((char *)w->cfg.region);
    free(w->table);
    free(w);
}

enum env_state env_state(const env_t *env) { return env->tearing_down ? ENV_DEAD : env->state; }
const fn_config_t *env_config(const env_t *env) { return env->cfg; }
const char *env_id(const env_t *env) { return env->id; }
worker_t *env_worker(const env_t *env) { return env->w; }
void *env_owner(const env_t *env) { return env->arg; }
int worker_memory_used(const worker_t *w) { return w->memory_used; }
int worker_env_count(const worker_t *w) { return w->n_envs; }
env_t *worker_env_first(const worker_t *w)
{
    env_t *e = w->envs;
    while (e && (e->silent || e->snap))
        e = e->next;
    return e;
}

env_t *worker_env_next(const env_t *env)
{
    env_t *e = env->next;
    while (e && (e->silent || e->snap))
        e = e->next;
    return e;
}
pid_t env_pid(const env_t *env) { return env->sb ? env->iso->pid(env->sb) : 0; }
const worker_config_t *worker_config(const worker_t *w) { return &w->cfg; }
struct event_base *worker_event_base(const worker_t *w) { return w->base; }

json_t *worker_status(const worker_t *w)
{
    static const char *names[] = {"initializing", "idle", "busy", "dead"};
    json_t *envs = json_array();
    for (env_t *e = w->envs; e; e = e->next) {
        json_array_append_new(
            envs, json_pack("{s:s,s:s,s:s,s:s,s:I,s:b,s:i,s:i}", "id", e->id, "function", e->cfg->name,
                            "version", e->cfg->version, "state", names[env_state(e)], "pid",
                            (json_int_t)(e->sb ? e->iso->pid(e->sb) : 0), "frozen", e->frozen,
                            "memory_mb", e->cfg->memory_mb, "invocations", e->invocations));
    }
    json_t *st = json_pack("{s:s,s:s,s:i,s:i,s:i,s:o,s:s}", "id", w->cfg.id, "zone", w->cfg.zone,
                           "memory_mb", w->cfg.memory_mb, "memory_used_mb", w->memory_used,
                           "environments_count", w->n_envs, "environments", envs, "isolation",
                           w->cfg.isolation ? w->cfg.isolation : "sandbox");
    /* The accelerator is probed at start only where microVMs are the
     * default (a probe boots a guest: not something status may trigger). */
    if (w->cfg.isolation && !strcmp(w->cfg.isolation, "microvm"))
        json_object_set_new(st, "microvm",
                            json_pack("{s:s,s:s,s:i}", "accelerator", microvm_accelerator(),
                                      "accelerator_reason", microvm_accelerator_reason(), "vms",
                                      microvm_count()));
    return st;
}
