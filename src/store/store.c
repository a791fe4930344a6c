/* store.c - the store's API (store.h) over a metadata backend, and the
 * code kept on this host.
 *
 * Metadata lives in a backend chosen at open (store_backend.h): SQLite on
 * this host (store_sqlite.c, the default) or etcd (store_etcd.c).  What is
 * the same for both lives here: function reference parsing, store_resolve,
 * and code.  Code is kept on the local disk as DATA/blobs/<hex>.zip and
 * DATA/code/<hex>/ (extracted into DATA/code/.tmp-<uuid> first, then
 * renamed, so a code dir is always whole); a distributed backend also
 * keeps each zip where other hosts fetch it (store_ensure_code).  Code is
 * never garbage-collected here (a deleted function's code may still be in
 * use by a draining environment). */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/etcd.h"
#include "common/log.h"
#include "common/util.h"
#include "store/codezip.h"
#include "store/store_backend.h"

/* ---- open / close ---- */

/* Removes extraction temp dirs left by a crash (DATA/code/.tmp-*).  The
 * data dir belongs to one flicker process, so none can be in progress. */
static void clean_tmp(const char *code_dir)
{
    DIR *d = opendir(code_dir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, ".tmp-", 5))
            continue;
        char *p = xasprintf("%s/%s", code_dir, de->d_name);
        rm_rf(p, NULL);
        free(p);
    }
    closedir(d);
}

void store_base_init(store_t *b, const store_ops_t *ops, const char *data_dir,
                     const char *region, const char *account)
{
    b->ops = ops;
    b->data_dir = xstrdup(data_dir);
    b->region = xstrdup(region);
    b->account = xstrdup(account);
    b->max_unzipped = CODEZIP_MAX_UNZIPPED;
}

void store_base_free(store_t *b)
{
    free(b->data_dir);
    free(b->region);
    free(b->account);
}

static store_t *open_spec(const char *spec, const char *data_dir, const char *region,
                          const char *account_id, bool clean, err_t *err)
{
    bool etcd = spec && !strncmp(spec, "etcd:", 5);
    char *endpoints = NULL, *prefix = NULL;
    if (spec && *spec && strcmp(spec, "sqlite") && !etcd) {
        err_set(err, EINVAL, "store: unknown spec \"%s\" (want sqlite or etcd:ENDPOINTS[;prefix=P])",
                spec);
        return NULL;
    }
    if (etcd && etcd_parse_spec(spec, STORE_ETCD_PREFIX, "store", &endpoints, &prefix, err) < 0)
        return NULL;
    char *blobs = xasprintf("%s/blobs", data_dir);
    char *code = xasprintf("%s/code", data_dir);
    int rc = mkdir_p(blobs, 0755, err);
    if (rc == 0)
        rc = mkdir_p(code, 0755, err);
    if (rc == 0 && clean)
        clean_tmp(code);
    free(blobs);
    free(code);
    store_t *s = NULL;
    if (rc == 0)
        s = etcd ? store_etcd_open(endpoints, prefix, data_dir, region, account_id, err)
                 : store_sqlite_open(data_dir, region, account_id, err);
    free(endpoints);
    free(prefix);
    return s;
}

store_t *store_open_spec(const char *spec, const char *data_dir, const char *region,
                         const char *account_id, err_t *err)
{
    return open_spec(spec, data_dir, region, account_id, true, err);
}

store_t *store_open_worker(const char *spec, const char *data_dir, err_t *err)
{
    return open_spec(spec, data_dir, "-", "-", false, err);
}

store_t *store_open(const char *data_dir, const char *region, const char *account_id, err_t *err)
{
    return store_open_spec("sqlite", data_dir, region, account_id, err);
}

void store_close(store_t *s)
{
    if (s)
        s->ops->close(s);
}

const char *store_region(store_t *s) { return s->region; }
const char *store_account(store_t *s) { return s->account; }
const char *store_data_dir(store_t *s) { return s->data_dir; }
void store_set_unzipped_limit(store_t *s, uint64_t limit) { s->max_unzipped = limit; }
int store_is_distributed(store_t *s) { return s->ops->fetch_code != NULL; }

