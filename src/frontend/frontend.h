/* frontend.h - the invoke service: flicker's public HTTP endpoint.
 *
 * Serves the Lambda REST-JSON API (control plane via frontend/control.c,
 * Invoke here) and flicker's own /flicker/ paths (health, status, logs).
 * Event invokes are queued durably (frontend/async_queue.h) and
 * dispatched from the queue through the same path, with Lambda's retries.
 * Every request but /flicker/health is authenticated with SigV4 unless
 * auth is off.  Invoke resolves the function, checks payload limits, asks
 * assignment for an environment (which throttles over the concurrency
 * limits), hands the event to it and returns the result.
 *
 * One libevent loop; no blocking calls other than SQLite lookups. */
#ifndef FLICKER_FRONTEND_H
#define FLICKER_FRONTEND_H
#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>
#include "common/err.h"
#include "frontend/backend.h"
#include "store/store.h"
#include "worker/fnlog.h"

typedef struct frontend frontend_t;

typedef struct frontend_config {
    const char *listen_host;     /* e.g. "127.0.0.1" */
    int listen_port;
    const char *region;
    const char *account_id;
    bool no_auth;
    const char *access_key_id;
    const char *secret_access_key;
    int account_concurrency;
    const char *data_dir;          /* holds async.db (the Event queue) */
    const char *mode;              /* "embedded" or "split" (status) */
    int async_retry_delays_s[2];   /* after the 1st and 2nd failed attempt (60, 120) */
    const char *isolation;         /* the workers' default isolation ("sandbox" or
                                      "microvm"): decides what SnapStart can do */
} frontend_config_t;

/* Binds the listening socket and starts serving on base.  The other
 * objects are borrowed and must outlive the frontend; backend is where
 * environments come from (backend.h: in-process or remote). */
frontend_t *frontend_new(struct event_base *base, const frontend_config_t *cfg, store_t *store,
                         backend_t *backend, fnlog_dir_t *logs, err_t *err);
/* Stops accepting new requests (the listener closes; open connections
 * stay until frontend_free). */
void frontend_stop_listening(frontend_t *fe);
/* Number of invocations this frontend is serving right now. */
int frontend_in_flight(const frontend_t *fe);
/* Closes every connection and frees the frontend.  Call after the
 * backend can no longer call back (local: assignment_free/worker_free). */
void frontend_free(frontend_t *fe);
/* The port actually bound (useful with port 0). */
int frontend_port(const frontend_t *fe);
#endif
