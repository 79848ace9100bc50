/* config_parse: reads postsurge.cf (Postfix main.cf syntax: settings, continuation lines,
 * comments) into a struct config through the table in config.c. Every problem is
 * collected as "FILE:LINE: message" rather than stopping at the first, with a hint for a
 * misspelt name; a binary file fed by mistake yields a bounded list. */
#include "config.h"
#include "config_impl.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits on input: a physical line, a logical value, a file, and how many messages one
 * parse collects (a binary file fed by mistake must not produce a million lines). */
#define CF_MAX_LINE 65536
#define CF_MAX_VALUE (1024 * 1024)
#define CF_MAX_FILE (16 * 1024 * 1024)
#define CF_MAX_MESSAGES 100
#define CF_SUMMARY_LINE UINT32_MAX /* report()'s line for the "more messages" note */

/* ---- diagnostics ---- */

void config_errors_clear(struct config_errors *errs)
{
    if (!errs)
        return;
    for (size_t i = 0; i < errs->n; i++)
        cf_free(errs->msg[i]);
    cf_free(errs->msg);
    errs->msg = NULL;
    errs->n = 0;
    errs->n_warnings = 0;
}

struct cf_parse {
    const char *name;
    struct config_errors *errs;
    struct config *cfg;
    unsigned *first_line; /* per setting, the line of its first definition */
    size_t n_errors;      /* counted even when errs is NULL */
    size_t n_dropped;     /* messages past CF_MAX_MESSAGES */
    bool nomem;
};

static int errs_push(struct config_errors *errs, char *msg)
{
    char **nm = cf_realloc(errs->msg, (errs->n + 1) * sizeof(*nm));
    if (!nm) {
        cf_free(msg);
        return -ENOMEM;
    }
    errs->msg = nm;
    errs->msg[errs->n++] = msg;
    return 0;
}

