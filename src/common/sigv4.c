/* sigv4.c - AWS Signature Version 4 for flicker: verify (frontend) and sign (CLI).
 *
 * DESIGN
 * Both directions go through one function, compute_signature(), which builds
 * the canonical request from (method, wire path, wire query, a list of header
 * names to sign, the request's headers, payload hash), the string to sign and
 * the HMAC chain.  sigv4_sign() picks the header names (all caller headers plus
 * x-amz-date and x-amz-content-sha256); sigv4_verify() takes them from the
 * client's SignedHeaders.  So whatever the CLI signs, the frontend verifies
 * with the same bytes.
 *
 * Canonicalization (matches botocore's SigV4Auth and the AWS CRT signer, both
 * checked against vectors in tests/unit/test_sigv4.c):
 *  - URI: the wire path with dot segments and empty segments removed (a
 *    trailing '/' kept), then every byte except A-Z a-z 0-9 - _ . ~ and '/'
 *    percent-encoded (uppercase hex).  The wire path is already encoded, so
 *    "fn%3Aprod" is signed as "fn%253Aprod" (AWS's "double encoding" for
 *    every service but S3).  An empty path is "/".
 *  - Query: split on '&', each piece on the first '=' (a missing '=' means an
 *    empty value); key and value are percent-decoded then re-encoded keeping
 *    only unreserved bytes; pairs sorted by key then value (bytewise) and
 *    joined "k=v&k=v".  For canonically encoded queries (what every SDK sends)
 *    this equals botocore's raw sort.  '+' is a literal plus, not a space.
 *  - Headers: for each name in SignedHeaders, all request headers with that
 *    name (case-insensitive), each value trimmed with inner whitespace runs
 *    collapsed to one space, joined with ','.
 *  - Payload hash: the x-amz-content-sha256 header value if present (it must
 *    be "UNSIGNED-PAYLOAD" or the body's SHA-256 in hex), else hex SHA-256 of
 *    the body.
 *
 * Verification policy (documented for the frontend):
 *  - Authorization must be "AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/REGION/
 *    SERVICE/aws4_request, SignedHeaders=a;b, Signature=<64 lowercase hex>";
 *    the three parameters in any order, each exactly once, separated by ','
 *    and optional spaces.  SignedHeaders must be lowercase, strictly sorted,
 *    and include "host".
 *  - Any region is accepted (clients default to whatever they are configured
 *    with; flicker is one region); the service must be "lambda".
 *  - The date comes from X-Amz-Date (yyyyMMdd'T'HHmmss'Z'), else from an
 *    RFC 1123 Date header; the credential's date must equal its first 8
 *    characters; it must be within 15 minutes of now either way.
 *  - UNSIGNED-PAYLOAD is accepted as AWS does (the body is then not covered
 *    by the signature; the method, path, query and signed headers still are).
 *  - x-amz-security-token, if sent, is just another signed header: flicker has
 *    no STS, so it carries no meaning.
 * Checks run in this order: header syntax, date, credential scope, key lookup,
 * payload hash, signature (constant-time compare with CRYPTO_memcmp). */
#include "common/sigv4.h"
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "common/util.h"

#define SKEW_SECONDS (15 * 60)
#define ALGORITHM "AWS4-HMAC-SHA256"
#define UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"

/* ---- a growable string ---- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_reserve(sbuf_t *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void sb_add(sbuf_t *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_adds(sbuf_t *b, const char *s) { sb_add(b, s, strlen(s)); }
static void sb_addc(sbuf_t *b, char c) { sb_add(b, &c, 1); }

/* ---- encoding ---- */

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '~';
}

/* Appends s[0..n) percent-encoded; '/' kept when keep_slash. */
static void sb_add_encoded(sbuf_t *b, const char *s, size_t n, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            sb_addc(b, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            sb_add(b, e, 3);
        }
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a fresh buffer (length in *outlen).  A '%'
 * not followed by two hex digits stays a literal '%'. */
static char *pct_decode(const char *s, size_t n, size_t *outlen)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    *outlen = o;
    return out;
}

/* ---- canonical pieces ---- */

