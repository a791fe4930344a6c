/* test_rpc.c - the internal RPC: framing, pipelining, notifications,
 * failures (timeout, killed server, nothing listening, restart), hostile
 * frames, abandoned calls, and a throughput benchmark (printed, not
 * asserted).
 *
 * Every test runs its own event_base with a 20 ms ticker so the loop always
 * wakes up; waits are bounded by generous deadlines (20 s) that only guard
 * against hangs - nothing asserts on timing.  Servers that must die
 * abruptly run in forked children (SIGKILL). */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include "check.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"

#define DEADLINE_MS 20000

/* ------------------------------------------------------------ fixture */

static struct event_base *base;
static struct event *ticker;
static char sock_path[108];

static void tick_cb(evutil_socket_t fd, short w, void *a) {}

static void setup(void)
{
    base = event_base_new();
    ticker = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 20000};
    event_add(ticker, &tv);
    snprintf(sock_path, sizeof sock_path, "/tmp/flicker-test-rpc-%d.sock", (int)getpid());
}

static void teardown(void)
{
    event_free(ticker);
    event_base_free(base);
    unlink(sock_path);
}

/* Runs the loop until *counter >= target (or the deadline); returns whether reached. */
static bool run_until(int *counter, int target)
{
    uint64_t end = now_mono_ms() + DEADLINE_MS;
    while (*counter < target && now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return *counter >= target;
}

/* Runs the loop for about ms milliseconds. */
static void run_for(int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
}

static const char *unix_addr(void)
{
    static char a[128];
    snprintf(a, sizeof a, "unix:%s", sock_path);
    return a;
}

/* ------------------------------------------------------------ server side */

typedef struct srv_state {
    rpc_call_t *held[256];   /* calls kept for a later reply */
    int nheld;
    int requests, notifies, closes, cancels;
    rpc_conn_t *sub;         /* a connection that asked for notifications */
    char last_notify[64];
    size_t last_notify_len;
} srv_state_t;

static srv_state_t S;

static void later_cb(evutil_socket_t fd, short w, void *arg)
{
    rpc_call_t *call = arg;
    json_t *r = json_pack("{s:b}", "late", 1);
    rpc_reply(call, r, "later", 5);
    json_decref(r);
}

static void cancel_cb(rpc_call_t *call, void *arg) { S.cancels++; }

/* The first cancelled call of a batch answers the whole batch, including
 * calls whose own cancellation has not run yet. */
static void batch_cancel_cb(rpc_call_t *call, void *arg)
{
    S.cancels++;
    for (int i = 0; i < S.nheld; i++)
        if (S.held[i])
            rpc_reply_error(S.held[i], "Cancelled", "batch abandoned");
    S.nheld = 0;
}

/* Methods: echo (params and body back), hold (keep the call), hold_n
 * (keep; once params.n are held, answer them all in reverse order), later
 * (answer from a timer), fail (error reply), subscribe (notify back). */
static void handler(rpc_call_t *call, const char *method, json_t *params, const void *body,
                    size_t len, void *arg)
{
    S.requests++;
    if (strcmp(method, "echo") == 0) {
        json_t *r = json_pack("{s:O,s:I}", "params", params, "len", (json_int_t)len);
        rpc_reply(call, r, body, len);
        json_decref(r);
    } else if (strcmp(method, "hold") == 0) {
        rpc_call_set_cancel_cb(call, cancel_cb, NULL);
        S.held[S.nheld++] = call;
    } else if (strcmp(method, "hold_batch") == 0) {
        rpc_call_set_cancel_cb(call, batch_cancel_cb, NULL);
        S.held[S.nheld++] = call;
    } else if (strcmp(method, "hold_n") == 0) {
        S.held[S.nheld++] = call;
        int n = (int)json_integer_value(json_object_get(params, "n"));
        if (S.nheld == n) {
            for (int i = n - 1; i >= 0; i--) {
                json_t *r = json_pack("{s:i}", "i", i);
                rpc_reply(S.held[i], r, NULL, 0);
                json_decref(r);
            }
            S.nheld = 0;
        }
    } else if (strcmp(method, "later") == 0) {
        struct timeval tv = {0, 50000};
        event_base_once(base, -1, EV_TIMEOUT, later_cb, call, &tv);
    } else if (strcmp(method, "fail") == 0) {
        rpc_reply_error(call, "Boom", "failed %d", 42);
    } else if (strcmp(method, "fail_ex") == 0) {
        json_t *extra = json_pack("{s:s,s:s}", "log_tail", "t\n", "code", "ignored");
        rpc_reply_error_ex(call, "InitFailed", extra, "e\0b", 3, "failed %d", 43);
        json_decref(extra);
    } else if (strcmp(method, "subscribe") == 0) {
        S.sub = rpc_call_conn(call);
        json_t *p = json_pack("{s:s}", "what", "hello");
        CHECK(rpc_conn_notify(S.sub, "event", p, "n\0b", 3, NULL) == 0);
        json_decref(p);
        rpc_reply(call, NULL, NULL, 0);
    } else {
        rpc_reply_error(call, "UnknownMethod", "no method %s", method);
    }
}

static void srv_notify_cb(rpc_conn_t *conn, const char *method, json_t *params, const void *body,
                          size_t len, void *arg)
{
    S.notifies++;
    snprintf(S.last_notify, sizeof S.last_notify, "%s", method);
    S.last_notify_len = len;
}

static void srv_close_cb(rpc_conn_t *conn, void *arg)
{
    S.closes++;
    if (conn == S.sub)
        S.sub = NULL;
}

static rpc_server_t *server_start(const char *addr)
{
    memset(&S, 0, sizeof S);
    rpc_server_t *srv = rpc_server_new(base, handler, NULL);
    rpc_server_set_notify_cb(srv, srv_notify_cb, NULL);
    rpc_server_set_close_cb(srv, srv_close_cb, NULL);
    err_t err;
    if (rpc_server_listen(srv, addr, &err) < 0) {
        printf("  listen %s: %s\n", addr, err.msg);
        rpc_server_free(srv);
        return NULL;
    }
    return srv;
}

/* ------------------------------------------------------------ client side */

typedef struct res {
    int done;              /* times the callback ran (must end at 1) */
    char error[64];
    char message[256];
    json_t *result;
    json_t *detail;
    void *body;
    size_t len;
    int order;             /* completion order */
} res_t;

static int completions;

static void res_cb(const rpc_result_t *r, void *arg)
{
    res_t *x = arg;
    x->done++;
    x->order = completions++;
    snprintf(x->error, sizeof x->error, "%s", r->error ? r->error : "");
    snprintf(x->message, sizeof x->message, "%s", r->message ? r->message : "");
    if (r->result)
        x->result = json_incref(r->result);
    if (r->detail)
        x->detail = json_incref(r->detail);
    if (r->len) {
        x->body = xmalloc(r->len);
        memcpy(x->body, r->body, r->len);
    }
    x->len = r->len;
}

static void res_clear(res_t *x)
{
    json_decref(x->result);
    json_decref(x->detail);
    free(x->body);
    memset(x, 0, sizeof *x);
}

/* One call, waited for. */
static void call_wait(rpc_client_t *c, const char *method, json_t *params, const void *body,
                      size_t len, int timeout_ms, res_t *x)
{
    memset(x, 0, sizeof *x);
    if (rpc_call(c, method, params, body, len, timeout_ms, res_cb, x) == 0)
        run_until(&x->done, 1);
}

/* ------------------------------------------------------------ tests */

static void round_trip(const char *addr)
{
    rpc_server_t *srv = server_start(addr);
    CHECK(srv);
    char a[128];
    if (strncmp(addr, "tcp:", 4) == 0)
        snprintf(a, sizeof a, "tcp:127.0.0.1:%d", rpc_server_port(srv));
    else
        snprintf(a, sizeof a, "%s", addr);
    rpc_client_t *c = rpc_client_new(base, a, NULL, NULL);
    CHECK(c);
    size_t sizes[] = {0, 7, 1 << 20, RPC_MAX_BODY};
    int ok = 0;
    for (size_t i = 0; i < ARRAY_LEN(sizes); i++) {
        size_t n = sizes[i];
        unsigned char *body = xmalloc(n + 1);
        for (size_t k = 0; k < n; k++)
            body[k] = (unsigned char)(k * 31 + i);   /* includes NUL bytes */
        if (n == 7)
            memcpy(body, "a\0b\0\0c\xff", 7);
        json_t *p = json_pack("{s:s,s:i,s:[i,i]}", "s", "h\"é\n", "k", 5, "l", 1, 2);
        res_t x;
        call_wait(c, "echo", p, body, n, 0, &x);
        json_decref(p);
        if (x.done == 1 && !x.error[0] && x.len == n && (n == 0 || memcmp(x.body, body, n) == 0) &&
            json_integer_value(json_object_get(x.result, "len")) == (json_int_t)n &&
            strcmp(json_string_value(json_object_get(json_object_get(x.result, "params"), "s")),
                   "h\"é\n") == 0 &&
            !json_object_get(json_object_get(x.result, "params"), "m") &&
            !json_object_get(x.result, "id"))
            ok++;
        else
            printf("  size %zu: done=%d error=%s %s len=%zu\n", n, x.done, x.error, x.message, x.len);
        res_clear(&x);
        free(body);
    }
    rpc_client_free(c);
    rpc_server_free(srv);
    CHECK(ok == (int)ARRAY_LEN(sizes));
}

static void test_round_trip_unix(void)
{
    setup();
    round_trip(unix_addr());
    teardown();
}

static void test_round_trip_tcp(void)
{
    setup();
    round_trip("tcp:127.0.0.1:0");
    teardown();
}

static void test_peer_error(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x, y, z;
    call_wait(c, "fail", NULL, NULL, 0, 0, &x);
    call_wait(c, "nosuch", NULL, NULL, 0, 0, &y);
    call_wait(c, "fail_ex", NULL, NULL, 0, 0, &z);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(x.done == 1 && strcmp(x.error, "Boom") == 0 && strcmp(x.message, "failed 42") == 0 && !x.result);
    CHECK(x.detail == NULL || json_object_size(x.detail) == 2);
    CHECK(y.done == 1 && strcmp(y.error, "UnknownMethod") == 0);
    /* rpc_reply_error_ex: extra members and a body */
    CHECK(z.done == 1 && strcmp(z.error, "InitFailed") == 0 && strcmp(z.message, "failed 43") == 0);
    CHECK(!z.result && z.len == 3 && memcmp(z.body, "e\0b", 3) == 0);
    CHECK(strcmp(json_string_value(json_object_get(z.detail, "log_tail")), "t\n") == 0);
    CHECK(strcmp(json_string_value(json_object_get(z.detail, "code")), "InitFailed") == 0);
    res_clear(&x);
    res_clear(&y);
    res_clear(&z);
}

static void test_out_of_order(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    enum { N = 100 };
    static res_t x[N];
    memset(x, 0, sizeof x);
    completions = 0;
    json_t *p = json_pack("{s:i}", "n", N);
    for (int i = 0; i < N; i++)
        CHECK(rpc_call(c, "hold_n", p, NULL, 0, 0, res_cb, &x[i]) == 0);
    json_decref(p);
    run_until(&completions, N);
    int good = 0, reversed = 0;
    for (int i = 0; i < N; i++) {
        if (x[i].done == 1 && !x[i].error[0] &&
            json_integer_value(json_object_get(x[i].result, "i")) == i)
            good++;
        if (x[i].order == N - 1 - i)
            reversed++;
        res_clear(&x[i]);
    }
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(good == N);
    CHECK(reversed == N);   /* answers came back in the order the server sent them */
}

typedef struct notes {
    int n;
    char method[64];
    char what[64];
    size_t len;
    char body[8];
} notes_t;

static void cli_notify_cb(rpc_client_t *c, const char *method, json_t *params, const void *body,
                          size_t len, void *arg)
{
    notes_t *nt = arg;
    nt->n++;
    snprintf(nt->method, sizeof nt->method, "%s", method);
    const char *w = json_string_value(json_object_get(params, "what"));
    snprintf(nt->what, sizeof nt->what, "%s", w ? w : "");
    nt->len = len;
    memcpy(nt->body, body, len < 8 ? len : 8);
}

static void test_notifications_both_ways(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    notes_t nt = {0};
    rpc_client_set_notify_cb(c, cli_notify_cb, &nt);
    /* client -> server */
    json_t *p = json_pack("{s:i}", "load", 3);
    CHECK(rpc_client_notify(c, "heartbeat", p, "xyz", 3, NULL) == 0);
    json_decref(p);
    run_until(&S.notifies, 1);
    /* server -> client: the server notifies from its handler */
    res_t x;
    call_wait(c, "subscribe", NULL, NULL, 0, 0, &x);
    run_until(&nt.n, 1);
    /* and again later, outside any handler */
    bool later_ok = S.sub && rpc_conn_notify(S.sub, "event", NULL, NULL, 0, NULL) == 0;
    run_until(&nt.n, 2);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(S.notifies == 1 && strcmp(S.last_notify, "heartbeat") == 0 && S.last_notify_len == 3);
    CHECK(x.done == 1 && !x.error[0]);
    CHECK(later_ok && nt.n == 2 && strcmp(nt.method, "event") == 0);
    res_clear(&x);
}

static void test_reply_later(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x;
    call_wait(c, "later", NULL, NULL, 0, 0, &x);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(x.done == 1 && !x.error[0] && json_is_true(json_object_get(x.result, "late")));
    CHECK(x.len == 5 && memcmp(x.body, "later", 5) == 0);
    res_clear(&x);
}

static void test_never_synchronous(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t a = {0}, b = {0}, d = {0};
    CHECK(rpc_call(c, "echo", NULL, NULL, 0, 0, res_cb, &a) == 0);
    CHECK(rpc_call(c, "bad method!", NULL, NULL, 0, 0, res_cb, &b) == 0);   /* local error */
    json_t *bad = json_pack("{s:i}", "id", 1);                               /* reserved key */
    CHECK(rpc_call(c, "echo", bad, NULL, 0, 0, res_cb, &d) == 0);
    json_decref(bad);
    CHECK(a.done == 0 && b.done == 0 && d.done == 0);
    run_until(&a.done, 1);
    run_until(&b.done, 1);
    run_until(&d.done, 1);
    run_for(50);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(a.done == 1 && !a.error[0]);
    CHECK(b.done == 1 && strcmp(b.error, RPC_INVALID) == 0);
    CHECK(d.done == 1 && strcmp(d.error, RPC_INVALID) == 0);
    res_clear(&a);
    res_clear(&b);
    res_clear(&d);
}

static void test_oversize_call(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    size_t n = RPC_MAX_FRAME;   /* 8-byte prefix + header push it over */
    char *big = xcalloc(1, n);
    res_t x, y;
    call_wait(c, "echo", NULL, big, n, 0, &x);
    call_wait(c, "echo", NULL, "ok", 2, 0, &y);   /* the client still works */
    free(big);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(x.done == 1 && strcmp(x.error, RPC_INVALID) == 0);
    CHECK(y.done == 1 && !y.error[0] && y.len == 2);
    res_clear(&x);
    res_clear(&y);
}

static void test_timeout(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x, y;
    call_wait(c, "hold", NULL, NULL, 0, 100, &x);
    /* answer the timed-out call now: the late response is ignored */
    int held = S.nheld;
    if (held)
        rpc_reply(S.held[0], NULL, NULL, 0);
    S.nheld = 0;
    call_wait(c, "echo", NULL, "z", 1, 0, &y);
    run_for(50);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    CHECK(held == 1);
    CHECK(x.done == 1 && strcmp(x.error, RPC_TIMEOUT) == 0);
    CHECK(y.done == 1 && !y.error[0]);
    res_clear(&x);
    res_clear(&y);
}

/* A server in a child process: listens on addr, writes its TCP port (or 0)
 * to the pipe, serves until killed.  Its "hold" calls write 'h' to the pipe. */
static int child_pipe = -1;

static void child_handler(rpc_call_t *call, const char *method, json_t *params, const void *body,
                          size_t len, void *arg)
{
    if (strcmp(method, "hold") == 0) {
        char h = 'h';
        if (write(child_pipe, &h, 1) < 0)
            _exit(3);
        return;   /* never answered: the process is killed */
    }
    rpc_reply(call, NULL, body, len);
}

static pid_t spawn_server(const char *addr, int *port, int *pipe_out)
{
    int fds[2];
    if (pipe(fds) < 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        child_pipe = fds[1];
        struct event_base *b = event_base_new();
        rpc_server_t *srv = rpc_server_new(b, child_handler, NULL);
        err_t err;
        int p = -1;
        if (rpc_server_listen(srv, addr, &err) == 0)
            p = rpc_server_port(srv);
        if (write(fds[1], &p, sizeof p) < 0 || p < 0)
            _exit(2);
        event_base_dispatch(b);
        _exit(0);
    }
    close(fds[1]);
    int p = -1;
    if (read(fds[0], &p, sizeof p) != (ssize_t)sizeof p || p < 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(fds[0]);
        return -1;
    }
    if (port)
        *port = p;
    if (pipe_out)
        *pipe_out = fds[0];
    else
        close(fds[0]);
    return pid;
}

typedef struct killer {
    pid_t pid;
    int killed;
} killer_t;

static void kill_on_read(evutil_socket_t fd, short w, void *arg)
{
    killer_t *k = arg;
    char h;
    if (read(fd, &h, 1) == 1 && !k->killed) {
        kill(k->pid, SIGKILL);
        k->killed = 1;
    }
}

static void test_server_killed_mid_call(void)
{
    setup();
    int pfd = -1;
    pid_t pid = spawn_server(unix_addr(), NULL, &pfd);
    CHECK(pid > 0);
    killer_t k = {pid, 0};
    struct event *ev = event_new(base, pfd, EV_READ | EV_PERSIST, kill_on_read, &k);
    event_add(ev, NULL);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x;
    call_wait(c, "hold", NULL, NULL, 0, 15000, &x);
    waitpid(pid, NULL, 0);
    rpc_client_free(c);
    event_free(ev);
    close(pfd);
    teardown();
    CHECK(k.killed == 1);
    CHECK(x.done == 1 && strcmp(x.error, RPC_DISCONNECTED) == 0);
    res_clear(&x);
}

static void test_unreachable(void)
{
    setup();
    /* a unix path with nothing behind it */
    rpc_client_t *c = rpc_client_new(base, "unix:/tmp/flicker-test-rpc-nothing.sock", NULL, NULL);
    res_t x, y;
    call_wait(c, "echo", NULL, NULL, 0, 5000, &x);
    rpc_client_free(c);
    /* a TCP port that was just closed */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sin;
    int port = 0;
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
        getsockname(fd, (struct sockaddr *)&sin, &sl) == 0)
        port = ntohs(sin.sin_port);
    close(fd);
    char a[64];
    snprintf(a, sizeof a, "tcp:127.0.0.1:%d", port);
    c = rpc_client_new(base, a, NULL, NULL);
    call_wait(c, "echo", NULL, NULL, 0, 5000, &y);
    rpc_client_free(c);
    /* bad addresses are refused up front */
    err_t err;
    bool bad = !rpc_client_new(base, "http://x", NULL, &err) && !rpc_client_new(base, "tcp:nope", NULL, NULL);
    teardown();
    CHECK(port > 0);
    CHECK(x.done == 1 && strcmp(x.error, RPC_UNREACHABLE) == 0);
    CHECK(y.done == 1 && strcmp(y.error, RPC_UNREACHABLE) == 0);
    CHECK(bad);
    res_clear(&x);
    res_clear(&y);
}

