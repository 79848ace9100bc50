/* limits_table: texthash and cidr override tables (see limits_table.h). A texthash table
 * is an open-addressing hash of canonical keys in one arena; a cidr table a list checked
 * in order, as Postfix does. */
#include "limits_table.h"

#include "textutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct cidr_entry {
    struct net_cidr net;
    int64_t value;
};

struct limits_table {
    enum limits_table_type type;
    size_t n;
    /* texthash */
    uint32_t *slot; /* index + 1 into keys/values, 0: free */
    size_t cap;     /* power of two */
    size_t *key_off;
    int64_t *value;
    char *arena;
    size_t arena_len, arena_cap;
    /* cidr */
    struct cidr_entry *cidr;
};

int limits_table_spec(const char *spec, size_t len, enum limits_table_type *type, const char **path,
                      char *why, size_t whysz)
{
    if (len > 9 && strncmp(spec, "texthash:", 9) == 0) {
        *type = LIMITS_TABLE_TEXTHASH;
        *path = spec + 9;
    } else if (len > 5 && strncmp(spec, "cidr:", 5) == 0) {
        *type = LIMITS_TABLE_CIDR;
        *path = spec + 5;
    } else {
        snprintf(why, whysz, "overrides \"%.*s\": expected texthash:PATH or cidr:PATH",
                 (int)(len > 64 ? 64 : len), spec);
        return -EINVAL;
    }
    if (**path != '/') {
        snprintf(why, whysz, "overrides \"%.*s\": the path must be absolute",
                 (int)(len > 64 ? 64 : len), spec);
        return -EINVAL;
    }
    return 0;
}

/* The key as limits_key_value writes values: lowercase, except the two hex digits of a
 * %XX escape, which are uppercase. */
static void canon_key(char *k, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (c >= 'A' && c <= 'Z')
            k[i] = (char)(c - 'A' + 'a');
        if (c == '%') {
            for (size_t j = i + 1; j < n && j <= i + 2; j++)
                if (k[j] >= 'a' && k[j] <= 'f')
                    k[j] = (char)(k[j] - 'a' + 'A');
            i += 2;
        }
    }
}

/* COUNT (suffix for bytes), 0 or "unlimited". Returns NULL or a static reason. */
static const char *parse_value(const char *p, size_t n, bool bytes, int64_t *out)
{
    if (n == 9 && strncasecmp(p, "unlimited", 9) == 0) {
        *out = LIMITS_TABLE_UNLIMITED;
        return NULL;
    }
    int64_t v = 0;
    size_t i = 0;
    while (i < n && i < 16 && p[i] >= '0' && p[i] <= '9')
        v = v * 10 + (p[i++] - '0');
    if (i == 0)
        return "bad value: expected a count, 0 or unlimited";
    int64_t mul = 1;
    if (i < n) {
        if (!bytes || i + 1 != n || (mul = config_size_suffix(p[i])) == 0)
            return bytes ? "bad value: a count with K, M or G, 0 or unlimited"
                         : "bad value: expected a count, 0 or unlimited";
    }
    if (v > (INT64_C(1) << 50) / mul)
        return "value out of range (up to 2^50)";
    *out = v * mul;
    return NULL;
}

const char *limits_table_value_parse(const char *p, size_t n, bool bytes, int64_t *out)
{
    return parse_value(p, n, bytes, out);
}

static struct limits_table *table_new(enum limits_table_type type)
{
    struct limits_table *t = calloc(1, sizeof(*t));
    if (t != NULL)
        t->type = type;
    return t;
}

void limits_table_free(struct limits_table *t)
{
    if (t == NULL)
        return;
    free(t->slot);
    free(t->key_off);
    free(t->value);
    free(t->arena);
    free(t->cidr);
    free(t);
}

size_t limits_table_count(const struct limits_table *t)
{
    return t ? t->n : 0;
}

static const char *key_at(const struct limits_table *t, size_t i)
{
    return t->arena + t->key_off[i];
}

/* Slot of key (existing or free). */
static size_t hash_slot(const struct limits_table *t, const char *k, size_t n)
{
    size_t i = (size_t)fnv64_add(FNV64_OFFSET, k, n) & (t->cap - 1);
    for (;; i = (i + 1) & (t->cap - 1)) {
        uint32_t e = t->slot[i];
        if (e == 0)
            return i;
        const char *o = key_at(t, e - 1);
        if (strlen(o) == n && memcmp(o, k, n) == 0)
            return i;
    }
}

