/* queue: statistics of a Postfix queue from `postqueue -j` output. The caller (the report
 * command) streams postqueue's stdout in with queue_stats_feed(); records are split on
 * newlines (bounded line length, the whole output is never held), parsed with jansson and
 * folded into per-queue totals, per-recipient-domain figures (qshape style) and deferral
 * reasons grouped by DSN code and a small taxonomy. Memory is bounded: distinct domains
 * and reasons are capped and the overflow is counted under QUEUE_OTHER_DOMAIN. Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The queues `postqueue -j` reports, in Postfix's order of a message's life. */
enum queue_name {
    QUEUE_MAILDROP,
    QUEUE_INCOMING,
    QUEUE_ACTIVE,
    QUEUE_DEFERRED,
    QUEUE_HOLD,
    QUEUE_COUNT
};

/* Taxonomy of deferral reasons (the `delay_reason` of a recipient). */
enum queue_reason_class {
    QUEUE_REASON_CONN_REFUSED, /* "Connection refused" */
    QUEUE_REASON_CONN_TIMEOUT, /* "Connection timed out", "conversation ... timed out" */
    QUEUE_REASON_THROTTLE,     /* greylisting, 421, 4.2.x, "try again later", rate limits */
    QUEUE_REASON_DNS,          /* "Host or domain name not found", no MX, 4.4.3 / 5.4.4 */
    QUEUE_REASON_TLS,          /* TLS/SSL/certificate trouble */
    QUEUE_REASON_MAILBOX,      /* mailbox full (x.2.2), unknown user (x.1.1), quota */
    QUEUE_REASON_POLICY,       /* 5.7.x/4.7.x, "blocked", spam, blocklists */
    QUEUE_REASON_OTHER,        /* anything else, e.g. "lost connection" */
    QUEUE_REASON_COUNT
};

/* Domain name under which everything beyond the domain cap is counted. */
#define QUEUE_OTHER_DOMAIN "(other)"
/* Domain of an address without '@' (a local recipient such as "root"). */
#define QUEUE_LOCAL_DOMAIN "(local)"
/* Room for a DSN "d.ddd.ddd" plus NUL. */
#define QUEUE_DSN_SIZE 12
/* A reason's sample text is truncated to this many bytes (NUL included). */
#define QUEUE_SAMPLE_SIZE 160
/* qshape's age buckets in minutes: < 5, < 10, ... < 1280, and 1280+ (the last one). */
#define QUEUE_AGE_BUCKETS 10

/* "maildrop", "incoming", ... ; "?" for an out-of-range value. Static string. */
const char *queue_name_str(enum queue_name q);
/* Parses a queue name; returns 0 and sets *out, or -EINVAL. */
int queue_name_parse(const char *s, enum queue_name *out);
/* "connection_refused", "connection_timeout", "throttle", "dns", "tls", "mailbox",
 * "policy", "other": stable identifiers used in JSON and Prometheus labels. Static. */
const char *queue_reason_class_str(enum queue_reason_class c);
/* The qshape bucket index (0 .. QUEUE_AGE_BUCKETS-1) of a message age in seconds. */
unsigned queue_age_bucket(int64_t age_seconds);
/* Upper bound in minutes of bucket i (5, 10, ... 1280); 0 for the open last bucket. */
unsigned queue_age_bucket_limit(unsigned i);

/* Classifies a delay_reason text. Writes the DSN into dsn (QUEUE_DSN_SIZE bytes): the
 * enhanced status code found in the text ("... said: 450 4.2.0 ..." gives "4.2.0"), else
 * one derived as Postfix would (SMTP reply 4xx/5xx gives "4.0.0"/"5.0.0", a refused or
 * timed-out connection "4.4.1", lost connection "4.4.2", DNS "4.4.3", TLS "4.7.5",
 * anything else "4.0.0": a queued recipient is by definition not final). reason may be
 * NULL (never tried): returns QUEUE_REASON_OTHER with dsn "". Any thread. */
enum queue_reason_class queue_reason_classify(const char *reason, char *dsn);

/* One deferral reason of a domain: class + DSN, a sample text, and how many recipients. */
struct queue_reason {
    enum queue_reason_class cls;
    char dsn[QUEUE_DSN_SIZE];
    char sample[QUEUE_SAMPLE_SIZE]; /* the first text seen, truncated */
    uint64_t count;
};

/* Totals of one queue. oldest_arrival is 0 when the queue is empty. */
struct queue_totals {
    uint64_t messages;
    uint64_t recipients;
    uint64_t bytes;
    int64_t oldest_arrival; /* Unix seconds */
};

