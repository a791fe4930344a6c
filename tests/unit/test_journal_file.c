/* test_journal_file.c - the file journal (src/journal/journal_file.c):
 * round trips across segment rolls, reopen, torn-tail repair, refusal of
 * mid-log corruption, leases and fencing between handles and processes
 * (including a SIGSTOPped leader), group commit from threads, snapshots and
 * compaction, wait() woken by another process, and power-loss fault
 * injection in the style of SQLite's test6.c.  The last test prints the
 * group-commit throughput (docs/journal.md quotes it).
 *
 * No strict timing asserts: lease expiry is polled for with a generous
 * deadline. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/util.h"
#include "journal/journal.h"
#include "journal/journal_file.h"

static char TMP[256];

static void mktmp(void)
{
    snprintf(TMP, sizeof TMP, "/tmp/flicker-test-journal-XXXXXX");
    if (!mkdtemp(TMP))
        abort();
}

static void rmtmp(void)
{
    rm_rf(TMP, NULL);
}

static journal_t *jopen(uint64_t seg_bytes)
{
    err_t err = {0};
    journal_file_opts_t o = {.segment_bytes = seg_bytes};
    journal_t *j = journal_file_open_opts(TMP, &o, &err);
    if (!j)
        printf("  open: %s\n", err.msg);
    return j;
}

/* A self-describing payload: [u32 seed][u32 len][bytes derived from seed]. */
static size_t mkpay(unsigned seed, unsigned char *buf, size_t cap)
{
    size_t len = 8 + seed % 300;
    if (len > cap)
        len = cap;
    memcpy(buf, &seed, 4);
    uint32_t l = (uint32_t)len;
    memcpy(buf + 4, &l, 4);
    for (size_t i = 8; i < len; i++)
        buf[i] = (unsigned char)(seed * 31u + i);
    return len;
}

static int paygood(const void *data, size_t len, unsigned *seed)
{
    const unsigned char *b = data;
    if (len < 8)
        return 0;
    uint32_t l;
    memcpy(seed, b, 4);
    memcpy(&l, b + 4, 4);
    if (l != len)
        return 0;
    for (size_t i = 8; i < len; i++)
        if (b[i] != (unsigned char)(*seed * 31u + i))
            return 0;
    return 1;
}

/* Collects what read() delivers. */
typedef struct got {
    size_t n, cap;
    uint64_t *index, *term;
    unsigned *seed;
    int bad;      /* a payload was malformed */
    int disorder; /* indexes not consecutive */
} got_t;

static int collect(const journal_record_t *r, void *arg)
{
    got_t *g = arg;
    if (g->n == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 256;
        g->index = xrealloc(g->index, g->cap * sizeof *g->index);
        g->term = xrealloc(g->term, g->cap * sizeof *g->term);
        g->seed = xrealloc(g->seed, g->cap * sizeof *g->seed);
    }
    unsigned seed = 0;
    if (!paygood(r->data, r->len, &seed))
        g->bad = 1;
    if (g->n && r->index != g->index[g->n - 1] + 1)
        g->disorder = 1;
    g->index[g->n] = r->index;
    g->term[g->n] = r->term;
    g->seed[g->n] = seed;
    g->n++;
    return 0;
}

static void got_free(got_t *g)
{
    free(g->index);
    free(g->term);
    free(g->seed);
    memset(g, 0, sizeof *g);
}

static int read_all(journal_t *j, uint64_t from, got_t *g, uint64_t *first)
{
    err_t err = {0};
    memset(g, 0, sizeof *g);
    int rc = j->ops->read(j, from, collect, g, first, &err);
    if (rc < 0)
        printf("  read: %s\n", err.msg);
    return rc;
}

static int append_seed(journal_t *j, uint64_t term, unsigned seed, uint64_t *index, err_t *err)
{
    unsigned char buf[512];
    size_t len = mkpay(seed, buf, sizeof buf);
    return j->ops->append(j, term, buf, len, index, err);
}

