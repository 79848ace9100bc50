/* Unit tests of lib/report.c and report_write.c: each writer (text, JSON, Prometheus)
 * against expected files in test/data/report/ for an all-OK report and for one with
 * problems everywhere (built from real postqueue records, two nodes, traffic, clients,
 * warnings and a baseline), the findings and their advice, status precedence and exit
 * codes. With UPDATE_EXPECTED=1 in the environment the expected files are rewritten
 * instead of compared. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "printable.h"
#include "report.h"
#include "report_text.h"

#define ARRIVAL 1795407720 /* the real records' arrival time */
#define NOW (ARRIVAL + 7200)

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            assert_non_null(nb);
            buf = nb;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        if (k == 0)
            break;
        n += k;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Compares what a writer produced with test/data/report/NAME (or rewrites it). */
static void expect_file(const char *name, const char *got, size_t len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/report/%s", TEST_DATA, name);
    if (getenv("UPDATE_EXPECTED")) {
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        fwrite(got, 1, len, f);
        fclose(f);
        return;
    }
    size_t elen;
    char *want = slurp(path, &elen);
    if (!want)
        fail_msg("cannot read %s", path);
    if (elen != len || memcmp(want, got, len) != 0) {
        fprintf(stderr, "--- %s expected\n%s--- got\n%s", name, want, got);
        fail_msg("%s differs", name);
    }
    free(want);
}

typedef int (*writer_fn)(const struct report *, FILE *);

static void check_writer(const struct report *r, writer_fn w, const char *name)
{
    size_t len;
    char *buf = report_render(r, w, &len);
    expect_file(name, buf, len);
    free(buf);
}

static struct queue_stats *load_queue(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/queue/%s", TEST_DATA, name);
    size_t len;
    char *buf = slurp(path, &len);
    assert_non_null(buf);
    struct queue_limits lim = {.now = NOW};
    struct queue_stats *qs = queue_stats_new(&lim);
    assert_non_null(qs);
    assert_int_equal(queue_stats_feed(qs, buf, len), 0);
    assert_int_equal(queue_stats_finish(qs), 0);
    free(buf);
    return qs;
}

static struct report *ok_report(void)
{
    struct report *r = report_new(NOW, "mx1.example.org");
    assert_non_null(r);
    struct report_service svc[] = {{"smtpd", 3, 100, 0}};
    struct report_node_info n = {.name = "mx1.example.org",
                                 .daemon_up = 1,
                                 .master_up = 1,
                                 .qmgr_up = 1,
                                 .stressed = 0,
                                 .saturation = 3,
                                 .services = svc,
                                 .n_services = 1};
    assert_int_equal(report_add_node(r, &n), 0);
    struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.now = NOW});
    assert_int_equal(report_set_queue(r, qs, 10, 3), 0);
    queue_stats_free(qs);
    assert_int_equal(report_add_traffic(r, "example.com", 40, 0, 0), 0);
    assert_int_equal(report_add_traffic(r, "example.net", 10, 0, 0), 0);
    assert_int_equal(report_add_client(r, "mail.example.net[198.51.100.1]", 12, 0), 0);
    assert_int_equal(report_evaluate(r, NULL), 0);
    return r;
}

static struct report *problem_report(void)
{
    struct report *r = report_new(NOW, "mx1.example.org");
    assert_non_null(r);
    struct report_service s1[] = {{"smtpd", 35, 100, 0}};
    struct report_event e1[] = {{NOW - 600, "override_restore", "profile stress"}};
    struct report_node_info n1 = {.name = "mx1.example.org",
                                  .daemon_up = 1,
                                  .master_up = 1,
                                  .qmgr_up = 1,
                                  .stressed = 0,
                                  .saturation = 35,
                                  .stress_episodes = 1,
                                  .overrides = 1,
                                  .services = s1,
                                  .n_services = 1,
                                  .events = e1,
                                  .n_events = 1};
    struct report_service s2[] = {{"smtpd", 100, 100, 12}, {"submission/inet", 2, -1, -1}};
    struct report_event e2[] = {{NOW - 900, "stress_enter", "saturation 97%"},
                                {NOW - 300, "override_apply", NULL}};
    struct report_node_info n2 = {.name = "mx2.example.org",
                                  .daemon_up = 0,
                                  .master_up = 1,
                                  .qmgr_up = -1,
                                  .stressed = 1,
                                  .saturation = 97,
                                  .stress_episodes = 2,
                                  .overrides = 1,
                                  .services = s2,
                                  .n_services = 2,
                                  .events = e2,
                                  .n_events = 2};
    assert_int_equal(report_add_node(r, &n1), 0);
    assert_int_equal(report_add_node(r, &n2), 0);

    struct queue_stats *qs = load_queue("real-postqueue.jsonl");
    assert_int_equal(report_set_queue(r, qs, 10, 3), 0);
    queue_stats_free(qs);

