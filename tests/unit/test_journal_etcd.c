/* test_journal_etcd.c - the etcd journal backend against a real 3-member
 * etcd cluster started by scripts/etcd-cluster.sh on a free base port in a
 * temporary directory.  Prints SKIP lines when the etcd binary is absent.
 *
 * The cluster is always stopped: a forked guard process waits for this
 * process to exit (however it exits, crash included) and then runs
 * "etcd-cluster.sh stop" and removes the directory.  Timing-dependent
 * checks (lease expiry) poll with generous deadlines instead of asserting
 * durations.  JETCD_BENCH=N additionally measures N sequential appends. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/util.h"
#include "etcd_cluster.h"
#include "journal/journal.h"

/* CHECK that also shows the journal's error message (err in scope). */
#define CHECKE(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            printf("  check failed at %s:%d: %s\n  err: %s (code %d)\n", __FILE__,   \
                   __LINE__, #cond, err.msg, err.code);                                \
            check_failed_ = 1;                                                         \
            return;                                                                    \
        }                                                                              \
    } while (0)

static int prefix_seq;

/* ---- helpers ---------------------------------------------------------- */

static journal_t *open_j(const char *prefix)
{
    err_t err = {0};
    journal_t *j = journal_etcd_open(eps, prefix, &err);
    if (!j)
        printf("  open: %s\n", err.msg);
    return j;
}

static void new_prefix(char *out, size_t n)
{
    snprintf(out, n, "/test/%d/p%d", (int)getpid(), ++prefix_seq);
}

struct collect {
    uint64_t idx[512], term[512];
    char data[512][32];
    int n, stop_after;
};

static int collect_fn(const journal_record_t *rec, void *arg)
{
    struct collect *c = arg;
    if (c->n < 512) {
        c->idx[c->n] = rec->index;
        c->term[c->n] = rec->term;
        snprintf(c->data[c->n], sizeof c->data[0], "%.*s", (int)(rec->len < 31 ? rec->len : 31),
                 (const char *)rec->data);
    }
    c->n++;
    return c->stop_after && c->n >= c->stop_after;
}

static int append_str(journal_t *j, uint64_t term, const char *s, uint64_t *idx, err_t *err)
{
    return j->ops->append(j, term, s, strlen(s), idx, err);
}

/* ---- tests ------------------------------------------------------------ */

static void test_campaign_and_leader(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *a = open_j(p), *b = open_j(p);
    CHECK(a && b);
    err_t err = {0};
    journal_leader_t l;
    CHECKE(a->ops->leader(a, &l, &err) == 0);
    CHECK(l.term == 0 && l.id[0] == 0);
    uint64_t t1 = 0, t2 = 0, tb = 0;
    CHECKE(a->ops->campaign(a, "alpha", 5000, &t1, &err) == 1);
    CHECK(t1 == 1);
    CHECKE(a->ops->leader(b, &l, &err) == 0);
    CHECK_STR(l.id, "alpha");
    CHECK(l.term == t1);
    CHECK(l.lease_expiry_ms > now_wall_ms());
    CHECKE(a->ops->campaign(a, "alpha", 5000, &t2, &err) == 1); /* already leads: same term */
    CHECK(t2 == t1);
    CHECKE(b->ops->campaign(b, "beta", 5000, &tb, &err) == 0); /* refused while the lease lives */
    CHECK(tb == t1);
    CHECKE(a->ops->renew(a, t1, 5000, &err) == 0);
    CHECKE(a->ops->renew(a, t1 + 7, 5000, &err) == -1 && err.code == ESTALE);
    /* resign lets the other candidate in at once, with a higher term */
    CHECKE(a->ops->resign(a, t1, &err) == 0);
    CHECKE(b->ops->campaign(b, "beta", 5000, &tb, &err) == 1);
    CHECK(tb > t1);
    CHECKE(a->ops->leader(a, &l, &err) == 0);
    CHECK_STR(l.id, "beta");
    CHECK(l.term == tb);
    journal_close(a);
    journal_close(b);
}

