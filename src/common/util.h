/* util.h - small shared helpers: clocks, ids, encodings, hashing, files.
 *
 * Hashing and base64 are OpenSSL's (libcrypto); nothing here hand-rolls a
 * codec.  All functions are thread-safe. */
#ifndef FLICKER_UTIL_H
#define FLICKER_UTIL_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/err.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic clock in microseconds / milliseconds. */
uint64_t now_mono_us(void);
uint64_t now_mono_ms(void);
/* Wall clock in milliseconds since the epoch. */
uint64_t now_wall_ms(void);
/* Formats the wall-clock time `ms` as Lambda's LastModified
 * ("2026-12-07T00:41:22.123+0000") into out (>= 32 bytes). */
void format_lambda_time(uint64_t ms, char *out, size_t outlen);
/* Formats `ms` as ISO-8601 UTC with milliseconds ("...T00:41:22.123Z"). */
void format_iso_time(uint64_t ms, char *out, size_t outlen);

/* Writes a random RFC 4122 v4 UUID ("8-4-4-4-12", 36 chars + NUL) to out[37]. */
void uuid_v4(char out[37]);
/* Fills buf with n cryptographically random bytes (getrandom). */
void random_bytes(void *buf, size_t n);

/* Base64 (standard alphabet, padded).  base64_encode returns a malloc'd
 * NUL-terminated string.  base64_decode returns a malloc'd buffer and its
 * length in *outlen, or NULL if the input is not valid base64. */
char *base64_encode(const void *data, size_t len);
void *base64_decode(const char *text, size_t textlen, size_t *outlen);

/* SHA-256 of data into out[32]; hex form into hex[65]. */
void sha256(const void *data, size_t len, unsigned char out[32]);
void sha256_hex(const void *data, size_t len, char hex[65]);
/* Lowercase hex of n bytes into out (2n+1 bytes). */
void hex_encode(const unsigned char *in, size_t n, char *out);

/* mkdir -p with mode for every created directory.  Returns 0 or -1/err. */
int mkdir_p(const char *path, mode_t mode, err_t *err);
/* rm -rf without following symlinks and without crossing mount points.
 * Returns 0 when path is gone (or never existed), -1/err otherwise. */
int rm_rf(const char *path, err_t *err);
/* Reads a whole file (up to max bytes) into a malloc'd, NUL-terminated buffer. */
char *read_file(const char *path, size_t max, size_t *len, err_t *err);
/* Writes data to path atomically (temp file + fsync + rename). */
int write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, err_t *err);
/* Writes a short string to an existing file (cgroup/proc knobs). */
int write_str(const char *path, const char *value, err_t *err);

/* Duplicates at most n bytes of s (NUL-terminated result); aborts on OOM. */
char *xstrndup(const char *s, size_t n);
char *xstrdup(const char *s);
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
/* printf into a fresh malloc'd string; aborts on OOM. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The directory holding the running flicker binary (flicker-init and the
 * runtimes are found from it); "." if unknown.  malloc'd. */
char *flicker_bin_dir(void);
/* The runtime clients' directory: $FLICKER_RUNTIMES, else runtimes/ next
 * to the build or install tree of bindir; NULL if none exists.  malloc'd. */
char *flicker_runtimes_dir(const char *bindir);

/* Cleanup helpers for __attribute__((cleanup)). */
void cleanup_freep(void *p);
void cleanup_closep(int *fd);
#define _cleanup_free_ __attribute__((cleanup(cleanup_freep)))
#define _cleanup_close_ __attribute__((cleanup(cleanup_closep)))
#endif