    assert_int_equal(report_add_traffic(r, "example.com", 100, 2, 1), 0);
    assert_int_equal(report_add_traffic(r, "throttle.test", 5, 20, 0), 0);
    assert_int_equal(report_add_traffic(r, "throttle.test", 0, 10, 0), 0); /* adds up */
    assert_int_equal(report_add_traffic(r, "gmail.com", 1000, 0, 0), 0);
    assert_int_equal(report_add_client(r, "unknown[192.0.2.7]", 300, 250), 0);
    assert_int_equal(report_add_client(r, "mail.example.net[198.51.100.1]", 40, 0), 0);
    assert_int_equal(report_add_warning(r, "process_limit", "smtpd", 1), 0);
    assert_int_equal(report_add_warning(r, "process_limit", "smtpd", 1), 0);
    assert_int_equal(report_add_warning(r, "connection_rate_limit", "smtp", 5), 0);
    /* A label value that needs every escape of the exposition format. */
    assert_int_equal(report_add_warning(r, "other", "say \"hi\" \\ there\nnow", 1), 0);
    /* smtpd's "name[ADDR]" and postscreen's bare "ADDR" are one client row, with the name. */
    assert_int_equal(report_add_client(r, "203.0.113.5", 0, 3), 0);
    assert_int_equal(report_add_client(r, "mx.example.org[203.0.113.5]", 10, 0), 0);
    /* The 253 rejects by class (calls add up) and some postscreen verdicts. */
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_UNKNOWN_RECIPIENT, 200), 0);
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_UNKNOWN_RECIPIENT, 40), 0);
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_DNSBL, 3), 0);
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_OWN_LIMIT, 10), 0);
    assert_int_equal(report_add_postscreen(r, "pregreet", 7), 0);
    assert_int_equal(report_add_postscreen(r, "pass_new", 2), 0);
    const struct report_log_totals lt = {.probes_deliverable = 4,
                                         .probes_undeliverable = 2,
                                         .expired = 1,
                                         .force_expired = 1,
                                         .internal_connections = 180,
                                         .lost_connections = 474,
                                         .auth_failures = 40};
    assert_int_equal(report_add_log_totals(r, &lt), 0);
    assert_int_equal(
        report_add_lost(r, "scan.example.net[198.51.100.113]", "submission", "EHLO 453", 453), 0);
    assert_int_equal(report_add_lost(r, "198.51.100.47", "submission", "EHLO 20, CONNECT 1", 21),
                     0);
    assert_int_equal(report_add_anvil(r, "connection_rate", 17, 60, "submission:198.51.100.113"),
                     0);
    assert_int_equal(report_add_anvil(r, "connection_rate", 9, 60, "smtp:192.0.2.9"), 0);
    assert_int_equal(report_add_anvil(r, "cache_size", 5, 0, NULL), 0);
    assert_int_equal(report_add_auth_failures(r, false, "unknown[203.0.113.42]", 35), 0);
    assert_int_equal(report_add_auth_failures(r, false, "198.51.100.9", 5), 0);
    assert_int_equal(report_add_auth_failures(r, true, "admin@example.org", 30), 0);
    assert_int_equal(report_add_auth_failures(r, true, "test", 10), 0);

    /* A baseline where the deferred queue is usually empty and delivery ~1100. */
    struct baseline *b = baseline_new(NULL);
    assert_non_null(b);
    for (int i = 1; i <= 24; i++) {
        char key[128];
        snprintf(key, sizeof(key), "mx1.example.org/%s", "queue.deferred.messages");
        baseline_add(b, key, NOW - i * 1800, 0);
        snprintf(key, sizeof(key), "mx1.example.org/%s", "traffic.delivered");
        baseline_add(b, key, NOW - i * 1800, 1100 + (i % 3) * 10);
    }
    assert_int_equal(report_apply_baseline(r, b, false), 1);
    /* The figures became samples. */
    struct baseline_stat st;
    assert_int_equal(baseline_get(b, "mx1.example.org/queue.hold.messages", NOW, &st), 0);
    assert_int_equal(st.n, 1);
    baseline_free(b);

    struct report_thresholds t;
    report_thresholds_default(&t);
    t.domain_deferred_warning = 2;
    assert_int_equal(report_evaluate(r, &t), 0);
    return r;
}

static void test_report_writers_all_ok(void **state)
{
    (void)state;
    struct report *r = ok_report();
    assert_int_equal(report_status(r), REPORT_OK);
    assert_int_equal(report_finding_count(r), 0);
    check_writer(r, report_write_text, "ok.txt");
    check_writer(r, report_write_json, "ok.json");
    check_writer(r, report_write_prometheus, "ok.prom");
    report_free(r);
}

static void test_report_writers_with_problems(void **state)
{
    (void)state;
    struct report *r = problem_report();
    assert_int_equal(report_status(r), REPORT_CRITICAL);
    assert_int_equal(report_exit_code(report_status(r)), 2);
    check_writer(r, report_write_text, "problems.txt");
    check_writer(r, report_write_json, "problems.json");
    check_writer(r, report_write_prometheus, "problems.prom");
    report_free(r);
}

/* Each expected finding: code, severity, subject and a piece of its advice. */
static void test_report_findings_and_advice(void **state)
{
    (void)state;
    struct report *r = problem_report();
    json_t *j;
    assert_int_equal(report_to_json(r, &j), 0);
    static const struct {
        const char *code, *severity, *subject, *advice_part;
    } want[] = {
        {"saturation", "CRITICAL", "mx2.example.org", "raise the process limit of smtpd"},
        {"failure_rate", "CRITICAL", "throttle.test", "slow_destination_concurrency_limit"},
        {"daemon_down", "WARNING", "mx2.example.org", "default_action"},
        {"stressed", "WARNING", "mx2.example.org", "postsurge stress exit"},
        {"imbalance", "WARNING", "mx2.example.org", "MX weights"},
        {"hold", "WARNING", "hold", "postsuper -H"},
        {"domain_deferred", "WARNING", "defer.test", "refuse connections"},
        {"domain_deferred", "WARNING", "greylist.test", "postcat -q"},
        {"domain_throttle", "WARNING", "throttle.test", "throttles us"},
        {"client_rejects", "WARNING", "192.0.2.7", "dictionary attack"},
        {"lost_connections", "WARNING", "scan.example.net[198.51.100.113]", "scanner"},
        {"auth_failures", "WARNING", "203.0.113.42", "smtpd_client_auth_rate_limit"},
        {"process_limit", "WARNING", "smtpd", "master.cf"},
        {"anomaly", "WARNING", "queue.deferred.messages", "destination defers"},
    };
    json_t *fs = json_object_get(j, "findings");
    assert_int_equal(json_array_size(fs), sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        json_t *f = json_array_get(fs, i);
        assert_string_equal(json_string_value(json_object_get(f, "code")), want[i].code);
        assert_string_equal(json_string_value(json_object_get(f, "severity")), want[i].severity);
        assert_string_equal(json_string_value(json_object_get(f, "subject")), want[i].subject);
        const char *advice = json_string_value(json_object_get(f, "advice"));
        if (!advice || !strstr(advice, want[i].advice_part))
            fail_msg("finding %s: advice \"%s\" lacks \"%s\"", want[i].code, advice,
                     want[i].advice_part);
    }
    /* The stable schema keys the issue names. */
    static const char *const queues[] = {"incoming", "active", "deferred", "hold"};
    for (size_t i = 0; i < 4; i++) {
        json_t *q = json_object_get(json_object_get(j, "queues"), queues[i]);
        assert_true(json_is_integer(json_object_get(q, "messages")));
        assert_true(json_is_integer(json_object_get(q, "recipients")));
    }
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(j, "queues"), "deferred"), "recipients")),
                     8);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "CRITICAL");
    /* One row per client address, with the name smtpd knew. */
    json_t *tr = json_object_get(j, "traffic");
    json_t *c1 = json_array_get(json_object_get(tr, "clients"), 1);
    assert_string_equal(json_string_value(json_object_get(c1, "address")), "203.0.113.5");
    assert_string_equal(json_string_value(json_object_get(c1, "name")), "mx.example.org");
    assert_int_equal(json_integer_value(json_object_get(c1, "connections")), 10);
    assert_int_equal(json_integer_value(json_object_get(c1, "rejects")), 3);
    assert_int_equal(json_array_size(json_object_get(tr, "clients")), 3);
    /* The higher anvil peak of a statistic stays. */
    json_t *av = json_array_get(json_object_get(tr, "anvil"), 1);
    assert_string_equal(json_string_value(json_object_get(av, "key")), "submission:198.51.100.113");
    json_decref(j);
    report_free(r);
}

