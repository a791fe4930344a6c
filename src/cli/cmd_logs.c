/* cmd_logs.c - `flicker logs NAME [--follow]`: a function's log.
 *
 * flicker-specific, signed like every other call:
 *   GET /flicker/functions/{NAME}/logs?offset=N[&follow=1]
 *   -> 200 text/plain: log bytes from N (at most a server-chosen chunk),
 *      header X-Flicker-Log-Offset: the offset to ask for next.
 * With follow=1 the server holds the request up to ~20 s until there is
 * new data (then an empty 200).  The command reads from offset 0 until a
 * reply is empty; with --follow it then keeps long-polling forever (until
 * interrupted or an error).  If the offset header is missing, the next
 * offset is N + body length. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli_internal.h"
#include "common/util.h"

static const char LOGS_HELP[] =
    "usage: flicker logs NAME [--follow] [--endpoint URL]\n"
    "\n"
    "Prints function NAME's log (all invocations, all environments).\n"
    "  --follow   keep waiting for and printing new lines\n";

int cmd_logs(int argc, char **argv)
{
    static const struct option opts[] = {{"follow", no_argument, 0, 'f'},
                                         {"endpoint", required_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *endpoint = NULL;
    bool help = false, follow = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf", opts, NULL)) != -1) {
        switch (c) {
        case 'f': follow = true; break;
        case 'E': endpoint = optarg; break;
        case 'h': help = true; break;
        case ':': fprintf(stderr, "flicker: logs: %s wants a value\n", argv[optind - 1]); return 2;
        default: fprintf(stderr, "flicker: logs: unknown option '%s'\n", argv[optind - 1]); return 2;
        }
    }
    if (help) {
        fputs(LOGS_HELP, stdout);
        return 0;
    }
    if (argc - optind != 1) {
        fprintf(stderr, "flicker: logs wants NAME (see flicker logs --help)\n");
        return 2;
    }
    err_t err = {0};
    cli_ctx_t ctx;
    if (cli_ctx_init(&ctx, endpoint, &err) < 0)
        return cli_fail(&err);
    char *enc = cli_encode(argv[optind]);
    char *path = xasprintf("/flicker/functions/%s/logs", enc);
    free(enc);

    uint64_t offset = 0;
    bool caught_up = false;
    int status = 0;
    for (;;) {
        bool wait = follow && caught_up;
        char *query = xasprintf("offset=%" PRIu64 "%s", offset, wait ? "&follow=1" : "");
        cli_resp_t r;
        int rc = cli_request(&ctx, "GET", path, query, NULL, 0, NULL, 0, &r, &err);
        free(query);
        if (rc < 0) {
            status = cli_fail(&err);
            break;
        }
        if (r.status != 200) {
            cli_print_error(&r);
            cli_resp_free(&r);
            status = 1;
            break;
        }
        fwrite(r.body, 1, r.body_len, stdout);
        fflush(stdout);
        uint64_t next = offset + r.body_len;
        if (r.log_offset) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(r.log_offset, &end, 10);
            if (!errno && end != r.log_offset && !*end)
                next = v;
        }
        if (r.body_len && next == offset)
            next = offset + r.body_len; /* never re-read the same bytes forever */
        if (r.body_len == 0)
            caught_up = true;
        offset = next;
        cli_resp_free(&r);
        if (caught_up && !follow)
            break;
    }
    free(path);
    cli_ctx_free(&ctx);
    return status;
}
