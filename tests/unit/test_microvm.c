/* test_microvm.c - the microVM backend: its relay against a fake agent, and
 * real QEMU microVMs booting flicker's guest.
 *
 * Relay tests (no QEMU): a socketpair stands in for QEMU's chardev; the test
 * plays the guest agent with vmproto frames (hostile ones too) and checks
 * what reaches the Runtime API socket, the output pipe and exit_fd, and that
 * the relay's buffers stay bounded under floods.
 *
 * VM tests (need root, QEMU and the guest images of `make guest`; they skip
 * with the reason otherwise): a provided runtime whose bootstrap is sh +
 * curl answers events through the worker (worker_env_create with isolation
 * "microvm"): warm reuse across freeze/thaw, a crash, an OOM, a timeout that
 * must leave nothing behind, QEMU killed by SIGKILL; then, driving
 * microvm_isolation directly with a small evhttp Runtime API, a snapshot
 * restored twice (the clones must draw different random numbers and boot
 * ids and both answer), corrupt snapshots (create must fail cleanly), and a
 * Python function.  FLICKER_VM_BENCH=N also prints boot vs restore timings,
 * VM starts per second and QEMU's memory beyond the guest's.
 *
 * Guest images: $FLICKER_GUEST_DIR, else BUILD/guest next to this binary.
 * Timing assertions are generous deadlines only (TCG boots take seconds). */
#include <dirent.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/log.h"
#include "common/util.h"
#include "worker/cgroup.h"
#include "worker/fnlog.h"
#include "worker/isolation.h"
#include "worker/microvm.h"
#include "worker/reaper.h"
#include "worker/vmproto.h"
#include "worker/vmrelay.h"
#include "worker/worker.h"

#define DEADLINE_MS 90000

static char g_tmp[64];
static char g_state[128];
static char g_code[128];
static char g_pycode[128];
static char g_nodecode[128];
static char g_guest_why[700];
static bool g_have_guest;
static int g_seq;

/* ================================================================ fake agent */

typedef struct fake {
    int fd;
    vmproto_decoder_t dec;
    uint8_t buf[65536];
    size_t off, len;
} fake_t;

typedef struct frame {
    uint8_t type;
    uint32_t stream, len;
    uint8_t *data; /* malloc'd copy (NUL-terminated) */
} frame_t;

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 100);
            continue;
        }
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fa_send(fake_t *f, uint8_t type, uint32_t stream, const void *p, uint32_t len)
{
    uint8_t h[VMPROTO_HDR];
    vmproto_put_hdr(h, type, stream, len);
    if (write_all(f->fd, h, sizeof h) < 0)
        return -1;
    return len ? write_all(f->fd, p, len) : 0;
}

/* Next frame from the relay within timeout_ms: 1, 0 (timeout/EOF). */
static int fa_recv(fake_t *f, frame_t *out, int timeout_ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)timeout_ms;
    for (;;) {
        while (f->len) {
            size_t used = 0;
            vmproto_frame_t fr;
            int r = vmproto_feed(&f->dec, f->buf + f->off, f->len, &used, &fr);
            f->off += used;
            f->len -= used;
            if (r < 0)
                return 0;
            if (r == 1) {
                out->type = fr.type;
                out->stream = fr.stream;
                out->len = fr.len;
                out->data = xmalloc(fr.len + 1);
                memcpy(out->data, fr.payload, fr.len);
                out->data[fr.len] = 0;
                return 1;
            }
        }
        uint64_t now = now_mono_ms();
        if (now >= end)
            return 0;
        struct pollfd pf = {f->fd, POLLIN, 0};
        if (poll(&pf, 1, (int)(end - now)) <= 0)
            continue;
        ssize_t n = recv(f->fd, f->buf, sizeof f->buf, MSG_DONTWAIT);
        if (n == 0)
            return 0;
        if (n < 0)
            continue;
        f->off = 0;
        f->len = (size_t)n;
    }
}

/* Skips frames until one of type arrives. */
static int fa_expect(fake_t *f, uint8_t type, frame_t *out, int timeout_ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)timeout_ms;
    while (now_mono_ms() < end) {
        frame_t fr;
        if (!fa_recv(f, &fr, (int)(end - now_mono_ms())))
            return 0;
        if (fr.type == type) {
            *out = fr;
            return 1;
        }
        free(fr.data);
    }
    return 0;
}

typedef struct rt {
    vmrelay_t *r;
    fake_t fk;
    int out_rd, efd, api_ls;
    char api_path[108];
} rt_t;

static char *const T_ARGV[] = {"/var/task/bootstrap", "x y", NULL};
static char *const T_ENVP[] = {"A=1", "B=two words", NULL};

static int rt_start_f(rt_t *t, bool with_start, int boot_ms, uint32_t features);
static int rt_start(rt_t *t, bool with_start, int boot_ms) { return rt_start_f(t, with_start, boot_ms, 0); }

