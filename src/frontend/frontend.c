/* frontend.c - see frontend.h.
 *
 * Request flow: on_request() assigns a request id, answers /flicker/health,
 * verifies SigV4, then routes: Invoke -> invoke_start(), /flicker/ paths,
 * everything else -> control_handle().
 *
 * An invocation record (invocation_t) lives from the HTTP request until the
 * function's result is sent; if the client disconnects first, the record
 * stays until the environment is released (the result is dropped).  All
 * records are on a list so that shutdown can free them. */
#include "frontend/frontend.h"
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <sys/queue.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>
#include "common/log.h"
#include "common/sigv4.h"
#include "common/util.h"
#include "common/version.h"
#include "frontend/async_queue.h"
#include "frontend/control.h"
#include "worker/sandbox.h"

#define INVOKE_PAYLOAD_LIMIT 6291456   /* sync request payload (6 MB) */
#define CLIENT_CONTEXT_LIMIT 3583
#define MAX_BODY (160u << 20)          /* read whole, so oversize gets Lambda's 413 */
#define CODE_REQUEST_LIMIT 69905067    /* Lambda: a 50 MB zip, base64'd, plus JSON */
#define LOG_FOLLOW_WAIT_MS 20000
#define LOG_READ_MAX (1u << 20)
#define ASYNC_PAYLOAD_LIMIT 1048576    /* Event payload (Lambda: 1 MB since 2025) */
#define ASYNC_MAX_RUNNING 64           /* events dispatched at once */
#define ASYNC_BACKOFF_MAX_MS (5 * 60 * 1000)
#define MAX_REDELIVERIES 3

/* ASYNC_THROTTLED also covers system errors: both retry with backoff. */
enum async_outcome { ASYNC_SUCCESS, ASYNC_FUNCTION_ERROR, ASYNC_THROTTLED };

typedef struct invocation {
    frontend_t *fe;
    struct evhttp_request *req;   /* NULL once the client is gone */
    char request_id[37];
    fn_config_t *cfg;
    char *payload;
    size_t payload_len;
    char *client_context;
    char *invoked_arn;
    bool tail;
    void *acquire;                /* while waiting for an environment */
    backend_lease_t lease;        /* while the event runs */
    bool leased;
    async_event_t *async;         /* set for an Event invocation from the queue */
    int redeliveries;             /* stale environments skipped (see on_invoke_done) */
    struct invocation *next, *prev;
} invocation_t;

typedef struct log_poll {
    frontend_t *fe;
    struct evhttp_request *req;
    char *name;
    uint64_t offset;
    uint64_t give_up_ms;
    struct event *timer;
    struct log_poll *next, *prev;
} log_poll_t;

struct frontend {
    struct event_base *base;
    frontend_config_t cfg;
    store_t *store;
    backend_t *backend;
    fnlog_dir_t *logs;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    int port;
    invocation_t *invocations;
    int in_flight;
    log_poll_t *polls;
    uint64_t started_ms;
    bool closing;
    control_config_t control;
    async_queue_t *async;
    struct event *async_timer;
};

static void async_outcome(invocation_t *inv, enum async_outcome outcome, const invoke_result_t *r);

/* ------------------------------------------------------------- replies */

static void set_header(struct evhttp_request *req, const char *k, const char *v)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_remove_header(h, k);
    evhttp_add_header(h, k, v);
}

static void send_json(struct evhttp_request *req, int status, const char *error_type, json_t *body)
{
    struct evbuffer *out = evbuffer_new();
    if (body) {
        char *text = json_dumps(body, JSON_COMPACT);
        evbuffer_add(out, text, strlen(text));
        free(text);
        set_header(req, "Content-Type", "application/json");
    }
    if (error_type && *error_type)
        set_header(req, "x-amzn-ErrorType", error_type);
    evhttp_send_reply(req, status, NULL, out);
    evbuffer_free(out);
}

static void send_error(struct evhttp_request *req, int status, const char *type, const char *reason,
                       const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void send_error(struct evhttp_request *req, int status, const char *type, const char *reason,
                       const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *body = json_pack("{s:s,s:s}", "Type", "User", "message", msg);
    if (reason)
        json_object_set_new(body, "Reason", json_string(reason));
    send_json(req, status, type, body);
    json_decref(body);
}

/* ---------------------------------------------------------- invocations */

static void invocation_free(invocation_t *inv)
{
    frontend_t *fe = inv->fe;
    if (inv->prev)
        inv->prev->next = inv->next;
    else
        fe->invocations = inv->next;
    if (inv->next)
        inv->next->prev = inv->prev;
    fe->in_flight--;
    if (inv->req)
        evhttp_connection_set_closecb(evhttp_request_get_connection(inv->req), NULL, NULL);
    fn_config_free(inv->cfg);
    free(inv->payload);
    free(inv->client_context);
    free(inv->invoked_arn);
    if (inv->async) {
        async_event_clear(inv->async);
        free(inv->async);
    }
    free(inv);
}

static void on_client_gone(struct evhttp_connection *conn, void *arg)
{
    invocation_t *inv = arg;
    if (inv->fe->closing)
        return;
    inv->req = NULL;
    if (inv->acquire) { /* still waiting for an environment: stop waiting */
        inv->fe->backend->ops->cancel(inv->fe->backend, inv->acquire);
        invocation_free(inv);
    }
}

static void reply_result(invocation_t *inv, const invoke_result_t *r, bool failed)
{
    struct evhttp_request *req = inv->req;
    if (!req)
        return;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), NULL, NULL);
    inv->req = NULL;
    set_header(req, "X-Amz-Executed-Version", inv->cfg->version);
    if (failed)
        set_header(req, "X-Amz-Function-Error", "Unhandled");
    if (inv->tail && r->log_tail) {
        char *b64 = base64_encode(r->log_tail, strlen(r->log_tail));
        set_header(req, "X-Amz-Log-Result", b64);
        free(b64);
    }
    set_header(req, "Content-Type", "application/json");
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, r->body ? r->body : "", r->body ? r->body_len : 0);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void on_acquired(const acquire_result_t *r, const backend_lease_t *lease, void *arg);

