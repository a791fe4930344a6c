/* test_fleet.c - the placement fleet state machine (src/placement/fleet.h):
 * leases, heartbeats, LOST/DRAINING/RETIRED transitions and their events,
 * picking (free memory, zone spread), the environment counts zone spread
 * uses (pick-time reservations confirmed or replaced by the environments
 * heartbeats list, expiry, unreserve, loss and re-registration), scaling
 * decisions, status JSON.
 *
 * Everything is driven by an injected clock: T0 is an epoch-ms instant and
 * tests add small offsets, with a test configuration in milliseconds
 * (lease 100 s, heartbeat timeout 1 s, drain 10 s before lease end). */
#include <errno.h>
#include <stdint.h>
#include "check.h"
#include "placement/fleet.h"

#define T0 1796604082000ULL /* 2026-12-07T00:41:22Z */

static fleet_config_t test_config(void)
{
    fleet_config_t c;
    fleet_config_default(&c);
    c.lease_ms = 100000;
    c.heartbeat_timeout_ms = 1000;
    c.drain_before_ms = 10000;
    c.forget_after_ms = 50000;
    c.scale_cooldown_ms = 5000;
    c.min_workers = 1;
    c.max_workers = 4;
    return c;
}

static fleet_t *new_fleet(void)
{
    fleet_config_t c = test_config();
    return fleet_new(&c, NULL);
}

static int reg(fleet_t *f, const char *id, const char *zone, int memory_mb, uint64_t now)
{
    fleet_registration_t r = {.id = id, .address = "10.0.0.1:9100", .zone = zone,
                              .memory_mb = memory_mb, .cpus = 2};
    return fleet_register(f, &r, now, NULL, NULL);
}

/* Heartbeats every worker that is still ACTIVE or DRAINING at `now`, each
 * reporting what placement tracks (so reported load never dominates). */
static void beat_all(fleet_t *f, uint64_t now)
{
    for (int i = 0; i < fleet_count(f); i++) {
        const fleet_worker_t *w = fleet_worker_at(f, i);
        fleet_load_t load = {.memory_used_mb = 0, .environments = fleet_worker_environments(w, NULL)};
        fleet_heartbeat(f, fleet_worker_id(w), now, &load, NULL);
    }
}

/* The only pending event; NULL unless exactly one is pending. */
static const fleet_event_t *only_event(fleet_t *f)
{
    size_t n;
    const fleet_event_t *ev = fleet_events(f, &n);
    return n == 1 ? ev : NULL;
}

static size_t n_events(fleet_t *f)
{
    size_t n;
    fleet_events(f, &n);
    return n;
}

static void test_register_grants_lease(void)
{
    fleet_t *f = new_fleet();
    CHECK(f);
    uint64_t expiry = 0;
    fleet_registration_t r = {"w1", "10.0.0.1:9100", "a", 4096, 4, NULL, NULL};
    CHECK(fleet_register(f, &r, T0, &expiry, NULL) == 0);
    CHECK(expiry == T0 + 100000);
    const fleet_worker_t *w = fleet_get(f, "w1");
    CHECK(w && fleet_worker_state(w) == FLEET_ACTIVE);
    CHECK(fleet_worker_lease_expiry(w) == expiry);
    CHECK_STR(fleet_worker_zone(w), "a");
    CHECK(fleet_worker_free_mb(w) == 4096);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_REGISTERED);
    CHECK_STR(ev->worker_id, "w1");
    CHECK(ev->at == T0);
    fleet_free(f);
}

static void test_register_rejects_bad_fields(void)
{
    fleet_t *f = new_fleet();
    err_t err = {0};
    fleet_registration_t r = {"w1", "addr", "a", 0, 1, NULL, NULL};
    CHECK(fleet_register(f, &r, T0, NULL, &err) == -1 && err.code == EINVAL);
    r = (fleet_registration_t){"", "addr", "a", 128, 1, NULL, NULL};
    CHECK(fleet_register(f, &r, T0, NULL, &err) == -1 && err.code == EINVAL);
    char long_id[FLEET_ID_MAX + 1];
    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = 0;
    r = (fleet_registration_t){long_id, "addr", "a", 128, 1, NULL, NULL};
    CHECK(fleet_register(f, &r, T0, NULL, &err) == -1 && err.code == EINVAL);
    r = (fleet_registration_t){"w1", "addr", NULL, 128, 1, NULL, NULL};
    CHECK(fleet_register(f, &r, T0, NULL, &err) == -1 && err.code == EINVAL);
    CHECK(fleet_count(f) == 0 && n_events(f) == 0);
    fleet_free(f);
}

static void test_config_defaults_and_validation(void)
{
    fleet_config_t c;
    fleet_config_default(&c);
    CHECK(c.lease_ms == 14ULL * 3600 * 1000);
    fleet_t *f = fleet_new(NULL, NULL);
    CHECK(f && fleet_config(f)->lease_ms == c.lease_ms);
    fleet_free(f);
    err_t err = {0};
    c.drain_before_ms = c.lease_ms;
    CHECK(fleet_new(&c, &err) == NULL && err.code == EINVAL);
    fleet_config_default(&c);
    c.scale_in_below = 0.9;
    CHECK(fleet_new(&c, &err) == NULL);
    fleet_config_default(&c);
    c.min_workers = 5;
    c.max_workers = 2;
    CHECK(fleet_new(&c, &err) == NULL);
}

