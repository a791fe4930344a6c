/* cmd_delete.c - `flicker delete NAME [--qualifier Q]`: DeleteFunction.
 *
 * DELETE /2015-03-31/functions/{NAME}[?Qualifier=Q] -> 204.  Without a
 * qualifier the whole function (all versions, aliases) goes. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli_internal.h"
#include "common/util.h"

static const char DELETE_HELP[] =
    "usage: flicker delete NAME [--qualifier VERSION] [--endpoint URL]\n"
    "\n"
    "Deletes function NAME (or only one version of it).\n";

int cmd_delete(int argc, char **argv)
{
    static const struct option opts[] = {{"qualifier", required_argument, 0, 'q'},
                                         {"endpoint", required_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *endpoint = NULL, *qualifier = NULL;
    bool help = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'q': qualifier = optarg; break;
        case 'E': endpoint = optarg; break;
        case 'h': help = true; break;
        case ':': fprintf(stderr, "flicker: delete: %s wants a value\n", argv[optind - 1]); return 2;
        default: fprintf(stderr, "flicker: delete: unknown option '%s'\n", argv[optind - 1]); return 2;
        }
    }
    if (help) {
        fputs(DELETE_HELP, stdout);
        return 0;
    }
    if (argc - optind != 1) {
        fprintf(stderr, "flicker: delete wants NAME (see flicker delete --help)\n");
        return 2;
    }
    const char *name = argv[optind];
    err_t err = {0};
    cli_ctx_t ctx;
    if (cli_ctx_init(&ctx, endpoint, &err) < 0)
        return cli_fail(&err);
    char *enc = cli_encode(name);
    char *path = xasprintf("/2015-03-31/functions/%s", enc);
    free(enc);
    char *query = NULL;
    if (qualifier) {
        char *q = cli_encode(qualifier);
        query = xasprintf("Qualifier=%s", q);
        free(q);
    }
    cli_resp_t r;
    int status = 1;
    if (cli_request(&ctx, "DELETE", path, query, NULL, 0, NULL, 0, &r, &err) < 0) {
        status = cli_fail(&err);
    } else {
        if (r.status == 204 || r.status == 200) {
            printf("deleted %s%s%s\n", name, qualifier ? ":" : "", qualifier ? qualifier : "");
            status = 0;
        } else {
            cli_print_error(&r);
        }
        cli_resp_free(&r);
    }
    free(path);
    free(query);
    cli_ctx_free(&ctx);
    return status;
}