static int hash_grow(struct limits_table *t)
{
    size_t ncap = t->cap ? t->cap * 2 : 1024;
    uint32_t *ns = calloc(ncap, sizeof(*ns));
    if (ns == NULL)
        return -ENOMEM;
    free(t->slot);
    t->slot = ns;
    t->cap = ncap;
    for (size_t e = 0; e < t->n; e++) {
        const char *k = key_at(t, e);
        t->slot[hash_slot(t, k, strlen(k))] = (uint32_t)(e + 1);
    }
    return 0;
}

/* Adds or (a later line wins, as in Postfix's texthash) replaces key. */
static int hash_put(struct limits_table *t, const char *k, size_t n, int64_t v)
{
    if ((t->n + 1) * 2 > t->cap && hash_grow(t) != 0)
        return -ENOMEM;
    size_t s = hash_slot(t, k, n);
    if (t->slot[s] != 0) {
        t->value[t->slot[s] - 1] = v;
        return 0;
    }
    if (t->arena_len + n + 1 > t->arena_cap) {
        size_t nc = t->arena_cap ? t->arena_cap * 2 : 65536;
        while (nc < t->arena_len + n + 1)
            nc *= 2;
        char *na = realloc(t->arena, nc);
        if (na == NULL)
            return -ENOMEM;
        t->arena = na;
        t->arena_cap = nc;
    }
    if (t->n == 0 || (t->n >= 64 && (t->n & (t->n - 1)) == 0)) { /* 64, 128, 256, ... */
        size_t nc = t->n ? t->n * 2 : 64;
        size_t *no = realloc(t->key_off, nc * sizeof(*no));
        if (no == NULL)
            return -ENOMEM;
        t->key_off = no;
        int64_t *nv = realloc(t->value, nc * sizeof(*nv));
        if (nv == NULL)
            return -ENOMEM;
        t->value = nv;
    }
    memcpy(t->arena + t->arena_len, k, n);
    t->arena[t->arena_len + n] = '\0';
    t->key_off[t->n] = t->arena_len;
    t->value[t->n] = v;
    t->arena_len += n + 1;
    t->slot[s] = (uint32_t)(++t->n);
    return 0;
}

static int cidr_put(struct limits_table *t, const struct net_cidr *c, int64_t v)
{
    if (t->n == 0 || (t->n >= 64 && (t->n & (t->n - 1)) == 0)) {
        size_t nc = t->n ? t->n * 2 : 64;
        struct cidr_entry *ne = realloc(t->cidr, nc * sizeof(*ne));
        if (ne == NULL)
            return -ENOMEM;
        t->cidr = ne;
    }
    t->cidr[t->n].net = *c;
    t->cidr[t->n].value = v;
    t->n++;
    return 0;
}

