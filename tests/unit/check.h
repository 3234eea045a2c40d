/*
 * check.h - the unit tests' assertion macros: a failed check prints where and
 * why and the test keeps going, so one run reports every failure; main()
 * returns check_summary(), which prints "N passed, N failed".
 */
#ifndef SESSIONIZER_CHECK_H
#define SESSIONIZER_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static unsigned check_passed, check_failed;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (cond) check_passed++;                                                        \
        else {                                                                           \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
        }                                                                                \
    } while (0)

#define CHECK_EQ_I64(a, b)                                                               \
    do {                                                                                 \
        int64_t va_ = (int64_t)(a), vb_ = (int64_t)(b);                                  \
        if (va_ == vb_) check_passed++;                                                  \
        else {                                                                           \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: %s == %s failed: %" PRId64 " != %" PRId64 "\n",     \
                    __FILE__, __LINE__, #a, #b, va_, vb_);                               \
        }                                                                                \
    } while (0)

#define CHECK_STR(a, b)                                                                  \
    do {                                                                                 \
        const char *sa_ = (a), *sb_ = (b);                                               \
        if (strcmp(sa_, sb_) == 0) check_passed++;                                       \
        else {                                                                           \
            check_failed++;                                                              \
            fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__,      \
                    __LINE__, #a, #b, sa_, sb_);                                         \
        }                                                                                \
    } while (0)

static inline int check_summary(const char *name)
{
    printf("%s: %u passed, %u failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
