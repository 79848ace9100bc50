/* Unit tests of lib/privmsg: the framing of the privileged helper's messages and the
 * helper's re-validation of apply requests (what a compromised unprivileged process
 * could send), against the postconf -d / -F fixtures of test/data/overrides. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "privmsg.h"

struct fixture {
    struct overrides_params *known;
    struct overrides_services *svcs;
};

static char *load(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/overrides/%s", TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
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
    size_t dl, fl;
    char *d = load("postconf-d.txt", &dl), *F = load("postconf-F.txt", &fl);
    assert_int_equal(overrides_known_params_parse(d, dl, &fx->known), 0);
    assert_int_equal(overrides_services_parse(F, fl, &fx->svcs), 0);
    free(d);
    free(F);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    overrides_params_free(fx->known);
    overrides_services_free(fx->svcs);
    free(fx);
    return 0;
}

static void test_privmsg_frame_bounds_and_ops(void **state)
{
    (void)state;
    enum privmsg_op op;
    const char *p;
    size_t pl;
    assert_int_equal(privmsg_frame_parse("", 0, &op, &p, &pl), -EMSGSIZE);
    assert_int_equal(privmsg_frame_parse("X{}", 3, &op, &p, &pl), -EBADMSG);
    assert_int_equal(privmsg_frame_parse("A{}", 3, &op, &p, &pl), 0);
    assert_int_equal(op, PRIVMSG_APPLY);
    assert_int_equal(pl, 2);
    char *big = calloc(1, PRIVMSG_MAX + 1);
    big[0] = 'A';
    assert_int_equal(privmsg_frame_parse(big, PRIVMSG_MAX + 1, &op, &p, &pl), -EMSGSIZE);
    char *out;
    size_t ol;
    assert_int_equal(privmsg_frame(PRIVMSG_APPLY, big, PRIVMSG_MAX, &out, &ol), -EMSGSIZE);
    assert_int_equal(privmsg_frame(PRIVMSG_RESTORE, "{}", 2, &out, &ol), 0);
    assert_int_equal(ol, 3);
    assert_memory_equal(out, "R{}", 3);
    free(out);
    free(big);
}

static void test_privmsg_apply_roundtrip_valid(void **state)
{
    struct fixture *fx = *state;
    char *req;
    size_t len;
    assert_int_equal(privmsg_apply_encode(OVERRIDES_DEFAULT_MAIN_CF, OVERRIDES_DEFAULT_MASTER_CF,
                                          1234, &req, &len),
                     0);
    struct overrides_profile *r = NULL;
    int64_t now = 0;
    char err[256] = "";
    assert_int_equal(
        privmsg_apply_decode(req, len, fx->known, fx->svcs, &r, &now, err, sizeof(err)), 0);
    assert_int_equal(now, 1234);
    assert_true(r->n >= 5);
    overrides_profile_free(r);
    free(req);
}

/* Crafted requests the helper must refuse, each with a word of the reason. */
static void test_privmsg_apply_rejects_crafted(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *json, *why;
    } cases[] = {
        {"{\"main_cf\":\"no_such_parameter=1\",\"master_cf\":\"\",\"now_ms\":1}", "not a setting"},
        {"{\"main_cf\":\"smtpd_soft_error_limit=3;reboot\",\"master_cf\":\"\",\"now_ms\":1}",
         "forbidden"},
        {"{\"main_cf\":\"smtpd_soft_error_limit=`id`\",\"master_cf\":\"\",\"now_ms\":1}",
         "forbidden"},
        {"{\"main_cf\":\"-e=1\",\"master_cf\":\"\",\"now_ms\":1}", "name"},
        {"{\"main_cf\":\"content_filter=x\\u000ay=1\",\"master_cf\":\"\",\"now_ms\":1}", ""},
        {"{\"main_cf\":\"a=1\\u0000b\",\"master_cf\":\"\",\"now_ms\":1}", "NUL"},
        {"{\"main_cf\":\"\",\"master_cf\":\"nosuch/inet/stress=yes\",\"now_ms\":1}", ""},
        {"{\"main_cf\":\"\",\"master_cf\":\"smtp/inet/stress=yes x\",\"now_ms\":1}", ""},
        {"{\"main_cf\":\"\",\"master_cf\":\"\",\"now_ms\":1,\"argv\":[\"/bin/sh\"]}", "unexpected"},
        {"{\"main_cf\":\"\",\"now_ms\":1}", "missing"},
        {"{\"main_cf\":1,\"master_cf\":\"\",\"now_ms\":1}", "strings"},
        {"{\"main_cf\":\"\",\"main_cf\":\"x=1\",\"master_cf\":\"\",\"now_ms\":1}", "JSON"},
        {"[1,2]", "object"},
        {"{\"main_cf\":\"", "JSON"},
        {"{\"main_cf\":\"\",\"master_cf\":\"\",\"now_ms\":-5}", "time"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct overrides_profile *r = (void *)1;
        int64_t now = 0;
        char err[256] = "";
        int rc = privmsg_apply_decode(cases[i].json, strlen(cases[i].json), fx->known, fx->svcs, &r,
                                      &now, err, sizeof(err));
        if (rc != -EINVAL)
            fail_msg("case %zu: rc %d (%s)", i, rc, cases[i].json);
        assert_null(r);
        if (!strstr(err, cases[i].why))
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].why);
    }
}

