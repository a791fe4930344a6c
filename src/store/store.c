/* store.c - SQLite-backed function metadata and content-addressed code.
 *
 * Schema (version 1, recorded in schema_version):
 *   functions(name PK, config JSON of $LATEST, code_size, reserved NULL|n,
 *             last_version: highest version number ever allocated)
 *   versions(name, version, config JSON, code_size)   PK(name, version)
 *   aliases(name, alias, config JSON)                  PK(name, alias)
 *   tags(name, key, value)                             PK(name, key)
 *   event_invoke(name, qualifier, config JSON)         PK(name, qualifier)
 * The database runs in WAL mode with a busy timeout; multi-step changes are
 * wrapped in store_begin/store_commit by the caller.  Code lives outside
 * the database: DATA/blobs/<hex>.zip and DATA/code/<hex>/ (extracted into
 * DATA/code/.tmp-<uuid> first, then renamed, so a code dir is always whole).
 * Code is never garbage-collected here (a deleted function's code may still
 * be in use by a draining environment). */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "store/codezip.h"

#define SCHEMA_VERSION 1

struct store {
    sqlite3 *db;
    char *data_dir;
    char *region;
    char *account;
    uint64_t max_unzipped;
};

static const char *SCHEMA =
    "CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS functions(name TEXT PRIMARY KEY, config TEXT NOT NULL,"
    " code_size INTEGER NOT NULL, reserved INTEGER, last_version INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS versions(name TEXT NOT NULL, version INTEGER NOT NULL,"
    " config TEXT NOT NULL, code_size INTEGER NOT NULL, PRIMARY KEY(name, version));"
    "CREATE TABLE IF NOT EXISTS aliases(name TEXT NOT NULL, alias TEXT NOT NULL,"
    " config TEXT NOT NULL, PRIMARY KEY(name, alias));"
    "CREATE TABLE IF NOT EXISTS tags(name TEXT NOT NULL, key TEXT NOT NULL,"
    " value TEXT NOT NULL, PRIMARY KEY(name, key));"
    "CREATE TABLE IF NOT EXISTS event_invoke(name TEXT NOT NULL, qualifier TEXT NOT NULL,"
    " config TEXT NOT NULL, PRIMARY KEY(name, qualifier));";

/* ---- small SQL helpers ---- */

/* Prepares sql and binds args described by fmt: 's' text, 'i' int64. */
static sqlite3_stmt *prep(store_t *s, const char *sql, const char *fmt, va_list ap)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        log_error("store", "prepare %s: %s", sql, sqlite3_errmsg(s->db));
        return NULL;
    }
    for (int i = 0; fmt && fmt[i]; i++) {
        if (fmt[i] == 's')
            sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
        else
            sqlite3_bind_int64(st, i + 1, va_arg(ap, long long));
    }
    return st;
}

/* Runs a statement without results; returns 0, or -1/err (EEXIST on a
 * constraint violation, EIO otherwise). */
static int exec_args(store_t *s, err_t *err, const char *sql, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sqlite3_stmt *st = prep(s, sql, fmt, ap);
    va_end(ap);
    if (!st)
        return err_set(err, EIO, "database error: %s", sqlite3_errmsg(s->db));
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_CONSTRAINT)
        return err_set(err, EEXIST, "already exists");
    return err_set(err, EIO, "database error: %s", sqlite3_errstr(rc));
}

/* Returns the first column of the first row as a parsed JSON value. */
static json_t *query_json(store_t *s, const char *sql, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sqlite3_stmt *st = prep(s, sql, fmt, ap);
    va_end(ap);
    if (!st)
        return NULL;
    json_t *out = NULL;
    if (sqlite3_step(st) == SQLITE_ROW) {
        const char *txt = (const char *)sqlite3_column_text(st, 0);
        if (txt)
            out = json_loads(txt, 0, NULL);
    }
    sqlite3_finalize(st);
    return out;
}

/* Returns every row's first column, parsed, as a JSON array. */
static json_t *query_json_array(store_t *s, const char *sql, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sqlite3_stmt *st = prep(s, sql, fmt, ap);
    va_end(ap);
    json_t *arr = json_array();
    if (!st)
        return arr;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *txt = (const char *)sqlite3_column_text(st, 0);
        json_t *v = txt ? json_loads(txt, 0, NULL) : NULL;
        if (v)
            json_array_append_new(arr, v);
    }
    sqlite3_finalize(st);
    return arr;
}

