/* rpc.h - flicker's internal RPC between its roles (frontend -> assignment,
 * assignment -> workers, workers -> placement), over TCP or unix sockets,
 * on a libevent loop.
 *
 * Wire format (see docs/rpc.md).  A connection carries frames in both
 * directions; each frame is
 *
 *     u32 H (big-endian) | u32 B (big-endian) | H bytes JSON object | B bytes body
 *
 * The JSON object is the message header; the body is raw bytes (binary
 * safe, no base64).  8 + H + B may not exceed the max frame size (16 MiB by
 * default); H must be > 0.  Messages:
 *
 *     request       {"id": N, "m": "method", ...params}   + body
 *     response      {"id": N, ...result}                  + body
 *     error reply   {"id": N, "error": {"code": "Name", "message": "..."}}
 *     notification  {"m": "method", ...params}            + body   (no id, no reply)
 *
 * Requests are pipelined: many may be in flight on one connection and the
 * responses come back in any order, matched by id.  A frame that is too big,
 * has a header that is not a JSON object, a non-integer id, a non-string
 * "m", or neither id nor "m" (or a response sent to a server, a request
 * sent to a client: servers only notify clients) makes the receiver log the
 * reason and close the connection (it never reads the body of an oversized
 * frame).
 *
 * Threading: a server or client and everything made from it belong to one
 * event_base and are used only from that base's thread.  Callbacks run from
 * the loop, never synchronously from the function that armed them, except
 * where stated (rpc_client_free).
 *
 * Borrowing: json_t and body arguments handed to callbacks are valid only
 * during the callback (json_incref / copy to keep them).  json_t and body
 * arguments passed to rpc_* functions are borrowed (copied into the frame);
 * the caller keeps its reference. */
#ifndef FLICKER_RPC_H
#define FLICKER_RPC_H
#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include "common/err.h"

#define RPC_MAX_FRAME (16u << 20)   /* default max frame (8 + H + B) */
#define RPC_MAX_BODY (8u << 20)     /* bodies this big always fit a default frame */

/* Error codes produced locally (the peer's own codes are passed through). */
#define RPC_TIMEOUT "Timeout"            /* no response within the call's timeout */
#define RPC_DISCONNECTED "Disconnected"  /* connection lost with the call in flight */
#define RPC_UNREACHABLE "Unreachable"    /* the connection attempt failed */
#define RPC_CANCELLED "Cancelled"        /* rpc_client_free with the call pending */
#define RPC_INVALID "InvalidRequest"     /* bad method name, params or frame too big */

/* Peer authentication (docs/rpc.md, "Cluster key").  With a cluster key set,
 * every client's first frame on a connection is the notification
 * `rpc.auth {nonce, t, mac}`, mac = hex HMAC-SHA256(key, "flicker-rpc-auth-v1\n"
 * nonce "\n" t) with t the sender's wall clock in ms and nonce 32 random
 * hex digits; a server accepts nothing else first: a connection whose first
 * frame is not a valid rpc.auth (wrong key, t more than 60 s off, a nonce
 * seen before) is closed, and frames before it may be at most 4 KiB.  It
 * authenticates clients to servers; it does not encrypt (use a private
 * network, or a tunnel, for confidentiality).  Set once per process before
 * any server or client is made; applies to all of them.  The key is at
 * least 16 bytes.  Returns 0, or -1/err. */
int rpc_set_cluster_key(const void *key, size_t len, err_t *err);
/* Reads the key from path (surrounding whitespace removed); refuses a file
 * that group or others may read.  Returns 0, or -1/err. */
int rpc_load_cluster_key_file(const char *path, err_t *err);
/* The key's auth fields for a new connection (tests, other clients):
 * fills nonce (33 bytes), *t_ms and mac (65 bytes); -1 without a key. */
int rpc_auth_fields(char nonce[33], long long *t_ms, char mac[65]);

