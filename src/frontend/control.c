/* control.c - the Lambda control plane over the store (see control.h).
 *
 * How: the decoded path is split into segments and routed on
 * (date prefix, shape, method).  Each handler validates its input the way
 * Lambda does -- model constraint violations (lengths, ranges, patterns,
 * enums) are collected and reported together as one 400
 * ValidationException ("N validation error(s) detected: ..."), semantic
 * problems are 400 InvalidParameterValueException -- then changes the store
 * inside one transaction.  Responses are jansson objects; internal members
 * of stored configs ("_..." keys) never leave this file.
 *
 * Invariants: every response has a status; error responses carry
 * x-amzn-ErrorType in resp->error_type and {"Type":"User","message"|
 * "Message":...}; $LATEST's RevisionId changes on every successful update;
 * on_change fires after the transaction of every update/delete commits. */
#include "frontend/control.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "store/codezip.h"

#define LIST_DEFAULT_ITEMS 50
#define TOTAL_CODE_LIMIT 80530636800ull
#define ENV_LIMIT 4096
#define MIN_UNRESERVED 100
#define MAX_TAGS 50
#define MAX_ZIP_REQUEST 69905067ull /* base64 size of the 50 MB zip limit */

static const char *const RUNTIMES[] = {
    "provided",   "provided.al2", "provided.al2023", "python3.9",  "python3.10",
    "python3.11", "python3.12",   "python3.13",      "python3.14", "nodejs18.x",
    "nodejs20.x", "nodejs22.x",   "nodejs24.x",
};

static const char *const RESERVED_ENV[] = {
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
};

#define ROLE_PATTERN "arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+"
#define NAME_PATTERN                                                                          \
    "(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\\d{1}:)?(\\d{12}:)?(function:)?" \
    "([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?"
#define ALIAS_PATTERN "(?!^[0-9]+$)([a-zA-Z0-9-_]+)"
#define VERSION_PATTERN "(\\$LATEST|[0-9]+)"
#define ENV_KEY_PATTERN "[a-zA-Z]([a-zA-Z0-9_])+"
#define REVISION_MSG                                                                       \
    "The Revision Id provided does not match the latest Revision Id. Call the GetFunction/" \
    "GetAlias API to retrieve the latest Revision Id"

/* ---- per-request context ---- */

typedef struct ctx {
    store_t *s;
    const control_config_t *cfg;
    const api_request_t *req;
    api_response_t *resp;
    json_t *body;  /* request body object (POST/PUT), else empty object */
    json_t *query; /* key -> array of decoded values */
    const char *op;
    /* collected ValidationException messages */
    int nverr;
    char verr[2048];
    /* a SnapStart version published by this request (snapshot to make) */
    char snap_name[65];
    long snap_version;
} ctx_t;

static int in_list(const char *v, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v, list[i]))
            return 1;
    return 0;
}

void api_error(api_response_t *resp, int status, const char *type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* messages echo client input: keep them printable ASCII (valid JSON) */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            *p = '?';
    json_decref(resp->body);
    resp->status = status;
    snprintf(resp->error_type, sizeof resp->error_type, "%s", type);
    /* the botocore model spells the member "Message" for these shapes */
    static const char *const capital_types[] = {
        "ResourceNotFoundException", "ServiceException",         "InvalidRuntimeException",
        "InvalidZipFileException",   "ResourceInUseException",   "NoPublishedVersionException",
        "RecursiveInvocationException", "SnapStartException",    "SnapStartNotReadyException",
        "SnapStartTimeoutException", "CodeVerificationFailedException",
        "InvalidCodeSignatureException", "CodeSigningConfigNotFoundException",
    };
    int capital = in_list(type, capital_types, ARRAY_LEN(capital_types)) ||
                  !strncmp(type, "EC2", 3) || !strncmp(type, "KMS", 3) || !strncmp(type, "EFS", 3);
    resp->body = json_pack("{s:s, s:s}", "Type", "User", capital ? "Message" : "message", msg);
}

static void ok(ctx_t *c, int status, json_t *body)
{
    json_decref(c->resp->body);
    c->resp->status = status;
    c->resp->error_type[0] = 0;
    c->resp->body = body;
}

