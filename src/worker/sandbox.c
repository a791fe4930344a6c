/* sandbox.c - Linux namespace + cgroup + seccomp sandboxes (see sandbox.h).
 *
 * How a sandbox is created (sandbox_create):
 *  1. The parent (worker) creates the sandbox's cgroups with their limits,
 *     takes a /tmp image (ephemeral.c: an ext4 filesystem on a loop device,
 *     as a detached mount fd, owned by the sandbox's uid 993; or, without
 *     loop devices, /tmp will be a tmpfs),
 *     an output pipe, a SOCK_SEQPACKET socketpair for synchronisation, and
 *     precomputes everything the child will do as a list of steps (all
 *     strings formatted here: the child never allocates, because it shares
 *     the memory of a possibly multi-threaded process).
 *  2. clone() with CLONE_VM on a private stack (no copy of the worker's page
 *     tables, so the cost does not grow with the worker's size), exit signal
 *     0 (no SIGCHLD), CLONE_NEWUSER, NEWNS, NEWPID, NEWIPC, NEWUTS, NEWNET.
 *     The child blocks on the socket.
 *  3. The parent writes uid_map/gid_map ("0 <base> 65536": sandbox root is
 *     an unprivileged host uid from a per-sandbox range, uid 993 inside is
 *     base+993), moves the child into the cgroups, opens a pidfd, and sends
 *     "go".
 *  4. The child (still host root's credentials, which are unmapped inside):
 *     opens the bind sources (so root-owned 0700 parents of code_dir are
 *     traversable); becomes uid 0 of its namespace; clears supplementary
 *     groups (hence setgroups is left "allow": the host gid 0 inherited from
 *     the worker must be dropped, which "deny" would forbid; nothing that
 *     runs later has CAP_SETGID); unshares a cgroup namespace rooted at its
 *     own cgroup; sets the hostname; brings lo up; creates the listening
 *     socket 127.0.0.1:9001 and passes it over the socketpair (SCM_RIGHTS);
 *     builds the new root on a tmpfs (see the step list in build_steps;
 *     /tmp is the worker's detached mount, placed with move_mount);
 *     remounts it read-only; pivot_root; detaches the old root; sets
 *     stdin=/dev/null, stdout=stderr=output pipe; no_new_privs; seccomp
 *     filter; closes every other fd; execs /init (flicker-init), whose
 *     argv[1..] is spec->argv and whose environment is spec->envp.
 *     Any failure is reported over the socket ({errno, what}) and the child
 *     exits; on success the CLOEXEC socket closes at exec (EOF).
 *  5. The parent receives the listening socket, waits for EOF, applies the
 *     CPU quota (after setup so setup itself is never throttled), done.
 *
 * Life of a sandbox (states are implicit; the function making each move):
 *
 *   (none) --sandbox_create--> RUNNING <--sandbox_freeze / sandbox_thaw--> FROZEN
 *   RUNNING --PID 1 exits (pidfd readable), sandbox_reap--> EXITED
 *   any state --sandbox_destroy--> (freed: processes killed, cgroups removed,
 *                                   /tmp image detached and deleted)
 *
 * The child must stay async-signal-safe, write only its stack and its
 * child_args_t, and must not use glibc wrappers that assume glibc's view of
 * the process's threads (setuid family: use raw syscalls), since it runs in
 * the memory of a possibly multi-threaded worker (see child_entry).
 *
 * Invariants: every mount is made in the child's mount namespace, or (/tmp)
 * made detached by the worker and moved there: none is ever in the host's
 * namespace, so nothing there to clean up; the /tmp image file and its loop
 * device live exactly as long as the sandbox (sandbox_destroy deletes the
 * file; autoclear has detached the device); nothing in the sandbox ever
 * runs with a host uid of 0 after step 4; sb->pid is our child, reaped only
 * through its pidfd (waitid P_PIDFD, __WALL), so a worker's waitpid(-1)
 * (which lacks __WALL) does not steal it; on any create failure the child
 * is killed and reaped, the cgroups are removed and the /tmp image is
 * released. */
#include "worker/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <grp.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/sched.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
/* The setup child's frames never return (it execs), so the redzones ASan
 * poisons in them would outlive it in the shadow of a reused stack address;
 * clear them around each use. */
#define STACK_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define STACK_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
/* Code run by the setup child on its private stack: not instrumented by
 * ASan, which cannot follow a CLONE_VM child's stack switch. */
#define CHILD_CODE __attribute__((no_sanitize_address))

#include "common/slots.h"
#include "common/log.h"
#include "common/util.h"
#include "worker/cgroup.h"
#include "worker/ephemeral.h"
#include "worker/seccomp_filter.h"

#define ROLE "sandbox"
/* sandbox_freeze waits this long for every task to stop. */
#define FREEZE_WAIT_MS 10000

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

enum {
    UID_BASE = 0x40000000u, /* host uids of sandboxes: [UID_BASE, UID_BASE + NSLOTS*65536) */
    UID_RANGE = 65536,
    NSLOTS = 8192,
    API_PORT = 9001,
    CPU_PERIOD_US = 100000,
    SETUP_TIMEOUT_MS = 10000,
    CHILD_STACK = 512 * 1024, /* the setup child's stack (ASan frames are big) */
};

