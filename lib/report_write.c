/* report_write: the report's three formats, text (Nagios plugin style), JSON and the
 * Prometheus exposition format. Each walks the rows report.c holds, in their fixed order,
 * so the same report always writes the same bytes. */
#include "report.h"
#include "report_impl.h"

#include "printable.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- text --------------------------------------------------------------------------- */

static double failure_rate(uint64_t delivered, uint64_t deferred, uint64_t bounced)
{
    uint64_t all = delivered + deferred + bounced;
    return all ? (double)(deferred + bounced) / (double)all : 0.0;
}

/* The summary after "STATUS - ". */
static void write_summary(const struct report *r, FILE *out)
{
    if (r->n_findings == 0) {
        fprintf(out, "%s: %zu %s", r->host, r->n_nodes, report_plural(r->n_nodes, "node", "nodes"));
        if (r->have_queue)
            fprintf(out, ", queues active %" PRIu64 " deferred %" PRIu64 " hold %" PRIu64,
                    r->totals[QUEUE_ACTIVE].messages, r->totals[QUEUE_DEFERRED].messages,
                    r->totals[QUEUE_HOLD].messages);
        if (r->n_traffic) {
            uint64_t d = report_traffic_sum(r, 0), f = report_traffic_sum(r, 1),
                     b = report_traffic_sum(r, 2);
            fprintf(out, ", %" PRIu64 " delivered, %.1f%% failed", d,
                    failure_rate(d, f, b) * 100.0);
        }
        return;
    }
    size_t shown = r->n_findings < 3 ? r->n_findings : 3;
    for (size_t i = 0; i < shown; i++)
        fprintf(out, "%s%s", i ? "; " : "", r->findings[i].message);
    if (r->n_findings > shown)
        fprintf(out, "; %zu more", r->n_findings - shown);
}

/* ---- performance data ----------------------------------------------------------------
 * Monitoring Plugins guidelines: 'label'=value[UOM];warn;crit;min;max, thresholds in their
 * range syntax. A plain range "N" alerts when the value is outside 0..N (both ends
 * included), "@A:" when it is A or more. postsurge alerts when a figure reaches its
 * threshold (>=), so a count threshold W is written "W-1" (an integer count is >= W exactly
 * when it is > W-1) and a ratio threshold R as "@R:". A threshold that is off is left
 * empty: "0" would mean "alert above 0". */

