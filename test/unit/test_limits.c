/* Unit tests of lib/limits.c: rule parsing (with FILE:LINE errors from
 * test/data/limits/bad_rules.tsv), key derivation, deduplication of what Postfix asks
 * again, stress limits, exemptions, dryrun, and exact enforcement end to end in pure
 * logic: requests go through the real policy parser, counter ops through lib/window.c
 * in a tiny in-test store. Linked with --wrap=malloc,realloc,calloc so that the Nth
 * allocation can be made to fail. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "limits_engine.h"
#include "limits_rt.h"
#include "policy.h"
#include "window.h"

#define DATA_DIR TEST_DATA "/limits/"

/* --- allocation control ------------------------------------------------------------ */

void *__real_malloc(size_t n);
void *__real_realloc(void *ptr, size_t n);
void *__real_calloc(size_t n, size_t m);
void *__wrap_malloc(size_t n);
void *__wrap_realloc(void *ptr, size_t n);
void *__wrap_calloc(size_t n, size_t m);

static long alloc_count;  /* allocations since alloc_reset() */
static long alloc_fail_n; /* fail the allocation with this number; 0: none */

static void alloc_reset(long fail_n)
{
    alloc_count = 0;
    alloc_fail_n = fail_n;
}

static bool alloc_should_fail(void)
{
    alloc_count++;
    return alloc_fail_n > 0 && alloc_count == alloc_fail_n;
}

void *__wrap_malloc(size_t n)
{
    return alloc_should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_realloc(void *ptr, size_t n)
{
    return alloc_should_fail() ? NULL : __real_realloc(ptr, n);
}

void *__wrap_calloc(size_t n, size_t m)
{
    return alloc_should_fail() ? NULL : __real_calloc(n, m);
}

/* --- helpers ------------------------------------------------------------------------ */

static struct config *load_config(const char *text, struct config_errors *errs)
{
    struct config *cfg = NULL;
    int rc = config_parse_buffer("test.cf", text, strlen(text), &cfg, errs);
    if (rc != 0) {
        for (size_t i = 0; errs && i < errs->n; i++)
            print_error("config: %s\n", errs->msg[i]);
        fail_msg("config_parse_buffer: %d", rc);
    }
    return cfg;
}

static struct limits_engine *engine_from(const char *text)
{
    struct config_errors errs = {0};
    struct config *cfg = load_config(text, &errs);
    struct limits_engine *e = limits_engine_new(cfg, &errs);
    if (e == NULL) {
        for (size_t i = 0; i < errs.n; i++)
            print_error("limits: %s\n", errs.msg[i]);
        fail_msg("limits_engine_new failed");
    }
    config_errors_clear(&errs);
    config_free(cfg);
    return e;
}

/* One request through the real parser: "name=value" lines separated by '\n' (the
 * terminating empty line is added). Valid until the next call. */
static struct policy_parser *req_parser;

static const struct policy_request *mkreq(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static const struct policy_request *mkreq(const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(buf) - 2);
    buf[n++] = '\n';
    buf[n++] = '\n';
    if (req_parser == NULL)
        req_parser = policy_parser_new(NULL);
    assert_non_null(req_parser);
    policy_parser_reset(req_parser);
    size_t used = 0;
    assert_int_equal(policy_parser_feed(req_parser, buf, (size_t)n, &used), POLICY_DONE);
    assert_int_equal(used, (size_t)n);
    return policy_parser_request(req_parser);
}

/* A tiny store: key -> struct window, using lib/window.c, so the tests see the same
 * arithmetic as the daemon's memory store. It counts what it is asked. */
struct tstore {
    struct {
        char key[LIMITS_KEY_MAX];
        struct window w;
    } e[64];
    size_t n;
    int64_t now;
    unsigned calls;  /* round trips */
    unsigned ops;    /* ops executed */
    int64_t amounts; /* sum of amounts asked */
    struct limits_op last[LIMITS_MAX_OPS];
    size_t n_last;
};

static struct window *tstore_get(struct tstore *t, const char *key)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->e[i].key, key) == 0)
            return &t->e[i].w;
    assert_true(t->n < 64);
    snprintf(t->e[t->n].key, sizeof(t->e[t->n].key), "%s", key);
    window_init(&t->e[t->n].w);
    return &t->e[t->n++].w;
}

/* plan -> store -> finish, as the daemon does. Returns the plan status. */
static int decide(struct tstore *t, struct limits_engine *e, struct limits_session *s,
                  const struct policy_request *req, bool stressed, struct limits_decision *d)
{
    static struct limits_plan plan;
    int rc = limits_plan(e, s, req, stressed, &plan);
    assert_true(rc == LIMITS_PLAN_DECIDED || rc == LIMITS_PLAN_OPS);
    if (rc == LIMITS_PLAN_DECIDED) {
        *d = plan.decision;
        return rc;
    }
    struct window_result res[LIMITS_MAX_OPS];
    t->calls++;
    assert_true(plan.n_ops >= 1 && plan.n_ops <= LIMITS_MAX_OPS);
    for (size_t i = 0; i < plan.n_ops; i++) {
        const struct limits_op *op = &plan.ops[i];
        assert_true(op->amount >= 1);
        assert_null(strpbrk(op->key, " \t\r\n"));
        assert_int_equal(window_take(tstore_get(t, op->key), t->now, op->window_ms, op->limit,
                                     op->amount, &res[i]),
                         0);
        t->ops++;
        t->amounts += op->amount;
        t->last[i] = *op;
    }
    t->n_last = plan.n_ops;
    assert_int_equal(limits_finish(e, s, &plan, res, d), 0);
    return rc;
}

#define RCPT_FMT                                                                                   \
    "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=%s\nclient_port=%s\n"        \
    "sender=%s\nrecipient=%s\ninstance=%s\nsasl_username=%s\nsize=%s"

static const struct policy_request *rcpt(const char *addr, const char *port, const char *inst,
                                         const char *to)
{
    return mkreq(RCPT_FMT, addr, port, "s@example.org", to, inst, "", "");
}

/* --- rule parsing ------------------------------------------------------------------- */

static const char *example_cf =
    "limits =\n"
    "    per_ip      client_address       recipients  200/1m   stress 40/1m\n"
    "    per_net     client_address/24/64 connections 300/1m\n"
    "    # a comment inside the block\n"
    "    per_user    sasl_username        recipients  2000/1d  action 450 4.7.1 Daily quota "
    "reached\n"
    "    per_sender  sender               messages    500/1h dryrun\n"
    "    big_sender  sasl_username        bytes       500M/1d stress 100M/1h\n"
    "    combo       sasl_username+recipient_domain recipients 50/10m\n";

/* The rules of the README's example (overrides aside). */
static const char *conditions_cf =
    "limits =\n"
    "    sub_user  sasl_username        recipients 1000/1h  if policy_context=submission\n"
    "    mx_ip     client_address       recipients 200/1m   if policy_context!=submission\n"
    "    helo      helo_name            connections 60/1m\n"
    "    bulk      sender_domain        messages   500/1h   if sender_domain~^(news|promo)\\.\n"
    "    nets      client_address/24/64 connections 300/1m  if "
    "client_address!=192.0.2.0/24,2001:db8::/32\n"
    "    port      server_address+server_port connections 10/1s if server_port=25 "
    "if client_name=unknown action 450 4.7.1 Slow down\n";

static void test_limits_parses_example_rules(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from(example_cf);
    assert_int_equal(limits_engine_rule_count(e), 6);
    const struct limits_rule *r = limits_engine_rule(e, 0);
    assert_string_equal(r->name, "per_ip");
    assert_int_equal(r->measure, LIMITS_RECIPIENTS);
    assert_int_equal(r->limit, 200);
    assert_int_equal(r->window_ms, 60000);
    assert_true(r->has_stress);
    assert_int_equal(r->stress_limit, 40);
    assert_int_equal(r->stress_window_ms, 60000);
    assert_string_equal(r->tag, r->stress_tag);
    assert_string_equal(r->action, "450 4.7.1 Rate limit exceeded, try again later (per_ip)");
    assert_false(r->dryrun);
    assert_int_equal(r->line, 2);

    r = limits_engine_rule(e, 1);
    assert_int_equal(r->measure, LIMITS_CONNECTIONS);
    assert_int_equal(r->v4len, 24);
    assert_int_equal(r->v6len, 64);
    assert_string_equal(r->key_spec, "client_address/24/64");
    assert_false(r->has_stress);
    assert_int_equal(r->line, 3);

    r = limits_engine_rule(e, 2);
    assert_string_equal(r->action, "450 4.7.1 Daily quota reached");
    assert_int_equal(r->window_ms, 86400000);
    assert_int_equal(r->line, 5); /* the comment line is counted */

    r = limits_engine_rule(e, 3);
    assert_true(r->dryrun);
    assert_int_equal(r->measure, LIMITS_MESSAGES);

    r = limits_engine_rule(e, 4);
    assert_int_equal(r->limit, 500LL * 1024 * 1024);
    assert_int_equal(r->stress_limit, 100LL * 1024 * 1024);
    assert_int_equal(r->stress_window_ms, 3600000);
    assert_string_not_equal(r->tag, r->stress_tag);

    r = limits_engine_rule(e, 5);
    assert_int_equal(r->n_parts, 2);
    assert_string_equal(r->key_spec, "sasl_username+recipient_domain");
    assert_null(limits_engine_rule(e, 6));
    limits_engine_free(e);

    e = engine_from(conditions_cf);
    assert_int_equal(limits_engine_rule_count(e), 6);
    r = limits_engine_rule(e, 0);
    assert_int_equal(r->n_conds, 1);
    assert_int_equal(r->cond[0].attr, POLICY_POLICY_CONTEXT);
    assert_int_equal(r->cond[0].op, LIMITS_COND_EQ);
    assert_string_equal(r->cond[0].text, "policy_context=submission");
    assert_int_equal(limits_engine_rule(e, 1)->cond[0].op, LIMITS_COND_NE);
    assert_int_equal(limits_engine_rule(e, 2)->n_conds, 0);
    assert_string_equal(limits_engine_rule(e, 2)->key_spec, "helo_name");
    r = limits_engine_rule(e, 3);
    assert_int_equal(r->cond[0].attr, LIMITS_ATTR_SENDER_DOMAIN);
    assert_int_equal(r->cond[0].op, LIMITS_COND_RE);
    r = limits_engine_rule(e, 5);
    assert_string_equal(r->key_spec, "server_address+server_port");
    assert_int_equal(r->n_conds, 2);
    assert_string_equal(r->action, "450 4.7.1 Slow down");
    limits_engine_free(e);
}

