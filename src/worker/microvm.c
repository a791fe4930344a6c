/* microvm.c - the microVM isolation backend (see microvm.h).
 *
 * One environment = one jailed `qemu-system-x86_64 -M microvm` (vmm.c) +
 * one relay thread (vmrelay.c) + one QMP connection (qmp.c, opened when
 * first needed).  Devices, all virtio-mmio, in this order (the guest names
 * the disks by it): vda the runtime family's root image (read-only, shared
 * by every VM), vdb the function's code as erofs (read-only, cached by
 * code key), vdc /tmp as ext4 (a private sparse file of ephemeral_mb, copied
 * from a per-size template: ~400 KB of metadata), one virtio-serial port
 * "flicker.0" (the agent channel, a socketpair end given to QEMU by fd),
 * virtio-rng.  No network device, no ACPI, no option ROMs.  The i8254 PIT
 * and i8259 PIC stay: measured under TCG, without the PIT the guest cannot
 * calibrate its TSC and hangs, without the PIC it panics ("IO-APIC + timer
 * doesn't work").  The CMOS RTC stays because it is the guest's only wall
 * clock under TCG (there is no kvmclock), at boot and after a restore (the
 * agent re-reads it on RESTORE).
 *
 * Life of an environment (function doing each move):
 *
 *   vm_create --(boot)--> BOOTING --HELLO/START (relay)--> RUNNING
 *   vm_create --(restore: load, cont, RESTORE/RESTORED)--> RUNNING
 *   RUNNING <--vm_freeze / vm_thaw (cgroup freezer)--> FROZEN
 *   RUNNING --EXIT/FAULT/QEMU death (relay: exit_fd readable)--> EXITED
 *   RUNNING/FROZEN --vm_snapshot (QMP stop + migrate to a file)--> PAUSED
 *   any --vm_destroy--> (freed: QEMU killed and reaped, relay stopped,
 *                        cgroup removed, socket and disks deleted)
 *
 * Freezing uses the cgroup freezer, not QMP stop: QEMU then costs no host
 * CPU at all, and the guest's clocks keep following the host's (a QMP stop
 * would freeze the guest's virtual clock and leave its wall clock behind).
 *
 * Memory: the VM's cgroup allows guest RAM (MemorySize) + OVERHEAD_MB for
 * QEMU itself, + TB_SIZE_MB under TCG for its translation cache (bounded
 * by -accel tcg,tb-size).  Measured for an idle 128 MB guest under TCG
 * (docs/microvm.md): guest RAM touched 43 MB, translation cache 22 MB
 * resident, QEMU's own anonymous memory (heap, stacks, device state) ~16
 * MB; the rest of OVERHEAD_MB is headroom for the page cache of the disk
 * images QEMU reads for the guest, which the cgroup is charged for but can
 * reclaim.  pids.max allows QEMU's threads only.
 * A guest OOM kill is reported by the agent (EXIT carries the guest
 * kernel's oom_kill count); a host OOM kill of QEMU by the cgroup.  Both
 * count in oom_kills, so the worker reports Runtime.OutOfMemory.
 *
 * Snapshot file (vm_snapshot, restored by vm_create with restore_from):
 *   [0, 4096)          header (snap_hdr_t, little-endian, sha256-checked)
 *   [4096, ...)        QEMU's migration stream (guest RAM + device state)
 *   [disk_off, ...)    the /tmp disk as it was (sparse, 4 KiB aligned)
 * The header names the guest images (size, mtime, inode) the snapshot was
 * taken with, the memory size, vCPUs, accelerator and console flag: a
 * restore refuses anything that differs, because the guest's page cache
 * and device state must match its disks.  Restoring starts QEMU with
 * "-incoming fd:5 -S" on the file (positioned at the stream), waits until
 * QMP no longer says "inmigrate", "cont"s, and sends RESTORE (32 random
 * bytes + a new boot id) before waiting for RESTORED.  A corrupt stream
 * makes QEMU exit: the create fails with QEMU's message.
 *
 * Invariants: a handle's QEMU is reaped exactly once (by the relay, or by
 * vm_destroy after the relay stopped); nothing of a VM survives
 * vm_destroy (run dir removed, cgroup removed, slot freed); code images
 * and /tmp templates appear atomically (temporary name + rename), so
 * concurrent creators never see a partial file. */
#include "worker/microvm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <openssl/evp.h>

#include "common/slots.h"
#include "common/log.h"
#include "common/util.h"
#include "worker/cgroup.h"
#include "worker/isolation.h"
#include "worker/qmp.h"
#include "worker/vmm.h"
#include "worker/vmproto.h"
#include "worker/vmrelay.h"

#define ROLE "microvm"
/* vm_freeze waits this long for QEMU's threads to stop. */
#define VM_FREEZE_WAIT_MS 10000
#define CMDLINE_BASE "reboot=t panic=-1 init=/sbin/flicker-agent root=/dev/vda rootfstype=erofs ro"
#define SNAP_MAGIC "FLKVMSN1"
#define SNAP_VERSION 1u
#define CODE_UUID "2f1ce7a0-5b7e-4c5e-9a57-6c6963b17e25" /* fixed: same code, same image */

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

enum {
    VM_UID_BASE = 0x60000000u, /* above the sandboxes' uid ranges */
    VM_SLOTS = 65536,
    OVERHEAD_MB = 64,          /* host memory for QEMU beyond guest RAM (see top) */
    TB_SIZE_MB = 32,           /* TCG translation cache, added to OVERHEAD_MB under TCG */
    PIDS_BASE = 24,            /* QEMU's threads besides vCPUs */
    IO_THREADS = 4,
    CPU_PERIOD_US = 100000,
    TCG_CPU_FACTOR = 8,        /* see vm_quota */
    QMP_TIMEOUT_MS = 10000,
    BOOT_TIMEOUT_TCG_MS = 60000,
    BOOT_TIMEOUT_KVM_MS = 15000,
    LOAD_TIMEOUT_MS = 60000,
    RESTORED_TIMEOUT_MS = 20000,
    MIGRATE_TIMEOUT_MS = 300000,
    PROBE_TIMEOUT_MS = 4000,
    SNAP_HDR = 4096,
};

/* ------------------------------------------------------------ globals */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static bool g_inited;
static cgroup_root_t g_root;
static char *g_state;       /* the state dir */
static char *g_run_base;    /* <state>/vm-run/<instance> */
static unsigned char g_slot_bits[VM_SLOTS / 8];
static slot_set_t g_slots = SLOT_SET_INIT(g_slot_bits, VM_SLOTS, 131);
static atomic_int g_count;

static pthread_mutex_t g_accel_lock = PTHREAD_MUTEX_INITIALIZER;
static const char *g_accel;  /* "kvm" / "tcg" once decided */
static char g_accel_reason[320];

/* ------------------------------------------------------------ types */

typedef struct ident {
    uint64_t size, mtime_ns, ino, dev;
} ident_t;

typedef struct snap_hdr {
    char magic[8];
    uint32_t version, hdr_size;
    uint64_t stream_off, stream_len;
    uint64_t disk_off, disk_len;
    uint32_t memory_mb, vcpus;
    char accel[8];
    char family[16];
    uint32_t console, has_code;
    uint32_t agent_features, pad; /* VMPROTO_FEATURE_* of the snapshotted agent */
    ident_t kernel, rootfs, code;
    uint64_t created_ms;
    unsigned char content[32]; /* see snap_digest */
    unsigned char sum[32];     /* sha256 of the header with sum zeroed */
} snap_hdr_t;

typedef struct microvm {
    char *id;
    char *run_dir;
    int run_dirfd;
    char api_path[80];
    char *tmp_img;
    char *own_code;       /* code image private to this VM (no code key) */
    int api_fd, out_rd, exit_efd, pidfd, qmp_fd;
    pid_t pid;
    int slot;
    int memory_mb, vcpus;
    const char *accel;
    bool console, has_code;
    char family[16];
    ident_t kernel, rootfs, code;
    uint64_t tmp_size;
    cgroup_t cg;
    bool have_cg;
    qmp_t *qmp;
    vmrelay_t *relay;
    bool frozen, restored;
} microvm_t;

