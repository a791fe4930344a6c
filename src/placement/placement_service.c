/* placement_service.c - see placement_service.h.
 *
 * How: rpc_server handler dispatches on the method name; each method
 * unpacks its params with json_unpack (strings and integers type-checked;
 * a mismatch is InvalidParams before the fleet is touched), calls fleet.c,
 * then process_events() drains the fleet's events.  A persistent libevent
 * timer runs tick(): fleet_tick, process_events, fleet_scale_decision,
 * provider->on_scale, process_events again (a provider may drain).
 * Connections are remembered in a doubly linked list (node in the
 * connection's user pointer) the first time they send a request or a
 * notification, and dropped in the server's close callback; broadcasts go
 * to that list.  `worker.heartbeat` is also accepted as a notification
 * (the same effect, no reply).
 *
 * Environment counts (zone spread, committed memory) are derived, not
 * told: `placement.pick` with an `env_id` reserves room for that
 * environment on the worker it picked (fleet_env_reserve), and every
 * heartbeat's `envs` list replaces what placement counted on that worker
 * and confirms the reservations it names.  `placement.env_removed
 * {worker_id, env_id[, function, memory_mb]}` says an environment left
 * (never created, destroyed or dead): its reservation is dropped, or it
 * stops counting at once instead of at the next heartbeat (fleet_env_gone).
 * The explicit `placement.env_added/env_removed {worker_id,
 * function, memory_mb}` pair still works (fleet_env_added/removed). 
 *
 * Invariants: see placement_service.h; in addition every list node belongs
 * to exactly one live connection, and placement_service_free frees the
 * nodes itself (rpc_server_free runs no close callbacks). */
#include "placement/placement_service.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"

#define LOG_ROLE "placement"

typedef struct conn_node {
    rpc_conn_t *conn;
    struct conn_node *prev, *next;
} conn_node_t;

struct placement_service {
    struct event_base *base;
    fleet_t *fleet;
    rpc_server_t *srv;
    struct event *timer;
    int tick_ms;
    placement_provider_t *provider;
    conn_node_t *conns;
};

/* ------------------------------------------------------------ connections */

static void remember_conn(placement_service_t *ps, rpc_conn_t *conn)
{
    if (!conn || rpc_conn_get_data(conn))
        return;
    conn_node_t *n = xcalloc(1, sizeof *n);
    n->conn = conn;
    n->next = ps->conns;
    if (ps->conns)
        ps->conns->prev = n;
    ps->conns = n;
    rpc_conn_set_data(conn, n);
}

static void on_close(rpc_conn_t *conn, void *arg)
{
    placement_service_t *ps = arg;
    conn_node_t *n = rpc_conn_get_data(conn);
    if (!n)
        return;
    if (n->prev)
        n->prev->next = n->next;
    else
        ps->conns = n->next;
    if (n->next)
        n->next->prev = n->prev;
    rpc_conn_set_data(conn, NULL);
    free(n);
}

static void broadcast(placement_service_t *ps, const char *method, json_t *params)
{
    int sent = 0;
    for (conn_node_t *n = ps->conns; n; n = n->next) {
        err_t err = {0};
        if (rpc_conn_notify(n->conn, method, params, NULL, 0, &err) == 0)
            sent++;
        else
            log_debug(LOG_ROLE, "notify %s to %s: %s", method, rpc_conn_peer(n->conn), err.msg);
    }
    log_debug(LOG_ROLE, "%s sent to %d connection(s)", method, sent);
}

/* ----------------------------------------------------------------- events */

static void process_events(placement_service_t *ps)
{
    size_t n;
    const fleet_event_t *ev = fleet_events(ps->fleet, &n);
    for (size_t i = 0; i < n; i++) {
        const fleet_event_t *e = &ev[i];
        enum log_level lvl = e->type == FLEET_EV_LOST ? LOG_WARN : LOG_INFO;
        if (e->type == FLEET_EV_REGISTERED)
            log_msg(lvl, LOG_ROLE, "worker %s (%s, zone %s): registered", e->worker_id, e->address,
                    e->zone);
        else
            log_msg(lvl, LOG_ROLE, "worker %s (%s, zone %s): %s, was %s (%s), %d environment(s)",
                    e->worker_id, e->address, e->zone, fleet_event_name(e->type),
                    fleet_state_name(e->from), e->reason, e->environments);
        if (e->type == FLEET_EV_LOST) {
            json_t *p = json_pack("{s:s,s:s}", "worker_id", e->worker_id, "address", e->address);
            broadcast(ps, "worker.lost", p);
            json_decref(p);
        } else if (e->type == FLEET_EV_RETIRED) {
            json_t *p = json_pack("{s:s}", "worker_id", e->worker_id);
            broadcast(ps, "worker.retired", p);
            json_decref(p);
        }
        if (ps->provider)
            ps->provider->on_event(ps->provider, ps->fleet, e);
    }
    fleet_events_clear(ps->fleet);
}

