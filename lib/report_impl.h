/* report_impl: the rows a report holds, shared by the sources of the report module
 * (report.c builds and evaluates them, report_write.c writes them). Not for other modules:
 * they go through report.h. */
#pragma once

#include "maillog.h"
#include "report.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct r_service {
    char *name;
    int64_t busy, limit, waiting;
};

struct r_event {
    int64_t time;
    char *kind, *detail;
};

struct r_node {
    char *name;
    int daemon_up, master_up, qmgr_up, stressed, saturation;
    uint32_t stress_episodes, overrides;
    struct r_service *services;
    size_t n_services;
    struct r_event *events;
    size_t n_events;
};

struct r_domain {
    char *name;
    uint64_t recipients, messages, reasons_total;
    uint64_t queue_recipients[QUEUE_COUNT];
    int64_t oldest_arrival;
    uint32_t age_buckets[QUEUE_AGE_BUCKETS];
    struct queue_reason *reasons; /* top reasons, sorted */
    size_t n_reasons;
};

struct r_traffic {
    char *domain;
    uint64_t delivered, deferred, bounced;
};

struct r_client {
    char *client;  /* "NAME[ADDR]" or "ADDR", for display */
    char *address; /* the key */
    char *name;    /* NULL when not known */
    uint64_t connections, rejects;
};

struct r_lost {
    char *client, *service, *stages;
    uint64_t count;
};

struct r_anvil {
    char *statistic, *key;
    uint64_t value, interval_s;
};

/* An authentication failure row: client (keyed by address) or username. */
struct r_auth {
    char *key, *address, *name;
    uint64_t failures;
};

/* Deferrals of one tracked domain in one reason class, with the commonest reply. */
struct r_dreason {
    char *domain, *reply;
    enum queue_reason_class cls;
    uint64_t count, reply_count;
};

/* A sender domain of the queue (QUEUE_NULL_SENDER for bounces). */
struct r_sender {
    char *domain;
    uint64_t messages, deferred;
};

struct r_warning {
    char *kind, *detail;
    uint64_t count;
};

struct r_anomaly {
    char *metric, *cause;
    double value, mean, sd;
    uint64_t samples;
};

/* Keys that hit rate limits (report_limits.c). */
struct r_limit_key {
    char *rule, *value, *key_spec, *client;
    char *nodes[REPORT_LIMIT_NODES];
    size_t n_nodes;
    uint64_t hits;
    int64_t limit, count, last;
};

struct r_finding {
    enum report_status severity;
    char *code, *subject, *message, *advice;
};

struct report {
    int64_t now;
    char *host;
    enum report_status status;
    bool evaluated;
    struct report_thresholds t;

    struct r_node *nodes;
    size_t n_nodes, cap_nodes;

    bool have_queue;
    struct queue_totals totals[QUEUE_COUNT];
    uint64_t records, malformed, overlong;
    uint64_t class_count[QUEUE_REASON_COUNT];
    struct queue_reason *dsns;
    size_t n_dsns;
    struct r_domain *domains;
    size_t n_domains;

    struct r_traffic *traffic;
    size_t n_traffic, cap_traffic;
    struct r_client *clients;
    size_t n_clients, cap_clients;
    struct r_warning *warnings;
    size_t n_warnings, cap_warnings;
    struct report_log_totals log;
    bool have_log;
    struct r_lost *lost;
    size_t n_lost, cap_lost;
    struct r_anvil *anvil;
    size_t n_anvil, cap_anvil;
    struct r_auth *auth_clients, *auth_users;
    size_t n_auth_clients, cap_auth_clients, n_auth_users, cap_auth_users;
    uint64_t reject_classes[REPORT_REJECT_CLASS_COUNT];
    uint64_t ps_verdicts[MAILLOG_PS_VERDICT_COUNT]; /* in maillog_ps_verdicts order */
    struct r_dreason *dreasons;
    uint64_t null_sender[QUEUE_COUNT]; /* null-sender messages per queue */
    struct r_sender *senders;          /* top sender domains by messages */
    size_t n_senders;
    size_t n_dreasons;
    struct r_anomaly *anomalies;
    size_t n_anomalies, cap_anomalies;
    struct r_finding *findings;
    size_t n_findings, cap_findings;
    struct r_limit_key *limit_keys;
    size_t n_limit_keys, cap_limit_keys;
    uint64_t limit_hit_events;
};

/* Sums of the traffic rows: what 0 delivered, 1 deferred, 2 bounced. */
uint64_t report_traffic_sum(const struct report *r, int what);
/* The oldest message of the incoming, active and deferred queues: false when they are
 * empty; else its age at the report time in *age (negative when its arrival lies ahead of
 * the clock) and its queue in *q. The age finding and the perfdata both read it. */
bool report_oldest_age(const struct report *r, int64_t *age, enum queue_name *q);
/* True when x has enough deliveries (t->failure_min_messages, at least one) for its
 * failure rate to be judged; the rate (deferred + bounced) / all in *rate. */
bool report_failure_judged(const struct r_traffic *x, const struct report_thresholds *t,
                           double *rate);
/* Sum of the authentication failures by client. */
uint64_t report_auth_sum(const struct report *r);
/* Sum of the client rows: rejects, or connections. */
uint64_t report_clients_sum(const struct report *r, bool rejects);
/* An age in seconds as "45s", "12m", "5h" or "3d" (negative reads as 0). */
void report_fmt_age(char *buf, size_t len, int64_t s);
/* The limit-hit section (report_limits.c): free the rows; sort them and add the findings
 * (from report_evaluate); the text section, the JSON member (NULL when there are no
 * events: the member is left out), the Prometheus samples. */
void report_limits_free(struct report *r);
int report_limits_evaluate(struct report *r);
void report_limits_write_text(const struct report *r, FILE *out);
json_t *report_limits_json(const struct report *r);
void report_limits_write_prometheus(const struct report *r, FILE *out);
/* report_write.c's Prometheus helpers: HELP and TYPE lines, and one sample whose labels
 * are a NULL-terminated key/value list (values escaped). */
void report_prom_head(FILE *out, const char *name, const char *help);
void report_prom_sample(FILE *out, const char *name, const char *const *labels, double v);
/* one when n is 1, else many. */
const char *report_plural(uint64_t n, const char *one, const char *many);

/* report_classes.c: rejects by class and postscreen verdicts in the three formats. The
 * JSON goes into the traffic object o as "rejects_by_class" and "postscreen_verdicts". */
void report_classes_text(const struct report *r, FILE *out);
void report_classes_json(const struct report *r, json_t *o, bool *ok);
void report_classes_prometheus(const struct report *r, FILE *out);

/* report_domains.c: frees the domain reasons; adds the per-domain anomalies (see
 * report_apply_baseline). Returns the anomalies added or -ENOMEM. */
void report_domains_free(struct report *r);
int report_domain_baselines(struct report *r, struct baseline *b, bool quiet);

/* A new copy of s with control characters and invalid UTF-8 escaped (printable.h); NULL
 * on ENOMEM. */
char *report_dup_escaped(const char *s);

/* report_senders.c: the queue by sender (report_set_queue copies the top rows and the
 * null sender's counts), the backscatter finding (report_evaluate) and the writers. */
int report_senders_set(struct report *r, const struct queue_stats *qs, size_t top);
void report_senders_free(struct report *r);
int report_senders_evaluate(struct report *r);
void report_senders_text(const struct report *r, FILE *out);
json_t *report_senders_json(const struct report *r, bool *ok);
void report_senders_prometheus(const struct report *r, FILE *out);
