/* overrides_journal: the journal of an overrides episode (what postsurge changed, the
 * file bytes before and after, as JSON with base64 bytes, size and checksum) and what is
 * run from it: the argv lists that apply it, the check that Postfix took it, and the
 * restore plan that undoes it without overwriting an administrator's edit. */
#include "overrides.h"
#include "overrides_impl.h"

#include "allowlist.h"
#include "textutil.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JOURNAL_FORMAT "postsurge-overrides-journal"
#define JOURNAL_VERSION 1

/* --- journal ---------------------------------------------------------------------- */

static void setting_clear(struct overrides_setting *st)
{
    free(st->service);
    free(st->type);
    free(st->name);
    free(st->value);
    free(st->prior);
}

static void blob_clear(struct overrides_blob *b)
{
    free(b->data);
    b->data = NULL;
    b->size = 0;
}

static int blob_set(struct overrides_blob *b, const char *data, size_t size)
{
    /* One extra byte so an empty file still has a buffer, and text stays terminated. */
    char *d = malloc(size + 1);
    if (!d)
        return -ENOMEM;
    if (size)
        memcpy(d, data, size);
    d[size] = '\0';
    blob_clear(b);
    b->data = d;
    b->size = size;
    return 0;
}

static bool blob_equal(const struct overrides_blob *b, const char *data, size_t size)
{
    return b->data && b->size == size && (size == 0 || memcmp(b->data, data, size) == 0);
}

void overrides_journal_free(struct overrides_journal *j)
{
    if (!j)
        return;
    free(j->config_dir);
    for (size_t i = 0; i < j->n; i++)
        setting_clear(&j->settings[i]);
    free(j->settings);
    blob_clear(&j->main_original);
    blob_clear(&j->master_original);
    blob_clear(&j->main_expected);
    blob_clear(&j->master_expected);
    free(j);
}

/* "name" or "service/type/name": the key in postconf -n / -P output. */
static char *setting_key(const struct overrides_setting *st)
{
    if (st->file == OVERRIDES_MAIN)
        return strdup(st->name);
    size_t n = strlen(st->service) + strlen(st->type) + strlen(st->name) + 3;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s/%s/%s", st->service, st->type, st->name);
    return k;
}

static bool valid_config_dir(const char *d)
{
    return d && d[0] == '/' && strlen(d) < 4096 && overrides_valid_prior(d);
}

int overrides_journal_new(const struct overrides_profile *r, const char *config_dir,
                          const char *main_cf, size_t main_len, const char *master_cf,
                          size_t master_len, const char *postconf_n, size_t n_len,
                          const char *postconf_P, size_t P_len, int64_t now_ms,
                          struct overrides_journal **out)
{
    *out = NULL;
    if (!r || !valid_config_dir(config_dir))
        return -EINVAL;
    struct kvlist nl = {0}, pl = {0};
    struct overrides_journal *j = calloc(1, sizeof(*j));
    int rc = j ? 0 : -ENOMEM;
    if (rc == 0)
        rc = overrides_kvlist_parse(postconf_n ? postconf_n : "", postconf_n ? n_len : 0, &nl);
    if (rc == 0)
        rc = overrides_kvlist_parse(postconf_P ? postconf_P : "", postconf_P ? P_len : 0, &pl);
    if (rc == 0 && (!(j->config_dir = strdup(config_dir)) ||
                    (r->n && !(j->settings = calloc(r->n, sizeof(*j->settings))))))
        rc = -ENOMEM;
    if (rc == 0)
        rc = blob_set(&j->main_original, main_cf ? main_cf : "", main_cf ? main_len : 0);
    if (rc == 0)
        rc = blob_set(&j->master_original, master_cf ? master_cf : "", master_cf ? master_len : 0);
    for (size_t i = 0; rc == 0 && i < r->n; i++) {
        const struct overrides_entry *e = &r->entries[i];
        struct overrides_setting *st = &j->settings[j->n++];
        bool ok = true;
        st->file = e->file;
        st->service = dup_or_null(e->service, &ok);
        st->type = dup_or_null(e->type, &ok);
        st->name = dup_or_null(e->name, &ok);
        st->value = dup_or_null(e->value, &ok);
        char *key = ok ? setting_key(st) : NULL;
        if (!key) {
            rc = -ENOMEM;
            break;
        }
        const char *prior = overrides_kvlist_get(e->file == OVERRIDES_MAIN ? &nl : &pl, key);
        free(key);
        if (prior && !overrides_valid_prior(prior)) {
            rc = -EINVAL;
            break;
        }
        st->prior = dup_or_null(prior, &ok);
        if (!ok)
            rc = -ENOMEM;
    }
    overrides_kvlist_clear(&nl);
    overrides_kvlist_clear(&pl);
    if (rc) {
        overrides_journal_free(j);
        return rc;
    }
    j->created_ms = now_ms;
    *out = j;
    return 0;
}

