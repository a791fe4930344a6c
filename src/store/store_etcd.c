/* store_etcd.c - the store's distributed backend: function metadata and
 * code chunks in etcd (3.4, over common/etcd.c), shared by every host.
 *
 * Keys under PREFIX (docs/store.md), each value one JSON document:
 *   latest/<name>             $LATEST configuration (ListFunctions ranges here)
 *   counter/<name>            highest version number ever allocated
 *   reserved/<name>           reserved concurrency (absent: not set)
 *   tags/<name>               tags object (absent: none)
 *   codesize/<name>/<q>       CodeSize of $LATEST (q "$LATEST") or a version
 *   version/<name>/<10 digits> published version's configuration
 *   alias/<name>/<alias>      AliasConfiguration
 *   eic/<name>/<qualifier>    FunctionEventInvokeConfig
 *   chunk/<sha256 hex>        512 KiB (the last may be shorter) of a code zip
 *   code/<zip sha256 hex>     manifest {"size","chunk_size","chunks":[hex..]}
 * Names and qualifiers are [A-Za-z0-9$_-], so '/' separates unambiguously
 * and key order is the byte order SQLite's listings use; version numbers
 * are zero-padded so they sort numerically.
 *
 * Transactions are optimistic: between store_begin and store_commit every
 * read records the key's mod_revision (0: absent) and its value, writes
 * are buffered (and seen by later reads of the same transaction), and
 * commit is one etcd txn whose compares are the recorded revisions
 * (create_revision == 0 for keys read as absent) and whose success ops are
 * the buffered writes, collapsed to one op per key.  A failed compare
 * means another writer got there first: commit fails with STORE_ECONFLICT
 * and nothing is written.  A mutating call outside a transaction runs in a
 * transaction of its own.  The control plane reads a document before
 * store_begin and writes it inside (read, validate, modify, write): reads
 * outside transactions are remembered for SEEN_MS, and a transaction that
 * reads or writes such a key compares against the revision seen then, so
 * a change made meanwhile by another frontend is a conflict, not a lost
 * update.  Listings read the committed state at one
 * revision (paged) with the transaction's own writes laid over it; they
 * are not part of the compares (a concurrent insert into a listed range
 * is not a conflict).
 *
 * Chunks are immutable and content-addressed: written only if absent (a
 * chunk shared by two zips is stored once), always before the manifest,
 * so a manifest's chunks are all present unless someone deleted or
 * altered them; readers verify every chunk's and the zip's SHA-256.
 * Each put is one request well under etcd's 1.5 MiB request limit. */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store_backend.h"

#define CHUNK_SIZE   (512u * 1024u)
#define PAGE         100                   /* documents per range page */
#define MAX_CODE     (1024ull * 1024 * 1024) /* a manifest claiming more is refused */
#define SEEN_MAX     64                    /* reads outside transactions remembered */
#define SEEN_MS      10000                 /* ... for this long (ms) */
#define RESERVED_MS  1000                  /* another host's concurrency change shows this late */

/* One buffered write: a put (val), a delete of key, or of [key, end). */
typedef struct wop {
    char *key, *end;
    char *val; /* NULL: delete */
} wop_t;

/* One read of the transaction: what it saw, to compare at commit. */
typedef struct rd {
    char *key;
    bool present;
    int64_t mod;
    char *val;
} rd_t;

/* A key read outside a transaction, remembered for a while: the control
 * plane reads a document, decides, then writes it in a transaction. */
typedef struct seen {
    char *key;
    bool present;
    int64_t mod;
    uint64_t at_ms;
} seen_t;

typedef struct se {
    store_t base;
    etcd_t *e;
    char *prefix;
    seen_t seen[SEEN_MAX]; /* ring of recent reads outside transactions */
    size_t seen_next;
    int reserved_sum;      /* store_total_reserved, cached (every invoke asks) */
    uint64_t reserved_at_ms; /* when it was read; 0: not cached */
    json_t *prefetched;    /* key -> value or null (absent), during a resolve */
    json_t *prefetched_mod; /* key -> mod_revision */
    bool in_txn;
    char *stale;           /* a key this transaction found changed since it was seen */
    rd_t *reads;
    size_t nreads;
    wop_t *writes;
    size_t nwrites;
} se_t;

#define SE(s) ((se_t *)(s))

static char *key_of(se_t *se, const char *kind, const char *name, const char *sub)
{
    return sub ? xasprintf("%s/%s/%s/%s", se->prefix, kind, name, sub)
               : xasprintf("%s/%s/%s", se->prefix, kind, name);
}

static void vnum(long v, char out[24]) { snprintf(out, 24, "%0*ld", STORE_VERSION_DIGITS, v); }

static char *dumps(json_t *v) { return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY); }

static bool in_range(const char *key, const wop_t *w)
{
    return w->end ? strcmp(key, w->key) >= 0 && strcmp(key, w->end) < 0 : !strcmp(key, w->key);
}

