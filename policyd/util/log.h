/* log: the daemon's logging. Syslog facility mail as "postsurge/<component>" by default,
 * or stderr in the foreground. Each .c file defines LOG_COMPONENT before including this.
 * The level is tested before the arguments are evaluated. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct config;

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

extern enum log_level log_threshold;

/* Opens logging. ident is the program name ("postsurge"), facility a syslog facility
 * name ("mail"), to_stderr selects stderr instead of syslog. Returns 0 or -EINVAL for an
 * unknown facility. May be called again (SIGHUP) to change settings. */
int log_open(const char *ident, const char *facility, bool to_stderr, enum log_level level);
/* Opens logging as the configuration says: syslog_name, syslog_facility, log_level and
 * log_destination; foreground forces stderr, verbose forces debug. Returns 0 or -EINVAL
 * (unknown facility or level: logging is left unchanged). Start-up and SIGHUP. */
int log_configure(const struct config *cfg, bool foreground, bool verbose);
/* Parses "error|warning|info|debug"; returns 0 or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

void log_write(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True if name is a syslog facility log_open() accepts ("mail", "local0", ...). */
bool log_facility_valid(const char *name);

/* Logs at error level ("fatal: ...") and exits with status 1. Start-up and bad
 * configuration only: a running daemon logs and recovers instead. */
void log_die(const char *component, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
#define die(...) log_die(LOG_COMPONENT, __VA_ARGS__)

#ifndef LOG_COMPONENT
#define LOG_COMPONENT "main"
#endif

#define log_at(lvl, ...)                                                                           \
    do {                                                                                           \
        if (log_threshold >= (lvl))                                                                \
            log_write((lvl), LOG_COMPONENT, __VA_ARGS__);                                          \
    } while (0)
#define log_error(...) log_at(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_at(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LVL_DEBUG, __VA_ARGS__)

/* A rate limit for one repeated warning: at most one line per interval, the next line
 * carrying how many were suppressed. Zero-initialise. */
struct log_ratelimit {
    uint64_t last_ms;
    uint64_t suppressed;
    uint64_t burst_used; /* lines in the current interval (log_ratelimit_allow_burst) */
};

/* Returns true if a line may be written now (now_ms: monotonic ms) and sets
 * *suppressed to how many were dropped since the last one. */
bool log_ratelimit_allow(struct log_ratelimit *rl, uint64_t now_ms, uint64_t interval_ms,
                         uint64_t *suppressed);

/* Like log_ratelimit_allow(), but lets up to burst lines through per interval: for
 * events that are each worth a line (a protocol error names its peer) but may come in a
 * flood. */
bool log_ratelimit_allow_burst(struct log_ratelimit *rl, uint64_t now_ms, uint64_t interval_ms,
                               uint64_t burst, uint64_t *suppressed);

/* A warning written when allow, an expression that may set log_supp_ to the lines
 * suppressed since the last one, lets it through; the count is appended to the line. */
#define log_warn_limited_(allow, fmt, ...)                                                         \
    do {                                                                                           \
        uint64_t log_supp_;                                                                        \
        if (log_threshold >= LOG_LVL_WARN && (allow)) {                                            \
            if (log_supp_)                                                                         \
                log_write(LOG_LVL_WARN, LOG_COMPONENT, fmt " (%llu similar suppressed)",           \
                          __VA_ARGS__, (unsigned long long)log_supp_);                             \
            else                                                                                   \
                log_write(LOG_LVL_WARN, LOG_COMPONENT, fmt, __VA_ARGS__);                          \
        }                                                                                          \
    } while (0)

#define log_warn_burst_limited(rl, now_ms, interval_ms, burst, fmt, ...)                           \
    log_warn_limited_(                                                                             \
        log_ratelimit_allow_burst((rl), (now_ms), (interval_ms), (burst), &log_supp_), fmt,        \
        __VA_ARGS__)

#define log_warn_ratelimited(rl, now_ms, interval_ms, fmt, ...)                                    \
    log_warn_limited_(log_ratelimit_allow((rl), (now_ms), (interval_ms), &log_supp_), fmt,         \
                      __VA_ARGS__)
