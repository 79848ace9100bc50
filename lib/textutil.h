/* textutil: small text helpers that several lib/ modules share, written once here.
 * Internal to lib/: static inline, so including it links nothing more. */
#pragma once

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* The value of a hexadecimal digit, or -1 when c is not one. */
static inline int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Formats an error message into err (errlen bytes); does nothing when err is NULL or
 * errlen is 0, so callers may pass an optional buffer straight through. */
__attribute__((format(printf, 3, 4))) static inline void seterr(char *err, size_t errlen,
                                                                const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* FNV-1a, for hash tables and short tags (not for anything an attacker must not steer:
 * tables that take attacker-chosen keys bound their probes). fnv64_add continues a hash
 * begun with FNV64_OFFSET. */
#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

static inline uint64_t fnv64_add(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= FNV64_PRIME;
    }
    return h;
}

static inline uint32_t fnv32(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 16777619u;
    }
    return h;
}
