/* queue: folds `postqueue -j` records into queue statistics. Lines are split here (so the
 * caller can hand over whatever read() returned), each line is one JSON object parsed with
 * jansson, and recipients are counted per queue, per domain and per deferral reason.
 * Tables are open-addressed hashes capped in size; overflow goes to "(other)". */
#include "queue.h"
#include "queue_senders.h"

#include "textutil.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_MAX_LINE (4u << 20)
#define DEFAULT_MAX_DOMAINS 10000u
#define DEFAULT_MAX_REASONS 16u
#define DEFAULT_MAX_DSN 64u
#define DOMAIN_KEY_MAX 255
#define REASON_LOWER_MAX 1024

/* A domain with the bookkeeping callers need not see. */
struct dom_entry {
    struct queue_domain pub;
    uint32_t hash;
    size_t reasons_cap;
    uint64_t last_record; /* record serial that last counted a message here */
};

struct queue_stats {
    struct queue_limits lim;
    struct queue_totals totals[QUEUE_COUNT];
    uint64_t records, malformed, overlong;
    uint64_t class_count[QUEUE_REASON_COUNT];

    struct queue_reason *dsns; /* max_dsn + 1 slots; the overflow entry has dsn "" */
    size_t n_dsns;

    struct dom_entry **tab; /* hash table, size a power of two */
    size_t tab_size;
    struct dom_entry **doms; /* insertion order, for listing */
    size_t n_doms, cap_doms;
    struct dom_entry *other;

    /* Partial line carried between feeds, or the tail of an over-long line being skipped. */
    char *carry;
    size_t carry_len, carry_cap;
    bool skipping;

    /* Scratch per record: one resolved domain per recipient. */
    struct dom_entry **scratch;
    size_t scratch_cap;

    struct queue_senders *senders; /* messages per sender domain (queue_senders.c) */

    /* The last reason classified: bulk mail repeats the same text many times. */
    char *last_reason;
    enum queue_reason_class last_cls;
    char last_dsn[QUEUE_DSN_SIZE];
};

static const char *const queue_names[QUEUE_COUNT] = {"maildrop", "incoming", "active", "deferred",
                                                     "hold"};
static const char *const class_names[QUEUE_REASON_COUNT] = {"connection_refused",
                                                            "connection_timeout",
                                                            "throttle",
                                                            "dns",
                                                            "tls",
                                                            "mailbox",
                                                            "policy",
                                                            "other"};
static const unsigned bucket_limits[QUEUE_AGE_BUCKETS] = {5,   10,  20,  40,   80,
                                                          160, 320, 640, 1280, 0};

const char *queue_name_str(enum queue_name q)
{
    return (unsigned)q < QUEUE_COUNT ? queue_names[q] : "?";
}

