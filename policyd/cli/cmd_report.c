/* cmd_report: `postsurge report`, the health report for cron and monitoring systems.
 * Gathers what it can see (the daemon's /status with the cluster's nodes and events, the
 * local Postfix processes, `postqueue -j` streamed through lib/queue, the mail log since
 * the last run through report_traffic), compares the figures with their baselines, turns
 * thresholds into findings (lib/report) and prints text, JSON or a Prometheus file. Its
 * own state (log position, baselines, last run) is report-state.json in state_directory.
 * Synchronous: a CLI command, not the daemon's loop. */
#define LOG_COMPONENT "report"

#include "cmd.h"
#include "ctlclient.h"
#include "httpclient.h"
#include "procs.h"
#include "run.h"
#include "overload/controller.h"
#include "util/fsutil.h"
#include "util/journal.h"
#include "util/log.h"
#include "report_store.h"
#include "report_traffic.h"
#include "util/spawn.h"

#include "baseline.h"
#include "queue.h"
#include "report.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define STATE_FILE "report-state.json"
#define LOCK_FILE "report.lock"
#define STATE_MAX_BYTES (16 << 20)
#define STATUS_TIMEOUT_MS 3000
#define POSTCONF_TIMEOUT_MS 30000
/* Clients handed to the report, by connections and by rejects each. */
#define REPORT_CLIENTS 1000
/* Room for store_key_prefix + "report:baseline:" + the node name. */
#define STORE_KEY_MAX 1024

struct report_opts {
    bool json, quiet, no_traffic;
    const char *prometheus;
};

/* ---- the daemon's control socket (state_directory/control.sock) ---- */

/* Sends line ("status", "events SINCE_MS MAX") to the daemon and reads its one JSON
 * object within STATUS_TIMEOUT_MS. Returns 0 with *out (new) when the daemon answered
 * {"ok": true, ...}, -EPROTO for any other answer, or the client's negative errno. */
static int daemon_get(const struct config *cfg, const char *line, json_t **out)
{
    int rc = ctlclient_request(cfg, line, STATUS_TIMEOUT_MS, out);
    if (rc == 0 && !json_is_true(json_object_get(*out, "ok"))) {
        json_decref(*out);
        *out = NULL;
        rc = -EPROTO;
    }
    return rc;
}

/* ---- nodes from the daemon's status ---- */

/* The node objects are those overload/status.c builds (ctl_status_json) and node.c publishes:
 * {"name", "stress": bool, "state": "normal"|"stressed", "saturation": int,
 * "services": [{"name", "busy", "limit", "waiting", ...}], "master_running": bool,
 * "qmgr_running": bool, "imbalance": bool (status only), ...}; events are node.c's
 * {"time": Unix ms, "node", "kind", "text", ...}. A member of the wrong type counts as
 * absent (unknown), never as a guess. */

