/* cmd_deploy.c - `flicker deploy NAME PATH`: package, then create or update.
 *
 * PATH is a directory (zipped in memory with libzip: sorted entries, fixed
 * timestamps, Unix modes kept so bootstrap stays executable) or a .zip file
 * (sent as is).  Runtime and handler come from the flags or are inferred
 * from the package's top-level files (cli_infer_runtime).
 *
 * Flow: CreateFunction (POST /2015-03-31/functions).  On 409 (exists):
 * UpdateFunctionCode (PUT .../code), then UpdateFunctionConfiguration
 * (PUT .../configuration) with runtime, handler and whatever flags were
 * given, retried while the server answers 409 (an update in progress).
 * Prints the resulting FunctionArn, Version and CodeSha256. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>
#include "cli/cli_internal.h"
#include "common/util.h"

#define MAX_FILE (256u << 20)       /* Lambda's unzipped limit is 250 MB */
#define ZIP_MTIME ((time_t)1577836800) /* 2020-01-01: equal trees, equal zips */
#define CONFIG_RETRIES 30

static const char DEPLOY_HELP[] =
    "usage: flicker deploy NAME PATH [options]\n"
    "\n"
    "Creates function NAME from PATH (a directory, zipped with modes kept, or a .zip\n"
    "file), or updates its code and configuration if it exists.\n"
    "\n"
    "  --runtime R     e.g. provided.al2023, python3.12, nodejs20.x (default: inferred:\n"
    "                  bootstrap -> provided.al2023, *.py -> python3.12, *.js/*.mjs -> nodejs20.x)\n"
    "  --handler H     default: lambda_function.lambda_handler / <file>.handler /\n"
    "                  index.handler / bootstrap\n"
    "  --memory MB     MemorySize (128-10240)\n"
    "  --timeout S     Timeout in seconds (1-900)\n"
    "  --env K=V       an environment variable (repeatable; replaces the whole set)\n"
    "  --endpoint URL  flicker endpoint (default $FLICKER_ENDPOINT or http://127.0.0.1:9000)\n";

/* ---------------------------------------------------------------- args */

static int parse_long(const char *s, const char *what, long *out, err_t *err)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v <= 0)
        return err_set(err, EINVAL, "%s must be a positive integer, not '%s'", what, s);
    *out = v;
    return 0;
}

int deploy_parse_args(int argc, char **argv, deploy_opts_t *o, err_t *err)
{
    static const struct option opts[] = {
        {"runtime", required_argument, 0, 'r'}, {"handler", required_argument, 0, 'H'},
        {"memory", required_argument, 0, 'm'},  {"timeout", required_argument, 0, 't'},
        {"env", required_argument, 0, 'e'},     {"endpoint", required_argument, 0, 'E'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    optind = 0; /* glibc: full re-initialization */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'r': o->runtime = optarg; break;
        case 'H': o->handler = optarg; break;
        case 'E': o->endpoint = optarg; break;
        case 'h': o->help = true; break;
        case 'm':
            if (parse_long(optarg, "--memory", &o->memory, err) < 0)
                goto fail;
            break;
        case 't':
            if (parse_long(optarg, "--timeout", &o->timeout, err) < 0)
                goto fail;
            break;
        case 'e':
            if (!strchr(optarg, '=') || optarg[0] == '=') {
                err_set(err, EINVAL, "--env wants KEY=VALUE, not '%s'", optarg);
                goto fail;
            }
            o->env = xrealloc(o->env, (o->n_env + 1) * sizeof *o->env);
            o->env[o->n_env++] = optarg;
            break;
        case ':':
            err_set(err, EINVAL, "deploy: %s wants a value", argv[optind - 1]);
            goto fail;
        default:
            err_set(err, EINVAL, "deploy: unknown option '%s'", argv[optind - 1]);
            goto fail;
        }
    }
    if (o->help)
        return 0;
    if (argc - optind != 2) {
        err_set(err, EINVAL, "deploy wants NAME and PATH (see flicker deploy --help)");
        goto fail;
    }
    o->name = argv[optind];
    o->path = argv[optind + 1];
    return 0;
fail:
    free(o->env);
    o->env = NULL;
    o->n_env = 0;
    return -1;
}

/* ------------------------------------------------------ runtime inference */

static bool has_name(const char *const *names, size_t n, const char *want)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(names[i], want))
            return true;
    return false;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a > b && !strcmp(s + a - b, suffix);
}

