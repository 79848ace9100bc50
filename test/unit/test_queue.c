/* Unit tests of lib/queue.c: placeholder until the module lands. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "queue.h"

static void test_queue_placeholder(void **state)
{
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_placeholder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
