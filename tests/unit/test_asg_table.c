/* test_asg_table.c - the assignment table as a pure state machine: apply
 * add/state/remove records, MRU order of idle envs, no-op records,
 * malformed records, snapshot round trip, and replay equality. */
#include "check.h"
#include "assignment/asg_table.h"
#include "assignment/assignment.h"

static void add(asg_table_t *t, const char *id, const char *key, const char *fn)
{
    json_t *r = asg_rec_add(id, "w1", "tcp:127.0.0.1:1", key, fn, 128);
    asg_table_apply(t, r, NULL);
    json_decref(r);
}
static int st(asg_table_t *t, const char *id, enum asg_state s)
{
    json_t *r = asg_rec_state(id, s);
    int rc = asg_table_apply(t, r, NULL);
    json_decref(r);
    return rc;
}

static void test_apply_and_queries(void)
{
    asg_table_t *t = asg_table_new();
    add(t, "e1", "k1", "f");
    add(t, "e2", "k1", "f");
    add(t, "e3", "k2", "g");
    CHECK(asg_table_count(t) == 3);
    CHECK(asg_table_count_state(t, ASG_INITIALIZING) == 3);
    CHECK(asg_table_idle_for(t, "k1") == NULL);
    CHECK(st(t, "e1", ASG_IDLE) == 0);
    CHECK(st(t, "e2", ASG_IDLE) == 0);
    /* e2 released last: most recently used first */
    CHECK_STR(asg_table_idle_for(t, "k1")->env_id, "e2");
    CHECK(st(t, "e2", ASG_BUSY) == 0);
    CHECK_STR(asg_table_idle_for(t, "k1")->env_id, "e1");
    CHECK(asg_table_count_function(t, "f", -1) == 2);
    CHECK(asg_table_count_function(t, "f", ASG_BUSY) == 1);
    CHECK(st(t, "nope", ASG_IDLE) == 1);          /* unknown: no-op */
    json_t *rm = asg_rec_remove("e1");
    CHECK(asg_table_apply(t, rm, NULL) == 0);
    CHECK(asg_table_apply(t, rm, NULL) == 1);     /* twice: no-op */
    json_decref(rm);
    CHECK(asg_table_get(t, "e1") == NULL);
    CHECK(asg_table_idle_for(t, "k1") == NULL);
    add(t, "e2", "kx", "x");                      /* duplicate add: no-op */
    CHECK_STR(asg_table_get(t, "e2")->config_key, "k1");
    asg_table_free(t);
}

static void test_malformed(void)
{
    asg_table_t *t = asg_table_new();
    err_t err = {0};
    CHECK(asg_table_apply_text(t, "{", 1, &err) == -1);
    CHECK(asg_table_apply_text(t, "{\"op\":\"zap\",\"env_id\":\"a\"}", 26, &err) == -1);
    const char *bad = "{\"op\":\"add\",\"env_id\":\"a\"}";
    CHECK(asg_table_apply_text(t, bad, strlen(bad), &err) == -1);
    const char *bs = "{\"op\":\"state\",\"env_id\":\"a\",\"state\":\"dead\"}";
    CHECK(asg_table_apply_text(t, bs, strlen(bs), &err) == -1);
    CHECK(asg_table_count(t) == 0);
    asg_table_free(t);
}

static void test_snapshot_roundtrip(void)
{
    asg_table_t *t = asg_table_new();
    char id[16];
    for (int i = 0; i < 200; i++) { /* also grows the hash */
        snprintf(id, sizeof id, "e%d", i);
        add(t, id, i % 2 ? "k1" : "k2", "f");
        st(t, id, i % 3 == 0 ? ASG_IDLE : ASG_BUSY);
    }
    json_t *snap = asg_table_snapshot(t);
    asg_table_t *u = asg_table_new();
    err_t err = {0};
    CHECK(asg_table_load(u, snap, &err) == 0);
    json_t *snap2 = asg_table_snapshot(u);
    CHECK(json_equal(snap, snap2));
    CHECK(asg_table_count(u) == 200);
    CHECK_STR(asg_table_idle_for(u, "k2")->env_id, asg_table_idle_for(t, "k2")->env_id);
    json_t *bad = json_pack("{s:[{s:s}]}", "envs", "env_id", "x");
    CHECK(asg_table_load(u, bad, &err) == -1);
    CHECK(asg_table_count(u) == 0);
    json_decref(bad);
    json_decref(snap);
    json_decref(snap2);
    asg_table_free(t);
    asg_table_free(u);
}

static int removed;
static void on_rm(asg_env_t *e, void *arg) { (void)e; (void)arg; removed++; }

static void test_remove_cb_and_replay(void)
{
    asg_table_t *a = asg_table_new(), *b = asg_table_new();
    asg_table_set_remove_cb(a, on_rm, NULL);
    const char *recs[] = {
        "{\"op\":\"add\",\"env_id\":\"x\",\"worker_id\":\"w\",\"worker_address\":\"tcp:h:1\",\"config_key\":\"k\",\"function\":\"f\",\"memory_mb\":128}",
        "{\"op\":\"add\",\"env_id\":\"y\",\"worker_id\":\"w\",\"worker_address\":\"tcp:h:1\",\"config_key\":\"k\",\"function\":\"f\",\"memory_mb\":128}",
        "{\"op\":\"state\",\"env_id\":\"y\",\"state\":\"idle\"}",
        "{\"op\":\"state\",\"env_id\":\"x\",\"state\":\"idle\"}",
        "{\"op\":\"remove\",\"env_id\":\"y\"}",
    };
    for (size_t i = 0; i < 5; i++) {
        asg_table_apply_text(a, recs[i], strlen(recs[i]), NULL);
        asg_table_apply_text(b, recs[i], strlen(recs[i]), NULL);
    }
    CHECK(removed == 1);
    json_t *sa = asg_table_snapshot(a), *sb = asg_table_snapshot(b);
    CHECK(json_equal(sa, sb));
    json_decref(sa);
    json_decref(sb);
    asg_table_clear(a);
    CHECK(removed == 2);
    asg_table_free(a);
    asg_table_free(b);
}

static void test_throttle_rule(void)
{
    CHECK(assignment_throttle_reason(2, 1, 0, 10, 0) == NULL);
    CHECK_STR(assignment_throttle_reason(2, 2, 0, 10, 0),
              "ReservedFunctionConcurrentInvocationLimitExceeded");
    CHECK_STR(assignment_throttle_reason(0, 0, 0, 10, 0),
              "ReservedFunctionConcurrentInvocationLimitExceeded");
    CHECK(assignment_throttle_reason(-1, 5, 7, 10, 2) == NULL);
    CHECK_STR(assignment_throttle_reason(-1, 5, 8, 10, 2), "ConcurrentInvocationLimitExceeded");
}

int main(void)
{
    RUN(test_apply_and_queries);
    RUN(test_malformed);
    RUN(test_snapshot_roundtrip);
    RUN(test_remove_cb_and_replay);
    RUN(test_throttle_rule);
    CHECK_EXIT();
}
