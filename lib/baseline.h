/* baseline: rolling statistics per named metric and the anomaly test of the health report.
 * Each metric keeps one bucket per `bucket` seconds (count, mean, sum of squared deviations)
 * in a ring covering `window` seconds, so old samples age out bucket by bucket and the
 * spread is exact over what is left. The whole state serialises to and from JSON for the
 * store / state file. Also parses `report_quiet_windows`. Pure: `now` is always passed. */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Zero fields take the defaults shown (baseline_params_default fills them all). */
struct baseline_params {
    int64_t window;       /* seconds of history: 7 days (report_baseline_window) */
    int64_t bucket;       /* seconds per bucket: 3600 */
    uint32_t min_samples; /* fewer samples than this never alarm: 12 */
    double sigma;         /* |x - mean| > sigma * sd alarms: 2 (report_anomaly_sigma) */
    double min_sd;        /* floor of sd: 1, so a flat baseline does not alarm on +1 */
    double min_sd_ratio;  /* floor of sd relative to |mean|: 0.1 (10 % of the mean) */
    size_t max_metrics;   /* distinct metric names kept: 4096 */
};

/* Fills p with the defaults above. */
void baseline_params_default(struct baseline_params *p);

struct baseline;

/* New, empty state. p may be NULL (defaults). Returns NULL on ENOMEM or when the bucket
 * is not positive or larger than the window. Caller frees with baseline_free(). */
struct baseline *baseline_new(const struct baseline_params *p);
/* NULL is a no-op. */
void baseline_free(struct baseline *b);

/* Records sample x of metric (any non-empty name, e.g. "mx1/queue.deferred.messages") at
 * time now (Unix seconds). A sample older than the window, counted back from the newest
 * sample recorded, is ignored (a clock step back cannot evict newer history). Returns 0,
 * -EINVAL (empty name, x not finite), -ENOSPC (max_metrics reached), -ENOMEM. */
int baseline_add(struct baseline *b, const char *metric, int64_t now, double x);

/* Statistics of a metric over (now - window, now]. */
struct baseline_stat {
    uint64_t n;  /* samples */
    double mean; /* 0 when n == 0 */
    double sd;   /* population standard deviation; 0 when n < 2 */
};
/* Fills *out; a metric never seen gives n == 0 and returns -ENOENT. */
int baseline_get(const struct baseline *b, const char *metric, int64_t now,
                 struct baseline_stat *out);

/* Result of baseline_test(). */
struct baseline_verdict {
    bool anomaly;  /* enough samples and |x - mean| > sigma * sd_used */
    bool enough;   /* n >= min_samples */
    int direction; /* +1 above the mean, -1 below, 0 equal */
    uint64_t n;
    double mean, sd; /* the baseline */
    double sd_used;  /* max(sd, min_sd, min_sd_ratio * |mean|) */
    double z;        /* (x - mean) / sd_used */
};
/* Compares x with the metric's baseline at now (x itself is not recorded: call
 * baseline_add() afterwards). Returns 0 (also for an unknown metric: not enough samples)
 * or -EINVAL when x is not finite. */
int baseline_test(const struct baseline *b, const char *metric, int64_t now, double x,
                  struct baseline_verdict *v);

/* Serialises the state at now (expired buckets left out) as a new JSON object:
 * {"version":1,"bucket":S,"window":S,"metrics":{"NAME":[[start,n,mean,m2],...],...}}.
 * Returns 0 and the new reference in *out (caller decrefs), or -ENOMEM. */
int baseline_to_json(const struct baseline *b, int64_t now, json_t **out);
/* Rebuilds a state from baseline_to_json() output (borrowed j) with parameters p (NULL:
 * defaults). Buckets saved with another bucket width are merged into the new ones.
 * Returns 0 and a new state in *out, -EINVAL on a bad shape, -ENOSPC, -ENOMEM. */
int baseline_from_json(const json_t *j, const struct baseline_params *p, struct baseline **out);

/* Quiet windows (report_quiet_windows): a list separated by commas and/or blanks of
 *   HH:MM-HH:MM   a daily window, local time, e.g. "02:00-02:30"; may wrap midnight
 *                 ("23:50-00:10"); the end may be "24:00";
 *   *:MM-*:MM     the same minutes of every hour, e.g. "*:00-*:10" (the first 10 minutes
 *                 of each hour, when greylisting retries arrive); may wrap the hour.
 * Starts are inclusive, ends exclusive; a window may not be empty. "" means none. */
#define BASELINE_QUIET_MAX 32
struct baseline_quiet {
    size_t n;
    struct {
        bool hourly;    /* *:MM form: start/end are minutes of the hour */
        uint16_t start; /* minute of the day (or hour) */
        uint16_t end;
    } w[BASELINE_QUIET_MAX];
};
/* Parses spec into *q. Returns 0, or -EINVAL with a message in err (errlen bytes, may be
 * 0) naming the bad item. */
int baseline_quiet_parse(const char *spec, struct baseline_quiet *q, char *err, size_t errlen);
/* True if the local time hour:minute falls in a window. The caller takes hour and minute
 * from localtime_r() and decides the "unless the backlog exceeds a limit" override. */
bool baseline_quiet_match(const struct baseline_quiet *q, int hour, int minute);
