/* limits_rt: a set of run-time overrides (see limits_rt.h): the entries in an array, in
 * insertion order, indexed by an open-addressing hash of "RULE\tVALUE". */
#include "limits_rt.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "limits_impl.h"

struct limits_rt {
    unsigned refs;
    struct limits_rt_entry *v;
    size_t n, cap;
    uint32_t *slot; /* index + 1 into v, 0: free */
    size_t nslots;  /* power of two, >= 2 n */
};

struct limits_rt *limits_rt_new(void)
{
    struct limits_rt *rt = calloc(1, sizeof(*rt));
    if (rt != NULL)
        rt->refs = 1;
    return rt;
}

struct limits_rt *limits_rt_ref(struct limits_rt *rt)
{
    if (rt != NULL)
        rt->refs++;
    return rt;
}

void limits_rt_free(struct limits_rt *rt)
{
    if (rt == NULL || --rt->refs > 0)
        return;
    free(rt->v);
    free(rt->slot);
    free(rt);
}

static uint64_t entry_hash(const char *rule, const char *value, size_t vlen)
{
    uint64_t h = fnv64_add(FNV64_OFFSET, rule, strlen(rule));
    h = fnv64_add(h, "\t", 1);
    return fnv64_add(h, value, vlen);
}

/* The slot of (rule, value): the one holding it, or the free one where it would go. */
static size_t slot_of(const struct limits_rt *rt, const char *rule, const char *value, size_t vlen)
{
    size_t mask = rt->nslots - 1;
    for (size_t i = entry_hash(rule, value, vlen) & mask;; i = (i + 1) & mask) {
        if (rt->slot[i] == 0)
            return i;
        const struct limits_rt_entry *e = &rt->v[rt->slot[i] - 1];
        if (strcmp(e->rule, rule) == 0 && strlen(e->value) == vlen &&
            memcmp(e->value, value, vlen) == 0)
            return i;
    }
}

static int rehash(struct limits_rt *rt, size_t nslots)
{
    uint32_t *ns = calloc(nslots, sizeof(*ns));
    if (ns == NULL)
        return -ENOMEM;
    free(rt->slot);
    rt->slot = ns;
    rt->nslots = nslots;
    for (size_t k = 0; k < rt->n; k++)
        rt->slot[slot_of(rt, rt->v[k].rule, rt->v[k].value, strlen(rt->v[k].value))] =
            (uint32_t)(k + 1);
    return 0;
}

int limits_rt_add(struct limits_rt *rt, const struct limits_rt_entry *e)
{
    size_t rl = strnlen(e->rule, sizeof(e->rule)), vl = strnlen(e->value, sizeof(e->value));
    if (rt == NULL || rl == 0 || rl >= sizeof(e->rule) || vl == 0 || vl >= sizeof(e->value))
        return -EINVAL;
    if (rt->nslots > 0) {
        size_t i = slot_of(rt, e->rule, e->value, vl);
        if (rt->slot[i] != 0) {
            rt->v[rt->slot[i] - 1] = *e;
            return 0;
        }
    }
    if (rt->n >= LIMITS_RT_MAX)
        return -E2BIG;
    if (rt->n == rt->cap) {
        size_t ncap = rt->cap ? rt->cap * 2 : 16;
        struct limits_rt_entry *nv = realloc(rt->v, ncap * sizeof(*nv));
        if (nv == NULL)
            return -ENOMEM;
        rt->v = nv;
        rt->cap = ncap;
    }
    if ((rt->n + 1) * 2 > rt->nslots && rehash(rt, rt->nslots ? rt->nslots * 2 : 32) < 0)
        return -ENOMEM;
    rt->v[rt->n] = *e;
    rt->slot[slot_of(rt, e->rule, e->value, vl)] = (uint32_t)(rt->n + 1);
    rt->n++;
    return 0;
}

size_t limits_rt_count(const struct limits_rt *rt)
{
    return rt ? rt->n : 0;
}

