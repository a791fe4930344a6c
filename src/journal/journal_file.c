/* journal_file.c - the file backend of journal.h: an append-only log in one
 * directory, shared by the processes of one host (one writer, any number of
 * readers), with a leader lease and term fencing.  docs/journal.md has the
 * long form (on-disk format, recovery rules, measured figures).
 *
 * FILES in DIR
 *   00000000000000000001.seg   segments, named by the index of their first
 *                              record (20 digits), each a run of records:
 *       u32 crc32c   of every byte after it, header and payload
 *       u32 len      payload length (<= JOURNAL_FILE_MAX_RECORD)
 *       u64 index    1, 2, 3 ... without gaps across segments
 *       u64 term     term of the leader that appended it
 *       u64 batch    index of the first record of its write batch
 *       len bytes    payload
 *   leader                     two 256-byte slots {crc, magic, seq, term,
 *                              lease_expiry_ms, id}; a write goes to slot
 *                              seq % 2, so a torn write leaves the other
 *                              slot (the previous state) intact.  flock on
 *                              this file serialises every read-modify-write,
 *                              append batch, snapshot and recovery; leader()
 *                              and followers read without it.
 *   snapshot-<upto>.snap       {crc, magic, upto, term, len} + data, written
 *                              as .tmp, fsynced, renamed, directory fsynced.
 *
 * CRC32C is the CPU's: the SSE4.2 crc32 instruction through compiler
 * intrinsics (no table-driven code here); journal_file_open refuses a CPU
 * without SSE4.2 (ENOTSUP).
 *
 * INVARIANTS
 *  1. A record is acknowledged (append returns 0) only after the fdatasync
 *     that covers it returned 0; a failed write or sync poisons the handle.
 *  2. A batch is written only when everything before it in the file is
 *     durable: a writer syncs after releasing the lock, so the next writer
 *     (another process) first fdatasyncs a tail it has not synced itself;
 *     in one process the next batch starts after the previous one's sync.
 *     A new segment is created (and the directory fsynced) only after the
 *     previous one is durable.  So only the last batch of the last segment
 *     can be torn by a power loss.
 *  3. Every write to segments, and every change of the leader file, happens
 *     under the exclusive flock of DIR/leader, after the term was read from
 *     the leader file under that same lock hold: an append of a stale term
 *     never reaches the file (ESTALE).  The lock is released right after the
 *     write; the fdatasync runs outside it, so a writer stopped there does
 *     not block a campaign.
 *  4. Indexes are consecutive from the first segment to the last; the first
 *     segment starts at 1 or right after a snapshot's upto.
 *  5. Only a writer holding the lock truncates; readers (followers) stop at
 *     the first incomplete record and never modify anything.
 *  6. A snapshot is written only after records 1..upto are durable, and is
 *     durable (renamed + directory fsynced) before any segment it covers is
 *     deleted; the last segment is never deleted.
 *
 * RECOVERY (journal_file_open, and each batch under the lock): a bad or
 * incomplete record at the end of the last segment is a torn batch and is
 * cut off, unless a valid record of a LATER batch (batch > the bad index)
 * follows it: that means the bad record had been synced, so it is
 * corruption and the journal is refused with EUCLEAN.  So is a bad record in
 * any other segment, or a gap in the indexes.
 *
 * LEADERSHIP (a lease): states  none -> leading(id, term, expiry) -> none.
 *   campaign: none/expired/same id -> leading, term+1 (same id with a live
 *             lease keeps its term; term = max(leader file, log) + 1);   renew: leading -> leading (expiry
 *   moved);   resign: leading -> none (term kept, so it stays fenced).
 *   Expiry is wall-clock: a process that is stopped keeps no lock (the lock
 *   is held for one read-modify-write, or one term check + pwrite) and, when
 *   it resumes, finds a newer term and gets ESTALE.
 *
 * THREADS: unlike journal.h's minimum, every call is safe from several
 * threads; concurrent appends form one batch (the first waiter leads the
 * batch, the others sleep on a condition variable) sharing one write and
 * one fdatasync.  Lock order: flk before mu.  flk is the in-process half
 * of the flock: held with it, and by a batch leader until its sync is done
 * (so this process's snapshot/campaign never see a half-recorded batch).  A handle
 * must not be shared across fork() (the flock belongs to the open file
 * description): a child opens its own. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <nmmintrin.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "journal/journal.h"
#include "journal/journal_file.h"

#define REC_HDR 32u
#define MARK_EVERY 64u          /* sparse index: one mark per 64 records */
#define LSLOT 256u
#define LEADER_MAGIC 0x444c4a46u /* "FJLD" */
#define SNAP_MAGIC 0x4e534a46u   /* "FJSN" */
#define SNAP_HDR 32u
#define SNAP_MAX (1ull << 30)

/* ---- CRC32C ------------------------------------------------------------ */

__attribute__((target("sse4.2"))) uint32_t journal_crc32c(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    uint64_t c = (uint32_t)~crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}

/* ---- little helpers ---------------------------------------------------- */

static inline uint32_t ld32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(unsigned char *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st64(unsigned char *p, uint64_t v) { memcpy(p, &v, 8); }

static void seg_name(uint64_t first, char out[32]) { snprintf(out, 32, "%020" PRIu64 ".seg", first); }
static void snap_name(uint64_t upto, char out[48]) { snprintf(out, 48, "snapshot-%020" PRIu64 ".snap", upto); }

/* Parses "<20 digits><suffix>" after prefix; returns 1 and *v on a match. */
static int parse_name(const char *name, const char *prefix, const char *suffix, uint64_t *v)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    if (strlen(name) != pl + 20 + sl || strncmp(name, prefix, pl) || strcmp(name + pl + 20, suffix))
        return 0;
    uint64_t x = 0;
    for (size_t i = 0; i < 20; i++) {
        char c = name[pl + i];
        if (c < '0' || c > '9')
            return 0;
        x = x * 10 + (uint64_t)(c - '0');
    }
    *v = x;
    return 1;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off, size_t *got)
{
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)w;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- state ------------------------------------------------------------- */

typedef struct mark {
    uint64_t index, off;
} mark_t;

typedef struct seg {
    uint64_t first; /* from the name */
    uint64_t last;  /* last valid index seen (first - 1 when empty) */
    uint64_t end;   /* offset just past that record */
    int sealed;     /* complete and followed by a contiguous segment */
    mark_t *marks;
    size_t nmarks, capmarks;
} seg_t;

typedef struct req {
    struct req *next;
    uint64_t term;
    const void *data;
    size_t len;
    int done, rc;
    uint64_t index;
    err_t err;
} req_t;