static void test_limits_reports_bad_rules_with_file_line(void **state)
{
    (void)state;
    FILE *f = fopen(DATA_DIR "bad_rules.tsv", "r");
    assert_non_null(f);
    char line[1024];
    int cases = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        line[strcspn(line, "\n")] = '\0';
        char *tab = strchr(line, '\t');
        assert_non_null(tab);
        *tab = '\0';
        char text[1200], want[1100];
        snprintf(text, sizeof(text),
                 "# test\nlimits =\n    ok_rule client_address recipients 10/1m\n"
                 "    # comment\n    %s\n    last_rule sender messages 5/1h\n",
                 line);
        snprintf(want, sizeof(want), "test.cf:5: %s", tab + 1);
        struct config_errors errs = {0};
        struct config *cfg = load_config(text, &errs);
        struct limits_engine *e = limits_engine_new(cfg, &errs);
        if (e != NULL)
            fail_msg("accepted: %s", line);
        if (errs.n != 1 || strcmp(errs.msg[0], want) != 0)
            fail_msg("rule: %s\n  want: %s\n  got:  %s (%zu messages)", line, want,
                     errs.n ? errs.msg[0] : "(none)", errs.n);
        config_errors_clear(&errs);
        config_free(cfg);
        cases++;
    }
    fclose(f);
    assert_true(cases >= 30);
}

static void test_limits_reports_other_setting_errors(void **state)
{
    (void)state;
    static const struct {
        const char *cf;
        const char *want;
    } cases[] = {
        {"limits = a client_address recipients 1/1s\nlimit_exempt_networks = 192.0.2.1/24\n",
         "test.cf:2: limit_exempt_networks: bad network \"192.0.2.1/24\": host bits set"},
        {"limit_exempt_networks = 10.0.0.0/8,\n  bogus\n",
         "test.cf:1: limit_exempt_networks: bad network \"bogus\": bad address"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct config_errors errs = {0};
        struct config *cfg = load_config(cases[i].cf, &errs);
        assert_null(limits_engine_new(cfg, &errs));
        assert_int_equal(errs.n, 1);
        assert_string_equal(errs.msg[0], cases[i].want);
        config_errors_clear(&errs);
        config_free(cfg);
    }
    /* Too many rules. */
    char cf[8192] = "limits =\n";
    for (int i = 0; i <= LIMITS_MAX_RULES; i++) {
        size_t n = strlen(cf);
        snprintf(cf + n, sizeof(cf) - n, "  r%d client_address recipients 1/1m\n", i);
    }
    struct config_errors errs = {0};
    struct config *cfg = load_config(cf, &errs);
    assert_null(limits_engine_new(cfg, &errs));
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msg[0], "test.cf:34: limits: too many rules (at most 32)");
    config_errors_clear(&errs);
    config_free(cfg);
}

/* A rule that keeps name, key, measure and window keeps its counter keys across a
 * reload; a changed key, measure or window gets new ones. */
static void test_limits_keys_stable_across_reload(void **state)
{
    (void)state;
    static const struct {
        const char *rule;
        bool same;
    } cases[] = {
        {"r client_address/24/64 recipients 10/1m", true},
        {"r client_address/24/64 recipients 999/1m action 451 4.7.1 slow down", true},
        {"r client_address/24/64 recipients 10/60s dryrun", true},
        {"r client_address/24/64 recipients 10/1m stress 5/1m", true},
        {"r client_address/24 recipients 10/1m", false},
        {"r client_address/24/64 recipients 10/2m", false},
        {"r client_address/24/64 messages 10/1m", false},
        {"r client_address/24/64+sender recipients 10/1m", false},
    };
    struct limits_engine *base = engine_from("limits = other sender messages 1/1h\n"
                                             "  r client_address/24/64 recipients 10/1m\n");
    const char *tag = limits_engine_rule(base, 1)->tag;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char cf[256];
        snprintf(cf, sizeof(cf), "limits = %s\n", cases[i].rule);
        struct limits_engine *e = engine_from(cf);
        bool same = strcmp(limits_engine_rule(e, 0)->tag, tag) == 0;
        if (same != cases[i].same)
            fail_msg("%s: tag %s vs %s", cases[i].rule, limits_engine_rule(e, 0)->tag, tag);
        limits_engine_free(e);
    }
    /* And the full key string is the same for the same request. */
    struct limits_engine *e2 = engine_from("limits = r client_address/24/64 recipients 5/1m\n");
    struct limits_session *s1 = limits_session_new(), *s2 = limits_session_new();
    static struct limits_plan p1, p2;
    const struct policy_request *req = rcpt("192.0.2.9", "1000", "i1", "a@b.example");
    assert_int_equal(limits_plan(base, s1, req, false, &p1), LIMITS_PLAN_OPS);
    assert_int_equal(limits_plan(e2, s2, req, false, &p2), LIMITS_PLAN_OPS);
    assert_int_equal(p1.n_ops, 2); /* other's message, r's recipient */
    assert_string_equal(p1.ops[1].key, p2.ops[0].key);
    char want[64];
    snprintf(want, sizeof(want), "r:%s:192.0.2.0/24", tag);
    assert_string_equal(p1.ops[1].key, want);
    limits_session_free(s1);
    limits_session_free(s2);
    limits_engine_free(e2);
    limits_engine_free(base);
}

/* --- keys --------------------------------------------------------------------------- */

struct key_case {
    const char *key;
    const char *client, *sasl, *sender, *rcpt;
    const char *want; /* NULL: the rule does not match */
};

static const struct key_case key_cases[] = {
    {"client_address", "192.0.2.7", "", "", "", "192.0.2.7"},
    {"client_address/24/64", "192.0.2.7", "", "", "", "192.0.2.0/24"},
    {"client_address/24/64", "2001:db8:1:2:3::7", "", "", "", "2001:db8:1:2::/64"},
    {"client_address/24", "2001:db8:1:2:3::7", "", "", "", "2001:db8:1:2:3::7"},
    {"client_address/24/64", "::ffff:192.0.2.7", "", "", "", "192.0.2.0/24"},
    {"client_address", "::FFFF:192.0.2.7", "", "", "", "192.0.2.7"},
    {"client_address", "2001:DB8::0:7", "", "", "", "2001:db8::7"},
    {"client_address/0/0", "198.51.100.1", "", "", "", "0.0.0.0/0"},
    {"client_address", "unknown", "", "", "", NULL},
    {"client_address", "", "", "", "", NULL},
    {"sasl_username", "192.0.2.7", "Alice", "", "", "alice"},
    {"sasl_username", "192.0.2.7", "", "", "", NULL},
    {"sender", "192.0.2.7", "", "Bob@Example.COM", "", "bob@example.com"},
    {"sender", "192.0.2.7", "", "", "", NULL}, /* null sender */
    {"sender_domain", "192.0.2.7", "", "Bob@Example.COM", "", "example.com"},
    {"sender_domain", "192.0.2.7", "", "bob@example.com.", "", "example.com"},
    {"sender_domain", "192.0.2.7", "", "bob", "", NULL},
    {"sender_domain", "192.0.2.7", "", "\"a@b\"@Example.NET", "", "example.net"},
    {"recipient", "192.0.2.7", "", "", "Carol+Tag@Example.org", "carol+tag@example.org"},
    {"recipient_domain", "192.0.2.7", "", "", "carol@Sub.Example.org", "sub.example.org"},
    {"recipient_domain", "192.0.2.7", "", "", "postmaster", NULL},
    {"sasl_username+recipient_domain", "192.0.2.7", "Alice", "", "x@Dom.example",
     "alice|dom.example"},
    {"sasl_username+recipient_domain", "192.0.2.7", "", "", "x@dom.example", NULL},
    {"client_address/24/64+sender", "192.0.2.77", "", "A@B.C", "", "192.0.2.0/24|a@b.c"},
    {"recipient", "192.0.2.7", "", "", "a b|c%d#e@x", "a%20b%7Cc%25d%23e@x"},
    {"sasl_username", "192.0.2.7", "J\xc3\xb6rg", "", "", "j%C3%B6rg"},
};

