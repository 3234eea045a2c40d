/*
 * fuzz_repartition.c - the repartition topic's decoder (src/task/repartition.h)
 * on arbitrary bytes, as another writer on the internal topic could leave
 * them. Input: one byte for the number of source partitions, then the
 * record. Every visit it yields lies within the record and below that
 * number, its string user (version 3) within the record and the parser's
 * bound; a record it accepts, encoded again, decodes to the same items.
 */
#include "fuzz_check.h"
#include <stdint.h>
#include <string.h>

#include "task/repartition.h"

typedef struct ctx {
    const uint8_t *rec;
    size_t len;
    int32_t n_src;
    repart_batch again;
    buf marker;
    int kind, n;
    visit first;
    int64_t first_max;
} ctx;

static int check_item(void *p, int kind, const visit *v, int64_t max_t)
{
    ctx *c = p;
    REQUIRE(v->pos.partition >= 0 && v->pos.partition < c->n_src && v->pos.offset >= 0);
    c->kind = kind;
    if (c->n++ == 0) {
        c->first = *v;
        c->first_max = max_t;
    }
    if (kind == REPART_BATCH) {
        REQUIRE(max_t >= v->event_time_us);
        REQUIRE((const uint8_t *)v->page >= c->rec &&
                (const uint8_t *)v->page + v->page_len <= c->rec + c->len);
        if (v->user)
            REQUIRE((const uint8_t *)v->user >= c->rec &&
                    (const uint8_t *)v->user + v->user_len <= c->rec + c->len &&
                    v->user_len >= 1 && v->user_len <= USER_MAX_BYTES && v->user_id == 0);
        /* one user type a batch (repart_batch_add asserts it) */
        REQUIRE(c->n == 1 || (v->user != NULL) == (c->first.user != NULL));
        repart_batch_add(&c->again, v, max_t);
    } else {
        REQUIRE(c->n == 1);
        repart_marker(&c->marker, kind, v->pos.partition, v->pos.offset, max_t);
    }
    return 0;
}

static int check_same(void *p, int kind, const visit *v, int64_t max_t)
{
    ctx *c = p;
    if (c->n++ == 0) {
        REQUIRE(kind == c->kind && v->pos.partition == c->first.pos.partition &&
                v->pos.offset == c->first.pos.offset && max_t == c->first_max);
        if (kind == REPART_BATCH)
            REQUIRE(v->user_id == c->first.user_id && v->event_time_us == c->first.event_time_us &&
                    v->pos.append_ts_ms == c->first.pos.append_ts_ms &&
                    v->page_len == c->first.page_len &&
                    memcmp(v->page, c->first.page, v->page_len) == 0 &&
                    (v->user == NULL) == (c->first.user == NULL) &&
                    v->user_len == c->first.user_len &&
                    (!v->user || memcmp(v->user, c->first.user, v->user_len) == 0));
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    ctx c = {.rec = data + 1, .len = size - 1, .n_src = 1 + data[0]};
    buf_init(&c.again.b);
    buf_init(&c.marker);
    if (repart_decode(c.rec, c.len, c.n_src, check_item, &c) == 0) {
        REQUIRE(c.n >= 1);
        int n = c.n;
        c.n = 0;
        const buf *b = c.kind == REPART_BATCH ? &c.again.b : &c.marker;
        REQUIRE(repart_decode(b->data, b->len, c.n_src, check_same, &c) == 0);
        REQUIRE(c.n == n);
    }
    buf_free(&c.again.b);
    buf_free(&c.marker);
    return 0;
}
