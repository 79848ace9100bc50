/* baseline: per-metric rings of time buckets. Each bucket keeps Welford's count, mean and
 * M2 (sum of squared deviations); buckets are merged with Chan's formula, which stays
 * accurate where sum/sum-of-squares would cancel (byte counts around 1e9). A bucket is
 * reused when its slot comes round again, so nothing older than the window survives. */
#include "baseline.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bucket {
    int64_t start; /* Unix seconds, a multiple of the bucket width; 0 = empty */
    uint64_t n;
    double mean, m2;
};

struct metric {
    char *name;
    struct bucket *ring; /* nb slots */
};

struct baseline {
    struct baseline_params p;
    size_t nb;      /* buckets per ring */
    int64_t latest; /* newest bucket start recorded: a late sample cannot evict newer data */
    struct metric *m;
    size_t n, cap;
};

void baseline_params_default(struct baseline_params *p)
{
    p->window = 7 * 86400;
    p->bucket = 3600;
    p->min_samples = 12;
    p->sigma = 2.0;
    p->min_sd = 1.0;
    p->min_sd_ratio = 0.1;
    p->max_metrics = 4096;
}

static void params_fill(struct baseline_params *out, const struct baseline_params *in)
{
    struct baseline_params d;
    baseline_params_default(&d);
    *out = in ? *in : d;
    if (out->window <= 0)
        out->window = d.window;
    if (out->bucket <= 0)
        out->bucket = d.bucket;
    if (!out->min_samples)
        out->min_samples = d.min_samples;
    if (!(out->sigma > 0))
        out->sigma = d.sigma;
    if (!(out->min_sd > 0))
        out->min_sd = d.min_sd;
    if (!(out->min_sd_ratio >= 0))
        out->min_sd_ratio = d.min_sd_ratio;
    if (!out->max_metrics)
        out->max_metrics = d.max_metrics;
}

struct baseline *baseline_new(const struct baseline_params *p)
{
    struct baseline *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    params_fill(&b->p, p);
    if (b->p.bucket > b->p.window) {
        free(b);
        return NULL;
    }
    b->nb = (size_t)((b->p.window + b->p.bucket - 1) / b->p.bucket);
    return b;
}

void baseline_free(struct baseline *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++) {
        free(b->m[i].name);
        free(b->m[i].ring);
    }
    free(b->m);
    free(b);
}

static int64_t floor_div(int64_t a, int64_t d)
{
    int64_t q = a / d;
    return (a % d != 0 && (a < 0) != (d < 0)) ? q - 1 : q;
}

static struct metric *find(const struct baseline *b, const char *name)
{
    for (size_t i = 0; i < b->n; i++) {
        if (strcmp(b->m[i].name, name) == 0)
            return &b->m[i];
    }
    return NULL;
}

static int metric_get(struct baseline *b, const char *name, struct metric **out)
{
    struct metric *m = find(b, name);
    if (m) {
        *out = m;
        return 0;
    }
    if (b->n >= b->p.max_metrics)
        return -ENOSPC;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        struct metric *nm = realloc(b->m, cap * sizeof(*nm));
        if (!nm)
            return -ENOMEM;
        b->m = nm;
        b->cap = cap;
    }
    m = &b->m[b->n];
    m->name = strdup(name);
    m->ring = calloc(b->nb, sizeof(*m->ring));
    if (!m->name || !m->ring) {
        free(m->name);
        free(m->ring);
        return -ENOMEM;
    }
    b->n++;
    *out = m;
    return 0;
}

/* Oldest bucket start still inside the window that ends with now's bucket. */
static int64_t first_start(const struct baseline *b, int64_t now)
{
    int64_t cur = floor_div(now, b->p.bucket) * b->p.bucket;
    return cur - (int64_t)(b->nb - 1) * b->p.bucket;
}

/* Merges (n, mean, m2) into a bucket (Chan et al.). */
static void merge(struct bucket *into, uint64_t n, double mean, double m2)
{
    if (n == 0)
        return;
    if (into->n == 0) {
        into->n = n;
        into->mean = mean;
        into->m2 = m2;
        return;
    }
    double na = (double)into->n, nb = (double)n, nt = na + nb;
    double delta = mean - into->mean;
    into->mean += delta * nb / nt;
    into->m2 += m2 + delta * delta * na * nb / nt;
    into->n += n;
}

/* The slot for a bucket start, emptied if it holds an older bucket; NULL if it holds a
 * newer one (the sample is too old to matter). */
static struct bucket *slot(const struct baseline *b, struct metric *m, int64_t start)
{
    int64_t idx = floor_div(start, b->p.bucket) % (int64_t)b->nb;
    if (idx < 0)
        idx += (int64_t)b->nb;
    struct bucket *k = &m->ring[idx];
    if (k->n && k->start > start)
        return NULL;
    if (k->start != start) {
        memset(k, 0, sizeof(*k));
        k->start = start;
    }
    return k;
}