static int64_t int_of(const json_t *v, int64_t dflt)
{
    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static int bool_of(const json_t *v)
{
    return json_is_boolean(v) ? json_is_true(v) : -1;
}

struct node_build {
    struct report_node_info info;
    struct report_service svc[64];
    struct report_event ev[50];
};

/* Fills nb from one node object (borrowed strings stay valid while o and events live).
 * events (may be NULL) is the cluster's event log, newest first: those of this node at or
 * after since_ms count. */
static void build_node(const json_t *o, const json_t *events, const char *fallback_name,
                       int64_t since_ms, struct node_build *nb)
{
    memset(nb, 0, sizeof(*nb));
    const json_t *nm = json_object_get(o, "name");
    nb->info.name = json_is_string(nm) ? json_string_value(nm) : fallback_name;
    nb->info.daemon_up = 1; /* it published a status */
    nb->info.stressed = bool_of(json_object_get(o, "stress"));
    const json_t *state = json_object_get(o, "state");
    if (nb->info.stressed < 0 && json_is_string(state))
        nb->info.stressed = !strcmp(json_string_value(state), "stressed") ? 1
                            : !strcmp(json_string_value(state), "normal") ? 0
                                                                          : -1;
    int64_t sat = int_of(json_object_get(o, "saturation"), -1);
    nb->info.saturation = sat >= 0 && sat <= 1000 ? (int)sat : -1;
    nb->info.master_up = bool_of(json_object_get(o, "master_running"));
    nb->info.qmgr_up = bool_of(json_object_get(o, "qmgr_running"));

    size_t i;
    json_t *s;
    int busiest = -1;
    json_array_foreach(json_object_get(o, "services"), i, s)
    {
        const json_t *sn = json_object_get(s, "name");
        if (nb->info.n_services == 64 || !json_is_string(sn))
            continue;
        struct report_service *rs = &nb->svc[nb->info.n_services++];
        rs->name = json_string_value(sn);
        rs->busy = int_of(json_object_get(s, "busy"), -1);
        rs->limit = int_of(json_object_get(s, "limit"), -1);
        rs->waiting = int_of(json_object_get(s, "waiting"), -1);
        if (rs->busy >= 0 && rs->limit > 0 && (int)(rs->busy * 100 / rs->limit) > busiest)
            busiest = (int)(rs->busy * 100 / rs->limit);
    }
    nb->info.services = nb->svc;
    if (nb->info.saturation < 0)
        nb->info.saturation = busiest;

    /* Every episode counts; the newest 50 events are listed, oldest first. */
    json_array_foreach(events, i, s)
    {
        const json_t *t = json_object_get(s, "time"), *en = json_object_get(s, "node"),
                     *k = json_object_get(s, "kind"), *tx = json_object_get(s, "text");
        if (!json_is_integer(t) || !json_is_string(k) || !json_is_string(en) ||
            json_integer_value(t) < since_ms || strcmp(json_string_value(en), nb->info.name))
            continue;
        const char *kind = json_string_value(k);
        if (!strcmp(kind, "stress-enter"))
            nb->info.stress_episodes++;
        else if (!strcmp(kind, "overrides-applied"))
            nb->info.overrides++;
        if (nb->info.n_events < 50)
            nb->ev[nb->info.n_events++] =
                (struct report_event){json_integer_value(t) / 1000, kind,
                                      json_is_string(tx) ? json_string_value(tx) : NULL};
    }
    for (size_t a = 0, b = nb->info.n_events; b > a + 1; a++, b--) {
        struct report_event tmp = nb->ev[a];
        nb->ev[a] = nb->ev[b - 1];
        nb->ev[b - 1] = tmp;
    }
    nb->info.events = nb->ev;
}

/* The limit-hit events of the event log (newest first) at or after since_ms. */
static int add_limit_hits(struct report *r, const json_t *events, int64_t since_ms)
{
    size_t i;
    const json_t *s;
    json_array_foreach(events, i, s)
    {
        const json_t *t = json_object_get(s, "time"), *k = json_object_get(s, "kind");
        if (!json_is_integer(t) || json_integer_value(t) < since_ms || !json_is_string(k) ||
            strcmp(json_string_value(k), "limit-hit") != 0)
            continue;
        struct report_limit_hit h = {
            .node = json_string_value(json_object_get(s, "node")),
            .rule = json_string_value(json_object_get(s, "rule")),
            .key_spec = json_string_value(json_object_get(s, "key_spec")),
            .value = json_string_value(json_object_get(s, "value")),
            .client = json_string_value(json_object_get(s, "client")),
            .limit = json_integer_value(json_object_get(s, "limit")),
            .count = json_integer_value(json_object_get(s, "count")),
            .time = json_integer_value(t) / 1000,
        };
        if (report_add_limit_hit(r, &h) == -ENOMEM)
            return -ENOMEM;
    }
    return 0;
}

/* What add_status_nodes saw for the imbalance check. */
struct cluster_view {
    size_t nodes, stressed;
    const char *imbalanced; /* a stressed node whose peers are idle, or NULL */
    int sat_min, sat_max;
};

/* Adds the nodes of status ("nodes": self first, then the peers), or, when it has none
 * (a daemon without the controller), status itself as this node. The local view of
 * master/qmgr wins for this node. events: see build_node. idle_below: the saturation
 * under which a peer counts as idle (stress_exit_threshold). */
static int add_status_nodes(struct report *r, const json_t *st, const json_t *events,
                            const char *self, int64_t since_ms, int daemon_up, int master_up,
                            int qmgr_up, int idle_below, bool *self_added, struct cluster_view *cv)
{
    const json_t *nodes = json_object_get(st, "nodes");
    struct node_build *nb = malloc(sizeof(*nb));
    int rc = 0;
    if (!nb)
        return -ENOMEM;
    memset(cv, 0, sizeof(*cv));
    cv->sat_min = 101;
    cv->sat_max = -1;
    size_t i;
    json_t *o;
    json_array_foreach(nodes, i, o)
    {
        if (!json_is_object(o))
            continue;
        build_node(o, events, self, since_ms, nb);
        if (strcmp(nb->info.name, self) == 0) {
            if (*self_added)
                continue;
            *self_added = true;
            /* This host's own probes beat a status that may be seconds old. */
            nb->info.daemon_up = daemon_up;
            if (master_up >= 0)
                nb->info.master_up = master_up, nb->info.qmgr_up = qmgr_up;
        }
        if ((rc = report_add_node(r, &nb->info)) < 0)
            break;
        cv->nodes++;
        cv->stressed += nb->info.stressed == 1;
        if (nb->info.saturation >= 0 && nb->info.saturation < cv->sat_min)
            cv->sat_min = nb->info.saturation;
        if (nb->info.saturation > cv->sat_max)
            cv->sat_max = nb->info.saturation;
    }
    /* Imbalance as the daemon judges it (controller.c): one node stressed while every
     * peer is neither stressed nor near the exit threshold points at MX or load-balancer
     * weights. Recomputed here so a view read from the store gets it too. */
    json_array_foreach(nodes, i, o)
    {
        if (cv->nodes < 2 || cv->imbalanced || !json_is_true(json_object_get(o, "stress")) ||
            !json_is_string(json_object_get(o, "name")))
            continue;
        bool idle_peers = true;
        size_t k;
        json_t *p;
        json_array_foreach(nodes, k, p)
        {
            if (k != i && (json_is_true(json_object_get(p, "stress")) ||
                           int_of(json_object_get(p, "saturation"), 0) >= idle_below))
                idle_peers = false;
        }
        if (idle_peers || json_is_true(json_object_get(o, "imbalance")))
            cv->imbalanced = json_string_value(json_object_get(o, "name"));
    }
    if (rc == 0 && !*self_added && !json_is_array(nodes) && json_is_object(st)) {
        build_node(st, events, self, since_ms, nb);
        nb->info.name = self;
        nb->info.daemon_up = daemon_up;
        if (master_up >= 0)
            nb->info.master_up = master_up, nb->info.qmgr_up = qmgr_up;
        *self_added = true;
        rc = report_add_node(r, &nb->info);
    }
    free(nb);
    return rc;
}

/* ---- state ---- */

struct report_state {
    int64_t last_report; /* Unix seconds, 0: never */
    /* Events at or after this (Unix ms) are new: the time the last report that read the
     * event log started reading it. */
    int64_t events_ms;
    struct traffic_pos pos;
    char *journal_cursor; /* owned: where the next read of the systemd journal starts */
    json_t *baseline;     /* owned, may be NULL */
};

static int load_state(const char *path, struct report_state *s)
{
    json_error_t je;
    memset(s, 0, sizeof(*s));
    /* state_directory belongs to the daemon's user and the report may run as root: a
     * symlink, FIFO or hard link planted at this name is not followed, waited on or
     * read. */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == EACCES ? -errno : -EINVAL;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        close(fd);
        return -EINVAL;
    }
    json_t *j = json_loadfd(fd, JSON_REJECT_DUPLICATES, &je);
    close(fd);
    if (!j)
        return -EINVAL;
    s->last_report = int_of(json_object_get(j, "last_report"), 0);
    s->events_ms = int_of(json_object_get(j, "events_ms"), s->last_report * 1000);
    const json_t *m = json_object_get(j, "maillog");
    if (json_is_object(m) && json_is_integer(json_object_get(m, "inode"))) {
        s->pos.valid = true;
        s->pos.dev = (uint64_t)int_of(json_object_get(m, "dev"), 0);
        s->pos.ino = (uint64_t)int_of(json_object_get(m, "inode"), 0);
        s->pos.offset = int_of(json_object_get(m, "offset"), 0);
    }
    const json_t *jc = json_object_get(j, "maillog_journal");
    if (json_is_string(json_object_get(jc, "cursor")))
        s->journal_cursor = strdup(json_string_value(json_object_get(jc, "cursor")));
    s->baseline = json_incref(json_object_get(j, "baseline"));
    json_decref(j);
    return 0;
}