static void on_invoke_done(const invoke_result_t *r, env_fate_t fate, void *arg)
{
    invocation_t *inv = arg;
    if (r->system_error && r->not_delivered && inv->redeliveries < MAX_REDELIVERIES) {
        /* A stale environment (its worker restarted): the function never
         * saw the event, so get another environment and try again. */
        inv->redeliveries++;
        inv->fe->backend->ops->release(inv->fe->backend, &inv->lease, fate);
        inv->leased = false;
        inv->acquire = inv->fe->backend->ops->acquire(inv->fe->backend, inv->cfg,
                                                      store_total_reserved(inv->fe->store),
                                                      on_acquired, inv);
        return;
    }
    if (r->system_error) {
        if (inv->req) {
            evhttp_connection_set_closecb(evhttp_request_get_connection(inv->req), NULL, NULL);
            send_error(inv->req, 500, "ServiceException", NULL, "%.*s",
                       (int)(r->body ? r->body_len : 0), r->body ? r->body : "");
            inv->req = NULL;
        }
        if (inv->async)
            async_outcome(inv, ASYNC_THROTTLED, NULL); /* retried with backoff */
    } else {
        reply_result(inv, r, r->status != INVOKE_OK);
        if (inv->async)
            async_outcome(inv, r->status == INVOKE_OK ? ASYNC_SUCCESS : ASYNC_FUNCTION_ERROR, r);
    }
    inv->fe->backend->ops->release(inv->fe->backend, &inv->lease, fate);
    invocation_free(inv);
}

static void on_acquired(const acquire_result_t *r, const backend_lease_t *lease, void *arg)
{
    invocation_t *inv = arg;
    inv->acquire = NULL;
    switch (r->status) {
    case ACQUIRE_OK: {
        inv->lease = *lease;
        inv->leased = true;
        invoke_event_t ev = {
            .request_id = inv->request_id,
            .payload = inv->payload,
            .payload_len = inv->payload_len,
            .client_context = inv->client_context,
            .invoked_arn = inv->invoked_arn,
        };
        inv->fe->backend->ops->invoke(inv->fe->backend, &inv->lease, inv->cfg, &ev, on_invoke_done, inv);
        return;
    }
    case ACQUIRE_THROTTLED:
    case ACQUIRE_NO_CAPACITY:
        if (inv->async)
            async_outcome(inv, ASYNC_THROTTLED, NULL);
        if (inv->req) {
            evhttp_connection_set_closecb(evhttp_request_get_connection(inv->req), NULL, NULL);
            set_header(inv->req, "Retry-After", "1");
            send_error(inv->req, 429, "TooManyRequestsException", r->reason, "%s", r->message);
            inv->req = NULL;
        }
        break;
    case ACQUIRE_INIT_FAILED:
        if (inv->async)
            async_outcome(inv, ASYNC_FUNCTION_ERROR, r->init);
        reply_result(inv, r->init, true);
        break;
    case ACQUIRE_FAILED:
        if (inv->async)
            async_outcome(inv, strncmp(r->message, "Couldn't find valid bootstrap", 29)
                                   ? ASYNC_THROTTLED : ASYNC_FUNCTION_ERROR, NULL);
        if (inv->req && !strncmp(r->message, "Couldn't find valid bootstrap", 29)) {
            char *body = xasprintf("{\"errorType\":\"Runtime.InvalidEntrypoint\",\"errorMessage\":"
                                   "\"RequestId: %s Error: %s\"}",
                                   inv->request_id, r->message);
            invoke_result_t res = {.status = INVOKE_FAILED, .body = body, .body_len = strlen(body)};
            reply_result(inv, &res, true);
            free(body);
        } else if (inv->req) {
            log_error("frontend", "invoke %s: %s", inv->request_id, r->message);
            evhttp_connection_set_closecb(evhttp_request_get_connection(inv->req), NULL, NULL);
            send_error(inv->req, 500, "ServiceException", NULL,
                       "The execution environment could not be created: %s", r->message);
            inv->req = NULL;
        }
        break;
    }
    invocation_free(inv);
}

