/* metrics: the daemon's metrics registry and its Prometheus text exposition (format
 * 0.0.4), served by http.c at /metrics. A module registers its families once (start-up
 * or reload) and keeps the series handles: on the request path an update is an add to a
 * double, with no allocation, formatting or lookup. Figures that already live elsewhere
 * (server_stats, the monitor's samples) are written at scrape time by a collector
 * callback instead. No I/O, no libuv; loop thread only (nothing here is thread-safe). */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct metrics;        /* a registry */
struct metric;         /* a family: name, type, help, label names; owned by its registry */
struct metrics_series; /* one labelled series of a family; owned by its family */
struct metrics_out;    /* an exposition being written (collectors write into it) */

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* New empty registry; NULL on ENOMEM. */
struct metrics *metrics_new(void);
/* Frees the registry, its families and series (every handle becomes invalid). NULL is a
 * no-op. */
void metrics_free(struct metrics *m);

/* Registers a family. name follows Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*; counters
 * should end in _total, units in base units: _seconds, _bytes); help is any text
 * (escaped on output); label_names is a NULL-terminated array of label names
 * ([a-zA-Z_][a-zA-Z0-9_]*, not "__"-prefixed, not "le" for histograms), or NULL for
 * none. Everything is copied. Returns the family (owned by m), or NULL on a bad or
 * already registered name (a programming error, logged by the caller) or ENOMEM. */
struct metric *metrics_counter_new(struct metrics *m, const char *name, const char *help,
                                   const char *const *label_names);
struct metric *metrics_gauge_new(struct metrics *m, const char *name, const char *help,
                                 const char *const *label_names);
/* A histogram with n_bounds upper bounds (finite, strictly increasing, copied); the +Inf
 * bucket is implicit. Values are in the family's unit (seconds for _seconds). */
struct metric *metrics_histogram_new(struct metrics *m, const char *name, const char *help,
                                     const char *const *label_names, const double *bounds,
                                     size_t n_bounds);

/* The family registered under name, or NULL. */
struct metric *metrics_find(struct metrics *m, const char *name);

/* The series of family f with these label values (one per label name, any bytes except
 * NUL; NULL for a family without labels), created at 0 on first use. Returns a handle
 * owned by f, valid until metrics_family_clear(f) or metrics_free(); NULL on ENOMEM or a
 * NULL f (every update accepts a NULL series and does nothing, so a module whose
 * registration failed keeps working). Looks up linearly: call it at registration or
 * reload, not per request. */
struct metrics_series *metrics_series(struct metric *f, const char *const *label_values);

/* Drops every series of f (for label sets that come from configuration, such as rule
 * names, before re-creating them on reload). Handles of f's series become invalid. */
void metrics_family_clear(struct metric *f);

/* Updates. Counters only go up: metrics_add() ignores negative and NaN values on a
 * counter. metrics_set() is for gauges. metrics_observe() is for histograms (v in the
 * family's unit). NULL s is a no-op. O(1), except observe: O(log buckets). */
void metrics_inc(struct metrics_series *s);
void metrics_add(struct metrics_series *s, double v);
void metrics_set(struct metrics_series *s, double v);
void metrics_observe(struct metrics_series *s, double v);
/* The current value of a counter or gauge series; a histogram's count. For tests. */
double metrics_value(const struct metrics_series *s);

/* A collector writes families computed at scrape time with metrics_out_family() and
 * metrics_out_sample(). It returns 0 or a negative errno (the scrape then fails with
 * 500). Collectors run in registration order, after the registry's own families.
 * Returns 0 or -ENOMEM (also for a NULL m). */
typedef int (*metrics_collect_fn)(struct metrics_out *out, void *arg);
int metrics_add_collector(struct metrics *m, metrics_collect_fn fn, void *arg);
/* Removes the collector registered with exactly fn and arg; -ENOENT if none. */
int metrics_remove_collector(struct metrics *m, metrics_collect_fn fn, void *arg);

/* Starts a family in a collector: "# HELP" and "# TYPE" lines. Returns 0, -EINVAL for a
 * bad name, -EEXIST if the name was already written in this exposition (a registry
 * family or another collector's), or -ENOMEM. */
int metrics_out_family(struct metrics_out *o, enum metric_type type, const char *name,
                       const char *help);
/* Writes one sample line: name (the family's, or with _bucket/_sum/_count for a
 * histogram), n label pairs (values escaped here), the value. Returns 0, -EINVAL or
 * -ENOMEM. */
int metrics_out_sample(struct metrics_out *o, const char *name, const char *const *label_names,
                       const char *const *label_values, size_t n, double v);

/* Writes the whole exposition: the registry's families in registration order, then the
 * collectors'. On success returns 0 and a malloc'ed text in *text (caller frees) of
 * *len bytes (NUL-terminated). Returns -ENOMEM or a collector's error (nothing to free). */
int metrics_write(struct metrics *m, char **text, size_t *len);

/* Appends the label-value escaping of the text format (backslash, double quote and
 * newline as \\, \" and \n) of s to out (size outsz, NUL-terminated). Returns the
 * length it needs (like snprintf: >= outsz means truncated). */
size_t metrics_escape_label(const char *s, char *out, size_t outsz);
