/* maillog: parses Postfix log lines into tagged records, and splits a byte stream into
 * bounded lines. A cursor walks the line; every step checks the end, so the parser never
 * relies on NUL termination. Shapes follow the lines quoted in postfix-facts.md and
 * the format strings of master, postscreen, anvil, smtpd and the delivery agents. */
#include "maillog.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct cur {
    const char *p;
    const char *end;
};

static size_t cur_left(const struct cur *c)
{
    return (size_t)(c->end - c->p);
}

/* Consumes lit when the input starts with it. */
static bool cur_lit(struct cur *c, const char *lit)
{
    size_t n = strlen(lit);
    if (cur_left(c) < n || memcmp(c->p, lit, n) != 0)
        return false;
    c->p += n;
    return true;
}

/* Position of the first occurrence of lit at or after c->p, or NULL. */
static const char *cur_find(const struct cur *c, const char *lit)
{
    size_t n = strlen(lit);
    for (const char *q = c->p; (size_t)(c->end - q) >= n; q++)
        if (memcmp(q, lit, n) == 0)
            return q;
    return NULL;
}

/* Consumes a decimal number (at most 18 digits, so it cannot overflow). */
static bool cur_ulong(struct cur *c, unsigned long *out)
{
    unsigned long v = 0;
    size_t n = 0;
    while (c->p < c->end && isdigit((unsigned char)*c->p)) {
        if (++n > 18)
            return false;
        v = v * 10 + (unsigned long)(*c->p - '0');
        c->p++;
    }
    if (n == 0)
        return false;
    *out = v;
    return true;
}

/* Copies [s, s+n) into dst (cap bytes) with a NUL; a cut marks the record. */
static void put(struct maillog_record *rec, char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        rec->truncated = true;
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

#define PUT(rec, field, s, n) put((rec), (rec)->field, sizeof((rec)->field), (s), (n))

static bool is_month(const char *p)
{
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    for (size_t i = 0; i < 36; i += 3)
        if (memcmp(p, months + i, 3) == 0)
            return true;
    return false;
}

static const char *skip_spaces(const char *p, const char *end)
{
    while (p < end && *p == ' ')
        p++;
    return p;
}

static const char *skip_token(const char *p, const char *end)
{
    while (p < end && *p != ' ')
        p++;
    return p;
}

/* "Mmm dd hh:mm:ss HOST TAG[PID]: " or "ISO-TIME HOST TAG[PID]: ". Leaves c at the
 * message. Returns false when the line has no syslog shape or no Postfix-style tag. */
static bool parse_header(struct cur *c, struct maillog_record *rec)
{
    const char *p = c->p, *end = c->end;
    const char *ts = p;
    if (end - p >= 15 && is_month(p) && p[3] == ' ') {
        p = skip_spaces(p + 3, end);
        p = skip_token(p, end); /* day */
        p = skip_spaces(p, end);
        p = skip_token(p, end); /* hh:mm:ss */
    } else if (p < end && isdigit((unsigned char)*p)) {
        p = skip_token(p, end); /* 2024-11-23T03:33:29.123456+00:00 */
    } else {
        return false;
    }
    if (p >= end)
        return false;
    PUT(rec, timestamp, ts, (size_t)(p - ts));
    p = skip_spaces(p, end);
    const char *host = p;
    p = skip_token(p, end);
    if (p == host || p >= end)
        return false;
    PUT(rec, host, host, (size_t)(p - host));
    p = skip_spaces(p, end);

    /* The tag ends at "[pid]: " or ": ". */
    const char *tag = p;
    while (p < end && *p != '[' && *p != ':' && *p != ' ')
        p++;
    if (p == tag || p >= end)
        return false;
    const char *tag_end = p;
    if (*p == '[') {
        struct cur pc = {p + 1, end};
        unsigned long pid;
        if (!cur_ulong(&pc, &pid) || !cur_lit(&pc, "]"))
            return false;
        rec->pid = (long)pid;
        p = pc.p;
    }
    if (end - p < 2 || p[0] != ':' || p[1] != ' ')
        return false;
    c->p = p + 2;

    /* syslog_name may itself contain '/' (postfix/submission/smtpd): split at the last. */
    const char *slash = NULL;
    for (const char *q = tag; q < tag_end; q++)
        if (*q == '/')
            slash = q;
    if (!slash || slash == tag || slash + 1 == tag_end)
        return false;
    PUT(rec, syslog_name, tag, (size_t)(slash - tag));
    PUT(rec, daemon, slash + 1, (size_t)(tag_end - slash - 1));
    return true;
}

static bool daemon_is(const struct maillog_record *rec, const char *name)
{
    return strcmp(rec->daemon, name) == 0;
}

/* CLIENT is "name[addr]", "name[addr]:port" or "[addr]:port". Leaves c after it. */
static bool parse_client(struct cur *c, struct maillog_record *rec)
{
    const char *name = c->p;
    while (c->p < c->end && *c->p != '[' && *c->p != ' ')
        c->p++;
    if (c->p >= c->end || *c->p != '[')
        return false;
    PUT(rec, client_name, name, (size_t)(c->p - name));
    const char *addr = ++c->p;
    while (c->p < c->end && *c->p != ']' && *c->p != ' ')
        c->p++;
    if (c->p >= c->end || *c->p != ']' || c->p == addr)
        return false;
    PUT(rec, client_addr, addr, (size_t)(c->p - addr));
    c->p++;
    if (cur_left(c) >= 2 && c->p[0] == ':' && isdigit((unsigned char)c->p[1])) {
        c->p++;
        unsigned long port;
        if (!cur_ulong(c, &port) || port > 65535)
            return false;
        rec->client_port = (unsigned)port;
    }
    return true;
}

/* master: warning: service "smtpd" (private/smtpd) has reached its process limit "4": ... */
static bool parse_master(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "warning: service \""))
        return false;
    const char *svc = c->p;
    const char *q = cur_find(c, "\" (");
    if (!q)
        return false;
    PUT(rec, service, svc, (size_t)(q - svc));
    c->p = q + 3;
    q = cur_find(c, ") has reached its process limit \"");
    if (!q)
        return false;
    PUT(rec, endpoint, c->p, (size_t)(q - c->p));
    c->p = q + strlen(") has reached its process limit \"");
    if (!cur_ulong(c, &rec->limit) || !cur_lit(c, "\""))
        return false;
    rec->kind = MAILLOG_PROCESS_LIMIT;
    return true;
}

