/* Unit tests of lib/overrides.c. Fixtures under test/data/overrides/ are real postconf
 * output and real file bytes: a test instance's main.cf/master.cf before, after the
 * default profile was applied by real postconf runs (*.applied), and after an
 * administrator's "postconf -e smtpd_soft_error_limit=7" during stress (*.admin). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "overrides.h"

#define DIR "/etc/postfix-test"

struct fixture {
    char *d, *F, *n, *P, *main, *master;
    size_t d_len, F_len, n_len, P_len, main_len, master_len;
    struct overrides_params *known;
    struct overrides_services *svcs;
    struct overrides_profile *resolved;
};

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

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    fx->d = load("postconf-d.txt", &fx->d_len);
    fx->F = load("postconf-F.txt", &fx->F_len);
    fx->n = load("postconf-n.txt", &fx->n_len);
    fx->P = load("postconf-P.txt", &fx->P_len);
    fx->main = load("main.cf", &fx->main_len);
    fx->master = load("master.cf", &fx->master_len);
    char err[256] = "";
    struct overrides_profile *p;
    if (overrides_known_params_parse(fx->d, fx->d_len, &fx->known) ||
        overrides_services_parse(fx->F, fx->F_len, &fx->svcs) ||
        overrides_profile_parse(OVERRIDES_DEFAULT_MAIN_CF, OVERRIDES_DEFAULT_MASTER_CF, &p, err,
                                sizeof(err)))
        return -1;
    int rc = overrides_profile_resolve(p, fx->known, fx->svcs, &fx->resolved, err, sizeof(err));
    overrides_profile_free(p);
    *state = fx;
    return rc;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    free(fx->d);
    free(fx->F);
    free(fx->n);
    free(fx->P);
    free(fx->main);
    free(fx->master);
    overrides_params_free(fx->known);
    overrides_services_free(fx->svcs);
    overrides_profile_free(fx->resolved);
    free(fx);
    return 0;
}

/* Each command rendered as one line, joined with '\n', for exact comparison. */
static char *plan_text(const struct overrides_plan *p)
{
    size_t cap = 1;
    char **lines = calloc(p->n + 1, sizeof(char *));
    for (size_t i = 0; i < p->n; i++) {
        assert_int_equal(overrides_cmd_format(&p->cmds[i], &lines[i]), 0);
        assert_null(p->cmds[i].argv[p->cmds[i].argc]);
        cap += strlen(lines[i]) + 1;
    }
    char *s = calloc(1, cap);
    for (size_t i = 0; i < p->n; i++) {
        strcat(s, lines[i]);
        strcat(s, "\n");
        free(lines[i]);
    }
    free(lines);
    return s;
}

static struct overrides_journal *new_journal(struct fixture *fx)
{
    struct overrides_journal *j;
    assert_int_equal(overrides_journal_new(fx->resolved, DIR, fx->main, fx->main_len, fx->master,
                                           fx->master_len, fx->n, fx->n_len, fx->P, fx->P_len,
                                           1700000000000, &j),
                     0);
    return j;
}

