/* attack: the attack detector and the decider that acts on it. The detector counts the
 * `User unknown` and other rejects, and the SASL authentication failures, of each client in
 * the mail log (window counters in the node's store) and flags a client past attack_*
 * limits in the node status, for the cluster; the decider, which the controller puts in
 * front of the rate limits, answers attack_action to clients flagged for rejects while
 * the node is stressed, and to clients flagged for SASL failures as attack_auth_mode
 * says (by default at any time). */
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
    const char *addr = dec->req->attr[POLICY_CLIENT_ADDRESS];
    unsigned kinds = attack_client_flags(c->node, addr);
    if (kinds) {
        bool stressed = c->sm && stress_state_get(c->sm) == STRESS_STRESSED;
        enum node_auth_mode mode = c->node->auth_mode;
        bool act = (stressed && (kinds & NODE_FLAG_REJECTS)) ||
                   ((kinds & NODE_FLAG_AUTH) &&
                    (mode == NODE_AUTH_ALWAYS || (mode == NODE_AUTH_STRESS && stressed)));
        if (act) {
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

static bool attack_flagged_local(const struct node *n, const char *addr, unsigned kind, int64_t now)
{
    for (size_t i = 0; i < n->n_flags; i++)
        if (n->flags[i].until_ms >= now && n->flags[i].kind == kind &&
            strcmp(n->flags[i].addr, addr) == 0)
            return true;
    return false;
}

struct attack_take {
    struct node *n;
    char addr[64];
    enum maillog_attack cls;
    int64_t limit, window_ms;
};

static void attack_flag(struct node *n, const struct attack_take *t, int64_t count)
{
    int64_t now = node_wall_ms();
    unsigned kind = t->cls == MAILLOG_ATTACK_AUTH ? NODE_FLAG_AUTH : NODE_FLAG_REJECTS;
    if (attack_flagged_local(n, t->addr, kind, now))
        return;
    if (n->n_flags == NODE_MAX_FLAGS) {
        memmove(&n->flags[0], &n->flags[1], (NODE_MAX_FLAGS - 1) * sizeof(n->flags[0]));
        n->n_flags--;
    }
    struct node_flag *f = &n->flags[n->n_flags++];
    snprintf(f->addr, sizeof(f->addr), "%s", t->addr);
    f->until_ms = now + n->flag_ms;
    f->kind = kind;
    /* Visible to this node's decider at once; peers see it at their next refresh. */
    node_merged_add(n, t->addr, kind);
    static const char *const reason[] = {
        [MAILLOG_ATTACK_UNKNOWN_USER] = "unknown-user",
        [MAILLOG_ATTACK_ERROR] = "errors",
        [MAILLOG_ATTACK_AUTH] = "auth-failures",
    };
    static const char *const what[] = {
        [MAILLOG_ATTACK_UNKNOWN_USER] = "\"User unknown\" rejects",
        [MAILLOG_ATTACK_ERROR] = "rejects",
        [MAILLOG_ATTACK_AUTH] = "SASL authentication failures",
    };
    node_event(n, "attack-flagged", true,
               json_pack("{s:s,s:s,s:I,s:I}", "client", t->addr, "reason", reason[t->cls], "count",
                         (json_int_t)count, "until", (json_int_t)f->until_ms),
               "client %s flagged for %" PRId64 " s: %" PRId64 " %s within %" PRId64 " s", t->addr,
               n->flag_ms / 1000, count, what[t->cls], t->window_ms / 1000);
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
        attack_flag(n, t, res[0].count);
    else if (!res)
        log_warn_ratelimited(&n->rl_take, node_mono(n), 60000,
                             "attack detector: store failed (%s); rejects not counted",
                             node_store_error(status));
    free(t);
}

/* ---- attack stress signal ---- */

/* The attack stress signal counts per minute. */
#define ATTACK_RATE_WINDOW_MS 60000

struct attack_rate_take {
    struct node *n;
    int which; /* 0 `User unknown`, 1 SASL failures */
    int64_t limit;
};

static void attack_on_rate(void *arg, int status, const struct window_result *res, size_t cnt)
{
    struct attack_rate_take *t = arg;
    struct node *n = t->n;
    n->pending_takes--;
    if (status != -ECANCELED && !n->closing && res && cnt == 1 &&
        (res[0].count >= t->limit || !res[0].allowed)) {
        /* Over the rate: the signal holds for a window after the last line over it. */
        n->rate_hot_until[t->which] = node_wall_ms() + ATTACK_RATE_WINDOW_MS;
    }
    free(t);
}

/* Counts one line toward the cluster-wide rate of its kind (one key every node shares). */
static void attack_count_rate(struct node *n, int which)
{
    int64_t limit = n->stress_rate[which];
    if (limit <= 0 || n->pending_takes > 1000)
        return;
    struct attack_rate_take *t = calloc(1, sizeof(*t));
    if (!t)
        return;
    *t = (struct attack_rate_take){.n = n, .which = which, .limit = limit};
    struct store_op op = {.key = which ? "attack:rate:auth" : "attack:rate:uu",
                          .window_ms = ATTACK_RATE_WINDOW_MS,
                          .limit = limit,
                          .amount = 1};
    n->pending_takes++;
    if (store_window_take(n->store, &op, 1, node_wall_ms(), attack_on_rate, t, NULL) < 0) {
        n->pending_takes--;
        free(t);
    }
}

bool attack_stress_signal(const struct node *n, char *buf, size_t cap)
{
    static const char *const what[] = {"dictionary harvest", "password guessing"};
    static const char *const lines[] = {"\"User unknown\" rejects", "SASL authentication failures"};
    static const char *const setting[] = {"attack_stress_unknown_user_rate",
                                          "attack_stress_auth_failure_rate"};
    int64_t now = node_wall_ms();
    buf[0] = '\0';
    for (int i = 0; n && !n->closing && i < 2; i++) {
        if (n->stress_rate[i] <= 0 || n->rate_hot_until[i] < now)
            continue;
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len,
                 "%s%s: %s across the cluster reached %" PRId64 " within %d s (%s)",
                 len ? ", " : "", what[i], lines[i], n->stress_rate[i],
                 ATTACK_RATE_WINDOW_MS / 1000, setting[i]);
    }
    return buf[0] != '\0';
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
    enum maillog_attack cls = maillog_attack_class(rec);
    if (cls == MAILLOG_ATTACK_NONE)
        return;
    /* The address goes into a store key and an event: only a well-formed one. */
    struct net_addr a;
    if (net_addr_parse(rec->client_addr, strlen(rec->client_addr), &a) < 0 ||
        attack_exempt(n, rec->client_addr))
        return;
    if (cls != MAILLOG_ATTACK_ERROR)
        attack_count_rate(n, cls == MAILLOG_ATTACK_AUTH);
    int64_t limit = cls == MAILLOG_ATTACK_AUTH           ? n->auth_limit
                    : cls == MAILLOG_ATTACK_UNKNOWN_USER ? n->unknown_limit
                                                         : n->error_limit;
    unsigned kind = cls == MAILLOG_ATTACK_AUTH ? NODE_FLAG_AUTH : NODE_FLAG_REJECTS;
    if (limit <= 0 || attack_flagged_local(n, rec->client_addr, kind, node_wall_ms()))
        return;
    if (n->pending_takes > 1000)
        return; /* a store that does not answer: do not pile up requests */
    struct attack_take *t = calloc(1, sizeof(*t));
    if (!t)
        return;
    t->n = n;
    snprintf(t->addr, sizeof(t->addr), "%s", rec->client_addr);
    t->cls = cls;
    t->limit = limit;
    t->window_ms = cls == MAILLOG_ATTACK_AUTH ? n->auth_window_ms : n->window_ms;
    static const char *const tag[] = {
        [MAILLOG_ATTACK_UNKNOWN_USER] = "uu",
        [MAILLOG_ATTACK_ERROR] = "err",
        [MAILLOG_ATTACK_AUTH] = "auth",
    };
    char key[128];
    snprintf(key, sizeof(key), "attack:%s:%s", tag[cls], rec->client_addr);
    struct store_op op = {.key = key, .window_ms = t->window_ms, .limit = limit, .amount = 1};
    n->pending_takes++;
    if (store_window_take(n->store, &op, 1, node_wall_ms(), attack_on_take, t, NULL) < 0) {
        n->pending_takes--;
        free(t);
    }
}

unsigned attack_client_flags(const struct node *n, const char *addr)
{
    if (!n || n->closing || !addr || !*addr || n->n_merged == 0)
        return 0;
    if (attack_exempt(n, addr))
        return 0;
    struct node_merged key = {.addr = (char *)addr};
    const struct node_merged *m =
        bsearch(&key, n->merged, n->n_merged, sizeof(*n->merged), node_cmp_merged);
    return m ? m->kinds : 0;
}
