/* Fuzz target for lib/policy.c. The input is a raw policy stream (seeds under
 * test/data/policy/ are plain requests). It is fed whole, byte by byte and in chunk sizes
 * derived from a hash of the data, under the default limits and under small limits also
 * derived from the data; every way must give the same requests, the same error at the
 * same byte, and requests free of NUL and newline. A prefix of the input is also encoded
 * as a response action. Any violation aborts. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct outcome {
    int status;      /* POLICY_MORE if every byte was consumed, else the error */
    size_t consumed; /* bytes consumed: the input length, or the error's offset */
    size_t n_req;    /* completed requests */
    uint64_t digest; /* of every completed request's content */
};

static uint64_t fnv(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static uint64_t check_string(uint64_t h, const char *s, size_t len)
{
    CHECK(s != NULL);
    CHECK(strlen(s) == len); /* no NUL inside */
    CHECK(memchr(s, '\n', len) == NULL);
    h = fnv(h, &len, sizeof(len));
    return fnv(h, s, len);
}

/* Invariants of a completed request, folded into the digest. */
static uint64_t check_request(uint64_t h, const struct policy_request *r)
{
    CHECK(r != NULL);
    for (int i = 0; i < POLICY_ATTR_COUNT; i++) {
        if (!r->attr[i]) {
            CHECK(r->attr_len[i] == 0);
            continue;
        }
        h = fnv(h, &i, sizeof(i));
        h = check_string(h, r->attr[i], r->attr_len[i]);
    }
    CHECK((r->n_extra == 0) == (r->extra == NULL));
    for (size_t i = 0; i < r->n_extra; i++) {
        size_t nl = strlen(r->extra[i].name);
        CHECK(nl > 0);
        CHECK(memchr(r->extra[i].name, '=', nl) == NULL);
        CHECK(policy_attr_lookup(r->extra[i].name, nl) < 0);
        h = check_string(h, r->extra[i].name, nl);
        h = check_string(h, r->extra[i].value, strlen(r->extra[i].value));
    }
    return fnv(h, &r->state, sizeof(r->state));
}

/* Feeds data in chunks: mode 0 whole, 1 byte by byte, 2 pseudo-random sizes. */
static struct outcome run(struct policy_parser *p, const uint8_t *data, size_t size, int mode,
                          uint64_t seed)
{
    struct outcome o = {POLICY_MORE, 0, 0, 0xcbf29ce484222325ULL};
    size_t pos = 0;
    while (pos < size) {
        size_t chunk = size - pos;
        if (mode == 1)
            chunk = 1;
        else if (mode == 2) {
            uint64_t r = xorshift(&seed);
            size_t c = (r & 3) == 0 ? (size_t)(r >> 8) % 4096 + 1 : (size_t)(r >> 8) % 17 + 1;
            if (c < chunk)
                chunk = c;
        }
        size_t off = 0;
        while (off < chunk) {
            size_t used = SIZE_MAX;
            int rc = policy_parser_feed(p, (const char *)data + pos + off, chunk - off, &used);
            CHECK(used <= chunk - off);
            off += used;
            if (rc < 0) {
                CHECK(rc >= POLICY_ERR_NOMEM);
                o.status = rc;
                o.consumed = pos + off;
                CHECK(o.consumed < size);
                /* Sticky until reset. */
                size_t again = 1;
                CHECK(policy_parser_feed(p, "a=b\n\n", 5, &again) == rc && again == 0);
                return o;
            }
            if (rc == POLICY_DONE) {
                CHECK(used > 0 && data[pos + off - 1] == '\n');
                CHECK(!policy_parser_pending(p));
                o.digest = check_request(o.digest, policy_parser_request(p));
                o.n_req++;
            } else {
                CHECK(rc == POLICY_MORE);
                CHECK(off == chunk); /* every byte consumed */
                CHECK(policy_parser_request(p) == NULL);
            }
        }
        pos += chunk;
    }
    o.consumed = size;
    return o;
}

static void check_limits(const uint8_t *data, size_t size, const struct policy_limits *lim,
                         uint64_t seed)
{
    struct policy_parser *p = policy_parser_new(lim);
    if (!p)
        return;
    struct outcome whole = run(p, data, size, 0, seed);
    if (whole.status != POLICY_ERR_NOMEM) {
        for (int mode = 1; mode <= 2; mode++) {
            policy_parser_reset(p);
            struct outcome o = run(p, data, size, mode, seed);
            if (o.status == POLICY_ERR_NOMEM)
                continue;
            CHECK(o.status == whole.status);
            CHECK(o.consumed == whole.consumed);
            CHECK(o.n_req == whole.n_req);
            CHECK(o.digest == whole.digest);
        }
    }
    policy_parser_free(p);
}

static void check_encoder(const uint8_t *data, size_t size)
{
    static char out[POLICY_MAX_ACTION + 64];
    size_t len = size < POLICY_MAX_ACTION + 2 ? size : POLICY_MAX_ACTION + 2;
    const char *a = (const char *)data;
    bool valid = len > 0 && len <= POLICY_MAX_ACTION && !memchr(a, '\n', len) &&
                 !memchr(a, '\r', len) && !memchr(a, '\0', len);
    int ret = policy_encode_response(a, len, out, sizeof(out));
    if (!valid) {
        CHECK(ret < 0);
        return;
    }
    CHECK(ret == (int)len + 9);
    CHECK(memcmp(out, "action=", 7) == 0);
    CHECK(memcmp(out + 7, a, len) == 0);
    CHECK(memchr(out, '\n', (size_t)ret - 2) == NULL);
    CHECK(memcmp(out + ret - 2, "\n\n", 3) == 0);
    /* One byte short of room is refused, not truncated. */
    CHECK(policy_encode_response(a, len, out, (size_t)ret) < 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t h = fnv(0xcbf29ce484222325ULL, data, size);
    check_limits(data, size, NULL, h | 1);
    struct policy_limits small = {
        .max_line = (size_t)(h >> 8) % 64 + 1,
        .max_attrs = (size_t)(h >> 16) % 8 + 1,
        .max_request = (size_t)(h >> 24) % 512 + 1,
    };
    check_limits(data, size, &small, (h >> 1) | 1);
    check_encoder(data, size);
    return 0;
}
