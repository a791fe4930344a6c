/* vmm.c - QEMU in a jail (see vmm.h).
 *
 * Once (vmm_init): find the QEMU binary, ask its ELF interpreter which
 * shared libraries it loads ("ld.so --list"), add the TCG accelerator
 * module QEMU dlopen()s, and turn each of those paths into jail steps that
 * rebuild it inside the jail exactly as on the host: directories,
 * symlinks (e.g. /lib -> usr/lib, libz.so.1 -> libz.so.1.2.13) and a
 * read-only bind mount of the final file.  Every bind source is opened
 * O_PATH now and kept open, so the per-VM child binds "/proc/self/fd/N"
 * and opens nothing by name.
 *
 * Per VM (vmm_spawn):
 *  1. The parent opens the caller's files O_PATH, adds their steps (under
 *     /vm, noexec), and clone()s with CLONE_VM and new mount, pid, ipc,
 *     uts and net namespaces; the child waits on a socketpair.
 *  2. The parent moves the child into the cgroup, opens its pidfd, says go.
 *  3. The child: a cgroup namespace; / private; a tmpfs at NEWROOT; the
 *     steps; /dev nodes made with mknod (/dev/kvm owned by the VM's uid,
 *     as Firecracker's jailer does: the host's node may be root-only);
 *     the tmpfs remounted read-only; pivot_root; fds moved to 3..; every
 *     other fd closed; groups, gid, uid dropped (raw syscalls, see
 *     sandbox.c on why); no_new_privs; RLIMIT_CORE 0; exec QEMU.
 *     Failures are reported as {errno, step} on the socket.
 *  4. EOF on the socket (close-on-exec) means QEMU is executing.
 *
 * Invariants: no mount is ever made in the host's namespace; the child
 * touches only its stack and the prepared arguments; nothing in the jail
 * runs as host root after step 3. */
#include "worker/vmm.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define STACK_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define STACK_UNPOISON(p, n) ((void)(p), (void)(n))
#endif
#define CHILD_CODE __attribute__((no_sanitize_address))

#include "common/log.h"
#include "common/util.h"

#define ROLE "microvm"
#define NEWROOT "/tmp"   /* mount point of the jail's root in the child's namespace */
#define BIOS_JAIL "/vm/bios.bin"
#define QEMU_MODULE "accel-tcg-x86_64.so"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

enum { CHILD_STACK = 256 * 1024, SETUP_TIMEOUT_MS = 10000 };

enum jkind { J_MKDIR, J_SYMLINK, J_BIND, J_MKNOD };

typedef struct jstep {
    enum jkind kind;
    char *jail;          /* path inside the jail ("/usr/lib/...") */
    char *dst;           /* NEWROOT + jail */
    char *target;        /* J_SYMLINK */
    char *host;          /* J_BIND: the source, opened by the child */
    unsigned long flags; /* J_BIND: remount flags */
    mode_t mode;         /* J_MKNOD, J_MKDIR */
    dev_t dev;           /* J_MKNOD */
    bool chown_uid;      /* J_MKNOD: owned by the VM's uid */
} jstep_t;

typedef struct jsteps {
    jstep_t *v;
    int n, cap;
} jsteps_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_inited;
static char *g_qemu;       /* host path */
static jsteps_t g_static;  /* the QEMU tree, /dev, /vm */

/* ------------------------------------------------------------ steps */

static jstep_t *step_add(jsteps_t *s, enum jkind k, const char *jail)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->v = xrealloc(s->v, (size_t)s->cap * sizeof *s->v);
    }
    jstep_t *st = &s->v[s->n++];
    memset(st, 0, sizeof *st);
    st->kind = k;
    st->jail = xstrdup(jail);
    st->dst = xasprintf(NEWROOT "%s", jail);
    return st;
}

static bool step_has(const jsteps_t *s, const char *jail)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].jail, jail))
            return true;
    return false;
}

static void steps_free(jsteps_t *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->v[i].jail);
        free(s->v[i].dst);
        free(s->v[i].target);
        free(s->v[i].host);
    }
    free(s->v);
    memset(s, 0, sizeof *s);
}

/* A read-only (unless flags say otherwise) bind of host at jail.  The
 * source must exist now; the child opens it again in its own mount
 * namespace (a bind source must belong to the caller's namespace). */
