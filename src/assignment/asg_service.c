/* asg_service.c - see asg_service.h and docs/assignment.md.
 *
 * Two halves:
 *
 * The journal thread (jt_*) makes every blocking journal call.  As a
 * follower it loads the snapshot, reads the log, and loops: read who leads
 * and the term (kept for NotLeader answers and asg.status); if nobody does
 * or the lease is past its expiry, campaign (as "ADDR#NONCE", see
 * new_incarnation); else wait (<= 100 ms) for new records and read them.
 * On winning a campaign it reads to the end of the log and then posts
 * LEADER.  As leader it takes append requests from the loop in FIFO order,
 * appends each with its term, posts APPENDED (ok or not) for each, renews
 * the lease every lease/3 and writes snapshots the loop asks for.  Any
 * failed append/renew/snapshot-with-ESTALE deposes it: remaining requests
 * fail, FOLLOWER is posted and the table is rebuilt (RESET, snapshot,
 * records).  Everything it learns goes to the loop as events, in order,
 * through `inbox` + the eventfd.
 *
 * The loop (everything else) owns the table and applies events in order.
 * As leader it changes the table through jwrite(): apply locally at once
 * (so a concurrent acquire cannot take the same env), queue the append,
 * and run the continuation when the append's fate is known - only then is
 * a reply sent.  Except the idle<->busy changes of warm invokes (hand-out,
 * release): set_state_lazily applies them and replies at once, and
 * on_flush journals, every STATE_FLUSH_MS, the states that differ from the
 * last journaled one; a takeover recovers what was lost from the workers'
 * own states (reconciliation), the workers refuse a second invocation on
 * a busy environment, and lease tokens tell a late release apart (see
 * acq_hand_out, do_release, docs/assignment.md).  The lease is also checked by the loop itself against
 * lease_until (set by the journal thread from the time *before* the
 * campaign/renew request left, plus lease_ms; the journal grants at least
 * that), so a leader whose journal thread is stuck stops serving in time;
 * a loop timer at lease_until steps it down to follower then (on_lease_check)
 * and the journal thread either gets the lease renewed after all (LEADER
 * again, same term) or deposes it.
 *
 * Cold starts make the env_id before placement.pick, which reserves room
 * for it (placement's per-function counts see it before any heartbeat); an
 * acquisition that ends without its environment created gives that back
 * (placement_env_gone -> placement.env_removed {worker_id, env_id, ...}),
 * and so does every environment the leader drops (env_drop), so placement's
 * committed memory follows retirements at once, not a heartbeat later.
 *
 * Volatile leader state (not journaled): in-flight counters for
 * throttling, per-env `unreserved` and `stale` marks, keep-alive timers,
 * RPC clients.  A new leader recomputes in-flight counts from busy envs. */
#include "assignment/asg_service.h"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include "assignment/asg_table.h"
#include "assignment/assignment.h"
#include "common/log.h"
#include "common/rpc.h"
#include "common/util.h"
#include "store/store.h"

#define ROLE "assignment"
/* Idle<->busy changes reach the journal within this (set_state_lazily). */
#define STATE_FLUSH_MS 50

/* ------------------------------------------------------------ shared state */

enum jev_type { JE_RESET, JE_SNAPSHOT, JE_RECORD, JE_LEADER, JE_FOLLOWER, JE_APPENDED };

typedef struct jev {
    enum jev_type type;
    uint64_t index, term, seq;
    bool ok;
    char *data;
    size_t len;
    struct jev *next;
} jev_t;

typedef struct jreq {
    uint64_t seq;
    char *data;
    size_t len;
    struct jreq *next;
} jreq_t;

typedef void (*jdone_fn)(asg_service_t *s, bool ok, void *arg);
typedef struct pending {
    uint64_t seq;
    jdone_fn cb;
    void *arg;
    struct pending *next;
} pending_t;

typedef struct worker_conn {
    char *addr;
    rpc_client_t *client;
    struct worker_conn *next;
} worker_conn_t;

typedef struct fn_count {
    char *name;
    int n;
    struct fn_count *next;
} fn_count_t;

typedef struct deferred { /* a request held while the new leader reconciles */
    rpc_call_t *call;
    char *method;
    json_t *params;
    struct deferred *next;
} deferred_t;

enum role { R_FOLLOWER, R_RECONCILING, R_LEADER };

struct asg_service {
    struct event_base *base;
    asg_service_opts_t o;
    char addr[256], id[256];
    char **pl_addrs;
    int n_pl, pl_cur;
    rpc_client_t *placement;
    rpc_server_t *srv;
    journal_t *j;

    /* shared with the journal thread, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    bool th_started, stop;
    jev_t *in_head, *in_tail;
    jreq_t *out_head, *out_tail;
    char *snap_data;
    size_t snap_len;
    uint64_t snap_upto;
    char leader_id[128];       /* who leads, as an address (incarnation suffix stripped) */
    uint64_t journal_term;     /* the newest term the journal thread has seen */
    uint64_t lease_until;      /* mono ms; 0: no lease */
    uint64_t lapsed_term;      /* the loop stepped down when this term's lease
                                  ran out by its clock; the journal thread
                                  renews at once and, if the journal still
                                  grants it, posts LEADER again (resumed) */
    int efd;
    struct event *ev_efd;

    uint64_t jt_last_reopen_ms; /* journal thread only: rate of reopening */
    /* journal thread only: the candidate id of this leadership attempt,
     * "ADDR#<16 hex>" (see new_incarnation) */
    char cand[128];            /* journal_leader_t.id holds 127 bytes */

    /* loop only */
    struct event *lease_ev;    /* steps down when the lease runs out by our clock */
    struct event *sweep_ev;    /* leader: reclaims environments whose holder is gone */
    struct event *reconcile_ev; /* takeover: asks placement for its workers again */
    struct event *flush_ev;    /* leader: journals states changed lazily (STATE_FLUSH_MS) */
    bool flush_armed;
    uint64_t sweep_epoch;      /* epoch of the sweep's outstanding env.list calls */
    asg_table_t *table;
    enum role role;
    uint64_t term;
    uint64_t epoch;            /* +1 at every leadership start and end: work begun
                                  in one (acquisitions, reconciliation) is stale in
                                  the next, even in the same term (a resumed lease) */
    pending_t *p_head, *p_tail;
    uint64_t next_seq;
    uint32_t lease_seq;        /* hand-outs in this term (lease tokens) */
    uint64_t applied;          /* index of the last record in the table */
    int since_snap;
    bool snap_inflight;
    fn_count_t *counts;
    int in_flight, unreserved_in_flight;
    worker_conn_t *workers;
    deferred_t *deferred;
    int reconcile_pending;     /* env.list calls outstanding */
    int reconcile_tries;       /* placement.workers attempts in this takeover */
    json_t *reconcile_seen;    /* worker_id -> {env_id: state} */
    json_t *reconcile_known;   /* worker ids placement listed (not lost) */
    bool closing;
};

static void handle_request(asg_service_t *s, rpc_call_t *call, const char *method, json_t *params);

/* --------------------------------------------------------------- helpers */

static void post(asg_service_t *s, jev_t *ev) /* journal thread; mu held */
{
    ev->next = NULL;
    if (s->in_tail)
        s->in_tail->next = ev;
    else
        s->in_head = ev;
    s->in_tail = ev;
    uint64_t one = 1;
    if (write(s->efd, &one, sizeof one) < 0) { /* counter overflow is impossible here */
    }
}

static void post_new(asg_service_t *s, enum jev_type t, uint64_t index, uint64_t term,
                     const void *data, size_t len)
{
    jev_t *ev = xcalloc(1, sizeof *ev);
    ev->type = t;
    ev->index = index;
    ev->term = term;
    if (data) {
        ev->data = xmalloc(len + 1);
        memcpy(ev->data, data, len);
        ev->data[len] = 0;
        ev->len = len;
    }
    pthread_mutex_lock(&s->mu);
    post(s, ev);
    pthread_mutex_unlock(&s->mu);
}

static bool stopping(asg_service_t *s)
{
    pthread_mutex_lock(&s->mu);
    bool st = s->stop;
    pthread_mutex_unlock(&s->mu);
    return st;
}

/* Candidate ids are "ADDR#NONCE": the replica's advertised address plus 16
 * random hex digits, new for every leadership attempt that follows a
 * deposition and for every process.  A journal lets a candidate that
 * already holds a live lease keep its term (journal.h, campaign), so with
 * the bare address a replica restarted at the same address (kill -9, then
 * the supervisor) found "itself" in the leader record and resumed the dead
 * process's term without an election: two leaders, one term.  With a
 * fresh nonce the journal sees a different candidate, which can only win
 * once the old lease has expired, with a higher term. */
#define INCARNATION_LEN 17 /* '#' + 16 hex digits */

static void new_incarnation(asg_service_t *s) /* journal thread (or before it starts) */
{
    unsigned char rnd[8];
    char hex[17];
    random_bytes(rnd, sizeof rnd);
    hex_encode(rnd, sizeof rnd, hex);
    /* asg_service_new checked that the address leaves room for the suffix */
    snprintf(s->cand, sizeof s->cand, "%.*s#%s", (int)(sizeof s->cand - INCARNATION_LEN - 1), s->addr,
             hex);
}

/* Copies a journal leader id without its "#NONCE" suffix: the address
 * frontends and other replicas can reach. */
static void strip_incarnation(const char *id, char *out, size_t n)
{
    size_t len = strlen(id);
    const char *hash = strrchr(id, '#');
    if (hash && (size_t)(id + len - hash) == INCARNATION_LEN &&
        strspn(hash + 1, "0123456789abcdef") == INCARNATION_LEN - 1)
        len = (size_t)(hash - id);
    snprintf(out, n, "%.*s", (int)(len < n ? len : n - 1), id);
}