void placement_service_tick(placement_service_t *ps)
{
    uint64_t now = now_wall_ms();
    fleet_tick(ps->fleet, now);
    process_events(ps);
    fleet_scale_t s;
    fleet_scale_decision(ps->fleet, now, &s);
    if (ps->provider) {
        ps->provider->on_scale(ps->provider, ps->fleet, &s, now);
        process_events(ps);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg) { placement_service_tick(arg); }

/* ---------------------------------------------------------------- methods */

#define INVALID(call, ...) rpc_reply_error(call, "InvalidParams", __VA_ARGS__)

static void reply_empty(rpc_call_t *call)
{
    json_t *r = json_object();
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

/* Maps a fleet error to a reply code. */
static void reply_fleet_error(rpc_call_t *call, const err_t *err)
{
    const char *code = err->code == ENOENT ? "UnknownWorker"
                     : err->code == ESTALE ? "WorkerGone"
                                           : "InvalidParams";
    rpc_reply_error(call, code, "%s", err->msg);
}

static void m_register(placement_service_t *ps, rpc_call_t *call, json_t *params)
{
    const char *id, *address, *zone;
    json_int_t memory_mb, cpus = 1;
    json_error_t je;
    if (json_unpack_ex(params, &je, 0, "{s:s,s:s,s:s,s:I,s?:I}", "worker_id", &id, "address", &address,
                       "zone", &zone, "memory_mb", &memory_mb, "cpus", &cpus) < 0)
        return INVALID(call, "worker.register wants {worker_id, address, zone, memory_mb, cpus}: %s",
                       je.text);
    if (memory_mb < 1 || memory_mb > INT32_MAX || cpus < 1 || cpus > 65536)
        return INVALID(call, "worker.register: memory_mb and cpus must be >= 1");
    fleet_registration_t reg = {.id = id, .address = address, .zone = zone,
                                .memory_mb = (int)memory_mb, .cpus = (int)cpus,
                                .isolation = json_string_value(json_object_get(params, "isolation")),
                                .accelerator = json_string_value(json_object_get(params, "accelerator"))};
    uint64_t expiry = 0;
    err_t err = {0};
    if (fleet_register(ps->fleet, &reg, now_wall_ms(), &expiry, &err) < 0)
        return reply_fleet_error(call, &err);
    process_events(ps);
    json_t *r = json_pack("{s:I}", "lease_expiry_ms", (json_int_t)expiry);
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

/* Applies a heartbeat; returns the state (>= 0) or -1 with err (and the
 * reply code in *code). */
static int do_heartbeat(placement_service_t *ps, json_t *params, const char **code, err_t *err)
{
    const char *id;
    json_int_t mem = -1, envs = -1;
    json_t *list = NULL;
    json_error_t je;
    *code = "InvalidParams";
    if (json_unpack_ex(params, &je, 0, "{s:s,s?:I,s?:I,s?:o}", "worker_id", &id, "memory_used_mb",
                       &mem, "environments", &envs, "envs", &list) < 0)
        return err_set(err, EINVAL,
                       "worker.heartbeat wants {worker_id, memory_used_mb, environments, envs}: %s",
                       je.text);
    if (mem < -1 || envs < -1 || mem > INT32_MAX || envs > INT32_MAX)
        return err_set(err, EINVAL, "worker.heartbeat: negative or huge load");
    if (list && !json_is_array(list))
        return err_set(err, EINVAL, "worker.heartbeat: envs must be an array");
    size_t n = list ? json_array_size(list) : 0;
    if (n > INT32_MAX / 2)
        return err_set(err, EINVAL, "worker.heartbeat: too many environments");
    fleet_env_report_t *reps = xcalloc(n + 1, sizeof *reps);
    for (size_t i = 0; i < n; i++) {
        json_int_t emem = 0;
        if (json_unpack_ex(json_array_get(list, i), &je, 0, "{s:s,s:s,s?:I}", "env_id",
                           &reps[i].env_id, "function", &reps[i].function, "memory_mb", &emem) < 0 ||
            emem < 0 || emem > INT32_MAX) {
            free(reps);
            return err_set(err, EINVAL,
                           "worker.heartbeat: envs[%zu] wants {env_id, function, memory_mb}", i);
        }
        reps[i].memory_mb = (int)emem;
    }
    fleet_load_t load = {.memory_used_mb = mem < 0 ? 0 : (int)mem,
                         .environments = envs < 0 ? 0 : (int)envs,
                         .envs_reported = list != NULL, .envs = reps, .n_envs = (int)n};
    bool have_load = mem >= 0 || envs >= 0 || list;
    int st = fleet_heartbeat(ps->fleet, id, now_wall_ms(), have_load ? &load : NULL, err);
    free(reps);
    if (st < 0)
        *code = err->code == ENOENT ? "UnknownWorker" : "InvalidParams";
    return st;
}

static void m_heartbeat(placement_service_t *ps, rpc_call_t *call, json_t *params)
{
    err_t err = {0};
    const char *code;
    int st = do_heartbeat(ps, params, &code, &err);
    if (st < 0)
        return rpc_reply_error(call, code, "%s", err.msg);
    json_t *r = json_pack("{s:s}", "state", fleet_state_name((enum fleet_state)st));
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

static void m_pick(placement_service_t *ps, rpc_call_t *call, json_t *params)
{
    const char *function, *env_id = NULL;
    json_int_t memory_mb;
    json_t *exclude = NULL;
    json_error_t je;
    if (json_unpack_ex(params, &je, 0, "{s:s,s:I,s?:o,s?:s}", "function", &function, "memory_mb",
                       &memory_mb, "exclude", &exclude, "env_id", &env_id) < 0)
        return INVALID(call, "placement.pick wants {function, memory_mb, [exclude], [env_id]}: %s",
                       je.text);
    if (!*function || memory_mb < 1 || memory_mb > INT32_MAX)
        return INVALID(call, "placement.pick: function must be non-empty, memory_mb >= 1");
    if (env_id && (!*env_id || strlen(env_id) >= FLEET_ENV_ID_MAX))
        return INVALID(call, "placement.pick: env_id must be 1..%d characters", FLEET_ENV_ID_MAX - 1);
    if (exclude && !json_is_array(exclude) && !json_is_null(exclude))
        return INVALID(call, "placement.pick: exclude must be an array of worker ids");
    size_t nx = exclude && json_is_array(exclude) ? json_array_size(exclude) : 0;
    const char **ex = xcalloc(nx + 1, sizeof *ex);
    for (size_t i = 0; i < nx; i++) {
        ex[i] = json_string_value(json_array_get(exclude, i));
        if (!ex[i]) {
            free(ex);
            return INVALID(call, "placement.pick: exclude must be an array of worker ids");
        }
    }
    uint64_t now = now_wall_ms();
    const fleet_worker_t *w = fleet_pick(ps->fleet, function, (int)memory_mb, now,
                                         (const char *const *)ex);
    free(ex);
    if (!w)
        return rpc_reply_error(call, "NoCapacity", "no active worker has %lld MB free for %s",
                               (long long)memory_mb, function);
    err_t err = {0};
    if (env_id && fleet_env_reserve(ps->fleet, fleet_worker_id(w), env_id, function, (int)memory_mb,
                                    now, &err) < 0)
        log_warn(LOG_ROLE, "reserving %s on %s: %s", env_id, fleet_worker_id(w), err.msg);
    json_t *r = json_pack("{s:s,s:s,s:s}", "worker_id", fleet_worker_id(w), "address",
                          fleet_worker_address(w), "zone", fleet_worker_zone(w));
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

static void m_env(placement_service_t *ps, rpc_call_t *call, json_t *params, bool added)
{
    const char *worker_id, *function;
    if (!added && json_is_string(json_object_get(params, "env_id"))) {
        /* {worker_id, env_id}: the environment a pick reserved room for
         * was not created (or is already gone) */
        const char *env_id = json_string_value(json_object_get(params, "env_id"));
        worker_id = json_string_value(json_object_get(params, "worker_id"));
        if (!worker_id)
            return INVALID(call, "placement.env_removed wants {worker_id, env_id}");
        const char *fn = json_string_value(json_object_get(params, "function"));
        json_int_t mem = json_integer_value(json_object_get(params, "memory_mb"));
        err_t err = {0};
        int rc = fleet_env_gone(ps->fleet, worker_id, env_id, fn,
                                mem > 0 && mem <= INT32_MAX ? (int)mem : 0, now_wall_ms(), &err);
        if (rc < 0)
            return reply_fleet_error(call, &err);
        json_t *r = json_pack("{s:b}", "reserved", rc == 1);
        rpc_reply(call, r, NULL, 0);
        json_decref(r);
        return;
    }
    json_int_t memory_mb;
    json_error_t je;
    if (json_unpack_ex(params, &je, 0, "{s:s,s:s,s:I}", "worker_id", &worker_id, "function",
                       &function, "memory_mb", &memory_mb) < 0)
        return INVALID(call, "placement.env_%s wants {worker_id, function, memory_mb}: %s",
                       added ? "added" : "removed", je.text);
    if (memory_mb < 1 || memory_mb > INT32_MAX)
        return INVALID(call, "memory_mb must be >= 1");
    err_t err = {0};
    int rc = added ? fleet_env_added(ps->fleet, worker_id, function, (int)memory_mb, &err)
                   : fleet_env_removed(ps->fleet, worker_id, function, (int)memory_mb, &err);
    if (rc < 0)
        return reply_fleet_error(call, &err);
    reply_empty(call);
}

static void m_workers(placement_service_t *ps, rpc_call_t *call)
{
    json_t *arr = json_array();
    for (int i = 0; i < fleet_count(ps->fleet); i++) {
        const fleet_worker_t *w = fleet_worker_at(ps->fleet, i);
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:s,s:I}", "id", fleet_worker_id(w), "address",
                           fleet_worker_address(w), "zone", fleet_worker_zone(w), "state",
                           fleet_state_name(fleet_worker_state(w)), "lease_expiry_ms",
                           (json_int_t)fleet_worker_lease_expiry(w)));
    }
    json_t *r = json_pack("{s:o}", "workers", arr);
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

static void handler(rpc_call_t *call, const char *method, json_t *params, const void *body,
                    size_t len, void *arg)
{
    placement_service_t *ps = arg;
    remember_conn(ps, rpc_call_conn(call));
    if (!strcmp(method, "worker.register"))
        m_register(ps, call, params);
    else if (!strcmp(method, "worker.heartbeat"))
        m_heartbeat(ps, call, params);
    else if (!strcmp(method, "placement.pick"))
        m_pick(ps, call, params);
    else if (!strcmp(method, "placement.env_added"))
        m_env(ps, call, params, true);
    else if (!strcmp(method, "placement.env_removed"))
        m_env(ps, call, params, false);
    else if (!strcmp(method, "placement.workers"))
        m_workers(ps, call);
    else if (!strcmp(method, "placement.status")) {
        json_t *r = fleet_status(ps->fleet, now_wall_ms());
        rpc_reply(call, r, NULL, 0);
        json_decref(r);
    } else
        rpc_reply_error(call, "UnknownMethod", "placement has no method %s", method);
}

static void on_notify(rpc_conn_t *conn, const char *method, json_t *params, const void *body,
                      size_t len, void *arg)
{
    placement_service_t *ps = arg;
    remember_conn(ps, conn);
    if (strcmp(method, "worker.heartbeat") != 0) {
        log_debug(LOG_ROLE, "ignoring notification %s from %s", method, rpc_conn_peer(conn));
        return;
    }
    err_t err = {0};
    const char *code;
    if (do_heartbeat(ps, params, &code, &err) < 0)
        log_warn(LOG_ROLE, "heartbeat notification from %s: %s", rpc_conn_peer(conn), err.msg);
}

/* ------------------------------------------------------------- lifecycle */

placement_service_t *placement_service_new(struct event_base *base,
                                           const placement_service_config_t *cfg, err_t *err)
{
    fleet_config_t fc;
    if (cfg)
        fc = cfg->fleet;
    else
        fleet_config_default(&fc);
    fleet_t *f = fleet_new(&fc, err);
    if (!f)
        return NULL;
    placement_service_t *ps = xcalloc(1, sizeof *ps);
    ps->base = base;
    ps->fleet = f;
    ps->tick_ms = cfg && cfg->tick_ms > 0 ? cfg->tick_ms : 250;
    ps->srv = rpc_server_new(base, handler, ps);
    rpc_server_set_notify_cb(ps->srv, on_notify, ps);
    rpc_server_set_close_cb(ps->srv, on_close, ps);
    ps->timer = event_new(base, -1, EV_PERSIST, on_timer, ps);
    struct timeval tv = {.tv_sec = ps->tick_ms / 1000, .tv_usec = (ps->tick_ms % 1000) * 1000};
    event_add(ps->timer, &tv);
    return ps;
}

int placement_service_listen(placement_service_t *ps, const char *addr, err_t *err)
{
    return rpc_server_listen(ps->srv, addr, err);
}

int placement_service_port(const placement_service_t *ps) { return rpc_server_port(ps->srv); }

void placement_service_set_provider(placement_service_t *ps, placement_provider_t *provider)
{
    ps->provider = provider;
}

fleet_t *placement_service_fleet(placement_service_t *ps) { return ps->fleet; }

void placement_service_free(placement_service_t *ps)
{
    if (!ps)
        return;
    event_free(ps->timer);
    rpc_server_free(ps->srv);
    while (ps->conns) {
        conn_node_t *n = ps->conns;
        ps->conns = n->next;
        free(n);
    }
    fleet_free(ps->fleet);
    free(ps);
}
