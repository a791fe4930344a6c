/* store_backend.h - the seam between the store's API (store.h) and where
 * the metadata lives: SQLite on this host (store_sqlite.c) or etcd
 * (store_etcd.c).  Internal to src/store/.
 *
 * store.c owns what is the same for every backend: reference parsing and
 * resolution, code extraction under DATA/ (blobs and code dirs), and the
 * public wrappers.  A backend implements every metadata operation with the
 * semantics store.h states for it (EEXIST/ENOENT, cascades, ordering), and
 * may keep code elsewhere too (put_code/fetch_code; NULL: local only).
 * A backend's handle starts with a store_t whose ops point at its table. */
#ifndef FLICKER_STORE_BACKEND_H
#define FLICKER_STORE_BACKEND_H
#include "store/store.h"

typedef struct store_ops {
    void (*close)(store_t *s);
    int (*begin)(store_t *s, err_t *err);
    int (*commit)(store_t *s, err_t *err);
    void (*rollback)(store_t *s);

    json_t *(*fn_get)(store_t *s, const char *name);
    int (*fn_insert)(store_t *s, const char *name, json_t *latest, err_t *err);
    int (*fn_update)(store_t *s, const char *name, json_t *latest, err_t *err);
    int (*fn_delete)(store_t *s, const char *name, err_t *err);
    json_t *(*fn_list)(store_t *s);
    int (*fn_count)(store_t *s);
    int (*get_reserved)(store_t *s, const char *name);
    int (*set_reserved)(store_t *s, const char *name, int n, err_t *err);
    int (*total_reserved)(store_t *s);
    uint64_t (*total_code_size)(store_t *s);

    long (*next_version)(store_t *s, const char *name, err_t *err);
    long (*last_version)(store_t *s, const char *name);
    json_t *(*version_get)(store_t *s, const char *name, long version);
    int (*version_insert)(store_t *s, const char *name, long version, json_t *cfg, err_t *err);
    int (*version_update)(store_t *s, const char *name, long version, json_t *cfg, err_t *err);
    int (*version_delete)(store_t *s, const char *name, long version, err_t *err);
    json_t *(*version_list)(store_t *s, const char *name);

    json_t *(*alias_get)(store_t *s, const char *name, const char *alias);
    int (*alias_put)(store_t *s, const char *name, const char *alias, json_t *cfg, int replace,
                     err_t *err);
    int (*alias_delete)(store_t *s, const char *name, const char *alias, err_t *err);
    json_t *(*alias_list)(store_t *s, const char *name);

    json_t *(*eic_get)(store_t *s, const char *name, const char *qual);
    int (*eic_put)(store_t *s, const char *name, const char *qual, json_t *cfg, err_t *err);
    int (*eic_delete)(store_t *s, const char *name, const char *qual, err_t *err);
    json_t *(*eic_list)(store_t *s, const char *name);

    json_t *(*tags_get)(store_t *s, const char *name);
    int (*tags_set)(store_t *s, const char *name, json_t *obj, err_t *err);

    /* Optional.  put_code: keeps a validated zip (SHA-256 hex) where other
     * hosts can fetch it.  fetch_code: returns 0 and the malloc'd zip of
     * hex (verified against hex), or -1/err (ENOENT: not stored). */
    int (*put_code)(store_t *s, const void *zip, size_t len, const char *hex, err_t *err);
    int (*fetch_code)(store_t *s, const char *hex, void **zip, size_t *len, err_t *err);
    /* Optional: store_resolve is about to read the documents of
     * name[:qual] outside a transaction: read them in one request and
     * answer those reads from it until resolve_done. */
    void (*resolve_prefetch)(store_t *s, const char *name, const char *qual);
    void (*resolve_done)(store_t *s);
} store_ops_t;

struct store {
    const store_ops_t *ops;
    char *data_dir;
    char *region;
    char *account;
    uint64_t max_unzipped;
};

/* Fills the common part (copies the strings); the caller owns b. */
void store_base_init(store_t *b, const store_ops_t *ops, const char *data_dir,
                     const char *region, const char *account);
void store_base_free(store_t *b);

/* The backends' constructors: a store on DATA/flicker.db, or on etcd
 * (endpoints comma-separated, keys under prefix).  Both take an already
 * prepared data dir. */
store_t *store_sqlite_open(const char *data_dir, const char *region, const char *account,
                           err_t *err);
store_t *store_etcd_open(const char *endpoints, const char *prefix, const char *data_dir,
                         const char *region, const char *account, err_t *err);

/* Key-safe rendering of a version number (zero-padded, sorts numerically). */
#define STORE_VERSION_DIGITS 10
#endif
