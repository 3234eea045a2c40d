#!/usr/bin/env bash
# kafka_0003_outage: every broker goes down mid-stream, for longer than the
# group session timeout, and comes back; the job waits it out and resumes,
# losing and duplicating nothing.
#
# The log is produced first; the job reads it with tiny fetches and
# --until-end, and the log is long enough (36k records, ~4 s of such
# fetches) for the outage to land mid-stream even on a loaded machine (the
# consumer thread's ring can hold the whole log: only the fetches pace the
# job). While the cluster is down the job must stay up and say so; the group
# session times out (6 s), so the
# assignment is lost and given back after the reconnection. The final table
# must equal the oracle's for the whole log, and the checkpointed positions
# must be at the end of every partition.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 3
"$PY" "$TEST_DIR/kafka_gen.py" --partitions 3 --records 20000 --users 50 --seed 3 "$WORK/log"
for p in 0 1 2; do kcat -P -b "$BROKERS" -t visits -p $p -l "$WORK/log/p$p.jsonl"; done
dump_topic visits >"$WORK/topic.dump"
"$PY" "$TEST_DIR/kafka_oracle.py" "$WORK/topic.dump" >"$WORK/expected.rows"
log "produced $(wc -l <"$WORK/topic.dump") records, $(wc -l <"$WORK/expected.rows") sessions expected"

start_job job --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/out.db" --until-end \
    --checkpoint "$WORK/ckpt" --commit-every 200 --dlq "jsonl:$WORK/dlq.jsonl" "${FAST[@]}" \
    -X message.max.bytes=1000 -X fetch.max.bytes=2000 -X max.partition.fetch.bytes=300 \
    -X fetch.wait.max.ms=1 -X queued.min.messages=1 --progress
wait_until 30 grep -q timestamps "$WORK/job.err" || die "the job did not start reading"
sleep 0.3
kill -USR1 "$MOCK_PID" # every broker down
log "brokers down"
sleep 9
kill -0 "$JOB_PID" 2>/dev/null || die "the job did not survive the outage"
rows_during=$(count_rows "$WORK/out.db")
kill -USR2 "$MOCK_PID"
log "brokers up ($rows_during rows written before and during the outage)"
wait_job "$JOB_PID" 90
[ "$RC" = 0 ] || die "the job exited with $RC after the outage"
grep -q "unreachable" "$WORK/job.err" || die "the outage was not reported"
grep -q "reachable again\|all 3 partitions" "$WORK/job.err" || die "the recovery was not reported"
log_lines_only "$WORK/job.err"
rows "$WORK/out.db" >"$WORK/actual.rows"
diff "$WORK/expected.rows" "$WORK/actual.rows" | head >&2
cmp -s "$WORK/expected.rows" "$WORK/actual.rows" || die "table differs from the oracle after the outage"
[ "$rows_during" -lt "$(wc -l <"$WORK/expected.rows")" ] || die "the outage did not land mid-stream"
grep -E "unreachable|reachable again|lost|partitions" "$WORK/job.err" | cut -c1-160 >&2
log "$(wc -l <"$WORK/actual.rows") sessions after the outage, identical to the oracle"
echo "kafka_0003_outage: passed"
