/* limits_parse: the `limits` rules and exemptions of a config, parsed into an immutable
 * engine (see limits_engine.h for the syntax). */
#include "limits_impl.h"

#include "hash.h"
#include "limits_rt.h"

#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    snprintf(out, 9, "%08x", (unsigned)fnv32(buf, strlen(buf)));
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
    free(c->value_len);
    net_set_free(c->nets);
    if (c->re != NULL) {
        regfree(c->re);
        free(c->re);
    }
    free(c->memo);
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
        c->memo = calloc(1, sizeof(*c->memo));
        if (c->memo == NULL)
            return -ENOMEM;
        c->memo->have_first = limits_re_first(v, c->memo->first);
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
        size_t *nl = realloc(c->value_len, (c->n_values + 1) * sizeof(*nl));
        if (nl == NULL)
            return -ENOMEM;
        c->value_len = nl;
        if ((c->values[c->n_values] = dup_n(q, n)) == NULL)
            return -ENOMEM;
        c->value_len[c->n_values] = n;
        c->n_values++;
        if (q[n] == '\0')
            break;
        q += n + 1;
    }
    return 0;
}

/* Parses one rule line into r (action left NULL when not given). Returns 0, -EINVAL
 * (message appended) or -ENOMEM. */
/* Appends "FILE:LINE: limits: rule NAME: text" to errs. */
__attribute__((format(printf, 5, 6))) static void rule_err(struct config_errors *errs,
                                                           const char *file, unsigned line,
                                                           const struct limits_rule *r,
                                                           const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    config_errors_addf(errs, file, line, "limits: rule %s: %s", r->name, text);
}

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
        config_errors_addf(errs, file, lineno,
                           "limits: bad rule name \"%.*s\": 1 to %d of A-Z a-z 0-9 _ . -",
                           TOKF(name), LIMITS_MAX_NAME);
        return -EINVAL;
    }
    memcpy(r->name, name.p, name.len);
    r->name[name.len] = '\0';
    if (rate.len == 0) {
        rule_err(errs, file, lineno, r, "missing fields: expected NAME KEY MEASURE COUNT/WINDOW");
        return -EINVAL;
    }
    if (!parse_key(key, r, why, sizeof(why))) {
        rule_err(errs, file, lineno, r, "%s", why);
        return -EINVAL;
    }
    int m = -1;
    for (size_t k = 0; k < sizeof(measure_names) / sizeof(measure_names[0]); k++)
        if (tok_is(measure, measure_names[k]))
            m = (int)k;
    if (m < 0) {
        rule_err(errs, file, lineno, r,
                 "unknown measure \"%.*s\": expected connections, messages, "
                 "recipients or bytes",
                 TOKF(measure));
        return -EINVAL;
    }
    r->measure = (enum limits_measure)m;
    if (r->measure == LIMITS_CONNECTIONS) {
        for (size_t k = 0; k < r->n_parts; k++) {
            if (!session_constant(r->part[k], r->part_attr[k])) {
                rule_err(errs, file, lineno, r,
                         "connections need a key that stays the same within an "
                         "SMTP session, not %s",
                         part_name(r, k));
                return -EINVAL;
            }
        }
    }
    const char *reason = parse_rate(rate, r->measure == LIMITS_BYTES, &r->limit, &r->window_ms);
    if (reason != NULL) {
        rule_err(errs, file, lineno, r, "\"%.*s\": %s", TOKF(rate), reason);
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
                rule_err(errs, file, lineno, r, "stress given twice");
                return -EINVAL;
            }
            if (sr.len == 0) {
                rule_err(errs, file, lineno, r, "stress needs COUNT/WINDOW");
                return -EINVAL;
            }
            reason =
                parse_rate(sr, r->measure == LIMITS_BYTES, &r->stress_limit, &r->stress_window_ms);
            if (reason != NULL) {
                rule_err(errs, file, lineno, r, "stress \"%.*s\": %s", TOKF(sr), reason);
                return -EINVAL;
            }
            r->has_stress = true;
        } else if (tok_is(opt, "dryrun")) {
            r->dryrun = true;
        } else if (tok_is(opt, "if")) {
            struct tok ct = next_tok(&p, end);
            if (ct.len == 0) {
                rule_err(errs, file, lineno, r, "if needs ATTR=V1,V2, ATTR!=V1,V2 or ATTR~REGEX");
                return -EINVAL;
            }
            if (r->n_conds == LIMITS_MAX_CONDS) {
                rule_err(errs, file, lineno, r, "too many conditions (at most %d)",
                         LIMITS_MAX_CONDS);
                return -EINVAL;
            }
            int rc = parse_cond(ct, &r->cond[r->n_conds++], why, sizeof(why));
            if (rc == -ENOMEM)
                return rc;
            if (rc != 0) {
                rule_err(errs, file, lineno, r, "%s", why);
                return -EINVAL;
            }
        } else if (tok_is(opt, "overrides")) {
            struct tok ot = next_tok(&p, end);
            if (r->overrides != NULL) {
                rule_err(errs, file, lineno, r, "overrides given twice");
                return -EINVAL;
            }
            if ((r->overrides = dup_n(ot.p, ot.len)) == NULL)
                return -ENOMEM;
            if (limits_table_spec(r->overrides, ot.len, &r->table_type, &r->table_path, why,
                                  sizeof(why)) != 0) {
                rule_err(errs, file, lineno, r, "%s", why);
                return -EINVAL;
            }
            bool has_client = false;
            for (size_t k = 0; k < r->n_parts; k++)
                has_client |= r->part[k] == LIMITS_KEY_CLIENT_ADDRESS;
            if (r->table_type == LIMITS_TABLE_CIDR && !has_client) {
                rule_err(errs, file, lineno, r, "overrides cidr: needs a key with client_address");
                return -EINVAL;
            }
        } else if (tok_is(opt, "action")) {
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            size_t alen = (size_t)(end - p);
            while (alen > 0 && (p[alen - 1] == ' ' || p[alen - 1] == '\t'))
                alen--;
            if (alen == 0) {
                rule_err(errs, file, lineno, r, "action needs text");
                return -EINVAL;
            }
            r->action = dup_n(p, alen);
            if (r->action == NULL)
                return -ENOMEM;
            if (!valid_action(r->action)) {
                rule_err(errs, file, lineno, r,
                         "bad action \"%.*s\": expected an access(5) action: "
                         "4NN/5NN text, DEFER_IF_PERMIT, DEFER_IF_REJECT, DEFER, REJECT, HOLD, "
                         "DISCARD, WARN or INFO",
                         (int)(alen > 64 ? 64 : alen), p);
                free(r->action);
                r->action = NULL;
                return -EINVAL;
            }
            break;
        } else {
            rule_err(errs, file, lineno, r,
                     "unknown option \"%.*s\": expected stress COUNT/WINDOW, "
                     "dryrun, if CONDITION, overrides TYPE:PATH or action TEXT",
                     TOKF(opt));
            return -EINVAL;
        }
    }
    make_tag(r, r->window_ms, r->tag);
    make_tag(r, r->stress_window_ms, r->stress_tag);
    r->key_prefix_len =
        limits_key_join(r->key_prefix, sizeof(r->key_prefix), r->name, r->tag, "", 0);
    r->key_hash = hash64_add(HASH64_START, r->key_prefix, r->key_prefix_len);
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
                config_errors_addf(errs, file, lineno, "limits: too many rules (at most %d)",
                                   LIMITS_MAX_RULES);
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
                        config_errors_addf(errs, file, lineno,
                                           "limits: duplicate rule name \"%s\" (first on line %u)",
                                           r->name, e->rule[i].line);
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
            config_errors_addf(errs, file, setting_line(cfg, "limit_action"),
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
        config_errors_addf(errs, file, setting_line(cfg, "limit_exempt_networks"),
                           "limit_exempt_networks: %s", why);
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
    limits_rt_free(e->rt);
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

void limits_engine_set_runtime(struct limits_engine *e, struct limits_rt *rt)
{
    if (e == NULL)
        return;
    if (limits_rt_count(rt) == 0)
        rt = NULL; /* the request path then skips the lookup */
    limits_rt_ref(rt);
    limits_rt_free(e->rt);
    e->rt = rt;
}

const struct limits_rt *limits_engine_runtime(const struct limits_engine *e)
{
    return e ? e->rt : NULL;
}

enum limits_source limits_override(const struct limits_engine *e, size_t i, const char *value,
                                   size_t vlen, const struct net_addr *client, int64_t *limit)
{
    const struct limits_rule *r = &e->rule[i];
    const struct limits_rt_entry *rte = limits_rt_lookup(e->rt, r->name, value, vlen);
    if (rte != NULL) {
        *limit = rte->count;
        return LIMITS_SOURCE_RUNTIME;
    }
    if (r->table != NULL && limits_table_lookup(r->table, value, vlen, client, limit))
        return LIMITS_SOURCE_TABLE;
    return LIMITS_SOURCE_RULE;
}

const struct limits_rule *limits_engine_rule(const struct limits_engine *e, size_t i)
{
    return (e != NULL && i < e->n_rules) ? &e->rule[i] : NULL;
}
