/* Unit tests of lib/config.c: every value type with good, bad and boundary values, the
 * file syntax (continuations, comments, CRLF, duplicates), error lines, the store URL
 * parser, print-then-parse round trips, the shipped example postsurge.cf, the README
 * reference, and every allocation failure. Data files live in test/data/config/. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"

#define DATA TEST_DATA "/config/"
#define SOURCE_ROOT TEST_DATA "/../../"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            assert_non_null(nb);
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        if (got == 0)
            break;
        n += got;
    }
    fclose(f);
    if (!buf)
        buf = calloc(1, 1);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

/* Parses text; returns rc, the config in *out, all messages joined by '\n' in *msgs. */
static int parse_text(const char *text, struct config **out, char **msgs)
{
    struct config_errors errs = {0};
    int rc = config_parse_buffer("t.cf", text, strlen(text), out, &errs);
    size_t total = 1;
    for (size_t i = 0; i < errs.n; i++)
        total += strlen(errs.msg[i]) + 1;
    char *m = calloc(1, total);
    assert_non_null(m);
    for (size_t i = 0; i < errs.n; i++) {
        strcat(m, errs.msg[i]);
        strcat(m, "\n");
    }
    config_errors_clear(&errs);
    if (msgs)
        *msgs = m;
    else
        free(m);
    return rc;
}

static char *print_to_string(const struct config *cfg, bool non_default, const char *one)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    int rc = one ? config_print_one(cfg, f, one) : config_print(cfg, f, non_default);
    assert_int_equal(rc, 0);
    fclose(f);
    return buf;
}

static void test_config_defaults_match_header(void **state)
{
    (void)state;
    struct config *c = config_new_defaults();
    assert_non_null(c);
    assert_string_equal(c->listen, "inet:127.0.0.1:10040");
    assert_int_equal(c->listen_unix_mode, 0666);
    assert_string_equal(c->listen_unix_owner, "");
    assert_int_equal(c->max_connections, 4096);
    assert_int_equal(c->idle_timeout, 600000);
    assert_int_equal(c->max_line_length, 16384);
    assert_int_equal(c->max_attributes, 256);
    assert_int_equal(c->max_request_size, 131072);
    assert_int_equal(c->max_output_buffer, 65536);
    assert_string_equal(c->default_action, "DUNNO");
    assert_string_equal(c->log_destination, "syslog");
    assert_string_equal(c->log_level, "info");
    assert_string_equal(c->syslog_facility, "mail");
    assert_string_equal(c->syslog_name, "postsurge");
    assert_int_equal(c->log_repeat_interval, 60000);
    assert_string_equal(c->user, "postsurge");
    assert_string_equal(c->group, "postsurge");
    assert_string_equal(c->limits, "");
    assert_false(c->limit_dry_run);
    assert_int_equal(strncmp(c->limit_action, "450 4.7.1 ", 10), 0);
    assert_string_equal(c->store, "memory");
    assert_string_equal(c->store_key_prefix, "postsurge:");
    assert_int_equal(c->redis_timeout, 100);
    assert_string_equal(c->store_failure_action, "local");
    assert_int_equal(c->redis_reconnect_max, 5000);
    assert_string_equal(c->node_name, "");
    assert_string_equal(c->postfix_config_directory, "/etc/postfix");
    assert_string_equal(c->maillog_file, "/var/log/mail.log");
    assert_string_equal(c->state_directory, "/var/lib/postsurge");
    assert_true(c->monitor);
    assert_int_equal(c->monitor_interval, 1000);
    assert_int_equal(c->stress_enter_threshold, 90);
    assert_int_equal(c->stress_enter_delay, 5000);
    assert_int_equal(c->stress_exit_threshold, 60);
    assert_int_equal(c->stress_exit_delay, 120000);
    assert_int_equal(c->stress_min_interval, 60000);
    assert_false(c->stress_overrides);
    assert_false(c->stress_dry_run);
    assert_int_equal(c->stress_cluster_quorum, 0);
    assert_int_equal(c->command_timeout, 30000);
    assert_int_equal(c->node_status_ttl, 5000);
    assert_int_equal(c->event_log_max, 10000);
    assert_int_equal(c->attack_unknown_user_limit, 20);
    assert_int_equal(c->attack_error_limit, 50);
    assert_int_equal(c->attack_window, 600000);
    assert_int_equal(c->attack_flag_time, 3600000);
    assert_int_equal(strncmp(c->attack_action, "421 4.7.0 ", 10), 0);
    assert_int_equal(c->attack_auth_failure_limit, 10);
    assert_int_equal(c->attack_auth_window, 600000);
    assert_string_equal(c->attack_auth_mode, "always");
    assert_int_equal(c->attack_stress_unknown_user_rate, 0);
    assert_int_equal(c->attack_stress_auth_failure_rate, 0);
    assert_string_equal(c->http_listen, "inet:127.0.0.1:10041");
    assert_int_equal(c->http_max_connections, 64);
    assert_true(c->report_anomaly_sigma == 2.0);
    assert_int_equal(c->report_baseline_window, 7LL * 86400 * 1000);
    assert_string_equal(c->report_quiet_windows, "");
    assert_string_equal(config_source_name(c), "");
    assert_int_equal(config_setting_line(c, "listen"), 0);
    assert_int_equal(config_setting_line(c, "no_such"), -ENOENT);
    config_free(c);
    config_free(NULL);
}

/* One setting, one value: accepted and printed canonically, or rejected with a reason. */
struct value_case {
    const char *name;
    const char *value;
    const char *expect; /* the printed value when accepted, else a piece of the error */
    bool ok;
};