static void test_overrides_profile_syntax(void **state)
{
    (void)state;
    static const struct {
        const char *main, *master;
        int rc;
        const char *first; /* "name=value" or "svc/type/name=value" of entry 0 */
        size_t n;
    } cases[] = {
        {"a=1 b=2", NULL, 0, "a=1", 2},
        {"  a=1\n\tb=2  ", "", 0, "a=1", 2},
        {"{ smtpd_banner = $myhostname ESMTP busy }", NULL, 0,
         "smtpd_banner=$myhostname ESMTP busy", 1},
        {"smtpd_timeout=${stress?{10}:{300}}s", NULL, 0, "smtpd_timeout=${stress?{10}:{300}}s", 1},
        {"{ x = ${stress?{a b}:{c}} }", NULL, 0, "x=${stress?{a b}:{c}}", 1},
        {"rbl_reply_maps=", NULL, 0, "rbl_reply_maps=", 1},
        {"a=permit_mynetworks,reject", NULL, 0, "a=permit_mynetworks,reject", 1},
        {NULL, "smtp/inet/stress=yes 127.0.0.1:2525/inet/stress=yes", 0, "smtp/inet/stress=yes", 2},
        {NULL, "[::1]:25/inet/stress=yes", 0, "[::1]:25/inet/stress=yes", 1},
        {NULL, "*/pass/stress=yes", 0, "*/pass/stress=yes", 1},
        {NULL, NULL, 0, NULL, 0},
        /* syntax errors */
        {"novalue", NULL, -EINVAL, NULL, 0},
        {"=x", NULL, -EINVAL, NULL, 0},
        {"{ a = b", NULL, -EINVAL, NULL, 0},
        {"a=b}", NULL, -EINVAL, NULL, 0},
        {"{ a = b }x", NULL, -EINVAL, NULL, 0},
        {"a=${x", NULL, -EINVAL, NULL, 0},
        {NULL, "smtp/stress=yes", -EINVAL, NULL, 0},
        {NULL, "smtp/tcp/stress=yes", -EINVAL, NULL, 0},
        {NULL, "smtp/inet/a/b=yes", -EINVAL, NULL, 0},
        /* injection attempts */
        {"{ a = b\nmydestination = evil }", NULL, -EINVAL, NULL, 0},
        {"a=b;reboot", NULL, -EINVAL, NULL, 0},
        {"a=`id`", NULL, -EINVAL, NULL, 0},
        {"a=$(id)|x", NULL, -EINVAL, NULL, 0},
        {"a=x>/etc/passwd", NULL, -EINVAL, NULL, 0},
        {"a=\"q\"", NULL, -EINVAL, NULL, 0},
        {"a=back\\slash", NULL, -EINVAL, NULL, 0},
        {"a=#comment", NULL, -EINVAL, NULL, 0},
        {"a=\x7f", NULL, -EINVAL, NULL, 0},
        {"a=caf\xc3\xa9", NULL, -EINVAL, NULL, 0},
        {"-X=1", NULL, -EINVAL, NULL, 0},
        {"my-name=1", NULL, -EINVAL, NULL, 0},
        {NULL, "-e/inet/stress=yes", -EINVAL, NULL, 0},
        {NULL, "smtp/inet/-o=yes", -EINVAL, NULL, 0},
        {NULL, "{ smtp/inet/smtpd_client_restrictions = permit_mynetworks, reject }", -EINVAL, NULL,
         0},
        {NULL, "smtp/inet/stress=yes\rx", -EINVAL, NULL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct overrides_profile *p = NULL;
        char err[256] = "";
        int rc = overrides_profile_parse(cases[i].main, cases[i].master, &p, err, sizeof(err));
        if (rc != cases[i].rc)
            fail_msg("case %zu (%s | %s): rc %d want %d (%s)", i,
                     cases[i].main ? cases[i].main : "-", cases[i].master ? cases[i].master : "-",
                     rc, cases[i].rc, err);
        if (rc) {
            assert_null(p);
            assert_true(strlen(err) > 0);
            continue;
        }
        assert_int_equal(p->n, cases[i].n);
        if (cases[i].first) {
            char got[512];
            const struct overrides_entry *e = &p->entries[0];
            if (e->file == OVERRIDES_MASTER)
                snprintf(got, sizeof(got), "%s/%s/%s=%s", e->service, e->type, e->name, e->value);
            else
                snprintf(got, sizeof(got), "%s=%s", e->name, e->value);
            assert_string_equal(got, cases[i].first);
        }
        overrides_profile_free(p);
    }
}

static void test_overrides_known_params(void **state)
{
    struct fixture *fx = *state;
    assert_true(overrides_known_params_count(fx->known) > 900);
    assert_true(overrides_known_param(fx->known, "smtpd_client_connection_rate_limit"));
    assert_true(overrides_known_param(fx->known, "stress"));
    assert_true(overrides_known_param(fx->known, "2bounce_notice_recipient"));
    assert_false(overrides_known_param(fx->known, "smtpd_client_connection_rate_limits"));
    assert_false(overrides_known_param(fx->known, ""));
    struct overrides_params *k;
    assert_int_equal(overrides_known_params_parse("postconf: fatal: no\n", 20, &k), -EINVAL);
    assert_null(k);
}

static void test_overrides_services_classified(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *svc, *type, *limit;
        bool pub, autostress;
    } want[] = {
        {"smtp", "inet", "1", false, false}, /* postscreen */
        {"smtpd", "pass", "4", true, true},
        {"submission", "inet", "-", true, false},      /* users' port */
        {"127.0.0.1:10025", "inet", "-", true, false}, /* content filter reinjection */
        {"2525", "inet", "-", true, false},            /* explicit -o stress= */
        {"127.0.0.1:2526", "inet", "2", true, true},
        {"pickup", "unix", "1", false, false},
        {"cleanup", "unix", "0", false, false},
        {"qmgr", "unix", "1", false, false},
    };
    assert_int_equal(fx->svcs->n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < fx->svcs->n; i++) {
        const struct overrides_service *v = &fx->svcs->v[i];
        assert_string_equal(v->service, want[i].svc);
        assert_string_equal(v->type, want[i].type);
        assert_string_equal(v->process_limit, want[i].limit);
        if (v->public_smtpd != want[i].pub || v->stress_auto != want[i].autostress)
            fail_msg("%s/%s: public %d auto %d", v->service, v->type, v->public_smtpd,
                     v->stress_auto);
    }
}