/* ------------------------------------------------------------ globals */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_inited;
static cgroup_root_t g_root;
static struct sock_fprog g_filter;
static char *g_init_path;
static unsigned char g_slot_bits[NSLOTS / 8];
static slot_set_t g_slots = SLOT_SET_INIT(g_slot_bits, NSLOTS, 61);
static atomic_int g_count;

struct sandbox {
    char *id;
    pid_t pid;
    int pidfd, api_fd, out_fd;
    int slot;
    bool reaped;
    int status;
    int memory_mb;
    cgroup_t cg;
    bool have_eph; /* /tmp is a disk image (ephemeral.c), released at destroy */
    ephemeral_t eph;
};

/* --------------------------------------------------------- child steps */

enum step_kind {
    ST_MKDIR,    /* dst, mode */
    ST_FILE,     /* dst, data (contents), mode */
    ST_SYMLINK,  /* src = target, dst */
    ST_MOUNT,    /* src, dst, fstype, flags, data */
    ST_BIND,     /* src (path, or the fd of src_slot), dst, flags for the ro/nosuid remount */
    ST_REMOUNT,  /* dst, flags: bind-remount (per-mount flags only) */
    ST_PROC,     /* dst: a new proc, hiding other users' processes if possible */
    ST_MOVE,     /* dst, fd: move the worker's detached mount fd (fsmount) to dst */
};

typedef struct step {
    enum step_kind kind;
    char *src, *dst, *fstype, *data;
    unsigned long flags;
    mode_t mode;
    int src_slot; /* >= 0: use the fd opened in the child before dropping to ns uid */
    int fd;       /* ST_MOVE: a mount fd inherited from the worker */
    bool optional;
} step_t;

enum { SRC_CODE, SRC_RUNTIME, SRC_INIT, NSRC };

typedef struct child_args {
    int sync_fd, out_fd;
    const char *newroot;
    const char *src_path[NSRC]; /* opened O_PATH by the child as host root */
    char fd_path[NSRC][32];     /* "/proc/self/fd/N", filled in the child */
    step_t *steps;
    int nsteps;
    char *const *init_argv;
    char *const *envp;
    const struct sock_fprog *filter;
    int close_in_child[2]; /* the worker's ends of the socketpair and pipe */
} child_args_t;

typedef struct child_error {
    int code;
    char what[240];
} child_error_t;

/* Async-signal-safe string copy. */
CHILD_CODE static void cpy(char *dst, size_t n, const char *a, const char *b) {
    size_t i = 0;
    for (; a && *a && i + 1 < n; a++) dst[i++] = *a;
    for (; b && *b && i + 1 < n; b++) dst[i++] = *b;
    dst[i] = 0;
}

CHILD_CODE static __attribute__((noreturn)) void child_fail(const child_args_t *a, const char *what, const char *arg) {
    child_error_t e;
    memset(&e, 0, sizeof(e));
    e.code = errno;
    cpy(e.what, sizeof(e.what), what, arg);
    ssize_t r = send(a->sync_fd, &e, sizeof(e), MSG_NOSIGNAL);
    (void)r;
    _exit(111);
}

CHILD_CODE static unsigned long locked_flags(const char *path) {
    struct statfs sf;
    unsigned long f = 0;
    if (statfs(path, &sf) < 0) return 0;
    if (sf.f_flags & ST_NOSUID) f |= MS_NOSUID;
    if (sf.f_flags & ST_NODEV) f |= MS_NODEV;
    if (sf.f_flags & ST_NOEXEC) f |= MS_NOEXEC;
    if (sf.f_flags & ST_NOATIME) f |= MS_NOATIME;
    if (sf.f_flags & ST_NODIRATIME) f |= MS_NODIRATIME;
    if (sf.f_flags & ST_RELATIME) f |= MS_RELATIME;
    if (sf.f_flags & ST_RDONLY) f |= MS_RDONLY;
    return f;
}

CHILD_CODE static void run_step(const child_args_t *a, const step_t *s) {
    switch (s->kind) {
    case ST_MKDIR:
        if (mkdir(s->dst, s->mode) < 0 && errno != EEXIST) child_fail(a, "mkdir ", s->dst);
        if (chmod(s->dst, s->mode) < 0) child_fail(a, "chmod ", s->dst);
        return;
    case ST_FILE: {
        int fd = open(s->dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, s->mode);
        if (fd < 0) child_fail(a, "create ", s->dst);
        size_t len = s->data ? strlen(s->data) : 0;
        if (len && write(fd, s->data, len) != (ssize_t)len) child_fail(a, "write ", s->dst);
        close(fd);
        return;
    }
    case ST_SYMLINK:
        if (symlink(s->src, s->dst) < 0) child_fail(a, "symlink ", s->dst);
        return;
    case ST_MOUNT:
        if (mount(s->src, s->dst, s->fstype, s->flags, s->data) < 0) {
            if (s->optional) return;
            child_fail(a, "mount ", s->dst);
        }
        return;
    case ST_BIND: {
        const char *src = s->src_slot >= 0 ? a->fd_path[s->src_slot] : s->src;
        if (mount(src, s->dst, NULL, MS_BIND, NULL) < 0) {
            if (s->optional) return;
            child_fail(a, "bind mount ", s->dst);
        }
        /* Flags locked by the original mount (e.g. nodev) must be kept. */
        unsigned long f = MS_BIND | MS_REMOUNT | s->flags | locked_flags(s->dst);
        if (mount(NULL, s->dst, NULL, f, NULL) < 0) child_fail(a, "remount ", s->dst);
        return;
    }
    case ST_PROC: {
        /* hidepid=invisible (5.8+), else hidepid=2, else none. */
        const unsigned long f = MS_NOSUID | MS_NODEV | MS_NOEXEC;
        if (mount("proc", s->dst, "proc", f, "hidepid=invisible") == 0) return;
        if (mount("proc", s->dst, "proc", f, "hidepid=2") == 0) return;
        if (mount("proc", s->dst, "proc", f, NULL) < 0) child_fail(a, "mount ", s->dst);
        return;
    }
    case ST_REMOUNT: {
        unsigned long f = MS_BIND | MS_REMOUNT | s->flags | locked_flags(s->dst);
        if (mount(NULL, s->dst, NULL, f, NULL) < 0) child_fail(a, "remount ", s->dst);
        return;
    }
    case ST_MOVE:
        if (move_mount(s->fd, "", AT_FDCWD, s->dst, MOVE_MOUNT_F_EMPTY_PATH) < 0) child_fail(a, "move_mount ", s->dst);
        return;
    }
}

