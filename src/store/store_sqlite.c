/* store_sqlite.c - the store's embedded backend: function metadata in
 * SQLite at DATA/flicker.db (one host; code stays under DATA/, see store.c).
 *
 * Schema (version 1, recorded in schema_version):
 *   functions(name PK, config JSON of $LATEST, code_size, reserved NULL|n,
 *             last_version: highest version number ever allocated)
 *   versions(name, version, config JSON, code_size)   PK(name, version)
 *   aliases(name, alias, config JSON)                  PK(name, alias)
 *   tags(name, key, value)                             PK(name, key)
 *   event_invoke(name, qualifier, config JSON)         PK(name, qualifier)
 * The database runs in WAL mode with a busy timeout; multi-step changes are
 * wrapped in store_begin/store_commit by the caller (BEGIN IMMEDIATE:
 * writers serialize, so a commit never conflicts). */
#include <errno.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "store/store_backend.h"

#define SCHEMA_VERSION 1

typedef struct sq {
    store_t base;
    sqlite3 *db;
} sq_t;

#define DB(s) (((sq_t *)(s))->db)

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
    if (sqlite3_prepare_v2(DB(s), sql, -1, &st, NULL) != SQLITE_OK) {
        log_error("store", "prepare %s: %s", sql, sqlite3_errmsg(DB(s)));
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
        return err_set(err, EIO, "database error: %s", sqlite3_errmsg(DB(s)));
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

/* ---- transactions ---- */

static int sq_begin(store_t *s, err_t *err) { return exec_args(s, err, "BEGIN IMMEDIATE", NULL); }
static int sq_commit(store_t *s, err_t *err) { return exec_args(s, err, "COMMIT", NULL); }
static void sq_rollback(store_t *s)
{
    if (!sqlite3_get_autocommit(DB(s)))
        sqlite3_exec(DB(s), "ROLLBACK", NULL, NULL, NULL);
}

/* ---- functions ---- */

static json_t *sq_fn_get(store_t *s, const char *name)
{
    return query_json(s, "SELECT config FROM functions WHERE name=?", "s", name);
}

static int sq_fn_insert(store_t *s, const char *name, json_t *latest, err_t *err)
{
    char *txt = dumps(latest);
    int rc = exec_args(s, err, "INSERT INTO functions(name, config, code_size) VALUES(?,?,?)",
                       "ssi", name, txt, code_size_of(latest));
    free(txt);
    return rc;
}

static int sq_fn_update(store_t *s, const char *name, json_t *latest, err_t *err)
{
    char *txt = dumps(latest);
    int rc = exec_args(s, err, "UPDATE functions SET config=?, code_size=? WHERE name=?", "sis",
                       txt, code_size_of(latest), name);
    free(txt);
    if (rc == 0 && sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "function %s not found", name);
    return rc;
}

static int sq_fn_delete(store_t *s, const char *name, err_t *err)
{
    /* a savepoint nests inside a caller's transaction, or is one */
    if (exec_args(s, err, "SAVEPOINT fn_delete", NULL) < 0)
        return -1;
    int rc = exec_args(s, err, "DELETE FROM functions WHERE name=?", "s", name);
    if (rc == 0 && sqlite3_changes(DB(s)) == 0)
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

static json_t *sq_fn_list(store_t *s)
{
    return query_json_array(s, "SELECT config FROM functions ORDER BY name", NULL);
}

static int sq_fn_count(store_t *s)
{
    return (int)query_int(s, 0, "SELECT COUNT(*) FROM functions", NULL);
}

static int sq_get_reserved(store_t *s, const char *name)
{
    return (int)query_int(s, -1, "SELECT reserved FROM functions WHERE name=?", "s", name);
}

static int sq_set_reserved(store_t *s, const char *name, int n, err_t *err)
{
    int rc = n >= 0 ? exec_args(s, err, "UPDATE functions SET reserved=? WHERE name=?", "is",
                                (long long)n, name)
                    : exec_args(s, err, "UPDATE functions SET reserved=NULL WHERE name=?", "s",
                                name);
    if (rc == 0 && sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "function %s not found", name);
    return rc;
}

static int sq_total_reserved(store_t *s)
{
    return (int)query_int(s, 0, "SELECT COALESCE(SUM(reserved),0) FROM functions", NULL);
}

static uint64_t sq_total_code_size(store_t *s)
{
    long long a = query_int(s, 0, "SELECT COALESCE(SUM(code_size),0) FROM functions", NULL);
    long long b = query_int(s, 0, "SELECT COALESCE(SUM(code_size),0) FROM versions", NULL);
    return (uint64_t)(a + b);
}

/* ---- versions ---- */

static long sq_next_version(store_t *s, const char *name, err_t *err)
{
    if (exec_args(s, err, "UPDATE functions SET last_version=last_version+1 WHERE name=?", "s",
                  name) < 0)
        return -1;
    if (sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "function %s not found", name);
    return (long)query_int(s, -1, "SELECT last_version FROM functions WHERE name=?", "s", name);
}

static long sq_last_version(store_t *s, const char *name)
{
    return (long)query_int(s, 0, "SELECT MAX(version) FROM versions WHERE name=?", "s", name);
}

static json_t *sq_version_get(store_t *s, const char *name, long version)
{
    return query_json(s, "SELECT config FROM versions WHERE name=? AND version=?", "si", name,
                      (long long)version);
}

static int sq_version_insert(store_t *s, const char *name, long version, json_t *cfg, err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err,
                       "INSERT INTO versions(name, version, config, code_size) VALUES(?,?,?,?)",
                       "sisi", name, (long long)version, txt, code_size_of(cfg));
    free(txt);
    return rc;
}

static int sq_version_update(store_t *s, const char *name, long version, json_t *cfg, err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err, "UPDATE versions SET config=? WHERE name=? AND version=?", "ssi",
                       txt, name, (long long)version);
    free(txt);
    if (rc == 0 && sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "version %ld of %s not found", version, name);
    return rc;
}

