/* Unit test of the text report's performance data against the Monitoring Plugins
 * guidelines: a small reference checker written here from the guidelines (the perfdata
 * grammar 'label'=value[UOM];warn;crit;min;max and the range syntax "[@][start:]end", "~"
 * for minus infinity, an empty end for plus infinity, endpoints included) reads the first
 * line of postsurge's text report for a table of inputs around every threshold, and must
 * reach the status postsurge reached, which must be the one written in the table by
 * hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"
#include "report_text.h"

#define NOW 1795407720

/* ---- the reference checker ------------------------------------------------------------ */

struct range {
    bool set, inside;
    double start, end;
};

/* Parses a threshold range; an empty text is no threshold. False when malformed. */
static bool range_parse(const char *s, size_t len, struct range *r)
{
    char buf[64];
    *r = (struct range){0};
    if (len == 0)
        return true;
    if (len >= sizeof(buf))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *p = buf, *end;
    r->set = true;
    if (*p == '@') {
        r->inside = true;
        p++;
    }
    char *colon = strchr(p, ':');
    r->start = 0;
    r->end = INFINITY;
    if (colon) {
        *colon = '\0';
        if (strcmp(p, "~") == 0)
            r->start = -INFINITY;
        else if (*p) {
            r->start = strtod(p, &end);
            if (*end)
                return false;
        }
        p = colon + 1;
        if (!*p)
            return true;
    }
    r->end = strtod(p, &end);
    return *end == '\0' && end != p && r->start <= r->end;
}

/* True when v raises the alert of range r. */
static bool range_alerts(const struct range *r, double v)
{
    if (!r->set)
        return false;
    bool in = v >= r->start && v <= r->end;
    return r->inside ? in : !in;
}

/* The status a checker reaches from the perfdata after the first '|' of line: the worst
 * of each metric's (critical range first, then warning). Labels and values are collected
 * into labels (one per line) for the layout checks. Fails the test on a malformed item. */
static enum report_status check_perfdata(const char *line, char *labels, size_t labels_len)
{
    const char *p = strchr(line, '|');
    enum report_status worst = REPORT_OK;
    labels[0] = '\0';
    if (!p)
        return worst;
    p++;
    while (*p == ' ')
        p++;
    while (*p && *p != '\n') {
        char label[256];
        size_t n = 0;
        if (*p == '\'') {
            for (p++; *p && !(*p == '\'' && p[1] != '\''); p++) {
                if (*p == '\'')
                    p++; /* '' is one quote */
                label[n++] = *p;
            }
            assert_int_equal(*p, '\'');
            p++;
        } else {
            while (*p && *p != '=' && *p != ' ')
                label[n++] = *p++;
        }
        label[n] = '\0';
        if (*p != '=')
            fail_msg("perfdata item without '=' after label \"%s\" in: %s", label, line);
        p++;
        const char *item = p;
        while (*p && *p != ' ' && *p != '\n')
            p++;
        /* value[UOM];warn;crit;min;max */
        const char *f[5] = {0};
        size_t fl[5] = {0};
        int nf = 0;
        for (const char *q = item; q && nf < 5; nf++) {
            const char *semi = memchr(q, ';', (size_t)(p - q));
            f[nf] = q;
            fl[nf] = semi ? (size_t)(semi - q) : (size_t)(p - q);
            q = semi ? semi + 1 : NULL;
        }
        assert_int_equal(nf, 5); /* postsurge writes every field */
        char *end;
        double v = strtod(f[0], &end);
        if (end == f[0])
            fail_msg("bad value in %.*s", (int)(p - item), item);
        size_t uom = (size_t)(f[0] + fl[0] - end);
        assert_true(uom == 0 || (uom == 1 && *end == 's'));
        struct range w, c;
        if (!range_parse(f[1], fl[1], &w) || !range_parse(f[2], fl[2], &c))
            fail_msg("bad range in %.*s", (int)(p - item), item);
        enum report_status st = range_alerts(&c, v)   ? REPORT_CRITICAL
                                : range_alerts(&w, v) ? REPORT_WARNING
                                                      : REPORT_OK;
        worst = report_status_worse(worst, st);
        size_t used = strlen(labels);
        snprintf(labels + used, labels_len - used, "%s=%.*s\n", label, (int)(p - item), item);
        while (*p == ' ')
            p++;
    }
    return worst;
}

/* ---- the table --------------------------------------------------------------------- */

