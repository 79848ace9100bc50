/* overrides: profile parsing and validation against Postfix's own view (postconf -d
 * names, master.cf services). Everything that reaches a command line passes a whitelist
 * here first; overrides_journal.c keeps the journal and builds the argv lists from it,
 * and the controller only runs what these functions return. */
#include "overrides.h"
#include "overrides_impl.h"
#include "textutil.h"

#include "allowlist.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_NAME 128
#define MAX_PRIOR 65536

static char *xstrndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* --- character sets --------------------------------------------------------------- */

/* Postfix parameter names: letters, digits, underscore. A leading letter or digit also
 * keeps any argv word built from it from looking like an option to postconf. */
bool overrides_valid_param_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME || !is_alnum(s[0]))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && s[i] != '_')
            return false;
    return true;
}

/* master.cf service names: "smtp", "587", "127.0.0.1:2525", "[::1]:25". */
bool overrides_valid_service(const char *s, bool allow_star)
{
    if (allow_star && strcmp(s, "*") == 0)
        return true;
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME || !(is_alnum(s[0]) || s[0] == '['))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum(s[i]) && !strchr("._:-[]", s[i]))
            return false;
    return true;
}

bool overrides_valid_type(const char *s)
{
    static const char *const types[] = {"inet", "unix", "unix-dgram", "fifo", "pass"};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(s, types[i]) == 0)
            return true;
    return false;
}

/* A value postsurge writes: printable ASCII without the characters Postfix values do
 * not need and that would mean something to a shell or to main.cf's syntax; a newline
 * would start a new main.cf line. Braces must balance (Postfix's ${name?{a}:{b}}). */
const char *overrides_value_problem(const char *s, bool master)
{
    size_t n = strlen(s);
    if (n > OVERRIDES_MAX_VALUE)
        return "value too long";
    int depth = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7e)
            return "control or non-ASCII character in value";
        if (strchr("\"'\\;&|<>`#", c))
            return "forbidden character in value";
        if (master && c == ' ')
            return "master.cf value with a space (postconf -P cannot write it)";
        if (c == '{')
            depth++;
        if (c == '}' && --depth < 0)
            return "unbalanced braces in value";
    }
    return depth ? "unbalanced braces in value" : NULL;
}

/* A prior value comes from the administrator's files through postconf; it is passed
 * back as one argv word, so only line structure matters. */
