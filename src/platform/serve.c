/* serve.c - `flicker serve ROLE`: dispatch to the role's own main.
 *
 * A role whose implementation is not linked in (weak default below) says
 * so and exits 2, so a partial build fails loudly instead of pretending.
 * Each role's main parses its own flags, so `flicker serve ROLE --help`
 * prints that role's usage (stdout, exit 0); `flicker serve --help` lists
 * the roles. */
#include "platform/serve.h"
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

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

int serve_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        bool help = argc >= 2;
        fprintf(help ? stdout : stderr,
                "usage: flicker serve frontend|assignment|placement|worker [flags]\n"
                "       flicker serve ROLE --help   the flags of that role\n");
        return help ? 0 : 2;
    }
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
