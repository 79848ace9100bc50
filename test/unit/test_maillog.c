/* Unit tests of lib/maillog.c: real Postfix line formats (postfix-facts.md) parsed into
 * records field by field, unknown and damaged lines, and the line splitter over chunked
 * input with over-long lines. test/data/maillog/sample.log doubles as a fuzz seed. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "maillog.h"

static enum maillog_kind parse(const char *line, struct maillog_record *rec)
{
    return maillog_parse_line(line, strlen(line), rec);
}

static void test_maillog_header_fields(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Nov 23 03:33:29 mx postfix-test/smtpd[6826]: connect from "
                           "localhost[127.0.0.1]",
                           &r),
                     MAILLOG_CONNECT);
    assert_string_equal(r.timestamp, "Nov 23 03:33:29");
    assert_string_equal(r.host, "mx");
    assert_string_equal(r.syslog_name, "postfix-test");
    assert_string_equal(r.daemon, "smtpd");
    assert_int_equal(r.pid, 6826);
    assert_string_equal(r.client_name, "localhost");
    assert_string_equal(r.client_addr, "127.0.0.1");
    assert_int_equal(r.client_port, 0);

    /* Single-digit day padded with a space, a syslog_name with a slash, ISO time. */
    assert_int_equal(parse("Nov  3 03:33:29 mx postfix/submission/smtpd[1]: connect from "
                           "a.example[2001:db8::1]",
                           &r),
                     MAILLOG_CONNECT);
    assert_string_equal(r.syslog_name, "postfix/submission");
    assert_string_equal(r.daemon, "smtpd");
    assert_string_equal(r.client_addr, "2001:db8::1");
    assert_int_equal(parse("2024-11-23T03:33:29.123456+00:00 mx postfix/smtpd[77]: connect "
                           "from unknown[192.0.2.1]\r",
                           &r),
                     MAILLOG_CONNECT);
    assert_string_equal(r.timestamp, "2024-11-23T03:33:29.123456+00:00");
    assert_string_equal(r.client_name, "unknown");
    assert_string_equal(r.client_addr, "192.0.2.1");
}

static void test_maillog_process_limit(void **state)
{
    (void)state;
    static const struct {
        const char *line, *service, *endpoint;
        unsigned long limit;
    } cases[] = {
        {"Nov 23 03:33:30 mx postfix-test/master[8516]: warning: service \"smtpd\" "
         "(private/smtpd) has reached its process limit \"4\": new clients may experience "
         "noticeable delays",
         "smtpd", "private/smtpd", 4},
        {"Oct  3 20:39:27 spike postfix/master[28905]: warning: service \"smtp\" (25) has "
         "reached its process limit \"30\": new clients may experience noticeable delays",
         "smtp", "25", 30},
        {"Oct  3 20:39:27 spike postfix/master[28905]: warning: service \"127.0.0.1:2525\" "
         "(127.0.0.1:2525) has reached its process limit \"2\": new clients may experience "
         "noticeable delays",
         "127.0.0.1:2525", "127.0.0.1:2525", 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct maillog_record r;
        assert_int_equal(parse(cases[i].line, &r), MAILLOG_PROCESS_LIMIT);
        assert_string_equal(r.service, cases[i].service);
        assert_string_equal(r.endpoint, cases[i].endpoint);
        assert_int_equal(r.limit, cases[i].limit);
        assert_string_equal(r.daemon, "master");
    }
    /* The two follow-up warnings are not process-limit events. */
    struct maillog_record r;
    assert_int_equal(parse("Nov 23 03:33:30 mx postfix-test/master[8516]: warning: to avoid "
                           "this condition, increase the process count in master.cf or "
                           "reduce the service time per client",
                           &r),
                     MAILLOG_OTHER);
    /* The same text from another daemon is not master's warning. */
    assert_int_equal(parse("Nov 23 03:33:30 mx postfix/smtpd[1]: warning: service \"smtpd\" "
                           "(x) has reached its process limit \"4\": no",
                           &r),
                     MAILLOG_OTHER);
}

static void test_maillog_postscreen(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Nov 23 03:33:31 mx postfix-test/postscreen[7001]: entering "
                           "STRESS mode with 90 connections",
                           &r),
                     MAILLOG_POSTSCREEN_ENTER);
    assert_int_equal(r.count, 90);
    assert_int_equal(parse("Nov 23 03:33:35 mx postfix-test/postscreen[7001]: leaving STRESS "
                           "mode with 70 connections",
                           &r),
                     MAILLOG_POSTSCREEN_LEAVE);
    assert_int_equal(r.count, 70);
    assert_int_equal(parse("Nov 23 03:33:31 mx postfix-test/postscreen[7001]: NOQUEUE: "
                           "reject: CONNECT from [127.0.0.1]:41234: all server ports busy",
                           &r),
                     MAILLOG_PORTS_BUSY);
    assert_string_equal(r.client_addr, "127.0.0.1");
    assert_string_equal(r.client_name, "");
    assert_int_equal(r.client_port, 41234);
    assert_string_equal(r.queue_id, "");
    assert_int_equal(parse("Nov 23 03:33:31 mx postfix/postscreen[7001]: entering STRESS mode "
                           "with many connections",
                           &r),
                     MAILLOG_OTHER);
}