/* Tunables; zero fields take the defaults shown.  Pass NULL for all defaults. */
typedef struct rpc_opts {
    size_t max_frame;          /* RPC_MAX_FRAME; both peers should agree */
    int default_timeout_ms;    /* 30000; used when rpc_call's timeout_ms <= 0 */
    int connect_timeout_ms;    /* 3000; a connect attempt slower than this fails */
    int backoff_min_ms;        /* 50; first reconnect delay, doubled per failure */
    int backoff_max_ms;        /* 2000; reconnect delay cap */
    int dead_peer_ms;          /* 3000; TCP keepalive + TCP_USER_TIMEOUT budget */
} rpc_opts_t;

/* ------------------------------------------------------------------ server */

typedef struct rpc_server rpc_server_t;
typedef struct rpc_conn rpc_conn_t;   /* one accepted connection */
typedef struct rpc_call rpc_call_t;   /* one request awaiting its reply */

/* A request.  params is the header object without "id" and "m".  The body
 * and params are valid only during the call.  The handler must answer every
 * call exactly once with rpc_reply or rpc_reply_error, now or later (the
 * reply frees the call) - also after the call was abandoned. */
typedef void (*rpc_handler_fn)(rpc_call_t *call, const char *method, json_t *params,
                               const void *body, size_t len, void *arg);
/* A notification from a connected client (no reply). */
typedef void (*rpc_conn_notify_fn)(rpc_conn_t *conn, const char *method, json_t *params,
                                   const void *body, size_t len, void *arg);
/* A connection closed (peer gone, protocol error, rpc_conn_close).  conn is
 * freed right after the callback returns.  Not called from rpc_server_free. */
typedef void (*rpc_conn_close_fn)(rpc_conn_t *conn, void *arg);
/* The call's connection closed before the reply: the reply will be dropped.
 * The call stays valid; it must still be answered (to free it). */
typedef void (*rpc_cancel_fn)(rpc_call_t *call, void *arg);

/* A server with no listening sockets yet.  Never fails (aborts on OOM). */
rpc_server_t *rpc_server_new(struct event_base *base, rpc_handler_fn handler, void *arg);
/* Uses opts' max_frame and dead_peer_ms for connections accepted afterwards. */
void rpc_server_set_opts(rpc_server_t *srv, const rpc_opts_t *opts);
void rpc_server_set_notify_cb(rpc_server_t *srv, rpc_conn_notify_fn cb, void *arg);
void rpc_server_set_close_cb(rpc_server_t *srv, rpc_conn_close_fn cb, void *arg);
/* Listens on "tcp:HOST:PORT" (PORT 0: ephemeral; "tcp::PORT" or
 * "tcp:0.0.0.0:PORT": all interfaces; "[v6]" hosts) or "unix:/path" (a stale
 * socket file at path is replaced; the file is removed by rpc_server_free).
 * May be called several times.  Returns 0, or -1 with err set. */
int rpc_server_listen(rpc_server_t *srv, const char *addr, err_t *err);
/* The port of the first TCP listener, or 0 if there is none. */
int rpc_server_port(const rpc_server_t *srv);
/* Closes the listeners and every connection.  Outstanding calls are detached
 * silently (no cancel or close callbacks): they stay valid until answered,
 * and their replies are dropped.  Not to be called from an rpc callback. */
void rpc_server_free(rpc_server_t *srv);

/* Answers call with result (an object or NULL; must not hold "id" or
 * "error") and body.  Frees the call: it must not be used afterwards.  If
 * the connection is gone, the reply is dropped.  A reply too big for a frame
 * or with an unserializable result is replaced by an error reply. */