static int count_files(const char *suffix)
{
    DIR *d = opendir(TMP);
    int n = 0;
    struct dirent *de;
    size_t sl = strlen(suffix);
    while (d && (de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l > sl && !strcmp(de->d_name + l - sl, suffix))
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* Path of the segment with the highest first index. */
static char *last_seg(void)
{
    DIR *d = opendir(TMP);
    char best[256] = "";
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strlen(de->d_name) == 24 && strstr(de->d_name, ".seg") && strcmp(de->d_name, best) > 0)
            snprintf(best, sizeof best, "%s", de->d_name);
    if (d)
        closedir(d);
    return xasprintf("%s/%s", TMP, best);
}

static off_t fsize(const char *p)
{
    struct stat st;
    return stat(p, &st) < 0 ? -1 : st.st_size;
}

/* ------------------------------------------------------------------------ */

static void test_crc32c_vector(void)
{
    /* The standard check value of CRC-32C (RFC 3720, iSCSI). */
    CHECK(journal_crc32c(0, "123456789", 9) == 0xE3069283u);
    /* Incremental = one shot, across the 8-byte fast path. */
    const char *s = "The quick brown fox jumps over the lazy dog";
    uint32_t a = journal_crc32c(0, s, strlen(s));
    uint32_t b = journal_crc32c(journal_crc32c(0, s, 13), s + 13, strlen(s) - 13);
    CHECK(a == b);
    CHECK(a == 0x22620404u);
}

static void test_roundtrip_rolls_reopen(void)
{
    mktmp();
    journal_t *j = jopen(4096);
    CHECK(j);
    err_t err = {0};
    uint64_t term = 0, idx = 0;
    CHECK(j->ops->campaign(j, "a", 10000, &term, &err) == 1);
    CHECK(term == 1);
    for (unsigned i = 1; i <= 500; i++) {
        CHECK(append_seed(j, term, i, &idx, &err) == 0);
        CHECK(idx == i);
    }
    CHECK(count_files(".seg") > 10);
    got_t g;
    uint64_t first = 0;
    CHECK(read_all(j, 1, &g, &first) == 0);
    CHECK(first == 1 && g.n == 500 && !g.bad && !g.disorder);
    CHECK(g.index[0] == 1 && g.seed[499] == 500 && g.term[0] == 1);
    got_free(&g);
    /* From the middle (the sparse index must land on the right record). */
    CHECK(read_all(j, 237, &g, &first) == 0);
    CHECK(first == 237 && g.n == 264 && g.index[0] == 237 && g.seed[0] == 237 && !g.disorder);
    got_free(&g);
    CHECK(read_all(j, 501, &g, NULL) == 0 && g.n == 0);
    got_free(&g);
    journal_close(j);

    /* Reopen keeps everything, and appends continue after it. */
    j = jopen(4096);
    CHECK(j);
    CHECK(read_all(j, 1, &g, NULL) == 0);
    CHECK(g.n == 500 && !g.bad && !g.disorder && g.seed[250] == 251);
    got_free(&g);
    CHECK(append_seed(j, term, 501, &idx, &err) == 0 && idx == 501);
    journal_close(j);
    /* Through the dispatcher too. */
    char *spec = xasprintf("file:%s", TMP);
    j = journal_open(spec, &err);
    free(spec);
    CHECK(j);
    CHECK(read_all(j, 500, &g, NULL) == 0 && g.n == 2 && g.seed[1] == 501);
    got_free(&g);
    journal_close(j);
    CHECK(journal_open("nope:x", &err) == NULL && err.code == EINVAL);
    CHECK(journal_open("etcd:http://127.0.0.1:1;bogus=1", &err) == NULL && err.code == EINVAL);
    rmtmp();
}

static void test_torn_tail_repaired(void)
{
    mktmp();
    journal_t *j = jopen(0);
    CHECK(j);
    err_t err = {0};
    uint64_t term, idx;
    CHECK(j->ops->campaign(j, "a", 10000, &term, &err) == 1);
    for (unsigned i = 1; i <= 20; i++)
        CHECK(append_seed(j, term, i, &idx, &err) == 0);
    journal_close(j);

    /* Cut the file in the middle of the last record. */
    char *seg = last_seg();
    off_t sz = fsize(seg);
    CHECK(truncate(seg, sz - 5) == 0);
    j = jopen(0);
    CHECK(j);
    got_t g;
    CHECK(read_all(j, 1, &g, NULL) == 0 && g.n == 19 && !g.bad);
    got_free(&g);
    CHECK(append_seed(j, term, 1000, &idx, &err) == 0 && idx == 20);
    journal_close(j);

    /* Garbage after the last record. */
    int fd = open(seg, O_WRONLY | O_APPEND);
    CHECK(fd >= 0);
    unsigned char junk[777];
    random_bytes(junk, sizeof junk);
    CHECK(write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
    close(fd);
    /* And a header that claims a huge record. */
    j = jopen(0);
    CHECK(j);
    CHECK(read_all(j, 1, &g, NULL) == 0 && g.n == 20 && !g.bad && g.seed[19] == 1000);
    got_free(&g);
    CHECK(append_seed(j, term, 1001, &idx, &err) == 0 && idx == 21);
    journal_close(j);
    j = jopen(0);
    CHECK(j);
    CHECK(read_all(j, 1, &g, NULL) == 0 && g.n == 21 && !g.bad && !g.disorder);
    got_free(&g);
    journal_close(j);
    free(seg);
    rmtmp();
}

static void test_middle_corruption_refused(void)
{
    mktmp();
    journal_t *j = jopen(0);
    CHECK(j);
    err_t err = {0};
    uint64_t term, idx;
    CHECK(j->ops->campaign(j, "a", 10000, &term, &err) == 1);
    off_t off5 = 0;
    CHECK(append_seed(j, term, 1, &idx, &err) == 0);
    char *seg = last_seg();
    for (unsigned i = 2; i <= 20; i++) {
        if (i == 5)
            off5 = fsize(seg);
        CHECK(append_seed(j, term, i, &idx, &err) == 0);
    }
    journal_close(j);
    /* Flip one payload byte of record 5: records 6..20 (later batches) follow. */
    int fd = open(seg, O_RDWR);
    CHECK(fd >= 0);
    unsigned char c;
    CHECK(pread(fd, &c, 1, off5 + 40) == 1);
    c ^= 0x40;
    CHECK(pwrite(fd, &c, 1, off5 + 40) == 1);
    close(fd);
    off_t before = fsize(seg);
    memset(&err, 0, sizeof err);
    j = journal_file_open(TMP, &err);
    CHECK(j == NULL);
    CHECK(err.code == EUCLEAN);
    CHECK(strstr(err.msg, "refusing") != NULL);
    CHECK(fsize(seg) == before); /* nothing was dropped */
    free(seg);
    rmtmp();

    /* A gap: a whole segment in the middle missing. */
    mktmp();
    j = jopen(2048);
    CHECK(j);
    CHECK(j->ops->campaign(j, "a", 10000, &term, &err) == 1);
    for (unsigned i = 1; i <= 100; i++)
        CHECK(append_seed(j, term, i, &idx, &err) == 0);
    journal_close(j);
    /* Segments are named by first index: delete the second one. */
    DIR *d = opendir(TMP);
    uint64_t firsts[256];
    size_t nf = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) && nf < 256)
        if (strstr(de->d_name, ".seg"))
            firsts[nf++] = strtoull(de->d_name, NULL, 10);
    if (d)
        closedir(d);
    CHECK(nf >= 3);
    /* A reader that knew the last segment notices when it vanishes. */
    journal_t *f = jopen(2048);
    CHECK(f);
    got_t g;
    CHECK(read_all(f, 1, &g, NULL) == 0 && g.n == 100);
    got_free(&g);
    char *lastp = last_seg(), *keep = xasprintf("%s.keep", lastp);
    CHECK(rename(lastp, keep) == 0);
    memset(&err, 0, sizeof err);
    CHECK(f->ops->read(f, 1, collect, &g, NULL, &err) < 0 && err.code == EUCLEAN);
    got_free(&g);
    CHECK(strstr(err.msg, "vanished") != NULL);
    CHECK(rename(keep, lastp) == 0);
    free(lastp);
    free(keep);
    journal_close(f);
    uint64_t second = UINT64_MAX;
    for (size_t i = 0; i < nf; i++)
        if (firsts[i] > 1 && firsts[i] < second)
            second = firsts[i];
    char *vp = xasprintf("%s/%020llu.seg", TMP, (unsigned long long)second);
    CHECK(unlink(vp) == 0);
    memset(&err, 0, sizeof err);
    j = journal_file_open(TMP, &err);
    CHECK(j == NULL && err.code == EUCLEAN);
    CHECK(strstr(err.msg, "gap") != NULL);
    free(vp);
    rmtmp();
}

