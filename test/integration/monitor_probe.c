/* monitor_probe: a small libuv driver for policyd/postfix/monitor.c, util/tail.c and util/spawn.c,
 * used by test_monitor.py. Prints one JSON object per line on stdout: monitor_probe monitor
 * CONFIG_DIR [--maillog FILE] [--interval MS] [--samples N] one line per sample (services, log
 * counts, scan cost) until N samples or SIGTERM monitor_probe tail FILE [--from-start] [--interval
 * MS]
 *       {"line": ..., "truncated": bool} per line; on SIGTERM {"stats": {...}}
 *   monitor_probe spawn [--timeout MS] [--max-stdout N] [--stream] -- ARGV...
 *       {"exit": N, "signal": N, "timed_out": bool, "out_len": N, ...}
 * Every mode closes all handles and exits 3 if uv_loop_close() fails. */
#include "postfix/monitor.h"
#include "util/spawn.h"
#include "util/tail.h"
#include "util/log.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uv_loop_t loop;
static uv_signal_t sig_term, sig_int;
static struct monitor *mon;
static struct tail *tl;
static long samples_left = -1;
static bool stopping;

static void emit(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (s) {
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(s);
    }
    json_decref(o);
}

static void stop_all(void);

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    stop_all();
}

static uv_timer_t ready_timer;

/* Tells the test when the first poll round is over: from then on, appended lines are
 * new to the tailer (it starts at the end of the file). */
static void on_ready_timer(uv_timer_t *t)
{
    struct tail_stats st;
    if (!tl)
        return;
    tail_get_stats(tl, &st);
    if (st.rounds == 0)
        return;
    emit(json_pack("{s:b}", "started", 1));
    uv_timer_stop(t);
}

static void on_tail_closed(void *arg)
{
    (void)arg;
}

static void on_monitor_closed(void *arg)
{
    (void)arg;
}

static void stop_all(void)
{
    if (stopping)
        return;
    stopping = true;
    if (tl) {
        struct tail_stats st;
        tail_get_stats(tl, &st);
        struct tail_pos pos;
        tail_get_pos(tl, &pos);
        emit(json_pack("{s:{s:I,s:I,s:I,s:I,s:I,s:I,s:b}}", "stats", "lines", (json_int_t)st.lines,
                       "bytes", (json_int_t)st.bytes, "rotations", (json_int_t)st.rotations,
                       "truncations", (json_int_t)st.truncations, "truncated_lines",
                       (json_int_t)st.truncated_lines, "offset", (json_int_t)pos.offset,
                       "file_open", st.file_open));
        tail_close(tl, on_tail_closed, NULL);
        tl = NULL;
        uv_close((uv_handle_t *)&ready_timer, NULL);
    }
    if (mon) {
        monitor_close(mon, on_monitor_closed, NULL);
        mon = NULL;
    }
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
}

static void on_sample(struct monitor *m, const struct monitor_sample *s, void *arg)
{
    (void)m;
    (void)arg;
    json_t *svcs = json_array();
    for (size_t i = 0; i < s->n_services; i++) {
        const struct monitor_service *v = &s->services[i];
        json_array_append_new(
            svcs, json_pack("{s:s,s:b,s:i,s:i,s:i,s:i,s:i,s:b,s:i}", "name", v->name, "pass",
                            v->pass, "port", (int)v->port, "limit", (int)v->limit, "alive",
                            (int)v->alive, "busy", (int)v->busy, "waiting", (int)v->waiting,
                            "waiting_known", v->waiting_known, "saturation",
                            (int)stress_service_saturation(&(struct stress_service_sample){
                                .busy = v->busy, .limit = v->limit, .waiting = v->waiting})));
    }
    struct stress_service_sample ss[MONITOR_MAX_SERVICES];
    struct stress_sample st;
    size_t n = monitor_sample_to_stress(s, ss, MONITOR_MAX_SERVICES, &st);
    const struct monitor_log_counts *l = &s->log;
    json_t *log = json_pack(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:s}", "lines", (int)l->lines, "process_limit",
        (int)l->process_limit, "postscreen_enter", (int)l->postscreen_enter, "postscreen_leave",
        (int)l->postscreen_leave, "ports_busy", (int)l->ports_busy, "limit_exceeded",
        (int)l->limit_exceeded, "anvil_stats", (int)l->anvil_stats, "lost_after_connect",
        (int)l->lost_after_connect, "rejects", (int)l->rejects, "last_process_limit_service",
        l->last_process_limit_service);
    emit(json_pack("{s:I,s:o,s:b,s:b,s:b,s:i,s:o,s:b,s:I,s:I,s:i,s:b}", "now_ms",
                   (json_int_t)s->now_ms, "services", svcs, "limits_known", s->limits_known,
                   "master", s->master_running, "qmgr", s->qmgr_running, "master_pid",
                   s->master_pid, "log", log, "postscreen_stress", s->postscreen_stress, "scan_us",
                   (json_int_t)s->scan_us, "skipped_ticks", (json_int_t)s->skipped_ticks,
                   "stress_services", (int)n, "stress_process_limit_warning",
                   st.process_limit_warning));
    if (samples_left > 0 && --samples_left == 0)
        stop_all();
}