/* A report of the given nodes with an empty queue and no traffic, evaluated with the
 * default thresholds: only the nodes can raise findings. */
static struct report *nodes_report(const struct report_node_info *nodes, size_t n)
{
    struct report *r = report_new(NOW, "mx1.example.org");
    assert_non_null(r);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(report_add_node(r, &nodes[i]), 0);
    struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.now = NOW});
    assert_int_equal(report_set_queue(r, qs, 10, 3), 0);
    queue_stats_free(qs);
    assert_int_equal(report_evaluate(r, NULL), 0);
    return r;
}

/* Postfix's master or qmgr not running. The master's absence is the cause and stops
 * everything (qmgr included), so it is the one finding; qmgr alone down is its own; an
 * unknown state (-1: the report could not look) raises nothing. Expectations below are
 * written from the rules, not taken from the writers. */
static void test_report_master_and_qmgr_down(void **state)
{
    (void)state;
    static const char *const master_msg = "Postfix master is not running on mx1.example.org";
    static const char *const qmgr_msg =
        "qmgr is not running on mx1.example.org: queued mail is not delivered";
    static const struct {
        int master_up, qmgr_up, daemon_up;
        enum report_status status;
        size_t n_findings;
        const char *code, *severity, *advice_part, *message; /* the first finding */
    } cases[] = {
        {0, 0, 1, REPORT_CRITICAL, 1, "master_down", "CRITICAL", "postfix start", NULL},
        {0, 1, 1, REPORT_CRITICAL, 1, "master_down", "CRITICAL", "postfix start", NULL},
        {0, -1, 1, REPORT_CRITICAL, 1, "master_down", "CRITICAL", "postfix start", NULL},
        {1, 0, 1, REPORT_CRITICAL, 1, "qmgr_down", "CRITICAL", "postfix reload", NULL},
        {-1, 0, 1, REPORT_CRITICAL, 1, "qmgr_down", "CRITICAL", "postfix reload", NULL},
        /* master down and the daemon too: both, the critical one first. */
        {0, 0, 0, REPORT_CRITICAL, 2, "master_down", "CRITICAL", "postfix start", NULL},
        {1, 1, 1, REPORT_OK, 0, NULL, NULL, NULL, NULL},
        {-1, -1, 1, REPORT_OK, 0, NULL, NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct report_node_info n = {.name = "mx1.example.org",
                                     .daemon_up = cases[i].daemon_up,
                                     .master_up = cases[i].master_up,
                                     .qmgr_up = cases[i].qmgr_up,
                                     .saturation = -1};
        struct report *r = nodes_report(&n, 1);
        if (report_status(r) != cases[i].status || report_finding_count(r) != cases[i].n_findings)
            fail_msg("case %zu (master %d qmgr %d daemon %d): status %s with %zu findings, "
                     "expected %s with %zu",
                     i, cases[i].master_up, cases[i].qmgr_up, cases[i].daemon_up,
                     report_status_str(report_status(r)), report_finding_count(r),
                     report_status_str(cases[i].status), cases[i].n_findings);
        json_t *j;
        assert_int_equal(report_to_json(r, &j), 0);
        json_t *fs = json_object_get(j, "findings");
        assert_int_equal(json_array_size(fs), cases[i].n_findings);
        if (cases[i].code) {
            json_t *f = json_array_get(fs, 0);
            const char *code = cases[i].code;
            assert_string_equal(json_string_value(json_object_get(f, "code")), code);
            assert_string_equal(json_string_value(json_object_get(f, "severity")),
                                cases[i].severity);
            assert_string_equal(json_string_value(json_object_get(f, "subject")),
                                "mx1.example.org");
            assert_string_equal(json_string_value(json_object_get(f, "message")),
                                strcmp(code, "master_down") == 0 ? master_msg : qmgr_msg);
            const char *advice = json_string_value(json_object_get(f, "advice"));
            if (!advice || !strstr(advice, cases[i].advice_part))
                fail_msg("case %zu: %s advice \"%s\" lacks \"%s\"", i, code, advice,
                         cases[i].advice_part);
            /* Never both: qmgr is not a second finding when master is the cause. */
            for (size_t k = 1; k < json_array_size(fs); k++)
                assert_string_not_equal(
                    json_string_value(json_object_get(json_array_get(fs, k), "code")), "qmgr_down");
        }
        if (cases[i].n_findings == 2)
            assert_string_equal(json_string_value(json_object_get(json_array_get(fs, 1), "code")),
                                "daemon_down");
        json_decref(j);
        report_free(r);
    }

    /* The text report's first line, by hand: the status, the finding's message, then the
     * performance data of an empty queue with the default levels in range syntax: deferred
     * 100 and 1000 alert above 99 and 999, hold's warning 1 above 0, its critical (off) is
     * empty; the node's saturation is unknown, so it has none. */
    struct report_node_info n = {
        .name = "mx1.example.org", .daemon_up = 1, .master_up = 0, .qmgr_up = 0, .saturation = -1};
    struct report *r = nodes_report(&n, 1);
    char *text = report_text(r);
    const char *want = "CRITICAL - Postfix master is not running on mx1.example.org | "
                       "incoming=0;;;0; active=0;;;0; deferred=0;99;999;0; hold=0;0;;0; "
                       "backlog=0;1999;9999;0; oldest_age=0s;86399;345599;0; stressed=0;0;;0;1\n";
    if (strncmp(text, want, strlen(want)) != 0)
        fail_msg("text report starts with \"%.*s\", expected \"%s\"", (int)strlen(want), text,
                 want);
    free(text);
    assert_int_equal(report_exit_code(report_status(r)), 2);
    report_free(r);

    /* Two nodes, master down on one and qmgr on the other: one finding each, in node
     * order, each naming its node. */
    struct report_node_info two[] = {
        {.name = "mx1.example.org", .daemon_up = 1, .master_up = 0, .qmgr_up = 0, .saturation = -1},
        {.name = "mx2.example.org", .daemon_up = 1, .master_up = 1, .qmgr_up = 0, .saturation = -1},
    };
    r = nodes_report(two, 2);
    assert_int_equal(report_status(r), REPORT_CRITICAL);
    json_t *j;
    assert_int_equal(report_to_json(r, &j), 0);
    json_t *fs = json_object_get(j, "findings");
    assert_int_equal(json_array_size(fs), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(fs, 0), "code")),
                        "master_down");
    assert_string_equal(json_string_value(json_object_get(json_array_get(fs, 0), "subject")),
                        "mx1.example.org");
    assert_string_equal(json_string_value(json_object_get(json_array_get(fs, 1), "code")),
                        "qmgr_down");
    assert_string_equal(json_string_value(json_object_get(json_array_get(fs, 1), "subject")),
                        "mx2.example.org");
    json_decref(j);
    report_free(r);
}