int queue_name_parse(const char *s, enum queue_name *out)
{
    for (unsigned i = 0; i < QUEUE_COUNT; i++) {
        if (strcmp(s, queue_names[i]) == 0) {
            *out = (enum queue_name)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *queue_reason_class_str(enum queue_reason_class c)
{
    return (unsigned)c < QUEUE_REASON_COUNT ? class_names[c] : "?";
}

unsigned queue_age_bucket(int64_t age_seconds)
{
    int64_t minutes = age_seconds < 0 ? 0 : age_seconds / 60;
    for (unsigned i = 0; i + 1 < QUEUE_AGE_BUCKETS; i++) {
        if (minutes < (int64_t)bucket_limits[i])
            return i;
    }
    return QUEUE_AGE_BUCKETS - 1;
}

unsigned queue_age_bucket_limit(unsigned i)
{
    return i < QUEUE_AGE_BUCKETS ? bucket_limits[i] : 0;
}

/* ---- reason taxonomy ---------------------------------------------------------------- */

/* Finds an enhanced status code "c.s.d" (class 2/4/5, then 1-3 digits twice) standing
 * alone: not part of an IP address like 10.4.2.1 or 4.2.2.1. */
static bool find_dsn(const char *s, char *dsn)
{
    for (const char *p = s; *p; p++) {
        if (*p != '2' && *p != '4' && *p != '5')
            continue;
        if (p > s && (isalnum((unsigned char)p[-1]) || p[-1] == '.'))
            continue;
        if (p[1] != '.')
            continue;
        const char *q = p + 2;
        int n1 = 0, n2 = 0;
        while (isdigit((unsigned char)*q) && n1 < 4) {
            q++;
            n1++;
        }
        if (n1 < 1 || n1 > 3 || *q != '.')
            continue;
        q++;
        while (isdigit((unsigned char)*q) && n2 < 4) {
            q++;
            n2++;
        }
        if (n2 < 1 || n2 > 3 || *q == '.' || isalnum((unsigned char)*q))
            continue;
        size_t len = (size_t)(q - p);
        memcpy(dsn, p, len);
        dsn[len] = '\0';
        return true;
    }
    return false;
}

/* The SMTP reply code of a remote answer: after "said: " or "talk to me: ", or leading
 * the text. Returns 0 when there is none. */
static int find_reply_code(const char *s)
{
    static const char *const marks[] = {"said: ", "talk to me: ", NULL};
    const char *p = NULL;
    for (int i = 0; marks[i] && !p; i++) {
        p = strstr(s, marks[i]);
        if (p)
            p += strlen(marks[i]);
    }
    if (!p)
        p = s;
    if (p[0] >= '2' && p[0] <= '5' && isdigit((unsigned char)p[1]) &&
        isdigit((unsigned char)p[2]) && (p[3] == ' ' || p[3] == '-' || p[3] == '\0'))
        return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    return 0;
}

static bool has_any(const char *lower, const char *const *needles)
{
    for (; *needles; needles++) {
        if (strstr(lower, *needles))
            return true;
    }
    return false;
}

/* True if word occurs in lower with no letter or digit on either side. */
static bool has_word(const char *lower, const char *word)
{
    size_t wl = strlen(word);
    for (const char *p = lower; (p = strstr(p, word)) != NULL; p++) {
        bool left = p == lower || !isalnum((unsigned char)p[-1]);
        bool right = !isalnum((unsigned char)p[wl]);
        if (left && right)
            return true;
    }
    return false;
}

/* DSN subject.detail compare: dsn_is(d, '2', "2") is true for "4.2.2" and "5.2.2". */
static bool dsn_subject(const char *dsn, char subject)
{
    return dsn[0] && dsn[1] == '.' && dsn[2] == subject && dsn[3] == '.';
}

static bool dsn_detail(const char *dsn, char subject, const char *detail)
{
    return dsn_subject(dsn, subject) && strcmp(dsn + 4, detail) == 0;
}

static const char *const kw_dns[] = {"host or domain name not found",
                                     "name service error",
                                     "no mx host",
                                     "host not found",
                                     "domain not found",
                                     "nxdomain",
                                     NULL};
static const char *const kw_timeout[] = {"connection timed out", "timed out", "timeout", NULL};
static const char *const kw_tls[] = {"starttls", "certificate", "tls ", "tls:", "ssl", NULL};
static const char *const kw_mailbox[] = {"mailbox full",
                                         "mailbox is full",
                                         "over quota",
                                         "quota exceeded",
                                         "exceeded storage",
                                         "insufficient storage",
                                         "user unknown",
                                         "unknown user",
                                         "no such user",
                                         "mailbox not found",
                                         "no such mailbox",
                                         "user not found",
                                         NULL};
static const char *const kw_throttle[] = {
    "greylist",        "graylist",   "try again later", "try later",
    "too many",        "throttl",    "slow down",       "temporarily deferred",
    "deferred due to", "rate limit", "ratelimit",       NULL};
static const char *const kw_policy[] = {"blocked",    "spam",   "blacklist",  "blocklist",
                                        "block list", "denied", "reputation", "policy",
                                        "rbl",        "dnsbl",  NULL};

enum queue_reason_class queue_reason_classify(const char *reason, char *dsn)
{
    dsn[0] = '\0';
    if (!reason)
        return QUEUE_REASON_OTHER;

    char lower[REASON_LOWER_MAX];
    size_t n = 0;
    for (; reason[n] && n + 1 < sizeof(lower); n++)
        lower[n] = (char)tolower((unsigned char)reason[n]);
    lower[n] = '\0';

    bool have_dsn = find_dsn(lower, dsn);
    int code = find_reply_code(lower);
    enum queue_reason_class cls;
    const char *derived = NULL;

    /* Order matters: DNS texts say "try again", refused/timed-out connections are the
     * network failing before any SMTP reply, and mailbox codes 4.2.2 sit inside 4.2.x. */
    if (has_any(lower, kw_dns) ||
        (have_dsn && (dsn_detail(dsn, '4', "3") || dsn_detail(dsn, '4', "4")))) {
        cls = QUEUE_REASON_DNS;
        /* Postfix: a name server failure is 4.4.3, an MX without usable address 4.4.4. */
        derived = strstr(lower, "no mx host") ? "4.4.4" : "4.4.3";
    } else if (strstr(lower, "connection refused")) {
        cls = QUEUE_REASON_CONN_REFUSED;
        derived = "4.4.1";
    } else if (!code && has_any(lower, kw_timeout)) {
        cls = QUEUE_REASON_CONN_TIMEOUT;
        derived = "4.4.1";
    } else if (has_any(lower, kw_tls) || has_word(lower, "tls")) {
        cls = QUEUE_REASON_TLS;
        /* Postfix: STARTTLS missing where required is 4.7.4, a failed handshake 4.7.5. */
        derived = strstr(lower, "not offered") ? "4.7.4" : "4.7.5";
    } else if (has_any(lower, kw_mailbox) ||
               (have_dsn && (dsn_detail(dsn, '2', "2") || dsn_detail(dsn, '1', "1")))) {
        cls = QUEUE_REASON_MAILBOX;
    } else if (has_any(lower, kw_throttle) || has_word(lower, "rate")) {
        cls = QUEUE_REASON_THROTTLE;
    } else if (has_any(lower, kw_policy) || (have_dsn && dsn_subject(dsn, '7'))) {
        cls = QUEUE_REASON_POLICY;
    } else if (code == 421 || (have_dsn && dsn[0] == '4' && dsn_subject(dsn, '2'))) {
        cls = QUEUE_REASON_THROTTLE;
    } else if (has_any(lower, kw_timeout)) {
        cls = QUEUE_REASON_CONN_TIMEOUT;
    } else {
        cls = QUEUE_REASON_OTHER;
        if (strstr(lower, "lost connection"))
            derived = "4.4.2";
        else if (strstr(lower, "mail transport"))
            derived = "4.3.0"; /* qmgr: a delivery agent failed or is missing */
    }

    if (!have_dsn) {
        if (code >= 400 && code < 600)
            strcpy(dsn, code >= 500 ? "5.0.0" : "4.0.0");
        else
            strcpy(dsn, derived ? derived : "4.0.0");
    }
    return cls;
}

/* ---- tables ------------------------------------------------------------------------- */

struct queue_stats *queue_stats_new(const struct queue_limits *lim)
{
    struct queue_stats *qs = calloc(1, sizeof(*qs));
    if (!qs)
        return NULL;
    if (lim)
        qs->lim = *lim;
    if (!qs->lim.max_line)
        qs->lim.max_line = DEFAULT_MAX_LINE;
    if (!qs->lim.max_domains)
        qs->lim.max_domains = DEFAULT_MAX_DOMAINS;
    if (!qs->lim.max_reasons)
        qs->lim.max_reasons = DEFAULT_MAX_REASONS;
    if (!qs->lim.max_dsn)
        qs->lim.max_dsn = DEFAULT_MAX_DSN;
    qs->dsns = calloc(qs->lim.max_dsn + 1, sizeof(*qs->dsns));
    qs->tab_size = 64;
    qs->tab = calloc(qs->tab_size, sizeof(*qs->tab));
    qs->senders = queue_senders_new(qs->lim.max_domains);
    if (!qs->dsns || !qs->tab || !qs->senders) {
        queue_stats_free(qs);
        return NULL;
    }
    return qs;
}

static void dom_free(struct dom_entry *d)
{
    if (!d)
        return;
    free(d->pub.name);
    free(d->pub.reasons);
    free(d);
}

void queue_stats_free(struct queue_stats *qs)
{
    if (!qs)
        return;
    for (size_t i = 0; i < qs->n_doms; i++)
        dom_free(qs->doms[i]);
    free(qs->doms);
    free(qs->tab);
    free(qs->dsns);
    free(qs->carry);
    free(qs->scratch);
    free(qs->last_reason);
    queue_senders_free(qs->senders);
    free(qs);
}

static struct dom_entry *dom_new(const char *name, size_t len, uint32_t hash)
{
    struct dom_entry *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->pub.name = malloc(len + 1);
    if (!d->pub.name) {
        free(d);
        return NULL;
    }
    memcpy(d->pub.name, name, len);
    d->pub.name[len] = '\0';
    d->hash = hash;
    return d;
}

static int dom_list_append(struct queue_stats *qs, struct dom_entry *d)
{
    if (qs->n_doms == qs->cap_doms) {
        size_t cap = qs->cap_doms ? qs->cap_doms * 2 : 64;
        struct dom_entry **nd = realloc(qs->doms, cap * sizeof(*nd));
        if (!nd)
            return -ENOMEM;
        qs->doms = nd;
        qs->cap_doms = cap;
    }
    qs->doms[qs->n_doms++] = d;
    return 0;
}

static int tab_grow(struct queue_stats *qs)
{
    size_t size = qs->tab_size * 2;
    struct dom_entry **t = calloc(size, sizeof(*t));
    if (!t)
        return -ENOMEM;
    for (size_t i = 0; i < qs->tab_size; i++) {
        struct dom_entry *d = qs->tab[i];
        if (!d)
            continue;
        size_t j = d->hash & (size - 1);
        while (t[j])
            j = (j + 1) & (size - 1);
        t[j] = d;
    }
    free(qs->tab);
    qs->tab = t;
    qs->tab_size = size;
    return 0;
}

/* Finds or creates the entry of a lowercased domain; past the cap returns "(other)". */
static int dom_get(struct queue_stats *qs, const char *name, size_t len, struct dom_entry **out)
{
    uint32_t h = fnv32(name, len);
    size_t j = h & (qs->tab_size - 1);
    for (struct dom_entry *d; (d = qs->tab[j]) != NULL; j = (j + 1) & (qs->tab_size - 1)) {
        if (d->hash == h && strncmp(d->pub.name, name, len) == 0 && d->pub.name[len] == '\0') {
            *out = d;
            return 0;
        }
    }
    if (qs->n_doms - (qs->other ? 1 : 0) >= qs->lim.max_domains) {
        if (!qs->other) {
            struct dom_entry *o = dom_new(QUEUE_OTHER_DOMAIN, strlen(QUEUE_OTHER_DOMAIN), 0);
            if (!o || dom_list_append(qs, o) < 0) {
                dom_free(o);
                return -ENOMEM;
            }
            qs->other = o;
        }
        *out = qs->other;
        return 0;
    }
    if ((qs->n_doms + 1) * 2 > qs->tab_size) {
        if (tab_grow(qs) < 0)
            return -ENOMEM;
        j = h & (qs->tab_size - 1);
        while (qs->tab[j])
            j = (j + 1) & (qs->tab_size - 1);
    }
    struct dom_entry *d = dom_new(name, len, h);
    if (!d || dom_list_append(qs, d) < 0) {
        dom_free(d);
        return -ENOMEM;
    }
    qs->tab[j] = d;
    *out = d;
    return 0;
}

/* The lowercased domain of an address into buf (DOMAIN_KEY_MAX + 1 bytes). */
static size_t address_domain(const char *addr, char *buf)
{
    const char *at = strrchr(addr, '@');
    if (!at || !at[1]) {
        strcpy(buf, QUEUE_LOCAL_DOMAIN);
        return strlen(QUEUE_LOCAL_DOMAIN);
    }
    size_t n = 0;
    for (const char *p = at + 1; *p && n < DOMAIN_KEY_MAX; p++)
        buf[n++] = (char)tolower((unsigned char)*p);
    /* A trailing dot names the same domain. */
    while (n > 1 && buf[n - 1] == '.')
        n--;
    buf[n] = '\0';
    return n;
}

/* Finds the (class, dsn) slot in a reason table of at most max distinct entries plus one
 * overflow slot. Grows the table when cap is given (domain tables); NULL on ENOMEM. */
static struct queue_reason *reason_slot(struct queue_reason **tabp, size_t *n, size_t *cap,
                                        size_t max, enum queue_reason_class cls, const char *dsn,
                                        const char *sample)
{
    struct queue_reason *tab = *tabp;
    for (size_t i = 0; i < *n; i++) {
        if (tab[i].cls == cls && strcmp(tab[i].dsn, dsn) == 0)
            return &tab[i];
    }
    size_t distinct = *n;
    bool overflow = distinct >= max;
    if (overflow) {
        /* The overflow slot: class other and an empty DSN, which no real reason has. */
        for (size_t i = 0; i < *n; i++) {
            if (tab[i].cls == QUEUE_REASON_OTHER && tab[i].dsn[0] == '\0')
                return &tab[i];
        }
    }
    if (cap && *n == *cap) {
        size_t nc = *cap ? *cap * 2 : 2;
        if (nc > max + 1)
            nc = max + 1;
        struct queue_reason *nt = realloc(tab, nc * sizeof(*nt));
        if (!nt)
            return NULL;
        *tabp = tab = nt;
        *cap = nc;
    }
    struct queue_reason *r = &tab[(*n)++];
    memset(r, 0, sizeof(*r));
    if (overflow) {
        r->cls = QUEUE_REASON_OTHER;
        strcpy(r->sample, "(other reasons)");
    } else {
        r->cls = cls;
        strcpy(r->dsn, dsn);
        size_t sl = strlen(sample);
        if (sl >= sizeof(r->sample))
            sl = sizeof(r->sample) - 1;
        memcpy(r->sample, sample, sl);
        r->sample[sl] = '\0';
    }
    return r;
}

/* Classifies with a one-entry cache: a deferred queue repeats one text per destination. */
static enum queue_reason_class classify_cached(struct queue_stats *qs, const char *reason,
                                               char *dsn)
{
    if (qs->last_reason && strcmp(qs->last_reason, reason) == 0) {
        strcpy(dsn, qs->last_dsn);
        return qs->last_cls;
    }
    enum queue_reason_class cls = queue_reason_classify(reason, dsn);
    char *copy = strdup(reason);
    if (copy) {
        free(qs->last_reason);
        qs->last_reason = copy;
        qs->last_cls = cls;
        strcpy(qs->last_dsn, dsn);
    }
    return cls;
}

/* ---- records ------------------------------------------------------------------------ */

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isspace((unsigned char)s[i]))
            return false;
    }
    return true;
}

