/* Unit tests of policyd/util/metrics.c, the metrics registry and its text exposition: a
 * registry with every kind of family, escaped labels and a collector must write exactly
 * test/data/metrics/exposition.prom (which `promtool check metrics` accepts: see
 * test/integration/test_http.py); bad names and duplicates are refused; updates to a
 * NULL series are harmless. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "metrics.h"

#define DATA_DIR TEST_DATA "/metrics/"

static char *read_file(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s%s", DATA_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 16);
    assert_non_null(buf);
    *len = fread(buf, 1, (1 << 16) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static int collect_two(struct metrics_out *o, void *arg)
{
    static const char *const names[] = {"service"};
    const char *v1[] = {"smtp/inet/25"}, *v2[] = {"submission/inet/587"};
    int rc;

    (void)arg;
    if ((rc = metrics_out_family(o, METRIC_GAUGE, "test_service_busy",
                                 "Busy processes per master.cf service.")) < 0)
        return rc;
    if ((rc = metrics_out_sample(o, "test_service_busy", names, v1, 1, 12)) < 0)
        return rc;
    return metrics_out_sample(o, "test_service_busy", names, v2, 1, 0.5);
}

static int collect_duplicate(struct metrics_out *o, void *arg)
{
    int *seen = arg;
    *seen = metrics_out_family(o, METRIC_GAUGE, "test_requests_total", "dup");
    return 0;
}

static int collect_fail(struct metrics_out *o, void *arg)
{
    return -EIO;
}

static void test_metrics_exposition_matches_expected(void **state)
{
    static const char *const rule_action[] = {"rule", "action", NULL};
    static const double bounds[] = {0.00005, 0.001, 0.25, 1};
    struct metrics *m = metrics_new();
    assert_non_null(m);

    struct metric *req = metrics_counter_new(m, "test_requests_total", "Requests.", NULL);
    struct metric *dec = metrics_counter_new(
        m, "test_decisions_total", "Decisions by rule and action.\nSecond \\ line.", rule_action);
    struct metric *sat = metrics_gauge_new(m, "test_saturation_ratio", "Saturation.", NULL);
    struct metric *lat =
        metrics_histogram_new(m, "test_latency_seconds", "Latency.", NULL, bounds, 4);
    assert_non_null(req);
    assert_non_null(dec);
    assert_non_null(sat);
    assert_non_null(lat);

    struct metrics_series *r = metrics_series(req, NULL);
    for (int i = 0; i < 41; i++)
        metrics_inc(r);
    metrics_add(r, 1);
    metrics_add(r, -5);  /* a counter never goes down */
    metrics_add(r, NAN); /* nor turns into NaN */
    const char *v1[] = {"per-client \"burst\"", "reject"};
    const char *v2[] = {"back\\slash\nnewline", "defer"};
    metrics_add(metrics_series(dec, v1), 3);
    metrics_inc(metrics_series(dec, v2));
    /* The same label values give the same series. */
    assert_ptr_equal(metrics_series(dec, v1), metrics_series(dec, v1));
    metrics_inc(metrics_series(dec, v1));
    metrics_set(metrics_series(sat, NULL), 0.875);
    struct metrics_series *l = metrics_series(lat, NULL);
    metrics_observe(l, 0.00001); /* first bucket */
    metrics_observe(l, 0.00005); /* "le": the bound itself is in */
    metrics_observe(l, 0.0005);
    metrics_observe(l, 2); /* +Inf */
    assert_int_equal((int)metrics_value(l), 4);
    assert_int_equal((int)metrics_value(r), 42);
    assert_int_equal(metrics_add_collector(m, collect_two, NULL), 0);

    char *text;
    size_t len, elen;
    assert_int_equal(metrics_write(m, &text, &len), 0);
    assert_int_equal(strlen(text), len);
    char *expected = read_file("exposition.prom", &elen);
    if (strcmp(text, expected) != 0)
        fail_msg("exposition differs; got:\n%s", text);
    free(expected);
    free(text);

    /* A failing collector fails the scrape, without leaks. */
    assert_int_equal(metrics_add_collector(m, collect_fail, NULL), 0);
    assert_int_equal(metrics_write(m, &text, &len), -EIO);
    assert_null(text);
    assert_int_equal(metrics_remove_collector(m, collect_fail, NULL), 0);
    assert_int_equal(metrics_remove_collector(m, collect_fail, NULL), -ENOENT);
    assert_int_equal(metrics_write(m, &text, &len), 0);
    free(text);
    metrics_free(m);
}

