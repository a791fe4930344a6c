/* worker.h - a worker: runs many execution environments on this host.
 *
 * An environment (env_t) is one sandbox running one function version's
 * runtime, plus the Runtime API the worker serves it (an HTTP server on the
 * listening socket the sandbox made inside its network namespace).  Its
 * lifecycle:
 *
 *   STARTING --first GET /next--> IDLE --env_invoke--> BUSY --response/error--> IDLE
 *       |                          |                     |
 *       | init error, crash,       | keep-alive expiry,  | timeout, crash, OOM,
 *       | Init > 10 s              | retire, shutdown    | retire after finishing
 *       v                          v                     v
 *     DEAD  <----------------------+---------------------+   (sandbox destroyed)
 *
 * Everything runs on the worker's libevent loop; callbacks are invoked from
 * it and never synchronously from the call that arms them.  An IDLE
 * environment is frozen (cgroup freezer) after a short idle period and
 * thawed on the next event.
 *
 * Invariants: at most one event is in an environment at a time; every
 * env_invoke gets exactly one done callback; a DEAD environment's sandbox is
 * gone (no process, cgroup or mount) before its dead callback returns. */
#ifndef FLICKER_WORKER_H
#define FLICKER_WORKER_H
#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"
#include "store/store.h"
#include "worker/fnlog.h"

typedef struct worker worker_t;
typedef struct env env_t;

#define ENV_ID_MAX 39   /* environment ids: 1-39 of [A-Za-z0-9_-] (they name cgroups) */

enum env_state { ENV_STARTING, ENV_IDLE, ENV_BUSY, ENV_DEAD };

typedef struct worker_config {
    const char *id;             /* e.g. "worker-1" */
    const char *zone;           /* e.g. "local-a" */
    const char *runtimes_dir;   /* host dir mounted at /var/runtime (NULL: none;
                                   only provided runtimes work then) */
    const char *region;
    int memory_mb;              /* capacity offered for environments */
    int cpus;
    int init_timeout_s;         /* Lambda: 10 */
    fnlog_dir_t *logs;          /* where function logs go */
    const char *isolation;      /* default backend: "sandbox" (NULL) or "microvm";
                                   a function's fn_config_t.isolation overrides it */
    const char *state_dir;      /* the worker's private scratch dir (microVM disks) */
    store_t *code_store;        /* NULL: run code from the config's code_dir;
                                   else the code is this store's DATA/code/<hex>,
                                   fetched (store_ensure_code) when absent.
                                   Borrowed; used on the worker's loop thread. */
} worker_config_t;

/* The outcome of one event. */
enum invoke_status {
    INVOKE_OK,              /* the runtime posted a response */
    INVOKE_FUNCTION_ERROR,  /* the runtime posted an error (handled by the runtime) */
    INVOKE_FAILED,          /* timeout, crash, OOM, init failure, oversize response:
                               body holds Lambda's error; the env is dead */
};

typedef struct invoke_result {
    enum invoke_status status;
    char *body;             /* response or error body (malloc'd, owned by result) */
    size_t body_len;
    const char *log_tail;   /* the last 4 KB of this invocation's log (NUL-terminated) */
    double duration_ms;
    bool system_error;      /* the platform failed (e.g. the worker was lost), not the
                               function: a retryable ServiceException for the caller;
                               body then holds a plain message */
    bool not_delivered;     /* with system_error: the event never reached the
                               function (stale environment), so retrying is safe */
} invoke_result_t;

typedef struct invoke_event {
    const char *request_id;
    const void *payload;
    size_t payload_len;
    const char *client_context;   /* decoded JSON text or NULL */
    const char *invoked_arn;      /* ARN as invoked (qualified when it was) */
} invoke_event_t;

/* Called once when a STARTING environment becomes IDLE (ok) or fails to
 * initialize (ok == false; *result holds Lambda's init error body). */
typedef void (*env_ready_fn)(env_t *env, bool ok, const invoke_result_t *result, void *arg);
/* Called exactly once per env_invoke.  result is valid during the call. */
typedef void (*env_done_fn)(env_t *env, const invoke_result_t *result, void *arg);
/* Called when an environment dies outside an invocation (idle crash,
 * keep-alive expiry, retirement).  The env pointer is freed right after. */
