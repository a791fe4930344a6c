/* assignment.c - see assignment.h.
 *
 * The table is a doubly linked list of slots, one per environment, most
 * recently released first, so a warm start reuses the environment that ran
 * last (its caches are hottest) and the least recently used ones age out
 * through keep-alive.  Per-function in-flight counts live in a short list.
 *
 * Slot states: STARTING (being created for a waiting acquire, or for no one
 * after a cancel) -> BUSY (handed out) -> IDLE (released, keep-alive timer
 * armed) -> BUSY ... ; a slot leaves the table when its environment dies or
 * is retired. */
#include "assignment/assignment.h"
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/util.h"

enum slot_state { SLOT_STARTING, SLOT_IDLE, SLOT_BUSY };

typedef struct slot {
    assignment_t *a;
    env_t *env;
    char *key;
    char *fn;
    enum slot_state state;
    bool stale;              /* retire when released */
    bool unreserved;         /* the holder counts against the unreserved pool */
    struct event *keep_alive;
    acquire_t *waiter;       /* the acquire a STARTING env is for (or NULL) */
    struct slot *next, *prev;
} slot_t;

struct acquire {
    assignment_t *a;
    acquire_fn cb;
    void *arg;
    char *fn;
    bool unreserved;
    bool counted;
    bool cancelled;
    slot_t *slot;            /* warm: the slot handed out; cold: the slot starting */
    acquire_result_t result; /* for deferred delivery */
    struct event *defer;
};

typedef struct fn_count {
    char *name;
    int n;
    struct fn_count *next;
} fn_count_t;

struct assignment {
    struct event_base *base;
    placement_t *placement;
    assignment_config_t cfg;
    slot_t *slots;
    int n_slots;
    fn_count_t *counts;
    int in_flight;
    int unreserved_in_flight;
};

assignment_t *assignment_new(struct event_base *base, placement_t *placement,
                             const assignment_config_t *cfg)
{
    assignment_t *a = xcalloc(1, sizeof *a);
    a->base = base;
    a->placement = placement;
    a->cfg = *cfg;
    return a;
}

static fn_count_t *count_of(assignment_t *a, const char *name, bool create)
{
    for (fn_count_t *c = a->counts; c; c = c->next)
        if (!strcmp(c->name, name))
            return c;
    if (!create)
        return NULL;
    fn_count_t *c = xcalloc(1, sizeof *c);
    c->name = xstrdup(name);
    c->next = a->counts;
    a->counts = c;
    return c;
}

static void count_add(assignment_t *a, const char *name, bool unreserved, int delta)
{
    fn_count_t *c = count_of(a, name, true);
    c->n += delta;
    a->in_flight += delta;
    if (unreserved)
        a->unreserved_in_flight += delta;
    if (c->n == 0) { /* drop zero entries so the list stays short */
        fn_count_t **pp = &a->counts;
        while (*pp != c)
            pp = &(*pp)->next;
        *pp = c->next;
        free(c->name);
        free(c);
    }
}

const char *assignment_throttle_reason(int reserved_concurrency, int fn_in_flight,
                                       int unreserved_in_flight, int account_concurrency,
                                       int total_reserved)
{
    /* Reserved functions have their own pool, the rest share what the
     * account has not reserved. */
    if (reserved_concurrency >= 0)
        return fn_in_flight >= reserved_concurrency
                   ? "ReservedFunctionConcurrentInvocationLimitExceeded" : NULL;
    return unreserved_in_flight >= account_concurrency - total_reserved
               ? "ConcurrentInvocationLimitExceeded" : NULL;
}

/* ------------------------------------------------------------ slots */

static void slot_unlink(slot_t *s)
{
    assignment_t *a = s->a;
    if (s->prev)
        s->prev->next = s->next;
    else if (a->slots == s)
        a->slots = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->next = s->prev = NULL;
}

static void slot_push_front(slot_t *s)
{
    assignment_t *a = s->a;
    s->prev = NULL;
    s->next = a->slots;
    if (a->slots)
        a->slots->prev = s;
    a->slots = s;
}

static void slot_free(slot_t *s)
{
    slot_unlink(s);
    s->a->n_slots--;
    if (s->keep_alive)
        event_free(s->keep_alive);
    free(s->key);
    free(s->fn);
    free(s);
}

static void on_keep_alive(evutil_socket_t fd, short what, void *arg)
{
    slot_t *s = arg;
    if (s->state != SLOT_IDLE)
        return;
    log_debug("assignment", "env %s of %s idle past keep-alive: destroyed", env_id(s->env), s->fn);
    env_destroy(s->env);
    slot_free(s);
}