void rpc_reply(rpc_call_t *call, json_t *result, const void *body, size_t len);
/* Answers call with {"error": {"code": code, "message": formatted}}; frees it. */
void rpc_reply_error(rpc_call_t *call, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like rpc_reply_error, with more members for the error object (extra, an
 * object or NULL, borrowed; its "code"/"message" are overridden) and a
 * reply body (e.g. InitFailed: {"code","message","log_tail"} + Lambda's
 * error JSON).  If that frame is too big, the plain error is sent. */
void rpc_reply_error_ex(rpc_call_t *call, const char *code, json_t *extra, const void *body,
                        size_t len, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* True while the call's connection is open (a reply would be delivered). */
bool rpc_call_alive(const rpc_call_t *call);
/* The call's connection, or NULL once it closed. */
rpc_conn_t *rpc_call_conn(const rpc_call_t *call);
/* Sets the callback run once if the connection closes before the reply.  If
 * it is already closed nothing is called (check rpc_call_alive). */
void rpc_call_set_cancel_cb(rpc_call_t *call, rpc_cancel_fn cb, void *arg);

/* Sends a notification to the connection's peer.  Returns 0 when queued
 * (delivery is best effort), -1/err if conn is closing or the frame is bad. */
int rpc_conn_notify(rpc_conn_t *conn, const char *method, json_t *params, const void *body,
                    size_t len, err_t *err);
/* Closes the connection now (queued output is dropped); the close callback
 * runs and outstanding calls are cancelled. */
void rpc_conn_close(rpc_conn_t *conn);
/* The peer's address as text ("127.0.0.1:41234", "unix:pid 1234"). */
const char *rpc_conn_peer(const rpc_conn_t *conn);
/* One user pointer per connection (NULL initially). */
void rpc_conn_set_data(rpc_conn_t *conn, void *data);
void *rpc_conn_get_data(const rpc_conn_t *conn);

/* ------------------------------------------------------------------ client */

typedef struct rpc_client rpc_client_t;

/* The outcome of one call.  On success error is NULL, result the response
 * header without "id" (never NULL) and body/len its body.  On failure error
 * is the code (RPC_* above or the peer's), message a text (never NULL),
 * result NULL.  Everything is valid only during the callback. */
typedef struct rpc_result {
    const char *error;
    const char *message;
    json_t *result;
    const void *body;
    size_t len;
    json_t *detail;     /* a peer's error: its whole error object (code, message
                           and any extra members; the body is in body/len); else NULL */
} rpc_result_t;

typedef void (*rpc_result_fn)(const rpc_result_t *r, void *arg);
typedef void (*rpc_client_notify_fn)(rpc_client_t *client, const char *method, json_t *params,
                                     const void *body, size_t len, void *arg);

/* A client for "tcp:HOST:PORT" or "unix:PATH" (HOST is resolved here, once:
 * prefer numeric addresses).  It connects on the first rpc_call,
 * rpc_client_notify or rpc_client_connect, then stays connected: when the
 * connection drops or an attempt fails it retries with exponential backoff
 * (opts), forever, until rpc_client_free.  NULL/err on a bad address. */
rpc_client_t *rpc_client_new(struct event_base *base, const char *addr, const rpc_opts_t *opts,
                             err_t *err);
/* Starts connecting now (otherwise the first call does). */
void rpc_client_connect(rpc_client_t *client);
/* True while a connection is established. */
bool rpc_client_connected(const rpc_client_t *client);
void rpc_client_set_notify_cb(rpc_client_t *client, rpc_client_notify_fn cb, void *arg);

/* Sends a request.  Returns 0: cb will be called exactly once, later from
 * the loop (never from inside rpc_call), with the response, the peer's
 * error, or RPC_TIMEOUT (after timeout_ms; <= 0 means the default),
 * RPC_DISCONNECTED, RPC_UNREACHABLE, RPC_INVALID or RPC_CANCELLED.  A call
 * made while disconnected waits for the next connection attempt and fails
 * with RPC_UNREACHABLE if that attempt fails.  Returns -1 (cb never called)
 * only when the client is being freed.  method: 1-128 chars of
 * [A-Za-z0-9_.:/-]; params: an object without "id"/"m", or NULL. */
int rpc_call(rpc_client_t *client, const char *method, json_t *params, const void *body,
             size_t len, int timeout_ms, rpc_result_fn cb, void *arg);
/* Sends a notification (no reply; best effort: dropped if the connection it
 * was queued for fails).  Returns 0, or -1/err on a bad method/params. */
int rpc_client_notify(rpc_client_t *client, const char *method, json_t *params, const void *body,
                      size_t len, err_t *err);
/* Closes the connection and frees the client.  Every pending call's
 * callback runs with RPC_CANCELLED before this returns (the one exception to
 * "never synchronously"); those callbacks must not use the client.  Safe to
 * call from inside one of the client's own callbacks. */
void rpc_client_free(rpc_client_t *client);
#endif