static int rt_start_f(rt_t *t, bool with_start, int boot_ms, uint32_t features)
{
    memset(t, 0, sizeof *t);
    int sv[2], op[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(op, O_CLOEXEC) < 0)
        return -1;
    fcntl(op[0], F_SETFL, O_NONBLOCK);
    t->out_rd = op[0];
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    snprintf(t->api_path, sizeof t->api_path, "%s/api-%d.sock", g_tmp, ++g_seq);
    t->api_ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", t->api_path);
    if (bind(t->api_ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(t->api_ls, 256) < 0)
        return -1;
    uint32_t len = 0;
    uint8_t *start = with_start ? vmproto_encode_start(T_ARGV, T_ENVP, &len) : NULL;
    vmrelay_config_t c = {.id = "t", .chan_fd = sv[0], .out_fd = op[1], .exit_fd = t->efd,
                          .api_path = t->api_path, .qemu_pidfd = -1, .stderr_fd = -1, .start = start,
                          .start_len = len, .boot_timeout_ms = boot_ms, .features = features};
    err_t err;
    int rc = vmrelay_start(&c, &t->r, &err);
    free(start);
    t->fk.fd = sv[1];
    return rc;
}

static void rt_stop(rt_t *t)
{
    vmrelay_stop(t->r);
    close(t->fk.fd);
    vmproto_reset(&t->fk.dec);
    close(t->out_rd);
    close(t->efd);
    close(t->api_ls);
    unlink(t->api_path);
}

static bool wait_readable(int fd, int timeout_ms)
{
    struct pollfd pf = {fd, POLLIN, 0};
    return poll(&pf, 1, timeout_ms) == 1;
}

static size_t read_some(int fd, char *buf, size_t cap, int timeout_ms)
{
    size_t have = 0;
    uint64_t end = now_mono_ms() + (uint64_t)timeout_ms;
    while (have < cap && now_mono_ms() < end) {
        if (!wait_readable(fd, 20))
            continue;
        ssize_t n = read(fd, buf + have, cap - have);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    return have;
}

static void hello(rt_t *t)
{
    uint8_t v[4] = {VMPROTO_VERSION, 0, 0, 0};
    fa_send(&t->fk, VM_HELLO, 0, v, 4);
}

/* ================================================================ relay tests */

static void test_relay_hello_start_stream(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    frame_t f;
    CHECK(fa_recv(&t.fk, &f, 5000) == 1);
    CHECK(f.type == VM_START);
    char **argv, **envp;
    CHECK(vmproto_decode_start(f.data, f.len, &argv, &envp) == 0);
    CHECK_STR(argv[0], "/var/task/bootstrap");
    CHECK_STR(argv[1], "x y");
    CHECK_STR(envp[1], "B=two words");
    vmproto_free_start(argv, envp);
    free(f.data);
    CHECK(vmrelay_ready_ms(t.r) > 0);

    /* A stream: guest bytes reach the API socket, and back. */
    fa_send(&t.fk, VM_OPEN, 1, NULL, 0);
    fa_send(&t.fk, VM_DATA, 1, "GET /next", 9);
    CHECK(wait_readable(t.api_ls, 5000));
    int c = accept4(t.api_ls, NULL, NULL, SOCK_CLOEXEC);
    CHECK(c >= 0);
    char buf[64] = {0};
    CHECK(read_some(c, buf, 9, 5000) == 9);
    CHECK(!memcmp(buf, "GET /next", 9));
    CHECK(write(c, "200 OK", 6) == 6);
    CHECK(fa_expect(&t.fk, VM_DATA, &f, 5000));
    CHECK(f.stream == 1 && f.len == 6 && !memcmp(f.data, "200 OK", 6));
    free(f.data);
    /* The guest closes: the API side sees EOF; then the API side closes. */
    fa_send(&t.fk, VM_CLOSE, 1, NULL, 0);
    CHECK(read(c, buf, sizeof buf) == 0);
    close(c);
    CHECK(fa_expect(&t.fk, VM_CLOSE, &f, 5000));
    CHECK(f.stream == 1);
    free(f.data);
    vmrelay_stats_t st;
    uint64_t end = now_mono_ms() + 3000;
    do {
        usleep(5000);
        vmrelay_get_stats(t.r, &st);
    } while (st.streams_open && now_mono_ms() < end);
    CHECK(st.streams_open == 0 && st.streams_opened == 1);
    CHECK(!vmrelay_exited(t.r, NULL, NULL, NULL, 0));
    rt_stop(&t);
}

static bool violation_for(const void *bytes, size_t n, bool do_hello);

static int64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* An agent announcing VMPROTO_FEATURE_CLOCK gets the host's wall clock
 * right before START; one announcing nothing gets START only. */
static void test_relay_clock_feature(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    uint8_t h8[8] = {VMPROTO_VERSION, 0, 0, 0, VMPROTO_FEATURE_CLOCK, 0, 0, 0};
    int64_t before = realtime_ns();
    fa_send(&t.fk, VM_HELLO, 0, h8, 8);
    frame_t f;
    CHECK(fa_recv(&t.fk, &f, 5000) == 1);
    CHECK(f.type == VM_CLOCK && f.stream == 0);
    int64_t ns = 0;
    CHECK(vmproto_decode_clock(f.data, f.len, &ns) == 0);
    CHECK(ns >= before && ns <= realtime_ns());
    free(f.data);
    CHECK(fa_recv(&t.fk, &f, 5000) == 1);
    CHECK(f.type == VM_START);
    free(f.data);
    CHECK(vmrelay_features(t.r) == VMPROTO_FEATURE_CLOCK);
    rt_stop(&t);

    CHECK(rt_start(&t, true, 0) == 0); /* the original 4-byte HELLO */
    hello(&t);
    CHECK(fa_recv(&t.fk, &f, 5000) == 1);
    CHECK(f.type == VM_START);
    free(f.data);
    CHECK(vmrelay_features(t.r) == 0);
    rt_stop(&t);

    uint8_t h12[12] = {VMPROTO_VERSION};
    uint8_t bad[VMPROTO_HDR + 12];
    vmproto_put_hdr(bad, VM_HELLO, 0, 12);
    memcpy(bad + VMPROTO_HDR, h12, 12);
    CHECK(violation_for(bad, sizeof bad, false));
}

static void test_relay_log_exit(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    for (int i = 0; i < 3; i++)
        fa_send(&t.fk, VM_LOG, 0, "hello\n", 6);
    uint8_t ex[8];
    vmproto_encode_exit(ex, W_EXITCODE(3, 0), 2);
    fa_send(&t.fk, VM_EXIT, 0, ex, 8);
    CHECK(wait_readable(t.efd, 5000));
    char buf[64] = {0};
    CHECK(read_some(t.out_rd, buf, 18, 2000) == 18); /* logs before EXIT are in the pipe */
    CHECK_STR(buf, "hello\nhello\nhello\n");
    int st = 0, oom = 0;
    char why[128];
    CHECK(vmrelay_exited(t.r, &st, &oom, why, sizeof why));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 3);
    CHECK(oom == 2);
    CHECK(strstr(why, "status 3"));
    rt_stop(&t);
}

/* Sends raw bytes as the guest and expects the relay to call it a
 * protocol violation. */
static bool violation_for(const void *bytes, size_t n, bool do_hello)
{
    rt_t t;
    if (rt_start(&t, true, 0) < 0)
        return false;
    if (do_hello)
        hello(&t);
    write_all(t.fk.fd, bytes, n);
    bool fired = wait_readable(t.efd, 5000);
    char why[256] = "";
    int st = 0;
    bool ex = vmrelay_exited(t.r, &st, NULL, why, sizeof why);
    char out[512] = {0};
    read_some(t.out_rd, out, sizeof out - 1, 300);
    bool ok = fired && ex && strstr(why, "protocol violation") && WIFSIGNALED(st) &&
              strstr(out, "microVM killed");
    if (!ok)
        printf("  why=%s out=%s\n", why, out);
    rt_stop(&t);
    return ok;
}

static void test_relay_malformed(void)
{
    uint8_t h[VMPROTO_HDR];
    vmproto_put_hdr(h, 99, 0, 0); /* unknown type */
    CHECK(violation_for(h, sizeof h, true));
    vmproto_put_hdr(h, VM_LOG, 0, 0);
    h[1] = 1; /* flags must be 0 */
    CHECK(violation_for(h, sizeof h, true));
    vmproto_put_hdr(h, VM_DATA, 1, VMPROTO_MAX_PAYLOAD + 1); /* oversized */
    CHECK(violation_for(h, sizeof h, true));
    vmproto_put_hdr(h, VM_START, 0, 0); /* host -> guest only */
    CHECK(violation_for(h, sizeof h, true));
    vmproto_put_hdr(h, VM_OPEN, 1, 0); /* before HELLO */
    CHECK(violation_for(h, sizeof h, false));
    uint8_t two[2 * VMPROTO_HDR + 8];
    vmproto_put_hdr(two, VM_HELLO, 0, 4);
    memset(two + VMPROTO_HDR, 0, 4);
    two[VMPROTO_HDR] = VMPROTO_VERSION;
    memcpy(two + VMPROTO_HDR + 4, two, VMPROTO_HDR + 4); /* HELLO twice */
    CHECK(violation_for(two, sizeof two, false));
    uint8_t badver[VMPROTO_HDR + 4];
    vmproto_put_hdr(badver, VM_HELLO, 0, 4);
    memset(badver + VMPROTO_HDR, 0x7f, 4);
    CHECK(violation_for(badver, sizeof badver, false));
    uint8_t badexit[VMPROTO_HDR + 3];
    vmproto_put_hdr(badexit, VM_EXIT, 0, 3);
    memset(badexit + VMPROTO_HDR, 0, 3);
    CHECK(violation_for(badexit, sizeof badexit, true));
    uint8_t restored[VMPROTO_HDR];
    vmproto_put_hdr(restored, VM_RESTORED, 0, 0); /* never asked */
    CHECK(violation_for(restored, sizeof restored, true));
}

static void test_relay_fault(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    fa_send(&t.fk, VM_FAULT, 0, "mount /dev/vdb: \x01 no", 21);
    CHECK(wait_readable(t.efd, 5000));
    int st = 0;
    char why[200];
    CHECK(vmrelay_exited(t.r, &st, NULL, why, sizeof why));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    CHECK(strstr(why, "agent fault: mount /dev/vdb: ? no"));
    char out[256] = {0};
    read_some(t.out_rd, out, sizeof out - 1, 300);
    CHECK(strstr(out, "flicker-agent: mount /dev/vdb"));
    rt_stop(&t);
}

static void test_relay_unknown_stream_ignored(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    fa_send(&t.fk, VM_DATA, 42, "zz", 2);
    fa_send(&t.fk, VM_CLOSE, 43, NULL, 0);
    fa_send(&t.fk, VM_LOG, 0, "x", 1);
    char c;
    CHECK(read_some(t.out_rd, &c, 1, 3000) == 1);
    vmrelay_stats_t st;
    uint64_t end = now_mono_ms() + 2000; /* stats are published once per loop */
    do {
        vmrelay_get_stats(t.r, &st);
    } while (st.ignored_frames != 2 && now_mono_ms() < end && usleep(2000) == 0);
    CHECK(st.ignored_frames == 2);
    CHECK(!vmrelay_exited(t.r, NULL, NULL, NULL, 0));
    rt_stop(&t);
}

static void test_relay_streams_limit(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    for (uint32_t i = 1; i <= RELAY_MAX_STREAMS; i++)
        fa_send(&t.fk, VM_OPEN, i, NULL, 0);
    fa_send(&t.fk, VM_LOG, 0, "x", 1);
    char c;
    CHECK(read_some(t.out_rd, &c, 1, 3000) == 1);
    CHECK(!vmrelay_exited(t.r, NULL, NULL, NULL, 0));
    fa_send(&t.fk, VM_OPEN, RELAY_MAX_STREAMS + 1, NULL, 0); /* one too many */
    CHECK(wait_readable(t.efd, 5000));
    char why[200];
    CHECK(vmrelay_exited(t.r, NULL, NULL, why, sizeof why));
    CHECK(strstr(why, "streams"));
    rt_stop(&t);
}

static void test_relay_boot_timeout(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 300) == 0);
    uint64_t t0 = now_mono_ms();
    CHECK(wait_readable(t.efd, 5000));
    CHECK(now_mono_ms() - t0 >= 250);
    char why[200];
    int st = 0;
    CHECK(vmrelay_exited(t.r, &st, NULL, why, sizeof why));
    CHECK(strstr(why, "no HELLO"));
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    rt_stop(&t);
}

static void test_relay_channel_closed(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    fa_send(&t.fk, VM_LOG, 0, "last words\n", 11);
    shutdown(t.fk.fd, SHUT_RDWR);
    CHECK(wait_readable(t.efd, 5000));
    char out[64] = {0};
    read_some(t.out_rd, out, sizeof out - 1, 300);
    CHECK(!strncmp(out, "last words\n", 11));
    char why[200];
    CHECK(vmrelay_exited(t.r, NULL, NULL, why, sizeof why));
    CHECK(strstr(why, "channel closed"));
    rt_stop(&t);
}

/* A guest writing as fast as it can while the host reads nothing: the
 * relay must stop reading (the guest's writes block), then deliver
 * everything in order once the host reads. */
