/* reaper.c - the worker's teardown thread (see reaper.h).
 *
 * How: a FIFO of (destroy, handle, label) under one mutex; one detached
 * thread, started on the first submit, pops and runs them.  `pending`
 * counts queued plus running items; reaper_drain waits on a condition
 * variable until it is 0.  The thread never exits: a worker process keeps
 * it for its life (an idle thread costs nothing but its stack). */
#include "worker/reaper.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

typedef struct reap_item {
    struct reap_item *next;
    reaper_destroy_fn destroy;
    void *handle;
    char *label;
} reap_item_t;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_idle = PTHREAD_COND_INITIALIZER;
static reap_item_t *g_head, **g_tail = &g_head;
static reap_item_t *g_running; /* the item being destroyed, or NULL */
static int g_pending;
static bool g_started;

/* Runs and frees it (the label only while under no lock: the reaper
 * thread reads it here, waiters compare it under g_mu, so it is freed by
 * the caller once g_running no longer points at it). */
static void run_item(reap_item_t *it)
{
    uint64_t t0 = now_mono_ms();
    err_t err = {0};
    int rc = it->destroy(it->handle, &err);
    uint64_t ms = now_mono_ms() - t0;
    if (rc < 0)
        log_warn("worker", "env %s: destroy: %s", it->label, err.msg);
    else if (ms >= 1000)
        log_warn("worker", "env %s: destroy took %llu ms", it->label, (unsigned long long)ms);
}

static void free_item(reap_item_t *it)
{
    free(it->label);
    free(it);
}

static void *reaper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_mu);
    for (;;) {
        while (!g_head)
            pthread_cond_wait(&g_work, &g_mu);
        reap_item_t *it = g_head;
        g_head = it->next;
        if (!g_head)
            g_tail = &g_head;
        g_running = it;
        pthread_mutex_unlock(&g_mu);
        run_item(it);
        pthread_mutex_lock(&g_mu);
        g_running = NULL;
        free_item(it);
        g_pending--;
        pthread_cond_broadcast(&g_idle);
    }
    return NULL;
}

void reaper_submit(reaper_destroy_fn destroy, void *handle, const char *label)
{
    reap_item_t *it = xcalloc(1, sizeof *it);
    it->destroy = destroy;
    it->handle = handle;
    it->label = xstrdup(label ? label : "?");
    pthread_mutex_lock(&g_mu);
    if (!g_started) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        g_started = pthread_create(&t, &at, reaper_main, NULL) == 0;
        pthread_attr_destroy(&at);
        if (!g_started) {
            pthread_mutex_unlock(&g_mu);
            log_warn("worker", "no reaper thread: destroying env %s inline", it->label);
            run_item(it);
            free_item(it);
            return;
        }
    }
    it->next = NULL;
    *g_tail = it;
    g_tail = &it->next;
    g_pending++;
    pthread_cond_signal(&g_work);
    pthread_mutex_unlock(&g_mu);
}

void reaper_drain(void)
{
    pthread_mutex_lock(&g_mu);
    while (g_pending > 0)
        pthread_cond_wait(&g_idle, &g_mu);
    pthread_mutex_unlock(&g_mu);
}

static bool label_pending(const char *label)
{
    if (g_running && !strcmp(g_running->label, label))
        return true;
    for (reap_item_t *it = g_head; it; it = it->next)
        if (!strcmp(it->label, label))
            return true;
    return false;
}

bool reaper_wait_for(const char *label)
{
    bool waited = false;
    pthread_mutex_lock(&g_mu);
    while (label_pending(label)) {
        waited = true;
        pthread_cond_wait(&g_idle, &g_mu);
    }
    pthread_mutex_unlock(&g_mu);
    return waited;
}

int reaper_pending(void)
{
    pthread_mutex_lock(&g_mu);
    int n = g_pending;
    pthread_mutex_unlock(&g_mu);
    return n;
}