/* Splits "name:qualifier" forms are left to store_resolve; here we only
 * check the invocation's headers and body. */
static void invoke_start(frontend_t *fe, struct evhttp_request *req, const char *name,
                         const char *query, const char *request_id)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *type = evhttp_find_header(in, "X-Amz-Invocation-Type");
    const char *log_type = evhttp_find_header(in, "X-Amz-Log-Type");
    const char *ctx_b64 = evhttp_find_header(in, "X-Amz-Client-Context");
    if (!type)
        type = "RequestResponse";
    if (strcmp(type, "RequestResponse") && strcmp(type, "Event") && strcmp(type, "DryRun")) {
        send_error(req, 400, "InvalidParameterValueException", NULL,
                   "Unsupported invocation type %s", type);
        return;
    }
    if (log_type && strcmp(log_type, "None") && strcmp(log_type, "Tail")) {
        send_error(req, 400, "InvalidParameterValueException", NULL, "Unsupported log type %s",
                   log_type);
        return;
    }
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    if (len > INVOKE_PAYLOAD_LIMIT) {
        send_error(req, 413, "RequestTooLargeException", NULL,
                   "Request must be smaller than %d bytes for the InvokeFunction operation",
                   INVOKE_PAYLOAD_LIMIT);
        return;
    }
    char *client_context = NULL;
    if (ctx_b64) {
        size_t ctx_len = 0;
        client_context = base64_decode(ctx_b64, strlen(ctx_b64), &ctx_len);
        if (!client_context || strlen(ctx_b64) > CLIENT_CONTEXT_LIMIT) {
            free(client_context);
            send_error(req, 400, "InvalidParameterValueException", NULL,
                       "Client context must be a valid Base64-encoded JSON object of at most %d bytes",
                       CLIENT_CONTEXT_LIMIT);
            return;
        }
    }
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    const char *qualifier = NULL;
    if (query && evhttp_parse_query_str(query, &q) == 0)
        qualifier = evhttp_find_header(&q, "Qualifier");
    fn_config_t *cfg = NULL;
    err_t err = {0};
    int rc = store_resolve(fe->store, name, qualifier, &cfg, &err);
    int colons = 0;
    for (const char *c = name; *c; c++)
        colons += *c == ':';
    /* "fn:q", "acct:function:fn:q", "arn:aws:lambda:r:acct:function:fn:q" */
    bool qualified = (qualifier && *qualifier) || colons == 1 || colons == 3 || colons == 7;
    char *qualifier_given = qualifier && *qualifier ? xstrdup(qualifier) : NULL;
    evhttp_clear_headers(&q);
    qualifier = NULL; /* freed with q */
    if (rc < 0) {
        free(client_context);
        free(qualifier_given);
        if (err.code == ENOENT)
            send_error(req, 404, "ResourceNotFoundException", NULL, "%s", err.msg);
        else
            send_error(req, 400, "InvalidParameterValueException", NULL, "%s", err.msg);
        return;
    }
    if (cfg->snap_pending) {
        free(client_context);
        free(qualifier_given);
        fn_config_free(cfg);
        send_error(req, 409, "SnapStartNotReadyException", NULL,
                   "Lambda is initializing your function. You can invoke the function when the "
                   "state of your function is Active.");
        return;
    }
    if (!strcmp(type, "DryRun")) {
        free(client_context);
        free(qualifier_given);
        set_header(req, "X-Amz-Executed-Version", cfg->version);
        fn_config_free(cfg);
        evhttp_send_reply(req, 204, "No Content", NULL);
        return;
    }
    /* Lambda only accepts JSON payloads; an empty one is the event {}. */
    const char *data = (const char *)evbuffer_pullup(body, -1);
    if (len > 0) {
        json_error_t jerr;
        json_t *j = json_loadb(data, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        if (!j) {
            free(client_context);
            free(qualifier_given);
            fn_config_free(cfg);
            send_error(req, 400, "InvalidRequestContentException", NULL,
                       "Could not parse request body into json: %s", jerr.text);
            return;
        }
        json_decref(j);
    }
    if (!strcmp(type, "Event")) {
        free(client_context);
        if (len > ASYNC_PAYLOAD_LIMIT) {
            free(qualifier_given);
            fn_config_free(cfg);
            send_error(req, 413, "RequestTooLargeException", NULL,
                       "Request must be smaller than %d bytes for the InvokeFunction operation",
                       ASYNC_PAYLOAD_LIMIT);
            return;
        }
        err_t aerr = {0};
        /* Queued as invoked: the qualifier (alias) picks the version and
         * the event-invoke config (retries, age, destinations) at dispatch. */
        int qrc = async_push(fe->async, request_id, name, qualifier_given, len ? data : "{}",
                             len ? len : 2, &aerr);
        free(qualifier_given);
        fn_config_free(cfg);
        if (qrc < 0) {
            log_error("frontend", "queueing event %s: %s", request_id, aerr.msg);
            send_error(req, 500, "ServiceException", NULL, "The event could not be queued");
            return;
        }
        evhttp_send_reply(req, 202, "Accepted", NULL);
        event_active(fe->async_timer, 0, 0);
        return;
    }

    invocation_t *inv = xcalloc(1, sizeof *inv);
    inv->fe = fe;
    inv->req = req;
    snprintf(inv->request_id, sizeof inv->request_id, "%s", request_id);
    inv->cfg = cfg;
    if (len > 0) {
        inv->payload = xmalloc(len + 1);
        memcpy(inv->payload, data, len);
        inv->payload_len = len;
    } else {
        inv->payload = xstrdup("{}");
        inv->payload_len = 2;
    }
    free(qualifier_given);
    inv->client_context = client_context;
    /* The ARN as invoked: through an alias, a version, or unqualified. */
    inv->invoked_arn = cfg->alias ? xasprintf("%s:%s", cfg->arn, cfg->alias)
                       : qualified ? xstrdup(cfg->qualified_arn)
                                   : xstrdup(cfg->arn);
    inv->tail = log_type && !strcmp(log_type, "Tail");
    inv->next = fe->invocations;
    if (fe->invocations)
        fe->invocations->prev = inv;
    fe->invocations = inv;
    fe->in_flight++;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_client_gone, inv);
    inv->acquire = fe->backend->ops->acquire(fe->backend, cfg, store_total_reserved(fe->store),
                                             on_acquired, inv);
}


