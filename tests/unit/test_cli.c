/* test_cli.c - the CLI's pure parts: argument parsing, runtime inference,
 * zip building (the executable bit survives, output is deterministic),
 * endpoint/credential discovery, encoding, the status outline.  One test
 * runs cli_request against an in-process libevent HTTP server that checks
 * the signature with sigv4_verify, the way the frontend does; integration
 * tests drive the real binary against the real platform. */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zip.h>
#include "check.h"
#include "cli/cli.h"
#include "cli/cli_internal.h"
#include "common/sigv4.h"
#include "common/util.h"

/* ------------------------------------------------------------ inference */

static int infer(const char *const *names, size_t n, const char *rt, const char *h, char **r, char **hh)
{
    return cli_infer_runtime(names, n, rt, h, r, hh, NULL);
}

#define EXPECT_INFER(names, rt_in, h_in, want_rt, want_h)                                      \
    do {                                                                                       \
        char *r_ = NULL, *h_ = NULL;                                                           \
        CHECK(infer(names, ARRAY_LEN(names), rt_in, h_in, &r_, &h_) == 0);                     \
        int ok_ = !strcmp(r_, want_rt) && !strcmp(h_, want_h);                                 \
        if (!ok_)                                                                              \
            printf("  got %s / %s\n", r_, h_);                                                 \
        free(r_);                                                                              \
        free(h_);                                                                              \
        CHECK(ok_);                                                                            \
    } while (0)

static void test_infer_runtime(void)
{
    const char *boot[] = {"README.md", "bootstrap", "x.py"};
    EXPECT_INFER(boot, NULL, NULL, "provided.al2023", "bootstrap");
    const char *lf[] = {"app.py", "lambda_function.py", "util.py"};
    EXPECT_INFER(lf, NULL, NULL, "python3.12", "lambda_function.lambda_handler");
    const char *py[] = {"util.py", "app.py", "requirements.txt"};
    EXPECT_INFER(py, NULL, NULL, "python3.12", "app.handler");
    const char *js[] = {"package.json", "index.mjs", "lib.js"};
    EXPECT_INFER(js, NULL, NULL, "nodejs20.x", "index.handler");
    const char *js2[] = {"main.js", "zz.mjs"};
    EXPECT_INFER(js2, NULL, NULL, "nodejs20.x", "main.handler");
    /* given runtime narrows the family, given handler wins */
    EXPECT_INFER(boot, "python3.11", NULL, "python3.11", "x.handler");
    EXPECT_INFER(boot, NULL, "my.fn", "provided.al2023", "my.fn");
    EXPECT_INFER(boot, "java21", "com.Example::handle", "java21", "com.Example::handle");
    const char *none[] = {"README.md"};
    EXPECT_INFER(none, "provided.al2", NULL, "provided.al2", "bootstrap");
    char *r = NULL, *h = NULL;
    err_t err = {0};
    CHECK(cli_infer_runtime(none, 1, NULL, NULL, &r, &h, &err) == -1);
    CHECK(strstr(err.msg, "cannot infer the runtime"));
    CHECK(cli_infer_runtime(none, 1, "java21", NULL, &r, &h, &err) == -1);
    CHECK(strstr(err.msg, "--handler"));
    CHECK(cli_infer_runtime(none, 0, NULL, NULL, &r, &h, &err) == -1);
    /* "x.pyc" and ".py" alone are not Python sources */
    const char *odd[] = {"x.pyc", ".py"};
    CHECK(cli_infer_runtime(odd, 2, NULL, NULL, &r, &h, &err) == -1);
}

/* ------------------------------------------------------------------ zip */

static char tmpdir[64];

static void write_text(const char *rel, const char *text, mode_t mode)
{
    char *p = xasprintf("%s/%s", tmpdir, rel);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
    chmod(p, mode);
    free(p);
}

