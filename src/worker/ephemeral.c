/* ephemeral.c - disk-backed /tmp for sandboxes (see ephemeral.h).
 *
 * Layout: <state_dir>/ephemeral/<instance>/img-<seq>.img, 0600 root,
 * sparse.  Pool: per size, a list of prepared images (ephemeral_t with its
 * mount fd); the pool thread keeps `want` of each size ready (512 MiB: 2,
 * always; other sizes: 1, once asked for; at most NPOOLS sizes, the least
 * recently used evicted).
 *
 * Prepare (pool thread, or acquire on a miss): sparse file + mke2fs ->
 * open -> LOOP_CTL_GET_FREE -> LOOP_CONFIGURE (autoclear, direct I/O when
 * the backing fs allows it; else LOOP_SET_FD + LOOP_SET_STATUS64) ->
 * fsopen("ext4") + fsconfig(source, noinit_itable) + fsmount(nosuid,
 * nodev) -> lost+found removed, root 01777 -> every fd closed but the mount
 * fd.  From then on the mount holds the block device and the loop device
 * holds the file: when the last reference to the mount goes (the mount fd
 * is closed and the sandbox's mount namespace, where the setup child moved
 * it, dies), ext4 releases the device and autoclear detaches the loop
 * device.  Acquire pops an image and chowns its root to the sandbox's uid.
 * Release checks the detach (sysfs backing_file; clears it if needed) and
 * deletes the file.  Nothing is ever mounted in the host's namespace.
 *
 * Crash recovery (ephemeral_init): directories "sbx-<pid>-<starttime>" of
 * dead instances (cgroup_instance_stale) are swept: mounts in our mount
 * namespace of loop devices backed by their files are detached, such loop
 * devices are cleared, the directory is removed.  Live instances' and
 * foreign entries are never touched. */
#include "worker/ephemeral.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "worker/cgroup.h"

#define ROLE "sandbox"

extern char **environ;

enum {
    NPOOLS = 4,           /* distinct sizes kept warm */
    POOL_MAX = 4,         /* ready images per size, at most */
    POOL_WANT_DEFAULT = 2, /* for 512 MiB, Lambda's default */
    POOL_WANT_OTHER = 1,
    DEFAULT_MB = 512,
    DETACH_WAIT_MS = 2000,
};

typedef struct pool {
    int size_mb; /* 0: unused slot */
    int want;
    ephemeral_t ready[POOL_MAX]; /* attached and mounted, root prepared */
    int nready;
    uint64_t used_at;
} pool_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static bool g_on, g_stop, g_thread_up, g_nodio;
static pthread_t g_thread;
static char *g_base;  /* <state_dir>/ephemeral (real path) */
static char *g_dir;   /* <g_base>/<instance> */
static const char *g_mke2fs;
static int g_loopctl = -1;
static unsigned g_seq;
static pool_t g_pools[NPOOLS];

bool ephemeral_enabled(void) { return g_on; }

/* ---------------------------------------------------------- formatting */

static char *new_image_path(void) {
    pthread_mutex_lock(&g_mu);
    unsigned n = ++g_seq;
    pthread_mutex_unlock(&g_mu);
    return xasprintf("%s/img-%u.img", g_dir, n);
}

static int run_tool(char *const argv[], err_t *err);

/* Creates a sparse file of size_mb MiB at a new path and formats it. */
static char *format_image(int size_mb, err_t *err) {
    char *path = new_image_path();
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        err_sys(err, "create %s", path);
        free(path);
        return NULL;
    }
    if (ftruncate(fd, (off_t)size_mb << 20) < 0) {
        err_sys(err, "truncate %s", path);
        close(fd);
        goto fail;
    }
    close(fd);
    /* No journal (scratch space), no reserved blocks (all of it is the
     * function's), 4 KiB blocks and one inode per 16 KiB whatever the size
     * ("-T default": mke2fs's "small" type would spend 6 % on inodes),
     * inode tables and journal left for lazy init (the file is sparse:
     * they read as zeros; mounted with noinit_itable), no discard pass. */
    char *argv[] = {(char *)g_mke2fs, "-q", "-F", "-t", "ext4", "-T", "default", "-O", "^has_journal", "-m", "0",
                    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", path, NULL};
    if (run_tool(argv, err) < 0) goto fail;
    return path;
fail:
    unlink(path);
    free(path);
    return NULL;
}

