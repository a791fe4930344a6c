/* store.h - function metadata and code (content-addressed).
 *
 * The store owns everything the control plane persists: functions, their
 * $LATEST configuration, published versions, aliases, reserved concurrency,
 * tags.  The metadata lives in SQLite on this host (the embedded default)
 * or in etcd, shared by every host (docs/store.md).  Code zips are kept
 * once per SHA-256 under DATA/blobs/ and extracted once, read-only, under
 * DATA/code/<sha256hex>/ (hostile zips are refused at upload: see
 * store_put_code); with etcd also as content-addressed chunks in etcd, from
 * which other hosts fetch them (store_ensure_code).  All calls run on the
 * caller's thread; the store is not thread-safe (the frontend owns it).
 *
 * Invariants: a version's configuration and code never change after
 * PublishVersion; $LATEST's RevisionId changes on every update; an alias
 * points at a published version or $LATEST. */
#ifndef FLICKER_STORE_H
#define FLICKER_STORE_H
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include "common/err.h"

typedef struct store store_t;

/* Everything needed to run one function version: a snapshot, owned by the
 * caller, freed with fn_config_free(). */
typedef struct fn_config {
    char *name;            /* FunctionName */
    char *version;         /* "$LATEST" or "1", "2", ... */
    char *arn;             /* unqualified function ARN */
    char *runtime;         /* e.g. "python3.12", "provided.al2023" */
    char *handler;         /* may be "" for provided runtimes */
    int memory_mb;
    int timeout_s;
    int ephemeral_mb;
    json_t *env_vars;      /* object of string->string (never NULL) */
    char *code_sha256;     /* base64 CodeSha256 as Lambda reports it */
    char *code_dir;        /* host path of the extracted, read-only code (on
                              the host that resolved the config) */
    char *code_hex;        /* lowercase hex SHA-256 of the zip: names the code
                              on every host (a worker re-roots code_dir on it) */
    char *revision_id;     /* changes whenever the config or code changes */
    int reserved_concurrency; /* -1 when not set */
    char *config_key;      /* identifies this exact runnable config:
                              environments are reusable only for equal keys
                              ("name:version:revision_id") */
    char *alias;           /* alias the reference went through, else NULL */
    char *qualified_arn;   /* ARN of the version run (":$LATEST" or ":N") */
    /* Asynchronous invocation (PutFunctionEventInvokeConfig) of the
     * qualifier the reference used (alias, version, or $LATEST): */
    int max_retry_attempts; /* 0-2, default 2 */
    int max_event_age_s;    /* 60-21600, default 21600 */
    char *on_success;       /* destination ARN, or NULL */
    char *on_failure;       /* destination ARN, or NULL */
    char *isolation;        /* tag flicker:isolation ("sandbox"/"microvm"), or NULL:
                               the worker's default */
    /* SnapStart (published versions of functions with ApplyOn
     * PublishedVersions): */
    int snap_start;         /* runtimes see AWS_LAMBDA_INITIALIZATION_TYPE=snap-start */
    int snap_pending;       /* the version's snapshot is still being made */
    char *snapshot_path;    /* its snapshot (restore instead of Init), or NULL */
} fn_config_t;

/* Opens (creating if needed) DATA/flicker.db and the blob directories. */
store_t *store_open(const char *data_dir, const char *region, const char *account_id, err_t *err);
/* Opens the store a spec names, with DATA's blob and code directories
 * (removing extraction temp dirs a crash left there):
 *   "sqlite" (or NULL/""): DATA/flicker.db, as store_open;
 *   "etcd:URL,URL,...[;prefix=/p]": etcd, keys under /p (default
 *     STORE_ETCD_PREFIX).  No request is made: an unreachable cluster
 *     shows on the first call.
 * Returns the store, or NULL/err (EINVAL: bad spec). */
#define STORE_ETCD_PREFIX "/flicker/store"
store_t *store_open_spec(const char *spec, const char *data_dir, const char *region,
                         const char *account_id, err_t *err);
/* Opens a store only to fetch code into data_dir (a worker): like
 * store_open_spec but leaves DATA/code's temp dirs alone (other processes
 * of this host may be extracting there). */
