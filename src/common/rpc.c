/* rpc.c - see rpc.h and docs/rpc.md.
 *
 * How: one bufferevent per connection.  Reading: the 8-byte length prefix is
 * peeked first and checked against max_frame before anything else; the read
 * low watermark is then set to the whole frame's size so the callback runs
 * once per complete frame (no per-chunk work for big bodies); the frame is
 * pulled up contiguous, its header parsed by jansson in place and the body
 * handed out as a pointer into the input buffer.  Writing: a frame is
 * formatted straight into the connection's output evbuffer (header JSON
 * via json_dumpb into a stack buffer, with the id/method prefix printed in
 * front of the params' members), so calls made in one loop iteration leave
 * in one write.
 *
 * Reentrancy: user callbacks may close or free the object that is calling
 * them.  Server connections and clients count how deep they are in their
 * own callbacks (depth) and only mark themselves dead there; the last frame
 * on the stack does the actual free.
 *
 * Invariants: a client's pending calls are exactly the entries of its id
 * table, each with its own embedded timer (the timeout, or a deferred local
 * failure); a call leaves the table right before its callback runs, so it
 * completes once.  The client's outq holds frames only while no connection
 * is being attempted (IDLE/BACKOFF); frames of a CONNECTING or UP
 * connection are in that bufferevent's output.  A server call is on its
 * connection's list until answered or the connection closes (then
 * conn == NULL and the reply is dropped). */
#include "common/rpc.h"
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event_struct.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <fcntl.h>
#include "common/log.h"
#include "common/util.h"

#define ROLE "rpc"
#define HDR_STACK 2048  /* headers up to this size are formatted on the stack */

/* --------------------------------------------------------- cluster key */

#define AUTH_MAX_FRAME 4096        /* frames before rpc.auth may be this big */
#define AUTH_WINDOW_MS 60000       /* |t - now| allowed */
#define AUTH_NONCES 4096           /* remembered per server (replays refused) */

static unsigned char g_key[256];
static size_t g_key_len;

int rpc_set_cluster_key(const void *key, size_t len, err_t *err)
{
    if (len < 16 || len > sizeof g_key)
        return err_set(err, EINVAL, "cluster key: %zu bytes (16 to %zu)", len, sizeof g_key);
    memcpy(g_key, key, len);
    g_key_len = len;
    return 0;
}

int rpc_load_cluster_key_file(const char *path, err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, errno, "cluster key %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077)) {
        close(fd);
        return err_set(err, EPERM, "cluster key %s: must be a regular file that only its owner "
                       "may read (chmod 600)", path);
    }
    char buf[sizeof g_key + 64];
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    if (n < 0)
        return err_set(err, errno, "cluster key %s: %s", path, strerror(errno));
    size_t a = 0, b = (size_t)n;
    while (a < b && (buf[a] == ' ' || buf[a] == '\n' || buf[a] == '\r' || buf[a] == '\t'))
        a++;
    while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\n' || buf[b - 1] == '\r' || buf[b - 1] == '\t'))
        b--;
    int rc = rpc_set_cluster_key(buf + a, b - a, err);
    OPENSSL_cleanse(buf, sizeof buf);
    if (rc < 0)
        return err_wrap(err, "cluster key %s", path);
    return 0;
}

static void auth_mac(const char *nonce, long long t_ms, char mac[65])
{
    char msg[128];
    int n = snprintf(msg, sizeof msg, "flicker-rpc-auth-v1\n%s\n%lld", nonce, t_ms);
    unsigned char md[32];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), g_key, (int)g_key_len, (const unsigned char *)msg, (size_t)n, md, &mdlen);
    hex_encode(md, 32, mac);
}

int rpc_auth_fields(char nonce[33], long long *t_ms, char mac[65])
{
    if (!g_key_len)
        return -1;
    unsigned char r[16];
    random_bytes(r, sizeof r);
    hex_encode(r, sizeof r, nonce);
    *t_ms = (long long)now_wall_ms();
    auth_mac(nonce, *t_ms, mac);
    return 0;
}

/* ------------------------------------------------------------- options */

static void opts_fill(rpc_opts_t *o, const rpc_opts_t *in)
{
    if (in)
        *o = *in;
    else
        memset(o, 0, sizeof *o);
    if (!o->max_frame)
        o->max_frame = RPC_MAX_FRAME;
    if (o->max_frame < 64)
        o->max_frame = 64;
    if (o->max_frame > 0xFFFFFFF0u)
        o->max_frame = 0xFFFFFFF0u;
    if (o->default_timeout_ms <= 0)
        o->default_timeout_ms = 30000;
    if (o->connect_timeout_ms <= 0)
        o->connect_timeout_ms = 3000;
    if (o->backoff_min_ms <= 0)
        o->backoff_min_ms = 50;
    if (o->backoff_max_ms < o->backoff_min_ms)
        o->backoff_max_ms = o->backoff_min_ms > 2000 ? o->backoff_min_ms : 2000;
    if (o->dead_peer_ms <= 0)
        o->dead_peer_ms = 3000;
}

/* ----------------------------------------------------------- addresses */

typedef struct rpc_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    int family;
    char text[128];
} rpc_addr_t;

