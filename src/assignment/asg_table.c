/* asg_table.c - see asg_table.h.
 *
 * A doubly linked list in MRU order plus a small open hash (env_id ->
 * env) for O(1) lookups by id; idle_for walks the list (tables are
 * per-service and hold thousands of envs at most).  Pure: no clock, no
 * I/O, so replicas that apply the same records end equal. */
#include "assignment/asg_table.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "common/util.h"

struct asg_table {
    asg_env_t *head;
    int n;
    asg_env_t **slots;   /* open addressing, linear probing; tombstones */
    size_t cap;          /* power of two */
    size_t used;         /* live + tombstones */
    asg_remove_fn rm_cb;
    void *rm_arg;
};

static asg_env_t TOMB;

static size_t hash_str(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void hash_put(asg_table_t *t, asg_env_t *e);

static void hash_grow(asg_table_t *t)
{
    asg_env_t **old = t->slots;
    size_t oldcap = t->cap;
    t->cap = oldcap ? oldcap * 2 : 64;
    while ((size_t)t->n * 2 >= t->cap)
        t->cap *= 2;
    t->slots = xcalloc(t->cap, sizeof *t->slots);
    t->used = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i] && old[i] != &TOMB)
            hash_put(t, old[i]);
    free(old);
}

static void hash_put(asg_table_t *t, asg_env_t *e)
{
    if ((t->used + 1) * 2 > t->cap)
        hash_grow(t);
    size_t i = hash_str(e->env_id) & (t->cap - 1);
    while (t->slots[i] && t->slots[i] != &TOMB)
        i = (i + 1) & (t->cap - 1);
    if (!t->slots[i])
        t->used++;
    t->slots[i] = e;
}

static asg_env_t **hash_find(const asg_table_t *t, const char *id)
{
    if (!t->cap)
        return NULL;
    size_t i = hash_str(id) & (t->cap - 1);
    while (t->slots[i]) {
        if (t->slots[i] != &TOMB && !strcmp(t->slots[i]->env_id, id))
            return &t->slots[i];
        i = (i + 1) & (t->cap - 1);
    }
    return NULL;
}

asg_table_t *asg_table_new(void) { return xcalloc(1, sizeof(asg_table_t)); }

void asg_table_set_remove_cb(asg_table_t *t, asg_remove_fn cb, void *arg)
{
    t->rm_cb = cb;
    t->rm_arg = arg;
}

static void unlink_env(asg_table_t *t, asg_env_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        t->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->next = e->prev = NULL;
}

static void push_front(asg_table_t *t, asg_env_t *e)
{
    e->prev = NULL;
    e->next = t->head;
    if (t->head)
        t->head->prev = e;
    t->head = e;
}

static void env_free(asg_env_t *e)
{
    free(e->env_id);
    free(e->worker_id);
    free(e->worker_address);
    free(e->config_key);
    free(e->function);
    free(e);
}

static void remove_env(asg_table_t *t, asg_env_t *e)
{
    if (t->rm_cb)
        t->rm_cb(e, t->rm_arg);
    asg_env_t **slot = hash_find(t, e->env_id);
    if (slot)
        *slot = &TOMB;
    unlink_env(t, e);
    t->n--;
    env_free(e);
}

void asg_table_clear(asg_table_t *t)
{
    while (t->head)
        remove_env(t, t->head);
    free(t->slots);
    t->slots = NULL;
    t->cap = t->used = 0;
}

void asg_table_free(asg_table_t *t)
{
    if (!t)
        return;
    asg_table_clear(t);
    free(t);
}

const char *asg_state_name(enum asg_state st)
{
    return st == ASG_IDLE ? "idle" : st == ASG_BUSY ? "busy" : "initializing";
}