static void test_maillog_limit_exceeded(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        enum maillog_limit kind;
    } cases[] = {
        {"Connection rate", MAILLOG_LIMIT_CONNECTION_RATE},
        {"Connection concurrency", MAILLOG_LIMIT_CONNECTION_COUNT},
        {"Message delivery request rate", MAILLOG_LIMIT_MESSAGE_RATE},
        {"Recipient address rate", MAILLOG_LIMIT_RECIPIENT_RATE},
        {"New TLS session rate", MAILLOG_LIMIT_NEWTLS_RATE},
        {"AUTH command rate", MAILLOG_LIMIT_AUTH_RATE},
        {"Frobnication", MAILLOG_LIMIT_OTHER},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char line[512];
        snprintf(line, sizeof(line),
                 "Nov 23 03:33:36 mx postfix-test/smtpd[6826]: warning: %s limit exceeded: 5 "
                 "from host.example[192.0.2.7] for service smtp",
                 cases[i].what);
        struct maillog_record r;
        assert_int_equal(parse(line, &r), MAILLOG_LIMIT_EXCEEDED);
        assert_int_equal(r.limit_kind, cases[i].kind);
        assert_int_equal(r.count, 5);
        assert_string_equal(r.client_name, "host.example");
        assert_string_equal(r.client_addr, "192.0.2.7");
        assert_string_equal(r.service, "smtp");
    }
}

static void test_maillog_anvil(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        enum maillog_anvil_stat stat;
        unsigned long count, interval;
        const char *key;
    } cases[] = {
        {"statistics: max connection rate 40/60s for (smtp:192.0.2.7) at Nov 23 03:33:59",
         MAILLOG_ANVIL_CONNECTION_RATE, 40, 60, "smtp:192.0.2.7"},
        {"statistics: max connection count 4 for (smtp:192.0.2.7) at Nov 23 03:33:59",
         MAILLOG_ANVIL_CONNECTION_COUNT, 4, 0, "smtp:192.0.2.7"},
        {"statistics: max message rate 4/60s for (smtp:192.0.2.8) at Nov 23 03:33:59",
         MAILLOG_ANVIL_MESSAGE_RATE, 4, 60, "smtp:192.0.2.8"},
        {"statistics: max recipient rate 12/60s for (submission:2001:db8::1) at Nov 23 "
         "03:33:59",
         MAILLOG_ANVIL_RECIPIENT_RATE, 12, 60, "submission:2001:db8::1"},
        {"statistics: max cache size 1 at Nov 23 03:33:35", MAILLOG_ANVIL_CACHE_SIZE, 1, 0, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char line[512];
        snprintf(line, sizeof(line), "Nov 23 03:33:59 mx postfix-test/anvil[7400]: %s",
                 cases[i].msg);
        struct maillog_record r;
        assert_int_equal(parse(line, &r), MAILLOG_ANVIL_STATS);
        assert_int_equal(r.anvil_stat, cases[i].stat);
        assert_int_equal(r.count, cases[i].count);
        assert_int_equal(r.interval_s, cases[i].interval);
        assert_string_equal(r.key, cases[i].key);
    }
}

static void test_maillog_lost_connection(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Nov 23 03:33:29 mx postfix-test/smtpd[6826]: lost connection "
                           "after CONNECT from localhost[127.0.0.1]",
                           &r),
                     MAILLOG_LOST_CONNECTION);
    assert_string_equal(r.stage, "CONNECT");
    assert_string_equal(r.client_addr, "127.0.0.1");
    assert_int_equal(parse("Nov 23 03:33:29 mx postfix/smtpd[1]: lost connection after DATA "
                           "(0 bytes) from unknown[192.0.2.5]:4711",
                           &r),
                     MAILLOG_LOST_CONNECTION);
    assert_string_equal(r.stage, "DATA");
    assert_string_equal(r.client_addr, "192.0.2.5");
    assert_int_equal(r.client_port, 4711);
}