static int bind_step(jsteps_t *s, const char *host, const char *jail, unsigned long flags, err_t *err)
{
    if (access(host, F_OK) < 0)
        return err_sys(err, "%s", host);
    jstep_t *st = step_add(s, J_BIND, jail);
    st->host = xstrdup(host);
    st->flags = flags;
    return 0;
}

static void mkdir_step(jsteps_t *s, const char *jail)
{
    if (!step_has(s, jail))
        step_add(s, J_MKDIR, jail)->mode = 0755;
}

/* Adds the steps recreating host path p (absolute) in the jail: its
 * directories, every symlink met on the way (followed), and a read-only
 * bind of the file it ends at. */
static int add_host_path(jsteps_t *s, const char *p, int depth, err_t *err)
{
    if (depth > 16)
        return err_set(err, ELOOP, "too many symlinks at %s", p);
    char prefix[PATH_MAX] = "";
    const char *c = p;
    while (*c == '/')
        c++;
    while (*c) {
        const char *e = strchr(c, '/');
        size_t len = e ? (size_t)(e - c) : strlen(c);
        size_t pl = strlen(prefix);
        if (pl + 1 + len >= sizeof prefix)
            return err_set(err, ENAMETOOLONG, "%s", p);
        prefix[pl] = '/';
        memcpy(prefix + pl + 1, c, len);
        prefix[pl + 1 + len] = 0;
        const char *rest = e ? e : "";
        struct stat st;
        if (lstat(prefix, &st) < 0)
            return err_sys(err, "%s", prefix);
        if (S_ISLNK(st.st_mode)) {
            char target[PATH_MAX];
            ssize_t n = readlink(prefix, target, sizeof target - 1);
            if (n < 0)
                return err_sys(err, "readlink %s", prefix);
            target[n] = 0;
            if (!step_has(s, prefix))
                step_add(s, J_SYMLINK, prefix)->target = xstrdup(target);
            char *slash = strrchr(prefix, '/');
            _cleanup_free_ char *next = target[0] == '/'
                                            ? xasprintf("%s%s", target, rest)
                                            : xasprintf("%.*s/%s%s", (int)(slash - prefix), prefix, target, rest);
            return add_host_path(s, next, depth + 1, err);
        }
        if (S_ISDIR(st.st_mode)) {
            mkdir_step(s, prefix);
        } else if (S_ISREG(st.st_mode) && !*rest) {
            if (!step_has(s, prefix))
                return bind_step(s, prefix, prefix, MS_RDONLY | MS_NOSUID | MS_NODEV, err);
            return 0;
        } else {
            return err_set(err, EINVAL, "%s: not a directory or regular file", prefix);
        }
        if (!e)
            break;
        c = e + 1;
    }
    return 0;
}

/* The ELF interpreter (PT_INTERP) of path, malloc'd, or NULL. */
static char *elf_interp(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    Elf64_Ehdr eh;
    char *out = NULL;
    if (pread(fd, &eh, sizeof eh, 0) == (ssize_t)sizeof eh && !memcmp(eh.e_ident, ELFMAG, SELFMAG) &&
        eh.e_ident[EI_CLASS] == ELFCLASS64) {
        for (int i = 0; i < eh.e_phnum && !out; i++) {
            Elf64_Phdr ph;
            if (pread(fd, &ph, sizeof ph, (off_t)(eh.e_phoff + (uint64_t)i * eh.e_phentsize)) != (ssize_t)sizeof ph)
                break;
            if (ph.p_type == PT_INTERP && ph.p_filesz > 1 && ph.p_filesz < PATH_MAX) {
                out = xcalloc(1, ph.p_filesz + 1);
                if (pread(fd, out, ph.p_filesz, (off_t)ph.p_offset) != (ssize_t)ph.p_filesz) {
                    free(out);
                    out = NULL;
                }
            }
        }
    }
    close(fd);
    return out;
}

