/* Unit tests of lib/baseline.c: mean and spread across buckets, ageing out, the anomaly
 * test with its floors and sample minimum, JSON round trips (also into another bucket
 * width), malformed state, and the quiet window syntax. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <string.h>

#include "baseline.h"

#define T0 1700000000 /* 800 s into an hour */
#define H 3600

static void test_baseline_mean_and_sd_across_buckets(void **state)
{
    (void)state;
    struct baseline *b = baseline_new(NULL);
    assert_non_null(b);
    /* The textbook set: mean 5, population sd 2. One sample per hour, so every merge
     * between buckets is exercised. */
    static const double xs[] = {2, 4, 4, 4, 5, 5, 7, 9};
    for (int i = 0; i < 8; i++)
        assert_int_equal(baseline_add(b, "m", T0 + i * H, xs[i]), 0);
    struct baseline_stat s;
    assert_int_equal(baseline_get(b, "m", T0 + 8 * H, &s), 0);
    assert_int_equal(s.n, 8);
    assert_float_equal(s.mean, 5.0, 1e-12);
    assert_float_equal(s.sd, 2.0, 1e-12);

    /* The same within one bucket. */
    for (int i = 0; i < 8; i++)
        assert_int_equal(baseline_add(b, "one", T0, xs[i]), 0);
    assert_int_equal(baseline_get(b, "one", T0, &s), 0);
    assert_float_equal(s.mean, 5.0, 1e-12);
    assert_float_equal(s.sd, 2.0, 1e-12);

    /* Large values with a small spread: no cancellation. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(baseline_add(b, "big", T0 + i * H, 1e9 + i), 0);
    assert_int_equal(baseline_get(b, "big", T0 + 2 * H, &s), 0);
    assert_float_equal(s.sd, sqrt(2.0 / 3.0), 1e-6);

    assert_int_equal(baseline_get(b, "nope", T0, &s), -ENOENT);
    assert_int_equal(s.n, 0);
    assert_int_equal(baseline_add(b, "", T0, 1), -EINVAL);
    assert_int_equal(baseline_add(b, "m", T0, NAN), -EINVAL);
    assert_int_equal(baseline_add(b, "m", T0, INFINITY), -EINVAL);
    baseline_free(b);
    baseline_free(NULL);
}

static void test_baseline_old_samples_age_out(void **state)
{
    (void)state;
    struct baseline_params p = {.window = 24 * H, .bucket = H};
    struct baseline *b = baseline_new(&p);
    assert_non_null(b);
    assert_int_equal(baseline_add(b, "m", T0, 100), 0);
    assert_int_equal(baseline_add(b, "m", T0 + 12 * H, 10), 0);
    struct baseline_stat s;
    baseline_get(b, "m", T0 + 12 * H, &s);
    assert_int_equal(s.n, 2);
    assert_float_equal(s.mean, 55, 1e-9);
    /* 24 h after T0's bucket started, that bucket has left the window. */
    baseline_get(b, "m", T0 + 25 * H, &s);
    assert_int_equal(s.n, 1);
    assert_float_equal(s.mean, 10, 1e-9);
    /* A new sample that lands in T0's ring slot replaces the old bucket. */
    assert_int_equal(baseline_add(b, "m", T0 + 24 * H, 7), 0);
    baseline_get(b, "m", T0 + 24 * H, &s);
    assert_int_equal(s.n, 2);
    assert_float_equal(s.mean, 8.5, 1e-9);
    /* A sample older than the window is ignored. */
    assert_int_equal(baseline_add(b, "m", T0 - 48 * H, 1000), 0);
    baseline_get(b, "m", T0 + 24 * H, &s);
    assert_int_equal(s.n, 2);
    baseline_get(b, "m", T0 + 100 * H, &s);
    assert_int_equal(s.n, 0);
    baseline_free(b);

    /* A bucket wider than the window is refused. */
    struct baseline_params bad = {.window = H, .bucket = 2 * H};
    assert_null(baseline_new(&bad));
}