static int addr_parse(const char *s, bool passive, rpc_addr_t *a, err_t *err)
{
    memset(a, 0, sizeof *a);
    if (!s)
        return err_set(err, EINVAL, "no address");
    snprintf(a->text, sizeof a->text, "%s", s);
    if (strncmp(s, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
        const char *p = s + 5;
        size_t n = strlen(p);
        if (n == 0 || n >= sizeof un->sun_path)
            return err_set(err, EINVAL, "%s: unix socket path empty or too long", s);
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, p, n);
        a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
        a->family = AF_UNIX;
        return 0;
    }
    if (strncmp(s, "tcp:", 4) != 0)
        return err_set(err, EINVAL, "%s: address must be tcp:HOST:PORT or unix:PATH", s);
    const char *hp = s + 4, *port, *hend;
    if (*hp == '[') {
        hend = strchr(hp, ']');
        if (!hend || hend[1] != ':')
            return err_set(err, EINVAL, "%s: bad [IPv6]:PORT", s);
        port = hend + 2;
        hp++;
    } else {
        hend = strrchr(hp, ':');
        if (!hend)
            return err_set(err, EINVAL, "%s: missing :PORT", s);
        port = hend + 1;
    }
    char host[256];
    size_t hl = (size_t)(hend - hp);
    if (hl >= sizeof host || !*port)
        return err_set(err, EINVAL, "%s: bad host or port", s);
    memcpy(host, hp, hl);
    host[hl] = 0;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(hl ? host : NULL, port, &hints, &res);
    if (rc != 0 || !res)
        return err_set(err, EINVAL, "%s: cannot resolve: %s", s, gai_strerror(rc));
    memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
    a->len = res->ai_addrlen;
    a->family = res->ai_family;
    freeaddrinfo(res);
    return 0;
}

/* TCP_NODELAY, and keepalive + TCP_USER_TIMEOUT so a vanished peer is
 * noticed within about dead_ms whether or not data is in flight. */
static void sock_tune(int fd, int dead_ms)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return;
    int one = 1;
    int idle = dead_ms / 3000 > 0 ? dead_ms / 3000 : 1, cnt = 2;
    unsigned int ut = (unsigned int)dead_ms;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut);
}

/* -------------------------------------------------------------- framing */

static bool method_ok(const char *m)
{
    size_t n = 0;
    if (!m)
        return false;
    for (; m[n]; n++) {
        char ch = m[n];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == ':' || ch == '/' || ch == '-'))
            return false;
    }
    return n >= 1 && n <= 128;
}

/* Appends one frame to out: header = prefix (an unterminated JSON object
 * such as `{"id":7`) followed by the members of extra (object or NULL),
 * then the body.  Returns 0, or -1 with *why set (nothing appended). */
static int frame_put(struct evbuffer *out, size_t max_frame, const char *prefix, size_t plen,
                     json_t *extra, const void *body, size_t len, const char **why)
{
    char stack[HDR_STACK];
    char *h = stack;
    size_t hl;
    if (plen >= sizeof stack - 2) {
        *why = "header prefix too long";
        return -1;
    }
    memcpy(stack, prefix, plen);
    if (extra && json_object_size(extra) > 0) {
        size_t n = json_dumpb(extra, stack + plen, sizeof stack - plen, JSON_COMPACT);
        if (n == 0) {
            *why = "params/result not serializable";
            return -1;
        }
        if (n > sizeof stack - plen) {
            if (plen + n + 8 + len > max_frame) {
                *why = "frame too large";
                return -1;
            }
            h = xmalloc(plen + n);
            memcpy(h, prefix, plen);
            if (json_dumpb(extra, h + plen, n, JSON_COMPACT) != n) {
                free(h);
                *why = "params/result not serializable";
                return -1;
            }
        }
        h[plen] = ',';   /* replaces extra's opening brace */
        hl = plen + n;
    } else {
        stack[plen] = '}';
        hl = plen + 1;
    }
    if (8 + (uint64_t)hl + len > max_frame) {
        if (h != stack)
            free(h);
        *why = "frame too large";
        return -1;
    }
    uint32_t lens[2] = {htonl((uint32_t)hl), htonl((uint32_t)len)};
    evbuffer_add(out, lens, sizeof lens);
    evbuffer_add(out, h, hl);
    if (len)
        evbuffer_add(out, body, len);
    if (h != stack)
        free(h);
    return 0;
}

static int frame_put_msg(struct evbuffer *out, size_t max_frame, bool with_id, uint64_t id,
                         const char *method, json_t *params, const void *body, size_t len,
                         const char **why)
{
    if (!method_ok(method)) {
        *why = "bad method name";
        return -1;
    }
    if (params && (!json_is_object(params) || json_object_get(params, "id") ||
                   json_object_get(params, "m"))) {
        *why = "params must be an object without \"id\" or \"m\"";
        return -1;
    }
    char prefix[200];
    int n = with_id ? snprintf(prefix, sizeof prefix, "{\"id\":%llu,\"m\":\"%s\"",
                               (unsigned long long)id, method)
                    : snprintf(prefix, sizeof prefix, "{\"m\":\"%s\"", method);
    return frame_put(out, max_frame, prefix, (size_t)n, params, body, len, why);
}

/* A parsed incoming message. */
typedef struct msg {
    json_t *hdr;          /* header without "id" and "m" */
    json_t *mval;         /* the "m" string (kept alive for method) */
    const char *method;   /* NULL for responses */
    json_int_t id;
    bool has_id;
    const void *body;
    size_t len;
    size_t frame_len;     /* bytes to drain */
} msg_t;

enum { FRAME_MORE, FRAME_OK, FRAME_BAD };

/* Looks at the start of in.  FRAME_MORE: *need bytes are required;
 * FRAME_BAD: why (up to 200 chars) says why; FRAME_OK: m is filled and
 * must be released with msg_done (the frame is still in `in`). */
