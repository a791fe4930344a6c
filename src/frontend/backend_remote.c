/* backend_remote.c - the frontend's backend when assignment and workers are
 * other processes or hosts (docs/protocol.md).
 *
 * acquire -> `asg.acquire` on the assignment leader.  The frontend is given
 * every replica's address and finds the leader itself: it starts with the
 * first, follows a follower's NotLeader hint, and on a dead or unreachable
 * replica tries the next one (briefly backing off), so a leader's death
 * costs a request the takeover time, not an error.  invoke -> `env.invoke`
 * straight on the environment's worker (one RPC client per worker
 * address, kept open).  release -> `asg.release` (one-way in spirit: its
 * reply is ignored).
 *
 * Warm hold: a lease whose environment came back fine is not released at
 * once but held by this frontend for WARM_HOLD_MS; an acquire for the same
 * configuration in that window takes it without asking the leader (the
 * sequential caller's next invoke skips one process hop).  Nothing about
 * the leader's view changes: the environment stays busy under the same
 * lease token until the release, which the hold only defers, so no other
 * request can be handed it and the concurrency counts stay exact (a held
 * environment counts as busy, at most WARM_HOLD_MS longer than it ran).
 * Only with room to spare: the leader's reply says how much of the
 * function's concurrency pool is free; a lease handed out with less than
 * a quarter (or 8) free is released at once, and a held one goes back
 * WARM_HOLD_RENEW_MS after its hand-out so that the next acquire learns
 * the room anew.  Near a limit the counts are then as exact as without
 * the hold, and another frontend is not throttled by this one's holds.
 * Throttled or NoCapacity while holding leases: release them all and ask
 * once more (they counted as busy).  A change to the function releases
 * its held leases at once; a held environment that its worker lost or
 * handed elsewhere after a failover answers UnknownEnvironment or Busy,
 * which the frontend already treats as "not delivered" (release, acquire
 * again), and the other leases held on that worker go back with it.
 *
 * Which replica leads is one shared belief per group (g->leader), moved by NotLeader
 * hints, by the background asg.status refresh and by transport failures.
 * A failure only moves it away from the replica that failed: if the
 * belief already moved elsewhere meanwhile, it is kept.  (Rotating from
 * wherever it stood sent acquires back to a dead replica over and over: the
 * refresh pointed at the new leader, the failed acquire rotated past it,
 * and each attempt on the dead replica waited out a reconnect backoff, so
 * an invoke could fail after 10 s although a leader had been serving.)
 *
 * Invariants: each acquire's callback runs exactly once unless cancelled; a
 * cancelled acquire that still gets an environment gives it back; a
 * worker lost mid-invocation answers a retryable system error, never a
 * function error; a held lease is in the held list or in one
 * invocation's hands, never both, and is released exactly once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "frontend/backend.h"

#define ACQUIRE_GIVE_UP_MS 10000   /* no leader for this long: fail the request */
#define ACQUIRE_TIMEOUT_MS 60000   /* a cold start includes Init (10 s) and queueing */
#define RETRY_DELAY_MS 100
#define STATUS_REFRESH_MS 1000
#define WARM_HOLD_MS 10            /* how long a released warm lease is kept for reuse */
/* A lease is held only if, when it was handed out, its concurrency pool
 * had at least this share of its size (and 8) to spare: near a limit a
 * held lease could throttle another frontend, so there it goes back at
 * once and the counts are as exact as without the hold. */
#define WARM_HOLD_MIN_SPARE_SHARE 4 /* 1/4 */
#define WARM_HOLD_MIN_SPARE 8
/* ... and for this long after the hand-out: then the environment goes
 * back once and the next acquire asks the leader, which says how much
 * room there is now.  The new hand-out also restarts the leader's sweep
 * count (two sightings SWEEP_MS apart of an environment busy in its table
 * and idle on its worker mean its holder is gone), so this must stay well
 * below the sweep's 5 s. */
#define WARM_HOLD_RENEW_MS 1000

typedef struct worker_client {
    char *address;
    rpc_client_t *client;
    struct worker_client *next;
} worker_client_t;

/* One assignment group: the replicas of one shard of the table (one
 * leader, its followers, their own journal). */
typedef struct asg_group {
    char **replicas;
    rpc_client_t **asg;
    int n_replicas;
    int leader;                 /* index of the replica believed to lead */
    int status_asked;           /* replica the outstanding asg.status went to, -1: none */
    json_t *status;             /* last asg.status of this group */
} asg_group_t;

