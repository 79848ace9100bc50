/* Unit tests of lib/policy.c: the policy request parser and the response encoder.
 * Inputs under test/data/policy/: postfix37-rcpt.txt was captured from a real Postfix
 * 3.7.11 smtpd (swaks through check_policy_service); postfix312-rcpt.txt adds the 3.8+
 * attributes by hand. The binary is linked with --wrap=malloc,--wrap=realloc so that the
 * Nth allocation can be made to fail. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "policy.h"

#define DATA_DIR TEST_DATA "/policy/"

/* --- allocation control ------------------------------------------------------------ */

void *__real_malloc(size_t n);
void *__real_realloc(void *ptr, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_realloc(void *ptr, size_t n);

static long alloc_count;  /* allocations since alloc_reset() */
static long alloc_fail_n; /* fail the allocation with this number; 0: none */
static size_t alloc_max;  /* largest size asked for */

static void alloc_reset(long fail_n)
{
    alloc_count = 0;
    alloc_fail_n = fail_n;
    alloc_max = 0;
}

static bool alloc_should_fail(size_t n)
{
    alloc_count++;
    if (n > alloc_max)
        alloc_max = n;
    return alloc_fail_n && alloc_count == alloc_fail_n;
}

void *__wrap_malloc(size_t n)
{
    return alloc_should_fail(n) ? NULL : __real_malloc(n);
}

void *__wrap_realloc(void *ptr, size_t n)
{
    return alloc_should_fail(n) ? NULL : __real_realloc(ptr, n);
}

/* --- helpers ---------------------------------------------------------------------- */

struct blob {
    char *data;
    size_t len;
};

static struct blob read_data(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s%s", DATA_DIR, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    struct blob b = {NULL, 0};
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    b.data = malloc((size_t)n + 1);
    assert_non_null(b.data);
    b.len = fread(b.data, 1, (size_t)n, f);
    assert_int_equal(b.len, (size_t)n);
    fclose(f);
    return b;
}

/* A canonical text form of a request, to compare parses of the same bytes. */
static void request_dump(const struct policy_request *r, char *out, size_t outsz)
{
    size_t o = 0;
    for (int i = 0; i < POLICY_ATTR_COUNT; i++) {
        if (!r->attr[i])
            continue;
        assert_int_equal(strlen(r->attr[i]), r->attr_len[i]);
        o += (size_t)snprintf(out + o, outsz - o, "%s=%s\n", policy_attr_name(i), r->attr[i]);
        assert_true(o < outsz);
    }
    for (size_t i = 0; i < r->n_extra; i++) {
        o += (size_t)snprintf(out + o, outsz - o, "+%s=%s\n", r->extra[i].name, r->extra[i].value);
        assert_true(o < outsz);
    }
    o += (size_t)snprintf(out + o, outsz - o, "state=%d\n", (int)r->state);
    assert_true(o < outsz);
}

/* Feeds data in chunks whose sizes cycle through splits[] (0 or NULL: all at once) and
 * appends each request's dump to out. Returns the final status: POLICY_MORE when every
 * byte was consumed, or the error, with its absolute offset in *err_at. */
static int feed_all(struct policy_parser *p, const char *data, size_t len, const size_t *splits,
                    size_t n_splits, char *out, size_t outsz, size_t *err_at)
{
    size_t pos = 0, k = 0, o = 0;
    out[0] = '\0';
    while (pos < len) {
        size_t chunk = len - pos;
        if (n_splits && splits[k % n_splits] && splits[k % n_splits] < chunk)
            chunk = splits[k % n_splits];
        k++;
        size_t off = 0;
        while (off < chunk) {
            size_t used = 0;
            int rc = policy_parser_feed(p, data + pos + off, chunk - off, &used);
            assert_true(used <= chunk - off);
            off += used;
            if (rc < 0) {
                *err_at = pos + off;
                return rc;
            }
            if (rc == POLICY_DONE) {
                const struct policy_request *r = policy_parser_request(p);
                assert_non_null(r);
                assert_false(policy_parser_pending(p));
                request_dump(r, out + o, outsz - o);
                o += strlen(out + o);
            } else {
                assert_int_equal(rc, POLICY_MORE);
                assert_int_equal(off, chunk);
                assert_null(policy_parser_request(p));
            }
        }
        pos += chunk;
    }
    return POLICY_MORE;
}

static const struct policy_request *parse_one(struct policy_parser *p, const char *s, size_t len)
{
    size_t used = 0;
    int rc = policy_parser_feed(p, s, len, &used);
    assert_int_equal(rc, POLICY_DONE);
    assert_int_equal(used, len);
    return policy_parser_request(p);
}

#define PARSE_ONE(p, lit) parse_one((p), (lit), sizeof(lit) - 1)

/* The "QUEUEID: " prefix of decision log lines: only what Postfix could have made. */
static void test_policy_queue_id_prefix(void **state)
{
    (void)state;
    static const struct {
        const char *req, *want;
    } cases[] = {
        {"queue_id=4ABC123DEF\n\n", "4ABC123DEF: "},
        {"queue_id=3Qx9LM0s1Bz4kJ7\n\n", "3Qx9LM0s1Bz4kJ7: "}, /* long queue ids */
        {"queue_id=\n\n", ""},
        {"sender=a@b\n\n", ""},
        {"queue_id=4ABC 123\n\n", ""},
        {"queue_id=4ABC\x1b[31m\n\n", ""},
        {"queue_id=123456789012345678901234567890123\n\n", ""}, /* 33 characters */
    };
    char out[40];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct policy_parser *p = policy_parser_new(NULL);
        const struct policy_request *r = parse_one(p, cases[i].req, strlen(cases[i].req));
        policy_queue_id_prefix(r, out, sizeof(out));
        assert_string_equal(out, cases[i].want);
        policy_queue_id_prefix(r, out, 5); /* too small: nothing */
        if (cases[i].want[0])
            assert_string_equal(out, "");
        policy_parser_free(p);
    }
}

