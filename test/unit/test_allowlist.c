/* Unit tests of lib/allowlist.c and of its use by lib/overrides: the settings a stress
 * profile may change, the syntax of their values, and that what is refused stays
 * refused wherever a profile or a journal is read (config check, resolve before every
 * apply, journal parse before every restore). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "allowlist.h"
#include "overrides.h"

static char *load(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/overrides/%s", TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* What the privilege-separation review showed could be set through the helper: each
 * one refused, in main.cf and as a master.cf -o override alike. */
static void test_allowlist_refuses_what_leads_to_root(void **state)
{
    (void)state;
    static const struct {
        const char *name, *value;
    } cases[] = {
        {"daemon_directory", "/var/lib/postsurge/evil"},
        {"command_directory", "/var/lib/postsurge/evil"},
        {"mailbox_command", "/var/lib/postsurge/evil"},
        {"sendmail_path", "/var/lib/postsurge/evil"},
        {"import_environment", "LD_PRELOAD=/var/lib/postsurge/x.so"},
        {"virtual_alias_maps", "hash:/var/lib/postsurge/aliases"},
        {"mynetworks", "0.0.0.0/0"},
        {"smtpd_client_event_limit_exceptions", "0.0.0.0/0"},
        {"smtpd_recipient_restrictions", "permit"},
        {"queue_directory", "/var/lib/postsurge"},
        {"content_filter", "smtp:[127.0.0.1]:10024"},
        {"smtpd_banner", "$myhostname"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (int master = 0; master < 2; master++) {
            char err[300] = "";
            if (allowlist_check(master, cases[i].name, cases[i].value, err, sizeof(err)))
                fail_msg("%s=%s accepted (master %d)", cases[i].name, cases[i].value, master);
            assert_non_null(strstr(err, cases[i].name));
            assert_non_null(strstr(err, "not a setting stress profiles may change"));
        }
    }
}

/* Values are checked against the syntax of their kind: nothing but digits, a unit, a
 * yes/no or a postscreen action gets through. */
static void test_allowlist_value_syntax(void **state)
{
    (void)state;
    static const struct {
        bool master;
        const char *name, *value;
        bool ok;
    } cases[] = {
        {false, "smtpd_client_connection_count_limit", "10", true},
        {false, "smtpd_client_connection_count_limit", "0", true},
        {false, "smtpd_client_connection_count_limit", "999999999", true},
        {false, "smtpd_client_connection_count_limit", "1000000000", false},
        {false, "smtpd_client_connection_count_limit", "", false},
        {false, "smtpd_client_connection_count_limit", "-1", false},
        {false, "smtpd_client_connection_count_limit", "10s", false},
        {false, "smtpd_client_connection_count_limit", "$default_process_limit", false},
        {false, "smtpd_client_connection_count_limit", "${stress?{5}:{50}}", false},
        {false, "smtpd_error_sleep_time", "0s", true},
        {false, "smtpd_error_sleep_time", "0", true},
        {false, "smtpd_timeout", "10s", true},
        {false, "smtpd_timeout", "2m", true},
        {false, "smtpd_timeout", "1w", true},
        {false, "smtpd_timeout", "s", false},
        {false, "smtpd_timeout", "10x", false},
        {false, "smtpd_timeout", "10ss", false},
        {false, "smtpd_timeout", "${stress?{10}:{300}}s", false},
        {false, "postscreen_greet_action", "enforce", true},
        {false, "postscreen_greet_action", "drop", true},
        {false, "postscreen_greet_action", "ignore", true},
        {false, "postscreen_greet_action", "reject", false},
        {false, "postscreen_pipelining_enable", "yes", true},
        {false, "postscreen_pipelining_enable", "no", true},
        {false, "postscreen_pipelining_enable", "true", false},
        {true, "stress", "yes", true},
        {true, "stress", "no", true},
        {true, "stress", "", false},
        {true, "stress", "maybe", false},
        {false, "stress", "yes", false}, /* not a main.cf parameter */
        {true, "smtpd_soft_error_limit", "3", true},
        {true, "postscreen_post_queue_limit", "50", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[300] = "";
        bool ok = allowlist_check(cases[i].master, cases[i].name, cases[i].value, err, sizeof(err));
        if (ok != cases[i].ok)
            fail_msg("case %zu %s=%s (master %d): got %d (%s)", i, cases[i].name, cases[i].value,
                     cases[i].master, ok, err);
        if (!ok)
            assert_non_null(strstr(err, cases[i].name));
    }
}

/* Every name on the list is a real Postfix 3.7 parameter (the fixture is the output of
 * postconf -d), except master.cf's "stress", which only exists as an -o override. */
static void test_allowlist_names_are_postfix_parameters(void **state)
{
    (void)state;
    size_t len, n;
    char *d = load("postconf-d.txt", &len);
    struct overrides_params *k = NULL;
    assert_int_equal(overrides_known_params_parse(d, len, &k), 0);
    const struct allowlist_entry *e = allowlist_entries(&n);
    assert_true(n >= 30);
    for (size_t i = 0; i < n; i++) {
        assert_true(e[i].main || e[i].master);
        if (strcmp(e[i].name, "stress") == 0) {
            assert_false(e[i].main);
            continue;
        }
        if (!overrides_known_param(k, e[i].name))
            fail_msg("%s is not in postconf -d", e[i].name);
        /* No path, map, list or command: the name says what it is. */
        static const char *const bad_ends[] = {"_directory", "_maps",        "_command",    "_path",
                                               "networks",   "restrictions", "_environment"};
        size_t nl = strlen(e[i].name);
        for (size_t b = 0; b < sizeof(bad_ends) / sizeof(bad_ends[0]); b++) {
            size_t bl = strlen(bad_ends[b]);
            if (nl >= bl && strcmp(e[i].name + nl - bl, bad_ends[b]) == 0)
                fail_msg("%s on the list", e[i].name);
        }
    }
    /* The default profile passes the list. */
    struct overrides_profile *p = NULL;
    char err[300] = "";
    assert_int_equal(overrides_profile_parse(OVERRIDES_DEFAULT_MAIN_CF, OVERRIDES_DEFAULT_MASTER_CF,
                                             &p, err, sizeof(err)),
                     0);
    assert_int_equal(overrides_profile_allowed(p, err, sizeof(err)), 0);
    overrides_profile_free(p);
    overrides_params_free(k);
    free(d);
}

/* resolve, which the controller and the helper run before every apply, refuses what
 * the list refuses even when Postfix knows the name; an allowed name Postfix does not
 * know is still "unknown". */
static void test_allowlist_enforced_by_resolve(void **state)
{
    (void)state;
    size_t dlen, flen;
    char *d = load("postconf-d.txt", &dlen), *F = load("postconf-F.txt", &flen);
    struct overrides_params *k = NULL;
    struct overrides_services *s = NULL;
    assert_int_equal(overrides_known_params_parse(d, dlen, &k), 0);
    assert_int_equal(overrides_services_parse(F, flen, &s), 0);
    static const struct {
        const char *main, *master, *msg;
    } cases[] = {
        {"daemon_directory=/tmp/x", NULL, "daemon_directory: not a setting"},
        {"mynetworks=0.0.0.0/0", NULL, "mynetworks: not a setting"},
        {NULL, "smtp/inet/mynetworks=0.0.0.0/0", "mynetworks: not a setting"},
        {NULL, "*/inet/smtpd_client_restrictions=permit", "smtpd_client_restrictions: not a"},
        {"smtpd_soft_error_limit=3 sendmail_path=/tmp/x", NULL, "sendmail_path: not a setting"},
        {"smtpd_timeout=forever", NULL, "must be a duration"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct overrides_profile *p = NULL, *r = NULL;
        char err[300] = "";
        assert_int_equal(
            overrides_profile_parse(cases[i].main, cases[i].master, &p, err, sizeof(err)), 0);
        assert_int_equal(overrides_profile_resolve(p, k, s, &r, err, sizeof(err)), -EINVAL);
        assert_null(r);
        if (!strstr(err, cases[i].msg))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
        overrides_profile_free(p);
    }
    /* Allowed, but this Postfix does not know it. */
    static const char small[] = "smtpd_soft_error_limit = 10\nstress = \n";
    struct overrides_params *k2 = NULL;
    assert_int_equal(overrides_known_params_parse(small, sizeof(small) - 1, &k2), 0);
    struct overrides_profile *p = NULL, *r = NULL;
    char err[300] = "";
    assert_int_equal(overrides_profile_parse("smtpd_timeout=10s", NULL, &p, err, sizeof(err)), 0);
    assert_int_equal(overrides_profile_resolve(p, k2, s, &r, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "unknown parameter"));
    overrides_profile_free(p);
    overrides_params_free(k2);
    overrides_services_free(s);
    overrides_params_free(k);
    free(d);
    free(F);
}

/* A journal naming a setting off the list is refused by the strict parse every restore
 * path uses, whoever owns the file. */
static void test_allowlist_enforced_by_journal_parse(void **state)
{
    (void)state;
    size_t nlen, plen, mlen, malen;
    char *n = load("postconf-n.txt", &nlen), *P = load("postconf-P.txt", &plen);
    char *mc = load("main.cf", &mlen), *ma = load("master.cf", &malen);
    static const struct {
        const char *main, *master;
    } cases[] = {
        {"smtpd_soft_error_limit=3 daemon_directory=/var/lib/postsurge/x", NULL},
        {NULL, "smtp/inet/mynetworks=0.0.0.0/0"},
        {"smtpd_timeout=${stress?{10}:{300}}s", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* Built from the parsed profile, skipping resolve: as a forger would write it. */
        struct overrides_profile *p = NULL;
        char err[300] = "";
        assert_int_equal(
            overrides_profile_parse(cases[i].main, cases[i].master, &p, err, sizeof(err)), 0);
        struct overrides_journal *j = NULL, *back = (void *)1;
        assert_int_equal(
            overrides_journal_new(p, "/etc/postfix", mc, mlen, ma, malen, n, nlen, P, plen, 1, &j),
            0);
        char *text = NULL;
        size_t tlen = 0;
        assert_int_equal(overrides_journal_serialize(j, &text, &tlen), 0);
        assert_int_equal(overrides_journal_parse(text, tlen, &back, err, sizeof(err)), -EINVAL);
        assert_null(back);
        if (!strstr(err, "journal:") || (!strstr(err, "must be") && !strstr(err, "not a setting")))
            fail_msg("case %zu: \"%s\"", i, err);
        free(text);
        overrides_journal_free(j);
        overrides_profile_free(p);
    }
    free(n);
    free(P);
    free(mc);
    free(ma);
}

/* The README's table and postsurge.cf(5)'s STRESS PROFILE SETTINGS list exactly the
 * entries of the list, with their kinds: what the documentation promises is enforced. */
static void test_allowlist_documented(void **state)
{
    (void)state;
    static const char *const readme_kind[] = {"count", "duration", "yes/no", "action"};
    size_t len, n;
    char *readme = NULL, *man = NULL;
    {
        char path[1024];
        snprintf(path, sizeof(path), "%s/../../README.md", TEST_DATA);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        readme = calloc(1, 1 << 20);
        len = fread(readme, 1, (1 << 20) - 1, f);
        fclose(f);
        snprintf(path, sizeof(path), "%s/../../policyd/postsurge.cf.5", TEST_DATA);
        f = fopen(path, "rb");
        assert_non_null(f);
        man = calloc(1, 1 << 20);
        len = fread(man, 1, (1 << 20) - 1, f);
        fclose(f);
    }
    char *rb = strstr(readme, "<!-- allowlist:begin -->"),
         *re = strstr(readme, "<!-- allowlist:end -->");
    char *mb = strstr(man, ".\\\" begin allowlist"), *me = strstr(man, ".\\\" end allowlist");
    assert_non_null(rb);
    assert_non_null(re);
    assert_non_null(mb);
    assert_non_null(me);
    *re = '\0';
    *me = '\0';
    const struct allowlist_entry *e = allowlist_entries(&n);
    size_t rows = 0;
    for (char *p = rb; (p = strstr(p, "\n| `")) != NULL; p++)
        rows++;
    assert_int_equal(rows, n);
    size_t items = 0;
    for (char *p = mb; (p = strstr(p, "\n.TP\n")) != NULL; p++)
        items++;
    assert_int_equal(items, n);
    for (size_t i = 0; i < n; i++) {
        char want[300];
        snprintf(want, sizeof(want), "| `%s` | %s%s |", e[i].name, readme_kind[e[i].kind],
                 e[i].main ? "" : " (master.cf only)");
        if (!strstr(rb, want))
            fail_msg("README lacks \"%s\"", want);
        snprintf(want, sizeof(want), ".TP\n\\fB%s\\fR\n", e[i].name);
        if (!strstr(mb, want))
            fail_msg("postsurge.cf(5) lacks %s", e[i].name);
    }
    (void)len;
    free(readme);
    free(man);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowlist_refuses_what_leads_to_root),
        cmocka_unit_test(test_allowlist_value_syntax),
        cmocka_unit_test(test_allowlist_names_are_postfix_parameters),
        cmocka_unit_test(test_allowlist_enforced_by_resolve),
        cmocka_unit_test(test_allowlist_enforced_by_journal_parse),
        cmocka_unit_test(test_allowlist_documented),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