static void verr_add(ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void verr_add(ctx_t *c, const char *fmt, ...)
{
    size_t used = strlen(c->verr);
    if (c->nverr && used + 2 < sizeof c->verr) {
        strcat(c->verr, "; ");
        used += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->verr + used, sizeof c->verr - used, fmt, ap);
    va_end(ap);
    c->nverr++;
}

/* Emits the collected ValidationException; returns -1 if there was one. */
static int verr_flush(ctx_t *c)
{
    if (!c->nverr)
        return 0;
    api_error(c->resp, 400, "ValidationException", "%d validation error%s detected: %s", c->nverr,
              c->nverr > 1 ? "s" : "", c->verr);
    return -1;
}

static int invalid(ctx_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int invalid(ctx_t *c, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    api_error(c->resp, 400, "InvalidParameterValueException", "%s", msg);
    return -1;
}

static int bad_content(ctx_t *c, const char *what)
{
    api_error(c->resp, 400, "InvalidRequestContentException",
              "Could not parse request body into json: %s", what);
    return -1;
}

static int server_error(ctx_t *c, const err_t *e)
{
    if (e->code == STORE_ECONFLICT) { /* lost an optimistic race (etcd store) */
        log_info("control", "%s: %s", c->op, e->msg);
        api_error(c->resp, 409, "ResourceConflictException", "%s", e->msg);
        return -1;
    }
    log_error("control", "%s: %s", c->op, e->msg);
    api_error(c->resp, 500, "ServiceException", "Internal error: %s", e->msg);
    return -1;
}

/* ---- small helpers ---- */

static char *fn_arn(ctx_t *c, const char *name)
{
    return xasprintf("arn:aws:lambda:%s:%s:function:%s", c->cfg->region, c->cfg->account_id,
                     name);
}

static int not_found_fn(ctx_t *c, const char *name, const char *qual)
{
    char *arn = fn_arn(c, name);
    api_error(c->resp, 404, "ResourceNotFoundException", "Function not found: %s%s%s", arn,
              qual ? ":" : "", qual ? qual : "");
    free(arn);
    return -1;
}

static int is_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

static const char *jstr(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* A copy of a stored object without the internal "_..." members. */
static json_t *public_view(json_t *stored)
{
    json_t *out = json_deep_copy(stored);
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(out, tmp, k, v)
    {
        if (k[0] == '_')
            json_object_del(out, k);
    }
    return out;
}

/* ---- body field access: 1 present, 0 absent/null, -1 wrong type ---- */

static int f_get(ctx_t *c, json_t *obj, const char *key, json_type want, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    int good = json_typeof(v) == want;
    if (want == JSON_INTEGER && json_is_real(v)) {
        double d = json_real_value(v);
        good = d == floor(d) && fabs(d) < 1e15;
    }
    if (want == JSON_TRUE)
        good = json_is_boolean(v);
    if (!good) {
        char what[200];
        snprintf(what, sizeof what, "Unexpected value type for field '%s'", key);
        bad_content(c, what);
        return -1;
    }
    *out = v;
    return 1;
}

static long long int_of(json_t *v)
{
    return json_is_integer(v) ? json_integer_value(v) : (long long)json_real_value(v);
}

/* ---- query string ---- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static char *pct_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 &&
            hexval(s[i + 2]) >= 0) {
            out[j++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else if (s[i] == '+') {
            out[j++] = ' ';
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = 0;
    return out;
}

static json_t *parse_query(const char *q)
{
    json_t *obj = json_object();
    if (!q)
        return obj;
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        if (n) {
            const char *eq = memchr(q, '=', n);
            size_t kn = eq ? (size_t)(eq - q) : n;
            char *k = pct_decode(q, kn);
            char *v = eq ? pct_decode(eq + 1, n - kn - 1) : xstrdup("");
            json_t *arr = json_object_get(obj, k);
            if (!arr) {
                arr = json_array();
                json_object_set_new(obj, k, arr);
            }
            /* may be invalid UTF-8; query values are never serialized */
            json_array_append_new(arr, json_string_nocheck(v));
            free(k);
            free(v);
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return obj;
}

static const char *qget(ctx_t *c, const char *key)
{
    const char *v = json_string_value(json_array_get(json_object_get(c->query, key), 0));
    return v && *v ? v : NULL;
}

/* ---- function references ---- */

/* Parses a function reference from the path; on failure fills the error
 * response and returns -1. */
static int ref_parse(ctx_t *c, const char *ref, char **name, char **qual)
{
    err_t e = {0};
    if (store_parse_ref(c->s, ref, name, qual, &e) == 0)
        return 0;
    if (e.code == ENOENT) {
        api_error(c->resp, 404, "ResourceNotFoundException", "Function not found: %.300s", ref);
        return -1;
    }
    if (strlen(ref) > 140)
        verr_add(c,
                 "Value '%.300s' at 'functionName' failed to satisfy constraint: Member must have "
                 "length less than or equal to 140",
                 ref);
    else
        verr_add(c,
                 "Value '%.300s' at 'functionName' failed to satisfy constraint: Member must "
                 "satisfy regular expression pattern: " NAME_PATTERN,
                 ref);
    return verr_flush(c);
}

/* Parses ref and merges it with the Qualifier query parameter. */
static int ref_with_query(ctx_t *c, const char *ref, char **name, char **qual)
{
    if (ref_parse(c, ref, name, qual) < 0)
        return -1;
    const char *q = qget(c, "Qualifier");
    if (q) {
        if (*qual && strcmp(*qual, q))
            return invalid(c, "The derived qualifier from the function name does not match the "
                              "specified qualifier.");
        for (const char *p = q; *p; p++)
            if (!isalnum((unsigned char)*p) && *p != '$' && *p != '_' && *p != '-') {
                verr_add(c,
                         "Value '%.200s' at 'qualifier' failed to satisfy constraint: Member must "
                         "satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)",
                         q);
                return verr_flush(c);
            }
        if (strlen(q) > 128) {
            verr_add(c,
                     "Value '%.200s' at 'qualifier' failed to satisfy constraint: Member must "
                     "have length less than or equal to 128",
                     q);
            return verr_flush(c);
        }
        if (!*qual)
            *qual = xstrdup(q);
    }
    return 0;
}

/* Loads the stored config for name[:qual] (an alias gives its primary
 * version's config; *alias_out gets the alias when wanted). */
static json_t *load_cfg(ctx_t *c, const char *name, const char *qual, json_t **alias_out)
{
    if (alias_out)
        *alias_out = NULL;
    json_t *cfg = store_fn_get(c->s, name);
    if (!cfg) {
        not_found_fn(c, name, NULL);
        return NULL;
    }
    if (!qual || !strcmp(qual, "$LATEST"))
        return cfg;
    json_decref(cfg);
    const char *ver = qual;
    json_t *alias = NULL;
    if (!is_digits(qual)) {
        alias = store_alias_get(c->s, name, qual);
        if (!alias) {
            not_found_fn(c, name, qual);
            return NULL;
        }
        ver = jstr(alias, "FunctionVersion");
    }
    if (!strcmp(ver, "$LATEST"))
        cfg = store_fn_get(c->s, name);
    else
        cfg = strlen(ver) < 10 ? store_version_get(c->s, name, strtol(ver, NULL, 10)) : NULL;
    if (!cfg)
        not_found_fn(c, name, qual);
    if (alias_out && cfg)
        *alias_out = alias;
    else
        json_decref(alias);
    return cfg;
}

/* Rejects a qualifier on operations that only act on $LATEST. */
static int no_qualifier(ctx_t *c, const char *qual)
{
    if (qual && strcmp(qual, "$LATEST"))
        return invalid(c, "This operation does not accept a qualified function name (%s).", qual);
    return 0;
}

/* ---- configuration validation ---- */

static void check_str_len(ctx_t *c, const char *field, const char *v, size_t max)
{
    if (strlen(v) > max)
        verr_add(c,
                 "Value '%.300s' at '%s' failed to satisfy constraint: Member must have length "
                 "less than or equal to %zu",
                 v, field, max);
}

static void check_range(ctx_t *c, const char *field, long long v, long long min, long long max)
{
    if (v < min)
        verr_add(c,
                 "Value '%lld' at '%s' failed to satisfy constraint: Member must have value "
                 "greater than or equal to %lld",
                 v, field, min);
    else if (v > max)
        verr_add(c,
                 "Value '%lld' at '%s' failed to satisfy constraint: Member must have value less "
                 "than or equal to %lld",
                 v, field, max);
}

static int role_ok(const char *r)
{
    if (strncmp(r, "arn:", 4))
        return 0;
    r += 4;
    if (strncmp(r, "aws", 3) == 0) {
        r += 3;
        while (isalpha((unsigned char)*r) || *r == '-')
            r++;
    }
    if (strncmp(r, ":iam::", 6))
        return 0;
    r += 6;
    for (int i = 0; i < 12; i++, r++)
        if (!isdigit((unsigned char)*r))
            return 0;
    if (strncmp(r, ":role/", 6))
        return 0;
    r += 6;
    if (!*r)
        return 0;
    for (; *r; r++)
        if (!isalnum((unsigned char)*r) && !strchr("_+=,.@-/", *r))
            return 0;
    return 1;
}

static int env_key_ok(const char *k)
{
    if (!isalpha((unsigned char)k[0]) || !k[1])
        return 0;
    for (const char *p = k + 1; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return 0;
    return 1;
}

/* Applies the configuration members of body to cfg (Create and
 * UpdateFunctionConfiguration share this).  Returns 0, or -1 with the
 * error response filled. */
static int apply_config(ctx_t *c, json_t *cfg, json_t *body, int creating)
{
    json_t *v, *role, *handler, *desc, *timeout, *mem, *env, *eph, *runtime, *tracing, *snap,
        *arch = NULL, *pkg = NULL;
    if (f_get(c, body, "Role", JSON_STRING, &role) < 0 ||
        f_get(c, body, "Handler", JSON_STRING, &handler) < 0 ||
        f_get(c, body, "Description", JSON_STRING, &desc) < 0 ||
        f_get(c, body, "Timeout", JSON_INTEGER, &timeout) < 0 ||
        f_get(c, body, "MemorySize", JSON_INTEGER, &mem) < 0 ||
        f_get(c, body, "Environment", JSON_OBJECT, &env) < 0 ||
        f_get(c, body, "EphemeralStorage", JSON_OBJECT, &eph) < 0 ||
        f_get(c, body, "Runtime", JSON_STRING, &runtime) < 0 ||
        f_get(c, body, "TracingConfig", JSON_OBJECT, &tracing) < 0 ||
        f_get(c, body, "SnapStart", JSON_OBJECT, &snap) < 0)
        return -1;
    if (creating && (f_get(c, body, "Architectures", JSON_ARRAY, &arch) < 0 ||
                     f_get(c, body, "PackageType", JSON_STRING, &pkg) < 0))
        return -1;
    json_t *vars = NULL, *size = NULL, *mode = NULL, *apply = NULL;
    if (env && f_get(c, env, "Variables", JSON_OBJECT, &vars) < 0)
        return -1;
    if (eph && f_get(c, eph, "Size", JSON_INTEGER, &size) < 0)
        return -1;
    if (tracing && f_get(c, tracing, "Mode", JSON_STRING, &mode) < 0)
        return -1;
    if (snap && f_get(c, snap, "ApplyOn", JSON_STRING, &apply) < 0)
        return -1;
    const char *k;
    json_object_foreach(vars, k, v)
    {
        if (!json_is_string(v))
            return bad_content(c, "Environment variable values must be strings");
    }
    for (size_t i = 0; arch && i < json_array_size(arch); i++)
        if (!json_is_string(json_array_get(arch, i)))
            return bad_content(c, "Architectures must be a list of strings");

    /* model constraints */
    if (role && !role_ok(json_string_value(role)))
        verr_add(c,
                 "Value '%.300s' at 'role' failed to satisfy constraint: Member must satisfy "
                 "regular expression pattern: " ROLE_PATTERN,
                 json_string_value(role));
    if (handler) {
        const char *h = json_string_value(handler);
        check_str_len(c, "handler", h, 128);
        int ws = !*h;
        for (const char *p = h; *p; p++)
            ws |= isspace((unsigned char)*p) != 0;
        if (ws)
            verr_add(c,
                     "Value '%.300s' at 'handler' failed to satisfy constraint: Member must "
                     "satisfy regular expression pattern: [^\\s]+",
                     h);
    }
    if (desc)
        check_str_len(c, "description", json_string_value(desc), 256);
    if (timeout)
        check_range(c, "timeout", int_of(timeout), 1, 900);
    if (mem)
        check_range(c, "memorySize", int_of(mem), 128, 10240);
    if (eph) {
        if (!size)
            verr_add(c, "Value null at 'ephemeralStorage.size' failed to satisfy constraint: "
                        "Member must not be null");
        else
            check_range(c, "ephemeralStorage.size", int_of(size), 512, 10240);
    }
    int badkey = 0;
    json_object_foreach(vars, k, v) badkey |= !env_key_ok(k);
    if (badkey)
        verr_add(c, "Value at 'environment.variables' failed to satisfy constraint: Map keys must "
                    "satisfy constraint: [Member must satisfy regular expression "
                    "pattern: " ENV_KEY_PATTERN "]");
    if (arch) {
        if (json_array_size(arch) != 1)
            verr_add(c, "Value '[...]' at 'architectures' failed to satisfy constraint: Member "
                        "must have length %s",
                     json_array_size(arch) ? "less than or equal to 1"
                                           : "greater than or equal to 1");
        else {
            const char *a = json_string_value(json_array_get(arch, 0));
            if (strcmp(a, "x86_64") && strcmp(a, "arm64"))
                verr_add(c,
                         "Value '[%.100s]' at 'architectures' failed to satisfy constraint: "
                         "Member must satisfy constraint: [Member must satisfy enum value set: "
                         "[x86_64, arm64]]",
                         a);
        }
    }
    if (pkg && strcmp(json_string_value(pkg), "Zip") && strcmp(json_string_value(pkg), "Image"))
        verr_add(c,
                 "Value '%.100s' at 'packageType' failed to satisfy constraint: Member must "
                 "satisfy enum value set: [Zip, Image]",
                 json_string_value(pkg));
    if (mode && strcmp(json_string_value(mode), "Active") &&
        strcmp(json_string_value(mode), "PassThrough"))
        verr_add(c,
                 "Value '%.100s' at 'tracingConfig.mode' failed to satisfy constraint: Member "
                 "must satisfy enum value set: [Active, PassThrough]",
                 json_string_value(mode));
    if (apply && strcmp(json_string_value(apply), "PublishedVersions") &&
        strcmp(json_string_value(apply), "None"))
        verr_add(c,
                 "Value '%.100s' at 'snapStart.applyOn' failed to satisfy constraint: Member "
                 "must satisfy enum value set: [PublishedVersions, None]",
                 json_string_value(apply));
    if (verr_flush(c) < 0)
        return -1;

    /* semantic checks */
    json_t *layers = json_object_get(body, "Layers"), *fs = json_object_get(body, "FileSystemConfigs");
    if (json_array_size(layers))
        return invalid(c, "Layers are not supported by this Lambda implementation (flicker) yet.");
    if (json_array_size(fs))
        return invalid(c, "FileSystemConfigs (EFS) are not supported by this Lambda "
                          "implementation (flicker).");
    if (pkg && !strcmp(json_string_value(pkg), "Image"))
        return invalid(c, "PackageType Image is not supported by this Lambda implementation "
                          "(flicker) yet; use PackageType Zip.");
    if (arch && !strcmp(json_string_value(json_array_get(arch, 0)), "arm64"))
        return invalid(c, "Architecture arm64 is not supported on this host; use x86_64.");
    if (runtime && !in_list(json_string_value(runtime), RUNTIMES, ARRAY_LEN(RUNTIMES)))
        return invalid(c,
                       "The runtime parameter of %.100s is not supported by this Lambda "
                       "implementation. Supported runtimes: provided, provided.al2, "
                       "provided.al2023, python3.9-python3.14, nodejs18.x, nodejs20.x, "
                       "nodejs22.x, nodejs24.x.",
                       json_string_value(runtime));
    if (vars) {
        char reserved[512] = "";
        json_object_foreach(vars, k, v)
        {
            if (in_list(k, RESERVED_ENV, ARRAY_LEN(RESERVED_ENV)) &&
                strlen(reserved) + strlen(k) + 3 < sizeof reserved) {
                if (*reserved)
                    strcat(reserved, ", ");
                strcat(reserved, k);
            }
        }
        if (*reserved)
            return invalid(c,
                           "Lambda was unable to configure your environment variables because "
                           "the environment variables you have provided contains reserved keys "
                           "that are currently not supported for modification. Reserved keys "
                           "used in this request: %s",
                           reserved);
        char *dump = json_dumps(vars, JSON_COMPACT);
        size_t n = strlen(dump);
        free(dump);
        if (n > ENV_LIMIT)
            return invalid(c, "Lambda was unable to configure your environment variables because "
                              "the environment variables you have provided exceeded the 4KB "
                              "limit. String measured: %zu bytes",
                           n);
    }

    /* apply */
    if (role)
        json_object_set(cfg, "Role", role);
    if (handler)
        json_object_set(cfg, "Handler", handler);
    if (desc)
        json_object_set(cfg, "Description", desc);
    if (timeout)
        json_object_set_new(cfg, "Timeout", json_integer(int_of(timeout)));
    if (mem)
        json_object_set_new(cfg, "MemorySize", json_integer(int_of(mem)));
    if (eph)
        json_object_set_new(cfg, "EphemeralStorage", json_pack("{s:I}", "Size",
                                                                (json_int_t)int_of(size)));
    if (runtime)
        json_object_set(cfg, "Runtime", runtime);
    if (env) {
        if (vars && json_object_size(vars))
            json_object_set_new(cfg, "Environment", json_pack("{s:O}", "Variables", vars));
        else
            json_object_del(cfg, "Environment");
    }
    if (mode)
        json_object_set_new(cfg, "TracingConfig", json_pack("{s:O}", "Mode", mode));
    if (apply)
        json_object_set_new(cfg, "SnapStart", json_pack("{s:O, s:s}", "ApplyOn", apply,
                                                         "OptimizationStatus", "Off"));

    /* the result must be runnable */
    const char *rt = jstr(cfg, "Runtime");
    const char *h = jstr(cfg, "Handler");
    if (!rt || (strncmp(rt, "provided", 8) && (!h || !*h)))
        return invalid(c, "Runtime and Handler are mandatory parameters for functions created "
                          "with deployment packages.");
    if (!jstr(cfg, "Role"))
        return invalid(c, "Role is a required parameter.");
    return 0;
}

/* Stamps a changed $LATEST: new RevisionId and LastModified. */
static void touch(json_t *cfg)
{
    char rev[37], ts[40];
    uuid_v4(rev);
    format_lambda_time(now_wall_ms(), ts, sizeof ts);
    json_object_set_new(cfg, "RevisionId", json_string(rev));
    json_object_set_new(cfg, "LastModified", json_string(ts));
}

/* Decodes, size-checks and stores the ZipFile of body into cfg. */
static int apply_code(ctx_t *c, json_t *cfg, json_t *body, int required)
{
    json_t *zip, *s3b, *image;
    if (f_get(c, body, "ZipFile", JSON_STRING, &zip) < 0 ||
        f_get(c, body, "S3Bucket", JSON_STRING, &s3b) < 0 ||
        f_get(c, body, "ImageUri", JSON_STRING, &image) < 0)
        return -1;
    if (image)
        return invalid(c, "Container images (ImageUri) are not supported by this Lambda "
                          "implementation yet; upload a ZipFile.");
    if (!zip) {
        if (s3b)
            return invalid(c, "S3 code locations are not supported by this Lambda "
                              "implementation; upload the code as ZipFile.");
        if (required)
            return invalid(c, "Please provide a source for function code.");
        return 0;
    }
    size_t blen = json_string_length(zip);
    if (blen > MAX_ZIP_REQUEST) {
        api_error(c->resp, 413, "RequestTooLargeException",
                  "Request must be smaller than %llu bytes for the %s operation",
                  MAX_ZIP_REQUEST, c->op);
        return -1;
    }
    size_t len = 0;
    void *bytes = base64_decode(json_string_value(zip), blen, &len);
    if (!bytes)
        return bad_content(c, "ZipFile is not valid base64");
    if (len == 0) {
        free(bytes);
        return invalid(c, "Could not unzip uploaded file. Please check your file, then try to "
                          "upload again.");
    }
    if (len > CODEZIP_MAX_ZIPPED) {
        free(bytes);
        api_error(c->resp, 413, "RequestTooLargeException",
                  "Request must be smaller than %llu bytes for the %s operation",
                  MAX_ZIP_REQUEST, c->op);
        return -1;
    }
    if (store_total_code_size(c->s) + len > TOTAL_CODE_LIMIT) {
        free(bytes);
        api_error(c->resp, 400, "CodeStorageExceededException", "Code storage limit exceeded.");
        return -1;
    }
    char hex[65], b64[45];
    err_t e = {0};
    int rc = store_put_code(c->s, bytes, len, hex, b64, &e);
    free(bytes);
    if (rc < 0) {
        if (e.code == EINVAL || e.code == EFBIG)
            return invalid(c, "%s", e.msg);
        return server_error(c, &e);
    }
    json_object_set_new(cfg, "CodeSha256", json_string(b64));
    json_object_set_new(cfg, "CodeSize", json_integer((json_int_t)len));
    json_object_set_new(cfg, "_CodeHex", json_string(hex));
    return 0;
}

static int check_revision(ctx_t *c, json_t *body, json_t *current)
{
    json_t *rev;
    if (f_get(c, body, "RevisionId", JSON_STRING, &rev) < 0)
        return -1;
    if (rev && strcmp(json_string_value(rev), jstr(current, "RevisionId") ?: "")) {
        api_error(c->resp, 412, "PreconditionFailedException", REVISION_MSG);
        return -1;
    }
    return 0;
}

static void notify(ctx_t *c, const char *name)
{
    if (c->cfg->on_change)
        c->cfg->on_change(name, c->cfg->on_change_arg);
}

/* Publishes $LATEST as a new version (or returns the newest version when
 * $LATEST has not changed since it was published).  Inside a transaction.
 * Returns the stored version config, or NULL with the error filled. */
static json_t *publish(ctx_t *c, const char *name, json_t *latest, const char *description)
{
    err_t e = {0};
    long last = store_last_version(c->s, name);
    if (last > 0) {
        json_t *prev = store_version_get(c->s, name, last);
        const char *src = jstr(prev, "_SourceRevision");
        if (src && !strcmp(src, jstr(latest, "RevisionId")))
            return prev;
        json_decref(prev);
    }
    long n = store_next_version(c->s, name, &e);
    if (n < 0) {
        server_error(c, &e);
        return NULL;
    }
    json_t *ver = json_deep_copy(latest);
    char *arn = fn_arn(c, name);
    char num[24];
    snprintf(num, sizeof num, "%ld", n);
    json_object_set_new(ver, "FunctionArn", json_sprintf("%s:%ld", arn, n));
    free(arn);
    json_object_set_new(ver, "Version", json_string(num));
    json_object_set_new(ver, "_SourceRevision", json_string(jstr(latest, "RevisionId")));
    if (description)
        json_object_set_new(ver, "Description", json_string(description));
    /* SnapStart: on microVMs the version is Pending until a worker has run
     * Init and saved the snapshot (the frontend's job, on_snapshot); a
     * sandbox cannot be snapshotted, so there the version stays unoptimized. */
    const char *apply = jstr(json_object_get(ver, "SnapStart"), "ApplyOn");
    const char *iso = jstr(latest, "_Isolation");
    if (!iso)
        iso = c->cfg->isolation ? c->cfg->isolation : "sandbox";
    if (apply && !strcmp(apply, "PublishedVersions")) {
        json_object_set_new(ver, "SnapStart", json_pack("{s:s, s:s}", "ApplyOn", apply,
                                                         "OptimizationStatus", "Off"));
        if (!strcmp(iso, "microvm")) {
            json_object_set_new(ver, "State", json_string("Pending"));
            json_object_set_new(ver, "StateReason",
                                json_string("Flicker is creating a SnapStart snapshot of this version."));
            json_object_set_new(ver, "StateReasonCode", json_string("Creating"));
            json_object_set_new(ver, "_SnapshotPending", json_true());
            snprintf(c->snap_name, sizeof c->snap_name, "%s", name);
            c->snap_version = n;
        }
    }
    touch(ver);
    if (store_version_insert(c->s, name, n, ver, &e) < 0) {
        json_decref(ver);
        server_error(c, &e);
        return NULL;
    }
    return ver;
}

/* ---- tags ---- */

/* The tag that chooses a function's isolation backend (docs/api.md). */
#define ISOLATION_TAG "flicker:isolation"

static int check_tags(ctx_t *c, json_t *tags, json_t *existing, int creating)
{
    const char *k;
    json_t *v;
    size_t total = json_object_size(existing);
    json_object_foreach(tags, k, v)
    {
        if (!json_is_string(v))
            return bad_content(c, "Tag values must be strings");
        if (!strcmp(k, ISOLATION_TAG)) {
            const char *iso = json_string_value(v);
            if (!creating)
                return invalid(c, "The tag " ISOLATION_TAG " can only be set by CreateFunction.");
            if (strcmp(iso, "sandbox") && strcmp(iso, "microvm"))
                return invalid(c, "The tag " ISOLATION_TAG " must be sandbox or microvm, not "
                                  "%.100s.", iso);
        }
        if (!*k || strlen(k) > 128 || strlen(json_string_value(v)) > 256)
            return invalid(c, "Tag keys must be 1-128 characters and values 0-256 characters.");
        if (!strncmp(k, "aws:", 4))
            return invalid(c, "Tag keys starting with 'aws:' are reserved.");
        if (!json_object_get(existing, k))
            total++;
    }
    if (total > MAX_TAGS)
        return invalid(c, "A function can have at most %d tags.", MAX_TAGS);
    return 0;
}

/* ---- operations ---- */

static void op_create_function(ctx_t *c)
{
    json_t *fname, *publish_f, *tags;
    if (f_get(c, c->body, "FunctionName", JSON_STRING, &fname) < 0 ||
        f_get(c, c->body, "Publish", JSON_TRUE, &publish_f) < 0 ||
        f_get(c, c->body, "Tags", JSON_OBJECT, &tags) < 0)
        return;
    json_t *code = json_object_get(c->body, "Code");
    if (!fname)
        verr_add(c, "Value null at 'functionName' failed to satisfy constraint: Member must not "
                    "be null");
    if (!json_object_get(c->body, "Role") || json_is_null(json_object_get(c->body, "Role")))
        verr_add(c, "Value null at 'role' failed to satisfy constraint: Member must not be null");
    if (!code || json_is_null(code))
        verr_add(c, "Value null at 'code' failed to satisfy constraint: Member must not be null");
    if (verr_flush(c) < 0)
        return;
    if (!json_is_object(code)) {
        bad_content(c, "Unexpected value type for field 'Code'");
        return;
    }
    const char *fn = json_string_value(fname);
    char *name = NULL, *qual = NULL;
    err_t e = {0};
    if (store_parse_ref(c->s, fn, &name, &qual, &e) < 0) {
        /* is it just too long? */
        int plain = 1;
        for (const char *p = fn; *p; p++)
            plain &= isalnum((unsigned char)*p) || *p == '-' || *p == '_';
        if (plain && strlen(fn) > 64)
            verr_add(c,
                     "Value '%.300s' at 'functionName' failed to satisfy constraint: Member must "
                     "have length less than or equal to 64",
                     fn);
        else
            verr_add(c,
                     "Value '%.300s' at 'functionName' failed to satisfy constraint: Member must "
                     "satisfy regular expression pattern: " NAME_PATTERN,
                     fn);
        verr_flush(c);
        return;
    }
    if (qual) {
        invalid(c, "Function name %s must not include a qualifier.", fn);
        goto out;
    }
    char *arn = fn_arn(c, name);
    char *lg = xasprintf("/aws/lambda/%s", name);
    json_t *cfg = json_pack(
        "{s:s, s:s, s:s, s:I, s:s, s:i, s:i, s:s, s:s, s:s, s:s, s:[s], s:{s:i}, s:{s:s},"
        " s:{s:s, s:s}, s:{s:s, s:s}}",
        "FunctionName", name, "FunctionArn", arn, "Description", "", "CodeSize", (json_int_t)0,
        "Version", "$LATEST", "Timeout", 3, "MemorySize", 128, "State", "Active",
        "LastUpdateStatus", "Successful", "PackageType", "Zip", "Handler", "", "Architectures",
        "x86_64", "EphemeralStorage", "Size", 512, "TracingConfig", "Mode", "PassThrough",
        "SnapStart", "ApplyOn", "None", "OptimizationStatus", "Off", "LoggingConfig",
        "LogFormat", "Text", "LogGroup", lg);
    json_object_del(cfg, "Handler");
    free(arn);
    free(lg);
    if (apply_config(c, cfg, c->body, 1) < 0)
        goto out_cfg;
    if (tags && check_tags(c, tags, NULL, 1) < 0)
        goto out_cfg;
    if (tags && json_is_string(json_object_get(tags, ISOLATION_TAG)))
        json_object_set(cfg, "_Isolation", json_object_get(tags, ISOLATION_TAG));
    json_t *existing = store_fn_get(c->s, name);
    if (existing) {
        json_decref(existing);
        api_error(c->resp, 409, "ResourceConflictException", "Function already exist: %s", name);
        goto out_cfg;
    }
    if (apply_code(c, cfg, code, 1) < 0)
        goto out_cfg;
    touch(cfg);
    if (store_begin(c->s, &e) < 0) {
        server_error(c, &e);
        goto out_cfg;
    }
    json_t *result = NULL;
    if (store_fn_insert(c->s, name, cfg, &e) < 0) {
        store_rollback(c->s);
        if (e.code == EEXIST)
            api_error(c->resp, 409, "ResourceConflictException", "Function already exist: %s",
                      name);
        else
            server_error(c, &e);
        goto out_cfg;
    }
    if (tags && store_tags_set(c->s, name, tags, &e) < 0) {
        store_rollback(c->s);
        server_error(c, &e);
        goto out_cfg;
    }
    if (publish_f && json_is_true(publish_f)) {
        result = publish(c, name, cfg, NULL);
        if (!result) {
            store_rollback(c->s);
            goto out_cfg;
        }
    } else {
        result = json_incref(cfg);
    }
    if (store_commit(c->s, &e) < 0) {
        store_rollback(c->s);
        json_decref(result);
        server_error(c, &e);
        goto out_cfg;
    }
    ok(c, 201, public_view(result));
    json_decref(result);
out_cfg:
    json_decref(cfg);
out:
    free(name);
    free(qual);
}

static void op_get_function(ctx_t *c, const char *ref, int config_only)
{
    char *name = NULL, *qual = NULL;
    if (ref_with_query(c, ref, &name, &qual) < 0)
        goto out;
    json_t *cfg = load_cfg(c, name, qual, NULL);
    if (!cfg)
        goto out;
    json_t *pub = public_view(cfg);
    if (qual && !strcmp(qual, "$LATEST")) {
        char *arn = fn_arn(c, name);
        json_object_set_new(pub, "FunctionArn", json_sprintf("%s:$LATEST", arn));
        free(arn);
    }
    if (config_only) {
        ok(c, 200, pub);
    } else {
        char *blob = store_blob_path(c->s, jstr(cfg, "_CodeHex"));
        json_t *out = json_pack("{s:o, s:{s:s, s:s+}}", "Configuration", pub, "Code",
                                "RepositoryType", "S3", "Location", "file://", blob);
        free(blob);
        json_t *tags = store_tags_get(c->s, name);
        if (json_object_size(tags))
            json_object_set(out, "Tags", tags);
        json_decref(tags);
        int r = store_get_reserved(c->s, name);
        if (r >= 0)
            json_object_set_new(out, "Concurrency",
                                json_pack("{s:i}", "ReservedConcurrentExecutions", r));
        ok(c, 200, out);
    }
    json_decref(cfg);
out:
    free(name);
    free(qual);
}

/* Paging over an ordered array whose items have sort keys. */
typedef struct page_item {
    const char *name;
    long ver; /* 0 for $LATEST / not versioned */
    json_t *obj;
} page_item_t;

static int item_cmp(const char *name, long ver, const char *mname, long mver)
{
    int r = strcmp(name, mname);
    if (r)
        return r;
    return ver < mver ? -1 : ver > mver;
}

static char *item_marker(const page_item_t *it)
{
    return it->ver ? xasprintf("%s:%ld", it->name, it->ver) : xstrdup(it->name);
}

/* Fills out[key] with the page of items selected by Marker/MaxItems and
 * NextMarker when more remain.  Returns -1 with an error on bad MaxItems. */
static int paginate(ctx_t *c, page_item_t *items, size_t n, const char *key, long cap,
                    json_t *out)
{
    long max = LIST_DEFAULT_ITEMS;
    const char *mi = qget(c, "MaxItems");
    if (mi) {
        char *end;
        long v = strtol(mi, &end, 10);
        if (*end || end == mi)
            return invalid(c, "Invalid MaxItems: %.50s", mi), -1;
        if (v < 1 || v > 10000) {
            check_range(c, "maxItems", v, 1, 10000);
            return verr_flush(c);
        }
        max = v;
    }
    if (max > cap)
        max = cap;
    size_t start = 0;
    const char *marker = qget(c, "Marker");
    if (marker) {
        char *m = xstrdup(marker);
        char *colon = strrchr(m, ':');
        long mver = 0;
        if (colon && is_digits(colon + 1)) {
            *colon = 0;
            mver = strtol(colon + 1, NULL, 10);
        }
        while (start < n && item_cmp(items[start].name, items[start].ver, m, mver) < 0)
            start++;
        free(m);
    }
    json_t *arr = json_array();
    size_t i = start;
    for (; i < n && (long)(i - start) < max; i++)
        json_array_append_new(arr, public_view(items[i].obj));
    json_object_set_new(out, key, arr);
    if (i < n) {
        char *next = item_marker(&items[i]);
        json_object_set_new(out, "NextMarker", json_string(next));
        free(next);
    }
    return 0;
}

static void latest_as_listed(ctx_t *c, json_t *cfg, int qualified)
{
    if (!qualified)
        return;
    char *arn = fn_arn(c, jstr(cfg, "FunctionName"));
    json_object_set_new(cfg, "FunctionArn", json_sprintf("%s:$LATEST", arn));
    free(arn);
}

static void op_list_functions(ctx_t *c)
{
    const char *fv = qget(c, "FunctionVersion");
    if (fv && strcmp(fv, "ALL")) {
        verr_add(c,
                 "Value '%.50s' at 'functionVersion' failed to satisfy constraint: Member must "
                 "satisfy enum value set: [ALL]",
                 fv);
        verr_flush(c);
        return;
    }
    json_t *fns = store_fn_list(c->s);
    json_t *keep = json_array(); /* owns the version configs */
    size_t cap = json_array_size(fns) + 1, n = 0;
    page_item_t *items = xcalloc(cap, sizeof *items);
    size_t i;
    json_t *fnc;
    json_array_foreach(fns, i, fnc)
    {
        if (n == cap)
            items = xrealloc(items, (cap *= 2) * sizeof *items);
        latest_as_listed(c, fnc, fv != NULL);
        items[n++] = (page_item_t){jstr(fnc, "FunctionName"), 0, fnc};
        if (fv) {
            json_t *vers = store_version_list(c->s, jstr(fnc, "FunctionName"));
            json_array_append_new(keep, vers);
            size_t j;
            json_t *vc;
            json_array_foreach(vers, j, vc)
            {
                if (n == cap)
                    items = xrealloc(items, (cap *= 2) * sizeof *items);
                items[n++] = (page_item_t){jstr(fnc, "FunctionName"),
                                           strtol(jstr(vc, "Version"), NULL, 10), vc};
            }
        }
    }
    json_t *out = json_object();
    if (paginate(c, items, n, "Functions", LIST_DEFAULT_ITEMS, out) == 0)
        ok(c, 200, out);
    else
        json_decref(out);
    free(items);
    json_decref(keep);
    json_decref(fns);
}

static void op_list_versions(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    if (ref_parse(c, ref, &name, &qual) < 0)
        goto out;
    json_t *latest = store_fn_get(c->s, name);
    if (!latest) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    latest_as_listed(c, latest, 1);
    json_t *vers = store_version_list(c->s, name);
    size_t n = json_array_size(vers) + 1, i;
    page_item_t *items = xcalloc(n, sizeof *items);
    items[0] = (page_item_t){name, 0, latest};
    json_t *vc;
    json_array_foreach(vers, i, vc) items[i + 1] =
        (page_item_t){name, strtol(jstr(vc, "Version"), NULL, 10), vc};
    json_t *out = json_object();
    if (paginate(c, items, n, "Versions", 10000, out) == 0)
        ok(c, 200, out);
    else
        json_decref(out);
    free(items);
    json_decref(vers);
    json_decref(latest);
out:
    free(name);
    free(qual);
}

static void op_update_code(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    json_t *cfg = NULL, *arch, *pub, *dry;
    err_t e = {0};
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    if (f_get(c, c->body, "Architectures", JSON_ARRAY, &arch) < 0 ||
        f_get(c, c->body, "Publish", JSON_TRUE, &pub) < 0 ||
        f_get(c, c->body, "DryRun", JSON_TRUE, &dry) < 0)
        goto out;
    if (arch) {
        const char *a = json_string_value(json_array_get(arch, 0));
        if (json_array_size(arch) != 1 || !a || (strcmp(a, "x86_64") && strcmp(a, "arm64"))) {
            verr_add(c, "Value at 'architectures' failed to satisfy constraint: Member must have "
                        "length 1 and satisfy enum value set: [x86_64, arm64]");
            verr_flush(c);
            goto out;
        }
        if (!strcmp(a, "arm64")) {
            invalid(c, "Architecture arm64 is not supported on this host; use x86_64.");
            goto out;
        }
    }
    cfg = store_fn_get(c->s, name);
    if (!cfg) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    if (check_revision(c, c->body, cfg) < 0 || apply_code(c, cfg, c->body, 1) < 0)
        goto out;
    touch(cfg);
    if (dry && json_is_true(dry)) {
        ok(c, 200, public_view(cfg));
        goto out;
    }
    if (store_begin(c->s, &e) < 0) {
        server_error(c, &e);
        goto out;
    }
    json_t *result = NULL;
    if (store_fn_update(c->s, name, cfg, &e) < 0) {
        store_rollback(c->s);
        e.code == ENOENT ? not_found_fn(c, name, NULL) : server_error(c, &e);
        goto out;
    }
    if (pub && json_is_true(pub)) {
        if (!(result = publish(c, name, cfg, NULL))) {
            store_rollback(c->s);
            goto out;
        }
    } else {
        result = json_incref(cfg);
    }
    if (store_commit(c->s, &e) < 0) {
        store_rollback(c->s);
        json_decref(result);
        server_error(c, &e);
        goto out;
    }
    notify(c, name);
    ok(c, 200, public_view(result));
    json_decref(result);
out:
    json_decref(cfg);
    free(name);
    free(qual);
}

static void op_update_config(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    json_t *cfg = NULL;
    err_t e = {0};
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    cfg = store_fn_get(c->s, name);
    if (!cfg) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    if (check_revision(c, c->body, cfg) < 0 || apply_config(c, cfg, c->body, 0) < 0)
        goto out;
    touch(cfg);
    if (store_fn_update(c->s, name, cfg, &e) < 0) {
        e.code == ENOENT ? not_found_fn(c, name, NULL) : server_error(c, &e);
        goto out;
    }
    notify(c, name);
    ok(c, 200, public_view(cfg));
out:
    json_decref(cfg);
    free(name);
    free(qual);
}

/* Names of the aliases of name that route to version ver, as "[a, b]". */
static char *aliases_using(ctx_t *c, const char *name, const char *ver)
{
    json_t *list = store_alias_list(c->s, name);
    size_t i;
    json_t *a;
    char *acc = NULL;
    json_array_foreach(list, i, a)
    {
        int uses = !strcmp(jstr(a, "FunctionVersion") ?: "", ver) ||
                   json_object_get(json_object_get(json_object_get(a, "RoutingConfig"),
                                                   "AdditionalVersionWeights"),
                                   ver);
        if (!uses)
            continue;
        char *n = acc ? xasprintf("%s, %s", acc, jstr(a, "Name")) : xstrdup(jstr(a, "Name"));
        free(acc);
        acc = n;
    }
    json_decref(list);
    return acc;
}

static void op_delete_function(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    err_t e = {0};
    if (ref_with_query(c, ref, &name, &qual) < 0)
        goto out;
    json_t *fn = store_fn_get(c->s, name);
    if (!fn) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    json_decref(fn);
    if (!qual) {
        if (store_fn_delete(c->s, name, &e) < 0) {
            e.code == ENOENT ? not_found_fn(c, name, NULL) : server_error(c, &e);
            goto out;
        }
    } else if (!strcmp(qual, "$LATEST")) {
        invalid(c, "$LATEST version cannot be deleted without deleting the function.");
        goto out;
    } else if (!is_digits(qual) || strlen(qual) > 9) {
        invalid(c, "Deletion of aliases is not supported through DeleteFunction; use "
                   "DeleteAlias (qualifier %s).",
                qual);
        goto out;
    } else {
        char *users = aliases_using(c, name, qual);
        if (users) {
            api_error(c->resp, 409, "ResourceConflictException",
                      "Unable to delete version because the following aliases reference it: [%s]",
                      users);
            free(users);
            goto out;
        }
        if (store_version_delete(c->s, name, strtol(qual, NULL, 10), &e) < 0) {
            e.code == ENOENT ? not_found_fn(c, name, qual) : server_error(c, &e);
            goto out;
        }
    }
    notify(c, name);
    ok(c, 204, NULL);
out:
    free(name);
    free(qual);
}

static void op_publish_version(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    json_t *latest = NULL, *sha, *desc;
    err_t e = {0};
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    if (f_get(c, c->body, "CodeSha256", JSON_STRING, &sha) < 0 ||
        f_get(c, c->body, "Description", JSON_STRING, &desc) < 0)
        goto out;
    if (desc) {
        check_str_len(c, "description", json_string_value(desc), 256);
        if (verr_flush(c) < 0)
            goto out;
    }
    if (store_begin(c->s, &e) < 0) {
        server_error(c, &e);
        goto out;
    }
    latest = store_fn_get(c->s, name);
    if (!latest) {
        store_rollback(c->s);
        not_found_fn(c, name, NULL);
        goto out;
    }
    if (check_revision(c, c->body, latest) < 0) {
        store_rollback(c->s);
        goto out;
    }
    if (sha && strcmp(json_string_value(sha), jstr(latest, "CodeSha256"))) {
        store_rollback(c->s);
        api_error(c->resp, 412, "PreconditionFailedException",
                  "CodeSHA256 (%.100s) is different from current CodeSHA256 in $LATEST (%s). "
                  "Please try again with the current CodeSHA256.",
                  json_string_value(sha), jstr(latest, "CodeSha256"));
        goto out;
    }
    json_t *ver = publish(c, name, latest, desc ? json_string_value(desc) : NULL);
    if (!ver) {
        store_rollback(c->s);
        goto out;
    }
    if (store_commit(c->s, &e) < 0) {
        store_rollback(c->s);
        json_decref(ver);
        server_error(c, &e);
        goto out;
    }
    ok(c, 201, public_view(ver));
    json_decref(ver);
out:
    json_decref(latest);
    free(name);
    free(qual);
}

/* ---- aliases ---- */

static int alias_name_check(ctx_t *c, const char *a)
{
    size_t n = strlen(a);
    if (n < 1 || n > 128)
        verr_add(c,
                 "Value '%.200s' at 'name' failed to satisfy constraint: Member must have length "
                 "%s",
                 a, n ? "less than or equal to 128" : "greater than or equal to 1");
    else {
        int ok_chars = 1;
        for (const char *p = a; *p; p++)
            ok_chars &= isalnum((unsigned char)*p) || *p == '-' || *p == '_';
        if (!ok_chars || is_digits(a))
            verr_add(c,
                     "Value '%.200s' at 'name' failed to satisfy constraint: Member must satisfy "
                     "regular expression pattern: " ALIAS_PATTERN,
                     a);
    }
    return verr_flush(c);
}

static int version_check(ctx_t *c, const char *v)
{
    if (strcmp(v, "$LATEST") && !is_digits(v))
        verr_add(c,
                 "Value '%.200s' at 'functionVersion' failed to satisfy constraint: Member must "
                 "satisfy regular expression pattern: " VERSION_PATTERN,
                 v);
    return verr_flush(c);
}

static int version_exists(ctx_t *c, const char *name, const char *v)
{
    if (!strcmp(v, "$LATEST"))
        return 1;
    if (strlen(v) > 9)
        return 0;
    json_t *cfg = store_version_get(c->s, name, strtol(v, NULL, 10));
    json_decref(cfg);
    return cfg != NULL;
}

/* Validates a RoutingConfig against the alias' primary version. */
static int routing_check(ctx_t *c, const char *name, const char *primary, json_t *routing,
                         json_t **weights_out)
{
    json_t *w;
    *weights_out = NULL;
    if (f_get(c, routing, "AdditionalVersionWeights", JSON_OBJECT, &w) < 0)
        return -1;
    if (!w)
        return 0;
    const char *k;
    json_t *v;
    json_object_foreach(w, k, v)
    {
        if (!json_is_number(v))
            return bad_content(c, "AdditionalVersionWeights values must be numbers");
        if (!is_digits(k))
            verr_add(c,
                     "Value '%.50s' at 'routingConfig.additionalVersionWeights' failed to satisfy "
                     "constraint: Map keys must satisfy constraint: [Member must satisfy regular "
                     "expression pattern: [0-9]+]",
                     k);
        double d = json_number_value(v);
        if (d < 0 || d > 1)
            verr_add(c,
                     "Value '%g' at 'routingConfig.additionalVersionWeights' failed to satisfy "
                     "constraint: Map value must satisfy constraint: [Member must have value "
                     "less than or equal to 1.0, Member must have value greater than or equal "
                     "to 0.0]",
                     d);
    }
    if (verr_flush(c) < 0)
        return -1;
    if (json_object_size(w) > 1)
        return invalid(c, "Number of items in AdditionalVersionWeights must be less than or "
                          "equal to 1.");
    json_object_foreach(w, k, v)
    {
        if (!strcmp(primary, "$LATEST"))
            return invalid(c, "$LATEST is not supported for an alias pointing to more than 1 "
                              "version");
        if (!strcmp(k, primary))
            return invalid(c, "Additional version %s must be different from the alias' primary "
                              "version.",
                           k);
        if (!version_exists(c, name, k))
            return not_found_fn(c, name, k);
    }
    *weights_out = w;
    return 0;
}

static json_t *alias_view(json_t *a) { return public_view(a); }

static void op_create_alias(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    json_t *aname, *ver, *desc, *routing, *weights = NULL;
    err_t e = {0};
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    if (f_get(c, c->body, "Name", JSON_STRING, &aname) < 0 ||
        f_get(c, c->body, "FunctionVersion", JSON_STRING, &ver) < 0 ||
        f_get(c, c->body, "Description", JSON_STRING, &desc) < 0 ||
        f_get(c, c->body, "RoutingConfig", JSON_OBJECT, &routing) < 0)
        goto out;
    if (!aname)
        verr_add(c, "Value null at 'name' failed to satisfy constraint: Member must not be null");
    if (!ver)
        verr_add(c, "Value null at 'functionVersion' failed to satisfy constraint: Member must "
                    "not be null");
    if (desc)
        check_str_len(c, "description", json_string_value(desc), 256);
    if (verr_flush(c) < 0 || alias_name_check(c, json_string_value(aname)) < 0 ||
        version_check(c, json_string_value(ver)) < 0)
        goto out;
    json_t *fn = store_fn_get(c->s, name);
    if (!fn) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    json_decref(fn);
    const char *v = json_string_value(ver), *an = json_string_value(aname);
    if (!version_exists(c, name, v)) {
        not_found_fn(c, name, v);
        goto out;
    }
    if (routing && routing_check(c, name, v, routing, &weights) < 0)
        goto out;
    char rev[37];
    uuid_v4(rev);
    char *arn = fn_arn(c, name);
    json_t *a = json_pack("{s:s++, s:s, s:s, s:s, s:s}", "AliasArn", arn, ":", an, "Name", an,
                          "FunctionVersion", v, "Description", desc ? json_string_value(desc) : "",
                          "RevisionId", rev);
    if (weights && json_object_size(weights))
        json_object_set_new(a, "RoutingConfig",
                            json_pack("{s:O}", "AdditionalVersionWeights", weights));
    if (store_alias_put(c->s, name, an, a, 0, &e) < 0) {
        if (e.code == EEXIST)
            api_error(c->resp, 409, "ResourceConflictException", "Alias already exists: %s:%s",
                      arn, an);
        else
            server_error(c, &e);
    } else {
        ok(c, 201, alias_view(a));
    }
    json_decref(a);
    free(arn);
out:
    free(name);
    free(qual);
}

static json_t *alias_or_404(ctx_t *c, const char *name, const char *alias)
{
    json_t *fn = store_fn_get(c->s, name);
    if (!fn) {
        not_found_fn(c, name, NULL);
        return NULL;
    }
    json_decref(fn);
    json_t *a = store_alias_get(c->s, name, alias);
    if (!a) {
        char *arn = fn_arn(c, name);
        api_error(c->resp, 404, "ResourceNotFoundException", "Alias not found: %s:%.200s", arn,
                  alias);
        free(arn);
    }
    return a;
}

static void op_alias(ctx_t *c, const char *ref, const char *alias, const char *method)
{
    char *name = NULL, *qual = NULL;
    json_t *a = NULL;
    err_t e = {0};
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    if (!strcmp(method, "DELETE")) {
        json_t *fn = store_fn_get(c->s, name);
        if (!fn) {
            not_found_fn(c, name, NULL);
            goto out;
        }
        json_decref(fn);
        if (store_alias_delete(c->s, name, alias, &e) < 0 && e.code != ENOENT) {
            server_error(c, &e);
            goto out;
        }
        ok(c, 204, NULL);
        goto out;
    }
    if (!(a = alias_or_404(c, name, alias)))
        goto out;
    if (!strcmp(method, "GET")) {
        ok(c, 200, alias_view(a));
        goto out;
    }
    /* UpdateAlias */
    json_t *ver, *desc, *routing, *weights = NULL;
    if (f_get(c, c->body, "FunctionVersion", JSON_STRING, &ver) < 0 ||
        f_get(c, c->body, "Description", JSON_STRING, &desc) < 0 ||
        f_get(c, c->body, "RoutingConfig", JSON_OBJECT, &routing) < 0)
        goto out;
    if (desc)
        check_str_len(c, "description", json_string_value(desc), 256);
    if (verr_flush(c) < 0 || (ver && version_check(c, json_string_value(ver)) < 0))
        goto out;
    if (check_revision(c, c->body, a) < 0)
        goto out;
    const char *v = ver ? json_string_value(ver) : jstr(a, "FunctionVersion");
    if (!version_exists(c, name, v)) {
        not_found_fn(c, name, v);
        goto out;
    }
    if (routing) {
        if (routing_check(c, name, v, routing, &weights) < 0)
            goto out;
        if (weights && json_object_size(weights))
            json_object_set_new(a, "RoutingConfig",
                                json_pack("{s:O}", "AdditionalVersionWeights", weights));
        else
            json_object_del(a, "RoutingConfig");
    } else if (ver) {
        /* the existing routing must still make sense for the new primary */
        json_t *old = json_object_get(a, "RoutingConfig");
        if (old && routing_check(c, name, v, old, &weights) < 0)
            goto out;
    }
    json_object_set_new(a, "FunctionVersion", json_string(v));
    if (desc)
        json_object_set(a, "Description", desc);
    char rev[37];
    uuid_v4(rev);
    json_object_set_new(a, "RevisionId", json_string(rev));
    if (store_alias_put(c->s, name, alias, a, 1, &e) < 0) {
        server_error(c, &e);
        goto out;
    }
    ok(c, 200, alias_view(a));
out:
    json_decref(a);
    free(name);
    free(qual);
}

static void op_list_aliases(ctx_t *c, const char *ref)
{
    char *name = NULL, *qual = NULL;
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    json_t *fn = store_fn_get(c->s, name);
    if (!fn) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    json_decref(fn);
    const char *fv = qget(c, "FunctionVersion");
    json_t *list = store_alias_list(c->s, name);
    size_t n = 0, i;
    page_item_t *items = xcalloc(json_array_size(list) + 1, sizeof *items);
    json_t *a;
    json_array_foreach(list, i, a)
    {
        if (fv && strcmp(fv, jstr(a, "FunctionVersion")))
            continue;
        items[n++] = (page_item_t){jstr(a, "Name"), 0, a};
    }
    json_t *out = json_object();
    if (paginate(c, items, n, "Aliases", 10000, out) == 0)
        ok(c, 200, out);
    else
        json_decref(out);
    free(items);
    json_decref(list);
out:
    free(name);
    free(qual);
}

/* ---- concurrency ---- */

static void op_concurrency(ctx_t *c, const char *ref, const char *method)
{
    char *name = NULL, *qual = NULL;
    err_t e = {0};
    if (ref_parse(c, ref, &name, &qual) < 0 || no_qualifier(c, qual) < 0)
        goto out;
    json_t *fn = store_fn_get(c->s, name);
    if (!fn) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    json_decref(fn);
    int cur = store_get_reserved(c->s, name);
    if (!strcmp(method, "GET")) {
        ok(c, 200, cur >= 0 ? json_pack("{s:i}", "ReservedConcurrentExecutions", cur)
                            : json_object());
        goto out;
    }
    if (!strcmp(method, "DELETE")) {
        if (store_set_reserved(c->s, name, -1, &e) < 0) {
            server_error(c, &e);
        } else {
            notify(c, name);
            ok(c, 204, NULL);
        }
        goto out;
    }
    json_t *rv;
    if (f_get(c, c->body, "ReservedConcurrentExecutions", JSON_INTEGER, &rv) < 0)
        goto out;
    if (!rv)
        verr_add(c, "Value null at 'reservedConcurrentExecutions' failed to satisfy constraint: "
                    "Member must not be null");
    else if (int_of(rv) < 0)
        check_range(c, "reservedConcurrentExecutions", int_of(rv), 0, 1LL << 40);
    if (verr_flush(c) < 0)
        goto out;
    long long want = int_of(rv);
    long long others = store_total_reserved(c->s) - (cur > 0 ? cur : 0);
    int limit = c->cfg->account_concurrency > 0 ? c->cfg->account_concurrency : 1000;
    if (limit - others - want < MIN_UNRESERVED) {
        invalid(c, "Specified ReservedConcurrentExecutions for function decreases account's "
                   "UnreservedConcurrentExecution below its minimum value of [%d].",
                MIN_UNRESERVED);
        goto out;
    }
    if (store_set_reserved(c->s, name, (int)want, &e) < 0) {
        server_error(c, &e);
        goto out;
    }
    notify(c, name); /* a frontend's held leases must not outlive a new limit */
    ok(c, 200, json_pack("{s:I}", "ReservedConcurrentExecutions", (json_int_t)want));
out:
    free(name);
    free(qual);
}

static void op_account_settings(ctx_t *c)
{
    int limit = c->cfg->account_concurrency > 0 ? c->cfg->account_concurrency : 1000;
    ok(c, 200,
       json_pack("{s:{s:I, s:I, s:I, s:i, s:i}, s:{s:I, s:I}}", "AccountLimit", "TotalCodeSize",
                 (json_int_t)TOTAL_CODE_LIMIT, "CodeSizeUnzipped", (json_int_t)CODEZIP_MAX_UNZIPPED,
                 "CodeSizeZipped", (json_int_t)CODEZIP_MAX_ZIPPED, "ConcurrentExecutions", limit,
                 "UnreservedConcurrentExecutions", limit - store_total_reserved(c->s),
                 "AccountUsage", "TotalCodeSize", (json_int_t)store_total_code_size(c->s),
                 "FunctionCount", (json_int_t)store_fn_count(c->s)));
}

/* ---- tags ---- */

static void op_tags(ctx_t *c, const char *ref, const char *method)
{
    char *name = NULL, *qual = NULL;
    err_t e = {0};
    json_t *tags = NULL;
    if (ref_parse(c, ref, &name, &qual) < 0)
        goto out;
    if (qual) {
        invalid(c, "Tags can only be applied to an unqualified function ARN, not %.200s", ref);
        goto out;
    }
    json_t *fn = store_fn_get(c->s, name);
    if (!fn) {
        not_found_fn(c, name, NULL);
        goto out;
    }
    json_decref(fn);
    tags = store_tags_get(c->s, name);
    if (!strcmp(method, "GET")) {
        ok(c, 200, json_pack("{s:O}", "Tags", tags));
        goto out;
    }
    if (!strcmp(method, "POST")) {
        json_t *add;
        if (f_get(c, c->body, "Tags", JSON_OBJECT, &add) < 0)
            goto out;
        if (!add) {
            verr_add(c, "Value null at 'tags' failed to satisfy constraint: Member must not be "
                        "null");
            verr_flush(c);
            goto out;
        }
        if (check_tags(c, add, tags, 0) < 0)
            goto out;
        json_object_update(tags, add);
    } else {
        json_t *keys = json_object_get(c->query, "tagKeys");
        if (!keys) {
            verr_add(c, "Value null at 'tagKeys' failed to satisfy constraint: Member must not "
                        "be null");
            verr_flush(c);
            goto out;
        }
        size_t i;
        json_t *k;
        json_array_foreach(keys, i, k)
        {
            if (json_is_string(k) && !strcmp(json_string_value(k), ISOLATION_TAG) &&
                json_object_get(tags, ISOLATION_TAG)) {
                invalid(c, "The tag " ISOLATION_TAG " cannot be removed: it was set when the "
                           "function was created.");
                goto out;
            }
        }
        json_array_foreach(keys, i, k) json_object_del(tags, json_string_value(k));
    }
    if (store_tags_set(c->s, name, tags, &e) < 0) {
        server_error(c, &e);
        goto out;
    }
    ok(c, 204, NULL);
out:
    json_decref(tags);
    free(name);
    free(qual);
}

/* ---- event-invoke config (asynchronous invocation settings) ---- */

/* Validates a DestinationConfig member ("OnSuccess"/"OnFailure") and copies
 * it into out.  Returns -1 on a type error (response filled). */
static int eic_destination(ctx_t *c, json_t *dc, const char *key, json_t *out)
{
    json_t *d, *arn;
    if (f_get(c, dc, key, JSON_OBJECT, &d) < 0)
        return -1;
    if (!d) {
        json_object_set_new(out, key, json_object());
        return 0;
    }
    if (f_get(c, d, "Destination", JSON_STRING, &arn) < 0)
        return -1;
    json_t *o = json_object();
    if (arn) {
        const char *a = json_string_value(arn);
        if (strlen(a) > 350)
            verr_add(c,
                     "Value '%.100s...' at 'destinationConfig.%c%s.destination' failed to "
                     "satisfy constraint: Member must have length less than or equal to 350",
                     a, tolower((unsigned char)key[0]), key + 1);
        else if (*a && strncmp(a, "arn:", 4))
            verr_add(c,
                     "Value '%.200s' at 'destinationConfig.%c%s.destination' failed to satisfy "
                     "constraint: Member must satisfy regular expression pattern: "
                     "$|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\\-])+:([a-z]{2}(-gov)?-[a-z]+-\\d{1})?:"
                     "(\\d{12})?:(.*)",
                     a, tolower((unsigned char)key[0]), key + 1);
        if (*a)
            json_object_set(o, "Destination", arn);
    }
    json_object_set_new(out, key, o);
    return 0;
}

static void op_event_invoke(ctx_t *c, const char *ref, const char *method, int list)
{
    char *name = NULL, *qual = NULL, *arn = NULL;
    json_t *cur = NULL, *target = NULL;
    err_t e = {0};
    if (list ? ref_parse(c, ref, &name, &qual) < 0 : ref_with_query(c, ref, &name, &qual) < 0)
        goto out;
    if (list) {
        json_t *fn = store_fn_get(c->s, name);
        if (!fn) {
            not_found_fn(c, name, NULL);
            goto out;
        }
        json_decref(fn);
        json_t *all = store_eic_list(c->s, name);
        size_t n = json_array_size(all), i;
        page_item_t *items = xcalloc(n + 1, sizeof *items);
        json_t *x;
        json_array_foreach(all, i, x) items[i] = (page_item_t){jstr(x, "_Qualifier"), 0, x};
        json_t *outj = json_object();
        if (paginate(c, items, n, "FunctionEventInvokeConfigs", 50, outj) == 0)
            ok(c, 200, outj);
        else
            json_decref(outj);
        free(items);
        json_decref(all);
        goto out;
    }
    if (!qual)
        qual = xstrdup("$LATEST");
    /* the function, version or alias must exist */
    if (!(target = load_cfg(c, name, qual, NULL)))
        goto out;
    char *base = fn_arn(c, name);
    arn = xasprintf("%s:%s", base, qual);
    free(base);
    cur = store_eic_get(c->s, name, qual);
    if (!strcmp(method, "GET") || !strcmp(method, "DELETE")) {
        if (!cur) {
            api_error(c->resp, 404, "ResourceNotFoundException",
                      "The function %s doesn't have an EventInvokeConfig", arn);
            goto out;
        }
        if (!strcmp(method, "GET")) {
            ok(c, 200, public_view(cur));
        } else if (store_eic_delete(c->s, name, qual, &e) < 0) {
            server_error(c, &e);
        } else {
            ok(c, 204, NULL);
        }
        goto out;
    }
    int update = !strcmp(method, "POST");
    if (update && !cur) {
        api_error(c->resp, 404, "ResourceNotFoundException",
                  "The function %s doesn't have an EventInvokeConfig", arn);
        goto out;
    }
    json_t *mra, *mea, *dc;
    if (f_get(c, c->body, "MaximumRetryAttempts", JSON_INTEGER, &mra) < 0 ||
        f_get(c, c->body, "MaximumEventAgeInSeconds", JSON_INTEGER, &mea) < 0 ||
        f_get(c, c->body, "DestinationConfig", JSON_OBJECT, &dc) < 0)
        goto out;
    if (mra)
        check_range(c, "maximumRetryAttempts", int_of(mra), 0, 2);
    if (mea)
        check_range(c, "maximumEventAgeInSeconds", int_of(mea), 60, 21600);
    json_t *dest = json_object();
    if (dc && (eic_destination(c, dc, "OnSuccess", dest) < 0 ||
               eic_destination(c, dc, "OnFailure", dest) < 0)) {
        json_decref(dest);
        goto out;
    }
    if (verr_flush(c) < 0) {
        json_decref(dest);
        goto out;
    }
    json_t *next = update ? json_deep_copy(cur) : json_object();
    json_object_set_new(next, "FunctionArn", json_string(arn));
    json_object_set_new(next, "_Qualifier", json_string(qual));
    json_object_set_new(next, "LastModified", json_real((double)now_wall_ms() / 1000.0));
    if (mra)
        json_object_set_new(next, "MaximumRetryAttempts", json_integer(int_of(mra)));
    if (mea)
        json_object_set_new(next, "MaximumEventAgeInSeconds", json_integer(int_of(mea)));
    if (dc)
        json_object_set_new(next, "DestinationConfig", dest);
    else {
        json_decref(dest);
        if (!json_object_get(next, "DestinationConfig"))
            json_object_set_new(next, "DestinationConfig",
                                json_pack("{s:{}, s:{}}", "OnSuccess", "OnFailure"));
    }
    if (store_eic_put(c->s, name, qual, next, &e) < 0)
        server_error(c, &e);
    else
        ok(c, 200, public_view(next));
    json_decref(next);
out:
    json_decref(cur);
    json_decref(target);
    free(arn);
    free(name);
    free(qual);
}

/* ---- routing ---- */

#define MAX_SEGS 8

static int unknown_op(ctx_t *c)
{
    api_error(c->resp, 404, "UnknownOperationException", "Unknown operation %s %.200s",
              c->req->method, c->req->path);
    return 0;
}

static int needs_body(const char *method) { return !strcmp(method, "POST") || !strcmp(method, "PUT"); }

/* Routes (method, segments) to an operation; NULL when unknown. */
typedef enum {
    OP_NONE,
    OP_CREATE, OP_LIST, OP_GET, OP_DELETE, OP_GET_CONFIG, OP_UPDATE_CONFIG, OP_UPDATE_CODE,
    OP_PUBLISH, OP_LIST_VERSIONS, OP_CREATE_ALIAS, OP_LIST_ALIASES, OP_ALIAS, OP_CONCURRENCY,
    OP_ACCOUNT, OP_TAGS, OP_EVENT_INVOKE, OP_EVENT_INVOKE_LIST,
} op_t;

static op_t route(const char *method, char **segs, int n, const char **opname)
{
#define IS(m) (!strcmp(method, m))
#define R(o, name) return (*opname = name, o)
    const char *date = segs[0], *coll = segs[1];
    int is_fn = !strcmp(coll, "functions");
    const char *sub = n >= 4 ? segs[3] : "";
    if (!strcmp(date, "2015-03-31") && is_fn) {
        if (n == 2 && IS("POST"))
            R(OP_CREATE, "CreateFunction");
        if (n == 2 && IS("GET"))
            R(OP_LIST, "ListFunctions");
        if (n == 3 && IS("GET"))
            R(OP_GET, "GetFunction");
        if (n == 3 && IS("DELETE"))
            R(OP_DELETE, "DeleteFunction");
        if (n == 4 && !strcmp(sub, "configuration") && IS("GET"))
            R(OP_GET_CONFIG, "GetFunctionConfiguration");
        if (n == 4 && !strcmp(sub, "configuration") && IS("PUT"))
            R(OP_UPDATE_CONFIG, "UpdateFunctionConfiguration");
        if (n == 4 && !strcmp(sub, "code") && IS("PUT"))
            R(OP_UPDATE_CODE, "UpdateFunctionCode");
        if (n == 4 && !strcmp(sub, "versions") && IS("POST"))
            R(OP_PUBLISH, "PublishVersion");
        if (n == 4 && !strcmp(sub, "versions") && IS("GET"))
            R(OP_LIST_VERSIONS, "ListVersionsByFunction");
        if (n == 4 && !strcmp(sub, "aliases") && IS("POST"))
            R(OP_CREATE_ALIAS, "CreateAlias");
        if (n == 4 && !strcmp(sub, "aliases") && IS("GET"))
            R(OP_LIST_ALIASES, "ListAliases");
        if (n == 5 && !strcmp(sub, "aliases") && IS("GET"))
            R(OP_ALIAS, "GetAlias");
        if (n == 5 && !strcmp(sub, "aliases") && IS("PUT"))
            R(OP_ALIAS, "UpdateAlias");
        if (n == 5 && !strcmp(sub, "aliases") && IS("DELETE"))
            R(OP_ALIAS, "DeleteAlias");
    } else if ((!strcmp(date, "2017-10-31") || !strcmp(date, "2019-09-30")) && is_fn && n == 4 &&
               !strcmp(sub, "concurrency")) {
        if (IS("GET"))
            R(OP_CONCURRENCY, "GetFunctionConcurrency");
        if (IS("PUT"))
            R(OP_CONCURRENCY, "PutFunctionConcurrency");
        if (IS("DELETE"))
            R(OP_CONCURRENCY, "DeleteFunctionConcurrency");
    } else if (!strcmp(date, "2019-09-25") && is_fn && n >= 4 &&
               !strcmp(sub, "event-invoke-config")) {
        if (n == 5 && !strcmp(segs[4], "list") && IS("GET"))
            R(OP_EVENT_INVOKE_LIST, "ListFunctionEventInvokeConfigs");
        if (n == 4 && IS("PUT"))
            R(OP_EVENT_INVOKE, "PutFunctionEventInvokeConfig");
        if (n == 4 && IS("POST"))
            R(OP_EVENT_INVOKE, "UpdateFunctionEventInvokeConfig");
        if (n == 4 && IS("GET"))
            R(OP_EVENT_INVOKE, "GetFunctionEventInvokeConfig");
        if (n == 4 && IS("DELETE"))
            R(OP_EVENT_INVOKE, "DeleteFunctionEventInvokeConfig");
    } else if (!strcmp(date, "2016-08-19") && !strcmp(coll, "account-settings") && n == 2 &&
               IS("GET")) {
        R(OP_ACCOUNT, "GetAccountSettings");
    } else if (!strcmp(date, "2017-03-31") && !strcmp(coll, "tags") && n == 3) {
        if (IS("GET"))
            R(OP_TAGS, "ListTags");
        if (IS("POST"))
            R(OP_TAGS, "TagResource");
        if (IS("DELETE"))
            R(OP_TAGS, "UntagResource");
    }
    return OP_NONE;
#undef R
#undef IS
}

int control_handle(store_t *store, const control_config_t *cfg, const api_request_t *req,
                   api_response_t *resp)
{
    memset(resp, 0, sizeof *resp);
    ctx_t cx = {.s = store, .cfg = cfg, .req = req, .resp = resp, .op = "request"};
    ctx_t *c = &cx;
    const char *method = req->method ? req->method : "";
    const char *path = req->path ? req->path : "";

    /* split the path: leading '/' required, one trailing '/' ignored;
     * inner empty segments stay (and fail name validation) */
    char *copy = xstrdup(path);
    char *segs[MAX_SEGS];
    int n = 0;
    int bad = copy[0] != '/';
    size_t len = strlen(copy);
    if (len > 1 && copy[len - 1] == '/')
        copy[--len] = 0;
    for (char *p = copy + 1; !bad && *p;) {
        if (n == MAX_SEGS) {
            bad = 1;
            break;
        }
        segs[n++] = p;
        char *sl = strchr(p, '/');
        if (!sl)
            break;
        *sl = 0;
        p = sl + 1;
        if (!*p)
            bad = 1;
    }
    c->query = parse_query(req->query);
    c->body = json_object();
    op_t op = bad || n < 2 ? OP_NONE : route(method, segs, n, &c->op);
    if (op == OP_NONE) {
        unknown_op(c);
        goto done;
    }
    if (needs_body(method) && req->body_len > 0) {
        json_error_t je;
        json_t *b = json_loadb(req->body, req->body_len, 0, &je);
        if (!b || !json_is_object(b)) {
            json_decref(b);
            bad_content(c, b ? "the body is not a JSON object" : je.text);
            goto done;
        }
        json_decref(c->body);
        c->body = b;
    }
    switch (op) {
    case OP_CREATE: op_create_function(c); break;
    case OP_LIST: op_list_functions(c); break;
    case OP_GET: op_get_function(c, segs[2], 0); break;
    case OP_DELETE: op_delete_function(c, segs[2]); break;
    case OP_GET_CONFIG: op_get_function(c, segs[2], 1); break;
    case OP_UPDATE_CONFIG: op_update_config(c, segs[2]); break;
    case OP_UPDATE_CODE: op_update_code(c, segs[2]); break;
    case OP_PUBLISH: op_publish_version(c, segs[2]); break;
    case OP_LIST_VERSIONS: op_list_versions(c, segs[2]); break;
    case OP_CREATE_ALIAS: op_create_alias(c, segs[2]); break;
    case OP_LIST_ALIASES: op_list_aliases(c, segs[2]); break;
    case OP_ALIAS: op_alias(c, segs[2], segs[4], method); break;
    case OP_CONCURRENCY: op_concurrency(c, segs[2], method); break;
    case OP_ACCOUNT: op_account_settings(c); break;
    case OP_TAGS: op_tags(c, segs[2], method); break;
    case OP_EVENT_INVOKE: op_event_invoke(c, segs[2], method, 0); break;
    case OP_EVENT_INVOKE_LIST: op_event_invoke(c, segs[2], method, 1); break;
    case OP_NONE: break;
    }
done:
    if (!resp->status)
        api_error(resp, 500, "ServiceException", "Internal error: no response");
    if (c->snap_version > 0 && resp->status < 300 && cfg->on_snapshot)
        cfg->on_snapshot(c->snap_name, c->snap_version, cfg->on_change_arg);
    json_decref(c->body);
    json_decref(c->query);
    free(copy);
    return 0;
}