typedef struct remote_backend {
    backend_t base;
    struct event_base *ev;
    asg_group_t *groups;        /* the table's shards: a function's environments
                                   live in groups[shard_of(name)] */
    int n_groups;
    int account_concurrency;
    char *placement_address;
    rpc_client_t *placement;
    worker_client_t *workers;
    json_t *fleet_status;       /* last placement.status */
    struct event *status_timer;
    struct pending_acquire *pending; /* every acquire not yet finished */
    char *roles_path;           /* DATA/run/roles.json written by `flicker up` */
    struct held_lease *held;    /* warm leases held for reuse, newest first */
    struct event *hold_timer;   /* releases the expired ones */
    int hold_ms;                /* 0: release at once */
    uint64_t held_reused;       /* acquires served from a held lease */
} remote_backend_t;

typedef struct held_lease {
    backend_lease_t lease;
    uint64_t until_ms;
    struct held_lease *next;
} held_lease_t;

/* Selects held leases (release_held_where). */
typedef bool (*held_match_fn)(const held_lease_t *h, const void *arg);

typedef struct pending_acquire {
    remote_backend_t *rb;
    asg_group_t *g;
    backend_acquired_fn cb;
    void *arg;
    json_t *params;
    uint64_t give_up_ms;
    bool cancelled;
    bool in_flight;             /* an RPC is outstanding (else a retry timer) */
    int sent_to;                /* replica the outstanding asg.acquire went to */
    held_lease_t *from_hold;    /* answered from a held lease, on the next loop turn */
    bool asked_after_release;   /* already retried after giving held leases back */
    char config_key[192];
    struct event *retry;
    struct pending_acquire *next, *prev;
} pending_acquire_t;

typedef struct pending_invoke {
    backend_done_fn done;
    void *arg;
} pending_invoke_t;

static void send_acquire(pending_acquire_t *p);

/* Which group holds a function's environments: FNV-1a of its name with a
 * final avalanche (FNV's low bits alone follow the characters' parity). */
static int shard_of(const remote_backend_t *rb, const char *function)
{
    uint32_t h = 2166136261u;
    for (const char *c = function; *c; c++)
        h = (h ^ (unsigned char)*c) * 16777619u;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return (int)(h % (uint32_t)rb->n_groups);
}

/* The account's unreserved concurrency is split evenly over the groups
 * (reserved concurrency is exact: a function lives in one group).  Each
 * group's leader computes unreserved = account - total_reserved, so it is
 * told the total that leaves it its share. */
static int group_total_reserved(const remote_backend_t *rb, int shard, int total_reserved)
{
    if (rb->n_groups == 1)
        return total_reserved;
    int pool = rb->account_concurrency - total_reserved;
    if (pool < 0)
        pool = 0;
    int share = pool / rb->n_groups + (shard < pool % rb->n_groups ? 1 : 0);
    return rb->account_concurrency - share;
}

static rpc_client_t *worker_client(remote_backend_t *rb, const char *address)
{
    for (worker_client_t *w = rb->workers; w; w = w->next)
        if (!strcmp(w->address, address))
            return w->client;
    err_t err = {0};
    rpc_client_t *c = rpc_client_new(rb->ev, address, NULL, &err);
    if (!c) {
        log_warn("frontend", "worker %s: %s", address, err.msg);
        return NULL;
    }
    worker_client_t *w = xcalloc(1, sizeof *w);
    w->address = xstrdup(address);
    w->client = c;
    w->next = rb->workers;
    rb->workers = w;
    return c;
}

/* ------------------------------------------------------------- acquire */

/* Replica `failed` did not answer: believe the next one leads, unless the
 * belief has already moved away from `failed` (then it is newer news). */
static void replica_failed(asg_group_t *g, int failed)
{
    if (g->leader == failed)
        g->leader = (failed + 1) % g->n_replicas;
}

static void release_now(asg_group_t *g, const backend_lease_t *lease, env_fate_t fate);

static void acquire_free(pending_acquire_t *p)
{
    if (p->from_hold) { /* cancelled before it was delivered */
        release_now(p->g, &p->from_hold->lease, ENV_FATE_KEPT);
        free(p->from_hold);
        p->from_hold = NULL;
    }
    if (p->prev)
        p->prev->next = p->next;
    else
        p->rb->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->retry)
        event_free(p->retry);
    json_decref(p->params);
    free(p);
}

static void deliver(pending_acquire_t *p, const acquire_result_t *r, const backend_lease_t *lease);
static void release_held_where(remote_backend_t *rb, held_match_fn match, const void *arg);
static bool held_any(const held_lease_t *h, const void *arg);

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    pending_acquire_t *p = arg;
    if (p->from_hold && !p->cancelled) {
        held_lease_t *h = p->from_hold;
        p->from_hold = NULL;
        acquire_result_t r = {.status = ACQUIRE_OK};
        deliver(p, &r, &h->lease);
        free(h);
        return;
    }
    send_acquire(p);
}