/* --- attribute names --------------------------------------------------------------- */

static void test_policy_attr_lookup_every_name(void **state)
{
    (void)state;
    char buf[64];
    for (int i = 0; i < POLICY_ATTR_COUNT; i++) {
        const char *name = policy_attr_name(i);
        assert_non_null(name);
        size_t n = strlen(name);
        assert_int_equal(policy_attr_lookup(name, n), i);
        /* Near misses of every name must not match anything. */
        memcpy(buf, name, n + 1);
        buf[0] ^= 0x20;
        assert_int_equal(policy_attr_lookup(buf, n), -1);
        buf[0] ^= 0x20;
        buf[n - 1] ^= 0x01;
        assert_int_equal(policy_attr_lookup(buf, n), -1);
        buf[n - 1] ^= 0x01;
        buf[n / 2] = '#';
        assert_int_equal(policy_attr_lookup(buf, n), -1);
        assert_int_equal(policy_attr_lookup(name, n - 1), -1);
        memcpy(buf, name, n);
        buf[n] = 'x';
        assert_int_equal(policy_attr_lookup(buf, n + 1), -1);
    }
    assert_null(policy_attr_name(POLICY_ATTR_COUNT));
    assert_int_equal(policy_attr_lookup("", 0), -1);
    assert_int_equal(policy_attr_lookup(NULL, 3), -1);
    assert_int_equal(policy_attr_lookup("REQUEST", 7), -1);
}

/* --- real requests ----------------------------------------------------------------- */

/* The 29 attributes of the captured Postfix 3.7 request, in the order Postfix sends. */
static const struct {
    enum policy_attr a;
    const char *value;
} postfix37[] = {
    {POLICY_REQUEST, "smtpd_access_policy"},
    {POLICY_PROTOCOL_STATE, "RCPT"},
    {POLICY_PROTOCOL_NAME, "ESMTP"},
    {POLICY_CLIENT_ADDRESS, "127.0.0.1"},
    {POLICY_CLIENT_NAME, "localhost"},
    {POLICY_CLIENT_PORT, "40610"},
    {POLICY_REVERSE_CLIENT_NAME, "localhost"},
    {POLICY_SERVER_ADDRESS, "127.0.0.1"},
    {POLICY_SERVER_PORT, "59667"},
    {POLICY_HELO_NAME, "client.sender.test"},
    {POLICY_SENDER, "alice@sender.test"},
    {POLICY_RECIPIENT, "bob@example.test"},
    {POLICY_RECIPIENT_COUNT, "0"},
    {POLICY_QUEUE_ID, ""},
    {POLICY_INSTANCE, "2966.6b03bf3f.15a21.0"},
    {POLICY_SIZE, "0"},
    {POLICY_ETRN_DOMAIN, ""},
    {POLICY_STRESS, ""},
    {POLICY_SASL_METHOD, ""},
    {POLICY_SASL_USERNAME, ""},
    {POLICY_SASL_SENDER, ""},
    {POLICY_CCERT_SUBJECT, ""},
    {POLICY_CCERT_ISSUER, ""},
    {POLICY_CCERT_FINGERPRINT, ""},
    {POLICY_CCERT_PUBKEY_FINGERPRINT, ""},
    {POLICY_ENCRYPTION_PROTOCOL, ""},
    {POLICY_ENCRYPTION_CIPHER, ""},
    {POLICY_ENCRYPTION_KEYSIZE, "0"},
    {POLICY_POLICY_CONTEXT, ""},
};

