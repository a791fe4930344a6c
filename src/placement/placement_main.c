/* placement_main.c - `flicker serve placement`: the placement role as its
 * own process.
 *
 * What: parses the flags (docs/protocol.md, Placement), builds the fleet
 * configuration, starts the RPC service (placement_service.h) on --listen,
 * picks the provider (--provider none|local, provider.h) and runs the loop
 * until SIGTERM/SIGINT, then stops the provider's workers (local), frees
 * everything and exits 0.
 *
 * How: getopt_long like `flicker up`; libevent signal events; the local
 * provider gets our own address (a TCP port 0 is replaced by the port
 * actually bound) and --data for its worker sockets.
 *
 * Invariants: exit status 0 after a signal-driven stop, 1 when startup
 * fails (bad listen address, inconsistent fleet settings), 2 on bad flags;
 * the service is freed before the provider (no event reaches a freed
 * provider). */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/util.h"
#include "placement/placement_service.h"
#include "placement/provider.h"
#include "platform/serve.h"

#define LOG_ROLE "placement"

/* The usage, on stdout for --help, on stderr for a usage error. */
static void usage(FILE *f)
{
    fprintf(f, "usage: flicker serve placement [options]\n"
           "  --listen ADDR               RPC address, tcp:HOST:PORT or unix:PATH (default tcp:127.0.0.1:9100)\n"
           "  --lease-ms N                worker lease (default 14 h)\n"
           "  --heartbeat-timeout-ms N    silence before a worker is LOST (default 10000)\n"
           "  --drain-before-ms N         drain this long before the lease ends\n"
           "                              (default 30 min, or lease/10 when the lease is shorter)\n"
           "  --min-workers N             (default 1)\n"
           "  --max-workers N             (default 16)\n"
           "  --provider none|local       none: workers register themselves (default);\n"
           "                              local: start `flicker serve worker` processes here\n"
           "  --memory-mb N               capacity of each local worker (default 4096)\n"
           "  --data DIR                  local workers' sockets and data (default ./.flicker)\n"
           "  --tick-ms N                 fleet timer period (default 250)\n"
           "  --verbose                   debug logging\n");
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return false;
    *out = v;
    return true;
}

static bool parse_int(const char *s, int lo, int *out)
{
    uint64_t v;
    if (!parse_u64(s, &v) || v > INT_MAX || (int)v < lo)
        return false;
    *out = (int)v;
    return true;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    log_info(LOG_ROLE, "%s: stopping", strsignal((int)sig));
    event_base_loopexit(arg, NULL);
}

/* Our address as workers should dial it: the listen address, with a TCP
 * port 0 replaced by the bound port. */
static char *own_address(const char *listen, int port)
{
    size_t n = strlen(listen);
    if (strncmp(listen, "tcp:", 4) == 0 && n >= 2 && strcmp(listen + n - 2, ":0") == 0)
        return xasprintf("%.*s:%d", (int)(n - 2), listen, port);
    return xstrdup(listen);
}