static void test_lease_expiry_and_fencing(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *a = open_j(p), *b = open_j(p);
    CHECK(a && b);
    err_t err = {0};
    uint64_t ta = 0, tb = 0, idx = 0;
    CHECKE(a->ops->campaign(a, "old", 1000, &ta, &err) == 1);
    CHECKE(append_str(a, ta, "by-old", &idx, &err) == 0 && idx == 1);
    /* renewing keeps the lease (granted >= 1 s; etcd's floor is 2 s) alive past its TTL */
    for (int i = 0; i < 7; i++) {
        usleep(500 * 1000);
        CHECKE(a->ops->renew(a, ta, 1000, &err) == 0);
    }
    CHECKE(b->ops->campaign(b, "new", 1000, &tb, &err) == 0 && tb == ta);
    int r = 0;
    uint64_t deadline = now_mono_ms() + 30000;
    while ((r = b->ops->campaign(b, "new", 1000, &tb, &err)) == 0 && now_mono_ms() < deadline)
        usleep(100 * 1000);
    CHECK(r == 1);
    CHECK(tb > ta);
    CHECKE(b->ops->renew(b, tb, 5000, &err) == 0);
    /* the deposed leader is fenced, however late its calls arrive */
    err.code = 0;
    CHECKE(append_str(a, ta, "late", &idx, &err) == -1);
    CHECK(err.code == ESTALE);
    CHECKE(a->ops->renew(a, ta, 1000, &err) == -1 && err.code == ESTALE);
    CHECKE(a->ops->snapshot(a, ta, 1, "s", 1, &err) == -1 && err.code == ESTALE);
    /* the new leader continues the log where it was */
    CHECKE(append_str(b, tb, "by-new", &idx, &err) == 0 && idx == 2);
    struct collect c = {0};
    CHECKE(a->ops->read(a, 1, collect_fn, &c, NULL, &err) == 0);
    CHECK(c.n == 2);
    CHECK(c.term[0] == ta && c.term[1] == tb);
    CHECK_STR(c.data[1], "by-new");
    journal_close(a);
    journal_close(b);
}

static void test_append_read(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p), *r = open_j(p);
    CHECK(w && r);
    err_t err = {0};
    uint64_t t = 0, idx = 0;
    CHECKE(w->ops->campaign(w, "w", 10000, &t, &err) == 1);
    for (int i = 1; i <= 150; i++) { /* more than two pages */
        char s[32];
        snprintf(s, sizeof s, "rec-%d", i);
        CHECKE(append_str(w, t, s, &idx, &err) == 0);
        CHECK(idx == (uint64_t)i);
    }
    CHECKE(w->ops->append(w, t, "", 0, &idx, &err) == 0 && idx == 151); /* empty record */
    struct collect c = {0};
    uint64_t first = 0;
    CHECKE(r->ops->read(r, 1, collect_fn, &c, &first, &err) == 0);
    CHECK(first == 1);
    CHECK(c.n == 151);
    for (int i = 0; i < 150; i++) {
        char s[32];
        snprintf(s, sizeof s, "rec-%d", i + 1);
        CHECK(c.idx[i] == (uint64_t)i + 1);
        CHECK(c.term[i] == t);
        CHECK_STR(c.data[i], s);
    }
    CHECK(c.data[150][0] == 0);
    struct collect d = {0};
    CHECKE(r->ops->read(r, 100, collect_fn, &d, &first, &err) == 0);
    CHECK(first == 100 && d.n == 52 && d.idx[0] == 100);
    struct collect e = {.stop_after = 3};
    CHECKE(r->ops->read(r, 10, collect_fn, &e, NULL, &err) == 0);
    CHECK(e.n == 3 && e.idx[2] == 12);
    struct collect f = {0};
    CHECKE(r->ops->read(r, 1000, collect_fn, &f, NULL, &err) == 0 && f.n == 0);
    /* a second handle of the same leader continues the same sequence */
    journal_t *w2 = open_j(p);
    CHECK(w2);
    CHECKE(append_str(w2, t, "via-w2", &idx, &err) == 0 && idx == 152);
    CHECKE(append_str(w, t, "via-w", &idx, &err) == 0 && idx == 153);
    journal_close(w2);
    journal_close(w);
    journal_close(r);
}

struct appender {
    const char *prefix;
    uint64_t term;
    int delay_ms;
    int ok;
};