static void test_report_status_and_exit_codes(void **state)
{
    (void)state;
    static const struct {
        enum report_status a, b, worse;
    } cases[] = {
        {REPORT_OK, REPORT_OK, REPORT_OK},
        {REPORT_OK, REPORT_WARNING, REPORT_WARNING},
        {REPORT_WARNING, REPORT_UNKNOWN, REPORT_UNKNOWN},
        {REPORT_UNKNOWN, REPORT_CRITICAL, REPORT_CRITICAL},
        {REPORT_CRITICAL, REPORT_WARNING, REPORT_CRITICAL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(report_status_worse(cases[i].a, cases[i].b), cases[i].worse);
        assert_int_equal(report_status_worse(cases[i].b, cases[i].a), cases[i].worse);
    }
    assert_int_equal(report_exit_code(REPORT_OK), 0);
    assert_int_equal(report_exit_code(REPORT_WARNING), 1);
    assert_int_equal(report_exit_code(REPORT_CRITICAL), 2);
    assert_int_equal(report_exit_code(REPORT_UNKNOWN), 3);
    assert_int_equal(report_exit_code((enum report_status)9), 3);
    assert_string_equal(report_status_str(REPORT_UNKNOWN), "UNKNOWN");

    /* No queue figures: UNKNOWN, and the JSON says null. */
    struct report *r = report_new(NOW, "mx1");
    assert_int_equal(report_evaluate(r, NULL), 0);
    assert_int_equal(report_status(r), REPORT_UNKNOWN);
    json_t *j;
    assert_int_equal(report_to_json(r, &j), 0);
    assert_true(json_is_null(json_object_get(j, "queues")));
    json_decref(j);
    report_free(r);

    /* Held mail: the configured level decides. */
    static const struct {
        uint64_t warn, crit;
        enum report_status want;
    } hold[] = {
        {1, 0, REPORT_WARNING}, {1, 1, REPORT_CRITICAL}, {0, 0, REPORT_OK}, {5, 0, REPORT_OK}};
    for (size_t i = 0; i < sizeof(hold) / sizeof(hold[0]); i++) {
        r = report_new(NOW, "mx1");
        struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.now = NOW});
        static const char line[] = "{\"queue_name\":\"hold\",\"arrival_time\":1795407720,"
                                   "\"recipients\":[{\"address\":\"a@b.test\"}]}";
        assert_int_equal(queue_stats_add_line(qs, line, strlen(line)), 0);
        assert_int_equal(report_set_queue(r, qs, 0, 0), 0);
        queue_stats_free(qs);
        struct report_thresholds t;
        report_thresholds_default(&t);
        t.hold_warning = hold[i].warn;
        t.hold_critical = hold[i].crit;
        assert_int_equal(report_evaluate(r, &t), 0);
        assert_int_equal(report_status(r), hold[i].want);
        report_free(r);
    }
    report_free(NULL);
}

