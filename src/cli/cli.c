/* cli.c - the CLI's dispatch, endpoint and credential discovery, and its
 * one HTTP helper: SigV4-signed requests over a single libcurl easy handle
 * (so consecutive requests of one command reuse the connection).
 *
 * Every request carries exactly the headers it signs: Host (set explicitly
 * to the endpoint's host[:port], so the wire value is the signed value),
 * the command's own headers, X-Amz-Date, X-Amz-Content-SHA256 and
 * Authorization.  libcurl's own Accept/Expect/Content-Type defaults are
 * suppressed or unsigned-by-design (User-Agent).  Responses are buffered
 * whole; the headers the commands need are captured by name. */
#include "cli/cli.h"
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "cli/cli_internal.h"
#include "common/sigv4.h"
#include "common/util.h"
#include "common/version.h"

/* ---------------------------------------------------------------- dispatch */

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *usage;
} COMMANDS[] = {
    {"deploy", cmd_deploy, "deploy NAME PATH [--runtime R] [--handler H] [--memory MB] [--timeout S] [--env K=V]..."},
    {"invoke", cmd_invoke, "invoke NAME [PAYLOAD-JSON] [--payload-file F] [--qualifier Q] [--tail] [--event] [--dry-run]"},
    {"list", cmd_list, "list"},
    {"delete", cmd_delete, "delete NAME"},
    {"logs", cmd_logs, "logs NAME [--follow]"},
    {"status", cmd_status, "status [--json]"},
};

int cli_run(const char *cmd, int argc, char **argv)
{
    for (size_t i = 0; i < ARRAY_LEN(COMMANDS); i++)
        if (!strcmp(cmd, COMMANDS[i].name))
            return COMMANDS[i].fn(argc, argv);
    return -1;
}

void cli_usage(void)
{
    for (size_t i = 0; i < ARRAY_LEN(COMMANDS); i++)
        printf("  flicker %s\n", COMMANDS[i].usage);
    printf("  (every command: --endpoint URL, --help; see `flicker COMMAND --help`)\n");
}

/* ------------------------------------------------------ endpoint, secrets */

int cli_parse_endpoint(const char *url, char **endpoint, char **host, err_t *err)
{
    const char *rest;
    if (!strncmp(url, "http://", 7))
        rest = url + 7;
    else if (!strncmp(url, "https://", 8))
        rest = url + 8;
    else
        return err_set(err, EINVAL, "endpoint %s: must start with http:// or https://", url);
    size_t n = strcspn(rest, "/?#");
    const char *tail = rest + n;
    while (*tail == '/')
        tail++;
    if (*tail)
        return err_set(err, EINVAL, "endpoint %s: must not have a path or query", url);
    const char *at = memchr(rest, '@', n);
    if (at)
        return err_set(err, EINVAL, "endpoint %s: must not contain user info", url);
    if (n == 0)
        return err_set(err, EINVAL, "endpoint %s: no host", url);
    *host = xstrndup(rest, n);
    *endpoint = xstrndup(url, (size_t)(rest - url) + n);
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int cli_parse_credentials(const char *text, char **akid, char **secret)
{
    char *copy = xstrdup(text), *save = NULL;
    char *a = NULL, *s = NULL;
    bool in_default = true; /* keys before any section count */
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line = trim(line);
        if (!*line || *line == '#' || *line == ';')
            continue;
        if (*line == '[') {
            char *end = strchr(line, ']');
            if (end)
                *end = '\0';
            in_default = !strcmp(trim(line + 1), "default");
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq || !in_default)
            continue;
        *eq = '\0';
        char *k = trim(line), *v = trim(eq + 1);
        if (!strcmp(k, "aws_access_key_id")) {
            free(a);
            a = xstrdup(v);
        } else if (!strcmp(k, "aws_secret_access_key")) {
            free(s);
            s = xstrdup(v);
        }
    }
    free(copy);
    if (!a || !s || !*a || !*s) {
        free(a);
        free(s);
        return -1;
    }
    *akid = a;
    *secret = s;
    return 0;
}

static const char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