static void test_privmsg_apply_rejects_without_postfix_view(void **state)
{
    (void)state;
    const char *j = "{\"main_cf\":\"smtpd_soft_error_limit=3\",\"master_cf\":\"\",\"now_ms\":1}";
    struct overrides_profile *r;
    int64_t now;
    char err[128];
    assert_int_equal(privmsg_apply_decode(j, strlen(j), NULL, NULL, &r, &now, err, sizeof(err)),
                     -EINVAL);
}

static void test_privmsg_settings_roundtrip(void **state)
{
    struct fixture *fx = *state;
    const char *j = "{\"main_cf\":\"smtpd_soft_error_limit=3\",\"master_cf\":\"smtp/inet/"
                    "stress=yes\",\"now_ms\":1}";
    struct overrides_profile *r;
    int64_t now;
    char err[256];
    assert_int_equal(
        privmsg_apply_decode(j, strlen(j), fx->known, fx->svcs, &r, &now, err, sizeof(err)), 0);
    struct overrides_journal *jn = NULL;
    const char *cf = "main_cf = 1\n";
    assert_int_equal(overrides_journal_new(r, "/etc/postfix", cf, strlen(cf), cf, strlen(cf), "", 0,
                                           "", 0, 1, &jn),
                     0);
    json_t *a = privmsg_settings_json(jn);
    assert_non_null(a);
    struct overrides_journal *back = NULL;
    assert_int_equal(privmsg_settings_decode(a, "/etc/postfix", &back), 0);
    assert_int_equal(back->n, jn->n);
    for (size_t i = 0; i < jn->n; i++) {
        assert_string_equal(back->settings[i].name, jn->settings[i].name);
        assert_string_equal(back->settings[i].value, jn->settings[i].value);
        assert_int_equal(back->settings[i].file, jn->settings[i].file);
    }
    /* Wrong shapes are refused. */
    json_t *bad = json_pack("[{s:s,s:i}]", "file", "main", "name", 3);
    struct overrides_journal *x = NULL;
    assert_int_equal(privmsg_settings_decode(bad, "/", &x), -EINVAL);
    assert_null(x);
    json_decref(bad);
    json_decref(a);
    overrides_journal_free(back);
    overrides_journal_free(jn);
    overrides_profile_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_privmsg_frame_bounds_and_ops),
        cmocka_unit_test(test_privmsg_apply_roundtrip_valid),
        cmocka_unit_test(test_privmsg_apply_rejects_crafted),
        cmocka_unit_test(test_privmsg_apply_rejects_without_postfix_view),
        cmocka_unit_test(test_privmsg_settings_roundtrip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
