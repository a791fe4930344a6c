/* provider.c - the built-in placement providers (see provider.h).
 *
 * How: `none` remembers the last decision it logged and logs again only
 * when desired/active/draining/delta/reason change (the service calls it
 * every ~250 ms).  `local` keeps an array of children {pid, n, id,
 * registered, stopping}; it forks + execs the worker with
 * PR_SET_PDEATHSIG(SIGTERM) (so workers never outlive a crashed placement),
 * reaps with waitpid(pid, WNOHANG) on its own pids only (never -1: it may
 * share the process with other children, e.g. in tests), and SIGTERMs the
 * child of a RETIRED or LOST worker (SIGKILL if it is still there
 * KILL_AFTER_MS later: a LOST worker may be hung).
 *
 * Invariants: every entry in `kids` is a started, not yet reaped child;
 * `next_n` only grows, so ids and socket paths are never reused while this
 * placement runs; destroy() leaves no child behind (SIGTERM, up to 5 s,
 * then SIGKILL) and no zombie. */
#include "placement/provider.h"
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/log.h"
#include "common/util.h"

#define LOG_ROLE "placement"
#define KILL_AFTER_MS 10000   /* a worker SIGTERMed this long ago gets SIGKILL */

/* ------------------------------------------------------------------ none */

typedef struct provider_none {
    placement_provider_t base;
    bool logged;
    int desired, active, draining, delta;
    const char *reason;
} provider_none_t;

static void none_event(placement_provider_t *p, fleet_t *f, const fleet_event_t *ev) {}

static void none_scale(placement_provider_t *p, fleet_t *f, const fleet_scale_t *s, uint64_t now)
{
    provider_none_t *n = (provider_none_t *)p;
    if (n->logged && n->desired == s->desired && n->active == s->active &&
        n->draining == s->draining && n->delta == s->delta && n->reason == s->reason)
        return;
    n->logged = true;
    n->desired = s->desired;
    n->active = s->active;
    n->draining = s->draining;
    n->delta = s->delta;
    n->reason = s->reason;
    if (s->delta > 0)
        log_info(LOG_ROLE, "scale (provider none): capacity wanted: %d more worker(s) "
                 "(desired %d, active %d, draining %d, utilization %.2f: %s); "
                 "workers must register themselves",
                 s->delta, s->desired, s->active, s->draining, s->utilization, s->reason);
    else if (s->delta < 0)
        log_info(LOG_ROLE, "scale (provider none): %d worker(s) too many (desired %d, active %d, "
                 "utilization %.2f: %s; would drain %s); not acting",
                 -s->delta, s->desired, s->active, s->utilization, s->reason, s->drain_id);
    else
        log_info(LOG_ROLE, "scale (provider none): %d active worker(s), as desired "
                 "(draining %d, utilization %.2f: %s)",
                 s->active, s->draining, s->utilization, s->reason);
}

static void none_destroy(placement_provider_t *p) { free(p); }

placement_provider_t *provider_none_new(void)
{
    provider_none_t *n = xcalloc(1, sizeof *n);
    n->base = (placement_provider_t){.name = "none", .on_event = none_event,
                                     .on_scale = none_scale, .destroy = none_destroy};
    return &n->base;
}

/* ----------------------------------------------------------------- local */

typedef struct kid {
    pid_t pid;
    int n;
    char id[32];
    bool registered;   /* its worker registered with us */
    bool stopping;     /* SIGTERM sent */
    uint64_t stop_at;  /* monotonic ms of the SIGTERM */
} kid_t;

typedef struct provider_local {
    placement_provider_t base;
    provider_local_config_t cfg;   /* strings owned */
    char *exe;
    kid_t *kids;
    int n_kids;
    int next_n;
    int failures;                  /* children that exited before registering, in a row */
    uint64_t next_start_ms;        /* monotonic: no start before this */
} provider_local_t;

static const char *const LOCAL_ZONES[] = {"local-a", "local-b"};

static char *self_exe(void)
{
    char buf[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0)
        return xstrdup("/proc/self/exe");
    buf[n] = 0;
    return xstrdup(buf);
}

