/* fleet.c - see fleet.h.
 *
 * How: an array of heap-allocated workers in registration order (pointers
 * stay valid until a worker is forgotten in fleet_tick); each worker keeps
 * two small arrays of {function, count, memory} - the environments added
 * explicitly (fleet_env_added/removed) and those its last heartbeat listed
 * - and an array of pending reservations {env_id, function, memory, at}
 * made by picks.  A function's count is max(added, reported) + reserved.
 * Every operation is a linear scan: fleets here are tens to hundreds of
 * workers, a worker tens of functions.  Picking first sums each zone's
 * environments of the function (one pass), then scans the candidates.
 *
 *   ACTIVE --> DRAINING --> RETIRED        ACTIVE/DRAINING --> LOST
 *   (any) --re-register--> ACTIVE
 *
 * Invariants kept here: a LOST/RETIRED worker has no added, reported or
 * reserved environments (n_fns == n_rep == n_res == 0, tracked_mb ==
 * reserved_mb == 0); tracked_mb equals the sum of its fns' memory and
 * reserved_mb that of its reservations; an env_id is reserved at most once
 * per worker; every state change goes through set_state(), which appends
 * the event. */
#include "placement/fleet.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common/util.h"

typedef struct fn_count {
    char *name;
    int count;
    int memory_mb;
} fn_count_t;

typedef struct reservation {
    char env_id[FLEET_ENV_ID_MAX];
    char *function;
    int memory_mb;
    uint64_t at;                        /* the pick's `now` */
} reservation_t;

typedef struct gone {
    char env_id[FLEET_ENV_ID_MAX];
    int memory_mb;
    uint64_t at;                        /* when fleet_env_gone heard of it */
} gone_t;

struct fleet_worker {
    char id[FLEET_ID_MAX];
    char address[FLEET_ADDR_MAX];
    char zone[FLEET_ZONE_MAX];
    char isolation[16], accelerator[16]; /* as registered (status only) */
    int memory_mb, cpus;
    enum fleet_state state;
    uint64_t lease_expiry, last_seen, state_since;
    int tracked_mb, tracked_envs;       /* from fleet_env_added/removed */
    int reported_mb, reported_envs;     /* from the last heartbeat */
    fn_count_t *fns;                    /* added, per function */
    int n_fns;
    fn_count_t *rep;                    /* listed by the last heartbeat that listed any */
    int n_rep;
    reservation_t *res;                 /* pending picks */
    int n_res, reserved_mb;
    gone_t *gone;                       /* removed, maybe still in a report in flight */
    int n_gone;
};

struct fleet {
    fleet_config_t cfg;
    fleet_worker_t **workers;
    int n;
    fleet_event_t *events;
    size_t n_events, cap_events;
    int target;                 /* desired ACTIVE workers */
    bool scaled_once;
    uint64_t last_scale_at;
    int unmet;                  /* fleet_pick misses since the last decision */
};

void fleet_config_default(fleet_config_t *cfg)
{
    *cfg = (fleet_config_t){
        .lease_ms = 14ULL * 3600 * 1000,
        .heartbeat_timeout_ms = 10 * 1000,
        .drain_before_ms = 30 * 60 * 1000,
        .forget_after_ms = 3600 * 1000,
        .scale_out_above = 0.80,
        .scale_in_below = 0.30,
        .min_workers = 1,
        .max_workers = 16,
        .scale_cooldown_ms = 60 * 1000,
    };
}

fleet_t *fleet_new(const fleet_config_t *cfg, err_t *err)
{
    fleet_config_t c;
    if (cfg)
        c = *cfg;
    else
        fleet_config_default(&c);
    if (c.lease_ms == 0 || c.heartbeat_timeout_ms == 0) {
        err_set(err, EINVAL, "fleet: lease_ms and heartbeat_timeout_ms must be > 0");
        return NULL;
    }
    if (c.drain_before_ms >= c.lease_ms) {
        err_set(err, EINVAL, "fleet: drain_before_ms must be < lease_ms");
        return NULL;
    }
    if (!(c.scale_in_below > 0 && c.scale_in_below < c.scale_out_above && c.scale_out_above <= 1)) {
        err_set(err, EINVAL, "fleet: watermarks must satisfy 0 < scale_in_below < scale_out_above <= 1");
        return NULL;
    }
    if (c.min_workers < 0 || c.max_workers < 1 || c.max_workers < c.min_workers) {
        err_set(err, EINVAL, "fleet: need 0 <= min_workers <= max_workers, max_workers >= 1");
        return NULL;
    }
    fleet_t *f = xcalloc(1, sizeof *f);
    f->cfg = c;
    f->target = c.min_workers;
    return f;
}

