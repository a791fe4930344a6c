/* cgroup.c - cgroup v1 and v2 backends for sandboxes (see cgroup.h).
 *
 * v1: four hierarchies (memory, cpu, pids, freezer), each with
 * <mount>/flicker/<instance>/<id>.  Memory: limit_in_bytes and, when the
 * kernel accounts swap, memsw.limit_in_bytes set to the same value
 * (swappiness 0), so no swap is used; OOM kills are the "oom_kill" line of
 * memory.oom_control; the peak is memory.max_usage_in_bytes (reset by
 * writing 0).  Freeze: freezer.state FROZEN, polled until it reads FROZEN.
 * Kill: freeze, SIGKILL every pid in cgroup.procs, thaw (v1 frozen tasks
 * only die once thawed), repeat until empty.
 *
 * v2: one directory <mount>/flicker/<instance>/<id> with memory.max,
 * memory.swap.max=0, cpu.max, pids.max; freeze via cgroup.freeze, waiting
 * for "frozen 1" in cgroup.events; kill via cgroup.kill; OOM kills from
 * memory.events "oom_kill"; peak from memory.peak, kept open so a write
 * resets it for that fd (Linux 6.12+); where that is unsupported, a reset
 * switches to the maximum of memory.current sampled at each query.  Controller knobs that do not exist (a cgroup2 mount whose
 * controllers are bound to v1) are skipped, so procs/freeze/kill still work.
 *
 * Nothing here keeps global state; all of it lives in cgroup_root_t and
 * cgroup_t.  Directory names are validated by the caller (sandbox ids). */
#include "worker/cgroup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>

#include "common/log.h"
#include "common/util.h"

#define ROLE "sandbox"
#define CGROUP_MNT "/sys/fs/cgroup"

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static int read_small(const char *path, char *buf, size_t len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, len - 1);
    int e = errno;
    close(fd);
    if (n < 0) {
        errno = e;
        return -1;
    }
    buf[n] = 0;
    return 0;
}

static uint64_t read_u64_file(const char *path) {
    char buf[64];
    if (read_small(path, buf, sizeof(buf)) < 0) return 0;
    return strtoull(buf, NULL, 10);
}

/* Value of "key N" in a flat keyed file (memory.events, oom_control). */
static long read_keyed(const char *path, const char *key) {
    char buf[2048];
    if (read_small(path, buf, sizeof(buf)) < 0) return -1;
    size_t kl = strlen(key);
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ') return strtol(line + kl + 1, NULL, 10);
    }
    return -1;
}

static bool file_exists(const char *path) { return access(path, F_OK) == 0; }

static int knob(const char *dir, const char *name, const char *value, err_t *err) {
    _cleanup_free_ char *p = xasprintf("%s/%s", dir, name);
    return write_str(p, value, err);
}

/* Writes the knob if it exists (optional controllers). */
static int knob_opt(const char *dir, const char *name, const char *value, err_t *err) {
    _cleanup_free_ char *p = xasprintf("%s/%s", dir, name);
    if (!file_exists(p)) return 0;
    return write_str(p, value, err);
}

/* Reads cgroup.procs of dir; returns the number of pids (up to max) in out. */
static int read_procs(const char *dir, pid_t *out, int max) {
    _cleanup_free_ char *p = xasprintf("%s/cgroup.procs", dir);
    FILE *f = fopen(p, "re");
    if (!f) return errno == ENOENT ? 0 : -1;
    int n = 0;
    long v;
    while (n < max && fscanf(f, "%ld", &v) == 1) out[n++] = (pid_t)v;
    fclose(f);
    return n;
}

static int kill_procs(const char *dir) {
    pid_t pids[512];
    int n = read_procs(dir, pids, (int)ARRAY_LEN(pids));
    for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
    return n;
}

static int rmdir_retry(const char *dir, err_t *err) {
    for (int i = 0; i < 200; i++) {
        if (rmdir(dir) == 0 || errno == ENOENT) return 0;
        if (errno != EBUSY) break;
        sleep_us(5000);
    }
    return err_sys(err, "rmdir %s", dir);
}

static void free_dirs(cgroup_t *cg) {
    for (int i = 0; i < CG_MAX_DIRS; i++) {
        free(cg->dir[i]);
        cg->dir[i] = NULL;
    }
    if (cg->peak_fd >= 0) close(cg->peak_fd);
    cg->peak_fd = -1;
}

