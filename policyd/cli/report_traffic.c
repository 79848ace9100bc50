/* report_traffic: reads the mail log since the last report for `postsurge report` and
 * counts deliveries per receiving domain, connections and rejects per client and Postfix's
 * warnings in bounded hash tables. Positions are file identity + offset, so a rotation is
 * noticed (new inode) and a truncation too (file shorter than the offset). Blocking file
 * I/O: the report is a CLI command, never the daemon's loop. */
#include "report_traffic.h"

#include "maillog.h"
#include "report.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define OTHER_KEY "(other)"
#define MAX_WARNINGS 128
/* Rows handed to the report: its lookups are linear, and nobody reads 50000 rows. */
#define MAX_REPORT_DOMAINS 1000

struct tkey {
    char *key;
    char *name; /* clients: the first real host name seen for the address, or NULL */
    uint64_t a, b, c;
};

/* Open addressing, linear probing; at most TRAFFIC_MAX_KEYS keys plus "(other)". */
struct ttable {
    struct tkey *slots;
    size_t cap, n;
};

struct twarn {
    char kind[40];
    char detail[128];
    uint64_t count;
};

struct tanvil {
    bool seen;
    uint64_t peak;
    unsigned long interval_s;
    char key[192];
};

struct traffic {
    struct ttable domains;  /* a: delivered, b: deferred, c: bounced */
    struct ttable clients;  /* by address; a: connections, b: rejects */
    struct ttable lost;     /* "ADDR\tSERVICE\tSTAGE"; a: lost connections */
    struct ttable auth;     /* by address; a: SASL failures */
    struct ttable users;    /* by sasl_username; a: SASL failures */
    struct ttable dreasons; /* "DOMAIN\tCLASS\tREPLY" of deferrals; a: recipients */
    struct report_log_totals log;
    struct twarn warnings[MAX_WARNINGS];
    size_t n_warnings;
    struct tanvil anvil[MAILLOG_ANVIL_CACHE_SIZE + 1];
    uint64_t reject_classes[REPORT_REJECT_CLASS_COUNT];
    uint64_t ps_verdicts[MAILLOG_PS_VERDICT_COUNT]; /* in maillog_ps_verdicts order */
    const char *const *own_texts;                   /* borrowed, NULL-terminated, may be NULL */
    uint64_t lines, bytes;
    unsigned files;
};

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

static void table_free(struct ttable *t)
{
    for (size_t i = 0; i < t->cap; i++) {
        free(t->slots[i].key);
        free(t->slots[i].name);
    }
    free(t->slots);
}

static struct tkey *table_slot(struct tkey *slots, size_t cap, const char *key)
{
    size_t i = (size_t)(hash_str(key) & (cap - 1));
    while (slots[i].key && strcmp(slots[i].key, key) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

static int table_grow(struct ttable *t)
{
    size_t cap = t->cap ? t->cap * 2 : 256;
    struct tkey *s = calloc(cap, sizeof(*s));
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].key)
            *table_slot(s, cap, t->slots[i].key) = t->slots[i];
    }
    free(t->slots);
    t->slots = s;
    t->cap = cap;
    return 0;
}

/* The entry of key, created when new; past the bound, the "(other)" entry. NULL on
 * ENOMEM. */
static struct tkey *table_get(struct ttable *t, const char *key)
{
    if ((t->n + 1) * 2 > t->cap && table_grow(t) < 0)
        return NULL;
    struct tkey *e = table_slot(t->slots, t->cap, key);
    if (e->key)
        return e;
    if (t->n >= TRAFFIC_MAX_KEYS && strcmp(key, OTHER_KEY) != 0)
        return table_get(t, OTHER_KEY);
    e->key = strdup(key);
    if (!e->key)
        return NULL;
    t->n++;
    return e;
}

struct traffic *traffic_new(void)
{
    return calloc(1, sizeof(struct traffic));
}

void traffic_free(struct traffic *t)
{
    if (!t)
        return;
    table_free(&t->domains);
    table_free(&t->clients);
    table_free(&t->lost);
    table_free(&t->auth);
    table_free(&t->users);
    table_free(&t->dreasons);
    free(t);
}