/* Runs an e2fsprogs tool (stdin, stdout on /dev/null) and waits for it. */
static int run_tool(char *const argv[], err_t *err) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawnattr_init(&at);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, &at, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc != 0) {
        errno = rc;
        return err_sys(err, "spawn %s", argv[0]);
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return err_sys(err, "waitpid %s", argv[0]);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        int n = 0;
        while (argv[n + 1]) n++;
        return err_set(err, EIO, "%s %s failed (status %d)", argv[0], argv[n], st);
    }
    return 0;
}

/* ---------------------------------------------------------- pool */

static pool_t *pool_find(int size_mb) {
    for (int i = 0; i < NPOOLS; i++)
        if (g_pools[i].size_mb == size_mb) return &g_pools[i];
    return NULL;
}

static void pool_clear(pool_t *p) {
    for (int i = 0; i < p->nready; i++) ephemeral_release(&p->ready[i], NULL);
    memset(p, 0, sizeof(*p));
}

/* The pool of size_mb, created if needed (evicting the least recently
 * used other size).  Caller holds g_mu. */
static pool_t *pool_get(int size_mb) {
    pool_t *p = pool_find(size_mb);
    if (!p) {
        for (int i = 0; i < NPOOLS && !p; i++)
            if (!g_pools[i].size_mb) p = &g_pools[i];
        for (int i = 0; i < NPOOLS && !p; i++) {
            pool_t *q = &g_pools[i];
            if (q->size_mb == DEFAULT_MB) continue;
            if (!p || q->used_at < p->used_at) p = q;
        }
        pool_clear(p);
        p->size_mb = size_mb;
        p->want = size_mb == DEFAULT_MB ? POOL_WANT_DEFAULT : POOL_WANT_OTHER;
    }
    p->used_at = now_mono_ms();
    return p;
}

static int prepare(int size_mb, ephemeral_t *e, err_t *err);

