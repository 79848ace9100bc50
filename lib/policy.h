/* policy: the Postfix SMTP access policy delegation protocol (SMTPD_POLICY_README).
 * An incremental parser turns bytes, split anywhere, into complete requests (attribute
 * sets) with bounded sizes and precise error codes; an encoder writes the one-line reply.
 * Pure: no I/O. The server feeds what it reads and writes what the encoder returns. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Attributes Postfix sends (3.7 order, then later additions). Looked up by enum on the
 * hot path; unknown attributes are kept in request->extra. */
enum policy_attr {
    POLICY_REQUEST,
    POLICY_PROTOCOL_STATE,
    POLICY_PROTOCOL_NAME,
    POLICY_CLIENT_ADDRESS,
    POLICY_CLIENT_NAME,
    POLICY_CLIENT_PORT,
    POLICY_REVERSE_CLIENT_NAME,
    POLICY_SERVER_ADDRESS,
    POLICY_SERVER_PORT,
    POLICY_HELO_NAME,
    POLICY_SENDER,
    POLICY_RECIPIENT,
    POLICY_RECIPIENT_COUNT,
    POLICY_QUEUE_ID,
    POLICY_INSTANCE,
    POLICY_SIZE,
    POLICY_ETRN_DOMAIN,
    POLICY_STRESS,
    POLICY_SASL_METHOD,
    POLICY_SASL_USERNAME,
    POLICY_SASL_SENDER,
    POLICY_CCERT_SUBJECT,
    POLICY_CCERT_ISSUER,
    POLICY_CCERT_FINGERPRINT,
    POLICY_CCERT_PUBKEY_FINGERPRINT,
    POLICY_ENCRYPTION_PROTOCOL,
    POLICY_ENCRYPTION_CIPHER,
    POLICY_ENCRYPTION_KEYSIZE,
    POLICY_POLICY_CONTEXT,
    POLICY_COMPATIBILITY_LEVEL,
    POLICY_MAIL_VERSION,
    POLICY_TLS_SNI,
    POLICY_ATTR_COUNT
};

/* protocol_state values, parsed once per request. */
enum policy_state {
    POLICY_STATE_UNKNOWN = 0,
    POLICY_STATE_CONNECT,
    POLICY_STATE_EHLO,
    POLICY_STATE_HELO,
    POLICY_STATE_MAIL,
    POLICY_STATE_RCPT,
    POLICY_STATE_DATA,
    POLICY_STATE_END_OF_MESSAGE,
    POLICY_STATE_VRFY,
    POLICY_STATE_ETRN,
};

/* Parse results. Errors are negative; each is a protocol error that closes the
 * connection (except POLICY_ERR_NOMEM, which is ours). */
enum policy_status {
    POLICY_MORE = 0,               /* all input consumed, request not complete yet */
    POLICY_DONE = 1,               /* a request is complete; see policy_parser_request() */
    POLICY_ERR_LINE_TOO_LONG = -1, /* a line exceeds limits.max_line */
    POLICY_ERR_TOO_MANY_ATTRS = -2,
    POLICY_ERR_REQUEST_TOO_LARGE = -3,
    POLICY_ERR_NUL = -4,        /* a NUL byte anywhere */
    POLICY_ERR_NO_EQUALS = -5,  /* a non-empty line without '=' */
    POLICY_ERR_EMPTY_NAME = -6, /* a line starting with '=' */
    POLICY_ERR_NOMEM = -7,
};

/* A zero field means its default. max_line is clamped to max_request. */
struct policy_limits {
    size_t max_line;    /* bytes per line, newline excluded (a trailing '\r' counts) */
    size_t max_attrs;   /* attributes per request */
    size_t max_request; /* bytes per request, all lines and newlines */
};

/* Defaults that no real Postfix request reaches. */
#define POLICY_DEFAULT_MAX_LINE 16384
#define POLICY_DEFAULT_MAX_ATTRS 256
#define POLICY_DEFAULT_MAX_REQUEST 131072
/* Postfix caps policy replies at this many characters. */
#define POLICY_MAX_ACTION 8192

struct policy_extra {
    const char *name;
    const char *value;
};

/* A complete request. All strings are NUL-terminated and borrowed from the parser:
 * valid until the next policy_parser_feed() or policy_parser_free(). An attribute that
 * was not sent is NULL; one sent empty ("name=") is "". If an attribute is repeated,
 * the last value wins. */
struct policy_request {
    const char *attr[POLICY_ATTR_COUNT];
    size_t attr_len[POLICY_ATTR_COUNT];
    enum policy_state state;
    struct policy_extra *extra; /* unknown attributes, in arrival order */
    size_t n_extra;
};

struct policy_parser;

/* New parser with the given limits (NULL: the defaults). Returns NULL on ENOMEM. */
struct policy_parser *policy_parser_new(const struct policy_limits *limits);
/* Frees the parser and everything it owns. NULL is a no-op. */
void policy_parser_free(struct policy_parser *p);

/* Feeds up to len bytes. Sets *used to the number of bytes consumed. Returns
 * POLICY_DONE when a request completed (bytes after it are not consumed: feed them
 * again after handling the request), POLICY_MORE when all bytes were consumed without
 * completing one, or a negative enum policy_status on a protocol error, after which the
 * parser must be freed (or reset) and the connection closed.
 * Protocol: lines "name=value\n", split at the first '='; an empty line ends a request.
 * One '\r' before '\n' is stripped, so a request typed through telnet works. A lone
 * empty line is an empty request (every attribute NULL), answered like any other, as
 * Postfix's own example policy server does. Errors are reported at the first offending
 * byte (*used is its offset) and do not depend on how the input was split: a line is
 * rejected as soon as it exceeds max_line, without buffering the rest.
 * Protocol errors are sticky until policy_parser_reset(). POLICY_ERR_NOMEM is not: the
 * state is intact and the bytes from *used on may be fed again.
 * Cost: O(bytes); no allocation once the parser's buffer has grown to its working size
 * (it never exceeds max_request + 1 bytes). Call from the thread that owns the parser. */
int policy_parser_feed(struct policy_parser *p, const char *buf, size_t len, size_t *used);

/* The request completed by the last POLICY_DONE (borrowed), or NULL. */
const struct policy_request *policy_parser_request(const struct policy_parser *p);

/* Forgets any partial input and a sticky error, ready for a new stream. Keeps the
 * buffer. */
void policy_parser_reset(struct policy_parser *p);

/* True if bytes of an unfinished request are buffered (half a request). */
bool policy_parser_pending(const struct policy_parser *p);

/* Name of an attribute ("client_address"); attribute index by name, or -1. */
const char *policy_attr_name(enum policy_attr a);
int policy_attr_lookup(const char *name, size_t len);

/* Writes "QUEUEID: " to out when req carries a queue_id Postfix could have made (1 to 32
 * letters and digits), else "" (anything else is left out rather than logged), so a log
 * line that starts with it reads like Postfix's own lines for that message. outsz >= 35
 * for any queue id. */
void policy_queue_id_prefix(const struct policy_request *req, char *out, size_t outsz);

/* Human-readable text of a policy_status ("line too long"). */
const char *policy_strerror(int status);

/* Writes "action=ACTION\n\n" into out (size outsz, NUL-terminated). Returns the length
 * written (without the NUL), -EINVAL if action is empty, longer than POLICY_MAX_ACTION or
 * contains CR, LF or NUL (checked over action_len bytes), -ENOSPC if out is too small. */
int policy_encode_response(const char *action, size_t action_len, char *out, size_t outsz);
