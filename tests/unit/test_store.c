/* test_store.c - the store below the control plane: codezip extraction
 * rules, function reference parsing, store_resolve semantics, CRUD and
 * persistence across store_close/store_open.  The store's cases run
 * against both backends: SQLite (name_sqlite) and etcd (name_etcd, on a
 * real 3-member cluster from scripts/etcd-cluster.sh; SKIP lines with the
 * reason when etcd is not installed).  etcd-only cases: optimistic
 * transaction conflicts, listings past one range page, code chunks
 * (dedup, fetch on another host's data dir, missing/corrupt chunks). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "common/etcd.h"
#include "common/util.h"
#include "etcd_cluster.h"
#include "store/codezip.h"
#include "store/store.h"
#include "zipfix.h"

static char TMP[256];
/* The backend the store's cases run on: "sqlite", or "etcd" (then every
 * mktmp() also starts a fresh key prefix, PREFIX). */
static const char *BACKEND = "sqlite";
static char SPEC[768], PREFIX[128];
static int prefix_seq;

static void mktmp(void)
{
    snprintf(TMP, sizeof TMP, "/tmp/flicker-test-store-XXXXXX");
    if (!mkdtemp(TMP))
        abort();
    if (!strcmp(BACKEND, "etcd")) {
        snprintf(PREFIX, sizeof PREFIX, "/test-store/%d/p%d", (int)getpid(), ++prefix_seq);
        snprintf(SPEC, sizeof SPEC, "etcd:%s;prefix=%s", eps, PREFIX);
    } else {
        snprintf(SPEC, sizeof SPEC, "sqlite");
    }
}

static store_t *open_store(const char *dir, err_t *e)
{
    store_t *s = store_open_spec(SPEC, dir, "us-east-1", "123456789012", e);
    if (!s)
        printf("  open %s: %s\n", SPEC, e->msg);
    return s;
}

static int extract(const zent_t *e, int n, uint64_t limit, uint32_t max_entries, err_t *err,
                   char **dest_out)
{
    size_t len;
    unsigned char *z = zip_build(e, n, &len);
    char *dest = xasprintf("%s/out", TMP);
    int rc = codezip_extract(z, len, dest, limit, max_entries, NULL, err);
    free(z);
    *dest_out = dest;
    return rc;
}

static mode_t mode_of(const char *dir, const char *rel)
{
    char *p = xasprintf("%s/%s", dir, rel);
    struct stat st;
    int rc = lstat(p, &st);
    free(p);
    return rc < 0 ? 0 : st.st_mode;
}

static void test_codezip_good(void)
{
    mktmp();
    zent_t e[] = {{"bootstrap", "#!/bin/sh\n", 0, S_IFREG | 0700},
                  {"./a//b/c.txt", "hello", 0, S_IFREG | 0600},
                  {"d/", NULL, 0, 0},
                  {"plain", "dos-made", 0, 0}};
    err_t err = {0};
    char *dest = NULL;
    uint64_t total = 0;
    size_t len;
    unsigned char *z = zip_build(e, 4, &len);
    dest = xasprintf("%s/out", TMP);
    int rc = codezip_extract(z, len, dest, CODEZIP_MAX_UNZIPPED, 100, &total, &err);
    free(z);
    if (rc < 0)
        printf("  %s\n", err.msg);
    CHECK(rc == 0);
    CHECK(total == strlen("#!/bin/sh\n") + 5 + 8);
    CHECK((mode_of(dest, "bootstrap") & 07777) == 0755);
    CHECK((mode_of(dest, "a/b/c.txt") & 07777) == 0644);
    CHECK(S_ISDIR(mode_of(dest, "a")) && (mode_of(dest, "a") & 0777) == 0755);
    CHECK(S_ISDIR(mode_of(dest, "d")));
    CHECK((mode_of(dest, "plain") & 07777) == 0644);
    free(dest);
    rm_rf(TMP, NULL);
}

#define LONG10 "aaaaaaaaaa"
#define LONG_NAME LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 \
    LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 \
    LONG10 LONG10 LONG10 LONG10 LONG10 LONG10 LONG10

