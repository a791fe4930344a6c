/* zipfix.h - test fixture helpers: builds zips in memory with libzip.
 * Header-only (static functions) so each test binary can include it. */
#ifndef FLICKER_ZIPFIX_H
#define FLICKER_ZIPFIX_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zip.h>

typedef struct zent {
    const char *name;
    const char *data; /* NULL: a directory entry */
    size_t len;       /* 0: strlen(data) */
    unsigned mode;    /* full st_mode (S_IFREG|0644...), 0: no Unix attributes */
} zent_t;

/* Returns a malloc'd zip holding the entries; *len gets its size. */
static unsigned char *zip_build(const zent_t *e, int n, size_t *len)
{
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(NULL, 0, 0, &ze);
    zip_source_keep(src);
    zip_t *za = zip_open_from_source(src, ZIP_TRUNCATE, &ze);
    for (int i = 0; i < n; i++) {
        zip_int64_t idx;
        if (!e[i].data) {
            idx = zip_dir_add(za, e[i].name, ZIP_FL_ENC_UTF_8);
        } else {
            size_t l = e[i].len ? e[i].len : strlen(e[i].data);
            zip_source_t *s = zip_source_buffer(za, e[i].data, l, 0);
            idx = zip_file_add(za, e[i].name, s, ZIP_FL_ENC_UTF_8 | ZIP_FL_OVERWRITE);
        }
        if (idx >= 0 && e[i].mode)
            zip_file_set_external_attributes(za, (zip_uint64_t)idx, 0, ZIP_OPSYS_UNIX,
                                             (zip_uint32_t)e[i].mode << 16);
    }
    zip_close(za);
    zip_source_open(src);
    zip_source_seek(src, 0, SEEK_END);
    zip_int64_t size = zip_source_tell(src);
    zip_source_seek(src, 0, SEEK_SET);
    unsigned char *out = malloc((size_t)size + 1);
    zip_source_read(src, out, (zip_uint64_t)size);
    zip_source_close(src);
    zip_source_free(src);
    zip_error_fini(&ze);
    *len = (size_t)size;
    return out;
}
#endif
