/* policy: the Postfix SMTP access policy delegation protocol (SMTPD_POLICY_README).
 * Bytes from a policy connection go in, split anywhere; complete requests come out with
 * their attributes looked up by enum. Each parser owns one growing buffer that holds the
 * request being read; the strings of a finished request point into it, so the steady
 * state allocates nothing. The encoder writes the one-line reply. */
#include "policy.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An attribute offset that means "not sent in this request". */
#define NO_OFF SIZE_MAX
/* First buffer size: a Postfix 3.7 request with long TLS attributes fits in 1 KiB. */
#define INITIAL_BUF 2048

struct policy_parser {
    struct policy_limits lim;
    /* The request being read: lines with '\n' (and a trailing '\r') replaced by NUL and
     * the first '=' of each line by NUL. len counts request bytes, so len <= max_request
     * holds at all times, and cap never exceeds max_request + 1. */
    char *buf;
    size_t len, cap;
    size_t line_start; /* offset of the current, unfinished line */
    size_t nattrs;     /* attribute lines so far (repeats count: they cost work) */
    /* Value offsets of known attributes; the buffer may move while a request is read,
     * so pointers are made only when the request completes. */
    size_t off[POLICY_ATTR_COUNT];
    size_t *xoff; /* name, value offset pairs of unknown attributes */
    struct policy_extra *extra;
    size_t n_extra, cap_extra;
    struct policy_request req;
    int error; /* sticky protocol error, 0 if none */
    bool done; /* req holds a finished request; the next feed starts a new one */
};

static const char *const attr_names[POLICY_ATTR_COUNT] = {
    [POLICY_REQUEST] = "request",
    [POLICY_PROTOCOL_STATE] = "protocol_state",
    [POLICY_PROTOCOL_NAME] = "protocol_name",
    [POLICY_CLIENT_ADDRESS] = "client_address",
    [POLICY_CLIENT_NAME] = "client_name",
    [POLICY_CLIENT_PORT] = "client_port",
    [POLICY_REVERSE_CLIENT_NAME] = "reverse_client_name",
    [POLICY_SERVER_ADDRESS] = "server_address",
    [POLICY_SERVER_PORT] = "server_port",
    [POLICY_HELO_NAME] = "helo_name",
    [POLICY_SENDER] = "sender",
    [POLICY_RECIPIENT] = "recipient",
    [POLICY_RECIPIENT_COUNT] = "recipient_count",
    [POLICY_QUEUE_ID] = "queue_id",
    [POLICY_INSTANCE] = "instance",
    [POLICY_SIZE] = "size",
    [POLICY_ETRN_DOMAIN] = "etrn_domain",
    [POLICY_STRESS] = "stress",
    [POLICY_SASL_METHOD] = "sasl_method",
    [POLICY_SASL_USERNAME] = "sasl_username",
    [POLICY_SASL_SENDER] = "sasl_sender",
    [POLICY_CCERT_SUBJECT] = "ccert_subject",
    [POLICY_CCERT_ISSUER] = "ccert_issuer",
    [POLICY_CCERT_FINGERPRINT] = "ccert_fingerprint",
    [POLICY_CCERT_PUBKEY_FINGERPRINT] = "ccert_pubkey_fingerprint",
    [POLICY_ENCRYPTION_PROTOCOL] = "encryption_protocol",
    [POLICY_ENCRYPTION_CIPHER] = "encryption_cipher",
    [POLICY_ENCRYPTION_KEYSIZE] = "encryption_keysize",
    [POLICY_POLICY_CONTEXT] = "policy_context",
    [POLICY_COMPATIBILITY_LEVEL] = "compatibility_level",
    [POLICY_MAIL_VERSION] = "mail_version",
    [POLICY_TLS_SNI] = "tls_sni",
};

const char *policy_attr_name(enum policy_attr a)
{
    if ((unsigned)a >= POLICY_ATTR_COUNT)
        return NULL;
    return attr_names[a];
}

