/* cmd_stress: the CLI side of the overload controller: `postsurge status [--json]`,
 * `events [--since TIME] [--json]`, `stress enter|exit|auto` and `restore`. They talk to
 * the running daemon over its control socket (state_directory/control.sock, one line
 * out, one JSON object back); `restore` without a daemon restores the journal itself.
 * Synchronous: these are commands, not the daemon's loop. */
#define LOG_COMPONENT "cli"
#include "cmd.h"
#include "ctlclient.h"
#include "overload/controller.h"
#include "util/jsonget.h"
#include "util/log.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The daemon's answer through the control socket client; prints why it failed unless no
 * daemon listens (the caller says that). A socket permissions refused has been explained
 * by the client already (who may use it). */
static int daemon_request(const struct config *cfg, const char *line, int timeout_ms, json_t **out)
{
    int rc = ctlclient_request(cfg, line, timeout_ms, out);
    if (rc < 0 && rc != -ENOENT && rc != -ECONNREFUSED && rc != -EACCES && rc != -EPERM)
        fprintf(stderr, "postsurge: control socket: %s\n", strerror(-rc));
    return rc;
}

static void no_daemon(const struct config *cfg, int rc)
{
    fprintf(stderr, "postsurge: no daemon answers on %s/%s (%s); is `postsurge serve` running?\n",
            cfg->state_directory, CONTROLLER_SOCKET_NAME, strerror(-rc));
}

/* daemon_request for a command that needs the daemon: says so when none listens. */
int daemon_ask(const struct config *cfg, const char *line, json_t **out)
{
    int rc = daemon_request(cfg, line, 30000, out);
    if (rc == -ENOENT || rc == -ECONNREFUSED)
        no_daemon(cfg, rc);
    return rc;
}

json_t *cli_ask(const struct cli *cli, const char *line, const char *what)
{
    struct config *cfg;
    if (cli_load_config(cli, &cfg) < 0)
        return NULL;
    json_t *o;
    int rc = daemon_ask(cfg, line, &o);
    config_free(cfg);
    if (rc < 0)
        return NULL;
    if (!json_is_true(json_object_get(o, "ok"))) {
        fprintf(stderr, "postsurge: %s: %s\n", what, jget_str(o, "error"));
        json_decref(o);
        return NULL;
    }
    json_object_del(o, "ok");
    return o;
}

static void fmt_time(int64_t ms, char *buf, size_t size)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void print_node(json_t *nd, const char *self, int64_t now)
{
    const char *name = jget_str(nd, "name");
    bool stress = json_is_true(json_object_get(nd, "stress"));
    int64_t since = json_integer_value(json_object_get(nd, "since"));
    printf("node %s%s: stress %s", name, strcmp(name, self) == 0 ? " (this node)" : "",
           stress ? "YES" : "no");
    if (since > 0)
        printf(" since %" PRId64 "s", (now - since) / 1000);
    printf(", saturation %" PRId64 "%%",
           (int64_t)json_integer_value(json_object_get(nd, "saturation")));
    if (*jget_str(nd, "busiest"))
        printf(" (%s)", jget_str(nd, "busiest"));
    printf(", overrides %s", jget_str(nd, "overrides_state"));
    if (json_is_true(json_object_get(nd, "dry_run")))
        printf(" [dry run]");
    if (json_is_true(json_object_get(nd, "imbalance")))
        printf(" [IMBALANCE]");
    printf("\n");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(nd, "services"), i, v)
    {
        printf("  service %-28s busy %" PRId64 "/%" PRId64 " alive %" PRId64 " waiting %" PRId64
               " saturation %" PRId64 "%%\n",
               jget_str(v, "name"), (int64_t)json_integer_value(json_object_get(v, "busy")),
               (int64_t)json_integer_value(json_object_get(v, "limit")),
               (int64_t)json_integer_value(json_object_get(v, "alive")),
               (int64_t)json_integer_value(json_object_get(v, "waiting")),
               (int64_t)json_integer_value(json_object_get(v, "saturation")));
    }
    json_t *ov = json_object_get(nd, "overrides");
    if (json_array_size(ov)) {
        printf("  overrides in force:");
        json_array_foreach(ov, i, v) printf(" %s", json_string_value(v));
        printf("\n");
    }
    if (*jget_str(nd, "error"))
        printf("  error: %s\n", jget_str(nd, "error"));
    if (*jget_str(nd, "profile_error"))
        printf("  profile: %s\n", jget_str(nd, "profile_error"));
    if (*jget_str(nd, "maillog_syslog_name"))
        printf("  mail log: %s, syslog_name %s\n", jget_str(nd, "maillog"),
               jget_str(nd, "maillog_syslog_name"));
    else if (*jget_str(nd, "maillog"))
        printf("  mail log: %s\n", jget_str(nd, "maillog"));
}

