/* serve.c - `flicker serve ROLE`: dispatch to the role's own main.
 *
 * A role whose implementation is not linked in (weak default below) says
 * so and exits 2, so a partial build fails loudly instead of pretending.
 * Each role's main parses its own flags, so `flicker serve ROLE --help`
 * prints that role's usage (stdout, exit 0); `flicker serve --help` lists
 * the roles.  One flag is common to every role and taken out here:
 * --cluster-key-file PATH (or FLICKER_CLUSTER_KEY_FILE), the shared key
 * that authenticates the roles to each other (rpc.h). */
#include "platform/serve.h"
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/rpc.h"

#define COMMON_HELP                                                                     \
    "flags of every role:\n"                                                            \
    "  --cluster-key-file PATH   shared secret (>= 16 bytes, mode 600) that every role\n" \
    "                            of the cluster is started with: internal RPC\n"        \
    "                            connections without it are refused (also\n"           \
    "                            FLICKER_CLUSTER_KEY_FILE; docs/rpc.md)\n"

/* Takes --cluster-key-file PATH / --cluster-key-file=PATH out of argv (argc
 * updated) and loads the key from it or from FLICKER_CLUSTER_KEY_FILE.
 * Returns 0, or -1 after printing why. */
static int take_cluster_key(int *argc, char **argv)
{
    const char *path = getenv("FLICKER_CLUSTER_KEY_FILE");
    int out = 0;
    for (int i = 0; i < *argc; i++) {
        if (!strcmp(argv[i], "--cluster-key-file") && i + 1 < *argc) {
            path = argv[++i];
            continue;
        }
        if (!strncmp(argv[i], "--cluster-key-file=", 19)) {
            path = argv[i] + 19;
            continue;
        }
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
    if (!path || !*path)
        return 0;
    err_t err = {0};
    if (rpc_load_cluster_key_file(path, &err) < 0) {
        fprintf(stderr, "flicker serve: %s\n", err.msg);
        return -1;
    }
    return 0;
}

#define ROLE_NOT_BUILT(fn, role)                                                     \
    __attribute__((weak)) int fn(int argc, char **argv)                              \
    {                                                                                \
        (void)argc;                                                                  \
        (void)argv;                                                                  \
        fprintf(stderr, "flicker serve %s: this role is not part of this build\n", role); \
        return 2;                                                                    \
    }

ROLE_NOT_BUILT(serve_frontend_main, "frontend")
ROLE_NOT_BUILT(serve_assignment_main, "assignment")
ROLE_NOT_BUILT(serve_placement_main, "placement")
ROLE_NOT_BUILT(serve_worker_main, "worker")

static int serve_role(int argc, char **argv);

int serve_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        bool help = argc >= 2;
        fprintf(help ? stdout : stderr,
                "usage: flicker serve frontend|assignment|placement|worker [flags]\n"
                "       flicker serve ROLE --help   the flags of that role\n" COMMON_HELP);
        return help ? 0 : 2;
    }
    if (take_cluster_key(&argc, argv) < 0)
        return 2;
    for (int i = 2; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            int rc = serve_role(argc, argv);
            printf("\n" COMMON_HELP);
            return rc;
        }
    return serve_role(argc, argv);
}

static int serve_role(int argc, char **argv)
{
    const char *role = argv[1];
    if (!strcmp(role, "frontend"))
        return serve_frontend_main(argc - 1, argv + 1);
    if (!strcmp(role, "assignment"))
        return serve_assignment_main(argc - 1, argv + 1);
    if (!strcmp(role, "placement"))
        return serve_placement_main(argc - 1, argv + 1);
    if (!strcmp(role, "worker"))
        return serve_worker_main(argc - 1, argv + 1);
    fprintf(stderr, "flicker serve: unknown role '%s'\n", role);
    return 2;
}
