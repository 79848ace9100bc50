/* attack: the attack detector and the decider that acts on it. The detector counts the
 * `User unknown` and other rejects of each client in the mail log (a window counter in
 * the node's store) and flags a client past attack_* limits in the node status, for the
 * cluster; the decider, which the controller puts in front of the rate limits, answers
 * attack_action to flagged clients while the node is stressed. */
#define LOG_COMPONENT "attack"
#include "ctl_internal.h"
#include "attack.h"
#include "node_internal.h"

#include <errno.h>
#include <string.h>

/* ---- attack decider ---- */

int attack_decide(struct decider *d, struct decision *dec)
{
    struct controller *c = d->data;
    if (c->sm && stress_state_get(c->sm) == STRESS_STRESSED) {
        const char *addr = dec->req->attr[POLICY_CLIENT_ADDRESS];
        if (addr && attack_client_flagged(c->node, addr)) {
            c->attack_answers++;
            dec->done(dec, c->attack_action, strlen(c->attack_action));
            return 0;
        }
    }
    return c->inner->start(c->inner, dec);
}

void attack_decide_cancel(struct decider *d, struct decision *dec)
{
    struct controller *c = d->data;
    if (c->inner->cancel)
        c->inner->cancel(c->inner, dec);
}

/* ---- attack detection ---- */

static bool attack_exempt(const struct node *n, const char *addr)
{
    struct net_addr a;
    if (!n->exempt || net_addr_parse(addr, strlen(addr), &a) < 0)
        return false;
    return net_set_contains(n->exempt, &a);
}

static bool attack_flagged_local(const struct node *n, const char *addr, int64_t now)
{
    for (size_t i = 0; i < n->n_flags; i++)
        if (n->flags[i].until_ms >= now && strcmp(n->flags[i].addr, addr) == 0)
            return true;
    return false;
}

struct attack_take {
    struct node *n;
    char addr[64];
    bool unknown_user;
    int64_t limit;
};

static void attack_flag(struct node *n, const char *addr, bool unknown_user, int64_t count)
{
    int64_t now = node_wall_ms();
    if (attack_flagged_local(n, addr, now))
        return;
    if (n->n_flags == NODE_MAX_FLAGS) {
        memmove(&n->flags[0], &n->flags[1], (NODE_MAX_FLAGS - 1) * sizeof(n->flags[0]));
        n->n_flags--;
    }
    struct node_flag *f = &n->flags[n->n_flags++];
    snprintf(f->addr, sizeof(f->addr), "%s", addr);
    f->until_ms = now + n->flag_ms;
    /* Visible to this node's decider at once; peers see it at their next refresh. */
    char **v = realloc(n->merged, (n->n_merged + 1) * sizeof(char *));
    if (v) {
        n->merged = v;
        if ((v[n->n_merged] = strdup(addr))) {
            n->n_merged++;
            if (n->n_merged > 1)
                qsort(n->merged, n->n_merged, sizeof(char *), node_cmp_str);
        }
    }
    node_event(n, "attack-flagged", true,
               json_pack("{s:s,s:s,s:I,s:I}", "client", addr, "reason",
                         unknown_user ? "unknown-user" : "errors", "count", (json_int_t)count,
                         "until", (json_int_t)f->until_ms),
               "client %s flagged for %" PRId64 " s: %" PRId64 " %s within %" PRId64 " s", addr,
               n->flag_ms / 1000, count, unknown_user ? "\"User unknown\" rejects" : "rejects",
               n->window_ms / 1000);
}

static void attack_on_take(void *arg, int status, const struct window_result *res, size_t cnt)
{
    struct attack_take *t = arg;
    struct node *n = t->n;
    n->pending_takes--;
    if (status == -ECANCELED || n->closing) {
        free(t);
        return;
    }
    if (res && cnt == 1 && (res[0].count >= t->limit || !res[0].allowed))
        attack_flag(n, t->addr, t->unknown_user, res[0].count);
    else if (!res)
        log_warn_ratelimited(&n->rl_take, node_mono(n), 60000,
                             "attack detector: store failed (%s); rejects not counted",
                             node_store_error(status));
    free(t);
}

void attack_on_log(struct node *n, const struct maillog_record *rec)
{
    if (n->closing)
        return;
    if (rec->kind == MAILLOG_PROCESS_LIMIT) {
        node_event(n, "process-limit", true,
                   json_pack("{s:s,s:s,s:I}", "service", rec->service, "endpoint", rec->endpoint,
                             "limit", (json_int_t)rec->limit),
                   "master: service \"%s\" (%s) has reached its process limit %lu", rec->service,
                   rec->endpoint, rec->limit);
        return;
    }
    if (rec->kind != MAILLOG_REJECT || !rec->client_addr[0])
        return;
    bool uu = rec->reject_class == MAILLOG_REJECT_UNKNOWN_USER;
    int64_t limit = uu ? n->unknown_limit : n->error_limit;
    if (limit <= 0 || attack_exempt(n, rec->client_addr) ||
        attack_flagged_local(n, rec->client_addr, node_wall_ms()))
        return;
    if (n->pending_takes > 1000)
        return; /* a store that does not answer: do not pile up requests */
    struct attack_take *t = calloc(1, sizeof(*t));
    if (!t)
        return;
    t->n = n;
    snprintf(t->addr, sizeof(t->addr), "%s", rec->client_addr);
    t->unknown_user = uu;
    t->limit = limit;
    char key[128];
    snprintf(key, sizeof(key), "attack:%s:%s", uu ? "uu" : "err", rec->client_addr);
    struct store_op op = {.key = key, .window_ms = n->window_ms, .limit = limit, .amount = 1};
    n->pending_takes++;
    if (store_window_take(n->store, &op, 1, node_wall_ms(), attack_on_take, t, NULL) < 0) {
        n->pending_takes--;
        free(t);
    }
}

bool attack_client_flagged(const struct node *n, const char *addr)
{
    if (!n || n->closing || !addr || !*addr || n->n_merged == 0)
        return false;
    if (attack_exempt(n, addr))
        return false;
    return bsearch(&addr, n->merged, n->n_merged, sizeof(char *), node_cmp_str) != NULL;
}