static void fns_clear(fn_count_t **fns, int *n)
{
    for (int i = 0; i < *n; i++)
        free((*fns)[i].name);
    free(*fns);
    *fns = NULL;
    *n = 0;
}

/* Forgets every environment of w: added, reported and reserved. */
static void worker_clear_envs(fleet_worker_t *w)
{
    fns_clear(&w->fns, &w->n_fns);
    w->tracked_mb = w->tracked_envs = 0;
    fns_clear(&w->rep, &w->n_rep);
    for (int i = 0; i < w->n_res; i++)
        free(w->res[i].function);
    free(w->res);
    w->res = NULL;
    w->n_res = w->reserved_mb = 0;
    free(w->gone);
    w->gone = NULL;
    w->n_gone = 0;
}

static void fw_free(fleet_worker_t *w)
{
    worker_clear_envs(w);
    free(w);
}

static fn_count_t *fn_in(fn_count_t *fns, int n, const char *function)
{
    for (int i = 0; i < n; i++)
        if (strcmp(fns[i].name, function) == 0)
            return &fns[i];
    return NULL;
}

static fn_count_t *find_fn(const fleet_worker_t *w, const char *function)
{
    return fn_in(w->fns, w->n_fns, function);
}

/* Adds one environment of `function` (memory_mb) to a {function, count,
 * memory} array. */
static fn_count_t *fn_add(fn_count_t **fns, int *n, const char *function, int memory_mb)
{
    fn_count_t *fc = fn_in(*fns, *n, function);
    if (!fc) {
        *fns = xrealloc(*fns, (size_t)(*n + 1) * sizeof **fns);
        fc = &(*fns)[(*n)++];
        *fc = (fn_count_t){.name = xstrdup(function)};
    }
    fc->count++;
    fc->memory_mb += memory_mb;
    return fc;
}

static int reserved_of(const fleet_worker_t *w, const char *function)
{
    int n = 0;
    for (int i = 0; i < w->n_res; i++)
        n += strcmp(w->res[i].function, function) == 0;
    return n;
}

static int fn_effective(const fleet_worker_t *w, const char *function)
{
    const fn_count_t *a = find_fn(w, function), *r = fn_in(w->rep, w->n_rep, function);
    int added = a ? a->count : 0, reported = r ? r->count : 0;
    return (added > reported ? added : reported) + reserved_of(w, function);
}

int fleet_worker_environments(const fleet_worker_t *w, const char *function)
{
    if (function)
        return fn_effective(w, function);
    /* every function added, reported or reserved, each counted once */
    int total = w->n_res;
    for (int i = 0; i < w->n_fns; i++) {
        const fn_count_t *r = fn_in(w->rep, w->n_rep, w->fns[i].name);
        total += r && r->count > w->fns[i].count ? r->count : w->fns[i].count;
    }
    for (int i = 0; i < w->n_rep; i++)
        if (!find_fn(w, w->rep[i].name))
            total += w->rep[i].count;
    return total;
}

static int gone_find(const fleet_worker_t *w, const char *env_id)
{
    for (int i = 0; i < w->n_gone; i++)
        if (strcmp(w->gone[i].env_id, env_id) == 0)
            return i;
    return -1;
}

static void res_drop(fleet_worker_t *w, int i)
{
    w->reserved_mb -= w->res[i].memory_mb;
    free(w->res[i].function);
    w->res[i] = w->res[--w->n_res];
}

static int res_find(const fleet_worker_t *w, const char *env_id)
{
    for (int i = 0; i < w->n_res; i++)
        if (strcmp(w->res[i].env_id, env_id) == 0)
            return i;
    return -1;
}

void fleet_free(fleet_t *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++)
        fw_free(f->workers[i]);
    free(f->workers);
    free(f->events);
    free(f);
}