static int add_merged(struct baseline *b, const char *name, int64_t start, int64_t now, uint64_t n,
                      double mean, double m2)
{
    if (now < b->latest)
        now = b->latest;
    if (start < first_start(b, now))
        return 0;
    struct metric *m;
    int rc = metric_get(b, name, &m);
    if (rc < 0)
        return rc;
    struct bucket *k = slot(b, m, start);
    if (k) {
        merge(k, n, mean, m2);
        if (start > b->latest)
            b->latest = start;
    }
    return 0;
}

int baseline_add(struct baseline *b, const char *metric, int64_t now, double x)
{
    if (!metric || !metric[0] || !isfinite(x))
        return -EINVAL;
    int64_t start = floor_div(now, b->p.bucket) * b->p.bucket;
    return add_merged(b, metric, start, now, 1, x, 0.0);
}

static void stat_of(const struct baseline *b, const struct metric *m, int64_t now,
                    struct baseline_stat *out)
{
    struct bucket acc = {0};
    int64_t first = first_start(b, now);
    int64_t cur = floor_div(now, b->p.bucket) * b->p.bucket;
    for (size_t i = 0; i < b->nb; i++) {
        const struct bucket *k = &m->ring[i];
        if (k->n && k->start >= first && k->start <= cur)
            merge(&acc, k->n, k->mean, k->m2);
    }
    out->n = acc.n;
    out->mean = acc.n ? acc.mean : 0.0;
    out->sd = acc.n >= 2 ? sqrt(acc.m2 / (double)acc.n) : 0.0;
}

int baseline_get(const struct baseline *b, const char *metric, int64_t now,
                 struct baseline_stat *out)
{
    memset(out, 0, sizeof(*out));
    const struct metric *m = find(b, metric);
    if (!m)
        return -ENOENT;
    stat_of(b, m, now, out);
    return 0;
}

int baseline_test(const struct baseline *b, const char *metric, int64_t now, double x,
                  struct baseline_verdict *v)
{
    memset(v, 0, sizeof(*v));
    if (!isfinite(x))
        return -EINVAL;
    struct baseline_stat s = {0};
    baseline_get(b, metric, now, &s);
    v->n = s.n;
    v->mean = s.mean;
    v->sd = s.sd;
    /* The floors keep a flat or tiny baseline from turning normal noise into alarms. */
    double sd = s.sd;
    if (sd < b->p.min_sd)
        sd = b->p.min_sd;
    if (sd < b->p.min_sd_ratio * fabs(s.mean))
        sd = b->p.min_sd_ratio * fabs(s.mean);
    v->sd_used = sd;
    v->z = (x - s.mean) / sd;
    v->direction = x > s.mean ? 1 : x < s.mean ? -1 : 0;
    v->enough = s.n >= b->p.min_samples;
    v->anomaly = v->enough && fabs(x - s.mean) > b->p.sigma * sd;
    return 0;
}

int baseline_to_json(const struct baseline *b, int64_t now, json_t **out)
{
    json_t *root = json_pack("{s:i, s:I, s:I, s:{}}", "version", 1, "bucket",
                             (json_int_t)b->p.bucket, "window", (json_int_t)b->p.window, "metrics");
    if (!root)
        return -ENOMEM;
    json_t *metrics = json_object_get(root, "metrics");
    int64_t first = first_start(b, now);
    for (size_t i = 0; i < b->n; i++) {
        const struct metric *m = &b->m[i];
        json_t *arr = json_array();
        if (!arr || json_object_set_new(metrics, m->name, arr) < 0)
            goto fail;
        /* Oldest first, so a reader sees the history in order. */
        for (int64_t s = first; s <= first + (int64_t)(b->nb - 1) * b->p.bucket; s += b->p.bucket) {
            int64_t idx = floor_div(s, b->p.bucket) % (int64_t)b->nb;
            if (idx < 0)
                idx += (int64_t)b->nb;
            const struct bucket *k = &m->ring[idx];
            if (!k->n || k->start != s)
                continue;
            json_t *e =
                json_pack("[I, I, f, f]", (json_int_t)k->start, (json_int_t)k->n, k->mean, k->m2);
            if (!e || json_array_append_new(arr, e) < 0)
                goto fail;
        }
        if (json_array_size(arr) == 0)
            json_object_del(metrics, m->name);
    }
    *out = root;
    return 0;
fail:
    json_decref(root);
    return -ENOMEM;
}