/* The first name (bytewise order) with one of the suffixes, or NULL. */
static const char *first_with(const char *const *names, size_t n, const char *s1, const char *s2)
{
    const char *best = NULL;
    for (size_t i = 0; i < n; i++)
        if ((ends_with(names[i], s1) || (s2 && ends_with(names[i], s2))) &&
            (!best || strcmp(names[i], best) < 0))
            best = names[i];
    return best;
}

static char *stem_handler(const char *file, const char *fn)
{
    const char *dot = strrchr(file, '.');
    return xasprintf("%.*s.%s", (int)(dot - file), file, fn);
}

/* Tries one family; returns true and fills the outputs when it fits. */
static bool try_family(const char *family, const char *const *names, size_t n, char **runtime,
                       char **handler)
{
    if (!strcmp(family, "provided")) {
        if (!has_name(names, n, "bootstrap"))
            return false;
        *runtime = xstrdup("provided.al2023");
        *handler = xstrdup("bootstrap");
        return true;
    }
    if (!strcmp(family, "python")) {
        const char *py = first_with(names, n, ".py", NULL);
        if (!py)
            return false;
        *runtime = xstrdup("python3.12");
        *handler = has_name(names, n, "lambda_function.py") ? xstrdup("lambda_function.lambda_handler")
                                                            : stem_handler(py, "handler");
        return true;
    }
    if (!strcmp(family, "nodejs")) {
        const char *js = first_with(names, n, ".js", ".mjs");
        if (!js)
            return false;
        *runtime = xstrdup("nodejs20.x");
        *handler = has_name(names, n, "index.js") || has_name(names, n, "index.mjs")
                       ? xstrdup("index.handler")
                       : stem_handler(js, "handler");
        return true;
    }
    return false;
}

int cli_infer_runtime(const char *const *names, size_t n, const char *runtime_in,
                      const char *handler_in, char **runtime, char **handler, err_t *err)
{
    static const char *families[] = {"provided", "python", "nodejs"};
    char *r = NULL, *h = NULL;
    if (runtime_in && handler_in) {
        r = xstrdup(runtime_in);
        h = xstrdup(handler_in);
    } else if (runtime_in) {
        for (size_t i = 0; i < ARRAY_LEN(families) && !r; i++)
            if (!strncmp(runtime_in, families[i], strlen(families[i])) &&
                try_family(families[i], names, n, &r, &h)) {
                free(r);
                r = xstrdup(runtime_in);
            }
        if (!r && !strncmp(runtime_in, "provided", 8)) {
            r = xstrdup(runtime_in); /* a custom runtime may live in a layer */
            h = xstrdup("bootstrap");
        }
        if (!r)
            return err_set(err, EINVAL, "cannot infer a handler for runtime %s from the package: pass --handler",
                           runtime_in);
    } else {
        for (size_t i = 0; i < ARRAY_LEN(families) && !r; i++)
            try_family(families[i], names, n, &r, &h);
        if (!r)
            return err_set(err, EINVAL,
                           "cannot infer the runtime: no bootstrap, *.py or *.js/*.mjs at the top "
                           "of the package (pass --runtime and --handler)");
        if (handler_in) {
            free(h);
            h = xstrdup(handler_in);
        }
    }
    *runtime = r;
    *handler = h;
    return 0;
}

/* ------------------------------------------------------------------- zip */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void cli_free_names(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* Reads directory entries (without . and ..), sorted. */
static int list_dir(const char *dir, char ***out, size_t *n, err_t *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return err_sys(err, "opendir %s", dir);
    char **names = NULL;
    size_t k = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        names = xrealloc(names, (k + 1) * sizeof *names);
        names[k++] = xstrdup(e->d_name);
    }
    closedir(d);
    if (k)
        qsort(names, k, sizeof *names, cmp_names);
    *out = names;
    *n = k;
    return 0;
}

static int set_attrs(zip_t *za, zip_int64_t idx, mode_t mode, err_t *err)
{
    if (zip_file_set_external_attributes(za, (zip_uint64_t)idx, 0, ZIP_OPSYS_UNIX, (zip_uint32_t)mode << 16) < 0 ||
        zip_file_set_mtime(za, (zip_uint64_t)idx, ZIP_MTIME, 0) < 0)
        return err_set(err, EIO, "zip: %s", zip_strerror(za));
    return 0;
}