static void test_heartbeat_keeps_alive(void)
{
    fleet_t *f = new_fleet();
    CHECK(reg(f, "w1", "a", 1024, T0) == 0);
    fleet_events_clear(f);
    for (uint64_t t = T0 + 500; t <= T0 + 30000; t += 500) {
        fleet_load_t load = {.memory_used_mb = 256, .environments = 1};
        CHECK(fleet_heartbeat(f, "w1", t, &load, NULL) == FLEET_ACTIVE);
        CHECK(fleet_tick(f, t + 400) == 0);
    }
    CHECK(fleet_worker_state(fleet_get(f, "w1")) == FLEET_ACTIVE);
    CHECK(fleet_worker_free_mb(fleet_get(f, "w1")) == 1024 - 256);
    err_t err = {0};
    CHECK(fleet_heartbeat(f, "nobody", T0, NULL, &err) == -1 && err.code == ENOENT);
    fleet_free(f);
}

static void test_missed_heartbeats_lost_once(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    reg(f, "w2", "b", 1024, T0);
    CHECK(fleet_env_added(f, "w1", "fn", 128, NULL) == 0);
    CHECK(fleet_env_added(f, "w1", "fn", 128, NULL) == 0);
    fleet_events_clear(f);
    fleet_heartbeat(f, "w2", T0 + 900, NULL, NULL);
    CHECK(fleet_tick(f, T0 + 1000) == 0); /* exactly the timeout: not yet */
    CHECK(fleet_tick(f, T0 + 1001) == 1);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_LOST && ev->from == FLEET_ACTIVE);
    CHECK_STR(ev->worker_id, "w1");
    CHECK(ev->environments == 2);
    fleet_events_clear(f);
    CHECK(fleet_tick(f, T0 + 1500) == 0);
    CHECK(fleet_tick(f, T0 + 2000) == 1); /* w2 now lost too, w1 not again */
    CHECK(strcmp(only_event(f)->worker_id, "w2") == 0);
    fleet_events_clear(f);
    CHECK(fleet_tick(f, T0 + 9000) == 0);

    const fleet_worker_t *w = fleet_get(f, "w1");
    CHECK(fleet_worker_state(w) == FLEET_LOST && fleet_worker_environments(w, NULL) == 0);
    CHECK(fleet_pick(f, "fn", 128, T0 + 9000, NULL) == NULL);
    CHECK(fleet_heartbeat(f, "w1", T0 + 9000, NULL, NULL) == FLEET_LOST);
    CHECK(fleet_worker_state(w) == FLEET_LOST);
    err_t err = {0};
    CHECK(fleet_env_added(f, "w1", "fn", 128, &err) == -1 && err.code == ESTALE);
    CHECK(fleet_env_removed(f, "w1", "fn", 128, NULL) == 0);
    CHECK(fleet_tick(f, T0 + 9500) == 0);
    fleet_free(f);
}

static void test_lease_end_drains_then_retires_when_empty(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    CHECK(fleet_env_added(f, "w1", "fn", 128, NULL) == 0);
    fleet_events_clear(f);
    uint64_t t;
    for (t = T0 + 500; t < T0 + 90000; t += 500) {
        beat_all(f, t);
        CHECK(fleet_tick(f, t) == 0);
    }
    beat_all(f, t);
    CHECK(fleet_tick(f, t) == 1); /* T0 + 90000: lease ends within 10 s */
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_DRAINING && ev->environments == 1);
    fleet_events_clear(f);
    CHECK(fleet_worker_state(fleet_get(f, "w1")) == FLEET_DRAINING);
    CHECK(fleet_pick(f, "fn", 128, t, NULL) == NULL);
    /* in-flight work continues: heartbeats and ticks change nothing */
    t += 500;
    CHECK(fleet_heartbeat(f, "w1", t, &(fleet_load_t){.memory_used_mb = 128, .environments = 1},
                          NULL) == FLEET_DRAINING);
    CHECK(fleet_tick(f, t) == 0);
    /* the environment goes; RETIRED only once the worker reports 0 too */
    CHECK(fleet_env_removed(f, "w1", "fn", 128, NULL) == 0);
    CHECK(fleet_tick(f, t) == 0);
    t += 500;
    fleet_heartbeat(f, "w1", t, &(fleet_load_t){.memory_used_mb = 0, .environments = 0}, NULL);
    CHECK(fleet_tick(f, t) == 1);
    ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_RETIRED && ev->from == FLEET_DRAINING);
    CHECK(ev->environments == 0);
    fleet_events_clear(f);
    CHECK(fleet_tick(f, t + 500) == 0);
    CHECK(fleet_heartbeat(f, "w1", t + 500, NULL, NULL) == FLEET_RETIRED);
    fleet_free(f);
}

static void test_lease_end_retires_busy_worker(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    fleet_env_added(f, "w1", "fn", 128, NULL);
    fleet_events_clear(f);
    beat_all(f, T0 + 90000);
    CHECK(fleet_tick(f, T0 + 90000) == 1); /* DRAINING */
    fleet_events_clear(f);
    beat_all(f, T0 + 99999);
    CHECK(fleet_tick(f, T0 + 99999) == 0);
    beat_all(f, T0 + 100000);
    CHECK(fleet_tick(f, T0 + 100000) == 1);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_RETIRED && ev->environments == 1);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), NULL) == 0);
    fleet_free(f);
}

static void test_idle_worker_drains_and_retires_in_one_tick(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    fleet_events_clear(f);
    beat_all(f, T0 + 95000);
    CHECK(fleet_tick(f, T0 + 95000) == 2);
    size_t n;
    const fleet_event_t *ev = fleet_events(f, &n);
    CHECK(ev[0].type == FLEET_EV_DRAINING && ev[1].type == FLEET_EV_RETIRED);
    fleet_free(f);
}

