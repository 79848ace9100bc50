/* page: the status page that GET / serves, and the samples it plots.
 *
 * The page is one self-contained HTML document (no external scripts, fonts or styles),
 * rendered here from the same JSON as /status so it reads without JavaScript; its
 * script fetches /status every 2 s and rebuilds the same elements with textContent. A
 * Content-Security-Policy forbids anything from elsewhere.
 *
 * Every PAGE_SAMPLE_MS a timer takes the node status: each node's saturation (an hour in
 * a ring) and this node's request and refusal counters (PAGE_TRAFFIC_SAMPLES, for rates
 * over the last minutes). It also reads state_directory/report-last.json, which
 * `postsurge report` leaves, when its size or time changed (at most PAGE_REPORT_MAX
 * bytes, so the read on the loop stays short). */
#define LOG_COMPONENT "http"
#include "page.h"

#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "util/jsonget.h"
#include "util/log.h"

#define PAGE_MAX_NODES 16
#define PAGE_TRAFFIC_SAMPLES 31 /* 5 minutes of PAGE_SAMPLE_MS */
#define PAGE_REPORT_MAX (256 * 1024)

struct page_node {
    char name[64];
    int16_t sat[PAGE_SAMPLES]; /* -1: no sample */
};

struct page_traffic {
    int64_t t_ms;
    uint64_t requests;
    uint64_t refused[ENGINE_RULE_COUNTS]; /* by index in rule_names (dryrun included) */
};

struct page {
    struct server *srv;
    uv_timer_t timer;
    bool timer_open;
    size_t next, count; /* the saturation ring */
    struct page_node nodes[PAGE_MAX_NODES];
    size_t n_nodes;
    struct page_traffic traffic[PAGE_TRAFFIC_SAMPLES];
    size_t t_next, t_count;
    char rule_names[ENGINE_RULE_COUNTS][33];
    size_t n_rule_names;
    json_t *report;
    struct timespec report_mtime;
    off_t report_size;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- samples ---- */

static struct page_node *page_node(struct page *p, const char *name)
{
    for (size_t i = 0; i < p->n_nodes; i++)
        if (strcmp(p->nodes[i].name, name) == 0)
            return &p->nodes[i];
    if (p->n_nodes == PAGE_MAX_NODES)
        return NULL;
    struct page_node *n = &p->nodes[p->n_nodes++];
    snprintf(n->name, sizeof(n->name), "%s", name);
    for (size_t i = 0; i < PAGE_SAMPLES; i++)
        n->sat[i] = -1;
    return n;
}

static size_t rule_index(struct page *p, const char *name)
{
    for (size_t i = 0; i < p->n_rule_names; i++)
        if (strcmp(p->rule_names[i], name) == 0)
            return i;
    if (p->n_rule_names == ENGINE_RULE_COUNTS)
        return ENGINE_RULE_COUNTS;
    snprintf(p->rule_names[p->n_rule_names], sizeof(p->rule_names[0]), "%s", name);
    return p->n_rule_names++;
}

/* This node's counters as they are in status. */
static void traffic_now(struct page *p, json_t *status, struct page_traffic *t)
{
    memset(t, 0, sizeof(*t));
    t->t_ms = wall_ms();
    t->requests = (uint64_t)json_integer_value(
        json_object_get(json_object_get(status, "counters"), "requests"));
    json_t *rules = json_object_get(json_object_get(status, "limits"), "rules"), *r;
    size_t i;
    json_array_foreach(rules, i, r)
    {
        const char *name = json_string_value(json_object_get(r, "name"));
        size_t k = name ? rule_index(p, name) : ENGINE_RULE_COUNTS;
        if (k < ENGINE_RULE_COUNTS)
            t->refused[k] = (uint64_t)(json_integer_value(json_object_get(r, "refused")) +
                                       json_integer_value(json_object_get(r, "dryrun")));
    }
}

/* Reads the report's last result when it changed. */
static void page_read_report(struct page *p)
{
    const char *dir = p->srv->cfg->state_directory;
    char path[4096];
    struct stat st;

    if (!dir || !*dir)
        return;
    snprintf(path, sizeof(path), "%s/%s", dir, PAGE_REPORT_FILE);
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        json_decref(p->report);
        p->report = NULL;
        return;
    }
    if (p->report && st.st_size == p->report_size && st.st_mtim.tv_sec == p->report_mtime.tv_sec &&
        st.st_mtim.tv_nsec == p->report_mtime.tv_nsec)
        return;
    p->report_size = st.st_size;
    p->report_mtime = st.st_mtim;
    json_decref(p->report);
    p->report = NULL;
    if (st.st_size > PAGE_REPORT_MAX) {
        log_debug("%s: larger than %d bytes, not shown", path, PAGE_REPORT_MAX);
        return;
    }
    json_error_t jerr;
    p->report = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!p->report)
        log_debug("%s: %s", path, jerr.text);
}

