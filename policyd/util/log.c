/* log: where every daemon line goes. Syslog (facility mail by default) with the ident
 * "postsurge/<component>" so lines sit beside Postfix's own, or stderr lines
 * "time postsurge/<component>[pid]: level: msg" in the foreground. Every message is made
 * printable (lib/printable.h) before it is written: lines quote client-chosen values. Also
 * the repeat limiter that keeps a flapping dependency from flooding the log. */
#define LOG_COMPONENT "log"
#include "log.h"

#include "config.h"
#include "printable.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_LVL_INFO;

/* Until log_open() runs (command-line errors), lines go to stderr. */
static bool log_stderr = true;
static int log_facility = LOG_MAIL;
static char log_ident[64] = "postsurge";

/* openlog() keeps the ident pointer, so each component gets a static buffer that lives
 * as long as the process. Components are string literals, compared by address first. */
#define LOG_MAX_COMPONENTS 32
static struct {
    const char *component;
    char ident[96];
} log_idents[LOG_MAX_COMPONENTS];
static size_t log_n_idents;
static const char *log_open_ident; /* the ident syslog holds right now */

static const struct {
    const char *name;
    int value;
} log_facilities[] = {
    {"mail", LOG_MAIL},     {"daemon", LOG_DAEMON}, {"user", LOG_USER},     {"local0", LOG_LOCAL0},
    {"local1", LOG_LOCAL1}, {"local2", LOG_LOCAL2}, {"local3", LOG_LOCAL3}, {"local4", LOG_LOCAL4},
    {"local5", LOG_LOCAL5}, {"local6", LOG_LOCAL6}, {"local7", LOG_LOCAL7},
};

static const char *const log_level_names[] = {"error", "warning", "info", "debug"};

static int log_facility_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof(log_facilities) / sizeof(log_facilities[0]); i++)
        if (strcmp(name, log_facilities[i].name) == 0)
            return log_facilities[i].value;
    return -1;
}

bool log_facility_valid(const char *name)
{
    return name && log_facility_lookup(name) >= 0;
}

int log_level_parse(const char *s, enum log_level *out)
{
    if (!s)
        return -EINVAL;
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, log_level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    /* Postfix spells it "warning"; accept the short form too. */
    if (strcmp(s, "warn") == 0) {
        *out = LOG_LVL_WARN;
        return 0;
    }
    return -EINVAL;
}

int log_open(const char *ident, const char *facility, bool to_stderr, enum log_level level)
{
    int fac = log_facility_lookup(facility ? facility : "mail");

    if (fac < 0)
        return -EINVAL;
    /* A new base name invalidates the cached per-component idents. syslog still points
     * at one of them, so re-point it before rewriting. */
    if (ident && *ident && strcmp(ident, log_ident) != 0) {
        closelog();
        log_open_ident = NULL;
        snprintf(log_ident, sizeof(log_ident), "%s", ident);
        log_n_idents = 0;
    }
    if (!to_stderr && (fac != log_facility || log_stderr)) {
        closelog();
        log_open_ident = NULL;
    }
    log_facility = fac;
    log_stderr = to_stderr;
    log_threshold = level;
    return 0;
}

int log_configure(const struct config *cfg, bool foreground, bool verbose)
{
    enum log_level level = LOG_LVL_INFO;
    bool to_stderr = foreground;

    if (cfg->log_level && *cfg->log_level && log_level_parse(cfg->log_level, &level) < 0)
        return -EINVAL;
    if (verbose)
        level = LOG_LVL_DEBUG;
    if (cfg->log_destination && strcmp(cfg->log_destination, "stderr") == 0)
        to_stderr = true;
    return log_open(cfg->syslog_name, cfg->syslog_facility, to_stderr, level);
}