static void check_postfix37(const struct policy_request *r)
{
    assert_int_equal(sizeof(postfix37) / sizeof(postfix37[0]), 29);
    for (size_t i = 0; i < 29; i++) {
        /* The file order is the enum order: the enum follows Postfix's order. */
        assert_int_equal(postfix37[i].a, (int)i);
        assert_non_null(r->attr[i]);
        assert_string_equal(r->attr[i], postfix37[i].value);
        assert_int_equal(r->attr_len[i], strlen(postfix37[i].value));
    }
    assert_null(r->attr[POLICY_COMPATIBILITY_LEVEL]);
    assert_null(r->attr[POLICY_MAIL_VERSION]);
    assert_null(r->attr[POLICY_TLS_SNI]);
    assert_int_equal(r->state, POLICY_STATE_RCPT);
    assert_int_equal(r->n_extra, 0);
}

static void test_policy_parses_postfix37_request(void **state)
{
    (void)state;
    struct blob b = read_data("postfix37-rcpt.txt");
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    assert_null(policy_parser_request(p));
    assert_false(policy_parser_pending(p));
    check_postfix37(parse_one(p, b.data, b.len));
    /* The same parser reads the next request on the connection. */
    check_postfix37(parse_one(p, b.data, b.len));
    policy_parser_free(p);
    free(b.data);
}

static void test_policy_parses_postfix312_attributes(void **state)
{
    (void)state;
    struct blob b = read_data("postfix312-rcpt.txt");
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    const struct policy_request *r = parse_one(p, b.data, b.len);
    assert_string_equal(r->attr[POLICY_ENCRYPTION_PROTOCOL], "TLSv1.3");
    assert_string_equal(r->attr[POLICY_ENCRYPTION_CIPHER], "TLS_AES_256_GCM_SHA384");
    assert_string_equal(r->attr[POLICY_ENCRYPTION_KEYSIZE], "256");
    assert_string_equal(r->attr[POLICY_COMPATIBILITY_LEVEL], "3.6");
    assert_string_equal(r->attr[POLICY_MAIL_VERSION], "3.12.0");
    assert_string_equal(r->attr[POLICY_TLS_SNI], "mx.example.test");
    for (int i = 0; i < POLICY_ATTR_COUNT; i++)
        assert_non_null(r->attr[i]);
    assert_int_equal(r->n_extra, 0);
    policy_parser_free(p);
    free(b.data);
}

static void test_policy_crlf_is_stripped(void **state)
{
    (void)state;
    struct blob b = read_data("crlf.txt");
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    check_postfix37(parse_one(p, b.data, b.len));
    /* Only one '\r' before '\n' goes; a '\r' inside a value stays. */
    const struct policy_request *r = PARSE_ONE(p, "sender=a\rb\r\r\nrecipient=\r\n\r\n");
    assert_string_equal(r->attr[POLICY_SENDER], "a\rb\r");
    assert_int_equal(r->attr_len[POLICY_SENDER], 4);
    assert_string_equal(r->attr[POLICY_RECIPIENT], "");
    policy_parser_free(p);
    free(b.data);
}

/* --- splits ------------------------------------------------------------------------ */

static void test_policy_splits_at_every_offset(void **state)
{
    (void)state;
    static const char *const files[] = {"postfix37-rcpt.txt", "crlf.txt", "unknown-attrs.txt",
                                        "pipelined.txt"};
    static char want[16384], got[16384];
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        struct blob b = read_data(files[f]);
        struct policy_parser *p = policy_parser_new(NULL);
        assert_non_null(p);
        size_t err_at = 0;
        assert_int_equal(feed_all(p, b.data, b.len, NULL, 0, want, sizeof(want), &err_at),
                         POLICY_MORE);
        assert_true(strlen(want) > 0);
        /* Two pieces split at every offset, then three pieces at every pair. */
        for (size_t i = 0; i <= b.len; i++) {
            size_t splits[2] = {i, 0};
            assert_int_equal(feed_all(p, b.data, b.len, splits, 2, got, sizeof(got), &err_at),
                             POLICY_MORE);
            assert_string_equal(got, want);
            assert_false(policy_parser_pending(p));
        }
        for (size_t i = 1; i < b.len && b.len <= 1024; i++) {
            for (size_t j = 1; i + j < b.len; j += 7) {
                size_t splits[3] = {i, j, 0};
                assert_int_equal(feed_all(p, b.data, b.len, splits, 3, got, sizeof(got), &err_at),
                                 POLICY_MORE);
                assert_string_equal(got, want);
            }
        }
        size_t one = 1;
        assert_int_equal(feed_all(p, b.data, b.len, &one, 1, got, sizeof(got), &err_at),
                         POLICY_MORE);
        assert_string_equal(got, want);
        policy_parser_free(p);
        free(b.data);
    }
}