/* postscreen: entering/leaving STRESS mode with N connections */
static bool parse_postscreen_stress(struct cur *c, struct maillog_record *rec)
{
    enum maillog_kind kind;
    if (cur_lit(c, "entering STRESS mode with "))
        kind = MAILLOG_POSTSCREEN_ENTER;
    else if (cur_lit(c, "leaving STRESS mode with "))
        kind = MAILLOG_POSTSCREEN_LEAVE;
    else
        return false;
    if (!cur_ulong(c, &rec->count) || !cur_lit(c, " connections"))
        return false;
    rec->kind = kind;
    return true;
}

const char *const maillog_ps_verdicts[MAILLOG_PS_VERDICT_COUNT + 1] = {
    "pregreet",   "hangup",         "dnsbl",      "pass_new", "pass_old",     "allowlisted",
    "denylisted", "allowlist_veto", "pipelining", "non_smtp", "bare_newline", "command_limit",
    NULL};

/* postscreen's verdict lines (postscreen_early.c, postscreen_smtpd.c, postscreen_misc.c):
 * "PREGREET N after T from [A]:P: ...", "HANGUP after T from [A]:P in ...", "DNSBL rank N
 * for [A]:P", "PASS NEW [A]:P", "PASS OLD [A]:P", "ALLOWLISTED [A]:P" (WHITELISTED before
 * Postfix 3.6), "DENYLISTED [A]:P" (BLACKLISTED), "ALLOWLIST VETO [A]:P" (WHITELIST VETO),
 * "COMMAND PIPELINING from [A]:P after ...", "NON-SMTP COMMAND from ...", "BARE NEWLINE
 * from ...", "COMMAND TIME|COUNT|LENGTH LIMIT from ...". */
