/* vmproto.h - the agent protocol between the worker (host) and flicker's
 * guest agent (PID 1 inside a microVM), over one virtio-serial port named
 * "flicker.0".  Pure C, no dependencies: compiled into the worker and into
 * the static guest agent.
 *
 * The port is a byte stream; it carries frames:
 *     type:u8  flags:u8 (0)  reserved:u16 (0)  stream:u32  len:u32   payload[len]
 * all little-endian, header VMPROTO_HDR bytes, len <= VMPROTO_MAX_PAYLOAD.
 * Anything else (unknown type, non-zero flags/reserved, oversize len) is a
 * protocol error: the host destroys the VM, the agent drops the frame and
 * resynchronises never (it treats the channel as broken: it sends FAULT and
 * reboots, which ends QEMU when it runs with -no-reboot).  The agent also
 * answers frames that are well formed but wrong for it (a type only the
 * agent sends, a second START, DATA for a stream it never opened, ...) with
 * FAULT; see docs/guest.md.
 *
 * The stream field is 0 in every frame that is not about a stream (HELLO,
 * START, LOG, EXIT, RESTORE, RESTORED, FAULT); the agent refuses a START or
 * RESTORE with any other value.
 *
 * Streams relay the runtime's TCP connections to 127.0.0.1:9001 in the
 * guest to the worker's Runtime API: the agent opens stream ids (1, 2, ...,
 * never reused within a boot), DATA carries bytes either way, CLOSE ends a
 * direction... a stream is gone when both sides have sent CLOSE.
 *
 *   guest -> host                          host -> guest
 *   HELLO   agent is up (payload: u32      START    run the runtime (payload:
 *           protocol version)                       vmproto_encode_start)
 *   OPEN    new stream                     DATA     bytes for a stream
 *   DATA    bytes from the runtime         CLOSE    host closed the stream
 *   CLOSE   the runtime closed it          RESTORE  the VM was restored from a
 *   LOG     runtime stdout/stderr bytes             snapshot: payload 32 bytes of
 *   EXIT    the runtime exited (payload             entropy + 16-byte boot id
 *           vmproto_encode_exit)           CLOCK    the host's wall clock (only to
 *                                                   agents with VMPROTO_FEATURE_CLOCK)
 *   RESTORED  RESTORE handled (streams pending at snapshot time were
 *             re-opened and their unanswered request bytes re-sent first)
 *   FAULT   the agent cannot go on (payload: text); the host reports it
 *           as the environment's init failure
 *
 * Invariants: a frame's payload never exceeds VMPROTO_MAX_PAYLOAD; the
 * decoder never reads past what it was given and never allocates more than
 * one payload. */
#ifndef FLICKER_VMPROTO_H
#define FLICKER_VMPROTO_H
#include <stddef.h>
#include <stdint.h>

#define VMPROTO_VERSION 1
#define VMPROTO_HDR 12u
#define VMPROTO_MAX_PAYLOAD (1u << 20)
#define VMPROTO_PORT_NAME "flicker.0"

enum vmproto_type {
    /* either direction */
    VM_DATA = 2,
    VM_CLOSE = 3,
    /* host -> guest */
    VM_START = 1,
    VM_RESTORE = 4,
    VM_CLOCK = 5,
    /* guest -> host */
    VM_HELLO = 16,
    VM_OPEN = 17,
    VM_LOG = 20,
    VM_EXIT = 21,
    VM_RESTORED = 22,
    VM_FAULT = 23,
};

typedef struct vmproto_frame {
    uint8_t type;
    uint32_t stream;
    uint32_t len;
    uint8_t *payload; /* len bytes (+ a NUL after them), owned by the decoder
                         until the next vmproto_feed call */
} vmproto_frame_t;

typedef struct vmproto_decoder {
    uint8_t hdr[VMPROTO_HDR];
    size_t hdr_have;
    uint8_t *buf;      /* payload being assembled */
    size_t buf_have;
    uint32_t want;     /* payload length of the current frame */
    int in_payload;
    int broken;        /* a protocol error was seen: every later feed fails */
} vmproto_decoder_t;

/* True when type is a frame type of this protocol. */
int vmproto_type_known(uint8_t type);

/* Writes a frame header into out. */
void vmproto_put_hdr(uint8_t out[VMPROTO_HDR], uint8_t type, uint32_t stream, uint32_t len);

/* Feeds bytes: consumes from data[0..n) and sets *used to how many.
 * Returns 1 when *frame holds a complete frame (call again with the rest),
 * 0 when all n bytes were consumed without completing one, -1 on a
 * protocol error (the decoder stays broken).  Frame payloads are valid
 * until the next call. */
int vmproto_feed(vmproto_decoder_t *d, const void *data, size_t n, size_t *used,
                 vmproto_frame_t *frame);
/* Frees the decoder's buffers (it may be reused after vmproto_reset). */
void vmproto_reset(vmproto_decoder_t *d);

/* START payload: u32 argc, u32 envc, then argc + envc NUL-terminated
 * strings.  encode returns a malloc'd buffer and its size in *len (NULL if
 * argv is empty or the payload would exceed VMPROTO_MAX_PAYLOAD).  decode fills malloc'd NULL-terminated arrays
 * of pointers into a malloc'd copy (free with vmproto_free_start); returns 0
 * or -1 when malformed. */
uint8_t *vmproto_encode_start(char *const *argv, char *const *envp, uint32_t *len);
int vmproto_decode_start(const uint8_t *p, uint32_t len, char ***argv, char ***envp);
void vmproto_free_start(char **argv, char **envp);

/* EXIT payload: i32 wait status (as waitpid gives it), u32 OOM kills seen
 * by the guest kernel since boot. */
void vmproto_encode_exit(uint8_t out[8], int32_t status, uint32_t oom_kills);
int vmproto_decode_exit(const uint8_t *p, uint32_t len, int32_t *status, uint32_t *oom_kills);

/* RESTORE payload: 32 bytes of entropy, then a 16-byte boot id. */
#define VMPROTO_RESTORE_LEN 48u

/* Feature bits.  HELLO's payload is the u32 protocol version, optionally
 * followed by a u32 of the features the agent implements (an agent that
 * sends only the version has none).  The host uses a feature only with an
 * agent that announced it (for a restored VM: the agent that said HELLO
 * before the snapshot).
 *
 * VMPROTO_FEATURE_CLOCK: the host sends CLOCK (host -> guest, stream 0),
 * payload an i64 of nanoseconds since the epoch (the host's CLOCK_REALTIME
 * when it sent the frame), right before START and right after RESTORE; the
 * agent sets its wall clock from it.  Without it the guest's only wall
 * clock under TCG is the CMOS RTC, whose whole seconds leave the guest up
 * to a second behind the host (deadlines, request signing). */
#define VMPROTO_FEATURE_CLOCK 1u
#define VMPROTO_CLOCK_LEN 8u
void vmproto_encode_clock(uint8_t out[VMPROTO_CLOCK_LEN], int64_t realtime_ns);
int vmproto_decode_clock(const uint8_t *p, uint32_t len, int64_t *realtime_ns);
#endif