void page_sample(struct page *p, json_t *status)
{
    json_t *nodes = json_object_get(status, "nodes"), *n;
    size_t i;

    if (!json_array_size(nodes))
        nodes = NULL;
    for (size_t k = 0; k < p->n_nodes; k++)
        p->nodes[k].sat[p->next] = -1;
    if (nodes) {
        json_array_foreach(nodes, i, n)
        {
            const char *name = json_string_value(json_object_get(n, "name"));
            struct page_node *pn = name ? page_node(p, name) : NULL;
            json_int_t s = json_integer_value(json_object_get(n, "saturation"));
            if (pn)
                pn->sat[p->next] = (int16_t)(s < 0 ? 0 : s > 1000 ? 1000 : s);
        }
    } else {
        const char *name = json_string_value(json_object_get(status, "node"));
        struct page_node *pn = page_node(p, name ? name : "");
        json_int_t s = json_integer_value(json_object_get(status, "saturation"));
        if (pn)
            pn->sat[p->next] = (int16_t)(s < 0 ? 0 : s > 1000 ? 1000 : s);
    }
    p->next = (p->next + 1) % PAGE_SAMPLES;
    if (p->count < PAGE_SAMPLES)
        p->count++;
    traffic_now(p, status, &p->traffic[p->t_next]);
    p->t_next = (p->t_next + 1) % PAGE_TRAFFIC_SAMPLES;
    if (p->t_count < PAGE_TRAFFIC_SAMPLES)
        p->t_count++;
    page_read_report(p);
}

static void page_on_timer(uv_timer_t *t)
{
    struct page *p = t->data;
    json_t *st = http_status_base_json(p->srv);
    if (st)
        page_sample(p, st);
    json_decref(st);
}

struct page *page_new(struct server *srv)
{
    struct page *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->srv = srv;
    if (uv_timer_init(srv->loop, &p->timer) < 0) {
        free(p);
        return NULL;
    }
    p->timer.data = p;
    p->timer_open = true;
    /* The first sample soon after start (the controller has its first reading), then
     * every PAGE_SAMPLE_MS; the timer alone never keeps the loop alive. */
    uv_timer_start(&p->timer, page_on_timer, 1000, PAGE_SAMPLE_MS);
    uv_unref((uv_handle_t *)&p->timer);
    return p;
}

static void page_on_closed(uv_handle_t *h)
{
    struct page *p = h->data;
    json_decref(p->report);
    free(p);
}

void page_free(struct page *p)
{
    if (!p)
        return;
    if (p->timer_open) {
        p->timer_open = false;
        uv_close((uv_handle_t *)&p->timer, page_on_closed);
        return;
    }
    page_on_closed((uv_handle_t *)&p->timer);
}