typedef struct jfile {
    journal_t base;
    char *dir;
    int dirfd, lfd, wfd, ifd;
    uint64_t wfd_first;  /* segment wfd is open on */
    uint64_t synced_end; /* wfd's size at this handle's last successful fdatasync */
    uint64_t sim_durable; /* journal_file_crash's idea of what is on disk */
    uint64_t seg_bytes;
    pthread_mutex_t flk; /* held with the flock of lfd */
    pthread_mutex_t mu;  /* everything below */
    pthread_cond_t cv;
    seg_t *segs;
    size_t nsegs, capsegs;
    uint64_t snap_upto; /* highest snapshot name seen */
    uint64_t max_term;  /* highest term of a record seen in the log */
    req_t *qhead, **qtail;
    int batching; /* a batch leader is active */
    int writing;  /* a batch is being written: readers leave the tail alone */
    int broken;   /* a write or sync failed: everything fails with EIO */
    journal_file_fault_t fault;
    unsigned nwrites, nsyncs;
    uint64_t nappends, nsyncs_total; /* journal_file_stats */
} jfile_t;

static int broken_err(err_t *err)
{
    return err_set(err, EIO, "journal: an earlier write or sync failed; reopen the journal");
}

static int flock_take(jfile_t *j, int op, err_t *err)
{
    pthread_mutex_lock(&j->flk);
    while (flock(j->lfd, op) < 0) {
        if (errno == EINTR)
            continue;
        err_sys(err, "journal: lock %s/leader", j->dir);
        pthread_mutex_unlock(&j->flk);
        return -1;
    }
    return 0;
}

static void flock_drop(jfile_t *j)
{
    flock(j->lfd, LOCK_UN);
    pthread_mutex_unlock(&j->flk);
}

static uint64_t last_index(const jfile_t *j)
{
    return j->nsegs ? j->segs[j->nsegs - 1].last : j->snap_upto;
}

static void seg_add(seg_t *s, uint64_t index, uint64_t off, uint64_t end)
{
    if ((index - s->first) % MARK_EVERY == 0) {
        if (s->nmarks == s->capmarks) {
            s->capmarks = s->capmarks ? 2 * s->capmarks : 16;
            s->marks = xrealloc(s->marks, s->capmarks * sizeof *s->marks);
        }
        s->marks[s->nmarks++] = (mark_t){index, off};
    }
    s->last = index;
    s->end = end;
}

/* ---- the leader file ----------------------------------------------------- */

typedef struct lstate {
    uint64_t seq, term, expiry;
    char id[128];
} lstate_t;

