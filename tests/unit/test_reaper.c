/* test_reaper.c - the worker's teardown thread: a submit returns while its
 * destroy is still running (a slow teardown cannot stall the event loop),
 * every handle is destroyed exactly once and in order, a failing destroy
 * is only logged, reaper_drain waits for all of them and reaper_wait_for
 * for one id's. */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

#include "check.h"
#include "common/util.h"
#include "worker/reaper.h"

typedef struct {
    sem_t *gate;         /* when set, the destroy waits on it */
    atomic_int calls;
    int order;           /* its position among all destroys */
    int fail;
} fake_env_t;

static atomic_int g_seq;

static int fake_destroy(void *h, err_t *err)
{
    fake_env_t *e = h;
    if (e->gate)
        sem_wait(e->gate);
    e->order = atomic_fetch_add(&g_seq, 1);
    atomic_fetch_add(&e->calls, 1);
    if (e->fail)
        return err_set(err, EBUSY, "processes survive SIGKILL (test)");
    return 0;
}

static void test_submit_does_not_wait_for_the_destroy(void)
{
    sem_t gate;
    sem_init(&gate, 0, 0);
    fake_env_t slow = {.gate = &gate};
    uint64_t t0 = now_mono_ms();
    reaper_submit(fake_destroy, &slow, "slow");
    /* The destroy is blocked on the gate, yet submit returned. */
    CHECK(atomic_load(&slow.calls) == 0);
    CHECK(reaper_pending() == 1);
    sem_post(&gate);
    reaper_drain();
    CHECK(atomic_load(&slow.calls) == 1);
    CHECK(reaper_pending() == 0);
    CHECK(now_mono_ms() - t0 < 10000);
    sem_destroy(&gate);
}

static void test_all_destroyed_once_in_order(void)
{
    enum { N = 200 };
    static fake_env_t envs[N];
    sem_t gate;
    sem_init(&gate, 0, 0);
    envs[0].gate = &gate; /* hold the thread so the rest queue up */
    int base = atomic_load(&g_seq);
    for (int i = 0; i < N; i++) {
        envs[i].fail = i % 7 == 3;
        reaper_submit(fake_destroy, &envs[i], "env");
    }
    CHECK(reaper_pending() == N);
    sem_post(&gate);
    reaper_drain();
    for (int i = 0; i < N; i++) {
        CHECK(atomic_load(&envs[i].calls) == 1);
        CHECK(envs[i].order == base + i);
    }
    sem_destroy(&gate);
}

static void *submit_many(void *arg)
{
    fake_env_t *envs = arg;
    for (int i = 0; i < 100; i++)
        reaper_submit(fake_destroy, &envs[i], "threaded");
    return NULL;
}

static void test_concurrent_submitters(void)
{
    static fake_env_t envs[4][100];
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&t[i], NULL, submit_many, envs[i]) == 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    reaper_drain();
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 100; j++)
            CHECK(atomic_load(&envs[i][j].calls) == 1);
}

typedef struct {
    const char *label;
    atomic_bool done;
    bool waited;
} waiter_t;

static void *wait_main(void *arg)
{
    waiter_t *w = arg;
    w->waited = reaper_wait_for(w->label);
    atomic_store(&w->done, true);
    return NULL;
}

/* An id created again while its old environment is still being destroyed
 * waits for exactly that destroy, and no other id waits at all. */
static void test_wait_for_one_label(void)
{
    sem_t gate;
    sem_init(&gate, 0, 0);
    fake_env_t old = {.gate = &gate};
    reaper_submit(fake_destroy, &old, "env-1");
    CHECK(!reaper_wait_for("env-2"));
    waiter_t w = {.label = "env-1"};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_main, &w) == 0);
    usleep(100000);
    CHECK(!atomic_load(&w.done)); /* still being destroyed: it waits */
    sem_post(&gate);
    pthread_join(t, NULL);
    CHECK(w.waited && atomic_load(&old.calls) == 1);
    CHECK(!reaper_wait_for("env-1"));
    sem_destroy(&gate);
}

int main(void)
{
    RUN(test_submit_does_not_wait_for_the_destroy);
    RUN(test_all_destroyed_once_in_order);
    RUN(test_concurrent_submitters);
    RUN(test_wait_for_one_label);
    CHECK_EXIT();
}