static void test_policy_pipelined_requests(void **state)
{
    (void)state;
    struct blob b = read_data("pipelined.txt");
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    static const struct {
        enum policy_state state;
        const char *queue_id, *recipient_count, *size;
    } want[] = {
        {POLICY_STATE_RCPT, "", "0", "0"},
        {POLICY_STATE_DATA, "4Xb1Zq3Nc9z9sQ", "1", "0"},
        {POLICY_STATE_END_OF_MESSAGE, "4Xb1Zq3Nc9z9sQ", "1", "1432"},
    };
    size_t pos = 0;
    for (size_t i = 0; i < 3; i++) {
        size_t used = 0;
        /* All three requests arrive in one read; each DONE leaves the rest unconsumed. */
        assert_int_equal(policy_parser_feed(p, b.data + pos, b.len - pos, &used), POLICY_DONE);
        pos += used;
        assert_true(i == 2 ? pos == b.len : pos < b.len);
        const struct policy_request *r = policy_parser_request(p);
        assert_int_equal(r->state, want[i].state);
        assert_string_equal(r->attr[POLICY_QUEUE_ID], want[i].queue_id);
        assert_string_equal(r->attr[POLICY_RECIPIENT_COUNT], want[i].recipient_count);
        assert_string_equal(r->attr[POLICY_SIZE], want[i].size);
        assert_string_equal(r->attr[POLICY_INSTANCE], "2966.6b03bf3f.15a21.0");
    }
    size_t used = 99;
    assert_int_equal(policy_parser_feed(p, b.data, 0, &used), POLICY_MORE);
    assert_int_equal(used, 0);
    assert_null(policy_parser_request(p));
    policy_parser_free(p);
    free(b.data);
}

/* --- attribute semantics ----------------------------------------------------------- */

static void test_policy_repeated_attribute_last_wins(void **state)
{
    (void)state;
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    const struct policy_request *r =
        PARSE_ONE(p, "sender=first@x\nsender=second@x\nx=1\nx=2\nsender=\n\n");
    assert_string_equal(r->attr[POLICY_SENDER], "");
    assert_int_equal(r->attr_len[POLICY_SENDER], 0);
    /* Unknown attributes are kept as sent, repeats included. */
    assert_int_equal(r->n_extra, 2);
    assert_string_equal(r->extra[1].value, "2");
    r = PARSE_ONE(p, "sender=first@x\nsender=second@x\n\n");
    assert_string_equal(r->attr[POLICY_SENDER], "second@x");
    policy_parser_free(p);
}

static void test_policy_empty_and_missing_values(void **state)
{
    (void)state;
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    const struct policy_request *r = PARSE_ONE(p, "request=smtpd_access_policy\nsender=\n\n");
    assert_string_equal(r->attr[POLICY_SENDER], "");
    assert_null(r->attr[POLICY_RECIPIENT]);
    assert_int_equal(r->attr_len[POLICY_RECIPIENT], 0);
    assert_int_equal(r->state, POLICY_STATE_UNKNOWN);
    assert_null(r->extra);
    /* A lone empty line is an empty request, one reply for it, as Postfix's example
     * policy server does. */
    r = PARSE_ONE(p, "\n");
    for (int i = 0; i < POLICY_ATTR_COUNT; i++)
        assert_null(r->attr[i]);
    assert_int_equal(r->n_extra, 0);
    r = PARSE_ONE(p, "\r\n");
    assert_null(r->attr[POLICY_REQUEST]);
    policy_parser_free(p);
}

