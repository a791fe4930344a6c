/* journal.c - journal_open(): picks the backend from a spec string.
 *
 *   "file:/path/to/dir"                        -> journal_file_open(dir)
 *   "etcd:http://h:2379,http://h2:2379;prefix=/p" -> journal_etcd_open(endpoints, prefix)
 *                                              (prefix "/flicker" when absent)
 *
 * Both backends are always linked. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "journal/journal.h"


journal_t *journal_open(const char *spec, err_t *err)
{
    if (!spec) {
        err_set(err, EINVAL, "journal: no spec");
        return NULL;
    }
    if (!strncmp(spec, "file:", 5))
        return journal_file_open(spec + 5, err);
    if (!strncmp(spec, "etcd:", 5)) {
        const char *rest = spec + 5, *semi = strchr(rest, ';');
        char *endpoints = semi ? xstrndup(rest, (size_t)(semi - rest)) : xstrdup(rest);
        const char *prefix = "/flicker";
        if (semi && strncmp(semi + 1, "prefix=", 7)) {
            err_set(err, EINVAL, "journal: unknown option in \"%s\" (only ;prefix=P)", spec);
            free(endpoints);
            return NULL;
        }
        if (semi)
            prefix = semi + 8;
        journal_t *j = journal_etcd_open(endpoints, prefix, err);
        free(endpoints);
        return j;
    }
    err_set(err, EINVAL, "journal: unknown spec \"%s\" (want file:DIR or etcd:ENDPOINTS[;prefix=P])", spec);
    return NULL;
}