int overrides_journal_set_expected(struct overrides_journal *j, const char *main_cf,
                                   size_t main_len, const char *master_cf, size_t master_len)
{
    struct overrides_blob m = {0}, s = {0};
    if (blob_set(&m, main_cf ? main_cf : "", main_cf ? main_len : 0) ||
        blob_set(&s, master_cf ? master_cf : "", master_cf ? master_len : 0)) {
        blob_clear(&m);
        blob_clear(&s);
        return -ENOMEM;
    }
    blob_clear(&j->main_expected);
    blob_clear(&j->master_expected);
    j->main_expected = m;
    j->master_expected = s;
    j->have_expected = true;
    return 0;
}

/* --- base64 and checksum ------------------------------------------------------------ */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const char *data, size_t len)
{
    const unsigned char *s = (const unsigned char *)data;
    if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return NULL;
    char *o = malloc((len + 2) / 3 * 4 + 1), *p = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)s[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < len)
            v |= s[i + 2];
        *p++ = b64chars[(v >> 18) & 63];
        *p++ = b64chars[(v >> 12) & 63];
        *p++ = i + 1 < len ? b64chars[(v >> 6) & 63] : '=';
        *p++ = i + 2 < len ? b64chars[v & 63] : '=';
    }
    *p = '\0';
    return o;
}

static int b64_val(char c)
{
    const char *q = c ? strchr(b64chars, c) : NULL;
    return q ? (int)(q - b64chars) : -1;
}

/* Strict: length a multiple of 4, padding only at the end, no other characters. */
static int b64_decode(const char *s, size_t len, struct overrides_blob *out)
{
    if (len % 4)
        return -EINVAL;
    char *o = malloc(len / 4 * 3 + 1);
    if (!o)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64_val(s[i + k])) < 0) {
                free(o);
                return -EINVAL;
            }
        }
        unsigned w =
            (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
        o[n++] = (char)(w >> 16);
        if (pad < 2)
            o[n++] = (char)(w >> 8 & 0xff);
        if (pad < 1)
            o[n++] = (char)(w & 0xff);
    }
    o[n] = '\0';
    blob_clear(out);
    out->data = o;
    out->size = n;
    return 0;
}

static void fnv_hex(const char *data, size_t len, char out[17])
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)data[i];
        h *= 1099511628211ULL;
    }
    snprintf(out, 17, "%016llx", (unsigned long long)h);
}

