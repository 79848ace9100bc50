/* limits_table: per-key overrides of a rule's limit, from a Postfix-style table named by
 * the rule's `overrides TYPE:PATH`:
 *   texthash:PATH  "KEY VALUE" lines; KEY is compared with the rule's key value as the
 *                  log shows it ("alice@example.com", "192.0.2.0/24",
 *                  "alice|example.com"), case-insensitively.
 *   cidr:PATH      Postfix cidr_table lines "ADDRESS[/PREFIX] VALUE", first match wins,
 *                  matched against the request's client_address.
 * VALUE: a COUNT for the rule's window (K, M, G for bytes rules), 0 (refuse every unit)
 * or "unlimited" (neither limited nor counted). Blank lines and lines whose first
 * non-blank character is '#' are skipped. Bounded: at most LIMITS_TABLE_MAX_BYTES of
 * file and LIMITS_TABLE_MAX_ENTRIES (texthash) or LIMITS_TABLE_MAX_CIDR (cidr) entries;
 * beyond that the table is refused. Pure parsing plus one bounded file read. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "config.h"
#include "net.h"

#define LIMITS_TABLE_MAX_BYTES (64u << 20)
#define LIMITS_TABLE_MAX_ENTRIES 1000000
#define LIMITS_TABLE_MAX_CIDR 65536
/* Errors reported per table load; past it one "more errors" line. */
#define LIMITS_TABLE_MAX_ERRORS 20
/* A table's value meaning "not limited, not counted". */
#define LIMITS_TABLE_UNLIMITED (-1)

enum limits_table_type {
    LIMITS_TABLE_TEXTHASH,
    LIMITS_TABLE_CIDR,
};

struct limits_table;

/* Parses "TYPE:PATH" (texthash or cidr). Returns 0, or -EINVAL with a reason in why. */
int limits_table_spec(const char *spec, size_t len, enum limits_table_type *type, const char **path,
                      char *why, size_t whysz);

/* Parses text (len bytes) as a table of type. file names it in messages; bytes: the rule
 * measures bytes (size suffixes allowed). Every problem is appended to errs as
 * "FILE:LINE: message" (at most LIMITS_TABLE_MAX_ERRORS, then a count). Returns 0 and
 * *out (caller owns), -EINVAL (errors appended, *out NULL) or -ENOMEM. */
int limits_table_parse(enum limits_table_type type, const char *file, const char *text, size_t len,
                       bool bytes, struct limits_table **out, struct config_errors *errs);

/* Reads path (at most LIMITS_TABLE_MAX_BYTES) and parses it. st receives the stat of
 * what was read (may be NULL). A file that changed while being read is an error
 * ("changed while being read"), so a half-written table is never taken. Returns as
 * limits_table_parse, or -errno when it cannot be read (message appended as FILE:0). */
int limits_table_load(enum limits_table_type type, const char *path, bool bytes,
                      struct limits_table **out, struct stat *st, struct config_errors *errs);

void limits_table_free(struct limits_table *t);
size_t limits_table_count(const struct limits_table *t);

/* Looks up value (a rule's key value, as limits_key_value writes it) for texthash, or
 * client (the request's client address, may be NULL) for cidr. Returns true and the
 * entry's value (a count, 0 or LIMITS_TABLE_UNLIMITED) in *limit when an entry
 * matches. */
bool limits_table_lookup(const struct limits_table *t, const char *value, size_t vlen,
                         const struct net_addr *client, int64_t *limit);

/* Parses one VALUE as a table line holds it (n bytes): a COUNT (K, M, G when bytes), 0 or
 * "unlimited" (LIMITS_TABLE_UNLIMITED). Returns NULL and *out, or a static reason. */
const char *limits_table_value_parse(const char *p, size_t n, bool bytes, int64_t *out);