uint64_t cgroup_cpu_quota(int memory_mb, uint64_t period_us) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1) ncpu = 1;
    uint64_t q = period_us * (uint64_t)(memory_mb > 0 ? memory_mb : 1) / 1769;
    if (q < 1000) q = 1000;
    if (q > period_us * (uint64_t)ncpu) q = period_us * (uint64_t)ncpu;
    return q;
}

/* ------------------------------------------------------------------ v1 */

enum { V1_MEMORY, V1_CPU, V1_PIDS, V1_FREEZER };
static const char *const v1_ctrl[CG_MAX_DIRS] = {"memory", "cpu", "pids", "freezer"};

static int v1_create(const cgroup_root_t *root, const char *name, const cgroup_limits_t *lim,
                     cgroup_t *cg, err_t *err) {
    memset(cg, 0, sizeof(*cg));
    cg->root = root;
    cg->peak_fd = -1;
    char buf[64];
    int i;
    for (i = 0; i < root->ndirs; i++) {
        cg->dir[i] = xasprintf("%s/%s", root->parent[i], name);
        if (mkdir(cg->dir[i], 0755) < 0) {
            err_sys(err, "mkdir %s", cg->dir[i]);
            goto fail;
        }
    }
    const char *mem = cg->dir[V1_MEMORY];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)lim->memory_bytes);
    if (knob(mem, "memory.limit_in_bytes", buf, err) < 0) goto fail;
    if (knob_opt(mem, "memory.memsw.limit_in_bytes", buf, err) < 0) goto fail;
    knob_opt(mem, "memory.swappiness", "0", NULL); /* best effort */
    if (cg->root->ops->set_cpu(cg, lim->cpu_quota_us, lim->cpu_period_us, err) < 0) goto fail;
    snprintf(buf, sizeof(buf), "%d", lim->pids_max);
    if (knob(cg->dir[V1_PIDS], "pids.max", buf, err) < 0) goto fail;
    return 0;
fail:
    err_wrap(err, "cgroup v1 create %s", name);
    for (int j = 0; j < CG_MAX_DIRS; j++)
        if (cg->dir[j]) rmdir(cg->dir[j]);
    free_dirs(cg);
    return -1;
}

static int v1_set_cpu(cgroup_t *cg, uint64_t quota_us, uint64_t period_us, err_t *err) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)period_us);
    if (knob(cg->dir[V1_CPU], "cpu.cfs_period_us", buf, err) < 0) return -1;
    if (quota_us)
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)quota_us);
    else
        snprintf(buf, sizeof(buf), "-1");
    return knob(cg->dir[V1_CPU], "cpu.cfs_quota_us", buf, err);
}

static int v1_attach(cgroup_t *cg, pid_t pid, err_t *err) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%d", (int)pid);
    for (int i = 0; i < cg->root->ndirs; i++)
        if (knob(cg->dir[i], "cgroup.procs", buf, err) < 0) return -1;
    return 0;
}

/* Polls done(cg) every 200 us, then every 5 ms, until it holds or
 * wait_ms passed; retry(cg), when set, runs every 20th poll. */
static int wait_frozen(cgroup_t *cg, int wait_ms, bool (*done)(cgroup_t *), void (*retry)(cgroup_t *)) {
    uint64_t deadline = now_mono_ms() + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    for (int i = 0;; i++) {
        if (done(cg)) return 0;
        if (now_mono_ms() >= deadline) return 1;
        if (retry && i % 20 == 19) retry(cg);
        sleep_us(i < 20 ? 200 : 5000);
    }
}

static bool v1_is_frozen(cgroup_t *cg) {
    _cleanup_free_ char *p = xasprintf("%s/freezer.state", cg->dir[V1_FREEZER]);
    char st[32];
    return read_small(p, st, sizeof(st)) == 0 && strncmp(st, "FROZEN", 6) == 0;
}

/* FREEZING: a task is not yet frozen; writing FROZEN again retries it. */
static void v1_refreeze(cgroup_t *cg) { knob(cg->dir[V1_FREEZER], "freezer.state", "FROZEN", NULL); }

static int v1_freeze(cgroup_t *cg, bool frozen, int wait_ms, err_t *err) {
    const char *dir = cg->dir[V1_FREEZER];
    if (knob(dir, "freezer.state", frozen ? "FROZEN" : "THAWED", err) < 0) return -1;
    if (!frozen) return 0;
    return wait_frozen(cg, wait_ms, v1_is_frozen, v1_refreeze);
}