static int poll_campaign(journal_t *j, const char *id, uint64_t lease, uint64_t *term, int deadline_ms)
{
    uint64_t end = now_mono_ms() + (uint64_t)deadline_ms;
    err_t err = {0};
    int rc;
    while ((rc = j->ops->campaign(j, id, lease, term, &err)) == 0 && now_mono_ms() < end)
        usleep(10000);
    return rc;
}

/* append_many: one group, consecutive indexes, read back in order; a
 * stale term appends none of them. */
static void test_append_many(void)
{
    mktmp();
    journal_t *j = jopen(4096);
    CHECK(j && j->ops->append_many);
    err_t err = {0};
    uint64_t term = 0, idx = 0, idxs[20];
    CHECK(j->ops->campaign(j, "a", 10000, &term, &err) == 1);
    CHECK(append_seed(j, term, 1, &idx, &err) == 0 && idx == 1);
    unsigned char bufs[20][512];
    const void *data[20];
    size_t lens[20];
    for (unsigned i = 0; i < 20; i++) {
        lens[i] = mkpay(i + 2, bufs[i], sizeof bufs[i]);
        data[i] = bufs[i];
    }
    CHECK(j->ops->append_many(j, term, 20, data, lens, idxs, &err) == 20);
    for (unsigned i = 0; i < 20; i++)
        CHECK(idxs[i] == i + 2);
    got_t g;
    CHECK(read_all(j, 1, &g, NULL) == 0);
    CHECK(g.n == 21 && !g.bad && !g.disorder && g.seed[0] == 1 && g.seed[20] == 21);
    got_free(&g);
    CHECK(j->ops->append_many(j, term + 5, 3, data, lens, idxs, &err) == 0 && err.code == ESTALE);
    CHECK(read_all(j, 1, &g, NULL) == 0 && g.n == 21);
    got_free(&g);
    journal_close(j);
    rmtmp();
}

