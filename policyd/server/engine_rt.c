/* engine_rt: the run-time overrides of the rate limits (`postsurge limits set|unset`) for
 * every node sharing the store. The request path never reads them from the store: each
 * node keeps a copy (lib/limits_rt.h) that the engine applies like a table entry, and
 * refreshes it every ENGINE_RT_POLL_MS off the request path. With Redis the set is the
 * hash PREFIXoverrides (store.h): a tick reads its version field (HGET) and the whole hash
 * (HGETALL) only when the version changed. With the memory store the set lives in
 * state_directory/ENGINE_RT_FILE, replaced atomically at every change. Expired entries
 * stop applying at the first tick after their time and are removed from the store. */
#define LOG_COMPONENT "limits"
#include "engine_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "limits_rt.h"
#include "util/fsutil.h"

static bool rt_in_redis(const struct engine *e)
{
    return e->store != NULL && strcmp(store_kind(e->store), "memory") != 0;
}

/* Puts rt (taken over) in force on this node. */
static void rt_publish(struct engine *e, struct limits_rt *rt)
{
    limits_rt_free(e->rt);
    e->rt = rt;
    engine_rt_apply(e);
}

void engine_rt_apply(struct engine *e)
{
    limits_engine_set_runtime(e->limits, e->rt);
}

/* A malformed entry found in the store or file: logged once per daemon run, escaped. */
static void rt_log_bad(struct engine *e, const char *where, const char *field)
{
    if (e->rt_logged_bad)
        return;
    e->rt_logged_bad = true;
    char esc[80];
    size_t k = 0;
    for (const char *p = field; *p && k + 5 < sizeof(esc); p++)
        k += (unsigned char)*p > ' ' && *p != 0x7f && *p != '%'
                 ? (size_t)snprintf(esc + k, sizeof(esc) - k, "%c", *p)
                 : (size_t)snprintf(esc + k, sizeof(esc) - k, "%%%02X", (unsigned char)*p);
    esc[k] = '\0';
    log_warn("run-time overrides: %s: malformed entry \"%s\" ignored", where, esc);
}

/* Adds one stored entry to rt unless it is malformed or expired. Returns -E2BIG when rt
 * is full, -ENOMEM, else 0. */
static int rt_add_text(struct engine *e, struct limits_rt *rt, const char *where, const char *field,
                       const char *value, int64_t now)
{
    struct limits_rt_entry en;
    if (limits_rt_parse(field, value, &en) < 0) {
        rt_log_bad(e, where, field);
        return 0;
    }
    if (en.expires_ms > 0 && en.expires_ms <= now)
        return 0;
    int rc = limits_rt_add(rt, &en);
    return rc == -EINVAL ? 0 : rc;
}

/* ---- memory store: the file ---- */

static int rt_file_write(struct engine *e, const struct limits_rt *rt, char *err, size_t errlen)
{
    size_t cap = 128 + limits_rt_count(rt) * (LIMITS_RT_FIELD_MAX + 48), len = 0;
    char *buf = malloc(cap);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    len +=
        (size_t)snprintf(buf, cap, "# postsurge run-time overrides (postsurge limits set|unset)\n");
    for (size_t i = 0; i < limits_rt_count(rt); i++) {
        const struct limits_rt_entry *en = limits_rt_entry(rt, i);
        char f[LIMITS_RT_FIELD_MAX], v[48];
        limits_rt_field(en, f, sizeof(f));
        limits_rt_value(en, v, sizeof(v));
        len += (size_t)snprintf(buf + len, cap - len, "%s\t%s\n", f, v);
    }
    int rc = fsutil_replace(e->rt_path, buf, len, NULL, 0, err, errlen);
    if (rc == 0 && fsutil_fsync_dir_of(e->rt_path) < 0)
        log_warn("run-time overrides: cannot sync the directory of %s", e->rt_path);
    free(buf);
    return rc;
}

