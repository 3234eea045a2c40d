/*
 * fuzz_cql_frame.c - the CQL response decoder on arbitrary bytes.
 *
 * The input is taken as what a server (or an attacker between it and us)
 * sends: a byte stream split into frames by cql_frame_split, each decoded by
 * cql_response_decode. Properties: no crash, no read outside the input (ASan),
 * no runaway allocation (counts are checked against the bytes left); a
 * decoded response only points inside its frame body; its types format and
 * its cells and collections decode within bounds.
 */
#include "fuzz_check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "cql/cql_proto.h"

static int inside(const unsigned char *p, int32_t len, const unsigned char *body, size_t blen)
{
    if (len < 0) return 1;
    return p >= body && (size_t)(p - body) <= blen && (size_t)len <= blen - (size_t)(p - body);
}

static void check_cells(const cql_response *r)
{
    size_t n = (size_t)r->n_rows * (size_t)(r->meta.n_cols > 0 ? r->meta.n_cols : 0);
    for (size_t i = 0; r->cells && i < n; i++) {
        const cql_cell *c = &r->cells[i];
        REQUIRE(inside(c->p, c->len, r->body, r->body_len));
        int64_t b;
        int32_t x;
        char s[64], u[37];
        cql_cell_bigint(c, &b);
        cql_cell_int(c, &x);
        cql_cell_inet(c, s, sizeof s);
        cql_cell_uuid(c, u);
        char *t = NULL;
        cql_cell_text(c, &t);
        free(t);
        reader it;
        int32_t cnt;
        if (cql_collection_open(c, &it, &cnt) == 0)
            for (int32_t k = 0; k < cnt; k++) {
                cql_cell e;
                if (cql_collection_next(&it, &e)) break;
                REQUIRE(inside(e.p, e.len, c->p, (size_t)c->len));
            }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        cql_header h;
        size_t flen;
        char err[256];
        int rc = cql_frame_split(data + off, size - off, &h, &flen, err, sizeof err);
        if (rc <= 0) break;
        REQUIRE(flen == CQL_HEADER_SIZE + (size_t)h.length && flen <= size - off);
        /* an exact-size copy, so that ASan sees any read past the body */
        unsigned char *body = malloc(h.length ? h.length : 1);
        memcpy(body, data + off + CQL_HEADER_SIZE, h.length);
        cql_response r;
        if (cql_response_decode(&h, body, h.length, &r, err, sizeof err) == 0) {
            check_cells(&r);
            if (r.prepared_id) REQUIRE(inside(r.prepared_id, r.prepared_id_len, body, h.length));
            if (r.token) REQUIRE(inside(r.token, r.token_len, body, h.length));
            if (r.error.unprepared_id)
                REQUIRE(inside(r.error.unprepared_id, r.error.unprepared_id_len, body, h.length));
            buf out;
            buf_init(&out);
            for (int32_t i = 0; r.meta.cols && i < r.meta.n_cols; i++)
                cql_type_format(r.meta.cols[i].type, &out);
            for (int32_t i = 0; r.result_meta.cols && i < r.result_meta.n_cols; i++)
                cql_type_format(r.result_meta.cols[i].type, &out);
            buf_free(&out);
        }
        cql_response_free(&r);
        free(body);
        off += flen;
    }
    return 0;
}
