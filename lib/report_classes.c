/* report_classes: what rejected the rejected clients and what postscreen decided. The CLI
 * classifies each reject line's reply text (report_reject_classify) and counts postscreen's
 * verdict lines; the report keeps the counts and this file writes them in the text, JSON
 * and Prometheus formats (report_write.c calls in). */
#include "report.h"
#include "report_impl.h"

#include "maillog.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

static const char *const class_names[REPORT_REJECT_CLASS_COUNT] = {
    "dnsbl",         "unknown_recipient", "relay",    "helo",
    "sender_domain", "postsurge_limit",   "greylist", "other",
};

const char *report_reject_class_str(enum report_reject_class c)
{
    return (unsigned)c < REPORT_REJECT_CLASS_COUNT ? class_names[c] : "other";
}

/* Case-insensitive strstr. */
static bool has(const char *s, const char *needle)
{
    size_t n = strlen(needle);
    for (; *s; s++) {
        if (strncasecmp(s, needle, n) == 0)
            return true;
    }
    return false;
}

/* An own reply text ("450 4.7.1 Rate limit exceeded", "REJECT go away" or just the text)
 * without its code and DSN. */
static const char *reply_text(const char *reply)
{
    const char *p = reply;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p == reply) {
        /* An access(5) verb with text: "REJECT text", "DEFER text", "DEFER_IF_PERMIT text". */
        const char *sp = strchr(reply, ' ');
        return sp ? sp + 1 : reply;
    }
    while (*p == ' ')
        p++;
    const char *d = p;
    while ((*d >= '0' && *d <= '9') || *d == '.')
        d++;
    if (d > p && *d == ' ')
        p = d + 1;
    return p;
}

enum report_reject_class report_reject_classify(unsigned code, const char *text,
                                                const char *const *own)
{
    /* postsurge's default replies (config.c limit_action, attack_action; limits_parse.c's
     * fallback): checked first, their "try again later" is not greylisting. */
    static const char *const own_defaults[] = {"Rate limit exceeded",
                                               "Too many errors from your address", NULL};
    if (!text)
        return REPORT_REJECT_OTHER;
    for (size_t i = 0; own_defaults[i]; i++) {
        if (strstr(text, own_defaults[i]))
            return REPORT_REJECT_OWN_LIMIT;
    }
    for (size_t i = 0; own && own[i]; i++) {
        const char *t = reply_text(own[i]);
        if (*t && strstr(text, t))
            return REPORT_REJECT_OWN_LIMIT;
    }
    if (strstr(text, " blocked using "))
        return REPORT_REJECT_DNSBL;
    if (strstr(text, "Relay access denied"))
        return REPORT_REJECT_RELAY;
    if (strstr(text, "Helo command rejected:"))
        return REPORT_REJECT_HELO;
    /* A sender reject is never an unknown recipient (reject_unlisted_sender also says
     * "User unknown"); only the domain checks make the sender_domain class. */
    if (strstr(text, "Sender address rejected:")) {
        static const char *const dom[] = {"Domain not found", "need fully-qualified address",
                                          "does not accept mail", "Malformed DNS server reply",
                                          NULL};
        for (size_t i = 0; dom[i]; i++) {
            if (strstr(text, dom[i]))
                return REPORT_REJECT_SENDER_DOMAIN;
        }
        return REPORT_REJECT_OTHER;
    }
    if (has(text, "greylist"))
        return REPORT_REJECT_GREYLIST;
    if (strstr(text, "User unknown"))
        return REPORT_REJECT_UNKNOWN_RECIPIENT;
    const char *ra = strstr(text, "Recipient address rejected:");
    if (ra && has(ra, "unknown"))
        return REPORT_REJECT_UNKNOWN_RECIPIENT;
    if (code >= 400 && code < 500 && has(text, "try again later"))
        return REPORT_REJECT_GREYLIST;
    return REPORT_REJECT_OTHER;
}

int report_add_rejects(struct report *r, enum report_reject_class c, uint64_t n)
{
    if ((unsigned)c >= REPORT_REJECT_CLASS_COUNT)
        return -EINVAL;
    r->reject_classes[c] += n;
    return 0;
}

int report_add_postscreen(struct report *r, const char *verdict, uint64_t n)
{
    for (size_t i = 0; verdict && i < MAILLOG_PS_VERDICT_COUNT; i++) {
        if (strcmp(maillog_ps_verdicts[i], verdict) == 0) {
            r->ps_verdicts[i] += n;
            return 0;
        }
    }
    return -EINVAL;
}

static uint64_t sum(const uint64_t *v, size_t n)
{
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    return s;
}

/* One "  name count, name count" line of the non-zero counts. */
static void text_counts(FILE *out, const char *title, const uint64_t *v, size_t n,
                        const char *const *names)
{
    fprintf(out, "\n%s: %" PRIu64 "\n ", title, sum(v, n));
    for (size_t i = 0; i < n; i++) {
        if (v[i])
            fprintf(out, " %s %" PRIu64, names[i], v[i]);
    }
    fputc('\n', out);
}

void report_classes_text(const struct report *r, FILE *out)
{
    if (sum(r->reject_classes, REPORT_REJECT_CLASS_COUNT))
        text_counts(out, "Rejects by class", r->reject_classes, REPORT_REJECT_CLASS_COUNT,
                    class_names);
    if (sum(r->ps_verdicts, MAILLOG_PS_VERDICT_COUNT))
        text_counts(out, "postscreen verdicts", r->ps_verdicts, MAILLOG_PS_VERDICT_COUNT,
                    maillog_ps_verdicts);
}

/* An object {name: count} of every name. */
static json_t *json_counts(const uint64_t *v, size_t n, const char *const *names, bool *ok)
{
    json_t *o = json_object();
    if (!o) {
        *ok = false;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (json_object_set_new(o, names[i], json_integer((json_int_t)v[i])) < 0)
            *ok = false;
    }
    return o;
}

void report_classes_json(const struct report *r, json_t *o, bool *ok)
{
    if (!o) {
        *ok = false;
        return;
    }
    /* set_new takes the value also when it fails (a NULL value just fails). */
    if (json_object_set_new(
            o, "rejects_by_class",
            json_counts(r->reject_classes, REPORT_REJECT_CLASS_COUNT, class_names, ok)) < 0 ||
        json_object_set_new(
            o, "postscreen_verdicts",
            json_counts(r->ps_verdicts, MAILLOG_PS_VERDICT_COUNT, maillog_ps_verdicts, ok)) < 0)
        *ok = false;
}

void report_classes_prometheus(const struct report *r, FILE *out)
{
    if (!r->have_log)
        return;
    report_prom_head(out, "postsurge_report_rejects",
                     "Rejected SMTP commands since the last report, by what rejected them.");
    for (int c = 0; c < REPORT_REJECT_CLASS_COUNT; c++) {
        const char *l[] = {"class", class_names[c], NULL};
        report_prom_sample(out, "postsurge_report_rejects", l, (double)r->reject_classes[c]);
    }
    report_prom_head(out, "postsurge_report_postscreen_verdicts",
                     "postscreen verdicts since the last report.");
    for (size_t i = 0; i < MAILLOG_PS_VERDICT_COUNT; i++) {
        const char *l[] = {"verdict", maillog_ps_verdicts[i], NULL};
        report_prom_sample(out, "postsurge_report_postscreen_verdicts", l,
                           (double)r->ps_verdicts[i]);
    }
}
