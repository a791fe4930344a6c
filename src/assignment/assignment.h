/* assignment.h - the table of execution environments, and concurrency.
 *
 * For each function version's exact configuration (fn_config_t.config_key)
 * assignment knows its environments and their states.  assignment_acquire
 * hands an invoke an idle environment (warm start) or has placement pick a
 * worker that creates one (cold start); assignment_release takes it back
 * (idle again, kept warm for the keep-alive time, or retired when its
 * function changed).  It also counts invocations in flight, per function
 * and for the account, and throttles over the limits (Lambda's 429s).
 *
 * Invariants: an environment is handed to at most one request at a time
 * (state busy from acquire to release); every acquire ends in exactly one
 * callback, never called synchronously from assignment_acquire; the
 * in-flight counters equal the number of acquires not yet released.
 *
 * Embedded mode: all in the frontend's event loop; the functions here are
 * the seam where a remote, journaled assignment leader plugs in. */
#ifndef FLICKER_ASSIGNMENT_H
#define FLICKER_ASSIGNMENT_H
#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include "placement/placement.h"
#include "store/store.h"
#include "worker/worker.h"

typedef struct assignment assignment_t;
typedef struct acquire acquire_t;

typedef struct assignment_config {
    int account_concurrency;   /* account limit (Lambda default 1000) */
    int keep_alive_s;          /* idle environments are destroyed after this */
} assignment_config_t;

enum acquire_status {
    ACQUIRE_OK,           /* env is yours until assignment_release */
    ACQUIRE_THROTTLED,    /* 429: reason says which limit */
    ACQUIRE_INIT_FAILED,  /* the new environment's Init failed: result holds the error */
    ACQUIRE_NO_CAPACITY,  /* no worker can host it */
    ACQUIRE_FAILED,       /* the sandbox could not be created: message says why */
};

typedef struct acquire_result {
    enum acquire_status status;
    env_t *env;
    bool cold;                        /* a new environment was created */
    const char *reason;               /* throttle Reason */
    const char *message;
    const invoke_result_t *init;      /* for ACQUIRE_INIT_FAILED */
} acquire_result_t;

typedef void (*acquire_fn)(const acquire_result_t *result, void *arg);

assignment_t *assignment_new(struct event_base *base, placement_t *placement,
                             const assignment_config_t *cfg);
/* Destroys every environment it knows (silently) and frees the table. */
void assignment_free(assignment_t *a);

/* Gets an environment for cfg.  total_reserved is the account's sum of
 * reserved concurrency (for the unreserved pool).  The callback runs later,
 * exactly once, unless assignment_cancel is called first.  Returns a
 * handle valid until the callback runs. */
acquire_t *assignment_acquire(assignment_t *a, const fn_config_t *cfg, int total_reserved,
                              acquire_fn cb, void *arg);
/* The requester went away: the callback will not run; an environment
 * being created for it becomes idle when ready.  Returns the arg given to
 * assignment_acquire (ownership back to the caller). */
void *assignment_cancel(assignment_t *a, acquire_t *acq);
/* Gives back an environment acquired with ACQUIRE_OK.  Safe to call from
 * the env's done callback, including when the env died (state dead). */
void assignment_release(assignment_t *a, env_t *env);

/* Retires every environment of function `name` for which still_current
 * returns false (idle ones now, busy ones when released). */
void assignment_function_changed(assignment_t *a, const char *name,
                                 bool (*still_current)(const fn_config_t *cfg, void *arg), void *arg);

/* The throttling rule, shared with the assignment service: NULL when one
 * more invocation may start, else Lambda's Reason.  A function with
 * reserved_concurrency >= 0 is limited to that many in flight
 * (fn_in_flight); the others share account_concurrency - total_reserved
 * (unreserved_in_flight counts them).  Pure. */
const char *assignment_throttle_reason(int reserved_concurrency, int fn_in_flight,
                                       int unreserved_in_flight, int account_concurrency,
                                       int total_reserved);

/* In-flight count for the account / for a function name. */
int assignment_in_flight(const assignment_t *a);
int assignment_in_flight_of(const assignment_t *a, const char *name);
/* {in_flight, account_limit, environments, functions:{name:n}} */
json_t *assignment_status(const assignment_t *a);
#endif
