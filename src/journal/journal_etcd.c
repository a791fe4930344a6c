/* journal_etcd.c - the journal (journal.h) on etcd v3 (3.4), over etcd's
 * JSON gRPC gateway (POST /v3/kv/range|txn, /v3/lease/..., /v3/watch) with
 * libcurl and jansson.  Keys and values travel base64-encoded.
 *
 * Key layout under PREFIX (see docs/journal-etcd.md):
 *   PREFIX/term       current term, decimal; only ever incremented, never leased
 *   PREFIX/leader     {"id","term","lease_expiry_ms"}, attached to the leader's
 *                     etcd lease: etcd deletes it when the lease expires
 *   PREFIX/head       index of the last record, 20-digit zero-padded
 *   PREFIX/log/<20-digit index>  "<term>\n" + record bytes
 *   PREFIX/snapshot   "<upto>\n" + snapshot bytes
 *   PREFIX/compacted  20-digit upto of the snapshot; log keys <= it are gone
 *
 * Invariants (all enforced inside single etcd transactions, so they hold
 * whatever the clients do):
 *   - a leader key is only created when none exists, in the same txn that
 *     increments PREFIX/term (compare on its ModRevision), so terms are
 *     unique and increase;
 *   - a record, a snapshot or a compaction is written only by a txn that
 *     compares PREFIX/term == the writer's term AND PREFIX/leader's lease ==
 *     the writer's lease; a deposed (or lapsed) leader's write fails: ESTALE;
 *   - PREFIX/log/<i> is created only if absent (CreateRevision == 0) and
 *     PREFIX/head moves in the same txn, so indexes are dense and never
 *     overwritten; snapshot + compaction are one txn, so readers never see a
 *     gap.
 * Threads: like every journal, one call at a time per handle, except that
 * append may be called from several threads at once (group commit: queued
 * records share one txn).
 * Endpoints are tried in order from the last one that answered; connection
 * failures and "no leader"/timeouts move to the next one, so the loss of
 * one member of three is survived.  A retried request may already have
 * been applied: the txn failure branches read back enough to recognise our
 * own earlier success (see append and campaign). */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/etcd.h"
#include "common/log.h"
#include "common/util.h"
#include "journal/journal.h"

/* etcd's default --max-request-bytes is 1.5 MiB for the whole request
 * (keys, compares, the other puts of the txn); keep 4 KiB for those. */
#define JETCD_MAX_VALUE    (ETCD_MAX_REQUEST - 4096u)
#define JETCD_MAX_PREFIX   512u
#define JETCD_PAGE         64        /* records per range page */
#define JETCD_BATCH        64        /* records per group commit (etcd allows 128 ops a txn) */
#define JETCD_CONNECT_MS   1000      /* the watch stream's connect timeout */

typedef struct jetcd {
    journal_t base;
    etcd_t *e;                  /* unary requests (common/etcd.c) */
    char *prefix;
    char *k_term, *k_leader, *k_head, *k_snap, *k_compacted, *k_log;
    CURL *wc;                   /* watch streams */
    /* leadership held through this handle (lease == 0: none) */
    uint64_t term;
    int64_t lease;
    int64_t ttl_s;
    uint64_t next;              /* index the next append gets */
    char id[128];
    /* group commit (see e_append) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct pending *queue;      /* FIFO of appends not yet taken */
    bool committing;
    uint64_t batches;           /* txns written by append (for tests/bench) */
} jetcd_t;

/* ---- small helpers ---------------------------------------------------- */

static char *log_key(const jetcd_t *j, uint64_t index)
{
    return xasprintf("%s%020" PRIu64, j->k_log, index);
}

static void pad20(uint64_t v, char out[21]) { snprintf(out, 21, "%020" PRIu64, v); }

/* ---- leases ----------------------------------------------------------- */

static int lease_grant(jetcd_t *j, int64_t ttl, int64_t *id, int64_t *granted, err_t *err)
{
    json_t *req = json_pack("{s:o}", "TTL", etcd_jstr64(ttl)), *resp;
    int rc = etcd_call(j->e, "/v3/lease/grant", req, &resp, err);
    json_decref(req);
    if (rc < 0)
        return -1;
    *id = etcd_i64(json_object_get(resp, "ID"));
    *granted = etcd_i64(json_object_get(resp, "TTL"));
    json_decref(resp);
    if (*id == 0 || *granted <= 0)
        return err_set(err, EPROTO, "etcd: lease grant returned no lease");
    return 0;
}