/* ---- transaction state ---- */

static void txn_clear(se_t *se)
{
    for (size_t i = 0; i < se->nreads; i++) {
        free(se->reads[i].key);
        free(se->reads[i].val);
    }
    for (size_t i = 0; i < se->nwrites; i++) {
        free(se->writes[i].key);
        free(se->writes[i].end);
        free(se->writes[i].val);
    }
    free(se->reads);
    free(se->writes);
    se->reads = NULL;
    se->writes = NULL;
    se->nreads = se->nwrites = 0;
    se->in_txn = false;
    free(se->stale);
    se->stale = NULL;
}

static int se_begin(store_t *s, err_t *err)
{
    se_t *se = SE(s);
    if (se->in_txn)
        return err_set(err, EIO, "store(etcd): a transaction is already open");
    se->in_txn = true;
    return 0;
}

static void se_rollback(store_t *s) { txn_clear(SE(s)); }

/* The recent outside read of key, or NULL. */
static seen_t *seen_get(se_t *se, const char *key)
{
    uint64_t now = now_mono_ms();
    for (size_t i = 0; i < SEEN_MAX; i++)
        if (se->seen[i].key && !strcmp(se->seen[i].key, key) && now - se->seen[i].at_ms < SEEN_MS)
            return &se->seen[i];
    return NULL;
}

static void seen_note(se_t *se, const char *key, bool present, int64_t mod)
{
    seen_t *e = NULL;
    for (size_t i = 0; i < SEEN_MAX && !e; i++)
        if (se->seen[i].key && !strcmp(se->seen[i].key, key))
            e = &se->seen[i];
    if (!e) {
        e = &se->seen[se->seen_next];
        se->seen_next = (se->seen_next + 1) % SEEN_MAX;
        free(e->key);
        e->key = xstrdup(key);
    }
    e->present = present;
    e->mod = mod;
    e->at_ms = now_mono_ms();
}

static void seen_clear(se_t *se)
{
    for (size_t i = 0; i < SEEN_MAX; i++) {
        free(se->seen[i].key);
        se->seen[i].key = NULL;
    }
}

static bool was_read(se_t *se, const char *key)
{
    for (size_t i = 0; i < se->nreads; i++)
        if (!strcmp(se->reads[i].key, key))
            return true;
    return false;
}

static void add_read(se_t *se, const char *key, bool present, int64_t mod, const char *val)
{
    se->reads = xrealloc(se->reads, (se->nreads + 1) * sizeof *se->reads);
    se->reads[se->nreads++] = (rd_t){xstrdup(key), present, mod, val ? xstrdup(val) : NULL};
}

static void add_write(se_t *se, const char *key, const char *end, const char *val)
{
    /* a write of a key read before the transaction (not inside): it must
     * still be as it was then */
    seen_t *sn = end ? NULL : seen_get(se, key);
    if (sn && !was_read(se, key))
        add_read(se, key, sn->present, sn->mod, NULL);
    se->writes = xrealloc(se->writes, (se->nwrites + 1) * sizeof *se->writes);
    se->writes[se->nwrites++] = (wop_t){xstrdup(key), end ? xstrdup(end) : NULL,
                                        val ? xstrdup(val) : NULL};
}

/* Reads key as the transaction sees it (its own writes first): 1 with a
 * malloc'd *val, 0 absent, -1/err.  Outside a transaction: etcd now. */
static int get(se_t *se, const char *key, char **val, err_t *err)
{
    *val = NULL;
    if (se->in_txn) {
        for (size_t i = se->nwrites; i-- > 0;) {
            if (!in_range(key, &se->writes[i]))
                continue;
            if (!se->writes[i].val)
                return 0;
            *val = xstrdup(se->writes[i].val);
            return 1;
        }
        for (size_t i = 0; i < se->nreads; i++) {
            if (strcmp(se->reads[i].key, key))
                continue;
            if (!se->reads[i].present)
                return 0;
            *val = xstrdup(se->reads[i].val);
            return 1;
        }
    }
    json_t *pv = se->in_txn || !se->prefetched ? NULL : json_object_get(se->prefetched, key);
    if (pv) { /* read with the others of this resolve */
        seen_note(se, key, !json_is_null(pv),
                  json_integer_value(json_object_get(se->prefetched_mod, key)));
        if (json_is_null(pv))
            return 0;
        *val = xstrdup(json_string_value(pv));
        return 1;
    }
    etcd_kv_t kv;
    if (etcd_get(se->e, key, &kv, NULL, err) < 0)
        return -1;
    if (se->in_txn) {
        seen_t *sn = seen_get(se, key);
        if (sn && (sn->present != kv.present || sn->mod != kv.mod_rev) && !se->stale)
            se->stale = xstrdup(key);
        add_read(se, key, kv.present, kv.mod_rev, kv.present ? (char *)kv.val : NULL);
    } else {
        seen_note(se, key, kv.present, kv.mod_rev);
    }
    int rc = kv.present ? 1 : 0;
    if (kv.present)
        *val = xstrdup((char *)kv.val);
    etcd_kv_free(&kv);
    return rc;
}

