/*
 * source.c - the source registry: maps a URI scheme to its source_ops.
 */
#include "source/source.h"

#include <stdio.h>
#include <string.h>

#include "common/uri.h"

extern const source_ops file_source_ops;
extern const source_ops kafka_source_ops;

static const source_ops *const registry[] = {
    &file_source_ops,
    &kafka_source_ops,
};

source *source_open(const char *uri, const source_options *opts, char *err, size_t errlen)
{
    if (strcmp(uri, "-") == 0) return file_source_ops.open("-", opts, err, errlen);
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++) {
        const char *target = uri_after_scheme(uri, registry[i]->scheme);
        if (target) return registry[i]->open(target, opts, err, errlen);
    }
    snprintf(err, errlen, "unknown source '%s' (see --help for the supported sources)", uri);
    return NULL;
}

void source_usage(buf *out)
{
    for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
        buf_printf(out, "    %s\n", registry[i]->usage);
}