static void test_policy_unknown_attributes_kept(void **state)
{
    (void)state;
    struct blob b = read_data("unknown-attrs.txt");
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    const struct policy_request *r = parse_one(p, b.data, b.len);
    assert_string_equal(r->attr[POLICY_CLIENT_ADDRESS], "192.0.2.7");
    assert_int_equal(r->n_extra, 3);
    assert_string_equal(r->extra[0].name, "x_future_attr");
    assert_string_equal(r->extra[0].value, "some value");
    /* The first '=' splits; later ones belong to the value. */
    assert_string_equal(r->extra[1].name, "x_other");
    assert_string_equal(r->extra[1].value, "a=b=c");
    assert_string_equal(r->extra[2].name, "x_empty");
    assert_string_equal(r->extra[2].value, "");
    policy_parser_free(p);
    free(b.data);
}

static void test_policy_many_unknown_attributes(void **state)
{
    (void)state;
    char req[8192];
    size_t o = 0;
    for (int i = 0; i < 100; i++)
        o += (size_t)snprintf(req + o, sizeof(req) - o, "extra_%d=value %d\n", i, i);
    req[o++] = '\n';
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    const struct policy_request *r = parse_one(p, req, o);
    assert_int_equal(r->n_extra, 100);
    for (int i = 0; i < 100; i++) {
        char name[32], value[32];
        snprintf(name, sizeof(name), "extra_%d", i);
        snprintf(value, sizeof(value), "value %d", i);
        assert_string_equal(r->extra[i].name, name);
        assert_string_equal(r->extra[i].value, value);
    }
    policy_parser_free(p);
}

static void test_policy_protocol_state_values(void **state)
{
    (void)state;
    static const struct {
        const char *value;
        enum policy_state state;
    } cases[] = {
        {"CONNECT", POLICY_STATE_CONNECT},
        {"EHLO", POLICY_STATE_EHLO},
        {"HELO", POLICY_STATE_HELO},
        {"MAIL", POLICY_STATE_MAIL},
        {"RCPT", POLICY_STATE_RCPT},
        {"DATA", POLICY_STATE_DATA},
        {"END-OF-MESSAGE", POLICY_STATE_END_OF_MESSAGE},
        {"VRFY", POLICY_STATE_VRFY},
        {"ETRN", POLICY_STATE_ETRN},
        {"rcpt", POLICY_STATE_RCPT},
        {"", POLICY_STATE_UNKNOWN},
        {"RCPTX", POLICY_STATE_UNKNOWN},
        {"RCP", POLICY_STATE_UNKNOWN},
        {"BDAT", POLICY_STATE_UNKNOWN},
        {NULL, POLICY_STATE_UNKNOWN},
    };
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char req[128];
        int n = cases[i].value ? snprintf(req, sizeof(req), "protocol_state=%s\n\n", cases[i].value)
                               : snprintf(req, sizeof(req), "request=smtpd_access_policy\n\n");
        const struct policy_request *r = parse_one(p, req, (size_t)n);
        assert_int_equal(r->state, cases[i].state);
    }
    policy_parser_free(p);
}

static void test_policy_pending_and_reset(void **state)
{
    (void)state;
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    size_t used;
    assert_int_equal(policy_parser_feed(p, "sender=a\nrec", 12, &used), POLICY_MORE);
    assert_int_equal(used, 12);
    assert_true(policy_parser_pending(p));
    assert_null(policy_parser_request(p));
    policy_parser_reset(p);
    assert_false(policy_parser_pending(p));
    /* The half request is gone: "ipient=b" alone starts a fresh request. */
    const struct policy_request *r = PARSE_ONE(p, "recipient=b\n\n");
    assert_null(r->attr[POLICY_SENDER]);
    assert_string_equal(r->attr[POLICY_RECIPIENT], "b");
    policy_parser_free(p);
    policy_parser_free(NULL);
}

/* --- errors ------------------------------------------------------------------------ */

