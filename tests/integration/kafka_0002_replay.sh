#!/usr/bin/env bash
# kafka_0002_replay: replaying a fixed multi-partition log from the beginning
# gives identical sessions and ids whatever the fetch sizes, the partition
# interleaving and the crash points.
#
# The log: 4 partitions, users spread over all of them, partitions at
# different record rates over the same event-time span, jitter, late and
# invalid records, and one empty partition (which must not stall closing).
# Every run reads it with --until-end into its own SQLite file and its own
# consumer group; each table must equal the oracle's (kafka_oracle.py,
# computed from the topic dump without the C code) and so each other:
#   ref     default fetch settings
#   small   tiny fetches (a few records per partition per fetch), so the
#           partitions interleave record by record
#   big     one huge fetch per partition, so they arrive in long runs
#   crash   checkpoint every 50 records, SIGKILL at random instants while
#           consuming, restart until a run finishes
# and the counts reconcile: records = visits in sessions + dead letters.
source "$(dirname "$0")/kafka_lib.sh"

SEED=${SEED:-$RANDOM}
log "seed $SEED"
start_mock 4
"$PY" "$TEST_DIR/kafka_gen.py" --partitions 4 --records 6000 --users 60 --empty 1 \
    --seed 7 "$WORK/log"
for p in 0 1 2 3; do
    [ -s "$WORK/log/p$p.jsonl" ] && kcat -P -b "$BROKERS" -t visits -p $p -l "$WORK/log/p$p.jsonl"
done
dump_topic visits >"$WORK/topic.dump"
log "produced $(wc -l <"$WORK/topic.dump") records"
"$PY" "$TEST_DIR/kafka_oracle.py" "$WORK/topic.dump" >"$WORK/expected.rows"
"$PY" "$TEST_DIR/kafka_oracle.py" --counts "$WORK/topic.dump" >"$WORK/expected.counts"
log "oracle: $(cat "$WORK/expected.counts")"

SRC="kafka://$BROKERS/visits"
run_variant() { # NAME ARGS...
    local name=$1; shift
    start_job "$name" --source "$SRC" --sink "sqlite:$WORK/$name.db" --until-end \
        --dlq "jsonl:$WORK/$name.dlq" --group "g-$name" "${FAST[@]}" "$@"
    wait_job "$JOB_PID" 120
    [ "$RC" = 0 ] || die "$name run exited with $RC"
    rows "$WORK/$name.db" >"$WORK/$name.rows"
    cmp -s "$WORK/expected.rows" "$WORK/$name.rows" ||
        { diff "$WORK/expected.rows" "$WORK/$name.rows" | head >&2; die "$name: table differs from the oracle"; }
    log "$name: $(wc -l <"$WORK/$name.rows") sessions, identical to the oracle"
}

run_variant ref
# Counts reconcile (the summary line) and match the oracle's.
"$PY" - "$WORK/expected.counts" "$WORK/ref.err" "$WORK/ref.dlq" <<'EOF'
import json, re, sys
exp = json.load(open(sys.argv[1]))
summary = [l for l in open(sys.argv[2]) if " info sessionizer: " in l and " records: " in l][-1]
n = [int(x) for x in re.findall(r"(\d+) ", summary.split(";")[0])]
records, closed_visits, closed, open_visits, open_s, dead = n[:6]
dlq = open(sys.argv[3]).read().splitlines()
reasons = [json.loads(l)["reason"] for l in dlq]
late = reasons.count("late")
assert records == exp["records"], (records, exp)
assert closed_visits == exp["visits"] and closed == exp["sessions"], (summary, exp)
assert open_visits == 0 and open_s == 0, summary
assert dead == len(dlq) == exp["invalid"] + exp["late"] + exp["future"], (dead, len(dlq), exp)
assert late == exp["late"], (late, exp)
assert records == closed_visits + dead
for l in dlq:  # dead letters name their Kafka coordinates
    d = json.loads(l)
    assert d["partition"] in (0, 1, 2) and d["offset"] >= 0 and d["append_ts_ms"] > 0, d
print("counts reconcile:", records, "=", closed_visits, "+", dead, f"({late} late)")
EOF

run_variant small -X message.max.bytes=1000 -X fetch.max.bytes=3000 -X max.partition.fetch.bytes=400 \
    -X fetch.wait.max.ms=1 -X queued.min.messages=1
run_variant big -X fetch.max.bytes=52428800 -X max.partition.fetch.bytes=10485760 \
    -X queued.min.messages=1000000

# Crash points. The first record's log line says consumption has begun;
# kill at a random instant within 1 s after it, then resume from the
# checkpoint. Tiny fetches and a commit (two fsyncs) every 50 records stretch
# consumption to a few seconds, so that the kill lands mid-stream (with a
# commit every 150 records, a resumed run of today's job could finish inside
# the window).
name=crash
attempt=0 kills=0 round=1
RANDOM=$SEED
while :; do
    attempt=$((attempt + 1))
    [ $attempt -le 16 ] || die "crash: no run finished after 16 attempts"
    start_job "$name.$attempt" --source "$SRC" --sink "sqlite:$WORK/$name.db" --until-end \
        --checkpoint "$WORK/$name.ckpt" --commit-every 50 --dlq "jsonl:$WORK/$name.dlq" \
        --group "g-$name-$round" "${FAST[@]}" -X message.max.bytes=1000 -X fetch.max.bytes=3000 \
        -X max.partition.fetch.bytes=400 \
        -X fetch.wait.max.ms=1 -X queued.min.messages=1
    if [ $kills -lt 4 ] && wait_until 40 grep -q "timestamps" "$WORK/$name.$attempt.err"; then
        sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
        if kill -9 "$JOB_PID" 2>/dev/null; then
            wait "$JOB_PID" 2>/dev/null || true
            kills=$((kills + 1))
            log "crash: SIGKILL $kills after $(count_rows "$WORK/$name.db") rows written"
            continue
        fi
    fi
    wait_job "$JOB_PID" 120
    [ "$RC" = 0 ] || die "crash run $attempt exited with $RC"
    # A run that finished before its kill leaves fewer crashes than the
    # scenario needs: start again from nothing (table, checkpoint, dead
    # letters, a new group), rather than fail on the machine's speed.
    if [ $kills -lt 2 ] && [ $round -lt 3 ]; then
        log "crash: round $round finished after $kills kills; starting again from nothing"
        rm -rf "$WORK/$name.db" "$WORK/$name.db-wal" "$WORK/$name.db-shm" "$WORK/$name.ckpt" "$WORK/$name.dlq"
        round=$((round + 1)) kills=0
        continue
    fi
    break
done
[ $kills -ge 2 ] || die "crash: only $kills kills landed mid-stream"
rows "$WORK/$name.db" >"$WORK/$name.rows"
cmp -s "$WORK/expected.rows" "$WORK/$name.rows" ||
    { diff "$WORK/expected.rows" "$WORK/$name.rows" | head >&2; die "crash: table differs after $kills kills"; }
log "crash: $kills SIGKILLs, $(wc -l <"$WORK/$name.rows") sessions, identical to the oracle"
echo "kafka_0002_replay: passed"