CHILD_CODE static int move_fd_high(int fd, bool cloexec) {
    return fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 64);
}

/* The sandbox's setup process (PID 1 of the new pid namespace until it
 * execs flicker-init).  Never returns. */
CHILD_CODE static __attribute__((noreturn)) void child_main(child_args_t *a) {
    char go;
    /* 1. Wait for the parent: maps written, cgroups joined. */
    if (recv(a->sync_fd, &go, 1, 0) != 1 || go != 'G') _exit(112);

    umask(022); /* the worker's umask must not shape the jail's files */
    /* 2. Open bind sources with the host credentials we still carry. */
    int srcfd[NSRC];
    for (int i = 0; i < NSRC; i++) {
        srcfd[i] = -1;
        if (!a->src_path[i]) continue;
        srcfd[i] = open(a->src_path[i], O_PATH | O_CLOEXEC);
        if (srcfd[i] < 0) child_fail(a, "open ", a->src_path[i]);
        /* "/proc/self/fd/" + number, by hand (no stdio in the child). */
        char num[16];
        int n = 0, v = srcfd[i];
        do num[n++] = (char)('0' + v % 10); while ((v /= 10) && n < 15);
        char *p = a->fd_path[i];
        cpy(p, sizeof(a->fd_path[i]), "/proc/self/fd/", NULL);
        size_t l = strlen(p);
        while (n) p[l++] = num[--n];
        p[l] = 0;
    }

    /* 3. Become root of the user namespace (an unprivileged host uid).
     * Raw syscalls: glibc's wrappers broadcast credential changes to every
     * thread it believes exists, and after a raw clone of a multi-threaded
     * worker those threads are not here, so the wrappers would hang. */
    if (syscall(SYS_setresgid, 0, 0, 0) < 0) child_fail(a, "setresgid", NULL);
    if (syscall(SYS_setresuid, 0, 0, 0) < 0) child_fail(a, "setresuid", NULL);
    if (syscall(SYS_setgroups, 0, NULL) < 0) child_fail(a, "setgroups", NULL);
    /* Our cgroup namespace is rooted at the sandbox's own cgroup. */
    if (unshare(CLONE_NEWCGROUP) < 0) child_fail(a, "unshare(CLONE_NEWCGROUP)", NULL);
    if (sethostname("localhost", 9) < 0) child_fail(a, "sethostname", NULL);

    /* 4. Network: loopback up, the Runtime API listening socket. */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) child_fail(a, "socket", NULL);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    cpy(ifr.ifr_name, sizeof(ifr.ifr_name), "lo", NULL);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) child_fail(a, "SIOCGIFFLAGS lo", NULL);
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) child_fail(a, "SIOCSIFFLAGS lo", NULL);
    close(s);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0) child_fail(a, "socket", NULL);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(API_PORT);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sin, sizeof(sin)) < 0) child_fail(a, "bind 127.0.0.1:9001", NULL);
    if (listen(ls, 128) < 0) child_fail(a, "listen", NULL);
    {
        char tag = 'S';
        struct iovec iov = {&tag, 1};
        union {
            struct cmsghdr h;
            char buf[CMSG_SPACE(sizeof(int))];
        } cm;
        memset(&cm, 0, sizeof(cm));
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof(cm.buf)};
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &ls, sizeof(int));
        if (sendmsg(a->sync_fd, &mh, MSG_NOSIGNAL) != 1) child_fail(a, "sendmsg listening socket", NULL);
        close(ls);
    }

    /* 5. Filesystem. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) child_fail(a, "make / private", NULL);
    for (int i = 0; i < a->nsteps; i++) run_step(a, &a->steps[i]);
    for (int i = 0; i < NSRC; i++)
        if (srcfd[i] >= 0) close(srcfd[i]);
    if (chdir(a->newroot) < 0) child_fail(a, "chdir ", a->newroot);
    if (syscall(SYS_pivot_root, ".", ".") < 0) child_fail(a, "pivot_root", NULL);
    if (umount2(".", MNT_DETACH) < 0) child_fail(a, "detach old root", NULL);
    if (chdir("/") < 0) child_fail(a, "chdir /", NULL);

    /* 6. stdio: 0 = /dev/null, 1 = 2 = output pipe; sync socket at 3
     * (close-on-exec), everything else closed. */
    int sync_hi = move_fd_high(a->sync_fd, true);
    int out_hi = move_fd_high(a->out_fd, false);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (sync_hi < 0 || out_hi < 0 || null < 0) child_fail(a, "stdio setup", NULL);
    a->sync_fd = sync_hi;
    if (dup2(null, 0) < 0 || dup2(out_hi, 1) < 0 || dup2(out_hi, 2) < 0 || dup3(sync_hi, 3, O_CLOEXEC) < 0)
        child_fail(a, "dup2", NULL);
    a->sync_fd = 3;
    if (syscall(SYS_close_range, 4, ~0U, 0) < 0) {
        for (int fd = 4; fd < 1024; fd++) close(fd);
    }

    /* 7. Lock down and start init. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) child_fail(a, "PR_SET_NO_NEW_PRIVS", NULL);
    if (seccomp_filter_install(a->filter) < 0) child_fail(a, "seccomp", NULL);
    execve("/init", a->init_argv, a->envp);
    child_fail(a, "exec /init", NULL);
}

/* clone() entry point.  The child shares the worker's memory until it
 * execs (CLONE_VM) but has its own fd table, credentials, fs_struct and
 * namespaces.  It writes only to its own stack and to *a (which the worker
 * leaves alone until the child has exec'd or died), never allocates, takes no
 * lock, and uses glibc only for plain syscall wrappers.  The one shared thing
 * it may touch is errno, which lives in the creating thread's TLS: that thread
 * only waits meanwhile, and reads errno only right after its own failures. */