static void retry_later(pending_acquire_t *p, int delay_ms)
{
    if (!p->retry)
        p->retry = evtimer_new(p->rb->ev, on_retry, p);
    struct timeval tv = {.tv_sec = delay_ms / 1000, .tv_usec = (delay_ms % 1000) * 1000};
    evtimer_add(p->retry, &tv);
}

static void deliver(pending_acquire_t *p, const acquire_result_t *r, const backend_lease_t *lease)
{
    backend_acquired_fn cb = p->cb;
    void *arg = p->arg;
    bool cancelled = p->cancelled;
    asg_group_t *g = p->g;
    acquire_free(p);
    if (!cancelled)
        cb(r, lease, arg);
    else if (lease) /* nobody wants it any more: back to idle */
        release_now(g, lease, ENV_FATE_KEPT);
}

static int replica_index(const asg_group_t *g, const char *address)
{
    for (int i = 0; address && i < g->n_replicas; i++)
        if (!strcmp(g->replicas[i], address))
            return i;
    return -1;
}

static void on_acquire_reply(const rpc_result_t *res, void *arg)
{
    pending_acquire_t *p = arg;
    asg_group_t *g = p->g;
    p->in_flight = false;
    /* Cancelled by rpc_client_free: the backend is going away with the
     * frontend, which frees its own records; nobody is called back. */
    if ((p->cancelled && res->error) || (res->error && !strcmp(res->error, RPC_CANCELLED))) {
        acquire_free(p);
        return;
    }
    if (!res->error) {
        backend_lease_t lease = {0};
        snprintf(lease.env_id, sizeof lease.env_id, "%s",
                 json_string_value(json_object_get(res->result, "env_id")) ?: "");
        snprintf(lease.worker, sizeof lease.worker, "%s",
                 json_string_value(json_object_get(res->result, "worker_address")) ?: "");
        lease.shard = (int)(g - p->rb->groups);
        lease.token = (int64_t)json_integer_value(json_object_get(res->result, "lease"));
        int pool = (int)json_integer_value(json_object_get(res->result, "pool"));
        int spare = (int)json_integer_value(json_object_get(res->result, "headroom"));
        int want = pool / WARM_HOLD_MIN_SPARE_SHARE;
        if (want < WARM_HOLD_MIN_SPARE)
            want = WARM_HOLD_MIN_SPARE;
        snprintf(lease.config_key, sizeof lease.config_key, "%s", p->config_key);
        if (spare >= want) /* else: released at once, never held */
            lease.holdable_until_ms = now_mono_ms() + WARM_HOLD_RENEW_MS;
        acquire_result_t r = {.status = ACQUIRE_OK,
                              .cold = json_is_true(json_object_get(res->result, "cold"))};
        deliver(p, &r, &lease);
        return;
    }
    const char *code = res->error;
    bool transport = !strcmp(code, RPC_DISCONNECTED) || !strcmp(code, RPC_UNREACHABLE) ||
                     !strcmp(code, RPC_TIMEOUT);
    if (!strcmp(code, "NotLeader") || transport) {
        if (now_mono_ms() >= p->give_up_ms) {
            acquire_result_t r = {.status = ACQUIRE_FAILED,
                                  .message = "no assignment leader answered (is the assignment "
                                             "service running?)"};
            deliver(p, &r, NULL);
            return;
        }
        const char *hint = res->detail
                               ? json_string_value(json_object_get(res->detail, "leader"))
                               : NULL;
        int i = replica_index(g, hint);
        if (!transport && i >= 0 && i != g->leader) {
            g->leader = i; /* follow the hint right away */
            send_acquire(p);
            return;
        }
        if (transport)
            replica_failed(g, p->sent_to);
        else if (g->leader == p->sent_to) /* a follower that knows no leader */
            g->leader = (p->sent_to + 1) % g->n_replicas;
        retry_later(p, RETRY_DELAY_MS);
        return;
    }
    /* Over a limit or out of room while this frontend holds leases: they
     * count as busy, so give them all back (the releases go first on this
     * connection) and ask once more.  The hold may cost a retry, never a
     * 429 or a cold start that releasing at once would have avoided. */
    if ((!strcmp(code, "Throttled") || !strcmp(code, "NoCapacity")) && p->rb->held &&
        !p->asked_after_release) {
        p->asked_after_release = true;
        release_held_where(p->rb, held_any, NULL);
        send_acquire(p);
        return;
    }
    acquire_result_t r = {.message = res->message};
    if (!strcmp(code, "Throttled")) {
        r.status = ACQUIRE_THROTTLED;
        r.reason = res->detail ? json_string_value(json_object_get(res->detail, "reason"))
                                     : NULL;
        if (!r.reason)
            r.reason = "ConcurrentInvocationLimitExceeded";
        r.message = "Rate Exceeded.";
        deliver(p, &r, NULL);
    } else if (!strcmp(code, "InitFailed")) {
        const char *tail = res->detail
                               ? json_string_value(json_object_get(res->detail, "log_tail"))
                               : NULL;
        char *body = res->len ? xstrndup(res->body, res->len)
                              : xasprintf("{\"errorType\":\"Runtime.Unknown\",\"errorMessage\":"
                                          "\"Init failed\"}");
        invoke_result_t init = {.status = INVOKE_FAILED, .body = body, .body_len = strlen(body),
                                .log_tail = tail ? tail : ""};
        r.status = ACQUIRE_INIT_FAILED;
        r.cold = true;
        r.init = &init;
        deliver(p, &r, NULL);
        free(body);
    } else if (!strcmp(code, "NoCapacity")) {
        r.status = ACQUIRE_NO_CAPACITY;
        r.reason = "ConcurrentInvocationLimitExceeded";
        r.message = "Rate Exceeded. No worker has room for another environment.";
        deliver(p, &r, NULL);
    } else {
        r.status = ACQUIRE_FAILED;
        deliver(p, &r, NULL);
    }
}

