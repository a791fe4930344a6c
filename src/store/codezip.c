/* codezip.c - see codezip.h.  Extraction works relative to directory fds
 * opened with O_NOFOLLOW and creates files with O_EXCL|O_NOFOLLOW, so even a
 * bug in the name checks cannot write outside dest: no symlink is ever
 * created and none is ever followed. */
#include "store/codezip.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "common/util.h"

#define BAD_ZIP_MSG "Could not unzip uploaded file. Please check your file, then try to upload again."

int codezip_check_name(const char *name)
{
    if (!name || !*name || name[0] == '/' || strlen(name) > CODEZIP_MAX_NAME)
        return -1;
    const char *p = name;
    int depth = 0;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return -1;
        if (++depth > CODEZIP_MAX_DEPTH)
            return -1;
        p += n;
        if (*p == '/')
            p++;
    }
    return 0;
}

/* Maps a failed mkdir/open of an entry: errors caused by the name itself
 * are the zip's fault (EINVAL), the rest are host errors. */
static int entry_error(err_t *err, const char *what, const char *name)
{
    if (errno == ENAMETOOLONG || errno == EINVAL || errno == EISDIR || errno == ENOTDIR ||
        errno == EEXIST || errno == ELOOP)
        return err_set(err, EINVAL, BAD_ZIP_MSG " (bad entry name '%.200s')", name);
    return err_sys(err, "%s %s", what, name);
}

/* Opens (creating as needed) the directory for the first n bytes of path
 * below rootfd; returns a new fd or -1/err. */
static int open_dirs(int rootfd, const char *path, size_t n, err_t *err)
{
    int fd = dup(rootfd);
    if (fd < 0)
        return err_sys(err, "dup");
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && path[j] != '/')
            j++;
        size_t len = j - i;
        if (len > 0 && !(len == 1 && path[i] == '.')) {
            char *comp = xstrndup(path + i, len);
            if (mkdirat(fd, comp, 0755) < 0 && errno != EEXIST) {
                entry_error(err, "mkdir", comp);
                free(comp);
                close(fd);
                return -1;
            }
            int nfd = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (nfd < 0) {
                /* an earlier entry made this a file: the zip is inconsistent */
                err_set(err, EINVAL, BAD_ZIP_MSG);
                free(comp);
                close(fd);
                return -1;
            }
            free(comp);
            close(fd);
            fd = nfd;
        }
        i = j + 1;
    }
    return fd;
}

/* Writes one regular entry; adds the bytes written to *total. */
static int extract_file(zip_t *za, zip_uint64_t idx, int rootfd, const char *name, mode_t mode,
                        uint64_t max_unzipped, uint64_t *total, err_t *err)
{
    const char *slash = strrchr(name, '/');
    const char *leaf = slash ? slash + 1 : name;
    if (!*leaf || !strcmp(leaf, ".") || !strcmp(leaf, ".."))
        return err_set(err, EINVAL, BAD_ZIP_MSG);
    int dfd = open_dirs(rootfd, name, slash ? (size_t)(slash - name) : 0, err);
    if (dfd < 0)
        return -1;
    int fd = openat(dfd, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    close(dfd);
    if (fd < 0) {
        if (errno == EEXIST)
            return err_set(err, EINVAL, BAD_ZIP_MSG " (duplicate entry %s)", name);
        return entry_error(err, "create", name);
    }
    zip_file_t *zf = zip_fopen_index(za, idx, 0);
    if (!zf) {
        close(fd);
        return err_set(err, EINVAL, BAD_ZIP_MSG);
    }
    char buf[65536];
    int rc = 0;
    for (;;) {
        zip_int64_t n = zip_fread(zf, buf, sizeof buf);
        if (n < 0) {
            rc = err_set(err, EINVAL, BAD_ZIP_MSG);
            break;
        }
        if (n == 0)
            break;
        if (*total + (uint64_t)n > max_unzipped) {
            rc = err_set(err, EFBIG, "Unzipped size must be smaller than %llu bytes",
                         (unsigned long long)max_unzipped);
            break;
        }
        *total += (uint64_t)n;
        for (zip_int64_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                rc = err_sys(err, "write %s", name);
                break;
            }
            off += w;
        }
        if (rc < 0)
            break;
    }
    zip_fclose(zf);
    if (fchmod(fd, mode) < 0 && rc == 0)
        rc = err_sys(err, "chmod %s", name);
    close(fd);
    return rc;
}