/* Replaces path by what writer puts into a FILE: rendered in memory, then written
 * through util/fsutil (PATH.postsurge-tmp, fsync, rename) with mode, owned by us and
 * group gid. */
static int write_file_atomic(const char *path, mode_t mode, gid_t gid,
                             int (*writer)(FILE *f, void *arg), void *arg)
{
    char *data = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&data, &len);
    if (!f)
        return -errno;
    int rc = writer(f, arg);
    if (fclose(f) != 0 && rc == 0)
        rc = -ENOMEM;
    if (rc == 0) {
        struct stat like = {.st_mode = mode, .st_uid = geteuid(), .st_gid = gid};
        char err[512];
        rc = fsutil_replace(path, data, len, &like, FSUTIL_FRESH_TMP, err, sizeof(err));
    }
    free(data);
    return rc;
}

/* The last result for the daemon's status page: state_directory/report-last.json,
 * written atomically, mode 0640 in the group of state_directory (the daemon's), so the
 * daemon's user reads it and nobody else but us. */
static int write_last_result(const struct config *cfg, const struct report *r)
{
    char path[4096];
    struct stat dir;
    json_t *j = NULL;
    char *data;
    int rc;

    if (stat(cfg->state_directory, &dir) < 0)
        return -errno;
    if ((size_t)snprintf(path, sizeof(path), "%s/report-last.json", cfg->state_directory) >=
        sizeof(path))
        return -ENAMETOOLONG;
    if (report_to_json(r, &j) < 0 || !(data = json_dumps(j, JSON_COMPACT))) {
        json_decref(j);
        return -ENOMEM;
    }
    json_decref(j);
    struct stat like = {.st_mode = 0640, .st_uid = geteuid(), .st_gid = dir.st_gid};
    char err[512];
    rc = fsutil_replace(path, data, strlen(data), &like, FSUTIL_FRESH_TMP, err, sizeof(err));
    free(data);
    return rc;
}

