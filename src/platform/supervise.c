/* supervise.c - `flicker up --split`: every role as its own process on
 * this host, supervised.
 *
 * Starts, in order: placement, three assignment replicas (leader and two
 * followers over the file journal DATA/journal), the workers, then - once
 * the platform can run a function: placement lists an active worker and a
 * replica says it leads (polled over RPC every 50 ms, at most 60 s) - the
 * frontend on the public address.  So a client that sees the endpoint
 * answer can invoke at once: before, the frontend could listen before the
 * worker had registered (its first attempt may precede placement's socket
 * and is retried a heartbeat period later), and an early invoke got 429
 * "No worker has room".  Roles talk over unix sockets in
 * DATA/run/ (docs/protocol.md).  A role that exits unexpectedly is started
 * again (backoff 200 ms doubling to 5 s).  SIGINT/SIGTERM stop the roles in
 * reverse order (frontend first, so no new work arrives; placement last),
 * each with SIGTERM then, after a grace period, SIGKILL; the exit status is
 * 0 only if every role stopped cleanly.  Each child has PR_SET_PDEATHSIG
 * SIGTERM, so a killed supervisor does not leave roles behind.
 *
 * Invariants: the supervisor holds DATA/flicker.lock for its lifetime (one
 * platform per data directory); a role is restarted only while not
 * stopping. */
#include "platform/supervise.h"
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <unistd.h>
#include <jansson.h>
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"

#define MAX_ROLES 16
#define MAX_ARGS 48
#define STOP_GRACE_MS 15000
#define READY_POLL_MS 50        /* readiness check period before the frontend starts */
#define READY_WAIT_MS 60000     /* start the frontend anyway after this long */

typedef struct role {
    char name[32];
    char *argv[MAX_ARGS];
    pid_t pid;
    int restarts;
    int backoff_ms;
    uint64_t started_ms;
    int last_status;
    bool stopped;           /* exited after we asked it to */
    struct event *restart;
    struct supervisor *sup;
} role_t;

typedef struct supervisor {
    struct event_base *base;
    role_t roles[MAX_ROLES];
    int n_roles;
    bool stopping;
    int stop_index;          /* next role (from the end) to stop */
    uint64_t stop_deadline_ms;
    struct event *stop_timer;
    int unclean;
    bool fatal;              /* a role failed its first start: give up */
    char *roles_path;        /* DATA/run/roles.json */
    /* readiness gate: the frontend (the last role) starts once placement
     * has an active worker and a replica leads */
    rpc_client_t *ready_pl, *ready_asg[MAX_ROLES];
    int n_ready_asg;
    int ready_pending;       /* readiness calls in flight */
    bool have_worker, have_leader, frontend_started;
    uint64_t ready_deadline_ms;
    struct event *ready_timer;
} supervisor_t;

static void add_arg(role_t *r, const char *a)
{
    int n = 0;
    while (r->argv[n])
        n++;
    if (n < MAX_ARGS - 1)
        r->argv[n] = xstrdup(a);
}

static role_t *new_role(supervisor_t *s, const char *name)
{
    role_t *r = &s->roles[s->n_roles++];
    memset(r, 0, sizeof *r);
    r->sup = s;
    snprintf(r->name, sizeof r->name, "%s", name);
    r->backoff_ms = 200;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    add_arg(r, exe);
    return r;
}

static void write_roles(supervisor_t *s);

static int start_role(supervisor_t *s, role_t *r)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("up", "fork for %s: %s", r->name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execv(r->argv[0], r->argv);
        _exit(127);
    }
    r->pid = pid;
    r->started_ms = now_mono_ms();
    log_info("up", "started %s (pid %d)", r->name, (int)pid);
    write_roles(s);
    return 0;
}

static void on_restart(evutil_socket_t fd, short what, void *arg);

/* The value following flag in r's arguments, or NULL. */
static const char *role_flag(const role_t *r, const char *flag)
{
    for (int i = 0; r->argv[i] && r->argv[i + 1]; i++)
        if (!strcmp(r->argv[i], flag))
            return r->argv[i + 1];
    return NULL;
}

/* DATA/run/roles.json: every role with its pid, address and zone, for
 * `flicker status` (the frontend reads it).  Rewritten atomically on every
 * start and exit. */
