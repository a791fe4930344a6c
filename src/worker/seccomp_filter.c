/* seccomp_filter.c - builds the sandbox's seccomp deny-list with libseccomp.
 *
 * Policy: allow by default (runtimes need a broad, changing set of
 * syscalls), deny with EPERM what a function never needs and what widens
 * the kernel attack surface or could undo the sandbox: mount and the new
 * mount API, namespaces (setns, unshare, clone with CLONE_NEW* flags),
 * tracing and cross-process memory access, module and kexec loading, bpf,
 * perf, keyrings, handle-based opens, userfaultfd, swap, reboot, accounting,
 * quotas, syslog, raw port I/O, lookup_dcookie, vhangup, io_uring (its
 * operations bypass seccomp; libuv and others fall back), and personality
 * values other than the default (0) and the query (0xffffffff).  clone3 gets
 * ENOSYS: its flags live in memory, which seccomp cannot inspect, and glibc
 * falls back to clone(2) on ENOSYS.  Syscalls of the i386/x32 ABIs are
 * refused (EPERM) so the deny-list cannot be bypassed through them.
 *
 * Invariant: the exported program is self-contained BPF; installing it does
 * not touch libseccomp (see seccomp_filter_install). */
#include "worker/seccomp_filter.h"

#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <linux/seccomp.h>

#include "common/util.h"

/* Denied outright with EPERM. */
static const char *const deny_names[] = {
    "mount", "umount", "umount2", "pivot_root",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise",
    "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "create_module",
    "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key",
    "open_by_handle_at", "name_to_handle_at",
    "setns", "unshare",
    "userfaultfd",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "quotactl_fd", "syslog",
    "iopl", "ioperm",
    "move_mount", "fsopen", "fsmount", "fspick", "open_tree", "mount_setattr",
    "lookup_dcookie", "vhangup",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "nfsservctl", "uselib", "_sysctl", "get_kernel_syms", "query_module",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "stime",
};

#define CLONE_NS_FLAGS                                                                    \
    (CLONE_NEWNS | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC |          \
     CLONE_NEWUTS | CLONE_NEWCGROUP | 0x00000080 /* CLONE_NEWTIME */)

int seccomp_filter_build(struct sock_fprog *prog, err_t *err) {
    memset(prog, 0, sizeof(*prog));
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) return err_set(err, ENOMEM, "seccomp_init failed");
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ERRNO(EPERM));
    if (rc < 0) goto fail;
    for (size_t i = 0; i < ARRAY_LEN(deny_names); i++) {
        int nr = seccomp_syscall_resolve_name(deny_names[i]);
        if (nr == __NR_SCMP_ERROR) continue; /* not on this arch */
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
        if (rc < 0 && rc != -EEXIST) goto fail;
    }
    /* clone: x86-64 passes the flags in the first argument.  One rule per
     * namespace flag (libseccomp ORs rules). */
    for (int bit = 0; bit < 32; bit++) {
        unsigned long f = 1UL << bit;
        if (!(CLONE_NS_FLAGS & f)) continue;
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, f, f));
        if (rc < 0) goto fail;
    }
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc < 0) goto fail;
    /* personality: deny every 32-bit value except 0 and 0xffffffff.  libseccomp
     * allows one comparison per argument per rule, so express "not all bits
     * equal" as: (bit 0 set and bit j clear) or (bit 0 clear and bit j set),
     * for some j in 1..31. */
    for (int j = 1; j < 32; j++) {
        uint64_t m = 1ULL | (1ULL << j);
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(personality), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, m, 1ULL));
        if (rc < 0) goto fail;
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(personality), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, m, 1ULL << j));
        if (rc < 0) goto fail;
    }
    /* Export the BPF through a memfd and read it back. */
    int fd = memfd_create("flicker-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        seccomp_release(ctx);
        return err_sys(err, "memfd_create");
    }
    rc = seccomp_export_bpf(ctx, fd);
    seccomp_release(ctx);
    ctx = NULL;
    if (rc < 0) {
        close(fd);
        return err_set(err, -rc, "seccomp_export_bpf: %s", strerror(-rc));
    }
    off_t len = lseek(fd, 0, SEEK_END);
    if (len <= 0 || len % sizeof(struct sock_filter) != 0 ||
        len / sizeof(struct sock_filter) > 4096) {
        close(fd);
        return err_set(err, EINVAL, "seccomp: bad exported program size %lld", (long long)len);
    }
    struct sock_filter *f = xmalloc((size_t)len);
    ssize_t n = pread(fd, f, (size_t)len, 0);
    close(fd);
    if (n != len) {
        free(f);
        return err_set(err, EIO, "seccomp: short read of exported program");
    }
    prog->filter = f;
    prog->len = (unsigned short)(len / sizeof(struct sock_filter));
    return 0;
fail:
    seccomp_release(ctx);
    return err_set(err, -rc, "seccomp rule: %s", strerror(-rc));
}

void seccomp_filter_free(struct sock_fprog *prog) {
    free(prog->filter);
    prog->filter = NULL;
    prog->len = 0;
}

int seccomp_filter_install(const struct sock_fprog *prog) {
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0);
}