/* A document (NULL when absent, unreadable, or etcd failed: logged). */
static json_t *get_doc(se_t *se, const char *key)
{
    char *val;
    err_t err = {0};
    int rc = get(se, key, &val, &err);
    if (rc < 0)
        log_warn("store", "%s", err.msg);
    if (rc <= 0)
        return NULL;
    json_t *doc = json_loads(val, JSON_DECODE_ANY, NULL);
    free(val);
    return doc;
}

/* The document at kind/name[/sub], or NULL (as get_doc). */
static json_t *doc_at(se_t *se, const char *kind, const char *name, const char *sub)
{
    char *k = key_of(se, kind, name, sub);
    json_t *doc = get_doc(se, k);
    free(k);
    return doc;
}

/* 1 present, 0 absent, -1/err. */
static int exists(se_t *se, const char *key, err_t *err)
{
    char *val;
    int rc = get(se, key, &val, err);
    free(val);
    return rc;
}

static int commit_writes(se_t *se, err_t *err)
{
    if (se->nwrites == 0)
        return 0; /* read-only: nothing to validate against */
    if (se->stale)
        return err_set(err, STORE_ECONFLICT,
                       "The operation cannot be performed at this time: the function was changed "
                       "by another request at the same time; try again");
    json_t *cmps = json_array(), *succ = json_array();
    for (size_t i = 0; i < se->nreads; i++)
        json_array_append_new(cmps, se->reads[i].present
                                        ? etcd_cmp_mod(se->reads[i].key, se->reads[i].mod)
                                        : etcd_cmp_create0(se->reads[i].key));
    /* one op per key: a later write to a key (or a range holding it)
     * replaces an earlier one; etcd refuses overlapping ops in a txn */
    for (size_t i = 0; i < se->nwrites; i++) {
        const wop_t *w = &se->writes[i];
        bool superseded = false;
        for (size_t j = i + 1; j < se->nwrites && !superseded; j++)
            superseded = !w->end && in_range(w->key, &se->writes[j]);
        if (superseded)
            continue;
        for (size_t j = 0; j < i; j++) {
            if (se->writes[j].end && w->val && in_range(w->key, &se->writes[j])) {
                json_decref(cmps);
                json_decref(succ);
                return err_set(err, EIO, "store(etcd): %s written after its range was deleted "
                                         "in one transaction", w->key);
            }
        }
        json_array_append_new(succ, w->val ? etcd_op_put(w->key, w->val, strlen(w->val), 0)
                                           : etcd_op_delete(w->key, w->end));
    }
    if (json_array_size(cmps) > ETCD_MAX_TXN_OPS || json_array_size(succ) > ETCD_MAX_TXN_OPS) {
        json_decref(cmps);
        json_decref(succ);
        return err_set(err, EIO, "store(etcd): transaction too large for etcd");
    }
    json_t *resp;
    bool ok;
    if (etcd_txn(se->e, cmps, succ, NULL, &resp, &ok, err) < 0)
        return -1;
    int64_t rev = etcd_resp_revision(resp);
    json_decref(resp);
    /* what this host wrote is what it has seen: a later read-modify-write
     * of the same keys compares against these revisions */
    se->reserved_at_ms = 0; /* (any commit: cheap to read again) */
    for (size_t i = 0; ok && i < se->nwrites; i++) {
        const wop_t *w = &se->writes[i];
        for (size_t j = 0; j < SEEN_MAX; j++) {
            seen_t *sn = &se->seen[j];
            if (sn->key && in_range(sn->key, w)) {
                sn->present = w->val != NULL;
                sn->mod = w->val ? rev : 0;
                sn->at_ms = now_mono_ms();
            }
        }
    }
    if (!ok)
        return err_set(err, STORE_ECONFLICT,
                       "The operation cannot be performed at this time: the function was changed "
                       "by another request at the same time; try again");
    return 0;
}

static int se_commit(store_t *s, err_t *err)
{
    se_t *se = SE(s);
    if (!se->in_txn)
        return err_set(err, EIO, "store(etcd): no transaction to commit");
    int rc = commit_writes(se, err);
    txn_clear(se);
    return rc;
}

/* A mutating call outside a transaction is one of its own. */
static bool auto_begin(se_t *se)
{
    if (se->in_txn)
        return false;
    se->in_txn = true;
    return true;
}

static long auto_end(se_t *se, bool own, long rc, err_t *err)
{
    if (!own)
        return rc;
    if (rc < 0) {
        txn_clear(se);
        return rc;
    }
    return se_commit(&se->base, err) < 0 ? -1 : rc;
}

static void put_doc(se_t *se, const char *key, json_t *doc)
{
    char *txt = dumps(doc);
    add_write(se, key, NULL, txt);
    free(txt);
}

