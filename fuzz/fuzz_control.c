/* fuzz_control.c - libFuzzer target for control_handle().
 *
 * Input layout: byte 0 picks the method; then the path up to the first
 * '\n', the query up to the next '\n' (empty = none), and the rest is the
 * body.  A store in a private temp dir is opened once and seeded with one
 * function ("f", version 1, alias "prod") so that requests reach deep into
 * the handlers; fuzzed requests may change it.  The data dir is wiped and
 * re-seeded every 5000 runs to keep the database small.
 *
 * Build (see fuzz/README.md): clang -fsanitize=fuzzer,address,undefined ... */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "frontend/control.h"
#include "store/store.h"

static store_t *S;
static char DIR_[64];
static const control_config_t CFG = {"us-east-1", "123456789012", 1000, NULL, NULL};
static unsigned runs;

/* An empty zip (just the end-of-central-directory record) plus one file
 * would need libzip to build; the empty zip is enough to create a function. */
static const char EMPTY_ZIP_B64[] = "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==";

static void call(const char *m, const char *path, const char *q, const char *body)
{
    api_request_t rq = {m, path, q, body, body ? strlen(body) : 0};
    api_response_t resp;
    control_handle(S, &CFG, &rq, &resp);
    json_decref(resp.body);
}

static void seed(void)
{
    err_t e = {0};
    S = store_open(DIR_, "us-east-1", "123456789012", &e);
    if (!S) {
        fprintf(stderr, "store_open: %s\n", e.msg);
        abort();
    }
    char *body = xasprintf("{\"FunctionName\":\"f\",\"Role\":\"arn:aws:iam::123456789012:role/r\","
                           "\"Runtime\":\"provided.al2023\",\"Code\":{\"ZipFile\":\"%s\"},"
                           "\"Publish\":true}",
                           EMPTY_ZIP_B64);
    call("POST", "/2015-03-31/functions", NULL, body);
    free(body);
    call("POST", "/2015-03-31/functions/f/aliases", NULL,
         "{\"Name\":\"prod\",\"FunctionVersion\":\"1\"}");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    snprintf(DIR_, sizeof DIR_, "/tmp/flicker-fuzz-XXXXXX");
    if (!mkdtemp(DIR_))
        abort();
    seed();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const methods[] = {"GET", "POST", "PUT", "DELETE", "PATCH"};
    if (size < 1)
        return 0;
    if (++runs % 5000 == 0) {
        store_close(S);
        rm_rf(DIR_, NULL);
        mkdir_p(DIR_, 0700, NULL);
        seed();
    }
    const char *method = methods[data[0] % 5];
    size_t blen = size - 1;
    char *buf = xmalloc(blen + 1); /* NUL-terminated copy */
    memcpy(buf, data + 1, blen);
    buf[blen] = 0;
    char *path = buf, *query = NULL, *body = NULL;
    size_t body_len = 0;
    char *nl = memchr(buf, '\n', blen);
    if (nl) {
        *nl = 0;
        query = nl + 1;
        char *nl2 = memchr(query, '\n', blen - (size_t)(query - buf));
        if (nl2) {
            *nl2 = 0;
            body = nl2 + 1;
            body_len = blen - (size_t)(body - buf);
        }
        if (!*query)
            query = NULL;
    }
    /* paths reach control_handle NUL-terminated: cut at an embedded NUL */
    api_request_t rq = {method, path, query, body, body_len};
    api_response_t resp;
    control_handle(S, &CFG, &rq, &resp);
    if (resp.status < 200 || resp.status > 599)
        abort();
    if (resp.status >= 400 && (!resp.error_type[0] || !resp.body))
        abort();
    json_decref(resp.body);
    free(buf);
    return 0;
}