void page_add_status(struct page *p, json_t *status)
{
    /* The saturation plot: oldest first, null where a node had no sample. */
    json_t *hn = json_array();
    for (size_t k = 0; hn && k < p->n_nodes; k++) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < p->count; i++) {
            size_t at = (p->next + PAGE_SAMPLES - p->count + i) % PAGE_SAMPLES;
            int v = p->nodes[k].sat[at];
            json_array_append_new(a, v < 0 ? json_null() : json_integer(v));
        }
        json_array_append_new(hn,
                              json_pack("{s:s,s:o*}", "name", p->nodes[k].name, "saturation", a));
    }
    json_object_set_new(status, "history",
                        json_pack("{s:i,s:o*}", "interval_s", PAGE_SAMPLE_MS / 1000, "nodes", hn));

    /* Rates: now against the oldest sample of the last minutes. */
    json_t *tr = NULL;
    if (p->t_count) {
        size_t oldest = (p->t_next + PAGE_TRAFFIC_SAMPLES - p->t_count) % PAGE_TRAFFIC_SAMPLES;
        const struct page_traffic *o = &p->traffic[oldest];
        struct page_traffic now;
        traffic_now(p, status, &now);
        double dt = (double)(now.t_ms - o->t_ms) / 1000.0;
        if (dt >= 1.0) {
            json_t *rules = json_array();
            double total = 0;
            for (size_t i = 0; rules && i < p->n_rule_names; i++) {
                double r = now.refused[i] >= o->refused[i]
                               ? (double)(now.refused[i] - o->refused[i]) / dt
                               : 0;
                total += r;
                json_array_append_new(
                    rules, json_pack("{s:s,s:f}", "name", p->rule_names[i], "refusals_per_s", r));
            }
            double rq = now.requests >= o->requests ? (double)(now.requests - o->requests) / dt : 0;
            tr = json_pack("{s:f,s:f,s:f,s:o*}", "window_s", dt, "requests_per_s", rq,
                           "refusals_per_s", total, "rules", rules);
        }
    }
    json_object_set_new(status, "traffic", tr ? tr : json_null());
    json_object_set_new(status, "report", p->report ? json_incref(p->report) : json_null());
}

/* ---- HTML ---- */

struct buf {
    char *s;
    size_t len, cap;
    bool failed;
};

static void put(struct buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (b->len + n + 1 > cap)
            cap *= 2;
        char *ns = realloc(b->s, cap);
        if (!ns) {
            b->failed = true;
            return;
        }
        b->s = ns;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

static void putf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Text from anywhere (node names, event texts, rule keys): escaped for element content
 * and quoted attribute values. */
static void esc(struct buf *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<':
            puts_(b, "&lt;");
            break;
        case '>':
            puts_(b, "&gt;");
            break;
        case '&':
            puts_(b, "&amp;");
            break;
        case '"':
            puts_(b, "&quot;");
            break;
        case '\'':
            puts_(b, "&#39;");
            break;
        default:
            put(b, s, 1);
        }
    }
}

/* "2026-12-02 07:18:37 UTC" for wall ms; "-" for 0. */
static void put_time(struct buf *b, json_int_t ms)
{
    struct tm tm;
    time_t t = (time_t)(ms / 1000);
    char out[40];
    if (ms <= 0 || !gmtime_r(&t, &tm)) {
        puts_(b, "-");
        return;
    }
    strftime(out, sizeof(out), "%Y-%m-%d %H:%M:%S UTC", &tm);
    puts_(b, out);
}

/* One item of a list of timed entries (events, refusals): "<li><time>TIME</time>
 * <b>WHAT</b> NOTE TEXT</li>", the text in a span of class text_class when one is given.
 * what and text are escaped; note (may be NULL) and text_class are the page's own. */
static void put_timed_item(struct buf *b, json_int_t ms, const char *what, const char *note,
                           const char *text_class, const char *text)
{
    puts_(b, "<li><time>");
    put_time(b, ms);
    puts_(b, "</time> <b>");
    esc(b, what);
    puts_(b, "</b> ");
    if (note)
        puts_(b, note);
    if (text_class)
        putf(b, "<span class=\"%s\">", text_class);
    esc(b, text);
    puts_(b, text_class ? "</span></li>" : "</li>");
}

/* The saturation plot of one node as SVG: 0..100 % over the last hour, gaps where no
 * sample was taken. The script draws the same path. */
static void put_plot(struct buf *b, json_t *history, const char *name)
{
    json_t *hn = json_object_get(history, "nodes"), *h, *series = NULL;
    size_t i;
    json_array_foreach(hn, i, h)
    {
        if (strcmp(jget_str(h, "name"), name) == 0)
            series = json_object_get(h, "saturation");
    }
    puts_(b, "<svg class=\"plot\" viewBox=\"0 0 360 60\" width=\"360\" height=\"60\" role=\"img\" "
             "aria-label=\"saturation over the last hour\"><path d=\"");
    size_t n = json_array_size(series);
    bool pen = false;
    for (i = 0; i < n; i++) {
        json_t *v = json_array_get(series, i);
        if (!json_is_integer(v)) {
            pen = false;
            continue;
        }
        json_int_t s = json_integer_value(v);
        putf(b, "%c%zu %lld ", pen ? 'L' : 'M', PAGE_SAMPLES - n + i,
             (long long)(60 - (s > 100 ? 100 : s) * 60 / 100));
        pen = true;
    }
    puts_(b, "\"/></svg>");
}