static void on_line(struct tail *t, const char *line, size_t len, bool truncated, void *arg)
{
    (void)t;
    (void)arg;
    emit(json_pack("{s:s%,s:b}", "line", line, len, "truncated", truncated));
}

static void on_spawn_chunk(struct spawn *sp, const char *data, size_t len, void *arg)
{
    size_t *total = arg;
    (void)sp;
    (void)data;
    *total += len;
}

static size_t streamed;

static void on_spawn_done(struct spawn *sp, const struct spawn_result *r, void *arg)
{
    (void)sp;
    (void)arg;
    size_t nl = 0;
    for (size_t i = 0; i < r->out_len; i++)
        nl += r->out[i] == '\n';
    emit(json_pack("{s:i,s:i,s:b,s:b,s:I,s:b,s:I,s:s%,s:I,s:I,s:I}", "exit", r->exit_status,
                   "signal", r->term_signal, "timed_out", r->timed_out, "cancelled", r->cancelled,
                   "out_len", (json_int_t)r->out_len, "out_truncated", r->out_truncated,
                   "out_lines", (json_int_t)nl, "err", r->err,
                   r->err_len > 2000 ? (size_t)2000 : r->err_len, "elapsed_ms",
                   (json_int_t)r->elapsed_ms, "streamed", (json_int_t)streamed, "err_len",
                   (json_int_t)r->err_len));
    stop_all();
}

static int usage(void)
{
    fprintf(stderr,
            "usage: monitor_probe monitor DIR [--maillog F] [--interval MS] "
            "[--samples N] | tail FILE [--from-start] [--interval MS] [--syslog-name NAME] | spawn "
            "[--timeout MS] [--max-stdout N] [--stream] -- ARGV...\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    log_open("monitor_probe", "mail", true, LOG_LVL_DEBUG);
    uv_loop_init(&loop);
    uv_signal_init(&loop, &sig_term);
    uv_signal_init(&loop, &sig_int);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    const char *mode = argv[1];
    int rc = 0;
    if (strcmp(mode, "monitor") == 0) {
        struct monitor_opts o = {.config_dir = argv[2]};
        for (int i = 3; i + 1 < argc; i += 2) {
            if (strcmp(argv[i], "--maillog") == 0)
                o.maillog_file = argv[i + 1];
            else if (strcmp(argv[i], "--interval") == 0)
                o.interval_ms = strtoull(argv[i + 1], NULL, 10);
            else if (strcmp(argv[i], "--samples") == 0)
                samples_left = strtol(argv[i + 1], NULL, 10);
            else
                return usage();
        }
        /* The /proc fallback (test_monitor.py TestMonitorDirectProcFallback). */
        const char *po = getenv("POSTSURGE_MONITOR_PROC_ONLY");
        o.proc_only = po && strcmp(po, "1") == 0;
        mon = monitor_new(&loop, &o, on_sample, NULL);
        if (!mon || monitor_start(mon) != 0)
            return 1;
    } else if (strcmp(mode, "tail") == 0) {
        struct tail_opts o = {.interval_ms = 100, .syslog_name = "postfix"};
        for (int i = 3; i < argc; i++) {
            if (strcmp(argv[i], "--from-start") == 0)
                o.from_start = true;
            else if (strcmp(argv[i], "--interval") == 0 && i + 1 < argc)
                o.interval_ms = strtoull(argv[++i], NULL, 10);
            else if (strcmp(argv[i], "--max-line") == 0 && i + 1 < argc)
                o.max_line = strtoull(argv[++i], NULL, 10);
            else if (strcmp(argv[i], "--syslog-name") == 0 && i + 1 < argc)
                o.syslog_name = argv[++i];
            else
                return usage();
        }
        tl = tail_new(&loop, argv[2], &o, on_line, NULL);
        if (!tl || tail_start(tl) != 0)
            return 1;
        uv_timer_init(&loop, &ready_timer);
        uv_timer_start(&ready_timer, on_ready_timer, 5, 5);
    } else if (strcmp(mode, "spawn") == 0) {
        struct spawn_opts o = {0};
        int i = 2;
        for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
            if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
                o.timeout_ms = strtoull(argv[++i], NULL, 10);
            else if (strcmp(argv[i], "--max-stdout") == 0 && i + 1 < argc)
                o.max_stdout = strtoull(argv[++i], NULL, 10);
            else if (strcmp(argv[i], "--grace") == 0 && i + 1 < argc)
                o.kill_grace_ms = strtoull(argv[++i], NULL, 10);
            else if (strcmp(argv[i], "--stream") == 0)
                o.on_stdout = on_spawn_chunk;
            else
                return usage();
        }
        if (i + 1 >= argc)
            return usage();
        rc = spawn_start(&loop, (const char *const *)&argv[i + 1], &o, on_spawn_done, &streamed,
                         NULL);
        if (rc < 0) {
            emit(json_pack("{s:i,s:s}", "spawn_error", rc, "error", uv_strerror(rc)));
            stop_all();
        }
    } else {
        return usage();
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) {
        fprintf(stderr, "monitor_probe: uv_loop_close failed: handles left open\n");
        return 3;
    }
    return rc < 0 ? 1 : 0;
}