static void test_report_rejects_bad_arguments(void **state)
{
    (void)state;
    struct report *r = report_new(NOW, NULL);
    assert_non_null(r);
    assert_int_equal(report_add_traffic(r, "", 1, 0, 0), -EINVAL);
    assert_int_equal(report_add_client(r, NULL, 1, 0), -EINVAL);
    assert_int_equal(report_add_warning(r, "", NULL, 1), -EINVAL);
    assert_int_equal(report_add_anomaly(r, "", 1, 0, 0, 0, NULL), -EINVAL);
    assert_int_equal(report_add_finding(r, REPORT_WARNING, "", "s", "m", NULL), -EINVAL);
    struct report_node_info n = {.name = ""};
    assert_int_equal(report_add_node(r, &n), -EINVAL);
    assert_int_equal(report_set_queue(r, NULL, 0, 0), -EINVAL);
    /* A caller's finding sets the status by itself. */
    assert_int_equal(report_add_finding(r, REPORT_UNKNOWN, "postqueue_failed", NULL,
                                        "postqueue -j exited 1", NULL),
                     0);
    assert_int_equal(report_status(r), REPORT_UNKNOWN);
    report_free(r);
}

/* Every writer's output is printable: names from the mail log and the queue carrying
 * control characters, an OSC sequence and invalid UTF-8 come out escaped. */
static void test_report_writers_escape_attacker_values(void **state)
{
    (void)state;
    struct report *r = report_new(NOW, "mx1\x1b[2J.example.org");
    assert_non_null(r);
    assert_int_equal(report_add_client(r, "evil\r2026-12-02 FORGED\x1b[2J\x07[192.0.2.9]", 5, 5),
                     0);
    assert_int_equal(report_add_traffic(r, "osc\x1b]0;title\x07.example\xff", 1, 9, 0), 0);
    assert_int_equal(report_add_warning(r, "bad\x7f", "detail\xc2\x85\xfe", 3), 0);
    assert_int_equal(report_evaluate(r, NULL), 0);
    writer_fn writers[] = {report_write_text, report_write_json, report_write_prometheus};
    for (size_t w = 0; w < 3; w++) {
        char *buf = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&buf, &len);
        assert_non_null(mem);
        assert_int_equal(writers[w](r, mem), 0);
        fclose(mem);
        /* Line by line: nothing but the line ends needs escaping. */
        for (char *line = buf, *nl; line < buf + len; line = nl + 1) {
            nl = memchr(line, '\n', (size_t)(buf + len - line));
            if (!nl)
                nl = buf + len;
            if (printable_needed(line, (size_t)(nl - line)))
                fail_msg("writer %zu: raw bytes in line: %.*s", w, (int)(nl - line), line);
        }
        if (w == 0) {
            assert_non_null(strstr(buf, "evil\\r2026-12-02 FORGED\\x1b[2J\\x07[192.0.2.9]"));
            assert_non_null(strstr(buf, "osc\\x1b]0;title\\x07.example\\xff"));
        }
        free(buf);
    }
    report_free(r);
}

/* Rejects by class: reply texts as lib/maillog keeps them (after the code and DSN, before
 * "; from=<"), from the production log in ../shared/real-logs (helga), fail2ban's and
 * Postfix's own smtpd_check tests, the grok patterns' postgrey deferral and postsurge's own
 * default replies. */
