/* Unit tests of lib/net.c: address parsing and canonical formatting (IPv4, IPv6,
 * IPv4-mapped folded to IPv4), prefix grouping, CIDR parsing with its errors, and CIDR
 * sets as used by limit_exempt_networks. Tables of input and expected text. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "net.h"

struct addr_case {
    const char *in;
    int family;        /* 0: must fail */
    const char *canon; /* net_addr_format */
};

static const struct addr_case addr_cases[] = {
    {"192.0.2.1", NET_V4, "192.0.2.1"},
    {"0.0.0.0", NET_V4, "0.0.0.0"},
    {"255.255.255.255", NET_V4, "255.255.255.255"},
    {"[192.0.2.1]", NET_V4, "192.0.2.1"},
    {"2001:db8::1", NET_V6, "2001:db8::1"},
    {"2001:DB8:0:0:0:0:0:1", NET_V6, "2001:db8::1"},
    {"2001:db8:0:0:1:0:0:1", NET_V6, "2001:db8::1:0:0:1"},    /* first of equal runs */
    {"2001:0:0:1:0:0:0:1", NET_V6, "2001:0:0:1::1"},          /* longest run */
    {"2001:db8:0:1:1:1:1:1", NET_V6, "2001:db8:0:1:1:1:1:1"}, /* no run of one */
    {"::", NET_V6, "::"},
    {"::1", NET_V6, "::1"},
    {"1::", NET_V6, "1::"},
    {"fe80::1%eth0", NET_V6, "fe80::1"},
    {"[2001:db8::5]", NET_V6, "2001:db8::5"},
    {"1:2:3:4:5:6:7:8", NET_V6, "1:2:3:4:5:6:7:8"},
    {"1:2:3:4:5:6:7::", NET_V6, "1:2:3:4:5:6:7:0"},
    {"::ffff:192.0.2.1", NET_V4, "192.0.2.1"}, /* mapped: IPv4 */
    {"::FFFF:c000:0201", NET_V4, "192.0.2.1"},
    {"64:ff9b::192.0.2.1", NET_V6, "64:ff9b::c000:201"},
    {"", 0, NULL},
    {"192.0.2", 0, NULL},
    {"192.0.2.1.5", 0, NULL},
    {"192.0.2.256", 0, NULL},
    {"192.0.02.1", 0, NULL},
    {"192.0.2.1 ", 0, NULL},
    {"unknown", 0, NULL},
    {"1:2:3:4:5:6:7:8:9", 0, NULL},
    {"1:2:3:4:5:6:7:8::", 0, NULL},
    {"1::2::3", 0, NULL},
    {":1", 0, NULL},
    {"1:", 0, NULL},
    {"12345::", 0, NULL},
    {"::g", 0, NULL},
    {"fe80::1%", 0, NULL},
    {"::ffff:1.2.3", 0, NULL},
};

static void test_net_parses_and_formats_addresses(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(addr_cases) / sizeof(addr_cases[0]); i++) {
        const struct addr_case *c = &addr_cases[i];
        struct net_addr a;
        int rc = net_addr_parse(c->in, strlen(c->in), &a);
        if (c->family == 0) {
            if (rc != -EINVAL)
                fail_msg("\"%s\" should be rejected", c->in);
            continue;
        }
        if (rc != 0)
            fail_msg("\"%s\" rejected", c->in);
        assert_int_equal(a.family, c->family);
        char out[NET_ADDR_STRLEN];
        assert_int_equal(net_addr_format(&a, out, sizeof(out)), (int)strlen(c->canon));
        assert_string_equal(out, c->canon);
    }
}

static void test_net_parse_respects_length(void **state)
{
    (void)state;
    struct net_addr a;
    /* The value ends where len says, not at a NUL. */
    assert_int_equal(net_addr_parse("192.0.2.1xyz", 9, &a), 0);
    assert_int_equal(net_addr_parse("192.0.2.1xyz", 10, &a), -EINVAL);
    char out[8];
    assert_int_equal(net_addr_format(&a, out, sizeof(out)), -ENOSPC);
}

struct prefix_case {
    const char *in;
    unsigned prefix;
    const char *out;
};

static const struct prefix_case prefix_cases[] = {
    {"192.0.2.77", 24, "192.0.2.0/24"},
    {"192.0.2.77", 32, "192.0.2.77"},
    {"192.0.2.77", 33, "192.0.2.77"},
    {"192.0.2.77", 0, "0.0.0.0/0"},
    {"192.0.2.77", 25, "192.0.2.0/25"},
    {"192.0.2.177", 25, "192.0.2.128/25"},
    {"10.255.255.255", 9, "10.128.0.0/9"},
    {"::ffff:192.0.2.77", 24, "192.0.2.0/24"},
    {"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"},
    {"2001:db8:1:2:3:4:5:6", 48, "2001:db8:1::/48"},
    {"2001:db8:1:2:3:4:5:6", 56, "2001:db8:1::/56"},
    {"2001:db8:1:2ff:3:4:5:6", 60, "2001:db8:1:2f0::/60"},
    {"2001:db8:1:2:3:4:5:6", 128, "2001:db8:1:2:3:4:5:6"},
    {"2001:db8::1", 0, "::/0"},
};

