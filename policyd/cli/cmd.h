/* cmd: the subcommands of the postsurge program. main.c parses the global options into a
 * struct cli and dispatches through its command table. serve, check-config, config,
 * version and help live in main.c; the others in cli/ (cmd_stress.c, cmd_report.c),
 * declared here and added to the table with one line. */
#pragma once

#include <jansson.h>

#include "config.h"

#include <stdbool.h>

#define POSTSURGE_DEFAULT_CONFIG "/etc/postsurge/postsurge.cf"

/* Global options, before the command name. */
struct cli {
    const char *config_path; /* -c FILE, or POSTSURGE_DEFAULT_CONFIG */
    bool foreground;         /* -f: log to stderr */
    bool verbose;            /* -v: debug logging */
    bool config_given;       /* -c was given (else the default path, said when missing) */
};

/* A command gets argv starting with its own name (argv[0]) and returns the exit status.
 * Commands may block (they are not the daemon's loop), except inside `serve`. */
struct command {
    const char *name;
    int (*run)(const struct cli *cli, int argc, char **argv);
    const char *args;    /* usage after the name, "[-n] [NAME...]" */
    const char *summary; /* one line for `postsurge help` */
};

/* Loads cli->config_path, prints every problem as "FILE:LINE: message" on stderr,
 * including the server's own checks. Returns 0 with a new config in *out (caller frees),
 * or -errno / -EINVAL. */
int cli_load_config(const struct cli *cli, struct config **out);

int cmd_serve(const struct cli *cli, int argc, char **argv);
int cmd_check_config(const struct cli *cli, int argc, char **argv);
int cmd_config(const struct cli *cli, int argc, char **argv);
int cmd_version(const struct cli *cli, int argc, char **argv);
/* cmd_report.c: `report [--json] [--prometheus FILE] [--quiet] [--no-traffic]`; returns the
 * monitoring-plugin status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. */
int cmd_report(const struct cli *cli, int argc, char **argv);
int cmd_help(const struct cli *cli, int argc, char **argv);
/* cmd_stress.c: the overload controller's commands; they talk to the running daemon over
 * state_directory/control.sock (`restore` works without a daemon too). */
int cmd_status(const struct cli *cli, int argc, char **argv);
int cmd_events(const struct cli *cli, int argc, char **argv);
int cmd_stress(const struct cli *cli, int argc, char **argv);
int cmd_restore(const struct cli *cli, int argc, char **argv);
/* cmd_top.c: `top`, a live view of the daemon's /status (a snapshot when not a tty). */
int cmd_top(const struct cli *cli, int argc, char **argv);
/* cmd_limits.c: `limits list|show` through the control socket. */
int cmd_limits(const struct cli *cli, int argc, char **argv);
/* cmd_stress.c: one command line to the daemon and its JSON answer (caller owns *out);
 * says so on stderr when no daemon answers. Returns 0 or -errno. */
int daemon_ask(const struct config *cfg, const char *line, json_t **out);
/* Loads the configuration, asks the daemon, and returns its answer without "ok"; on a
 * refusal prints "postsurge: WHAT: ERROR" and returns NULL, as on any failure (already
 * said). The caller frees the answer. */
json_t *cli_ask(const struct cli *cli, const char *line, const char *what);