int limits_table_parse(enum limits_table_type type, const char *file, const char *text, size_t len,
                       bool bytes, struct limits_table **out, struct config_errors *errs)
{
    struct limits_table *t = table_new(type);
    unsigned n_err = 0, lineno = 0;
    size_t max = type == LIMITS_TABLE_CIDR ? LIMITS_TABLE_MAX_CIDR : LIMITS_TABLE_MAX_ENTRIES;
    *out = NULL;
    if (t == NULL)
        return -ENOMEM;
#define BAD(...)                                                                                   \
    do {                                                                                           \
        if (n_err++ < LIMITS_TABLE_MAX_ERRORS)                                                     \
            config_errors_addf(errs, file, lineno, __VA_ARGS__);                                   \
    } while (0)
    if (memchr(text, '\0', len) != NULL) {
        config_errors_addf(errs, file, 0, "not a text file (NUL byte)");
        limits_table_free(t);
        return -EINVAL;
    }
    for (size_t pos = 0; pos < len;) {
        const char *p = text + pos;
        const char *nl = memchr(p, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - p) : len - pos;
        pos += ll + 1;
        lineno++;
        while (ll > 0 && (p[ll - 1] == '\r' || p[ll - 1] == ' ' || p[ll - 1] == '\t'))
            ll--;
        size_t i = 0;
        while (i < ll && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i == ll || p[i] == '#')
            continue;
        if (i > 0) {
            BAD("a line that starts with blanks (continuation lines are not supported)");
            continue;
        }
        size_t klen = strcspn(p, " \t");
        if (klen > ll)
            klen = ll;
        size_t v0 = klen;
        while (v0 < ll && (p[v0] == ' ' || p[v0] == '\t'))
            v0++;
        if (v0 == ll) {
            BAD("\"%.*s\": expected KEY VALUE", (int)(klen > 64 ? 64 : klen), p);
            continue;
        }
        size_t vlen = ll - v0;
        if (memchr(p + v0, ' ', vlen) || memchr(p + v0, '\t', vlen)) {
            BAD("\"%.*s\": the value is one word: a count, 0 or unlimited",
                (int)(ll > 64 ? 64 : ll), p);
            continue;
        }
        int64_t v;
        const char *why = parse_value(p + v0, vlen, bytes, &v);
        if (why != NULL) {
            BAD("\"%.*s\": %s", (int)(vlen > 64 ? 64 : vlen), p + v0, why);
            continue;
        }
        if (t->n >= max) {
            BAD("too many entries (at most %zu)", max);
            break;
        }
        int rc = 0;
        if (type == LIMITS_TABLE_CIDR) {
            struct net_cidr c;
            const char *cwhy = NULL;
            if (net_cidr_parse(p, klen, &c, &cwhy) != 0) {
                BAD("\"%.*s\": %s", (int)(klen > 64 ? 64 : klen), p, cwhy ? cwhy : "bad network");
                continue;
            }
            rc = cidr_put(t, &c, v);
        } else {
            if (klen > 255) {
                BAD("key longer than 255 characters");
                continue;
            }
            char k[256];
            memcpy(k, p, klen);
            canon_key(k, klen);
            rc = hash_put(t, k, klen, v);
        }
        if (rc != 0) {
            limits_table_free(t);
            return -ENOMEM;
        }
    }
#undef BAD
    if (n_err > LIMITS_TABLE_MAX_ERRORS)
        config_errors_addf(errs, file, lineno, "%u more errors not shown",
                           n_err - LIMITS_TABLE_MAX_ERRORS);
    if (n_err > 0) {
        limits_table_free(t);
        return -EINVAL;
    }
    *out = t;
    return 0;
}

int limits_table_load(enum limits_table_type type, const char *path, bool bytes,
                      struct limits_table **out, struct stat *st, struct config_errors *errs)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        int e = errno;
        config_errors_addf(errs, path, 0, "cannot open: %s", strerror(e));
        return -e;
    }
    struct stat before, after;
    if (fstat(fd, &before) != 0 || !S_ISREG(before.st_mode)) {
        config_errors_addf(errs, path, 0, "not a regular file");
        close(fd);
        return -EINVAL;
    }
    if ((uint64_t)before.st_size > LIMITS_TABLE_MAX_BYTES) {
        config_errors_addf(errs, path, 0, "too large (%lld bytes; at most %u)",
                           (long long)before.st_size, LIMITS_TABLE_MAX_BYTES);
        close(fd);
        return -EFBIG;
    }
    size_t cap = (size_t)before.st_size + 1, len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        if (len == cap) { /* grew while read */
            free(buf);
            close(fd);
            config_errors_addf(errs, path, 0, "changed while being read; trying again later");
            return -EAGAIN;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            config_errors_addf(errs, path, 0, "cannot read: %s", strerror(e));
            return -e;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    int frc = fstat(fd, &after);
    close(fd);
    if (frc != 0 || after.st_size != before.st_size || (off_t)len != before.st_size ||
        after.st_mtim.tv_sec != before.st_mtim.tv_sec ||
        after.st_mtim.tv_nsec != before.st_mtim.tv_nsec) {
        free(buf);
        config_errors_addf(errs, path, 0, "changed while being read; trying again later");
        return -EAGAIN;
    }
    int rc = limits_table_parse(type, path, buf, len, bytes, out, errs);
    free(buf);
    if (rc == 0 && st != NULL)
        *st = before;
    return rc;
}

bool limits_table_lookup(const struct limits_table *t, const char *value, size_t vlen,
                         const struct net_addr *client, int64_t *limit)
{
    if (t == NULL || t->n == 0)
        return false;
    if (t->type == LIMITS_TABLE_CIDR) {
        if (client == NULL)
            return false;
        for (size_t i = 0; i < t->n; i++) {
            if (net_cidr_contains(&t->cidr[i].net, client)) {
                *limit = t->cidr[i].value;
                return true;
            }
        }
        return false;
    }
    if (value == NULL || vlen == 0)
        return false;
    uint32_t e = t->slot[hash_slot(t, value, vlen)];
    if (e == 0)
        return false;
    *limit = t->value[e - 1];
    return true;
}
