/* report: the health report model of `postsurge report` and its writers. The CLI (or the
 * HTTP endpoint) fills a report with what it gathered (node status and events from the
 * store, queue statistics from lib/queue, traffic counts from the maillog parser), lets
 * report_apply_baseline() compare the figures with their rolling baselines and
 * report_evaluate() turn thresholds into findings, each with one line of advice; then
 * writes text, JSON (schema: test/data/report/schema.json) or Prometheus text. Pure: the
 * report time is passed in, output goes to a caller's FILE (open_memstream for a buffer). */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "baseline.h"
#include "queue.h"

/* Monitoring-plugin states; the value is the exit status. */
enum report_status {
    REPORT_OK = 0,
    REPORT_WARNING = 1,
    REPORT_CRITICAL = 2,
    REPORT_UNKNOWN = 3,
};

/* "OK", "WARNING", "CRITICAL", "UNKNOWN". Static. */
const char *report_status_str(enum report_status s);
/* The process exit status for s: 0, 1, 2, 3 (anything else maps to 3). */
int report_exit_code(enum report_status s);
/* The worse of two states: CRITICAL > UNKNOWN > WARNING > OK (a report that could not
 * see part of the system is worse than one that saw a definite warning). */
enum report_status report_status_worse(enum report_status a, enum report_status b);

/* Thresholds. A zero threshold is off. report_thresholds_default() gives the values shown;
 * the CLI maps the report_* settings named in brackets onto them. */
struct report_thresholds {
    uint64_t hold_warning;            /* 1 held message [report_hold_warning] */
    uint64_t hold_critical;           /* 0, off [report_hold_critical] */
    uint64_t deferred_warning;        /* 100 messages [report_deferred_warning] */
    uint64_t deferred_critical;       /* 1000 [report_deferred_critical] */
    uint64_t backlog_warning;         /* 2000 incoming + active [report_backlog_warning] */
    uint64_t backlog_critical;        /* 10000 [report_backlog_critical] */
    int64_t age_warning;              /* 1 d, seconds: oldest incoming/active/deferred
                                         message [report_queue_age_warning] */
    int64_t age_critical;             /* 4 d [report_queue_age_critical]; Postfix bounces at
                                         maximal_queue_lifetime (5 d) */
    uint64_t domain_deferred_warning; /* 20 recipients of one domain deferred
                                         [report_domain_deferred_warning] */
    double failure_rate_warning;      /* 0.2 of a domain's deliveries deferred or bounced
                                         [report_failure_rate_warning] */
    double failure_rate_critical;     /* 0.5 [report_failure_rate_critical] */
    uint64_t failure_min_messages;    /* 20: smaller samples are not judged
                                         [report_failure_min_messages] */
    uint64_t client_reject_warning;   /* 50 rejects of one client [report_client_reject_warning] */
    uint64_t lost_connection_warning; /* 100 lost connections of one client on one service
                                         [report_lost_connection_warning] */
    uint64_t auth_failure_warning;    /* 30 SASL failures of one client
                                         [report_auth_failure_warning] */
    int saturation_warning;           /* 80 % [report_saturation_warning] */
    int saturation_critical;          /* 95 % [report_saturation_critical] */
    int imbalance_warning;            /* 50 percentage points between the busiest and the
                                         idlest node [report_imbalance_warning] */
    size_t top_domains;               /* 10 rows [report_top_domains] */
    size_t top_clients;               /* 10 rows [report_top_clients] */
    size_t top_reasons;               /* 3 reasons per domain [report_top_reasons] */
};
void report_thresholds_default(struct report_thresholds *t);

/* One master.cf service of a node. -1 means unknown. */
struct report_service {
    const char *name; /* "smtpd", "127.0.0.1:25/inet", ... */
    int64_t busy, limit, waiting;
};

/* One event from the store's event log since the last report. */
struct report_event {
    int64_t time;       /* Unix seconds */
    const char *kind;   /* "stress_enter", "override_apply", ... */
    const char *detail; /* may be NULL */
};

/* What the CLI knows about one node. Tri-states: 1 yes, 0 no, -1 unknown. */
struct report_node_info {
    const char *name;
    int daemon_up, master_up, qmgr_up;
    int stressed;
    int saturation; /* percent of the busiest public smtpd service, -1 unknown */
    uint32_t stress_episodes, overrides; /* since the last report */
    const struct report_service *services;
    size_t n_services;
    const struct report_event *events;
    size_t n_events;
};

struct report;

/* A new, empty report at now (Unix seconds) for host (the node running the report).
 * Returns NULL on ENOMEM. Free with report_free(). */
struct report *report_new(int64_t now, const char *host);
/* NULL is a no-op. */
void report_free(struct report *r);

/* All add/set functions copy what they are given (the caller keeps ownership of its
 * arguments) and return 0, -EINVAL (NULL/empty name) or -ENOMEM. */