/* Publishes what the journal thread knows to the loop: the lease (mono ms,
 * 0 = none), who leads (a journal id, or NULL: unchanged) and the newest
 * term seen (0: unchanged). */
static void set_lease(asg_service_t *s, uint64_t until, const char *leader, uint64_t term)
{
    pthread_mutex_lock(&s->mu);
    s->lease_until = until;
    if (leader)
        strip_incarnation(leader, s->leader_id, sizeof s->leader_id);
    if (term > s->journal_term)
        s->journal_term = term;
    pthread_mutex_unlock(&s->mu);
}

static void nap(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------- journal thread */

typedef struct rd {
    asg_service_t *s;
    uint64_t next;
} rd_t;

static int jt_rec(const journal_record_t *rec, void *arg)
{
    rd_t *r = arg;
    post_new(r->s, JE_RECORD, rec->index, rec->term, rec->data, rec->len);
    r->next = rec->index + 1;
    return 0;
}

/* A journal handle that reports an earlier failed write or sync (the file
 * journal poisons itself on ENOSPC/EIO: its state is unknown) is useless
 * until reopened.  With the spec it was opened from, reopen it (at most
 * once a second): once the disk has room again the replica recovers by
 * itself.  Journal thread only.  Returns true when s->j was replaced. */
static bool jt_reopen_if_broken(asg_service_t *s, const err_t *err)
{
    if (!s->o.journal_spec || err->code != EIO || !strstr(err->msg, "reopen"))
        return false;
    uint64_t now = now_mono_ms();
    if (now - s->jt_last_reopen_ms < 1000)
        return false;
    s->jt_last_reopen_ms = now;
    err_t e = {0};
    journal_t *fresh = journal_open(s->o.journal_spec, &e);
    if (!fresh) {
        log_warn(ROLE, "%s: reopening the journal: %s", s->id, e.msg);
        return false;
    }
    journal_close(s->j);
    s->j = fresh;
    log_info(ROLE, "%s: journal reopened after: %s", s->id, err->msg);
    return true;
}

/* Reads records >= *next and posts them.  Returns 0, 1 when records were
 * compacted away past *next (the caller must reload), -1 on error. */
static int jt_read(asg_service_t *s, uint64_t *next)
{
    err_t err = {0};
    rd_t r = {s, *next};
    uint64_t first = 0;
    if (s->j->ops->read(s->j, *next, jt_rec, &r, &first, &err) < 0) {
        if (!jt_reopen_if_broken(s, &err))
            log_warn(ROLE, "journal read: %s", err.msg);
        return -1;
    }
    if (first > *next) { /* compacted past what we have: reload from the snapshot */
        *next = r.next;
        return 1;
    }
    *next = r.next;
    return 0;
}

/* RESET + snapshot + every record; *next is the index after the last. */
static int jt_load(asg_service_t *s, uint64_t *next)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        err_t err = {0};
        post_new(s, JE_RESET, 0, 0, NULL, 0);
        uint64_t upto = 0;
        void *data = NULL;
        size_t len = 0;
        int r = s->j->ops->load_snapshot(s->j, &upto, &data, &len, &err);
        if (r < 0) {
            if (!jt_reopen_if_broken(s, &err))
                log_warn(ROLE, "journal load_snapshot: %s", err.msg);
            return -1;
        }
        if (r == 1)
            post_new(s, JE_SNAPSHOT, upto, 0, data, len);
        free(data);
        *next = upto + 1;
        r = jt_read(s, next);
        if (r <= 0)
            return r;
    }
    return -1;
}

static void jt_fail_queued(asg_service_t *s) /* mu held */
{
    while (s->out_head) {
        jreq_t *q = s->out_head;
        s->out_head = q->next;
        jev_t *ev = xcalloc(1, sizeof *ev);
        ev->type = JE_APPENDED;
        ev->seq = q->seq;
        ev->ok = false;
        post(s, ev);
        free(q->data);
        free(q);
    }
    s->out_tail = NULL;
    free(s->snap_data);
    s->snap_data = NULL;
}

static void *jt_main(void *arg)
{
    asg_service_t *s = arg;
    journal_t *j = s->j;
    uint64_t next = 1, term = 0, next_renew = 0;
    bool leader = false, need_load = true;
    char known_leader[128] = "";
    const uint64_t lease = (uint64_t)s->o.lease_ms;
    while (!stopping(s)) {
        err_t err = {0};
        j = s->j; /* jt_reopen_if_broken may have replaced it */
        if (need_load) {
            if (jt_load(s, &next) < 0) {
                nap(200);
                continue;
            }
            need_load = false;
        }
        if (!leader) {
            journal_leader_t L;
            int wait_ms = 100;
            if (j->ops->leader(j, &L, &err) == 0) {
                if (strcmp(L.id, known_leader)) {
                    log_info(ROLE, "%s: leader is now '%s' (term %llu)", s->id, L.id,
                             (unsigned long long)L.term);
                    snprintf(known_leader, sizeof known_leader, "%s", L.id);
                }
                set_lease(s, 0, L.id, L.term);
                /* Only an absent or expired lease is campaigned for, even
                 * if it carries this replica's address: that is an
                 * earlier incarnation (or leadership) of it, whose term
                 * must not be reused (see new_incarnation). */
                if (!L.id[0] || now_wall_ms() >= L.lease_expiry_ms) {
                    uint64_t t0 = now_mono_ms(), t = 0;
                    int r = j->ops->campaign(j, s->cand, lease, &t, &err);
                    if (r == 1) {
                        int rr = jt_read(s, &next);
                        if (rr != 0) { /* cannot see the whole log: do not lead */
                            j->ops->resign(j, t, &err);
                            need_load = true;
                            continue;
                        }
                        term = t;
                        leader = true;
                        next_renew = t0 + lease / 3;
                        pthread_mutex_lock(&s->mu);
                        s->lapsed_term = 0;
                        pthread_mutex_unlock(&s->mu);
                        set_lease(s, t0 + lease, s->cand, term);
                        post_new(s, JE_LEADER, next - 1, term, NULL, 0);
                        log_info(ROLE, "%s: leader, term %llu, log end %llu", s->id,
                                 (unsigned long long)term, (unsigned long long)(next - 1));
                        continue;
                    } else if (r < 0) {
                        log_warn(ROLE, "campaign: %s", err.msg);
                    } else {
                        set_lease(s, 0, NULL, t);
                        /* past its expiry by our clock but still held: the
                         * journal is about to drop it; poll closely */
                        wait_ms = 20;
                    }
                } else {
                    uint64_t left = L.lease_expiry_ms - now_wall_ms();
                    wait_ms = left < 100 ? (int)left + 1 : 100;
                }
            } else {
                if (jt_reopen_if_broken(s, &err))
                    need_load = true;
                else
                    log_warn(ROLE, "journal leader: %s", err.msg);
                nap(100);
                continue;
            }
            int r = j->ops->wait(j, next, wait_ms, &err);
            if (r == 1) {
                if (jt_read(s, &next) != 0)
                    need_load = true;
            } else if (r < 0) {
                nap(100);
            }
            continue;
        }

        /* leader */
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !s->out_head && !s->snap_data && s->lapsed_term != term &&
               now_mono_ms() < next_renew) {
            uint64_t left = next_renew - now_mono_ms();
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += (time_t)(left / 1000);
            ts.tv_nsec += (long)(left % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        }
        jreq_t *reqs = s->out_head;
        s->out_head = s->out_tail = NULL;
        char *snap = s->snap_data;
        size_t snap_len = s->snap_len;
        uint64_t snap_upto = s->snap_upto;
        s->snap_data = NULL;
        /* the loop stepped down on its own lease clock: renew at once */
        if (s->lapsed_term == term)
            next_renew = 0;
        pthread_mutex_unlock(&s->mu);

        bool deposed = false;
        /* Everything queued goes to the journal as one group (one fsync):
         * decisions made while the last write was in progress share it. */
        size_t nq = 0, ndone = 0;
        for (jreq_t *q = reqs; q; q = q->next)
            nq++;
        uint64_t *idxs = NULL;
        if (nq > 1 && j->ops->append_many) {
            const void **datas = xcalloc(nq, sizeof *datas);
            size_t *lens = xcalloc(nq, sizeof *lens);
            idxs = xcalloc(nq, sizeof *idxs);
            size_t i = 0;
            for (jreq_t *q = reqs; q; q = q->next, i++) {
                datas[i] = q->data;
                lens[i] = q->len;
            }
            ndone = j->ops->append_many(j, term, nq, datas, lens, idxs, &err);
            free(datas);
            free(lens);
        }
        for (size_t qi = 0; reqs; qi++) {
            jreq_t *q = reqs;
            reqs = q->next;
            uint64_t idx = 0;
            bool ok;
            if (idxs) {
                ok = qi < ndone;
                idx = ok ? idxs[qi] : 0;
            } else {
                ok = !deposed && j->ops->append(j, term, q->data, q->len, &idx, &err) == 0;
            }
            if (!ok && !deposed) {
                log_warn(ROLE, "%s: append failed (%s): deposed", s->id, err.msg);
                deposed = true;
            }
            jev_t *ev = xcalloc(1, sizeof *ev);
            ev->type = JE_APPENDED;
            ev->seq = q->seq;
            ev->index = idx;
            ev->ok = ok;
            pthread_mutex_lock(&s->mu);
            post(s, ev);
            pthread_mutex_unlock(&s->mu);
            free(q->data);
            free(q);
        }
        free(idxs);
        if (snap && !deposed) {
            if (j->ops->snapshot(j, term, snap_upto, snap, snap_len, &err) < 0) {
                log_warn(ROLE, "snapshot at %llu: %s", (unsigned long long)snap_upto, err.msg);
                deposed = err.code == ESTALE;
            }
        }
        free(snap);
        if (!deposed && now_mono_ms() >= next_renew) {
            uint64_t t0 = now_mono_ms();
            if (j->ops->renew(j, term, lease, &err) == 0) {
                set_lease(s, t0 + lease, NULL, 0);
                next_renew = t0 + lease / 3;
                /* Renewed, so nobody else has led since (the journal
                 * fences terms): if the loop had stepped down meanwhile,
                 * it leads again in the same term, with a fresh lease. */
                pthread_mutex_lock(&s->mu);
                if (s->lapsed_term == term && now_mono_ms() < t0 + lease) {
                    s->lapsed_term = 0;
                    strip_incarnation(s->cand, s->leader_id, sizeof s->leader_id);
                    jev_t *ev = xcalloc(1, sizeof *ev);
                    ev->type = JE_LEADER;
                    ev->term = term;
                    ev->ok = true; /* resumed: the loop's table is current */
                    post(s, ev);
                    log_info(ROLE, "%s: lease of term %llu renewed after it ran out by our clock: "
                             "leading again", s->id, (unsigned long long)term);
                }
                pthread_mutex_unlock(&s->mu);
            } else {
                log_warn(ROLE, "%s: renew failed (%s): deposed", s->id, err.msg);
                deposed = true;
            }
        }
        if (deposed) {
            leader = false;
            pthread_mutex_lock(&s->mu);
            s->lease_until = 0;
            s->lapsed_term = 0;
            s->leader_id[0] = 0;
            jt_fail_queued(s);
            jev_t *ev = xcalloc(1, sizeof *ev);
            ev->type = JE_FOLLOWER;
            post(s, ev);
            pthread_mutex_unlock(&s->mu);
            new_incarnation(s); /* the next leadership is a new one, with a new term */
            need_load = true;
        }
    }
    pthread_mutex_lock(&s->mu);
    jt_fail_queued(s);
    s->lease_until = 0;
    pthread_mutex_unlock(&s->mu);
    if (leader) {
        err_t err = {0};
        if (j->ops->resign(j, term, &err) < 0)
            log_warn(ROLE, "resign: %s", err.msg);
        else
            log_info(ROLE, "%s: resigned term %llu", s->id, (unsigned long long)term);
    }
    return NULL;
}

