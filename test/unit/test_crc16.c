/* Redis Cluster hash slots (policyd/store/crc16.c): the CRC16 check value, slots that
 * Redis itself reports (CLUSTER KEYSLOT), and the hash tag rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "crc16.h"

static unsigned slot(const char *k)
{
    return crc16_key_slot(k, strlen(k));
}

static void test_crc16_check_value(void **state)
{
    (void)state;
    assert_int_equal(crc16("123456789", 9), 0x31C3);
    assert_int_equal(crc16("", 0), 0);
}

static void test_crc16_slots_as_redis(void **state)
{
    (void)state;
    /* From CLUSTER KEYSLOT of redis-server 7. */
    assert_int_equal(slot("foo"), 12182);
    assert_int_equal(slot("bar"), 5061);
    assert_int_equal(slot("postsurge:nodes"), slot("postsurge:nodes"));
    assert_int_equal(slot("{user1000}.following"), slot("{user1000}.followers"));
    assert_int_equal(slot("{user1000}.following"), slot("user1000"));
    /* "{}" is not a tag; only the first '{' counts; an unclosed '{' is no tag. */
    assert_int_equal(slot("foo{}{bar}"), crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(slot("foo{{bar}}zap"), slot("{bar"));
    assert_int_equal(slot("foo{bar}{zap}"), slot("bar"));
    assert_int_equal(slot("{abc"), crc16("{abc", 4) & 16383);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_check_value),
        cmocka_unit_test(test_crc16_slots_as_redis),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
