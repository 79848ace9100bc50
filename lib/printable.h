/* printable: makes text that may hold attacker-chosen bytes safe to log or print.
 * Control characters (C0, DEL, and C1 as UTF-8 U+0080-U+009F) and bytes that are not
 * valid UTF-8 become "\xHH" (TAB, LF, CR as "\t", "\n", "\r"); everything else,
 * including a backslash, is kept. The output is printable ASCII or valid UTF-8 only, so
 * escaping it again changes nothing: a line escaped twice reads as one escaped once. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* True if s[0..len) holds a byte printable_escape() would change. A fast scan: the
 * common all-printable-ASCII text returns false without decoding anything. */
bool printable_needed(const char *s, size_t len);

/* Writes the escaped form of in[0..len) to out (size outsz, always NUL-terminated when
 * outsz > 0; an escape that does not fit whole is left out). keep_newline keeps LF bytes
 * as they are (for multi-line text such as a report). Returns the length of the whole
 * escaped text (as snprintf does: out was truncated if the return is >= outsz). Each
 * input byte becomes at most 4 output bytes. */
size_t printable_escape(char *out, size_t outsz, const char *in, size_t len, bool keep_newline);
