/* worker_main.c - `flicker serve worker`: the worker role as its own process.
 *
 * A worker_t (sandboxes on this host) behind a worker_service_t (the RPC
 * methods of docs/protocol.md, registration and heartbeats to placement)
 * on one libevent loop.  Function logs go to DATA/logs (shared with the
 * other roles of this host; no lock is taken on DATA).  SIGTERM/SIGINT:
 * every environment is destroyed (no sandbox process, cgroup or mount is
 * left), the parent cgroups are removed and it exits 0.  Start-up errors
 * exit 1, usage errors 2. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysinfo.h>
#include <unistd.h>
#include "common/log.h"
#include "common/util.h"
#include "common/version.h"
#include "platform/serve.h"
#include "worker/fnlog.h"
#include "worker/microvm.h"
#include "worker/sandbox.h"
#include "worker/worker.h"
#include "worker/worker_service.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: flicker serve worker --listen ADDR [options]\n"
               "  --listen ADDR          RPC address: tcp:HOST:PORT or unix:PATH\n"
               "  --advertise ADDR       address given to placement (default: --listen)\n"
               "  --id ID                worker id (default: worker-HOSTNAME-PID)\n"
               "  --zone Z               availability zone (default local-a)\n"
               "  --placement ADDR[,..]  placement service address(es) (default: none)\n"
               "  --memory-mb N          capacity offered (default: 4x the host's RAM)\n"
               "  --data DIR             data directory; logs under DIR/logs (default ./.flicker)\n"
               "  --runtimes DIR         runtime clients (default: found next to the binary)\n"
               "  --heartbeat-ms N       heartbeat period (default 1000)\n"
               "  --region REGION        region (default us-east-1)\n"
               "  --isolation KIND       sandbox (default) or microvm: the default backend of\n"
               "                         execution environments (tag flicker:isolation overrides)\n"
               "  --store SPEC           sqlite (default): run code from the path the frontend\n"
               "                         gives (a data dir shared with it); etcd:URL,...[;prefix=/p]:\n"
               "                         the code is fetched from the shared store into DATA/code\n"
               "  --verbose              debug logging\n");
}

static int positive(const char *s, const char *flag)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end || v < 1 || v > INT_MAX) {
        fprintf(stderr, "flicker serve worker: %s wants a positive integer\n", flag);
        return -1;
    }
    return (int)v;
}

typedef struct wmain {
    struct event_base *base;
    bool stopping;
} wmain_t;

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    wmain_t *m = arg;
    if (!m->stopping)
        log_info("worker", "%s: stopping", strsignal((int)sig));
    m->stopping = true;
    event_base_loopexit(m->base, NULL);
}

/* MicroVMs: where they are the default, the backend and the accelerator
 * are settled now (a missing QEMU or guest stops the worker here, and the
 * log says KVM or TCG and why); elsewhere a best-effort sweep of what a
 * killed predecessor left.  Returns 0 or -1 (logged). */
int start_microvms(const char *isolation, const char *state_dir)
{
    err_t err = {0};
    bool wanted = isolation && !strcmp(isolation, "microvm");
    if (microvm_system_init(state_dir, &err) < 0) {
        if (wanted) {
            log_error("worker", "microvm isolation unavailable: %s", err.msg);
            return -1;
        }
        log_debug("worker", "microvm backend not available (%s): functions tagged "
                  "flicker:isolation=microvm will fail to start", err.msg);
        return 0;
    }
    if (wanted) {
        const char *accel = microvm_accelerator(); /* decides: before the reason */
        log_info("worker", "microVMs: accelerator %s (%s)", accel, microvm_accelerator_reason());
    }
    return 0;
}

