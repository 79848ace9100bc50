/* report_limits: the report's section of the keys that hit rate limits since the last
 * report, from the limit-hit events of the cluster's event log: one row per rule and key
 * value, worst first (most events, then most nodes), with advice for SASL accounts and
 * senders, whose sudden quota hits usually mean stolen credentials, and a finding for a
 * key that hit limits on more than one node or REPORT_LIMIT_HIT_REPEAT times. */
#include "report_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum key_kind { KIND_OTHER, KIND_SASL, KIND_SENDER };

/* What the key names, from its spec ("client_address/24+sasl_username"): a SASL login
 * wins over a sender, which wins over the rest. */
static enum key_kind kind_of(const char *spec)
{
    enum key_kind k = KIND_OTHER;
    for (const char *p = spec; p && *p;) {
        size_t n = strcspn(p, "+/");
        if ((n == 13 && !strncmp(p, "sasl_username", n)) ||
            (n == 11 && !strncmp(p, "sasl_sender", n)))
            return KIND_SASL;
        if ((n == 6 && !strncmp(p, "sender", n)) || (n == 13 && !strncmp(p, "sender_domain", n)))
            k = KIND_SENDER;
        p += n;
        p += strspn(p, "+/0123456789");
    }
    return k;
}

static const char *kind_name(enum key_kind k)
{
    return k == KIND_SASL ? "sasl" : k == KIND_SENDER ? "sender" : "other";
}

/* One line of advice for a row (a new string, NULL on ENOMEM). */
static char *advice_of(const struct r_limit_key *k)
{
    size_t n = 256 + 2 * (strlen(k->rule) + strlen(k->value));
    char *s = malloc(n);
    if (!s)
        return NULL;
    const char *ru = k->rule, *v = k->value;
    switch (kind_of(k->key_spec)) {
    case KIND_SASL:
        snprintf(s, n,
                 "account may be compromised: check its logins (postsurge limits show %s %s); "
                 "stop it at once with postsurge limits set %s %s 0",
                 ru, v, ru, v);
        break;
    case KIND_SENDER:
        snprintf(s, n,
                 "account may be compromised: check its logins and who sends as this sender "
                 "(postsurge limits show %s %s; postsurge limits set %s %s 0 stops it)",
                 ru, v, ru, v);
        break;
    default:
        snprintf(s, n,
                 "check the client (postsurge limits show %s %s); if it is legitimate, raise "
                 "its limit (postsurge limits set %s %s COUNT, or the rule's overrides table)",
                 ru, v, ru, v);
        break;
    }
    return s;
}

static char *dup_or_null(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    *ok = *ok && d;
    return d;
}

static void key_clear(struct r_limit_key *k)
{
    free(k->rule);
    free(k->value);
    free(k->key_spec);
    free(k->client);
    for (size_t i = 0; i < k->n_nodes; i++)
        free(k->nodes[i]);
}

void report_limits_free(struct report *r)
{
    for (size_t i = 0; i < r->n_limit_keys; i++)
        key_clear(&r->limit_keys[i]);
    free(r->limit_keys);
    r->limit_keys = NULL;
    r->n_limit_keys = r->cap_limit_keys = 0;
}

static struct r_limit_key *key_row(struct report *r, const struct report_limit_hit *h)
{
    for (size_t i = 0; i < r->n_limit_keys; i++)
        if (!strcmp(r->limit_keys[i].rule, h->rule) && !strcmp(r->limit_keys[i].value, h->value))
            return &r->limit_keys[i];
    if (r->n_limit_keys >= REPORT_LIMIT_KEYS)
        return NULL;
    if (r->n_limit_keys == r->cap_limit_keys) {
        size_t ncap = r->cap_limit_keys ? 2 * r->cap_limit_keys : 16;
        struct r_limit_key *nv = realloc(r->limit_keys, ncap * sizeof(*nv));
        if (!nv)
            return NULL;
        r->limit_keys = nv;
        r->cap_limit_keys = ncap;
    }
    bool ok = true;
    struct r_limit_key k = {.rule = dup_or_null(h->rule, &ok), .value = dup_or_null(h->value, &ok)};
    if (!ok) {
        key_clear(&k);
        return NULL;
    }
    r->limit_keys[r->n_limit_keys] = k;
    return &r->limit_keys[r->n_limit_keys++];
}

int report_add_limit_hit(struct report *r, const struct report_limit_hit *h)
{
    if (!h || !h->rule || !h->rule[0] || !h->value || !h->value[0])
        return -EINVAL;
    r->limit_hit_events++;
    struct r_limit_key *k = key_row(r, h);
    if (!k)
        return r->n_limit_keys >= REPORT_LIMIT_KEYS ? 0 : -ENOMEM;
    bool ok = true;
    k->hits++;
    if (h->time >= k->last || k->n_nodes == 0) {
        /* The newest event's figures describe the row. */
        k->last = h->time;
        k->limit = h->limit;
        k->count = h->count;
        if (h->client) {
            free(k->client);
            k->client = dup_or_null(h->client, &ok);
        }
    }
    if (h->key_spec && !k->key_spec)
        k->key_spec = dup_or_null(h->key_spec, &ok);
    const char *node = h->node && h->node[0] ? h->node : "?";
    bool seen = false;
    for (size_t i = 0; i < k->n_nodes; i++)
        seen |= !strcmp(k->nodes[i], node);
    if (!seen && k->n_nodes < REPORT_LIMIT_NODES && (k->nodes[k->n_nodes] = strdup(node)))
        k->n_nodes++;
    else if (!seen && k->n_nodes < REPORT_LIMIT_NODES)
        ok = false;
    return ok ? 0 : -ENOMEM;
}