/* Refreshes a lease once; returns its TTL in seconds, 0 if it is gone. */
static int lease_keepalive(jetcd_t *j, int64_t id, int64_t *ttl, err_t *err)
{
    json_t *req = json_pack("{s:o}", "ID", etcd_jstr64(id)), *resp;
    int rc = etcd_call(j->e, "/v3/lease/keepalive", req, &resp, err);
    json_decref(req);
    if (rc < 0)
        return -1;
    *ttl = etcd_i64(json_object_get(json_object_get(resp, "result"), "TTL"));
    json_decref(resp);
    return 0;
}

static int lease_revoke(jetcd_t *j, int64_t id, err_t *err)
{
    json_t *req = json_pack("{s:o}", "ID", etcd_jstr64(id)), *resp;
    int rc = etcd_call(j->e, "/v3/lease/revoke", req, &resp, err);
    json_decref(req);
    if (rc < 0)
        return err->code == ENOENT ? 0 : -1; /* already expired: fine */
    json_decref(resp);
    return 0;
}

/* ---- leadership ------------------------------------------------------- */

typedef struct leader_val {
    char id[128];
    uint64_t term, expiry;
} leader_val_t;

static void leader_parse(const etcd_kv_t *kv, leader_val_t *lv)
{
    memset(lv, 0, sizeof *lv);
    if (!kv->present)
        return;
    json_t *o = json_loadb((const char *)kv->val, kv->vlen, 0, NULL);
    const char *id = json_string_value(json_object_get(o, "id"));
    snprintf(lv->id, sizeof lv->id, "%s", id ? id : "");
    lv->term = (uint64_t)etcd_i64(json_object_get(o, "term"));
    lv->expiry = (uint64_t)etcd_i64(json_object_get(o, "lease_expiry_ms"));
    json_decref(o);
}

/* since_ms: wall clock taken before the grant/keepalive was sent, so the
 * expiry published is never later than etcd's own (which starts when the
 * request is applied); etcd may expire the lease later, never earlier
 * (short of a clock jump on this host). */