int asg_state_parse(const char *s, enum asg_state *out)
{
    if (!s)
        return -1;
    if (!strcmp(s, "idle"))
        *out = ASG_IDLE;
    else if (!strcmp(s, "busy"))
        *out = ASG_BUSY;
    else if (!strcmp(s, "initializing"))
        *out = ASG_INITIALIZING;
    else
        return -1;
    return 0;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* Adds from an add record / snapshot entry; at_front: MRU insert (records)
 * or append at the tail (snapshot load keeps the saved order). */
static int add_env(asg_table_t *t, json_t *o, bool at_front, enum asg_state st, err_t *err)
{
    const char *id = jstr(o, "env_id"), *wid = jstr(o, "worker_id"),
               *wa = jstr(o, "worker_address"), *key = jstr(o, "config_key"),
               *fn = jstr(o, "function");
    json_t *mem = json_object_get(o, "memory_mb");
    if (!id || !*id || !wid || !wa || !key || !fn || !json_is_integer(mem))
        return err_set(err, EINVAL, "add: missing or bad field");
    if (asg_table_get(t, id))
        return 1;
    asg_env_t *e = xcalloc(1, sizeof *e);
    e->env_id = xstrdup(id);
    e->worker_id = xstrdup(wid);
    e->worker_address = xstrdup(wa);
    e->config_key = xstrdup(key);
    e->function = xstrdup(fn);
    e->memory_mb = (int)json_integer_value(mem);
    e->state = st;
    if (at_front || !t->head) {
        push_front(t, e);
    } else {
        asg_env_t *tail = t->head;
        while (tail->next)
            tail = tail->next;
        tail->next = e;
        e->prev = tail;
    }
    t->n++;
    hash_put(t, e);
    return 0;
}

int asg_table_apply(asg_table_t *t, json_t *rec, err_t *err)
{
    const char *op = jstr(rec, "op");
    if (!json_is_object(rec) || !op)
        return err_set(err, EINVAL, "record without op");
    if (!strcmp(op, "add"))
        return add_env(t, rec, true, ASG_INITIALIZING, err);
    const char *id = jstr(rec, "env_id");
    if (!id)
        return err_set(err, EINVAL, "%s: no env_id", op);
    if (!strcmp(op, "state")) {
        enum asg_state st;
        if (asg_state_parse(jstr(rec, "state"), &st) < 0)
            return err_set(err, EINVAL, "state: bad state");
        asg_env_t *e = asg_table_get(t, id);
        if (!e)
            return 1;
        e->state = st;
        if (st == ASG_IDLE) {
            unlink_env(t, e);
            push_front(t, e);
        }
        return 0;
    }
    if (!strcmp(op, "remove")) {
        asg_env_t *e = asg_table_get(t, id);
        if (!e)
            return 1;
        remove_env(t, e);
        return 0;
    }
    return err_set(err, EINVAL, "unknown op '%s'", op);
}

int asg_table_apply_text(asg_table_t *t, const char *data, size_t len, err_t *err)
{
    json_error_t je;
    json_t *rec = json_loadb(data, len, 0, &je);
    if (!rec)
        return err_set(err, EINVAL, "record: %s", je.text);
    int r = asg_table_apply(t, rec, err);
    json_decref(rec);
    return r;
}

json_t *asg_table_snapshot(const asg_table_t *t)
{
    json_t *arr = json_array();
    for (asg_env_t *e = t->head; e; e = e->next)
        json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:s}", "env_id", e->env_id,
                                             "worker_id", e->worker_id, "worker_address",
                                             e->worker_address, "config_key", e->config_key,
                                             "function", e->function, "memory_mb", e->memory_mb,
                                             "state", asg_state_name(e->state)));
    return json_pack("{s:o}", "envs", arr);
}

int asg_table_load(asg_table_t *t, json_t *snap, err_t *err)
{
    asg_table_clear(t);
    json_t *envs = json_object_get(snap, "envs");
    if (!json_is_array(envs))
        return err_set(err, EINVAL, "snapshot: no envs array");
    size_t i;
    json_t *o;
    json_array_foreach(envs, i, o) {
        enum asg_state st;
        if (asg_state_parse(jstr(o, "state"), &st) < 0 || add_env(t, o, false, st, err) < 0) {
            asg_table_clear(t);
            return err_set(err, EINVAL, "snapshot: bad env %zu", i);
        }
    }
    return 0;
}

asg_env_t *asg_table_get(const asg_table_t *t, const char *env_id)
{
    asg_env_t **s = env_id ? hash_find(t, env_id) : NULL;
    return s ? *s : NULL;
}

asg_env_t *asg_table_idle_for(const asg_table_t *t, const char *config_key)
{
    for (asg_env_t *e = t->head; e; e = e->next)
        if (e->state == ASG_IDLE && !strcmp(e->config_key, config_key))
            return e;
    return NULL;
}

asg_env_t *asg_table_first(const asg_table_t *t) { return t->head; }
int asg_table_count(const asg_table_t *t) { return t->n; }

int asg_table_count_state(const asg_table_t *t, enum asg_state st)
{
    int n = 0;
    for (asg_env_t *e = t->head; e; e = e->next)
        n += e->state == st;
    return n;
}

int asg_table_count_function(const asg_table_t *t, const char *function, int st)
{
    int n = 0;
    for (asg_env_t *e = t->head; e; e = e->next)
        n += !strcmp(e->function, function) && (st < 0 || (int)e->state == st);
    return n;
}

json_t *asg_rec_add(const char *env_id, const char *worker_id, const char *worker_address,
                    const char *config_key, const char *function, int memory_mb)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:i}", "op", "add", "env_id", env_id, "worker_id",
                     worker_id, "worker_address", worker_address, "config_key", config_key,
                     "function", function, "memory_mb", memory_mb);
}

json_t *asg_rec_state(const char *env_id, enum asg_state st)
{
    return json_pack("{s:s,s:s,s:s}", "op", "state", "env_id", env_id, "state", asg_state_name(st));
}

json_t *asg_rec_remove(const char *env_id)
{
    return json_pack("{s:s,s:s}", "op", "remove", "env_id", env_id);
}