/* Canonical URI: normalize (drop "", "." segments; ".." pops) then encode. */
static void canonical_uri(sbuf_t *b, const char *path)
{
    size_t plen = path ? strlen(path) : 0;
    if (plen == 0) {
        sb_addc(b, '/');
        return;
    }
    /* segments as (start, len) pairs */
    size_t nseg = 0, cap = 8;
    size_t(*seg)[2] = xmalloc(cap * sizeof *seg);
    size_t i = 0;
    while (i <= plen) {
        size_t j = i;
        while (j < plen && path[j] != '/')
            j++;
        size_t n = j - i;
        if (n == 0 || (n == 1 && path[i] == '.')) {
            /* skip */
        } else if (n == 2 && path[i] == '.' && path[i + 1] == '.') {
            if (nseg)
                nseg--;
        } else {
            if (nseg == cap) {
                cap *= 2;
                seg = xrealloc(seg, cap * sizeof *seg);
            }
            seg[nseg][0] = i;
            seg[nseg][1] = n;
            nseg++;
        }
        i = j + 1;
    }
    if (path[0] == '/')
        sb_addc(b, '/');
    for (size_t k = 0; k < nseg; k++) {
        if (k)
            sb_addc(b, '/');
        sb_add_encoded(b, path + seg[k][0], seg[k][1], false);
    }
    if (path[plen - 1] == '/' && nseg)
        sb_addc(b, '/');
    /* (a relative path that normalizes to nothing stays empty, as in botocore;
     * HTTP request targets always start with '/') */
    free(seg);
}

typedef struct qpair {
    char *key, *value;
} qpair_t;

static int qpair_cmp(const void *a, const void *b)
{
    const qpair_t *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->value, y->value);
}

static char *encode_component(const char *s, size_t n)
{
    size_t dlen;
    char *d = pct_decode(s, n, &dlen);
    sbuf_t b = {0};
    sb_add_encoded(&b, d, dlen, false);
    if (!b.p)
        sb_add(&b, "", 0);
    free(d);
    return b.p;
}

static void canonical_query(sbuf_t *b, const char *query)
{
    if (!query || !*query)
        return;
    size_t n = 1;
    for (const char *p = query; *p; p++)
        n += *p == '&';
    qpair_t *pairs = xcalloc(n, sizeof *pairs);
    size_t k = 0;
    const char *p = query;
    for (;;) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        pairs[k].key = encode_component(p, klen);
        pairs[k].value = eq ? encode_component(eq + 1, len - klen - 1) : xstrdup("");
        k++;
        if (!amp)
            break;
        p = amp + 1;
    }
    qsort(pairs, k, sizeof *pairs, qpair_cmp);
    for (size_t i = 0; i < k; i++) {
        if (i)
            sb_addc(b, '&');
        sb_adds(b, pairs[i].key);
        sb_addc(b, '=');
        sb_adds(b, pairs[i].value);
        free(pairs[i].key);
        free(pairs[i].value);
    }
    free(pairs);
}

/* Python's str.split() whitespace, ASCII part (botocore trims with it). */
static bool ws(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f); }

static void sb_add_trimmed(sbuf_t *b, const char *v)
{
    bool pending = false, any = false;
    for (const unsigned char *p = (const unsigned char *)(v ? v : ""); *p; p++) {
        if (ws(*p)) {
            pending = any;
            continue;
        }
        if (pending)
            sb_addc(b, ' ');
        pending = false;
        any = true;
        sb_addc(b, (char)*p);
    }
}

/* "name:v1,v2\n" for every request header named `name` (case-insensitive).
 * Returns the number of headers found. */
static size_t canonical_header(sbuf_t *b, const char *name, size_t nlen, const sigv4_header_t *h,
                               size_t nh)
{
    size_t found = 0;
    sb_add(b, name, nlen);
    sb_addc(b, ':');
    for (size_t i = 0; i < nh; i++) {
        if (!h[i].name || strlen(h[i].name) != nlen || strncasecmp(h[i].name, name, nlen))
            continue;
        if (found++)
            sb_addc(b, ',');
        sb_add_trimmed(b, h[i].value);
    }
    sb_addc(b, '\n');
    return found;
}

static const char *find_header(const sigv4_header_t *h, size_t nh, const char *name, size_t *count)
{
    const char *v = NULL;
    *count = 0;
    for (size_t i = 0; i < nh; i++) {
        if (h[i].name && !strcasecmp(h[i].name, name)) {
            if (!*count)
                v = h[i].value ? h[i].value : "";
            ++*count;
        }
    }
    return v;
}

static void hmac256(const void *key, size_t keylen, const char *msg, size_t msglen, unsigned char out[32])
{
    unsigned int outlen = 32;
    if (!HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, msglen, out, &outlen))
        abort();
}