static void *pool_thread(void *arg) {
    (void)arg;
    pthread_mutex_lock(&g_mu);
    while (!g_stop) {
        pool_t *p = NULL;
        for (int i = 0; i < NPOOLS && !p; i++)
            if (g_pools[i].size_mb && g_pools[i].nready < g_pools[i].want) p = &g_pools[i];
        if (!p) {
            pthread_cond_wait(&g_cv, &g_mu);
            continue;
        }
        int size = p->size_mb;
        pthread_mutex_unlock(&g_mu);
        err_t err = {0};
        uint64_t t0 = now_mono_us();
        ephemeral_t e;
        int r = prepare(size, &e, &err);
        uint64_t took = now_mono_us() - t0;
        pthread_mutex_lock(&g_mu);
        if (r < 0) {
            log_warn(ROLE, "ephemeral pool: %s", err.msg);
            /* Don't spin on a persistent failure. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 5;
            pthread_cond_timedwait(&g_cv, &g_mu, &ts);
            continue;
        }
        log_debug(ROLE, "ephemeral pool: %d MiB image ready in %.1f ms", size, took / 1000.0);
        p = pool_find(size);
        if (p && p->nready < POOL_MAX && !g_stop)
            p->ready[p->nready++] = e;
        else
            ephemeral_release(&e, NULL);
    }
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

/* ---------------------------------------------------------- loop devices */

/* Path the loop device's backing file had, from sysfs, into buf; false if
 * the device is not bound. */
static bool loop_backing(int nr, char *buf, size_t len) {
    char p[80];
    snprintf(p, sizeof(p), "/sys/block/loop%d/loop/backing_file", nr);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n <= 0) return false;
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    return true;
}

/* Clears loop device nr if it is still bound to the file dev/ino (checked
 * through the open device, so a device re-used by someone else meanwhile is
 * left alone).  Busy devices are marked autoclear by the kernel instead. */
static void loop_clear_if(int nr, dev_t dev, ino_t ino) {
    char p[64];
    snprintf(p, sizeof(p), "/dev/loop%d", nr);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct loop_info64 li;
    memset(&li, 0, sizeof(li));
    if (ioctl(fd, LOOP_GET_STATUS64, &li) == 0 && li.lo_device == (uint64_t)dev && li.lo_inode == (uint64_t)ino)
        if (ioctl(fd, LOOP_CLR_FD, 0) < 0) log_warn(ROLE, "LOOP_CLR_FD %s: %s", p, strerror(errno));
    close(fd);
}

/* Binds image fd to a free loop device; returns its number and the open
 * device in *lfd, or -1/err. */
static int loop_attach(int fd, const char *path, int *lfd, err_t *err) {
    for (int attempt = 0; attempt < 32; attempt++) {
        int nr = ioctl(g_loopctl, LOOP_CTL_GET_FREE);
        if (nr < 0) return err_sys(err, "LOOP_CTL_GET_FREE");
        char dev[64];
        snprintf(dev, sizeof(dev), "/dev/loop%d", nr);
        int l = open(dev, O_RDWR | O_CLOEXEC);
        if (l < 0) {
            if (errno == ENOENT) { /* node not created yet */
                usleep(1000);
                continue;
            }
            return err_sys(err, "open %s", dev);
        }
        struct loop_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.fd = (uint32_t)fd;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR | (g_nodio ? 0 : LO_FLAGS_DIRECT_IO);
        snprintf((char *)cfg.info.lo_file_name, sizeof(cfg.info.lo_file_name), "%s", path);
        int r = ioctl(l, LOOP_CONFIGURE, &cfg);
        if (r < 0 && errno == EINVAL && !g_nodio) {
            /* Direct I/O not possible on the backing fs: buffered then. */
            cfg.info.lo_flags &= ~(uint32_t)LO_FLAGS_DIRECT_IO;
            r = ioctl(l, LOOP_CONFIGURE, &cfg);
            if (r == 0) g_nodio = true;
        }
        if (r < 0 && (errno == ENOTTY || errno == EINVAL)) {
            /* Kernel < 5.8: the two-step way. */
            r = ioctl(l, LOOP_SET_FD, fd);
            if (r == 0) {
                struct loop_info64 li = cfg.info;
                li.lo_flags = LO_FLAGS_AUTOCLEAR;
                if (ioctl(l, LOOP_SET_STATUS64, &li) < 0) {
                    int e = errno;
                    ioctl(l, LOOP_CLR_FD, 0);
                    close(l);
                    errno = e;
                    return err_sys(err, "LOOP_SET_STATUS64 %s", dev);
                }
            }
        }
        if (r == 0) {
            *lfd = l;
            return nr;
        }
        int e = errno;
        close(l);
        if (e == EBUSY) continue; /* taken by someone else meanwhile */
        errno = e;
        return err_sys(err, "LOOP_CONFIGURE %s", dev);
    }
    return err_set(err, EBUSY, "no free loop device");
}

/* ---------------------------------------------------------- acquire / release */

/* A new image of size_mb: formatted, attached, mounted detached (nosuid,
 * nodev), its root empty (no lost+found) with mode 01777.  Used by the
 * pool thread, and by ephemeral_acquire when the pool is empty. */
static int prepare(int size_mb, ephemeral_t *e, err_t *err) {
    memset(e, 0, sizeof(*e));
    e->mount_fd = -1;
    e->loop_nr = -1;
    e->image = format_image(size_mb, err);
    if (!e->image) return -1;
    int fd = -1, lfd = -1, fsfd = -1, dfd = -1;
    fd = open(e->image, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        err_sys(err, "open %s", e->image);
        goto fail;
    }
    e->dev = st.st_dev;
    e->ino = st.st_ino;
    e->loop_nr = loop_attach(fd, e->image, &lfd, err);
    if (e->loop_nr < 0) goto fail;
    char dev[64];
    snprintf(dev, sizeof(dev), "/dev/loop%d", e->loop_nr);
    fsfd = fsopen("ext4", FSOPEN_CLOEXEC);
    if (fsfd < 0) {
        err_sys(err, "fsopen ext4");
        goto fail;
    }
    if (fsconfig(fsfd, FSCONFIG_SET_STRING, "source", dev, 0) < 0 ||
        fsconfig(fsfd, FSCONFIG_SET_FLAG, "noinit_itable", NULL, 0) < 0 ||
        fsconfig(fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
        err_sys(err, "mount %s (ext4 on %s)", e->image, dev);
        goto fail;
    }
    e->mount_fd = fsmount(fsfd, FSMOUNT_CLOEXEC, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV);
    if (e->mount_fd < 0) {
        err_sys(err, "fsmount %s", dev);
        goto fail;
    }
    dfd = openat(e->mount_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || (unlinkat(dfd, "lost+found", AT_REMOVEDIR) < 0 && errno != ENOENT) || fchmod(dfd, 01777) < 0) {
        err_sys(err, "prepare root of %s", e->image);
        goto fail;
    }
    close(dfd);
    close(fsfd);
    close(lfd); /* the mount holds the device, the device holds the file */
    close(fd);
    return 0;
fail:
    if (dfd >= 0) close(dfd);
    if (fsfd >= 0) close(fsfd);
    if (lfd >= 0) close(lfd);
    if (fd >= 0) close(fd);
    ephemeral_release(e, NULL);
    return -1;
}

int ephemeral_acquire(int size_mb, uid_t uid, gid_t gid, ephemeral_t *e, err_t *err) {
    memset(e, 0, sizeof(*e));
    e->mount_fd = -1;
    e->loop_nr = -1;
    if (!g_on) return err_set(err, ENOTSUP, "ephemeral storage not initialised");
    if (size_mb <= 0) size_mb = DEFAULT_MB;
    bool hit = false;
    pthread_mutex_lock(&g_mu);
    pool_t *p = pool_get(size_mb);
    if (p->nready) {
        *e = p->ready[--p->nready];
        hit = true;
    }
    pthread_cond_signal(&g_cv);
    pthread_mutex_unlock(&g_mu);
    if (!hit && prepare(size_mb, e, err) < 0) /* pool empty: all of it now */
        return err_wrap(err, "ephemeral storage");
    /* The owner is the only per-sandbox part. */
    if (fchownat(e->mount_fd, "", uid, gid, AT_EMPTY_PATH) < 0) {
        err_sys(err, "ephemeral storage: chown root of %s", e->image);
        ephemeral_release(e, NULL);
        return -1;
    }
    return 0;
}

void ephemeral_drop_mount(ephemeral_t *e) {
    if (e->mount_fd >= 0) close(e->mount_fd);
    e->mount_fd = -1;
}

int ephemeral_release(ephemeral_t *e, err_t *err) {
    int rc = 0;
    ephemeral_drop_mount(e);
    if (e->image && e->loop_nr >= 0) {
        /* The last reference to the filesystem went with the sandbox's
         * mount namespace (or the mount fd just closed): autoclear has
         * normally detached the device already. */
        char back[4096];
        uint64_t deadline = now_mono_ms() + DETACH_WAIT_MS;
        bool bound;
        while ((bound = loop_backing(e->loop_nr, back, sizeof(back)) && strcmp(back, e->image) == 0) &&
               now_mono_ms() < deadline)
            usleep(1000);
        if (bound) {
            loop_clear_if(e->loop_nr, e->dev, e->ino);
            rc = err_set(err, EBUSY, "loop%d still bound to %s; cleared", e->loop_nr, e->image);
        }
    }
    if (e->image && unlink(e->image) < 0 && errno != ENOENT) rc = err_sys(err, "unlink %s", e->image);
    free(e->image);
    memset(e, 0, sizeof(*e));
    e->mount_fd = -1;
    e->loop_nr = -1;
    return rc;
}

/* ---------------------------------------------------------- crash recovery */

/* Unescapes mountinfo's octal escapes (\040 etc.) in place. */
static void unescape(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' && s[3] <= '7') {
            *o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
            s += 3;
        } else {
            *o++ = *s;
        }
    }
    *o = 0;
}

/* Detaches every mount in our namespace whose device is maj:min. */
static void umount_device(unsigned maj, unsigned min) {
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        unsigned a, b;
        char mp[4096];
        if (sscanf(line, "%*d %*d %u:%u %*s %4095s", &a, &b, mp) != 3 || a != maj || b != min) continue;
        unescape(mp);
        if (umount2(mp, MNT_DETACH) == 0)
            log_info(ROLE, "detached stale ephemeral mount %s", mp);
        else
            log_warn(ROLE, "cannot detach stale ephemeral mount %s: %s", mp, strerror(errno));
    }
    free(line);
    fclose(f);
}