static int write_json_doc(FILE *f, void *arg)
{
    return json_dumpf(arg, f, JSON_COMPACT) == 0 && fputc('\n', f) != EOF ? 0 : -EIO;
}

static int write_prom(FILE *f, void *arg)
{
    return report_write_prometheus(arg, f);
}

/* Saves the state to path, mode 0640 in group gid (state_directory's: the daemon's group
 * reads it, and a read-only report of one of its members starts from it). */
static int save_state(const char *path, const struct report_state *s, struct baseline *b,
                      int64_t now, gid_t gid)
{
    json_t *bj = NULL;
    if (b && baseline_to_json(b, now, &bj) < 0)
        return -ENOMEM;
    json_t *j = json_pack("{s:i,s:I,s:I}", "version", 1, "last_report", (json_int_t)now,
                          "events_ms", (json_int_t)s->events_ms);
    if (j && s->pos.valid)
        json_object_set_new(j, "maillog",
                            json_pack("{s:I,s:I,s:I}", "dev", (json_int_t)s->pos.dev, "inode",
                                      (json_int_t)s->pos.ino, "offset", (json_int_t)s->pos.offset));
    if (j && s->journal_cursor)
        json_object_set_new(j, "maillog_journal", json_pack("{s:s}", "cursor", s->journal_cursor));
    if (j && bj)
        json_object_set_new(j, "baseline", bj);
    else
        json_decref(bj);
    if (!j)
        return -ENOMEM;
    int rc = write_file_atomic(path, 0640, gid, write_json_doc, j);
    json_decref(j);
    return rc;
}

/* ---- the mail log: a file, or the systemd journal ---- */

/* `postconf -c DIR -xh NAME` (queue_directory, syslog_name), expanded (syslog_name's
 * default is ${multi_instance_name?...}); "" when it fails (why in err). */
static void postconf_value(const struct config *cfg, const char *name, char *out, size_t size,
                           char *err, size_t errlen)
{
    const char *argv[] = {
        cfg->postconf_command, "-c", cfg->postfix_config_directory, "-xh", name, NULL};
    struct run r = {0};
    out[0] = '\0';
    int rc = run_command(argv, POSTCONF_TIMEOUT_MS, &r);
    if (rc < 0) {
        snprintf(err, errlen, "cannot run postconf: %s", uv_strerror(rc));
    } else if (r.exit_status != 0 || !r.out[0]) {
        char why[600];
        run_describe(&r, why, sizeof(why));
        snprintf(err, errlen, "postconf -xh %s failed: %s", name, why);
    } else {
        snprintf(out, size, "%s", r.out);
    }
}

static void journal_to_traffic(struct journal *j, const char *line, size_t len, void *arg)
{
    (void)j;
    (void)traffic_add_line(arg, line, len);
}

/* Traffic since the last report from maillog_file: from the saved file position, or, for
 * `journal`/`journal:DIR` (or a missing file while a journal exists, as serve does),
 * from the saved journal cursor (a first report reads the last 10 minutes), the entries
 * of maillog_syslog_name or else of the instance's syslog_name. */
static int report_read_maillog(const struct config *cfg, struct traffic *tr,
                               struct report_state *st)
{
    const char *f = cfg->maillog_file;
    bool journal = strcmp(f, "journal") == 0 || strncmp(f, "journal:", 8) == 0;
    if (!journal && access(f, F_OK) < 0 && errno == ENOENT && journal_available(NULL))
        journal = true;
    if (!journal)
        return traffic_read_log(tr, f, &st->pos);
    char name[256], why[700] = "";
    snprintf(name, sizeof(name), "%s", cfg->maillog_syslog_name);
    if (!name[0])
        postconf_value(cfg, "syslog_name", name, sizeof(name), why, sizeof(why));
    if (!name[0]) {
        fprintf(stderr, "postsurge: warning: %s; reading the journal entries of postfix\n", why);
        snprintf(name, sizeof(name), "postfix");
    }
    char *next = NULL;
    long n = journal_read_since(strncmp(f, "journal:", 8) == 0 ? f + 8 : NULL, name,
                                st->journal_cursor, 600, journal_to_traffic, tr, &next);
    if (n < 0)
        return (int)n;
    free(st->journal_cursor);
    st->journal_cursor = next;
    return 0;
}

