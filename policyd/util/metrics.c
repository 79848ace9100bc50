/* metrics: registry of counters, gauges and histograms, and the text exposition writer
 * (https://prometheus.io/docs/instrumenting/exposition_formats/, format 0.0.4). Each
 * series renders its label set once, when created, so a scrape is a walk that copies
 * strings and formats numbers, and an update is one add. */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metrics_series {
    struct metric *family;
    char *labels;  /* rendered: a="x",b="y" ("" without labels) */
    char **values; /* raw label values, family->n_labels of them */
    double value;  /* counter, gauge */
    double sum;    /* histogram */
    uint64_t count;
    uint64_t buckets[]; /* histogram: family->n_bounds + 1, not cumulative; last is +Inf */
};

struct metric {
    enum metric_type type;
    char *name, *help;
    char **label_names;
    size_t n_labels;
    double *bounds;
    size_t n_bounds;
    struct metrics_series **series;
    size_t n_series, cap_series;
};

struct collector {
    metrics_collect_fn fn;
    void *arg;
};

struct metrics {
    struct metric **fam;
    size_t n_fam, cap_fam;
    struct collector *col;
    size_t n_col, cap_col;
};

struct metrics_out {
    struct metrics *m;
    char *buf;
    size_t len, cap;
    int err;      /* sticky -ENOMEM */
    char **names; /* families written by collectors, for -EEXIST */
    size_t n_names, cap_names;
};

/* Grows *arr (of elem bytes each) so that one more fits. Returns 0 or -ENOMEM. */
static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, nc * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