/* A recipient's reason: delay_reason (why it is deferred), else Postfix 3.11's
 * bounce_reason or other_reason; null counts as absent. NULL when it has none. */
static const char *rcpt_reason(json_t *r)
{
    static const char *const keys[] = {"delay_reason", "bounce_reason", "other_reason"};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        json_t *v = json_object_get(r, keys[k]);
        if (json_is_string(v))
            return json_string_value(v);
    }
    return NULL;
}

/* Checks a record's shape (orig_address and the reasons: a string, null or absent); fills
 * the fields a count needs. */
static bool record_valid(json_t *rec, enum queue_name *q, json_int_t *arrival, json_int_t *size,
                         json_t **rcpts)
{
    if (!json_is_object(rec))
        return false;
    json_t *qn = json_object_get(rec, "queue_name");
    json_t *at = json_object_get(rec, "arrival_time");
    json_t *ms = json_object_get(rec, "message_size");
    json_t *rc = json_object_get(rec, "recipients");
    if (!json_is_string(qn) || queue_name_parse(json_string_value(qn), q) < 0)
        return false;
    if (!json_is_integer(at) || json_integer_value(at) < 0)
        return false;
    /* message_size is absent for a message still being received (maildrop/incoming). */
    if (ms && (!json_is_integer(ms) || json_integer_value(ms) < 0))
        return false;
    if (!json_is_array(rc))
        return false;
    size_t i;
    json_t *r;
    json_array_foreach(rc, i, r)
    {
        if (!json_is_object(r) || !json_is_string(json_object_get(r, "address")))
            return false;
        static const char *const opt_strings[] = {"delay_reason", "bounce_reason", "other_reason",
                                                  "orig_address"};
        for (size_t k = 0; k < sizeof(opt_strings) / sizeof(opt_strings[0]); k++) {
            json_t *v = json_object_get(r, opt_strings[k]);
            if (v && !json_is_string(v) && !json_is_null(v))
                return false;
        }
    }
    *arrival = json_integer_value(at);
    *size = ms ? json_integer_value(ms) : 0;
    *rcpts = rc;
    return true;
}

