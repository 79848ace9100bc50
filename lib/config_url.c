/* config_url: the store URLs (memory, redis://, redis+unix://, redis-sentinel://,
 * redis-cluster://) parsed into a config_store_url; passwords and names may be
 * %XX-encoded. Part of the config module (config_impl.h). */
#include "config_impl.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "net.h"
#include "textutil.h"

/* Copies s[0..n) into dst (size cap), decoding %XX. False if too long or malformed. */
static bool url_copy(char *dst, size_t cap, const char *s, size_t n, bool decode)
{
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\0' || cf_is_space(c))
            return false;
        if (decode && c == '%') {
            if (n - i < 3)
                return false;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0' || j + 1 >= cap)
            return false;
        dst[j++] = c;
    }
    dst[j] = '\0';
    return true;
}

static int url_fail(struct config_store_url *out, const char *why)
{
    out->error = why;
    return -EINVAL;
}

/* Parses the "[:PASSWORD@]" start of p[0..n): copies the password and returns how many
 * bytes it took (0 without one), or -1 with out->error set. */
/* The tail of a URL after its host or master name: "" or "/" (the default database) or
 * "/DB". */
static int url_db(const char *p, struct config_store_url *out, const char *bad_db,
                  const char *bad_tail)
{
    if (*p == '/' && p[1]) {
        int64_t v;
        if (!cf_parse_uint_n(p + 1, strlen(p + 1), INT32_MAX, &v))
            return url_fail(out, bad_db);
        out->db = (int)v;
    } else if (*p && strcmp(p, "/") != 0) {
        return url_fail(out, bad_tail);
    }
    return 0;
}

static int url_auth(const char *p, size_t n, struct config_store_url *out, const char *form)
{
    const char *auth_end = NULL;
    for (size_t i = 0; i < n; i++)
        if (p[i] == '@')
            auth_end = p + i; /* the last '@': a raw '@' in a password still works */
    if (!auth_end)
        return 0;
    if (*p != ':') {
        out->error = form;
        return -1;
    }
    if (!url_copy(out->password, sizeof(out->password), p + 1, (size_t)(auth_end - p - 1), true)) {
        out->error = "bad password (use %XX for special characters)";
        return -1;
    }
    return (int)(auth_end + 1 - p);
}

/* Parses one "IP:PORT" or "[IPV6]:PORT" of a sentinel list (p[0..n)). */
static int url_seed(const char *p, size_t n, struct config_store_seed *out, const char **why)
{
    const char *host = p, *port;
    size_t hn;
    if (n && *p == '[') {
        const char *rb = memchr(p, ']', n);
        if (!rb || rb + 1 >= p + n || rb[1] != ':') {
            *why = "an address is IP:PORT or [IPV6]:PORT";
            return -1;
        }
        host = p + 1;
        hn = (size_t)(rb - host);
        port = rb + 2;
    } else {
        const char *colon = memchr(p, ':', n);
        if (!colon) {
            *why = "an address is IP:PORT (the port is required)";
            return -1;
        }
        hn = (size_t)(colon - p);
        port = colon + 1;
    }
    struct net_addr addr;
    if (hn == 0 || !url_copy(out->host, sizeof(out->host), host, hn, false) ||
        strpbrk(out->host, "[]%") || net_addr_parse(out->host, hn, &addr) < 0) {
        *why = "sentinels and seed nodes are given by IP address (a name would have to be "
               "resolved blocking)";
        return -1;
    }
    int64_t v;
    if (!cf_parse_uint_n(port, (size_t)(p + n - port), 65535, &v) || v == 0) {
        *why = "port must be a number from 1 to 65535";
        return -1;
    }
    out->port = (int)v;
    return 0;
}

/* "[:PASSWORD@]IP:PORT[,IP:PORT...]" up to the first '/' (or the end) of p: the password
 * and the seeds. Returns where it stopped, or NULL with out->error set (missing: the
 * message when there is no address). */
static const char *url_parse_seeds(const char *p, struct config_store_url *out, const char *missing)
{
    size_t n = strcspn(p, "/?#");
    int a = url_auth(p, n, out, "only a password is supported: :PASSWORD@IP:PORT,...");
    if (a < 0)
        return NULL;
    p += a;
    n -= (size_t)a;
    const char *end = p + n;
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        size_t k = (size_t)((comma ? comma : end) - p);
        if (out->nseeds == CONFIG_STORE_MAX_SEEDS) {
            url_fail(out, "too many addresses (at most 8)");
            return NULL;
        }
        const char *why = NULL;
        if (url_seed(p, k, &out->seeds[out->nseeds], &why) < 0) {
            url_fail(out, why);
            return NULL;
        }
        out->nseeds++;
        p += k;
        if (p < end && *p == ',') {
            p++;
            if (p == end) {
                url_fail(out, "empty address after ','");
                return NULL;
            }
        }
    }
    if (out->nseeds == 0) {
        url_fail(out, missing);
        return NULL;
    }
    return p;
}