/* ------------------------------------------------------------ loop side */

static bool lease_live(asg_service_t *s)
{
    pthread_mutex_lock(&s->mu);
    bool live = s->lease_until && now_mono_ms() < s->lease_until;
    pthread_mutex_unlock(&s->mu);
    return live;
}

static bool serving(asg_service_t *s) { return s->role == R_LEADER && !s->closing && lease_live(s); }

static void reply_not_leader(asg_service_t *s, rpc_call_t *call)
{
    char leader[128];
    pthread_mutex_lock(&s->mu); /* never name ourselves: we are not serving */
    snprintf(leader, sizeof leader, "%s", strcmp(s->leader_id, s->addr) ? s->leader_id : "");
    pthread_mutex_unlock(&s->mu);
    json_t *x = json_pack("{s:s}", "leader", leader);
    rpc_reply_error_ex(call, "NotLeader", x, NULL, 0, "%s", "this replica is not the assignment leader");
    json_decref(x);
}

static fn_count_t *count_of(asg_service_t *s, const char *name, bool create)
{
    for (fn_count_t *c = s->counts; c; c = c->next)
        if (!strcmp(c->name, name))
            return c;
    if (!create)
        return NULL;
    fn_count_t *c = xcalloc(1, sizeof *c);
    c->name = xstrdup(name);
    c->next = s->counts;
    s->counts = c;
    return c;
}

static void count_add(asg_service_t *s, const char *name, bool unreserved, int delta)
{
    fn_count_t *c = count_of(s, name, true);
    c->n += delta;
    s->in_flight += delta;
    if (unreserved)
        s->unreserved_in_flight += delta;
    if (c->n == 0) {
        fn_count_t **pp = &s->counts;
        while (*pp != c)
            pp = &(*pp)->next;
        *pp = c->next;
        free(c->name);
        free(c);
    }
}

static void counts_clear(asg_service_t *s)
{
    while (s->counts) {
        fn_count_t *c = s->counts;
        s->counts = c->next;
        free(c->name);
        free(c);
    }
    s->in_flight = s->unreserved_in_flight = 0;
}

static void note_logged(asg_service_t *s, const char *env_id);

/* Queues rec's text for the journal thread; cb runs from the loop once the
 * append succeeded (ok) or failed/was abandoned (!ok). */