static void test_draining_worker_lost_on_silence(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    fleet_env_added(f, "w1", "fn", 128, NULL);
    CHECK(fleet_drain(f, "w1", T0 + 100, NULL) == 0);
    /* a pick that raced the drain still lands: tracked, blocks retirement */
    CHECK(fleet_env_added(f, "w1", "fn", 128, NULL) == 0);
    fleet_events_clear(f);
    beat_all(f, T0 + 500);
    CHECK(fleet_tick(f, T0 + 500) == 0);
    CHECK(fleet_tick(f, T0 + 1501) == 1);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_LOST && ev->from == FLEET_DRAINING && ev->environments == 2);
    fleet_free(f);
}

static void test_reregister_after_loss(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    fleet_env_added(f, "w1", "fn", 256, NULL);
    CHECK(fleet_tick(f, T0 + 5000) == 1); /* LOST */
    fleet_events_clear(f);
    uint64_t expiry;
    fleet_registration_t r = {"w1", "10.0.0.9:9100", "b", 2048, 4, NULL, NULL};
    CHECK(fleet_register(f, &r, T0 + 6000, &expiry, NULL) == 0);
    CHECK(expiry == T0 + 6000 + 100000);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_RESTARTED && ev->from == FLEET_LOST && ev->environments == 0);
    CHECK(fleet_count(f) == 1);
    const fleet_worker_t *w = fleet_get(f, "w1");
    CHECK(fleet_worker_state(w) == FLEET_ACTIVE);
    CHECK_STR(fleet_worker_address(w), "10.0.0.9:9100");
    CHECK(fleet_worker_free_mb(w) == 2048);
    CHECK(fleet_heartbeat(f, "w1", T0 + 6500, NULL, NULL) == FLEET_ACTIVE);
    CHECK(fleet_pick(f, "fn", 128, T0 + 6500, NULL) == w);
    fleet_free(f);
}

static void test_reregister_while_active_drops_environments(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    fleet_env_added(f, "w1", "fn", 128, NULL);
    fleet_env_added(f, "w1", "other", 128, NULL);
    fleet_heartbeat(f, "w1", T0 + 100, &(fleet_load_t){.memory_used_mb = 256, .environments = 2}, NULL);
    fleet_events_clear(f);
    CHECK(reg(f, "w1", "a", 1024, T0 + 200) == 0);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_RESTARTED && ev->from == FLEET_ACTIVE && ev->environments == 2);
    const fleet_worker_t *w = fleet_get(f, "w1");
    CHECK(fleet_worker_environments(w, NULL) == 0 && fleet_worker_free_mb(w) == 1024);
    fleet_free(f);
}

static void test_pick_by_free_memory(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    reg(f, "w2", "a", 2048, T0);
    reg(f, "w3", "a", 1024, T0);
    const fleet_worker_t *w = fleet_pick(f, "fn", 128, T0, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "w2") == 0);
    CHECK(fleet_env_added(f, "w2", "big", 1536, NULL) == 0); /* w2: 512 free */
    w = fleet_pick(f, "fn", 128, T0, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "w1") == 0); /* tie w1/w3: earliest */
    /* a heartbeat's reported use counts when larger than what placement tracks */
    fleet_heartbeat(f, "w1", T0 + 10, &(fleet_load_t){.memory_used_mb = 900, .environments = 3}, NULL);
    w = fleet_pick(f, "fn", 128, T0 + 10, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "w3") == 0);
    /* only w3 has 1024 free */
    w = fleet_pick(f, "fn", 1024, T0 + 10, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "w3") == 0);
    const char *exclude[] = {"w3", NULL};
    w = fleet_pick(f, "fn", 128, T0 + 10, exclude);
    CHECK(w && strcmp(fleet_worker_id(w), "w2") == 0);
    fleet_free(f);
}

static void test_zone_spread(void)
{
    fleet_t *f = new_fleet();
    reg(f, "wa", "a", 4096, T0);
    reg(f, "wb", "b", 2048, T0); /* less memory: spread still wins */
    for (int i = 0; i < 6; i++) {
        const fleet_worker_t *w = fleet_pick(f, "fn", 128, T0, NULL);
        CHECK(w);
        CHECK(fleet_env_added(f, fleet_worker_id(w), "fn", 128, NULL) == 0);
    }
    CHECK(fleet_worker_environments(fleet_get(f, "wa"), "fn") == 3);
    CHECK(fleet_worker_environments(fleet_get(f, "wb"), "fn") == 3);
    /* another function is spread on its own count: first goes by free memory */
    const fleet_worker_t *w = fleet_pick(f, "other", 128, T0, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "wa") == 0);
    /* a zone's count sums its workers: a second worker in zone a does not
     * attract fn while zone b holds fewer */
    reg(f, "wa2", "a", 8192, T0);
    fleet_env_added(f, "wa", "fn", 128, NULL); /* a: 4, b: 3 */
    w = fleet_pick(f, "fn", 128, T0, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "wb") == 0);
    CHECK(fleet_env_removed(f, "wa", "fn", 128, NULL) == 0);
    CHECK(fleet_env_removed(f, "wa", "fn", 128, NULL) == 0); /* a: 2, b: 3 */
    w = fleet_pick(f, "fn", 128, T0, NULL);
    CHECK(w && strcmp(fleet_worker_id(w), "wa2") == 0); /* zone a, most free */
    fleet_free(f);
}

