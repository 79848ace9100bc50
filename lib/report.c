/* report: holds copies of everything the report command gathered and derives findings
 * with one line of advice each; report_write.c writes the three formats. Kept as plain
 * arrays: a report has tens of rows, and the writers walk them in a fixed, deterministic
 * order. */
#include "report.h"
#include "report_impl.h"

#include "printable.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EVENTS_PER_NODE 50

/* ---- status ------------------------------------------------------------------------- */

static const char *const status_names[] = {"OK", "WARNING", "CRITICAL", "UNKNOWN"};

const char *report_status_str(enum report_status s)
{
    return (unsigned)s <= REPORT_UNKNOWN ? status_names[s] : "UNKNOWN";
}

int report_exit_code(enum report_status s)
{
    return (unsigned)s <= REPORT_UNKNOWN ? (int)s : 3;
}

static int status_rank(enum report_status s)
{
    switch (s) {
    case REPORT_OK:
        return 0;
    case REPORT_WARNING:
        return 1;
    case REPORT_UNKNOWN:
        return 2;
    case REPORT_CRITICAL:
        return 3;
    }
    return 2;
}

enum report_status report_status_worse(enum report_status a, enum report_status b)
{
    return status_rank(a) >= status_rank(b) ? a : b;
}

void report_thresholds_default(struct report_thresholds *t)
{
    memset(t, 0, sizeof(*t));
    t->hold_warning = 1;
    t->hold_critical = 0;
    t->deferred_warning = 100;
    t->deferred_critical = 1000;
    t->backlog_warning = 2000;
    t->backlog_critical = 10000;
    t->age_warning = 86400;
    t->age_critical = 4 * 86400;
    t->domain_deferred_warning = 20;
    t->failure_rate_warning = 0.2;
    t->failure_rate_critical = 0.5;
    t->failure_min_messages = 20;
    t->client_reject_warning = 50;
    t->lost_connection_warning = 100;
    t->auth_failure_warning = 30;
    t->saturation_warning = 80;
    t->saturation_critical = 95;
    t->imbalance_warning = 50;
    t->top_domains = 10;
    t->top_clients = 10;
    t->top_reasons = 3;
}

/* ---- building ----------------------------------------------------------------------- */

static int grow(void *arrp, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    void *na = realloc(*(void **)arrp, nc * elem);
    if (!na)
        return -ENOMEM;
    *(void **)arrp = na;
    *cap = nc;
    return 0;
}

/* strdup that maps NULL to NULL, reports failure through *ok, and escapes control
 * characters and invalid UTF-8 (printable.h): names come from logs and queue files, and a
 * newline in one must not forge a line in the text report or the exposition format, nor
 * invalid UTF-8 make the JSON writer fail. */
static char *dup_opt(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    size_t len = strlen(s);
    size_t need = printable_needed(s, len) ? printable_escape(NULL, 0, s, len, false) : len;
    char *d = malloc(need + 1);
    if (!d) {
        *ok = false;
        return NULL;
    }
    if (need == len)
        memcpy(d, s, len + 1);
    else
        printable_escape(d, need + 1, s, len, false);
    return d;
}

static char *dup_clean(const char *s)
{
    bool ok = true;
    return dup_opt(s, &ok);
}

char *report_dup_escaped(const char *s)
{
    return dup_clean(s);
}

struct report *report_new(int64_t now, const char *host)
{
    struct report *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->now = now;
    r->host = dup_clean(host && host[0] ? host : "localhost");
    if (!r->host) {
        free(r);
        return NULL;
    }
    report_thresholds_default(&r->t);
    return r;
}

static void node_clear(struct r_node *n)
{
    free(n->name);
    for (size_t i = 0; i < n->n_services; i++)
        free(n->services[i].name);
    free(n->services);
    for (size_t i = 0; i < n->n_events; i++) {
        free(n->events[i].kind);
        free(n->events[i].detail);
    }
    free(n->events);
}

static void domains_clear(struct report *r)
{
    for (size_t i = 0; i < r->n_domains; i++) {
        free(r->domains[i].name);
        free(r->domains[i].reasons);
    }
    free(r->domains);
    r->domains = NULL;
    r->n_domains = 0;
    free(r->dsns);
    r->dsns = NULL;
    r->n_dsns = 0;
}

void report_free(struct report *r)
{
    if (!r)
        return;
    free(r->host);
    report_limits_free(r);
    for (size_t i = 0; i < r->n_nodes; i++)
        node_clear(&r->nodes[i]);
    free(r->nodes);
    domains_clear(r);
    for (size_t i = 0; i < r->n_traffic; i++)
        free(r->traffic[i].domain);
    free(r->traffic);
    for (size_t i = 0; i < r->n_clients; i++) {
        free(r->clients[i].client);
        free(r->clients[i].address);
        free(r->clients[i].name);
    }
    free(r->clients);
    for (size_t i = 0; i < r->n_lost; i++) {
        free(r->lost[i].client);
        free(r->lost[i].service);
        free(r->lost[i].stages);
    }
    free(r->lost);
    for (size_t i = 0; i < r->n_anvil; i++) {
        free(r->anvil[i].statistic);
        free(r->anvil[i].key);
    }
    free(r->anvil);
    for (int k = 0; k < 2; k++) {
        struct r_auth *a = k ? r->auth_users : r->auth_clients;
        size_t n = k ? r->n_auth_users : r->n_auth_clients;
        for (size_t i = 0; i < n; i++) {
            free(a[i].key);
            free(a[i].address);
            free(a[i].name);
        }
        free(a);
    }
    for (size_t i = 0; i < r->n_warnings; i++) {
        free(r->warnings[i].kind);
        free(r->warnings[i].detail);
    }
    free(r->warnings);
    for (size_t i = 0; i < r->n_anomalies; i++) {
        free(r->anomalies[i].metric);
        free(r->anomalies[i].cause);
    }
    free(r->anomalies);
    report_domains_free(r);
    report_senders_free(r);
    for (size_t i = 0; i < r->n_findings; i++) {
        free(r->findings[i].code);
        free(r->findings[i].subject);
        free(r->findings[i].message);
        free(r->findings[i].advice);
    }
    free(r->findings);
    free(r);
}