static const struct value_case value_cases[] = {
    /* integers with bounds */
    {"max_connections", "1", "1", true},
    {"max_connections", "1000000", "1000000", true},
    {"max_connections", "0", "out of range; expected an integer from 1 to 1000000", false},
    {"max_connections", "1000001", "out of range", false},
    {"max_connections", "-5", "out of range", false},
    {"max_connections", "12abc", "not an integer", false},
    {"max_connections", "99999999999999999999999", "not an integer", false},
    {"max_connections", "", "not an integer", false},
    {"stress_cluster_quorum", "100", "100", true},
    {"stress_cluster_quorum", "101", "from 0 to 100", false},
    /* times: units ms s m h d w, bare = seconds */
    {"idle_timeout", "90", "90s", true},
    {"idle_timeout", "1s", "1s", true},
    {"idle_timeout", "1d", "1d", true},
    {"idle_timeout", "2h", "2h", true},
    {"idle_timeout", "1500ms", "1500ms", true},
    {"idle_timeout", "120s", "2m", true},
    {"idle_timeout", "999ms", "out of range; expected a time from 1s to 1d", false},
    {"idle_timeout", "25h", "out of range", false},
    {"idle_timeout", "5x", "not a time", false},
    {"idle_timeout", "s", "not a time", false},
    {"idle_timeout", "-1s", "not a time", false},
    {"idle_timeout", "1.5s", "not a time", false},
    {"idle_timeout", "99999999999999999w", "not a time", false},
    {"redis_timeout", "1ms", "1ms", true},
    {"redis_timeout", "0", "out of range", false},
    {"stress_enter_delay", "0", "0s", true},
    {"report_baseline_window", "2w", "14d", true},
    /* sizes: K M G, bare = bytes */
    {"max_request_size", "1024", "1K", true},
    {"max_request_size", "1000", "out of range; expected a size from 1K to 64M", false},
    {"max_request_size", "64M", "64M", true},
    {"max_request_size", "65M", "out of range", false},
    {"max_request_size", "2k", "2K", true},
    {"max_request_size", "1500", "1500", true},
    {"max_request_size", "1T", "not a size", false},
    {"max_request_size", "1KB", "not a size", false},
    {"max_output_buffer", "1G", "1G", true},
    /* octal modes */
    {"listen_unix_mode", "0660", "0660", true},
    {"listen_unix_mode", "660", "0660", true},
    {"listen_unix_mode", "0", "0000", true},
    {"listen_unix_mode", "07777", "7777", true},
    {"listen_unix_mode", "010000", "out of range", false},
    {"listen_unix_mode", "0177777", "not an octal mode", false},
    {"listen_unix_mode", "0668", "not an octal mode", false},
    {"listen_unix_mode", "rw", "not an octal mode", false},
    /* booleans, as Postfix plus true/false and 1/0 */
    {"monitor", "no", "no", true},
    {"monitor", "yes", "yes", true},
    {"monitor", "NO", "no", true},
    {"monitor", "true", "yes", true},
    {"monitor", "false", "no", true},
    {"monitor", "1", "yes", true},
    {"monitor", "0", "no", true},
    {"monitor", "on", "not a boolean; expected yes or no", false},
    {"monitor", "", "not a boolean", false},
    /* doubles */
    {"report_anomaly_sigma", "2.5", "2.5", true},
    {"report_anomaly_sigma", "0.1", "0.1", true},
    {"report_anomaly_sigma", "100", "100", true},
    {"report_anomaly_sigma", "3e1", "30", true},
    {"report_anomaly_sigma", "0.05", "out of range; expected a number from 0.1 to 100", false},
    {"report_anomaly_sigma", "nan", "not a number", false},
    {"report_anomaly_sigma", "inf", "not a number", false},
    {"report_anomaly_sigma", "2,5", "not a number", false},
    /* enums */
    {"log_destination", "stderr", "stderr", true},
    {"log_destination", "file", "unknown value; expected one of syslog|stderr", false},
    {"log_level", "debug", "debug", true},
    {"log_level", "warn", "one of error|warning|info|debug", false},
    {"store_failure_action", "defer_if_permit", "defer_if_permit", true},
    {"store_failure_action", "DUNNO", "one of local|dunno|defer_if_permit", false},
    {"syslog_facility", "local3", "local3", true},
    {"syslog_facility", "kern", "unknown value", false},
    /* strings with a syntax */
    {"listen", "inet:[::1]:10040, unix:/var/spool/postfix/private/postsurge",
     "inet:[::1]:10040, unix:/var/spool/postfix/private/postsurge", true},
    {"listen", "", "at least one", false},
    {"listen", "127.0.0.1:10040", "expected inet:HOST:PORT or unix:PATH", false},
    {"listen", "inet:127.0.0.1:0", "port must be", false},
    {"listen", "inet:127.0.0.1:65536", "port must be", false},
    {"listen", "inet::10040", "expected inet:HOST:PORT", false},
    {"http_listen", "", "", true},
    {"http_listen", "inet:0.0.0.0:9100", "inet:0.0.0.0:9100", true},
    {"default_action", "dunno", "dunno", true},
    {"default_action", "450 4.7.1 Try later", "450 4.7.1 Try later", true},
    {"default_action", "DEFER_IF_PERMIT Service unavailable", "DEFER_IF_PERMIT Service unavailable",
     true},
    {"default_action", "ACCEPT", "not an access(5) action", false},
    {"default_action", "", "an access(5) action is needed", false},
    {"default_action", "250 ok", "not an access(5) action", false},
    {"store", "memory", "memory", true},
    {"store", "redis://127.0.0.1:6379", "redis://127.0.0.1:6379", true},
    {"store", "redis://:secret@redis.example:6380/3", "redis://:secret@redis.example:6380/3", true},
    {"store", "redis+unix:///run/redis/redis.sock?db=1", "redis+unix:///run/redis/redis.sock?db=1",
     true},
    {"store", "mysql://x", "expected memory, redis://", false},
    {"store", "redis://127.0.0.1:99999", "port must be", false},
    {"store", "redis://user:pw@host:1", "only a password is supported", false},
    {"store", "redis+unix://relative", "expected redis+unix:///", false},
    {"store_key_prefix", "", "", true},
    {"store_key_prefix", "a b", "one word", false},
    {"state_directory", "var/lib", "absolute path", false},
    {"state_directory", "", "must not be empty", false},
    {"maillog_file", "", "", true},
    {"maillog_file", "/var/log/maillog", "/var/log/maillog", true},
    {"user", "", "must not be empty", false},
    {"stress_main_cf", "smtpd_timeout=10s smtpd_soft_error_limit=2",
     "smtpd_timeout=10s smtpd_soft_error_limit=2", true},
    {"stress_main_cf", "", "", true},
    {"stress_main_cf", "smtpd_timeout = 10s", "name=value", false},
    {"stress_main_cf", "smtpd-timeout=10s", "bad parameter name", false},
    {"stress_master_cf", "127.0.0.1:2525/inet/stress=yes", "127.0.0.1:2525/inet/stress=yes", true},
    {"stress_master_cf", "smtp/stress=yes", "service/type/name=value", false},
    {"stress_main_cf", "smtpd_soft_error_limit=2 daemon_directory=/tmp/x",
     "daemon_directory: not a setting stress profiles may change", false},
    {"stress_main_cf", "smtpd_timeout=soon", "smtpd_timeout=soon: the value must be", false},
    {"stress_master_cf", "smtp/inet/mynetworks=0.0.0.0/0", "mynetworks: not a setting", false},
    {"limits", "anything goes here", "anything goes here", true},
};