static void put_int(se_t *se, const char *key, long long v)
{
    char txt[32];
    snprintf(txt, sizeof txt, "%lld", v);
    add_write(se, key, NULL, txt);
}

/* ---- listings ---- */

struct collect {
    json_t *obj;
};

static int collect_kv(const etcd_kv_t *kv, void *arg, err_t *err)
{
    struct collect *c = arg;
    json_t *v = json_loadb((const char *)kv->val, kv->vlen, JSON_DECODE_ANY, NULL);
    if (v)
        json_object_set_new(c->obj, kv->key, v);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Every document under key prefix `under` as a new object key -> value
 * (with the open transaction's writes laid over the committed state);
 * NULL/logged when etcd failed. */
static json_t *list_obj(se_t *se, const char *under)
{
    char *end = etcd_prefix_end(under);
    struct collect c = {json_object()};
    err_t err = {0};
    int rc = etcd_range_pages(se->e, under, end, PAGE, false, 0, NULL, collect_kv, &c, NULL, &err);
    free(end);
    if (rc < 0) {
        log_warn("store", "list %s: %s", under, err.msg);
        json_decref(c.obj);
        return NULL;
    }
    for (size_t i = 0; se->in_txn && i < se->nwrites; i++) {
        const wop_t *w = &se->writes[i];
        if (w->val) {
            json_t *v = strncmp(w->key, under, strlen(under)) ? NULL
                                                              : json_loads(w->val, JSON_DECODE_ANY, NULL);
            if (v)
                json_object_set_new(c.obj, w->key, v);
            continue;
        }
        const char *k;
        json_t *v;
        void *tmp;
        json_object_foreach_safe(c.obj, tmp, k, v)
        {
            if (in_range(k, w))
                json_object_del(c.obj, k);
        }
    }
    return c.obj;
}

/* The values of list_obj in key order, as a new array (NULL: failed). */
static json_t *list_docs(se_t *se, const char *under)
{
    json_t *obj = list_obj(se, under);
    if (!obj)
        return NULL;
    size_t n = json_object_size(obj), i = 0;
    const char **keys = xcalloc(n ? n : 1, sizeof *keys);
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) keys[i++] = k;
    qsort(keys, n, sizeof *keys, cmp_str);
    json_t *arr = json_array();
    for (i = 0; i < n; i++)
        json_array_append(arr, json_object_get(obj, keys[i]));
    free(keys);
    json_decref(obj);
    return arr;
}

static json_t *list_of(se_t *se, const char *kind, const char *name)
{
    char *under = name ? xasprintf("%s/%s/%s/", se->prefix, kind, name)
                       : xasprintf("%s/%s/", se->prefix, kind);
    json_t *arr = list_docs(se, under);
    free(under);
    return arr ? arr : json_array();
}

static long long sum_of(se_t *se, const char *kind)
{
    json_t *arr = list_of(se, kind, NULL);
    long long sum = 0;
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) sum += json_integer_value(v);
    json_decref(arr);
    return sum;
}

/* ---- functions ---- */

static json_t *se_fn_get(store_t *s, const char *name) { return doc_at(SE(s), "latest", name, NULL); }

static void put_size(se_t *se, const char *name, const char *q, json_t *cfg)
{
    char *k = key_of(se, "codesize", name, q);
    put_int(se, k, json_integer_value(json_object_get(cfg, "CodeSize")));
    free(k);
}

/* Writes $LATEST: must_exist 1 (update: ENOENT if absent) or 0 (insert:
 * EEXIST if present). */
static long put_latest(se_t *se, const char *name, json_t *latest, int must_exist, err_t *err)
{
    char *k = key_of(se, "latest", name, NULL);
    int ex = exists(se, k, err);
    long rc = 0;
    if (ex < 0)
        rc = -1;
    else if (ex && !must_exist)
        rc = err_set(err, EEXIST, "already exists");
    else if (!ex && must_exist)
        rc = err_set(err, ENOENT, "function %s not found", name);
    if (rc == 0) {
        put_doc(se, k, latest);
        put_size(se, name, "$LATEST", latest);
    }
    free(k);
    return rc;
}

static int se_fn_insert(store_t *s, const char *name, json_t *latest, err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, put_latest(SE(s), name, latest, 0, err), err);
}

static int se_fn_update(store_t *s, const char *name, json_t *latest, err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, put_latest(SE(s), name, latest, 1, err), err);
}