static void warn_add(struct traffic *t, const char *kind, const char *detail, uint64_t n)
{
    for (size_t i = 0; i < t->n_warnings; i++) {
        if (strcmp(t->warnings[i].kind, kind) == 0 && strcmp(t->warnings[i].detail, detail) == 0) {
            t->warnings[i].count += n;
            return;
        }
    }
    /* A full table folds new details into the kind's first entry: counts stay right. */
    if (t->n_warnings == MAX_WARNINGS) {
        for (size_t i = 0; i < t->n_warnings; i++) {
            if (strcmp(t->warnings[i].kind, kind) == 0) {
                t->warnings[i].count += n;
                return;
            }
        }
        return;
    }
    struct twarn *w = &t->warnings[t->n_warnings++];
    snprintf(w->kind, sizeof(w->kind), "%s", kind);
    snprintf(w->detail, sizeof(w->detail), "%s", detail);
    w->count = n;
}

static const char *limit_kind(enum maillog_limit l)
{
    switch (l) {
    case MAILLOG_LIMIT_CONNECTION_COUNT:
        return "connection_count_limit";
    case MAILLOG_LIMIT_CONNECTION_RATE:
        return "connection_rate_limit";
    case MAILLOG_LIMIT_MESSAGE_RATE:
        return "message_rate_limit";
    case MAILLOG_LIMIT_RECIPIENT_RATE:
        return "recipient_rate_limit";
    case MAILLOG_LIMIT_NEWTLS_RATE:
        return "newtls_rate_limit";
    case MAILLOG_LIMIT_AUTH_RATE:
        return "auth_rate_limit";
    default:
        return "other_limit";
    }
}

static const char *anvil_stat_name(enum maillog_anvil_stat s)
{
    switch (s) {
    case MAILLOG_ANVIL_CONNECTION_RATE:
        return "connection_rate";
    case MAILLOG_ANVIL_CONNECTION_COUNT:
        return "connection_count";
    case MAILLOG_ANVIL_MESSAGE_RATE:
        return "message_rate";
    case MAILLOG_ANVIL_RECIPIENT_RATE:
        return "recipient_rate";
    case MAILLOG_ANVIL_NEWTLS_RATE:
        return "newtls_rate";
    case MAILLOG_ANVIL_AUTH_RATE:
        return "auth_rate";
    default:
        return "cache_size";
    }
}

/* 127.0.0.0/8 and ::1 (also as ::ffff:127.x.y.z): a content filter's return service or a
 * local submission, not an SMTP client of the Internet. */
static bool is_loopback(const char *addr)
{
    return strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 ||
           strncasecmp(addr, "::ffff:127.", 11) == 0;
}

/* The entry of rec's client in table tab under key (default: its address), remembering
 * the first real host name seen (names come and go: "unknown[ADDR]", postscreen's
 * "[ADDR]:PORT"). NULL when the record has no client or on ENOMEM (*nomem set). */
static struct tkey *client_entry(struct ttable *tab, const struct maillog_record *rec,
                                 const char *key, bool *nomem)
{
    const char *addr = rec->client_addr[0] ? rec->client_addr : rec->client_name;
    *nomem = false;
    if (!addr[0])
        return NULL;
    struct tkey *e = table_get(tab, key ? key : addr);
    if (!e) {
        *nomem = true;
        return NULL;
    }
    if (!e->name && rec->client_name[0] && strcmp(rec->client_name, "unknown") != 0 &&
        strcmp(e->key, OTHER_KEY) != 0)
        e->name = strdup(rec->client_name); /* best effort: NULL just shows the address */
    return e;
}

/* The client's table entry, keyed by address. */
static struct tkey *client_get(struct traffic *t, const struct maillog_record *rec)
{
    const char *addr = rec->client_addr[0] ? rec->client_addr : rec->client_name;
    if (!addr[0])
        return NULL;
    struct tkey *e = table_get(&t->clients, addr);
    if (e && !e->name && rec->client_name[0] && strcmp(rec->client_name, "unknown") != 0 &&
        strcmp(e->key, OTHER_KEY) != 0)
        e->name = strdup(rec->client_name); /* best effort: NULL just shows the address */
    return e;
}

void traffic_set_own_texts(struct traffic *t, const char *const *texts)
{
    t->own_texts = texts;
}

static void count_verdict(struct traffic *t, const char *verdict)
{
    for (size_t i = 0; i < MAILLOG_PS_VERDICT_COUNT; i++) {
        if (strcmp(maillog_ps_verdicts[i], verdict) == 0) {
            t->ps_verdicts[i]++;
            return;
        }
    }
}

