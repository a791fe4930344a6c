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

#include "common/etcd.h"
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
        char *endpoints, *prefix;
        if (etcd_parse_spec(spec, "/flicker", "journal", &endpoints, &prefix, err) < 0)
            return NULL;
        journal_t *j = journal_etcd_open(endpoints, prefix, err);
        free(endpoints);
        free(prefix);
        return j;
    }
    err_set(err, EINVAL, "journal: unknown spec \"%s\" (want file:DIR or etcd:ENDPOINTS[;prefix=P])", spec);
    return NULL;
}
