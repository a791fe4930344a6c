/* sandbox.h - hardened Linux sandboxes: one per execution environment.
 *
 * A sandbox is a process tree in its own user, mount, pid, ipc, uts,
 * network and cgroup namespaces, pivot_root'ed into a read-only root built
 * from the host's /usr (the runtimes' interpreters), with the function's
 * code read-only at /var/task, flicker's runtime clients read-only at
 * /var/runtime, and a private disk-backed /tmp of the requested size.  It
 * has no capabilities, no_new_privs, a seccomp deny-list, and cgroup limits
 * on memory (= MemorySize), CPU (in proportion to memory, as Lambda) and
 * pids.
 * Its network namespace has only loopback: the Runtime API listening socket
 * (127.0.0.1:9001 inside) is created inside the namespace and handed back to
 * the worker, which serves it; nothing else is reachable.
 *
 * PID 1 inside is flicker-init (static): it starts the runtime, reaps
 * orphans, and exits with the runtime's status (128+signal if killed), which
 * tears the whole pid namespace down.
 *
 * cgroup v1 (controllers memory, cpu, pids, freezer) and v2 (unified) are
 * both supported; the backend is chosen by sandbox_system_init().
 *
 * Not thread-safe per sandbox; different sandboxes may be used from
 * different threads (sandbox_create may run concurrently in several).
 *
 * Usage notes (details in docs/sandbox.md):
 *  - PID 1 is cloned with exit signal 0: no SIGCHLD is sent and a
 *    waitpid(-1) elsewhere does not reap it; watch sandbox_pidfd instead.
 *  - The api, output and pid fds are non-blocking, close-on-exec and owned
 *    by the sandbox: unregister them from event loops before
 *    sandbox_destroy, which closes them.  Drain the output pipe.
 *  - sandbox_create blocks for the jail setup (a few ms, plus ~10-30 ms
 *    when the /tmp image pool is empty; at most 10 s),
 *    sandbox_destroy until PID 1 is reaped and the /tmp image deleted
 *    (~1-10 ms), sandbox_freeze until frozen (sandbox_freeze_within
 *    for a bounded wait).
 *  - code_dir and runtime_dir contents must be readable by others (the
 *    function runs as an unprivileged host uid); their parents may be
 *    private.
 *  - /tmp is an ext4 image of exactly ephemeral_mb on a loop device (disk,
 *    not memory: its page cache is reclaimable), private to the sandbox and
 *    deleted by sandbox_destroy; tmpfs (charged to memory) only without a
 *    state_dir or loop devices. */
#ifndef FLICKER_SANDBOX_H
#define FLICKER_SANDBOX_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"

typedef struct sandbox_spec {
    const char *id;           /* unique, [A-Za-z0-9_-]{1,64}: names the cgroups */
    const char *code_dir;     /* host dir mounted read-only at /var/task */
    const char *runtime_dir;  /* host dir mounted read-only at /var/runtime (or NULL) */
    int memory_mb;            /* memory limit (MemorySize) */
    int ephemeral_mb;         /* size of /tmp */
    int pids_max;             /* pids limit (0 = default 1024) */
    char *const *argv;        /* program to run inside, as seen inside */
    char *const *envp;        /* its complete environment */
    bool defer_cpu_limit;     /* run unthrottled until sandbox_apply_cpu_limit
                                 (Init gets the host's CPUs, as Lambda boosts Init) */
    /* Used by other isolation backends (worker/isolation.h), ignored here: */
    const char *runtime;      /* Lambda runtime id (picks a microVM's guest image) */
    const char *code_key;     /* names code_dir's content (hex, caches its disk image) */
    const char *restore_from; /* restore this snapshot instead of booting (or NULL) */
    const char *state_dir;    /* the worker's private scratch directory (or NULL) */
} sandbox_spec_t;

typedef struct sandbox sandbox_t;