/* The shortest "%.*g" of v that strtod() reads back as v itself. */
static void fmt_real(char *buf, size_t len, double v)
{
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* A value for a ratio judged against w and c (<= 0: off): at least three significant
 * digits, more when fewer would move it across a threshold, so the value as written
 * compares with the thresholds as written exactly as v compares with them. */
static void fmt_ratio_value(char *buf, size_t len, double v, double w, double c)
{
    for (int p = 3; p <= 17; p++) {
        snprintf(buf, len, "%.*g", p, v);
        double back = strtod(buf, NULL);
        if ((w <= 0 || (back >= w) == (v >= w)) && (c <= 0 || (back >= c) == (v >= c)))
            return;
    }
}

/* Writes " " and the label, quoted when it holds a space, '=' or a quote (a quote is
 * doubled). '|' and control bytes, which would end the perfdata or the line for a
 * checker, become '_'. */
static void write_label(FILE *out, const char *label)
{
    bool quote = strpbrk(label, " ='") != NULL;
    fputs(quote ? " '" : " ", out);
    for (const unsigned char *p = (const unsigned char *)label; *p; p++) {
        if (*p == '\'')
            fputs("''", out);
        else
            fputc(*p < 0x20 || *p == 0x7f || *p == '|' ? '_' : *p, out);
    }
    fputs(quote ? "'=" : "=", out);
}

/* The range text alerting when an integer figure is >= w (0: off, empty). */
static void fmt_count_range(char *buf, size_t len, int64_t w)
{
    if (w > 0)
        snprintf(buf, len, "%" PRId64, w - 1);
    else
        buf[0] = '\0';
}

/* The range text alerting when a ratio is >= w (<= 0: off, empty). */
static void fmt_ratio_range(char *buf, size_t len, double w)
{
    if (w > 0) {
        buf[0] = '@';
        fmt_real(buf + 1, len - 2, w);
        strcat(buf, ":");
    } else {
        buf[0] = '\0';
    }
}

/* One count: label=value;warn;crit;0; */
static void write_count(FILE *out, const char *label, uint64_t v, uint64_t w, uint64_t c,
                        const char *uom, const char *max)
{
    char ws[32], cs[32];
    fmt_count_range(ws, sizeof(ws), w > INT64_MAX ? INT64_MAX : (int64_t)w);
    fmt_count_range(cs, sizeof(cs), c > INT64_MAX ? INT64_MAX : (int64_t)c);
    write_label(out, label);
    fprintf(out, "%" PRIu64 "%s;%s;%s;0;%s", v, uom, ws, cs, max);
}

/* One ratio: label=value;@warn:;@crit:;0;max (w, c <= 0: off). */
static void write_ratio(FILE *out, const char *label, double v, double w, double c, const char *max)
{
    char vs[40], ws[40], cs[40];
    fmt_ratio_value(vs, sizeof(vs), v, w, c);
    fmt_ratio_range(ws, sizeof(ws), w);
    fmt_ratio_range(cs, sizeof(cs), c);
    write_label(out, label);
    fprintf(out, "%s;%s;%s;0;%s", vs, ws, cs, max);
}

/* The performance data after " |": the queues, the backlog and the oldest message's age
 * (with the queue), the highest judged failure rate (with traffic), the stressed nodes,
 * each node's saturation and the imbalance between nodes (with nodes), each carrying the
 * thresholds report_evaluate() applies to it. Saturation has no max: clients waiting
 * for a process take it above 1. */
static void write_perfdata(const struct report *r, FILE *out)
{
    const struct report_thresholds *t = &r->t;
    if (!r->have_queue && !r->n_traffic && !r->n_nodes)
        return;
    fputs(" |", out);
    if (r->have_queue) {
        const struct queue_totals *q = r->totals;
        write_count(out, "incoming", q[QUEUE_INCOMING].messages, 0, 0, "", "");
        write_count(out, "active", q[QUEUE_ACTIVE].messages, 0, 0, "", "");
        write_count(out, "deferred", q[QUEUE_DEFERRED].messages, t->deferred_warning,
                    t->deferred_critical, "", "");
        write_count(out, "hold", q[QUEUE_HOLD].messages, t->hold_warning, t->hold_critical, "", "");
        write_count(out, "backlog", q[QUEUE_INCOMING].messages + q[QUEUE_ACTIVE].messages,
                    t->backlog_warning, t->backlog_critical, "", "");
        /* No message reads as age 0; an arrival ahead of the clock too (a negative value
         * is outside every range and would alert). */
        int64_t age;
        enum queue_name oq;
        if (!report_oldest_age(r, &age, &oq) || age < 0)
            age = 0;
        write_count(out, "oldest_age", (uint64_t)age,
                    t->age_warning > 0 ? (uint64_t)t->age_warning : 0,
                    t->age_critical > 0 ? (uint64_t)t->age_critical : 0, "s", "");
    }
    if (r->n_traffic) {
        double worst = 0.0, rate;
        for (size_t i = 0; i < r->n_traffic; i++) {
            if (report_failure_judged(&r->traffic[i], t, &rate) && rate > worst)
                worst = rate;
        }
        write_ratio(out, "failure_rate", worst, t->failure_rate_warning, t->failure_rate_critical,
                    "1");
    }
    if (!r->n_nodes)
        return;
    uint64_t stressed = 0;
    int sat_min = -1, sat_max = -1;
    size_t n_sat = 0;
    for (size_t i = 0; i < r->n_nodes; i++) {
        const struct r_node *n = &r->nodes[i];
        stressed += n->stressed == 1;
        if (n->saturation < 0)
            continue;
        n_sat++;
        if (sat_min < 0 || n->saturation < sat_min)
            sat_min = n->saturation;
        if (n->saturation > sat_max)
            sat_max = n->saturation;
    }
    char max[24];
    snprintf(max, sizeof(max), "%zu", r->n_nodes);
    write_count(out, "stressed", stressed, 1, 0, "", max);
    for (size_t i = 0; i < r->n_nodes; i++) {
        const struct r_node *n = &r->nodes[i];
        if (n->saturation < 0)
            continue;
        char label[300];
        snprintf(label, sizeof(label), "saturation %s", n->name);
        write_ratio(out, label, n->saturation / 100.0, t->saturation_warning / 100.0,
                    t->saturation_critical / 100.0, "");
    }
    if (n_sat >= 2)
        write_ratio(out, "imbalance", (sat_max - sat_min) / 100.0, t->imbalance_warning / 100.0, 0,
                    "");
}

/* How many of n rows to show under a cap (0: all). */
static size_t rows(size_t n, size_t cap)
{
    return cap && cap < n ? cap : n;
}

/* A count, or "?" when unknown (negative). */
static void fmt_count(char *buf, size_t len, int64_t v)
{
    if (v < 0)
        snprintf(buf, len, "?");
    else
        snprintf(buf, len, "%" PRId64, v);
}

static const char *tri(int v, const char *yes, const char *no)
{
    return v > 0 ? yes : v == 0 ? no : "?";
}

static int write_text(const struct report *r, FILE *out)
{
    char a[32];
    fprintf(out, "%s - ", report_status_str(r->status));
    /* A checker reads the perfdata from the first '|' on: one in a domain or client name
     * of the summary becomes '/'. */
    char *sum = NULL;
    size_t sum_len = 0;
    FILE *mem = open_memstream(&sum, &sum_len);
    if (!mem)
        return -ENOMEM;
    write_summary(r, mem);
    if (fclose(mem) != 0 || !sum) {
        free(sum);
        return -ENOMEM;
    }
    for (char *p = strchr(sum, '|'); p; p = strchr(p + 1, '|'))
        *p = '/';
    fputs(sum, out);
    free(sum);
    write_perfdata(r, out);
    fputc('\n', out);
    if (r->n_findings == 0)
        return ferror(out) ? -EIO : 0;

    fputs("\nFindings:\n", out);
    for (size_t i = 0; i < r->n_findings; i++) {
        const struct r_finding *f = &r->findings[i];
        fprintf(out, "  %-8s %s\n", report_status_str(f->severity), f->message);
        if (f->advice)
            fprintf(out, "           -> %s\n", f->advice);
    }
    if (r->n_nodes) {
        fputs("\nNodes:\n  NODE                 DAEMON MASTER QMGR STRESS   SAT EPISODES "
              "OVERRIDES\n",
              out);
        for (size_t i = 0; i < r->n_nodes; i++) {
            const struct r_node *n = &r->nodes[i];
            char sat[16];
            if (n->saturation >= 0)
                snprintf(sat, sizeof(sat), "%d%%", n->saturation);
            else
                strcpy(sat, "?");
            fprintf(out, "  %-20s %-6s %-6s %-4s %-6s %5s %8u %9u\n", n->name,
                    tri(n->daemon_up, "up", "down"), tri(n->master_up, "up", "down"),
                    tri(n->qmgr_up, "up", "down"), tri(n->stressed, "yes", "no"), sat,
                    n->stress_episodes, n->overrides);
            for (size_t k = 0; k < n->n_services; k++) {
                const struct r_service *s = &n->services[k];
                char busy[24], limit[24], waiting[24];
                fmt_count(busy, sizeof(busy), s->busy);
                fmt_count(limit, sizeof(limit), s->limit);
                fmt_count(waiting, sizeof(waiting), s->waiting);
                fprintf(out, "    service %s: %s/%s busy, %s waiting\n", s->name, busy, limit,
                        waiting);
            }
            for (size_t k = 0; k < n->n_events; k++) {
                report_fmt_age(a, sizeof(a), r->now - n->events[k].time);
                fprintf(out, "    event %s ago: %s%s%s\n", a, n->events[k].kind,
                        n->events[k].detail ? " " : "",
                        n->events[k].detail ? n->events[k].detail : "");
            }
        }
    }
    if (r->have_queue) {
        fputs("\nQueues:\n  QUEUE      MESSAGES RECIPIENTS        BYTES  OLDEST\n", out);
        for (int q = 0; q < QUEUE_COUNT; q++) {
            const struct queue_totals *t = &r->totals[q];
            if (t->oldest_arrival)
                report_fmt_age(a, sizeof(a), r->now - t->oldest_arrival);
            else
                strcpy(a, "-");
            fprintf(out, "  %-10s %8" PRIu64 " %10" PRIu64 " %12" PRIu64 "  %s\n",
                    queue_name_str((enum queue_name)q), t->messages, t->recipients, t->bytes, a);
        }
        if (r->malformed || r->overlong)
            fprintf(out, "  (%" PRIu64 " malformed and %" PRIu64 " over-long lines skipped)\n",
                    r->malformed, r->overlong);
    }
    if (r->n_domains) {
        fputs("\nDomains (by recipients):\n  DOMAIN                     RCPTS ACTIVE DEFERRED "
              "  HOLD OLDEST  REASONS\n",
              out);
        for (size_t i = 0; i < r->n_domains; i++) {
            const struct r_domain *d = &r->domains[i];
            report_fmt_age(a, sizeof(a), r->now - d->oldest_arrival);
            fprintf(out, "  %-26s %5" PRIu64 " %6" PRIu64 " %8" PRIu64 " %6" PRIu64 " %-7s",
                    d->name, d->recipients, d->queue_recipients[QUEUE_ACTIVE],
                    d->queue_recipients[QUEUE_DEFERRED], d->queue_recipients[QUEUE_HOLD], a);
            for (size_t k = 0; k < d->n_reasons; k++)
                fprintf(out, "%s%s %s x%" PRIu64, k ? ", " : " ",
                        queue_reason_class_str(d->reasons[k].cls),
                        d->reasons[k].dsn[0] ? d->reasons[k].dsn : "-", d->reasons[k].count);
            fputc('\n', out);
        }
    }
    if (r->n_traffic) {
        fputs("\nTraffic (since the last report):\n  DOMAIN                     DELIVERED "
              "DEFERRED BOUNCED FAILED\n",
              out);
        for (size_t i = 0; i < rows(r->n_traffic, r->t.top_domains); i++) {
            const struct r_traffic *x = &r->traffic[i];
            fprintf(out, "  %-26s %9" PRIu64 " %8" PRIu64 " %7" PRIu64 " %5.1f%%\n", x->domain,
                    x->delivered, x->deferred, x->bounced,
                    failure_rate(x->delivered, x->deferred, x->bounced) * 100.0);
        }
    }
    if (r->n_clients) {
        fputs("\nClients:\n  CLIENT                                   CONNECTIONS REJECTS\n", out);
        for (size_t i = 0; i < rows(r->n_clients, r->t.top_clients); i++)
            fprintf(out, "  %-40s %11" PRIu64 " %7" PRIu64 "\n", r->clients[i].client,
                    r->clients[i].connections, r->clients[i].rejects);
    }
    if (r->have_log && (r->log.probes_deliverable || r->log.probes_undeliverable ||
                        r->log.expired || r->log.force_expired || r->log.internal_connections))
        fprintf(out,
                "\nNot counted as traffic: %" PRIu64 " address verification probes (%" PRIu64
                " deliverable, %" PRIu64 " undeliverable), %" PRIu64 " messages expired (%" PRIu64
                " forced), %" PRIu64 " internal (loopback) connections\n",
                r->log.probes_deliverable + r->log.probes_undeliverable, r->log.probes_deliverable,
                r->log.probes_undeliverable, r->log.expired + r->log.force_expired,
                r->log.force_expired, r->log.internal_connections);
    if (r->n_lost) {
        fputs("\nLost connections:\n  CLIENT                                   SERVICE      "
              "   LOST  AFTER\n",
              out);
        for (size_t i = 0; i < rows(r->n_lost, r->t.top_clients); i++)
            fprintf(out, "  %-40s %-12s %6" PRIu64 "  %s\n", r->lost[i].client, r->lost[i].service,
                    r->lost[i].count, r->lost[i].stages ? r->lost[i].stages : "-");
    }
    if (r->n_auth_clients || r->n_auth_users) {
        fprintf(out, "\nAuthentication failures (SASL): %" PRIu64 "\n", report_auth_sum(r));
        if (r->n_auth_clients)
            fputs("  CLIENT                                   FAILURES\n", out);
        for (size_t i = 0; i < rows(r->n_auth_clients, r->t.top_clients); i++)
            fprintf(out, "  %-40s %8" PRIu64 "\n", r->auth_clients[i].key,
                    r->auth_clients[i].failures);
        if (r->n_auth_users)
            fputs("  USERNAME                                 FAILURES\n", out);
        for (size_t i = 0; i < rows(r->n_auth_users, r->t.top_clients); i++)
            fprintf(out, "  %-40s %8" PRIu64 "\n", r->auth_users[i].key, r->auth_users[i].failures);
    }
    report_classes_text(r, out);
    report_senders_text(r, out);
    report_limits_write_text(r, out);
    if (r->n_anvil) {
        fputs("\nAnvil statistics (peaks):\n", out);
        for (size_t i = 0; i < r->n_anvil; i++) {
            const struct r_anvil *x = &r->anvil[i];
            fprintf(out, "  %s: %" PRIu64, x->statistic, x->value);
            if (x->interval_s)
                fprintf(out, "/%" PRIu64 "s", x->interval_s);
            fprintf(out, "%s%s\n", x->key ? " for " : "", x->key ? x->key : "");
        }
    }
    if (r->n_warnings) {
        fputs("\nPostfix warnings:\n", out);
        for (size_t i = 0; i < r->n_warnings; i++)
            fprintf(out, "  %s%s%s: %" PRIu64 "\n", r->warnings[i].kind,
                    r->warnings[i].detail ? " " : "",
                    r->warnings[i].detail ? r->warnings[i].detail : "", r->warnings[i].count);
    }
    if (r->n_anomalies) {
        fputs("\nAnomalies:\n", out);
        for (size_t i = 0; i < r->n_anomalies; i++) {
            const struct r_anomaly *x = &r->anomalies[i];
            fprintf(out, "  %s = %.6g (baseline %.6g +/- %.3g over %" PRIu64 " samples)\n",
                    x->metric, x->value, x->mean, x->sd, x->samples);
        }
    }
    return ferror(out) ? -EIO : 0;
}

int report_write_text(const struct report *r, FILE *out)
{
    char *buf = NULL, *safe = NULL;
    size_t len = 0;
    int rc = 0;

    /* Client names, domains and Postfix's warning details come from the mail log and the
     * queue, where a client chose them: the whole text is escaped (printable.h), its line
     * ends kept. Formatting first and escaping after keeps every writer above plain. */
    FILE *mem = open_memstream(&buf, &len);
    if (!mem)
        return -ENOMEM;
    rc = write_text(r, mem);
    if (fclose(mem) != 0 || !buf) {
        rc = -ENOMEM;
        goto out;
    }
    if (rc < 0)
        goto out;
    const char *text = buf;
    size_t n = len;
    if (printable_needed(buf, len)) {
        size_t need = printable_escape(NULL, 0, buf, len, true);
        if (!(safe = malloc(need + 1))) {
            rc = -ENOMEM;
            goto out;
        }
        n = printable_escape(safe, need + 1, buf, len, true);
        text = safe;
    }
    if (fwrite(text, 1, n, out) != n || ferror(out))
        rc = -EIO;
out:
    free(safe);
    free(buf);
    return rc;
}

/* ---- JSON --------------------------------------------------------------------------- */

/* Adds key = v to obj, consuming v; records a failure in *ok (v NULL means ENOMEM). */
static void put(json_t *obj, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(obj, key, v) < 0)
        *ok = false;
}

