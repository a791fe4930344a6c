/* fnlog.h - function logs: one append-only file per function on the worker's
 * disk, as CloudWatch Logs would hold them (START/END/REPORT lines around
 * the function's own output).
 *
 * DATA/logs/<function>.log grows to FNLOG_ROTATE_BYTES, then is renamed to
 * <function>.log.1 (replacing the previous one) and a new file starts, so a
 * log flood costs at most twice that on disk.  Readers address the log by a
 * logical byte offset that keeps growing across rotations (the current
 * file's first byte has logical offset `base`, kept in <function>.log.base),
 * so `flicker logs --follow` never re-reads or skips across a rotation
 * (bytes rotated out of both files are reported as skipped).
 *
 * Not thread-safe: used from the worker's event loop only. */
#ifndef FLICKER_FNLOG_H
#define FLICKER_FNLOG_H
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

#define FNLOG_ROTATE_BYTES (16u << 20)

typedef struct fnlog_dir fnlog_dir_t;

/* Opens the log directory (created if needed). */
fnlog_dir_t *fnlog_open(const char *dir, err_t *err);
void fnlog_close(fnlog_dir_t *logs);

/* Appends bytes to function `name`'s log.  Never fails loudly: a write
 * error is logged once and the bytes dropped (logs must not stop invokes). */
void fnlog_append(fnlog_dir_t *logs, const char *name, const void *data, size_t len);

/* Reads up to max bytes starting at logical offset *offset into a malloc'd
 * buffer (*len bytes), and advances *offset past them.  Data older than
 * what is kept is skipped (offset jumps forward).  Returns NULL with *len
 * = 0 when there is nothing new (not an error). */
char *fnlog_read(fnlog_dir_t *logs, const char *name, uint64_t *offset, size_t max, size_t *len);

/* The logical offset one past the last byte written. */
uint64_t fnlog_end(fnlog_dir_t *logs, const char *name);

/* Removes every log file of a function (DeleteFunction). */
void fnlog_remove(fnlog_dir_t *logs, const char *name);
#endif