static void test_no_capacity_returns_null(void)
{
    fleet_t *f = new_fleet();
    CHECK(fleet_pick(f, "fn", 128, T0, NULL) == NULL); /* empty fleet */
    reg(f, "w1", "a", 512, T0);
    CHECK(fleet_pick(f, "fn", 1024, T0, NULL) == NULL);
    fleet_env_added(f, "w1", "fn", 512, NULL);
    CHECK(fleet_pick(f, "fn", 128, T0, NULL) == NULL);
    CHECK(fleet_env_removed(f, "w1", "fn", 512, NULL) == 0);
    CHECK(fleet_pick(f, "fn", 512, T0, NULL) != NULL);
    const char *exclude[] = {"w1", NULL};
    CHECK(fleet_pick(f, "fn", 128, T0, exclude) == NULL);
    CHECK(fleet_pick(f, "fn", 0, T0, NULL) == NULL);
    err_t err = {0};
    CHECK(fleet_env_removed(f, "w1", "fn", 128, &err) == -1 && err.code == EINVAL);
    CHECK(fleet_env_added(f, "nobody", "fn", 128, &err) == -1 && err.code == ENOENT);
    fleet_free(f);
}

static void test_pick_skips_silent_or_expiring_worker_before_tick(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    CHECK(fleet_pick(f, "fn", 128, T0 + 1000, NULL) != NULL);
    CHECK(fleet_pick(f, "fn", 128, T0 + 1001, NULL) == NULL); /* silent too long */
    fleet_heartbeat(f, "w1", T0 + 90000, NULL, NULL);
    CHECK(fleet_pick(f, "fn", 128, T0 + 90000, NULL) == NULL); /* would be draining */
    CHECK(fleet_worker_state(fleet_get(f, "w1")) == FLEET_ACTIVE);
    fleet_free(f);
}

static void test_drain_request(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    fleet_env_added(f, "w1", "fn", 128, NULL);
    fleet_events_clear(f);
    CHECK(fleet_drain(f, "w1", T0 + 10, NULL) == 0);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_DRAINING);
    CHECK(fleet_drain(f, "w1", T0 + 20, NULL) == 0);
    CHECK(n_events(f) == 1);
    CHECK(fleet_pick(f, "fn", 128, T0 + 20, NULL) == NULL);
    fleet_env_removed(f, "w1", "fn", 128, NULL);
    beat_all(f, T0 + 30);
    fleet_events_clear(f);
    CHECK(fleet_tick(f, T0 + 30) == 1 && only_event(f)->type == FLEET_EV_RETIRED);
    err_t err = {0};
    CHECK(fleet_drain(f, "w1", T0 + 40, &err) == -1 && err.code == ESTALE);
    CHECK(fleet_drain(f, "nobody", T0 + 40, &err) == -1 && err.code == ENOENT);
    fleet_free(f);
}

static void test_forget_gone_workers(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    reg(f, "w2", "a", 1024, T0);
    CHECK(fleet_tick(f, T0 + 2000) == 2); /* both LOST at T0 + 2000 */
    fleet_heartbeat(f, "w2", T0 + 2000, NULL, NULL);
    CHECK(reg(f, "w2", "a", 1024, T0 + 3000) == 0);
    for (uint64_t t = T0 + 3500; t <= T0 + 52000; t += 500) {
        beat_all(f, t);
        fleet_tick(f, t);
    }
    CHECK(fleet_count(f) == 1);
    CHECK(fleet_get(f, "w1") == NULL && fleet_get(f, "w2") != NULL);
    fleet_free(f);
}

/* Two 1000 MB workers; cooldown 5 s, watermarks 0.8 / 0.3, 1..4 workers. */
static void test_scale_out_above_high_watermark_with_cooldown(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1000, T0);
    reg(f, "w2", "b", 1000, T0);
    fleet_scale_t s;
    fleet_env_added(f, "w1", "fn", 700, NULL);
    fleet_env_added(f, "w2", "fn", 700, NULL); /* 70% */
    fleet_scale_decision(f, T0, &s);
    CHECK(s.active == 2 && s.desired == 2 && s.delta == 0 && !s.changed);
    CHECK(s.utilization > 0.69 && s.utilization < 0.71);
    fleet_env_added(f, "w1", "fn", 200, NULL);
    fleet_env_added(f, "w2", "fn", 100, NULL); /* 85% */
    fleet_scale_decision(f, T0 + 100, &s);
    CHECK(s.changed && s.desired == 3 && s.delta == 1);
    /* still above while the new worker starts: cooldown holds the target */
    fleet_env_added(f, "w2", "fn", 190, NULL); /* 99.5% */
    fleet_scale_decision(f, T0 + 4000, &s);
    CHECK(!s.changed && s.desired == 3 && strcmp(s.reason, "cooldown") == 0);
    /* after the cooldown: 1990 MB over 2 workers of 1000 at 80% -> 3, already
     * the target (a start is pending), so no change */
    fleet_scale_decision(f, T0 + 5100, &s);
    CHECK(!s.changed && s.desired == 3 && s.delta == 1);
    /* the new worker registers; load still high over 3 -> 4 = max */
    reg(f, "w3", "a", 1000, T0 + 6000);
    fleet_env_added(f, "w3", "fn", 900, NULL); /* 2890 / 3000 */
    fleet_scale_decision(f, T0 + 6000, &s);
    CHECK(s.changed && s.desired == 4 && s.active == 3);
    reg(f, "w4", "b", 1000, T0 + 12000);
    fleet_env_added(f, "w4", "fn", 990, NULL);
    beat_all(f, T0 + 12000);
    fleet_scale_decision(f, T0 + 12000, &s);
    CHECK(!s.changed && s.desired == 4 && strcmp(s.reason, "at max_workers") == 0);
    fleet_free(f);
}