static void jqueue(asg_service_t *s, json_t *rec, jdone_fn cb, void *arg)
{
    jreq_t *q = xcalloc(1, sizeof *q);
    q->seq = ++s->next_seq;
    q->data = json_dumps(rec, JSON_COMPACT);
    q->len = strlen(q->data);
    json_decref(rec);
    pending_t *p = xcalloc(1, sizeof *p);
    p->seq = q->seq;
    p->cb = cb;
    p->arg = arg;
    if (s->p_tail)
        s->p_tail->next = p;
    else
        s->p_head = p;
    s->p_tail = p;
    pthread_mutex_lock(&s->mu);
    if (s->out_tail)
        s->out_tail->next = q;
    else
        s->out_head = q;
    s->out_tail = q;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Journals rec (stolen) after applying it locally; cb runs from the loop
 * once the append succeeded (ok) or failed/was abandoned (!ok).  When the
 * service is closing, or is a follower, nothing is applied and cb runs at
 * once with !ok: the table of a follower changes only through the journal
 * (so a leader that resumes its term after a lapse, or a new one, has
 * exactly the journal's table). */
static void jwrite(asg_service_t *s, json_t *rec, jdone_fn cb, void *arg)
{
    err_t err = {0};
    if (s->closing || s->role == R_FOLLOWER) {
        json_decref(rec);
        if (cb)
            cb(s, false, arg);
        return;
    }
    if (asg_table_apply(s->table, rec, &err) < 0)
        log_error(ROLE, "own record rejected: %s", err.msg);
    note_logged(s, json_string_value(json_object_get(rec, "env_id")));
    jqueue(s, rec, cb, arg);
}

static void arm_flush(asg_service_t *s);

/* Changes env's state between idle and busy at once and journals it
 * lazily: within STATE_FLUSH_MS, only if it still differs from what was
 * last journaled (a busy-then-idle-again environment writes nothing).
 * The hot path of a warm invoke (hand-out, release) so goes without a
 * journal append; what that costs at a failover is covered by
 * reconciliation (see acq_hand_out). */
static void set_state_lazily(asg_service_t *s, asg_env_t *e, enum asg_state st)
{
    if (s->closing || s->role == R_FOLLOWER)
        return;
    json_t *rec = asg_rec_state(e->env_id, st);
    err_t err = {0};
    if (asg_table_apply(s->table, rec, &err) < 0)
        log_error(ROLE, "own record rejected: %s", err.msg);
    json_decref(rec);
    arm_flush(s);
}

static rpc_client_t *worker_client(asg_service_t *s, const char *addr);

static void fire_and_forget(const rpc_result_t *r, void *arg)
{
    if (r->error && strcmp(r->error, RPC_CANCELLED))
        log_warn(ROLE, "%s failed: %s: %s", (const char *)arg, r->error, r->message);
}

static void placement_env_gone(asg_service_t *s, const char *worker_id, const char *env_id,
                               const char *function, int memory_mb);

static void worker_destroy(asg_service_t *s, const char *addr, const char *env_id)
{
    if (s->closing)
        return;
    rpc_client_t *c = worker_client(s, addr);
    if (!c)
        return;
    json_t *p = json_pack("{s:s}", "env_id", env_id);
    rpc_call(c, "env.destroy", p, NULL, 0, 10000, fire_and_forget, "env.destroy");
    json_decref(p);
}

/* Removes env from the table (journaled), adjusting in-flight counts if
 * it was busy, and optionally destroys it on its worker. */
static void env_drop(asg_service_t *s, asg_env_t *e, bool destroy)
{
    if (e->state == ASG_BUSY)
        count_add(s, e->function, e->unreserved, -1);
    if (destroy)
        worker_destroy(s, e->worker_address, e->env_id);
    placement_env_gone(s, e->worker_id, e->env_id, e->function, e->memory_mb);
    jwrite(s, asg_rec_remove(e->env_id), NULL, NULL);
}

/* keep-alive */
typedef struct ka {
    asg_service_t *s;
    asg_env_t *e;
    struct event *ev;
    int idle_seen;           /* sweeps in a row that found it busy here, idle on its worker */
    enum asg_state logged;   /* its state as last written to the journal (leader) */
    int64_t lease;           /* busy: its holder's lease token; 0: holder unknown
                                (handed out by an earlier leader, or another request
                                runs in it), any release is taken */
} ka_t;

static void ka_fire(evutil_socket_t fd, short what, void *arg)
{
    ka_t *k = arg;
    asg_service_t *s = k->s;
    asg_env_t *e = k->e;
    if (s->role != R_LEADER || e->state != ASG_IDLE)
        return;
    log_debug(ROLE, "keep-alive over for %s", e->env_id);
    env_drop(s, e, true); /* frees k through the remove callback */
}

static void ka_arm(asg_service_t *s, asg_env_t *e)
{
    ka_t *k = e->aux;
    if (!k) {
        k = xcalloc(1, sizeof *k);
        k->s = s;
        k->e = e;
        k->ev = evtimer_new(s->base, ka_fire, k);
        e->aux = k;
    }
    struct timeval tv = {s->o.keep_alive_ms / 1000, (s->o.keep_alive_ms % 1000) * 1000};
    evtimer_add(k->ev, &tv);
}

static void ka_disarm(asg_env_t *e)
{
    ka_t *k = e->aux;
    if (k) {
        evtimer_del(k->ev);
        k->idle_seen = 0; /* handed out now: the sweep starts over */
    }
}

/* The env's ka_t, made (not armed) if it has none. */
static ka_t *ka_get(asg_service_t *s, asg_env_t *e)
{
    if (!e->aux) {
        ka_t *k = xcalloc(1, sizeof *k);
        k->s = s;
        k->e = e;
        k->ev = evtimer_new(s->base, ka_fire, k);
        e->aux = k;
    }
    return e->aux;
}

static void note_logged(asg_service_t *s, const char *env_id)
{
    asg_env_t *e = env_id ? asg_table_get(s->table, env_id) : NULL;
    if (e)
        ka_get(s, e)->logged = e->state;
}

/* Journals the states set_state_lazily changed since the last flush. */
static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    asg_service_t *s = arg;
    s->flush_armed = false;
    if (s->role != R_LEADER || s->closing)
        return;
    int n = 0;
    for (asg_env_t *e = asg_table_first(s->table); e; e = e->next) {
        ka_t *k = ka_get(s, e);
        if (k->logged != e->state && (e->state == ASG_IDLE || e->state == ASG_BUSY)) {
            k->logged = e->state;
            jqueue(s, asg_rec_state(e->env_id, e->state), NULL, NULL);
            n++;
        }
    }
    if (n)
        log_debug(ROLE, "journaled %d state change(s)", n);
}

static void arm_flush(asg_service_t *s)
{
    if (s->flush_armed)
        return;
    s->flush_armed = true;
    struct timeval tv = {0, STATE_FLUSH_MS * 1000};
    evtimer_add(s->flush_ev, &tv);
}

static void on_env_removed(asg_env_t *e, void *arg)
{
    ka_t *k = e->aux;
    if (k) {
        event_free(k->ev);
        free(k);
        e->aux = NULL;
    }
}

/* ------------------------------------------------------------- clients */

static void on_worker_notify(rpc_client_t *c, const char *method, json_t *params, const void *body,
                             size_t len, void *arg)
{
    asg_service_t *s = arg;
    if (strcmp(method, "env.dead") || s->role != R_LEADER)
        return;
    asg_env_t *e = asg_table_get(s->table, json_string_value(json_object_get(params, "env_id")));
    if (e && e->state != ASG_INITIALIZING) { /* initializing: the create reply handles it */
        log_info(ROLE, "env %s died on %s", e->env_id, e->worker_id);
        env_drop(s, e, false);
    }
}

static rpc_client_t *worker_client(asg_service_t *s, const char *addr)
{
    for (worker_conn_t *w = s->workers; w; w = w->next)
        if (!strcmp(w->addr, addr))
            return w->client;
    err_t err = {0};
    rpc_client_t *c = rpc_client_new(s->base, addr, NULL, &err);
    if (!c) {
        log_warn(ROLE, "worker %s: %s", addr, err.msg);
        return NULL;
    }
    rpc_client_set_notify_cb(c, on_worker_notify, s);
    worker_conn_t *w = xcalloc(1, sizeof *w);
    w->addr = xstrdup(addr);
    w->client = c;
    w->next = s->workers;
    s->workers = w;
    return c;
}

static void on_placement_notify(rpc_client_t *c, const char *method, json_t *params,
                                const void *body, size_t len, void *arg)
{
    asg_service_t *s = arg;
    if (strcmp(method, "worker.lost") || s->role != R_LEADER)
        return;
    /* {worker_id} ("id" cannot be a notification parameter in rpc.h) */
    const char *wid = json_string_value(json_object_get(params, "worker_id"));
    if (!wid)
        return;
    log_info(ROLE, "worker %s lost: dropping its environments", wid);
    asg_env_t *e = asg_table_first(s->table);
    while (e) {
        asg_env_t *nx = e->next;
        if (!strcmp(e->worker_id, wid) && e->state != ASG_INITIALIZING)
            env_drop(s, e, false);
        e = nx;
    }
}

static rpc_client_t *placement_client(asg_service_t *s)
{
    if (!s->placement && s->n_pl) {
        err_t err = {0};
        s->placement = rpc_client_new(s->base, s->pl_addrs[s->pl_cur], NULL, &err);
        if (!s->placement)
            log_warn(ROLE, "placement %s: %s", s->pl_addrs[s->pl_cur], err.msg);
        else
            rpc_client_set_notify_cb(s->placement, on_placement_notify, s);
    }
    return s->placement;
}

/* After a transport failure, the next placement call goes to the next address. */
static void placement_failed(asg_service_t *s, const char *error)
{
    if (s->n_pl > 1 && s->placement && !s->closing &&
        (!strcmp(error, RPC_UNREACHABLE) || !strcmp(error, RPC_DISCONNECTED))) {
        rpc_client_free(s->placement);
        s->placement = NULL;
        s->pl_cur = (s->pl_cur + 1) % s->n_pl;
    }
}

/* Tells placement that env_id (of `function`, memory_mb) left worker_id:
 * never created (the pick's reservation is given back), destroyed or dead
 * (it stops counting before the worker's next heartbeat says so).  Fire
 * and forget: a lost notice only lasts until that heartbeat, or for a
 * reservation placement's heartbeat timeout. */
static void placement_env_gone(asg_service_t *s, const char *worker_id, const char *env_id,
                               const char *function, int memory_mb)
{
    if (s->closing || !worker_id || !env_id)
        return;
    rpc_client_t *pl = placement_client(s);
    if (!pl)
        return;
    json_t *p = json_pack("{s:s,s:s,s:s,s:i}", "worker_id", worker_id, "env_id", env_id,
                          "function", function ? function : "", "memory_mb", memory_mb);
    rpc_call(pl, "placement.env_removed", p, NULL, 0, 5000, fire_and_forget, "placement.env_removed");
    json_decref(p);
}

/* -------------------------------------------------------------- acquire */

typedef struct acq {
    asg_service_t *s;
    rpc_call_t *call;
    uint64_t epoch;
    json_t *config;
    char *fn, *key, *env_id, *worker_id, *worker_addr;
    int memory_mb, timeout_s;
    int pool;       /* the concurrency pool it counts in: reserved, or unreserved */
    bool unreserved, counted, cold;
    bool placed;    /* placement.pick reserved room for env_id on worker_id */
    bool created;   /* the worker answered env.create with success */
    /* for a failed create: the reply to send after the remove is journaled */
    char *err_code, *err_msg;
    json_t *err_extra;
    void *err_body;
    size_t err_len;
} acq_t;

static void acq_free(acq_t *a)
{
    json_decref(a->config);
    free(a->fn);
    free(a->key);
    free(a->env_id);
    free(a->worker_id);
    free(a->worker_addr);
    free(a->err_code);
    free(a->err_msg);
    json_decref(a->err_extra);
    free(a->err_body);
    free(a);
}

/* Still the leadership the acquisition began in (see epoch). */
static bool acq_current(acq_t *a)
{
    return a->s->role == R_LEADER && a->s->epoch == a->epoch && !a->s->closing;
}


/* Replies with an error and frees a (the in-flight count is given back; a
 * placement reservation for an environment that was not created is
 * released). */
static void acq_fail(acq_t *a, const char *code, const char *msg, json_t *extra, const void *body,
                     size_t len)
{
    if (a->counted)
        count_add(a->s, a->fn, a->unreserved, -1);
    if (a->placed && !a->created)
        placement_env_gone(a->s, a->worker_id, a->env_id, a->fn, a->memory_mb);
    if (!strcmp(code, "NotLeader"))
        reply_not_leader(a->s, a->call);
    else
        rpc_reply_error_ex(a->call, code, extra, body, len, "%s", msg);
    acq_free(a);
}

/* How many more invocations the pool acquisition a counts in would admit
 * now (it is counted already): frontends hold warm leases only when there
 * is room to spare (backend_remote.c, warm hold). */
static int acq_headroom(const acq_t *a)
{
    const asg_service_t *s = a->s;
    int used = s->unreserved_in_flight;
    if (!a->unreserved) {
        fn_count_t *c = count_of((asg_service_t *)s, a->fn, false);
        used = c ? c->n : 0;
    }
    return a->pool - used;
}

static void acq_reply_ok(acq_t *a, bool cold, int64_t lease)
{
    json_t *r = json_pack("{s:s,s:s,s:s,s:b,s:I,s:i,s:i}", "env_id", a->env_id, "worker_id", a->worker_id,
                          "worker_address", a->worker_addr, "cold", cold, "lease", (json_int_t)lease,
                          "pool", a->pool, "headroom", acq_headroom(a));
    rpc_reply(a->call, r, NULL, 0);
    json_decref(r);
    acq_free(a);
}

/* Hands env_id out: `state busy` is applied at once and queued for the
 * journal, and the reply goes without waiting for it to be durable (an
 * fdatasync, the largest cost of a warm invoke otherwise).  Safe because a
 * busy state that never reached the journal is only ever lost together
 * with this leadership, and the next leader learns it back: reconciliation
 * marks environments busy that their worker says are busy, and a worker
 * refuses a second invocation on a busy environment (the frontend then
 * asks again), so no environment ever runs two requests at once.  Answers
 * NotLeader instead when this replica no longer serves (lease ran out). */
static void acq_hand_out(acq_t *a)
{
    asg_service_t *s = a->s;
    asg_env_t *e = asg_table_get(s->table, a->env_id);
    if (!acq_current(a) || !serving(s) || !e) {
        acq_fail(a, "NotLeader", "", NULL, NULL, 0);
        return;
    }
    e->unreserved = a->unreserved;
    set_state_lazily(s, e, ASG_BUSY);
    /* a token unique over terms: the term, and the hand-out within it */
    int64_t token = (int64_t)((s->term & 0x7fffffffu) << 32 | ++s->lease_seq);
    ka_get(s, e)->lease = token;
    acq_reply_ok(a, a->cold, token);
}

/* The failed env's `remove` is journaled: now send the stored error. */
static void acq_removed_done(asg_service_t *s, bool ok, void *arg)
{
    acq_t *a = arg;
    if (!ok || !acq_current(a)) {
        acq_fail(a, "NotLeader", "", NULL, NULL, 0);
        return;
    }
    char *code = a->err_code, *msg = a->err_msg;
    json_t *x = a->err_extra;
    void *body = a->err_body;
    a->err_code = a->err_msg = NULL;
    a->err_extra = NULL;
    a->err_body = NULL;
    acq_fail(a, code, msg ? msg : "", x, body, a->err_len);
    free(code);
    free(msg);
    json_decref(x);
    free(body);
}

/* The worker answered env.create. */
static void on_created(const rpc_result_t *r, void *arg)
{
    acq_t *a = arg;
    asg_service_t *s = a->s;
    if (!acq_current(a)) {
        /* Begun in an earlier leadership.  If this replica leads again (a
         * lease resumed in the same term), the environment is its own:
         * keep it warm if the table still has it initializing, destroy it
         * if reconciliation dropped it meanwhile (nobody else can know it). */
        asg_env_t *e = asg_table_get(s->table, a->env_id);
        if (!r->error && s->role == R_LEADER && !s->closing) {
            a->created = true;
            if (!e) {
                worker_destroy(s, a->worker_addr, a->env_id);
                a->created = false;
            } else if (e->state == ASG_INITIALIZING) {
                jwrite(s, asg_rec_state(a->env_id, ASG_IDLE), NULL, NULL);
                if ((e = asg_table_get(s->table, a->env_id)) && e->state == ASG_IDLE)
                    ka_arm(s, e);
            }
        } else if (r->error && s->role == R_LEADER && !s->closing && e &&
                   e->state == ASG_INITIALIZING) { /* it failed: no entry may stay behind */
            if (strcmp(r->error, "InitFailed") && strcmp(r->error, "NoCapacity") &&
                strcmp(r->error, "CreateFailed"))
                worker_destroy(s, a->worker_addr, a->env_id);
            jwrite(s, asg_rec_remove(a->env_id), NULL, NULL);
        }
        acq_fail(a, "NotLeader", "", NULL, NULL, 0);
        return;
    }
    asg_env_t *e = asg_table_get(s->table, a->env_id);
    a->created = !r->error;
    if (!r->error && e) {
        if (rpc_call_alive(a->call)) {
            acq_hand_out(a);
        } else { /* the requester went away: keep the new env warm */
            count_add(s, a->fn, a->unreserved, -1);
            a->counted = false;
            jwrite(s, asg_rec_state(a->env_id, ASG_IDLE), NULL, NULL);
            if ((e = asg_table_get(s->table, a->env_id)))
                ka_arm(s, e);
            acq_fail(a, "Cancelled", "requester gone", NULL, NULL, 0);
        }
        return;
    }
    if (!r->error) { /* removed meanwhile (worker lost): destroy what was made */
        a->created = false; /* it is going: give placement its room back */
        worker_destroy(s, a->worker_addr, a->env_id);
        acq_fail(a, "CreateFailed", "the environment's worker was lost", NULL, NULL, 0);
        return;
    }
    /* failure: journal the removal, then answer */
    const char *code = r->error;
    if (!strcmp(code, "InitFailed")) {
        a->err_code = xstrdup("InitFailed");
        json_t *lt = r->detail ? json_object_get(r->detail, "log_tail") : NULL;
        a->err_extra = json_pack("{s:O?}", "log_tail", lt);
        if (r->len) {
            a->err_body = xmalloc(r->len);
            memcpy(a->err_body, r->body, r->len);
            a->err_len = r->len;
        }
    } else if (!strcmp(code, "NoCapacity")) {
        a->err_code = xstrdup("NoCapacity");
    } else {
        a->err_code = xstrdup("CreateFailed");
    }
    a->err_msg = xstrdup(r->message);
    log_info(ROLE, "env %s on %s: create failed: %s: %s", a->env_id, a->worker_id, code, r->message);
    if (strcmp(code, "InitFailed") && strcmp(code, "NoCapacity") && strcmp(code, "CreateFailed"))
        worker_destroy(s, a->worker_addr, a->env_id); /* transport failure: it may exist */
    if (e)
        jwrite(s, asg_rec_remove(a->env_id), acq_removed_done, a);
    else
        acq_removed_done(s, true, a);
}

/* `add` (initializing) journaled: ask the worker to create the env. */
static void acq_added_done(asg_service_t *s, bool ok, void *arg)
{
    acq_t *a = arg;
    if (!ok || !acq_current(a)) {
        acq_fail(a, "NotLeader", "", NULL, NULL, 0);
        return;
    }
    rpc_client_t *c = worker_client(s, a->worker_addr);
    json_t *p = json_pack("{s:s,s:O}", "env_id", a->env_id, "config", a->config);
    int timeout = (a->timeout_s > 0 ? a->timeout_s : 3) * 1000 + 60000;
    if (!c || rpc_call(c, "env.create", p, NULL, 0, timeout, on_created, a) < 0) {
        json_decref(p);
        a->err_code = xstrdup("CreateFailed");
        a->err_msg = xstrdup("bad worker address");
        jwrite(s, asg_rec_remove(a->env_id), acq_removed_done, a);
        return;
    }
    json_decref(p);
}

static void on_picked(const rpc_result_t *r, void *arg)
{
    acq_t *a = arg;
    asg_service_t *s = a->s;
    const char *wid = r->error ? NULL : json_string_value(json_object_get(r->result, "worker_id"));
    const char *wa = r->error ? NULL : json_string_value(json_object_get(r->result, "address"));
    if (!acq_current(a)) {
        if (wid) { /* placement reserved room that nobody will use */
            a->worker_id = xstrdup(wid);
            a->placed = true;
        }
        acq_fail(a, "NotLeader", "", NULL, NULL, 0);
        return;
    }
    if (r->error || !wid || !wa) {
        if (r->error)
            placement_failed(s, r->error);
        acq_fail(a, "NoCapacity", r->error ? r->message : "placement.pick: bad reply", NULL, NULL, 0);
        return;
    }
    a->worker_id = xstrdup(wid);
    a->worker_addr = xstrdup(wa);
    a->placed = true;
    a->cold = true;
    jwrite(s, asg_rec_add(a->env_id, wid, wa, a->key, a->fn, a->memory_mb), acq_added_done, a);
}

static void do_acquire(asg_service_t *s, rpc_call_t *call, json_t *params)
{
    err_t err = {0};
    fn_config_t *cfg = fn_config_from_json(json_object_get(params, "config"), &err);
    if (!cfg) {
        rpc_reply_error(call, RPC_INVALID, "config: %s", err.msg);
        return;
    }
    int total_reserved = (int)json_integer_value(json_object_get(params, "total_reserved"));
    fn_count_t *c = count_of(s, cfg->name, false);
    const char *reason = assignment_throttle_reason(cfg->reserved_concurrency, c ? c->n : 0,
                                                    s->unreserved_in_flight,
                                                    s->o.account_concurrency, total_reserved);
    if (reason) {
        json_t *x = json_pack("{s:s}", "reason", reason);
        rpc_reply_error_ex(call, "Throttled", x, NULL, 0, "%s", "Rate Exceeded.");
        json_decref(x);
        fn_config_free(cfg);
        return;
    }
    acq_t *a = xcalloc(1, sizeof *a);
    a->s = s;
    a->call = call;
    a->epoch = s->epoch;
    a->config = json_incref(json_object_get(params, "config"));
    a->fn = xstrdup(cfg->name);
    a->key = xstrdup(cfg->config_key);
    a->memory_mb = cfg->memory_mb;
    a->timeout_s = cfg->timeout_s;
    a->unreserved = cfg->reserved_concurrency < 0;
    a->pool = a->unreserved ? s->o.account_concurrency - total_reserved : cfg->reserved_concurrency;
    fn_config_free(cfg);
    count_add(s, a->fn, a->unreserved, +1);
    a->counted = true;

    asg_env_t *e = asg_table_idle_for(s->table, a->key);
    if (e) { /* warm */
        ka_disarm(e);
        a->env_id = xstrdup(e->env_id);
        a->worker_id = xstrdup(e->worker_id);
        a->worker_addr = xstrdup(e->worker_address);
        acq_hand_out(a);
        return;
    }
    /* cold: the id is made now so that placement can reserve room for it
     * (its per-function counts see this environment before any heartbeat) */
    unsigned char rnd[16];
    char id[33];
    random_bytes(rnd, sizeof rnd);
    hex_encode(rnd, sizeof rnd, id);
    a->env_id = xstrdup(id);
    rpc_client_t *pl = placement_client(s);
    json_t *p = json_pack("{s:s,s:i,s:s}", "function", a->fn, "memory_mb", a->memory_mb, "env_id",
                          a->env_id);
    if (!pl || rpc_call(pl, "placement.pick", p, NULL, 0, 5000, on_picked, a) < 0)
        acq_fail(a, "NoCapacity", "no placement service", NULL, NULL, 0);
    json_decref(p);
}

/* -------------------------------------------------------- release, retire */

/* asg.release {env_id, lease, dead, not_ours}: the holder is done with
 * env_id.  Only the current holder's release counts: one whose lease token
 * is not the environment's (a late release from before a failover or a
 * reclaim) is answered {"stale": true} and changes nothing; a release
 * without a token (0) is taken, as is any while the holder is unknown.
 * dead: the environment goes (destroyed, its removal journaled).  not_ours: its worker said another request runs in it, so it
 * stays busy with its holder unknown, until that one's release or the
 * sweep.  Else it is idle again (journaled lazily). */
static void do_release(asg_service_t *s, rpc_call_t *call, json_t *params)
{
    const char *id = json_string_value(json_object_get(params, "env_id"));
    bool dead = json_is_true(json_object_get(params, "dead"));
    bool not_ours = json_is_true(json_object_get(params, "not_ours"));
    int64_t token = (int64_t)json_integer_value(json_object_get(params, "lease"));
    asg_env_t *e = id ? asg_table_get(s->table, id) : NULL;
    if (!e || e->state != ASG_BUSY) { /* unknown (failover) or not handed out */
        rpc_reply(call, NULL, NULL, 0);
        return;
    }
    ka_t *k = ka_get(s, e);
    if (token && k->lease && token != k->lease) {
        json_t *r = json_pack("{s:b}", "stale", 1);
        rpc_reply(call, r, NULL, 0);
        json_decref(r);
        return;
    }
    if (not_ours && !dead) {
        k->lease = 0;
        rpc_reply(call, NULL, NULL, 0);
        return;
    }
    k->lease = 0;
    if (dead || e->stale) {
        env_drop(s, e, true); /* gives the count back, destroys, journals the removal */
        rpc_reply(call, NULL, NULL, 0);
        return;
    }
    count_add(s, e->function, e->unreserved, -1);
    e->unreserved = false;
    set_state_lazily(s, e, ASG_IDLE);
    rpc_reply(call, NULL, NULL, 0);
    if ((e = asg_table_get(s->table, id)) && e->state == ASG_IDLE)
        ka_arm(s, e);
}

static void do_retire(asg_service_t *s, rpc_call_t *call, json_t *params)
{
    const char *fn = json_string_value(json_object_get(params, "function"));
    json_t *keep = json_object_get(params, "keep_keys");
    if (!fn) {
        rpc_reply_error(call, RPC_INVALID, "retire: no function");
        return;
    }
    asg_env_t *e = asg_table_first(s->table);
    while (e) {
        asg_env_t *nx = e->next;
        bool kept = false;
        size_t i;
        json_t *k;
        json_array_foreach(keep, i, k)
            if (json_is_string(k) && !strcmp(json_string_value(k), e->config_key))
                kept = true;
        if (!strcmp(e->function, fn) && !kept) {
            if (e->state == ASG_IDLE)
                env_drop(s, e, true);
            else
                e->stale = true; /* removed when released */
        }
        e = nx;
    }
    rpc_reply(call, NULL, NULL, 0); /* the removals are queued, in order */
}

/* ---------------------------------------------------------- reconciling */

static void become_leader_serving(asg_service_t *s);

static void reconcile_finish(asg_service_t *s)
{
    json_t *seen = s->reconcile_seen, *known = s->reconcile_known;
    s->reconcile_seen = s->reconcile_known = NULL;
    if (s->role != R_RECONCILING) {
        json_decref(seen);
        json_decref(known);
        return;
    }
    int dropped = 0, orphans = 0, promoted = 0, marked_busy = 0, made_idle = 0;
    if (known) { /* placement answered: check every table entry */
        asg_env_t *e = asg_table_first(s->table);
        while (e) {
            asg_env_t *nx = e->next;
            json_t *w = json_object_get(seen, e->worker_id);
            if (!json_object_get(known, e->worker_id)) { /* worker gone */
                jwrite(s, asg_rec_remove(e->env_id), NULL, NULL);
                dropped++;
            } else if (w) { /* worker answered env.list */
                const char *st = json_string_value(json_object_get(w, e->env_id));
                if (!st) {
                    jwrite(s, asg_rec_remove(e->env_id), NULL, NULL);
                    dropped++;
                } else if (e->state == ASG_INITIALIZING && !strcmp(st, "idle")) {
                    jwrite(s, asg_rec_state(e->env_id, ASG_IDLE), NULL, NULL);
                    promoted++;
                } else if (e->state == ASG_BUSY && !strcmp(st, "idle")) {
                    /* its holder finished and the release was lost with
                     * the last leader, or (rarely) it has not invoked
                     * yet: then the worker takes one of the two and the
                     * other is told Busy (not_ours), and the holder's
                     * release carries a token of an earlier term: stale */
                    jwrite(s, asg_rec_state(e->env_id, ASG_IDLE), NULL, NULL);
                    made_idle++;
                } else if (e->state != ASG_BUSY && !strcmp(st, "busy")) {
                    /* handed out by the last leader, whose `busy` had not
                     * reached the journal yet (set_state_lazily): busy
                     * with its holder unknown until that one releases */
                    jwrite(s, asg_rec_state(e->env_id, ASG_BUSY), NULL, NULL);
                    marked_busy++;
                }
            }
            e = nx;
        }
        /* orphans: on a worker, not in the table */
        const char *wid;
        json_t *w;
        json_object_foreach(seen, wid, w) {
            const char *addr = json_string_value(json_object_get(known, wid));
            const char *eid;
            json_t *st;
            json_object_foreach(w, eid, st) {
                if (!asg_table_get(s->table, eid) && addr) {
                    log_info(ROLE, "orphan %s on %s: destroying", eid, wid);
                    worker_destroy(s, addr, eid);
                    orphans++;
                }
            }
        }
    }
    log_info(ROLE, "%s: reconciled: %d dropped, %d orphans destroyed, %d initializing->idle, "
             "%d idle and %d busy as their worker says%s", s->id, dropped, orphans, promoted,
             made_idle, marked_busy, known ? "" : " (placement unreachable: skipped)");
    json_decref(seen);
    json_decref(known);
    become_leader_serving(s);
}

/* An env.list answer as {env_id: state} (reconciliation and the sweep). */
static json_t *env_states(const rpc_result_t *r)
{
    json_t *m = json_object();
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(r->result, "envs"), i, e) {
        const char *id = json_string_value(json_object_get(e, "env_id"));
        const char *st = json_string_value(json_object_get(e, "state"));
        if (id)
            json_object_set_new(m, id, json_string(st ? st : "?"));
    }
    return m;
}