/* --- serialize --------------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static int blob_put(json_t *obj, const char *prefix, const struct overrides_blob *b)
{
    char *enc = b64_encode(b->data ? b->data : "", b->size);
    if (!enc)
        return -ENOMEM;
    char hex[17];
    fnv_hex(b->data ? b->data : "", b->size, hex);
    char k1[32], k2[32], k3[32];
    snprintf(k1, sizeof(k1), "%s", prefix);
    snprintf(k2, sizeof(k2), "%s_size", prefix);
    snprintf(k3, sizeof(k3), "%s_fnv1a", prefix);
    int rc = json_object_set_new(obj, k1, json_string(enc)) ||
                     json_object_set_new(obj, k2, json_integer((json_int_t)b->size)) ||
                     json_object_set_new(obj, k3, json_string(hex))
                 ? -ENOMEM
                 : 0;
    free(enc);
    return rc;
}

int overrides_journal_serialize(const struct overrides_journal *j, char **out, size_t *len)
{
    *out = NULL;
    json_t *root = json_object();
    json_t *arr = json_array();
    int rc = root && arr ? 0 : -ENOMEM;
    if (rc == 0 && (json_object_set_new(root, "format", json_string(JOURNAL_FORMAT)) ||
                    json_object_set_new(root, "version", json_integer(JOURNAL_VERSION)) ||
                    json_object_set_new(root, "config_directory", json_string(j->config_dir)) ||
                    json_object_set_new(root, "created_ms", json_integer(j->created_ms)) ||
                    json_object_set_new(root, "have_expected", json_boolean(j->have_expected))))
        rc = -ENOMEM;
    for (size_t i = 0; rc == 0 && i < j->n; i++) {
        const struct overrides_setting *st = &j->settings[i];
        json_t *o = json_object();
        if (!o || json_array_append_new(arr, o) ||
            json_object_set_new(o, "file",
                                json_string(st->file == OVERRIDES_MAIN ? "main" : "master")) ||
            (st->file == OVERRIDES_MASTER &&
             (json_object_set_new(o, "service", json_string(st->service)) ||
              json_object_set_new(o, "type", json_string(st->type)))) ||
            json_object_set_new(o, "name", json_string(st->name)) ||
            json_object_set_new(o, "value", json_string(st->value)) ||
            json_object_set_new(o, "prior", str_or_null(st->prior)))
            rc = -ENOMEM;
    }
    if (rc == 0 && json_object_set(root, "settings", arr))
        rc = -ENOMEM;
    if (rc == 0)
        rc = blob_put(root, "main_cf", &j->main_original);
    if (rc == 0)
        rc = blob_put(root, "master_cf", &j->master_original);
    if (rc == 0 && j->have_expected) {
        rc = blob_put(root, "main_cf_expected", &j->main_expected);
        if (rc == 0)
            rc = blob_put(root, "master_cf_expected", &j->master_expected);
    }
    if (rc == 0) {
        *out = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        if (!*out)
            rc = -ENOMEM;
        else if (len)
            *len = strlen(*out);
    }
    json_decref(arr);
    json_decref(root);
    return rc;
}

/* --- parse ------------------------------------------------------------------------- */

static bool only_keys(json_t *obj, const char *const *keys, char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        bool known = false;
        for (size_t i = 0; keys[i]; i++)
            if (strcmp(k, keys[i]) == 0)
                known = true;
        if (!known) {
            seterr(err, errlen, "journal: unknown key \"%s\"", k);
            return false;
        }
    }
    return true;
}

static const char *get_str(json_t *obj, const char *key, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v)) {
        seterr(err, errlen, "journal: \"%s\" missing or not a string", key);
        return NULL;
    }
    /* A NUL inside a JSON string would cut the C string short silently. */
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        seterr(err, errlen, "journal: \"%s\" contains a NUL", key);
        return NULL;
    }
    return json_string_value(v);
}

static int blob_get(json_t *root, const char *prefix, struct overrides_blob *b, char *err,
                    size_t errlen)
{
    char k2[32], k3[32];
    snprintf(k2, sizeof(k2), "%s_size", prefix);
    snprintf(k3, sizeof(k3), "%s_fnv1a", prefix);
    json_t *data = json_object_get(root, prefix);
    json_t *size = json_object_get(root, k2);
    json_t *sum = json_object_get(root, k3);
    if (!json_is_string(data) || !json_is_integer(size) || !json_is_string(sum)) {
        seterr(err, errlen, "journal: \"%s\" missing or malformed", prefix);
        return -EINVAL;
    }
    int rc = b64_decode(json_string_value(data), json_string_length(data), b);
    if (rc == -ENOMEM)
        return rc;
    char hex[17];
    if (rc == 0)
        fnv_hex(b->data, b->size, hex);
    if (rc || json_integer_value(size) < 0 || (size_t)json_integer_value(size) != b->size ||
        strcmp(hex, json_string_value(sum)) != 0) {
        seterr(err, errlen, "journal: \"%s\" does not match its size or checksum", prefix);
        return -EINVAL;
    }
    return 0;
}