/* Returns the first column of the first row as an integer, or dflt when
 * there is no row or it is NULL. */
static long long query_int(store_t *s, long long dflt, const char *sql, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sqlite3_stmt *st = prep(s, sql, fmt, ap);
    va_end(ap);
    if (!st)
        return dflt;
    long long out = dflt;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        out = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return out;
}

static char *dumps(json_t *v) { return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS); }

static long long code_size_of(json_t *cfg)
{
    return json_integer_value(json_object_get(cfg, "CodeSize"));
}

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

store_t *store_open(const char *data_dir, const char *region, const char *account_id, err_t *err)
{
    char *blobs = xasprintf("%s/blobs", data_dir);
    char *code = xasprintf("%s/code", data_dir);
    int rc = mkdir_p(blobs, 0755, err);
    if (rc == 0)
        rc = mkdir_p(code, 0755, err);
    if (rc == 0)
        clean_tmp(code);
    free(blobs);
    free(code);
    if (rc < 0)
        return NULL;
    store_t *s = xcalloc(1, sizeof *s);
    s->data_dir = xstrdup(data_dir);
    s->region = xstrdup(region);
    s->account = xstrdup(account_id);
    s->max_unzipped = CODEZIP_MAX_UNZIPPED;
    char *path = xasprintf("%s/flicker.db", data_dir);
    int src = sqlite3_open_v2(path, &s->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                              NULL);
    free(path);
    if (src != SQLITE_OK) {
        err_set(err, EIO, "open database in %s: %s", data_dir,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(src));
        store_close(s);
        return NULL;
    }
    sqlite3_busy_timeout(s->db, 5000);
    char *emsg = NULL;
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL,
                     &emsg) != SQLITE_OK ||
        sqlite3_exec(s->db, SCHEMA, NULL, NULL, &emsg) != SQLITE_OK) {
        err_set(err, EIO, "initialize database: %s", emsg ? emsg : "?");
        sqlite3_free(emsg);
        store_close(s);
        return NULL;
    }
    long long ver = query_int(s, -1, "SELECT version FROM schema_version", NULL);
    if (ver < 0) {
        exec_args(s, NULL, "INSERT INTO schema_version(version) VALUES(?)", "i",
                  (long long)SCHEMA_VERSION);
    } else if (ver != SCHEMA_VERSION) {
        err_set(err, EINVAL, "database schema version %lld is not supported (want %d)", ver,
                SCHEMA_VERSION);
        store_close(s);
        return NULL;
    }
    return s;
}

void store_close(store_t *s)
{
    if (!s)
        return;
    if (s->db)
        sqlite3_close(s->db);
    free(s->data_dir);
    free(s->region);
    free(s->account);
    free(s);
}

const char *store_region(store_t *s) { return s->region; }
const char *store_account(store_t *s) { return s->account; }
const char *store_data_dir(store_t *s) { return s->data_dir; }
void store_set_unzipped_limit(store_t *s, uint64_t limit) { s->max_unzipped = limit; }

