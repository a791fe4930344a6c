/* vmrelay.c - one thread per microVM relaying the agent channel (see
 * vmrelay.h for what is relayed and the memory bounds).
 *
 * How it works: a poll() loop over the channel, the output pipe, QEMU's
 * pidfd and stderr, an eventfd the owner pokes (stop, a posted RESTORE),
 * and every stream's API connection.  Channel input is read 64 KiB at a
 * time into rbuf and fed to the vmproto decoder one frame at a time; each
 * frame is dispatched at once (its bytes are copied into a bounded queue).
 * The channel is polled for input only while rbuf is empty and the bytes
 * waiting for the host are below RELAY_HOST_HIGH, so at most one frame
 * (<= VMPROTO_MAX_PAYLOAD) overshoots the bound.  Streams are polled for
 * input only while the queue towards the guest is below RELAY_GUEST_HIGH.
 *
 * A stream's life (id chosen by the guest):
 *   OPEN -> connected to api_path (or CLOSE sent at once if that fails)
 *   guest CLOSE -> pending bytes flushed, then shutdown(SHUT_WR)
 *   API EOF/error -> CLOSE sent to the guest
 *   both CLOSEs done (and nothing left to write) -> freed.
 *
 * Exit: the first of EXIT, FAULT, a protocol violation, the boot deadline,
 * QEMU's death or the channel's EOF decides the status.  exit_fd is
 * signalled once the logs queued before it reached the pipe (at most
 * EXIT_FLUSH_MS later), so the worker sees the runtime's last words.
 * After QEMU died the channel is drained to EOF first: an EXIT the agent
 * sent just before powering off still counts.
 *
 * Invariants: fields under "shared" are only touched with mu held; the
 * owner never touches the thread's queues; every byte queue is bounded as
 * described; the relay never blocks (all fds non-blocking). */
#include "worker/vmrelay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "worker/vmproto.h"

#define ROLE "microvm"
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

enum {
    READ_CHUNK = 65536,
    EXIT_FLUSH_MS = 300,     /* longest wait for queued logs before exit_fd fires */
    DRAIN_AFTER_DEATH_MS = 1000,
    ERR_TAIL = 1024,
    ERR_LINES_LOGGED = 40,   /* QEMU stderr lines copied to the daemon log per VM */
};

/* A byte queue: data lives at d[off, off+len). */
typedef struct bq {
    uint8_t *d;
    size_t off, len, cap;
} bq_t;

static void bq_push(bq_t *q, const void *p, size_t n)
{
    if (!n)
        return;
    if (q->off && q->off + q->len + n > q->cap) {
        memmove(q->d, q->d + q->off, q->len);
        q->off = 0;
    }
    if (q->len + n > q->cap) {
        size_t c = q->cap ? q->cap : 4096;
        while (c < q->len + n)
            c *= 2;
        q->d = xrealloc(q->d, c);
        q->cap = c;
    }
    memcpy(q->d + q->off + q->len, p, n);
    q->len += n;
}

static void bq_consume(bq_t *q, size_t n)
{
    q->off += n;
    q->len -= n;
    if (!q->len) {
        q->off = 0;
        if (q->cap > (1u << 20)) { /* give back what a burst took */
            free(q->d);
            q->d = NULL;
            q->cap = 0;
        }
    }
}

static void bq_free(bq_t *q)
{
    free(q->d);
    memset(q, 0, sizeof *q);
}

typedef struct stream {
    uint32_t id;
    int fd;             /* connection to the Runtime API, -1 if none */
    bq_t to_api;        /* guest bytes not yet written to fd */
    bool guest_closed;  /* guest sent CLOSE */
    bool host_closed;   /* we sent CLOSE (API EOF/error, or connect failed) */
    bool wr_shut;       /* shutdown(SHUT_WR) done */
} stream_t;