static int setting_from_json(json_t *o, struct overrides_setting *st, char *err, size_t errlen)
{
    static const char *const main_keys[] = {"file", "name", "value", "prior", NULL};
    static const char *const master_keys[] = {"file",  "service", "type", "name",
                                              "value", "prior",   NULL};
    if (!json_is_object(o)) {
        seterr(err, errlen, "journal: a setting is not an object");
        return -EINVAL;
    }
    const char *file = get_str(o, "file", err, errlen);
    if (!file)
        return -EINVAL;
    if (strcmp(file, "main") == 0)
        st->file = OVERRIDES_MAIN;
    else if (strcmp(file, "master") == 0)
        st->file = OVERRIDES_MASTER;
    else {
        seterr(err, errlen, "journal: bad file \"%s\"", file);
        return -EINVAL;
    }
    bool master = st->file == OVERRIDES_MASTER;
    if (!only_keys(o, master ? master_keys : main_keys, err, errlen))
        return -EINVAL;
    const char *name = get_str(o, "name", err, errlen);
    const char *value = name ? get_str(o, "value", err, errlen) : NULL;
    const char *svc = NULL, *type = NULL;
    if (!value)
        return -EINVAL;
    if (master) {
        svc = get_str(o, "service", err, errlen);
        type = svc ? get_str(o, "type", err, errlen) : NULL;
        if (!type)
            return -EINVAL;
        if (!overrides_valid_service(svc, false) || !overrides_valid_type(type)) {
            seterr(err, errlen, "journal: bad service %s/%s", svc, type);
            return -EINVAL;
        }
    }
    json_t *prior = json_object_get(o, "prior");
    if (!prior || !(json_is_null(prior) || json_is_string(prior))) {
        seterr(err, errlen, "journal: \"prior\" of %s missing or malformed", name);
        return -EINVAL;
    }
    const char *pv = json_is_string(prior) ? get_str(o, "prior", err, errlen) : NULL;
    if (json_is_string(prior) && !pv)
        return -EINVAL;
    /* The journal is re-checked as strictly as a profile: a tampered file must not
     * smuggle anything onto a command line. */
    if (!overrides_valid_param_name(name) || overrides_value_problem(value, master) ||
        (pv && !overrides_valid_prior(pv))) {
        seterr(err, errlen, "journal: unsafe name or value in setting %s", name);
        return -EINVAL;
    }
    /* Only what a profile may set is undone: a journal naming anything else was not
     * written by postsurge's helper, whatever its owner says. */
    char why[300];
    if (!allowlist_check(master, name, value, why, sizeof(why))) {
        seterr(err, errlen, "journal: %s", why);
        return -EINVAL;
    }
    bool ok = true;
    st->name = dup_or_null(name, &ok);
    st->value = dup_or_null(value, &ok);
    st->service = dup_or_null(svc, &ok);
    st->type = dup_or_null(type, &ok);
    st->prior = dup_or_null(pv, &ok);
    return ok ? 0 : -ENOMEM;
}

