/* allowlist: the Postfix settings a stress profile may change, each with the syntax of
 * the values it accepts. The privileged helper runs postconf -e/-P as root on what the
 * unprivileged daemon asks for; this list is what keeps that from being a way to root
 * (daemon_directory, mailbox_command, maps, mynetworks, ... are never on it). Checked
 * where a profile is parsed (check-config, serve's start and SIGHUP, and again in the
 * helper for every apply) and where a journal is parsed (every restore path). Pure. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

enum allowlist_kind {
    ALLOWLIST_COUNT,    /* a whole number: 0 to 999999999 */
    ALLOWLIST_DURATION, /* a whole number with an optional unit s, m, h, d or w */
    ALLOWLIST_YESNO,    /* yes or no */
    ALLOWLIST_ACTION,   /* postscreen test action: ignore, enforce or drop */
};

struct allowlist_entry {
    const char *name;
    enum allowlist_kind kind;
    bool main;   /* may be set in main.cf (postconf -e) */
    bool master; /* may be set as a master.cf -o override (postconf -P) */
};

/* The whole list, in documentation order; *n receives its length. Borrowed, static. */
const struct allowlist_entry *allowlist_entries(size_t *n);

/* "a whole number", "a duration (number, optional s/m/h/d/w)", ...: for messages. */
const char *allowlist_kind_text(enum allowlist_kind k);

/* Checks one setting: name on the list for its file (master true: a master.cf -o
 * override) and value of its syntax. Returns true, or false with the reason in err
 * (naming the setting). err may be NULL. */
bool allowlist_check(bool master, const char *name, const char *value, char *err, size_t errlen);