int store_begin(store_t *s, err_t *err) { return exec_args(s, err, "BEGIN IMMEDIATE", NULL); }
int store_commit(store_t *s, err_t *err) { return exec_args(s, err, "COMMIT", NULL); }
void store_rollback(store_t *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* ---- functions ---- */

json_t *store_fn_get(store_t *s, const char *name)
{
    return query_json(s, "SELECT config FROM functions WHERE name=?", "s", name);
}

int store_fn_insert(store_t *s, const char *name, json_t *latest, err_t *err)
{
    char *txt = dumps(latest);
    int rc = exec_args(s, err, "INSERT INTO functions(name, config, code_size) VALUES(?,?,?)",
                       "ssi", name, txt, code_size_of(latest));
    free(txt);
    return rc;
}

int store_fn_update(store_t *s, const char *name, json_t *latest, err_t *err)
{
    char *txt = dumps(latest);
    int rc = exec_args(s, err, "UPDATE functions SET config=?, code_size=? WHERE name=?", "sis",
                       txt, code_size_of(latest), name);
    free(txt);
    if (rc == 0 && sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "function %s not found", name);
    return rc;
}

int store_fn_delete(store_t *s, const char *name, err_t *err)
{
    /* a savepoint nests inside a caller's transaction, or is one */
    if (exec_args(s, err, "SAVEPOINT fn_delete", NULL) < 0)
        return -1;
    int rc = exec_args(s, err, "DELETE FROM functions WHERE name=?", "s", name);
    if (rc == 0 && sqlite3_changes(s->db) == 0)
        rc = err_set(err, ENOENT, "function %s not found", name);
    if (rc == 0)
        rc = exec_args(s, err, "DELETE FROM versions WHERE name=?", "s", name);
    if (rc == 0)
        rc = exec_args(s, err, "DELETE FROM aliases WHERE name=?", "s", name);
    if (rc == 0)
        rc = exec_args(s, err, "DELETE FROM tags WHERE name=?", "s", name);
    if (rc == 0)
        rc = exec_args(s, err, "DELETE FROM event_invoke WHERE name=?", "s", name);
    if (rc < 0)
        exec_args(s, NULL, "ROLLBACK TO fn_delete", NULL);
    exec_args(s, NULL, "RELEASE fn_delete", NULL);
    return rc;
}

json_t *store_fn_list(store_t *s)
{
    return query_json_array(s, "SELECT config FROM functions ORDER BY name", NULL);
}

int store_fn_count(store_t *s)
{
    return (int)query_int(s, 0, "SELECT COUNT(*) FROM functions", NULL);
}

int store_get_reserved(store_t *s, const char *name)
{
    return (int)query_int(s, -1, "SELECT reserved FROM functions WHERE name=?", "s", name);
}

int store_set_reserved(store_t *s, const char *name, int n, err_t *err)
{
    int rc = n >= 0 ? exec_args(s, err, "UPDATE functions SET reserved=? WHERE name=?", "is",
                                (long long)n, name)
                    : exec_args(s, err, "UPDATE functions SET reserved=NULL WHERE name=?", "s",
                                name);
    if (rc == 0 && sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "function %s not found", name);
    return rc;
}

int store_total_reserved(store_t *s)
{
    return (int)query_int(s, 0, "SELECT COALESCE(SUM(reserved),0) FROM functions", NULL);
}

uint64_t store_total_code_size(store_t *s)
{
    long long a = query_int(s, 0, "SELECT COALESCE(SUM(code_size),0) FROM functions", NULL);
    long long b = query_int(s, 0, "SELECT COALESCE(SUM(code_size),0) FROM versions", NULL);
    return (uint64_t)(a + b);
}

/* ---- versions ---- */

long store_next_version(store_t *s, const char *name, err_t *err)
{
    if (exec_args(s, err, "UPDATE functions SET last_version=last_version+1 WHERE name=?", "s",
                  name) < 0)
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "function %s not found", name);
    return (long)query_int(s, -1, "SELECT last_version FROM functions WHERE name=?", "s", name);
}

long store_last_version(store_t *s, const char *name)
{
    return (long)query_int(s, 0, "SELECT MAX(version) FROM versions WHERE name=?", "s", name);
}

json_t *store_version_get(store_t *s, const char *name, long version)
{
    return query_json(s, "SELECT config FROM versions WHERE name=? AND version=?", "si", name,
                      (long long)version);
}

int store_version_insert(store_t *s, const char *name, long version, json_t *cfg, err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err,
                       "INSERT INTO versions(name, version, config, code_size) VALUES(?,?,?,?)",
                       "sisi", name, (long long)version, txt, code_size_of(cfg));
    free(txt);
    return rc;
}

int store_version_update(store_t *s, const char *name, long version, json_t *cfg, err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err, "UPDATE versions SET config=? WHERE name=? AND version=?", "ssi",
                       txt, name, (long long)version);
    free(txt);
    if (rc == 0 && sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "version %ld of %s not found", version, name);
    return rc;
}

int store_version_delete(store_t *s, const char *name, long version, err_t *err)
{
    if (exec_args(s, err, "DELETE FROM versions WHERE name=? AND version=?", "si", name,
                  (long long)version) < 0)
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "version %ld of %s not found", version, name);
    char num[24];
    snprintf(num, sizeof num, "%ld", version);
    return exec_args(s, err, "DELETE FROM event_invoke WHERE name=? AND qualifier=?", "ss", name,
                     num);
}

json_t *store_version_list(store_t *s, const char *name)
{
    return query_json_array(s, "SELECT config FROM versions WHERE name=? ORDER BY version", "s",
                            name);
}