struct vmrelay {
    char *id;
    char *api_path;
    int chan, out_fd, exit_fd, pidfd, err_fd, wake_fd;
    uint8_t *start;
    uint32_t start_len;
    uint64_t t0_us;
    uint64_t boot_deadline_ms; /* 0: none */
    pthread_t th;
    bool started;

    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool exited;           /* exit_fd signalled */
    bool exit_decided;     /* status chosen (maybe still flushing logs) */
    int status, guest_ooms;
    char why[256];
    bool hello, restore_pending, restored;
    uint32_t features;     /* VMPROTO_FEATURE_* of the agent */
    double ready_ms;
    bq_t post;             /* frames the owner posted for the guest */
    bool qemu_reaped;
    int qemu_status;
    char errtail[ERR_TAIL];
    vmrelay_stats_t shared_stats;

    /* relay thread only */
    vmproto_decoder_t dec;
    bool chan_broken;      /* protocol violation: input ignored */
    bool chan_eof;
    bq_t outq;             /* to the guest */
    bq_t logq;             /* to the output pipe */
    size_t host_buffered;  /* logq + every stream's to_api */
    uint8_t *rbuf;
    size_t roff, rlen;
    stream_t *streams[RELAY_MAX_STREAMS];
    int nstreams;
    uint64_t exit_decided_ms;
    uint64_t qemu_dead_ms;
    char errline[256];
    size_t errline_len;
    int err_lines;
    vmrelay_stats_t st;
};

/* ------------------------------------------------------------ helpers */

static double since_ms(uint64_t t0_us) { return (double)(now_mono_us() - t0_us) / 1000.0; }

static void wake(vmrelay_t *r)
{
    uint64_t one = 1;
    ssize_t w = write(r->wake_fd, &one, sizeof one);
    (void)w;
}

static void queue_frame(bq_t *q, uint8_t type, uint32_t stream, const void *p, uint32_t len)
{
    uint8_t h[VMPROTO_HDR];
    vmproto_put_hdr(h, type, stream, len);
    bq_push(q, h, sizeof h);
    bq_push(q, p, len);
}

static void send_frame(vmrelay_t *r, uint8_t type, uint32_t stream, const void *p, uint32_t len)
{
    queue_frame(&r->outq, type, stream, p, len);
    r->st.frames_out++;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* CLOCK with the host's wall clock now (the frame leaves within
 * microseconds: queues are written as soon as the channel takes them). */
static void send_clock(vmrelay_t *r, bq_t *q)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint8_t p[VMPROTO_CLOCK_LEN];
    vmproto_encode_clock(p, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
    queue_frame(q, VM_CLOCK, 0, p, sizeof p);
}

static void log_line(vmrelay_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(vmrelay_t *r, const char *fmt, ...)
{
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof b - 2)
        n = (int)sizeof b - 2;
    b[n++] = '\n';
    bq_push(&r->logq, b, (size_t)n);
    r->host_buffered += (size_t)n;
}

static void kill_qemu(vmrelay_t *r)
{
    if (r->pidfd >= 0)
        syscall(SYS_pidfd_send_signal, r->pidfd, SIGKILL, NULL, 0);
}

/* Chooses the exit status (first caller wins); exit_fd fires once logs
 * are flushed (see maybe_signal_exit). */