static void make_tree(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/flicker-test-cli-XXXXXX");
    if (!mkdtemp(tmpdir))
        abort();
    write_text("bootstrap", "#!/bin/sh\necho hi\n", 0755);
    write_text("data.txt", "data\n", 0644);
    char *sub = xasprintf("%s/lib", tmpdir);
    mkdir(sub, 0755);
    free(sub);
    write_text("lib/tool", "#!/bin/sh\n", 0700);
    write_text("lib/mod.py", "x = 1\n", 0644);
    char *link = xasprintf("%s/loop", tmpdir);
    if (symlink(".", link) < 0) /* a symlinked directory must not recurse */
        abort();
    free(link);
}

/* Mode of entry `name` in the zip, or -1. */
static long entry_mode(zip_t *za, const char *name)
{
    zip_int64_t i = zip_name_locate(za, name, 0);
    zip_uint8_t os;
    zip_uint32_t attr;
    if (i < 0 || zip_file_get_external_attributes(za, (zip_uint64_t)i, 0, &os, &attr) < 0 ||
        os != ZIP_OPSYS_UNIX)
        return -1;
    return (long)(attr >> 16);
}

static char *entry_text(zip_t *za, const char *name)
{
    zip_file_t *f = zip_fopen(za, name, 0);
    if (!f)
        return NULL;
    char buf[256];
    zip_int64_t n = zip_fread(f, buf, sizeof buf - 1);
    zip_fclose(f);
    if (n < 0)
        return NULL;
    return xstrndup(buf, (size_t)n);
}

static void test_zip_dir_keeps_modes(void)
{
    void *zip = NULL, *zip2 = NULL;
    size_t len = 0, len2 = 0;
    err_t err = {0};
    CHECK(cli_zip_dir(tmpdir, &zip, &len, &err) == 0);
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(zip, len, 0, &ze);
    zip_t *za = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
    zip_error_fini(&ze);
    CHECK(za);
    long m_boot = entry_mode(za, "bootstrap"), m_data = entry_mode(za, "data.txt"),
         m_tool = entry_mode(za, "lib/tool"), m_dir = entry_mode(za, "lib/");
    char *text = entry_text(za, "bootstrap");
    zip_int64_t loop = zip_name_locate(za, "loop/bootstrap", 0);
    zip_int64_t count = zip_get_num_entries(za, 0);
    zip_discard(za);
    int text_ok = text && !strcmp(text, "#!/bin/sh\necho hi\n");
    free(text);
    CHECK(m_boot == (S_IFREG | 0755));
    CHECK(m_data == (S_IFREG | 0644));
    CHECK(m_tool == (S_IFREG | 0700));
    CHECK(m_dir == (S_IFDIR | 0755));
    CHECK(text_ok);
    CHECK(loop < 0);
    CHECK(count == 5); /* bootstrap, data.txt, lib/, lib/mod.py, lib/tool */

    /* Same tree, same bytes (sorted entries, fixed timestamps). */
    CHECK(cli_zip_dir(tmpdir, &zip2, &len2, &err) == 0);
    int same = len == len2 && !memcmp(zip, zip2, len);
    free(zip2);

    /* Top-level names of the built zip. */
    char **names = NULL;
    size_t n = 0;
    CHECK(cli_zip_top_names(zip, len, &names, &n, &err) == 0);
    int names_ok = n == 2 && !strcmp(names[0], "bootstrap") && !strcmp(names[1], "data.txt");
    cli_free_names(names, n);
    free(zip);
    CHECK(same);
    CHECK(names_ok);

    CHECK(cli_zip_top_names("not a zip at all", 16, &names, &n, &err) == -1);
    CHECK(cli_zip_dir("/nonexistent/flicker", &zip, &len, &err) == -1);
}

/* ----------------------------------------------------------------- args */