static void test_reconnect_after_restart(void)
{
    setup();
    int port = 0;
    pid_t pid = spawn_server("tcp:127.0.0.1:0", &port, NULL);
    CHECK(pid > 0);
    char a[64];
    snprintf(a, sizeof a, "tcp:127.0.0.1:%d", port);
    rpc_opts_t o = {.backoff_min_ms = 20, .backoff_max_ms = 200};
    rpc_client_t *c = rpc_client_new(base, a, &o, NULL);
    res_t x, y = {0}, z;
    call_wait(c, "echo", NULL, "1", 1, 5000, &x);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    /* calls now fail (Disconnected or Unreachable) until a server is back */
    call_wait(c, "echo", NULL, "2", 1, 5000, &y);
    snprintf(a, sizeof a, "tcp:127.0.0.1:%d", port);
    pid = spawn_server(a, NULL, NULL);
    int tries = 0;
    memset(&z, 0, sizeof z);
    do {
        res_clear(&z);
        call_wait(c, "echo", NULL, "3", 1, 5000, &z);
        tries++;
        if (z.error[0])
            run_for(50);
    } while (z.error[0] && tries < 200);
    rpc_client_free(c);
    if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    teardown();
    CHECK(x.done == 1 && !x.error[0]);
    CHECK(y.done == 1 && (strcmp(y.error, RPC_DISCONNECTED) == 0 || strcmp(y.error, RPC_UNREACHABLE) == 0));
    CHECK(pid > 0);
    CHECK(z.done == 1 && !z.error[0] && z.len == 1);
    res_clear(&x);
    res_clear(&y);
    res_clear(&z);
}

