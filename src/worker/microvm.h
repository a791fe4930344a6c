/* microvm.h - execution environments as QEMU microVMs (the "microvm"
 * isolation backend, worker/isolation.h).
 *
 * Each environment is one `qemu-system-x86_64 -M microvm` guest: the
 * guest kernel and a read-only erofs root image for its runtime family
 * (provided, python, nodejs) from the guest directory, the function's code
 * as an erofs image, /tmp as a private ext4 disk, one virtio-serial port
 * to flicker's guest agent (worker/vmproto.h) and a virtio RNG; no network
 * device, no firmware beyond qboot.  QEMU runs jailed (worker/vmm.h) in its
 * own cgroup; a relay thread (worker/vmrelay.h) turns the agent channel
 * into the fds isolation.h promises.  Details and measurements:
 * microvm.c's header comment.
 *
 * Files:
 *   guest dir ($FLICKER_GUEST_DIR, else <dir of the flicker binary>/guest):
 *     vmlinux, rootfs-{provided,python,nodejs}.erofs
 *   <state_dir>/vm-code/<code_key>.erofs   code images (cache, shared)
 *   <state_dir>/vm-tmp/ext4-<MB>.img       empty /tmp templates (cache)
 *   <state_dir>/vm-run/<instance>/<id>/    one VM's socket and disks
 *
 * Accelerator: KVM only where a probe guest really boots (the real guest
 * must say HELLO within a few seconds under -accel kvm), else TCG;
 * FLICKER_VM_ACCEL=kvm|tcg forces one.  Decided once per process. */
#ifndef FLICKER_MICROVM_H
#define FLICKER_MICROVM_H
#include <stdbool.h>
#include "common/err.h"

/* Optional one-time setup (create does it on first use): finds QEMU, its
 * jail contents, the cgroup layout, and removes what dead worker instances
 * left under state_dir/vm-run.  Returns 0 or -1/err. */
int microvm_system_init(const char *state_dir, err_t *err);
/* Removes this process's (empty) parent cgroups and run directory.  Call
 * after every microVM is destroyed. */
void microvm_system_shutdown(void);

/* "kvm" or "tcg": the accelerator microVMs use in this process.  The first
 * call decides (probing KVM with a real guest boot, a few seconds at
 * most, unless FLICKER_VM_ACCEL says); thread-safe. */
const char *microvm_accelerator(void);
/* One line saying why that accelerator was chosen. */
const char *microvm_accelerator_reason(void);

/* For an environment handle of this backend (isolation_ops_t's void *):
 * milliseconds from starting QEMU to the agent's HELLO (a boot) or to
 * RESTORED (a snapshot restore); 0 until then. */
double microvm_ready_ms(const void *h);
/* True when the environment was restored from a snapshot. */
bool microvm_restored(const void *h);

/* Number of microVMs alive in this process. */
int microvm_count(void);
#endif
