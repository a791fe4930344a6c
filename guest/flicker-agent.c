/* flicker-agent.c - PID 1 of a flicker microVM: sets the guest up, then
 * speaks vmproto (src/worker/vmproto.h) with the worker over the
 * virtio-serial port named "flicker.0" and runs one function runtime.
 *
 * Boot (setup): mounts /proc, /sys, /dev (devtmpfs, unless the kernel did),
 * /dev/pts, /dev/shm, a small root-only /run; finds the port through
 * /sys/class/virtio-ports/<vportNpM>/name (ports appear asynchronously:
 * waits up to PORT_WAIT_MS), opens it and unlinks its device node; mounts
 * /var/task from /dev/vdb (erofs, read-only; left empty when the VM has no
 * code disk) and /tmp from /dev/vdc (ext4) or a tmpfs; brings lo up; listens
 * on 127.0.0.1:9001; sends HELLO.  Anything failing after the port is open
 * is reported as FAULT; before that, only on the console.
 *
 * Then one poll() loop serves:
 *   - the port: frames from the host (START, DATA, CLOSE, RESTORE) are
 *     validated and handled; frames to the host wait in a queue of whole
 *     frames (out) written without blocking;
 *   - the runtime's stdout+stderr pipe: its bytes become LOG frames;
 *   - the listening socket: each connection becomes a stream (OPEN), its
 *     bytes DATA frames, its end a CLOSE; DATA from the host is written to
 *     the connection, CLOSE from the host shuts its write side.  A pure byte
 *     relay: nothing is parsed;
 *   - a signalfd for SIGCHLD: every child is reaped (orphans included).
 *     When the runtime itself exits, everything else left is killed, the
 *     pipe is drained to its end, and EXIT is sent (wait status, oom_kill of
 *     /proc/vmstat).  The agent then stays up: the host destroys the VM.
 *
 * START runs argv/envp once: as uid/gid 993 (sbx_user1051) with no
 * capabilities, no_new_privs, a new session, RLIMIT_NOFILE 1024, no core
 * dumps, oom_score_adj 0 (the agent's own is -1000), cwd /var/task, stdin
 * /dev/null, stdout+stderr the log pipe.  The port's device node is gone and
 * every agent fd is close-on-exec, so the runtime cannot reach the host
 * channel; /run (boot id file) is root-only.
 *
 * RESTORE (the VM was restored from a snapshot): adds the 32 entropy bytes
 * to the kernel pool (RNDADDENTROPY) and forces a reseed (RNDRESEEDCRNG);
 * makes /proc/sys/kernel/random/boot_id read the new id (a root-owned file
 * bind-mounted over it, formatted as the kernel formats its own v4 UUID);
 * re-reads the wall clock from /dev/rtc0 when there is one; drops queued
 * frames of streams (they were meant for the host before the snapshot);
 * then, for every stream open at snapshot time: if it has not received a
 * response byte since it last sent request bytes, and those bytes fit in
 * PENDING_MAX, it is re-opened under a new stream id and the bytes are sent
 * again; otherwise it is closed (the runtime sees its connection end).
 * Finally RESTORED.
 *
 * Invariants: PID 1 never exits; every frame sent is whole and valid; a
 * malformed frame from the host, or a frame that makes no sense in the
 * current state, is a FAULT after which the agent reboots the VM (with
 * reboot=t and QEMU's -no-reboot, QEMU exits); stream ids grow from 1 and
 * are never reused within a boot (restored VMs included); memory held per
 * stream is bounded (STREAM_BUF_MAX toward the guest, PENDING_MAX kept for
 * restore), and the out queue stops the readers at OUT_HIGH bytes. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/random.h>
#include <linux/rtc.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "worker/vmproto.h"

#define SBX_UID 993
#define SBX_GID 993
#define API_PORT 9001
#define PORT_WAIT_MS 10000       /* how long to wait for the flicker.0 port */
#define IO_CHUNK (64 * 1024)     /* one read from a pipe or socket */
#define OUT_HIGH (4u << 20)      /* queued bytes to the host: stop reading above */
#define STREAM_BUF_MAX (8u << 20) /* queued bytes toward one connection: stop reading the port above */
#define PENDING_MAX (64 * 1024)  /* request bytes kept per stream for replay after restore */
#define MAX_STREAMS 256          /* connections at once; more wait in the listen backlog */
#define PORT_RETRY_MS 10         /* how often a port without a host is looked at */
#define EXIT_DRAIN_MS 2000       /* after the runtime died: how long to wait for the pipe's end */
#define TMPFS_TMP_OPTS "mode=1777,size=512m"
#define BOOT_ID_FILE "/run/flicker/boot_id"
#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"