/* Adds a node (deep copy; at most 50 events per node are kept, the newest). */
int report_add_node(struct report *r, const struct report_node_info *n);
/* Copies the queue figures: totals, parse counts, reasons by class and DSN, and the top
 * top_domains domains (0: 10) with their top reasons. Without this call the report's
 * queue figures are absent (JSON null) and report_evaluate() adds an UNKNOWN finding. */
int report_set_queue(struct report *r, const struct queue_stats *qs, size_t top_domains,
                     size_t top_reasons);
/* Traffic from the maillog since the last report, per receiving domain (repeated calls for
 * one domain add up). */
int report_add_traffic(struct report *r, const char *domain, uint64_t delivered, uint64_t deferred,
                       uint64_t bounced);
/* SMTP clients seen since the last report ("ADDR" or "NAME[ADDR]"). Rows are keyed by the
 * address: calls for one address add up, and a name given by any call is kept (the first
 * one), so smtpd's "name[ADDR]" and postscreen's bare "ADDR" are one row. */
int report_add_client(struct report *r, const char *client, uint64_t connections, uint64_t rejects);

/* Log lines that are neither deliveries nor client traffic. */
struct report_log_totals {
    uint64_t probes_deliverable;   /* address verification: status=deliverable */
    uint64_t probes_undeliverable; /* status=undeliverable, undeliverable-but-not-cached */
    uint64_t expired;              /* qmgr: status=expired, returned to sender (messages) */
    uint64_t force_expired;        /* qmgr: status=force-expired (postsuper -e) */
    uint64_t internal_connections; /* loopback clients (content filter re-injection, local
                                      submission), kept out of the clients table */
    uint64_t lost_connections;     /* all lost connections (rows may show only the top) */
    uint64_t auth_failures;        /* all SASL failures (rows may show only the top) */
};
/* Adds t's counts to the report's. 0. */
int report_add_log_totals(struct report *r, const struct report_log_totals *t);
/* Connections one client lost on one master.cf service ("submission", "smtpd"); stages is a
 * summary like "EHLO 453, CONNECT 10" (may be NULL). Calls for one (client, service) add
 * up (the first stages text stays). */
int report_add_lost(struct report *r, const char *client, const char *service, const char *stages,
                    uint64_t count);
/* An anvil "statistics:" peak: statistic ("connection_rate", "cache_size" ...), the peak
 * value, the rate interval in seconds (0 for counts) and the key ("submission:192.0.2.7",
 * NULL for the cache size). A later call for the same statistic keeps the higher peak. */
int report_add_anvil(struct report *r, const char *statistic, uint64_t value, uint64_t interval_s,
                     const char *key);
/* SASL authentication failures (smtpd's "SASL METHOD authentication failed") of one client
 * (by_username false: key is "ADDR" or "NAME[ADDR]", keyed by address like clients) or for
 * one username (by_username true). Calls add up. */
int report_add_auth_failures(struct report *r, bool by_username, const char *key, uint64_t count);
/* Rejects (smtpd and postscreen "reject:" lines with an SMTP code) grouped by what
 * rejected them (report_classes.c). */
enum report_reject_class {
    REPORT_REJECT_DNSBL,             /* "blocked using LIST" (reject_rbl_client, postscreen) */
    REPORT_REJECT_UNKNOWN_RECIPIENT, /* "User unknown", "Recipient address rejected: ...
                                        unknown" */
    REPORT_REJECT_RELAY,             /* "Relay access denied" */
    REPORT_REJECT_HELO,              /* "Helo command rejected: ..." */
    REPORT_REJECT_SENDER_DOMAIN,     /* "Sender address rejected: Domain not found", need
                                        fully-qualified address, nullMX, malformed DNS reply */
    REPORT_REJECT_OWN_LIMIT,         /* postsurge's own replies (limit_action, attack_action,
                                        their defaults, texts the caller names) */
    REPORT_REJECT_GREYLIST,          /* "Greylisted", "greylisting", or a 4xx "try again
                                        later" (postgrey, sqlgrey) */
    REPORT_REJECT_OTHER,
    REPORT_REJECT_CLASS_COUNT
};
/* "dnsbl", "unknown_recipient", "relay", "helo", "sender_domain", "postsurge_limit",
 * "greylist", "other". Static. */
const char *report_reject_class_str(enum report_reject_class c);
/* Classifies a reject's reply text (after the code and DSN, as maillog's text holds it);
 * code is the SMTP code (0 unknown). own is a NULL-terminated list of postsurge's reply
 * texts without their code and DSN (may be NULL: the defaults are always known). */
enum report_reject_class report_reject_classify(unsigned code, const char *text,
                                                const char *const *own);