/* Adds count messages to queue q, arrived at arrival, one recipient each without a
 * deferral reason (a reason would add the per-domain findings, which have no perfdata). */
static void add_messages(struct queue_stats *qs, const char *q, int count, int64_t arrival)
{
    for (int i = 0; i < count; i++) {
        char line[256];
        int n = snprintf(line, sizeof(line),
                         "{\"queue_name\": \"%s\", \"queue_id\": \"Q%d%s\", \"arrival_time\": "
                         "%" PRId64 ", \"message_size\": 100, \"sender\": \"s@example.org\", "
                         "\"recipients\": [{\"address\": \"r@example.com\"}]}",
                         q, i, q, arrival);
        assert_int_equal(queue_stats_add_line(qs, line, (size_t)n), 0);
    }
}

static void t_hold_critical_1(struct report_thresholds *t)
{
    t->hold_critical = 1;
}

static void t_small_backlog(struct report_thresholds *t)
{
    t->backlog_warning = 5;
    t->backlog_critical = 10;
}

static void t_all_off(struct report_thresholds *t)
{
    t->hold_warning = t->deferred_warning = t->deferred_critical = 0;
    t->backlog_warning = t->backlog_critical = 0;
    t->age_warning = t->age_critical = 0;
    t->failure_rate_warning = t->failure_rate_critical = 0;
    t->saturation_warning = t->saturation_critical = t->imbalance_warning = 0;
}

static void t_rate_third(struct report_thresholds *t)
{
    t->failure_rate_warning = 0.33333;
    t->failure_rate_critical = 2.0 / 3.0;
}

static void t_no_warning_levels(struct report_thresholds *t)
{
    t->deferred_warning = 0;
    t->saturation_warning = 0;
}

struct perf_case {
    const char *name;
    int incoming, active, deferred, hold;
    int64_t age; /* of every queued message; queued messages are needed for an age */
    uint64_t delivered, failed;
    int sat[2]; /* -2: no node; -1: saturation unknown */
    int stressed;
    void (*tweak)(struct report_thresholds *t);
    enum report_status want;
};

