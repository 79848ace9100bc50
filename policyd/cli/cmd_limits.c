/* cmd_limits: `postsurge limits list [--json]`, `limits show RULE VALUE [--json]`,
 * `limits reset RULE VALUE` and `limits set RULE VALUE COUNT|unlimited [for DURATION]` /
 * `limits unset RULE VALUE`: the running daemon's rules, one key's counter (read, or
 * forgotten on every node sharing the store) and the run-time overrides of the whole
 * cluster, asked over the control socket
 * (server/engine.c answers). A RULE or VALUE that cannot exist is refused with the
 * daemon's reason. */
#define LOG_COMPONENT "cli"
#include "cmd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "limits_engine.h"

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* "until" and a UTC time for an override with an end, "" without. */
static void until_text(json_t *o, char *out, size_t outsz)
{
    int64_t ms = json_integer_value(json_object_get(o, "expires_ms"));
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    out[0] = '\0';
    if (ms > 0 && gmtime_r(&t, &tm))
        strftime(out, outsz, " until %Y-%m-%d %H:%M:%S UTC", &tm);
}

static void print_override(json_t *x)
{
    char until[64];
    until_text(x, until, sizeof(until));
    json_t *lim = json_object_get(x, "limit");
    if (json_is_string(lim))
        printf("    run-time override %s: %s%s\n", jstr(x, "value"), json_string_value(lim), until);
    else
        printf("    run-time override %s: %" PRId64 "%s\n", jstr(x, "value"),
               (int64_t)json_integer_value(lim), until);
}

static void print_list(json_t *o)
{
    json_t *rules = json_object_get(o, "rules");
    printf("%zu rules, store %s%s\n", json_array_size(rules), jstr(o, "store"),
           json_is_true(json_object_get(o, "stressed")) ? ", node stressed (stress limits)" : "");
    for (size_t i = 0; i < json_array_size(rules); i++) {
        json_t *r = json_array_get(rules, i);
        char w[32];
        limits_window_text(json_integer_value(json_object_get(r, "window_ms")), w, sizeof(w));
        printf("%s: %s %s %" PRId64 "/%s", jstr(r, "name"), jstr(r, "key"), jstr(r, "measure"),
               (int64_t)json_integer_value(json_object_get(r, "limit")), w);
        if (json_object_get(r, "stress_limit")) {
            limits_window_text(json_integer_value(json_object_get(r, "stress_window_ms")), w,
                               sizeof(w));
            printf(" stress %" PRId64 "/%s",
                   (int64_t)json_integer_value(json_object_get(r, "stress_limit")), w);
        }
        json_t *c = json_object_get(r, "conditions");
        for (size_t k = 0; k < json_array_size(c); k++)
            printf(" if %s", json_string_value(json_array_get(c, k)));
        if (json_object_get(r, "overrides"))
            printf(" overrides %s (%" PRId64 " entries)", jstr(r, "overrides"),
                   (int64_t)json_integer_value(json_object_get(r, "override_entries")));
        if (json_is_true(json_object_get(r, "dryrun")))
            printf(" dryrun");
        printf("\n    action %s\n", jstr(r, "action"));
        json_t *ov = json_object_get(o, "runtime_overrides");
        for (size_t k = 0; k < json_array_size(ov); k++) {
            json_t *x = json_array_get(ov, k);
            if (strcmp(jstr(x, "rule"), jstr(r, "name")) == 0)
                print_override(x);
        }
    }
    json_int_t n = json_integer_value(json_object_get(o, "runtime_override_count"));
    if ((size_t)n > json_array_size(json_object_get(o, "runtime_overrides")))
        printf("(%" PRId64 " run-time overrides in all; --json lists the first %zu)\n", (int64_t)n,
               json_array_size(json_object_get(o, "runtime_overrides")));
}

static void print_show(json_t *o)
{
    char w[32];
    limits_window_text(json_integer_value(json_object_get(o, "window_ms")), w, sizeof(w));
    json_t *lim = json_object_get(o, "limit");
    printf("rule %s, key value %s: %" PRId64 " %s counted in the last %s\n", jstr(o, "rule"),
           jstr(o, "value"), (int64_t)json_integer_value(json_object_get(o, "count")),
           jstr(o, "measure"), w);
    char until[64];
    until_text(o, until, sizeof(until));
    if (json_is_string(lim))
        printf("limit: %s (from the %s%s)\n", json_string_value(lim), jstr(o, "source"), until);
    else
        printf("limit: %" PRId64 " (from the %s%s)\n", (int64_t)json_integer_value(lim),
               jstr(o, "source"), until);
    if (json_object_get(o, "stress_count"))
        printf("stress counter: %" PRId64 "\n",
               (int64_t)json_integer_value(json_object_get(o, "stress_count")));
    if (json_is_true(json_object_get(o, "admitted_now"))) {
        printf("next unit: admitted now\n");
    } else {
        limits_window_text(json_integer_value(json_object_get(o, "admitted_within_ms")), w,
                           sizeof(w));
        printf("next unit: refused until older units leave the window (within %s at most)\n", w);
    }
}