const fleet_config_t *fleet_config(const fleet_t *f) { return &f->cfg; }

const char *fleet_state_name(enum fleet_state s)
{
    switch (s) {
    case FLEET_ACTIVE: return "active";
    case FLEET_DRAINING: return "draining";
    case FLEET_RETIRED: return "retired";
    case FLEET_LOST: return "lost";
    }
    return "unknown";
}

const char *fleet_event_name(enum fleet_event_type t)
{
    switch (t) {
    case FLEET_EV_REGISTERED: return "registered";
    case FLEET_EV_RESTARTED: return "restarted";
    case FLEET_EV_DRAINING: return "draining";
    case FLEET_EV_RETIRED: return "retired";
    case FLEET_EV_LOST: return "lost";
    }
    return "unknown";
}

static void emit(fleet_t *f, enum fleet_event_type type, const fleet_worker_t *w, enum fleet_state from,
                 int environments, uint64_t now, const char *reason)
{
    if (f->n_events == f->cap_events) {
        f->cap_events = f->cap_events ? 2 * f->cap_events : 16;
        f->events = xrealloc(f->events, f->cap_events * sizeof *f->events);
    }
    fleet_event_t *e = &f->events[f->n_events++];
    memset(e, 0, sizeof *e);
    e->type = type;
    memcpy(e->worker_id, w->id, sizeof e->worker_id);
    memcpy(e->zone, w->zone, sizeof e->zone);
    memcpy(e->address, w->address, sizeof e->address);
    e->from = from;
    e->environments = environments;
    e->at = now;
    e->reason = reason;
}

/* The one place states change.  Leaving for LOST/RETIRED drops the
 * environments placement tracked (the event reports how many). */
static void set_state(fleet_t *f, fleet_worker_t *w, enum fleet_state to, uint64_t now, const char *reason)
{
    enum fleet_state from = w->state;
    int envs = fleet_worker_environments(w, NULL);
    enum fleet_event_type type = to == FLEET_DRAINING ? FLEET_EV_DRAINING
                               : to == FLEET_RETIRED  ? FLEET_EV_RETIRED
                                                      : FLEET_EV_LOST;
    w->state = to;
    w->state_since = now;
    if (to == FLEET_LOST || to == FLEET_RETIRED) {
        worker_clear_envs(w);
        w->reported_mb = w->reported_envs = 0;
    }
    emit(f, type, w, from, envs, now, reason);
}

static fleet_worker_t *find(const fleet_t *f, const char *id)
{
    if (!id)
        return NULL;
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->workers[i]->id, id) == 0)
            return f->workers[i];
    return NULL;
}

static int check_str(const char *what, const char *s, size_t max, err_t *err)
{
    if (!s || !*s)
        return err_set(err, EINVAL, "fleet: registration needs a %s", what);
    if (strlen(s) >= max)
        return err_set(err, EINVAL, "fleet: %s longer than %zu characters", what, max - 1);
    return 0;
}

int fleet_register(fleet_t *f, const fleet_registration_t *reg, uint64_t now, uint64_t *lease_expiry,
                   err_t *err)
{
    if (!reg)
        return err_set(err, EINVAL, "fleet: no registration");
    if (check_str("id", reg->id, FLEET_ID_MAX, err) < 0 ||
        check_str("address", reg->address, FLEET_ADDR_MAX, err) < 0 ||
        check_str("zone", reg->zone, FLEET_ZONE_MAX, err) < 0)
        return -1;
    if (reg->memory_mb < 1 || reg->cpus < 1)
        return err_set(err, EINVAL, "fleet: worker %s: memory_mb and cpus must be >= 1", reg->id);

    fleet_worker_t *w = find(f, reg->id);
    bool known = w != NULL;
    enum fleet_state from = FLEET_ACTIVE;
    int dropped = 0;
    if (known) {
        from = w->state;
        dropped = fleet_worker_environments(w, NULL);
        worker_clear_envs(w);
    } else {
        w = xcalloc(1, sizeof *w);
        f->workers = xrealloc(f->workers, (size_t)(f->n + 1) * sizeof *f->workers);
        f->workers[f->n++] = w;
        strcpy(w->id, reg->id);
    }
    strcpy(w->address, reg->address);
    strcpy(w->zone, reg->zone);
    snprintf(w->isolation, sizeof w->isolation, "%s", reg->isolation ? reg->isolation : "");
    snprintf(w->accelerator, sizeof w->accelerator, "%s", reg->accelerator ? reg->accelerator : "");
    w->memory_mb = reg->memory_mb;
    w->cpus = reg->cpus;
    w->state = FLEET_ACTIVE;
    w->state_since = now;
    w->lease_expiry = now + f->cfg.lease_ms;
    w->last_seen = now;
    w->reported_mb = w->reported_envs = 0;
    if (lease_expiry)
        *lease_expiry = w->lease_expiry;
    if (known)
        emit(f, FLEET_EV_RESTARTED, w, from, dropped, now, "re-registered");
    else
        emit(f, FLEET_EV_REGISTERED, w, FLEET_ACTIVE, 0, now, "registered");
    return 0;
}