int cmd_status(const struct cli *cli, int argc, char **argv)
{
    bool as_json = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            as_json = true;
        } else {
            fprintf(stderr, "usage: postsurge [-c FILE] status [--json]\n");
            return 2;
        }
    }
    struct config *cfg;
    if (cli_load_config(cli, &cfg) < 0)
        return 1;
    json_t *o;
    int rc = daemon_ask(cfg, "status", &o);
    if (rc < 0) {
        config_free(cfg);
        return 1;
    }
    if (as_json) {
        json_object_del(o, "ok");
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
        if (s)
            printf("%s\n", s);
        free(s);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        size_t i;
        json_t *nd;
        json_array_foreach(json_object_get(o, "nodes"), i, nd)
            print_node(nd, jget_str(o, "node"), now);
        printf("cluster: %zu node(s), %" PRId64 " stressed, store %s\n",
               json_array_size(json_object_get(o, "nodes")),
               (int64_t)json_integer_value(json_object_get(o, "stressed_nodes")),
               jget_str(o, "store"));
        json_t *ss = json_object_get(o, "store_state");
        if (ss && strcmp(jget_str(ss, "state"), "ok") != 0) {
            char when[32] = "?";
            int64_t since = json_integer_value(json_object_get(ss, "since"));
            if (since > 0)
                fmt_time(since, when, sizeof(when));
            printf("store %s: %s since %s (%" PRId64 "s)%s%s\n", jget_str(o, "store"),
                   jget_str(ss, "state"), when, since > 0 ? (now - since) / 1000 : 0,
                   *jget_str(ss, "reason") ? ": " : "", jget_str(ss, "reason"));
        } else if (ss) {
            printf("store %s: ok\n", jget_str(o, "store"));
        }
        if (json_is_true(json_object_get(o, "imbalance")))
            printf("imbalance: %s\n", jget_str(o, "advice"));
    }
    json_decref(o);
    config_free(cfg);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* TIME: a duration ago ("10m", "2h", "30s"), epoch seconds (>= 10^9), or UTC
 * "YYYY-MM-DDTHH:MM:SS[Z]". Returns 0 and *ms (epoch ms). */
static int parse_since(const char *s, int64_t now, int64_t *ms)
{
    struct tm tm = {0};
    char z[3] = "";
    int k = sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%2s", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, z);
    if ((k == 6 || (k == 7 && strcmp(z, "Z") == 0)) && strchr(s, 'T')) {
        tm.tm_year -= 1900;
        tm.tm_mon -= 1;
        *ms = (int64_t)timegm(&tm) * 1000;
        return 0;
    }
    char *e;
    long long v = strtoll(s, &e, 10);
    if (*s && !*e && v >= 1000000000LL) {
        *ms = (int64_t)v * 1000;
        return 0;
    }
    int64_t d;
    if (config_parse_time_ms(s, &d) == 0) {
        *ms = now - d;
        return 0;
    }
    return -EINVAL;
}

int cmd_events(const struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"since", required_argument, NULL, 's'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"max", required_argument, NULL, 'm'},
                                         {NULL, 0, NULL, 0}};
    bool as_json = false;
    const char *since_s = NULL;
    unsigned long max = 1000;
    int opt;
    optind = 0;
    while ((opt = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (opt == 's')
            since_s = optarg;
        else if (opt == 'j')
            as_json = true;
        else if (opt == 'm')
            max = strtoul(optarg, NULL, 10);
        else
            goto usage;
    }
    if (optind != argc)
        goto usage;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, since = 0;
    if (since_s && parse_since(since_s, now, &since) < 0) {
        fprintf(stderr,
                "postsurge: --since %s: expected a duration (10m), epoch seconds or "
                "YYYY-MM-DDTHH:MM:SSZ\n",
                since_s);
        return 2;
    }
    char line[128];
    snprintf(line, sizeof(line), "events %" PRId64 " %lu", since, max ? max : 1000);
    json_t *o = cli_ask(cli, line, "events");
    if (!o)
        return 1;
    json_t *ev = json_object_get(o, "events");
    if (as_json) {
        json_t *w = json_pack("{s:O}", "events", ev);
        char *s = json_dumps(w, JSON_INDENT(2));
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(w);
    } else {
        if (json_array_size(ev) == 0)
            printf("no events%s\n", since_s ? " in that time" : "");
        /* Oldest first, like a log. */
        for (size_t i = json_array_size(ev); i-- > 0;) {
            json_t *e = json_array_get(ev, i);
            char t[32];
            fmt_time(json_integer_value(json_object_get(e, "time")), t, sizeof(t));
            printf("%s %s %s: %s\n", t, jget_str(e, "node"), jget_str(e, "kind"),
                   jget_str(e, "text"));
        }
    }
    json_decref(o);
    return fflush(stdout) == 0 ? 0 : 1;
usage:
    fprintf(stderr, "usage: postsurge [-c FILE] events [--since TIME] [--json] [--max N]\n");
    return 2;
}

