/* Unit tests of lib/printable.c: which bytes are escaped and how (C0, DEL, C1 as UTF-8,
 * invalid UTF-8), that valid UTF-8 and backslashes pass, that escaping is idempotent,
 * and truncation. Table of input and expected text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "printable.h"

struct esc_case {
    const char *in;
    size_t len; /* 0: strlen(in) */
    const char *out;
};

static const struct esc_case esc_cases[] = {
    {"plain text 123 <a@b.example>", 0, "plain text 123 <a@b.example>"},
    {"evil\r2026-12-02 FORGED\x1b[2J\x07", 0, "evil\\r2026-12-02 FORGED\\x1b[2J\\x07"},
    {"a\x1b]0;title\x07z", 0, "a\\x1b]0;title\\x07z"},
    {"tab\there\nnl", 0, "tab\\there\\nnl"},
    {"del\x7f", 0, "del\\x7f"},
    {"nul\0x", 5, "nul\\x00x"},
    {"bad\xff\xfe", 0, "bad\\xff\\xfe"},
    {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 0, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
    {"c1 \xc2\x85 \xc2\x9b", 0, "c1 \\xc2\\x85 \\xc2\\x9b"},
    {"nbsp \xc2\xa0", 0, "nbsp \xc2\xa0"},
    {"overlong \xc0\xaf", 0, "overlong \\xc0\\xaf"},
    {"overlong3 \xe0\x80\xaf", 0, "overlong3 \\xe0\\x80\\xaf"},
    {"surrogate \xed\xa0\x80", 0, "surrogate \\xed\\xa0\\x80"},
    {"too big \xf4\x90\x80\x80", 0, "too big \\xf4\\x90\\x80\\x80"},
    {"cut \xe2\x82", 0, "cut \\xe2\\x82"},
    {"back\\slash \\x41", 0, "back\\slash \\x41"},
};

static void test_printable_escapes_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(esc_cases) / sizeof(esc_cases[0]); i++) {
        const struct esc_case *c = &esc_cases[i];
        size_t len = c->len ? c->len : strlen(c->in);
        char out[256];
        bool changes = strcmp(c->in, c->out) != 0 || c->len;

        assert_int_equal(printable_needed(c->in, len), changes);
        size_t n = printable_escape(out, sizeof(out), c->in, len, false);
        assert_string_equal(out, c->out);
        assert_int_equal(n, strlen(c->out));
        assert_int_equal(printable_escape(NULL, 0, c->in, len, false), n);
        /* Escaped text needs no more escaping: a second pass changes nothing. */
        assert_false(printable_needed(out, n));
    }
}

static void test_printable_keeps_newline_when_asked(void **state)
{
    char out[64];
    (void)state;
    printable_escape(out, sizeof(out), "line1\nline\r2\n", 13, true);
    assert_string_equal(out, "line1\nline\\r2\n");
}

static void test_printable_truncates_at_whole_escape(void **state)
{
    char out[8];
    (void)state;
    /* "ab" and "\x1b" fit (6 bytes and the NUL); the next escape does not, and nothing of
     * it is written. */
    size_t n = printable_escape(out, sizeof(out), "ab\x1b\x07", 4, false);
    assert_int_equal(n, 10);
    assert_string_equal(out, "ab\\x1b");
    /* A multi-byte character that does not fit whole is left out too. */
    n = printable_escape(out, 4, "ab\xe2\x82\xac", 5, false);
    assert_int_equal(n, 5);
    assert_string_equal(out, "ab");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_printable_escapes_table),
        cmocka_unit_test(test_printable_keeps_newline_when_asked),
        cmocka_unit_test(test_printable_truncates_at_whole_escape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