static bool v1_empty(cgroup_t *cg) {
    pid_t p[1];
    for (int i = 0; i < cg->root->ndirs; i++)
        if (read_procs(cg->dir[i], p, 1) > 0) return false;
    return true;
}

static int v1_kill_all(cgroup_t *cg, int timeout_ms, err_t *err) {
    uint64_t deadline = now_mono_ms() + (uint64_t)timeout_ms;
    const char *fz = cg->dir[V1_FREEZER];
    for (int round = 0;; round++) {
        if (v1_empty(cg)) return 0;
        /* Freeze so nothing can fork while we kill, kill, then thaw so the
         * SIGKILLs are delivered. */
        bool frozen = knob(fz, "freezer.state", "FROZEN", NULL) == 0;
        for (int i = 0; i < cg->root->ndirs; i++) kill_procs(cg->dir[i]);
        if (frozen) knob(fz, "freezer.state", "THAWED", NULL);
        if (v1_empty(cg)) return 0;
        if (now_mono_ms() > deadline)
            return err_set(err, EBUSY, "cgroup %s: processes survive SIGKILL", cg->dir[0]);
        sleep_us(round < 10 ? 200 : 2000);
    }
}

static int v1_remove(cgroup_t *cg, err_t *err) {
    int rc = 0;
    if (!v1_empty(cg)) {
        knob(cg->dir[V1_FREEZER], "freezer.state", "THAWED", NULL);
        if (v1_kill_all(cg, 5000, err) < 0) rc = -1;
    }
    if (cg->peak_fd >= 0) close(cg->peak_fd);
    cg->peak_fd = -1;
    for (int i = 0; i < CG_MAX_DIRS; i++)
        if (cg->dir[i] && rmdir_retry(cg->dir[i], rc < 0 ? NULL : err) < 0) rc = -1;
    free_dirs(cg);
    return rc;
}

/* memory.max_usage_in_bytes is read and reset around every invocation (the
 * warm path), so its fd stays open for the cgroup's life. */
static int v1_peak_fd(cgroup_t *cg) {
    if (cg->peak_fd < 0) {
        _cleanup_free_ char *p = xasprintf("%s/memory.max_usage_in_bytes", cg->dir[V1_MEMORY]);
        cg->peak_fd = open(p, O_RDWR | O_CLOEXEC);
    }
    return cg->peak_fd;
}

static uint64_t v1_memory_peak(cgroup_t *cg) {
    char buf[32];
    int fd = v1_peak_fd(cg);
    ssize_t n = fd >= 0 ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;
    if (n <= 0) return 0;
    buf[n] = 0;
    return strtoull(buf, NULL, 10);
}

static void v1_reset_peak(cgroup_t *cg) {
    int fd = v1_peak_fd(cg);
    if (fd < 0 || pwrite(fd, "0", 1, 0) != 1)
        knob(cg->dir[V1_MEMORY], "memory.max_usage_in_bytes", "0", NULL);
}

static int v1_oom_kills(cgroup_t *cg) {
    _cleanup_free_ char *p = xasprintf("%s/memory.oom_control", cg->dir[V1_MEMORY]);
    long v = read_keyed(p, "oom_kill");
    return v < 0 ? 0 : (int)v;
}

const cgroup_ops_t cgroup_v1_ops = {
    .version = "v1", .create = v1_create, .set_cpu = v1_set_cpu, .attach = v1_attach, .freeze = v1_freeze,
    .kill_all = v1_kill_all, .remove = v1_remove, .memory_peak = v1_memory_peak,
    .reset_peak = v1_reset_peak, .oom_kills = v1_oom_kills,
};

/* ------------------------------------------------------------------ v2 */

static int v2_create(const cgroup_root_t *root, const char *name, const cgroup_limits_t *lim,
                     cgroup_t *cg, err_t *err) {
    memset(cg, 0, sizeof(*cg));
    cg->root = root;
    cg->peak_fd = -1;
    char buf[64];
    const char *d = cg->dir[0] = xasprintf("%s/%s", root->parent[0], name);
    if (mkdir(d, 0755) < 0) {
        err_sys(err, "mkdir %s", d);
        free_dirs(cg);
        return err_wrap(err, "cgroup v2 create");
    }
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)lim->memory_bytes);
    if (knob_opt(d, "memory.max", buf, err) < 0) goto fail;
    if (knob_opt(d, "memory.swap.max", "0", err) < 0) goto fail;
    /* An OOM kill takes the whole sandbox down (v1 kills the biggest task,
     * normally the runtime, and init then exits: the same outcome). */
    knob_opt(d, "memory.oom.group", "1", NULL);
    if (cg->root->ops->set_cpu(cg, lim->cpu_quota_us, lim->cpu_period_us, err) < 0) goto fail;
    snprintf(buf, sizeof(buf), "%d", lim->pids_max);
    if (knob_opt(d, "pids.max", buf, err) < 0) goto fail;
    char *pk = xasprintf("%s/memory.peak", d);
    cg->peak_fd = open(pk, O_RDWR | O_CLOEXEC);
    cg->peak_rw = cg->peak_fd >= 0;
    if (cg->peak_fd < 0) cg->peak_fd = open(pk, O_RDONLY | O_CLOEXEC);
    free(pk);
    return 0;