/* A deferral's reason class and reply ("421 4.7.0" from "... said: 421 4.7.0 ...", else
 * the delivery's dsn=) under "DOMAIN\tCLASS\tREPLY". 0 or -ENOMEM. */
static int count_deferral(struct traffic *t, const struct maillog_record *rec)
{
    char dsn[QUEUE_DSN_SIZE], reply[32], key[512];
    enum queue_reason_class cls = queue_reason_classify(rec->text, dsn);
    const char *said = strstr(rec->text, " said: ");
    size_t n = 0;
    if (said) {
        said += strlen(" said: ");
        n = strspn(said, "0123456789");
        n = n == 3 && said[3] == ' ' ? 4 + strspn(said + 4, "0123456789.") : 0;
    }
    if (n > 4)
        snprintf(reply, sizeof(reply), "%.*s", (int)n, said);
    else
        snprintf(reply, sizeof(reply), "%s", rec->dsn[0] ? rec->dsn : dsn);
    snprintf(key, sizeof(key), "%s\t%s\t%s", rec->domain[0] ? rec->domain : QUEUE_LOCAL_DOMAIN,
             queue_reason_class_str(cls), reply);
    struct tkey *e = table_get(&t->dreasons, key);
    if (!e)
        return -ENOMEM;
    e->a++;
    return 0;
}

int traffic_add_line(struct traffic *t, const char *line, size_t len)
{
    struct maillog_record rec;
    struct tkey *e;
    bool nomem;
    char key[512];

    t->lines++;
    switch (maillog_parse_line(line, len, &rec)) {
    case MAILLOG_DELIVERY:
        /* Address verification probes are not mail: counted apart, never per domain. */
        if (rec.status == MAILLOG_STATUS_DELIVERABLE) {
            t->log.probes_deliverable++;
            break;
        }
        if (rec.status == MAILLOG_STATUS_UNDELIVERABLE) {
            t->log.probes_undeliverable++;
            break;
        }
        e = table_get(&t->domains, rec.domain[0] ? rec.domain : QUEUE_LOCAL_DOMAIN);
        if (!e)
            return -ENOMEM;
        if (rec.status == MAILLOG_STATUS_SENT)
            e->a++;
        else if (rec.status == MAILLOG_STATUS_DEFERRED && count_deferral(t, &rec) < 0)
            return -ENOMEM;
        else if (rec.status == MAILLOG_STATUS_DEFERRED)
            e->b++;
        else
            e->c++; /* bounced, and any other final word */
        break;
    case MAILLOG_EXPIRED:
        if (strcmp(rec.status_word, "force-expired") == 0)
            t->log.force_expired++;
        else
            t->log.expired++;
        break;
    case MAILLOG_CONNECT:
        if (rec.client_addr[0] && is_loopback(rec.client_addr)) {
            t->log.internal_connections++;
            break;
        }
        e = client_get(t, &rec);
        if (e)
            e->a++;
        else if (rec.client_addr[0] || rec.client_name[0])
            return -ENOMEM;
        break;
    case MAILLOG_REJECT:
        t->reject_classes[report_reject_classify(rec.code, rec.text, t->own_texts)]++;
        e = client_get(t, &rec);
        if (e)
            e->b++;
        else if (rec.client_addr[0] || rec.client_name[0])
            return -ENOMEM;
        break;
    case MAILLOG_LOST_CONNECTION:
        snprintf(key, sizeof(key), "%s\t%s\t%s",
                 rec.client_addr[0] ? rec.client_addr : rec.client_name, rec.service, rec.stage);
        t->log.lost_connections++;
        e = client_entry(&t->lost, &rec, key, &nomem);
        if (e)
            e->a++;
        else if (nomem)
            return -ENOMEM;
        break;
    case MAILLOG_AUTH_FAILED:
        t->log.auth_failures++;
        e = client_entry(&t->auth, &rec, NULL, &nomem);
        if (e)
            e->a++;
        else if (nomem)
            return -ENOMEM;
        if (rec.sasl_username[0]) {
            e = table_get(&t->users, rec.sasl_username);
            if (!e)
                return -ENOMEM;
            e->a++;
        }
        break;
    case MAILLOG_POSTSCREEN_VERDICT:
        count_verdict(t, rec.stage);
        break;
    case MAILLOG_PROCESS_LIMIT:
        warn_add(t, "process_limit", rec.service, 1);
        break;
    case MAILLOG_LIMIT_EXCEEDED:
        warn_add(t, limit_kind(rec.limit_kind), rec.service, 1);
        break;
    case MAILLOG_POSTSCREEN_ENTER:
        warn_add(t, "postscreen_stress", "", 1);
        break;
    case MAILLOG_PORTS_BUSY:
        warn_add(t, strstr(rec.text, "screening") ? "screening_ports_busy" : "ports_busy", "", 1);
        break;
    case MAILLOG_ANVIL_STATS:
        if (rec.anvil_stat > MAILLOG_ANVIL_NONE && rec.anvil_stat <= MAILLOG_ANVIL_CACHE_SIZE) {
            struct tanvil *a = &t->anvil[rec.anvil_stat];
            if (!a->seen || rec.count > a->peak) {
                a->seen = true;
                a->peak = rec.count;
                a->interval_s = rec.interval_s;
                snprintf(a->key, sizeof(a->key), "%s", rec.key);
            }
        }
        break;
    default:
        break;
    }
    return 0;
}

