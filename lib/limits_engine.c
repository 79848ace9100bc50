/* limits_engine: per-connection dedup and the decision (rule parsing is limits_parse.c,
 * keys and conditions limits_key.c). The engine
 * is immutable once built (shared by every connection, swapped on SIGHUP); all mutable
 * state is in the caller's limits_session. Dedup works by "units": each thing that can
 * be counted (a connection for a rule, a message for a rule and key, one recipient for
 * a rule) gets a 64-bit id; a unit is counted once and remembers whether it was
 * admitted, so every repeat of a request gets the same answer without counting. */
#include "limits_impl.h"

#include "hash.h"

#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- units ---- */

static void units_clear(struct unit_set *u)
{
    /* A big transaction's table is released rather than kept for the whole life of the
     * policy connection. */
    if (u->cap > 64) {
        free(u->v);
        u->v = NULL;
        u->cap = 0;
    } else if (u->v != NULL && u->n > 0) { /* n == 0: every slot is free already */
        memset(u->v, 0, u->cap * sizeof(*u->v));
    }
    u->n = 0;
}

static struct unit_entry *units_find(const struct unit_set *u, uint64_t id)
{
    if (u->cap == 0)
        return NULL;
    for (size_t i = id & (u->cap - 1);; i = (i + 1) & (u->cap - 1)) {
        if (u->v[i].id == id)
            return &u->v[i];
        if (u->v[i].id == 0)
            return NULL;
    }
}

/* Inserts id (not present). NULL when full or out of memory: the unit is then simply
 * not remembered. */
static struct unit_entry *units_add(struct unit_set *u, uint64_t id)
{
    if (u->n >= MAX_UNITS)
        return NULL;
    if ((u->n + 1) * 2 > u->cap) {
        size_t ncap = u->cap ? u->cap * 2 : 16;
        struct unit_entry *nv = calloc(ncap, sizeof(*nv));
        if (nv == NULL)
            return NULL;
        for (size_t i = 0; i < u->cap; i++) {
            if (u->v[i].id == 0)
                continue;
            size_t j = u->v[i].id & (ncap - 1);
            while (nv[j].id != 0)
                j = (j + 1) & (ncap - 1);
            nv[j] = u->v[i];
        }
        free(u->v);
        u->v = nv;
        u->cap = ncap;
    }
    size_t i = id & (u->cap - 1);
    while (u->v[i].id != 0)
        i = (i + 1) & (u->cap - 1);
    u->v[i].id = id;
    u->v[i].amount = 0;
    u->v[i].denied = false;
    u->n++;
    return &u->v[i];
}

/* ---- sessions ---- */

struct limits_session *limits_session_new(void)
{
    return calloc(1, sizeof(struct limits_session));
}

void limits_session_free(struct limits_session *s)
{
    if (s == NULL)
        return;
    free(s->units[0].v);
    free(s->units[1].v);
    free(s);
}

static void new_transaction(struct limits_session *s)
{
    units_clear(&s->units[SCOPE_INSTANCE]);
    s->rcpt_seen = false;
    s->epoch++;
}

void limits_session_reset(struct limits_session *s)
{
    if (s == NULL)
        return;
    units_clear(&s->units[SCOPE_SESSION]);
    new_transaction(s);
    s->have_client = false;
    s->have_instance = false;
}

/* ---- plan and finish ---- */

static void decision_init(struct limits_decision *d, const struct limits_engine *e)
{
    memset(d, 0, sizeof(*d));
    d->action = e->default_action;
    d->rule = -1;
}

static void decision_rule(struct limits_decision *d, const struct limits_engine *e, int rule,
                          bool dryrun)
{
    d->deny = true;
    d->dryrun = dryrun;
    d->rule = rule;
    d->rule_name = e->rule[rule].name;
    d->rule_action = e->rule[rule].action;
    d->action = dryrun ? e->default_action : e->rule[rule].action;
}

static bool is_exempt(const struct limits_engine *e, const struct limits_req *q)
{
    if (q->client_ok && net_set_count(e->exempt_nets) > 0 &&
        net_set_contains(e->exempt_nets, &q->client))
        return true;
    size_t len;
    const char *v = attr(q->req, POLICY_SASL_USERNAME, &len);
    if (len > 0) {
        for (size_t i = 0; i < e->n_exempt_users; i++) {
            const char *u = e->exempt_users[i];
            if (strlen(u) != len)
                continue;
            size_t k = 0;
            while (k < len && lower(v[k]) == u[k])
                k++;
            if (k == len)
                return true;
        }
    }
    return false;
}

static uint64_t unit_id(uint64_t h)
{
    return h ? h : 1; /* 0 marks a free slot */
}