static void test_limits_derives_keys(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
        const struct key_case *c = &key_cases[i];
        char cf[256];
        snprintf(cf, sizeof(cf), "limits = r %s recipients 10/1m\n", c->key);
        struct limits_engine *e = engine_from(cf);
        const struct policy_request *req =
            mkreq(RCPT_FMT, c->client, "1", c->sender, c->rcpt, "i", c->sasl, "");
        char out[LIMITS_MAX_VALUE + 1];
        int n = limits_key_value(limits_engine_rule(e, 0), req, out, sizeof(out));
        if (c->want == NULL) {
            if (n != 0)
                fail_msg("case %zu (%s): matched as \"%s\"", i, c->key, out);
        } else {
            if (n <= 0 || strcmp(out, c->want) != 0)
                fail_msg("case %zu (%s): want \"%s\" got \"%s\" (%d)", i, c->key, c->want,
                         n > 0 ? out : "", n);
        }
        limits_engine_free(e);
    }
}

/* Every attribute of the policy protocol can be a key part, alone or joined with '+';
 * an absent or empty one means the rule does not apply. */
static void test_limits_keys_from_every_attribute(void **state)
{
    (void)state;
    for (int a = 0; a < POLICY_ATTR_COUNT; a++) {
        const char *name = policy_attr_name((enum policy_attr)a);
        if (a == POLICY_CLIENT_ADDRESS)
            continue; /* grouped: test_limits_derives_keys */
        char cf[256], want[128];
        snprintf(cf, sizeof(cf), "limits = r %s+policy_context messages 10/1m\n", name);
        if (a == POLICY_POLICY_CONTEXT) {
            struct config_errors errs = {0};
            struct config *cfg = load_config(cf, &errs);
            assert_null(limits_engine_new(cfg, &errs));
            assert_string_equal(errs.msg[0],
                                "test.cf:1: limits: rule r: key part policy_context given twice");
            config_errors_clear(&errs);
            config_free(cfg);
            continue;
        }
        struct limits_engine *e = engine_from(cf);
        const struct limits_rule *r = limits_engine_rule(e, 0);
        assert_non_null(r);
        assert_int_equal(r->n_parts, 2);
        char spec[160];
        snprintf(spec, sizeof(spec), "%s+policy_context", name);
        assert_string_equal(r->key_spec, spec);
        const struct policy_request *req = mkreq(
            "request=smtpd_access_policy\nprotocol_state=RCPT\ninstance=i\npolicy_context=Sub\n"
            "%s=Val %s",
            name, name);
        char out[LIMITS_MAX_VALUE + 1];
        int n = limits_key_value(r, req, out, sizeof(out));
        snprintf(want, sizeof(want), "val%%20%s|sub", name);
        if (n <= 0 || strcmp(out, want) != 0)
            fail_msg("%s: want \"%s\" got \"%s\" (%d)", name, want, n > 0 ? out : "", n);
        /* Absent, and sent empty: the rule does not apply. */
        req = mkreq("request=smtpd_access_policy\nprotocol_state=RCPT\npolicy_context=sub");
        if (a != POLICY_REQUEST && a != POLICY_PROTOCOL_STATE)
            assert_int_equal(limits_key_value(r, req, out, sizeof(out)), 0);
        req = mkreq("request=smtpd_access_policy\nprotocol_state=RCPT\npolicy_context=sub\n%s=",
                    name);
        assert_int_equal(limits_key_value(r, req, out, sizeof(out)), 0);
        limits_engine_free(e);
    }
}

/* Conditions, one rule per case, against one request each. */
static const struct cond_case {
    const char *conds;
    const char *attrs; /* extra request lines */
    bool hold;
} cond_cases[] = {
    {"if policy_context=submission", "policy_context=submission", true},
    {"if policy_context=submission", "policy_context=SUBMISSION", true},
    {"if policy_context=submission", "policy_context=submissionx", false},
    {"if policy_context=submission", "", false},                /* absent equals nothing */
    {"if policy_context=submission", "policy_context=", false}, /* empty too */
    {"if policy_context!=submission", "", true},
    {"if policy_context!=submission", "policy_context=submission", false},
    {"if policy_context!=submission", "policy_context=smtp", true},
    {"if server_port=587,465", "server_port=465", true},
    {"if server_port=587,465", "server_port=25", false},
    {"if server_port!=587,465", "server_port=25", true},
    {"if server_port!=587,465", "server_port=587", false},
    {"if sender_domain~^(news|promo)\\.", "sender=x@News.example.com", true},
    {"if sender_domain~^(news|promo)\\.", "sender=x@promo.example.com.", true},
    {"if sender_domain~^(news|promo)\\.", "sender=news@example.com", false},
    {"if sender_domain~^(news|promo)\\.", "sender=", false},
    {"if sender_domain~.*", "", false}, /* absent matches no regex */
    {"if recipient_domain=example.org", "recipient=a@EXAMPLE.org", true},
    {"if recipient_domain=example.org", "recipient=example.org", false},
    {"if helo_name~^[^.]+$", "helo_name=localhost", true},
    {"if helo_name~^[^.]+$", "helo_name=mx.example.org", false},
    {"if client_address!=192.0.2.0/24,2001:db8::/32", "client_address=192.0.2.9", false},
    {"if client_address!=192.0.2.0/24,2001:db8::/32", "client_address=2001:db8::1", false},
    {"if client_address!=192.0.2.0/24,2001:db8::/32", "client_address=198.51.100.1", true},
    {"if client_address!=192.0.2.0/24,2001:db8::/32", "", true},
    {"if client_address=192.0.2.0/24", "client_address=192.0.2.200", true},
    {"if client_address=192.0.2.0/24", "client_address=::ffff:192.0.2.200", true},
    {"if client_address=192.0.2.0/24", "client_address=unknown", false},
    {"if server_address=10.0.0.1", "server_address=10.0.0.1", true},
    {"if server_address=10.0.0.1", "server_address=10.0.0.2", false},
    /* several ifs: all must hold */
    {"if policy_context=submission if sasl_method=plain,login",
     "policy_context=submission\nsasl_method=LOGIN", true},
    {"if policy_context=submission if sasl_method=plain,login",
     "policy_context=submission\nsasl_method=cram-md5", false},
    {"if policy_context=submission if sasl_method=plain,login", "sasl_method=plain", false},
    {"if sasl_username~^[a-z]+@example\\.org$ if sasl_username!=admin@example.org",
     "sasl_username=Bob@Example.org", true},
    {"if sasl_username~^[a-z]+@example\\.org$ if sasl_username!=admin@example.org",
     "sasl_username=admin@example.org", false},
};

static void test_limits_conditions(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cond_cases) / sizeof(cond_cases[0]); i++) {
        const struct cond_case *c = &cond_cases[i];
        char cf[512];
        snprintf(cf, sizeof(cf), "limits = r helo_name messages 10/1m %s action 451 4.7.1 x\n",
                 c->conds);
        struct limits_engine *e = engine_from(cf);
        const struct limits_rule *r = limits_engine_rule(e, 0);
        assert_string_equal(r->action, "451 4.7.1 x");
        const struct policy_request *req =
            mkreq("request=smtpd_access_policy\nprotocol_state=RCPT%s%s", *c->attrs ? "\n" : "",
                  c->attrs);
        if (limits_conds_hold(r, req) != c->hold)
            fail_msg("case %zu: \"%s\" with \"%s\": want %s", i, c->conds, c->attrs,
                     c->hold ? "hold" : "fail");
        limits_engine_free(e);
    }
}

/* A rule whose conditions fail neither counts nor limits; the one whose conditions hold
 * does: the same user limited differently on port 25 and on submission. */