int report_add_node(struct report *r, const struct report_node_info *in)
{
    if (!in || !in->name || !in->name[0])
        return -EINVAL;
    if (grow(&r->nodes, &r->cap_nodes, r->n_nodes, sizeof(*r->nodes)) < 0)
        return -ENOMEM;
    struct r_node n = {0};
    bool ok = true;
    n.name = dup_opt(in->name, &ok);
    n.daemon_up = in->daemon_up;
    n.master_up = in->master_up;
    n.qmgr_up = in->qmgr_up;
    n.stressed = in->stressed;
    n.saturation = in->saturation;
    n.stress_episodes = in->stress_episodes;
    n.overrides = in->overrides;
    if (in->n_services) {
        n.services = calloc(in->n_services, sizeof(*n.services));
        ok = ok && n.services;
        for (size_t i = 0; ok && i < in->n_services; i++) {
            const struct report_service *s = &in->services[i];
            n.services[i] = (struct r_service){dup_opt(s->name ? s->name : "?", &ok), s->busy,
                                               s->limit, s->waiting};
            n.n_services++;
        }
    }
    size_t skip = in->n_events > MAX_EVENTS_PER_NODE ? in->n_events - MAX_EVENTS_PER_NODE : 0;
    if (ok && in->n_events > skip) {
        n.events = calloc(in->n_events - skip, sizeof(*n.events));
        ok = n.events != NULL;
        for (size_t i = skip; ok && i < in->n_events; i++) {
            const struct report_event *e = &in->events[i];
            n.events[n.n_events++] = (struct r_event){
                e->time, dup_opt(e->kind ? e->kind : "?", &ok), dup_opt(e->detail, &ok)};
        }
    }
    if (!ok) {
        node_clear(&n);
        return -ENOMEM;
    }
    r->nodes[r->n_nodes++] = n;
    return 0;
}

int report_set_queue(struct report *r, const struct queue_stats *qs, size_t top_domains,
                     size_t top_reasons)
{
    if (!qs)
        return -EINVAL;
    if (!top_domains)
        top_domains = 10;
    if (!top_reasons)
        top_reasons = 3;
    domains_clear(r);
    for (int q = 0; q < QUEUE_COUNT; q++)
        r->totals[q] = *queue_stats_totals(qs, (enum queue_name)q);
    queue_stats_counts(qs, &r->records, &r->malformed, &r->overlong);
    for (int c = 0; c < QUEUE_REASON_COUNT; c++)
        r->class_count[c] = queue_stats_class_count(qs, (enum queue_reason_class)c);

    const struct queue_reason *dsns;
    size_t nd = queue_stats_dsns(qs, &dsns);
    if (nd) {
        r->dsns = malloc(nd * sizeof(*r->dsns));
        if (!r->dsns)
            return -ENOMEM;
        memcpy(r->dsns, dsns, nd * sizeof(*r->dsns));
        r->n_dsns = nd;
    }

    const struct queue_domain **doms;
    size_t n;
    if (queue_stats_domains(qs, &doms, &n) < 0)
        return -ENOMEM;
    if (n > top_domains)
        n = top_domains;
    int rc = 0;
    r->domains = calloc(n ? n : 1, sizeof(*r->domains));
    const struct queue_reason **top = malloc(top_reasons * sizeof(*top));
    if (!r->domains || !top) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const struct queue_domain *d = doms[i];
        struct r_domain *o = &r->domains[i];
        o->name = dup_clean(d->name);
        size_t k = queue_domain_top_reasons(d, top, top_reasons);
        o->reasons = malloc((k ? k : 1) * sizeof(*o->reasons));
        r->n_domains++;
        if (!o->name || !o->reasons) {
            rc = -ENOMEM;
            goto out;
        }
        o->recipients = d->recipients;
        o->messages = d->messages;
        o->reasons_total = d->reasons_total;
        memcpy(o->queue_recipients, d->queue_recipients, sizeof(o->queue_recipients));
        o->oldest_arrival = d->oldest_arrival;
        memcpy(o->age_buckets, d->age_buckets, sizeof(o->age_buckets));
        for (size_t j = 0; j < k; j++)
            o->reasons[j] = *top[j];
        o->n_reasons = k;
    }
    r->have_queue = true;
    if (rc == 0)
        rc = report_senders_set(r, qs, top_domains);
out:
    free(top);
    free(doms);
    if (rc < 0)
        domains_clear(r);
    return rc;
}

int report_add_traffic(struct report *r, const char *domain, uint64_t delivered, uint64_t deferred,
                       uint64_t bounced)
{
    if (!domain || !domain[0])
        return -EINVAL;
    for (size_t i = 0; i < r->n_traffic; i++) {
        if (strcmp(r->traffic[i].domain, domain) == 0) {
            r->traffic[i].delivered += delivered;
            r->traffic[i].deferred += deferred;
            r->traffic[i].bounced += bounced;
            return 0;
        }
    }
    if (grow(&r->traffic, &r->cap_traffic, r->n_traffic, sizeof(*r->traffic)) < 0)
        return -ENOMEM;
    char *d = dup_clean(domain);
    if (!d)
        return -ENOMEM;
    r->traffic[r->n_traffic++] = (struct r_traffic){d, delivered, deferred, bounced};
    return 0;
}