int limits_plan(struct limits_engine *e, struct limits_session *s, const struct policy_request *req,
                bool stressed, struct limits_plan *plan)
{
    if (e == NULL || s == NULL || req == NULL || plan == NULL)
        return -EINVAL;
    plan->n_ops = 0;
    plan->engine = e;
    plan->rcpt = 0;
    plan->cached_rule = -1;
    decision_init(&plan->decision, e);

    size_t len;
    const char *v;
    enum policy_state st = req->state;
    bool in_txn =
        st == POLICY_STATE_RCPT || st == POLICY_STATE_DATA || st == POLICY_STATE_END_OF_MESSAGE;

    /* One smtpd serves its SMTP sessions one after another on this policy connection: a
     * new client address or port means a new SMTP session. */
    v = attr(req, POLICY_CLIENT_ADDRESS, &len);
    uint64_t client = hash64_add(HASH64_START, v, len);
    v = attr(req, POLICY_CLIENT_PORT, &len);
    client = hash64_add(client, v, len);
    if (!s->have_client || s->client != client) {
        units_clear(&s->units[SCOPE_SESSION]);
        new_transaction(s);
        s->have_client = true;
        s->client = client;
        s->have_instance = false;
    }
    if (in_txn) {
        v = attr(req, POLICY_INSTANCE, &len);
        uint64_t inst = hash64_add(HASH64_START, v, len);
        if (!s->have_instance || s->instance != inst) {
            new_transaction(s);
            s->have_instance = true;
            s->instance = inst;
        }
    }
    plan->session_epoch = s->epoch;

    v = attr(req, POLICY_STRESS, &len);
    stressed = stressed || (len == 3 && strncasecmp(v, "yes", 3) == 0);
    plan->stressed = stressed;
    plan->decision.stressed = stressed;

    struct limits_req q;
    limits_req_init(&q, req);
    if (is_exempt(e, &q)) {
        plan->decision.exempt = true;
        return LIMITS_PLAN_DECIDED;
    }

    size_t rcpt_len = 0;
    const char *rcpt = attr(req, POLICY_RECIPIENT, &rcpt_len);
    int64_t size = attr_num(req, POLICY_SIZE);
    bool seen_any = false;
    bool rcpt_seen_before = s->rcpt_seen;
    if (st == POLICY_STATE_RCPT)
        s->rcpt_seen = true;
    /* The recipient's part of the unit id of each recipients rule, hashed once. */
    uint64_t rcpt_hash =
        st == POLICY_STATE_RCPT ? fnv64_add_lower(FNV64_OFFSET, rcpt, rcpt_len) : 0;

    for (size_t ri = 0; ri < e->n_rules; ri++) {
        const struct limits_rule *r = &e->rule[ri];
        int64_t amount = 0;
        int scope = SCOPE_INSTANCE;
        const char *suffix = NULL;

        switch (r->measure) {
        case LIMITS_CONNECTIONS:
            /* Counted at the first request of an SMTP session whose key is known,
             * whatever the state (with smtpd_delay_reject = yes that is the first
             * RCPT). */
            scope = SCOPE_SESSION;
            amount = 1;
            break;
        case LIMITS_MESSAGES:
            if (in_txn)
                amount = 1;
            break;
        case LIMITS_RECIPIENTS:
            if (st == POLICY_STATE_RCPT && rcpt_len > 0) {
                amount = 1;
                suffix = "r";
            } else if (st != POLICY_STATE_RCPT && in_txn && !rcpt_seen_before) {
                /* The policy is not called at RCPT: count the whole envelope once. */
                amount = attr_num(req, POLICY_RECIPIENT_COUNT);
                suffix = "n";
            }
            break;
        case LIMITS_BYTES:
            /* MAIL FROM SIZE at RCPT/DATA reserves early; END-OF-MESSAGE tops up to the
             * real size (a client may declare less than it sends). */
            if (in_txn)
                amount = size;
            break;
        }
        if (amount <= 0)
            continue;
        if (r->n_conds > 0 && !limits_conds_hold_req(r, &q))
            continue;

        /* The key "NAME:TAG:VALUE" is built in place: the rule's prefix, then the value. */
        struct limits_op *op = &plan->ops[plan->n_ops];
        memcpy(op->key, r->key_prefix, r->key_prefix_len);
        char *value = op->key + r->key_prefix_len;
        int vn = limits_key_value_req(r, &q, value, sizeof(op->key) - r->key_prefix_len);
        if (vn <= 0)
            continue;
        int64_t limit = r->limit, stress_limit = r->stress_limit;
        if (r->table != NULL || e->rt != NULL) {
            const struct net_addr *cap = NULL;
            if (r->table != NULL && r->table_type == LIMITS_TABLE_CIDR && q.client_ok)
                cap = &q.client;
            int64_t tv;
            if (limits_override(e, ri, value, (size_t)vn, cap, &tv) != LIMITS_SOURCE_RULE) {
                if (tv == LIMITS_TABLE_UNLIMITED)
                    continue;
                limit = stress_limit = tv;
            }
        }
        /* The hash of "NAME:TAG:" is the rule's: only the value is hashed here. */
        uint64_t h = hash64_add(r->key_hash, value, (size_t)vn);
        if (suffix != NULL) {
            h = hash64_mix(h, (unsigned char)suffix[0]);
            if (suffix[0] == 'r')
                h = hash64_mix(h, rcpt_hash);
        }
        uint64_t id = unit_id(h);
        const struct unit_entry *u = units_find(&s->units[scope], id);
        if (u != NULL) {
            seen_any = true;
            if (u->denied) {
                if (!r->dryrun) {
                    /* The answer already given for this unit stands; nothing else is
                     * counted for a request that is denied anyway. */
                    plan->n_ops = 0;
                    decision_rule(&plan->decision, e, (int)ri, false);
                    plan->decision.cached = true;
                    return LIMITS_PLAN_DECIDED;
                }
                if (plan->cached_rule < 0)
                    plan->cached_rule = (int)ri;
                continue;
            }
            if (r->measure != LIMITS_BYTES || amount <= u->amount)
                continue;
            amount -= u->amount;
        }

        /* The primary op: the rule's own window, its stress limit when stressed and
         * the stress window is the same. */
        op->keylen = r->key_prefix_len + (size_t)vn;
        op->window_ms = r->window_ms;
        op->limit = (stressed && r->has_stress && r->stress_window_ms == r->window_ms)
                        ? stress_limit
                        : limit;
        op->amount = amount;
        op->rule = (uint16_t)ri;
        op->enforce = true;
        op->scope = (uint8_t)scope;
        op->unit = id;
        plan->n_ops++;
        if (r->has_stress && r->stress_window_ms != r->window_ms) {
            /* A separate stress counter, counted always so it is warm when stress
             * starts, enforced only under stress. */
            struct limits_op *op2 = &plan->ops[plan->n_ops++];
            op2->keylen = limits_key_join(op2->key, sizeof(op2->key), r->name, r->stress_tag, value,
                                          (size_t)vn);
            op2->window_ms = r->stress_window_ms;
            op2->limit = stressed ? stress_limit : LIMITS_COUNT_ONLY;
            op2->amount = amount;
            op2->rule = (uint16_t)ri;
            op2->enforce = stressed;
            op2->scope = (uint8_t)scope;
            op2->unit = 0; /* the primary op records the unit */
        }
    }

    if (plan->n_ops > 0)
        return LIMITS_PLAN_OPS;
    if (plan->cached_rule >= 0)
        decision_rule(&plan->decision, e, plan->cached_rule, true);
    plan->decision.cached = seen_any;
    return LIMITS_PLAN_DECIDED;
}

