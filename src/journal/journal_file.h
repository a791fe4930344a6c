/* journal_file.h - knobs and test hooks of the file backend (journal_file.c)
 * that are not part of the backend-neutral interface in journal.h.
 *
 * Production code calls journal_file_open() (or journal_open("file:DIR"))
 * and never needs this header.  Tests use it to make segments small and to
 * inject faults in the style of SQLite's test6.c: a write that is cut short,
 * an fdatasync that fails, and a simulated power loss that discards or tears
 * everything written since the last successful sync. */
#ifndef FLICKER_JOURNAL_FILE_H
#define FLICKER_JOURNAL_FILE_H
#include <stdint.h>
#include "journal/journal.h"

/* Default size at which the writer starts a new segment. */
#define JOURNAL_FILE_SEGMENT_BYTES (64ull << 20)
/* Largest payload of one record; larger appends fail with E2BIG. */
#define JOURNAL_FILE_MAX_RECORD (16u << 20)

typedef struct journal_file_opts {
    uint64_t segment_bytes; /* 0: JOURNAL_FILE_SEGMENT_BYTES */
} journal_file_opts_t;

/* journal_file_open() with options (opts may be NULL). */
journal_t *journal_file_open_opts(const char *dir, const journal_file_opts_t *opts, err_t *err);

/* Records appended and fdatasyncs issued by this handle so far: their ratio
 * is the mean group-commit batch size. */
void journal_file_stats(journal_t *j, uint64_t *appends, uint64_t *syncs);

/* Fault injection (tests only).  Counters count calls on this handle's
 * segment files from the moment the fault is set; 0 disables a fault.
 *   short_write_at: the Nth segment write stores only its first half,
 *                   then fails with EIO (a crash in the middle of write(2));
 *   fail_sync_at:   the Nth segment fdatasync fails with EIO;
 *   stop_after_write_at: after the Nth segment write (and the release of
 *                   the lock) the process stops itself with SIGSTOP,
 *                   before its fdatasync: a writer stuck mid-append.
 * After an injected failure the handle is poisoned: every later call fails
 * with EIO (as after a real fsync error, nothing is retried). */
typedef struct journal_file_fault {
    unsigned short_write_at;
    unsigned fail_sync_at;
    unsigned stop_after_write_at;
} journal_file_fault_t;
void journal_file_set_fault(journal_t *j, const journal_file_fault_t *fault);

/* Simulated power loss, then close (frees j).  What was written to segment
 * files since their last successful fdatasync is handled per `mode`:
 *   JOURNAL_CRASH_DROP: discarded (the file is cut back to its synced size);
 *   JOURNAL_CRASH_TORN: a random prefix, cut at a 512-byte sector boundary,
 *                       survives, and the sector after it is filled with
 *                       garbage (seeded by seed) - a torn write;
 *   JOURNAL_CRASH_SCRAMBLE: sectors reached the disk in any order: each
 *                       512-byte sector of the unsynced part is kept,
 *                       zeroed or filled with garbage, and the file may end
 *                       at any sector boundary after the synced size.
 * Nothing is synced on the way out. */
enum journal_crash_mode { JOURNAL_CRASH_DROP, JOURNAL_CRASH_TORN, JOURNAL_CRASH_SCRAMBLE };
void journal_file_crash(journal_t *j, enum journal_crash_mode mode, unsigned seed);

/* CRC32C (Castagnoli) of n bytes, continuing from crc (0 to start).
 * Computed with the SSE4.2 crc32 instruction. */
uint32_t journal_crc32c(uint32_t crc, const void *data, size_t n);
#endif
