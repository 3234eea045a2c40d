/*
 * uri.h - the one way a URI ("sqlite:out.db", "kafka://b:9092/visits") is
 * matched against a registered scheme by the source, sink and dead-letter
 * registries.
 */
#ifndef SESSIONIZER_URI_H
#define SESSIONIZER_URI_H

#include <string.h>

/* The part after "scheme:" if uri has that scheme, else NULL. */
static inline const char *uri_after_scheme(const char *uri, const char *scheme)
{
    size_t n = strlen(scheme);
    return strncmp(uri, scheme, n) == 0 && uri[n] == ':' ? uri + n + 1 : NULL;
}

#endif
