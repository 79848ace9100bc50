/* report_senders: the queue by sender, as `qshape -s deferred` shows it. report_set_queue()
 * copies the top sender domains and the null sender's messages per queue; a deferred queue
 * made mostly of bounces (null sender) is backscatter (QSHAPE_README, BACKSCATTER_README):
 * mail accepted and then bounced to forged senders that do not take the bounce. */
#include "report.h"
#include "report_impl.h"

#include "queue_senders.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int report_senders_set(struct report *r, const struct queue_stats *qs, size_t top)
{
    const struct queue_sender **v;
    size_t n;
    report_senders_free(r);
    memset(r->null_sender, 0, sizeof(r->null_sender));
    if (queue_stats_senders(qs, &v, &n) < 0)
        return -ENOMEM;
    int rc = 0;
    r->senders = calloc(n < top ? (n ? n : 1) : top, sizeof(*r->senders));
    if (!r->senders)
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (strcmp(v[i]->domain, QUEUE_NULL_SENDER) == 0)
            memcpy(r->null_sender, v[i]->queue_messages, sizeof(r->null_sender));
        if (i >= top)
            continue;
        struct r_sender *o = &r->senders[r->n_senders];
        o->domain = report_dup_escaped(v[i]->domain);
        if (!o->domain) {
            rc = -ENOMEM;
            break;
        }
        o->messages = v[i]->messages;
        o->deferred = v[i]->queue_messages[QUEUE_DEFERRED];
        r->n_senders++;
    }
    free(v);
    return rc;
}

void report_senders_free(struct report *r)
{
    for (size_t i = 0; i < r->n_senders; i++)
        free(r->senders[i].domain);
    free(r->senders);
    r->senders = NULL;
    r->n_senders = 0;
}

int report_senders_evaluate(struct report *r)
{
    uint64_t deferred = r->totals[QUEUE_DEFERRED].messages;
    uint64_t bounces = r->null_sender[QUEUE_DEFERRED];
    /* Judged like a domain's failure rate: not on a handful of messages. */
    uint64_t min = r->t.failure_min_messages ? r->t.failure_min_messages : 20;
    if (!r->have_queue || deferred < min || bounces * 2 <= deferred)
        return 0;
    char msg[160];
    snprintf(msg, sizeof(msg),
             "%" PRIu64 " of %" PRIu64 " deferred messages are bounces (null sender): backscatter",
             bounces, deferred);
    return report_add_finding(
        r, REPORT_WARNING, "backscatter", QUEUE_NULL_SENDER, msg,
        "mail was accepted and then bounced to senders that do not take the bounce (forged): "
        "reject unknown recipients during SMTP (reject_unlisted_recipient, relay_recipient_maps "
        "on a relay) and spam before the queue, see BACKSCATTER_README; the bounces are the "
        "deferred messages from MAILER-DAEMON (postqueue -j, postsuper -d to remove them)");
}

void report_senders_text(const struct report *r, FILE *out)
{
    if (!r->have_queue || !r->n_senders)
        return;
    fprintf(out, "\nQueue by sender (bounces: %" PRIu64 " deferred, %" PRIu64 " active):\n",
            r->null_sender[QUEUE_DEFERRED], r->null_sender[QUEUE_ACTIVE]);
    fputs("  SENDER DOMAIN                            MESSAGES DEFERRED\n", out);
    for (size_t i = 0; i < r->n_senders; i++)
        fprintf(out, "  %-40s %8" PRIu64 " %8" PRIu64 "\n", r->senders[i].domain,
                r->senders[i].messages, r->senders[i].deferred);
}

json_t *report_senders_json(const struct report *r, bool *ok)
{
    if (!r->have_queue)
        return json_null();
    json_t *o = json_object(), *ns = json_object(), *top = json_array();
    if (!o || !ns || !top || json_object_set_new(o, "null_sender", ns) < 0) {
        json_decref(o);
        json_decref(ns);
        json_decref(top);
        *ok = false;
        return NULL;
    }
    if (json_object_set_new(o, "top", top) < 0)
        *ok = false;
    for (int q = 0; q < QUEUE_COUNT; q++) {
        if (json_object_set_new(ns, queue_name_str((enum queue_name)q),
                                json_integer((json_int_t)r->null_sender[q])) < 0)
            *ok = false;
    }
    for (size_t i = 0; i < r->n_senders; i++) {
        json_t *e = json_pack("{s:s, s:I, s:I}", "domain", r->senders[i].domain, "messages",
                              (json_int_t)r->senders[i].messages, "deferred",
                              (json_int_t)r->senders[i].deferred);
        if (!e || json_array_append_new(top, e) < 0)
            *ok = false;
    }
    return o;
}

void report_senders_prometheus(const struct report *r, FILE *out)
{
    if (!r->have_queue)
        return;
    report_prom_head(out, "postsurge_report_queue_null_sender_messages",
                     "Bounces (null sender) in the Postfix queue.");
    for (int q = 0; q < QUEUE_COUNT; q++) {
        const char *l[] = {"queue", queue_name_str((enum queue_name)q), NULL};
        report_prom_sample(out, "postsurge_report_queue_null_sender_messages", l,
                           (double)r->null_sender[q]);
    }
    if (!r->n_senders)
        return;
    report_prom_head(out, "postsurge_report_sender_messages",
                     "Messages in the Postfix queue of the top sender domains, by queue (all "
                     "or deferred).");
    for (size_t i = 0; i < r->n_senders; i++) {
        const char *la[] = {"sender", r->senders[i].domain, "queue", "all", NULL};
        const char *ld[] = {"sender", r->senders[i].domain, "queue", "deferred", NULL};
        report_prom_sample(out, "postsurge_report_sender_messages", la,
                           (double)r->senders[i].messages);
        report_prom_sample(out, "postsurge_report_sender_messages", ld,
                           (double)r->senders[i].deferred);
    }
}