static long fn_delete(se_t *se, const char *name, err_t *err)
{
    char *k = key_of(se, "latest", name, NULL);
    int ex = exists(se, k, err);
    free(k);
    if (ex <= 0)
        return ex < 0 ? -1 : err_set(err, ENOENT, "function %s not found", name);
    static const char *const single[] = {"latest", "counter", "reserved", "tags"};
    static const char *const ranged[] = {"version", "alias", "eic", "codesize"};
    for (size_t i = 0; i < ARRAY_LEN(single); i++) {
        k = key_of(se, single[i], name, NULL);
        add_write(se, k, NULL, NULL);
        free(k);
    }
    for (size_t i = 0; i < ARRAY_LEN(ranged); i++) {
        char *from = key_of(se, ranged[i], name, ""); /* ".../name/" */
        char *to = etcd_prefix_end(from);
        add_write(se, from, to, NULL);
        free(from);
        free(to);
    }
    return 0;
}

static int se_fn_delete(store_t *s, const char *name, err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, fn_delete(SE(s), name, err), err);
}

static json_t *se_fn_list(store_t *s) { return list_of(SE(s), "latest", NULL); }

static int se_fn_count(store_t *s)
{
    json_t *arr = list_of(SE(s), "latest", NULL);
    int n = (int)json_array_size(arr);
    json_decref(arr);
    return n;
}

static int se_get_reserved(store_t *s, const char *name)
{
    json_t *v = doc_at(SE(s), "reserved", name, NULL);
    int n = json_is_integer(v) ? (int)json_integer_value(v) : -1;
    json_decref(v);
    return n;
}

static long set_reserved(se_t *se, const char *name, int n, err_t *err)
{
    char *k = key_of(se, "latest", name, NULL);
    int ex = exists(se, k, err);
    free(k);
    if (ex <= 0)
        return ex < 0 ? -1 : err_set(err, ENOENT, "function %s not found", name);
    k = key_of(se, "reserved", name, NULL);
    if (n >= 0)
        put_int(se, k, n);
    else
        add_write(se, k, NULL, NULL);
    free(k);
    return 0;
}

static int se_set_reserved(store_t *s, const char *name, int n, err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, set_reserved(SE(s), name, n, err), err);
}

/* Asked on every invoke: cached for RESERVED_MS (this host's own changes
 * drop the cache at commit). */
static int se_total_reserved(store_t *s)
{
    se_t *se = SE(s);
    if (se->in_txn)
        return (int)sum_of(se, "reserved");
    uint64_t now = now_mono_ms();
    if (!se->reserved_at_ms || now - se->reserved_at_ms >= RESERVED_MS) {
        se->reserved_sum = (int)sum_of(se, "reserved");
        se->reserved_at_ms = now;
    }
    return se->reserved_sum;
}
static uint64_t se_total_code_size(store_t *s) { return (uint64_t)sum_of(SE(s), "codesize"); }

/* ---- versions ---- */

static long next_version(se_t *se, const char *name, err_t *err)
{
    char *k = key_of(se, "latest", name, NULL);
    int ex = exists(se, k, err);
    free(k);
    if (ex <= 0)
        return ex < 0 ? -1 : err_set(err, ENOENT, "function %s not found", name);
    k = key_of(se, "counter", name, NULL);
    char *val;
    int rc = get(se, k, &val, err);
    long n = rc > 0 ? strtol(val, NULL, 10) + 1 : 1;
    free(val);
    if (rc >= 0)
        put_int(se, k, n);
    free(k);
    return rc < 0 ? -1 : n;
}

static long se_next_version(store_t *s, const char *name, err_t *err)
{
    bool own = auto_begin(SE(s));
    return auto_end(SE(s), own, next_version(SE(s), name, err), err);
}

static long se_last_version(store_t *s, const char *name)
{
    char *under = key_of(SE(s), "version", name, "");
    json_t *obj = list_obj(SE(s), under);
    long v = 0;
    const char *k;
    json_t *doc;
    json_object_foreach(obj, k, doc)
    {
        long n = strtol(k + strlen(under), NULL, 10);
        if (n > v)
            v = n;
    }
    json_decref(obj);
    free(under);
    return v;
}

static char *version_key(se_t *se, const char *name, long version)
{
    char num[24];
    vnum(version, num);
    return key_of(se, "version", name, num);
}

static json_t *se_version_get(store_t *s, const char *name, long version)
{
    char num[24];
    vnum(version, num);
    return doc_at(SE(s), "version", name, num);
}

/* Puts a version: create 1 (insert: EEXIST if present) or 0 (update:
 * ENOENT if absent). */
static long put_version(se_t *se, const char *name, long version, json_t *cfg, int create,
                        err_t *err)
{
    char *k = version_key(se, name, version);
    int ex = exists(se, k, err);
    long rc = 0;
    if (ex < 0)
        rc = -1;
    else if (ex && create)
        rc = err_set(err, EEXIST, "already exists");
    else if (!ex && !create)
        rc = err_set(err, ENOENT, "version %ld of %s not found", version, name);
    if (rc == 0) {
        put_doc(se, k, cfg);
        if (create) {
            char num[24];
            vnum(version, num);
            put_size(se, name, num, cfg);
        }
    }
    free(k);
    return rc;
}