int serve_placement_main(int argc, char **argv)
{
    const char *listen = "tcp:127.0.0.1:9100", *provider_name = "none", *data = "./.flicker";
    int memory_mb = 4096, tick_ms = 250;
    bool drain_set = false;
    placement_service_config_t cfg = {0};
    fleet_config_default(&cfg.fleet);
    static const struct option opts[] = {
        {"listen", required_argument, 0, 'l'},
        {"lease-ms", required_argument, 0, 'L'},
        {"heartbeat-timeout-ms", required_argument, 0, 'H'},
        {"drain-before-ms", required_argument, 0, 'D'},
        {"min-workers", required_argument, 0, 'm'},
        {"max-workers", required_argument, 0, 'M'},
        {"provider", required_argument, 0, 'p'},
        {"memory-mb", required_argument, 0, 'r'},
        {"data", required_argument, 0, 'd'},
        {"tick-ms", required_argument, 0, 't'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    int c, li = -1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'l': listen = optarg; break;
        case 'L': ok = parse_u64(optarg, &cfg.fleet.lease_ms) && cfg.fleet.lease_ms > 0; break;
        case 'H':
            ok = parse_u64(optarg, &cfg.fleet.heartbeat_timeout_ms) &&
                 cfg.fleet.heartbeat_timeout_ms > 0;
            break;
        case 'D': ok = parse_u64(optarg, &cfg.fleet.drain_before_ms); drain_set = true; break;
        case 'm': ok = parse_int(optarg, 0, &cfg.fleet.min_workers); break;
        case 'M': ok = parse_int(optarg, 1, &cfg.fleet.max_workers); break;
        case 'p':
            provider_name = optarg;
            ok = !strcmp(optarg, "none") || !strcmp(optarg, "local");
            break;
        case 'r': ok = parse_int(optarg, 1, &memory_mb); break;
        case 'd': data = optarg; break;
        case 't': ok = parse_int(optarg, 1, &tick_ms); break;
        case 'v': log_set_level(LOG_DEBUG); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (!ok) {
            fprintf(stderr, "flicker serve placement: bad value for --%s: %s\n",
                    li >= 0 ? opts[li].name : "?", optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "flicker serve placement: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    /* A short lease without an explicit drain window: drain in its last tenth. */
    if (!drain_set && cfg.fleet.drain_before_ms >= cfg.fleet.lease_ms)
        cfg.fleet.drain_before_ms = cfg.fleet.lease_ms / 10;
    if (cfg.fleet.min_workers > cfg.fleet.max_workers) {
        fprintf(stderr, "flicker serve placement: --min-workers exceeds --max-workers\n");
        return 2;
    }
    cfg.tick_ms = tick_ms;
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    err_t err = {0};
    struct event_base *base = event_base_new();
    placement_service_t *ps = NULL;
    placement_provider_t *provider = NULL;
    struct event *sigint = NULL, *sigterm = NULL;
    char *self = NULL;

    ps = placement_service_new(base, &cfg, &err);
    if (!ps) {
        log_error(LOG_ROLE, "fleet settings: %s", err.msg);
        goto out;
    }
    if (placement_service_listen(ps, listen, &err) < 0) {
        log_error(LOG_ROLE, "listen %s: %s", listen, err.msg);
        goto out;
    }
    self = own_address(listen, placement_service_port(ps));
    if (!strcmp(provider_name, "local")) {
        char real[PATH_MAX];
        if (mkdir_p(data, 0700, &err) < 0 || !realpath(data, real)) {
            log_error(LOG_ROLE, "data directory %s: %s", data, err.msg[0] ? err.msg : strerror(errno));
            goto out;
        }
        provider_local_config_t lc = {.data_dir = real, .placement_addr = self,
                                      .memory_mb = memory_mb};
        provider = provider_local_new(&lc, &err);
        if (!provider) {
            log_error(LOG_ROLE, "%s", err.msg);
            goto out;
        }
    } else {
        provider = provider_none_new();
    }
    placement_service_set_provider(ps, provider);

    sigint = evsignal_new(base, SIGINT, on_signal, base);
    sigterm = evsignal_new(base, SIGTERM, on_signal, base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    const fleet_config_t *fc = fleet_config(placement_service_fleet(ps));
    log_info(LOG_ROLE, "placement listening on %s (provider %s, lease %llu ms, drain before %llu ms, "
             "heartbeat timeout %llu ms, workers %d..%d)", self, provider->name,
             (unsigned long long)fc->lease_ms, (unsigned long long)fc->drain_before_ms,
             (unsigned long long)fc->heartbeat_timeout_ms, fc->min_workers, fc->max_workers);
    event_base_dispatch(base);
    rc = 0;

out:
    placement_service_free(ps);
    provider_free(provider);
    if (sigint)
        event_free(sigint);
    if (sigterm)
        event_free(sigterm);
    event_base_free(base);
    free(self);
    if (rc == 0)
        log_info(LOG_ROLE, "stopped");
    return rc;
}
