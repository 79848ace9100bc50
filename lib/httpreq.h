/* httpreq: an incremental HTTP/1.x request-head parser for the metrics endpoint. Bytes
 * in, split anywhere; out comes the request line and header fields of one request, or a
 * precise error that maps to a status code. Strict on purpose (RFC 9112): bounded sizes,
 * no obs-fold, no bare CR, no body. Pure: no I/O, no allocation after httpreq_parser_new. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Feed results. Errors are negative and sticky until httpreq_parser_reset(). */
enum httpreq_status {
    HTTPREQ_MORE = 0,                  /* all input consumed, head not complete yet */
    HTTPREQ_DONE = 1,                  /* head complete; see httpreq_parser_request() */
    HTTPREQ_ERR_TOO_LARGE = -1,        /* head over limits.max_head (431) */
    HTTPREQ_ERR_TOO_MANY_HEADERS = -2, /* over limits.max_headers (431) */
    HTTPREQ_ERR_LINE = -3,             /* request line syntax: spaces, CTLs, bare CR (400) */
    HTTPREQ_ERR_METHOD = -4,           /* method not a token or over limits.max_method (400) */
    HTTPREQ_ERR_TARGET = -5,           /* request target not origin, absolute or '*' form (400) */
    HTTPREQ_ERR_VERSION = -6,          /* no "HTTP/D.D" after the target (400) */
    HTTPREQ_ERR_VERSION_UNSUPPORTED = -7, /* well-formed, but not HTTP/1.0 or 1.1 (505) */
    HTTPREQ_ERR_HEADER = -8,              /* bad field line: no colon, space before it, obs-fold,
                                             CTL in the value, bare CR (400) */
    HTTPREQ_ERR_HOST = -9,                /* HTTP/1.1 without Host, or Host twice (400) */
    HTTPREQ_ERR_BODY = -10,               /* Content-Length > 0 or Transfer-Encoding: a body we
                                             refuse (413); a malformed or repeated
                                             Content-Length is HTTPREQ_ERR_HEADER */
};

/* Methods the endpoint tells apart; every other valid token is HTTPREQ_OTHER. */
enum httpreq_method {
    HTTPREQ_NONE = 0, /* request line not parsed yet */
    HTTPREQ_GET,
    HTTPREQ_HEAD,
    HTTPREQ_POST,
    HTTPREQ_PUT,
    HTTPREQ_DELETE,
    HTTPREQ_OPTIONS,
    HTTPREQ_OTHER,
};

/* A zero field means its default. */
struct httpreq_limits {
    size_t max_head;    /* bytes of request line + fields + the empty line */
    size_t max_headers; /* field lines */
    size_t max_method;  /* bytes of the method token */
};

#define HTTPREQ_DEFAULT_MAX_HEAD 8192
#define HTTPREQ_DEFAULT_MAX_HEADERS 64
#define HTTPREQ_DEFAULT_MAX_METHOD 16

struct httpreq_header {
    const char *name;  /* as sent (case kept); compare with strcasecmp */
    const char *value; /* leading and trailing spaces and tabs removed */
    size_t name_len, value_len;
};

/* A complete request head. Strings are NUL-terminated and borrowed from the parser:
 * valid until httpreq_parser_reset() or httpreq_parser_free(). */
struct httpreq {
    enum httpreq_method method;
    const char *method_name; /* the token as sent ("GET") */
    const char *path;        /* "/metrics": the target up to '?', never empty; for the
                                absolute form the path part ("/" if none); "*" for asterisk form */
    const char *query;       /* after '?' (may be ""), NULL if the target had no '?' */
    int version_minor;       /* 0 or 1 */
    const char *host;        /* the Host field's value, NULL if absent (HTTP/1.0 only) */
    int64_t content_length;  /* -1 if absent; otherwise 0 (anything else is an error) */
    const struct httpreq_header *headers;
    size_t n_headers;
};

struct httpreq_parser;

/* New parser with the given limits (NULL: defaults). Returns NULL on ENOMEM. */
struct httpreq_parser *httpreq_parser_new(const struct httpreq_limits *limits);
/* Frees the parser. NULL is a no-op. */
void httpreq_parser_free(struct httpreq_parser *p);

/* Feeds up to len bytes. Sets *used to the bytes consumed. Returns HTTPREQ_DONE when the
 * head is complete (bytes after the empty line are not consumed: a body or a pipelined
 * request, which the caller decides about), HTTPREQ_MORE when every byte was consumed
 * without completing it, or a negative enum httpreq_status; *used then is the offset
 * just past the byte where the error was found. The result does not depend on how the
 * input is split. Empty lines before the request line are skipped (RFC 9112 2.2); a
 * line ends in LF or CRLF. After DONE or an error, further feeds return the same status
 * with *used = 0 until httpreq_parser_reset(). O(bytes); never allocates. */
int httpreq_parser_feed(struct httpreq_parser *p, const char *buf, size_t len, size_t *used);

/* The request completed by the last HTTPREQ_DONE (borrowed), or NULL. */
const struct httpreq *httpreq_parser_request(const struct httpreq_parser *p);

/* The method of the request line once it is parsed (also after a later error, so a
 * server can answer 405 rather than 413 to a POST with a body), else HTTPREQ_NONE. */
enum httpreq_method httpreq_parser_method(const struct httpreq_parser *p);

/* True if some bytes of a head are buffered. */
bool httpreq_parser_pending(const struct httpreq_parser *p);

/* Forgets all input and a sticky status; keeps the buffers. */
void httpreq_parser_reset(struct httpreq_parser *p);

/* The HTTP status code for an error status (400, 413, 431, 505); 200 for DONE, 0 for
 * MORE. */
int httpreq_status_code(int status);
/* Short text of a status ("header block too large"). */
const char *httpreq_strerror(int status);
/* Looks up a header by name, case-insensitively; the first match, or NULL. */
const struct httpreq_header *httpreq_header(const struct httpreq *req, const char *name);
