/* vmrelay.h - the host end of one microVM's agent channel (vmproto.h).
 *
 * A relay is one thread that owns the byte stream to the guest agent (the
 * host end of QEMU's "flicker.0" virtserialport chardev) and turns it into
 * what the worker serves, as isolation.h asks of every backend:
 *   - HELLO  -> the relay answers with START (the runtime's argv/envp),
 *               preceded by CLOCK if the agent announced that feature;
 *   - OPEN   -> a new connection to the Runtime API's listening socket
 *               (api_path); DATA/CLOSE relay bytes and half-closes both ways;
 *   - LOG    -> written to the output pipe (the runtime's stdout/stderr);
 *   - EXIT   -> the runtime's wait status and guest OOM kills are kept, and
 *               exit_fd becomes readable (after the logs before it are out);
 *   - FAULT  -> logged (also into the output pipe) and treated as an exit
 *               with status 1;
 *   - RESTORED -> wakes vmrelay_restore.
 * The relay also watches QEMU (its pidfd: reaped here, status kept) and
 * QEMU's stderr pipe (lines go to the daemon log; the last ones are kept for
 * error messages).  The environment counts as exited (exit_fd readable) when
 * the agent reports EXIT or FAULT, when QEMU dies, when the guest breaks the
 * protocol (malformed or oversized frame, unknown stream, a host-only frame
 * type, too many streams: QEMU is killed), or when no HELLO arrives before
 * the boot deadline (QEMU is killed).
 *
 * Memory is bounded whatever the guest does: bytes waiting for the host
 * (stream data + logs) are capped at RELAY_HOST_HIGH plus one frame; past
 * that the relay stops reading the channel, so the guest's virtio queue
 * fills and its writers block (backpressure).  Bytes waiting for the guest
 * are capped at RELAY_GUEST_HIGH plus one read: past that the relay stops
 * reading the API connections.  At most RELAY_MAX_STREAMS streams exist.
 *
 * Thread-safety: vmrelay_* functions may be called from any one thread (the
 * owner); they synchronise with the relay thread internally. */
#ifndef FLICKER_VMRELAY_H
#define FLICKER_VMRELAY_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"

#define RELAY_HOST_HIGH (1u << 20)
#define RELAY_GUEST_HIGH (256u << 10)
#define RELAY_MAX_STREAMS 64

typedef struct vmrelay vmrelay_t;

typedef struct vmrelay_config {
    const char *id;        /* names the environment in log lines */
    int chan_fd;           /* stream socket to the agent (taken by the relay) */
    int out_fd;            /* write end of the output pipe (taken) */
    int exit_fd;           /* eventfd made readable on exit (borrowed: the caller
                              keeps it until after vmrelay_stop) */
    const char *api_path;  /* connect() address of the Runtime API socket */
    int qemu_pidfd;        /* pidfd of QEMU, reaped by the relay (borrowed), or -1 */
    int stderr_fd;         /* read end of QEMU's stderr (taken), or -1 */
    const uint8_t *start;  /* START payload sent on HELLO (copied); NULL: none is
                              expected (a restored VM never says HELLO) */
    uint32_t start_len;
    int boot_timeout_ms;   /* HELLO deadline from now (0: none) */
    uint32_t features;     /* a restored VM: what its agent announced in its
                              HELLO before the snapshot (VMPROTO_FEATURE_*) */
} vmrelay_config_t;

/* Starts the relay thread.  On failure the taken fds are closed. */
int vmrelay_start(const vmrelay_config_t *cfg, vmrelay_t **out, err_t *err);

/* Sends RESTORE (payload: VMPROTO_RESTORE_LEN bytes), then CLOCK when the
 * agent has VMPROTO_FEATURE_CLOCK, and waits up to timeout_ms for RESTORED.  Returns 0, or -1/err (timeout, or the
 * environment exited meanwhile: err says why). */
int vmrelay_restore(vmrelay_t *r, const uint8_t *payload, int timeout_ms, err_t *err);

/* Waits up to timeout_ms for HELLO.  Returns 1 when it arrived, 0 on
 * timeout, -1 when the environment exited first (why in err). */
int vmrelay_wait_hello(vmrelay_t *r, int timeout_ms, err_t *err);

/* Exit state: returns true once the environment has exited; then *status
 * is a wait status for the runtime (the agent's, or a synthesised one:
 * killed by SIGKILL when the VM died, exit 1 on FAULT) and *guest_ooms the
 * OOM kills the guest kernel reported.  why (may be NULL) gets a short
 * reason. */
bool vmrelay_exited(vmrelay_t *r, int *status, int *guest_ooms, char *why, size_t whylen);

/* Marks the environment exited with why and kills QEMU (through the
 * pidfd) unless it already exited.  Idempotent. */
void vmrelay_fail(vmrelay_t *r, const char *why);

/* The agent's VMPROTO_FEATURE_* bits (from its HELLO, or the config's for
 * a restored VM). */
uint32_t vmrelay_features(vmrelay_t *r);

/* QEMU's wait status once the relay reaped it: true and *status, else false. */
bool vmrelay_qemu_reaped(vmrelay_t *r, int *status);

/* Milliseconds from vmrelay_start to HELLO (boot) or to RESTORED
 * (restore); 0 while neither arrived. */
double vmrelay_ready_ms(vmrelay_t *r);

/* The last lines QEMU wrote to stderr (NUL-terminated, at most len-1 bytes). */
void vmrelay_stderr_tail(vmrelay_t *r, char *out, size_t len);

/* Protocol and flow counters (tests, status). */
typedef struct vmrelay_stats {
    uint64_t frames_in, frames_out;
    uint64_t bytes_to_api, bytes_from_api, log_bytes;
    uint64_t ignored_frames;  /* DATA/CLOSE for streams already gone */
    uint64_t streams_opened;
    int streams_open;
    size_t host_buffered, host_buffered_max;   /* bytes waiting for the host */
    size_t guest_buffered, guest_buffered_max; /* bytes waiting for the guest */
} vmrelay_stats_t;
void vmrelay_get_stats(vmrelay_t *r, vmrelay_stats_t *st);

/* Stops the thread, closes every fd it owns (channel, streams, output
 * pipe's write end, stderr) and frees r.  QEMU is neither killed nor
 * reaped here (the owner does that); NULL is fine. */
void vmrelay_stop(vmrelay_t *r);
#endif