typedef struct vm_params {
    const char *id;
    const char *accel;
    int memory_mb;
    const char *family;
    const char *code_dir;     /* NULL: no code disk */
    const char *code_key;
    int ephemeral_mb;         /* 0: no /tmp disk */
    char *const *argv;
    char *const *envp;
    const char *restore_from;
    int boot_timeout_ms;
} vm_params_t;

static int vm_destroy(void *h, err_t *err);
static int vm_cpu(void *h, err_t *err);

/* ------------------------------------------------------------ small helpers */

static ident_t ident_of(const struct stat *st)
{
    ident_t i = {(uint64_t)st->st_size,
                 (uint64_t)st->st_mtim.tv_sec * 1000000000ull + (uint64_t)st->st_mtim.tv_nsec,
                 (uint64_t)st->st_ino, (uint64_t)st->st_dev};
    return i;
}

static bool ident_eq(const ident_t *a, const ident_t *b)
{
    return a->size == b->size && a->mtime_ns == b->mtime_ns && a->ino == b->ino && a->dev == b->dev;
}

static bool valid_name(const char *s, size_t max)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '='))
            return false;
    }
    return s[0] != '.';
}

static const char *find_tool(const char *name)
{
    static const char *const dirs[] = {"/usr/sbin", "/sbin", "/usr/bin", "/bin"};
    static __thread char path[64];
    for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
        snprintf(path, sizeof path, "%s/%s", dirs[i], name);
        if (access(path, X_OK) == 0)
            return path;
    }
    return NULL;
}

/* Runs argv (stdin /dev/null, stdout+stderr captured, at most out_len-1
 * bytes kept).  Returns 0 when it exited 0, else -1/err with its output. */