typedef struct rec_ctx {
    asg_service_t *s;
    uint64_t epoch;
    char *wid;
} rec_ctx_t;

static void on_env_list(const rpc_result_t *r, void *arg)
{
    rec_ctx_t *c = arg;
    asg_service_t *s = c->s;
    if (s->role == R_RECONCILING && s->epoch == c->epoch && s->reconcile_seen) {
        if (r->error) {
            log_warn(ROLE, "reconcile: env.list on %s: %s: %s", c->wid, r->error, r->message);
        } else {
            json_object_set_new(s->reconcile_seen, c->wid, env_states(r));
        }
        if (--s->reconcile_pending == 0)
            reconcile_finish(s);
    }
    free(c->wid);
    free(c);
}

#define RECONCILE_TRIES 20      /* placement.workers attempts at a takeover ... */
#define RECONCILE_RETRY_MS 250  /* ... this far apart (5 s in all) */

static void reconcile_ask_again(evutil_socket_t fd, short what, void *arg);

static void on_workers(const rpc_result_t *r, void *arg)
{
    rec_ctx_t *c = arg;
    asg_service_t *s = c->s;
    free(c->wid);
    uint64_t epoch = c->epoch;
    free(c);
    if (s->role != R_RECONCILING || s->epoch != epoch)
        return;
    if (r->error) {
        placement_failed(s, r->error);
        /* placement may be starting too (everything restarted at once):
         * without its list nothing can be checked, so ask again a while */
        if (++s->reconcile_tries < RECONCILE_TRIES) {
            log_info(ROLE, "reconcile: placement.workers: %s: %s (asking again)", r->error,
                     r->message);
            struct timeval tv = {0, RECONCILE_RETRY_MS * 1000};
            evtimer_add(s->reconcile_ev, &tv);
            return;
        }
        log_warn(ROLE, "reconcile: placement.workers: %s: %s", r->error, r->message);
        reconcile_finish(s);
        return;
    }
    s->reconcile_known = json_object();
    s->reconcile_seen = json_object();
    s->reconcile_pending = 1; /* held until every call is sent */
    size_t i;
    json_t *w;
    json_array_foreach(json_object_get(r->result, "workers"), i, w) {
        const char *id = json_string_value(json_object_get(w, "id"));
        const char *addr = json_string_value(json_object_get(w, "address"));
        const char *st = json_string_value(json_object_get(w, "state"));
        if (!id || !addr || (st && (!strcmp(st, "lost") || !strcmp(st, "retired"))))
            continue;
        json_object_set_new(s->reconcile_known, id, json_string(addr));
        rpc_client_t *wc = worker_client(s, addr);
        if (!wc)
            continue;
        rec_ctx_t *rc = xcalloc(1, sizeof *rc);
        rc->s = s;
        rc->epoch = epoch;
        rc->wid = xstrdup(id);
        if (rpc_call(wc, "env.list", NULL, NULL, 0, 2000, on_env_list, rc) == 0)
            s->reconcile_pending++;
        else {
            free(rc->wid);
            free(rc);
        }
    }
    if (--s->reconcile_pending == 0)
        reconcile_finish(s);
}