void config_errors_addf(struct config_errors *errs, const char *file, unsigned line,
                        const char *fmt, ...)
{
    char text[512];
    va_list ap;
    if (errs == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    size_t need = strlen(file) + strlen(text) + 16;
    char *msg = cf_malloc(need);
    if (msg == NULL)
        return; /* the message is lost, but the caller still sees the failure */
    snprintf(msg, need, "%s:%u: %s", file, line, text);
    errs_push(errs, msg);
}

__attribute__((format(printf, 4, 5))) static void report(struct cf_parse *ps, bool warning,
                                                         unsigned line, const char *fmt, ...)
{
    char text[512], msg[1024];
    va_list ap;
    if (!warning)
        ps->n_errors++;
    if (!ps->errs)
        return;
    if (ps->errs->n >= CF_MAX_MESSAGES && line != CF_SUMMARY_LINE) {
        ps->n_dropped++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof(msg), "%s:%u: %s%s", ps->name, line == CF_SUMMARY_LINE ? 0 : line,
             warning ? "warning: " : "", text);
    char *dup = cf_strdup(msg);
    if (!dup || errs_push(ps->errs, dup) < 0) {
        ps->nomem = true;
        return;
    }
    if (warning)
        ps->errs->n_warnings++;
}

/* Quotes a value for a message: its first line, shortened. */
static void quote_value(const char *v, char *buf, size_t len)
{
    size_t n = strcspn(v, "\n");
    bool more = v[n] != '\0';
    if (n > 60) {
        n = 57;
        more = true;
    }
    snprintf(buf, len, "\"%.*s%s\"", (int)n, v, more ? "..." : "");
}

/* A growable byte buffer for the value being assembled. */
struct cf_buf {
    char *p;
    size_t len, cap;
};

static int buf_add(struct cf_buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = cf_realloc(b->p, cap);
        if (!np)
            return -ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* The logical line being assembled: a setting and its continuation lines. */
struct cf_logical {
    bool active;
    bool broken; /* an error was reported on one of its lines: skip silently */
    unsigned line;
    const struct cf_entry *entry; /* NULL when the name was bad */
    struct cf_buf value;
    unsigned *lines; /* [0] = count, then the file line of each value line */
    size_t lines_cap;
};

static int logical_add_line(struct cf_logical *lg, unsigned line)
{
    size_t count = lg->lines ? lg->lines[0] : 0;
    if (count + 2 > lg->lines_cap) {
        size_t cap = lg->lines_cap ? lg->lines_cap * 2 : 16;
        unsigned *nl = cf_realloc(lg->lines, cap * sizeof(*nl));
        if (!nl)
            return -ENOMEM;
        if (!lg->lines)
            nl[0] = 0;
        lg->lines = nl;
        lg->lines_cap = cap;
    }
    lg->lines[++lg->lines[0]] = line;
    return 0;
}

/* Adds one trimmed piece of value text (from the setting's line or a continuation). */
static int logical_add(struct cf_parse *ps, struct cf_logical *lg, const char *s, size_t n,
                       unsigned line)
{
    if (n == 0 || lg->broken)
        return 0;
    if (lg->value.len + n + 1 > CF_MAX_VALUE) {
        report(ps, false, lg->line, "value of %s longer than %d bytes",
               lg->entry ? lg->entry->name : "setting", CF_MAX_VALUE);
        lg->broken = true;
        return 0;
    }
    char sep = lg->entry && (lg->entry->flags & CF_LINES) ? '\n' : ' ';
    if (lg->value.len > 0 && buf_add(&lg->value, &sep, 1) < 0)
        return -ENOMEM;
    if (buf_add(&lg->value, s, n) < 0 || logical_add_line(lg, line) < 0)
        return -ENOMEM;
    return 0;
}

/* Stores a finished logical line into the config. */
static int logical_finish(struct cf_parse *ps, struct cf_logical *lg)
{
    int rc = 0;
    if (!lg->active || lg->broken || !lg->entry)
        goto out;
    const struct cf_entry *e = lg->entry;
    size_t idx = cf_index(e);
    const char *value = lg->value.p ? lg->value.p : "";
    const char *why;
    unsigned first = ps->first_line[idx];
    if (first)
        report(ps, true, lg->line, "%s redefined (first at line %u)", e->name, first);
    else
        ps->first_line[idx] = lg->line;
    rc = cf_apply(ps->cfg, e, value, &why);
    if (rc == -EINVAL) {
        char q[80], range[160];
        quote_value(value, q, sizeof(q));
        cf_fmt_range(e, range, sizeof(range));
        if (e->type == CF_STRING)
            report(ps, false, lg->line, "bad value %s for %s: %s", q, e->name, why);
        else
            report(ps, false, lg->line, "bad value %s for %s: %s; expected %s", q, e->name, why,
                   range);
        rc = 0;
    } else if (rc == 0) {
        ps->cfg->setting_line[idx] = lg->line;
        cf_free(ps->cfg->value_lines[idx]);
        ps->cfg->value_lines[idx] = lg->lines;
        lg->lines = NULL;
        lg->lines_cap = 0;
    }
out:
    lg->active = false;
    lg->broken = false;
    lg->entry = NULL;
    lg->value.len = 0;
    if (lg->value.p)
        lg->value.p[0] = '\0';
    if (lg->lines)
        lg->lines[0] = 0;
    return rc;
}

/* Edit distance, bounded: is a within two edits of b? For "did you mean". */
static bool near_name(const char *a, size_t an, const char *b)
{
    size_t bn = strlen(b);
    if (an > 64 || bn > 64 || (an > bn ? an - bn : bn - an) > 2)
        return false;
    unsigned prev[65], cur[65];
    for (size_t j = 0; j <= bn; j++)
        prev[j] = (unsigned)j;
    for (size_t i = 1; i <= an; i++) {
        cur[0] = (unsigned)i;
        unsigned row_min = cur[0];
        for (size_t j = 1; j <= bn; j++) {
            unsigned sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) != b[j - 1]);
            unsigned del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            if (cur[j] < row_min)
                row_min = cur[j];
        }
        if (row_min > 2)
            return false; /* distances never shrink down the table */
        memcpy(prev, cur, sizeof(prev));
    }
    return prev[bn] <= 2;
}

