/*
 * fuzz_checkpoint.c - the checkpoint decoders (engine meta, per-user open
 * sessions, change-log frames and their replay, snapshots) on arbitrary
 * bytes, as read back from a damaged checkpoint.
 *
 * Input: one byte selecting the decoder, then the blob. A blob the decoder
 * accepts must leave a consistent engine: its invariants hold, and closing
 * everything emits exactly the sessions and pages it reports open, each page
 * within its session.
 */
#include "fuzz_check.h"
#include <stdint.h>
#include <string.h>

#include "checkpoint/changelog.h"
#include "engine/engine.h"

static uint64_t pages_seen;

static int on_close(void *ctx, const closed_session *cs)
{
    (void)ctx;
    REQUIRE(cs->first_event_us <= cs->last_event_us);
    pages_seen += cs->n_pages;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    engine_config cfg = {.gap_us = 50000000, .lateness_us = 10000000, .max_pages = 64,
                         .track_dirty = 1};
    engine_callbacks cb = {.on_close = on_close};
    engine *e = engine_new(&cfg, &cb);
    const uint8_t *blob = data + 1;
    size_t len = size - 1;
    int loaded = 0;
    changelog_view v;
    uint64_t seq;
    switch (data[0] & 3) {
    case 1: (void)engine_load_meta(e, blob, len); break;
    case 0: loaded = engine_load_user(e, &(user_key){.id = 42}, blob, len) == 0; break;
    case 2:
        /* a frame that parses replays (or is refused) without breaking e */
        if (changelog_parse(blob, len, &v) == 1) {
            (void)changelog_foreach_meta(&v, NULL, NULL);
            (void)changelog_replay(e, &v);
            loaded = 1;
        }
        break;
    default:
        (void)changelog_snapshot_meta(blob, len, &seq, NULL, NULL);
        loaded = changelog_load_snapshot(e, blob, len, &seq, NULL, NULL, NULL) == 0;
        break;
    }
    if (loaded) {
        REQUIRE(engine_check_invariants(e) == 0);
        engine_stats before, after;
        engine_get_stats(e, &before);
        pages_seen = 0;
        REQUIRE(engine_close_all(e) == 0);
        engine_get_stats(e, &after);
        REQUIRE(after.sessions_closed == before.open_sessions);
        REQUIRE(pages_seen == before.open_pages);
        REQUIRE(after.open_sessions == 0 && after.open_pages == 0);
    }
    engine_free(e);
    return 0;
}