static void test_scale_in_below_low_watermark(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1000, T0);
    reg(f, "w2", "b", 1000, T0);
    reg(f, "w3", "a", 1000, T0);
    fleet_env_added(f, "w1", "fn", 200, NULL);
    fleet_env_added(f, "w3", "fn", 50, NULL); /* 250 / 3000 = 8% */
    fleet_scale_t s;
    fleet_scale_decision(f, T0, &s);
    CHECK(s.changed && s.desired == 2 && s.delta == -1);
    CHECK_STR(s.drain_id, "w2"); /* least committed */
    CHECK(fleet_drain(f, s.drain_id, T0, NULL) == 0);
    fleet_scale_decision(f, T0 + 1000, &s);
    CHECK(!s.changed && s.delta == 0 && s.active == 2 && s.draining == 1);
    CHECK(s.drain_id[0] == 0);
    /* 250 / 2000 = 12.5%: after the cooldown, down to min_workers (1) */
    beat_all(f, T0 + 5000);
    fleet_scale_decision(f, T0 + 5000, &s);
    CHECK(s.changed && s.desired == 1);
    CHECK_STR(s.drain_id, "w3");
    fleet_drain(f, "w3", T0 + 5000, NULL);
    beat_all(f, T0 + 10000);
    fleet_scale_decision(f, T0 + 10000, &s);
    CHECK(!s.changed && s.desired == 1 && strcmp(s.reason, "at min_workers") == 0);
    fleet_free(f);
}

static void test_scale_in_refused_when_rest_would_overload(void)
{
    fleet_config_t c = test_config();
    c.scale_in_below = 0.5;
    c.scale_out_above = 0.6;
    fleet_t *f = fleet_new(&c, NULL);
    reg(f, "w1", "a", 1000, T0);
    reg(f, "w2", "b", 1000, T0);
    fleet_env_added(f, "w1", "fn", 900, NULL); /* 45%: below 50%, but 90% on one */
    fleet_scale_t s;
    fleet_scale_decision(f, T0, &s);
    CHECK(!s.changed && s.desired == 2);
    fleet_free(f);
}

static void test_scale_replaces_lost_and_draining_workers(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1000, T0);
    reg(f, "w2", "b", 1000, T0);
    reg(f, "w3", "a", 1000, T0);
    for (int i = 1; i <= 3; i++)
        fleet_env_added(f, (const char *[]){"w1", "w2", "w3"}[i - 1], "fn", 500, NULL); /* 50% */
    fleet_scale_t s;
    fleet_scale_decision(f, T0, &s);
    CHECK(s.desired == 3 && s.delta == 0);
    fleet_heartbeat(f, "w1", T0 + 1500, NULL, NULL);
    fleet_heartbeat(f, "w3", T0 + 1500, NULL, NULL);
    CHECK(fleet_tick(f, T0 + 1500) == 1); /* w2 LOST */
    fleet_scale_decision(f, T0 + 1500, &s);
    CHECK(s.active == 2 && s.desired == 3 && s.delta == 1); /* start a replacement */
    reg(f, "w4", "b", 1000, T0 + 2000);
    fleet_drain(f, "w1", T0 + 2000, NULL);
    fleet_scale_decision(f, T0 + 2000, &s);
    CHECK(s.active == 2 && s.draining == 1 && s.desired == 3 && s.delta == 1);
    fleet_free(f);
}

static void test_scale_out_on_unmet_demand(void)
{
    fleet_config_t c = test_config();
    c.min_workers = 0;
    fleet_t *f = fleet_new(&c, NULL);
    fleet_scale_t s;
    fleet_scale_decision(f, T0, &s);
    CHECK(s.desired == 0 && s.delta == 0);
    CHECK(fleet_pick(f, "fn", 128, T0, NULL) == NULL);
    fleet_scale_decision(f, T0 + 1, &s);
    CHECK(s.changed && s.desired == 1 && s.delta == 1);
    reg(f, "w1", "a", 256, T0 + 10000);
    fleet_env_added(f, "w1", "fn", 128, NULL); /* 50% */
    CHECK(fleet_pick(f, "fn", 256, T0 + 10000, NULL) == NULL);
    fleet_scale_decision(f, T0 + 10000, &s);
    CHECK(s.changed && s.desired == 2 && strcmp(s.reason, "unmet demand") == 0);
    fleet_free(f);
}

static void test_status_json_shape(void)
{
    fleet_t *f = new_fleet();
    fleet_registration_t r = {"w1", "10.0.0.1:9100", "a", 2048, 4, NULL, NULL};
    fleet_register(f, &r, T0, NULL, NULL);
    reg(f, "w2", "b", 1024, T0);
    fleet_env_added(f, "w1", "fn", 256, NULL);
    fleet_env_added(f, "w1", "fn", 256, NULL);
    fleet_env_added(f, "w1", "g", 128, NULL);
    fleet_heartbeat(f, "w1", T0 + 200, &(fleet_load_t){.memory_used_mb = 600, .environments = 3},
                    NULL);
    fleet_tick(f, T0 + 1100); /* w2 LOST */
    json_t *st = fleet_status(f, T0 + 1100);
    CHECK(st);
    json_t *ws = json_object_get(st, "workers");
    CHECK(json_is_array(ws) && json_array_size(ws) == 2);
    json_t *w = json_array_get(ws, 0);
    CHECK_STR(json_string_value(json_object_get(w, "id")), "w1");
    CHECK_STR(json_string_value(json_object_get(w, "address")), "10.0.0.1:9100");
    CHECK_STR(json_string_value(json_object_get(w, "zone")), "a");
    CHECK_STR(json_string_value(json_object_get(w, "state")), "active");
    CHECK(json_integer_value(json_object_get(w, "lease_expiry")) == (json_int_t)(T0 + 100000));
    CHECK(json_integer_value(json_object_get(w, "lease_remaining_ms")) == 100000 - 1100);
    CHECK(json_integer_value(json_object_get(w, "last_heartbeat_age_ms")) == 900);
    CHECK(json_integer_value(json_object_get(w, "memory_mb")) == 2048);
    CHECK(json_integer_value(json_object_get(w, "memory_tracked_mb")) == 640);
    CHECK(json_integer_value(json_object_get(w, "memory_reported_mb")) == 600);
    CHECK(json_integer_value(json_object_get(w, "memory_committed_mb")) == 640);
    CHECK(json_integer_value(json_object_get(w, "cpus")) == 4);
    CHECK(json_integer_value(json_object_get(w, "environments")) == 3);
    CHECK(json_integer_value(json_object_get(w, "environments_reported")) == 3);
    json_t *fns = json_object_get(w, "functions");
    CHECK(json_integer_value(json_object_get(fns, "fn")) == 2);
    CHECK(json_integer_value(json_object_get(fns, "g")) == 1);
    w = json_array_get(ws, 1);
    CHECK_STR(json_string_value(json_object_get(w, "state")), "lost");
    CHECK(json_integer_value(json_object_get(w, "environments")) == 0);
    CHECK(json_integer_value(json_object_get(st, "active")) == 1);
    CHECK(json_integer_value(json_object_get(st, "lost")) == 1);
    CHECK(json_integer_value(json_object_get(st, "capacity_mb")) == 2048);
    CHECK(json_integer_value(json_object_get(st, "committed_mb")) == 640);
    CHECK(json_real_value(json_object_get(st, "utilization")) > 0.31);
    CHECK(json_integer_value(json_object_get(st, "target_workers")) == 1);
    json_decref(st);
    fleet_free(f);
}

