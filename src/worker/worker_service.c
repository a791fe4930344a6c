/* worker_service.c - the worker role's RPC server and placement client
 * (see worker_service.h and docs/protocol.md, Worker).
 *
 * Each environment the service created has a record (wenv_t, the env's
 * owner arg) holding the env.create / env.invoke call waiting for it.  A
 * record is freed exactly when the service stops hearing about its env:
 * ready(false), dead, an invocation that failed (the env is torn down
 * right after), env.destroy / LOST / service free (env_destroy: silent).
 * Pending calls are always answered before their record goes, so cancel
 * callbacks never see a freed record; a call whose connection closed is
 * answered at once (into the void) and forgotten, while its environment
 * goes on. */
#include "worker/worker_service.h"
#include "worker/microvm.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "store/store.h"

#define ROLE "worker"

typedef struct wenv {
    struct worker_service *ws;
    env_t *env;
    char id[ENV_ID_MAX + 1];
    rpc_call_t *create_call;
    rpc_call_t *invoke_call;
    struct wenv *next, *prev;
} wenv_t;

typedef struct wconn {
    rpc_conn_t *conn;
    struct wconn *next, *prev;
} wconn_t;

enum pstate { P_OFF, P_REGISTERING, P_REGISTERED };

struct worker_service {
    struct event_base *base;
    worker_t *w;
    rpc_server_t *srv;
    char *address;
    int heartbeat_ms;
    wenv_t *envs;
    wconn_t *conns;
    /* placement */
    rpc_client_t **pcs;
    int npc, cur;
    enum pstate pstate;
    bool in_flight;
    int fails;
    struct event *ptimer;
};

static const char *state_name(enum env_state s)
{
    static const char *names[] = {"initializing", "idle", "busy", "dead"};
    return names[s];
}

/* ------------------------------------------------------------ records */

static void wenv_unlink_free(wenv_t *we)
{
    worker_service_t *ws = we->ws;
    if (we->prev)
        we->prev->next = we->next;
    else
        ws->envs = we->next;
    if (we->next)
        we->next->prev = we->prev;
    free(we);
}

static void reply_failed_invoke(rpc_call_t *call, const char *why)
{
    char *body = xasprintf("{\"errorMessage\":\"%s\",\"errorType\":\"Runtime.Unknown\"}", why);
    json_t *r = json_pack("{s:s,s:f,s:s}", "status", "failed", "duration_ms", 0.0, "log_tail", "");
    rpc_reply(call, r, body, strlen(body));
    json_decref(r);
    free(body);
}

/* Answers the record's pending calls (the environment is going away). */
static void wenv_answer_pending(wenv_t *we, const char *why)
{
    if (we->create_call) {
        rpc_call_t *c = we->create_call;
        we->create_call = NULL;
        rpc_reply_error(c, "CreateFailed", "environment %s %s", we->id, why);
    }
    if (we->invoke_call) {
        rpc_call_t *c = we->invoke_call;
        we->invoke_call = NULL;
        reply_failed_invoke(c, why);
    }
}

/* Destroys the environment now, silently, and forgets it. */
static void wenv_destroy(wenv_t *we, const char *why)
{
    wenv_answer_pending(we, why);
    env_destroy(we->env);
    wenv_unlink_free(we);
}

static void notify_dead(worker_service_t *ws, const char *id)
{
    json_t *p = json_pack("{s:s}", "env_id", id);
    for (wconn_t *c = ws->conns; c; c = c->next) {
        err_t err;
        if (rpc_conn_notify(c->conn, "env.dead", p, NULL, 0, &err) < 0)
            log_debug(ROLE, "env.dead to %s: %s", rpc_conn_peer(c->conn), err.msg);
    }
    json_decref(p);
}

/* ---------------------------------------------------- env callbacks */