static void put_node(struct buf *b, json_t *n, json_t *history)
{
    bool stress = json_is_true(json_object_get(n, "stress"));
    json_t *v;
    size_t i;

    puts_(b, "<section class=\"node\" data-node=\"");
    esc(b, jget_str(n, "name"));
    puts_(b, "\"><h2><span class=\"name\">");
    esc(b, jget_str(n, "name"));
    putf(b,
         "</span> <span class=\"stress %s\">Stress %s</span> <span class=\"sat\">saturation "
         "%lld%%</span>",
         stress ? "on" : "off", stress ? "Y" : "N", (long long)jget_int(n, "saturation"));
    if (json_is_true(json_object_get(n, "imbalance")))
        puts_(b, " <span class=\"flag\">imbalance</span>");
    puts_(b, "</h2><p class=\"since\">state ");
    esc(b, jget_str(n, "state"));
    puts_(b, " since ");
    put_time(b, jget_int(n, "since"));
    puts_(b, "</p><table class=\"services\"><tr><th>service</th><th>busy / limit</th><th></th>"
             "<th>waiting</th></tr>");
    json_array_foreach(json_object_get(n, "services"), i, v)
    {
        puts_(b, "<tr><td>");
        esc(b, jget_str(v, "name"));
        putf(b,
             "</td><td><meter min=\"0\" max=\"%lld\" value=\"%lld\"></meter></td><td>%lld / "
             "%lld</td><td>%lld</td></tr>",
             (long long)(jget_int(v, "limit") > 0 ? jget_int(v, "limit") : 1),
             (long long)jget_int(v, "busy"), (long long)jget_int(v, "busy"),
             (long long)jget_int(v, "limit"), (long long)jget_int(v, "waiting"));
    }
    puts_(b, "</table><h3>Overrides in force</h3><ul class=\"overrides\">");
    json_array_foreach(json_object_get(n, "overrides_detail"), i, v)
    {
        puts_(b, "<li>");
        esc(b, jget_str(v, "setting"));
        puts_(b, ": ");
        json_t *before = json_object_get(v, "before");
        esc(b, json_is_string(before) ? json_string_value(before) : "(default)");
        puts_(b, " \xe2\x86\x92 ");
        esc(b, jget_str(v, "during"));
        puts_(b, "</li>");
    }
    puts_(b, "</ul><h3>Saturation, last hour</h3>");
    put_plot(b, history, jget_str(n, "name"));
    puts_(b, "<h3>Latest events</h3><ul class=\"events\">");
    json_array_foreach(json_object_get(n, "events"), i, v) put_timed_item(
        b, jget_int(v, "time"), jget_str(v, "kind"), NULL, NULL, jget_str(v, "text"));
    puts_(b, "</ul></section>");
}

