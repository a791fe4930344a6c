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
#include "common/log.h"
#include "common/util.h"
#include "journal/journal.h"

/* etcd's default --max-request-bytes is 1.5 MiB for the whole request
 * (keys, compares, the other puts of the txn); keep 4 KiB for those. */
#define ETCD_MAX_REQUEST   (1536u * 1024u)
#define JETCD_MAX_VALUE    (ETCD_MAX_REQUEST - 4096u)
#define JETCD_MAX_PREFIX   512u
#define JETCD_PAGE         64        /* records per range page */
#define JETCD_BATCH        64        /* records per group commit (etcd allows 128 ops a txn) */
#define JETCD_CALL_MS      15000     /* give up on a request after this long */
#define JETCD_HTTP_MS      2000      /* one HTTP exchange; a proposal lost in an
                                        * election hangs until this, then we retry */
#define JETCD_CONNECT_MS   1000

struct buf {
    char *p;
    size_t n, cap;
};

typedef struct jetcd {
    journal_t base;
    char **eps;
    size_t neps, cur;           /* cur: the endpoint that last answered */
    char *prefix;
    char *k_term, *k_leader, *k_head, *k_snap, *k_compacted, *k_log;
    CURL *c;                    /* unary requests */
    CURL *wc;                   /* watch streams */
    struct curl_slist *hdrs;
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

static pthread_mutex_t curl_init_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t buf_write(char *p, size_t sz, size_t n, void *arg)
{
    struct buf *b = arg;
    size_t len = sz * n;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + len + 1)
            cap *= 2;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, len);
    b->n += len;
    b->p[b->n] = 0;
    return len;
}

static json_t *jb64(const void *data, size_t len)
{
    char *s = base64_encode(data, len);
    json_t *v = json_string(s);
    free(s);
    return v;
}

static json_t *jb64s(const char *s) { return jb64(s, strlen(s)); }

/* int64 fields come back as JSON strings ("123"); absent means 0. */
static int64_t ji64(const json_t *v)
{
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static json_t *jstr64(int64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRId64, v);
    return json_string(s);
}

static char *log_key(const jetcd_t *j, uint64_t index)
{
    return xasprintf("%s%020" PRIu64, j->k_log, index);
}

static void pad20(uint64_t v, char out[21]) { snprintf(out, 21, "%020" PRIu64, v); }

/* One key-value as returned by range. */
typedef struct kv {
    bool present;
    char *key;
    unsigned char *val;         /* NUL-terminated */
    size_t vlen;
    int64_t create_rev, mod_rev, lease;
} kv_t;

static void kv_free(kv_t *kv)
{
    free(kv->key);
    free(kv->val);
    memset(kv, 0, sizeof *kv);
}

static int kv_parse(const json_t *o, kv_t *kv, err_t *err)
{
    memset(kv, 0, sizeof *kv);
    const char *k = json_string_value(json_object_get(o, "key"));
    const char *v = json_string_value(json_object_get(o, "value"));
    size_t n = 0;
    kv->key = k ? base64_decode(k, strlen(k), &n) : xstrdup("");
    kv->val = v ? base64_decode(v, strlen(v), &kv->vlen) : (unsigned char *)xstrdup("");
    if (!kv->key || !kv->val) {
        kv_free(kv);
        return err_set(err, EPROTO, "etcd: bad base64 in a key-value");
    }
    kv->create_rev = ji64(json_object_get(o, "create_revision"));
    kv->mod_rev = ji64(json_object_get(o, "mod_revision"));
    kv->lease = ji64(json_object_get(o, "lease"));
    kv->present = true;
    return 0;
}