static void push(json_t *arr, json_t *v, bool *ok)
{
    if (!v || json_array_append_new(arr, v) < 0)
        *ok = false;
}

static json_t *jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *jtri(int v)
{
    return v < 0 ? json_null() : json_boolean(v);
}

static json_t *jstr_opt(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *json_queues(const struct report *r, bool *ok)
{
    json_t *qs = json_object();
    for (int q = 0; qs && q < QUEUE_COUNT; q++) {
        const struct queue_totals *t = &r->totals[q];
        json_t *o = json_object();
        put(qs, queue_name_str((enum queue_name)q), o, ok);
        if (!o)
            break;
        put(o, "messages", jint(t->messages), ok);
        put(o, "recipients", jint(t->recipients), ok);
        put(o, "bytes", jint(t->bytes), ok);
        put(o, "oldest_age",
            t->oldest_arrival ? json_integer(r->now - t->oldest_arrival) : json_null(), ok);
    }
    return qs;
}

static json_t *json_reason(const struct queue_reason *x, bool *ok)
{
    json_t *o = json_object();
    if (o) {
        put(o, "class", json_string(queue_reason_class_str(x->cls)), ok);
        put(o, "dsn", json_string(x->dsn), ok);
        put(o, "count", jint(x->count), ok);
        put(o, "sample", json_string(x->sample), ok);
    }
    return o;
}

static json_t *json_domains(const struct report *r, bool *ok)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < r->n_domains; i++) {
        const struct r_domain *d = &r->domains[i];
        json_t *o = json_object(), *qs = json_object(), *ab = json_array(), *rs = json_array();
        push(arr, o, ok);
        if (!o) {
            json_decref(qs);
            json_decref(ab);
            json_decref(rs);
            break;
        }
        put(o, "domain", json_string(d->name), ok);
        put(o, "recipients", jint(d->recipients), ok);
        put(o, "messages", jint(d->messages), ok);
        put(o, "queues", qs, ok);
        for (int q = 0; qs && q < QUEUE_COUNT; q++)
            put(qs, queue_name_str((enum queue_name)q), jint(d->queue_recipients[q]), ok);
        put(o, "oldest_age", json_integer(r->now - d->oldest_arrival), ok);
        put(o, "age_buckets", ab, ok);
        for (int k = 0; ab && k < QUEUE_AGE_BUCKETS; k++)
            push(ab, jint(d->age_buckets[k]), ok);
        put(o, "reasons", rs, ok);
        for (size_t k = 0; rs && k < d->n_reasons; k++)
            push(rs, json_reason(&d->reasons[k], ok), ok);
    }
    return arr;
}