static int count_record(struct queue_stats *qs, enum queue_name q, int64_t arrival, int64_t size,
                        json_t *rcpts)
{
    size_t n = json_array_size(rcpts);
    if (n > qs->scratch_cap) {
        struct dom_entry **s = realloc(qs->scratch, n * sizeof(*s));
        if (!s)
            return -ENOMEM;
        qs->scratch = s;
        qs->scratch_cap = n;
    }
    /* First resolve every domain and reserve every reason slot, so an allocation failure
     * leaves no half-counted record (a new domain with zero counts is not listed). */
    char key[DOMAIN_KEY_MAX + 1];
    char dsn[QUEUE_DSN_SIZE];
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(rcpts, i);
        size_t kl = address_domain(json_string_value(json_object_get(r, "address")), key);
        int rc = dom_get(qs, key, kl, &qs->scratch[i]);
        if (rc < 0)
            return rc;
        const char *text = rcpt_reason(r);
        if (text) {
            struct dom_entry *d = qs->scratch[i];
            enum queue_reason_class cls = classify_cached(qs, text, dsn);
            if (!reason_slot(&d->pub.reasons, &d->pub.n_reasons, &d->reasons_cap,
                             qs->lim.max_reasons, cls, dsn, text))
                return -ENOMEM;
        }
    }

    uint64_t serial = ++qs->records;
    struct queue_totals *t = &qs->totals[q];
    t->messages++;
    t->recipients += n;
    t->bytes += (uint64_t)size;
    if (!t->oldest_arrival || arrival < t->oldest_arrival)
        t->oldest_arrival = arrival;
    unsigned bucket = queue_age_bucket(qs->lim.now - arrival);

    for (size_t i = 0; i < n; i++) {
        struct dom_entry *d = qs->scratch[i];
        struct queue_domain *p = &d->pub;
        p->recipients++;
        p->queue_recipients[q]++;
        p->age_buckets[bucket]++;
        if (!p->oldest_arrival || arrival < p->oldest_arrival)
            p->oldest_arrival = arrival;
        if (d->last_record != serial) {
            d->last_record = serial;
            p->messages++;
        }
        const char *text = rcpt_reason(json_array_get(rcpts, i));
        if (!text)
            continue;
        enum queue_reason_class cls = classify_cached(qs, text, dsn);
        /* Found, not created: the slot was reserved above. */
        reason_slot(&p->reasons, &p->n_reasons, &d->reasons_cap, qs->lim.max_reasons, cls, dsn,
                    text)
            ->count++;
        p->reasons_total++;
        qs->class_count[cls]++;
        size_t ncap = qs->lim.max_dsn + 1;
        /* The global DSN table is keyed by DSN alone: class is that of its first text. */
        struct queue_reason *g = NULL;
        for (size_t k = 0; k < qs->n_dsns; k++) {
            if (strcmp(qs->dsns[k].dsn, dsn) == 0) {
                g = &qs->dsns[k];
                break;
            }
        }
        if (!g)
            g = reason_slot(&qs->dsns, &qs->n_dsns, &ncap, qs->lim.max_dsn, cls, dsn, text);
        if (g)
            g->count++;
    }
    return 0;
}

