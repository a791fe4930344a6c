/* sigv4.h - AWS Signature Version 4: signing (CLI) and verifying (frontend).
 *
 * One canonicalization serves both directions, so a request flicker's CLI
 * signs is verified by exactly the same code.  HMAC and SHA-256 are
 * OpenSSL's.  See ../shared/reference/lambda-api.md for the rules. */
#ifndef FLICKER_SIGV4_H
#define FLICKER_SIGV4_H
#include <stddef.h>
#include <stdint.h>

typedef struct sigv4_header {
    const char *name;   /* as received (any case) */
    const char *value;
} sigv4_header_t;

typedef struct sigv4_request {
    const char *method;
    const char *path;          /* raw path as sent on the wire (still percent-encoded) */
    const char *query;         /* raw query without '?', or NULL */
    const sigv4_header_t *headers;
    size_t n_headers;
    const void *body;
    size_t body_len;
} sigv4_request_t;

/* Returns the secret key for an access key id, or NULL if unknown. */
typedef const char *(*sigv4_secret_fn)(const char *access_key_id, void *arg);

enum sigv4_result {
    SIGV4_OK = 0,
    SIGV4_MISSING,         /* no Authorization header: 403 MissingAuthenticationTokenException */
    SIGV4_MALFORMED,       /* unparsable header: 403 IncompleteSignatureException */
    SIGV4_UNKNOWN_KEY,     /* 403 UnrecognizedClientException */
    SIGV4_BAD_SIGNATURE,   /* 403 InvalidSignatureException */
    SIGV4_EXPIRED,         /* X-Amz-Date off by > 15 min: 403 InvalidSignatureException */
};

/* Verifies req's Authorization header.  now_s is the current epoch time.
 * On failure, message (if non-NULL, msglen bytes) receives a Lambda-style
 * explanation.  Constant-time signature comparison.  Any region in the
 * credential scope is accepted; the service must be "lambda".  The policy
 * details (UNSIGNED-PAYLOAD, Date fallback, check order) are in sigv4.c. */
enum sigv4_result sigv4_verify(const sigv4_request_t *req, sigv4_secret_fn secret_of, void *arg,
                               int64_t now_s, char *message, size_t msglen);

/* Error type name for a failed result (e.g. "InvalidSignatureException"). */
const char *sigv4_error_type(enum sigv4_result r);

/* Signs a request: computes X-Amz-Date (from now_s), x-amz-content-sha256
 * and Authorization for the given headers (which must include host).
 * Writes the three header values into the caller's buffers.
 * Every header in req is signed, plus x-amz-date and x-amz-content-sha256,
 * so the caller must send exactly req's headers and the three results.
 * Returns 0, or -1 (buffers unspecified) if host is missing or repeated, req
 * already has X-Amz-Date/X-Amz-Content-SHA256/Authorization, a header name is
 * not an HTTP token, the key id/region/service is unusable, or authlen is too
 * small (512 bytes is plenty for a handful of headers). */
int sigv4_sign(const sigv4_request_t *req, const char *access_key_id, const char *secret,
               const char *region, const char *service, int64_t now_s, char amz_date[17],
               char content_sha256[65], char *authorization, size_t authlen);
#endif