static int se_version_insert(store_t *s, const char *name, long version, json_t *cfg, err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, put_version(SE(s), name, version, cfg, 1, err), err);
}

static int se_version_update(store_t *s, const char *name, long version, json_t *cfg, err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, put_version(SE(s), name, version, cfg, 0, err), err);
}

/* Deletes kind/name/sub (ENOENT with `what` if absent) and the event-invoke
 * config of qualifier eic_qual (if not NULL) and size key size_sub (if
 * not NULL). */
static long delete_doc(se_t *se, const char *kind, const char *name, const char *sub,
                       const char *eic_qual, const char *size_sub, const char *what, err_t *err)
{
    char *k = key_of(se, kind, name, sub);
    int ex = exists(se, k, err);
    if (ex <= 0) {
        free(k);
        return ex < 0 ? -1 : err_set(err, ENOENT, "%s", what);
    }
    add_write(se, k, NULL, NULL);
    free(k);
    if (eic_qual) {
        k = key_of(se, "eic", name, eic_qual);
        add_write(se, k, NULL, NULL);
        free(k);
    }
    if (size_sub) {
        k = key_of(se, "codesize", name, size_sub);
        add_write(se, k, NULL, NULL);
        free(k);
    }
    return 0;
}

static int se_version_delete(store_t *s, const char *name, long version, err_t *err)
{
    char num[24], qual[24], what[160];
    vnum(version, num);
    snprintf(qual, sizeof qual, "%ld", version);
    snprintf(what, sizeof what, "version %ld of %s not found", version, name);
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, delete_doc(SE(s), "version", name, num, qual, num, what, err),
                         err);
}

static json_t *se_version_list(store_t *s, const char *name)
{
    return list_of(SE(s), "version", name);
}

/* ---- aliases ---- */

static json_t *se_alias_get(store_t *s, const char *name, const char *alias)
{
    return doc_at(SE(s), "alias", name, alias);
}

static long alias_put(se_t *se, const char *name, const char *alias, json_t *cfg, int replace,
                      err_t *err)
{
    char *k = key_of(se, "alias", name, alias);
    int ex = replace ? 0 : exists(se, k, err);
    if (ex == 0)
        put_doc(se, k, cfg);
    free(k);
    return ex < 0 ? -1 : ex ? err_set(err, EEXIST, "already exists") : 0;
}

static int se_alias_put(store_t *s, const char *name, const char *alias, json_t *cfg, int replace,
                        err_t *err)
{
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, alias_put(SE(s), name, alias, cfg, replace, err), err);
}

static int se_alias_delete(store_t *s, const char *name, const char *alias, err_t *err)
{
    char what[256];
    snprintf(what, sizeof what, "alias %s of %s not found", alias, name);
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, delete_doc(SE(s), "alias", name, alias, alias, NULL, what, err),
                         err);
}

static json_t *se_alias_list(store_t *s, const char *name) { return list_of(SE(s), "alias", name); }

/* ---- event-invoke configs ---- */

static json_t *se_eic_get(store_t *s, const char *name, const char *qual)
{
    return doc_at(SE(s), "eic", name, qual);
}

static int se_eic_put(store_t *s, const char *name, const char *qual, json_t *cfg, err_t *err)
{
    bool own = auto_begin(SE(s));
    char *k = key_of(SE(s), "eic", name, qual);
    put_doc(SE(s), k, cfg);
    free(k);
    return (int)auto_end(SE(s), own, 0, err);
}

static int se_eic_delete(store_t *s, const char *name, const char *qual, err_t *err)
{
    char what[256];
    snprintf(what, sizeof what, "no event invoke config for %s:%s", name, qual);
    bool own = auto_begin(SE(s));
    return (int)auto_end(SE(s), own, delete_doc(SE(s), "eic", name, qual, NULL, NULL, what, err),
                         err);
}

static json_t *se_eic_list(store_t *s, const char *name) { return list_of(SE(s), "eic", name); }

/* ---- tags ---- */

static json_t *se_tags_get(store_t *s, const char *name)
{
    json_t *doc = doc_at(SE(s), "tags", name, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        doc = json_object();
    }
    return doc;
}

static int se_tags_set(store_t *s, const char *name, json_t *obj, err_t *err)
{
    json_t *tags = json_object(); /* string values only, as SQLite keeps them */
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        if (json_is_string(v))
            json_object_set(tags, key, v);
    }
    bool own = auto_begin(SE(s));
    char *k = key_of(SE(s), "tags", name, NULL);
    if (json_object_size(tags))
        put_doc(SE(s), k, tags);
    else
        add_write(SE(s), k, NULL, NULL);
    free(k);
    json_decref(tags);
    return (int)auto_end(SE(s), own, 0, err);
}

/* ---- code chunks ---- */

/* Puts key = data unless the key exists (content-addressed: same name,
 * same bytes).  Checks first, so a chunk already stored is not sent. */