static void test_codezip_hostile(void)
{
    mktmp();
    struct {
        zent_t e[2];
        int n;
        int code;
    } cases[] = {
        {{{"../x", "x", 0, 0}}, 1, EINVAL},
        {{{"a/../../x", "x", 0, 0}}, 1, EINVAL},
        {{{"/etc/x", "x", 0, 0}}, 1, EINVAL},
        {{{"l", "../../etc", 0, S_IFLNK | 0777}}, 1, EINVAL},
        {{{"l", "inside", 0, S_IFLNK | 0777}}, 1, EINVAL}, /* all symlinks are refused */
        {{{"dev", "", 0, S_IFCHR | 0644}}, 1, EINVAL},
        {{{"sock", "", 0, S_IFSOCK | 0644}}, 1, EINVAL},
        {{{"f", "1", 0, 0}, {"f/g", "2", 0, 0}}, 2, EINVAL},
        {{{"a", "1", 0, 0}, {"b", "2", 0, 0}}, 2, EINVAL}, /* over the entry cap of 1 */
        {{{LONG_NAME, "1", 0, 0}}, 1, EINVAL},
        {{{"d/" LONG_NAME "/x", "1", 0, 0}}, 1, EINVAL},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        err_t err = {0};
        char *dest = NULL;
        int rc = extract(cases[i].e, cases[i].n, CODEZIP_MAX_UNZIPPED, i == 8 ? 1 : 100, &err,
                         &dest);
        int gone = access(dest, F_OK) != 0;
        free(dest);
        if (rc == 0 || err.code != cases[i].code || !gone)
            printf("  case %zu: rc %d code %d gone %d\n", i, rc, err.code, gone);
        CHECK(rc < 0 && err.code == cases[i].code && gone);
    }
    /* not a zip at all, and a truncated one */
    err_t err = {0};
    char *dest = xasprintf("%s/out", TMP);
    CHECK(codezip_extract("hello", 5, dest, 1000, 10, NULL, &err) < 0 && err.code == EINVAL);
    CHECK(strstr(err.msg, "Could not unzip uploaded file"));
    zent_t one[] = {{"f", "some data that is long enough", 0, 0}};
    size_t len;
    unsigned char *z = zip_build(one, 1, &len);
    CHECK(codezip_extract(z, len / 2, dest, 1000, 10, NULL, &err) < 0 && err.code == EINVAL);
    /* a zip bomb: sizes are counted as written */
    size_t big = 4 << 20;
    char *zeros = calloc(1, big);
    zent_t bomb[] = {{"z1", zeros, big, 0}, {"z2", zeros, big, 0}};
    unsigned char *bz = zip_build(bomb, 2, &len);
    free(zeros);
    CHECK(len < 100000);
    int rc = codezip_extract(bz, len, dest, 6 << 20, 10, NULL, &err);
    CHECK(rc < 0 && err.code == EFBIG && access(dest, F_OK) != 0);
    CHECK(strstr(err.msg, "Unzipped size must be smaller than 6291456 bytes"));
    CHECK(codezip_extract(bz, len, dest, 8 << 20, 10, NULL, &err) == 0);
    /* an empty zip (only the end record) is valid and empty */
    rm_rf(dest, NULL);
    size_t elen = 0;
    void *empty = base64_decode("UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==", 32, &elen);
    rc = codezip_extract(empty, elen, dest, 1000, 10, NULL, &err);
    free(empty);
    CHECK(rc == 0);
    rm_rf(dest, NULL);
    free(bz);
    free(z);
    free(dest);
    CHECK(codezip_check_name("a/b") == 0 && codezip_check_name("..a/b..") == 0);
    char deep[1024] = "";
    for (int i = 0; i < 129; i++)
        strcat(deep, "a/");
    strcat(deep, "f");
    CHECK(codezip_check_name(deep) < 0);
    deep[2 * 127 + 1] = 0; /* 128 components */
    CHECK(codezip_check_name(deep) == 0);
    CHECK(codezip_check_name("") < 0 && codezip_check_name("..") < 0 &&
          codezip_check_name("a/..") < 0 && codezip_check_name("/a") < 0);
    rm_rf(TMP, NULL);
}

static void test_parse_ref(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    struct {
        const char *ref, *name, *qual;
        int code;
    } cases[] = {
        {"fn", "fn", NULL, 0},
        {"fn:prod", "fn", "prod", 0},
        {"fn:$LATEST", "fn", "$LATEST", 0},
        {"123456789012:function:fn", "fn", NULL, 0},
        {"123456789012:function:fn:3", "fn", "3", 0},
        {"arn:aws:lambda:us-east-1:123456789012:function:fn", "fn", NULL, 0},
        {"arn:aws:lambda:us-east-1:123456789012:function:fn:a-b_c", "fn", "a-b_c", 0},
        {"arn:aws:lambda:eu-west-1:123456789012:function:fn", NULL, NULL, ENOENT},
        {"999999999999:function:fn", NULL, NULL, ENOENT},
        {"arn:aws:s3:us-east-1:123456789012:function:fn", NULL, NULL, EINVAL},
        {"", NULL, NULL, EINVAL},
        {"fn:", NULL, NULL, EINVAL},
        {"a b", NULL, NULL, EINVAL},
        {"fn.x", NULL, NULL, EINVAL},
        {"a:b:c", NULL, NULL, EINVAL},
        {"a:b:c:d:e:f:g:h:i:j:k", NULL, NULL, EINVAL},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", NULL, NULL, EINVAL},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *n = NULL, *q = NULL;
        e.code = 0;
        int rc = store_parse_ref(s, cases[i].ref, &n, &q, &e);
        int good = cases[i].code ? (rc < 0 && e.code == cases[i].code && !n && !q)
                                 : (rc == 0 && !strcmp(n, cases[i].name) &&
                                    (cases[i].qual ? q && !strcmp(q, cases[i].qual) : !q));
        if (!good)
            printf("  case %zu '%s': rc %d code %d\n", i, cases[i].ref, rc, e.code);
        free(n);
        free(q);
        CHECK(good);
    }
    store_close(s);
    rm_rf(TMP, NULL);
}

