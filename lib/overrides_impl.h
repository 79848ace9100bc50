/* overrides_impl: what the two sources of the overrides module share (overrides.c parses
 * and checks profiles, overrides_journal.c keeps the journal and plans from it): the
 * checks every word passes before it may reach a command line, and postconf listings.
 * Not for other modules: they go through overrides.h. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Postfix parameter names: letters, digits, underscore, starting with a letter or digit. */
bool overrides_valid_param_name(const char *s);
/* master.cf service names ("smtp", "127.0.0.1:2525", "[::1]:25"); "*" when allow_star. */
bool overrides_valid_service(const char *s, bool allow_star);
/* master.cf service types: inet, unix, unix-dgram, fifo, pass. */
bool overrides_valid_type(const char *s);
/* NULL when postsurge may write value s (to master.cf when master), else why not. */
const char *overrides_value_problem(const char *s, bool master);
/* Whether a prior value read through postconf can be passed back as one argv word. */
bool overrides_valid_prior(const char *s);

/* A "key = value" listing from postconf -n, -P or -d. */
struct kv {
    char *key;
    char *value;
};

struct kvlist {
    struct kv *v;
    size_t n, cap;
};

/* Parses postconf output text[0..len) into l (which needs no set-up); 0 or -ENOMEM. On
 * failure l holds what was parsed so far: clear it either way. */
int overrides_kvlist_parse(const char *text, size_t len, struct kvlist *l);
/* The value of key, borrowed from l, or NULL. */
const char *overrides_kvlist_get(const struct kvlist *l, const char *key);
void overrides_kvlist_clear(struct kvlist *l);

static inline bool is_alnum(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* strdup that maps NULL to NULL and reports failure through *ok. */
static inline char *dup_or_null(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *ok = false;
    return d;
}

static inline bool streq_null(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}