/* Reads the file at start-up (small, bounded by LIMITS_RT_MAX lines). */
static void rt_file_load(struct engine *e, int64_t now)
{
    e->rt_file_loaded = true;
    int fd = open(e->rt_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        if (errno != ENOENT)
            log_warn("run-time overrides: %s: %s", e->rt_path, strerror(errno));
        return;
    }
    char *buf = NULL;
    size_t len = 0;
    int rc = fsutil_read_fd(fd, &buf, &len);
    close(fd);
    struct limits_rt *rt = rc == 0 ? limits_rt_new() : NULL;
    for (char *line = buf, *next; rt != NULL && line != NULL && *line; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        char *tab = strrchr(line, '\t');
        if (line[0] == '#' || line[0] == '\0')
            continue;
        if (tab == NULL) {
            rt_log_bad(e, e->rt_path, line);
            continue;
        }
        *tab = '\0';
        rc = rt_add_text(e, rt, e->rt_path, line, tab + 1, now);
        if (rc == -E2BIG) {
            log_warn("run-time overrides: %s: more than %d entries; the rest is ignored",
                     e->rt_path, LIMITS_RT_MAX);
            break;
        }
    }
    free(buf);
    if (rt == NULL) {
        log_error("run-time overrides: cannot read %s", e->rt_path);
        return;
    }
    log_info("run-time overrides: %zu in force from %s", limits_rt_count(rt), e->rt_path);
    rt_publish(e, rt);
}

/* ---- Redis: the hash ---- */

static void rt_on_all(void *arg, int status, const char *const *fields, const char *const *values,
                      size_t n)
{
    struct engine *e = arg;
    e->rt_busy = false;
    if (status < 0 || e->stopping)
        return;
    int64_t now = wall_ms();
    struct limits_rt *rt = limits_rt_new();
    const char *version = "";
    bool full = false;
    for (size_t i = 0; rt != NULL && i < n; i++) {
        if (strcmp(fields[i], STORE_OVERRIDES_VERSION) == 0) {
            version = values[i];
            continue;
        }
        int rc = rt_add_text(e, rt, "store", fields[i], values[i], now);
        full |= rc == -E2BIG;
        if (rc == -ENOMEM) {
            limits_rt_free(rt);
            rt = NULL;
        }
    }
    if (rt == NULL) {
        log_error("run-time overrides: cannot refresh (out of memory); keeping the previous set");
        return;
    }
    if (full)
        log_warn("run-time overrides: the store holds more than %d; the rest is ignored",
                 LIMITS_RT_MAX);
    if (strcmp(version, e->rt_version) != 0 || limits_rt_count(rt) != limits_rt_count(e->rt))
        log_info("run-time overrides: %zu in force (version %.20s)", limits_rt_count(rt), version);
    snprintf(e->rt_version, sizeof(e->rt_version), "%s", version[0] ? version : "0");
    rt_publish(e, rt);
}

static void rt_on_version(void *arg, int status, const char *const *fields,
                          const char *const *values, size_t n)
{
    struct engine *e = arg;
    (void)fields;
    const char *version = n == 1 ? values[0] : "0";
    if (status < 0 || e->stopping || strcmp(version, e->rt_version) == 0 || e->store == NULL) {
        e->rt_busy = false;
        return;
    }
    if (store_overrides_get(e->store, NULL, rt_on_all, e) < 0)
        e->rt_busy = false;
}

static void rt_on_removed(void *arg, int status)
{
    (void)arg;
    if (status < 0)
        log_debug("run-time overrides: removing an expired entry failed (%s); the next tick "
                  "retries",
                  strerror(-status));
}