/* ---- the command ---- */

static void usage(FILE *out)
{
    fprintf(out, "usage: postsurge [-c FILE] report [--json] [--prometheus FILE] [--quiet] "
                 "[--no-traffic]\n");
}

static void thresholds_from_config(const struct config *cfg, struct report_thresholds *t)
{
    report_thresholds_default(t);
    t->hold_warning = (uint64_t)cfg->report_hold_warning;
    t->hold_critical = (uint64_t)cfg->report_hold_critical;
    t->deferred_warning = (uint64_t)cfg->report_deferred_warning;
    t->deferred_critical = (uint64_t)cfg->report_deferred_critical;
    t->backlog_warning = (uint64_t)cfg->report_backlog_warning;
    t->backlog_critical = (uint64_t)cfg->report_backlog_critical;
    t->age_warning = cfg->report_queue_age_warning / 1000;
    t->age_critical = cfg->report_queue_age_critical / 1000;
    t->domain_deferred_warning = (uint64_t)cfg->report_domain_deferred_warning;
    t->failure_rate_warning = cfg->report_failure_rate_warning;
    t->failure_rate_critical = cfg->report_failure_rate_critical;
    t->failure_min_messages = (uint64_t)cfg->report_failure_min_messages;
    t->client_reject_warning = (uint64_t)cfg->report_client_reject_warning;
    t->lost_connection_warning = (uint64_t)cfg->report_lost_connection_warning;
    t->auth_failure_warning = (uint64_t)cfg->report_auth_failure_warning;
    t->saturation_warning = (int)cfg->report_saturation_warning;
    t->saturation_critical = (int)cfg->report_saturation_critical;
    t->imbalance_warning = (int)cfg->report_imbalance_warning;
    t->top_domains = (size_t)cfg->report_top_domains;
    t->top_clients = (size_t)cfg->report_top_clients;
    t->top_reasons = (size_t)cfg->report_top_reasons;
}

/* Streams postqueue -j into qs. Returns 0, or -1 with why in err. */
static int read_queue(const struct config *cfg, struct queue_stats *qs, char *err, size_t errlen)
{
    const char *argv[] = {cfg->postqueue_command, "-c", cfg->postfix_config_directory, "-j", NULL};
    struct run r = {.qs = qs};
    int rc = run_command(argv, (uint64_t)cfg->command_timeout, &r);
    if (rc < 0) {
        snprintf(err, errlen, "cannot run %s: %s", cfg->postqueue_command, uv_strerror(rc));
        return -1;
    }
    if (r.feed_rc < 0 || queue_stats_finish(qs) < 0) {
        snprintf(err, errlen, "out of memory reading the queue");
        return -1;
    }
    if (r.exit_status != 0 || r.timed_out || r.term_signal) {
        char why[600];
        run_describe(&r, why, sizeof(why));
        snprintf(err, errlen, "%s -j failed: %s", cfg->postqueue_command, why);
        return -1;
    }
    return 0;
}

static bool quiet_now(const struct config *cfg, const struct report *r, int64_t now,
                      uint64_t backlog, bool have_queue)
{
    struct baseline_quiet q;
    char err[128];
    if (!cfg->report_quiet_windows[0])
        return false;
    if (baseline_quiet_parse(cfg->report_quiet_windows, &q, err, sizeof(err)) < 0) {
        fprintf(stderr, "postsurge: warning: report_quiet_windows: %s\n", err);
        return false;
    }
    time_t t = (time_t)now;
    struct tm tm;
    localtime_r(&t, &tm);
    if (!baseline_quiet_match(&q, tm.tm_hour, tm.tm_min))
        return false;
    /* A backlog over the limit is news even at a noisy hour. */
    return !(have_queue && cfg->report_quiet_backlog_limit > 0 &&
             backlog > (uint64_t)cfg->report_quiet_backlog_limit);
}

