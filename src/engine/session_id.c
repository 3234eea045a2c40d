/*
 * session_id.c - the session id hash (definition in session_id.h).
 *
 * The input is serialized explicitly in little-endian so that the id does not
 * depend on the host's byte order or struct padding.
 */
#include "engine/session_id.h"

#include <assert.h>
#include <string.h>

/* xxHash's header-only mode (same Debian package): the 31-byte case
 * compiles to a few dozen instructions instead of a call through the PLT
 * and XXH3's length dispatch, once per closed session. */
#define XXH_INLINE_ALL
#include <xxhash.h>

int64_t session_id_of(int64_t user_id, const log_position *first)
{
    unsigned char in[31] = {'s', 'z', '1'};
    uint64_t u = (uint64_t)user_id, ts = (uint64_t)first->append_ts_ms, off = (uint64_t)first->offset;
    uint32_t part = (uint32_t)first->partition;
    for (int i = 0; i < 8; i++) in[3 + i] = (unsigned char)(u >> (8 * i));
    for (int i = 0; i < 8; i++) in[11 + i] = (unsigned char)(ts >> (8 * i));
    for (int i = 0; i < 4; i++) in[19 + i] = (unsigned char)(part >> (8 * i));
    for (int i = 0; i < 8; i++) in[23 + i] = (unsigned char)(off >> (8 * i));
    return (int64_t)XXH3_64bits(in, sizeof in);
}

int64_t session_id_of_string(const char *user, uint32_t len, const log_position *first)
{
    /* Users are at most USER_MAX_BYTES (512): one stack buffer holds it all. */
    unsigned char in[28 + 1024];
    assert(len <= sizeof in - 28);
    uint64_t ts = (uint64_t)first->append_ts_ms, off = (uint64_t)first->offset;
    uint32_t part = (uint32_t)first->partition;
    memcpy(in, "sz1s", 4);
    for (int i = 0; i < 4; i++) in[4 + i] = (unsigned char)(len >> (8 * i));
    memcpy(in + 8, user, len);
    unsigned char *p = in + 8 + len;
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(ts >> (8 * i));
    for (int i = 0; i < 4; i++) p[8 + i] = (unsigned char)(part >> (8 * i));
    for (int i = 0; i < 8; i++) p[12 + i] = (unsigned char)(off >> (8 * i));
    return (int64_t)XXH3_64bits(in, 8 + (size_t)len + 20);
}
