/* fsutil: reading a whole file, crash-safe replacement of a file (PATH.postsurge-tmp,
 * fsync, rename) and the directory fsync that makes the rename durable, shared by the
 * controller (journal and restored Postfix files, in libuv's thread pool), the privileged
 * helper and the report. Blocking; safe from any thread. */
#pragma once

#include <stddef.h>
#include <sys/stat.h>

/* Writes data[0..len) to fd (short writes and EINTR retried), fsyncs and closes it; fd
 * is closed in every case. name names the file in messages. Returns 0, or a negative
 * errno with a message in err (errlen bytes, NUL-terminated). */
int fsutil_write_close(int fd, const char *data, size_t len, const char *name, char *err,
                       size_t errlen);

/* fsutil_replace flag: remove a leftover PATH.postsurge-tmp first and create it with
 * O_EXCL | O_NOFOLLOW, for a root writer in a directory an unprivileged user may have
 * prepared a symlink in. Without it the temp file is opened with O_TRUNC. */
#define FSUTIL_FRESH_TMP 1u

/* Replaces path by data[0..len): writes PATH.postsurge-tmp, sets its owner and mode from
 * like (NULL: mode 0600, owner the caller), fsyncs and closes it, renames it over path.
 * Does not fsync the directory (fsutil_fsync_dir_of): callers differ in whether that
 * failing fails the write. flags: 0 or FSUTIL_FRESH_TMP. On failure the temp file is
 * removed, a message goes to err (errlen bytes, NUL-terminated) and a negative errno is
 * returned; path is then untouched. Returns 0 on success. */
int fsutil_replace(const char *path, const char *data, size_t len, const struct stat *like,
                   unsigned flags, char *err, size_t errlen);

/* fsyncs the directory holding path ("/" for "/name"; nothing for a name without a
 * slash). Returns 0 or a negative errno from open or fsync. */
int fsutil_fsync_dir_of(const char *path);

/* Reads fd to its end into *buf (new, NUL-terminated; *len bytes without the NUL). EINTR
 * retried; fd stays open. Returns 0, -ENOMEM or a negative errno from read. */
int fsutil_read_fd(int fd, char **buf, size_t *len);

/* "DIR/NAME", new (caller frees), or NULL without memory. */
char *fsutil_path_join(const char *dir, const char *name);

/* Opens path read-only, close-on-exec and non-blocking (a FIFO is never waited on),
 * plus extra flags (O_NOFOLLOW), and checks it is a regular file. Returns the fd, or a
 * negative errno (-EINVAL when it is not a regular file, which is then closed). */
int fsutil_open_regular(const char *path, int extra_flags);
