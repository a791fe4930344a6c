/* provider.h - what the placement service does with its scaling decisions:
 * start and stop workers.
 *
 * What: a provider is a small struct of function pointers the placement
 * service calls from its loop: on_event() for every fleet transition
 * (REGISTERED, RESTARTED, DRAINING, RETIRED, LOST) and on_scale() once per
 * tick with fleet_scale_decision()'s advice.  Two are built in:
 *
 *   none   the static provider: workers register themselves; it only logs
 *          the decision (when it changes) and never starts or stops anything.
 *   local  `flicker serve worker` processes on this host (the same binary):
 *          delta > 0 starts delta minus the children started but not yet
 *          registered; delta < 0 drains fleet's drain_id; a child whose
 *          worker is RETIRED or LOST gets SIGTERM; exited children are
 *          reaped every tick; children that exit before registering delay
 *          the next start (1 s doubling to 30 s) so a broken worker binary
 *          cannot fork-storm the host.
 *
 * A cloud provider plugs in by filling the same struct (start = create a
 * VM that runs `flicker serve worker --placement ...`, stop = terminate it).
 *
 * Invariants: providers are called only from the placement service's loop
 * thread; they may call fleet_drain() (the service processes the events it
 * emits after on_scale returns) but never free the fleet; destroy() stops
 * and reaps everything the provider started (local: SIGTERM, then SIGKILL
 * after a grace period). */
#ifndef FLICKER_PROVIDER_H
#define FLICKER_PROVIDER_H
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"
#include "placement/fleet.h"

typedef struct placement_provider placement_provider_t;
struct placement_provider {
    const char *name;
    /* One fleet transition (the service logs it and notifies clients too). */
    void (*on_event)(placement_provider_t *p, fleet_t *f, const fleet_event_t *ev);
    /* The tick's scaling advice; `now` is the tick's wall-clock ms. */
    void (*on_scale)(placement_provider_t *p, fleet_t *f, const fleet_scale_t *s, uint64_t now);
    /* Stops what it started and frees the provider. */
    void (*destroy)(placement_provider_t *p);
};

/* The static provider: logs the decision, starts nothing. */
placement_provider_t *provider_none_new(void);

typedef struct provider_local_config {
    const char *exe;            /* worker binary; NULL: this binary (/proc/self/exe) */
    const char *data_dir;       /* sockets DIR/worker-N.sock; passed as --data DIR */
    const char *placement_addr; /* our own RPC address, passed as --placement */
    int memory_mb;              /* --memory-mb of each worker */
} provider_local_config_t;

/* The local provider.  NULL/err when data_dir or placement_addr is missing
 * or memory_mb < 1.  Strings are copied. */
placement_provider_t *provider_local_new(const provider_local_config_t *cfg, err_t *err);

/* The argv of local worker n (1-based), NULL-terminated, malloc'd (free
 * with provider_argv_free):  EXE serve worker --listen unix:DIR/worker-N.sock
 * --id local-N --zone local-a|local-b (odd n: a, even n: b) --placement ADDR
 * --memory-mb M --data DIR.  argv[0] is the resolved binary path. */
char **provider_local_argv(const provider_local_config_t *cfg, int n);
void provider_argv_free(char **argv);

/* Local provider introspection (tests, status): children alive (started,
 * not reaped yet) and the pid of worker id "local-N" (0 if none alive). */
int provider_local_children(const placement_provider_t *p);
pid_t provider_local_pid(const placement_provider_t *p, const char *id);

static inline void provider_free(placement_provider_t *p)
{
    if (p)
        p->destroy(p);
}
#endif