static void send_acquire(pending_acquire_t *p)
{
    asg_group_t *g = p->g;
    if (p->cancelled) {
        acquire_free(p);
        return;
    }
    p->in_flight = true;
    p->sent_to = g->leader;
    rpc_call(g->asg[g->leader], "asg.acquire", p->params, NULL, 0, ACQUIRE_TIMEOUT_MS,
             on_acquire_reply, p);
}

/* ----------------------------------------------------------- warm hold */

/* The newest held lease for config_key (unlinked), or NULL. */
static held_lease_t *take_held(remote_backend_t *rb, const char *config_key)
{
    if (!*config_key)
        return NULL;
    for (held_lease_t **pp = &rb->held; *pp; pp = &(*pp)->next) {
        held_lease_t *h = *pp;
        if (!strcmp(h->lease.config_key, config_key)) {
            *pp = h->next;
            return h;
        }
    }
    return NULL;
}

static asg_group_t *lease_group(remote_backend_t *rb, const backend_lease_t *lease)
{
    return &rb->groups[lease->shard >= 0 && lease->shard < rb->n_groups ? lease->shard : 0];
}

/* Releases (to the leader, as fine) every held lease that match selects. */
static void release_held_where(remote_backend_t *rb, held_match_fn match, const void *arg)
{
    for (held_lease_t **pp = &rb->held; *pp;) {
        held_lease_t *h = *pp;
        if (match(h, arg)) {
            *pp = h->next;
            release_now(lease_group(rb, &h->lease), &h->lease, ENV_FATE_KEPT);
            free(h);
        } else {
            pp = &h->next;
        }
    }
}

static bool held_any(const held_lease_t *h, const void *arg) { return true; }

static bool held_expired(const held_lease_t *h, const void *now_ms)
{
    return h->until_ms <= *(const uint64_t *)now_ms;
}

static bool held_on_worker(const held_lease_t *h, const void *address)
{
    return !strcmp(h->lease.worker, address);
}

/* config_key is "name:version:revision" */
static bool held_of_function(const held_lease_t *h, const void *name)
{
    size_t n = strlen(name);
    return !strncmp(h->lease.config_key, name, n) && h->lease.config_key[n] == ':';
}

static void arm_hold_timer(remote_backend_t *rb)
{
    if (!rb->held || evtimer_pending(rb->hold_timer, NULL))
        return;
    uint64_t now = now_mono_ms(), first = UINT64_MAX;
    for (held_lease_t *h = rb->held; h; h = h->next)
        if (h->until_ms < first)
            first = h->until_ms;
    uint64_t wait = first > now ? first - now : 0;
    struct timeval tv = {.tv_sec = (time_t)(wait / 1000), .tv_usec = (suseconds_t)(wait % 1000) * 1000};
    evtimer_add(rb->hold_timer, &tv);
}

static void on_hold_timer(evutil_socket_t fd, short what, void *arg)
{
    remote_backend_t *rb = arg;
    uint64_t now = now_mono_ms();
    release_held_where(rb, held_expired, &now);
    arm_hold_timer(rb);
}