static void test_policy_rejects_bad_input(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        const char *input;
        size_t len; /* 0: strlen */
        struct policy_limits lim;
        int status;
        size_t err_at; /* offset of the offending byte */
    } cases[] = {
        {"nul in value", "sender=a\0b\n\n", 12, {0, 0, 0}, POLICY_ERR_NUL, 8},
        {"nul in name", "sen\0der=a\n\n", 11, {0, 0, 0}, POLICY_ERR_NUL, 3},
        {"nul line", "a=b\n\0\n", 6, {0, 0, 0}, POLICY_ERR_NUL, 4},
        {"no equals", "request=x\nhello\n\n", 0, {0, 0, 0}, POLICY_ERR_NO_EQUALS, 15},
        {"no equals crlf", "hello\r\n", 0, {0, 0, 0}, POLICY_ERR_NO_EQUALS, 6},
        {"lone cr line", "a=b\n\r\r\n", 0, {0, 0, 0}, POLICY_ERR_NO_EQUALS, 6},
        {"empty name", "a=b\n=value\n\n", 0, {0, 0, 0}, POLICY_ERR_EMPTY_NAME, 4},
        {"empty name alone", "=\n", 0, {0, 0, 0}, POLICY_ERR_EMPTY_NAME, 0},
        {"line too long",
         "a=b\nsender=0123456789\n\n",
         0,
         {16, 0, 0},
         POLICY_ERR_LINE_TOO_LONG,
         20},
        {"line too long no newline",
         "sender=0123456789abcdef",
         0,
         {16, 0, 0},
         POLICY_ERR_LINE_TOO_LONG,
         16},
        {"cr counts in line",
         "sender=012345678\r\n\n",
         0,
         {16, 0, 0},
         POLICY_ERR_LINE_TOO_LONG,
         16},
        {"request too large", "a=1\nb=2\nc=3\n\n", 0, {0, 0, 10}, POLICY_ERR_REQUEST_TOO_LARGE, 10},
        {"request too large at newline",
         "a=1\nb=2\nc=3\n\n",
         0,
         {0, 0, 12},
         POLICY_ERR_REQUEST_TOO_LARGE,
         12},
        {"too many attrs", "a=1\nb=2\nc=3\nd=4\n\n", 0, {0, 3, 0}, POLICY_ERR_TOO_MANY_ATTRS, 12},
        {"too many attrs cr",
         "a=1\nb=2\nc=3\n\rd=4\n\n",
         0,
         {0, 3, 0},
         POLICY_ERR_TOO_MANY_ATTRS,
         13},
        {"too many repeated",
         "a=1\na=1\na=1\na=1\n\n",
         0,
         {0, 3, 0},
         POLICY_ERR_TOO_MANY_ATTRS,
         12},
        {"limit before later nul", "a=1\nb\0=2\n\n", 10, {0, 1, 0}, POLICY_ERR_TOO_MANY_ATTRS, 4},
    };
    static char dump[4096];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].input);
        print_message("case %s\n", cases[i].name);
        /* The same error at the same byte, whatever the split. */
        for (size_t split = 0; split <= len; split++) {
            struct policy_parser *p = policy_parser_new(&cases[i].lim);
            assert_non_null(p);
            size_t err_at = 0;
            size_t splits[2] = {split, 0};
            int rc = feed_all(p, cases[i].input, len, splits, 2, dump, sizeof(dump), &err_at);
            assert_int_equal(rc, cases[i].status);
            assert_int_equal(err_at, cases[i].err_at);
            assert_string_not_equal(policy_strerror(rc), "unknown policy status");
            /* Protocol errors stick until a reset. */
            size_t used = 1;
            assert_int_equal(policy_parser_feed(p, "a=b\n\n", 5, &used), rc);
            assert_int_equal(used, 0);
            policy_parser_reset(p);
            assert_non_null(PARSE_ONE(p, "a=b\n\n"));
            policy_parser_free(p);
        }
    }
}

static void test_policy_limits_are_inclusive(void **state)
{
    (void)state;
    /* Exactly at every limit is fine: 3 attributes, a 16-byte line. */
    const char req[] = "a=1\nb=2\nsender=012345678\n\n";
    struct policy_limits lim = {16, 3, sizeof(req) - 1};
    struct policy_parser *p = policy_parser_new(&lim);
    assert_non_null(p);
    const struct policy_request *r = PARSE_ONE(p, req);
    assert_string_equal(r->attr[POLICY_SENDER], "012345678");
    r = PARSE_ONE(p, req);
    assert_int_equal(r->n_extra, 2);
    policy_parser_free(p);
}

static void test_policy_error_seed_files(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        int status;
    } cases[] = {
        {"err-nul.bin", POLICY_ERR_NUL},
        {"err-no-equals.txt", POLICY_ERR_NO_EQUALS},
        {"err-empty-name.txt", POLICY_ERR_EMPTY_NAME},
        {"err-line-too-long.txt", POLICY_ERR_LINE_TOO_LONG},
        {"err-too-many-attrs.txt", POLICY_ERR_TOO_MANY_ATTRS},
    };
    static char dump[65536];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct blob b = read_data(cases[i].file);
        struct policy_parser *p = policy_parser_new(NULL);
        assert_non_null(p);
        size_t err_at = 0;
        assert_int_equal(feed_all(p, b.data, b.len, NULL, 0, dump, sizeof(dump), &err_at),
                         cases[i].status);
        assert_true(err_at < b.len);
        policy_parser_free(p);
        free(b.data);
    }
}