static int put_if_absent(se_t *se, const char *key, const void *data, size_t len, err_t *err)
{
    json_t *req = json_pack("{s:o, s:b}", "key", etcd_b64s(key), "count_only", 1), *resp;
    if (etcd_call(se->e, "/v3/kv/range", req, &resp, err) < 0) {
        json_decref(req);
        return -1;
    }
    json_decref(req);
    int64_t count = etcd_i64(json_object_get(resp, "count"));
    json_decref(resp);
    if (count > 0)
        return 0;
    json_t *cmps = json_pack("[o]", etcd_cmp_create0(key));
    json_t *succ = json_pack("[o]", etcd_op_put(key, data, len, 0));
    bool ok;
    if (etcd_txn(se->e, cmps, succ, NULL, &resp, &ok, err) < 0)
        return -1;
    json_decref(resp);
    return 0; /* !ok: another host stored it meanwhile */
}

static int se_put_code(store_t *s, const void *zip, size_t len, const char *hex, err_t *err)
{
    se_t *se = SE(s);
    char *mkey = xasprintf("%s/code/%s", se->prefix, hex);
    json_t *chunks = json_array();
    int rc = 0;
    for (size_t off = 0; off < len || (len == 0 && off == 0); off += CHUNK_SIZE) {
        size_t n = len - off < CHUNK_SIZE ? len - off : CHUNK_SIZE;
        char ch[65];
        sha256_hex((const char *)zip + off, n, ch);
        char *ckey = xasprintf("%s/chunk/%s", se->prefix, ch);
        rc = put_if_absent(se, ckey, (const char *)zip + off, n, err);
        free(ckey);
        if (rc < 0)
            break;
        json_array_append_new(chunks, json_string(ch));
        if (len == 0)
            break;
    }
    if (rc == 0) {
        json_t *m = json_pack("{s:I, s:I, s:O}", "size", (json_int_t)len, "chunk_size",
                              (json_int_t)CHUNK_SIZE, "chunks", chunks);
        char *txt = dumps(m);
        json_decref(m);
        rc = put_if_absent(se, mkey, txt, strlen(txt), err);
        free(txt);
    }
    json_decref(chunks);
    free(mkey);
    if (rc < 0)
        return err_wrap(err, "store(etcd): keeping the code in etcd");
    return 0;
}

static int se_fetch_code(store_t *s, const char *hex, void **zip_out, size_t *len_out, err_t *err)
{
    se_t *se = SE(s);
    *zip_out = NULL;
    *len_out = 0;
    char *mkey = xasprintf("%s/code/%s", se->prefix, hex);
    etcd_kv_t kv;
    int rc = etcd_get(se->e, mkey, &kv, NULL, err);
    free(mkey);
    if (rc < 0)
        return -1;
    if (!kv.present)
        return err_set(err, ENOENT, "code %s is not in the store", hex);
    json_t *m = json_loadb((const char *)kv.val, kv.vlen, 0, NULL);
    etcd_kv_free(&kv);
    json_t *chunks = json_object_get(m, "chunks");
    json_int_t size = json_integer_value(json_object_get(m, "size"));
    json_int_t csize = json_integer_value(json_object_get(m, "chunk_size"));
    size_t want = size > 0 && csize > 0 ? (size_t)((size + csize - 1) / csize) : 1;
    if (!json_is_array(chunks) || size < 0 || (uint64_t)size > MAX_CODE || csize != CHUNK_SIZE ||
        json_array_size(chunks) != want) {
        json_decref(m);
        return err_set(err, EIO, "the store's manifest of code %s is malformed", hex);
    }
    unsigned char *zip = xmalloc((size_t)size + 1);
    size_t off = 0;
    rc = 0;
    for (size_t i = 0; i < want && rc == 0; i++) {
        const char *ch = json_string_value(json_array_get(chunks, i));
        size_t n = (size_t)size - off < CHUNK_SIZE ? (size_t)size - off : CHUNK_SIZE;
        if (!store_hex_valid(ch)) {
            rc = err_set(err, EIO, "the store's manifest of code %s is malformed", hex);
            break;
        }
        char *ckey = xasprintf("%s/chunk/%s", se->prefix, ch);
        rc = etcd_get(se->e, ckey, &kv, NULL, err);
        free(ckey);
        if (rc < 0)
            break;
        char got[65] = "";
        if (kv.present)
            sha256_hex(kv.val, kv.vlen, got);
        if (!kv.present)
            rc = err_set(err, EIO, "chunk %s of code %s is missing from the store", ch, hex);
        else if (kv.vlen != n || strcmp(got, ch))
            rc = err_set(err, EIO, "chunk %s of code %s is corrupt in the store (%s)", ch, hex,
                         kv.vlen != n ? "wrong size" : "its SHA-256 does not match its name");
        else
            memcpy(zip + off, kv.val, n);
        off += n;
        etcd_kv_free(&kv);
    }
    json_decref(m);
    char whole[65];
    if (rc == 0) {
        sha256_hex(zip, (size_t)size, whole);
        if (strcmp(whole, hex))
            rc = err_set(err, EIO, "code %s from the store does not match its SHA-256", hex);
    }
    if (rc < 0) {
        free(zip);
        return -1;
    }
    *zip_out = zip;
    *len_out = (size_t)size;
    return 0;
}