/* The shared core.  signed_headers is the ';'-separated lowercase list as it
 * appears in the Authorization header; scope is "DATE/REGION/SERVICE".
 * Writes the hex signature to sig[65].  Returns false if a signed header is
 * absent from the request (the signature is still computed). */
static bool compute_signature(const sigv4_request_t *req, const char *signed_headers,
                              const char *amz_date, const char *date8, const char *region,
                              const char *service, const char *payload_hash, const char *secret,
                              char sig[65])
{
    bool all_present = true;
    sbuf_t cr = {0};
    sb_adds(&cr, req->method ? req->method : "");
    sb_addc(&cr, '\n');
    canonical_uri(&cr, req->path);
    sb_addc(&cr, '\n');
    canonical_query(&cr, req->query);
    sb_addc(&cr, '\n');
    for (const char *p = signed_headers;;) {
        const char *semi = strchr(p, ';');
        size_t n = semi ? (size_t)(semi - p) : strlen(p);
        if (!canonical_header(&cr, p, n, req->headers, req->n_headers))
            all_present = false;
        if (!semi)
            break;
        p = semi + 1;
    }
    sb_addc(&cr, '\n');
    sb_adds(&cr, signed_headers);
    sb_addc(&cr, '\n');
    sb_adds(&cr, payload_hash);

    char cr_hash[65];
    sha256_hex(cr.p, cr.len, cr_hash);
    free(cr.p);

    sbuf_t sts = {0};
    sb_adds(&sts, ALGORITHM "\n");
    sb_adds(&sts, amz_date);
    sb_addc(&sts, '\n');
    sb_adds(&sts, date8);
    sb_addc(&sts, '/');
    sb_adds(&sts, region);
    sb_addc(&sts, '/');
    sb_adds(&sts, service);
    sb_adds(&sts, "/aws4_request\n");
    sb_adds(&sts, cr_hash);

    char *k0 = xasprintf("AWS4%s", secret);
    unsigned char k[32], mac[32];
    hmac256(k0, strlen(k0), date8, strlen(date8), k);
    OPENSSL_cleanse(k0, strlen(k0));
    free(k0);
    hmac256(k, 32, region, strlen(region), k);
    hmac256(k, 32, service, strlen(service), k);
    hmac256(k, 32, "aws4_request", 12, k);
    hmac256(k, 32, sts.p, sts.len, mac);
    OPENSSL_cleanse(k, sizeof k);
    free(sts.p);
    hex_encode(mac, 32, sig);
    return all_present;
}

/* ---- dates ---- */

static bool all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Parses yyyyMMdd'T'HHmmss'Z' strictly. */
static bool parse_amz_date(const char *s, int64_t *out)
{
    if (!s || strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z' || !all_digits(s, 8) ||
        !all_digits(s + 9, 6))
        return false;
    struct tm tm = {0};
    tm.tm_year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0') - 1900;
    tm.tm_mon = (s[4] - '0') * 10 + (s[5] - '0') - 1;
    tm.tm_mday = (s[6] - '0') * 10 + (s[7] - '0');
    tm.tm_hour = (s[9] - '0') * 10 + (s[10] - '0');
    tm.tm_min = (s[11] - '0') * 10 + (s[12] - '0');
    tm.tm_sec = (s[13] - '0') * 10 + (s[14] - '0');
    if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return false;
    *out = (int64_t)timegm(&tm);
    return true;
}

/* Parses an RFC 1123 Date header: "Mon, 07 Dec 2026 00:41:22 GMT", or with
 * "-0000" / "+0000" (botocore's email.utils.formatdate) or "UTC". */
static bool parse_http_date(const char *s, int64_t *out)
{
    struct tm tm = {0};
    const char *end = s ? strptime(s, "%a, %d %b %Y %H:%M:%S", &tm) : NULL;
    if (!end || (strcmp(end, " GMT") && strcmp(end, " UTC") && strcmp(end, " +0000") &&
                 strcmp(end, " -0000")))
        return false;
    *out = (int64_t)timegm(&tm);
    return true;
}

static void format_amz_date(int64_t t, char out[17])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/* ---- verification ---- */