int fleet_heartbeat(fleet_t *f, const char *id, uint64_t now, const fleet_load_t *load, err_t *err)
{
    fleet_worker_t *w = find(f, id);
    if (!w)
        return err_set(err, ENOENT, "fleet: unknown worker %s", id ? id : "(null)");
    if (load && (load->memory_used_mb < 0 || load->environments < 0 || load->n_envs < 0 ||
                 (load->n_envs > 0 && !load->envs)))
        return err_set(err, EINVAL, "fleet: worker %s: negative load", id);
    for (int i = 0; load && load->envs_reported && i < load->n_envs; i++) {
        const fleet_env_report_t *e = &load->envs[i];
        if (!e->env_id || !*e->env_id || strlen(e->env_id) >= FLEET_ENV_ID_MAX || !e->function ||
            !*e->function || e->memory_mb < 0)
            return err_set(err, EINVAL, "fleet: worker %s: environment %d of the report is malformed",
                           id, i);
    }
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED)
        return (int)w->state;
    if (now > w->last_seen)
        w->last_seen = now;
    if (load) {
        w->reported_mb = load->memory_used_mb;
        w->reported_envs = load->environments;
    }
    if (load && load->envs_reported) {
        /* the worker's own list replaces what it said before and confirms
         * the reservations it names */
        fns_clear(&w->rep, &w->n_rep);
        bool *listed = w->n_gone ? xcalloc((size_t)w->n_gone, sizeof *listed) : NULL;
        for (int i = 0; i < load->n_envs; i++) {
            const fleet_env_report_t *e = &load->envs[i];
            int g = gone_find(w, e->env_id);
            if (g >= 0) { /* removed after the worker wrote this report */
                listed[g] = true;
                w->reported_mb -= e->memory_mb;
                w->reported_envs--;
                continue;
            }
            fn_add(&w->rep, &w->n_rep, e->function, e->memory_mb);
            int r = res_find(w, e->env_id);
            if (r >= 0)
                res_drop(w, r);
        }
        if (w->reported_mb < 0)
            w->reported_mb = 0;
        if (w->reported_envs < 0)
            w->reported_envs = 0;
        /* a report that no longer lists a gone env has seen it go */
        for (int g = w->n_gone - 1; g >= 0; g--)
            if (!listed[g])
                w->gone[g] = w->gone[--w->n_gone];
        free(listed);
    }
    return (int)w->state;
}

static int committed_mb(const fleet_worker_t *w)
{
    return (w->tracked_mb > w->reported_mb ? w->tracked_mb : w->reported_mb) + w->reserved_mb;
}

static uint64_t age(uint64_t now, uint64_t then) { return now > then ? now - then : 0; }

