/* etcd.c - the etcd v3 JSON-gateway client of etcd.h.
 *
 * How it works: one curl easy handle per client for unary requests (kept
 * alive between calls); each call walks the endpoints from the one that
 * last answered, retrying the whole list every 200 ms until ~15 s have
 * passed.  A request header asks members without a raft leader to answer
 * "no leader" at once instead of holding the request.
 * Invariants: cur always indexes eps; a call that returns 0 hands back a
 * JSON object without an "error" member. */
#include "common/etcd.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define ETCD_CALL_MS    15000 /* give up on a request after this long */
#define ETCD_HTTP_MS    2000  /* one HTTP exchange; a proposal lost in an
                               * election hangs until this, then we retry */
#define ETCD_CONNECT_MS 1000

struct etcd {
    char **eps;
    size_t neps, cur; /* cur: the endpoint that last answered */
    char *what;
    CURL *c;
    struct curl_slist *hdrs;
};

static pthread_mutex_t curl_init_lock = PTHREAD_MUTEX_INITIALIZER;

int etcd_parse_spec(const char *spec, const char *default_prefix, const char *what,
                    char **endpoints, char **prefix, err_t *err)
{
    *endpoints = *prefix = NULL;
    if (!spec || strncmp(spec, "etcd:", 5))
        return err_set(err, EINVAL, "%s: not an etcd spec: \"%s\"", what, spec ? spec : "");
    const char *rest = spec + 5, *semi = strchr(rest, ';');
    if (semi && strncmp(semi + 1, "prefix=", 7))
        return err_set(err, EINVAL, "%s: unknown option in \"%s\" (only ;prefix=P)", what, spec);
    *endpoints = semi ? xstrndup(rest, (size_t)(semi - rest)) : xstrdup(rest);
    *prefix = xstrdup(semi ? semi + 8 : default_prefix);
    return 0;
}