static void msg(char *m, size_t mlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void msg(char *m, size_t mlen, const char *fmt, ...)
{
    if (!m || !mlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, mlen, fmt, ap);
    va_end(ap);
}

typedef struct auth_parts {
    char *credential, *signed_headers, *signature;
} auth_parts_t;

static void auth_parts_free(auth_parts_t *a)
{
    free(a->credential);
    free(a->signed_headers);
    free(a->signature);
}

/* Parses the parameter list after "AWS4-HMAC-SHA256 ".  Returns false with a
 * message on any syntax error. */
static bool parse_auth(const char *auth, auth_parts_t *a, char *m, size_t mlen)
{
    size_t alen = strlen(ALGORITHM);
    if (strncmp(auth, ALGORITHM, alen) || auth[alen] != ' ') {
        msg(m, mlen, "Authorization header requires '" ALGORITHM "' algorithm. Authorization=%.200s",
            auth);
        return false;
    }
    const char *p = auth + alen;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        while (n && p[n - 1] == ' ')
            n--;
        const char *eq = memchr(p, '=', n);
        if (!eq || eq == p || (size_t)(eq - p) + 1 == n) {
            msg(m, mlen, "Authorization header requires each component to be of the form key=value. Authorization=%.200s",
                auth);
            return false;
        }
        size_t klen = (size_t)(eq - p);
        char **slot = NULL;
        if (klen == 10 && !strncmp(p, "Credential", klen))
            slot = &a->credential;
        else if (klen == 13 && !strncmp(p, "SignedHeaders", klen))
            slot = &a->signed_headers;
        else if (klen == 9 && !strncmp(p, "Signature", klen))
            slot = &a->signature;
        if (!slot || *slot) {
            msg(m, mlen, "Authorization header has %s component '%.*s'. Authorization=%.200s",
                slot ? "a repeated" : "an unknown", (int)(klen > 40 ? 40 : klen), p, auth);
            return false;
        }
        *slot = xstrndup(eq + 1, n - klen - 1);
        if (!end)
            break;
        p = end + 1;
        if (!*p) {
            msg(m, mlen, "Authorization header ends with ','. Authorization=%.200s", auth);
            return false;
        }
    }
    if (!a->credential || !a->signed_headers || !a->signature) {
        msg(m, mlen, "%s%s%sAuthorization=%.200s",
            a->credential ? "" : "Authorization header requires 'Credential' parameter. ",
            a->signature ? "" : "Authorization header requires 'Signature' parameter. ",
            a->signed_headers ? "" : "Authorization header requires 'SignedHeaders' parameter. ", auth);
        return false;
    }
    return true;
}

/* A lowercase HTTP token (RFC 9110) - what may appear in SignedHeaders. */
static bool valid_header_name(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c && strchr("-_.!#$%&'*+^`|~", c))))
            return false;
    }
    return true;
}

static bool valid_signed_headers(const char *s)
{
    const char *prev = NULL;
    size_t prevlen = 0;
    for (const char *p = s;;) {
        const char *semi = strchr(p, ';');
        size_t n = semi ? (size_t)(semi - p) : strlen(p);
        if (!valid_header_name(p, n))
            return false;
        if (prev) {
            size_t mn = n < prevlen ? n : prevlen;
            int c = memcmp(prev, p, mn);
            if (c > 0 || (c == 0 && prevlen >= n))
                return false; /* not strictly ascending */
        }
        prev = p;
        prevlen = n;
        if (!semi)
            return true;
        p = semi + 1;
    }
}

static bool has_signed_header(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list;;) {
        const char *semi = strchr(p, ';');
        size_t len = semi ? (size_t)(semi - p) : strlen(p);
        if (len == n && !memcmp(p, name, n))
            return true;
        if (!semi)
            return false;
        p = semi + 1;
    }
}