int overrides_journal_parse(const char *buf, size_t len, struct overrides_journal **out, char *err,
                            size_t errlen)
{
    static const char *const keys[] = {"format",
                                       "version",
                                       "config_directory",
                                       "created_ms",
                                       "have_expected",
                                       "settings",
                                       "main_cf",
                                       "main_cf_size",
                                       "main_cf_fnv1a",
                                       "master_cf",
                                       "master_cf_size",
                                       "master_cf_fnv1a",
                                       "main_cf_expected",
                                       "main_cf_expected_size",
                                       "main_cf_expected_fnv1a",
                                       "master_cf_expected",
                                       "master_cf_expected_size",
                                       "master_cf_expected_fnv1a",
                                       NULL};
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        seterr(err, errlen, "journal: line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return -EINVAL;
    }
    struct overrides_journal *j = calloc(1, sizeof(*j));
    int rc = j ? 0 : -ENOMEM;
    const char *fmt = NULL, *dir = NULL;
    json_t *ver = json_object_get(root, "version");
    json_t *created = json_object_get(root, "created_ms");
    json_t *have = json_object_get(root, "have_expected");
    json_t *arr = json_object_get(root, "settings");
    if (rc == 0 && !json_is_object(root)) {
        seterr(err, errlen, "journal: not a JSON object");
        rc = -EINVAL;
    }
    if (rc == 0 && !only_keys(root, keys, err, errlen))
        rc = -EINVAL;
    if (rc == 0 &&
        (!(fmt = get_str(root, "format", err, errlen)) || strcmp(fmt, JOURNAL_FORMAT) != 0 ||
         !json_is_integer(ver) || json_integer_value(ver) != JOURNAL_VERSION)) {
        seterr(err, errlen, "journal: not a version %d postsurge journal", JOURNAL_VERSION);
        rc = -EINVAL;
    }
    if (rc == 0 &&
        (!(dir = get_str(root, "config_directory", err, errlen)) || !valid_config_dir(dir) ||
         !json_is_integer(created) || !json_is_boolean(have) || !json_is_array(arr))) {
        seterr(err, errlen, "journal: header fields missing or malformed");
        rc = -EINVAL;
    }
    if (rc == 0 && (!(j->config_dir = strdup(dir)) ||
                    (json_array_size(arr) &&
                     !(j->settings = calloc(json_array_size(arr), sizeof(*j->settings))))))
        rc = -ENOMEM;
    if (rc == 0) {
        j->created_ms = json_integer_value(created);
        j->have_expected = json_is_true(have);
    }
    for (size_t i = 0; rc == 0 && i < json_array_size(arr); i++) {
        rc = setting_from_json(json_array_get(arr, i), &j->settings[j->n++], err, errlen);
    }
    if (rc == 0)
        rc = blob_get(root, "main_cf", &j->main_original, err, errlen);
    if (rc == 0)
        rc = blob_get(root, "master_cf", &j->master_original, err, errlen);
    if (rc == 0 && j->have_expected) {
        rc = blob_get(root, "main_cf_expected", &j->main_expected, err, errlen);
        if (rc == 0)
            rc = blob_get(root, "master_cf_expected", &j->master_expected, err, errlen);
    } else if (rc == 0 && json_object_get(root, "main_cf_expected")) {
        seterr(err, errlen, "journal: expected bytes without have_expected");
        rc = -EINVAL;
    }
    json_decref(root);
    if (rc) {
        overrides_journal_free(j);
        return rc;
    }
    *out = j;
    return 0;
}

/* --- plans ------------------------------------------------------------------------ */

void overrides_plan_free(struct overrides_plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++) {
        for (size_t k = 0; k < p->cmds[i].argc; k++)
            free(p->cmds[i].argv[k]);
        free(p->cmds[i].argv);
    }
    free(p->cmds);
    free(p);
}

/* Appends a command: the fixed head words (copied), then words (taken: set to NULL). */
static int plan_add(struct overrides_plan *p, const char *const *head, size_t nhead, char **words,
                    size_t nwords)
{
    struct overrides_cmd *nc = realloc(p->cmds, (p->n + 1) * sizeof(*nc));
    if (!nc)
        return -ENOMEM;
    p->cmds = nc;
    struct overrides_cmd *c = &p->cmds[p->n];
    c->argc = 0;
    c->argv = calloc(nhead + nwords + 1, sizeof(char *));
    if (!c->argv)
        return -ENOMEM;
    p->n++;
    for (size_t i = 0; i < nhead; i++) {
        if (!(c->argv[c->argc] = strdup(head[i])))
            return -ENOMEM;
        c->argc++;
    }
    for (size_t i = 0; i < nwords; i++) {
        c->argv[c->argc++] = words[i];
        words[i] = NULL;
    }
    return 0;
}

/* "name=value" / "service/type/name=value" / "name" / "service/type/name" */
static char *setting_word(const struct overrides_setting *st, const char *value)
{
    char *key = setting_key(st);
    if (!key || !value)
        return key;
    size_t n = strlen(key) + strlen(value) + 2;
    char *w = malloc(n);
    if (w)
        snprintf(w, n, "%s=%s", key, value);
    free(key);
    return w;
}

struct wordlist {
    char **v;
    size_t n;
};

static int words_push(struct wordlist *w, char *word)
{
    if (!word)
        return -ENOMEM;
    char **nv = realloc(w->v, (w->n + 1) * sizeof(char *));
    if (!nv) {
        free(word);
        return -ENOMEM;
    }
    w->v = nv;
    w->v[w->n++] = word;
    return 0;
}

static void words_clear(struct wordlist *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->v[i]);
    free(w->v);
    w->v = NULL;
    w->n = 0;
}

/* Adds "postconf -c DIR OPT words..." and clears the list. */
static int plan_postconf(struct overrides_plan *p, const char *dir, const char *opt,
                         struct wordlist *w)
{
    const char *head[] = {"postconf", "-c", dir, opt};
    int rc = w->n ? plan_add(p, head, 4, w->v, w->n) : 0;
    words_clear(w);
    return rc;
}

