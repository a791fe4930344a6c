/* vmm.h - starting QEMU in a jail, in the manner of Firecracker's jailer.
 *
 * vmm_spawn() starts one qemu-system-x86_64 as PID 1 of new mount, pid,
 * ipc, uts, network (no device but a down loopback) and cgroup
 * namespaces, inside a cgroup of the caller's, as an unprivileged uid/gid
 * with no capabilities and no_new_privs.  Its root is a read-only tmpfs
 * holding only what it needs: the QEMU binary and the shared libraries the
 * dynamic loader resolves for it (found once by vmm_init), the firmware,
 * /dev/{null,zero,urandom,random} (and /dev/kvm when asked), and the
 * caller's files (kernel, disk images) bound at the caller's paths under
 * /vm.  File descriptors (the agent channel, QMP, an incoming snapshot) are
 * passed by number: nothing QEMU uses is a socket path.
 *
 * The child is created with clone(CLONE_VM) on a private stack, like the
 * sandbox's (see sandbox.c): it never allocates, all strings are prepared
 * by the caller, and it only uses raw syscalls for credentials.  QEMU is
 * cloned with exit signal 0: reap it through its pidfd.
 *
 * Thread-safe after vmm_init. */
#ifndef FLICKER_VMM_H
#define FLICKER_VMM_H
#include <stdbool.h>
#include <sys/types.h>
#include "common/err.h"
#include "worker/cgroup.h"

#define VMM_MAX_FILES 16
#define VMM_MAX_FDS 8

typedef struct vmm_file {
    const char *host;   /* file on the host */
    const char *jail;   /* where QEMU sees it: "/vm/<name>" */
    bool writable;      /* read-write bind (the uid must be able to write it) */
} vmm_file_t;

typedef struct vmm_launch {
    const char *id;            /* for messages */
    char *const *argv;         /* QEMU's arguments; argv[0] is ignored */
    vmm_file_t files[VMM_MAX_FILES];
    int nfiles;
    int fds[VMM_MAX_FDS];      /* become fds 3, 4, ... in QEMU */
    int nfds;
    int stdout_fd, stderr_fd;  /* QEMU's stdout/stderr (-1: /dev/null) */
    uid_t uid;
    gid_t gid;
    gid_t extra_gid;           /* one supplementary group (kvm), or (gid_t)-1 */
    bool kvm;                  /* make /dev/kvm reachable */
    cgroup_t *cg;              /* QEMU runs in it from its first instruction */
} vmm_launch_t;

/* Finds qemu-system-x86_64 ($FLICKER_QEMU or PATH), its libraries (asking
 * its ELF interpreter, once) and the microvm firmware.  Idempotent; returns
 * 0 or -1/err (QEMU not installed: "apt-get install qemu-system-x86"). */
int vmm_init(err_t *err);

/* The host path of the QEMU binary (after vmm_init). */
const char *vmm_qemu_path(void);
/* The jail path of the firmware, to pass as -bios. */
const char *vmm_bios_jail_path(void);

/* Starts QEMU as described above.  On success *pid and *pidfd (close-on-
 * exec) identify it; it is running QEMU's main (the exec succeeded).  On
 * failure nothing is left (the child is killed and reaped) and err says
 * which jail step failed. */
int vmm_spawn(const vmm_launch_t *l, pid_t *pid, int *pidfd, err_t *err);
#endif