static bool parse_postscreen_verdict(struct cur *c, struct maillog_record *rec)
{
    static const struct {
        const char *prefix;
        int verdict; /* index in maillog_ps_verdicts */
    } forms[] = {
        {"PREGREET ", 0},
        {"HANGUP after ", 1},
        {"DNSBL rank ", 2},
        {"PASS NEW [", 3},
        {"PASS OLD [", 4},
        {"ALLOWLISTED [", 5},
        {"WHITELISTED [", 5},
        {"DENYLISTED [", 6},
        {"BLACKLISTED [", 6},
        {"ALLOWLIST VETO [", 7},
        {"WHITELIST VETO [", 7},
        {"COMMAND PIPELINING from ", 8},
        {"NON-SMTP COMMAND from ", 9},
        {"BARE NEWLINE from ", 10},
        {"COMMAND TIME LIMIT from ", 11},
        {"COMMAND COUNT LIMIT from ", 11},
        {"COMMAND LENGTH LIMIT from ", 11},
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        size_t n = strlen(forms[i].prefix);
        if (cur_left(c) < n || memcmp(c->p, forms[i].prefix, n) != 0)
            continue;
        /* The client is the first "[A]:P" of the line (PREGREET's text comes after it). */
        struct cur cl = {c->p, c->end};
        const char *br = cur_find(&cl, "[");
        if (!br)
            return false;
        cl.p = br;
        if (!parse_client(&cl, rec))
            return false;
        const char *v = maillog_ps_verdicts[forms[i].verdict];
        PUT(rec, stage, v, strlen(v));
        rec->kind = MAILLOG_POSTSCREEN_VERDICT;
        return true;
    }
    return false;
}

static const struct {
    const char *prefix;
    enum maillog_anvil_stat stat;
    bool rate;
} anvil_stats[] = {
    {"statistics: max connection rate ", MAILLOG_ANVIL_CONNECTION_RATE, true},
    {"statistics: max connection count ", MAILLOG_ANVIL_CONNECTION_COUNT, false},
    {"statistics: max message rate ", MAILLOG_ANVIL_MESSAGE_RATE, true},
    {"statistics: max recipient rate ", MAILLOG_ANVIL_RECIPIENT_RATE, true},
    {"statistics: max newtls rate ", MAILLOG_ANVIL_NEWTLS_RATE, true},
    {"statistics: max new TLS session rate ", MAILLOG_ANVIL_NEWTLS_RATE, true},
    {"statistics: max auth rate ", MAILLOG_ANVIL_AUTH_RATE, true},
    {"statistics: max cache size ", MAILLOG_ANVIL_CACHE_SIZE, false},
};

/* anvil: statistics: max connection rate 40/60s for (smtp:192.0.2.7) at Nov 23 03:33:59 */
static bool parse_anvil(struct cur *c, struct maillog_record *rec)
{
    for (size_t i = 0; i < sizeof(anvil_stats) / sizeof(anvil_stats[0]); i++) {
        if (!cur_lit(c, anvil_stats[i].prefix))
            continue;
        if (!cur_ulong(c, &rec->count))
            return false;
        if (anvil_stats[i].rate) {
            if (!cur_lit(c, "/") || !cur_ulong(c, &rec->interval_s) || !cur_lit(c, "s"))
                return false;
        }
        if (anvil_stats[i].stat != MAILLOG_ANVIL_CACHE_SIZE) {
            if (!cur_lit(c, " for ("))
                return false;
            const char *q = cur_find(c, ") at ");
            if (!q)
                return false;
            PUT(rec, key, c->p, (size_t)(q - c->p));
        }
        rec->anvil_stat = anvil_stats[i].stat;
        rec->kind = MAILLOG_ANVIL_STATS;
        return true;
    }
    return false;
}

static const struct {
    const char *what;
    enum maillog_limit kind;
} limit_names[] = {
    {"Connection concurrency", MAILLOG_LIMIT_CONNECTION_COUNT},
    {"Connection rate", MAILLOG_LIMIT_CONNECTION_RATE},
    {"Message delivery request rate", MAILLOG_LIMIT_MESSAGE_RATE},
    {"Recipient address rate", MAILLOG_LIMIT_RECIPIENT_RATE},
    {"New TLS session rate", MAILLOG_LIMIT_NEWTLS_RATE},
    {"AUTH command rate", MAILLOG_LIMIT_AUTH_RATE},
};

