/* test_vmproto.c - the host <-> guest agent frame codec (worker/vmproto.h):
 * the wire layout, incremental decoding at every split point, each kind of
 * protocol error (and that the decoder stays broken after one), and the
 * START/EXIT payload codecs with their malformed cases. */
#include <stdint.h>
#include "check.h"
#include "worker/vmproto.h"

/* Appends one frame to buf at *off. */
static void put_frame(uint8_t *buf, size_t *off, uint8_t type, uint32_t stream, const void *p,
                      uint32_t len)
{
    vmproto_put_hdr(buf + *off, type, stream, len);
    memcpy(buf + *off + VMPROTO_HDR, p, len);
    *off += VMPROTO_HDR + len;
}

static void test_header_layout(void)
{
    uint8_t h[VMPROTO_HDR];
    vmproto_put_hdr(h, VM_DATA, 0x01020304u, 0x00000a0bu);
    static const uint8_t want[VMPROTO_HDR] = {2, 0, 0, 0, 4, 3, 2, 1, 0x0b, 0x0a, 0, 0};
    CHECK(memcmp(h, want, sizeof want) == 0);
    CHECK(vmproto_type_known(VM_HELLO) && vmproto_type_known(VM_FAULT));
    CHECK(!vmproto_type_known(0) && !vmproto_type_known(5) && !vmproto_type_known(255));
}

/* Three frames (one with an empty payload) fed at every chunk size. */
static void test_feed_every_split(void)
{
    uint8_t wire[128];
    size_t n = 0;
    put_frame(wire, &n, VM_HELLO, 0, "\1\0\0\0", 4);
    put_frame(wire, &n, VM_OPEN, 7, "", 0);
    put_frame(wire, &n, VM_DATA, 7, "GET / HTTP/1.1\r\n", 16);
    for (size_t chunk = 1; chunk <= n; chunk++) {
        vmproto_decoder_t d = {0};
        int got = 0;
        for (size_t off = 0; off < n;) {
            size_t len = n - off < chunk ? n - off : chunk, pos = 0;
            while (pos < len) {
                size_t used;
                vmproto_frame_t f;
                int r = vmproto_feed(&d, wire + off + pos, len - pos, &used, &f);
                CHECK(r >= 0);
                CHECK(used <= len - pos);
                pos += used;
                if (r == 0) {
                    CHECK(pos == len);
                    break;
                }
                if (got == 0) {
                    CHECK(f.type == VM_HELLO && f.stream == 0 && f.len == 4);
                    CHECK(f.payload[0] == 1 && f.payload[4] == 0);
                } else if (got == 1) {
                    CHECK(f.type == VM_OPEN && f.stream == 7 && f.len == 0 && f.payload[0] == 0);
                } else {
                    CHECK(f.type == VM_DATA && f.stream == 7 && f.len == 16);
                    CHECK(memcmp(f.payload, "GET / HTTP/1.1\r\n", 16) == 0 && f.payload[16] == 0);
                }
                got++;
            }
            off += len;
        }
        CHECK(got == 3);
        CHECK(d.hdr_have == 0 && !d.in_payload);
        vmproto_reset(&d);
    }
}

static int feed_all(vmproto_decoder_t *d, const uint8_t *p, size_t n)
{
    size_t used;
    vmproto_frame_t f;
    int r;
    while ((r = vmproto_feed(d, p, n, &used, &f)) == 1) {
        p += used;
        n -= used;
    }
    return r;
}

static void test_protocol_errors(void)
{
    uint8_t h[VMPROTO_HDR];
    vmproto_decoder_t d = {0};
    /* unknown type */
    vmproto_put_hdr(h, 9, 0, 0);
    CHECK(feed_all(&d, h, sizeof h) == -1);
    /* broken for good, even with a valid frame next */
    vmproto_put_hdr(h, VM_HELLO, 0, 0);
    CHECK(feed_all(&d, h, sizeof h) == -1);
    /* usable again after a reset */
    vmproto_reset(&d);
    size_t used;
    vmproto_frame_t f;
    CHECK(vmproto_feed(&d, h, sizeof h, &used, &f) == 1);
    CHECK(used == sizeof h && f.type == VM_HELLO && f.len == 0);
    vmproto_reset(&d);
    /* flags, reserved */
    vmproto_put_hdr(h, VM_DATA, 1, 0);
    h[1] = 1;
    CHECK(feed_all(&d, h, sizeof h) == -1);
    vmproto_reset(&d);
    vmproto_put_hdr(h, VM_DATA, 1, 0);
    h[3] = 0x80;
    CHECK(feed_all(&d, h, sizeof h) == -1);
    vmproto_reset(&d);
    /* oversize length: refused from the header alone, nothing allocated */
    vmproto_put_hdr(h, VM_DATA, 1, VMPROTO_MAX_PAYLOAD + 1);
    CHECK(feed_all(&d, h, sizeof h) == -1);
    CHECK(d.buf == NULL);
    vmproto_reset(&d);
    /* the largest payload is fine */
    vmproto_put_hdr(h, VM_DATA, 1, VMPROTO_MAX_PAYLOAD);
    CHECK(feed_all(&d, h, sizeof h) == 0);
    CHECK(d.in_payload && d.want == VMPROTO_MAX_PAYLOAD);
    vmproto_reset(&d);
}

