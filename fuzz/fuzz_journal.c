/* fuzz_journal.c - libFuzzer target for the file journal's recovery
 * (journal_file.c: segment scan, torn-tail repair, leader file, snapshots).
 *
 * Input layout: byte 0 picks what the fuzzed bytes become in a fresh
 * journal directory:
 *   0: the whole first segment;
 *   1: bytes appended after three valid records (a tail);
 *   2: the leader file;
 *   3: a snapshot file (snapshot-...03.snap) next to a compacted segment;
 *   4: a program that builds the first segment from records with valid
 *      CRCs: chunks [op][len][batch][len bytes], op 0 = the next index,
 *      1 = a wrong index, 2 = raw bytes, 3 = a record with one byte flipped
 *      (so that mid-log corruption, gaps and torn batches are reached).
 * Oracles (abort on violation):
 *   - open either fails with an error message or succeeds;
 *   - when it succeeds, read() returns consecutive indexes, and after one
 *     more append a reopen must succeed and return the same records plus the
 *     new one (recovery is idempotent and never eats acknowledged data);
 *   - case 1: the three valid records always survive (only the tail may go).
 *
 * Build: `make fuzz` (clang -fsanitize=fuzzer,address,undefined). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "journal/journal.h"
#include "journal/journal_file.h"

static char DIR_[64];

typedef struct acc {
    uint64_t n, first, last, sum;
    int disorder;
} acc_t;

static int acc_fn(const journal_record_t *r, void *arg)
{
    acc_t *a = arg;
    if (a->n && r->index != a->last + 1)
        a->disorder = 1;
    if (!a->n)
        a->first = r->index;
    a->last = r->index;
    a->n++;
    a->sum += journal_crc32c(0, r->data, r->len) + r->index;
    return 0;
}

static void put(const char *name, const void *data, size_t len)
{
    char *p = xasprintf("%s/%s", DIR_, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    free(p);
    if (fd < 0 || (len && write(fd, data, len) != (ssize_t)len))
        abort();
    close(fd);
}

/* Appends one encoded record (see journal_file.c's format) to buf. */
static size_t enc(unsigned char *buf, uint64_t index, uint64_t batch, const uint8_t *pl, size_t len)
{
    uint32_t l = (uint32_t)len;
    uint64_t term = 1;
    memcpy(buf + 4, &l, 4);
    memcpy(buf + 8, &index, 8);
    memcpy(buf + 16, &term, 8);
    memcpy(buf + 24, &batch, 8);
    memcpy(buf + 32, pl, len);
    uint32_t crc = journal_crc32c(0, buf + 4, 28 + len);
    memcpy(buf, &crc, 4);
    return 32 + len;
}

static void program(const uint8_t *d, size_t n)
{
    unsigned char *seg = xmalloc(n * 40 + 64);
    size_t off = 0;
    uint64_t next = 1;
    while (n >= 3) {
        unsigned op = d[0] % 4, len = d[1], b = d[2];
        d += 3;
        n -= 3;
        if (len > n)
            len = (unsigned)n;
        uint64_t batch = b % 2 ? next : (next > b ? next - b : 1);
        if (op == 0 || op == 3) {
            size_t w = enc(seg + off, next, batch, d, len);
            if (op == 3)
                seg[off + (b % w)] ^= 0x5a;
            off += w;
            next++;
        } else if (op == 1) {
            off += enc(seg + off, next + 1 + b % 3, batch, d, len);
        } else {
            memcpy(seg + off, d, len);
            off += len;
        }
        d += len;
        n -= len;
    }
    put("00000000000000000001.seg", seg, off);
    free(seg);
}

static void valid_records(void)
{
    journal_t *j = journal_file_open(DIR_, NULL);
    uint64_t term, x;
    if (!j || j->ops->campaign(j, "seed", 60000, &term, NULL) != 1)
        abort();
    for (int i = 0; i < 3; i++)
        if (j->ops->append(j, term, "record", 6, &x, NULL) < 0)
            abort();
    journal_close(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (!DIR_[0]) {
        log_set_level(LOG_ERROR);
        /* tmpfs when there is one: fsync is free there. */
        snprintf(DIR_, sizeof DIR_, "%s/flicker-fuzz-journal-%d", access("/dev/shm", W_OK) ? "/tmp" : "/dev/shm",
                 (int)getpid());
    }
    rm_rf(DIR_, NULL);
    if (mkdir_p(DIR_, 0755, NULL) < 0)
        abort();
    unsigned mode = data[0] % 5;
    data++;
    size--;
    switch (mode) {
    case 0:
        put("00000000000000000001.seg", data, size);
        break;
    case 1: {
        valid_records();
        char *p = xasprintf("%s/00000000000000000001.seg", DIR_);
        int fd = open(p, O_WRONLY | O_APPEND);
        free(p);
        if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size))
            abort();
        close(fd);
        break;
    }
    case 2:
        put("leader", data, size);
        break;
    case 3:
        put("00000000000000000004.seg", "", 0);
        put("snapshot-00000000000000000003.snap", data, size);
        break;
    case 4:
        program(data, size);
        break;
    }

    err_t err = {0};
    journal_t *j = journal_file_open(DIR_, &err);
    if (!j) {
        if (!err.msg[0])
            abort();
        return 0;
    }
    acc_t a = {0};
    uint64_t first = 0;
    if (j->ops->read(j, 1, acc_fn, &a, &first, &err) < 0 || a.disorder || (a.n && a.first != first))
        abort();
    if (mode == 1 && (a.n < 3 || a.first != 1))
        abort();
    uint64_t upto;
    void *snap = NULL;
    size_t slen;
    if (j->ops->load_snapshot(j, &upto, &snap, &slen, &err) == 1)
        free(snap);
    journal_leader_t l;
    uint64_t term = 0, x = 0;
    int appended = 0;
    if (j->ops->leader(j, &l, &err) == 0 && j->ops->campaign(j, "fuzz", 60000, &term, &err) == 1 &&
        j->ops->append(j, term, "more", 4, &x, &err) == 0)
        appended = 1;
    journal_close(j);

    j = journal_file_open(DIR_, &err);
    if (!j)
        abort(); /* it opened once: recovery must be idempotent */
    acc_t b = {0};
    if (j->ops->read(j, 1, acc_fn, &b, NULL, &err) < 0 || b.disorder)
        abort();
    if (b.n != a.n + (uint64_t)appended || (appended && b.last != x))
        abort();
    journal_close(j);
    return 0;
}