static void test_config_value_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(value_cases) / sizeof(value_cases[0]); i++) {
        const struct value_case *vc = &value_cases[i];
        char text[512], *msgs = NULL;
        struct config *cfg = NULL;
        snprintf(text, sizeof(text), "%s = %s\n", vc->name, vc->value);
        int rc = parse_text(text, &cfg, &msgs);
        if (vc->ok) {
            if (rc != 0)
                fail_msg("case %zu (%s = %s): rejected: %s", i, vc->name, vc->value, msgs);
            char *out = print_to_string(cfg, false, vc->name);
            char want[512];
            if (*vc->expect)
                snprintf(want, sizeof(want), "%s = %s\n", vc->name, vc->expect);
            else
                snprintf(want, sizeof(want), "%s =\n", vc->name);
            if (strcmp(out, want) != 0)
                fail_msg("case %zu: printed %s, want %s", i, out, want);
            free(out);
            assert_int_equal(config_setting_line(cfg, vc->name), 1);
        } else {
            if (rc != -EINVAL)
                fail_msg("case %zu (%s = %s): accepted", i, vc->name, vc->value);
            assert_null(cfg);
            if (strncmp(msgs, "t.cf:1: ", 8) != 0 || !strstr(msgs, vc->expect) ||
                !strstr(msgs, vc->name))
                fail_msg("case %zu (%s = %s): message %s lacks '%s'", i, vc->name, vc->value, msgs,
                         vc->expect);
        }
        free(msgs);
        config_free(cfg);
    }
}

/* What each line of the .expected files must say, reasoned by hand from the fixtures, not
 * from the parser's output: the fixture line as read in an editor (its number counted from
 * the top, comments included), and the pieces its message must hold. The bounds are the
 * "Allowed:" ranges of the README's configuration reference (max_connections 1 to
 * 1000000, idle_timeout 1s to 1d, max_request_size 1K to 64M, listen_unix_mode 0000 to
 * 07777, report_anomaly_sigma 0.1 to 100, ports 1 to 65535, log_level's four names); "999"
 * is not octal (9), "1T" has no such suffix (K M G), "GO" is no access(5) action; the
 * second max_connections that has an '=' is on line 18, the first on line 3 (line 4 lacks
 * the '='); cross-checks come after the line errors, as check-config prints them. Rows are
 * in the order of the .expected file, and a file has no other lines: regenerating a golden
 * file from a wrong parser fails here. */
#define FX(s) s, sizeof(s) - 1
static const struct expected_problem {
    const char *file;
    int line;
    const char *fixture; /* the bytes of that line of the .cf file, without the newline */
    size_t fixture_len;
    const char *pieces[4];
} expected_problems[] = {
    {"errors", 2, FX("  orphan continuation line"), {"continuation line without a setting"}},
    {"errors",
     3,
     FX("max_connections = lots"),
     {"\"lots\" for max_connections", "not an integer", "from 1 to 1000000"}},
    {"errors", 4, FX("max_connections 10"), {"missing '='", "\"max_connections\""}},
    {"errors", 5, FX("= 10"), {"missing parameter name before '='"}},
    {"errors", 6, FX("unknown_setting = 1"), {"unknown setting \"unknown_setting\""}},
    {"errors",
     7,
     FX("idle_timeout = 0s"),
     {"\"0s\" for idle_timeout", "out of range", "from 1s to 1d"}},
    {"errors", 8, FX("listen ="), {"\"\" for listen", "at least one inet:HOST:PORT or unix:PATH"}},
    {"errors",
     9,
     FX("store = redis://h:0"),
     {"\"redis://h:0\" for store", "port must be a number from 1 to 65535"}},
    {"errors", 10, FX("log_level = loud"), {"\"loud\" for log_level", "error|warning|info|debug"}},
    {"errors", 11, FX("monitor = maybe"), {"\"maybe\" for monitor", "not a boolean", "yes or no"}},
    {"errors",
     12,
     FX("listen_unix_mode = 999"),
     {"\"999\" for listen_unix_mode", "not an octal mode", "from 0000 to 07777"}},
    {"errors",
     13,
     FX("report_anomaly_sigma = 1000"),
     {"\"1000\" for report_anomaly_sigma", "out of range", "from 0.1 to 100"}},
    {"errors",
     16,
     FX("max_request_size = 1T"),
     {"\"1T\" for max_request_size", "not a size", "from 1K to 64M", "K M G"}},
    {"errors", 17, FX("default_action = GO"), {"\"GO\" for default_action", "not an access(5)"}},
    {"errors",
     18,
     FX("max_connections = 5"),
     {"warning: ", "max_connections redefined", "(first at line 3)"}},
    {"errors",
     19,
     FX("stress_main_cf = smtpd_timeout = 10"),
     {"for stress_main_cf", "\"smtpd_timeout\"", "expected name=value"}},
    {"errors",
     20,
     FX("idle_tmeout = 5s"),
     {"unknown setting \"idle_tmeout\"", "did you mean idle_timeout?"}},
    {"binary",
     2,
     FX("log_level = de\x01"
        "bug"),
     {"control character", "(0x01)"}},
    {"binary", 4, FX("  a\0b"), {"NUL byte"}},
    {"binary", 7, FX("\xff\xfe = x"), {"unknown setting \"\\xff\\xfe\""}},
    {"cross-check",
     4,
     FX("listen = unix:/tmp/x inet:localhost:25 bad"),
     {"\"unix:/tmp/x inet:localhost:25 bad\" for listen", "inet:HOST:PORT or unix:PATH"}},
    {"cross-check",
     3,
     FX("stress_exit_threshold = 50"),
     {"stress_exit_threshold (50)", "below stress_enter_threshold (50)"}},
};
#undef FX

/* Line n (from 1) of text: its start in *line and its length in *len; -1 if there is none. */
static int nth_line(const char *text, size_t tlen, int n, const char **line, size_t *len)
{
    const char *p = text, *end = text + tlen;
    for (int i = 1; i < n; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            return -1;
        p = nl + 1;
    }
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    *line = p;
    *len = nl ? (size_t)(nl - p) : (size_t)(end - p);
    return 0;
}