char **provider_local_argv(const provider_local_config_t *cfg, int n)
{
    char **argv = xcalloc(18, sizeof *argv);
    int i = 0;
    argv[i++] = cfg->exe ? xstrdup(cfg->exe) : self_exe();
    argv[i++] = xstrdup("serve");
    argv[i++] = xstrdup("worker");
    argv[i++] = xstrdup("--listen");
    argv[i++] = xasprintf("unix:%s/worker-%d.sock", cfg->data_dir, n);
    argv[i++] = xstrdup("--id");
    argv[i++] = xasprintf("local-%d", n);
    argv[i++] = xstrdup("--zone");
    argv[i++] = xstrdup(LOCAL_ZONES[(n - 1) % 2]);
    argv[i++] = xstrdup("--placement");
    argv[i++] = xstrdup(cfg->placement_addr);
    argv[i++] = xstrdup("--memory-mb");
    argv[i++] = xasprintf("%d", cfg->memory_mb);
    argv[i++] = xstrdup("--data");
    argv[i++] = xstrdup(cfg->data_dir);
    argv[i] = NULL;
    return argv;
}

void provider_argv_free(char **argv)
{
    if (!argv)
        return;
    for (char **a = argv; *a; a++)
        free(*a);
    free(argv);
}

static kid_t *find_kid(provider_local_t *l, const char *id)
{
    for (int i = 0; i < l->n_kids; i++)
        if (strcmp(l->kids[i].id, id) == 0)
            return &l->kids[i];
    return NULL;
}

/* Reaps exited children (our pids only). */
static void reap(provider_local_t *l)
{
    int kept = 0;
    for (int i = 0; i < l->n_kids; i++) {
        kid_t *k = &l->kids[i];
        int status;
        pid_t r = waitpid(k->pid, &status, WNOHANG);
        if (r == 0 || (r < 0 && errno == EINTR)) {
            if (k->stopping && k->stop_at && now_mono_ms() - k->stop_at > KILL_AFTER_MS) {
                log_warn(LOG_ROLE, "local worker %s (pid %d) ignored SIGTERM for %d ms: SIGKILL",
                         k->id, (int)k->pid, KILL_AFTER_MS);
                kill(k->pid, SIGKILL);
                k->stop_at = 0;
            }
            l->kids[kept++] = *k;
            continue;
        }
        char how[64];
        if (r > 0 && WIFEXITED(status))
            snprintf(how, sizeof how, "exited %d", WEXITSTATUS(status));
        else if (r > 0 && WIFSIGNALED(status))
            snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(status));
        else
            snprintf(how, sizeof how, "gone (%s)", strerror(errno));
        if (!k->registered && !k->stopping) {
            l->failures++;
            uint64_t delay = 1000u << (l->failures < 5 ? l->failures - 1 : 5);
            if (delay > 30000)
                delay = 30000;
            l->next_start_ms = now_mono_ms() + delay;
            log_warn(LOG_ROLE, "local worker %s (pid %d) %s before registering; next start in %llu ms",
                     k->id, (int)k->pid, how, (unsigned long long)delay);
        } else {
            log_info(LOG_ROLE, "local worker %s (pid %d) %s", k->id, (int)k->pid, how);
        }
    }
    l->n_kids = kept;
}

static int start_one(provider_local_t *l)
{
    int n = l->next_n++;
    char **argv = provider_local_argv(&l->cfg, n);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error(LOG_ROLE, "local provider: fork: %s", strerror(errno));
        provider_argv_free(argv);
        return -1;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        execv(l->exe, argv);
        _exit(127);
    }
    l->kids = xrealloc(l->kids, (size_t)(l->n_kids + 1) * sizeof *l->kids);
    kid_t *k = &l->kids[l->n_kids++];
    *k = (kid_t){.pid = pid, .n = n};
    snprintf(k->id, sizeof k->id, "local-%d", n);
    log_info(LOG_ROLE, "local provider: started worker %s (pid %d): %s %s %s --listen %s --zone %s",
             k->id, (int)pid, argv[0], argv[1], argv[2], argv[4], argv[8]);
    provider_argv_free(argv);
    return 0;
}

