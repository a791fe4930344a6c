/* err.h - explicit error objects, in the style of crun.
 *
 * A function that can fail takes `err_t *err` last, returns -1 (or NULL) on
 * failure and fills *err with an errno-style code and a human message.
 * Callers may add context with err_wrap().  err may be NULL: then the
 * message is dropped.  An err_t is plain data: no cleanup needed. */
#ifndef FLICKER_ERR_H
#define FLICKER_ERR_H
#include <stdarg.h>

typedef struct err {
    int code;          /* errno value, or 0 when not an OS error */
    char msg[512];
} err_t;

/* Sets *err (if err) to code and the formatted message; returns -1. */
int err_set(err_t *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Like err_set with code = errno and ": strerror(errno)" appended; returns -1. */
int err_sys(err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the existing message with "context: "; returns -1. */
int err_wrap(err_t *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#endif
