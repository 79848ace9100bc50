/* Unit tests of lib/queue.c: real `postqueue -j` records from a test Postfix 3.7 (see
 * test/data/queue/generate_real.py), malformed and over-long lines, chunking, the caps on
 * domains and reasons, qshape age buckets and the deferral reason taxonomy table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue.h"
#include "queue_senders.h"

static char *read_file(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/queue/%s", TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Feeds a whole file in chunks of the given size, then finishes. */
static struct queue_stats *load(const char *name, size_t chunk, const struct queue_limits *lim)
{
    size_t len;
    char *buf = read_file(name, &len);
    struct queue_stats *qs = queue_stats_new(lim);
    assert_non_null(qs);
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        assert_int_equal(queue_stats_feed(qs, buf + off, n), 0);
    }
    assert_int_equal(queue_stats_finish(qs), 0);
    free(buf);
    return qs;
}

static void test_queue_real_records(void **state)
{
    (void)state;
    /* The instance's clock: records arrived at 1795407720/1. */
    struct queue_limits lim = {.now = 1795407720 + 3600};
    static const size_t chunks[] = {1, 7, 100, 1 << 20};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        struct queue_stats *qs = load("real-postqueue.jsonl", chunks[c], &lim);
        uint64_t rec, bad, longl;
        queue_stats_counts(qs, &rec, &bad, &longl);
        assert_int_equal(rec, 7);
        assert_int_equal(bad, 0);
        assert_int_equal(longl, 0);

        const struct queue_totals *d = queue_stats_totals(qs, QUEUE_DEFERRED);
        assert_int_equal(d->messages, 6);
        assert_int_equal(d->recipients, 8);
        assert_int_equal(d->bytes, 426 + 438 + 444 + 432 + 448 + 444);
        assert_int_equal(d->oldest_arrival, 1795407720);
        const struct queue_totals *h = queue_stats_totals(qs, QUEUE_HOLD);
        assert_int_equal(h->messages, 1);
        assert_int_equal(h->recipients, 1);
        assert_int_equal(queue_stats_totals(qs, QUEUE_ACTIVE)->messages, 0);
        assert_int_equal(queue_stats_totals(qs, QUEUE_ACTIVE)->oldest_arrival, 0);

        const struct queue_domain **doms;
        size_t n;
        assert_int_equal(queue_stats_domains(qs, &doms, &n), 0);
        assert_int_equal(n, 3);
        assert_string_equal(doms[0]->name, "defer.test"); /* d3@DEFER.test folded in */
        assert_int_equal(doms[0]->recipients, 5);
        assert_int_equal(doms[0]->messages, 4);
        assert_int_equal(doms[0]->queue_recipients[QUEUE_DEFERRED], 4);
        assert_int_equal(doms[0]->queue_recipients[QUEUE_HOLD], 1);
        /* Ties sort by name. */
        assert_string_equal(doms[1]->name, "greylist.test");
        assert_string_equal(doms[2]->name, "throttle.test");
        /* 60 minutes old: the "< 80" bucket. */
        assert_int_equal(doms[0]->age_buckets[4], 5);
        free(doms);

        const struct queue_domain *dd = queue_stats_domain(qs, "DEFER.TEST");
        assert_non_null(dd);
        const struct queue_reason *top[4];
        assert_int_equal(queue_domain_top_reasons(dd, top, 4), 1);
        assert_int_equal(top[0]->cls, QUEUE_REASON_CONN_REFUSED);
        assert_string_equal(top[0]->dsn, "4.4.1");
        assert_int_equal(top[0]->count, 5);
        assert_string_equal(top[0]->sample,
                            "connect to 127.0.0.1[127.0.0.1]:9: Connection refused");

        const struct queue_domain *td = queue_stats_domain(qs, "throttle.test");
        assert_int_equal(queue_domain_top_reasons(td, top, 4), 1);
        assert_int_equal(top[0]->cls, QUEUE_REASON_THROTTLE);
        assert_string_equal(top[0]->dsn, "4.0.0");

        assert_int_equal(queue_stats_class_count(qs, QUEUE_REASON_CONN_REFUSED), 5);
        assert_int_equal(queue_stats_class_count(qs, QUEUE_REASON_THROTTLE), 2);
        assert_int_equal(queue_stats_class_count(qs, QUEUE_REASON_OTHER), 2);
        const struct queue_reason *dsns;
        size_t nd = queue_stats_dsns(qs, &dsns);
        assert_int_equal(nd, 3);
        assert_string_equal(dsns[0].dsn, "4.4.1");
        assert_int_equal(dsns[0].count, 5);
        assert_null(queue_stats_domain(qs, "sink.test"));
        queue_stats_free(qs);
    }
}

