/* redis_cluster_ops: the cluster operations of store.h (node status, events, journal copy)
 * over any Redis connection, for the single-Redis backend (store_redis.c, one connection)
 * and the Redis Cluster one (redis_cluster.c, each command to its key's slot). Key layout:
 * redis_keys.h. Plain single-key commands, so a sharding proxy forwards each one:
 * SET/GET "node:NAME" (value "UPDATED_MS JSON", expiring with PX), a sorted set "nodes"
 * whose scores are the entries' expiry times (readers ask for scores >= now; stale members
 * are pruned by score), the capped list "events" (LPUSH then LTRIM, read with LRANGE) and
 * SET/DEL "journal:NAME". These commands bypass the request machinery of the counters:
 * nobody waits on them in the decision path, and a dropped connection answers them with a
 * NULL reply. How a command goes out and what a reply tells the connection is the
 * backend's: its vtable's cop_send and cop_reply. */
#include "store_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "redis_keys.h"

/* Members of "nodes" expired longer than this are removed by the next put. */
#define REDIS_NODES_PRUNE_MS 3600000

struct redis_cop {
    struct store *s;
    int pending;
    int status;
    store_done_cb done;
    store_nodes_cb nodes_cb;
    store_events_cb events_cb;
    store_hash_cb hash_cb;
    const char *hash_field; /* HGET: the field asked for (borrowed until the reply) */
    void *arg;
    /* get_all */
    size_t n;
    char **names;
    char **values;
    bool names_done;
    /* event_read */
    char **events;
};

/* privdata of one cluster command: its operation and, for the GETs of get_all, which
 * node it reads. */
struct redis_cop_cmd {
    struct redis_cop *op;
    size_t idx; /* get_all: which GET; SIZE_MAX for the others */
};

static void redis_cop_free(struct redis_cop *op)
{
    for (size_t i = 0; i < op->n; i++) {
        free(op->names ? op->names[i] : NULL);
        free(op->values ? op->values[i] : NULL);
        free(op->events ? op->events[i] : NULL);
    }
    free(op->names);
    free(op->values);
    free(op->events);
    free(op);
}

static void redis_on_cop_reply(redisAsyncContext *ac, void *reply, void *privdata);

static int redis_cop_send(struct redis_cop *op, size_t idx, int argc, const char **argv,
                          const size_t *len)
{
    struct redis_cop_cmd *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->op = op;
    c->idx = idx;
    int rc = op->s->vt->cop_send(op->s, redis_on_cop_reply, c, argc, argv, len);
    if (rc < 0) {
        free(c);
        return rc;
    }
    op->pending++;
    return 0;
}

static void redis_cop_finish(struct redis_cop *op)
{
    if (op->done) {
        op->done(op->arg, op->status);
    } else if (op->nodes_cb) {
        struct store_node_status *v = NULL;
        size_t k = 0;
        if (op->status == 0 && op->n && !(v = calloc(op->n, sizeof(*v))))
            op->status = -ENOMEM;
        for (size_t i = 0; v && i < op->n; i++) {
            char *val = op->values[i], *sp;
            if (!val || !(sp = strchr(val, ' ')))
                continue; /* expired between the two reads */
            *sp = '\0';
            v[k].node = op->names[i];
            v[k].updated_ms = strtoll(val, NULL, 10);
            v[k].json = sp + 1;
            k++;
        }
        op->nodes_cb(op->arg, op->status, op->status == 0 ? v : NULL, op->status == 0 ? k : 0);
        free(v);
    } else if (op->events_cb) {
        op->events_cb(op->arg, op->status, op->status == 0 ? (const char *const *)op->events : NULL,
                      op->status == 0 ? op->n : 0);
    } else if (op->hash_cb) {
        bool ok = op->status == 0;
        op->hash_cb(op->arg, op->status, ok ? (const char *const *)op->names : NULL,
                    ok ? (const char *const *)op->values : NULL, ok ? op->n : 0);
    }
    redis_cop_free(op);
}

/* get_all's second step: one GET per live node name. */
static void redis_cop_get_values(struct redis_cop *o)
{
    if (!(o->values = calloc(o->n ? o->n : 1, sizeof(char *)))) {
        o->status = -ENOMEM;
        return;
    }
    for (size_t i = 0; i < o->n; i++) {
        char key[STORE_MAX_KEY + 64];
        int kl = snprintf(key, sizeof(key), "%s" REDIS_KEY_NODE "%s", o->s->prefix, o->names[i]);
        if (kl < 0 || (size_t)kl >= sizeof(key))
            continue;
        const char *argv[2] = {"GET", key};
        size_t len[2] = {3, (size_t)kl};
        int rc = redis_cop_send(o, i, 2, argv, len);
        if (rc < 0) {
            o->status = rc;
            return;
        }
    }
}