int serve_worker_main(int argc, char **argv)
{
    const char *listen = NULL, *advertise = NULL, *id = NULL, *zone = "local-a", *placement = NULL;
    const char *data = "./.flicker", *runtimes_opt = NULL, *region = "us-east-1";
    const char *isolation = "sandbox", *store_spec = "sqlite";
    int memory_mb = 0, heartbeat_ms = 1000;
    static const struct option opts[] = {
        {"listen", required_argument, 0, 'l'},     {"advertise", required_argument, 0, 'a'},
        {"id", required_argument, 0, 'i'},         {"zone", required_argument, 0, 'z'},
        {"placement", required_argument, 0, 'p'},  {"memory-mb", required_argument, 0, 'm'},
        {"data", required_argument, 0, 'd'},       {"runtimes", required_argument, 0, 'r'},
        {"heartbeat-ms", required_argument, 0, 'H'}, {"region", required_argument, 0, 'R'},
        {"verbose", no_argument, 0, 'v'},          {"help", no_argument, 0, 'h'},
        {"isolation", required_argument, 0, 'I'},
        {"store", required_argument, 0, 'T'},
        {0, 0, 0, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'l': listen = optarg; break;
        case 'a': advertise = optarg; break;
        case 'i': id = optarg; break;
        case 'z': zone = optarg; break;
        case 'p': placement = optarg; break;
        case 'm':
            if ((memory_mb = positive(optarg, "--memory-mb")) < 0)
                return 2;
            break;
        case 'd': data = optarg; break;
        case 'r': runtimes_opt = optarg; break;
        case 'H':
            if ((heartbeat_ms = positive(optarg, "--heartbeat-ms")) < 0)
                return 2;
            break;
        case 'R': region = optarg; break;
        case 'I':
            if (strcmp(optarg, "sandbox") && strcmp(optarg, "microvm")) {
                fprintf(stderr, "flicker serve worker: --isolation wants sandbox or microvm\n");
                return 2;
            }
            isolation = optarg;
            break;
        case 'T':
            if (strcmp(optarg, "sqlite") && strncmp(optarg, "etcd:", 5)) {
                fprintf(stderr, "flicker serve worker: --store wants sqlite or etcd:URL,...[;prefix=/p]\n");
                return 2;
            }
            store_spec = optarg;
            break;
        case 'v': log_set_level(LOG_DEBUG); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!listen || optind != argc) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* A stop signal during start-up (sandbox_system_init may take a while
     * reaping a dead run's sandboxes) waits for the loop's handler. */
    sigset_t stop, old_mask;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigprocmask(SIG_BLOCK, &stop, &old_mask);

    char hostname[128] = "host";
    gethostname(hostname, sizeof hostname - 1);
    char *default_id = xasprintf("worker-%s-%d", hostname, (int)getpid());
    char *bindir = flicker_bin_dir();
    char *init_path = xasprintf("%s/flicker-init", bindir);
    char *runtimes = runtimes_opt ? xstrdup(runtimes_opt) : flicker_runtimes_dir(bindir);
    free(bindir);
    char *log_dir = NULL, *address = NULL;
    fnlog_dir_t *logs = NULL;
    struct event_base *base = NULL;
    worker_t *worker = NULL;
    worker_service_t *ws = NULL;
    store_t *code_store = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    bool sandboxes = false;
    wmain_t m = {0};
    int rc = 1;
    err_t err = {0};

    if (!runtimes)
        log_warn("worker", "no runtimes directory found next to the binary (--runtimes or "
                 "FLICKER_RUNTIMES): only provided runtimes will work");
    if (mkdir_p(data, 0700, &err) < 0) {
        log_error("worker", "data directory %s: %s", data, err.msg);
        goto out;
    }
    log_dir = xasprintf("%s/logs", data);
    logs = fnlog_open(log_dir, &err);
    if (!logs) {
        log_error("worker", "logs: %s", err.msg);
        goto out;
    }
    if (sandbox_system_init(init_path, data, &err) < 0) {
        log_error("worker", "sandboxes unavailable: %s", err.msg);
        goto out;
    }
    sandboxes = true;
    if (start_microvms(isolation, data) < 0)
        goto out;
    /* A shared store: code is fetched from it into this worker's DATA. */
    if (strcmp(store_spec, "sqlite")) {
        code_store = store_open_worker(store_spec, data, &err);
        if (!code_store) {
            log_error("worker", "--store: %s", err.msg);
            goto out;
        }
    }
    base = event_base_new();
    if (!memory_mb) {
        struct sysinfo si;
        sysinfo(&si);
        /* As flicker up: limits are ceilings, not reservations. */
        memory_mb = (int)(((uint64_t)si.totalram * si.mem_unit >> 20) * 4);
    }
    worker_config_t wc = {
        .id = id ? id : default_id,
        .zone = zone,
        .runtimes_dir = runtimes,
        .region = region,
        .memory_mb = memory_mb,
        .cpus = (int)sysconf(_SC_NPROCESSORS_ONLN),
        .init_timeout_s = 10,
        .logs = logs,
        .isolation = isolation,
        .state_dir = data,
        .code_store = code_store,
    };
    worker = worker_new(base, &wc, &err);
    if (!worker) {
        log_error("worker", "%s", err.msg);
        goto out;
    }
    worker_service_config_t sc = {.address = advertise ? advertise : listen,
                                  .placement = placement,
                                  .heartbeat_ms = heartbeat_ms};
    ws = worker_service_new(base, worker, &sc, &err);
    if (!ws) {
        log_error("worker", "--placement: %s", err.msg);
        rc = 2;
        goto out;
    }
    if (worker_service_listen(ws, listen, &err) < 0) {
        log_error("worker", "listen %s: %s", listen, err.msg);
        goto out;
    }
    /* tcp:HOST:0 -> advertise the port actually bound. */
    if (!advertise && !strncmp(listen, "tcp:", 4) && strlen(listen) > 2 &&
        !strcmp(listen + strlen(listen) - 2, ":0")) {
        address = xasprintf("%.*s:%d", (int)(strlen(listen) - 2), listen, worker_service_port(ws));
        worker_service_set_address(ws, address);
    }
    m.base = base;
    sigint = evsignal_new(base, SIGINT, on_signal, &m);
    sigterm = evsignal_new(base, SIGTERM, on_signal, &m);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    worker_service_start(ws);
    log_info("worker", "flicker %s worker %s (zone %s, %d MB) serving on %s (sandboxes on cgroup %s; "
             "placement %s)", FLICKER_VERSION, wc.id, zone, memory_mb, address ? address : listen,
             sandbox_cgroup_version(), placement ? placement : "none");
    fflush(stdout);

    event_base_dispatch(base);
    rc = 0;

out:
    /* Environments first: the service destroys them silently, the worker
     * tears each down (process, cgroup, mount) before worker_free returns. */
    worker_service_free(ws);
    worker_free(worker);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    if (base)
        event_base_free(base);
    store_close(code_store);
    fnlog_close(logs);
    if (sandboxes) {
        sandbox_system_shutdown();
        microvm_system_shutdown();
    }
    free(log_dir);
    free(address);
    free(init_path);
    free(runtimes);
    free(default_id);
    if (rc == 0)
        log_info("worker", "stopped");
    return rc;
}