static void rt_tick(uv_timer_t *t)
{
    struct engine *e = t->data;
    int64_t now = wall_ms();
    /* Without rules there is nothing to override: no Redis traffic. */
    if (e->stopping || e->store == NULL || limits_engine_rule_count(e->limits) == 0)
        return;
    bool redis = rt_in_redis(e);
    if (!redis && !e->rt_file_loaded)
        rt_file_load(e, now);
    if (limits_rt_has_expired(e->rt, now)) {
        for (size_t i = 0; i < limits_rt_count(e->rt); i++) {
            const struct limits_rt_entry *en = limits_rt_entry(e->rt, i);
            if (en->expires_ms == 0 || en->expires_ms > now)
                continue;
            log_info("run-time override of rule %s for %s expired", en->rule, en->value);
            char f[LIMITS_RT_FIELD_MAX];
            /* Every node removes what it sees expired: HDEL is idempotent. */
            if (redis && limits_rt_field(en, f, sizeof(f)) > 0)
                store_overrides_put(e->store, f, NULL, rt_on_removed, NULL);
        }
        struct limits_rt *rt = limits_rt_copy(e->rt, now, NULL, NULL);
        char err[256];
        if (rt != NULL && !redis && rt_file_write(e, rt, err, sizeof(err)) < 0)
            log_warn("run-time overrides: %s", err);
        if (rt != NULL)
            rt_publish(e, rt);
    }
    if (redis && !e->rt_busy) {
        e->rt_busy = store_overrides_get(e->store, STORE_OVERRIDES_VERSION, rt_on_version, e) == 0;
    }
}

void engine_rt_start(struct engine *e)
{
    const char *dir = e->srv->cfg->state_directory;
    size_t dl = strlen(dir);
    e->rt_path = malloc(dl + sizeof(ENGINE_RT_FILE) + 1);
    if (e->rt_path != NULL)
        snprintf(e->rt_path, dl + sizeof(ENGINE_RT_FILE) + 1, "%s/%s", dir, ENGINE_RT_FILE);
    if (e->rt_path == NULL || uv_timer_init(e->srv->loop, &e->rt_timer) < 0) {
        log_error("run-time overrides unavailable (out of memory)");
        return;
    }
    e->rt_timer.data = e;
    e->rt_timer_on = true;
    /* The first tick at once: a restarted node applies the overrides before long. */
    if (!rt_in_redis(e))
        rt_file_load(e, wall_ms());
    uv_timer_start(&e->rt_timer, rt_tick, 0, ENGINE_RT_POLL_MS);
}

void engine_rt_stop(struct engine *e)
{
    if (e->rt_timer_on) {
        uv_close((uv_handle_t *)&e->rt_timer, NULL);
        e->rt_timer_on = false;
    }
}

void engine_rt_free(struct engine *e)
{
    limits_rt_free(e->rt);
    e->rt = NULL;
    free(e->rt_path);
    e->rt_path = NULL;
}

/* ---- set and unset ---- */

struct rt_req {
    struct engine *e;
    engine_reply_fn reply;
    void *arg;
    json_t *o;
    struct limits_rt *rt; /* the set after the change, put in force once Redis took it */
};

static void rt_on_put(void *arg, int status)
{
    struct rt_req *q = arg;
    if (status < 0) {
        json_decref(q->o);
        limits_rt_free(q->rt);
        q->reply(q->arg, json_pack("{s:b,s:s}", "ok", 0, "error", strerror(-status)));
    } else {
        if (!q->e->stopping) {
            rt_publish(q->e, q->rt);
            q->e->rt_version[0] = '\0'; /* the next tick reads the whole set again */
        } else {
            limits_rt_free(q->rt);
        }
        q->reply(q->arg, q->o);
    }
    free(q);
}

/* Makes rt (taken over) the set: writes the change (entry en, or the removal of
 * rule/value when en is NULL) to Redis or the file, then replies o (taken over). */
