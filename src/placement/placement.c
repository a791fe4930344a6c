/* placement.c - see placement.h.  A small array of workers; picking is a
 * linear scan (fleets here are tens of workers, not thousands). */
#include "placement/placement.h"
#include <stdlib.h>
#include "common/util.h"

struct placement {
    worker_t **workers;
    int n;
};

placement_t *placement_new(void) { return xcalloc(1, sizeof(placement_t)); }

void placement_free(placement_t *p)
{
    if (!p)
        return;
    free(p->workers);
    free(p);
}

void placement_register(placement_t *p, worker_t *w)
{
    p->workers = xrealloc(p->workers, (size_t)(p->n + 1) * sizeof *p->workers);
    p->workers[p->n++] = w;
}

worker_t *placement_pick(placement_t *p, int memory_mb)
{
    worker_t *best = NULL;
    int best_free = -1;
    for (int i = 0; i < p->n; i++) {
        int free_mb = worker_config(p->workers[i])->memory_mb - worker_memory_used(p->workers[i]);
        if (free_mb >= memory_mb && free_mb > best_free) {
            best = p->workers[i];
            best_free = free_mb;
        }
    }
    return best;
}

int placement_count(const placement_t *p) { return p->n; }
worker_t *placement_worker(const placement_t *p, int i) { return i < p->n ? p->workers[i] : NULL; }
