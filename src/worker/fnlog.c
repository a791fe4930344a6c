/* fnlog.c - see fnlog.h.  Open files are cached per function in a short
 * list (functions with recent output); the base offset file is rewritten
 * only at rotation. */
#include "worker/fnlog.h"
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/log.h"
#include "common/util.h"

typedef struct open_log {
    char *name;
    int fd;
    uint64_t size;      /* bytes in the current file */
    uint64_t base;      /* logical offset of the current file's first byte */
    int write_failed;
    struct open_log *next;
} open_log_t;

struct fnlog_dir {
    char *dir;
    open_log_t *open;
    int n_open;
};

#define MAX_OPEN_LOGS 64

fnlog_dir_t *fnlog_open(const char *dir, err_t *err)
{
    if (mkdir_p(dir, 0750, err) < 0)
        return NULL;
    fnlog_dir_t *logs = xcalloc(1, sizeof *logs);
    logs->dir = xstrdup(dir);
    return logs;
}

static void close_log(open_log_t *l)
{
    if (l->fd >= 0)
        close(l->fd);
    free(l->name);
    free(l);
}

void fnlog_close(fnlog_dir_t *logs)
{
    if (!logs)
        return;
    while (logs->open) {
        open_log_t *l = logs->open;
        logs->open = l->next;
        close_log(l);
    }
    free(logs->dir);
    free(logs);
}

static uint64_t read_base(fnlog_dir_t *logs, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.log.base", logs->dir, name);
    char *text = read_file(path, 64, NULL, NULL);
    uint64_t base = text ? strtoull(text, NULL, 10) : 0;
    free(text);
    return base;
}

static open_log_t *get_log(fnlog_dir_t *logs, const char *name, int create)
{
    open_log_t **pp = &logs->open;
    for (open_log_t *l = logs->open; l; pp = &l->next, l = l->next) {
        if (!strcmp(l->name, name)) {
            *pp = l->next; /* move to front */
            l->next = logs->open;
            logs->open = l;
            return l;
        }
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.log", logs->dir, name);
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT : 0), 0640);
    if (fd < 0)
        return NULL;
    struct stat st;
    fstat(fd, &st);
    open_log_t *l = xcalloc(1, sizeof *l);
    l->name = xstrdup(name);
    l->fd = fd;
    l->size = (uint64_t)st.st_size;
    l->base = read_base(logs, name);
    l->next = logs->open;
    logs->open = l;
    if (++logs->n_open > MAX_OPEN_LOGS) { /* drop the least recently used */
        open_log_t **tail = &logs->open;
        while ((*tail)->next)
            tail = &(*tail)->next;
        close_log(*tail);
        *tail = NULL;
        logs->n_open--;
    }
    return l;
}

static void rotate(fnlog_dir_t *logs, open_log_t *l)
{
    char path[4096], old[4200], basepath[4200], base[32];
    snprintf(path, sizeof path, "%s/%s.log", logs->dir, l->name);
    snprintf(old, sizeof old, "%s.1", path);
    snprintf(basepath, sizeof basepath, "%s.base", path);
    rename(path, old);
    close(l->fd);
    l->base += l->size;
    l->size = 0;
    snprintf(base, sizeof base, "%llu\n", (unsigned long long)l->base);
    write_file_atomic(basepath, base, strlen(base), 0640, NULL);
    l->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

void fnlog_append(fnlog_dir_t *logs, const char *name, const void *data, size_t len)
{
    open_log_t *l = get_log(logs, name, 1);
    if (!l || l->fd < 0)
        return;
    if (l->size + len > FNLOG_ROTATE_BYTES && l->size > 0)
        rotate(logs, l);
    const char *p = data;
    while (len > 0 && l->fd >= 0) {
        ssize_t w = write(l->fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (!l->write_failed)
                log_warn("worker", "function log %s: %s (output dropped)", name, strerror(errno));
            l->write_failed = 1;
            return;
        }
        p += w;
        len -= (size_t)w;
        l->size += (uint64_t)w;
    }
}

/* Where the current file starts and how long it is, read from disk: the
 * writer may be another process (a worker, with the frontend reading). */
static bool current_extent(fnlog_dir_t *logs, const char *name, uint64_t *base, uint64_t *size)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s.log", logs->dir, name);
    if (stat(path, &st) < 0)
        return false;
    *base = read_base(logs, name);
    *size = (uint64_t)st.st_size;
    return true;
}

uint64_t fnlog_end(fnlog_dir_t *logs, const char *name)
{
    uint64_t base, size;
    return current_extent(logs, name, &base, &size) ? base + size : 0;
}

static char *read_range(const char *path, uint64_t from, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = xmalloc(max + 1);
    ssize_t r = pread(fd, buf, max, (off_t)from);
    close(fd);
    if (r <= 0) {
        free(buf);
        return NULL;
    }
    buf[r] = 0;
    *len = (size_t)r;
    return buf;
}

char *fnlog_read(fnlog_dir_t *logs, const char *name, uint64_t *offset, size_t max, size_t *len)
{
    *len = 0;
    open_log_t cur = {0}, *l = &cur;
    if (!current_extent(logs, name, &cur.base, &cur.size))
        return NULL;
    char path[4096], old[4200];
    snprintf(path, sizeof path, "%s/%s.log", logs->dir, name);
    snprintf(old, sizeof old, "%s.1", path);
    if (*offset < l->base) {
        /* In the rotated file, if it still holds that offset. */
        struct stat st;
        uint64_t old_base = 0;
        if (stat(old, &st) == 0 && l->base >= (uint64_t)st.st_size)
            old_base = l->base - (uint64_t)st.st_size;
        else
            old_base = l->base;
        if (*offset < old_base)
            *offset = old_base;
        if (*offset < l->base) {
            size_t want = (size_t)(l->base - *offset) < max ? (size_t)(l->base - *offset) : max;
            char *buf = read_range(old, *offset - old_base, want, len);
            if (buf) {
                *offset += *len;
                return buf;
            }
            *offset = l->base;
        }
    }
    if (*offset >= l->base + l->size)
        return NULL;
    char *buf = read_range(path, *offset - l->base, max, len);
    if (buf)
        *offset += *len;
    return buf;
}

void fnlog_remove(fnlog_dir_t *logs, const char *name)
{
    open_log_t **pp = &logs->open;
    for (open_log_t *l = logs->open; l; pp = &l->next, l = l->next) {
        if (!strcmp(l->name, name)) {
            *pp = l->next;
            close_log(l);
            logs->n_open--;
            break;
        }
    }
    static const char *suffixes[] = {".log", ".log.1", ".log.base"};
    for (size_t i = 0; i < ARRAY_LEN(suffixes); i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s%s", logs->dir, name, suffixes[i]);
        unlink(path);
    }
}
