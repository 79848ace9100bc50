/* cmd_top: `postsurge top`, a live terminal view of the daemon's /status (http_listen):
 * every node with stress, saturation and state, this node's requests and refusals per
 * second by rule, the latest refusals and events. On a terminal it redraws every second
 * and quits on `q` (or Ctrl-C); otherwise it prints one plain snapshot. Text from outside
 * (node names, event texts, refused keys) is printed with control characters replaced,
 * so nothing it contains reaches the terminal as an escape sequence. */
#include "cmd.h"

#include "httpclient.h"

#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "util/jsonget.h"

#define TOP_EVENTS 8

/* s with every byte below 0x20 and DEL shown as '?', cut to width columns (bytes). */
static void put_text(const char *s, int width)
{
    for (int i = 0; s && s[i] && (width < 0 || i < width); i++) {
        unsigned char c = (unsigned char)s[i];
        putchar(c < 0x20 || c == 0x7f ? '?' : c);
    }
}

static void put_padded(const char *s, int width)
{
    int n = (int)strlen(s);
    put_text(s, width);
    for (int i = n; i < width; i++)
        putchar(' ');
}

static void put_clock(json_int_t ms, bool date)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    char out[32] = "-";
    if (ms > 0 && gmtime_r(&t, &tm))
        strftime(out, sizeof(out), date ? "%Y-%m-%d %H:%M:%S" : "%H:%M:%S", &tm);
    fputs(out, stdout);
}

struct ev {
    json_int_t time;
    const char *node, *kind, *text;
};

static int ev_newest_first(const void *a, const void *b)
{
    const struct ev *x = a, *y = b;
    return x->time < y->time ? 1 : x->time > y->time ? -1 : 0;
}

static void render(json_t *st, bool tty)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    json_t *nodes = json_object_get(st, "nodes"), *n, *v;
    size_t i, k;

    if (tty)
        fputs("\033[H\033[2J", stdout);
    fputs("postsurge top: node ", stdout);
    put_text(jget_str(st, "node"), 64);
    fputs("  ", stdout);
    put_clock((json_int_t)now.tv_sec * 1000, true);
    printf(" UTC%s\n", tty ? "   (q quits)" : "");
    printf("cluster: %zu node(s), imbalance %s\n\n", json_array_size(nodes),
           json_is_true(json_object_get(st, "imbalance")) ? "YES" : "no");
    printf("%-24s %-6s %5s  %-10s %-19s %s\n", "NODE", "STRESS", "SAT", "STATE", "SINCE (UTC)",
           "OVERRIDES");
    json_array_foreach(nodes, i, n)
    {
        put_padded(jget_str(n, "name"), 24);
        printf(" %-6s %4lld%%  ", json_is_true(json_object_get(n, "stress")) ? "Y" : "N",
               (long long)jget_int(n, "saturation"));
        put_padded(jget_str(n, "state"), 10);
        putchar(' ');
        put_clock(jget_int(n, "since"), true);
        printf(" %zu%s\n", json_array_size(json_object_get(n, "overrides")),
               json_is_true(json_object_get(n, "imbalance")) ? "  imbalance" : "");
    }
    json_t *tr = json_object_get(st, "traffic");
    if (json_is_object(tr)) {
        printf("\ntraffic: %.2f requests/s, %.2f refusals/s (last %.0f s)\n",
               json_real_value(json_object_get(tr, "requests_per_s")),
               json_real_value(json_object_get(tr, "refusals_per_s")),
               json_real_value(json_object_get(tr, "window_s")));
        printf("%-32s %s\n", "RULE", "REFUSALS/S");
        json_array_foreach(json_object_get(tr, "rules"), i, v)
        {
            put_padded(jget_str(v, "name"), 32);
            printf(" %.2f\n", json_real_value(json_object_get(v, "refusals_per_s")));
        }
    } else {
        fputs("\ntraffic: no sample yet\n", stdout);
    }
    fputs("\nlatest refusals:\n", stdout);
    json_array_foreach(json_object_get(json_object_get(st, "limits"), "recent_refusals"), i, v)
    {
        fputs("  ", stdout);
        put_clock(jget_int(v, "time"), false);
        putchar(' ');
        put_padded(jget_str(v, "rule"), 16);
        putchar(' ');
        put_text(jget_str(v, "key"), 80);
        putchar('\n');
    }
    struct ev evs[64];
    size_t nev = 0;
    json_array_foreach(nodes, i, n)
    {
        json_array_foreach(json_object_get(n, "events"), k, v)
        {
            if (nev < sizeof(evs) / sizeof(evs[0]))
                evs[nev++] = (struct ev){jget_int(v, "time"), jget_str(n, "name"),
                                         jget_str(v, "kind"), jget_str(v, "text")};
        }
    }
    qsort(evs, nev, sizeof(evs[0]), ev_newest_first);
    fputs("\nlatest events:\n", stdout);
    for (i = 0; i < nev && i < TOP_EVENTS; i++) {
        fputs("  ", stdout);
        put_clock(evs[i].time, false);
        putchar(' ');
        put_padded(evs[i].node, 12);
        putchar(' ');
        put_padded(evs[i].kind, 20);
        putchar(' ');
        put_text(evs[i].text, 100);
        putchar('\n');
    }
    fflush(stdout);
}