typedef struct flood {
    fake_t *fk;
    uint8_t type;
    uint32_t stream;
    size_t total;
    _Atomic size_t sent;
} flood_t;

static void *flood_main(void *arg)
{
    flood_t *fl = arg;
    static uint8_t chunk[VMPROTO_MAX_PAYLOAD];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (uint8_t)i;
    while (fl->sent < fl->total) {
        size_t n = fl->total - fl->sent < sizeof chunk ? fl->total - fl->sent : sizeof chunk;
        if (fa_send(fl->fk, fl->type, fl->stream, chunk, (uint32_t)n) < 0)
            break;
        fl->sent += n;
    }
    return NULL;
}

/* 16 times what the relay may hold: enough to prove backpressure, small
 * enough to drain under ASan on a loaded 2-core machine well inside the
 * deadline (it is a bound on a hang, not a speed target). */
#define FLOOD_BYTES (16u << 20)

static bool drain_and_check(int fd, size_t total)
{
    static uint8_t buf[1 << 16];
    size_t got = 0, pos = 0;
    uint64_t end = now_mono_ms() + 120000;
    while (got < total && now_mono_ms() < end) {
        if (!wait_readable(fd, 50))
            continue;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0) {
            printf("  read: %s\n", n == 0 ? "end of file" : strerror(errno));
            break;
        }
        for (ssize_t i = 0; i < n; i++, pos++) {
            size_t in_chunk = pos % VMPROTO_MAX_PAYLOAD;
            if (buf[i] != (uint8_t)in_chunk) {
                printf("  byte %zu is %u, not %u\n", pos, buf[i], (unsigned)(uint8_t)in_chunk);
                return false;
            }
        }
        got += (size_t)n;
    }
    if (got != total)
        printf("  drained %zu of %zu bytes before the deadline\n", got, total);
    return got == total;
}

static void test_relay_log_flood_bounded(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    frame_t f;
    CHECK(fa_expect(&t.fk, VM_START, &f, 5000));
    free(f.data);
    flood_t fl = {.fk = &t.fk, .type = VM_LOG, .total = FLOOD_BYTES};
    pthread_t th;
    pthread_create(&th, NULL, flood_main, &fl);
    usleep(500000); /* the host reads nothing meanwhile */
    size_t stalled = fl.sent;
    usleep(300000);
    vmrelay_stats_t st;
    vmrelay_get_stats(t.r, &st);
    printf("  log flood: guest blocked after %zu KiB; relay held at most %zu KiB\n", stalled >> 10,
           st.host_buffered_max >> 10);
    CHECK(fl.sent == stalled); /* blocked: backpressure reached the guest */
    CHECK(st.host_buffered_max <= RELAY_HOST_HIGH + VMPROTO_MAX_PAYLOAD + 4096);
    CHECK(drain_and_check(t.out_rd, fl.total));
    pthread_join(th, NULL);
    vmrelay_get_stats(t.r, &st);
    CHECK(st.host_buffered_max <= RELAY_HOST_HIGH + VMPROTO_MAX_PAYLOAD + 4096);
    CHECK(!vmrelay_exited(t.r, NULL, NULL, NULL, 0));
    rt_stop(&t);
}

static void test_relay_data_flood_bounded(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    fa_send(&t.fk, VM_OPEN, 7, NULL, 0);
    CHECK(wait_readable(t.api_ls, 5000));
    int c = accept4(t.api_ls, NULL, NULL, SOCK_CLOEXEC);
    CHECK(c >= 0);
    flood_t fl = {.fk = &t.fk, .type = VM_DATA, .stream = 7, .total = FLOOD_BYTES};
    pthread_t th;
    pthread_create(&th, NULL, flood_main, &fl);
    usleep(500000); /* the API side reads nothing */
    size_t stalled = fl.sent;
    usleep(300000);
    vmrelay_stats_t st;
    vmrelay_get_stats(t.r, &st);
    printf("  data flood: guest blocked after %zu KiB; relay held at most %zu KiB\n", stalled >> 10,
           st.host_buffered_max >> 10);
    CHECK(fl.sent == stalled);
    CHECK(st.host_buffered_max <= RELAY_HOST_HIGH + VMPROTO_MAX_PAYLOAD + 4096);
    /* Meanwhile the other direction still works? It shares the channel:
     * host -> guest frames are not blocked by guest -> host backpressure. */
    CHECK(write(c, "pong", 4) == 4);
    CHECK(drain_and_check(c, fl.total));
    pthread_join(th, NULL);
    close(c);
    CHECK(!vmrelay_exited(t.r, NULL, NULL, NULL, 0));
    rt_stop(&t);
}

/* The host floods the guest (the API side writes, the guest reads
 * nothing): the relay stops reading the API socket. */
static void test_relay_host_flood_bounded(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    fa_send(&t.fk, VM_OPEN, 1, NULL, 0);
    CHECK(wait_readable(t.api_ls, 5000));
    int c = accept4(t.api_ls, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    CHECK(c >= 0);
    static char junk[65536];
    size_t wrote = 0;
    uint64_t end = now_mono_ms() + 1000;
    while (now_mono_ms() < end) {
        ssize_t w = write(c, junk, sizeof junk);
        if (w > 0)
            wrote += (size_t)w;
        else
            usleep(5000);
    }
    vmrelay_stats_t st;
    vmrelay_get_stats(t.r, &st);
    printf("  host flood: API side blocked after %zu KiB; relay held at most %zu KiB for the guest\n",
           wrote >> 10, st.guest_buffered_max >> 10);
    CHECK(wrote < (64u << 20));
    CHECK(st.guest_buffered_max <= RELAY_GUEST_HIGH + 65536 + 4096);
    close(c);
    rt_stop(&t);
}

/* Streams opened, answered and closed in bursts (ids never reused, as
 * the agent does): nothing leaks, nothing is touched after it is freed. */
static void test_relay_stream_churn(void)
{
    rt_t t;
    CHECK(rt_start(&t, true, 0) == 0);
    hello(&t);
    uint32_t id = 1;
    for (int round = 0; round < 6; round++) {
        enum { N = 24 };
        uint32_t first = id;
        for (int i = 0; i < N; i++, id++) {
            fa_send(&t.fk, VM_OPEN, id, NULL, 0);
            fa_send(&t.fk, VM_DATA, id, "ping", 4);
            if (i % 2)
                fa_send(&t.fk, VM_CLOSE, id, NULL, 0); /* half of them close first */
        }
        for (int i = 0; i < N; i++) {
            CHECK(wait_readable(t.api_ls, 5000));
            int c = accept4(t.api_ls, NULL, NULL, SOCK_CLOEXEC);
            CHECK(c >= 0);
            char buf[8];
            CHECK(read_some(c, buf, 4, 3000) == 4);
            CHECK(write(c, "pong", 4) == 4);
            close(c);
        }
        for (int i = 0; i < N; i++) /* the others close after the answer */
            if (!(i % 2))
                fa_send(&t.fk, VM_CLOSE, first + (uint32_t)i, NULL, 0);
        int closes = 0;
        frame_t f;
        while (closes < N && fa_recv(&t.fk, &f, 5000)) {
            closes += f.type == VM_CLOSE;
            free(f.data);
        }
        CHECK(closes == N);
    }
    vmrelay_stats_t st;
    uint64_t end = now_mono_ms() + 3000;
    do {
        usleep(5000);
        vmrelay_get_stats(t.r, &st);
    } while (st.streams_open && now_mono_ms() < end);
    CHECK(st.streams_open == 0 && st.streams_opened == 6 * 24);
    CHECK(!vmrelay_exited(t.r, NULL, NULL, NULL, 0));
    rt_stop(&t);
}

typedef struct restorer {
    fake_t *fk;
    bool ok;
    bool clock;   /* expect CLOCK right after RESTORE */
    uint8_t payload[VMPROTO_RESTORE_LEN];
} restorer_t;

static void *restorer_main(void *arg)
{
    restorer_t *r = arg;
    frame_t f = {0};
    if (fa_recv(r->fk, &f, 5000) && f.type == VM_RESTORE && f.len == VMPROTO_RESTORE_LEN) {
        memcpy(r->payload, f.data, VMPROTO_RESTORE_LEN);
        if (r->clock) {
            frame_t c = {0};
            int64_t ns = 0;
            if (!fa_recv(r->fk, &c, 5000) || c.type != VM_CLOCK ||
                vmproto_decode_clock(c.data, c.len, &ns) < 0 || ns <= 0) {
                free(c.data);
                free(f.data);
                return NULL;
            }
            free(c.data);
        }
        fa_send(r->fk, VM_OPEN, 9, NULL, 0);
        fa_send(r->fk, VM_DATA, 9, "GET again", 9);
        fa_send(r->fk, VM_RESTORED, 0, NULL, 0);
        r->ok = true;
    }
    free(f.data);
    return NULL;
}

static void test_relay_restore(void)
{
    rt_t t;
    /* a restored VM: no START, no HELLO; its agent had announced CLOCK */
    CHECK(rt_start_f(&t, false, 0, VMPROTO_FEATURE_CLOCK) == 0);
    restorer_t rs = {.fk = &t.fk, .clock = true};
    pthread_t th;
    pthread_create(&th, NULL, restorer_main, &rs);
    uint8_t payload[VMPROTO_RESTORE_LEN];
    random_bytes(payload, sizeof payload);
    err_t err;
    CHECK(vmrelay_restore(t.r, payload, 5000, &err) == 0);
    pthread_join(th, NULL);
    CHECK(rs.ok);
    CHECK(!memcmp(rs.payload, payload, sizeof payload));
    CHECK(vmrelay_ready_ms(t.r) > 0);
    CHECK(wait_readable(t.api_ls, 5000)); /* the re-opened stream reached the API */
    int c = accept4(t.api_ls, NULL, NULL, SOCK_CLOEXEC);
    char buf[16] = {0};
    CHECK(read_some(c, buf, 9, 3000) == 9);
    CHECK_STR(buf, "GET again");
    close(c);
    hello(&t); /* a restored guest must not say HELLO */
    CHECK(wait_readable(t.efd, 5000));
    rt_stop(&t);
}

/* ================================================================ VM helpers */

#define NEEDS_GUEST()                                                 \
    do {                                                              \
        if (!g_have_guest) {                                          \
            printf("  skipped: %s\n", g_guest_why);                   \
            return;                                                   \
        }                                                             \
    } while (0)

static const char BOOTSTRAP[] =
    "#!/bin/sh\n"
    "API=\"http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime\"\n"
    "echo \"bootstrap up\"\n"
    "while true; do\n"
    "  curl -sS -D /tmp/h -o /tmp/ev \"$API/invocation/next\" || exit 1\n"
    "  rid=$(tr -d '\\r' < /tmp/h | awk -F': ' 'tolower($1)==\"lambda-runtime-aws-request-id\" {print $2}')\n"
    "  ev=$(cat /tmp/ev)\n"
    "  echo \"event $rid $ev\"\n"
    "  case \"$ev\" in\n"
    "    '\"crash\"') echo crashing; exit 3;;\n"
    "    '\"oom\"') exec /var/task/hog;;\n"
    "    '\"sleep\"') sleep 600;;\n"
    "    '\"rand\"') r=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n');"
    " b=$(cat /proc/sys/kernel/random/boot_id);"
    " ev=\"{\\\"rand\\\":\\\"$r\\\",\\\"boot\\\":\\\"$b\\\"}\";;\n"
    "  esac\n"
    "  printf '%s' \"$ev\" | curl -sS -o /dev/null -X POST --data-binary @- \"$API/invocation/$rid/response\"\n"
    "done\n";

static const char HOG[] =
    "#include <stdlib.h>\n#include <string.h>\n#include <stdio.h>\n"
    "int main(void) { for (size_t i = 0;; i++) { char *p = malloc(1 << 20); if (!p) return 2;"
    " memset(p, 1, 1 << 20); if (i % 64 == 0) { printf(\"hog %zu MB\\n\", i); fflush(stdout); } } }\n";

static const char NODE_APP[] =
    "exports.handler = async (event) => ({ echo: event, node: process.version, arch: process.arch });\n";

static const char PY_APP[] =
    "import os\n"
    "def handler(event, context):\n"
    "    return {'echo': event, 'rand': os.urandom(8).hex(), 'task': os.getcwd()}\n";

/* ------------------------------------------------ through the worker */

static struct event_base *g_base;
static fnlog_dir_t *g_logs;
static worker_t *g_w;

static void tick(evutil_socket_t fd, short w, void *a) {}

static bool run_until(bool (*pred)(void *), void *arg, int ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)ms;
    while (!pred(arg) && now_mono_ms() < end)
        event_base_loop(g_base, EVLOOP_ONCE);
    return pred(arg);
}