static void test_fencing_leases(void)
{
    mktmp();
    journal_t *a = jopen(0), *b = jopen(0);
    CHECK(a && b);
    err_t err = {0};
    uint64_t ta = 0, tb = 0, idx;
    journal_leader_t l;
    CHECK(a->ops->leader(a, &l, &err) == 0 && l.term == 0 && l.id[0] == 0);
    CHECK(a->ops->campaign(a, "A", 200, &ta, &err) == 1 && ta == 1);
    /* Same candidate again while leading: same term, lease extended. */
    CHECK(a->ops->campaign(a, "A", 200, &ta, &err) == 1 && ta == 1);
    CHECK(b->ops->campaign(b, "B", 200, &tb, &err) == 0 && tb == 1);
    CHECK(append_seed(a, 0, 1, &idx, &err) < 0 && err.code == ESTALE);
    CHECK(a->ops->campaign(a, "", 200, &tb, &err) < 0 && err.code == EINVAL);
    char big[200];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(a->ops->campaign(a, big, 200, &tb, &err) < 0 && err.code == EINVAL);
    void *huge = xcalloc(1, JOURNAL_FILE_MAX_RECORD + 1);
    int hrc = a->ops->append(a, ta, huge, JOURNAL_FILE_MAX_RECORD + 1, &idx, &err);
    free(huge);
    CHECK(hrc < 0 && err.code == E2BIG);
    CHECK(append_seed(a, ta, 1, &idx, &err) == 0 && idx == 1);
    CHECK(append_seed(b, 7, 2, &idx, &err) < 0 && err.code == ESTALE);
    /* A stops renewing; B gets in once the lease expires. */
    CHECK(poll_campaign(b, "B", 200, &tb, 10000) == 1);
    CHECK(tb == 2);
    CHECK(b->ops->leader(b, &l, &err) == 0 && !strcmp(l.id, "B") && l.term == 2);
    memset(&err, 0, sizeof err);
    CHECK(append_seed(a, ta, 3, &idx, &err) < 0 && err.code == ESTALE);
    CHECK(a->ops->renew(a, ta, 200, &err) < 0 && err.code == ESTALE);
    CHECK(a->ops->resign(a, ta, &err) < 0 && err.code == ESTALE);
    CHECK(a->ops->snapshot(a, ta, 1, "x", 1, &err) < 0 && err.code == ESTALE);
    CHECK(append_seed(b, tb, 4, &idx, &err) == 0 && idx == 2);
    CHECK(b->ops->renew(b, tb, 60000, &err) == 0);
    CHECK(b->ops->resign(b, tb, &err) == 0);
    /* Resigned: B's term is fenced too. */
    CHECK(append_seed(b, tb, 5, &idx, &err) < 0 && err.code == ESTALE);

    /* A leader in another process that gets stuck (SIGSTOP). */
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        journal_t *c = journal_file_open(TMP, NULL);
        uint64_t tc = 0, ci;
        char ok = 'n';
        if (c && c->ops->campaign(c, "C", 200, &tc, NULL) == 1 && append_seed(c, tc, 6, &ci, NULL) == 0)
            ok = 'y';
        if (write(pfd[1], &ok, 1) != 1)
            _exit(3);
        raise(SIGSTOP);
        /* Resumed after another leader took over: must be fenced. */
        err_t e = {0};
        int rc = append_seed(c, tc, 7, &ci, &e);
        int rr = c->ops->renew(c, tc, 200, NULL);
        journal_close(c);
        _exit(rc < 0 && e.code == ESTALE && rr < 0 ? 0 : 1);
    }
    close(pfd[1]);
    char ok = 0;
    CHECK(read(pfd[0], &ok, 1) == 1 && ok == 'y');
    close(pfd[0]);
    int status;
    CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status));
    CHECK(poll_campaign(a, "A", 60000, &ta, 10000) == 1);
    CHECK(ta == 4);
    CHECK(kill(pid, SIGCONT) == 0);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(append_seed(a, ta, 8, &idx, &err) == 0 && idx == 4);
    got_t g;
    CHECK(read_all(b, 1, &g, NULL) == 0);
    CHECK(g.n == 4 && g.seed[0] == 1 && g.seed[1] == 4 && g.seed[2] == 6 && g.seed[3] == 8);
    CHECK(g.term[0] == 1 && g.term[1] == 2 && g.term[2] == 3 && g.term[3] == 4);
    got_free(&g);
    journal_close(a);
    journal_close(b);
    rmtmp();
}

/* A leader stopped after its write but before its fdatasync holds no lock:
 * another candidate takes over and appends at once; the stopped append,
 * written before the new term existed, completes when resumed and comes
 * first in the log; the resumed leader's next append is fenced. */
static void test_stuck_mid_append(void)
{
    mktmp();
    journal_t *a = jopen(0);
    CHECK(a);
    err_t err = {0};
    uint64_t ta, idx;
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        journal_t *c = journal_file_open(TMP, NULL);
        uint64_t tc = 0, i1 = 0, i2 = 0;
        if (!c || c->ops->campaign(c, "C", 200, &tc, NULL) != 1 || append_seed(c, tc, 1, &i1, NULL) < 0)
            _exit(1);
        if (write(pfd[1], &tc, sizeof tc) != (ssize_t)sizeof tc)
            _exit(2);
        journal_file_set_fault(c, &(journal_file_fault_t){.stop_after_write_at = 1});
        if (append_seed(c, tc, 2, &i2, NULL) < 0 || i2 != 2) /* stops inside, then completes */
            _exit(3);
        err_t e = {0};
        int rc = append_seed(c, tc, 3, &i2, &e);
        journal_close(c);
        _exit(rc < 0 && e.code == ESTALE ? 0 : 4);
    }
    close(pfd[1]);
    uint64_t tc = 0;
    CHECK(read(pfd[0], &tc, sizeof tc) == (ssize_t)sizeof tc);
    close(pfd[0]);
    int status;
    CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status));
    uint64_t t0 = now_mono_ms();
    CHECK(poll_campaign(a, "A", 60000, &ta, 10000) == 1);
    CHECK(ta == tc + 1);
    CHECK(append_seed(a, ta, 4, &idx, &err) == 0 && idx == 3);
    printf("  took over %llu ms after the leader stopped mid-append (its lease: 200 ms)\n",
           (unsigned long long)(now_mono_ms() - t0));
    CHECK(kill(pid, SIGCONT) == 0);
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    got_t g;
    CHECK(read_all(a, 1, &g, NULL) == 0);
    CHECK(g.n == 3 && g.seed[0] == 1 && g.seed[1] == 2 && g.seed[2] == 4);
    CHECK(g.term[1] == tc && g.term[2] == ta);
    got_free(&g);
    journal_close(a);
    rmtmp();
}

