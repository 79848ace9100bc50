/* journal: follows the systemd journal with libsystemd's sd_journal (the library made for
 * reading it) as a mail log source. Only the entries of one Postfix instance are read:
 * SYSLOG_IDENTIFIER equal to its syslog_name or starting with "NAME/" (postfix/smtpd,
 * postfix/submission/smtpd; not postfix-out/qmgr); each becomes the line a file would hold,
 * "TIMESTAMP HOST IDENT[PID]: MESSAGE", for lib/maillog. The journal's descriptor is
 * watched with a uv_poll, so new entries are read as they arrive; journal_poll() reads
 * on demand too. Loop thread only. Built only with libsystemd (HAVE_LIBSYSTEMD). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct journal;

/* One entry as a syslog line without newline; borrowed for the call. */
typedef void (*journal_line_cb)(struct journal *j, const char *line, size_t len, void *arg);
/* End of a journal_poll() round (never called from inside journal_poll()). */
typedef void (*journal_done_cb)(struct journal *j, void *arg);
/* journal_close() finished: j is gone. */
typedef void (*journal_closed_cb)(void *arg);

struct journal_opts {
    const char *directory; /* journal files of this directory only; NULL: the system's */
    bool from_start;       /* read what the journal holds (default: from its current end) */
    const char *cursor;    /* resume after this entry (a cursor from journal_get_cursor) */
    /* The Postfix instance's syslog_name ("postfix"); NULL or "": nothing is read until
     * journal_set_syslog_name() (the entries wait in the journal meanwhile). */
    const char *syslog_name;
    size_t max_line; /* longer messages are cut; 0: 65536 */
};

/* True if libsystemd support is built in. */
bool journal_supported(void);
/* True if a journal with at least one entry can be opened (directory NULL: the system's). */
bool journal_available(const char *directory);
/* Opens the journal now (a synchronous open, at start-up). NULL with *err set (negative
 * errno, -ENOTSUP without libsystemd). cb gets every line; opts is copied. */
struct journal *journal_new(uv_loop_t *loop, const struct journal_opts *opts, journal_line_cb cb,
                            void *arg, int *err);
/* Starts watching the descriptor; entries are delivered as they arrive. 0 or -errno. */
int journal_start(struct journal *j);
/* Reads every entry there is now, then calls done (may be NULL) from the loop. 0, -EBUSY if
 * a round is pending (done not called), or -errno. */
int journal_poll(struct journal *j, journal_done_cb done, void *arg);
/* Reads the entries of this syslog_name from now on (copied); entries held because none
 * was set are read on the next loop turn. 0, -EINVAL or -ENOMEM. */
int journal_set_syslog_name(struct journal *j, const char *syslog_name);
/* The syslog_name read ("" while none is set). Borrowed. */
const char *journal_syslog_name(const struct journal *j);
/* The cursor of the last entry delivered (new string, caller frees), or NULL if none. */
char *journal_get_cursor(struct journal *j);
/* Entries delivered so far. */
uint64_t journal_lines(const struct journal *j);
/* The report's read, synchronous (CLI only): every entry of syslog_name (required, as in
 * journal_opts) after cursor (NULL or "":
 * the last recent_sec seconds, as a first report reads the end of a file), in order, to
 * cb (j is NULL there). A cursor whose entry was vacuumed resumes at the next entry that
 * is still there. *cursor_out (new, caller frees) is where the next read starts: the
 * last entry read, or cursor again (a copy) when there was none. Returns the number of
 * entries or -errno (-ENOTSUP without libsystemd). */
long journal_read_since(const char *directory, const char *syslog_name, const char *cursor,
                        int64_t recent_sec, journal_line_cb cb, void *arg, char **cursor_out);
/* Stops and frees j; closed (may be NULL) is called once its handles are closed. No line
 * callback runs after this call. NULL is a no-op. */
void journal_close(struct journal *j, journal_closed_cb closed, void *arg);