/* ---- resolve: its reads in one request ---- */

static void se_resolve_done(store_t *s)
{
    se_t *se = SE(s);
    json_decref(se->prefetched);
    json_decref(se->prefetched_mod);
    se->prefetched = se->prefetched_mod = NULL;
}

static void se_resolve_prefetch(store_t *s, const char *name, const char *qual)
{
    se_t *se = SE(s);
    se_resolve_done(s);
    if (se->in_txn)
        return;
    char *keys[5];
    size_t n = 0;
    keys[n++] = key_of(se, "latest", name, NULL);
    keys[n++] = key_of(se, "reserved", name, NULL);
    keys[n++] = key_of(se, "eic", name, qual ? qual : "$LATEST");
    if (qual && strcmp(qual, "$LATEST")) {
        char *end;
        long v = strtol(qual, &end, 10);
        if (*qual && !*end) {
            char num[24];
            vnum(v, num);
            keys[n++] = key_of(se, "version", name, num);
        } else {
            keys[n++] = key_of(se, "alias", name, qual);
        }
    }
    json_t *succ = json_array(), *resp;
    for (size_t i = 0; i < n; i++)
        json_array_append_new(succ, etcd_op_range(keys[i], NULL, 0));
    bool ok;
    err_t err = {0};
    if (etcd_txn(se->e, NULL, succ, NULL, &resp, &ok, &err) == 0) {
        json_t *vals = json_object(), *mods = json_object();
        for (size_t i = 0; i < n; i++) {
            etcd_kv_t kv;
            if (etcd_txn_kv(resp, i, &kv, &err) < 0)
                break;
            json_object_set_new(vals, keys[i], kv.present ? json_stringn((char *)kv.val, kv.vlen)
                                                          : json_null());
            json_object_set_new(mods, keys[i], json_integer(kv.mod_rev));
            etcd_kv_free(&kv);
        }
        se->prefetched = vals;
        se->prefetched_mod = mods;
        json_decref(resp);
    } /* else: the reads go one by one (and say why) */
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
}

/* ---- open / close ---- */

static void se_close(store_t *s)
{
    se_t *se = SE(s);
    txn_clear(se);
    seen_clear(se);
    se_resolve_done(s);
    etcd_close(se->e);
    free(se->prefix);
    store_base_free(s);
    free(se);
}

static const store_ops_t etcd_ops = {
    .close = se_close,
    .begin = se_begin,
    .commit = se_commit,
    .rollback = se_rollback,
    .fn_get = se_fn_get,
    .fn_insert = se_fn_insert,
    .fn_update = se_fn_update,
    .fn_delete = se_fn_delete,
    .fn_list = se_fn_list,
    .fn_count = se_fn_count,
    .get_reserved = se_get_reserved,
    .set_reserved = se_set_reserved,
    .total_reserved = se_total_reserved,
    .total_code_size = se_total_code_size,
    .next_version = se_next_version,
    .last_version = se_last_version,
    .version_get = se_version_get,
    .version_insert = se_version_insert,
    .version_update = se_version_update,
    .version_delete = se_version_delete,
    .version_list = se_version_list,
    .alias_get = se_alias_get,
    .alias_put = se_alias_put,
    .alias_delete = se_alias_delete,
    .alias_list = se_alias_list,
    .eic_get = se_eic_get,
    .eic_put = se_eic_put,
    .eic_delete = se_eic_delete,
    .eic_list = se_eic_list,
    .tags_get = se_tags_get,
    .tags_set = se_tags_set,
    .put_code = se_put_code,
    .fetch_code = se_fetch_code,
    .resolve_prefetch = se_resolve_prefetch,
    .resolve_done = se_resolve_done,
};

store_t *store_etcd_open(const char *endpoints, const char *prefix, const char *data_dir,
                         const char *region, const char *account, err_t *err)
{
    size_t pl = strlen(prefix);
    while (pl > 1 && prefix[pl - 1] == '/')
        pl--;
    if (pl == 0 || prefix[0] != '/' || pl > 512) {
        err_set(err, EINVAL, "store(etcd): the prefix must start with '/' and be at most 512 bytes");
        return NULL;
    }
    etcd_t *e = etcd_open(endpoints, "store", err);
    if (!e)
        return NULL;
    se_t *se = xcalloc(1, sizeof *se);
    store_base_init(&se->base, &etcd_ops, data_dir, region, account);
    se->e = e;
    se->prefix = xstrndup(prefix, pl == 1 ? 0 : pl); /* "/" -> keys "/latest/..." */
    return &se->base;
}