static json_t *json_nodes(const struct report *r, bool *ok)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < r->n_nodes; i++) {
        const struct r_node *n = &r->nodes[i];
        json_t *o = json_object(), *sv = json_array(), *ev = json_array();
        push(arr, o, ok);
        if (!o) {
            json_decref(sv);
            json_decref(ev);
            break;
        }
        put(o, "name", json_string(n->name), ok);
        put(o, "daemon_up", jtri(n->daemon_up), ok);
        put(o, "master_up", jtri(n->master_up), ok);
        put(o, "qmgr_up", jtri(n->qmgr_up), ok);
        put(o, "stressed", jtri(n->stressed), ok);
        put(o, "saturation", n->saturation >= 0 ? json_integer(n->saturation) : json_null(), ok);
        put(o, "stress_episodes", jint(n->stress_episodes), ok);
        put(o, "overrides", jint(n->overrides), ok);
        put(o, "services", sv, ok);
        for (size_t k = 0; sv && k < n->n_services; k++) {
            const struct r_service *s = &n->services[k];
            json_t *so = json_object();
            push(sv, so, ok);
            if (!so)
                break;
            put(so, "name", json_string(s->name), ok);
            put(so, "busy", s->busy >= 0 ? json_integer(s->busy) : json_null(), ok);
            put(so, "limit", s->limit >= 0 ? json_integer(s->limit) : json_null(), ok);
            put(so, "waiting", s->waiting >= 0 ? json_integer(s->waiting) : json_null(), ok);
        }
        put(o, "events", ev, ok);
        for (size_t k = 0; ev && k < n->n_events; k++) {
            json_t *eo = json_object();
            push(ev, eo, ok);
            if (!eo)
                break;
            put(eo, "time", json_integer(n->events[k].time), ok);
            put(eo, "kind", json_string(n->events[k].kind), ok);
            put(eo, "detail", jstr_opt(n->events[k].detail), ok);
        }
    }
    return arr;
}