int fleet_tick(fleet_t *f, uint64_t now)
{
    size_t before = f->n_events;
    const fleet_config_t *c = &f->cfg;
    for (int i = 0; i < f->n; i++) {
        fleet_worker_t *w = f->workers[i];
        if (w->state != FLEET_ACTIVE && w->state != FLEET_DRAINING)
            continue;
        for (int r = w->n_res - 1; r >= 0; r--) /* never confirmed: the creator gave up */
            if (age(now, w->res[r].at) > c->heartbeat_timeout_ms)
                res_drop(w, r);
        for (int g = w->n_gone - 1; g >= 0; g--) /* still listed that long: not gone after all */
            if (age(now, w->gone[g].at) > c->heartbeat_timeout_ms)
                w->gone[g] = w->gone[--w->n_gone];
        if (age(now, w->last_seen) > c->heartbeat_timeout_ms) {
            set_state(f, w, FLEET_LOST, now, "missed heartbeats");
            continue;
        }
        if (now >= w->lease_expiry) {
            set_state(f, w, FLEET_RETIRED, now, "lease ended");
            continue;
        }
        if (w->state == FLEET_ACTIVE && w->lease_expiry - now <= c->drain_before_ms)
            set_state(f, w, FLEET_DRAINING, now, "lease ending");
        if (w->state == FLEET_DRAINING && fleet_worker_environments(w, NULL) == 0 &&
            w->reported_envs == 0)
            set_state(f, w, FLEET_RETIRED, now, "drained");
    }
    /* Forget long-gone workers, keeping registration order. */
    int kept = 0;
    for (int i = 0; i < f->n; i++) {
        fleet_worker_t *w = f->workers[i];
        if ((w->state == FLEET_LOST || w->state == FLEET_RETIRED) &&
            age(now, w->state_since) >= c->forget_after_ms)
            fw_free(w);
        else
            f->workers[kept++] = w;
    }
    f->n = kept;
    return (int)(f->n_events - before);
}

const fleet_event_t *fleet_events(const fleet_t *f, size_t *n)
{
    *n = f->n_events;
    return f->events;
}

void fleet_events_clear(fleet_t *f) { f->n_events = 0; }

int fleet_drain(fleet_t *f, const char *id, uint64_t now, err_t *err)
{
    fleet_worker_t *w = find(f, id);
    if (!w)
        return err_set(err, ENOENT, "fleet: unknown worker %s", id ? id : "(null)");
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED)
        return err_set(err, ESTALE, "fleet: worker %s is %s", id, fleet_state_name(w->state));
    if (w->state == FLEET_ACTIVE)
        set_state(f, w, FLEET_DRAINING, now, "drain requested");
    return 0;
}


static bool excluded(const char *id, const char *const *exclude)
{
    for (; exclude && *exclude; exclude++)
        if (strcmp(*exclude, id) == 0)
            return true;
    return false;
}

/* ACTIVE, heard from recently and not (yet to be) draining: may take new
 * environments even if fleet_tick has not run lately. */
static bool placeable(const fleet_t *f, const fleet_worker_t *w, uint64_t now)
{
    return w->state == FLEET_ACTIVE && age(now, w->last_seen) <= f->cfg.heartbeat_timeout_ms &&
           now < w->lease_expiry && w->lease_expiry - now > f->cfg.drain_before_ms;
}

const fleet_worker_t *fleet_pick(fleet_t *f, const char *function, int memory_mb, uint64_t now,
                                 const char *const *exclude)
{
    if (!function || !*function || memory_mb < 1)
        return NULL;
    if (f->n == 0) {
        f->unmet++;
        return NULL;
    }
    /* Environments of `function` per zone, over workers that hold any. */
    const char **zones = xcalloc((size_t)f->n, sizeof *zones);
    int *zone_envs = xcalloc((size_t)f->n, sizeof *zone_envs);
    int n_zones = 0;
    for (int i = 0; i < f->n; i++) {
        const fleet_worker_t *w = f->workers[i];
        int z = 0;
        while (z < n_zones && strcmp(zones[z], w->zone) != 0)
            z++;
        if (z == n_zones)
            zones[n_zones++] = w->zone;
        zone_envs[z] += fleet_worker_environments(w, function);
    }
    const fleet_worker_t *best = NULL;
    int best_zone_envs = 0, best_free = 0;
    bool room_anywhere = false;
    for (int i = 0; i < f->n; i++) {
        const fleet_worker_t *w = f->workers[i];
        if (!placeable(f, w, now))
            continue;
        int free_mb = w->memory_mb - committed_mb(w);
        if (free_mb < memory_mb)
            continue;
        room_anywhere = true;
        if (excluded(w->id, exclude))
            continue;
        int z = 0;
        while (strcmp(zones[z], w->zone) != 0)
            z++;
        if (!best || zone_envs[z] < best_zone_envs ||
            (zone_envs[z] == best_zone_envs && free_mb > best_free)) {
            best = w;
            best_zone_envs = zone_envs[z];
            best_free = free_mb;
        }
    }
    free(zones);
    free(zone_envs);
    if (!room_anywhere)
        f->unmet++;
    return best;
}

