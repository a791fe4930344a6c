/* assignment_main.c - `flicker serve assignment`: one replica of the
 * assignment service (asg_service.h, docs/assignment.md).
 *
 * Flags (docs/protocol.md): --listen ADDR, --id ID, --journal SPEC
 * (file:DIR | etcd:URLS;prefix=P), --placement ADDR[,ADDR], --lease-ms N
 * (default 1000), --keep-alive S (seconds, fractions allowed; default 300),
 * --account-concurrency N (default 1000), --snapshot-every N (default
 * 1000), --advertise ADDR (address other replicas report; default the
 * listen address with its real port).
 *
 * SIGTERM/SIGINT: stop serving, resign leadership (so a follower takes over
 * at once instead of after the lease), answer what is outstanding, exit 0. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/event.h>
#include "assignment/asg_service.h"
#include "common/log.h"
#include "journal/journal.h"

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopbreak(arg);
}

/* Prints the usage to f; returns the exit status that goes with it
 * (0 for --help on stdout, 2 for a usage error on stderr). */
static int usage(FILE *f)
{
    fprintf(f, "usage: flicker serve assignment --listen ADDR --journal SPEC --placement ADDR[,ADDR]\n"
               "         [--id ID] [--advertise ADDR] [--lease-ms N] [--keep-alive S]\n"
               "         [--account-concurrency N] [--snapshot-every N]\n"
               "  --listen ADDR              RPC address, tcp:HOST:PORT or unix:PATH\n"
               "  --journal SPEC             file:DIR or etcd:URL[,URL...][;prefix=P]\n"
               "  --placement ADDR[,ADDR]    placement service address(es)\n"
               "  --id ID                    replica name in logs (default: the address)\n"
               "  --advertise ADDR           address reported to others as leader\n"
               "                             (default: --listen with its real port)\n"
               "  --lease-ms N               leader lease, renewed every third (default 1000)\n"
               "  --keep-alive S             idle environments live S seconds (default 300)\n"
               "  --account-concurrency N    account concurrency limit (default 1000)\n"
               "  --snapshot-every N         journal snapshot every N records (default 1000)\n");
    return f == stdout ? 0 : 2;
}

int serve_assignment_main(int argc, char **argv)
{
    asg_service_opts_t o = {.lease_ms = 1000, .keep_alive_ms = 300000,
                            .account_concurrency = 1000, .snapshot_every = 1000};
    const char *spec = NULL;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--help") || !strcmp(f, "-h"))
            return usage(stdout);
        if (!v)
            return usage(stderr);
        i++;
        if (!strcmp(f, "--listen"))
            o.listen = v;
        else if (!strcmp(f, "--id"))
            o.id = v;
        else if (!strcmp(f, "--advertise"))
            o.advertise = v;
        else if (!strcmp(f, "--journal"))
            spec = v;
        else if (!strcmp(f, "--placement"))
            o.placement = v;
        else if (!strcmp(f, "--lease-ms"))
            o.lease_ms = atoi(v);
        else if (!strcmp(f, "--keep-alive"))
            o.keep_alive_ms = (int)(atof(v) * 1000);
        else if (!strcmp(f, "--account-concurrency"))
            o.account_concurrency = atoi(v);
        else if (!strcmp(f, "--snapshot-every"))
            o.snapshot_every = atoi(v);
        else
            return usage(stderr);
    }
    if (!o.listen || !spec || o.lease_ms <= 0 || o.keep_alive_ms <= 0)
        return usage(stderr);
    signal(SIGPIPE, SIG_IGN);
    err_t err = {0};
    journal_t *j = journal_open(spec, &err);
    if (!j) {
        fprintf(stderr, "flicker serve assignment: journal: %s\n", err.msg);
        return 1;
    }
    o.journal_spec = spec; /* a journal that failed a write is reopened from it */
    struct event_base *base = event_base_new();
    asg_service_t *s = asg_service_new(base, j, &o, &err);
    if (!s) {
        fprintf(stderr, "flicker serve assignment: %s\n", err.msg);
        event_base_free(base);
        return 1;
    }
    struct event *st = evsignal_new(base, SIGTERM, on_signal, base);
    struct event *si = evsignal_new(base, SIGINT, on_signal, base);
    event_add(st, NULL);
    event_add(si, NULL);
    printf("assignment listening on %s\n", asg_service_address(s));
    fflush(stdout);
    event_base_dispatch(base);
    log_info("assignment", "stopping");
    asg_service_free(s);
    event_free(st);
    event_free(si);
    event_base_free(base);
    return 0;
}