/* ---- the API: each call goes to the backend ---- */

json_t *store_fn_get(store_t *s, const char *name) { return s->ops->fn_get(s, name); }
int store_fn_insert(store_t *s, const char *name, json_t *latest, err_t *err) { return s->ops->fn_insert(s, name, latest, err); }
int store_fn_update(store_t *s, const char *name, json_t *latest, err_t *err) { return s->ops->fn_update(s, name, latest, err); }
int store_fn_delete(store_t *s, const char *name, err_t *err) { return s->ops->fn_delete(s, name, err); }
json_t *store_fn_list(store_t *s) { return s->ops->fn_list(s); }
int store_fn_count(store_t *s) { return s->ops->fn_count(s); }
int store_get_reserved(store_t *s, const char *name) { return s->ops->get_reserved(s, name); }
int store_set_reserved(store_t *s, const char *name, int n, err_t *err) { return s->ops->set_reserved(s, name, n, err); }
int store_total_reserved(store_t *s) { return s->ops->total_reserved(s); }
uint64_t store_total_code_size(store_t *s) { return s->ops->total_code_size(s); }
long store_next_version(store_t *s, const char *name, err_t *err) { return s->ops->next_version(s, name, err); }
long store_last_version(store_t *s, const char *name) { return s->ops->last_version(s, name); }
json_t *store_version_get(store_t *s, const char *name, long version) { return s->ops->version_get(s, name, version); }
int store_version_insert(store_t *s, const char *name, long version, json_t *cfg, err_t *err) { return s->ops->version_insert(s, name, version, cfg, err); }
int store_version_update(store_t *s, const char *name, long version, json_t *cfg, err_t *err) { return s->ops->version_update(s, name, version, cfg, err); }
int store_version_delete(store_t *s, const char *name, long version, err_t *err) { return s->ops->version_delete(s, name, version, err); }
json_t *store_version_list(store_t *s, const char *name) { return s->ops->version_list(s, name); }
json_t *store_alias_get(store_t *s, const char *name, const char *alias) { return s->ops->alias_get(s, name, alias); }
int store_alias_put(store_t *s, const char *name, const char *alias, json_t *cfg, int replace, err_t *err) { return s->ops->alias_put(s, name, alias, cfg, replace, err); }
int store_alias_delete(store_t *s, const char *name, const char *alias, err_t *err) { return s->ops->alias_delete(s, name, alias, err); }
json_t *store_alias_list(store_t *s, const char *name) { return s->ops->alias_list(s, name); }
json_t *store_eic_get(store_t *s, const char *name, const char *qual) { return s->ops->eic_get(s, name, qual); }
int store_eic_put(store_t *s, const char *name, const char *qual, json_t *cfg, err_t *err) { return s->ops->eic_put(s, name, qual, cfg, err); }
int store_eic_delete(store_t *s, const char *name, const char *qual, err_t *err) { return s->ops->eic_delete(s, name, qual, err); }
json_t *store_eic_list(store_t *s, const char *name) { return s->ops->eic_list(s, name); }
json_t *store_tags_get(store_t *s, const char *name) { return s->ops->tags_get(s, name); }
int store_tags_set(store_t *s, const char *name, json_t *obj, err_t *err) { return s->ops->tags_set(s, name, obj, err); }
int store_begin(store_t *s, err_t *err) { return s->ops->begin(s, err); }
int store_commit(store_t *s, err_t *err) { return s->ops->commit(s, err); }
void store_rollback(store_t *s) { s->ops->rollback(s); }

/* ---- code ---- */

char *store_code_dir(store_t *s, const char *hex) { return xasprintf("%s/code/%s", s->data_dir, hex); }
char *store_blob_path(store_t *s, const char *hex)
{
    return xasprintf("%s/blobs/%s.zip", s->data_dir, hex);
}

/* Puts a zip whose SHA-256 is hex on this host: extracted at DATA/code/
 * <hex>/ (unless already there) and kept at DATA/blobs/<hex>.zip. */
