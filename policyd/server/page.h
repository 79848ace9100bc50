/* page: the status page GET / serves (one self-contained HTML document, rendered from
 * the /status JSON, refreshing itself from /status with JavaScript) and the samples it
 * plots (saturation of every node over the last hour, this node's traffic). */
#pragma once

#include <jansson.h>
#include <stddef.h>

#include "server.h"

/* Seconds between samples, and samples kept: one hour. */
#define PAGE_SAMPLE_MS 10000
#define PAGE_SAMPLES 360
/* The file in state_directory where `postsurge report` leaves its last JSON result. */
#define PAGE_REPORT_FILE "report-last.json"

struct page;

/* Starts sampling on srv's loop. NULL on ENOMEM. */
struct page *page_new(struct server *srv);
/* Stops the timer; freed once its handle is closed. NULL is a no-op. */
void page_free(struct page *p);

/* Takes one sample from status (the node status without the page's own keys). */
void page_sample(struct page *p, json_t *status);
/* Adds "history" (saturation samples per node), "traffic" (rates over the last minutes,
 * null before the first sample) and "report" (the report's last result or null). */
void page_add_status(struct page *p, json_t *status);

/* The page for status (with page_add_status's keys): malloc'ed HTML, its length in
 * *len; NULL on ENOMEM. */
char *page_html(json_t *status, size_t *len);
