/* privmsg: framing and validation of the privileged helper's messages. The helper runs
 * as root and reads what a possibly compromised network-facing process sends, so every
 * decoder here is strict: bounded sizes, exact keys, and the override profile checked
 * again with lib/overrides against the helper's own view of Postfix. */
#include "privmsg.h"
#include "textutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool op_known(int c)
{
    switch (c) {
    case PRIVMSG_JOURNAL:
    case PRIVMSG_APPLY:
    case PRIVMSG_RESTORE:
    case PRIVMSG_SAMPLE:
    case PRIVMSG_REPLY:
    case PRIVMSG_SAMPLE_REPLY:
        return true;
    default:
        return false;
    }
}

int privmsg_frame_parse(const void *buf, size_t len, enum privmsg_op *op, const char **payload,
                        size_t *plen)
{
    if (len == 0 || len > PRIVMSG_MAX)
        return -EMSGSIZE;
    const unsigned char *b = buf;
    if (!op_known(b[0]))
        return -EBADMSG;
    *op = (enum privmsg_op)b[0];
    *payload = (const char *)b + 1;
    *plen = len - 1;
    return 0;
}

int privmsg_frame(enum privmsg_op op, const void *payload, size_t plen, char **out, size_t *len)
{
    if (plen + 1 > PRIVMSG_MAX)
        return -EMSGSIZE;
    char *p = malloc(plen + 1);
    if (!p)
        return -ENOMEM;
    p[0] = (char)op;
    if (plen)
        memcpy(p + 1, payload, plen);
    *out = p;
    *len = plen + 1;
    return 0;
}

int privmsg_frame_json(enum privmsg_op op, const json_t *o, char **out, size_t *len)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (!s)
        return -EINVAL;
    int rc = privmsg_frame(op, s, strlen(s), out, len);
    free(s);
    return rc;
}

int privmsg_apply_encode(const char *main_spec, const char *master_spec, int64_t now_ms, char **out,
                         size_t *len)
{
    json_t *o = json_pack("{s:s,s:s,s:I}", "main_cf", main_spec ? main_spec : "", "master_cf",
                          master_spec ? master_spec : "", "now_ms", (json_int_t)now_ms);
    if (!o)
        return -ENOMEM;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return -ENOMEM;
    *out = s;
    *len = strlen(s);
    return 0;
}

