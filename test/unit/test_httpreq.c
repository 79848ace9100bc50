/* Unit tests of lib/httpreq.c, the request-head parser of the metrics endpoint. Most
 * cases are one table: raw bytes, the expected status and HTTP code. Each case is fed
 * whole, byte by byte and in uneven chunks, and must give the same result every time.
 * The seeds under test/data/httpreq/ (also the fuzz corpus) must parse as their name
 * says: ok-* complete, bad-* fail. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "httpreq.h"

#define DATA_DIR TEST_DATA "/httpreq/"

/* Feeds data in chunks of step bytes (0: whole); returns the status, sets *used_total to
 * the bytes consumed across feeds. */
static int feed_chunked(struct httpreq_parser *p, const char *data, size_t len, size_t step,
                        size_t *used_total)
{
    size_t off = 0;
    int st = HTTPREQ_MORE;

    *used_total = 0;
    if (step == 0)
        step = len ? len : 1;
    while (off < len) {
        size_t n = len - off < step ? len - off : step, used = 0;
        st = httpreq_parser_feed(p, data + off, n, &used);
        assert_true(used <= n);
        *used_total += used;
        if (st != HTTPREQ_MORE)
            return st;
        assert_int_equal(used, n);
        off += n;
    }
    return st;
}

struct parse_case {
    const char *name;
    const char *input;
    int status;
    int code;
};