/* Each golden line holds what the hand table says, in its order, and nothing else. */
static void check_expected_against_table(const char *name, const char *cf, size_t cflen,
                                         const char *expected)
{
    const char *e = expected;
    size_t rows = 0;
    for (size_t i = 0; i < sizeof(expected_problems) / sizeof(expected_problems[0]); i++) {
        const struct expected_problem *x = &expected_problems[i];
        if (strcmp(x->file, name) != 0)
            continue;
        rows++;
        const char *fl;
        size_t fllen;
        if (nth_line(cf, cflen, x->line, &fl, &fllen) < 0 || fllen != x->fixture_len ||
            memcmp(fl, x->fixture, fllen) != 0)
            fail_msg("%s.cf:%d is not the line the table was reasoned from", name, x->line);
        const char *nl = strchr(e, '\n');
        if (!nl)
            fail_msg("%s.expected: no line for %s.cf:%d", name, name, x->line);
        char row[1024], prefix[128];
        snprintf(row, sizeof(row), "%.*s", (int)(nl - e), e);
        snprintf(prefix, sizeof(prefix), "%s.cf:%d: ", name, x->line);
        if (strncmp(row, prefix, strlen(prefix)) != 0)
            fail_msg("%s.expected: '%s' should start with '%s'", name, row, prefix);
        for (size_t k = 0; k < 4 && x->pieces[k]; k++)
            if (!strstr(row, x->pieces[k]))
                fail_msg("%s.expected: '%s' lacks '%s'", name, row, x->pieces[k]);
        e = nl + 1;
    }
    if (rows == 0 || *e)
        fail_msg("%s.expected: lines beyond the %zu of the hand table: %s", name, rows, e);
}

/* A file with every kind of mistake: the parser's messages are compared line by line with
 * its .expected (the layout), and the .expected with the hand table above (the values). */
static void test_config_error_file_lists_every_problem(void **state)
{
    (void)state;
    static const char *const names[] = {"errors", "binary", "cross-check"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        char path[512], epath[512];
        snprintf(path, sizeof(path), DATA "%s.cf", names[k]);
        snprintf(epath, sizeof(epath), DATA "%s.expected", names[k]);
        size_t len;
        char *text = read_all(path, &len);
        char *expected = read_all(epath, NULL);
        assert_non_null(text);
        assert_non_null(expected);
        check_expected_against_table(names[k], text, len, expected);
        struct config_errors errs = {0};
        struct config *cfg = NULL;
        char shortname[64];
        snprintf(shortname, sizeof(shortname), "%s.cf", names[k]);
        assert_int_equal(config_parse_buffer(shortname, text, len, &cfg, &errs), -EINVAL);
        assert_null(cfg);
        char *got = calloc(1, 65536);
        assert_non_null(got);
        for (size_t i = 0; i < errs.n; i++) {
            strcat(got, errs.msg[i]);
            strcat(got, "\n");
        }
        if (strcmp(got, expected) != 0)
            fail_msg("%s: got\n%s\nwant\n%s", names[k], got, expected);
        config_errors_clear(&errs);
        free(got);
        free(text);
        free(expected);
    }
}

static void test_config_continuation_keeps_rule_lines(void **state)
{
    (void)state;
    const char *text = "# rate limits\n"
                       "limits =\n"
                       "    per_ip  client_address  recipients 200/1m stress 40/1m\n"
                       "    # a comment inside the block does not end it\n"
                       "\n"
                       "\tper_user sasl_username recipients 2000/1d action 450 4.7.1 Daily quota "
                       "reached   \n"
                       "default_action = 450\n"
                       "   4.7.1 Try   later\n"
                       "limit_exempt_networks = 127.0.0.0/8, [::1]/128 # not a comment\n";
    struct config *cfg = NULL;
    char *msgs;
    assert_int_equal(parse_text(text, &cfg, &msgs), 0);
    assert_string_equal(msgs, "");
    assert_string_equal(cfg->limits, "per_ip  client_address  recipients 200/1m stress 40/1m\n"
                                     "per_user sasl_username recipients 2000/1d action 450 4.7.1 "
                                     "Daily quota reached");
    /* Single-line settings join continuations with a space, as Postfix does. */
    assert_string_equal(cfg->default_action, "450 4.7.1 Try   later");
    assert_string_equal(cfg->limit_exempt_networks, "127.0.0.0/8, [::1]/128 # not a comment");
    assert_string_equal(config_source_name(cfg), "t.cf");
    assert_int_equal(config_setting_line(cfg, "limits"), 2);
    assert_int_equal(config_value_line(cfg, "limits", 0), 3);
    assert_int_equal(config_value_line(cfg, "limits", 1), 6);
    assert_int_equal(config_value_line(cfg, "limits", 2), 0);
    assert_int_equal(config_value_line(cfg, "default_action", 0), 7);
    assert_int_equal(config_value_line(cfg, "listen", 0), 0);
    assert_int_equal(config_value_line(cfg, "nope", 0), -ENOENT);
    assert_int_equal(config_setting_line(cfg, "default_action"), 7);
    assert_int_equal(config_setting_line(cfg, "listen"), 0);
    free(msgs);
    config_free(cfg);
}

/* CRLF files (edited on another system) read exactly like LF files; a lone CR does not. */
static void test_config_crlf_reads_like_lf(void **state)
{
    (void)state;
    struct config *a = NULL, *b = NULL;
    char *msgs;
    assert_int_equal(parse_text("limits =\r\n  r1 x\r\n  r2 y\r\nmonitor = no\r\n", &a, NULL), 0);
    assert_int_equal(parse_text("limits =\n  r1 x\n  r2 y\nmonitor = no\n", &b, NULL), 0);
    assert_true(config_equal(a, b));
    assert_string_equal(a->limits, "r1 x\nr2 y");
    config_free(a);
    config_free(b);
    assert_int_equal(parse_text("monitor = no\rlog_level = debug\n", &a, &msgs), -EINVAL);
    assert_string_equal(msgs, "t.cf:1: control character in line (0x0d)\n");
    free(msgs);
}

static void test_config_duplicate_later_wins_with_warning(void **state)
{
    (void)state;
    struct config *cfg = NULL;
    struct config_errors errs = {0};
    const char *text = "max_connections = 10\nmonitor = no\nmax_connections = 20\n"
                       "max_connections = 30\n";
    assert_int_equal(config_parse_buffer("d.cf", text, strlen(text), &cfg, &errs), 0);
    assert_int_equal(cfg->max_connections, 30);
    assert_int_equal(config_setting_line(cfg, "max_connections"), 4);
    assert_int_equal(errs.n, 2);
    assert_int_equal(errs.n_warnings, 2);
    assert_string_equal(errs.msg[0],
                        "d.cf:3: warning: max_connections redefined (first at line 1)");
    assert_string_equal(errs.msg[1],
                        "d.cf:4: warning: max_connections redefined (first at line 1)");
    config_errors_clear(&errs);
    assert_int_equal(errs.n, 0);
    config_free(cfg);
    /* Without a place for messages the result is the same. */
    assert_int_equal(config_parse_buffer("d.cf", text, strlen(text), &cfg, NULL), 0);
    config_free(cfg);
}