static void test_maillog_reject(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(
        parse("Nov 23 03:33:37 mx postfix-test/smtpd[6826]: NOQUEUE: reject: RCPT from "
              "unknown[192.0.2.9]: 550 5.1.1 <nobody@Example.TEST>: Recipient address "
              "rejected: User unknown in local recipient table; from=<s@spam.test> "
              "to=<nobody@Example.TEST> proto=ESMTP helo=<bot>",
              &r),
        MAILLOG_REJECT);
    assert_string_equal(r.stage, "RCPT");
    assert_string_equal(r.client_name, "unknown");
    assert_string_equal(r.client_addr, "192.0.2.9");
    assert_int_equal(r.code, 550);
    assert_string_equal(r.dsn, "5.1.1");
    assert_int_equal(r.reject_class, MAILLOG_REJECT_UNKNOWN_USER);
    assert_string_equal(r.recipient, "nobody@Example.TEST");
    assert_string_equal(r.domain, "example.test");
    assert_string_equal(r.queue_id, "");
    assert_string_equal(r.text, "<nobody@Example.TEST>: Recipient address rejected: User "
                                "unknown in local recipient table");

    /* Relay denied: another class; no tail: the recipient comes from the reply. */
    assert_int_equal(parse("Nov 23 03:33:37 mx postfix/smtpd[1]: 4F2A1B: reject: RCPT from "
                           "h.example[192.0.2.10]: 554 5.7.1 <x@relay.test>: Relay access "
                           "denied",
                           &r),
                     MAILLOG_REJECT);
    assert_int_equal(r.reject_class, MAILLOG_REJECT_OTHER);
    assert_string_equal(r.queue_id, "4F2A1B");
    assert_string_equal(r.recipient, "x@relay.test");
    assert_int_equal(r.code, 554);

    /* postscreen reject, "[addr]:port" client, comma-separated tail. */
    assert_int_equal(parse("Nov 23 03:33:37 mx postfix/postscreen[9]: NOQUEUE: reject: RCPT "
                           "from [192.0.2.11]:5555: 550 5.7.1 Service unavailable; client "
                           "[192.0.2.11] blocked using zen.example; from=<a@b.test>, "
                           "to=<c@d.test>, proto=ESMTP, helo=<x>",
                           &r),
                     MAILLOG_REJECT);
    assert_string_equal(r.client_addr, "192.0.2.11");
    assert_int_equal(r.client_port, 5555);
    assert_string_equal(r.recipient, "c@d.test");
    assert_string_equal(r.domain, "d.test");
    /* A malformed code is not a reject. */
    assert_int_equal(parse("Nov 23 03:33:37 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from "
                           "h[192.0.2.1]: 99 5.1.1 nope",
                           &r),
                     MAILLOG_OTHER);
}

static void test_maillog_delivery(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        const char *qid, *rcpt, *domain, *relay, *dsn, *word, *text;
        int64_t delay;
        enum maillog_status st;
    } cases[] = {
        {"Nov 23 03:33:38 mx postfix-test/smtp[11214]: 851735104A2: to=<d1@defer.test>, "
         "relay=none, delay=0.14, delays=0.04/0.1/0/0, dsn=4.4.1, status=deferred (connect to "
         "127.0.0.1[127.0.0.1]:9: Connection refused)",
         "851735104A2", "d1@defer.test", "defer.test", "none", "4.4.1", "deferred",
         "connect to 127.0.0.1[127.0.0.1]:9: Connection refused", 140, MAILLOG_STATUS_DEFERRED},
        {"Nov 23 03:33:39 mx postfix-test/smtp[11215]: 9A1B2C3D4E: to=<u@Sink.Test>, "
         "relay=127.0.0.1[127.0.0.1]:2526, delay=1.2, delays=0.1/0/0.5/0.6, dsn=2.0.0, "
         "status=sent (250 2.0.0 Ok: queued as 4F2)",
         "9A1B2C3D4E", "u@Sink.Test", "sink.test", "127.0.0.1[127.0.0.1]:2526", "2.0.0", "sent",
         "250 2.0.0 Ok: queued as 4F2", 1200, MAILLOG_STATUS_SENT},
        {"Nov 23 03:33:40 mx postfix/local[5]: 4Bx2Kd1vYzz9sZ: to=<root@mx.test>, "
         "orig_to=<\"a, b\"@mx.test>, relay=local, delay=3, delays=0/0/0/3, dsn=5.2.2, "
         "status=bounced (cannot update mailbox (quota) for user root)",
         "4Bx2Kd1vYzz9sZ", "root@mx.test", "mx.test", "local", "5.2.2", "bounced",
         "cannot update mailbox (quota) for user root", 3000, MAILLOG_STATUS_BOUNCED},
        {"Nov 23 03:33:41 mx postfix/error[6]: 1234567AB: to=<nobody>, relay=none, delay=0, "
         "delays=0/0/0/0, dsn=4.0.0, status=undeliverable (x)",
         "1234567AB", "nobody", "", "none", "4.0.0", "undeliverable", "x", 0,
         MAILLOG_STATUS_UNDELIVERABLE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct maillog_record r;
        assert_int_equal(parse(cases[i].line, &r), MAILLOG_DELIVERY);
        assert_string_equal(r.queue_id, cases[i].qid);
        assert_string_equal(r.recipient, cases[i].rcpt);
        assert_string_equal(r.domain, cases[i].domain);
        assert_string_equal(r.relay, cases[i].relay);
        assert_string_equal(r.dsn, cases[i].dsn);
        assert_string_equal(r.status_word, cases[i].word);
        assert_string_equal(r.text, cases[i].text);
        assert_int_equal(r.delay_ms, cases[i].delay);
        assert_int_equal(r.status, cases[i].st);
        assert_false(r.truncated);
    }
}

/* Address verification probes (the first line from postfix-grok-patterns' tests, the others
 * in the delivery agents' format): their own statuses, never deliveries or bounces. */
