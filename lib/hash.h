/* hash: a fast 64-bit hash of bytes, eight at a time, for in-process hash tables and ids
 * that only live in this process (the memory store's buckets, the limits' unit ids).
 * Not FNV: about one multiply per eight bytes instead of one per byte. Unseeded, so
 * not for anything an attacker must not steer (as FNV-1a); never stored or sent. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define HASH64_START 0x243f6a8885a308d3ULL
#define HASH64_MUL 0x9e3779b97f4a7c15ULL

/* Continues h (begin with HASH64_START) over p[0..n). Chaining calls hashes the pieces
 * as pieces: hash64_add(hash64_add(h, "ab", 2), "c", 1) differs from "abc" in one call,
 * which is fine for a fixed prefix. */
static inline uint64_t hash64_add(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (; n >= 8; b += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        h = (h ^ w) * HASH64_MUL;
        h ^= h >> 32;
    }
    /* The tail and its length (0 to 7) in one word, so "a" and "a\0" differ. */
    uint64_t w = (uint64_t)n << 56;
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)b[i] << (8 * i);
    h = (h ^ w) * HASH64_MUL;
    return h ^ (h >> 29);
}

/* Mixes a second hash into h (a unit id from a key hash and a recipient hash). */
static inline uint64_t hash64_mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * HASH64_MUL;
    h ^= h >> 32;
    h *= HASH64_MUL;
    return h ^ (h >> 29);
}
