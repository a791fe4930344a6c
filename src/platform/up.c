/* up.c - `flicker up`: every role on this host, in one process.
 *
 * Wires the roles together around one libevent loop: store (SQLite + code
 * blobs under --data), a worker (sandboxes), placement (the fleet: this
 * worker), assignment (environment table + concurrency), and the frontend
 * (the public endpoint).  Holds an exclusive lock on the data directory so
 * two platforms never share it.  SIGINT/SIGTERM stop it: the listener
 * closes, in-flight invocations get a grace period, then every environment
 * is destroyed (no process, cgroup or mount survives) and it exits 0.
 *
 * Credentials: FLICKER_ACCESS_KEY_ID / FLICKER_SECRET_ACCESS_KEY, else
 * DATA/credentials (AWS shared-credentials format), generated on first run. */
#include "platform/serve.h"
#include "platform/supervise.h"
#include "platform/up.h"
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>
#include "assignment/assignment.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "common/version.h"
#include "frontend/frontend.h"
#include "placement/placement.h"
#include "store/store.h"
#include "worker/fnlog.h"
#include "worker/sandbox.h"
#include "worker/worker.h"
#include "worker/microvm.h"

typedef struct up_options {
    char host[256];
    int port;
    const char *data;
    bool no_auth;
    int keep_alive_s;
    int account_concurrency;
    const char *region;
    const char *account_id;
    int grace_s;
    int retry_delays[2];
    bool split;               /* up: one process per role (supervise.c) */
    int workers;              /* up --split: worker processes */
    int shards;               /* up --split: assignment table shards */
    const char *assignment;   /* serve frontend: replica addresses */
    const char *placement;    /* serve frontend: placement address */
    bool frontend_only;       /* serve frontend */
    const char *isolation;    /* default isolation backend: sandbox or microvm */
    const char *store;        /* store spec: sqlite (default) or etcd:... */
} up_options_t;

typedef struct platform {
    struct event_base *base;
    frontend_t *frontend;
    struct event *grace_timer;
    uint64_t stop_deadline_ms;
    bool stopping;
    int grace_s;
} platform_t;

/* `flicker up --help`: the flags of the whole platform on one host. */
static void usage_up(FILE *f)
{
    fprintf(f, "usage: flicker up [options]\n"
           "  --listen ADDR:PORT        endpoint (default 127.0.0.1:9000)\n"
           "  --data DIR                data directory (default ./.flicker)\n"
           "  --no-auth                 accept unsigned requests (local play only)\n"
           "  --keep-alive SECONDS      idle environments live this long (default 600)\n"
           "  --account-concurrency N   account concurrency limit (default 1000)\n"
           "  --region REGION           region in ARNs (default us-east-1)\n"
           "  --grace SECONDS           on stop, wait this long for in-flight invokes (default 5)\n"
           "  --async-retry-delays A,B  Event retry delays after function errors (default 60,120)\n"
           "  --embedded                every role in this one process (default: one\n"
           "                            supervised process per role, as --split)\n"
           "  --workers N               worker processes (default 1)\n"
           "  --assignment-shards N     split the assignment table by function over N\n"
           "                            leader groups of 3 replicas (default 1)\n"
           "  --isolation KIND          sandbox (default) or microvm: what isolates each\n"
           "                            execution environment (a function's tag\n"
           "                            flicker:isolation overrides it)\n"
           "  --cluster-key-file PATH   the roles authenticate their internal RPC with this\n"
           "                            shared key (mode 600, >= 16 bytes; docs/rpc.md)\n"
           "  --store SPEC              where functions, versions, aliases and code live:\n"
           "                            sqlite (default: DATA/flicker.db) or\n"
           "                            etcd:URL,URL,...[;prefix=/p] (shared by every host;\n"
           "                            given to the frontend and the workers)\n"
           "  --verbose                 debug logging\n");
}

/* `flicker serve frontend --help`: only the flags a lone frontend uses
 * (keep-alive, --workers and --embedded belong to the other roles or to
 * `flicker up`). */