/* A client sending an endless line is cut off at max_line bytes: the parser neither
 * waits for the newline nor buffers the rest. */
static void test_policy_rejects_line_over_limit_early(void **state)
{
    (void)state;
    enum { CHUNK = 65536 };
    char *chunk = malloc(CHUNK);
    assert_non_null(chunk);
    memset(chunk, 'x', CHUNK);
    memcpy(chunk, "sender=", 7);
    static const size_t pieces[] = {CHUNK, 1000, 1};
    for (size_t k = 0; k < sizeof(pieces) / sizeof(pieces[0]); k++) {
        struct policy_parser *p = policy_parser_new(NULL);
        assert_non_null(p);
        alloc_reset(0);
        size_t total = 0;
        int rc = POLICY_MORE;
        /* Up to 1 GB, but the error must come after max_line bytes. */
        while (rc == POLICY_MORE && total < (size_t)1 << 30) {
            size_t used = 0;
            const char *src = total == 0 ? chunk : chunk + 7;
            rc = policy_parser_feed(p, src, pieces[k], &used);
            total += used;
        }
        assert_int_equal(rc, POLICY_ERR_LINE_TOO_LONG);
        assert_int_equal(total, POLICY_DEFAULT_MAX_LINE);
        assert_true(alloc_max <= 2 * (POLICY_DEFAULT_MAX_LINE + 1));
        policy_parser_free(p);
    }
    free(chunk);
}

/* --- allocation -------------------------------------------------------------------- */

static void test_policy_no_allocation_in_steady_state(void **state)
{
    (void)state;
    struct blob b = read_data("pipelined.txt");
    struct blob u = read_data("unknown-attrs.txt");
    struct policy_parser *p = policy_parser_new(NULL);
    assert_non_null(p);
    static char dump[16384];
    size_t err_at;
    /* Warm up, then 1000 rounds of the same traffic must not allocate. */
    assert_int_equal(feed_all(p, b.data, b.len, NULL, 0, dump, sizeof(dump), &err_at), POLICY_MORE);
    assert_int_equal(feed_all(p, u.data, u.len, NULL, 0, dump, sizeof(dump), &err_at), POLICY_MORE);
    alloc_reset(0);
    for (int i = 0; i < 1000; i++) {
        size_t split = (size_t)i % 97 + 1;
        assert_int_equal(feed_all(p, b.data, b.len, &split, 1, dump, sizeof(dump), &err_at),
                         POLICY_MORE);
        assert_int_equal(feed_all(p, u.data, u.len, &split, 1, dump, sizeof(dump), &err_at),
                         POLICY_MORE);
    }
    assert_int_equal(alloc_count, 0);
    policy_parser_free(p);
    free(b.data);
    free(u.data);
}

/* A request that makes the parser allocate several times: the parser, its buffer,
 * growth of the buffer for a long value, and growth of the unknown-attribute arrays. */
static size_t build_big_request(char *out, size_t outsz)
{
    size_t o = 0;
    o += (size_t)snprintf(out + o, outsz - o, "request=smtpd_access_policy\nsender=");
    memset(out + o, 's', 9000);
    o += 9000;
    for (int i = 0; i < 20; i++)
        o += (size_t)snprintf(out + o, outsz - o, "\nx%d=%d", i, i);
    o += (size_t)snprintf(out + o, outsz - o, "\nprotocol_state=RCPT\n\n");
    assert_true(o < outsz);
    return o;
}

static void test_policy_survives_malloc_failure(void **state)
{
    (void)state;
    static char req[16384], want[16384], got[16384];
    size_t len = build_big_request(req, sizeof(req));
    size_t err_at;
    struct policy_parser *ref = policy_parser_new(NULL);
    assert_non_null(ref);
    assert_int_equal(feed_all(ref, req, len, NULL, 0, want, sizeof(want), &err_at), POLICY_MORE);
    policy_parser_free(ref);

    long n;
    long failures = 0;
    for (n = 1; n < 1000; n++) {
        alloc_reset(n);
        struct policy_parser *p = policy_parser_new(NULL);
        if (!p) {
            /* A clean NULL, with the failed allocation the last one tried. */
            assert_int_equal(alloc_count, n);
            failures++;
            continue;
        }
        int rc = feed_all(p, req, len, NULL, 0, got, sizeof(got), &err_at);
        bool failed = alloc_count >= n;
        if (rc == POLICY_ERR_NOMEM) {
            assert_true(failed);
            failures++;
            /* The state is intact: the rest of the input, fed again, completes the
             * same request. */
            alloc_reset(0);
            size_t used = 0;
            assert_int_equal(policy_parser_feed(p, req + err_at, len - err_at, &used), POLICY_DONE);
            assert_int_equal(err_at + used, len);
            request_dump(policy_parser_request(p), got, sizeof(got));
        } else {
            assert_int_equal(rc, POLICY_MORE);
        }
        assert_string_equal(got, want);
        policy_parser_free(p);
        if (!failed)
            break;
    }
    alloc_reset(0);
    assert_true(n < 1000);
    /* The parser, its buffer, growth to 16 KiB, then the two extra arrays twice. */
    assert_true(failures >= 5);
}