static void put_local(struct buf *b, json_t *st)
{
    json_t *ss = json_object_get(st, "store_state"), *tr = json_object_get(st, "traffic"), *v;
    size_t i;

    puts_(b, "<section id=\"local\"><h2>This node: <span class=\"name\">");
    esc(b, jget_str(st, "node"));
    puts_(b, "</span></h2><p class=\"store\">store ");
    esc(b, jget_str(ss, "kind"));
    puts_(b, ", ");
    esc(b, jget_str(ss, "up"));
    if (json_is_true(json_object_get(ss, "degraded"))) {
        puts_(b, ", <span class=\"flag\">degraded</span> since ");
        put_time(b, jget_int(ss, "degraded_since"));
    }
    putf(b, ", %lld counter keys in memory</p>", (long long)jget_int(ss, "entries"));
    puts_(b, "<h3>Policy traffic</h3><p class=\"traffic\">");
    if (json_is_object(tr))
        putf(b, "%.2f requests/s, %.2f refusals/s over the last %.0f s</p>",
             json_real_value(json_object_get(tr, "requests_per_s")),
             json_real_value(json_object_get(tr, "refusals_per_s")),
             json_real_value(json_object_get(tr, "window_s")));
    else
        puts_(b, "no sample yet</p>");
    puts_(b, "<table class=\"rules\"><tr><th>rule</th><th>refusals/s</th></tr>");
    json_array_foreach(json_object_get(tr, "rules"), i, v)
    {
        puts_(b, "<tr><td>");
        esc(b, jget_str(v, "name"));
        putf(b, "</td><td>%.2f</td></tr>", json_real_value(json_object_get(v, "refusals_per_s")));
    }
    puts_(b, "</table><h3>Latest refusals</h3><ul class=\"refusals\">");
    json_array_foreach(json_object_get(json_object_get(st, "limits"), "recent_refusals"), i, v)
        put_timed_item(b, jget_int(v, "time"), jget_str(v, "rule"),
                       json_is_true(json_object_get(v, "dryrun")) ? "(dryrun) " : NULL, "key",
                       jget_str(v, "key"));
    puts_(b, "</ul><h3>Health report</h3><div class=\"report\">");
    json_t *rp = json_object_get(st, "report");
    if (!json_is_object(rp)) {
        puts_(b, "<p>no report yet (postsurge report leaves its last result here)</p>");
    } else {
        puts_(b, "<p>status <b class=\"rstatus\">");
        esc(b, jget_str(rp, "status"));
        puts_(b, "</b>, generated ");
        put_time(b, jget_int(rp, "generated_at") * 1000);
        puts_(b, "</p><ul class=\"findings\">");
        json_array_foreach(json_object_get(rp, "findings"), i, v)
        {
            puts_(b, "<li><b>");
            esc(b, jget_str(v, "severity"));
            puts_(b, "</b> ");
            esc(b, jget_str(v, "message"));
            puts_(b, "<br><i>advice:</i> ");
            esc(b, jget_str(v, "advice"));
            puts_(b, "</li>");
        }
        puts_(b, "</ul>");
    }
    puts_(b, "</div></section>");
}

/* The script: every 2 s, GET /status and rebuild #app with the same structure as the
 * server renders, every text through textContent. */
