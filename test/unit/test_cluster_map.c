/* Redis Cluster routing read from replies (policyd/store/cluster_map.c): MOVED and ASK
 * redirects, good and malformed, and CLUSTER SLOTS entries built as hiredis builds them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "cluster_map.h"

static void test_cluster_map_parses_redirects(void **state)
{
    (void)state;
    char ip[64];
    unsigned slot;
    int port;
    assert_true(
        cluster_map_parse_redirect("MOVED 3999 127.0.0.1:6381", &slot, ip, sizeof(ip), &port));
    assert_int_equal(slot, 3999);
    assert_string_equal(ip, "127.0.0.1");
    assert_int_equal(port, 6381);
    assert_true(cluster_map_parse_redirect("ASK 0 ::1:7000", &slot, ip, sizeof(ip), &port));
    assert_int_equal(slot, 0);
    assert_string_equal(ip, "::1");
    assert_int_equal(port, 7000);
}

static void test_cluster_map_rejects_bad_redirects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "MOVED",                      /* no slot */
        "MOVED 16384 127.0.0.1:6381", /* slot out of range */
        "MOVED x 127.0.0.1:6381",     /* not a number */
        "MOVED 1 127.0.0.1",          /* no port */
        "MOVED 1 :6381",              /* no address */
        "MOVED 1 127.0.0.1:0",        /* port 0 */
        "MOVED 1 127.0.0.1:70000",    /* port out of range */
    };
    char ip[64];
    unsigned slot;
    int port;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(cluster_map_parse_redirect(bad[i], &slot, ip, sizeof(ip), &port));
    /* An address longer than the buffer is refused, not cut. */
    char small[4];
    assert_false(
        cluster_map_parse_redirect("MOVED 1 127.0.0.1:6381", &slot, small, sizeof(small), &port));
}

/* One CLUSTER SLOTS entry: from, to, [ip, port, id]. */
static redisReply *entry(long long from, long long to, const char *ip, long long port)
{
    redisReply *e = calloc(1, sizeof(*e)), *node = calloc(1, sizeof(*node));
    e->type = node->type = REDIS_REPLY_ARRAY;
    e->elements = 3;
    e->element = calloc(3, sizeof(redisReply *));
    node->elements = 2;
    node->element = calloc(2, sizeof(redisReply *));
    for (int i = 0; i < 2; i++) {
        e->element[i] = calloc(1, sizeof(redisReply));
        e->element[i]->type = REDIS_REPLY_INTEGER;
    }
    e->element[0]->integer = from;
    e->element[1]->integer = to;
    node->element[0] = calloc(1, sizeof(redisReply));
    node->element[0]->type = REDIS_REPLY_STRING;
    node->element[0]->str = strdup(ip);
    node->element[0]->len = strlen(ip);
    node->element[1] = calloc(1, sizeof(redisReply));
    node->element[1]->type = REDIS_REPLY_INTEGER;
    node->element[1]->integer = port;
    e->element[2] = node;
    return e;
}

static void test_cluster_map_reads_slots_entries(void **state)
{
    (void)state;
    unsigned from, to;
    const char *ip;
    int port;
    redisReply *e = entry(0, 5460, "127.0.0.1", 7000);
    assert_true(cluster_map_slots_entry(e, &from, &to, &ip, &port));
    assert_int_equal(from, 0);
    assert_int_equal(to, 5460);
    assert_string_equal(ip, "127.0.0.1");
    assert_int_equal(port, 7000);
    freeReplyObject(e);
    /* Out of range or reversed slots, a bad port, a node that is not an array. */
    redisReply *bad[] = {entry(-1, 10, "a", 1), entry(0, 16384, "a", 1), entry(10, 9, "a", 1),
                         entry(0, 1, "a", 0), entry(0, 1, "a", 65536)};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_false(cluster_map_slots_entry(bad[i], &from, &to, &ip, &port));
        freeReplyObject(bad[i]);
    }
    e = entry(0, 1, "a", 1);
    e->element[2]->type = REDIS_REPLY_STRING;
    assert_false(cluster_map_slots_entry(e, &from, &to, &ip, &port));
    e->element[2]->type = REDIS_REPLY_ARRAY;
    freeReplyObject(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster_map_parses_redirects),
        cmocka_unit_test(test_cluster_map_rejects_bad_redirects),
        cmocka_unit_test(test_cluster_map_reads_slots_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
