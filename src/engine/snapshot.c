/*
 * snapshot.c - the engine's state as the checkpoint holds it: the meta
 * (settings, watermarks, counters, held visits), each user's sessions as a
 * blob (also the cold store's record), the dirty users of a commit, and the
 * restore that reads them back.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/keyed_sort.h"
#include "common/xalloc.h"
#include "engine/engine_internal.h"
#include "engine/session_id.h"

/* 2 added max_session_bytes; a version 1 checkpoint was written without a
 * byte cap and resumes with the largest one. 3 added max_future_us and its
 * counter; an older checkpoint resumes with the bound of the run. */
#define META_VERSION 3u

void engine_save_meta(const engine *e, buf *out)
{
    buf_put_u32le(out, META_VERSION);
    buf_put_i64le(out, e->cfg.gap_us);
    buf_put_i64le(out, e->cfg.lateness_us);
    buf_put_u32le(out, e->cfg.max_pages);
    buf_put_u32le(out, e->cfg.max_session_bytes);
    buf_put_i64le(out, e->cfg.max_future_us);
    buf_put_i64le(out, e->closing_wm);
    const uint64_t counters[] = {e->st.visits_applied, e->st.rejected_late, e->st.rejected_cap,
                                 e->st.sessions_closed, e->st.pages_closed,
                                 e->st.open_sessions, e->st.open_pages, e->st.rejected_future};
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++)
        buf_put_u64le(out, counters[i]);
    buf_put_u32le(out, (uint32_t)e->n_parts);
    for (size_t i = 0; i < e->n_parts; i++) {
        const partition_state *p = &e->parts[i];
        buf_put_u32le(out, (uint32_t)p->id);
        buf_put_i64le(out, p->max_t);
        buf_put_u32le(out, (uint32_t)p->has_held);
        if (p->has_held) {
            buf_put_i64le(out, p->held.user_id);
            buf_put_i64le(out, p->held.event_time_us);
            buf_put_i64le(out, p->held.pos.offset);
            buf_put_u32le(out, p->held.page_len);
            buf_append(out, p->page.data, p->held.page_len);
            buf_put_u32le(out, p->held.user ? p->held.user_len : UINT32_MAX);
            if (p->held.user) buf_append(out, p->user.data, p->held.user_len);
        }
    }
}

/* The fields of a saved meta blob. */
typedef struct saved_meta {
    uint32_t version;
    int64_t gap, lateness, closing;
    uint32_t max_pages, n_parts;
    uint64_t counters[8]; /* in engine_save_meta's order; the 8th from version 3 */
    reader parts;         /* n_parts (id u32, max_t i64[, held visit]) */
} saved_meta;

/* 0, -1 if it does not decode, -2 if it was written with other settings. */
static int parse_meta(const engine *e, const void *data, size_t len, saved_meta *m)
{
    reader r;
    reader_init(&r, data, len);
    uint32_t max_bytes = ENGINE_MAX_SESSION_BYTES;
    int64_t max_future = e->cfg.max_future_us;
    m->version = 0;
    reader_u32le(&r, &m->version);
    if (r.bad || m->version < 1 || m->version > META_VERSION) return -1;
    reader_i64le(&r, &m->gap);
    reader_i64le(&r, &m->lateness);
    reader_u32le(&r, &m->max_pages);
    if (m->version >= 2) reader_u32le(&r, &max_bytes);
    if (m->version >= 3) reader_i64le(&r, &max_future);
    reader_i64le(&r, &m->closing);
    m->counters[7] = 0;
    for (size_t i = 0; i < (m->version >= 3 ? 8u : 7u); i++) reader_u64le(&r, &m->counters[i]);
    reader_u32le(&r, &m->n_parts);
    size_t entry = m->version >= 3 ? 16 : 12;
    if (r.bad || m->n_parts > reader_left(&r) / entry ||
        (m->version < 3 && reader_left(&r) != (size_t)m->n_parts * 12))
        return -1;
    if (m->gap != e->cfg.gap_us || m->lateness != e->cfg.lateness_us ||
        m->max_pages != e->cfg.max_pages || max_bytes != e->cfg.max_session_bytes ||
        max_future != e->cfg.max_future_us)
        return -2;
    m->parts = r;
    return 0;
}

