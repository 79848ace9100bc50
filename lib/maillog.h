/* maillog: Postfix log lines in, tagged records out. The monitor's file tailer feeds
 * read() chunks to a line splitter (bounded: over-long lines are cut and flagged), then
 * parses each line into a struct maillog_record: process-limit warnings, postscreen
 * STRESS mode, smtpd limit warnings, anvil statistics, connects and rejects, delivery
 * status lines. Pure: bytes in, records out; no clock, no file access. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest line the splitter yields; longer lines are cut to this and flagged. */
#define MAILLOG_DEFAULT_MAX_LINE 8192

enum maillog_kind {
    MAILLOG_OTHER = 0,        /* not a line we understand (or not Postfix at all) */
    MAILLOG_PROCESS_LIMIT,    /* master: service "S" (ENDPOINT) has reached its process limit "N" */
    MAILLOG_POSTSCREEN_ENTER, /* postscreen: entering STRESS mode with N connections */
    MAILLOG_POSTSCREEN_LEAVE, /* postscreen: leaving STRESS mode with N connections */
    MAILLOG_PORTS_BUSY, /* postscreen: NOQUEUE: reject: CONNECT from [A]:P: all server ports busy,
                           reject: connect from [A]:P: all screening ports busy (text says which) */
    MAILLOG_LIMIT_EXCEEDED,  /* smtpd: warning: WHAT limit exceeded: N from CLIENT for service S */
    MAILLOG_ANVIL_STATS,     /* anvil: statistics: max ... */
    MAILLOG_LOST_CONNECTION, /* smtpd: lost connection after STAGE from CLIENT */
    MAILLOG_CONNECT,         /* smtpd: connect from CLIENT */
    MAILLOG_REJECT,   /* smtpd/postscreen: QUEUEID: reject: STAGE from CLIENT: CODE DSN ... */
    MAILLOG_DELIVERY, /* QUEUEID: to=<RCPT>, relay=..., dsn=X.Y.Z, status=S (text) */
    MAILLOG_EXPIRED, /* qmgr: QUEUEID: from=<S>, status=expired|force-expired, returned to sender */
    MAILLOG_AUTH_FAILED,        /* smtpd: warning: CLIENT: SASL METHOD authentication failed: REASON
                                   [, sasl_username=USER] */
    MAILLOG_POSTSCREEN_VERDICT, /* postscreen: PREGREET, HANGUP, DNSBL rank, PASS NEW/OLD, ...
                                   (stage has the verdict's name, see maillog_ps_verdicts) */
};

/* anvil statistics lines */
enum maillog_anvil_stat {
    MAILLOG_ANVIL_NONE = 0,
    MAILLOG_ANVIL_CONNECTION_RATE,  /* max connection rate N/Ts for (KEY) */
    MAILLOG_ANVIL_CONNECTION_COUNT, /* max connection count N for (KEY) */
    MAILLOG_ANVIL_MESSAGE_RATE,
    MAILLOG_ANVIL_RECIPIENT_RATE,
    MAILLOG_ANVIL_NEWTLS_RATE,
    MAILLOG_ANVIL_AUTH_RATE,
    MAILLOG_ANVIL_CACHE_SIZE, /* max cache size N at ... (no key) */
};

/* smtpd "... limit exceeded" warnings */
enum maillog_limit {
    MAILLOG_LIMIT_NONE = 0,
    MAILLOG_LIMIT_CONNECTION_COUNT, /* Connection concurrency limit exceeded */
    MAILLOG_LIMIT_CONNECTION_RATE,  /* Connection rate limit exceeded */
    MAILLOG_LIMIT_MESSAGE_RATE,     /* Message delivery request rate limit exceeded */
    MAILLOG_LIMIT_RECIPIENT_RATE,   /* Recipient address rate limit exceeded */
    MAILLOG_LIMIT_NEWTLS_RATE,      /* New TLS session rate limit exceeded */
    MAILLOG_LIMIT_AUTH_RATE,        /* AUTH command rate limit exceeded */
    MAILLOG_LIMIT_OTHER,            /* any other "... limit exceeded: N from CLIENT" */
};

enum maillog_status {
    MAILLOG_STATUS_NONE = 0,
    MAILLOG_STATUS_SENT,
    MAILLOG_STATUS_DEFERRED,
    MAILLOG_STATUS_BOUNCED,
    MAILLOG_STATUS_OTHER, /* any other word (status_word has it) */
    /* Address verification probes (ADDRESS_VERIFICATION_README): not mail, never a delivery
     * or a bounce. */
    MAILLOG_STATUS_DELIVERABLE,   /* status=deliverable */
    MAILLOG_STATUS_UNDELIVERABLE, /* status=undeliverable, undeliverable-but-not-cached */
};

enum maillog_reject_class {
    MAILLOG_REJECT_NONE = 0,
    MAILLOG_REJECT_UNKNOWN_USER, /* "User unknown" in any table: dictionary harvest signal */
    MAILLOG_REJECT_OTHER,
};

/* A parsed line. Every string is NUL-terminated and cut to its array (a cut sets
 * `truncated`); fields that do not apply to the kind are empty/zero. */
struct maillog_record {
    enum maillog_kind kind;
    bool truncated;       /* some field was longer than its array */
    char timestamp[40];   /* "Nov 23 03:33:29" or "2024-11-23T03:33:29.123+00:00" */
    char host[128];       /* syslog host field */
    char syslog_name[64]; /* "postfix", "postfix-test", "postfix/submission" */
    char daemon[32];      /* "smtpd", "master", "postscreen", "anvil", "smtp", ... */
    long pid;             /* -1 when the tag has no [pid] */
    char queue_id[32];    /* REJECT (not "NOQUEUE") and DELIVERY */

