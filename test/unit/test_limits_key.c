/* Unit tests of the per-request key path of lib/limits_key.c: a request read once
 * (limits_req: the client address parsed once, a client_address group formatted once
 * for the rules that group alike) gives every rule the key and conditions it gets on its
 * own, and the escaping table keeps each byte as the rule "safe characters pass,
 * lowercased; the rest is %XX" says. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <regex.h>
#include <cmocka.h>

#include "config.h"
#include "hash.h"
#include "limits_impl.h"
#include "policy.h"

/* An engine from a config text; fails the test on a bad one. */
static struct limits_engine *engine_of(const char *text)
{
    struct config_errors errs = {0};
    struct config *cfg = NULL;
    assert_int_equal(config_parse_buffer("test.cf", text, strlen(text), &cfg, &errs), 0);
    struct limits_engine *e = limits_engine_new(cfg, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_error("limits: %s\n", errs.msg[i]);
    assert_non_null(e);
    config_errors_clear(&errs);
    config_free(cfg);
    return e;
}

static void set_attr(struct policy_request *req, enum policy_attr a, const char *v)
{
    req->attr[a] = v;
    req->attr_len[a] = v ? strlen(v) : 0;
}

/* Rules grouping the client alike and not, in an order that makes the group cache
 * switch back and forth, with conditions on the address. */
static const char rules[] =
    "limits =\n"
    "    a client_address/24/64 recipients 10/1m\n"
    "    b client_address recipients 10/1m if client_address=192.0.2.0/24,2001:db8::/32\n"
    "    c client_address/24/48+sender recipients 10/1m\n"
    "    d client_address/16/64 recipients 10/1m if client_address!=198.51.100.0/24\n"
    "    e client_address/24/64 recipients 10/1m\n"
    "    f sender_domain+client_address recipients 10/1m\n";

static void test_limits_key_request_read_once_matches_each_rule(void **state)
{
    (void)state;
    static const char *clients[] = {"192.0.2.77",
                                    "198.51.100.9",
                                    "2001:db8:1:2::7",
                                    "::ffff:10.1.2.3",
                                    "[2001:db8::1]",
                                    "not-an-address",
                                    "010.1.2.3",
                                    "1.2.3.4.",
                                    "",
                                    NULL};
    struct limits_engine *e = engine_of(rules);
    for (size_t c = 0; c < sizeof(clients) / sizeof(clients[0]); c++) {
        struct policy_request req = {0};
        req.state = POLICY_STATE_RCPT;
        set_attr(&req, POLICY_CLIENT_ADDRESS, clients[c]);
        set_attr(&req, POLICY_SENDER, "Bob@Example.ORG.");
        struct limits_req q;
        limits_req_init(&q, &req);
        for (size_t i = 0; i < limits_engine_rule_count(e); i++) {
            const struct limits_rule *r = limits_engine_rule(e, i);
            char alone[LIMITS_MAX_VALUE + 1] = "", shared[LIMITS_MAX_VALUE + 1] = "";
            int na = limits_key_value(r, &req, alone, sizeof(alone));
            int ns = limits_key_value_req(r, &q, shared, sizeof(shared));
            if (na != ns || strcmp(alone, shared) != 0)
                fail_msg("client \"%s\" rule %s: alone \"%s\" (%d), shared \"%s\" (%d)",
                         clients[c] ? clients[c] : "(absent)", r->name, alone, na, shared, ns);
            if (limits_conds_hold(r, &req) != limits_conds_hold_req(r, &q))
                fail_msg("client \"%s\" rule %s: conditions differ", clients[c], r->name);
        }
    }
    limits_engine_free(e);
}

/* The groups themselves, so the comparison above is not between two wrong answers. */
static void test_limits_key_request_groups(void **state)
{
    (void)state;
    struct limits_engine *e = engine_of(rules);
    struct policy_request req = {0};
    req.state = POLICY_STATE_RCPT;
    set_attr(&req, POLICY_CLIENT_ADDRESS, "192.0.2.77");
    set_attr(&req, POLICY_SENDER, "Bob@Example.ORG.");
    struct limits_req q;
    limits_req_init(&q, &req);
    static const char *want[] = {"192.0.2.0/24", "192.0.2.77",   "192.0.2.0/24|bob@example.org.",
                                 "192.0.0.0/16", "192.0.2.0/24", "example.org|192.0.2.77"};
    char out[LIMITS_MAX_VALUE + 1];
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_true(limits_key_value_req(limits_engine_rule(e, i), &q, out, sizeof(out)) > 0);
        assert_string_equal(out, want[i]);
    }
    /* A buffer too small for every value goes through a copy: same value, or -ENOSPC. */
    char small[13];
    assert_int_equal(limits_key_value_req(limits_engine_rule(e, 0), &q, small, sizeof(small)), 12);
    assert_string_equal(small, "192.0.2.0/24");
    assert_int_equal(limits_key_value_req(limits_engine_rule(e, 0), &q, small, 12), -ENOSPC);
    assert_true(limits_conds_hold_req(limits_engine_rule(e, 1), &q));
    set_attr(&req, POLICY_CLIENT_ADDRESS, "198.51.100.9");
    limits_req_init(&q, &req);
    assert_false(limits_conds_hold_req(limits_engine_rule(e, 1), &q));
    assert_false(limits_conds_hold_req(limits_engine_rule(e, 3), &q));
    limits_engine_free(e);
}