static void ask_placement_workers(asg_service_t *s);

static void reconcile_ask_again(evutil_socket_t fd, short what, void *arg)
{
    asg_service_t *s = arg;
    if (s->role == R_RECONCILING && !s->closing)
        ask_placement_workers(s);
}

static void start_reconcile(asg_service_t *s)
{
    s->role = R_RECONCILING;
    s->epoch++;
    s->reconcile_tries = 0;
    ask_placement_workers(s);
}

static void ask_placement_workers(asg_service_t *s)
{
    rpc_client_t *pl = placement_client(s);
    rec_ctx_t *c = xcalloc(1, sizeof *c);
    c->s = s;
    c->epoch = s->epoch;
    if (!pl || rpc_call(pl, "placement.workers", NULL, NULL, 0, 2000, on_workers, c) < 0) {
        free(c);
        reconcile_finish(s);
    }
}

/* ------------------------------------------------------------ the sweep
 *
 * A release can be lost: the frontend that held the environment died, or
 * sent its release to a leader that died or stepped down before journaling
 * it.  Such an environment would stay busy in the table for ever, holding
 * concurrency.  Every SWEEP_MS the leader asks the workers of its busy
 * environments what they are doing: one busy here but idle on its worker in
 * two sweeps in a row (so for at least SWEEP_MS, far longer than the moment
 * between a hand-out and the env.invoke that follows it) has no holder any
 * more and becomes idle again; one its worker no longer has leaves the
 * table.  Safe even if a holder turns up late: the worker runs one event
 * at a time and answers a second with Busy (the frontend then acquires
 * another environment), so no environment ever runs two invocations. */