static int slot_zero(const unsigned char *p)
{
    for (unsigned i = 0; i < LSLOT; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Reads the newest valid slot (caller holds the flock).  No slot written
 * yet: all zero.  Both slots written and both invalid: EUCLEAN. */
static int lstate_read(jfile_t *j, lstate_t *st, err_t *err)
{
    unsigned char buf[2 * LSLOT];
    size_t n;
    memset(st, 0, sizeof *st);
    if (pread_full(j->lfd, buf, sizeof buf, 0, &n) < 0)
        return err_sys(err, "journal: read %s/leader", j->dir);
    int found = 0, dirty = 0;
    for (unsigned s = 0; s < 2; s++) {
        const unsigned char *p = buf + s * LSLOT;
        if (n < (s + 1) * LSLOT) {
            dirty += n > s * LSLOT; /* a partial slot */
            continue;
        }
        if (slot_zero(p))
            continue;
        if (ld32(p) != journal_crc32c(0, p + 4, LSLOT - 4) || ld32(p + 4) != LEADER_MAGIC) {
            dirty++;
            continue;
        }
        uint64_t seq = ld64(p + 8);
        if (!found || seq > st->seq) {
            st->seq = seq;
            st->term = ld64(p + 16);
            st->expiry = ld64(p + 24);
            memcpy(st->id, p + 32, sizeof st->id);
            st->id[sizeof st->id - 1] = 0;
            found = 1;
        }
    }
    /* One torn slot next to a valid or never-written one is a write that
     * never returned; two bad slots cannot come from one torn write. */
    if (!found && dirty > 1)
        return err_set(err, EUCLEAN, "journal: %s/leader: both slots are corrupt", j->dir);
    return 0;
}

static int lstate_write(jfile_t *j, lstate_t *st, err_t *err)
{
    unsigned char p[LSLOT];
    memset(p, 0, sizeof p);
    st->seq++;
    st32(p + 4, LEADER_MAGIC);
    st64(p + 8, st->seq);
    st64(p + 16, st->term);
    st64(p + 24, st->expiry);
    memcpy(p + 32, st->id, strnlen(st->id, sizeof st->id - 1));
    st32(p, journal_crc32c(0, p + 4, LSLOT - 4));
    if (pwrite_full(j->lfd, p, LSLOT, (st->seq % 2) * LSLOT) < 0 || fdatasync(j->lfd) < 0)
        return err_sys(err, "journal: write %s/leader", j->dir);
    return 0;
}

/* ---- segment scanning ---------------------------------------------------- */

typedef struct rdr {
    int fd;
    uint64_t size;
    unsigned char *buf;
    size_t cap;
    uint64_t woff;
    size_t wlen;
} rdr_t;

/* Read window for bytes [off, end): up to 1 MiB, at least 4 KiB. */
static size_t window_for(uint64_t off, uint64_t end)
{
    uint64_t n = end > off ? end - off : 0;
    return n < 4096 ? 4096 : n > (1u << 20) ? (1u << 20) : (size_t)n;
}

/* Returns a pointer to bytes [off, off+n) of the file (off+n <= r->size),
 * reading a window of r->cap bytes as needed; NULL with err on failure. */
static const unsigned char *rdr_get(rdr_t *r, uint64_t off, size_t n, err_t *err)
{
    if (off >= r->woff && off + n <= r->woff + r->wlen)
        return r->buf + (off - r->woff);
    if (n > r->cap) {
        r->cap = n;
        r->buf = xrealloc(r->buf, r->cap);
    }
    size_t want = r->cap;
    if (off + want > r->size)
        want = (size_t)(r->size - off);
    size_t got;
    if (pread_full(r->fd, r->buf, want, off, &got) < 0) {
        err_sys(err, "journal: read segment");
        return NULL;
    }
    r->woff = off;
    r->wlen = got;
    if (got < n) {
        err_set(err, EIO, "journal: segment shrank while being read");
        return NULL;
    }
    return r->buf;
}

/* Decodes and checks the record at off.  Returns 1 (valid, *rec filled,
 * *next = offset after it), 0 (incomplete or bad), -1 (I/O error). */
static int rec_at(rdr_t *r, uint64_t off, journal_record_t *rec, uint64_t *batch, uint64_t *next,
                  err_t *err)
{
    if (r->size - off < REC_HDR)
        return 0;
    const unsigned char *h = rdr_get(r, off, REC_HDR, err);
    if (!h)
        return -1;
    uint32_t len = ld32(h + 4);
    if (len > JOURNAL_FILE_MAX_RECORD || r->size - off - REC_HDR < len)
        return 0;
    h = rdr_get(r, off, REC_HDR + len, err);
    if (!h)
        return -1;
    if (ld32(h) != journal_crc32c(0, h + 4, REC_HDR - 4 + len))
        return 0;
    rec->len = len;
    rec->index = ld64(h + 8);
    rec->term = ld64(h + 16);
    rec->data = h + REC_HDR;
    *batch = ld64(h + 24);
    *next = off + REC_HDR + len;
    return 1;
}

/* The bad spot at `off` (where index `expect` should be) is a torn batch
 * unless a valid record of a later batch follows it.  Returns 1 if one
 * does (corruption), 0 if not, -1 on I/O error. */
static int later_batch_follows(rdr_t *r, uint64_t off, uint64_t expect, err_t *err)
{
    for (uint64_t p = off + 1; p + REC_HDR <= r->size; p++) {
        const unsigned char *h = rdr_get(r, p, REC_HDR, err);
        if (!h)
            return -1;
        uint64_t idx = ld64(h + 8), batch = ld64(h + 24);
        if (ld32(h + 4) > JOURNAL_FILE_MAX_RECORD || idx < expect || batch == 0 || batch > idx)
            continue;
        journal_record_t rec;
        uint64_t b, next;
        int v = rec_at(r, p, &rec, &b, &next, err);
        if (v < 0)
            return -1;
        if (v == 1 && b > expect)
            return 1;
    }
    return 0;
}

/* Scans segment s from where the last scan stopped.  writer: the caller
 * holds the lock and a torn tail of the last segment is cut off; otherwise
 * scanning just stops at the first incomplete record.  Returns 0, -1 with
 * err, or 1 (readers only) when the segment vanished (compacted). */
static int scan_seg(jfile_t *j, seg_t *s, int is_last, int writer, err_t *err)
{
    char name[32];
    seg_name(s->first, name);
    int fd = openat(j->dirfd, name, (writer ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT && !writer)
            return 1; /* compacted under us: list again */
        return err_sys(err, "journal: open %s/%s", j->dir, name);
    }
    struct stat sb;
    if (fstat(fd, &sb) < 0) {
        err_sys(err, "journal: stat %s/%s", j->dir, name);
        close(fd);
        return -1;
    }
    int rc = 0;
    uint64_t off = s->end;
    if (off == (uint64_t)sb.st_size) { /* the common case: nothing new */
        close(fd);
        return 0;
    }
    rdr_t r = {.fd = fd, .size = (uint64_t)sb.st_size, .cap = window_for(off, (uint64_t)sb.st_size)};
    r.buf = xmalloc(r.cap);
    if (off > r.size) {
        rc = err_set(err, EUCLEAN, "journal: %s/%s is shorter (%" PRIu64 ") than already read (%" PRIu64 ")",
                     j->dir, name, r.size, off);
        goto out;
    }
    while (off < r.size) {
        journal_record_t rec;
        uint64_t batch, next;
        int v = rec_at(&r, off, &rec, &batch, &next, err);
        if (v < 0) {
            rc = -1;
            goto out;
        }
        if (v == 0)
            break;
        if (rec.index != s->last + 1) {
            rc = err_set(err, EUCLEAN, "journal: %s/%s offset %" PRIu64 ": index %" PRIu64 " where %" PRIu64
                         " was expected (gap)", j->dir, name, off, rec.index, s->last + 1);
            goto out;
        }
        seg_add(s, rec.index, off, next);
        if (rec.term > j->max_term)
            j->max_term = rec.term;
        off = next;
    }
    if (off == r.size)
        goto out;
    /* A bad or incomplete record at off. */
    if (!is_last) {
        rc = err_set(err, EUCLEAN, "journal: %s/%s offset %" PRIu64 ": corrupt record (index %" PRIu64
                     ") in a segment that is not the last", j->dir, name, off, s->last + 1);
        goto out;
    }
    if (!writer)
        goto out; /* still being written, or torn: a writer will repair it */
    int later = later_batch_follows(&r, off, s->last + 1, err);
    if (later < 0) {
        rc = -1;
        goto out;
    }
    if (later) {
        rc = err_set(err, EUCLEAN, "journal: %s/%s offset %" PRIu64 ": corrupt record (index %" PRIu64
                     ") followed by valid later records; refusing to drop them", j->dir, name, off, s->last + 1);
        goto out;
    }
    log_warn("journal", "%s/%s: torn tail at offset %" PRIu64 " (%" PRIu64 " bytes after index %" PRIu64
             ") truncated", j->dir, name, off, r.size - off, s->last);
    if (ftruncate(fd, (off_t)off) < 0 || fdatasync(fd) < 0) {
        rc = err_sys(err, "journal: truncate %s/%s", j->dir, name);
        goto out;
    }
    if (j->wfd >= 0 && j->wfd_first == s->first && j->synced_end > off)
        j->synced_end = off;
    if (j->wfd >= 0 && j->wfd_first == s->first && j->sim_durable > off)
        j->sim_durable = off;
out:
    free(r.buf);
    close(fd);
    return rc;
}

/* Lists DIR: sorted segment first-indexes and the highest snapshot upto. */
static int list_dir(jfile_t *j, uint64_t **firsts, size_t *n, uint64_t *snap_max, err_t *err)
{
    DIR *d = opendir(j->dir);
    if (!d)
        return err_sys(err, "journal: open directory %s", j->dir);
    size_t cap = 16, cnt = 0;
    uint64_t *v = xmalloc(cap * sizeof *v);
    *snap_max = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        uint64_t x;
        if (parse_name(de->d_name, "", ".seg", &x)) {
            if (cnt == cap)
                v = xrealloc(v, (cap *= 2) * sizeof *v);
            v[cnt++] = x;
        } else if (parse_name(de->d_name, "snapshot-", ".snap", &x) && x > *snap_max) {
            *snap_max = x;
        }
    }
    closedir(d);
    qsort(v, cnt, sizeof *v, cmp_u64);
    *firsts = v;
    *n = cnt;
    return 0;
}

/* Brings the in-memory segment table up to date with DIR (see scan_seg
 * for `writer`).  Caller holds mu (and the flock if writer). */
static int refresh_once(jfile_t *j, int writer, err_t *err)
{
    uint64_t *firsts = NULL, snap_max = 0;
    size_t n = 0;
    if (list_dir(j, &firsts, &n, &snap_max, err) < 0)
        return -1;
    if (snap_max > j->snap_upto)
        j->snap_upto = snap_max;
    /* Merge: keep what we know of segments still present.  Compaction
     * only ever removes a prefix and never the last segment: any other
     * segment that vanished took records with it. */
    for (size_t o = 0, k = 0; o < j->nsegs; o++) {
        uint64_t f = j->segs[o].first;
        while (k < n && firsts[k] < f)
            k++;
        if ((k < n && firsts[k] == f) || (n && f < firsts[0] && o + 1 < j->nsegs))
            continue; /* present, or part of a compacted prefix */
        free(firsts);
        return err_set(err, EUCLEAN, "journal: %s: segment %020" PRIu64 " vanished", j->dir, f);
    }
    seg_t *ns = xcalloc(n ? n : 1, sizeof *ns);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        while (o < j->nsegs && j->segs[o].first < firsts[i]) {
            free(j->segs[o].marks);
            o++;
        }
        if (o < j->nsegs && j->segs[o].first == firsts[i]) {
            ns[i] = j->segs[o++];
        } else {
            ns[i] = (seg_t){.first = firsts[i], .last = firsts[i] - 1};
        }
    }
    for (; o < j->nsegs; o++)
        free(j->segs[o].marks);
    free(j->segs);
    free(firsts);
    j->segs = ns;
    j->nsegs = j->capsegs = n;
    for (size_t i = 0; i < n; i++) {
        if (j->segs[i].first == 0)
            return err_set(err, EUCLEAN, "journal: %s: a segment named 0", j->dir);
        if (i + 1 < n && j->segs[i].sealed)
            continue;
        j->segs[i].sealed = 0;
        int rc = scan_seg(j, &j->segs[i], i + 1 == n, writer, err);
        if (rc != 0)
            return rc;
        if (i + 1 < n) {
            if (j->segs[i + 1].first != j->segs[i].last + 1)
                return err_set(err, EUCLEAN, "journal: %s: gap between index %" PRIu64 " and segment %020" PRIu64,
                               j->dir, j->segs[i].last, j->segs[i + 1].first);
            j->segs[i].sealed = 1;
        }
    }
    /* Followers skip these: readdir may race a compaction (under the lock it cannot). */
    if (writer && n && j->segs[0].first > 1 && j->snap_upto < j->segs[0].first - 1)
        return err_set(err, EUCLEAN, "journal: %s: records before %" PRIu64 " are missing and no snapshot covers them",
                       j->dir, j->segs[0].first);
    if (writer && n && j->snap_upto > last_index(j))
        return err_set(err, EUCLEAN, "journal: %s: a snapshot covers records up to %" PRIu64 " but the log ends at %" PRIu64,
                       j->dir, j->snap_upto, last_index(j));
    return 0;
}