CHILD_CODE static int child_entry(void *arg) {
    child_args_t *a = arg;
    close(a->close_in_child[0]);
    close(a->close_in_child[1]);
    child_main(a);
}

/* ---------------------------------------------------------- step list */

typedef struct steps {
    step_t *v;
    int n, cap;
} steps_t;

static step_t *add(steps_t *s, enum step_kind kind, char *dst) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->v = xrealloc(s->v, (size_t)s->cap * sizeof(step_t));
    }
    step_t *st = &s->v[s->n++];
    memset(st, 0, sizeof(*st));
    st->kind = kind;
    st->dst = dst;
    st->src_slot = -1;
    st->fd = -1;
    return st;
}

static void free_steps(steps_t *s) {
    for (int i = 0; i < s->n; i++) {
        free(s->v[i].src);
        free(s->v[i].dst);
        free(s->v[i].fstype);
        free(s->v[i].data);
    }
    free(s->v);
}

static void s_mkdir(steps_t *s, const char *r, const char *path, mode_t mode) {
    add(s, ST_MKDIR, xasprintf("%s%s", r, path))->mode = mode;
}

static void s_file(steps_t *s, const char *r, const char *path, const char *data) {
    step_t *st = add(s, ST_FILE, xasprintf("%s%s", r, path));
    st->data = data ? xstrdup(data) : NULL;
    st->mode = 0644;
}

static void s_mount(steps_t *s, const char *r, const char *path, const char *fstype, unsigned long flags,
                    const char *data) {
    step_t *st = add(s, ST_MOUNT, xasprintf("%s%s", r, path));
    st->src = xstrdup(fstype);
    st->fstype = xstrdup(fstype);
    st->flags = flags;
    st->data = data ? xstrdup(data) : NULL;
}

/* Read-only bind of host path (if it exists) at the same path in the root;
 * the mount point is created as a file or directory to match. */
static void s_bind_host(steps_t *s, const char *r, const char *path, unsigned long flags) {
    struct stat st;
    if (stat(path, &st) < 0) return;
    if (S_ISDIR(st.st_mode))
        s_mkdir(s, r, path, 0755);
    else
        s_file(s, r, path, NULL);
    step_t *b = add(s, ST_BIND, xasprintf("%s%s", r, path));
    b->src = xstrdup(path);
    b->flags = MS_RDONLY | MS_NOSUID | MS_NODEV | flags;
}

static const char PASSWD[] =
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "sbx_user1051:x:993:993::/home/sbx_user1051:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
static const char GROUP[] = "root:x:0:\nsbx_user1051:x:993:\nnogroup:x:65534:\n";
static const char HOSTS[] = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
static const char NSSWITCH[] =
    "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
    "protocols: files\nservices: files\nethers: files\nrpc: files\n";

/* The whole root filesystem, in order.  r is the new root's mount point;
 * tmp_fd is the detached mount for /tmp (ephemeral.c), or -1 for a tmpfs. */
