/* main: the postsurge program. Parses `postsurge [-c FILE] [-f] [-v] COMMAND [ARGS]` and
 * dispatches through one command table; `serve` runs the daemon's libuv loop in the
 * foreground (for systemd), the other commands are synchronous tools. */
#define LOG_COMPONENT "main"
#include "cli/cmd.h"
#include "overload/controller.h"
#include "server/engine.h"
#include "server/http.h"
#include "util/log.h"
#include "privsep/privsep.h"
#include "server/sdnotify.h"
#include "server/server.h"
#ifdef POSTSURGE_TESTING
#include "server/testing.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#ifndef POSTSURGE_VERSION
#define POSTSURGE_VERSION "unknown"
#endif

/* Every subcommand: add one line here (and declare it in cmd.h). */
static const struct command commands[] = {
    {"serve", cmd_serve, "", "run the policy service in the foreground"},
    {"check-config", cmd_check_config, "", "validate the configuration file"},
    {"config", cmd_config, "[-n|-d] [-h] [NAME...]",
     "print settings like postconf (-n non-defaults, -d defaults, -h values)"},
    {"report", cmd_report, "[--json] [--prometheus FILE] [--quiet] [--no-traffic]",
     "health report for cron and monitoring (exit 0-3)"},
    {"status", cmd_status, "[--json]", "stress state of this node and the cluster"},
    {"top", cmd_top, "", "live view of the cluster, traffic and events (q quits)"},
    {"events", cmd_events, "[--since TIME] [--json] [--max N]",
     "the event log (stress, overrides)"},
    {"stress", cmd_stress, "enter|exit|auto", "force stress on or off in the daemon"},
    {"restore", cmd_restore, "", "undo the stress overrides from the journal"},
    {"limits", cmd_limits, "list|top|show|reset|set|unset ... [--json]",
     "the rate-limit rules; read or reset one key's counter; set or unset a run-time "
     "override for the cluster"},
    {"version", cmd_version, "", "print the version"},
    {"help", cmd_help, "[COMMAND]", "this text, or one command's usage"},
};

#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *out)
{
    fprintf(out, "usage: postsurge [-c FILE] [-f] [-v] COMMAND [ARGS]\n"
                 "       postsurge --help | --version | help COMMAND | COMMAND --help\n"
                 "  -c FILE  configuration file (default " POSTSURGE_DEFAULT_CONFIG ")\n"
                 "  -f       foreground: log to stderr\n"
                 "  -v       verbose: log at debug level\n"
                 "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char head[64];
        snprintf(head, sizeof(head), "%s %s", commands[i].name, commands[i].args);
        if (strlen(head) > 28)
            fprintf(out, "  %s\n  %-28s %s\n", head, "", commands[i].summary);
        else
            fprintf(out, "  %-28s %s\n", head, commands[i].summary);
    }
}

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (strcmp(name, commands[i].name) == 0)
            return &commands[i];
    return NULL;
}

/* One command's usage, for `help COMMAND` and `COMMAND --help`. */
static void command_usage(FILE *out, const struct command *c)
{
    fprintf(out, "usage: postsurge [-c FILE] [-f] [-v] %s%s%s\n  %s\n", c->name,
            c->args[0] ? " " : "", c->args, c->summary);
    if (strcmp(c->name, "config") == 0)
        fprintf(out, "  -n       only settings the file sets or that differ from the default\n"
                     "  -d       the built-in defaults (no file is read)\n"
                     "  -h       values only, without \"name = \"\n"
                     "  NAME...  only these settings\n");
}