/* warning: Connection rate limit exceeded: 5 from host[192.0.2.7] for service smtp */
static bool parse_limit(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "warning: "))
        return false;
    const char *what = c->p;
    const char *q = cur_find(c, " limit exceeded: ");
    if (!q)
        return false;
    rec->limit_kind = MAILLOG_LIMIT_OTHER;
    for (size_t i = 0; i < sizeof(limit_names) / sizeof(limit_names[0]); i++) {
        size_t n = strlen(limit_names[i].what);
        if ((size_t)(q - what) == n && memcmp(what, limit_names[i].what, n) == 0)
            rec->limit_kind = limit_names[i].kind;
    }
    c->p = q + strlen(" limit exceeded: ");
    if (!cur_ulong(c, &rec->count) || !cur_lit(c, " from ") || !parse_client(c, rec))
        return false;
    if (cur_lit(c, " for service "))
        PUT(rec, service, c->p, cur_left(c));
    rec->kind = MAILLOG_LIMIT_EXCEEDED;
    return true;
}

/* lost connection after CONNECT from host[addr]; "after DATA (0 bytes) from" too. */
static bool parse_lost(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "lost connection after "))
        return false;
    const char *st = c->p;
    while (c->p < c->end && *c->p != ' ')
        c->p++;
    PUT(rec, stage, st, (size_t)(c->p - st));
    const char *q = cur_find(c, " from ");
    if (!q)
        return false;
    c->p = q + strlen(" from ");
    if (!parse_client(c, rec))
        return false;
    rec->kind = MAILLOG_LOST_CONNECTION;
    return true;
}

static void set_domain(struct maillog_record *rec)
{
    const char *at = strrchr(rec->recipient, '@');
    rec->domain[0] = '\0';
    if (!at)
        return;
    size_t n = strlen(at + 1);
    PUT(rec, domain, at + 1, n);
    for (char *d = rec->domain; *d; d++)
        *d = (char)tolower((unsigned char)*d);
}

/* Extracts "<addr>" starting at c->p (which is at '<'). The address ends at the first
 * '>' followed by one of the characters in `follow` or by the end of the line, so a
 * quoted local part may hold a '>'. */
static bool take_angle(struct cur *c, struct maillog_record *rec, const char *follow)
{
    if (!cur_lit(c, "<"))
        return false;
    for (const char *q = c->p; q < c->end; q++) {
        if (*q != '>' || (q + 1 < c->end && !strchr(follow, q[1])))
            continue;
        PUT(rec, recipient, c->p, (size_t)(q - c->p));
        c->p = q + 1;
        set_domain(rec);
        return true;
    }
    return false;
}

/* After "CONNECT from [A]:P: ": postscreen's "all server ports busy" (its smtpd processes
 * are all taken) or "all screening ports busy" (postscreen_pre_queue_limit reached). */
static bool parse_ports_busy(struct cur *c, struct maillog_record *rec)
{
    static const char *const phrases[] = {"all server ports busy", "all screening ports busy"};
    for (size_t i = 0; i < 2; i++) {
        if (cur_left(c) == strlen(phrases[i]) && cur_lit(c, phrases[i])) {
            PUT(rec, text, phrases[i], strlen(phrases[i]));
            rec->kind = MAILLOG_PORTS_BUSY;
            return true;
        }
    }
    return false;
}

/* postscreen without a queue id: reject: connect from [A]:P: all screening ports busy */
static bool parse_connect_reject(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "reject: connect from "))
        return false;
    PUT(rec, stage, "CONNECT", 7);
    return parse_client(c, rec) && cur_lit(c, ": ") && parse_ports_busy(c, rec);
}

/* warning: CLIENT: SASL METHOD authentication failed: REASON[, sasl_username=USER]
 * (smtpd_sasl_glue.c; REASON may be empty, METHOD is as the client sent it). */