static int frame_get(struct evbuffer *in, size_t max_frame, msg_t *m, size_t *need, char *why)
{
    size_t have = evbuffer_get_length(in);
    memset(m, 0, sizeof *m);
    if (have < 8) {
        *need = 8;
        return FRAME_MORE;
    }
    unsigned char raw[8];
    evbuffer_copyout(in, raw, 8);
    uint32_t hl = (uint32_t)raw[0] << 24 | (uint32_t)raw[1] << 16 | (uint32_t)raw[2] << 8 | raw[3];
    uint32_t bl = (uint32_t)raw[4] << 24 | (uint32_t)raw[5] << 16 | (uint32_t)raw[6] << 8 | raw[7];
    uint64_t total = 8 + (uint64_t)hl + bl;
    if (hl == 0) {
        snprintf(why, 200, "frame with an empty header");
        return FRAME_BAD;
    }
    if (total > max_frame) {
        snprintf(why, 200, "frame of %llu bytes (header %u, body %u) exceeds the %zu-byte limit",
                 (unsigned long long)total, hl, bl, max_frame);
        return FRAME_BAD;
    }
    if (have < total) {
        *need = (size_t)total;
        return FRAME_MORE;
    }
    const unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)total);
    if (!p) {
        snprintf(why, 200, "out of memory for a frame");
        return FRAME_BAD;
    }
    json_error_t je;
    json_t *j = json_loadb((const char *)p + 8, hl, 0, &je);
    if (!j) {
        snprintf(why, 200, "bad JSON header: %s", je.text);
        return FRAME_BAD;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(why, 200, "header is not a JSON object");
        return FRAME_BAD;
    }
    json_t *id = json_object_get(j, "id");
    if (id) {
        if (!json_is_integer(id)) {
            json_decref(j);
            snprintf(why, 200, "\"id\" is not an integer");
            return FRAME_BAD;
        }
        m->id = json_integer_value(id);
        m->has_id = true;
        json_object_del(j, "id");
    }
    json_t *mv = json_object_get(j, "m");
    if (mv) {
        if (!json_is_string(mv)) {
            json_decref(j);
            snprintf(why, 200, "\"m\" is not a string");
            return FRAME_BAD;
        }
        m->mval = json_incref(mv);
        m->method = json_string_value(mv);
        json_object_del(j, "m");
    }
    if (!m->has_id && !m->mval) {
        json_decref(j);
        snprintf(why, 200, "message with neither \"id\" nor \"m\"");
        return FRAME_BAD;
    }
    m->hdr = j;
    m->body = p + 8 + hl;
    m->len = bl;
    m->frame_len = (size_t)total;
    return FRAME_OK;
}

static void msg_done(msg_t *m)
{
    json_decref(m->hdr);
    json_decref(m->mval);
}

/* Sets the read low watermark to need (the callback then runs once the
 * frame is complete), remembering the current value to avoid needless calls. */
static void set_lowmark(struct bufferevent *bev, size_t *cur, size_t need)
{
    if (*cur != need) {
        bufferevent_setwatermark(bev, EV_READ, need, 0);
        *cur = need;
    }
}

/* --------------------------------------------------------------- server */

struct rpc_call {
    rpc_conn_t *conn;          /* NULL once abandoned */
    rpc_call_t *prev, *next;   /* on conn->calls */
    json_int_t id;
    rpc_cancel_fn cancel_cb;
    void *cancel_arg;
};

struct rpc_conn {
    rpc_server_t *srv;
    struct bufferevent *bev;
    rpc_conn_t *prev, *next;
    rpc_call_t *calls;
    int depth;                 /* nesting of our own callbacks */
    bool dead;                 /* closed; freed when depth drops to 0 */
    bool paused;               /* reading stopped: output backlog */
    bool authed;               /* sent a valid rpc.auth (or no cluster key) */
    size_t lowmark;
    void *data;
    char peer[80];
};

typedef struct listener {
    struct evconnlistener *l;
    char *unix_path;
    int port;
    struct listener *next;
} listener_t;

struct rpc_server {
    struct event_base *base;
    rpc_handler_fn handler;
    void *arg;
    rpc_conn_notify_fn notify_cb;
    void *notify_arg;
    rpc_conn_close_fn close_cb;
    void *close_arg;
    rpc_opts_t o;
    listener_t *listeners;
    rpc_conn_t *conns;
    char (*nonces)[33];        /* rpc.auth nonces accepted lately (a ring) */
    int n_nonces, next_nonce;
};

static void conn_process(rpc_conn_t *c);

static void conn_destroy(rpc_conn_t *c)
{
    rpc_server_t *s = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    bufferevent_free(c->bev);
    free(c);
}

/* Detaches every call of c; returns them as a list (linked by next). */
static rpc_call_t *conn_detach_calls(rpc_conn_t *c)
{
    rpc_call_t *list = c->calls;
    for (rpc_call_t *k = list; k; k = k->next)
        k->conn = NULL;
    c->calls = NULL;
    return list;
}

static void conn_close(rpc_conn_t *c, enum log_level lvl, const char *why)
{
    if (c->dead)
        return;
    c->dead = true;
    log_msg(lvl, ROLE, "connection from %s closed: %s", c->peer, why);
    bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    c->depth++;
    /* Pop one call at a time: a cancel callback may answer (free) any of
     * the calls still listed, which unlinks them normally (c is dead, so
     * their replies are dropped). */
    rpc_call_t *k;
    while ((k = c->calls)) {
        c->calls = k->next;
        if (c->calls)
            c->calls->prev = NULL;
        k->prev = k->next = NULL;
        k->conn = NULL;
        if (k->cancel_cb) {
            rpc_cancel_fn cb = k->cancel_cb;
            k->cancel_cb = NULL;
            cb(k, k->cancel_arg);
        }
    }
    if (c->srv->close_cb)
        c->srv->close_cb(c, c->srv->close_arg);
    c->depth--;
    if (c->depth == 0)
        conn_destroy(c);
}