typedef struct envst {
    bool ready_called, ok, dead;
    char *init_error;
    double t_ready_ms;
    uint64_t t0;
} envst_t;

static void on_ready(env_t *env, bool ok, const invoke_result_t *r, void *arg)
{
    envst_t *s = arg;
    s->ready_called = true;
    s->ok = ok;
    s->t_ready_ms = (double)(now_mono_us() - s->t0) / 1000.0;
    if (!ok)
        s->init_error = xasprintf("%.*s | log: %s", (int)r->body_len, r->body ? r->body : "",
                                  r->log_tail ? r->log_tail : "");
}

static void on_dead(env_t *env, void *arg) { ((envst_t *)arg)->dead = true; }
static bool ready_p(void *a) { return ((envst_t *)a)->ready_called; }
static bool dead_p(void *a) { return ((envst_t *)a)->dead; }

typedef struct invres {
    bool done;
    enum invoke_status status;
    char *body;
    char *tail;
} invres_t;

static void on_done(env_t *env, const invoke_result_t *r, void *arg)
{
    invres_t *o = arg;
    o->done = true;
    o->status = r->status;
    o->body = xstrndup(r->body ? r->body : "", r->body_len);
    o->tail = xstrdup(r->log_tail ? r->log_tail : "");
}

static bool done_p(void *a) { return ((invres_t *)a)->done; }

static fn_config_t *make_cfg(const char *name, const char *runtime, const char *code_dir, int memory_mb,
                            int timeout_s)
{
    fn_config_t *c = xcalloc(1, sizeof *c);
    c->name = xstrdup(name);
    c->version = xstrdup("$LATEST");
    c->arn = xasprintf("arn:aws:lambda:us-east-1:000000000000:function:%s", name);
    c->runtime = xstrdup(runtime);
    c->handler = xstrdup(!strncmp(runtime, "python", 6)   ? "app.handler"
                         : !strncmp(runtime, "nodejs", 6) ? "index.handler"
                                                          : "");
    c->memory_mb = memory_mb;
    c->timeout_s = timeout_s;
    c->ephemeral_mb = 512;
    c->env_vars = json_object();
    c->code_sha256 = xasprintf("test+code/%s=", name); /* exercises the key's escaping */
    c->code_dir = xstrdup(code_dir);
    c->revision_id = xstrdup("r1");
    c->config_key = xasprintf("%s:$LATEST:r1", name);
    c->isolation = xstrdup("microvm");
    return c;
}

static env_t *start_env(fn_config_t *cfg, envst_t *s)
{
    memset(s, 0, sizeof *s);
    s->t0 = now_mono_us();
    err_t err;
    env_t *env = worker_env_create(g_w, cfg, on_ready, on_dead, s, &err);
    if (!env) {
        printf("  worker_env_create: %s\n", err.msg);
        return NULL;
    }
    if (!run_until(ready_p, s, DEADLINE_MS) || !s->ok) {
        printf("  env not ready: %s\n", s->init_error ? s->init_error : "(timeout)");
        return NULL;
    }
    return env;
}

static void invoke(env_t *env, const char *payload, invres_t *out)
{
    memset(out, 0, sizeof *out);
    char rid[37];
    uuid_v4(rid);
    invoke_event_t ev = {.request_id = rid, .payload = payload, .payload_len = strlen(payload)};
    env_invoke(env, &ev, on_done, out);
    run_until(done_p, out, DEADLINE_MS);
}

static void invres_free(invres_t *r)
{
    free(r->body);
    free(r->tail);
}

/* What must be gone after an environment: QEMU, its cgroup, its files. */
static bool vm_gone(pid_t pid, const char *env_id)
{
    _cleanup_free_ char *inst = cgroup_instance_name();
    _cleanup_free_ char *cg = xasprintf("/sys/fs/cgroup/memory/flicker/%s/vm-%s", inst, env_id);
    _cleanup_free_ char *cg2 = xasprintf("/sys/fs/cgroup/flicker/%s/vm-%s", inst, env_id);
    _cleanup_free_ char *run = xasprintf("%s/vm-run/%s/%s", g_state, inst, env_id);
    bool ok = true;
    reaper_drain(); /* the worker destroys environments on its reaper thread */
    if (pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH)) {
        printf("  QEMU %d still exists\n", (int)pid);
        ok = false;
    }
    if (access(cg, F_OK) == 0 || access(cg2, F_OK) == 0) {
        printf("  cgroup of %s still exists\n", env_id);
        ok = false;
    }
    if (access(run, F_OK) == 0) {
        printf("  %s still exists\n", run);
        ok = false;
    }
    return ok;
}

typedef struct gone {
    pid_t pid;
    const char *id;
} gone_t;

/* The worker tears an environment down on a later loop iteration. */
static bool quiet_gone_p(void *a)
{
    gone_t *g = a;
    _cleanup_free_ char *inst = cgroup_instance_name();
    _cleanup_free_ char *run = xasprintf("%s/vm-run/%s/%s", g_state, inst, g->id);
    return worker_env_find(g_w, g->id) == NULL && access(run, F_OK) != 0 &&
           (g->pid <= 0 || kill(g->pid, 0) != 0);
}

static bool env_gone_p(void *a)
{
    gone_t g = {0, a};
    return quiet_gone_p(&g);
}

