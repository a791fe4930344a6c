/* qmp.h - a small synchronous client for QEMU's machine protocol (QMP).
 *
 * One qmp_t talks to one QEMU over a connected stream socket (a socketpair
 * end whose peer QEMU serves with "-chardev socket,fd=N -mon mode=control").
 * Commands are executed one at a time: qmp_exec writes the command and
 * reads lines until its "return" or "error" arrives.  Asynchronous events
 * that arrive meanwhile (STOP, RESUME, MIGRATION, SHUTDOWN, ...) are
 * remembered by name only (qmp_saw_event), nothing else is kept.  Messages
 * are parsed with jansson; each line is bounded (QMP_MAX_LINE) so a
 * misbehaving QEMU cannot grow our memory.
 *
 * Not thread-safe: a qmp_t is used by one thread at a time. */
#ifndef FLICKER_QMP_H
#define FLICKER_QMP_H
#include <jansson.h>
#include <stdbool.h>
#include "common/err.h"

#define QMP_MAX_LINE (1u << 20)

typedef struct qmp qmp_t;

/* Takes ownership of fd (closed by qmp_close, also on failure), reads the
 * greeting and negotiates capabilities, all within timeout_ms.  Returns 0
 * with *out set, or -1/err (EPIPE when QEMU closed the socket: it exited). */
int qmp_open(int fd, int timeout_ms, qmp_t **out, err_t *err);

/* Executes command cmd with args (borrowed; NULL for none).  On success
 * returns 0 and, if ret is not NULL, stores a new reference to the
 * "return" value in *ret.  A QMP error reply returns -1 with err
 * "CMD: Class: description"; a timeout ETIMEDOUT; QEMU's end of the socket
 * closing EPIPE (the qmp_t is then dead: every later call fails). */
int qmp_exec(qmp_t *q, const char *cmd, json_t *args, json_t **ret, int timeout_ms, err_t *err);

/* Passes fd to QEMU under name (QMP "getfd", with SCM_RIGHTS); fd stays
 * ours.  Returns 0 or -1/err. */
int qmp_getfd(qmp_t *q, int fd, const char *name, int timeout_ms, err_t *err);

/* True if an event called name arrived since the last qmp_clear_events. */
bool qmp_saw_event(const qmp_t *q, const char *name);
void qmp_clear_events(qmp_t *q);

/* Closes the socket and frees q (NULL is fine). */
void qmp_close(qmp_t *q);
#endif