static void test_limits_failing_conditions_neither_count_nor_limit(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from(
        "limits =\n"
        "  sub sasl_username recipients 3/1h if policy_context=submission\n"
        "  mx  sasl_username recipients 1/1h if policy_context!=submission action 450 4.7.1 mx\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 1000000};
    struct limits_decision d;
#define fmt                                                                                        \
    "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.1\n"                 \
    "client_port=%d\ninstance=i%d\nsasl_username=alice\nrecipient=r%d@x%s"
    /* submission: three recipients pass, the fourth is refused by sub; mx not counted */
    for (int i = 0; i < 4; i++) {
        decide(&t, e, s, mkreq(fmt, 1, 1, i, "\npolicy_context=submission"), false, &d);
        assert_int_equal(t.n_last, 1);
        assert_int_equal(strncmp(t.last[0].key, "sub:", 4), 0);
        assert_int_equal(d.deny, i == 3);
    }
    /* port 25: only mx counts, from zero */
    decide(&t, e, s, mkreq(fmt, 2, 2, 0, ""), false, &d);
    assert_int_equal(t.n_last, 1);
    assert_int_equal(strncmp(t.last[0].key, "mx:", 3), 0);
    assert_false(d.deny);
    decide(&t, e, s, mkreq(fmt, 2, 2, 1, ""), false, &d);
    assert_true(d.deny);
    assert_string_equal(d.action, "450 4.7.1 mx");
    /* A request no rule's conditions admit is decided without a store round trip. */
    struct limits_engine *e2 =
        engine_from("limits = sub sasl_username recipients 3/1h if policy_context=submission\n");
    struct limits_plan *plan = malloc(sizeof(*plan));
    assert_int_equal(limits_plan(e2, s, mkreq(fmt, 3, 3, 0, ""), false, plan), LIMITS_PLAN_DECIDED);
    assert_false(plan->decision.deny);
    free(plan);
#undef fmt
    limits_engine_free(e2);
    limits_session_free(s);
    limits_engine_free(e);
}

static void test_limits_hashes_long_key_values(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = r recipient recipients 10/1m\n");
    char local[201];
    memset(local, 'a', 200);
    local[200] = '\0';
    char out[LIMITS_MAX_VALUE + 1], out2[LIMITS_MAX_VALUE + 1];
    const struct policy_request *req = mkreq(RCPT_FMT, "192.0.2.1", "1", "", local, "i", "", "");
    int n = limits_key_value(limits_engine_rule(e, 0), req, out, sizeof(out));
    assert_int_equal(n, 17);
    assert_int_equal(out[0], '#');
    /* Hashing is case-insensitive like the short form. */
    local[0] = 'A';
    req = mkreq(RCPT_FMT, "192.0.2.1", "1", "", local, "i", "", "");
    assert_int_equal(limits_key_value(limits_engine_rule(e, 0), req, out2, sizeof(out2)), 17);
    assert_string_equal(out, out2);
    local[1] = 'b';
    req = mkreq(RCPT_FMT, "192.0.2.1", "1", "", local, "i", "", "");
    limits_key_value(limits_engine_rule(e, 0), req, out2, sizeof(out2));
    assert_string_not_equal(out, out2);
    /* Exactly LIMITS_MAX_VALUE characters still fit unhashed. */
    local[0] = 'a';
    local[1] = 'a';
    local[LIMITS_MAX_VALUE] = '\0';
    req = mkreq(RCPT_FMT, "192.0.2.1", "1", "", local, "i", "", "");
    assert_int_equal(limits_key_value(limits_engine_rule(e, 0), req, out, sizeof(out)),
                     LIMITS_MAX_VALUE);
    limits_engine_free(e);
}

/* --- override tables ------------------------------------------------------------- */

/* Writes text to a new temporary file; returns its path (static buffer per slot). */
static const char *tmpfile_with(int slot, const char *text)
{
    static char paths[4][64];
    snprintf(paths[slot], sizeof(paths[slot]), "/tmp/postsurge-limits-XXXXXX");
    int fd = mkstemp(paths[slot]);
    assert_true(fd >= 0);
    size_t n = strlen(text);
    assert_int_equal(write(fd, text, n), (ssize_t)n);
    close(fd);
    return paths[slot];
}

static const struct table_case {
    enum limits_table_type type;
    bool bytes;
    const char *text;
    const char *err; /* NULL: parses; else the first message after "FILE:" */
} table_cases[] = {
    {LIMITS_TABLE_TEXTHASH, false, "# quotas\n\nalice@example.org 10\nBob 0\ncarol unlimited\n",
     NULL},
    {LIMITS_TABLE_TEXTHASH, false, "alice 10\n  continued\n",
     "2: a line that starts with blanks (continuation lines are not supported)"},
    {LIMITS_TABLE_TEXTHASH, false, "alice\n", "1: \"alice\": expected KEY VALUE"},
    {LIMITS_TABLE_TEXTHASH, false, "a 1\nalice ten\n",
     "2: \"ten\": bad value: expected a count, 0 or unlimited"},
    {LIMITS_TABLE_TEXTHASH, false, "alice 10K\n",
     "1: \"10K\": bad value: expected a count, 0 or unlimited"},
    {LIMITS_TABLE_TEXTHASH, true, "alice 10K\nbob 5M\n", NULL},
    {LIMITS_TABLE_TEXTHASH, true, "alice 10T\n",
     "1: \"10T\": bad value: a count with K, M or G, 0 or unlimited"},
    {LIMITS_TABLE_TEXTHASH, false, "alice 10 20\n",
     "1: \"alice 10 20\": the value is one word: a count, 0 or unlimited"},
    {LIMITS_TABLE_TEXTHASH, false, "alice 99999999999999999\n",
     "1: \"99999999999999999\": bad value: expected a count, 0 or unlimited"},
    {LIMITS_TABLE_CIDR, false, "192.0.2.0/24 5\n2001:db8::/32 unlimited\n10.0.0.1 0\n", NULL},
    {LIMITS_TABLE_CIDR, false, "192.0.2.1/24 5\n", "1: \"192.0.2.1/24\": host bits set"},
    {LIMITS_TABLE_CIDR, false, "# x\nif 192.0.2.0/24\n",
     "2: \"192.0.2.0/24\": bad value: expected a count, 0 or unlimited"},
    {LIMITS_TABLE_CIDR, false, "!192.0.2.0/24 5\n", "1: \"!192.0.2.0/24\": bad address"},
};

static void test_limits_table_parses_and_reports_file_line(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(table_cases) / sizeof(table_cases[0]); i++) {
        const struct table_case *c = &table_cases[i];
        struct config_errors errs = {0};
        struct limits_table *t = NULL;
        int rc =
            limits_table_parse(c->type, "/etc/q", c->text, strlen(c->text), c->bytes, &t, &errs);
        if (c->err == NULL) {
            if (rc != 0)
                fail_msg("case %zu: %s", i, errs.n ? errs.msg[0] : "?");
            assert_non_null(t);
        } else {
            char want[256];
            snprintf(want, sizeof(want), "/etc/q:%s", c->err);
            assert_int_equal(rc, -EINVAL);
            assert_null(t);
            if (errs.n < 1 || strcmp(errs.msg[0], want) != 0)
                fail_msg("case %zu: want %s got %s", i, want, errs.n ? errs.msg[0] : "(none)");
        }
        limits_table_free(t);
        config_errors_clear(&errs);
    }
    /* Every bad line is reported, up to a bound. */
    char big[4096] = "";
    for (int i = 0; i < 30; i++)
        strcat(big, "x y\n");
    struct config_errors errs = {0};
    struct limits_table *t = NULL;
    assert_int_equal(
        limits_table_parse(LIMITS_TABLE_TEXTHASH, "f", big, strlen(big), false, &t, &errs),
        -EINVAL);
    assert_int_equal(errs.n, LIMITS_TABLE_MAX_ERRORS + 1);
    assert_string_equal(errs.msg[LIMITS_TABLE_MAX_ERRORS], "f:30: 10 more errors not shown");
    config_errors_clear(&errs);
    /* Lookups: texthash by key value (case-insensitive, %XX kept uppercase), cidr first
     * match. */
    const char *text = "Alice@Example.org 10\nj%c3%b6rg 3\nbob 0\ncarol unlimited\ncarol 7\n";
    assert_int_equal(
        limits_table_parse(LIMITS_TABLE_TEXTHASH, "f", text, strlen(text), false, &t, NULL), 0);
    assert_int_equal(limits_table_count(t), 4);
    int64_t v;
    assert_true(limits_table_lookup(t, "alice@example.org", 17, NULL, &v));
    assert_int_equal(v, 10);
    assert_true(limits_table_lookup(t, "j%C3%B6rg", 9, NULL, &v));
    assert_int_equal(v, 3);
    assert_true(limits_table_lookup(t, "bob", 3, NULL, &v));
    assert_int_equal(v, 0);
    assert_true(limits_table_lookup(t, "carol", 5, NULL, &v)); /* a later line wins */
    assert_int_equal(v, 7);
    assert_false(limits_table_lookup(t, "dave", 4, NULL, &v));
    limits_table_free(t);
    text = "192.0.2.128/25 1\n192.0.2.0/24 2\n::/0 unlimited\n";
    assert_int_equal(
        limits_table_parse(LIMITS_TABLE_CIDR, "f", text, strlen(text), false, &t, NULL), 0);
    struct net_addr a;
    assert_int_equal(net_addr_parse("192.0.2.200", 11, &a), 0);
    assert_true(limits_table_lookup(t, NULL, 0, &a, &v));
    assert_int_equal(v, 1);
    assert_int_equal(net_addr_parse("192.0.2.2", 9, &a), 0);
    assert_true(limits_table_lookup(t, NULL, 0, &a, &v));
    assert_int_equal(v, 2);
    assert_int_equal(net_addr_parse("2001:db8::1", 11, &a), 0);
    assert_true(limits_table_lookup(t, NULL, 0, &a, &v));
    assert_int_equal(v, LIMITS_TABLE_UNLIMITED);
    assert_int_equal(net_addr_parse("198.51.100.1", 12, &a), 0);
    assert_false(limits_table_lookup(t, NULL, 0, &a, &v));
    limits_table_free(t);
}

/* The table's value beats the rule's; unlimited neither limits nor counts; 0 refuses
 * every unit; a key without an entry keeps the rule's limit. */