/* A valid, fresh rpc.auth never seen before (remembered if so). */
static bool auth_ok(rpc_server_t *s, json_t *hdr, const char **why)
{
    const char *nonce = json_string_value(json_object_get(hdr, "nonce"));
    const char *mac = json_string_value(json_object_get(hdr, "mac"));
    json_t *t = json_object_get(hdr, "t");
    if (!nonce || strlen(nonce) != 32 || !mac || strlen(mac) != 64 || !json_is_integer(t)) {
        *why = "malformed rpc.auth";
        return false;
    }
    long long t_ms = (long long)json_integer_value(t), now = (long long)now_wall_ms();
    if (t_ms < now - AUTH_WINDOW_MS || t_ms > now + AUTH_WINDOW_MS) {
        *why = "rpc.auth too old or from the future (clocks more than 60 s apart?)";
        return false;
    }
    char want[65];
    auth_mac(nonce, t_ms, want);
    if (CRYPTO_memcmp(want, mac, 64) != 0) {
        *why = "rpc.auth with a wrong key";
        return false;
    }
    for (int i = 0; i < s->n_nonces; i++)
        if (!strcmp(s->nonces[i], nonce)) {
            *why = "rpc.auth replayed (nonce seen before)";
            return false;
        }
    if (!s->nonces)
        s->nonces = xcalloc(AUTH_NONCES, sizeof *s->nonces);
    snprintf(s->nonces[s->next_nonce], 33, "%s", nonce);
    s->next_nonce = (s->next_nonce + 1) % AUTH_NONCES;
    if (s->n_nonces < AUTH_NONCES)
        s->n_nonces++;
    return true;
}

static void conn_dispatch(rpc_conn_t *c, msg_t *m)
{
    rpc_server_t *s = c->srv;
    bool is_auth = m->method && !m->has_id && !strcmp(m->method, "rpc.auth");
    if (!c->authed) {
        const char *why = "the first frame was not rpc.auth (this server wants the cluster key: "
                          "--cluster-key-file)";
        if (is_auth && auth_ok(s, m->hdr, &why)) {
            c->authed = true;
            return;
        }
        conn_close(c, LOG_WARN, why);
        return;
    }
    if (is_auth)
        return; /* a keyed client of a server without a key, or a repeat */
    if (m->method && m->has_id) {
        rpc_call_t *k = xcalloc(1, sizeof *k);
        k->conn = c;
        k->id = m->id;
        k->next = c->calls;
        if (c->calls)
            c->calls->prev = k;
        c->calls = k;
        s->handler(k, m->method, m->hdr, m->body, m->len, s->arg);
    } else if (m->method) {
        if (s->notify_cb)
            s->notify_cb(c, m->method, m->hdr, m->body, m->len, s->notify_arg);
        else
            log_debug(ROLE, "notification %s from %s dropped (no handler)", m->method, c->peer);
    } else {
        conn_close(c, LOG_WARN, "unexpected response frame (id without \"m\") from a client");
    }
}

