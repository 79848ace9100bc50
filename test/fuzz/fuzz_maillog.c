/* Fuzz target for lib/maillog.c: the input is a log stream fed to the line splitter in
 * uneven chunks (a small max_line so cutting is exercised); every line is parsed and every
 * string field of the record must be NUL-terminated within its array. */
#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "maillog.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_record(const struct maillog_record *r)
{
    assert(memchr(r->timestamp, '\0', sizeof(r->timestamp)));
    assert(memchr(r->host, '\0', sizeof(r->host)));
    assert(memchr(r->syslog_name, '\0', sizeof(r->syslog_name)));
    assert(memchr(r->daemon, '\0', sizeof(r->daemon)));
    assert(memchr(r->client_name, '\0', sizeof(r->client_name)));
    assert(memchr(r->client_addr, '\0', sizeof(r->client_addr)));
    assert(memchr(r->recipient, '\0', sizeof(r->recipient)));
    assert(memchr(r->domain, '\0', sizeof(r->domain)));
    assert(memchr(r->text, '\0', sizeof(r->text)));
    assert(memchr(r->key, '\0', sizeof(r->key)));
    assert(memchr(r->service, '\0', sizeof(r->service)));
    assert(memchr(r->status_word, '\0', sizeof(r->status_word)));
    assert(memchr(r->sender, '\0', sizeof(r->sender)));
    assert(memchr(r->sasl_method, '\0', sizeof(r->sasl_method)));
    assert(memchr(r->sasl_username, '\0', sizeof(r->sasl_username)));
    assert((int)r->kind >= MAILLOG_OTHER && (int)r->kind <= MAILLOG_AUTH_FAILED);
    enum maillog_attack a = maillog_attack_class(r);
    assert(a == MAILLOG_ATTACK_NONE || r->client_addr[0]);
    assert(a != MAILLOG_ATTACK_AUTH || r->kind == MAILLOG_AUTH_FAILED);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Whole input as one line: the parser alone. */
    struct maillog_record rec;
    maillog_parse_line((const char *)data, size, &rec);
    check_record(&rec);

    struct maillog_splitter *sp = maillog_splitter_new(size % 2 ? 200 : 0);
    if (!sp)
        return 0;
    size_t off = 0, step = 1;
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        if (maillog_splitter_feed(sp, (const char *)data + off, n) != 0)
            break;
        off += n;
        step = step * 3 % 97 + 1;
        const char *line;
        size_t len;
        bool cut;
        while (maillog_splitter_next(sp, &line, &len, &cut) == 1) {
            assert(!memchr(line, '\n', len));
            maillog_parse_line(line, len, &rec);
            check_record(&rec);
        }
    }
    maillog_splitter_free(sp);
    return 0;
}