/* ---- aliases ---- */

json_t *store_alias_get(store_t *s, const char *name, const char *alias)
{
    return query_json(s, "SELECT config FROM aliases WHERE name=? AND alias=?", "ss", name, alias);
}

int store_alias_put(store_t *s, const char *name, const char *alias, json_t *cfg, int replace,
                    err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err,
                       replace ? "INSERT OR REPLACE INTO aliases(name, alias, config) VALUES(?,?,?)"
                               : "INSERT INTO aliases(name, alias, config) VALUES(?,?,?)",
                       "sss", name, alias, txt);
    free(txt);
    return rc;
}

int store_alias_delete(store_t *s, const char *name, const char *alias, err_t *err)
{
    if (exec_args(s, err, "DELETE FROM aliases WHERE name=? AND alias=?", "ss", name, alias) < 0)
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "alias %s of %s not found", alias, name);
    return exec_args(s, err, "DELETE FROM event_invoke WHERE name=? AND qualifier=?", "ss", name,
                     alias);
}

json_t *store_alias_list(store_t *s, const char *name)
{
    return query_json_array(s, "SELECT config FROM aliases WHERE name=? ORDER BY alias", "s",
                            name);
}

/* ---- event-invoke configs ---- */

json_t *store_eic_get(store_t *s, const char *name, const char *qual)
{
    return query_json(s, "SELECT config FROM event_invoke WHERE name=? AND qualifier=?", "ss",
                      name, qual);
}

int store_eic_put(store_t *s, const char *name, const char *qual, json_t *cfg, err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err,
                       "INSERT OR REPLACE INTO event_invoke(name, qualifier, config) VALUES(?,?,?)",
                       "sss", name, qual, txt);
    free(txt);
    return rc;
}

int store_eic_delete(store_t *s, const char *name, const char *qual, err_t *err)
{
    if (exec_args(s, err, "DELETE FROM event_invoke WHERE name=? AND qualifier=?", "ss", name,
                  qual) < 0)
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return err_set(err, ENOENT, "no event invoke config for %s:%s", name, qual);
    return 0;
}

json_t *store_eic_list(store_t *s, const char *name)
{
    return query_json_array(s, "SELECT config FROM event_invoke WHERE name=? ORDER BY qualifier",
                            "s", name);
}

/* ---- tags ---- */

json_t *store_tags_get(store_t *s, const char *name)
{
    json_t *obj = json_object();
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT key, value FROM tags WHERE name=? ORDER BY key", -1,
                           &st, NULL) != SQLITE_OK)
        return obj;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        const char *v = (const char *)sqlite3_column_text(st, 1);
        if (k && v)
            json_object_set_new(obj, k, json_string(v));
    }
    sqlite3_finalize(st);
    return obj;
}

int store_tags_set(store_t *s, const char *name, json_t *obj, err_t *err)
{
    if (exec_args(s, err, "SAVEPOINT tags_set", NULL) < 0)
        return -1;
    int rc = exec_args(s, err, "DELETE FROM tags WHERE name=?", "s", name);
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        if (rc < 0)
            break;
        if (json_is_string(v))
            rc = exec_args(s, err, "INSERT INTO tags(name, key, value) VALUES(?,?,?)", "sss",
                           name, k, json_string_value(v));
    }
    if (rc < 0)
        exec_args(s, NULL, "ROLLBACK TO tags_set", NULL);
    exec_args(s, NULL, "RELEASE tags_set", NULL);
    return rc;
}

/* ---- code ---- */

char *store_code_dir(store_t *s, const char *hex) { return xasprintf("%s/code/%s", s->data_dir, hex); }
char *store_blob_path(store_t *s, const char *hex)
{
    return xasprintf("%s/blobs/%s.zip", s->data_dir, hex);
}

int store_put_code(store_t *s, const void *zip, size_t len, char hex[65], char b64[45], err_t *err)
{
    unsigned char digest[32];
    sha256(zip, len, digest);
    hex_encode(digest, 32, hex);
    char *enc = base64_encode(digest, 32);
    snprintf(b64, 45, "%s", enc);
    free(enc);

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
    char *hex = jstr(cfg, "_CodeHex");
    c->code_dir = store_code_dir(s, hex);
    free(hex);
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
    json_decref(cfg);
    json_decref(alias);
    free(arn);
    free(name);
    free(q);
    return rc;
}
