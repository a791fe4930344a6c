/* fleet.h - the placement service's core: the fleet of leased workers as a
 * pure, deterministic state machine.
 *
 * What: workers register (id, address, zone, memory, cpus) and get a lease
 * (Lambda: 14 h); they heartbeat their load; fleet_tick() notices missed
 * heartbeats (LOST) and ending leases (DRAINING, then RETIRED); fleet_pick()
 * chooses an ACTIVE worker for a new execution environment (free memory,
 * zone spread per function); fleet_scale_decision() says how many workers
 * the fleet should have; fleet_status() describes it all as JSON.
 *
 * How: no sockets, threads, timers or clocks.  Every call that depends on
 * time takes `now`, wall-clock milliseconds since the epoch (the caller
 * passes now_wall_ms(); tests pass made-up values), so the same calls give
 * the same results.  Every state transition appends a fleet_event_t to an
 * output list the caller drains with fleet_events()/fleet_events_clear()
 * and acts on (tell assignment, start a replacement, stop a process).
 *
 * Worker states:
 *
 *   register --> ACTIVE --lease ends within drain_before_ms--> DRAINING
 *                  |         or fleet_drain()                    |
 *                  |                                             | environments == 0,
 *                  |  lease ended (no drain window)              | or lease ended
 *                  +-------------------------------------------> RETIRED
 *                  |                                             ^
 *                  |  no heartbeat for > heartbeat_timeout_ms    |
 *                  +--------------------> LOST <-- (from DRAINING too)
 *
 *   re-register (same id, a restarted worker): any state --> ACTIVE, fresh
 *   lease, its environments and load forgotten.
 *
 * Invariants: only ACTIVE workers are picked; LOST and RETIRED workers hold
 * no environments (they leave placement's table at the transition, and the
 * event says how many); every transition emits exactly one event; LOST and
 * RETIRED are final until the worker re-registers; a LOST or RETIRED
 * worker is forgotten (leaves the table and status) forget_after_ms later.
 *
 * Environments per worker and function (what zone spread counts) come
 * from three sources: the environments each heartbeat lists (the worker
 * is the ground truth of what exists on it), reservations made at pick
 * time (fleet_env_reserve: counted at once, so concurrent picks spread
 * without waiting for a heartbeat; dropped when a heartbeat lists the
 * environment, when fleet_env_unreserve says it was not created, or
 * heartbeat_timeout_ms after the pick), and explicit fleet_env_added/
 * removed calls.  A function's count on a worker is max(added, reported)
 * + reserved.  Because the reports replace rather than accumulate, the
 * view repairs itself within a heartbeat whatever was lost on the way
 * (an assignment leader that died mid-create, a restarted placement).
 *
 * Committed memory of a worker = max(memory placement tracked through
 * fleet_env_added/removed, memory_used_mb of its last heartbeat) + memory
 * reserved by pending picks: the tracked and reserved figures are
 * immediate, the reported one covers what placement did not place; taking
 * the larger never over-commits.
 *
 * Not thread-safe: one owner (the placement service's loop) calls it. */
#ifndef FLICKER_FLEET_H
#define FLICKER_FLEET_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

#define FLEET_ID_MAX 64      /* worker id, including the NUL */
#define FLEET_ZONE_MAX 64    /* zone name, including the NUL */
#define FLEET_ADDR_MAX 256   /* worker address ("host:port"), including the NUL */
#define FLEET_ENV_ID_MAX 64  /* environment id, including the NUL */

typedef struct fleet fleet_t;
typedef struct fleet_worker fleet_worker_t;

enum fleet_state { FLEET_ACTIVE, FLEET_DRAINING, FLEET_RETIRED, FLEET_LOST };

typedef struct fleet_config {
    uint64_t lease_ms;              /* lease length (Lambda: 14 h) */
    uint64_t heartbeat_timeout_ms;  /* silence longer than this = LOST (10 s) */
    uint64_t drain_before_ms;       /* DRAINING this long before the lease ends (30 min) */
    uint64_t forget_after_ms;       /* LOST/RETIRED workers leave the table after (1 h) */
    double scale_out_above;         /* utilization high watermark (0.80) */
    double scale_in_below;          /* utilization low watermark (0.30) */
    int min_workers;                /* (1) */
    int max_workers;                /* (16) */
    uint64_t scale_cooldown_ms;     /* between two target changes (60 s) */
} fleet_config_t;