/* Replaces *s (owned, may be NULL) by its escaped copy (dup_opt). false on ENOMEM, *s
 * left as it was. */
static bool escape_owned(char **s)
{
    bool ok = true;
    if (!*s)
        return true;
    char *e = dup_opt(*s, &ok);
    if (!e)
        return false;
    free(*s);
    *s = e;
    return true;
}

/* Splits "NAME[ADDR]", "[ADDR]" or "ADDR" into fresh strings; name is NULL when absent or
 * "unknown". Returns false on ENOMEM. */
static bool split_client(const char *client, char **addr, char **name)
{
    *addr = *name = NULL;
    size_t n = strlen(client);
    /* The last '[': the address is the trailing bracket, and a name from a forged line may
     * hold one (an ESC [ sequence). */
    const char *lb = strrchr(client, '[');
    if (n >= 3 && client[n - 1] == ']' && lb && lb < client + n - 2) {
        bool want_name = lb > client && !(lb - client == 7 && memcmp(client, "unknown", 7) == 0);
        *addr = strndup(lb + 1, (size_t)(client + n - 1 - (lb + 1)));
        if (want_name)
            *name = strndup(client, (size_t)(lb - client));
        if (!*addr || (want_name && !*name)) {
            free(*addr);
            free(*name);
            return false;
        }
    } else {
        *addr = strdup(client);
        if (!*addr)
            return false;
    }
    /* Escaped as every name from the log is (dup_opt), after the split: an escape adds no
     * bracket. */
    if (!escape_owned(addr) || !escape_owned(name)) {
        free(*addr);
        free(*name);
        *addr = *name = NULL;
        return false;
    }
    return true;
}

/* "NAME[ADDR]" or "ADDR". NULL on ENOMEM. */
static char *client_display(const char *addr, const char *name)
{
    size_t n = strlen(addr) + (name ? strlen(name) + 2 : 0) + 1;
    char *d = malloc(n);
    if (d && name)
        snprintf(d, n, "%s[%s]", name, addr);
    else if (d)
        snprintf(d, n, "%s", addr);
    return d;
}

int report_add_client(struct report *r, const char *client, uint64_t connections, uint64_t rejects)
{
    if (!client || !client[0])
        return -EINVAL;
    char *addr, *name;
    if (!split_client(client, &addr, &name))
        return -ENOMEM;
    for (size_t i = 0; i < r->n_clients; i++) {
        struct r_client *c = &r->clients[i];
        if (strcmp(c->address, addr) != 0)
            continue;
        c->connections += connections;
        c->rejects += rejects;
        if (!c->name && name) {
            char *disp = client_display(addr, name);
            if (disp) {
                free(c->client);
                c->client = disp;
                c->name = name;
                name = NULL;
            }
        }
        free(addr);
        free(name);
        return 0;
    }
    char *disp = client_display(addr, name);
    if (!disp || grow(&r->clients, &r->cap_clients, r->n_clients, sizeof(*r->clients)) < 0) {
        free(disp);
        free(addr);
        free(name);
        return -ENOMEM;
    }
    r->clients[r->n_clients++] = (struct r_client){disp, addr, name, connections, rejects};
    return 0;
}

int report_add_log_totals(struct report *r, const struct report_log_totals *t)
{
    r->have_log = true;
    r->log.probes_deliverable += t->probes_deliverable;
    r->log.probes_undeliverable += t->probes_undeliverable;
    r->log.expired += t->expired;
    r->log.force_expired += t->force_expired;
    r->log.internal_connections += t->internal_connections;
    r->log.lost_connections += t->lost_connections;
    r->log.auth_failures += t->auth_failures;
    return 0;
}

int report_add_lost(struct report *r, const char *client, const char *service, const char *stages,
                    uint64_t count)
{
    if (!client || !client[0] || !service || !service[0])
        return -EINVAL;
    for (size_t i = 0; i < r->n_lost; i++) {
        if (strcmp(r->lost[i].client, client) == 0 && strcmp(r->lost[i].service, service) == 0) {
            r->lost[i].count += count;
            return 0;
        }
    }
    if (grow(&r->lost, &r->cap_lost, r->n_lost, sizeof(*r->lost)) < 0)
        return -ENOMEM;
    bool ok = true;
    struct r_lost l = {dup_opt(client, &ok), dup_opt(service, &ok), dup_opt(stages, &ok), count};
    if (!ok) {
        free(l.client);
        free(l.service);
        free(l.stages);
        return -ENOMEM;
    }
    r->lost[r->n_lost++] = l;
    return 0;
}

int report_add_anvil(struct report *r, const char *statistic, uint64_t value, uint64_t interval_s,
                     const char *key)
{
    if (!statistic || !statistic[0])
        return -EINVAL;
    struct r_anvil *a = NULL;
    for (size_t i = 0; i < r->n_anvil && !a; i++) {
        if (strcmp(r->anvil[i].statistic, statistic) == 0)
            a = &r->anvil[i];
    }
    if (a && a->value >= value)
        return 0;
    bool ok = true;
    char *st = a ? NULL : dup_opt(statistic, &ok);
    char *k = dup_opt(key, &ok);
    if (!ok || (!a && grow(&r->anvil, &r->cap_anvil, r->n_anvil, sizeof(*r->anvil)) < 0)) {
        free(st);
        free(k);
        return -ENOMEM;
    }
    if (!a) {
        a = &r->anvil[r->n_anvil++];
        a->statistic = st;
    } else {
        free(a->key);
    }
    a->key = k;
    a->value = value;
    a->interval_s = interval_s;
    return 0;
}