static void build_steps(steps_t *s, const char *r, const sandbox_spec_t *spec, int tmp_fd) {
    const unsigned long NOSUIDDEV = MS_NOSUID | MS_NODEV;
    /* The root holds only directories, symlinks, generated /etc files and
     * mount points: noexec (/usr, /var/task, /var/runtime, /tmp and /init are
     * mounts of their own and keep exec). */
    s_mount(s, "", r, "tmpfs", NOSUIDDEV | MS_NOEXEC, "size=1m,nr_inodes=4096,mode=0755");

    /* /usr and the merged-/usr symlinks. */
    s_bind_host(s, r, "/usr", 0);
    static const char *const merged[] = {"bin", "sbin", "lib", "lib64", "lib32", "libx32"};
    for (size_t i = 0; i < ARRAY_LEN(merged); i++) {
        _cleanup_free_ char *u = xasprintf("/usr/%s", merged[i]);
        struct stat st;
        if (stat(u, &st) < 0) continue;
        step_t *l = add(s, ST_SYMLINK, xasprintf("%s/%s", r, merged[i]));
        l->src = xasprintf("usr/%s", merged[i]);
    }

    /* /etc: generated, plus a few read-only host files. */
    s_mkdir(s, r, "/etc", 0755);
    s_file(s, r, "/etc/passwd", PASSWD);
    s_file(s, r, "/etc/group", GROUP);
    s_file(s, r, "/etc/hosts", HOSTS);
    s_file(s, r, "/etc/hostname", "localhost\n");
    s_file(s, r, "/etc/nsswitch.conf", NSSWITCH);
    s_file(s, r, "/etc/resolv.conf", "");
    s_bind_host(s, r, "/etc/ld.so.cache", MS_NOEXEC);
    s_bind_host(s, r, "/etc/localtime", MS_NOEXEC);
    s_bind_host(s, r, "/etc/alternatives", MS_NOEXEC);
    struct stat st;
    if (stat("/etc/ssl", &st) == 0) s_mkdir(s, r, "/etc/ssl", 0755);
    s_bind_host(s, r, "/etc/ssl/certs", MS_NOEXEC);
    s_bind_host(s, r, "/etc/ssl/openssl.cnf", MS_NOEXEC);

    /* /dev: a small tmpfs with the harmless character devices. */
    s_mkdir(s, r, "/dev", 0755);
    s_mount(s, r, "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755");
    static const char *const devs[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < ARRAY_LEN(devs); i++) {
        _cleanup_free_ char *p = xasprintf("/dev/%s", devs[i]);
        if (stat(p, &st) < 0) continue;
        s_file(s, r, p, NULL);
        step_t *b = add(s, ST_BIND, xasprintf("%s%s", r, p));
        b->src = xstrdup(p);
        b->flags = MS_NOSUID | MS_NOEXEC;
    }
    s_mkdir(s, r, "/dev/shm", 01777);
    static const char *const links[][2] = {{"/proc/self/fd", "/dev/fd"},
                                           {"/proc/self/fd/0", "/dev/stdin"},
                                           {"/proc/self/fd/1", "/dev/stdout"},
                                           {"/proc/self/fd/2", "/dev/stderr"}};
    for (size_t i = 0; i < ARRAY_LEN(links); i++) {
        step_t *l = add(s, ST_SYMLINK, xasprintf("%s%s", r, links[i][1]));
        l->src = xstrdup(links[i][0]);
    }
    {
        _cleanup_free_ char *d = xasprintf("%s/dev", r);
        step_t *rm = add(s, ST_REMOUNT, xstrdup(d));
        rm->flags = MS_RDONLY | MS_NOSUID | MS_NOEXEC;
    }
    s_mount(s, r, "/dev/shm", "tmpfs", NOSUIDDEV | MS_NOEXEC, "size=64m,mode=1777");

    /* /proc: a fresh one for the new pid namespace, other users' processes
     * hidden; older kernels spell it hidepid=2, very old ones lack it. */
    s_mkdir(s, r, "/proc", 0555);
    add(s, ST_PROC, xasprintf("%s/proc", r));

    s_mkdir(s, r, "/sys", 0555);
    s_mkdir(s, r, "/opt", 0755);
    s_mkdir(s, r, "/root", 0700);
    s_mkdir(s, r, "/home", 0755);
    s_mkdir(s, r, "/var", 0755);
    s_mkdir(s, r, "/var/task", 0755);
    step_t *b = add(s, ST_BIND, xasprintf("%s/var/task", r));
    b->src_slot = SRC_CODE;
    b->flags = MS_RDONLY | NOSUIDDEV;
    s_mkdir(s, r, "/var/runtime", 0755);
    if (spec->runtime_dir) {
        b = add(s, ST_BIND, xasprintf("%s/var/runtime", r));
        b->src_slot = SRC_RUNTIME;
        b->flags = MS_RDONLY | NOSUIDDEV;
    }
    s_mkdir(s, r, "/tmp", 01777);
    if (tmp_fd >= 0) {
        /* ext4 on a loop device, mounted nosuid,nodev by the worker. */
        add(s, ST_MOVE, xasprintf("%s/tmp", r))->fd = tmp_fd;
    } else {
        _cleanup_free_ char *tmpopts =
            xasprintf("size=%dm,mode=1777", spec->ephemeral_mb > 0 ? spec->ephemeral_mb : 512);
        s_mount(s, r, "/tmp", "tmpfs", NOSUIDDEV, tmpopts);
    }
    s_file(s, r, "/init", NULL);
    b = add(s, ST_BIND, xasprintf("%s/init", r));
    b->src_slot = SRC_INIT;
    b->flags = MS_RDONLY | NOSUIDDEV;
    /* Finally the root itself read-only. */
    step_t *rr = add(s, ST_REMOUNT, xstrdup(r));
    rr->flags = MS_RDONLY | NOSUIDDEV | MS_NOEXEC;
}

/* ---------------------------------------------------------- system init */