static const char page_script[] =
    "(function(){'use strict';\n"
    "var SVG='http://www.w3.org/2000/svg';\n"
    "function el(t,cls,text){var e=document.createElement(t);if(cls)e.className=cls;"
    "if(text!==undefined)e.textContent=String(text);return e;}\n"
    "function add(p,c){p.appendChild(c);return c;}\n"
    "function tm(ms){if(!ms||ms<=0)return '-';return new Date(ms).toISOString()"
    ".replace('T',' ').replace(/\\.\\d+Z$/,' UTC');}\n"
    "function plot(h,name){var s=document.createElementNS(SVG,'svg');s.setAttribute('class',"
    "'plot');s.setAttribute('viewBox','0 0 360 60');s.setAttribute('width','360');"
    "s.setAttribute('height','60');s.setAttribute('role','img');s.setAttribute('aria-label',"
    "'saturation over the last hour');var d='',pen=false,ser=[];((h&&h.nodes)||[]).forEach("
    "function(x){if(x.name===name)ser=x.saturation||[];});var n=ser.length;ser.forEach("
    "function(v,i){if(typeof v!=='number'){pen=false;return;}d+=(pen?'L':'M')+("
    "PAGE_SAMPLES_JS-n+i)+' '+Math.round(60-Math.min(v,100)*60/100)+' ';pen=true;});"
    "var p=document.createElementNS(SVG,'path');p.setAttribute('d',d);s.appendChild(p);"
    "return s;}\n"
    "function node(n,h){var s=el('section','node');s.setAttribute('data-node',n.name||'');"
    "var h2=add(s,el('h2'));add(h2,el('span','name',n.name||''));h2.appendChild("
    "document.createTextNode(' '));var y=n.stress===true;add(h2,el('span','stress '+(y?'on':"
    "'off'),'Stress '+(y?'Y':'N')));h2.appendChild(document.createTextNode(' '));add(h2,el("
    "'span','sat','saturation '+(n.saturation|0)+'%'));if(n.imbalance===true){h2."
    "appendChild(document.createTextNode(' '));add(h2,el('span','flag','imbalance'));}"
    "add(s,el('p','since','state '+(n.state||'')+' since '+tm(n.since)));var t=add(s,el("
    "'table','services'));var r=add(t,el('tr'));['service','busy / limit','','waiting']"
    ".forEach(function(x){add(r,el('th','',x));});(n.services||[]).forEach(function(v){"
    "var r=add(t,el('tr'));add(r,el('td','',v.name));var m=el('meter');m.min=0;m.max="
    "v.limit>0?v.limit:1;m.value=v.busy|0;add(add(r,el('td')),m);add(r,el('td','',(v.busy|0)"
    "+' / '+(v.limit|0)));add(r,el('td','',v.waiting|0));});add(s,el('h3','',"
    "'Overrides in force'));var u=add(s,el('ul','overrides'));(n.overrides_detail||[])."
    "forEach(function(o){add(u,el('li','',o.setting+': '+(typeof o.before==='string'?"
    "o.before:'(default)')+' \\u2192 '+o.during));});add(s,el('h3','',"
    "'Saturation, last hour'));add(s,plot(h,n.name||''));add(s,el('h3','','Latest events'));"
    "u=add(s,el('ul','events'));(n.events||[]).forEach(function(e){var li=add(u,el('li'));"
    "add(li,el('time','',tm(e.time)));li.appendChild(document.createTextNode(' '));add(li,"
    "el('b','',e.kind));li.appendChild(document.createTextNode(' '+(e.text||'')));});"
    "return s;}\n"
    "function local(st){var s=el('section');s.id='local';var h2=add(s,el('h2','',"
    "'This node: '));add(h2,el('span','name',st.node||''));var ss=st.store_state||{};"
    "var p=add(s,el('p','store','store '+(ss.kind||'')+', '+(ss.up||'')));if("
    "ss.degraded===true){p.appendChild(document.createTextNode(', '));add(p,el('span',"
    "'flag','degraded'));p.appendChild(document.createTextNode(' since '+tm("
    "ss.degraded_since)));}p.appendChild(document.createTextNode(', '+(ss.entries|0)+"
    "' counter keys in memory'));add(s,el('h3','','Policy traffic'));var tr=st.traffic;"
    "add(s,el('p','traffic',tr?tr.requests_per_s.toFixed(2)+' requests/s, '+"
    "tr.refusals_per_s.toFixed(2)+' refusals/s over the last '+tr.window_s.toFixed(0)+' s'"
    ":'no sample yet'));var t=add(s,el('table','rules'));var r=add(t,el('tr'));add(r,el("
    "'th','','rule'));add(r,el('th','','refusals/s'));((tr&&tr.rules)||[]).forEach("
    "function(v){var r=add(t,el('tr'));add(r,el('td','',v.name));add(r,el('td','',"
    "v.refusals_per_s.toFixed(2)));});add(s,el('h3','','Latest refusals'));var u=add(s,"
    "el('ul','refusals'));((st.limits&&st.limits.recent_refusals)||[]).forEach(function(v)"
    "{var li=add(u,el('li'));add(li,el('time','',tm(v.time)));li.appendChild(document."
    "createTextNode(' '));add(li,el('b','',v.rule));li.appendChild(document.createTextNode("
    "' '+(v.dryrun?'(dryrun) ':'')));add(li,el('span','key',v.key));});add(s,el('h3','',"
    "'Health report'));var d=add(s,el('div','report'));var rp=st.report;if(!rp||typeof rp"
    "!=='object'){add(d,el('p','','no report yet (postsurge report leaves its last result "
    "here)'));}else{var q=add(d,el('p','','status '));add(q,el('b','rstatus',rp.status||''));"
    "q.appendChild(document.createTextNode(', generated '+tm((rp.generated_at|0)*1000)));var fu="
    "add(d,el('ul','findings'));(rp.findings||[]).forEach(function(f){var li=add(fu,el("
    "'li'));add(li,el('b','',f.severity));li.appendChild(document.createTextNode(' '+("
    "f.message||'')));add(li,el('br'));add(li,el('i','','advice:'));li.appendChild("
    "document.createTextNode(' '+(f.advice||'')));});}return s;}\n"
    "function render(st){var app=document.getElementById('app');var nodes=(st.nodes&&"
    "st.nodes.length)?st.nodes:[st];var f=document.createDocumentFragment();var c=el('p',"
    "'cluster','cluster: '+nodes.length+' node'+(nodes.length===1?'':'s')+', imbalance '+"
    "(st.imbalance===true?'yes':'no'));f.appendChild(c);nodes.forEach(function(n){"
    "f.appendChild(node(n,st.history));});f.appendChild(local(st));while(app.firstChild)"
    "app.removeChild(app.firstChild);app.appendChild(f);document.getElementById('updated')"
    ".textContent=tm(Date.now())+' (live)';}\n"
    "function tick(){var x=new XMLHttpRequest();x.open('GET','/status');x.timeout=5000;"
    "x.onload=function(){if(x.status===200){try{render(JSON.parse(x.responseText));}catch(e)"
    "{document.getElementById('updated').textContent='bad status: '+e;}}else{document."
    "getElementById('updated').textContent='status: HTTP '+x.status;}};x.onerror=function()"
    "{document.getElementById('updated').textContent='daemon unreachable';};x.send();}\n"
    "setInterval(tick,2000);tick();})();\n";