static void *remote_acquire(backend_t *b, const fn_config_t *cfg, int total_reserved,
                            backend_acquired_fn cb, void *arg)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    pending_acquire_t *p = xcalloc(1, sizeof *p);
    int shard = shard_of(rb, cfg->name);
    p->rb = rb;
    p->g = &rb->groups[shard];
    p->cb = cb;
    p->arg = arg;
    p->params = json_pack("{s:o,s:i}", "config", fn_config_to_json(cfg), "total_reserved",
                          group_total_reserved(rb, shard, total_reserved));
    p->give_up_ms = now_mono_ms() + ACQUIRE_GIVE_UP_MS;
    snprintf(p->config_key, sizeof p->config_key, "%s", cfg->config_key ? cfg->config_key : "");
    p->next = rb->pending;
    if (rb->pending)
        rb->pending->prev = p;
    rb->pending = p;
    /* Reserved concurrency 0 throttles every invoke: never from a hold. */
    if (cfg->reserved_concurrency != 0)
        p->from_hold = take_held(rb, p->config_key);
    if (p->from_hold) { /* answered on the next loop turn: never synchronously */
        rb->held_reused++;
        retry_later(p, 0);
        return p;
    }
    send_acquire(p);
    return p;
}

static void remote_cancel(backend_t *b, void *handle)
{
    pending_acquire_t *p = handle;
    p->cancelled = true;
    if (!p->in_flight) { /* waiting on a retry timer: nothing else will fire */
        acquire_free(p);
    }
}

/* -------------------------------------------------------------- invoke */

static void on_invoke_reply(const rpc_result_t *res, void *arg)
{
    pending_invoke_t p = *(pending_invoke_t *)arg;
    free(arg);
    if (res->error && !strcmp(res->error, RPC_CANCELLED))
        return; /* shutting down (see on_acquire_reply) */
    invoke_result_t r = {0};
    char *owned = NULL;
    env_fate_t fate = ENV_FATE_KEPT;
    if (res->error) {
        r.status = INVOKE_FAILED;
        r.system_error = true;
        /* The worker no longer has it (restarted, reconciled away) or never
         * got the request: the function did not run. */
        r.not_delivered = !strcmp(res->error, "UnknownEnvironment") ||
                          !strcmp(res->error, "Busy") || !strcmp(res->error, RPC_UNREACHABLE);
        owned = xasprintf("The execution environment's worker failed during the invocation "
                          "(%s: %s); retry the request", res->error, res->message ? res->message : "");
        r.body = owned;
        r.body_len = strlen(owned);
        /* Busy: another request runs in it (its holder from before a
         * failover, or a late one after the sweep reclaimed a lost
         * release): the environment is fine, only not ours. */
        fate = strcmp(res->error, "Busy") ? ENV_FATE_DEAD : ENV_FATE_NOT_OURS;
    } else {
        const char *status = json_string_value(json_object_get(res->result, "status")) ?: "failed";
        r.status = !strcmp(status, "ok")               ? INVOKE_OK
                   : !strcmp(status, "function_error") ? INVOKE_FUNCTION_ERROR
                                                       : INVOKE_FAILED;
        fate = r.status == INVOKE_FAILED ? ENV_FATE_DEAD : ENV_FATE_KEPT;
        r.body = (char *)res->body;
        r.body_len = res->len;
        r.log_tail = json_string_value(json_object_get(res->result, "log_tail"));
        r.duration_ms = json_real_value(json_object_get(res->result, "duration_ms"));
    }
    p.done(&r, fate, p.arg);
    free(owned);
}

static void remote_invoke(backend_t *b, const backend_lease_t *lease, const fn_config_t *cfg,
                          const invoke_event_t *ev, backend_done_fn done, void *arg)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    pending_invoke_t *p = xcalloc(1, sizeof *p);
    p->done = done;
    p->arg = arg;
    rpc_client_t *c = worker_client(rb, lease->worker);
    json_t *params = json_pack("{s:s,s:s,s:s}", "env_id", lease->env_id, "request_id",
                               ev->request_id, "invoked_arn", ev->invoked_arn ? ev->invoked_arn : cfg->arn);
    if (ev->client_context)
        json_object_set_new(params, "client_context", json_string(ev->client_context));
    /* The worker enforces the function's timeout; ours only covers a worker
     * that stops answering without dropping the connection. */
    int timeout_ms = cfg->timeout_s * 1000 + 30000;
    if (!c || rpc_call(c, "env.invoke", params, ev->payload, ev->payload_len, timeout_ms,
                       on_invoke_reply, p) < 0) {
        rpc_result_t r = {.error = RPC_UNREACHABLE, .message = "no client for the worker"};
        on_invoke_reply(&r, p);
    }
    json_decref(params);
}

