/* worker_service.h - the worker role's RPC face (docs/protocol.md, Worker).
 *
 * Serves env.create / env.invoke / env.destroy / env.list / worker.status
 * over an rpc server on top of an in-process worker_t, notifies env.dead
 * to every connection that has sent it a request, and registers with
 * placement and heartbeats it (rpc_client).
 *
 * Environments: the caller (the assignment leader) names them (env_id).
 * env.create answers only when Init finished or failed; if the caller's
 * connection dies first, the environment is kept (env.list shows it).
 * env.create of an id that exists with the same config_key is idempotent
 * (answers when it is ready, at once if it already is).  A call whose
 * client vanished is answered into the void (dropped by rpc).
 *
 * Placement: worker.register is retried every heartbeat period until
 * placement answers (rotating over the addresses given); then
 * worker.heartbeat every period.  A heartbeat answered "lost" makes the
 * worker destroy its environments (placement and the assignment dropped
 * them; env.dead is notified for each) and register again; "retired" or
 * an error reply from placement (e.g. it restarted and no longer knows
 * the id) makes it register again.  Transport failures are logged, never
 * fatal, and do not re-register (that would make placement forget the
 * environments).
 *
 * Everything runs on the worker's event loop. */
#ifndef FLICKER_WORKER_SERVICE_H
#define FLICKER_WORKER_SERVICE_H
#include <event2/event.h>
#include "common/err.h"
#include "worker/worker.h"

typedef struct worker_service worker_service_t;

typedef struct worker_service_config {
    const char *address;     /* the address placement hands out for this worker */
    const char *placement;   /* "ADDR[,ADDR...]", or NULL/"" for no registration */
    int heartbeat_ms;        /* heartbeat (and registration retry) period; <= 0: 1000 */
} worker_service_config_t;

/* A service over w (borrowed; must outlive the service).  Not listening
 * yet; registration starts with worker_service_start.  NULL/err on a bad
 * placement address. */
worker_service_t *worker_service_new(struct event_base *base, worker_t *w,
                                     const worker_service_config_t *cfg, err_t *err);
/* Listens on addr ("tcp:HOST:PORT" or "unix:PATH").  0 or -1/err. */
int worker_service_listen(worker_service_t *ws, const char *addr, err_t *err);
/* The port of the first TCP listener (0 if none). */
int worker_service_port(const worker_service_t *ws);
/* Changes the address given to placement (before worker_service_start). */
void worker_service_set_address(worker_service_t *ws, const char *address);
/* Starts registering with placement (no-op without placement). */
void worker_service_start(worker_service_t *ws);
/* True once placement accepted the registration (and no later heartbeat
 * asked for a new one). */
bool worker_service_registered(const worker_service_t *ws);
/* Closes the listeners and connections, answers pending calls (dropped),
 * destroys every environment (silently) and frees the service.  The
 * worker's teardown of those environments finishes in worker_free or on
 * the loop.  Not from inside an rpc callback.  NULL is a no-op. */
void worker_service_free(worker_service_t *ws);
#endif