static void conn_process(rpc_conn_t *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    struct evbuffer *out = bufferevent_get_output(c->bev);
    c->depth++;
    while (!c->dead) {
        /* Backpressure: a peer that sends requests but does not read the
         * replies stops being read (resumed by conn_write_cb). */
        if (evbuffer_get_length(out) > 2 * c->srv->o.max_frame) {
            c->paused = true;
            bufferevent_disable(c->bev, EV_READ);
            break;
        }
        msg_t m;
        size_t need = 8;
        char why[200];
        int r = frame_get(in, c->authed ? c->srv->o.max_frame : AUTH_MAX_FRAME, &m, &need, why);
        if (r == FRAME_MORE) {
            set_lowmark(c->bev, &c->lowmark, need);
            break;
        }
        if (r == FRAME_BAD) {
            conn_close(c, LOG_WARN, why);
            break;
        }
        conn_dispatch(c, &m);
        size_t flen = m.frame_len;
        msg_done(&m);
        if (!c->dead)
            evbuffer_drain(in, flen);
    }
    c->depth--;
    if (c->dead && c->depth == 0)
        conn_destroy(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg) { conn_process(arg); }

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    rpc_conn_t *c = arg;
    if (c->paused && !c->dead && evbuffer_get_length(bufferevent_get_output(bev)) <= c->srv->o.max_frame) {
        c->paused = false;
        bufferevent_enable(bev, EV_READ);
        conn_process(c);   /* frames may already be waiting in the input */
    }
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    rpc_conn_t *c = arg;
    if (what & BEV_EVENT_EOF)
        conn_close(c, LOG_DEBUG, "peer closed");
    else if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
        conn_close(c, LOG_INFO, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    rpc_server_t *s = arg;
    sock_tune(fd, s->o.dead_peer_ms);
    rpc_conn_t *c = xcalloc(1, sizeof *c);
    c->srv = s;
    c->authed = g_key_len == 0;
    if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
        char host[64] = "?";
        const void *ap = sa->sa_family == AF_INET ? (const void *)&((struct sockaddr_in *)sa)->sin_addr
                                                  : (const void *)&((struct sockaddr_in6 *)sa)->sin6_addr;
        int port = ntohs(sa->sa_family == AF_INET ? ((struct sockaddr_in *)sa)->sin_port
                                                  : ((struct sockaddr_in6 *)sa)->sin6_port);
        inet_ntop(sa->sa_family, ap, host, sizeof host);
        snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
    } else {
        struct ucred cr;
        socklen_t cl = sizeof cr;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) == 0)
            snprintf(c->peer, sizeof c->peer, "unix:pid %d", (int)cr.pid);
        else
            snprintf(c->peer, sizeof c->peer, "unix");
    }
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        log_warn(ROLE, "cannot set up connection from %s", c->peer);
        evutil_closesocket(fd);
        free(c);
        return;
    }
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_setwatermark(c->bev, EV_WRITE, s->o.max_frame, 0);
    c->lowmark = 8;
    bufferevent_setwatermark(c->bev, EV_READ, 8, 0);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    log_debug(ROLE, "connection from %s", c->peer);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    log_warn(ROLE, "accept: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

rpc_server_t *rpc_server_new(struct event_base *base, rpc_handler_fn handler, void *arg)
{
    rpc_server_t *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->handler = handler;
    s->arg = arg;
    opts_fill(&s->o, NULL);
    return s;
}

void rpc_server_set_opts(rpc_server_t *s, const rpc_opts_t *opts) { opts_fill(&s->o, opts); }

void rpc_server_set_notify_cb(rpc_server_t *s, rpc_conn_notify_fn cb, void *arg)
{
    s->notify_cb = cb;
    s->notify_arg = arg;
}

void rpc_server_set_close_cb(rpc_server_t *s, rpc_conn_close_fn cb, void *arg)
{
    s->close_cb = cb;
    s->close_arg = arg;
}

int rpc_server_listen(rpc_server_t *s, const char *addr, err_t *err)
{
    rpc_addr_t a;
    if (addr_parse(addr, true, &a, err) < 0)
        return -1;
    char *path = NULL;
    if (a.family == AF_UNIX) {
        path = xstrdup(((struct sockaddr_un *)&a.ss)->sun_path);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            /* replace a stale socket of an earlier run, not a live server's */
            int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
            int live = fd >= 0 && connect(fd, (struct sockaddr *)&a.ss, a.len) == 0;
            if (fd >= 0)
                close(fd);
            if (live) {
                free(path);
                return err_set(err, EADDRINUSE, "listen on %s: a server is already listening", addr);
            }
            unlink(path);
        }
    }
    struct evconnlistener *l = evconnlistener_new_bind(
        s->base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
        512, (struct sockaddr *)&a.ss, (int)a.len);
    if (!l) {
        err_sys(err, "listen on %s", addr);
        free(path);
        return -1;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    listener_t *li = xcalloc(1, sizeof *li);
    li->l = l;
    li->unix_path = path;
    if (a.family != AF_UNIX) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&ss, &sl) == 0)
            li->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                     : ((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    listener_t **tail = &s->listeners;
    while (*tail)
        tail = &(*tail)->next;
    *tail = li;
    log_debug(ROLE, "listening on %s (port %d)", addr, li->port);
    return 0;
}

int rpc_server_port(const rpc_server_t *s)
{
    for (const listener_t *li = s->listeners; li; li = li->next)
        if (li->port)
            return li->port;
    return 0;
}

void rpc_server_free(rpc_server_t *s)
{
    if (!s)
        return;
    while (s->listeners) {
        listener_t *li = s->listeners;
        s->listeners = li->next;
        evconnlistener_free(li->l);
        if (li->unix_path)
            unlink(li->unix_path);
        free(li->unix_path);
        free(li);
    }
    while (s->conns) {
        rpc_conn_t *c = s->conns;
        for (rpc_call_t *k = conn_detach_calls(c), *next; k; k = next) {
            next = k->next;
            k->prev = k->next = NULL;
        }
        conn_destroy(c);
    }
    free(s->nonces);
    free(s);
}

static void call_unlink_free(rpc_call_t *k)
{
    rpc_conn_t *c = k->conn;
    if (c) {
        if (k->prev)
            k->prev->next = k->next;
        else
            c->calls = k->next;
        if (k->next)
            k->next->prev = k->prev;
    }
    free(k);
}

/* extra: more members for the error object (borrowed; "code"/"message"
 * win over its own); body: the reply's body.  If that frame cannot be sent
 * (too big), the plain error is sent instead. */
static void reply_error_now_ex(rpc_call_t *k, const char *code, const char *message,
                               json_t *extra, const void *body, size_t len)
{
    rpc_conn_t *c = k->conn;
    if (c && !c->dead) {
        json_t *eo = json_is_object(extra) ? json_deep_copy(extra) : json_object();
        json_object_set_new(eo, "code", json_string(code));
        json_object_set_new(eo, "message", json_string(message));
        json_t *e = json_pack("{s:o}", "error", eo);
        char prefix[64];
        int n = snprintf(prefix, sizeof prefix, "{\"id\":%lld", (long long)k->id);
        const char *why;
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (!e || frame_put(out, c->srv->o.max_frame, prefix, (size_t)n, e, body, len, &why) < 0) {
            json_t *plain = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
            if (!plain || frame_put(out, c->srv->o.max_frame, prefix, (size_t)n, plain, NULL, 0,
                                    &why) < 0)
                log_warn(ROLE, "cannot send error reply to %s", c->peer);
            json_decref(plain);
        }
        json_decref(e);
    }
    call_unlink_free(k);
}

static void reply_error_now(rpc_call_t *k, const char *code, const char *message)
{
    reply_error_now_ex(k, code, message, NULL, NULL, 0);
}

void rpc_reply(rpc_call_t *k, json_t *result, const void *body, size_t len)
{
    if (!k)
        return;
    rpc_conn_t *c = k->conn;
    if (c && !c->dead) {
        if (result && (!json_is_object(result) || json_object_get(result, "id") ||
                       json_object_get(result, "error"))) {
            reply_error_now(k, "InternalError", "bad reply: result not an object or has id/error");
            return;
        }
        char prefix[64];
        int n = snprintf(prefix, sizeof prefix, "{\"id\":%lld", (long long)k->id);
        const char *why = NULL;
        if (frame_put(bufferevent_get_output(c->bev), c->srv->o.max_frame, prefix, (size_t)n,
                      result, body, len, &why) < 0) {
            log_warn(ROLE, "reply to %s: %s", c->peer, why);
            reply_error_now(k, "ResponseTooLarge", why);
            return;
        }
    }
    call_unlink_free(k);
}

void rpc_reply_error(rpc_call_t *k, const char *code, const char *fmt, ...)
{
    if (!k)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_error_now(k, code ? code : "InternalError", msg);
}

void rpc_reply_error_ex(rpc_call_t *k, const char *code, json_t *extra, const void *body,
                        size_t len, const char *fmt, ...)
{
    if (!k)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    reply_error_now_ex(k, code ? code : "InternalError", msg, extra, body, len);
}

bool rpc_call_alive(const rpc_call_t *k) { return k && k->conn && !k->conn->dead; }
rpc_conn_t *rpc_call_conn(const rpc_call_t *k) { return k && k->conn && !k->conn->dead ? k->conn : NULL; }

void rpc_call_set_cancel_cb(rpc_call_t *k, rpc_cancel_fn cb, void *arg)
{
    if (!k || !k->conn)
        return;
    k->cancel_cb = cb;
    k->cancel_arg = arg;
}

int rpc_conn_notify(rpc_conn_t *c, const char *method, json_t *params, const void *body, size_t len,
                    err_t *err)
{
    if (!c || c->dead)
        return err_set(err, ENOTCONN, "connection closed");
    const char *why;
    if (frame_put_msg(bufferevent_get_output(c->bev), c->srv->o.max_frame, false, 0, method, params,
                      body, len, &why) < 0)
        return err_set(err, EINVAL, "notify %s: %s", method ? method : "?", why);
    return 0;
}

void rpc_conn_close(rpc_conn_t *c)
{
    if (c)
        conn_close(c, LOG_DEBUG, "closed locally");
}

const char *rpc_conn_peer(const rpc_conn_t *c) { return c->peer; }
void rpc_conn_set_data(rpc_conn_t *c, void *data) { c->data = data; }
void *rpc_conn_get_data(const rpc_conn_t *c) { return c->data; }

/* --------------------------------------------------------------- client */

typedef struct pcall {
    struct pcall *hnext;       /* id table chain, or the free list */
    rpc_client_t *cl;
    uint64_t id;
    rpc_result_fn cb;
    void *arg;
    const char *local_err;     /* set: fail with this when ev fires */
    const char *local_msg;
    struct event ev;           /* timeout, or deferred local failure */
} pcall_t;

enum cl_state { CL_IDLE, CL_CONNECTING, CL_UP, CL_BACKOFF };

struct rpc_client {
    struct event_base *base;
    rpc_addr_t addr;
    rpc_opts_t o;
    enum cl_state state;
    struct bufferevent *bev;
    struct evbuffer *outq;      /* frames waiting for a connection attempt */
    struct event *kick;         /* deferred connect */
    struct event *retry;        /* backoff delay */
    struct event *ctimeout;     /* connect timeout */
    int backoff_ms;
    int failures;               /* consecutive failed attempts (for logging) */
    uint64_t next_id;
    pcall_t **tab;              /* pending calls by id (chained) */
    size_t tab_size, npending;
    pcall_t *freelist;
    size_t nfree;
    rpc_client_notify_fn notify_cb;
    void *notify_arg;
    int depth;
    bool freeing;
    size_t lowmark;
};

static void tab_insert(rpc_client_t *c, pcall_t *p)
{
    if (c->npending >= c->tab_size) {
        size_t ns = c->tab_size * 2;
        pcall_t **nt = xcalloc(ns, sizeof *nt);
        for (size_t i = 0; i < c->tab_size; i++)
            for (pcall_t *q = c->tab[i], *n; q; q = n) {
                n = q->hnext;
                q->hnext = nt[q->id & (ns - 1)];
                nt[q->id & (ns - 1)] = q;
            }
        free(c->tab);
        c->tab = nt;
        c->tab_size = ns;
    }
    pcall_t **b = &c->tab[p->id & (c->tab_size - 1)];
    p->hnext = *b;
    *b = p;
    c->npending++;
}

/* Removes and returns the pending call with id, or NULL. */
static pcall_t *tab_take(rpc_client_t *c, uint64_t id)
{
    for (pcall_t **pp = &c->tab[id & (c->tab_size - 1)]; *pp; pp = &(*pp)->hnext)
        if ((*pp)->id == id) {
            pcall_t *p = *pp;
            *pp = p->hnext;
            p->hnext = NULL;
            c->npending--;
            return p;
        }
    return NULL;
}

/* Empties the table; returns its calls as a list (by hnext). */
static pcall_t *tab_take_all(rpc_client_t *c)
{
    pcall_t *list = NULL;
    for (size_t i = 0; i < c->tab_size; i++) {
        while (c->tab[i]) {
            pcall_t *p = c->tab[i];
            c->tab[i] = p->hnext;
            p->hnext = list;
            list = p;
        }
    }
    c->npending = 0;
    return list;
}

static void pcall_release(rpc_client_t *c, pcall_t *p)
{
    if (!c->freeing && c->nfree < 256) {
        p->hnext = c->freelist;
        c->freelist = p;
        c->nfree++;
    } else {
        free(p);
    }
}

/* Completes a call already taken out of the table. */
static void pcall_finish(rpc_client_t *c, pcall_t *p, const rpc_result_t *r)
{
    event_del(&p->ev);
    p->cb(r, p->arg);
    pcall_release(c, p);
}

static void pcall_fail(rpc_client_t *c, pcall_t *p, const char *code, const char *msg)
{
    rpc_result_t r = {.error = code, .message = msg ? msg : ""};
    pcall_finish(c, p, &r);
}

static void client_destroy(rpc_client_t *c)
{
    while (c->freelist) {
        pcall_t *p = c->freelist;
        c->freelist = p->hnext;
        free(p);
    }
    event_free(c->kick);
    event_free(c->retry);
    event_free(c->ctimeout);
    evbuffer_free(c->outq);
    free(c->tab);
    free(c);
}

/* Fails every pending call with code (RPC_CANCELLED instead once the client
 * is being freed).  Calls that never left (deferred local failures) keep
 * their own error. */
static void client_fail_all(rpc_client_t *c, const char *code, const char *msg)
{
    pcall_t *list = tab_take_all(c);
    c->depth++;
    while (list) {
        pcall_t *p = list;
        list = p->hnext;
        p->hnext = NULL;
        if (c->freeing)
            pcall_fail(c, p, RPC_CANCELLED, "client freed");
        else if (p->local_err)
            pcall_fail(c, p, p->local_err, p->local_msg);
        else
            pcall_fail(c, p, code, msg);
    }
    c->depth--;
}

static void client_connect(rpc_client_t *c);

/* The current connection (attempt) failed: drop it, fail its calls, and
 * schedule the next attempt. */
static void client_drop(rpc_client_t *c, const char *why)
{
    bool was_up = c->state == CL_UP;
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    event_del(c->ctimeout);
    if (was_up) {
        log_info(ROLE, "connection to %s lost: %s", c->addr.text, why);
        c->backoff_ms = c->o.backoff_min_ms;
        c->failures = 0;
    } else if (c->failures++ == 0) {
        log_info(ROLE, "cannot connect to %s: %s (retrying)", c->addr.text, why);
    } else {
        log_debug(ROLE, "cannot connect to %s: %s", c->addr.text, why);
    }
    c->state = CL_BACKOFF;
    struct timeval tv = {c->backoff_ms / 1000, (c->backoff_ms % 1000) * 1000};
    event_add(c->retry, &tv);
    if (!was_up) {
        c->backoff_ms *= 2;
        if (c->backoff_ms > c->o.backoff_max_ms)
            c->backoff_ms = c->o.backoff_max_ms;
    }
    char msg[300];
    snprintf(msg, sizeof msg, "%s: %s", c->addr.text, why);
    client_fail_all(c, was_up ? RPC_DISCONNECTED : RPC_UNREACHABLE, msg);
}

static void client_dispatch(rpc_client_t *c, msg_t *m)
{
    if (m->has_id && !m->method) {
        pcall_t *p = m->id >= 0 ? tab_take(c, (uint64_t)m->id) : NULL;
        if (!p) {
            log_debug(ROLE, "response %lld from %s for no pending call (timed out?)",
                      (long long)m->id, c->addr.text);
            return;
        }
        rpc_result_t r = {.result = m->hdr, .body = m->body, .len = m->len};
        json_t *e = json_object_get(m->hdr, "error");
        if (e) {
            const char *code = json_string_value(json_object_get(e, "code"));
            const char *msg = json_string_value(json_object_get(e, "message"));
            r.error = code ? code : "Error";
            r.message = msg ? msg : "";
            r.result = NULL;
            r.detail = e;
        }
        pcall_finish(c, p, &r);
    } else if (m->method && !m->has_id) {
        if (c->notify_cb)
            c->notify_cb(c, m->method, m->hdr, m->body, m->len, c->notify_arg);
        else
            log_debug(ROLE, "notification %s from %s dropped (no handler)", m->method, c->addr.text);
    } else {
        client_drop(c, "request frame from the server (unsupported)");
    }
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    rpc_client_t *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    c->depth++;
    while (!c->freeing && c->bev == bev) {
        msg_t m;
        size_t need = 8;
        char why[200];
        int r = frame_get(in, c->o.max_frame, &m, &need, why);
        if (r == FRAME_MORE) {
            set_lowmark(bev, &c->lowmark, need);
            break;
        }
        if (r == FRAME_BAD) {
            log_warn(ROLE, "from %s: %s", c->addr.text, why);
            client_drop(c, why);
            break;
        }
        client_dispatch(c, &m);
        size_t flen = m.frame_len;
        msg_done(&m);
        if (!c->freeing && c->bev == bev)
            evbuffer_drain(in, flen);
    }
    c->depth--;
    if (c->freeing && c->depth == 0)
        client_destroy(c);
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    rpc_client_t *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        c->state = CL_UP;
        event_del(c->ctimeout);
        c->backoff_ms = c->o.backoff_min_ms;
        if (c->failures)
            log_info(ROLE, "connected to %s", c->addr.text);
        c->failures = 0;
        return;
    }
    const char *why = what & BEV_EVENT_EOF ? "closed by peer"
                      : what & BEV_EVENT_TIMEOUT ? "timeout"
                      : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
    c->depth++;
    client_drop(c, why);
    c->depth--;
    if (c->freeing && c->depth == 0)
        client_destroy(c);
}

