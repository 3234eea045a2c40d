/*
 * buf.c - growable byte buffer and bounds-checked reader (see buf.h).
 */
#include "common/buf.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xalloc.h"

void buf_init(buf *b) { b->data = NULL, b->len = 0, b->cap = 0; }

void buf_free(buf *b)
{
    free(b->data);
    buf_init(b);
}

char *buf_steal_str(buf *b)
{
    buf_append_byte(b, 0);
    char *s = (char *)b->data;
    buf_init(b);
    return s;
}

void buf_reset(buf *b) { b->len = 0; }

void buf_reserve(buf *b, size_t extra)
{
    assert(b->len <= b->cap && (b->cap == 0) == (b->data == NULL));
    if (b->cap - b->len >= extra) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < extra) cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(buf *b, const void *data, size_t len)
{
    if (len == 0) return;
    buf_reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

void buf_append_str(buf *b, const char *s) { buf_append(b, s, strlen(s)); }

void buf_append_byte(buf *b, unsigned char c)
{
    buf_reserve(b, 1);
    b->data[b->len++] = c;
}

void buf_printf(buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        buf_append(b, small, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_put_u32le(buf *b, uint32_t v)
{
    unsigned char o[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    buf_append(b, o, 4);
}

void buf_put_u64le(buf *b, uint64_t v)
{
    unsigned char o[8];
    for (int i = 0; i < 8; i++) o[i] = (unsigned char)(v >> (8 * i));
    buf_append(b, o, 8);
}

void buf_append_json_escaped(buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, len + 2);
    size_t run = 0; /* start of the pending run of bytes that need no escape */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        buf_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': buf_append(b, "\\\"", 2); break;
        case '\\': buf_append(b, "\\\\", 2); break;
        case '\n': buf_append(b, "\\n", 2); break;
        case '\r': buf_append(b, "\\r", 2); break;
        case '\t': buf_append(b, "\\t", 2); break;
        case '\b': buf_append(b, "\\b", 2); break;
        case '\f': buf_append(b, "\\f", 2); break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_append(b, u, 6);
        }
        }
    }
    buf_append(b, s + run, len - run);
}

void reader_init(reader *r, const void *data, size_t len)
{
    assert(data || len == 0);
    r->p = data;
    r->end = data ? r->p + len : r->p; /* NULL + 0 is undefined in C */
    r->bad = 0;
}

int reader_bytes(reader *r, const unsigned char **out, size_t len)
{
    if (r->bad || reader_left(r) < len) {
        r->bad = 1;
        return -1;
    }
    *out = r->p;
    r->p += len;
    assert(r->p <= r->end);
    return 0;
}

int reader_u32le(reader *r, uint32_t *out)
{
    const unsigned char *p;
    if (reader_bytes(r, &p, 4)) return -1;
    *out = load_u32le(p);
    return 0;
}

int reader_u64le(reader *r, uint64_t *out)
{
    const unsigned char *p;
    if (reader_bytes(r, &p, 8)) return -1;
    *out = load_u64le(p);
    return 0;
}

int reader_i64le(reader *r, int64_t *out)
{
    uint64_t v;
    if (reader_u64le(r, &v)) return -1;
    *out = (int64_t)v;
    return 0;
}
