/* etcd.h - a small etcd v3 (3.4) client over etcd's JSON gRPC gateway
 * (POST /v3/kv/range|txn, /v3/lease/...), with libcurl and jansson.
 *
 * Shared by the journal (journal_etcd.c) and the store (store_etcd.c).
 * Keys and values travel base64-encoded; int64 fields come back as JSON
 * strings.  A handle tries its endpoints in order from the last one that
 * answered: connection failures and "no leader"/timeouts move on to the
 * next one, so the loss of one member of three is survived.  A retried
 * request may already have been applied: callers that care read back (see
 * journal_etcd.c).
 *
 * Threads: one call at a time per handle (callers serialize); handles are
 * independent.  Request builders return new JSON references; etcd_txn
 * takes ownership of the arrays it is given. */
#ifndef FLICKER_ETCD_H
#define FLICKER_ETCD_H
#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/err.h"

/* etcd's default --max-request-bytes is 1.5 MiB for a whole request. */
#define ETCD_MAX_REQUEST (1536u * 1024u)
/* etcd's default --max-txn-ops. */
#define ETCD_MAX_TXN_OPS 128

typedef struct etcd etcd_t;

/* Parses "etcd:URL,URL,...[;prefix=/p]" into malloc'd *endpoints and
 * *prefix (default_prefix when absent; a trailing '/' kept as given).
 * what names the user in messages ("journal", "store").  Returns 0, or
 * -1/err (EINVAL) when spec is not of that form. */
int etcd_parse_spec(const char *spec, const char *default_prefix, const char *what,
                    char **endpoints, char **prefix, err_t *err);

/* Opens a client for comma-separated endpoint URLs (a bare host:port gets
 * http://).  No request is made: an unreachable cluster shows on the first
 * call.  what prefixes log lines ("journal", "store"). */
etcd_t *etcd_open(const char *endpoints, const char *what, err_t *err);
void etcd_close(etcd_t *e);

/* POSTs req (JSON) to path on the first endpoint that can serve it, for
 * at most ~15 s; returns 0 with the decoded response in *out, or -1/err:
 * ENOENT for gRPC NotFound (e.g. an unknown lease), EHOSTUNREACH when no
 * endpoint answered, EIO otherwise. */
int etcd_call(etcd_t *e, const char *path, json_t *req, json_t **out, err_t *err);
/* Runs a txn (takes ownership of the three arrays; NULL = empty); returns
 * 0 with the response in *resp and whether its compares held in *ok. */
int etcd_txn(etcd_t *e, json_t *cmps, json_t *succ, json_t *fail, json_t **resp, bool *ok,
             err_t *err);

/* The endpoint that last answered, moving on to the next, and a new curl
 * handle set up like the client's own (for streams such as watches; the
 * caller sets URL, body, callbacks and cleans it up). */
const char *etcd_endpoint(const etcd_t *e);
void etcd_next_endpoint(etcd_t *e);
CURL *etcd_easy_new(etcd_t *e);

/* A growable response buffer and the curl write callback that fills it. */
typedef struct etcd_buf {
    char *p;
    size_t n, cap;
} etcd_buf_t;
size_t etcd_buf_write(char *p, size_t sz, size_t n, void *arg);

/* ---- values ---- */
json_t *etcd_b64(const void *data, size_t len);
json_t *etcd_b64s(const char *s);
/* int64 fields: "123" or 123; absent means 0. */
int64_t etcd_i64(const json_t *v);
json_t *etcd_jstr64(int64_t v);
/* header.revision of a response. */
int64_t etcd_resp_revision(const json_t *resp);
/* The end of the range of every key starting with prefix. */
char *etcd_prefix_end(const char *prefix);

/* One key-value as returned by range (present == false: no such key). */
typedef struct etcd_kv {
    bool present;
    char *key;
    unsigned char *val; /* NUL-terminated */
    size_t vlen;
    int64_t create_rev, mod_rev, lease;
} etcd_kv_t;
void etcd_kv_free(etcd_kv_t *kv);
/* Decodes one kv object; -1/err (EPROTO) on bad base64. */
int etcd_kv_parse(const json_t *o, etcd_kv_t *kv, err_t *err);
/* The first kv of response i of a txn whose op i was a range (absent:
 * kv->present false). */
int etcd_txn_kv(const json_t *resp, size_t i, etcd_kv_t *kv, err_t *err);
/* A decimal value; absent or empty = 0. */
uint64_t etcd_kv_u64(const etcd_kv_t *kv);
/* Reads one key (absent: kv->present false); *rev (may be NULL) gets the
 * revision of the read. */
int etcd_get(etcd_t *e, const char *key, etcd_kv_t *kv, int64_t *rev, err_t *err);

/* ---- request builders ---- */
json_t *etcd_cmp_create0(const char *key);            /* key does not exist */
json_t *etcd_cmp_mod(const char *key, int64_t rev);   /* mod_revision == rev (0: absent) */
json_t *etcd_cmp_lease(const char *key, int64_t lease);
json_t *etcd_cmp_value(const char *key, const char *result, const char *val);
json_t *etcd_op_put(const char *key, const void *val, size_t len, int64_t lease);
/* end NULL: the one key; limit 0: no limit. */
json_t *etcd_op_range(const char *key, const char *end, int64_t limit);
json_t *etcd_op_delete(const char *key, const char *end);

/* ---- range paging ----
 * Calls fn for every kv in [key, end) in key order, `page` kvs a request,
 * all pages at one revision (a consistent view): rev > 0 reads at that
 * revision, rev == 0 at the first page's, which is stored in *rev_out
 * (may be NULL).  keys_only skips the values.  first_page (borrowed, may
 * be NULL) is an already-fetched range response for [key, end) to start
 * from (with rev its revision).  fn returns 0 to go on, > 0 to stop (the
 * call returns 0), < 0 to fail (the call returns -1, fn sets err).  The
 * kv passed is freed after fn returns. */
typedef int (*etcd_kv_fn)(const etcd_kv_t *kv, void *arg, err_t *err);
int etcd_range_pages(etcd_t *e, const char *key, const char *end, int64_t page, bool keys_only,
                     int64_t rev, const json_t *first_page, etcd_kv_fn fn, void *arg,
                     int64_t *rev_out, err_t *err);
#endif