static void test_maillog_verify_probes(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/error[1]: 3E29030F8637E: "
                           "to=<user@yahoo.com>, relay=none, delay=0.01, "
                           "delays=0.01/0/0/0, dsn=5.1.1, status=undeliverable-but-not-cached "
                           "(User unknown in virtual alias table)",
                           &r),
                     MAILLOG_DELIVERY);
    assert_int_equal(r.status, MAILLOG_STATUS_UNDELIVERABLE);
    assert_string_equal(r.status_word, "undeliverable-but-not-cached");
    assert_string_equal(r.text, "User unknown in virtual alias table");
    assert_int_equal(parse("Mar 14 10:00:01 mx postfix/smtp[4242]: 4F2A81C0: "
                           "to=<probe@example.net>, relay=mx.example.net[192.0.2.25]:25, "
                           "delay=0.5, delays=0/0/0.3/0.2, dsn=2.1.5, status=deliverable "
                           "(250 2.1.5 Ok)",
                           &r),
                     MAILLOG_DELIVERY);
    assert_int_equal(r.status, MAILLOG_STATUS_DELIVERABLE);
    assert_string_equal(r.domain, "example.net");
    assert_int_equal(
        parse("Mar 14 10:00:02 mx postfix/smtp[4242]: 4F2A81C1: "
              "to=<nobody@example.net>, relay=mx.example.net[192.0.2.25]:25, "
              "delay=0.5, delays=0/0/0.3/0.2, dsn=5.1.1, status=undeliverable "
              "(host mx.example.net[192.0.2.25] said: 550 5.1.1 <nobody@example.net>: "
              "Recipient address rejected: User unknown (in reply to RCPT TO command))",
              &r),
        MAILLOG_DELIVERY);
    assert_int_equal(r.status, MAILLOG_STATUS_UNDELIVERABLE);
}

/* qmgr's expiry lines (postfix_exporter's and postfix-grok-patterns' tests). */
static void test_maillog_expired(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Apr 10 14:50:16 mail postfix/qmgr[3663]: BACE842E72: "
                           "from=<noreply@domain.com>, status=expired, returned to sender",
                           &r),
                     MAILLOG_EXPIRED);
    assert_string_equal(r.queue_id, "BACE842E72");
    assert_string_equal(r.sender, "noreply@domain.com");
    assert_string_equal(r.status_word, "expired");
    assert_int_equal(parse("Apr 10 14:50:16 mail postfix/qmgr[3663]: BACE842E73: "
                           "from=<noreply@domain.com>, status=force-expired, returned to sender",
                           &r),
                     MAILLOG_EXPIRED);
    assert_string_equal(r.status_word, "force-expired");
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/qmgr[1]: 585BC3F: from=<>, "
                           "status=expired, returned to sender",
                           &r),
                     MAILLOG_EXPIRED);
    assert_string_equal(r.sender, "");
    /* Not qmgr, or another tail: not an expiry. */
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/smtp[1]: 585BC3F: from=<>, "
                           "status=expired, returned to sender",
                           &r),
                     MAILLOG_OTHER);
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/qmgr[1]: 585BC3F: from=<a@b>, "
                           "size=1234, nrcpt=1 (queue active)",
                           &r),
                     MAILLOG_OTHER);
}

/* postscreen's two "ports busy" forms: the hsn723 exporter's line and Postfix's own
 * wording for postscreen_pre_queue_limit (no NOQUEUE, lower-case connect). */
static void test_maillog_ports_busy(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/postscreen[1]: NOQUEUE: reject: "
                           "CONNECT from [5.6.7.8]:1337: all server ports busy",
                           &r),
                     MAILLOG_PORTS_BUSY);
    assert_string_equal(r.text, "all server ports busy");
    assert_string_equal(r.client_addr, "5.6.7.8");
    assert_int_equal(parse("Feb 24 16:18:40 letterman postfix/postscreen[1234]: reject: "
                           "connect from [1.2.3.4]:5678: all screening ports busy",
                           &r),
                     MAILLOG_PORTS_BUSY);
    assert_string_equal(r.text, "all screening ports busy");
    assert_string_equal(r.client_addr, "1.2.3.4");
    assert_int_equal(r.client_port, 5678);
    assert_int_equal(parse("Feb 24 16:18:40 letterman postfix/postscreen[1234]: NOQUEUE: "
                           "reject: CONNECT from [1.2.3.4]:5678: all screening ports busy",
                           &r),
                     MAILLOG_PORTS_BUSY);
    assert_string_equal(r.text, "all screening ports busy");
    assert_int_equal(parse("Feb 24 16:18:40 letterman postfix/postscreen[1234]: reject: "
                           "connect from [1.2.3.4]:5678: something else",
                           &r),
                     MAILLOG_OTHER);
}

