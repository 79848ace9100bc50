/* Unit tests of lib/window.c: placeholder until the module lands. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "window.h"

static void test_window_placeholder(void **state)
{
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_placeholder),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
