/* placement_service.h - the placement role's RPC server around the fleet.
 *
 * What: serves docs/protocol.md's Placement methods (worker.register,
 * worker.heartbeat, placement.pick, placement.env_added,
 * placement.env_removed, placement.workers, placement.status) over
 * flicker's RPC, runs a timer (~250 ms) that calls fleet_tick(), logs every
 * transition, notifies every client connection `worker.lost {worker_id,
 * address}` / `worker.retired {worker_id}`, and hands each event and the tick's
 * fleet_scale_decision() to a provider (provider.h).
 *
 * How: one fleet_t (fleet.h) owned by the service, used only from the
 * service's event_base; time is now_wall_ms().  Events emitted by any call
 * (register, tick, a provider's fleet_drain) are processed right after it:
 * logged, broadcast, handed to the provider, cleared.
 *
 * The worker's id travels as `worker_id`: `id` is the RPC layer's request
 * id (docs/rpc.md), so it cannot be a parameter.
 *
 * Invariants: every request gets exactly one reply (result or error with a
 * code: InvalidParams, UnknownWorker, WorkerGone, NoCapacity,
 * UnknownMethod); malformed params never touch the fleet; the fleet's event
 * list is empty whenever control returns to the loop; notifications reach
 * the connections that have sent at least one frame (the RPC server has no
 * accept hook), and a closed connection is forgotten in its close callback. */
#ifndef FLICKER_PLACEMENT_SERVICE_H
#define FLICKER_PLACEMENT_SERVICE_H
#include <event2/event.h>
#include <jansson.h>
#include "common/err.h"
#include "placement/fleet.h"
#include "placement/provider.h"

typedef struct placement_service placement_service_t;

typedef struct placement_service_config {
    fleet_config_t fleet;               /* copied; see fleet_config_default */
    int tick_ms;                        /* fleet_tick period; <= 0: 250 */
} placement_service_config_t;

/* A service with no listener yet.  cfg NULL: fleet defaults.  NULL/err when
 * the fleet configuration is inconsistent (fleet_new). */
placement_service_t *placement_service_new(struct event_base *base,
                                           const placement_service_config_t *cfg, err_t *err);
/* Listens on addr (rpc_server_listen syntax).  0 or -1/err. */
int placement_service_listen(placement_service_t *ps, const char *addr, err_t *err);
/* The first TCP listener's port (0 if none). */
int placement_service_port(const placement_service_t *ps);
/* Sets the provider (borrowed: the caller frees it after the service).
 * NULL: decisions are dropped. */
void placement_service_set_provider(placement_service_t *ps, placement_provider_t *provider);
/* The fleet (for status and tests); owned by the service. */
fleet_t *placement_service_fleet(placement_service_t *ps);
/* Runs one tick now (tests; the timer does the same). */
void placement_service_tick(placement_service_t *ps);
/* Stops the timer and the server (connections closed) and frees the fleet. */
void placement_service_free(placement_service_t *ps);
#endif