static void test_overrides_resolve_default_profile(void **state)
{
    struct fixture *fx = *state;
    static const char *const want[] = {
        "smtpd_client_connection_count_limit=10",
        "smtpd_client_connection_rate_limit=30",
        "smtpd_error_sleep_time=0s",
        "smtpd_soft_error_limit=3",
        "postscreen_post_queue_limit=50",
        "127.0.0.1:2526/inet/stress=yes",
        "smtpd/pass/stress=yes",
    };
    assert_int_equal(fx->resolved->n, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < fx->resolved->n; i++) {
        const struct overrides_entry *e = &fx->resolved->entries[i];
        char got[512];
        if (e->file == OVERRIDES_MASTER)
            snprintf(got, sizeof(got), "%s/%s/%s=%s", e->service, e->type, e->name, e->value);
        else
            snprintf(got, sizeof(got), "%s=%s", e->name, e->value);
        assert_string_equal(got, want[i]);
    }
}

static void test_overrides_resolve_rejects(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *main, *master, *msg;
    } cases[] = {
        {"smtpd_no_such_thing=1", NULL, "not a setting stress profiles may change"},
        {NULL, "smtp/inet/no_such_param=1", "not a setting stress profiles may change"},
        {NULL, "nosuch/inet/stress=yes", "no such service"},
        {NULL, "smtp/unix/stress=yes", "no such service"},
        {"smtpd_soft_error_limit=1 smtpd_soft_error_limit=2", NULL, "set twice"},
        {NULL, "*/pass/stress=yes smtpd/pass/stress=no", "set twice"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct overrides_profile *p, *r = NULL;
        char err[256] = "";
        assert_int_equal(
            overrides_profile_parse(cases[i].main, cases[i].master, &p, err, sizeof(err)), 0);
        assert_int_equal(overrides_profile_resolve(p, fx->known, fx->svcs, &r, err, sizeof(err)),
                         -EINVAL);
        assert_null(r);
        if (!strstr(err, cases[i].msg))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].msg);
        overrides_profile_free(p);
    }
}

static void test_overrides_journal_priors_and_apply_plan(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = new_journal(fx);
    assert_int_equal(j->n, 7);
    assert_string_equal(j->settings[0].name, "smtpd_client_connection_count_limit");
    assert_string_equal(j->settings[0].prior, "20");
    for (size_t i = 1; i < j->n; i++)
        assert_null(j->settings[i].prior);
    assert_false(j->have_expected);
    assert_int_equal(j->main_original.size, fx->main_len);
    assert_memory_equal(j->main_original.data, fx->main, fx->main_len);

    struct overrides_plan *p;
    assert_int_equal(overrides_apply_plan(j, &p), 0);
    char *text = plan_text(p);
    assert_string_equal(text,
                        "postconf -c /etc/postfix-test -e smtpd_client_connection_count_limit=10 "
                        "smtpd_client_connection_rate_limit=30 smtpd_error_sleep_time=0s "
                        "smtpd_soft_error_limit=3 postscreen_post_queue_limit=50\n"
                        "postconf -c /etc/postfix-test -P 127.0.0.1:2526/inet/stress=yes "
                        "smtpd/pass/stress=yes\n"
                        "postfix -c /etc/postfix-test reload\n");
    /* The exact argv words, not only their rendering. */
    assert_int_equal(p->cmds[1].argc, 6);
    assert_string_equal(p->cmds[1].argv[3], "-P");
    assert_string_equal(p->cmds[1].argv[5], "smtpd/pass/stress=yes");
    free(text);
    overrides_plan_free(p);
    overrides_journal_free(j);
}