static void on_env_ready(env_t *env, bool ok, const invoke_result_t *res, void *arg)
{
    wenv_t *we = arg;
    rpc_call_t *call = we->create_call;
    we->create_call = NULL;
    if (ok) {
        log_debug(ROLE, "env %s ready", we->id);
        if (call)
            rpc_reply(call, NULL, NULL, 0);
        return;
    }
    /* Init failed: the env is freed right after this callback. */
    char msg[512] = "Init failed";
    json_t *b = json_loadb(res->body ? res->body : "", res->body_len, 0, NULL);
    const char *et = json_string_value(json_object_get(b, "errorType"));
    const char *em = json_string_value(json_object_get(b, "errorMessage"));
    if (et || em)
        snprintf(msg, sizeof msg, "%s: %s", et ? et : "Error", em ? em : "");
    json_decref(b);
    log_info(ROLE, "env %s (%s) init failed: %s", we->id, env_config(env)->name, msg);
    if (call) {
        json_t *extra = json_pack("{s:s}", "log_tail", res->log_tail ? res->log_tail : "");
        rpc_reply_error_ex(call, "InitFailed", extra, res->body, res->body_len, "%s", msg);
        json_decref(extra);
    }
    wenv_unlink_free(we);
}

static void on_env_dead(env_t *env, void *arg)
{
    wenv_t *we = arg;
    worker_service_t *ws = we->ws;
    log_info(ROLE, "env %s (%s) died", we->id, env_config(env)->name);
    wenv_answer_pending(we, "died");
    notify_dead(ws, we->id);
    wenv_unlink_free(we);
}

static void on_invoke_done(env_t *env, const invoke_result_t *res, void *arg)
{
    wenv_t *we = arg;
    rpc_call_t *call = we->invoke_call;
    we->invoke_call = NULL;
    const char *status = res->status == INVOKE_OK               ? "ok"
                         : res->status == INVOKE_FUNCTION_ERROR ? "function_error"
                                                                : "failed";
    if (call) {
        json_t *r = json_pack("{s:s,s:f,s:s}", "status", status, "duration_ms", res->duration_ms,
                              "log_tail", res->log_tail ? res->log_tail : "");
        rpc_reply(call, r, res->body, res->body_len);
        json_decref(r);
    }
    if (res->status == INVOKE_FAILED) /* the env is torn down right after */
        wenv_unlink_free(we);
}

static void on_call_cancel(rpc_call_t *call, void *arg)
{
    wenv_t *we = arg;
    /* Answer into the void now; the environment carries on. */
    if (we->create_call == call) {
        we->create_call = NULL;
        log_debug(ROLE, "env %s: env.create caller gone; environment kept", we->id);
        rpc_reply_error(call, "Cancelled", "caller gone");
    } else if (we->invoke_call == call) {
        we->invoke_call = NULL;
        log_debug(ROLE, "env %s: env.invoke caller gone; the invocation goes on", we->id);
        rpc_reply_error(call, "Cancelled", "caller gone");
    }
}

/* ----------------------------------------------------------- methods */

static const char *str_param(json_t *params, const char *k)
{
    return json_string_value(json_object_get(params, k));
}