/* The sender table's row of a record's sender: the null sender ("MAILER-DAEMON", "" or
 * absent) or the sender's domain. NULL on ENOMEM. */
static struct queue_sender *sender_row(struct queue_stats *qs, json_t *sender)
{
    const char *snd = json_is_string(sender) ? json_string_value(sender) : "";
    char key[DOMAIN_KEY_MAX + 1];
    if (!snd[0] || strcmp(snd, QUEUE_NULL_SENDER) == 0)
        return queue_senders_get(qs->senders, QUEUE_NULL_SENDER);
    address_domain(snd, key);
    return queue_senders_get(qs->senders, key);
}

int queue_stats_senders(const struct queue_stats *qs, const struct queue_sender ***out, size_t *n)
{
    return queue_senders_sorted(qs->senders, out, n);
}

int queue_stats_add_line(struct queue_stats *qs, const char *line, size_t len)
{
    if (blank(line, len))
        return 0;
    json_error_t err;
    json_t *rec = json_loadb(line, len, 0, &err);
    enum queue_name q;
    json_int_t arrival, size;
    json_t *rcpts;
    if (!rec || !record_valid(rec, &q, &arrival, &size, &rcpts)) {
        json_decref(rec);
        qs->malformed++;
        return -EINVAL;
    }
    /* The sender's row first: an allocation failure then leaves nothing counted. */
    struct queue_sender *snd = sender_row(qs, json_object_get(rec, "sender"));
    int rc = snd ? count_record(qs, q, (int64_t)arrival, (int64_t)size, rcpts) : -ENOMEM;
    if (rc == 0) {
        snd->messages++;
        snd->queue_messages[q]++;
    }
    json_decref(rec);
    return rc;
}