static void test_queue_skips_malformed_lines(void **state)
{
    (void)state;
    struct queue_limits lim = {.now = 1700000300};
    static const size_t chunks[] = {1, 3, 64, 1 << 20};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        struct queue_stats *qs = load("malformed.jsonl", chunks[c], &lim);
        uint64_t rec, bad, longl;
        queue_stats_counts(qs, &rec, &bad, &longl);
        assert_int_equal(rec, 4); /* the last one has no newline: counted by finish() */
        assert_int_equal(bad, 11);
        assert_int_equal(longl, 0);
        assert_int_equal(queue_stats_totals(qs, QUEUE_ACTIVE)->messages, 1);
        assert_int_equal(queue_stats_totals(qs, QUEUE_HOLD)->recipients, 2);
        assert_int_equal(queue_stats_totals(qs, QUEUE_HOLD)->bytes, 250);
        assert_int_equal(queue_stats_totals(qs, QUEUE_INCOMING)->messages, 1);
        assert_int_equal(queue_stats_totals(qs, QUEUE_INCOMING)->recipients, 0);
        assert_int_equal(queue_stats_totals(qs, QUEUE_MAILDROP)->messages, 1);
        const struct queue_domain *one = queue_stats_domain(qs, "one.test");
        assert_non_null(one);
        assert_int_equal(one->recipients, 2);
        assert_int_equal(one->oldest_arrival, 1700000000);
        const struct queue_domain *two = queue_stats_domain(qs, "two.test");
        assert_non_null(two);
        assert_int_equal(two->reasons_total, 1);
        assert_non_null(queue_stats_domain(qs, QUEUE_LOCAL_DOMAIN));
        queue_stats_free(qs);
    }
}

static void test_queue_add_line_results(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        int rc;
    } cases[] = {
        {"", 0},
        {"  \t ", 0},
        {"{}", -EINVAL},
        {"null", -EINVAL},
        {"{\"queue_name\":\"hold\",\"arrival_time\":1,\"recipients\":[]}", 0},
        {"{\"queue_name\":\"hold\",\"arrival_time\":-1,\"recipients\":[]}", -EINVAL},
        {"{\"queue_name\":\"hold\",\"arrival_time\":1,\"recipients\":[7]}", -EINVAL},
        {"{\"queue_name\":\"HOLD\",\"arrival_time\":1,\"recipients\":[]}", -EINVAL},
    };
    struct queue_stats *qs = queue_stats_new(NULL);
    assert_non_null(qs);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(queue_stats_add_line(qs, cases[i].line, strlen(cases[i].line)),
                         cases[i].rc);
    uint64_t rec, bad;
    queue_stats_counts(qs, &rec, &bad, NULL);
    assert_int_equal(rec, 1);
    assert_int_equal(bad, 5);
    queue_stats_free(qs);
}

/* Postfix 3.11 records (snclient's real queue, every recipient with "orig_address": ""),
 * a null delay_reason (absent, not malformed), and 3.11's bounce_reason and other_reason
 * read as the recipient's reason when it has no delay_reason. */