static void test_limits_table_precedence(void **state)
{
    (void)state;
    const char *path = tmpfile_with(0, "alice 3\nbob 0\ncarol unlimited\n");
    const char *cpath = tmpfile_with(1, "192.0.2.0/24 1\n");
    char cf[512];
    snprintf(cf, sizeof(cf),
             "limits =\n  per_user sasl_username recipients 2/1h overrides texthash:%s "
             "action 450 4.7.1 quota\n  per_ip client_address recipients 5/1h overrides cidr:%s\n",
             path, cpath);
    struct limits_engine *e = engine_from(cf);
    assert_int_equal(limits_table_count(limits_engine_rule(e, 0)->table), 3);
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 1000000};
    struct limits_decision d;
    static const struct {
        const char *user, *client;
        int admitted; /* of 6 recipients */
        int user_ops; /* ops of per_user on the first */
    } cases[] = {
        {"alice", "198.51.100.1", 3, 1}, /* table: 3 */
        {"bob", "198.51.100.2", 0, 1},   /* table: 0 */
        {"carol", "198.51.100.3", 5, 0}, /* unlimited: per_ip's 5 decide, carol not counted */
        {"dave", "198.51.100.4", 2, 1},  /* no entry: the rule's 2 */
        {"erin", "192.0.2.9", 1, 1},     /* cidr: 1 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int ok = 0;
        for (int k = 0; k < 6; k++) {
            char to[32];
            snprintf(to, sizeof(to), "r%d@x", k);
            decide(&t, e, s,
                   mkreq(RCPT_FMT, cases[i].client, "1", "s@x", to, "i", cases[i].user, ""), false,
                   &d);
            if (!d.deny)
                ok++;
            if (k == 0) {
                int n = 0;
                for (size_t j = 0; j < t.n_last; j++)
                    n += strncmp(t.last[j].key, "per_user:", 9) == 0;
                if (n != cases[i].user_ops)
                    fail_msg("%s: %d per_user ops", cases[i].user, n);
            }
        }
        if (ok != cases[i].admitted)
            fail_msg("%s: admitted %d, want %d", cases[i].user, ok, cases[i].admitted);
    }
    /* A swapped table takes effect at the next request. */
    struct limits_table *nt = NULL;
    assert_int_equal(
        limits_table_parse(LIMITS_TABLE_TEXTHASH, "f", "dave 4\n", 7, false, &nt, NULL), 0);
    assert_int_equal(limits_engine_set_table(e, 0, nt), 0);
    decide(&t, e, s, mkreq(RCPT_FMT, "198.51.100.5", "1", "s@x", "new@x", "i", "dave", ""), false,
           &d);
    assert_false(d.deny);
    assert_int_equal(d.limit, 0);
    assert_int_equal(t.last[0].limit, 4);
    assert_int_equal(limits_engine_set_table(e, 1 + 1, NULL), -EINVAL);
    limits_session_free(s);
    limits_engine_free(e);

    /* Missing, bad and misplaced tables: FILE:LINE errors, no engine. */
    static const char *bad[] = {
        "limits = r sasl_username recipients 2/1h overrides texthash:/nonexistent/q\n",
        "limits = r sasl_username recipients 2/1h overrides hash:/etc/q\n",
        "limits = r sasl_username recipients 2/1h overrides texthash:relative\n",
        "limits = r sasl_username recipients 2/1h overrides cidr:/etc/q\n",
        "limits = r sasl_username recipients 2/1h overrides texthash:/a overrides texthash:/b\n",
        NULL,
    };
    static const char *want[] = {
        "/nonexistent/q:0: cannot open: No such file or directory",
        "test.cf:1: limits: rule r: overrides \"hash:/etc/q\": expected texthash:PATH or cidr:PATH",
        "test.cf:1: limits: rule r: overrides \"texthash:relative\": the path must be absolute",
        "test.cf:1: limits: rule r: overrides cidr: needs a key with client_address",
        "test.cf:1: limits: rule r: overrides given twice",
        "",
    };
    const char *broken = tmpfile_with(2, "ok 1\nbad line here\n");
    char bcf[256];
    snprintf(bcf, sizeof(bcf), "limits = r sasl_username recipients 2/1h overrides texthash:%s\n",
             broken);
    char bwant[256];
    snprintf(bwant, sizeof(bwant),
             "%s:2: \"bad line here\": the value is one word: a count, 0 or "
             "unlimited",
             broken);
    bad[5] = bcf;
    want[5] = bwant;
    for (size_t i = 0; i < 6; i++) {
        struct config_errors errs = {0};
        struct config *cfg = load_config(bad[i], &errs);
        assert_null(limits_engine_new(cfg, &errs));
        if (errs.n != 1 || strcmp(errs.msg[0], want[i]) != 0)
            fail_msg("case %zu: want %s got %s", i, want[i], errs.n ? errs.msg[0] : "(none)");
        config_errors_clear(&errs);
        config_free(cfg);
    }
    unlink(path);
    unlink(cpath);
    unlink(broken);
}

/* --- run-time overrides --------------------------------------------------------- */

static struct limits_rt_entry rt_entry(const char *rule, const char *value, int64_t count,
                                       int64_t expires_ms)
{
    struct limits_rt_entry en = {.count = count, .expires_ms = expires_ms};
    snprintf(en.rule, sizeof(en.rule), "%s", rule);
    snprintf(en.value, sizeof(en.value), "%s", value);
    return en;
}

/* Run-time > table > rule: a run-time entry beats the table's (also its 0 and its
 * unlimited), a key with no run-time entry keeps the table's, one in neither the rule's;
 * an entry of another rule changes nothing; a new set is in force at the next request;
 * the store's text form parses back; a set holds at most LIMITS_RT_MAX entries. */
