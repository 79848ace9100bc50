/* report_store: the report's synchronous access to the store's Redis (report_store.h).
 * A redis-cluster:// store is read with its slot map (CLUSTER SLOTS from the first seed
 * that answers) and one connection per master, made when a key first needs it; MOVED
 * updates the map and ASK is followed once, both bounded (a reshard may run meanwhile).
 * Only single-key commands are sent, which a sharding proxy forwards too. */
#include "report_store.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "store/cluster_map.h"
#include "store/crc16.h"
#include "store/redis_keys.h"

#define REPORT_STORE_TIMEOUT_MS 2000
#define REPORT_STORE_MAX_NODES 64
#define REPORT_STORE_MAX_REDIRECTS 5

struct report_store_node {
    char ip[64];
    int port;
    redisContext *c; /* NULL until needed, or after it failed */
};

struct report_store {
    struct config_store_url u;
    struct timeval tv;
    redisContext *one; /* one Redis, or the master the sentinels named */
    bool cluster;
    int nnodes;
    struct report_store_node nodes[REPORT_STORE_MAX_NODES];
    uint16_t slots[CLUSTER_SLOTS]; /* node index + 1; 0 while the slot's master is unknown */
    char err[200];                 /* why the last command failed */
};

/* A connection to host:port (or the socket path when host is NULL), after AUTH and (not
 * in a cluster) SELECT. NULL with why in rs->err. */
static redisContext *report_store_connect(struct report_store *rs, const char *host, int port)
{
    redisContext *c = host ? redisConnectWithTimeout(host, port, rs->tv)
                           : redisConnectUnixWithTimeout(rs->u.path, rs->tv);
    if (!c || c->err) {
        snprintf(rs->err, sizeof(rs->err), "cannot connect to Redis: %s",
                 c ? c->errstr : "out of memory");
        goto fail;
    }
    redisSetTimeout(c, rs->tv);
    if (rs->u.password[0]) {
        redisReply *rep = redisCommand(c, "AUTH %s", rs->u.password);
        bool ok = rep && rep->type != REDIS_REPLY_ERROR;
        freeReplyObject(rep);
        if (!ok) {
            snprintf(rs->err, sizeof(rs->err), "Redis AUTH failed");
            goto fail;
        }
    }
    if (rs->u.db && !rs->cluster) {
        redisReply *rep = redisCommand(c, "SELECT %d", rs->u.db);
        bool ok = rep && rep->type != REDIS_REPLY_ERROR;
        freeReplyObject(rep);
        if (!ok) {
            snprintf(rs->err, sizeof(rs->err), "Redis SELECT %d failed", rs->u.db);
            goto fail;
        }
    }
    return c;
fail:
    if (c)
        redisFree(c);
    return NULL;
}

/* redis-sentinel://: asks the sentinels in turn for the master's address and puts it in
 * rs->u.host and rs->u.port. 0, or -1 with why in rs->err. */
static int report_store_sentinel_master(struct report_store *rs, const struct config *cfg)
{
    struct config_store_url *u = &rs->u;
    snprintf(rs->err, sizeof(rs->err), "no sentinel named the master '%s'", u->master_name);
    for (int i = 0; i < u->nseeds; i++) {
        redisContext *c = redisConnectWithTimeout(u->seeds[i].host, u->seeds[i].port, rs->tv);
        redisReply *rep = NULL;
        if (c && !c->err) {
            redisSetTimeout(c, rs->tv);
            const char *pw = cfg->redis_sentinel_password;
            if (pw && pw[0])
                freeReplyObject(redisCommand(c, "AUTH %s", pw));
            rep = redisCommand(c, "SENTINEL get-master-addr-by-name %s", u->master_name);
        }
        bool ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
                  rep->element[0]->type == REDIS_REPLY_STRING &&
                  rep->element[1]->type == REDIS_REPLY_STRING;
        if (ok) {
            snprintf(u->host, sizeof(u->host), "%s", rep->element[0]->str);
            u->port = atoi(rep->element[1]->str);
        }
        freeReplyObject(rep);
        if (c)
            redisFree(c);
        if (ok)
            return 0;
    }
    return -1;
}

/* The index of the node at ip:port (added if new), or -1 when the table is full. */
static int report_store_node(struct report_store *rs, const char *ip, int port)
{
    for (int i = 0; i < rs->nnodes; i++)
        if (rs->nodes[i].port == port && strcmp(rs->nodes[i].ip, ip) == 0)
            return i;
    if (rs->nnodes == REPORT_STORE_MAX_NODES || strlen(ip) >= sizeof(rs->nodes[0].ip))
        return -1;
    struct report_store_node *n = &rs->nodes[rs->nnodes];
    snprintf(n->ip, sizeof(n->ip), "%s", ip);
    n->port = port;
    n->c = NULL;
    return rs->nnodes++;
}