/* Figures of one recipient domain (lowercased). Read-only for callers. */
struct queue_domain {
    char *name;
    uint64_t recipients; /* all queues */
    uint64_t messages;   /* messages with at least one recipient here */
    uint64_t queue_recipients[QUEUE_COUNT];
    int64_t oldest_arrival; /* Unix seconds, oldest message with a recipient here */
    uint32_t age_buckets[QUEUE_AGE_BUCKETS]; /* recipients by message age, qshape style */
    uint64_t reasons_total;                  /* recipients with a delay_reason */
    size_t n_reasons;                        /* distinct (class, dsn) pairs, <= max_reasons */
    struct queue_reason *reasons;            /* unsorted; see queue_domain_top_reasons() */
};

/* Bounds and the report time. Zero fields take the defaults shown. */
struct queue_limits {
    int64_t now;        /* Unix seconds: ages and age buckets are relative to it */
    size_t max_line;    /* bytes per record line, 4 MiB (1000 recipients fit easily) */
    size_t max_domains; /* distinct domains kept, 10000; the rest count as "(other)" */
    size_t max_reasons; /* distinct (class, dsn) per domain, 16; overflow as other/"" */
    size_t max_dsn;     /* distinct DSN codes in the global table, 64 */
};

struct queue_stats;

/* New, empty statistics. lim may be NULL (defaults, now = 0). Returns NULL on ENOMEM.
 * The caller owns the result and frees it with queue_stats_free(). */
struct queue_stats *queue_stats_new(const struct queue_limits *lim);
/* Frees everything; NULL is a no-op. */
void queue_stats_free(struct queue_stats *qs);

/* Feeds len bytes of postqueue output (any chunking). Complete lines are parsed at once;
 * a partial line is kept (copied) until its newline arrives. Malformed and over-long lines
 * are counted and skipped. Returns 0, or -ENOMEM (the statistics stay consistent: the
 * record being added is either fully counted or not at all, and feeding may continue). */
int queue_stats_feed(struct queue_stats *qs, const char *buf, size_t len);
/* Ends the stream: parses a last line that has no newline. Returns 0 or -ENOMEM. */
int queue_stats_finish(struct queue_stats *qs);
/* Adds one record line (no newline needed). Returns 0 when counted, -EINVAL when it is
 * malformed (and counted as such), -ENOMEM. */
int queue_stats_add_line(struct queue_stats *qs, const char *line, size_t len);

/* Totals of one queue (borrowed pointer, valid until qs is freed or fed again). */
const struct queue_totals *queue_stats_totals(const struct queue_stats *qs, enum queue_name q);
/* Counts of the parsing: good records, malformed lines (bad JSON or shape), over-long
 * lines. Blank lines are not counted. */
void queue_stats_counts(const struct queue_stats *qs, uint64_t *records, uint64_t *malformed,
                        uint64_t *overlong);
/* Recipients with a delay_reason, per taxonomy class (all domains). */
uint64_t queue_stats_class_count(const struct queue_stats *qs, enum queue_reason_class c);
/* The global DSN table: n entries, sorted by count descending, then DSN. Borrowed array
 * (sample and count per DSN, cls = class of the first text seen with it). */
size_t queue_stats_dsns(const struct queue_stats *qs, const struct queue_reason **out);

/* Domains sorted by recipients descending, then name. On success returns 0 and stores a
 * new array of borrowed pointers in *out (caller frees the array with free(), not the
 * domains) and its length in *n. Returns -ENOMEM. */
int queue_stats_domains(const struct queue_stats *qs, const struct queue_domain ***out, size_t *n);
/* Looks a domain up (case-insensitive); NULL if absent. Borrowed. */
const struct queue_domain *queue_stats_domain(const struct queue_stats *qs, const char *name);
struct queue_sender;
/* Messages per sender domain and queue (queue_senders.h; the null sender is the row
 * "MAILER-DAEMON"), sorted by messages descending, then domain: a new array of borrowed
 * pointers in *out (free() the array) and its length in *n. 0 or -ENOMEM. */
int queue_stats_senders(const struct queue_stats *qs, const struct queue_sender ***out, size_t *n);
/* Copies up to max pointers to d's reasons into out, sorted by count descending, then
 * class, then DSN. Returns how many were written. */
size_t queue_domain_top_reasons(const struct queue_domain *d, const struct queue_reason **out,
                                size_t max);