static int install_code(store_t *s, const void *zip, size_t len, const char *hex, err_t *err)
{
    char *dir = store_code_dir(s, hex);
    struct stat st;
    int rc = 0;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        char uuid[37];
        uuid_v4(uuid);
        char *tmp = xasprintf("%s/code/.tmp-%s", s->data_dir, uuid);
        rc = codezip_extract(zip, len, tmp, s->max_unzipped, CODEZIP_MAX_ENTRIES, NULL, err);
        if (rc == 0 && rename(tmp, dir) < 0) {
            if (errno == EEXIST || errno == ENOTEMPTY) {
                rm_rf(tmp, NULL); /* someone else extracted the same code */
            } else {
                rc = err_sys(err, "rename %s", tmp);
                rm_rf(tmp, NULL);
            }
        }
        free(tmp);
    }
    free(dir);
    if (rc < 0)
        return -1;
    char *blob = store_blob_path(s, hex);
    if (stat(blob, &st) < 0 || (size_t)st.st_size != len)
        rc = write_file_atomic(blob, zip, len, 0644, err);
    free(blob);
    return rc;
}

int store_put_code(store_t *s, const void *zip, size_t len, char hex[65], char b64[45], err_t *err)
{
    unsigned char digest[32];
    sha256(zip, len, digest);
    hex_encode(digest, 32, hex);
    char *enc = base64_encode(digest, 32);
    snprintf(b64, 45, "%s", enc);
    free(enc);
    if (install_code(s, zip, len, hex, err) < 0)
        return -1;
    /* only validated code (it extracted) is shared with other hosts */
    return s->ops->put_code ? s->ops->put_code(s, zip, len, hex, err) : 0;
}

int store_hex_valid(const char *hex)
{
    if (!hex || strlen(hex) != 64)
        return 0;
    for (const char *p = hex; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

int store_ensure_code(store_t *s, const char *hex, char **dir_out, err_t *err)
{
    *dir_out = NULL;
    if (!store_hex_valid(hex))
        return err_set(err, EINVAL, "invalid code hash \"%.80s\"", hex ? hex : "");
    char *dir = store_code_dir(s, hex);
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) {
        *dir_out = dir;
        return 0;
    }
    if (!s->ops->fetch_code) {
        free(dir);
        return err_set(err, ENOENT, "code %s is not on this host (and the store is local)", hex);
    }
    /* One fetch per code and host: processes sharing this data dir take
     * DATA/code/.lock-<hex>; whoever gets it second finds the dir made. */
    char *lock = xasprintf("%s/code/.lock-%s", s->data_dir, hex);
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0)
        while (flock(fd, LOCK_EX) < 0 && errno == EINTR)
            ;
    int rc = 0;
    if (!(stat(dir, &st) == 0 && S_ISDIR(st.st_mode))) {
        void *zip = NULL;
        size_t len = 0;
        rc = s->ops->fetch_code(s, hex, &zip, &len, err);
        if (rc == 0)
            rc = install_code(s, zip, len, hex, err);
        free(zip);
        if (rc == 0)
            log_info("store", "fetched code %.12s (%zu bytes) from the store", hex, len);
    }
    if (fd >= 0) {
        unlink(lock);
        close(fd);
    }
    free(lock);
    if (rc < 0) {
        free(dir);
        return -1;
    }
    *dir_out = dir;
    return 0;
}

/* ---- references and resolution ---- */

static int valid_chars(const char *s, size_t min, size_t max, int allow_dollar)
{
    size_t n = strlen(s);
    if (n < min || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || (allow_dollar && c == '$')))
            return 0;
    }
    return 1;
}