static void test_net_groups_by_prefix(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(prefix_cases) / sizeof(prefix_cases[0]); i++) {
        const struct prefix_case *c = &prefix_cases[i];
        struct net_addr a;
        assert_int_equal(net_addr_parse(c->in, strlen(c->in), &a), 0);
        char out[NET_ADDR_STRLEN];
        int n = net_prefix_format(&a, c->prefix, out, sizeof(out));
        assert_int_equal(n, (int)strlen(c->out));
        assert_string_equal(out, c->out);
    }
}

struct cidr_case {
    const char *in;
    const char *why; /* NULL: valid */
};

static const struct cidr_case cidr_cases[] = {
    {"192.0.2.0/24", NULL},
    {"192.0.2.7", NULL},
    {"0.0.0.0/0", NULL},
    {"2001:db8::/32", NULL},
    {"::ffff:192.0.2.0/120", NULL},
    {"192.0.2.1/24", "host bits set"},
    {"2001:db8::1/64", "host bits set"},
    {"192.0.2.0/33", "bad prefix length"},
    {"2001:db8::/129", "bad prefix length"},
    {"192.0.2.0/", "bad prefix length"},
    {"192.0.2.0/2x", "bad prefix length"},
    {"::ffff:192.0.2.0/64", "bad prefix length"},
    {"example.com/24", "bad address"},
};

static void test_net_parses_cidrs(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cidr_cases) / sizeof(cidr_cases[0]); i++) {
        const struct cidr_case *c = &cidr_cases[i];
        struct net_cidr cidr;
        const char *why = NULL;
        int rc = net_cidr_parse(c->in, strlen(c->in), &cidr, &why);
        if (c->why == NULL) {
            if (rc != 0)
                fail_msg("\"%s\" rejected: %s", c->in, why);
        } else {
            assert_int_equal(rc, -EINVAL);
            assert_non_null(why);
            assert_string_equal(why, c->why);
        }
    }
}

struct contains_case {
    const char *addr;
    bool in;
};

static void test_net_set_contains(void **state)
{
    (void)state;
    static const struct contains_case cases[] = {
        {"192.0.2.1", true},     {"192.0.2.255", true},  {"192.0.3.1", false},
        {"10.1.2.3", true},      {"11.0.0.1", false},    {"::ffff:10.9.9.9", true},
        {"2001:db8:5::1", true}, {"2001:db9::1", false}, {"198.51.100.7", true},
        {"198.51.100.8", false}, {"::1", true},          {"::2", false},
    };
    struct net_set *set = NULL;
    char err[128] = "";
    assert_int_equal(net_set_parse("192.0.2.0/24, 10.0.0.0/8\n  2001:db8::/32,,198.51.100.7 ::1",
                                   &set, err, sizeof(err)),
                     0);
    assert_int_equal(net_set_count(set), 5);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct net_addr a;
        assert_int_equal(net_addr_parse(cases[i].addr, strlen(cases[i].addr), &a), 0);
        if (net_set_contains(set, &a) != cases[i].in)
            fail_msg("%s: expected %s", cases[i].addr, cases[i].in ? "in" : "out");
    }
    net_set_free(set);
}

static void test_net_set_errors(void **state)
{
    (void)state;
    struct net_set *set = (struct net_set *)&set;
    char err[128] = "";
    assert_int_equal(net_set_parse("192.0.2.0/24 192.0.2.1/24", &set, err, sizeof(err)), -EINVAL);
    assert_null(set);
    assert_string_equal(err, "bad network \"192.0.2.1/24\": host bits set");
    assert_int_equal(net_set_parse("", &set, err, sizeof(err)), 0);
    assert_int_equal(net_set_count(set), 0);
    struct net_addr a;
    assert_int_equal(net_addr_parse("192.0.2.1", 9, &a), 0);
    assert_false(net_set_contains(set, &a));
    assert_false(net_set_contains(NULL, &a));
    net_set_free(set);
    net_set_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_net_parses_and_formats_addresses),
        cmocka_unit_test(test_net_parse_respects_length),
        cmocka_unit_test(test_net_groups_by_prefix),
        cmocka_unit_test(test_net_parses_cidrs),
        cmocka_unit_test(test_net_set_contains),
        cmocka_unit_test(test_net_set_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