int limits_finish(struct limits_engine *e, struct limits_session *s, const struct limits_plan *plan,
                  const struct window_result *results, struct limits_decision *out)
{
    if (e == NULL || s == NULL || plan == NULL || out == NULL)
        return -EINVAL;
    if (plan->engine != e)
        return -ESTALE;
    decision_init(out, e);
    out->stressed = plan->stressed;
    if (results == NULL) {
        out->store_failed = true;
        out->action = NULL;
        return 0;
    }
    bool remember = plan->session_epoch == s->epoch;
    int deny_i = -1, dry_i = -1;

    for (size_t i = 0; i < plan->n_ops; i++) {
        const struct limits_op *op = &plan->ops[i];
        bool denied = op->enforce && !results[i].allowed;
        if (denied) {
            if (e->rule[op->rule].dryrun) {
                if (dry_i < 0)
                    dry_i = (int)i;
            } else if (deny_i < 0) {
                deny_i = (int)i;
            }
        }
        if (!remember)
            continue;
        uint64_t id = op->unit;
        if (id == 0) {
            /* A rule's second op: its verdict goes to the unit of the op before it. */
            if (i == 0 || !denied)
                continue;
            id = plan->ops[i - 1].unit;
        }
        struct unit_set *set = &s->units[op->scope];
        struct unit_entry *u = units_find(set, id);
        if (u == NULL)
            u = units_add(set, id);
        if (u == NULL)
            continue;
        if (denied)
            u->denied = true;
        else if (op->unit != 0 && results[i].allowed)
            u->amount += op->amount;
    }

    int pick = deny_i;
    bool dry = false;
    if (pick < 0 && (dry_i >= 0 || plan->cached_rule >= 0)) {
        dry = true;
        pick = dry_i;
        if (pick < 0 || (plan->cached_rule >= 0 && plan->cached_rule < plan->ops[pick].rule)) {
            decision_rule(out, e, plan->cached_rule, true);
            out->cached = true;
            return 0;
        }
    }
    if (pick >= 0) {
        const struct limits_op *op = &plan->ops[pick];
        decision_rule(out, e, op->rule, dry);
        out->count = results[pick].count;
        out->limit = op->limit;
        out->window_ms = op->window_ms;
        out->key = op->key;
    }
    return 0;
}