static void test_vm_invoke_and_warm_reuse(void)
{
    NEEDS_GUEST();
    fn_config_t *cfg = make_cfg("vm-hello", "provided.al2023", g_code, 256, 30);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    printf("  accelerator %s (%s); cold start (boot + Init) %.0f ms\n", microvm_accelerator(),
           microvm_accelerator_reason(), s.t_ready_ms);
    invres_t r;
    invoke(env, "{\"n\":1}", &r);
    CHECK(r.done && r.status == INVOKE_OK);
    CHECK_STR(r.body, "{\"n\":1}");
    CHECK(strstr(r.tail, "event "));
    invres_free(&r);
    /* Idle: the worker freezes it after a short while; the next event thaws it. */
    uint64_t end = now_mono_ms() + 3000;
    json_t *stj = NULL;
    bool frozen = false;
    while (!frozen && now_mono_ms() < end) {
        event_base_loop(g_base, EVLOOP_ONCE);
        json_decref(stj);
        stj = worker_status(g_w);
        json_t *e = json_array_get(json_object_get(stj, "environments"), 0);
        frozen = json_is_true(json_object_get(e, "frozen"));
    }
    json_decref(stj);
    CHECK(frozen);
    _cleanup_free_ char *inst = cgroup_instance_name();
    _cleanup_free_ char *fz = xasprintf("/sys/fs/cgroup/freezer/flicker/%s/vm-%s/freezer.state", inst,
                                        env_id(env));
    char state[32] = "";
    FILE *f = fopen(fz, "r");
    if (f) {
        if (!fgets(state, sizeof state, f))
            state[0] = 0;
        fclose(f);
    }
    CHECK(!f || !strncmp(state, "FROZEN", 6));
    uint64_t t0 = now_mono_us();
    invoke(env, "\"again\"", &r);
    CHECK(r.done && r.status == INVOKE_OK);
    CHECK_STR(r.body, "\"again\"");
    printf("  warm invoke after thaw: %.1f ms\n", (double)(now_mono_us() - t0) / 1000.0);
    invres_free(&r);
    pid_t pid = env_pid(env);
    char id[64];
    snprintf(id, sizeof id, "%s", env_id(env));
    env_destroy(env);
    CHECK(run_until(env_gone_p, id, 10000));
    CHECK(vm_gone(pid, id));
    fn_config_free(cfg);
}

static void test_vm_crash(void)
{
    NEEDS_GUEST();
    fn_config_t *cfg = make_cfg("vm-crash", "provided.al2023", g_code, 256, 30);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    pid_t pid = env_pid(env);
    char id[64];
    snprintf(id, sizeof id, "%s", env_id(env));
    invres_t r;
    invoke(env, "\"crash\"", &r);
    CHECK(r.done && r.status == INVOKE_FAILED);
    CHECK(strstr(r.body, "Runtime.ExitError"));
    CHECK(strstr(r.body, "exit status 3"));
    CHECK(strstr(r.tail, "crashing"));
    invres_free(&r);
    CHECK(run_until(env_gone_p, id, 10000));
    CHECK(vm_gone(pid, id));
    fn_config_free(cfg);
}

static void test_vm_oom(void)
{
    NEEDS_GUEST();
    fn_config_t *cfg = make_cfg("vm-oom", "provided.al2023", g_code, 128, 60);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    pid_t pid = env_pid(env);
    char id[64];
    snprintf(id, sizeof id, "%s", env_id(env));
    invres_t r;
    invoke(env, "\"oom\"", &r);
    CHECK(r.done && r.status == INVOKE_FAILED);
    if (!strstr(r.body, "Runtime.OutOfMemory"))
        printf("  body: %s\n  tail: %s\n", r.body, r.tail);
    CHECK(strstr(r.body, "Runtime.OutOfMemory"));
    invres_free(&r);
    CHECK(run_until(env_gone_p, id, 10000));
    CHECK(vm_gone(pid, id));
    fn_config_free(cfg);
}

static void test_vm_timeout_leaves_nothing(void)
{
    NEEDS_GUEST();
    fn_config_t *cfg = make_cfg("vm-timeout", "provided.al2023", g_code, 256, 2);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    pid_t pid = env_pid(env);
    char id[64];
    snprintf(id, sizeof id, "%s", env_id(env));
    int before = microvm_count();
    invres_t r;
    invoke(env, "\"sleep\"", &r);
    CHECK(r.done && r.status == INVOKE_FAILED);
    CHECK(strstr(r.body, "Sandbox.Timedout"));
    invres_free(&r);
    CHECK(run_until(env_gone_p, id, 10000));
    CHECK(vm_gone(pid, id));
    CHECK(microvm_count() == before - 1);
    fn_config_free(cfg);
}

static void test_vm_qemu_sigkill(void)
{
    NEEDS_GUEST();
    fn_config_t *cfg = make_cfg("vm-kill", "provided.al2023", g_code, 256, 30);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    pid_t pid = env_pid(env);
    char id[64];
    snprintf(id, sizeof id, "%s", env_id(env));
    CHECK(kill(pid, SIGKILL) == 0);
    CHECK(run_until(dead_p, &s, 10000)); /* exit_fd fired: the worker saw it die */
    CHECK(run_until(env_gone_p, id, 10000));
    CHECK(vm_gone(pid, id));
    fn_config_free(cfg);
}

static void test_vm_python(void)
{
    NEEDS_GUEST();
    fn_config_t *cfg = make_cfg("vm-py", "python3.11", g_pycode, 512, 60);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    printf("  python cold start (boot + Init) %.0f ms\n", s.t_ready_ms);
    invres_t r;
    invoke(env, "{\"k\":\"v\"}", &r);
    CHECK(r.done && r.status == INVOKE_OK);
    json_t *j = json_loads(r.body, 0, NULL);
    CHECK(j);
    CHECK_STR(json_string_value(json_object_get(json_object_get(j, "echo"), "k")), "v");
    CHECK_STR(json_string_value(json_object_get(j, "task")), "/var/task");
    json_decref(j);
    invres_free(&r);
    env_destroy(env);
    fn_config_free(cfg);
}

static void test_vm_nodejs(void)
{
    fn_config_t *cfg = make_cfg("vm-node", "nodejs20.x", g_nodecode, 512, 60);
    envst_t s;
    env_t *env = start_env(cfg, &s);
    CHECK(env);
    printf("  nodejs cold start (boot + Init) %.0f ms\n", s.t_ready_ms);
    invres_t r;
    invoke(env, "[1,2]", &r);
    CHECK(r.done && r.status == INVOKE_OK);
    json_t *j = json_loads(r.body, 0, NULL);
    CHECK(j && json_array_size(json_object_get(j, "echo")) == 2);
    CHECK(!strncmp(json_string_value(json_object_get(j, "node")), "v", 1));
    json_decref(j);
    invres_free(&r);
    env_destroy(env);
    fn_config_free(cfg);
}

/* ------------------------------------------------ directly, with a mini API */

typedef struct mini {
    const isolation_ops_t *iso;
    void *h;
    struct evhttp *http;
    struct event *out_ev;
    struct evhttp_request *next;
    int nnext;
    char rid[40];
    char *resp;
    struct evbuffer *log;
} mini_t;

static void mini_req(struct evhttp_request *req, void *arg)
{
    mini_t *m = arg;
    const char *uri = evhttp_request_get_uri(req);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET && strstr(uri, "/invocation/next")) {
        m->next = req;
        m->nnext++;
        return;
    }
    if (evhttp_request_get_command(req) == EVHTTP_REQ_POST && strstr(uri, "/response")) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        free(m->resp);
        m->resp = xmalloc(n + 1);
        evbuffer_remove(in, m->resp, n);
        m->resp[n] = 0;
        evhttp_send_reply(req, 202, "Accepted", NULL);
        return;
    }
    evhttp_send_reply(req, 404, "Not Found", NULL);
}

static void mini_out(evutil_socket_t fd, short w, void *arg)
{
    mini_t *m = arg;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        evbuffer_add(m->log, buf, (size_t)n);
}

static void mini_serve(mini_t *m, const isolation_ops_t *iso, void *h)
{
    memset(m, 0, sizeof *m);
    m->iso = iso;
    m->h = h;
    m->log = evbuffer_new();
    m->http = evhttp_new(g_base);
    evhttp_set_gencb(m->http, mini_req, m);
    int fd = dup(iso->api_fd(h));
    evutil_make_socket_nonblocking(fd);
    evhttp_accept_socket(m->http, fd);
    m->out_ev = event_new(g_base, iso->output_fd(h), EV_READ | EV_PERSIST, mini_out, m);
    event_add(m->out_ev, NULL);
}

static void mini_stop(mini_t *m)
{
    if (m->http)
        evhttp_free(m->http);
    if (m->out_ev)
        event_free(m->out_ev);
    evbuffer_free(m->log);
    free(m->resp);
    memset(m, 0, sizeof *m);
}

static bool next_p(void *a) { return ((mini_t *)a)->next != NULL; }
static bool resp_p(void *a) { return ((mini_t *)a)->resp != NULL; }

