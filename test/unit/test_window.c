/* Unit tests of lib/window.c: the takes of test/data/window/takes.txt (shared with the
 * store contract test), argument checks, expiry, and a randomized check of the promise
 * that no period of W ms ever admits more than the limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "window.h"

struct keyed {
    char name[64];
    struct window w;
};

static void test_window_takes_file(void **state)
{
    (void)state;
    const char *path = TEST_DATA "/window/takes.txt";
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    struct keyed keys[64];
    size_t nkeys = 0, ntakes = 0;
    char line[256];
    unsigned lineno = 0;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n')
            continue;
        char key[64];
        int64_t now, win, limit, amount, count;
        int allowed;
        int n = sscanf(line, "%63s %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " => %d %" SCNd64,
                       key, &now, &win, &limit, &amount, &allowed, &count);
        if (n != 7)
            fail_msg("%s:%u: bad line", path, lineno);
        size_t k;
        for (k = 0; k < nkeys; k++)
            if (strcmp(keys[k].name, key) == 0)
                break;
        if (k == nkeys) {
            assert_true(nkeys < sizeof(keys) / sizeof(keys[0]));
            snprintf(keys[k].name, sizeof(keys[k].name), "%s", key);
            window_init(&keys[k].w);
            nkeys++;
        }
        struct window_result r;
        assert_int_equal(window_take(&keys[k].w, now, win, limit, amount, &r), 0);
        if (r.allowed != (allowed != 0) || r.count != count)
            fail_msg("%s:%u: got %d %" PRId64 ", want %d %" PRId64, path, lineno, r.allowed,
                     r.count, allowed, count);
        ntakes++;
    }
    fclose(f);
    assert_true(ntakes > 50);
}

static void test_window_rejects_bad_arguments(void **state)
{
    (void)state;
    static const struct {
        int64_t now, win, limit, amount;
    } bad[] = {
        {-1, 60000, 1, 1},
        {0, 0, 1, 1},
        {0, -5, 1, 1},
        {0, WINDOW_MAX_MS + 1, 1, 1},
        {0, 60000, -1, 1},
        {0, 60000, 1, -1},
        {0, 60000, WINDOW_MAX_VALUE + 1, 1},
        {0, 60000, 1, WINDOW_MAX_VALUE + 1},
        {WINDOW_MAX_VALUE + 1, 60000, 1, 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct window w;
        window_init(&w);
        struct window_result r = {true, 42};
        assert_int_equal(window_take(&w, bad[i].now, bad[i].win, bad[i].limit, bad[i].amount, &r),
                         -EINVAL);
        assert_int_equal(w.width, 0);
        assert_int_equal(r.count, 42);
    }
    /* The largest values are accepted. */
    struct window w;
    window_init(&w);
    struct window_result r;
    assert_int_equal(
        window_take(&w, WINDOW_MAX_VALUE, WINDOW_MAX_MS, WINDOW_MAX_VALUE, WINDOW_MAX_VALUE, &r),
        0);
    assert_true(r.allowed);
    assert_int_equal(r.count, WINDOW_MAX_VALUE);
}

static void test_window_expired_after_last_slot(void **state)
{
    (void)state;
    struct window w;
    window_init(&w);
    assert_true(window_expired(&w, 0));
    struct window_result r;
    /* Slot 2 of width 6000, counted up to slot 12. */
    assert_int_equal(window_take(&w, 12000, 60000, 5, 1, &r), 0);
    assert_false(window_expired(&w, 12000));
    assert_false(window_expired(&w, 77999));
    assert_true(window_expired(&w, 78000));
    /* A clock far behind: the next take would reset it. */
    assert_false(window_expired(&w, 0));
    assert_int_equal(window_take(&w, 800000, 60000, 5, 1, &r), 0);
    assert_true(window_expired(&w, 0));
}

static void test_window_ttl_covers_counted_slots(void **state)
{
    (void)state;
    /* Written in slot 2 of 6000 ms at 12500: counted until 78000. */
    assert_int_equal(window_ttl_ms(6000, 2, 60000, 12500), 78000 - 12500 + WINDOW_TTL_MARGIN_MS);
    /* 1 ms window: slot 1000 counts until 1002. */
    assert_int_equal(window_ttl_ms(1, 1000, 1, 1000), 2 + WINDOW_TTL_MARGIN_MS);
    assert_true(window_ttl_ms(6000, 2, 60000, 10000000) >= 1);
}