static bool parse_auth_failed(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "warning: ") || !parse_client(c, rec) || !cur_lit(c, ": SASL "))
        return false;
    const char *m = c->p;
    while (c->p < c->end && *c->p != ' ')
        c->p++;
    if (c->p == m || !cur_lit(c, " authentication failed:"))
        return false;
    PUT(rec, sasl_method, m, (size_t)(c->p - m - strlen(" authentication failed:")));
    for (char *p = rec->sasl_method; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    cur_lit(c, " ");
    const char *text = c->p, *text_end = c->end;
    /* The username is the last field; a reason could itself hold the words. */
    static const char key[] = ", sasl_username=";
    for (const char *q = c->end - (sizeof(key) - 1); q >= text; q--) {
        if (memcmp(q, key, sizeof(key) - 1) == 0) {
            text_end = q;
            PUT(rec, sasl_username, q + sizeof(key) - 1, (size_t)(c->end - q) - (sizeof(key) - 1));
            /* Postfix writes this when the client sent no name (smtpd_sasl_glue.c). */
            if (strcmp(rec->sasl_username, "(unavailable)") == 0)
                rec->sasl_username[0] = '\0';
            break;
        }
    }
    PUT(rec, text, text, (size_t)(text_end - text));
    rec->kind = MAILLOG_AUTH_FAILED;
    return true;
}

/* qmgr: QUEUEID: from=<S>, status=expired, returned to sender (maximal_queue_lifetime) or
 * status=force-expired (postsuper -e). */
static bool parse_expired(struct cur *c, struct maillog_record *rec)
{
    if (!daemon_is(rec, "qmgr") || !cur_lit(c, "from=<"))
        return false;
    const char *s = c->p;
    static const char *const words[] = {"expired", "force-expired"};
    static const char tail[] = ", returned to sender";
    const char *q = cur_find(c, ">, status=");
    if (!q)
        return false;
    struct cur t = {q + strlen(">, status="), c->end};
    size_t w = 0;
    while (w < 2 && !(cur_lit(&t, words[w]) && cur_left(&t) == strlen(tail) && cur_lit(&t, tail)))
        w++;
    if (w == 2)
        return false;
    PUT(rec, sender, s, (size_t)(q - s));
    PUT(rec, status_word, words[w], strlen(words[w]));
    rec->kind = MAILLOG_EXPIRED;
    return true;
}

/* QUEUEID: reject: STAGE from CLIENT: CODE DSN TEXT; from=<s> to=<r> proto=... */
static bool parse_reject(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "reject: "))
        return false;
    const char *st = c->p;
    while (c->p < c->end && *c->p != ' ')
        c->p++;
    PUT(rec, stage, st, (size_t)(c->p - st));
    if (!cur_lit(c, " from ") || !parse_client(c, rec) || !cur_lit(c, ": "))
        return false;
    if (strcmp(rec->stage, "CONNECT") == 0 && parse_ports_busy(c, rec))
        return true;
    unsigned long code;
    if (!cur_ulong(c, &code) || code < 200 || code > 599 || !cur_lit(c, " "))
        return false;
    rec->code = (unsigned)code;
    const char *dsn = c->p;
    while (c->p < c->end && (isdigit((unsigned char)*c->p) || *c->p == '.'))
        c->p++;
    if (c->p > dsn) {
        PUT(rec, dsn, dsn, (size_t)(c->p - dsn));
        cur_lit(c, " ");
    }
    const char *text = c->p;
    const char *tail = cur_find(c, "; from=<");
    const char *text_end = tail ? tail : c->end;
    PUT(rec, text, text, (size_t)(text_end - text));
    struct cur tc = {text, text_end};
    rec->reject_class =
        cur_find(&tc, "User unknown") ? MAILLOG_REJECT_UNKNOWN_USER : MAILLOG_REJECT_OTHER;
    /* The recipient: to=<...> in the tail, else the "<u@d>: " that opens a RCPT reply. */
    struct cur rc = {tail ? tail : c->end, c->end};
    const char *to = cur_find(&rc, " to=<");
    if (to) {
        rc.p = to + 4;
        take_angle(&rc, rec, " ,;");
    } else if (text < text_end && *text == '<') {
        struct cur ac = {text, text_end};
        take_angle(&ac, rec, ":");
    }
    rec->kind = MAILLOG_REJECT;
    return true;
}

/* "0.14" -> 140 ms; at most 3 decimals are used. */
static bool parse_delay(const char *s, size_t n, int64_t *out)
{
    struct cur c = {s, s + n};
    unsigned long whole, frac = 0;
    if (!cur_ulong(&c, &whole) || whole > 100000000UL)
        return false;
    int64_t ms = (int64_t)whole * 1000;
    if (cur_lit(&c, ".")) {
        int digits = 0;
        while (c.p < c.end && isdigit((unsigned char)*c.p)) {
            if (digits < 3) {
                frac = frac * 10 + (unsigned long)(*c.p - '0');
                digits++;
            }
            c.p++;
        }
        while (digits++ < 3)
            frac *= 10;
        ms += (int64_t)frac;
    }
    if (c.p != c.end)
        return false;
    *out = ms;
    return true;
}

