/* net: address parsing, masking, formatting and CIDR sets for the rate limiter.
 * Written out by hand rather than with inet_pton() so the parsers take a length (policy
 * values are not always NUL-terminated where we look at them), accept the forms Postfix
 * sends ("[addr]", "%zone") and behave the same on every libc. */
#include "net.h"
#include "textutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static unsigned family_bits(const struct net_addr *a)
{
    return a->family == NET_V4 ? 32 : 128;
}

/* Parses exactly a dotted quad in s[0..len) into out[4]. */
static int parse_v4(const char *s, size_t len, uint8_t out[4])
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= len || s[i] != '.')
                return -EINVAL;
            i++;
        }
        size_t start = i;
        unsigned v = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 3) {
            v = v * 10 + (unsigned)(s[i] - '0');
            i++;
        }
        /* No digits, more than three, a value over 255 or a leading zero (octal in
         * some parsers, so ambiguous): all rejected, as inet_pton does. */
        if (i == start || v > 255 || (i - start > 1 && s[start] == '0'))
            return -EINVAL;
        if (i < len && s[i] >= '0' && s[i] <= '9')
            return -EINVAL;
        out[part] = (uint8_t)v;
    }
    return i == len ? 0 : -EINVAL;
}

/* Parses RFC 4291 text in s[0..len) into out[16]. */
static int parse_v6(const char *s, size_t len, uint8_t out[16])
{
    uint8_t buf[16] = {0};
    size_t n = 0; /* bytes filled */
    int gap = -1; /* byte index where "::" stands */
    size_t i = 0;

    if (len >= 2 && s[0] == ':' && s[1] == ':') {
        gap = 0;
        i = 2;
        if (i == len) {
            memset(out, 0, 16);
            return 0;
        }
    } else if (len >= 1 && s[0] == ':') {
        return -EINVAL;
    }
    for (;;) {
        size_t start = i;
        unsigned v = 0;
        while (i < len && hexval(s[i]) >= 0 && i - start < 4) {
            v = (v << 4) | (unsigned)hexval(s[i]);
            i++;
        }
        if (i == start)
            return -EINVAL;
        if (i < len && s[i] == '.') {
            /* An embedded dotted quad ends the address. */
            if (n + 4 > 16)
                return -EINVAL;
            if (parse_v4(s + start, len - start, buf + n) != 0)
                return -EINVAL;
            n += 4;
            i = len;
            break;
        }
        if (i < len && hexval(s[i]) >= 0)
            return -EINVAL; /* five hex digits */
        if (n + 2 > 16)
            return -EINVAL;
        buf[n++] = (uint8_t)(v >> 8);
        buf[n++] = (uint8_t)v;
        if (i == len)
            break;
        if (s[i] != ':')
            return -EINVAL;
        i++;
        if (i < len && s[i] == ':') {
            if (gap >= 0)
                return -EINVAL; /* two "::" */
            gap = (int)n;
            i++;
            if (i == len)
                break;
        } else if (i == len) {
            return -EINVAL; /* trailing single ':' */
        }
    }
    if (gap >= 0) {
        /* "::" must stand for at least one zero group. */
        if (n > 14)
            return -EINVAL;
        size_t tail = n - (size_t)gap;
        memset(out, 0, 16);
        memcpy(out, buf, (size_t)gap);
        memcpy(out + 16 - tail, buf + gap, tail);
    } else {
        if (n != 16)
            return -EINVAL;
        memcpy(out, buf, 16);
    }
    return 0;
}

