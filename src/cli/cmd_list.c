/* cmd_list.c - `flicker list`: ListFunctions as a table.
 *
 * GET /2015-03-31/functions?MaxItems=50[&Marker=M], following NextMarker
 * until it is absent, collecting every function first so the columns
 * (NAME, RUNTIME, MEMORY, LAST MODIFIED) can be sized to fit. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli_internal.h"
#include "common/util.h"

#define PAGE 50
#define MAX_PAGES 10000 /* a server that never stops paging is a bug, not a list */

static const char LIST_HELP[] =
    "usage: flicker list [--endpoint URL]\n"
    "\n"
    "Lists the functions: name, runtime, memory (MB), last modified.\n";

/* Parses the options every simple command shares (--endpoint, --help) plus
 * up to one flag; returns the number of positionals after optind or -1. */
static int parse(int argc, char **argv, const char **endpoint, bool *help, err_t *err)
{
    static const struct option opts[] = {
        {"endpoint", required_argument, 0, 'E'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'E': *endpoint = optarg; break;
        case 'h': *help = true; break;
        case ':': return err_set(err, EINVAL, "%s: %s wants a value", argv[0], argv[optind - 1]);
        default: return err_set(err, EINVAL, "%s: unknown option '%s'", argv[0], argv[optind - 1]);
        }
    }
    return argc - optind;
}

static int width(json_t *fns, const char *key, int min)
{
    int w = min;
    size_t i;
    json_t *f;
    json_array_foreach(fns, i, f) {
        const char *s = json_string_value(json_object_get(f, key));
        if (s && (int)strlen(s) > w)
            w = (int)strlen(s);
    }
    return w;
}

static const char *str_or(json_t *f, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(f, key));
    return s ? s : dflt;
}

int cmd_list(int argc, char **argv)
{
    const char *endpoint = NULL;
    bool help = false;
    err_t err = {0};
    int npos = parse(argc, argv, &endpoint, &help, &err);
    if (npos < 0 || (!help && npos != 0)) {
        fprintf(stderr, "flicker: %s\n", npos < 0 ? err.msg : "list takes no arguments");
        return 2;
    }
    if (help) {
        fputs(LIST_HELP, stdout);
        return 0;
    }
    cli_ctx_t c;
    if (cli_ctx_init(&c, endpoint, &err) < 0)
        return cli_fail(&err);

    json_t *all = json_array();
    char *marker = NULL;
    int status = 0;
    for (int page = 0; page < MAX_PAGES; page++) {
        char *query;
        if (marker) {
            char *m = cli_encode(marker);
            query = xasprintf("Marker=%s&MaxItems=%d", m, PAGE);
            free(m);
        } else {
            query = xasprintf("MaxItems=%d", PAGE);
        }
        cli_resp_t r;
        int rc = cli_request(&c, "GET", "/2015-03-31/functions", query, NULL, 0, NULL, 0, &r, &err);
        free(query);
        free(marker);
        marker = NULL;
        if (rc < 0) {
            status = cli_fail(&err);
            break;
        }
        if (r.status != 200) {
            cli_print_error(&r);
            cli_resp_free(&r);
            status = 1;
            break;
        }
        json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
        cli_resp_free(&r);
        json_t *fns = json_object_get(j, "Functions");
        if (!json_is_array(fns)) {
            fprintf(stderr, "flicker: ListFunctions answered without a Functions list\n");
            json_decref(j);
            status = 1;
            break;
        }
        json_array_extend(all, fns);
        const char *next = json_string_value(json_object_get(j, "NextMarker"));
        if (next && *next)
            marker = xstrdup(next);
        json_decref(j);
        if (!marker)
            break;
    }
    free(marker);
    if (status == 0) {
        int wn = width(all, "FunctionName", 4), wr = width(all, "Runtime", 7);
        printf("%-*s  %-*s  %6s  %s\n", wn, "NAME", wr, "RUNTIME", "MEMORY", "LAST MODIFIED");
        size_t i;
        json_t *f;
        json_array_foreach(all, i, f) {
            json_int_t mem = json_integer_value(json_object_get(f, "MemorySize"));
            printf("%-*s  %-*s  %6lld  %s\n", wn, str_or(f, "FunctionName", "?"), wr,
                   str_or(f, "Runtime", str_or(f, "PackageType", "-")), (long long)mem,
                   str_or(f, "LastModified", "-"));
        }
    }
    json_decref(all);
    cli_ctx_free(&c);
    return status;
}
