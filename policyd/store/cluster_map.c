/* cluster_map: reads CLUSTER SLOTS entries and MOVED/ASK redirects (see cluster_map.h). */
#include "cluster_map.h"

#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "crc16.h"

bool cluster_map_slots_entry(const struct redisReply *e, unsigned *from, unsigned *to,
                             const char **ip, int *port)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER ||
        e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2 ||
        e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
        e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
        return false;
    long long f = e->element[0]->integer, t = e->element[1]->integer;
    long long p = e->element[2]->element[1]->integer;
    if (f < 0 || t >= CLUSTER_SLOTS || f > t || p <= 0 || p >= 65536)
        return false;
    *from = (unsigned)f;
    *to = (unsigned)t;
    *ip = e->element[2]->element[0]->str;
    *port = (int)p;
    return true;
}

bool cluster_map_parse_redirect(const char *str, unsigned *slot, char *ip, size_t iplen, int *port)
{
    const char *sp = strchr(str, ' ');
    if (!sp)
        return false;
    char *end;
    unsigned long v = strtoul(sp + 1, &end, 10);
    if (*end != ' ' || v >= CLUSTER_SLOTS)
        return false;
    const char *addr = end + 1, *colon = strrchr(addr, ':');
    if (!colon || colon == addr || (size_t)(colon - addr) >= iplen)
        return false;
    memcpy(ip, addr, (size_t)(colon - addr));
    ip[colon - addr] = '\0';
    *port = atoi(colon + 1);
    *slot = (unsigned)v;
    return *port > 0 && *port < 65536;
}