/* ------------------------------------------------------ async dispatch */

static void schedule_async(frontend_t *fe)
{
    int64_t due = async_next_due_in(fe->async, now_wall_ms());
    if (due < 0)
        return;
    if (due > 1000)
        due = 1000;
    struct timeval tv = {.tv_sec = due / 1000, .tv_usec = (due % 1000) * 1000};
    evtimer_add(fe->async_timer, &tv);
}

/* Sends the record of an event's final outcome to its destination (a
 * function ARN), as Lambda's on-success / on-failure destinations do: the
 * record is queued as an Event invocation of the destination. */
static void send_to_destination(frontend_t *fe, invocation_t *inv, const char *destination,
                                const char *condition, const invoke_result_t *r)
{
    if (strncmp(destination, "arn:aws:lambda:", 15) != 0) {
        log_warn("async", "event %s: destination %s is not a Lambda function: not supported",
                 inv->request_id, destination);
        return;
    }
    async_event_t *ev = inv->async;
    char ts[40];
    format_iso_time(now_wall_ms(), ts, sizeof ts);
    json_t *request = json_loadb(ev->payload, ev->payload_len, JSON_DECODE_ANY, NULL);
    json_t *record = json_pack(
        "{s:s,s:s,s:{s:s,s:s,s:s,s:i},s:o}", "version", "1.0", "timestamp", ts, "requestContext",
        "requestId", inv->request_id, "functionArn", inv->cfg->qualified_arn, "condition", condition,
        "approximateInvokeCount", ev->attempts + 1, "requestPayload",
        request ? request : json_stringn(ev->payload, ev->payload_len));
    if (r) {
        json_t *ctx = json_pack("{s:i,s:s}", "statusCode", 200, "executedVersion", inv->cfg->version);
        if (r->status != INVOKE_OK)
            json_object_set_new(ctx, "functionError", json_string("Unhandled"));
        json_object_set_new(record, "responseContext", ctx);
        json_t *resp = r->body ? json_loadb(r->body, r->body_len, JSON_DECODE_ANY, NULL) : NULL;
        if (!resp && r->body)
            resp = json_stringn(r->body, r->body_len);
        if (resp)
            json_object_set_new(record, "responsePayload", resp);
    }
    char *text = json_dumps(record, JSON_COMPACT);
    json_decref(record);
    char id[37];
    uuid_v4(id);
    err_t err = {0};
    if (async_push(fe->async, id, destination, NULL, text, strlen(text), &err) < 0)
        log_error("async", "event %s: queueing for destination %s: %s", inv->request_id,
                  destination, err.msg);
    free(text);
}

/* Records what happened to a queued event: removes it or schedules the
 * next attempt (see async_queue.h for the retry rules); a final outcome
 * goes to the function's on-success / on-failure destination. */