static void test_queue_postfix_311_fields(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "{\"queue_name\": \"active\", \"queue_id\": \"AAAAAAAAAAA\", \"arrival_time\": "
        "1785318106, \"message_size\": 306, \"forced_expire\": false, \"sender\": "
        "\"sender@example.invalid\", \"recipients\": [{\"orig_address\": \"\", \"address\": "
        "\"active@example.invalid\"}]}",
        "{\"queue_name\": \"deferred\", \"queue_id\": \"BBBBBBBBBBB\", \"arrival_time\": "
        "1785318106, \"message_size\": 2552, \"forced_expire\": false, \"sender\": "
        "\"MAILER-DAEMON\", \"recipients\": [{\"orig_address\": \"\", \"address\": "
        "\"deferred@example.invalid\", \"delay_reason\": \"alias database unavailable\"}]}",
        "{\"queue_name\":\"deferred\",\"arrival_time\":1785318106,\"message_size\":1,"
        "\"recipients\":[{\"address\":\"a@null.test\",\"orig_address\":null,"
        "\"delay_reason\":null}]}",
        "{\"queue_name\":\"deferred\",\"arrival_time\":1785318106,\"message_size\":1,"
        "\"recipients\":[{\"address\":\"b@bounce.test\",\"orig_address\":\"alias@bounce.test\","
        "\"delay_reason\":null,\"bounce_reason\":\"host mx.bounce.test[192.0.2.1] said: 550 "
        "5.1.1 User unknown\"}]}",
        "{\"queue_name\":\"deferred\",\"arrival_time\":1785318106,\"message_size\":1,"
        "\"recipients\":[{\"address\":\"c@other.test\",\"other_reason\":\"connect to "
        "mx.other.test[192.0.2.2]:25: Connection refused\"}]}",
    };
    struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.now = 1785318200});
    assert_non_null(qs);
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        assert_int_equal(queue_stats_add_line(qs, lines[i], strlen(lines[i])), 0);
    uint64_t rec, bad;
    queue_stats_counts(qs, &rec, &bad, NULL);
    assert_int_equal(rec, 5);
    assert_int_equal(bad, 0);
    assert_int_equal(queue_stats_totals(qs, QUEUE_DEFERRED)->messages, 4);
    const struct queue_domain *d = queue_stats_domain(qs, "null.test");
    assert_non_null(d);
    assert_int_equal(d->reasons_total, 0);
    d = queue_stats_domain(qs, "bounce.test");
    assert_non_null(d);
    assert_int_equal(d->reasons_total, 1);
    assert_int_equal(d->reasons[0].cls, QUEUE_REASON_MAILBOX);
    assert_string_equal(d->reasons[0].dsn, "5.1.1");
    d = queue_stats_domain(qs, "other.test");
    assert_non_null(d);
    assert_int_equal(d->reasons[0].cls, QUEUE_REASON_CONN_REFUSED);
    /* A reason of another type is still malformed. */
    static const char bad_line[] = "{\"queue_name\":\"deferred\",\"arrival_time\":1,"
                                   "\"recipients\":[{\"address\":\"x@y\",\"bounce_reason\":7}]}";
    assert_int_equal(queue_stats_add_line(qs, bad_line, strlen(bad_line)), -EINVAL);
    queue_stats_free(qs);
}

static void test_queue_rejects_line_over_limit(void **state)
{
    (void)state;
    struct queue_limits lim = {.max_line = 200};
    char big[600];
    memset(big, 'x', sizeof(big));
    static const char good[] =
        "{\"queue_name\":\"active\",\"arrival_time\":5,\"recipients\":[{\"address\":\"a@b.c\"}]}\n";
    /* Split the long line over several feeds; the good line must survive after it. */
    static const size_t chunks[] = {1, 50, 600};
    for (size_t c = 0; c < 3; c++) {
        struct queue_stats *qs = queue_stats_new(&lim);
        assert_non_null(qs);
        for (size_t off = 0; off < sizeof(big); off += chunks[c])
            assert_int_equal(queue_stats_feed(qs, big + off, chunks[c]), 0);
        assert_int_equal(queue_stats_feed(qs, "\n", 1), 0);
        assert_int_equal(queue_stats_feed(qs, good, strlen(good)), 0);
        /* An unterminated over-long tail is dropped by finish() too. */
        assert_int_equal(queue_stats_feed(qs, big, sizeof(big)), 0);
        assert_int_equal(queue_stats_finish(qs), 0);
        uint64_t rec, bad, longl;
        queue_stats_counts(qs, &rec, &bad, &longl);
        assert_int_equal(rec, 1);
        assert_int_equal(bad, 0);
        assert_int_equal(longl, 2);
        queue_stats_free(qs);
    }
}

static void add_rcpt(struct queue_stats *qs, const char *addr, const char *reason)
{
    char line[512];
    if (reason)
        snprintf(line, sizeof(line),
                 "{\"queue_name\":\"deferred\",\"arrival_time\":100,\"message_size\":1,"
                 "\"recipients\":[{\"address\":\"%s\",\"delay_reason\":\"%s\"}]}",
                 addr, reason);
    else
        snprintf(line, sizeof(line),
                 "{\"queue_name\":\"active\",\"arrival_time\":100,\"message_size\":1,"
                 "\"recipients\":[{\"address\":\"%s\"}]}",
                 addr);
    assert_int_equal(queue_stats_add_line(qs, line, strlen(line)), 0);
}