static void test_reset_mid_frame(void)
{
    uint8_t wire[64];
    size_t n = 0;
    put_frame(wire, &n, VM_LOG, 0, "hello", 5);
    vmproto_decoder_t d = {0};
    CHECK(feed_all(&d, wire, 14) == 0); /* header + 2 payload bytes */
    vmproto_reset(&d);
    size_t used;
    vmproto_frame_t f;
    CHECK(vmproto_feed(&d, wire, n, &used, &f) == 1);
    CHECK(used == n && f.type == VM_LOG && f.len == 5 && !memcmp(f.payload, "hello", 5));
    vmproto_reset(&d);
}

static void test_start_round_trip(void)
{
    char *argv[] = {"/usr/bin/python3", "-u", "/var/runtime/python/bootstrap.py", "", NULL};
    char *envp[] = {"A=1", "EMPTY=", "_HANDLER=app.handler", NULL};
    uint32_t len;
    uint8_t *p = vmproto_encode_start(argv, envp, &len);
    CHECK(p != NULL);
    CHECK(len == 8 + 17 + 3 + 33 + 1 + 4 + 7 + 21);
    char **a, **e;
    CHECK(vmproto_decode_start(p, len, &a, &e) == 0);
    for (int i = 0; argv[i]; i++)
        CHECK_STR(a[i], argv[i]);
    CHECK(a[4] == NULL);
    for (int i = 0; envp[i]; i++)
        CHECK_STR(e[i], envp[i]);
    CHECK(e[3] == NULL);
    vmproto_free_start(a, e);

    /* no environment at all */
    char *none[] = {NULL};
    uint8_t *q = vmproto_encode_start(argv, none, &len);
    CHECK(q != NULL);
    CHECK(vmproto_decode_start(q, len, &a, &e) == 0);
    CHECK(e[0] == NULL && a[3][0] == 0);
    vmproto_free_start(a, e);
    free(q);
    free(p);
}

static void test_start_malformed(void)
{
    char **a = (char **)1, **e = (char **)1;
    /* shorter than the counts */
    CHECK(vmproto_decode_start((const uint8_t *)"\1\0\0", 3, &a, &e) == -1);
    CHECK(a == NULL && e == NULL);
    /* argc 0: nothing to run */
    static const uint8_t zero[] = {0, 0, 0, 0, 0, 0, 0, 0};
    CHECK(vmproto_decode_start(zero, sizeof zero, &a, &e) == -1);
    /* a string without its NUL */
    static const uint8_t nonul[] = {1, 0, 0, 0, 0, 0, 0, 0, 'a', 'b'};
    CHECK(vmproto_decode_start(nonul, sizeof nonul, &a, &e) == -1);
    /* bytes left over after the last string */
    static const uint8_t extra[] = {1, 0, 0, 0, 0, 0, 0, 0, 'a', 0, 'b', 0};
    CHECK(vmproto_decode_start(extra, sizeof extra, &a, &e) == -1);
    /* counts larger than the strings could be */
    static const uint8_t big[] = {1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 'a', 0};
    CHECK(vmproto_decode_start(big, sizeof big, &a, &e) == -1);
    static const uint8_t big2[] = {0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 'a', 0};
    CHECK(vmproto_decode_start(big2, sizeof big2, &a, &e) == -1);
    /* one string short */
    static const uint8_t shortc[] = {1, 0, 0, 0, 1, 0, 0, 0, 'a', 0};
    CHECK(vmproto_decode_start(shortc, sizeof shortc, &a, &e) == -1);
    /* and the minimal valid one */
    static const uint8_t ok[] = {1, 0, 0, 0, 1, 0, 0, 0, '/', 0, 0};
    CHECK(vmproto_decode_start(ok, sizeof ok, &a, &e) == 0);
    CHECK_STR(a[0], "/");
    CHECK_STR(e[0], "");
    vmproto_free_start(a, e);
}

static void test_start_limits(void)
{
    uint32_t len = 0;
    /* a program is required */
    char *empty[] = {NULL};
    CHECK(vmproto_encode_start(empty, empty, &len) == NULL);
    /* over the payload limit */
    size_t n = VMPROTO_MAX_PAYLOAD;
    char *huge = malloc(n + 1);
    CHECK(huge != NULL);
    memset(huge, 'x', n);
    huge[n] = 0;
    char *argv[] = {huge, NULL};
    uint8_t *p = vmproto_encode_start(argv, empty, &len);
    free(huge);
    CHECK(p == NULL);
}

static void test_exit_codec(void)
{
    uint8_t p[8];
    int32_t st;
    uint32_t oom;
    vmproto_encode_exit(p, -2, 0xfffffffeu);
    CHECK(vmproto_decode_exit(p, 8, &st, &oom) == 0);
    CHECK(st == -2 && oom == 0xfffffffeu);
    vmproto_encode_exit(p, 9, 3); /* killed by SIGKILL, three OOM kills */
    static const uint8_t want[8] = {9, 0, 0, 0, 3, 0, 0, 0};
    CHECK(memcmp(p, want, 8) == 0);
    CHECK(vmproto_decode_exit(p, 7, &st, &oom) == -1);
    CHECK(vmproto_decode_exit(p, 9, &st, &oom) == -1);
}

int main(void)
{
    RUN(test_header_layout);
    RUN(test_feed_every_split);
    RUN(test_protocol_errors);
    RUN(test_reset_mid_frame);
    RUN(test_start_round_trip);
    RUN(test_start_malformed);
    RUN(test_start_limits);
    RUN(test_exit_codec);
    CHECK_EXIT();
}