static void client_connect(rpc_client_t *c)
{
    c->state = CL_CONNECTING;
    int fd = socket(c->addr.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->depth++;
        client_drop(c, strerror(errno));
        c->depth--;
        return;
    }
    sock_tune(fd, c->o.dead_peer_ms);
    c->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, client_read_cb, NULL, client_event_cb, c);
    c->lowmark = 8;
    bufferevent_setwatermark(c->bev, EV_READ, 8, 0);
    if (g_key_len) { /* the first frame: who we are */
        char nonce[33], mac[65];
        long long t_ms;
        rpc_auth_fields(nonce, &t_ms, mac);
        json_t *a = json_pack("{s:s,s:I,s:s}", "nonce", nonce, "t", (json_int_t)t_ms, "mac", mac);
        const char *why = NULL;
        if (frame_put_msg(bufferevent_get_output(c->bev), c->o.max_frame, false, 0, "rpc.auth", a,
                          NULL, 0, &why) < 0)
            log_error(ROLE, "rpc.auth frame: %s", why);
        json_decref(a);
    }
    evbuffer_add_buffer(bufferevent_get_output(c->bev), c->outq);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    struct timeval tv = {c->o.connect_timeout_ms / 1000, (c->o.connect_timeout_ms % 1000) * 1000};
    event_add(c->ctimeout, &tv);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&c->addr.ss, (int)c->addr.len) < 0) {
        /* failed synchronously (e.g. ENOENT on a unix path); no callback comes */
        char why[128];
        snprintf(why, sizeof why, "%s", strerror(errno));
        c->depth++;
        client_drop(c, why);
        c->depth--;
    }
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    rpc_client_t *c = arg;
    if (c->state == CL_IDLE || c->state == CL_BACKOFF) {
        event_del(c->retry);
        c->depth++;
        client_connect(c);
        c->depth--;
        if (c->freeing && c->depth == 0)
            client_destroy(c);
    }
}