/* The leader file's two slots: a damaged newest slot leaves the previous
 * state, and a campaign still never reuses a term found in the log; both
 * slots corrupt is refused, never read as "term 0". */
static void test_leader_file_torn(void)
{
    mktmp();
    journal_t *j = jopen(0);
    CHECK(j);
    err_t err = {0};
    uint64_t t1, t2;
    CHECK(j->ops->campaign(j, "A", 60000, &t1, &err) == 1 && t1 == 1); /* seq 1: slot 1 */
    CHECK(j->ops->resign(j, t1, &err) == 0);                           /* seq 2: slot 0 */
    CHECK(j->ops->campaign(j, "B", 60000, &t2, &err) == 1 && t2 == 2); /* seq 3: slot 1 */
    uint64_t idx;
    CHECK(append_seed(j, t2, 1, &idx, &err) == 0);
    journal_close(j);
    char *p = xasprintf("%s/leader", TMP);
    int fd = open(p, O_RDWR);
    CHECK(fd >= 0);
    unsigned char junk[100];
    memset(junk, 0xa5, sizeof junk);
    CHECK(pwrite(fd, junk, sizeof junk, 256 + 40) == (ssize_t)sizeof junk); /* tear slot 1 */
    j = jopen(0);
    CHECK(j);
    journal_leader_t l;
    CHECK(j->ops->leader(j, &l, &err) == 0);
    CHECK(l.term == 1 && l.id[0] == 0); /* back to seq 2: A resigned, term 1 */
    /* B's term 2 survives in the log: C must not get term 2 again. */
    uint64_t t3;
    CHECK(j->ops->campaign(j, "C", 60000, &t3, &err) == 1 && t3 == 3);
    CHECK(append_seed(j, 2, 2, &idx, &err) < 0 && err.code == ESTALE);
    journal_close(j);
    CHECK(pwrite(fd, junk, sizeof junk, 40) == (ssize_t)sizeof junk);
    CHECK(pwrite(fd, junk, sizeof junk, 256 + 40) == (ssize_t)sizeof junk);
    close(fd);
    free(p);
    memset(&err, 0, sizeof err);
    CHECK(journal_file_open(TMP, &err) == NULL && err.code == EUCLEAN);
    rmtmp();
}

typedef struct thr {
    journal_t *j;
    uint64_t term;
    unsigned id, n;
    uint64_t *idx;
    int fails;
} thr_t;

static void *appender(void *arg)
{
    thr_t *t = arg;
    for (unsigned i = 0; i < t->n; i++) {
        err_t err = {0};
        if (append_seed(t->j, t->term, t->id * 100000 + i, &t->idx[i], &err) < 0)
            t->fails++;
    }
    return NULL;
}