static void async_outcome(invocation_t *inv, enum async_outcome outcome, const invoke_result_t *r)
{
    frontend_t *fe = inv->fe;
    async_event_t *ev = inv->async;
    const fn_config_t *cfg = inv->cfg;
    uint64_t now = now_wall_ms();
    uint64_t age_ms = now > ev->received_ms ? now - ev->received_ms : 0;
    int attempt = ev->attempts + 1; /* this one */
    const char *failed = NULL;      /* final failure condition */
    if (outcome == ASYNC_SUCCESS) {
        if (cfg->on_success)
            send_to_destination(fe, inv, cfg->on_success, "Success", r);
        async_done(fe->async, ev);
    } else if (outcome == ASYNC_FUNCTION_ERROR) {
        int delay = fe->cfg.async_retry_delays_s[attempt > 1 ? 1 : 0];
        if (attempt > cfg->max_retry_attempts)
            failed = "RetriesExhausted";
        else if (age_ms + (uint64_t)delay * 1000u > (uint64_t)cfg->max_event_age_s * 1000u)
            failed = "EventAgeExceeded";
        else
            async_retry(fe->async, ev, now + (uint64_t)delay * 1000u);
    } else {
        uint64_t backoff = 1000u << (attempt > 9 ? 9 : attempt - 1);
        if (backoff > ASYNC_BACKOFF_MAX_MS)
            backoff = ASYNC_BACKOFF_MAX_MS;
        if (age_ms + backoff > (uint64_t)cfg->max_event_age_s * 1000u)
            failed = "EventAgeExceeded";
        else
            async_retry(fe->async, ev, now + backoff);
    }
    if (failed) {
        log_info("async", "event %s for %s dropped after %d attempt(s): %s", ev->id, cfg->name,
                 attempt, failed);
        if (cfg->on_failure)
            send_to_destination(fe, inv, cfg->on_failure, failed, r);
        async_done(fe->async, ev);
    }
    schedule_async(fe);
}

static void on_async_timer(evutil_socket_t fd, short what, void *arg)
{
    frontend_t *fe = arg;
    int running, queued;
    uint64_t oldest;
    async_stats(fe->async, now_wall_ms(), &queued, &running, &oldest);
    int room = ASYNC_MAX_RUNNING - running;
    async_event_t evs[ASYNC_MAX_RUNNING];
    int n = room > 0 ? async_take_due(fe->async, now_wall_ms(), evs, room) : 0;
    for (int i = 0; i < n; i++) {
        invocation_t *inv = xcalloc(1, sizeof *inv);
        inv->fe = fe;
        inv->async = xmalloc(sizeof *inv->async);
        *inv->async = evs[i];
        snprintf(inv->request_id, sizeof inv->request_id, "%.36s", evs[i].id);
        inv->next = fe->invocations;
        if (fe->invocations)
            fe->invocations->prev = inv;
        fe->invocations = inv;
        fe->in_flight++;
        err_t err = {0};
        if (store_resolve(fe->store, evs[i].function, evs[i].qualifier, &inv->cfg, &err) < 0) {
            log_info("async", "event %s: %s: dropped", evs[i].id, err.msg);
            async_done(fe->async, inv->async);
            invocation_free(inv);
            continue;
        }
        if (inv->cfg->snap_pending) { /* its snapshot is being made: later */
            async_outcome(inv, ASYNC_THROTTLED, NULL);
            invocation_free(inv);
            continue;
        }
        inv->payload = xmalloc(evs[i].payload_len + 1);
        memcpy(inv->payload, evs[i].payload, evs[i].payload_len);
        inv->payload_len = evs[i].payload_len;
        inv->invoked_arn = xasprintf("%s:%s", inv->cfg->arn, inv->cfg->version);
        inv->acquire = fe->backend->ops->acquire(fe->backend, inv->cfg,
                                                 store_total_reserved(fe->store), on_acquired, inv);
    }
    schedule_async(fe);
}

/* ----------------------------------------------------- /flicker/ paths */

static void send_text(struct evhttp_request *req, const char *data, size_t len, uint64_t offset)
{
    char off[32];
    snprintf(off, sizeof off, "%llu", (unsigned long long)offset);
    set_header(req, "X-Flicker-Log-Offset", off);
    set_header(req, "Content-Type", "text/plain; charset=utf-8");
    struct evbuffer *out = evbuffer_new();
    if (len)
        evbuffer_add(out, data, len);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void log_poll_free(log_poll_t *p)
{
    frontend_t *fe = p->fe;
    if (p->prev)
        p->prev->next = p->next;
    else
        fe->polls = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->req)
        evhttp_connection_set_closecb(evhttp_request_get_connection(p->req), NULL, NULL);
    event_free(p->timer);
    free(p->name);
    free(p);
}

static void on_poll_gone(struct evhttp_connection *conn, void *arg)
{
    log_poll_t *p = arg;
    if (p->fe->closing)
        return;
    p->req = NULL;
    log_poll_free(p);
}

static void on_log_poll(evutil_socket_t fd, short what, void *arg)
{
    log_poll_t *p = arg;
    size_t len = 0;
    char *data = fnlog_read(p->fe->logs, p->name, &p->offset, LOG_READ_MAX, &len);
    if (data || now_mono_ms() >= p->give_up_ms) {
        evhttp_connection_set_closecb(evhttp_request_get_connection(p->req), NULL, NULL);
        send_text(p->req, data, len, p->offset);
        p->req = NULL;
        free(data);
        log_poll_free(p);
        return;
    }
    struct timeval tv = {.tv_usec = 200000};
    evtimer_add(p->timer, &tv);
}