/* Reads the slot map from the first seed that answers. 0, or -1 with why in rs->err. */
static int report_store_read_map(struct report_store *rs)
{
    snprintf(rs->err, sizeof(rs->err), "no seed of the cluster answered CLUSTER SLOTS");
    for (int i = 0; i < rs->u.nseeds; i++) {
        const char *seed = rs->u.seeds[i].host;
        redisContext *c = report_store_connect(rs, seed, rs->u.seeds[i].port);
        redisReply *rep = c ? redisCommand(c, "CLUSTER SLOTS") : NULL;
        size_t covered = 0;
        for (size_t k = 0; rep && rep->type == REDIS_REPLY_ARRAY && k < rep->elements; k++) {
            unsigned from, to;
            const char *ip;
            int port, ni;
            if (!cluster_map_slots_entry(rep->element[k], &from, &to, &ip, &port))
                continue;
            if (!ip[0] || strcmp(ip, "?") == 0)
                ip = seed; /* the node asked */
            if ((ni = report_store_node(rs, ip, port)) < 0)
                continue;
            for (unsigned sl = from; sl <= to; sl++)
                rs->slots[sl] = (uint16_t)(ni + 1);
            covered += to - from + 1;
        }
        freeReplyObject(rep);
        if (c)
            redisFree(c);
        if (covered)
            return 0;
    }
    return -1;
}

/* Sends one command (argv[1] is its key) where its key lives. The reply (the caller
 * frees it), or NULL with why in rs->err. */
static redisReply *report_store_command(struct report_store *rs, int argc, const char **argv,
                                        const size_t *len)
{
    if (!rs->cluster) {
        redisReply *rep = redisCommandArgv(rs->one, argc, argv, len);
        if (!rep)
            snprintf(rs->err, sizeof(rs->err), "%s", rs->one->errstr);
        return rep;
    }
    unsigned slot = crc16_key_slot(argv[1], len[1]);
    int ni = rs->slots[slot] ? rs->slots[slot] - 1 : 0;
    bool asking = false;
    for (int hop = 0; hop <= REPORT_STORE_MAX_REDIRECTS; hop++) {
        struct report_store_node *n = &rs->nodes[ni];
        if (!n->c && !(n->c = report_store_connect(rs, n->ip, n->port)))
            return NULL;
        redisReply *rep = NULL;
        if (asking) {
            redisAppendCommand(n->c, "ASKING");
            redisAppendCommandArgv(n->c, argc, argv, len);
            void *r = NULL;
            if (redisGetReply(n->c, &r) == REDIS_OK) {
                freeReplyObject(r);
                if (redisGetReply(n->c, &r) == REDIS_OK)
                    rep = r;
            }
        } else {
            rep = redisCommandArgv(n->c, argc, argv, len);
        }
        if (!rep) {
            snprintf(rs->err, sizeof(rs->err), "Redis %s:%d: %s", n->ip, n->port, n->c->errstr);
            redisFree(n->c);
            n->c = NULL;
            return NULL;
        }
        bool moved = rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "MOVED ", 6) == 0;
        asking = rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "ASK ", 4) == 0;
        if (!moved && !asking)
            return rep;
        char ip[64];
        unsigned to_slot;
        int port;
        bool ok = cluster_map_parse_redirect(rep->str, &to_slot, ip, sizeof(ip), &port) &&
                  (ni = report_store_node(rs, ip, port)) >= 0;
        freeReplyObject(rep);
        if (!ok) {
            snprintf(rs->err, sizeof(rs->err), "bad redirect from Redis %s:%d", n->ip, n->port);
            return NULL;
        }
        if (moved)
            rs->slots[to_slot] = (uint16_t)(ni + 1);
    }
    snprintf(rs->err, sizeof(rs->err), "more than %d redirects for one key",
             REPORT_STORE_MAX_REDIRECTS);
    return NULL;
}

/* report_store_command with the key key and up to three more string arguments. */
static redisReply *report_store_key_command(struct report_store *rs, const char *cmd,
                                            const char *key, size_t keylen, int nargs,
                                            const char *a1, const char *a2, const char *a3)
{
    const char *argv[5] = {cmd, key, a1, a2, a3};
    size_t len[5] = {strlen(cmd), keylen, a1 ? strlen(a1) : 0, a2 ? strlen(a2) : 0,
                     a3 ? strlen(a3) : 0};
    return report_store_command(rs, 2 + nargs, argv, len);
}

struct report_store *report_store_open(const struct config *cfg, char *err, size_t errlen)
{
    err[0] = '\0';
    struct report_store *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (config_parse_store_url(cfg->store, &rs->u) < 0 || rs->u.kind == CONFIG_STORE_MEMORY) {
        free(rs);
        return NULL;
    }
    rs->tv.tv_sec = REPORT_STORE_TIMEOUT_MS / 1000;
    rs->tv.tv_usec = (REPORT_STORE_TIMEOUT_MS % 1000) * 1000;
    int rc = 0;
    switch (rs->u.kind) {
    case CONFIG_STORE_REDIS_CLUSTER:
        rs->cluster = true;
        rc = report_store_read_map(rs);
        break;
    case CONFIG_STORE_REDIS_SENTINEL:
        if ((rc = report_store_sentinel_master(rs, cfg)) < 0)
            break;
        /* fall through */
    default:
        rs->one = report_store_connect(
            rs, rs->u.kind == CONFIG_STORE_REDIS_UNIX ? NULL : rs->u.host, rs->u.port);
        rc = rs->one ? 0 : -1;
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s", rs->err);
        report_store_free(rs);
        return NULL;
    }
    return rs;
}