static bool name_valid(const char *s, bool colon_ok)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_ok && c == ':');
        if (!alpha && !(p > s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

struct metrics *metrics_new(void)
{
    return calloc(1, sizeof(struct metrics));
}

static void series_free(struct metrics_series *s, size_t n_labels)
{
    if (!s)
        return;
    for (size_t i = 0; i < n_labels && s->values; i++)
        free(s->values[i]);
    free(s->values);
    free(s->labels);
    free(s);
}

static void family_free(struct metric *f)
{
    if (!f)
        return;
    /* Not metrics_family_clear(): it re-creates the one series of an unlabelled family. */
    for (size_t i = 0; i < f->n_series; i++)
        series_free(f->series[i], f->n_labels);
    free(f->series);
    for (size_t i = 0; i < f->n_labels && f->label_names; i++)
        free(f->label_names[i]);
    free(f->label_names);
    free(f->bounds);
    free(f->name);
    free(f->help);
    free(f);
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n_fam; i++)
        family_free(m->fam[i]);
    free(m->fam);
    free(m->col);
    free(m);
}

struct metric *metrics_find(struct metrics *m, const char *name)
{
    for (size_t i = 0; m && i < m->n_fam; i++)
        if (strcmp(m->fam[i]->name, name) == 0)
            return m->fam[i];
    return NULL;
}

static struct metric *family_new(struct metrics *m, enum metric_type type, const char *name,
                                 const char *help, const char *const *label_names,
                                 const double *bounds, size_t n_bounds)
{
    if (!m || !name_valid(name, true) || metrics_find(m, name))
        return NULL;
    size_t n_labels = 0;
    for (; label_names && label_names[n_labels]; n_labels++) {
        const char *l = label_names[n_labels];
        if (!name_valid(l, false) || strncmp(l, "__", 2) == 0 ||
            (type == METRIC_HISTOGRAM && strcmp(l, "le") == 0))
            return NULL;
        for (size_t k = 0; k < n_labels; k++)
            if (strcmp(label_names[k], l) == 0)
                return NULL;
    }
    for (size_t i = 0; i < n_bounds; i++)
        if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
            return NULL;
    if (grow((void **)&m->fam, &m->cap_fam, m->n_fam, sizeof(*m->fam)) < 0)
        return NULL;

    struct metric *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->label_names = calloc(n_labels + 1, sizeof(char *));
    if (n_bounds)
        f->bounds = malloc(n_bounds * sizeof(double));
    if (!f->name || !f->help || !f->label_names || (n_bounds && !f->bounds))
        goto fail;
    for (size_t i = 0; i < n_labels; i++) {
        f->label_names[i] = strdup(label_names[i]);
        if (!f->label_names[i])
            goto fail;
        f->n_labels++;
    }
    if (n_bounds)
        memcpy(f->bounds, bounds, n_bounds * sizeof(double));
    f->n_bounds = n_bounds;
    /* A family without labels has exactly one series: create it now, so it is exposed
     * (as 0) before its first update. */
    if (n_labels == 0 && !metrics_series(f, NULL))
        goto fail;
    m->fam[m->n_fam++] = f;
    return f;
fail:
    family_free(f);
    return NULL;
}

struct metric *metrics_counter_new(struct metrics *m, const char *name, const char *help,
                                   const char *const *label_names)
{
    return family_new(m, METRIC_COUNTER, name, help, label_names, NULL, 0);
}

struct metric *metrics_gauge_new(struct metrics *m, const char *name, const char *help,
                                 const char *const *label_names)
{
    return family_new(m, METRIC_GAUGE, name, help, label_names, NULL, 0);
}

struct metric *metrics_histogram_new(struct metrics *m, const char *name, const char *help,
                                     const char *const *label_names, const double *bounds,
                                     size_t n_bounds)
{
    if (n_bounds == 0 || !bounds)
        return NULL;
    return family_new(m, METRIC_HISTOGRAM, name, help, label_names, bounds, n_bounds);
}

size_t metrics_escape_label(const char *s, char *out, size_t outsz)
{
    size_t n = 0;

    for (; *s; s++) {
        const char *rep = NULL;
        char one[2] = {*s, 0};
        if (*s == '\\')
            rep = "\\\\";
        else if (*s == '"')
            rep = "\\\"";
        else if (*s == '\n')
            rep = "\\n";
        else
            rep = one;
        for (; *rep; rep++, n++)
            if (n + 1 < outsz)
                out[n] = *rep;
    }
    if (outsz)
        out[n < outsz ? n : outsz - 1] = '\0';
    return n;
}

/* Renders name="value",... for n pairs into a new string; NULL on ENOMEM. */
static char *render_labels(const char *const *names, const char *const *values, size_t n)
{
    size_t need = 1;
    for (size_t i = 0; i < n; i++)
        need += strlen(names[i]) + 4 + metrics_escape_label(values[i], NULL, 0);
    char *s = malloc(need), *p = s;
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t rest = need - (size_t)(p - s);
        p += snprintf(p, rest, "%s%s=\"", i ? "," : "", names[i]);
        p += metrics_escape_label(values[i], p, need - (size_t)(p - s));
        *p++ = '"';
    }
    *p = '\0';
    return s;
}

struct metrics_series *metrics_series(struct metric *f, const char *const *label_values)
{
    if (!f || (f->n_labels && !label_values))
        return NULL;
    for (size_t i = 0; i < f->n_series; i++) {
        struct metrics_series *s = f->series[i];
        size_t k = 0;
        while (k < f->n_labels && strcmp(s->values[k], label_values[k]) == 0)
            k++;
        if (k == f->n_labels)
            return s;
    }
    if (grow((void **)&f->series, &f->cap_series, f->n_series, sizeof(*f->series)) < 0)
        return NULL;
    size_t nb = f->type == METRIC_HISTOGRAM ? f->n_bounds + 1 : 0;
    struct metrics_series *s = calloc(1, sizeof(*s) + nb * sizeof(uint64_t));
    if (!s)
        return NULL;
    s->family = f;
    s->values = calloc(f->n_labels + 1, sizeof(char *));
    if (!s->values)
        goto fail;
    for (size_t k = 0; k < f->n_labels; k++)
        if (!(s->values[k] = strdup(label_values[k] ? label_values[k] : "")))
            goto fail;
    s->labels = render_labels((const char *const *)f->label_names, (const char *const *)s->values,
                              f->n_labels);
    if (!s->labels)
        goto fail;
    f->series[f->n_series++] = s;
    return s;
fail:
    series_free(s, f->n_labels);
    return NULL;
}

