/* queue_senders: messages per sender domain and queue in a bounded hash table (linear
 * probing, FNV-1a), filled by queue.c record by record and listed sorted for the report. */
#include "queue_senders.h"

#include "textutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct queue_senders {
    struct queue_sender **tab; /* size a power of two, at most half full */
    size_t size, n, max;
};

struct queue_senders *queue_senders_new(size_t max)
{
    struct queue_senders *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->size = 64;
    s->max = max;
    s->tab = calloc(s->size, sizeof(*s->tab));
    if (!s->tab) {
        free(s);
        return NULL;
    }
    return s;
}

void queue_senders_free(struct queue_senders *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->size; i++) {
        if (s->tab[i]) {
            free(s->tab[i]->domain);
            free(s->tab[i]);
        }
    }
    free(s->tab);
    free(s);
}

static struct queue_sender **slot(struct queue_sender **tab, size_t size, const char *key)
{
    size_t i = fnv32(key, strlen(key)) & (size - 1);
    while (tab[i] && strcmp(tab[i]->domain, key) != 0)
        i = (i + 1) & (size - 1);
    return &tab[i];
}

struct queue_sender *queue_senders_get(struct queue_senders *s, const char *key)
{
    struct queue_sender **p = slot(s->tab, s->size, key);
    if (*p)
        return *p;
    if (s->n >= s->max && strcmp(key, QUEUE_OTHER_DOMAIN) != 0)
        return queue_senders_get(s, QUEUE_OTHER_DOMAIN);
    if ((s->n + 1) * 2 > s->size) {
        size_t size = s->size * 2;
        struct queue_sender **tab = calloc(size, sizeof(*tab));
        if (!tab)
            return NULL;
        for (size_t i = 0; i < s->size; i++) {
            if (s->tab[i])
                *slot(tab, size, s->tab[i]->domain) = s->tab[i];
        }
        free(s->tab);
        s->tab = tab;
        s->size = size;
        p = slot(s->tab, s->size, key);
    }
    struct queue_sender *e = calloc(1, sizeof(*e));
    if (!e || !(e->domain = strdup(key))) {
        free(e);
        return NULL;
    }
    *p = e;
    s->n++;
    return e;
}

static int sender_cmp(const void *a, const void *b)
{
    const struct queue_sender *x = *(const struct queue_sender *const *)a,
                              *y = *(const struct queue_sender *const *)b;
    if (x->messages != y->messages)
        return x->messages > y->messages ? -1 : 1;
    return strcmp(x->domain, y->domain);
}

int queue_senders_sorted(const struct queue_senders *s, const struct queue_sender ***out, size_t *n)
{
    const struct queue_sender **v = malloc((s->n ? s->n : 1) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < s->size; i++) {
        if (s->tab[i])
            v[k++] = s->tab[i];
    }
    qsort(v, k, sizeof(*v), sender_cmp);
    *out = v;
    *n = k;
    return 0;
}