static void test_limits_runtime_precedence(void **state)
{
    (void)state;
    const char *path = tmpfile_with(0, "alice 3\nbob 0\ncarol unlimited\n");
    char cf[512];
    snprintf(cf, sizeof(cf),
             "limits =\n  per_user sasl_username recipients 2/1h overrides texthash:%s\n"
             "  per_snd sender recipients 100/1h\n",
             path);
    struct limits_engine *e = engine_from(cf);
    struct limits_rt *rt = limits_rt_new();
    struct limits_rt_entry en[] = {
        rt_entry("per_user", "alice", 1, 0),                    /* beats the table's 3 */
        rt_entry("per_user", "bob", LIMITS_TABLE_UNLIMITED, 0), /* beats the table's 0 */
        rt_entry("per_user", "carol", 4, 0),                    /* beats unlimited */
        rt_entry("per_user", "erin", 5, 0),                     /* beats the rule's 2 */
        rt_entry("per_snd", "dave", 0, 0), /* another rule: not per_user's dave */
    };
    for (size_t i = 0; i < sizeof(en) / sizeof(en[0]); i++)
        assert_int_equal(limits_rt_add(rt, &en[i]), 0);
    limits_engine_set_runtime(e, rt);
    limits_rt_free(rt);
    assert_int_equal(limits_rt_count(limits_engine_runtime(e)), 5);
    int64_t v = 0;
    assert_int_equal(limits_override(e, 0, "alice", 5, NULL, &v), LIMITS_SOURCE_RUNTIME);
    assert_int_equal(v, 1);
    assert_int_equal(limits_override(e, 0, "frank", 5, NULL, &v), LIMITS_SOURCE_RULE);
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 1000000};
    struct limits_decision d;
    static const struct {
        const char *user;
        int admitted; /* of 6 recipients */
    } cases[] = {
        {"alice", 1}, {"bob", 6}, {"carol", 4}, {"dave", 2}, {"erin", 5},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int ok = 0;
        for (int k = 0; k < 6; k++) {
            char to[32];
            snprintf(to, sizeof(to), "r%d@x", k);
            decide(
                &t, e, s,
                mkreq(RCPT_FMT, "198.51.100.1", cases[i].user, "s@x", to, "i", cases[i].user, ""),
                false, &d);
            ok += !d.deny;
        }
        if (ok != cases[i].admitted)
            fail_msg("%s: admitted %d, want %d", cases[i].user, ok, cases[i].admitted);
    }
    /* A new set without alice: the table's 3 again (1 already counted). */
    struct limits_rt *rt2 = limits_rt_copy(limits_engine_runtime(e), 0, "per_user", "alice");
    assert_int_equal(limits_rt_count(rt2), 4);
    limits_engine_set_runtime(e, rt2);
    limits_rt_free(rt2);
    int ok = 0;
    for (int k = 0; k < 4; k++) {
        char to[32];
        snprintf(to, sizeof(to), "n%d@x", k);
        decide(&t, e, s, mkreq(RCPT_FMT, "198.51.100.1", "a2", "s@x", to, "i", "alice", ""), false,
               &d);
        ok += !d.deny;
    }
    assert_int_equal(ok, 2);
    /* An empty set is none at all. */
    struct limits_rt *empty = limits_rt_new();
    limits_engine_set_runtime(e, empty);
    limits_rt_free(empty);
    assert_null(limits_engine_runtime(e));
    limits_session_free(s);
    limits_engine_free(e);

    /* Expiry: a copy at now drops what ended at or before now. */
    rt = limits_rt_new();
    struct limits_rt_entry x1 = rt_entry("r", "a", 1, 5000), x2 = rt_entry("r", "b", 2, 0);
    assert_int_equal(limits_rt_add(rt, &x1), 0);
    assert_int_equal(limits_rt_add(rt, &x2), 0);
    assert_false(limits_rt_has_expired(rt, 4999));
    assert_true(limits_rt_has_expired(rt, 5000));
    rt2 = limits_rt_copy(rt, 5000, NULL, NULL);
    assert_int_equal(limits_rt_count(rt2), 1);
    assert_null(limits_rt_lookup(rt2, "r", "a", 1));
    assert_non_null(limits_rt_lookup(rt2, "r", "b", 1));
    limits_rt_free(rt2);
    /* The store's text form. */
    char f[LIMITS_RT_FIELD_MAX], val[48];
    struct limits_rt_entry back;
    assert_int_equal(limits_rt_field(&x1, f, sizeof(f)), 3);
    assert_string_equal(f, "r\ta");
    limits_rt_value(&x1, val, sizeof(val));
    assert_string_equal(val, "1 5000");
    assert_int_equal(limits_rt_parse(f, val, &back), 0);
    assert_int_equal(back.count, 1);
    assert_int_equal(back.expires_ms, 5000);
    assert_int_equal(limits_rt_parse("r\ta", "-1 0", &back), 0);
    assert_int_equal(back.count, LIMITS_TABLE_UNLIMITED);
    static const char *const bad[][2] = {{"ra", "1 0"},    {"\ta", "1 0"},    {"r\t", "1 0"},
                                         {"r\ta", "1"},    {"r\ta", "x 0"},   {"r\ta", "-2 0"},
                                         {"r\ta", "1 -5"}, {"r\ta\tb", "1 0"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (limits_rt_parse(bad[i][0], bad[i][1], &back) != -EINVAL)
            fail_msg("accepted \"%s\" \"%s\"", bad[i][0], bad[i][1]);
    /* The bound. */
    for (int i = 0; i < LIMITS_RT_MAX; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        struct limits_rt_entry y = rt_entry("r", k, i, 0);
        if (limits_rt_add(rt, &y) != 0 && i < LIMITS_RT_MAX - 2)
            fail_msg("entry %d refused", i);
    }
    assert_int_equal(limits_rt_count(rt), LIMITS_RT_MAX);
    struct limits_rt_entry over = rt_entry("r", "over", 1, 0);
    assert_int_equal(limits_rt_add(rt, &over), -E2BIG);
    x2.count = 9; /* replacing an entry is not adding one */
    assert_int_equal(limits_rt_add(rt, &x2), 0);
    assert_int_equal(limits_rt_lookup(rt, "r", "b", 1)->count, 9);
    limits_rt_free(rt);
}

/* What `limits show RULE VALUE` accepts: key values as the log writes them. */
static void test_limits_value_check(void **state)
{
    (void)state;
    struct limits_engine *e =
        engine_from("limits =\n"
                    "  net client_address/24/64 connections 9/1m\n"
                    "  ip client_address recipients 9/1m\n"
                    "  combo sasl_username+recipient_domain recipients 9/1m\n");
    static const struct {
        int rule;
        const char *in, *want; /* want NULL: refused, then the reason's start */
        const char *why;
    } cases[] = {
        {0, "192.0.2.0/24", "192.0.2.0/24", NULL},
        {0, "2001:DB8::/64", "2001:db8::/64", NULL},
        {0, "192.0.2.7", NULL, "rule net counts IPv4 per IPv4/24"},
        {0, "192.0.2.0/25", NULL, "rule net counts IPv4 per IPv4/24"},
        {0, "192.0.2.1/24", NULL, "\"192.0.2.1/24\": host bits set"},
        {1, "192.0.2.7", "192.0.2.7", NULL},
        {1, "192.0.2.7/32", NULL, "rule ip counts IPv4 per IPv4/32"},
        {2, "Alice|Example.ORG", "alice|example.org", NULL},
        {2, "j%c3%b6rg|x", "j%C3%B6rg|x", NULL},
        {2, "alice", NULL, "rule combo has 2 key parts"},
        {2, "a|b|c", NULL, "rule combo has 2 key parts"},
        {2, "a||", NULL, "empty key part"},
        {2, "a b|c", NULL, "character ' ' never occurs"},
        {2, "a%2|c", NULL, "'%' must start"},
        {2, "#0123456789abcdef", "#0123456789abcdef", NULL},
        {2, "#0123", NULL, "a hashed key value"},
        {2, "", NULL, "a key value has 1 to 96"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[LIMITS_MAX_VALUE + 1], why[200] = "";
        int n = limits_value_check(limits_engine_rule(e, (size_t)cases[i].rule), cases[i].in, out,
                                   sizeof(out), why, sizeof(why));
        if (cases[i].want != NULL) {
            if (n <= 0 || strcmp(out, cases[i].want) != 0)
                fail_msg("case %zu (%s): %d %s", i, cases[i].in, n, n > 0 ? out : why);
        } else if (n != -EINVAL || strncmp(why, cases[i].why, strlen(cases[i].why)) != 0) {
            fail_msg("case %zu (%s): want refused \"%s\", got %d \"%s\"", i, cases[i].in,
                     cases[i].why, n, why);
        }
    }
    char key[LIMITS_KEY_MAX];
    const struct limits_rule *r = limits_engine_rule(e, 1);
    assert_true(limits_counter_key(r, false, "192.0.2.7", key, sizeof(key)) > 0);
    char want[LIMITS_KEY_MAX];
    snprintf(want, sizeof(want), "ip:%s:192.0.2.7", r->tag);
    assert_string_equal(key, want);
    limits_engine_free(e);
}

/* --- deduplication ------------------------------------------------------------------ */

/* Postfix with the policy in four restriction lists sends four identical RCPT
 * requests: one count, four identical answers. */
static void test_limits_counts_identical_rcpt_once(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = per_ip client_address recipients 100/1m\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 1000000};
    struct limits_decision d;
    for (int i = 0; i < 4; i++) {
        int rc = decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", "a@x.example"), false, &d);
        assert_int_equal(rc, i == 0 ? LIMITS_PLAN_OPS : LIMITS_PLAN_DECIDED);
        assert_false(d.deny);
        assert_string_equal(d.action, "DUNNO");
        assert_int_equal(d.cached, i > 0);
    }
    assert_int_equal(t.amounts, 1);
    /* Case differences are the same recipient. */
    decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", "A@X.example"), false, &d);
    assert_int_equal(t.amounts, 1);
    decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", "b@x.example"), false, &d);
    assert_int_equal(t.amounts, 2);
    limits_session_free(s);
    limits_engine_free(e);
}

/* RCPT, DATA and END-OF-MESSAGE of one transaction count one message and its real size;
 * a new instance counts again; bytes reserved from MAIL SIZE are topped up, not
 * doubled. */
static void test_limits_counts_transaction_once(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = msgs sender messages 100/1h\n"
                                          "  vol sender bytes 10M/1h\n"
                                          "  rc sender recipients 100/1h\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 5000000};
    struct limits_decision d;
    const char *to[] = {"a@x.example", "b@x.example", "c@y.example"};
    for (int k = 0; k < 3; k++)
        for (int rep = 0; rep < 2; rep++)
            decide(&t, e, s,
                   mkreq(RCPT_FMT, "192.0.2.1", "4000", "s@org.example", to[k], "i1", "", "1000"),
                   false, &d);
    /* messages 1 + bytes 1000 + recipients 3 */
    assert_int_equal(t.amounts, 1 + 1000 + 3);
    assert_int_equal(t.calls, 3);
    const char *data =
        "request=smtpd_access_policy\nprotocol_state=DATA\nclient_address=192.0.2.1\n"
        "client_port=4000\nsender=s@org.example\nrecipient=\ninstance=i1\n"
        "recipient_count=3\nsize=1000";
    assert_int_equal(decide(&t, e, s, mkreq("%s", data), false, &d), LIMITS_PLAN_DECIDED);
    const char *eom = "request=smtpd_access_policy\nprotocol_state=END-OF-MESSAGE\n"
                      "client_address=192.0.2.1\nclient_port=4000\nsender=s@org.example\n"
                      "recipient=\ninstance=i1\nrecipient_count=3\nsize=1500";
    assert_int_equal(decide(&t, e, s, mkreq("%s", eom), false, &d), LIMITS_PLAN_OPS);
    assert_int_equal(t.n_last, 1);
    assert_int_equal(t.last[0].amount, 500);
    assert_int_equal(t.amounts, 1 + 1500 + 3);
    assert_int_equal(decide(&t, e, s, mkreq("%s", eom), false, &d), LIMITS_PLAN_DECIDED);

    /* The next transaction on the same SMTP session counts again. */
    decide(&t, e, s, mkreq(RCPT_FMT, "192.0.2.1", "4000", "s@org.example", to[0], "i2", "", "200"),
           false, &d);
    assert_int_equal(t.amounts, 1 + 1500 + 3 + 1 + 200 + 1);
    limits_session_free(s);
    limits_engine_free(e);
}

/* A transaction remembers at most 4096 units (4 * LIMITS_MAX_RCPT_CACHE): the first 4096
 * recipients are deduplicated, a recipient past the cap counts again on every repeat
 * (over-counting is the safe side), and a new transaction starts with room again. */
static void test_limits_caps_units_per_transaction(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = rc client_address recipients 100000/1h\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 7000000};
    struct limits_decision d;
    char to[64];
    const int cap = 4096;
    assert_int_equal(cap, 4 * LIMITS_MAX_RCPT_CACHE);
    for (int i = 0; i <= cap; i++) {
        snprintf(to, sizeof(to), "r%d@cap.example", i);
        assert_int_equal(decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", to), false, &d),
                         LIMITS_PLAN_OPS);
        assert_false(d.deny);
    }
    assert_int_equal(t.amounts, cap + 1);
    /* Remembered: the first and the last within the cap are answered from the session. */
    assert_int_equal(decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", "r0@cap.example"), false, &d),
                     LIMITS_PLAN_DECIDED);
    assert_true(d.cached);
    snprintf(to, sizeof(to), "r%d@cap.example", cap - 1);
    assert_int_equal(decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", to), false, &d),
                     LIMITS_PLAN_DECIDED);
    assert_int_equal(t.amounts, cap + 1);
    /* Past the cap: not remembered, so each repeat is counted. */
    snprintf(to, sizeof(to), "r%d@cap.example", cap);
    for (int rep = 1; rep <= 2; rep++) {
        assert_int_equal(decide(&t, e, s, rcpt("192.0.2.1", "4000", "i1", to), false, &d),
                         LIMITS_PLAN_OPS);
        assert_false(d.cached);
        assert_int_equal(t.amounts, cap + 1 + rep);
    }
    /* The next transaction remembers again. */
    for (int rep = 0; rep < 2; rep++)
        decide(&t, e, s, rcpt("192.0.2.1", "4000", "i2", to), false, &d);
    assert_int_equal(t.amounts, cap + 4);
    assert_true(d.cached);
    limits_session_free(s);
    limits_engine_free(e);
}