static void test_baseline_anomaly_test(void **state)
{
    (void)state;
    struct baseline_params p;
    baseline_params_default(&p);
    p.min_samples = 10;
    struct baseline *b = baseline_new(&p);
    assert_non_null(b);
    static const struct {
        const char *metric;
        double level; /* flat baseline of 20 samples */
        double x;
        bool anomaly;
        int direction;
        double sd_used;
    } cases[] = {
        {"flat10", 10, 11, false, 1, 1.0}, /* +1 on a flat baseline: min_sd floor */
        {"flat10", 10, 12, false, 1, 1.0}, /* exactly 2 sd: not beyond */
        {"flat10", 10, 12.5, true, 1, 1.0},
        {"flat10", 10, 7, true, -1, 1.0},
        {"flat0", 0, 1, false, 1, 1.0},
        {"flat0", 0, 3, true, 1, 1.0},
        {"flat1000", 1000, 1150, false, 1, 100.0}, /* relative floor: 10 % of the mean */
        {"flat1000", 1000, 1250, true, 1, 100.0},
        {"flat1000", 1000, 1000, false, 0, 100.0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct baseline_stat s;
        if (baseline_get(b, cases[i].metric, T0, &s) < 0) {
            for (int k = 0; k < 20; k++)
                assert_int_equal(baseline_add(b, cases[i].metric, T0 - k * 600, cases[i].level), 0);
        }
        struct baseline_verdict v;
        assert_int_equal(baseline_test(b, cases[i].metric, T0, cases[i].x, &v), 0);
        assert_true(v.enough);
        assert_int_equal(v.n, 20);
        assert_int_equal(v.anomaly, cases[i].anomaly);
        assert_int_equal(v.direction, cases[i].direction);
        assert_float_equal(v.sd_used, cases[i].sd_used, 1e-9);
    }

    /* A real spread: mean 5, sd 2 -> 9.5 is beyond 2 sd, 8.5 is not. */
    static const double xs[] = {2, 4, 4, 4, 5, 5, 7, 9, 2, 4, 4, 4, 5, 5, 7, 9};
    for (int i = 0; i < 16; i++)
        baseline_add(b, "spread", T0 - i * 60, xs[i]);
    struct baseline_verdict v;
    baseline_test(b, "spread", T0, 9.5, &v);
    assert_true(v.anomaly);
    assert_float_equal(v.z, 2.25, 1e-9);
    baseline_test(b, "spread", T0, 8.5, &v);
    assert_false(v.anomaly);

    /* Too few samples never alarm, however far off. */
    for (int i = 0; i < 9; i++)
        baseline_add(b, "young", T0, 1);
    baseline_test(b, "young", T0, 1000, &v);
    assert_false(v.enough);
    assert_false(v.anomaly);
    baseline_test(b, "unknown", T0, 1000, &v);
    assert_false(v.anomaly);
    assert_int_equal(baseline_test(b, "young", T0, NAN, &v), -EINVAL);
    baseline_free(b);
}

static void test_baseline_json_round_trip(void **state)
{
    (void)state;
    struct baseline *b = baseline_new(NULL);
    assert_non_null(b);
    for (int i = 0; i < 50; i++) {
        baseline_add(b, "mx1/queue.deferred.messages", T0 + i * 1800, (double)(i % 7));
        baseline_add(b, "mx1/traffic.delivered", T0 + i * 1800, 1000.0 + i);
    }
    int64_t now = T0 + 50 * 1800;
    json_t *j;
    assert_int_equal(baseline_to_json(b, now, &j), 0);
    char *text = json_dumps(j, JSON_COMPACT);
    assert_non_null(text);
    json_error_t err;
    json_t *back = json_loads(text, 0, &err);
    assert_non_null(back);

    static const int64_t widths[] = {3600, 7200, 1800};
    for (size_t w = 0; w < 3; w++) {
        struct baseline_params p = {.bucket = widths[w]};
        struct baseline *c;
        assert_int_equal(baseline_from_json(back, &p, &c), 0);
        static const char *const names[] = {"mx1/queue.deferred.messages", "mx1/traffic.delivered"};
        for (int k = 0; k < 2; k++) {
            struct baseline_stat s1, s2;
            baseline_get(b, names[k], now, &s1);
            baseline_get(c, names[k], now, &s2);
            assert_int_equal(s1.n, s2.n);
            assert_float_equal(s1.mean, s2.mean, 1e-9);
            assert_float_equal(s1.sd, s2.sd, 1e-9);
        }
        baseline_free(c);
    }
    free(text);
    json_decref(back);
    json_decref(j);

    /* Expired history is not written. */
    assert_int_equal(baseline_to_json(b, now + 30 * 86400, &j), 0);
    assert_int_equal(json_object_size(json_object_get(j, "metrics")), 0);
    json_decref(j);
    baseline_free(b);
}

static void test_baseline_rejects_bad_state(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "[]",
        "{}",
        "{\"version\":2,\"metrics\":{}}",
        "{\"version\":1,\"metrics\":[]}",
        "{\"version\":1,\"metrics\":{\"m\":{}}}",
        "{\"version\":1,\"metrics\":{\"m\":[[1,2,3]]}}",
        "{\"version\":1,\"metrics\":{\"m\":[[\"x\",1,1,0]]}}",
        "{\"version\":1,\"metrics\":{\"m\":[[1700000000,-1,1,0]]}}",
        "{\"version\":1,\"metrics\":{\"m\":[[1700000000,1,1,-5]]}}",
        "{\"version\":1,\"metrics\":{\"\":[[1700000000,1,1,0]]}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_error_t err;
        json_t *j = json_loads(bad[i], 0, &err);
        assert_non_null(j);
        struct baseline *b = (struct baseline *)1;
        assert_int_equal(baseline_from_json(j, NULL, &b), -EINVAL);
        assert_null(b);
        json_decref(j);
    }
    /* The metric cap applies on load too. */
    json_error_t err;
    json_t *j = json_loads("{\"version\":1,\"metrics\":{\"a\":[[1700000000,1,1,0]],"
                           "\"b\":[[1700000000,1,1,0]]}}",
                           0, &err);
    struct baseline_params p = {.max_metrics = 1};
    struct baseline *b;
    assert_int_equal(baseline_from_json(j, &p, &b), -ENOSPC);
    json_decref(j);
    b = baseline_new(&p);
    assert_int_equal(baseline_add(b, "a", T0, 1), 0);
    assert_int_equal(baseline_add(b, "b", T0, 1), -ENOSPC);
    baseline_free(b);
}