fail:
    err_wrap(err, "cgroup v2 create %s", name);
    rmdir(d);
    free_dirs(cg);
    return -1;
}

static int v2_set_cpu(cgroup_t *cg, uint64_t quota_us, uint64_t period_us, err_t *err) {
    char buf[64];
    if (quota_us)
        snprintf(buf, sizeof(buf), "%llu %llu", (unsigned long long)quota_us, (unsigned long long)period_us);
    else
        snprintf(buf, sizeof(buf), "max %llu", (unsigned long long)period_us);
    return knob_opt(cg->dir[0], "cpu.max", buf, err);
}

static int v2_attach(cgroup_t *cg, pid_t pid, err_t *err) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%d", (int)pid);
    return knob(cg->dir[0], "cgroup.procs", buf, err);
}

static bool v2_is_frozen(cgroup_t *cg) {
    _cleanup_free_ char *p = xasprintf("%s/cgroup.events", cg->dir[0]);
    return read_keyed(p, "frozen") == 1;
}

static int v2_freeze(cgroup_t *cg, bool frozen, int wait_ms, err_t *err) {
    if (knob(cg->dir[0], "cgroup.freeze", frozen ? "1" : "0", err) < 0) return -1;
    if (!frozen) return 0;
    return wait_frozen(cg, wait_ms, v2_is_frozen, NULL);
}

static bool v2_empty(cgroup_t *cg) {
    pid_t p[1];
    return read_procs(cg->dir[0], p, 1) <= 0;
}

static int v2_kill_all(cgroup_t *cg, int timeout_ms, err_t *err) {
    uint64_t deadline = now_mono_ms() + (uint64_t)timeout_ms;
    _cleanup_free_ char *killp = xasprintf("%s/cgroup.kill", cg->dir[0]);
    bool have_kill = file_exists(killp);
    for (int round = 0;; round++) {
        if (v2_empty(cg)) return 0;
        if (have_kill)
            write_str(killp, "1", NULL); /* kills frozen tasks too */
        else
            kill_procs(cg->dir[0]);
        if (v2_empty(cg)) return 0;
        if (now_mono_ms() > deadline)
            return err_set(err, EBUSY, "cgroup %s: processes survive SIGKILL", cg->dir[0]);
        sleep_us(round < 10 ? 200 : 2000);
    }
}

static int v2_remove(cgroup_t *cg, err_t *err) {
    int rc = 0;
    if (!v2_empty(cg) && v2_kill_all(cg, 5000, err) < 0) rc = -1;
    if (cg->dir[0] && rmdir_retry(cg->dir[0], rc < 0 ? NULL : err) < 0) rc = -1;
    free_dirs(cg);
    return rc;
}

static uint64_t v2_current(cgroup_t *cg) {
    _cleanup_free_ char *p = xasprintf("%s/memory.current", cg->dir[0]);
    return read_u64_file(p);
}

static uint64_t v2_memory_peak(cgroup_t *cg) {
    char buf[64];
    if (cg->peak_fd >= 0 && !cg->peak_sampled) {
        ssize_t n = pread(cg->peak_fd, buf, sizeof(buf) - 1, 0);
        if (n > 0) {
            buf[n] = 0;
            return strtoull(buf, NULL, 10);
        }
    }
    /* No (resettable) memory.peak: the maximum of the samples we took. */
    uint64_t cur = v2_current(cg);
    if (cur > cg->peak_base) cg->peak_base = cur;
    return cg->peak_base;
}

static void v2_reset_peak(cgroup_t *cg) {
    if (cg->peak_fd >= 0 && cg->peak_rw && pwrite(cg->peak_fd, "reset\n", 6, 0) == 6) return;
    cg->peak_sampled = true;
    cg->peak_base = v2_current(cg);
}