static int plan_reload(struct overrides_plan *p, const char *dir)
{
    const char *head[] = {"postfix", "-c", dir, "reload"};
    return plan_add(p, head, 4, NULL, 0);
}

int overrides_apply_plan(const struct overrides_journal *j, struct overrides_plan **out)
{
    *out = NULL;
    struct overrides_plan *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    struct wordlist mw = {0}, sw = {0};
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < j->n; i++) {
        const struct overrides_setting *st = &j->settings[i];
        if (streq_null(st->prior, st->value))
            continue;
        rc = words_push(st->file == OVERRIDES_MAIN ? &mw : &sw, setting_word(st, st->value));
    }
    bool any = mw.n || sw.n;
    if (rc == 0)
        rc = plan_postconf(p, j->config_dir, "-e", &mw);
    if (rc == 0)
        rc = plan_postconf(p, j->config_dir, "-P", &sw);
    if (rc == 0 && any)
        rc = plan_reload(p, j->config_dir);
    words_clear(&mw);
    words_clear(&sw);
    if (rc) {
        overrides_plan_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

int overrides_cmd_format(const struct overrides_cmd *c, char **out)
{
    size_t cap = 1;
    for (size_t i = 0; i < c->argc; i++)
        cap += strlen(c->argv[i]) * 4 + 3;
    char *s = malloc(cap), *p = s;
    if (!s)
        return -ENOMEM;
    for (size_t i = 0; i < c->argc; i++) {
        const char *a = c->argv[i];
        bool plain = *a != '\0';
        for (const char *q = a; *q; q++)
            if (!is_alnum(*q) && !strchr("-_./=:,@%+[]", *q))
                plain = false;
        if (i)
            *p++ = ' ';
        if (plain) {
            p += sprintf(p, "%s", a);
            continue;
        }
        *p++ = '\'';
        for (const char *q = a; *q; q++) {
            if (*q == '\'')
                p += sprintf(p, "'\\''");
            else
                *p++ = *q;
        }
        *p++ = '\'';
    }
    *p = '\0';
    *out = s;
    return 0;
}

int overrides_verify(const struct overrides_journal *j, const char *postconf_n, size_t n_len,
                     const char *postconf_P, size_t P_len, char *err, size_t errlen)
{
    struct kvlist nl, pl;
    int rc = overrides_kvlist_parse(postconf_n ? postconf_n : "", postconf_n ? n_len : 0, &nl);
    if (rc == 0)
        rc = overrides_kvlist_parse(postconf_P ? postconf_P : "", postconf_P ? P_len : 0, &pl);
    for (size_t i = 0; rc == 0 && i < j->n; i++) {
        const struct overrides_setting *st = &j->settings[i];
        char *key = setting_key(st);
        if (!key) {
            rc = -ENOMEM;
            break;
        }
        const char *cur = overrides_kvlist_get(st->file == OVERRIDES_MAIN ? &nl : &pl, key);
        if (!streq_null(cur, st->value)) {
            seterr(err, errlen, "%s is \"%s\", expected \"%s\"", key, cur ? cur : "(not set)",
                   st->value);
            rc = -EIO;
        }
        free(key);
    }
    overrides_kvlist_clear(&nl);
    overrides_kvlist_clear(&pl);
    return rc;
}

/* --- restore ---------------------------------------------------------------------- */

void overrides_restore_free(struct overrides_restore *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->plan.n; i++) {
        for (size_t k = 0; k < r->plan.cmds[i].argc; k++)
            free(r->plan.cmds[i].argv[k]);
        free(r->plan.cmds[i].argv);
    }
    free(r->plan.cmds);
    for (size_t i = 0; i < r->n_conflicts; i++) {
        free(r->conflicts[i].setting);
        free(r->conflicts[i].prior);
        free(r->conflicts[i].ours);
        free(r->conflicts[i].current);
    }
    free(r->conflicts);
    free(r);
}

