/* cli_internal.h - what the CLI's command files share: the connection
 * context (endpoint, credentials, one keep-alive libcurl handle), the signed
 * request helper, Lambda error printing, and the pure helpers the unit tests
 * reach (argument parsing, runtime inference, zip building).
 *
 * Ownership: cli_ctx_t and cli_resp_t own their strings; free them with
 * cli_ctx_free() / cli_resp_free().  Functions that can fail take err_t *err
 * last and return -1 (err filled), following common/err.h. */
#ifndef FLICKER_CLI_INTERNAL_H
#define FLICKER_CLI_INTERNAL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include "common/err.h"

struct json_t;

#define CLI_DEFAULT_ENDPOINT "http://127.0.0.1:9000"
#define CLI_DEFAULT_DATA "./.flicker"
#define CLI_DEFAULT_REGION "us-east-1"
#define CLI_ROLE "arn:aws:iam::000000000000:role/flicker"

/* ---- connection ---- */

typedef struct cli_ctx {
    char *endpoint;   /* scheme://host[:port], no trailing '/' */
    char *host;       /* the Host header: host[:port] exactly as in endpoint */
    char *akid, *secret, *region;
    void *curl;       /* CURL *, created lazily, reused (keep-alive) */
} cli_ctx_t;

/* Fills c from --endpoint (may be NULL) and the environment:
 * endpoint = endpoint_opt, else $FLICKER_ENDPOINT, else CLI_DEFAULT_ENDPOINT;
 * credentials = $FLICKER_ACCESS_KEY_ID/$FLICKER_SECRET_ACCESS_KEY, else
 * $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, else the [default] profile of
 * ${FLICKER_DATA:-./.flicker}/credentials; region = $AWS_REGION, else
 * $AWS_DEFAULT_REGION, else us-east-1.  Returns 0, or -1/err (bad URL, no
 * credentials). */
int cli_ctx_init(cli_ctx_t *c, const char *endpoint_opt, err_t *err);
void cli_ctx_free(cli_ctx_t *c);

/* Splits an endpoint URL into its normalized form (no trailing '/') and the
 * Host header value.  Only http and https, no path.  Returns 0 or -1/err. */
int cli_parse_endpoint(const char *url, char **endpoint, char **host, err_t *err);

/* Reads aws_access_key_id / aws_secret_access_key from the [default] section
 * of AWS shared-credentials text (keys before any section also count).
 * Returns 0 with both malloc'd, or -1 if either is missing. */
int cli_parse_credentials(const char *text, char **akid, char **secret);

typedef struct cli_resp {
    long status;
    char *body;           /* NUL-terminated (body_len excludes the NUL) */
    size_t body_len;
    char *error_type;     /* x-amzn-ErrorType, text before ':' */
    char *request_id;     /* x-amzn-RequestId */
    char *function_error; /* X-Amz-Function-Error */
    char *log_result;     /* X-Amz-Log-Result (base64) */
    char *executed_version;
    char *log_offset;     /* X-Flicker-Log-Offset */
} cli_resp_t;
void cli_resp_free(cli_resp_t *r);

typedef struct cli_header {
    const char *name, *value;
} cli_header_t;

/* Sends one SigV4-signed request: method, wire path (already encoded),
 * query (already encoded, NULL for none), extra headers, body.  Any HTTP
 * status is a success here (resp->status tells); -1/err only for transport
 * failures (a refused connection says "cannot reach flicker at URL: is
 * `flicker up` running?"). */
int cli_request(cli_ctx_t *c, const char *method, const char *path, const char *query,
                const cli_header_t *headers, size_t n_headers, const void *body, size_t body_len,
                cli_resp_t *resp, err_t *err);

/* Percent-encodes s for a path segment or query value (unreserved kept,
 * everything else %XX, like botocore).  Returns a malloc'd string. */
char *cli_encode(const char *s);

/* For a response with status >= 400: prints "flicker: TYPE: message" to
 * stderr (type from x-amzn-ErrorType or the body's __type/code/Type/errorType,
 * message from message/Message/errorMessage, else the raw body). */
void cli_print_error(const cli_resp_t *r);

/* Reports a transport or usage error ("flicker: msg") and returns 1. */
int cli_fail(const err_t *err);

/* ---- argument parsing (shared shape) ---- */

typedef struct deploy_opts {
    const char *name, *path, *runtime, *handler, *endpoint;
    long memory, timeout;   /* 0 = not given */
    const char **env;       /* K=V strings (pointers into argv), malloc'd array */
    size_t n_env;
    bool help;
} deploy_opts_t;
/* Parses `deploy NAME PATH [options]` (argv[0] is "deploy").  Returns 0, or
 * -1/err on a usage error.  Free o->env. */
int deploy_parse_args(int argc, char **argv, deploy_opts_t *o, err_t *err);

typedef struct invoke_opts {
    const char *name, *payload, *payload_file, *qualifier, *endpoint;
    bool tail, event, dry_run, help;
} invoke_opts_t;
int invoke_parse_args(int argc, char **argv, invoke_opts_t *o, err_t *err);

/* ---- deploy helpers ---- */

/* Picks runtime and handler from a package's top-level file names.
 * runtime_in/handler_in (may be NULL) are what the user gave and win.
 *   bootstrap               -> provided.al2023, handler "bootstrap"
 *   lambda_function.py      -> python3.12, lambda_function.lambda_handler
 *   other *.py              -> python3.12, <stem>.handler (first by name)
 *   index.js / index.mjs    -> nodejs20.x, index.handler
 *   other *.js / *.mjs      -> nodejs20.x, <stem>.handler (first by name)
 * A given runtime narrows the search to its family.  Returns 0 with
 * malloc'd *runtime and *handler, or -1/err when nothing fits. */
int cli_infer_runtime(const char *const *names, size_t n, const char *runtime_in,
                      const char *handler_in, char **runtime, char **handler, err_t *err);

/* Zips directory dir in memory (recursively; entries sorted, fixed
 * timestamps so equal trees give equal bytes; Unix modes kept, so an
 * executable bootstrap stays executable; symlinked directories skipped).
 * Returns 0 with a malloc'd *zip of *len bytes, or -1/err. */
int cli_zip_dir(const char *dir, void **zip, size_t *len, err_t *err);

/* Lists the top-level file names of a zip held in memory (entries without
 * a '/'; directories and nested files are left out).  Returns 0 with a malloc'd array of
 * malloc'd strings, or -1/err if the bytes are not a zip. */
int cli_zip_top_names(const void *zip, size_t len, char ***names, size_t *n, err_t *err);
void cli_free_names(char **names, size_t n);

/* Prints a status document as an indented outline (see cmd_status.c). */
void cli_print_status(FILE *out, struct json_t *j);

/* ---- commands: each returns the exit status ---- */
int cmd_deploy(int argc, char **argv);
int cmd_invoke(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_status(int argc, char **argv);
#endif