/* The first kv of response i of a txn whose op i was a range. */
static int txn_kv(const json_t *resp, size_t i, kv_t *kv, err_t *err)
{
    memset(kv, 0, sizeof *kv);
    json_t *r = json_object_get(json_array_get(json_object_get(resp, "responses"), i), "response_range");
    json_t *kvs = json_object_get(r, "kvs");
    if (!r)
        return err_set(err, EPROTO, "etcd: txn response %zu is not a range", i);
    if (json_array_size(kvs) == 0)
        return 0;
    return kv_parse(json_array_get(kvs, 0), kv, err);
}

/* A 20-digit (or any decimal) counter value; absent or empty = 0. */
static uint64_t kv_u64(const kv_t *kv)
{
    return kv->present ? strtoull((const char *)kv->val, NULL, 10) : 0;
}

/* ---- the HTTP layer --------------------------------------------------- */

/* gRPC codes / messages that mean "this member cannot serve now, try
 * another": Unavailable, DeadlineExceeded, no leader, leader changed... */
static bool retryable(long status, int64_t code, const char *msg)
{
    if (code == 14 || code == 4 || status == 502 || status == 503 || status == 504)
        return true;
    if (msg && (strstr(msg, "leader") || strstr(msg, "timed out") || strstr(msg, "stopped") ||
                strstr(msg, "too many requests") || strstr(msg, "not capable")))
        return true;
    return false;
}

/* POSTs req (JSON) to path on the first endpoint that can serve it;
 * returns 0 with the decoded response in *out, or -1/err.  err->code is
 * ENOENT for gRPC NotFound (e.g. an unknown lease), EIO otherwise. */