/* One memcmp against the single candidate the switch below chose. */
static int attr_is(const char *name, size_t len, enum policy_attr a)
{
    return memcmp(name, attr_names[a], len) == 0 ? (int)a : -1;
}

/* Known names are unique by (length, first char, last char), so a switch on those picks
 * at most one candidate and a single memcmp confirms it. test_policy checks every name
 * and near misses. */
int policy_attr_lookup(const char *name, size_t len)
{
    if (!name || len < 4)
        return -1;
    char first = name[0], last = name[len - 1];
    switch (len) {
    case 4:
        return attr_is(name, len, POLICY_SIZE);
    case 6:
        if (last == 'r')
            return attr_is(name, len, POLICY_SENDER);
        return attr_is(name, len, POLICY_STRESS);
    case 7:
        if (first == 'r')
            return attr_is(name, len, POLICY_REQUEST);
        return attr_is(name, len, POLICY_TLS_SNI);
    case 8:
        if (first == 'q')
            return attr_is(name, len, POLICY_QUEUE_ID);
        return attr_is(name, len, POLICY_INSTANCE);
    case 9:
        if (first == 'h')
            return attr_is(name, len, POLICY_HELO_NAME);
        return attr_is(name, len, POLICY_RECIPIENT);
    case 11:
        switch (first) {
        case 'c':
            if (last == 'e')
                return attr_is(name, len, POLICY_CLIENT_NAME);
            return attr_is(name, len, POLICY_CLIENT_PORT);
        case 's':
            if (last == 't')
                return attr_is(name, len, POLICY_SERVER_PORT);
            if (last == 'd')
                return attr_is(name, len, POLICY_SASL_METHOD);
            return attr_is(name, len, POLICY_SASL_SENDER);
        case 'e':
            return attr_is(name, len, POLICY_ETRN_DOMAIN);
        }
        return -1;
    case 12:
        if (first == 'c')
            return attr_is(name, len, POLICY_CCERT_ISSUER);
        return attr_is(name, len, POLICY_MAIL_VERSION);
    case 13:
        switch (first) {
        case 'p':
            return attr_is(name, len, POLICY_PROTOCOL_NAME);
        case 's':
            return attr_is(name, len, POLICY_SASL_USERNAME);
        case 'c':
            return attr_is(name, len, POLICY_CCERT_SUBJECT);
        }
        return -1;
    case 14:
        switch (first) {
        case 'p':
            if (last == 'e')
                return attr_is(name, len, POLICY_PROTOCOL_STATE);
            return attr_is(name, len, POLICY_POLICY_CONTEXT);
        case 'c':
            return attr_is(name, len, POLICY_CLIENT_ADDRESS);
        case 's':
            return attr_is(name, len, POLICY_SERVER_ADDRESS);
        }
        return -1;
    case 15:
        return attr_is(name, len, POLICY_RECIPIENT_COUNT);
    case 17:
        if (first == 'c')
            return attr_is(name, len, POLICY_CCERT_FINGERPRINT);
        return attr_is(name, len, POLICY_ENCRYPTION_CIPHER);
    case 18:
        return attr_is(name, len, POLICY_ENCRYPTION_KEYSIZE);
    case 19:
        switch (first) {
        case 'r':
            return attr_is(name, len, POLICY_REVERSE_CLIENT_NAME);
        case 'e':
            return attr_is(name, len, POLICY_ENCRYPTION_PROTOCOL);
        case 'c':
            return attr_is(name, len, POLICY_COMPATIBILITY_LEVEL);
        }
        return -1;
    case 24:
        return attr_is(name, len, POLICY_CCERT_PUBKEY_FINGERPRINT);
    }
    return -1;
}

/* protocol_state value to enum. Postfix sends upper case; a person typing a request by
 * hand may not, so case is ignored. Anything else is POLICY_STATE_UNKNOWN. */