static void test_config_unknown_names_are_errors(void **state)
{
    (void)state;
    struct config *cfg = NULL;
    char *msgs;
    assert_int_equal(
        parse_text("smtpd_timeout = 10\nmax_conections = 3\nLISTEN = x\n", &cfg, &msgs), -EINVAL);
    assert_string_equal(msgs, "t.cf:1: unknown setting \"smtpd_timeout\"\n"
                              "t.cf:2: unknown setting \"max_conections\" (did you mean "
                              "max_connections?)\n"
                              "t.cf:3: unknown setting \"LISTEN\" (did you mean listen?)\n");
    assert_null(cfg);
    free(msgs);
}

static void test_config_long_line_and_nul_are_errors(void **state)
{
    (void)state;
    size_t n = 70000;
    char *text = malloc(n + 64);
    assert_non_null(text);
    strcpy(text, "limits = ");
    memset(text + 9, 'a', n);
    strcpy(text + 9 + n, "\n  cont\nmonitor = no\n");
    struct config *cfg = NULL;
    struct config_errors errs = {0};
    assert_int_equal(config_parse_buffer("l.cf", text, strlen(text), &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msg[0], "l.cf:1: line longer than 65536 bytes");
    config_errors_clear(&errs);
    free(text);

    static const char nul[] = "monitor = n\0o\nlog_level = debug\n";
    assert_int_equal(config_parse_buffer("n.cf", nul, sizeof(nul) - 1, &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msg[0], "n.cf:1: NUL byte in line");
    config_errors_clear(&errs);

    /* A value over 1 MiB built from many short continuation lines. */
    size_t lines = 20000;
    text = malloc(lines * 64 + 32);
    assert_non_null(text);
    char *p = text + sprintf(text, "limits =\n");
    for (size_t i = 0; i < lines; i++)
        p += sprintf(p, "    r%zu client_address recipients 100/1m stress 10/1m xx\n", i);
    assert_int_equal(config_parse_buffer("v.cf", text, (size_t)(p - text), &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 1);
    assert_string_equal(errs.msg[0], "v.cf:1: value of limits longer than 1048576 bytes");
    config_errors_clear(&errs);
    free(text);
}

static void test_config_message_count_is_capped(void **state)
{
    (void)state;
    size_t n = 500;
    char *text = malloc(n * 8 + 1), *p = text;
    assert_non_null(text);
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "bogus\n");
    struct config *cfg = NULL;
    struct config_errors errs = {0};
    assert_int_equal(config_parse_buffer("m.cf", text, (size_t)(p - text), &cfg, &errs), -EINVAL);
    assert_int_equal(errs.n, 101);
    assert_string_equal(errs.msg[100], "m.cf:0: 400 more messages not shown");
    config_errors_clear(&errs);
    free(text);
}

struct url_case {
    const char *url;
    int rc;
    enum config_store_kind kind;
    const char *host, *path, *password;
    int port, db;
};

static const struct url_case url_cases[] = {
    {"memory", 0, CONFIG_STORE_MEMORY, "", "", "", 0, 0},
    {"redis://127.0.0.1:6379", 0, CONFIG_STORE_REDIS_TCP, "127.0.0.1", "", "", 6379, 0},
    {"redis://localhost", 0, CONFIG_STORE_REDIS_TCP, "localhost", "", "", 6379, 0},
    {"redis://localhost/", 0, CONFIG_STORE_REDIS_TCP, "localhost", "", "", 6379, 0},
    {"redis://r1:7000/15", 0, CONFIG_STORE_REDIS_TCP, "r1", "", "", 7000, 15},
    {"redis://:s3cret@r1:7000/2", 0, CONFIG_STORE_REDIS_TCP, "r1", "", "s3cret", 7000, 2},
    {"redis://:p@ss@r1:7000", 0, CONFIG_STORE_REDIS_TCP, "r1", "", "p@ss", 7000, 0},
    {"redis://:a%2Fb%40c@r1:1", 0, CONFIG_STORE_REDIS_TCP, "r1", "", "a/b@c", 1, 0},
    {"redis://[::1]:6380/1", 0, CONFIG_STORE_REDIS_TCP, "::1", "", "", 6380, 1},
    {"redis://[::1]", 0, CONFIG_STORE_REDIS_TCP, "::1", "", "", 6379, 0},
    {"redis+unix:///run/redis.sock", 0, CONFIG_STORE_REDIS_UNIX, "", "/run/redis.sock", "", 0, 0},
    {"redis+unix:///run/redis.sock?db=3", 0, CONFIG_STORE_REDIS_UNIX, "", "/run/redis.sock", "", 0,
     3},
    {"redis+unix:///r.sock?db=3&password=x%20y", 0, CONFIG_STORE_REDIS_UNIX, "", "/r.sock", "x y",
     0, 3},
    {"redis://", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://:6379", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://h:0", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://h:65536", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://h:x", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://h:1/x", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://h:1/99999999999", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://h:1?db=1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://[::1:6379", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://[::1]6379", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://:bad%zz@h:1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://:trunc%4@h:1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis://user:pw@h:1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis+unix://run/redis.sock", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis+unix:///r.sock?db=", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis+unix:///r.sock?timeout=1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis+unix:///a/very/long/path/that/does/not/fit/in/sun_path/because/it/is/longer/than/"
     "one/hundred/and/seven/bytes/really.sock",
     -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"rediss://h:1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-cluster://", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-cluster://127.0.0.1:7000/0", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-cluster://node1:7000", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-cluster://127.0.0.1", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:26379", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:26379/", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel:///mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1/mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://sentinel1:26379/mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:0/mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:1,/mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:1,,127.0.0.2:1/mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://[::1]26379/mymaster", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:1/m/x", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://127.0.0.1:1/m/1/2", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://u:p@127.0.0.1:1/m", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"redis-sentinel://1.1.1.1:1,1.1.1.1:2,1.1.1.1:3,1.1.1.1:4,1.1.1.1:5,1.1.1.1:6,1.1.1.1:7,"
     "1.1.1.1:8,1.1.1.1:9/m",
     -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"Memory", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
    {"", -EINVAL, 0, NULL, NULL, NULL, 0, 0},
};

static void test_config_store_url_parser(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(url_cases) / sizeof(url_cases[0]); i++) {
        const struct url_case *uc = &url_cases[i];
        struct config_store_url u;
        int rc = config_parse_store_url(uc->url, &u);
        if (rc != uc->rc)
            fail_msg("case %zu (%s): rc %d, want %d (%s)", i, uc->url, rc, uc->rc,
                     u.error ? u.error : "");
        if (rc < 0) {
            assert_non_null(u.error);
            continue;
        }
        assert_int_equal(u.kind, uc->kind);
        assert_string_equal(u.host, uc->host);
        assert_string_equal(u.path, uc->path);
        assert_string_equal(u.password, uc->password);
        assert_int_equal(u.port, uc->port);
        assert_int_equal(u.db, uc->db);
    }
}

/* redis-sentinel:// URLs: the sentinels, the master's name, the data nodes' password and
 * database. */
static void test_config_store_url_sentinel(void **state)
{
    (void)state;
    struct config_store_url u;
    assert_int_equal(config_parse_store_url("redis-sentinel://127.0.0.1:26379/mymaster", &u), 0);
    assert_int_equal(u.kind, CONFIG_STORE_REDIS_SENTINEL);
    assert_int_equal(u.nseeds, 1);
    assert_string_equal(u.seeds[0].host, "127.0.0.1");
    assert_int_equal(u.seeds[0].port, 26379);
    assert_string_equal(u.master_name, "mymaster");
    assert_string_equal(u.password, "");
    assert_string_equal(u.host, "");
    assert_int_equal(u.db, 0);

    assert_int_equal(config_parse_store_url("redis-sentinel://:p%40w@10.0.0.1:26379,[::1]:26380,"
                                            "10.0.0.3:5000/cache-1/7",
                                            &u),
                     0);
    assert_int_equal(u.nseeds, 3);
    assert_string_equal(u.seeds[1].host, "::1");
    assert_int_equal(u.seeds[1].port, 26380);
    assert_string_equal(u.seeds[2].host, "10.0.0.3");
    assert_int_equal(u.seeds[2].port, 5000);
    assert_string_equal(u.master_name, "cache-1");
    assert_string_equal(u.password, "p@w");
    assert_int_equal(u.db, 7);

    assert_int_equal(config_parse_store_url("redis-sentinel://127.0.0.1:1/m/", &u), 0);
    assert_int_equal(u.db, 0);

    /* Names are refused with a reason that says why. */
    assert_int_equal(config_parse_store_url("redis-sentinel://s1:26379/m", &u), -EINVAL);
    assert_non_null(strstr(u.error, "IP address"));
}

/* redis-cluster:// URLs: seed nodes and the password, no database. */
static void test_config_store_url_cluster(void **state)
{
    (void)state;
    struct config_store_url u;
    assert_int_equal(config_parse_store_url("redis-cluster://127.0.0.1:7000", &u), 0);
    assert_int_equal(u.kind, CONFIG_STORE_REDIS_CLUSTER);
    assert_int_equal(u.nseeds, 1);
    assert_string_equal(u.seeds[0].host, "127.0.0.1");
    assert_int_equal(u.seeds[0].port, 7000);
    assert_int_equal(config_parse_store_url("redis-cluster://:pw@10.0.0.1:7000,[::1]:7001/", &u),
                     0);
    assert_int_equal(u.nseeds, 2);
    assert_string_equal(u.seeds[1].host, "::1");
    assert_string_equal(u.password, "pw");
    assert_int_equal(config_parse_store_url("redis-cluster://10.0.0.1:7000/3", &u), -EINVAL);
    assert_non_null(strstr(u.error, "no database"));
}

static void test_config_time_and_size_parsers(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(config_parse_time_ms("100ms", &v), 0);
    assert_int_equal(v, 100);
    assert_int_equal(config_parse_time_ms("7d", &v), 0);
    assert_int_equal(v, 7LL * 86400000);
    assert_int_equal(config_parse_time_ms("3", &v), 0);
    assert_int_equal(v, 3000);
    assert_int_equal(config_parse_time_ms("3 s", &v), -EINVAL);
    assert_int_equal(config_parse_time_ms("", &v), -EINVAL);
    assert_int_equal(config_parse_size("500M", &v), 0);
    assert_int_equal(v, 500LL * 1024 * 1024);
    assert_int_equal(config_parse_size("10", &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(config_parse_size("9999999999999G", &v), -EINVAL);
    assert_int_equal(config_parse_size("-1", &v), -EINVAL);
}

/* Print then parse gives the same config: all settings, and -n. */
static void roundtrip(const struct config *cfg)
{
    for (int nd = 0; nd < 2; nd++) {
        char *text = print_to_string(cfg, nd, NULL);
        struct config *again = NULL;
        char *msgs;
        if (parse_text(text, &again, &msgs) != 0)
            fail_msg("printed config does not parse:\n%s\n%s", text, msgs);
        assert_string_equal(msgs, "");
        assert_true(config_equal(cfg, again));
        /* And printing is stable. */
        char *text2 = print_to_string(again, nd, NULL);
        assert_string_equal(text, text2);
        free(text);
        free(text2);
        free(msgs);
        config_free(again);
    }
}

static void test_config_print_roundtrip(void **state)
{
    (void)state;
    static const char *const files[] = {DATA "good-all.cf", DATA "good-limits.cf",
                                        SOURCE_ROOT "postfix-snippets/postsurge.cf"};
    struct config *def = config_new_defaults();
    assert_non_null(def);
    roundtrip(def);
    char *all = print_to_string(def, false, NULL);
    char *nondef = print_to_string(def, true, NULL);
    assert_string_equal(nondef, "");
    assert_non_null(strstr(all, "\nstress_main_cf = smtpd_client_connection_count_limit=10 "
                                "smtpd_client_connection_rate_limit=30 "));
    assert_non_null(strstr(all, "\nlimits =\n"));
    free(all);
    free(nondef);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        size_t len;
        char *text = read_all(files[i], &len);
        assert_non_null(text);
        struct config *cfg = NULL;
        struct config_errors errs = {0};
        int rc = config_parse_buffer(files[i], text, len, &cfg, &errs);
        if (rc != 0 || errs.n)
            fail_msg("%s: rc %d, %s", files[i], rc, errs.n ? errs.msg[0] : "");
        roundtrip(cfg);
        assert_false(config_equal(cfg, def) && i < 2);
        config_free(cfg);
        free(text);
    }
    config_free(def);
}

/* good-all.cf read back field by field against values worked out by hand from the file
 * (K = 1024 bytes, M = 1024 K, m = 60 s, h = 3600 s, d = 86400 s; modes in octal; the
 * continuation lines of a list setting (listen, limits, stress_main_cf: "separated by
 * blanks, commas or lines") kept as lines, their indentation dropped), where the round
 * trip above only shows that print and parse agree with each other. */
static void test_config_good_all_values_by_hand(void **state)
{
    (void)state;
    size_t len;
    char *text = read_all(DATA "good-all.cf", &len);
    assert_non_null(text);
    struct config *c = NULL;
    struct config_errors errs = {0};
    assert_int_equal(config_parse_buffer("good-all.cf", text, len, &c, &errs), 0);
    assert_int_equal(errs.n, 0);
    assert_string_equal(c->listen, "inet:[::1]:2525, inet:0.0.0.0:10040\n"
                                   "unix:/var/spool/postfix/private/postsurge");
    assert_int_equal(c->listen_unix_mode, 0660);
    assert_int_equal(c->listen_unix_mode, 432);
    assert_int_equal(c->max_connections, 20000);
    assert_int_equal(c->idle_timeout, 3600000);
    assert_int_equal(c->max_line_length, 32768);
    assert_int_equal(c->max_attributes, 512);
    assert_int_equal(c->max_request_size, 1048576);
    assert_int_equal(c->max_output_buffer, 262144);
    assert_int_equal(c->log_repeat_interval, 300000);
    assert_string_equal(c->syslog_facility, "local4");
    assert_string_equal(c->limits,
                        "per_ip      client_address       recipients  200/1m   stress 40/1m\n"
                        "per_net     client_address/24/64 connections 300/1m\n"
                        "per_user    sasl_username        recipients  2000/1d  action 450 "
                        "4.7.1 Daily quota reached\n"
                        "per_sender  sender               messages    500/1h\n"
                        "big_sender  sasl_username        bytes       500M/1d");
    assert_string_equal(c->limit_exempt_networks, "127.0.0.0/8 [::1]/128, 192.0.2.0/24");
    assert_true(c->limit_dry_run);
    assert_string_equal(c->limit_action, "421 4.7.0 Slow down");
    assert_int_equal(c->redis_timeout, 250);
    assert_int_equal(c->redis_reconnect_max, 30000);
    assert_string_equal(c->maillog_file, "");
    assert_false(c->monitor);
    assert_int_equal(c->monitor_interval, 500);
    assert_int_equal(c->stress_enter_threshold, 95);
    assert_int_equal(c->stress_enter_delay, 10000);
    assert_int_equal(c->stress_exit_threshold, 50);
    assert_int_equal(c->stress_exit_delay, 300000);
    assert_int_equal(c->stress_min_interval, 120000);
    assert_string_equal(c->stress_main_cf,
                        "smtpd_client_connection_count_limit=5\npostscreen_pre_queue_limit=50");
    assert_string_equal(c->stress_master_cf,
                        "smtpd/pass/stress=yes 127.0.0.1:2525/inet/stress=yes");
    assert_int_equal(c->stress_cluster_quorum, 50);
    assert_int_equal(c->command_timeout, 60000);
    assert_int_equal(c->node_status_ttl, 15000);
    assert_int_equal(c->event_log_max, 500);
    assert_int_equal(c->attack_unknown_user_limit, 5);
    assert_int_equal(c->attack_error_limit, 0);
    assert_int_equal(c->attack_window, 1800000);
    assert_int_equal(c->attack_flag_time, 21600000);
    assert_string_equal(c->http_listen, "");
    assert_int_equal(c->http_max_connections, 8);
    assert_true(c->report_anomaly_sigma == 3.5);
    assert_int_equal(c->report_baseline_window, 1209600000);
    assert_string_equal(c->report_quiet_windows, "00:00-00:10 12:00-12:10");
    config_free(c);
    free(text);
}

static void test_config_print_non_default_shows_explicit(void **state)
{
    (void)state;
    struct config *cfg = NULL;
    /* monitor = yes is the default but explicit, so -n shows it, as postconf -n does. */
    assert_int_equal(
        parse_text("monitor = yes\nlimits =\n  a 1\n  b 2\nlog_level=debug\n", &cfg, NULL), 0);
    char *out = print_to_string(cfg, true, NULL);
    /* Sorted by name, as postconf prints. */
    assert_string_equal(out, "limits = a 1\n    b 2\nlog_level = debug\nmonitor = yes\n");
    free(out);
    FILE *devnull = fopen("/dev/null", "w");
    assert_int_equal(config_print_one(cfg, devnull, "nope"), -ENOENT);
    fclose(devnull);
    config_free(cfg);
}

/* check-config's parse: a file with errors still gives a config for the further checks,
 * with the good settings taken and the bad ones at their defaults. */
static void test_config_parse_all_keeps_good_settings(void **state)
{
    (void)state;
    static const char text[] = "bogus = 1\nmax_connections = lots\nidle_timeout = 5m\n"
                               "limits =\n    r1 client_address recipients 10/1m\n";
    struct config_errors errs = {0};
    struct config *cfg = NULL;
    assert_int_equal(config_parse_buffer_all("t.cf", text, strlen(text), &cfg, &errs), -EINVAL);
    assert_non_null(cfg);
    assert_int_equal(errs.n, 2);
    assert_int_equal(cfg->idle_timeout, 300000);
    assert_non_null(strstr(cfg->limits, "r1 client_address"));
    struct config *def = config_new_defaults();
    assert_non_null(def);
    assert_int_equal(cfg->max_connections, def->max_connections);
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(config_print_value(cfg, f, "idle_timeout"), 0);
    assert_int_equal(config_print_value(cfg, f, "nope"), -ENOENT);
    rewind(f);
    char buf[64] = "";
    assert_non_null(fgets(buf, sizeof(buf), f));
    assert_string_equal(buf, "5m\n");
    fclose(f);
    config_free(def);
    config_free(cfg);
    config_errors_clear(&errs);
    /* A good file: 0, as config_parse_buffer. */
    assert_int_equal(config_parse_buffer_all("t.cf", "idle_timeout = 1m\n", 17, &cfg, NULL), 0);
    config_free(cfg);
}

/* The shipped example is valid as it is, serves out of the box, and names every setting. */
static void test_config_example_file_is_complete(void **state)
{
    (void)state;
    const char *path = SOURCE_ROOT "postfix-snippets/postsurge.cf";
    struct config *cfg = NULL;
    struct config_errors errs = {0};
    int rc = config_load_file(path, &cfg, &errs);
    if (rc != 0 || errs.n)
        fail_msg("%s: rc %d %s", path, rc, errs.n ? errs.msg[0] : "");
    assert_string_equal(cfg->listen, "inet:127.0.0.1:10040");
    assert_string_equal(cfg->store, "memory");
    assert_string_equal(cfg->limits, "");
    size_t len;
    char *text = read_all(path, &len);
    char *ref = NULL;
    size_t rlen = 0;
    FILE *f = open_memstream(&ref, &rlen);
    assert_int_equal(config_print(cfg, f, false), 0);
    fclose(f);
    /* Each printed line's setting name must appear at the start of a line of the example,
     * set or commented out ("#name = default"). */
    for (char *line = ref; *line;) {
        char *nl = strchr(line, '\n');
        size_t n = strcspn(line, " ");
        if (line[0] != ' ') {
            char want1[80], want2[80];
            snprintf(want1, sizeof(want1), "\n%.*s =", (int)n, line);
            snprintf(want2, sizeof(want2), "\n#%.*s =", (int)n, line);
            if (!strstr(text, want1) && !strstr(text, want2))
                fail_msg("postsurge.cf does not mention %.*s", (int)n, line);
        }
        line = nl ? nl + 1 : line + strlen(line);
    }
    free(ref);
    free(text);
    config_errors_clear(&errs);
    config_free(cfg);

    assert_int_equal(config_load_file(DATA "does-not-exist.cf", &cfg, &errs), -ENOENT);
    assert_int_equal(errs.n, 1);
    assert_non_null(strstr(errs.msg[0], "does-not-exist.cf:0: cannot open"));
    config_errors_clear(&errs);
}

/* README's config section is exactly what config_write_reference prints from the table. */
static void test_config_readme_reference_matches_table(void **state)
{
    (void)state;
    char *readme = read_all(SOURCE_ROOT "README.md", NULL);
    assert_non_null(readme);
    const char *begin = strstr(readme, "<!-- begin generated: config_write_reference -->\n");
    const char *end = strstr(readme, "<!-- end generated: config_write_reference -->");
    if (!begin || !end)
        fail_msg("README.md lacks the generated reference markers");
    begin += strlen("<!-- begin generated: config_write_reference -->\n");
    char *ref = NULL;
    size_t rlen = 0;
    FILE *f = open_memstream(&ref, &rlen);
    assert_int_equal(config_write_reference(f), 0);
    fclose(f);
    if ((size_t)(end - begin) != rlen || memcmp(begin, ref, rlen) != 0)
        fail_msg("README.md config reference is stale; regenerate it from "
                 "config_write_reference (see the README's config section)");
    free(ref);
    free(readme);
}

/* Fail the Nth allocation for every N until a parse succeeds: each failure must surface
 * as -ENOMEM (or NULL) and leak nothing (ASan and valgrind runs check the leaks). */
static long alloc_countdown = -1;

static void *failing_malloc(size_t n)
{
    if (alloc_countdown == 0)
        return NULL;
    if (alloc_countdown > 0)
        alloc_countdown--;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n)
{
    if (alloc_countdown == 0)
        return NULL;
    if (alloc_countdown > 0)
        alloc_countdown--;
    return realloc(p, n);
}

static void test_config_every_allocation_failure_is_enomem(void **state)
{
    (void)state;
    size_t len;
    char *text = read_all(DATA "good-limits.cf", &len);
    assert_non_null(text);
    static const char dup_text[] = "monitor = yes\nmonitor = no\nbogus = 1\n";
    config_set_alloc_funcs(failing_malloc, failing_realloc, free);
    for (int which = 0; which < 4; which++) {
        bool done = false;
        for (long n = 0; !done && n < 100000; n++) {
            struct config *cfg = NULL;
            struct config_errors errs = {0};
            int rc;
            alloc_countdown = n;
            if (which == 0) {
                rc = config_parse_buffer("g.cf", text, len, &cfg, &errs);
            } else if (which == 1) {
                rc = config_parse_buffer("d.cf", dup_text, sizeof(dup_text) - 1, &cfg, &errs);
                if (rc == -EINVAL)
                    rc = 0;
            } else if (which == 2) {
                cfg = config_new_defaults();
                rc = cfg ? 0 : -ENOMEM;
            } else {
                struct config *d = config_new_defaults();
                rc = -ENOMEM;
                if (d) {
                    FILE *f = fopen("/dev/null", "w");
                    rc = config_print(d, f, true);
                    fclose(f);
                    config_free(d);
                }
            }
            if (alloc_countdown > 0 || rc == 0) {
                assert_int_equal(rc, 0);
                done = true;
            } else {
                assert_int_equal(rc, -ENOMEM);
                assert_null(cfg);
            }
            alloc_countdown = -1;
            config_errors_clear(&errs);
            config_free(cfg);
        }
        assert_true(done);
    }
    config_set_alloc_funcs(NULL, NULL, NULL);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults_match_header),
        cmocka_unit_test(test_config_value_table),
        cmocka_unit_test(test_config_error_file_lists_every_problem),
        cmocka_unit_test(test_config_continuation_keeps_rule_lines),
        cmocka_unit_test(test_config_crlf_reads_like_lf),
        cmocka_unit_test(test_config_duplicate_later_wins_with_warning),
        cmocka_unit_test(test_config_unknown_names_are_errors),
        cmocka_unit_test(test_config_long_line_and_nul_are_errors),
        cmocka_unit_test(test_config_message_count_is_capped),
        cmocka_unit_test(test_config_store_url_parser),
        cmocka_unit_test(test_config_store_url_sentinel),
        cmocka_unit_test(test_config_store_url_cluster),
        cmocka_unit_test(test_config_time_and_size_parsers),
        cmocka_unit_test(test_config_print_roundtrip),
        cmocka_unit_test(test_config_good_all_values_by_hand),
        cmocka_unit_test(test_config_print_non_default_shows_explicit),
        cmocka_unit_test(test_config_parse_all_keeps_good_settings),
        cmocka_unit_test(test_config_example_file_is_complete),
        cmocka_unit_test(test_config_readme_reference_matches_table),
        cmocka_unit_test(test_config_every_allocation_failure_is_enomem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
