/* backend_local.c - the embedded backend: assignment and worker in this
 * process (see backend.h).  A thin adapter: leases carry the env_t. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "common/util.h"
#include "frontend/backend.h"

typedef struct pending {
    struct local_backend *lb;
    backend_acquired_fn acquired;
    backend_done_fn done;
    void *arg;
    struct pending *next, *prev;
} pending_t;

typedef struct local_backend {
    backend_t base;
    assignment_t *assignment;
    placement_t *placement;
    pending_t *pending; /* callbacks not yet run: freed at shutdown, when
                           environments are destroyed without callbacks */
} local_backend_t;

static pending_t *pending_new(local_backend_t *lb, void *arg)
{
    pending_t *p = xcalloc(1, sizeof *p);
    p->lb = lb;
    p->arg = arg;
    p->next = lb->pending;
    if (lb->pending)
        lb->pending->prev = p;
    lb->pending = p;
    return p;
}

/* Unlinks and frees p, returning a copy of it. */
static pending_t pending_take(pending_t *p)
{
    pending_t copy = *p;
    if (p->prev)
        p->prev->next = p->next;
    else
        p->lb->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    free(p);
    return copy;
}

static void on_acquired(const acquire_result_t *r, void *arg)
{
    pending_t p = pending_take(arg);
    backend_lease_t lease = {.env = r->env};
    if (r->env)
        snprintf(lease.env_id, sizeof lease.env_id, "%s", env_id(r->env));
    p.acquired(r, r->status == ACQUIRE_OK ? &lease : NULL, p.arg);
}

static void *local_acquire(backend_t *b, const fn_config_t *cfg, int total_reserved,
                           backend_acquired_fn cb, void *arg)
{
    local_backend_t *lb = (local_backend_t *)b;
    pending_t *p = pending_new(lb, arg);
    p->acquired = cb;
    return assignment_acquire(lb->assignment, cfg, total_reserved, on_acquired, p);
}

static void local_cancel(backend_t *b, void *handle)
{
    local_backend_t *lb = (local_backend_t *)b;
    pending_take(assignment_cancel(lb->assignment, handle));
}

static void on_done(env_t *env, const invoke_result_t *r, void *arg)
{
    pending_t p = pending_take(arg);
    p.done(r, env_state(env) == ENV_DEAD ? ENV_FATE_DEAD : ENV_FATE_KEPT, p.arg);
}

static void local_invoke(backend_t *b, const backend_lease_t *lease, const fn_config_t *cfg,
                         const invoke_event_t *ev, backend_done_fn done, void *arg)
{
    pending_t *p = pending_new((local_backend_t *)b, arg);
    p->done = done;
    env_invoke(lease->env, ev, on_done, p);
}

static void local_release(backend_t *b, const backend_lease_t *lease, env_fate_t fate)
{
    local_backend_t *lb = (local_backend_t *)b;
    assignment_release(lb->assignment, lease->env);
}

static bool still_current(const fn_config_t *cfg, void *arg)
{
    store_t *store = arg;
    fn_config_t *now = NULL;
    if (store_resolve(store, cfg->name, cfg->version, &now, NULL) < 0)
        return false;
    bool same = !strcmp(now->config_key, cfg->config_key);
    fn_config_free(now);
    return same;
}

static void local_function_changed(backend_t *b, const char *name, store_t *store)
{
    local_backend_t *lb = (local_backend_t *)b;
    assignment_function_changed(lb->assignment, name, still_current, store);
}

typedef struct local_snap {
    backend_snapshot_fn cb;
    void *arg;
    char *message;
} local_snap_t;

static void local_snap_done(bool ok, const char *message, void *arg)
{
    local_snap_t *ls = arg;
    ls->cb(ok, message, ls->arg);
    free(ls->message);
    free(ls);
}

static void local_snap_failed(evutil_socket_t fd, short what, void *arg)
{
    local_snap_t *ls = arg;
    local_snap_done(false, ls->message, ls);
}

static void local_snapshot(backend_t *b, const fn_config_t *cfg, const char *path,
                           backend_snapshot_fn cb, void *arg)
{
    local_backend_t *lb = (local_backend_t *)b;
    local_snap_t *ls = xcalloc(1, sizeof *ls);
    ls->cb = cb;
    ls->arg = arg;
    worker_t *w = placement_pick(lb->placement, cfg->memory_mb);
    err_t err = {0};
    if (!w)
        err_set(&err, ENOSPC, "no worker has %d MB free", cfg->memory_mb);
    else if (worker_snapshot_create(w, cfg, path, local_snap_done, ls, &err) == 0)
        return;
    ls->message = xstrdup(err.msg);
    worker_t *any = placement_worker(lb->placement, 0);
    event_base_once(worker_event_base(any), -1, EV_TIMEOUT, local_snap_failed, ls, NULL);
}

static void local_status(backend_t *b, json_t *status)
{
    local_backend_t *lb = (local_backend_t *)b;
    json_t *workers = json_array();
    for (int i = 0; i < placement_count(lb->placement); i++)
        json_array_append_new(workers, worker_status(placement_worker(lb->placement, i)));
    json_object_set_new(status, "assignment", assignment_status(lb->assignment));
    json_object_set_new(status, "workers", workers);
}

static void local_free(backend_t *b)
{
    local_backend_t *lb = (local_backend_t *)b;
    while (lb->pending)
        pending_take(lb->pending);
    free(b);
}

static const backend_ops_t local_ops = {
    .acquire = local_acquire,
    .cancel = local_cancel,
    .invoke = local_invoke,
    .release = local_release,
    .function_changed = local_function_changed,
    .snapshot = local_snapshot,
    .status = local_status,
    .free = local_free,
};

backend_t *backend_local_new(assignment_t *assignment, placement_t *placement)
{
    local_backend_t *lb = xcalloc(1, sizeof *lb);
    lb->base.ops = &local_ops;
    lb->assignment = assignment;
    lb->placement = placement;
    return &lb->base;
}