static void test_overrides_apply_plan_value_with_spaces_and_noop(void **state)
{
    struct fixture *fx = *state;
    struct overrides_profile *p, *r;
    char err[256] = "";
    assert_int_equal(overrides_profile_parse("{ smtpd_banner = $myhostname ESMTP busy } "
                                             "inet_protocols=ipv4",
                                             NULL, &p, err, sizeof(err)),
                     0);
    /* Neither is a setting a profile may change: resolve (every apply) refuses them. */
    assert_int_equal(overrides_profile_resolve(p, fx->known, fx->svcs, &r, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "smtpd_banner: not a setting stress profiles may change"));
    /* The plan's own quoting, from the parsed profile (no "*" entries to expand). */
    struct overrides_journal *j;
    assert_int_equal(overrides_journal_new(p, DIR, fx->main, fx->main_len, fx->master,
                                           fx->master_len, fx->n, fx->n_len, fx->P, fx->P_len, 1,
                                           &j),
                     0);
    struct overrides_plan *plan;
    assert_int_equal(overrides_apply_plan(j, &plan), 0);
    /* inet_protocols is already ipv4: not touched. The banner is one argv word. */
    assert_int_equal(plan->n, 2);
    assert_int_equal(plan->cmds[0].argc, 5);
    assert_string_equal(plan->cmds[0].argv[4], "smtpd_banner=$myhostname ESMTP busy");
    char *line;
    assert_int_equal(overrides_cmd_format(&plan->cmds[0], &line), 0);
    assert_string_equal(line,
                        "postconf -c /etc/postfix-test -e 'smtpd_banner=$myhostname ESMTP busy'");
    free(line);
    overrides_plan_free(plan);
    overrides_journal_free(j);

    /* A profile whose every value is already in force: an empty plan. */
    overrides_profile_free(p);
    assert_int_equal(overrides_profile_parse("smtpd_client_connection_count_limit=20", NULL, &p,
                                             err, sizeof(err)),
                     0);
    assert_int_equal(overrides_profile_resolve(p, fx->known, fx->svcs, &r, err, sizeof(err)), 0);
    assert_int_equal(overrides_journal_new(r, DIR, fx->main, fx->main_len, fx->master,
                                           fx->master_len, fx->n, fx->n_len, fx->P, fx->P_len, 1,
                                           &j),
                     0);
    assert_int_equal(overrides_apply_plan(j, &plan), 0);
    assert_int_equal(plan->n, 0);
    overrides_plan_free(plan);
    overrides_journal_free(j);
    overrides_profile_free(p);
    overrides_profile_free(r);
    assert_int_equal(
        overrides_journal_new(fx->resolved, "relative/dir", "", 0, "", 0, "", 0, "", 0, 1, &j),
        -EINVAL);
}

/* The journal as written after applying: with the real post-apply file bytes. */
static struct overrides_journal *applied_journal(struct fixture *fx)
{
    struct overrides_journal *j = new_journal(fx);
    size_t ml, sl;
    char *m = load("main.cf.applied", &ml);
    char *s = load("master.cf.applied", &sl);
    assert_int_equal(overrides_journal_set_expected(j, m, ml, s, sl), 0);
    free(m);
    free(s);
    return j;
}

static void test_overrides_journal_roundtrip(void **state)
{
    struct fixture *fx = *state;
    for (int expected = 0; expected < 2; expected++) {
        struct overrides_journal *j = expected ? applied_journal(fx) : new_journal(fx);
        char *text, *text2;
        size_t len, len2;
        assert_int_equal(overrides_journal_serialize(j, &text, &len), 0);
        struct overrides_journal *k;
        char err[256] = "";
        if (overrides_journal_parse(text, len, &k, err, sizeof(err)) != 0)
            fail_msg("parse: %s", err);
        assert_int_equal(k->n, j->n);
        assert_int_equal(k->have_expected, expected);
        assert_int_equal(k->created_ms, 1700000000000);
        assert_string_equal(k->config_dir, DIR);
        assert_int_equal(k->main_original.size, fx->main_len);
        assert_memory_equal(k->main_original.data, fx->main, fx->main_len);
        assert_memory_equal(k->master_original.data, fx->master, fx->master_len);
        for (size_t i = 0; i < j->n; i++) {
            assert_string_equal(k->settings[i].name, j->settings[i].name);
            assert_string_equal(k->settings[i].value, j->settings[i].value);
            assert_true((k->settings[i].prior == NULL) == (j->settings[i].prior == NULL));
        }
        /* Serializing the parsed journal gives the same text. */
        assert_int_equal(overrides_journal_serialize(k, &text2, &len2), 0);
        assert_int_equal(len, len2);
        assert_string_equal(text, text2);
        free(text);
        free(text2);
        overrides_journal_free(j);
        overrides_journal_free(k);
    }
}