/* Hostile peers: raw sockets writing bad frames; each must be closed by the
 * server while a well-behaved client keeps being served. */
typedef struct raw {
    int fd;
    int closed;
} raw_t;

static void raw_read_cb(evutil_socket_t fd, short w, void *arg)
{
    raw_t *r = arg;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        r->closed = 1;
}

static int raw_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", sock_path);
    if (connect(fd, (struct sockaddr *)&un, sizeof un) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Frame with an explicit header length claim and payload bytes. */
static size_t mkframe(unsigned char *out, uint32_t hl, uint32_t bl, const char *payload)
{
    put32(out, hl);
    put32(out + 4, bl);
    size_t n = strlen(payload);
    memcpy(out + 8, payload, n);
    return 8 + n;
}

static void test_hostile_frames(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *good = rpc_client_new(base, unix_addr(), NULL, NULL);
    struct {
        const char *name;
        unsigned char bytes[128];
        size_t len;
    } cases[16];
    int nc = 0;
    const char *garbage = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    cases[nc].name = "garbage";
    memcpy(cases[nc].bytes, garbage, strlen(garbage));
    cases[nc++].len = strlen(garbage);
    cases[nc].name = "header claims 1 GiB";
    cases[nc].len = mkframe(cases[nc].bytes, 1u << 30, 0, "{");
    nc++;
    cases[nc].name = "body claims 1 GiB";
    cases[nc].len = mkframe(cases[nc].bytes, 2, 1u << 30, "{}");
    nc++;
    cases[nc].name = "lengths overflow 32 bits";
    cases[nc].len = mkframe(cases[nc].bytes, 0xFFFFFFFFu, 0xFFFFFFFFu, "");
    nc++;
    cases[nc].name = "empty header";
    cases[nc].len = mkframe(cases[nc].bytes, 0, 0, "");
    nc++;
    cases[nc].name = "truncated JSON";
    cases[nc].len = mkframe(cases[nc].bytes, 9, 0, "{\"id\":1,\"");
    nc++;
    cases[nc].name = "JSON not an object";
    cases[nc].len = mkframe(cases[nc].bytes, 5, 0, "[1,2]");
    nc++;
    cases[nc].name = "missing id and m";
    cases[nc].len = mkframe(cases[nc].bytes, 7, 0, "{\"x\":1}");
    nc++;
    cases[nc].name = "string id";
    cases[nc].len = mkframe(cases[nc].bytes, 18, 0, "{\"id\":\"1\",\"m\":\"e\"}");
    nc++;
    cases[nc].name = "non-string method";
    cases[nc].len = mkframe(cases[nc].bytes, 14, 0, "{\"id\":1,\"m\":2}");
    nc++;
    cases[nc].name = "response sent to a server";
    cases[nc].len = mkframe(cases[nc].bytes, 8, 0, "{\"id\":1}");
    nc++;
    int closed = 0, served = 0;
    for (int i = 0; i < nc; i++) {
        int fd = raw_connect();
        if (fd < 0)
            continue;
        raw_t r = {fd, 0};
        struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, raw_read_cb, &r);
        event_add(ev, NULL);
        ssize_t w = send(fd, cases[i].bytes, cases[i].len, MSG_NOSIGNAL);
        (void)w;
        run_until(&r.closed, 1);
        if (r.closed)
            closed++;
        else
            printf("  %s: not closed\n", cases[i].name);
        event_free(ev);
        close(fd);
        res_t x;
        call_wait(good, "echo", NULL, "ok", 2, 5000, &x);
        if (x.done == 1 && !x.error[0])
            served++;
        res_clear(&x);
    }
    /* a valid notification from a raw peer does not close it */
    int fd = raw_connect();
    unsigned char f[64];
    size_t n = mkframe(f, 12, 0, "{\"m\":\"ping\"}");
    ssize_t w = send(fd, f, n, MSG_NOSIGNAL);
    (void)w;
    run_until(&S.notifies, 1);
    raw_t r = {fd, 0};
    struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, raw_read_cb, &r);
    event_add(ev, NULL);
    run_for(50);
    event_free(ev);
    close(fd);
    int closes = S.closes;
    rpc_client_free(good);
    rpc_server_free(srv);
    teardown();
    CHECK(closed == nc);
    CHECK(served == nc);
    CHECK(closes >= nc);
    CHECK(S.notifies == 1 && r.closed == 0);
}