static void *appender_main(void *arg)
{
    struct appender *a = arg;
    usleep((useconds_t)a->delay_ms * 1000);
    journal_t *j = open_j(a->prefix);
    err_t err = {0};
    uint64_t idx;
    a->ok = j && append_str(j, a->term, "wake", &idx, &err) == 0;
    if (j)
        journal_close(j);
    return NULL;
}

static void test_wait_wakes(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p), *r = open_j(p);
    CHECK(w && r);
    err_t err = {0};
    uint64_t t = 0, idx = 0;
    CHECKE(w->ops->campaign(w, "w", 10000, &t, &err) == 1);
    CHECKE(append_str(w, t, "one", &idx, &err) == 0 && idx == 1);
    CHECKE(r->ops->wait(r, 1, 0, &err) == 1);    /* already there */
    CHECKE(r->ops->wait(r, 2, 0, &err) == 0);    /* not yet, no waiting */
    CHECKE(r->ops->wait(r, 2, 300, &err) == 0);  /* times out */
    struct appender a = {.prefix = p, .term = t, .delay_ms = 500};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, appender_main, &a) == 0);
    uint64_t t0 = now_mono_ms();
    int rc = r->ops->wait(r, 2, 20000, &err);
    uint64_t took = now_mono_ms() - t0;
    pthread_join(th, NULL);
    CHECK(a.ok);
    CHECK(rc == 1);
    CHECK(took < 15000); /* woken by the append, not by the timeout */
    journal_close(w);
    journal_close(r);
}

static void test_snapshot_compaction(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p);
    CHECK(w);
    err_t err = {0};
    uint64_t t = 0, idx = 0, upto = 0, first = 0;
    void *data = NULL;
    size_t len = 0;
    CHECKE(w->ops->load_snapshot(w, &upto, &data, &len, &err) == 0);
    CHECKE(w->ops->campaign(w, "w", 10000, &t, &err) == 1);
    for (int i = 1; i <= 10; i++)
        CHECKE(append_str(w, t, "x", &idx, &err) == 0);
    CHECKE(w->ops->snapshot(w, t, 20, "s", 1, &err) == -1 && err.code == EINVAL); /* past the end */
    CHECKE(w->ops->snapshot(w, t, 6, "state@6", 7, &err) == 0);
    CHECKE(w->ops->load_snapshot(w, &upto, &data, &len, &err) == 1);
    CHECK(upto == 6 && len == 7 && memcmp(data, "state@6", 7) == 0);
    free(data);
    struct collect c = {0};
    CHECKE(w->ops->read(w, 1, collect_fn, &c, &first, &err) == 0);
    CHECK(first == 7);
    CHECK(c.n == 4 && c.idx[0] == 7 && c.idx[3] == 10);
    CHECKE(append_str(w, t, "after", &idx, &err) == 0 && idx == 11);
    CHECKE(w->ops->snapshot(w, t, 3, "old", 3, &err) == -1 && err.code == EINVAL); /* older than current */
    CHECKE(w->ops->snapshot(w, t, 11, "", 0, &err) == 0); /* empty snapshot, everything compacted */
    struct collect d = {0};
    CHECKE(w->ops->read(w, 1, collect_fn, &d, &first, &err) == 0);
    CHECK(first == 12 && d.n == 0);
    CHECKE(w->ops->load_snapshot(w, &upto, &data, &len, &err) == 1);
    CHECK(upto == 11 && len == 0);
    free(data);
    journal_close(w);
}

static void test_oversized_record(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p);
    CHECK(w);
    err_t err = {0};
    uint64_t t = 0, idx = 0;
    CHECKE(w->ops->campaign(w, "w", 10000, &t, &err) == 1);
    size_t big = 2u << 20, near = 1500u * 1024u;
    char *buf = xmalloc(big);
    memset(buf, 'z', big);
    CHECKE(w->ops->append(w, t, buf, big, &idx, &err) == -1 && err.code == EFBIG);
    CHECK(strstr(err.msg, "limit") != NULL);
    CHECKE(w->ops->snapshot(w, t, 0, buf, big, &err) == -1 && err.code == EFBIG);
    int ok = w->ops->append(w, t, buf, near, &idx, &err) == 0; /* just under: etcd takes it */
    if (!ok)
        printf("  near-limit append: %s\n", err.msg);
    free(buf);
    CHECK(ok && idx == 1);
    journal_close(w);
}