static int carry_append(struct queue_stats *qs, const char *buf, size_t len)
{
    if (qs->carry_len + len > qs->carry_cap) {
        size_t cap = qs->carry_cap ? qs->carry_cap : 4096;
        while (cap < qs->carry_len + len)
            cap *= 2;
        char *nc = realloc(qs->carry, cap);
        if (!nc)
            return -ENOMEM;
        qs->carry = nc;
        qs->carry_cap = cap;
    }
    memcpy(qs->carry + qs->carry_len, buf, len);
    qs->carry_len += len;
    return 0;
}

int queue_stats_feed(struct queue_stats *qs, const char *buf, size_t len)
{
    int ret = 0;
    while (len > 0) {
        const char *nl = memchr(buf, '\n', len);
        size_t part = nl ? (size_t)(nl - buf) : len;
        if (qs->skipping) {
            /* Inside an over-long line: drop bytes up to its end. */
        } else if (qs->carry_len + part > qs->lim.max_line) {
            qs->overlong++;
            qs->skipping = true;
            qs->carry_len = 0;
        } else if (nl && qs->carry_len == 0) {
            /* The common case: a whole line inside the chunk, parsed in place. */
            int rc = queue_stats_add_line(qs, buf, part);
            if (rc == -ENOMEM)
                ret = rc;
        } else {
            int rc = carry_append(qs, buf, part);
            if (rc < 0) {
                /* Drop this line rather than parse half of it. */
                ret = rc;
                qs->skipping = true;
                qs->carry_len = 0;
            } else if (nl) {
                rc = queue_stats_add_line(qs, qs->carry, qs->carry_len);
                if (rc == -ENOMEM)
                    ret = rc;
                qs->carry_len = 0;
            }
        }
        if (nl) {
            qs->skipping = false;
            part++;
        }
        buf += part;
        len -= part;
    }
    return ret;
}