void traffic_get_counts(const struct traffic *t, uint64_t *lines, uint64_t *bytes, unsigned *files)
{
    *lines = t->lines;
    *bytes = t->bytes;
    *files = t->files;
}

/* Reads fd from start to its end, counting complete lines; skip_first drops the first
 * line (a partial one when starting in the middle of a file). Sets *end to the offset
 * after the last complete line. Returns 0, -errno, -ENOMEM. */
static int read_from(struct traffic *t, int fd, int64_t start, bool skip_first, int64_t *end)
{
    struct maillog_splitter *sp = maillog_splitter_new(0);
    char *buf = malloc(65536);
    int64_t fed = 0;
    int rc = 0;

    if (!sp || !buf) {
        rc = -ENOMEM;
        goto out;
    }
    t->files++;
    if (lseek(fd, (off_t)start, SEEK_SET) < 0) {
        rc = -errno;
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf, 65536);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto out;
        }
        if (n == 0)
            break;
        fed += n;
        t->bytes += (uint64_t)n;
        rc = maillog_splitter_feed(sp, buf, (size_t)n);
        if (rc < 0)
            goto out;
        const char *line;
        size_t len;
        while (maillog_splitter_next(sp, &line, &len, NULL) == 1) {
            if (skip_first) {
                skip_first = false;
                continue;
            }
            rc = traffic_add_line(t, line, len);
            if (rc < 0)
                goto out;
        }
    }
    *end = start + fed - (int64_t)maillog_splitter_pending(sp);
out:
    maillog_splitter_free(sp);
    free(buf);
    return rc;
}

/* Finds the rotated-away file with identity (dev, ino) beside path: NAME.0, NAME.1 first,
 * then any NAME.* in the directory. Returns an open fd or -1. */
static int open_rotated(const char *path, uint64_t dev, uint64_t ino)
{
    char cand[4096];
    struct stat st;
    static const char *const suffixes[] = {".0", ".1"};

    for (size_t i = 0; i < 2; i++) {
        snprintf(cand, sizeof(cand), "%s%s", path, suffixes[i]);
        int fd = open(cand, O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_dev == dev &&
            (uint64_t)st.st_ino == ino)
            return fd;
        if (fd >= 0)
            close(fd);
    }
    const char *slash = strrchr(path, '/');
    if (!slash)
        return -1;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path == 0 ? 1 : slash - path), path);
    const char *base = slash + 1;
    size_t blen = strlen(base);
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int found = -1;
    struct dirent *de;
    while (found < 0 && (de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, base, blen) != 0 || de->d_name[blen] != '.' ||
            (uint64_t)de->d_ino != ino)
            continue;
        char full[sizeof(dir) + sizeof(de->d_name) + 2];
        snprintf(full, sizeof(full), "%s/%s", dir, de->d_name);
        int fd = open(full, O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_dev == dev &&
            (uint64_t)st.st_ino == ino)
            found = fd;
        else if (fd >= 0)
            close(fd);
    }
    closedir(d);
    return found;
}

/* What the rotated file still held after our offset. Errors are not fatal: the new file
 * is read anyway. */