static int refresh(jfile_t *j, int writer, err_t *err)
{
    if (!writer && j->writing)
        return 0;
    for (int i = 0; i < 8; i++) {
        int rc = refresh_once(j, writer, err);
        if (rc <= 0)
            return rc;
    }
    return err_set(err, EAGAIN, "journal: %s: segments keep vanishing while being listed", j->dir);
}

/* ---- leadership -------------------------------------------------------- */

static uint64_t expiry_after(uint64_t now, uint64_t lease_ms)
{
    return lease_ms > UINT64_MAX - now ? UINT64_MAX : now + lease_ms;
}

static int jf_campaign(journal_t *jj, const char *cand, uint64_t lease_ms, uint64_t *term, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    if (!cand || !*cand || strlen(cand) >= sizeof ((journal_leader_t *)0)->id)
        return err_set(err, EINVAL, "journal: candidate id must be 1..127 bytes");
    if (j->broken)
        return broken_err(err);
    if (flock_take(j, LOCK_EX, err) < 0)
        return -1;
    lstate_t st;
    int rc = lstate_read(j, &st, err);
    /* The log's terms too: if the leader file lost its newest slot (a
     * corrupted sector), a term that already wrote records is not reused. */
    if (rc == 0) {
        pthread_mutex_lock(&j->mu);
        rc = refresh(j, 1, err);
        uint64_t logterm = j->max_term;
        pthread_mutex_unlock(&j->mu);
        if (rc == 0 && logterm > st.term) {
            log_warn("journal", "%s/leader says term %" PRIu64 " but the log has term %" PRIu64, j->dir, st.term,
                     logterm);
            st.term = logterm;
            st.id[0] = 0; /* that leader's lease is unknown: treat as lapsed */
        }
    }
    if (rc == 0) {
        uint64_t now = now_wall_ms();
        int live = st.id[0] && st.expiry > now;
        if (live && strcmp(st.id, cand)) {
            rc = 0;
        } else {
            if (!live)
                st.term++;
            snprintf(st.id, sizeof st.id, "%s", cand);
            st.expiry = expiry_after(now, lease_ms);
            rc = lstate_write(j, &st, err) < 0 ? -1 : 1;
        }
        if (rc >= 0 && term)
            *term = st.term;
    }
    flock_drop(j);
    return rc;
}

/* Shared by renew and resign: the read-modify-write of a current term. */
static int leader_update(jfile_t *j, uint64_t term, int resign, uint64_t lease_ms, err_t *err)
{
    if (j->broken)
        return broken_err(err);
    if (flock_take(j, LOCK_EX, err) < 0)
        return -1;
    lstate_t st;
    int rc = lstate_read(j, &st, err);
    if (rc == 0 && (st.term != term || !st.id[0]))
        rc = err_set(err, ESTALE, "journal: term %" PRIu64 " is not the leader's (current term %" PRIu64 "%s)",
                     term, st.term, st.id[0] ? "" : ", nobody leads");
    if (rc == 0) {
        if (resign) {
            st.id[0] = 0;
            st.expiry = 0;
        } else {
            st.expiry = expiry_after(now_wall_ms(), lease_ms);
        }
        rc = lstate_write(j, &st, err);
    }
    flock_drop(j);
    return rc;
}

static int jf_renew(journal_t *jj, uint64_t term, uint64_t lease_ms, err_t *err)
{
    return leader_update((jfile_t *)jj, term, 0, lease_ms, err);
}

static int jf_resign(journal_t *jj, uint64_t term, err_t *err)
{
    return leader_update((jfile_t *)jj, term, 1, 0, err);
}

static int jf_leader(journal_t *jj, journal_leader_t *out, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    /* Without the lock, so that a stuck writer cannot block it: a slot
     * being rewritten fails its CRC and the other slot is the previous
     * state.  Both bad can only be a race with two quick writes: retry. */
    lstate_t st;
    int rc = -1;
    for (int i = 0; i < 5 && rc < 0; i++) {
        rc = lstate_read(j, &st, err);
        if (rc < 0 && (!err || err->code != EUCLEAN))
            return -1;
        if (rc < 0)
            usleep(1000);
    }
    if (rc < 0)
        return -1;
    memset(out, 0, sizeof *out);
    memcpy(out->id, st.id, sizeof out->id);
    out->term = st.term;
    out->lease_expiry_ms = st.expiry;
    return 0;
}

/* ---- appends: group commit ----------------------------------------------- */

static int seg_write(jfile_t *j, const void *buf, size_t n, uint64_t off, err_t *err)
{
    j->nwrites++;
    if (j->fault.short_write_at && j->nwrites == j->fault.short_write_at) {
        (void)pwrite_full(j->wfd, buf, n / 2, off);
        return err_set(err, EIO, "journal: injected short write (%zu of %zu bytes)", n / 2, n);
    }
    if (pwrite_full(j->wfd, buf, n, off) < 0)
        return err_sys(err, "journal: write segment %020" PRIu64, j->wfd_first);
    return 0;
}