/* Copies the strings of an array reply into a new vector (at most max). */
static char **redis_cop_strings(const redisReply *rep, size_t max, size_t *n, int *status)
{
    size_t k = rep->elements < max ? rep->elements : max;
    char **v = calloc(k ? k : 1, sizeof(char *));
    if (!v) {
        *status = -ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < k; i++) {
        const redisReply *e = rep->element[i];
        if (e->type == REDIS_REPLY_STRING && (v[*n] = strndup(e->str, (size_t)e->len)))
            (*n)++;
    }
    return v;
}

/* An HGET reply (a string, or nil: no field) or an HGETALL one (field, value, ...) into
 * op->names and op->values. */
static void redis_cop_hash_reply(struct redis_cop *op, const redisReply *rep)
{
    size_t pairs = rep->type == REDIS_REPLY_ARRAY ? rep->elements / 2 : 1;
    if (rep->type == REDIS_REPLY_NIL)
        return;
    if (pairs > STORE_OVERRIDES_MAX)
        pairs = STORE_OVERRIDES_MAX;
    if ((rep->type != REDIS_REPLY_ARRAY && rep->type != REDIS_REPLY_STRING) ||
        (rep->type == REDIS_REPLY_STRING && !op->hash_field)) {
        op->status = -EPROTO;
        return;
    }
    op->names = calloc(pairs ? pairs : 1, sizeof(char *));
    op->values = calloc(pairs ? pairs : 1, sizeof(char *));
    if (!op->names || !op->values) {
        op->status = -ENOMEM;
        return;
    }
    if (rep->type == REDIS_REPLY_STRING) {
        op->names[0] = strdup(op->hash_field);
        op->values[0] = strndup(rep->str, (size_t)rep->len);
        op->n = 1;
        if (!op->names[0] || !op->values[0])
            op->status = -ENOMEM;
        return;
    }
    for (size_t i = 0; i < pairs; i++) {
        const redisReply *f = rep->element[2 * i], *v = rep->element[2 * i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        op->names[op->n] = strndup(f->str, (size_t)f->len);
        op->values[op->n] = strndup(v->str, (size_t)v->len);
        op->n++; /* counted before the check, so both are freed */
        if (!op->names[op->n - 1] || !op->values[op->n - 1]) {
            op->status = -ENOMEM;
            return;
        }
    }
}

static void redis_on_cop_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct redis_cop_cmd *c = privdata;
    struct redis_cop *op = c->op;
    size_t idx = c->idx;
    free(c);
    redisReply *rep = reply;
    /* Only a write proves Redis fine: an out-of-memory or read-only one still answers
     * reads, and would flap between trouble and recovery. */
    op->s->vt->cop_reply(ac, rep, op->done != NULL);
    op->pending--;
    if (!rep) {
        if (op->status == 0)
            op->status = -ECONNRESET;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        if (op->status == 0)
            op->status = -EPROTO;
    } else if (op->nodes_cb && !op->names_done) {
        /* ZRANGEBYSCORE: the live node names. */
        op->names_done = true;
        if (rep->type == REDIS_REPLY_ARRAY) {
            op->names = redis_cop_strings(rep, REDIS_NODES_MAX, &op->n, &op->status);
            if (op->names && op->n)
                redis_cop_get_values(op);
        } else {
            op->status = -EPROTO;
        }
    } else if (op->nodes_cb) {
        if (rep->type == REDIS_REPLY_STRING && idx < op->n && !op->values[idx])
            op->values[idx] = strndup(rep->str, (size_t)rep->len);
    } else if (op->events_cb) {
        if (rep->type == REDIS_REPLY_ARRAY)
            op->events = redis_cop_strings(rep, SIZE_MAX, &op->n, &op->status);
        else
            op->status = -EPROTO;
    } else if (op->hash_cb) {
        redis_cop_hash_reply(op, rep);
    }
    if (op->pending == 0)
        redis_cop_finish(op);
}

static struct redis_cop *redis_cop_new(struct store *s, void *arg)
{
    struct redis_cop *op = calloc(1, sizeof(*op));
    if (op) {
        op->s = s;
        op->arg = arg;
    }
    return op;
}

/* After some commands of op went out and a later one failed: the replies still come
 * and finish op with the error; with none pending, fail now (the caller returns 0 only
 * when the callback will run). */