/* Without RCPT requests (policy only in smtpd_data_restrictions or end-of-data), the
 * recipients of a transaction are counted once from recipient_count. */
static void test_limits_counts_recipient_count_without_rcpt(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = rc client_address recipients 10/1h\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 5000000};
    struct limits_decision d;
#define RC_FMT                                                                                     \
    "protocol_state=%s\nclient_address=192.0.2.1\nclient_port=1\ninstance=%s\n"                    \
    "recipient_count=%d"
    decide(&t, e, s, mkreq(RC_FMT, "DATA", "i1", 4), false, &d);
    decide(&t, e, s, mkreq(RC_FMT, "END-OF-MESSAGE", "i1", 4), false, &d);
    assert_int_equal(t.amounts, 4);
    assert_false(d.deny);
    decide(&t, e, s, mkreq(RC_FMT, "END-OF-MESSAGE", "i2", 7), false, &d);
    assert_int_equal(t.amounts, 11);
    assert_true(d.deny); /* 4 + 7 > 10: the whole message is refused */
    limits_session_free(s);
    limits_engine_free(e);
}

/* A connection is counted at the first request of an SMTP session (client address +
 * port); a new session counts again, and a refused session stays refused. */
static void test_limits_new_connection_resets(void **state)
{
    (void)state;
    struct limits_engine *e =
        engine_from("limits = conn client_address connections 2/1m action 421 4.7.0 Too many\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 7000000};
    struct limits_decision d;
    const char *ports[] = {"1001", "1002", "1003"};
    for (int c = 0; c < 3; c++) {
        for (int k = 0; k < 3; k++) {
            char inst[8], to[16];
            snprintf(inst, sizeof(inst), "i%d", k);
            snprintf(to, sizeof(to), "u%d@x.example", k);
            decide(&t, e, s, rcpt("192.0.2.1", ports[c], inst, to), false, &d);
            assert_int_equal(d.deny, c == 2);
            if (c == 2) {
                assert_string_equal(d.action, "421 4.7.0 Too many");
                assert_int_equal(d.cached, k > 0);
            }
        }
    }
    assert_int_equal(t.calls, 3);
    /* A reset session (e.g. after a protocol error) counts the next request again. */
    limits_session_reset(s);
    t.now += 120000;
    decide(&t, e, s, rcpt("192.0.2.1", "1003", "i9", "z@x.example"), false, &d);
    assert_false(d.deny);
    assert_int_equal(t.calls, 4);
    limits_session_free(s);
    limits_engine_free(e);
}

/* --- stress, exemptions, dryrun ----------------------------------------------------- */

static void test_limits_selects_stress_limit(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = a client_address recipients 10/1m stress 2/1m\n"
                                          "  b client_address recipients 100/1h stress 5/1m\n"
                                          "  c client_address recipients 7/1m\n");
    struct limits_session *s = limits_session_new();
    static struct limits_plan p;
    static const struct {
        bool node;
        const char *attr;
        bool stressed;
    } cases[] = {{false, "", false}, {true, "", true}, {false, "yes", true}, {true, "yes", true}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char to[32];
        snprintf(to, sizeof(to), "r%zu@x.example", i);
        const struct policy_request *req =
            mkreq("protocol_state=RCPT\nclient_address=192.0.2.1\nclient_port=1\ninstance=i\n"
                  "recipient=%s\nstress=%s",
                  to, cases[i].attr);
        assert_int_equal(limits_plan(e, s, req, cases[i].node, &p), LIMITS_PLAN_OPS);
        assert_int_equal(p.n_ops, 4);
        bool st = cases[i].stressed;
        assert_int_equal(p.ops[0].limit, st ? 2 : 10);
        assert_int_equal(p.ops[1].limit, 100);
        assert_int_equal(p.ops[1].window_ms, 3600000);
        /* b's stress counter: its own key and window, count-only unless stressed. */
        assert_int_equal(p.ops[2].limit, st ? 5 : LIMITS_COUNT_ONLY);
        assert_int_equal(p.ops[2].window_ms, 60000);
        assert_string_not_equal(p.ops[1].key, p.ops[2].key);
        assert_int_equal(p.ops[3].limit, 7);
        assert_int_equal(p.decision.stressed, st);
    }
    limits_session_free(s);
    limits_engine_free(e);
}