static void test_abandoned_call(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x = {0};
    CHECK(rpc_call(c, "hold", NULL, NULL, 0, 10000, res_cb, &x) == 0);
    run_until(&S.nheld, 1);
    CHECK(S.nheld == 1);
    rpc_call_t *held = S.held[0];
    bool alive_before = rpc_call_alive(held);
    rpc_client_free(c);   /* the client goes away with the call in flight */
    int cancelled_in_free = x.done;
    run_until(&S.cancels, 1);
    run_until(&S.closes, 1);
    bool alive_after = rpc_call_alive(held), conn_gone = rpc_call_conn(held) == NULL;
    /* the handler answers afterwards: dropped, no use-after-free (ASan) */
    json_t *r = json_pack("{s:s}", "too", "late");
    rpc_reply(held, r, "body", 4);
    json_decref(r);
    run_for(20);
    /* same with a call that never set a cancel callback, answered by error */
    c = rpc_client_new(base, unix_addr(), NULL, NULL);
    S.nheld = 0;
    res_t y = {0};
    json_t *p = json_pack("{s:i}", "n", 1000);
    CHECK(rpc_call(c, "hold_n", p, NULL, 0, 10000, res_cb, &y) == 0);
    json_decref(p);
    run_until(&S.nheld, 1);
    rpc_call_t *held2 = S.held[0];
    rpc_client_free(c);
    run_until(&S.closes, 2);
    rpc_reply_error(held2, "Late", "after the peer left");
    /* and a call still outstanding when the server itself is freed */
    c = rpc_client_new(base, unix_addr(), NULL, NULL);
    S.nheld = 0;
    res_t z = {0};
    rpc_call(c, "hold", NULL, NULL, 0, 10000, res_cb, &z);
    run_until(&S.nheld, 1);
    rpc_call_t *held3 = S.held[0];
    rpc_server_free(srv);
    rpc_reply(held3, NULL, NULL, 0);
    run_until(&z.done, 1);
    rpc_client_free(c);
    teardown();
    CHECK(alive_before && !alive_after && conn_gone);
    CHECK(cancelled_in_free == 1 && x.done == 1 && strcmp(x.error, RPC_CANCELLED) == 0);
    CHECK(S.cancels == 1 && S.closes >= 2);
    CHECK(y.done == 1 && strcmp(y.error, RPC_CANCELLED) == 0);
    CHECK(z.done == 1 && strcmp(z.error, RPC_DISCONNECTED) == 0);
}

