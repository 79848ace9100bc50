/* config_ref: writes settings out, all driven by the table in config.c: postconf-style
 * listings (`config`, `config -n`, one setting) and the reference of every setting as a
 * Markdown table for the README and as troff for postsurge.cf(5). */
#include "config.h"
#include "config_impl.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- printing ---- */

static int print_entry(const struct config *cfg, const struct cf_entry *e, FILE *out)
{
    char tmp[64];
    const char *v = cf_format(cfg, e, tmp, sizeof(tmp));
    /* postconf style: "name = value", an empty value as "name =", and further lines of a
     * multi-line value indented by four spaces so they read back as continuations. */
    if (!*v) {
        fprintf(out, "%s =\n", e->name);
    } else {
        fprintf(out, "%s = ", e->name);
        for (const char *p = v;;) {
            size_t n = strcspn(p, "\n");
            fwrite(p, 1, n, out);
            fputc('\n', out);
            if (!p[n])
                break;
            p += n + 1;
            fputs("    ", out);
        }
    }
    return ferror(out) ? -EIO : 0;
}

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp((*(const struct cf_entry *const *)a)->name,
                  (*(const struct cf_entry *const *)b)->name);
}

int config_print(const struct config *cfg, FILE *out, bool non_default_only)
{
    struct config *def = NULL;
    const struct cf_entry **sorted = malloc(CF_COUNT * sizeof(*sorted));
    int rc = 0;
    if (!sorted)
        return -ENOMEM;
    if (non_default_only) {
        def = config_new_defaults();
        if (!def) {
            free(sorted);
            return -ENOMEM;
        }
    }
    /* Sorted by name, as postconf prints. */
    for (size_t i = 0; i < CF_COUNT; i++)
        sorted[i] = &cf_table[i];
    qsort(sorted, CF_COUNT, sizeof(sorted[0]), cmp_entry_name);
    for (size_t k = 0; k < CF_COUNT && rc == 0; k++) {
        const struct cf_entry *e = sorted[k];
        size_t i = (size_t)(e - cf_table);
        /* Like postconf -n: what the file sets, and anything else that is not default. */
        bool set = cfg->setting_line && cfg->setting_line[i];
        if (def && !set && cf_entry_equal(cfg, def, e))
            continue;
        rc = print_entry(cfg, e, out);
    }
    free(sorted);
    config_free(def);
    return rc;
}

int config_print_one(const struct config *cfg, FILE *out, const char *name)
{
    const struct cf_entry *e = cf_find(name, strlen(name));
    if (!e)
        return -ENOENT;
    return print_entry(cfg, e, out);
}

int config_print_value(const struct config *cfg, FILE *out, const char *name)
{
    const struct cf_entry *e = cf_find(name, strlen(name));
    char tmp[64];
    if (!e)
        return -ENOENT;
    fprintf(out, "%s\n", cf_format(cfg, e, tmp, sizeof(tmp)));
    return ferror(out) ? -EIO : 0;
}

/* ---- the reference ---- */

static void md_text(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '\n')
            fputs(" ", out);
        else
            fputc(*s, out);
    }
}

/* The range a time, size or number setting allows, as "1s to 1h" (strings have none,
 * enums a word list). */
static void allowed_range(const struct cf_entry *e, char *out, size_t outsz)
{
    char a[32], b[32];
    if (e->type == CF_TIME) {
        cf_fmt_time(e->min, a, sizeof(a));
        cf_fmt_time(e->max, b, sizeof(b));
        snprintf(out, outsz, "%s to %s", a, b);
    } else if (e->type == CF_SIZE) {
        cf_fmt_size(e->min, a, sizeof(a));
        cf_fmt_size(e->max, b, sizeof(b));
        snprintf(out, outsz, "%s to %s", a, b);
    } else {
        cf_fmt_range(e, out, outsz);
    }
}

/* One writer of the settings reference: called at each new group and for each setting
 * with its default as text ("" when empty) and, but for strings, what it allows (a
 * range, or an enum's words joined by '|'). */
struct ref_writer {
    void (*group)(FILE *out, const char *group, bool first);
    void (*setting)(FILE *out, const struct cf_entry *e, const char *def, const char *allowed);
};