static void decide_exit(vmrelay_t *r, int status, int ooms, const char *why)
{
    pthread_mutex_lock(&r->mu);
    if (!r->exit_decided) {
        r->exit_decided = true;
        r->status = status;
        r->guest_ooms = ooms;
        snprintf(r->why, sizeof r->why, "%s", why);
        r->exit_decided_ms = now_mono_ms();
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
}

static void maybe_signal_exit(vmrelay_t *r)
{
    pthread_mutex_lock(&r->mu);
    bool go = r->exit_decided && !r->exited &&
              (r->logq.len == 0 || now_mono_ms() - r->exit_decided_ms >= EXIT_FLUSH_MS);
    if (go) {
        r->exited = true;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    if (go) {
        uint64_t one = 1;
        ssize_t w = write(r->exit_fd, &one, sizeof one);
        (void)w;
    }
}

static void violation(vmrelay_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void violation(vmrelay_t *r, const char *fmt, ...)
{
    char what[200], why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(why, sizeof why, "guest protocol violation: %s", what);
    log_warn(ROLE, "vm %s: %s; killing the VM", r->id, why);
    log_line(r, "flicker: microVM killed: %s", why);
    r->chan_broken = true;
    r->rlen = 0;
    kill_qemu(r);
    decide_exit(r, W_EXITCODE(0, SIGKILL), 0, why);
}

/* ------------------------------------------------------------ streams */

static stream_t *find_stream(vmrelay_t *r, uint32_t id)
{
    for (int i = 0; i < RELAY_MAX_STREAMS; i++)
        if (r->streams[i] && r->streams[i]->id == id)
            return r->streams[i];
    return NULL;
}

static void free_stream(vmrelay_t *r, stream_t *s)
{
    for (int i = 0; i < RELAY_MAX_STREAMS; i++) {
        if (r->streams[i] == s) {
            r->streams[i] = NULL;
            break;
        }
    }
    r->host_buffered -= s->to_api.len;
    if (s->fd >= 0)
        close(s->fd);
    bq_free(&s->to_api);
    free(s);
    r->nstreams--;
}

/* Frees s when both directions are closed and nothing is left to write. */
static void maybe_done(vmrelay_t *r, stream_t *s)
{
    if (s->guest_closed && s->to_api.len == 0 && !s->wr_shut && s->fd >= 0) {
        shutdown(s->fd, SHUT_WR);
        s->wr_shut = true;
    }
    if (s->guest_closed && s->host_closed && s->to_api.len == 0)
        free_stream(r, s);
}

/* The API side is gone or finished: tell the guest (once). */
static void host_close(vmrelay_t *r, stream_t *s)
{
    if (!s->host_closed) {
        s->host_closed = true;
        send_frame(r, VM_CLOSE, s->id, NULL, 0);
    }
}

/* The API connection failed for writing: drop what is pending. */
static void api_dead(vmrelay_t *r, stream_t *s)
{
    r->host_buffered -= s->to_api.len;
    bq_free(&s->to_api);
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    host_close(r, s);
}

static void open_stream(vmrelay_t *r, uint32_t id)
{
    if (id == 0 || find_stream(r, id)) {
        violation(r, "OPEN of stream %u, which is %s", id, id ? "open" : "reserved");
        return;
    }
    if (r->nstreams >= RELAY_MAX_STREAMS) {
        violation(r, "more than %d streams", RELAY_MAX_STREAMS);
        return;
    }
    stream_t *s = xcalloc(1, sizeof *s);
    s->id = id;
    s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", r->api_path);
    if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        log_warn(ROLE, "vm %s: stream %u: cannot reach the Runtime API: %s", r->id, id, strerror(errno));
        if (s->fd >= 0)
            close(s->fd);
        s->fd = -1;
    }
    for (int i = 0; i < RELAY_MAX_STREAMS; i++) {
        if (!r->streams[i]) {
            r->streams[i] = s;
            break;
        }
    }
    r->nstreams++;
    r->st.streams_opened++;
    if (s->fd < 0)
        host_close(r, s);
}

static void flush_stream(vmrelay_t *r, stream_t *s)
{
    while (s->to_api.len && s->fd >= 0) {
        ssize_t w = send(s->fd, s->to_api.d + s->to_api.off, s->to_api.len, MSG_NOSIGNAL);
        if (w > 0) {
            bq_consume(&s->to_api, (size_t)w);
            r->host_buffered -= (size_t)w;
            r->st.bytes_to_api += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        api_dead(r, s);
        return;
    }
}

static void read_stream(vmrelay_t *r, stream_t *s)
{
    uint8_t buf[READ_CHUNK];
    ssize_t n = recv(s->fd, buf, sizeof buf, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        host_close(r, s);
        if (n < 0)
            api_dead(r, s);
        return;
    }
    send_frame(r, VM_DATA, s->id, buf, (uint32_t)n);
    r->st.bytes_from_api += (uint64_t)n;
}

/* ------------------------------------------------------------ frames */

static void on_frame(vmrelay_t *r, const vmproto_frame_t *f)
{
    r->st.frames_in++;
    switch (f->type) {
    case VM_HELLO: {
        pthread_mutex_lock(&r->mu);
        bool dup = r->hello || !r->start;
        pthread_mutex_unlock(&r->mu);
        if (dup) {
            violation(r, "unexpected HELLO");
            return;
        }
        uint32_t ver = f->len >= 4 ? get_u32(f->payload) : 0;
        uint32_t feat = f->len >= 8 ? get_u32(f->payload + 4) : 0;
        if (ver != VMPROTO_VERSION || (f->len != 4 && f->len != 8)) {
            violation(r, "agent speaks protocol version %u (%u bytes of HELLO), the host %u", ver, f->len,
                      VMPROTO_VERSION);
            return;
        }
        if (feat & VMPROTO_FEATURE_CLOCK)
            send_clock(r, &r->outq);
        send_frame(r, VM_START, 0, r->start, r->start_len);
        pthread_mutex_lock(&r->mu);
        r->features = feat;
        r->hello = true;
        r->ready_ms = since_ms(r->t0_us);
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        return;
    }
    case VM_OPEN: {
        pthread_mutex_lock(&r->mu);
        bool ok = r->hello || r->restore_pending || r->restored;
        pthread_mutex_unlock(&r->mu);
        if (!ok) {
            violation(r, "OPEN before START/RESTORE");
            return;
        }
        open_stream(r, f->stream);
        return;
    }
    case VM_DATA: {
        stream_t *s = find_stream(r, f->stream);
        if (!s || s->guest_closed) {
            r->st.ignored_frames++;
            return;
        }
        if (s->fd < 0)
            return; /* API side gone: dropped */
        bq_push(&s->to_api, f->payload, f->len);
        r->host_buffered += f->len;
        flush_stream(r, s);
        return;
    }
    case VM_CLOSE: {
        stream_t *s = find_stream(r, f->stream);
        if (!s || s->guest_closed) {
            r->st.ignored_frames++;
            return;
        }
        s->guest_closed = true;
        maybe_done(r, s);
        return;
    }
    case VM_LOG:
        bq_push(&r->logq, f->payload, f->len);
        r->host_buffered += f->len;
        r->st.log_bytes += f->len;
        return;
    case VM_EXIT: {
        int32_t status;
        uint32_t ooms;
        if (vmproto_decode_exit(f->payload, f->len, &status, &ooms) < 0) {
            violation(r, "malformed EXIT");
            return;
        }
        char why[96];
        if (WIFSIGNALED(status))
            snprintf(why, sizeof why, "runtime killed by signal %d", WTERMSIG(status));
        else
            snprintf(why, sizeof why, "runtime exited with status %d", WEXITSTATUS(status));
        decide_exit(r, status, ooms > 1000000 ? 1000000 : (int)ooms, why);
        return;
    }
    case VM_RESTORED: {
        pthread_mutex_lock(&r->mu);
        bool ok = r->restore_pending && !r->restored;
        if (ok) {
            r->restored = true;
            r->ready_ms = since_ms(r->t0_us);
            pthread_cond_broadcast(&r->cv);
        }
        pthread_mutex_unlock(&r->mu);
        if (!ok)
            violation(r, "RESTORED without RESTORE");
        return;
    }
    case VM_FAULT: {
        char text[200];
        size_t n = f->len < sizeof text - 1 ? f->len : sizeof text - 1;
        for (size_t i = 0; i < n; i++)
            text[i] = f->payload[i] >= 0x20 && f->payload[i] < 0x7f ? (char)f->payload[i] : '?';
        text[n] = 0;
        log_warn(ROLE, "vm %s: agent fault: %s", r->id, text);
        log_line(r, "flicker-agent: %s", text);
        char why[256];
        snprintf(why, sizeof why, "agent fault: %s", text);
        decide_exit(r, W_EXITCODE(1, 0), 0, why);
        return;
    }
    default: /* START, RESTORE: host -> guest only */
        violation(r, "frame type %u is not the guest's to send", f->type);
        return;
    }
}

/* Feeds buffered channel bytes to the decoder while the host side has room. */
static void process_input(vmrelay_t *r)
{
    while (r->rlen && !r->chan_broken && r->host_buffered < RELAY_HOST_HIGH) {
        size_t used = 0;
        vmproto_frame_t f;
        int rc = vmproto_feed(&r->dec, r->rbuf + r->roff, r->rlen, &used, &f);
        r->roff += used;
        r->rlen -= used;
        if (rc < 0) {
            violation(r, "malformed or oversized frame");
            return;
        }
        if (rc == 1)
            on_frame(r, &f);
    }
    if (!r->rlen)
        r->roff = 0;
}

static void read_chan(vmrelay_t *r)
{
    ssize_t n = recv(r->chan, r->rbuf, READ_CHUNK, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        r->chan_eof = true;
        return;
    }
    if (r->chan_broken)
        return; /* after a violation: discard */
    r->roff = 0;
    r->rlen = (size_t)n;
    process_input(r);
}

static void write_chan(vmrelay_t *r)
{
    while (r->outq.len) {
        ssize_t w = send(r->chan, r->outq.d + r->outq.off, r->outq.len, MSG_NOSIGNAL);
        if (w > 0) {
            bq_consume(&r->outq, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        bq_free(&r->outq); /* QEMU is gone; its death is noticed elsewhere */
        r->chan_eof = true;
        return;
    }
}

static void write_logs(vmrelay_t *r)
{
    while (r->logq.len) {
        ssize_t w = write(r->out_fd, r->logq.d + r->logq.off, r->logq.len);
        if (w > 0) {
            bq_consume(&r->logq, (size_t)w);
            r->host_buffered -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return;
        r->host_buffered -= r->logq.len; /* reader gone: drop */
        bq_free(&r->logq);
        return;
    }
}

/* QEMU's stderr: lines to the daemon log (a bounded number) and the tail. */
static void read_stderr(vmrelay_t *r)
{
    char buf[4096];
    ssize_t n = read(r->err_fd, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        close(r->err_fd);
        r->err_fd = -1;
        return;
    }
    pthread_mutex_lock(&r->mu);
    size_t have = strlen(r->errtail), add = (size_t)n;
    if (add >= ERR_TAIL) {
        memcpy(r->errtail, buf + add - (ERR_TAIL - 1), ERR_TAIL - 1);
        r->errtail[ERR_TAIL - 1] = 0;
    } else {
        if (have + add >= ERR_TAIL) {
            size_t drop = have + add - (ERR_TAIL - 1);
            memmove(r->errtail, r->errtail + drop, have - drop + 1);
            have -= drop;
        }
        memcpy(r->errtail + have, buf, add);
        r->errtail[have + add] = 0;
    }
    pthread_mutex_unlock(&r->mu);
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == '\n' || r->errline_len == sizeof r->errline - 1) {
            r->errline[r->errline_len] = 0;
            if (r->errline_len && r->err_lines++ < ERR_LINES_LOGGED)
                log_warn(ROLE, "vm %s: qemu: %s", r->id, r->errline);
            r->errline_len = 0;
            if (buf[i] == '\n')
                continue;
        }
        r->errline[r->errline_len++] = buf[i];
    }
}

/* The pidfd is readable: QEMU has exited.  Reaps it (a failing waitid,
 * e.g. someone else reaped it, still counts as dead: status SIGKILL). */
static void reap_qemu(vmrelay_t *r)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int rc = waitid((idtype_t)P_PIDFD, (id_t)r->pidfd, &si, WEXITED | WNOHANG | __WALL);
    if (rc == 0 && si.si_pid == 0)
        return; /* not yet */
    int st = W_EXITCODE(0, SIGKILL);
    if (rc == 0)
        st = si.si_code == CLD_EXITED ? W_EXITCODE(si.si_status, 0) : W_EXITCODE(0, si.si_status);
    pthread_mutex_lock(&r->mu);
    r->qemu_reaped = true;
    r->qemu_status = st;
    pthread_mutex_unlock(&r->mu);
    r->qemu_dead_ms = now_mono_ms();
}

static void vm_gone(vmrelay_t *r)
{
    char why[160];
    int qs = 0;
    if (vmrelay_qemu_reaped(r, &qs)) {
        if (WIFSIGNALED(qs))
            snprintf(why, sizeof why, "the microVM died (QEMU killed by signal %d)", WTERMSIG(qs));
        else
            snprintf(why, sizeof why, "the microVM stopped (QEMU exit status %d)", WEXITSTATUS(qs));
    } else {
        snprintf(why, sizeof why, "the agent channel closed");
    }
    pthread_mutex_lock(&r->mu);
    bool first = !r->exit_decided;
    pthread_mutex_unlock(&r->mu);
    if (first) {
        log_warn(ROLE, "vm %s: %s", r->id, why);
        log_line(r, "flicker: %s", why);
    }
    decide_exit(r, W_EXITCODE(0, SIGKILL), 0, why);
}

/* ------------------------------------------------------------ thread */

static void publish_stats(vmrelay_t *r)
{
    size_t gb = r->outq.len;
    if (r->host_buffered > r->st.host_buffered_max)
        r->st.host_buffered_max = r->host_buffered;
    if (gb > r->st.guest_buffered_max)
        r->st.guest_buffered_max = gb;
    r->st.host_buffered = r->host_buffered;
    r->st.guest_buffered = gb;
    r->st.streams_open = r->nstreams;
    pthread_mutex_lock(&r->mu);
    r->shared_stats = r->st;
    pthread_mutex_unlock(&r->mu);
}

static void *relay_main(void *arg)
{
    vmrelay_t *r = arg;
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &ss, NULL);

    enum { FIXED = 6 };
    struct pollfd pf[FIXED + RELAY_MAX_STREAMS];
    stream_t *ps[RELAY_MAX_STREAMS];
    uint32_t pid_[RELAY_MAX_STREAMS]; /* ps[i]'s id: ps[i] may be freed meanwhile */
    for (;;) {
        pthread_mutex_lock(&r->mu);
        bool stop = r->stop;
        if (r->post.len) {
            bq_push(&r->outq, r->post.d + r->post.off, r->post.len);
            bq_consume(&r->post, r->post.len);
            r->st.frames_out++;
        }
        bool decided = r->exit_decided;
        pthread_mutex_unlock(&r->mu);
        if (stop)
            break;

        process_input(r);
        write_chan(r);
        write_logs(r);
        maybe_signal_exit(r);
        bool drained = r->chan_eof && !r->rlen;
        if (drained && !decided)
            vm_gone(r);
        if (r->qemu_dead_ms && !drained && !decided &&
            now_mono_ms() - r->qemu_dead_ms > DRAIN_AFTER_DEATH_MS)
            vm_gone(r); /* backpressure kept the channel's tail unread */
        if (r->boot_deadline_ms && now_mono_ms() >= r->boot_deadline_ms) {
            pthread_mutex_lock(&r->mu);
            bool waiting = !r->hello && !r->exit_decided;
            pthread_mutex_unlock(&r->mu);
            r->boot_deadline_ms = 0;
            if (waiting) {
                char why[96];
                snprintf(why, sizeof why, "no HELLO from the guest agent within the boot deadline");
                log_warn(ROLE, "vm %s: %s; killing the VM", r->id, why);
                log_line(r, "flicker: %s", why);
                kill_qemu(r);
                decide_exit(r, W_EXITCODE(0, SIGKILL), 0, why);
            }
        }
        publish_stats(r);

        int n = 0;
        pf[n++] = (struct pollfd){r->wake_fd, POLLIN, 0};
        short ce = 0;
        if (!r->chan_eof && !r->rlen && r->host_buffered < RELAY_HOST_HIGH)
            ce |= POLLIN;
        if (!r->chan_eof && r->outq.len)
            ce |= POLLOUT;
        pf[n++] = (struct pollfd){ce ? r->chan : -1, ce, 0};
        pf[n++] = (struct pollfd){r->logq.len ? r->out_fd : -1, POLLOUT, 0};
        pf[n++] = (struct pollfd){r->pidfd >= 0 && !r->qemu_dead_ms ? r->pidfd : -1, POLLIN, 0};
        pf[n++] = (struct pollfd){r->err_fd, POLLIN, 0};
        pf[n++] = (struct pollfd){-1, 0, 0}; /* spare */
        n = FIXED;
        int ns = 0;
        for (int i = 0; i < RELAY_MAX_STREAMS; i++) {
            stream_t *s = r->streams[i];
            if (!s || s->fd < 0)
                continue;
            short e = 0;
            if (!s->host_closed && r->outq.len < RELAY_GUEST_HIGH)
                e |= POLLIN;
            if (s->to_api.len)
                e |= POLLOUT;
            pid_[ns] = s->id;
            ps[ns++] = s;
            pf[n++] = (struct pollfd){e ? s->fd : -1, e, 0};
        }

        int timeout = -1;
        uint64_t now = now_mono_ms();
        if (r->boot_deadline_ms)
            timeout = (int)(r->boot_deadline_ms > now ? r->boot_deadline_ms - now : 0);
        if (decided && r->logq.len)
            timeout = timeout < 0 || timeout > 20 ? 20 : timeout;
        if (r->qemu_dead_ms && !drained && !decided)
            timeout = timeout < 0 || timeout > 50 ? 50 : timeout;

        int rc = poll(pf, (nfds_t)n, timeout);
        if (rc < 0 && errno != EINTR) {
            log_error(ROLE, "vm %s: relay poll: %s", r->id, strerror(errno));
            usleep(10000);
            continue;
        }
        if (rc <= 0)
            continue;
        if (pf[0].revents) {
            uint64_t v;
            ssize_t rd = read(r->wake_fd, &v, sizeof v);
            (void)rd;
        }
        if (pf[3].revents)
            reap_qemu(r);
        if (pf[4].revents)
            read_stderr(r);
        if (pf[1].revents & POLLOUT)
            write_chan(r);
        if ((pf[1].revents & (POLLIN | POLLHUP | POLLERR)) && !r->chan_eof && !r->rlen &&
            r->host_buffered < RELAY_HOST_HIGH)
            read_chan(r);
        if (pf[2].revents)
            write_logs(r);
        for (int i = 0; i < ns; i++) {
            short re = pf[FIXED + i].revents;
            stream_t *s = find_stream(r, pid_[i]);
            if (!re || s != ps[i]) /* freed (or replaced) since the poll */
                continue;
            if (re & POLLOUT)
                flush_stream(r, s);
            if (s->fd >= 0 && (re & (POLLIN | POLLHUP | POLLERR)) && !s->host_closed)
                read_stream(r, s);
            maybe_done(r, s);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ owner API */

int vmrelay_start(const vmrelay_config_t *c, vmrelay_t **out, err_t *err)
{
    *out = NULL;
    vmrelay_t *r = xcalloc(1, sizeof *r);
    r->id = xstrdup(c->id ? c->id : "?");
    r->api_path = xstrdup(c->api_path ? c->api_path : "");
    r->chan = c->chan_fd;
    r->out_fd = c->out_fd;
    r->exit_fd = c->exit_fd;
    r->pidfd = c->qemu_pidfd;
    r->err_fd = c->stderr_fd;
    r->wake_fd = -1;
    r->rbuf = xmalloc(READ_CHUNK);
    if (c->start) {
        r->start = xmalloc(c->start_len ? c->start_len : 1);
        memcpy(r->start, c->start, c->start_len);
        r->start_len = c->start_len;
    }
    r->t0_us = now_mono_us();
    r->features = c->start ? 0 : c->features;
    if (c->boot_timeout_ms > 0 && c->start)
        r->boot_deadline_ms = now_mono_ms() + (uint64_t)c->boot_timeout_ms;
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    int fds[] = {r->chan, r->out_fd, r->err_fd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->wake_fd < 0) {
        err_sys(err, "eventfd");
        vmrelay_stop(r);
        return -1;
    }
    int e = pthread_create(&r->th, NULL, relay_main, r);
    if (e) {
        errno = e;
        err_sys(err, "relay thread");
        vmrelay_stop(r);
        return -1;
    }
    r->started = true;
    *out = r;
    return 0;
}

static void deadline_ts(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int vmrelay_restore(vmrelay_t *r, const uint8_t *payload, int timeout_ms, err_t *err)
{
    struct timespec ts;
    deadline_ts(&ts, timeout_ms);
    pthread_mutex_lock(&r->mu);
    r->restore_pending = true;
    queue_frame(&r->post, VM_RESTORE, 0, payload, VMPROTO_RESTORE_LEN);
    if (r->features & VMPROTO_FEATURE_CLOCK) /* after RESTORE: it wins over the RTC */
        send_clock(r, &r->post);
    pthread_mutex_unlock(&r->mu);
    wake(r);
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while (!r->restored && !r->exit_decided && rc == 0)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    int out = 0;
    if (r->restored)
        out = 0;
    else if (r->exit_decided)
        out = err_set(err, ECHILD, "the restored VM exited before RESTORED: %s", r->why);
    else
        out = err_set(err, ETIMEDOUT, "no RESTORED from the guest agent within %d ms", timeout_ms);
    pthread_mutex_unlock(&r->mu);
    return out;
}

int vmrelay_wait_hello(vmrelay_t *r, int timeout_ms, err_t *err)
{
    struct timespec ts;
    deadline_ts(&ts, timeout_ms);
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while (!r->hello && !r->exit_decided && rc == 0)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    int out = r->hello ? 1 : r->exit_decided ? -1 : 0;
    if (out < 0)
        err_set(err, ECHILD, "%s", r->why);
    pthread_mutex_unlock(&r->mu);
    return out;
}

bool vmrelay_exited(vmrelay_t *r, int *status, int *guest_ooms, char *why, size_t whylen)
{
    pthread_mutex_lock(&r->mu);
    bool ex = r->exited;
    if (ex) {
        if (status)
            *status = r->status;
        if (guest_ooms)
            *guest_ooms = r->guest_ooms;
        if (why && whylen)
            snprintf(why, whylen, "%s", r->why);
    }
    pthread_mutex_unlock(&r->mu);
    return ex;
}

void vmrelay_fail(vmrelay_t *r, const char *why)
{
    pthread_mutex_lock(&r->mu);
    bool reaped = r->qemu_reaped;
    pthread_mutex_unlock(&r->mu);
    if (!reaped)
        kill_qemu(r);
    decide_exit(r, W_EXITCODE(0, SIGKILL), 0, why);
    wake(r);
}

uint32_t vmrelay_features(vmrelay_t *r)
{
    pthread_mutex_lock(&r->mu);
    uint32_t f = r->features;
    pthread_mutex_unlock(&r->mu);
    return f;
}

bool vmrelay_qemu_reaped(vmrelay_t *r, int *status)
{
    pthread_mutex_lock(&r->mu);
    bool d = r->qemu_reaped;
    if (d && status)
        *status = r->qemu_status;
    pthread_mutex_unlock(&r->mu);
    return d;
}

double vmrelay_ready_ms(vmrelay_t *r)
{
    pthread_mutex_lock(&r->mu);
    double v = r->ready_ms;
    pthread_mutex_unlock(&r->mu);
    return v;
}

void vmrelay_stderr_tail(vmrelay_t *r, char *out, size_t len)
{
    if (!len)
        return;
    pthread_mutex_lock(&r->mu);
    snprintf(out, len, "%s", r->errtail);
    pthread_mutex_unlock(&r->mu);
}

void vmrelay_get_stats(vmrelay_t *r, vmrelay_stats_t *st)
{
    pthread_mutex_lock(&r->mu);
    *st = r->shared_stats;
    pthread_mutex_unlock(&r->mu);
}

void vmrelay_stop(vmrelay_t *r)
{
    if (!r)
        return;
    if (r->started) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_mutex_unlock(&r->mu);
        wake(r);
        pthread_join(r->th, NULL);
    }
    for (int i = 0; i < RELAY_MAX_STREAMS; i++)
        if (r->streams[i])
            free_stream(r, r->streams[i]);
    int fds[] = {r->chan, r->out_fd, r->err_fd, r->wake_fd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    vmproto_reset(&r->dec);
    bq_free(&r->outq);
    bq_free(&r->logq);
    bq_free(&r->post);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->rbuf);
    free(r->start);
    free(r->api_path);
    free(r->id);
    free(r);
}
