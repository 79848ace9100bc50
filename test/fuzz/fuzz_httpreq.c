/* Fuzz target for lib/httpreq.c: the input is one connection's bytes. It is parsed whole
 * and again in uneven chunks; both must agree on the status and the bytes consumed, and
 * a complete head must hold only what the parser promises (a path, field names that are
 * tokens, values without CR, LF or NUL). The first byte picks smaller limits sometimes,
 * so the caps are hit often. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "httpreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_request(const struct httpreq *r, const struct httpreq_limits *lim)
{
    assert(r->method != HTTPREQ_NONE);
    assert(r->method_name && strlen(r->method_name) >= 1);
    assert(r->path && (r->path[0] == '/' || strcmp(r->path, "*") == 0));
    for (const char *c = r->path; *c; c++)
        assert(*c > 0x20 && *c < 0x7f);
    assert(r->version_minor == 0 || r->version_minor == 1);
    assert(r->version_minor == 0 || r->host);
    assert(r->content_length == -1 || r->content_length == 0);
    assert(r->n_headers <= (lim->max_headers ? lim->max_headers : HTTPREQ_DEFAULT_MAX_HEADERS));
    for (size_t i = 0; i < r->n_headers; i++) {
        const struct httpreq_header *h = &r->headers[i];
        assert(strlen(h->name) == h->name_len && h->name_len > 0);
        assert(strlen(h->value) == h->value_len);
        assert(!strpbrk(h->name, " \t:\r\n"));
        assert(!strpbrk(h->value, "\r\n"));
        assert(h->value_len == 0 ||
               (h->value[0] != ' ' && h->value[h->value_len - 1] != ' ' && h->value[0] != '\t'));
        assert(httpreq_header(r, h->name) != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct httpreq_limits lim = {0};
    if (size > 0 && (data[0] & 1)) {
        lim.max_head = 16 + data[0];
        lim.max_headers = 1 + (data[0] >> 5);
        lim.max_method = 1 + (data[0] & 7);
    }
    const char *in = (const char *)data;

    struct httpreq_parser *whole = httpreq_parser_new(&lim);
    struct httpreq_parser *parts = httpreq_parser_new(&lim);
    if (!whole || !parts) {
        httpreq_parser_free(whole);
        httpreq_parser_free(parts);
        return 0;
    }
    size_t used_whole = 0;
    int st_whole = httpreq_parser_feed(whole, in, size, &used_whole);
    assert(used_whole <= size);
    assert(st_whole >= HTTPREQ_ERR_BODY && st_whole <= HTTPREQ_DONE);
    assert(st_whole != HTTPREQ_MORE || used_whole == size);

    size_t off = 0, step = 1;
    int st = HTTPREQ_MORE;
    while (off < size) {
        size_t n = size - off < step ? size - off : step, used = 0;
        st = httpreq_parser_feed(parts, in + off, n, &used);
        assert(used <= n);
        off += used;
        if (st != HTTPREQ_MORE)
            break;
        step = step * 5 % 31 + 1;
    }
    assert(st == st_whole);
    assert(off == used_whole);
    if (st == HTTPREQ_DONE) {
        check_request(httpreq_parser_request(whole), &lim);
        check_request(httpreq_parser_request(parts), &lim);
        assert(strcmp(httpreq_parser_request(whole)->path, httpreq_parser_request(parts)->path) ==
               0);
    } else {
        assert(httpreq_parser_request(whole) == NULL);
    }
    assert(httpreq_status_code(st) >= 0 && httpreq_strerror(st) != NULL);
    httpreq_parser_free(whole);
    httpreq_parser_free(parts);
    return 0;
}
