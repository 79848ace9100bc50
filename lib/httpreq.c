/* httpreq: the HTTP/1.x request-head parser behind /metrics, /status and /healthz.
 * Bytes are copied into one fixed buffer of max_head bytes; each line is checked when
 * its LF arrives, so the result is the same however the input was split. Parsed
 * strings are NUL-terminated in place. */
#include "httpreq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct httpreq_parser {
    struct httpreq_limits lim;
    char *buf;                      /* max_head + 1 bytes */
    size_t len;                     /* bytes buffered */
    size_t total;                   /* bytes of the head seen, skipped empty lines included */
    size_t line_start;              /* offset of the current line in buf */
    int status;                     /* sticky: DONE or an error; MORE while parsing */
    bool have_line;                 /* the request line is parsed */
    struct httpreq_header *headers; /* max_headers entries */
    struct httpreq req;
};

static const char slash_path[] = "/";

struct httpreq_parser *httpreq_parser_new(const struct httpreq_limits *limits)
{
    struct httpreq_parser *p = calloc(1, sizeof(*p));

    if (!p)
        return NULL;
    if (limits)
        p->lim = *limits;
    if (!p->lim.max_head)
        p->lim.max_head = HTTPREQ_DEFAULT_MAX_HEAD;
    if (!p->lim.max_headers)
        p->lim.max_headers = HTTPREQ_DEFAULT_MAX_HEADERS;
    if (!p->lim.max_method)
        p->lim.max_method = HTTPREQ_DEFAULT_MAX_METHOD;
    p->buf = malloc(p->lim.max_head + 1);
    p->headers = calloc(p->lim.max_headers, sizeof(*p->headers));
    if (!p->buf || !p->headers) {
        httpreq_parser_free(p);
        return NULL;
    }
    httpreq_parser_reset(p);
    return p;
}

void httpreq_parser_free(struct httpreq_parser *p)
{
    if (!p)
        return;
    free(p->buf);
    free(p->headers);
    free(p);
}

void httpreq_parser_reset(struct httpreq_parser *p)
{
    p->len = p->total = p->line_start = 0;
    p->status = HTTPREQ_MORE;
    p->have_line = false;
    memset(&p->req, 0, sizeof(p->req));
    p->req.content_length = -1;
    p->req.headers = p->headers;
}

/* RFC 9110 5.6.2 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Visible ASCII, as a request target may hold (no spaces, no CTLs, no obs-text). */
static bool is_vchar(unsigned char c)
{
    return c >= 0x21 && c <= 0x7e;
}

static enum httpreq_method method_classify(const char *m, size_t n)
{
    static const struct {
        const char *name;
        enum httpreq_method m;
    } tab[] = {
        {"GET", HTTPREQ_GET}, {"HEAD", HTTPREQ_HEAD},     {"POST", HTTPREQ_POST},
        {"PUT", HTTPREQ_PUT}, {"DELETE", HTTPREQ_DELETE}, {"OPTIONS", HTTPREQ_OPTIONS},
    };

    /* Methods are case-sensitive (RFC 9110 9.1): "get" is some other method. */
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (strlen(tab[i].name) == n && memcmp(tab[i].name, m, n) == 0)
            return tab[i].m;
    return HTTPREQ_OTHER;
}

/* Splits the target [s, e) into path and query, NUL-terminating them in place (the byte
 * at e is free to overwrite: it is the space before the version). */
static int parse_target(struct httpreq_parser *p, size_t s, size_t e)
{
    char *b = p->buf;
    size_t path_start;

    for (size_t i = s; i < e; i++)
        if (!is_vchar((unsigned char)b[i]) || b[i] == '#')
            return HTTPREQ_ERR_TARGET;
    if (e - s == 1 && b[s] == '*') {
        b[e] = '\0';
        p->req.path = b + s;
        return 0;
    }
    if (b[s] == '/') {
        path_start = s;
    } else {
        /* absolute-form (RFC 9112 3.2.2): servers must accept it; we serve one host. */
        size_t scheme;
        if (e - s > 7 && strncasecmp(b + s, "http://", 7) == 0)
            scheme = 7;
        else if (e - s > 8 && strncasecmp(b + s, "https://", 8) == 0)
            scheme = 8;
        else
            return HTTPREQ_ERR_TARGET;
        size_t a = s + scheme, i = a;
        while (i < e && b[i] != '/' && b[i] != '?')
            i++;
        if (i == a)
            return HTTPREQ_ERR_TARGET; /* empty authority */
        path_start = i;
    }
    char *q = memchr(b + path_start, '?', e - path_start);
    if (q) {
        *q = '\0';
        p->req.query = q + 1;
    }
    b[e] = '\0';
    p->req.path = path_start < e && b[path_start] == '/' ? b + path_start : slash_path;
    return 0;
}