typedef void (*env_dead_fn)(env_t *env, void *arg);

worker_t *worker_new(struct event_base *base, const worker_config_t *cfg, err_t *err);
/* Destroys every environment (failing in-flight events) and frees the worker. */
void worker_free(worker_t *w);

/* Starts a new environment for cfg (the config is copied).  ready is called
 * later; dead when the env later dies outside an invocation.  Returns NULL
 * with err when the sandbox could not even be created. */
env_t *worker_env_create(worker_t *w, const fn_config_t *cfg, env_ready_fn ready, env_dead_fn dead,
                         void *arg, err_t *err);
/* The same with the caller's id for the environment (NULL: a random one,
 * as worker_env_create).  Fails with EINVAL for an invalid id and EEXIST
 * when an environment with that id is still in the worker (also while it
 * is being torn down). */
env_t *worker_env_create_id(worker_t *w, const char *id, const fn_config_t *cfg, env_ready_fn ready,
                            env_dead_fn dead, void *arg, err_t *err);
/* True if id is usable as an environment id. */
bool worker_env_id_valid(const char *id);
/* The environment with that id, or NULL (O(1): hash table).  One that
 * died on its own is found, with env_state() == ENV_DEAD, until its
 * teardown has finished (a fresh loop iteration later); one given to
 * env_destroy is not found any more (its pointer is the worker's). */
env_t *worker_env_find(const worker_t *w, const char *id);
/* Iteration over the environments worker_env_find would find; do not
 * create or destroy environments while iterating. */
env_t *worker_env_first(const worker_t *w);
env_t *worker_env_next(const env_t *env);
int worker_env_count(const worker_t *w);
/* SnapStart: boots an environment of cfg (its backend must support
 * snapshots: microvm), runs Init, saves the whole environment's state to
 * path (atomically: a temporary file renamed; parent directories made) and
 * destroys it.  cb(ok, message) is called exactly once, never from inside
 * this call (message: why it failed, e.g. Lambda's Init error body).
 * Returns 0, or -1/err when the environment could not even start (then cb
 * is never called).  The environment counts against the worker's memory
 * while it exists. */
typedef void (*worker_snapshot_fn)(bool ok, const char *message, void *arg);
int worker_snapshot_create(worker_t *w, const fn_config_t *cfg, const char *path,
                           worker_snapshot_fn cb, void *arg, err_t *err);

/* Hands one event to an IDLE environment.  done is called exactly once. */
void env_invoke(env_t *env, const invoke_event_t *ev, env_done_fn done, void *arg);
/* Destroys an environment now (any in-flight event fails).  No callbacks
 * are called for it afterwards. */
void env_destroy(env_t *env);

enum env_state env_state(const env_t *env);
const fn_config_t *env_config(const env_t *env);
const char *env_id(const env_t *env);
worker_t *env_worker(const env_t *env);
/* The arg given to worker_env_create (the owner's handle for this env). */
void *env_owner(const env_t *env);
/* Host pid of the environment's sandbox (its PID 1), 0 if none. */
pid_t env_pid(const env_t *env);

/* Capacity accounting: memory committed to environments. */
int worker_memory_used(const worker_t *w);
const worker_config_t *worker_config(const worker_t *w);
struct event_base *worker_event_base(const worker_t *w);
/* Adds {id, zone, memory, environments:[...]} to a status object. */
json_t *worker_status(const worker_t *w);

/* For a worker process starting with default isolation `isolation`: with
 * "microvm", sets up the microVM backend and decides its accelerator now
 * (logged: KVM or TCG and why), failing (-1, logged) when QEMU or the
 * guest is missing; otherwise only sweeps what a killed predecessor left,
 * best effort (0).  state_dir: the worker's data directory.  Defined in
 * worker_main.c; `flicker up --embedded` calls it too. */
int start_microvms(const char *isolation, const char *state_dir);
#endif
