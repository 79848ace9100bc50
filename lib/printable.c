/* printable: the escaping that keeps client-supplied text from reaching a log line or a
 * report raw. The log layer runs every line through it, the report's text writer its whole
 * output; both test printable_needed() first so plain text costs one scan. */
#include "printable.h"

#include <stdint.h>

/* Length of the valid UTF-8 sequence (2 to 4 bytes) at s (n bytes available), or 0 if
 * it is not one: overlong forms, surrogates and code points past U+10FFFF are invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */

    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return need;
}

/* True for U+0080-U+009F (C1 controls) encoded as UTF-8: c2 80 .. c2 9f. */
static bool utf8_c1(const unsigned char *s, size_t seq)
{
    return seq == 2 && s[0] == 0xc2 && s[1] <= 0x9f;
}

bool printable_needed(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c >= 0x20 && c < 0x7f)
            continue;
        if (c < 0x80)
            return true;
        size_t seq = utf8_seq(p + i, len - i);
        if (seq == 0 || utf8_c1(p + i, seq))
            return true;
        i += seq - 1;
    }
    return false;
}

size_t printable_escape(char *out, size_t outsz, const char *in, size_t len, bool keep_newline)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0; /* length of the whole escaped text */
    size_t w = 0; /* bytes written to out: stops growing at the first escape that does not fit */
    bool full = outsz == 0;

    for (size_t i = 0; i < len; i++) {
        unsigned char c = p[i];
        char esc[4];
        const char *src = esc;
        size_t n = 0, seq;

        if ((c >= 0x20 && c < 0x7f) || (c == '\n' && keep_newline)) {
            esc[n++] = (char)c;
        } else if (c == '\t' || c == '\n' || c == '\r') {
            esc[n++] = '\\';
            esc[n++] = c == '\t' ? 't' : c == '\n' ? 'n' : 'r';
        } else if (c >= 0x80 && (seq = utf8_seq(p + i, len - i)) != 0 && !utf8_c1(p + i, seq)) {
            /* A valid multi-byte character is copied whole. */
            src = in + i;
            n = seq;
            i += seq - 1;
        } else {
            esc[n++] = '\\';
            esc[n++] = 'x';
            esc[n++] = hex[c >> 4];
            esc[n++] = hex[c & 15];
        }
        if (!full && w + n < outsz) {
            for (size_t k = 0; k < n; k++)
                out[w + k] = src[k];
            w += n;
        } else {
            full = true;
        }
        o += n;
    }
    if (outsz > 0)
        out[w] = '\0';
    return o;
}
