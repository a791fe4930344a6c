/* asg_service.h - the assignment service replica (`flicker serve
 * assignment`): the environment table (asg_table) replicated through the
 * journal, an RPC server for asg.* (docs/protocol.md), and, while leader,
 * the logic that hands environments out (warm), has workers create them
 * (cold), keeps them warm and retires them.  Design: docs/assignment.md.
 *
 * Threads: everything here runs on the caller's event_base thread except
 * one journal thread owned by the service, which makes every (blocking)
 * journal call: campaign/renew/resign, append, read/wait, snapshot.  The two
 * meet in a mutex-protected pair of queues and an eventfd the loop watches.
 *
 * Invariants:
 *  - only a replica whose journal campaign succeeded, whose lease is live
 *    by its own (conservative) clock and which has read the journal to its
 *    end and reconciled, answers asg.acquire/release/retire; all others
 *    answer NotLeader {leader};
 *  - every table change is applied locally and journaled (fenced by the
 *    term) before the reply that depends on it is sent: an env is marked
 *    busy in the journal before it is handed out, so no env is ever handed
 *    to two requests, on this leader or on the next;
 *  - a failed append or renew deposes the replica at once: it stops
 *    serving, drops its table and rebuilds it from the journal as a
 *    follower;
 *  - a leader whose lease ran out by its own clock is a follower from that
 *    moment (asg.status says so), even while its journal call hangs; it
 *    leads again only if the journal then still grants that same lease
 *    (nobody else can have led), otherwise through a new election;
 *  - a term is never used by two leaders: each process and each leadership
 *    attempt after a deposition campaigns under its own candidate id
 *    ("ADDR#NONCE"), and only for an absent or expired lease, so a replica
 *    restarted at its old address cannot resume the dead one's term;
 *  - asg.status reports, on a follower, the newest term the journal shows. */
#ifndef FLICKER_ASG_SERVICE_H
#define FLICKER_ASG_SERVICE_H
#include <event2/event.h>
#include "common/err.h"
#include "journal/journal.h"

typedef struct asg_service asg_service_t;

typedef struct asg_service_opts {
    const char *listen;         /* RPC address ("tcp:127.0.0.1:0" works) */
    const char *advertise;      /* address reported as leader; NULL: listen (real port) */
    const char *id;             /* replica name for logs (NULL: the address) */
    const char *placement;      /* "ADDR[,ADDR...]" */
    int lease_ms;               /* leader lease (default 1000); renewed every lease/3 */
    int keep_alive_ms;          /* idle envs destroyed after this (default 300000) */
    int account_concurrency;    /* default 1000 */
    int snapshot_every;         /* snapshot after this many records (default 1000) */
    const char *journal_spec;   /* what j was opened from: a handle that failed a
                                   write (disk full) is reopened from it; NULL: never */
} asg_service_opts_t;

/* Starts a replica on base: listens, starts the journal thread (which
 * takes ownership of j and closes it at free).  NULL/err if the address
 * cannot be listened on (j is then closed too). */
asg_service_t *asg_service_new(struct event_base *base, journal_t *j,
                               const asg_service_opts_t *opts, err_t *err);
/* The address followers report for this replica (valid until free). */
const char *asg_service_address(const asg_service_t *s);
/* Stops serving, resigns leadership if held, joins the journal thread,
 * answers everything outstanding and frees.  Blocks for at most one
 * journal call.  Call from the loop thread, not from an rpc callback. */
void asg_service_free(asg_service_t *s);
#endif