static void serve_logs(frontend_t *fe, struct evhttp_request *req, const char *name, const char *query)
{
    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (query)
        evhttp_parse_query_str(query, &q);
    const char *off = evhttp_find_header(&q, "offset");
    const char *follow = evhttp_find_header(&q, "follow");
    uint64_t offset = off ? strtoull(off, NULL, 10) : 0;
    bool wait = follow && strcmp(follow, "0") && strcmp(follow, "false");
    evhttp_clear_headers(&q);
    fn_config_t *cfg = NULL;
    if (store_resolve(fe->store, name, NULL, &cfg, NULL) < 0 && fnlog_end(fe->logs, name) == 0) {
        send_error(req, 404, "ResourceNotFoundException", NULL, "No logs for function %s", name);
        return;
    }
    fn_config_free(cfg);
    size_t len = 0;
    char *data = fnlog_read(fe->logs, name, &offset, LOG_READ_MAX, &len);
    if (data || !wait) {
        send_text(req, data, len, offset);
        free(data);
        return;
    }
    log_poll_t *p = xcalloc(1, sizeof *p);
    p->fe = fe;
    p->req = req;
    p->name = xstrdup(name);
    p->offset = offset;
    p->give_up_ms = now_mono_ms() + LOG_FOLLOW_WAIT_MS;
    p->timer = evtimer_new(fe->base, on_log_poll, p);
    p->next = fe->polls;
    if (fe->polls)
        fe->polls->prev = p;
    fe->polls = p;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), on_poll_gone, p);
    struct timeval tv = {.tv_usec = 200000};
    evtimer_add(p->timer, &tv);
}

static void serve_status(frontend_t *fe, struct evhttp_request *req)
{
    int queued, running;
    uint64_t oldest;
    async_stats(fe->async, now_wall_ms(), &queued, &running, &oldest);
    json_t *st = json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:b,s:{s:i},s:{s:i,s:i,s:I}}", "version",
                           FLICKER_VERSION, "mode", fe->cfg.mode ? fe->cfg.mode : "embedded",
                           "uptime_s", (json_int_t)((now_mono_ms() - fe->started_ms) / 1000),
                           "region", fe->cfg.region, "account_id", fe->cfg.account_id, "cgroup",
                           sandbox_cgroup_version(), "auth", !fe->cfg.no_auth, "frontend",
                           "invocations_in_flight", fe->in_flight, "async", "queued", queued,
                           "running", running, "oldest_age_ms", (json_int_t)oldest);
    fe->backend->ops->status(fe->backend, st);
    send_json(req, 200, NULL, st);
    json_decref(st);
}

/* --------------------------------------------------------------- router */

static const char *secret_of(const char *akid, void *arg)
{
    frontend_t *fe = arg;
    return fe->cfg.access_key_id && !strcmp(akid, fe->cfg.access_key_id) ? fe->cfg.secret_access_key
                                                                           : NULL;
}

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PATCH: return "PATCH";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    default: return "OTHER";
    }
}

static bool authenticate(frontend_t *fe, struct evhttp_request *req, const char *method,
                         const char *raw_path, const char *raw_query)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    size_t n = 0;
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, in, next)
        n++;
    sigv4_header_t *hs = xcalloc(n ? n : 1, sizeof *hs);
    size_t i = 0;
    TAILQ_FOREACH(kv, in, next) {
        hs[i].name = kv->key;
        hs[i].value = kv->value;
        i++;
    }
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    sigv4_request_t sr = {
        .method = method,
        .path = raw_path,
        .query = raw_query,
        .headers = hs,
        .n_headers = n,
        .body = len ? (const void *)evbuffer_pullup(body, -1) : (const void *)"",
        .body_len = len,
    };
    char msg[512] = "";
    enum sigv4_result r = sigv4_verify(&sr, secret_of, fe, (int64_t)time(NULL), msg, sizeof msg);
    free(hs);
    if (r == SIGV4_OK)
        return true;
    send_error(req, 403, sigv4_error_type(r), NULL, "%s", msg);
    return false;
}

/* DATA/snapshots/NAME/: one file per published version, named by version
 * and RevisionId (a version never changes; the name only guards against a
 * number reused after the function was deleted and created again). */
static char *snapshot_dir(frontend_t *fe, const char *name)
{
    return xasprintf("%s/snapshots/%s", fe->cfg.data_dir, name);
}

/* Removes snapshot files of versions that no longer exist. */
static void prune_snapshots(frontend_t *fe, const char *name)
{
    char *dir = snapshot_dir(fe, name);
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            long v = 0;
            char rev[64] = "";
            if (sscanf(de->d_name, "v%ld-%63[^.].vmstate", &v, rev) != 2)
                continue;
            json_t *ver = store_version_get(fe->store, name, v);
            const char *live = ver ? json_string_value(json_object_get(ver, "RevisionId")) : NULL;
            if (!live || strcmp(live, rev)) {
                char *path = xasprintf("%s/%s", dir, de->d_name);
                unlink(path);
                free(path);
            }
            json_decref(ver);
        }
        closedir(d);
        rmdir(dir); /* only when empty */
    }
    free(dir);
}

static void on_function_changed(const char *name, void *arg)
{
    frontend_t *fe = arg;
    fe->backend->ops->function_changed(fe->backend, name, fe->store);
    prune_snapshots(fe, name);
}