static int key_cmp(const void *a, const void *b)
{
    const struct r_limit_key *x = a, *y = b;
    if (x->hits != y->hits)
        return x->hits < y->hits ? 1 : -1;
    if (x->n_nodes != y->n_nodes)
        return x->n_nodes < y->n_nodes ? 1 : -1;
    int c = strcmp(x->rule, y->rule);
    return c ? c : strcmp(x->value, y->value);
}

int report_limits_evaluate(struct report *r)
{
    if (r->n_limit_keys > 1)
        qsort(r->limit_keys, r->n_limit_keys, sizeof(*r->limit_keys), key_cmp);
    for (size_t i = 0; i < r->n_limit_keys; i++) {
        const struct r_limit_key *k = &r->limit_keys[i];
        bool nodes = k->n_nodes > 1, repeated = k->hits >= REPORT_LIMIT_HIT_REPEAT;
        if (!nodes && !repeated)
            continue;
        char subject[256], msg[512];
        snprintf(subject, sizeof(subject), "%s %s", k->rule, k->value);
        snprintf(msg, sizeof(msg),
                 "key %s of rule %s hit its limit %" PRIu64 " %s on %zu %s since the last report"
                 " (%s)",
                 k->value, k->rule, k->hits, report_plural(k->hits, "time", "times"), k->n_nodes,
                 report_plural(k->n_nodes, "node", "nodes"),
                 nodes ? "more than one node" : "3 or more is a finding");
        char *advice = advice_of(k);
        int rc = advice ? report_add_finding(r, REPORT_WARNING,
                                             nodes ? "limit_hit_nodes" : "limit_hit_repeated",
                                             subject, msg, advice)
                        : -ENOMEM;
        free(advice);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static size_t shown(const struct report *r)
{
    size_t top = r->t.top_clients ? r->t.top_clients : 10;
    return r->n_limit_keys < top ? r->n_limit_keys : top;
}

void report_limits_write_text(const struct report *r, FILE *out)
{
    if (!r->limit_hit_events)
        return;
    fprintf(out, "\nKeys that hit rate limits: %" PRIu64 " limit-hit %s, %zu %s\n",
            r->limit_hit_events, report_plural(r->limit_hit_events, "event", "events"),
            r->n_limit_keys, report_plural(r->n_limit_keys, "key", "keys"));
    fputs("  RULE             KEY                                      HITS NODES      LIMIT  "
          "LAST\n",
          out);
    for (size_t i = 0; i < shown(r); i++) {
        const struct r_limit_key *k = &r->limit_keys[i];
        char age[32];
        report_fmt_age(age, sizeof(age), r->now - k->last);
        fprintf(out, "  %-16s %-40s %4" PRIu64 " %5zu %10" PRId64 "  %s ago\n", k->rule, k->value,
                k->hits, k->n_nodes, k->limit, age);
        if (kind_of(k->key_spec) != KIND_OTHER) {
            char *advice = advice_of(k);
            if (advice)
                fprintf(out, "           -> %s\n", advice);
            free(advice);
        }
    }
}

json_t *report_limits_json(const struct report *r)
{
    json_t *keys = json_array();
    json_t *o = json_pack("{s:I,s:o}", "events", (json_int_t)r->limit_hit_events, "keys", keys);
    for (size_t i = 0; o && i < r->n_limit_keys; i++) {
        const struct r_limit_key *k = &r->limit_keys[i];
        json_t *nodes = json_array();
        for (size_t n = 0; nodes && n < k->n_nodes; n++)
            json_array_append_new(nodes, json_string(k->nodes[n]));
        char *advice = advice_of(k);
        json_t *row =
            json_pack("{s:s,s:s,s:s?,s:s,s:I,s:o,s:I,s:I,s:I,s:s?,s:s?}", "rule", k->rule, "value",
                      k->value, "key", k->key_spec, "kind", kind_name(kind_of(k->key_spec)), "hits",
                      (json_int_t)k->hits, "nodes", nodes, "limit", (json_int_t)k->limit, "count",
                      (json_int_t)k->count, "last", (json_int_t)k->last, "client", k->client,
                      "advice", advice);
        free(advice);
        if (!row || json_array_append_new(keys, row) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

void report_limits_write_prometheus(const struct report *r, FILE *out)
{
    if (!r->limit_hit_events)
        return;
    report_prom_head(out, "postsurge_report_limit_hit_events",
                     "limit-hit events (a key's first refusal by a rule in its window, per node) "
                     "since the last report.");
    report_prom_sample(out, "postsurge_report_limit_hit_events", NULL, (double)r->limit_hit_events);
    report_prom_head(out, "postsurge_report_limit_hits",
                     "limit-hit events of the keys that hit rate limits most since the last "
                     "report.");
    for (size_t i = 0; i < shown(r); i++) {
        const struct r_limit_key *k = &r->limit_keys[i];
        const char *l[] = {"rule", k->rule, "key", k->value, NULL};
        report_prom_sample(out, "postsurge_report_limit_hits", l, (double)k->hits);
    }
}