static int read_rotated(struct traffic *t, const char *path, const struct traffic_pos *pos)
{
    int fd = open_rotated(path, pos->dev, pos->ino);
    if (fd < 0)
        return 0;
    struct stat st;
    int64_t end = 0, start = pos->offset;
    int rc = 0;
    if (fstat(fd, &st) == 0 && st.st_size < start)
        start = 0;
    rc = read_from(t, fd, start, false, &end);
    close(fd);
    return rc == -ENOMEM ? rc : 0;
}

int traffic_read_log(struct traffic *t, const char *path, struct traffic_pos *pos)
{
    struct stat st;
    int rc;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        rc = -errno;
        if (rc == -ENOENT && pos->valid) {
            /* Rotated, and Postfix has not written the new file yet: what the old one
             * still held is counted; the new one will be read from its start. */
            unsigned files = t->files;
            int r2 = read_rotated(t, path, pos);
            if (r2 < 0)
                return r2;
            if (t->files > files) {
                *pos = (struct traffic_pos){true, 0, 0, 0};
                return 0;
            }
            pos->valid = false;
        }
        return rc;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    int64_t start = 0;
    bool skip_first = false;
    bool same = pos->valid && (uint64_t)st.st_dev == pos->dev && (uint64_t)st.st_ino == pos->ino;
    if (same) {
        /* Shorter than our offset: truncated (copytruncate rotation); start over. */
        start = st.st_size >= pos->offset ? pos->offset : 0;
    } else if (pos->valid) {
        rc = read_rotated(t, path, pos);
        if (rc < 0) {
            close(fd);
            return rc;
        }
    } else if (st.st_size > TRAFFIC_FIRST_RUN_MAX) {
        /* A first run on a big log looks at its end only; skip the line cut in two
         * unless the byte before the start ends a line. */
        char c = '\n';
        start = (int64_t)st.st_size - TRAFFIC_FIRST_RUN_MAX;
        skip_first = pread(fd, &c, 1, (off_t)(start - 1)) != 1 || c != '\n';
    }
    int64_t end = start;
    rc = read_from(t, fd, start, skip_first, &end);
    close(fd);
    if (rc < 0)
        return rc;
    *pos = (struct traffic_pos){true, (uint64_t)st.st_dev, (uint64_t)st.st_ino, end};
    return 0;
}

static int cmp_total_desc(const void *a, const void *b)
{
    const struct tkey *x = *(const struct tkey *const *)a, *y = *(const struct tkey *const *)b;
    uint64_t tx = x->a + x->b + x->c, ty = y->a + y->b + y->c;
    if (tx != ty)
        return tx > ty ? -1 : 1;
    return strcmp(x->key, y->key);
}

static int cmp_rejects_desc(const void *a, const void *b)
{
    const struct tkey *x = *(const struct tkey *const *)a, *y = *(const struct tkey *const *)b;
    if (x->b != y->b)
        return x->b > y->b ? -1 : 1;
    return cmp_total_desc(a, b);
}

/* A new array of pointers to the used entries of t, sorted with cmp. */
static struct tkey **table_sorted(const struct ttable *t, int (*cmp)(const void *, const void *))
{
    struct tkey **v = malloc((t->n ? t->n : 1) * sizeof(*v));
    size_t k = 0;
    if (!v)
        return NULL;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].key)
            v[k++] = &t->slots[i];
    }
    if (k > 1)
        qsort(v, k, sizeof(*v), cmp);
    return v;
}

static int add_client(struct report *r, const struct tkey *e)
{
    char disp[512];
    if (e->name)
        snprintf(disp, sizeof(disp), "%s[%s]", e->name, e->key);
    else
        snprintf(disp, sizeof(disp), "%s", e->key);
    return report_add_client(r, disp, e->a, e->b);
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp((*(const struct tkey *const *)a)->key, (*(const struct tkey *const *)b)->key);
}

/* One (client, service) of the lost-connection table with its stages. */
struct lost_row {
    const struct tkey *first; /* of the group, for the address and service */
    size_t n;                 /* entries (stages) in the group */
    uint64_t count;
};

static int cmp_lost_row(const void *a, const void *b)
{
    const struct lost_row *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->first->key, y->first->key);
}

