/* sha1: the SHA-1 digest, only to name the window script for EVALSHA without a
 * SCRIPT LOAD (which a sharding proxy does not forward). Not for security. */
#pragma once

#include <stddef.h>

/* Writes the SHA-1 of data[0..len) as 40 lowercase hex digits and a NUL into hex. */
void sha1_hex(const void *data, size_t len, char hex[41]);