static void ctimeout_cb(evutil_socket_t fd, short what, void *arg)
{
    rpc_client_t *c = arg;
    if (c->state != CL_CONNECTING)
        return;
    c->depth++;
    client_drop(c, "connect timed out");
    c->depth--;
    if (c->freeing && c->depth == 0)
        client_destroy(c);
}

rpc_client_t *rpc_client_new(struct event_base *base, const char *addr, const rpc_opts_t *opts,
                             err_t *err)
{
    rpc_client_t *c = xcalloc(1, sizeof *c);
    if (addr_parse(addr, false, &c->addr, err) < 0) {
        free(c);
        return NULL;
    }
    c->base = base;
    opts_fill(&c->o, opts);
    c->backoff_ms = c->o.backoff_min_ms;
    c->outq = evbuffer_new();
    c->kick = event_new(base, -1, 0, kick_cb, c);
    c->retry = event_new(base, -1, 0, kick_cb, c);
    c->ctimeout = event_new(base, -1, 0, ctimeout_cb, c);
    c->tab_size = 64;
    c->tab = xcalloc(c->tab_size, sizeof *c->tab);
    if (!c->outq || !c->kick || !c->retry || !c->ctimeout) {
        client_destroy(c);
        err_set(err, ENOMEM, "rpc client: out of memory");
        return NULL;
    }
    return c;
}