static void test_overrides_journal_truncated_is_rejected(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);
    char *text;
    size_t len;
    assert_int_equal(overrides_journal_serialize(j, &text, &len), 0);
    /* A crash in the middle of writing leaves a prefix: every prefix is refused. */
    for (size_t cut = 0; cut < len; cut++) {
        struct overrides_journal *k = NULL;
        char err[256] = "";
        int rc = overrides_journal_parse(text, cut, &k, err, sizeof(err));
        if (rc != -EINVAL)
            fail_msg("prefix of %zu/%zu bytes: rc %d", cut, len, rc);
        assert_null(k);
    }
    free(text);
    overrides_journal_free(j);
}

/* Replaces the first occurrence of `from` in text by `to` (into a new buffer). */
static char *replace(const char *text, const char *from, const char *to)
{
    const char *at = strstr(text, from);
    assert_non_null(at);
    size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
    char *o = malloc(n);
    snprintf(o, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    return o;
}

static void test_overrides_journal_corruption_is_rejected(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);
    char *text;
    size_t len;
    assert_int_equal(overrides_journal_serialize(j, &text, &len), 0);
    /* The base64 of main.cf starts with "IyBUZXN0" ("# Test"). */
    static const struct {
        const char *from, *to, *msg;
    } cases[] = {
        {"\"IyBUZXN0", "\"IyBUZXN1", "checksum"},
        {"\"IyBUZXN0", "\"IyBUZXN", "checksum"},
        {"\"IyBUZXN0", "\"I*BUZXN0", "checksum"},
        {"\"main_cf_size\": ", "\"main_cf_size\": 1", "checksum"},
        {"\"value\": \"10\"", "\"value\": \"10;rm\"", "unsafe"},
        {"\"value\": \"10\"", "\"value\": \"1\\n0\"", "unsafe"},
        {"\"value\": \"10\"", "\"value\": \"1\\u00000\"", "NUL"},
        {"\"name\": \"smtpd_client_connection_count_limit\"", "\"name\": \"-X\"", "unsafe"},
        {"\"service\": \"smtpd\"", "\"service\": \"-e\"", "bad service"},
        {"\"prior\": \"20\"", "\"prior\": 20", "prior"},
        {"\"prior\": \"20\"", "\"prior\": \"2\\n0\"", "unsafe"},
        {"\"version\": 1", "\"version\": 2", "version"},
        {"\"format\": \"", "\"extra\": 1, \"format\": \"", "unknown key"},
        {"\"format\": \"", "\"format\": \"x\", \"format\": \"", "duplicate"},
        {"\"config_directory\": \"/", "\"config_directory\": \"", "header"},
        {"\"have_expected\": true", "\"have_expected\": false", "expected"},
        {"\"file\": \"main\"", "\"file\": \"other\"", "bad file"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *bad = replace(text, cases[i].from, cases[i].to);
        struct overrides_journal *k = NULL;
        char err[256] = "";
        int rc = overrides_journal_parse(bad, strlen(bad), &k, err, sizeof(err));
        if (rc != -EINVAL || !strstr(err, cases[i].msg))
            fail_msg("case %zu: rc %d err \"%s\", want \"%s\"", i, rc, err, cases[i].msg);
        assert_null(k);
        free(bad);
    }
    /* Trailing bytes after the object. */
    char *trail = malloc(len + 3);
    snprintf(trail, len + 3, "%s{}", text);
    struct overrides_journal *k = NULL;
    assert_int_equal(overrides_journal_parse(trail, len + 2, &k, NULL, 0), -EINVAL);
    assert_int_equal(overrides_journal_parse("[]", 2, &k, NULL, 0), -EINVAL);
    free(trail);
    free(text);
    overrides_journal_free(j);
}

static struct overrides_restore *restore_with(struct overrides_journal *j, const char *main_name,
                                              const char *master_name, const char *n_name,
                                              const char *P_name)
{
    size_t ml, sl, nl, pl;
    char *m = load(main_name, &ml), *s = load(master_name, &sl);
    char *n = load(n_name, &nl), *P = load(P_name, &pl);
    struct overrides_restore *r;
    assert_int_equal(overrides_restore_plan(j, m, ml, s, sl, n, nl, P, pl, &r), 0);
    free(m);
    free(s);
    free(n);
    free(P);
    return r;
}

static void test_overrides_restore_untouched_is_byte_exact(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);
    struct overrides_restore *r = restore_with(j, "main.cf.applied", "master.cf.applied",
                                               "postconf-n.applied.txt", "postconf-P.applied.txt");
    assert_true(r->write_main);
    assert_true(r->write_master);
    assert_false(r->main_is_original);
    assert_false(r->master_is_original);
    assert_int_equal(r->n_conflicts, 0);
    char *text = plan_text(&r->plan);
    assert_string_equal(text, "postfix -c /etc/postfix-test reload\n");
    free(text);
    /* What the controller writes back is the original, byte for byte. */
    assert_int_equal(j->main_original.size, fx->main_len);
    assert_memory_equal(j->main_original.data, fx->main, fx->main_len);
    assert_int_equal(j->master_original.size, fx->master_len);
    assert_memory_equal(j->master_original.data, fx->master, fx->master_len);
    overrides_restore_free(r);

    /* Files already back to the original (restore ran, crash before the journal was
     * removed): nothing to write, still a reload. */
    r = restore_with(j, "main.cf", "master.cf", "postconf-n.txt", "postconf-P.txt");
    assert_false(r->write_main);
    assert_false(r->write_master);
    assert_true(r->main_is_original);
    assert_true(r->master_is_original);
    assert_int_equal(r->plan.n, 1);
    assert_int_equal(r->n_conflicts, 0);
    overrides_restore_free(r);
    overrides_journal_free(j);
}