/* Every byte value escapes as the rule says: a-z 0-9 . _ - @ / : + = pass, A-Z pass
 * lowercased, everything else is %XX with upper-case hex digits. */
static void test_limits_key_escapes_every_byte(void **state)
{
    (void)state;
    struct limits_engine *e = engine_of("limits = r sasl_username recipients 10/1m\n");
    const struct limits_rule *r = limits_engine_rule(e, 0);
    for (int b = 1; b < 256; b++) {
        char in[4] = {'x', (char)b, 'y', '\0'}, want[8], out[LIMITS_MAX_VALUE + 1];
        char c = (char)b;
        if (b >= 'A' && b <= 'Z')
            c = (char)(b - 'A' + 'a');
        bool safe = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == '-' || c == '@' || c == '/' || c == ':' || c == '+' || c == '=';
        if (safe)
            snprintf(want, sizeof(want), "x%cy", c);
        else
            snprintf(want, sizeof(want), "x%%%02Xy", (unsigned)b);
        struct policy_request req = {0};
        req.state = POLICY_STATE_RCPT;
        set_attr(&req, POLICY_SASL_USERNAME, in);
        assert_true(limits_key_value(r, &req, out, sizeof(out)) > 0);
        if (strcmp(out, want) != 0)
            fail_msg("byte 0x%02x: want \"%s\" got \"%s\"", (unsigned)b, want, out);
    }
    /* At the bound: 96 safe characters fit; one more, or an escape that makes it longer
     * than 96, and the value is hashed. */
    static const struct {
        size_t safe;
        const char *tail;
        int want;
    } bounds[] = {{96, "", 96}, {97, "", 17}, {93, " ", 96}, {94, " ", 17}, {95, "A", 96}};
    for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
        char in[128], out[LIMITS_MAX_VALUE + 1];
        memset(in, 'X', bounds[i].safe);
        strcpy(in + bounds[i].safe, bounds[i].tail);
        struct policy_request req = {0};
        set_attr(&req, POLICY_SASL_USERNAME, in);
        assert_int_equal(limits_key_value(r, &req, out, sizeof(out)), bounds[i].want);
        assert_true(bounds[i].want == 17 ? out[0] == '#' : out[0] == 'x');
    }
    limits_engine_free(e);
}

/* hash64 gives distinct values to near strings: every length 0..40 of a run of 'a' with
 * and without a trailing NUL byte, and every single-byte change of a 24-byte string, so
 * the ids and buckets built on it tell keys apart. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* limits_re_first only ever rules out what the regular expression could not match:
 * checked against regexec on every pattern and every value below (first bytes from the
 * whole byte range, and values that begin like the pattern's alternatives). */