/* SASL failures: fail2ban's, sshguard's and crowdsec's real lines. */
static void test_maillog_auth_failed(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("Dec  2 22:24:22 hel postfix/smtps/smtpd[16997]: warning: "
                           "unknown[203.0.113.10]: SASL LOGIN authentication failed: (reason "
                           "unavailable), sasl_username=postmaster@example.org",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.client_name, "unknown");
    assert_string_equal(r.client_addr, "203.0.113.10");
    assert_string_equal(r.sasl_method, "LOGIN");
    assert_string_equal(r.sasl_username, "postmaster@example.org");
    assert_string_equal(r.text, "(reason unavailable)");
    assert_string_equal(r.service, "smtps");
    assert_int_equal(parse("Jun  4 10:00:00 host postfix/smtpd[7676]: warning: "
                           "114-44-142-233.dynamic.hinet.net[114.44.142.233]: SASL CRAM-MD5 "
                           "authentication failed: PDc3OTEwNTkyNTEyMzA2NDIuMTIyODI1MzA2MUBoZWw+",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.client_name, "114-44-142-233.dynamic.hinet.net");
    assert_string_equal(r.sasl_method, "CRAM-MD5");
    assert_string_equal(r.sasl_username, "");
    assert_string_equal(r.service, "smtpd");
    /* Lower-case method, an empty reason, smtpd_client_port_logging's ":port". */
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/submission/smtpd[11538]: warning: "
                           "unknown[82.221.106.233]: SASL login authentication failed: "
                           "UGFzc3dvcmQ6",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.sasl_method, "LOGIN");
    assert_string_equal(r.service, "submission");
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/smtpd[17041]: warning: "
                           "mail.foldsandwalker.com[98.191.84.74]: SASL Plain authentication "
                           "failed:",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.sasl_method, "PLAIN");
    assert_string_equal(r.text, "");
    assert_int_equal(parse("2024-01-01T00:00:00Z host postfix/smtpd[31152]: warning: "
                           "unknown[192.0.2.237]:55729: SASL LOGIN authentication failed: "
                           "authentication failure",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.client_addr, "192.0.2.237");
    assert_int_equal(r.client_port, 55729);
    assert_string_equal(r.text, "authentication failure");
    /* IPv6 (sshguard's tests). */
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/smtpd[1]: warning: "
                           "unknown[2001:db8::1]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.client_addr, "2001:db8::1");
    /* No name sent: Postfix writes "(unavailable)", which is no user name. */
    assert_int_equal(parse("Dec  2 09:58:09 mx postfix/smtpd[4711]: warning: unknown[127.0.0.2]: "
                           "SASL LOGIN authentication failed: (reason unavailable), "
                           "sasl_username=(unavailable)",
                           &r),
                     MAILLOG_AUTH_FAILED);
    assert_string_equal(r.sasl_username, "");
    assert_string_equal(r.text, "(reason unavailable)");
    /* Other SASL warnings are not failures. */
    assert_int_equal(parse("Jan  1 00:00:00 host postfix/smtpd[1]: warning: "
                           "unknown[192.0.2.1]: SASL LOGIN authentication aborted",
                           &r),
                     MAILLOG_OTHER);
}

/* What each line counts toward in the attack detector: Postfix's own wording
 * (smtpd_sasl_glue.c, with and without sasl_username=), lines of the shared logs
 * (crowdsec's, fail2ban's, sshguard's, postfix_exporter's), and the server-side failure
 * that must not count against the client. */
