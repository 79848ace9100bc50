/* Unit tests of lib/stress.c: placeholder until the module lands. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "stress.h"

static void test_stress_placeholder(void **state)
{
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_placeholder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