typedef struct snap_job {
    frontend_t *fe;
    char *name;
    long version;
    char *path;
    uint64_t started_ms;
} snap_job_t;

static void on_snapshot_done(bool ok, const char *message, void *arg)
{
    snap_job_t *job = arg;
    frontend_t *fe = job->fe;
    json_t *ver = store_version_get(fe->store, job->name, job->version);
    const char *rev = ver ? json_string_value(json_object_get(ver, "RevisionId")) : NULL;
    if (!message && !ok) {
        /* cancelled (stopping): stays Pending, made again at the next start */
        log_info("frontend", "SnapStart %s:%ld: interrupted; resumed at the next start",
                 job->name, job->version);
    } else if (!ver || !rev || !strstr(job->path, rev)) {
        unlink(job->path); /* the version went away meanwhile */
    } else {
        json_t *snap = json_object_get(ver, "SnapStart");
        json_object_set_new(snap, "OptimizationStatus", json_string(ok ? "On" : "Off"));
        json_object_set_new(ver, "State", json_string("Active"));
        json_object_del(ver, "StateReason");
        json_object_del(ver, "StateReasonCode");
        json_object_del(ver, "_SnapshotPending");
        if (ok)
            json_object_set_new(ver, "_Snapshot", json_string(job->path));
        else
            log_warn("frontend", "SnapStart %s:%ld: no snapshot (%s); cold starts run Init",
                     job->name, job->version, message);
        err_t err = {0};
        if (store_version_update(fe->store, job->name, job->version, ver, &err) < 0)
            log_error("frontend", "SnapStart %s:%ld: %s", job->name, job->version, err.msg);
        else if (ok)
            log_info("frontend", "SnapStart %s:%ld: snapshot ready after %llu ms", job->name,
                     job->version, (unsigned long long)(now_mono_ms() - job->started_ms));
    }
    json_decref(ver);
    free(job->name);
    free(job->path);
    free(job);
}

/* Makes the snapshot of a Pending SnapStart version (control.c published
 * it); when done the version becomes Active with OptimizationStatus On
 * (or Off, with the reason logged, when Init or the save failed). */
static void on_snapshot(const char *name, long version, void *arg)
{
    frontend_t *fe = arg;
    char q[24];
    snprintf(q, sizeof q, "%ld", version);
    fn_config_t *cfg = NULL;
    if (store_resolve(fe->store, name, q, &cfg, NULL) < 0)
        return;
    snap_job_t *job = xcalloc(1, sizeof *job);
    job->fe = fe;
    job->name = xstrdup(name);
    job->version = version;
    char *dir = snapshot_dir(fe, name);
    job->path = xasprintf("%s/v%ld-%s.vmstate", dir, version, cfg->revision_id);
    free(dir);
    job->started_ms = now_mono_ms();
    fe->backend->ops->snapshot(fe->backend, cfg, job->path, on_snapshot_done, job);
    fn_config_free(cfg);
}

/* At start: versions left Pending by a stop or crash get their snapshot. */
static void resume_snapshots(frontend_t *fe)
{
    json_t *fns = store_fn_list(fe->store);
    size_t i, j;
    json_t *fn, *v;
    json_array_foreach(fns, i, fn) {
        const char *name = json_string_value(json_object_get(fn, "FunctionName"));
        if (!name)
            continue;
        json_t *versions = store_version_list(fe->store, name);
        json_array_foreach(versions, j, v) {
            if (json_is_true(json_object_get(v, "_SnapshotPending")))
                on_snapshot(name, strtol(json_string_value(json_object_get(v, "Version")) ?: "0",
                                         NULL, 10), fe);
        }
        json_decref(versions);
    }
    json_decref(fns);
}

