/* async_queue.h - durable queue of asynchronous invocations (Event).
 *
 * An Event invoke is accepted (202) only after its row is committed to
 * DATA/async.db (SQLite, WAL, synchronous=FULL: fsync'd).  A dispatcher
 * on the frontend's loop takes due events and runs them through the same
 * invoke path as synchronous ones; the row is deleted only after the
 * outcome is final, so every accepted event survives a crash or kill -9
 * and runs at least once.
 *
 * Retries, as Lambda: a function error is retried max_retries times (0-2,
 * default 2) after retry_delays (default 60 s, then 120 s); throttles and
 * system errors are retried with exponential backoff (1 s doubling, capped
 * at 5 min) until the event is older than max_age_s (default 6 h).
 *
 * Not thread-safe: the frontend's loop owns it. */
#ifndef FLICKER_ASYNC_QUEUE_H
#define FLICKER_ASYNC_QUEUE_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef struct async_queue async_queue_t;

typedef struct async_event {
    char id[40];             /* the request id given to the caller */
    char *function;          /* name as invoked (may hold :qualifier / ARN) */
    char *qualifier;         /* ?Qualifier= or NULL */
    char *payload;
    size_t payload_len;
    uint64_t received_ms;    /* wall clock */
    int attempts;            /* attempts made so far */
} async_event_t;

/* Opens (creating) the queue.  Events that were running when the previous
 * process died are due again. */
async_queue_t *async_open(const char *data_dir, err_t *err);
void async_close(async_queue_t *q);

/* Durably appends an event.  Returns 0 once committed, -1/err otherwise. */
int async_push(async_queue_t *q, const char *id, const char *function, const char *qualifier,
               const void *payload, size_t len, err_t *err);

/* Takes up to max due events (next attempt time <= now, not running),
 * marks them running (in memory) and returns how many were written to
 * out[]; each must later be finished with async_done or async_retry. */
int async_take_due(async_queue_t *q, uint64_t now_ms, async_event_t *out, int max);
/* The outcome is final: removes the event. */
void async_done(async_queue_t *q, async_event_t *ev);
/* Schedules another attempt at at_ms (attempts incremented). */
void async_retry(async_queue_t *q, async_event_t *ev, uint64_t at_ms);
/* Frees the strings of an event taken with async_take_due (after done/retry). */
void async_event_clear(async_event_t *ev);

/* Events waiting (not running), running, and the age of the oldest, ms. */
void async_stats(async_queue_t *q, uint64_t now_ms, int *queued, int *running, uint64_t *oldest_age_ms);
/* Milliseconds until the next event is due (0 = now, -1 = none queued). */
int64_t async_next_due_in(async_queue_t *q, uint64_t now_ms);
#endif
