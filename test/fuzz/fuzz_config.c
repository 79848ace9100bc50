/* Fuzz target for lib/config.c: any bytes as a postsurge.cf. Whatever parses must print
 * (all settings, and -n) to text that parses again without a message into an equal
 * config; whatever fails must have said why. Each store URL found is parsed too. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void reparse(const struct config *cfg, bool non_default)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return;
    if (config_print(cfg, f, non_default) != 0)
        abort();
    fclose(f);
    struct config *again = NULL;
    struct config_errors errs = {0};
    int rc = config_parse_buffer("printed", text, len, &again, &errs);
    if (rc != 0 || errs.n != 0) {
        fprintf(stderr, "printed config does not read back (rc %d):\n%s\n%s\n", rc, text,
                errs.n ? errs.msg[0] : "");
        abort();
    }
    if (!config_equal(cfg, again)) {
        fprintf(stderr, "printed config reads back different:\n%s\n", text);
        abort();
    }
    config_errors_clear(&errs);
    config_free(again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config *cfg = NULL;
    struct config_errors errs = {0};
    int rc = config_parse_buffer("fuzz.cf", (const char *)data, size, &cfg, &errs);
    if (rc == 0) {
        if (errs.n != errs.n_warnings)
            abort();
        reparse(cfg, false);
        reparse(cfg, true);
        struct config_store_url u;
        if (config_parse_store_url(cfg->store, &u) != 0)
            abort(); /* the parser accepted a store its own URL parser refuses */
        config_free(cfg);
    } else if (rc == -EINVAL) {
        if (cfg || errs.n == errs.n_warnings)
            abort(); /* failed without saying why */
    }
    config_errors_clear(&errs);

    /* The URL parser alone, on the input as a string (bounded copy). */
    char url[512];
    size_t n = size < sizeof(url) - 1 ? size : sizeof(url) - 1;
    memcpy(url, data, n);
    url[n] = '\0';
    struct config_store_url u;
    if (config_parse_store_url(url, &u) < 0 && !u.error)
        abort();
    return 0;
}