static void test_report_reject_classes(void **state)
{
    (void)state;
    static const struct {
        unsigned code;
        const char *text;
        enum report_reject_class want;
    } cases[] = {
        {550,
         "Service unavailable; client [185.246.220.193] blocked using zen.spamhaus.org; "
         "from=<ripe@uhu-banane.de>, to=<zzzzzzzzzzzzzzzzzezihe@hotmail.com>, proto=ESMTP",
         REPORT_REJECT_DNSBL},
        {554, "Service unavailable; Client host [192.0.2.1] blocked using sbl.spamhaus.org",
         REPORT_REJECT_DNSBL},
        {550,
         "<nobody@example.test>: Recipient address rejected: User unknown in local recipient "
         "table",
         REPORT_REJECT_UNKNOWN_RECIPIENT},
        {550, "<x@example.test>: Recipient address rejected: User unknown in virtual mailbox table",
         REPORT_REJECT_UNKNOWN_RECIPIENT},
        {550, "<x@example.test>: Recipient address rejected: unknown user",
         REPORT_REJECT_UNKNOWN_RECIPIENT},
        {554, "<x@relay.test>: Relay access denied", REPORT_REJECT_RELAY},
        {554, "<x@relay.test>: Recipient address rejected: Relay access denied",
         REPORT_REJECT_RELAY},
        {504, "<foo>: Helo command rejected: need fully-qualified hostname", REPORT_REJECT_HELO},
        {444, "<foobar>: Helo command rejected: Try again later", REPORT_REJECT_HELO},
        {450, "<sabrina@S510.gigasys>: Sender address rejected: Domain not found",
         REPORT_REJECT_SENDER_DOMAIN},
        {504, "<foo>: Sender address rejected: need fully-qualified address",
         REPORT_REJECT_SENDER_DOMAIN},
        {554,
         "<u@nullmx.porcupine.org>: Sender address rejected: Domain nullmx.porcupine.org does "
         "not accept mail (nullMX)",
         REPORT_REJECT_SENDER_DOMAIN},
        {550, "<a@b>: Sender address rejected: User unknown in local recipient table",
         REPORT_REJECT_OTHER},
        {450, "<u@example.com>: Recipient address rejected: Rate limit exceeded, try again later",
         REPORT_REJECT_OWN_LIMIT},
        {421,
         "<u@example.com>: Recipient address rejected: Too many errors from your address, "
         "try again later",
         REPORT_REJECT_OWN_LIMIT},
        {450, "<u@example.com>: Recipient address rejected: Daily quota reached",
         REPORT_REJECT_OWN_LIMIT},
        {450,
         "<whatever-user@lists.example.org>: Recipient address rejected: Greylisted, see "
         "http://postgrey.schweikert.ch/help/lists.example.org.html",
         REPORT_REJECT_GREYLIST},
        {450, "<user@example.com>: Recipient address rejected: Greylisted for 5 minutes",
         REPORT_REJECT_GREYLIST},
        {451, "<u@example.com>: Recipient address rejected: Temporary failure, try again later",
         REPORT_REJECT_GREYLIST},
        {550, "<u@example.com>: Recipient address rejected: try again later", REPORT_REJECT_OTHER},
        {450, "Client host rejected: cannot find your hostname, [93.184.216.34]",
         REPORT_REJECT_OTHER},
        {554, "<DATA>: Data command rejected: Multi-recipient bounce", REPORT_REJECT_OTHER},
        {550, NULL, REPORT_REJECT_OTHER},
    };
    /* A rule's own action (the README's per_user example) and the default limit_action. */
    const char *own[] = {"450 4.7.1 Rate limit exceeded, try again later",
                         "450 4.7.1 Daily quota reached", NULL};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        enum report_reject_class c = report_reject_classify(cases[i].code, cases[i].text, own);
        if (c != cases[i].want)
            fail_msg("case %zu (%s): %s, expected %s", i, cases[i].text ? cases[i].text : "NULL",
                     report_reject_class_str(c), report_reject_class_str(cases[i].want));
    }
    /* Without the caller's list only the defaults are postsurge's. */
    assert_int_equal(report_reject_classify(450, cases[15].text, NULL), REPORT_REJECT_OTHER);
    assert_string_equal(report_reject_class_str(REPORT_REJECT_OWN_LIMIT), "postsurge_limit");
    assert_string_equal(report_reject_class_str(REPORT_REJECT_CLASS_COUNT), "other");

    /* The counts in the three formats. */
    struct report *r = report_new(NOW, "mx1");
    assert_non_null(r);
    struct report_log_totals lt = {0};
    assert_int_equal(report_add_log_totals(r, &lt), 0);
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_DNSBL, 90), 0);
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_HELO, 4), 0);
    assert_int_equal(report_add_rejects(r, REPORT_REJECT_CLASS_COUNT, 1), -EINVAL);
    assert_int_equal(report_add_postscreen(r, "pregreet", 3872), 0);
    assert_int_equal(report_add_postscreen(r, "pass_old", 4477), 0);
    assert_int_equal(report_add_postscreen(r, "PASS OLD", 1), -EINVAL);
    assert_int_equal(report_add_postscreen(r, NULL, 1), -EINVAL);
    assert_int_equal(report_evaluate(r, NULL), 0);
    char *buf = report_text(r);
    assert_non_null(strstr(buf, "\nRejects by class: 94\n  dnsbl 90 helo 4\n"));
    assert_non_null(strstr(buf, "\npostscreen verdicts: 8349\n  pregreet 3872 pass_old 4477\n"));
    free(buf);
    json_t *j = NULL;
    assert_int_equal(report_to_json(r, &j), 0);
    json_t *rc = json_object_get(json_object_get(j, "traffic"), "rejects_by_class");
    assert_int_equal(json_object_size(rc), REPORT_REJECT_CLASS_COUNT);
    assert_int_equal(json_integer_value(json_object_get(rc, "dnsbl")), 90);
    assert_int_equal(json_integer_value(json_object_get(rc, "greylist")), 0);
    json_t *ps = json_object_get(json_object_get(j, "traffic"), "postscreen_verdicts");
    assert_int_equal(json_integer_value(json_object_get(ps, "pass_old")), 4477);
    assert_int_equal(json_integer_value(json_object_get(ps, "hangup")), 0);
    json_decref(j);
    buf = report_render(r, report_write_prometheus, NULL);
    assert_non_null(strstr(buf, "\npostsurge_report_rejects{class=\"dnsbl\"} 90\n"));
    assert_non_null(strstr(buf, "\npostsurge_report_rejects{class=\"postsurge_limit\"} 0\n"));
    assert_non_null(strstr(buf, "\npostsurge_report_postscreen_verdicts{verdict=\"pregreet\"} "
                                "3872\n"));
    free(buf);
    report_free(r);
}

/* The anomaly cause of metric in r's JSON, or NULL. */
static const char *anomaly_cause(json_t *doc, const char *metric)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "anomalies"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "metric")), metric) == 0)
            return json_string_value(json_object_get(a, "cause"));
    }
    return NULL;
}

/* Per-domain baselines from a hand-built history: a day of hourly reports in which
 * yahoo.com defers 12 of 100 messages (connection timeouts, 4.4.1), then an hour with 38 of
 * 100 deferred, 30 of them Yahoo's "421 4.7.0 [TSS04]" throttle (the wording of the real
 * deferrals in ../shared/real-logs). Only the top REPORT_BASELINE_DOMAINS domains by
 * volume get baselines. */