int baseline_from_json(const json_t *j, const struct baseline_params *p, struct baseline **out)
{
    *out = NULL;
    json_t *metrics = json_object_get(j, "metrics");
    json_t *ver = json_object_get(j, "version");
    if (!json_is_object(j) || !json_is_integer(ver) || json_integer_value(ver) != 1 ||
        !json_is_object(metrics))
        return -EINVAL;
    struct baseline *b = baseline_new(p);
    if (!b)
        return -ENOMEM;
    /* The newest saved bucket stands for "now" while loading: expiry is the reader's job
     * at its own now, and a state file must not lose history because it is read later. */
    int64_t latest = 0;
    const char *name;
    json_t *arr;
    json_object_foreach((json_t *)metrics, name, arr)
    {
        if (!json_is_array(arr))
            goto bad;
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e)
        {
            json_t *st = json_array_get(e, 0);
            if (!json_is_array(e) || json_array_size(e) != 4 || !json_is_integer(st))
                goto bad;
            if (json_integer_value(st) > latest)
                latest = json_integer_value(st);
        }
    }
    int rc;
    json_object_foreach((json_t *)metrics, name, arr)
    {
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e)
        {
            json_t *jn = json_array_get(e, 1);
            json_t *jm = json_array_get(e, 2);
            json_t *j2 = json_array_get(e, 3);
            if (!json_is_integer(jn) || json_integer_value(jn) < 0 || !json_is_number(jm) ||
                !json_is_number(j2))
                goto bad;
            double mean = json_number_value(jm), m2 = json_number_value(j2);
            if (!isfinite(mean) || !isfinite(m2) || m2 < 0 || !name[0])
                goto bad;
            int64_t start =
                floor_div(json_integer_value(json_array_get(e, 0)), b->p.bucket) * b->p.bucket;
            rc = add_merged(b, name, start, latest, (uint64_t)json_integer_value(jn), mean, m2);
            if (rc < 0) {
                baseline_free(b);
                return rc;
            }
        }
    }
    *out = b;
    return 0;
bad:
    baseline_free(b);
    return -EINVAL;
}

/* ---- quiet windows ------------------------------------------------------------------ */

/* Parses "HH:MM" or "*:MM" at *s; sets *hourly, *minutes (of day or hour). */
static bool parse_clock(const char **s, bool *hourly, int *minutes)
{
    const char *p = *s;
    int h = 0;
    if (*p == '*') {
        *hourly = true;
        p++;
    } else {
        *hourly = false;
        if (!isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]))
            return false;
        h = (p[0] - '0') * 10 + (p[1] - '0');
        p += 2;
    }
    if (*p != ':' || !isdigit((unsigned char)p[1]) || !isdigit((unsigned char)p[2]))
        return false;
    int m = (p[1] - '0') * 10 + (p[2] - '0');
    p += 3;
    if (m > 59 || h > 24 || (h == 24 && m != 0))
        return false;
    *minutes = *hourly ? m : h * 60 + m;
    *s = p;
    return true;
}

int baseline_quiet_parse(const char *spec, struct baseline_quiet *q, char *err, size_t errlen)
{
    memset(q, 0, sizeof(*q));
    const char *p = spec ? spec : "";
    for (;;) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        if (!*p)
            return 0;
        const char *item = p;
        bool h1, h2;
        int a, z;
        bool ok = parse_clock(&p, &h1, &a) && *p++ == '-' && parse_clock(&p, &h2, &z) &&
                  (!*p || *p == ',' || isspace((unsigned char)*p)) && h1 == h2 && a != z &&
                  a != 24 * 60 && (!h1 || z < 60);
        if (ok && q->n == BASELINE_QUIET_MAX) {
            if (errlen)
                snprintf(err, errlen, "more than %d quiet windows", BASELINE_QUIET_MAX);
            return -EINVAL;
        }
        if (!ok) {
            size_t len = strcspn(item, ", \t\n");
            if (errlen)
                snprintf(err, errlen,
                         "bad quiet window \"%.*s\": expected HH:MM-HH:MM or *:MM-*:MM, "
                         "not empty",
                         (int)(len > 40 ? 40 : len), item);
            return -EINVAL;
        }
        q->w[q->n].hourly = h1;
        q->w[q->n].start = (uint16_t)a;
        q->w[q->n].end = (uint16_t)z;
        q->n++;
    }
}

bool baseline_quiet_match(const struct baseline_quiet *q, int hour, int minute)
{
    for (size_t i = 0; i < q->n; i++) {
        int t = q->w[i].hourly ? minute : hour * 60 + minute;
        int a = q->w[i].start, z = q->w[i].end;
        bool in = a < z ? (t >= a && t < z) : (t >= a || t < z);
        if (in)
            return true;
    }
    return false;
}
