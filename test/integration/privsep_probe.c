/* privsep_probe: a compromised `serve`, for the privilege-separation tests. Run as
 * root with a config file: it forks the real privileged helper (privsep_init), drops to
 * the config's user exactly as serve does (privsep_drop), then sends each argument, a
 * JSON apply payload, through the real loop-side client (privsep_call) and prints each
 * reply as one JSON line. The helper's own log goes to stderr. */
#define _GNU_SOURCE
#include "config.h"
#include "privsep/privsep.h"
#include "util/log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

static bool replied;

static void on_reply(void *arg, int status, json_t *reply)
{
    (void)arg;
    if (status < 0) {
        printf("{\"status\":%d}\n", status);
    } else {
        char *s = json_dumps(reply, JSON_COMPACT);
        printf("%s\n", s ? s : "null");
        free(s);
    }
    fflush(stdout);
    replied = true;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: privsep_probe CONFIG [APPLY-PAYLOAD ...]\n");
        return 2;
    }
    log_open("postsurge", "mail", true, LOG_LVL_INFO);
    struct config *cfg = NULL;
    struct config_errors errs = {0};
    if (config_load_file(argv[1], &cfg, &errs) < 0) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msg[i]);
        return 2;
    }
    config_errors_clear(&errs);
    char err[512];
    if (privsep_init(cfg, err, sizeof(err)) < 0 || privsep_drop(err, sizeof(err)) < 0) {
        fprintf(stderr, "privsep: %s\n", err);
        return 2;
    }
    printf("{\"euid\":%ld,\"mode\":\"%s\"}\n", (long)geteuid(), privsep_mode_name(privsep_mode()));
    fflush(stdout);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct privsep *p = privsep_client_new(&loop);
    if (!p) {
        fprintf(stderr, "no helper\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        replied = false;
        int rc = privsep_call(p, PRIVMSG_APPLY, argv[i], strlen(argv[i]), on_reply, NULL);
        if (rc < 0) {
            printf("{\"status\":%d}\n", rc);
            continue;
        }
        while (!replied)
            uv_run(&loop, UV_RUN_ONCE);
    }
    privsep_close(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    config_free(cfg);
    return rc == 0 ? 0 : 1;
}