void metrics_family_clear(struct metric *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_series; i++)
        series_free(f->series[i], f->n_labels);
    f->n_series = 0;
    if (f->n_labels == 0)
        metrics_series(f, NULL); /* keep the one series; on ENOMEM it is just missing */
}

void metrics_inc(struct metrics_series *s)
{
    if (s)
        s->value += 1;
}

void metrics_add(struct metrics_series *s, double v)
{
    if (!s)
        return;
    /* A counter that went down would read as a restart to Prometheus' rate(). */
    if (s->family->type == METRIC_COUNTER && !(v >= 0))
        return;
    s->value += v;
}

void metrics_set(struct metrics_series *s, double v)
{
    if (s)
        s->value = v;
}

void metrics_observe(struct metrics_series *s, double v)
{
    if (!s || s->family->type != METRIC_HISTOGRAM || isnan(v))
        return;
    const double *b = s->family->bounds;
    size_t lo = 0, hi = s->family->n_bounds;
    /* The first bound >= v (buckets are "less than or equal"); n_bounds is +Inf. */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= b[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    s->buckets[lo]++;
    s->count++;
    s->sum += v;
}

double metrics_value(const struct metrics_series *s)
{
    if (!s)
        return 0;
    return s->family->type == METRIC_HISTOGRAM ? (double)s->count : s->value;
}

int metrics_add_collector(struct metrics *m, metrics_collect_fn fn, void *arg)
{
    /* m is NULL when server_metrics() ran out of memory: report that, do not crash. */
    if (!m)
        return -ENOMEM;
    if (grow((void **)&m->col, &m->cap_col, m->n_col, sizeof(*m->col)) < 0)
        return -ENOMEM;
    m->col[m->n_col].fn = fn;
    m->col[m->n_col].arg = arg;
    m->n_col++;
    return 0;
}

int metrics_remove_collector(struct metrics *m, metrics_collect_fn fn, void *arg)
{
    for (size_t i = 0; m && i < m->n_col; i++) {
        if (m->col[i].fn == fn && m->col[i].arg == arg) {
            memmove(&m->col[i], &m->col[i + 1], (m->n_col - i - 1) * sizeof(*m->col));
            m->n_col--;
            return 0;
        }
    }
    return -ENOENT;
}

/* ---- exposition ---- */

static void out_mem(struct metrics_out *o, const char *s, size_t n)
{
    if (o->err)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t nc = o->cap ? o->cap : 4096;
        while (nc < o->len + n + 1)
            nc *= 2;
        char *p = realloc(o->buf, nc);
        if (!p) {
            o->err = -ENOMEM;
            return;
        }
        o->buf = p;
        o->cap = nc;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void out_str(struct metrics_out *o, const char *s)
{
    out_mem(o, s, strlen(s));
}

/* Shortest text that reads back as v; Prometheus spellings for the special values. */
static void out_value(struct metrics_out *o, double v)
{
    char b[40];

    if (isnan(v)) {
        out_str(o, "NaN");
        return;
    }
    if (isinf(v)) {
        out_str(o, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(b, sizeof(b), "%.0f", v);
    } else {
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(b, sizeof(b), "%.*g", prec, v);
            if (strtod(b, NULL) == v)
                break;
        }
    }
    out_str(o, b);
}

static void out_u64(struct metrics_out *o, uint64_t v)
{
    char b[24];
    snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
    out_str(o, b);
}

static const char *type_name(enum metric_type t)
{
    return t == METRIC_COUNTER ? "counter" : t == METRIC_GAUGE ? "gauge" : "histogram";
}

static void out_head(struct metrics_out *o, enum metric_type type, const char *name,
                     const char *help)
{
    out_str(o, "# HELP ");
    out_str(o, name);
    out_str(o, " ");
    /* HELP text escapes only backslash and newline. */
    for (const char *p = help; *p; p++) {
        if (*p == '\\')
            out_str(o, "\\\\");
        else if (*p == '\n')
            out_str(o, "\\n");
        else
            out_mem(o, p, 1);
    }
    out_str(o, "\n# TYPE ");
    out_str(o, name);
    out_str(o, " ");
    out_str(o, type_name(type));
    out_str(o, "\n");
}

/* name{labels[,extra]} */
static void out_series_name(struct metrics_out *o, const char *name, const char *suffix,
                            const char *labels, const char *extra)
{
    out_str(o, name);
    out_str(o, suffix);
    if (*labels || extra) {
        out_str(o, "{");
        out_str(o, labels);
        if (extra) {
            if (*labels)
                out_str(o, ",");
            out_str(o, extra);
        }
        out_str(o, "}");
    }
    out_str(o, " ");
}

static void out_family(struct metrics_out *o, const struct metric *f)
{
    out_head(o, f->type, f->name, f->help);
    for (size_t i = 0; i < f->n_series; i++) {
        const struct metrics_series *s = f->series[i];
        if (f->type != METRIC_HISTOGRAM) {
            out_series_name(o, f->name, "", s->labels, NULL);
            out_value(o, s->value);
            out_str(o, "\n");
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b <= f->n_bounds; b++) {
            char le[48];
            cum += s->buckets[b];
            if (b < f->n_bounds) {
                struct metrics_out tmp = {0};
                out_value(&tmp, f->bounds[b]);
                snprintf(le, sizeof(le), "le=\"%s\"", tmp.buf ? tmp.buf : "0");
                free(tmp.buf);
            } else {
                snprintf(le, sizeof(le), "le=\"+Inf\"");
            }
            out_series_name(o, f->name, "_bucket", s->labels, le);
            out_u64(o, cum);
            out_str(o, "\n");
        }
        out_series_name(o, f->name, "_sum", s->labels, NULL);
        out_value(o, s->sum);
        out_str(o, "\n");
        out_series_name(o, f->name, "_count", s->labels, NULL);
        out_u64(o, s->count);
        out_str(o, "\n");
    }
}

int metrics_out_family(struct metrics_out *o, enum metric_type type, const char *name,
                       const char *help)
{
    if (!name_valid(name, true))
        return -EINVAL;
    if (metrics_find(o->m, name))
        return -EEXIST;
    for (size_t i = 0; i < o->n_names; i++)
        if (strcmp(o->names[i], name) == 0)
            return -EEXIST;
    if (grow((void **)&o->names, &o->cap_names, o->n_names, sizeof(*o->names)) < 0 ||
        !(o->names[o->n_names] = strdup(name)))
        return o->err = -ENOMEM;
    o->n_names++;
    out_head(o, type, name, help ? help : "");
    return o->err;
}

int metrics_out_sample(struct metrics_out *o, const char *name, const char *const *label_names,
                       const char *const *label_values, size_t n, double v)
{
    if (!name_valid(name, true))
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!name_valid(label_names[i], false))
            return -EINVAL;
    char *labels = render_labels(label_names, label_values, n);
    if (!labels)
        return o->err = -ENOMEM;
    out_series_name(o, name, "", labels, NULL);
    free(labels);
    out_value(o, v);
    out_str(o, "\n");
    return o->err;
}

int metrics_write(struct metrics *m, char **text, size_t *len)
{
    struct metrics_out o = {.m = m};
    int rc = 0;

    *text = NULL;
    *len = 0;
    for (size_t i = 0; i < m->n_fam && !o.err; i++)
        out_family(&o, m->fam[i]);
    for (size_t i = 0; i < m->n_col && !o.err && rc == 0; i++)
        rc = m->col[i].fn(&o, m->col[i].arg);
    if (rc == 0)
        rc = o.err;
    if (rc == 0 && !o.buf) {
        out_str(&o, ""); /* an empty registry still yields "" */
        rc = o.err;
    }
    for (size_t i = 0; i < o.n_names; i++)
        free(o.names[i]);
    free(o.names);
    if (rc < 0) {
        free(o.buf);
        return rc;
    }
    *text = o.buf;
    *len = o.len;
    return 0;
}