struct worker {
    journal_t *j;
    uint64_t term;
    int id, count;
    size_t size;                /* 0: small "t<id>-<i>" records */
    int ok;
    uint64_t idx[64];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    err_t err = {0};
    char *buf = w->size ? xcalloc(1, w->size) : NULL;
    w->ok = 1;
    for (int i = 0; i < w->count; i++) {
        char s[32];
        snprintf(s, sizeof s, "t%d-%d", w->id, i);
        int rc = buf ? w->j->ops->append(w->j, w->term, buf, w->size, &w->idx[i % 64], &err)
                     : append_str(w->j, w->term, s, &w->idx[i % 64], &err);
        if (rc != 0) {
            printf("  worker %d: %s\n", w->id, err.msg);
            w->ok = 0;
            break;
        }
    }
    free(buf);
    return NULL;
}

/* Several threads appending through one handle share txns (group commit);
 * every record still gets its own dense index, each thread's in order. */
static void test_concurrent_appends(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p);
    CHECK(w);
    err_t err = {0};
    uint64_t t = 0;
    CHECKE(w->ops->campaign(w, "w", 10000, &t, &err) == 1);
    enum { T = 4, N = 60 };
    struct worker ws[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        ws[i] = (struct worker){.j = w, .term = t, .id = i, .count = N};
        CHECK(pthread_create(&th[i], NULL, worker_main, &ws[i]) == 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++)
        CHECK(ws[i].ok);
    struct collect c = {0};
    CHECKE(w->ops->read(w, 1, collect_fn, &c, NULL, &err) == 0);
    CHECK(c.n == T * N);
    int next[T] = {0};
    for (int i = 0; i < c.n; i++) {
        int tid = -1, k = -1;
        CHECK(c.idx[i] == (uint64_t)i + 1);
        CHECK(sscanf(c.data[i], "t%d-%d", &tid, &k) == 2 && tid >= 0 && tid < T);
        CHECK(k == next[tid]); /* each thread's records in its order */
        next[tid]++;
    }
    /* big records from several threads: batches stay under etcd's limit */
    for (int i = 0; i < 3; i++) {
        ws[i] = (struct worker){.j = w, .term = t, .id = i, .count = 2, .size = 700u * 1024u};
        CHECK(pthread_create(&th[i], NULL, worker_main, &ws[i]) == 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 3; i++)
        CHECK(ws[i].ok);
    journal_close(w);
}

static int cluster_cmd(const char *what, int n)
{
    char cmd[PATH_MAX * 2 + 64];
    snprintf(cmd, sizeof cmd, "'%s' %s '%s' %d >/dev/null", script, what, cdir, n);
    return system(cmd);
}

static void *killer_main(void *arg)
{
    usleep(100 * 1000); /* while the appends below are in flight */
    *(int *)arg = cluster_cmd("kill", 1);
    return NULL;
}

static void test_survives_member_loss(void)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p), *r = open_j(p);
    CHECK(w && r);
    err_t err = {0};
    uint64_t t = 0, idx = 0;
    char s[32];
    CHECKE(w->ops->campaign(w, "w", 10000, &t, &err) == 1);
    /* member 1 is the first endpoint (every handle has to move on) and the
     * raft leader (an election happens while we append) */
    CHECK(cluster_cmd("lead", 1) == 0);
    int killed = -1;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, killer_main, &killed) == 0);
    int n = 0, failed = 0;
    uint64_t t0 = now_mono_ms(), stall = 0;
    while (n < 200 || now_mono_ms() - t0 < 1500) { /* straddle the kill */
        snprintf(s, sizeof s, "rec-%d", n + 1);
        uint64_t a0 = now_mono_ms();
        int rc = append_str(w, t, s, &idx, &err);
        if (now_mono_ms() - a0 > stall)
            stall = now_mono_ms() - a0;
        if (rc != 0) {
            printf("  append during member loss: %s\n", err.msg);
            failed = 1;
            break;
        }
        n++;
        if (idx != (uint64_t)n)
            break;
    }
    pthread_join(th, NULL);
    printf("# member loss: %d appends in %" PRIu64 " ms, longest single append %" PRIu64 " ms\n", n,
           now_mono_ms() - t0, stall);
    CHECK(killed == 0);
    CHECK(!failed);
    CHECK(idx == (uint64_t)n);
    for (int i = 0; i < 20; i++) {
        snprintf(s, sizeof s, "rec-%d", ++n);
        CHECKE(append_str(w, t, s, &idx, &err) == 0);
    }
    CHECKE(w->ops->renew(w, t, 10000, &err) == 0);
    /* exactly one copy of each record, in order: retried requests that had
     * been applied were recognised */
    struct collect c = {0};
    CHECKE(r->ops->read(r, (uint64_t)(n > 500 ? n - 500 + 1 : 1), collect_fn, &c, NULL, &err) == 0);
    CHECK(c.n == (n > 500 ? 500 : n));
    for (int i = 0; i < c.n && i < 512; i++) {
        snprintf(s, sizeof s, "rec-%" PRIu64, c.idx[i]);
        CHECK_STR(c.data[i], s);
    }
    CHECKE(r->ops->wait(r, (uint64_t)n, 1000, &err) == 1);
    journal_t *f = open_j(p); /* a fresh handle, first endpoint dead */
    CHECK(f);
    journal_leader_t l;
    CHECKE(f->ops->leader(f, &l, &err) == 0 && l.term == t);
    journal_close(f);
    journal_close(w);
    journal_close(r);
}