static int seg_sync(jfile_t *j, err_t *err)
{
    j->nsyncs++;
    if (j->fault.fail_sync_at && j->nsyncs == j->fault.fail_sync_at)
        return err_set(err, EIO, "journal: injected fdatasync failure");
    if (fdatasync(j->wfd) < 0)
        return err_sys(err, "journal: fdatasync segment %020" PRIu64, j->wfd_first);
    return 0;
}

/* Makes what is in segment s durable unless this handle synced it all
 * itself (another writer's sync may still be running). */
static int seg_make_durable(jfile_t *j, const seg_t *s, err_t *err)
{
    if (j->wfd >= 0 && j->wfd_first == s->first && j->synced_end >= s->end)
        return 0;
    char name[32];
    seg_name(s->first, name);
    int fd = openat(j->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0 || fdatasync(fd) < 0) {
        err_sys(err, "journal: sync %s/%s", j->dir, name);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* Makes sure wfd is open on the last segment, starting a new segment when
 * the last one is full (or there is none).  Caller holds flock and mu. */
static int ensure_tail(jfile_t *j, err_t *err)
{
    seg_t *t = j->nsegs ? &j->segs[j->nsegs - 1] : NULL;
    if (!t || (t->end >= j->seg_bytes && t->last >= t->first)) {
        uint64_t first = last_index(j) + 1;
        char name[32];
        /* Invariant 2: the full segment is durable before the next one
         * exists, even if its last batch is another writer's whose sync
         * may not have finished. */
        if (t && seg_make_durable(j, t, err) < 0)
            return -1;
        seg_name(first, name);
        int fd = openat(j->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0)
            return err_sys(err, "journal: create %s/%s", j->dir, name);
        if (fsync(j->dirfd) < 0) {
            err_sys(err, "journal: fsync %s", j->dir);
            close(fd);
            unlinkat(j->dirfd, name, 0);
            return -1;
        }
        if (t)
            t->sealed = 1; /* before the realloc below moves it */
        if (j->nsegs == j->capsegs) {
            j->capsegs = j->capsegs ? 2 * j->capsegs : 8;
            j->segs = xrealloc(j->segs, j->capsegs * sizeof *j->segs);
        }
        j->segs[j->nsegs++] = (seg_t){.first = first, .last = first - 1};
        if (j->wfd >= 0)
            close(j->wfd);
        j->wfd = fd;
        j->wfd_first = first;
        j->synced_end = j->sim_durable = 0;
        return 0;
    }
    if (j->wfd >= 0 && j->wfd_first == t->first)
        return 0;
    char name[32];
    seg_name(t->first, name);
    int fd = openat(j->dirfd, name, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return err_sys(err, "journal: open %s/%s", j->dir, name);
    if (j->wfd >= 0)
        close(j->wfd);
    j->wfd = fd;
    j->wfd_first = t->first;
    j->synced_end = 0; /* not known: run_batch syncs what is there first */
    j->sim_durable = t->end; /* tests: a previous handle synced or crashed it */
    return 0;
}

static void fail_reqs(req_t *r, const err_t *e)
{
    for (; r; r = r->next)
        if (!r->done) {
            r->rc = -1;
            r->err = *e;
        }
}

/* Leads one batch: everything queued when the lock is ours goes out in one
 * pwrite and one fdatasync.  Entered and left with mu held. */
static void run_batch(jfile_t *j)
{
    err_t e = {0};
    pthread_mutex_unlock(&j->mu);
    int locked = flock_take(j, LOCK_EX, &e) == 0;
    pthread_mutex_lock(&j->mu);
    req_t *batch = j->qhead, *r;
    j->qhead = NULL;
    j->qtail = &j->qhead;
    unsigned char *buf = NULL;
    lstate_t st;
    if (!locked)
        goto fail;
    if (j->broken) {
        broken_err(&e);
        goto fail;
    }
    if (lstate_read(j, &st, &e) < 0 || refresh(j, 1, &e) < 0)
        goto fail;
    size_t total = 0, nok = 0;
    for (r = batch; r; r = r->next) {
        if (r->term == 0 || r->term != st.term || !st.id[0]) {
            r->rc = -1;
            err_set(&r->err, ESTALE, "journal: append as term %" PRIu64 " refused: the current term is %" PRIu64 "%s",
                    r->term, st.term, st.id[0] ? "" : " and nobody leads");
            r->done = 1;
        } else {
            total += REC_HDR + r->len;
            nok++;
        }
    }
    if (!nok)
        goto out;
    if (ensure_tail(j, &e) < 0)
        goto fail;
    seg_t *t = &j->segs[j->nsegs - 1];
    if (j->synced_end < t->end) {
        /* Another writer's batch ends the segment and its sync may still
         * be running (it syncs after releasing the lock): make it durable
         * before ours follows it (invariant 2). */
        if (seg_sync(j, &e) < 0) {
            j->broken = 1;
            goto fail;
        }
        j->synced_end = j->sim_durable = t->end;
    }
    uint64_t base = t->end, first = t->last + 1, idx = first;
    buf = xmalloc(total);
    size_t off = 0;
    for (r = batch; r; r = r->next) {
        if (r->done)
            continue;
        unsigned char *h = buf + off;
        st32(h + 4, (uint32_t)r->len);
        st64(h + 8, idx);
        st64(h + 16, r->term);
        st64(h + 24, first);
        if (r->len)
            memcpy(h + REC_HDR, r->data, r->len);
        st32(h, journal_crc32c(0, h + 4, REC_HDR - 4 + r->len));
        r->index = idx++;
        off += REC_HDR + r->len;
    }
    j->writing = 1;
    pthread_mutex_unlock(&j->mu);
    int wrc = seg_write(j, buf, total, base, &e);
    /* The write is in the file, fenced: other processes may take the lock
     * now (a campaign need not wait for our disk).  flk stays held until
     * the sync is done, so this process's snapshot and campaign wait. */
    flock(j->lfd, LOCK_UN);
    if (j->fault.stop_after_write_at && j->nwrites == j->fault.stop_after_write_at)
        raise(SIGSTOP);
    if (wrc == 0)
        wrc = seg_sync(j, &e);
    pthread_mutex_lock(&j->mu);
    j->writing = 0;
    if (wrc < 0) {
        j->broken = 1;
        goto fail;
    }
    t = &j->segs[j->nsegs - 1];
    off = base;
    for (r = batch; r; r = r->next) {
        if (r->done)
            continue;
        seg_add(t, r->index, off, off + REC_HDR + r->len);
        off += REC_HDR + r->len;
        r->rc = 0;
        if (r->term > j->max_term)
            j->max_term = r->term;
    }
    j->synced_end = j->sim_durable = t->end;
    j->nappends += nok;
    j->nsyncs_total++;
    goto out;
fail:
    fail_reqs(batch, &e);
out:
    free(buf);
    for (r = batch; r; r = r->next)
        r->done = 1;
    if (locked)
        flock_drop(j);
}

static int jf_append(journal_t *jj, uint64_t term, const void *data, size_t len, uint64_t *index, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    if (len > JOURNAL_FILE_MAX_RECORD)
        return err_set(err, E2BIG, "journal: record of %zu bytes exceeds %u", len, JOURNAL_FILE_MAX_RECORD);
    req_t r = {.term = term, .data = data, .len = len};
    pthread_mutex_lock(&j->mu);
    if (j->broken) {
        pthread_mutex_unlock(&j->mu);
        return broken_err(err);
    }
    *j->qtail = &r;
    j->qtail = &r.next;
    while (!r.done) {
        if (!j->batching) {
            j->batching = 1;
            run_batch(j);
            j->batching = 0;
            pthread_cond_broadcast(&j->cv);
        } else {
            pthread_cond_wait(&j->cv, &j->mu);
        }
    }
    pthread_mutex_unlock(&j->mu);
    if (r.rc < 0) {
        if (err)
            *err = r.err;
        return -1;
    }
    if (index)
        *index = r.index;
    return 0;
}

/* Many records at once: queued together, so they share a batch (one
 * fdatasync) unless the batch limit splits them. */
static size_t jf_append_many(journal_t *jj, uint64_t term, size_t n, const void *const *data,
                             const size_t *len, uint64_t *index, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (len[i] > JOURNAL_FILE_MAX_RECORD) {
            err_set(err, E2BIG, "journal: record of %zu bytes exceeds %u", len[i],
                    JOURNAL_FILE_MAX_RECORD);
            return 0;
        }
    req_t *rs = xcalloc(n, sizeof *rs);
    pthread_mutex_lock(&j->mu);
    if (j->broken) {
        pthread_mutex_unlock(&j->mu);
        free(rs);
        broken_err(err);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        rs[i] = (req_t){.term = term, .data = data[i], .len = len[i]};
        *j->qtail = &rs[i];
        j->qtail = &rs[i].next;
    }
    while (!rs[n - 1].done) {
        if (!j->batching) {
            j->batching = 1;
            run_batch(j);
            j->batching = 0;
            pthread_cond_broadcast(&j->cv);
        } else {
            pthread_cond_wait(&j->cv, &j->mu);
        }
    }
    /* every one is done once the last is (batches complete in queue order) */
    for (size_t i = 0; i < n; i++)
        while (!rs[i].done)
            pthread_cond_wait(&j->cv, &j->mu);
    pthread_mutex_unlock(&j->mu);
    size_t ok = 0;
    while (ok < n && rs[ok].rc == 0) {
        index[ok] = rs[ok].index;
        ok++;
    }
    if (ok < n && err)
        *err = rs[ok].err;
    free(rs);
    return ok;
}

/* ---- reading ------------------------------------------------------------- */

typedef struct plan {
    uint64_t first, last, start_off, start_idx, end;
} plan_t;

static int jf_read(journal_t *jj, uint64_t from, journal_record_fn fn, void *arg, uint64_t *first, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    if (from == 0)
        from = 1;
    int delivered = 0;
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&j->mu);
        if (j->broken) {
            pthread_mutex_unlock(&j->mu);
            return broken_err(err);
        }
        if (refresh(j, 0, err) < 0) {
            pthread_mutex_unlock(&j->mu);
            return -1;
        }
        uint64_t avail = j->nsegs ? j->segs[0].first : last_index(j) + 1;
        if (from < avail) {
            if (delivered) {
                /* Compacted while we read: stop before the hole; the
                 * caller's next read(from) reports the new start. */
                pthread_mutex_unlock(&j->mu);
                return 0;
            }
            from = avail;
        }
        if (first && !delivered)
            *first = from;
        /* The plan: the segments to read and where, copied so that the
         * callback runs without mu (it may call into the journal). */
        size_t np = 0;
        plan_t *pl = xcalloc(j->nsegs ? j->nsegs : 1, sizeof *pl);
        for (size_t i = 0; i < j->nsegs; i++) {
            seg_t *s = &j->segs[i];
            if (s->last < from || s->last < s->first)
                continue;
            size_t lo = 0, hi = s->nmarks; /* last mark with index <= from */
            while (hi - lo > 1) {
                size_t mid = (lo + hi) / 2;
                if (s->marks[mid].index <= from)
                    lo = mid;
                else
                    hi = mid;
            }
            pl[np++] = (plan_t){s->first, s->last, s->marks[lo].off, s->marks[lo].index, s->end};
        }
        pthread_mutex_unlock(&j->mu);

        int rc = 0, stop = 0, gone = 0;
        for (size_t k = 0; k < np && !stop && rc == 0; k++) {
            char name[32];
            seg_name(pl[k].first, name);
            int fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                if (errno == ENOENT && attempt < 3) {
                    gone = 1; /* compacted meanwhile: plan again */
                    break;
                }
                rc = err_sys(err, "journal: open %s/%s", j->dir, name);
                break;
            }
            rdr_t r = {.fd = fd, .size = pl[k].end, .cap = window_for(pl[k].start_off, pl[k].end)};
            r.buf = xmalloc(r.cap);
            uint64_t off = pl[k].start_off, expect = pl[k].start_idx;
            while (off < pl[k].end) {
                journal_record_t rec;
                uint64_t batch, next;
                int v = rec_at(&r, off, &rec, &batch, &next, err);
                if (v <= 0 || rec.index != expect) {
                    if (v >= 0)
                        err_set(err, EIO, "journal: %s/%s offset %" PRIu64 ": record %" PRIu64
                                " no longer valid", j->dir, name, off, expect);
                    rc = -1;
                    break;
                }
                if (rec.index >= from) {
                    delivered = 1;
                    if (fn(&rec, arg)) {
                        stop = 1;
                        break;
                    }
                    from = rec.index + 1;
                }
                expect++;
                off = next;
            }
            free(r.buf);
            close(fd);
        }
        free(pl);
        if (!gone)
            return rc;
    }
}

