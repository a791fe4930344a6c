/* cli.h - the flicker command-line client (deploy, invoke, list, logs,
 * delete, status).  It speaks only the public Lambda API (plus flicker's
 * /flicker/ status and log paths), signed with SigV4, so everything it does
 * a user can do with the AWS CLI too.
 *
 * Endpoint: --endpoint URL, else $FLICKER_ENDPOINT, else http://127.0.0.1:9000.
 * Credentials: $FLICKER_ACCESS_KEY_ID/$FLICKER_SECRET_ACCESS_KEY, else
 * $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, else DATA/credentials. */
#ifndef FLICKER_CLI_H
#define FLICKER_CLI_H

/* Runs CLI command `cmd` with its arguments (argv[0] is the command).
 * Returns the process exit status, or -1 if cmd is not a CLI command. */
int cli_run(const char *cmd, int argc, char **argv);
/* Prints the CLI commands' one-line usage to stdout. */
void cli_usage(void);
#endif