/* Reads the next partition entry of m; sets the partition's held visit as
 * saved (none before version 3). Returns its id and max_t, or -1. */
static int next_part(engine *e, saved_meta *m, int32_t *id, int64_t *max_t)
{
    uint32_t uid = 0, has_held = 0;
    reader_u32le(&m->parts, &uid);
    reader_i64le(&m->parts, max_t);
    if (m->version >= 3) reader_u32le(&m->parts, &has_held);
    if (m->parts.bad) return -1;
    *id = (int32_t)uid;
    partition_state *p = partition_get(e, *id);
    if (p->has_held) e->st.held_visits--;
    p->has_held = 0;
    if (!has_held) return 0;
    const unsigned char *page = NULL;
    visit h = {.pos = {.append_ts_ms = 0, .partition = *id}};
    reader_i64le(&m->parts, &h.user_id);
    reader_i64le(&m->parts, &h.event_time_us);
    reader_i64le(&m->parts, &h.pos.offset);
    reader_u32le(&m->parts, &h.page_len);
    if (reader_bytes(&m->parts, &page, h.page_len)) return -1;
    uint32_t user_len = 0;
    const unsigned char *user = NULL;
    reader_u32le(&m->parts, &user_len);
    if (user_len != UINT32_MAX && reader_bytes(&m->parts, &user, user_len)) return -1;
    if (m->parts.bad || (user_len != UINT32_MAX) != (e->cfg.string_users != 0)) return -1;
    h.user_len = user_len == UINT32_MAX ? 0 : user_len;
    h.user = user_len == UINT32_MAX ? NULL : "";
    p->held = h;
    buf_reset(&p->page);
    buf_append(&p->page, page, h.page_len);
    buf_reset(&p->user);
    if (user) buf_append(&p->user, user, user_len);
    p->has_held = 1;
    e->st.held_visits++;
    return 0;
}

int engine_load_meta(engine *e, const void *data, size_t len)
{
    saved_meta m;
    int rc = parse_meta(e, data, len, &m);
    if (rc) return rc;
    uint64_t *counters[] = {&e->st.visits_applied, &e->st.rejected_late, &e->st.rejected_cap,
                            &e->st.sessions_closed, &e->st.pages_closed,
                            &e->st.open_sessions, &e->st.open_pages, &e->st.rejected_future};
    _Static_assert(sizeof counters / sizeof *counters == sizeof m.counters / sizeof *m.counters,
                   "every counter saved is loaded");
    for (size_t i = 0; i < 8; i++) *counters[i] = m.counters[i];
    e->closing_wm = m.closing;
    for (size_t i = 0; i < e->n_parts; i++) buf_free(&e->parts[i].page), buf_free(&e->parts[i].user);
    e->n_parts = 0;
    e->st.held_visits = 0;
    for (uint32_t i = 0; i < m.n_parts; i++) {
        int32_t id;
        int64_t max_t = 0;
        if (next_part(e, &m, &id, &max_t)) return -1;
        partition_get(e, id)->max_t = max_t;
    }
    if (reader_left(&m.parts) != 0) return -1;
    /* Restored sessions are counted again by engine_load_user. */
    e->st.open_sessions = 0;
    e->st.open_pages = 0;
    return 0;
}

void engine_replay_begin(engine *e) { e->replaying = 1; }

int engine_replay_end(engine *e, const void *meta, size_t len)
{
    saved_meta m;
    e->replaying = 0;
    int rc = parse_meta(e, meta, len, &m);
    if (rc) return rc;
    /* The replay saw the same accepted visits, so every partition's maximum
     * event time must be the commit's; the closing watermark can only be
     * behind (caught-up signals are not replayed), never ahead. The visits
     * the future rule held at the commit are the commit's. */
    for (uint32_t i = 0; i < m.n_parts; i++) {
        int32_t id;
        int64_t max_t = 0;
        if (next_part(e, &m, &id, &max_t)) return -1;
        if (partition_get(e, id)->max_t != max_t) return -1;
    }
    if (reader_left(&m.parts) != 0) return -1;
    if (e->n_parts != m.n_parts || m.closing < e->closing_wm) return -1;
    e->closing_wm = m.closing;
    rc = close_expired(e);
    assert(rc == 0 || e->cb.on_close); /* no callback, nothing to fail */
    if (rc) return rc;
    if (e->st.open_sessions != m.counters[5] || e->st.open_pages != m.counters[6]) return -1;
    e->st.visits_applied = m.counters[0];
    e->st.rejected_late = m.counters[1];
    e->st.rejected_cap = m.counters[2];
    e->st.sessions_closed = m.counters[3];
    e->st.pages_closed = m.counters[4];
    e->st.rejected_future = m.counters[7];
    return 0;
}