static void mini_deliver(mini_t *m, const char *payload)
{
    struct evhttp_request *req = m->next;
    m->next = NULL;
    uuid_v4(m->rid);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Lambda-Runtime-Aws-Request-Id", m->rid);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, payload, strlen(payload));
    free(m->resp);
    m->resp = NULL;
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static char *mini_log(mini_t *m)
{
    size_t n = evbuffer_get_length(m->log);
    char *s = xmalloc(n + 1);
    evbuffer_copyout(m->log, s, n);
    s[n] = 0;
    return s;
}

static void make_spec(sandbox_spec_t *sp, char *id, size_t idlen, const char *runtime, const char *code,
                      int memory_mb, char *const *argv, char *const *envp)
{
    snprintf(id, idlen, "direct-%d-%d", (int)getpid(), ++g_seq);
    /* the code key names the code's content: one per directory here */
    *sp = (sandbox_spec_t){.id = id, .code_dir = code, .memory_mb = memory_mb, .ephemeral_mb = 512,
                           .argv = argv, .envp = envp, .runtime = runtime,
                           .code_key = code == g_pycode ? "direct-pycode" : "direct-code",
                           .state_dir = g_state};
}

static char *const SH_ARGV[] = {"/var/task/bootstrap", NULL};
static char *const SH_ENVP[] = {"PATH=/usr/bin:/bin", "AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001", NULL};

/* Boots a VM directly and waits until its runtime waits for an event.
 * Returns the handle (served by *m) or NULL. */
static void *direct_boot(mini_t *m, const char *runtime, const char *code, int memory_mb, char *const *argv,
                         char *const *envp, const char *restore_from, double *ms)
{
    sandbox_spec_t sp;
    char id[64];
    make_spec(&sp, id, sizeof id, runtime, code, memory_mb, argv, envp);
    sp.restore_from = restore_from;
    sp.defer_cpu_limit = true;
    void *h = NULL;
    err_t err;
    uint64_t t0 = now_mono_us();
    if (microvm_isolation.create(&sp, &h, &err) < 0) {
        printf("  create: %s\n", err.msg);
        return NULL;
    }
    mini_serve(m, &microvm_isolation, h);
    if (!run_until(next_p, m, DEADLINE_MS)) {
        char *log = mini_log(m);
        printf("  no GET /next from the runtime; its output:\n%s\n", log);
        free(log);
        mini_stop(m);
        microvm_isolation.destroy(h, NULL);
        return NULL;
    }
    if (ms)
        *ms = (double)(now_mono_us() - t0) / 1000.0;
    return h;
}

static json_t *direct_invoke(mini_t *m, const char *payload)
{
    mini_deliver(m, payload);
    if (!run_until(resp_p, m, DEADLINE_MS))
        return NULL;
    json_t *j = json_loads(m->resp, 0, NULL);
    run_until(next_p, m, DEADLINE_MS); /* back in GET /next */
    return j;
}

static void direct_destroy(mini_t *m, void *h)
{
    mini_stop(m);
    err_t err;
    microvm_isolation.destroy(h, &err);
}

static char g_snap[160];

static void test_vm_snapshot_two_restores(void)
{
    NEEDS_GUEST();
    mini_t m;
    double boot_ms = 0;
    void *h = direct_boot(&m, "provided.al2023", g_code, 256, SH_ARGV, SH_ENVP, NULL, &boot_ms);
    CHECK(h);
    double hello_ms = microvm_ready_ms(h);
    json_t *r0 = direct_invoke(&m, "\"rand\"");
    CHECK(r0);
    err_t err;
    CHECK(microvm_isolation.freeze(h, &err) == 0); /* as the worker leaves an idle VM */
    snprintf(g_snap, sizeof g_snap, "%s/snap-provided.vm", g_tmp);
    uint64_t t0 = now_mono_us();
    if (microvm_isolation.snapshot(h, g_snap, &err) < 0)
        printf("  snapshot: %s\n", err.msg);
    double snap_ms = (double)(now_mono_us() - t0) / 1000.0;
    struct stat st;
    CHECK(stat(g_snap, &st) == 0);
    direct_destroy(&m, h);

    mini_t ma, mb;
    double ra_ms = 0, rb_ms = 0;
    void *a = direct_boot(&ma, "provided.al2023", g_code, 256, SH_ARGV, SH_ENVP, g_snap, &ra_ms);
    CHECK(a);
    void *b = direct_boot(&mb, "provided.al2023", g_code, 256, SH_ARGV, SH_ENVP, g_snap, &rb_ms);
    CHECK(b);
    CHECK(microvm_restored(a) && microvm_restored(b));
    json_t *ja = direct_invoke(&ma, "\"rand\"");
    json_t *jb = direct_invoke(&mb, "\"rand\"");
    CHECK(ja && jb);
    const char *randa = json_string_value(json_object_get(ja, "rand"));
    const char *randb = json_string_value(json_object_get(jb, "rand"));
    const char *boota = json_string_value(json_object_get(ja, "boot"));
    const char *bootb = json_string_value(json_object_get(jb, "boot"));
    const char *boot0 = json_string_value(json_object_get(r0, "boot"));
    CHECK(randa && randb && boota && bootb && boot0);
    CHECK(strlen(randa) == 32 && strlen(boota) == 36);
    CHECK(strcmp(randa, randb) != 0);
    CHECK(strcmp(boota, bootb) != 0);
    CHECK(strcmp(boota, boot0) != 0 && strcmp(bootb, boot0) != 0);
    printf("  snapshot %.1f MB (allocated) written in %.0f ms; boot to HELLO %.0f ms, to runtime ready %.0f ms;"
           " restore to RESTORED %.0f/%.0f ms, to runtime ready %.0f/%.0f ms\n",
           (double)st.st_blocks * 512 / 1048576.0, snap_ms, hello_ms, boot_ms, microvm_ready_ms(a),
           microvm_ready_ms(b), ra_ms, rb_ms);
    json_decref(r0);
    json_decref(ja);
    json_decref(jb);
    direct_destroy(&ma, a);
    direct_destroy(&mb, b);
}

/* "Key:\tvalue" of /proc/pid/status, malloc'd. */
static char *proc_status(pid_t pid, const char *key)
{
    char p[64], line[512];
    snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
    FILE *f = fopen(p, "r");
    char *out = NULL;
    size_t kl = strlen(key);
    while (f && !out && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') {
            char *v = line + kl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            out = xstrdup(v);
        }
    if (f)
        fclose(f);
    return out ? out : xstrdup("");
}

static bool same_ns(pid_t pid, const char *ns)
{
    char a[64], b[64], la[64] = "", lb[64] = "";
    snprintf(a, sizeof a, "/proc/self/ns/%s", ns);
    snprintf(b, sizeof b, "/proc/%d/ns/%s", (int)pid, ns);
    if (readlink(a, la, sizeof la - 1) < 0 || readlink(b, lb, sizeof lb - 1) < 0)
        return true;
    return !strcmp(la, lb);
}

/* QEMU as the jail leaves it, seen from the host: what must be true, and
 * what must not be reachable. */
static void test_vm_jail(void)
{
    mini_t m;
    void *h = direct_boot(&m, "provided.al2023", g_code, 128, SH_ARGV, SH_ENVP, NULL, NULL);
    CHECK(h);
    pid_t pid = microvm_isolation.pid(h);
    _cleanup_free_ char *uid = proc_status(pid, "Uid");
    _cleanup_free_ char *gid = proc_status(pid, "Gid");
    _cleanup_free_ char *groups = proc_status(pid, "Groups");
    _cleanup_free_ char *capeff = proc_status(pid, "CapEff");
    _cleanup_free_ char *capprm = proc_status(pid, "CapPrm");
    _cleanup_free_ char *capbnd = proc_status(pid, "CapBnd");
    _cleanup_free_ char *nnp = proc_status(pid, "NoNewPrivs");
    _cleanup_free_ char *seccomp = proc_status(pid, "Seccomp");
    _cleanup_free_ char *nspid = proc_status(pid, "NSpid");
    printf("  QEMU: Uid %s, Groups '%s', CapEff %s, NoNewPrivs %s, Seccomp %s, NSpid %s\n", uid, groups,
           capeff, nnp, seccomp, nspid);
    CHECK(atoi(uid) >= 0x60000000 && strtoul(uid, NULL, 10) == strtoul(strrchr(uid, '\t') + 1, NULL, 10));
    CHECK(atoi(gid) == atoi(uid));
    CHECK_STR(groups, "");
    CHECK_STR(capeff, "0000000000000000");
    CHECK_STR(capprm, "0000000000000000");
    CHECK_STR(nnp, "1");
    CHECK_STR(seccomp, "2"); /* QEMU's -sandbox filter */
    CHECK(strstr(nspid, "\t1")); /* PID 1 of its own pid namespace */
    static const char *const nss[] = {"mnt", "pid", "net", "ipc", "uts", "cgroup"};
    for (size_t i = 0; i < ARRAY_LEN(nss); i++) {
        if (same_ns(pid, nss[i]))
            printf("  shares the %s namespace\n", nss[i]);
        CHECK(!same_ns(pid, nss[i]));
    }
    /* The root: only what QEMU needs; no /etc, /proc, /sys, /home, /root,
     * no host /tmp or state dir. */
    char root[64];
    snprintf(root, sizeof root, "/proc/%d/root", (int)pid);
    DIR *d = opendir(root);
    CHECK(d);
    char seen[256] = "";
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') {
            strncat(seen, e->d_name, sizeof seen - strlen(seen) - 2);
            strncat(seen, " ", sizeof seen - strlen(seen) - 1);
        }
    closedir(d);
    printf("  jail root: %s\n", seen);
    static const char *const absent[] = {"etc", "proc", "sys", "home", "root", "tmp", "var", "run", "bin/sh",
                                         "usr/bin/sh", "usr/bin/bash", "dev/kvm", "dev/mem", "dev/sda"};
    for (size_t i = 0; i < ARRAY_LEN(absent); i++) {
        char p[128];
        snprintf(p, sizeof p, "%s/%s", root, absent[i]);
        if (access(p, F_OK) == 0)
            printf("  reachable in the jail: /%s\n", absent[i]);
        CHECK(access(p, F_OK) != 0);
    }
    char p[160];
    snprintf(p, sizeof p, "%s/usr/bin/qemu-system-x86_64", root);
    CHECK(access(p, X_OK) == 0);
    snprintf(p, sizeof p, "%s/vm/rootfs.img", root);
    struct stat st;
    CHECK(stat(p, &st) == 0);
    int fd = open(p, O_WRONLY); /* read-only bind, even for root */
    CHECK(fd < 0 && errno == EROFS);
    snprintf(p, sizeof p, "%s/vm/probe", root);
    CHECK(open(p, O_WRONLY | O_CREAT, 0600) < 0 && errno == EROFS); /* the root is read-only */
    /* No network device but loopback. */
    snprintf(p, sizeof p, "/proc/%d/net/dev", (int)pid);
    size_t len;
    _cleanup_free_ char *dev = read_file(p, 65536, &len, NULL);
    CHECK(dev);
    int ifaces = 0;
    for (char *l = strchr(dev, '\n'); l && (l = strchr(l + 1, '\n'));)
        if (l[1])
            ifaces++;
    CHECK(ifaces == 1 && strstr(dev, "lo:"));
    /* Its cgroup: guest RAM + bounded overhead, a pids limit. */
    _cleanup_free_ char *inst = cgroup_instance_name();
    snprintf(p, sizeof p, "/proc/%d/cgroup", (int)pid);
    _cleanup_free_ char *cg = read_file(p, 65536, &len, NULL);
    CHECK(cg && strstr(cg, "/vm-direct-"));
    direct_destroy(&m, h);
    CHECK(kill(pid, 0) < 0 && errno == ESRCH);
}