static void write_roles(supervisor_t *s)
{
    json_t *roles = json_array();
    for (int i = 0; i < s->n_roles; i++) {
        const role_t *r = &s->roles[i];
        const char *addr = role_flag(r, "--listen");
        const char *zone = role_flag(r, "--zone");
        json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:i}", "name", r->name, "role", r->argv[2],
                              "pid", (json_int_t)r->pid, "state", r->pid > 0 ? "running" : "down",
                              "restarts", r->restarts);
        if (addr)
            json_object_set_new(o, "address", json_string(addr));
        if (zone)
            json_object_set_new(o, "zone", json_string(zone));
        json_array_append_new(roles, o);
    }
    json_t *doc = json_pack("{s:I,s:o}", "supervisor_pid", (json_int_t)getpid(), "roles", roles);
    char *text = json_dumps(doc, JSON_INDENT(1));
    json_decref(doc);
    if (text && s->roles_path)
        write_file_atomic(s->roles_path, text, strlen(text), 0644, NULL);
    free(text);
}

static void stop_next(supervisor_t *s);
static void begin_stop(supervisor_t *s, const char *why);

static void on_child(evutil_socket_t sig, short what, void *arg)
{
    supervisor_t *s = arg;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < s->n_roles; i++) {
            role_t *r = &s->roles[i];
            if (r->pid != pid)
                continue;
            r->pid = 0;
            r->last_status = status;
            write_roles(s);
            bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (s->stopping) {
                r->stopped = true;
                if (!clean) {
                    s->unclean++;
                    log_warn("up", "%s stopped uncleanly (status %d)", r->name, status);
                }
                stop_next(s);
                break;
            }
            if (r->restarts == 0 && WIFEXITED(status) && WEXITSTATUS(status) != 0 &&
                now_mono_ms() - r->started_ms < 3000) {
                /* It never got going (bad flag, address in use, ...):
                 * restarting would only repeat that. */
                log_error("up", "%s failed to start (status %d): stopping", r->name, status);
                s->fatal = true;
                begin_stop(s, "a role failed to start");
                break;
            }
            log_warn("up", "%s (pid %d) exited (%s %d); restarting in %d ms", r->name, (int)pid,
                     WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), r->backoff_ms);
            if (now_mono_ms() - r->started_ms > 10000)
                r->backoff_ms = 200; /* it ran for a while: start over */
            struct timeval tv = {.tv_sec = r->backoff_ms / 1000, .tv_usec = (r->backoff_ms % 1000) * 1000};
            evtimer_add(r->restart, &tv);
            r->backoff_ms = r->backoff_ms * 2 > 5000 ? 5000 : r->backoff_ms * 2;
            r->restarts++;
            break;
        }
    }
}

static void on_restart(evutil_socket_t fd, short what, void *arg)
{
    role_t *r = arg;
    if (!r->sup->stopping)
        start_role(r->sup, r);
}

/* Stops roles from the last started to the first, one at a time. */
static void stop_next(supervisor_t *s)
{
    while (s->stop_index >= 0) {
        role_t *r = &s->roles[s->stop_index];
        if (r->pid > 0) {
            if (!r->stopped) {
                kill(r->pid, SIGTERM);
                s->stop_deadline_ms = now_mono_ms() + STOP_GRACE_MS;
                struct timeval tv = {.tv_usec = 100000};
                evtimer_add(s->stop_timer, &tv);
            }
            return; /* wait for it (on_child calls us again) */
        }
        s->stop_index--;
    }
    event_base_loopexit(s->base, NULL);
}

static void on_stop_timer(evutil_socket_t fd, short what, void *arg)
{
    supervisor_t *s = arg;
    if (s->stop_index < 0)
        return;
    role_t *r = &s->roles[s->stop_index];
    if (r->pid > 0 && now_mono_ms() >= s->stop_deadline_ms) {
        log_warn("up", "%s did not stop in %d ms: killing it", r->name, STOP_GRACE_MS);
        kill(r->pid, SIGKILL);
        s->unclean++;
    }
    if (r->pid > 0) {
        struct timeval tv = {.tv_usec = 100000};
        evtimer_add(s->stop_timer, &tv);
    }
}

static void begin_stop(supervisor_t *s, const char *why)
{
    if (s->stopping)
        return;
    s->stopping = true;
    log_info("up", "%s: stopping every role", why);
    for (int i = 0; i < s->n_roles; i++)
        evtimer_del(s->roles[i].restart);
    s->stop_index = s->n_roles - 1;
    stop_next(s);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    begin_stop(arg, strsignal((int)sig));
}

