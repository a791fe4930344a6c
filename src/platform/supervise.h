/* supervise.h - `flicker up --split`: one supervised process per role. */
#ifndef FLICKER_SUPERVISE_H
#define FLICKER_SUPERVISE_H
#include <stdbool.h>

/* Runs placement, three assignment replicas per shard of the table
 * (`shards` >= 1), `workers` workers and the
 * frontend (listening on host:port) as child processes sharing data_dir,
 * until SIGINT/SIGTERM.  argc/argv are up's own arguments (forwarded to
 * the frontend).  Returns 0 when every role stopped cleanly. */
int supervise_main(const char *host, int port, const char *data_dir, bool no_auth, int keep_alive_s,
                   int account_concurrency, int workers, int shards, const char *isolation,
                   const char *store, int argc, char **argv);
#endif