#define BLOB_HAS_CUT UINT32_C(0x80000000)

/* The session count's top bit says each session carries its visit count
 * (u64 after its first position). Blobs written before visit counts existed
 * lack it; their sessions restore with one visit per stored page, which no
 * output sees: such a checkpoint has no --columns (bound, see job.c). The
 * next bit says each session carries its last position (u32 partition, i64
 * offset, after the visit count); without it the last position is unknown. */
#define BLOB_WITH_VISITS 0x80000000u
#define BLOB_WITH_LAST 0x40000000u
#define BLOB_FLAGS (BLOB_WITH_VISITS | BLOB_WITH_LAST)

static inline unsigned char *put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 4;
}

static inline unsigned char *put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
    return p + 8;
}

#define BLOB_SESSION_BYTES 60 /* a session's fixed fields, below */
#define BLOB_CUT_BYTES 20
#define BLOB_PAGE_BYTES 24 /* a page's fixed fields */

/* Sized first, then written with plain stores: the whole open state goes
 * through here at every compaction, on the job's thread (a buf_put_* call
 * per field cost 3x more). */
void encode_user(const session *head, buf *out)
{
    uint32_t n = 0;
    size_t need = 4;
    for (const session *s = head; s; s = s->next) {
        n++;
        need += BLOB_SESSION_BYTES + (s->cut_t != NO_CUT ? BLOB_CUT_BYTES : 0) +
                (size_t)s->n_pages * BLOB_PAGE_BYTES + s->page_bytes;
    }
    assert(n < BLOB_WITH_LAST);
    buf_reserve(out, need);
    unsigned char *p = out->data + out->len, *end = p + need;
    p = put_le32(p, n | BLOB_WITH_VISITS | BLOB_WITH_LAST);
    for (const session *s = head; s; s = s->next) {
        unsigned char *fixed = p;
        p = put_le64(p, (uint64_t)s->first_t);
        p = put_le64(p, (uint64_t)s->last_t);
        p = put_le64(p, (uint64_t)s->first_pos.append_ts_ms);
        p = put_le32(p, (uint32_t)s->first_pos.partition);
        p = put_le64(p, (uint64_t)s->first_pos.offset);
        p = put_le64(p, s->visits);
        p = put_le32(p, (uint32_t)s->last_part);
        p = put_le64(p, (uint64_t)s->last_off);
        /* The top bit of the page count says a cut follows (a count is at
         * most max_pages < 2^31, so blobs without a cut read as before). */
        p = put_le32(p, s->n_pages | (s->cut_t != NO_CUT ? BLOB_HAS_CUT : 0));
        assert(p - fixed == BLOB_SESSION_BYTES);
        (void)fixed;
        if (s->cut_t != NO_CUT) {
            p = put_le64(p, (uint64_t)s->cut_t);
            p = put_le32(p, (uint32_t)s->cut_part);
            p = put_le64(p, (uint64_t)s->cut_off);
        }
        const page_entry *pages = pages_of(s);
        const char *text = s->n_pages ? arena_of(s) : NULL;
        for (uint32_t i = 0; i < s->n_pages; i++) {
            const page_entry *pg = &pages[i];
            p = put_le64(p, (uint64_t)pg->t);
            p = put_le32(p, (uint32_t)pg->partition);
            p = put_le64(p, (uint64_t)pg->offset);
            p = put_le32(p, pg->len);
            if (pg->len) memcpy(p, text + pg->str_off, pg->len);
            p += pg->len;
        }
    }
    assert(p == end); /* the sizes above are the layout's */
    (void)end;
    out->len += need;
}

/* Offsets of encode_user's session fields. */
#define BS_LAST_T 8
#define BS_FIRST_POS 16 /* append_ts i64, partition u32, offset i64 */
#define BS_VISITS 36
#define BS_LAST_PART 44
#define BS_LAST_OFF 48
#define BS_PAGES 56
_Static_assert(BS_PAGES + 4 == BLOB_SESSION_BYTES, "the offsets are encode_user's");