void report_store_free(struct report_store *rs)
{
    if (!rs)
        return;
    if (rs->one)
        redisFree(rs->one);
    for (int i = 0; i < rs->nnodes; i++)
        if (rs->nodes[i].c)
            redisFree(rs->nodes[i].c);
    free(rs);
}

/* The live nodes' statuses, appended to nodes. */
static void report_store_read_nodes(struct report_store *rs, const char *prefix, int64_t now_ms,
                                    json_t *nodes)
{
    char key[1024], min[24], max[16];
    snprintf(key, sizeof(key), "%s" REDIS_KEY_NODES, prefix);
    snprintf(min, sizeof(min), "%lld", (long long)now_ms);
    snprintf(max, sizeof(max), "%d", REDIS_NODES_MAX);
    const char *argv[7] = {"ZRANGEBYSCORE", key, min, "+inf", "LIMIT", "0", max};
    size_t len[7];
    for (int i = 0; i < 7; i++)
        len[i] = strlen(argv[i]);
    redisReply *rep = report_store_command(rs, 7, argv, len);
    for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        const redisReply *m = rep->element[i];
        int kl = snprintf(key, sizeof(key), "%s" REDIS_KEY_NODE, prefix);
        if (m->type != REDIS_REPLY_STRING || kl < 0 || (size_t)kl + m->len >= sizeof(key))
            continue;
        memcpy(key + kl, m->str, m->len);
        redisReply *v =
            report_store_key_command(rs, "GET", key, (size_t)kl + m->len, 0, NULL, NULL, NULL);
        const char *sp = v && v->type == REDIS_REPLY_STRING ? memchr(v->str, ' ', v->len) : NULL;
        json_t *o = sp ? json_loadb(sp + 1, v->len - (size_t)(sp + 1 - v->str), 0, NULL) : NULL;
        freeReplyObject(v);
        if (!json_is_object(o)) {
            json_decref(o);
            continue;
        }
        /* The key names the node; the status inside says it too ("name"). */
        if (!json_is_string(json_object_get(o, "name")))
            json_object_set_new(o, "name", json_stringn(m->str, m->len));
        json_array_append_new(nodes, o);
    }
    freeReplyObject(rep);
}

int report_store_cluster_view(struct report_store *rs, const char *prefix, int64_t now_ms,
                              json_t **status, json_t **events)
{
    json_t *nodes = json_array();
    if (!nodes)
        return -ENOMEM;
    if (!json_is_array(json_object_get(*status, "nodes")))
        report_store_read_nodes(rs, prefix, now_ms, nodes);
    int rc = 0;
    if (json_array_size(nodes)) {
        if (!*status && !(*status = json_object()))
            rc = -ENOMEM;
        else
            json_object_set(*status, "nodes", nodes);
    }
    json_decref(nodes);
    if (rc < 0 || !events)
        return rc;
    char key[1024];
    snprintf(key, sizeof(key), "%s" REDIS_KEY_EVENTS, prefix);
    redisReply *rep = report_store_key_command(rs, "LRANGE", key, strlen(key), 2, "0", "999", NULL);
    if (rep && rep->type == REDIS_REPLY_ARRAY && !(*events = json_array()))
        rc = -ENOMEM;
    for (size_t i = 0; *events && i < rep->elements; i++) {
        const redisReply *e = rep->element[i];
        json_t *o = e->type == REDIS_REPLY_STRING ? json_loadb(e->str, e->len, 0, NULL) : NULL;
        if (json_is_object(o))
            json_array_append(*events, o);
        json_decref(o);
    }
    freeReplyObject(rep);
    return rc;
}

json_t *report_store_load(struct report_store *rs, const char *key)
{
    redisReply *rep = report_store_key_command(rs, "GET", key, strlen(key), 0, NULL, NULL, NULL);
    json_t *j = NULL;
    if (rep && rep->type == REDIS_REPLY_STRING)
        j = json_loadb(rep->str, rep->len, 0, NULL);
    freeReplyObject(rep);
    return j;
}

int report_store_save(struct report_store *rs, const char *key, const json_t *j, int64_t ttl_s,
                      char *err, size_t errlen)
{
    char *text = json_dumps(j, JSON_COMPACT);
    if (!text) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%lld", (long long)ttl_s);
    redisReply *rep = report_store_key_command(rs, "SET", key, strlen(key), 3, text, "EX", ttl);
    free(text);
    int rc = rep && rep->type == REDIS_REPLY_STATUS ? 0 : -EIO;
    if (rc < 0)
        snprintf(err, errlen, "%s",
                 !rep                             ? rs->err
                 : rep->type == REDIS_REPLY_ERROR ? rep->str
                                                  : "bad reply");
    freeReplyObject(rep);
    return rc;
}