/* Adds dir/rel recursively; rel is "" or ends with '/'. */
static int add_tree(zip_t *za, const char *root, const char *rel, int depth, err_t *err)
{
    if (depth > 64)
        return err_set(err, ELOOP, "%s/%s: directories nested too deeply", root, rel);
    char *dir = xasprintf("%s/%s", root, rel);
    char **names = NULL;
    size_t n = 0;
    int rc = list_dir(dir, &names, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char *full = xasprintf("%s%s", dir, names[i]);
        char *entry = xasprintf("%s%s", rel, names[i]);
        struct stat st;
        if (lstat(full, &st) < 0) {
            rc = err_sys(err, "lstat %s", full);
        } else if (S_ISLNK(st.st_mode) && stat(full, &st) < 0) {
            /* dangling symlink: skip */
        } else if (S_ISDIR(st.st_mode)) {
            struct stat lst;
            if (lstat(full, &lst) == 0 && !S_ISLNK(lst.st_mode)) {
                char *sub = xasprintf("%s/", entry);
                zip_int64_t idx = zip_dir_add(za, sub, ZIP_FL_ENC_GUESS);
                if (idx < 0)
                    rc = err_set(err, EIO, "zip %s: %s", sub, zip_strerror(za));
                else if ((rc = set_attrs(za, idx, S_IFDIR | (st.st_mode & 0777), err)) == 0)
                    rc = add_tree(za, root, sub, depth + 1, err);
                free(sub);
            }
        } else if (S_ISREG(st.st_mode)) {
            size_t len = 0;
            char *data = read_file(full, MAX_FILE, &len, err);
            if (!data) {
                rc = -1;
            } else {
                zip_source_t *src = zip_source_buffer(za, data, len, 1); /* libzip frees data */
                zip_int64_t idx = src ? zip_file_add(za, entry, src, ZIP_FL_ENC_GUESS) : -1;
                if (idx < 0) {
                    if (src)
                        zip_source_free(src);
                    else
                        free(data);
                    rc = err_set(err, EIO, "zip %s: %s", entry, zip_strerror(za));
                } else {
                    rc = set_attrs(za, idx, S_IFREG | (st.st_mode & 0777), err);
                }
            }
        } /* sockets, fifos, devices: skipped */
        free(full);
        free(entry);
    }
    cli_free_names(names, n);
    free(dir);
    return rc;
}

int cli_zip_dir(const char *dir, void **zip, size_t *len, err_t *err)
{
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(NULL, 0, 0, &ze);
    if (!src) {
        err_set(err, ENOMEM, "zip: %s", zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return -1;
    }
    zip_t *za = zip_open_from_source(src, ZIP_TRUNCATE, &ze);
    if (!za) {
        err_set(err, EIO, "zip: %s", zip_error_strerror(&ze));
        zip_source_free(src);
        zip_error_fini(&ze);
        return -1;
    }
    zip_error_fini(&ze);
    zip_source_keep(src);
    if (add_tree(za, dir, "", 0, err) < 0) {
        zip_discard(za);
        zip_source_free(src);
        return err_wrap(err, "packaging %s", dir);
    }
    if (zip_get_num_entries(za, 0) == 0) {
        zip_discard(za);
        zip_source_free(src);
        return err_set(err, EINVAL, "packaging %s: no files", dir);
    }
    if (zip_close(za) < 0) {
        err_set(err, EIO, "zip: %s", zip_strerror(za));
        zip_discard(za);
        zip_source_free(src);
        return -1;
    }
    /* The archive is now the source's buffer: copy it out. */
    zip_stat_t st;
    int rc = -1;
    if (zip_source_open(src) < 0) {
        err_set(err, EIO, "zip: %s", zip_error_strerror(zip_source_error(src)));
        goto out;
    }
    zip_stat_init(&st);
    if (zip_source_stat(src, &st) < 0 || !(st.valid & ZIP_STAT_SIZE)) {
        err_set(err, EIO, "zip: cannot size the archive");
        zip_source_close(src);
        goto out;
    }
    void *buf = xmalloc(st.size ? st.size : 1);
    zip_int64_t got = zip_source_read(src, buf, st.size);
    zip_source_close(src);
    if (got < 0 || (zip_uint64_t)got != st.size) {
        free(buf);
        err_set(err, EIO, "zip: short read");
        goto out;
    }
    *zip = buf;
    *len = st.size;
    rc = 0;
out:
    zip_source_free(src);
    return rc;
}

int cli_zip_top_names(const void *zip, size_t len, char ***names, size_t *n, err_t *err)
{
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(zip, len, 0, &ze);
    zip_t *za = src ? zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze) : NULL;
    if (!za) {
        err_set(err, EINVAL, "not a valid zip file: %s", zip_error_strerror(&ze));
        if (src)
            zip_source_free(src);
        zip_error_fini(&ze);
        return -1;
    }
    zip_error_fini(&ze);
    char **out = NULL;
    size_t k = 0;
    zip_int64_t total = zip_get_num_entries(za, 0);
    for (zip_int64_t i = 0; i < total; i++) {
        const char *name = zip_get_name(za, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        if (!name || !*name || strchr(name, '/'))
            continue; /* only top-level files matter for inference */
        out = xrealloc(out, (k + 1) * sizeof *out);
        out[k++] = xstrdup(name);
    }
    zip_discard(za); /* frees src too */
    *names = out;
    *n = k;
    return 0;
}

/* Top-level regular files (or symlinks to them) of a directory. */
static int dir_top_names(const char *dir, char ***names, size_t *n, err_t *err)
{
    char **all = NULL;
    size_t k = 0, m = 0;
    if (list_dir(dir, &all, &k, err) < 0)
        return -1;
    char **out = xcalloc(k ? k : 1, sizeof *out);
    for (size_t i = 0; i < k; i++) {
        char *full = xasprintf("%s/%s", dir, all[i]);
        struct stat st;
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode))
            out[m++] = xstrdup(all[i]);
        free(full);
    }
    cli_free_names(all, k);
    *names = out;
    *n = m;
    return 0;
}

