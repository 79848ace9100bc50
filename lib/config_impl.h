/* config_impl: the settings table and what the three sources of the config module share
 * (config.c holds the table and typed values, config_parse.c reads files through it,
 * config_ref.c writes settings and the reference from it). Not for other modules: they
 * go through config.h. */
#pragma once

#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cf_type { CF_STRING, CF_BOOL, CF_INT, CF_TIME, CF_SIZE, CF_MODE, CF_DOUBLE, CF_ENUM };

/* CF_LINES: continuation lines stay separate lines ('\n'), for rule blocks and lists. */
#define CF_LINES 1u

/* A value checker for strings: returns NULL when fine, else why not (static text). */
typedef const char *cf_check_fn(const char *value);

struct cf_entry {
    const char *name;
    enum cf_type type;
    const char *def;
    size_t off;
    int64_t min, max;  /* CF_INT, CF_TIME (ms), CF_SIZE, CF_MODE */
    double dmin, dmax; /* CF_DOUBLE */
    const char *words; /* CF_ENUM: allowed words separated by '|' */
    cf_check_fn *check;
    unsigned flags;
    const char *group;
    const char *doc;
};

/* Every setting, in reference order (grouped by .group); cf_count entries. */
extern const struct cf_entry cf_table[];
extern const size_t cf_count;
#define CF_COUNT cf_count

/* Allocation through the hooks of config_set_alloc_funcs(). */
void *cf_malloc(size_t n);
void *cf_realloc(void *p, size_t n);
void cf_free(void *p);
void *cf_calloc(size_t n, size_t size);
char *cf_strndup(const char *s, size_t n);
char *cf_strdup(const char *s);

/* The entry named name[0..len), or NULL. */
const struct cf_entry *cf_find(const char *name, size_t len);
/* e's position in cf_table (the index of per-setting arrays in struct config). */
size_t cf_index(const struct cf_entry *e);
/* Blank as in main.cf: space, tab, newline, CR, VT, FF. */
bool cf_is_space(char c);

/* A time in ms as its largest exact unit ("5m", "250ms"); a size likewise ("64M"). */
void cf_fmt_time(int64_t ms, char *buf, size_t len);
void cf_fmt_size(int64_t n, char *buf, size_t len);
/* Describes the accepted form and range of an entry, for messages and the reference. */
void cf_fmt_range(const struct cf_entry *e, char *buf, size_t len);

/* Stores value text into cfg's field for e. Returns 0, -EINVAL with *why set, or
 * -ENOMEM. */
int cf_apply(struct config *cfg, const struct cf_entry *e, const char *value, const char **why);
/* Formats a setting's value. Strings are borrowed from cfg (*tmp unused); numbers are
 * written to tmp. */
const char *cf_format(const struct config *cfg, const struct cf_entry *e, char *tmp, size_t len);
/* Whether a and b hold the same value for e. */
bool cf_entry_equal(const struct config *a, const struct config *b, const struct cf_entry *e);
/* A config holding every default, named after source; NULL when out of memory. */
struct config *config_alloc(const char *source);

/* Parses s[0..n) as a decimal integer from 0 to max (no sign, no blanks). */
bool cf_parse_uint_n(const char *s, size_t n, int64_t max, int64_t *out);