static int redis_cop_started(struct redis_cop *op, int rc)
{
    if (rc == 0)
        return 0;
    if (op->pending == 0) {
        redis_cop_free(op);
        return rc;
    }
    op->status = rc;
    return 0;
}

int redis_cop_node_put(struct store *s, const char *node, const char *json, int64_t now_ms,
                       int64_t ttl_ms, store_done_cb cb, void *arg)
{
    char key[STORE_MAX_KEY + 64], nodes[STORE_MAX_KEY + 16], px[24], score[24], prune[32];
    int kl = snprintf(key, sizeof(key), "%s" REDIS_KEY_NODE "%s", s->prefix, node);
    int nl = snprintf(nodes, sizeof(nodes), "%s" REDIS_KEY_NODES, s->prefix);
    if (kl < 0 || (size_t)kl >= sizeof(key) || nl < 0 || (size_t)nl >= sizeof(nodes))
        return -ENAMETOOLONG;
    size_t jl = strlen(json);
    char *val = malloc(jl + 32);
    if (!val)
        return -ENOMEM;
    int vl = snprintf(val, jl + 32, "%" PRId64 " %s", now_ms, json);
    snprintf(px, sizeof(px), "%" PRId64, ttl_ms > 0 ? ttl_ms : 1);
    snprintf(score, sizeof(score), "%" PRId64, now_ms + ttl_ms);
    snprintf(prune, sizeof(prune), "(%" PRId64, now_ms - REDIS_NODES_PRUNE_MS);
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op) {
        free(val);
        return -ENOMEM;
    }
    op->done = cb;
    const char *a1[5] = {"SET", key, val, "PX", px};
    size_t l1[5] = {3, (size_t)kl, (size_t)vl, 2, strlen(px)};
    const char *a2[4] = {"ZADD", nodes, score, node};
    size_t l2[4] = {4, (size_t)nl, strlen(score), strlen(node)};
    const char *a3[4] = {"ZREMRANGEBYSCORE", nodes, "-inf", prune};
    size_t l3[4] = {16, (size_t)nl, 4, strlen(prune)};
    int rc = redis_cop_send(op, SIZE_MAX, 5, a1, l1);
    if (rc == 0)
        rc = redis_cop_send(op, SIZE_MAX, 4, a2, l2);
    if (rc == 0)
        rc = redis_cop_send(op, SIZE_MAX, 4, a3, l3);
    free(val);
    return redis_cop_started(op, rc);
}

int redis_cop_node_get_all(struct store *s, int64_t now_ms, store_nodes_cb cb, void *arg)
{
    char nodes[STORE_MAX_KEY + 16], min[24], lim[24];
    int nl = snprintf(nodes, sizeof(nodes), "%s" REDIS_KEY_NODES, s->prefix);
    if (nl < 0 || (size_t)nl >= sizeof(nodes))
        return -ENAMETOOLONG;
    snprintf(min, sizeof(min), "%" PRId64, now_ms);
    snprintf(lim, sizeof(lim), "%d", REDIS_NODES_MAX);
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op)
        return -ENOMEM;
    op->nodes_cb = cb;
    const char *a[7] = {"ZRANGEBYSCORE", nodes, min, "+inf", "LIMIT", "0", lim};
    size_t l[7] = {13, (size_t)nl, strlen(min), 4, 5, 1, strlen(lim)};
    return redis_cop_started(op, redis_cop_send(op, SIZE_MAX, 7, a, l));
}

int redis_cop_event_append(struct store *s, const char *json, int64_t max_entries, store_done_cb cb,
                           void *arg)
{
    char key[STORE_MAX_KEY + 16], stop[24];
    int kl = snprintf(key, sizeof(key), "%s" REDIS_KEY_EVENTS, s->prefix);
    if (kl < 0 || (size_t)kl >= sizeof(key))
        return -ENAMETOOLONG;
    snprintf(stop, sizeof(stop), "%" PRId64, (max_entries > 0 ? max_entries : 1) - 1);
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op)
        return -ENOMEM;
    op->done = cb;
    const char *a1[3] = {"LPUSH", key, json};
    size_t l1[3] = {5, (size_t)kl, strlen(json)};
    const char *a2[4] = {"LTRIM", key, "0", stop};
    size_t l2[4] = {5, (size_t)kl, 1, strlen(stop)};
    int rc = redis_cop_send(op, SIZE_MAX, 3, a1, l1);
    if (rc == 0)
        rc = redis_cop_send(op, SIZE_MAX, 4, a2, l2);
    return redis_cop_started(op, rc);
}