static void usage_frontend(FILE *f)
{
    fprintf(f, "usage: flicker serve frontend --assignment ADDR[,ADDR...] [options]\n"
           "  --assignment ADDR[,..]    the assignment replicas (tcp:HOST:PORT or unix:PATH);\n"
           "                            the frontend finds the leader itself (required)\n"
           "  --placement ADDR          placement, for the fleet in /flicker/status\n"
           "  --listen ADDR:PORT        public HTTP endpoint (default 127.0.0.1:9000)\n"
           "  --data DIR                data directory: the store and code (default ./.flicker)\n"
           "  --no-auth                 accept unsigned requests (local play only)\n"
           "  --account-concurrency N   account limit of the control plane (GetAccountSettings,\n"
           "                            reserved concurrency checks; default 1000); invokes are\n"
           "                            throttled by the assignment leader's own limit\n"
           "  --region REGION           region in ARNs (default us-east-1)\n"
           "  --grace SECONDS           on stop, wait this long for in-flight invokes (default 5)\n"
           "  --async-retry-delays A,B  Event retry delays after function errors (default 60,120)\n"
           "  --store SPEC              where functions, versions, aliases and code live:\n"
           "                            sqlite (default: DATA/flicker.db) or\n"
           "                            etcd:URL,URL,...[;prefix=/p] (shared by every host;\n"
           "                            the Event queue stays in DATA on this host)\n"
           "  --verbose                 debug logging\n");
}

static int parse_listen(const char *s, up_options_t *o)
{
    const char *colon = strrchr(s, ':');
    if (!colon) {
        snprintf(o->host, sizeof o->host, "127.0.0.1");
        o->port = atoi(s);
    } else {
        snprintf(o->host, sizeof o->host, "%.*s", (int)(colon - s), s);
        o->port = atoi(colon + 1);
    }
    return o->port >= 0 && o->port < 65536 ? 0 : -1;
}

static void random_token(char *out, size_t n, const char *alphabet)
{
    size_t k = strlen(alphabet);
    unsigned char r[128];
    random_bytes(r, n);
    for (size_t i = 0; i < n; i++)
        out[i] = alphabet[r[i] % k];
    out[n] = 0;
}