/* Under stress the tighter limit refuses; the separate stress counter was kept warm. */
static void test_limits_stress_counter_is_warm(void **state)
{
    (void)state;
    struct limits_engine *e =
        engine_from("limits = b client_address recipients 100/1h stress 3/1m\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 9000000};
    struct limits_decision d;
    for (int k = 0; k < 3; k++) {
        char to[32];
        snprintf(to, sizeof(to), "n%d@x.example", k);
        decide(&t, e, s, rcpt("192.0.2.1", "1", "i", to), false, &d);
        assert_false(d.deny);
    }
    decide(&t, e, s, rcpt("192.0.2.1", "1", "i", "x@x.example"), true, &d);
    assert_true(d.deny);
    assert_int_equal(d.limit, 3);
    assert_int_equal(d.count, 3);
    limits_session_free(s);
    limits_engine_free(e);
}

static void test_limits_exempts_networks_and_users(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = a client_address recipients 1/1m\n"
                                          "limit_exempt_networks = 192.0.2.0/24, 2001:db8::/32\n"
                                          "limit_exempt_sasl_users = Relay@Example.com backup\n");
    struct limits_session *s = limits_session_new();
    static struct limits_plan p;
    static const struct {
        const char *client, *sasl;
        bool exempt;
    } cases[] = {
        {"192.0.2.9", "", true},
        {"::ffff:192.0.2.9", "", true},
        {"2001:db8:ff::1", "", true},
        {"198.51.100.1", "", false},
        {"198.51.100.1", "relay@example.COM", true},
        {"198.51.100.1", "BACKUP", true},
        {"198.51.100.1", "backup2", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct policy_request *req =
            mkreq(RCPT_FMT, cases[i].client, "1", "", "a@b.example", "i", cases[i].sasl, "");
        int rc = limits_plan(e, s, req, false, &p);
        if (cases[i].exempt) {
            assert_int_equal(rc, LIMITS_PLAN_DECIDED);
            assert_true(p.decision.exempt);
            assert_string_equal(p.decision.action, "DUNNO");
        } else {
            assert_int_equal(rc, LIMITS_PLAN_OPS);
        }
    }
    limits_session_free(s);
    limits_engine_free(e);
}

static void test_limits_dryrun_answers_dunno(void **state)
{
    (void)state;
    static const char *cfs[] = {
        "limits = a client_address recipients 2/1m dryrun\n",
        "limits = a client_address recipients 2/1m action REJECT no\nlimit_dry_run = yes\n",
    };
    for (size_t c = 0; c < 2; c++) {
        struct limits_engine *e = engine_from(cfs[c]);
        struct limits_session *s = limits_session_new();
        struct tstore t = {.now = 1000};
        struct limits_decision d;
        for (int k = 0; k < 4; k++) {
            char to[32];
            snprintf(to, sizeof(to), "d%d@x.example", k);
            for (int rep = 0; rep < 2; rep++) {
                decide(&t, e, s, rcpt("192.0.2.1", "1", "i", to), false, &d);
                assert_string_equal(d.action, "DUNNO");
                assert_int_equal(d.deny, k >= 2);
                assert_int_equal(d.dryrun, k >= 2);
                if (k >= 2) {
                    assert_string_equal(d.rule_name, "a");
                    assert_string_equal(
                        d.rule_action, c == 0 ? "450 4.7.1 Rate limit exceeded, try again later (a)"
                                              : "REJECT no");
                    assert_int_equal(d.cached, rep == 1);
                }
            }
        }
        /* Denied units are not counted (the window only admits up to its limit). */
        assert_int_equal(t.calls, 4);
        limits_session_free(s);
        limits_engine_free(e);
    }
}

/* A real rule that denies wins over a dryrun rule; among real rules, config order. */
static void test_limits_first_denying_rule_decides(void **state)
{
    (void)state;
    struct limits_engine *e =
        engine_from("limits = dry client_address recipients 1/1m dryrun\n"
                    "  big client_address recipients 3/1m action 451 big\n"
                    "  small client_address recipients 2/1m action 452 small\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 1000};
    struct limits_decision d;
    const char *want[] = {"DUNNO", "DUNNO", "452 small", "451 big"};
    for (int k = 0; k < 4; k++) {
        char to[32];
        snprintf(to, sizeof(to), "f%d@x.example", k);
        decide(&t, e, s, rcpt("192.0.2.1", "1", "i", to), false, &d);
        assert_string_equal(d.action, want[k]);
    }
    limits_session_free(s);
    limits_engine_free(e);
}

/* --- end to end in pure logic ------------------------------------------------------- */

/* One client sends 3 messages of 4 recipients, each RCPT asked 4 times (four restriction
 * lists), against 10 recipients per minute: exactly the last 2 recipients get the 4xx,
 * on every repeat; a second client is unaffected; after the window the client may send
 * again. */
static void test_limits_refuses_exactly_the_excess(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = per_ip client_address recipients 10/1m\n");
    struct limits_session *s = limits_session_new();
    struct limits_session *s2 = limits_session_new();
    struct tstore t = {.now = 1700000000000LL};
    struct limits_decision d;
    int denied = 0, allowed = 0;
    for (int m = 0; m < 3; m++) {
        char inst[16];
        snprintf(inst, sizeof(inst), "inst%d", m);
        for (int k = 0; k < 4; k++) {
            char to[32];
            snprintf(to, sizeof(to), "m%dr%d@x.example", m, k);
            int n = m * 4 + k + 1;
            for (int rep = 0; rep < 4; rep++) {
                decide(&t, e, s, rcpt("203.0.113.5", "50000", inst, to), false, &d);
                assert_int_equal(d.deny, n > 10);
                if (d.deny) {
                    assert_string_equal(d.action,
                                        "450 4.7.1 Rate limit exceeded, try again later (per_ip)");
                    denied++;
                } else {
                    allowed++;
                }
            }
            t.now += 100;
        }
    }
    assert_int_equal(denied, 2 * 4);
    assert_int_equal(allowed, 10 * 4);
    assert_int_equal(t.calls, 12);

    /* Another client on another smtpd is unaffected. */
    decide(&t, e, s2, rcpt("203.0.113.6", "50001", "other", "o@x.example"), false, &d);
    assert_false(d.deny);

    /* After the window (plus one slot) the first client is admitted again. */
    t.now += 60000 + 6000;
    decide(&t, e, s, rcpt("203.0.113.5", "50002", "inst9", "late@x.example"), false, &d);
    assert_false(d.deny);
    limits_session_free(s);
    limits_session_free(s2);
    limits_engine_free(e);
}

/* --- failures and engine swaps ------------------------------------------------------ */

static void test_limits_store_failure_remembers_nothing(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = a client_address recipients 5/1m\n");
    struct limits_session *s = limits_session_new();
    static struct limits_plan p;
    struct limits_decision d;
    const struct policy_request *req = rcpt("192.0.2.1", "1", "i", "a@x.example");
    assert_int_equal(limits_plan(e, s, req, false, &p), LIMITS_PLAN_OPS);
    assert_int_equal(limits_finish(e, s, &p, NULL, &d), 0);
    assert_true(d.store_failed);
    assert_null(d.action);
    /* The repeat is planned again, not answered from the session. */
    assert_int_equal(limits_plan(e, s, req, false, &p), LIMITS_PLAN_OPS);

    /* Finishing with another engine is refused. */
    struct limits_engine *e2 = engine_from("limits = a client_address recipients 5/1m\n");
    struct window_result res = {.allowed = true, .count = 1};
    assert_int_equal(limits_finish(e2, s, &p, &res, &d), -ESTALE);
    assert_int_equal(limits_plan(NULL, s, req, false, &p), -EINVAL);
    limits_engine_free(e2);
    limits_session_free(s);
    limits_engine_free(e);
}

/* SIGHUP mid-transaction: the new engine with the same rule does not count the repeats
 * again, because sessions remember units by counter key. */
static void test_limits_reload_keeps_session_dedup(void **state)
{
    (void)state;
    struct limits_engine *e = engine_from("limits = a client_address recipients 5/1m\n");
    struct limits_session *s = limits_session_new();
    struct tstore t = {.now = 1000};
    struct limits_decision d;
    decide(&t, e, s, rcpt("192.0.2.1", "1", "i", "a@x.example"), false, &d);
    struct limits_engine *e2 = engine_from("limits = z sender messages 9/1h\n"
                                           "  a client_address recipients 50/1m\n");
    limits_engine_ref(e); /* a plan in flight would hold one */
    limits_engine_free(e);
    limits_engine_free(e);
    decide(&t, e2, s, rcpt("192.0.2.1", "1", "i", "a@x.example"), false, &d);
    assert_int_equal(t.amounts, 2); /* only z's message: a's recipient was counted */
    limits_session_free(s);
    limits_engine_free(e2);
}

/* Every allocation failure in engine construction and in the session's tables ends in
 * NULL or a remembered-nothing decision, never a crash or a leak (run under valgrind
 * or ASan to see leaks). */
static void test_limits_survives_allocation_failures(void **state)
{
    (void)state;
    struct config_errors errs = {0};
    struct config *cfg = load_config(example_cf, &errs);
    char *ex = cfg->limit_exempt_networks;
    cfg->limit_exempt_networks = strdup("192.0.2.0/24 10.0.0.0/8");
    free(ex);
    ex = cfg->limit_exempt_sasl_users;
    cfg->limit_exempt_sasl_users = strdup("a b c");
    free(ex);
    bool ok = false;
    for (long n = 1; n < 200 && !ok; n++) {
        alloc_reset(n);
        struct limits_engine *e = limits_engine_new(cfg, &errs);
        alloc_reset(0);
        assert_int_equal(errs.n, 0); /* ENOMEM adds no config message */
        if (e != NULL) {
            ok = alloc_count < n; /* nothing failed: every path before was walked */
            limits_engine_free(e);
        }
    }
    assert_true(ok);
    config_free(cfg);

    /* Conditions and an override table: every allocation of theirs may fail too. */
    const char *path = tmpfile_with(3, "alice 3\nbob unlimited\n");
    char cf[2048];
    snprintf(cf, sizeof(cf), "%s    quota sasl_username recipients 9/1h overrides texthash:%s\n",
             conditions_cf, path);
    cfg = load_config(cf, &errs);
    ok = false;
    for (long n = 1; n < 400 && !ok; n++) {
        alloc_reset(n);
        struct limits_engine *e = limits_engine_new(cfg, &errs);
        alloc_reset(0);
        assert_int_equal(errs.n, 0);
        if (e != NULL) {
            ok = alloc_count < n;
            limits_engine_free(e);
        }
    }
    assert_true(ok);
    unlink(path);

    struct limits_engine *e = engine_from("limits = a client_address recipients 100/1m\n");
    for (long n = 1; n < 20; n++) {
        struct tstore t = {.now = 1000};
        struct limits_decision d;
        alloc_reset(n);
        struct limits_session *s = limits_session_new();
        if (s != NULL) {
            for (int k = 0; k < 20; k++) {
                char to[32];
                snprintf(to, sizeof(to), "z%d@x.example", k);
                decide(&t, e, s, rcpt("192.0.2.1", "1", "i", to), false, &d);
                assert_false(d.deny);
            }
        }
        alloc_reset(0);
        limits_session_free(s);
    }
    limits_engine_free(e);
    config_free(cfg);
}

static int teardown_parser(void **state)
{
    (void)state;
    policy_parser_free(req_parser);
    req_parser = NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_parses_example_rules),
        cmocka_unit_test(test_limits_reports_bad_rules_with_file_line),
        cmocka_unit_test(test_limits_reports_other_setting_errors),
        cmocka_unit_test(test_limits_keys_stable_across_reload),
        cmocka_unit_test(test_limits_derives_keys),
        cmocka_unit_test(test_limits_hashes_long_key_values),
        cmocka_unit_test(test_limits_keys_from_every_attribute),
        cmocka_unit_test(test_limits_conditions),
        cmocka_unit_test(test_limits_failing_conditions_neither_count_nor_limit),
        cmocka_unit_test(test_limits_table_parses_and_reports_file_line),
        cmocka_unit_test(test_limits_table_precedence),
        cmocka_unit_test(test_limits_value_check),
        cmocka_unit_test(test_limits_counts_identical_rcpt_once),
        cmocka_unit_test(test_limits_counts_transaction_once),
        cmocka_unit_test(test_limits_counts_recipient_count_without_rcpt),
        cmocka_unit_test(test_limits_caps_units_per_transaction),
        cmocka_unit_test(test_limits_new_connection_resets),
        cmocka_unit_test(test_limits_selects_stress_limit),
        cmocka_unit_test(test_limits_stress_counter_is_warm),
        cmocka_unit_test(test_limits_exempts_networks_and_users),
        cmocka_unit_test(test_limits_dryrun_answers_dunno),
        cmocka_unit_test(test_limits_first_denying_rule_decides),
        cmocka_unit_test(test_limits_refuses_exactly_the_excess),
        cmocka_unit_test(test_limits_store_failure_remembers_nothing),
        cmocka_unit_test(test_limits_reload_keeps_session_dedup),
        cmocka_unit_test(test_limits_survives_allocation_failures),
        cmocka_unit_test(test_limits_runtime_precedence),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_parser);
}