int sandbox_system_init(const char *init_path, const char *state_dir, err_t *err) {
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    if (g_inited) goto out;
    struct stat st;
    if (stat(init_path, &st) < 0) {
        rc = err_sys(err, "flicker-init %s", init_path);
        goto out;
    }
    if (!S_ISREG(st.st_mode) || !(st.st_mode & S_IXOTH)) {
        rc = err_set(err, EACCES, "flicker-init %s must be a regular file executable by others", init_path);
        goto out;
    }
    if (seccomp_filter_build(&g_filter, err) < 0) {
        rc = -1;
        goto out;
    }
    if (cgroup_root_init(&g_root, err) < 0) {
        seccomp_filter_free(&g_filter);
        rc = -1;
        goto out;
    }
    /* After the cgroup sweep: a dead instance's sandboxes are killed, so
     * their /tmp images are unmounted and their loop devices detached. */
    if (state_dir) {
        _cleanup_free_ char *inst = cgroup_instance_name();
        if (ephemeral_init(state_dir, inst, err) < 0) {
            cgroup_root_fini(&g_root);
            seccomp_filter_free(&g_filter);
            rc = -1;
            goto out;
        }
    } else {
        log_warn(ROLE, "no state directory: /tmp is tmpfs and counts as memory");
    }
    g_init_path = realpath(init_path, NULL);
    if (!g_init_path) g_init_path = xstrdup(init_path);
    g_inited = true;
    log_info(ROLE, "sandbox backend ready: cgroup %s, parent %s", g_root.ops->version, g_root.parent[0]);
out:
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void sandbox_system_shutdown(void) {
    pthread_mutex_lock(&g_lock);
    if (g_inited) {
        if (atomic_load(&g_count) != 0) log_warn(ROLE, "shutdown with %d sandboxes alive", atomic_load(&g_count));
        ephemeral_shutdown();
        cgroup_root_fini(&g_root);
        seccomp_filter_free(&g_filter);
        free(g_init_path);
        g_init_path = NULL;
        g_inited = false;
    }
    pthread_mutex_unlock(&g_lock);
}

const char *sandbox_cgroup_version(void) { return g_inited ? g_root.ops->version : "none"; }

int sandbox_count(void) { return atomic_load(&g_count); }

static bool valid_id(const char *id) {
    size_t n = id ? strlen(id) : 0;
    if (n < 1 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* ---------------------------------------------------------- create */

static int write_map(pid_t pid, const char *file, unsigned base, err_t *err) {
    char path[64], line[64];
    snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
    snprintf(line, sizeof(line), "0 %u %u\n", base, (unsigned)UID_RANGE);
    return write_str(path, line, err);
}

/* Receives one message from the child: the listening socket ('S' with
 * SCM_RIGHTS), an error report, or EOF.  Returns 1 (fd in *fd), 0 (EOF),
 * -1/err (error reported or timeout). */
static int recv_child(int sync, int *fd, uint64_t deadline, err_t *err) {
    for (;;) {
        int64_t left = (int64_t)(deadline - now_mono_ms());
        if (left <= 0) return err_set(err, ETIMEDOUT, "sandbox setup timed out");
        struct pollfd p = {sync, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return err_sys(err, "poll");
        if (r == 0) continue;
        union {
            child_error_t e;
            char tag;
        } buf;
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } cm;
        struct iovec iov = {&buf, sizeof(buf)};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.b, .msg_controllen = sizeof(cm.b)};
        ssize_t n = recvmsg(sync, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return err_sys(err, "recvmsg from sandbox");
        if (n == 0) return 0;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        if (n == 1 && buf.tag == 'S' && c && c->cmsg_type == SCM_RIGHTS) {
            memcpy(fd, CMSG_DATA(c), sizeof(int));
            return 1;
        }
        if (n == (ssize_t)sizeof(child_error_t)) {
            buf.e.what[sizeof(buf.e.what) - 1] = 0;
            return err_set(err, buf.e.code, "sandbox setup: %s: %s", buf.e.what, strerror(buf.e.code));
        }
        return err_set(err, EPROTO, "sandbox setup: unexpected message");
    }
}

static void kill_and_reap(pid_t pid) {
    kill(pid, SIGKILL);
    siginfo_t si;
    while (waitid(P_PID, (id_t)pid, &si, WEXITED | __WALL) < 0 && errno == EINTR) {
    }
}

int sandbox_create(const sandbox_spec_t *spec, sandbox_t **out, err_t *err) {
    *out = NULL;
    if (!g_inited) return err_set(err, EINVAL, "sandbox_system_init not called");
    if (!valid_id(spec->id)) return err_set(err, EINVAL, "bad sandbox id");
    if (!spec->code_dir || !spec->argv || !spec->argv[0] || spec->memory_mb <= 0)
        return err_set(err, EINVAL, "bad sandbox spec");

    sandbox_t *sb = xcalloc(1, sizeof(*sb));
    sb->id = xstrdup(spec->id);
    sb->pid = -1;
    sb->pidfd = sb->api_fd = sb->out_fd = -1;
    sb->cg.peak_fd = -1;
    sb->slot = slot_take(&g_slots);
    int sv[2] = {-1, -1}, pipefd[2] = {-1, -1};
    steps_t steps = {0};
    char **init_argv = NULL;
    bool have_cg = false;
    void *stack = NULL;
    if (sb->slot < 0) {
        err_set(err, EAGAIN, "no free uid range");
        goto fail;
    }

    cgroup_limits_t lim = {
        .memory_bytes = (uint64_t)spec->memory_mb << 20,
        .cpu_period_us = CPU_PERIOD_US,
        .cpu_quota_us = 0, /* set after setup, see step 5 */
        .pids_max = spec->pids_max > 0 ? spec->pids_max : 1024,
    };
    if (g_root.ops->create(&g_root, spec->id, &lim, &sb->cg, err) < 0) goto fail;
    have_cg = true;

    unsigned base = UID_BASE + (unsigned)sb->slot * UID_RANGE;
    if (ephemeral_enabled()) {
        /* /tmp belongs to the function's user (993 inside). */
        if (ephemeral_acquire(spec->ephemeral_mb, base + 993, base + 993, &sb->eph, err) < 0) goto fail;
        sb->have_eph = true;
    }

    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        err_sys(err, "socketpair");
        goto fail;
    }
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        err_sys(err, "pipe2");
        goto fail;
    }

    /* Everything the child needs, computed here. */
    char newroot[] = "/tmp";
    build_steps(&steps, newroot, spec, sb->have_eph ? sb->eph.mount_fd : -1);
    size_t argc = 0;
    while (spec->argv[argc]) argc++;
    init_argv = xcalloc(argc + 2, sizeof(char *));
    init_argv[0] = "flicker-init";
    for (size_t i = 0; i < argc; i++) init_argv[i + 1] = spec->argv[i];
    static char *const empty_env[] = {NULL};
    child_args_t ca = {
        .sync_fd = sv[1],
        .out_fd = pipefd[1],
        .newroot = newroot,
        .src_path = {spec->code_dir, spec->runtime_dir, g_init_path},
        .steps = steps.v,
        .nsteps = steps.n,
        .init_argv = init_argv,
        .envp = spec->envp ? spec->envp : empty_env,
        .filter = &g_filter,
    };

    ca.close_in_child[0] = sv[0];
    ca.close_in_child[1] = pipefd[0];
    /* CLONE_VM: no copy of the worker's page tables (a fork of a worker with
     * 500 MB resident costs ~25 ms; this costs the same at any size).  The
     * child runs on its own stack until it execs, which gives it its own
     * address space; see child_entry for what it may touch. */
    stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        stack = NULL;
        err_sys(err, "mmap child stack");
        goto fail;
    }
    STACK_UNPOISON(stack, CHILD_STACK);
    mprotect(stack, 4096, PROT_NONE); /* guard page */
    int flags = CLONE_VM | CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
    pid_t pid = clone(child_entry, (char *)stack + CHILD_STACK, flags, &ca);
    if (pid < 0) {
        err_sys(err, "clone");
        goto fail;
    }
    sb->pid = pid;
    close(sv[1]);
    sv[1] = -1;
    close(pipefd[1]);
    pipefd[1] = -1;

    if (write_map(pid, "uid_map", base, err) < 0 || write_map(pid, "gid_map", base, err) < 0) goto fail;
    if (g_root.ops->attach(&sb->cg, pid, err) < 0) goto fail;
    sb->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (sb->pidfd < 0) {
        err_sys(err, "pidfd_open");
        goto fail;
    }
    fcntl(sb->pidfd, F_SETFD, FD_CLOEXEC);
    if (send(sv[0], "G", 1, MSG_NOSIGNAL) != 1) {
        err_sys(err, "start sandbox");
        goto fail;
    }
    uint64_t deadline = now_mono_ms() + SETUP_TIMEOUT_MS;
    int r = recv_child(sv[0], &sb->api_fd, deadline, err);
    if (r == 0) err_set(err, EPROTO, "sandbox setup exited early");
    if (r <= 0) goto fail;
    int dummy = -1;
    r = recv_child(sv[0], &dummy, deadline, err);
    if (r == 1) {
        close(dummy);
        err_set(err, EPROTO, "sandbox setup: unexpected fd");
        goto fail;
    }
    if (r < 0) goto fail;
    /* EOF: /init is executing (in its own address space: the stack is free),
     * unless the setup child died of a signal (a crash reports nothing). */
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid((idtype_t)P_PIDFD, (id_t)sb->pidfd, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0 &&
        si.si_pid == pid && (si.si_code == CLD_KILLED || si.si_code == CLD_DUMPED)) {
        err_set(err, ECHILD, "sandbox setup died of signal %d", si.si_status);
        goto fail;
    }
    STACK_UNPOISON(stack, CHILD_STACK);
    munmap(stack, CHILD_STACK);
    stack = NULL;
    /* /tmp is now held by the sandbox's mount namespace alone. */
    if (sb->have_eph) ephemeral_drop_mount(&sb->eph);
    sb->memory_mb = spec->memory_mb;
    if (!spec->defer_cpu_limit && sandbox_apply_cpu_limit(sb, err) < 0) goto fail;
    fcntl(pipefd[0], F_SETFL, O_NONBLOCK);
    sb->out_fd = pipefd[0];
    pipefd[0] = -1;
    close(sv[0]);
    free_steps(&steps);
    free(init_argv);
    atomic_fetch_add(&g_count, 1);
    *out = sb;
    return 0;

fail:
    err_wrap(err, "sandbox %s", spec->id);
    if (sb->pid > 0) kill_and_reap(sb->pid);
    if (stack) { /* the child is gone */
        STACK_UNPOISON(stack, CHILD_STACK);
        munmap(stack, CHILD_STACK);
    }
    if (have_cg) g_root.ops->remove(&sb->cg, NULL);
    if (sb->have_eph) ephemeral_release(&sb->eph, NULL);
    for (int i = 0; i < 2; i++) {
        if (sv[i] >= 0) close(sv[i]);
        if (pipefd[i] >= 0) close(pipefd[i]);
    }
    if (sb->pidfd >= 0) close(sb->pidfd);
    if (sb->api_fd >= 0) close(sb->api_fd);
    free_steps(&steps);
    free(init_argv);
    slot_give(&g_slots, sb->slot);
    free(sb->id);
    free(sb);
    return -1;
}