/* Loads or creates DATA/credentials.  Returns 0 or -1/err. */
static int load_credentials(const char *data, char **akid, char **secret, bool *generated, err_t *err)
{
    const char *ea = getenv("FLICKER_ACCESS_KEY_ID"), *es = getenv("FLICKER_SECRET_ACCESS_KEY");
    *generated = false;
    if (ea && *ea && es && *es) {
        *akid = xstrdup(ea);
        *secret = xstrdup(es);
        return 0;
    }
    char *path = xasprintf("%s/credentials", data);
    char *text = read_file(path, 65536, NULL, NULL);
    if (text) {
        char a[256] = "", s[256] = "";
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            sscanf(line, " aws_access_key_id = %255s", a);
            sscanf(line, " aws_secret_access_key = %255s", s);
        }
        free(text);
        if (*a && *s) {
            *akid = xstrdup(a);
            *secret = xstrdup(s);
            free(path);
            return 0;
        }
    }
    char a[21] = "AKIA", s[41];
    random_token(a + 4, 16, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567");
    random_token(s, 40, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
    char *content = xasprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", a, s);
    int rc = write_file_atomic(path, content, strlen(content), 0600, err);
    free(content);
    free(path);
    if (rc < 0)
        return -1;
    *akid = xstrdup(a);
    *secret = xstrdup(s);
    *generated = true;
    return 0;
}

static void finish_stop(platform_t *p)
{
    event_base_loopexit(p->base, NULL);
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
    platform_t *p = arg;
    if (frontend_in_flight(p->frontend) == 0 || now_mono_ms() >= p->stop_deadline_ms) {
        finish_stop(p);
        return;
    }
    struct timeval tv = {.tv_usec = 50000};
    evtimer_add(p->grace_timer, &tv);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    platform_t *p = arg;
    if (p->stopping) {
        log_warn("up", "second signal: stopping now");
        finish_stop(p);
        return;
    }
    p->stopping = true;
    log_info("up", "%s: stopping (in-flight invocations: %d)", strsignal((int)sig),
             frontend_in_flight(p->frontend));
    frontend_stop_listening(p->frontend);
    p->stop_deadline_ms = now_mono_ms() + (uint64_t)p->grace_s * 1000u;
    on_grace(-1, 0, p);
}

/* Parses the flags shared by `flicker up` and `flicker serve frontend`.
 * Returns -1 to continue, else an exit status. */
static int parse_options(int argc, char **argv, up_options_t *o, const char *who)
{
    static const struct option opts[] = {
        {"listen", required_argument, 0, 'l'},   {"data", required_argument, 0, 'd'},
        {"no-auth", no_argument, 0, 'n'},        {"keep-alive", required_argument, 0, 'k'},
        {"account-concurrency", required_argument, 0, 'c'},
        {"region", required_argument, 0, 'r'},   {"grace", required_argument, 0, 'g'},
        {"verbose", no_argument, 0, 'v'},        {"help", no_argument, 0, 'h'},
        {"async-retry-delays", required_argument, 0, 'R'},
        {"split", no_argument, 0, 'S'},          {"workers", required_argument, 0, 'W'},
        {"embedded", no_argument, 0, 'E'},
        {"assignment", required_argument, 0, 'A'}, {"placement", required_argument, 0, 'P'},
        {"isolation", required_argument, 0, 'I'},
        {"assignment-shards", required_argument, 0, 'N'},
        {"cluster-key-file", required_argument, 0, 'K'},
        {"store", required_argument, 0, 'T'},
        {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l':
            if (parse_listen(optarg, o) < 0) {
                fprintf(stderr, "%s: bad --listen %s\n", who, optarg);
                return 2;
            }
            break;
        case 'd': o->data = optarg; break;
        case 'n': o->no_auth = true; break;
        case 'k': o->keep_alive_s = atoi(optarg); break;
        case 'c': o->account_concurrency = atoi(optarg); break;
        case 'r': o->region = optarg; break;
        case 'g': o->grace_s = atoi(optarg); break;
        case 'v': log_set_level(LOG_DEBUG); break;
        case 'S': o->split = true; break;
        case 'E': o->split = false; break;
        case 'W': o->workers = atoi(optarg); break;
        case 'N':
            o->shards = atoi(optarg);
            if (o->shards < 1 || o->shards > 16) {
                fprintf(stderr, "%s: --assignment-shards wants 1-16\n", who);
                return 2;
            }
            break;
        case 'K': {
            /* this process's clients, and (through the environment) every
             * role process it starts */
            err_t kerr = {0};
            char abs[PATH_MAX];
            if (!realpath(optarg, abs) || rpc_load_cluster_key_file(abs, &kerr) < 0) {
                fprintf(stderr, "%s: %s\n", who, kerr.msg[0] ? kerr.msg : strerror(errno));
                return 2;
            }
            setenv("FLICKER_CLUSTER_KEY_FILE", abs, 1);
            break;
        }
        case 'A': o->assignment = optarg; break;
        case 'T':
            if (strcmp(optarg, "sqlite") && strncmp(optarg, "etcd:", 5)) {
                fprintf(stderr, "%s: --store wants sqlite or etcd:URL,...[;prefix=/p]\n", who);
                return 2;
            }
            o->store = optarg;
            break;
        case 'P': o->placement = optarg; break;
        case 'I':
            if (strcmp(optarg, "sandbox") && strcmp(optarg, "microvm")) {
                fprintf(stderr, "%s: --isolation wants sandbox or microvm\n", who);
                return 2;
            }
            o->isolation = optarg;
            break;
        case 'R':
            if (sscanf(optarg, "%d,%d", &o->retry_delays[0], &o->retry_delays[1]) != 2 ||
                o->retry_delays[0] < 0 || o->retry_delays[1] < 0) {
                fprintf(stderr, "%s: --async-retry-delays wants A,B (seconds)\n", who);
                return 2;
            }
            break;
        case 'h':
        default:
            if (o->frontend_only)
                usage_frontend(c == 'h' ? stdout : stderr);
            else
                usage_up(c == 'h' ? stdout : stderr);
            return c == 'h' ? 0 : 2;
        }
    }
    if (o->keep_alive_s < 1 || o->account_concurrency < 1 || o->grace_s < 0 || o->workers < 1) {
        fprintf(stderr, "%s: --keep-alive, --account-concurrency, --workers must be >= 1\n", who);
        return 2;
    }
    if (o->frontend_only && !o->assignment) {
        fprintf(stderr, "%s: --assignment ADDR[,ADDR...] is required\n", who);
        return 2;
    }
    return -1;
}

static const up_options_t default_options = {
    .host = "127.0.0.1", .port = 9000, .data = "./.flicker", .keep_alive_s = 600,
    .account_concurrency = 1000, .region = "us-east-1", .account_id = "000000000000",
    .grace_s = 5, .retry_delays = {60, 120}, .workers = 1, .shards = 1, .isolation = "sandbox", .store = "sqlite",
};

static int run(up_options_t o);

int up_main(int argc, char **argv)
{
    up_options_t o = default_options;
    o.split = true; /* one process per role unless --embedded */
    int rc = parse_options(argc, argv, &o, "flicker up");
    if (rc >= 0)
        return rc;
    if (o.split)
        return supervise_main(o.host, o.port, o.data, o.no_auth, o.keep_alive_s,
                              o.account_concurrency, o.workers, o.shards, o.isolation, o.store,
                              argc, argv);
    return run(o);
}

int serve_frontend_main(int argc, char **argv)
{
    up_options_t o = default_options;
    o.frontend_only = true;
    int rc = parse_options(argc, argv, &o, "flicker serve frontend");
    if (rc >= 0)
        return rc;
    return run(o);
}

/* Runs the platform (embedded) or one frontend (serve frontend). */
static int run(up_options_t o)
{
    signal(SIGPIPE, SIG_IGN);
    /* A stop signal during start-up waits for the loop's handlers (so even
     * an early stop is a clean one): blocked until they are installed. */
    sigset_t stop_signals, old_mask;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    sigprocmask(SIG_BLOCK, &stop_signals, &old_mask);

    err_t err = {0};
    char data[PATH_MAX];
    if (mkdir_p(o.data, 0700, &err) < 0 || !realpath(o.data, data)) {
        fprintf(stderr, "flicker up: data directory %s: %s\n", o.data, err.msg[0] ? err.msg : strerror(errno));
        return 1;
    }
    char *lock_path = xasprintf("%s/flicker.lock", data);
    /* The embedded platform owns its data directory; a split frontend
     * shares it with its supervisor (which holds the lock). */
    int lock_fd = o.frontend_only ? -2 : open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(lock_path);
    if (lock_fd == -1 || (lock_fd >= 0 && flock(lock_fd, LOCK_EX | LOCK_NB) < 0)) {
        fprintf(stderr, "flicker up: %s is in use by another flicker (lock held)\n", data);
        return 1;
    }

    char *bindir = flicker_bin_dir();
    char *init_path = xasprintf("%s/flicker-init", bindir);
    char *runtimes = flicker_runtimes_dir(bindir);
    free(bindir);
    char *akid = NULL, *secret = NULL;
    bool generated = false;
    int rc = 1;
    store_t *store = NULL;
    fnlog_dir_t *logs = NULL;
    worker_t *worker = NULL;
    placement_t *placement = NULL;
    assignment_t *assignment = NULL;
    frontend_t *fe = NULL;
    backend_t *backend = NULL;
    struct event_base *base = NULL;
    platform_t p = {0};
    struct event *sigint = NULL, *sigterm = NULL;

    if (!runtimes) {
        log_error("up", "cannot find the runtimes directory next to the binary (set FLICKER_RUNTIMES)");
        goto out;
    }
    if (!o.no_auth && load_credentials(data, &akid, &secret, &generated, &err) < 0) {
        log_error("up", "credentials: %s", err.msg);
        goto out;
    }
    if (!o.frontend_only && sandbox_system_init(init_path, data, &err) < 0) {
        log_error("up", "sandboxes unavailable: %s", err.msg);
        goto out;
    }
    if (!o.frontend_only && start_microvms(o.isolation, data) < 0)
        goto out;
    store = store_open_spec(o.store, data, o.region, o.account_id, &err);
    if (!store) {
        log_error("up", "store: %s", err.msg);
        goto out;
    }
    char *log_dir = xasprintf("%s/logs", data);
    logs = fnlog_open(log_dir, &err);
    free(log_dir);
    if (!logs) {
        log_error("up", "logs: %s", err.msg);
        goto out;
    }
    base = event_base_new();
    struct sysinfo si;
    sysinfo(&si);
    int host_mb = (int)((uint64_t)si.totalram * si.mem_unit >> 20);
    worker_config_t wc = {
        .id = "worker-1",
        .zone = "local-a",
        .runtimes_dir = runtimes,
        .region = o.region,
        /* Memory limits are ceilings, not reservations: most functions use a
         * fraction of MemorySize, so offer several times the host's RAM. */
        .memory_mb = host_mb * 4,
        .cpus = (int)sysconf(_SC_NPROCESSORS_ONLN),
        .init_timeout_s = 10,
        .logs = logs,
        .isolation = o.isolation,
        .state_dir = data,
        /* embedded with a shared store: code made on another host is
         * fetched by the in-process worker (same loop thread as the store) */
        .code_store = store_is_distributed(store) ? store : NULL,
    };
    if (o.frontend_only) {
        backend = backend_remote_new(base, o.assignment, o.placement, data, o.account_concurrency,
                                     &err);
        if (!backend) {
            log_error("frontend", "%s", err.msg);
            goto out;
        }
    } else {
        worker = worker_new(base, &wc, &err);
        placement = placement_new();
        placement_register(placement, worker);
        assignment_config_t ac = {.account_concurrency = o.account_concurrency,
                                  .keep_alive_s = o.keep_alive_s};
        assignment = assignment_new(base, placement, &ac);
        backend = backend_local_new(assignment, placement);
    }
    frontend_config_t fc = {
        .listen_host = o.host,
        .listen_port = o.port,
        .region = o.region,
        .account_id = o.account_id,
        .no_auth = o.no_auth,
        .access_key_id = akid,
        .secret_access_key = secret,
        .account_concurrency = o.account_concurrency,
        .data_dir = data,
        .mode = o.frontend_only ? "split" : "embedded",
        .async_retry_delays_s = {o.retry_delays[0], o.retry_delays[1]},
        .isolation = o.isolation,
    };
    fe = frontend_new(base, &fc, store, backend, logs, &err);
    if (!fe) {
        log_error("up", "%s", err.msg);
        goto out;
    }
    p.base = base;
    p.frontend = fe;
    p.grace_s = o.grace_s;
    p.grace_timer = evtimer_new(base, on_grace, &p);
    sigint = evsignal_new(base, SIGINT, on_signal, &p);
    sigterm = evsignal_new(base, SIGTERM, on_signal, &p);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);

    log_info("up", "flicker %s listening on http://%s:%d (data %s, sandboxes on cgroup %s)",
             FLICKER_VERSION, o.host, frontend_port(fe), data, sandbox_cgroup_version());
    if (o.no_auth)
        log_warn("up", "--no-auth: requests are not authenticated");
    else if (generated)
        log_info("up", "generated credentials in %s/credentials: aws_access_key_id=%s", data, akid);
    else
        log_info("up", "access key id %s", akid);
    fflush(stdout);

    event_base_dispatch(base);
    rc = 0;

out:
    /* Environments first (silently: no callbacks into the frontend). */
    assignment_free(assignment);
    worker_free(worker);
    if (o.frontend_only && backend) { /* remote: pending calls end before the frontend goes */
        backend->ops->free(backend);
        backend = NULL;
    }
    frontend_free(fe);
    if (backend)
        backend->ops->free(backend);
    placement_free(placement);
    if (p.grace_timer)
        event_free(p.grace_timer);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (base)
        event_base_free(base);
    fnlog_close(logs);
    store_close(store);
    if (!o.frontend_only) {
        sandbox_system_shutdown();
        microvm_system_shutdown();
    }
    free(akid);
    free(secret);
    free(init_path);
    free(runtimes);
    if (lock_fd >= 0)
        close(lock_fd);
    if (rc == 0)
        log_info("up", "stopped");
    return rc;
}