size_t etcd_buf_write(char *p, size_t sz, size_t n, void *arg)
{
    etcd_buf_t *b = arg;
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

/* ---- values ---- */

json_t *etcd_b64(const void *data, size_t len)
{
    char *s = base64_encode(data, len);
    json_t *v = json_string(s);
    free(s);
    return v;
}

json_t *etcd_b64s(const char *s) { return etcd_b64(s, strlen(s)); }

int64_t etcd_i64(const json_t *v)
{
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

json_t *etcd_jstr64(int64_t v)
{
    char s[32];
    snprintf(s, sizeof s, "%" PRId64, v);
    return json_string(s);
}

int64_t etcd_resp_revision(const json_t *resp)
{
    return etcd_i64(json_object_get(json_object_get(resp, "header"), "revision"));
}

char *etcd_prefix_end(const char *prefix)
{
    /* every key of ours is printable ASCII: bump the last byte */
    char *end = xstrdup(prefix);
    size_t n = strlen(end);
    if (n)
        end[n - 1]++;
    return end;
}

void etcd_kv_free(etcd_kv_t *kv)
{
    free(kv->key);
    free(kv->val);
    memset(kv, 0, sizeof *kv);
}

int etcd_kv_parse(const json_t *o, etcd_kv_t *kv, err_t *err)
{
    memset(kv, 0, sizeof *kv);
    const char *k = json_string_value(json_object_get(o, "key"));
    const char *v = json_string_value(json_object_get(o, "value"));
    size_t n = 0;
    kv->key = k ? base64_decode(k, strlen(k), &n) : xstrdup("");
    kv->val = v ? base64_decode(v, strlen(v), &kv->vlen) : (unsigned char *)xstrdup("");
    if (!kv->key || !kv->val) {
        etcd_kv_free(kv);
        return err_set(err, EPROTO, "etcd: bad base64 in a key-value");
    }
    kv->create_rev = etcd_i64(json_object_get(o, "create_revision"));
    kv->mod_rev = etcd_i64(json_object_get(o, "mod_revision"));
    kv->lease = etcd_i64(json_object_get(o, "lease"));
    kv->present = true;
    return 0;
}

int etcd_txn_kv(const json_t *resp, size_t i, etcd_kv_t *kv, err_t *err)
{
    memset(kv, 0, sizeof *kv);
    json_t *r = json_object_get(json_array_get(json_object_get(resp, "responses"), i),
                                "response_range");
    json_t *kvs = json_object_get(r, "kvs");
    if (!r)
        return err_set(err, EPROTO, "etcd: txn response %zu is not a range", i);
    if (json_array_size(kvs) == 0)
        return 0;
    return etcd_kv_parse(json_array_get(kvs, 0), kv, err);
}

uint64_t etcd_kv_u64(const etcd_kv_t *kv)
{
    return kv->present ? strtoull((const char *)kv->val, NULL, 10) : 0;
}

/* ---- the HTTP layer ---- */

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

int etcd_call(etcd_t *e, const char *path, json_t *req, json_t **out, err_t *err)
{
    char *body = json_dumps(req, JSON_COMPACT);
    if (!body)
        return err_set(err, ENOMEM, "etcd %s: cannot encode request", path);
    uint64_t deadline = now_mono_ms() + ETCD_CALL_MS;
    char last[384] = "no endpoint";
    etcd_buf_t b = {0};
    for (;;) {
        for (size_t k = 0; k < e->neps; k++) {
            size_t i = (e->cur + k) % e->neps;
            char *url = xasprintf("%s%s", e->eps[i], path);
            b.n = 0;
            curl_easy_setopt(e->c, CURLOPT_URL, url);
            curl_easy_setopt(e->c, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(e->c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
            curl_easy_setopt(e->c, CURLOPT_WRITEDATA, &b);
            CURLcode rc = curl_easy_perform(e->c);
            free(url);
            if (rc != CURLE_OK) {
                snprintf(last, sizeof last, "%s: %s", e->eps[i], curl_easy_strerror(rc));
                log_debug(e->what, "etcd %s: %s", path, last);
                continue;
            }
            long status = 0;
            curl_easy_getinfo(e->c, CURLINFO_RESPONSE_CODE, &status);
            json_t *r = b.n ? json_loadb(b.p, b.n, 0, NULL) : NULL;
            if (status == 200 && json_is_object(r) && !json_object_get(r, "error")) {
                e->cur = i;
                *out = r;
                free(body);
                free(b.p);
                return 0;
            }
            const char *msg = json_string_value(json_object_get(r, "message"));
            if (!msg)
                msg = json_string_value(json_object_get(r, "error"));
            int64_t code = etcd_i64(json_object_get(r, "code"));
            snprintf(last, sizeof last, "%s: %s (HTTP %ld)", e->eps[i],
                     msg ? msg : "unreadable response", status);
            log_debug(e->what, "etcd %s: %s", path, last);
            if (retryable(status, code, msg)) {
                json_decref(r);
                continue;
            }
            e->cur = i;
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
    return err_set(err, EHOSTUNREACH, "etcd %s: no endpoint could serve the request; last: %s",
                   path, last);
}

int etcd_txn(etcd_t *e, json_t *cmps, json_t *succ, json_t *fail, json_t **resp, bool *ok,
             err_t *err)
{
    json_t *req = json_pack("{s:o, s:o, s:o}", "compare", cmps ? cmps : json_array(), "success",
                            succ ? succ : json_array(), "failure", fail ? fail : json_array());
    int rc = etcd_call(e, "/v3/kv/txn", req, resp, err);
    json_decref(req);
    if (rc < 0)
        return -1;
    *ok = json_is_true(json_object_get(*resp, "succeeded"));
    return 0;
}

int etcd_get(etcd_t *e, const char *key, etcd_kv_t *kv, int64_t *rev, err_t *err)
{
    memset(kv, 0, sizeof *kv);
    json_t *req = json_pack("{s:o}", "key", etcd_b64s(key)), *resp;
    int c = etcd_call(e, "/v3/kv/range", req, &resp, err);
    json_decref(req);
    if (c < 0)
        return -1;
    if (rev)
        *rev = etcd_resp_revision(resp);
    json_t *kvs = json_object_get(resp, "kvs");
    int rc = json_array_size(kvs) ? etcd_kv_parse(json_array_get(kvs, 0), kv, err) : 0;
    json_decref(resp);
    return rc;
}

int etcd_range_pages(etcd_t *e, const char *key, const char *end, int64_t page, bool keys_only,
                     int64_t rev, const json_t *first_page, etcd_kv_fn fn, void *arg,
                     int64_t *rev_out, err_t *err)
{
    /* start as bytes: a later page starts at the last key + "\0" */
    size_t slen = strlen(key);
    char *start = xstrndup(key, slen);
    json_t *resp = first_page ? json_incref((json_t *)first_page) : NULL;
    int rc = -1;
    for (;;) {
        if (!resp) {
            json_t *req = json_pack("{s:o, s:o, s:o}", "key", etcd_b64(start, slen), "range_end",
                                    etcd_b64s(end), "limit", etcd_jstr64(page));
            if (rev > 0)
                json_object_set_new(req, "revision", etcd_jstr64(rev));
            if (keys_only)
                json_object_set_new(req, "keys_only", json_true());
            int c = etcd_call(e, "/v3/kv/range", req, &resp, err);
            json_decref(req);
            if (c < 0)
                goto out;
            if (rev <= 0)
                rev = etcd_resp_revision(resp); /* later pages: the same view */
        }
        json_t *kvs = json_object_get(resp, "kvs");
        bool more = json_is_true(json_object_get(resp, "more"));
        size_t n = json_array_size(kvs);
        for (size_t i = 0; i < n; i++) {
            etcd_kv_t kv;
            if (etcd_kv_parse(json_array_get(kvs, i), &kv, err) < 0)
                goto out;
            int r = fn(&kv, arg, err);
            if (i + 1 == n) { /* remember where the next page starts */
                free(start);
                slen = strlen(kv.key) + 1;
                start = xmalloc(slen + 1);
                memcpy(start, kv.key, slen); /* with its NUL: key + "\0" */
                start[slen] = 0;
            }
            etcd_kv_free(&kv);
            if (r != 0) {
                rc = r < 0 ? -1 : 0;
                goto out;
            }
        }
        json_decref(resp);
        resp = NULL;
        if (!more || n == 0)
            break;
    }
    rc = 0;
out:
    if (rev_out)
        *rev_out = rev;
    json_decref(resp);
    free(start);
    return rc;
}

/* ---- builders ---- */

static json_t *cmp(const char *key, const char *target, const char *result, const char *field,
                   json_t *v)
{
    return json_pack("{s:o, s:s, s:s, s:o}", "key", etcd_b64s(key), "target", target, "result",
                     result, field, v);
}

json_t *etcd_cmp_create0(const char *key)
{
    return cmp(key, "CREATE", "EQUAL", "create_revision", etcd_jstr64(0));
}
json_t *etcd_cmp_mod(const char *key, int64_t rev)
{
    return cmp(key, "MOD", "EQUAL", "mod_revision", etcd_jstr64(rev));
}
json_t *etcd_cmp_lease(const char *key, int64_t lease)
{
    return cmp(key, "LEASE", "EQUAL", "lease", etcd_jstr64(lease));
}
json_t *etcd_cmp_value(const char *key, const char *result, const char *val)
{
    return cmp(key, "VALUE", result, "value", etcd_b64s(val));
}

json_t *etcd_op_put(const char *key, const void *val, size_t len, int64_t lease)
{
    json_t *p = json_pack("{s:o, s:o}", "key", etcd_b64s(key), "value", etcd_b64(val, len));
    if (lease)
        json_object_set_new(p, "lease", etcd_jstr64(lease));
    return json_pack("{s:o}", "request_put", p);
}

json_t *etcd_op_range(const char *key, const char *end, int64_t limit)
{
    json_t *r = json_pack("{s:o}", "key", etcd_b64s(key));
    if (end)
        json_object_set_new(r, "range_end", etcd_b64s(end));
    if (limit)
        json_object_set_new(r, "limit", etcd_jstr64(limit));
    return json_pack("{s:o}", "request_range", r);
}

json_t *etcd_op_delete(const char *key, const char *end)
{
    json_t *d = json_pack("{s:o}", "key", etcd_b64s(key));
    if (end)
        json_object_set_new(d, "range_end", etcd_b64s(end));
    return json_pack("{s:o}", "request_delete_range", d);
}

/* ---- open / close ---- */

const char *etcd_endpoint(const etcd_t *e) { return e->eps[e->cur]; }
void etcd_next_endpoint(etcd_t *e) { e->cur = (e->cur + 1) % e->neps; }

CURL *etcd_easy_new(etcd_t *e)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, ""); /* etcd is never behind a proxy */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, e->hdrs);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)ETCD_CONNECT_MS);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)ETCD_HTTP_MS);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, etcd_buf_write);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    return c;
}

