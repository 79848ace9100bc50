/* httpclient: a blocking GET for CLI commands (see httpclient.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#define HTTPCLIENT_TIMEOUT_MS 3000
#define HTTPCLIENT_MAX_BYTES (8 << 20)

/* First inet:HOST:PORT of a listen value into host/port; false if there is none. */
bool httpclient_first_inet(const char *listen, char *host, size_t hostlen, char *port, size_t plen);
/* GET path on host:port within HTTPCLIENT_TIMEOUT_MS. Returns 0 with the body (new, NUL
 * terminated) and HTTP status, -ECONNREFUSED, -ETIMEDOUT, or another -errno. */
int httpclient_get(const char *host, const char *port, const char *path, int *status, char **body);