static int sq_version_delete(store_t *s, const char *name, long version, err_t *err)
{
    if (exec_args(s, err, "DELETE FROM versions WHERE name=? AND version=?", "si", name,
                  (long long)version) < 0)
        return -1;
    if (sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "version %ld of %s not found", version, name);
    char num[24];
    snprintf(num, sizeof num, "%ld", version);
    return exec_args(s, err, "DELETE FROM event_invoke WHERE name=? AND qualifier=?", "ss", name,
                     num);
}

static json_t *sq_version_list(store_t *s, const char *name)
{
    return query_json_array(s, "SELECT config FROM versions WHERE name=? ORDER BY version", "s",
                            name);
}

/* ---- aliases ---- */

static json_t *sq_alias_get(store_t *s, const char *name, const char *alias)
{
    return query_json(s, "SELECT config FROM aliases WHERE name=? AND alias=?", "ss", name, alias);
}

static int sq_alias_put(store_t *s, const char *name, const char *alias, json_t *cfg, int replace,
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

static int sq_alias_delete(store_t *s, const char *name, const char *alias, err_t *err)
{
    if (exec_args(s, err, "DELETE FROM aliases WHERE name=? AND alias=?", "ss", name, alias) < 0)
        return -1;
    if (sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "alias %s of %s not found", alias, name);
    return exec_args(s, err, "DELETE FROM event_invoke WHERE name=? AND qualifier=?", "ss", name,
                     alias);
}

static json_t *sq_alias_list(store_t *s, const char *name)
{
    return query_json_array(s, "SELECT config FROM aliases WHERE name=? ORDER BY alias", "s",
                            name);
}

/* ---- event-invoke configs ---- */

static json_t *sq_eic_get(store_t *s, const char *name, const char *qual)
{
    return query_json(s, "SELECT config FROM event_invoke WHERE name=? AND qualifier=?", "ss",
                      name, qual);
}

static int sq_eic_put(store_t *s, const char *name, const char *qual, json_t *cfg, err_t *err)
{
    char *txt = dumps(cfg);
    int rc = exec_args(s, err,
                       "INSERT OR REPLACE INTO event_invoke(name, qualifier, config) VALUES(?,?,?)",
                       "sss", name, qual, txt);
    free(txt);
    return rc;
}

static int sq_eic_delete(store_t *s, const char *name, const char *qual, err_t *err)
{
    if (exec_args(s, err, "DELETE FROM event_invoke WHERE name=? AND qualifier=?", "ss", name,
                  qual) < 0)
        return -1;
    if (sqlite3_changes(DB(s)) == 0)
        return err_set(err, ENOENT, "no event invoke config for %s:%s", name, qual);
    return 0;
}

static json_t *sq_eic_list(store_t *s, const char *name)
{
    return query_json_array(s, "SELECT config FROM event_invoke WHERE name=? ORDER BY qualifier",
                            "s", name);
}

/* ---- tags ---- */

static json_t *sq_tags_get(store_t *s, const char *name)
{
    json_t *obj = json_object();
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(DB(s), "SELECT key, value FROM tags WHERE name=? ORDER BY key", -1,
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

static int sq_tags_set(store_t *s, const char *name, json_t *obj, err_t *err)
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

/* ---- open / close ---- */

static void sq_close(store_t *s);
static const store_ops_t sqlite_ops = {
    .close = sq_close,
    .fn_get = sq_fn_get,
    .fn_insert = sq_fn_insert,
    .fn_update = sq_fn_update,
    .fn_delete = sq_fn_delete,
    .fn_list = sq_fn_list,
    .fn_count = sq_fn_count,
    .get_reserved = sq_get_reserved,
    .set_reserved = sq_set_reserved,
    .total_reserved = sq_total_reserved,
    .total_code_size = sq_total_code_size,
    .next_version = sq_next_version,
    .last_version = sq_last_version,
    .version_get = sq_version_get,
    .version_insert = sq_version_insert,
    .version_update = sq_version_update,
    .version_delete = sq_version_delete,
    .version_list = sq_version_list,
    .alias_get = sq_alias_get,
    .alias_put = sq_alias_put,
    .alias_delete = sq_alias_delete,
    .alias_list = sq_alias_list,
    .eic_get = sq_eic_get,
    .eic_put = sq_eic_put,
    .eic_delete = sq_eic_delete,
    .eic_list = sq_eic_list,
    .tags_get = sq_tags_get,
    .tags_set = sq_tags_set,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
};

static void sq_close(store_t *s)
{
    if (DB(s))
        sqlite3_close(DB(s));
    store_base_free(s);
    free(s);
}

store_t *store_sqlite_open(const char *data_dir, const char *region, const char *account_id,
                           err_t *err)
{
    sq_t *q = xcalloc(1, sizeof *q);
    store_base_init(&q->base, &sqlite_ops, data_dir, region, account_id);
    store_t *s = &q->base;
    char *path = xasprintf("%s/flicker.db", data_dir);
    int src = sqlite3_open_v2(path, &q->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                              NULL);
    free(path);
    if (src != SQLITE_OK) {
        err_set(err, EIO, "open database in %s: %s", data_dir,
                q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(src));
        sq_close(s);
        return NULL;
    }
    sqlite3_busy_timeout(q->db, 5000);
    char *emsg = NULL;
    if (sqlite3_exec(q->db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", NULL, NULL,
                     &emsg) != SQLITE_OK ||
        sqlite3_exec(q->db, SCHEMA, NULL, NULL, &emsg) != SQLITE_OK) {
        err_set(err, EIO, "initialize database: %s", emsg ? emsg : "?");
        sqlite3_free(emsg);
        sq_close(s);
        return NULL;
    }
    long long ver = query_int(s, -1, "SELECT version FROM schema_version", NULL);
    if (ver < 0) {
        exec_args(s, NULL, "INSERT INTO schema_version(version) VALUES(?)", "i",
                  (long long)SCHEMA_VERSION);
    } else if (ver != SCHEMA_VERSION) {
        err_set(err, EINVAL, "database schema version %lld is not supported (want %d)", ver,
                SCHEMA_VERSION);
        sq_close(s);
        return NULL;
    }
    return s;
}