static void test_deploy_args(void)
{
    deploy_opts_t o;
    err_t err = {0};
    char *a1[] = {"deploy", "fn", "--runtime", "python3.12", "./src", "--env", "A=1", "--memory=256",
                  "--env", "B=x=y", "--timeout", "30", "--handler", "m.h", "--endpoint", "http://h:1", NULL};
    CHECK(deploy_parse_args(16, a1, &o, &err) == 0);
    int ok = !strcmp(o.name, "fn") && !strcmp(o.path, "./src") && !strcmp(o.runtime, "python3.12") &&
             !strcmp(o.handler, "m.h") && o.memory == 256 && o.timeout == 30 && o.n_env == 2 &&
             !strcmp(o.env[0], "A=1") && !strcmp(o.env[1], "B=x=y") && !strcmp(o.endpoint, "http://h:1");
    free(o.env);
    CHECK(ok);

    char *a2[] = {"deploy", "fn", NULL};
    CHECK(deploy_parse_args(2, a2, &o, &err) == -1);
    char *a3[] = {"deploy", "fn", "dir", "--memory", "lots", NULL};
    CHECK(deploy_parse_args(5, a3, &o, &err) == -1);
    CHECK(strstr(err.msg, "--memory"));
    char *a4[] = {"deploy", "fn", "dir", "--env", "NOEQUALS", NULL};
    CHECK(deploy_parse_args(5, a4, &o, &err) == -1);
    char *a5[] = {"deploy", "fn", "dir", "--bogus", NULL};
    CHECK(deploy_parse_args(4, a5, &o, &err) == -1);
    CHECK(strstr(err.msg, "--bogus"));
    char *a6[] = {"deploy", "fn", "dir", "--timeout", NULL};
    CHECK(deploy_parse_args(4, a6, &o, &err) == -1);
    CHECK(strstr(err.msg, "wants a value"));
    char *a7[] = {"deploy", "--help", NULL};
    CHECK(deploy_parse_args(2, a7, &o, &err) == 0 && o.help);
    free(o.env);
    char *a8[] = {"deploy", "a", "b", "c", NULL};
    CHECK(deploy_parse_args(4, a8, &o, &err) == -1);
}

static void test_invoke_args(void)
{
    invoke_opts_t o;
    err_t err = {0};
    char *a1[] = {"invoke", "--tail", "fn:prod", "{\"a\": 1}", "--qualifier", "3", NULL};
    CHECK(invoke_parse_args(6, a1, &o, &err) == 0);
    CHECK(o.tail && !o.event && !o.dry_run);
    CHECK_STR(o.name, "fn:prod");
    CHECK_STR(o.payload, "{\"a\": 1}");
    CHECK_STR(o.qualifier, "3");
    char *a2[] = {"invoke", "fn", "--payload-file", "-", "--event", NULL};
    CHECK(invoke_parse_args(5, a2, &o, &err) == 0);
    CHECK(o.event && !o.payload && !strcmp(o.payload_file, "-"));
    char *a3[] = {"invoke", "fn", "{}", "--payload-file", "x", NULL};
    CHECK(invoke_parse_args(5, a3, &o, &err) == -1);
    char *a4[] = {"invoke", "fn", "--event", "--dry-run", NULL};
    CHECK(invoke_parse_args(4, a4, &o, &err) == -1);
    char *a5[] = {"invoke", NULL};
    CHECK(invoke_parse_args(1, a5, &o, &err) == -1);
    char *a6[] = {"invoke", "fn", "--", "-1", NULL}; /* a JSON number payload */
    CHECK(invoke_parse_args(4, a6, &o, &err) == 0);
    CHECK_STR(o.payload, "-1");
}

/* ------------------------------------------------------------ discovery */

static void test_endpoint(void)
{
    char *e = NULL, *h = NULL;
    CHECK(cli_parse_endpoint("http://127.0.0.1:9000/", &e, &h, NULL) == 0);
    int ok = !strcmp(e, "http://127.0.0.1:9000") && !strcmp(h, "127.0.0.1:9000");
    free(e);
    free(h);
    CHECK(ok);
    CHECK(cli_parse_endpoint("https://lambda.example.com", &e, &h, NULL) == 0);
    ok = !strcmp(e, "https://lambda.example.com") && !strcmp(h, "lambda.example.com");
    free(e);
    free(h);
    CHECK(ok);
    CHECK(cli_parse_endpoint("ftp://x", &e, &h, NULL) == -1);
    CHECK(cli_parse_endpoint("127.0.0.1:9000", &e, &h, NULL) == -1);
    CHECK(cli_parse_endpoint("http://x/path", &e, &h, NULL) == -1);
    CHECK(cli_parse_endpoint("http://u:p@x", &e, &h, NULL) == -1);
    CHECK(cli_parse_endpoint("http://", &e, &h, NULL) == -1);
}