static void test_concurrent_appends(void)
{
    mktmp();
    journal_t *j = jopen(16384);
    CHECK(j);
    err_t err = {0};
    uint64_t term;
    CHECK(j->ops->campaign(j, "a", 60000, &term, &err) == 1);
    enum { T = 4, N = 250 };
    thr_t t[T];
    pthread_t th[T];
    for (unsigned i = 0; i < T; i++) {
        t[i] = (thr_t){.j = j, .term = term, .id = i + 1, .n = N, .idx = xcalloc(N, sizeof(uint64_t))};
        CHECK(pthread_create(&th[i], NULL, appender, &t[i]) == 0);
    }
    for (unsigned i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    got_t g;
    CHECK(read_all(j, 1, &g, NULL) == 0);
    int ok = g.n == T * N && !g.bad && !g.disorder && g.index[0] == 1;
    for (unsigned i = 0; ok && i < T; i++) {
        ok = t[i].fails == 0;
        for (unsigned k = 0; ok && k < N; k++) {
            uint64_t x = t[i].idx[k];
            ok = x >= 1 && x <= T * N && g.seed[x - 1] == t[i].id * 100000 + k;
            if (k)
                ok = ok && x > t[i].idx[k - 1]; /* a thread's own order is kept */
        }
    }
    got_free(&g);
    for (unsigned i = 0; i < T; i++)
        free(t[i].idx);
    journal_close(j);
    CHECK(ok);
    rmtmp();
}

static void test_snapshot_compaction(void)
{
    mktmp();
    journal_t *j = jopen(4096);
    CHECK(j);
    err_t err = {0};
    uint64_t term, idx, upto = 0;
    void *data = NULL;
    size_t len = 0;
    CHECK(j->ops->load_snapshot(j, &upto, &data, &len, &err) == 0);
    CHECK(j->ops->campaign(j, "a", 60000, &term, &err) == 1);
    for (unsigned i = 1; i <= 300; i++)
        CHECK(append_seed(j, term, i, &idx, &err) == 0);
    int segs_before = count_files(".seg");
    CHECK(j->ops->snapshot(j, term, 400, "x", 1, &err) < 0 && err.code == EINVAL);
    CHECK(j->ops->snapshot(j, term, 200, "state-200", 9, &err) == 0);
    CHECK(count_files(".seg") < segs_before);
    CHECK(count_files(".snap") == 1);
    got_t g;
    uint64_t first = 0;
    CHECK(read_all(j, 1, &g, &first) == 0);
    CHECK(first > 1 && first <= 201 && g.n == 300 - first + 1 && !g.disorder && !g.bad);
    CHECK(g.index[g.n - 1] == 300);
    got_free(&g);
    CHECK(j->ops->load_snapshot(j, &upto, &data, &len, &err) == 1);
    CHECK(upto == 200 && len == 9 && !memcmp(data, "state-200", 9));
    free(data);
    journal_close(j);

    /* Survives a reopen; a later snapshot replaces the first one. */
    j = jopen(4096);
    CHECK(j);
    CHECK(read_all(j, 1, &g, &first) == 0 && g.index[0] == first && g.index[g.n - 1] == 300);
    got_free(&g);
    CHECK(append_seed(j, term, 301, &idx, &err) == 0 && idx == 301);
    CHECK(j->ops->snapshot(j, term, 301, "state-301", 9, &err) == 0);
    CHECK(count_files(".seg") == 1 && count_files(".snap") == 1);
    CHECK(j->ops->load_snapshot(j, &upto, &data, &len, &err) == 1);
    CHECK(upto == 301 && len == 9 && !memcmp(data, "state-301", 9));
    free(data);
    CHECK(append_seed(j, term, 302, &idx, &err) == 0 && idx == 302);
    journal_close(j);
    j = jopen(4096);
    CHECK(j);
    CHECK(read_all(j, 1, &g, &first) == 0 && g.n >= 1 && g.index[g.n - 1] == 302 && g.seed[g.n - 1] == 302);
    got_free(&g);
    journal_close(j);

    /* A corrupt newest snapshot is skipped, never returned. */
    char *p = xasprintf("%s/snapshot-%020d.snap", TMP, 301);
    int fd = open(p, O_RDWR);
    free(p);
    CHECK(fd >= 0);
    CHECK(pwrite(fd, "Z", 1, 34) == 1);
    close(fd);
    j = jopen(4096);
    CHECK(j);
    memset(&err, 0, sizeof err);
    CHECK(j->ops->load_snapshot(j, &upto, &data, &len, &err) < 0 && err.code == EUCLEAN);
    journal_close(j);
    /* A snapshot ahead of the end of the log: its indexes would be reused. */
    p = xasprintf("%s/snapshot-%020d.snap", TMP, 999);
    fd = open(p, O_WRONLY | O_CREAT, 0644);
    free(p);
    CHECK(fd >= 0);
    close(fd);
    memset(&err, 0, sizeof err);
    CHECK(journal_file_open(TMP, &err) == NULL && err.code == EUCLEAN);
    rmtmp();
}

static void test_wait_cross_process(void)
{
    mktmp();
    journal_t *j = jopen(0);
    CHECK(j);
    err_t err = {0};
    uint64_t term;
    CHECK(j->ops->campaign(j, "a", 60000, &term, &err) == 1);
    CHECK(j->ops->wait(j, 1, 20, &err) == 0);
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        usleep(150000);
        journal_t *c = journal_file_open(TMP, NULL);
        uint64_t i;
        int rc = c ? append_seed(c, term, 42, &i, NULL) : -1;
        uint64_t done = now_mono_us(); /* CLOCK_MONOTONIC: comparable across processes */
        if (write(pfd[1], &done, sizeof done) != (ssize_t)sizeof done)
            rc = -1;
        if (c)
            journal_close(c);
        _exit(rc == 0 ? 0 : 1);
    }
    close(pfd[1]);
    int rc = j->ops->wait(j, 1, 10000, &err);
    uint64_t woke = now_mono_us(), appended = 0;
    int status;
    CHECK(read(pfd[0], &appended, sizeof appended) == (ssize_t)sizeof appended);
    close(pfd[0]);
    waitpid(pid, &status, 0);
    CHECK(rc == 1);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("  wait() returned %lld us after the other process's append returned (negative: it woke on the "
           "write, before that append's fdatasync finished)\n", (long long)woke - (long long)appended);
    got_t g;
    CHECK(read_all(j, 1, &g, NULL) == 0 && g.n == 1 && g.seed[0] == 42);
    got_free(&g);
    CHECK(j->ops->wait(j, 2, 30, &err) == 0);
    journal_close(j);
    rmtmp();
}

/* test6.c-style: random short writes, failed syncs and power losses
 * (unsynced data dropped, torn, or scrambled sector by sector) over many
 * rounds on one directory.
 * Every acknowledged record must survive exactly; nothing malformed may be
 * read back; the journal must always reopen. */
typedef struct fthr {
    journal_t *j;
    uint64_t term;
    unsigned base, n;
    uint64_t idx[16];
    unsigned seed[16];
    unsigned acked;
} fthr_t;

