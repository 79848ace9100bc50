/* report_traffic: the mail log since the last report, for `postsurge report`. Reads
 * maillog_file synchronously from a saved position (file identity + offset), follows a
 * rotation by reading the rest of the old file when it is still found beside the new one
 * (NAME.0, NAME.1 or any NAME.SUFFIX with the old inode, as `postfix logrotate` and
 * logrotate leave it), parses lines with lib/maillog and folds them into bounded per-domain
 * and per-client tables that are then added to a struct report. CLI only (blocking I/O). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct report;

/* Where the last run stopped: the first byte not yet read as part of a complete line. */
struct traffic_pos {
    bool valid; /* false: no earlier run (or the file was missing then) */
    uint64_t dev, ino;
    int64_t offset;
};

/* Distinct domains and clients kept; beyond them lines count under "(other)". */
#define TRAFFIC_MAX_KEYS 50000
/* A first run (no saved position) reads at most this much of the end of the file. */
#define TRAFFIC_FIRST_RUN_MAX (64 << 20)

struct traffic;

/* New, empty tables. NULL on ENOMEM. Free with traffic_free(). */
struct traffic *traffic_new(void);
/* NULL is a no-op. */
void traffic_free(struct traffic *t);

/* Reads path from *pos (see the file comment) up to its current end and counts every
 * complete line; on return *pos is where the next run starts (a trailing partial line is
 * left for it). Returns 0 (also when the file was rotated away and not yet recreated: the
 * rest of the old one is counted and the next run reads the new one from 0); -ENOENT when
 * the log file does not exist (*pos becomes invalid); another -errno on a read error
 * (counts so far are kept, *pos unchanged); -ENOMEM. */
int traffic_read_log(struct traffic *t, const char *path, struct traffic_pos *pos);

/* postsurge's own reply texts (limit_action, attack_action, ...), so their rejects count
 * as class "postsurge_limit" (report_reject_classify). texts is NULL-terminated and
 * borrowed: it must outlive t. */
void traffic_set_own_texts(struct traffic *t, const char *const *texts);

/* Counts one log line (no newline). Exposed for tests. Returns 0 or -ENOMEM. */
int traffic_add_line(struct traffic *t, const char *line, size_t len);

/* Lines and bytes read, files opened (2 after a rotation). */
void traffic_get_counts(const struct traffic *t, uint64_t *lines, uint64_t *bytes, unsigned *files);

/* Adds the tables to r: every domain (report_add_traffic), the top max_clients clients by
 * connections and by rejects (report_add_client; loopback connections are only counted in
 * the log totals), the top max_clients lost-connection rows per client and service
 * (report_add_lost), SASL failures by client and by username (report_add_auth_failures),
 * anvil's peaks (report_add_anvil), the log totals (probes, expired, internal connections)
 * and the Postfix warnings (report_add_warning: "process_limit" with the service,
 * "<what>_limit" for smtpd's "... limit exceeded" with the service, "postscreen_stress",
 * "ports_busy", "screening_ports_busy"), the rejects by class (report_add_rejects) and the
 * postscreen verdicts (report_add_postscreen). Returns 0 or -ENOMEM. */
int traffic_to_report(const struct traffic *t, struct report *r, size_t max_clients);