void rpc_client_connect(rpc_client_t *c)
{
    if (c->state == CL_IDLE && !c->freeing)
        event_active(c->kick, EV_TIMEOUT, 1);
}

bool rpc_client_connected(const rpc_client_t *c) { return c->state == CL_UP; }

void rpc_client_set_notify_cb(rpc_client_t *c, rpc_client_notify_fn cb, void *arg)
{
    c->notify_cb = cb;
    c->notify_arg = arg;
}

/* Where a new frame goes: the connection being attempted/up, or outq. */
static struct evbuffer *client_out(rpc_client_t *c)
{
    return c->bev ? bufferevent_get_output(c->bev) : c->outq;
}

static void pcall_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    pcall_t *p = arg;
    rpc_client_t *c = p->cl;
    if (tab_take(c, p->id) != p)
        return;   /* cannot happen: a finished call's timer is deleted */
    c->depth++;
    if (p->local_err)
        pcall_fail(c, p, p->local_err, p->local_msg);
    else
        pcall_fail(c, p, RPC_TIMEOUT, "no response in time");
    c->depth--;
    if (c->freeing && c->depth == 0)
        client_destroy(c);
}

int rpc_call(rpc_client_t *c, const char *method, json_t *params, const void *body, size_t len,
             int timeout_ms, rpc_result_fn cb, void *arg)
{
    if (!c || c->freeing || !cb)
        return -1;
    pcall_t *p = c->freelist;
    if (p) {
        c->freelist = p->hnext;
        c->nfree--;
    } else {
        p = xmalloc(sizeof *p);
    }
    p->hnext = NULL;
    p->cl = c;
    p->id = ++c->next_id;
    p->cb = cb;
    p->arg = arg;
    p->local_err = p->local_msg = NULL;
    event_assign(&p->ev, c->base, -1, 0, pcall_timer_cb, p);
    tab_insert(c, p);
    const char *why = NULL;
    if (frame_put_msg(client_out(c), c->o.max_frame, true, p->id, method, params, body, len,
                      &why) < 0) {
        p->local_err = RPC_INVALID;
        p->local_msg = why;   /* static strings only */
        event_active(&p->ev, EV_TIMEOUT, 1);
        return 0;
    }
    if (timeout_ms <= 0)
        timeout_ms = c->o.default_timeout_ms;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    event_add(&p->ev, &tv);
    if (c->state == CL_IDLE)
        event_active(c->kick, EV_TIMEOUT, 1);
    return 0;
}

int rpc_client_notify(rpc_client_t *c, const char *method, json_t *params, const void *body,
                      size_t len, err_t *err)
{
    if (!c || c->freeing)
        return err_set(err, EINVAL, "client is being freed");
    const char *why;
    if (frame_put_msg(client_out(c), c->o.max_frame, false, 0, method, params, body, len, &why) < 0)
        return err_set(err, EINVAL, "notify %s: %s", method ? method : "?", why);
    if (c->state == CL_IDLE)
        event_active(c->kick, EV_TIMEOUT, 1);
    return 0;
}

void rpc_client_free(rpc_client_t *c)
{
    if (!c || c->freeing)
        return;
    c->freeing = true;
    c->depth++;
    event_del(c->kick);
    event_del(c->retry);
    event_del(c->ctimeout);
    if (c->bev) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    client_fail_all(c, RPC_CANCELLED, "client freed");
    c->depth--;
    if (c->depth == 0)
        client_destroy(c);
}