static json_t *json_traffic(const struct report *r, bool *ok)
{
    json_t *o = json_object(), *tot = json_object(), *doms = json_array(), *cls = json_array(),
           *ws = json_array();
    if (!o || !tot || !doms || !cls || !ws) {
        json_decref(o);
        json_decref(tot);
        json_decref(doms);
        json_decref(cls);
        json_decref(ws);
        *ok = false;
        return NULL;
    }
    uint64_t d = report_traffic_sum(r, 0), f = report_traffic_sum(r, 1),
             b = report_traffic_sum(r, 2);
    put(o, "totals", tot, ok);
    put(tot, "delivered", jint(d), ok);
    put(tot, "deferred", jint(f), ok);
    put(tot, "bounced", jint(b), ok);
    put(tot, "failure_rate", json_real(failure_rate(d, f, b)), ok);
    put(tot, "connections", jint(report_clients_sum(r, false)), ok);
    put(tot, "rejects", jint(report_clients_sum(r, true)), ok);
    put(tot, "probes_deliverable", jint(r->log.probes_deliverable), ok);
    put(tot, "probes_undeliverable", jint(r->log.probes_undeliverable), ok);
    put(tot, "expired", jint(r->log.expired), ok);
    put(tot, "force_expired", jint(r->log.force_expired), ok);
    put(tot, "internal_connections", jint(r->log.internal_connections), ok);
    uint64_t lost = r->log.lost_connections;
    for (size_t i = 0; !r->have_log && i < r->n_lost; i++)
        lost += r->lost[i].count;
    put(tot, "lost_connections", jint(lost), ok);
    put(o, "domains", doms, ok);
    for (size_t i = 0; i < rows(r->n_traffic, r->t.top_domains); i++) {
        const struct r_traffic *x = &r->traffic[i];
        json_t *e = json_object();
        push(doms, e, ok);
        if (!e)
            break;
        put(e, "domain", json_string(x->domain), ok);
        put(e, "delivered", jint(x->delivered), ok);
        put(e, "deferred", jint(x->deferred), ok);
        put(e, "bounced", jint(x->bounced), ok);
        put(e, "failure_rate", json_real(failure_rate(x->delivered, x->deferred, x->bounced)), ok);
    }
    put(o, "clients", cls, ok);
    for (size_t i = 0; i < rows(r->n_clients, r->t.top_clients); i++) {
        json_t *e = json_object();
        push(cls, e, ok);
        if (!e)
            break;
        put(e, "client", json_string(r->clients[i].client), ok);
        put(e, "address", json_string(r->clients[i].address), ok);
        put(e, "name", jstr_opt(r->clients[i].name), ok);
        put(e, "connections", jint(r->clients[i].connections), ok);
        put(e, "rejects", jint(r->clients[i].rejects), ok);
    }
    json_t *ls = json_array(), *av = json_array();
    put(o, "lost_connections", ls, ok);
    for (size_t i = 0; ls && i < rows(r->n_lost, r->t.top_clients); i++) {
        json_t *e = json_object();
        push(ls, e, ok);
        if (!e)
            break;
        put(e, "client", json_string(r->lost[i].client), ok);
        put(e, "service", json_string(r->lost[i].service), ok);
        put(e, "count", jint(r->lost[i].count), ok);
        put(e, "stages", jstr_opt(r->lost[i].stages), ok);
    }
    put(o, "anvil", av, ok);
    for (size_t i = 0; av && i < r->n_anvil; i++) {
        json_t *e = json_object();
        push(av, e, ok);
        if (!e)
            break;
        put(e, "statistic", json_string(r->anvil[i].statistic), ok);
        put(e, "value", jint(r->anvil[i].value), ok);
        put(e, "interval_s", r->anvil[i].interval_s ? jint(r->anvil[i].interval_s) : json_null(),
            ok);
        put(e, "key", jstr_opt(r->anvil[i].key), ok);
    }
    put(o, "warnings", ws, ok);
    for (size_t i = 0; i < r->n_warnings; i++) {
        json_t *e = json_object();
        push(ws, e, ok);
        if (!e)
            break;
        put(e, "kind", json_string(r->warnings[i].kind), ok);
        put(e, "detail", jstr_opt(r->warnings[i].detail), ok);
        put(e, "count", jint(r->warnings[i].count), ok);
    }
    report_classes_json(r, o, ok);
    return o;
}

static json_t *json_auth(const struct report *r, bool *ok)
{
    json_t *o = json_object(), *bc = json_array(), *bu = json_array();
    if (!o || !bc || !bu) {
        json_decref(o);
        json_decref(bc);
        json_decref(bu);
        *ok = false;
        return NULL;
    }
    put(o, "failures", jint(report_auth_sum(r)), ok);
    put(o, "by_client", bc, ok);
    for (size_t i = 0; i < rows(r->n_auth_clients, r->t.top_clients); i++) {
        const struct r_auth *a = &r->auth_clients[i];
        json_t *e = json_object();
        push(bc, e, ok);
        if (!e)
            break;
        put(e, "client", json_string(a->key), ok);
        put(e, "address", json_string(a->address), ok);
        put(e, "name", jstr_opt(a->name), ok);
        put(e, "failures", jint(a->failures), ok);
    }
    put(o, "by_username", bu, ok);
    for (size_t i = 0; i < rows(r->n_auth_users, r->t.top_clients); i++) {
        json_t *e = json_object();
        push(bu, e, ok);
        if (!e)
            break;
        put(e, "username", json_string(r->auth_users[i].key), ok);
        put(e, "failures", jint(r->auth_users[i].failures), ok);
    }
    return o;
}