/* One-time setup for this host: finds the cgroup version, creates the
 * parent cgroup "flicker" (or reuses it), kills and removes any sandbox left
 * by a previous run (kill -9 recovery).  init_path is the host path of the
 * static flicker-init binary.  state_dir (the worker's data directory, or
 * NULL) holds the sandboxes' /tmp images in state_dir/ephemeral/ (see
 * ephemeral.h; a dead instance's leftovers there are removed now); with
 * NULL, or when loop devices are unusable on this host (logged), /tmp is a
 * tmpfs charged to the sandbox's memory.  Returns 0 or -1/err. */
int sandbox_system_init(const char *init_path, const char *state_dir, err_t *err);
/* Undoes sandbox_system_init for a clean exit: removes this process's
 * (empty) parent cgroups and its /tmp image pool.  Call after every sandbox
 * is destroyed. */
void sandbox_system_shutdown(void);
/* Which cgroup backend is in use: "v1" or "v2" (after system init). */
const char *sandbox_cgroup_version(void);

/* Creates and starts a sandbox running spec->argv.  On success *out is a
 * running sandbox whose runtime may already be executing.  On failure
 * nothing is left behind (no process, cgroup or mount). */
int sandbox_create(const sandbox_spec_t *spec, sandbox_t **out, err_t *err);

/* The listening socket of the Runtime API (127.0.0.1:9001 inside the
 * sandbox's netns), non-blocking; owned by the sandbox until
 * sandbox_destroy (the caller may serve it but must not close it). */
int sandbox_api_fd(const sandbox_t *sb);
/* Read end of the pipe carrying the runtime's stdout and stderr (merged),
 * non-blocking; owned by the sandbox. */
int sandbox_output_fd(const sandbox_t *sb);
/* A pidfd for PID 1 of the sandbox: readable when the sandbox has exited. */
int sandbox_pidfd(const sandbox_t *sb);
/* Host pid of the sandbox's PID 1. */
pid_t sandbox_pid(const sandbox_t *sb);

/* Sends sig to PID 1 through the pidfd (flicker-init forwards SIGTERM,
 * SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 to the runtime; SIGKILL kills
 * the sandbox).  Returns 0, or -1/err (ESRCH once it has exited). */
int sandbox_signal(sandbox_t *sb, int sig, err_t *err);

/* After sandbox_pidfd is readable: reaps PID 1 and returns its wait status
 * in *status.  Returns 1 when reaped, 0 when still running, -1/err. */
int sandbox_reap(sandbox_t *sb, int *status, err_t *err);

/* Applies the CPU quota proportional to memory (1769 MB = 1 vCPU). */
int sandbox_apply_cpu_limit(sandbox_t *sb, err_t *err);

/* Freezes / thaws every process of the sandbox (cgroup freezer).
 * sandbox_freeze waits until all are frozen (at most 10 s: ETIMEDOUT). */
int sandbox_freeze(sandbox_t *sb, err_t *err);
int sandbox_thaw(sandbox_t *sb, err_t *err);
/* Freezes, waiting at most wait_ms: 0 when frozen, 1 when some tasks are
 * still freezing (the freeze stands and completes as they reach a freezing
 * point; sandbox_thaw undoes it either way), -1/err.  For callers that must
 * not block, such as the worker's event loop freezing an idle sandbox whose
 * tasks may be stuck in reclaim. */
int sandbox_freeze_within(sandbox_t *sb, int wait_ms, err_t *err);

/* Peak memory use since the last sandbox_reset_peak (or creation), bytes. */
uint64_t sandbox_memory_peak(sandbox_t *sb);
void sandbox_reset_peak(sandbox_t *sb);
/* Number of OOM kills in the sandbox's memory cgroup since creation. */
int sandbox_oom_kills(sandbox_t *sb);

/* Kills every process (SIGKILL), reaps PID 1, removes cgroups, deletes
 * the /tmp image (its loop device has detached itself) and frees
 * everything.  Always succeeds in freeing sb; returns -1/err if some
 * kernel object could not be removed (it is logged and retried at the next
 * sandbox_system_init). */
int sandbox_destroy(sandbox_t *sb, err_t *err);

/* Number of sandboxes alive in this process. */
int sandbox_count(void);
#endif