void etcd_close(etcd_t *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->neps; i++)
        free(e->eps[i]);
    free(e->eps);
    free(e->what);
    if (e->c)
        curl_easy_cleanup(e->c);
    curl_slist_free_all(e->hdrs);
    free(e);
    pthread_mutex_lock(&curl_init_lock);
    curl_global_cleanup(); /* reference-counted by libcurl */
    pthread_mutex_unlock(&curl_init_lock);
}

etcd_t *etcd_open(const char *endpoints, const char *what, err_t *err)
{
    if (!endpoints || !*endpoints) {
        err_set(err, EINVAL, "%s(etcd): no endpoints", what);
        return NULL;
    }
    pthread_mutex_lock(&curl_init_lock);
    CURLcode g = curl_global_init(CURL_GLOBAL_DEFAULT);
    pthread_mutex_unlock(&curl_init_lock);
    if (g != CURLE_OK) {
        err_set(err, EIO, "%s(etcd): curl_global_init: %s", what, curl_easy_strerror(g));
        return NULL;
    }
    etcd_t *e = xcalloc(1, sizeof *e);
    e->what = xstrdup(what);
    char *list = xstrdup(endpoints), *save = NULL;
    for (char *t = strtok_r(list, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        size_t tl = strlen(t);
        while (tl > 0 && t[tl - 1] == '/')
            t[--tl] = 0;
        if (!tl)
            continue;
        e->eps = xrealloc(e->eps, (e->neps + 1) * sizeof *e->eps);
        e->eps[e->neps++] = strstr(t, "://") ? xstrdup(t) : xasprintf("http://%s", t);
    }
    free(list);
    e->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    e->hdrs = curl_slist_append(e->hdrs, "Expect:"); /* no 100-continue round trip */
    /* gRPC metadata "hasleader": a member without a raft leader answers
     * "no leader" at once instead of holding the request until it times out */
    e->hdrs = curl_slist_append(e->hdrs, "Grpc-Metadata-hasleader: true");
    e->c = e->neps ? etcd_easy_new(e) : NULL;
    if (e->neps == 0 || !e->hdrs || !e->c) {
        err_set(err, e->neps ? ENOMEM : EINVAL, "%s(etcd): %s", what,
                e->neps ? "cannot set up libcurl" : "no usable endpoint");
        etcd_close(e);
        return NULL;
    }
    return e;
}
