/* report_domains: what changed per receiving domain. The CLI hands over each tracked
 * domain's deferrals by reason class (report_add_domain_reason); report_apply_baseline()
 * calls report_domain_baselines(), which keeps a baseline of the deferral rate, the
 * deferred count and each class's count for the top REPORT_BASELINE_DOMAINS domains by
 * volume and turns a rise into an anomaly that says what grew ("yahoo.com: deferral rate
 * 12 % → 38 % (+26 points), mostly 421 4.7.0 throttle"). */
#include "report.h"
#include "report_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A deferral rate over fewer messages than this is not judged (it is still recorded). */
#define MIN_RATE_MESSAGES 20

void report_domains_free(struct report *r)
{
    for (size_t i = 0; i < r->n_dreasons; i++) {
        free(r->dreasons[i].domain);
        free(r->dreasons[i].reply);
    }
    free(r->dreasons);
    r->dreasons = NULL;
    r->n_dreasons = 0;
}

static struct r_dreason *dreason_find(const struct report *r, const char *domain,
                                      enum queue_reason_class cls)
{
    for (size_t i = 0; i < r->n_dreasons; i++) {
        if (r->dreasons[i].cls == cls && strcmp(r->dreasons[i].domain, domain) == 0)
            return &r->dreasons[i];
    }
    return NULL;
}

int report_add_domain_reason(struct report *r, const char *domain, enum queue_reason_class cls,
                             const char *reply, uint64_t count)
{
    if (!domain || !domain[0] || (unsigned)cls >= QUEUE_REASON_COUNT)
        return -EINVAL;
    struct r_dreason *x = dreason_find(r, domain, cls);
    if (!x) {
        /* One row per (domain, class) of at most REPORT_BASELINE_DOMAINS domains: a few
         * hundred rows, grown one at a time. */
        struct r_dreason *na = realloc(r->dreasons, (r->n_dreasons + 1) * sizeof(*na));
        if (!na)
            return -ENOMEM;
        r->dreasons = na;
        x = &r->dreasons[r->n_dreasons];
        *x = (struct r_dreason){strdup(domain), NULL, cls, 0, 0};
        if (!x->domain)
            return -ENOMEM;
        r->n_dreasons++;
    }
    x->count += count;
    if (reply && reply[0] && (!x->reply || count > x->reply_count)) {
        char *d = strdup(reply);
        if (!d)
            return -ENOMEM;
        free(x->reply);
        x->reply = d;
        x->reply_count = count;
    }
    return 0;
}

static uint64_t volume(const struct r_traffic *t)
{
    return t->delivered + t->deferred + t->bounced;
}

static int cmp_volume(const void *a, const void *b)
{
    const struct r_traffic *x = *(const struct r_traffic *const *)a,
                           *y = *(const struct r_traffic *const *)b;
    if (volume(x) != volume(y))
        return volume(x) > volume(y) ? -1 : 1;
    return strcmp(x->domain, y->domain);
}

/* "HOST/domain/DOMAIN/WHAT" into buf. */
static void domain_key(char *buf, size_t len, const struct report *r, const char *domain,
                       const char *what)
{
    snprintf(buf, len, "%s/domain/%s/%s", r->host, domain, what);
}

/* The reason class of domain that grew most against its own baseline (or, with no
 * growth, the biggest one of the period); NULL without deferral reasons. Then records
 * every class's count as a sample. Returns 0 or -ENOMEM. */
static int grown_class(const struct report *r, struct baseline *b, const char *domain,
                       const struct r_dreason **out)
{
    const struct r_dreason *grown = NULL, *biggest = NULL;
    double best_growth = 0;
    for (int c = 0; c < QUEUE_REASON_COUNT; c++) {
        const struct r_dreason *x = dreason_find(r, domain, (enum queue_reason_class)c);
        double value = x ? (double)x->count : 0;
        char key[640], what[64];
        snprintf(what, sizeof(what), "deferred.%s", queue_reason_class_str(c));
        domain_key(key, sizeof(key), r, domain, what);
        struct baseline_verdict v;
        baseline_test(b, key, r->now, value, &v);
        double growth = value - (v.n ? v.mean : 0);
        if (x && x->count && growth > best_growth) {
            grown = x;
            best_growth = growth;
        }
        if (x && x->count && (!biggest || x->count > biggest->count))
            biggest = x;
        if (baseline_add(b, key, r->now, value) == -ENOMEM)
            return -ENOMEM;
    }
    *out = grown ? grown : biggest;
    return 0;
}

/* Tests and records one figure of a domain; *v gets the verdict. */
static int domain_figure(const struct report *r, struct baseline *b, const char *domain,
                         const char *what, double value, bool record, struct baseline_verdict *v)
{
    char key[640];
    domain_key(key, sizeof(key), r, domain, what);
    baseline_test(b, key, r->now, value, v);
    if (!record)
        return 0;
    return baseline_add(b, key, r->now, value) == -ENOMEM ? -ENOMEM : 0;
}

int report_domain_baselines(struct report *r, struct baseline *b, bool quiet)
{
    if (!r->n_traffic)
        return 0;
    const struct r_traffic **v = malloc(r->n_traffic * sizeof(*v));
    if (!v)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < r->n_traffic; i++) {
        /* The overflow row is not a domain. */
        if (strcmp(r->traffic[i].domain, "(other)") != 0)
            v[n++] = &r->traffic[i];
    }
    qsort(v, n, sizeof(*v), cmp_volume);
    int added = 0, rc = 0;
    for (size_t i = 0; rc == 0 && i < n && i < REPORT_BASELINE_DOMAINS; i++) {
        const struct r_traffic *t = v[i];
        uint64_t total = volume(t);
        double pct = total ? 100.0 * (double)t->deferred / (double)total : 0;
        const struct r_dreason *why;
        struct baseline_verdict vr, vd;
        rc = grown_class(r, b, t->domain, &why);
        if (rc == 0)
            rc = domain_figure(r, b, t->domain, "deferral_pct", pct, total > 0, &vr);
        if (rc == 0)
            rc = domain_figure(r, b, t->domain, "deferred", (double)t->deferred, true, &vd);
        if (rc < 0 || quiet)
            continue;
        bool rate_up = vr.anomaly && vr.direction > 0 && total >= MIN_RATE_MESSAGES;
        bool count_up = vd.anomaly && vd.direction > 0;
        if (!rate_up && !count_up)
            continue;
        char mostly[160] = "", cause[640], metric[320];
        if (why)
            snprintf(mostly, sizeof(mostly), ", mostly %s%s%s (%llu of %llu deferrals)",
                     why->reply ? why->reply : "", why->reply ? " " : "",
                     queue_reason_class_str(why->cls), (unsigned long long)why->count,
                     (unsigned long long)t->deferred);
        const struct baseline_verdict *x = rate_up ? &vr : &vd;
        double value = rate_up ? pct : (double)t->deferred;
        if (rate_up)
            snprintf(cause, sizeof(cause),
                     "%s: deferral rate %.0f %% \u2192 %.0f %% (%+.0f points)%s", t->domain,
                     x->mean, value, value - x->mean, mostly);
        else
            snprintf(cause, sizeof(cause), "%s: deferred %.0f \u2192 %.0f (%+.0f)%s", t->domain,
                     x->mean, value, value - x->mean, mostly);
        snprintf(metric, sizeof(metric), "domain/%s/%s", t->domain,
                 rate_up ? "deferral_pct" : "deferred");
        rc = report_add_anomaly(r, metric, value, x->mean, x->sd, x->n, cause);
        if (rc == 0)
            added++;
    }
    free(v);
    return rc < 0 ? rc : added;
}
