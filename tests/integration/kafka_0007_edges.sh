#!/usr/bin/env bash
# kafka_0007_edges: start-up and configuration edges of the Kafka source.
#  1. unreachable cluster: a clear error within the start-up bound
#     (-X sessionizer.startup.timeout.ms), exit 1
#  2. a malformed URI; a bad or forbidden -X
#  3. empty partitions do not stall closing in a live run (4 partitions,
#     data in one only)
#  4. --start latest skips what the topic held at start
#  5. positions are committed to the consumer group (lag tools): a consumer
#     of the same group starting from the committed offsets sees only what
#     was produced afterwards
# Not covered here: a missing topic (the mock cluster creates any topic it is
# asked about; on a real cluster without auto-creation the job stops with
# "topic 'X' does not exist"), and a checkpoint whose offsets lie beyond a partition's end
# (topic recreated); the mock cluster cannot delete a topic or come back on
# the same address.
source "$(dirname "$0")/kafka_lib.sh"

# 1 -----------------------------------------------------------------------
t0=$(date +%s)
start_job unreachable --source kafka://127.0.0.1:1/visits --sink "sqlite:$WORK/x.db" \
    --dlq "jsonl:$WORK/x.dlq" -X sessionizer.startup.timeout.ms=3000
wait_job "$JOB_PID" 30
t=$(($(date +%s) - t0))
[ "$RC" = 1 ] || die "unreachable cluster: exit $RC"
[ $t -le 8 ] || die "unreachable cluster: took $t s for a 3 s bound"
grep -q "cannot reach the Kafka cluster at 127.0.0.1:1 within 3.0 s" "$WORK/unreachable.err" ||
    die "unclear message: $(cat "$WORK/unreachable.err")"
log_lines_only "$WORK/unreachable.err"
log "1: $(grep error "$WORK/unreachable.err" | cut -c1-150)... ($t s)"

# 2 -----------------------------------------------------------------------
start_mock 4
check_refusal() { # NAME EXPECTED-TEXT ARGS...
    local name=$1 text=$2; shift 2
    start_job "$name" --sink "sqlite:$WORK/$name.db" --dlq "jsonl:$WORK/$name.dlq" "$@"
    wait_job "$JOB_PID" 30
    [ "$RC" != 0 ] || die "$name: accepted"
    grep -qF -- "$text" "$WORK/$name.err" || die "$name: unclear message: $(cat "$WORK/$name.err")"
}
check_refusal baduri "expected kafka://HOST:PORT" --source "kafka:$BROKERS/visits"
check_refusal badprop "-X fetch.max.bytes=lots" --source "kafka://$BROKERS/visits" -X fetch.max.bytes=lots
check_refusal groupid "--group" --source "kafka://$BROKERS/visits" -X group.id=other
check_refusal autocommit "cannot be changed" --source "kafka://$BROKERS/visits" -X enable.auto.commit=true
check_refusal coop "cooperative" --source "kafka://$BROKERS/visits" \
    -X partition.assignment.strategy=cooperative-sticky
log "2: bad URI, bad and forbidden properties refused"

# 3 -----------------------------------------------------------------------
start_job live --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/live.db" \
    --checkpoint "$WORK/ck-live" --group g-live "${FAST[@]}"
printf '%s\n' '{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}' \
              '{"user_id": 1, "page": "B.html", "event_time": "2023-02-20T03:03:26"}' \
              '{"user_id": 1, "page": "C.html", "event_time": "2023-02-20T03:05:26"}' | produce visits 2
wait_until 30 has_rows "$WORK/live.db" 1 || die "3: with 3 empty partitions the (A, B) session never closed"
log "3: partitions 0, 1 and 3 empty, the (A, B) session closed live"
kill -INT "$JOB_PID"
wait_job "$JOB_PID" 30
[ "$RC" = 0 ] || die "3: SIGINT exit $RC"

# 5 (the live job above committed its positions to group g-live) -----------
echo '{"user_id": 9, "page": "after.html", "event_time": "2023-02-20T03:06:00"}' | produce visits 1
timeout 40 kcat -C -b "$BROKERS" -G g-live -X auto.offset.reset=earliest -e -q -f '%s\n' visits \
    >"$WORK/group.out" 2>"$WORK/group.err" || true
[ "$(cat "$WORK/group.out")" = '{"user_id": 9, "page": "after.html", "event_time": "2023-02-20T03:06:00"}' ] ||
    die "5: a consumer of group g-live saw: $(cat "$WORK/group.out")"
log "5: the group's committed offsets are the job's positions"

# 4 -----------------------------------------------------------------------
start_job latest --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/latest.db" \
    --start latest --until-end --group g-latest --dlq "jsonl:$WORK/latest.dlq" "${FAST[@]}"
wait_job "$JOB_PID" 30
[ "$RC" = 0 ] || die "4: exit $RC"
grep -q " info sessionizer: 0 records" "$WORK/latest.err" || die "4: --start latest read old records"
log "4: --start latest read nothing of the 4 records already there"

# 6 (the checkpoint of the live job of 3) ---------------------------------
# The same cluster by other addresses: every broker listed, last first, and
# "localhost" for 127.0.0.1.
others=$(echo "$BROKERS" | tr ',' '\n' | sed 's/^127\.0\.0\.1:/localhost:/' | tac | paste -sd, -)
[ "$others" != "$BROKERS" ] || die "6: no other spelling of $BROKERS"
start_job respelt --source "kafka://$others/visits" --sink "sqlite:$WORK/live.db" \
    --checkpoint "$WORK/ck-live" --group g-respelt --until-end "${FAST[@]}"
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "6: the same cluster as kafka://$others was refused: $(cat "$WORK/respelt.err")"
grep -q "resumed from checkpoint" "$WORK/respelt.err" || die "6: did not resume: $(cat "$WORK/respelt.err")"
check_refusal othertopic "belongs to the source" --source "kafka://$BROKERS/clicks" \
    --checkpoint "$WORK/ck-live" --group g-other --until-end
log "6: kafka://$others resumed the checkpoint of kafka://$BROKERS; topic clicks refused"

echo "kafka_0007_edges: passed"