const struct limits_rt_entry *limits_rt_entry(const struct limits_rt *rt, size_t i)
{
    return rt && i < rt->n ? &rt->v[i] : NULL;
}

size_t limits_rt_rule_count(const struct limits_rt *rt, const char *rule)
{
    size_t c = 0;
    for (size_t i = 0; i < limits_rt_count(rt); i++)
        c += strcmp(rt->v[i].rule, rule) == 0;
    return c;
}

const struct limits_rt_entry *limits_rt_lookup(const struct limits_rt *rt, const char *rule,
                                               const char *value, size_t vlen)
{
    if (rt == NULL || rt->n == 0)
        return NULL;
    size_t i = slot_of(rt, rule, value, vlen);
    return rt->slot[i] ? &rt->v[rt->slot[i] - 1] : NULL;
}

static bool expired(const struct limits_rt_entry *e, int64_t now_ms)
{
    return e->expires_ms > 0 && e->expires_ms <= now_ms;
}

bool limits_rt_has_expired(const struct limits_rt *rt, int64_t now_ms)
{
    for (size_t i = 0; i < limits_rt_count(rt); i++)
        if (expired(&rt->v[i], now_ms))
            return true;
    return false;
}

struct limits_rt *limits_rt_copy(const struct limits_rt *rt, int64_t now_ms, const char *rule,
                                 const char *value)
{
    struct limits_rt *c = limits_rt_new();
    for (size_t i = 0; c != NULL && i < limits_rt_count(rt); i++) {
        const struct limits_rt_entry *e = &rt->v[i];
        if (expired(e, now_ms) ||
            (rule != NULL && strcmp(e->rule, rule) == 0 && strcmp(e->value, value) == 0))
            continue;
        if (limits_rt_add(c, e) < 0) {
            limits_rt_free(c);
            c = NULL;
        }
    }
    return c;
}

int limits_rt_field(const struct limits_rt_entry *e, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%s\t%s", e->rule, e->value);
    return n < 0 || (size_t)n >= outsz ? -ENOSPC : n;
}

int limits_rt_value(const struct limits_rt_entry *e, char *out, size_t outsz)
{
    int n = snprintf(out, outsz, "%" PRId64 " %" PRId64, e->count, e->expires_ms);
    return n < 0 || (size_t)n >= outsz ? -ENOSPC : n;
}

/* A decimal integer of at most 18 digits, with a leading '-' when neg is allowed. */
static bool parse_int(const char *p, const char *end, bool neg, int64_t *out)
{
    bool minus = neg && p < end && *p == '-';
    p += minus;
    if (p == end || end - p > 18)
        return false;
    int64_t v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = minus ? -v : v;
    return true;
}

int limits_rt_parse(const char *field, const char *value, struct limits_rt_entry *out)
{
    memset(out, 0, sizeof(*out));
    const char *tab = strchr(field, '\t');
    if (tab == NULL || tab == field || (size_t)(tab - field) > LIMITS_MAX_NAME)
        return -EINVAL;
    size_t vl = strlen(tab + 1);
    if (vl == 0 || vl > LIMITS_MAX_VALUE || strchr(tab + 1, '\t') != NULL)
        return -EINVAL;
    memcpy(out->rule, field, (size_t)(tab - field));
    memcpy(out->value, tab + 1, vl);
    const char *sp = strchr(value, ' ');
    if (sp == NULL || !parse_int(value, sp, true, &out->count) ||
        !parse_int(sp + 1, sp + 1 + strlen(sp + 1), false, &out->expires_ms))
        return -EINVAL;
    if (out->count < 0 && out->count != LIMITS_TABLE_UNLIMITED)
        return -EINVAL;
    return 0;
}

int limits_rt_count_parse(const struct limits_rule *r, const char *text, int64_t *out, char *why,
                          size_t whysz)
{
    const char *err = limits_table_value_parse(text, strlen(text), r->measure == LIMITS_BYTES, out);
    if (err != NULL) {
        snprintf(why, whysz, "COUNT \"%.20s\": %s", text, err);
        return -EINVAL;
    }
    return 0;
}