static void m_create(worker_service_t *ws, rpc_call_t *call, json_t *params)
{
    const char *id = str_param(params, "env_id");
    if (!worker_env_id_valid(id)) {
        rpc_reply_error(call, "InvalidRequest", "env_id must be 1-%d of [A-Za-z0-9_-]", ENV_ID_MAX);
        return;
    }
    err_t err = {0};
    fn_config_t *cfg = fn_config_from_json(json_object_get(params, "config"), &err);
    if (!cfg) {
        rpc_reply_error(call, "InvalidRequest", "config: %s", err.msg);
        return;
    }
    env_t *old = worker_env_find(ws->w, id);
    if (old) {
        wenv_t *we = env_owner(old);
        if (env_state(old) == ENV_DEAD)
            rpc_reply_error(call, "CreateFailed", "environment %s is dying", id);
        else if (strcmp(env_config(old)->config_key, cfg->config_key) != 0)
            rpc_reply_error(call, "CreateFailed", "environment %s exists with another configuration", id);
        else if (env_state(old) != ENV_STARTING)
            rpc_reply(call, NULL, NULL, 0); /* already ready: idempotent */
        else if (we->create_call)
            rpc_reply_error(call, "CreateFailed", "environment %s is being created by another call", id);
        else {
            we->create_call = call;
            rpc_call_set_cancel_cb(call, on_call_cancel, we);
        }
        fn_config_free(cfg);
        return;
    }
    const worker_config_t *wc = worker_config(ws->w);
    if (cfg->memory_mb < 1 || worker_memory_used(ws->w) + cfg->memory_mb > wc->memory_mb) {
        rpc_reply_error(call, "NoCapacity", "%d MB wanted, %d of %d MB used", cfg->memory_mb,
                        worker_memory_used(ws->w), wc->memory_mb);
        fn_config_free(cfg);
        return;
    }
    wenv_t *we = xcalloc(1, sizeof *we);
    we->ws = ws;
    snprintf(we->id, sizeof we->id, "%s", id);
    we->env = worker_env_create_id(ws->w, id, cfg, on_env_ready, on_env_dead, we, &err);
    if (!we->env) {
        log_info(ROLE, "env %s (%s): create failed: %s", id, cfg->name, err.msg);
        rpc_reply_error(call, "CreateFailed", "%s", err.msg);
        free(we);
        fn_config_free(cfg);
        return;
    }
    log_debug(ROLE, "env %s (%s:%s) starting", id, cfg->name, cfg->version);
    fn_config_free(cfg);
    we->next = ws->envs;
    if (ws->envs)
        ws->envs->prev = we;
    ws->envs = we;
    we->create_call = call;
    rpc_call_set_cancel_cb(call, on_call_cancel, we);
}

static void m_invoke(worker_service_t *ws, rpc_call_t *call, json_t *params, const void *body,
                     size_t len)
{
    const char *id = str_param(params, "env_id");
    env_t *env = id ? worker_env_find(ws->w, id) : NULL;
    if (!env || env_state(env) == ENV_DEAD) {
        rpc_reply_error(call, "UnknownEnvironment", "no environment %s", id ? id : "(null)");
        return;
    }
    if (env_state(env) != ENV_IDLE) {
        rpc_reply_error(call, "Busy", "environment %s is %s", id, state_name(env_state(env)));
        return;
    }
    const char *rid = str_param(params, "request_id");
    if (!rid || !*rid || strlen(rid) > 63) {
        rpc_reply_error(call, "InvalidRequest", "request_id must be 1-63 characters");
        return;
    }
    wenv_t *we = env_owner(env);
    invoke_event_t ev = {
        .request_id = rid,
        .payload = body ? body : "",
        .payload_len = body ? len : 0,
        .client_context = str_param(params, "client_context"),
        .invoked_arn = str_param(params, "invoked_arn"),
    };
    we->invoke_call = call;
    rpc_call_set_cancel_cb(call, on_call_cancel, we);
    env_invoke(env, &ev, on_invoke_done, we);
}

static void m_destroy(worker_service_t *ws, rpc_call_t *call, json_t *params)
{
    const char *id = str_param(params, "env_id");
    env_t *env = id ? worker_env_find(ws->w, id) : NULL;
    if (env) {
        log_debug(ROLE, "env %s destroyed on request", id);
        wenv_destroy(env_owner(env), "destroyed");
    }
    rpc_reply(call, NULL, NULL, 0);
}