/* ---------------------------------------------------------- accessors */

int sandbox_api_fd(const sandbox_t *sb) { return sb->api_fd; }
int sandbox_output_fd(const sandbox_t *sb) { return sb->out_fd; }
int sandbox_pidfd(const sandbox_t *sb) { return sb->pidfd; }
pid_t sandbox_pid(const sandbox_t *sb) { return sb->pid; }

int sandbox_reap(sandbox_t *sb, int *status, err_t *err) {
    if (sb->reaped) {
        if (status) *status = sb->status;
        return 1;
    }
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid((idtype_t)P_PIDFD, (id_t)sb->pidfd, &si, WEXITED | WNOHANG | __WALL) < 0) {
        if (errno == EINTR) return 0;
        return err_sys(err, "waitid sandbox %s", sb->id);
    }
    if (si.si_pid == 0) return 0;
    sb->reaped = true;
    sb->status = si.si_code == CLD_EXITED ? W_EXITCODE(si.si_status, 0) : W_EXITCODE(0, si.si_status);
    if (si.si_code == CLD_DUMPED) sb->status |= 0x80;
    if (status) *status = sb->status;
    return 1;
}

int sandbox_signal(sandbox_t *sb, int sig, err_t *err) {
    if (sb->reaped) return err_set(err, ESRCH, "sandbox %s has exited", sb->id);
    if (syscall(SYS_pidfd_send_signal, sb->pidfd, sig, NULL, 0) < 0)
        return err_sys(err, "signal sandbox %s", sb->id);
    return 0;
}