static void test_maillog_attack_class(void **state)
{
    (void)state;
    static const struct {
        const char *line;
        enum maillog_attack want;
    } cases[] = {
        {"Dec  2 09:58:09 mx postfix/submission/smtpd[4711]: warning: unknown[127.0.0.2]: SASL "
         "PLAIN authentication failed: UGFzc3dvcmQ6, sasl_username=alice@postsurge.test",
         MAILLOG_ATTACK_AUTH},
        {"Dec  2 09:58:09 mx postfix/smtpd[4711]: warning: unknown[127.0.0.2]: SASL LOGIN "
         "authentication failed: (reason unavailable), sasl_username=(unavailable)",
         MAILLOG_ATTACK_AUTH},
        {"May 11 04:02:33 host1 postfix/smtpd[26897]: warning: unknown[203.0.113.42]: SASL "
         "LOGIN authentication failed: authentication failure",
         MAILLOG_ATTACK_AUTH},
        {"Sep  6 00:44:57 trianon postfix/submission/smtpd[11538]: warning: "
         "unknown[82.221.106.233]: SASL login authentication failed: UGFzc3dvcmQ6",
         MAILLOG_ATTACK_AUTH},
        {"Oct 19 19:56:07 longbeach postfix/smtpd[2309]: warning: unknown[2001:db8::a11:beef:"
         "7ac0]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
         MAILLOG_ATTACK_AUTH},
        {"2022-04-14T00:36:03.150Z mailhub postfix/smtps/smtpd[30543]: warning: "
         "unknown[122.166.249.154]:48123: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
         MAILLOG_ATTACK_AUTH},
        {"Apr 26 10:55:19 tcc1 postfix/smtpd[21126]: warning: laptop.local[192.168.1.2]: SASL "
         "PLAIN authentication failed: generic failure",
         MAILLOG_ATTACK_AUTH},
        /* smtpd lost Dovecot (answered 454): not the client's doing. */
        {"Dec  2 09:58:09 mx postfix/smtpd[4711]: warning: unknown[127.0.0.3]: SASL PLAIN "
         "authentication failed: Connection lost to authentication server, "
         "sasl_username=bob@postsurge.test",
         MAILLOG_ATTACK_NONE},
        {"Jan  1 00:00:00 host postfix/smtpd[1]: warning: unknown[192.0.2.1]: SASL LOGIN "
         "authentication aborted",
         MAILLOG_ATTACK_NONE},
        {"Nov 23 03:33:29 mx postfix/smtpd[6826]: NOQUEUE: reject: RCPT from "
         "unknown[192.0.2.9]: 550 5.1.1 <u@example.com>: Recipient address rejected: User "
         "unknown in local recipient table; from=<s@example.org> to=<u@example.com> "
         "proto=ESMTP helo=<x>",
         MAILLOG_ATTACK_UNKNOWN_USER},
        {"Nov 23 03:33:29 mx postfix/smtpd[6826]: NOQUEUE: reject: RCPT from "
         "unknown[192.0.2.9]: 554 5.7.1 <u@example.net>: Relay access denied; "
         "from=<s@example.org> to=<u@example.net> proto=ESMTP helo=<x>",
         MAILLOG_ATTACK_ERROR},
        {"Nov 23 03:33:29 mx postfix/smtpd[6826]: connect from unknown[192.0.2.9]",
         MAILLOG_ATTACK_NONE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct maillog_record r;
        parse(cases[i].line, &r);
        if (maillog_attack_class(&r) != cases[i].want)
            fail_msg("case %zu: %s: got %d", i, cases[i].line, (int)maillog_attack_class(&r));
    }
}

/* The production log's scanner line, and the service a client line carries. */
static void test_maillog_service_of_client_lines(void **state)
{
    (void)state;
    struct maillog_record r;
    assert_int_equal(parse("2023-03-14T09:12:13.181046+01:00 helga postfix/submission/smtpd"
                           "[482414]: lost connection after EHLO from "
                           "200123004113.gtdperu.pe[200.123.4.113]",
                           &r),
                     MAILLOG_LOST_CONNECTION);
    assert_string_equal(r.service, "submission");
    assert_string_equal(r.stage, "EHLO");
    assert_string_equal(r.client_addr, "200.123.4.113");
    /* With a NOQUEUE prefix (a user's log in fail2ban's samples). */
    assert_int_equal(parse("Sep 17 18:19:20 mxhost postfix/smtpd[12345]: NOQUEUE: lost connection "
                           "after CONNECT from unknown[192.0.2.25]",
                           &r),
                     MAILLOG_LOST_CONNECTION);
    assert_string_equal(r.stage, "CONNECT");
    assert_string_equal(r.client_addr, "192.0.2.25");
    assert_int_equal(parse("2023-03-14T00:08:35.911679+01:00 helga postfix/10025/smtpd[302614]: "
                           "connect from localhost[127.0.0.1]",
                           &r),
                     MAILLOG_CONNECT);
    assert_string_equal(r.service, "10025");
    assert_int_equal(parse("Jan  1 00:00:00 host postfix-incoming/smtpd[1]: connect from "
                           "a.example[192.0.2.1]",
                           &r),
                     MAILLOG_CONNECT);
    assert_string_equal(r.service, "smtpd");
}

static void test_maillog_unknown_and_damaged_lines(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "",
        "garbage",
        "Nov 23 03:34:01 mx kernel: [12345.678] eth0: link up",
        ("Nov 23 03:34:00 mx postfix-test/smtpd[6826]: disconnect from localhost[127.0.0.1] "
         "ehlo=1 quit=1 commands=2"),
        "Nov 23 03:34:00 mx postfix/smtpd[x]: connect from a[1.2.3.4]",
        "Nov 23 03:34:00 mx postfix/smtpd[1]: connect from a[1.2.3.4",
        "Nov 23 03:34:00 mx postfix/smtpd[1]: connect from a[]",
        "Nov 23 03:34:00 mx postfix/smtpd[1]: connect from a[1.2.3.4]:99999",
        "Nov 23 03:34:00 mx postfix/smtp[1]: ABCDEF: to=<a@b>, relay=none, delay=x, status=sent",
        "Nov 23 03:34:00 mx postfix/smtp[1]: ABCDEF: to=<a@b>, relay=none",
        "Nov 23 03:34:00 mx postfix/smtp[1]: ABC: to=<a@b>, status=sent",
        "Nov 23 03:34:00 mx /smtpd[1]: connect from a[1.2.3.4]",
        "Nov 23",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        struct maillog_record r;
        if (parse(lines[i], &r) != MAILLOG_OTHER)
            fail_msg("line %zu parsed as %s: %s", i, maillog_kind_name(r.kind), lines[i]);
        assert_int_equal(r.delay_ms, -1);
        assert_string_equal(r.client_addr, "");
    }
    /* A NUL inside the line, and bytes past len, are never read as content. */
    static const char nul[] = "Nov 23 03:33:29 mx postfix/smtpd[1]: connect from a[1.2.3.4]\0x";
    struct maillog_record r;
    assert_int_equal(maillog_parse_line(nul, sizeof(nul) - 1, &r), MAILLOG_OTHER);
    assert_int_equal(maillog_parse_line(nul, sizeof(nul) - 3, &r), MAILLOG_CONNECT);
    assert_int_equal(maillog_parse_line(nul, sizeof(nul) - 6, &r), MAILLOG_OTHER); /* "1.2.3" */
    assert_int_equal(maillog_parse_line(NULL, 0, &r), MAILLOG_OTHER);
}

static void test_maillog_long_fields_are_cut(void **state)
{
    (void)state;
    char line[4096];
    char host[1000];
    memset(host, 'h', sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    snprintf(line, sizeof(line), "Nov 23 03:33:29 mx postfix/smtpd[1]: connect from %s[192.0.2.1]",
             host);
    struct maillog_record r;
    assert_int_equal(parse(line, &r), MAILLOG_CONNECT);
    assert_true(r.truncated);
    assert_int_equal(strlen(r.client_name), sizeof(r.client_name) - 1);
    assert_string_equal(r.client_addr, "192.0.2.1");
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 16);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    return buf;
}