static int v2_oom_kills(cgroup_t *cg) {
    _cleanup_free_ char *p = xasprintf("%s/memory.events", cg->dir[0]);
    long v = read_keyed(p, "oom_kill");
    return v < 0 ? 0 : (int)v;
}

const cgroup_ops_t cgroup_v2_ops = {
    .version = "v2", .create = v2_create, .set_cpu = v2_set_cpu, .attach = v2_attach, .freeze = v2_freeze,
    .kill_all = v2_kill_all, .remove = v2_remove, .memory_peak = v2_memory_peak,
    .reset_peak = v2_reset_peak, .oom_kills = v2_oom_kills,
};

/* ---------------------------------------------------------- root setup */

/* Start time (clock ticks since boot) of pid, or 0 if it does not exist
 * or has exited: a zombie (killed, not yet reaped by its parent, e.g. an
 * init that reaps lazily after the supervisor died too) runs nothing. */
static unsigned long long proc_starttime(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if (read_small(path, buf, sizeof(buf)) < 0) return 0;
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p) return 0;
    if (p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X')) return 0;
    unsigned long long st = 0;
    /* After ") ": field 3 (state) ... field 22 (starttime). */
    int field = 2;
    for (char *tok = p + 1; *tok; tok++) {
        if (*tok == ' ') {
            field++;
            if (field == 22) {
                st = strtoull(tok + 1, NULL, 10);
                break;
            }
        }
    }
    return st;
}

/* True for "sbx-<pid>-<starttime>" whose process is gone or a zombie (or
 * whose pid now belongs to a process with another start time).  Anything else under
 * flicker/ (not ours, or alive) is left alone. */
bool cgroup_instance_stale(const char *name) {
    int pid, used = 0;
    unsigned long long st;
    if (sscanf(name, "sbx-%d-%llu%n", &pid, &st, &used) != 2 || name[used] != 0 || pid <= 0) return false;
    return proc_starttime(pid) != st;
}

/* Kills everything in dir's subtree (v1: one hierarchy; the caller calls
 * it for each) and removes the directories, deepest first. */
static void reap_tree(const char *dir, bool v2) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
            _cleanup_free_ char *sub = xasprintf("%s/%s", dir, e->d_name);
            reap_tree(sub, v2);
        }
        closedir(d);
    }
    for (int i = 0; i < 500; i++) {
        if (v2) {
            _cleanup_free_ char *kp = xasprintf("%s/cgroup.kill", dir);
            if (file_exists(kp)) write_str(kp, "1", NULL);
        }
        /* v1 freezer: thaw so SIGKILL is delivered. */
        knob_opt(dir, "freezer.state", "THAWED", NULL);
        if (kill_procs(dir) == 0) break;
        sleep_us(2000);
    }
    if (rmdir_retry(dir, NULL) < 0) log_warn(ROLE, "cannot remove stale cgroup %s", dir);
}

void cgroup_root_reap_stale(cgroup_root_t *root) {
    bool v2 = root->ops == &cgroup_v2_ops;
    /* Last hierarchy first: on v1 that is the freezer, and a frozen task
     * only dies of SIGKILL once thawed; after that the others are empty. */
    for (int i = root->ndirs - 1; i >= 0; i--) {
        DIR *d = opendir(root->base[i]);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_type != DT_DIR || e->d_name[0] == '.') continue;
            if (!cgroup_instance_stale(e->d_name)) continue;
            _cleanup_free_ char *sub = xasprintf("%s/%s", root->base[i], e->d_name);
            log_info(ROLE, "removing stale sandbox cgroups %s", sub);
            reap_tree(sub, v2);
        }
        closedir(d);
    }
}

char *cgroup_instance_name(void) {
    pid_t pid = getpid();
    return xasprintf("sbx-%d-%llu", (int)pid, proc_starttime(pid));
}