int cli_ctx_init(cli_ctx_t *c, const char *endpoint_opt, err_t *err)
{
    memset(c, 0, sizeof *c);
    const char *url = endpoint_opt ? endpoint_opt : env_nonempty("FLICKER_ENDPOINT");
    if (!url)
        url = CLI_DEFAULT_ENDPOINT;
    if (cli_parse_endpoint(url, &c->endpoint, &c->host, err) < 0)
        return -1;

    const char *region = env_nonempty("AWS_REGION");
    if (!region)
        region = env_nonempty("AWS_DEFAULT_REGION");
    c->region = xstrdup(region ? region : CLI_DEFAULT_REGION);

    static const char *pairs[][2] = {{"FLICKER_ACCESS_KEY_ID", "FLICKER_SECRET_ACCESS_KEY"},
                                     {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}};
    for (size_t i = 0; i < ARRAY_LEN(pairs); i++) {
        const char *a = env_nonempty(pairs[i][0]), *s = env_nonempty(pairs[i][1]);
        if (a && s) {
            c->akid = xstrdup(a);
            c->secret = xstrdup(s);
            return 0;
        }
    }
    const char *data = env_nonempty("FLICKER_DATA");
    char *path = xasprintf("%s/credentials", data ? data : CLI_DEFAULT_DATA);
    err_t rerr = {0};
    char *text = read_file(path, 1 << 20, NULL, &rerr);
    int rc = 0;
    if (!text)
        rc = err_set(err, rerr.code,
                     "no credentials: set FLICKER_ACCESS_KEY_ID and FLICKER_SECRET_ACCESS_KEY, or "
                     "point FLICKER_DATA at the data directory of `flicker up` (%s)",
                     rerr.msg);
    else if (cli_parse_credentials(text, &c->akid, &c->secret) < 0)
        rc = err_set(err, EINVAL, "%s: no [default] aws_access_key_id / aws_secret_access_key", path);
    free(text);
    free(path);
    if (rc < 0)
        cli_ctx_free(c);
    return rc;
}

void cli_ctx_free(cli_ctx_t *c)
{
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->endpoint);
    free(c->host);
    free(c->akid);
    if (c->secret)
        OPENSSL_cleanse(c->secret, strlen(c->secret));
    free(c->secret);
    free(c->region);
    memset(c, 0, sizeof *c);
}

/* ------------------------------------------------------------ the request */