static int jf_wait(journal_t *jj, uint64_t from, int timeout_ms, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    /* timeout_ms < 0: no deadline (as with poll(2)). */
    uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : now_mono_ms() + (uint64_t)timeout_ms;
    /* The watch is made on the first wait (closing an inotify fd costs
     * milliseconds, so handles that never wait do without) and before the
     * first scan below, so no growth after that scan goes unnoticed. */
    pthread_mutex_lock(&j->mu);
    if (j->ifd == -1) {
        j->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (j->ifd >= 0 && inotify_add_watch(j->ifd, j->dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_DELETE) < 0) {
            int saved = errno;
            close(j->ifd);
            j->ifd = -1;
            errno = saved;
        }
        if (j->ifd < 0) {
            log_warn("journal", "inotify on %s failed (%s); wait() polls", j->dir, strerror(errno));
            j->ifd = -2;
        }
    }
    pthread_mutex_unlock(&j->mu);
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int rc = j->broken ? broken_err(err) : refresh(j, 0, err);
        uint64_t last = last_index(j);
        pthread_mutex_unlock(&j->mu);
        if (rc < 0)
            return -1;
        if (last >= from)
            return 1;
        uint64_t now = now_mono_ms();
        if (now >= deadline)
            return 0;
        /* inotify wakes us at once; the cap covers events another thread
         * of this process drained, and the polling fallback. */
        int slice = (int)(deadline - now < 50 ? deadline - now : 50);
        if (j->ifd >= 0) {
            struct pollfd p = {.fd = j->ifd, .events = POLLIN};
            if (poll(&p, 1, slice) > 0) {
                char ev[4096];
                while (read(j->ifd, ev, sizeof ev) > 0)
                    ;
            }
        } else {
            poll(NULL, 0, slice < 5 ? slice : 5);
        }
    }
}