/* Runs "interp --list bin" and adds every library it names. */
static int add_libraries(jsteps_t *s, const char *interp, const char *bin, err_t *err)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return err_sys(err, "pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    char *argv[] = {(char *)interp, "--list", (char *)bin, NULL};
    char *envp[] = {NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, interp, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (rc) {
        close(p[0]);
        errno = rc;
        return err_sys(err, "%s --list", interp);
    }
    size_t len = 0, cap = 0;
    char *out = NULL;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 16384;
            out = xrealloc(out, cap);
        }
        ssize_t n = read(p[0], out + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(p[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    out = out ? out : xmalloc(1);
    out[len] = 0;
    rc = 0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        rc = err_set(err, ENOEXEC, "%s --list %s failed", interp, bin);
    for (char *line = out, *next; rc == 0 && line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        char *path = strstr(line, "=> ");
        path = path ? path + 3 : line;
        while (*path == ' ' || *path == '\t')
            path++;
        if (!strncmp(path, "not found", 9)) {
            rc = err_set(err, ENOENT, "%s: a library is missing: %s", bin, line);
            break;
        }
        if (*path != '/')
            continue; /* linux-vdso.so.1 */
        char *sp = strstr(path, " (");
        if (sp)
            *sp = 0;
        rc = add_host_path(s, path, 0, err);
    }
    free(out);
    return rc;
}

static char *find_qemu(void)
{
    const char *env = getenv("FLICKER_QEMU");
    if (env && *env)
        return access(env, X_OK) == 0 ? realpath(env, NULL) : NULL;
    const char *path = getenv("PATH");
    _cleanup_free_ char *dirs = xstrdup(path && *path ? path : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        _cleanup_free_ char *c = xasprintf("%s/qemu-system-x86_64", d);
        if (access(c, X_OK) == 0)
            return realpath(c, NULL);
    }
    return NULL;
}

/* The microvm firmware (qboot): next to the binary's share dir, or Debian's. */
static char *find_bios(const char *qemu)
{
    _cleanup_free_ char *dir = xstrdup(qemu);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    char *cands[] = {xasprintf("%s/../share/qemu/bios-microvm.bin", dir),
                     xstrdup("/usr/share/qemu/bios-microvm.bin"),
                     xstrdup("/usr/share/qemu/qboot.rom")};
    char *found = NULL;
    for (size_t i = 0; i < ARRAY_LEN(cands); i++) {
        if (!found && access(cands[i], R_OK) == 0)
            found = realpath(cands[i], NULL);
        free(cands[i]);
    }
    return found;
}

/* The directory QEMU loads modules from: next to the binary's lib dir in a
 * Debian layout, or $QEMU_MODULE_DIR. */
static char *find_module(void)
{
    const char *env = getenv("QEMU_MODULE_DIR");
    char *cands[] = {env ? xasprintf("%s/" QEMU_MODULE, env) : NULL,
                     xstrdup("/usr/lib/x86_64-linux-gnu/qemu/" QEMU_MODULE),
                     xstrdup("/usr/lib64/qemu/" QEMU_MODULE), xstrdup("/usr/lib/qemu/" QEMU_MODULE)};
    char *found = NULL;
    for (size_t i = 0; i < ARRAY_LEN(cands); i++) {
        if (cands[i] && !found && access(cands[i], R_OK) == 0)
            found = xstrdup(cands[i]);
        free(cands[i]);
    }
    return found;
}

int vmm_init(err_t *err)
{
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    if (g_inited)
        goto out;
    jsteps_t s = {0};
    char *qemu = find_qemu(), *interp = NULL, *bios = NULL, *mod = NULL;
    if (!qemu) {
        rc = err_set(err, ENOENT, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)");
        goto done;
    }
    interp = elf_interp(qemu);
    bios = find_bios(qemu);
    if (!bios) {
        rc = err_set(err, ENOENT, "the microvm firmware bios-microvm.bin was not found");
        goto done;
    }
    mkdir_step(&s, "/dev");
    mkdir_step(&s, "/vm");
    if (add_host_path(&s, qemu, 0, err) < 0 ||
        (interp && (add_host_path(&s, interp, 0, err) < 0 || add_libraries(&s, interp, qemu, err) < 0))) {
        rc = -1;
        goto done;
    }
    mod = find_module(); /* Debian builds TCG as a module; others build it in */
    if (mod && (add_host_path(&s, mod, 0, err) < 0 || (interp && add_libraries(&s, interp, mod, err) < 0))) {
        rc = -1;
        goto done;
    }
    if (bind_step(&s, bios, BIOS_JAIL, MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, err) < 0) {
        rc = -1;
        goto done;
    }
    static const struct {
        const char *path;
        unsigned maj, min;
    } nodes[] = {{"/dev/null", 1, 3}, {"/dev/zero", 1, 5}, {"/dev/random", 1, 8}, {"/dev/urandom", 1, 9}};
    for (size_t i = 0; i < ARRAY_LEN(nodes); i++) {
        jstep_t *st = step_add(&s, J_MKNOD, nodes[i].path);
        st->mode = S_IFCHR | 0666;
        st->dev = makedev(nodes[i].maj, nodes[i].min);
    }
    g_qemu = qemu;
    qemu = NULL;
    g_static = s;
    memset(&s, 0, sizeof s);
    g_inited = true;
    int nb = 0;
    for (int i = 0; i < g_static.n; i++)
        nb += g_static.v[i].kind == J_BIND;
    log_info(ROLE, "QEMU %s: jail of %d steps (%d files bound)%s", g_qemu, g_static.n, nb,
             mod ? "" : "; no TCG module found (assuming it is built in)");
done:
    if (rc < 0)
        err_wrap(err, "preparing the QEMU jail");
    steps_free(&s);
    free(qemu);
    free(interp);
    free(bios);
    free(mod);
out:
    pthread_mutex_unlock(&g_lock);
    return rc;
}

const char *vmm_qemu_path(void) { return g_qemu; }
const char *vmm_bios_jail_path(void) { return BIOS_JAIL; }

/* ------------------------------------------------------------ child */

typedef struct child_err {
    int code;
    char what[200];
} child_err_t;

typedef struct child_args {
    int sync_fd, close_fd;
    const jsteps_t *st[2];
    int *src_fd[2];          /* per step: the bind source opened by the child */
    const vmm_launch_t *l;
    const char *qemu;
    char *const *argv;
} child_args_t;

CHILD_CODE static void cpy(char *dst, size_t n, const char *a, const char *b)
{
    size_t i = 0;
    for (; a && *a && i + 1 < n; a++)
        dst[i++] = *a;
    for (; b && *b && i + 1 < n; b++)
        dst[i++] = *b;
    dst[i] = 0;
}

CHILD_CODE static __attribute__((noreturn)) void child_fail(const child_args_t *a, const char *what,
                                                            const char *arg)
{
    child_err_t e;
    memset(&e, 0, sizeof e);
    e.code = errno;
    cpy(e.what, sizeof e.what, what, arg);
    ssize_t w = send(a->sync_fd, &e, sizeof e, MSG_NOSIGNAL);
    (void)w;
    _exit(111);
}

/* "/proc/self/fd/<fd>" without stdio. */
CHILD_CODE static void fd_path(char out[32], int fd)
{
    char num[12];
    int n = 0;
    unsigned v = (unsigned)fd;
    do
        num[n++] = (char)('0' + v % 10);
    while ((v /= 10) && n < 11);
    cpy(out, 32, "/proc/self/fd/", NULL);
    size_t l = strlen(out);
    while (n)
        out[l++] = num[--n];
    out[l] = 0;
}

CHILD_CODE static void run_step(const child_args_t *a, const jstep_t *s, int src_fd)
{
    switch (s->kind) {
    case J_MKDIR:
        if (mkdir(s->dst, s->mode) < 0 && errno != EEXIST)
            child_fail(a, "mkdir ", s->jail);
        return;
    case J_SYMLINK:
        if (symlink(s->target, s->dst) < 0)
            child_fail(a, "symlink ", s->jail);
        return;
    case J_MKNOD:
        if (mknod(s->dst, s->mode, s->dev) < 0 || chmod(s->dst, s->mode & 07777) < 0)
            child_fail(a, "mknod ", s->jail);
        if (s->chown_uid && chown(s->dst, a->l->uid, a->l->gid) < 0)
            child_fail(a, "chown ", s->jail);
        return;
    case J_BIND: {
        int fd = open(s->dst, O_WRONLY | O_CREAT | O_CLOEXEC, 0644); /* the mount point */
        if (fd < 0)
            child_fail(a, "create ", s->jail);
        close(fd);
        char path[32];
        fd_path(path, src_fd);
        if (mount(path, s->dst, NULL, MS_BIND, NULL) < 0)
            child_fail(a, "bind ", s->jail);
        if (mount(NULL, s->dst, NULL, MS_BIND | MS_REMOUNT | s->flags, NULL) < 0)
            child_fail(a, "remount ", s->jail);
        return;
    }
    }
}

CHILD_CODE static __attribute__((noreturn)) void child_main(child_args_t *a)
{
    const vmm_launch_t *l = a->l;
    char go;
    if (recv(a->sync_fd, &go, 1, 0) != 1 || go != 'G')
        _exit(112);
    umask(022);
    if (unshare(CLONE_NEWCGROUP) < 0)
        child_fail(a, "unshare(CLONE_NEWCGROUP)", NULL);
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        child_fail(a, "make / private", NULL);
    /* Bind sources are opened in this mount namespace (a bind's source must
     * belong to it) and before the tmpfs hides NEWROOT's contents. */
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < a->st[k]->n; i++) {
            a->src_fd[k][i] = -1;
            if (a->st[k]->v[i].kind == J_BIND &&
                (a->src_fd[k][i] = open(a->st[k]->v[i].host, O_PATH | O_CLOEXEC)) < 0)
                child_fail(a, "open ", a->st[k]->v[i].host);
        }
    if (mount("jail", NEWROOT, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=256k,nr_inodes=1024") < 0)
        child_fail(a, "mount tmpfs", NULL);
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < a->st[k]->n; i++) {
            run_step(a, &a->st[k]->v[i], a->src_fd[k][i]);
            if (a->src_fd[k][i] >= 0)
                close(a->src_fd[k][i]);
        }
    if (mount(NULL, NEWROOT, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL) < 0)
        child_fail(a, "remount the root read-only", NULL);
    if (chdir(NEWROOT) < 0)
        child_fail(a, "chdir", NULL);
    if (syscall(SYS_pivot_root, ".", ".") < 0)
        child_fail(a, "pivot_root", NULL);
    if (umount2(".", MNT_DETACH) < 0)
        child_fail(a, "detach the old root", NULL);
    if (chdir("/") < 0)
        child_fail(a, "chdir /", NULL);

    /* fds: every kept fd first moves above the target range, then down. */
    enum { HIGH = 100 };
    int hi[VMM_MAX_FDS], out = -1, errfd = -1;
    for (int i = 0; i < l->nfds; i++)
        if ((hi[i] = fcntl(l->fds[i], F_DUPFD, HIGH)) < 0)
            child_fail(a, "dup", NULL);
    int sync_hi = fcntl(a->sync_fd, F_DUPFD_CLOEXEC, HIGH);
    if (l->stdout_fd >= 0)
        out = fcntl(l->stdout_fd, F_DUPFD, HIGH);
    if (l->stderr_fd >= 0)
        errfd = fcntl(l->stderr_fd, F_DUPFD, HIGH);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (sync_hi < 0 || null < 0)
        child_fail(a, "stdio", NULL);
    a->sync_fd = sync_hi;
    if (dup2(null, 0) < 0 || dup2(out >= 0 ? out : null, 1) < 0 || dup2(errfd >= 0 ? errfd : null, 2) < 0)
        child_fail(a, "dup2 stdio", NULL);
    for (int i = 0; i < l->nfds; i++)
        if (dup2(hi[i], 3 + i) < 0)
            child_fail(a, "dup2", NULL);
    int keep = 3 + l->nfds;
    if (dup3(sync_hi, keep, O_CLOEXEC) < 0)
        child_fail(a, "dup3", NULL);
    a->sync_fd = keep;
    if (syscall(SYS_close_range, keep + 1, ~0U, 0) < 0)
        for (int fd = keep + 1; fd < 4096; fd++)
            close(fd);

    gid_t groups[1] = {l->extra_gid};
    int ng = l->extra_gid != (gid_t)-1 ? 1 : 0;
    if (syscall(SYS_setgroups, ng, groups) < 0)
        child_fail(a, "setgroups", NULL);
    if (syscall(SYS_setresgid, l->gid, l->gid, l->gid) < 0)
        child_fail(a, "setresgid", NULL);
    if (syscall(SYS_setresuid, l->uid, l->uid, l->uid) < 0)
        child_fail(a, "setresuid", NULL);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        child_fail(a, "no_new_privs", NULL);
    struct rlimit nocore = {0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    static char *const envp[] = {"PATH=/usr/bin", NULL};
    execve(a->qemu, a->argv, envp);
    child_fail(a, "exec ", a->qemu);
}

CHILD_CODE static int child_entry(void *arg)
{
    child_args_t *a = arg;
    close(a->close_fd);
    child_main(a);
}

/* ------------------------------------------------------------ spawn */

/* One message from the child: 0 on EOF (exec'd), -1/err otherwise. */
static int wait_child(int sync, uint64_t deadline, err_t *err)
{
    for (;;) {
        int64_t left = (int64_t)(deadline - now_mono_ms());
        if (left <= 0)
            return err_set(err, ETIMEDOUT, "jail setup timed out");
        struct pollfd p = {sync, POLLIN, 0};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return err_sys(err, "poll");
        if (r == 0)
            continue;
        child_err_t e;
        ssize_t n = recv(sync, &e, sizeof e, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            return 0;
        if (n == (ssize_t)sizeof e) {
            e.what[sizeof e.what - 1] = 0;
            return err_set(err, e.code, "jail: %s: %s", e.what, strerror(e.code));
        }
        return err_set(err, EPROTO, "jail: unexpected message");
    }
}

int vmm_spawn(const vmm_launch_t *l, pid_t *pid_out, int *pidfd_out, err_t *err)
{
    *pid_out = -1;
    *pidfd_out = -1;
    if (!g_inited)
        return err_set(err, EINVAL, "vmm_init not called");
    if (l->nfds > VMM_MAX_FDS || l->nfiles > VMM_MAX_FILES)
        return err_set(err, EINVAL, "too many files for the jail");
    jsteps_t vm = {0};
    int sv[2] = {-1, -1}, pidfd = -1, rc = -1;
    pid_t pid = -1;
    void *stack = NULL;
    char **argv = NULL;
    int *fds0 = NULL, *fds1 = NULL;
    for (int i = 0; i < l->nfiles; i++) {
        unsigned long f = MS_NOSUID | MS_NODEV | MS_NOEXEC | (l->files[i].writable ? 0 : MS_RDONLY);
        if (bind_step(&vm, l->files[i].host, l->files[i].jail, f, err) < 0)
            goto out;
    }
    if (l->kvm) {
        jstep_t *st = step_add(&vm, J_MKNOD, "/dev/kvm");
        st->mode = S_IFCHR | 0600;
        st->dev = makedev(10, 232);
        st->chown_uid = true;
    }
    size_t argc = 0;
    while (l->argv[argc])
        argc++;
    argv = xcalloc(argc + 1, sizeof *argv);
    argv[0] = g_qemu;
    for (size_t i = 1; i < argc; i++)
        argv[i] = l->argv[i];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        err_sys(err, "socketpair");
        goto out;
    }
    fds0 = xcalloc((size_t)g_static.n + 1, sizeof(int));
    fds1 = xcalloc((size_t)vm.n + 1, sizeof(int));
    child_args_t ca = {.sync_fd = sv[1], .close_fd = sv[0], .st = {&g_static, &vm},
                       .src_fd = {fds0, fds1}, .l = l, .qemu = g_qemu, .argv = argv};
    stack = mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        stack = NULL;
        err_sys(err, "mmap");
        goto out;
    }
    STACK_UNPOISON(stack, CHILD_STACK);
    mprotect(stack, 4096, PROT_NONE);
    int flags = CLONE_VM | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET;
    pid = clone(child_entry, (char *)stack + CHILD_STACK, flags, &ca);
    if (pid < 0) {
        err_sys(err, "clone");
        goto out;
    }
    close(sv[1]);
    sv[1] = -1;
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
        err_sys(err, "pidfd_open");
        goto out;
    }
    fcntl(pidfd, F_SETFD, FD_CLOEXEC);
    if (l->cg && l->cg->root->ops->attach(l->cg, pid, err) < 0)
        goto out;
    if (send(sv[0], "G", 1, MSG_NOSIGNAL) != 1) {
        err_sys(err, "starting the jail");
        goto out;
    }
    if (wait_child(sv[0], now_mono_ms() + SETUP_TIMEOUT_MS, err) < 0)
        goto out;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) == 0 &&
        si.si_pid == pid) {
        err_set(err, ECHILD, "QEMU died at once (status %d)", si.si_status);
        goto out;
    }
    rc = 0;
out:
    if (rc < 0) {
        err_wrap(err, "vm %s", l->id ? l->id : "?");
        if (pid > 0) {
            kill(pid, SIGKILL);
            siginfo_t dead;
            while (waitid(P_PID, (id_t)pid, &dead, WEXITED | __WALL) < 0 && errno == EINTR) {
            }
        }
        if (pidfd >= 0)
            close(pidfd);
    } else {
        *pid_out = pid;
        *pidfd_out = pidfd;
    }
    if (stack) { /* the child exec'd or is gone: its stack is free */
        STACK_UNPOISON(stack, CHILD_STACK);
        munmap(stack, CHILD_STACK);
    }
    for (int i = 0; i < 2; i++)
        if (sv[i] >= 0)
            close(sv[i]);
    steps_free(&vm);
    free(argv);
    free(fds0);
    free(fds1);
    return rc;
}