#define SWEEP_MS 5000

typedef struct sweep_ctx {
    asg_service_t *s;
    uint64_t epoch;
    char *worker_address;
} sweep_ctx_t;

static void on_sweep_list(const rpc_result_t *r, void *arg)
{
    sweep_ctx_t *c = arg;
    asg_service_t *s = c->s;
    if (!r->error && s->role == R_LEADER && s->epoch == c->epoch && !s->closing) {
        json_t *listed = env_states(r);
        int reclaimed = 0, gone = 0;
        asg_env_t *env = asg_table_first(s->table);
        while (env) {
            asg_env_t *nx = env->next;
            if (env->state == ASG_BUSY && !strcmp(env->worker_address, c->worker_address)) {
                const char *st = json_string_value(json_object_get(listed, env->env_id));
                ka_t *k = ka_get(s, env);
                if (!st) {
                    env_drop(s, env, false);
                    gone++;
                } else if (!strcmp(st, "idle") && ++k->idle_seen >= 2) {
                    count_add(s, env->function, env->unreserved, -1);
                    env->unreserved = false;
                    k->lease = 0; /* a late release of its lost holder is stale now */
                    char *id = xstrdup(env->env_id);
                    jwrite(s, asg_rec_state(id, ASG_IDLE), NULL, NULL);
                    asg_env_t *now = asg_table_get(s->table, id);
                    if (now && now->state == ASG_IDLE)
                        ka_arm(s, now);
                    free(id);
                    reclaimed++;
                } else if (strcmp(st, "idle")) {
                    k->idle_seen = 0;
                }
            }
            env = nx;
        }
        if (reclaimed || gone)
            log_info(ROLE, "sweep of %s: %d busy environment(s) without a holder made idle, %d gone "
                     "from the worker dropped", c->worker_address, reclaimed, gone);
        json_decref(listed);
    }
    free(c->worker_address);
    free(c);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    asg_service_t *s = arg;
    if (s->role == R_LEADER && !s->closing) {
        json_t *asked = json_object(); /* one env.list per worker with busy envs */
        for (asg_env_t *e = asg_table_first(s->table); e; e = e->next) {
            if (e->state != ASG_BUSY || json_object_get(asked, e->worker_address))
                continue;
            json_object_set_new(asked, e->worker_address, json_true());
            rpc_client_t *wc = worker_client(s, e->worker_address);
            if (!wc)
                continue;
            sweep_ctx_t *c = xcalloc(1, sizeof *c);
            c->s = s;
            c->epoch = s->epoch;
            c->worker_address = xstrdup(e->worker_address);
            if (rpc_call(wc, "env.list", NULL, NULL, 0, 2000, on_sweep_list, c) < 0) {
                free(c->worker_address);
                free(c);
            }
        }
        json_decref(asked);
    }
    if (!s->closing) {
        struct timeval tv = {SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000};
        evtimer_add(s->sweep_ev, &tv);
    }
}

static void become_leader_serving(asg_service_t *s)
{
    s->role = R_LEADER;
    counts_clear(s);
    for (asg_env_t *e = asg_table_first(s->table); e; e = e->next) {
        ka_t *k = ka_get(s, e);
        k->logged = e->state; /* the table is the journal's now */
        k->lease = 0;         /* holders of busy ones: unknown */
        if (e->state == ASG_IDLE)
            ka_arm(s, e);
        else if (e->state == ASG_BUSY) { /* handed out by the previous leader */
            e->unreserved = true;          /* unknown: count it in the shared pool */
            count_add(s, e->function, true, +1);
        }
    }
    log_info(ROLE, "%s: serving as leader (term %llu, %d environments)", s->id,
             (unsigned long long)s->term, asg_table_count(s->table));
    deferred_t *d = s->deferred;
    s->deferred = NULL;
    /* answer held requests in arrival order */
    deferred_t *rev = NULL;
    while (d) {
        deferred_t *nx = d->next;
        d->next = rev;
        rev = d;
        d = nx;
    }
    while (rev) {
        deferred_t *nx = rev->next;
        handle_request(s, rev->call, rev->method, rev->params);
        json_decref(rev->params);
        free(rev->method);
        free(rev);
        rev = nx;
    }
}

static void flush_deferred(asg_service_t *s)
{
    while (s->deferred) {
        deferred_t *d = s->deferred;
        s->deferred = d->next;
        reply_not_leader(s, d->call);
        json_decref(d->params);
        free(d->method);
        free(d);
    }
}

/* ------------------------------------------------------- journal events */

static void step_down(asg_service_t *s)
{
    if (s->role == R_FOLLOWER)
        return;
    log_warn(ROLE, "%s: no longer leader (term %llu)", s->id, (unsigned long long)s->term);
    s->role = R_FOLLOWER;
    s->epoch++;
    json_decref(s->reconcile_seen);
    json_decref(s->reconcile_known);
    s->reconcile_seen = s->reconcile_known = NULL;
    flush_deferred(s);
    counts_clear(s);
    for (asg_env_t *e = asg_table_first(s->table); e; e = e->next)
        ka_disarm(e);
}

static void lease_check_arm(asg_service_t *s, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->lease_ev, &tv);
}

/* The lease clock, on the loop: a leader (or reconciling replica) whose
 * lease has run out by its own clock steps down now, whatever its journal
 * thread is doing (it may be blocked for many seconds in a renew that
 * cannot reach the journal): it stops serving and asg.status says
 * follower.  The journal thread is told (lapsed_term) and renews at once:
 * if the journal refuses or cannot be reached, the replica is deposed as
 * usual (FOLLOWER, table rebuilt); if the journal still grants the lease
 * (nobody else has led: a late renew, etcd extending leases across its own
 * elections), it posts LEADER again for the same term and the replica
 * reconciles and serves again.  Re-armed for the current expiry while the
 * lease is renewed in time. */