static void test_queue_caps_domains_and_reasons(void **state)
{
    (void)state;
    struct queue_limits lim = {.max_domains = 2, .max_reasons = 2, .max_dsn = 2};
    struct queue_stats *qs = queue_stats_new(&lim);
    assert_non_null(qs);
    add_rcpt(qs, "a@one.test", "said: 450 4.2.0 greylisted");
    add_rcpt(qs, "a@one.test", "said: 550 5.7.1 blocked");
    add_rcpt(qs, "a@one.test", "said: 452 4.2.2 mailbox full");
    add_rcpt(qs, "a@one.test", "said: 451 4.3.0 local error");
    add_rcpt(qs, "b@two.test", NULL);
    add_rcpt(qs, "c@three.test", NULL);
    add_rcpt(qs, "d@four.test", NULL);
    add_rcpt(qs, "e@TWO.test", NULL);

    const struct queue_domain **doms;
    size_t n;
    assert_int_equal(queue_stats_domains(qs, &doms, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(doms[0]->name, "one.test");
    assert_int_equal(doms[0]->recipients, 4);
    assert_string_equal(doms[1]->name, QUEUE_OTHER_DOMAIN);
    assert_int_equal(doms[1]->recipients, 2);
    assert_string_equal(doms[2]->name, "two.test");
    assert_int_equal(doms[2]->recipients, 2);
    free(doms);

    const struct queue_domain *one = queue_stats_domain(qs, "one.test");
    assert_int_equal(one->n_reasons, 3); /* two distinct plus the overflow slot */
    const struct queue_reason *top[8];
    assert_int_equal(queue_domain_top_reasons(one, top, 8), 3);
    assert_int_equal(top[0]->count, 2);
    assert_int_equal(top[0]->cls, QUEUE_REASON_OTHER);
    assert_string_equal(top[0]->dsn, "");
    assert_int_equal(queue_domain_top_reasons(one, top, 1), 1);

    const struct queue_reason *dsns;
    assert_int_equal(queue_stats_dsns(qs, &dsns), 3);
    /* Feeding after a sorted read still finds the overflow slot. */
    add_rcpt(qs, "a@one.test", "said: 451 4.3.5 other error");
    assert_int_equal(queue_stats_dsns(qs, &dsns), 3);
    assert_int_equal(dsns[0].count, 3);
    assert_string_equal(dsns[0].dsn, "");
    queue_stats_free(qs);
}

static void test_queue_age_buckets(void **state)
{
    (void)state;
    static const struct {
        int64_t age;
        unsigned bucket;
    } cases[] = {{-10, 0},  {0, 0},    {299, 0},   {300, 1},   {599, 1},   {600, 2},
                 {4799, 4}, {4800, 5}, {76799, 8}, {76800, 9}, {999999, 9}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(queue_age_bucket(cases[i].age), cases[i].bucket);
    assert_int_equal(queue_age_bucket_limit(0), 5);
    assert_int_equal(queue_age_bucket_limit(8), 1280);
    assert_int_equal(queue_age_bucket_limit(9), 0);
}

static void test_queue_taxonomy(void **state)
{
    (void)state;
    size_t len;
    char *buf = read_file("taxonomy.tsv", &len);
    int rows = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || !line[0])
            continue;
        char *cls = line;
        char *dsn = strchr(cls, '\t');
        assert_non_null(dsn);
        *dsn++ = '\0';
        char *text = strchr(dsn, '\t');
        assert_non_null(text);
        *text++ = '\0';
        char got[QUEUE_DSN_SIZE];
        enum queue_reason_class c = queue_reason_classify(text, got);
        if (strcmp(queue_reason_class_str(c), cls) != 0 || strcmp(got, dsn) != 0)
            fail_msg("\"%s\": got %s %s, want %s %s", text, queue_reason_class_str(c), got, cls,
                     dsn);
        rows++;
    }
    assert_true(rows >= 30);
    free(buf);

    char got[QUEUE_DSN_SIZE];
    assert_int_equal(queue_reason_classify(NULL, got), QUEUE_REASON_OTHER);
    assert_string_equal(got, "");
    enum queue_name q;
    assert_int_equal(queue_name_parse("deferred", &q), 0);
    assert_int_equal(q, QUEUE_DEFERRED);
    assert_string_equal(queue_name_str(QUEUE_HOLD), "hold");
}

/* The queue by sender: the null sender (MAILER-DAEMON, as postqueue -j writes it; "" and
 * an absent sender alike) is a row of its own, sender domains are lowercased, and past
 * max_domains new senders count as "(other)". Records in the Postfix 3.11 shape of the
 * snclient sample in ../shared/real-logs. */
static void test_queue_senders(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "{\"queue_name\": \"deferred\", \"queue_id\": \"BBBBBBBBBBB\", \"arrival_time\": "
        "1785318106, \"message_size\": 2552, \"forced_expire\": false, \"sender\": "
        "\"MAILER-DAEMON\", \"recipients\": [{\"orig_address\": \"\", \"address\": "
        "\"deferred@example.invalid\", \"delay_reason\": \"alias database unavailable\"}]}",
        "{\"queue_name\": \"hold\", \"queue_id\": \"CCCCCCCCCCC\", \"arrival_time\": 1785258307, "
        "\"message_size\": 414, \"forced_expire\": false, \"sender\": \"MAILER-DAEMON\", "
        "\"recipients\": [{\"orig_address\": \"\", \"address\": "
        "\"postqueue-test@example.invalid\", \"delay_reason\": \"Host or domain name not "
        "found\"}]}",
        "{\"queue_name\": \"deferred\", \"queue_id\": \"D1\", \"arrival_time\": 1785318106, "
        "\"sender\": \"\", \"recipients\": [{\"address\": \"a@b.example\"}]}",
        "{\"queue_name\": \"deferred\", \"queue_id\": \"D2\", \"arrival_time\": 1785318106, "
        "\"recipients\": [{\"address\": \"a@b.example\"}]}",
        "{\"queue_name\": \"active\", \"queue_id\": \"A1\", \"arrival_time\": 1785318106, "
        "\"sender\": \"Sender@Example.INVALID\", \"recipients\": [{\"address\": \"a@b.example\"}]}",
        "{\"queue_name\": \"deferred\", \"queue_id\": \"A2\", \"arrival_time\": 1785318106, "
        "\"sender\": \"other@example.invalid\", \"recipients\": [{\"address\": \"a@b.example\"}]}",
        "{\"queue_name\": \"deferred\", \"queue_id\": \"A3\", \"arrival_time\": 1785318106, "
        "\"sender\": \"x@third.example\", \"recipients\": [{\"address\": \"a@b.example\"}]}",
    };
    struct queue_stats *qs = queue_stats_new(&(struct queue_limits){.max_domains = 2});
    assert_non_null(qs);
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        assert_int_equal(queue_stats_add_line(qs, lines[i], strlen(lines[i])), 0);
    const struct queue_sender **v;
    size_t n;
    assert_int_equal(queue_stats_senders(qs, &v, &n), 0);
    /* MAILER-DAEMON 4 (deferred 3, hold 1), example.invalid 2, (other) 1 (third.example
     * came after the two allowed rows). */
    assert_int_equal(n, 3);
    assert_string_equal(v[0]->domain, QUEUE_NULL_SENDER);
    assert_int_equal(v[0]->messages, 4);
    assert_int_equal(v[0]->queue_messages[QUEUE_DEFERRED], 3);
    assert_int_equal(v[0]->queue_messages[QUEUE_HOLD], 1);
    assert_string_equal(v[1]->domain, "example.invalid");
    assert_int_equal(v[1]->messages, 2);
    assert_int_equal(v[1]->queue_messages[QUEUE_ACTIVE], 1);
    assert_string_equal(v[2]->domain, QUEUE_OTHER_DOMAIN);
    assert_int_equal(v[2]->messages, 1);
    free(v);
    queue_stats_free(qs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_real_records),
        cmocka_unit_test(test_queue_skips_malformed_lines),
        cmocka_unit_test(test_queue_add_line_results),
        cmocka_unit_test(test_queue_postfix_311_fields),
        cmocka_unit_test(test_queue_rejects_line_over_limit),
        cmocka_unit_test(test_queue_caps_domains_and_reasons),
        cmocka_unit_test(test_queue_age_buckets),
        cmocka_unit_test(test_queue_taxonomy),
        cmocka_unit_test(test_queue_senders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