bool overrides_valid_prior(const char *s)
{
    size_t n = strlen(s);
    if (n > MAX_PRIOR)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

/* --- profile ---------------------------------------------------------------------- */

static void entry_clear(struct overrides_entry *e)
{
    free(e->service);
    free(e->type);
    free(e->name);
    free(e->value);
    memset(e, 0, sizeof(*e));
}

void overrides_profile_free(struct overrides_profile *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        entry_clear(&p->entries[i]);
    free(p->entries);
    free(p);
}

static int profile_push(struct overrides_profile *p, size_t *cap, struct overrides_entry *e)
{
    if (p->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        struct overrides_entry *ne = realloc(p->entries, ncap * sizeof(*ne));
        if (!ne)
            return -ENOMEM;
        p->entries = ne;
        *cap = ncap;
    }
    p->entries[p->n++] = *e;
    memset(e, 0, sizeof(*e));
    return 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void trim(const char **b, const char **e)
{
    while (*b < *e && is_space(**b))
        (*b)++;
    while (*e > *b && is_space((*e)[-1]))
        (*e)--;
}

/* Splits "key=value" (or "{ key = value }") into an entry. */
static int parse_entry(const char *tb, const char *te, enum overrides_file file,
                       struct overrides_entry *e, char *err, size_t errlen)
{
    if (*tb == '{') {
        tb++;
        te--; /* the caller checked the closing brace */
        trim(&tb, &te);
    }
    const char *eq = memchr(tb, '=', (size_t)(te - tb));
    if (!eq) {
        seterr(err, errlen, "\"%.*s\": expected name=value", (int)(te - tb), tb);
        return -EINVAL;
    }
    const char *kb = tb, *ke = eq, *vb = eq + 1, *ve = te;
    trim(&kb, &ke);
    trim(&vb, &ve);
    e->file = file;
    e->value = xstrndup(vb, (size_t)(ve - vb));
    if (!e->value)
        return -ENOMEM;
    if (file == OVERRIDES_MAIN) {
        e->name = xstrndup(kb, (size_t)(ke - kb));
        if (!e->name)
            return -ENOMEM;
    } else {
        const char *s1 = memchr(kb, '/', (size_t)(ke - kb));
        const char *s2 = s1 ? memchr(s1 + 1, '/', (size_t)(ke - s1 - 1)) : NULL;
        if (!s2) {
            seterr(err, errlen, "\"%.*s\": expected service/type/name=value", (int)(te - tb), tb);
            return -EINVAL;
        }
        e->service = xstrndup(kb, (size_t)(s1 - kb));
        e->type = xstrndup(s1 + 1, (size_t)(s2 - s1 - 1));
        e->name = xstrndup(s2 + 1, (size_t)(ke - s2 - 1));
        if (!e->service || !e->type || !e->name)
            return -ENOMEM;
        if (!overrides_valid_service(e->service, true)) {
            seterr(err, errlen, "\"%s\": bad master.cf service name", e->service);
            return -EINVAL;
        }
        if (!overrides_valid_type(e->type)) {
            seterr(err, errlen, "\"%s\": bad master.cf service type", e->type);
            return -EINVAL;
        }
    }
    if (!overrides_valid_param_name(e->name)) {
        seterr(err, errlen, "\"%s\": bad parameter name", e->name);
        return -EINVAL;
    }
    const char *why = overrides_value_problem(e->value, file == OVERRIDES_MASTER);
    if (why) {
        seterr(err, errlen, "%s: %s", e->name, why);
        return -EINVAL;
    }
    return 0;
}

static int parse_spec(const char *spec, enum overrides_file file, struct overrides_profile *p,
                      size_t *cap, char *err, size_t errlen)
{
    if (!spec)
        return 0;
    const char *s = spec;
    for (;;) {
        while (is_space(*s))
            s++;
        if (!*s)
            return 0;
        const char *tb = s;
        int depth = 0;
        /* A token ends at whitespace outside braces; "{ n = v }" is one token. */
        while (*s && (depth > 0 || !is_space(*s))) {
            if (*s == '{')
                depth++;
            else if (*s == '}' && --depth < 0)
                break;
            s++;
        }
        if (depth != 0) {
            seterr(err, errlen, "\"%s\": unbalanced braces", tb);
            return -EINVAL;
        }
        if (*tb == '{' && s[-1] != '}') {
            seterr(err, errlen, "\"%.*s\": text after closing brace", (int)(s - tb), tb);
            return -EINVAL;
        }
        struct overrides_entry e = {0};
        int rc = parse_entry(tb, s, file, &e, err, errlen);
        if (rc == 0)
            rc = profile_push(p, cap, &e);
        entry_clear(&e);
        if (rc)
            return rc;
    }
}

int overrides_profile_parse(const char *main_spec, const char *master_spec,
                            struct overrides_profile **out, char *err, size_t errlen)
{
    *out = NULL;
    struct overrides_profile *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    size_t cap = 0;
    int rc = parse_spec(main_spec, OVERRIDES_MAIN, p, &cap, err, errlen);
    if (rc == 0)
        rc = parse_spec(master_spec, OVERRIDES_MASTER, p, &cap, err, errlen);
    if (rc) {
        overrides_profile_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

/* --- "key = value" listings from postconf ---------------------------------------- */

void overrides_kvlist_clear(struct kvlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].key);
        free(l->v[i].value);
    }
    free(l->v);
    memset(l, 0, sizeof(*l));
}

/* Parses postconf output: "key = value" or "key =" per line; a line that starts with
 * whitespace continues the previous value (postconf -f folds that way). Lines of other
 * shapes (warnings sent to the same pipe) are skipped. */
int overrides_kvlist_parse(const char *text, size_t len, struct kvlist *l)
{
    memset(l, 0, sizeof(*l));
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *lb = p;
        p = nl ? nl + 1 : end;
        if (lb < le && (*lb == ' ' || *lb == '\t')) {
            if (l->n == 0)
                continue;
            const char *cb = lb, *ce = le;
            trim(&cb, &ce);
            struct kv *last = &l->v[l->n - 1];
            size_t ol = strlen(last->value), cl = (size_t)(ce - cb);
            char *nv = realloc(last->value, ol + cl + 2);
            if (!nv)
                return -ENOMEM;
            nv[ol] = ' ';
            memcpy(nv + ol + 1, cb, cl);
            nv[ol + 1 + cl] = '\0';
            last->value = nv;
            continue;
        }
        const char *sp = memchr(lb, ' ', (size_t)(le - lb));
        if (!sp || sp == lb || le - sp < 2 || sp[1] != '=')
            continue;
        const char *vb = sp + 2, *ve = le;
        trim(&vb, &ve);
        if (l->n == l->cap) {
            size_t ncap = l->cap ? l->cap * 2 : 64;
            struct kv *nv = realloc(l->v, ncap * sizeof(*nv));
            if (!nv)
                return -ENOMEM;
            l->v = nv;
            l->cap = ncap;
        }
        struct kv kv = {xstrndup(lb, (size_t)(sp - lb)), xstrndup(vb, (size_t)(ve - vb))};
        if (!kv.key || !kv.value) {
            free(kv.key);
            free(kv.value);
            return -ENOMEM;
        }
        l->v[l->n++] = kv;
    }
    return 0;
}