static int parse_opts(int argc, char **argv, struct report_opts *o)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},  {"prometheus", required_argument, NULL, 'p'},
        {"quiet", no_argument, NULL, 'q'}, {"no-traffic", no_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},  {NULL, 0, NULL, 0},
    };
    int opt;
    memset(o, 0, sizeof(*o));
    optind = 0;
    while ((opt = getopt_long(argc, argv, "+jp:qnh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'j':
            o->json = true;
            break;
        case 'p':
            o->prometheus = optarg;
            break;
        case 'q':
            o->quiet = true;
            break;
        case 'n':
            o->no_traffic = true;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Holds an exclusive lock on state_directory/report.lock so two reports (cron and an
 * operator) do not both count the same log lines. Returns the fd or -errno. */
static int lock_state(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/" LOCK_FILE, dir);
    /* Not followed if a symlink, not waited on if a FIFO, not used if a hard link: the
     * directory is the daemon user's and this may run as root. */
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == ELOOP ? -EPERM : -errno;
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
        close(fd);
        return -EPERM;
    }
    for (int i = 0; i < 300; i++) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return fd;
        if (errno != EWOULDBLOCK) {
            int e = -errno;
            close(fd);
            return e;
        }
        usleep(100000);
    }
    close(fd);
    return -EWOULDBLOCK;
}

int cmd_report(const struct cli *cli, int argc, char **argv)
{
    struct report_opts o;
    struct config *cfg = NULL;
    struct report *r = NULL;
    struct queue_stats *qs = NULL;
    struct traffic *tr = NULL;
    struct baseline *bl = NULL;
    struct report_state st = {0};
    char host[256], state_path[PATH_MAX], qdir[PATH_MAX], err[1024];
    int lockfd = -1, exit_code = 3, rc;
    json_t *status = NULL;
    struct report_store *redis = NULL;

    rc = parse_opts(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : 3;
    if (cli_load_config(cli, &cfg) < 0) {
        printf("UNKNOWN - cannot load %s\n", cli->config_path);
        return 3;
    }
    int64_t now = (int64_t)time(NULL);
    if (cfg->node_name[0])
        snprintf(host, sizeof(host), "%s", cfg->node_name);
    else if (gethostname(host, sizeof(host)) < 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';

    /* State: position, baselines, last run. Without it the report still runs (it just
     * cannot say what is new), so problems are warnings on stderr. A user that may read
     * state_directory but not write it (a member of the daemon's group) runs read-only:
     * from the saved state, saving nothing, so the next full run still counts from the
     * last full run's position. */
    bool state_ok = true, read_only = false;
    struct stat sdir;
    if (mkdir(cfg->state_directory, 0750) < 0 && errno != EEXIST)
        state_ok = false;
    if (state_ok && stat(cfg->state_directory, &sdir) < 0)
        state_ok = false;
    if (state_ok && access(cfg->state_directory, W_OK) < 0 && (errno == EACCES || errno == EROFS)) {
        read_only = true;
        fprintf(stderr,
                "postsurge: note: state_directory %s is not writable by uid %ld: read-only "
                "report (from the last saved state; the mail log position, baselines and "
                "last result are not saved)\n",
                cfg->state_directory, (long)geteuid());
    }
    if (state_ok && !read_only) {
        lockfd = lock_state(cfg->state_directory);
        if (lockfd < 0) {
            fprintf(stderr, "postsurge: warning: %s/" LOCK_FILE ": %s\n", cfg->state_directory,
                    lockfd == -EPERM ? "not a regular file with one link (a symlink, FIFO or "
                                       "hard link put there?): not used"
                                     : strerror(-lockfd));
            state_ok = false;
        }
    }
    if (!state_ok)
        fprintf(stderr,
                "postsurge: warning: state_directory %s unusable: the mail log is "
                "not read and baselines are not kept\n",
                cfg->state_directory);
    snprintf(state_path, sizeof(state_path), "%s/" STATE_FILE, cfg->state_directory);
    if (state_ok && (rc = load_state(state_path, &st)) == -EINVAL)
        fprintf(stderr, "postsurge: warning: %s is damaged; starting afresh\n", state_path);
    else if (state_ok && rc == -EACCES)
        fprintf(stderr, "postsurge: warning: %s: %s; starting afresh\n", state_path,
                strerror(EACCES));

    r = report_new(now, host);
    if (!r)
        goto oom;

    /* Local Postfix: its queue directory names master.pid. */
    char pcerr[700] = "";
    postconf_value(cfg, "queue_directory", qdir, sizeof(qdir), pcerr, sizeof(pcerr));
    int master_up, qmgr_up;
    procs_postfix(qdir, &master_up, &qmgr_up);

    /* The daemon: /status on http_listen, else (endpoint off or failing) the same
     * cluster view from its control socket, else whether its process runs. */
    char hhost[256], hport[32];
    int daemon_up = -1;
    if (httpclient_first_inet(cfg->http_listen, hhost, sizeof(hhost), hport, sizeof(hport))) {
        char *body = NULL;
        int code = 0;
        rc = httpclient_get(hhost, hport, "/status", &code, &body);
        if (rc == 0) {
            daemon_up = 1;
            if (code == 200)
                status = json_loads(body, 0, NULL);
            free(body);
            if (!json_is_object(status)) {
                json_decref(status);
                status = NULL;
            }
        }
    }
    if (!status && daemon_get(cfg, "status", &status) == 0)
        daemon_up = 1;
    if (daemon_up != 1)
        daemon_up = procs_daemon_running(cli->config_path);
    /* The event log (the cluster's, on a Redis store) is not in /status: the daemon reads
     * it for us from its store. Reading starts now, so the next report takes over here. */
    json_t *events = NULL;
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int64_t events_read_ms = (int64_t)wall.tv_sec * 1000 + wall.tv_nsec / 1000000;
    int64_t events_since = state_ok ? st.events_ms : 0;
    if (daemon_up == 1) {
        json_t *ans = NULL;
        char line[64];
        snprintf(line, sizeof(line), "events %lld 1000", (long long)events_since);
        if (daemon_get(cfg, line, &ans) == 0 && json_is_array(json_object_get(ans, "events")))
            events = json_incref(json_object_get(ans, "events"));
        json_decref(ans);
    }
    bool self_added = false;
    /* With a Redis store the cluster's nodes and events are there too: they fill what
     * the daemon did not give, and stand in for it when the daemon is down. */
    char rkey[STORE_KEY_MAX], rerr[300];
    redis = report_store_open(cfg, rerr, sizeof(rerr));
    if (rerr[0])
        fprintf(stderr, "postsurge: warning: %s: no cluster view; baselines only in %s\n", rerr,
                state_path);
    if (redis && report_store_cluster_view(redis, cfg->store_key_prefix, events_read_ms, &status,
                                           events ? NULL : &events) < 0) {
        json_decref(events);
        goto oom;
    }
    if (events)
        st.events_ms = events_read_ms;
    else if (daemon_up == 1)
        fprintf(stderr,
                "postsurge: warning: cannot read the daemon's event log (%s/%s): "
                "stress episodes and overrides are not counted\n",
                cfg->state_directory, CONTROLLER_SOCKET_NAME);
    struct cluster_view cv = {0};
    rc = status ? add_status_nodes(r, status, events, host, events_since, daemon_up, master_up,
                                   qmgr_up, (int)cfg->stress_exit_threshold, &self_added, &cv)
                : 0;
    if (rc == 0)
        rc = add_limit_hits(r, events, events_since);
    json_decref(events);
    if (rc < 0)
        goto oom;
    /* A stressed node beside idle peers: the daemon's imbalance, unless the saturation
     * gap already makes report_evaluate() say so. */
    if (cv.imbalanced && cfg->report_imbalance_warning > 0 &&
        !(cv.sat_max >= 0 && cv.sat_max - cv.sat_min >= cfg->report_imbalance_warning)) {
        char msg[600];
        snprintf(msg, sizeof(msg), "load imbalance: %s is in stress mode while its %zu %s idle",
                 cv.imbalanced, cv.nodes - 1, cv.nodes == 2 ? "peer is" : "peers are");
        if (report_add_finding(r, REPORT_WARNING, "imbalance", cv.imbalanced, msg,
                               "check MX weights (equal preference for equal nodes) and the "
                               "load balancer") < 0)
            goto oom;
    }
    if (!self_added) {
        struct report_node_info ni = {.name = host,
                                      .daemon_up = daemon_up,
                                      .master_up = master_up,
                                      .qmgr_up = qmgr_up,
                                      .stressed = -1,
                                      .saturation = -1};
        if (report_add_node(r, &ni) < 0)
            goto oom;
    }
    if (pcerr[0] &&
        report_add_finding(r, REPORT_UNKNOWN, "postfix_unavailable", host, pcerr,
                           "check postfix_config_directory and that postconf is in PATH") < 0)
        goto oom;

    /* Queue. */
    struct queue_limits ql = {.now = now};
    qs = queue_stats_new(&ql);
    if (!qs)
        goto oom;
    bool have_queue = read_queue(cfg, qs, err, sizeof(err)) == 0;
    if (have_queue) {
        if (report_set_queue(r, qs, (size_t)cfg->report_top_domains,
                             (size_t)cfg->report_top_reasons) < 0)
            goto oom;
    } else if (report_add_finding(r, REPORT_UNKNOWN, "queue_unavailable", host, err,
                                  "run postqueue -j by hand as this user; a non-root user "
                                  "needs the config directory in alternate_config_directories") <
               0) {
        goto oom;
    }

    /* Traffic since the last report. */
    if (!o.no_traffic && state_ok && cfg->maillog_file[0]) {
        tr = traffic_new();
        if (!tr)
            goto oom;
        const char *own[] = {cfg->limit_action, cfg->attack_action, NULL};
        traffic_set_own_texts(tr, own);
        rc = report_read_maillog(cfg, tr, &st);
        if (rc == -ENOMEM)
            goto oom;
        if (rc < 0) {
            snprintf(err, sizeof(err), "cannot read %s: %s", cfg->maillog_file, strerror(-rc));
            if (report_add_finding(r, REPORT_UNKNOWN, "maillog_unavailable", cfg->maillog_file, err,
                                   "set maillog_file to Postfix's log (postconf "
                                   "maillog_file, or syslog's mail.log), or empty it") < 0)
                goto oom;
        }
        if (traffic_to_report(tr, r, REPORT_CLIENTS) < 0)
            goto oom;
    }

    /* Baselines. */
    struct baseline_params bp;
    baseline_params_default(&bp);
    bp.window = cfg->report_baseline_window / 1000;
    bp.sigma = cfg->report_anomaly_sigma;
    bp.min_samples = (uint32_t)cfg->report_anomaly_min_samples;
    /* With a Redis store the baselines live there too, per node; Redis wins over the
     * state file (another host may have run this node's reports before). */
    snprintf(rkey, sizeof(rkey), "%sreport:baseline:%s", cfg->store_key_prefix, host);
    json_t *rb = redis ? report_store_load(redis, rkey) : NULL;
    if (rb) {
        json_decref(st.baseline);
        st.baseline = rb;
    }
    if (st.baseline && baseline_from_json(st.baseline, &bp, &bl) < 0) {
        fprintf(stderr, "postsurge: warning: %s: bad baseline state; starting afresh\n",
                state_path);
        bl = NULL;
    }
    if (!bl && !(bl = baseline_new(&bp)))
        goto oom;
    uint64_t backlog = 0;
    if (have_queue)
        backlog = queue_stats_totals(qs, QUEUE_INCOMING)->messages +
                  queue_stats_totals(qs, QUEUE_ACTIVE)->messages;
    if (report_apply_baseline(r, bl, quiet_now(cfg, r, now, backlog, have_queue)) < 0)
        goto oom;

    struct report_thresholds th;
    thresholds_from_config(cfg, &th);
    if (report_evaluate(r, &th) < 0)
        goto oom;
    exit_code = report_exit_code(report_status(r));

    if (o.prometheus) {
        rc = write_file_atomic(o.prometheus, 0644, getegid(), write_prom, r);
        if (rc < 0) {
            fprintf(stderr, "postsurge: %s: %s\n", o.prometheus, strerror(-rc));
            exit_code = 3;
        }
    }
    if (o.quiet && report_status(r) == REPORT_OK)
        rc = 0;
    else if (o.json)
        rc = report_write_json(r, stdout);
    else
        rc = report_write_text(r, stdout);
    if (rc < 0 || fflush(stdout) != 0)
        exit_code = 3;

    if (read_only)
        goto out;
    if (redis) {
        /* Kept for the window plus a day. */
        json_t *bj = NULL;
        rc = baseline_to_json(bl, now, &bj);
        if (rc < 0)
            snprintf(rerr, sizeof(rerr), "out of memory");
        else
            rc = report_store_save(redis, rkey, bj, bp.window + 86400, rerr, sizeof(rerr));
        json_decref(bj);
        if (rc < 0)
            fprintf(stderr, "postsurge: warning: cannot save the baselines in Redis: %s\n", rerr);
    }
    if (state_ok && (rc = write_last_result(cfg, r)) < 0)
        fprintf(stderr, "postsurge: warning: cannot save report-last.json in %s: %s\n",
                cfg->state_directory, strerror(-rc));
    if (state_ok) {
        rc = save_state(state_path, &st, bl, now, sdir.st_gid);
        if (rc < 0)
            fprintf(stderr, "postsurge: warning: cannot save %s: %s\n", state_path, strerror(-rc));
    }
    goto out;
oom:
    printf("UNKNOWN - out of memory\n");
    exit_code = 3;
out:
    report_store_free(redis);
    json_decref(status);
    json_decref(st.baseline);
    free(st.journal_cursor);
    baseline_free(bl);
    traffic_free(tr);
    queue_stats_free(qs);
    report_free(r);
    config_free(cfg);
    if (lockfd >= 0)
        close(lockfd);
    return exit_code;
}
