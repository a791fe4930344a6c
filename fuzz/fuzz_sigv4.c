/* fuzz_sigv4.c - libFuzzer target for SigV4 verification (and a sign/verify
 * round-trip property).
 *
 * Built and run by `make fuzz` (clang libFuzzer; corpus fuzz/corpus/fuzz_sigv4), or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -std=gnu11 -D_GNU_SOURCE -Isrc \
 *     fuzz/fuzz_sigv4.c src/common/sigv4.c src/common/util.c src/common/err.c \
 *     -lcrypto -o build/fuzz_sigv4
 *   build/fuzz_sigv4 fuzz/corpus/fuzz_sigv4
 *
 * Input: "METHOD\nPATH\nQUERY\nName: value\n...\n\nBODY" (an empty QUERY
 * line means none).  Every key id maps to one secret and the clock is fixed,
 * so the fuzzer can reach the signature computation.  After verifying the
 * input as is, the target strips Authorization/X-Amz-*, signs the request
 * with sigv4_sign and requires sigv4_verify to accept it: signing and
 * verifying must agree on every request sign accepts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "common/sigv4.h"

#define NOW 1796604082
#define MAXH 32

static const char *secret_of(const char *akid, void *arg)
{
    (void)arg;
    return akid[0] == 'X' ? NULL : "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
}

/* Cuts the next '\n'-terminated line from [*p, end); NULL at the end. */
static char *next_line(char **p, char *end)
{
    if (*p >= end)
        return NULL;
    char *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    if (!nl)
        nl = end;
    *nl = '\0';
    *p = nl + 1;
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *p = buf, *end = buf + size;
    sigv4_header_t h[MAXH + 3];
    size_t nh = 0;
    char *method = next_line(&p, end), *path = next_line(&p, end), *query = next_line(&p, end);
    if (!method || !path || !query)
        goto out;
    for (char *line; nh < MAXH && (line = next_line(&p, end)) && *line;) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = '\0';
        h[nh++] = (sigv4_header_t){line, colon + 1 + (colon[1] == ' ')};
    }
    const char *body = p < end ? p : "";
    size_t body_len = p < end ? (size_t)(end - p) : 0;
    sigv4_request_t r = {method, path, *query ? query : NULL, h, nh, body, body_len};
    char m[256];
    enum sigv4_result rc = sigv4_verify(&r, secret_of, NULL, NOW, m, sizeof m);
    if (rc != SIGV4_OK && !m[0])
        abort(); /* every failure explains itself */
    (void)sigv4_error_type(rc);

    /* Round trip. */
    size_t k = 0;
    for (size_t i = 0; i < nh; i++)
        if (strcasecmp(h[i].name, "authorization") && strncasecmp(h[i].name, "x-amz-", 6) &&
            strcasecmp(h[i].name, "date"))
            h[k++] = h[i];
    r.n_headers = k;
    char date[17], sha[65], auth[1024];
    if (sigv4_sign(&r, "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1", "lambda",
                   NOW, date, sha, auth, sizeof auth) == 0) {
        h[k++] = (sigv4_header_t){"X-Amz-Date", date};
        h[k++] = (sigv4_header_t){"X-Amz-Content-SHA256", sha};
        h[k++] = (sigv4_header_t){"Authorization", auth};
        r.n_headers = k;
        rc = sigv4_verify(&r, secret_of, NULL, NOW, m, sizeof m);
        if (rc != SIGV4_OK) {
            fprintf(stderr, "round trip failed: %d %s\n", rc, m);
            abort();
        }
    }
out:
    free(buf);
    return 0;
}