/* Quotes a setting name for a message: shortened, bytes outside printable ASCII as \xNN
 * so a binary file cannot put raw bytes on the administrator's terminal. */
static void quote_name(const char *s, size_t n, char *buf, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; i < n && i < 64 && j + 5 < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\')
            j += (size_t)snprintf(buf + j, len - j, "\\x%02x", c);
        else
            buf[j++] = (char)c;
    }
    buf[j] = '\0';
}

/* Starts a logical line from a setting line (already known not to start with blank). */
static void logical_start(struct cf_parse *ps, struct cf_logical *lg, const char *s, size_t n,
                          unsigned line)
{
    lg->active = true;
    lg->line = line;
    size_t i = 0;
    while (i < n && !cf_is_space(s[i]) && s[i] != '=')
        i++;
    size_t name_len = i;
    while (i < n && cf_is_space(s[i]))
        i++;
    if (name_len == 0) {
        report(ps, false, line, "missing parameter name before '='");
        lg->broken = true;
        return;
    }
    if (i >= n || s[i] != '=') {
        char q[300];
        quote_name(s, name_len, q, sizeof(q));
        report(ps, false, line, "missing '=' after \"%s\"", q);
        lg->broken = true;
        return;
    }
    lg->entry = cf_find(s, name_len);
    if (!lg->entry) {
        const char *hint = NULL;
        char q[300];
        quote_name(s, name_len, q, sizeof(q));
        /* The hint costs an edit distance per setting: only for messages shown. */
        bool shown = ps->errs && ps->errs->n < CF_MAX_MESSAGES;
        for (size_t k = 0; shown && k < CF_COUNT && !hint; k++)
            if (near_name(s, name_len, cf_table[k].name))
                hint = cf_table[k].name;
        if (hint)
            report(ps, false, line, "unknown setting \"%s\" (did you mean %s?)", q, hint);
        else
            report(ps, false, line, "unknown setting \"%s\"", q);
        lg->broken = true;
        return;
    }
    i++;
    while (i < n && cf_is_space(s[i]))
        i++;
    size_t end = n;
    while (end > i && cf_is_space(s[end - 1]))
        end--;
    if (logical_add(ps, lg, s + i, end - i, line) < 0)
        ps->nomem = true;
}

/* Checks settings against each other once all are read. */
static void cross_check(struct cf_parse *ps)
{
    struct config *cfg = ps->cfg;
    if (cfg->stress_exit_threshold >= cfg->stress_enter_threshold) {
        int l1 = config_setting_line(cfg, "stress_exit_threshold");
        int l2 = config_setting_line(cfg, "stress_enter_threshold");
        report(ps, false, (unsigned)(l1 > l2 ? l1 : l2),
               "stress_exit_threshold (%lld) must be below stress_enter_threshold (%lld)",
               (long long)cfg->stress_exit_threshold, (long long)cfg->stress_enter_threshold);
    }
}

static int parse_buffer(const char *name, const char *buf, size_t len, bool keep,
                        struct config **out, struct config_errors *errs)
{
    struct cf_parse ps = {.name = name ? name : "", .errs = errs};
    struct cf_logical lg = {0};
    int rc;
    *out = NULL;
    ps.cfg = config_alloc(ps.name);
    ps.first_line = cf_calloc(CF_COUNT, sizeof(*ps.first_line));
    if (!ps.cfg || !ps.first_line) {
        rc = -ENOMEM;
        goto fail;
    }

    unsigned line = 0;
    size_t pos = 0;
    while (pos < len && !ps.nomem) {
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl ? 1 : 0);
        line++;
        if (n > 0 && s[n - 1] == '\r')
            n--; /* CRLF files from other editors read like LF files */