/* Heartbeats `id` at `now` listing n environments (ids[i] of fns[i], 128 MB). */
static int beat_envs(fleet_t *f, const char *id, uint64_t now, int n, const char *const *ids,
                     const char *const *fns)
{
    fleet_env_report_t envs[16];
    for (int i = 0; i < n && i < 16; i++)
        envs[i] = (fleet_env_report_t){.env_id = ids[i], .function = fns[i], .memory_mb = 128};
    fleet_load_t load = {.memory_used_mb = 128 * n, .environments = n, .envs_reported = true,
                         .envs = envs, .n_envs = n};
    return fleet_heartbeat(f, id, now, &load, NULL);
}

static int res_count(fleet_t *f, const char *id)
{
    json_t *st = fleet_status(f, T0);
    int n = -1;
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(st, "workers"), i, w)
        if (!strcmp(json_string_value(json_object_get(w, "id")), id))
            n = (int)json_integer_value(json_object_get(w, "environments_reserved"));
    json_decref(st);
    return n;
}

/* What split mode does: each pick reserves at once (no heartbeat in
 * between), so concurrent cold starts of one function spread over zones. */
static void test_reservations_spread_concurrent_picks(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 4096, T0);
    reg(f, "w2", "b", 4096, T0);
    reg(f, "w3", "a", 4096, T0);
    int per_zone[2] = {0, 0};
    for (int i = 0; i < 6; i++) {
        char env[16];
        snprintf(env, sizeof env, "e%d", i);
        const fleet_worker_t *w = fleet_pick(f, "fn", 128, T0, NULL);
        CHECK(w);
        per_zone[strcmp(fleet_worker_zone(w), "a") == 0 ? 0 : 1]++;
        CHECK(fleet_env_reserve(f, fleet_worker_id(w), env, "fn", 128, T0, NULL) == 0);
    }
    CHECK(per_zone[0] == 3 && per_zone[1] == 3);
    CHECK(fleet_worker_environments(fleet_get(f, "w2"), "fn") == 3);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") +
              fleet_worker_environments(fleet_get(f, "w3"), "fn") == 3);
    CHECK(fleet_worker_free_mb(fleet_get(f, "w2")) == 4096 - 3 * 128);
    /* picks alternate zones; ties go to the most free memory: w1, w2, w3,
     * w2, w1, w2 - so w2 holds e1, e3, e5.  Reserving one again counts it once. */
    CHECK(fleet_env_reserve(f, "w2", "e3", "fn", 128, T0, NULL) == 0);
    CHECK(fleet_worker_environments(fleet_get(f, "w2"), NULL) == 3);
    CHECK(fleet_env_unreserve(f, "w2", "e3", NULL) == 1);
    CHECK(fleet_worker_environments(fleet_get(f, "w2"), NULL) == 2);
    err_t err = {0};
    CHECK(fleet_env_reserve(f, "nope", "x", "fn", 128, T0, &err) == -1 && err.code == ENOENT);
    CHECK(fleet_env_reserve(f, "w1", "", "fn", 128, T0, &err) == -1 && err.code == EINVAL);
    fleet_free(f);
}

/* A heartbeat's list confirms the reservations it names and replaces the
 * worker's reported counts; reservations it does not name stay pending. */