/* Appends a page's fixed fields and text (room reserved). */
static unsigned char *put_page(unsigned char *p, int64_t t, const log_position *pos, const unsigned char *text,
                               uint32_t len)
{
    p = put_le64(p, (uint64_t)t);
    p = put_le32(p, (uint32_t)pos->partition);
    p = put_le64(p, (uint64_t)pos->offset);
    p = put_le32(p, len);
    if (len) memcpy(p, text, len);
    return p + len;
}

/* A session's fixed fields (s) take a visit at pos that joins it with a
 * page (it had pages of them): its first position, visit count, last
 * position (session_raise_last) and page count. */
static void session_fields_take(unsigned char *s, const log_position *pos, uint32_t pages)
{
    log_position first = {.append_ts_ms = (int64_t)load_u64le(s + BS_FIRST_POS),
                          .partition = (int32_t)load_u32le(s + BS_FIRST_POS + 8),
                          .offset = (int64_t)load_u64le(s + BS_FIRST_POS + 12)};
    if (log_position_cmp(pos, &first) < 0) {
        put_le64(s + BS_FIRST_POS, (uint64_t)pos->append_ts_ms);
        put_le32(s + BS_FIRST_POS + 8, (uint32_t)pos->partition);
        put_le64(s + BS_FIRST_POS + 12, (uint64_t)pos->offset);
    }
    put_le64(s + BS_VISITS, load_u64le(s + BS_VISITS) + 1);
    int32_t last_part = (int32_t)load_u32le(s + BS_LAST_PART);
    int64_t last_off = (int64_t)load_u64le(s + BS_LAST_OFF);
    if (last_part < 0 || pos->partition < 0) {
        put_le32(s + BS_LAST_PART, UINT32_MAX);
    } else if (pos->partition > last_part || (pos->partition == last_part && pos->offset > last_off)) {
        put_le32(s + BS_LAST_PART, (uint32_t)pos->partition);
        put_le64(s + BS_LAST_OFF, (uint64_t)pos->offset);
    }
    put_le32(s + BS_PAGES, pages + 1);
}

/* page_before for a page of a blob at q. */
static int blob_page_before(const unsigned char *q, int64_t t, int32_t part, int64_t off)
{
    int64_t qt = (int64_t)load_u64le(q);
    int32_t qpart = (int32_t)load_u32le(q + 8);
    if (qt != t) return qt < t;
    if (qpart != part) return qpart < part;
    return (int64_t)load_u64le(q + 12) < off;
}

/* What a blob's outline says of its first and last sessions (cold_user's
 * fields, checked by engine_check_invariants). */
typedef struct blob_outline {
    uint32_t n;         /* sessions */
    size_t last_at;     /* the last session's fixed fields: its pages end the blob */
    int64_t first_end;  /* the first session's last_t */
    int64_t last_end;
    uint32_t last_pages, last_bytes;
    int last_cut;
} blob_outline;

/* 0, or -1 if the blob is not one of encode_user's. */
static int blob_outline_of(const unsigned char *b, size_t len, blob_outline *o)
{
    size_t at = 4;
    if (len < 4) return -1;
    uint32_t n = load_u32le(b);
    if ((n & BLOB_FLAGS) != BLOB_FLAGS || (n &= ~BLOB_FLAGS) == 0) return -1;
    *o = (blob_outline){.n = n};
    for (uint32_t k = 0; k < n; k++) {
        if (len - at < BLOB_SESSION_BYTES) return -1;
        o->last_at = at;
        uint32_t pages = load_u32le(b + at + BS_PAGES);
        o->last_end = (int64_t)load_u64le(b + at + BS_LAST_T);
        if (k == 0) o->first_end = o->last_end;
        o->last_cut = (pages & BLOB_HAS_CUT) != 0;
        at += BLOB_SESSION_BYTES + (o->last_cut ? BLOB_CUT_BYTES : 0);
        o->last_pages = pages &= ~BLOB_HAS_CUT;
        o->last_bytes = 0;
        for (uint32_t i = 0; i < pages; i++) {
            if (at > len || len - at < BLOB_PAGE_BYTES) return -1;
            uint32_t plen = load_u32le(b + at + 20);
            o->last_bytes += plen;
            at += BLOB_PAGE_BYTES + (size_t)plen;
        }
        if (at > len) return -1;
    }
    return at == len ? 0 : -1;
}

