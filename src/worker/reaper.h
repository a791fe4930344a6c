/* reaper.h - destroys environments off the worker's event loop.
 *
 * Tearing an environment down can block for seconds: the kernel kills a
 * pid namespace of a thousand forked processes, a cgroup empties slowly, a
 * loop device detaches.  The worker's event loop also answers invokes and
 * sends placement its heartbeats, so it hands each destroy to one reaper
 * thread instead.  Invariant: every handle submitted is destroyed exactly
 * once; reaper_drain returns only when none is pending or in progress. */
#ifndef FLICKER_REAPER_H
#define FLICKER_REAPER_H
#include <stdbool.h>

#include "common/err.h"

typedef int (*reaper_destroy_fn)(void *handle, err_t *err);

/* Queues destroy(handle); label (copied) names it in a warning when the
 * destroy fails or takes over a second.  Never blocks on the destroy.  If
 * the thread cannot be started, destroys inline. */
void reaper_submit(reaper_destroy_fn destroy, void *handle, const char *label);

/* Waits until every submitted destroy has finished (a worker's shutdown:
 * nothing of it may outlive the process). */
void reaper_drain(void);

/* Waits until no destroy submitted under label is queued or running (an
 * environment created again under the id of one still being destroyed:
 * their cgroups and run directories share its name).  Returns whether it
 * had to wait. */
bool reaper_wait_for(const char *label);

/* Destroys queued and in progress right now (for status and tests). */
int reaper_pending(void);
#endif
