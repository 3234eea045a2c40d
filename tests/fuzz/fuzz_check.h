/*
 * fuzz_check.h - REQUIRE(), an assert that release builds keep: the fuzz
 * targets' properties must hold in every build that replays them.
 */
#ifndef SESSIONIZER_FUZZ_CHECK_H
#define SESSIONIZER_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(cond)                                                                  \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

#endif