int queue_stats_finish(struct queue_stats *qs)
{
    int rc = 0;
    if (!qs->skipping && qs->carry_len > 0) {
        rc = queue_stats_add_line(qs, qs->carry, qs->carry_len);
        if (rc == -EINVAL)
            rc = 0;
    }
    qs->carry_len = 0;
    qs->skipping = false;
    return rc;
}

/* ---- results ------------------------------------------------------------------------ */

const struct queue_totals *queue_stats_totals(const struct queue_stats *qs, enum queue_name q)
{
    static const struct queue_totals none;
    return (unsigned)q < QUEUE_COUNT ? &qs->totals[q] : &none;
}

void queue_stats_counts(const struct queue_stats *qs, uint64_t *records, uint64_t *malformed,
                        uint64_t *overlong)
{
    if (records)
        *records = qs->records;
    if (malformed)
        *malformed = qs->malformed;
    if (overlong)
        *overlong = qs->overlong;
}

uint64_t queue_stats_class_count(const struct queue_stats *qs, enum queue_reason_class c)
{
    return (unsigned)c < QUEUE_REASON_COUNT ? qs->class_count[c] : 0;
}

static int reason_cmp(const void *a, const void *b)
{
    const struct queue_reason *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    if (x->cls != y->cls)
        return x->cls < y->cls ? -1 : 1;
    return strcmp(x->dsn, y->dsn);
}

