/* control.h - the Lambda control plane (REST-JSON, as the botocore model).
 *
 * control_handle() is a pure request -> response function over the store:
 * no sockets here, which keeps it unit-testable and fuzzable.  The HTTP
 * layer (frontend/http.c) authenticates first, then calls it for every path
 * that is not an Invoke.
 *
 * Paths are matched on the decoded path (botocore sends ':' in ARNs as %3A;
 * the HTTP layer must percent-decode the path once); both the 2.9-era
 * trailing-slash forms and the plain forms are accepted.  The query is
 * passed raw and decoded here (repeated keys such as tagKeys are kept).
 * See docs/api.md for the operations and deviations. */
#ifndef FLICKER_CONTROL_H
#define FLICKER_CONTROL_H
#include <jansson.h>
#include <stddef.h>
#include "store/store.h"

typedef struct api_request {
    const char *method;       /* "GET", "POST", ... */
    const char *path;         /* percent-decoded path, no query */
    const char *query;        /* raw query string without '?', or NULL */
    const char *body;         /* raw body (may be NULL when body_len == 0) */
    size_t body_len;
} api_request_t;

typedef struct api_response {
    int status;               /* HTTP status */
    char error_type[64];      /* x-amzn-ErrorType when an error, else "" */
    json_t *body;             /* JSON body to send, or NULL for none (204) */
} api_response_t;

/* Called after a function's $LATEST code/config changes, or a function (or
 * one of its versions) is deleted, so that running environments of the
 * old configuration are retired. */
typedef void (*control_changed_fn)(const char *function_name, void *arg);

typedef struct control_config {
    const char *region;           /* e.g. "us-east-1" */
    const char *account_id;       /* 12 digits */
    int account_concurrency;      /* account limit, default 1000 */
    control_changed_fn on_change; /* may be NULL */
    void *on_change_arg;          /* also given to on_snapshot */
    const char *isolation;        /* the platform's default isolation (NULL: sandbox) */
    /* Called after a request published a SnapStart version whose snapshot
     * must now be made (the version is stored Pending); may be NULL. */
    void (*on_snapshot)(const char *function_name, long version, void *arg);
} control_config_t;

/* Handles one control-plane request.  Always fills *resp (including 404
 * UnknownOperationException-style errors for unknown paths); the caller
 * frees resp->body with json_decref.  Returns 0. */
int control_handle(store_t *store, const control_config_t *cfg, const api_request_t *req,
                   api_response_t *resp);

/* Fills *resp with a Lambda error: status, type, {"Type":"User","message":msg}
 * ("Message" for the shapes botocore models that way, e.g.
 * ResourceNotFoundException, ServiceException, InvalidRuntimeException).
 * Non-printable / non-ASCII bytes of the message become '?'. */
void api_error(api_response_t *resp, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#endif