static int make_parents(cgroup_root_t *root, err_t *err) {
    _cleanup_free_ char *inst = cgroup_instance_name();
    for (int i = 0; i < root->ndirs; i++) {
        if (mkdir(root->base[i], 0755) < 0 && errno != EEXIST) return err_sys(err, "mkdir %s", root->base[i]);
        if (root->ops == &cgroup_v2_ops) {
            /* Enable the controllers for the children (missing ones are
             * bound to v1; enabling them fails, which is fine). */
            const char *ctrls[] = {"+memory", "+cpu", "+pids"};
            for (size_t c = 0; c < ARRAY_LEN(ctrls); c++) knob(root->base[i], "cgroup.subtree_control", ctrls[c], NULL);
        }
        root->parent[i] = xasprintf("%s/%s", root->base[i], inst);
        if (mkdir(root->parent[i], 0755) < 0 && errno != EEXIST)
            return err_sys(err, "mkdir %s", root->parent[i]);
        if (root->ops == &cgroup_v2_ops) {
            const char *ctrls[] = {"+memory", "+cpu", "+pids"};
            for (size_t c = 0; c < ARRAY_LEN(ctrls); c++) knob(root->parent[i], "cgroup.subtree_control", ctrls[c], NULL);
        }
    }
    cgroup_root_reap_stale(root);
    return 0;
}

static bool is_fs(const char *path, long magic) {
    struct statfs sf;
    return statfs(path, &sf) == 0 && sf.f_type == magic;
}

int cgroup_root_init_v2(cgroup_root_t *root, const char *mnt, err_t *err) {
    memset(root, 0, sizeof(*root));
    if (!is_fs(mnt, CGROUP2_SUPER_MAGIC)) return err_set(err, ENOTSUP, "%s is not a cgroup2 mount", mnt);
    root->ops = &cgroup_v2_ops;
    root->ndirs = 1;
    /* At the mount root controllers can be enabled despite its processes
     * ("no internal processes" does not apply to the root). */
    knob(mnt, "cgroup.subtree_control", "+memory", NULL);
    knob(mnt, "cgroup.subtree_control", "+cpu", NULL);
    knob(mnt, "cgroup.subtree_control", "+pids", NULL);
    root->base[0] = xasprintf("%s/flicker", mnt);
    if (make_parents(root, err) < 0) {
        cgroup_root_fini(root);
        return err_wrap(err, "cgroup v2 setup");
    }
    return 0;
}

int cgroup_root_init(cgroup_root_t *root, err_t *err) {
    memset(root, 0, sizeof(*root));
    if (is_fs(CGROUP_MNT, CGROUP2_SUPER_MAGIC)) {
        char ctl[256] = "";
        read_small(CGROUP_MNT "/cgroup.controllers", ctl, sizeof(ctl));
        if (!strstr(ctl, "memory")) return err_set(err, ENOTSUP, "cgroup2 without the memory controller");
        if (cgroup_root_init_v2(root, CGROUP_MNT, err) < 0) return -1;
        /* Sandboxes without limits are not acceptable: every controller must
         * be enabled for our children.  It is not when /sys/fs/cgroup is a
         * container's cgroup namespace whose root holds processes ("no
         * internal processes"): move the worker into a leaf cgroup first. */
        _cleanup_free_ char *sc = xasprintf("%s/cgroup.subtree_control", root->parent[0]);
        char have[256] = "";
        read_small(sc, have, sizeof(have));
        static const char *const need[] = {"memory", "cpu", "pids"};
        for (size_t i = 0; i < ARRAY_LEN(need); i++) {
            if (!strstr(have, need[i])) {
                err_set(err, ENOTSUP, "cgroup v2: controller %s cannot be enabled under %s (enabled: '%s');"
                        " is the worker in the namespace's root cgroup? move it to a leaf cgroup",
                        need[i], root->parent[0], have);
                cgroup_root_fini(root);
                return -1;
            }
        }
        return 0;
    }
    root->ops = &cgroup_v1_ops;
    root->ndirs = CG_MAX_DIRS;
    for (int i = 0; i < CG_MAX_DIRS; i++) {
        _cleanup_free_ char *m = xasprintf(CGROUP_MNT "/%s", v1_ctrl[i]);
        if (!is_fs(m, CGROUP_SUPER_MAGIC)) {
            cgroup_root_fini(root);
            return err_set(err, ENOTSUP, "cgroup v1 controller %s is not mounted at %s", v1_ctrl[i], m);
        }
        root->base[i] = xasprintf("%s/flicker", m);
    }
    if (make_parents(root, err) < 0) {
        cgroup_root_fini(root);
        return err_wrap(err, "cgroup v1 setup");
    }
    return 0;
}

void cgroup_root_fini(cgroup_root_t *root) {
    for (int i = 0; i < CG_MAX_DIRS; i++) {
        if (root->parent[i]) rmdir(root->parent[i]);
        free(root->parent[i]);
        free(root->base[i]);
        root->parent[i] = root->base[i] = NULL;
    }
    root->ndirs = 0;
}