static int reason_ptr_cmp(const void *a, const void *b)
{
    return reason_cmp(*(const struct queue_reason *const *)a,
                      *(const struct queue_reason *const *)b);
}

size_t queue_stats_dsns(const struct queue_stats *qs, const struct queue_reason **out)
{
    /* Sorting in place keeps the API const for callers; the order is not observable
     * otherwise because lookups scan the whole (small) table. */
    if (qs->n_dsns > 1)
        qsort(((struct queue_stats *)qs)->dsns, qs->n_dsns, sizeof(*qs->dsns), reason_cmp);
    *out = qs->dsns;
    return qs->n_dsns;
}

static int domain_cmp(const void *a, const void *b)
{
    const struct queue_domain *x = *(const struct queue_domain *const *)a;
    const struct queue_domain *y = *(const struct queue_domain *const *)b;
    if (x->recipients != y->recipients)
        return x->recipients > y->recipients ? -1 : 1;
    return strcmp(x->name, y->name);
}

int queue_stats_domains(const struct queue_stats *qs, const struct queue_domain ***out, size_t *n)
{
    const struct queue_domain **arr = malloc((qs->n_doms ? qs->n_doms : 1) * sizeof(*arr));
    if (!arr)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < qs->n_doms; i++) {
        if (qs->doms[i]->pub.recipients > 0)
            arr[k++] = &qs->doms[i]->pub;
    }
    if (k > 1)
        qsort(arr, k, sizeof(*arr), domain_cmp);
    *out = arr;
    *n = k;
    return 0;
}

const struct queue_domain *queue_stats_domain(const struct queue_stats *qs, const char *name)
{
    char key[DOMAIN_KEY_MAX + 1];
    size_t n = 0;
    for (; name[n] && n < DOMAIN_KEY_MAX; n++)
        key[n] = (char)tolower((unsigned char)name[n]);
    key[n] = '\0';
    if (strcmp(key, QUEUE_OTHER_DOMAIN) == 0)
        return qs->other ? &qs->other->pub : NULL;
    uint32_t h = fnv32(key, n);
    for (size_t j = h & (qs->tab_size - 1); qs->tab[j]; j = (j + 1) & (qs->tab_size - 1)) {
        if (qs->tab[j]->hash == h && strcmp(qs->tab[j]->pub.name, key) == 0)
            return qs->tab[j]->pub.recipients ? &qs->tab[j]->pub : NULL;
    }
    return NULL;
}

size_t queue_domain_top_reasons(const struct queue_domain *d, const struct queue_reason **out,
                                size_t max)
{
    size_t n = d->n_reasons;
    const struct queue_reason *tmp[64];
    const struct queue_reason **all = n <= 64 ? tmp : malloc(n * sizeof(*all));
    if (!all)
        return 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (d->reasons[i].count)
            all[k++] = &d->reasons[i];
    }
    if (k > 1)
        qsort(all, k, sizeof(*all), reason_ptr_cmp);
    if (k > max)
        k = max;
    memcpy(out, all, k * sizeof(*out));
    if (all != tmp)
        free(all);
    return k;
}
