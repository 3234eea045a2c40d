/*
 * testenv.c - the environment variables that only tests set (testenv.h).
 */
#include "common/testenv.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const known[] = {TESTENV_SNAPSHOT_MIN_BYTES, TESTENV_SPILL_BUDGET,
                                    TESTENV_SYNC_DELAY_MS};

int testenv_known(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strlen(known[i]) == len && strncmp(known[i], name, len) == 0) return 1;
    return 0;
}

long long testenv_positive(const char *name)
{
    const char *v = getenv(name);
    if (!v) return 0;
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    return errno || end == v || *end || n <= 0 ? 0 : n;
}