/* A registration, as the worker sends it.  Strings are copied. */
typedef struct fleet_registration {
    const char *id;
    const char *address;
    const char *zone;
    int memory_mb;                  /* capacity offered for environments */
    int cpus;
    const char *isolation;          /* the worker's default backend, or NULL (status only) */
    const char *accelerator;        /* microVMs: "kvm"/"tcg", or NULL (status only) */
} fleet_registration_t;

/* One environment alive on a worker, as its heartbeat lists it. */
typedef struct fleet_env_report {
    const char *env_id;             /* 1..FLEET_ENV_ID_MAX-1 characters */
    const char *function;           /* non-empty */
    int memory_mb;                  /* >= 0 */
} fleet_env_report_t;

/* A heartbeat's load report. */
typedef struct fleet_load {
    int memory_used_mb;             /* memory committed to environments on the worker */
    int environments;               /* environments alive on the worker */
    bool envs_reported;             /* envs[0..n_envs) is the complete list of the
                                       worker's environments (false: not sent) */
    const fleet_env_report_t *envs;
    int n_envs;
} fleet_load_t;

enum fleet_event_type {
    FLEET_EV_REGISTERED,  /* a new worker: ACTIVE */
    FLEET_EV_RESTARTED,   /* a known id registered again: ACTIVE with a fresh lease.
                             If `environments` > 0 they are gone: drop them from the
                             table and fail their in-flight requests (retryable). */
    FLEET_EV_DRAINING,    /* no new environments on it; in-flight ones continue.
                             Retire its environments as they go idle; start a
                             replacement (fleet_scale_decision counts it). */
    FLEET_EV_RETIRED,     /* drained or lease ended: stop the worker.  If
                             `environments` > 0 (lease ended first) they are gone. */
    FLEET_EV_LOST,        /* missed heartbeats: its `environments` leave the table,
                             in-flight requests on it fail with a retryable error;
                             start a replacement. */
};

typedef struct fleet_event {
    enum fleet_event_type type;
    char worker_id[FLEET_ID_MAX];
    char zone[FLEET_ZONE_MAX];
    char address[FLEET_ADDR_MAX];
    enum fleet_state from;      /* state before the transition (REGISTERED: ACTIVE) */
    int environments;           /* environments placement tracked on it at the
                                   transition; for RESTARTED/RETIRED/LOST those
                                   that left the table */
    uint64_t at;                /* the `now` of the call that made it */
    const char *reason;         /* static text, for logs */
} fleet_event_t;

/* What fleet_scale_decision() advises. */
typedef struct fleet_scale {
    int desired;                /* ACTIVE workers the fleet should have */
    int active;                 /* ACTIVE workers now */
    int draining;               /* DRAINING workers now (leaving; not counted as capacity) */
    int delta;                  /* desired - active: > 0 start that many (minus any
                                   already starting), < 0 drain that many */
    bool changed;               /* this call moved the target (starts the cooldown) */
    double utilization;         /* memory committed on ACTIVE and DRAINING workers (the
                                   latter's environments will be recreated elsewhere)
                                   over ACTIVE capacity; 0 when no ACTIVE worker */
    const char *reason;         /* static text */
    char drain_id[FLEET_ID_MAX];/* when delta < 0: the ACTIVE worker to drain first
                                   (least committed); "" otherwise */
} fleet_scale_t;

/* Fills cfg with the defaults above. */
void fleet_config_default(fleet_config_t *cfg);

/* A new, empty fleet.  cfg NULL = defaults; cfg is copied.  Fails (NULL,
 * err EINVAL) when cfg is inconsistent: zero lease or heartbeat timeout,
 * drain_before_ms >= lease_ms, watermarks not 0 < in < out <= 1,
 * min_workers < 0, max_workers < 1 or < min_workers. */
fleet_t *fleet_new(const fleet_config_t *cfg, err_t *err);
/* Frees the fleet, its workers and pending events.  NULL is a no-op. */
void fleet_free(fleet_t *f);
/* The configuration in use. */
const fleet_config_t *fleet_config(const fleet_t *f);

/* Registers a worker, or re-registers a known id (a restarted worker:
 * state reset to ACTIVE, environments and load forgotten, new address,
 * zone and capacity taken).  Grants a lease until now + lease_ms, stored
 * in *lease_expiry (epoch ms) when non-NULL.  Emits REGISTERED or
 * RESTARTED.  Returns 0, or -1 with err EINVAL when a field is missing,
 * too long (see FLEET_*_MAX) or memory_mb/cpus < 1. */
