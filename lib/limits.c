/* limits: rule parsing, counter keys, per-connection dedup and the decision. The engine
 * is immutable once built (shared by every connection, swapped on SIGHUP); all mutable
 * state is in the caller's limits_session. Dedup works by "units": each thing that can
 * be counted (a connection for a rule, a message for a rule and key, one recipient for
 * a rule) gets a 64-bit id; a unit is counted once and remembers whether it was
 * admitted, so every repeat of a request gets the same answer without counting. */
#include "limits.h"

#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "net.h"

/* Units remembered per SMTP session (connections) and per transaction (messages,
 * bytes, recipients). Past the cap a repeat counts again: over-counting is the safe
 * side for a limiter. */
#define MAX_UNITS (4 * LIMITS_MAX_RCPT_CACHE)

#define MIN_WINDOW_MS 1000LL
#define MAX_WINDOW_MS (366LL * 24 * 3600 * 1000)

struct limits_engine {
    unsigned refs;
    struct limits_rule rule[LIMITS_MAX_RULES];
    size_t n_rules;
    struct net_set *exempt_nets;
    char **exempt_users; /* lowercased */
    size_t n_exempt_users;
    char *default_action;
};

enum { SCOPE_SESSION = 0, SCOPE_INSTANCE = 1 };

struct unit_entry {
    uint64_t id; /* 0: free slot */
    int64_t amount;
    bool denied;
};

struct unit_set {
    struct unit_entry *v;
    size_t cap; /* power of two, or 0 */
    size_t n;
};

struct limits_session {
    uint64_t epoch; /* changes whenever the remembered units are dropped */
    bool have_client;
    uint64_t client; /* hash of client_address and client_port */
    bool have_instance;
    uint64_t instance;
    bool rcpt_seen;           /* an RCPT request of this transaction reached us */
    struct unit_set units[2]; /* SCOPE_SESSION, SCOPE_INSTANCE */
};

/* ---- small helpers ---- */

#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

static uint64_t fnv64_add(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= FNV64_PRIME;
    }
    return h;
}

static uint64_t fnv64_add_lower(uint64_t h, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        h ^= c;
        h *= FNV64_PRIME;
    }
    return h;
}

static uint32_t fnv32(const char *s)
{
    uint32_t h = 0x811c9dc5u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x01000193u;
    }
    return h;
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static const char *attr(const struct policy_request *req, enum policy_attr a, size_t *len)
{
    const char *v = req->attr[a];
    if (v == NULL) {
        *len = 0;
        return "";
    }
    *len = req->attr_len[a];
    return v;
}