static void test_report_domain_anomalies(void **state)
{
    (void)state;
    struct baseline *b = baseline_new(NULL);
    assert_non_null(b);
    const int64_t t0 = NOW - NOW % 3600;
    char name[64];
    for (int h = 0; h < 24; h++) {
        struct report *r = report_new(t0 + h * 3600, "mx1");
        assert_non_null(r);
        assert_int_equal(report_add_traffic(r, "yahoo.com", 88, 12, 0), 0);
        assert_int_equal(
            report_add_domain_reason(r, "yahoo.com", QUEUE_REASON_CONN_TIMEOUT, "4.4.1", 12), 0);
        /* 24 more domains, each smaller than the last; small.test has 5 messages. */
        for (int d = 0; d < 24; d++) {
            snprintf(name, sizeof(name), "d%02d.test", d);
            assert_int_equal(report_add_traffic(r, name, (uint64_t)(90 - d), 0, 0), 0);
        }
        assert_int_equal(report_add_traffic(r, "small.test", 5, 0, 0), 0);
        assert_true(report_apply_baseline(r, b, false) >= 0);
        report_free(r);
    }
    struct baseline_stat st;
    assert_int_equal(baseline_get(b, "mx1/domain/yahoo.com/deferral_pct", t0 + 86400, &st), 0);
    assert_int_equal(st.n, 24);
    assert_true(st.mean > 11.99 && st.mean < 12.01);
    assert_int_equal(
        baseline_get(b, "mx1/domain/yahoo.com/deferred.connection_timeout", t0 + 86400, &st), 0);
    /* yahoo.com and d00..d18 are the top 20; d19..d23 and small.test have no baseline. */
    assert_int_equal(baseline_get(b, "mx1/domain/d18.test/deferred", t0 + 86400, &st), 0);
    assert_int_equal(baseline_get(b, "mx1/domain/d19.test/deferred", t0 + 86400, &st), -ENOENT);
    assert_int_equal(baseline_get(b, "mx1/domain/small.test/deferred", t0 + 86400, &st), -ENOENT);

    struct report *r = report_new(t0 + 24 * 3600, "mx1");
    assert_non_null(r);
    assert_int_equal(report_add_traffic(r, "yahoo.com", 62, 38, 0), 0);
    assert_int_equal(
        report_add_domain_reason(r, "yahoo.com", QUEUE_REASON_CONN_TIMEOUT, "4.4.1", 8), 0);
    assert_int_equal(
        report_add_domain_reason(r, "yahoo.com", QUEUE_REASON_THROTTLE, "421 4.7.0", 28), 0);
    /* Calls add up; the reply with the biggest count stays. */
    assert_int_equal(report_add_domain_reason(r, "yahoo.com", QUEUE_REASON_THROTTLE, "4.7.0", 2),
                     0);
    assert_int_equal(report_add_domain_reason(r, "", QUEUE_REASON_THROTTLE, "x", 1), -EINVAL);
    assert_int_equal(report_add_domain_reason(r, "a.test", QUEUE_REASON_COUNT, "x", 1), -EINVAL);
    assert_int_equal(report_add_traffic(r, "d00.test", 90, 0, 0), 0);
    assert_true(report_apply_baseline(r, b, false) >= 1);
    assert_int_equal(report_evaluate(r, NULL), 0);
    json_t *doc = NULL;
    assert_int_equal(report_to_json(r, &doc), 0);
    const char *cause = anomaly_cause(doc, "domain/yahoo.com/deferral_pct");
    assert_non_null(cause);
    assert_string_equal(cause, "yahoo.com: deferral rate 12 % \u2192 38 % (+26 points), mostly "
                               "421 4.7.0 throttle (30 of 38 deferrals)");
    /* One anomaly per domain: the rate, not also the count. */
    assert_null(anomaly_cause(doc, "domain/yahoo.com/deferred"));
    assert_null(anomaly_cause(doc, "domain/d00.test/deferral_pct"));
    json_decref(doc);
    report_free(r);

    /* Quiet: recorded, not reported. */
    r = report_new(t0 + 25 * 3600, "mx1");
    assert_non_null(r);
    assert_int_equal(report_add_traffic(r, "yahoo.com", 10, 90, 0), 0);
    assert_int_equal(report_apply_baseline(r, b, true), 0);
    report_free(r);
    baseline_free(b);
}

/* Backscatter: a deferred queue made mostly of bounces (null sender) is a WARNING once it
 * holds report_failure_min_messages (20) messages; 19 are not judged, and half is not
 * "mostly". */
static void test_report_backscatter(void **state)
{
    (void)state;
    static const struct {
        int bounces, others;
        bool finding;
    } cases[] = {{15, 5, true}, {14, 5, false}, {10, 10, false}, {11, 10, true}};
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.now = NOW});
        assert_non_null(qs);
        for (int i = 0; i < cases[c].bounces + cases[c].others; i++) {
            char line[512];
            int n =
                snprintf(line, sizeof(line),
                         "{\"queue_name\": \"deferred\", \"queue_id\": \"Q%d\", "
                         "\"arrival_time\": %d, \"message_size\": 2552, \"sender\": \"%s\", "
                         "\"recipients\": [{\"address\": \"forged%d@victim.example\", "
                         "\"delay_reason\": \"host mx.victim.example[192.0.2.5] said: 550 "
                         "5.1.1 <forged@victim.example>: Recipient address rejected: User "
                         "unknown\"}]}",
                         i, ARRIVAL, i < cases[c].bounces ? "MAILER-DAEMON" : "a@spam.example", i);
            assert_int_equal(queue_stats_add_line(qs, line, (size_t)n), 0);
        }
        struct report *r = report_new(NOW, "mx1");
        assert_non_null(r);
        assert_int_equal(report_set_queue(r, qs, 10, 3), 0);
        queue_stats_free(qs);
        assert_int_equal(report_evaluate(r, NULL), 0);
        json_t *doc = NULL;
        assert_int_equal(report_to_json(r, &doc), 0);
        bool found = false;
        size_t i;
        json_t *f;
        json_array_foreach(json_object_get(doc, "findings"), i, f)
        {
            if (strcmp(json_string_value(json_object_get(f, "code")), "backscatter") == 0) {
                found = true;
                char want[128];
                snprintf(want, sizeof(want),
                         "%d of %d deferred messages are bounces (null sender): backscatter",
                         cases[c].bounces, cases[c].bounces + cases[c].others);
                assert_string_equal(json_string_value(json_object_get(f, "message")), want);
            }
        }
        assert_int_equal(found, cases[c].finding);
        json_t *ns = json_object_get(json_object_get(doc, "senders"), "null_sender");
        assert_int_equal(json_integer_value(json_object_get(ns, "deferred")), cases[c].bounces);
        json_decref(doc);
        report_free(r);
    }
}

/* The keys that hit limits, from nine limit-hit events counted by hand: per_user alice
 * (a SASL login) 3 on nodes a, b, a: a finding for two nodes; per_snd news@x (a sender)
 * 3 on a: a finding for 3 hits; per_ip 192.0.2.9 2 on a and per_ip 198.51.100.1 1 on b:
 * no finding, no advice line. Worst first; every output names them; a report without
 * events has no section at all. */