const char *overrides_kvlist_get(const struct kvlist *l, const char *key)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i].key, key) == 0)
            return l->v[i].value;
    return NULL;
}

/* --- known parameter names -------------------------------------------------------- */

struct overrides_params {
    char **names; /* sorted */
    size_t n;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int overrides_known_params_parse(const char *text, size_t len, struct overrides_params **out)
{
    *out = NULL;
    struct kvlist l;
    int rc = overrides_kvlist_parse(text, len, &l);
    if (rc) {
        overrides_kvlist_clear(&l);
        return rc;
    }
    struct overrides_params *k = calloc(1, sizeof(*k));
    if (!k || (l.n && !(k->names = calloc(l.n, sizeof(char *))))) {
        free(k);
        overrides_kvlist_clear(&l);
        return -ENOMEM;
    }
    for (size_t i = 0; i < l.n; i++) {
        if (!overrides_valid_param_name(l.v[i].key))
            continue;
        k->names[k->n++] = l.v[i].key;
        l.v[i].key = NULL;
    }
    overrides_kvlist_clear(&l);
    if (k->n == 0) {
        overrides_params_free(k);
        return -EINVAL;
    }
    if (k->n > 1)
        qsort(k->names, k->n, sizeof(char *), cmp_str);
    *out = k;
    return 0;
}

bool overrides_known_param(const struct overrides_params *k, const char *name)
{
    return k && name && bsearch(&name, k->names, k->n, sizeof(char *), cmp_str) != NULL;
}

size_t overrides_known_params_count(const struct overrides_params *k)
{
    return k ? k->n : 0;
}

void overrides_params_free(struct overrides_params *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < k->n; i++)
        free(k->names[i]);
    free(k->names);
    free(k);
}

/* --- master.cf services ----------------------------------------------------------- */

void overrides_services_free(struct overrides_services *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].service);
        free(s->v[i].type);
        free(s->v[i].process_limit);
        free(s->v[i].command);
    }
    free(s->v);
    free(s);
}

static struct overrides_service *service_find(const struct overrides_services *s, const char *svc,
                                              const char *type)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].service, svc) == 0 && strcmp(s->v[i].type, type) == 0)
            return &s->v[i];
    return NULL;
}

/* Whether a whitespace-separated word of cmd equals w (or starts with w when prefix). */
static bool cmd_has_word(const char *cmd, const char *w, bool prefix)
{
    size_t wl = strlen(w);
    for (const char *p = cmd; *p;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *b = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        size_t n = (size_t)(p - b);
        if (prefix ? (n >= wl && memcmp(b, w, wl) == 0) : (n == wl && memcmp(b, w, wl) == 0))
            return true;
    }
    return false;
}

static void classify_service(struct overrides_service *v)
{
    const char *cmd = v->command ? v->command : "";
    size_t cl = strcspn(cmd, " \t");
    bool smtpd = cl == 5 && memcmp(cmd, "smtpd", 5) == 0;
    v->public_smtpd = smtpd && (strcmp(v->type, "inet") == 0 || strcmp(v->type, "pass") == 0);
    /* STRESS_README: users' submission should not be stressed ("-o stress=" there); an
     * explicit "-o stress=..." is the administrator's decision; an smtpd with an empty
     * content_filter override is the reinjection side of a content filter. */
    static const char *const user_ports[] = {"submission", "submissions", "smtps", "587", "465"};
    bool user = false;
    const char *port = strrchr(v->service, ':');
    port = port ? port + 1 : v->service;
    for (size_t i = 0; i < sizeof(user_ports) / sizeof(user_ports[0]); i++)
        if (strcmp(port, user_ports[i]) == 0)
            user = true;
    if (cmd_has_word(cmd, "syslog_name=postfix/submission", false) ||
        cmd_has_word(cmd, "syslog_name=postfix/smtps", false))
        user = true;
    v->stress_auto = v->public_smtpd && !user && !cmd_has_word(cmd, "stress=", true) &&
                     !cmd_has_word(cmd, "content_filter=", false);
}