static enum policy_state parse_state(const char *v, size_t len)
{
    static const struct {
        const char *name;
        enum policy_state state;
    } states[] = {
        {"RCPT", POLICY_STATE_RCPT},
        {"DATA", POLICY_STATE_DATA},
        {"END-OF-MESSAGE", POLICY_STATE_END_OF_MESSAGE},
        {"CONNECT", POLICY_STATE_CONNECT},
        {"EHLO", POLICY_STATE_EHLO},
        {"HELO", POLICY_STATE_HELO},
        {"MAIL", POLICY_STATE_MAIL},
        {"VRFY", POLICY_STATE_VRFY},
        {"ETRN", POLICY_STATE_ETRN},
    };
    if (!v)
        return POLICY_STATE_UNKNOWN;
    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
        if (strlen(states[i].name) == len && strncasecmp(v, states[i].name, len) == 0)
            return states[i].state;
    return POLICY_STATE_UNKNOWN;
}

const char *policy_strerror(int status)
{
    switch (status) {
    case POLICY_MORE:
        return "more input needed";
    case POLICY_DONE:
        return "request complete";
    case POLICY_ERR_LINE_TOO_LONG:
        return "line too long";
    case POLICY_ERR_TOO_MANY_ATTRS:
        return "too many attributes";
    case POLICY_ERR_REQUEST_TOO_LARGE:
        return "request too large";
    case POLICY_ERR_NUL:
        return "NUL byte in request";
    case POLICY_ERR_NO_EQUALS:
        return "line without '='";
    case POLICY_ERR_EMPTY_NAME:
        return "empty attribute name";
    case POLICY_ERR_NOMEM:
        return "out of memory";
    }
    return "unknown policy status";
}

static void start_request(struct policy_parser *p)
{
    p->len = 0;
    p->line_start = 0;
    p->nattrs = 0;
    p->n_extra = 0;
    p->done = false;
    memset(p->off, 0xff, sizeof(p->off)); /* every offset NO_OFF */
    memset(&p->req, 0, sizeof(p->req));
}

struct policy_parser *policy_parser_new(const struct policy_limits *limits)
{
    struct policy_parser *p = malloc(sizeof(*p));
    if (!p)
        return NULL;
    memset(p, 0, sizeof(*p));
    p->lim.max_line = POLICY_DEFAULT_MAX_LINE;
    p->lim.max_attrs = POLICY_DEFAULT_MAX_ATTRS;
    p->lim.max_request = POLICY_DEFAULT_MAX_REQUEST;
    if (limits) {
        if (limits->max_line)
            p->lim.max_line = limits->max_line;
        if (limits->max_attrs)
            p->lim.max_attrs = limits->max_attrs;
        if (limits->max_request)
            p->lim.max_request = limits->max_request;
    }
    /* A line can never be longer than a request; clamping keeps the room arithmetic in
     * policy_parser_feed() simple. */
    if (p->lim.max_line > p->lim.max_request)
        p->lim.max_line = p->lim.max_request;
    p->cap = p->lim.max_request < INITIAL_BUF ? p->lim.max_request + 1 : INITIAL_BUF;
    p->buf = malloc(p->cap);
    if (!p->buf) {
        free(p);
        return NULL;
    }
    start_request(p);
    return p;
}

void policy_parser_free(struct policy_parser *p)
{
    if (!p)
        return;
    free(p->buf);
    free(p->xoff);
    free(p->extra);
    free(p);
}

void policy_parser_reset(struct policy_parser *p)
{
    start_request(p);
    p->error = 0;
}

bool policy_parser_pending(const struct policy_parser *p)
{
    return !p->done && p->len > 0;
}

const struct policy_request *policy_parser_request(const struct policy_parser *p)
{
    return p->done ? &p->req : NULL;
}

/* Makes room for need bytes. Growth is geometric, so a parser reaches its working size
 * after a few requests and then never allocates again. */
static int buf_reserve(struct policy_parser *p, size_t need)
{
    if (need <= p->cap)
        return 0;
    size_t ncap = p->cap;
    while (ncap < need)
        ncap = ncap > SIZE_MAX / 2 ? need : ncap * 2;
    if (ncap > p->lim.max_request + 1 && need <= p->lim.max_request + 1)
        ncap = p->lim.max_request + 1;
    char *nb = realloc(p->buf, ncap);
    if (!nb)
        return POLICY_ERR_NOMEM;
    p->buf = nb;
    p->cap = ncap;
    return 0;
}