static const struct perf_case cases[] = {
    {"empty", 0, 0, 0, 0, 0, 0, 0, {-2, -2}, 0, NULL, REPORT_OK},
    {"deferred below", 0, 0, 99, 0, 60, 0, 0, {-2, -2}, 0, NULL, REPORT_OK},
    {"deferred at warning", 0, 0, 100, 0, 60, 0, 0, {-2, -2}, 0, NULL, REPORT_WARNING},
    {"deferred below critical", 0, 0, 999, 0, 60, 0, 0, {-2, -2}, 0, NULL, REPORT_WARNING},
    {"deferred at critical", 0, 0, 1000, 0, 60, 0, 0, {-2, -2}, 0, NULL, REPORT_CRITICAL},
    {"deferred warning off", 0, 0, 999, 0, 60, 0, 0, {-2, -2}, 0, t_no_warning_levels, REPORT_OK},
    {"hold 1, critical off", 0, 0, 0, 1, 60, 0, 0, {-2, -2}, 0, NULL, REPORT_WARNING},
    {"hold 1, critical 1", 0, 0, 0, 1, 60, 0, 0, {-2, -2}, 0, t_hold_critical_1, REPORT_CRITICAL},
    {"backlog below", 2, 2, 0, 0, 60, 0, 0, {-2, -2}, 0, t_small_backlog, REPORT_OK},
    {"backlog at warning", 3, 2, 0, 0, 60, 0, 0, {-2, -2}, 0, t_small_backlog, REPORT_WARNING},
    {"backlog at critical", 4, 6, 0, 0, 60, 0, 0, {-2, -2}, 0, t_small_backlog, REPORT_CRITICAL},
    {"age below", 0, 1, 0, 0, 86399, 0, 0, {-2, -2}, 0, NULL, REPORT_OK},
    {"age at warning", 0, 1, 0, 0, 86400, 0, 0, {-2, -2}, 0, NULL, REPORT_WARNING},
    {"age at critical", 1, 0, 0, 0, 4 * 86400, 0, 0, {-2, -2}, 0, NULL, REPORT_CRITICAL},
    {"arrival ahead of the clock", 1, 0, 0, 0, -300, 0, 0, {-2, -2}, 0, NULL, REPORT_OK},
    {"failures below", 0, 0, 0, 0, 0, 17, 3, {-2, -2}, 0, NULL, REPORT_OK},
    {"failures at warning", 0, 0, 0, 0, 0, 16, 4, {-2, -2}, 0, NULL, REPORT_WARNING},
    {"failures at critical", 0, 0, 0, 0, 0, 10, 10, {-2, -2}, 0, NULL, REPORT_CRITICAL},
    {"failures of a small sample", 0, 0, 0, 0, 0, 0, 19, {-2, -2}, 0, NULL, REPORT_OK},
    {"failures just below, rounding up", 0, 0, 0, 0, 0, 80001, 19999, {-2, -2}, 0, NULL, REPORT_OK},
    {"rate under 1/3", 0, 0, 0, 0, 0, 66668, 33332, {-2, -2}, 0, t_rate_third, REPORT_OK},
    {"failures at a third", 0, 0, 0, 0, 0, 66667, 33333, {-2, -2}, 0, t_rate_third, REPORT_WARNING},
    {"failures at two thirds", 0, 0, 0, 0, 0, 1, 2, {-2, -2}, 0, t_rate_third, REPORT_OK},
    {"rate 2/3 of 30", 0, 0, 0, 0, 0, 10, 20, {-2, -2}, 0, t_rate_third, REPORT_CRITICAL},
    {"saturation below", 0, 0, 0, 0, 0, 0, 0, {79, -2}, 0, NULL, REPORT_OK},
    {"saturation at warning", 0, 0, 0, 0, 0, 0, 0, {80, -2}, 0, NULL, REPORT_WARNING},
    {"saturation at critical", 0, 0, 0, 0, 0, 0, 0, {95, -2}, 0, NULL, REPORT_CRITICAL},
    {"saturation above 1", 0, 0, 0, 0, 0, 0, 0, {130, -2}, 0, NULL, REPORT_CRITICAL},
    {"saturation warning off", 0, 0, 0, 0, 0, 0, 0, {90, -2}, 0, t_no_warning_levels, REPORT_OK},
    {"saturation unknown", 0, 0, 0, 0, 0, 0, 0, {-1, 40}, 0, NULL, REPORT_OK},
    {"imbalance below", 0, 0, 0, 0, 0, 0, 0, {10, 59}, 0, NULL, REPORT_OK},
    {"imbalance at warning", 0, 0, 0, 0, 0, 0, 0, {60, 10}, 0, NULL, REPORT_WARNING},
    {"stressed", 0, 0, 0, 0, 0, 0, 0, {30, 20}, 1, NULL, REPORT_WARNING},
    {"everything off", 3, 20, 2000, 5, 9 * 86400, 0, 50, {99, 0}, 0, t_all_off, REPORT_OK},
};

static struct report *case_report(const struct perf_case *c)
{
    struct report *r = report_new(NOW, "mx1.example.org");
    assert_non_null(r);
    static const char *const names[] = {"mx1.example.org", "mx2 'east'"};
    for (int i = 0; i < 2; i++) {
        if (c->sat[i] == -2)
            continue;
        struct report_node_info n = {.name = names[i],
                                     .daemon_up = 1,
                                     .master_up = 1,
                                     .qmgr_up = 1,
                                     .stressed = i == 0 && c->stressed,
                                     .saturation = c->sat[i]};
        assert_int_equal(report_add_node(r, &n), 0);
    }
    struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.now = NOW});
    assert_non_null(qs);
    add_messages(qs, "incoming", c->incoming, NOW - c->age);
    add_messages(qs, "active", c->active, NOW - c->age);
    add_messages(qs, "deferred", c->deferred, NOW - c->age);
    add_messages(qs, "hold", c->hold, NOW - c->age);
    assert_int_equal(report_set_queue(r, qs, 10, 3), 0);
    queue_stats_free(qs);
    if (c->delivered + c->failed)
        assert_int_equal(report_add_traffic(r, "example.com", c->delivered, c->failed, 0), 0);
    struct report_thresholds t;
    report_thresholds_default(&t);
    t.domain_deferred_warning = 0; /* a per-domain finding, no perfdata */
    if (c->tweak)
        c->tweak(&t);
    assert_int_equal(report_evaluate(r, &t), 0);
    return r;
}

/* The text report's first line (the status, the summary and the perfdata). */
static char *first_line(const struct report *r)
{
    char *buf = report_text(r);
    buf[strcspn(buf, "\n")] = '\0';
    return buf;
}

/* Every row: postsurge's status is the one written by hand, and the reference checker
 * reading the perfdata reaches the same. */