/* redis-sentinel://[:PASSWORD@]IP:PORT[,IP:PORT...]/MASTERNAME[/DB] */
static int url_parse_sentinel(const char *p, struct config_store_url *out)
{
    out->kind = CONFIG_STORE_REDIS_SENTINEL;
    p = url_parse_seeds(p, out, "missing sentinels: redis-sentinel://IP:PORT[,IP:PORT]/MASTERNAME");
    if (!p)
        return -EINVAL;
    if (*p != '/' || !p[1] || p[1] == '/')
        return url_fail(out, "missing master name: redis-sentinel://IP:PORT/MASTERNAME[/DB]");
    p++;
    size_t mn = strcspn(p, "/");
    if (!url_copy(out->master_name, sizeof(out->master_name), p, mn, true) ||
        strpbrk(out->master_name, "?#"))
        return url_fail(out, "bad master name");
    return url_db(p + mn, out, "database must be a number: redis-sentinel://.../MASTER/DB",
                  "unexpected text after the master name");
}

int config_parse_store_url(const char *s, struct config_store_url *out)
{
    memset(out, 0, sizeof(*out));
    if (strcmp(s, "memory") == 0) {
        out->kind = CONFIG_STORE_MEMORY;
        return 0;
    }
    if (strncmp(s, "redis-sentinel://", 17) == 0)
        return url_parse_sentinel(s + 17, out);
    if (strncmp(s, "redis-cluster://", 16) == 0) {
        /* redis-cluster://[:PASSWORD@]IP:PORT[,IP:PORT...] (seed nodes; no database) */
        out->kind = CONFIG_STORE_REDIS_CLUSTER;
        const char *p = url_parse_seeds(s + 16, out, "missing seed nodes: redis-cluster://IP:PORT");
        if (!p)
            return -EINVAL;
        if (*p && strcmp(p, "/") != 0)
            return url_fail(out, "a cluster has no database: redis-cluster://IP:PORT[,IP:PORT]");
        return 0;
    }
    if (strncmp(s, "redis://", 8) == 0) {
        const char *p = s + 8;
        size_t n = strcspn(p, "/?#");
        const char *auth_end = NULL;
        for (size_t i = 0; i < n; i++)
            if (p[i] == '@')
                auth_end = p + i; /* the last '@': a raw '@' in a password still works */
        out->kind = CONFIG_STORE_REDIS_TCP;
        out->port = 6379;
        if (auth_end) {
            if (*p != ':')
                return url_fail(out, "only a password is supported: redis://:PASSWORD@HOST");
            if (!url_copy(out->password, sizeof(out->password), p + 1, (size_t)(auth_end - p - 1),
                          true))
                return url_fail(out, "bad password (use %XX for special characters)");
            n -= (size_t)(auth_end + 1 - p);
            p = auth_end + 1;
        }
        const char *hend = p + n, *port = NULL;
        const char *host = p;
        size_t hn;
        if (*p == '[') {
            const char *rb = memchr(p, ']', n);
            if (!rb)
                return url_fail(out, "missing ']' after an IPv6 address");
            host = p + 1;
            hn = (size_t)(rb - host);
            if (rb + 1 < hend) {
                if (rb[1] != ':')
                    return url_fail(out, "expected :PORT after ]");
                port = rb + 2;
            }
        } else {
            const char *colon = memchr(p, ':', n);
            hn = colon ? (size_t)(colon - p) : n;
            if (colon)
                port = colon + 1;
        }
        if (hn == 0)
            return url_fail(out, "missing host: redis://HOST:PORT");
        if (!url_copy(out->host, sizeof(out->host), host, hn, false) || strpbrk(out->host, "[]@/"))
            return url_fail(out, "bad host name");
        if (port) {
            int64_t v;
            if (!cf_parse_uint_n(port, (size_t)(hend - port), 65535, &v) || v == 0)
                return url_fail(out, "port must be a number from 1 to 65535");
            out->port = (int)v;
        }
        return url_db(hend, out, "database must be a number: redis://HOST:PORT/DB",
                      "unexpected text after HOST:PORT");
    }
    if (strncmp(s, "redis+unix://", 13) == 0) {
        const char *p = s + 13;
        out->kind = CONFIG_STORE_REDIS_UNIX;
        if (*p != '/')
            return url_fail(out, "expected redis+unix:///ABSOLUTE/PATH");
        size_t n = strcspn(p, "?");
        if (!url_copy(out->path, sizeof(out->path), p, n, false))
            return url_fail(out, "socket path too long or malformed");
        p += n;
        if (*p == '?')
            p++;
        while (*p) {
            size_t pn = strcspn(p, "&");
            if (pn > 3 && strncmp(p, "db=", 3) == 0) {
                int64_t v;
                if (!cf_parse_uint_n(p + 3, pn - 3, INT32_MAX, &v))
                    return url_fail(out, "db must be a number: ?db=N");
                out->db = (int)v;
            } else if (pn > 9 && strncmp(p, "password=", 9) == 0) {
                if (!url_copy(out->password, sizeof(out->password), p + 9, pn - 9, true))
                    return url_fail(out, "bad password (use %XX for special characters)");
            } else {
                return url_fail(out, "unknown parameter: expected ?db=N or &password=PW");
            }
            p += pn;
            if (*p == '&')
                p++;
        }
        return 0;
    }
    return url_fail(out, "expected memory, redis://HOST:PORT[/DB], redis+unix:///PATH or "
                         "redis-sentinel://IP:PORT[,IP:PORT]/MASTERNAME[/DB] or "
                         "redis-cluster://IP:PORT[,IP:PORT]");
}