int report_add_auth_failures(struct report *r, bool by_username, const char *key, uint64_t count)
{
    if (!key || !key[0])
        return -EINVAL;
    struct r_auth **arr = by_username ? &r->auth_users : &r->auth_clients;
    size_t *n = by_username ? &r->n_auth_users : &r->n_auth_clients;
    size_t *cap = by_username ? &r->cap_auth_users : &r->cap_auth_clients;
    char *addr = NULL, *name = NULL;
    if (by_username)
        addr = dup_clean(key);
    else if (!split_client(key, &addr, &name))
        addr = NULL;
    if (!addr)
        return -ENOMEM;
    for (size_t i = 0; i < *n; i++) {
        struct r_auth *a = &(*arr)[i];
        if (strcmp(a->address, addr) != 0)
            continue;
        a->failures += count;
        if (!a->name && name) {
            char *disp = client_display(addr, name);
            if (disp) {
                free(a->key);
                a->key = disp;
                a->name = name;
                name = NULL;
            }
        }
        free(addr);
        free(name);
        return 0;
    }
    char *disp = by_username ? strdup(addr) : client_display(addr, name);
    if (!disp || grow(arr, cap, *n, sizeof(**arr)) < 0) {
        free(disp);
        free(addr);
        free(name);
        return -ENOMEM;
    }
    (*arr)[(*n)++] = (struct r_auth){disp, addr, name, count};
    return 0;
}