static void test_cancel_answers_other_calls(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    static res_t x[5];
    memset(x, 0, sizeof x);
    for (int i = 0; i < 5; i++)
        rpc_call(c, "hold_batch", NULL, NULL, 0, 10000, res_cb, &x[i]);
    run_until(&S.nheld, 5);
    int held = S.nheld;
    rpc_client_free(c);
    run_until(&S.closes, 1);
    run_for(20);
    rpc_server_free(srv);
    teardown();
    int cancelled = 0;
    for (int i = 0; i < 5; i++) {
        cancelled += x[i].done == 1 && strcmp(x[i].error, RPC_CANCELLED) == 0;
        res_clear(&x[i]);
    }
    CHECK(held == 5 && cancelled == 5);
    CHECK(S.cancels == 1 && S.nheld == 0);   /* answered calls get no cancel callback */
}

static void test_unix_address_in_use(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_server_t *other = rpc_server_new(base, handler, NULL);
    err_t err;
    int rc = rpc_server_listen(other, unix_addr(), &err);
    rpc_server_free(other);
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x;
    call_wait(c, "echo", NULL, NULL, 0, 5000, &x);
    rpc_client_free(c);
    rpc_server_free(srv);
    /* a stale socket file (no server behind it) is replaced */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", sock_path);
    bool stale = bind(fd, (struct sockaddr *)&un, sizeof un) == 0;
    close(fd);
    srv = server_start(unix_addr());
    bool replaced = srv != NULL;
    rpc_server_free(srv);
    teardown();
    CHECK(rc < 0 && err.code == EADDRINUSE);
    CHECK(x.done == 1 && !x.error[0]);
    CHECK(stale && replaced);
    res_clear(&x);
}