/* Applies a cold user's appended visits (cold_append.c) to its blob, as
 * engine_apply applied them to its sessions when they came: the result is
 * encode_user's bytes for the sessions after them. 0, or -1 if the blob or
 * the delta do not decode. */
int blob_apply_delta(const engine *e, const cold_delta *d, buf *blob)
{
    if (!d || d->len == 0) return 0;
    blob_outline o = {.n = 0};
    /* an empty blob (a user born cold): its first visit's dt is its time */
    if (!(blob->len == 4 && load_u32le(blob->data) == BLOB_FLAGS) &&
        blob_outline_of(blob->data, blob->len, &o))
        return -1;
    size_t last = o.last_at;
    uint32_t n = o.n;
    reader r;
    reader_init(&r, d->data, d->len);
    while (reader_left(&r) > 0) {
        uint64_t dt = 0, back = 0, ts = 0, part = 0, off = 0, plen = 0;
        const unsigned char *page = NULL;
        reader_varint(&r, &dt);
        int join = n > 0 && dt == 0; /* (a new user's first dt is its time, 0 or not) */
        if (join) reader_varint(&r, &back);
        reader_varint(&r, &ts);
        reader_varint(&r, &part);
        reader_varint(&r, &off);
        reader_varint(&r, &plen);
        if (r.bad || part > UINT32_MAX || plen > UINT32_MAX || reader_bytes(&r, &page, plen)) return -1;
        log_position pos = {.append_ts_ms = zigzag_dec(ts), .partition = (int32_t)(uint32_t)part,
                            .offset = zigzag_dec(off)};
        int64_t t = (int64_t)((n ? load_u64le(blob->data + last + BS_LAST_T) : 0) + dt - back);
        if (join) {
            /* the only session takes a page in page order (engine_apply's
             * join of a visit at or before its end, within its caps) */
            if (n != 1 || back > (uint64_t)e->cfg.gap_us) return -1;
            buf_reserve(blob, BLOB_PAGE_BYTES + plen);
            unsigned char *s = blob->data + last;
            uint32_t pages = load_u32le(s + BS_PAGES);
            if (pages & BLOB_HAS_CUT) return -1; /* cold_append never joins a cut session */
            if (t < (int64_t)load_u64le(s)) put_le64(s, (uint64_t)t); /* first_t */
            session_fields_take(s, &pos, pages);
            unsigned char *q = s + BLOB_SESSION_BYTES, *end = blob->data + blob->len;
            for (uint32_t i = 0; i < pages && blob_page_before(q, t, pos.partition, pos.offset); i++)
                q += BLOB_PAGE_BYTES + load_u32le(q + 20);
            memmove(q + BLOB_PAGE_BYTES + plen, q, (size_t)(end - q));
            put_page(q, t, &pos, page, (uint32_t)plen);
            blob->len += BLOB_PAGE_BYTES + plen;
            continue;
        }
        if (n == 0 || dt > (uint64_t)e->cfg.gap_us) {
            /* a new session (session_new), one page */
            if (n + 1 >= BLOB_WITH_LAST) return -1;
            buf_reserve(blob, BLOB_SESSION_BYTES + BLOB_PAGE_BYTES + plen);
            last = blob->len;
            unsigned char *p = blob->data + last;
            p = put_le64(p, (uint64_t)t);
            p = put_le64(p, (uint64_t)t);
            p = put_le64(p, (uint64_t)pos.append_ts_ms);
            p = put_le32(p, (uint32_t)pos.partition);
            p = put_le64(p, (uint64_t)pos.offset);
            p = put_le64(p, 1);
            p = put_le32(p, (uint32_t)pos.partition);
            p = put_le64(p, (uint64_t)pos.offset);
            p = put_le32(p, 1);
            p = put_page(p, t, &pos, page, (uint32_t)plen);
            blob->len = (size_t)(p - blob->data);
            put_le32(blob->data, ++n | BLOB_FLAGS);
            continue;
        }
        /* the last session grows by a page at its end (engine_apply's join
         * of a visit after the session's pages, within its caps) */
        buf_reserve(blob, BLOB_PAGE_BYTES + plen);
        unsigned char *s = blob->data + last;
        uint32_t pages = load_u32le(s + BS_PAGES);
        if (pages & BLOB_HAS_CUT) return -1; /* cold_append never appends past a cut */
        put_le64(s + BS_LAST_T, (uint64_t)t);
        session_fields_take(s, &pos, pages);
        unsigned char *p = put_page(blob->data + blob->len, t, &pos, page, (uint32_t)plen);
        blob->len = (size_t)(p - blob->data);
    }
    return 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int64_t keyed_id(const keyed *k) { return (int64_t)(intptr_t)k->ptr; }

/* The dirty users in the checkpoint's key order: ints by value, string
 * users by their bytes. */
static void sort_dirty(engine *e)
{
    if (e->n_dirty < 2) return;
    if (!e->cfg.string_users) {
        qsort(e->dirty, e->n_dirty, sizeof *e->dirty, cmp_i64);
        return;
    }
    keyed *v = xmalloc(e->n_dirty * sizeof *v);
    for (size_t i = 0; i < e->n_dirty; i++)
        v[i] = (keyed){name_prefix(&e->names[e->dirty[i]]), (void *)(intptr_t)e->dirty[i]};
    keyed_sort(v, e->n_dirty);
    settle_string_ties(e, v, e->n_dirty, keyed_id);
    for (size_t i = 0; i < e->n_dirty; i++) e->dirty[i] = keyed_id(&v[i]);
    free(v);
}

user_key key_of(const engine *e, int64_t id)
{
    if (!e->cfg.string_users) return (user_key){.id = id};
    return (user_key){.id = id, .str = e->names[id].bytes, .len = e->names[id].len};
}

/* A cold user's blob, read back from the store (it stays cold: a snapshot
 * must not need the memory it was evicted to save). */
int cold_blob(const engine *e, const cold_user *c, buf *out)
{
    buf_reset(out);
    if (c->len == 0) { /* born cold (cold_birth): no record, an empty blob */
        buf_put_u32le(out, BLOB_FLAGS);
    } else {
        int rc = e->cold.get(e->cold.ctx, c->handle, c->len, out);
        if (rc) return rc;
        if (out->len != c->len) return -1;
    }
    return blob_apply_delta(e, c->delta, out) == 0 ? 0 : -1;
}

/* I8: a cold user's stub says what its blob, appended visits applied,
 * holds: its last session's end, its room within the caps (at most the
 * truth), whether it has one session, and its first session's end, which
 * its close-queue entry's key does not pass (cold_first_key). */
int cold_stub_broken(const engine *e, const cold_user *c, uint64_t key)
{
    buf b;
    buf_init(&b);
    blob_outline o;
    int broken = cold_blob(e, c, &b) || blob_outline_of(b.data, b.len, &o);
    buf_free(&b);
    if (broken) return 1;
    uint64_t room_pages = e->cfg.max_pages - o.last_pages, room_bytes = e->cfg.max_session_bytes - o.last_bytes;
    return c->last_t != o.last_end || c->single != (o.n == 1) ||
           (o.last_cut ? c->room_pages != 0 : c->room_pages > room_pages || c->room_bytes > room_bytes) ||
           key > close_key(o.first_end) || cold_first_key(c, key) != close_key(o.first_end);
}

int engine_foreach_dirty(engine *e, engine_dirty_fn fn, void *ctx)
{
    /* In key order: a B-tree store then writes each page once, in sequence
     * (docs/checkpoint.md measured 6 s -> 1.3 s for 1M users into SQLite). */
    sort_dirty(e);
    buf b;
    buf_init(&b);
    int rc = 0;
    for (size_t i = 0; i < e->n_dirty && !rc; i++) {
        const user_slot *u = user_find(e, e->dirty[i]);
        const cold_user *c = u ? NULL : cold_find(e, e->dirty[i]);
        if (c) {
            rc = cold_blob(e, c, &b);
            user_key k = key_of(e, e->dirty[i]);
            if (!rc) rc = fn(ctx, &k, b.data, b.len);
            continue;
        }
        if (!u || !u->head) {
            /* A user whose sessions opened and closed between two commits
             * never reached the checkpoint: nothing to delete. */
            if (u && u->persisted) {
                user_key k = key_of(e, e->dirty[i]);
                rc = fn(ctx, &k, NULL, 0);
            }
            continue;
        }
        buf_reset(&b);
        encode_user(u->head, &b);
        user_key k = key_of(e, e->dirty[i]);
        rc = fn(ctx, &k, b.data, b.len);
    }
    buf_free(&b);
    return rc;
}

/* How far ahead engine_foreach_user prefetches a slot's first session, and
 * (half as far) that session's page store: the walk is over the whole open
 * state, and without the hints it waited on two cache misses per user. */
#define WALK_AHEAD 16
#define WALK_LINES 16

int engine_foreach_user(const engine *e, engine_dirty_fn fn, void *ctx)
{
    buf b;
    buf_init(&b);
    int rc = 0;
    for (size_t i = 0; i < e->n_slots && !rc; i++) {
        if (i + WALK_AHEAD < e->n_slots && e->slots[i + WALK_AHEAD].head)
            __builtin_prefetch(e->slots[i + WALK_AHEAD].head);
        if (i + WALK_AHEAD / 2 < e->n_slots && e->slots[i + WALK_AHEAD / 2].head) {
            /* The lines of the page store that encode_user reads, entries
             * and text, up to WALK_LINES of each (further on the reads
             * stream, and the hardware's prefetcher follows them): hinting
             * the first two left the others of a long session's store to
             * miss one after another (its snapshot took 45 ms instead of
             * 30). And the user's next session. (GCC 12 drops the hints of
             * this block when it is an inline function of its own.) */
            const session *s = e->slots[i + WALK_AHEAD / 2].head;
            const unsigned char *store = s->store;
            size_t entries = (size_t)s->n_pages * sizeof(page_entry);
            for (size_t at = 0; at < entries && at < WALK_LINES * 64; at += 64)
                __builtin_prefetch(store + at);
            const char *text = store ? arena_of(s) : NULL;
            for (size_t at = 0; at < s->arena_len && at < WALK_LINES * 64; at += 64)
                __builtin_prefetch(text + at);
            if (s->next) __builtin_prefetch(s->next);
        }
        const user_slot *u = &e->slots[i];
        if (!u->used || !u->head) continue;
        buf_reset(&b);
        encode_user(u->head, &b);
        user_key k = key_of(e, u->user_id);
        rc = fn(ctx, &k, b.data, b.len);
    }
    for (size_t i = 0; i < e->n_ctab && !rc; i++) {
        /* the store reads ahead, several records a system call */
        const cold_user *next = i + WALK_AHEAD < e->n_ctab ? ctab_at(e, i + WALK_AHEAD) : NULL;
        if (next && next->len && e->cold.prefetch) e->cold.prefetch(e->cold.ctx, next->handle, next->len);
        const cold_user *c = ctab_at(e, i);
        if (!c) continue;
        rc = cold_blob(e, c, &b);
        user_key k = key_of(e, c->user_id);
        if (!rc) rc = fn(ctx, &k, b.data, b.len);
    }
    buf_free(&b);
    return rc;
}

int engine_string_users(const engine *e) { return e->cfg.string_users != 0; }

void engine_clear_dirty(engine *e)
{
    for (size_t i = 0; i < e->n_dirty; i++) {
        user_slot *u = user_find(e, e->dirty[i]);
        if (!u) {
            cold_user *c = cold_find(e, e->dirty[i]);
            if (c) c->persisted = 1, c->listed = 0;
            continue;
        }
        u->persisted = u->head != NULL;
        if (!u->head) user_remove(e, u);
    }
    e->n_dirty = 0;
    cq_trim(e);
    if (++e->epoch == 0) { /* wrapped: forget every stale mark */
        for (size_t i = 0; i < e->n_slots; i++) e->slots[i].dirty_epoch = 0;
        e->epoch = 1;
    }
}

/* Decodes a user's blob (encode_user) into its empty slot u: its sessions
 * join the queue and the counters. 0, or -1 if the blob is damaged (what was
 * decoded stays, for engine_free). */
int decode_user(engine *e, user_slot *u, const void *blob, size_t len)
{
    reader r;
    reader_init(&r, blob, len);
    uint32_t n = 0;
    if (reader_u32le(&r, &n)) return -1;
    int with_visits = (n & BLOB_WITH_VISITS) != 0, with_last = (n & BLOB_WITH_LAST) != 0;
    if (with_last && !with_visits) return -1;
    n &= ~BLOB_FLAGS;
    if (n == 0 || n > len / 40) return -1;
    int64_t user_id = u->user_id;
    session **tail = &u->head;
    int64_t prev_last = INT64_MIN;
    for (uint32_t k = 0; k < n; k++) {
        session *s = session_alloc(e);
        s->user_id = user_id;
        uint32_t part = 0, n_pages = 0;
        reader_i64le(&r, &s->first_t);
        reader_i64le(&r, &s->last_t);
        reader_i64le(&r, &s->first_pos.append_ts_ms);
        reader_u32le(&r, &part);
        reader_i64le(&r, &s->first_pos.offset);
        if (with_visits) reader_u64le(&r, &s->visits);
        uint32_t last_part = UINT32_MAX;
        if (with_last) {
            reader_u32le(&r, &last_part);
            reader_i64le(&r, &s->last_off);
        }
        s->last_part = (int32_t)last_part; /* -1: unknown */
        reader_u32le(&r, &n_pages);
        if (!with_visits) s->visits = n_pages ? n_pages : 1;
        s->first_pos.partition = (int32_t)part;
        s->cut_t = NO_CUT;
        int had_cut = (n_pages & BLOB_HAS_CUT) != 0;
        if (had_cut) {
            uint32_t cut_part = 0;
            n_pages &= ~BLOB_HAS_CUT;
            reader_i64le(&r, &s->cut_t);
            reader_u32le(&r, &cut_part);
            reader_i64le(&r, &s->cut_off);
            s->cut_part = (int32_t)cut_part;
        }
        /* Link first so that a failure below frees s with the rest. */
        *tail = s;
        tail = &s->next;
        close_queue_push(e, s);
        e->st.open_sessions++;
        if (r.bad || n_pages > e->cfg.max_pages || n_pages > reader_left(&r) / 24 ||
            s->first_t > s->last_t || (had_cut && s->cut_t == NO_CUT) ||
            s->visits == 0 || s->visits < n_pages ||
            (prev_last != INT64_MIN && s->first_t - prev_last <= e->cfg.gap_us))
            return -1;
        prev_last = s->last_t;
        session_reserve(e, s, n_pages, 0);
        for (uint32_t i = 0; i < n_pages; i++) {
            page_entry p = {0};
            uint32_t ppart = 0;
            const unsigned char *str = NULL;
            reader_i64le(&r, &p.t);
            reader_u32le(&r, &ppart);
            reader_i64le(&r, &p.offset);
            reader_u32le(&r, &p.len);
            p.partition = (int32_t)ppart;
            if (reader_bytes(&r, &str, p.len)) return -1;
            if (p.t < s->first_t || p.t > s->last_t) return -1;
            if (i > 0 && !page_before(&pages_of(s)[i - 1], p.t, p.partition, p.offset)) return -1;
            if (!before_cut(s, p.t, p.partition, p.offset)) return -1;
            if ((uint64_t)s->page_bytes + p.len > e->cfg.max_session_bytes) return -1;
            if (session_reserve(e, s, 0, p.len)) return -1;
            p.str_off = arena_push(s, (const char *)str, p.len);
            pages_of(s)[s->n_pages++] = p;
            s->page_bytes += p.len;
            e->st.open_pages++;
        }
    }
    return reader_left(&r) == 0 ? 0 : -1;
}

int engine_load_user(engine *e, const user_key *key, const void *blob, size_t len)
{
    if ((key->str != NULL) != (e->cfg.string_users != 0)) return -1; /* the other user type */
    int64_t user_id = key->id;
    if (e->cfg.string_users) {
        if (key->len == 0 || key->len > USER_MAX_BYTES || memchr(key->str, 0, key->len)) return -1;
        uint64_t h = name_hash(key->str, key->len);
        if (intern_find(e, key->str, key->len, h) >= 0) return -1; /* the same user twice */
        user_id = intern_add(e, key->str, key->len, h);
    }
    if (cold_find(e, user_id)) return -1; /* the same user twice */
    user_slot *u = user_insert(e, user_id);
    if (u->head) return -1;
    u->persisted = 1;
    int rc = decode_user(e, u, blob, len);
    return rc ? rc : keep_budget(e);
}