static int extract_all(zip_t *za, int rootfd, uint64_t max_unzipped, uint32_t max_entries,
                       uint64_t *total, err_t *err)
{
    zip_int64_t n = zip_get_num_entries(za, 0);
    if (n < 0)
        return err_set(err, EINVAL, BAD_ZIP_MSG);
    if ((uint64_t)n > max_entries)
        return err_set(err, EINVAL, "Zip file has too many entries (%lld, limit %u)", (long long)n,
                       max_entries);
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        if (!name)
            return err_set(err, EINVAL, BAD_ZIP_MSG);
        if (codezip_check_name(name) < 0)
            return err_set(err, EINVAL,
                           BAD_ZIP_MSG " (entry '%.200s' has an absolute path or '..' component)",
                           name);
        zip_uint8_t opsys = 0;
        zip_uint32_t attr = 0;
        if (zip_file_get_external_attributes(za, (zip_uint64_t)i, 0, &opsys, &attr) < 0)
            return err_set(err, EINVAL, BAD_ZIP_MSG);
        mode_t umode = opsys == ZIP_OPSYS_UNIX ? (mode_t)(attr >> 16) : 0;
        size_t len = strlen(name);
        int is_dir = name[len - 1] == '/' || (umode && S_ISDIR(umode));
        if (umode && (umode & S_IFMT) && !S_ISREG(umode) && !S_ISDIR(umode)) {
            if (S_ISLNK(umode))
                return err_set(err, EINVAL,
                               BAD_ZIP_MSG " (entry '%.200s' is a symbolic link: not supported)",
                               name);
            return err_set(err, EINVAL,
                           BAD_ZIP_MSG " (entry '%.200s' is not a regular file or directory)", name);
        }
        if (is_dir) {
            int fd = open_dirs(rootfd, name, len, err);
            if (fd < 0)
                return -1;
            close(fd);
            continue;
        }
        mode_t mode = (umode & 0111) ? 0755 : 0644;
        if (extract_file(za, (zip_uint64_t)i, rootfd, name, mode, max_unzipped, total, err) < 0)
            return -1;
    }
    return 0;
}

int codezip_extract(const void *zip, size_t len, const char *dest, uint64_t max_unzipped,
                    uint32_t max_entries, uint64_t *unzipped, err_t *err)
{
    zip_error_t zerr;
    zip_error_init(&zerr);
    zip_source_t *src = zip_source_buffer_create(zip, len, 0, &zerr);
    if (!src) {
        zip_error_fini(&zerr);
        return err_set(err, ENOMEM, "zip source: out of memory");
    }
    zip_t *za = zip_open_from_source(src, ZIP_RDONLY, &zerr);
    zip_error_fini(&zerr);
    if (!za) {
        zip_source_free(src);
        return err_set(err, EINVAL, BAD_ZIP_MSG);
    }
    if (mkdir(dest, 0755) < 0) {
        err_sys(err, "mkdir %s", dest);
        zip_discard(za);
        return -1;
    }
    int rootfd = open(dest, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    uint64_t total = 0;
    int rc = rootfd < 0 ? err_sys(err, "open %s", dest)
                        : extract_all(za, rootfd, max_unzipped, max_entries, &total, err);
    if (rootfd >= 0)
        close(rootfd);
    zip_discard(za);
    if (rc < 0) {
        rm_rf(dest, NULL);
        return -1;
    }
    if (unzipped)
        *unzipped = total;
    return 0;
}