static const char *log_ident_for(const char *component)
{
    for (size_t i = 0; i < log_n_idents; i++)
        if (log_idents[i].component == component || strcmp(log_idents[i].component, component) == 0)
            return log_idents[i].ident;
    if (log_n_idents == LOG_MAX_COMPONENTS)
        return log_ident;
    log_idents[log_n_idents].component = component;
    snprintf(log_idents[log_n_idents].ident, sizeof(log_idents[0].ident), "%s/%s", log_ident,
             component);
    return log_idents[log_n_idents++].ident;
}

static void log_vwrite(enum log_level level, const char *component, const char *prefix,
                       const char *fmt, va_list ap)
{
    char raw[2048], safe[4 * sizeof(raw)];
    const char *msg = raw;
    int saved_errno = errno;

    vsnprintf(raw, sizeof(raw), fmt, ap);
    /* Command output quoted in a message often ends in a newline; one log record is one
     * line, and embedded newlines would let quoted text forge records of its own. */
    size_t mlen = strlen(raw);
    while (mlen > 0 && (raw[mlen - 1] == '\n' || raw[mlen - 1] == '\r'))
        raw[--mlen] = '\0';
    for (char *q = raw; *q; q++)
        if (*q == '\n')
            *q = ' ';
    /* Messages quote what clients sent (policy attributes, peers' protocol errors, names
     * from the mail log): control characters and bytes that are not UTF-8 are escaped here,
     * once for every line, so no caller can forget. Plain text is only scanned. */
    if (printable_needed(raw, mlen)) {
        printable_escape(safe, sizeof(safe), raw, mlen, false);
        msg = safe;
    }
    if (log_stderr) {
        char line[sizeof(safe) + 256], stamp[32];
        struct timeval tv;
        struct tm tm;

        gettimeofday(&tv, NULL);
        localtime_r(&tv.tv_sec, &tm);
        strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        int n =
            snprintf(line, sizeof(line), "%s.%03d %s/%s[%ld]: %s: %s\n", stamp,
                     (int)(tv.tv_usec / 1000), log_ident, component, (long)getpid(), prefix, msg);
        if (n < 0)
            goto out;
        if ((size_t)n >= sizeof(line)) {
            n = sizeof(line) - 1;
            line[n - 1] = '\n';
        }
        /* One write per line, so lines from concurrent writers do not interleave. */
        ssize_t w = write(STDERR_FILENO, line, (size_t)n);
        (void)w;
    } else {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        const char *ident = log_ident_for(component);

        if (ident != log_open_ident) {
            openlog(ident, LOG_PID | LOG_NDELAY, log_facility);
            log_open_ident = ident;
        }
        /* Postfix style: info lines carry no level word. */
        if (level == LOG_LVL_INFO)
            syslog(prio[level], "%s", msg);
        else
            syslog(prio[level], "%s: %s", prefix, msg);
    }
out:
    errno = saved_errno;
}

void log_write(enum log_level level, const char *component, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vwrite(level, component, log_level_names[level], fmt, ap);
    va_end(ap);
}

void log_die(const char *component, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vwrite(LOG_LVL_ERROR, component, "fatal", fmt, ap);
    va_end(ap);
    exit(1);
}

bool log_ratelimit_allow(struct log_ratelimit *rl, uint64_t now_ms, uint64_t interval_ms,
                         uint64_t *suppressed)
{
    /* last_ms == 0 means "never logged"; a real stamp of 0 is stored as 1. */
    if (rl->last_ms != 0 && now_ms - rl->last_ms < interval_ms) {
        rl->suppressed++;
        return false;
    }
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    rl->last_ms = now_ms ? now_ms : 1;
    return true;
}

bool log_ratelimit_allow_burst(struct log_ratelimit *rl, uint64_t now_ms, uint64_t interval_ms,
                               uint64_t burst, uint64_t *suppressed)
{
    if (rl->last_ms == 0 || now_ms - rl->last_ms >= interval_ms) {
        rl->last_ms = now_ms ? now_ms : 1;
        rl->burst_used = 0;
    }
    if (rl->burst_used >= burst) {
        rl->suppressed++;
        return false;
    }
    rl->burst_used++;
    *suppressed = rl->suppressed;
    rl->suppressed = 0;
    return true;
}
