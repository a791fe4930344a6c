/* cgroup.h - per-sandbox cgroups behind one small backend interface.
 *
 * Two backends implement cgroup_ops_t: "v1" (one directory per controller
 * hierarchy: memory, cpu, pids, freezer) and "v2" (one directory in the
 * unified hierarchy).  A cgroup_root_t says where flicker's cgroups live:
 * for each hierarchy, <mount>/flicker/<instance>, where <instance> is
 * "sbx-<pid>-<starttime>" of the owning process, so several flicker processes
 * on one host never touch each other's sandboxes and the leftovers of a
 * dead one are recognisable (its pid is gone or has another start time).
 *
 * A sandbox's cgroup is <parent>/<id> in every hierarchy.  Invariants: a
 * cgroup_t is created with all its limits written before any process is
 * attached; cgroup_ops.remove only succeeds when no process is left. */
#ifndef FLICKER_CGROUP_H
#define FLICKER_CGROUP_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"

enum { CG_MAX_DIRS = 4 };

typedef struct cgroup_limits {
    uint64_t memory_bytes;  /* hard limit, swap disabled */
    uint64_t cpu_period_us; /* CFS period */
    uint64_t cpu_quota_us;  /* 0 = unlimited */
    int pids_max;
} cgroup_limits_t;

typedef struct cgroup_ops cgroup_ops_t;

/* Where the parent cgroups of this process's sandboxes are. */
typedef struct cgroup_root {
    const cgroup_ops_t *ops;
    int ndirs;
    char *base[CG_MAX_DIRS];    /* <mount>/flicker (v1: per controller) */
    char *parent[CG_MAX_DIRS];  /* <base>/<instance> */
} cgroup_root_t;

typedef struct cgroup {
    const cgroup_root_t *root;
    char *dir[CG_MAX_DIRS]; /* same order as root->parent */
    int peak_fd;            /* v2: memory.peak kept open for per-fd reset */
    bool peak_rw;           /* v2: memory.peak is writable (per-fd reset, 6.12+) */
    bool peak_sampled;      /* v2: reset unsupported and done: sample memory.current */
    uint64_t peak_base;     /* the sampled maximum */
} cgroup_t;

struct cgroup_ops {
    const char *version; /* "v1" or "v2" */
    /* Creates <parent>/<name> with lim written; *cg is filled.  On failure
     * nothing is left. */
    int (*create)(const cgroup_root_t *root, const char *name, const cgroup_limits_t *lim,
                  cgroup_t *cg, err_t *err);
    /* Sets the CFS quota (0 = unlimited) and period. */
    int (*set_cpu)(cgroup_t *cg, uint64_t quota_us, uint64_t period_us, err_t *err);
    /* Moves pid (a whole process) into the cgroup. */
    int (*attach)(cgroup_t *cg, pid_t pid, err_t *err);
    /* Thaws, or freezes and waits up to wait_ms for every task to be
     * frozen.  Returns 0 when frozen (or thawed), 1 when tasks are still
     * freezing after wait_ms (the freeze stands: the kernel completes it
     * as they reach a freezing point), -1/err when the knob failed. */
    int (*freeze)(cgroup_t *cg, bool frozen, int wait_ms, err_t *err);
    /* SIGKILLs every process, repeatedly, until cgroup.procs is empty or
     * timeout_ms passed.  Returns 0 when empty, -1/err otherwise. */
    int (*kill_all)(cgroup_t *cg, int timeout_ms, err_t *err);
    /* Removes the directories and frees cg's strings (kills first if needed). */
    int (*remove)(cgroup_t *cg, err_t *err);
    uint64_t (*memory_peak)(cgroup_t *cg);
    void (*reset_peak)(cgroup_t *cg);
    int (*oom_kills)(cgroup_t *cg);
};

extern const cgroup_ops_t cgroup_v1_ops;
extern const cgroup_ops_t cgroup_v2_ops;

/* Detects the cgroup layout of this host (v2 when /sys/fs/cgroup is a
 * cgroup2 mount with the memory controller, else v1 with memory, cpu, pids
 * and freezer mounted under /sys/fs/cgroup), creates the parent cgroups
 * and removes stale instances (their processes are killed first).  Returns
 * 0 or -1/err. */
int cgroup_root_init(cgroup_root_t *root, err_t *err);
/* Same for an explicit v2 mount point, accepting missing controllers (whose
 * knobs are then skipped): for tests on a cgroup2 mount with no controllers,
 * which still supports procs, freeze and kill.  cgroup_root_init, in
 * contrast, fails unless memory, cpu and pids are all enabled. */
int cgroup_root_init_v2(cgroup_root_t *root, const char *mountpoint, err_t *err);
/* Removes this instance's parent directories (must be empty) and frees root. */
void cgroup_root_fini(cgroup_root_t *root);
/* Kills and removes stale instances under root->base (the dead owners'). */
void cgroup_root_reap_stale(cgroup_root_t *root);

/* "sbx-<pid>-<starttime>" naming this process (malloc'd), and whether a
 * name of that form belongs to a dead process (pid gone, or reused with
 * another start time); false for anything not of that form.  Also used by
 * the ephemeral storage (ephemeral.c) to scope its crash cleanup. */
char *cgroup_instance_name(void);
bool cgroup_instance_stale(const char *name);

/* Lambda's CPU share: period * memory_mb / 1769, clamped to [1 ms, ncpu
 * periods]. */
uint64_t cgroup_cpu_quota(int memory_mb, uint64_t period_us);
#endif