        bool cont = n > 0 && (s[0] == ' ' || s[0] == '\t');
        const char *bad = NULL;
        char badc = 0;
        if (n > CF_MAX_LINE)
            bad = "line longer than 65536 bytes";
        else
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)s[i] < 0x20 && s[i] != '\t') {
                    badc = s[i];
                    bad = s[i] == '\0' ? "NUL byte in line" : "control character in line";
                    break;
                }
        if (bad) {
            if (badc)
                report(&ps, false, line, "%s (0x%02x)", bad, (unsigned)(unsigned char)badc);
            else
                report(&ps, false, line, "%s", bad);
            /* The setting this line belongs to (or starts) is spoiled: no further
             * messages about it, and its continuation lines are not orphans. */
            if (!cont && logical_finish(&ps, &lg) < 0)
                ps.nomem = true;
            lg.active = true;
            lg.broken = true;
            lg.line = line;
            continue;
        }

        size_t i = 0;
        while (i < n && cf_is_space(s[i]))
            i++;
        if (i == n || s[i] == '#')
            continue; /* blank and comment lines, also inside a value, as in Postfix */
        if (cont) {
            if (!lg.active) {
                report(&ps, false, line, "continuation line without a setting before it");
                lg.active = true;
                lg.broken = true;
                lg.line = line;
                continue;
            }
            size_t end = n;
            while (end > i && cf_is_space(s[end - 1]))
                end--;
            if (logical_add(&ps, &lg, s + i, end - i, line) < 0)
                ps.nomem = true;
            continue;
        }
        if (logical_finish(&ps, &lg) < 0) {
            ps.nomem = true;
            break;
        }
        logical_start(&ps, &lg, s, n, line);
    }
    if (!ps.nomem && logical_finish(&ps, &lg) < 0)
        ps.nomem = true;
    cf_free(lg.value.p);
    cf_free(lg.lines);
    if (!ps.nomem)
        cross_check(&ps);
    if (!ps.nomem && ps.n_dropped)
        report(&ps, false, CF_SUMMARY_LINE, "%zu more messages not shown", ps.n_dropped);
    if (ps.nomem) {
        rc = -ENOMEM;
        goto fail;
    }
    if (ps.n_errors && !keep) {
        rc = -EINVAL;
        goto fail;
    }
    cf_free(ps.first_line);
    *out = ps.cfg;
    return ps.n_errors ? -EINVAL : 0;
fail:
    cf_free(ps.first_line);
    config_free(ps.cfg);
    return rc;
}

int config_parse_buffer(const char *name, const char *buf, size_t len, struct config **out,
                        struct config_errors *errs)
{
    return parse_buffer(name, buf, len, false, out, errs);
}

int config_parse_buffer_all(const char *name, const char *buf, size_t len, struct config **out,
                            struct config_errors *errs)
{
    return parse_buffer(name, buf, len, true, out, errs);
}

int config_load_file(const char *path, struct config **out, struct config_errors *errs)
{
    struct cf_parse ps = {.name = path, .errs = errs};
    struct cf_buf b = {0};
    char chunk[8192];
    int rc;
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        rc = -errno;
        report(&ps, false, 0, "cannot open: %s", strerror(-rc));
        return ps.nomem ? -ENOMEM : rc;
    }
    for (;;) {
        size_t n = fread(chunk, 1, sizeof(chunk), f);
        if (n == 0)
            break;
        if (b.len + n > CF_MAX_FILE) {
            report(&ps, false, 0, "file larger than %d bytes", CF_MAX_FILE);
            rc = ps.nomem ? -ENOMEM : -EFBIG;
            goto out;
        }
        if (buf_add(&b, chunk, n) < 0) {
            rc = -ENOMEM;
            goto out;
        }
    }
    if (ferror(f)) {
        rc = -EIO;
        report(&ps, false, 0, "read error");
        goto out;
    }
    rc = config_parse_buffer(path, b.p ? b.p : "", b.len, out, errs);
out:
    fclose(f);
    cf_free(b.p);
    return rc;
}