static int write_settings(FILE *out, const struct ref_writer *w)
{
    const char *group = NULL;
    struct config *def = config_new_defaults();
    if (!def)
        return -ENOMEM;
    for (size_t i = 0; i < CF_COUNT; i++) {
        const struct cf_entry *e = &cf_table[i];
        char range[160] = "", tmp[64];
        const char *v = cf_format(def, e, tmp, sizeof(tmp));
        if (!group || strcmp(group, e->group) != 0) {
            group = e->group;
            w->group(out, group, i == 0);
        }
        if (e->type == CF_ENUM)
            snprintf(range, sizeof(range), "%s", e->words);
        else if (e->type != CF_STRING)
            allowed_range(e, range, sizeof(range));
        w->setting(out, e, v, e->type == CF_STRING ? NULL : range);
    }
    config_free(def);
    return ferror(out) ? -EIO : 0;
}

static void md_group(FILE *out, const char *group, bool first)
{
    fprintf(out, "%s**%s**\n\n", first ? "" : "\n", group);
    fputs("| setting | default | meaning |\n| --- | --- | --- |\n", out);
}

static void md_setting(FILE *out, const struct cf_entry *e, const char *v, const char *allowed)
{
    fprintf(out, "| `%s` | ", e->name);
    if (*v) {
        fputc('`', out);
        md_text(out, v);
        fputc('`', out);
    } else {
        fputs("(empty)", out);
    }
    fputs(" | ", out);
    md_text(out, e->doc);
    if (allowed) {
        fputs(" Allowed: ", out);
        if (e->type == CF_ENUM)
            fputc('`', out);
        md_text(out, allowed);
        fputs(e->type == CF_ENUM ? "`." : ".", out);
    }
    fputs(" |\n", out);
}

int config_write_reference(FILE *out)
{
    static const struct ref_writer md = {md_group, md_setting};
    return write_settings(out, &md);
}

/* Writes s as troff text: `code` spans in bold, backslashes and leading dots escaped,
 * '-' as a minus inside code (options, ranges) so it renders and searches as typed. */
static void man_text(FILE *out, const char *s, bool *code)
{
    bool bol = true;
    for (; *s; s++) {
        if (bol && (*s == '.' || *s == '\''))
            fputs("\\&", out);
        bol = false;
        if (*s == '`') {
            *code = !*code;
            fputs(*code ? "\\fB" : "\\fR", out);
        } else if (*s == '\\') {
            fputs("\\e", out);
        } else if (*s == '-' && *code) {
            fputs("\\-", out);
        } else if (*s == '\n') {
            fputc(' ', out);
        } else {
            fputc(*s, out);
        }
    }
}

static void man_group(FILE *out, const char *group, bool first)
{
    (void)first;
    fprintf(out, ".SS %s\n", group);
}

static void man_setting(FILE *out, const struct cf_entry *e, const char *v, const char *allowed)
{
    bool code = false;
    fputs(".TP\n\\fB", out);
    man_text(out, e->name, &code);
    fputs("\\fR (default: ", out);
    if (*v) {
        code = true;
        fputs("\\fB", out);
        man_text(out, v, &code);
        code = false;
        fputs("\\fR)\n", out);
    } else {
        fputs("empty)\n", out);
    }
    man_text(out, e->doc, &code);
    if (code)
        fputs("\\fR", out);
    code = false;
    if (allowed && e->type == CF_ENUM) {
        /* Enum words are plain identifiers: only the separator needs rewriting. */
        fputs(" Allowed: \\fB", out);
        for (const char *w = allowed; *w; w++) {
            if (*w == '|')
                fputs("\\fR, \\fB", out);
            else
                fputc(*w, out);
        }
        fputs("\\fR.", out);
    } else if (allowed) {
        fputs(" Allowed: ", out);
        man_text(out, allowed, &code);
        fputc('.', out);
    }
    fputc('\n', out);
}

int config_write_man(FILE *out)
{
    static const struct ref_writer man = {man_group, man_setting};
    return write_settings(out, &man);
}