/* ------------------------------------------------------------- release */

static void ignore_reply(const rpc_result_t *res, void *arg) {}

static void release_now(asg_group_t *g, const backend_lease_t *lease, env_fate_t fate)
{
    json_t *params = json_pack("{s:s,s:b,s:I}", "env_id", lease->env_id, "dead", fate == ENV_FATE_DEAD,
                               "lease", (json_int_t)lease->token);
    if (fate == ENV_FATE_NOT_OURS)
        json_object_set_new(params, "not_ours", json_true());
    rpc_call(g->asg[g->leader], "asg.release", params, NULL, 0, 10000, ignore_reply, NULL);
    json_decref(params);
}

static void remote_release(backend_t *b, const backend_lease_t *lease, env_fate_t fate)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    if (fate == ENV_FATE_KEPT && rb->hold_ms > 0 && lease->config_key[0] &&
        now_mono_ms() < lease->holdable_until_ms) {
        held_lease_t *h = xcalloc(1, sizeof *h);
        h->lease = *lease;
        h->until_ms = now_mono_ms() + (uint64_t)rb->hold_ms;
        h->next = rb->held;
        rb->held = h;
        arm_hold_timer(rb);
        return;
    }
    release_now(lease_group(rb, lease), lease, fate);
    /* Its worker lost the environment (restarted, reconciled): the others
     * held on that worker are likely gone too; let the leader sort them out
     * rather than spend a redelivery on each. */
    if (fate == ENV_FATE_DEAD)
        release_held_where(rb, held_on_worker, lease->worker);
}

static void remote_function_changed(backend_t *b, const char *name, store_t *store)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    release_held_where(rb, held_of_function, name); /* before the leader retires what it no longer wants */
    json_t *keep = json_array();
    fn_config_t *cfg = NULL;
    if (store_resolve(store, name, "$LATEST", &cfg, NULL) == 0) {
        json_array_append_new(keep, json_string(cfg->config_key));
        fn_config_free(cfg);
    }
    json_t *versions = store_version_list(store, name);
    size_t i;
    json_t *v;
    json_array_foreach(versions, i, v) {
        const char *ver = json_string_value(json_object_get(v, "Version"));
        if (ver && store_resolve(store, name, ver, &cfg, NULL) == 0) {
            json_array_append_new(keep, json_string(cfg->config_key));
            fn_config_free(cfg);
        }
    }
    json_decref(versions);
    json_t *params = json_pack("{s:s,s:o}", "function", name, "keep_keys", keep);
    asg_group_t *g = &rb->groups[shard_of(rb, name)];
    rpc_call(g->asg[g->leader], "asg.retire", params, NULL, 0, 10000, ignore_reply, NULL);
    json_decref(params);
}

/* ------------------------------------------------------------ snapshots */

/* placement.pick for the function, then env.snapshot on that worker. */
typedef struct remote_snap {
    remote_backend_t *rb;
    backend_snapshot_fn cb;
    void *arg;
    json_t *config;
    char *path;
    char *message;
} remote_snap_t;

#define SNAPSHOT_TIMEOUT_MS 180000 /* boot + Init + save, under emulation */

static void snap_finish(remote_snap_t *rs, bool ok, const char *message)
{
    rs->cb(ok, message, rs->arg);
    json_decref(rs->config);
    free(rs->path);
    free(rs->message);
    free(rs);
}

static void snap_failed_later(evutil_socket_t fd, short what, void *arg)
{
    remote_snap_t *rs = arg;
    snap_finish(rs, false, rs->message);
}

static void on_snapshot_done(const rpc_result_t *res, void *arg)
{
    remote_snap_t *rs = arg;
    if (res->error && !strcmp(res->error, RPC_CANCELLED))
        snap_finish(rs, false, NULL);
    else if (res->error)
        snap_finish(rs, false, res->message ? res->message : res->error);
    else
        snap_finish(rs, true, NULL);
}

static void on_snapshot_picked(const rpc_result_t *res, void *arg)
{
    remote_snap_t *rs = arg;
    if (res->error) {
        snap_finish(rs, false, strcmp(res->error, RPC_CANCELLED) ? (res->message ? res->message : res->error)
                                                                  : NULL);
        return;
    }
    const char *address = json_string_value(json_object_get(res->result, "address"));
    rpc_client_t *c = address ? worker_client(rs->rb, address) : NULL;
    json_t *params = json_pack("{s:O,s:s}", "config", rs->config, "path", rs->path);
    if (!c || rpc_call(c, "env.snapshot", params, NULL, 0, SNAPSHOT_TIMEOUT_MS, on_snapshot_done, rs) < 0)
        snap_finish(rs, false, "the worker placement chose is unreachable");
    json_decref(params);
}

