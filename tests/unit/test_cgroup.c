/* test_cgroup.c - the cgroup backends outside of sandboxes (needs root).
 *
 * v2 is exercised on whatever cgroup2 mount exists (/sys/fs/cgroup/unified
 * on a hybrid host, /sys/fs/cgroup on a unified one).  On a hybrid host the
 * controllers are bound to v1, so only the core features can be tested
 * there: create/attach, freeze/thaw (cgroup.freeze), kill (cgroup.kill),
 * remove, stale-instance recovery; the memory/cpu/pids knobs are skipped by
 * the backend and are covered through v1 by test_sandbox.  v1 recovery of a
 * dead instance is tested directly. */
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/magic.h>

#include "check.h"
#include "common/util.h"
#include "worker/cgroup.h"

static const char *g_v2mnt;

static pid_t spawn_sleeper(void) {
    pid_t p = fork();
    if (p == 0) {
        for (;;) pause();
    }
    return p;
}

static bool in_procs(const char *dir, pid_t pid) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    long v;
    bool found = false;
    while (fscanf(f, "%ld", &v) == 1)
        if (v == pid) found = true;
    fclose(f);
    return found;
}

static long events_key(const char *dir, const char *key) {
    char path[1024], line[128];
    snprintf(path, sizeof(path), "%s/cgroup.events", dir);
    FILE *f = fopen(path, "r");
    long v = -1;
    while (f && fgets(line, sizeof(line), f)) {
        size_t kl = strlen(key);
        if (!strncmp(line, key, kl) && line[kl] == ' ') v = strtol(line + kl + 1, NULL, 10);
    }
    if (f) fclose(f);
    return v;
}

static bool dir_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static void test_v2_lifecycle(void) {
    cgroup_root_t root;
    err_t e = {0};
    CHECK(cgroup_root_init_v2(&root, g_v2mnt, &e) == 0);
    CHECK(root.ops == &cgroup_v2_ops && strcmp(root.ops->version, "v2") == 0);
    CHECK(dir_exists(root.parent[0]));
    cgroup_limits_t lim = {.memory_bytes = 64 << 20, .cpu_period_us = 100000, .cpu_quota_us = 50000, .pids_max = 10};
    cgroup_t cg;
    if (root.ops->create(&root, "t1", &lim, &cg, &e) < 0) {
        printf("  create: %s\n", e.msg);
        cgroup_root_fini(&root);
        CHECK(0);
    }
    char dir[900];
    snprintf(dir, sizeof(dir), "%s", cg.dir[0]);
    CHECK(dir_exists(dir));
    pid_t p = spawn_sleeper();
    bool ok = root.ops->attach(&cg, p, &e) == 0 && in_procs(dir, p);
    ok = ok && root.ops->freeze(&cg, true, 10000, &e) == 0 && events_key(dir, "frozen") == 1;
    ok = ok && root.ops->freeze(&cg, false, 0, &e) == 0 && events_key(dir, "frozen") == 0;
    /* Kill while frozen: v2 kills frozen tasks. */
    ok = ok && root.ops->freeze(&cg, true, 10000, &e) == 0;
    ok = ok && root.ops->kill_all(&cg, 10000, &e) == 0;
    int st = 0;
    waitpid(p, &st, 0);
    ok = ok && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
    ok = ok && root.ops->oom_kills(&cg) == 0;
    (void)root.ops->memory_peak(&cg);
    root.ops->reset_peak(&cg);
    ok = ok && root.ops->remove(&cg, &e) == 0 && !dir_exists(dir);
    if (!ok) printf("  error: %s\n", e.msg);
    cgroup_root_fini(&root);
    CHECK(ok);
}

static void test_v2_remove_kills_leftovers(void) {
    cgroup_root_t root;
    err_t e = {0};
    CHECK(cgroup_root_init_v2(&root, g_v2mnt, &e) == 0);
    cgroup_limits_t lim = {.memory_bytes = 64 << 20, .cpu_period_us = 100000, .pids_max = 10};
    cgroup_t cg;
    CHECK(root.ops->create(&root, "t2", &lim, &cg, &e) == 0);
    pid_t p = spawn_sleeper();
    CHECK(root.ops->attach(&cg, p, &e) == 0);
    bool ok = root.ops->remove(&cg, &e) == 0;
    int st = 0;
    waitpid(p, &st, 0);
    ok = ok && WIFSIGNALED(st);
    cgroup_root_fini(&root);
    CHECK(ok);
}

/* A dead instance ("sbx-1-1": pid 1 has another start time) with a live
 * process is killed and removed by the next init; a directory that is not
 * an instance name is left alone. */
