/* isolation.h - the seam between the worker and what isolates an
 * execution environment: a hardened Linux sandbox (worker/sandbox.h) or a
 * QEMU microVM (worker/microvm.h).
 *
 * An isolation backend starts the function's runtime (spec->argv with
 * spec->envp, the same paths inside either backend: /var/task,
 * /var/runtime, /usr/bin/python3, ...) and hands the worker three file
 * descriptors it serves on its event loop:
 *   - api_fd: a listening socket whose connections are the runtime's
 *     connections to the Runtime API (127.0.0.1:9001 as the runtime sees it);
 *   - output_fd: a pipe carrying the runtime's stdout+stderr;
 *   - exit_fd: becomes readable once the runtime has exited (or the whole
 *     environment died); then reap() gives a wait status.
 * Everything else (freeze, CPU limit, memory peak, OOM count, destroy)
 * mirrors sandbox.h, whose contracts every backend keeps.
 *
 * Invariants: fds stay owned by the backend until destroy (the worker
 * unregisters them first); destroy always frees the handle and leaves no
 * process, cgroup, mount, socket or temporary file behind. */
#ifndef FLICKER_ISOLATION_H
#define FLICKER_ISOLATION_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"
#include "worker/sandbox.h"

typedef struct isolation_ops {
    const char *name;  /* "sandbox" or "microvm" */
    /* spec is sandbox_spec_t (its runtime/code_key/restore_from fields are for
     * backends that need them).  On failure nothing is left behind. */
    int (*create)(const sandbox_spec_t *spec, void **out, err_t *err);
    int (*api_fd)(const void *h);
    int (*output_fd)(const void *h);
    int (*exit_fd)(const void *h);
    pid_t (*pid)(const void *h);        /* host pid of the environment's main process */
    int (*reap)(void *h, int *status, err_t *err);     /* 1 reaped, 0 running, -1 */
    int (*apply_cpu_limit)(void *h, err_t *err);
    /* Freezes an idle environment without stalling the caller for long (a
     * freeze may complete after it returns 0); thaw undoes it. */
    int (*freeze)(void *h, err_t *err);
    int (*thaw)(void *h, err_t *err);
    uint64_t (*memory_peak)(void *h);
    void (*reset_peak)(void *h);
    int (*oom_kills)(void *h);
    /* Kills and frees everything of h; may block for seconds (a large
     * process tree, a loop device): the worker calls it from its reaper
     * thread, so it must touch only h and thread-safe backend state. */
    int (*destroy)(void *h, err_t *err);
    /* Optional (NULL when unsupported): saves the paused environment's
     * complete state to path (SnapStart).  The environment must be idle
     * (its runtime waiting in GET /next or /restore/next); afterwards it is
     * still paused and should be destroyed.  Returns 0 or -1/err. */
    int (*snapshot)(void *h, const char *path, err_t *err);
} isolation_ops_t;

extern const isolation_ops_t sandbox_isolation;
extern const isolation_ops_t microvm_isolation;

/* The backend called name ("sandbox" or "microvm"), or NULL. */
const isolation_ops_t *isolation_by_name(const char *name);
#endif