static int extra_reserve(struct policy_parser *p)
{
    if (p->n_extra < p->cap_extra)
        return 0;
    size_t n = p->cap_extra ? p->cap_extra * 2 : 8;
    /* Each array is stored as soon as it has grown, so a failure of the second leaves
     * both valid; cap_extra moves only when both have. */
    struct policy_extra *ne = realloc(p->extra, n * sizeof(*ne));
    if (!ne)
        return POLICY_ERR_NOMEM;
    p->extra = ne;
    size_t *nx = realloc(p->xoff, 2 * n * sizeof(*nx));
    if (!nx)
        return POLICY_ERR_NOMEM;
    p->xoff = nx;
    p->cap_extra = n;
    return 0;
}

/* The newline of the current line has arrived (not yet counted in len). Returns
 * POLICY_MORE after an attribute line, POLICY_DONE after the empty line, or an error;
 * on error nothing has changed, so POLICY_ERR_NOMEM can be retried. */
static int end_line(struct policy_parser *p)
{
    char *line = p->buf + p->line_start;
    size_t n = p->len - p->line_start;
    /* Strip one '\r' before '\n' so that requests typed through telnet work. */
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (n == 0) {
        p->buf[p->len++] = '\0';
        return POLICY_DONE;
    }
    char *eq = memchr(line, '=', n);
    if (!eq)
        return POLICY_ERR_NO_EQUALS;
    if (eq == line)
        return POLICY_ERR_EMPTY_NAME;
    if (p->nattrs >= p->lim.max_attrs)
        return POLICY_ERR_TOO_MANY_ATTRS;
    size_t name_len = (size_t)(eq - line);
    int a = policy_attr_lookup(line, name_len);
    if (a < 0) {
        int rc = extra_reserve(p);
        if (rc < 0)
            return rc;
    }
    size_t voff = p->line_start + name_len + 1;
    *eq = '\0';
    line[n] = '\0';
    p->buf[p->len++] = '\0';
    if (a >= 0) {
        p->off[a] = voff;
        p->req.attr_len[a] = n - name_len - 1;
    } else {
        p->xoff[2 * p->n_extra] = p->line_start;
        p->xoff[2 * p->n_extra + 1] = voff;
        p->n_extra++;
    }
    p->nattrs++;
    p->line_start = p->len;
    return POLICY_MORE;
}

/* Turns offsets into the pointers the caller sees; the buffer does not move again until
 * the next feed. */
static void finish_request(struct policy_parser *p)
{
    struct policy_request *r = &p->req;
    for (int i = 0; i < POLICY_ATTR_COUNT; i++)
        r->attr[i] = p->off[i] == NO_OFF ? NULL : p->buf + p->off[i];
    for (size_t i = 0; i < p->n_extra; i++) {
        p->extra[i].name = p->buf + p->xoff[2 * i];
        p->extra[i].value = p->buf + p->xoff[2 * i + 1];
    }
    r->extra = p->n_extra ? p->extra : NULL;
    r->n_extra = p->n_extra;
    r->state = parse_state(r->attr[POLICY_PROTOCOL_STATE], r->attr_len[POLICY_PROTOCOL_STATE]);
    p->done = true;
}

/* Errors are found at the first offending byte: content is checked against the room left
 * in the line and the request before it is copied, so an endless line costs at most
 * max_line bytes of buffer. Each chunk costs a memchr for '\n' and '\0' and one memcpy. */