int fleet_env_added(fleet_t *f, const char *id, const char *function, int memory_mb, err_t *err)
{
    if (!function || !*function || memory_mb < 1)
        return err_set(err, EINVAL, "fleet: environment needs a function and memory_mb >= 1");
    fleet_worker_t *w = find(f, id);
    if (!w)
        return err_set(err, ENOENT, "fleet: unknown worker %s", id ? id : "(null)");
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED)
        return err_set(err, ESTALE, "fleet: worker %s is %s", id, fleet_state_name(w->state));
    fn_add(&w->fns, &w->n_fns, function, memory_mb);
    w->tracked_envs++;
    w->tracked_mb += memory_mb;
    return 0;
}

int fleet_env_removed(fleet_t *f, const char *id, const char *function, int memory_mb, err_t *err)
{
    if (!function || !*function || memory_mb < 1)
        return err_set(err, EINVAL, "fleet: environment needs a function and memory_mb >= 1");
    fleet_worker_t *w = find(f, id);
    if (!w)
        return err_set(err, ENOENT, "fleet: unknown worker %s", id ? id : "(null)");
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED)
        return 0;
    fn_count_t *fc = find_fn(w, function);
    if (!fc || fc->memory_mb < memory_mb)
        return err_set(err, EINVAL, "fleet: worker %s has no tracked %d MB environment of %s", id,
                       memory_mb, function);
    fc->count--;
    fc->memory_mb -= memory_mb;
    w->tracked_envs--;
    w->tracked_mb -= memory_mb;
    if (fc->count == 0) {
        free(fc->name);
        *fc = w->fns[--w->n_fns];
    }
    return 0;
}

int fleet_env_reserve(fleet_t *f, const char *id, const char *env_id, const char *function,
                      int memory_mb, uint64_t now, err_t *err)
{
    if (!env_id || !*env_id || strlen(env_id) >= FLEET_ENV_ID_MAX || !function || !*function ||
        memory_mb < 1)
        return err_set(err, EINVAL, "fleet: a reservation needs an env_id (< %d characters), a "
                       "function and memory_mb >= 1", FLEET_ENV_ID_MAX);
    fleet_worker_t *w = find(f, id);
    if (!w)
        return err_set(err, ENOENT, "fleet: unknown worker %s", id ? id : "(null)");
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED)
        return err_set(err, ESTALE, "fleet: worker %s is %s", id, fleet_state_name(w->state));
    if (res_find(w, env_id) >= 0)
        return 0;
    w->res = xrealloc(w->res, (size_t)(w->n_res + 1) * sizeof *w->res);
    reservation_t *r = &w->res[w->n_res++];
    memset(r, 0, sizeof *r);
    strcpy(r->env_id, env_id);
    r->function = xstrdup(function);
    r->memory_mb = memory_mb;
    r->at = now;
    w->reserved_mb += memory_mb;
    return 0;
}

int fleet_env_unreserve(fleet_t *f, const char *id, const char *env_id, err_t *err)
{
    if (!env_id || !*env_id)
        return err_set(err, EINVAL, "fleet: unreserve needs an env_id");
    return fleet_env_gone(f, id, env_id, NULL, 0, 0, err);
}