int store_parse_ref(store_t *s, const char *ref, char **name, char **qual, err_t *err)
{
    *name = *qual = NULL;
    if (!ref || !*ref || strlen(ref) > 256)
        return err_set(err, EINVAL, "Invalid function name");
    char *parts[9];
    int n = 0;
    char *copy = xstrdup(ref);
    for (char *p = copy; n < 9;) {
        char *e = strchr(p, ':');
        parts[n++] = p;
        if (!e)
            break;
        *e = 0;
        p = e + 1;
    }
    const char *nm = NULL, *q = NULL, *region = NULL, *account = NULL;
    int ok = 1;
    if (!strcmp(parts[0], "arn")) {
        /* arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:Q] */
        if ((n != 7 && n != 8) || strncmp(parts[1], "aws", 3) || strcmp(parts[2], "lambda") ||
            strcmp(parts[5], "function"))
            ok = 0;
        else {
            region = parts[3];
            account = parts[4];
            nm = parts[6];
            q = n == 8 ? parts[7] : NULL;
        }
    } else if (n == 1 || n == 2) {
        nm = parts[0];
        q = n == 2 ? parts[1] : NULL;
    } else if ((n == 3 || n == 4) && !strcmp(parts[1], "function")) {
        account = parts[0];
        nm = parts[2];
        q = n == 4 ? parts[3] : NULL;
    } else {
        ok = 0;
    }
    if (ok && (!valid_chars(nm, 1, 64, 0) || (q && !valid_chars(q, 1, 128, 1))))
        ok = 0;
    if (!ok) {
        free(copy);
        return err_set(err, EINVAL, "Invalid function name or ARN: %.200s", ref);
    }
    if ((region && strcmp(region, s->region)) || (account && strcmp(account, s->account))) {
        err_set(err, ENOENT, "Function not found: %.300s", ref);
        free(copy);
        return -1;
    }
    *name = xstrdup(nm);
    *qual = q ? xstrdup(q) : NULL;
    free(copy);
    return 0;
}

void fn_config_free(fn_config_t *c)
{
    if (!c)
        return;
    free(c->name);
    free(c->version);
    free(c->arn);
    free(c->runtime);
    free(c->handler);
    json_decref(c->env_vars);
    free(c->code_sha256);
    free(c->code_dir);
    free(c->code_hex);
    free(c->revision_id);
    free(c->config_key);
    free(c->alias);
    free(c->qualified_arn);
    free(c->on_success);
    free(c->on_failure);
    free(c->isolation);
    free(c->snapshot_path);
    free(c);
}

static char *jstr(json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));
    return xstrdup(v ? v : "");
}