int fleet_register(fleet_t *f, const fleet_registration_t *reg, uint64_t now,
                   uint64_t *lease_expiry, err_t *err);

/* Records a heartbeat: last seen = now, load = *load (NULL: unchanged).
 * With load->envs_reported, the listed environments replace the worker's
 * reported per-function counts, and every pending reservation whose
 * env_id is listed is confirmed (it is counted from the report from now
 * on).  Returns the worker's state, which the reply to the worker must
 * carry: ACTIVE/DRAINING (recorded); LOST (ignored: the worker must
 * destroy its environments and re-register); RETIRED (ignored: the worker
 * must stop or re-register).  Returns -1 with err ENOENT for an unknown id
 * (register first) or EINVAL for a negative load or a malformed
 * environment (nothing is changed then).  Transitions happen only in
 * fleet_tick. */
int fleet_heartbeat(fleet_t *f, const char *id, uint64_t now, const fleet_load_t *load, err_t *err);

/* Advances time: for every ACTIVE or DRAINING worker, in registration
 * order, and in this priority: silent for > heartbeat_timeout_ms -> LOST;
 * lease ended -> RETIRED; ACTIVE with lease ending within drain_before_ms
 * -> DRAINING; DRAINING with no environments (tracked, reported and
 * reserved) -> RETIRED (so an idle worker may go DRAINING then RETIRED in
 * one tick).  Reservations older than heartbeat_timeout_ms that no
 * heartbeat confirmed are dropped first (their creator gave up or died).
 * Then forgets LOST/RETIRED workers older than forget_after_ms.  Returns
 * the number of events it appended.  Invalidates fleet_worker_t pointers
 * of forgotten workers. */
int fleet_tick(fleet_t *f, uint64_t now);

/* Pending events, oldest first, and their count in *n.  Valid until the
 * next call that mutates the fleet.  fleet_events_clear() consumes them. */
const fleet_event_t *fleet_events(const fleet_t *f, size_t *n);
void fleet_events_clear(fleet_t *f);

/* Starts draining an ACTIVE worker now (scale-in, operator request):
 * emits DRAINING.  Already DRAINING: 0, no event.  Returns -1 with err
 * ENOENT (unknown) or ESTALE (LOST/RETIRED). */
int fleet_drain(fleet_t *f, const char *id, uint64_t now, err_t *err);

/* Picks the worker for a new environment of `function` needing memory_mb:
 * among ACTIVE workers not named in `exclude` (NULL-terminated list of ids,
 * or NULL), heard from within heartbeat_timeout_ms and not within
 * drain_before_ms of their lease end (so a late tick cannot place onto a
 * dead or leaving worker), with free memory >= memory_mb, the one whose
 * zone holds the fewest environments of `function` (over ACTIVE and
 * DRAINING workers), then the most free memory, then the first in
 * registration order (a re-registered id keeps its place).  NULL when none fits (the caller answers a capacity error;
 * the miss counts as unmet demand for fleet_scale_decision) or on invalid
 * arguments.  Does not commit anything: call fleet_env_added as soon as the
 * environment is being created, fleet_env_removed if that fails.  The
 * pointer is valid until the next fleet_tick or fleet_free. */
const fleet_worker_t *fleet_pick(fleet_t *f, const char *function, int memory_mb, uint64_t now,
                                 const char *const *exclude);

/* Tracks one environment of `function` (memory_mb) created on / removed
 * from worker `id`.  added: accepted on ACTIVE and DRAINING workers (a pick
 * may race a drain); -1 with err ESTALE on LOST/RETIRED ones (the
 * environment must be destroyed), ENOENT for an unknown id, EINVAL for bad
 * arguments.  removed: a no-op returning 0 on LOST/RETIRED workers (their
 * environments already left); -1 with err EINVAL when no such environment
 * is tracked, ENOENT for an unknown id. */
int fleet_env_added(fleet_t *f, const char *id, const char *function, int memory_mb, err_t *err);
int fleet_env_removed(fleet_t *f, const char *id, const char *function, int memory_mb, err_t *err);