static void test_report_limit_hits(void **state)
{
    (void)state;
    struct report *r = report_new(NOW, "a");
    assert_non_null(r);
    static const struct {
        const char *node, *rule, *spec, *value;
        int64_t ago, count;
    } ev[] = {
        {"a", "per_user", "sasl_username", "alice", 600, 100},
        {"b", "per_user", "sasl_username", "alice", 300, 100},
        {"a", "per_user", "sasl_username", "alice", 60, 101},
        {"a", "per_snd", "sender", "news@x", 900, 50},
        {"a", "per_snd", "sender", "news@x", 500, 50},
        {"a", "per_snd", "sender", "news@x", 100, 50},
        {"a", "per_ip", "client_address", "192.0.2.9", 700, 20},
        {"a", "per_ip", "client_address", "192.0.2.9", 200, 20},
        {"b", "per_ip", "client_address", "198.51.100.1", 30, 20},
    };
    for (size_t i = 0; i < sizeof(ev) / sizeof(ev[0]); i++) {
        struct report_limit_hit h = {ev[i].node,  ev[i].rule,  ev[i].spec,      ev[i].value,
                                     "192.0.2.9", ev[i].count, ev[i].count + 1, NOW - ev[i].ago};
        h.limit = ev[i].count;
        assert_int_equal(report_add_limit_hit(r, &h), 0);
    }
    struct report_limit_hit bad = {"a", NULL, NULL, "x", NULL, 1, 1, NOW};
    assert_int_equal(report_add_limit_hit(r, &bad), -EINVAL);
    assert_int_equal(report_evaluate(r, NULL), 0);

    json_t *j;
    assert_int_equal(report_to_json(r, &j), 0);
    json_t *lh = json_object_get(j, "limit_hits");
    assert_int_equal(json_integer_value(json_object_get(lh, "events")), 9);
    json_t *keys = json_object_get(lh, "keys");
    assert_int_equal(json_array_size(keys), 4);
    static const struct {
        const char *rule, *value, *kind;
        int hits, nodes, limit;
        int64_t last;
    } want[] = {
        {"per_user", "alice", "sasl", 3, 2, 101, NOW - 60},
        {"per_snd", "news@x", "sender", 3, 1, 50, NOW - 100},
        {"per_ip", "192.0.2.9", "other", 2, 1, 20, NOW - 200},
        {"per_ip", "198.51.100.1", "other", 1, 1, 20, NOW - 30},
    };
    for (size_t i = 0; i < 4; i++) {
        json_t *k = json_array_get(keys, i);
        assert_string_equal(json_string_value(json_object_get(k, "rule")), want[i].rule);
        assert_string_equal(json_string_value(json_object_get(k, "value")), want[i].value);
        assert_string_equal(json_string_value(json_object_get(k, "kind")), want[i].kind);
        assert_int_equal(json_integer_value(json_object_get(k, "hits")), want[i].hits);
        assert_int_equal(json_array_size(json_object_get(k, "nodes")), want[i].nodes);
        assert_int_equal(json_integer_value(json_object_get(k, "limit")), want[i].limit);
        assert_int_equal(json_integer_value(json_object_get(k, "last")), want[i].last);
    }
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(keys, 0), "advice")),
                           "account may be compromised: check its logins"));
    int nodes_f = 0, repeated_f = 0;
    json_t *fs = json_object_get(j, "findings");
    for (size_t i = 0; i < json_array_size(fs); i++) {
        const char *code = json_string_value(json_object_get(json_array_get(fs, i), "code"));
        const char *subj = json_string_value(json_object_get(json_array_get(fs, i), "subject"));
        if (!strcmp(code, "limit_hit_nodes")) {
            nodes_f++;
            assert_string_equal(subj, "per_user alice");
        } else if (!strcmp(code, "limit_hit_repeated")) {
            repeated_f++;
            assert_string_equal(subj, "per_snd news@x");
        }
    }
    assert_int_equal(nodes_f, 1);
    assert_int_equal(repeated_f, 1);
    assert_int_equal(report_status(r), REPORT_UNKNOWN); /* no queue figures: UNKNOWN wins */
    json_decref(j);

    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    assert_int_equal(report_write_text(r, mem), 0);
    fclose(mem);
    assert_non_null(strstr(buf, "Keys that hit rate limits: 9 limit-hit events, 4 keys\n"));
    assert_non_null(strstr(buf, "key alice of rule per_user hit its limit 3 times on 2 nodes"));
    assert_non_null(strstr(buf, "key news@x of rule per_snd hit its limit 3 times on 1 node "
                                "since the last report (3 or more is a finding)"));
    const char *row = strstr(buf, "  per_ip           192.0.2.9");
    assert_non_null(row);
    assert_true(strncmp(strchr(row, '\n') + 1, "           -> ", 14) != 0); /* no advice */
    free(buf);
    check_writer(r, report_write_json, "limits.json");
    check_writer(r, report_write_prometheus, "limits.prom");
    buf = NULL;
    mem = open_memstream(&buf, &len);
    assert_int_equal(report_write_prometheus(r, mem), 0);
    fclose(mem);
    assert_non_null(strstr(buf, "\npostsurge_report_limit_hit_events 9\n"));
    assert_non_null(
        strstr(buf, "\npostsurge_report_limit_hits{rule=\"per_user\",key=\"alice\"} 3\n"));
    free(buf);
    report_free(r);

    r = report_new(NOW, "a");
    assert_int_equal(report_evaluate(r, NULL), 0);
    assert_int_equal(report_to_json(r, &j), 0);
    assert_null(json_object_get(j, "limit_hits"));
    json_decref(j);
    report_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_writers_all_ok),
        cmocka_unit_test(test_report_writers_with_problems),
        cmocka_unit_test(test_report_findings_and_advice),
        cmocka_unit_test(test_report_master_and_qmgr_down),
        cmocka_unit_test(test_report_status_and_exit_codes),
        cmocka_unit_test(test_report_rejects_bad_arguments),
        cmocka_unit_test(test_report_writers_escape_attacker_values),
        cmocka_unit_test(test_report_reject_classes),
        cmocka_unit_test(test_report_domain_anomalies),
        cmocka_unit_test(test_report_backscatter),
        cmocka_unit_test(test_report_limit_hits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