int cmd_limits(const struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    const char *args[6];
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (n < 6)
            args[n++] = argv[i];
        else
            n = 7;
    }
    bool list = n == 1 && strcmp(args[0], "list") == 0;
    bool show = n == 3 && strcmp(args[0], "show") == 0;
    bool reset = n == 3 && strcmp(args[0], "reset") == 0;
    bool top = (n == 1 || n == 2) && strcmp(args[0], "top") == 0;
    bool set = (n == 4 || (n == 6 && strcmp(args[4], "for") == 0)) && strcmp(args[0], "set") == 0;
    bool unset = n == 3 && strcmp(args[0], "unset") == 0;
    if (!list && !show && !reset && !top && !set && !unset) {
        fprintf(stderr, "usage: postsurge limits list [--json]\n"
                        "       postsurge limits top [RULE] [--json]\n"
                        "       postsurge limits show RULE VALUE [--json]\n"
                        "       postsurge limits reset RULE VALUE\n"
                        "       postsurge limits set RULE VALUE COUNT|unlimited [for DURATION]\n"
                        "       postsurge limits unset RULE VALUE\n");
        return 2;
    }
    char line[512];
    if (set) {
        for (int k = 1; k < n; k++)
            for (const char *p = args[k]; *p; p++)
                if ((unsigned char)*p <= ' ' || *p == 0x7f || strlen(args[k]) > 200) {
                    fprintf(stderr, "postsurge: limits set: blanks, control characters and "
                                    "words over 200 characters never occur in its arguments\n");
                    return 2;
                }
        snprintf(line, sizeof(line), "limits set %s %s %s%s%s", args[1], args[2], args[3],
                 n == 6 ? " for " : "", n == 6 ? args[5] : "");
    } else if (show || reset || unset) {
        /* One line to the daemon: a blank or control character cannot be in a rule name
         * or key value anyway. */
        for (int k = 1; k < 3; k++)
            for (const char *p = args[k]; *p; p++)
                if ((unsigned char)*p <= ' ' || *p == 0x7f) {
                    fprintf(stderr,
                            "postsurge: limits: \"%s\": blanks and control characters "
                            "never occur in a rule name or key value (write %%XX)\n",
                            k == 1 ? "RULE" : "VALUE");
                    return 2;
                }
        if (strlen(args[1]) > 64 || strlen(args[2]) > 200) {
            fprintf(stderr, "postsurge: limits: RULE or VALUE too long\n");
            return 2;
        }
        snprintf(line, sizeof(line), "limits %s %s %s", args[0], args[1], args[2]);
    } else if (top) {
        if (n == 2 && (strlen(args[1]) > 64 || strpbrk(args[1], " \t\r\n") != NULL)) {
            fprintf(stderr, "postsurge: limits top: bad RULE\n");
            return 2;
        }
        snprintf(line, sizeof(line), "limits top%s%s", n == 2 ? " " : "", n == 2 ? args[1] : "");
    } else {
        snprintf(line, sizeof(line), "limits list");
    }
    json_t *o = cli_ask(cli, line, "limits");
    if (!o)
        return 1;
    if (as_json) {
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
        if (s)
            printf("%s\n", s);
        free(s);
    } else if (list) {
        print_list(o);
    } else if (top) {
        json_t *keys = json_object_get(o, "keys");
        if (json_array_size(keys) == 0)
            printf("no key refused in the last hour on this node\n");
        for (size_t i = 0; i < json_array_size(keys); i++) {
            json_t *k = json_array_get(keys, i);
            printf("%8" PRId64 "  %s %s\n",
                   (int64_t)json_integer_value(json_object_get(k, "refusals")), jstr(k, "rule"),
                   jstr(k, "value"));
        }
    } else if (reset) {
        printf("rule %s, key value %s: counter reset (%s store)\n", jstr(o, "rule"),
               jstr(o, "value"), jstr(o, "store"));
    } else if (set) {
        printf("rule %s, key value %s: run-time override set (%s store):\n", jstr(o, "rule"),
               jstr(o, "value"), jstr(o, "store"));
        print_override(o);
    } else if (unset) {
        printf("rule %s, key value %s: run-time override removed (%s store)\n", jstr(o, "rule"),
               jstr(o, "value"), jstr(o, "store"));
    } else {
        print_show(o);
    }
    json_decref(o);
    return 0;
}
