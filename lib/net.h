/* net: IP addresses and CIDR networks for the rate limiter. Parses the client_address
 * Postfix sends (IPv4, IPv6; IPv4-mapped IPv6 is folded to IPv4), masks it to a prefix
 * to group clients by network, formats the grouped key ("192.0.2.0/24", "2001:db8::/64")
 * and matches addresses against a CIDR set (limit_exempt_networks). Pure: no sockets,
 * no libc resolver; every parser is bounded by an explicit length. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum net_family {
    NET_V4 = 4,
    NET_V6 = 6,
};

/* An address. IPv4 uses bytes[0..3] (network order) and leaves the rest zero, so two
 * equal addresses compare equal with memcmp over the whole struct. */
struct net_addr {
    uint8_t family; /* enum net_family */
    uint8_t bytes[16];
};

/* A network: an address with its host bits zero, and a prefix length (0..32 or 0..128). */
struct net_cidr {
    struct net_addr addr;
    unsigned prefix;
};

/* Longest text net_addr_format()/net_cidr_format() write, NUL included
 * ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"). */
#define NET_ADDR_STRLEN 48

/* Parses len bytes of s (no NUL needed) as an IPv4 dotted quad (exactly four decimal
 * parts, no leading zeros, as inet_pton) or an IPv6 address (RFC 4291 text, with an
 * optional embedded dotted quad; surrounding [] and a %zone suffix are accepted and
 * dropped). An IPv4-mapped IPv6 address (::ffff:a.b.c.d) yields the IPv4 address.
 * Returns 0 and fills *out, or -EINVAL. */
int net_addr_parse(const char *s, size_t len, struct net_addr *out);

/* Clears every bit past prefix (clamped to the family's length). */
void net_addr_mask(struct net_addr *a, unsigned prefix);

/* Writes the canonical text of a (dotted quad; RFC 5952 for IPv6: lower case, longest
 * zero run compressed, leftmost on ties, no run of one group) into out (size outsz,
 * NUL-terminated). Returns the length, or -ENOSPC if out is too small. */
int net_addr_format(const struct net_addr *a, char *out, size_t outsz);

/* Writes "ADDR/PREFIX" of the network that contains a ("192.0.2.0/24"); when prefix is
 * the full length (or more) it writes the plain address ("192.0.2.7"). Returns the length
 * or -ENOSPC. */
int net_prefix_format(const struct net_addr *a, unsigned prefix, char *out, size_t outsz);

/* Parses "ADDR" (a host: /32 or /128) or "ADDR/PREFIX". Host bits after the prefix are
 * an error (-EINVAL with *why = "host bits set"), as in Postfix CIDR tables, so a typo
 * such as 192.0.2.1/24 is not silently widened. why (may be NULL) receives a static
 * reason on -EINVAL. */
int net_cidr_parse(const char *s, size_t len, struct net_cidr *out, const char **why);

/* True if a lies in c. Families must match (mapped IPv6 was folded at parse time). */
bool net_cidr_contains(const struct net_cidr *c, const struct net_addr *a);

/* A set of networks, checked linearly: exemption lists are short. */
struct net_set;

/* Parses a list of CIDRs separated by blanks and/or commas ("" gives an empty set).
 * Returns 0 and a new set in *out (caller owns, free with net_set_free), -EINVAL with a
 * message in err (size errsz: "bad network \"x\": host bits set") for the first bad
 * entry, or -ENOMEM. err may be NULL. */
int net_set_parse(const char *list, struct net_set **out, char *err, size_t errsz);
/* Frees a set. NULL is a no-op. */
void net_set_free(struct net_set *set);
/* True if a lies in any network of the set. A NULL or empty set contains nothing. */
bool net_set_contains(const struct net_set *set, const struct net_addr *a);
/* Number of networks in the set. */
size_t net_set_count(const struct net_set *set);