static void remote_snapshot(backend_t *b, const fn_config_t *cfg, const char *path,
                            backend_snapshot_fn cb, void *arg)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    remote_snap_t *rs = xcalloc(1, sizeof *rs);
    rs->rb = rb;
    rs->cb = cb;
    rs->arg = arg;
    rs->config = fn_config_to_json(cfg);
    rs->path = xstrdup(path);
    json_t *params = json_pack("{s:s,s:i}", "function", cfg->name, "memory_mb", cfg->memory_mb);
    if (!rb->placement ||
        rpc_call(rb->placement, "placement.pick", params, NULL, 0, 5000, on_snapshot_picked, rs) < 0) {
        rs->message = xstrdup("no placement service to pick a worker");
        event_base_once(rb->ev, -1, EV_TIMEOUT, snap_failed_later, rs, NULL);
    }
    json_decref(params);
}

/* -------------------------------------------------------------- status */

static void on_asg_status(const rpc_result_t *res, void *arg)
{
    asg_group_t *g = arg;
    int asked = g->status_asked;
    g->status_asked = -1;
    if (res->error) {
        if (strcmp(res->error, RPC_CANCELLED) != 0) /* unreachable: try another next time */
            replica_failed(g, asked);
        return;
    }
    /* A follower says who leads: ask (and send acquires to) that one. */
    const char *role = json_string_value(json_object_get(res->result, "role"));
    int i = replica_index(g, json_string_value(json_object_get(res->result, "leader")));
    if (role && strcmp(role, "leader") != 0 && i >= 0)
        g->leader = i;
    json_decref(g->status);
    g->status = json_deep_copy(res->result);
    json_object_del(g->status, "id");
}

static void on_fleet_status(const rpc_result_t *res, void *arg)
{
    remote_backend_t *rb = arg;
    if (res->error)
        return;
    json_decref(rb->fleet_status);
    rb->fleet_status = json_deep_copy(res->result);
    json_object_del(rb->fleet_status, "id");
}

static void on_status_timer(evutil_socket_t fd, short what, void *arg)
{
    remote_backend_t *rb = arg;
    for (int k = 0; k < rb->n_groups; k++) {
        asg_group_t *g = &rb->groups[k];
        if (g->status_asked >= 0) /* one at a time: its answer is about that replica */
            continue;
        g->status_asked = g->leader;
        rpc_call(g->asg[g->leader], "asg.status", NULL, NULL, 0, 2000, on_asg_status, g);
    }
    if (rb->placement)
        rpc_call(rb->placement, "placement.status", NULL, NULL, 0, 2000, on_fleet_status, rb);
    struct timeval tv = {.tv_sec = STATUS_REFRESH_MS / 1000, .tv_usec = (STATUS_REFRESH_MS % 1000) * 1000};
    evtimer_add(rb->status_timer, &tv);
}

static json_t *group_status(const asg_group_t *g, int shard)
{
    json_t *replicas = json_array();
    for (int i = 0; i < g->n_replicas; i++)
        json_array_append_new(replicas, json_string(g->replicas[i]));
    json_t *asg = g->status ? json_deep_copy(g->status) : json_object();
    json_object_set_new(asg, "replicas", replicas);
    json_object_set_new(asg, "believed_leader", json_string(g->replicas[g->leader]));
    json_object_set_new(asg, "shard", json_integer(shard));
    return asg;
}

static void remote_status(backend_t *b, json_t *status)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    /* "assignment" is shard 0 (the only one unless the table is sharded);
     * "assignment_shards" lists every shard. */
    json_object_set_new(status, "assignment", group_status(&rb->groups[0], 0));
    json_t *shards = json_array();
    for (int k = 0; k < rb->n_groups; k++)
        json_array_append_new(shards, group_status(&rb->groups[k], k));
    json_object_set_new(status, "assignment_shards", shards);
    json_object_set_new(status, "placement",
                        rb->fleet_status ? json_deep_copy(rb->fleet_status) : json_object());
    int held = 0;
    for (held_lease_t *h = rb->held; h; h = h->next)
        held++;
    json_object_set_new(status, "warm_hold",
                        json_pack("{s:i,s:i,s:I}", "hold_ms", rb->hold_ms, "held", held, "reused",
                                  (json_int_t)rb->held_reused));
    /* The supervisor's view of the role processes (flicker up), if any. */
    if (rb->roles_path) {
        json_t *roles = json_load_file(rb->roles_path, 0, NULL);
        if (roles) {
            json_object_set(status, "roles", json_object_get(roles, "roles"));
            json_object_set(status, "supervisor_pid", json_object_get(roles, "supervisor_pid"));
            json_decref(roles);
        }
    }
}