static void test_limits_key_regex_first_bytes_never_wrong(void **state)
{
    (void)state;
    static const struct {
        const char *re;
        bool told; /* whether limits_re_first tells this form */
    } pats[] = {
        {"^(news|promo)\\.", true},
        {"^TLSv1\\.[23]$", true},
        {"^a", true},
        {"^\\.x", true},
        {"^(a|b)+c", true},
        {"^ab*", true},
        {"^a*b", false}, /* the first literal is optional */
        {"^a?b", false},
        {"^a{0,2}b", false},
        {"^(a|b)*c", false}, /* the group is optional */
        {"^(a|b)?c", false},
        {"^(a*|b)c", false},
        {"^(|a)b", false}, /* an empty alternative */
        {"^(a|)b", false},
        {"^a|b", false}, /* an alternative to the whole */
        {"^(a|b)c|d", false},
        {"^(a|b[|])", false}, /* a bracket inside the group */
        {"^(a|(b))", false},
        {"^[ab]", false},
        {"^.a", false},
        {"a", false}, /* not anchored */
        {"^\\1", false},
        {"^\\", false},
        {"^(a\\|b)", true}, /* an escaped '|' inside an alternative */
        {"^a[|]", false},
    };
    static const char *tails[] = {"",  "ews.", "romo.x", "LSv1.3", "b",  "bc",
                                  "c", "x",    ".x",     "ab",     "|b", "d"};
    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
        uint8_t first[32];
        bool told = limits_re_first(pats[i].re, first);
        if (told != pats[i].told)
            fail_msg("limits_re_first(\"%s\") = %d, expected %d", pats[i].re, told, pats[i].told);
        if (!told)
            continue;
        regex_t re;
        assert_int_equal(regcomp(&re, pats[i].re, REG_EXTENDED | REG_ICASE | REG_NOSUB), 0);
        for (int b = 1; b < 256; b++) {
            for (size_t t = 0; t < sizeof(tails) / sizeof(tails[0]); t++) {
                char v[32];
                v[0] = (char)b;
                snprintf(v + 1, sizeof(v) - 1, "%s", tails[t]);
                bool in_set = (first[b >> 3] >> (b & 7)) & 1;
                if (!in_set && regexec(&re, v, 0, NULL, 0) == 0)
                    fail_msg("\"%s\" matches \"%s\" but its first byte 0x%02x was ruled out",
                             pats[i].re, v, b);
            }
        }
        regfree(&re);
    }
    /* And the sets are the ones expected: both cases of each first letter. */
    uint8_t first[32];
    assert_true(limits_re_first("^(news|Promo)\\.", first));
    for (int b = 0; b < 256; b++) {
        bool want = b == 'n' || b == 'N' || b == 'p' || b == 'P';
        assert_int_equal((first[b >> 3] >> (b & 7)) & 1, want);
    }
}

/* A regular-expression condition gives the same verdict through its memo as regexec
 * does, for values seen again, values that share a slot, long values that bypass the
 * memo and non-ASCII first bytes. */