/* Reserves room on worker `id` for environment env_id of `function`
 * (memory_mb), made right after the pick that chose it and before the
 * environment is created: it counts at once in zone spread and committed
 * memory.  It ends when a heartbeat lists env_id (confirmed: counted from
 * the reports from then on), on fleet_env_unreserve, or when fleet_tick
 * finds it older than heartbeat_timeout_ms.  Reserving an env_id already
 * reserved on that worker is a no-op.  Returns 0; -1 with err ENOENT
 * (unknown worker), ESTALE (LOST/RETIRED) or EINVAL (bad arguments). */
int fleet_env_reserve(fleet_t *f, const char *id, const char *env_id, const char *function,
                      int memory_mb, uint64_t now, err_t *err);
/* Drops the pending reservation of env_id on worker `id` (its creation
 * failed, or the creator gave up).  Returns 1 if one was dropped, 0 if
 * there was none (already confirmed by a heartbeat, expired, or the worker
 * is LOST/RETIRED), -1 with err ENOENT for an unknown worker or EINVAL. */
int fleet_env_unreserve(fleet_t *f, const char *id, const char *env_id, err_t *err);
/* Environment env_id (of `function`, memory_mb) left worker `id` - never
 * created, destroyed, or dead - as its creator says.  A pending
 * reservation of it is dropped (returns 1).  Otherwise, given its function
 * and memory, it stops counting at once: out of the last report's counts
 * and memory, and out of later reports that still list it (one written
 * before it went) until a report does not, or heartbeat_timeout_ms passes.
 * Returns 0 then (also when there was nothing to do: LOST/RETIRED worker,
 * already gone, no function given); -1 with err ENOENT (unknown worker) or
 * EINVAL (bad env_id). */
int fleet_env_gone(fleet_t *f, const char *id, const char *env_id, const char *function,
                   int memory_mb, uint64_t now, err_t *err);

/* Advises the fleet size.  The fleet keeps a target (initially
 * min_workers, never below the ACTIVE count, clamped to [min, max]).
 * Outside the cooldown: utilization above scale_out_above, or a fleet_pick
 * miss since the last decision, raises the target to at least the ACTIVE
 * count + 1 and enough workers to bring utilization to the high watermark
 * (bursts scale in one step); utilization below scale_in_below lowers it
 * by one (if the rest stays below the high watermark).  LOST, RETIRED and
 * DRAINING workers leave the ACTIVE count but not the target, so their
 * replacements show up in `delta`.  Fills *out. */
void fleet_scale_decision(fleet_t *f, uint64_t now, fleet_scale_t *out);

/* {"workers":[{id, address, zone, state, lease_expiry (epoch ms),
 *   lease_remaining_ms, last_heartbeat_age_ms, memory_mb, memory_committed_mb,
 *   memory_tracked_mb, memory_reported_mb, memory_reserved_mb, cpus,
 *   environments, environments_reported, environments_reserved,
 *   functions:{name:n}}...],
 *  where environments and functions are the counts zone spread uses
 *  (max(added, reported) + reserved, per function),
 *  active, draining, lost, retired, capacity_mb (ACTIVE), committed_mb
 *  (ACTIVE + DRAINING), utilization (as fleet_scale_t's), target_workers}.  state is "active", "draining", "retired" or "lost".
 * New reference. */
json_t *fleet_status(const fleet_t *f, uint64_t now);

/* Lookup and iteration (registration order); pointers as for fleet_pick. */
const fleet_worker_t *fleet_get(const fleet_t *f, const char *id);
int fleet_count(const fleet_t *f);
const fleet_worker_t *fleet_worker_at(const fleet_t *f, int i);

const char *fleet_worker_id(const fleet_worker_t *w);
const char *fleet_worker_address(const fleet_worker_t *w);
const char *fleet_worker_zone(const fleet_worker_t *w);
enum fleet_state fleet_worker_state(const fleet_worker_t *w);
uint64_t fleet_worker_lease_expiry(const fleet_worker_t *w);
/* memory_mb - committed (may be negative when a heartbeat reports more
 * than the capacity). */
int fleet_worker_free_mb(const fleet_worker_t *w);
/* Environments placement counts on it (of `function` when non-NULL):
 * per function max(added, reported) + reserved, as zone spread uses. */
int fleet_worker_environments(const fleet_worker_t *w, const char *function);

/* "active", "draining", "retired", "lost" / "registered", "restarted", ... */
const char *fleet_state_name(enum fleet_state s);
const char *fleet_event_name(enum fleet_event_type t);
#endif
