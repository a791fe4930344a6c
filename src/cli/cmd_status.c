/* cmd_status.c - `flicker status [--json]`: GET /flicker/status.
 *
 * --json pretty-prints the document as is.  Otherwise it is printed as an
 * indented outline, generically (the shape is still evolving): scalars as
 * "key: value", objects as a heading with their members indented, arrays of
 * scalars on one line, arrays of objects as "- " items.  Keys keep the
 * server's order. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli_internal.h"
#include "common/util.h"

#define MAX_DEPTH 8

static const char STATUS_HELP[] =
    "usage: flicker status [--json] [--endpoint URL]\n"
    "\n"
    "Shows the platform's state: version, uptime, functions, execution\n"
    "environments and their states, concurrency.\n"
    "  --json   print the raw status document\n";

static bool is_scalar(json_t *v) { return !json_is_object(v) && !json_is_array(v); }

static void print_scalar(FILE *out, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING: fputs(json_string_value(v), out); break;
    case JSON_INTEGER: fprintf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL: fprintf(out, "%g", json_real_value(v)); break;
    case JSON_TRUE: fputs("yes", out); break;
    case JSON_FALSE: fputs("no", out); break;
    default: fputs("-", out); break;
    }
}

static void print_value(FILE *out, json_t *v, int depth);

static void print_array_inline(FILE *out, json_t *a)
{
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e) {
        if (i)
            fputs(", ", out);
        print_scalar(out, e);
    }
    fputc('\n', out);
}

static bool all_scalars(json_t *a)
{
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e)
        if (!is_scalar(e))
            return false;
    return true;
}

/* Prints "key: ..." at depth (two spaces per level). */
static void print_member(FILE *out, const char *key, json_t *v, int depth)
{
    fprintf(out, "%*s%s:", depth * 2, "", key);
    if (is_scalar(v)) {
        fputc(' ', out);
        print_scalar(out, v);
        fputc('\n', out);
    } else if (json_is_array(v) && (json_array_size(v) == 0 || all_scalars(v))) {
        if (json_array_size(v) == 0) {
            fputs(" none\n", out);
        } else {
            fputc(' ', out);
            print_array_inline(out, v);
        }
    } else if (json_is_object(v) && json_object_size(v) == 0) {
        fputs(" -\n", out);
    } else {
        fputc('\n', out);
        print_value(out, v, depth + 1);
    }
}

static void print_value(FILE *out, json_t *v, int depth)
{
    if (depth > MAX_DEPTH) {
        char *s = json_dumps(v, JSON_COMPACT);
        fprintf(out, "%*s%s\n", depth * 2, "", s ? s : "?");
        free(s);
        return;
    }
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m)
            print_member(out, k, m, depth);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (json_is_object(e) && json_object_size(e)) {
                /* "- " then the first member on the same line */
                bool first = true;
                const char *k;
                json_t *m;
                json_object_foreach(e, k, m) {
                    if (first) {
                        fprintf(out, "%*s- ", depth * 2, "");
                        print_member(out, k, m, 0 /* indent already written */);
                        first = false;
                    } else {
                        print_member(out, k, m, depth + 1);
                    }
                }
            } else {
                fprintf(out, "%*s- ", depth * 2, "");
                if (is_scalar(e)) {
                    print_scalar(out, e);
                    fputc('\n', out);
                } else {
                    char *s = json_dumps(e, JSON_COMPACT);
                    fprintf(out, "%s\n", s ? s : "?");
                    free(s);
                }
            }
        }
    } else {
        fprintf(out, "%*s", depth * 2, "");
        print_scalar(out, v);
        fputc('\n', out);
    }
}

void cli_print_status(FILE *out, json_t *j) { print_value(out, j, 0); }

int cmd_status(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"endpoint", required_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *endpoint = NULL;
    bool help = false, raw = false;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': raw = true; break;
        case 'E': endpoint = optarg; break;
        case 'h': help = true; break;
        case ':': fprintf(stderr, "flicker: status: %s wants a value\n", argv[optind - 1]); return 2;
        default: fprintf(stderr, "flicker: status: unknown option '%s'\n", argv[optind - 1]); return 2;
        }
    }
    if (help) {
        fputs(STATUS_HELP, stdout);
        return 0;
    }
    if (argc != optind) {
        fprintf(stderr, "flicker: status takes no arguments\n");
        return 2;
    }
    err_t err = {0};
    cli_ctx_t ctx;
    if (cli_ctx_init(&ctx, endpoint, &err) < 0)
        return cli_fail(&err);
    cli_resp_t r;
    int status = 1;
    if (cli_request(&ctx, "GET", "/flicker/status", NULL, NULL, 0, NULL, 0, &r, &err) < 0) {
        status = cli_fail(&err);
        goto out;
    }
    if (r.status != 200) {
        cli_print_error(&r);
    } else {
        json_error_t je;
        json_t *j = json_loadb(r.body, r.body_len, 0, &je);
        if (!j) {
            fprintf(stderr, "flicker: status is not JSON: %s\n", je.text);
        } else {
            if (raw) {
                char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
                printf("%s\n", s ? s : "null");
                free(s);
            } else {
                cli_print_status(stdout, j);
            }
            json_decref(j);
            status = 0;
        }
    }
    cli_resp_free(&r);
out:
    cli_ctx_free(&ctx);
    return status;
}