int overrides_services_parse(const char *text, size_t len, struct overrides_services **out)
{
    *out = NULL;
    struct kvlist l;
    int rc = overrides_kvlist_parse(text, len, &l);
    struct overrides_services *s = calloc(1, sizeof(*s));
    size_t cap = 0;
    if (rc || !s) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < l.n; i++) {
        /* "svc/type/field": the service holds no '/', the field is the last part. */
        char *key = l.v[i].key;
        char *s2 = strrchr(key, '/');
        char *s1 = s2 ? memchr(key, '/', (size_t)(s2 - key)) : NULL;
        if (!s1)
            continue;
        *s1 = '\0';
        *s2 = '\0';
        const char *svc = key, *type = s1 + 1, *field = s2 + 1;
        if (!overrides_valid_service(svc, false) || !overrides_valid_type(type))
            continue;
        struct overrides_service *v = service_find(s, svc, type);
        if (!v) {
            if (s->n == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                struct overrides_service *nv = realloc(s->v, ncap * sizeof(*nv));
                if (!nv) {
                    rc = -ENOMEM;
                    goto out;
                }
                s->v = nv;
                cap = ncap;
            }
            v = &s->v[s->n];
            memset(v, 0, sizeof(*v));
            v->service = strdup(svc);
            v->type = strdup(type);
            s->n++;
            if (!v->service || !v->type) {
                rc = -ENOMEM;
                goto out;
            }
        }
        char **slot = strcmp(field, "process_limit") == 0 ? &v->process_limit
                      : strcmp(field, "command") == 0     ? &v->command
                                                          : NULL;
        if (slot) {
            free(*slot);
            *slot = strdup(l.v[i].value);
            if (!*slot) {
                rc = -ENOMEM;
                goto out;
            }
        }
    }
    for (size_t i = 0; i < s->n; i++)
        classify_service(&s->v[i]);
    rc = s->n ? 0 : -EINVAL;
out:
    overrides_kvlist_clear(&l);
    if (rc)
        overrides_services_free(s);
    else
        *out = s;
    return rc;
}

/* --- resolve ---------------------------------------------------------------------- */

static int entry_copy(struct overrides_entry *d, const struct overrides_entry *e,
                      const char *service)
{
    bool ok = true;
    d->file = e->file;
    d->service = dup_or_null(service, &ok);
    d->type = dup_or_null(e->type, &ok);
    d->name = dup_or_null(e->name, &ok);
    d->value = dup_or_null(e->value, &ok);
    return ok ? 0 : -ENOMEM;
}

static bool same_setting(const struct overrides_entry *a, const struct overrides_entry *b)
{
    return a->file == b->file && streq_null(a->service, b->service) &&
           streq_null(a->type, b->type) && strcmp(a->name, b->name) == 0;
}

int overrides_profile_allowed(const struct overrides_profile *p, char *err, size_t errlen)
{
    for (size_t i = 0; p && i < p->n; i++) {
        const struct overrides_entry *e = &p->entries[i];
        if (!allowlist_check(e->file == OVERRIDES_MASTER, e->name, e->value, err, errlen))
            return -EINVAL;
    }
    return 0;
}

int overrides_profile_resolve(const struct overrides_profile *p, const struct overrides_params *k,
                              const struct overrides_services *s, struct overrides_profile **out,
                              char *err, size_t errlen)
{
    *out = NULL;
    if (overrides_profile_allowed(p, err, errlen) < 0)
        return -EINVAL;
    struct overrides_profile *r = calloc(1, sizeof(*r));
    size_t cap = 0;
    int rc = r ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < p->n; i++) {
        const struct overrides_entry *e = &p->entries[i];
        if (!overrides_known_param(k, e->name)) {
            seterr(err, errlen, "%s: unknown parameter (not in postconf -d)", e->name);
            rc = -EINVAL;
            break;
        }
        for (size_t j = 0; rc == 0 && j < (e->file == OVERRIDES_MASTER ? s->n : 1); j++) {
            const char *svc = NULL;
            if (e->file == OVERRIDES_MASTER) {
                const struct overrides_service *v = &s->v[j];
                if (strcmp(e->service, "*") == 0) {
                    if (!v->stress_auto || strcmp(v->type, e->type) != 0)
                        continue;
                } else if (strcmp(v->service, e->service) != 0 || strcmp(v->type, e->type) != 0) {
                    continue;
                }
                svc = v->service;
            }
            struct overrides_entry d = {0};
            rc = entry_copy(&d, e, svc);
            for (size_t m = 0; rc == 0 && m < r->n; m++) {
                if (same_setting(&r->entries[m], &d)) {
                    seterr(err, errlen, "%s%s%s%s%s: set twice", d.service ? d.service : "",
                           d.service ? "/" : "", d.type ? d.type : "", d.type ? "/" : "", d.name);
                    rc = -EINVAL;
                }
            }
            if (rc == 0)
                rc = profile_push(r, &cap, &d);
            entry_clear(&d);
        }
        if (rc == 0 && e->file == OVERRIDES_MASTER && strcmp(e->service, "*") != 0 &&
            !service_find(s, e->service, e->type)) {
            seterr(err, errlen, "%s/%s: no such service in master.cf", e->service, e->type);
            rc = -EINVAL;
        }
    }
    if (rc) {
        overrides_profile_free(r);
        return rc;
    }
    *out = r;
    return 0;
}