/* ------------------------------------------------------------- queues */

/* One queued piece of bytes (a whole frame toward the host, or a DATA
 * payload toward a connection); off bytes of it are already written. */
typedef struct chunk {
    struct chunk *next;
    size_t len, off;
    uint32_t stream; /* frames: the stream a frame belongs to (0: none) */
    uint8_t type;    /* frames: its type */
    uint8_t data[];
} chunk_t;

typedef struct queue {
    chunk_t *head, *tail;
    size_t bytes; /* unwritten bytes */
} queue_t;

static chunk_t *chunk_new(size_t len)
{
    chunk_t *c = malloc(sizeof *c + len);
    if (!c) {
        /* No memory in PID 1: nothing sensible is left to do. */
        static const char m[] = "flicker-agent: out of memory\n";
        (void)!write(2, m, sizeof m - 1);
        reboot(RB_AUTOBOOT);
        _exit(1);
    }
    memset(c, 0, sizeof *c);
    c->len = len;
    return c;
}

static void q_push(queue_t *q, chunk_t *c)
{
    c->next = NULL;
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
    q->bytes += c->len - c->off;
}

static void q_clear(queue_t *q)
{
    while (q->head) {
        chunk_t *c = q->head;
        q->head = c->next;
        free(c);
    }
    q->tail = NULL;
    q->bytes = 0;
}

/* Writes as much of q as fd takes without blocking.  Returns 0, or -1 with
 * errno on a hard error (EAGAIN is not one). */
static int q_flush(queue_t *q, int fd, bool sock)
{
    while (q->head) {
        chunk_t *c = q->head;
        ssize_t n = sock ? send(fd, c->data + c->off, c->len - c->off, MSG_NOSIGNAL)
                         : write(fd, c->data + c->off, c->len - c->off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        if (n == 0)
            return 0;
        c->off += (size_t)n;
        q->bytes -= (size_t)n;
        if (c->off == c->len) {
            q->head = c->next;
            if (!q->head)
                q->tail = NULL;
            free(c);
        }
    }
    return 0;
}

/* ------------------------------------------------------------- state */

typedef struct stream {
    struct stream *next;
    uint32_t id;
    int fd;              /* the runtime's connection; -1 once it is gone */
    bool sent_close;     /* we sent CLOSE (the runtime's side ended) */
    bool host_closed;    /* the host sent CLOSE */
    bool shut_wr;        /* shutdown(SHUT_WR) done after host CLOSE */
    queue_t to_guest;    /* DATA from the host not yet written to fd */
    /* restore bookkeeping: the request bytes of the current turn */
    bool resp_started;   /* host bytes arrived after the last request bytes */
    bool pending_over;   /* the current turn outgrew PENDING_MAX */
    size_t pending_len;
    uint8_t *pending;    /* PENDING_MAX bytes, allocated on first use */
} stream_t;

static struct {
    int port;            /* the host channel */
    bool port_down;      /* read gave EOF: no host connected; poll it slowly */
    struct timespec port_retry; /* when to look at a down port again */
    vmproto_decoder_t dec;
    queue_t out;         /* whole frames toward the host */
    int listen_fd;
    int sig_fd;
    int log_fd;          /* read end of the runtime's stdout+stderr; -1 before START/after EOF */
    stream_t *streams;
    unsigned n_streams;
    uint32_t next_id;
    bool started;        /* START was handled */
    pid_t runtime;       /* 0 before START and after the runtime was reaped */
    bool runtime_done;   /* the runtime was reaped: status is valid */
    int status;
    bool exit_sent;
    struct timespec exit_deadline;
    bool faulted;
} A = {.port = -1, .listen_fd = -1, .sig_fd = -1, .log_fd = -1, .next_id = 1};

/* ----------------------------------------------------------- messages */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    static const char pfx[] = "flicker-agent: ";
    (void)!write(2, pfx, sizeof pfx - 1);
    (void)!write(2, buf, (size_t)n);
}

static long ms_until(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (t->tv_sec - now.tv_sec) * 1000 + (t->tv_nsec - now.tv_nsec) / 1000000;
}

/* Queues one frame toward the host. */
static void send_frame(uint8_t type, uint32_t stream, const void *payload, uint32_t len)
{
    chunk_t *c = chunk_new(VMPROTO_HDR + (size_t)len);
    vmproto_put_hdr(c->data, type, stream, len);
    if (len)
        memcpy(c->data + VMPROTO_HDR, payload, len);
    c->stream = stream;
    c->type = type;
    q_push(&A.out, c);
}

