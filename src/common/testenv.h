/*
 * testenv.h - the environment variables that only tests set.
 *
 * Some states are out of reach of a small, fast test through the options
 * alone: a snapshot after a few KB of change log, a cold store that spills a
 * handful of users, a checkpoint whose disk is slow. These variables reach
 * them. They are not options (no --help line, no config-file key, no
 * SESSIONIZER_NAME of an option), docs/configuration.md lists them as for
 * tests only, and the check of SESSIONIZER_* variables (cli/options.c) knows
 * them from this one list, so it does not warn about them as misspelt.
 */
#ifndef SESSIONIZER_TESTENV_H
#define SESSIONIZER_TESTENV_H

#include <stddef.h>

/* A snapshot once the change log passes this many bytes (default 16 MiB;
 * a scale-out task's, in the task store: 1 MiB). */
#define TESTENV_SNAPSHOT_MIN_BYTES "SESSIONIZER_SNAPSHOT_MIN_BYTES"
/* The engine's memory budget in bytes, whatever --memory-limit says. */
#define TESTENV_SPILL_BUDGET "SESSIONIZER_SPILL_BUDGET"
/* A delay before each write of the checkpoint's writer thread. */
#define TESTENV_SYNC_DELAY_MS "SESSIONIZER_TEST_SYNC_DELAY_MS"

/* Whether the variable name[0..len) is one of the above. */
int testenv_known(const char *name, size_t len);

/* The variable's value as a positive integer; 0 when it is unset or not a
 * positive integer (the setting is then not in effect). */
long long testenv_positive(const char *name);

#endif