    /* PROCESS_LIMIT: service and endpoint ("smtpd", "private/smtpd"); limit.
     * CONNECT, LOST_CONNECTION, REJECT, AUTH_FAILED: the master.cf service as the syslog tag
     * names it: what follows the first '/' of syslog_name ("submission" for
     * postfix/submission/smtpd), else the daemon ("smtpd", "postscreen"). */
    char service[128];
    char endpoint[128];
    unsigned long limit;

    /* POSTSCREEN_ENTER/LEAVE: connections. LIMIT_EXCEEDED/ANVIL: value (and for rates,
     * interval_s). */
    unsigned long count;
    unsigned long interval_s;
    enum maillog_limit limit_kind;
    enum maillog_anvil_stat anvil_stat;
    char key[192]; /* anvil "(smtp:192.0.2.7)" without parentheses */

    /* Client of CONNECT, LOST_CONNECTION, LIMIT_EXCEEDED, REJECT, PORTS_BUSY. name is
     * "unknown" when unresolved, "" in postscreen's "[addr]:port" form. port 0 if absent. */
    char client_name[256];
    char client_addr[64];
    unsigned client_port;
    char stage[24]; /* LOST_CONNECTION "CONNECT"/"DATA"; REJECT "RCPT"/"CONNECT"...;
                       POSTSCREEN_VERDICT "pregreet", "pass_new" ... */

    /* REJECT: code 550, dsn "5.1.1", class, recipient (from "<..>:" or to=<..>), text. */
    unsigned code;
    char dsn[16];
    enum maillog_reject_class reject_class;

    /* DELIVERY (and REJECT's recipient). domain is lowercased, "" without '@'. */
    char recipient[256];
    char domain[256];
    char relay[256];
    int64_t delay_ms; /* delay=, -1 if absent */
    enum maillog_status status;
    char status_word[32]; /* "sent", "deferred", "bounced", "deliverable", ...; EXPIRED:
                             "expired" or "force-expired" */
    char text[512];       /* REJECT: the reply text after the DSN; DELIVERY: "(text)" inner;
                             PORTS_BUSY: "all server ports busy" or "all screening ports busy";
                             AUTH_FAILED: the reason after "failed: " (may be empty) */

    char sender[256];        /* EXPIRED: the sender (from=<...>), "" for the null sender */
    char sasl_method[32];    /* AUTH_FAILED: "LOGIN", "PLAIN", "CRAM-MD5" ... (upper-cased) */
    char sasl_username[256]; /* AUTH_FAILED: sasl_username=..., "" when not logged */
};

/* Parses one line (without its newline; a trailing '\r' is ignored). Never reads past
 * len; a line with a NUL byte or an unknown shape gives MAILLOG_OTHER (header fields
 * filled when the syslog prefix parsed). Fills *rec always. Returns rec->kind. */
enum maillog_kind maillog_parse_line(const char *line, size_t len, struct maillog_record *rec);

/* The postscreen verdict names a POSTSCREEN_VERDICT record's stage can hold, in this order,
 * NULL-terminated: "pregreet", "hangup", "dnsbl", "pass_new", "pass_old", "allowlisted"
 * (also WHITELISTED), "denylisted" (BLACKLISTED), "allowlist_veto", "pipelining",
 * "non_smtp", "bare_newline", "command_limit" (COMMAND TIME/COUNT/LENGTH LIMIT). Static. */
#define MAILLOG_PS_VERDICT_COUNT 12
extern const char *const maillog_ps_verdicts[MAILLOG_PS_VERDICT_COUNT + 1];

/* "process-limit", "connect", ..., "other". */
const char *maillog_kind_name(enum maillog_kind kind);

/* What a record counts toward in the attack detector. */
enum maillog_attack {
    MAILLOG_ATTACK_NONE = 0,
    MAILLOG_ATTACK_UNKNOWN_USER, /* a `User unknown` reject (dictionary harvest) */
    MAILLOG_ATTACK_ERROR,        /* any other reject */
    MAILLOG_ATTACK_AUTH,         /* a SASL authentication failure the client caused */
};

/* The attack counter rec (parsed) feeds, NONE for a record without a client address
 * and for an AUTH_FAILED that the server caused (smtpd lost its SASL server: "Connection
 * lost to authentication server", answered 454, not the client's guess). */
enum maillog_attack maillog_attack_class(const struct maillog_record *rec);

/* Line splitter: chunks in, complete lines out, memory bounded by max_line plus the
 * chunk being fed. A line longer than max_line is yielded once, cut to max_line and
 * flagged truncated; the rest of it up to the newline is dropped. */
struct maillog_splitter;

/* max_line 0 means MAILLOG_DEFAULT_MAX_LINE. NULL on ENOMEM. */
struct maillog_splitter *maillog_splitter_new(size_t max_line);
/* NULL is a no-op. */
void maillog_splitter_free(struct maillog_splitter *sp);
/* Appends bytes (copied). Drain with maillog_splitter_next() before feeding again to keep
 * memory bounded. Returns 0 or -ENOMEM (nothing appended). */
int maillog_splitter_feed(struct maillog_splitter *sp, const char *data, size_t len);
/* Next complete line: returns 1 and sets *line and *len (borrowed, valid until the next feed
 * or reset; no newline, a trailing '\r' removed) and *truncated; 0 when no complete line
 * is buffered. truncated may be NULL. */
int maillog_splitter_next(struct maillog_splitter *sp, const char **line, size_t *len,
                          bool *truncated);
/* Drops any partial line (after log rotation or truncation: the next bytes start a new
 * file). */
void maillog_splitter_reset(struct maillog_splitter *sp);
/* Bytes buffered that do not yet form a complete line. */
size_t maillog_splitter_pending(const struct maillog_splitter *sp);