static void local_event(placement_provider_t *p, fleet_t *f, const fleet_event_t *ev)
{
    provider_local_t *l = (provider_local_t *)p;
    kid_t *k = find_kid(l, ev->worker_id);
    if (!k)
        return;
    switch (ev->type) {
    case FLEET_EV_REGISTERED:
    case FLEET_EV_RESTARTED:
        k->registered = true;
        l->failures = 0;
        break;
    case FLEET_EV_RETIRED:
    case FLEET_EV_LOST:
        if (!k->stopping) {
            k->stopping = true;
            k->stop_at = now_mono_ms();
            log_info(LOG_ROLE, "local provider: stopping worker %s (pid %d): %s", k->id,
                     (int)k->pid, fleet_event_name(ev->type));
            kill(k->pid, SIGTERM);
        }
        break;
    case FLEET_EV_DRAINING:
        break;
    }
}

static void local_scale(placement_provider_t *p, fleet_t *f, const fleet_scale_t *s, uint64_t now)
{
    provider_local_t *l = (provider_local_t *)p;
    reap(l);
    if (s->delta > 0) {
        int pending = 0;
        for (int i = 0; i < l->n_kids; i++)
            if (!l->kids[i].registered && !l->kids[i].stopping)
                pending++;
        int want = s->delta - pending;
        if (want > 0 && now_mono_ms() >= l->next_start_ms) {
            log_info(LOG_ROLE, "scale (provider local): starting %d worker(s) (desired %d, active %d, "
                     "starting %d: %s)", want, s->desired, s->active, pending, s->reason);
            for (int i = 0; i < want; i++)
                if (start_one(l) < 0)
                    break;
        }
    } else if (s->delta < 0 && s->drain_id[0]) {
        err_t err = {0};
        log_info(LOG_ROLE, "scale (provider local): draining %s (desired %d, active %d: %s)",
                 s->drain_id, s->desired, s->active, s->reason);
        if (fleet_drain(f, s->drain_id, now, &err) < 0)
            log_warn(LOG_ROLE, "drain %s: %s", s->drain_id, err.msg);
    }
}

static void local_destroy(placement_provider_t *p)
{
    provider_local_t *l = (provider_local_t *)p;
    for (int i = 0; i < l->n_kids; i++)
        kill(l->kids[i].pid, SIGTERM);
    uint64_t deadline = now_mono_ms() + 5000;
    while (l->n_kids > 0 && now_mono_ms() < deadline) {
        for (int i = 0; i < l->n_kids; i++)
            l->kids[i].stopping = true;
        reap(l);
        if (l->n_kids > 0)
            usleep(20000);
    }
    for (int i = 0; i < l->n_kids; i++) {
        log_warn(LOG_ROLE, "local worker %s (pid %d) ignored SIGTERM: SIGKILL", l->kids[i].id,
                 (int)l->kids[i].pid);
        kill(l->kids[i].pid, SIGKILL);
        waitpid(l->kids[i].pid, NULL, 0);
    }
    free(l->kids);
    free((char *)l->cfg.exe);
    free((char *)l->cfg.data_dir);
    free((char *)l->cfg.placement_addr);
    free(l->exe);
    free(l);
}

placement_provider_t *provider_local_new(const provider_local_config_t *cfg, err_t *err)
{
    if (!cfg || !cfg->data_dir || !*cfg->data_dir || !cfg->placement_addr || !*cfg->placement_addr) {
        err_set(err, EINVAL, "local provider: needs a data directory and placement's address");
        return NULL;
    }
    if (cfg->memory_mb < 1) {
        err_set(err, EINVAL, "local provider: --memory-mb must be >= 1");
        return NULL;
    }
    provider_local_t *l = xcalloc(1, sizeof *l);
    l->base = (placement_provider_t){.name = "local", .on_event = local_event,
                                     .on_scale = local_scale, .destroy = local_destroy};
    l->cfg.exe = cfg->exe ? xstrdup(cfg->exe) : NULL;
    l->cfg.data_dir = xstrdup(cfg->data_dir);
    l->cfg.placement_addr = xstrdup(cfg->placement_addr);
    l->cfg.memory_mb = cfg->memory_mb;
    l->exe = cfg->exe ? xstrdup(cfg->exe) : self_exe();
    l->next_n = 1;
    return &l->base;
}

int provider_local_children(const placement_provider_t *p)
{
    return ((const provider_local_t *)p)->n_kids;
}

pid_t provider_local_pid(const placement_provider_t *p, const char *id)
{
    provider_local_t *l = (provider_local_t *)p;
    kid_t *k = find_kid(l, id);
    return k ? k->pid : 0;
}