static void *fault_appender(void *arg)
{
    fthr_t *t = arg;
    for (unsigned i = 0; i < t->n; i++) {
        uint64_t x;
        if (append_seed(t->j, t->term, t->base + i, &x, NULL) < 0)
            break;
        t->idx[t->acked] = x;
        t->seed[t->acked++] = t->base + i;
    }
    return NULL;
}

static void test_fault_injection_power_loss(void)
{
    mktmp();
    /* JOURNAL_FAULT_ROUNDS / JOURNAL_FAULT_SEED for longer or other runs. */
    unsigned rounds = getenv("JOURNAL_FAULT_ROUNDS") ? (unsigned)atoi(getenv("JOURNAL_FAULT_ROUNDS")) : 80;
    unsigned rnd = getenv("JOURNAL_FAULT_SEED") ? (unsigned)atoi(getenv("JOURNAL_FAULT_SEED")) : 12345;
    const unsigned MAXI = rounds * 40 + 100;
    unsigned *expect = xcalloc(MAXI + 1, sizeof *expect); /* index -> seed, 0: none acked */
    unsigned acked_total = 0, crashes = 0, faults = 0;
    int ok = 1;
    for (unsigned round = 0; round < rounds && ok; round++) {
        journal_t *j = jopen(1024 + rand_r(&rnd) % 8192);
        if (!j) {
            ok = 0;
            break;
        }
        err_t err = {0};
        uint64_t term;
        if (j->ops->campaign(j, "w", 60000, &term, &err) != 1) {
            ok = 0;
            journal_close(j);
            break;
        }
        /* Check what survived the last round. */
        got_t g;
        if (read_all(j, 1, &g, NULL) < 0 || g.bad || g.disorder || (g.n && g.index[0] != 1)) {
            printf("  round %u: bad read back (n=%zu bad=%d disorder=%d)\n", round, g.n, g.bad, g.disorder);
            ok = 0;
        }
        for (uint64_t x = 1; ok && x <= MAXI; x++)
            if (expect[x] && (x > g.n || g.seed[x - 1] != expect[x])) {
                printf("  round %u: acknowledged record %llu lost or changed\n", round, (unsigned long long)x);
                ok = 0;
            }
        got_free(&g);
        journal_file_fault_t f = {0};
        unsigned kind = rand_r(&rnd) % 3;
        if (kind == 0)
            f.short_write_at = 1 + rand_r(&rnd) % 10;
        else if (kind == 1)
            f.fail_sync_at = 1 + rand_r(&rnd) % 10;
        journal_file_set_fault(j, &f);
        unsigned nthr = 1 + rand_r(&rnd) % 3;
        fthr_t t[3];
        pthread_t th[3];
        for (unsigned i = 0; i < nthr; i++) {
            t[i] = (fthr_t){.j = j, .term = term, .base = 1 + round * 100 + i * 20, .n = 1 + rand_r(&rnd) % 12};
            pthread_create(&th[i], NULL, fault_appender, &t[i]);
        }
        for (unsigned i = 0; i < nthr; i++) {
            pthread_join(th[i], NULL);
            for (unsigned k = 0; k < t[i].acked; k++)
                if (t[i].idx[k] <= MAXI) {
                    expect[t[i].idx[k]] = t[i].seed[k];
                    acked_total++;
                }
        }
        faults += kind < 2;
        if (rand_r(&rnd) % 4) {
            journal_file_crash(j, (enum journal_crash_mode)(rand_r(&rnd) % 3), rand_r(&rnd));
            crashes++;
        } else {
            journal_close(j);
        }
    }
    printf("  %u acknowledged records checked through %u simulated power losses, %u injected faults\n",
           acked_total, crashes, faults);
    free(expect);
    CHECK(ok);
    CHECK(acked_total > rounds && crashes > rounds / 4);
    rmtmp();
}

/* A writer process killed (SIGKILL) at a random moment: everything it was
 * told was durable is there, and the next writer continues the log. */
