/* limits_rt: the run-time overrides of the rate limits (`postsurge limits set RULE VALUE
 * COUNT|unlimited [for DURATION]`), one set for every node sharing the store. Each entry
 * replaces the limit of one rule for one key value, before the rule's override table
 * (precedence: run-time > table > rule). A set is built once (limits_rt_add) and then
 * only read, shared by reference between the daemon and its engines. The text form the
 * store keeps: field "RULE\tVALUE", value "COUNT EXPIRES_MS" (COUNT -1 for unlimited,
 * EXPIRES_MS 0 for no end). Pure: no clock, times are arguments. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "limits_engine.h"

/* Most entries of a set, so the copy each node refreshes every second (one HGETALL
 * of at most about 1 MB) stays bounded; `limits set` past it is refused. */
#define LIMITS_RT_MAX 10000
/* Longest field text: RULE '\t' VALUE and the NUL. */
#define LIMITS_RT_FIELD_MAX (LIMITS_MAX_NAME + 1 + LIMITS_MAX_VALUE + 1)

struct limits_rt_entry {
    char rule[LIMITS_MAX_NAME + 1];
    char value[LIMITS_MAX_VALUE + 1]; /* canonical (limits_value_check) */
    int64_t count;                    /* >= 0, or LIMITS_TABLE_UNLIMITED */
    int64_t expires_ms;               /* wall clock ms, 0: no end */
};

struct limits_rt;

/* An empty set with one reference, or NULL on ENOMEM. */
struct limits_rt *limits_rt_new(void);
/* Takes one more reference; returns rt (NULL stays NULL). */
struct limits_rt *limits_rt_ref(struct limits_rt *rt);
/* Drops a reference; frees with the last. NULL is a no-op. */
void limits_rt_free(struct limits_rt *rt);

/* Adds or replaces the entry of (e->rule, e->value) while the set is being built (before
 * it is shared). Returns 0, -EINVAL (empty or too long rule or value), -E2BIG
 * (LIMITS_RT_MAX entries already) or -ENOMEM. */
int limits_rt_add(struct limits_rt *rt, const struct limits_rt_entry *e);

size_t limits_rt_count(const struct limits_rt *rt);
/* Entry i in insertion order (borrowed), or NULL past the end. */
const struct limits_rt_entry *limits_rt_entry(const struct limits_rt *rt, size_t i);
/* Entries of rule (by name). */
size_t limits_rt_rule_count(const struct limits_rt *rt, const char *rule);

/* The entry of rule and value (vlen bytes, canonical), or NULL. rt may be NULL. */
const struct limits_rt_entry *limits_rt_lookup(const struct limits_rt *rt, const char *rule,
                                               const char *value, size_t vlen);

/* A copy of rt without the entries expired at now_ms and without (rule, value) when
 * rule is not NULL (an unset). Returns the new set (one reference) or NULL on ENOMEM. */
struct limits_rt *limits_rt_copy(const struct limits_rt *rt, int64_t now_ms, const char *rule,
                                 const char *value);
/* True when some entry of rt has expired at now_ms. */
bool limits_rt_has_expired(const struct limits_rt *rt, int64_t now_ms);

/* The store's text of e: field "RULE\tVALUE" and value "COUNT EXPIRES_MS". Return the
 * length, or -ENOSPC. */
int limits_rt_field(const struct limits_rt_entry *e, char *out, size_t outsz);
int limits_rt_value(const struct limits_rt_entry *e, char *out, size_t outsz);
/* Parses the store's text back (the reverse of the two above). Returns 0, or -EINVAL
 * when it is not of that form. The rule and value are checked for form only. */
int limits_rt_parse(const char *field, const char *value, struct limits_rt_entry *out);

/* Parses an administrator's COUNT for rule r as tables take it: an integer (K, M, G for
 * bytes rules), 0 or "unlimited" (LIMITS_TABLE_UNLIMITED). Returns 0, or -EINVAL with
 * a reason in why. */
int limits_rt_count_parse(const struct limits_rule *r, const char *text, int64_t *out, char *why,
                          size_t whysz);
