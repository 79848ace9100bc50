/* offline: `postsurge restore` with no daemon: the restore job on a private loop (the
 * executor, postfix/confedit, in its thread pool). */
#define LOG_COMPONENT "controller"
#include "ctl_internal.h"

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
    /* The restore reads the journal itself (only one root wrote, when run as root). */
    c->offline_rc = -EIO; /* until the restore says otherwise */
    job_start(c, JOB_RESTORE);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = c->offline_rc;
    if (rc == 1) {
        *nothing = true;
        rc = 0;
    }
    controller_free(c);
    uv_loop_close(&loop);
    return rc;
}