/* Loop devices backed by files under dir/: their mounts in our namespace
 * are detached, the devices cleared. */
static void reap_loops_under(const char *dir) {
    size_t dl = strlen(dir);
    DIR *d = opendir("/sys/block");
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        int nr;
        char back[4096];
        if (sscanf(de->d_name, "loop%d", &nr) != 1 || !loop_backing(nr, back, sizeof(back))) continue;
        if (strncmp(back, dir, dl) != 0 || back[dl] != '/') continue;
        char p[80], mm[32] = {0};
        snprintf(p, sizeof(p), "/sys/block/loop%d/dev", nr);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        unsigned maj, min;
        if (fd >= 0 && read(fd, mm, sizeof(mm) - 1) > 0 && sscanf(mm, "%u:%u", &maj, &min) == 2)
            umount_device(maj, min);
        if (fd >= 0) close(fd);
        snprintf(p, sizeof(p), "/dev/loop%d", nr);
        fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            /* Busy (still mounted in a dying sandbox): the kernel marks it
             * autoclear and detaches it when that goes. */
            if (ioctl(fd, LOOP_CLR_FD, 0) == 0) log_info(ROLE, "cleared stale loop device %s (%s)", p, back);
            close(fd);
        }
    }
    closedir(d);
}

static void reap_stale(void) {
    DIR *d = opendir(g_base);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !cgroup_instance_stale(de->d_name)) continue;
        _cleanup_free_ char *sub = xasprintf("%s/%s", g_base, de->d_name);
        log_info(ROLE, "removing stale ephemeral storage %s", sub);
        reap_loops_under(sub);
        err_t err = {0};
        if (rm_rf(sub, &err) < 0) log_warn(ROLE, "%s", err.msg);
    }
    closedir(d);
}