static void test_report_perfdata_agrees_with_status(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct perf_case *c = &cases[i];
        struct report *r = case_report(c);
        char *line = first_line(r);
        char labels[4096];
        enum report_status checker = check_perfdata(line, labels, sizeof(labels));
        if (report_status(r) != c->want || checker != c->want)
            fail_msg("%s: postsurge %s, checker %s, expected %s\n%s", c->name,
                     report_status_str(report_status(r)), report_status_str(checker),
                     report_status_str(c->want), line);
        free(line);
        report_free(r);
    }
}

/* The layout: every field written, off thresholds empty (never 0), ratios with "@R:",
 * the age in seconds, a label with a space quoted and its quote doubled, a value just
 * under a threshold written with the digits that keep it under. */
static void test_report_perfdata_layout(void **state)
{
    (void)state;
    static const struct {
        size_t row;
        const char *want;
    } golden[] = {
        {0, "incoming=0;;;0;\nactive=0;;;0;\ndeferred=0;99;999;0;\nhold=0;0;;0;\n"
            "backlog=0;1999;9999;0;\noldest_age=0s;86399;345599;0;\n"},
        {13, "incoming=1;;;0;\nactive=0;;;0;\ndeferred=0;99;999;0;\nhold=0;0;;0;\n"
             "backlog=1;1999;9999;0;\noldest_age=345600s;86399;345599;0;\n"},
        {19, "incoming=0;;;0;\nactive=0;;;0;\ndeferred=0;99;999;0;\nhold=0;0;;0;\n"
             "backlog=0;1999;9999;0;\noldest_age=0s;86399;345599;0;\n"
             "failure_rate=0.19999;@0.2:;@0.5:;0;1\n"},
        {32, "incoming=0;;;0;\nactive=0;;;0;\ndeferred=0;99;999;0;\nhold=0;0;;0;\n"
             "backlog=0;1999;9999;0;\noldest_age=0s;86399;345599;0;\nstressed=1;0;;0;2\n"
             "saturation mx1.example.org=0.3;@0.8:;@0.95:;0;\n"
             "saturation mx2 'east'=0.2;@0.8:;@0.95:;0;\nimbalance=0.1;@0.5:;;0;\n"},
        {33, "incoming=3;;;0;\nactive=20;;;0;\ndeferred=2000;;;0;\nhold=5;;;0;\n"
             "backlog=23;;;0;\noldest_age=777600s;;;0;\nfailure_rate=1;;;0;1\n"
             "stressed=0;0;;0;2\nsaturation mx1.example.org=0.99;;;0;\n"
             "saturation mx2 'east'=0;;;0;\nimbalance=0.99;;;0;\n"},
    };
    for (size_t i = 0; i < sizeof(golden) / sizeof(golden[0]); i++) {
        struct report *r = case_report(&cases[golden[i].row]);
        char *line = first_line(r);
        char labels[4096];
        check_perfdata(line, labels, sizeof(labels));
        if (strcmp(labels, golden[i].want) != 0)
            fail_msg("%s:\n%s\nparsed as\n%sexpected\n%s", cases[golden[i].row].name, line, labels,
                     golden[i].want);
        free(line);
        report_free(r);
    }
    /* The quoting as written. */
    struct report *r = case_report(&cases[32]);
    char *line = first_line(r);
    assert_non_null(strstr(line, " 'saturation mx1.example.org'=0.3;"));
    assert_non_null(strstr(line, " 'saturation mx2 ''east'''=0.2;"));
    free(line);
    report_free(r);
}

/* A '|' in a name of the summary would start the perfdata early for a checker. */
static void test_report_perfdata_pipe_in_summary(void **state)
{
    (void)state;
    struct report *r = report_new(NOW, "mx|1");
    assert_non_null(r);
    struct report_node_info n = {
        .name = "a|b", .daemon_up = 0, .master_up = 1, .qmgr_up = 1, .saturation = 10};
    assert_int_equal(report_add_node(r, &n), 0);
    assert_int_equal(report_evaluate(r, NULL), 0);
    char *line = first_line(r);
    const char *bar = strchr(line, '|');
    assert_non_null(bar);
    assert_non_null(strstr(line, "a/b"));
    assert_string_equal(bar, "| stressed=0;0;;0;1 'saturation a_b'=0.1;@0.8:;@0.95:;0;");
    free(line);
    report_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_perfdata_agrees_with_status),
        cmocka_unit_test(test_report_perfdata_layout),
        cmocka_unit_test(test_report_perfdata_pipe_in_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