static void test_baseline_quiet_windows(void **state)
{
    (void)state;
    static const struct {
        const char *spec;
        int rc;
        size_t n;
    } parse[] = {
        {"", 0, 0},
        {"  , ", 0, 0},
        {"*:00-*:10", 0, 1},
        {"*:00-*:10, 02:00-02:30 23:50-00:10", 0, 3},
        {"22:00-24:00", 0, 1},
        {"*:55-*:05", 0, 1},
        {"*:00-*:60", -EINVAL, 0},
        {"*:00-02:10", -EINVAL, 0},
        {"02:00-02:00", -EINVAL, 0},
        {"2:00-3:00", -EINVAL, 0},
        {"25:00-26:00", -EINVAL, 0},
        {"24:00-01:00", -EINVAL, 0},
        {"24:10-01:00", -EINVAL, 0},
        {"02:00-03:00x", -EINVAL, 0},
        {"02:00", -EINVAL, 0},
        {"02:00-", -EINVAL, 0},
        {"*:00-*:10;", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(parse) / sizeof(parse[0]); i++) {
        struct baseline_quiet q;
        char err[128] = "";
        int rc = baseline_quiet_parse(parse[i].spec, &q, err, sizeof(err));
        if (rc != parse[i].rc)
            fail_msg("\"%s\": rc %d, want %d", parse[i].spec, rc, parse[i].rc);
        if (rc == 0)
            assert_int_equal(q.n, parse[i].n);
        else
            assert_non_null(strstr(err, "bad quiet window"));
    }

    struct baseline_quiet q;
    assert_int_equal(baseline_quiet_parse("*:00-*:10 23:50-00:10 *:58-*:02", &q, NULL, 0), 0);
    static const struct {
        int hour, minute;
        bool quiet;
    } match[] = {
        {3, 0, true},   {3, 9, true},   {3, 10, false}, {3, 30, false},  {23, 49, false},
        {23, 50, true}, {0, 5, true},   {0, 9, true},   {0, 10, false}, /* ends exclusive */
        {0, 11, false}, {12, 58, true}, {12, 59, true}, {12, 57, false},
    };
    for (size_t i = 0; i < sizeof(match) / sizeof(match[0]); i++) {
        if (baseline_quiet_match(&q, match[i].hour, match[i].minute) != match[i].quiet)
            fail_msg("%02d:%02d: want quiet=%d", match[i].hour, match[i].minute, match[i].quiet);
    }
    assert_int_equal(baseline_quiet_parse("", &q, NULL, 0), 0);
    assert_false(baseline_quiet_match(&q, 0, 0));
    char many[BASELINE_QUIET_MAX * 12 + 20] = "";
    for (int i = 0; i <= BASELINE_QUIET_MAX; i++)
        strcat(many, "*:00-*:01 ");
    char err[64];
    assert_int_equal(baseline_quiet_parse(many, &q, err, sizeof(err)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_baseline_mean_and_sd_across_buckets),
        cmocka_unit_test(test_baseline_old_samples_age_out),
        cmocka_unit_test(test_baseline_anomaly_test),
        cmocka_unit_test(test_baseline_json_round_trip),
        cmocka_unit_test(test_baseline_rejects_bad_state),
        cmocka_unit_test(test_baseline_quiet_windows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