/* Copies the good snapshot to path, with damage applied. */
static void damaged_copy(const char *path, off_t flip_at, off_t truncate_to)
{
    size_t len;
    err_t err;
    char *data = read_file(g_snap, (size_t)1 << 32, &len, &err);
    if (!data)
        return;
    if (flip_at >= 0 && (size_t)flip_at < len)
        for (int i = 0; i < 64 && (size_t)flip_at + (size_t)i < len; i++)
            data[flip_at + i] = (char)~data[flip_at + i];
    if (truncate_to >= 0 && (size_t)truncate_to < len)
        len = (size_t)truncate_to;
    write_file_atomic(path, data, len, 0600, &err);
    free(data);
}

static bool restore_fails(const char *path, const char *want, int *secs)
{
    sandbox_spec_t sp;
    char id[64];
    make_spec(&sp, id, sizeof id, "provided.al2023", g_code, 256, SH_ARGV, SH_ENVP);
    sp.restore_from = path;
    void *h = NULL;
    err_t err = {0};
    int before = microvm_count();
    uint64_t t0 = now_mono_ms();
    int rc = microvm_isolation.create(&sp, &h, &err);
    *secs = (int)((now_mono_ms() - t0) / 1000);
    bool ok = rc < 0 && !h && strstr(err.msg, want) && microvm_count() == before && vm_gone(0, id);
    printf("  %s: %s (%d s)\n", rc < 0 ? "fails" : "SUCCEEDED", err.msg, *secs);
    if (rc == 0)
        microvm_isolation.destroy(h, NULL);
    return ok;
}

static void test_vm_corrupt_snapshot(void)
{
    NEEDS_GUEST();
    struct stat st;
    if (stat(g_snap, &st) < 0) {
        printf("  skipped: no snapshot (test_vm_snapshot_two_restores did not make one)\n");
        return;
    }
    int secs;
    char path[200];
    snprintf(path, sizeof path, "%s/missing.vm", g_tmp);
    CHECK(restore_fails(path, "No such file", &secs));
    snprintf(path, sizeof path, "%s/badhdr.vm", g_tmp);
    damaged_copy(path, 100, -1);
    CHECK(restore_fails(path, "corrupt header", &secs));
    snprintf(path, sizeof path, "%s/trunc.vm", g_tmp);
    damaged_copy(path, -1, st.st_size / 3);
    CHECK(restore_fails(path, "truncated", &secs));
    snprintf(path, sizeof path, "%s/garbage.vm", g_tmp);
    CHECK(write_file_atomic(path, "not a snapshot at all", 21, 0600, NULL) == 0);
    CHECK(restore_fails(path, "truncated", &secs));
    /* A valid header over damaged contents: the stream's start (QEMU would
     * refuse it too) and guest RAM deep inside (QEMU would load it). */
    snprintf(path, sizeof path, "%s/badstream.vm", g_tmp);
    damaged_copy(path, 4096 + 16, -1);
    CHECK(restore_fails(path, "corrupt", &secs));
    snprintf(path, sizeof path, "%s/badram.vm", g_tmp);
    damaged_copy(path, 4096 + (st.st_blocks * 512 - 4096) / 2, -1);
    CHECK(restore_fails(path, "corrupt", &secs));
    CHECK(secs < 60);
}

/* ------------------------------------------------ benchmark */

static uint64_t smaps_kb(pid_t pid, const char *key)
{
    char p[64], line[256];
    snprintf(p, sizeof p, "/proc/%d/smaps_rollup", (int)pid);
    FILE *f = fopen(p, "r");
    uint64_t v = 0;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':')
            v = strtoull(line + kl + 1, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

/* QEMU's resident memory split into guest RAM (the mapping of exactly
 * the guest's size), the TCG translation cache (exactly tb-size) and the
 * rest (QEMU itself), in KiB. */
static void qemu_memory(pid_t pid, int guest_mb, int tb_mb, uint64_t *guest, uint64_t *tb, uint64_t *rest)
{
    char p[64], line[512];
    snprintf(p, sizeof p, "/proc/%d/smaps", (int)pid);
    FILE *f = fopen(p, "r");
    *guest = *tb = *rest = 0;
    unsigned long long lo = 0, hi = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long a, b;
        if (sscanf(line, "%llx-%llx ", &a, &b) == 2) {
            lo = a;
            hi = b;
            continue;
        }
        unsigned long long kb;
        if (sscanf(line, "Rss: %llu kB", &kb) == 1) {
            unsigned long long size_kb = (hi - lo) >> 10;
            if (size_kb == (unsigned long long)guest_mb << 10)
                *guest += kb;
            else if (size_kb <= (unsigned long long)tb_mb << 10 && size_kb + 16 >= (unsigned long long)tb_mb << 10)
                /* the code buffer: tb-size less a guard page */
                *tb += kb;
            else
                *rest += kb;
        }
    }
    if (f)
        fclose(f);
}

static void bench_family(const char *label, const char *runtime, const char *code, int memory_mb,
                         char *const *argv, char *const *envp, int n)
{
    double boot_sum = 0, restore_sum = 0, hello_sum = 0, restored_sum = 0;
    char snap[200];
    snprintf(snap, sizeof snap, "%s/bench-%s.vm", g_tmp, label);
    for (int i = 0; i < n; i++) {
        mini_t m;
        double ms = 0;
        void *h = direct_boot(&m, runtime, code, memory_mb, argv, envp, NULL, &ms);
        if (!h)
            return;
        boot_sum += ms;
        hello_sum += microvm_ready_ms(h);
        if (i == 0) {
            err_t err;
            microvm_isolation.freeze(h, &err);
            if (microvm_isolation.snapshot(h, snap, &err) < 0)
                printf("  snapshot: %s\n", err.msg);
        }
        direct_destroy(&m, h);
    }
    for (int i = 0; i < n; i++) {
        mini_t m;
        double ms = 0;
        void *h = direct_boot(&m, runtime, code, memory_mb, argv, envp, snap, &ms);
        if (!h)
            return;
        restore_sum += ms;
        restored_sum += microvm_ready_ms(h);
        direct_destroy(&m, h);
    }
    printf("  bench %s (%d MB, %s, n=%d): boot+Init %.0f ms (HELLO at %.0f ms); restore %.0f ms "
           "(RESTORED at %.0f ms): restore takes %.0f%% of a cold boot\n",
           label, memory_mb, microvm_accelerator(), n, boot_sum / n, hello_sum / n, restore_sum / n,
           restored_sum / n, 100.0 * restore_sum / boot_sum);
}