int net_addr_parse(const char *s, size_t len, struct net_addr *out)
{
    if (s == NULL || out == NULL)
        return -EINVAL;
    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        s++;
        len -= 2;
    }
    memset(out, 0, sizeof(*out));
    if (len == 0 || len > 64)
        return -EINVAL;
    if (memchr(s, ':', len) == NULL) {
        out->family = NET_V4;
        return parse_v4(s, len, out->bytes);
    }
    const char *zone = memchr(s, '%', len);
    if (zone != NULL) {
        if ((size_t)(zone - s) + 1 == len)
            return -EINVAL; /* empty zone */
        len = (size_t)(zone - s);
    }
    uint8_t b[16];
    if (parse_v6(s, len, b) != 0)
        return -EINVAL;
    if (memcmp(b, v4_mapped_prefix, sizeof(v4_mapped_prefix)) == 0) {
        /* Postfix on a dual-stack socket may report an IPv4 client as ::ffff:a.b.c.d;
         * it must share counters and exemptions with the plain IPv4 form. */
        out->family = NET_V4;
        memcpy(out->bytes, b + 12, 4);
        return 0;
    }
    out->family = NET_V6;
    memcpy(out->bytes, b, 16);
    return 0;
}

void net_addr_mask(struct net_addr *a, unsigned prefix)
{
    unsigned bits = family_bits(a);
    if (prefix >= bits)
        return;
    size_t full = prefix / 8;
    unsigned rest = prefix % 8;
    if (rest != 0) {
        a->bytes[full] &= (uint8_t)(0xff << (8 - rest));
        full++;
    }
    memset(a->bytes + full, 0, 16 - full);
}

/* Writes v (< 1000) in decimal at p, no NUL; returns the digits written. On the request
 * path (every rule keyed by an address formats one), so no stdio. */
static size_t put_dec(char *p, unsigned v)
{
    size_t n = 0;
    if (v >= 100)
        p[n++] = (char)('0' + v / 100);
    if (v >= 10)
        p[n++] = (char)('0' + v / 10 % 10);
    p[n++] = (char)('0' + v % 10);
    return n;
}

/* Writes v (< 0x10000) in lowercase hex without leading zeros at p, no NUL. */
static size_t put_hex(char *p, unsigned v)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (int shift = 12; shift > 0; shift -= 4)
        if (v >> shift)
            p[n++] = hex[(v >> shift) & 15];
    p[n++] = hex[v & 15];
    return n;
}

int net_addr_format(const struct net_addr *a, char *out, size_t outsz)
{
    char tmp[NET_ADDR_STRLEN];
    size_t n = 0;

    if (a->family == NET_V4) {
        for (int i = 0; i < 4; i++) {
            if (i > 0)
                tmp[n++] = '.';
            n += put_dec(tmp + n, a->bytes[i]);
        }
        tmp[n] = '\0';
    } else {
        unsigned w[8];
        for (int i = 0; i < 8; i++)
            w[i] = (unsigned)a->bytes[2 * i] << 8 | a->bytes[2 * i + 1];
        /* RFC 5952: compress the longest run of two or more zero groups, the first on
         * ties. */
        int best = -1, best_len = 0;
        for (int i = 0; i < 8;) {
            if (w[i] != 0) {
                i++;
                continue;
            }
            int j = i;
            while (j < 8 && w[j] == 0)
                j++;
            if (j - i > best_len && j - i >= 2) {
                best = i;
                best_len = j - i;
            }
            i = j;
        }
        for (int i = 0; i < 8; i++) {
            if (i == best) {
                tmp[n++] = ':';
                if (i == 0)
                    tmp[n++] = ':';
                i += best_len - 1;
                continue;
            }
            n += put_hex(tmp + n, w[i]);
            if (i < 7)
                tmp[n++] = ':';
        }
        tmp[n] = '\0';
    }
    if (n + 1 > outsz)
        return -ENOSPC;
    memcpy(out, tmp, n + 1);
    return (int)n;
}

int net_prefix_format(const struct net_addr *a, unsigned prefix, char *out, size_t outsz)
{
    struct net_addr m = *a;
    unsigned bits = family_bits(a);
    if (prefix >= bits)
        return net_addr_format(a, out, outsz);
    net_addr_mask(&m, prefix);
    char tmp[NET_ADDR_STRLEN];
    int n = net_addr_format(&m, tmp, sizeof(tmp));
    if (n < 0)
        return n;
    size_t k = (size_t)n;
    tmp[k++] = '/';
    k += put_dec(tmp + k, prefix); /* prefix < 128 here */
    if (k + 1 > outsz)
        return -ENOSPC;
    memcpy(out, tmp, k);
    out[k] = '\0';
    return (int)k;
}