char *cli_encode(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = xmalloc(3 * n + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
            *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

void cli_resp_free(cli_resp_t *r)
{
    free(r->body);
    free(r->error_type);
    free(r->request_id);
    free(r->function_error);
    free(r->log_result);
    free(r->executed_version);
    free(r->log_offset);
    memset(r, 0, sizeof *r);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    cli_resp_t *r = arg;
    size_t n = size * nmemb;
    r->body = xrealloc(r->body, r->body_len + n + 1);
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

/* Captures "Name: value" into *slot when the header line is named `name`. */
static void capture(const char *line, size_t n, const char *name, char **slot, bool before_colon)
{
    size_t nl = strlen(name);
    if (n <= nl || line[nl] != ':' || strncasecmp(line, name, nl))
        return;
    const char *v = line + nl + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    if (before_colon) {
        const char *colon = memchr(v, ':', (size_t)(end - v));
        if (colon)
            end = colon;
    }
    free(*slot);
    *slot = xstrndup(v, (size_t)(end - v));
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *arg)
{
    cli_resp_t *r = arg;
    size_t n = size * nmemb;
    capture(line, n, "x-amzn-ErrorType", &r->error_type, true);
    capture(line, n, "x-amzn-RequestId", &r->request_id, false);
    capture(line, n, "X-Amz-Function-Error", &r->function_error, false);
    capture(line, n, "X-Amz-Log-Result", &r->log_result, false);
    capture(line, n, "X-Amz-Executed-Version", &r->executed_version, false);
    capture(line, n, "X-Flicker-Log-Offset", &r->log_offset, false);
    return n;
}

int cli_request(cli_ctx_t *c, const char *method, const char *path, const char *query,
                const cli_header_t *headers, size_t n_headers, const void *body, size_t body_len,
                cli_resp_t *resp, err_t *err)
{
    memset(resp, 0, sizeof *resp);
    if (!c->curl && !(c->curl = curl_easy_init()))
        return err_set(err, ENOMEM, "curl_easy_init failed");
    CURL *curl = c->curl;

    /* What we sign is what we send. */
    size_t nh = n_headers + 1;
    sigv4_header_t *sh = xcalloc(nh, sizeof *sh);
    sh[0] = (sigv4_header_t){"Host", c->host};
    for (size_t i = 0; i < n_headers; i++)
        sh[i + 1] = (sigv4_header_t){headers[i].name, headers[i].value};
    sigv4_request_t sr = {method, path, query, sh, nh, body ? body : "", body ? body_len : 0};
    char amz_date[17], sha[65], auth[2048];
    if (sigv4_sign(&sr, c->akid, c->secret, c->region, "lambda", (int64_t)time(NULL), amz_date, sha,
                   auth, sizeof auth) < 0) {
        free(sh);
        return err_set(err, EINVAL, "cannot sign the request (bad header or credentials)");
    }

    struct curl_slist *list = NULL;
    char *line;
#define ADD_HEADER(...)                                                                     \
    do {                                                                                    \
        line = xasprintf(__VA_ARGS__);                                                      \
        list = curl_slist_append(list, line);                                               \
        free(line);                                                                         \
    } while (0)
    for (size_t i = 0; i < nh; i++)
        ADD_HEADER("%s: %s", sh[i].name, sh[i].value);
    ADD_HEADER("X-Amz-Date: %s", amz_date);
    ADD_HEADER("X-Amz-Content-SHA256: %s", sha);
    ADD_HEADER("Authorization: %s", auth);
    ADD_HEADER("User-Agent: flicker-cli/%s", FLICKER_VERSION);
#undef ADD_HEADER
    list = curl_slist_append(list, "Expect:"); /* no 100-continue */
    list = curl_slist_append(list, "Accept:");
    bool has_type = false;
    for (size_t i = 0; i < n_headers; i++)
        has_type |= !strcasecmp(headers[i].name, "content-type");
    if (!has_type) /* curl would add an unsigned form-urlencoded type */
        list = curl_slist_append(list, "Content-Type:");
    free(sh);

    char *url = xasprintf("%s%s%s%s", c->endpoint, path, query ? "?" : "", query ? query : "");
    curl_easy_reset(curl); /* keeps the connection cache */
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, resp);
    if (!strcmp(method, "GET") || !strcmp(method, "DELETE")) {
        if (body_len)
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        if (body_len)
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body ? body : "");
    }
    CURLcode cc = curl_easy_perform(curl);
    curl_slist_free_all(list);
    int rc = 0;
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST) {
        rc = err_set(err, ECONNREFUSED, "cannot reach flicker at %s: is `flicker up` running? (%s)",
                     c->endpoint, curl_easy_strerror(cc));
    } else if (cc != CURLE_OK) {
        rc = err_set(err, EIO, "%s %s: %s", method, url, curl_easy_strerror(cc));
    } else {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
        if (!resp->body)
            resp->body = xstrdup("");
    }
    free(url);
    if (rc < 0)
        cli_resp_free(resp);
    return rc;
}

/* --------------------------------------------------------------- errors */

static const char *json_str(json_t *o, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const char *v = json_string_value(json_object_get(o, keys[i]));
        if (v && *v)
            return v;
    }
    return NULL;
}

void cli_print_error(const cli_resp_t *r)
{
    json_t *j = r->body_len ? json_loadb(r->body, r->body_len, 0, NULL) : NULL;
    static const char *type_keys[] = {"__type", "code", "Code", "errorType"};
    static const char *msg_keys[] = {"message", "Message", "errorMessage"};
    const char *type = r->error_type && *r->error_type ? r->error_type : NULL;
    if (!type && json_is_object(j))
        type = json_str(j, type_keys, ARRAY_LEN(type_keys));
    const char *msg = json_is_object(j) ? json_str(j, msg_keys, ARRAY_LEN(msg_keys)) : NULL;
    char status[32];
    snprintf(status, sizeof status, "HTTP %ld", r->status);
    if (msg)
        fprintf(stderr, "flicker: %s: %s\n", type ? type : status, msg);
    else if (r->body_len)
        fprintf(stderr, "flicker: %s: %.*s\n", type ? type : status, (int)(r->body_len > 2000 ? 2000 : r->body_len),
                r->body);
    else
        fprintf(stderr, "flicker: %s\n", type ? type : status);
    json_decref(j);
}

int cli_fail(const err_t *err)
{
    fprintf(stderr, "flicker: %s\n", err->msg);
    return 1;
}