static const struct parse_case cases[] = {
    {"minimal 1.1", "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_DONE, 200},
    {"1.0 without host", "GET / HTTP/1.0\r\n\r\n", HTTPREQ_DONE, 200},
    {"bare LF lines", "HEAD /healthz HTTP/1.1\nHost: a\n\n", HTTPREQ_DONE, 200},
    {"leading empty lines", "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_DONE, 200},
    {"incomplete", "GET / HTTP/1.1\r\nHost: a\r\n", HTTPREQ_MORE, 0},
    {"only CRLF", "\r\n", HTTPREQ_MORE, 0},
    {"missing version", "GET /metrics\r\n\r\n", HTTPREQ_ERR_VERSION, 400},
    {"lower-case version", "GET / http/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_VERSION, 400},
    {"version with junk", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", HTTPREQ_ERR_VERSION, 400},
    {"space after version", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", HTTPREQ_ERR_VERSION, 400},
    {"HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", HTTPREQ_ERR_VERSION_UNSUPPORTED, 505},
    {"HTTP/1.2 is served as 1.1", "GET / HTTP/1.2\r\n\r\n", HTTPREQ_ERR_HOST, 400},
    {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", HTTPREQ_ERR_VERSION_UNSUPPORTED, 505},
    {"only method", "GET\r\n\r\n", HTTPREQ_ERR_LINE, 400},
    {"empty method", " / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_METHOD, 400},
    {"method not a token", "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_METHOD, 400},
    {"method too long", "GETGETGETGETGETGET / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_METHOD,
     400},
    {"double space", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_TARGET, 400},
    {"tab in request line", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_LINE, 400},
    {"NUL in request line", "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_LINE, 400},
    {"8-bit in target", "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_LINE, 400},
    {"relative target", "GET metrics HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_TARGET, 400},
    {"fragment in target", "GET /m#x HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_TARGET, 400},
    {"empty authority", "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_TARGET, 400},
    {"bare CR in request line", "GET /\rx HTTP/1.1\r\nHost: a\r\n\r\n", HTTPREQ_ERR_LINE, 400},
    {"no host in 1.1", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", HTTPREQ_ERR_HOST, 400},
    {"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HTTPREQ_ERR_HOST, 400},
    {"host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", HTTPREQ_ERR_HOST, 400},
    {"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", HTTPREQ_ERR_HEADER, 400},
    {"no colon", "GET / HTTP/1.1\r\nHost a\r\n\r\n", HTTPREQ_ERR_HEADER, 400},
    {"empty name", "GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", HTTPREQ_ERR_HEADER, 400},
    {"obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", HTTPREQ_ERR_HEADER, 400},
    /* Header injection: a CR alone must not end a field (nor start a new one). */
    {"bare CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rX-B: c\r\n\r\n", HTTPREQ_ERR_HEADER,
     400},
    {"NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n", HTTPREQ_ERR_HEADER, 400},
    {"DEL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7f\r\n\r\n", HTTPREQ_ERR_HEADER, 400},
    {"8-bit value is obs-text", "GET / HTTP/1.1\r\nHost: a\r\nX-A: \xe9t\xe9\r\n\r\n", HTTPREQ_DONE,
     200},
    {"content-length 0", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", HTTPREQ_DONE,
     200},
    {"body announced", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
     HTTPREQ_ERR_BODY, 413},
    {"chunked body", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
     HTTPREQ_ERR_BODY, 413},
    {"bad content-length", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
     HTTPREQ_ERR_HEADER, 400},
    {"two content-lengths",
     "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: "
     "0\r\n\r\n",
     HTTPREQ_ERR_HEADER, 400},
    {"huge content-length",
     "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     HTTPREQ_ERR_HEADER, 400},
    /* Pipelined garbage after a complete head is left for the caller, not parsed. */
    {"pipelined garbage", "GET / HTTP/1.1\r\nHost: a\r\n\r\n\x01\x02GARBAGE\r\n\r\n", HTTPREQ_DONE,
     200},
    {"garbage request", "\x16\x03\x01\x02\x05\x01\xfc\x03\x03\r\n\r\n", HTTPREQ_ERR_LINE, 400},
};

static void test_httpreq_table(void **state)
{
    static const size_t steps[] = {0, 1, 2, 3, 7, 64};

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct parse_case *c = &cases[i];
        /* Inputs with NUL bytes: the length is that of the literal up to "\r\n\r\n". */
        size_t len = strlen(c->input);
        if (strstr(c->name, "NUL"))
            len += 1 + strlen(c->input + len + 1);
        size_t used0 = 0;
        for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
            struct httpreq_parser *p = httpreq_parser_new(NULL);
            size_t used;
            assert_non_null(p);
            int st = feed_chunked(p, c->input, len, steps[k], &used);
            if (st != c->status)
                fail_msg("case \"%s\" (step %zu): status %d (%s), want %d", c->name, steps[k], st,
                         httpreq_strerror(st), c->status);
            assert_int_equal(httpreq_status_code(st), c->code);
            if (k == 0)
                used0 = used;
            else if (used != used0)
                fail_msg("case \"%s\": used %zu at step %zu, %zu whole", c->name, used, steps[k],
                         used0);
            /* Sticky: the same status again, nothing consumed. */
            if (st != HTTPREQ_MORE) {
                size_t u2 = 99;
                assert_int_equal(httpreq_parser_feed(p, "x", 1, &u2), st);
                assert_int_equal(u2, 0);
            }
            httpreq_parser_free(p);
        }
    }
}

static void test_httpreq_fields_of_a_request(void **state)
{
    static const char in[] = "GET /metrics?name[]=a&x HTTP/1.1\r\n"
                             "Host:  127.0.0.1:10041 \r\n"
                             "User-Agent: Prometheus/2.45.0\r\n"
                             "Accept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n"
                             "X-Empty:\r\n"
                             "\r\n";
    struct httpreq_parser *p = httpreq_parser_new(NULL);
    size_t used;

    assert_int_equal(httpreq_parser_feed(p, in, sizeof(in) - 1, &used), HTTPREQ_DONE);
    assert_int_equal(used, sizeof(in) - 1);
    const struct httpreq *r = httpreq_parser_request(p);
    assert_non_null(r);
    assert_int_equal(r->method, HTTPREQ_GET);
    assert_string_equal(r->method_name, "GET");
    assert_string_equal(r->path, "/metrics");
    assert_string_equal(r->query, "name[]=a&x");
    assert_int_equal(r->version_minor, 1);
    assert_string_equal(r->host, "127.0.0.1:10041");
    assert_int_equal(r->content_length, -1);
    assert_int_equal(r->n_headers, 4);
    assert_string_equal(r->headers[1].name, "User-Agent");
    assert_string_equal(r->headers[1].value, "Prometheus/2.45.0");
    assert_int_equal(r->headers[1].value_len, strlen("Prometheus/2.45.0"));
    const struct httpreq_header *h = httpreq_header(r, "x-empty");
    assert_non_null(h);
    assert_string_equal(h->value, "");
    assert_null(httpreq_header(r, "Cookie"));
    httpreq_parser_free(p);
}

struct target_case {
    const char *line;
    enum httpreq_method method;
    const char *path, *query;
};

static void test_httpreq_targets_and_methods(void **state)
{
    static const struct target_case tc[] = {
        {"GET / HTTP/1.0", HTTPREQ_GET, "/", NULL},
        {"HEAD /status? HTTP/1.0", HTTPREQ_HEAD, "/status", ""},
        {"GET http://host:1/metrics?a=b HTTP/1.0", HTTPREQ_GET, "/metrics", "a=b"},
        {"GET HTTPS://host HTTP/1.0", HTTPREQ_GET, "/", NULL},
        {"GET http://host?q HTTP/1.0", HTTPREQ_GET, "/", "q"},
        {"OPTIONS * HTTP/1.0", HTTPREQ_OPTIONS, "*", NULL},
        {"POST /metrics HTTP/1.0", HTTPREQ_POST, "/metrics", NULL},
        {"PUT / HTTP/1.0", HTTPREQ_PUT, "/", NULL},
        {"DELETE / HTTP/1.0", HTTPREQ_DELETE, "/", NULL},
        {"get / HTTP/1.0", HTTPREQ_OTHER, "/", NULL},
        {"PROPFIND / HTTP/1.0", HTTPREQ_OTHER, "/", NULL},
        {"GET /a/../b%20c HTTP/1.0", HTTPREQ_GET, "/a/../b%20c", NULL},
    };
    for (size_t i = 0; i < sizeof(tc) / sizeof(tc[0]); i++) {
        char in[256];
        size_t used;
        int n = snprintf(in, sizeof(in), "%s\r\n\r\n", tc[i].line);
        struct httpreq_parser *p = httpreq_parser_new(NULL);
        int st = httpreq_parser_feed(p, in, (size_t)n, &used);
        if (st != HTTPREQ_DONE)
            fail_msg("\"%s\": %s", tc[i].line, httpreq_strerror(st));
        const struct httpreq *r = httpreq_parser_request(p);
        assert_int_equal(r->method, tc[i].method);
        assert_int_equal(httpreq_parser_method(p), tc[i].method);
        assert_string_equal(r->path, tc[i].path);
        if (tc[i].query)
            assert_string_equal(r->query, tc[i].query);
        else
            assert_null(r->query);
        httpreq_parser_free(p);
    }
}

/* The size limit counts every byte of the head, including skipped empty lines, and
 * fires at the first byte over it. */
static void test_httpreq_rejects_oversize_head(void **state)
{
    struct httpreq_limits lim = {.max_head = 64};
    char in[200];
    size_t used;

    for (size_t step = 1; step <= 200; step += 199) {
        struct httpreq_parser *p = httpreq_parser_new(&lim);
        memset(in, 'a', sizeof(in));
        memcpy(in, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", 32);
        size_t total;
        int st = feed_chunked(p, in, sizeof(in), step, &total);
        assert_int_equal(st, HTTPREQ_ERR_TOO_LARGE);
        assert_int_equal(total, 65);
        assert_int_equal(httpreq_status_code(st), 431);
        httpreq_parser_free(p);
    }

    /* Exactly max_head bytes is fine. */
    struct httpreq_parser *p = httpreq_parser_new(&lim);
    char ok[64];
    memset(ok, 'a', sizeof(ok));
    memcpy(ok, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", 32);
    memcpy(ok + 60, "\r\n\r\n", 4);
    assert_int_equal(httpreq_parser_feed(p, ok, sizeof(ok), &used), HTTPREQ_DONE);
    assert_int_equal(used, 64);
    httpreq_parser_free(p);

    /* Endless empty lines do not get around it. */
    p = httpreq_parser_new(&lim);
    memset(in, '\n', sizeof(in));
    assert_int_equal(httpreq_parser_feed(p, in, sizeof(in), &used), HTTPREQ_ERR_TOO_LARGE);
    httpreq_parser_free(p);

    /* The default limit is 8 KiB. */
    p = httpreq_parser_new(NULL);
    char *big = malloc(HTTPREQ_DEFAULT_MAX_HEAD + 100);
    int n = snprintf(big, 64, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    memset(big + n, 'b', HTTPREQ_DEFAULT_MAX_HEAD + 100 - (size_t)n);
    assert_int_equal(httpreq_parser_feed(p, big, HTTPREQ_DEFAULT_MAX_HEAD + 100, &used),
                     HTTPREQ_ERR_TOO_LARGE);
    assert_int_equal(used, HTTPREQ_DEFAULT_MAX_HEAD + 1);
    free(big);
    httpreq_parser_free(p);
}

static void test_httpreq_rejects_too_many_headers(void **state)
{
    struct httpreq_limits lim = {.max_headers = 3};
    const char *ok = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    const char *bad = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    size_t used;

    struct httpreq_parser *p = httpreq_parser_new(&lim);
    assert_int_equal(httpreq_parser_feed(p, ok, strlen(ok), &used), HTTPREQ_DONE);
    httpreq_parser_reset(p);
    assert_int_equal(httpreq_parser_feed(p, bad, strlen(bad), &used), HTTPREQ_ERR_TOO_MANY_HEADERS);
    assert_int_equal(httpreq_status_code(HTTPREQ_ERR_TOO_MANY_HEADERS), 431);
    httpreq_parser_free(p);
}

/* The method is known after a later error, so a POST with a body can get 405. */
static void test_httpreq_method_known_after_body_error(void **state)
{
    const char *in = "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    struct httpreq_parser *p = httpreq_parser_new(NULL);
    size_t used;

    assert_int_equal(httpreq_parser_method(p), HTTPREQ_NONE);
    assert_int_equal(httpreq_parser_feed(p, in, strlen(in), &used), HTTPREQ_ERR_BODY);
    assert_int_equal(httpreq_parser_method(p), HTTPREQ_POST);
    assert_null(httpreq_parser_request(p));
    httpreq_parser_free(p);
}

/* DONE consumes exactly the head; what follows is the caller's (and is not parsed). */
static void test_httpreq_pipelined_bytes_not_consumed(void **state)
{
    const char *head = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    char in[256];
    size_t used;

    snprintf(in, sizeof(in), "%sGET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", head);
    struct httpreq_parser *p = httpreq_parser_new(NULL);
    assert_int_equal(httpreq_parser_feed(p, in, strlen(in), &used), HTTPREQ_DONE);
    assert_int_equal(used, strlen(head));
    assert_string_equal(httpreq_parser_request(p)->path, "/healthz");
    assert_false(httpreq_parser_pending(p));
    /* After a reset the same parser reads the next head. */
    httpreq_parser_reset(p);
    assert_int_equal(httpreq_parser_feed(p, in + used, strlen(in + used), &used), HTTPREQ_DONE);
    assert_string_equal(httpreq_parser_request(p)->path, "/metrics");
    httpreq_parser_free(p);
}

static void test_httpreq_pending_and_reset(void **state)
{
    struct httpreq_parser *p = httpreq_parser_new(NULL);
    size_t used;

    assert_false(httpreq_parser_pending(p));
    assert_int_equal(httpreq_parser_feed(p, "GET / HT", 8, &used), HTTPREQ_MORE);
    assert_true(httpreq_parser_pending(p));
    assert_null(httpreq_parser_request(p));
    assert_int_equal(httpreq_parser_feed(p, "\x01\r\n", 3, &used), HTTPREQ_ERR_LINE);
    assert_false(httpreq_parser_pending(p));
    httpreq_parser_reset(p);
    assert_int_equal(httpreq_parser_feed(p, "GET / HTTP/1.0\n\n", 16, &used), HTTPREQ_DONE);
    httpreq_parser_free(p);
    httpreq_parser_free(NULL);
}

static void test_httpreq_strerror_covers_every_status(void **state)
{
    for (int st = HTTPREQ_ERR_BODY; st <= HTTPREQ_DONE; st++) {
        assert_string_not_equal(httpreq_strerror(st), "unknown status");
        if (st < 0)
            assert_true(httpreq_status_code(st) >= 400);
    }
    assert_string_equal(httpreq_strerror(-99), "unknown status");
}

/* Every seed of the fuzz corpus parses as its name says. */
static void test_httpreq_seed_corpus(void **state)
{
    DIR *d = opendir(DATA_DIR);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        bool ok = strncmp(e->d_name, "ok-", 3) == 0, bad = strncmp(e->d_name, "bad-", 4) == 0;
        if (!ok && !bad)
            continue;
        char path[1024], buf[16384];
        snprintf(path, sizeof(path), "%s%s", DATA_DIR, e->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        size_t len = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        struct httpreq_parser *p = httpreq_parser_new(NULL);
        size_t used;
        int st = httpreq_parser_feed(p, buf, len, &used);
        if (ok ? st != HTTPREQ_DONE : st >= 0)
            fail_msg("%s: %d (%s)", e->d_name, st, httpreq_strerror(st));
        httpreq_parser_free(p);
        n++;
    }
    closedir(d);
    assert_true(n >= 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_httpreq_table),
        cmocka_unit_test(test_httpreq_fields_of_a_request),
        cmocka_unit_test(test_httpreq_targets_and_methods),
        cmocka_unit_test(test_httpreq_rejects_oversize_head),
        cmocka_unit_test(test_httpreq_rejects_too_many_headers),
        cmocka_unit_test(test_httpreq_method_known_after_body_error),
        cmocka_unit_test(test_httpreq_pipelined_bytes_not_consumed),
        cmocka_unit_test(test_httpreq_pending_and_reset),
        cmocka_unit_test(test_httpreq_strerror_covers_every_status),
        cmocka_unit_test(test_httpreq_seed_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