static void test_maillog_sample_file_in_chunks(void **state)
{
    (void)state;
    size_t len;
    char *data = read_file(TEST_DATA "/maillog/sample.log", &len);
    static const enum maillog_kind want[] = {
        MAILLOG_CONNECT,        MAILLOG_LOST_CONNECTION,
        MAILLOG_PROCESS_LIMIT,  MAILLOG_OTHER,
        MAILLOG_OTHER,          MAILLOG_POSTSCREEN_ENTER,
        MAILLOG_PORTS_BUSY,     MAILLOG_POSTSCREEN_LEAVE,
        MAILLOG_LIMIT_EXCEEDED, MAILLOG_LIMIT_EXCEEDED,
        MAILLOG_REJECT,         MAILLOG_DELIVERY,
        MAILLOG_DELIVERY,       MAILLOG_ANVIL_STATS,
        MAILLOG_ANVIL_STATS,    MAILLOG_ANVIL_STATS,
        MAILLOG_OTHER,          MAILLOG_OTHER,
    };
    const size_t nwant = sizeof(want) / sizeof(want[0]);
    /* Every chunk size must give the same lines. */
    static const size_t chunks[] = {1, 2, 7, 64, 333, 100000};
    for (size_t ci = 0; ci < sizeof(chunks) / sizeof(chunks[0]); ci++) {
        struct maillog_splitter *sp = maillog_splitter_new(0);
        assert_non_null(sp);
        size_t got = 0;
        for (size_t off = 0; off < len; off += chunks[ci]) {
            size_t n = len - off < chunks[ci] ? len - off : chunks[ci];
            assert_int_equal(maillog_splitter_feed(sp, data + off, n), 0);
            const char *line;
            size_t ll;
            bool cut;
            while (maillog_splitter_next(sp, &line, &ll, &cut) == 1) {
                struct maillog_record r;
                assert_true(got < nwant);
                assert_false(cut);
                if (maillog_parse_line(line, ll, &r) != want[got])
                    fail_msg("chunk %zu line %zu: %s, want %s", chunks[ci], got,
                             maillog_kind_name(r.kind), maillog_kind_name(want[got]));
                got++;
            }
        }
        assert_int_equal(got, nwant);
        assert_int_equal(maillog_splitter_pending(sp), 0);
        maillog_splitter_free(sp);
    }
    free(data);
}

static void test_maillog_splitter_bounds_long_lines(void **state)
{
    (void)state;
    struct maillog_splitter *sp = maillog_splitter_new(16);
    const char *line;
    size_t len;
    bool cut;
    assert_int_equal(maillog_splitter_feed(sp, "short\r\n0123456789", 17), 0);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 1);
    assert_int_equal(len, 5);
    assert_memory_equal(line, "short", 5);
    assert_false(cut);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 0);
    assert_int_equal(maillog_splitter_pending(sp), 10);
    /* The line grows past 16 bytes without a newline: its head comes out cut. */
    assert_int_equal(maillog_splitter_feed(sp, "abcdefghij", 10), 0);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 1);
    assert_int_equal(len, 16);
    assert_memory_equal(line, "0123456789abcdef", 16);
    assert_true(cut);
    assert_int_equal(maillog_splitter_pending(sp), 0);
    /* Its tail is dropped up to the newline, however long, and memory stays bounded. */
    for (int i = 0; i < 100; i++) {
        assert_int_equal(maillog_splitter_feed(sp, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 30), 0);
        assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 0);
        assert_int_equal(maillog_splitter_pending(sp), 0);
    }
    assert_int_equal(maillog_splitter_feed(sp, "xx\nnext\n", 8), 0);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 1);
    assert_int_equal(len, 4);
    assert_memory_equal(line, "next", 4);
    assert_false(cut);
    /* A complete over-long line in one chunk is cut too. */
    assert_int_equal(maillog_splitter_feed(sp, "0123456789abcdefXYZ\nok\n", 23), 0);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 1);
    assert_int_equal(len, 16);
    assert_true(cut);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, &cut), 1);
    assert_memory_equal(line, "ok", 2);
    /* Reset drops a partial line (log rotated). */
    assert_int_equal(maillog_splitter_feed(sp, "partial", 7), 0);
    maillog_splitter_reset(sp);
    assert_int_equal(maillog_splitter_pending(sp), 0);
    assert_int_equal(maillog_splitter_feed(sp, "new\n", 4), 0);
    assert_int_equal(maillog_splitter_next(sp, &line, &len, NULL), 1);
    assert_memory_equal(line, "new", 3);
    assert_int_equal(maillog_splitter_feed(sp, NULL, 3), -EINVAL);
    maillog_splitter_free(sp);
    maillog_splitter_free(NULL);
}

/* postscreen's verdicts, real lines of the production log in ../shared/real-logs (helga,
 * 2023) and of other projects' tests (Postfix 3.6+ ALLOWLISTED/DENYLISTED wording). */