static void test_vm_bench(void)
{
    const char *nv = getenv("FLICKER_VM_BENCH");
    int n = atoi(nv) > 0 ? atoi(nv) : 3;
    bench_family("provided", "provided.al2023", g_code, 256, SH_ARGV, SH_ENVP, n);
    static char *const py_argv[] = {"/usr/bin/python3", "-u", "/var/runtime/python/bootstrap.py", NULL};
    static char *const py_envp[] = {"PATH=/usr/bin:/bin", "AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001",
                                    "_HANDLER=app.handler", "LAMBDA_TASK_ROOT=/var/task", NULL};
    bench_family("python", "python3.11", g_pycode, 512, py_argv, py_envp, n);

    /* Starts per second: VMs started back to back (create returns once QEMU
     * runs; the guest boots in the background), and QEMU's memory per VM. */
    enum { K = 8 };
    void *hs[K];
    sandbox_spec_t sp;
    char ids[K][64];
    uint64_t t0 = now_mono_us();
    int made = 0;
    for (int i = 0; i < K; i++) {
        make_spec(&sp, ids[i], sizeof ids[i], "provided.al2023", g_code, 128, SH_ARGV, SH_ENVP);
        err_t err;
        if (microvm_isolation.create(&sp, &hs[i], &err) < 0) {
            printf("  create: %s\n", err.msg);
            break;
        }
        made++;
    }
    double create_s = (double)(now_mono_us() - t0) / 1e6;
    /* wait for all HELLOs */
    uint64_t end = now_mono_ms() + 120000;
    for (int i = 0; i < made; i++)
        while (microvm_ready_ms(hs[i]) == 0 && now_mono_ms() < end)
            usleep(20000);
    double all_s = (double)(now_mono_us() - t0) / 1e6;
    usleep(1500000); /* let the runtimes settle in GET /next */
    uint64_t rss = 0, pss = 0, anon = 0, peak = 0, guest = 0, tb = 0, rest = 0;
    for (int i = 0; i < made; i++) {
        pid_t pid = microvm_isolation.pid(hs[i]);
        rss += smaps_kb(pid, "Rss");
        pss += smaps_kb(pid, "Pss");
        anon += smaps_kb(pid, "Anonymous");
        peak += microvm_isolation.memory_peak(hs[i]) >> 10;
        uint64_t g, t, r;
        qemu_memory(pid, 128, 32, &g, &t, &r);
        guest += g;
        tb += t;
        rest += r;
    }
    printf("  bench starts: %d VMs created in %.2f s (%.1f creates/s), all said HELLO after %.2f s "
           "(%.2f booted VMs/s on %ld cores)\n",
           made, create_s, made / create_s, all_s, made / all_s, sysconf(_SC_NPROCESSORS_ONLN));
    if (made)
        printf("  bench memory per idle 128 MB VM: QEMU RSS %llu KiB, PSS %llu KiB, anonymous %llu KiB, "
               "cgroup peak %llu KiB\n",
               (unsigned long long)(rss / made), (unsigned long long)(pss / made),
               (unsigned long long)(anon / made), (unsigned long long)(peak / made));
    if (made)
        printf("  bench QEMU resident per VM: guest RAM touched %llu KiB, TCG translation cache %llu KiB, "
               "QEMU itself %llu KiB (of which shared libraries/binary are shared between VMs)\n",
               (unsigned long long)(guest / made), (unsigned long long)(tb / made),
               (unsigned long long)(rest / made));
    for (int i = 0; i < made; i++)
        microvm_isolation.destroy(hs[i], NULL);
}

/* ================================================================ main */

static int sh(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void setup_guest(void)
{
    const char *gd = getenv("FLICKER_GUEST_DIR");
    char buf[400];
    if (!gd) {
        char self[300] = {0};
        if (readlink("/proc/self/exe", self, sizeof self - 1) > 0) {
            char *slash = strrchr(self, '/');
            if (slash)
                *slash = 0;
            snprintf(buf, sizeof buf, "%s/../guest", self);
            setenv("FLICKER_GUEST_DIR", buf, 1);
            gd = buf;
        }
    }
    const char *need[] = {"vmlinux", "rootfs-provided.erofs", "rootfs-python.erofs", "rootfs-nodejs.erofs"};
    for (size_t i = 0; i < ARRAY_LEN(need); i++) {
        char p[500];
        snprintf(p, sizeof p, "%s/%s", gd ? gd : "?", need[i]);
        if (access(p, R_OK) != 0) {
            snprintf(g_guest_why, sizeof g_guest_why, "no guest image %s (run `make guest`, or set "
                     "FLICKER_GUEST_DIR)", p);
            return;
        }
    }
    if (sh("command -v qemu-system-x86_64 >/dev/null && command -v mkfs.erofs >/dev/null") != 0) {
        snprintf(g_guest_why, sizeof g_guest_why, "qemu-system-x86_64 or mkfs.erofs not installed");
        return;
    }
    g_have_guest = true;
}

int main(void)
{
    const char *lv = getenv("MICROVM_TEST_LOG"); /* unset: errors only; "debug": everything */
    if (!lv)
        log_set_level(LOG_ERROR);
    else if (!strcmp(lv, "debug"))
        log_set_level(LOG_DEBUG);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/flicker-vmtest-XXXXXX");
    if (!mkdtemp(g_tmp))
        abort();
    chmod(g_tmp, 0700);

    RUN(test_relay_hello_start_stream);
    RUN(test_relay_clock_feature);
    RUN(test_relay_log_exit);
    RUN(test_relay_malformed);
    RUN(test_relay_fault);
    RUN(test_relay_unknown_stream_ignored);
    RUN(test_relay_streams_limit);
    RUN(test_relay_boot_timeout);
    RUN(test_relay_channel_closed);
    RUN(test_relay_log_flood_bounded);
    RUN(test_relay_data_flood_bounded);
    RUN(test_relay_host_flood_bounded);
    RUN(test_relay_stream_churn);
    RUN(test_relay_restore);

    if (geteuid() != 0) {
        snprintf(g_guest_why, sizeof g_guest_why, "needs root (cgroups, namespaces)");
    } else {
        setup_guest();
    }
    if (g_have_guest) {
        snprintf(g_state, sizeof g_state, "%s/state", g_tmp);
        mkdir(g_state, 0700);
        snprintf(g_code, sizeof g_code, "%s/code", g_tmp);
        snprintf(g_pycode, sizeof g_pycode, "%s/pycode", g_tmp);
        mkdir(g_code, 0755);
        mkdir(g_pycode, 0755);
        err_t err;
        char *p = xasprintf("%s/bootstrap", g_code);
        write_file_atomic(p, BOOTSTRAP, strlen(BOOTSTRAP), 0755, &err);
        chmod(p, 0755);
        free(p);
        p = xasprintf("%s/hog.c", g_tmp);
        write_file_atomic(p, HOG, strlen(HOG), 0644, &err);
        char *cmd = xasprintf("cc -static -O1 -o %s/hog %s", g_code, p);
        if (sh(cmd) != 0) {
            g_have_guest = false;
            snprintf(g_guest_why, sizeof g_guest_why, "cannot build the static test program (cc -static)");
        }
        free(cmd);
        free(p);
        p = xasprintf("%s/app.py", g_pycode);
        write_file_atomic(p, PY_APP, strlen(PY_APP), 0644, &err);
        free(p);
        snprintf(g_nodecode, sizeof g_nodecode, "%s/nodecode", g_tmp);
        mkdir(g_nodecode, 0755);
        p = xasprintf("%s/index.js", g_nodecode);
        write_file_atomic(p, NODE_APP, strlen(NODE_APP), 0644, &err);
        free(p);
        g_base = event_base_new();
        struct event *tk = event_new(g_base, -1, EV_PERSIST, tick, NULL);
        struct timeval tv = {0, 20000};
        event_add(tk, &tv);
        char *logdir = xasprintf("%s/logs", g_tmp);
        g_logs = fnlog_open(logdir, &err);
        free(logdir);
        worker_config_t wc = {.id = "w-vm", .zone = "z", .region = "us-east-1", .memory_mb = 8192,
                              .cpus = 2, .init_timeout_s = 90, .logs = g_logs, .isolation = "microvm",
                              .state_dir = g_state};
        g_w = worker_new(g_base, &wc, &err);
        (void)tk;
    }

#define RUN_VM(t) do { if (g_have_guest) RUN(t); else SKIP(t, g_guest_why); } while (0)
    RUN_VM(test_vm_invoke_and_warm_reuse);
    RUN_VM(test_vm_crash);
    RUN_VM(test_vm_oom);
    RUN_VM(test_vm_timeout_leaves_nothing);
    RUN_VM(test_vm_qemu_sigkill);
    RUN_VM(test_vm_jail);
    RUN_VM(test_vm_snapshot_two_restores);
    RUN_VM(test_vm_corrupt_snapshot);
    RUN_VM(test_vm_python);
    RUN_VM(test_vm_nodejs);
    if (getenv("FLICKER_VM_BENCH"))
        RUN_VM(test_vm_bench);
    else
        SKIP(test_vm_bench, "set FLICKER_VM_BENCH=N to measure");

    if (g_w) {
        worker_free(g_w);
        event_base_loop(g_base, EVLOOP_NONBLOCK);
    }
    microvm_system_shutdown();
    if (g_logs)
        fnlog_close(g_logs);
    rm_rf(g_tmp, NULL);
    CHECK_EXIT();
}