static void slot_make_idle(slot_t *s)
{
    s->state = SLOT_IDLE;
    slot_unlink(s);
    slot_push_front(s);
    struct timeval tv = {.tv_sec = s->a->cfg.keep_alive_s};
    evtimer_add(s->keep_alive, &tv);
}

/* --------------------------------------------------------- callbacks */

static void acquire_free(acquire_t *acq)
{
    if (acq->defer)
        event_free(acq->defer);
    free(acq->fn);
    free(acq);
}

static void deliver_deferred(evutil_socket_t fd, short what, void *arg)
{
    acquire_t *acq = arg;
    assignment_t *a = acq->a;
    if (acq->cancelled) {
        if (acq->result.status == ACQUIRE_OK && acq->slot) {
            /* Handed out but nobody took it: back to idle. */
            count_add(a, acq->fn, acq->unreserved, -1);
            slot_make_idle(acq->slot);
        }
        acquire_free(acq);
        return;
    }
    acquire_result_t r = acq->result;
    acquire_fn cb = acq->cb;
    void *cbarg = acq->arg;
    acquire_free(acq);
    cb(&r, cbarg);
}

static void defer(acquire_t *acq, const acquire_result_t *r)
{
    acq->result = *r;
    acq->defer = event_new(acq->a->base, -1, 0, deliver_deferred, acq);
    event_active(acq->defer, 0, 0);
}

static void on_env_ready(env_t *env, bool ok, const invoke_result_t *result, void *arg)
{
    slot_t *s = arg;
    assignment_t *a = s->a;
    acquire_t *acq = s->waiter;
    s->waiter = NULL;
    if (!ok) {
        if (acq) {
            count_add(a, acq->fn, acq->unreserved, -1);
            acquire_result_t r = {.status = ACQUIRE_INIT_FAILED, .cold = true, .init = result};
            acquire_fn cb = acq->cb;
            void *cbarg = acq->arg;
            acquire_free(acq);
            slot_free(s);
            cb(&r, cbarg);
        } else {
            slot_free(s);
        }
        return;
    }
    if (!acq) { /* its requester left: keep it warm for the next one */
        slot_make_idle(s);
        return;
    }
    s->state = SLOT_BUSY;
    s->unreserved = acq->unreserved;
    acquire_result_t r = {.status = ACQUIRE_OK, .env = env, .cold = true};
    acquire_fn cb = acq->cb;
    void *cbarg = acq->arg;
    acquire_free(acq);
    cb(&r, cbarg);
}

static void on_env_dead(env_t *env, void *arg)
{
    slot_t *s = arg;
    if (s->state == SLOT_BUSY) /* died between hand-out and invoke */
        count_add(s->a, s->fn, s->unreserved, -1);
    slot_free(s);
}

/* ------------------------------------------------------------- API */

