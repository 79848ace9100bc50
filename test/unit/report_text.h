/* report_text: what a report writer writes for r, as a new string (free() it), for the
 * report's unit tests; a failed write fails the test. Include after cmocka.h and
 * report.h. */
#pragma once

#include <stdio.h>

/* w's output for r (its length in *len when len is not NULL). */
static inline char *report_render(const struct report *r, int (*w)(const struct report *, FILE *),
                                  size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    assert_int_equal(w(r, f), 0);
    fclose(f);
    if (len)
        *len = n;
    return buf;
}

/* The text report. */
static inline char *report_text(const struct report *r)
{
    return report_render(r, report_write_text, NULL);
}
