/*
 * check.h - the unit tests' assertion macros: a failed check prints where and
 * why and the test keeps going, so one run reports every failure; main()
 * returns check_summary(), which prints "N passed, N failed".
 *
 * And what several tests need alike, so that each is written once: the
 * random inputs' generator (rnd), and the engine's events as text lines
 * (check_close_line, check_reject_line) that tests compare.
 */
#ifndef SESSIONIZER_CHECK_H
#define SESSIONIZER_CHECK_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "engine/engine.h"

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

/* Microseconds in a second: the engine's time unit. */
#define SEC 1000000LL

/* The random tests' generator (xorshift64). A test file that wants its own
 * sequence sets check_rng before its first rnd(); either way its inputs are
 * the same on every run, so a failure can be replayed. */
static uint64_t check_rng = 0x9e3779b97f4a7c15ULL;
static inline uint64_t rnd(void)
{
    check_rng ^= check_rng << 13;
    check_rng ^= check_rng >> 7;
    check_rng ^= check_rng << 17;
    return check_rng;
}

/* A closed session as a line: "close id=ID user=USER [page,page]". */
static inline void check_close_line(buf *b, const closed_session *cs)
{
    buf_printf(b, "close id=%" PRId64 " user=%" PRId64 " [", cs->session_id, cs->user_id);
    for (size_t i = 0; i < cs->n_pages; i++)
        buf_printf(b, "%s%.*s", i ? "," : "", (int)cs->pages[i].len, cs->pages[i].data);
    buf_append_str(b, "]\n");
}

/* A rejected visit as a line: "late|future|cap user=USER page=PAGE". */
static inline void check_reject_line(buf *b, const visit *v, reject_reason why)
{
    buf_printf(b, "%s user=%" PRId64 " page=%.*s\n",
               why == REJECT_LATE ? "late" : why == REJECT_FUTURE ? "future" : "cap", v->user_id,
               (int)v->page_len, v->page);
}

static inline int check_summary(const char *name)
{
    printf("%s: %u passed, %u failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

#endif
