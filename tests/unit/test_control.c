/* test_control.c - drives control_handle() with real JSON bodies over a
 * store in a fresh temp dir: every operation, the validation rules, hostile
 * zips, paging and persistence across store_close/store_open. */
#include <stdarg.h>
#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "common/util.h"
#include "frontend/control.h"
#include "store/codezip.h"
#include "store/store.h"
#include "zipfix.h"

#define REGION "us-east-1"
#define ACCOUNT "123456789012"
#define ROLE "arn:aws:iam::123456789012:role/lambda-role"
#define ARN_PREFIX "arn:aws:lambda:us-east-1:123456789012:function:"

static store_t *S;
static char DIR_[256];
static int changes;
static char last_changed[128];

static void on_change(const char *name, void *arg)
{
    (void)arg;
    changes++;
    snprintf(last_changed, sizeof last_changed, "%s", name);
}

static control_config_t CFG = {REGION, ACCOUNT, 1000, on_change, NULL, NULL, NULL};

static void setup(void)
{
    snprintf(DIR_, sizeof DIR_, "/tmp/flicker-test-control-XXXXXX");
    if (!mkdtemp(DIR_))
        abort();
    err_t e = {0};
    S = store_open(DIR_, REGION, ACCOUNT, &e);
    if (!S) {
        fprintf(stderr, "store_open: %s\n", e.msg);
        abort();
    }
    changes = 0;
}

static void teardown(void)
{
    store_close(S);
    S = NULL;
    rm_rf(DIR_, NULL);
}

static void reopen(void)
{
    store_close(S);
    err_t e = {0};
    S = store_open(DIR_, REGION, ACCOUNT, &e);
    if (!S)
        abort();
}

static api_response_t R; /* last response */

/* Runs one request; body may be NULL.  Frees the previous response. */
static api_response_t *req(const char *method, const char *path, const char *query,
                           const char *body)
{
    json_decref(R.body);
    api_request_t rq = {method, path, query, body, body ? strlen(body) : 0};
    control_handle(S, &CFG, &rq, &R);
    return &R;
}