static const struct {
    const char *word;
    enum maillog_status status;
} statuses[] = {
    {"sent", MAILLOG_STATUS_SENT},
    {"deferred", MAILLOG_STATUS_DEFERRED},
    {"bounced", MAILLOG_STATUS_BOUNCED},
    {"deliverable", MAILLOG_STATUS_DELIVERABLE},
    {"undeliverable", MAILLOG_STATUS_UNDELIVERABLE},
    {"undeliverable-but-not-cached", MAILLOG_STATUS_UNDELIVERABLE},
};

/* QUEUEID: to=<a@d>, [orig_to=<..>, ]relay=R, delay=D, delays=a/b/c/d, dsn=X.Y.Z,
 * status=WORD (TEXT) */
static bool parse_delivery(struct cur *c, struct maillog_record *rec)
{
    if (!cur_lit(c, "to=") || !take_angle(c, rec, ","))
        return false;
    bool have_status = false;
    while (cur_lit(c, ", ")) {
        const char *key = c->p;
        const char *eq = memchr(c->p, '=', cur_left(c));
        if (!eq)
            return false;
        size_t klen = (size_t)(eq - key);
        c->p = eq + 1;
        if (klen == 6 && memcmp(key, "status", 6) == 0) {
            const char *w = c->p;
            while (c->p < c->end && *c->p != ' ' && *c->p != ',')
                c->p++;
            PUT(rec, status_word, w, (size_t)(c->p - w));
            rec->status = MAILLOG_STATUS_OTHER;
            for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
                if (strcmp(rec->status_word, statuses[i].word) == 0)
                    rec->status = statuses[i].status;
            if (cur_lit(c, " (")) {
                /* The text runs to the last ')' of the line; it may hold parentheses. */
                const char *t = c->p, *e = c->end;
                while (e > t && e[-1] != ')')
                    e--;
                if (e > t)
                    PUT(rec, text, t, (size_t)(e - 1 - t));
            }
            have_status = true;
            break;
        }
        /* orig_to=<...> may contain ", " inside a quoted local part: skip to ">, ". */
        const char *v = c->p;
        const char *q = (cur_left(c) && *v == '<') ? cur_find(c, ">, ") : NULL;
        q = q ? q + 1 : cur_find(c, ", ");
        if (!q)
            q = c->end;
        size_t vlen = (size_t)(q - v);
        if (klen == 5 && memcmp(key, "relay", 5) == 0) {
            PUT(rec, relay, v, vlen);
        } else if (klen == 5 && memcmp(key, "delay", 5) == 0) {
            if (!parse_delay(v, vlen, &rec->delay_ms))
                return false;
        } else if (klen == 3 && memcmp(key, "dsn", 3) == 0) {
            PUT(rec, dsn, v, vlen);
        }
        c->p = q;
    }
    if (!have_status)
        return false;
    rec->kind = MAILLOG_DELIVERY;
    return true;
}

/* "QUEUEID: " where QUEUEID is NOQUEUE or Postfix's hex/long id alphabet. */
static bool parse_queue_id(struct cur *c, struct maillog_record *rec)
{
    const char *id = c->p;
    while (c->p < c->end && isalnum((unsigned char)*c->p))
        c->p++;
    size_t n = (size_t)(c->p - id);
    if (n < 5 || n >= sizeof(rec->queue_id) || !cur_lit(c, ": "))
        return false;
    if (!(n == 7 && memcmp(id, "NOQUEUE", 7) == 0))
        PUT(rec, queue_id, id, n);
    return true;
}