int net_cidr_parse(const char *s, size_t len, struct net_cidr *out, const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    memset(out, 0, sizeof(*out));
    if (net_addr_parse(s, alen, &out->addr) != 0) {
        *why = "bad address";
        return -EINVAL;
    }
    unsigned bits = family_bits(&out->addr);
    /* ::ffff:0:0/96 style networks written as mapped IPv6 were folded to IPv4; their
     * prefix counts the 96 mapped bits, so translate it. */
    bool mapped = out->addr.family == NET_V4 && memchr(s, ':', alen) != NULL;
    out->prefix = bits;
    if (slash != NULL) {
        const char *p = slash + 1;
        size_t plen = len - alen - 1;
        if (plen == 0 || plen > 3) {
            *why = "bad prefix length";
            return -EINVAL;
        }
        unsigned v = 0;
        for (size_t i = 0; i < plen; i++) {
            if (p[i] < '0' || p[i] > '9') {
                *why = "bad prefix length";
                return -EINVAL;
            }
            v = v * 10 + (unsigned)(p[i] - '0');
        }
        if (mapped) {
            if (v < 96 || v > 128) {
                *why = "bad prefix length";
                return -EINVAL;
            }
            v -= 96;
        }
        if (v > bits) {
            *why = "bad prefix length";
            return -EINVAL;
        }
        out->prefix = v;
    }
    struct net_addr m = out->addr;
    net_addr_mask(&m, out->prefix);
    if (memcmp(&m, &out->addr, sizeof(m)) != 0) {
        *why = "host bits set";
        return -EINVAL;
    }
    return 0;
}

bool net_cidr_contains(const struct net_cidr *c, const struct net_addr *a)
{
    if (c->addr.family != a->family)
        return false;
    struct net_addr m = *a;
    net_addr_mask(&m, c->prefix);
    return memcmp(m.bytes, c->addr.bytes, sizeof(m.bytes)) == 0;
}

struct net_set {
    struct net_cidr *v;
    size_t n;
};

int net_set_parse(const char *list, struct net_set **out, char *err, size_t errsz)
{
    struct net_set *set = calloc(1, sizeof(*set));
    size_t cap = 0;
    int rc = 0;

    *out = NULL;
    if (set == NULL)
        return -ENOMEM;
    const char *p = list ? list : "";
    while (*p != '\0') {
        size_t skip = strspn(p, " \t\r\n,");
        p += skip;
        if (*p == '\0')
            break;
        size_t len = strcspn(p, " \t\r\n,");
        struct net_cidr c;
        const char *why = NULL;
        if (net_cidr_parse(p, len, &c, &why) != 0) {
            if (err != NULL && errsz > 0)
                snprintf(err, errsz, "bad network \"%.*s\": %s", (int)(len > 64 ? 64 : len), p,
                         why);
            rc = -EINVAL;
            goto out;
        }
        if (set->n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            struct net_cidr *nv = realloc(set->v, ncap * sizeof(*nv));
            if (nv == NULL) {
                rc = -ENOMEM;
                goto out;
            }
            set->v = nv;
            cap = ncap;
        }
        set->v[set->n++] = c;
        p += len;
    }
out:
    if (rc != 0) {
        net_set_free(set);
        return rc;
    }
    *out = set;
    return 0;
}

void net_set_free(struct net_set *set)
{
    if (set == NULL)
        return;
    free(set->v);
    free(set);
}

bool net_set_contains(const struct net_set *set, const struct net_addr *a)
{
    if (set == NULL)
        return false;
    for (size_t i = 0; i < set->n; i++)
        if (net_cidr_contains(&set->v[i], a))
            return true;
    return false;
}

size_t net_set_count(const struct net_set *set)
{
    return set ? set->n : 0;
}
