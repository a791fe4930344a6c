/* cmd_invoke.c - `flicker invoke NAME [PAYLOAD]`: Lambda's Invoke.
 *
 * POST /2015-03-31/functions/{NAME}/invocations[?Qualifier=Q] with the
 * payload as the raw body ({} when none is given), X-Amz-Invocation-Type
 * (RequestResponse, Event with --event, DryRun with --dry-run) and
 * X-Amz-Log-Type: Tail with --tail.  The response body goes to stdout
 * unchanged (a newline is added only on a terminal); the decoded
 * X-Amz-Log-Result goes to stderr.  Exit status: 0 on success, 1 when the
 * function failed (X-Amz-Function-Error, printed to stderr) or the request
 * did (the Lambda error type and message are printed), 2 on usage errors. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/cli_internal.h"
#include "common/util.h"

#define MAX_PAYLOAD (6u << 20) /* the sync request limit; the server judges exactly */

static const char INVOKE_HELP[] =
    "usage: flicker invoke NAME [PAYLOAD-JSON] [options]\n"
    "\n"
    "Invokes function NAME (name, name:qualifier or ARN) and prints its response.\n"
    "\n"
    "  --payload-file F  read the payload from F ('-' for stdin)\n"
    "  --qualifier Q     version or alias\n"
    "  --tail            print the invocation's log tail to stderr\n"
    "  --event           asynchronous invoke (202, no response body)\n"
    "  --dry-run         validate only (204)\n"
    "  --endpoint URL    flicker endpoint (default $FLICKER_ENDPOINT or http://127.0.0.1:9000)\n";

int invoke_parse_args(int argc, char **argv, invoke_opts_t *o, err_t *err)
{
    static const struct option opts[] = {
        {"payload-file", required_argument, 0, 'f'}, {"qualifier", required_argument, 0, 'q'},
        {"tail", no_argument, 0, 't'},               {"event", no_argument, 0, 'e'},
        {"dry-run", no_argument, 0, 'd'},            {"endpoint", required_argument, 0, 'E'},
        {"help", no_argument, 0, 'h'},               {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': o->payload_file = optarg; break;
        case 'q': o->qualifier = optarg; break;
        case 't': o->tail = true; break;
        case 'e': o->event = true; break;
        case 'd': o->dry_run = true; break;
        case 'E': o->endpoint = optarg; break;
        case 'h': o->help = true; break;
        case ':': return err_set(err, EINVAL, "invoke: %s wants a value", argv[optind - 1]);
        default: return err_set(err, EINVAL, "invoke: unknown option '%s'", argv[optind - 1]);
        }
    }
    if (o->help)
        return 0;
    int npos = argc - optind;
    if (npos < 1 || npos > 2)
        return err_set(err, EINVAL, "invoke wants NAME and at most one PAYLOAD (see flicker invoke --help)");
    o->name = argv[optind];
    if (npos == 2)
        o->payload = argv[optind + 1];
    if (o->payload && o->payload_file)
        return err_set(err, EINVAL, "invoke: give the payload inline or with --payload-file, not both");
    if (o->event && o->dry_run)
        return err_set(err, EINVAL, "invoke: --event and --dry-run exclude each other");
    return 0;
}

static void print_tail(const char *b64)
{
    size_t n = 0;
    char *log = base64_decode(b64, strlen(b64), &n);
    if (!log) {
        fprintf(stderr, "flicker: X-Amz-Log-Result is not valid base64\n");
        return;
    }
    fwrite(log, 1, n, stderr);
    if (n && log[n - 1] != '\n')
        fputc('\n', stderr);
    free(log);
}

int cmd_invoke(int argc, char **argv)
{
    invoke_opts_t o;
    err_t err = {0};
    if (invoke_parse_args(argc, argv, &o, &err) < 0) {
        fprintf(stderr, "flicker: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        fputs(INVOKE_HELP, stdout);
        return 0;
    }
    char *payload = NULL;
    size_t payload_len = 0;
    if (o.payload_file) {
        const char *path = strcmp(o.payload_file, "-") ? o.payload_file : "/dev/stdin";
        if (!(payload = read_file(path, MAX_PAYLOAD, &payload_len, &err)))
            return cli_fail(&err);
    } else {
        payload = xstrdup(o.payload ? o.payload : "{}");
        payload_len = strlen(payload);
    }

    cli_ctx_t c;
    if (cli_ctx_init(&c, o.endpoint, &err) < 0) {
        free(payload);
        return cli_fail(&err);
    }
    char *enc = cli_encode(o.name);
    char *path = xasprintf("/2015-03-31/functions/%s/invocations", enc);
    free(enc);
    char *query = NULL;
    if (o.qualifier) {
        char *q = cli_encode(o.qualifier);
        query = xasprintf("Qualifier=%s", q);
        free(q);
    }
    cli_header_t h[2] = {
        {"X-Amz-Invocation-Type", o.event ? "Event" : o.dry_run ? "DryRun" : "RequestResponse"},
        {"X-Amz-Log-Type", "Tail"},
    };
    cli_resp_t r;
    int status = 1;
    if (cli_request(&c, "POST", path, query, h, o.tail ? 2 : 1, payload, payload_len, &r, &err) < 0) {
        status = cli_fail(&err);
        goto out;
    }
    if (r.status >= 300) {
        cli_print_error(&r);
    } else {
        if (o.tail && r.log_result)
            print_tail(r.log_result);
        fwrite(r.body, 1, r.body_len, stdout);
        if (r.body_len && r.body[r.body_len - 1] != '\n' && isatty(STDOUT_FILENO))
            fputc('\n', stdout);
        fflush(stdout);
        if (r.function_error) {
            fprintf(stderr, "flicker: function error: %s\n", r.function_error);
        } else {
            if (o.event)
                fprintf(stderr, "queued (HTTP %ld)\n", r.status);
            else if (o.dry_run)
                fprintf(stderr, "dry run ok (HTTP %ld)\n", r.status);
            status = 0;
        }
    }
    cli_resp_free(&r);
out:
    free(path);
    free(query);
    free(payload);
    cli_ctx_free(&c);
    return status;
}
