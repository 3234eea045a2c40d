#!/usr/bin/env bash
# kafka_0020_stop_outage: SIGTERM while every broker is down ends a live job
# within seconds, with its final commit (the positions are the checkpoint's,
# not the cluster's, so the commit needs no broker): exit 0, and a run
# after the outage completes the table without a loss or a duplicate.
#
# The job is stopped after the outage has lasted longer than its 5 s probe
# interval, so that the probe (which once hung in a watermark query while the
# partition leader was unknown) has run at least once.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2
"$PY" "$TEST_DIR/kafka_gen.py" --partitions 2 --records 400 --users 20 --seed 20 "$WORK/log"
for p in 0 1; do produce visits $p <"$WORK/log/p$p.jsonl"; done
ARGS=(--source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/out.db" --checkpoint "$WORK/ckpt"
      --commit-interval 200ms --dlq "jsonl:$WORK/dlq.jsonl" "${FAST[@]}")
start_job live "${ARGS[@]}"
wait_until 30 grep -q timestamps "$WORK/live.err" || die "the job did not start reading"
sleep 1
kill -USR1 "$MOCK_PID" # every broker down
log "brokers down"
wait_until 20 grep -q unreachable "$WORK/live.err" || die "the outage was not noticed"
sleep 7
kill -0 "$JOB_PID" 2>/dev/null || die "the job did not survive the outage"
# exit 0: the final commit needs no broker
stop_expect "$JOB_PID" 5 0 "during the outage, brokers down"
grep -q "stopped by signal after a final commit" "$WORK/live.err" || die "no final commit reported"

kill -USR2 "$MOCK_PID"
log "brokers up"
start_job finish "${ARGS[@]}" --until-end
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "the run after the outage exited with $RC"
check_oracle "$WORK/out.db" visits
log "$(count_rows "$WORK/out.db") sessions, identical to the oracle"
echo "kafka_0020_stop_outage: passed"