/* Reads a whole file (CLI only: synchronous). Returns 0 or -errno. */
static int read_file(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *p = NULL;
    size_t n = 0, cap = 0;

    if (!f)
        return -errno;
    for (;;) {
        if (cap - n < 4096) {
            char *q = realloc(p, cap ? cap * 2 : 8192);
            if (!q) {
                free(p);
                fclose(f);
                return -ENOMEM;
            }
            p = q;
            cap = cap ? cap * 2 : 8192;
        }
        size_t r = fread(p + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    int err = ferror(f) ? -EIO : 0;
    fclose(f);
    if (err) {
        free(p);
        return err;
    }
    *buf = p;
    *len = n;
    return 0;
}

int cli_load_config(const struct cli *cli, struct config **out)
{
    struct config_errors errs = {0};
    struct config *cfg = NULL;
    char *buf = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    rc = read_file(cli->config_path, &buf, &len);
    if (rc < 0) {
        fprintf(stderr, "%s:0: cannot read: %s\n", cli->config_path, strerror(-rc));
        if (rc == -ENOENT && !cli->config_given)
            fprintf(stderr,
                    "postsurge: no configuration: create %s (the commented example is "
                    "postsurge.cf in the examples directory of postsurge's documentation, "
                    "e.g. /usr/share/doc/postsurge/examples/), or name another file with "
                    "-c FILE\n",
                    cli->config_path);
        return rc;
    }
    /* Every problem in one run: a file with errors still gives a config (bad settings at
     * their defaults), so the listener and rule checks below report theirs too. */
    rc = config_parse_buffer_all(cli->config_path, buf, len, &cfg, &errs);
    if (cfg) {
        int n = server_check_config(cfg, cli->config_path, buf, len, &errs);
        if (n >= 0) {
            /* Rate-limit rules too, so check-config and start-up refuse what SIGHUP would. */
            int m = engine_check_config(cfg, &errs);
            n = m < 0 ? m : n + m;
        }
        if (n != 0 || rc < 0) {
            config_free(cfg);
            cfg = NULL;
            if (rc == 0)
                rc = n < 0 ? n : -EINVAL;
        }
    }
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.msg[i]);
    if (rc < 0 && errs.n == 0)
        fprintf(stderr, "%s:0: %s\n", cli->config_path, strerror(-rc));
    config_errors_clear(&errs);
    free(buf);
    *out = cfg;
    return rc;
}

int cmd_check_config(const struct cli *cli, int argc, char **argv)
{
    struct config *cfg;

    if (argc > 1) {
        fprintf(stderr, "usage: postsurge [-c FILE] check-config\n");
        return 2;
    }
    if (cli_load_config(cli, &cfg) < 0)
        return 1;
    config_free(cfg);
    printf("ok\n");
    return 0;
}

int cmd_config(const struct cli *cli, int argc, char **argv)
{
    struct config *cfg;
    bool non_default = false, defaults = false, value_only = false;
    int opt, status = 0;

    /* --reference=man|markdown: the settings table for postsurge.cf(5) and the README. */
    static const struct option longopts[] = {{"reference", required_argument, NULL, 'R'},
                                             {NULL, 0, NULL, 0}};
    const char *reference = NULL;

    optind = 0; /* glibc: restart option parsing for the subcommand's argv */
    while ((opt = getopt_long(argc, argv, "+ndh", longopts, NULL)) != -1) {
        if (opt == 'n') {
            non_default = true;
        } else if (opt == 'd') {
            defaults = true;
        } else if (opt == 'h') {
            value_only = true;
        } else if (opt == 'R' && (!strcmp(optarg, "man") || !strcmp(optarg, "markdown"))) {
            reference = optarg;
        } else {
            fprintf(stderr, "usage: postsurge [-c FILE] config [-n|-d] [-h] [NAME...]\n"
                            "       postsurge config --reference=man|markdown\n");
            return 2;
        }
    }
    if (reference) {
        int rc =
            !strcmp(reference, "man") ? config_write_man(stdout) : config_write_reference(stdout);
        return rc < 0 || fflush(stdout) != 0 ? 1 : 0;
    }
    if (non_default && defaults) {
        fprintf(stderr, "postsurge: config: -n and -d exclude each other\n");
        return 2;
    }
    if (value_only && optind == argc) {
        fprintf(stderr, "postsurge: config -h: name the settings (config -h NAME...)\n");
        return 2;
    }
    if (defaults) {
        /* postconf -d: the built-in values; no file needed. */
        cfg = config_new_defaults();
        if (!cfg) {
            fprintf(stderr, "postsurge: out of memory\n");
            return 1;
        }
    } else if (cli_load_config(cli, &cfg) < 0) {
        return 1;
    }
    if (optind == argc) {
        if (config_print(cfg, stdout, non_default) < 0)
            status = 1;
    }
    for (int i = optind; i < argc; i++) {
        int rc = value_only ? config_print_value(cfg, stdout, argv[i])
                            : config_print_one(cfg, stdout, argv[i]);
        if (rc < 0) {
            fprintf(stderr, "postsurge: warning: %s: unknown parameter\n", argv[i]);
            status = 1;
        }
    }
    config_free(cfg);
    if (fflush(stdout) != 0)
        status = 1;
    return status;
}

int cmd_version(const struct cli *cli, int argc, char **argv)
{
    printf("postsurge %s (libuv %s)\n", POSTSURGE_VERSION, uv_version_string());
    return 0;
}

int cmd_help(const struct cli *cli, int argc, char **argv)
{
    if (argc > 2) {
        fprintf(stderr, "usage: postsurge help [COMMAND]\n");
        return 2;
    }
    if (argc == 2) {
        const struct command *c = find_command(argv[1]);
        if (!c) {
            fprintf(stderr, "postsurge: unknown command \"%s\"\n", argv[1]);
            usage(stderr);
            return 2;
        }
        command_usage(stdout, c);
        return 0;
    }
    usage(stdout);
    return 0;
}

/* A host (or a developer's `make run`) without Postfix: one clear line and no monitor,
 * instead of a postconf failure and a missing log file warned about every poll. */
static void serve_check_postfix(struct config *cfg)
{
    char path[4096];
    if (!cfg->monitor)
        return;
    snprintf(path, sizeof(path), "%s/main.cf", cfg->postfix_config_directory);
    if (access(path, F_OK) == 0)
        return;
    log_info("no Postfix found (%s: %s): monitoring is off; the policy service runs", path,
             strerror(errno));
    cfg->monitor = false;
}

static void walk_cb(uv_handle_t *h, void *arg)
{
    log_error("handle still open at exit: %s%s", uv_handle_type_name(h->type),
              uv_is_closing(h) ? " (closing)" : "");
}

int cmd_serve(const struct cli *cli, int argc, char **argv)
{
    struct config *cfg;
    uv_loop_t loop;
    int rc;

    if (argc > 1) {
        fprintf(stderr, "usage: postsurge [-c FILE] [-f] [-v] serve\n");
        return 2;
    }
    if (cli_load_config(cli, &cfg) < 0)
        return 1;
    if (log_configure(cfg, cli->foreground, cli->verbose) < 0) {
        fprintf(stderr, "%s: bad log settings\n", cli->config_path);
        config_free(cfg);
        return 1;
    }
    sdnotify_init(); /* before any thread: it edits the environment */
    serve_check_postfix(cfg);
    char err[256];
    /* As root: the privileged helper is forked here, before the loop, threads or any
     * socket exist, so it holds nothing the network side opened. */
    rc = privsep_init(cfg, err, sizeof(err));
    if (rc < 0)
        die("%s", err);
    rc = uv_loop_init(&loop);
    if (rc < 0)
        die("uv_loop_init: %s", uv_strerror(rc));
    struct server *srv = server_new(&loop, cfg, cli->config_path);
    if (!srv)
        die("out of memory");
#ifdef POSTSURGE_TESTING
    testing_install(srv);
#endif
    if (sdnotify_attach(srv) < 0)
        die("sdnotify: no server hook slot");
    srv->foreground = cli->foreground;
    srv->verbose = cli->verbose;
    struct engine *engine = NULL;
    rc = engine_new(srv, &engine, err, sizeof(err));
    if (rc < 0)
        die("rate limits: %s", err[0] ? err : strerror(-rc));
    if (engine_metrics_register(srv, engine) < 0)
        die("rate limits: cannot register the metrics (out of memory)");
    struct controller *controller = NULL;
    rc = controller_new(srv, engine, &controller, err, sizeof(err));
    if (rc < 0)
        die("controller: %s", err[0] ? err : strerror(-rc));
    int start_rc = server_start(srv);
    if (start_rc >= 0)
        start_rc = http_start(srv);
    /* Every listening socket is bound: root is not needed any more (the control socket
     * in state_directory is the unprivileged user's). */
    if (privsep_drop(err, sizeof(err)) < 0)
        die("%s", err);
    /* After the engine installed its decider: the controller's goes in front of it. */
    if (start_rc >= 0)
        start_rc = controller_start(controller);
    if (start_rc < 0)
        server_stop(srv);
    else
        log_info("postsurge %s started (pid %ld)", POSTSURGE_VERSION, (long)getpid());
    /* READY=1 for systemd: keep this last before uv_run, once every listener is up. */
    if (start_rc >= 0)
        sdnotify_serve(srv);
    uv_run(&loop, UV_RUN_DEFAULT);
    /* The controller first: it unregisters its callbacks from the engine. */
    controller_free(controller);
    engine_free(engine);
    http_free(srv);
    server_free(srv);
    rc = uv_loop_close(&loop);
    if (rc < 0) {
        uv_walk(&loop, walk_cb, NULL);
        log_error("event loop not empty at exit: %s", uv_strerror(rc));
        return 1;
    }
    return start_rc < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct cli cli = {POSTSURGE_DEFAULT_CONFIG, false, false, false};
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'}, {"version", no_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    int opt;

    while ((opt = getopt_long(argc, argv, "+c:fvh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            cli.config_path = optarg;
            cli.config_given = true;
            break;
        case 'V':
            return cmd_version(&cli, 1, argv);
        case 'f':
            cli.foreground = true;
            break;
        case 'v':
            cli.verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind == argc) {
        usage(stderr);
        return 2;
    }
    /* Until serve opens logging, messages go to stderr; -v already counts. */
    log_open("postsurge", "mail", true, cli.verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO);
    const struct command *c = find_command(argv[optind]);
    if (c) {
        /* `COMMAND --help` anywhere before a "--": the command's usage, exit 0. */
        for (int i = optind + 1; i < argc && strcmp(argv[i], "--") != 0; i++)
            if (strcmp(argv[i], "--help") == 0) {
                command_usage(stdout, c);
                return 0;
            }
        return c->run(&cli, argc - optind, argv + optind);
    }
    fprintf(stderr, "postsurge: unknown command \"%s\"\n", argv[optind]);
    usage(stderr);
    return 2;
}