/* Adds n rejects of class c. 0 or -EINVAL. */
int report_add_rejects(struct report *r, enum report_reject_class c, uint64_t n);
/* Adds n postscreen verdicts named verdict (one of maillog_ps_verdicts). 0 or -EINVAL. */
int report_add_postscreen(struct report *r, const char *verdict, uint64_t n);

/* Postfix warnings counted in the maillog: kind "process_limit" (detail: the service),
 * "connection_rate_limit", "anvil" ...; detail may be NULL. Calls add up. */
int report_add_warning(struct report *r, const char *kind, const char *detail, uint64_t count);
/* An anomaly found by the caller; cause is one line (may be NULL). */
int report_add_anomaly(struct report *r, const char *metric, double value, double mean, double sd,
                       uint64_t samples, const char *cause);
/* A finding from the caller (e.g. UNKNOWN "postqueue failed: ..."); advice may be NULL. */
int report_add_finding(struct report *r, enum report_status severity, const char *code,
                       const char *subject, const char *message, const char *advice);

/* Receiving domains whose deferrals get baselines of their own: the top N by volume
 * (delivered + deferred + bounced) of the traffic rows (report_domains.c). */
#define REPORT_BASELINE_DOMAINS 20
/* Deferrals of domain in the maillog with reason class cls and reply ("421 4.7.0", or just
 * the DSN when the remote said nothing): count recipients. Calls for one (domain, class)
 * add up and keep the reply with the biggest count. Only domains that are among the top
 * REPORT_BASELINE_DOMAINS need them. 0, -EINVAL, -ENOMEM. */
int report_add_domain_reason(struct report *r, const char *domain, enum queue_reason_class cls,
                             const char *reply, uint64_t count);
/* One limit-hit event (the first refusal of a key by a rate-limit rule in its window on
 * one node) since the last report. Strings are copied; key_spec ("sasl_username",
 * "client_address/24/64+sender", NULL if unknown) and client may be NULL. */
struct report_limit_hit {
    const char *node, *rule, *key_spec, *value, *client;
    int64_t limit, count;
    int64_t time; /* Unix seconds */
};
/* Adds one event to the row of its (rule, value) key: rows count events and the distinct
 * nodes (up to REPORT_LIMIT_NODES names). At most REPORT_LIMIT_KEYS rows; events of
 * further keys are only counted. */
int report_add_limit_hit(struct report *r, const struct report_limit_hit *h);
/* A key that hit limits this often since the last report (a limit-hit is at most one per
 * key, window and node) is a WARNING finding, as is one that hit them on two nodes. */
#define REPORT_LIMIT_HIT_REPEAT 3
#define REPORT_LIMIT_NODES 8
#define REPORT_LIMIT_KEYS 1000

/* Compares the report's figures (queue sizes, traffic totals, rejects, warnings, node
 * saturation) with baseline b under keys "NODE/METRIC" (node: the report host), adds an
 * anomaly for each deviation unless quiet is true, then records every figure as a new
 * sample at the report time. The top REPORT_BASELINE_DOMAINS receiving domains also get
 * "NODE/domain/DOMAIN/deferral_pct" (only judged at 20 messages or more), ".../deferred"
 * and ".../deferred.CLASS" per reason class; a rise of the first two is an anomaly
 * "domain/DOMAIN/..." whose cause names the figure, the baseline, the delta and the reason
 * class that grew most against its own baseline. The caller computes quiet from
 * report_quiet_windows and its backlog override. Call after the figures are in and before
 * report_evaluate(). Returns the number of anomalies added, or -ENOMEM. */
int report_apply_baseline(struct report *r, struct baseline *b, bool quiet);

/* Turns figures into findings against t (NULL: defaults) and sets the status. Call once,
 * after everything is added. Returns 0 or -ENOMEM. */
int report_evaluate(struct report *r, const struct report_thresholds *t);
/* The status: the worst finding severity (OK without findings). */
enum report_status report_status(const struct report *r);
/* Findings so far (after report_evaluate: sorted worst first). */
size_t report_finding_count(const struct report *r);

/* Text for humans and cron mail: one line "STATUS - summary | perfdata" when all is OK,
 * otherwise that line followed by the findings with advice and the tables. Control
 * characters and invalid UTF-8 in any value are escaped (printable.h). 0, -ENOMEM or -EIO. */
int report_write_text(const struct report *r, FILE *out);
/* The JSON document (schema_version 1) as a new reference in *out. 0 or -ENOMEM. */
int report_to_json(const struct report *r, json_t **out);
/* report_to_json() written with two-space indentation and a final newline. 0, -ENOMEM,
 * -EIO. */
int report_write_json(const struct report *r, FILE *out);
/* Prometheus text exposition (postsurge_report_* gauges, HELP and TYPE lines, escaped
 * labels), for the node_exporter textfile collector. 0 or -EIO. */
int report_write_prometheus(const struct report *r, FILE *out);
