/* pfcmd: runs one Postfix command (postconf, postfix) synchronously, no shell: argv[0]
 * an absolute path, stdin /dev/null, its own session, stdout and stderr captured with
 * caps, a timeout that sends SIGTERM then SIGKILL to the session. For code that may
 * block: the privileged helper and libuv's thread pool (the loop uses util/spawn). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define PFCMD_MAX_STDOUT (4u << 20)
#define PFCMD_MAX_STDERR (64u << 10)

/* An absolute path for a command: as given when it has a '/', else the first executable
 * in PATH (nothing here searches PATH or runs a shell later). New string, NULL on ENOMEM. */
char *pfcmd_resolve(const char *name);

/* Runs argv. On success (exit 0, stdout within its cap) returns 0 and, when out is not
 * NULL, *out is the stdout (new, NUL-terminated). Otherwise -EIO (or -ENOMEM) with the
 * reason and the start of stderr in err; line names the command in that message. */
int pfcmd_run(char *const *argv, const char *line, uint64_t timeout_ms, char **out, size_t *out_len,
              char *err, size_t errlen);