static void test_heartbeat_report_confirms_and_replaces(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 4096, T0);
    CHECK(fleet_env_reserve(f, "w1", "e1", "fn", 128, T0, NULL) == 0);
    CHECK(fleet_env_reserve(f, "w1", "e2", "fn", 128, T0, NULL) == 0);
    const fleet_worker_t *w = fleet_get(f, "w1");
    CHECK(fleet_worker_environments(w, "fn") == 2 && res_count(f, "w1") == 2);
    /* e1 created; e2 not yet (its create is still on its way) */
    CHECK(beat_envs(f, "w1", T0 + 100, 1, (const char *[]){"e1"}, (const char *[]){"fn"}) ==
          FLEET_ACTIVE);
    CHECK(res_count(f, "w1") == 1);
    CHECK(fleet_worker_environments(w, "fn") == 2); /* 1 reported + 1 reserved */
    CHECK(fleet_worker_free_mb(w) == 4096 - 128 - 128);
    /* both exist, plus one of another function placed by nobody we know */
    CHECK(beat_envs(f, "w1", T0 + 200, 3, (const char *[]){"e1", "e2", "x9"},
                    (const char *[]){"fn", "fn", "g"}) == FLEET_ACTIVE);
    CHECK(res_count(f, "w1") == 0);
    CHECK(fleet_worker_environments(w, "fn") == 2 && fleet_worker_environments(w, "g") == 1);
    CHECK(fleet_worker_environments(w, NULL) == 3);
    json_t *st = fleet_status(f, T0 + 200);
    json_t *sw = json_array_get(json_object_get(st, "workers"), 0);
    CHECK(json_integer_value(json_object_get(sw, "environments")) == 3);
    CHECK(json_integer_value(json_object_get(json_object_get(sw, "functions"), "fn")) == 2);
    CHECK(json_integer_value(json_object_get(json_object_get(sw, "functions"), "g")) == 1);
    json_decref(st);
    /* keep-alive destroyed e1: the next list drops it, nobody had to say so */
    CHECK(beat_envs(f, "w1", T0 + 300, 2, (const char *[]){"e2", "x9"},
                    (const char *[]){"fn", "g"}) == FLEET_ACTIVE);
    CHECK(fleet_worker_environments(w, "fn") == 1);
    /* counts from fleet_env_added and reports are not added up: max */
    CHECK(fleet_env_added(f, "w1", "fn", 128, NULL) == 0);
    CHECK(fleet_worker_environments(w, "fn") == 1);
    CHECK(fleet_env_added(f, "w1", "fn", 128, NULL) == 0);
    CHECK(fleet_worker_environments(w, "fn") == 2);
    /* a malformed report is refused whole */
    fleet_env_report_t bad[2] = {{"e2", "fn", 128}, {"", "fn", 128}};
    err_t err = {0};
    CHECK(fleet_heartbeat(f, "w1", T0 + 400, &(fleet_load_t){.envs_reported = true, .envs = bad,
                                                             .n_envs = 2}, &err) == -1);
    CHECK(err.code == EINVAL && fleet_worker_environments(w, "g") == 1);
    /* a heartbeat without a list leaves the reported counts as they are */
    CHECK(fleet_heartbeat(f, "w1", T0 + 500, &(fleet_load_t){.memory_used_mb = 0}, NULL) ==
          FLEET_ACTIVE);
    CHECK(fleet_worker_environments(w, "g") == 1);
    fleet_free(f);
}

/* Reservations end without a heartbeat too: unreserve (creation failed),
 * expiry (the creator died), loss or re-registration of the worker. */
static void test_reservation_expiry_unreserve_and_loss(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 4096, T0);
    reg(f, "w2", "b", 4096, T0);
    CHECK(fleet_env_reserve(f, "w1", "e1", "fn", 128, T0, NULL) == 0);
    CHECK(fleet_env_reserve(f, "w1", "e2", "fn", 128, T0 + 600, NULL) == 0);
    CHECK(fleet_env_unreserve(f, "w1", "e1", NULL) == 1);
    CHECK(fleet_env_unreserve(f, "w1", "e1", NULL) == 0); /* already gone */
    err_t err = {0};
    CHECK(fleet_env_unreserve(f, "nope", "e1", &err) == -1 && err.code == ENOENT);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 1);
    /* e2 was never confirmed: dropped heartbeat_timeout_ms (1 s) after its pick */
    beat_all(f, T0 + 1500);
    fleet_tick(f, T0 + 1500);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 1);
    beat_all(f, T0 + 1700);
    fleet_tick(f, T0 + 1700);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 0);
    CHECK(fleet_worker_free_mb(fleet_get(f, "w1")) == 4096);
    /* a DRAINING worker with a pending reservation is not retired yet */
    CHECK(fleet_env_reserve(f, "w1", "e3", "fn", 128, T0 + 1700, NULL) == 0);
    CHECK(fleet_drain(f, "w1", T0 + 1700, NULL) == 0);
    fleet_events_clear(f);
    beat_envs(f, "w1", T0 + 1800, 0, NULL, NULL);
    beat_all(f, T0 + 1800);
    fleet_tick(f, T0 + 1800);
    CHECK(fleet_worker_state(fleet_get(f, "w1")) == FLEET_DRAINING);
    CHECK(fleet_env_unreserve(f, "w1", "e3", NULL) == 1); /* its create failed */
    beat_envs(f, "w1", T0 + 1850, 0, NULL, NULL);
    fleet_tick(f, T0 + 1850);
    CHECK(fleet_worker_state(fleet_get(f, "w1")) == FLEET_RETIRED);
    fleet_events_clear(f);
    /* w2 reports two, has one reserved, then goes silent: LOST drops all
     * three (the event says so) */
    CHECK(beat_envs(f, "w2", T0 + 1800, 2, (const char *[]){"a1", "a2"},
                    (const char *[]){"fn", "fn"}) == FLEET_ACTIVE);
    CHECK(fleet_env_reserve(f, "w2", "a3", "fn", 128, T0 + 2000, NULL) == 0);
    CHECK(fleet_worker_environments(fleet_get(f, "w2"), "fn") == 3);
    fleet_tick(f, T0 + 2900);
    const fleet_event_t *ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_LOST && ev->environments == 3);
    fleet_events_clear(f);
    CHECK(fleet_worker_environments(fleet_get(f, "w2"), NULL) == 0);
    CHECK(fleet_env_reserve(f, "w2", "a4", "fn", 128, T0 + 2900, &err) == -1 && err.code == ESTALE);
    /* re-registered (a restarted worker): nothing until it reports */
    CHECK(reg(f, "w2", "b", 4096, T0 + 3000) == 0);
    ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_RESTARTED && ev->environments == 0);
    fleet_events_clear(f);
    CHECK(beat_envs(f, "w2", T0 + 3100, 1, (const char *[]){"b1"}, (const char *[]){"fn"}) ==
          FLEET_ACTIVE);
    CHECK(fleet_env_reserve(f, "w2", "b2", "fn", 128, T0 + 3100, NULL) == 0);
    CHECK(reg(f, "w2", "b", 4096, T0 + 3200) == 0);
    ev = only_event(f);
    CHECK(ev && ev->type == FLEET_EV_RESTARTED && ev->environments == 2);
    CHECK(fleet_worker_environments(fleet_get(f, "w2"), NULL) == 0);
    fleet_free(f);
}