static void test_credentials_text(void)
{
    char *a = NULL, *s = NULL;
    CHECK(cli_parse_credentials("[other]\naws_access_key_id = NO\naws_secret_access_key = NO\n"
                                "[default]\n  aws_access_key_id=AKIA1 \r\n# c\naws_secret_access_key =  s/+=  \n",
                                &a, &s) == 0);
    int ok = !strcmp(a, "AKIA1") && !strcmp(s, "s/+=");
    free(a);
    free(s);
    CHECK(ok);
    CHECK(cli_parse_credentials("[other]\naws_access_key_id=A\naws_secret_access_key=B\n", &a, &s) == -1);
    CHECK(cli_parse_credentials("aws_access_key_id=A\n", &a, &s) == -1);
}

static void clear_env(void)
{
    const char *vars[] = {"FLICKER_ENDPOINT", "FLICKER_ACCESS_KEY_ID", "FLICKER_SECRET_ACCESS_KEY",
                          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                          "AWS_DEFAULT_REGION", "FLICKER_DATA"};
    for (size_t i = 0; i < ARRAY_LEN(vars); i++)
        unsetenv(vars[i]);
}

static void test_ctx_discovery(void)
{
    cli_ctx_t c;
    err_t err = {0};
    clear_env();
    setenv("FLICKER_DATA", tmpdir, 1);
    write_text("credentials", "[default]\naws_access_key_id = AKFILE\naws_secret_access_key = sfile\n", 0600);
    CHECK(cli_ctx_init(&c, NULL, &err) == 0);
    int ok = !strcmp(c.endpoint, "http://127.0.0.1:9000") && !strcmp(c.akid, "AKFILE") &&
             !strcmp(c.secret, "sfile") && !strcmp(c.region, "us-east-1");
    cli_ctx_free(&c);
    CHECK(ok);

    setenv("AWS_ACCESS_KEY_ID", "AKAWS", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "saws", 1);
    setenv("AWS_DEFAULT_REGION", "eu-west-1", 1);
    setenv("FLICKER_ENDPOINT", "http://10.0.0.1:9999", 1);
    CHECK(cli_ctx_init(&c, NULL, &err) == 0);
    ok = !strcmp(c.akid, "AKAWS") && !strcmp(c.region, "eu-west-1") && !strcmp(c.host, "10.0.0.1:9999");
    cli_ctx_free(&c);
    CHECK(ok);

    setenv("FLICKER_ACCESS_KEY_ID", "AKFL", 1);
    setenv("FLICKER_SECRET_ACCESS_KEY", "sfl", 1);
    setenv("AWS_REGION", "ap-south-1", 1);
    CHECK(cli_ctx_init(&c, "http://localhost:1", &err) == 0);
    ok = !strcmp(c.akid, "AKFL") && !strcmp(c.secret, "sfl") && !strcmp(c.region, "ap-south-1") &&
         !strcmp(c.endpoint, "http://localhost:1");
    cli_ctx_free(&c);
    CHECK(ok);

    /* Only half a pair in the environment falls through to the file. */
    clear_env();
    setenv("FLICKER_ACCESS_KEY_ID", "AKHALF", 1);
    setenv("FLICKER_DATA", "/nonexistent/flicker", 1);
    CHECK(cli_ctx_init(&c, NULL, &err) == -1);
    CHECK(strstr(err.msg, "no credentials"));
    clear_env();
    CHECK(cli_ctx_init(&c, "nonsense", &err) == -1);
}

static void test_encode(void)
{
    char *e = cli_encode("arn:aws:lambda:us-east-1:0:function:f/$LATEST ~_.-");
    CHECK_STR(e, "arn%3Aaws%3Alambda%3Aus-east-1%3A0%3Afunction%3Af%2F%24LATEST%20~_.-");
    free(e);
}