static bool str_eq_opt(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int report_add_warning(struct report *r, const char *kind, const char *detail, uint64_t count)
{
    if (!kind || !kind[0])
        return -EINVAL;
    for (size_t i = 0; i < r->n_warnings; i++) {
        if (strcmp(r->warnings[i].kind, kind) == 0 && str_eq_opt(r->warnings[i].detail, detail)) {
            r->warnings[i].count += count;
            return 0;
        }
    }
    if (grow(&r->warnings, &r->cap_warnings, r->n_warnings, sizeof(*r->warnings)) < 0)
        return -ENOMEM;
    bool ok = true;
    struct r_warning w = {dup_opt(kind, &ok), dup_opt(detail, &ok), count};
    if (!ok) {
        free(w.kind);
        free(w.detail);
        return -ENOMEM;
    }
    r->warnings[r->n_warnings++] = w;
    return 0;
}

int report_add_anomaly(struct report *r, const char *metric, double value, double mean, double sd,
                       uint64_t samples, const char *cause)
{
    if (!metric || !metric[0])
        return -EINVAL;
    if (grow(&r->anomalies, &r->cap_anomalies, r->n_anomalies, sizeof(*r->anomalies)) < 0)
        return -ENOMEM;
    bool ok = true;
    struct r_anomaly a = {dup_opt(metric, &ok), dup_opt(cause, &ok), value, mean, sd, samples};
    if (!ok) {
        free(a.metric);
        free(a.cause);
        return -ENOMEM;
    }
    r->anomalies[r->n_anomalies++] = a;
    return 0;
}

int report_add_finding(struct report *r, enum report_status severity, const char *code,
                       const char *subject, const char *message, const char *advice)
{
    if (!code || !code[0] || !message)
        return -EINVAL;
    if (grow(&r->findings, &r->cap_findings, r->n_findings, sizeof(*r->findings)) < 0)
        return -ENOMEM;
    bool ok = true;
    struct r_finding f = {severity, dup_opt(code, &ok), dup_opt(subject, &ok),
                          dup_opt(message, &ok), dup_opt(advice, &ok)};
    if (!ok) {
        free(f.code);
        free(f.subject);
        free(f.message);
        free(f.advice);
        return -ENOMEM;
    }
    r->findings[r->n_findings++] = f;
    r->status = report_status_worse(r->status, severity);
    return 0;
}

/* printf into a fresh string, for finding texts. NULL on ENOMEM. */
__attribute__((format(printf, 1, 2))) static char *fmt(const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(NULL, 0, f, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    va_start(ap, f);
    vsnprintf(s, (size_t)n + 1, f, ap);
    va_end(ap);
    return s;
}

/* Adds a finding whose message and advice are fresh strings (taken, freed here). */
static int finding_take(struct report *r, enum report_status sev, const char *code,
                        const char *subject, char *message, char *advice)
{
    int rc = message ? report_add_finding(r, sev, code, subject, message, advice) : -ENOMEM;
    free(message);
    free(advice);
    return rc;
}

/* ---- baseline ----------------------------------------------------------------------- */

struct figure {
    const char *metric;
    double value;
    const char *cause_up;   /* likely cause when the figure is high */
    const char *cause_down; /* ... when it is low */
};

uint64_t report_traffic_sum(const struct report *r, int what)
{
    uint64_t s = 0;
    for (size_t i = 0; i < r->n_traffic; i++)
        s += what == 0   ? r->traffic[i].delivered
             : what == 1 ? r->traffic[i].deferred
                         : r->traffic[i].bounced;
    return s;
}

uint64_t report_clients_sum(const struct report *r, bool rejects)
{
    uint64_t s = 0;
    for (size_t i = 0; i < r->n_clients; i++)
        s += rejects ? r->clients[i].rejects : r->clients[i].connections;
    return s;
}

static uint64_t warnings_sum(const struct report *r, const char *kind)
{
    uint64_t s = 0;
    for (size_t i = 0; i < r->n_warnings; i++) {
        if (strcmp(r->warnings[i].kind, kind) == 0)
            s += r->warnings[i].count;
    }
    return s;
}

int report_apply_baseline(struct report *r, struct baseline *b, bool quiet)
{
    struct figure figs[16];
    size_t nf = 0;
    if (r->have_queue) {
        figs[nf++] =
            (struct figure){"queue.incoming.messages", (double)r->totals[QUEUE_INCOMING].messages,
                            "mail arrives faster than cleanup/qmgr take it in", NULL};
        figs[nf++] =
            (struct figure){"queue.active.messages", (double)r->totals[QUEUE_ACTIVE].messages,
                            "deliveries are slow: see the domains table", NULL};
        figs[nf++] =
            (struct figure){"queue.deferred.messages", (double)r->totals[QUEUE_DEFERRED].messages,
                            "a destination defers our mail: see the domains table", NULL};
        figs[nf++] = (struct figure){"queue.hold.messages", (double)r->totals[QUEUE_HOLD].messages,
                                     "a HOLD rule or an operator put mail on hold", NULL};
    }
    if (r->n_traffic) {
        figs[nf++] = (struct figure){"traffic.delivered", (double)report_traffic_sum(r, 0),
                                     "a mail burst (campaign, forwarding loop, compromised "
                                     "account)",
                                     "less mail than usual: inbound trouble or an idle sender"};
        figs[nf++] = (struct figure){"traffic.deferred", (double)report_traffic_sum(r, 1),
                                     "destinations defer more than usual", NULL};
        figs[nf++] = (struct figure){"traffic.bounced", (double)report_traffic_sum(r, 2),
                                     "more bounces: bad recipient lists or a blocklisting", NULL};
    }
    if (r->n_clients) {
        figs[nf++] = (struct figure){"smtpd.connections", (double)report_clients_sum(r, false),
                                     "more SMTP clients than usual (botnet or campaign)",
                                     "fewer SMTP clients than usual: check MX/DNS and port 25"};
        figs[nf++] = (struct figure){"smtpd.rejects", (double)report_clients_sum(r, true),
                                     "more rejects: a dictionary attack or a misconfigured "
                                     "sender",
                                     NULL};
    }
    figs[nf++] = (struct figure){"warnings.process_limit", (double)warnings_sum(r, "process_limit"),
                                 "smtpd ran out of processes: load or slow clients", NULL};

    /* The host's own saturation; other nodes keep their baselines in their own reports. */
    for (size_t i = 0; i < r->n_nodes; i++) {
        if (strcmp(r->nodes[i].name, r->host) == 0 && r->nodes[i].saturation >= 0)
            figs[nf++] = (struct figure){"node.saturation", (double)r->nodes[i].saturation,
                                         "smtpd is busier than usual", NULL};
    }

    int added = 0;
    for (size_t i = 0; i < nf; i++) {
        char *key = fmt("%s/%s", r->host, figs[i].metric);
        if (!key)
            return -ENOMEM;
        struct baseline_verdict v;
        baseline_test(b, key, r->now, figs[i].value, &v);
        const char *cause = v.direction > 0 ? figs[i].cause_up : figs[i].cause_down;
        /* A figure falling to zero deviations without a "down" cause (e.g. fewer deferred)
         * is good news, not an anomaly. */
        if (v.anomaly && !quiet && cause) {
            int rc = report_add_anomaly(r, figs[i].metric, figs[i].value, v.mean, v.sd, v.n, cause);
            if (rc < 0) {
                free(key);
                return rc;
            }
            added++;
        }
        int rc = baseline_add(b, key, r->now, figs[i].value);
        free(key);
        if (rc == -ENOMEM)
            return rc;
    }
    int dom = report_domain_baselines(r, b, quiet);
    return dom < 0 ? dom : added + dom;
}

/* ---- findings ----------------------------------------------------------------------- */

void report_fmt_age(char *buf, size_t len, int64_t s)
{
    if (s < 0)
        s = 0;
    if (s < 120)
        snprintf(buf, len, "%" PRId64 "s", s);
    else if (s < 7200)
        snprintf(buf, len, "%" PRId64 "m", s / 60);
    else if (s < 2 * 86400)
        snprintf(buf, len, "%" PRId64 "h", s / 3600);
    else
        snprintf(buf, len, "%" PRId64 "d", s / 86400);
}

const char *report_plural(uint64_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

/* One line of advice for a domain whose mail is deferred, by its main reason. */
static char *domain_advice(const char *dom, enum queue_reason_class cls)
{
    switch (cls) {
    case QUEUE_REASON_THROTTLE:
        return fmt("%s throttles us (421/4.2.x, greylisting): slow down with a dedicated "
                   "transport (transport_maps \"%s slow:\", slow_destination_concurrency_limit "
                   "= 2, slow_destination_rate_delay = 1s)",
                   dom, dom);
    case QUEUE_REASON_CONN_REFUSED:
        return fmt("the MX hosts of %s refuse connections: check `dig MX %s` and that they "
                   "listen on port 25; Postfix retries by itself",
                   dom, dom);
    case QUEUE_REASON_CONN_TIMEOUT:
        return fmt("connections to %s time out: check outbound port 25 filtering and the MX "
                   "hosts (`dig MX %s`)",
                   dom, dom);
    case QUEUE_REASON_DNS:
        return fmt("DNS lookups for %s fail: check `dig MX %s` and the local resolver", dom, dom);
    case QUEUE_REASON_TLS:
        return fmt("TLS with %s fails: test `posttls-finger %s` and review "
                   "smtp_tls_security_level and smtp_tls_policy_maps",
                   dom, dom);
    case QUEUE_REASON_MAILBOX:
        return fmt("mailboxes at %s are full or unknown: clean the sender's recipient list", dom);
    case QUEUE_REASON_POLICY:
        return fmt("%s rejects us by policy: check our IP on blocklists and SPF/DKIM/DMARC, "
                   "then ask for delisting",
                   dom);
    default:
        return fmt("inspect a message with `postcat -q QUEUE_ID` and grep the maillog for %s", dom);
    }
}

static const struct queue_reason *main_reason(const struct r_domain *d)
{
    return d->n_reasons ? &d->reasons[0] : NULL;
}

bool report_oldest_age(const struct report *r, int64_t *age, enum queue_name *q)
{
    int64_t oldest = 0;
    *q = QUEUE_DEFERRED;
    for (int i = QUEUE_INCOMING; i <= QUEUE_DEFERRED; i++) {
        int64_t a = r->totals[i].oldest_arrival;
        if (a && (!oldest || a < oldest)) {
            oldest = a;
            *q = (enum queue_name)i;
        }
    }
    *age = oldest ? r->now - oldest : 0;
    return oldest != 0;
}

bool report_failure_judged(const struct r_traffic *x, const struct report_thresholds *t,
                           double *rate)
{
    uint64_t all = x->delivered + x->deferred + x->bounced;
    if (!all || all < t->failure_min_messages)
        return false;
    *rate = (double)(x->deferred + x->bounced) / (double)all;
    return true;
}

static int eval_nodes(struct report *r, const struct report_thresholds *t)
{
    int rc = 0;
    int sat_min = 101, sat_max = -1;
    const char *n_min = NULL, *n_max = NULL;
    size_t n_sat = 0;
    for (size_t i = 0; i < r->n_nodes && rc == 0; i++) {
        const struct r_node *n = &r->nodes[i];
        if (n->master_up == 0)
            rc = finding_take(r, REPORT_CRITICAL, "master_down", n->name,
                              fmt("Postfix master is not running on %s", n->name),
                              fmt("start Postfix (`postfix start`) and look for fatal errors "
                                  "in the maillog"));
        else if (n->qmgr_up == 0)
            rc = finding_take(
                r, REPORT_CRITICAL, "qmgr_down", n->name,
                fmt("qmgr is not running on %s: queued mail is not delivered", n->name),
                fmt("look for qmgr fatal errors in the maillog, then `postfix "
                    "reload` to restart it"));
        if (rc == 0 && n->daemon_up == 0)
            rc = finding_take(r, REPORT_WARNING, "daemon_down", n->name,
                              fmt("the postsurge daemon is not running on %s", n->name),
                              fmt("start it (`systemctl start postsurge`); meanwhile smtpd "
                                  "uses the policy service's default_action"));
        /* The fullest service names the limit to raise. */
        const struct r_service *full = NULL;
        for (size_t k = 0; k < n->n_services; k++) {
            const struct r_service *s = &n->services[k];
            if (s->limit > 0 && s->busy >= s->limit && (!full || s->waiting > full->waiting))
                full = s;
        }
        if (rc == 0 && n->saturation >= 0) {
            n_sat++;
            if (n->saturation < sat_min) {
                sat_min = n->saturation;
                n_min = n->name;
            }
            if (n->saturation > sat_max) {
                sat_max = n->saturation;
                n_max = n->name;
            }
            enum report_status sev =
                t->saturation_critical && n->saturation >= t->saturation_critical ? REPORT_CRITICAL
                : t->saturation_warning && n->saturation >= t->saturation_warning ? REPORT_WARNING
                                                                                  : REPORT_OK;
            if (sev != REPORT_OK)
                rc = finding_take(
                    r, sev, "saturation", n->name,
                    fmt("%s is at %d%% of its smtpd processes", n->name, n->saturation),
                    full ? fmt("raise the process limit of %s in master.cf (now %" PRId64
                               ", %" PRId64 " clients waiting) or put postscreen in front",
                               full->name, full->limit, full->waiting < 0 ? 0 : full->waiting)
                         : fmt("raise the smtpd process limit in master.cf or reduce the time "
                               "per client (STRESS_README)"));
        }
        if (rc == 0 && n->stressed == 1)
            rc = finding_take(r, REPORT_WARNING, "stressed", n->name,
                              fmt("%s is in stress mode (%u %s since the last report)", n->name,
                                  n->stress_episodes,
                                  report_plural(n->stress_episodes, "episode", "episodes")),
                              fmt("find the load's source in the clients and warnings below; "
                                  "`postsurge stress exit` ends it by hand"));
    }
    if (rc == 0 && n_sat >= 2 && t->imbalance_warning && sat_max - sat_min >= t->imbalance_warning)
        rc = finding_take(
            r, REPORT_WARNING, "imbalance", n_max,
            fmt("load imbalance: %s at %d%%, %s at %d%%", n_max, sat_max, n_min, sat_min),
            fmt("check MX weights (equal preference for equal nodes) and the "
                "load balancer"));
    return rc;
}

static int eval_queue(struct report *r, const struct report_thresholds *t)
{
    if (!r->have_queue)
        return finding_take(r, REPORT_UNKNOWN, "queue_unavailable", NULL,
                            fmt("the queue could not be read"),
                            fmt("run `postqueue -j` by hand as root and check its errors"));
    int rc = 0;
    uint64_t hold = r->totals[QUEUE_HOLD].messages;
    enum report_status sev = t->hold_critical && hold >= t->hold_critical ? REPORT_CRITICAL
                             : t->hold_warning && hold >= t->hold_warning ? REPORT_WARNING
                                                                          : REPORT_OK;
    if (sev != REPORT_OK)
        rc = finding_take(
            r, sev, "hold", "hold",
            fmt("%" PRIu64 " %s on hold", hold, report_plural(hold, "message", "messages")),
            fmt("review with `postcat -q QUEUE_ID` (IDs from `postqueue -j`); "
                "release with `postsuper -H QUEUE_ID`, delete with `postsuper "
                "-d QUEUE_ID`"));

    uint64_t def = r->totals[QUEUE_DEFERRED].messages;
    sev = t->deferred_critical && def >= t->deferred_critical ? REPORT_CRITICAL
          : t->deferred_warning && def >= t->deferred_warning ? REPORT_WARNING
                                                              : REPORT_OK;
    /* The domain with the most deferred recipients explains the deferred queue. */
    const struct r_domain *worst = NULL;
    for (size_t i = 0; i < r->n_domains; i++) {
        const struct r_domain *d = &r->domains[i];
        if (d->queue_recipients[QUEUE_DEFERRED] &&
            (!worst ||
             d->queue_recipients[QUEUE_DEFERRED] > worst->queue_recipients[QUEUE_DEFERRED]))
            worst = d;
    }
    if (rc == 0 && sev != REPORT_OK) {
        const struct queue_reason *mr = worst ? main_reason(worst) : NULL;
        rc = finding_take(r, sev, "deferred", "deferred",
                          worst && mr
                              ? fmt("%" PRIu64 " messages deferred, most for %s (%s %s)", def,
                                    worst->name, queue_reason_class_str(mr->cls), mr->dsn)
                              : fmt("%" PRIu64 " messages deferred", def),
                          worst ? domain_advice(worst->name, mr ? mr->cls : QUEUE_REASON_OTHER)
                                : fmt("see `qshape deferred` and the maillog"));
    }

    uint64_t backlog = r->totals[QUEUE_INCOMING].messages + r->totals[QUEUE_ACTIVE].messages;
    sev = t->backlog_critical && backlog >= t->backlog_critical ? REPORT_CRITICAL
          : t->backlog_warning && backlog >= t->backlog_warning ? REPORT_WARNING
                                                                : REPORT_OK;
    if (rc == 0 && sev != REPORT_OK)
        rc = finding_take(r, sev, "backlog", "active",
                          fmt("%" PRIu64 " messages in the incoming and active queues", backlog),
                          fmt("deliveries lag behind arrivals: check `qshape active` for the "
                              "destination and qmgr warnings in the maillog"));

    enum queue_name oq;
    int64_t age;
    bool oldest = report_oldest_age(r, &age, &oq);
    sev = t->age_critical && oldest && age >= t->age_critical ? REPORT_CRITICAL
          : t->age_warning && oldest && age >= t->age_warning ? REPORT_WARNING
                                                              : REPORT_OK;
    if (rc == 0 && sev != REPORT_OK) {
        char a[32];
        report_fmt_age(a, sizeof(a), age);
        rc =
            finding_take(r, sev, "queue_age", queue_name_str(oq),
                         fmt("the oldest message in the %s queue is %s old", queue_name_str(oq), a),
                         fmt("it bounces at maximal_queue_lifetime: fix its domain's problem "
                             "below, then `postqueue -i QUEUE_ID` retries it at once"));
    }

    for (size_t i = 0; rc == 0 && i < r->n_domains; i++) {
        const struct r_domain *d = &r->domains[i];
        uint64_t n = d->queue_recipients[QUEUE_DEFERRED];
        const struct queue_reason *mr = main_reason(d);
        if (!t->domain_deferred_warning || n < t->domain_deferred_warning || !mr)
            continue;
        const char *code = mr->cls == QUEUE_REASON_THROTTLE ? "domain_throttle" : "domain_deferred";
        rc = finding_take(r, REPORT_WARNING, code, d->name,
                          fmt("%s: %" PRIu64 " recipients deferred, mostly %s %s", d->name, n,
                              queue_reason_class_str(mr->cls), mr->dsn),
                          domain_advice(d->name, mr->cls));
    }
    return rc;
}

static int eval_traffic(struct report *r, const struct report_thresholds *t)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->n_traffic; i++) {
        const struct r_traffic *x = &r->traffic[i];
        uint64_t all = x->delivered + x->deferred + x->bounced;
        double rate;
        if (!report_failure_judged(x, t, &rate))
            continue;
        enum report_status sev =
            t->failure_rate_critical > 0 && rate >= t->failure_rate_critical ? REPORT_CRITICAL
            : t->failure_rate_warning > 0 && rate >= t->failure_rate_warning ? REPORT_WARNING
                                                                             : REPORT_OK;
        if (sev == REPORT_OK)
            continue;
        /* The queue's reasons for that domain, when it has queued mail, say why. */
        enum queue_reason_class cls = QUEUE_REASON_OTHER;
        for (size_t k = 0; k < r->n_domains; k++) {
            if (strcmp(r->domains[k].name, x->domain) == 0 && main_reason(&r->domains[k]))
                cls = main_reason(&r->domains[k])->cls;
        }
        rc = finding_take(r, sev, "failure_rate", x->domain,
                          fmt("%s: %.0f%% of %" PRIu64 " deliveries failed (%" PRIu64
                              " deferred, %" PRIu64 " bounced)",
                              x->domain, rate * 100.0, all, x->deferred, x->bounced),
                          domain_advice(x->domain, cls));
    }
    for (size_t i = 0; rc == 0 && i < r->n_clients; i++) {
        const struct r_client *c = &r->clients[i];
        if (!t->client_reject_warning || c->rejects < t->client_reject_warning)
            continue;
        rc = finding_take(r, REPORT_WARNING, "client_rejects", c->client,
                          fmt("client %s: %" PRIu64 " rejects in %" PRIu64 " connections",
                              c->client, c->rejects, c->connections),
                          fmt("likely a dictionary attack: block it (postscreen_access_list) "
                              "or rate-limit it with a postsurge limit"));
    }
    for (size_t i = 0; rc == 0 && i < r->n_lost; i++) {
        const struct r_lost *l = &r->lost[i];
        if (!t->lost_connection_warning || l->count < t->lost_connection_warning)
            continue;
        rc = finding_take(r, REPORT_WARNING, "lost_connections", l->client,
                          fmt("client %s lost %" PRIu64 " connections on %s%s%s%s", l->client,
                              l->count, l->service, l->stages ? " (after " : "",
                              l->stages ? l->stages : "", l->stages ? ")" : ""),
                          fmt("a scanner or a broken client holds smtpd processes: block it "
                              "(postscreen_access_list, or smtpd_client_restrictions on %s) "
                              "or lower smtpd_client_connection_rate_limit",
                              l->service));
    }
    for (size_t i = 0; rc == 0 && i < r->n_auth_clients; i++) {
        const struct r_auth *a = &r->auth_clients[i];
        if (!t->auth_failure_warning || a->failures < t->auth_failure_warning)
            continue;
        rc = finding_take(
            r, REPORT_WARNING, "auth_failures", a->key,
            fmt("client %s: %" PRIu64 " SASL authentication failures", a->key, a->failures),
            fmt("likely password guessing: block the address "
                "(postscreen_access_list, a firewall), lower "
                "smtpd_client_auth_rate_limit, and check the passwords of the "
                "usernames it tried"));
    }
    for (size_t i = 0; rc == 0 && i < r->n_warnings; i++) {
        const struct r_warning *w = &r->warnings[i];
        if (strcmp(w->kind, "process_limit") != 0 || !w->count)
            continue;
        const char *svc = w->detail ? w->detail : "smtpd";
        rc = finding_take(r, REPORT_WARNING, "process_limit", svc,
                          fmt("service %s reached its process limit (%" PRIu64 " %s)", svc,
                              w->count, report_plural(w->count, "warning", "warnings")),
                          fmt("raise the process limit of %s in master.cf or reduce the "
                              "service time per client (STRESS_README)",
                              svc));
    }
    for (size_t i = 0; rc == 0 && i < r->n_anomalies; i++) {
        const struct r_anomaly *a = &r->anomalies[i];
        rc = finding_take(
            r, REPORT_WARNING, "anomaly", a->metric,
            fmt("%s is %.6g, usually %.6g +/- %.3g", a->metric, a->value, a->mean, a->sd),
            fmt("likely cause: %s", a->cause ? a->cause : "unknown"));
    }
    return rc;
}

static int traffic_cmp(const void *a, const void *b)
{
    const struct r_traffic *x = a, *y = b;
    uint64_t tx = x->delivered + x->deferred + x->bounced;
    uint64_t ty = y->delivered + y->deferred + y->bounced;
    if (tx != ty)
        return tx > ty ? -1 : 1;
    return strcmp(x->domain, y->domain);
}

static int client_cmp(const void *a, const void *b)
{
    const struct r_client *x = a, *y = b;
    if (x->rejects != y->rejects)
        return x->rejects > y->rejects ? -1 : 1;
    if (x->connections != y->connections)
        return x->connections > y->connections ? -1 : 1;
    return strcmp(x->client, y->client);
}

static int lost_cmp(const void *a, const void *b)
{
    const struct r_lost *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    int c = strcmp(x->client, y->client);
    return c ? c : strcmp(x->service, y->service);
}

static int auth_cmp(const void *a, const void *b)
{
    const struct r_auth *x = a, *y = b;
    if (x->failures != y->failures)
        return x->failures > y->failures ? -1 : 1;
    return strcmp(x->address, y->address);
}

static int anvil_cmp(const void *a, const void *b)
{
    return strcmp(((const struct r_anvil *)a)->statistic, ((const struct r_anvil *)b)->statistic);
}

uint64_t report_auth_sum(const struct report *r)
{
    if (r->have_log)
        return r->log.auth_failures;
    uint64_t s = 0;
    for (size_t i = 0; i < r->n_auth_clients; i++)
        s += r->auth_clients[i].failures;
    return s;
}

int report_evaluate(struct report *r, const struct report_thresholds *t)
{
    if (t)
        r->t = *t;
    t = &r->t;
    /* Writers show the busiest rows first and cut at top_domains / top_clients. */
    if (r->n_traffic > 1)
        qsort(r->traffic, r->n_traffic, sizeof(*r->traffic), traffic_cmp);
    if (r->n_clients > 1)
        qsort(r->clients, r->n_clients, sizeof(*r->clients), client_cmp);
    if (r->n_lost > 1)
        qsort(r->lost, r->n_lost, sizeof(*r->lost), lost_cmp);
    if (r->n_anvil > 1)
        qsort(r->anvil, r->n_anvil, sizeof(*r->anvil), anvil_cmp);
    if (r->n_auth_clients > 1)
        qsort(r->auth_clients, r->n_auth_clients, sizeof(*r->auth_clients), auth_cmp);
    if (r->n_auth_users > 1)
        qsort(r->auth_users, r->n_auth_users, sizeof(*r->auth_users), auth_cmp);
    int rc = eval_nodes(r, t);
    if (rc == 0)
        rc = eval_queue(r, t);
    if (rc == 0)
        rc = eval_traffic(r, t);
    if (rc == 0)
        rc = report_senders_evaluate(r);
    if (rc == 0)
        rc = report_limits_evaluate(r);
    /* Worst first; a stable pass per severity keeps the order of equal findings. */
    if (r->n_findings > 1) {
        size_t n = r->n_findings;
        struct r_finding *tmp = malloc(n * sizeof(*tmp));
        if (!tmp)
            return -ENOMEM;
        size_t k = 0;
        static const enum report_status order[] = {REPORT_CRITICAL, REPORT_UNKNOWN, REPORT_WARNING,
                                                   REPORT_OK};
        for (int o = 0; o < 4; o++) {
            for (size_t i = 0; i < n; i++) {
                if (r->findings[i].severity == order[o])
                    tmp[k++] = r->findings[i];
            }
        }
        memcpy(r->findings, tmp, n * sizeof(*tmp));
        free(tmp);
    }
    r->evaluated = true;
    return rc;
}

enum report_status report_status(const struct report *r)
{
    return r->status;
}

size_t report_finding_count(const struct report *r)
{
    return r->n_findings;
}
