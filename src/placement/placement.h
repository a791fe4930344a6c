/* placement.h - the fleet of workers and where a new environment goes.
 *
 * Workers register with their capacity (memory) and zone.  For each new
 * environment placement picks the registered worker with the most free
 * memory, preferring a zone that holds fewer of that function's
 * environments (zone spread).  In the embedded mode the fleet is the one
 * in-process worker; the interface is the seam where remote, leased
 * workers plug in.  Not thread-safe: the frontend's loop owns it. */
#ifndef FLICKER_PLACEMENT_H
#define FLICKER_PLACEMENT_H
#include <jansson.h>
#include "worker/worker.h"

typedef struct placement placement_t;

placement_t *placement_new(void);
void placement_free(placement_t *p);
/* Adds a worker to the fleet (not owned by placement). */
void placement_register(placement_t *p, worker_t *w);
/* Picks a worker with at least memory_mb free, or NULL when the fleet is
 * full. */
worker_t *placement_pick(placement_t *p, int memory_mb);
/* Number of registered workers and their i-th. */
int placement_count(const placement_t *p);
worker_t *placement_worker(const placement_t *p, int i);
#endif