/* Waits (at most ms) until the out queue is written.  Used only on the way
 * to a reboot. */
static void flush_out_blocking(int ms)
{
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += ms / 1000;
    end.tv_nsec += (long)(ms % 1000) * 1000000;
    if (end.tv_nsec >= 1000000000) {
        end.tv_sec++;
        end.tv_nsec -= 1000000000;
    }
    while (A.port >= 0 && A.out.head && ms_until(&end) > 0) {
        if (q_flush(&A.out, A.port, false) < 0)
            return;
        if (!A.out.head)
            return;
        struct pollfd p = {A.port, POLLOUT, 0};
        long left = ms_until(&end);
        if (poll(&p, 1, left > 20 ? 20 : (int)(left > 0 ? left : 1)) < 0 && errno != EINTR)
            return;
    }
}

/* Reports an unrecoverable error as FAULT (when the port is open), then
 * reboots, which ends the VM. */
static void fault(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fault(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    say("FAULT: %s", msg);
    if (A.port >= 0) {
        send_frame(VM_FAULT, 0, msg, (uint32_t)strlen(msg));
        flush_out_blocking(2000);
    }
    sync();
    reboot(RB_AUTOBOOT);
    for (;;)
        pause();
}

/* ---------------------------------------------------------- setup */

static int mount_at(const char *src, const char *dst, const char *type, unsigned long flags,
                    const char *opts)
{
    mkdir(dst, 0755); /* usually there already (read-only root) */
    if (mount(src, dst, type, flags, opts) == 0)
        return 0;
    return -1;
}

static void ensure_std_fds(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        int n = open("/dev/null", O_RDWR);
        if (n >= 0 && n != fd) {
            dup2(n, fd);
            close(n);
        }
    }
}

/* Reads a small file into buf (NUL-terminated, trailing newline cut).
 * Returns its length or -1. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        buf[--n] = 0;
    return n;
}

/* Finds the port named VMPROTO_PORT_NAME and opens it; unlinks its device
 * node so no later process can open it.  Returns the fd or -1. */