/* A peer that sends requests but never reads the replies: the server stops
 * reading from it once ~2 frames of replies are queued, instead of
 * buffering without bound, and resumes when the peer reads. */
typedef struct pump {
    int fd;
    unsigned char *data;
    size_t len, off, got;
    bool reading;
    struct event *ev;
} pump_t;

static void pump_cb(evutil_socket_t fd, short w, void *arg)
{
    pump_t *p = arg;
    if ((w & EV_WRITE) && p->off < p->len) {
        ssize_t n = send(fd, p->data + p->off, p->len - p->off, MSG_NOSIGNAL);
        if (n > 0)
            p->off += (size_t)n;
    }
    if ((w & EV_READ) && p->reading) {
        char buf[65536];
        ssize_t n;
        while ((n = recv(fd, buf, sizeof buf, 0)) > 0)
            p->got += (size_t)n;
    }
}

static void test_backpressure(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    rpc_opts_t o = {.max_frame = (1u << 20) + 4096};
    rpc_server_set_opts(srv, &o);
    enum { N = 20, BODY = 256 << 10 };
    pump_t p = {0};
    p.len = (size_t)N * (8 + 20 + BODY);
    p.data = xcalloc(1, p.len);
    for (int i = 0; i < N; i++) {
        unsigned char *f = p.data + (size_t)i * (8 + 20 + BODY);
        char h[32];
        snprintf(h, sizeof h, "{\"id\":%d,\"m\":\"echo\"}", 10 + i);   /* 20 bytes */
        put32(f, 20);
        put32(f + 4, BODY);
        memcpy(f + 8, h, 20);
    }
    p.fd = raw_connect();
    CHECK(p.fd >= 0);
    p.ev = event_new(base, p.fd, EV_READ | EV_WRITE | EV_PERSIST, pump_cb, &p);
    event_add(p.ev, NULL);
    run_for(500);
    int paused_at = S.requests;
    /* another client is still served meanwhile */
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x;
    call_wait(c, "echo", NULL, NULL, 0, 5000, &x);
    p.reading = true;
    run_until(&S.requests, N + 1);
    size_t want = (size_t)N * BODY;
    uint64_t end = now_mono_ms() + DEADLINE_MS;
    while (p.got < want && now_mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(p.ev);
    close(p.fd);
    free(p.data);
    rpc_client_free(c);
    rpc_server_free(srv);
    teardown();
    printf("  server paused after %d of %d requests\n", paused_at, N);
    CHECK(paused_at < N);
    CHECK(x.done == 1 && !x.error[0]);
    CHECK(S.requests == N + 1 && p.got >= want);
    res_clear(&x);
}

/* rpc_client_free from inside one of the client's own callbacks, with other
 * calls pending: every callback still runs exactly once. */
static rpc_client_t *free_me;
static void free_in_cb(const rpc_result_t *r, void *arg)
{
    res_cb(r, arg);
    rpc_client_free(free_me);
    free_me = NULL;
}

static void test_free_inside_callback(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    free_me = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t a = {0}, b = {0}, d = {0};
    rpc_call(free_me, "hold", NULL, NULL, 0, 10000, res_cb, &b);
    rpc_call(free_me, "echo", NULL, NULL, 0, 10000, free_in_cb, &a);
    rpc_call(free_me, "hold", NULL, NULL, 0, 10000, res_cb, &d);
    run_until(&a.done, 1);
    run_until(&S.closes, 1);
    for (int i = 0; i < S.nheld; i++)
        rpc_reply(S.held[i], NULL, NULL, 0);
    run_for(20);
    rpc_server_free(srv);
    teardown();
    CHECK(a.done == 1 && !a.error[0]);
    CHECK(b.done == 1 && strcmp(b.error, RPC_CANCELLED) == 0);
    CHECK(d.done == 1 && strcmp(d.error, RPC_CANCELLED) == 0);
    CHECK(free_me == NULL);
    res_clear(&a);
    res_clear(&b);
    res_clear(&d);
}

/* Dead-peer detection: in a child process with its own network namespace,
 * a TCP connection over loopback loses its network (lo taken down: packets
 * go nowhere, like a cut cable - no FIN, no RST).  The client must notice
 * within a few seconds both with a call in flight (-> Disconnected, long
 * before the call's 60 s timeout) and with the connection idle (keepalive).
 * The child reports the two delays; they are printed, and only checked
 * against a loose 20 s bound.  Skipped without CAP_NET_ADMIN. */
static int lo_set(bool up)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr = {0};
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        if (up)
            ifr.ifr_flags |= IFF_UP;
        else
            ifr.ifr_flags &= ~IFF_UP;
        rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
    return rc;
}

