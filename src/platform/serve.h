/* serve.h - `flicker serve ROLE [flags]`: one role as its own process.
 *
 * Each role's main lives with its role (src/<role>/<role>_main.c) and is
 * declared here; `flicker up --split` supervises one process per role.
 * The roles talk over flicker's RPC (docs/protocol.md). */
#ifndef FLICKER_SERVE_H
#define FLICKER_SERVE_H

/* Dispatches argv[1] (frontend|assignment|placement|worker).  argv[0] is
 * "serve".  Returns the process exit status. */
int serve_main(int argc, char **argv);

/* The role mains: argv[0] is the role name; flags follow. */
int serve_frontend_main(int argc, char **argv);
int serve_assignment_main(int argc, char **argv);
int serve_placement_main(int argc, char **argv);
int serve_worker_main(int argc, char **argv);
#endif