static api_response_t *reqf(const char *method, const char *path, const char *query,
                            const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static api_response_t *reqf(const char *method, const char *path, const char *query,
                            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *body = NULL;
    if (vasprintf(&body, fmt, ap) < 0)
        abort();
    va_end(ap);
    api_response_t *r = req(method, path, query, body);
    free(body);
    return r;
}

static const char *rs(const char *key) { return json_string_value(json_object_get(R.body, key)); }
static long long ri(const char *key) { return json_integer_value(json_object_get(R.body, key)); }
static const char *rmsg(void)
{
    const char *m = rs("message");
    return m ? m : rs("Message") ? rs("Message") : "";
}
static int is_err(int status, const char *type)
{
    if (R.status != status || strcmp(R.error_type, type)) {
        printf("  got %d %s: %s\n", R.status, R.error_type, rmsg());
        return 0;
    }
    return 1;
}
static int msg_has(const char *needle)
{
    if (!strstr(rmsg(), needle)) {
        printf("  message '%s' lacks '%s'\n", rmsg(), needle);
        return 0;
    }
    return 1;
}

static char *ZIP_B64;  /* a small valid zip: bootstrap (0755) + lib/x.py (0644) */
static char ZIP_SHA[45];
static char *ZIP2_B64; /* another valid zip */

static char *b64_zip(const zent_t *e, int n, char sha_b64[45])
{
    size_t len;
    unsigned char *z = zip_build(e, n, &len);
    if (sha_b64) {
        unsigned char d[32];
        sha256(z, len, d);
        char *s = base64_encode(d, 32);
        snprintf(sha_b64, 45, "%s", s);
        free(s);
    }
    char *b = base64_encode(z, len);
    free(z);
    return b;
}

static void make_fixtures(void)
{
    zent_t e[] = {{"bootstrap", "#!/bin/sh\necho hi\n", 0, S_IFREG | 0755},
                  {"lib/", NULL, 0, S_IFDIR | 0755},
                  {"lib/x.py", "def h(e, c):\n    return 1\n", 0, S_IFREG | 0600}};
    ZIP_B64 = b64_zip(e, 3, ZIP_SHA);
    zent_t e2[] = {{"app.py", "def handler(e, c):\n    return 2\n", 0, 0}};
    ZIP2_B64 = b64_zip(e2, 1, NULL);
}

static api_response_t *create(const char *name, const char *extra)
{
    return reqf("POST", "/2015-03-31/functions", NULL,
                "{\"FunctionName\":\"%s\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
                "\"Handler\":\"app.handler\",\"Code\":{\"ZipFile\":\"%s\"}%s%s}",
                name, ZIP_B64, extra ? "," : "", extra ? extra : "");
}

/* ---------------------------------------------------------------- */

static void test_create_and_get(void)
{
    setup();
    create("fn1", "\"Description\":\"d\",\"Tags\":{\"team\":\"a\"}");
    CHECK(R.status == 201);
    CHECK_STR(rs("FunctionName"), "fn1");
    CHECK_STR(rs("FunctionArn"), ARN_PREFIX "fn1");
    CHECK_STR(rs("Runtime"), "python3.12");
    CHECK_STR(rs("Handler"), "app.handler");
    CHECK_STR(rs("Role"), ROLE);
    CHECK_STR(rs("CodeSha256"), ZIP_SHA);
    CHECK(ri("CodeSize") > 0);
    CHECK(ri("Timeout") == 3 && ri("MemorySize") == 128);
    CHECK_STR(rs("Version"), "$LATEST");
    CHECK_STR(rs("State"), "Active");
    CHECK_STR(rs("LastUpdateStatus"), "Successful");
    CHECK_STR(rs("PackageType"), "Zip");
    CHECK_STR(rs("Description"), "d");
    CHECK(strlen(rs("RevisionId")) == 36);
    CHECK(strlen(rs("LastModified")) >= 24 && strstr(rs("LastModified"), "+0000"));
    CHECK_STR(json_string_value(json_array_get(json_object_get(R.body, "Architectures"), 0)),
              "x86_64");
    CHECK(json_integer_value(json_object_get(json_object_get(R.body, "EphemeralStorage"),
                                             "Size")) == 512);
    CHECK_STR(rs("TracingConfig") ? "" : json_string_value(json_object_get(
                                             json_object_get(R.body, "TracingConfig"), "Mode")),
              "PassThrough");
    CHECK_STR(json_string_value(json_object_get(json_object_get(R.body, "SnapStart"), "ApplyOn")),
              "None");
    CHECK_STR(json_string_value(json_object_get(json_object_get(R.body, "LoggingConfig"),
                                                "LogGroup")),
              "/aws/lambda/fn1");
    CHECK(!json_object_get(R.body, "_CodeHex"));
    CHECK(!json_object_get(R.body, "Environment"));

    /* the code is extracted with sane modes */
    fn_config_t *fc = NULL;
    err_t e = {0};
    CHECK(store_resolve(S, "fn1", NULL, &fc, &e) == 0);
    char *boot = xasprintf("%s/bootstrap", fc->code_dir);
    char *lib = xasprintf("%s/lib/x.py", fc->code_dir);
    struct stat st1, st2;
    int ok1 = stat(boot, &st1), ok2 = stat(lib, &st2);
    free(boot);
    free(lib);
    fn_config_free(fc);
    CHECK(ok1 == 0 && ok2 == 0);
    CHECK((st1.st_mode & 0777) == 0755);
    CHECK((st2.st_mode & 0777) == 0644);

    req("GET", "/2015-03-31/functions/fn1", NULL, NULL);
    CHECK(R.status == 200);
    json_t *conf = json_object_get(R.body, "Configuration");
    CHECK_STR(json_string_value(json_object_get(conf, "FunctionName")), "fn1");
    json_t *code = json_object_get(R.body, "Code");
    CHECK_STR(json_string_value(json_object_get(code, "RepositoryType")), "S3");
    CHECK(!strncmp(json_string_value(json_object_get(code, "Location")), "file://", 7));
    CHECK_STR(json_string_value(json_object_get(json_object_get(R.body, "Tags"), "team")), "a");
    CHECK(!json_object_get(R.body, "Concurrency"));

    req("GET", "/2015-03-31/functions/fn1/configuration", NULL, NULL);
    CHECK(R.status == 200);
    CHECK_STR(rs("FunctionName"), "fn1");
    /* by ARN and partial ARN */
    req("GET", "/2015-03-31/functions/" ARN_PREFIX "fn1/configuration", NULL, NULL);
    CHECK(R.status == 200);
    req("GET", "/2015-03-31/functions/123456789012:function:fn1", NULL, NULL);
    CHECK(R.status == 200);
    req("GET", "/2015-03-31/functions/arn:aws:lambda:eu-west-1:123456789012:function:fn1", NULL,
        NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));

    create("fn1", NULL);
    CHECK(is_err(409, "ResourceConflictException"));
    CHECK_STR(rmsg(), "Function already exist: fn1");

    req("GET", "/2015-03-31/functions/nope", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    CHECK_STR(rs("Message"), "Function not found: " ARN_PREFIX "nope");
    CHECK_STR(rs("Type"), "User");

    /* provided runtime: no handler needed */
    reqf("POST", "/2015-03-31/functions", NULL,
         "{\"FunctionName\":\"prov\",\"Role\":\"" ROLE "\",\"Runtime\":\"provided.al2023\","
         "\"Code\":{\"ZipFile\":\"%s\"},\"Environment\":{\"Variables\":{\"AB\":\"1\"}},"
         "\"SnapStart\":{\"ApplyOn\":\"PublishedVersions\"}}",
         ZIP_B64);
    CHECK(is_err(201, ""));
    CHECK(!json_object_get(R.body, "Handler"));
    CHECK_STR(json_string_value(json_object_get(
                  json_object_get(json_object_get(R.body, "Environment"), "Variables"), "AB")),
              "1");
    CHECK_STR(json_string_value(json_object_get(json_object_get(R.body, "SnapStart"), "ApplyOn")),
              "PublishedVersions");

    /* same code dedupes to one directory */
    char *codedir = xasprintf("%s/code", DIR_);
    int entries = 0;
    DIR *d = opendir(codedir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        entries += de->d_name[0] != '.';
    if (d)
        closedir(d);
    free(codedir);
    CHECK(entries == 1);

    /* Publish on create */
    create("pub", "\"Publish\":true");
    CHECK(R.status == 201);
    CHECK_STR(rs("Version"), "1");
    CHECK_STR(rs("FunctionArn"), ARN_PREFIX "pub:1");
    teardown();
}

typedef struct vcase {
    const char *extra;   /* members added to a valid body, or a full body when full */
    int full;
    int status;
    const char *type;
    const char *msg;     /* substring */
} vcase_t;

static void test_create_validation(void)
{
    setup();
    static const vcase_t cases[] = {
        {"\"MemorySize\":64", 0, 400, "ValidationException",
         "1 validation error detected: Value '64' at 'memorySize' failed to satisfy constraint: "
         "Member must have value greater than or equal to 128"},
        {"\"MemorySize\":10241", 0, 400, "ValidationException", "less than or equal to 10240"},
        {"\"Timeout\":0", 0, 400, "ValidationException", "at 'timeout'"},
        {"\"Timeout\":901", 0, 400, "ValidationException", "less than or equal to 900"},
        {"\"Timeout\":0,\"MemorySize\":1", 0, 400, "ValidationException",
         "2 validation errors detected"},
        {"\"EphemeralStorage\":{\"Size\":511}", 0, 400, "ValidationException",
         "ephemeralStorage.size"},
        {"\"EphemeralStorage\":{\"Size\":10241}", 0, 400, "ValidationException",
         "ephemeralStorage.size"},
        {"\"Description\":\"" /* 257 chars below */, 0, 0, NULL, NULL},
        {"\"Runtime\":\"java21\"", 0, 400, "InvalidParameterValueException",
         "The runtime parameter of java21 is not supported"},
        {"\"Runtime\":\"python3.12\",\"Handler\":\"a b\"", 0, 400, "ValidationException",
         "at 'handler'"},
        {"\"Environment\":{\"Variables\":{\"AWS_REGION\":\"x\"}}", 0, 400,
         "InvalidParameterValueException", "Reserved keys used in this request: AWS_REGION"},
        {"\"Environment\":{\"Variables\":{\"1BAD\":\"x\"}}", 0, 400, "ValidationException",
         "environment.variables"},
        {"\"Environment\":{\"Variables\":{\"A\":1}}", 0, 400, "InvalidRequestContentException",
         ""},
        {"\"Architectures\":[\"arm64\"]", 0, 400, "InvalidParameterValueException", "arm64"},
        {"\"Architectures\":[\"sparc\"]", 0, 400, "ValidationException", "architectures"},
        {"\"Architectures\":[\"x86_64\",\"x86_64\"]", 0, 400, "ValidationException",
         "architectures"},
        {"\"Layers\":[\"arn:aws:lambda:us-east-1:123456789012:layer:l:1\"]", 0, 400,
         "InvalidParameterValueException", "Layers"},
        {"\"Layers\":[],\"VpcConfig\":{\"SubnetIds\":[]}", 0, 201, "", ""},
        {"\"PackageType\":\"Image\"", 0, 400, "InvalidParameterValueException", "Image"},
        {"\"MemorySize\":\"big\"", 0, 400, "InvalidRequestContentException", "MemorySize"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\"}",
         1, 400, "ValidationException", "at 'code'"},
        {"{\"FunctionName\":\"x\",\"Runtime\":\"python3.12\",\"Handler\":\"a.b\","
         "\"Code\":{}}",
         1, 400, "ValidationException", "Value null at 'role'"},
        {"{\"FunctionName\":\"x\",\"Role\":\"nope\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{}}",
         1, 400, "ValidationException", "at 'role' failed to satisfy constraint"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{}}",
         1, 400, "InvalidParameterValueException", "provide a source"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{\"S3Bucket\":\"b\",\"S3Key\":\"k\"}}",
         1, 400, "InvalidParameterValueException", "S3"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Code\":{\"ZipFile\":\"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\"}}",
         1, 400, "InvalidParameterValueException", "Runtime and Handler are mandatory"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Handler\":\"a.b\","
         "\"Code\":{\"ZipFile\":\"UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==\"}}",
         1, 400, "InvalidParameterValueException", "Runtime and Handler are mandatory"},
        {"{\"FunctionName\":\"bad name\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{}}",
         1, 400, "ValidationException", "at 'functionName'"},
        {"{\"FunctionName\":"
         "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\"Role\":"
         "\"" ROLE "\",\"Runtime\":\"python3.12\",\"Handler\":\"a.b\",\"Code\":{}}",
         1, 400, "ValidationException", "length less than or equal to 64"},
        {"{\"FunctionName\":\"x:1\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{}}",
         1, 400, "InvalidParameterValueException", "qualifier"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{\"ZipFile\":\"!!!!\"}}",
         1, 400, "InvalidRequestContentException", "base64"},
        {"{\"FunctionName\":\"x\",\"Role\":\"" ROLE "\",\"Runtime\":\"python3.12\","
         "\"Handler\":\"a.b\",\"Code\":{\"ZipFile\":\"aGVsbG8gd29ybGQ=\"}}",
         1, 400, "InvalidParameterValueException", "Could not unzip uploaded file"},
        {"not json", 1, 400, "InvalidRequestContentException", "Could not parse request body"},
        {"[1,2]", 1, 400, "InvalidRequestContentException", "Could not parse request body"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const vcase_t *vc = &cases[i];
        if (!vc->type)
            continue;
        if (vc->full)
            req("POST", "/2015-03-31/functions", NULL, vc->extra);
        else
            create("v", vc->extra);
        if (R.status != vc->status || strcmp(R.error_type, vc->type) || !strstr(rmsg(), vc->msg)) {
            printf("  case %zu (%s): got %d %s '%s'\n", i, vc->extra, R.status, R.error_type,
                   rmsg());
            CHECK(0);
        }
    }
    /* description too long */
    char desc[300];
    memset(desc, 'd', 257);
    desc[257] = 0;
    char *extra = xasprintf("\"Description\":\"%s\"", desc);
    create("v", extra);
    free(extra);
    CHECK(is_err(400, "ValidationException"));
    CHECK(msg_has("at 'description'"));
    /* environment over 4 KB */
    char big[5000];
    memset(big, 'x', 4100);
    big[4100] = 0;
    extra = xasprintf("\"Environment\":{\"Variables\":{\"BIG\":\"%s\"}}", big);
    create("v", extra);
    free(extra);
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("exceeded the 4KB limit"));
    /* only the valid case created "v" */
    req("DELETE", "/2015-03-31/functions/v", NULL, NULL);
    CHECK(is_err(204, ""));
    req("GET", "/2015-03-31/functions/x", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    teardown();
}

static api_response_t *create_with_zip(const char *name, const zent_t *e, int n)
{
    char *b64 = b64_zip(e, n, NULL);
    api_response_t *r = reqf("POST", "/2015-03-31/functions", NULL,
                             "{\"FunctionName\":\"%s\",\"Role\":\"" ROLE
                             "\",\"Runtime\":\"provided.al2\",\"Code\":{\"ZipFile\":\"%s\"}}",
                             name, b64);
    free(b64);
    return r;
}

static int code_dir_count(void)
{
    char *codedir = xasprintf("%s/code", DIR_);
    int entries = 0;
    DIR *d = opendir(codedir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        entries += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    if (d)
        closedir(d);
    free(codedir);
    return entries;
}

static void test_hostile_zips(void)
{
    setup();
    zent_t trav[] = {{"ok", "x", 0, 0}, {"../evil", "x", 0, 0}};
    create_with_zip("h", trav, 2);
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("Could not unzip uploaded file"));
    zent_t trav2[] = {{"a/../../evil", "x", 0, 0}};
    create_with_zip("h", trav2, 1);
    CHECK(is_err(400, "InvalidParameterValueException"));
    zent_t absp[] = {{"/tmp/evil", "x", 0, 0}};
    create_with_zip("h", absp, 1);
    CHECK(is_err(400, "InvalidParameterValueException"));
    zent_t link[] = {{"lnk", "/etc/passwd", 0, S_IFLNK | 0777}, {"lnk/x", "y", 0, 0}};
    create_with_zip("h", link, 2);
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("symbolic link"));
    zent_t fifo[] = {{"pipe", "", 0, S_IFIFO | 0644}};
    create_with_zip("h", fifo, 1);
    CHECK(is_err(400, "InvalidParameterValueException"));
    zent_t clash[] = {{"a", "file", 0, 0}, {"a/b", "x", 0, 0}};
    create_with_zip("h", clash, 2);
    CHECK(is_err(400, "InvalidParameterValueException"));
    /* nothing escaped, no temp dirs were left behind */
    char *evil = xasprintf("%s/evil", DIR_);
    CHECK(access(evil, F_OK) != 0);
    free(evil);
    CHECK(access("/tmp/evil", F_OK) != 0);
    CHECK(code_dir_count() == 0);

    /* a zip bomb: 8 MB of zeros compresses to a few KB; limit 1 MB */
    store_set_unzipped_limit(S, 1 << 20);
    size_t bomb_len = 8 << 20;
    char *zeros = calloc(1, bomb_len);
    zent_t bomb[] = {{"zeros", zeros, bomb_len, 0}};
    create_with_zip("h", bomb, 1);
    free(zeros);
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("Unzipped size must be smaller than 1048576 bytes"));
    CHECK(code_dir_count() == 0);
    store_set_unzipped_limit(S, CODEZIP_MAX_UNZIPPED);
    req("GET", "/2015-03-31/functions/h", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    teardown();
}

static void test_update(void)
{
    setup();
    create("u", NULL);
    CHECK(R.status == 201);
    char *rev1 = xstrdup(rs("RevisionId"));
    fn_config_t *a = NULL, *b = NULL;
    err_t e = {0};
    CHECK(store_resolve(S, "u", NULL, &a, &e) == 0);

    reqf("PUT", "/2015-03-31/functions/u/code", NULL, "{\"ZipFile\":\"%s\",\"RevisionId\":\"x\"}",
         ZIP2_B64);
    CHECK(is_err(412, "PreconditionFailedException"));
    CHECK(changes == 0);
    reqf("PUT", "/2015-03-31/functions/u/code", NULL, "{\"ZipFile\":\"%s\",\"RevisionId\":\"%s\"}",
         ZIP2_B64, rev1);
    CHECK(R.status == 200);
    CHECK(strcmp(rs("CodeSha256"), ZIP_SHA) != 0);
    CHECK(strcmp(rs("RevisionId"), rev1) != 0);
    CHECK(changes == 1 && !strcmp(last_changed, "u"));
    CHECK(store_resolve(S, "u", NULL, &b, &e) == 0);
    int differ = strcmp(a->config_key, b->config_key) && strcmp(a->code_dir, b->code_dir);
    fn_config_free(b);
    b = NULL;
    CHECK(differ);

    req("PUT", "/2015-03-31/functions/u/configuration", NULL,
        "{\"MemorySize\":256,\"Timeout\":30,\"Environment\":{\"Variables\":{\"KK\":\"v\"}},"
        "\"Description\":\"new\",\"EphemeralStorage\":{\"Size\":1024},\"Handler\":\"x.y\","
        "\"Runtime\":\"nodejs22.x\"}");
    CHECK(is_err(200, ""));
    CHECK(ri("MemorySize") == 256 && ri("Timeout") == 30);
    CHECK_STR(rs("Description"), "new");
    CHECK_STR(rs("Runtime"), "nodejs22.x");
    CHECK(changes == 2);
    CHECK(store_resolve(S, "u", "$LATEST", &b, &e) == 0);
    CHECK(b->memory_mb == 256 && b->timeout_s == 30 && b->ephemeral_mb == 1024);
    CHECK_STR(json_string_value(json_object_get(b->env_vars, "KK")), "v");
    CHECK_STR(b->handler, "x.y");
    CHECK(b->reserved_concurrency == -1);
    CHECK(strcmp(a->config_key, b->config_key) != 0);
    fn_config_free(b);
    b = NULL;

    /* env cleared by an empty Environment */
    req("PUT", "/2015-03-31/functions/u/configuration", NULL, "{\"Environment\":{}}");
    CHECK(R.status == 200);
    CHECK(!json_object_get(R.body, "Environment"));
    req("PUT", "/2015-03-31/functions/u/configuration", NULL, "{\"Timeout\":1000}");
    CHECK(is_err(400, "ValidationException"));
    req("PUT", "/2015-03-31/functions/u/configuration", NULL, "{\"Runtime\":\"python2.7\"}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("PUT", "/2015-03-31/functions/u/configuration", NULL,
        "{\"Environment\":{\"Variables\":{\"AWS_LAMBDA_RUNTIME_API\":\"x\"}}}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("PUT", "/2015-03-31/functions/u/configuration", NULL, "{\"RevisionId\":\"stale\"}");
    CHECK(is_err(412, "PreconditionFailedException"));
    req("PUT", "/2015-03-31/functions/nope/configuration", NULL, "{\"Timeout\":5}");
    CHECK(is_err(404, "ResourceNotFoundException"));
    reqf("PUT", "/2015-03-31/functions/nope/code", NULL, "{\"ZipFile\":\"%s\"}", ZIP2_B64);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("PUT", "/2015-03-31/functions/u/code", NULL, "{\"ZipFile\":\"aGVsbG8gd29ybGQ=\"}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("PUT", "/2015-03-31/functions/u/configuration", NULL, "{bad");
    CHECK(is_err(400, "InvalidRequestContentException"));
    CHECK(changes == 3);

    /* UpdateFunctionCode with Publish */
    reqf("PUT", "/2015-03-31/functions/u/code", NULL, "{\"ZipFile\":\"%s\",\"Publish\":true}",
         ZIP_B64);
    CHECK(R.status == 200);
    CHECK_STR(rs("Version"), "1");
    CHECK_STR(rs("CodeSha256"), ZIP_SHA);
    fn_config_free(a);
    free(rev1);
    teardown();
}

static void test_versions_and_aliases(void)
{
    setup();
    create("f", NULL);
    req("POST", "/2015-03-31/functions/f/versions", NULL, NULL);
    CHECK(R.status == 201);
    CHECK_STR(rs("Version"), "1");
    CHECK_STR(rs("FunctionArn"), ARN_PREFIX "f:1");
    CHECK(!json_object_get(R.body, "_SourceRevision"));
    /* unchanged $LATEST: the same version again */
    req("POST", "/2015-03-31/functions/f/versions", NULL, "{}");
    CHECK(R.status == 201);
    CHECK_STR(rs("Version"), "1");
    req("POST", "/2015-03-31/functions/f/versions", NULL, "{\"CodeSha256\":\"wrong\"}");
    CHECK(is_err(412, "PreconditionFailedException"));
    req("POST", "/2015-03-31/functions/f/versions", NULL, "{\"RevisionId\":\"wrong\"}");
    CHECK(is_err(412, "PreconditionFailedException"));
    req("PUT", "/2015-03-31/functions/f/configuration", NULL, "{\"Timeout\":9}");
    CHECK(R.status == 200);
    reqf("POST", "/2015-03-31/functions/f/versions", NULL,
         "{\"CodeSha256\":\"%s\",\"Description\":\"second\"}", ZIP_SHA);
    CHECK(R.status == 201);
    CHECK_STR(rs("Version"), "2");
    CHECK_STR(rs("Description"), "second");
    CHECK(ri("Timeout") == 9);
    req("POST", "/2015-03-31/functions/nope/versions", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));

    /* versions list with paging: $LATEST, 1, 2 */
    req("GET", "/2015-03-31/functions/f/versions", "MaxItems=2", NULL);
    CHECK(R.status == 200);
    json_t *v = json_object_get(R.body, "Versions");
    CHECK(json_array_size(v) == 2);
    CHECK_STR(json_string_value(json_object_get(json_array_get(v, 0), "Version")), "$LATEST");
    CHECK_STR(json_string_value(json_object_get(json_array_get(v, 0), "FunctionArn")),
              ARN_PREFIX "f:$LATEST");
    CHECK(rs("NextMarker"));
    char *q = xasprintf("MaxItems=2&Marker=%s", rs("NextMarker"));
    req("GET", "/2015-03-31/functions/f/versions", q, NULL);
    free(q);
    CHECK(R.status == 200);
    v = json_object_get(R.body, "Versions");
    CHECK(json_array_size(v) == 1);
    CHECK_STR(json_string_value(json_object_get(json_array_get(v, 0), "Version")), "2");
    CHECK(!rs("NextMarker"));
    req("GET", "/2015-03-31/functions/f/versions", "MaxItems=0", NULL);
    CHECK(is_err(400, "ValidationException"));

    /* get a version by qualifier and by name:qualifier */
    req("GET", "/2015-03-31/functions/f/configuration", "Qualifier=1", NULL);
    CHECK(R.status == 200 && ri("Timeout") == 3);
    req("GET", "/2015-03-31/functions/f:2", NULL, NULL);
    CHECK(R.status == 200);
    req("GET", "/2015-03-31/functions/f:2", "Qualifier=1", NULL);
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("derived qualifier"));
    req("GET", "/2015-03-31/functions/f", "Qualifier=7", NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    CHECK_STR(rs("Message"), "Function not found: " ARN_PREFIX "f:7");

    /* aliases */
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"prod\",\"FunctionVersion\":\"1\",\"Description\":\"p\"}");
    CHECK(R.status == 201);
    CHECK_STR(rs("AliasArn"), ARN_PREFIX "f:prod");
    CHECK_STR(rs("FunctionVersion"), "1");
    char *arev = xstrdup(rs("RevisionId"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"prod\",\"FunctionVersion\":\"1\"}");
    CHECK(is_err(409, "ResourceConflictException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL, "{\"Name\":\"5\",\"FunctionVersion\":\"1\"}");
    CHECK(is_err(400, "ValidationException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"bad.name\",\"FunctionVersion\":\"1\"}");
    CHECK(is_err(400, "ValidationException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"x\",\"FunctionVersion\":\"9\"}");
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"x\",\"FunctionVersion\":\"abc\"}");
    CHECK(is_err(400, "ValidationException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL, "{\"Name\":\"x\"}");
    CHECK(is_err(400, "ValidationException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"canary\",\"FunctionVersion\":\"2\",\"RoutingConfig\":"
        "{\"AdditionalVersionWeights\":{\"1\":1.5}}}");
    CHECK(is_err(400, "ValidationException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"canary\",\"FunctionVersion\":\"2\",\"RoutingConfig\":"
        "{\"AdditionalVersionWeights\":{\"2\":0.5}}}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"canary\",\"FunctionVersion\":\"2\",\"RoutingConfig\":"
        "{\"AdditionalVersionWeights\":{\"1\":0.25}}}");
    CHECK(R.status == 201);
    CHECK(json_real_value(json_object_get(
              json_object_get(json_object_get(R.body, "RoutingConfig"), "AdditionalVersionWeights"),
              "1")) == 0.25);
    req("POST", "/2015-03-31/functions/f/aliases", NULL,
        "{\"Name\":\"live\",\"FunctionVersion\":\"$LATEST\"}");
    CHECK(R.status == 201);

    req("GET", "/2015-03-31/functions/f/aliases/prod", NULL, NULL);
    CHECK(R.status == 200);
    CHECK_STR(rs("Description"), "p");
    req("GET", "/2015-03-31/functions/f/aliases/none", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("PUT", "/2015-03-31/functions/f/aliases/prod", NULL, "{\"RevisionId\":\"zzz\"}");
    CHECK(is_err(412, "PreconditionFailedException"));
    reqf("PUT", "/2015-03-31/functions/f/aliases/prod", NULL,
         "{\"FunctionVersion\":\"2\",\"RevisionId\":\"%s\"}", arev);
    CHECK(R.status == 200);
    CHECK_STR(rs("FunctionVersion"), "2");
    CHECK(strcmp(rs("RevisionId"), arev) != 0);
    free(arev);
    req("GET", "/2015-03-31/functions/f/aliases", NULL, NULL);
    CHECK(R.status == 200);
    CHECK(json_array_size(json_object_get(R.body, "Aliases")) == 3);
    req("GET", "/2015-03-31/functions/f/aliases", "FunctionVersion=2&MaxItems=1", NULL);
    CHECK(json_array_size(json_object_get(R.body, "Aliases")) == 1);
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(R.body, "Aliases"),
                                                               0),
                                                "Name")),
              "canary");
    CHECK(rs("NextMarker"));

    /* resolve through aliases, qualified names and ARNs */
    fn_config_t *fc = NULL;
    err_t e = {0};
    CHECK(store_resolve(S, "f", "prod", &fc, &e) == 0);
    CHECK_STR(fc->version, "2");
    CHECK_STR(fc->alias, "prod");
    CHECK_STR(fc->qualified_arn, ARN_PREFIX "f:2");
    fn_config_free(fc);
    CHECK(store_resolve(S, ARN_PREFIX "f:1", NULL, &fc, &e) == 0);
    CHECK_STR(fc->version, "1");
    CHECK(fc->timeout_s == 3);
    fn_config_free(fc);
    CHECK(store_resolve(S, "f:live", NULL, &fc, &e) == 0);
    CHECK_STR(fc->version, "$LATEST");
    fn_config_free(fc);
    int saw1 = 0, saw2 = 0;
    for (int i = 0; i < 200; i++) {
        CHECK(store_resolve(S, "f:canary", "canary", &fc, &e) == 0);
        saw1 += !strcmp(fc->version, "1");
        saw2 += !strcmp(fc->version, "2");
        fn_config_free(fc);
    }
    CHECK(saw1 > 10 && saw2 > 100 && saw1 + saw2 == 200);
    CHECK(store_resolve(S, "f:prod", "canary", &fc, &e) < 0 && e.code == EINVAL);
    CHECK(store_resolve(S, "f", "nope", &fc, &e) < 0 && e.code == ENOENT);
    CHECK(store_resolve(S, "f", "7", &fc, &e) < 0 && e.code == ENOENT);

    /* deleting versions */
    req("DELETE", "/2015-03-31/functions/f", "Qualifier=2", NULL);
    CHECK(is_err(409, "ResourceConflictException"));
    CHECK(msg_has("canary") && msg_has("prod"));
    req("DELETE", "/2015-03-31/functions/f", "Qualifier=$LATEST", NULL);
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("DELETE", "/2015-03-31/functions/f/aliases/canary", NULL, NULL);
    CHECK(R.status == 204 && R.body == NULL);
    req("DELETE", "/2015-03-31/functions/f/aliases/prod", NULL, NULL);
    CHECK(R.status == 204);
    int before = changes;
    req("DELETE", "/2015-03-31/functions/f:2", NULL, NULL);
    CHECK(R.status == 204);
    CHECK(changes == before + 1);
    req("GET", "/2015-03-31/functions/f", "Qualifier=2", NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("DELETE", "/2015-03-31/functions/f", "Qualifier=2", NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    /* version numbers are never reused */
    req("PUT", "/2015-03-31/functions/f/configuration", NULL, "{\"Timeout\":11}");
    req("POST", "/2015-03-31/functions/f/versions", NULL, NULL);
    CHECK(R.status == 201);
    CHECK_STR(rs("Version"), "3");
    teardown();
}

static void test_delete_function(void)
{
    setup();
    create("d", "\"Tags\":{\"a\":\"b\"}");
    req("POST", "/2015-03-31/functions/d/versions", NULL, NULL);
    req("POST", "/2015-03-31/functions/d/aliases", NULL,
        "{\"Name\":\"prod\",\"FunctionVersion\":\"1\"}");
    req("DELETE", "/2015-03-31/functions/d", NULL, NULL);
    CHECK(R.status == 204 && !R.body);
    CHECK(changes == 1 && !strcmp(last_changed, "d"));
    req("GET", "/2015-03-31/functions/d", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("DELETE", "/2015-03-31/functions/d", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    /* re-creating starts clean */
    create("d", NULL);
    CHECK(R.status == 201);
    req("GET", "/2015-03-31/functions/d/aliases", NULL, NULL);
    CHECK(json_array_size(json_object_get(R.body, "Aliases")) == 0);
    req("GET", "/2017-03-31/tags/" ARN_PREFIX "d", NULL, NULL);
    CHECK(R.status == 200 && json_object_size(json_object_get(R.body, "Tags")) == 0);
    teardown();
}

static void test_concurrency_and_account(void)
{
    setup();
    create("c", NULL);
    create("c2", NULL);
    req("GET", "/2019-09-30/functions/c/concurrency", NULL, NULL);
    CHECK(R.status == 200 && json_object_size(R.body) == 0);
    req("PUT", "/2017-10-31/functions/c/concurrency", NULL, "{\"ReservedConcurrentExecutions\":800}");
    CHECK(R.status == 200 && ri("ReservedConcurrentExecutions") == 800);
    req("PUT", "/2017-10-31/functions/c2/concurrency", NULL,
        "{\"ReservedConcurrentExecutions\":101}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("below its minimum value of [100]"));
    req("PUT", "/2017-10-31/functions/c2/concurrency", NULL,
        "{\"ReservedConcurrentExecutions\":100}");
    CHECK(R.status == 200);
    /* raising c's own reservation accounts for what it already holds */
    req("PUT", "/2017-10-31/functions/c/concurrency", NULL, "{\"ReservedConcurrentExecutions\":801}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("PUT", "/2017-10-31/functions/c/concurrency", NULL, "{\"ReservedConcurrentExecutions\":-1}");
    CHECK(is_err(400, "ValidationException"));
    req("PUT", "/2017-10-31/functions/c/concurrency", NULL, "{}");
    CHECK(is_err(400, "ValidationException"));
    req("PUT", "/2017-10-31/functions/zz/concurrency", NULL, "{\"ReservedConcurrentExecutions\":1}");
    CHECK(is_err(404, "ResourceNotFoundException"));
    CHECK(store_total_reserved(S) == 900);
    fn_config_t *fc = NULL;
    err_t e = {0};
    CHECK(store_resolve(S, "c", NULL, &fc, &e) == 0);
    int rc = fc->reserved_concurrency;
    fn_config_free(fc);
    CHECK(rc == 800);

    req("GET", "/2015-03-31/functions/c", NULL, NULL);
    CHECK(json_integer_value(json_object_get(json_object_get(R.body, "Concurrency"),
                                             "ReservedConcurrentExecutions")) == 800);
    req("GET", "/2016-08-19/account-settings/", NULL, NULL);
    CHECK(R.status == 200);
    json_t *lim = json_object_get(R.body, "AccountLimit");
    json_t *use = json_object_get(R.body, "AccountUsage");
    CHECK(json_integer_value(json_object_get(lim, "ConcurrentExecutions")) == 1000);
    CHECK(json_integer_value(json_object_get(lim, "UnreservedConcurrentExecutions")) == 100);
    CHECK(json_integer_value(json_object_get(lim, "CodeSizeUnzipped")) == 262144000);
    CHECK(json_integer_value(json_object_get(lim, "CodeSizeZipped")) == 52428800);
    CHECK(json_integer_value(json_object_get(lim, "TotalCodeSize")) == 80530636800LL);
    CHECK(json_integer_value(json_object_get(use, "FunctionCount")) == 2);
    CHECK(json_integer_value(json_object_get(use, "TotalCodeSize")) > 0);
    req("GET", "/2016-08-19/account-settings", NULL, NULL);
    CHECK(R.status == 200);

    req("DELETE", "/2017-10-31/functions/c/concurrency", NULL, NULL);
    CHECK(R.status == 204);
    req("GET", "/2019-09-30/functions/c/concurrency", NULL, NULL);
    CHECK(R.status == 200 && !json_object_get(R.body, "ReservedConcurrentExecutions"));
    CHECK(store_total_reserved(S) == 100);
    teardown();
}

static void test_tags(void)
{
    setup();
    create("t", "\"Tags\":{\"a\":\"1\"}");
    req("POST", "/2017-03-31/tags/" ARN_PREFIX "t", NULL, "{\"Tags\":{\"b\":\"2\",\"c\":\"3\"}}");
    CHECK(R.status == 204);
    req("GET", "/2017-03-31/tags/" ARN_PREFIX "t", NULL, NULL);
    CHECK(R.status == 200);
    CHECK(json_object_size(json_object_get(R.body, "Tags")) == 3);
    req("DELETE", "/2017-03-31/tags/" ARN_PREFIX "t", "tagKeys=a&tagKeys=c", NULL);
    CHECK(R.status == 204);
    req("GET", "/2017-03-31/tags/" ARN_PREFIX "t", NULL, NULL);
    json_t *tags = json_object_get(R.body, "Tags");
    CHECK(json_object_size(tags) == 1 && json_object_get(tags, "b"));
    req("POST", "/2017-03-31/tags/" ARN_PREFIX "t", NULL, "{\"Tags\":{\"aws:x\":\"2\"}}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("POST", "/2017-03-31/tags/" ARN_PREFIX "t", NULL, "{}");
    CHECK(is_err(400, "ValidationException"));
    req("GET", "/2017-03-31/tags/" ARN_PREFIX "missing", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("GET", "/2017-03-31/tags/" ARN_PREFIX "t:1", NULL, NULL);
    CHECK(is_err(400, "InvalidParameterValueException"));
    teardown();
}

static void test_list_functions_paging(void)
{
    setup();
    const char *names[] = {"e", "b", "a", "d", "c"};
    for (int i = 0; i < 5; i++) {
        create(names[i], NULL);
        CHECK(R.status == 201);
    }
    req("POST", "/2015-03-31/functions/b/versions", NULL, NULL);
    req("GET", "/2015-03-31/functions/", NULL, NULL);
    CHECK(R.status == 200);
    CHECK(json_array_size(json_object_get(R.body, "Functions")) == 5);
    CHECK(!rs("NextMarker"));
    char seen[16] = "";
    char *marker = NULL;
    for (int page = 0; page < 5; page++) {
        char *q = marker ? xasprintf("MaxItems=2&Marker=%s", marker) : xstrdup("MaxItems=2");
        req("GET", "/2015-03-31/functions", q, NULL);
        free(q);
        free(marker);
        marker = NULL;
        CHECK(R.status == 200);
        size_t i;
        json_t *f;
        json_array_foreach(json_object_get(R.body, "Functions"), i, f)
            strcat(seen, json_string_value(json_object_get(f, "FunctionName")));
        if (!rs("NextMarker"))
            break;
        marker = xstrdup(rs("NextMarker"));
    }
    free(marker);
    CHECK_STR(seen, "abcde");
    req("GET", "/2015-03-31/functions/", "FunctionVersion=ALL", NULL);
    CHECK(json_array_size(json_object_get(R.body, "Functions")) == 6);
    /* paging through ALL with MaxItems=1 visits all 6 */
    int count = 0;
    marker = NULL;
    for (int page = 0; page < 10; page++) {
        char *q = marker ? xasprintf("FunctionVersion=ALL&MaxItems=1&Marker=%s", marker)
                         : xstrdup("FunctionVersion=ALL&MaxItems=1");
        req("GET", "/2015-03-31/functions/", q, NULL);
        free(q);
        free(marker);
        marker = NULL;
        count += (int)json_array_size(json_object_get(R.body, "Functions"));
        if (!rs("NextMarker"))
            break;
        marker = xstrdup(rs("NextMarker"));
    }
    free(marker);
    CHECK(count == 6);
    req("GET", "/2015-03-31/functions/", "FunctionVersion=SOME", NULL);
    CHECK(is_err(400, "ValidationException"));
    req("GET", "/2015-03-31/functions/", "MaxItems=99999", NULL);
    CHECK(is_err(400, "ValidationException"));
    teardown();
}

static void test_persistence(void)
{
    setup();
    create("p", "\"Tags\":{\"k\":\"v\"},\"Environment\":{\"Variables\":{\"XY\":\"y\"}}");
    req("POST", "/2015-03-31/functions/p/versions", NULL, NULL);
    req("POST", "/2015-03-31/functions/p/aliases", NULL,
        "{\"Name\":\"prod\",\"FunctionVersion\":\"1\"}");
    req("PUT", "/2017-10-31/functions/p/concurrency", NULL, "{\"ReservedConcurrentExecutions\":5}");
    fn_config_t *before = NULL, *after = NULL;
    err_t e = {0};
    if (store_resolve(S, "p", "prod", &before, &e) < 0)
        printf("  %s\n", e.msg);
    CHECK(before);
    reopen();
    CHECK(store_resolve(S, "p", "prod", &after, &e) == 0);
    int same = !strcmp(before->config_key, after->config_key) &&
               !strcmp(before->code_dir, after->code_dir) && after->reserved_concurrency == 5 &&
               !strcmp(json_string_value(json_object_get(after->env_vars, "XY")), "y");
    fn_config_free(before);
    fn_config_free(after);
    CHECK(same);
    req("GET", "/2015-03-31/functions/p", NULL, NULL);
    CHECK(R.status == 200);
    CHECK_STR(json_string_value(json_object_get(json_object_get(R.body, "Tags"), "k")), "v");
    req("GET", "/2015-03-31/functions/p/versions", NULL, NULL);
    CHECK(json_array_size(json_object_get(R.body, "Versions")) == 2);
    /* the next version number also survived */
    req("PUT", "/2015-03-31/functions/p/configuration", NULL, "{\"Timeout\":4}");
    req("POST", "/2015-03-31/functions/p/versions", NULL, NULL);
    CHECK_STR(rs("Version"), "2");
    teardown();
}

static void test_routing(void)
{
    setup();
    req("GET", "/2015-03-31/nothing", NULL, NULL);
    CHECK(is_err(404, "UnknownOperationException"));
    req("PATCH", "/2015-03-31/functions", NULL, NULL);
    CHECK(is_err(404, "UnknownOperationException"));
    req("POST", "/2015-03-31/nothing", NULL, "not json");
    CHECK(is_err(404, "UnknownOperationException"));
    req("GET", "/", NULL, NULL);
    CHECK(is_err(404, "UnknownOperationException"));
    req("GET", "", NULL, NULL);
    CHECK(is_err(404, "UnknownOperationException"));
    req("GET", "/2015-03-31/functions//configuration", NULL, NULL);
    CHECK(is_err(400, "ValidationException"));
    req("GET", "/a/b/c/d/e/f/g/h/i/j/k", NULL, NULL);
    CHECK(is_err(404, "UnknownOperationException"));
    req("POST", "/2015-03-31/functions/x/invocations", NULL, "{}");
    CHECK(is_err(404, "UnknownOperationException"));
    req("GET", "/2015-03-31/functions/bad%20name", NULL, NULL);
    CHECK(is_err(400, "ValidationException"));
    req("GET", "/2015-03-31/functions/a:b:c:d:e:f:g:h:i:j", NULL, NULL);
    CHECK(is_err(400, "ValidationException"));
    req("GET", "/2015-03-31/functions", "Marker=%7a%zz&MaxItems=5", NULL);
    CHECK(R.status == 200);
    teardown();
}

static void test_misc(void)
{
    setup();
    create("m", NULL);
    char *rev = xstrdup(rs("RevisionId"));
    /* DryRun validates and answers without storing */
    reqf("PUT", "/2015-03-31/functions/m/code", NULL, "{\"ZipFile\":\"%s\",\"DryRun\":true}",
         ZIP2_B64);
    CHECK(is_err(200, ""));
    req("GET", "/2015-03-31/functions/m/configuration", NULL, NULL);
    CHECK_STR(rs("RevisionId"), rev);
    CHECK_STR(rs("CodeSha256"), ZIP_SHA);
    free(rev);
    CHECK(changes == 0);
    /* $LATEST qualifier reports the qualified ARN */
    req("GET", "/2015-03-31/functions/m/configuration", "Qualifier=%24LATEST", NULL);
    CHECK(is_err(200, ""));
    CHECK_STR(rs("FunctionArn"), ARN_PREFIX "m:$LATEST");
    /* update operations refuse qualified names */
    req("PUT", "/2015-03-31/functions/m:1/configuration", NULL, "{\"Timeout\":5}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("POST", "/2015-03-31/functions/m:prod/versions", NULL, NULL);
    CHECK(is_err(400, "InvalidParameterValueException"));
    /* missing functions everywhere */
    req("GET", "/2015-03-31/functions/zz/aliases", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("GET", "/2015-03-31/functions/zz/versions", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("GET", "/2019-09-30/functions/zz/concurrency", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("DELETE", "/2015-03-31/functions/zz/aliases/a", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("DELETE", "/2015-03-31/functions/m/aliases/never", NULL, NULL);
    CHECK(is_err(204, ""));
    req("DELETE", "/2015-03-31/functions/m", "Qualifier=prod", NULL);
    CHECK(is_err(400, "InvalidParameterValueException"));
    /* an alias update that would route $LATEST with weights is refused */
    req("POST", "/2015-03-31/functions/m/versions", NULL, NULL);
    req("PUT", "/2015-03-31/functions/m/configuration", NULL, "{\"Timeout\":6}");
    req("POST", "/2015-03-31/functions/m/versions", NULL, NULL);
    CHECK_STR(rs("Version"), "2");
    req("POST", "/2015-03-31/functions/m/aliases", NULL,
        "{\"Name\":\"a\",\"FunctionVersion\":\"2\",\"RoutingConfig\":"
        "{\"AdditionalVersionWeights\":{\"1\":0.1}}}");
    CHECK(is_err(201, ""));
    req("PUT", "/2015-03-31/functions/m/aliases/a", NULL, "{\"FunctionVersion\":\"$LATEST\"}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("PUT", "/2015-03-31/functions/m/aliases/a", NULL,
        "{\"FunctionVersion\":\"$LATEST\",\"RoutingConfig\":{}}");
    CHECK(is_err(200, ""));
    CHECK(!json_object_get(R.body, "RoutingConfig"));
    CHECK_STR(rs("FunctionVersion"), "$LATEST");
    req("PUT", "/2015-03-31/functions/m/aliases/a", NULL,
        "{\"FunctionVersion\":\"2\",\"RoutingConfig\":{\"AdditionalVersionWeights\":"
        "{\"1\":0.1,\"3\":0.1}}}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    req("PUT", "/2015-03-31/functions/m/aliases/a", NULL,
        "{\"FunctionVersion\":\"2\",\"RoutingConfig\":{\"AdditionalVersionWeights\":"
        "{\"9\":0.1}}}");
    CHECK(is_err(404, "ResourceNotFoundException"));
    /* environment variables: exactly at the 4 KB limit is fine */
    char val[4200];
    size_t n = 4096 - strlen("{\"AB\":\"\"}");
    memset(val, 'v', n);
    val[n] = 0;
    reqf("PUT", "/2015-03-31/functions/m/configuration", NULL,
         "{\"Environment\":{\"Variables\":{\"AB\":\"%s\"}}}", val);
    CHECK(is_err(200, ""));
    val[n] = 'v';
    val[n + 1] = 0;
    reqf("PUT", "/2015-03-31/functions/m/configuration", NULL,
         "{\"Environment\":{\"Variables\":{\"AB\":\"%s\"}}}", val);
    CHECK(is_err(400, "InvalidParameterValueException"));
    /* switching a provided function to python needs a handler */
    reqf("POST", "/2015-03-31/functions", NULL,
         "{\"FunctionName\":\"p\",\"Role\":\"" ROLE "\",\"Runtime\":\"provided\","
         "\"Code\":{\"ZipFile\":\"%s\"}}",
         ZIP_B64);
    CHECK(is_err(201, ""));
    req("PUT", "/2015-03-31/functions/p/configuration", NULL, "{\"Runtime\":\"python3.13\"}");
    CHECK(is_err(400, "InvalidParameterValueException"));
    CHECK(msg_has("Runtime and Handler are mandatory"));
    /* error messages stay ASCII even for hostile input */
    req("GET", "/2015-03-31/functions/\xc3\x28" "bad", NULL, NULL);
    CHECK(is_err(400, "ValidationException"));
    CHECK(R.body && strchr(rmsg(), '?'));
    teardown();
}

static void test_event_invoke_config(void)
{
    setup();
    create("ev", NULL);
    req("POST", "/2015-03-31/functions/ev/versions", NULL, NULL);
    req("POST", "/2015-03-31/functions/ev/aliases", NULL,
        "{\"Name\":\"prod\",\"FunctionVersion\":\"1\"}");
    req("GET", "/2019-09-25/functions/ev/event-invoke-config", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    CHECK(msg_has("doesn't have an EventInvokeConfig"));
    req("PUT", "/2019-09-25/functions/ev/event-invoke-config", NULL,
        "{\"MaximumRetryAttempts\":3}");
    CHECK(is_err(400, "ValidationException"));
    req("PUT", "/2019-09-25/functions/ev/event-invoke-config", NULL,
        "{\"MaximumEventAgeInSeconds\":59,\"MaximumRetryAttempts\":-1}");
    CHECK(is_err(400, "ValidationException"));
    CHECK(msg_has("2 validation errors"));
    req("PUT", "/2019-09-25/functions/ev/event-invoke-config", NULL,
        "{\"DestinationConfig\":{\"OnFailure\":{\"Destination\":\"nope\"}}}");
    CHECK(is_err(400, "ValidationException"));
    req("POST", "/2019-09-25/functions/ev/event-invoke-config", NULL,
        "{\"MaximumRetryAttempts\":1}");
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("PUT", "/2019-09-25/functions/ev/event-invoke-config", NULL,
        "{\"MaximumRetryAttempts\":0,\"DestinationConfig\":{\"OnFailure\":{\"Destination\":"
        "\"arn:aws:lambda:us-east-1:123456789012:function:dlq\"}}}");
    CHECK(is_err(200, ""));
    CHECK_STR(rs("FunctionArn"), ARN_PREFIX "ev:$LATEST");
    CHECK(ri("MaximumRetryAttempts") == 0);
    CHECK(json_is_real(json_object_get(R.body, "LastModified")));
    CHECK(!json_object_get(R.body, "_Qualifier"));
    req("POST", "/2019-09-25/functions/ev/event-invoke-config", NULL,
        "{\"MaximumEventAgeInSeconds\":120}");
    CHECK(is_err(200, ""));
    CHECK(ri("MaximumRetryAttempts") == 0 && ri("MaximumEventAgeInSeconds") == 120);
    req("PUT", "/2019-09-25/functions/ev/event-invoke-config", "Qualifier=prod",
        "{\"MaximumRetryAttempts\":1}");
    CHECK(is_err(200, ""));
    CHECK_STR(rs("FunctionArn"), ARN_PREFIX "ev:prod");
    req("PUT", "/2019-09-25/functions/ev/event-invoke-config", "Qualifier=nope",
        "{\"MaximumRetryAttempts\":1}");
    CHECK(is_err(404, "ResourceNotFoundException"));
    req("GET", "/2019-09-25/functions/ev/event-invoke-config/list", "MaxItems=1", NULL);
    CHECK(is_err(200, ""));
    CHECK(json_array_size(json_object_get(R.body, "FunctionEventInvokeConfigs")) == 1);
    CHECK(rs("NextMarker"));

    fn_config_t *fc = NULL;
    err_t e = {0};
    CHECK(store_resolve(S, "ev", NULL, &fc, &e) == 0);
    int ok1 = fc->max_retry_attempts == 0 && fc->max_event_age_s == 120 && !fc->on_success &&
              fc->on_failure && !strcmp(fc->on_failure, ARN_PREFIX "dlq");
    fn_config_free(fc);
    CHECK(ok1);
    CHECK(store_resolve(S, "ev:prod", NULL, &fc, &e) == 0);
    int ok2 = fc->max_retry_attempts == 1 && fc->max_event_age_s == 21600 && !fc->on_failure;
    fn_config_free(fc);
    CHECK(ok2);
    CHECK(store_resolve(S, "ev:1", NULL, &fc, &e) == 0);
    int ok3 = fc->max_retry_attempts == 2 && fc->max_event_age_s == 21600;
    fn_config_free(fc);
    CHECK(ok3);

    /* deleting the alias deletes its config */
    req("DELETE", "/2015-03-31/functions/ev/aliases/prod", NULL, NULL);
    req("GET", "/2019-09-25/functions/ev/event-invoke-config/list", NULL, NULL);
    CHECK(json_array_size(json_object_get(R.body, "FunctionEventInvokeConfigs")) == 1);
    req("DELETE", "/2019-09-25/functions/ev/event-invoke-config", NULL, NULL);
    CHECK(is_err(204, ""));
    req("DELETE", "/2019-09-25/functions/ev/event-invoke-config", NULL, NULL);
    CHECK(is_err(404, "ResourceNotFoundException"));
    teardown();
}

int main(void)
{
    make_fixtures();
    RUN(test_create_and_get);
    RUN(test_create_validation);
    RUN(test_hostile_zips);
    RUN(test_update);
    RUN(test_versions_and_aliases);
    RUN(test_delete_function);
    RUN(test_concurrency_and_account);
    RUN(test_tags);
    RUN(test_list_functions_paging);
    RUN(test_persistence);
    RUN(test_routing);
    RUN(test_misc);
    RUN(test_event_invoke_config);
    if (S)
        teardown();
    json_decref(R.body);
    free(ZIP_B64);
    free(ZIP2_B64);
    CHECK_EXIT();
}