int policy_parser_feed(struct policy_parser *p, const char *buf, size_t len, size_t *used)
{
    size_t pos = 0;
    int rc = POLICY_MORE;

    if (p->error) {
        *used = 0;
        return p->error;
    }
    if (p->done)
        start_request(p);
    /* One scan for NUL over the whole read instead of one per line: a request has ~30
     * short lines, and the per-call cost of memchr was an eighth of the parse. */
    bool has_nul = memchr(buf, '\0', len) != NULL;
    while (pos < len) {
        const char *s = buf + pos;
        size_t avail = len - pos;
        const char *nl = memchr(s, '\n', avail);
        size_t seg = nl ? (size_t)(nl - s) : avail;
        size_t line_len = p->len - p->line_start;
        size_t line_room = p->lim.max_line - line_len;
        size_t req_room = p->lim.max_request - p->len;
        size_t err_at = seg;
        int err = 0;

        /* Candidates in priority order; a later one wins only if strictly earlier, so
         * the error reported depends on the bytes alone, never on how they were split. */
        if (line_len == 0 && seg > 0 && s[0] == '=') {
            err_at = 0;
            err = POLICY_ERR_EMPTY_NAME;
        }
        if (line_room < err_at) {
            err_at = line_room;
            err = POLICY_ERR_LINE_TOO_LONG;
        }
        if (req_room < err_at) {
            err_at = req_room;
            err = POLICY_ERR_REQUEST_TOO_LARGE;
        }
        if (p->nattrs >= p->lim.max_attrs) {
            /* A further non-empty line after max_attrs attributes cannot be valid. Only
             * a lone '\r' may still become the empty line, so the error falls on the
             * first byte of the line unless that is '\r', else on the second. */
            size_t tm = line_len == 0 && seg > 0 && s[0] != '\r' ? 0 : 1 - line_len;
            if (tm < err_at) {
                err_at = tm;
                err = POLICY_ERR_TOO_MANY_ATTRS;
            }
        }
        const char *z = has_nul && err_at ? memchr(s, '\0', err_at) : NULL;
        if (z) {
            err_at = (size_t)(z - s);
            err = POLICY_ERR_NUL;
        }
        if (err) {
            pos += err_at;
            rc = err;
            goto out;
        }
        /* One more byte for the NUL that replaces the newline. */
        rc = buf_reserve(p, p->len + seg + 1);
        if (rc < 0)
            goto out;
        memcpy(p->buf + p->len, s, seg);
        p->len += seg;
        pos += seg;
        if (!nl)
            break;
        if (p->len == p->lim.max_request) {
            rc = POLICY_ERR_REQUEST_TOO_LARGE;
            goto out;
        }
        rc = end_line(p);
        if (rc < 0)
            goto out;
        pos++;
        if (rc == POLICY_DONE) {
            finish_request(p);
            goto out;
        }
    }
    rc = POLICY_MORE;
out:
    *used = pos;
    /* Out of memory is ours, not the peer's: the parser state is intact, so the caller
     * may feed the unconsumed bytes again. Protocol errors stick until a reset. */
    if (rc < 0 && rc != POLICY_ERR_NOMEM)
        p->error = rc;
    return rc;
}

int policy_encode_response(const char *action, size_t action_len, char *out, size_t outsz)
{
    static const char prefix[] = "action=";
    const size_t plen = sizeof(prefix) - 1;

    if (!action || action_len == 0 || action_len > POLICY_MAX_ACTION)
        return -EINVAL;
    if (memchr(action, '\n', action_len) || memchr(action, '\r', action_len) ||
        memchr(action, '\0', action_len))
        return -EINVAL;
    size_t total = plen + action_len + 2;
    if (!out || outsz < total + 1)
        return -ENOSPC;
    memcpy(out, prefix, plen);
    memcpy(out + plen, action, action_len);
    memcpy(out + plen + action_len, "\n\n", 3);
    return (int)total;
}

void policy_queue_id_prefix(const struct policy_request *req, char *out, size_t outsz)
{
    const char *q = req->attr[POLICY_QUEUE_ID];
    size_t n = q ? req->attr_len[POLICY_QUEUE_ID] : 0;
    if (outsz == 0)
        return;
    out[0] = '\0';
    if (n == 0 || n > 32 || n + 3 > outsz)
        return;
    for (size_t i = 0; i < n; i++) {
        char c = q[i];
        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
            return;
    }
    memcpy(out, q, n);
    memcpy(out + n, ": ", 3);
}