/* Keeps the header, clears what a failed message parse may have left behind. */
static void reset_body(struct maillog_record *rec)
{
    struct maillog_record keep = *rec;
    memset(rec, 0, sizeof(*rec));
    memcpy(rec->timestamp, keep.timestamp, sizeof(rec->timestamp));
    memcpy(rec->host, keep.host, sizeof(rec->host));
    memcpy(rec->syslog_name, keep.syslog_name, sizeof(rec->syslog_name));
    memcpy(rec->daemon, keep.daemon, sizeof(rec->daemon));
    rec->pid = keep.pid;
    rec->delay_ms = -1;
    rec->kind = MAILLOG_OTHER;
}

static void parse_message(struct cur msg, struct maillog_record *rec)
{
    struct cur c = msg;
    if (daemon_is(rec, "master")) {
        parse_master(&c, rec);
        return;
    }
    if (daemon_is(rec, "anvil")) {
        parse_anvil(&c, rec);
        return;
    }
    if (daemon_is(rec, "postscreen") && parse_postscreen_stress(&c, rec))
        return;
    c = msg;
    if (daemon_is(rec, "postscreen") && parse_postscreen_verdict(&c, rec))
        return;
    c = msg;
    if (cur_lit(&c, "connect from ")) {
        if (parse_client(&c, rec) && c.p == c.end)
            rec->kind = MAILLOG_CONNECT;
        return;
    }
    c = msg;
    if (parse_lost(&c, rec))
        return;
    c = msg;
    if (parse_auth_failed(&c, rec))
        return;
    reset_body(rec);
    c = msg;
    if (parse_limit(&c, rec))
        return;
    c = msg;
    if (daemon_is(rec, "postscreen") && parse_connect_reject(&c, rec))
        return;
    c = msg;
    if (parse_queue_id(&c, rec)) {
        struct cur after = c;
        if (parse_reject(&c, rec))
            return;
        c = after;
        if (parse_expired(&c, rec))
            return;
        /* "NOQUEUE: lost connection after CONNECT from ..." (seen in fail2ban's samples) */
        c = after;
        if (parse_lost(&c, rec))
            return;
        c = after;
        parse_delivery(&c, rec);
    }
}

/* The master.cf service of a client line: "submission" for postfix/submission/smtpd,
 * "10025" for postfix/10025/smtpd, the daemon for a plain postfix/smtpd. */
static void set_service(struct maillog_record *rec)
{
    const char *slash = strchr(rec->syslog_name, '/');
    if (slash && slash[1])
        PUT(rec, service, slash + 1, strlen(slash + 1));
    else
        PUT(rec, service, rec->daemon, strlen(rec->daemon));
}

enum maillog_kind maillog_parse_line(const char *line, size_t len, struct maillog_record *rec)
{
    memset(rec, 0, sizeof(*rec));
    rec->pid = -1;
    rec->delay_ms = -1;
    rec->kind = MAILLOG_OTHER;
    if (!line)
        return MAILLOG_OTHER;
    if (len && line[len - 1] == '\r')
        len--;
    /* Postfix never logs a NUL; a line with one is damaged and not worth guessing at. */
    if (memchr(line, '\0', len))
        return MAILLOG_OTHER;
    struct cur c = {line, line + len};
    if (!parse_header(&c, rec)) {
        memset(rec, 0, sizeof(*rec));
        rec->pid = -1;
        rec->delay_ms = -1;
        return MAILLOG_OTHER;
    }
    parse_message(c, rec);
    if (rec->kind == MAILLOG_OTHER)
        reset_body(rec);
    else if (rec->kind == MAILLOG_CONNECT || rec->kind == MAILLOG_LOST_CONNECTION ||
             rec->kind == MAILLOG_REJECT || rec->kind == MAILLOG_AUTH_FAILED ||
             rec->kind == MAILLOG_POSTSCREEN_VERDICT)
        set_service(rec);
    return rec->kind;
}

const char *maillog_kind_name(enum maillog_kind kind)
{
    switch (kind) {
    case MAILLOG_PROCESS_LIMIT:
        return "process-limit";
    case MAILLOG_POSTSCREEN_ENTER:
        return "postscreen-enter";
    case MAILLOG_POSTSCREEN_LEAVE:
        return "postscreen-leave";
    case MAILLOG_PORTS_BUSY:
        return "ports-busy";
    case MAILLOG_LIMIT_EXCEEDED:
        return "limit-exceeded";
    case MAILLOG_ANVIL_STATS:
        return "anvil";
    case MAILLOG_LOST_CONNECTION:
        return "lost-connection";
    case MAILLOG_CONNECT:
        return "connect";
    case MAILLOG_REJECT:
        return "reject";
    case MAILLOG_DELIVERY:
        return "delivery";
    case MAILLOG_EXPIRED:
        return "expired";
    case MAILLOG_AUTH_FAILED:
        return "auth-failed";
    case MAILLOG_POSTSCREEN_VERDICT:
        return "postscreen-verdict";
    case MAILLOG_OTHER:
        break;
    }
    return "other";
}

