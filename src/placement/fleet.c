/* fleet.c - see fleet.h.
 *
 * How: an array of heap-allocated workers in registration order (pointers
 * stay valid until a worker is forgotten in fleet_tick); each worker keeps
 * a small array of {function, count, memory} for the environments
 * placement tracks on it.  Every operation is a linear scan: fleets here
 * are tens to hundreds of workers.  Picking first sums each zone's
 * environments of the function (one pass), then scans the candidates.
 *
 *   ACTIVE --> DRAINING --> RETIRED        ACTIVE/DRAINING --> LOST
 *   (any) --re-register--> ACTIVE
 *
 * Invariants kept here: a LOST/RETIRED worker has n_fns == 0 and
 * tracked_mb == 0; tracked_mb equals the sum of its fns' memory; every
 * state change goes through set_state(), which appends the event. */
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

struct fleet_worker {
    char id[FLEET_ID_MAX];
    char address[FLEET_ADDR_MAX];
    char zone[FLEET_ZONE_MAX];
    int memory_mb, cpus;
    enum fleet_state state;
    uint64_t lease_expiry, last_seen, state_since;
    int tracked_mb, tracked_envs;       /* from fleet_env_added/removed */
    int reported_mb, reported_envs;     /* from the last heartbeat */
    fn_count_t *fns;
    int n_fns;
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

static void worker_clear_envs(fleet_worker_t *w)
{
    for (int i = 0; i < w->n_fns; i++)
        free(w->fns[i].name);
    free(w->fns);
    w->fns = NULL;
    w->n_fns = 0;
    w->tracked_mb = w->tracked_envs = 0;
}

static void fw_free(fleet_worker_t *w)
{
    worker_clear_envs(w);
    free(w);
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
    int envs = w->tracked_envs;
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
        dropped = w->tracked_envs;
        worker_clear_envs(w);
    } else {
        w = xcalloc(1, sizeof *w);
        f->workers = xrealloc(f->workers, (size_t)(f->n + 1) * sizeof *f->workers);
        f->workers[f->n++] = w;
        strcpy(w->id, reg->id);
    }
    strcpy(w->address, reg->address);
    strcpy(w->zone, reg->zone);
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
    if (load && (load->memory_used_mb < 0 || load->environments < 0))
        return err_set(err, EINVAL, "fleet: worker %s: negative load", id);
    if (w->state == FLEET_LOST || w->state == FLEET_RETIRED)
        return (int)w->state;
    if (now > w->last_seen)
        w->last_seen = now;
    if (load) {
        w->reported_mb = load->memory_used_mb;
        w->reported_envs = load->environments;
    }
    return (int)w->state;
}

static int committed_mb(const fleet_worker_t *w)
{
    return w->tracked_mb > w->reported_mb ? w->tracked_mb : w->reported_mb;
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
        if (w->state == FLEET_DRAINING && w->tracked_envs == 0 && w->reported_envs == 0)
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

static fn_count_t *find_fn(const fleet_worker_t *w, const char *function)
{
    for (int i = 0; i < w->n_fns; i++)
        if (strcmp(w->fns[i].name, function) == 0)
            return &w->fns[i];
    return NULL;
}

int fleet_worker_environments(const fleet_worker_t *w, const char *function)
{
    if (!function)
        return w->tracked_envs;
    const fn_count_t *fc = find_fn(w, function);
    return fc ? fc->count : 0;
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
    fn_count_t *fc = find_fn(w, function);
    if (!fc) {
        w->fns = xrealloc(w->fns, (size_t)(w->n_fns + 1) * sizeof *w->fns);
        fc = &w->fns[w->n_fns++];
        *fc = (fn_count_t){.name = xstrdup(function)};
    }
    fc->count++;
    fc->memory_mb += memory_mb;
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
        json_t *fns = json_object();
        for (int j = 0; j < w->n_fns; j++)
            json_object_set_new(fns, w->fns[j].name, json_integer(w->fns[j].count));
        json_array_append_new(
            workers,
            json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:o}", "id", w->id,
                      "address", w->address, "zone", w->zone, "state", fleet_state_name(w->state),
                      "lease_expiry", (json_int_t)w->lease_expiry, "lease_remaining_ms",
                      (json_int_t)age(w->lease_expiry, now), "last_heartbeat_age_ms",
                      (json_int_t)age(now, w->last_seen), "memory_mb", w->memory_mb,
                      "memory_committed_mb", committed_mb(w), "memory_tracked_mb", w->tracked_mb,
                      "memory_reported_mb", w->reported_mb, "cpus", w->cpus, "environments",
                      w->tracked_envs, "environments_reported", w->reported_envs, "functions", fns));
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
