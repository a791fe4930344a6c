/* backend.h - what the frontend needs from assignment and the workers.
 *
 * The invoke path is: acquire an environment for a configuration (warm or
 * cold, or a throttle/init error), invoke it with one event, release it.
 * Two implementations sit behind this struct of function pointers:
 *   - local (backend_local.c): the embedded mode, assignment and worker in
 *     this process (`flicker up`);
 *   - remote (backend_remote.c): the assignment leader and the workers are
 *     other processes or hosts, reached over RPC (docs/protocol.md).
 * The frontend's code is the same for both: one code path for one host
 * and many.
 *
 * Contract (both): every acquire ends in exactly one callback, never called
 * synchronously, unless cancelled first; every invoke ends in exactly one
 * done callback; a lease handed out by acquire must be released exactly
 * once (dead = the environment is gone). */
#ifndef FLICKER_BACKEND_H
#define FLICKER_BACKEND_H
#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include "assignment/assignment.h"
#include "store/store.h"
#include "worker/worker.h"

typedef struct backend backend_t;

/* An environment handed to one invocation. */
typedef struct backend_lease {
    env_t *env;            /* local: the environment itself */
    char env_id[40];       /* remote: the environment's id ... */
    char worker[160];      /* ... and its worker's RPC address */
    int shard;             /* remote: the assignment group that handed it out */
    int64_t token;         /* remote: the hand-out's lease token (0: none), given
                              back with the release so a late one is told apart */
    char config_key[192];  /* remote: the configuration it runs (a held lease is
                              reused only for the same one) */
    uint64_t holdable_until_ms; /* remote: may be held for reuse until then
                              (monotonic ms; 0: never) */
} backend_lease_t;

/* What became of an environment after an invocation, for release. */
typedef enum env_fate {
    ENV_FATE_KEPT,              /* fine: idle again, reusable */
    ENV_FATE_DEAD,         /* did not survive (crash, timeout, worker gone) */
    ENV_FATE_NOT_OURS,          /* its worker said another request is running in it
                              (a holder from before a failover or a reclaimed
                              release): it stays busy until that one releases */
} env_fate_t;

/* acquire's outcome: r->status as assignment.h; lease valid when OK. */
typedef void (*backend_acquired_fn)(const acquire_result_t *r, const backend_lease_t *lease, void *arg);
/* invoke's outcome and what became of the environment. */
typedef void (*backend_done_fn)(const invoke_result_t *r, env_fate_t fate, void *arg);

/* snapshot's outcome: ok, or why not (message NULL: cancelled because the
 * platform is stopping; try again later). */
typedef void (*backend_snapshot_fn)(bool ok, const char *message, void *arg);

typedef struct backend_ops {
    /* Returns a handle for cancel, valid until the callback runs. */
    void *(*acquire)(backend_t *b, const fn_config_t *cfg, int total_reserved, backend_acquired_fn cb,
                     void *arg);
    void (*cancel)(backend_t *b, void *handle);
    void (*invoke)(backend_t *b, const backend_lease_t *lease, const fn_config_t *cfg,
                   const invoke_event_t *ev, backend_done_fn done, void *arg);
    void (*release)(backend_t *b, const backend_lease_t *lease, env_fate_t fate);
    /* A function's code/config changed or it was deleted: retire the
     * environments whose configuration is no longer current. */
    void (*function_changed)(backend_t *b, const char *name, store_t *store);
    /* SnapStart: has a worker boot an environment of cfg, run Init and save
     * its state to path (worker_snapshot_create).  cb runs exactly once,
     * never synchronously. */
    void (*snapshot)(backend_t *b, const fn_config_t *cfg, const char *path,
                     backend_snapshot_fn cb, void *arg);
    /* Adds "assignment" and "workers" members to the status document. */
    void (*status)(backend_t *b, json_t *status);
    void (*free)(backend_t *b);
} backend_ops_t;

struct backend {
    const backend_ops_t *ops;
};

/* The embedded backend over an in-process assignment table and its
 * placement (both borrowed). */
backend_t *backend_local_new(assignment_t *assignment, placement_t *placement);

/* The distributed backend: assignment replicas at the comma-separated RPC
 * addresses (any order: the leader is found and followed); a table sharded
 * by function has one such list per shard, separated by ';' (a function's
 * shard is a hash of its name; the account's unreserved concurrency is
 * split evenly between shards, reserved concurrency stays exact).
 * Placement at placement_address (status, SnapStart; may be NULL); data_dir
 * (may be NULL) is where `flicker up` lists its role processes
 * (run/roles.json). */
backend_t *backend_remote_new(struct event_base *base, const char *assignment_addresses,
                              const char *placement_address, const char *data_dir,
                              int account_concurrency, err_t *err);
#endif