static char *leader_json(const char *id, uint64_t term, uint64_t since_ms, int64_t ttl_s)
{
    json_t *o = json_pack("{s:s, s:I, s:I}", "id", id, "term", (json_int_t)term, "lease_expiry_ms",
                          (json_int_t)(since_ms + (uint64_t)ttl_s * 1000u));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void drop_lead(jetcd_t *j)
{
    j->term = 0;
    j->lease = 0;
    j->next = 0;
}

/* Reads leader, term and head in one consistent txn. */
static int read_state(jetcd_t *j, etcd_kv_t *leader, etcd_kv_t *term, etcd_kv_t *head, int64_t *rev, err_t *err)
{
    json_t *succ = json_pack("[o,o,o]", etcd_op_range(j->k_leader, NULL, 0), etcd_op_range(j->k_term, NULL, 0),
                             etcd_op_range(j->k_head, NULL, 0));
    json_t *resp;
    bool ok;
    memset(leader, 0, sizeof *leader);
    memset(term, 0, sizeof *term);
    memset(head, 0, sizeof *head);
    if (etcd_txn(j->e, NULL, succ, NULL, &resp, &ok, err) < 0)
        return -1;
    int rc = 0;
    if (etcd_txn_kv(resp, 0, leader, err) < 0 || etcd_txn_kv(resp, 1, term, err) < 0 || etcd_txn_kv(resp, 2, head, err) < 0) {
        etcd_kv_free(leader);
        etcd_kv_free(term);
        etcd_kv_free(head);
        rc = -1;
    }
    if (rev)
        *rev = etcd_resp_revision(resp);
    json_decref(resp);
    return rc;
}

/* Makes sure this handle holds leadership of `term` (adopting the lease
 * from etcd if another handle of the same leader campaigned); ESTALE if
 * `term` is not the live leader's term. */
static int ensure_lead(jetcd_t *j, uint64_t term, err_t *err)
{
    if (j->lease && j->term == term)
        return 0;
    etcd_kv_t lk, tk, hk;
    if (read_state(j, &lk, &tk, &hk, NULL, err) < 0)
        return -1;
    leader_val_t lv;
    leader_parse(&lk, &lv);
    int rc = 0;
    if (lk.present && lv.term == term && term != 0) {
        j->term = term;
        j->lease = lk.lease;
        j->next = etcd_kv_u64(&hk) + 1;
        snprintf(j->id, sizeof j->id, "%s", lv.id);
    } else {
        rc = err_set(err, ESTALE, "journal(etcd): term %" PRIu64 " is not the leader's (current term %" PRIu64
                                  ", %s)", term, etcd_kv_u64(&tk), lk.present ? "led by another" : "no live leader");
    }
    etcd_kv_free(&lk);
    etcd_kv_free(&tk);
    etcd_kv_free(&hk);
    return rc;
}

static int e_campaign(journal_t *jj, const char *candidate, uint64_t lease_ms, uint64_t *term, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (!candidate || !*candidate || strlen(candidate) >= sizeof j->id)
        return err_set(err, EINVAL, "journal(etcd): candidate id must be 1..127 bytes");
    int64_t ttl = (int64_t)((lease_ms + 999) / 1000);
    if (ttl < 1)
        ttl = 1;
    for (int attempt = 0; attempt < 8; attempt++) {
        etcd_kv_t lk, tk, hk;
        if (read_state(j, &lk, &tk, &hk, NULL, err) < 0)
            return -1;
        leader_val_t lv;
        leader_parse(&lk, &lv);
        uint64_t cur = etcd_kv_u64(&tk), head = etcd_kv_u64(&hk);
        int64_t term_mod = tk.mod_rev, lease = lk.lease;
        bool present = lk.present;
        etcd_kv_free(&lk);
        etcd_kv_free(&tk);
        etcd_kv_free(&hk);
        if (present && strcmp(lv.id, candidate) != 0) {
            *term = lv.term;
            return 0;
        }
        if (present) {
            /* candidate already leads (maybe through another handle):
             * keep its term, refresh its lease (whose TTL stays the one
             * granted at election). */
            int64_t left;
            if (lease_keepalive(j, lease, &left, err) < 0)
                return -1;
            if (left <= 0)
                continue; /* expired just now: campaign afresh */
            j->term = lv.term;
            j->lease = lease;
            j->ttl_s = left;
            j->next = head + 1;
            snprintf(j->id, sizeof j->id, "%s", candidate);
            *term = lv.term;
            return 1;
        }
        /* No leader: a new lease and term, created only if still no leader
         * and nobody moved the term since we read it. */
        int64_t granted;
        uint64_t since = now_wall_ms();
        if (lease_grant(j, ttl, &lease, &granted, err) < 0)
            return -1;
        uint64_t nt = cur + 1;
        char tv[24];
        snprintf(tv, sizeof tv, "%" PRIu64, nt);
        char *val = leader_json(candidate, nt, since, granted);
        json_t *cmps = json_pack("[o,o]", etcd_cmp_create0(j->k_leader), etcd_cmp_mod(j->k_term, term_mod));
        json_t *succ = json_pack("[o,o,o]", etcd_op_put(j->k_term, tv, strlen(tv), 0),
                                 etcd_op_put(j->k_leader, val, strlen(val), lease), etcd_op_range(j->k_head, NULL, 0));
        json_t *fail = json_pack("[o,o]", etcd_op_range(j->k_leader, NULL, 0), etcd_op_range(j->k_head, NULL, 0));
        free(val);
        json_t *resp;
        bool ok;
        if (etcd_txn(j->e, cmps, succ, fail, &resp, &ok, err) < 0) {
            err_t e2;
            lease_revoke(j, lease, &e2);
            return -1;
        }
        etcd_kv_t a = {0}, h;
        if ((!ok && etcd_txn_kv(resp, 0, &a, err) < 0) || etcd_txn_kv(resp, ok ? 2 : 1, &h, err) < 0) {
            etcd_kv_free(&a);
            json_decref(resp);
            return -1;
        }
        json_decref(resp);
        /* failure but the leader key carries our lease: a retried request
         * whose first attempt was applied */
        bool mine = ok || (a.present && a.lease == lease);
        head = etcd_kv_u64(&h);
        etcd_kv_free(&a);
        etcd_kv_free(&h);
        if (mine) {
            j->term = nt;
            j->lease = lease;
            j->ttl_s = granted;
            j->next = head + 1;
            snprintf(j->id, sizeof j->id, "%s", candidate);
            *term = nt;
            log_info("journal", "etcd: %s leads %s with term %" PRIu64 " (lease %" PRId64 " s)", candidate,
                     j->prefix, nt, granted);
            return 1;
        }
        err_t e2;
        lease_revoke(j, lease, &e2);
    }
    return err_set(err, EAGAIN, "journal(etcd): campaign kept losing races; try again");
}

static int e_renew(journal_t *jj, uint64_t term, uint64_t lease_ms, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (ensure_lead(j, term, err) < 0)
        return -1;
    int64_t left;
    uint64_t since = now_wall_ms();
    if (lease_keepalive(j, j->lease, &left, err) < 0)
        return -1;
    if (left <= 0) {
        drop_lead(j);
        return err_set(err, ESTALE, "journal(etcd): the lease of term %" PRIu64 " has expired", term);
    }
    j->ttl_s = left;
    /* the leader key must still be ours: refresh its expiry in the same go */
    char tv[24];
    snprintf(tv, sizeof tv, "%" PRIu64, term);
    char *val = leader_json(j->id, term, since, left);
    json_t *cmps = json_pack("[o,o]", etcd_cmp_lease(j->k_leader, j->lease), etcd_cmp_value(j->k_term, "EQUAL", tv));
    json_t *succ = json_pack("[o]", etcd_op_put(j->k_leader, val, strlen(val), j->lease));
    free(val);
    json_t *resp;
    bool ok;
    if (etcd_txn(j->e, cmps, succ, NULL, &resp, &ok, err) < 0)
        return -1;
    json_decref(resp);
    if (!ok) {
        drop_lead(j);
        return err_set(err, ESTALE, "journal(etcd): term %" PRIu64 " was deposed", term);
    }
    return 0;
}

static int e_resign(journal_t *jj, uint64_t term, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    err_t e2;
    if (ensure_lead(j, term, &e2) < 0)
        return e2.code == ESTALE ? 0 : err_set(err, e2.code, "%s", e2.msg); /* nothing to give up */
    int rc = lease_revoke(j, j->lease, err);
    drop_lead(j);
    return rc;
}

static int e_leader(journal_t *jj, journal_leader_t *out, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    etcd_kv_t lk, tk, hk;
    if (read_state(j, &lk, &tk, &hk, NULL, err) < 0)
        return -1;
    leader_val_t lv;
    leader_parse(&lk, &lv);
    memset(out, 0, sizeof *out);
    out->term = etcd_kv_u64(&tk);
    if (lk.present) {
        snprintf(out->id, sizeof out->id, "%s", lv.id);
        out->lease_expiry_ms = lv.expiry;
    }
    etcd_kv_free(&lk);
    etcd_kv_free(&tk);
    etcd_kv_free(&hk);
    return 0;
}

/* ---- the log ---------------------------------------------------------- */

static int too_big(size_t len, const char *what, err_t *err)
{
    if (len <= JETCD_MAX_VALUE)
        return 0;
    return err_set(err, EFBIG,
                   "journal(etcd): %s of %zu bytes exceeds the %u-byte limit (etcd's default "
                   "--max-request-bytes is 1.5 MiB per request)",
                   what, len, JETCD_MAX_VALUE);
}

/* One append waiting for (or being written by) a group commit. */
typedef struct pending {
    uint64_t term;
    unsigned char *val;         /* "<term>\n" + data */
    size_t vlen;
    uint64_t index;
    int rc;                     /* valid once done */
    bool done;
    err_t err;
    struct pending *next;
} pending_t;

/* Request bytes a record adds to a txn besides its value: its key in the
 * put and in the compare, and protobuf/field overhead. */
static size_t rec_overhead(const jetcd_t *j) { return 2 * (strlen(j->k_log) + 20) + 64; }

/* Writes batch (all of the same term, dense from j->next) in one txn:
 * compares term, lease and that none of the keys exists; puts them and
 * head.  Sets rc/index/err of every member.  Called with j->mu released,
 * by the one committing thread. */
static void commit_batch(jetcd_t *j, pending_t **batch, size_t n)
{
    uint64_t term = batch[0]->term;
    err_t err = {0};
    int rc = -1;
    bool failed = false; /* err already says why */
    pending_t *first = batch[0];
    if (ensure_lead(j, term, &err) < 0)
        goto done;
    char tv[24];
    snprintf(tv, sizeof tv, "%" PRIu64, term);
    for (int attempt = 0; attempt < 8 && rc < 0 && !failed; attempt++) {
        uint64_t idx = j->next;
        char hv[21], *k0 = log_key(j, idx);
        pad20(idx + n - 1, hv);
        json_t *cmps = json_pack("[o,o]", etcd_cmp_value(j->k_term, "EQUAL", tv), etcd_cmp_lease(j->k_leader, j->lease));
        json_t *succ = json_array();
        for (size_t i = 0; i < n; i++) {
            char *k = log_key(j, idx + i);
            json_array_append_new(cmps, etcd_cmp_create0(k));
            json_array_append_new(succ, etcd_op_put(k, batch[i]->val, batch[i]->vlen, 0));
            free(k);
        }
        json_array_append_new(succ, etcd_op_put(j->k_head, hv, 20, 0));
        json_t *fail = json_pack("[o,o,o,o]", etcd_op_range(j->k_term, NULL, 0), etcd_op_range(j->k_leader, NULL, 0),
                                 etcd_op_range(k0, NULL, 0), etcd_op_range(j->k_head, NULL, 0));
        free(k0);
        json_t *resp;
        bool ok;
        if (etcd_txn(j->e, cmps, succ, fail, &resp, &ok, &err) < 0) {
            failed = true;
            break;
        }
        if (ok) {
            json_decref(resp);
            j->next = idx + n;
            rc = 0;
            break;
        }
        etcd_kv_t t, l, r, h;
        memset(&l, 0, sizeof l);
        memset(&r, 0, sizeof r);
        memset(&h, 0, sizeof h);
        if (etcd_txn_kv(resp, 0, &t, &err) < 0 || etcd_txn_kv(resp, 1, &l, &err) < 0 || etcd_txn_kv(resp, 2, &r, &err) < 0 ||
            etcd_txn_kv(resp, 3, &h, &err) < 0) {
            etcd_kv_free(&t), etcd_kv_free(&l), etcd_kv_free(&r), etcd_kv_free(&h);
            json_decref(resp);
            failed = true;
            break;
        }
        json_decref(resp);
        bool stale = etcd_kv_u64(&t) != term || !l.present || l.lease != j->lease;
        /* the txn is atomic: our first record in place means the whole batch
         * was applied by an earlier attempt whose answer was lost */
        bool same = r.present && r.vlen == first->vlen && memcmp(r.val, first->val, r.vlen) == 0;
        uint64_t head = etcd_kv_u64(&h), cur = etcd_kv_u64(&t);
        etcd_kv_free(&t), etcd_kv_free(&l), etcd_kv_free(&r), etcd_kv_free(&h);
        if (same) {
            j->next = idx + n;
            rc = 0;
            break;
        }
        if (stale) {
            drop_lead(j);
            err_set(&err, ESTALE, "journal(etcd): append refused: term %" PRIu64 " is no longer the leader's "
                                  "(current term %" PRIu64 ")", term, cur);
            failed = true;
            break;
        }
        /* the index was taken by a writer of the same term (another handle) */
        j->next = head + 1;
    }
    if (rc < 0 && !failed)
        err_set(&err, EAGAIN, "journal(etcd): append kept colliding with another writer of the same term");
done:
    for (size_t i = 0; i < n; i++) {
        batch[i]->rc = rc;
        batch[i]->err = err;
        batch[i]->index = rc == 0 ? j->next - n + i : 0;
    }
}

/* append: group commit.  The etcd backend lets several threads call append
 * on one handle at once (its other calls stay one-thread-at-a-time): each
 * caller queues its record; whoever finds no commit in progress takes the
 * queue (up to JETCD_BATCH records, same term, within the request size)
 * and writes it in one txn while the others wait for their result.  Each
 * record still gets its own key and index; a batch is all-or-nothing. */
static int e_append(journal_t *jj, uint64_t term, const void *data, size_t len, uint64_t *index, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (too_big(len, "record", err) < 0)
        return -1;
    char tv[24];
    int hl = snprintf(tv, sizeof tv, "%" PRIu64 "\n", term);
    pending_t me = {.term = term, .vlen = (size_t)hl + len};
    me.val = xmalloc(me.vlen + 1);
    memcpy(me.val, tv, (size_t)hl);
    if (len)
        memcpy(me.val + hl, data, len);
    pthread_mutex_lock(&j->mu);
    pending_t **tail = &j->queue;
    while (*tail)
        tail = &(*tail)->next;
    *tail = &me;
    while (!me.done) {
        if (j->committing) {
            pthread_cond_wait(&j->cv, &j->mu);
            continue;
        }
        /* become the committer: take a batch from the head of the queue */
        j->committing = true;
        pending_t *batch[JETCD_BATCH] = {0};
        size_t n = 0, bytes = 0, ov = rec_overhead(j);
        for (pending_t *q = j->queue; q && n < JETCD_BATCH && q->term == j->queue->term; q = q->next) {
            if (n > 0 && bytes + q->vlen + ov > JETCD_MAX_VALUE)
                break;
            bytes += q->vlen + ov;
            batch[n++] = q;
        }
        j->queue = batch[n - 1]->next;
        pthread_mutex_unlock(&j->mu);
        /* the batch's waiters read their results only once done is set,
         * under mu, so filling them in here without it is safe */
        commit_batch(j, batch, n);
        pthread_mutex_lock(&j->mu);
        for (size_t i = 0; i < n; i++)
            batch[i]->done = true;
        j->batches++;
        j->committing = false;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    free(me.val);
    if (me.rc == 0)
        *index = me.index;
    else if (err)
        *err = me.err;
    return me.rc;
}

struct read_ctx {
    const jetcd_t *j;
    journal_record_fn fn;
    void *arg;
};

/* Calls the reader's fn for one "<term>\n<data>" log kv; returns fn's
 * result, or -1. */
static int deliver(const etcd_kv_t *kv, void *arg, err_t *err)
{
    struct read_ctx *rc = arg;
    size_t pl = strlen(rc->j->k_log);
    char *nl = memchr(kv->val, '\n', kv->vlen < 24 ? kv->vlen : 24);
    if (strlen(kv->key) != pl + 20 || !nl)
        return err_set(err, EPROTO, "journal(etcd): malformed log entry %s", kv->key);
    journal_record_t rec = {
        .index = strtoull(kv->key + pl, NULL, 10),
        .term = strtoull((const char *)kv->val, NULL, 10),
        .data = nl + 1,
        .len = kv->vlen - (size_t)((unsigned char *)nl + 1 - kv->val),
    };
    return rc->fn(&rec, rc->arg);
}

static int e_read(journal_t *jj, uint64_t from, journal_record_fn fn, void *arg, uint64_t *first, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (from == 0)
        from = 1;
    char *end = xasprintf("%s%c", j->k_log, 0x7f); /* past every 20-digit key */
    char *start = log_key(j, from);
    json_t *succ = json_pack("[o,o]", etcd_op_range(j->k_compacted, NULL, 0), etcd_op_range(start, end, JETCD_PAGE));
    json_t *resp;
    bool ok;
    int rc = -1;
    if (etcd_txn(j->e, NULL, succ, NULL, &resp, &ok, err) < 0)
        goto out;
    etcd_kv_t ck;
    if (etcd_txn_kv(resp, 0, &ck, err) < 0) {
        json_decref(resp);
        goto out;
    }
    uint64_t compacted = etcd_kv_u64(&ck);
    etcd_kv_free(&ck);
    if (first)
        *first = from > compacted ? from : compacted + 1;
    /* the first page came with the txn; the next ones at its revision:
     * one consistent view */
    struct read_ctx ctx = {.j = j, .fn = fn, .arg = arg};
    json_t *page = json_object_get(json_array_get(json_object_get(resp, "responses"), 1), "response_range");
    rc = etcd_range_pages(j->e, start, end, JETCD_PAGE, false, etcd_resp_revision(resp), page, deliver, &ctx,
                          NULL, err);
    json_decref(resp);
out:
    free(start);
    free(end);
    return rc;
}

/* ---- wait: a watch on PREFIX/head ------------------------------------- */

struct watch_state {
    etcd_buf_t b;
    uint64_t from;
    bool found, failed;
};

static size_t watch_write(char *p, size_t sz, size_t n, void *arg)
{
    struct watch_state *w = arg;
    etcd_buf_write(p, sz, n, &w->b);
    char *nl;
    while ((nl = memchr(w->b.p, '\n', w->b.n))) {
        json_t *o = json_loadb(w->b.p, (size_t)(nl - w->b.p), 0, NULL);
        json_t *res = json_object_get(o, "result");
        if (!o || json_object_get(o, "error") || json_is_true(json_object_get(res, "canceled")))
            w->failed = true;
        json_t *evs = json_object_get(res, "events");
        for (size_t i = 0; i < json_array_size(evs); i++) {
            etcd_kv_t kv;
            if (etcd_kv_parse(json_object_get(json_array_get(evs, i), "kv"), &kv, NULL) == 0) {
                if (etcd_kv_u64(&kv) >= w->from)
                    w->found = true;
                etcd_kv_free(&kv);
            }
        }
        json_decref(o);
        size_t used = (size_t)(nl - w->b.p) + 1;
        memmove(w->b.p, nl + 1, w->b.n - used);
        w->b.n -= used;
        if (w->found || w->failed)
            return 0; /* stop the stream */
    }
    return sz * n;
}

/* Watches PREFIX/head from revision rev for up to ms: 1 when head reached
 * `from`, 0 when the time ran out, -1 when the stream failed. */
static int watch_head(jetcd_t *j, int64_t rev, uint64_t from, uint64_t ms)
{
    json_t *req = json_pack("{s:{s:o, s:o}}", "create_request", "key", etcd_b64s(j->k_head), "start_revision",
                            etcd_jstr64(rev));
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    char *url = xasprintf("%s/v3/watch", etcd_endpoint(j->e));
    struct watch_state w = {.from = from};
    curl_easy_setopt(j->wc, CURLOPT_URL, url);
    curl_easy_setopt(j->wc, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(j->wc, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(j->wc, CURLOPT_WRITEDATA, &w);
    curl_easy_setopt(j->wc, CURLOPT_TIMEOUT_MS, (long)(ms ? ms : 1));
    curl_easy_setopt(j->wc, CURLOPT_CONNECTTIMEOUT_MS, (long)(ms < JETCD_CONNECT_MS ? (ms ? ms : 1) : JETCD_CONNECT_MS));
    CURLcode rc = curl_easy_perform(j->wc);
    free(url);
    free(body);
    free(w.b.p);
    if (w.found)
        return 1;
    if (rc == CURLE_OPERATION_TIMEDOUT && !w.failed)
        return 0;
    return -1;
}

static int e_wait(journal_t *jj, uint64_t from, int timeout_ms, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (from == 0)
        from = 1;
    uint64_t deadline = now_mono_ms() + (timeout_ms > 0 ? (uint64_t)timeout_ms : 0);
    for (;;) {
        etcd_kv_t hk;
        int64_t rev;
        if (etcd_get(j->e, j->k_head, &hk, &rev, err) < 0)
            return -1;
        uint64_t head = etcd_kv_u64(&hk);
        etcd_kv_free(&hk);
        if (head >= from)
            return 1;
        uint64_t now = now_mono_ms();
        if (now >= deadline)
            return 0;
        int w = watch_head(j, rev + 1, from, deadline - now);
        if (w >= 0)
            return w;
        /* the stream broke (member down, watch cancelled): next endpoint */
        etcd_next_endpoint(j->e);
        usleep(50 * 1000);
    }
}

/* ---- snapshots -------------------------------------------------------- */

static int e_snapshot(journal_t *jj, uint64_t term, uint64_t upto, const void *data, size_t len, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    char hdr[24];
    int hl = snprintf(hdr, sizeof hdr, "%" PRIu64 "\n", upto);
    if (too_big(len + (size_t)hl, "snapshot", err) < 0)
        return -1;
    if (ensure_lead(j, term, err) < 0)
        return -1;
    /* where compaction stands now (only the leader moves it) */
    etcd_kv_t ck;
    if (etcd_get(j->e, j->k_compacted, &ck, NULL, err) < 0)
        return -1;
    uint64_t compacted = etcd_kv_u64(&ck);
    int64_t cmod = ck.mod_rev;
    etcd_kv_free(&ck);
    if (upto < compacted)
        return err_set(err, EINVAL, "journal(etcd): snapshot upto %" PRIu64 " is older than the current one (%" PRIu64 ")",
                       upto, compacted);
    if (upto >= j->next)
        return err_set(err, EINVAL, "journal(etcd): snapshot upto %" PRIu64 " is past the last record (%" PRIu64 ")",
                       upto, j->next - 1);
    unsigned char *val = xmalloc((size_t)hl + len + 1);
    memcpy(val, hdr, (size_t)hl);
    if (len)
        memcpy(val + hl, data, len);
    char tv[24], uv[21];
    snprintf(tv, sizeof tv, "%" PRIu64, term);
    pad20(upto, uv);
    char *from = log_key(j, 0), *to = log_key(j, upto + 1);
    json_t *cmps = json_pack("[o,o,o]", etcd_cmp_value(j->k_term, "EQUAL", tv), etcd_cmp_lease(j->k_leader, j->lease),
                             etcd_cmp_mod(j->k_compacted, cmod));
    json_t *succ = json_pack("[o,o,o]", etcd_op_put(j->k_snap, val, (size_t)hl + len, 0), etcd_op_put(j->k_compacted, uv, 20, 0),
                             etcd_op_delete(from, to));
    json_t *fail = json_pack("[o]", etcd_op_range(j->k_snap, NULL, 0));
    free(val);
    free(from);
    free(to);
    json_t *resp;
    bool ok;
    if (etcd_txn(j->e, cmps, succ, fail, &resp, &ok, err) < 0)
        return -1;
    etcd_kv_t sk = {0};
    if (!ok && etcd_txn_kv(resp, 0, &sk, err) < 0) {
        json_decref(resp);
        return -1;
    }
    json_decref(resp);
    /* a retried request whose first attempt was applied leaves exactly our value */
    bool same = sk.present && sk.vlen == (size_t)hl + len && memcmp(sk.val, hdr, (size_t)hl) == 0 &&
                (len == 0 || memcmp(sk.val + hl, data, len) == 0);
    etcd_kv_free(&sk);
    if (ok || same)
        return 0;
    drop_lead(j);
    return err_set(err, ESTALE, "journal(etcd): snapshot refused: term %" PRIu64 " is no longer the leader's "
                                "(or another snapshot raced)", term);
}

static int e_load_snapshot(journal_t *jj, uint64_t *upto, void **data, size_t *len, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    etcd_kv_t kv;
    if (etcd_get(j->e, j->k_snap, &kv, NULL, err) < 0)
        return -1;
    if (!kv.present)
        return 0;
    char *nl = memchr(kv.val, '\n', kv.vlen < 24 ? kv.vlen : 24);
    if (!nl) {
        etcd_kv_free(&kv);
        return err_set(err, EPROTO, "journal(etcd): malformed snapshot");
    }
    *upto = strtoull((const char *)kv.val, NULL, 10);
    size_t off = (size_t)((unsigned char *)nl + 1 - kv.val);
    *len = kv.vlen - off;
    *data = xmalloc(*len + 1);
    memcpy(*data, kv.val + off, *len);
    ((char *)*data)[*len] = 0;
    etcd_kv_free(&kv);
    return 1;
}

/* ---- open / close ----------------------------------------------------- */

static void e_close(journal_t *jj)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (!j)
        return;
    free(j->prefix);
    free(j->k_term);
    free(j->k_leader);
    free(j->k_head);
    free(j->k_snap);
    free(j->k_compacted);
    free(j->k_log);
    if (j->wc)
        curl_easy_cleanup(j->wc);
    etcd_close(j->e);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

static const journal_ops_t etcd_ops = {
    .campaign = e_campaign,
    .renew = e_renew,
    .resign = e_resign,
    .leader = e_leader,
    .append = e_append,
    .read = e_read,
    .wait = e_wait,
    .snapshot = e_snapshot,
    .load_snapshot = e_load_snapshot,
    .close = e_close,
};

/* Opens the etcd journal.  endpoints: comma-separated URLs
 * ("http://127.0.0.1:2379,...", a bare host:port gets http://); prefix: the
 * key prefix (default "/flicker/journal"; a trailing '/' is dropped).  No
 * request is made here: an unreachable cluster shows on the first call. */
journal_t *journal_etcd_open(const char *endpoints, const char *prefix, err_t *err)
{
    if (!endpoints || !*endpoints) {
        err_set(err, EINVAL, "journal(etcd): no endpoints");
        return NULL;
    }
    if (!prefix || !*prefix)
        prefix = "/flicker/journal";
    size_t pl = strlen(prefix);
    while (pl > 1 && prefix[pl - 1] == '/')
        pl--;
    if (pl > JETCD_MAX_PREFIX) {
        err_set(err, EINVAL, "journal(etcd): prefix longer than %u bytes", JETCD_MAX_PREFIX);
        return NULL;
    }
    etcd_t *e = etcd_open(endpoints, "journal", err);
    if (!e)
        return NULL;
    jetcd_t *j = xcalloc(1, sizeof *j);
    j->base.ops = &etcd_ops;
    j->e = e;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->prefix = xstrndup(prefix, pl);
    j->k_term = xasprintf("%s/term", j->prefix);
    j->k_leader = xasprintf("%s/leader", j->prefix);
    j->k_head = xasprintf("%s/head", j->prefix);
    j->k_snap = xasprintf("%s/snapshot", j->prefix);
    j->k_compacted = xasprintf("%s/compacted", j->prefix);
    j->k_log = xasprintf("%s/log/", j->prefix);
    j->wc = etcd_easy_new(e);
    if (!j->wc) {
        err_set(err, ENOMEM, "journal(etcd): cannot set up libcurl");
        e_close(&j->base);
        return NULL;
    }
    return &j->base;
}