int redis_cop_event_read(struct store *s, size_t max, store_events_cb cb, void *arg)
{
    char key[STORE_MAX_KEY + 16], stop[24];
    int kl = snprintf(key, sizeof(key), "%s" REDIS_KEY_EVENTS, s->prefix);
    if (kl < 0 || (size_t)kl >= sizeof(key))
        return -ENAMETOOLONG;
    snprintf(stop, sizeof(stop), "%zu", (max ? max : 1) - 1);
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op)
        return -ENOMEM;
    op->events_cb = cb;
    const char *a[4] = {"LRANGE", key, "0", stop};
    size_t l[4] = {6, (size_t)kl, 1, strlen(stop)};
    return redis_cop_started(op, redis_cop_send(op, SIZE_MAX, 4, a, l));
}

int redis_cop_counter_del(struct store *s, const char *key, size_t keylen, store_done_cb cb,
                          void *arg)
{
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op)
        return -ENOMEM;
    op->done = cb;
    const char *a[2] = {"DEL", key};
    size_t l[2] = {3, keylen};
    return redis_cop_started(op, redis_cop_send(op, SIZE_MAX, 2, a, l));
}

int redis_cop_journal_put(struct store *s, const char *node, const char *json, store_done_cb cb,
                          void *arg)
{
    char key[STORE_MAX_KEY + 64];
    int kl = snprintf(key, sizeof(key), "%s" REDIS_KEY_JOURNAL "%s", s->prefix, node);
    if (kl < 0 || (size_t)kl >= sizeof(key))
        return -ENAMETOOLONG;
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op)
        return -ENOMEM;
    op->done = cb;
    /* No TTL: the journal is needed for as long as the overrides are in force. */
    const char *a[3] = {json ? "SET" : "DEL", key, json};
    size_t l[3] = {3, (size_t)kl, json ? strlen(json) : 0};
    return redis_cop_started(op, redis_cop_send(op, SIZE_MAX, json ? 3 : 2, a, l));
}

/* A new operation on the overrides' hash, its key in key (*kl bytes); NULL with *kl a
 * negative errno. */
static struct redis_cop *redis_cop_overrides_new(struct store *s, void *arg, char *key,
                                                 size_t keysz, int *kl)
{
    *kl = snprintf(key, keysz, "%s" REDIS_KEY_OVERRIDES, s->prefix);
    if (*kl < 0 || (size_t)*kl >= keysz) {
        *kl = -ENAMETOOLONG;
        return NULL;
    }
    struct redis_cop *op = redis_cop_new(s, arg);
    if (!op)
        *kl = -ENOMEM;
    return op;
}

int redis_cop_overrides_get(struct store *s, const char *field, store_hash_cb cb, void *arg)
{
    char key[STORE_MAX_KEY + 16];
    int kl;
    struct redis_cop *op = redis_cop_overrides_new(s, arg, key, sizeof(key), &kl);
    if (!op)
        return kl;
    op->hash_cb = cb;
    op->hash_field = field;
    const char *a[3] = {field ? "HGET" : "HGETALL", key, field};
    size_t l[3] = {field ? 4 : 7, (size_t)kl, field ? strlen(field) : 0};
    return redis_cop_started(op, redis_cop_send(op, SIZE_MAX, field ? 3 : 2, a, l));
}

int redis_cop_overrides_put(struct store *s, const char *field, const char *value, store_done_cb cb,
                            void *arg)
{
    char key[STORE_MAX_KEY + 16];
    int kl;
    struct redis_cop *op = redis_cop_overrides_new(s, arg, key, sizeof(key), &kl);
    if (!op)
        return kl;
    op->done = cb;
    /* Two commands on one key and one connection: Redis runs them in order, so a node
     * that sees the new version also sees the change. */
    const char *a1[4] = {value ? "HSET" : "HDEL", key, field, value};
    size_t l1[4] = {4, (size_t)kl, strlen(field), value ? strlen(value) : 0};
    const char *a2[4] = {"HINCRBY", key, STORE_OVERRIDES_VERSION, "1"};
    size_t l2[4] = {7, (size_t)kl, strlen(STORE_OVERRIDES_VERSION), 1};
    int rc = redis_cop_send(op, SIZE_MAX, value ? 4 : 3, a1, l1);
    if (rc == 0)
        rc = redis_cop_send(op, SIZE_MAX, 4, a2, l2);
    return redis_cop_started(op, rc);
}