/* ---------------------------------------------------------- init */

static const char *find_tool(const char *const cands[], size_t n) {
    for (size_t i = 0; i < n; i++)
        if (access(cands[i], X_OK) == 0) return cands[i];
    return NULL;
}

static void fini_locked(void) {
    for (int i = 0; i < NPOOLS; i++) pool_clear(&g_pools[i]);
    if (g_loopctl >= 0) close(g_loopctl);
    g_loopctl = -1;
    free(g_base);
    free(g_dir);
    g_base = g_dir = NULL;
    g_on = false;
}

int ephemeral_init(const char *state_dir, const char *instance, err_t *err) {
    if (g_on) return 1;
    _cleanup_free_ char *base = xasprintf("%s/ephemeral", state_dir);
    if (mkdir_p(base, 0700, err) < 0) return err_wrap(err, "ephemeral storage");
    g_base = realpath(base, NULL);
    if (!g_base) return err_sys(err, "realpath %s", base);
    g_dir = xasprintf("%s/%s", g_base, instance);
    reap_stale();

    const char *why = NULL;
    int fd = -1;
    static const char *const mke2fs[] = {"/usr/sbin/mke2fs", "/sbin/mke2fs", "/usr/bin/mke2fs"};
    g_mke2fs = find_tool(mke2fs, ARRAY_LEN(mke2fs));
    if (access("/dev/loop-control", F_OK) < 0)
        why = "no /dev/loop-control";
    else if ((g_loopctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC)) < 0)
        why = "cannot open /dev/loop-control";
    else if (!g_mke2fs)
        why = "mke2fs (e2fsprogs) not found";
    else if ((fd = fsopen("ext4", FSOPEN_CLOEXEC)) < 0)
        why = errno == ENOSYS ? "no fsopen (kernel < 5.2)" : "no ext4 in this kernel";
    if (fd >= 0) close(fd);
    if (why) {
        log_warn(ROLE, "disk-backed /tmp unavailable (%s): /tmp is tmpfs and counts as memory", why);
        fini_locked();
        return 0;
    }
    if (mkdir(g_dir, 0700) < 0 && errno != EEXIST) {
        err_sys(err, "mkdir %s", g_dir);
        fini_locked();
        return -1;
    }
    /* Self-test: format, attach, mount, release one small image, so a host
     * where loop devices exist but do not work falls back at start-up
     * rather than failing every create. */
    g_on = true;
    ephemeral_t t;
    err_t terr = {0};
    if (prepare(16, &t, &terr) < 0) {
        log_warn(ROLE, "disk-backed /tmp unavailable (%s): /tmp is tmpfs and counts as memory", terr.msg);
        rmdir(g_dir);
        fini_locked();
        return 0;
    }
    ephemeral_release(&t, NULL);

    pthread_mutex_lock(&g_mu);
    g_stop = false;
    pool_get(DEFAULT_MB);
    pthread_mutex_unlock(&g_mu);
    /* The pool thread takes no signals (they stay the event loop's). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&g_thread, NULL, pool_thread, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    g_thread_up = rc == 0;
    if (rc != 0) log_warn(ROLE, "ephemeral pool thread: %s (images formatted on demand)", strerror(rc));
    log_info(ROLE, "/tmp: ext4 images on loop devices under %s%s", g_dir, g_nodio ? " (buffered)" : "");
    return 1;
}

void ephemeral_shutdown(void) {
    if (!g_on) return;
    pthread_mutex_lock(&g_mu);
    g_stop = true;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
    if (g_thread_up) pthread_join(g_thread, NULL);
    g_thread_up = false;
    pthread_mutex_lock(&g_mu);
    char *dir = xstrdup(g_dir);
    fini_locked();
    pthread_mutex_unlock(&g_mu);
    if (rm_rf(dir, NULL) < 0) log_warn(ROLE, "cannot remove %s", dir);
    free(dir);
}