static void remote_free(backend_t *b)
{
    remote_backend_t *rb = (remote_backend_t *)b;
    if (rb->n_groups > 0) { /* give held leases back while the connections are up */
        release_held_where(rb, held_any, NULL);
        for (pending_acquire_t *p = rb->pending; p; p = p->next)
            if (p->from_hold) {
                release_now(p->g, &p->from_hold->lease, ENV_FATE_KEPT);
                free(p->from_hold);
                p->from_hold = NULL;
            }
    }
    if (rb->hold_timer)
        event_free(rb->hold_timer);
    for (int k = 0; k < rb->n_groups; k++) {
        asg_group_t *g = &rb->groups[k];
        for (int i = 0; i < g->n_replicas; i++) {
            rpc_client_free(g->asg[i]);
            free(g->replicas[i]);
        }
        free(g->asg);
        free(g->replicas);
        json_decref(g->status);
    }
    free(rb->groups);
    while (rb->workers) {
        worker_client_t *w = rb->workers;
        rb->workers = w->next;
        rpc_client_free(w->client);
        free(w->address);
        free(w);
    }
    if (rb->placement)
        rpc_client_free(rb->placement);
    while (rb->pending) /* those waiting on a retry timer */
        acquire_free(rb->pending);
    free(rb->placement_address);
    free(rb->roles_path);
    if (rb->status_timer)
        event_free(rb->status_timer);
    json_decref(rb->fleet_status);
    free(rb);
}

static const backend_ops_t remote_ops = {
    .acquire = remote_acquire,
    .cancel = remote_cancel,
    .invoke = remote_invoke,
    .release = remote_release,
    .function_changed = remote_function_changed,
    .snapshot = remote_snapshot,
    .status = remote_status,
    .free = remote_free,
};

backend_t *backend_remote_new(struct event_base *base, const char *assignment_addresses,
                              const char *placement_address, const char *data_dir,
                              int account_concurrency, err_t *err)
{
    remote_backend_t *rb = xcalloc(1, sizeof *rb);
    if (data_dir)
        rb->roles_path = xasprintf("%s/run/roles.json", data_dir);
    rb->base.ops = &remote_ops;
    rb->ev = base;
    rb->account_concurrency = account_concurrency > 0 ? account_concurrency : 1000;
    /* "a1,a2,a3;b1,b2,b3": groups (shards) separated by ';' */
    char *list = xstrdup(assignment_addresses);
    for (char *gs = NULL, *grp = strtok_r(list, ";", &gs); grp; grp = strtok_r(NULL, ";", &gs)) {
        rb->groups = xrealloc(rb->groups, (size_t)(rb->n_groups + 1) * sizeof *rb->groups);
        asg_group_t *g = &rb->groups[rb->n_groups++];
        memset(g, 0, sizeof *g);
        g->status_asked = -1;
        for (char *save = NULL, *a = strtok_r(grp, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
            g->replicas = xrealloc(g->replicas, (size_t)(g->n_replicas + 1) * sizeof *g->replicas);
            g->asg = xrealloc(g->asg, (size_t)(g->n_replicas + 1) * sizeof *g->asg);
            g->asg[g->n_replicas] = rpc_client_new(base, a, NULL, err);
            if (!g->asg[g->n_replicas]) {
                free(list);
                remote_free(&rb->base);
                return NULL;
            }
            g->replicas[g->n_replicas++] = xstrdup(a);
        }
        if (g->n_replicas == 0) {
            free(list);
            err_set(err, EINVAL, "assignment shard %d has no replica address", rb->n_groups);
            remote_free(&rb->base);
            return NULL;
        }
    }
    free(list);
    if (rb->n_groups == 0) {
        err_set(err, EINVAL, "no assignment replica address given");
        remote_free(&rb->base);
        return NULL;
    }
    if (placement_address && *placement_address) {
        rb->placement_address = xstrdup(placement_address);
        rb->placement = rpc_client_new(base, placement_address, NULL, err);
        if (!rb->placement) {
            remote_free(&rb->base);
            return NULL;
        }
    }
    rb->hold_ms = WARM_HOLD_MS;
    const char *hold = getenv("FLICKER_WARM_HOLD_MS"); /* tests: 0 turns it off */
    if (hold && *hold)
        rb->hold_ms = atoi(hold);
    rb->hold_timer = evtimer_new(base, on_hold_timer, rb);
    rb->status_timer = evtimer_new(base, on_status_timer, rb);
    event_active(rb->status_timer, 0, 0);
    return &rb->base;
}