/* ------------------------------------------------------- readiness gate */

static void ready_free_clients(supervisor_t *s)
{
    /* pending calls end with RPC_CANCELLED: on_ready_reply ignores them */
    if (s->ready_pl)
        rpc_client_free(s->ready_pl);
    s->ready_pl = NULL;
    for (int i = 0; i < s->n_ready_asg; i++)
        rpc_client_free(s->ready_asg[i]);
    s->n_ready_asg = 0;
    s->ready_pending = 0;
}

/* Starts the frontend (once), ready or not (why says which). */
static void start_frontend(supervisor_t *s, const char *why)
{
    if (s->frontend_started)
        return;
    s->frontend_started = true;
    evtimer_del(s->ready_timer);
    ready_free_clients(s);
    if (s->stopping)
        return;
    log_info("up", "%s: starting the frontend", why);
    start_role(s, &s->roles[s->n_roles - 1]);
}

static void ready_check_done(supervisor_t *s)
{
    if (s->ready_pending > 0 || s->frontend_started)
        return;
    if (s->have_worker && s->have_leader) {
        start_frontend(s, "an assignment leader and an active worker");
        return;
    }
    if (now_mono_ms() >= s->ready_deadline_ms) {
        log_warn("up", "not ready after %d s (%s%s%s)", READY_WAIT_MS / 1000,
                 s->have_leader ? "" : "no assignment leader",
                 !s->have_leader && !s->have_worker ? ", " : "",
                 s->have_worker ? "" : "no active worker");
        start_frontend(s, "not ready in time");
        return;
    }
    struct timeval tv = {0, READY_POLL_MS * 1000};
    evtimer_add(s->ready_timer, &tv);
}

static void on_workers_reply(const rpc_result_t *r, void *arg)
{
    supervisor_t *s = arg;
    if (r->error && !strcmp(r->error, RPC_CANCELLED))
        return;
    s->ready_pending--;
    size_t i;
    json_t *w;
    json_array_foreach(r->error ? NULL : json_object_get(r->result, "workers"), i, w) {
        const char *st = json_string_value(json_object_get(w, "state"));
        if (st && !strcmp(st, "active"))
            s->have_worker = true;
    }
    ready_check_done(s);
}

static void on_asg_reply(const rpc_result_t *r, void *arg)
{
    supervisor_t *s = arg;
    if (r->error && !strcmp(r->error, RPC_CANCELLED))
        return;
    s->ready_pending--;
    const char *role = r->error ? NULL : json_string_value(json_object_get(r->result, "role"));
    if (role && !strcmp(role, "leader"))
        s->have_leader = true;
    ready_check_done(s);
}

static void on_ready_timer(evutil_socket_t fd, short what, void *arg)
{
    supervisor_t *s = arg;
    if (s->stopping) {
        start_frontend(s, "stopping"); /* frees the clients, starts nothing */
        return;
    }
    if (!s->have_worker && s->ready_pl &&
        rpc_call(s->ready_pl, "placement.workers", NULL, NULL, 0, 1000, on_workers_reply, s) == 0)
        s->ready_pending++;
    for (int i = 0; !s->have_leader && i < s->n_ready_asg; i++)
        if (rpc_call(s->ready_asg[i], "asg.status", NULL, NULL, 0, 1000, on_asg_reply, s) == 0)
            s->ready_pending++;
    ready_check_done(s);
}

/* Polls placement and the replicas (their --listen addresses) until the
 * platform can run a function, then starts the frontend. */
static void ready_gate_start(supervisor_t *s)
{
    rpc_opts_t o = {.connect_timeout_ms = 1000, .backoff_min_ms = 20, .backoff_max_ms = 100};
    for (int i = 0; i < s->n_roles - 1; i++) {
        const role_t *r = &s->roles[i];
        const char *addr = role_flag(r, "--listen");
        err_t err = {0};
        rpc_client_t *c = addr ? rpc_client_new(s->base, addr, &o, &err) : NULL;
        if (!c)
            continue;
        if (!strcmp(r->argv[2], "placement") && !s->ready_pl)
            s->ready_pl = c;
        else if (!strcmp(r->argv[2], "assignment"))
            s->ready_asg[s->n_ready_asg++] = c;
        else
            rpc_client_free(c);
    }
    if (!s->ready_pl || !s->n_ready_asg) {
        start_frontend(s, "cannot check readiness");
        return;
    }
    s->ready_deadline_ms = now_mono_ms() + READY_WAIT_MS;
    event_active(s->ready_timer, EV_TIMEOUT, 0);
}