/* --- encoder ----------------------------------------------------------------------- */

static void test_policy_encode_response(void **state)
{
    (void)state;
    static char big[POLICY_MAX_ACTION + 2];
    memset(big, 'x', sizeof(big));
    memcpy(big, "REJECT ", 7);
    static const struct {
        const char *action;
        size_t len; /* 0: strlen */
        size_t outsz;
        int ret;
        const char *want;
    } cases[] = {
        {"DUNNO", 0, 64, 14, "action=DUNNO\n\n"},
        {"450 4.7.1 rate limit exceeded", 0, 64, 38, "action=450 4.7.1 rate limit exceeded\n\n"},
        {"DUNNO", 0, 15, 14, "action=DUNNO\n\n"},
        {"DUNNO", 0, 14, -ENOSPC, NULL},
        {"DUNNO", 0, 0, -ENOSPC, NULL},
        {"", 0, 64, -EINVAL, NULL},
        {"REJECT a\nb", 0, 64, -EINVAL, NULL},
        {"REJECT a\rb", 0, 64, -EINVAL, NULL},
        {"REJECT a\0b", 10, 64, -EINVAL, NULL},
        {"DUNNO\n", 0, 64, -EINVAL, NULL},
        {big, POLICY_MAX_ACTION, sizeof(big) + 16, POLICY_MAX_ACTION + 9, NULL},
        {big, POLICY_MAX_ACTION + 1, sizeof(big) + 16, -EINVAL, NULL},
    };
    static char out[POLICY_MAX_ACTION + 64];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].action);
        memset(out, '#', sizeof(out));
        int ret = policy_encode_response(cases[i].action, len, out, cases[i].outsz);
        assert_int_equal(ret, cases[i].ret);
        if (ret < 0)
            continue;
        assert_int_equal(strlen(out), (size_t)ret);
        if (cases[i].want)
            assert_string_equal(out, cases[i].want);
        assert_memory_equal(out, "action=", 7);
        assert_memory_equal(out + 7, cases[i].action, len);
        assert_memory_equal(out + ret - 2, "\n\n", 2);
        assert_null(memchr(out, '\n', (size_t)ret - 2));
    }
    assert_int_equal(policy_encode_response(NULL, 5, out, sizeof(out)), -EINVAL);
    assert_int_equal(policy_encode_response("DUNNO", 5, NULL, 0), -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_attr_lookup_every_name),
        cmocka_unit_test(test_policy_parses_postfix37_request),
        cmocka_unit_test(test_policy_parses_postfix312_attributes),
        cmocka_unit_test(test_policy_crlf_is_stripped),
        cmocka_unit_test(test_policy_splits_at_every_offset),
        cmocka_unit_test(test_policy_pipelined_requests),
        cmocka_unit_test(test_policy_repeated_attribute_last_wins),
        cmocka_unit_test(test_policy_empty_and_missing_values),
        cmocka_unit_test(test_policy_unknown_attributes_kept),
        cmocka_unit_test(test_policy_many_unknown_attributes),
        cmocka_unit_test(test_policy_protocol_state_values),
        cmocka_unit_test(test_policy_pending_and_reset),
        cmocka_unit_test(test_policy_rejects_bad_input),
        cmocka_unit_test(test_policy_limits_are_inclusive),
        cmocka_unit_test(test_policy_error_seed_files),
        cmocka_unit_test(test_policy_rejects_line_over_limit_early),
        cmocka_unit_test(test_policy_no_allocation_in_steady_state),
        cmocka_unit_test(test_policy_survives_malloc_failure),
        cmocka_unit_test(test_policy_encode_response),
        cmocka_unit_test(test_policy_queue_id_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