/* A decimal attribute (size, recipient_count); 0 when absent or malformed. */
static int64_t attr_num(const struct policy_request *req, enum policy_attr a)
{
    size_t len;
    const char *v = attr(req, a, &len);
    int64_t n = 0;
    if (len == 0 || len > 15)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 0;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

/* strndup through malloc, so a test that fails the Nth malloc reaches every path. */
static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* ---- errors ---- */

static void errf(struct config_errors *errs, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Appends "FILE:LINE: text" to errs. */
static void errf(struct config_errors *errs, const char *file, unsigned line, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    if (errs == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    size_t need = strlen(file) + strlen(text) + 16;
    char *msg = malloc(need);
    char **nv = realloc(errs->msg, (errs->n + 1) * sizeof(*nv));
    if (msg == NULL || nv == NULL) {
        /* Without memory the message is lost, but the caller still sees the failure. */
        free(msg);
        if (nv != NULL)
            errs->msg = nv;
        return;
    }
    errs->msg = nv;
    snprintf(msg, need, "%s:%u: %s", file, line, text);
    errs->msg[errs->n++] = msg;
}

/* ---- rule parsing ---- */

static const char *const part_names[] = {
    [LIMITS_KEY_CLIENT_ADDRESS] = "client_address",
    [LIMITS_KEY_SASL_USERNAME] = "sasl_username",
    [LIMITS_KEY_SENDER] = "sender",
    [LIMITS_KEY_SENDER_DOMAIN] = "sender_domain",
    [LIMITS_KEY_RECIPIENT] = "recipient",
    [LIMITS_KEY_RECIPIENT_DOMAIN] = "recipient_domain",
};
#define N_PARTS (sizeof(part_names) / sizeof(part_names[0]))

static const char *part_name(const struct limits_rule *r, size_t k)
{
    if (r->part[k] == LIMITS_KEY_ATTR)
        return policy_attr_name((enum policy_attr)r->part_attr[k]);
    return part_names[r->part[k]];
}

/* Attributes that stay the same within one SMTP session, so a `connections` key made
 * of them counts each session once. */
static bool session_constant(enum limits_key_part part, int pa)
{
    if (part == LIMITS_KEY_CLIENT_ADDRESS || part == LIMITS_KEY_SASL_USERNAME)
        return true;
    if (part != LIMITS_KEY_ATTR)
        return false;
    switch (pa) {
    case POLICY_PROTOCOL_NAME:
    case POLICY_CLIENT_NAME:
    case POLICY_CLIENT_PORT:
    case POLICY_REVERSE_CLIENT_NAME:
    case POLICY_SERVER_ADDRESS:
    case POLICY_SERVER_PORT:
    case POLICY_HELO_NAME:
    case POLICY_SASL_METHOD:
    case POLICY_CCERT_SUBJECT:
    case POLICY_CCERT_ISSUER:
    case POLICY_CCERT_FINGERPRINT:
    case POLICY_CCERT_PUBKEY_FINGERPRINT:
    case POLICY_ENCRYPTION_PROTOCOL:
    case POLICY_ENCRYPTION_CIPHER:
    case POLICY_ENCRYPTION_KEYSIZE:
    case POLICY_POLICY_CONTEXT:
    case POLICY_COMPATIBILITY_LEVEL:
    case POLICY_MAIL_VERSION:
    case POLICY_TLS_SNI:
        return true;
    default:
        return false;
    }
}

static const char *const measure_names[] = {
    [LIMITS_CONNECTIONS] = "connections",
    [LIMITS_MESSAGES] = "messages",
    [LIMITS_RECIPIENTS] = "recipients",
    [LIMITS_BYTES] = "bytes",
};

const char *limits_measure_name(enum limits_measure m)
{
    if ((unsigned)m >= sizeof(measure_names) / sizeof(measure_names[0]))
        return "?";
    return measure_names[m];
}

/* A bounded token copy for messages and lookups. */
struct tok {
    const char *p;
    size_t len;
};

static bool tok_is(struct tok t, const char *word)
{
    return strlen(word) == t.len && strncmp(t.p, word, t.len) == 0;
}

/* Parses an unsigned decimal (at most 16 digits) from p[0..len); returns the digits used
 * or 0. */
static size_t parse_u64(const char *p, size_t len, int64_t *out)
{
    size_t i = 0;
    int64_t n = 0;
    while (i < len && i < 16 && p[i] >= '0' && p[i] <= '9') {
        n = n * 10 + (p[i] - '0');
        i++;
    }
    if (i < len && i == 16 && p[i] >= '0' && p[i] <= '9')
        return 0;
    *out = n;
    return i;
}

/* "COUNT/WINDOW". Returns NULL or a static reason. */
static const char *parse_rate(struct tok t, bool bytes, int64_t *count, int64_t *window_ms)
{
    const char *slash = memchr(t.p, '/', t.len);
    if (slash == NULL)
        return "expected COUNT/WINDOW such as 100/1m";
    size_t clen = (size_t)(slash - t.p);
    int64_t n;
    size_t used = parse_u64(t.p, clen, &n);
    if (used == 0)
        return "bad count";
    int64_t mul = 1;
    if (used < clen) {
        if (!bytes || used + 1 != clen)
            return bytes ? "bad count (suffixes: K, M, G)"
                         : "bad count (an integer; K, M, G only for bytes)";
        mul = config_size_suffix(t.p[used]);
        if (!mul)
            return "bad count (suffixes: K, M, G)";
    }
    if (n < 1 || n > LIMITS_COUNT_ONLY / mul || n * mul >= LIMITS_COUNT_ONLY)
        return "count out of range (1 up to 2^50)";
    *count = n * mul;

    const char *w = slash + 1;
    size_t wlen = t.len - clen - 1;
    int64_t wn;
    used = parse_u64(w, wlen, &wn);
    if (used == 0)
        return "bad window (a number with unit s, m, h or d)";
    int64_t wmul = 1000;
    if (used < wlen) {
        if (used + 1 != wlen)
            return "bad window (a number with unit s, m, h or d)";
        switch (w[used]) {
        case 's':
            wmul = 1000;
            break;
        case 'm':
            wmul = 60 * 1000;
            break;
        case 'h':
            wmul = 3600 * 1000;
            break;
        case 'd':
            wmul = 24 * 3600 * 1000;
            break;
        default:
            return "bad window (a number with unit s, m, h or d)";
        }
    }
    if (wn > MAX_WINDOW_MS / wmul || wn * wmul < MIN_WINDOW_MS || wn * wmul > MAX_WINDOW_MS)
        return "window out of range (1s to 366d)";
    *window_ms = wn * wmul;
    return NULL;
}

/* Parses KEY into r. Returns false with a reason in why (size whysz). */
static bool parse_key(struct tok t, struct limits_rule *r, char *why, size_t whysz)
{
    size_t i = 0;
    r->n_parts = 0;
    r->v4len = 32;
    r->v6len = 128;
    r->key_spec[0] = '\0';
    while (i <= t.len) {
        size_t j = i;
        while (j < t.len && t.p[j] != '+')
            j++;
        struct tok p = {t.p + i, j - i};
        size_t nlen = p.len;
        const char *slash = memchr(p.p, '/', p.len);
        if (slash != NULL)
            nlen = (size_t)(slash - p.p);
        int found = -1, pa = -1;
        for (size_t k = 0; k < N_PARTS; k++)
            if (strlen(part_names[k]) == nlen && strncmp(p.p, part_names[k], nlen) == 0)
                found = (int)k;
        if (found < 0 && nlen > 0 && (pa = policy_attr_lookup(p.p, nlen)) >= 0)
            found = LIMITS_KEY_ATTR;
        if (found < 0) {
            snprintf(why, whysz,
                     "unknown key \"%.*s\": expected policy attributes (client_address"
                     "[/V4LEN[/V6LEN]], sasl_username, helo_name, ...), sender_domain or "
                     "recipient_domain, joined with '+'",
                     (int)(p.len > 64 ? 64 : p.len), p.p);
            return false;
        }
        for (size_t k = 0; k < r->n_parts; k++) {
            if ((int)r->part[k] == found && (found != LIMITS_KEY_ATTR || r->part_attr[k] == pa)) {
                snprintf(why, whysz, "key part %.*s given twice", (int)nlen, p.p);
                return false;
            }
        }
        if (r->n_parts == LIMITS_MAX_KEY_PARTS) {
            snprintf(why, whysz, "too many key parts (at most %d)", LIMITS_MAX_KEY_PARTS);
            return false;
        }
        if (slash != NULL) {
            int64_t v4 = -1, v6 = 128;
            const char *q = slash + 1;
            size_t qlen = p.len - nlen - 1;
            size_t used = found == LIMITS_KEY_CLIENT_ADDRESS ? parse_u64(q, qlen, &v4) : 0;
            bool ok = used > 0 && used <= 2 && v4 <= 32;
            if (ok && used < qlen) {
                size_t u2 = q[used] == '/' ? parse_u64(q + used + 1, qlen - used - 1, &v6) : 0;
                ok = u2 > 0 && u2 <= 3 && used + 1 + u2 == qlen && v6 <= 128;
            }
            if (!ok) {
                snprintf(why, whysz,
                         "bad grouping \"%.*s\": only client_address/V4LEN[/V6LEN] with "
                         "V4LEN 0-32 and V6LEN 0-128",
                         (int)(p.len > 64 ? 64 : p.len), p.p);
                return false;
            }
            r->v4len = (unsigned)v4;
            r->v6len = (unsigned)v6;
        }
        r->part_attr[r->n_parts] = pa;
        r->part[r->n_parts++] = (enum limits_key_part)found;
        i = j + 1;
    }
    /* The canonical spec (grouping spelled out in full) feeds the tag, so
     * "client_address/24" and "client_address/24/128" share counters. */
    size_t n = 0;
    for (size_t k = 0; k < r->n_parts; k++) {
        int w;
        if (r->part[k] == LIMITS_KEY_CLIENT_ADDRESS && (r->v4len != 32 || r->v6len != 128))
            w = snprintf(r->key_spec + n, sizeof(r->key_spec) - n, "%s%s/%u/%u", k ? "+" : "",
                         part_names[r->part[k]], r->v4len, r->v6len);
        else
            w = snprintf(r->key_spec + n, sizeof(r->key_spec) - n, "%s%s", k ? "+" : "",
                         part_name(r, k));
        n += (size_t)w;
    }
    return true;
}

/* access(5) actions a limit may answer. Case-insensitive, as Postfix reads them. */
static bool valid_action(const char *a)
{
    static const char *const words[] = {
        "DEFER_IF_PERMIT", "DEFER_IF_REJECT", "DEFER", "REJECT", "HOLD", "DISCARD", "WARN", "INFO"};
    size_t len = strlen(a);
    if (len == 0 || len > POLICY_MAX_ACTION || strpbrk(a, "\r\n") != NULL)
        return false;
    if ((a[0] == '4' || a[0] == '5') && a[1] >= '0' && a[1] <= '9' && a[2] >= '0' && a[2] <= '9')
        return a[3] == '\0' || a[3] == ' ' || a[3] == '\t';
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        size_t wl = strlen(words[i]);
        if (len >= wl && strncasecmp(a, words[i], wl) == 0 &&
            (a[wl] == '\0' || a[wl] == ' ' || a[wl] == '\t'))
            return true;
    }
    return false;
}

static bool valid_name(struct tok t)
{
    if (t.len == 0 || t.len > LIMITS_MAX_NAME)
        return false;
    for (size_t i = 0; i < t.len; i++) {
        char c = t.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

static void make_tag(const struct limits_rule *r, int64_t window_ms, char out[9])
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s|%s|%lld", r->key_spec, measure_names[r->measure],
             (long long)window_ms);
    snprintf(out, 9, "%08x", (unsigned)fnv32(buf));
}

static struct tok next_tok(const char **pp, const char *end)
{
    const char *p = *pp;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    const char *s = p;
    while (p < end && *p != ' ' && *p != '\t')
        p++;
    *pp = p;
    return (struct tok){s, (size_t)(p - s)};
}

#define TOKF(t) (int)((t).len > 64 ? 64 : (t).len), (t).p

/* ---- conditions ---- */

static bool is_addr_attr(int a)
{
    return a == POLICY_CLIENT_ADDRESS || a == POLICY_SERVER_ADDRESS;
}

static int attr_by_name(const char *p, size_t n)
{
    if (n == 13 && strncmp(p, "sender_domain", n) == 0)
        return LIMITS_ATTR_SENDER_DOMAIN;
    if (n == 16 && strncmp(p, "recipient_domain", n) == 0)
        return LIMITS_ATTR_RECIPIENT_DOMAIN;
    return n ? policy_attr_lookup(p, n) : -1;
}

static void cond_free(struct limits_cond *c)
{
    free(c->text);
    for (size_t i = 0; i < c->n_values; i++)
        free(c->values[i]);
    free(c->values);
    net_set_free(c->nets);
    if (c->re != NULL) {
        regfree(c->re);
        free(c->re);
    }
    memset(c, 0, sizeof(*c));
}

static void rule_free(struct limits_rule *r)
{
    free(r->action);
    r->action = NULL;
    free(r->overrides);
    r->overrides = NULL;
    r->table_path = NULL;
    limits_table_free(r->table);
    r->table = NULL;
    for (size_t i = 0; i < r->n_conds; i++)
        cond_free(&r->cond[i]);
    r->n_conds = 0;
}

/* Parses "ATTR=V1,V2", "ATTR!=V1,V2" or "ATTR~ERE" (the token after `if`) into c, which
 * owns what it allocated even on failure. Returns 0, -EINVAL (reason in why) or
 * -ENOMEM. */
static int parse_cond(struct tok t, struct limits_cond *c, char *why, size_t whysz)
{
    size_t i = 0;
    while (i < t.len && t.p[i] != '=' && t.p[i] != '!' && t.p[i] != '~')
        i++;
    size_t vstart = i + 1;
    if (i < t.len && t.p[i] == '=') {
        c->op = LIMITS_COND_EQ;
    } else if (i < t.len && t.p[i] == '~') {
        c->op = LIMITS_COND_RE;
    } else if (i + 1 < t.len && t.p[i] == '!' && t.p[i + 1] == '=') {
        c->op = LIMITS_COND_NE;
        vstart = i + 2;
    } else {
        snprintf(why, whysz, "if \"%.*s\": expected ATTR=V1,V2, ATTR!=V1,V2 or ATTR~REGEX",
                 TOKF(t));
        return -EINVAL;
    }
    c->attr = attr_by_name(t.p, i);
    if (c->attr == -1) {
        snprintf(why, whysz,
                 "if \"%.*s\": unknown attribute \"%.*s\": expected a policy attribute, "
                 "sender_domain or recipient_domain",
                 TOKF(t), (int)(i > 64 ? 64 : i), t.p);
        return -EINVAL;
    }
    if (vstart >= t.len) {
        snprintf(why, whysz, "if \"%.*s\": no value", TOKF(t));
        return -EINVAL;
    }
    c->text = dup_n(t.p, t.len);
    if (c->text == NULL)
        return -ENOMEM;
    const char *v = c->text + vstart;
    if (c->op == LIMITS_COND_RE) {
        regex_t *re = malloc(sizeof(*re));
        if (re == NULL)
            return -ENOMEM;
        int rc = regcomp(re, v, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        if (rc != 0) {
            char msg[128];
            regerror(rc, re, msg, sizeof(msg));
            free(re);
            snprintf(why, whysz, "if \"%.*s\": bad regular expression: %s", TOKF(t), msg);
            return -EINVAL;
        }
        c->re = re;
        return 0;
    }
    if (is_addr_attr(c->attr)) {
        char err[160];
        int rc = net_set_parse(v, &c->nets, err, sizeof(err));
        if (rc == -ENOMEM)
            return rc;
        if (rc != 0) {
            snprintf(why, whysz, "if \"%.*s\": %s", TOKF(t), err);
            return -EINVAL;
        }
        return 0;
    }
    for (const char *q = v;;) {
        size_t n = strcspn(q, ",");
        if (n == 0) {
            snprintf(why, whysz, "if \"%.*s\": empty value in the list", TOKF(t));
            return -EINVAL;
        }
        char **nv = realloc(c->values, (c->n_values + 1) * sizeof(*nv));
        if (nv == NULL)
            return -ENOMEM;
        c->values = nv;
        if ((c->values[c->n_values] = dup_n(q, n)) == NULL)
            return -ENOMEM;
        c->n_values++;
        if (q[n] == '\0')
            break;
        q += n + 1;
    }
    return 0;
}

/* Parses one rule line into r (action left NULL when not given). Returns 0, -EINVAL
 * (message appended) or -ENOMEM. */
static int parse_rule_body(const char *line, size_t len, struct limits_rule *r, const char *file,
                           unsigned lineno, struct config_errors *errs)
{
    const char *p = line, *end = line + len;
    char why[256];
    memset(r, 0, sizeof(*r));
    r->line = lineno;

    struct tok name = next_tok(&p, end);
    struct tok key = next_tok(&p, end);
    struct tok measure = next_tok(&p, end);
    struct tok rate = next_tok(&p, end);
    if (!valid_name(name)) {
        errf(errs, file, lineno, "limits: bad rule name \"%.*s\": 1 to %d of A-Z a-z 0-9 _ . -",
             TOKF(name), LIMITS_MAX_NAME);
        return -EINVAL;
    }
    memcpy(r->name, name.p, name.len);
    r->name[name.len] = '\0';
    if (rate.len == 0) {
        errf(errs, file, lineno,
             "limits: rule %s: missing fields: expected NAME KEY MEASURE COUNT/WINDOW", r->name);
        return -EINVAL;
    }
    if (!parse_key(key, r, why, sizeof(why))) {
        errf(errs, file, lineno, "limits: rule %s: %s", r->name, why);
        return -EINVAL;
    }
    int m = -1;
    for (size_t k = 0; k < sizeof(measure_names) / sizeof(measure_names[0]); k++)
        if (tok_is(measure, measure_names[k]))
            m = (int)k;
    if (m < 0) {
        errf(errs, file, lineno,
             "limits: rule %s: unknown measure \"%.*s\": expected connections, messages, "
             "recipients or bytes",
             r->name, TOKF(measure));
        return -EINVAL;
    }
    r->measure = (enum limits_measure)m;
    if (r->measure == LIMITS_CONNECTIONS) {
        for (size_t k = 0; k < r->n_parts; k++) {
            if (!session_constant(r->part[k], r->part_attr[k])) {
                errf(errs, file, lineno,
                     "limits: rule %s: connections need a key that stays the same within an "
                     "SMTP session, not %s",
                     r->name, part_name(r, k));
                return -EINVAL;
            }
        }
    }
    const char *reason = parse_rate(rate, r->measure == LIMITS_BYTES, &r->limit, &r->window_ms);
    if (reason != NULL) {
        errf(errs, file, lineno, "limits: rule %s: \"%.*s\": %s", r->name, TOKF(rate), reason);
        return -EINVAL;
    }
    r->stress_limit = r->limit;
    r->stress_window_ms = r->window_ms;

    for (;;) {
        struct tok opt = next_tok(&p, end);
        if (opt.len == 0)
            break;
        if (tok_is(opt, "stress")) {
            struct tok sr = next_tok(&p, end);
            if (r->has_stress) {
                errf(errs, file, lineno, "limits: rule %s: stress given twice", r->name);
                return -EINVAL;
            }
            if (sr.len == 0) {
                errf(errs, file, lineno, "limits: rule %s: stress needs COUNT/WINDOW", r->name);
                return -EINVAL;
            }
            reason =
                parse_rate(sr, r->measure == LIMITS_BYTES, &r->stress_limit, &r->stress_window_ms);
            if (reason != NULL) {
                errf(errs, file, lineno, "limits: rule %s: stress \"%.*s\": %s", r->name, TOKF(sr),
                     reason);
                return -EINVAL;
            }
            r->has_stress = true;
        } else if (tok_is(opt, "dryrun")) {
            r->dryrun = true;
        } else if (tok_is(opt, "if")) {
            struct tok ct = next_tok(&p, end);
            if (ct.len == 0) {
                errf(errs, file, lineno,
                     "limits: rule %s: if needs ATTR=V1,V2, ATTR!=V1,V2 or ATTR~REGEX", r->name);
                return -EINVAL;
            }
            if (r->n_conds == LIMITS_MAX_CONDS) {
                errf(errs, file, lineno, "limits: rule %s: too many conditions (at most %d)",
                     r->name, LIMITS_MAX_CONDS);
                return -EINVAL;
            }
            int rc = parse_cond(ct, &r->cond[r->n_conds++], why, sizeof(why));
            if (rc == -ENOMEM)
                return rc;
            if (rc != 0) {
                errf(errs, file, lineno, "limits: rule %s: %s", r->name, why);
                return -EINVAL;
            }
        } else if (tok_is(opt, "overrides")) {
            struct tok ot = next_tok(&p, end);
            if (r->overrides != NULL) {
                errf(errs, file, lineno, "limits: rule %s: overrides given twice", r->name);
                return -EINVAL;
            }
            if ((r->overrides = dup_n(ot.p, ot.len)) == NULL)
                return -ENOMEM;
            if (limits_table_spec(r->overrides, ot.len, &r->table_type, &r->table_path, why,
                                  sizeof(why)) != 0) {
                errf(errs, file, lineno, "limits: rule %s: %s", r->name, why);
                return -EINVAL;
            }
            bool has_client = false;
            for (size_t k = 0; k < r->n_parts; k++)
                has_client |= r->part[k] == LIMITS_KEY_CLIENT_ADDRESS;
            if (r->table_type == LIMITS_TABLE_CIDR && !has_client) {
                errf(errs, file, lineno,
                     "limits: rule %s: overrides cidr: needs a key with client_address", r->name);
                return -EINVAL;
            }
        } else if (tok_is(opt, "action")) {
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            size_t alen = (size_t)(end - p);
            while (alen > 0 && (p[alen - 1] == ' ' || p[alen - 1] == '\t'))
                alen--;
            if (alen == 0) {
                errf(errs, file, lineno, "limits: rule %s: action needs text", r->name);
                return -EINVAL;
            }
            r->action = dup_n(p, alen);
            if (r->action == NULL)
                return -ENOMEM;
            if (!valid_action(r->action)) {
                errf(errs, file, lineno,
                     "limits: rule %s: bad action \"%.*s\": expected an access(5) action: "
                     "4NN/5NN text, DEFER_IF_PERMIT, DEFER_IF_REJECT, DEFER, REJECT, HOLD, "
                     "DISCARD, WARN or INFO",
                     r->name, (int)(alen > 64 ? 64 : alen), p);
                free(r->action);
                r->action = NULL;
                return -EINVAL;
            }
            break;
        } else {
            errf(errs, file, lineno,
                 "limits: rule %s: unknown option \"%.*s\": expected stress COUNT/WINDOW, "
                 "dryrun, if CONDITION, overrides TYPE:PATH or action TEXT",
                 r->name, TOKF(opt));
            return -EINVAL;
        }
    }
    make_tag(r, r->window_ms, r->tag);
    make_tag(r, r->stress_window_ms, r->stress_tag);
    return 0;
}

/* parse_rule_body, and on failure r owns nothing. */
static int parse_rule(const char *line, size_t len, struct limits_rule *r, const char *file,
                      unsigned lineno, struct config_errors *errs)
{
    int rc = parse_rule_body(line, len, r, file, lineno, errs);
    if (rc != 0)
        rule_free(r);
    return rc;
}

static const char *source_name(const struct config *cfg)
{
    const char *s = config_source_name(cfg);
    return (s != NULL && *s) ? s : "postsurge.cf";
}

static unsigned setting_line(const struct config *cfg, const char *name)
{
    int l = config_setting_line(cfg, name);
    return l > 0 ? (unsigned)l : 0;
}

static int parse_exempt_users(struct limits_engine *e, const char *list)
{
    const char *p = list ? list : "";
    while (*p) {
        p += strspn(p, " \t\r\n,");
        size_t len = strcspn(p, " \t\r\n,");
        if (len == 0)
            break;
        char **nv = realloc(e->exempt_users, (e->n_exempt_users + 1) * sizeof(*nv));
        if (nv == NULL)
            return -ENOMEM;
        e->exempt_users = nv;
        char *u = dup_n(p, len);
        if (u == NULL)
            return -ENOMEM;
        for (char *c = u; *c; c++)
            *c = lower(*c);
        e->exempt_users[e->n_exempt_users++] = u;
        p += len;
    }
    return 0;
}

struct limits_engine *limits_engine_new(const struct config *cfg, struct config_errors *errs)
{
    struct limits_engine *e = calloc(1, sizeof(*e));
    const char *file = source_name(cfg);
    bool bad = false;

    if (e == NULL)
        return NULL;
    e->refs = 1;
    const char *da = cfg->default_action ? cfg->default_action : "DUNNO";
    e->default_action = dup_n(da, strlen(da));
    if (e->default_action == NULL)
        goto nomem;

    const char *text = cfg->limits ? cfg->limits : "";
    unsigned base = setting_line(cfg, "limits");
    size_t k = 0;
    for (const char *p = text; *p || p == text; k++) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        const char *q = p;
        while (q < p + len && (*q == ' ' || *q == '\t' || *q == '\r'))
            q++;
        int vl = config_value_line(cfg, "limits", k);
        unsigned lineno = vl > 0 ? (unsigned)vl : (base ? base + (unsigned)k : 0);
        if (q < p + len && *q != '#') {
            size_t qlen = (size_t)(p + len - q);
            while (qlen > 0 && (q[qlen - 1] == '\r' || q[qlen - 1] == ' '))
                qlen--;
            if (e->n_rules == LIMITS_MAX_RULES) {
                errf(errs, file, lineno, "limits: too many rules (at most %d)", LIMITS_MAX_RULES);
                bad = true;
                break;
            }
            struct limits_rule *r = &e->rule[e->n_rules];
            int rc = parse_rule(q, qlen, r, file, lineno, errs);
            if (rc == -ENOMEM)
                goto nomem;
            if (rc != 0) {
                bad = true;
            } else {
                bool dup = false;
                for (size_t i = 0; i < e->n_rules; i++) {
                    if (strcmp(e->rule[i].name, r->name) == 0) {
                        errf(errs, file, lineno,
                             "limits: duplicate rule name \"%s\" (first on line %u)", r->name,
                             e->rule[i].line);
                        dup = true;
                    }
                }
                if (dup) {
                    rule_free(r);
                    bad = true;
                } else {
                    if (cfg->limit_dry_run)
                        r->dryrun = true;
                    e->n_rules++;
                }
            }
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }

    /* Override tables: read now, so a missing or broken one fails check-config, start and
     * reload with FILE:LINE; the daemon then follows changes (server/engine.c). */
    for (size_t i = 0; i < e->n_rules && !bad; i++) {
        struct limits_rule *r = &e->rule[i];
        if (r->overrides == NULL)
            continue;
        int rc = limits_table_load(r->table_type, r->table_path, r->measure == LIMITS_BYTES,
                                   &r->table, NULL, errs);
        if (rc == -ENOMEM)
            goto nomem;
        if (rc != 0)
            bad = true;
    }

    /* Rules without their own action answer limit_action naming the rule, so the client
     * (and the log) see which limit was hit. */
    for (size_t i = 0; i < e->n_rules; i++) {
        struct limits_rule *r = &e->rule[i];
        if (r->action != NULL)
            continue;
        const char *la = cfg->limit_action ? cfg->limit_action : "450 4.7.1 Rate limit exceeded";
        size_t need = strlen(la) + strlen(r->name) + 4;
        r->action = malloc(need);
        if (r->action == NULL)
            goto nomem;
        snprintf(r->action, need, "%s (%s)", la, r->name);
        if (!valid_action(r->action)) {
            errf(errs, file, setting_line(cfg, "limit_action"),
                 "limit_action: not an access(5) action usable for a limit");
            bad = true;
            break;
        }
    }

    char why[160];
    int rc = net_set_parse(cfg->limit_exempt_networks, &e->exempt_nets, why, sizeof(why));
    if (rc == -ENOMEM)
        goto nomem;
    if (rc != 0) {
        errf(errs, file, setting_line(cfg, "limit_exempt_networks"), "limit_exempt_networks: %s",
             why);
        bad = true;
    }
    if (parse_exempt_users(e, cfg->limit_exempt_sasl_users) != 0)
        goto nomem;

    if (!bad)
        return e;
    limits_engine_free(e);
    return NULL;
nomem:
    limits_engine_free(e);
    return NULL;
}

struct limits_engine *limits_engine_ref(struct limits_engine *e)
{
    if (e != NULL)
        e->refs++;
    return e;
}

void limits_engine_free(struct limits_engine *e)
{
    if (e == NULL || --e->refs > 0)
        return;
    for (size_t i = 0; i < LIMITS_MAX_RULES; i++)
        rule_free(&e->rule[i]);
    net_set_free(e->exempt_nets);
    for (size_t i = 0; i < e->n_exempt_users; i++)
        free(e->exempt_users[i]);
    free(e->exempt_users);
    free(e->default_action);
    free(e);
}

size_t limits_engine_rule_count(const struct limits_engine *e)
{
    return e ? e->n_rules : 0;
}

int limits_engine_set_table(struct limits_engine *e, size_t i, struct limits_table *t)
{
    if (e == NULL || i >= e->n_rules || e->rule[i].overrides == NULL) {
        limits_table_free(t);
        return -EINVAL;
    }
    limits_table_free(e->rule[i].table);
    e->rule[i].table = t;
    return 0;
}

const struct limits_rule *limits_engine_rule(const struct limits_engine *e, size_t i)
{
    return (e != NULL && i < e->n_rules) ? &e->rule[i] : NULL;
}

/* ---- keys ---- */

/* Appends the escaped form of v[0..len) (lowercased when fold) to out at *n. Safe
 * characters pass; everything else (blanks, '%', '|', '#', controls, non-ASCII) becomes
 * %XX, so a key never holds a space or newline and '|' only separates parts. Returns
 * false when out is full. */
static bool put_escaped(char *out, size_t outsz, size_t *n, const char *v, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        char c = lower(v[i]);
        bool safe = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                    c == '-' || c == '@' || c == '/' || c == ':' || c == '+' || c == '=';
        if (safe) {
            if (*n + 1 >= outsz)
                return false;
            out[(*n)++] = c;
        } else {
            if (*n + 3 >= outsz)
                return false;
            out[(*n)++] = '%';
            out[(*n)++] = hex[(unsigned char)c >> 4];
            out[(*n)++] = hex[(unsigned char)c & 15];
        }
    }
    out[*n] = '\0';
    return true;
}

/* The domain of an address: after the last '@', without a trailing dot. */
static const char *domain_of(const char *v, size_t len, size_t *dlen)
{
    const char *at = NULL;
    for (size_t i = 0; i < len; i++)
        if (v[i] == '@')
            at = v + i;
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

/* One key component's raw value (before escaping); address parts are formatted into
 * buf. Returns its length, 0 for empty/unusable. */
static size_t part_value(const struct limits_rule *r, enum limits_key_part part, int k_attr,
                         const struct policy_request *req, const char **out, char *buf,
                         size_t bufsz)
{
    size_t len;
    const char *v;
    switch (part) {
    case LIMITS_KEY_CLIENT_ADDRESS: {
        v = attr(req, POLICY_CLIENT_ADDRESS, &len);
        struct net_addr a;
        /* Postfix always sends a numeric address; anything else cannot be grouped and
         * is not counted (rather than lumping unparsable values into one key). */
        if (len == 0 || net_addr_parse(v, len, &a) != 0)
            return 0;
        int n = net_prefix_format(&a, a.family == NET_V4 ? r->v4len : r->v6len, buf, bufsz);
        if (n <= 0)
            return 0;
        *out = buf;
        return (size_t)n;
    }
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
        v = attr(req, POLICY_SENDER, &len);
        v = domain_of(v, len, &len);
        break;
    case LIMITS_KEY_RECIPIENT_DOMAIN:
        v = attr(req, POLICY_RECIPIENT, &len);
        v = domain_of(v, len, &len);
        break;
    case LIMITS_KEY_ATTR:
        v = attr(req, (enum policy_attr)k_attr, &len);
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
    char esc[LIMITS_MAX_VALUE + 1];
    size_t n = 0;
    bool fits = true;
    uint64_t h = FNV64_OFFSET;
    char abuf[NET_ADDR_STRLEN];

    for (size_t k = 0; k < r->n_parts; k++) {
        const char *v = NULL;
        size_t len = part_value(r, r->part[k], r->part_attr[k], req, &v, abuf, sizeof(abuf));
        if (len == 0)
            return 0;
        if (k > 0) {
            h = fnv64_add(h, "|", 1);
            if (fits && n + 1 < sizeof(esc)) {
                esc[n++] = '|';
                esc[n] = '\0';
            } else {
                fits = false;
            }
        }
        h = fnv64_add_lower(h, v, len);
        if (fits && !put_escaped(esc, sizeof(esc), &n, v, len))
            fits = false;
    }
    if (!fits) {
        /* Long values (a 254-character address, a long combination) are hashed so keys
         * stay bounded; '#' never occurs in an escaped value, so no clash. */
        static const char hex[] = "0123456789abcdef";
        esc[0] = '#';
        for (int i = 0; i < 16; i++)
            esc[1 + i] = hex[(h >> (60 - 4 * i)) & 15];
        n = 17;
    }
    /* On the request path: no stdio. */
    if (n + 1 > outsz)
        return -ENOSPC;
    memcpy(out, esc, n);
    out[n] = '\0';
    return (int)n;
}

/* The value a condition tests ("" when absent). */
static const char *cond_value(const struct policy_request *req, int a, size_t *len)
{
    if (a == LIMITS_ATTR_SENDER_DOMAIN || a == LIMITS_ATTR_RECIPIENT_DOMAIN) {
        size_t l;
        const char *v =
            attr(req, a == LIMITS_ATTR_SENDER_DOMAIN ? POLICY_SENDER : POLICY_RECIPIENT, &l);
        return domain_of(v, l, len);
    }
    return attr(req, (enum policy_attr)a, len);
}

static bool cond_equal(const struct limits_cond *c, const char *v, size_t len)
{
    if (len == 0)
        return false; /* absent or empty equals nothing */
    if (c->nets != NULL) {
        struct net_addr a;
        return net_addr_parse(v, len, &a) == 0 && net_set_contains(c->nets, &a);
    }
    for (size_t i = 0; i < c->n_values; i++)
        if (strlen(c->values[i]) == len && strncasecmp(c->values[i], v, len) == 0)
            return true;
    return false;
}

bool limits_conds_hold(const struct limits_rule *r, const struct policy_request *req)
{
    for (size_t i = 0; i < r->n_conds; i++) {
        const struct limits_cond *c = &r->cond[i];
        size_t len;
        const char *v = cond_value(req, c->attr, &len);
        switch (c->op) {
        case LIMITS_COND_EQ:
            if (!cond_equal(c, v, len))
                return false;
            break;
        case LIMITS_COND_NE:
            if (cond_equal(c, v, len))
                return false;
            break;
        case LIMITS_COND_RE: {
            if (len == 0)
                return false;
            char buf[1024];
            if (v[len] != '\0') {
                /* A domain cut before trailing dots: matched on a copy. */
                if (len >= sizeof(buf))
                    return false;
                memcpy(buf, v, len);
                buf[len] = '\0';
                v = buf;
            }
            if (regexec(c->re, v, 0, NULL, 0) != 0)
                return false;
            break;
        }
        }
    }
    return true;
}

/* Writes "NAME:TAG:VALUE" to out (outsz >= LIMITS_KEY_MAX, which always fits a rule's
 * name, a tag and a key value); returns its length (0 and an empty key if it did not
 * fit). snprintf cost more than the rest of
 * the plan. */
static size_t key_join(char *out, size_t outsz, const char *name, const char *tag,
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

/* ---- units ---- */

static void units_clear(struct unit_set *u)
{
    /* A big transaction's table is released rather than kept for the whole life of the
     * policy connection. */
    if (u->cap > 64) {
        free(u->v);
        u->v = NULL;
        u->cap = 0;
    } else if (u->v != NULL) {
        memset(u->v, 0, u->cap * sizeof(*u->v));
    }
    u->n = 0;
}

static struct unit_entry *units_find(const struct unit_set *u, uint64_t id)
{
    if (u->cap == 0)
        return NULL;
    for (size_t i = id & (u->cap - 1);; i = (i + 1) & (u->cap - 1)) {
        if (u->v[i].id == id)
            return &u->v[i];
        if (u->v[i].id == 0)
            return NULL;
    }
}

/* Inserts id (not present). NULL when full or out of memory: the unit is then simply
 * not remembered. */
static struct unit_entry *units_add(struct unit_set *u, uint64_t id)
{
    if (u->n >= MAX_UNITS)
        return NULL;
    if ((u->n + 1) * 2 > u->cap) {
        size_t ncap = u->cap ? u->cap * 2 : 16;
        struct unit_entry *nv = calloc(ncap, sizeof(*nv));
        if (nv == NULL)
            return NULL;
        for (size_t i = 0; i < u->cap; i++) {
            if (u->v[i].id == 0)
                continue;
            size_t j = u->v[i].id & (ncap - 1);
            while (nv[j].id != 0)
                j = (j + 1) & (ncap - 1);
            nv[j] = u->v[i];
        }
        free(u->v);
        u->v = nv;
        u->cap = ncap;
    }
    size_t i = id & (u->cap - 1);
    while (u->v[i].id != 0)
        i = (i + 1) & (u->cap - 1);
    u->v[i].id = id;
    u->v[i].amount = 0;
    u->v[i].denied = false;
    u->n++;
    return &u->v[i];
}

/* ---- sessions ---- */

struct limits_session *limits_session_new(void)
{
    return calloc(1, sizeof(struct limits_session));
}

void limits_session_free(struct limits_session *s)
{
    if (s == NULL)
        return;
    free(s->units[0].v);
    free(s->units[1].v);
    free(s);
}

static void new_transaction(struct limits_session *s)
{
    units_clear(&s->units[SCOPE_INSTANCE]);
    s->rcpt_seen = false;
    s->epoch++;
}

void limits_session_reset(struct limits_session *s)
{
    if (s == NULL)
        return;
    units_clear(&s->units[SCOPE_SESSION]);
    new_transaction(s);
    s->have_client = false;
    s->have_instance = false;
}

/* ---- plan and finish ---- */

static void decision_init(struct limits_decision *d, const struct limits_engine *e)
{
    memset(d, 0, sizeof(*d));
    d->action = e->default_action;
    d->rule = -1;
}

static void decision_rule(struct limits_decision *d, const struct limits_engine *e, int rule,
                          bool dryrun)
{
    d->deny = true;
    d->dryrun = dryrun;
    d->rule = rule;
    d->rule_name = e->rule[rule].name;
    d->rule_action = e->rule[rule].action;
    d->action = dryrun ? e->default_action : e->rule[rule].action;
}

static bool is_exempt(const struct limits_engine *e, const struct policy_request *req)
{
    size_t len;
    const char *v = attr(req, POLICY_CLIENT_ADDRESS, &len);
    struct net_addr a;
    if (len > 0 && net_set_count(e->exempt_nets) > 0 && net_addr_parse(v, len, &a) == 0 &&
        net_set_contains(e->exempt_nets, &a))
        return true;
    v = attr(req, POLICY_SASL_USERNAME, &len);
    if (len > 0) {
        for (size_t i = 0; i < e->n_exempt_users; i++) {
            const char *u = e->exempt_users[i];
            if (strlen(u) != len)
                continue;
            size_t k = 0;
            while (k < len && lower(v[k]) == u[k])
                k++;
            if (k == len)
                return true;
        }
    }
    return false;
}

static uint64_t unit_id(uint64_t h)
{
    return h ? h : 1; /* 0 marks a free slot */
}

int limits_plan(struct limits_engine *e, struct limits_session *s, const struct policy_request *req,
                bool stressed, struct limits_plan *plan)
{
    if (e == NULL || s == NULL || req == NULL || plan == NULL)
        return -EINVAL;
    plan->n_ops = 0;
    plan->engine = e;
    plan->rcpt = 0;
    plan->cached_rule = -1;
    decision_init(&plan->decision, e);

    size_t len;
    const char *v;
    enum policy_state st = req->state;
    bool in_txn =
        st == POLICY_STATE_RCPT || st == POLICY_STATE_DATA || st == POLICY_STATE_END_OF_MESSAGE;

    /* One smtpd serves its SMTP sessions one after another on this policy connection: a
     * new client address or port means a new SMTP session. */
    v = attr(req, POLICY_CLIENT_ADDRESS, &len);
    uint64_t client = fnv64_add(FNV64_OFFSET, v, len);
    client = fnv64_add(client, "\0", 1);
    v = attr(req, POLICY_CLIENT_PORT, &len);
    client = fnv64_add(client, v, len);
    if (!s->have_client || s->client != client) {
        units_clear(&s->units[SCOPE_SESSION]);
        new_transaction(s);
        s->have_client = true;
        s->client = client;
        s->have_instance = false;
    }
    if (in_txn) {
        v = attr(req, POLICY_INSTANCE, &len);
        uint64_t inst = fnv64_add(FNV64_OFFSET, v, len);
        if (!s->have_instance || s->instance != inst) {
            new_transaction(s);
            s->have_instance = true;
            s->instance = inst;
        }
    }
    plan->session_epoch = s->epoch;

    v = attr(req, POLICY_STRESS, &len);
    stressed = stressed || (len == 3 && strncasecmp(v, "yes", 3) == 0);
    plan->stressed = stressed;
    plan->decision.stressed = stressed;

    if (is_exempt(e, req)) {
        plan->decision.exempt = true;
        return LIMITS_PLAN_DECIDED;
    }

    size_t rcpt_len = 0;
    const char *rcpt = attr(req, POLICY_RECIPIENT, &rcpt_len);
    int64_t size = attr_num(req, POLICY_SIZE);
    bool seen_any = false;
    bool rcpt_seen_before = s->rcpt_seen;
    if (st == POLICY_STATE_RCPT)
        s->rcpt_seen = true;

    for (size_t ri = 0; ri < e->n_rules; ri++) {
        const struct limits_rule *r = &e->rule[ri];
        int64_t amount = 0;
        int scope = SCOPE_INSTANCE;
        const char *suffix = NULL;

        switch (r->measure) {
        case LIMITS_CONNECTIONS:
            /* Counted at the first request of an SMTP session whose key is known,
             * whatever the state (with smtpd_delay_reject = yes that is the first
             * RCPT). */
            scope = SCOPE_SESSION;
            amount = 1;
            break;
        case LIMITS_MESSAGES:
            if (in_txn)
                amount = 1;
            break;
        case LIMITS_RECIPIENTS:
            if (st == POLICY_STATE_RCPT && rcpt_len > 0) {
                amount = 1;
                suffix = "r";
            } else if (st != POLICY_STATE_RCPT && in_txn && !rcpt_seen_before) {
                /* The policy is not called at RCPT: count the whole envelope once. */
                amount = attr_num(req, POLICY_RECIPIENT_COUNT);
                suffix = "n";
            }
            break;
        case LIMITS_BYTES:
            /* MAIL FROM SIZE at RCPT/DATA reserves early; END-OF-MESSAGE tops up to the
             * real size (a client may declare less than it sends). */
            if (in_txn)
                amount = size;
            break;
        }
        if (amount <= 0)
            continue;
        if (r->n_conds > 0 && !limits_conds_hold(r, req))
            continue;

        char value[LIMITS_MAX_VALUE + 1];
        int vn = limits_key_value(r, req, value, sizeof(value));
        if (vn <= 0)
            continue;
        int64_t limit = r->limit, stress_limit = r->stress_limit;
        if (r->table != NULL) {
            struct net_addr ca;
            const struct net_addr *cap = NULL;
            if (r->table_type == LIMITS_TABLE_CIDR) {
                v = attr(req, POLICY_CLIENT_ADDRESS, &len);
                if (net_addr_parse(v, len, &ca) == 0)
                    cap = &ca;
            }
            int64_t tv;
            if (limits_table_lookup(r->table, value, (size_t)vn, cap, &tv)) {
                if (tv == LIMITS_TABLE_UNLIMITED)
                    continue;
                limit = stress_limit = tv;
            }
        }
        struct limits_op *op = &plan->ops[plan->n_ops];
        size_t keylen = key_join(op->key, sizeof(op->key), r->name, r->tag, value, (size_t)vn);
        uint64_t h = fnv64_add(FNV64_OFFSET, op->key, keylen);
        if (suffix != NULL) {
            h = fnv64_add(h, "\0", 1);
            h = fnv64_add(h, suffix, 1);
            if (suffix[0] == 'r')
                h = fnv64_add_lower(h, rcpt, rcpt_len);
        }
        uint64_t id = unit_id(h);
        const struct unit_entry *u = units_find(&s->units[scope], id);
        if (u != NULL) {
            seen_any = true;
            if (u->denied) {
                if (!r->dryrun) {
                    /* The answer already given for this unit stands; nothing else is
                     * counted for a request that is denied anyway. */
                    plan->n_ops = 0;
                    decision_rule(&plan->decision, e, (int)ri, false);
                    plan->decision.cached = true;
                    return LIMITS_PLAN_DECIDED;
                }
                if (plan->cached_rule < 0)
                    plan->cached_rule = (int)ri;
                continue;
            }
            if (r->measure != LIMITS_BYTES || amount <= u->amount)
                continue;
            amount -= u->amount;
        }

        /* The primary op: the rule's own window, its stress limit when stressed and
         * the stress window is the same. */
        op->window_ms = r->window_ms;
        op->limit = (stressed && r->has_stress && r->stress_window_ms == r->window_ms)
                        ? stress_limit
                        : limit;
        op->amount = amount;
        op->rule = (uint16_t)ri;
        op->enforce = true;
        op->scope = (uint8_t)scope;
        op->unit = id;
        plan->n_ops++;
        if (r->has_stress && r->stress_window_ms != r->window_ms) {
            /* A separate stress counter, counted always so it is warm when stress
             * starts, enforced only under stress. */
            struct limits_op *op2 = &plan->ops[plan->n_ops++];
            key_join(op2->key, sizeof(op2->key), r->name, r->stress_tag, value, (size_t)vn);
            op2->window_ms = r->stress_window_ms;
            op2->limit = stressed ? stress_limit : LIMITS_COUNT_ONLY;
            op2->amount = amount;
            op2->rule = (uint16_t)ri;
            op2->enforce = stressed;
            op2->scope = (uint8_t)scope;
            op2->unit = 0; /* the primary op records the unit */
        }
    }

    if (plan->n_ops > 0)
        return LIMITS_PLAN_OPS;
    if (plan->cached_rule >= 0)
        decision_rule(&plan->decision, e, plan->cached_rule, true);
    plan->decision.cached = seen_any;
    return LIMITS_PLAN_DECIDED;
}

int limits_finish(struct limits_engine *e, struct limits_session *s, const struct limits_plan *plan,
                  const struct window_result *results, struct limits_decision *out)
{
    if (e == NULL || s == NULL || plan == NULL || out == NULL)
        return -EINVAL;
    if (plan->engine != e)
        return -ESTALE;
    decision_init(out, e);
    out->stressed = plan->stressed;
    if (results == NULL) {
        out->store_failed = true;
        out->action = NULL;
        return 0;
    }
    bool remember = plan->session_epoch == s->epoch;
    int deny_i = -1, dry_i = -1;

    for (size_t i = 0; i < plan->n_ops; i++) {
        const struct limits_op *op = &plan->ops[i];
        bool denied = op->enforce && !results[i].allowed;
        if (denied) {
            if (e->rule[op->rule].dryrun) {
                if (dry_i < 0)
                    dry_i = (int)i;
            } else if (deny_i < 0) {
                deny_i = (int)i;
            }
        }
        if (!remember)
            continue;
        uint64_t id = op->unit;
        if (id == 0) {
            /* A rule's second op: its verdict goes to the unit of the op before it. */
            if (i == 0 || !denied)
                continue;
            id = plan->ops[i - 1].unit;
        }
        struct unit_set *set = &s->units[op->scope];
        struct unit_entry *u = units_find(set, id);
        if (u == NULL)
            u = units_add(set, id);
        if (u == NULL)
            continue;
        if (denied)
            u->denied = true;
        else if (op->unit != 0 && results[i].allowed)
            u->amount += op->amount;
    }

    int pick = deny_i;
    bool dry = false;
    if (pick < 0 && (dry_i >= 0 || plan->cached_rule >= 0)) {
        dry = true;
        pick = dry_i;
        if (pick < 0 || (plan->cached_rule >= 0 && plan->cached_rule < plan->ops[pick].rule)) {
            decision_rule(out, e, plan->cached_rule, true);
            out->cached = true;
            return 0;
        }
    }
    if (pick >= 0) {
        const struct limits_op *op = &plan->ops[pick];
        decision_rule(out, e, op->rule, dry);
        out->count = results[pick].count;
        out->limit = op->limit;
        out->window_ms = op->window_ms;
        out->key = op->key;
    }
    return 0;
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
    size_t n = key_join(out, outsz, r->name, stress ? r->stress_tag : r->tag, value, vl);
    return n ? (int)n : -ENOSPC;
}