static const char *jstr_or_null(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static int is_number(const char *q)
{
    if (!*q || strlen(q) > 9)
        return 0;
    for (const char *p = q; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

/* Picks the version an alias routes this request to. */
static const char *alias_pick(json_t *alias)
{
    const char *primary = json_string_value(json_object_get(alias, "FunctionVersion"));
    json_t *w = json_object_get(json_object_get(alias, "RoutingConfig"),
                                "AdditionalVersionWeights");
    const char *ver;
    json_t *weight;
    double r;
    uint32_t rnd;
    random_bytes(&rnd, sizeof rnd);
    r = rnd / 4294967296.0;
    double acc = 0;
    json_object_foreach(w, ver, weight)
    {
        acc += json_number_value(weight);
        if (r < acc)
            return ver;
    }
    return primary;
}

int store_resolve(store_t *s, const char *ref, const char *qualifier, fn_config_t **out,
                  err_t *err)
{
    *out = NULL;
    char *name = NULL, *q = NULL;
    if (store_parse_ref(s, ref, &name, &q, err) < 0)
        return -1;
    if (qualifier && *qualifier) {
        if (q && strcmp(q, qualifier)) {
            free(name);
            free(q);
            return err_set(err, EINVAL,
                           "The derived qualifier from the function name does not match the "
                           "specified qualifier.");
        }
        if (!valid_chars(qualifier, 1, 128, 1)) {
            free(name);
            free(q);
            return err_set(err, EINVAL, "Invalid qualifier: %.200s", qualifier);
        }
        if (!q)
            q = xstrdup(qualifier);
    }
    char *arn = xasprintf("arn:aws:lambda:%s:%s:function:%s", s->region, s->account, name);
    if (s->ops->resolve_prefetch)
        s->ops->resolve_prefetch(s, name, q);
    json_t *cfg = store_fn_get(s, name);
    json_t *alias = NULL;
    const char *version = "$LATEST";
    int rc = 0;
    if (!cfg) {
        rc = err_set(err, ENOENT, "Function not found: %s", arn);
        goto done;
    }
    if (q && strcmp(q, "$LATEST")) {
        if (!is_number(q)) {
            alias = store_alias_get(s, name, q);
            if (!alias) {
                rc = err_set(err, ENOENT, "Function not found: %s:%s", arn, q);
                goto done;
            }
            version = alias_pick(alias);
        } else {
            version = q;
        }
        if (strcmp(version, "$LATEST")) {
            json_decref(cfg);
            cfg = store_version_get(s, name, strtol(version, NULL, 10));
            if (!cfg) {
                rc = err_set(err, ENOENT, "Function not found: %s:%s", arn, q);
                goto done;
            }
        }
    }
    fn_config_t *c = xcalloc(1, sizeof *c);
    c->name = xstrdup(name);
    c->version = jstr(cfg, "Version");
    c->arn = xstrdup(arn);
    c->qualified_arn = xasprintf("%s:%s", arn, c->version);
    c->runtime = jstr(cfg, "Runtime");
    c->handler = jstr(cfg, "Handler");
    c->memory_mb = (int)json_integer_value(json_object_get(cfg, "MemorySize"));
    c->timeout_s = (int)json_integer_value(json_object_get(cfg, "Timeout"));
    c->ephemeral_mb =
        (int)json_integer_value(json_object_get(json_object_get(cfg, "EphemeralStorage"), "Size"));
    json_t *vars = json_object_get(json_object_get(cfg, "Environment"), "Variables");
    c->env_vars = json_is_object(vars) ? json_deep_copy(vars) : json_object();
    c->code_sha256 = jstr(cfg, "CodeSha256");
    c->code_hex = jstr(cfg, "_CodeHex");
    c->code_dir = store_code_dir(s, c->code_hex);
    c->revision_id = jstr(cfg, "RevisionId");
    c->reserved_concurrency = store_get_reserved(s, name);
    c->config_key = xasprintf("%s:%s:%s", name, c->version, c->revision_id);
    c->alias = alias ? xstrdup(q) : NULL;
    const char *iso = jstr_or_null(cfg, "_Isolation");
    c->isolation = iso && *iso ? xstrdup(iso) : NULL;
    if (strcmp(c->version, "$LATEST")) {
        json_t *snap = json_object_get(cfg, "SnapStart");
        const char *apply = jstr_or_null(snap, "ApplyOn");
        const char *opt = jstr_or_null(snap, "OptimizationStatus");
        const char *path = jstr_or_null(cfg, "_Snapshot");
        c->snap_start = apply && !strcmp(apply, "PublishedVersions");
        c->snap_pending = json_is_true(json_object_get(cfg, "_SnapshotPending"));
        c->snapshot_path = c->snap_start && opt && !strcmp(opt, "On") && path ? xstrdup(path) : NULL;
    }
    /* async settings belong to the qualifier used: alias, version or $LATEST */
    json_t *eic = store_eic_get(s, name, q ? q : "$LATEST");
    json_t *mra = json_object_get(eic, "MaximumRetryAttempts");
    json_t *mea = json_object_get(eic, "MaximumEventAgeInSeconds");
    json_t *dest = json_object_get(eic, "DestinationConfig");
    const char *ok_dest = jstr_or_null(json_object_get(dest, "OnSuccess"), "Destination");
    const char *fail_dest = jstr_or_null(json_object_get(dest, "OnFailure"), "Destination");
    c->max_retry_attempts = json_is_integer(mra) ? (int)json_integer_value(mra) : 2;
    c->max_event_age_s = json_is_integer(mea) ? (int)json_integer_value(mea) : 21600;
    c->on_success = ok_dest && *ok_dest ? xstrdup(ok_dest) : NULL;
    c->on_failure = fail_dest && *fail_dest ? xstrdup(fail_dest) : NULL;
    json_decref(eic);
    *out = c;
done:
    if (s->ops->resolve_done)
        s->ops->resolve_done(s);
    json_decref(cfg);
    json_decref(alias);
    free(arn);
    free(name);
    free(q);
    return rc;
}
