/* procs: what /proc says about the local Postfix (master and qmgr) and a running
 * `postsurge serve`, for the report. */
#include "procs.h"
#include "cmd.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool proc_comm_is(long pid, const char *want)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    if (!fgets(comm, sizeof(comm), f))
        comm[0] = '\0';
    fclose(f);
    comm[strcspn(comm, "\n")] = '\0';
    return strcmp(comm, want) == 0;
}

/* Parent PID from /proc/PID/stat, or -1. */
static long proc_ppid(long pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may hold spaces and parentheses */
    char state;
    long ppid;
    if (!p || sscanf(p + 1, " %c %ld", &state, &ppid) != 2 || state == 'Z')
        return -1;
    return ppid;
}

/* master from queue_directory/pid/master.pid, qmgr among its children. */
void procs_postfix(const char *queue_dir, int *master_up, int *qmgr_up)
{
    char path[PATH_MAX];
    long pid = 0;
    *master_up = *qmgr_up = -1;
    if (!queue_dir || !queue_dir[0])
        return;
    snprintf(path, sizeof(path), "%s/pid/master.pid", queue_dir);
    /* Neither a symlink nor a FIFO is followed or waited on (this may run as root). */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
        char buf[128]; /* master writes the PID right-aligned in 32 columns */
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        buf[n > 0 ? n : 0] = '\0';
        pid = strtol(buf, NULL, 10);
    }
    if (fd >= 0)
        close(fd);
    *master_up = pid > 0 && proc_comm_is(pid, "master") && proc_ppid(pid) >= 0;
    *qmgr_up = 0;
    if (!*master_up)
        return;
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL && !*qmgr_up) {
        char *end;
        long c = strtol(de->d_name, &end, 10);
        if (*end || c <= 0)
            continue;
        if (proc_ppid(c) == pid && proc_comm_is(c, "qmgr"))
            *qmgr_up = 1;
    }
    if (d)
        closedir(d);
}

/* A `postsurge ... serve` process using config_path. */
bool procs_daemon_running(const char *config_path)
{
    char want[PATH_MAX];
    if (!realpath(config_path, want))
        snprintf(want, sizeof(want), "%s", config_path);
    DIR *d = opendir("/proc");
    struct dirent *de;
    bool found = false;
    while (d && !found && (de = readdir(d)) != NULL) {
        char *end, path[64], buf[4096];
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == (long)getpid() || !proc_comm_is(pid, "postsurge"))
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        const char *cfg = POSTSURGE_DEFAULT_CONFIG;
        bool serve = false;
        for (char *a = buf; a < buf + n; a += strlen(a) + 1) {
            if (strcmp(a, "-c") == 0 && a + strlen(a) + 1 < buf + n)
                cfg = a + strlen(a) + 1;
            else if (strncmp(a, "-c", 2) == 0 && a[2])
                cfg = a + 2;
            if (strcmp(a, "serve") == 0)
                serve = true;
        }
        char got[PATH_MAX];
        /* A relative -c is relative to that process's directory. */
        char full[2 * PATH_MAX + 2];
        if (cfg[0] != '/') {
            char cwdlink[64], cwd[PATH_MAX];
            snprintf(cwdlink, sizeof(cwdlink), "/proc/%ld/cwd", pid);
            ssize_t k = readlink(cwdlink, cwd, sizeof(cwd) - 1);
            cwd[k > 0 ? k : 0] = '\0';
            snprintf(full, sizeof(full), "%s/%s", cwd, cfg);
            cfg = full;
        }
        if (!realpath(cfg, got) && snprintf(got, sizeof(got), "%s", cfg) >= (int)sizeof(got))
            continue;
        found = serve && strcmp(got, want) == 0;
    }
    if (d)
        closedir(d);
    return found;
}
