/* asg_table.h - the assignment service's replicated environment table, as a
 * pure state machine (no I/O, no clock, no threads).
 *
 * Every replica applies the same journal records in the same order and so
 * holds the same table.  Records (docs/protocol.md, "Assignment"):
 *   {"op":"add","env_id","worker_id","worker_address","config_key","function","memory_mb"}
 *       -> a new environment in state initializing, at the front (MRU end)
 *   {"op":"state","env_id","state":"idle"|"busy"|"initializing"}
 *       -> state change; "idle" also moves the env to the front (most
 *          recently used first, so warm starts reuse the hottest one)
 *   {"op":"remove","env_id"} -> the environment is gone
 * A snapshot is {"envs":[{env_id, worker_id, worker_address, config_key,
 * function, memory_mb, state}...]} in MRU order; loading it gives exactly
 * the table that produced it.
 *
 * Invariants: env ids are unique; the list order is a pure function of the
 * applied records; applying a record that names an unknown env (state,
 * remove) or re-adds a known one is a no-op that returns 1 (so replaying a
 * suffix twice is harmless).  The `unreserved`, `stale` and `aux` fields are the
 * owner's volatile per-replica data: never journaled or snapshotted. */
#ifndef FLICKER_ASG_TABLE_H
#define FLICKER_ASG_TABLE_H
#include <jansson.h>
#include <stdbool.h>
#include "common/err.h"

enum asg_state { ASG_INITIALIZING, ASG_IDLE, ASG_BUSY };

typedef struct asg_env {
    char *env_id, *worker_id, *worker_address, *config_key, *function;
    int memory_mb;
    enum asg_state state;
    bool unreserved;          /* volatile (leader): holder counts in the unreserved pool */
    bool stale;               /* volatile (leader): retired, remove when released */
    void *aux;                /* volatile: owner's data (e.g. a keep-alive timer) */
    struct asg_env *next, *prev;
} asg_env_t;

typedef struct asg_table asg_table_t;
/* Called just before an env leaves the table (remove, clear, free, load),
 * so the owner can release env->aux. */
typedef void (*asg_remove_fn)(asg_env_t *env, void *arg);

asg_table_t *asg_table_new(void);
void asg_table_free(asg_table_t *t);
void asg_table_set_remove_cb(asg_table_t *t, asg_remove_fn cb, void *arg);
/* Removes every env (calling the remove callback for each). */
void asg_table_clear(asg_table_t *t);

/* Applies one record.  Returns 0 when it changed the table, 1 when it was a
 * no-op (unknown env / duplicate add), -1/err when malformed (table
 * unchanged). */
int asg_table_apply(asg_table_t *t, json_t *rec, err_t *err);
/* Same, from the record's JSON text. */
int asg_table_apply_text(asg_table_t *t, const char *data, size_t len, err_t *err);

/* Snapshot: a new {"envs":[...]} (caller owns).  Load replaces the whole
 * table; -1/err on a malformed snapshot (table then empty). */
json_t *asg_table_snapshot(const asg_table_t *t);
int asg_table_load(asg_table_t *t, json_t *snap, err_t *err);

/* Queries.  Pointers stay valid until the env is removed. */
asg_env_t *asg_table_get(const asg_table_t *t, const char *env_id);
/* The most recently used idle env with this config_key, or NULL. */
asg_env_t *asg_table_idle_for(const asg_table_t *t, const char *config_key);
/* Iteration in MRU order: first, then env->next. */
asg_env_t *asg_table_first(const asg_table_t *t);
int asg_table_count(const asg_table_t *t);
int asg_table_count_state(const asg_table_t *t, enum asg_state st);
/* Envs of `function` (any state), optionally only those in state st (-1: all). */
int asg_table_count_function(const asg_table_t *t, const char *function, int st);

const char *asg_state_name(enum asg_state st);
int asg_state_parse(const char *s, enum asg_state *out);
/* Record builders (new references). */
json_t *asg_rec_add(const char *env_id, const char *worker_id, const char *worker_address,
                    const char *config_key, const char *function, int memory_mb);
json_t *asg_rec_state(const char *env_id, enum asg_state st);
json_t *asg_rec_remove(const char *env_id);
#endif