static void test_limits_key_regex_memo_same_verdicts(void **state)
{
    (void)state;
    struct limits_engine *e =
        engine_of("limits =\n"
                  "    a sender recipients 10/1m if sender_domain~^(news|promo)\\.\n"
                  "    b sender recipients 10/1m if sender~example\\.(com|net)$\n");
    regex_t ra, rb;
    assert_int_equal(regcomp(&ra, "^(news|promo)\\.", REG_EXTENDED | REG_ICASE | REG_NOSUB), 0);
    assert_int_equal(regcomp(&rb, "example\\.(com|net)$", REG_EXTENDED | REG_ICASE | REG_NOSUB), 0);
    const struct limits_rule *a = limits_engine_rule(e, 0), *b = limits_engine_rule(e, 1);
    assert_true(a->cond[0].memo->have_first);
    assert_false(b->cond[0].memo->have_first);
    char long_dom[120];
    memset(long_dom, 'n', sizeof(long_dom) - 1);
    long_dom[sizeof(long_dom) - 1] = '\0';
    memcpy(long_dom, "news.", 5);
    for (int round = 0; round < 3; round++) {
        for (unsigned i = 0; i < 500; i++) {
            char sender[200], dom[160];
            static const char *pre[] = {"news.",    "promo.", "NEWS.",  "new.",
                                        "\xc3\xa9", "x",      "Promo-", ""};
            if (i % 50 == 49)
                snprintf(dom, sizeof(dom), "%s", long_dom);
            else
                snprintf(dom, sizeof(dom), "%s%u.example.%s", pre[i % 8], i % 37,
                         i % 3 ? "com" : "org");
            snprintf(sender, sizeof(sender), "u%u@%s%s", i, dom, i % 5 == 0 ? "." : "");
            struct policy_request req = {0};
            set_attr(&req, POLICY_SENDER, sender);
            struct limits_req q;
            limits_req_init(&q, &req);
            bool want_a = regexec(&ra, dom, 0, NULL, 0) == 0;
            bool want_b = regexec(&rb, sender, 0, NULL, 0) == 0;
            /* Twice: the second time from the memo (unless the value is too long). */
            for (int twice = 0; twice < 2; twice++) {
                uint64_t hits = b->cond[0].memo->hits;
                if (limits_conds_hold_req(a, &q) != want_a ||
                    limits_conds_hold_req(b, &q) != want_b)
                    fail_msg("round %d: \"%s\": memo and regexec disagree", round, sender);
                if (twice == 1 && strlen(sender) <= RE_MEMO_VALUE)
                    assert_int_equal(b->cond[0].memo->hits, hits + 1);
            }
        }
    }
    regfree(&ra);
    regfree(&rb);
    limits_engine_free(e);
}

static void test_limits_key_hash64_tells_near_strings_apart(void **state)
{
    (void)state;
    static uint64_t h[82 + 24 * 255 + 1];
    size_t n = 0;
    char buf[48];
    memset(buf, 'a', sizeof(buf));
    for (size_t len = 0; len <= 40; len++) {
        h[n++] = hash64_add(HASH64_START, buf, len);
        buf[len] = '\0';
        h[n++] = hash64_add(HASH64_START, buf, len + 1);
        buf[len] = 'a';
    }
    const char base[] = "per_ip:1f3a9c07:192.0.2.";
    h[n++] = hash64_add(HASH64_START, base, 24);
    for (size_t i = 0; i < 24; i++)
        for (int b = 0; b < 256; b++) {
            if (b == (unsigned char)base[i])
                continue;
            memcpy(buf, base, 24);
            buf[i] = (char)b;
            h[n++] = hash64_add(HASH64_START, buf, 24);
        }
    assert_int_equal(n, sizeof(h) / sizeof(h[0]));
    qsort(h, n, sizeof(h[0]), cmp_u64);
    for (size_t i = 1; i < n; i++)
        assert_true(h[i] != h[i - 1]);
    /* Chained pieces are a function of the pieces; a mix changes the hash. */
    assert_true(hash64_add(hash64_add(HASH64_START, "ab", 2), "c", 1) ==
                hash64_add(hash64_add(HASH64_START, "ab", 2), "c", 1));
    assert_true(hash64_mix(h[0], 'r') != hash64_mix(h[0], 'n'));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_key_request_read_once_matches_each_rule),
        cmocka_unit_test(test_limits_key_request_groups),
        cmocka_unit_test(test_limits_key_escapes_every_byte),
        cmocka_unit_test(test_limits_key_hash64_tells_near_strings_apart),
        cmocka_unit_test(test_limits_key_regex_first_bytes_never_wrong),
        cmocka_unit_test(test_limits_key_regex_memo_same_verdicts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