static int dead_peer_once(bool in_flight)
{
    if (lo_set(true) < 0)
        return -1;
    rpc_server_t *srv = server_start("tcp:127.0.0.1:0");
    if (!srv)
        return -1;
    char a[64];
    snprintf(a, sizeof a, "tcp:127.0.0.1:%d", rpc_server_port(srv));
    rpc_client_t *c = rpc_client_new(base, a, NULL, NULL);
    res_t x, y = {0};
    call_wait(c, "echo", NULL, NULL, 0, 5000, &x);
    if (x.error[0])
        return -1;
    res_clear(&x);
    if (in_flight)
        rpc_call(c, "hold", NULL, NULL, 0, 60000, res_cb, &y);
    run_for(100);
    if (lo_set(false) < 0)
        return -1;
    uint64_t t0 = now_mono_ms();
    if (in_flight) {
        run_until(&y.done, 1);
        if (y.done != 1 || strcmp(y.error, RPC_DISCONNECTED) != 0)
            return -1;
    } else {
        while (rpc_client_connected(c) && now_mono_ms() - t0 < DEADLINE_MS)
            event_base_loop(base, EVLOOP_ONCE);
        if (rpc_client_connected(c))
            return -1;
    }
    int ms = (int)(now_mono_ms() - t0);
    for (int i = 0; i < S.nheld; i++)
        rpc_reply(S.held[i], NULL, NULL, 0);
    res_clear(&y);
    rpc_client_free(c);
    rpc_server_free(srv);
    return ms;
}

/* Whether this process may make a network namespace (checked in a child). */
static bool can_unshare_net(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(unshare(CLONE_NEWNET) == 0 ? 0 : 1);
    int st = 0;
    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void test_dead_peer_detection(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        int r[2] = {-2, -2};
        if (unshare(CLONE_NEWNET) == 0) {
            setup();
            r[0] = dead_peer_once(true);
            r[1] = dead_peer_once(false);
            teardown();
        }
        if (write(fds[1], r, sizeof r) < 0)
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    int r[2] = {-3, -3};
    ssize_t n = read(fds[0], r, sizeof r);
    close(fds[0]);
    waitpid(pid, NULL, 0);
    CHECK(n == (ssize_t)sizeof r);
    printf("  dead peer noticed after %d ms (call in flight), %d ms (idle connection)\n", r[0], r[1]);
    CHECK(r[0] >= 0 && r[0] < DEADLINE_MS);
    CHECK(r[1] >= 0 && r[1] < DEADLINE_MS);
}

/* ------------------------------------------------------------ benchmark */

typedef struct bench {
    rpc_client_t *c;
    uint64_t end_us;
    int done, inflight, errors;
} bench_t;

static void bench_cb(const rpc_result_t *r, void *arg)
{
    bench_t *b = arg;
    b->done++;
    b->inflight--;
    if (r->error)
        b->errors++;
    if (now_mono_us() < b->end_us) {
        b->inflight++;
        rpc_call(b->c, "echo", NULL, "x", 1, 10000, bench_cb, b);
    }
}

static double bench_run(const char *addr, int depth)
{
    rpc_client_t *c = rpc_client_new(base, addr, NULL, NULL);
    res_t warm;
    call_wait(c, "echo", NULL, NULL, 0, 5000, &warm);
    res_clear(&warm);
    bench_t b = {.c = c};
    uint64_t t0 = now_mono_us();
    b.end_us = t0 + 1000000;
    for (int i = 0; i < depth; i++) {
        b.inflight++;
        rpc_call(c, "echo", NULL, "x", 1, 10000, bench_cb, &b);
    }
    while (b.inflight > 0 && now_mono_us() < b.end_us + 10000000)
        event_base_loop(base, EVLOOP_ONCE);
    double secs = (double)(now_mono_us() - t0) / 1e6;
    rpc_client_free(c);
    return b.errors ? -1 : b.done / secs;
}

static void test_benchmark(void)
{
    setup();
    rpc_server_t *srv = server_start(unix_addr());
    CHECK(srv);
    err_t err;
    CHECK(rpc_server_listen(srv, "tcp:127.0.0.1:0", &err) == 0);
    char tcp[64];
    snprintf(tcp, sizeof tcp, "tcp:127.0.0.1:%d", rpc_server_port(srv));
    double us = bench_run(unix_addr(), 1), u32 = bench_run(unix_addr(), 32);
    double ts = bench_run(tcp, 1), t32 = bench_run(tcp, 32);
    printf("BENCH rpc round trips/s (tiny call, client+server in one thread): "
           "unix seq %.0f, unix 32-in-flight %.0f, tcp seq %.0f, tcp 32-in-flight %.0f\n",
           us, u32, ts, t32);
    rpc_server_free(srv);
    teardown();
    CHECK(us > 0 && u32 > 0 && ts > 0 && t32 > 0);
}

/* ------------------------------------------------------- cluster key */

static const char KEY[] = "0123456789abcdef-test-cluster-key";

/* A raw blocking connection to sock_path (5 s receive timeout). */
static int raw_connect_blocking(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sock_path);
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

static void raw_frame(int fd, const char *hdr, const char *body)
{
    unsigned char p[8];
    put32(p, (uint32_t)strlen(hdr));
    put32(p + 4, (uint32_t)strlen(body));
    if (write(fd, p, 8) < 0 || write(fd, hdr, strlen(hdr)) < 0 || write(fd, body, strlen(body)) < 0) {
    }
}

/* The rpc.auth header for key (the test computes it itself). */
static void auth_hdr(const char *key, const char *nonce, long long t, char *out, size_t n)
{
    char msg[128];
    int m = snprintf(msg, sizeof msg, "flicker-rpc-auth-v1\n%s\n%lld", nonce, t);
    unsigned char md[32];
    unsigned int mdlen = 0;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)msg, (size_t)m, md, &mdlen);
    char mac[65];
    hex_encode(md, 32, mac);
    snprintf(out, n, "{\"m\":\"rpc.auth\",\"nonce\":\"%s\",\"t\":%lld,\"mac\":\"%s\"}", nonce,
             t, mac);
}

