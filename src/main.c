/* main.c - the flicker binary: `flicker up` runs the platform, every other
 * subcommand is the CLI (src/cli). */
#include <stdio.h>
#include <string.h>
#include "cli/cli.h"
#include "common/version.h"
#include "platform/serve.h"
#include "platform/up.h"

static void usage(void)
{
    printf("flicker %s - a self-hosted AWS Lambda\n\n"
           "usage:\n"
           "  flicker up [--listen ADDR:PORT] [--data DIR] [--no-auth] ...   run the platform\n"
           "  flicker serve frontend|assignment|placement|worker [flags]    run one role\n",
           FLICKER_VERSION);
    cli_usage();
    printf("  flicker version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("flicker %s\n", FLICKER_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "up"))
        return up_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve"))
        return serve_main(argc - 1, argv + 1);
    int rc = cli_run(argv[1], argc - 1, argv + 1);
    if (rc >= 0)
        return rc;
    fprintf(stderr, "flicker: unknown command '%s' (try 'flicker help')\n", argv[1]);
    return 2;
}