static void test_killed_writer(void)
{
    mktmp();
    int ok = 1;
    unsigned last_acked = 0;
    for (unsigned round = 0; round < 5 && ok; round++) {
        int pfd[2];
        CHECK(pipe(pfd) == 0);
        fflush(stdout);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            journal_t *c = journal_file_open_opts(TMP, &(journal_file_opts_t){.segment_bytes = 8192}, NULL);
            uint64_t tc, x;
            if (!c || c->ops->campaign(c, "k", 60000, &tc, NULL) != 1)
                _exit(1);
            for (unsigned i = 0;; i++) {
                unsigned seed = 7000000 + round * 100000 + i;
                if (append_seed(c, tc, seed, &x, NULL) < 0)
                    _exit(2);
                uint64_t msg[2] = {x, seed};
                if (write(pfd[1], msg, sizeof msg) != (ssize_t)sizeof msg)
                    _exit(3);
            }
        }
        close(pfd[1]);
        usleep(20000 + (useconds_t)(round * 17000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        uint64_t msg[2], acked[4096][2];
        size_t na = 0;
        while (read(pfd[0], msg, sizeof msg) == (ssize_t)sizeof msg)
            if (na < 4096) {
                acked[na][0] = msg[0];
                acked[na++][1] = msg[1];
            }
        close(pfd[0]);
        journal_t *j = jopen(8192);
        CHECK(j);
        got_t g;
        CHECK(read_all(j, 1, &g, NULL) == 0);
        ok = !g.bad && !g.disorder && g.n >= na;
        for (size_t i = 0; ok && i < na; i++)
            ok = acked[i][0] <= g.n && g.seed[acked[i][0] - 1] == acked[i][1];
        last_acked += (unsigned)na;
        got_free(&g);
        journal_close(j);
    }
    printf("  %u acknowledged appends checked across 5 SIGKILLed writers\n", last_acked);
    CHECK(ok);
    CHECK(last_acked > 0);
    rmtmp();
}

/* A follower process reads and waits while the leader appends across
 * segment rolls and compacts: it sees every index once, in order, never
 * an error (records compacted before it read them are skipped via *first). */
static void test_follower_during_compaction(void)
{
    mktmp();
    journal_t *j = jopen(2048);
    CHECK(j);
    err_t err = {0};
    uint64_t term, idx;
    CHECK(j->ops->campaign(j, "L", 60000, &term, &err) == 1);
    enum { TOTAL = 1500 };
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        journal_t *f = journal_file_open(TMP, NULL);
        if (!f)
            _exit(1);
        uint64_t next = 1;
        int bad = 0;
        uint64_t deadline = now_mono_ms() + 60000;
        while (next <= TOTAL && now_mono_ms() < deadline && !bad) {
            err_t e = {0};
            int w = f->ops->wait(f, next, 1000, &e);
            if (w < 0) {
                printf("  follower wait: %s\n", e.msg);
                bad = 1;
                break;
            }
            got_t g;
            uint64_t first = 0;
            memset(&g, 0, sizeof g);
            if (f->ops->read(f, next, collect, &g, &first, &e) < 0) {
                printf("  follower read: %s\n", e.msg);
                bad = 1;
            } else if (g.n) {
                bad = g.bad || g.disorder || g.index[0] != first || first < next;
                for (size_t i = 0; i < g.n && !bad; i++)
                    bad = g.seed[i] != g.index[i];
                next = g.index[g.n - 1] + 1;
            }
            got_free(&g);
        }
        journal_close(f);
        _exit(bad || next <= TOTAL ? 1 : 0);
    }
    for (unsigned i = 1; i <= TOTAL; i++) {
        CHECK(append_seed(j, term, i, &idx, &err) == 0 && idx == i);
        if (i % 200 == 0)
            CHECK(j->ops->snapshot(j, term, i - 50, "s", 1, &err) == 0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    journal_close(j);
    rmtmp();
}

/* Group-commit throughput (not an assertion: the figure goes in docs). */
typedef struct bthr {
    journal_t *j;
    uint64_t term;
    unsigned n;
    int fails;
} bthr_t;

static void *bench_appender(void *arg)
{
    bthr_t *b = arg;
    unsigned char buf[128];
    memset(buf, 'b', sizeof buf);
    for (unsigned i = 0; i < b->n; i++) {
        uint64_t x;
        if (b->j->ops->append(b->j, b->term, buf, sizeof buf, &x, NULL) < 0)
            b->fails++;
    }
    return NULL;
}

static double bench(unsigned threads, unsigned per, double *batch)
{
    mktmp();
    journal_t *j = jopen(0);
    uint64_t term;
    if (!j || j->ops->campaign(j, "bench", 600000, &term, NULL) != 1)
        return -1;
    bthr_t b[16];
    pthread_t th[16];
    uint64_t t0 = now_mono_us();
    for (unsigned i = 0; i < threads; i++) {
        b[i] = (bthr_t){.j = j, .term = term, .n = per};
        pthread_create(&th[i], NULL, bench_appender, &b[i]);
    }
    int fails = 0;
    for (unsigned i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        fails += b[i].fails;
    }
    uint64_t dt = now_mono_us() - t0;
    uint64_t na = 0, ns = 0;
    journal_file_stats(j, &na, &ns);
    *batch = ns ? (double)na / (double)ns : 0;
    journal_close(j);
    rmtmp();
    return fails ? -1 : (double)threads * per * 1e6 / (double)(dt ? dt : 1);
}

static void test_bench_group_commit(void)
{
    unsigned n = getenv("JOURNAL_BENCH_N") ? (unsigned)atoi(getenv("JOURNAL_BENCH_N")) : 400;
    double b1 = 0, b8 = 0, one = bench(1, n, &b1), eight = bench(8, n, &b8);
    printf("  BENCH durable 128-byte appends/s: 1 thread %.0f (%.1f per fdatasync), 8 threads %.0f (%.1f per "
           "fdatasync); %u appends per thread\n", one, b1, eight, b8, n);
    CHECK(one > 0 && eight > 0);
}

int main(void)
{
    RUN(test_crc32c_vector);
    RUN(test_roundtrip_rolls_reopen);
    RUN(test_torn_tail_repaired);
    RUN(test_middle_corruption_refused);
    RUN(test_append_many);
    RUN(test_fencing_leases);
    RUN(test_stuck_mid_append);
    RUN(test_leader_file_torn);
    RUN(test_concurrent_appends);
    RUN(test_snapshot_compaction);
    RUN(test_wait_cross_process);
    RUN(test_fault_injection_power_loss);
    RUN(test_killed_writer);
    RUN(test_follower_during_compaction);
    RUN(test_bench_group_commit);
    CHECK_EXIT();
}