static void test_metrics_refuses_bad_names(void **state)
{
    static const char *const le[] = {"le", NULL}, *const bad[] = {"a-b", NULL};
    static const char *const reserved[] = {"__x", NULL}, *const twice[] = {"a", "a", NULL};
    static const double b[] = {1, 2}, unsorted[] = {2, 1};
    struct metrics *m = metrics_new();

    assert_null(metrics_counter_new(m, "", "h", NULL));
    assert_null(metrics_counter_new(m, "9lives", "h", NULL));
    assert_null(metrics_counter_new(m, "a b", "h", NULL));
    assert_null(metrics_counter_new(m, "ok_total", "h", bad));
    assert_null(metrics_counter_new(m, "ok_total", "h", reserved));
    assert_null(metrics_counter_new(m, "ok_total", "h", twice));
    assert_null(metrics_histogram_new(m, "h_seconds", "h", le, b, 2));
    assert_null(metrics_histogram_new(m, "h_seconds", "h", NULL, unsorted, 2));
    assert_null(metrics_histogram_new(m, "h_seconds", "h", NULL, b, 0));
    assert_non_null(metrics_counter_new(m, "ns:ok_total", "h", NULL));
    assert_null(metrics_gauge_new(m, "ns:ok_total", "h", NULL)); /* registered already */
    assert_non_null(metrics_find(m, "ns:ok_total"));
    assert_null(metrics_find(m, "nope"));

    /* A collector cannot write a family the registry has. */
    int seen = 0;
    char *text;
    size_t len;
    assert_non_null(metrics_counter_new(m, "test_requests_total", "h", NULL));
    assert_int_equal(metrics_add_collector(m, collect_duplicate, &seen), 0);
    assert_int_equal(metrics_write(m, &text, &len), 0);
    assert_int_equal(seen, -EEXIST);
    free(text);
    metrics_free(m);
}

static void test_metrics_null_series_and_clear(void **state)
{
    static const char *const rule[] = {"rule", NULL};
    struct metrics *m = metrics_new();

    /* Updates of a failed registration do nothing. */
    metrics_inc(NULL);
    metrics_add(NULL, 1);
    metrics_set(NULL, 1);
    metrics_observe(NULL, 1);
    assert_null(metrics_series(NULL, NULL));
    assert_true(metrics_value(NULL) == 0);

    struct metric *f = metrics_counter_new(m, "r_total", "h", rule);
    assert_null(metrics_series(f, NULL)); /* labels needed */
    const char *a[] = {"a"}, *b[] = {"b"};
    metrics_inc(metrics_series(f, a));
    metrics_inc(metrics_series(f, b));
    metrics_family_clear(f); /* e.g. rules changed on reload */
    metrics_add(metrics_series(f, b), 5);
    char *text;
    size_t len;
    assert_int_equal(metrics_write(m, &text, &len), 0);
    assert_null(strstr(text, "rule=\"a\""));
    assert_non_null(strstr(text, "r_total{rule=\"b\"} 5\n"));
    free(text);

    /* A family without labels keeps its one series across a clear. */
    struct metric *g = metrics_gauge_new(m, "g", "h", NULL);
    metrics_set(metrics_series(g, NULL), 3);
    metrics_family_clear(g);
    assert_non_null(metrics_series(g, NULL));
    assert_true(metrics_value(metrics_series(g, NULL)) == 0);
    metrics_free(m);
    metrics_free(NULL);

    /* An empty registry writes an empty text. */
    m = metrics_new();
    assert_int_equal(metrics_write(m, &text, &len), 0);
    assert_int_equal(len, 0);
    free(text);
    metrics_free(m);
}

static void test_metrics_escape_label(void **state)
{
    char out[64];

    assert_int_equal(metrics_escape_label("a\"b\\c\nd", out, sizeof(out)), 10);
    assert_string_equal(out, "a\\\"b\\\\c\\nd");
    /* Truncation is reported like snprintf. */
    assert_int_equal(metrics_escape_label("\"\"\"", out, 4), 6);
    assert_string_equal(out, "\\\"\\");
}

static void test_metrics_values_format(void **state)
{
    struct metrics *m = metrics_new();
    struct metric *g = metrics_gauge_new(m, "v", "h", (const char *const[]){"k", NULL});
    const char *k1[] = {"1"}, *k2[] = {"2"}, *k3[] = {"3"}, *k4[] = {"4"}, *k5[] = {"5"};

    metrics_set(metrics_series(g, k1), 0.1);
    metrics_set(metrics_series(g, k2), 1e20);
    metrics_set(metrics_series(g, k3), -INFINITY);
    metrics_set(metrics_series(g, k4), NAN);
    metrics_set(metrics_series(g, k5), -3);
    char *text;
    size_t len;
    assert_int_equal(metrics_write(m, &text, &len), 0);
    assert_non_null(strstr(text, "v{k=\"1\"} 0.1\n"));
    assert_non_null(strstr(text, "v{k=\"2\"} 1e+20\n"));
    assert_non_null(strstr(text, "v{k=\"3\"} -Inf\n"));
    assert_non_null(strstr(text, "v{k=\"4\"} NaN\n"));
    assert_non_null(strstr(text, "v{k=\"5\"} -3\n"));
    free(text);
    metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_exposition_matches_expected),
        cmocka_unit_test(test_metrics_refuses_bad_names),
        cmocka_unit_test(test_metrics_null_series_and_clear),
        cmocka_unit_test(test_metrics_escape_label),
        cmocka_unit_test(test_metrics_values_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