static json_t *mkcfg(const char *name, const char *hex, const char *rev)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:{s:i}, s:{s:{s:s}}, s:s, s:s, s:s, s:i}",
                     "FunctionName", name, "Version", "$LATEST", "Runtime", "python3.12",
                     "Handler", "a.b", "MemorySize", 256, "Timeout", 7, "EphemeralStorage",
                     "Size", 600, "Environment", "Variables", "K1", "v1", "CodeSha256", "c2hh",
                     "_CodeHex", hex, "RevisionId", rev, "CodeSize", 10);
}

static void test_store_crud_and_resolve(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    json_t *cfg = mkcfg("f", "abc", "rev-1");
    CHECK(store_fn_insert(s, "f", cfg, &e) == 0);
    CHECK(store_fn_insert(s, "f", cfg, &e) < 0 && e.code == EEXIST);
    CHECK(store_fn_count(s) == 1);
    CHECK(store_next_version(s, "f", &e) == 1);
    json_object_set_new(cfg, "Version", json_string("1"));
    CHECK(store_version_insert(s, "f", 1, cfg, &e) == 0);
    json_decref(cfg);
    CHECK(store_next_version(s, "nope", &e) < 0 && e.code == ENOENT);
    CHECK(store_last_version(s, "f") == 1);
    CHECK(store_total_code_size(s) == 20);
    json_t *alias = json_pack("{s:s, s:s}", "Name", "prod", "FunctionVersion", "1");
    CHECK(store_alias_put(s, "f", "prod", alias, 0, &e) == 0);
    CHECK(store_alias_put(s, "f", "prod", alias, 0, &e) < 0 && e.code == EEXIST);
    json_decref(alias);
    CHECK(store_set_reserved(s, "f", 7, &e) == 0);
    CHECK(store_set_reserved(s, "nope", 7, &e) < 0 && e.code == ENOENT);
    json_t *tags = json_pack("{s:s}", "k", "v");
    CHECK(store_tags_set(s, "f", tags, &e) == 0);
    json_decref(tags);

    fn_config_t *fc = NULL;
    CHECK(store_resolve(s, "f", NULL, &fc, &e) == 0);
    CHECK_STR(fc->name, "f");
    CHECK_STR(fc->version, "$LATEST");
    CHECK_STR(fc->arn, "arn:aws:lambda:us-east-1:123456789012:function:f");
    CHECK_STR(fc->runtime, "python3.12");
    CHECK(fc->memory_mb == 256 && fc->timeout_s == 7 && fc->ephemeral_mb == 600);
    CHECK(fc->reserved_concurrency == 7);
    CHECK_STR(json_string_value(json_object_get(fc->env_vars, "K1")), "v1");
    char *want_dir = xasprintf("%s/code/abc", TMP);
    int dir_ok = !strcmp(fc->code_dir, want_dir);
    free(want_dir);
    CHECK(dir_ok);
    CHECK_STR(fc->config_key, "f:$LATEST:rev-1");
    CHECK(fc->alias == NULL);
    fn_config_free(fc);
    CHECK(store_resolve(s, "f:prod", NULL, &fc, &e) == 0);
    CHECK_STR(fc->version, "1");
    CHECK_STR(fc->alias, "prod");
    CHECK_STR(fc->config_key, "f:1:rev-1");
    fn_config_free(fc);
    CHECK(store_resolve(s, "f", "1", &fc, &e) == 0);
    fn_config_free(fc);
    CHECK(store_resolve(s, "f:1", "2", &fc, &e) < 0 && e.code == EINVAL);
    CHECK(strstr(e.msg, "derived qualifier"));
    CHECK(store_resolve(s, "f", "2", &fc, &e) < 0 && e.code == ENOENT);
    CHECK(store_resolve(s, "g", NULL, &fc, &e) < 0 && e.code == ENOENT);
    CHECK(strstr(e.msg, "Function not found: arn:aws:lambda:us-east-1:123456789012:function:g"));
    CHECK(store_resolve(s, "bad name", NULL, &fc, &e) < 0 && e.code == EINVAL);
    CHECK(store_resolve(s, "f", "bad qual!", &fc, &e) < 0 && e.code == EINVAL);
    CHECK(fc == NULL);

    /* persistence */
    store_close(s);
    s = open_store(TMP, &e);
    CHECK(s);
    CHECK(store_fn_count(s) == 1 && store_get_reserved(s, "f") == 7);
    CHECK(store_total_reserved(s) == 7);
    json_t *t = store_tags_get(s, "f");
    int tag_ok = !strcmp(json_string_value(json_object_get(t, "k")), "v");
    json_decref(t);
    CHECK(tag_ok);
    CHECK(store_resolve(s, "f:prod", NULL, &fc, &e) == 0);
    fn_config_free(fc);
    CHECK(store_next_version(s, "f", &e) == 2);

    /* delete cascades */
    CHECK(store_fn_delete(s, "f", &e) == 0);
    CHECK(store_fn_delete(s, "f", &e) < 0 && e.code == ENOENT);
    json_t *al = store_alias_list(s, "f");
    json_t *vl = store_version_list(s, "f");
    int empty = json_array_size(al) == 0 && json_array_size(vl) == 0;
    json_decref(al);
    json_decref(vl);
    CHECK(empty);
    CHECK(store_total_reserved(s) == 0 && store_total_code_size(s) == 0);
    store_close(s);
    rm_rf(TMP, NULL);
}