static int open_port(void)
{
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += PORT_WAIT_MS / 1000;
    do {
        DIR *d = opendir("/sys/class/virtio-ports");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char path[300], name[64];
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
            if (read_small(path, name, sizeof name) < 0 || strcmp(name, VMPROTO_PORT_NAME))
                continue;
            char dev[300];
            snprintf(dev, sizeof dev, "/dev/%s", e->d_name);
            int fd = open(dev, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
            if (fd < 0) {
                say("open %s: %s", dev, strerror(errno));
                continue; /* the node may not be there yet */
            }
            closedir(d);
            unlink(dev);
            return fd;
        }
        if (d)
            closedir(d);
        usleep(2000);
    } while (ms_until(&end) > 0);
    return -1;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void setup_mounts_early(void)
{
    const unsigned long NSD = MS_NOSUID | MS_NODEV;
    if (mount_at("proc", "/proc", "proc", NSD | MS_NOEXEC, NULL) < 0 && errno != EBUSY)
        say("mount /proc: %s", strerror(errno));
    if (mount_at("sysfs", "/sys", "sysfs", NSD | MS_NOEXEC, NULL) < 0 && errno != EBUSY)
        say("mount /sys: %s", strerror(errno));
    /* CONFIG_DEVTMPFS_MOUNT mounted it already; EBUSY then. */
    if (!exists("/dev/null") && mount_at("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0)
        say("mount /dev: %s", strerror(errno));
    ensure_std_fds();
}

static void setup_mounts(void)
{
    const unsigned long NSD = MS_NOSUID | MS_NODEV;
    if (mount_at("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666") < 0)
        fault("mount /dev/pts: %s", strerror(errno));
    if (mount_at("shm", "/dev/shm", "tmpfs", NSD, "mode=1777,size=64m") < 0)
        fault("mount /dev/shm: %s", strerror(errno));
    static const char *const links[][2] = {{"/proc/self/fd", "/dev/fd"},
                                           {"/proc/self/fd/0", "/dev/stdin"},
                                           {"/proc/self/fd/1", "/dev/stdout"},
                                           {"/proc/self/fd/2", "/dev/stderr"}};
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0 && errno != EEXIST)
            fault("symlink %s: %s", links[i][1], strerror(errno));
    /* Agent state (the boot id file): root only. */
    if (mount_at("run", "/run", "tmpfs", NSD | MS_NOEXEC, "mode=0700,size=64k") < 0)
        fault("mount /run: %s", strerror(errno));
    if (mkdir("/run/flicker", 0700) < 0 && errno != EEXIST)
        fault("mkdir /run/flicker: %s", strerror(errno));

    if (exists("/dev/vdb")) {
        if (mount_at("/dev/vdb", "/var/task", "erofs", MS_RDONLY | NSD, NULL) < 0)
            fault("mount /dev/vdb (erofs) on /var/task: %s", strerror(errno));
    } else {
        say("no /dev/vdb: /var/task stays empty");
    }
    if (exists("/dev/vdc")) {
        if (mount_at("/dev/vdc", "/tmp", "ext4", NSD, NULL) < 0)
            fault("mount /dev/vdc (ext4) on /tmp: %s", strerror(errno));
        /* Whoever made the filesystem, the function must be able to use it. */
        if (chmod("/tmp", 01777) < 0)
            fault("chmod /tmp: %s", strerror(errno));
    } else if (mount_at("tmp", "/tmp", "tmpfs", NSD, TMPFS_TMP_OPTS) < 0) {
        fault("mount tmpfs on /tmp: %s", strerror(errno));
    }
    if (sethostname("localhost", 9) < 0)
        say("sethostname: %s", strerror(errno));
}

static void setup_network(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        fault("socket: %s", strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        fault("SIOCGIFFLAGS lo: %s", strerror(errno));
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        fault("SIOCSIFFLAGS lo: %s", strerror(errno));
    close(s);

    /* Bound before the runtime exists, so it cannot take the port itself. */
    A.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (A.listen_fd < 0)
        fault("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(A.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(API_PORT)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(A.listen_fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        fault("bind 127.0.0.1:%d: %s", API_PORT, strerror(errno));
    if (listen(A.listen_fd, 128) < 0)
        fault("listen: %s", strerror(errno));
}

static void setup_signals(void)
{
    /* PID 1 gets only signals it handles; SIGCHLD is taken via signalfd,
     * SIGPIPE never matters (sockets use MSG_NOSIGNAL, EPIPE is handled). */
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    A.sig_fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (A.sig_fd < 0)
        fault("signalfd: %s", strerror(errno));
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!write(fd, "-1000", 5);
        close(fd);
    }
}

/* ------------------------------------------------------------ runtime */

static void child_fail(const char *what)
{
    char buf[256];
    int n = snprintf(buf, sizeof buf, "flicker-agent: %s: %s\n", what, strerror(errno));
    if (n > 0)
        (void)!write(2, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
    _exit(127);
}

/* In the forked child: become the function's unprivileged identity, exec. */
static void exec_runtime(char **argv, char **envp, int out_fd) __attribute__((noreturn));
static void exec_runtime(char **argv, char **envp, int out_fd)
{
    int nul = open("/dev/null", O_RDONLY);
    if (nul < 0 || dup2(nul, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0)
        _exit(127);
    if (syscall(SYS_close_range, 3, ~0U, 0) < 0)
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
    if (setsid() < 0)
        child_fail("setsid");
    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    if (fd < 0 || write(fd, "0", 1) != 1)
        child_fail("oom_score_adj");
    close(fd);
    struct rlimit nofile = {1024, 1024}, core = {1, 1};
    if (setrlimit(RLIMIT_NOFILE, &nofile) < 0)
        child_fail("setrlimit(NOFILE)");
    if (setrlimit(RLIMIT_CORE, &core) < 0)
        child_fail("setrlimit(CORE)");
    for (int cap = 0; cap <= 63; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
            child_fail("PR_CAPBSET_DROP");
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
        child_fail("PR_CAP_AMBIENT_CLEAR_ALL");
    if (setgroups(0, NULL) < 0)
        child_fail("setgroups");
    if (setresgid(SBX_GID, SBX_GID, SBX_GID) < 0)
        child_fail("setresgid");
    if (setresuid(SBX_UID, SBX_UID, SBX_UID) < 0)
        child_fail("setresuid");
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &hdr, data) < 0)
        child_fail("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail("PR_SET_NO_NEW_PRIVS");
    if (chdir("/var/task") < 0 && chdir("/") < 0)
        child_fail("chdir");
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(argv[0], argv, envp);
    int e = errno;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "flicker-agent: exec %s: %s\n", argv[0], strerror(e));
    if (n > 0)
        (void)!write(2, buf, (size_t)(n < (int)sizeof buf ? n : (int)sizeof buf - 1));
    _exit(e == ENOENT ? 127 : 126);
}

static void handle_start(const vmproto_frame_t *f)
{
    if (A.started)
        fault("protocol: a second START");
    if (f->stream != 0)
        fault("protocol: START on stream %u", f->stream);
    char **argv, **envp;
    if (vmproto_decode_start(f->payload, f->len, &argv, &envp) < 0)
        fault("protocol: malformed START payload (%u bytes)", f->len);
    if (!argv[0][0] || argv[0][0] != '/')
        fault("START: the program must be an absolute path, got \"%.200s\"", argv[0]);
    for (size_t i = 0; envp[i]; i++)
        if (!strchr(envp[i], '='))
            fault("START: environment entry without '=': \"%.200s\"", envp[i]);
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        fault("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        fault("fork: %s", strerror(errno));
    if (pid == 0)
        exec_runtime(argv, envp, p[1]);
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    A.log_fd = p[0];
    A.runtime = pid;
    A.started = true;
    vmproto_free_start(argv, envp);
}

static uint32_t oom_kills(void)
{
    char buf[8192];
    int fd = open("/proc/vmstat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    size_t have = 0;
    ssize_t n;
    while (have < sizeof buf - 1 && (n = read(fd, buf + have, sizeof buf - 1 - have)) > 0)
        have += (size_t)n;
    close(fd);
    buf[have] = 0;
    for (char *line = buf; line && *line;) {
        if (!strncmp(line, "oom_kill ", 9))
            return (uint32_t)strtoul(line + 9, NULL, 10);
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

static void reap_children(void)
{
    struct signalfd_siginfo si;
    while (read(A.sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
        ;
    for (;;) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG | __WALL);
        if (p <= 0)
            break;
        if (p == A.runtime) {
            A.runtime = 0;
            A.runtime_done = true;
            A.status = status;
            /* Like the sandbox, whose pid namespace dies with its init:
             * nothing the function started outlives it. */
            kill(-1, SIGKILL);
            clock_gettime(CLOCK_MONOTONIC, &A.exit_deadline);
            A.exit_deadline.tv_sec += EXIT_DRAIN_MS / 1000;
        }
    }
}

static void maybe_send_exit(void)
{
    if (!A.runtime_done || A.exit_sent)
        return;
    if (A.log_fd >= 0 && ms_until(&A.exit_deadline) > 0)
        return; /* the pipe still has writers or bytes: wait for its end */
    uint8_t p[8];
    vmproto_encode_exit(p, A.status, oom_kills());
    send_frame(VM_EXIT, 0, p, sizeof p);
    A.exit_sent = true;
}

static void read_log(void)
{
    uint8_t buf[IO_CHUNK];
    ssize_t n = read(A.log_fd, buf, sizeof buf);
    if (n > 0) {
        send_frame(VM_LOG, 0, buf, (uint32_t)n);
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(A.log_fd);
        A.log_fd = -1;
    }
}

/* ------------------------------------------------------------ streams */

static stream_t *stream_find(uint32_t id)
{
    for (stream_t *s = A.streams; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

static void stream_free(stream_t *s)
{
    for (stream_t **pp = &A.streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    if (s->fd >= 0)
        close(s->fd);
    q_clear(&s->to_guest);
    free(s->pending);
    free(s);
    A.n_streams--;
}

/* The runtime's side of s ended (EOF, error): tell the host once. */
static void stream_guest_gone(stream_t *s, bool socket_dead)
{
    if (!s->sent_close) {
        send_frame(VM_CLOSE, s->id, NULL, 0);
        s->sent_close = true;
    }
    if (socket_dead && s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
        q_clear(&s->to_guest);
    }
    if (s->host_closed && (s->fd < 0 || s->to_guest.bytes == 0))
        stream_free(s);
}

static void accept_streams(void)
{
    while (A.n_streams < MAX_STREAMS) {
        int fd = accept4(A.listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (!A.next_id)
            fault("stream ids exhausted");
        stream_t *s = calloc(1, sizeof *s);
        if (!s)
            fault("out of memory");
        s->fd = fd;
        s->id = A.next_id++;
        s->next = A.streams;
        A.streams = s;
        A.n_streams++;
        send_frame(VM_OPEN, s->id, NULL, 0);
    }
}

/* Bytes the runtime sent on s: forward, and remember them for a replay
 * after a restore while no response byte has come back. */
static void stream_note_request(stream_t *s, const uint8_t *p, size_t n)
{
    if (s->resp_started) { /* a new request turn */
        s->resp_started = false;
        s->pending_over = false;
        s->pending_len = 0;
    }
    if (s->pending_over)
        return;
    if (s->pending_len + n > PENDING_MAX) {
        s->pending_over = true;
        s->pending_len = 0;
        return;
    }
    if (!s->pending && !(s->pending = malloc(PENDING_MAX)))
        fault("out of memory");
    memcpy(s->pending + s->pending_len, p, n);
    s->pending_len += n;
}

static void stream_read(stream_t *s)
{
    uint8_t buf[IO_CHUNK];
    ssize_t n = recv(s->fd, buf, sizeof buf, 0);
    if (n > 0) {
        stream_note_request(s, buf, (size_t)n);
        send_frame(VM_DATA, s->id, buf, (uint32_t)n);
    } else if (n == 0) {
        /* The first EOF keeps the socket for the host's remaining bytes; we
         * get here again only through POLLHUP/POLLERR (POLLIN is no longer
         * asked for), and then the connection is dead. */
        stream_guest_gone(s, s->host_closed || s->sent_close);
    } else if (errno != EAGAIN && errno != EINTR) {
        stream_guest_gone(s, true);
    }
}

static void stream_write(stream_t *s)
{
    if (q_flush(&s->to_guest, s->fd, true) < 0) {
        stream_guest_gone(s, true);
        return;
    }
    if (s->host_closed && !s->to_guest.head && !s->shut_wr) {
        shutdown(s->fd, SHUT_WR);
        s->shut_wr = true;
        if (s->sent_close)
            stream_free(s);
    }
}

static void handle_stream_frame(const vmproto_frame_t *f)
{
    if (f->stream == 0 || f->stream >= A.next_id)
        fault("protocol: %s for stream %u, which the agent never opened",
              f->type == VM_DATA ? "DATA" : "CLOSE", f->stream);
    stream_t *s = stream_find(f->stream);
    if (!s)
        return; /* already gone here: the host's frame crossed our CLOSE */
    if (s->host_closed)
        fault("protocol: %s for stream %u after the host closed it",
              f->type == VM_DATA ? "DATA" : "CLOSE", f->stream);
    if (f->type == VM_DATA) {
        if (!f->len)
            return;
        s->resp_started = true;
        s->pending_over = false;
        s->pending_len = 0;
        if (s->fd < 0)
            return; /* the runtime's side is dead: drop */
        chunk_t *c = chunk_new(f->len);
        memcpy(c->data, f->payload, f->len);
        q_push(&s->to_guest, c);
        stream_write(s);
    } else {
        s->host_closed = true;
        if (s->fd < 0) {
            stream_free(s);
            return;
        }
        stream_write(s); /* shuts the write side once the queue is empty */
    }
}

/* ------------------------------------------------------------ restore */

static void restore_entropy(const uint8_t *seed)
{
    int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fault("RESTORE: open /dev/urandom: %s", strerror(errno));
    union {
        struct rand_pool_info info;
        uint8_t raw[sizeof(struct rand_pool_info) + 32];
    } u;
    u.info.entropy_count = 32 * 8;
    u.info.buf_size = 32;
    memcpy(u.raw + sizeof(struct rand_pool_info), seed, 32);
    if (ioctl(fd, RNDADDENTROPY, &u.info) < 0)
        fault("RESTORE: RNDADDENTROPY: %s", strerror(errno));
    if (ioctl(fd, RNDRESEEDCRNG) < 0)
        fault("RESTORE: RNDRESEEDCRNG: %s", strerror(errno));
    close(fd);
}

/* Writes the new boot id where BOOT_ID_PATH shows it.  The first restore
 * bind-mounts BOOT_ID_FILE over it; later ones rewrite the file in place
 * (same length), which the bind mount shows. */
static void restore_boot_id(const uint8_t *raw)
{
    uint8_t u[16];
    memcpy(u, raw, 16);
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* version 4, as the kernel makes it */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    char text[40];
    snprintf(text, sizeof text,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x\n", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
             u[15]);
    bool mounted = exists(BOOT_ID_FILE);
    int fd = open(BOOT_ID_FILE, O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
    if (fd < 0)
        fault("RESTORE: open %s: %s", BOOT_ID_FILE, strerror(errno));
    if (pwrite(fd, text, 37, 0) != 37 || ftruncate(fd, 37) < 0)
        fault("RESTORE: write %s: %s", BOOT_ID_FILE, strerror(errno));
    close(fd);
    if (!mounted && mount(BOOT_ID_FILE, BOOT_ID_PATH, NULL, MS_BIND, NULL) < 0)
        fault("RESTORE: bind %s over %s: %s", BOOT_ID_FILE, BOOT_ID_PATH, strerror(errno));
}

/* The wall clock stood still in the snapshot: take it from the RTC. */
static void restore_clock(void)
{
    int fd = open("/dev/rtc0", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct rtc_time rt;
    if (ioctl(fd, RTC_RD_TIME, &rt) == 0) {
        struct tm tm = {.tm_sec = rt.tm_sec, .tm_min = rt.tm_min, .tm_hour = rt.tm_hour,
                        .tm_mday = rt.tm_mday, .tm_mon = rt.tm_mon, .tm_year = rt.tm_year};
        struct timeval tv = {.tv_sec = timegm(&tm), .tv_usec = 0};
        if (tv.tv_sec > 0 && settimeofday(&tv, NULL) < 0)
            say("settimeofday: %s", strerror(errno));
    }
    close(fd);
}

static void handle_restore(const vmproto_frame_t *f)
{
    if (f->stream != 0 || f->len != VMPROTO_RESTORE_LEN)
        fault("protocol: RESTORE with stream %u and %u bytes (want 0 and %u)", f->stream, f->len,
              VMPROTO_RESTORE_LEN);
    restore_entropy(f->payload);
    restore_boot_id(f->payload + 32);
    restore_clock();

    /* Frames of streams still queued were for the host before the
     * snapshot; LOG and EXIT keep their place.  A frame already partly
     * written is finished (its start is in the channel). */
    queue_t keep = {0};
    while (A.out.head) {
        chunk_t *c = A.out.head;
        A.out.head = c->next;
        bool stream_frame = c->type == VM_OPEN || c->type == VM_DATA || c->type == VM_CLOSE;
        if (stream_frame && c->off == 0)
            free(c);
        else
            q_push(&keep, c);
    }
    A.out = keep;

    stream_t *old = A.streams;
    A.streams = NULL;
    A.n_streams = 0;
    while (old) {
        stream_t *s = old;
        old = s->next;
        A.n_streams++;
        s->next = A.streams;
        A.streams = s;
        bool replay = s->fd >= 0 && !s->sent_close && !s->host_closed && !s->resp_started &&
                      !s->pending_over && s->to_guest.bytes == 0;
        if (!replay) {
            if (s->fd >= 0)
                shutdown(s->fd, SHUT_RDWR);
            stream_free(s);
            continue;
        }
        s->id = A.next_id++;
        send_frame(VM_OPEN, s->id, NULL, 0);
        if (s->pending_len)
            send_frame(VM_DATA, s->id, s->pending, (uint32_t)s->pending_len);
    }
    send_frame(VM_RESTORED, 0, NULL, 0);
}

/* ------------------------------------------------------------ the port */

/* CLOCK: the host's wall clock, sent before START and after RESTORE (we
 * announced VMPROTO_FEATURE_CLOCK).  The guest's own clock comes from the
 * CMOS RTC in whole seconds, or from the moment of the snapshot. */
static void handle_clock(const vmproto_frame_t *f)
{
    int64_t ns;
    if (f->stream != 0 || vmproto_decode_clock(f->payload, f->len, &ns) < 0 || ns <= 0)
        fault("protocol: malformed CLOCK frame");
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};
    if (clock_settime(CLOCK_REALTIME, &ts) < 0)
        say("clock_settime: %s", strerror(errno));
}

static void handle_frame(const vmproto_frame_t *f)
{
    switch (f->type) {
    case VM_START:
        handle_start(f);
        break;
    case VM_DATA:
    case VM_CLOSE:
        handle_stream_frame(f);
        break;
    case VM_RESTORE:
        handle_restore(f);
        break;
    case VM_CLOCK:
        handle_clock(f);
        break;
    default:
        fault("protocol: frame type %u is not one the host sends", f->type);
    }
}

static bool streams_backlogged(void)
{
    for (stream_t *s = A.streams; s; s = s->next)
        if (s->to_guest.bytes > STREAM_BUF_MAX)
            return true;
    return false;
}

static void read_port(void)
{
    uint8_t buf[IO_CHUNK];
    ssize_t n = read(A.port, buf, sizeof buf);
    if (n == 0) {
        /* No host on the other end (yet, or any more): poll() would report
         * POLLHUP at once, so leave the port out of it for PORT_RETRY_MS. */
        A.port_down = true;
        clock_gettime(CLOCK_MONOTONIC, &A.port_retry);
        A.port_retry.tv_nsec += PORT_RETRY_MS * 1000000L;
        if (A.port_retry.tv_nsec >= 1000000000L) {
            A.port_retry.tv_sec++;
            A.port_retry.tv_nsec -= 1000000000L;
        }
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        fault("read from the host port: %s", strerror(errno));
    }
    A.port_down = false;
    size_t off = 0;
    while (off < (size_t)n) {
        size_t used;
        vmproto_frame_t f;
        int r = vmproto_feed(&A.dec, buf + off, (size_t)n - off, &used, &f);
        off += used;
        if (r < 0)
            fault("protocol: malformed frame header from the host");
        if (r == 0)
            break;
        handle_frame(&f);
    }
}

/* ------------------------------------------------------------ main */

enum { P_PORT, P_LISTEN, P_SIG, P_LOG, P_FIXED };

static void loop(void)
{
    struct pollfd *pfd = NULL;
    stream_t **who = NULL;
    size_t cap = 0;
    for (;;) {
        size_t need = P_FIXED + A.n_streams;
        if (need > cap) {
            cap = need * 2;
            pfd = realloc(pfd, cap * sizeof *pfd);
            who = realloc(who, cap * sizeof *who);
            if (!pfd || !who)
                fault("out of memory");
        }
        bool out_full = A.out.bytes > OUT_HIGH;
        int timeout = -1;
        if (A.port_down) {
            long left = ms_until(&A.port_retry);
            if (left <= 0)
                A.port_down = false; /* look at the port again */
            else
                timeout = (int)left;
        }
        pfd[P_PORT] = (struct pollfd){A.port_down ? -1 : A.port, 0, 0};
        if (!streams_backlogged())
            pfd[P_PORT].events |= POLLIN;
        if (A.out.head)
            pfd[P_PORT].events |= POLLOUT;
        pfd[P_LISTEN] = (struct pollfd){
            out_full || A.n_streams >= MAX_STREAMS ? -1 : A.listen_fd, POLLIN, 0};
        pfd[P_SIG] = (struct pollfd){A.sig_fd, POLLIN, 0};
        pfd[P_LOG] = (struct pollfd){out_full ? -1 : A.log_fd, POLLIN, 0};
        size_t n = P_FIXED;
        for (stream_t *s = A.streams; s; s = s->next) {
            if (s->fd < 0)
                continue;
            short ev = 0;
            if (!s->sent_close && !out_full)
                ev |= POLLIN;
            if (s->to_guest.head)
                ev |= POLLOUT;
            who[n] = s;
            pfd[n++] = (struct pollfd){s->fd, ev, 0};
        }
        if (A.runtime_done && !A.exit_sent) {
            long left = ms_until(&A.exit_deadline);
            if (left < 0)
                left = 0;
            if (timeout < 0 || left < timeout)
                timeout = (int)left;
        }
        int r = poll(pfd, n, timeout);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fault("poll: %s", strerror(errno));
        }

        if (pfd[P_SIG].revents)
            reap_children();
        if (pfd[P_PORT].revents & (POLLIN | POLLHUP))
            read_port();
        /* Stream fds were collected before the port was read: a frame may
         * have freed a stream, so look them up again by id. */
        for (size_t i = P_FIXED; i < n; i++) {
            if (!pfd[i].revents)
                continue;
            stream_t *s;
            for (s = A.streams; s && s != who[i]; s = s->next)
                ;
            if (!s || s->fd != pfd[i].fd)
                continue;
            uint32_t id = s->id;
            if (pfd[i].revents & POLLOUT)
                stream_write(s);
            if (!(s = stream_find(id)) || s->fd < 0)
                continue;
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                stream_read(s);
        }
        if (pfd[P_LISTEN].revents & POLLIN)
            accept_streams();
        if (A.log_fd >= 0 && (pfd[P_LOG].revents & (POLLIN | POLLHUP | POLLERR)))
            read_log();
        maybe_send_exit();
        if (A.out.head && !A.port_down && q_flush(&A.out, A.port, false) < 0 && errno != ENODEV)
            fault("write to the host port: %s", strerror(errno));
    }
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (getpid() != 1) {
        fprintf(stderr, "flicker-agent: must run as PID 1 of a flicker microVM\n");
        return 2;
    }
    setenv("PATH", "/usr/bin:/bin:/usr/sbin:/sbin", 1);
    umask(022);
    setup_mounts_early();
    A.port = open_port();
    if (A.port < 0) {
        say("no virtio-serial port named %s after %d ms", VMPROTO_PORT_NAME, PORT_WAIT_MS);
        fault("no host port");
    }
    setup_signals();
    setup_mounts();
    setup_network();
    /* version, then the features we implement */
    uint32_t ver = VMPROTO_VERSION, features = VMPROTO_FEATURE_CLOCK;
    uint8_t v[8] = {ver & 0xff, (ver >> 8) & 0xff, (ver >> 16) & 0xff, (ver >> 24) & 0xff,
                    features & 0xff, (features >> 8) & 0xff, (features >> 16) & 0xff,
                    (features >> 24) & 0xff};
    send_frame(VM_HELLO, 0, v, sizeof v);
    loop();
}