/* ---- snapshots ------------------------------------------------------------ */

static int write_snapshot(jfile_t *j, uint64_t term, uint64_t upto, const void *data, size_t len, err_t *err)
{
    char name[48], tmp[64];
    snap_name(upto, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", name);
    unsigned char h[SNAP_HDR];
    st32(h + 4, SNAP_MAGIC);
    st64(h + 8, upto);
    st64(h + 16, term);
    st64(h + 24, len);
    st32(h, journal_crc32c(journal_crc32c(0, h + 4, SNAP_HDR - 4), data, len));
    int fd = openat(j->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return err_sys(err, "journal: create %s/%s", j->dir, tmp);
    if (pwrite_full(fd, h, SNAP_HDR, 0) < 0 || pwrite_full(fd, data, len, SNAP_HDR) < 0 || fsync(fd) < 0) {
        err_sys(err, "journal: write %s/%s", j->dir, tmp);
        close(fd);
        unlinkat(j->dirfd, tmp, 0);
        return -1;
    }
    close(fd);
    if (renameat(j->dirfd, tmp, j->dirfd, name) < 0 || fsync(j->dirfd) < 0) {
        err_sys(err, "journal: install %s/%s", j->dir, name);
        unlinkat(j->dirfd, tmp, 0);
        return -1;
    }
    return 0;
}

/* Deletes older snapshots and the segments wholly covered by upto (never
 * the last one).  Caller holds flock and mu, the snapshot is durable. */
static int compact(jfile_t *j, uint64_t upto, err_t *err)
{
    DIR *d = opendir(j->dir);
    if (!d)
        return err_sys(err, "journal: open directory %s", j->dir);
    struct dirent *de;
    uint64_t x;
    while ((de = readdir(d)))
        if (parse_name(de->d_name, "snapshot-", ".snap", &x) && x < upto)
            unlinkat(j->dirfd, de->d_name, 0);
    closedir(d);
    size_t drop = 0;
    while (drop + 1 < j->nsegs && j->segs[drop].last <= upto) {
        char name[32];
        seg_name(j->segs[drop].first, name);
        if (unlinkat(j->dirfd, name, 0) < 0 && errno != ENOENT)
            break;
        free(j->segs[drop].marks);
        drop++;
    }
    memmove(j->segs, j->segs + drop, (j->nsegs - drop) * sizeof *j->segs);
    j->nsegs -= drop;
    if (fsync(j->dirfd) < 0)
        return err_sys(err, "journal: fsync %s", j->dir);
    return 0;
}

static int jf_snapshot(journal_t *jj, uint64_t term, uint64_t upto, const void *data, size_t len, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    if (len > SNAP_MAX)
        return err_set(err, E2BIG, "journal: snapshot of %zu bytes is too large", len);
    if (flock_take(j, LOCK_EX, err) < 0)
        return -1;
    pthread_mutex_lock(&j->mu);
    lstate_t st;
    int rc = j->broken ? broken_err(err) : 0;
    if (rc == 0)
        rc = lstate_read(j, &st, err);
    if (rc == 0 && (term == 0 || st.term != term || !st.id[0]))
        rc = err_set(err, ESTALE, "journal: snapshot as term %" PRIu64 " refused: the current term is %" PRIu64,
                     term, st.term);
    if (rc == 0)
        rc = refresh(j, 1, err);
    if (rc == 0 && (upto == 0 || upto > last_index(j) || upto < j->snap_upto))
        rc = err_set(err, EINVAL, "journal: snapshot upto %" PRIu64 " outside [%" PRIu64 ", %" PRIu64 "]", upto,
                     j->snap_upto > 1 ? j->snap_upto : 1, last_index(j));
    /* Records 1..upto must be durable before a snapshot says they were
     * applied: otherwise a power loss could leave the log behind it and
     * reuse its indexes. */
    if (rc == 0 && j->nsegs)
        rc = seg_make_durable(j, &j->segs[j->nsegs - 1], err);
    if (rc == 0)
        rc = write_snapshot(j, term, upto, data, len, err);
    if (rc == 0) {
        j->snap_upto = upto;
        rc = compact(j, upto, err);
    }
    pthread_mutex_unlock(&j->mu);
    flock_drop(j);
    return rc;
}

static int load_once(jfile_t *j, uint64_t *upto, void **data, size_t *len, err_t *err)
{
    DIR *d = opendir(j->dir);
    if (!d)
        return err_sys(err, "journal: open directory %s", j->dir);
    size_t cap = 4, n = 0;
    uint64_t *v = xmalloc(cap * sizeof *v), x;
    struct dirent *de;
    while ((de = readdir(d)))
        if (parse_name(de->d_name, "snapshot-", ".snap", &x)) {
            if (n == cap)
                v = xrealloc(v, (cap *= 2) * sizeof *v);
            v[n++] = x;
        }
    closedir(d);
    qsort(v, n, sizeof *v, cmp_u64);
    int rc = 0;
    while (n-- > 0 && rc == 0) {
        char name[48];
        snap_name(v[n], name);
        char *path = xasprintf("%s/%s", j->dir, name);
        size_t flen;
        err_t e = {0};
        unsigned char *buf = (unsigned char *)read_file(path, SNAP_MAX + SNAP_HDR, &flen, &e);
        free(path);
        if (!buf) {
            if (e.code != ENOENT)
                log_warn("journal", "%s/%s: %s", j->dir, name, e.msg);
            continue;
        }
        if (flen < SNAP_HDR || ld32(buf + 4) != SNAP_MAGIC || ld64(buf + 8) != v[n] ||
            ld64(buf + 24) != flen - SNAP_HDR || ld32(buf) != journal_crc32c(0, buf + 4, flen - 4)) {
            log_warn("journal", "%s/%s: invalid snapshot ignored", j->dir, name);
            free(buf);
            continue;
        }
        *upto = v[n];
        *len = flen - SNAP_HDR;
        memmove(buf, buf + SNAP_HDR, *len);
        *data = buf;
        rc = 1;
    }
    free(v);
    /* Records before the first segment exist only in a snapshot: if no
     * valid snapshot covers them, say so rather than report "none". */
    pthread_mutex_lock(&j->mu);
    int frc = refresh(j, 0, err);
    uint64_t avail = j->nsegs ? j->segs[0].first : 1;
    pthread_mutex_unlock(&j->mu);
    if (frc < 0) {
        if (rc == 1) {
            free(*data);
            *data = NULL;
        }
        return -1;
    }
    if (avail > 1 && (rc == 0 || *upto < avail - 1)) {
        if (rc == 1) {
            free(*data);
            *data = NULL;
        }
        return err_set(err, EUCLEAN, "journal: %s: records 1..%" PRIu64 " were compacted but no valid snapshot covers them",
                       j->dir, avail - 1);
    }
    return rc;
}

static int jf_load_snapshot(journal_t *jj, uint64_t *upto, void **data, size_t *len, err_t *err)
{
    jfile_t *j = (jfile_t *)jj;
    int rc = -1;
    /* A compaction between listing snapshots and listing segments looks
     * like a missing snapshot: look again before believing it. */
    for (int i = 0; i < 3 && rc < 0; i++) {
        rc = load_once(j, upto, data, len, err);
        if (rc < 0 && (!err || err->code != EUCLEAN))
            break;
    }
    return rc;
}

/* ---- open / close / test hooks ---------------------------------------------- */

static void jf_close(journal_t *jj)
{
    jfile_t *j = (jfile_t *)jj;
    if (!j)
        return;
    for (size_t i = 0; i < j->nsegs; i++)
        free(j->segs[i].marks);
    free(j->segs);
    int fds[] = {j->dirfd, j->lfd, j->wfd, j->ifd};
    for (size_t i = 0; i < ARRAY_LEN(fds); i++)
        if (fds[i] >= 0)
            close(fds[i]);
    pthread_mutex_destroy(&j->flk);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j->dir);
    free(j);
}

static const journal_ops_t jf_ops = {
    .campaign = jf_campaign,
    .renew = jf_renew,
    .resign = jf_resign,
    .leader = jf_leader,
    .append = jf_append,
    .append_many = jf_append_many,
    .read = jf_read,
    .wait = jf_wait,
    .snapshot = jf_snapshot,
    .load_snapshot = jf_load_snapshot,
    .close = jf_close,
};

journal_t *journal_file_open_opts(const char *dir, const journal_file_opts_t *opts, err_t *err)
{
    if (!__builtin_cpu_supports("sse4.2")) {
        err_set(err, ENOTSUP, "journal: this CPU lacks SSE4.2 (needed for CRC32C)");
        return NULL;
    }
    if (!dir || !*dir) {
        err_set(err, EINVAL, "journal: empty directory");
        return NULL;
    }
    if (mkdir_p(dir, 0755, err) < 0)
        return NULL;
    jfile_t *j = xcalloc(1, sizeof *j);
    j->base.ops = &jf_ops;
    j->dir = xstrdup(dir);
    j->dirfd = j->lfd = j->wfd = j->ifd = -1;
    j->seg_bytes = opts && opts->segment_bytes ? opts->segment_bytes : JOURNAL_FILE_SEGMENT_BYTES;
    j->qtail = &j->qhead;
    pthread_mutex_init(&j->flk, NULL);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        err_sys(err, "journal: open %s", dir);
        goto fail;
    }
    j->lfd = openat(j->dirfd, "leader", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (j->lfd < 0 || fsync(j->dirfd) < 0) {
        err_sys(err, "journal: open %s/leader", dir);
        goto fail;
    }
    if (flock_take(j, LOCK_EX, err) < 0)
        goto fail;
    /* Snapshot temp files of a crashed snapshot() are garbage. */
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l > 9 && !strcmp(de->d_name + l - 9, ".snap.tmp"))
            unlinkat(j->dirfd, de->d_name, 0);
    }
    if (d)
        closedir(d);
    lstate_t st;
    pthread_mutex_lock(&j->mu);
    int rc = lstate_read(j, &st, err);
    if (rc == 0)
        rc = refresh(j, 1, err);
    pthread_mutex_unlock(&j->mu);
    flock_drop(j);
    if (rc < 0)
        goto fail;
    return &j->base;
