/* jsonget: a member of a JSON object read for display (the status page, `postsurge top`,
 * `postsurge stress`): "" or 0 when it is missing or of another type. Header only. */
#pragma once

#include <jansson.h>

static inline const char *jget_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static inline json_int_t jget_int(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}
