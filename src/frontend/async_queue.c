/* async_queue.c - see async_queue.h.  One SQLite table, rows keyed by the
 * request id; the set of running ids is kept in memory only (after a crash
 * nothing is running, so everything queued is simply due). */
#include "frontend/async_queue.h"
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/util.h"

typedef struct running {
    char id[40];
    struct running *next;
} running_t;

struct async_queue {
    sqlite3 *db;
    sqlite3_stmt *insert, *due, *del, *retry;
    running_t *running;
    int n_running;
};

static int exec(sqlite3 *db, const char *sql, err_t *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        err_set(err, 0, "async queue: %s", msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

async_queue_t *async_open(const char *data_dir, err_t *err)
{
    async_queue_t *q = xcalloc(1, sizeof *q);
    char *path = xasprintf("%s/async.db", data_dir);
    int rc = sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    free(path);
    if (rc != SQLITE_OK) {
        err_set(err, 0, "async queue: %s", sqlite3_errmsg(q->db));
        goto fail;
    }
    sqlite3_busy_timeout(q->db, 5000);
    if (exec(q->db,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
             "CREATE TABLE IF NOT EXISTS events(id TEXT PRIMARY KEY, function TEXT NOT NULL,"
             " qualifier TEXT, payload BLOB NOT NULL, received_ms INTEGER NOT NULL,"
             " attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL);"
             "CREATE INDEX IF NOT EXISTS events_due ON events(next_ms);",
             err) < 0)
        goto fail;
    if (sqlite3_prepare_v2(q->db,
                           "INSERT INTO events(id,function,qualifier,payload,received_ms,next_ms)"
                           " VALUES(?,?,?,?,?,?)", -1, &q->insert, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(q->db,
                           "SELECT id,function,qualifier,payload,received_ms,attempts FROM events"
                           " WHERE next_ms <= ? ORDER BY next_ms LIMIT ?", -1, &q->due, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(q->db, "DELETE FROM events WHERE id = ?", -1, &q->del, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(q->db, "UPDATE events SET attempts = attempts + 1, next_ms = ? WHERE id = ?",
                           -1, &q->retry, NULL) != SQLITE_OK) {
        err_set(err, 0, "async queue: %s", sqlite3_errmsg(q->db));
        goto fail;
    }
    return q;
fail:
    async_close(q);
    return NULL;
}

void async_close(async_queue_t *q)
{
    if (!q)
        return;
    sqlite3_finalize(q->insert);
    sqlite3_finalize(q->due);
    sqlite3_finalize(q->del);
    sqlite3_finalize(q->retry);
    sqlite3_close(q->db);
    while (q->running) {
        running_t *r = q->running;
        q->running = r->next;
        free(r);
    }
    free(q);
}

int async_push(async_queue_t *q, const char *id, const char *function, const char *qualifier,
               const void *payload, size_t len, err_t *err)
{
    uint64_t now = now_wall_ms();
    sqlite3_stmt *s = q->insert;
    sqlite3_bind_text(s, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 2, function, -1, SQLITE_TRANSIENT);
    if (qualifier)
        sqlite3_bind_text(s, 3, qualifier, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null(s, 3);
    sqlite3_bind_blob(s, 4, len ? payload : "", (int)len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)now);
    sqlite3_bind_int64(s, 6, (sqlite3_int64)now);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE)
        return err_set(err, 0, "async queue: %s", sqlite3_errmsg(q->db));
    return 0;
}

static bool is_running(async_queue_t *q, const char *id)
{
    for (running_t *r = q->running; r; r = r->next)
        if (!strcmp(r->id, id))
            return true;
    return false;
}

static void set_running(async_queue_t *q, const char *id, bool on)
{
    if (on) {
        running_t *r = xcalloc(1, sizeof *r);
        snprintf(r->id, sizeof r->id, "%s", id);
        r->next = q->running;
        q->running = r;
        q->n_running++;
        return;
    }
    for (running_t **pp = &q->running; *pp; pp = &(*pp)->next) {
        if (!strcmp((*pp)->id, id)) {
            running_t *r = *pp;
            *pp = r->next;
            free(r);
            q->n_running--;
            return;
        }
    }
}

int async_take_due(async_queue_t *q, uint64_t now_ms, async_event_t *out, int max)
{
    sqlite3_stmt *s = q->due;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)now_ms);
    sqlite3_bind_int(s, 2, max + q->n_running);
    int n = 0;
    while (n < max && sqlite3_step(s) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(s, 0);
        if (is_running(q, id))
            continue;
        async_event_t *ev = &out[n++];
        memset(ev, 0, sizeof *ev);
        snprintf(ev->id, sizeof ev->id, "%s", id);
        ev->function = xstrdup((const char *)sqlite3_column_text(s, 1));
        const char *qual = (const char *)sqlite3_column_text(s, 2);
        ev->qualifier = qual ? xstrdup(qual) : NULL;
        int len = sqlite3_column_bytes(s, 3);
        ev->payload = xmalloc((size_t)len + 1);
        memcpy(ev->payload, sqlite3_column_blob(s, 3), (size_t)len);
        ev->payload[len] = 0;
        ev->payload_len = (size_t)len;
        ev->received_ms = (uint64_t)sqlite3_column_int64(s, 4);
        ev->attempts = sqlite3_column_int(s, 5);
        set_running(q, ev->id, true);
    }
    sqlite3_reset(s);
    return n;
}

void async_done(async_queue_t *q, async_event_t *ev)
{
    sqlite3_bind_text(q->del, 1, ev->id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(q->del) != SQLITE_DONE)
        log_error("async", "dropping event %s: %s", ev->id, sqlite3_errmsg(q->db));
    sqlite3_reset(q->del);
    set_running(q, ev->id, false);
}

void async_retry(async_queue_t *q, async_event_t *ev, uint64_t at_ms)
{
    sqlite3_bind_int64(q->retry, 1, (sqlite3_int64)at_ms);
    sqlite3_bind_text(q->retry, 2, ev->id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(q->retry) != SQLITE_DONE)
        log_error("async", "rescheduling event %s: %s", ev->id, sqlite3_errmsg(q->db));
    sqlite3_reset(q->retry);
    set_running(q, ev->id, false);
}

void async_event_clear(async_event_t *ev)
{
    free(ev->function);
    free(ev->qualifier);
    free(ev->payload);
    memset(ev, 0, sizeof *ev);
}

void async_stats(async_queue_t *q, uint64_t now_ms, int *queued, int *running, uint64_t *oldest_age_ms)
{
    sqlite3_stmt *s;
    *queued = 0;
    *oldest_age_ms = 0;
    if (sqlite3_prepare_v2(q->db, "SELECT count(*), min(received_ms) FROM events", -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW) {
            *queued = sqlite3_column_int(s, 0) - q->n_running;
            if (sqlite3_column_type(s, 1) != SQLITE_NULL) {
                uint64_t oldest = (uint64_t)sqlite3_column_int64(s, 1);
                *oldest_age_ms = now_ms > oldest ? now_ms - oldest : 0;
            }
        }
        sqlite3_finalize(s);
    }
    *running = q->n_running;
}

int64_t async_next_due_in(async_queue_t *q, uint64_t now_ms)
{
    sqlite3_stmt *s;
    int64_t out = -1;
    if (sqlite3_prepare_v2(q->db, "SELECT min(next_ms) FROM events", -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
            int64_t next = sqlite3_column_int64(s, 0);
            out = next <= (int64_t)now_ms ? 0 : next - (int64_t)now_ms;
        }
        sqlite3_finalize(s);
    }
    return out;
}