/* Sends frames (auth, then an echo request) and says whether the echo was
 * answered (true) or the server closed the connection (false). */
static bool raw_try(const char *auth, bool big_first)
{
    int fd = raw_connect_blocking();
    if (fd < 0)
        return false;
    if (big_first) {
        static char big[8192];
        memset(big, ' ', sizeof big - 1);
        big[0] = '{';
        big[sizeof big - 3] = '}';
        big[sizeof big - 2] = 0;
        raw_frame(fd, big, "");
    }
    if (auth)
        raw_frame(fd, auth, "");
    raw_frame(fd, "{\"id\":7,\"m\":\"echo\"}", "hi");
    unsigned char h[8];
    ssize_t n = recv(fd, h, 8, MSG_WAITALL);
    close(fd);
    return n == 8;
}

/* Servers with a cluster key accept only clients that prove they have it:
 * first frame rpc.auth with a fresh HMAC; wrong keys, replays, stale
 * clocks, a missing auth and big frames before it are refused; a client
 * with the key gets through. */
static void test_cluster_key(void)
{
    setup();
    char path[64];
    snprintf(path, sizeof path, "/tmp/flicker-test-key-%d", (int)getpid());
    FILE *f = fopen(path, "w");
    CHECK(f);
    fprintf(f, "%s\n", KEY);
    fclose(f);
    err_t err = {0};
    chmod(path, 0644);
    CHECK(rpc_load_cluster_key_file(path, &err) == -1 && err.code == EPERM);
    CHECK(rpc_set_cluster_key("short", 5, &err) == -1 && err.code == EINVAL);
    chmod(path, 0600);
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    if (pid == 0) { /* the server: keyed */
        close(fds[0]);
        struct event_base *b = event_base_new();
        rpc_server_t *srv = rpc_server_new(b, child_handler, NULL);
        int ok = rpc_load_cluster_key_file(path, NULL) == 0 &&
                 rpc_server_listen(srv, unix_addr(), NULL) == 0;
        if (write(fds[1], &ok, sizeof ok) < 0 || !ok)
            _exit(2);
        event_base_dispatch(b);
        _exit(0);
    }
    close(fds[1]);
    int ok = 0;
    CHECK(read(fds[0], &ok, sizeof ok) == (ssize_t)sizeof ok && ok);
    close(fds[0]);

    /* this process has no key yet: its client is turned away */
    rpc_client_t *c = rpc_client_new(base, unix_addr(), NULL, NULL);
    res_t x;
    call_wait(c, "echo", NULL, "a", 1, 5000, &x);
    CHECK(x.done == 1 && x.error[0]);
    res_clear(&x);
    rpc_client_free(c);

    long long now = (long long)now_wall_ms();
    char good[256], again[256], wrong[256], stale[256];
    auth_hdr(KEY, "00112233445566778899aabbccddeeff", now, good, sizeof good);
    auth_hdr(KEY, "00112233445566778899aabbccddeeff", now, again, sizeof again);
    auth_hdr("another-key-of-16+bytes", "ffeeddccbbaa99887766554433221100", now, wrong, sizeof wrong);
    auth_hdr(KEY, "0123456789abcdef0123456789abcdef", now - 10 * 60 * 1000, stale, sizeof stale);
    CHECK(!raw_try(NULL, false));          /* no rpc.auth */
    CHECK(raw_try(good, false));           /* the key: answered */
    CHECK(!raw_try(again, false));         /* the same nonce again: a replay */
    CHECK(!raw_try(wrong, false));         /* another key */
    CHECK(!raw_try(stale, false));         /* ten minutes old */
    auth_hdr(KEY, "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf", now, good, sizeof good);
    CHECK(!raw_try(good, true));           /* an 8 KiB frame before the auth */

    /* with the key, rpc clients authenticate themselves */
    CHECK(rpc_load_cluster_key_file(path, &err) == 0);
    c = rpc_client_new(base, unix_addr(), NULL, NULL);
    call_wait(c, "echo", NULL, "b", 1, 5000, &x);
    CHECK(x.done == 1 && !x.error[0] && x.len == 1);
    res_clear(&x);
    call_wait(c, "echo", NULL, "c", 1, 5000, &x); /* the same connection goes on */
    CHECK(x.done == 1 && !x.error[0]);
    res_clear(&x);
    rpc_client_free(c);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    unlink(path);
    teardown();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(getenv("RPC_TEST_LOG") ? LOG_DEBUG : LOG_ERROR);
    RUN(test_round_trip_unix);
    RUN(test_round_trip_tcp);
    RUN(test_peer_error);
    RUN(test_out_of_order);
    RUN(test_notifications_both_ways);
    RUN(test_reply_later);
    RUN(test_never_synchronous);
    RUN(test_oversize_call);
    RUN(test_timeout);
    RUN(test_server_killed_mid_call);
    RUN(test_unreachable);
    RUN(test_reconnect_after_restart);
    RUN(test_hostile_frames);
    RUN(test_abandoned_call);
    RUN(test_free_inside_callback);
    RUN(test_cancel_answers_other_calls);
    RUN(test_unix_address_in_use);
    RUN(test_backpressure);
    if (can_unshare_net())
        RUN(test_dead_peer_detection);
    else
        SKIP(test_dead_peer_detection, "cannot create a network namespace (needs CAP_NET_ADMIN)");
    RUN(test_benchmark);
    RUN(test_cluster_key); /* last: it sets this process's key */
    CHECK_EXIT();
}