static bool is_lower_hex(const char *s, size_t n)
{
    if (strlen(s) != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

static bool valid_region(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return false;
    return true;
}

static const char SIG_MISMATCH[] =
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details.";

enum sigv4_result sigv4_verify(const sigv4_request_t *req, sigv4_secret_fn secret_of, void *arg,
                               int64_t now_s, char *m, size_t mlen)
{
    enum sigv4_result rc = SIGV4_MALFORMED;
    auth_parts_t a = {0};
    char *cred = NULL;
    if (m && mlen)
        m[0] = '\0';

    size_t count;
    const char *auth = find_header(req->headers, req->n_headers, "authorization", &count);
    if (!auth) {
        msg(m, mlen, "Missing Authentication Token");
        return SIGV4_MISSING;
    }
    if (count > 1) {
        msg(m, mlen, "Authorization header may appear only once.");
        return SIGV4_MALFORMED;
    }
    if (!parse_auth(auth, &a, m, mlen))
        goto out;

    /* Credential=AKID/DATE/REGION/SERVICE/aws4_request */
    cred = xstrdup(a.credential);
    char *part[5];
    size_t np = 0;
    for (char *s = cred;; np++) {
        char *slash = strchr(s, '/');
        if (np < 5)
            part[np] = s;
        if (!slash) {
            np++;
            break;
        }
        *slash = '\0';
        s = slash + 1;
    }
    if (np != 5 || !*part[0] || !*part[3]) {
        msg(m, mlen,
            "Credential should be of the form AKID/yyyyMMdd/region/service/aws4_request. Credential=%.200s",
            a.credential);
        goto out;
    }
    if (strcmp(part[4], "aws4_request")) {
        msg(m, mlen, "Credential should be scoped with a valid terminator: 'aws4_request', not '%.40s'.",
            part[4]);
        goto out;
    }
    if (strlen(part[1]) != 8 || !all_digits(part[1], 8)) {
        msg(m, mlen, "Credential should be scoped to a valid date (yyyyMMdd), not '%.40s'.", part[1]);
        goto out;
    }
    if (!valid_region(part[2])) {
        msg(m, mlen, "Credential should be scoped to a valid region, not '%.40s'.", part[2]);
        goto out;
    }
    if (!valid_signed_headers(a.signed_headers)) {
        msg(m, mlen,
            "SignedHeaders must be a ';'-separated, sorted list of lowercase header names. SignedHeaders=%.200s",
            a.signed_headers);
        goto out;
    }
    if (!has_signed_header(a.signed_headers, "host")) {
        msg(m, mlen, "'Host' must be a 'SignedHeader' in the AWS Authorization.");
        goto out;
    }
    if (!is_lower_hex(a.signature, 64)) {
        msg(m, mlen, "Signature must be 64 lowercase hexadecimal characters.");
        goto out;
    }

    /* The request time. */
    char amz_date[17];
    int64_t t;
    const char *xd = find_header(req->headers, req->n_headers, "x-amz-date", &count);
    if (xd) {
        if (count > 1 || !parse_amz_date(xd, &t)) {
            msg(m, mlen, "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"");
            goto out;
        }
    } else {
        const char *hd = find_header(req->headers, req->n_headers, "date", &count);
        if (!hd) {
            msg(m, mlen,
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=%.200s",
                auth);
            goto out;
        }
        if (count > 1 || !parse_http_date(hd, &t)) {
            msg(m, mlen, "Date must be in the RFC 1123 format \"EEE, dd MMM yyyy HH:mm:ss 'GMT'\"");
            goto out;
        }
    }
    format_amz_date(t, amz_date);
    if (strncmp(part[1], amz_date, 8)) {
        msg(m, mlen,
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '%s' != '%.8s', from '%s'.",
            part[1], amz_date, amz_date);
        rc = SIGV4_BAD_SIGNATURE;
        goto out;
    }
    if (t < now_s - SKEW_SECONDS || t > now_s + SKEW_SECONDS) {
        char now_str[17], edge[17];
        format_amz_date(now_s, now_str);
        if (t < now_s) {
            format_amz_date(now_s - SKEW_SECONDS, edge);
            msg(m, mlen, "Signature expired: %s is now earlier than %s (%s - 15 min.)", amz_date, edge,
                now_str);
        } else {
            format_amz_date(now_s + SKEW_SECONDS, edge);
            msg(m, mlen, "Signature not yet current: %s is still later than %s (%s + 15 min.)", amz_date,
                edge, now_str);
        }
        rc = SIGV4_EXPIRED;
        goto out;
    }
    if (strcmp(part[3], "lambda")) {
        msg(m, mlen, "Credential should be scoped to correct service: 'lambda'. ");
        rc = SIGV4_BAD_SIGNATURE;
        goto out;
    }

    const char *secret = secret_of ? secret_of(part[0], arg) : NULL;
    if (!secret) {
        msg(m, mlen, "The security token included in the request is invalid.");
        rc = SIGV4_UNKNOWN_KEY;
        goto out;
    }

    /* Payload hash. */
    char body_hash[65];
    sha256_hex(req->body ? req->body : "", req->body ? req->body_len : 0, body_hash);
    const char *payload_hash = body_hash;
    const char *xsha = find_header(req->headers, req->n_headers, "x-amz-content-sha256", &count);
    if (xsha) {
        if (count > 1) {
            msg(m, mlen, "x-amz-content-sha256 may appear only once.");
            goto out;
        }
        if (!strcmp(xsha, UNSIGNED_PAYLOAD)) {
            payload_hash = xsha;
        } else if (strlen(xsha) == 64 && !strcasecmp(xsha, body_hash)) {
            payload_hash = xsha; /* signed as sent */
        } else {
            msg(m, mlen, "The provided 'x-amz-content-sha256' header does not match what was computed.");
            rc = SIGV4_BAD_SIGNATURE;
            goto out;
        }
    }

    char sig[65];
    bool present = compute_signature(req, a.signed_headers, amz_date, part[1], part[2], part[3],
                                     payload_hash, secret, sig);
    if (!present || CRYPTO_memcmp(sig, a.signature, 64) != 0) {
        msg(m, mlen, "%s", SIG_MISMATCH);
        rc = SIGV4_BAD_SIGNATURE;
        goto out;
    }
    rc = SIGV4_OK;
out:
    free(cred);
    auth_parts_free(&a);
    return rc;
}

const char *sigv4_error_type(enum sigv4_result r)
{
    switch (r) {
    case SIGV4_OK:
        return NULL;
    case SIGV4_MISSING:
        return "MissingAuthenticationTokenException";
    case SIGV4_MALFORMED:
        return "IncompleteSignatureException";
    case SIGV4_UNKNOWN_KEY:
        return "UnrecognizedClientException";
    case SIGV4_BAD_SIGNATURE:
    case SIGV4_EXPIRED:
        return "InvalidSignatureException";
    }
    return "InvalidSignatureException";
}

/* ---- signing ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int sigv4_sign(const sigv4_request_t *req, const char *access_key_id, const char *secret,
               const char *region, const char *service, int64_t now_s, char amz_date[17],
               char content_sha256[65], char *authorization, size_t authlen)
{
    size_t count;
    if (!find_header(req->headers, req->n_headers, "host", &count) || count != 1)
        return -1;
    const char *reserved[] = {"x-amz-date", "x-amz-content-sha256", "authorization"};
    for (size_t i = 0; i < ARRAY_LEN(reserved); i++)
        if (find_header(req->headers, req->n_headers, reserved[i], &count))
            return -1;
    if (!access_key_id || !*access_key_id || strchr(access_key_id, '/') || !secret || !region ||
        !valid_region(region) || !service || !*service || strchr(service, '/'))
        return -1;

    format_amz_date(now_s, amz_date);
    sha256_hex(req->body ? req->body : "", req->body ? req->body_len : 0, content_sha256);

    /* All headers: the caller's plus the two we add. */
    size_t nh = req->n_headers + 2;
    sigv4_header_t *h = xcalloc(nh, sizeof *h);
    memcpy(h, req->headers, req->n_headers * sizeof *h);
    h[req->n_headers] = (sigv4_header_t){"x-amz-date", amz_date};
    h[req->n_headers + 1] = (sigv4_header_t){"x-amz-content-sha256", content_sha256};

    /* SignedHeaders: sorted, unique, lowercase names. */
    char **names = xcalloc(nh, sizeof *names);
    bool names_ok = true;
    for (size_t i = 0; i < nh; i++) {
        names[i] = xstrdup(h[i].name);
        for (char *c = names[i]; *c; c++)
            if (*c >= 'A' && *c <= 'Z')
                *c = (char)(*c - 'A' + 'a');
        names_ok = names_ok && valid_header_name(names[i], strlen(names[i]));
    }
    qsort(names, nh, sizeof *names, cmp_str);
    sbuf_t sh = {0};
    for (size_t i = 0; i < nh; i++) {
        if (i && !strcmp(names[i], names[i - 1]))
            continue;
        if (sh.len)
            sb_addc(&sh, ';');
        sb_adds(&sh, names[i]);
    }
    for (size_t i = 0; i < nh; i++)
        free(names[i]);
    free(names);

    int rc = -1;
    if (!names_ok || !valid_signed_headers(sh.p))
        goto out;
    sigv4_request_t r = *req;
    r.headers = h;
    r.n_headers = nh;
    char date8[9], sig[65];
    memcpy(date8, amz_date, 8);
    date8[8] = '\0';
    compute_signature(&r, sh.p, amz_date, date8, region, service, content_sha256, secret, sig);
    int n = snprintf(authorization, authlen,
                     ALGORITHM " Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
                     access_key_id, date8, region, service, sh.p, sig);
    rc = (n > 0 && (size_t)n < authlen) ? 0 : -1;
out:
    free(sh.p);
    free(h);
    return rc;
}