int sandbox_apply_cpu_limit(sandbox_t *sb, err_t *err)
{
    uint64_t quota = cgroup_cpu_quota(sb->memory_mb, CPU_PERIOD_US);
    return g_root.ops->set_cpu(&sb->cg, quota, CPU_PERIOD_US, err);
}

int sandbox_freeze(sandbox_t *sb, err_t *err) {
    int rc = g_root.ops->freeze(&sb->cg, true, FREEZE_WAIT_MS, err);
    return rc > 0 ? err_set(err, ETIMEDOUT, "sandbox %s did not freeze in %d ms", sb->id, FREEZE_WAIT_MS) : rc;
}
int sandbox_freeze_within(sandbox_t *sb, int wait_ms, err_t *err) {
    return g_root.ops->freeze(&sb->cg, true, wait_ms, err);
}
int sandbox_thaw(sandbox_t *sb, err_t *err) { return g_root.ops->freeze(&sb->cg, false, 0, err); }
uint64_t sandbox_memory_peak(sandbox_t *sb) { return g_root.ops->memory_peak(&sb->cg); }
void sandbox_reset_peak(sandbox_t *sb) { g_root.ops->reset_peak(&sb->cg); }
int sandbox_oom_kills(sandbox_t *sb) { return g_root.ops->oom_kills(&sb->cg); }

int sandbox_destroy(sandbox_t *sb, err_t *err) {
    if (!sb) return 0;
    int rc = 0;
    /* SIGKILL PID 1 through its pidfd (no pid-reuse race), thaw (frozen
     * tasks die only when thawed), reap it: its death makes the kernel kill
     * the rest of the pid namespace, and every process of the sandbox is in
     * that namespace.  The cgroup sweep afterwards is a safety net. */
    if (!sb->reaped) {
        syscall(SYS_pidfd_send_signal, sb->pidfd, SIGKILL, NULL, 0);
        g_root.ops->freeze(&sb->cg, false, 0, NULL);
        siginfo_t si;
        while (waitid((idtype_t)P_PIDFD, (id_t)sb->pidfd, &si, WEXITED | __WALL) < 0 && errno == EINTR) {
        }
        sb->reaped = true;
    }
    if (g_root.ops->kill_all(&sb->cg, 5000, err) < 0) rc = -1;
    if (g_root.ops->remove(&sb->cg, rc < 0 ? NULL : err) < 0) rc = -1;
    /* PID 1 is reaped, so the mount namespace holding /tmp is gone. */
    if (sb->have_eph && ephemeral_release(&sb->eph, rc < 0 ? NULL : err) < 0) rc = -1;
    if (rc < 0) log_warn(ROLE, "sandbox %s: destroy incomplete: %s", sb->id, err ? err->msg : "?");
    if (sb->pidfd >= 0) close(sb->pidfd);
    if (sb->api_fd >= 0) close(sb->api_fd);
    if (sb->out_fd >= 0) close(sb->out_fd);
    slot_give(&g_slots, sb->slot);
    free(sb->id);
    free(sb);
    atomic_fetch_sub(&g_count, 1);
    return rc;
}
