/* qmp.c - synchronous QMP client (see qmp.h).
 *
 * Reading: bytes are gathered in one buffer until a '\n'; each complete
 * line is parsed as a JSON object.  A line longer than QMP_MAX_LINE, or one
 * that is not a JSON object, breaks the connection (q->dead): QEMU never
 * sends either, so it means the peer is not QEMU's monitor.
 * Writing: commands are small; they are written with a deadline (the
 * socket is non-blocking, MSG_NOSIGNAL so a dead QEMU gives EPIPE).
 *
 * Invariants: q->len <= QMP_MAX_LINE; once dead, every call fails with EPIPE
 * without touching the socket again. */
#include "worker/qmp.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"

enum { MAX_EVENTS = 16 };

struct qmp {
    int fd;
    bool dead;
    char *buf;   /* unparsed bytes */
    size_t len, cap;
    char *events[MAX_EVENTS]; /* distinct names seen since the last clear */
    int nevents;
};

static int left_ms(uint64_t deadline)
{
    uint64_t now = now_mono_ms();
    return now >= deadline ? 0 : (int)(deadline - now);
}

static void note_event(qmp_t *q, const char *name)
{
    for (int i = 0; i < q->nevents; i++)
        if (!strcmp(q->events[i], name))
            return;
    if (q->nevents < MAX_EVENTS)
        q->events[q->nevents++] = xstrdup(name);
}

bool qmp_saw_event(const qmp_t *q, const char *name)
{
    for (int i = 0; i < q->nevents; i++)
        if (!strcmp(q->events[i], name))
            return true;
    return false;
}

void qmp_clear_events(qmp_t *q)
{
    for (int i = 0; i < q->nevents; i++)
        free(q->events[i]);
    q->nevents = 0;
}

/* Reads the next JSON object from QEMU (events included).  Returns a new
 * reference, or NULL with err. */
static json_t *read_msg(qmp_t *q, uint64_t deadline, err_t *err)
{
    for (;;) {
        char *nl = q->len ? memchr(q->buf, '\n', q->len) : NULL;
        if (nl) {
            size_t line = (size_t)(nl - q->buf);
            json_error_t je;
            json_t *j = json_loadb(q->buf, line, 0, &je);
            memmove(q->buf, nl + 1, q->len - line - 1);
            q->len -= line + 1;
            if (!json_is_object(j)) {
                json_decref(j);
                q->dead = true;
                err_set(err, EPROTO, "qmp: unparsable message from QEMU: %s", je.text);
                return NULL;
            }
            return j;
        }
        if (q->len >= QMP_MAX_LINE) {
            q->dead = true;
            err_set(err, EPROTO, "qmp: line longer than %u bytes", QMP_MAX_LINE);
            return NULL;
        }
        if (q->cap - q->len < 4096) {
            q->cap = q->cap ? q->cap * 2 : 8192;
            if (q->cap > QMP_MAX_LINE + 8192)
                q->cap = QMP_MAX_LINE + 8192;
            q->buf = xrealloc(q->buf, q->cap);
        }
        struct pollfd p = {q->fd, POLLIN, 0};
        int ms = left_ms(deadline);
        if (ms == 0) {
            err_set(err, ETIMEDOUT, "qmp: QEMU did not answer in time");
            return NULL;
        }
        int r = poll(&p, 1, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            err_sys(err, "qmp: poll");
            return NULL;
        }
        if (r == 0)
            continue;
        ssize_t n = recv(q->fd, q->buf + q->len, q->cap - q->len, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) {
            q->dead = true;
            err_set(err, EPIPE, "qmp: QEMU closed the monitor (it exited)");
            return NULL;
        }
        q->len += (size_t)n;
    }
}

static int write_all(qmp_t *q, const char *s, size_t n, uint64_t deadline, err_t *err)
{
    while (n) {
        ssize_t w = send(q->fd, s, n, MSG_NOSIGNAL);
        if (w > 0) {
            s += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {q->fd, POLLOUT, 0};
            int ms = left_ms(deadline);
            if (ms == 0)
                return err_set(err, ETIMEDOUT, "qmp: write timed out");
            poll(&p, 1, ms);
            continue;
        }
        q->dead = true;
        return err_set(err, EPIPE, "qmp: QEMU closed the monitor (it exited)");
    }
    return 0;
}