static void test_overrides_restore_admin_edit_conflict(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);
    struct overrides_restore *r = restore_with(j, "main.cf.admin", "master.cf.applied",
                                               "postconf-n.admin.txt", "postconf-P.applied.txt");
    assert_false(r->write_main);
    assert_true(r->write_master);
    assert_int_equal(r->n_conflicts, 1);
    assert_string_equal(r->conflicts[0].setting, "smtpd_soft_error_limit");
    assert_null(r->conflicts[0].prior);
    assert_string_equal(r->conflicts[0].ours, "3");
    assert_string_equal(r->conflicts[0].current, "7");
    assert_non_null(r->conflicts[0].why);
    char *text = plan_text(&r->plan);
    assert_string_equal(text, "postconf -c /etc/postfix-test -e "
                              "smtpd_client_connection_count_limit=20\n"
                              "postconf -c /etc/postfix-test -X smtpd_client_connection_rate_limit "
                              "smtpd_error_sleep_time postscreen_post_queue_limit\n"
                              "postfix -c /etc/postfix-test reload\n");
    free(text);
    overrides_restore_free(r);
    overrides_journal_free(j);
}

static void test_overrides_restore_after_crash_mid_apply(void **state)
{
    struct fixture *fx = *state;
    /* The journal was written, postconf ran, the daemon died before recording the
     * expected bytes: every setting goes back by command. */
    struct overrides_journal *j = new_journal(fx);
    struct overrides_restore *r = restore_with(j, "main.cf.applied", "master.cf.applied",
                                               "postconf-n.applied.txt", "postconf-P.applied.txt");
    assert_false(r->write_main);
    assert_false(r->write_master);
    assert_int_equal(r->n_conflicts, 0);
    char *text = plan_text(&r->plan);
    assert_string_equal(text, "postconf -c /etc/postfix-test -e "
                              "smtpd_client_connection_count_limit=20\n"
                              "postconf -c /etc/postfix-test -X smtpd_client_connection_rate_limit "
                              "smtpd_error_sleep_time smtpd_soft_error_limit "
                              "postscreen_post_queue_limit\n"
                              "postconf -c /etc/postfix-test -PX 127.0.0.1:2526/inet/stress "
                              "smtpd/pass/stress\n"
                              "postfix -c /etc/postfix-test reload\n");
    free(text);
    overrides_restore_free(r);
    overrides_journal_free(j);
}

/* The administrator edits a file during an episode in ways that change its size or not.
 * The journal compares whole files: a file that is neither the original nor exactly what
 * postsurge left is the administrator's, so it is never written back; its settings go
 * back by command, and one whose value moved away from ours is a conflict. The postconf
 * listings are what postconf would print for each edited file, written by hand. */
struct edited {
    char *main, *master, *n, *P;
};