static int add_conflict(struct overrides_restore *r, const struct overrides_setting *st,
                        const char *cur, const char *why)
{
    struct overrides_conflict *nc = realloc(r->conflicts, (r->n_conflicts + 1) * sizeof(*nc));
    if (!nc)
        return -ENOMEM;
    r->conflicts = nc;
    struct overrides_conflict *c = &r->conflicts[r->n_conflicts++];
    bool ok = true;
    c->setting = setting_key(st);
    c->prior = dup_or_null(st->prior, &ok);
    c->ours = dup_or_null(st->value, &ok);
    c->current = dup_or_null(cur, &ok);
    c->why = why;
    return ok && c->setting ? 0 : -ENOMEM;
}

/* Which of a file's settings go back by command, and which are conflicts. */
static int restore_settings(struct overrides_restore *r, const struct overrides_journal *j,
                            enum overrides_file file, const struct kvlist *cur_list,
                            struct wordlist *set, struct wordlist *del)
{
    for (size_t i = 0; i < j->n; i++) {
        const struct overrides_setting *st = &j->settings[i];
        if (st->file != file)
            continue;
        char *key = setting_key(st);
        if (!key)
            return -ENOMEM;
        const char *cur = overrides_kvlist_get(cur_list, key);
        free(key);
        int rc = 0;
        if (streq_null(cur, st->prior))
            continue; /* already as before (or never applied) */
        if (!streq_null(cur, st->value))
            rc = add_conflict(r, st, cur, "changed since postsurge applied it: kept");
        else if (!st->prior)
            rc = words_push(del, setting_word(st, NULL));
        else if (file == OVERRIDES_MASTER && strpbrk(st->prior, " \t"))
            rc = add_conflict(r, st, cur, "prior value has spaces: postconf -P cannot write it");
        else
            rc = words_push(set, setting_word(st, st->prior));
        if (rc)
            return rc;
    }
    return 0;
}

int overrides_restore_plan(const struct overrides_journal *j, const char *main_cf, size_t main_len,
                           const char *master_cf, size_t master_len, const char *postconf_n,
                           size_t n_len, const char *postconf_P, size_t P_len,
                           struct overrides_restore **out)
{
    *out = NULL;
    struct overrides_restore *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    struct kvlist nl = {0}, pl = {0};
    struct wordlist set = {0}, del = {0};
    const char *dir = j->config_dir;
    int rc = overrides_kvlist_parse(postconf_n ? postconf_n : "", postconf_n ? n_len : 0, &nl);
    if (rc == 0)
        rc = overrides_kvlist_parse(postconf_P ? postconf_P : "", postconf_P ? P_len : 0, &pl);

    static const char *const set_opt[] = {"-e", "-P"};
    static const char *const del_opt[] = {"-X", "-PX"};
    for (int f = OVERRIDES_MAIN; rc == 0 && f <= OVERRIDES_MASTER; f++) {
        const char *cur = f == OVERRIDES_MAIN ? main_cf : master_cf;
        size_t cur_len = f == OVERRIDES_MAIN ? main_len : master_len;
        const struct overrides_blob *orig =
            f == OVERRIDES_MAIN ? &j->main_original : &j->master_original;
        const struct overrides_blob *exp =
            f == OVERRIDES_MAIN ? &j->main_expected : &j->master_expected;
        if (!cur) {
            cur = "";
            cur_len = 0;
        }
        if (blob_equal(orig, cur, cur_len)) {
            if (f == OVERRIDES_MAIN)
                r->main_is_original = true;
            else
                r->master_is_original = true;
            continue;
        }
        if (j->have_expected && blob_equal(exp, cur, cur_len)) {
            /* Nobody touched the file since postsurge wrote it: put it back byte for
             * byte, which postconf -X / -PX alone cannot do. */
            if (f == OVERRIDES_MAIN)
                r->write_main = true;
            else
                r->write_master = true;
            continue;
        }
        rc = restore_settings(r, j, (enum overrides_file)f, f == OVERRIDES_MAIN ? &nl : &pl, &set,
                              &del);
        if (rc == 0)
            rc = plan_postconf(&r->plan, dir, set_opt[f], &set);
        if (rc == 0)
            rc = plan_postconf(&r->plan, dir, del_opt[f], &del);
    }
    if (rc == 0)
        rc = plan_reload(&r->plan, dir);
    overrides_kvlist_clear(&nl);
    overrides_kvlist_clear(&pl);
    words_clear(&set);
    words_clear(&del);
    if (rc) {
        overrides_restore_free(r);
        return rc;
    }
    *out = r;
    return 0;
}