static int fetch(const char *host, const char *port, json_t **out)
{
    int code = 0;
    char *body = NULL;
    int rc = httpclient_get(host, port, "/status", &code, &body);
    if (rc < 0)
        return rc;
    json_error_t err;
    *out = code == 200 ? json_loads(body, 0, &err) : NULL;
    free(body);
    return *out ? 0 : -EPROTO;
}

static volatile sig_atomic_t top_stop;

static void on_signal(int sig)
{
    (void)sig;
    top_stop = 1;
}

int cmd_top(const struct cli *cli, int argc, char **argv)
{
    if (argc > 1) {
        fprintf(stderr, "usage: postsurge [-c FILE] top\n");
        return 2;
    }
    struct config *cfg;
    if (cli_load_config(cli, &cfg) < 0)
        return 1;
    char host[256], port[16];
    if (!httpclient_first_inet(cfg->http_listen, host, sizeof(host), port, sizeof(port))) {
        fprintf(stderr, "postsurge: top reads the daemon's /status: http_listen is off\n");
        config_free(cfg);
        return 1;
    }
    config_free(cfg);
    bool tty = isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
    json_t *st = NULL;
    int rc = fetch(host, port, &st);
    if (!tty) {
        if (rc < 0) {
            fprintf(stderr, "postsurge: %s:%s/status: %s\n", host, port, strerror(-rc));
            return 1;
        }
        render(st, false);
        json_decref(st);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    struct termios saved, raw;
    bool have_termios = tcgetattr(STDIN_FILENO, &saved) == 0;
    if (have_termios) {
        raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fputs("\033[?25l", stdout); /* hide the cursor */
    while (!top_stop) {
        if (rc == 0) {
            render(st, true);
        } else {
            fputs("\033[H\033[2J", stdout);
            printf("postsurge top: %s:%s/status: %s (retrying; q quits)\n", host, port,
                   strerror(-rc));
            fflush(stdout);
        }
        json_decref(st);
        st = NULL;
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        bool quit = false;
        for (;;) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            long left =
                1000 - ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
            if (left <= 0 || top_stop)
                break;
            if (poll(&p, 1, (int)left) > 0) {
                char c;
                ssize_t r = read(STDIN_FILENO, &c, 1);
                if (r == 0 || (r == 1 && (c == 'q' || c == 'Q'))) {
                    quit = true;
                    break;
                }
            }
        }
        if (quit)
            break;
        rc = fetch(host, port, &st);
    }
    json_decref(st);
    fputs("\033[?25h\n", stdout);
    fflush(stdout);
    if (have_termios)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    return 0;
}