static struct overrides_restore *restore_edited(struct overrides_journal *j, struct edited *e)
{
    struct overrides_restore *r;
    assert_int_equal(overrides_restore_plan(j, e->main, strlen(e->main), e->master,
                                            strlen(e->master), e->n, strlen(e->n), e->P,
                                            strlen(e->P), &r),
                     0);
    free(e->main);
    free(e->master);
    free(e->n);
    free(e->P);
    return r;
}

static struct edited applied_files(void)
{
    size_t len;
    struct edited e = {load("main.cf.applied", &len), load("master.cf.applied", &len),
                       load("postconf-n.applied.txt", &len), load("postconf-P.applied.txt", &len)};
    return e;
}

#define MAIN_SET_PRIOR "postconf -c /etc/postfix-test -e smtpd_client_connection_count_limit=20\n"
#define RELOAD "postfix -c /etc/postfix-test reload\n"

static void test_overrides_restore_main_cf_truncated_is_conflict(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);

    /* The last two bytes cut off ("0\n"): main.cf is a strict prefix of what postsurge
     * left, and smtpd_client_connection_rate_limit now reads 3 instead of our 30. */
    struct edited e = applied_files();
    size_t ml = strlen(e.main);
    assert_true(ml > 2 && strcmp(e.main + ml - 5, "= 30\n") == 0);
    e.main[ml - 2] = '\0';
    char *n = replace(e.n, "smtpd_client_connection_rate_limit = 30",
                      "smtpd_client_connection_rate_limit = 3");
    free(e.n);
    e.n = n;
    struct overrides_restore *r = restore_edited(j, &e);
    assert_false(r->write_main); /* the administrator's file stays */
    assert_true(r->write_master);
    assert_int_equal(r->n_conflicts, 1);
    assert_string_equal(r->conflicts[0].setting, "smtpd_client_connection_rate_limit");
    assert_null(r->conflicts[0].prior);
    assert_string_equal(r->conflicts[0].ours, "30");
    assert_string_equal(r->conflicts[0].current, "3");
    char *text = plan_text(&r->plan);
    assert_string_equal(text, MAIN_SET_PRIOR "postconf -c /etc/postfix-test -X "
                                             "smtpd_error_sleep_time smtpd_soft_error_limit "
                                             "postscreen_post_queue_limit\n" RELOAD);
    free(text);
    overrides_restore_free(r);

    /* Emptied: zero bytes, a prefix of both the original and what postsurge left. Every
     * setting of ours is gone; the one that had a prior value (20) no longer has it. */
    e = applied_files();
    e.main[0] = '\0';
    e.n[0] = '\0';
    r = restore_edited(j, &e);
    assert_false(r->write_main);
    assert_true(r->write_master);
    assert_int_equal(r->n_conflicts, 1);
    assert_string_equal(r->conflicts[0].setting, "smtpd_client_connection_count_limit");
    assert_string_equal(r->conflicts[0].prior, "20");
    assert_string_equal(r->conflicts[0].ours, "10");
    assert_null(r->conflicts[0].current);
    text = plan_text(&r->plan);
    assert_string_equal(text, RELOAD);
    free(text);
    overrides_restore_free(r);
    overrides_journal_free(j);
}

static void test_overrides_restore_master_cf_shortened_is_conflict(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);
    /* The administrator deletes the last service (qmgr): master.cf is a strict prefix of
     * what postsurge left and postconf -P prints the same. */
    struct edited e = applied_files();
    char *last = strstr(e.master, "qmgr      unix");
    assert_non_null(last);
    *last = '\0';
    struct overrides_restore *r = restore_edited(j, &e);
    assert_true(r->write_main);
    assert_false(r->write_master);
    assert_int_equal(r->n_conflicts, 0);
    char *text = plan_text(&r->plan);
    assert_string_equal(text, "postconf -c /etc/postfix-test -PX 127.0.0.1:2526/inet/stress "
                              "smtpd/pass/stress\n" RELOAD);
    free(text);
    overrides_restore_free(r);
    overrides_journal_free(j);
}

