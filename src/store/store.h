/* store.h - function metadata (SQLite) and code (content-addressed files).
 *
 * The store owns everything the control plane persists: functions, their
 * $LATEST configuration, published versions, aliases, reserved concurrency,
 * tags.  Code zips are kept once per SHA-256 under DATA/blobs/ and
 * extracted once, read-only, under DATA/code/<sha256hex>/ (hostile zips are
 * refused at upload: see store_put_code).  All calls run on the caller's
 * thread; the store is not thread-safe (the frontend owns it).
 *
 * Invariants: a version's configuration and code never change after
 * PublishVersion; $LATEST's RevisionId changes on every update; an alias
 * points at a published version or $LATEST. */
#ifndef FLICKER_STORE_H
#define FLICKER_STORE_H
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
    char *code_dir;        /* host path of the extracted, read-only code */
    char *revision_id;     /* changes whenever the config or code changes */
    int reserved_concurrency; /* -1 when not set */
    char *config_key;      /* identifies this exact runnable config:
                              environments are reusable only for equal keys */
} fn_config_t;

/* Opens (creating if needed) DATA/flicker.db and the blob directories. */
store_t *store_open(const char *data_dir, const char *region, const char *account_id, err_t *err);
void store_close(store_t *store);

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

/* Sum of all functions' reserved concurrency. */
int store_total_reserved(store_t *store);
#endif