store_t *store_open_worker(const char *spec, const char *data_dir, err_t *err);
void store_close(store_t *store);
/* 1 when other hosts can fetch code from this store (etcd), else 0. */
int store_is_distributed(store_t *store);
/* A commit that lost an optimistic race with another writer (etcd) fails
 * with this err->code; the control plane answers 409 ResourceConflict. */
#define STORE_ECONFLICT EBUSY

/* Resolves a function reference the way Invoke does: name may be a name,
 * "name:qualifier", a partial ARN ("123456789012:function:name") or a full
 * ARN (with or without qualifier); qualifier (may be NULL) is a version,
 * "$LATEST" or an alias; an alias with weighted routing picks a version at
 * random by weight and reports the alias in *out.  Returns 0 and a fresh
 * *out, or -1 with err->code = ENOENT (ResourceNotFound) or EINVAL
 * (name/qualifier conflict or malformed: InvalidParameterValue). */
int store_resolve(store_t *store, const char *name, const char *qualifier, fn_config_t **out,
                  err_t *err);
void fn_config_free(fn_config_t *cfg);

/* A configuration as JSON (for RPCs between roles) and back.  from_json
 * returns a fresh config or NULL with err (EINVAL) when fields are
 * missing or invalid. */
json_t *fn_config_to_json(const fn_config_t *cfg);
fn_config_t *fn_config_from_json(json_t *obj, err_t *err);

/* Splits a function reference (name, "name:qualifier", partial ARN
 * "ACCOUNT:function:name[:q]", full ARN "arn:aws:lambda:REGION:ACCOUNT:
 * function:name[:q]") into a malloc'd *name (1-64 of [A-Za-z0-9_-]) and
 * *qual (NULL when none; 1-128 of [A-Za-z0-9$_-]).  Returns 0, or -1 with
 * err->code EINVAL (malformed) or ENOENT (ARN of another region/account). */
int store_parse_ref(store_t *store, const char *ref, char **name, char **qual, err_t *err);

/* Sum of all functions' reserved concurrency. */
int store_total_reserved(store_t *store);

/* ---- Lower-level API used by the control plane (frontend/control.c) ----
 *
 * Configurations are stored as JSON objects in the FunctionConfiguration
 * shape Lambda returns, plus internal members whose names start with '_'
 * (the control plane strips them before answering):
 *   _CodeHex       lowercase hex SHA-256 of the zip (names blob and code dir)
 *   _SourceRevision (versions) the $LATEST RevisionId it was published from
 * Aliases are stored as AliasConfiguration objects.  Functions that return
 * json_t * return a new reference (NULL when absent); setters borrow.
 * Errors: -1 with err->code ENOENT (missing), EEXIST (duplicate) or EIO. */

/* Transactions.  Not nestable.  SQLite: BEGIN IMMEDIATE / COMMIT /
 * ROLLBACK (writers serialize).  etcd: optimistic; reads record what they
 * saw, writes are buffered (and seen by the transaction's own reads) and
 * store_commit applies them all or none: -1 with err->code STORE_ECONFLICT
 * when another writer changed a key this transaction read.  After a
 * failed store_commit the caller still calls store_rollback (harmless). */
int store_begin(store_t *store, err_t *err);
int store_commit(store_t *store, err_t *err);
void store_rollback(store_t *store);

const char *store_region(store_t *store);
const char *store_account(store_t *store);
const char *store_data_dir(store_t *store);

/* $LATEST configuration of a function, or NULL. */
json_t *store_fn_get(store_t *store, const char *name);
/* Inserts a new function (EEXIST if present) with its $LATEST config. */
int store_fn_insert(store_t *store, const char *name, json_t *latest, err_t *err);
/* Replaces $LATEST (ENOENT if absent). */
int store_fn_update(store_t *store, const char *name, json_t *latest, err_t *err);
/* Deletes a function with its versions, aliases, tags and concurrency. */
int store_fn_delete(store_t *store, const char *name, err_t *err);
/* All functions' $LATEST configs, ordered by name (byte order). */
json_t *store_fn_list(store_t *store);
int store_fn_count(store_t *store);