/* Matches "/2015-03-31/functions/{name}/invocations"; copies name. */
static bool match_invoke(const char *path, char *name, size_t namelen)
{
    static const char prefix[] = "/2015-03-31/functions/";
    static const char suffix[] = "/invocations";
    size_t plen = strlen(path);
    if (strncmp(path, prefix, sizeof prefix - 1) != 0 || plen < sizeof prefix + sizeof suffix - 1)
        return false;
    const char *s = path + plen - (sizeof suffix - 1);
    if (strcmp(s, suffix) != 0 && strcmp(s - 1, "/invocations/") != 0)
        return false;
    if (path[plen - 1] == '/')
        s--;
    const char *n = path + sizeof prefix - 1;
    size_t len = (size_t)(s - n);
    if (len == 0 || len >= namelen || memchr(n, '/', len))
        return false;
    memcpy(name, n, len);
    name[len] = 0;
    return true;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    frontend_t *fe = arg;
    char request_id[37];
    uuid_v4(request_id);
    set_header(req, "x-amzn-RequestId", request_id);
    const char *method = method_name(evhttp_request_get_command(req));
    const char *uri = evhttp_request_get_uri(req);
    const char *qmark = strchr(uri, '?');
    char *raw_path = qmark ? xstrndup(uri, (size_t)(qmark - uri)) : xstrdup(uri);
    const char *raw_query = qmark ? qmark + 1 : NULL;
    size_t plen = 0;
    char *path = evhttp_uridecode(raw_path, 0, &plen);
    if (!path || strlen(path) != plen) {
        send_error(req, 400, "InvalidRequestContentException", NULL, "Malformed request path");
        goto out;
    }
    if (!strcmp(path, "/flicker/health")) {
        json_t *ok = json_pack("{s:s,s:s}", "status", "ok", "version", FLICKER_VERSION);
        send_json(req, 200, NULL, ok);
        json_decref(ok);
        goto out;
    }
    if (!fe->cfg.no_auth && !authenticate(fe, req, method, raw_path, raw_query))
        goto out;

    char name[512];
    if (!strcmp(method, "POST") && match_invoke(path, name, sizeof name)) {
        invoke_start(fe, req, name, raw_query, request_id);
        goto out;
    }
    if (!strcmp(path, "/flicker/status")) {
        serve_status(fe, req);
        goto out;
    }
    if (!strncmp(path, "/flicker/functions/", 19)) {
        const char *n = path + 19;
        const char *slash = strchr(n, '/');
        if (slash && !strcmp(slash, "/logs") && (size_t)(slash - n) < sizeof name &&
            !strcmp(method, "GET")) {
            memcpy(name, n, (size_t)(slash - n));
            name[slash - n] = 0;
            serve_logs(fe, req, name, raw_query);
            goto out;
        }
    }
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    if (len > CODE_REQUEST_LIMIT) {
        send_error(req, 413, "RequestTooLargeException", NULL,
                   "Request must be smaller than %d bytes for the %s operation", CODE_REQUEST_LIMIT,
                   !strcmp(method, "POST") ? "CreateFunction" : "UpdateFunctionCode");
        goto out;
    }
    api_request_t areq = {
        .method = method,
        .path = path,
        .query = raw_query,
        .body = len ? (const char *)evbuffer_pullup(body, -1) : NULL,
        .body_len = len,
    };
    api_response_t resp = {0};
    control_handle(fe->store, &fe->control, &areq, &resp);
    send_json(req, resp.status, resp.error_type, resp.body);
    json_decref(resp.body);
out:
    free(path);
    free(raw_path);
}

/* ------------------------------------------------------------ lifecycle */

frontend_t *frontend_new(struct event_base *base, const frontend_config_t *cfg, store_t *store,
                         backend_t *backend, fnlog_dir_t *logs, err_t *err)
{
    frontend_t *fe = xcalloc(1, sizeof *fe);
    fe->base = base;
    fe->cfg = *cfg;
    fe->store = store;
    fe->backend = backend;
    fe->logs = logs;
    fe->started_ms = now_mono_ms();
    fe->control = (control_config_t){
        .region = cfg->region,
        .account_id = cfg->account_id,
        .account_concurrency = cfg->account_concurrency,
        .on_change = on_function_changed,
        .on_change_arg = fe,
        .isolation = cfg->isolation,
        .on_snapshot = on_snapshot,
    };
    char *data_dir = xstrdup(cfg->data_dir);
    fe->async = async_open(data_dir, err);
    free(data_dir);
    if (!fe->async) {
        free(fe);
        return NULL;
    }
    fe->async_timer = evtimer_new(base, on_async_timer, fe);
    fe->http = evhttp_new(base);
    evhttp_set_max_body_size(fe->http, MAX_BODY);
    evhttp_set_timeout(fe->http, 3600);
    evhttp_set_allowed_methods(fe->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                             EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(fe->http, on_request, fe);
    fe->bound = evhttp_bind_socket_with_handle(fe->http, cfg->listen_host, (uint16_t)cfg->listen_port);
    if (!fe->bound) {
        err_sys(err, "cannot listen on %s:%d", cfg->listen_host, cfg->listen_port);
        evhttp_free(fe->http);
        event_free(fe->async_timer);
        async_close(fe->async);
        free(fe);
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(evhttp_bound_socket_get_fd(fe->bound), (struct sockaddr *)&ss, &sl);
    fe->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    event_active(fe->async_timer, 0, 0); /* events left by a previous run */
    resume_snapshots(fe);
    return fe;
}

void frontend_stop_listening(frontend_t *fe)
{
    if (fe->bound) {
        evhttp_del_accept_socket(fe->http, fe->bound);
        fe->bound = NULL;
    }
}

int frontend_in_flight(const frontend_t *fe) { return fe->in_flight; }
int frontend_port(const frontend_t *fe) { return fe->port; }

void frontend_free(frontend_t *fe)
{
    if (!fe)
        return;
    fe->closing = true;
    evhttp_free(fe->http);
    while (fe->invocations) {
        fe->invocations->req = NULL;
        invocation_free(fe->invocations);
    }
    while (fe->polls) {
        fe->polls->req = NULL;
        log_poll_free(fe->polls);
    }
    event_free(fe->async_timer);
    async_close(fe->async);
    free(fe);
}