static int cmp_count_desc(const void *a, const void *b)
{
    const struct tkey *x = *(const struct tkey *const *)a, *y = *(const struct tkey *const *)b;
    if (x->a != y->a)
        return x->a > y->a ? -1 : 1;
    return strcmp(x->key, y->key);
}

/* Length of "ADDR\tSERVICE" in a lost-connection key. */
static size_t lost_prefix(const char *key)
{
    const char *tab = strchr(key, '\t');
    const char *tab2 = tab ? strchr(tab + 1, '\t') : NULL;
    return tab2 ? (size_t)(tab2 - key) : strlen(key);
}

/* The lost-connection entries grouped by (client, service), the top max_rows by count,
 * each with its stages ("EHLO 453, CONNECT 10"). */
static int lost_to_report(const struct ttable *lost, struct report *r, size_t max_rows)
{
    if (!lost->n)
        return 0;
    struct tkey **v = table_sorted(lost, cmp_key);
    struct lost_row *g = malloc(lost->n * sizeof(*g));
    size_t ng = 0;
    int rc = 0;
    if (!v || !g) {
        free(v);
        free(g);
        return -ENOMEM;
    }
    for (size_t i = 0; i < lost->n; i++) {
        size_t pl = lost_prefix(v[i]->key);
        if (ng && lost_prefix(g[ng - 1].first->key) == pl &&
            strncmp(g[ng - 1].first->key, v[i]->key, pl) == 0) {
            g[ng - 1].n++;
            g[ng - 1].count += v[i]->a;
        } else {
            g[ng++] = (struct lost_row){v[i], 1, v[i]->a};
        }
    }
    qsort(g, ng, sizeof(*g), cmp_lost_row);
    for (size_t i = 0; rc == 0 && i < ng && i < max_rows; i++) {
        /* The group's entries are contiguous in v: find them, biggest stage first. */
        size_t at = 0;
        while (v[at] != g[i].first)
            at++;
        struct tkey **st = &v[at];
        qsort(st, g[i].n, sizeof(*st), cmp_count_desc);
        char stages[256] = "", client[512], service[128];
        size_t used = 0;
        for (size_t k = 0; k < g[i].n && used < sizeof(stages); k++) {
            const char *stage = strrchr(st[k]->key, '\t');
            int w = snprintf(stages + used, sizeof(stages) - used, "%s%s %llu", k ? ", " : "",
                             stage ? stage + 1 : "?", (unsigned long long)st[k]->a);
            used += w > 0 ? (size_t)w : 0;
        }
        const char *key = st[0]->key, *tab = strchr(key, '\t');
        const char *name = NULL;
        for (size_t k = 0; k < g[i].n && !name; k++)
            name = st[k]->name;
        size_t alen = tab ? (size_t)(tab - key) : strlen(key);
        if (name)
            snprintf(client, sizeof(client), "%s[%.*s]", name, (int)alen, key);
        else
            snprintf(client, sizeof(client), "%.*s", (int)alen, key);
        snprintf(service, sizeof(service), "%.*s", (int)(lost_prefix(key) - alen - (tab ? 1 : 0)),
                 tab ? tab + 1 : "");
        rc = report_add_lost(r, client, service[0] ? service : "smtpd", stages, g[i].count);
    }
    free(v);
    free(g);
    return rc;
}

/* SASL failures: the top max_rows clients and usernames. */
static int auth_to_report(const struct traffic *t, struct report *r, size_t max_rows)
{
    int rc = 0;
    for (int u = 0; u < 2 && rc == 0; u++) {
        const struct ttable *tab = u ? &t->users : &t->auth;
        if (!tab->n)
            continue;
        struct tkey **v = table_sorted(tab, cmp_count_desc);
        if (!v)
            return -ENOMEM;
        for (size_t i = 0; rc == 0 && i < tab->n && i < max_rows; i++) {
            char disp[512];
            if (!u && v[i]->name)
                snprintf(disp, sizeof(disp), "%s[%s]", v[i]->name, v[i]->key);
            else
                snprintf(disp, sizeof(disp), "%s", v[i]->key);
            rc = report_add_auth_failures(r, u == 1, disp, v[i]->a);
        }
        free(v);
    }
    return rc;
}

/* The deferral reasons of the top REPORT_BASELINE_DOMAINS domains of the sorted domain
 * entries v (the report keeps baselines for those only). */