static void test_status_outline(void)
{
    json_t *j = json_loads("{\"version\":\"0.1.0\",\"uptime_s\":12,\"auth\":true,"
                           "\"assignment\":{\"environments\":[{\"function\":\"f\",\"state\":\"idle\"}],"
                           "\"by_state\":{\"idle\":1}},\"tags\":[\"a\",\"b\"],\"empty\":[]}",
                           JSON_PRESERVE_ORDER, NULL);
    CHECK(j);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cli_print_status(f, j);
    fclose(f);
    json_decref(j);
    const char *want = "version: 0.1.0\n"
                       "uptime_s: 12\n"
                       "auth: yes\n"
                       "assignment:\n"
                       "  environments:\n"
                       "    - function: f\n"
                       "      state: idle\n"
                       "  by_state:\n"
                       "    idle: 1\n"
                       "tags: a, b\n"
                       "empty: none\n";
    int ok = !strcmp(buf, want);
    if (!ok)
        printf("  got:\n%s", buf);
    free(buf);
    CHECK(ok);
}

static void test_dispatch(void)
{
    char *argv[] = {"nope", NULL};
    CHECK(cli_run("nope", 1, argv) == -1);
    char *bad[] = {"invoke", NULL}; /* usage error, before any network */
    CHECK(cli_run("invoke", 1, bad) == 2);
}

/* ------------------------------------------------- cli_request on the wire */

static struct event_base *srv_base;
static int srv_port;
static enum sigv4_result srv_rc[8];
static int srv_n;

static const char *srv_secret(const char *akid, void *arg)
{
    (void)arg;
    return !strcmp(akid, "AKWIRE") ? "wire/secret+" : NULL;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    const char *uri = evhttp_request_get_uri(req);
    const char *q = strchr(uri, '?');
    char *path = q ? xstrndup(uri, (size_t)(q - uri)) : xstrdup(uri);
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    sigv4_header_t h[32];
    size_t n = 0;
    for (struct evkeyval *kv = in->tqh_first; kv && n < 32; kv = kv->next.tqe_next)
        h[n++] = (sigv4_header_t){kv->key, kv->value};
    struct evbuffer *body = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(body);
    const char *method = evhttp_request_get_command(req) == EVHTTP_REQ_GET ? "GET" : "POST";
    sigv4_request_t sr = {method, path, q ? q + 1 : NULL, h, n,
                          len ? (const char *)evbuffer_pullup(body, -1) : "", len};
    char msg[256];
    enum sigv4_result rc = sigv4_verify(&sr, srv_secret, NULL, (int64_t)time(NULL), msg, sizeof msg);
    if (srv_n < 8)
        srv_rc[srv_n++] = rc;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    struct evbuffer *reply = evbuffer_new();
    if (rc != SIGV4_OK) {
        evhttp_add_header(out, "x-amzn-ErrorType", sigv4_error_type(rc));
        evbuffer_add_printf(reply, "{\"message\":\"%s\"}", msg);
        evhttp_send_reply(req, 403, "Forbidden", reply);
    } else if (strstr(path, "/invocations")) {
        evhttp_add_header(out, "X-Amz-Function-Error", "Unhandled");
        evhttp_add_header(out, "X-Amz-Log-Result", "bG9nIGxpbmUK"); /* "log line\n" */
        evbuffer_add_printf(reply, "{\"errorMessage\":\"%.*s\"}", (int)len, (const char *)sr.body);
        evhttp_send_reply(req, 200, "OK", reply);
    } else {
        evhttp_add_header(out, "x-amzn-ErrorType", "ResourceNotFoundException:http://internal.amazon.com/");
        evbuffer_add_printf(reply, "{\"Type\":\"User\",\"message\":\"Function not found: %s\"}", path);
        evhttp_send_reply(req, 404, "Not Found", reply);
    }
    evbuffer_free(reply);
    free(path);
}

static void *serve(void *arg)
{
    (void)arg;
    event_base_dispatch(srv_base);
    return NULL;
}

