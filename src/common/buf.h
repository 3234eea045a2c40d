/*
 * buf.h - a growable byte buffer.
 *
 * The one way this project builds variable-length bytes: checkpoint blobs,
 * JSON output lines, dead-letter entries, CQL frames. Growth aborts on
 * allocation failure (see xalloc.h): the job cannot do anything useful
 * without memory and a half-built blob must never be written.
 */
#ifndef SESSIONIZER_BUF_H
#define SESSIONIZER_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct buf {
    unsigned char *data;
    size_t len;
    size_t cap;
} buf;

void buf_init(buf *b);
void buf_free(buf *b);
/* The bytes as a NUL-terminated malloc'd string, which the caller owns;
 * b is left empty. */
char *buf_steal_str(buf *b);
void buf_reset(buf *b);
void buf_reserve(buf *b, size_t extra);
void buf_append(buf *b, const void *data, size_t len);
void buf_append_str(buf *b, const char *s);
void buf_append_byte(buf *b, unsigned char c);
void buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Little-endian fixed-width encoders, the byte order of every format this
 * project defines itself (checkpoint blobs, session-id input). */
void buf_put_u32le(buf *b, uint32_t v);
void buf_put_u64le(buf *b, uint64_t v);
static inline void buf_put_i64le(buf *b, int64_t v) { buf_put_u64le(b, (uint64_t)v); }

/* Appends s as the body of a JSON string (no quotes), escaping what JSON
 * requires. The input must be valid UTF-8. */
void buf_append_json_escaped(buf *b, const char *s, size_t len);

/* A bounds-checked reader over a byte range: every get fails (returns -1 and
 * latches r->bad) instead of reading past the end, so a truncated blob is
 * detected rather than misread. */
typedef struct reader {
    const unsigned char *p;
    const unsigned char *end;
    int bad;
} reader;

void reader_init(reader *r, const void *data, size_t len);
int reader_u32le(reader *r, uint32_t *out);
int reader_u64le(reader *r, uint64_t *out);
int reader_i64le(reader *r, int64_t *out);
int reader_bytes(reader *r, const unsigned char **out, size_t len);
static inline size_t reader_left(const reader *r) { return (size_t)(r->end - r->p); }

/* LEB128 varints, with zigzag for signed values: the compact encodings of
 * the change log's frames and the scale-out's repartition records, where
 * small numbers and deltas are the common case. */
static inline uint64_t zigzag_enc(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int64_t zigzag_dec(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

static inline void buf_put_varint(buf *b, uint64_t v)
{
    buf_reserve(b, 10);
    unsigned char *p = b->data + b->len;
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    b->len = (size_t)(p - b->data);
}

/* A varint into room already reserved (10 bytes at most); returns the byte
 * after it. */
static inline unsigned char *put_varint_at(unsigned char *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

/* Returns -1 and latches r->bad on a truncated or over-long varint. */
static inline int reader_varint(reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) break;
        unsigned char c = *r->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    r->bad = 1;
    return -1;
}

static inline uint64_t load_u64le(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}
static inline uint32_t load_u32le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