acquire_t *assignment_acquire(assignment_t *a, const fn_config_t *cfg, int total_reserved,
                              acquire_fn cb, void *arg)
{
    acquire_t *acq = xcalloc(1, sizeof *acq);
    acq->a = a;
    acq->cb = cb;
    acq->arg = arg;
    acq->fn = xstrdup(cfg->name);
    acq->unreserved = cfg->reserved_concurrency < 0;

    /* Concurrency limits: reserved functions have their own pool, the rest
     * share what the account has not reserved. */
    fn_count_t *c = count_of(a, cfg->name, false);
    const char *reason = assignment_throttle_reason(cfg->reserved_concurrency, c ? c->n : 0,
                                                    a->unreserved_in_flight,
                                                    a->cfg.account_concurrency, total_reserved);
    if (reason) {
        acquire_result_t r = {.status = ACQUIRE_THROTTLED, .reason = reason,
                              .message = "Rate Exceeded."};
        defer(acq, &r);
        return acq;
    }
    count_add(a, cfg->name, acq->unreserved, +1);

    /* Warm start: the most recently used idle environment of this config. */
    for (slot_t *s = a->slots; s; s = s->next) {
        if (s->state == SLOT_IDLE && !s->stale && !strcmp(s->key, cfg->config_key) &&
            env_state(s->env) == ENV_IDLE) {
            evtimer_del(s->keep_alive);
            s->state = SLOT_BUSY;
            s->unreserved = acq->unreserved;
            acq->slot = s;
            acquire_result_t r = {.status = ACQUIRE_OK, .env = s->env};
            defer(acq, &r);
            return acq;
        }
    }

    /* Cold start. */
    worker_t *w = placement_pick(a->placement, cfg->memory_mb);
    if (!w) {
        count_add(a, cfg->name, acq->unreserved, -1);
        acquire_result_t r = {.status = ACQUIRE_NO_CAPACITY,
                              .reason = "ConcurrentInvocationLimitExceeded",
                              .message = "Rate Exceeded. No worker has room for another environment."};
        defer(acq, &r);
        return acq;
    }
    slot_t *s = xcalloc(1, sizeof *s);
    s->a = a;
    s->key = xstrdup(cfg->config_key);
    s->fn = xstrdup(cfg->name);
    s->state = SLOT_STARTING;
    s->waiter = acq;
    s->keep_alive = evtimer_new(a->base, on_keep_alive, s);
    err_t err = {0};
    s->env = worker_env_create(w, cfg, on_env_ready, on_env_dead, s, &err);
    if (!s->env) {
        event_free(s->keep_alive);
        free(s->key);
        free(s->fn);
        free(s);
        count_add(a, cfg->name, acq->unreserved, -1);
        static __thread char msg[sizeof err.msg];
        snprintf(msg, sizeof msg, "%s", err.msg);
        acquire_result_t r = {.status = ACQUIRE_FAILED, .message = msg};
        defer(acq, &r);
        return acq;
    }
    slot_push_front(s);
    a->n_slots++;
    acq->slot = s;
    return acq;
}

void *assignment_cancel(assignment_t *a, acquire_t *acq)
{
    void *arg = acq->arg;
    if (acq->defer) { /* a result is queued: drop it when it fires */
        acq->cancelled = true;
        return arg;
    }
    /* Waiting for a cold start. */
    if (acq->slot)
        acq->slot->waiter = NULL;
    count_add(a, acq->fn, acq->unreserved, -1);
    acquire_free(acq);
    return arg;
}

void assignment_release(assignment_t *a, env_t *env)
{
    slot_t *s = env_owner(env);
    count_add(a, s->fn, s->unreserved, -1);
    if (env_state(env) == ENV_DEAD) {
        slot_free(s);
        return;
    }
    if (s->stale) {
        env_destroy(env);
        slot_free(s);
        return;
    }
    slot_make_idle(s);
}

void assignment_function_changed(assignment_t *a, const char *name,
                                 bool (*still_current)(const fn_config_t *cfg, void *arg), void *arg)
{
    slot_t *next;
    for (slot_t *s = a->slots; s; s = next) {
        next = s->next;
        if (strcmp(s->fn, name) != 0 || still_current(env_config(s->env), arg))
            continue;
        if (s->state == SLOT_IDLE) {
            env_destroy(s->env);
            slot_free(s);
        } else {
            s->stale = true;
        }
    }
}

void assignment_free(assignment_t *a)
{
    if (!a)
        return;
    while (a->slots) {
        slot_t *s = a->slots;
        if (s->waiter)
            acquire_free(s->waiter);
        env_destroy(s->env);
        slot_free(s);
    }
    while (a->counts) {
        fn_count_t *c = a->counts;
        a->counts = c->next;
        free(c->name);
        free(c);
    }
    free(a);
}

int assignment_in_flight(const assignment_t *a) { return a->in_flight; }

int assignment_in_flight_of(const assignment_t *a, const char *name)
{
    fn_count_t *c = count_of((assignment_t *)a, name, false);
    return c ? c->n : 0;
}

json_t *assignment_status(const assignment_t *a)
{
    json_t *fns = json_object();
    for (fn_count_t *c = a->counts; c; c = c->next)
        json_object_set_new(fns, c->name, json_integer(c->n));
    int idle = 0, busy = 0, starting = 0;
    for (slot_t *s = a->slots; s; s = s->next) {
        idle += s->state == SLOT_IDLE;
        busy += s->state == SLOT_BUSY;
        starting += s->state == SLOT_STARTING;
    }
    return json_pack("{s:i,s:i,s:i,s:i,s:{s:i,s:i,s:i},s:o}", "in_flight", a->in_flight,
                     "unreserved_in_flight", a->unreserved_in_flight, "account_limit",
                     a->cfg.account_concurrency, "environments", a->n_slots, "states", "idle", idle,
                     "busy", busy, "initializing", starting, "in_flight_by_function", fns);
}