/* An environment that leaves (retired, dead) stops counting at once, not a
 * heartbeat later; a report written before it went does not bring it
 * back, and one that still lists it after heartbeat_timeout_ms does. */
static void test_env_gone_counts_at_once(void)
{
    fleet_t *f = new_fleet();
    reg(f, "w1", "a", 1024, T0);
    CHECK(beat_envs(f, "w1", T0 + 100, 3, (const char *[]){"e1", "e2", "e3"},
                    (const char *[]){"fn", "fn", "g"}) == FLEET_ACTIVE);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 2);
    CHECK(fleet_worker_free_mb(fleet_get(f, "w1")) == 1024 - 3 * 128);
    CHECK(fleet_env_gone(f, "w1", "e1", "fn", 128, T0 + 150, NULL) == 0);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 1);
    CHECK(fleet_worker_free_mb(fleet_get(f, "w1")) == 1024 - 2 * 128);
    CHECK(fleet_env_gone(f, "w1", "e1", "fn", 128, T0 + 160, NULL) == 0); /* told twice: once */
    CHECK(fleet_worker_free_mb(fleet_get(f, "w1")) == 1024 - 2 * 128);
    /* the next report was written before e1 went: it still lists it */
    CHECK(beat_envs(f, "w1", T0 + 200, 3, (const char *[]){"e1", "e2", "e3"},
                    (const char *[]){"fn", "fn", "g"}) == FLEET_ACTIVE);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 1);
    CHECK(fleet_worker_free_mb(fleet_get(f, "w1")) == 1024 - 2 * 128);
    /* then one without it; a new env named e1 later counts again */
    CHECK(beat_envs(f, "w1", T0 + 300, 2, (const char *[]){"e2", "e3"},
                    (const char *[]){"fn", "g"}) == FLEET_ACTIVE);
    CHECK(beat_envs(f, "w1", T0 + 400, 3, (const char *[]){"e1", "e2", "e3"},
                    (const char *[]){"fn", "fn", "g"}) == FLEET_ACTIVE);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 2);
    /* gone but never leaving the reports: counted again after the timeout (1 s) */
    CHECK(fleet_env_gone(f, "w1", "e3", "g", 128, T0 + 500, NULL) == 0);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "g") == 0);
    beat_envs(f, "w1", T0 + 1000, 3, (const char *[]){"e1", "e2", "e3"},
              (const char *[]){"fn", "fn", "g"});
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "g") == 0);
    fleet_tick(f, T0 + 1600);
    beat_envs(f, "w1", T0 + 1700, 3, (const char *[]){"e1", "e2", "e3"},
              (const char *[]){"fn", "fn", "g"});
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "g") == 1);
    /* a pending reservation is simply dropped */
    CHECK(fleet_env_reserve(f, "w1", "e9", "fn", 128, T0 + 1700, NULL) == 0);
    CHECK(fleet_env_gone(f, "w1", "e9", "fn", 128, T0 + 1710, NULL) == 1);
    CHECK(fleet_worker_environments(fleet_get(f, "w1"), "fn") == 2);
    err_t err = {0};
    CHECK(fleet_env_gone(f, "nope", "e1", "fn", 128, T0, &err) == -1 && err.code == ENOENT);
    CHECK(fleet_env_gone(f, "w1", "", "fn", 128, T0, &err) == -1 && err.code == EINVAL);
    fleet_free(f);
}

int main(void)
{
    RUN(test_register_grants_lease);
    RUN(test_register_rejects_bad_fields);
    RUN(test_config_defaults_and_validation);
    RUN(test_heartbeat_keeps_alive);
    RUN(test_missed_heartbeats_lost_once);
    RUN(test_lease_end_drains_then_retires_when_empty);
    RUN(test_lease_end_retires_busy_worker);
    RUN(test_idle_worker_drains_and_retires_in_one_tick);
    RUN(test_draining_worker_lost_on_silence);
    RUN(test_reregister_after_loss);
    RUN(test_reregister_while_active_drops_environments);
    RUN(test_pick_by_free_memory);
    RUN(test_zone_spread);
    RUN(test_no_capacity_returns_null);
    RUN(test_pick_skips_silent_or_expiring_worker_before_tick);
    RUN(test_drain_request);
    RUN(test_forget_gone_workers);
    RUN(test_scale_out_above_high_watermark_with_cooldown);
    RUN(test_scale_in_below_low_watermark);
    RUN(test_scale_in_refused_when_rest_would_overload);
    RUN(test_scale_replaces_lost_and_draining_workers);
    RUN(test_scale_out_on_unmet_demand);
    RUN(test_status_json_shape);
    RUN(test_reservations_spread_concurrent_picks);
    RUN(test_heartbeat_report_confirms_and_replaces);
    RUN(test_reservation_expiry_unreserve_and_loss);
    RUN(test_env_gone_counts_at_once);
    CHECK_EXIT();
}
