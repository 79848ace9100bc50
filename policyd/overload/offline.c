/* offline: `postsurge restore` with no daemon: the restore job on a private loop. */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

/* ---- offline restore (`postsurge restore` with no daemon) ---- */

static void offline_read_done(uv_work_t *w, int status)
{
    struct job *jb = w->data;
    struct controller *c = jb->c;
    char err[512];
    (void)status;
    c->job = NULL;
    if (jb->work_rc < 0) {
        fprintf(stderr, "postsurge: %s\n", jb->work_err);
        c->offline_rc = jb->work_rc;
    } else if (!jb->journal_found) {
        c->offline_rc = 1; /* nothing */
    } else if (overrides_journal_parse(jb->journal_buf, jb->journal_len, &c->journal, err,
                                       sizeof(err)) < 0) {
        fprintf(stderr, "postsurge: %s is corrupt: %s; nothing changed\n", c->journal_path, err);
        c->offline_rc = -EINVAL;
    } else if (strcmp(c->journal->config_dir, c->config_dir) != 0) {
        fprintf(stderr, "postsurge: %s is for %s, not %s; nothing changed\n", c->journal_path,
                c->journal->config_dir, c->config_dir);
        c->offline_rc = -EINVAL;
    } else {
        job_free(jb);
        job_start(c, JOB_RESTORE);
        return;
    }
    job_free(jb);
}

int controller_restore_offline(const struct config *cfg, bool *nothing)
{
    uv_loop_t loop;
    *nothing = false;
    if (uv_loop_init(&loop) < 0)
        return -ENOMEM;
    struct controller *c = ctl_alloc(&loop, cfg);
    if (!c) {
        uv_loop_close(&loop);
        return -ENOMEM;
    }
    c->offline = true;
    c->init_done = true;
    struct job *jb = calloc(1, sizeof(*jb));
    if (!jb) {
        controller_free(c);
        uv_loop_close(&loop);
        return -ENOMEM;
    }
    jb->c = c;
    jb->kind = JOB_RESTORE;
    jb->wk = WK_READ_JOURNAL;
    jb->work.data = jb;
    c->job = jb;
    uv_queue_work(&loop, &jb->work, job_work, offline_read_done);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = c->offline_rc;
    if (rc == 1) {
        *nothing = true;
        rc = 0;
    } else if (rc == 0 && c->journal) {
        rc = -EIO; /* the restore did not finish */
    }
    controller_free(c);
    uv_loop_close(&loop);
    return rc;
}
