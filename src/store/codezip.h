/* codezip.h - validation and extraction of uploaded function code zips.
 *
 * The zip arrives from an untrusted client.  codezip_extract() reads it with
 * libzip and writes its regular files and directories under a fresh
 * directory, refusing anything that could escape or abuse the host:
 * absolute, overlong or overly deep names, ".." components, symlinks (all of them: we never create a
 * link, so no later entry can be redirected through one), device, fifo and
 * socket entries, duplicate names, more than max_entries entries, and more
 * than max_unzipped bytes of data actually written (header sizes are not
 * trusted: the bytes are counted as they are inflated, so a zip bomb stops
 * at the limit).  Files become 0644, or 0755 when the zip's Unix mode has
 * any execute bit; directories 0755. */
#ifndef FLICKER_CODEZIP_H
#define FLICKER_CODEZIP_H
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

#define CODEZIP_MAX_ZIPPED   52428800ull   /* Lambda's direct-upload limit */
#define CODEZIP_MAX_UNZIPPED 262144000ull  /* Lambda's unzipped limit */
#define CODEZIP_MAX_ENTRIES  20000u
#define CODEZIP_MAX_NAME     4095u   /* bytes of one entry name (PATH_MAX - 1) */
#define CODEZIP_MAX_DEPTH    128     /* path components of one entry name: bounds
                                        the directory depth rm_rf must walk */

/* Error codes set in err->code on failure: */
#define CODEZIP_EBADZIP  EINVAL  /* not a zip / corrupt / hostile entry */
#define CODEZIP_ETOOBIG  EFBIG   /* unzipped size limit exceeded */

/* Extracts zip (len bytes) into dest, which must not exist (it is created
 * 0755; its parent must exist).  On success returns 0 and the total bytes
 * written in *unzipped (may be NULL).  On failure returns -1, removes
 * whatever was written under dest, and sets err: code CODEZIP_EBADZIP or
 * CODEZIP_ETOOBIG with a message fit to show the client, or an errno for
 * host I/O errors. */
int codezip_extract(const void *zip, size_t len, const char *dest, uint64_t max_unzipped,
                    uint32_t max_entries, uint64_t *unzipped, err_t *err);

/* Checks one entry name as codezip_extract does: 0 if acceptable (not
 * empty, not absolute, no ".." component, at most CODEZIP_MAX_NAME bytes
 * and CODEZIP_MAX_DEPTH components; empty and "." components are skipped
 * when extracting), -1 otherwise. */
int codezip_check_name(const char *name);
#endif