static void test_request_on_the_wire(void)
{
    evthread_use_pthreads();
    srv_base = event_base_new();
    struct evhttp *http = evhttp_new(srv_base);
    evhttp_set_gencb(http, on_request, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    CHECK(bs);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl);
    srv_port = ntohs(sa.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, serve, NULL);

    clear_env();
    setenv("FLICKER_ACCESS_KEY_ID", "AKWIRE", 1);
    setenv("FLICKER_SECRET_ACCESS_KEY", "wire/secret+", 1);
    setenv("AWS_REGION", "eu-north-1", 1);
    char *url = xasprintf("http://127.0.0.1:%d", srv_port);
    cli_ctx_t c;
    err_t err = {0};
    int ok_init = cli_ctx_init(&c, url, &err) == 0;
    free(url);
    cli_resp_t r1 = {0}, r2 = {0};
    int rc1 = -1, rc2 = -1;
    if (ok_init) {
        rc1 = cli_request(&c, "GET", "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A0%3Afunction%3Af/configuration",
                          "Qualifier=%24LATEST&b=1", NULL, 0, NULL, 0, &r1, &err);
        cli_header_t h[] = {{"X-Amz-Invocation-Type", "RequestResponse"}, {"X-Amz-Log-Type", "Tail"}};
        rc2 = cli_request(&c, "POST", "/2015-03-31/functions/f/invocations", NULL, h, 2, "{\"k\": [1, 2]}", 13,
                          &r2, &err);
        cli_ctx_free(&c);
    }
    event_base_loopbreak(srv_base);
    pthread_join(t, NULL);
    evhttp_free(http);
    event_base_free(srv_base);
    clear_env();

    int ok1 = rc1 == 0 && r1.status == 404 && r1.error_type && !strcmp(r1.error_type, "ResourceNotFoundException") &&
              strstr(r1.body, "Function not found");
    int ok2 = rc2 == 0 && r2.status == 200 && r2.function_error && !strcmp(r2.function_error, "Unhandled") &&
              r2.log_result && !strcmp(r2.log_result, "bG9nIGxpbmUK") && !strcmp(r2.body, "{\"errorMessage\":\"{\"k\": [1, 2]}\"}");
    cli_resp_free(&r1);
    cli_resp_free(&r2);
    CHECK(ok_init);
    CHECK(srv_n == 2);
    CHECK(srv_rc[0] == SIGV4_OK && srv_rc[1] == SIGV4_OK);
    CHECK(ok1);
    CHECK(ok2);
}

static void test_connection_refused(void)
{
    /* A port nobody listens on: bind, learn it, close. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    clear_env();
    setenv("FLICKER_ACCESS_KEY_ID", "AK", 1);
    setenv("FLICKER_SECRET_ACCESS_KEY", "s", 1);
    char *url = xasprintf("http://127.0.0.1:%d", ntohs(sa.sin_port));
    cli_ctx_t c;
    err_t err = {0};
    int ok = cli_ctx_init(&c, url, &err) == 0;
    cli_resp_t r;
    int rc = ok ? cli_request(&c, "GET", "/flicker/status", NULL, NULL, 0, NULL, 0, &r, &err) : 0;
    if (ok)
        cli_ctx_free(&c);
    free(url);
    clear_env();
    CHECK(ok);
    CHECK(rc == -1);
    CHECK(strstr(err.msg, "cannot reach flicker at http://127.0.0.1:"));
    CHECK(strstr(err.msg, "is `flicker up` running?"));
}

static void cleanup(void)
{
    err_t err;
    rm_rf(tmpdir, &err);
}

int main(void)
{
    make_tree();
    RUN(test_infer_runtime);
    RUN(test_zip_dir_keeps_modes);
    RUN(test_deploy_args);
    RUN(test_invoke_args);
    RUN(test_endpoint);
    RUN(test_credentials_text);
    RUN(test_ctx_discovery);
    RUN(test_encode);
    RUN(test_status_outline);
    RUN(test_dispatch);
    RUN(test_request_on_the_wire);
    RUN(test_connection_refused);
    cleanup();
    CHECK_EXIT();
}