int supervise_main(const char *host, int port, const char *data_arg, bool no_auth, int keep_alive_s,
                   int account_concurrency, int workers, int shards, const char *isolation,
                   const char *store, int argc, char **argv)
{
    err_t err = {0};
    char data[PATH_MAX];
    if (mkdir_p(data_arg, 0700, &err) < 0 || !realpath(data_arg, data)) {
        fprintf(stderr, "flicker up: data directory %s: %s\n", data_arg,
                err.msg[0] ? err.msg : strerror(errno));
        return 1;
    }
    char *lock_path = xasprintf("%s/flicker.lock", data);
    int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(lock_path);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
        fprintf(stderr, "flicker up: %s is in use by another flicker (lock held)\n", data);
        return 1;
    }
    char *run = xasprintf("%s/run", data);
    mkdir_p(run, 0700, NULL);
    /* Unix socket paths must fit sun_path (108 bytes): a deep data
     * directory gets its sockets in a short per-data-dir directory. */
    char *sockets = NULL;
    if (strlen(run) + sizeof "/assignment-s99-9.sock" > 100) {
        char hex[65];
        sha256_hex(data, strlen(data), hex);
        sockets = xasprintf("/tmp/flicker-%.16s", hex);
    } else {
        sockets = xstrdup(run);
    }
    mkdir_p(sockets, 0700, NULL);
    char *journal_dir = xasprintf("%s/journal", data);
    mkdir_p(journal_dir, 0700, NULL);

    supervisor_t s = {0};
    char buf[PATH_MAX + 64], *asg_list = xcalloc(1, (size_t)shards * 4 * (PATH_MAX + 16));
    size_t asg_list_size = (size_t)shards * 4 * (PATH_MAX + 16);
    char placement_addr[PATH_MAX + 16];
    snprintf(placement_addr, sizeof placement_addr, "unix:%s/placement.sock", sockets);

    role_t *r = new_role(&s, "placement");
    add_arg(r, "serve");
    add_arg(r, "placement");
    add_arg(r, "--listen");
    add_arg(r, placement_addr);
    add_arg(r, "--data");
    add_arg(r, data);

    /* The assignment table, sharded by function when asked: each shard is
     * a group of three replicas with its own journal; shard 1's replicas
     * are assignment-1..3 over DATA/journal, shard K's assignment-sK-1..3
     * over DATA/journal-sK.  The frontend gets the groups separated by ';'. */
    for (int shard = 1; shard <= shards; shard++) {
        char jdir[PATH_MAX + 32];
        if (shard == 1)
            snprintf(jdir, sizeof jdir, "%s", journal_dir);
        else
            snprintf(jdir, sizeof jdir, "%s-s%d", journal_dir, shard);
        mkdir_p(jdir, 0700, NULL);
        if (shard > 1) {
            size_t used = strlen(asg_list);
            snprintf(asg_list + used, asg_list_size - used, ";");
        }
        for (int i = 1; i <= 3; i++) {
            char name[32];
            if (shard == 1)
                snprintf(name, sizeof name, "assignment-%d", i);
            else
                snprintf(name, sizeof name, "assignment-s%d-%d", shard, i);
            r = new_role(&s, name);
            snprintf(buf, sizeof buf, "unix:%s/%s.sock", sockets, name);
            size_t used = strlen(asg_list);
            snprintf(asg_list + used, asg_list_size - used, "%s%s",
                     used && asg_list[used - 1] != ';' ? "," : "", buf);
            add_arg(r, "serve");
            add_arg(r, "assignment");
            add_arg(r, "--listen");
            add_arg(r, buf);
            add_arg(r, "--id");
            add_arg(r, name);
            snprintf(buf, sizeof buf, "file:%s", jdir);
            add_arg(r, "--journal");
            add_arg(r, buf);
            add_arg(r, "--placement");
            add_arg(r, placement_addr);
            snprintf(buf, sizeof buf, "%d", keep_alive_s);
            add_arg(r, "--keep-alive");
            add_arg(r, buf);
            snprintf(buf, sizeof buf, "%d", account_concurrency);
            add_arg(r, "--account-concurrency");
            add_arg(r, buf);
        }
    }

    struct sysinfo si;
    sysinfo(&si);
    int host_mb = (int)((uint64_t)si.totalram * si.mem_unit >> 20);
    for (int i = 1; i <= workers && s.n_roles < MAX_ROLES - 1; i++) {
        char name[32];
        snprintf(name, sizeof name, "worker-%d", i);
        r = new_role(&s, name);
        add_arg(r, "serve");
        add_arg(r, "worker");
        snprintf(buf, sizeof buf, "unix:%s/%s.sock", sockets, name);
        add_arg(r, "--listen");
        add_arg(r, buf);
        add_arg(r, "--id");
        add_arg(r, name);
        add_arg(r, "--zone");
        add_arg(r, i % 2 ? "local-a" : "local-b");
        add_arg(r, "--placement");
        add_arg(r, placement_addr);
        add_arg(r, "--data");
        add_arg(r, data);
        snprintf(buf, sizeof buf, "%d", host_mb * 4 / workers);
        add_arg(r, "--memory-mb");
        add_arg(r, buf);
        add_arg(r, "--isolation");
        add_arg(r, isolation);
        if (store && strcmp(store, "sqlite")) { /* workers fetch code from it */
            add_arg(r, "--store");
            add_arg(r, store);
        }
    }

    /* The frontend gets up's own flags (minus the supervisor's) plus where
     * the other roles are. */
    r = new_role(&s, "frontend");
    add_arg(r, "serve");
    add_arg(r, "frontend");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--split") || !strcmp(argv[i], "--embedded"))
            continue;
        if (!strcmp(argv[i], "--workers") || !strcmp(argv[i], "--data") ||
            !strcmp(argv[i], "--assignment-shards")) {
            i++;
            continue;
        }
        if (!strncmp(argv[i], "--workers=", 10) || !strncmp(argv[i], "--data=", 7) ||
            !strncmp(argv[i], "--assignment-shards=", 20))
            continue;
        add_arg(r, argv[i]);
    }
    snprintf(buf, sizeof buf, "%s:%d", host, port);
    add_arg(r, "--listen");
    add_arg(r, buf);
    add_arg(r, "--data");
    add_arg(r, data);
    add_arg(r, "--assignment");
    add_arg(r, asg_list);
    add_arg(r, "--placement");
    add_arg(r, placement_addr);
    (void)no_auth;

    s.base = event_base_new();
    for (int i = 0; i < s.n_roles; i++)
        s.roles[i].restart = evtimer_new(s.base, on_restart, &s.roles[i]);
    s.stop_timer = evtimer_new(s.base, on_stop_timer, &s);
    s.ready_timer = evtimer_new(s.base, on_ready_timer, &s);
    struct event *sigchld = evsignal_new(s.base, SIGCHLD, on_child, &s);
    struct event *sigint = evsignal_new(s.base, SIGINT, on_signal, &s);
    struct event *sigterm = evsignal_new(s.base, SIGTERM, on_signal, &s);
    event_add(sigchld, NULL);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    signal(SIGPIPE, SIG_IGN);

    s.roles_path = xasprintf("%s/roles.json", run);
    log_info("up", "split mode: %d roles, sockets in %s", s.n_roles, sockets);
    for (int i = 0; i < s.n_roles - 1; i++) /* the frontend once they are ready */
        start_role(&s, &s.roles[i]);
    ready_gate_start(&s);
    event_base_dispatch(s.base);
    ready_free_clients(&s);

    for (int i = 0; i < s.n_roles; i++) {
        if (s.roles[i].pid > 0) { /* second signal or loop exit: make sure */
            kill(s.roles[i].pid, SIGKILL);
            waitpid(s.roles[i].pid, NULL, 0);
            s.unclean++;
        }
        event_free(s.roles[i].restart);
        for (int k = 0; s.roles[i].argv[k]; k++)
            free(s.roles[i].argv[k]);
    }
    event_free(s.stop_timer);
    event_free(s.ready_timer);
    event_free(sigchld);
    event_free(sigint);
    event_free(sigterm);
    event_base_free(s.base);
    unlink(s.roles_path);
    free(s.roles_path);
    if (strcmp(sockets, run) != 0)
        rmdir(sockets); /* empty once every role removed its socket */
    free(sockets);
    free(run);
    free(journal_dir);
    free(asg_list);
    close(lock_fd);
    log_info("up", "stopped%s", s.unclean ? " (some roles did not stop cleanly)" : "");
    return s.unclean || s.fatal ? 1 : 0;
}