static void stale_instance_test(bool v2) {
    err_t e = {0};
    cgroup_root_t root;
    int rc = v2 ? cgroup_root_init_v2(&root, g_v2mnt, &e) : cgroup_root_init(&root, &e);
    if (rc < 0) printf("  init: %s\n", e.msg);
    CHECK(rc == 0);
    pid_t p = spawn_sleeper();
    char stale[CG_MAX_DIRS][400];
    for (int i = 0; i < root.ndirs; i++) {
        snprintf(stale[i], sizeof(stale[i]), "%s/sbx-1-1", root.base[i]);
        mkdir(stale[i], 0755);
        char sub[2048], pidbuf[32];
        snprintf(sub, sizeof(sub), "%s/sbx", stale[i]);
        mkdir(sub, 0755);
        snprintf(pidbuf, sizeof(pidbuf), "%d", (int)p);
        snprintf(sub, sizeof(sub), "%s/sbx/cgroup.procs", stale[i]);
        write_str(sub, pidbuf, NULL);
    }
    char foreign[400];
    snprintf(foreign, sizeof(foreign), "%s/not-ours-%d", root.base[0], (int)getpid());
    mkdir(foreign, 0755);
    cgroup_root_reap_stale(&root);
    bool foreign_kept = dir_exists(foreign);
    rmdir(foreign);
    int st = 0;
    waitpid(p, &st, 0);
    bool ok = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL && foreign_kept;
    for (int i = 0; i < root.ndirs; i++) ok = ok && !dir_exists(stale[i]);
    /* Our own instance survives. */
    for (int i = 0; i < root.ndirs; i++) ok = ok && dir_exists(root.parent[i]);
    cgroup_root_fini(&root);
    CHECK(ok);
}

static void test_v2_stale_instance_recovery(void) { stale_instance_test(true); }
static void test_v1_stale_instance_recovery(void) { stale_instance_test(false); }

/* Start time of pid from /proc (field 22), 0 if unreadable. */
static unsigned long long starttime_of(pid_t pid, char *state) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long long st = 0;
    if (p && sscanf(p + 2, "%c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                    state, &st) != 2)
        st = 0;
    return st;
}

/* An instance whose worker was killed but not yet reaped (a zombie: its
 * /proc entry still has the same start time) is stale; a live one is not. */
static void test_zombie_instance_is_stale(void) {
    pid_t live = spawn_sleeper();
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    char state = 0, lstate = 0;
    unsigned long long st = 0;
    for (int i = 0; i < 500 && state != 'Z'; i++) { /* until it has exited, unreaped */
        st = starttime_of(dead, &state);
        usleep(2000);
    }
    unsigned long long lst = starttime_of(live, &lstate);
    char zname[64], lname[64];
    snprintf(zname, sizeof(zname), "sbx-%d-%llu", (int)dead, st);
    snprintf(lname, sizeof(lname), "sbx-%d-%llu", (int)live, lst);
    bool zombie_stale = state == 'Z' && cgroup_instance_stale(zname);
    bool live_kept = lst != 0 && !cgroup_instance_stale(lname);
    kill(live, SIGKILL);
    waitpid(live, NULL, 0);
    waitpid(dead, NULL, 0);
    bool reaped_stale = cgroup_instance_stale(zname);
    CHECK(zombie_stale && live_kept && reaped_stale);
}

static void test_cpu_quota(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(cgroup_cpu_quota(1769, 100000) == 100000);
    CHECK(cgroup_cpu_quota(3538, 100000) == (uint64_t)(n >= 2 ? 200000 : 100000));
    CHECK(cgroup_cpu_quota(128, 100000) == 7235);
    CHECK(cgroup_cpu_quota(1, 100000) == 1000);
    CHECK(cgroup_cpu_quota(1 << 20, 100000) == 100000 * (uint64_t)n);
}

static bool is_cgroup2(const char *p) {
    struct statfs sf;
    return statfs(p, &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC;
}

static bool is_cgroup1_hybrid(void) {
    struct statfs sf;
    return statfs("/sys/fs/cgroup/memory", &sf) == 0 && sf.f_type == CGROUP_SUPER_MAGIC;
}

int main(void) {
    RUN(test_cpu_quota);
    RUN(test_zombie_instance_is_stale);
    if (geteuid() != 0) {
        SKIP(test_cgroup_backends, "needs root");
        CHECK_EXIT();
    }
    if (is_cgroup2("/sys/fs/cgroup/unified"))
        g_v2mnt = "/sys/fs/cgroup/unified";
    else if (is_cgroup2("/sys/fs/cgroup"))
        g_v2mnt = "/sys/fs/cgroup";
    if (g_v2mnt) {
        RUN(test_v2_lifecycle);
        RUN(test_v2_remove_kills_leftovers);
        RUN(test_v2_stale_instance_recovery);
    } else {
        SKIP(test_v2_lifecycle, "no cgroup2 mount");
    }
    if (is_cgroup1_hybrid())
        RUN(test_v1_stale_instance_recovery);
    else
        SKIP(test_v1_stale_instance_recovery, "no cgroup v1 hierarchies");
    CHECK_EXIT();
}