static void test_maillog_postscreen_verdicts(void **state)
{
    (void)state;
    static const struct {
        const char *line, *verdict, *addr;
    } cases[] = {
        {"2023-03-14T00:01:16.756778+01:00 helga postfix/postscreen[3163107]: PREGREET 11 after "
         "0.23 from [180.214.239.18]:59187: EHLO User\\r\\n",
         "pregreet", "180.214.239.18"},
        {"2023-03-14T00:05:07.151411+01:00 helga postfix/postscreen[3163107]: HANGUP after 2.2 "
         "from [122.189.87.41]:52908 in tests after SMTP handshake",
         "hangup", "122.189.87.41"},
        {"2023-03-14T00:01:16.757091+01:00 helga postfix/postscreen[3163107]: DNSBL rank 3 for "
         "[180.214.239.18]:59187",
         "dnsbl", "180.214.239.18"},
        {"2023-03-14T00:10:22.012685+01:00 helga postfix/postscreen[3163107]: PASS NEW "
         "[81.30.156.23]:49571",
         "pass_new", "81.30.156.23"},
        {"2023-03-14T00:00:31.292246+01:00 helga postfix/postscreen[3163107]: PASS OLD "
         "[185.48.118.128]:36942",
         "pass_old", "185.48.118.128"},
        {"2023-03-14T13:05:32.675010+01:00 helga postfix/postscreen[3163107]: WHITELISTED "
         "[82.165.159.41]:42337",
         "allowlisted", "82.165.159.41"},
        {"Feb 24 16:18:40 letterman postfix/postscreen[3508454]: ALLOWLISTED "
         "[69.171.232.146]:61236",
         "allowlisted", "69.171.232.146"},
        {"Feb 24 16:18:40 letterman postfix/postscreen[3508454]: BLACKLISTED [1.2.3.5]:5678",
         "denylisted", "1.2.3.5"},
        {"2023-03-14T14:03:11.332827+01:00 helga postfix/postscreen[3163107]: COMMAND PIPELINING "
         "from [167.248.133.35]:51286 after ??????: \\300$\\300",
         "pipelining", "167.248.133.35"},
        {"Jan 1 00:00:00 hostname postfix/postscreen[12345]: NON-SMTP COMMAND from "
         "[123.45.67.89]:12345 after CONNECT: GET / HTTP/1.1",
         "non_smtp", "123.45.67.89"},
        {"2023-03-14T14:03:11.330967+01:00 helga postfix/postscreen[3163107]: BARE NEWLINE from "
         "[167.248.133.35]:51286 after \\026\\003",
         "bare_newline", "167.248.133.35"},
        {"2023-03-14T02:52:57.301415+01:00 helga postfix/postscreen[3163107]: COMMAND TIME LIMIT "
         "from [114.223.181.147]:59869 after STARTTLS",
         "command_limit", "114.223.181.147"},
    };
    struct maillog_record r;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(maillog_parse_line(cases[i].line, strlen(cases[i].line), &r),
                         MAILLOG_POSTSCREEN_VERDICT);
        assert_string_equal(r.stage, cases[i].verdict);
        assert_string_equal(r.client_addr, cases[i].addr);
        assert_string_equal(r.service, "postscreen");
    }
    /* smtpd does not log verdicts; a postscreen line of another shape is not one. */
    const char *no[] = {
        "Jan 1 00:00:00 h postfix/smtpd[1]: PASS NEW [192.0.2.1]:25",
        "2023-03-14T00:01:16.757091+01:00 helga postfix/postscreen[3163107]: CONNECT from "
        "[180.214.239.18]:59187 to [192.0.2.2]:25",
        "Jan 1 00:00:00 h postfix/postscreen[1]: PASS NEW without a client",
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        assert_int_not_equal(maillog_parse_line(no[i], strlen(no[i]), &r),
                             MAILLOG_POSTSCREEN_VERDICT);
    for (size_t i = 0; i < MAILLOG_PS_VERDICT_COUNT; i++)
        assert_non_null(maillog_ps_verdicts[i]);
    assert_null(maillog_ps_verdicts[MAILLOG_PS_VERDICT_COUNT]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_maillog_header_fields),
        cmocka_unit_test(test_maillog_process_limit),
        cmocka_unit_test(test_maillog_postscreen),
        cmocka_unit_test(test_maillog_limit_exceeded),
        cmocka_unit_test(test_maillog_anvil),
        cmocka_unit_test(test_maillog_lost_connection),
        cmocka_unit_test(test_maillog_reject),
        cmocka_unit_test(test_maillog_delivery),
        cmocka_unit_test(test_maillog_verify_probes),
        cmocka_unit_test(test_maillog_expired),
        cmocka_unit_test(test_maillog_ports_busy),
        cmocka_unit_test(test_maillog_auth_failed),
        cmocka_unit_test(test_maillog_attack_class),
        cmocka_unit_test(test_maillog_service_of_client_lines),
        cmocka_unit_test(test_maillog_unknown_and_damaged_lines),
        cmocka_unit_test(test_maillog_long_fields_are_cut),
        cmocka_unit_test(test_maillog_sample_file_in_chunks),
        cmocka_unit_test(test_maillog_splitter_bounds_long_lines),
        cmocka_unit_test(test_maillog_postscreen_verdicts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
