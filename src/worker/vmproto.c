/* vmproto.c - frames of the host <-> guest agent protocol (vmproto.h).
 * Incremental decoding: the header is gathered first, checked, then the
 * payload is gathered into one buffer of exactly its length (+1 for a NUL).
 * No dependency beyond libc: the static guest agent links this file. */
#include "worker/vmproto.h"
#include <stdlib.h>
#include <string.h>

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

int vmproto_type_known(uint8_t t)
{
    switch (t) {
    case VM_DATA: case VM_CLOSE: case VM_START: case VM_RESTORE: case VM_CLOCK: case VM_HELLO:
    case VM_OPEN: case VM_LOG: case VM_EXIT: case VM_RESTORED: case VM_FAULT:
        return 1;
    default:
        return 0;
    }
}

void vmproto_put_hdr(uint8_t out[VMPROTO_HDR], uint8_t type, uint32_t stream, uint32_t len)
{
    out[0] = type;
    out[1] = 0;
    out[2] = 0;
    out[3] = 0;
    put32(out + 4, stream);
    put32(out + 8, len);
}

int vmproto_feed(vmproto_decoder_t *d, const void *data, size_t n, size_t *used,
                 vmproto_frame_t *frame)
{
    const uint8_t *p = data;
    size_t off = 0;
    *used = 0;
    if (d->broken)
        return -1;
    while (off < n || (d->in_payload && d->buf_have == d->want)) {
        if (!d->in_payload) {
            size_t take = VMPROTO_HDR - d->hdr_have;
            if (take > n - off)
                take = n - off;
            memcpy(d->hdr + d->hdr_have, p + off, take);
            d->hdr_have += take;
            off += take;
            if (d->hdr_have < VMPROTO_HDR)
                break;
            uint32_t len = get32(d->hdr + 8);
            if (!vmproto_type_known(d->hdr[0]) || d->hdr[1] || d->hdr[2] || d->hdr[3] ||
                len > VMPROTO_MAX_PAYLOAD) {
                d->broken = 1;
                *used = off;
                return -1;
            }
            free(d->buf);
            d->buf = malloc((size_t)len + 1);
            if (!d->buf) {
                d->broken = 1;
                *used = off;
                return -1;
            }
            d->buf_have = 0;
            d->want = len;
            d->in_payload = 1;
        }
        size_t take = d->want - d->buf_have;
        if (take > n - off)
            take = n - off;
        memcpy(d->buf + d->buf_have, p + off, take);
        d->buf_have += take;
        off += take;
        if (d->buf_have == d->want) {
            d->buf[d->want] = 0;
            frame->type = d->hdr[0];
            frame->stream = get32(d->hdr + 4);
            frame->len = d->want;
            frame->payload = d->buf;
            d->in_payload = 0;
            d->hdr_have = 0;
            *used = off;
            return 1;
        }
    }
    *used = off;
    return 0;
}

void vmproto_reset(vmproto_decoder_t *d)
{
    free(d->buf);
    memset(d, 0, sizeof *d);
}

static size_t count(char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

uint8_t *vmproto_encode_start(char *const *argv, char *const *envp, uint32_t *len)
{
    size_t argc = count(argv), envc = count(envp), total = 8;
    if (argc == 0) /* the decoder refuses a START without a program */
        return NULL;
    for (size_t i = 0; i < argc; i++)
        total += strlen(argv[i]) + 1;
    for (size_t i = 0; i < envc; i++)
        total += strlen(envp[i]) + 1;
    if (total > VMPROTO_MAX_PAYLOAD)
        return NULL;
    uint8_t *out = malloc(total), *q = out + 8;
    if (!out)
        return NULL;
    put32(out, (uint32_t)argc);
    put32(out + 4, (uint32_t)envc);
    for (size_t i = 0; i < argc + envc; i++) {
        const char *s = i < argc ? argv[i] : envp[i - argc];
        size_t l = strlen(s) + 1;
        memcpy(q, s, l);
        q += l;
    }
    *len = (uint32_t)total;
    return out;
}

int vmproto_decode_start(const uint8_t *p, uint32_t len, char ***argv_out, char ***envp_out)
{
    *argv_out = *envp_out = NULL;
    if (len < 8)
        return -1;
    uint32_t argc = get32(p), envc = get32(p + 4);
    /* each string takes at least one byte: bounds the arrays */
    if (argc == 0 || argc > len - 8 || envc > len - 8 || argc + envc > len - 8)
        return -1;
    char *copy = malloc(len - 8 + 1);
    char **argv = calloc(argc + 1, sizeof *argv);
    char **envp = calloc(envc + 2, sizeof *envp); /* [envc+1] keeps the copy */
    if (!copy || !argv || !envp)
        goto bad;
    memcpy(copy, p + 8, len - 8);
    copy[len - 8] = 0;
    size_t off = 0, avail = len - 8;
    for (uint32_t i = 0; i < argc + envc; i++) {
        const char *s = copy + off;
        const char *nul = memchr(s, 0, avail - off);
        if (!nul)
            goto bad;
        if (i < argc)
            argv[i] = copy + off;
        else
            envp[i - argc] = copy + off;
        off += (size_t)(nul - s) + 1;
    }
    if (off != avail)
        goto bad;
    envp[envc + 1] = copy; /* hidden owner of the strings */
    *argv_out = argv;
    *envp_out = envp;
    return 0;
bad:
    free(copy);
    free(argv);
    free(envp);
    return -1;
}

void vmproto_free_start(char **argv, char **envp)
{
    if (envp) {
        size_t n = count(envp);
        free(envp[n + 1]);
    }
    free(argv);
    free(envp);
}

void vmproto_encode_exit(uint8_t out[8], int32_t status, uint32_t oom_kills)
{
    put32(out, (uint32_t)status);
    put32(out + 4, oom_kills);
}

int vmproto_decode_exit(const uint8_t *p, uint32_t len, int32_t *status, uint32_t *oom_kills)
{
    if (len != 8)
        return -1;
    *status = (int32_t)get32(p);
    *oom_kills = get32(p + 4);
    return 0;
}

void vmproto_encode_clock(uint8_t out[VMPROTO_CLOCK_LEN], int64_t realtime_ns)
{
    uint64_t v = (uint64_t)realtime_ns;
    put32(out, (uint32_t)v);
    put32(out + 4, (uint32_t)(v >> 32));
}

int vmproto_decode_clock(const uint8_t *p, uint32_t len, int64_t *realtime_ns)
{
    if (len != VMPROTO_CLOCK_LEN)
        return -1;
    *realtime_ns = (int64_t)((uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32);
    return 0;
}