static void on_lease_check(evutil_socket_t fd, short what, void *arg)
{
    asg_service_t *s = arg;
    if (s->role == R_FOLLOWER || s->closing)
        return;
    pthread_mutex_lock(&s->mu);
    uint64_t until = s->lease_until, now = now_mono_ms();
    bool live = until && now < until;
    if (!live) {
        s->lapsed_term = s->term;
        s->leader_id[0] = 0; /* unknown until the journal thread reads it */
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (live) {
        lease_check_arm(s, until - now + 1);
        return;
    }
    log_warn(ROLE, "%s: the lease of term %llu ran out by our clock (not renewed in time): "
             "stepping down", s->id, (unsigned long long)s->term);
    step_down(s);
}

static void maybe_snapshot(asg_service_t *s)
{
    if (s->role == R_FOLLOWER || s->p_head || s->since_snap < s->o.snapshot_every)
        return;
    json_t *snap = asg_table_snapshot(s->table);
    char *data = json_dumps(snap, JSON_COMPACT);
    json_decref(snap);
    pthread_mutex_lock(&s->mu);
    free(s->snap_data);
    s->snap_data = data;
    s->snap_len = strlen(data);
    s->snap_upto = s->applied;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    s->since_snap = 0;
}

static void handle_event(asg_service_t *s, jev_t *ev)
{
    err_t err = {0};
    switch (ev->type) {
    case JE_RESET:
        asg_table_clear(s->table);
        s->applied = 0;
        s->since_snap = 0;
        break;
    case JE_SNAPSHOT: {
        json_error_t je;
        json_t *snap = json_loadb(ev->data, ev->len, 0, &je);
        if (!snap || asg_table_load(s->table, snap, &err) < 0)
            log_error(ROLE, "bad snapshot at %llu: %s", (unsigned long long)ev->index,
                      snap ? err.msg : je.text);
        json_decref(snap);
        s->applied = ev->index;
        break;
    }
    case JE_RECORD:
        if (asg_table_apply_text(s->table, ev->data, ev->len, &err) < 0)
            log_warn(ROLE, "record %llu skipped: %s", (unsigned long long)ev->index, err.msg);
        s->applied = ev->index;
        s->since_snap++;
        break;
    case JE_LEADER:
        if (ev->ok) { /* resumed after a lapse: same term, table current */
            if (s->role != R_FOLLOWER || s->term != ev->term || s->closing)
                break;
            log_info(ROLE, "%s: leading again in term %llu", s->id, (unsigned long long)s->term);
        } else {
            s->term = ev->term;
            s->applied = ev->index;
        }
        if (!s->closing) {
            lease_check_arm(s, 0); /* checks now, then at each expiry */
            start_reconcile(s);
        }
        break;
    case JE_FOLLOWER:
        step_down(s);
        break;
    case JE_APPENDED: {
        pending_t *p = s->p_head;
        if (!p || p->seq != ev->seq) {
            log_error(ROLE, "append result %llu out of order", (unsigned long long)ev->seq);
            break;
        }
        s->p_head = p->next;
        if (!s->p_head)
            s->p_tail = NULL;
        if (ev->ok) {
            s->applied = ev->index;
            s->since_snap++;
        } else {
            step_down(s);
        }
        if (p->cb)
            p->cb(s, ev->ok, p->arg);
        free(p);
        if (ev->ok)
            maybe_snapshot(s);
        break;
    }
    }
}

static void drain_events(asg_service_t *s)
{
    for (;;) {
        pthread_mutex_lock(&s->mu);
        jev_t *ev = s->in_head;
        s->in_head = s->in_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (!ev)
            return;
        while (ev) {
            jev_t *nx = ev->next;
            handle_event(s, ev);
            free(ev->data);
            free(ev);
            ev = nx;
        }
    }
}

static void on_efd(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    if (read(fd, &n, sizeof n) < 0) { /* EAGAIN: a spurious wake-up */
    }
    drain_events(arg);
}

/* -------------------------------------------------------------- requests */

static void do_status(asg_service_t *s, rpc_call_t *call)
{
    char leader[128];
    pthread_mutex_lock(&s->mu);
    snprintf(leader, sizeof leader, "%s", s->leader_id);
    uint64_t seen = s->journal_term;
    pthread_mutex_unlock(&s->mu);
    const char *role = s->role == R_LEADER ? "leader" : s->role == R_RECONCILING ? "reconciling" : "follower";
    /* A leader reports its own term; a follower the newest term it knows
     * of (the journal's, read with the leader record), not the one it last
     * led in (or 0). */
    uint64_t term = s->role != R_FOLLOWER || s->term > seen ? s->term : seen;
    json_t *r = json_pack("{s:s,s:I,s:s,s:o,s:i,s:I}", "role", role, "term", (json_int_t)term,
                          "leader", leader, "table", asg_table_snapshot(s->table), "in_flight",
                          s->in_flight, "applied", (json_int_t)s->applied);
    rpc_reply(call, r, NULL, 0);
    json_decref(r);
}

static void handle_request(asg_service_t *s, rpc_call_t *call, const char *method, json_t *params)
{
    if (!strcmp(method, "asg.status")) {
        do_status(s, call);
        return;
    }
    bool known = !strcmp(method, "asg.acquire") || !strcmp(method, "asg.release") ||
                 !strcmp(method, "asg.retire");
    if (!known) {
        rpc_reply_error(call, RPC_INVALID, "unknown method %s", method);
        return;
    }
    if (s->role == R_RECONCILING && !s->closing && lease_live(s)) { /* hold it */
        deferred_t *d = xcalloc(1, sizeof *d);
        d->call = call;
        d->method = xstrdup(method);
        d->params = json_incref(params);
        d->next = s->deferred;
        s->deferred = d;
        return;
    }
    if (!serving(s)) {
        reply_not_leader(s, call);
        return;
    }
    if (!strcmp(method, "asg.acquire"))
        do_acquire(s, call, params);
    else if (!strcmp(method, "asg.release"))
        do_release(s, call, params);
    else
        do_retire(s, call, params);
}

static void on_request(rpc_call_t *call, const char *method, json_t *params, const void *body,
                       size_t len, void *arg)
{
    handle_request(arg, call, method, params);
}

/* ------------------------------------------------------------ lifecycle */

asg_service_t *asg_service_new(struct event_base *base, journal_t *j,
                               const asg_service_opts_t *opts, err_t *err)
{
    asg_service_t *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->o = *opts;
    if (s->o.lease_ms <= 0)
        s->o.lease_ms = 1000;
    if (s->o.keep_alive_ms <= 0)
        s->o.keep_alive_ms = 300000;
    if (s->o.account_concurrency <= 0)
        s->o.account_concurrency = 1000;
    if (s->o.snapshot_every <= 0)
        s->o.snapshot_every = 1000;
    s->j = j;
    s->efd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->table = asg_table_new();
    asg_table_set_remove_cb(s->table, on_env_removed, s);
    if (opts->placement && *opts->placement) {
        char *copy = xstrdup(opts->placement), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            s->pl_addrs = realloc(s->pl_addrs, sizeof(char *) * (size_t)(s->n_pl + 1));
            s->pl_addrs[s->n_pl++] = xstrdup(t);
        }
        free(copy);
    }
    s->srv = rpc_server_new(base, on_request, s);
    if (rpc_server_listen(s->srv, opts->listen, err) < 0)
        goto fail;
    if (opts->advertise && *opts->advertise) {
        snprintf(s->addr, sizeof s->addr, "%s", opts->advertise);
    } else if (!strncmp(opts->listen, "tcp:", 4)) {
        const char *colon = strrchr(opts->listen, ':');
        snprintf(s->addr, sizeof s->addr, "%.*s:%d", (int)(colon - opts->listen), opts->listen,
                 rpc_server_port(s->srv));
    } else {
        snprintf(s->addr, sizeof s->addr, "%s", opts->listen);
    }
    snprintf(s->id, sizeof s->id, "%s", opts->id && *opts->id ? opts->id : s->addr);
    if (strlen(s->addr) + INCARNATION_LEN >= sizeof s->cand) {
        err_set(err, ENAMETOOLONG, "address %s: at most %zu characters (it is the journal's "
                "candidate id, with a suffix)", s->addr, sizeof s->cand - 1 - INCARNATION_LEN);
        goto fail;
    }
    new_incarnation(s);
    s->lease_ev = evtimer_new(base, on_lease_check, s);
    s->flush_ev = evtimer_new(base, on_flush, s);
    s->sweep_ev = evtimer_new(base, on_sweep, s);
    s->reconcile_ev = evtimer_new(base, reconcile_ask_again, s);
    {
        struct timeval tv = {SWEEP_MS / 1000, (SWEEP_MS % 1000) * 1000};
        evtimer_add(s->sweep_ev, &tv);
    }
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        err_sys(err, "eventfd");
        goto fail;
    }
    s->ev_efd = event_new(base, s->efd, EV_READ | EV_PERSIST, on_efd, s);
    event_add(s->ev_efd, NULL);
    if (pthread_create(&s->th, NULL, jt_main, s) != 0) {
        err_set(err, EAGAIN, "cannot start the journal thread");
        goto fail;
    }
    s->th_started = true;
    log_info(ROLE, "%s: replica at %s, lease %d ms", s->id, s->addr, s->o.lease_ms);
    return s;
fail:
    asg_service_free(s);
    return NULL;
}

const char *asg_service_address(const asg_service_t *s) { return s->addr; }

void asg_service_free(asg_service_t *s)
{
    if (!s)
        return;
    s->closing = true;
    if (s->srv)
        rpc_server_free(s->srv); /* no new requests; outstanding ones stay answerable */
    s->srv = NULL;
    if (s->th_started) {
        pthread_mutex_lock(&s->mu);
        s->stop = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->th, NULL);
    }
    drain_events(s); /* the thread failed every queued append: callbacks answer */
    while (s->p_head) { /* appends queued after the thread stopped (none expected) */
        pending_t *p = s->p_head;
        s->p_head = p->next;
        if (p->cb)
            p->cb(s, false, p->arg);
        free(p);
    }
    s->p_tail = NULL;
    step_down(s);
    flush_deferred(s);
    /* pending worker/placement calls end with Cancelled: their callbacks answer */
    while (s->workers) {
        worker_conn_t *w = s->workers;
        s->workers = w->next;
        rpc_client_free(w->client);
        free(w->addr);
        free(w);
    }
    if (s->placement)
        rpc_client_free(s->placement);
    s->placement = NULL;
    json_decref(s->reconcile_seen);
    json_decref(s->reconcile_known);
    if (s->ev_efd)
        event_free(s->ev_efd);
    if (s->lease_ev)
        event_free(s->lease_ev);
    if (s->sweep_ev)
        event_free(s->sweep_ev);
    if (s->flush_ev)
        event_free(s->flush_ev);
    if (s->reconcile_ev)
        event_free(s->reconcile_ev);
    if (s->efd >= 0)
        close(s->efd);
    asg_table_free(s->table);
    counts_clear(s);
    for (int i = 0; i < s->n_pl; i++)
        free(s->pl_addrs[i]);
    free(s->pl_addrs);
    free(s->snap_data);
    while (s->out_head) {
        jreq_t *q = s->out_head;
        s->out_head = q->next;
        free(q->data);
        free(q);
    }
    if (s->j)
        journal_close(s->j);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