struct bench_arg {
    journal_t *j;
    uint64_t term;
    int count, ok;
};

static void *bench_main(void *arg)
{
    struct bench_arg *b = arg;
    err_t err = {0};
    uint64_t idx;
    char rec[256];
    memset(rec, 'b', sizeof rec);
    b->ok = 1;
    for (int i = 0; i < b->count; i++)
        if (b->j->ops->append(b->j, b->term, rec, sizeof rec, &idx, &err) < 0) {
            printf("  bench: %s\n", err.msg);
            b->ok = 0;
            return NULL;
        }
    return NULL;
}

/* n 256-byte appends from `threads` threads through one handle. */
static void bench(int n, int threads)
{
    char p[64];
    new_prefix(p, sizeof p);
    journal_t *w = open_j(p);
    if (!w)
        return;
    err_t err = {0};
    uint64_t t = 0;
    if (w->ops->campaign(w, "bench", 10000, &t, &err) != 1) {
        printf("  bench: %s\n", err.msg);
        journal_close(w);
        return;
    }
    struct bench_arg a[64];
    pthread_t th[64];
    if (threads > 64)
        threads = 64;
    uint64_t t0 = now_mono_us();
    for (int i = 0; i < threads; i++) {
        a[i] = (struct bench_arg){.j = w, .term = t, .count = n / threads};
        pthread_create(&th[i], NULL, bench_main, &a[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double s = (double)(now_mono_us() - t0) / 1e6;
    int done = n / threads * threads;
    printf("# bench: %d appends of 256 B from %d thread(s) in %.2f s = %.0f appends/s (%.2f ms per call)\n",
           done, threads, s, done / s, s * 1000 * threads / done);
    journal_close(w);
}

static void benches(const char *when)
{
    const char *bn = getenv("JETCD_BENCH");
    int n = bn ? atoi(bn) : 0;
    if (n <= 0)
        return;
    printf("# bench (%s)\n", when);
    bench(n, 1);
    bench(n, 4);
    bench(n, 16);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* lines reach a CI log even if we crash */
    if (!have_etcd()) {
        SKIP(test_journal_etcd, "no etcd/etcdctl binary (apt-get install etcd-server etcd-client)");
        return 0;
    }
    if (find_script() < 0) {
        SKIP(test_journal_etcd, "scripts/etcd-cluster.sh not found");
        return 0;
    }
    if (start_cluster() < 0) {
        printf("FAIL start_cluster: %s could not start a 3-member cluster\n", script);
        stop_cluster();
        return 1;
    }
    printf("# etcd cluster: %s (in %s)\n", eps, cdir);
    RUN(test_campaign_and_leader);
    RUN(test_lease_expiry_and_fencing);
    RUN(test_append_read);
    RUN(test_wait_wakes);
    RUN(test_snapshot_compaction);
    RUN(test_oversized_record);
    RUN(test_concurrent_appends);
    benches("3 members");
    RUN(test_survives_member_loss); /* last: leaves two members */
    benches("2 of 3 members");
    stop_cluster();
    CHECK_EXIT();
}