/* "METHOD SP TARGET SP HTTP/D.D" in [s, e). */
static int parse_request_line(struct httpreq_parser *p, size_t s, size_t e)
{
    char *b = p->buf;

    for (size_t i = s; i < e; i++)
        if (b[i] != ' ' && !is_vchar((unsigned char)b[i]))
            return HTTPREQ_ERR_LINE;
    char *sp1 = memchr(b + s, ' ', e - s);
    size_t m_end = sp1 ? (size_t)(sp1 - b) : e;
    if (m_end == s || m_end - s > p->lim.max_method)
        return HTTPREQ_ERR_METHOD;
    for (size_t i = s; i < m_end; i++)
        if (!is_tchar((unsigned char)b[i]))
            return HTTPREQ_ERR_METHOD;
    if (!sp1)
        return HTTPREQ_ERR_LINE;
    p->req.method = method_classify(b + s, m_end - s);
    p->req.method_name = b + s;

    size_t t = m_end + 1;
    char *sp2 = memchr(b + t, ' ', e - t);
    if (!sp2) {
        /* "GET /" is HTTP/0.9, which we do not speak. */
        b[m_end] = '\0';
        return t < e ? HTTPREQ_ERR_VERSION : HTTPREQ_ERR_TARGET;
    }
    size_t t_end = (size_t)(sp2 - b);
    if (t_end == t)
        return HTTPREQ_ERR_TARGET;
    const char *v = sp2 + 1;
    size_t vlen = e - (t_end + 1);
    if (vlen != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return HTTPREQ_ERR_VERSION;
    if (v[5] != '1')
        return HTTPREQ_ERR_VERSION_UNSUPPORTED;
    /* A higher 1.x minor is served as 1.1 (RFC 9110 2.5). */
    p->req.version_minor = v[7] == '0' ? 0 : 1;
    int rc = parse_target(p, t, t_end);
    if (rc < 0)
        return rc;
    b[m_end] = '\0';
    p->have_line = true;
    return 0;
}

static bool name_is(const char *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

/* "name: value" in [s, e). */
static int parse_field(struct httpreq_parser *p, size_t s, size_t e)
{
    char *b = p->buf;

    /* A leading space or tab is obs-fold (or an attempt to smuggle a field): refused,
     * as RFC 9112 5.2 allows. */
    if (b[s] == ' ' || b[s] == '\t')
        return HTTPREQ_ERR_HEADER;
    if (p->req.n_headers >= p->lim.max_headers)
        return HTTPREQ_ERR_TOO_MANY_HEADERS;
    char *colon = memchr(b + s, ':', e - s);
    if (!colon || colon == b + s)
        return HTTPREQ_ERR_HEADER;
    size_t n_end = (size_t)(colon - b);
    for (size_t i = s; i < n_end; i++)
        if (!is_tchar((unsigned char)b[i]))
            return HTTPREQ_ERR_HEADER; /* includes whitespace before the colon */
    size_t vs = n_end + 1, ve = e;
    while (vs < ve && (b[vs] == ' ' || b[vs] == '\t'))
        vs++;
    while (ve > vs && (b[ve - 1] == ' ' || b[ve - 1] == '\t'))
        ve--;
    for (size_t i = vs; i < ve; i++) {
        unsigned char c = (unsigned char)b[i];
        if (c != '\t' && (c < 0x20 || c == 0x7f))
            return HTTPREQ_ERR_HEADER;
    }
    const char *name = b + s, *value = b + vs;
    size_t nlen = n_end - s, vlen = ve - vs;

    if (name_is(name, nlen, "Host")) {
        if (p->req.host || memchr(value, ' ', vlen) || memchr(value, '\t', vlen))
            return HTTPREQ_ERR_HOST;
        p->req.host = value;
    } else if (name_is(name, nlen, "Content-Length")) {
        int64_t n = 0;
        if (p->req.content_length >= 0 || vlen == 0)
            return HTTPREQ_ERR_HEADER;
        for (size_t i = 0; i < vlen; i++) {
            if (value[i] < '0' || value[i] > '9' || n > (INT64_MAX - 9) / 10)
                return HTTPREQ_ERR_HEADER;
            n = n * 10 + (value[i] - '0');
        }
        if (n > 0)
            return HTTPREQ_ERR_BODY;
        p->req.content_length = 0;
    } else if (name_is(name, nlen, "Transfer-Encoding")) {
        return HTTPREQ_ERR_BODY;
    }
    b[n_end] = '\0';
    b[ve] = '\0';
    struct httpreq_header *h = &p->headers[p->req.n_headers++];
    h->name = name;
    h->name_len = nlen;
    h->value = value;
    h->value_len = vlen;
    return 0;
}

/* A line ended at buf[len - 1] == '\n'. Returns MORE, DONE or an error. */
static int end_line(struct httpreq_parser *p)
{
    size_t s = p->line_start, e = p->len - 1;

    if (e > s && p->buf[e - 1] == '\r')
        e--;
    if (memchr(p->buf + s, '\r', e - s))
        return p->have_line ? HTTPREQ_ERR_HEADER : HTTPREQ_ERR_LINE;
    if (e == s) {
        if (!p->have_line) {
            p->len = p->line_start = 0; /* an empty line before the request line */
            return HTTPREQ_MORE;
        }
        if (p->req.version_minor == 1 && !p->req.host)
            return HTTPREQ_ERR_HOST;
        return HTTPREQ_DONE;
    }
    int rc = p->have_line ? parse_field(p, s, e) : parse_request_line(p, s, e);
    if (rc < 0)
        return rc;
    p->line_start = p->len;
    return HTTPREQ_MORE;
}

int httpreq_parser_feed(struct httpreq_parser *p, const char *buf, size_t len, size_t *used)
{
    *used = 0;
    if (p->status != HTTPREQ_MORE)
        return p->status;
    for (size_t i = 0; i < len; i++) {
        if (p->total >= p->lim.max_head) {
            *used = i + 1;
            return p->status = HTTPREQ_ERR_TOO_LARGE;
        }
        p->buf[p->len++] = buf[i];
        p->total++;
        if (buf[i] != '\n')
            continue;
        int rc = end_line(p);
        if (rc != HTTPREQ_MORE) {
            *used = i + 1;
            return p->status = rc;
        }
    }
    *used = len;
    return HTTPREQ_MORE;
}

const struct httpreq *httpreq_parser_request(const struct httpreq_parser *p)
{
    return p->status == HTTPREQ_DONE ? &p->req : NULL;
}

enum httpreq_method httpreq_parser_method(const struct httpreq_parser *p)
{
    return p->have_line ? p->req.method : HTTPREQ_NONE;
}

bool httpreq_parser_pending(const struct httpreq_parser *p)
{
    return p->status == HTTPREQ_MORE && p->len > 0;
}

int httpreq_status_code(int status)
{
    switch (status) {
    case HTTPREQ_MORE:
        return 0;
    case HTTPREQ_DONE:
        return 200;
    case HTTPREQ_ERR_TOO_LARGE:
    case HTTPREQ_ERR_TOO_MANY_HEADERS:
        return 431;
    case HTTPREQ_ERR_VERSION_UNSUPPORTED:
        return 505;
    case HTTPREQ_ERR_BODY:
        return 413;
    default:
        return 400;
    }
}

const char *httpreq_strerror(int status)
{
    switch (status) {
    case HTTPREQ_MORE:
        return "incomplete";
    case HTTPREQ_DONE:
        return "ok";
    case HTTPREQ_ERR_TOO_LARGE:
        return "request header block too large";
    case HTTPREQ_ERR_TOO_MANY_HEADERS:
        return "too many header fields";
    case HTTPREQ_ERR_LINE:
        return "malformed request line";
    case HTTPREQ_ERR_METHOD:
        return "bad method";
    case HTTPREQ_ERR_TARGET:
        return "bad request target";
    case HTTPREQ_ERR_VERSION:
        return "missing or malformed HTTP version";
    case HTTPREQ_ERR_VERSION_UNSUPPORTED:
        return "HTTP version not supported";
    case HTTPREQ_ERR_HEADER:
        return "malformed header field";
    case HTTPREQ_ERR_HOST:
        return "missing, repeated or bad Host";
    case HTTPREQ_ERR_BODY:
        return "request body not accepted";
    default:
        return "unknown status";
    }
}

const struct httpreq_header *httpreq_header(const struct httpreq *req, const char *name)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return &req->headers[i];
    return NULL;
}
