/*
 * engine_state.h - an engine's whole state as bytes, for tests that check
 * that two engines hold the same state (a restore against the run it
 * restores, a task store's change log against the engine it logged): the
 * engine's meta with its partitions sorted, then each user's key and blob
 * (engine_foreach_user) in key order. Header-only, like check.h.
 */
#ifndef SESSIONIZER_TEST_ENGINE_STATE_H
#define SESSIONIZER_TEST_ENGINE_STATE_H

#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/xalloc.h"
#include "engine/engine.h"

typedef struct engine_state_user {
    buf key, blob;
} engine_state_user;

typedef struct engine_state_users {
    engine_state_user *u;
    size_t n, cap;
} engine_state_users;

static int engine_state_collect(void *ctx, const user_key *key, const void *blob, size_t len)
{
    engine_state_users *s = ctx;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 16;
        s->u = xrealloc(s->u, s->cap * sizeof *s->u);
    }
    engine_state_user *ub = &s->u[s->n++];
    buf_init(&ub->key);
    buf_init(&ub->blob);
    if (key->str) buf_append(&ub->key, key->str, key->len);
    else buf_put_i64le(&ub->key, key->id);
    buf_append(&ub->blob, blob, len);
    return 0;
}

static int engine_state_cmp_user(const void *a, const void *b)
{
    const buf *x = &((const engine_state_user *)a)->key, *y = &((const engine_state_user *)b)->key;
    int c = memcmp(x->data, y->data, x->len < y->len ? x->len : y->len);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* A partition's entry in engine_save_meta: id, max_t, and no held visit
 * (the tests' engines have no --max-future). */
#define ENGINE_STATE_PART_ENTRY 16
static int engine_state_cmp_part(const void *a, const void *b)
{
    return memcmp(a, b, ENGINE_STATE_PART_ENTRY);
}

/* dst = e's open sessions by user and its meta, partitions sorted. */
static void engine_state_describe(const engine *e, buf *dst)
{
    engine_state_users s = {0};
    engine_foreach_user(e, engine_state_collect, &s);
    if (s.n > 1) qsort(s.u, s.n, sizeof *s.u, engine_state_cmp_user);
    buf m;
    buf_init(&m);
    engine_save_meta(e, &m);
    const size_t fixed = 4 + 8 + 8 + 4 + 4 + 8 + 8 + 8 * 8 + 4; /* engine_save_meta's v3 */
    CHECK(m.len >= fixed && (m.len - fixed) % ENGINE_STATE_PART_ENTRY == 0);
    if (m.len > fixed)
        qsort(m.data + fixed, (m.len - fixed) / ENGINE_STATE_PART_ENTRY, ENGINE_STATE_PART_ENTRY,
              engine_state_cmp_part);
    buf_reset(dst);
    buf_append(dst, m.data, m.len);
    for (size_t i = 0; i < s.n; i++) {
        buf_put_u32le(dst, (uint32_t)s.u[i].key.len);
        buf_append(dst, s.u[i].key.data, s.u[i].key.len);
        buf_append(dst, s.u[i].blob.data, s.u[i].blob.len);
        buf_free(&s.u[i].key);
        buf_free(&s.u[i].blob);
    }
    free(s.u);
    buf_free(&m);
}

#endif