fail:
    err_wrap(err, "journal_file_open %s", dir);
    jf_close(&j->base);
    return NULL;
}

journal_t *journal_file_open(const char *dir, err_t *err)
{
    return journal_file_open_opts(dir, NULL, err);
}

void journal_file_stats(journal_t *jj, uint64_t *appends, uint64_t *syncs)
{
    jfile_t *j = (jfile_t *)jj;
    pthread_mutex_lock(&j->mu);
    *appends = j->nappends;
    *syncs = j->nsyncs_total;
    pthread_mutex_unlock(&j->mu);
}

void journal_file_set_fault(journal_t *jj, const journal_file_fault_t *fault)
{
    jfile_t *j = (jfile_t *)jj;
    pthread_mutex_lock(&j->mu);
    j->fault = fault ? *fault : (journal_file_fault_t){0};
    j->nwrites = j->nsyncs = 0;
    pthread_mutex_unlock(&j->mu);
}

void journal_file_crash(journal_t *jj, enum journal_crash_mode mode, unsigned seed)
{
    jfile_t *j = (jfile_t *)jj;
    struct stat sb;
    if (j->wfd >= 0 && fstat(j->wfd, &sb) == 0 && (uint64_t)sb.st_size > j->sim_durable) {
        uint64_t size = (uint64_t)sb.st_size, keep = j->sim_durable;
        if (mode == JOURNAL_CRASH_TORN) {
            unsigned s = seed;
            uint64_t cut = keep + (uint64_t)rand_r(&s) % (size - keep + 1);
            cut &= ~(uint64_t)511;
            keep = cut > keep ? cut : keep;
        }
        if (mode == JOURNAL_CRASH_SCRAMBLE) {
            unsigned s = seed;
            unsigned char sec[512];
            for (uint64_t off = keep & ~(uint64_t)511; off < size; off += 512) {
                size_t n = size - off < 512 ? (size_t)(size - off) : 512;
                unsigned what = (unsigned)rand_r(&s) % 3;
                uint64_t from = off < keep ? keep : off; /* synced bytes stay */
                if (what == 0)
                    continue;
                for (size_t i = 0; i < n; i++)
                    sec[i] = what == 1 ? 0 : (unsigned char)rand_r(&s);
                (void)pwrite_full(j->wfd, sec + (from - off), n - (size_t)(from - off), from);
            }
            uint64_t cut = keep + (uint64_t)rand_r(&s) % (size - keep + 1);
            cut = (cut + 511) & ~(uint64_t)511;
            if (cut < size)
                (void)ftruncate(j->wfd, (off_t)(cut > keep ? cut : keep));
            jf_close(jj);
            return;
        }
        if (ftruncate(j->wfd, (off_t)keep) == 0 && mode == JOURNAL_CRASH_TORN && keep < size) {
            unsigned char junk[512];
            unsigned s = seed ^ 0x9e3779b9u;
            size_t n = size - keep < sizeof junk ? (size_t)(size - keep) : sizeof junk;
            for (size_t i = 0; i < n; i++)
                junk[i] = (unsigned char)rand_r(&s);
            (void)pwrite_full(j->wfd, junk, n, keep);
        }
    }
    jf_close(jj);
}