/* Exactly the keys in keys[] (all present), nothing else. */
static bool exact_keys(json_t *o, const char *const *keys, size_t n, char *err, size_t errlen)
{
    if (!json_is_object(o)) {
        seterr(err, errlen, "not a JSON object");
        return false;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        bool found = false;
        for (size_t i = 0; i < n && !found; i++)
            found = strcmp(k, keys[i]) == 0;
        if (!found) {
            seterr(err, errlen, "unexpected key \"%.64s\"", k);
            return false;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!json_object_get(o, keys[i])) {
            seterr(err, errlen, "missing key \"%s\"", keys[i]);
            return false;
        }
    return true;
}

int privmsg_apply_decode(const char *payload, size_t plen, const struct overrides_params *k,
                         const struct overrides_services *s, struct overrides_profile **resolved,
                         int64_t *now_ms, char *err, size_t errlen)
{
    static const char *const keys[] = {"main_cf", "master_cf", "now_ms"};
    *resolved = NULL;
    if (plen >= PRIVMSG_MAX) {
        seterr(err, errlen, "request too large");
        return -EINVAL;
    }
    json_error_t je;
    /* JSON_REJECT_DUPLICATES: one value per key, so what is checked is what is used. */
    json_t *o = json_loadb(payload, plen, JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        seterr(err, errlen, "bad JSON: %s", je.text);
        return -EINVAL;
    }
    int rc = -EINVAL;
    struct overrides_profile *p = NULL;
    if (!exact_keys(o, keys, 3, err, errlen))
        goto out;
    json_t *m = json_object_get(o, "main_cf"), *ms = json_object_get(o, "master_cf");
    json_t *t = json_object_get(o, "now_ms");
    if (!json_is_string(m) || !json_is_string(ms) || !json_is_integer(t) ||
        json_integer_value(t) < 0) {
        seterr(err, errlen, "main_cf and master_cf must be strings, now_ms a time");
        goto out;
    }
    /* A NUL inside a JSON string would hide the rest of it from the C parser. */
    if (strlen(json_string_value(m)) != json_string_length(m) ||
        strlen(json_string_value(ms)) != json_string_length(ms)) {
        seterr(err, errlen, "NUL in a profile");
        goto out;
    }
    if (!k || !s) {
        seterr(err, errlen, "Postfix parameters or services unknown");
        goto out;
    }
    rc = overrides_profile_parse(json_string_value(m), json_string_value(ms), &p, err, errlen);
    if (rc < 0)
        goto out;
    rc = overrides_profile_resolve(p, k, s, resolved, err, errlen);
    if (rc < 0)
        goto out;
    if ((*resolved)->n > PRIVMSG_MAX_SETTINGS) {
        seterr(err, errlen, "%zu settings: more than %d", (*resolved)->n, PRIVMSG_MAX_SETTINGS);
        overrides_profile_free(*resolved);
        *resolved = NULL;
        rc = -EINVAL;
        goto out;
    }
    *now_ms = (int64_t)json_integer_value(t);
    rc = 0;
out:
    overrides_profile_free(p);
    json_decref(o);
    return rc;
}

json_t *privmsg_settings_json(const struct overrides_journal *j)
{
    json_t *a = json_array();
    for (size_t i = 0; a && j && i < j->n; i++) {
        const struct overrides_setting *st = &j->settings[i];
        json_t *o;
        if (st->file == OVERRIDES_MAIN)
            o = json_pack("{s:s,s:s,s:s}", "file", "main", "name", st->name, "value", st->value);
        else
            o = json_pack("{s:s,s:s,s:s,s:s,s:s}", "file", "master", "service", st->service, "type",
                          st->type, "name", st->name, "value", st->value);
        if (!o || json_array_append_new(a, o) < 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static char *short_str(json_t *o, const char *key, size_t max, int *rc)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v) || json_string_length(v) > max ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        if (*rc == 0)
            *rc = -EINVAL;
        return NULL;
    }
    char *s = strdup(json_string_value(v));
    if (!s && *rc == 0)
        *rc = -ENOMEM;
    return s;
}

int privmsg_settings_decode(const json_t *a, const char *config_dir, struct overrides_journal **out)
{
    static const char *const main_keys[] = {"file", "name", "value"};
    static const char *const master_keys[] = {"file", "service", "type", "name", "value"};
    *out = NULL;
    if (!json_is_array(a) || json_array_size(a) > PRIVMSG_MAX_SETTINGS)
        return -EINVAL;
    struct overrides_journal *j = calloc(1, sizeof(*j));
    if (!j)
        return -ENOMEM;
    int rc = 0;
    j->config_dir = strdup(config_dir ? config_dir : "");
    size_t n = json_array_size(a);
    j->settings = n ? calloc(n, sizeof(*j->settings)) : NULL;
    if (!j->config_dir || (n && !j->settings)) {
        overrides_journal_free(j);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *o = json_array_get(a, i);
        struct overrides_setting *st = &j->settings[i];
        json_t *f = json_object_get(o, "file");
        const char *fs = json_is_string(f) ? json_string_value(f) : "";
        if (strcmp(fs, "main") == 0 && exact_keys(o, main_keys, 3, NULL, 0)) {
            st->file = OVERRIDES_MAIN;
        } else if (strcmp(fs, "master") == 0 && exact_keys(o, master_keys, 5, NULL, 0)) {
            st->file = OVERRIDES_MASTER;
            st->service = short_str(o, "service", 256, &rc);
            st->type = short_str(o, "type", 32, &rc);
        } else {
            rc = -EINVAL;
            break;
        }
        st->name = short_str(o, "name", 256, &rc);
        st->value = short_str(o, "value", OVERRIDES_MAX_VALUE, &rc);
        j->n = i + 1;
    }
    if (rc < 0) {
        overrides_journal_free(j);
        return rc;
    }
    *out = j;
    return 0;
}