int fleet_env_gone(fleet_t *f, const char *id, const char *env_id, const char *function,
                   int memory_mb, uint64_t now, err_t *err)
{
    if (!env_id || !*env_id || strlen(env_id) >= FLEET_ENV_ID_MAX)
        return err_set(err, EINVAL, "fleet: env_gone needs an env_id (< %d characters)",
                       FLEET_ENV_ID_MAX);
    fleet_worker_t *w = find(f, id);
    if (!w)
        return err_set(err, ENOENT, "fleet: unknown worker %s", id ? id : "(null)");
    int r = res_find(w, env_id);
    if (r >= 0) {
        res_drop(w, r);
        return 1;
    }
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED || !function || memory_mb < 1 ||
        gone_find(w, env_id) >= 0)
        return 0;
    /* Counted from the last report: take it out now, and out of the
     * reports that may still list it until one does not. */
    fn_count_t *fc = fn_in(w->rep, w->n_rep, function);
    if (fc && fc->count > 0) {
        fc->count--;
        fc->memory_mb -= memory_mb;
        if (fc->memory_mb < 0)
            fc->memory_mb = 0;
    }
    w->reported_mb = w->reported_mb > memory_mb ? w->reported_mb - memory_mb : 0;
    if (w->reported_envs > 0)
        w->reported_envs--;
    w->gone = xrealloc(w->gone, (size_t)(w->n_gone + 1) * sizeof *w->gone);
    gone_t *g = &w->gone[w->n_gone++];
    memset(g, 0, sizeof *g);
    strcpy(g->env_id, env_id);
    g->memory_mb = memory_mb;
    g->at = now;
    return 0;
}

typedef struct totals {
    int active, draining, lost, retired;
    long capacity_mb, committed_mb;
} totals_t;

static totals_t totals(const fleet_t *f)
{
    totals_t t = {0};
    for (int i = 0; i < f->n; i++) {
        const fleet_worker_t *w = f->workers[i];
        switch (w->state) {
        case FLEET_ACTIVE:
            t.active++;
            t.capacity_mb += w->memory_mb;
            t.committed_mb += committed_mb(w);
            break;
        case FLEET_DRAINING:
            /* its environments will be recreated on ACTIVE workers */
            t.draining++;
            t.committed_mb += committed_mb(w);
            break;
        case FLEET_LOST: t.lost++; break;
        case FLEET_RETIRED: t.retired++; break;
        }
    }
    return t;
}

static int clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

void fleet_scale_decision(fleet_t *f, uint64_t now, fleet_scale_t *out)
{
    const fleet_config_t *c = &f->cfg;
    totals_t t = totals(f);
    memset(out, 0, sizeof *out);
    out->active = t.active;
    out->draining = t.draining;
    out->utilization = t.capacity_mb > 0 ? (double)t.committed_mb / (double)t.capacity_mb : 0;

    /* Workers that registered on their own (static hosts) raise the target. */
    int target = clamp(f->target > t.active ? f->target : t.active, c->min_workers, c->max_workers);
    int old = target;
    if (f->scaled_once && age(now, f->last_scale_at) < c->scale_cooldown_ms) {
        out->reason = "cooldown";
    } else if (t.active == 0) {
        if (f->unmet > 0 && target < 1)
            target = 1;
        out->reason = f->unmet > 0 ? "unmet demand, no active workers" : "no active workers";
        f->unmet = 0;
    } else if (out->utilization > c->scale_out_above || f->unmet > 0) {
        /* Enough workers to bring utilization to the high watermark, at
         * least one more than now, unless starts are already pending. */
        double avg = (double)t.capacity_mb / t.active;
        int need = (int)ceil((double)t.committed_mb / (avg * c->scale_out_above) - 1e-9);
        int want = need > t.active + 1 ? need : t.active + 1;
        if (want > target)
            target = clamp(want, c->min_workers, c->max_workers);
        out->reason = target > old ? (f->unmet > 0 && out->utilization <= c->scale_out_above
                                          ? "unmet demand"
                                          : "utilization above high watermark")
                    : old >= c->max_workers ? "at max_workers"
                                            : "scale-out pending";
        f->unmet = 0;
    } else if (out->utilization < c->scale_in_below) {
        double avg = (double)t.capacity_mb / t.active;
        int fewer = target - 1;
        int remaining = (fewer < t.active ? fewer : t.active);
        if (fewer < c->min_workers)
            out->reason = "at min_workers";
        else if (remaining > 0 && (double)t.committed_mb / (avg * remaining) > c->scale_out_above)
            out->reason = "below low watermark, but fewer workers would exceed the high one";
        else {
            target = fewer;
            out->reason = "utilization below low watermark";
        }
    } else {
        out->reason = "within watermarks";
        f->unmet = 0;
    }
    out->changed = target != old;
    if (out->changed) {
        f->scaled_once = true;
        f->last_scale_at = now;
    }
    f->target = target;
    out->desired = target;
    out->delta = target - t.active;
    if (out->delta < 0) {
        /* Drain the ACTIVE worker with the least committed memory first;
         * ties: the one whose lease ends first. */
        const fleet_worker_t *v = NULL;
        for (int i = 0; i < f->n; i++) {
            const fleet_worker_t *w = f->workers[i];
            if (w->state != FLEET_ACTIVE)
                continue;
            if (!v || committed_mb(w) < committed_mb(v) ||
                (committed_mb(w) == committed_mb(v) && w->lease_expiry < v->lease_expiry))
                v = w;
        }
        if (v)
            memcpy(out->drain_id, v->id, sizeof out->drain_id);
    }
}

