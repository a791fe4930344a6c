/* cli.c - command dispatch for the CLI (placeholder until the commands land). */
#include "cli/cli.h"
#include <stdio.h>
int cli_run(const char *cmd, int argc, char **argv) { (void)cmd; (void)argc; (void)argv; return -1; }
void cli_usage(void) {}
