/* isolation.c - the sandbox backend behind the isolation seam, and lookup
 * of backends by name.  The sandbox functions already keep the contracts
 * of isolation.h; these wrappers only adapt the handle type. */
#include "worker/isolation.h"
#include <string.h>

static int sb_create(const sandbox_spec_t *spec, void **out, err_t *err)
{
    sandbox_t *sb = NULL;
    int rc = sandbox_create(spec, &sb, err);
    *out = sb;
    return rc;
}
static int sb_api_fd(const void *h) { return sandbox_api_fd(h); }
static int sb_output_fd(const void *h) { return sandbox_output_fd(h); }
static int sb_exit_fd(const void *h) { return sandbox_pidfd(h); }
static pid_t sb_pid(const void *h) { return sandbox_pid(h); }
static int sb_reap(void *h, int *status, err_t *err) { return sandbox_reap(h, status, err); }
static int sb_cpu(void *h, err_t *err) { return sandbox_apply_cpu_limit(h, err); }
/* An idle sandbox is frozen from the worker's event loop: a task stuck in
 * reclaim (a function at its memory limit) must not stall the loop, so the
 * wait is bounded and a freeze still in progress counts as done (the next
 * thaw undoes it either way). */
#define IDLE_FREEZE_WAIT_MS 50
static int sb_freeze(void *h, err_t *err) { return sandbox_freeze_within(h, IDLE_FREEZE_WAIT_MS, err) < 0 ? -1 : 0; }
static int sb_thaw(void *h, err_t *err) { return sandbox_thaw(h, err); }
static uint64_t sb_peak(void *h) { return sandbox_memory_peak(h); }
static void sb_reset_peak(void *h) { sandbox_reset_peak(h); }
static int sb_oom(void *h) { return sandbox_oom_kills(h); }
static int sb_destroy(void *h, err_t *err) { return sandbox_destroy(h, err); }

const isolation_ops_t sandbox_isolation = {
    .name = "sandbox",
    .create = sb_create,
    .api_fd = sb_api_fd,
    .output_fd = sb_output_fd,
    .exit_fd = sb_exit_fd,
    .pid = sb_pid,
    .reap = sb_reap,
    .apply_cpu_limit = sb_cpu,
    .freeze = sb_freeze,
    .thaw = sb_thaw,
    .memory_peak = sb_peak,
    .reset_peak = sb_reset_peak,
    .oom_kills = sb_oom,
    .destroy = sb_destroy,
    .snapshot = NULL,
};

const isolation_ops_t *isolation_by_name(const char *name)
{
    if (!name || !strcmp(name, "sandbox"))
        return &sandbox_isolation;
    if (!strcmp(name, "microvm"))
        return &microvm_isolation;
    return NULL;
}