json_t *fleet_status(const fleet_t *f, uint64_t now)
{
    json_t *workers = json_array();
    for (int i = 0; i < f->n; i++) {
        const fleet_worker_t *w = f->workers[i];
        /* per function, the count zone spread uses */
        json_t *fns = json_object();
        for (int j = 0; j < w->n_fns; j++)
            json_object_set_new(fns, w->fns[j].name, json_integer(fn_effective(w, w->fns[j].name)));
        for (int j = 0; j < w->n_rep; j++)
            json_object_set_new(fns, w->rep[j].name, json_integer(fn_effective(w, w->rep[j].name)));
        for (int j = 0; j < w->n_res; j++)
            json_object_set_new(fns, w->res[j].function,
                                json_integer(fn_effective(w, w->res[j].function)));
        json_array_append_new(
            workers,
            json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:o}",
                      "id", w->id, "address", w->address, "zone", w->zone, "state",
                      fleet_state_name(w->state), "lease_expiry", (json_int_t)w->lease_expiry,
                      "lease_remaining_ms", (json_int_t)age(w->lease_expiry, now),
                      "last_heartbeat_age_ms", (json_int_t)age(now, w->last_seen), "memory_mb",
                      w->memory_mb, "memory_committed_mb", committed_mb(w), "memory_tracked_mb",
                      w->tracked_mb, "memory_reported_mb", w->reported_mb, "memory_reserved_mb",
                      w->reserved_mb, "cpus", w->cpus, "environments",
                      fleet_worker_environments(w, NULL), "environments_reported",
                      w->reported_envs, "environments_reserved", w->n_res, "functions", fns));
        json_t *last = json_array_get(workers, json_array_size(workers) - 1);
        if (w->isolation[0])
            json_object_set_new(last, "isolation", json_string(w->isolation));
        if (w->accelerator[0])
            json_object_set_new(last, "microvm_accelerator", json_string(w->accelerator));
    }
    totals_t t = totals(f);
    return json_pack("{s:o,s:i,s:i,s:i,s:i,s:I,s:I,s:f,s:i}", "workers", workers, "active", t.active,
                     "draining", t.draining, "lost", t.lost, "retired", t.retired, "capacity_mb",
                     (json_int_t)t.capacity_mb, "committed_mb", (json_int_t)t.committed_mb,
                     "utilization",
                     t.capacity_mb > 0 ? (double)t.committed_mb / (double)t.capacity_mb : 0.0,
                     "target_workers", f->target);
}

const fleet_worker_t *fleet_get(const fleet_t *f, const char *id) { return find(f, id); }
int fleet_count(const fleet_t *f) { return f->n; }
const fleet_worker_t *fleet_worker_at(const fleet_t *f, int i)
{
    return i >= 0 && i < f->n ? f->workers[i] : NULL;
}
const char *fleet_worker_id(const fleet_worker_t *w) { return w->id; }
const char *fleet_worker_address(const fleet_worker_t *w) { return w->address; }
const char *fleet_worker_zone(const fleet_worker_t *w) { return w->zone; }
enum fleet_state fleet_worker_state(const fleet_worker_t *w) { return w->state; }
uint64_t fleet_worker_lease_expiry(const fleet_worker_t *w) { return w->lease_expiry; }
int fleet_worker_free_mb(const fleet_worker_t *w) { return w->memory_mb - committed_mb(w); }