static void test_overrides_restore_main_cf_grown_or_same_size_is_conflict(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);

    /* Grown: a comment appended, postconf -n unchanged. Nothing of ours was touched, so
     * no conflict, but the file is the administrator's: back by command. */
    struct edited e = applied_files();
    char *m = malloc(strlen(e.main) + 32);
    strcpy(m, e.main);
    strcat(m, "# raised for the migration\n");
    free(e.main);
    e.main = m;
    struct overrides_restore *r = restore_edited(j, &e);
    assert_false(r->write_main);
    assert_true(r->write_master);
    assert_int_equal(r->n_conflicts, 0);
    char *text = plan_text(&r->plan);
    assert_string_equal(text, MAIN_SET_PRIOR "postconf -c /etc/postfix-test -X "
                                             "smtpd_client_connection_rate_limit "
                                             "smtpd_error_sleep_time smtpd_soft_error_limit "
                                             "postscreen_post_queue_limit\n" RELOAD);
    free(text);
    overrides_restore_free(r);

    /* Same size, other bytes: our 10 became 12. That setting is a conflict (prior 20,
     * ours 10, now 12); the others go back by command. */
    e = applied_files();
    size_t before = strlen(e.main);
    m = replace(e.main, "smtpd_client_connection_count_limit = 10",
                "smtpd_client_connection_count_limit = 12");
    free(e.main);
    e.main = m;
    assert_int_equal(strlen(e.main), before);
    char *n = replace(e.n, "smtpd_client_connection_count_limit = 10",
                      "smtpd_client_connection_count_limit = 12");
    free(e.n);
    e.n = n;
    r = restore_edited(j, &e);
    assert_false(r->write_main);
    assert_true(r->write_master);
    assert_int_equal(r->n_conflicts, 1);
    assert_string_equal(r->conflicts[0].setting, "smtpd_client_connection_count_limit");
    assert_string_equal(r->conflicts[0].prior, "20");
    assert_string_equal(r->conflicts[0].ours, "10");
    assert_string_equal(r->conflicts[0].current, "12");
    text = plan_text(&r->plan);
    assert_string_equal(text, "postconf -c /etc/postfix-test -X "
                              "smtpd_client_connection_rate_limit smtpd_error_sleep_time "
                              "smtpd_soft_error_limit postscreen_post_queue_limit\n" RELOAD);
    free(text);
    overrides_restore_free(r);
    overrides_journal_free(j);
}

static void test_overrides_verify(void **state)
{
    struct fixture *fx = *state;
    struct overrides_journal *j = applied_journal(fx);
    size_t nl, pl;
    char *n = load("postconf-n.applied.txt", &nl), *P = load("postconf-P.applied.txt", &pl);
    char err[256] = "";
    assert_int_equal(overrides_verify(j, n, nl, P, pl, err, sizeof(err)), 0);
    free(n);
    n = load("postconf-n.admin.txt", &nl);
    assert_int_equal(overrides_verify(j, n, nl, P, pl, err, sizeof(err)), -EIO);
    assert_non_null(strstr(err, "smtpd_soft_error_limit"));
    assert_int_equal(overrides_verify(j, fx->n, fx->n_len, fx->P, fx->P_len, err, sizeof(err)),
                     -EIO);
    free(n);
    free(P);
    overrides_journal_free(j);
}

static void test_overrides_cmd_format_quotes(void **state)
{
    (void)state;
    char *argv[] = {"postconf", "-e", "a=it's", "", "b=x y", NULL};
    struct overrides_cmd c = {argv, 5};
    char *s;
    assert_int_equal(overrides_cmd_format(&c, &s), 0);
    assert_string_equal(s, "postconf -e 'a=it'\\''s' '' 'b=x y'");
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_overrides_profile_syntax),
        cmocka_unit_test(test_overrides_known_params),
        cmocka_unit_test(test_overrides_services_classified),
        cmocka_unit_test(test_overrides_resolve_default_profile),
        cmocka_unit_test(test_overrides_resolve_rejects),
        cmocka_unit_test(test_overrides_journal_priors_and_apply_plan),
        cmocka_unit_test(test_overrides_apply_plan_value_with_spaces_and_noop),
        cmocka_unit_test(test_overrides_journal_roundtrip),
        cmocka_unit_test(test_overrides_journal_truncated_is_rejected),
        cmocka_unit_test(test_overrides_journal_corruption_is_rejected),
        cmocka_unit_test(test_overrides_restore_untouched_is_byte_exact),
        cmocka_unit_test(test_overrides_restore_admin_edit_conflict),
        cmocka_unit_test(test_overrides_restore_after_crash_mid_apply),
        cmocka_unit_test(test_overrides_restore_main_cf_truncated_is_conflict),
        cmocka_unit_test(test_overrides_restore_master_cf_shortened_is_conflict),
        cmocka_unit_test(test_overrides_restore_main_cf_grown_or_same_size_is_conflict),
        cmocka_unit_test(test_overrides_verify),
        cmocka_unit_test(test_overrides_cmd_format_quotes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