static int etcd_call(jetcd_t *j, const char *path, json_t *req, json_t **out, err_t *err)
{
    char *body = json_dumps(req, JSON_COMPACT);
    if (!body)
        return err_set(err, ENOMEM, "etcd %s: cannot encode request", path);
    uint64_t deadline = now_mono_ms() + JETCD_CALL_MS;
    char last[384] = "no endpoint";
    struct buf b = {0};
    for (;;) {
        for (size_t k = 0; k < j->neps; k++) {
            size_t e = (j->cur + k) % j->neps;
            char *url = xasprintf("%s%s", j->eps[e], path);
            b.n = 0;
            curl_easy_setopt(j->c, CURLOPT_URL, url);
            curl_easy_setopt(j->c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(j->c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
            curl_easy_setopt(j->c, CURLOPT_WRITEDATA, &b);
            CURLcode rc = curl_easy_perform(j->c);
            free(url);
            if (rc != CURLE_OK) {
                snprintf(last, sizeof last, "%s: %s", j->eps[e], curl_easy_strerror(rc));
                log_debug("journal", "etcd %s: %s", path, last);
                continue;
            }
            long status = 0;
            curl_easy_getinfo(j->c, CURLINFO_RESPONSE_CODE, &status);
            json_t *r = b.n ? json_loadb(b.p, b.n, 0, NULL) : NULL;
            if (status == 200 && json_is_object(r) && !json_object_get(r, "error")) {
                j->cur = e;
                *out = r;
                free(body);
                free(b.p);
                return 0;
            }
            const char *msg = json_string_value(json_object_get(r, "message"));
            if (!msg)
                msg = json_string_value(json_object_get(r, "error"));
            int64_t code = ji64(json_object_get(r, "code"));
            snprintf(last, sizeof last, "%s: %s (HTTP %ld)", j->eps[e], msg ? msg : "unreadable response",
                     status);
            log_debug("journal", "etcd %s: %s", path, last);
            if (retryable(status, code, msg)) {
                json_decref(r);
                continue;
            }
            j->cur = e;
            err_set(err, code == 5 ? ENOENT : EIO, "etcd %s: %s", path, last);
            json_decref(r);
            free(body);
            free(b.p);
            return -1;
        }
        if (now_mono_ms() >= deadline)
            break;
        usleep(200 * 1000);
    }
    free(body);
    free(b.p);
    return err_set(err, EHOSTUNREACH, "etcd %s: no endpoint could serve the request; last: %s", path, last);
}

/* ---- request builders ------------------------------------------------- */

static json_t *cmp(const char *key, const char *target, const char *result, const char *field, json_t *v)
{
    return json_pack("{s:o, s:s, s:s, s:o}", "key", jb64s(key), "target", target, "result", result, field, v);
}
static json_t *cmp_create0(const char *key) { return cmp(key, "CREATE", "EQUAL", "create_revision", jstr64(0)); }
static json_t *cmp_mod(const char *key, int64_t rev) { return cmp(key, "MOD", "EQUAL", "mod_revision", jstr64(rev)); }
static json_t *cmp_lease(const char *key, int64_t lease) { return cmp(key, "LEASE", "EQUAL", "lease", jstr64(lease)); }
static json_t *cmp_value(const char *key, const char *result, const char *val)
{
    return cmp(key, "VALUE", result, "value", jb64s(val));
}

static json_t *op_put(const char *key, const void *val, size_t len, int64_t lease)
{
    json_t *p = json_pack("{s:o, s:o}", "key", jb64s(key), "value", jb64(val, len));
    if (lease)
        json_object_set_new(p, "lease", jstr64(lease));
    return json_pack("{s:o}", "request_put", p);
}
static json_t *op_range(const char *key, const char *end, int64_t limit)
{
    json_t *r = json_pack("{s:o}", "key", jb64s(key));
    if (end)
        json_object_set_new(r, "range_end", jb64s(end));
    if (limit)
        json_object_set_new(r, "limit", jstr64(limit));
    return json_pack("{s:o}", "request_range", r);
}
static json_t *op_delete(const char *key, const char *end)
{
    return json_pack("{s:{s:o, s:o}}", "request_delete_range", "key", jb64s(key), "range_end", jb64s(end));
}

/* Runs a txn (takes ownership of the three arrays, NULL = empty); returns
 * 0 with the response in *resp and whether it succeeded in *ok. */
static int txn(jetcd_t *j, json_t *cmps, json_t *succ, json_t *fail, json_t **resp, bool *ok, err_t *err)
{
    json_t *req = json_pack("{s:o, s:o, s:o}", "compare", cmps ? cmps : json_array(), "success",
                            succ ? succ : json_array(), "failure", fail ? fail : json_array());
    int rc = etcd_call(j, "/v3/kv/txn", req, resp, err);
    json_decref(req);
    if (rc < 0)
        return -1;
    *ok = json_is_true(json_object_get(*resp, "succeeded"));
    return 0;
}

static int64_t resp_revision(const json_t *resp)
{
    return ji64(json_object_get(json_object_get(resp, "header"), "revision"));
}

/* ---- leases ----------------------------------------------------------- */

static int lease_grant(jetcd_t *j, int64_t ttl, int64_t *id, int64_t *granted, err_t *err)
{
    json_t *req = json_pack("{s:o}", "TTL", jstr64(ttl)), *resp;
    int rc = etcd_call(j, "/v3/lease/grant", req, &resp, err);
    json_decref(req);
    if (rc < 0)
        return -1;
    *id = ji64(json_object_get(resp, "ID"));
    *granted = ji64(json_object_get(resp, "TTL"));
    json_decref(resp);
    if (*id == 0 || *granted <= 0)
        return err_set(err, EPROTO, "etcd: lease grant returned no lease");
    return 0;
}

/* Refreshes a lease once; returns its TTL in seconds, 0 if it is gone. */
static int lease_keepalive(jetcd_t *j, int64_t id, int64_t *ttl, err_t *err)
{
    json_t *req = json_pack("{s:o}", "ID", jstr64(id)), *resp;
    int rc = etcd_call(j, "/v3/lease/keepalive", req, &resp, err);
    json_decref(req);
    if (rc < 0)
        return -1;
    *ttl = ji64(json_object_get(json_object_get(resp, "result"), "TTL"));
    json_decref(resp);
    return 0;
}

static int lease_revoke(jetcd_t *j, int64_t id, err_t *err)
{
    json_t *req = json_pack("{s:o}", "ID", jstr64(id)), *resp;
    int rc = etcd_call(j, "/v3/lease/revoke", req, &resp, err);
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

static void leader_parse(const kv_t *kv, leader_val_t *lv)
{
    memset(lv, 0, sizeof *lv);
    if (!kv->present)
        return;
    json_t *o = json_loadb((const char *)kv->val, kv->vlen, 0, NULL);
    const char *id = json_string_value(json_object_get(o, "id"));
    snprintf(lv->id, sizeof lv->id, "%s", id ? id : "");
    lv->term = (uint64_t)ji64(json_object_get(o, "term"));
    lv->expiry = (uint64_t)ji64(json_object_get(o, "lease_expiry_ms"));
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
static int read_state(jetcd_t *j, kv_t *leader, kv_t *term, kv_t *head, int64_t *rev, err_t *err)
{
    json_t *succ = json_pack("[o,o,o]", op_range(j->k_leader, NULL, 0), op_range(j->k_term, NULL, 0),
                             op_range(j->k_head, NULL, 0));
    json_t *resp;
    bool ok;
    memset(leader, 0, sizeof *leader);
    memset(term, 0, sizeof *term);
    memset(head, 0, sizeof *head);
    if (txn(j, NULL, succ, NULL, &resp, &ok, err) < 0)
        return -1;
    int rc = 0;
    if (txn_kv(resp, 0, leader, err) < 0 || txn_kv(resp, 1, term, err) < 0 || txn_kv(resp, 2, head, err) < 0) {
        kv_free(leader);
        kv_free(term);
        kv_free(head);
        rc = -1;
    }
    if (rev)
        *rev = resp_revision(resp);
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
    kv_t lk, tk, hk;
    if (read_state(j, &lk, &tk, &hk, NULL, err) < 0)
        return -1;
    leader_val_t lv;
    leader_parse(&lk, &lv);
    int rc = 0;
    if (lk.present && lv.term == term && term != 0) {
        j->term = term;
        j->lease = lk.lease;
        j->next = kv_u64(&hk) + 1;
        snprintf(j->id, sizeof j->id, "%s", lv.id);
    } else {
        rc = err_set(err, ESTALE, "journal(etcd): term %" PRIu64 " is not the leader's (current term %" PRIu64
                                  ", %s)", term, kv_u64(&tk), lk.present ? "led by another" : "no live leader");
    }
    kv_free(&lk);
    kv_free(&tk);
    kv_free(&hk);
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
        kv_t lk, tk, hk;
        if (read_state(j, &lk, &tk, &hk, NULL, err) < 0)
            return -1;
        leader_val_t lv;
        leader_parse(&lk, &lv);
        uint64_t cur = kv_u64(&tk), head = kv_u64(&hk);
        int64_t term_mod = tk.mod_rev, lease = lk.lease;
        bool present = lk.present;
        kv_free(&lk);
        kv_free(&tk);
        kv_free(&hk);
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
        json_t *cmps = json_pack("[o,o]", cmp_create0(j->k_leader), cmp_mod(j->k_term, term_mod));
        json_t *succ = json_pack("[o,o,o]", op_put(j->k_term, tv, strlen(tv), 0),
                                 op_put(j->k_leader, val, strlen(val), lease), op_range(j->k_head, NULL, 0));
        json_t *fail = json_pack("[o,o]", op_range(j->k_leader, NULL, 0), op_range(j->k_head, NULL, 0));
        free(val);
        json_t *resp;
        bool ok;
        if (txn(j, cmps, succ, fail, &resp, &ok, err) < 0) {
            err_t e2;
            lease_revoke(j, lease, &e2);
            return -1;
        }
        kv_t a = {0}, h;
        if ((!ok && txn_kv(resp, 0, &a, err) < 0) || txn_kv(resp, ok ? 2 : 1, &h, err) < 0) {
            kv_free(&a);
            json_decref(resp);
            return -1;
        }
        json_decref(resp);
        /* failure but the leader key carries our lease: a retried request
         * whose first attempt was applied */
        bool mine = ok || (a.present && a.lease == lease);
        head = kv_u64(&h);
        kv_free(&a);
        kv_free(&h);
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
    json_t *cmps = json_pack("[o,o]", cmp_lease(j->k_leader, j->lease), cmp_value(j->k_term, "EQUAL", tv));
    json_t *succ = json_pack("[o]", op_put(j->k_leader, val, strlen(val), j->lease));
    free(val);
    json_t *resp;
    bool ok;
    if (txn(j, cmps, succ, NULL, &resp, &ok, err) < 0)
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
    kv_t lk, tk, hk;
    if (read_state(j, &lk, &tk, &hk, NULL, err) < 0)
        return -1;
    leader_val_t lv;
    leader_parse(&lk, &lv);
    memset(out, 0, sizeof *out);
    out->term = kv_u64(&tk);
    if (lk.present) {
        snprintf(out->id, sizeof out->id, "%s", lv.id);
        out->lease_expiry_ms = lv.expiry;
    }
    kv_free(&lk);
    kv_free(&tk);
    kv_free(&hk);
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
        json_t *cmps = json_pack("[o,o]", cmp_value(j->k_term, "EQUAL", tv), cmp_lease(j->k_leader, j->lease));
        json_t *succ = json_array();
        for (size_t i = 0; i < n; i++) {
            char *k = log_key(j, idx + i);
            json_array_append_new(cmps, cmp_create0(k));
            json_array_append_new(succ, op_put(k, batch[i]->val, batch[i]->vlen, 0));
            free(k);
        }
        json_array_append_new(succ, op_put(j->k_head, hv, 20, 0));
        json_t *fail = json_pack("[o,o,o,o]", op_range(j->k_term, NULL, 0), op_range(j->k_leader, NULL, 0),
                                 op_range(k0, NULL, 0), op_range(j->k_head, NULL, 0));
        free(k0);
        json_t *resp;
        bool ok;
        if (txn(j, cmps, succ, fail, &resp, &ok, &err) < 0) {
            failed = true;
            break;
        }
        if (ok) {
            json_decref(resp);
            j->next = idx + n;
            rc = 0;
            break;
        }
        kv_t t, l, r, h;
        memset(&l, 0, sizeof l);
        memset(&r, 0, sizeof r);
        memset(&h, 0, sizeof h);
        if (txn_kv(resp, 0, &t, &err) < 0 || txn_kv(resp, 1, &l, &err) < 0 || txn_kv(resp, 2, &r, &err) < 0 ||
            txn_kv(resp, 3, &h, &err) < 0) {
            kv_free(&t), kv_free(&l), kv_free(&r), kv_free(&h);
            json_decref(resp);
            failed = true;
            break;
        }
        json_decref(resp);
        bool stale = kv_u64(&t) != term || !l.present || l.lease != j->lease;
        /* the txn is atomic: our first record in place means the whole batch
         * was applied by an earlier attempt whose answer was lost */
        bool same = r.present && r.vlen == first->vlen && memcmp(r.val, first->val, r.vlen) == 0;
        uint64_t head = kv_u64(&h), cur = kv_u64(&t);
        kv_free(&t), kv_free(&l), kv_free(&r), kv_free(&h);
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

/* Calls fn for one "<term>\n<data>" log kv; returns fn's result, or -1. */
static int deliver(const jetcd_t *j, const json_t *o, uint64_t *index, journal_record_fn fn, void *arg, err_t *err)
{
    kv_t kv;
    if (kv_parse(o, &kv, err) < 0)
        return -1;
    size_t pl = strlen(j->k_log);
    char *nl = memchr(kv.val, '\n', kv.vlen < 24 ? kv.vlen : 24);
    if (strlen(kv.key) != pl + 20 || !nl) {
        err_set(err, EPROTO, "journal(etcd): malformed log entry %s", kv.key);
        kv_free(&kv);
        return -1;
    }
    journal_record_t rec = {
        .index = strtoull(kv.key + pl, NULL, 10),
        .term = strtoull((const char *)kv.val, NULL, 10),
        .data = nl + 1,
        .len = kv.vlen - (size_t)((unsigned char *)nl + 1 - kv.val),
    };
    *index = rec.index;
    int r = fn(&rec, arg);
    kv_free(&kv);
    return r;
}

static int e_read(journal_t *jj, uint64_t from, journal_record_fn fn, void *arg, uint64_t *first, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (from == 0)
        from = 1;
    char *end = xasprintf("%s%c", j->k_log, 0x7f); /* past every 20-digit key */
    char *start = log_key(j, from);
    json_t *succ = json_pack("[o,o]", op_range(j->k_compacted, NULL, 0), op_range(start, end, JETCD_PAGE));
    json_t *resp;
    bool ok;
    int rc = -1;
    if (txn(j, NULL, succ, NULL, &resp, &ok, err) < 0)
        goto out;
    kv_t ck;
    if (txn_kv(resp, 0, &ck, err) < 0) {
        json_decref(resp);
        goto out;
    }
    uint64_t compacted = kv_u64(&ck);
    kv_free(&ck);
    if (first)
        *first = from > compacted ? from : compacted + 1;
    int64_t rev = resp_revision(resp);
    json_t *page = json_object_get(json_array_get(json_object_get(resp, "responses"), 1), "response_range");
    json_incref(page);
    json_decref(resp);
    for (;;) {
        json_t *kvs = json_object_get(page, "kvs");
        bool more = json_is_true(json_object_get(page, "more"));
        uint64_t last = 0;
        for (size_t i = 0; i < json_array_size(kvs); i++) {
            int r = deliver(j, json_array_get(kvs, i), &last, fn, arg, err);
            if (r != 0) {
                json_decref(page);
                rc = r < 0 ? -1 : 0;
                goto out;
            }
        }
        json_decref(page);
        if (!more || last == 0)
            break;
        /* next page at the same revision: one consistent view */
        free(start);
        start = log_key(j, last + 1);
        json_t *req = json_pack("{s:o, s:o, s:o, s:o}", "key", jb64s(start), "range_end", jb64s(end), "limit",
                                jstr64(JETCD_PAGE), "revision", jstr64(rev));
        int c = etcd_call(j, "/v3/kv/range", req, &page, err);
        json_decref(req);
        if (c < 0)
            goto out;
    }
    rc = 0;
out:
    free(start);
    free(end);
    return rc;
}

/* ---- wait: a watch on PREFIX/head ------------------------------------- */

struct watch_state {
    struct buf b;
    uint64_t from;
    bool found, failed;
};

static size_t watch_write(char *p, size_t sz, size_t n, void *arg)
{
    struct watch_state *w = arg;
    buf_write(p, sz, n, &w->b);
    char *nl;
    while ((nl = memchr(w->b.p, '\n', w->b.n))) {
        json_t *o = json_loadb(w->b.p, (size_t)(nl - w->b.p), 0, NULL);
        json_t *res = json_object_get(o, "result");
        if (!o || json_object_get(o, "error") || json_is_true(json_object_get(res, "canceled")))
            w->failed = true;
        json_t *evs = json_object_get(res, "events");
        for (size_t i = 0; i < json_array_size(evs); i++) {
            kv_t kv;
            if (kv_parse(json_object_get(json_array_get(evs, i), "kv"), &kv, NULL) == 0) {
                if (kv_u64(&kv) >= w->from)
                    w->found = true;
                kv_free(&kv);
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
    json_t *req = json_pack("{s:{s:o, s:o}}", "create_request", "key", jb64s(j->k_head), "start_revision",
                            jstr64(rev));
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    char *url = xasprintf("%s/v3/watch", j->eps[j->cur]);
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
        json_t *req = json_pack("{s:o}", "key", jb64s(j->k_head)), *resp;
        int c = etcd_call(j, "/v3/kv/range", req, &resp, err);
        json_decref(req);
        if (c < 0)
            return -1;
        kv_t hk = {0};
        json_t *kvs = json_object_get(resp, "kvs");
        int64_t rev = resp_revision(resp);
        if (json_array_size(kvs) && kv_parse(json_array_get(kvs, 0), &hk, err) < 0) {
            json_decref(resp);
            return -1;
        }
        json_decref(resp);
        uint64_t head = kv_u64(&hk);
        kv_free(&hk);
        if (head >= from)
            return 1;
        uint64_t now = now_mono_ms();
        if (now >= deadline)
            return 0;
        int w = watch_head(j, rev + 1, from, deadline - now);
        if (w >= 0)
            return w;
        /* the stream broke (member down, watch cancelled): next endpoint */
        j->cur = (j->cur + 1) % j->neps;
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
    json_t *req = json_pack("{s:o}", "key", jb64s(j->k_compacted)), *resp;
    if (etcd_call(j, "/v3/kv/range", req, &resp, err) < 0) {
        json_decref(req);
        return -1;
    }
    json_decref(req);
    kv_t ck = {0};
    json_t *kvs = json_object_get(resp, "kvs");
    if (json_array_size(kvs) && kv_parse(json_array_get(kvs, 0), &ck, err) < 0) {
        json_decref(resp);
        return -1;
    }
    json_decref(resp);
    uint64_t compacted = kv_u64(&ck);
    int64_t cmod = ck.mod_rev;
    kv_free(&ck);
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
    json_t *cmps = json_pack("[o,o,o]", cmp_value(j->k_term, "EQUAL", tv), cmp_lease(j->k_leader, j->lease),
                             cmp_mod(j->k_compacted, cmod));
    json_t *succ = json_pack("[o,o,o]", op_put(j->k_snap, val, (size_t)hl + len, 0), op_put(j->k_compacted, uv, 20, 0),
                             op_delete(from, to));
    json_t *fail = json_pack("[o]", op_range(j->k_snap, NULL, 0));
    free(val);
    free(from);
    free(to);
    bool ok;
    if (txn(j, cmps, succ, fail, &resp, &ok, err) < 0)
        return -1;
    kv_t sk = {0};
    if (!ok && txn_kv(resp, 0, &sk, err) < 0) {
        json_decref(resp);
        return -1;
    }
    json_decref(resp);
    /* a retried request whose first attempt was applied leaves exactly our value */
    bool same = sk.present && sk.vlen == (size_t)hl + len && memcmp(sk.val, hdr, (size_t)hl) == 0 &&
                (len == 0 || memcmp(sk.val + hl, data, len) == 0);
    kv_free(&sk);
    if (ok || same)
        return 0;
    drop_lead(j);
    return err_set(err, ESTALE, "journal(etcd): snapshot refused: term %" PRIu64 " is no longer the leader's "
                                "(or another snapshot raced)", term);
}

static int e_load_snapshot(journal_t *jj, uint64_t *upto, void **data, size_t *len, err_t *err)
{
    jetcd_t *j = (jetcd_t *)jj;
    json_t *req = json_pack("{s:o}", "key", jb64s(j->k_snap)), *resp;
    int c = etcd_call(j, "/v3/kv/range", req, &resp, err);
    json_decref(req);
    if (c < 0)
        return -1;
    json_t *kvs = json_object_get(resp, "kvs");
    if (json_array_size(kvs) == 0) {
        json_decref(resp);
        return 0;
    }
    kv_t kv;
    int rc = kv_parse(json_array_get(kvs, 0), &kv, err);
    json_decref(resp);
    if (rc < 0)
        return -1;
    char *nl = memchr(kv.val, '\n', kv.vlen < 24 ? kv.vlen : 24);
    if (!nl) {
        kv_free(&kv);
        return err_set(err, EPROTO, "journal(etcd): malformed snapshot");
    }
    *upto = strtoull((const char *)kv.val, NULL, 10);
    size_t off = (size_t)((unsigned char *)nl + 1 - kv.val);
    *len = kv.vlen - off;
    *data = xmalloc(*len + 1);
    memcpy(*data, kv.val + off, *len);
    ((char *)*data)[*len] = 0;
    kv_free(&kv);
    return 1;
}

/* ---- open / close ----------------------------------------------------- */

static void e_close(journal_t *jj)
{
    jetcd_t *j = (jetcd_t *)jj;
    if (!j)
        return;
    for (size_t i = 0; i < j->neps; i++)
        free(j->eps[i]);
    free(j->eps);
    free(j->prefix);
    free(j->k_term);
    free(j->k_leader);
    free(j->k_head);
    free(j->k_snap);
    free(j->k_compacted);
    free(j->k_log);
    if (j->c)
        curl_easy_cleanup(j->c);
    if (j->wc)
        curl_easy_cleanup(j->wc);
    curl_slist_free_all(j->hdrs);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
    pthread_mutex_lock(&curl_init_lock);
    curl_global_cleanup(); /* reference-counted by libcurl */
    pthread_mutex_unlock(&curl_init_lock);
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

static CURL *new_easy(jetcd_t *j)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");           /* etcd is never behind a proxy */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, j->hdrs);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)JETCD_CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)JETCD_HTTP_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    return c;
}

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
    pthread_mutex_lock(&curl_init_lock);
    CURLcode g = curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_mutex_unlock(&curl_init_lock);
    if (g != CURLE_OK) {
        err_set(err, EIO, "journal(etcd): curl_global_init: %s", curl_easy_strerror(g));
        return NULL;
    }
    jetcd_t *j = xcalloc(1, sizeof *j);
    j->base.ops = &etcd_ops;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    char *list = xstrdup(endpoints), *save = NULL;
    for (char *t = strtok_r(list, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        size_t tl = strlen(t);
        while (tl > 0 && t[tl - 1] == '/')
            t[--tl] = 0;
        if (!tl)
            continue;
        j->eps = xrealloc(j->eps, (j->neps + 1) * sizeof *j->eps);
        j->eps[j->neps++] = strstr(t, "://") ? xstrdup(t) : xasprintf("http://%s", t);
    }
    free(list);
    j->prefix = xstrndup(prefix, pl);
    j->k_term = xasprintf("%s/term", j->prefix);
    j->k_leader = xasprintf("%s/leader", j->prefix);
    j->k_head = xasprintf("%s/head", j->prefix);
    j->k_snap = xasprintf("%s/snapshot", j->prefix);
    j->k_compacted = xasprintf("%s/compacted", j->prefix);
    j->k_log = xasprintf("%s/log/", j->prefix);
    j->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    j->hdrs = curl_slist_append(j->hdrs, "Expect:"); /* no 100-continue round trip for big records */
    /* gRPC metadata "hasleader": a member without a raft leader answers
     * "no leader" at once instead of holding the request until it times out */
    j->hdrs = curl_slist_append(j->hdrs, "Grpc-Metadata-hasleader: true");
    j->c = new_easy(j);
    j->wc = new_easy(j);
    if (j->neps == 0 || !j->hdrs || !j->c || !j->wc) {
        err_set(err, j->neps ? ENOMEM : EINVAL, "journal(etcd): %s",
                j->neps ? "cannot set up libcurl" : "no usable endpoint");
        e_close(&j->base);
        return NULL;
    }
    return &j->base;
}