static void test_put_code_dedupe(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    zent_t z[] = {{"bootstrap", "#!/bin/sh\n", 0, S_IFREG | 0755}};
    size_t len;
    unsigned char *zip = zip_build(z, 1, &len);
    char hex[65], b64[45], hex2[65], b642[45];
    CHECK(store_put_code(s, zip, len, hex, b64, &e) == 0);
    CHECK(store_put_code(s, zip, len, hex2, b642, &e) == 0);
    CHECK_STR(hex, hex2);
    CHECK_STR(b64, b642);
    CHECK(strlen(hex) == 64 && strlen(b64) == 44);
    char *blob = store_blob_path(s, hex);
    size_t blen = 0;
    char *data = read_file(blob, 1 << 20, &blen, &e);
    int same = data && blen == len && !memcmp(data, zip, len);
    free(data);
    free(blob);
    CHECK(same);
    char *dir = store_code_dir(s, hex);
    CHECK((mode_of(dir, "bootstrap") & 0777) == 0755);
    free(dir);
    free(zip);
    CHECK(store_put_code(s, "junk", 4, hex, b64, &e) < 0 && e.code == EINVAL);
    /* no temp dirs left behind */
    char *codedir = xasprintf("%s/code", TMP);
    DIR *d = opendir(codedir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += de->d_name[0] != '.' || strncmp(de->d_name, ".tmp", 4) == 0;
    if (d)
        closedir(d);
    free(codedir);
    CHECK(n == 1);
    store_close(s);
    rm_rf(TMP, NULL);
}

static void test_schema_version(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    store_close(s);
    /* a crash mid-extraction leaves a temp dir: the next open removes it */
    char *junk = xasprintf("%s/code/.tmp-1234/sub", TMP);
    mkdir_p(junk, 0755, NULL);
    s = open_store(TMP, &e);
    int gone = access(junk, F_OK) != 0;
    free(junk);
    CHECK(s);
    store_close(s);
    CHECK(gone);
    /* a path that cannot be a directory */
    char *bad = xasprintf("%s/file", TMP);
    write_file_atomic(bad, "x", 1, 0644, NULL);
    s = store_open_spec(SPEC, bad, "us-east-1", "123456789012", &e);
    free(bad);
    CHECK(s == NULL);
    rm_rf(TMP, NULL);
}

/* ---- spec parsing (no etcd needed) ---- */

static void test_open_spec(void)
{
    mktmp();
    err_t e = {0};
    CHECK(store_open_spec("mysql:x", TMP, "us-east-1", "123456789012", &e) == NULL &&
          e.code == EINVAL);
    CHECK(store_open_spec("etcd:http://127.0.0.1:1;bogus=1", TMP, "us-east-1", "123456789012",
                          &e) == NULL && e.code == EINVAL);
    CHECK(store_open_spec("etcd:;prefix=/x", TMP, "us-east-1", "123456789012", &e) == NULL);
    store_t *s = store_open_spec(NULL, TMP, "us-east-1", "123456789012", &e);
    CHECK(s && !store_is_distributed(s));
    char *dir = NULL;
    CHECK(store_ensure_code(s, "0000000000000000000000000000000000000000000000000000000000000000",
                            &dir, &e) < 0 && e.code == ENOENT && !dir);
    CHECK(store_ensure_code(s, "../x", &dir, &e) < 0 && e.code == EINVAL);
    store_close(s);
    rm_rf(TMP, NULL);
}

/* ---- etcd only ---- */

static json_t *named_cfg(const char *name, const char *rev)
{
    return mkcfg(name, "abc", rev);
}

/* Two frontends racing: the one whose reads went stale loses at commit. */
static void test_etcd_conflict(void)
{
    mktmp();
    err_t e = {0};
    store_t *a = open_store(TMP, &e), *b = open_store(TMP, &e);
    CHECK(a && b && store_is_distributed(a));
    json_t *cfg = named_cfg("f", "rev-1");
    CHECK(store_fn_insert(a, "f", cfg, &e) == 0);
    CHECK(store_fn_insert(b, "f", cfg, &e) < 0 && e.code == EEXIST);
    /* a reads f in a transaction, b changes f, a's commit fails whole */
    CHECK(store_begin(a, &e) == 0);
    json_t *seen = store_fn_get(a, "f");
    CHECK(seen);
    json_decref(seen);
    json_t *cfg2 = named_cfg("f", "rev-b");
    CHECK(store_fn_update(b, "f", cfg2, &e) == 0);
    json_decref(cfg2);
    cfg2 = named_cfg("f", "rev-a");
    CHECK(store_fn_update(a, "f", cfg2, &e) == 0);
    CHECK(store_set_reserved(a, "f", 3, &e) == 0);
    json_decref(cfg2);
    CHECK(store_commit(a, &e) < 0 && e.code == STORE_ECONFLICT);
    store_rollback(a);
    json_t *now = store_fn_get(a, "f");
    int kept = now && !strcmp(json_string_value(json_object_get(now, "RevisionId")), "rev-b");
    json_decref(now);
    CHECK(kept && store_get_reserved(a, "f") == -1);
    /* two publishes racing for the next version number: one wins */
    CHECK(store_begin(a, &e) == 0 && store_begin(b, &e) == 0);
    CHECK(store_next_version(a, "f", &e) == 1 && store_next_version(b, "f", &e) == 1);
    CHECK(store_version_insert(a, "f", 1, cfg, &e) == 0);
    CHECK(store_version_insert(b, "f", 1, cfg, &e) == 0);
    CHECK(store_commit(a, &e) == 0);
    CHECK(store_commit(b, &e) < 0 && e.code == STORE_ECONFLICT);
    store_rollback(b);
    CHECK(store_last_version(b, "f") == 1 && store_next_version(b, "f", &e) == 2);
    /* creating the same function twice at once: the second create loses */
    json_t *g = named_cfg("g", "r");
    CHECK(store_begin(a, &e) == 0 && store_begin(b, &e) == 0);
    CHECK(store_fn_insert(a, "g", g, &e) == 0 && store_fn_insert(b, "g", g, &e) == 0);
    CHECK(store_commit(a, &e) == 0);
    CHECK(store_commit(b, &e) < 0 && e.code == STORE_ECONFLICT);
    json_decref(g);
    json_decref(cfg);
    store_close(a);
    store_close(b);
    rm_rf(TMP, NULL);
}

/* The control plane's pattern: read outside a transaction, decide, write
 * inside.  A change by another frontend in between is a conflict, not a
 * lost update; without one, repeated read-modify-writes go through. */
static void test_etcd_read_then_write(void)
{
    mktmp();
    err_t e = {0};
    store_t *a = open_store(TMP, &e), *b = open_store(TMP, &e);
    CHECK(a && b);
    json_t *cfg = named_cfg("f", "r1");
    CHECK(store_fn_insert(a, "f", cfg, &e) == 0);
    json_decref(cfg);
    for (int i = 0; i < 3; i++) { /* alone: each update succeeds */
        json_t *cur = store_fn_get(a, "f");
        CHECK(cur);
        json_object_set_new(cur, "Description", json_integer(i));
        int rc = store_begin(a, &e) == 0 && store_fn_update(a, "f", cur, &e) == 0 &&
                 store_commit(a, &e) == 0;
        json_decref(cur);
        CHECK(rc);
    }
    json_t *cur = store_fn_get(a, "f");   /* a reads... */
    json_t *other = store_fn_get(b, "f"); /* ...b updates meanwhile... */
    json_object_set_new(other, "Timeout", json_integer(99));
    CHECK(store_fn_update(b, "f", other, &e) == 0);
    json_decref(other);
    json_object_set_new(cur, "Description", json_string("a's")); /* ...a writes */
    CHECK(store_begin(a, &e) == 0);
    CHECK(store_fn_update(a, "f", cur, &e) == 0);
    CHECK(store_commit(a, &e) < 0 && e.code == STORE_ECONFLICT);
    store_rollback(a);
    json_decref(cur);
    cur = store_fn_get(a, "f");
    int kept = json_integer_value(json_object_get(cur, "Timeout")) == 99;
    json_decref(cur);
    CHECK(kept);
    /* blind writes of a key read before: tags, read-modify-write */
    json_t *tags = store_tags_get(a, "f");
    json_t *btags = json_pack("{s:s}", "team", "b");
    CHECK(store_tags_set(b, "f", btags, &e) == 0);
    json_decref(btags);
    json_object_set_new(tags, "team", json_string("a"));
    CHECK(store_tags_set(a, "f", tags, &e) < 0 && e.code == STORE_ECONFLICT);
    json_decref(tags);
    tags = store_tags_get(a, "f"); /* read again: now it goes through */
    json_object_set_new(tags, "team", json_string("a"));
    CHECK(store_tags_set(a, "f", tags, &e) == 0);
    json_decref(tags);
    store_close(a);
    store_close(b);
    rm_rf(TMP, NULL);
}

/* A transaction sees its own writes, listings included; rollback drops them. */
static void test_etcd_txn_own_writes(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    json_t *cfg = named_cfg("f", "r1");
    CHECK(store_begin(s, &e) == 0);
    CHECK(store_fn_insert(s, "f", cfg, &e) == 0);
    CHECK(store_next_version(s, "f", &e) == 1);
    json_object_set_new(cfg, "Version", json_string("1"));
    CHECK(store_version_insert(s, "f", 1, cfg, &e) == 0);
    json_t *vl = store_version_list(s, "f");
    json_t *fl = store_fn_list(s);
    int seen = json_array_size(vl) == 1 && json_array_size(fl) == 1;
    json_decref(vl);
    json_decref(fl);
    CHECK(seen);
    CHECK(store_last_version(s, "f") == 1);
    store_rollback(s);
    CHECK(store_fn_count(s) == 0 && store_fn_get(s, "f") == NULL);
    /* delete and list in one transaction */
    CHECK(store_fn_insert(s, "f", cfg, &e) == 0);
    CHECK(store_version_insert(s, "f", 1, cfg, &e) == 0);
    CHECK(store_begin(s, &e) == 0);
    CHECK(store_fn_delete(s, "f", &e) == 0);
    vl = store_version_list(s, "f");
    seen = json_array_size(vl) == 0;
    json_decref(vl);
    CHECK(seen && store_fn_get(s, "f") == NULL);
    CHECK(store_commit(s, &e) == 0);
    CHECK(store_fn_count(s) == 0 && store_total_code_size(s) == 0);
    json_decref(cfg);
    store_close(s);
    rm_rf(TMP, NULL);
}

/* Listings page through etcd's ranges (100 a page) in name order. */
static void test_etcd_listing_pages(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    for (int i = 0; i < 230; i++) {
        char name[16];
        snprintf(name, sizeof name, "fn%03d", (i * 7) % 230);
        json_t *cfg = named_cfg(name, "r");
        int rc = store_fn_insert(s, name, cfg, &e);
        json_decref(cfg);
        CHECK(rc == 0);
    }
    for (long v = 1; v <= 12; v++) {
        json_t *cfg = named_cfg("fn000", "r");
        char num[24];
        snprintf(num, sizeof num, "%ld", v);
        json_object_set_new(cfg, "Version", json_string(num));
        int rc = store_version_insert(s, "fn000", v, cfg, &e);
        json_decref(cfg);
        CHECK(rc == 0);
    }
    json_t *all = store_fn_list(s);
    int ok = json_array_size(all) == 230;
    for (size_t i = 0; ok && i < 230; i++) {
        char want[16];
        snprintf(want, sizeof want, "fn%03zu", i);
        ok = !strcmp(json_string_value(json_object_get(json_array_get(all, i), "FunctionName")),
                     want);
    }
    json_decref(all);
    CHECK(ok);
    CHECK(store_fn_count(s) == 230);
    json_t *vl = store_version_list(s, "fn000");
    ok = json_array_size(vl) == 12 &&
         !strcmp(json_string_value(json_object_get(json_array_get(vl, 1), "Version")), "2") &&
         !strcmp(json_string_value(json_object_get(json_array_get(vl, 11), "Version")), "12");
    json_decref(vl);
    CHECK(ok); /* numeric order: 2 after 1, 12 last */
    CHECK(store_last_version(s, "fn000") == 12);
    CHECK(store_total_code_size(s) == 242 * 10);
    store_close(s);
    rm_rf(TMP, NULL);
}

static int count_kv(const etcd_kv_t *kv, void *arg, err_t *err)
{
    (*(int *)arg)++;
    return 0;
}

static int count_keys(etcd_t *ec, const char *under)
{
    char *from = xasprintf("%s/%s/", PREFIX, under);
    char *to = etcd_prefix_end(from);
    int n = 0;
    err_t e = {0};
    if (etcd_range_pages(ec, from, to, 10, true, 0, NULL, count_kv, &n, NULL, &e) < 0)
        n = -1;
    free(from);
    free(to);
    return n;
}

static int etcd_put_raw(etcd_t *ec, const char *key, const void *val, size_t len, bool del)
{
    json_t *succ = json_pack("[o]", del ? etcd_op_delete(key, NULL) : etcd_op_put(key, val, len, 0));
    json_t *resp;
    bool ok;
    err_t e = {0};
    int rc = etcd_txn(ec, NULL, succ, NULL, &resp, &ok, &e);
    if (rc == 0)
        json_decref(resp);
    return rc;
}

/* Code travels as 512 KiB chunks: stored once, fetched into another data
 * dir with every hash checked; a missing or altered chunk is an error. */
static void test_etcd_chunks(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    etcd_t *ec = etcd_open(eps, "test", &e);
    CHECK(ec);
    /* 1.2 MiB that does not compress: 3 chunks */
    size_t big = 1200 * 1024;
    char *rnd = xmalloc(big);
    random_bytes(rnd, big);
    zent_t z[] = {{"bootstrap", "#!/bin/sh\n", 0, S_IFREG | 0755}, {"data.bin", rnd, big, 0}};
    size_t len;
    unsigned char *zip = zip_build(z, 2, &len);
    CHECK(len > 1024 * 1024 && len < 1536 * 1024);
    char hex[65], b64[45];
    CHECK(store_put_code(s, zip, len, hex, b64, &e) == 0);
    CHECK(count_keys(ec, "chunk") == 3 && count_keys(ec, "code") == 1);
    /* the same zip again (another function): nothing new */
    CHECK(store_put_code(s, zip, len, hex, b64, &e) == 0);
    CHECK(count_keys(ec, "chunk") == 3 && count_keys(ec, "code") == 1);

    /* another host: its own data dir */
    char other[300];
    snprintf(other, sizeof other, "%s/other", TMP);
    store_t *w = store_open_worker(SPEC, other, &e);
    CHECK(w);
    char *dir = NULL;
    CHECK(store_ensure_code(w, hex, &dir, &e) == 0);
    char *want = xasprintf("%s/code/%s", other, hex);
    int same_dir = !strcmp(dir, want);
    free(want);
    CHECK(same_dir);
    char *path = xasprintf("%s/data.bin", dir);
    size_t got_len = 0;
    char *got = read_file(path, 4 << 20, &got_len, &e);
    int same = got && got_len == big && !memcmp(got, rnd, big);
    free(got);
    free(path);
    free(dir);
    CHECK(same);
    CHECK((mode_of(other, "code") & S_IFDIR) && (mode_of(other, "blobs") & S_IFDIR));
    /* a second call finds it on disk (no etcd needed) */
    CHECK(store_ensure_code(w, hex, &dir, &e) == 0);
    free(dir);

    /* corrupt the first chunk: a fresh host refuses the code */
    json_t *m = NULL;
    etcd_kv_t kv;
    char *mkey = xasprintf("%s/code/%s", PREFIX, hex);
    CHECK(etcd_get(ec, mkey, &kv, NULL, &e) == 0 && kv.present);
    m = json_loadb((char *)kv.val, kv.vlen, 0, NULL);
    etcd_kv_free(&kv);
    free(mkey);
    const char *c0 = json_string_value(json_array_get(json_object_get(m, "chunks"), 0));
    CHECK(c0);
    char *ckey = xasprintf("%s/chunk/%s", PREFIX, c0);
    CHECK(etcd_get(ec, ckey, &kv, NULL, &e) == 0 && kv.present);
    kv.val[100] ^= 0x55;
    CHECK(etcd_put_raw(ec, ckey, kv.val, kv.vlen, false) == 0);
    etcd_kv_free(&kv);
    char third[300];
    snprintf(third, sizeof third, "%s/third", TMP);
    store_t *w3 = store_open_worker(SPEC, third, &e);
    CHECK(w3);
    CHECK(store_ensure_code(w3, hex, &dir, &e) < 0 && e.code == EIO && !dir);
    CHECK(strstr(e.msg, "corrupt"));
    /* nothing half-made is left: not the code dir, not the blob */
    char *tdir = xasprintf("%s/code/%s", third, hex), *tblob = xasprintf("%s/blobs/%s.zip", third, hex);
    int clean = access(tdir, F_OK) != 0 && access(tblob, F_OK) != 0;
    free(tdir);
    free(tblob);
    CHECK(clean);
    /* and a missing one */
    CHECK(etcd_put_raw(ec, ckey, NULL, 0, true) == 0);
    CHECK(store_ensure_code(w3, hex, &dir, &e) < 0 && e.code == EIO && strstr(e.msg, "missing"));
    free(ckey);
    json_decref(m);
    /* code nobody stored */
    CHECK(store_ensure_code(w3, "1111111111111111111111111111111111111111111111111111111111111111",
                            &dir, &e) < 0 && e.code == ENOENT);
    store_close(w3);
    store_close(w);
    store_close(s);
    etcd_close(ec);
    free(zip);
    free(rnd);
    rm_rf(TMP, NULL);
}

struct fetcher {
    char hex[65];
    int rc;
    char dir[512];
};

static void *fetch_main(void *arg)
{
    struct fetcher *f = arg;
    err_t e = {0};
    store_t *w = store_open_worker(SPEC, f->dir, &e);
    char *dir = NULL;
    f->rc = w ? store_ensure_code(w, f->hex, &dir, &e) : -1;
    if (f->rc < 0)
        printf("  fetch: %s\n", e.msg);
    free(dir);
    store_close(w);
    return NULL;
}

/* Four workers sharing one data dir ask for the same code at once: each
 * gets the whole tree, and no temp or lock file is left. */
static void test_etcd_concurrent_fetch(void)
{
    mktmp();
    err_t e = {0};
    store_t *s = open_store(TMP, &e);
    CHECK(s);
    size_t big = 700 * 1024;
    char *rnd = xmalloc(big);
    random_bytes(rnd, big);
    zent_t z[] = {{"bootstrap", "#!/bin/sh\n", 0, S_IFREG | 0755}, {"data.bin", rnd, big, 0}};
    size_t len;
    unsigned char *zip = zip_build(z, 2, &len);
    char hex[65], b64[45];
    CHECK(store_put_code(s, zip, len, hex, b64, &e) == 0);
    struct fetcher f[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        snprintf(f[i].hex, sizeof f[i].hex, "%s", hex);
        snprintf(f[i].dir, sizeof f[i].dir, "%s/shared", TMP);
        f[i].rc = -2;
        CHECK(pthread_create(&th[i], NULL, fetch_main, &f[i]) == 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++)
        CHECK(f[i].rc == 0);
    char *path = xasprintf("%s/shared/code/%s/data.bin", TMP, hex);
    size_t got_len = 0;
    char *got = read_file(path, 4 << 20, &got_len, &e);
    int same = got && got_len == big && !memcmp(got, rnd, big);
    free(got);
    free(path);
    CHECK(same);
    char *codedir = xasprintf("%s/shared/code", TMP);
    DIR *d = opendir(codedir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    free(codedir);
    CHECK(n == 1); /* only <hex>: no .tmp-*, no .lock-* */
    store_close(s);
    free(zip);
    free(rnd);
    rm_rf(TMP, NULL);
}

/* Each store case once on SQLite and once on etcd. */
#define BOTH(t)                                                                        \
    static void t##_sqlite(void) { BACKEND = "sqlite"; t(); }                          \
    static void t##_etcd(void) { BACKEND = "etcd"; t(); }
BOTH(test_parse_ref)
BOTH(test_store_crud_and_resolve)
BOTH(test_put_code_dedupe)
BOTH(test_schema_version)

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(test_codezip_good);
    RUN(test_codezip_hostile);
    RUN(test_open_spec);
    RUN(test_parse_ref_sqlite);
    RUN(test_store_crud_and_resolve_sqlite);
    RUN(test_put_code_dedupe_sqlite);
    RUN(test_schema_version_sqlite);

    const char *why = NULL;
    if (!have_etcd())
        why = "no etcd/etcdctl binary (apt-get install etcd-server etcd-client)";
    else if (find_script() < 0)
        why = "scripts/etcd-cluster.sh not found";
    else if (start_cluster() < 0) {
        printf("FAIL start_cluster: %s could not start a 3-member cluster\n", script);
        stop_cluster();
        return 1;
    }
    if (why) {
        SKIP(test_parse_ref_etcd, why);
        SKIP(test_store_crud_and_resolve_etcd, why);
        SKIP(test_put_code_dedupe_etcd, why);
        SKIP(test_schema_version_etcd, why);
        SKIP(test_etcd_conflict, why);
        SKIP(test_etcd_txn_own_writes, why);
        SKIP(test_etcd_read_then_write, why);
        SKIP(test_etcd_listing_pages, why);
        SKIP(test_etcd_chunks, why);
        SKIP(test_etcd_concurrent_fetch, why);
        CHECK_EXIT();
    }
    printf("# etcd cluster: %s (in %s)\n", eps, cdir);
    BACKEND = "etcd"; /* for the etcd-only cases (CHECK_ONLY may skip the others) */
    RUN(test_parse_ref_etcd);
    RUN(test_store_crud_and_resolve_etcd);
    RUN(test_put_code_dedupe_etcd);
    RUN(test_schema_version_etcd);
    BACKEND = "etcd";
    RUN(test_etcd_conflict);
    RUN(test_etcd_txn_own_writes);
    RUN(test_etcd_read_then_write);
    RUN(test_etcd_listing_pages);
    RUN(test_etcd_chunks);
    RUN(test_etcd_concurrent_fetch);
    stop_cluster();
    CHECK_EXIT();
}