enum maillog_attack maillog_attack_class(const struct maillog_record *rec)
{
    static const char lost[] = "Connection lost to authentication server";
    if (!rec->client_addr[0])
        return MAILLOG_ATTACK_NONE;
    if (rec->kind == MAILLOG_REJECT)
        return rec->reject_class == MAILLOG_REJECT_UNKNOWN_USER ? MAILLOG_ATTACK_UNKNOWN_USER
                                                                : MAILLOG_ATTACK_ERROR;
    if (rec->kind == MAILLOG_AUTH_FAILED && strncmp(rec->text, lost, sizeof(lost) - 1) != 0)
        return MAILLOG_ATTACK_AUTH;
    return MAILLOG_ATTACK_NONE;
}

/* --- line splitter --------------------------------------------------------------- */

struct maillog_splitter {
    char *buf;
    size_t start; /* first unconsumed byte */
    size_t end;   /* one past the last byte */
    size_t cap;
    size_t max_line;
    bool discarding; /* inside an over-long line whose head was yielded */
};

struct maillog_splitter *maillog_splitter_new(size_t max_line)
{
    struct maillog_splitter *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return NULL;
    sp->max_line = max_line ? max_line : MAILLOG_DEFAULT_MAX_LINE;
    return sp;
}

void maillog_splitter_free(struct maillog_splitter *sp)
{
    if (!sp)
        return;
    free(sp->buf);
    free(sp);
}

int maillog_splitter_feed(struct maillog_splitter *sp, const char *data, size_t len)
{
    if (!sp || (len && !data))
        return -EINVAL;
    if (sp->start > 0) {
        memmove(sp->buf, sp->buf + sp->start, sp->end - sp->start);
        sp->end -= sp->start;
        sp->start = 0;
    }
    if (len > SIZE_MAX - sp->end)
        return -ENOMEM;
    if (sp->end + len > sp->cap) {
        size_t ncap = sp->cap ? sp->cap : 4096;
        while (ncap < sp->end + len)
            ncap = ncap > SIZE_MAX / 2 ? sp->end + len : ncap * 2;
        char *nb = realloc(sp->buf, ncap);
        if (!nb)
            return -ENOMEM;
        sp->buf = nb;
        sp->cap = ncap;
    }
    if (len)
        memcpy(sp->buf + sp->end, data, len);
    sp->end += len;
    return 0;
}

int maillog_splitter_next(struct maillog_splitter *sp, const char **line, size_t *len,
                          bool *truncated)
{
    for (;;) {
        char *p = sp->buf + sp->start;
        size_t avail = sp->end - sp->start;
        char *nl = avail ? memchr(p, '\n', avail) : NULL;
        if (!nl) {
            if (sp->discarding) {
                sp->start = sp->end = 0;
                return 0;
            }
            if (avail > sp->max_line) {
                /* Yield the head now so the buffer stays bounded; drop the tail. */
                *line = p;
                *len = sp->max_line;
                if (truncated)
                    *truncated = true;
                sp->discarding = true;
                sp->start = sp->end;
                return 1;
            }
            return 0;
        }
        size_t n = (size_t)(nl - p);
        sp->start += n + 1;
        if (sp->discarding) {
            sp->discarding = false;
            continue;
        }
        bool cut = n > sp->max_line;
        if (cut)
            n = sp->max_line;
        else if (n && p[n - 1] == '\r')
            n--;
        *line = p;
        *len = n;
        if (truncated)
            *truncated = cut;
        return 1;
    }
}

void maillog_splitter_reset(struct maillog_splitter *sp)
{
    sp->start = sp->end = 0;
    sp->discarding = false;
}

size_t maillog_splitter_pending(const struct maillog_splitter *sp)
{
    return sp->end - sp->start;
}
