/* limits_key: counter keys from a request (escaped, so an attacker-chosen value never
 * holds a blank, newline or separator), conditions, and the checks of key values typed by
 * an administrator. */
#include "limits_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hash.h"
#include "textutil.h"

/* ---- keys ---- */

/* Each byte as a key holds it: the lower-case form of a safe character, 0 for one that
 * is written %XX (blanks, '%', '|', '#', controls, non-ASCII). One lookup per byte. */
static const char key_char[256] = "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0" /* 0x00 */
                                  "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0" /* 0x10 */
                                  "\0\0\0\0\0\0\0\0\0\0\0+\0-./"     /* 0x20 */
                                  "0123456789:\0\0=\0\0"             /* 0x30 */
                                  "@abcdefghijklmno"                 /* 0x40 */
                                  "pqrstuvwxyz\0\0\0\0_"             /* 0x50 */
                                  "\0abcdefghijklmno"                /* 0x60 */
                                  "pqrstuvwxyz\0\0\0\0\0";           /* 0x70 */

/* Appends the escaped form of v[0..len) (lowercased) to out at *n. Safe characters
 * pass; everything else becomes %XX, so a key never holds a space or newline and '|'
 * only separates parts. Returns false when out is full. */
static bool put_escaped(char *out, size_t outsz, size_t *n, const char *v, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = *n;
    size_t i = 0;
    if (o + len < outsz) {
        /* Fits as it is if every byte is safe (the common case): no bounds to check
         * until the first byte that needs %XX. */
        for (; i < len; i++) {
            char k = key_char[(unsigned char)v[i]];
            if (k == 0)
                break;
            out[o++] = k;
        }
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        char k = key_char[c];
        if (k != 0) {
            if (o + 1 >= outsz)
                return false;
            out[o++] = k;
        } else {
            if (o + 3 >= outsz)
                return false;
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    *n = o;
    return true;
}

/* The domain of an address: after the last '@', without a trailing dot. */
static const char *domain_of(const char *v, size_t len, size_t *dlen)
{
    const char *at = NULL;
    for (size_t i = len; i-- > 0;)
        if (v[i] == '@') {
            at = v + i;
            break;
        }
    if (at == NULL) {
        *dlen = 0;
        return v;
    }
    const char *d = at + 1;
    size_t n = (size_t)(v + len - d);
    while (n > 0 && d[n - 1] == '.')
        n--;
    *dlen = n;
    return d;
}

void limits_req_init(struct limits_req *q, const struct policy_request *req)
{
    size_t len;
    const char *v = attr(req, POLICY_CLIENT_ADDRESS, &len);
    q->req = req;
    q->client_ok = len > 0 && net_addr_parse(v, len, &q->client) == 0;
    q->have_group = false;
    q->have_domain = 0;
    /* A dotted quad that parsed (four decimal parts, no leading zeros) is already
     * written as net_addr_format writes it: an ungrouped IPv4 key uses it as sent. */
    bool digits_dots = q->client_ok && q->client.family == NET_V4;
    for (size_t i = 0; digits_dots && i < len; i++)
        digits_dots = (v[i] >= '0' && v[i] <= '9') || v[i] == '.';
    q->client_text_canonical = digits_dots;
}

/* The domain of the sender (which 0) or the recipient (1), found once per request. */
static const char *req_domain(struct limits_req *q, int which, size_t *dlen)
{
    if (!(q->have_domain & (1u << which))) {
        size_t len;
        const char *v = attr(q->req, which == 0 ? POLICY_SENDER : POLICY_RECIPIENT, &len);
        q->domain[which] = domain_of(v, len, &q->domain_len[which]);
        q->have_domain |= 1u << which;
    }
    *dlen = q->domain_len[which];
    return q->domain[which];
}

/* The client address grouped by r ("192.0.2.0/24"), formatted once for all the rules
 * that group it alike. Returns its length, 0 when it cannot be grouped. */
static size_t client_group(const struct limits_rule *r, struct limits_req *q, const char **out)
{
    /* Postfix always sends a numeric address; anything else cannot be grouped and is
     * not counted (rather than lumping unparsable values into one key). */
    if (!q->client_ok)
        return 0;
    unsigned prefix = q->client.family == NET_V4 ? r->v4len : r->v6len;
    if (q->client.family == NET_V4 && prefix >= 32 && q->client_text_canonical) {
        *out = q->req->attr[POLICY_CLIENT_ADDRESS];
        return q->req->attr_len[POLICY_CLIENT_ADDRESS];
    }
    if (!q->have_group || q->group_prefix != prefix) {
        int n = net_prefix_format(&q->client, prefix, q->group, sizeof(q->group));
        if (n <= 0)
            return 0;
        q->have_group = true;
        q->group_prefix = prefix;
        q->group_len = (size_t)n;
    }
    *out = q->group;
    return q->group_len;
}

/* One key component's raw value (before escaping). Returns its length, 0 for
 * empty/unusable. */
static size_t part_value(const struct limits_rule *r, size_t k, struct limits_req *q,
                         const char **out)
{
    const struct policy_request *req = q->req;
    size_t len;
    const char *v;
    switch (r->part[k]) {
    case LIMITS_KEY_CLIENT_ADDRESS:
        return client_group(r, q, out);
    case LIMITS_KEY_SASL_USERNAME:
        v = attr(req, POLICY_SASL_USERNAME, &len);
        break;
    case LIMITS_KEY_SENDER:
        v = attr(req, POLICY_SENDER, &len);
        break;
    case LIMITS_KEY_RECIPIENT:
        v = attr(req, POLICY_RECIPIENT, &len);
        break;
    case LIMITS_KEY_SENDER_DOMAIN:
        v = req_domain(q, 0, &len);
        break;
    case LIMITS_KEY_RECIPIENT_DOMAIN:
        v = req_domain(q, 1, &len);
        break;
    case LIMITS_KEY_ATTR:
        v = attr(req, (enum policy_attr)r->part_attr[k], &len);
        break;
    default:
        return 0;
    }
    *out = v;
    return len;
}

int limits_key_value(const struct limits_rule *r, const struct policy_request *req, char *out,
                     size_t outsz)
{
    struct limits_req q;
    limits_req_init(&q, req);
    return limits_key_value_req(r, &q, out, outsz);
}

int limits_key_value_req(const struct limits_rule *r, struct limits_req *q, char *out, size_t outsz)
{
    char esc[LIMITS_MAX_VALUE + 1];
    /* Written in place when out holds any value (the plan writes into its op's key),
     * through esc otherwise. */
    char *dst = outsz >= sizeof(esc) ? out : esc;
    const char *pv[LIMITS_MAX_KEY_PARTS];
    size_t plen[LIMITS_MAX_KEY_PARTS];
    size_t n = 0;
    bool fits = true;

    for (size_t k = 0; k < r->n_parts; k++) {
        plen[k] = part_value(r, k, q, &pv[k]);
        if (plen[k] == 0)
            return 0;
        if (k > 0) {
            if (fits && n + 1 < sizeof(esc)) {
                dst[n++] = '|';
                dst[n] = '\0';
            } else {
                fits = false;
            }
        }
        if (fits && !put_escaped(dst, sizeof(esc), &n, pv[k], plen[k]))
            fits = false;
    }
    if (!fits) {
        /* Long values (a 254-character address, a long combination) are hashed so keys
         * stay bounded; '#' never occurs in an escaped value, so no clash. Only then is
         * the hash worth computing. */
        uint64_t h = FNV64_OFFSET;
        for (size_t k = 0; k < r->n_parts; k++) {
            if (k > 0)
                h = fnv64_add(h, "|", 1);
            h = fnv64_add_lower(h, pv[k], plen[k]);
        }
        static const char hex[] = "0123456789abcdef";
        dst[0] = '#';
        for (int i = 0; i < 16; i++)
            dst[1 + i] = hex[(h >> (60 - 4 * i)) & 15];
        n = 17;
        dst[n] = '\0';
    }
    if (dst == esc) {
        /* On the request path: no stdio. */
        if (n + 1 > outsz)
            return -ENOSPC;
        memcpy(out, esc, n);
        out[n] = '\0';
    }
    return (int)n;
}

/* The value a condition tests ("" when absent). */
static const char *cond_value(struct limits_req *q, int a, size_t *len)
{
    if (a == LIMITS_ATTR_SENDER_DOMAIN)
        return req_domain(q, 0, len);
    if (a == LIMITS_ATTR_RECIPIENT_DOMAIN)
        return req_domain(q, 1, len);
    return attr(q->req, (enum policy_attr)a, len);
}

/* One literal atom at p (an ASCII letter or digit, or a backslash and an ASCII
 * punctuation character) not made optional by what follows: adds its bytes (both cases)
 * to first and returns its length, or 0 when p is anything else. */
static size_t re_literal(const char *p, uint8_t first[32])
{
    unsigned char c = (unsigned char)p[0];
    size_t n = 1;
    if (c == '\\') {
        c = (unsigned char)p[1];
        n = 2;
        if (c < 0x21 || c > 0x7e || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
            (c >= 'A' && c <= 'Z'))
            return 0; /* a back-reference, an escape of another meaning, or the end */
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
        return 0;
    }
    char next = p[n];
    if (next == '*' || next == '?' || next == '{')
        return 0;
    unsigned char lc = (unsigned char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    unsigned char uc = (unsigned char)((c >= 'a' && c <= 'z') ? c - 32 : c);
    first[lc >> 3] |= (uint8_t)(1u << (lc & 7));
    first[uc >> 3] |= (uint8_t)(1u << (uc & 7));
    return n;
}

bool limits_re_first(const char *pattern, uint8_t first[32])
{
    memset(first, 0, 32);
    const char *p = pattern;
    if (*p++ != '^')
        return false;
    const char *rest;
    if (*p == '(') {
        /* Alternatives up to the closing parenthesis: each begins with a literal. No
         * bracket expression or nested group inside, where '|' or ')' could mean
         * something else. */
        p++;
        for (;;) {
            size_t n = re_literal(p, first);
            if (n == 0)
                return false;
            p += n;
            while (*p != '|' && *p != ')') {
                if (*p == '\0' || *p == '[' || *p == '(')
                    return false;
                if (*p == '\\' && p[1] == '\0')
                    return false;
                p += *p == '\\' ? 2 : 1;
            }
            if (*p++ == ')')
                break;
        }
        if (*p == '*' || *p == '?' || *p == '{')
            return false;
        rest = p;
    } else {
        size_t n = re_literal(p, first);
        if (n == 0)
            return false;
        rest = p + n;
    }
    /* A '|' anywhere after (even one that would be harmless in a bracket expression)
     * could start an alternative to the whole: not told. */
    return strchr(rest, '|') == NULL;
}

/* Whether the regular expression of c matches v[0..len), through its memo. */
static bool cond_regex(const struct limits_cond *c, const char *v, size_t len)
{
    struct re_memo *m = c->memo;
    struct re_memo_slot *slot = NULL;
    if (m != NULL && m->have_first) {
        unsigned char b = (unsigned char)v[0];
        if (b < 0x80 && !(m->first[b >> 3] & (1u << (b & 7))))
            return false;
    }
    if (m != NULL && len <= RE_MEMO_VALUE) {
        slot = &m->slot[hash64_add(HASH64_START, v, len) & (RE_MEMO_SLOTS - 1)];
        if (slot->len == len && memcmp(slot->value, v, len) == 0) {
            m->hits++;
            return slot->match;
        }
    }
    char buf[1024];
    if (v[len] != '\0') {
        /* A domain cut before trailing dots: matched on a copy. */
        if (len >= sizeof(buf))
            return false;
        memcpy(buf, v, len);
        buf[len] = '\0';
        v = buf;
    }
    bool match = regexec(c->re, v, 0, NULL, 0) == 0;
    if (slot != NULL) {
        memcpy(slot->value, v, len);
        slot->len = (unsigned char)len;
        slot->match = match;
    }
    return match;
}

static bool cond_equal(const struct limits_cond *c, const struct limits_req *q, const char *v,
                       size_t len)
{
    if (len == 0)
        return false; /* absent or empty equals nothing */
    if (c->nets != NULL) {
        if (c->attr == POLICY_CLIENT_ADDRESS) /* parsed once per request */
            return q->client_ok && net_set_contains(c->nets, &q->client);
        struct net_addr a;
        return net_addr_parse(v, len, &a) == 0 && net_set_contains(c->nets, &a);
    }
    for (size_t i = 0; i < c->n_values; i++)
        if (c->value_len[i] == len && strncasecmp(c->values[i], v, len) == 0)
            return true;
    return false;
}

bool limits_conds_hold(const struct limits_rule *r, const struct policy_request *req)
{
    struct limits_req q;
    limits_req_init(&q, req);
    return limits_conds_hold_req(r, &q);
}

bool limits_conds_hold_req(const struct limits_rule *r, struct limits_req *q)
{
    for (size_t i = 0; i < r->n_conds; i++) {
        const struct limits_cond *c = &r->cond[i];
        size_t len;
        const char *v = cond_value(q, c->attr, &len);
        switch (c->op) {
        case LIMITS_COND_EQ:
            if (!cond_equal(c, q, v, len))
                return false;
            break;
        case LIMITS_COND_NE:
            if (cond_equal(c, q, v, len))
                return false;
            break;
        case LIMITS_COND_RE:
            if (len == 0 || !cond_regex(c, v, len))
                return false;
            break;
        }
    }
    return true;
}

/* Writes "NAME:TAG:VALUE" to out (outsz >= LIMITS_KEY_MAX, which always fits a rule's
 * name, a tag and a key value); returns its length (0 and an empty key if it did not
 * fit). snprintf cost more than the rest of
 * the plan. */
size_t limits_key_join(char *out, size_t outsz, const char *name, const char *tag,
                       const char *value, size_t vlen)
{
    size_t nl = strlen(name), tl = strlen(tag);
    if (nl + 1 + tl + 1 + vlen + 1 > outsz) { /* cannot happen with the bounds above */
        out[0] = '\0';
        return 0;
    }
    char *p = out;
    memcpy(p, name, nl);
    p += nl;
    *p++ = ':';
    memcpy(p, tag, tl);
    p += tl;
    *p++ = ':';
    memcpy(p, value, vlen);
    p += vlen;
    *p = '\0';
    return (size_t)(p - out);
}

static bool safe_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-' ||
           c == '@' || c == '/' || c == ':' || c == '+' || c == '=';
}

static bool hex_upper(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

int limits_value_check(const struct limits_rule *r, const char *in, char *out, size_t outsz,
                       char *why, size_t whysz)
{
    size_t n = strlen(in);
    if (n == 0 || n > LIMITS_MAX_VALUE) {
        snprintf(why, whysz, "a key value has 1 to %d characters", LIMITS_MAX_VALUE);
        return -EINVAL;
    }
    if (n + 1 > outsz)
        return -ENOSPC;
    for (size_t i = 0; i < n; i++) {
        out[i] = lower(in[i]);
    }
    out[n] = '\0';
    for (size_t i = 0; i < n; i++) /* %XX: hex digits upper case */
        if (out[i] == '%')
            for (size_t j = i + 1; j < n && j <= i + 2; j++)
                if (out[j] >= 'a' && out[j] <= 'f')
                    out[j] = (char)(out[j] - 'a' + 'A');
    if (out[0] == '#') {
        bool ok = n == 17;
        for (size_t i = 1; ok && i < n; i++)
            ok = (out[i] >= '0' && out[i] <= '9') || (out[i] >= 'a' && out[i] <= 'f');
        if (!ok) {
            snprintf(why, whysz, "a hashed key value is '#' and 16 hex digits");
            return -EINVAL;
        }
        return (int)n;
    }
    size_t part = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && out[i] != '|') {
            if (out[i] == '%') {
                if (i + 2 >= n || !hex_upper(out[i + 1]) || !hex_upper(out[i + 2])) {
                    snprintf(why, whysz, "'%%' must start a %%XX escape");
                    return -EINVAL;
                }
                i += 2;
            } else if (!safe_char(out[i])) {
                snprintf(why, whysz,
                         "character '%c' never occurs in a key value (it is written %%%02X)",
                         out[i] >= 32 && out[i] < 127 ? out[i] : '?', (unsigned char)out[i]);
                return -EINVAL;
            }
            continue;
        }
        if (part >= r->n_parts) {
            snprintf(why, whysz, "rule %s has %zu key part%s (%s), joined with '|'", r->name,
                     r->n_parts, r->n_parts == 1 ? "" : "s", r->key_spec);
            return -EINVAL;
        }
        size_t len = i - start;
        if (len == 0) {
            snprintf(why, whysz, "empty key part");
            return -EINVAL;
        }
        if (r->part[part] == LIMITS_KEY_CLIENT_ADDRESS) {
            struct net_cidr c;
            const char *cw = NULL;
            bool has_slash = memchr(out + start, '/', len) != NULL;
            if (net_cidr_parse(out + start, len, &c, &cw) != 0) {
                snprintf(why, whysz, "\"%.*s\": %s", (int)len, out + start,
                         cw ? cw : "not an address");
                return -EINVAL;
            }
            unsigned want = c.addr.family == NET_V4 ? r->v4len : r->v6len;
            unsigned full = c.addr.family == NET_V4 ? 32 : 128;
            unsigned got = has_slash ? c.prefix : full;
            if (got != want || (has_slash && want == full)) {
                snprintf(why, whysz, "rule %s counts %s per %s/%u: \"%.*s\" cannot be one", r->name,
                         c.addr.family == NET_V4 ? "IPv4" : "IPv6",
                         c.addr.family == NET_V4 ? "IPv4" : "IPv6", want, (int)len, out + start);
                return -EINVAL;
            }
        }
        part++;
        start = i + 1;
    }
    if (part != r->n_parts) {
        snprintf(why, whysz, "rule %s has %zu key parts (%s), joined with '|'", r->name, r->n_parts,
                 r->key_spec);
        return -EINVAL;
    }
    return (int)n;
}

int limits_counter_key(const struct limits_rule *r, bool stress, const char *value, char *out,
                       size_t outsz)
{
    size_t vl = strlen(value);
    if (outsz < LIMITS_KEY_MAX || vl > LIMITS_MAX_VALUE)
        return -ENOSPC;
    size_t n = limits_key_join(out, outsz, r->name, stress ? r->stress_tag : r->tag, value, vl);
    return n ? (int)n : -ENOSPC;
}

void limits_window_text(int64_t ms, char *out, size_t outsz)
{
    static const struct {
        int64_t ms;
        char unit;
    } units[] = {{86400000, 'd'}, {3600000, 'h'}, {60000, 'm'}, {1000, 's'}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (ms >= units[i].ms && ms % units[i].ms == 0) {
            snprintf(out, outsz, "%" PRId64 "%c", ms / units[i].ms, units[i].unit);
            return;
        }
    snprintf(out, outsz, "%" PRId64 "ms", ms);
}

void limits_key_text(const char *key, char *out, size_t outsz)
{
    const char *v = key ? strchr(key, ':') : NULL;
    v = v ? strchr(v + 1, ':') : NULL;
    v = v ? v + 1 : key ? key : "";
    size_t o = 0;
    for (; *v && o + 1 < outsz; v++) {
        int hi, lo;
        if (*v == '%' && (hi = hexval(v[1])) >= 0 && (lo = hexval(v[2])) >= 0) {
            out[o++] = (char)(hi * 16 + lo);
            v += 2;
        } else {
            out[o++] = *v;
        }
    }
    out[o] = '\0';
}