static const char page_style[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222;background:#fafafa}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin:.2em 0}h3{font-size:1em;margin:.6em 0 .2em}"
    "section{background:#fff;border:1px solid #ccc;border-radius:4px;padding:.6em 1em;"
    "margin:.8em 0}.stress{padding:0 .4em;border-radius:3px;color:#fff}.stress.on{background:"
    "#c0392b}.stress.off{background:#27ae60}.flag{background:#e67e22;color:#fff;padding:0 "
    ".3em;border-radius:3px}table{border-collapse:collapse}td,th{padding:0 .6em;text-align:"
    "left}meter{width:12em}.plot{background:#f3f3f3;border:1px solid #ddd}.plot path{fill:"
    "none;stroke:#2c3e50;stroke-width:1.5}ul{margin:.2em 0;padding-left:1.2em}time{color:"
    "#666;font-family:monospace}.key{font-family:monospace}";

char *page_html(json_t *status, size_t *len)
{
    struct buf b = {0};
    json_t *nodes = json_object_get(status, "nodes"), *n;
    json_t *history = json_object_get(status, "history");
    size_t i;

    puts_(&b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
              "<meta name=\"viewport\" content=\"width=device-width\"><title>postsurge: ");
    esc(&b, jget_str(status, "node"));
    puts_(&b, "</title><link rel=\"icon\" href=\"data:,\"><style>");
    puts_(&b, page_style);
    puts_(&b, "</style></head><body><h1>postsurge status</h1><p class=\"meta\">updated "
              "<span id=\"updated\">");
    put_time(&b, wall_ms());
    puts_(&b, "</span></p><div id=\"app\">");
    bool cluster = json_array_size(nodes) > 0;
    putf(&b, "<p class=\"cluster\">cluster: %zu node%s, imbalance %s</p>",
         cluster ? json_array_size(nodes) : 1, json_array_size(nodes) > 1 ? "s" : "",
         json_is_true(json_object_get(status, "imbalance")) ? "yes" : "no");
    if (cluster) {
        json_array_foreach(nodes, i, n)
        {
            put_node(&b, n, history);
        }
    } else {
        json_t *self = json_deep_copy(status);
        if (self) {
            json_object_set(self, "name", json_object_get(status, "node"));
            put_node(&b, self, history);
        }
        json_decref(self);
    }
    put_local(&b, status);
    puts_(&b, "</div><script>");
    /* The plot width is PAGE_SAMPLES in both renderings. */
    char samples[16];
    snprintf(samples, sizeof(samples), "%d", PAGE_SAMPLES);
    const char *s = page_script, *mark;
    while ((mark = strstr(s, "PAGE_SAMPLES_JS"))) {
        put(&b, s, (size_t)(mark - s));
        puts_(&b, samples);
        s = mark + strlen("PAGE_SAMPLES_JS");
    }
    puts_(&b, s);
    puts_(&b, "</script></body></html>\n");
    if (b.failed) {
        free(b.s);
        return NULL;
    }
    *len = b.len;
    return b.s;
}
