/* fuzz_vmproto.c - libFuzzer target for the host <-> guest agent codec
 * (worker/vmproto.h): vmproto_feed, vmproto_decode_start and
 * vmproto_decode_exit.
 *
 * Input layout: byte 0 picks what is fuzzed:
 *   0-1  the rest is a byte stream fed to one decoder in chunks whose sizes
 *        come from byte 1 (a different split of the same bytes each value);
 *        every START frame's payload goes through decode_start and, when
 *        valid, re-encode must give the same bytes back; every EXIT frame's
 *        through decode_exit, whose re-encoding must match too;
 *   2    the rest is a START payload;
 *   3    the rest is an EXIT payload.
 * Aborts on: a frame over VMPROTO_MAX_PAYLOAD, a payload without its NUL,
 * used > offered, no progress without a frame, a decoder that works again
 * after an error, or a round trip that changes the bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/vmproto.h"

static void check_start(const uint8_t *p, uint32_t len)
{
    char **argv, **envp;
    if (vmproto_decode_start(p, len, &argv, &envp) < 0) {
        if (argv || envp)
            abort();
        return;
    }
    if (!argv || !envp || !argv[0])
        abort();
    uint32_t elen;
    uint8_t *again = vmproto_encode_start(argv, envp, &elen);
    if (!again || elen != len || memcmp(again, p, len))
        abort();
    free(again);
    vmproto_free_start(argv, envp);
}

static void check_exit(const uint8_t *p, uint32_t len)
{
    int32_t st;
    uint32_t oom;
    if (vmproto_decode_exit(p, len, &st, &oom) < 0) {
        if (len == 8)
            abort();
        return;
    }
    uint8_t again[8];
    vmproto_encode_exit(again, st, oom);
    if (memcmp(again, p, 8))
        abort();
}

static void feed_stream(const uint8_t *data, size_t size, uint8_t split)
{
    vmproto_decoder_t d = {0};
    size_t off = 0, step = 1;
    int broken = 0;
    while (off < size) {
        size_t chunk = split ? (size_t)(split * step++ % 97) + 1 : size - off;
        if (chunk > size - off)
            chunk = size - off;
        size_t pos = 0;
        while (pos < chunk) {
            size_t used;
            vmproto_frame_t f;
            int r = vmproto_feed(&d, data + off + pos, chunk - pos, &used, &f);
            if (used > chunk - pos)
                abort();
            pos += used;
            if (r < 0) {
                broken = 1;
                break;
            }
            if (broken)
                abort(); /* an error must stick */
            if (r == 0) {
                if (pos != chunk)
                    abort();
                break;
            }
            if (f.len > VMPROTO_MAX_PAYLOAD || f.payload[f.len] != 0 ||
                !vmproto_type_known(f.type))
                abort();
            if (f.type == VM_START)
                check_start(f.payload, f.len);
            else if (f.type == VM_EXIT)
                check_exit(f.payload, f.len);
        }
        if (broken) {
            size_t used;
            vmproto_frame_t f;
            if (vmproto_feed(&d, data, size, &used, &f) != -1)
                abort();
            break;
        }
        off += chunk;
    }
    vmproto_reset(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    switch (data[0] & 3) {
    case 0:
    case 1:
        feed_stream(data + 2, size - 2, data[1]);
        break;
    case 2:
        if (size - 1 <= VMPROTO_MAX_PAYLOAD)
            check_start(data + 1, (uint32_t)(size - 1));
        break;
    case 3:
        check_exit(data + 1, (uint32_t)(size - 1));
        break;
    }
    return 0;
}