int cmd_stress(const struct cli *cli, int argc, char **argv)
{
    if (argc != 2 || (strcmp(argv[1], "enter") != 0 && strcmp(argv[1], "exit") != 0 &&
                      strcmp(argv[1], "auto") != 0)) {
        fprintf(stderr, "usage: postsurge [-c FILE] stress enter|exit|auto\n");
        return 2;
    }
    struct config *cfg;
    if (cli_load_config(cli, &cfg) < 0)
        return 1;
    char line[64];
    snprintf(line, sizeof(line), "stress %s", argv[1]);
    json_t *o;
    int rc = daemon_ask(cfg, line, &o);
    config_free(cfg);
    if (rc < 0)
        return 1;
    int status = 0;
    if (json_is_true(json_object_get(o, "ok"))) {
        printf("stress %s: node is %s (%s)\n", argv[1], jget_str(o, "state"),
               strcmp(jget_str(o, "event"), "none") == 0 ? "no transition" : "transition started");
    } else {
        fprintf(stderr, "postsurge: stress %s: %s\n", argv[1], jget_str(o, "error"));
        status = 1;
    }
    json_decref(o);
    return status;
}

int cmd_restore(const struct cli *cli, int argc, char **argv)
{
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: postsurge [-c FILE] restore\n");
        return 2;
    }
    struct config *cfg;
    if (cli_load_config(cli, &cfg) < 0)
        return 1;
    json_t *o;
    int rc = daemon_request(cfg, "restore", 30000, &o);
    if (rc == -ENOENT || rc == -ECONNREFUSED) {
        /* No daemon: restore here, with the same code the daemon runs. */
        bool nothing;
        rc = controller_restore_offline(cfg, &nothing);
        if (rc == 0)
            printf(nothing ? "nothing to restore\n" : "restored\n");
        config_free(cfg);
        return rc == 0 ? 0 : 1;
    }
    if (rc < 0) {
        config_free(cfg);
        return 1;
    }
    if (!json_is_true(json_object_get(o, "ok"))) {
        /* Refused: a member of the daemon's group only reads. */
        fprintf(stderr, "postsurge: restore: %s\n", jget_str(o, "error"));
        json_decref(o);
        config_free(cfg);
        return 1;
    }
    json_decref(o);
    /* The daemon restores asynchronously: wait until no journal is left. */
    int64_t waited = 0, limit = cfg->command_timeout * 8 + 10000;
    int status = 1;
    while (waited < limit) {
        if (daemon_request(cfg, "status", 30000, &o) < 0)
            break;
        json_t *self = json_array_get(json_object_get(o, "nodes"), 0);
        bool journal = json_is_true(json_object_get(self, "journal"));
        const char *st = jget_str(self, "overrides_state");
        bool busy = strcmp(st, "applying") == 0 || strcmp(st, "restoring") == 0;
        if (!journal && !busy) {
            printf("restored\n");
            status = 0;
            json_decref(o);
            break;
        }
        if (!busy && *jget_str(self, "error") && strcmp(st, "pending-restore") == 0 &&
            waited > 2000) {
            fprintf(stderr, "postsurge: restore: %s\n", jget_str(self, "error"));
            json_decref(o);
            break;
        }
        json_decref(o);
        usleep(200000);
        waited += 200;
    }
    if (status != 0 && waited >= limit)
        fprintf(stderr, "postsurge: restore did not finish in time\n");
    config_free(cfg);
    return status;
}