static void m_list(worker_service_t *ws, rpc_call_t *call)
{
    json_t *envs = json_array();
    for (env_t *e = worker_env_first(ws->w); e; e = worker_env_next(e)) {
        if (env_state(e) == ENV_DEAD)
            continue;
        const fn_config_t *c = env_config(e);
        json_array_append_new(envs, json_pack("{s:s,s:s,s:s,s:s,s:s}", "env_id", env_id(e), "state",
                                              state_name(env_state(e)), "config_key", c->config_key,
                                              "function", c->name, "version", c->version));
    }
    json_t *r = json_pack("{s:s,s:o}", "worker_id", worker_config(ws->w)->id, "envs", envs);
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

static void m_status(worker_service_t *ws, rpc_call_t *call)
{
    json_t *r = worker_status(ws->w);
    /* "id" is reserved in RPC headers: the worker's id travels as worker_id. */
    json_object_set(r, "worker_id", json_object_get(r, "id"));
    json_object_del(r, "id");
    json_object_set_new(r, "address", json_string(ws->address));
    json_object_set_new(r, "placement", json_string(ws->pstate == P_REGISTERED    ? "registered"
                                                    : ws->pstate == P_REGISTERING ? "registering"
                                                                                  : "none"));
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

/* env.snapshot {config, path}: SnapStart.  Replies when the snapshot is
 * saved (or with SnapshotFailed and why). */
typedef struct snap_call {
    rpc_call_t *call; /* NULL once the caller is gone */
} snap_call_t;

static void on_snap_cancel(rpc_call_t *call, void *arg)
{
    snap_call_t *sc = arg;
    sc->call = NULL;
    rpc_reply_error(call, "Cancelled", "caller gone");
}

static void on_snap_done(bool ok, const char *message, void *arg)
{
    snap_call_t *sc = arg;
    if (sc->call) {
        if (ok)
            rpc_reply(sc->call, NULL, NULL, 0);
        else
            rpc_reply_error(sc->call, "SnapshotFailed", "%s", message ? message : "failed");
    }
    free(sc);
}

static void m_snapshot(worker_service_t *ws, rpc_call_t *call, json_t *params)
{
    const char *path = str_param(params, "path");
    err_t err = {0};
    if (!path || path[0] != '/') {
        rpc_reply_error(call, "InvalidRequest", "path must be absolute");
        return;
    }
    fn_config_t *cfg = fn_config_from_json(json_object_get(params, "config"), &err);
    if (!cfg) {
        rpc_reply_error(call, "InvalidRequest", "config: %s", err.msg);
        return;
    }
    snap_call_t *sc = xcalloc(1, sizeof *sc);
    sc->call = call;
    if (worker_snapshot_create(ws->w, cfg, path, on_snap_done, sc, &err) < 0) {
        rpc_reply_error(call, "SnapshotFailed", "%s", err.msg);
        free(sc);
    } else {
        rpc_call_set_cancel_cb(call, on_snap_cancel, sc);
    }
    fn_config_free(cfg);
}

static void on_request(rpc_call_t *call, const char *method, json_t *params, const void *body,
                       size_t len, void *arg)
{
    worker_service_t *ws = arg;
    rpc_conn_t *conn = rpc_call_conn(call);
    if (conn && !rpc_conn_get_data(conn)) { /* a client: it gets env.dead from now on */
        wconn_t *c = xcalloc(1, sizeof *c);
        c->conn = conn;
        c->next = ws->conns;
        if (ws->conns)
            ws->conns->prev = c;
        ws->conns = c;
        rpc_conn_set_data(conn, c);
    }
    if (!strcmp(method, "env.invoke"))
        m_invoke(ws, call, params, body, len);
    else if (!strcmp(method, "env.create"))
        m_create(ws, call, params);
    else if (!strcmp(method, "env.destroy"))
        m_destroy(ws, call, params);
    else if (!strcmp(method, "env.list"))
        m_list(ws, call);
    else if (!strcmp(method, "env.snapshot"))
        m_snapshot(ws, call, params);
    else if (!strcmp(method, "worker.status"))
        m_status(ws, call);
    else
        rpc_reply_error(call, "UnknownMethod", "no method %s", method);
}

static void on_conn_close(rpc_conn_t *conn, void *arg)
{
    worker_service_t *ws = arg;
    wconn_t *c = rpc_conn_get_data(conn);
    if (!c)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        ws->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* --------------------------------------------------------- placement */

static bool transport_error(const char *code)
{
    return !strcmp(code, RPC_TIMEOUT) || !strcmp(code, RPC_DISCONNECTED) ||
           !strcmp(code, RPC_UNREACHABLE) || !strcmp(code, RPC_INVALID);
}

/* Logs the first failure of a streak and every 30th after it. */
static void note_failure(worker_service_t *ws, const char *what, const rpc_result_t *r)
{
    ws->fails++;
    if (ws->fails == 1 || ws->fails % 30 == 0)
        log_warn(ROLE, "%s (placement %d of %d): %s: %s (failure %d in a row; retrying)", what,
                 ws->cur + 1, ws->npc, r->error, r->message, ws->fails);
    if (transport_error(r->error) && ws->npc > 1)
        ws->cur = (ws->cur + 1) % ws->npc;
}

static void destroy_all(worker_service_t *ws, bool notify)
{
    while (ws->envs) {
        wenv_t *we = ws->envs;
        if (notify)
            notify_dead(ws, we->id);
        wenv_destroy(we, "destroyed: the worker lost its placement registration");
    }
}

static void on_register_reply(const rpc_result_t *r, void *arg)
{
    worker_service_t *ws = arg;
    if (r->error && !strcmp(r->error, RPC_CANCELLED))
        return; /* the service is being freed */
    ws->in_flight = false;
    if (r->error) {
        note_failure(ws, "worker.register", r);
        return;
    }
    log_info(ROLE, "registered with placement %d of %d as %s (%s)%s", ws->cur + 1, ws->npc,
             worker_config(ws->w)->id, ws->address,
             ws->fails ? " after failures" : "");
    ws->fails = 0;
    ws->pstate = P_REGISTERED;
}

static void on_heartbeat_reply(const rpc_result_t *r, void *arg)
{
    worker_service_t *ws = arg;
    if (r->error && !strcmp(r->error, RPC_CANCELLED))
        return;
    ws->in_flight = false;
    if (r->error) {
        note_failure(ws, "worker.heartbeat", r);
        if (!transport_error(r->error)) { /* placement answered: it does not know us */
            log_info(ROLE, "placement refused the heartbeat (%s): registering again", r->error);
            ws->pstate = P_REGISTERING;
        }
        return;
    }
    if (ws->fails)
        log_info(ROLE, "heartbeats answered again after %d failures", ws->fails);
    ws->fails = 0;
    const char *st = json_string_value(json_object_get(r->result, "state"));
    if (st && !strcmp(st, "lost")) {
        log_warn(ROLE, "placement considers this worker lost: destroying its %d environments and "
                 "registering again", worker_env_count(ws->w));
        destroy_all(ws, true);
        ws->pstate = P_REGISTERING;
    } else if (st && !strcmp(st, "retired")) {
        log_info(ROLE, "placement retired this worker: registering again");
        ws->pstate = P_REGISTERING;
    }
}

static void on_ptimer(evutil_socket_t fd, short what, void *arg)
{
    worker_service_t *ws = arg;
    if (ws->in_flight || ws->pstate == P_OFF)
        return;
    rpc_client_t *pc = ws->pcs[ws->cur];
    int timeout = ws->heartbeat_ms * 2 < 1000 ? 1000 : ws->heartbeat_ms * 2;
    const worker_config_t *wc = worker_config(ws->w);
    json_t *p;
    int rc;
    if (ws->pstate == P_REGISTERING) {
        p = json_pack("{s:s,s:s,s:s,s:i,s:i,s:s}", "worker_id", wc->id, "address", ws->address,
                      "zone", wc->zone, "memory_mb", wc->memory_mb, "cpus", wc->cpus, "isolation",
                      wc->isolation ? wc->isolation : "sandbox");
        if (wc->isolation && !strcmp(wc->isolation, "microvm")) /* decided at start */
            json_object_set_new(p, "accelerator", json_string(microvm_accelerator()));
        rc = rpc_call(pc, "worker.register", p, NULL, 0, timeout, on_register_reply, ws);
    } else {
        /* every live environment, with its function: placement derives
         * its per-function counts (zone spread) from these lists */
        int n = 0;
        json_t *envs = json_array();
        for (env_t *e = worker_env_first(ws->w); e; e = worker_env_next(e)) {
            if (env_state(e) == ENV_DEAD)
                continue;
            n++;
            const fn_config_t *cfg = env_config(e);
            json_array_append_new(envs, json_pack("{s:s,s:s,s:i}", "env_id", env_id(e), "function",
                                                  cfg->name, "memory_mb", cfg->memory_mb));
        }
        p = json_pack("{s:s,s:i,s:i,s:o}", "worker_id", wc->id, "memory_used_mb",
                      worker_memory_used(ws->w), "environments", n, "envs", envs);
        rc = rpc_call(pc, "worker.heartbeat", p, NULL, 0, timeout, on_heartbeat_reply, ws);
    }
    json_decref(p);
    ws->in_flight = rc == 0;
}

/* -------------------------------------------------------------- life */

worker_service_t *worker_service_new(struct event_base *base, worker_t *w,
                                     const worker_service_config_t *cfg, err_t *err)
{
    worker_service_t *ws = xcalloc(1, sizeof *ws);
    ws->base = base;
    ws->w = w;
    ws->address = xstrdup(cfg->address ? cfg->address : "");
    ws->heartbeat_ms = cfg->heartbeat_ms > 0 ? cfg->heartbeat_ms : 1000;
    if (cfg->placement && *cfg->placement) {
        char *list = xstrdup(cfg->placement), *save = NULL;
        for (char *a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
            rpc_opts_t o = {.backoff_max_ms = ws->heartbeat_ms < 2000 ? 2000 : ws->heartbeat_ms};
            rpc_client_t *c = rpc_client_new(base, a, &o, err);
            if (!c) {
                free(list);
                worker_service_free(ws);
                return NULL;
            }
            ws->pcs = xrealloc(ws->pcs, (size_t)(ws->npc + 1) * sizeof *ws->pcs);
            ws->pcs[ws->npc++] = c;
        }
        free(list);
    }
    ws->srv = rpc_server_new(base, on_request, ws);
    rpc_server_set_close_cb(ws->srv, on_conn_close, ws);
    return ws;
}

int worker_service_listen(worker_service_t *ws, const char *addr, err_t *err)
{
    return rpc_server_listen(ws->srv, addr, err);
}

int worker_service_port(const worker_service_t *ws) { return rpc_server_port(ws->srv); }

void worker_service_set_address(worker_service_t *ws, const char *address)
{
    free(ws->address);
    ws->address = xstrdup(address);
}

bool worker_service_registered(const worker_service_t *ws) { return ws->pstate == P_REGISTERED; }

void worker_service_start(worker_service_t *ws)
{
    if (!ws->npc || ws->ptimer)
        return;
    ws->pstate = P_REGISTERING;
    ws->ptimer = event_new(ws->base, -1, EV_PERSIST, on_ptimer, ws);
    struct timeval tv = {.tv_sec = ws->heartbeat_ms / 1000, .tv_usec = (ws->heartbeat_ms % 1000) * 1000};
    event_add(ws->ptimer, &tv);
    event_active(ws->ptimer, EV_TIMEOUT, 0); /* register now */
}

void worker_service_free(worker_service_t *ws)
{
    if (!ws)
        return;
    if (ws->ptimer)
        event_free(ws->ptimer);
    for (int i = 0; i < ws->npc; i++)
        rpc_client_free(ws->pcs[i]); /* pending callbacks see Cancelled and return */
    free(ws->pcs);
    destroy_all(ws, false);
    if (ws->srv)
        rpc_server_free(ws->srv);
    while (ws->conns) {
        wconn_t *c = ws->conns;
        ws->conns = c->next;
        free(c);
    }
    free(ws->address);
    free(ws);
}