static int run_tool(char *const argv[], err_t *err)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return err_sys(err, "pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    static char *const envp[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C", NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, &at, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(p[1]);
    if (rc) {
        close(p[0]);
        errno = rc;
        return err_sys(err, "%s", argv[0]);
    }
    char out[600];
    size_t have = 0;
    for (;;) {
        char buf[4096];
        ssize_t n = read(p[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        size_t take = (size_t)n < sizeof out - 1 - have ? (size_t)n : sizeof out - 1 - have;
        memcpy(out + have, buf, take);
        have += take;
    }
    out[have] = 0;
    close(p[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    while (have && (out[have - 1] == '\n' || out[have - 1] == ' '))
        out[--have] = 0;
    return err_set(err, EIO, "%s failed (status %d): %s", argv[0], st, out);
}

/* Copies [in_off, in_off + len) of in to out at out_off, skipping holes
 * (so sparse files stay sparse).  out's size is not changed beyond the
 * data written; the caller truncates. */
static int copy_sparse(int in, off_t in_off, int out, off_t out_off, off_t len, err_t *err)
{
    off_t end = in_off + len, pos = in_off;
    while (pos < end) {
        off_t data = lseek(in, pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            break;
        if (data < 0)
            return err_sys(err, "SEEK_DATA");
        if (data >= end)
            break;
        off_t hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0 || hole > end)
            hole = end;
        loff_t ip = data, op = out_off + (data - in_off);
        size_t n = (size_t)(hole - data);
        while (n) {
            ssize_t c = copy_file_range(in, &ip, out, &op, n, 0);
            if (c < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
                char buf[65536];
                size_t want = n < sizeof buf ? n : sizeof buf;
                c = pread(in, buf, want, ip);
                if (c > 0 && pwrite(out, buf, (size_t)c, op) != c)
                    return err_sys(err, "write");
                if (c > 0) {
                    ip += c;
                    op += c;
                }
            }
            if (c < 0)
                return err_sys(err, "copy");
            if (c == 0)
                return err_set(err, EIO, "copy: unexpected end of file");
            n -= (size_t)c;
        }
        pos = hole;
    }
    return 0;
}

static void rand_hex(char *out, size_t bytes)
{
    unsigned char r[16];
    random_bytes(r, bytes > sizeof r ? sizeof r : bytes);
    hex_encode(r, bytes > sizeof r ? sizeof r : bytes, out);
}

/* ------------------------------------------------------------ system init */

static void sweep_stale_runs(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !cgroup_instance_stale(e->d_name))
            continue;
        _cleanup_free_ char *p = xasprintf("%s/%s", dir, e->d_name);
        err_t err;
        if (rm_rf(p, &err) < 0)
            log_warn(ROLE, "cannot remove a dead worker's VM files %s: %s", p, err.msg);
        else
            log_info(ROLE, "removed a dead worker's VM files %s", p);
    }
    closedir(d);
}

int microvm_system_init(const char *state_dir, err_t *err)
{
    _cleanup_free_ char *runs = NULL, *inst = NULL;
    pthread_mutex_lock(&g_lock);
    int rc = 0;
    if (g_inited)
        goto out;
    if (vmm_init(err) < 0) {
        rc = -1;
        goto out;
    }
    if (cgroup_root_init(&g_root, err) < 0) {
        rc = err_wrap(err, "microVM cgroups");
        goto out;
    }
    g_state = xstrdup(state_dir && *state_dir ? state_dir : "/var/tmp/flicker-vm");
    runs = xasprintf("%s/vm-run", g_state);
    inst = cgroup_instance_name();
    g_run_base = xasprintf("%s/%s", runs, inst);
    if (mkdir_p(g_run_base, 0700, err) < 0) {
        cgroup_root_fini(&g_root);
        free(g_state);
        free(g_run_base);
        g_state = g_run_base = NULL;
        rc = err_wrap(err, "microVM state directory");
        goto out;
    }
    sweep_stale_runs(runs);
    g_inited = true;
    log_info(ROLE, "microVM backend ready: cgroup %s, state %s", g_root.ops->version, g_state);
out:
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void microvm_system_shutdown(void)
{
    pthread_mutex_lock(&g_lock);
    if (g_inited) {
        if (atomic_load(&g_count))
            log_warn(ROLE, "shutdown with %d microVMs alive", atomic_load(&g_count));
        rmdir(g_run_base);
        cgroup_root_fini(&g_root);
        free(g_run_base);
        free(g_state);
        g_run_base = g_state = NULL;
        g_inited = false;
    }
    pthread_mutex_unlock(&g_lock);
}

int microvm_count(void) { return atomic_load(&g_count); }

/* ------------------------------------------------------------ guest files */

static char *guest_dir(void)
{
    const char *env = getenv("FLICKER_GUEST_DIR");
    if (env && *env)
        return xstrdup(env);
    _cleanup_free_ char *bin = flicker_bin_dir();
    return xasprintf("%s/guest", bin);
}

/* The root image family for a Lambda runtime id, or NULL. */
static const char *runtime_family(const char *runtime)
{
    if (!runtime || !*runtime)
        return "provided";
    if (!strncmp(runtime, "provided", 8))
        return "provided";
    if (!strncmp(runtime, "python", 6))
        return "python";
    if (!strncmp(runtime, "nodejs", 6))
        return "nodejs";
    return NULL;
}

static int guest_file(const char *name, char **path, ident_t *id, err_t *err)
{
    _cleanup_free_ char *dir = guest_dir();
    *path = xasprintf("%s/%s", dir, name);
    struct stat st;
    if (stat(*path, &st) < 0 || !S_ISREG(st.st_mode)) {
        err_set(err, ENOENT, "microVM guest file %s is missing (build it with `make guest`, or set "
                "FLICKER_GUEST_DIR)", *path);
        free(*path);
        *path = NULL;
        return -1;
    }
    *id = ident_of(&st);
    return 0;
}

/* The function's code as an erofs image: cached by key under
 * <state>/vm-code, or private to this VM (in its run dir) without a key. */
static int code_image(microvm_t *vm, const char *code_dir, const char *key, char **path, err_t *err)
{
    const char *mkfs = find_tool("mkfs.erofs");
    if (!mkfs)
        return err_set(err, ENOENT, "mkfs.erofs not found (apt-get install erofs-utils)");
    char *final, *tmp;
    if (key && *key && valid_name(key, 200)) {
        _cleanup_free_ char *dir = xasprintf("%s/vm-code", g_state);
        if (mkdir_p(dir, 0755, err) < 0)
            return -1;
        final = xasprintf("%s/%s.erofs", dir, key);
        if (access(final, R_OK) == 0) {
            *path = final;
            return 0;
        }
        char r[17];
        rand_hex(r, 8);
        tmp = xasprintf("%s/.%s.%s.tmp", dir, key, r);
    } else {
        final = xasprintf("%s/code.erofs", vm->run_dir);
        tmp = xasprintf("%s/.code.erofs.tmp", vm->run_dir);
        vm->own_code = xstrdup(final);
    }
    uint64_t t0 = now_mono_us();
    char *argv[] = {(char *)mkfs, "--quiet", "--all-root", "--preserve-mtime", "-x-1",
                    "-U" CODE_UUID, tmp, (char *)code_dir, NULL};
    if (run_tool(argv, err) < 0) {
        unlink(tmp);
        free(tmp);
        free(final);
        return err_wrap(err, "code image of %s", code_dir);
    }
    chmod(tmp, 0644);
    if (rename(tmp, final) < 0) {
        err_sys(err, "rename %s", final);
        unlink(tmp);
        free(tmp);
        free(final);
        return -1;
    }
    log_debug(ROLE, "code image %s built in %.1f ms", final, (double)(now_mono_us() - t0) / 1000.0);
    free(tmp);
    *path = final;
    return 0;
}

/* An empty /tmp filesystem of size_mb: ext4 without a journal (the disk
 * dies with the VM), inode tables left for lazy init (sparse: ~400 KB
 * written), root 01777 and no lost+found, as Lambda's /tmp. */
static int tmp_template(int size_mb, char **path, err_t *err)
{
    _cleanup_free_ char *dir = xasprintf("%s/vm-tmp", g_state);
    if (mkdir_p(dir, 0700, err) < 0)
        return -1;
    char *final = xasprintf("%s/ext4-%d.img", dir, size_mb);
    if (access(final, R_OK) == 0) {
        *path = final;
        return 0;
    }
    const char *mke2fs = find_tool("mke2fs");
    if (!mke2fs) {
        free(final);
        return err_set(err, ENOENT, "mke2fs not found (apt-get install e2fsprogs)");
    }
    char r[17], size[32];
    rand_hex(r, 8);
    _cleanup_free_ char *tmp = xasprintf("%s/.ext4-%d.%s.tmp", dir, size_mb, r);
    _cleanup_free_ char *cmds = xasprintf("%s.cmds", tmp);
    snprintf(size, sizeof size, "%dM", size_mb);
    char *argv[] = {(char *)mke2fs, "-q", "-F", "-t", "ext4", "-T", "default", "-O", "^has_journal",
                    "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", tmp, size, NULL};
    int rc = run_tool(argv, err);
    const char *debugfs = rc == 0 ? find_tool("debugfs") : NULL;
    if (rc == 0 && debugfs) {
        static const char script[] = "sif / mode 041777\nrmdir /lost+found\n";
        rc = write_file_atomic(cmds, script, sizeof script - 1, 0600, err);
        char *dargv[] = {(char *)debugfs, "-w", "-f", cmds, tmp, NULL};
        if (rc == 0)
            rc = run_tool(dargv, err);
        unlink(cmds);
    }
    if (rc == 0 && rename(tmp, final) < 0)
        rc = err_sys(err, "rename %s", final);
    if (rc < 0) {
        unlink(tmp);
        free(final);
        return err_wrap(err, "/tmp template of %d MB", size_mb);
    }
    *path = final;
    return 0;
}

/* Makes vm->tmp_img from src (a template, or a snapshot's disk region at
 * off/len), owned by the VM's uid. */
static int make_tmp_disk(microvm_t *vm, int src, off_t off, off_t len, uid_t uid, err_t *err)
{
    vm->tmp_img = xasprintf("%s/tmp.img", vm->run_dir);
    int fd = open(vm->tmp_img, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_sys(err, "create %s", vm->tmp_img);
    int rc = copy_sparse(src, off, fd, 0, len, err);
    if (rc == 0 && ftruncate(fd, len) < 0)
        rc = err_sys(err, "truncate %s", vm->tmp_img);
    if (rc == 0 && fchown(fd, uid, uid) < 0)
        rc = err_sys(err, "chown %s", vm->tmp_img);
    close(fd);
    vm->tmp_size = (uint64_t)len;
    return rc < 0 ? err_wrap(err, "/tmp disk") : 0;
}

/* ------------------------------------------------------------ QEMU arguments */

typedef struct argv_b {
    char **v;
    int n, cap;
} argv_b_t;

static void arg(argv_b_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(argv_b_t *a, const char *fmt, ...)
{
    if (a->n + 2 > a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = xrealloc(a->v, (size_t)a->cap * sizeof *a->v);
    }
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    a->v[a->n++] = s;
    a->v[a->n] = NULL;
}

static void argv_free(argv_b_t *a)
{
    for (int i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

static int vcpus_for(int memory_mb)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (memory_mb + 1768) / 1769; /* Lambda: one vCPU per 1769 MB */
    if (n < 1)
        n = 1;
    if (n > ncpu)
        n = (int)ncpu;
    if (n > 8)
        n = 8;
    return n < 1 ? 1 : n;
}

/* QEMU's command line.  microvm's virtio-mmio transport N raises IRQ 5+N
 * and the kernel probes transports from the highest down, so the buses are
 * fixed: root (7, IRQ 12) is vda, code (6) vdb, /tmp (5) vdc, the serial
 * port 4, and the RNG 2 (IRQ 7): transport 3 would take IRQ 8 from the RTC,
 * whose driver then fails (no /dev/rtc0 for the agent's clock re-read). */
static void build_argv(const microvm_t *vm, bool incoming, argv_b_t *a)
{
    bool kvm = !strcmp(vm->accel, "kvm");
    arg(a, "qemu-system-x86_64");
    arg(a, "-name"); /* for ps: which environment this QEMU is */
    arg(a, "flicker-%s", vm->id);
    arg(a, "-M");
    arg(a, "microvm,x-option-roms=off,rtc=on,acpi=off,isa-serial=%s",
        vm->console ? "on" : "off");
    arg(a, "-accel");
    if (kvm)
        arg(a, "kvm");
    else
        arg(a, "tcg,tb-size=%d", TB_SIZE_MB);
    arg(a, "-cpu");
    arg(a, kvm ? "host" : "max");
    arg(a, "-m");
    arg(a, "%dM", vm->memory_mb);
    arg(a, "-smp");
    arg(a, "%d", vm->vcpus);
    arg(a, "-nodefaults");
    arg(a, "-no-user-config");
    arg(a, "-nographic");
    arg(a, "-no-reboot");
    arg(a, "-sandbox");
    arg(a, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
    arg(a, "-msg");
    arg(a, "timestamp=on");
    arg(a, "-object");
    arg(a, "main-loop,id=main-loop,thread-pool-min=0,thread-pool-max=%d", IO_THREADS);
    arg(a, "-bios");
    arg(a, "%s", vmm_bios_jail_path());
    arg(a, "-kernel");
    arg(a, "/vm/vmlinux");
    arg(a, "-append");
    /* With a console (debugging), the kernel is not quiet either. */
    arg(a, "%s", vm->console ? CMDLINE_BASE " console=ttyS0" : CMDLINE_BASE " quiet");
    arg(a, "-drive");
    arg(a, "id=root,file=/vm/rootfs.img,format=raw,if=none,readonly=on");
    arg(a, "-device");
    arg(a, "virtio-blk-device,drive=root,bus=virtio-mmio-bus.7");
    if (vm->has_code) {
        arg(a, "-drive");
        arg(a, "id=code,file=/vm/code.img,format=raw,if=none,readonly=on");
        arg(a, "-device");
        arg(a, "virtio-blk-device,drive=code,bus=virtio-mmio-bus.6");
    }
    if (vm->tmp_img) {
        arg(a, "-drive");
        arg(a, "id=tmp,file=/vm/tmp.img,format=raw,if=none,discard=unmap");
        arg(a, "-device");
        arg(a, "virtio-blk-device,drive=tmp,bus=virtio-mmio-bus.5");
    }
    arg(a, "-chardev");
    arg(a, "socket,id=agent,fd=3");
    arg(a, "-device");
    arg(a, "virtio-serial-device,max_ports=2,bus=virtio-mmio-bus.4"); /* port 0: consoles only */
    arg(a, "-device");
    arg(a, "virtserialport,chardev=agent,name=" VMPROTO_PORT_NAME);
    arg(a, "-object");
    arg(a, "rng-builtin,id=rng");
    arg(a, "-device");
    arg(a, "virtio-rng-device,rng=rng,bus=virtio-mmio-bus.2");
    arg(a, "-chardev");
    arg(a, "socket,id=qmp,fd=4");
    arg(a, "-mon");
    arg(a, "chardev=qmp,mode=control");
    if (vm->console) {
        arg(a, "-chardev");
        arg(a, "stdio,id=con,signal=off");
        arg(a, "-serial");
        arg(a, "chardev:con");
    }
    if (incoming) {
        arg(a, "-incoming");
        arg(a, "fd:5");
        arg(a, "-S");
    }
}

/* ------------------------------------------------------------ QMP helpers */

static qmp_t *vm_qmp(microvm_t *vm, err_t *err)
{
    if (!vm->qmp && vm->qmp_fd >= 0) {
        int fd = vm->qmp_fd;
        vm->qmp_fd = -1;
        if (qmp_open(fd, QMP_TIMEOUT_MS, &vm->qmp, err) < 0)
            return NULL;
    }
    if (!vm->qmp)
        err_set(err, EPIPE, "the QMP connection is gone");
    return vm->qmp;
}

/* QMP's run state ("running", "paused", "inmigrate", ...), malloc'd. */
static char *vm_status(microvm_t *vm, int timeout_ms, err_t *err)
{
    qmp_t *q = vm_qmp(vm, err);
    json_t *ret = NULL;
    if (!q || qmp_exec(q, "query-status", NULL, &ret, timeout_ms, err) < 0)
        return NULL;
    const char *s = json_string_value(json_object_get(ret, "status"));
    char *out = xstrdup(s ? s : "?");
    json_decref(ret);
    return out;
}

/* When QEMU has died, replaces err with its last words ("QEMU exited:
 * load of migration failed: ...").  Returns true if it did. */
static bool qemu_died_msg(microvm_t *vm, err_t *err)
{
    if (!vm->relay || !err)
        return false;
    for (int i = 0; i < 100 && !vmrelay_qemu_reaped(vm->relay, NULL); i++)
        usleep(2000);
    if (!vmrelay_qemu_reaped(vm->relay, NULL))
        return false;
    usleep(5000); /* the stderr pipe's end follows the exit */
    char tail[600];
    vmrelay_stderr_tail(vm->relay, tail, sizeof tail);
    size_t n = strlen(tail);
    while (n && (tail[n - 1] == '\n' || tail[n - 1] == '\r'))
        tail[--n] = 0;
    char *line = strrchr(tail, '\n');
    line = line ? line + 1 : tail;
    /* "2026-...Z qemu-system-x86_64: msg" -> "msg" */
    char *q = strstr(line, "qemu-system-x86_64: ");
    if (q)
        line = q + 20;
    err_set(err, ECHILD, "QEMU exited: %s", *line ? line : "(no message)");
    return true;
}

/* ------------------------------------------------------------ create */

/* SHA-256 of a snapshot's contents: the migration stream, then every
 * non-zero 4 KiB block of the /tmp disk with its offset (so holes and
 * written zeros hash alike, and a sparse-unaware copy stays valid).
 * ~2 GB/s with SHA-NI: ~10 ms for a small guest's 20 MB. */
static int snap_digest(int shared_fd, const snap_hdr_t *h, unsigned char out[32], err_t *err)
{
    /* Our own open file description: QEMU may be reading shared_fd, and
     * SEEK_DATA/SEEK_HOLE would move its offset. */
    char self[40];
    snprintf(self, sizeof self, "/proc/self/fd/%d", shared_fd);
    _cleanup_close_ int fd = open(self, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_sys(err, "reopen the snapshot");
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = xmalloc(CHUNK);
    static const unsigned char zero[4096];
    int rc = 0;
    if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
        rc = err_set(err, ENOMEM, "sha256");
        goto out;
    }
    for (uint64_t off = 0; off < h->stream_len && rc == 0;) {
        size_t want = h->stream_len - off < CHUNK ? (size_t)(h->stream_len - off) : CHUNK;
        ssize_t n = pread(fd, buf, want, (off_t)(h->stream_off + off));
        if (n <= 0)
            rc = err_set(err, EIO, "reading the snapshot: %s", n < 0 ? strerror(errno) : "short file");
        else
            EVP_DigestUpdate(ctx, buf, (size_t)n);
        off += n > 0 ? (uint64_t)n : 0;
    }
    off_t end = (off_t)(h->disk_off + h->disk_len), pos = (off_t)h->disk_off;
    while (rc == 0 && h->disk_len && pos < end) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        if (data < 0 || data >= end)
            break;
        off_t hole = lseek(fd, data, SEEK_HOLE);
        if (hole < 0 || hole > end)
            hole = end;
        data &= ~(off_t)4095; /* disk_off is 4 KiB aligned */
        for (off_t o = data; o < hole && rc == 0;) {
            size_t want = hole - o < CHUNK ? (size_t)(hole - o) : CHUNK;
            ssize_t n = pread(fd, buf, want, o);
            if (n <= 0) {
                rc = err_set(err, EIO, "reading the snapshot's disk");
                break;
            }
            for (ssize_t b = 0; b < n; b += 4096) {
                size_t bl = (size_t)(n - b) < 4096 ? (size_t)(n - b) : 4096;
                if (!memcmp(buf + b, zero, bl))
                    continue;
                uint64_t at = (uint64_t)(o + b) - h->disk_off;
                EVP_DigestUpdate(ctx, &at, sizeof at);
                EVP_DigestUpdate(ctx, buf + b, bl);
            }
            o += n;
        }
        pos = hole;
    }
    unsigned int len = 32;
    if (rc == 0 && !EVP_DigestFinal_ex(ctx, out, &len))
        rc = err_set(err, EIO, "sha256");
out:
    EVP_MD_CTX_free(ctx);
    free(buf);
    return rc;
}

static int read_snap_hdr(int fd, const char *path, snap_hdr_t *h, err_t *err)
{
    unsigned char buf[SNAP_HDR];
    ssize_t n = pread(fd, buf, sizeof buf, 0);
    if (n != (ssize_t)sizeof buf)
        return err_set(err, EINVAL, "snapshot %s is truncated (no header)", path);
    memcpy(h, buf, sizeof *h);
    unsigned char want[32];
    memcpy(want, h->sum, 32);
    memset(((snap_hdr_t *)buf)->sum, 0, 32);
    unsigned char got[32];
    sha256(buf, sizeof buf, got);
    if (memcmp(h->magic, SNAP_MAGIC, 8) != 0)
        return err_set(err, EINVAL, "%s is not a flicker microVM snapshot", path);
    if (h->version != SNAP_VERSION || h->hdr_size != SNAP_HDR)
        return err_set(err, EINVAL, "snapshot %s has version %u (this worker reads %u)", path, h->version,
                       SNAP_VERSION);
    if (memcmp(want, got, 32) != 0)
        return err_set(err, EINVAL, "snapshot %s has a corrupt header", path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        return err_sys(err, "stat %s", path);
    if (h->stream_off != SNAP_HDR || h->stream_len == 0 ||
        h->stream_off + h->stream_len > (uint64_t)st.st_size ||
        (h->disk_len && h->disk_off + h->disk_len > (uint64_t)st.st_size))
        return err_set(err, EINVAL, "snapshot %s is truncated", path);
    h->family[sizeof h->family - 1] = 0;
    h->accel[sizeof h->accel - 1] = 0;
    return 0;
}

static int vm_create_params(const vm_params_t *p, microvm_t **out, err_t *err)
{
    *out = NULL;
    microvm_t *vm = xcalloc(1, sizeof *vm);
    vm->id = xstrdup(p->id);
    vm->run_dirfd = vm->api_fd = vm->out_rd = vm->exit_efd = vm->pidfd = vm->qmp_fd = -1;
    vm->pid = -1;
    vm->accel = p->accel;
    vm->memory_mb = p->memory_mb;
    vm->vcpus = vcpus_for(p->memory_mb);
    vm->cg.peak_fd = -1;
    snprintf(vm->family, sizeof vm->family, "%s", p->family);
    const char *console_path = getenv("FLICKER_VM_CONSOLE");
    vm->console = console_path && *console_path;
    vm->slot = slot_take(&g_slots);
    atomic_fetch_add(&g_count, 1);

    int chan[2] = {-1, -1}, qmpfd[2] = {-1, -1}, outp[2] = {-1, -1}, errp[2] = {-1, -1};
    int snap_fd = -1, console_fd = -1, tmpl_fd = -1;
    _cleanup_free_ char *cgname = NULL;
    char *kernel = NULL, *rootfs = NULL, *code = NULL, *tmpl = NULL;
    char rootfs_name[64];
    uint8_t *start = NULL;
    uint32_t start_len = 0;
    argv_b_t av = {0};
    snap_hdr_t sh;
    memset(&sh, 0, sizeof sh);
    uint64_t t0 = now_mono_us();

    if (vm->slot < 0) {
        err_set(err, EAGAIN, "no free microVM uid");
        goto fail;
    }
    uid_t uid = VM_UID_BASE + (uid_t)vm->slot;

    if (p->restore_from) {
        snap_fd = open(p->restore_from, O_RDONLY | O_CLOEXEC);
        if (snap_fd < 0) {
            err_sys(err, "snapshot %s", p->restore_from);
            goto fail;
        }
        if (read_snap_hdr(snap_fd, p->restore_from, &sh, err) < 0)
            goto fail;
        if (strcmp(sh.family, p->family) || sh.memory_mb != (uint32_t)p->memory_mb ||
            strcmp(sh.accel, p->accel) || sh.vcpus != (uint32_t)vm->vcpus ||
            (bool)sh.has_code != (p->code_dir != NULL)) {
            err_set(err, EINVAL, "snapshot %s was taken of another configuration (%s, %u MB, %u vCPUs, "
                    "%s) than this one (%s, %d MB, %d vCPUs, %s)", p->restore_from, sh.family,
                    sh.memory_mb, sh.vcpus, sh.accel, p->family, p->memory_mb, vm->vcpus, p->accel);
            goto fail;
        }
        vm->console = sh.console != 0; /* the device set must match the snapshot's */
    }

    /* The run dir: api socket, /tmp disk, private code image. */
    vm->run_dir = xasprintf("%s/%s", g_run_base, vm->id);
    if (mkdir(vm->run_dir, 0700) < 0) {
        err_sys(err, "mkdir %s", vm->run_dir);
        free(vm->run_dir);
        vm->run_dir = NULL;
        goto fail;
    }
    vm->run_dirfd = open(vm->run_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (vm->run_dirfd < 0) {
        err_sys(err, "open %s", vm->run_dir);
        goto fail;
    }
    snprintf(vm->api_path, sizeof vm->api_path, "/proc/self/fd/%d/api.sock", vm->run_dirfd);
    vm->api_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", vm->api_path);
    if (vm->api_fd < 0 || bind(vm->api_fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        listen(vm->api_fd, 64) < 0) {
        err_sys(err, "Runtime API socket");
        goto fail;
    }

    /* Guest images. */
    snprintf(rootfs_name, sizeof rootfs_name, "rootfs-%s.erofs", p->family);
    if (guest_file("vmlinux", &kernel, &vm->kernel, err) < 0 ||
        guest_file(rootfs_name, &rootfs, &vm->rootfs, err) < 0)
        goto fail;
    if (p->code_dir) {
        if (code_image(vm, p->code_dir, p->code_key, &code, err) < 0)
            goto fail;
        struct stat st;
        if (stat(code, &st) < 0) {
            err_sys(err, "%s", code);
            goto fail;
        }
        vm->code = ident_of(&st);
        vm->has_code = true;
    }
    if (p->restore_from) {
        if (!ident_eq(&sh.kernel, &vm->kernel) || !ident_eq(&sh.rootfs, &vm->rootfs) ||
            (vm->has_code && !ident_eq(&sh.code, &vm->code))) {
            err_set(err, ESTALE, "snapshot %s was taken with other guest images (kernel, root or code "
                    "image changed since)", p->restore_from);
            goto fail;
        }
        if (sh.disk_len && make_tmp_disk(vm, snap_fd, (off_t)sh.disk_off, (off_t)sh.disk_len, uid, err) < 0)
            goto fail;
        if (lseek(snap_fd, (off_t)sh.stream_off, SEEK_SET) < 0) {
            err_sys(err, "seek %s", p->restore_from);
            goto fail;
        }
    } else if (p->ephemeral_mb > 0) {
        if (tmp_template(p->ephemeral_mb, &tmpl, err) < 0)
            goto fail;
        tmpl_fd = open(tmpl, O_RDONLY | O_CLOEXEC);
        if (tmpl_fd < 0) {
            err_sys(err, "open %s", tmpl);
            goto fail;
        }
        if (make_tmp_disk(vm, tmpl_fd, 0, (off_t)p->ephemeral_mb << 20, uid, err) < 0)
            goto fail;
    }

    /* Channels. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, chan) < 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmpfd) < 0 || pipe2(outp, O_CLOEXEC) < 0 ||
        pipe2(errp, O_CLOEXEC) < 0) {
        err_sys(err, "channels");
        goto fail;
    }
    fcntl(outp[0], F_SETPIPE_SZ, 1 << 20); /* the relay's log bound fits in the pipe */
    fcntl(outp[0], F_SETFL, O_NONBLOCK);
    vm->exit_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (vm->exit_efd < 0) {
        err_sys(err, "eventfd");
        goto fail;
    }
    if (vm->console) {
        console_fd = open(console_path ? console_path : "/dev/null",
                          O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (console_fd < 0) {
            err_sys(err, "console %s", console_path ? console_path : "/dev/null");
            goto fail;
        }
    }

    /* The cgroup: guest RAM + QEMU's own overhead; threads only. */
    cgroup_limits_t lim = {
        .memory_bytes = (uint64_t)(p->memory_mb + OVERHEAD_MB + (strcmp(vm->accel, "tcg") ? 0 : TB_SIZE_MB))
                        << 20,
        .cpu_period_us = CPU_PERIOD_US,
        .cpu_quota_us = 0,
        .pids_max = PIDS_BASE + vm->vcpus + IO_THREADS,
    };
    cgname = xasprintf("vm-%s", vm->id);
    if (g_root.ops->create(&g_root, cgname, &lim, &vm->cg, err) < 0)
        goto fail;
    vm->have_cg = true;

    build_argv(vm, p->restore_from != NULL, &av);
    vmm_launch_t l = {
        .id = vm->id,
        .argv = av.v,
        .fds = {chan[1], qmpfd[1], snap_fd},
        .nfds = p->restore_from ? 3 : 2,
        .stdout_fd = console_fd,
        .stderr_fd = errp[1],
        .uid = uid,
        .gid = uid,
        .extra_gid = (gid_t)-1,
        .kvm = !strcmp(vm->accel, "kvm"),
        .cg = &vm->cg,
    };
    l.files[l.nfiles++] = (vmm_file_t){kernel, "/vm/vmlinux", false};
    l.files[l.nfiles++] = (vmm_file_t){rootfs, "/vm/rootfs.img", false};
    if (vm->has_code)
        l.files[l.nfiles++] = (vmm_file_t){code, "/vm/code.img", false};
    if (vm->tmp_img)
        l.files[l.nfiles++] = (vmm_file_t){vm->tmp_img, "/vm/tmp.img", true};
    uint64_t t_spawn = now_mono_us();
    if (vmm_spawn(&l, &vm->pid, &vm->pidfd, err) < 0)
        goto fail;
    double spawn_ms = (double)(now_mono_us() - t_spawn) / 1000.0;
    close(chan[1]);
    close(qmpfd[1]);
    close(errp[1]);
    chan[1] = qmpfd[1] = errp[1] = -1;
    vm->qmp_fd = qmpfd[0];
    qmpfd[0] = -1;
    vm->out_rd = outp[0]; /* the output pipe is the relay's and the worker's only */
    outp[0] = -1;

    if (!p->restore_from) {
        start = vmproto_encode_start(p->argv, p->envp, &start_len);
        if (!start) {
            err_set(err, E2BIG, "the runtime's arguments and environment exceed %u bytes",
                    VMPROTO_MAX_PAYLOAD);
            goto fail;
        }
    }
    vmrelay_config_t rc = {
        .id = vm->id,
        .chan_fd = chan[0],
        .out_fd = outp[1],
        .exit_fd = vm->exit_efd,
        .api_path = vm->api_path,
        .qemu_pidfd = vm->pidfd,
        .stderr_fd = errp[0],
        .start = start,
        .start_len = start_len,
        .boot_timeout_ms = p->boot_timeout_ms,
        .features = sh.agent_features,
    };
    chan[0] = errp[0] = outp[1] = -1; /* taken by the relay, even on failure */
    if (vmrelay_start(&rc, &vm->relay, err) < 0)
        goto fail;

    if (p->restore_from) {
        /* While QEMU starts and loads (the guest stays paused: -S), check
         * the file's contents; then wait for the load, resume, and let the
         * guest regain uniqueness. */
        unsigned char content[32];
        uint64_t t_digest = now_mono_us();
        if (snap_digest(snap_fd, &sh, content, err) < 0) {
            err_wrap(err, "snapshot %s", p->restore_from);
            goto fail;
        }
        if (memcmp(content, sh.content, 32) != 0) {
            err_set(err, EINVAL, "snapshot %s is corrupt (its contents do not match the header's "
                    "checksum)", p->restore_from);
            goto fail;
        }
        double digest_ms = (double)(now_mono_us() - t_digest) / 1000.0;
        uint64_t deadline = now_mono_ms() + LOAD_TIMEOUT_MS;
        char *st = NULL;
        for (;;) {
            free(st);
            st = vm_status(vm, LOAD_TIMEOUT_MS, err);
            if (!st || strcmp(st, "inmigrate") != 0 || now_mono_ms() > deadline)
                break;
            usleep(2000);
        }
        if (!st) {
            qemu_died_msg(vm, err);
            err_wrap(err, "loading snapshot %s", p->restore_from);
            goto fail;
        }
        bool loaded = !strcmp(st, "paused") || !strcmp(st, "prelaunch");
        if (!loaded) {
            err_set(err, EIO, "loading snapshot %s: the VM is \"%s\" after the load", p->restore_from, st);
            free(st);
            goto fail;
        }
        free(st);
        double load_ms = (double)(now_mono_us() - t0) / 1000.0;
        if (qmp_exec(vm->qmp, "cont", NULL, NULL, QMP_TIMEOUT_MS, err) < 0)
            goto fail;
        uint8_t payload[VMPROTO_RESTORE_LEN];
        if (getrandom(payload, 32, 0) != 32) {
            err_sys(err, "getrandom");
            goto fail;
        }
        random_bytes(payload + 32, 16);
        payload[32 + 6] = (uint8_t)((payload[32 + 6] & 0x0f) | 0x40); /* a v4 UUID */
        payload[32 + 8] = (uint8_t)((payload[32 + 8] & 0x3f) | 0x80);
        if (vmrelay_restore(vm->relay, payload, RESTORED_TIMEOUT_MS, err) < 0) {
            qemu_died_msg(vm, err);
            err_wrap(err, "restoring snapshot %s", p->restore_from);
            goto fail;
        }
        vm->restored = true;
        log_debug(ROLE, "vm %s restored from %s: prepared in %.1f ms, jail+exec %.1f ms, contents checked "
                  "in %.1f ms, state loaded at %.1f ms, RESTORED at %.1f ms", vm->id, p->restore_from,
                  (double)(t_spawn - t0) / 1000.0, spawn_ms, digest_ms, load_ms,
                  (double)(now_mono_us() - t0) / 1000.0);
    } else {
        log_debug(ROLE, "vm %s: prepared in %.1f ms, jail+exec %.1f ms", vm->id,
                  (double)(t_spawn - t0) / 1000.0, spawn_ms);
    }

    free(start);
    argv_free(&av);
    free(kernel);
    free(rootfs);
    free(code);
    free(tmpl);
    if (snap_fd >= 0)
        close(snap_fd);
    if (tmpl_fd >= 0)
        close(tmpl_fd);
    if (console_fd >= 0)
        close(console_fd);
    *out = vm;
    return 0;

fail:
    err_wrap(err, "microVM %s", p->id);
    for (int i = 0; i < 2; i++) {
        int fds[] = {chan[i], qmpfd[i], outp[i], errp[i]};
        for (size_t k = 0; k < ARRAY_LEN(fds); k++)
            if (fds[k] >= 0)
                close(fds[k]);
    }
    if (snap_fd >= 0)
        close(snap_fd);
    if (tmpl_fd >= 0)
        close(tmpl_fd);
    if (console_fd >= 0)
        close(console_fd);
    free(start);
    argv_free(&av);
    free(kernel);
    free(rootfs);
    free(code);
    free(tmpl);
    vm_destroy(vm, NULL);
    return -1;
}

/* ------------------------------------------------------------ accelerator */

/* Boots the provided guest under KVM and requires its HELLO within
 * PROBE_TIMEOUT_MS.  Returns 1 (KVM works), 0 (it does not: why says so), or
 * -1 when the probe could not run (no guest images yet: not cached). */
static int probe_kvm(char *why, size_t whylen)
{
    err_t err;
    if (microvm_system_init(NULL, &err) < 0) {
        snprintf(why, whylen, "cannot probe KVM: %.250s", err.msg);
        return -1;
    }
    char *argv[] = {"/bin/true", NULL};
    char *envp[] = {NULL};
    char id[32];
    snprintf(id, sizeof id, "kvm-probe-%d", (int)getpid());
    vm_params_t p = {.id = id, .accel = "kvm", .memory_mb = 128, .family = "provided",
                     .argv = argv, .envp = envp, .boot_timeout_ms = PROBE_TIMEOUT_MS};
    microvm_t *vm = NULL;
    uint64_t t0 = now_mono_ms();
    if (vm_create_params(&p, &vm, &err) < 0) {
        snprintf(why, whylen, "KVM probe guest did not start: %.250s", err.msg);
        return err.code == ENOENT ? -1 : 0;
    }
    int ok = 0;
    while (now_mono_ms() - t0 < PROBE_TIMEOUT_MS) {
        int r = vmrelay_wait_hello(vm->relay, 100, &err);
        if (r == 1) {
            ok = 1;
            snprintf(why, whylen, "a probe guest booted under KVM (HELLO after %.0f ms)",
                     vmrelay_ready_ms(vm->relay));
            break;
        }
        if (r < 0) {
            snprintf(why, whylen, "the KVM probe guest died: %.250s", err.msg);
            break;
        }
        /* A guest KVM cannot run stops QEMU with "internal-error". */
        char *st = vm_status(vm, 1000, &err);
        if (st && (!strcmp(st, "internal-error") || !strcmp(st, "guest-panicked") ||
                   !strcmp(st, "shutdown"))) {
            snprintf(why, whylen, "the KVM probe guest stopped with QEMU state \"%s\"", st);
            free(st);
            break;
        }
        free(st);
    }
    if (!ok && !why[0])
        snprintf(why, whylen, "no HELLO from the KVM probe guest within %d ms", PROBE_TIMEOUT_MS);
    vm_destroy(vm, NULL);
    return ok;
}

const char *microvm_accelerator(void)
{
    pthread_mutex_lock(&g_accel_lock);
    if (!g_accel) {
        const char *force = getenv("FLICKER_VM_ACCEL");
        char why[300] = "";
        if (force && (!strcmp(force, "kvm") || !strcmp(force, "tcg"))) {
            g_accel = !strcmp(force, "kvm") ? "kvm" : "tcg";
            snprintf(g_accel_reason, sizeof g_accel_reason, "forced by FLICKER_VM_ACCEL=%s", force);
        } else {
            int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
            if (fd < 0) {
                g_accel = "tcg";
                snprintf(g_accel_reason, sizeof g_accel_reason, "no usable /dev/kvm (%s)", strerror(errno));
            } else {
                close(fd);
                int r = probe_kvm(why, sizeof why);
                if (r >= 0) {
                    g_accel = r ? "kvm" : "tcg";
                    snprintf(g_accel_reason, sizeof g_accel_reason, "%s", why);
                } else {
                    snprintf(g_accel_reason, sizeof g_accel_reason, "%s", why);
                }
            }
        }
        if (g_accel && !strcmp(g_accel, "kvm"))
            log_info(ROLE, "accelerator: KVM (%s)", g_accel_reason);
        else if (g_accel)
            log_warn(ROLE, "accelerator: TCG, software emulation, much slower than KVM (%s)", g_accel_reason);
    }
    const char *a = g_accel ? g_accel : "tcg"; /* undecided (no guest yet): TCG for now */
    pthread_mutex_unlock(&g_accel_lock);
    return a;
}

const char *microvm_accelerator_reason(void)
{
    pthread_mutex_lock(&g_accel_lock);
    const char *r = g_accel ? g_accel_reason : "not decided yet";
    pthread_mutex_unlock(&g_accel_lock);
    return r;
}

/* ------------------------------------------------------------ isolation ops */

static int vm_create(const sandbox_spec_t *spec, void **out, err_t *err)
{
    *out = NULL;
    if (!valid_name(spec->id, 64) || strchr(spec->id, '='))
        return err_set(err, EINVAL, "bad microVM id");
    if (!spec->argv || !spec->argv[0] || spec->memory_mb < 64)
        return err_set(err, EINVAL, "bad microVM spec (argv, memory >= 64 MB)");
    const char *family = runtime_family(spec->runtime);
    if (!family)
        return err_set(err, ENOTSUP, "runtime %s has no microVM guest image", spec->runtime);
    if (microvm_system_init(spec->state_dir, err) < 0)
        return -1;
    const char *accel = microvm_accelerator();
    vm_params_t p = {
        .id = spec->id,
        .accel = accel,
        .memory_mb = spec->memory_mb,
        .family = family,
        .code_dir = spec->code_dir,
        .code_key = spec->code_key,
        .ephemeral_mb = spec->ephemeral_mb > 0 ? spec->ephemeral_mb : 512,
        .argv = spec->argv,
        .envp = spec->envp,
        .restore_from = spec->restore_from && *spec->restore_from ? spec->restore_from : NULL,
        .boot_timeout_ms = !strcmp(accel, "kvm") ? BOOT_TIMEOUT_KVM_MS : BOOT_TIMEOUT_TCG_MS,
    };
    microvm_t *vm = NULL;
    if (vm_create_params(&p, &vm, err) < 0)
        return -1;
    if (!spec->defer_cpu_limit) {
        if (vm_cpu(vm, err) < 0) {
            vm_destroy(vm, NULL);
            return -1;
        }
    }
    *out = vm;
    return 0;
}

static int vm_api_fd(const void *h) { return ((const microvm_t *)h)->api_fd; }
static int vm_output_fd(const void *h) { return ((const microvm_t *)h)->out_rd; }
static int vm_exit_fd(const void *h) { return ((const microvm_t *)h)->exit_efd; }
static pid_t vm_pid(const void *h) { return ((const microvm_t *)h)->pid; }

static int vm_reap(void *h, int *status, err_t *err)
{
    microvm_t *vm = h;
    int st = 0;
    if (!vm->relay || !vmrelay_exited(vm->relay, &st, NULL, NULL, 0))
        return 0;
    if (status)
        *status = st;
    return 1;
}

/* The VM's CFS quota: Lambda's share (memory / 1769 MB of a CPU).  Under
 * TCG every guest instruction costs several host instructions, so the
 * share is multiplied by FLICKER_VM_TCG_CPU_FACTOR (default
 * TCG_CPU_FACTOR, 1 = literal) to give the guest roughly the CPU Lambda
 * would; never more than the VM's vCPUs. */
static uint64_t vm_quota(const microvm_t *vm)
{
    uint64_t q = cgroup_cpu_quota(vm->memory_mb, CPU_PERIOD_US);
    if (!strcmp(vm->accel, "tcg")) {
        const char *f = getenv("FLICKER_VM_TCG_CPU_FACTOR");
        long factor = f && atol(f) > 0 ? atol(f) : TCG_CPU_FACTOR;
        q *= (uint64_t)factor;
    }
    uint64_t cap = (uint64_t)vm->vcpus * CPU_PERIOD_US;
    return q > cap ? cap : q;
}

static int vm_cpu(void *h, err_t *err)
{
    microvm_t *vm = h;
    return g_root.ops->set_cpu(&vm->cg, vm_quota(vm), CPU_PERIOD_US, err);
}

static int vm_freeze(void *h, err_t *err)
{
    microvm_t *vm = h;
    int rc = g_root.ops->freeze(&vm->cg, true, VM_FREEZE_WAIT_MS, err);
    if (rc != 0)
        return rc < 0 ? -1 : err_set(err, ETIMEDOUT, "vm %s did not freeze in %d ms", vm->id, VM_FREEZE_WAIT_MS);
    vm->frozen = true;
    return 0;
}

static int vm_thaw(void *h, err_t *err)
{
    microvm_t *vm = h;
    if (g_root.ops->freeze(&vm->cg, false, 0, err) < 0)
        return -1;
    vm->frozen = false;
    return 0;
}

static uint64_t vm_peak(void *h) { return g_root.ops->memory_peak(&((microvm_t *)h)->cg); }
static void vm_reset_peak(void *h) { g_root.ops->reset_peak(&((microvm_t *)h)->cg); }

static int vm_oom(void *h)
{
    microvm_t *vm = h;
    int guest = 0;
    if (vm->relay)
        vmrelay_exited(vm->relay, NULL, &guest, NULL, 0);
    return g_root.ops->oom_kills(&vm->cg) + guest;
}

/* Always frees vm.  Order: kill QEMU (thawed, or SIGKILL waits), stop the
 * relay (it may be reaping), reap if it did not, then the cgroup, files. */
static int vm_destroy(void *h, err_t *err)
{
    microvm_t *vm = h;
    if (!vm)
        return 0;
    int rc = 0;
    if (vm->relay) /* an exit we cause is no news: the relay stays quiet */
        vmrelay_fail(vm->relay, "destroyed");
    if (vm->pidfd >= 0) {
        syscall(SYS_pidfd_send_signal, vm->pidfd, SIGKILL, NULL, 0);
        if (vm->have_cg)
            g_root.ops->freeze(&vm->cg, false, 0, NULL);
    }
    /* The relay may be reaping QEMU right now: stop it first, then reap
     * here if it did not (waitid then fails with ECHILD: fine). */
    vmrelay_stop(vm->relay);
    vm->relay = NULL;
    if (vm->pidfd >= 0) {
        siginfo_t si;
        while (waitid((idtype_t)P_PIDFD, (id_t)vm->pidfd, &si, WEXITED | __WALL) < 0 && errno == EINTR) {
        }
        close(vm->pidfd);
        vm->pidfd = -1;
    }
    qmp_close(vm->qmp);
    vm->qmp = NULL;
    if (vm->have_cg) {
        if (g_root.ops->kill_all(&vm->cg, 5000, err) < 0)
            rc = -1;
        if (g_root.ops->remove(&vm->cg, rc < 0 ? NULL : err) < 0)
            rc = -1;
        vm->have_cg = false;
    }
    int fds[] = {vm->api_fd, vm->out_rd, vm->exit_efd, vm->qmp_fd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (vm->run_dir) {
        err_t e2;
        if (rm_rf(vm->run_dir, &e2) < 0) {
            log_warn(ROLE, "vm %s: %s", vm->id, e2.msg);
            if (rc == 0 && err)
                *err = e2;
            rc = -1;
        }
    }
    if (vm->run_dirfd >= 0)
        close(vm->run_dirfd);
    if (rc < 0)
        log_warn(ROLE, "vm %s: destroy incomplete: %s", vm->id, err ? err->msg : "?");
    slot_give(&g_slots, vm->slot);
    free(vm->run_dir);
    free(vm->tmp_img);
    free(vm->own_code);
    free(vm->id);
    free(vm);
    atomic_fetch_sub(&g_count, 1);
    return rc;
}

/* ------------------------------------------------------------ snapshot */

static int vm_snapshot(void *h, const char *path, err_t *err)
{
    microvm_t *vm = h;
    uint64_t t0 = now_mono_us();
    if (vm->relay && vmrelay_exited(vm->relay, NULL, NULL, NULL, 0))
        return err_set(err, ECHILD, "vm %s has exited: nothing to snapshot", vm->id);
    if (vm->frozen && vm_thaw(vm, err) < 0) /* QMP needs QEMU running */
        return -1;
    qmp_t *q = vm_qmp(vm, err);
    if (!q || qmp_exec(q, "stop", NULL, NULL, QMP_TIMEOUT_MS, err) < 0)
        return err_wrap(err, "snapshot of vm %s", vm->id);
    char r[17];
    rand_hex(r, 8);
    _cleanup_free_ char *tmp = xasprintf("%s.tmp-%s", path, r);
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_sys(err, "create %s", tmp);
    int rc = -1;
    json_t *ret = NULL;
    if (lseek(fd, SNAP_HDR, SEEK_SET) != SNAP_HDR) {
        err_sys(err, "seek");
        goto out;
    }
    json_t *params = json_pack("{s:I}", "max-bandwidth", (json_int_t)1 << 40);
    int prc = qmp_exec(q, "migrate-set-parameters", params, NULL, QMP_TIMEOUT_MS, err);
    json_decref(params);
    if (prc < 0 || qmp_getfd(q, fd, "flicker-snap", QMP_TIMEOUT_MS, err) < 0)
        goto out;
    json_t *margs = json_pack("{s:s}", "uri", "fd:flicker-snap");
    prc = qmp_exec(q, "migrate", margs, NULL, QMP_TIMEOUT_MS, err);
    json_decref(margs);
    if (prc < 0)
        goto out;
    uint64_t deadline = now_mono_ms() + MIGRATE_TIMEOUT_MS;
    for (;;) {
        json_decref(ret);
        ret = NULL;
        if (qmp_exec(q, "query-migrate", NULL, &ret, QMP_TIMEOUT_MS, err) < 0)
            goto out;
        const char *st = json_string_value(json_object_get(ret, "status"));
        if (st && !strcmp(st, "completed"))
            break;
        if (st && (!strcmp(st, "failed") || !strcmp(st, "cancelled"))) {
            const char *desc = json_string_value(json_object_get(ret, "error-desc"));
            err_set(err, EIO, "QEMU's migration %s: %s", st, desc ? desc : "no reason given");
            goto out;
        }
        if (now_mono_ms() > deadline) {
            err_set(err, ETIMEDOUT, "saving the VM state took over %d s", MIGRATE_TIMEOUT_MS / 1000);
            goto out;
        }
        usleep(2000);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        err_sys(err, "stat");
        goto out;
    }
    snap_hdr_t hd;
    memset(&hd, 0, sizeof hd);
    memcpy(hd.magic, SNAP_MAGIC, 8);
    hd.version = SNAP_VERSION;
    hd.hdr_size = SNAP_HDR;
    hd.stream_off = SNAP_HDR;
    hd.stream_len = (uint64_t)st.st_size - SNAP_HDR;
    if (hd.stream_len == 0) {
        err_set(err, EIO, "QEMU wrote no state");
        goto out;
    }
    if (vm->tmp_img) {
        hd.disk_off = ((uint64_t)st.st_size + 4095) & ~(uint64_t)4095;
        hd.disk_len = vm->tmp_size;
        int dfd = open(vm->tmp_img, O_RDONLY | O_CLOEXEC);
        if (dfd < 0) {
            err_sys(err, "open %s", vm->tmp_img);
            goto out;
        }
        int crc = copy_sparse(dfd, 0, fd, (off_t)hd.disk_off, (off_t)hd.disk_len, err);
        close(dfd);
        if (crc < 0)
            goto out;
        if (ftruncate(fd, (off_t)(hd.disk_off + hd.disk_len)) < 0) {
            err_sys(err, "truncate");
            goto out;
        }
    }
    hd.memory_mb = (uint32_t)vm->memory_mb;
    hd.vcpus = (uint32_t)vm->vcpus;
    snprintf(hd.accel, sizeof hd.accel, "%s", vm->accel);
    snprintf(hd.family, sizeof hd.family, "%s", vm->family);
    hd.console = vm->console;
    hd.has_code = vm->has_code;
    hd.agent_features = vm->relay ? vmrelay_features(vm->relay) : 0;
    hd.kernel = vm->kernel;
    hd.rootfs = vm->rootfs;
    hd.code = vm->code;
    hd.created_ms = now_wall_ms();
    if (snap_digest(fd, &hd, hd.content, err) < 0)
        goto out;
    unsigned char buf[SNAP_HDR];
    memset(buf, 0, sizeof buf);
    memcpy(buf, &hd, sizeof hd);
    sha256(buf, sizeof buf, ((snap_hdr_t *)buf)->sum);
    if (pwrite(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf || fdatasync(fd) < 0) {
        err_sys(err, "write %s", tmp);
        goto out;
    }
    if (rename(tmp, path) < 0) {
        err_sys(err, "rename to %s", path);
        goto out;
    }
    rc = 0;
    log_debug(ROLE, "vm %s: snapshot %s (%llu MB state) in %.1f ms", vm->id, path,
              (unsigned long long)(hd.stream_len >> 20), (double)(now_mono_us() - t0) / 1000.0);
out:
    json_decref(ret);
    close(fd);
    if (rc < 0) {
        unlink(tmp);
        err_wrap(err, "snapshot of vm %s", vm->id);
    }
    return rc;
}

/* ------------------------------------------------------------ status */

double microvm_ready_ms(const void *h)
{
    const microvm_t *vm = h;
    return vm && vm->relay ? vmrelay_ready_ms(vm->relay) : 0;
}

bool microvm_restored(const void *h) { return h && ((const microvm_t *)h)->restored; }

const isolation_ops_t microvm_isolation = {
    .name = "microvm",
    .create = vm_create,
    .api_fd = vm_api_fd,
    .output_fd = vm_output_fd,
    .exit_fd = vm_exit_fd,
    .pid = vm_pid,
    .reap = vm_reap,
    .apply_cpu_limit = vm_cpu,
    .freeze = vm_freeze,
    .thaw = vm_thaw,
    .memory_peak = vm_peak,
    .reset_peak = vm_reset_peak,
    .oom_kills = vm_oom,
    .destroy = vm_destroy,
    .snapshot = vm_snapshot,
};
