/* slots.h - a fixed set of numbered slots, taken and given back by threads
 * of one process (the workers' per-environment host uid ranges).
 *
 * How: a bitmap under a mutex.  A search starts at (pid * spread) mod n,
 * so several processes on one host (workers, each with its own set) tend
 * to take different numbers; collisions between processes are the caller's
 * to detect (the uid ranges are checked against the host's processes where
 * it matters).  Invariant: a number is held by at most one taker of this
 * process until given back. */
#ifndef FLICKER_SLOTS_H
#define FLICKER_SLOTS_H
#include <pthread.h>

typedef struct slot_set {
    pthread_mutex_t mu;
    unsigned char *bits;   /* n / 8 bytes, zeroed */
    int n;                 /* a multiple of 8 */
    unsigned spread;
} slot_set_t;

#define SLOT_SET_INIT(bits, n, spread) {PTHREAD_MUTEX_INITIALIZER, (bits), (n), (spread)}

/* A free number in [0, n), now taken; -1 when all are taken. */
int slot_take(slot_set_t *s);
/* Gives number i back (i < 0: nothing). */
void slot_give(slot_set_t *s, int i);
#endif
