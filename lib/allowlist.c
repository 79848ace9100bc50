/* allowlist: the settings a stress profile may change and the syntax of their values.
 * Every entry is a rate, count, time or error limit of smtpd, postscreen or anvil, or
 * master.cf's "-o stress=": values are numbers, durations, yes/no or a postscreen
 * action, so no path, command, map, network list or macro can pass. */
#include "allowlist.h"

#include <stdio.h>
#include <string.h>

#define E_BOTH(n, k)                                                                               \
    {                                                                                              \
        n, k, true, true                                                                           \
    }
#define E_MASTER(n, k)                                                                             \
    {                                                                                              \
        n, k, false, true                                                                          \
    }

static const struct allowlist_entry entries[] = {
    /* smtpd, through anvil: per-client limits (main.cf or per service) */
    E_BOTH("smtpd_client_connection_count_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_client_connection_rate_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_client_message_rate_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_client_recipient_rate_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_client_new_tls_session_rate_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_client_auth_rate_limit", ALLOWLIST_COUNT),
    /* smtpd: error handling, per-session limits and timeouts */
    E_BOTH("smtpd_error_sleep_time", ALLOWLIST_DURATION),
    E_BOTH("smtpd_soft_error_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_hard_error_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_junk_command_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_recipient_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_recipient_overshoot_limit", ALLOWLIST_COUNT),
    E_BOTH("smtpd_timeout", ALLOWLIST_DURATION),
    E_BOTH("smtpd_starttls_timeout", ALLOWLIST_DURATION),
    E_BOTH("smtpd_per_request_deadline", ALLOWLIST_YESNO),
    E_BOTH("smtpd_min_data_rate", ALLOWLIST_COUNT),
    /* anvil and the queue manager's input flow */
    E_BOTH("anvil_rate_time_unit", ALLOWLIST_DURATION),
    E_BOTH("in_flow_delay", ALLOWLIST_DURATION),
    /* postscreen: queue limits, timers and test actions */
    E_BOTH("postscreen_post_queue_limit", ALLOWLIST_COUNT),
    E_BOTH("postscreen_pre_queue_limit", ALLOWLIST_COUNT),
    E_BOTH("postscreen_client_connection_count_limit", ALLOWLIST_COUNT),
    E_BOTH("postscreen_greet_wait", ALLOWLIST_DURATION),
    E_BOTH("postscreen_command_time_limit", ALLOWLIST_DURATION),
    E_BOTH("postscreen_command_count_limit", ALLOWLIST_COUNT),
    E_BOTH("postscreen_watchdog_timeout", ALLOWLIST_DURATION),
    E_BOTH("postscreen_dnsbl_threshold", ALLOWLIST_COUNT),
    E_BOTH("postscreen_greet_action", ALLOWLIST_ACTION),
    E_BOTH("postscreen_dnsbl_action", ALLOWLIST_ACTION),
    E_BOTH("postscreen_pipelining_enable", ALLOWLIST_YESNO),
    E_BOTH("postscreen_pipelining_action", ALLOWLIST_ACTION),
    E_BOTH("postscreen_non_smtp_command_enable", ALLOWLIST_YESNO),
    E_BOTH("postscreen_non_smtp_command_action", ALLOWLIST_ACTION),
    E_BOTH("postscreen_bare_newline_enable", ALLOWLIST_YESNO),
    E_BOTH("postscreen_bare_newline_action", ALLOWLIST_ACTION),
    /* master.cf only: Postfix's own stress-adaptive settings, switched on early */
    E_MASTER("stress", ALLOWLIST_YESNO),
};

const struct allowlist_entry *allowlist_entries(size_t *n)
{
    *n = sizeof(entries) / sizeof(entries[0]);
    return entries;
}

const char *allowlist_kind_text(enum allowlist_kind k)
{
    switch (k) {
    case ALLOWLIST_COUNT:
        return "a whole number";
    case ALLOWLIST_DURATION:
        return "a duration (a whole number, optionally followed by s, m, h, d or w)";
    case ALLOWLIST_YESNO:
        return "yes or no";
    case ALLOWLIST_ACTION:
        return "ignore, enforce or drop";
    }
    return "?";
}

/* 1 to 9 digits: below 10^9, so every Postfix int parameter takes it. */
static bool digits(const char *s, size_t n)
{
    if (n == 0 || n > 9)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

static bool value_fits(enum allowlist_kind k, const char *v)
{
    size_t n = strlen(v);
    switch (k) {
    case ALLOWLIST_COUNT:
        return digits(v, n);
    case ALLOWLIST_DURATION:
        if (n > 0 && strchr("smhdw", v[n - 1]))
            n--;
        return digits(v, n);
    case ALLOWLIST_YESNO:
        return strcmp(v, "yes") == 0 || strcmp(v, "no") == 0;
    case ALLOWLIST_ACTION:
        return strcmp(v, "ignore") == 0 || strcmp(v, "enforce") == 0 || strcmp(v, "drop") == 0;
    }
    return false;
}

bool allowlist_check(bool master, const char *name, const char *value, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
        const struct allowlist_entry *e = &entries[i];
        if (strcmp(e->name, name) != 0)
            continue;
        if (master ? !e->master : !e->main) {
            if (err && errlen)
                snprintf(err, errlen, "%.100s: may be set only as a %s override", name,
                         master ? "main.cf" : "master.cf -o");
            return false;
        }
        if (!value_fits(e->kind, value)) {
            if (err && errlen)
                snprintf(err, errlen, "%.100s=%.100s: the value must be %s", name, value,
                         allowlist_kind_text(e->kind));
            return false;
        }
        return true;
    }
    if (err && errlen)
        snprintf(err, errlen,
                 "%.100s: not a setting stress profiles may change (see the list in "
                 "postsurge.cf(5))",
                 name);
    return false;
}