int report_to_json(const struct report *r, json_t **out)
{
    bool ok = true;
    json_t *root = json_object();
    if (!root)
        return -ENOMEM;
    char *summary = NULL;
    size_t slen = 0;
    FILE *mem = open_memstream(&summary, &slen);
    if (mem) {
        write_summary(r, mem);
        fclose(mem);
    }
    put(root, "schema_version", json_integer(4), &ok);
    put(root, "generated_at", json_integer(r->now), &ok);
    put(root, "host", json_string(r->host), &ok);
    put(root, "status", json_string(report_status_str(r->status)), &ok);
    put(root, "exit_code", json_integer(report_exit_code(r->status)), &ok);
    put(root, "summary", summary ? json_string(summary) : NULL, &ok);
    free(summary);

    if (r->have_queue) {
        put(root, "queues", json_queues(r, &ok), &ok);
        json_t *qp = json_object();
        put(root, "queue_parse", qp, &ok);
        if (qp) {
            put(qp, "records", jint(r->records), &ok);
            put(qp, "malformed", jint(r->malformed), &ok);
            put(qp, "overlong", jint(r->overlong), &ok);
        }
        json_t *dr = json_object(), *bc = json_object(), *bd = json_array();
        put(root, "deferral_reasons", dr, &ok);
        if (dr) {
            put(dr, "by_class", bc, &ok);
            put(dr, "by_dsn", bd, &ok);
        } else {
            json_decref(bc);
            json_decref(bd);
        }
        for (int c = 0; bc && c < QUEUE_REASON_COUNT; c++)
            put(bc, queue_reason_class_str((enum queue_reason_class)c), jint(r->class_count[c]),
                &ok);
        for (size_t i = 0; bd && i < r->n_dsns; i++)
            push(bd, json_reason(&r->dsns[i], &ok), &ok);
    } else {
        put(root, "queues", json_null(), &ok);
        put(root, "queue_parse", json_null(), &ok);
        put(root, "deferral_reasons", json_null(), &ok);
    }
    put(root, "domains", json_domains(r, &ok), &ok);
    put(root, "nodes", json_nodes(r, &ok), &ok);
    put(root, "traffic", json_traffic(r, &ok), &ok);
    put(root, "authentication", json_auth(r, &ok), &ok);
    put(root, "senders", report_senders_json(r, &ok), &ok);
    if (r->limit_hit_events)
        put(root, "limit_hits", report_limits_json(r), &ok);

    json_t *an = json_array();
    put(root, "anomalies", an, &ok);
    for (size_t i = 0; an && i < r->n_anomalies; i++) {
        const struct r_anomaly *x = &r->anomalies[i];
        json_t *e = json_object();
        push(an, e, &ok);
        if (!e)
            break;
        put(e, "metric", json_string(x->metric), &ok);
        put(e, "value", json_real(x->value), &ok);
        put(e, "mean", json_real(x->mean), &ok);
        put(e, "sd", json_real(x->sd), &ok);
        put(e, "samples", jint(x->samples), &ok);
        put(e, "cause", jstr_opt(x->cause), &ok);
    }
    json_t *fs = json_array();
    put(root, "findings", fs, &ok);
    for (size_t i = 0; fs && i < r->n_findings; i++) {
        const struct r_finding *f = &r->findings[i];
        json_t *e = json_object();
        push(fs, e, &ok);
        if (!e)
            break;
        put(e, "severity", json_string(report_status_str(f->severity)), &ok);
        put(e, "code", json_string(f->code), &ok);
        put(e, "subject", jstr_opt(f->subject), &ok);
        put(e, "message", json_string(f->message), &ok);
        put(e, "advice", jstr_opt(f->advice), &ok);
    }
    if (!ok || !mem) {
        json_decref(root);
        return -ENOMEM;
    }
    *out = root;
    return 0;
}

int report_write_json(const struct report *r, FILE *out)
{
    json_t *j;
    int rc = report_to_json(r, &j);
    if (rc < 0)
        return rc;
    rc = json_dumpf(j, out, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) < 0 ? -EIO : 0;
    json_decref(j);
    if (rc == 0 && (fputc('\n', out) == EOF || ferror(out)))
        rc = -EIO;
    return rc;
}

/* ---- Prometheus --------------------------------------------------------------------- */

/* Writes a label value with \\, \" and \n escaped, as the text format requires. */
static void prom_label_value(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", out);
        else if (*s == '"')
            fputs("\\\"", out);
        else if (*s == '\n')
            fputs("\\n", out);
        else
            fputc(*s, out);
    }
    fputc('"', out);
}

static void prom_head(FILE *out, const char *name, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
}

/* One sample: name{k1="v1",k2="v2"} value; labels is a NULL-terminated key/value list. */
static void prom_sample(FILE *out, const char *name, const char *const *labels, double v)
{
    fputs(name, out);
    if (labels && labels[0]) {
        fputc('{', out);
        for (size_t i = 0; labels[i]; i += 2) {
            fprintf(out, "%s%s=", i ? "," : "", labels[i]);
            prom_label_value(out, labels[i + 1]);
        }
        fputc('}', out);
    }
    /* Integers print exactly; ratios with enough digits. */
    if (v == floor(v) && fabs(v) < 1e15)
        fprintf(out, " %.0f\n", v);
    else
        fprintf(out, " %.6g\n", v);
}