static void rt_change(struct engine *e, struct limits_rt *rt, const struct limits_rt_entry *en,
                      const char *rule, const char *value, json_t *o, engine_reply_fn reply,
                      void *arg)
{
    char err[256] = "out of memory";
    if (rt == NULL || o == NULL)
        goto fail;
    if (!rt_in_redis(e)) {
        if (e->rt_path == NULL || rt_file_write(e, rt, err, sizeof(err)) < 0)
            goto fail;
        rt_publish(e, rt);
        reply(arg, o);
        return;
    }
    struct limits_rt_entry gone = {0};
    if (en == NULL) {
        snprintf(gone.rule, sizeof(gone.rule), "%s", rule);
        snprintf(gone.value, sizeof(gone.value), "%s", value);
    }
    char f[LIMITS_RT_FIELD_MAX], v[48];
    limits_rt_field(en ? en : &gone, f, sizeof(f));
    if (en)
        limits_rt_value(en, v, sizeof(v));
    struct rt_req *q = calloc(1, sizeof(*q));
    int rc = q ? store_overrides_put(e->store, f, en ? v : NULL, rt_on_put, q) : -ENOMEM;
    if (rc < 0) {
        free(q);
        snprintf(err, sizeof(err), "%s", strerror(-rc));
        goto fail;
    }
    *q = (struct rt_req){e, reply, arg, o, rt};
    return;
fail:
    limits_rt_free(rt);
    json_decref(o);
    reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", err));
}

void engine_rt_set(struct engine *e, const struct limits_rule *r, const char *value, int64_t count,
                   int64_t expires_ms, engine_reply_fn reply, void *arg)
{
    int64_t now = wall_ms();
    struct limits_rt_entry en = {.count = count, .expires_ms = expires_ms};
    snprintf(en.rule, sizeof(en.rule), "%s", r->name);
    snprintf(en.value, sizeof(en.value), "%s", value);
    struct limits_rt *rt = limits_rt_copy(e->rt, now, NULL, NULL);
    int rc = rt ? limits_rt_add(rt, &en) : -ENOMEM;
    if (rc == -E2BIG) {
        limits_rt_free(rt);
        char why[120];
        snprintf(why, sizeof(why), "%d run-time overrides already (the most there may be)",
                 LIMITS_RT_MAX);
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
        return;
    }
    if (rc < 0) {
        limits_rt_free(rt);
        rt = NULL;
    }
    json_t *o = json_pack("{s:b,s:s,s:s,s:I,s:s}", "ok", 1, "rule", r->name, "value", value,
                          "expires_ms", (json_int_t)expires_ms, "store", store_kind(e->store));
    if (o)
        json_object_set_new(o, "limit",
                            count == LIMITS_TABLE_UNLIMITED ? json_string("unlimited")
                                                            : json_integer(count));
    char lim[24] = "unlimited";
    if (count != LIMITS_TABLE_UNLIMITED)
        snprintf(lim, sizeof(lim), "%" PRId64, count);
    log_info("control: run-time override of rule %s for %s: %s%s", r->name, value, lim,
             expires_ms ? " until a set time" : "");
    rt_change(e, rt, &en, NULL, NULL, o, reply, arg);
}

void engine_rt_unset(struct engine *e, const struct limits_rule *r, const char *value,
                     engine_reply_fn reply, void *arg)
{
    if (limits_rt_lookup(e->rt, r->name, value, strlen(value)) == NULL) {
        char why[200];
        snprintf(why, sizeof(why), "rule %s has no run-time override for %s", r->name, value);
        reply(arg, json_pack("{s:b,s:s}", "ok", 0, "error", why));
        return;
    }
    log_info("control: run-time override of rule %s for %s removed", r->name, value);
    struct limits_rt *rt = limits_rt_copy(e->rt, wall_ms(), r->name, value);
    json_t *o = json_pack("{s:b,s:s,s:s,s:s}", "ok", 1, "rule", r->name, "value", value, "store",
                          store_kind(e->store));
    rt_change(e, rt, NULL, r->name, value, o, reply, arg);
}