static int dreasons_to_report(const struct traffic *t, struct report *r, struct tkey **v)
{
    size_t top = t->domains.n < REPORT_BASELINE_DOMAINS ? t->domains.n : REPORT_BASELINE_DOMAINS;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < t->dreasons.cap; i++) {
        const struct tkey *e = &t->dreasons.slots[i];
        const char *tab = e->key ? strchr(e->key, '\t') : NULL;
        const char *tab2 = tab ? strchr(tab + 1, '\t') : NULL;
        if (!tab2)
            continue;
        size_t dl = (size_t)(tab - e->key);
        for (size_t k = 0; k < top; k++) {
            if (strlen(v[k]->key) != dl || strncmp(v[k]->key, e->key, dl) != 0)
                continue;
            enum queue_reason_class cls = QUEUE_REASON_OTHER;
            for (int c = 0; c < QUEUE_REASON_COUNT; c++) {
                const char *name = queue_reason_class_str(c);
                if (strlen(name) == (size_t)(tab2 - tab - 1) &&
                    !strncmp(name, tab + 1, strlen(name)))
                    cls = (enum queue_reason_class)c;
            }
            rc = report_add_domain_reason(r, v[k]->key, cls, tab2 + 1, e->a);
            break;
        }
    }
    return rc;
}

int traffic_to_report(const struct traffic *t, struct report *r, size_t max_clients)
{
    int rc = 0;
    struct tkey **v = table_sorted(&t->domains, cmp_total_desc);
    if (!v)
        return -ENOMEM;
    uint64_t od = 0, of = 0, ob = 0;
    for (size_t i = 0; rc == 0 && i < t->domains.n; i++) {
        if (i < MAX_REPORT_DOMAINS)
            rc = report_add_traffic(r, v[i]->key, v[i]->a, v[i]->b, v[i]->c);
        else
            od += v[i]->a, of += v[i]->b, ob += v[i]->c;
    }
    if (rc == 0 && od + of + ob)
        rc = report_add_traffic(r, OTHER_KEY, od, of, ob);
    if (rc == 0)
        rc = dreasons_to_report(t, r, v);
    free(v);
    if (rc < 0)
        return rc;

    /* The busiest clients and the most rejected ones (a dictionary attack may connect
     * little); a client in both lists is marked so it is added once. */
    struct tkey **byc = table_sorted(&t->clients, cmp_total_desc);
    struct tkey **byr = table_sorted(&t->clients, cmp_rejects_desc);
    if (!byc || !byr) {
        free(byc);
        free(byr);
        return -ENOMEM;
    }
    size_t n = t->clients.n < max_clients ? t->clients.n : max_clients;
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = add_client(r, byc[i]);
    for (size_t i = 0; rc == 0 && i < n && byr[i]->b; i++) {
        bool dup = false;
        for (size_t k = 0; k < n && !dup; k++)
            dup = byc[k] == byr[i];
        if (!dup)
            rc = add_client(r, byr[i]);
    }
    free(byc);
    free(byr);

    for (size_t i = 0; rc == 0 && i < t->n_warnings; i++) {
        const struct twarn *w = &t->warnings[i];
        rc = report_add_warning(r, w->kind, w->detail[0] ? w->detail : NULL, w->count);
    }
    for (int s = MAILLOG_ANVIL_CONNECTION_RATE; rc == 0 && s <= MAILLOG_ANVIL_CACHE_SIZE; s++) {
        const struct tanvil *a = &t->anvil[s];
        if (a->seen)
            rc = report_add_anvil(r, anvil_stat_name((enum maillog_anvil_stat)s), a->peak,
                                  a->interval_s, a->key[0] ? a->key : NULL);
    }
    if (rc == 0)
        rc = report_add_log_totals(r, &t->log);
    if (rc == 0)
        rc = lost_to_report(&t->lost, r, max_clients);
    if (rc == 0)
        rc = auth_to_report(t, r, max_clients);
    for (int c = 0; rc == 0 && c < REPORT_REJECT_CLASS_COUNT; c++)
        rc = report_add_rejects(r, (enum report_reject_class)c, t->reject_classes[c]);
    for (size_t i = 0; rc == 0 && i < MAILLOG_PS_VERDICT_COUNT; i++)
        rc = report_add_postscreen(r, maillog_ps_verdicts[i], t->ps_verdicts[i]);
    return rc;
}