/* Sends one command (with an optional fd attached) and waits for its reply. */
static int exec_fd(qmp_t *q, const char *cmd, json_t *args, int pass_fd, json_t **ret, int timeout_ms,
                   err_t *err)
{
    if (ret)
        *ret = NULL;
    if (q->dead)
        return err_set(err, EPIPE, "qmp: QEMU closed the monitor (it exited)");
    uint64_t deadline = now_mono_ms() + (uint64_t)timeout_ms;
    json_t *msg = json_pack("{s:s}", "execute", cmd);
    if (args)
        json_object_set(msg, "arguments", args);
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text)
        return err_set(err, ENOMEM, "qmp: cannot encode %s", cmd);
    size_t n = strlen(text);
    int rc = 0;
    size_t off = 0;
    if (pass_fd >= 0) {
        /* The fd rides on the first byte of the command. */
        struct iovec iov = {text, 1};
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } cm;
        memset(&cm, 0, sizeof cm);
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b,
                            .msg_controllen = sizeof cm.b};
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
        ssize_t w;
        do {
            w = sendmsg(q->fd, &mh, MSG_NOSIGNAL);
        } while (w < 0 && errno == EINTR);
        if (w != 1) {
            free(text);
            q->dead = w < 0 && errno == EPIPE;
            return err_sys(err, "qmp: passing an fd to QEMU");
        }
        off = 1;
    }
    rc = write_all(q, text + off, n - off, deadline, err);
    if (rc == 0)
        rc = write_all(q, "\n", 1, deadline, err);
    free(text);
    if (rc < 0)
        return -1;
    for (;;) {
        json_t *m = read_msg(q, deadline, err);
        if (!m)
            return err_wrap(err, "%s", cmd);
        json_t *ev = json_object_get(m, "event");
        if (json_is_string(ev)) {
            note_event(q, json_string_value(ev));
            json_decref(m);
            continue;
        }
        json_t *r = json_object_get(m, "return");
        if (r) {
            if (ret)
                *ret = json_incref(r);
            json_decref(m);
            return 0;
        }
        json_t *e = json_object_get(m, "error");
        if (e) {
            const char *cls = json_string_value(json_object_get(e, "class"));
            const char *desc = json_string_value(json_object_get(e, "desc"));
            err_set(err, EIO, "%s: %s: %s", cmd, cls ? cls : "?", desc ? desc : "?");
            json_decref(m);
            return -1;
        }
        json_decref(m); /* the greeting or something unknown: ignore */
    }
}

int qmp_exec(qmp_t *q, const char *cmd, json_t *args, json_t **ret, int timeout_ms, err_t *err)
{
    return exec_fd(q, cmd, args, -1, ret, timeout_ms, err);
}

int qmp_getfd(qmp_t *q, int fd, const char *name, int timeout_ms, err_t *err)
{
    json_t *args = json_pack("{s:s}", "fdname", name);
    int rc = exec_fd(q, "getfd", args, fd, NULL, timeout_ms, err);
    json_decref(args);
    return rc;
}

int qmp_open(int fd, int timeout_ms, qmp_t **out, err_t *err)
{
    *out = NULL;
    qmp_t *q = xcalloc(1, sizeof *q);
    q->fd = fd;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    uint64_t deadline = now_mono_ms() + (uint64_t)timeout_ms;
    json_t *greet = read_msg(q, deadline, err);
    if (!greet || !json_object_get(greet, "QMP")) {
        if (greet)
            err_set(err, EPROTO, "qmp: no greeting from QEMU");
        json_decref(greet);
        qmp_close(q);
        return err_wrap(err, "qmp handshake");
    }
    json_decref(greet);
    if (qmp_exec(q, "qmp_capabilities", NULL, NULL, left_ms(deadline) + 1, err) < 0) {
        qmp_close(q);
        return -1;
    }
    *out = q;
    return 0;
}

void qmp_close(qmp_t *q)
{
    if (!q)
        return;
    if (q->fd >= 0)
        close(q->fd);
    qmp_clear_events(q);
    free(q->buf);
    free(q);
}
