#!/usr/bin/env bash
# kafka_0005_second_consumer: a second instance joins the consumer group of a
# running one.
#
# One instance must read every partition (a user's visits may be in any of
# them), so the group cannot be shared. Expected (docs/kafka.md):
#  - the newcomer B, offered only part of the topic, waits long enough for a
#    crashed member to be evicted (2 x session timeout + 5 s), then refuses
#    to run: exit 1 with a message naming the group, having read nothing and
#    written nothing;
#  - the running instance A pauses (reads nothing while it holds only part of
#    the topic), gets the whole topic back when B leaves, and goes on from
#    its own positions: its final table equals the oracle's for the whole
#    log, with nothing lost or duplicated across the two rebalances.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2
"$PY" "$TEST_DIR/kafka_gen.py" --partitions 2 --records 2000 --users 30 --seed 5 "$WORK/log"
half() { # PART FIRST|SECOND
    local f=$WORK/log/p$1.jsonl n; n=$(wc -l <"$f")
    if [ "$2" = first ]; then head -n $((n / 2)) "$f"; else tail -n +$((n / 2 + 1)) "$f"; fi
}
for p in 0 1; do half $p first | produce visits $p; done

COMMON=(--lateness 60s --commit-every 100 "${FAST[@]}")
start_job a --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/a.db" --checkpoint "$WORK/ckA" \
    --dlq "jsonl:$WORK/a.dlq" "${COMMON[@]}"
A_PID=$JOB_PID
wait_until 30 grep -q timestamps "$WORK/a.err" || die "A did not start reading"
sleep 1
log "A is reading; starting B in the same group"
start_job b --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/b.db" --checkpoint "$WORK/ckB" \
    --dlq "jsonl:$WORK/b.dlq" "${COMMON[@]}"
B_PID=$JOB_PID
# While A is paused, the second half of the log accumulates: when A gets the
# topic back, every partition has a backlog, and none may run ahead of the
# others into lateness (the caught-up rule of docs/kafka.md).
wait_until 30 grep -q "paused" "$WORK/a.err" || die "A did not pause when B joined"
for p in 0 1; do half $p second | produce visits $p; done
wait_job "$B_PID" 60
[ "$RC" = 1 ] || die "B exited with $RC, expected 1 (refusal)"
grep -q "refuses to run" "$WORK/b.err" || die "B's message does not say it refuses"
grep -q " info sessionizer: 0 records" "$WORK/b.err" || die "B read records"
[ "$(count_rows "$WORK/b.db")" = 0 ] || die "B wrote rows"
log "B refused: $(grep -o 'consumer group.*refuses to run' "$WORK/b.err" | cut -c1-120)..."

kill -0 "$A_PID" 2>/dev/null || die "A died"
wait_until 40 grep -q "gave this instance all 2 partitions" "$WORK/a.err" || die "A did not get the topic back"
log "A: $(grep -o 'gave this instance.*' "$WORK/a.err")"
sleep 3
kill -INT "$A_PID"
wait_job "$A_PID" 30
[ "$RC" = 0 ] || die "A exited with $RC on SIGINT"
start_job a-finish --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/a.db" \
    --checkpoint "$WORK/ckA" --dlq "jsonl:$WORK/a.dlq" "${COMMON[@]}" --until-end
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "A's finishing run exited with $RC"
check_oracle "$WORK/a.db" visits --lateness 60
log "A's table equals the oracle's for the whole log ($(count_rows "$WORK/a.db") sessions)"
echo "kafka_0005_second_consumer: passed"