/* Reserved concurrency of a function: >= 0, or -1 when not set / no function. */
int store_get_reserved(store_t *store, const char *name);
/* Sets (n >= 0) or clears (n < 0) the reserved concurrency. */
int store_set_reserved(store_t *store, const char *name, int n, err_t *err);

/* Allocates the next version number of a function (never reused, even
 * after deletions): returns >= 1, or -1/err. */
long store_next_version(store_t *store, const char *name, err_t *err);
/* Highest existing published version, or 0 when none. */
long store_last_version(store_t *store, const char *name);
json_t *store_version_get(store_t *store, const char *name, long version);
int store_version_insert(store_t *store, const char *name, long version, json_t *cfg,
                         err_t *err);
/* Replaces a version's stored config: only for what the platform learns
 * after publishing (its SnapStart snapshot state), never code or settings. */
int store_version_update(store_t *store, const char *name, long version, json_t *cfg,
                         err_t *err);
int store_version_delete(store_t *store, const char *name, long version, err_t *err);
/* Published versions' configs ordered by number (without $LATEST). */
json_t *store_version_list(store_t *store, const char *name);

json_t *store_alias_get(store_t *store, const char *name, const char *alias);
/* Inserts (EEXIST if present) or, with replace, overwrites an alias. */
int store_alias_put(store_t *store, const char *name, const char *alias, json_t *cfg,
                    int replace, err_t *err);
int store_alias_delete(store_t *store, const char *name, const char *alias, err_t *err);
/* Aliases ordered by name. */
json_t *store_alias_list(store_t *store, const char *name);

/* Event-invoke configs, one per (function, qualifier: "$LATEST", a version
 * number or an alias), stored as FunctionEventInvokeConfig objects.
 * Deleting the function, version or alias deletes its config. */
json_t *store_eic_get(store_t *store, const char *name, const char *qual);
int store_eic_put(store_t *store, const char *name, const char *qual, json_t *cfg, err_t *err);
int store_eic_delete(store_t *store, const char *name, const char *qual, err_t *err);
/* All configs of a function ordered by qualifier. */
json_t *store_eic_list(store_t *store, const char *name);

/* Tags of a function as an object (empty object when none). */
json_t *store_tags_get(store_t *store, const char *name);
/* Replaces all tags of a function with obj (string values). */
int store_tags_set(store_t *store, const char *name, json_t *obj, err_t *err);

/* Sum of CodeSize over every $LATEST and published version. */
uint64_t store_total_code_size(store_t *store);

/* Code.  store_put_code validates the zip (see codezip.h), keeps it at
 * DATA/blobs/<hex>.zip and extracted at DATA/code/<hex>/ (both reused when
 * already present: the directory name is the content hash).  On success
 * fills hex[65] and b64[45] (the CodeSha256) and returns 0; on failure
 * -1 with err->code EINVAL (bad or hostile zip), EFBIG (unzipped limit), or
 * an I/O errno, and err->msg fit for the client for EINVAL/EFBIG. */
int store_put_code(store_t *store, const void *zip, size_t len, char hex[65], char b64[45],
                   err_t *err);
/* Makes sure the code whose SHA-256 is hex (64 lowercase hex digits) is
 * extracted on this host and sets *dir (malloc'd) to DATA/code/<hex>: if
 * absent, fetches it from a distributed store (every chunk and the whole
 * zip verified against their SHA-256), keeps it in DATA/blobs/ and
 * extracts it as store_put_code does (codezip.c).  Processes sharing DATA
 * fetch a code once (a lock file per code, then temp + rename).  Returns 0,
 * or -1/err: EINVAL (bad hex), ENOENT (not stored; a local store has only
 * what was put here), EIO (missing or corrupt chunk, etcd unreachable),
 * or the extraction's error; err->msg says which. */
int store_ensure_code(store_t *store, const char *hex, char **dir, err_t *err);
/* 1 when hex is 64 lowercase hex digits. */
int store_hex_valid(const char *hex);
/* Host paths of a code blob / extracted tree (malloc'd). */
char *store_code_dir(store_t *store, const char *hex);
char *store_blob_path(store_t *store, const char *hex);
/* Overrides the unzipped-size limit (tests only; default 262144000). */
void store_set_unzipped_limit(store_t *store, uint64_t limit);
#endif