static void test_window_slot_width_rounds_up(void **state)
{
    (void)state;
    static const int64_t cases[][2] = {
        {1, 1}, {9, 1}, {10, 1}, {11, 2}, {15, 2}, {60000, 6000}, {86400000, 8640000},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(window_slot_width(cases[i][0]), cases[i][1]);
}

/* xorshift: a fixed sequence, so a failure repeats. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_window_never_exceeds_limit_in_any_period(void **state)
{
    (void)state;
    static const int64_t windows[] = {1, 7, 15, 1000, 60000};
    uint64_t seed = 0x9e3779b97f4a7c15u;
    enum { TAKES = 4000 };
    static int64_t at[TAKES], amt[TAKES];
    for (size_t wi = 0; wi < sizeof(windows) / sizeof(windows[0]); wi++) {
        int64_t win = windows[wi], limit = 1 + (int64_t)(rng_next(&seed) % 20);
        int64_t width = window_slot_width(win);
        struct window w;
        window_init(&w);
        int64_t now = 1000000;
        size_t n = 0;
        int64_t last_admit = now, longest_wait = 0;
        for (int t = 0; t < TAKES; t++) {
            now += (int64_t)(rng_next(&seed) % (uint64_t)(win / 4 + 2));
            int64_t a = 1 + (int64_t)(rng_next(&seed) % 3);
            struct window_result r;
            assert_int_equal(window_take(&w, now, win, limit, a, &r), 0);
            assert_true(r.count <= limit);
            if (r.allowed) {
                at[n] = now;
                amt[n] = a;
                n++;
                if (now - last_admit > longest_wait)
                    longest_wait = now - last_admit;
                last_admit = now;
            }
        }
        /* Every period [t - W + 1, t] ending at an admission holds at most the limit. */
        size_t lo = 0;
        int64_t sum = 0;
        for (size_t hi = 0; hi < n; hi++) {
            sum += amt[hi];
            while (at[lo] <= at[hi] - win)
                sum -= amt[lo++];
            if (sum > limit)
                fail_msg("W=%" PRId64 ": %" PRId64 " admitted in the period ending %" PRId64, win,
                         sum, at[hi]);
        }
        /* Takes come at most W/4+1 apart: an admission follows within W + 2w + that. */
        assert_true(n > 0);
        assert_true(longest_wait <= win + 2 * width + win / 4 + 1);
    }
}

/* The script's argument: four little-endian IEEE-754 doubles, exact for every value a take
 * accepts. */
static void test_window_lua_args_are_little_endian_doubles(void **state)
{
    (void)state;
    unsigned char out[WINDOW_LUA_ARGS_LEN];
    window_lua_args(1, 2, 0, WINDOW_MAX_VALUE, out);
    static const unsigned char want[WINDOW_LUA_ARGS_LEN] = {
        0, 0, 0, 0, 0, 0, 0xf0, 0x3f, /* 1.0 */
        0, 0, 0, 0, 0, 0, 0x00, 0x40, /* 2.0 */
        0, 0, 0, 0, 0, 0, 0x00, 0x00, /* 0.0 */
        0, 0, 0, 0, 0, 0, 0x10, 0x43, /* 2^50 */
    };
    assert_memory_equal(out, want, sizeof(want));
    /* A millisecond clock value survives the trip exactly. */
    window_lua_args(INT64_C(1795418518725), 60000, 100000000, 1, out);
    uint64_t bits = 0;
    for (int b = 7; b >= 0; b--)
        bits = bits << 8 | out[b];
    double d;
    memcpy(&d, &bits, sizeof(d));
    assert_true(d == 1795418518725.0);
}

/* The span (slots counted) is ceil(W / width) whether found by dividing or, for a
 * window's own width, by multiplying down: the TTL, which uses it, equals the formula
 * with the division, for small and large windows and for other widths. */
static void test_window_span_without_division_is_ceil(void **state)
{
    (void)state;
    static const int64_t big[] = {60000,     3600000,           86400000,
                                  604800000, WINDOW_MAX_MS - 1, WINDOW_MAX_MS};
    for (int64_t w = 1; w < 2000 + 6; w++) {
        int64_t window_ms = w <= 2000 ? w : big[w - 2001];
        int64_t width = window_slot_width(window_ms);
        int64_t widths[] = {width, 1, width + 1, width > 1 ? width - 1 : 1, 7};
        for (size_t k = 0; k < sizeof(widths) / sizeof(widths[0]); k++) {
            int64_t wd = widths[k];
            int64_t span = (window_ms + wd - 1) / wd;
            for (int64_t newest = 0; newest < 3; newest++) {
                int64_t now = newest * wd + 3;
                int64_t want = (newest + span + 1) * wd - now + WINDOW_TTL_MARGIN_MS;
                if (want < 1)
                    want = 1;
                if (window_ttl_ms(wd, newest, window_ms, now) != want)
                    fail_msg("W=%" PRId64 " width=%" PRId64 ": ttl %" PRId64 " != %" PRId64,
                             window_ms, wd, window_ttl_ms(wd, newest, window_ms, now), want);
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_takes_file),
        cmocka_unit_test(test_window_rejects_bad_arguments),
        cmocka_unit_test(test_window_expired_after_last_slot),
        cmocka_unit_test(test_window_ttl_covers_counted_slots),
        cmocka_unit_test(test_window_slot_width_rounds_up),
        cmocka_unit_test(test_window_never_exceeds_limit_in_any_period),
        cmocka_unit_test(test_window_lua_args_are_little_endian_doubles),
        cmocka_unit_test(test_window_span_without_division_is_ceil),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