/* ------------------------------------------------------------- command */

static void print_result(const char *verb, const char *name, const cli_resp_t *r)
{
    json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
    const char *arn = json_string_value(json_object_get(j, "FunctionArn"));
    const char *ver = json_string_value(json_object_get(j, "Version"));
    const char *sha = json_string_value(json_object_get(j, "CodeSha256"));
    const char *state = json_string_value(json_object_get(j, "State"));
    printf("%s %s\n", verb, name);
    printf("FunctionArn: %s\n", arn ? arn : "?");
    printf("Version:     %s\n", ver ? ver : "?");
    printf("CodeSha256:  %s\n", sha ? sha : "?");
    if (state)
        printf("State:       %s\n", state);
    json_decref(j);
}

static json_t *env_object(const deploy_opts_t *o)
{
    json_t *vars = json_object();
    for (size_t i = 0; i < o->n_env; i++) {
        const char *eq = strchr(o->env[i], '=');
        char *k = xstrndup(o->env[i], (size_t)(eq - o->env[i]));
        json_object_set_new(vars, k, json_string(eq + 1));
        free(k);
    }
    return json_pack("{s:o}", "Variables", vars);
}

/* Sends a JSON body; returns 0 with *resp, or -1/err. */
static int send_json(cli_ctx_t *c, const char *method, const char *path, json_t *body, cli_resp_t *resp,
                     err_t *err)
{
    char *text = json_dumps(body, JSON_COMPACT);
    if (!text)
        return err_set(err, EINVAL, "cannot encode the request");
    cli_header_t h[] = {{"Content-Type", "application/json"}};
    int rc = cli_request(c, method, path, NULL, h, 1, text, strlen(text), resp, err);
    free(text);
    return rc;
}