int report_write_prometheus(const struct report *r, FILE *out)
{
    prom_head(out, "postsurge_report_status",
              "Report status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.");
    prom_sample(out, "postsurge_report_status", NULL, (double)r->status);
    prom_head(out, "postsurge_report_generated_timestamp_seconds",
              "Unix time the report was made.");
    prom_sample(out, "postsurge_report_generated_timestamp_seconds", NULL, (double)r->now);
    prom_head(out, "postsurge_report_findings", "Findings of the report by severity.");
    for (int s = 0; s <= REPORT_UNKNOWN; s++) {
        uint64_t n = 0;
        for (size_t i = 0; i < r->n_findings; i++)
            n += r->findings[i].severity == (enum report_status)s;
        const char *l[] = {"severity", report_status_str((enum report_status)s), NULL};
        prom_sample(out, "postsurge_report_findings", l, (double)n);
    }

    if (r->have_queue) {
        static const struct {
            const char *name, *help;
            int field;
        } qm[] = {
            {"postsurge_report_queue_messages", "Messages in the Postfix queue.", 0},
            {"postsurge_report_queue_recipients", "Recipients in the Postfix queue.", 1},
            {"postsurge_report_queue_size_bytes", "Message bytes in the Postfix queue.", 2},
        };
        for (size_t m = 0; m < 3; m++) {
            prom_head(out, qm[m].name, qm[m].help);
            for (int q = 0; q < QUEUE_COUNT; q++) {
                const struct queue_totals *t = &r->totals[q];
                uint64_t v = qm[m].field == 0   ? t->messages
                             : qm[m].field == 1 ? t->recipients
                                                : t->bytes;
                const char *l[] = {"queue", queue_name_str((enum queue_name)q), NULL};
                prom_sample(out, qm[m].name, l, (double)v);
            }
        }
        prom_head(out, "postsurge_report_queue_oldest_age_seconds",
                  "Age of the oldest message per non-empty queue.");
        for (int q = 0; q < QUEUE_COUNT; q++) {
            if (!r->totals[q].oldest_arrival)
                continue;
            const char *l[] = {"queue", queue_name_str((enum queue_name)q), NULL};
            prom_sample(out, "postsurge_report_queue_oldest_age_seconds", l,
                        (double)(r->now - r->totals[q].oldest_arrival));
        }
        prom_head(out, "postsurge_report_queue_malformed_lines",
                  "postqueue -j lines skipped as malformed or over-long.");
        prom_sample(out, "postsurge_report_queue_malformed_lines", NULL,
                    (double)(r->malformed + r->overlong));
        prom_head(out, "postsurge_report_deferred_recipients",
                  "Queued recipients with a delay reason, by reason class.");
        for (int c = 0; c < QUEUE_REASON_COUNT; c++) {
            const char *l[] = {"class", queue_reason_class_str((enum queue_reason_class)c), NULL};
            prom_sample(out, "postsurge_report_deferred_recipients", l, (double)r->class_count[c]);
        }
    }
    if (r->n_domains) {
        prom_head(out, "postsurge_report_domain_recipients",
                  "Queued recipients of the top recipient domains, by queue.");
        for (size_t i = 0; i < r->n_domains; i++) {
            for (int q = 0; q < QUEUE_COUNT; q++) {
                const char *l[] = {"domain", r->domains[i].name, "queue",
                                   queue_name_str((enum queue_name)q), NULL};
                prom_sample(out, "postsurge_report_domain_recipients", l,
                            (double)r->domains[i].queue_recipients[q]);
            }
        }
        prom_head(out, "postsurge_report_domain_oldest_age_seconds",
                  "Age of the oldest queued message of the domain.");
        for (size_t i = 0; i < r->n_domains; i++) {
            const char *l[] = {"domain", r->domains[i].name, NULL};
            prom_sample(out, "postsurge_report_domain_oldest_age_seconds", l,
                        (double)(r->now - r->domains[i].oldest_arrival));
        }
        prom_head(out, "postsurge_report_domain_reason_recipients",
                  "Queued recipients of the domain by top deferral reason (class and DSN).");
        for (size_t i = 0; i < r->n_domains; i++) {
            for (size_t k = 0; k < r->domains[i].n_reasons; k++) {
                const struct queue_reason *x = &r->domains[i].reasons[k];
                const char *l[] = {"domain", r->domains[i].name,
                                   "class",  queue_reason_class_str(x->cls),
                                   "dsn",    x->dsn,
                                   NULL};
                prom_sample(out, "postsurge_report_domain_reason_recipients", l, (double)x->count);
            }
        }
    }
    if (r->n_nodes) {
        prom_head(out, "postsurge_report_node_up",
                  "1 if the component runs on the node (daemon, master, qmgr); absent if "
                  "unknown.");
        for (size_t i = 0; i < r->n_nodes; i++) {
            const struct r_node *n = &r->nodes[i];
            const struct {
                const char *c;
                int v;
            } comp[] = {{"daemon", n->daemon_up}, {"master", n->master_up}, {"qmgr", n->qmgr_up}};
            for (size_t k = 0; k < 3; k++) {
                if (comp[k].v < 0)
                    continue;
                const char *l[] = {"node", n->name, "component", comp[k].c, NULL};
                prom_sample(out, "postsurge_report_node_up", l, comp[k].v ? 1 : 0);
            }
        }
        prom_head(out, "postsurge_report_node_stressed", "1 if the node is in stress mode.");
        for (size_t i = 0; i < r->n_nodes; i++) {
            if (r->nodes[i].stressed < 0)
                continue;
            const char *l[] = {"node", r->nodes[i].name, NULL};
            prom_sample(out, "postsurge_report_node_stressed", l, r->nodes[i].stressed ? 1 : 0);
        }
        prom_head(out, "postsurge_report_node_saturation_ratio",
                  "Busy share of the node's smtpd processes (0 to 1).");
        for (size_t i = 0; i < r->n_nodes; i++) {
            if (r->nodes[i].saturation < 0)
                continue;
            const char *l[] = {"node", r->nodes[i].name, NULL};
            prom_sample(out, "postsurge_report_node_saturation_ratio", l,
                        r->nodes[i].saturation / 100.0);
        }
        prom_head(out, "postsurge_report_node_stress_episodes",
                  "Stress episodes of the node since the last report.");
        for (size_t i = 0; i < r->n_nodes; i++) {
            const char *l[] = {"node", r->nodes[i].name, NULL};
            prom_sample(out, "postsurge_report_node_stress_episodes", l,
                        (double)r->nodes[i].stress_episodes);
        }
        prom_head(out, "postsurge_report_node_overrides",
                  "Override profiles applied on the node since the last report.");
        for (size_t i = 0; i < r->n_nodes; i++) {
            const char *l[] = {"node", r->nodes[i].name, NULL};
            prom_sample(out, "postsurge_report_node_overrides", l, (double)r->nodes[i].overrides);
        }
        static const struct {
            const char *name, *help;
            int field;
        } sm[] = {
            {"postsurge_report_service_busy", "Busy processes of a master.cf service.", 0},
            {"postsurge_report_service_limit", "Process limit of a master.cf service.", 1},
            {"postsurge_report_service_waiting", "Clients waiting for a service process.", 2},
        };
        for (size_t m = 0; m < 3; m++) {
            prom_head(out, sm[m].name, sm[m].help);
            for (size_t i = 0; i < r->n_nodes; i++) {
                for (size_t k = 0; k < r->nodes[i].n_services; k++) {
                    const struct r_service *s = &r->nodes[i].services[k];
                    int64_t v = sm[m].field == 0   ? s->busy
                                : sm[m].field == 1 ? s->limit
                                                   : s->waiting;
                    if (v < 0)
                        continue;
                    const char *l[] = {"node", r->nodes[i].name, "service", s->name, NULL};
                    prom_sample(out, sm[m].name, l, (double)v);
                }
            }
        }
    }
    if (r->n_traffic) {
        prom_head(out, "postsurge_report_traffic_messages",
                  "Deliveries since the last report by receiving domain and result.");
        for (size_t i = 0; i < rows(r->n_traffic, r->t.top_domains); i++) {
            const struct r_traffic *x = &r->traffic[i];
            const uint64_t v[3] = {x->delivered, x->deferred, x->bounced};
            static const char *const res[3] = {"delivered", "deferred", "bounced"};
            for (int k = 0; k < 3; k++) {
                const char *l[] = {"domain", x->domain, "result", res[k], NULL};
                prom_sample(out, "postsurge_report_traffic_messages", l, (double)v[k]);
            }
        }
        prom_head(out, "postsurge_report_traffic_failure_ratio",
                  "Deferred plus bounced share of deliveries since the last report.");
        for (size_t i = 0; i < rows(r->n_traffic, r->t.top_domains); i++) {
            const struct r_traffic *x = &r->traffic[i];
            const char *l[] = {"domain", x->domain, NULL};
            prom_sample(out, "postsurge_report_traffic_failure_ratio", l,
                        failure_rate(x->delivered, x->deferred, x->bounced));
        }
    }
    if (r->n_clients) {
        prom_head(out, "postsurge_report_client_connections",
                  "SMTP connections of the top clients since the last report.");
        for (size_t i = 0; i < rows(r->n_clients, r->t.top_clients); i++) {
            const char *l[] = {"client", r->clients[i].client, NULL};
            prom_sample(out, "postsurge_report_client_connections", l,
                        (double)r->clients[i].connections);
        }
        prom_head(out, "postsurge_report_client_rejects",
                  "Rejected SMTP commands of the top clients since the last report.");
        for (size_t i = 0; i < rows(r->n_clients, r->t.top_clients); i++) {
            const char *l[] = {"client", r->clients[i].client, NULL};
            prom_sample(out, "postsurge_report_client_rejects", l, (double)r->clients[i].rejects);
        }
    }
    if (r->have_log) {
        prom_head(out, "postsurge_report_log_lines",
                  "Log lines since the last report that are not traffic, by kind.");
        const struct {
            const char *kind;
            uint64_t v;
        } lk[] = {{"probe_deliverable", r->log.probes_deliverable},
                  {"probe_undeliverable", r->log.probes_undeliverable},
                  {"expired", r->log.expired},
                  {"force_expired", r->log.force_expired},
                  {"internal_connection", r->log.internal_connections}};
        for (size_t i = 0; i < sizeof(lk) / sizeof(lk[0]); i++) {
            const char *l[] = {"kind", lk[i].kind, NULL};
            prom_sample(out, "postsurge_report_log_lines", l, (double)lk[i].v);
        }
    }
    if (r->n_lost) {
        prom_head(out, "postsurge_report_lost_connections",
                  "Connections lost by the top clients since the last report, by service.");
        for (size_t i = 0; i < rows(r->n_lost, r->t.top_clients); i++) {
            const char *l[] = {"client", r->lost[i].client, "service", r->lost[i].service, NULL};
            prom_sample(out, "postsurge_report_lost_connections", l, (double)r->lost[i].count);
        }
    }
    if (r->n_auth_clients || r->n_auth_users) {
        prom_head(out, "postsurge_report_auth_failures",
                  "SASL authentication failures of the top clients since the last report.");
        for (size_t i = 0; i < rows(r->n_auth_clients, r->t.top_clients); i++) {
            const char *l[] = {"client", r->auth_clients[i].key, NULL};
            prom_sample(out, "postsurge_report_auth_failures", l,
                        (double)r->auth_clients[i].failures);
        }
        prom_head(out, "postsurge_report_auth_failures_by_username",
                  "SASL authentication failures for the top usernames since the last report.");
        for (size_t i = 0; i < rows(r->n_auth_users, r->t.top_clients); i++) {
            const char *l[] = {"username", r->auth_users[i].key, NULL};
            prom_sample(out, "postsurge_report_auth_failures_by_username", l,
                        (double)r->auth_users[i].failures);
        }
    }
    if (r->n_anvil) {
        prom_head(out, "postsurge_report_anvil_peak",
                  "Peak of an anvil statistic since the last report (per interval for rates).");
        for (size_t i = 0; i < r->n_anvil; i++) {
            const char *l[] = {"statistic", r->anvil[i].statistic, NULL};
            prom_sample(out, "postsurge_report_anvil_peak", l, (double)r->anvil[i].value);
        }
    }
    if (r->n_warnings) {
        prom_head(out, "postsurge_report_log_warnings",
                  "Postfix warnings in the maillog since the last report.");
        for (size_t i = 0; i < r->n_warnings; i++) {
            const char *l[] = {"kind", r->warnings[i].kind, "detail",
                               r->warnings[i].detail ? r->warnings[i].detail : "", NULL};
            prom_sample(out, "postsurge_report_log_warnings", l, (double)r->warnings[i].count);
        }
    }
    report_classes_prometheus(r, out);
    report_senders_prometheus(r, out);
    prom_head(out, "postsurge_report_anomalies", "Figures beyond their rolling baseline.");
    prom_sample(out, "postsurge_report_anomalies", NULL, (double)r->n_anomalies);
    report_limits_write_prometheus(r, out);
    return ferror(out) ? -EIO : 0;
}

void report_prom_head(FILE *out, const char *name, const char *help)
{
    prom_head(out, name, help);
}

void report_prom_sample(FILE *out, const char *name, const char *const *labels, double v)
{
    prom_sample(out, name, labels, v);
}
