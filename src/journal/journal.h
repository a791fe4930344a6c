/* journal.h - a durable, ordered log with leadership and fencing.
 *
 * The assignment service's leader writes every change of its environment
 * table to the journal; followers read it in order and keep the same table;
 * when the leader dies (its lease expires), a follower campaigns, becomes
 * leader with a higher term, and resumes from the log.  Appends carry the
 * writer's term: once a newer term exists, an older leader's appends are
 * refused (fencing), so a deposed leader that is merely slow can never
 * write.
 *
 * Two backends behind this one interface (a struct of function pointers):
 *   - file (journal_file.c): embedded, one host, several processes;
 *   - etcd (journal_etcd.c): distributed, etcd v3 (3.4) over its JSON
 *     gateway.
 *
 * All calls are synchronous and may block (disk, network): callers run
 * them off their event loop (a dedicated thread).  A journal_t may be used
 * from one thread at a time.  Every call returns 0 (or a documented
 * positive value) on success and -1 with *err on failure; err->code is
 * ESTALE when the caller's term is no longer the leader's (fenced). */
#ifndef FLICKER_JOURNAL_H
#define FLICKER_JOURNAL_H
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

typedef struct journal journal_t;

/* One record as read back.  index starts at 1 and has no gaps. */
typedef struct journal_record {
    uint64_t index;
    uint64_t term;       /* term of the leader that appended it */
    const void *data;
    size_t len;
} journal_record_t;

/* Called for each record in order; return non-zero to stop early. */
typedef int (*journal_record_fn)(const journal_record_t *rec, void *arg);

/* Who leads, as the journal knows it. */
typedef struct journal_leader {
    char id[128];            /* candidate id of the leader, "" if none */
    uint64_t term;           /* current term (0 before the first election) */
    uint64_t lease_expiry_ms;/* wall clock; past it, anyone may campaign */
} journal_leader_t;

typedef struct journal_ops {
    /* Tries once to become leader as `candidate` with a lease of lease_ms.
     * Succeeds when there is no leader or the lease has expired (or
     * candidate already leads): returns 1 and the new term in *term (a new,
     * higher term unless candidate already held the lease).  Returns 0 when
     * someone else holds a live lease (*term = their term). */
    int (*campaign)(journal_t *j, const char *candidate, uint64_t lease_ms, uint64_t *term, err_t *err);
    /* Extends the lease of the leader of `term`.  ESTALE if deposed. */
    int (*renew)(journal_t *j, uint64_t term, uint64_t lease_ms, err_t *err);
    /* Gives up leadership of `term` now (lease released). */
    int (*resign)(journal_t *j, uint64_t term, err_t *err);
    /* Reads who leads. */
    int (*leader)(journal_t *j, journal_leader_t *out, err_t *err);

    /* Appends one record as the leader of `term`; durable when it returns
     * (group commit: concurrent appends share one fsync/round trip).  On
     * success *index is the record's index.  ESTALE if term is not current. */
    int (*append)(journal_t *j, uint64_t term, const void *data, size_t len, uint64_t *index, err_t *err);
    /* Optional (NULL: call append n times): appends n records in order as
     * one group (one fsync/round trip for all of them).  Fills index[i] for
     * each record made durable; returns n when all were, else the number of
     * leading records that were (0..n-1) with err saying why the rest were
     * not (ESTALE if term is not current). */
    size_t (*append_many)(journal_t *j, uint64_t term, size_t n, const void *const *data,
                          const size_t *len, uint64_t *index, err_t *err);
    /* Calls fn for every record with index >= from, in order, up to the
     * current end.  Records covered by the latest snapshot may be gone
     * (compacted): then reading starts after the snapshot and *first
     * (if non-NULL) says where. */
    int (*read)(journal_t *j, uint64_t from, journal_record_fn fn, void *arg, uint64_t *first, err_t *err);
    /* Blocks until a record with index >= from exists, or timeout_ms
     * passes (returns 1 if there is something to read, 0 on timeout). */
    int (*wait)(journal_t *j, uint64_t from, int timeout_ms, err_t *err);

    /* Saves a snapshot of the state after applying records 1..upto (as
     * leader of term), then drops records <= upto that are no longer
     * needed, so restart time stays bounded. */
    int (*snapshot)(journal_t *j, uint64_t term, uint64_t upto, const void *data, size_t len, err_t *err);
    /* Loads the latest snapshot: returns 1 with a malloc'd *data and *len and
     * *upto, or 0 when there is none. */
    int (*load_snapshot)(journal_t *j, uint64_t *upto, void **data, size_t *len, err_t *err);

    void (*close)(journal_t *j);
} journal_ops_t;

struct journal {
    const journal_ops_t *ops;
};

/* Opens a journal from a spec: "file:/path/to/dir" or
 * "etcd:http://127.0.0.1:2379,http://...;prefix=/flicker/assignment".
 * Returns NULL with err on failure. */
journal_t *journal_open(const char *spec, err_t *err);

/* Backend constructors (journal_open dispatches to them). */
journal_t *journal_file_open(const char *dir, err_t *err);
journal_t *journal_etcd_open(const char *endpoints, const char *prefix, err_t *err);

#define journal_close(j) ((j)->ops->close(j))
#endif