static int package(const deploy_opts_t *o, void **zip, size_t *len, char **runtime, char **handler, err_t *err)
{
    struct stat st;
    char **names = NULL;
    size_t n = 0;
    if (stat(o->path, &st) < 0)
        return err_sys(err, "%s", o->path);
    if (S_ISDIR(st.st_mode)) {
        if (dir_top_names(o->path, &names, &n, err) < 0)
            return -1;
        if (cli_infer_runtime((const char *const *)names, n, o->runtime, o->handler, runtime, handler, err) < 0) {
            cli_free_names(names, n);
            return -1;
        }
        cli_free_names(names, n);
        if (cli_zip_dir(o->path, zip, len, err) < 0)
            goto fail;
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return err_set(err, EINVAL, "%s: not a directory or a .zip file", o->path);
    *zip = read_file(o->path, 256u << 20, len, err);
    if (!*zip)
        return -1;
    if (cli_zip_top_names(*zip, *len, &names, &n, err) < 0) {
        free(*zip);
        *zip = NULL;
        return err_wrap(err, "%s", o->path);
    }
    int rc = cli_infer_runtime((const char *const *)names, n, o->runtime, o->handler, runtime, handler, err);
    cli_free_names(names, n);
    if (rc < 0) {
        free(*zip);
        *zip = NULL;
        return -1;
    }
    return 0;
fail:
    free(*runtime);
    free(*handler);
    *runtime = *handler = NULL;
    return -1;
}

static int deploy(cli_ctx_t *c, const deploy_opts_t *o, const char *b64, const char *runtime,
                  const char *handler, err_t *err)
{
    cli_resp_t r;
    json_t *body = json_pack("{s:s,s:s,s:s,s:s,s:s,s:{s:s}}", "FunctionName", o->name, "Runtime", runtime,
                             "Handler", handler, "Role", CLI_ROLE, "PackageType", "Zip", "Code", "ZipFile", b64);
    if (o->memory)
        json_object_set_new(body, "MemorySize", json_integer(o->memory));
    if (o->timeout)
        json_object_set_new(body, "Timeout", json_integer(o->timeout));
    if (o->n_env)
        json_object_set_new(body, "Environment", env_object(o));
    int rc = send_json(c, "POST", "/2015-03-31/functions", body, &r, err);
    json_decref(body);
    if (rc < 0)
        return cli_fail(err);
    if (r.status == 201 || r.status == 200) {
        print_result("created", o->name, &r);
        cli_resp_free(&r);
        return 0;
    }
    if (r.status != 409) {
        cli_print_error(&r);
        cli_resp_free(&r);
        return 1;
    }
    cli_resp_free(&r);

    /* It exists: new code, then configuration. */
    char *enc = cli_encode(o->name);
    char *code_path = xasprintf("/2015-03-31/functions/%s/code", enc);
    char *conf_path = xasprintf("/2015-03-31/functions/%s/configuration", enc);
    free(enc);
    int status = 1;
    body = json_pack("{s:s}", "ZipFile", b64);
    rc = send_json(c, "PUT", code_path, body, &r, err);
    json_decref(body);
    if (rc < 0) {
        status = cli_fail(err);
        goto out;
    }
    if (r.status != 200) {
        cli_print_error(&r);
        cli_resp_free(&r);
        goto out;
    }
    cli_resp_free(&r);

    body = json_pack("{s:s,s:s}", "Runtime", runtime, "Handler", handler);
    if (o->memory)
        json_object_set_new(body, "MemorySize", json_integer(o->memory));
    if (o->timeout)
        json_object_set_new(body, "Timeout", json_integer(o->timeout));
    if (o->n_env)
        json_object_set_new(body, "Environment", env_object(o));
    for (int attempt = 0;; attempt++) {
        rc = send_json(c, "PUT", conf_path, body, &r, err);
        if (rc < 0) {
            status = cli_fail(err);
            break;
        }
        if (r.status == 409 && attempt < CONFIG_RETRIES) { /* the code update is still in progress */
            cli_resp_free(&r);
            usleep(500 * 1000);
            continue;
        }
        if (r.status == 200) {
            print_result("updated", o->name, &r);
            status = 0;
        } else {
            cli_print_error(&r);
        }
        cli_resp_free(&r);
        break;
    }
    json_decref(body);
out:
    free(code_path);
    free(conf_path);
    return status;
}

int cmd_deploy(int argc, char **argv)
{
    deploy_opts_t o;
    err_t err = {0};
    if (deploy_parse_args(argc, argv, &o, &err) < 0) {
        fprintf(stderr, "flicker: %s\n", err.msg);
        return 2;
    }
    if (o.help) {
        fputs(DEPLOY_HELP, stdout);
        free(o.env);
        return 0;
    }
    int status = 1;
    void *zip = NULL;
    size_t len = 0;
    char *runtime = NULL, *handler = NULL, *b64 = NULL;
    cli_ctx_t c;
    if (cli_ctx_init(&c, o.endpoint, &err) < 0) {
        status = cli_fail(&err);
        goto out_opts;
    }
    if (package(&o, &zip, &len, &runtime, &handler, &err) < 0) {
        status = cli_fail(&err);
        goto out;
    }
    b64 = base64_encode(zip, len);
    free(zip);
    fprintf(stderr, "deploying %s: %zu-byte zip, %s, handler %s\n", o.name, len, runtime, handler);
    status = deploy(&c, &o, b64, runtime, handler, &err);
out:
    free(b64);
    free(runtime);
    free(handler);
    cli_ctx_free(&c);
out_opts:
    free(o.env);
    return status;
}
