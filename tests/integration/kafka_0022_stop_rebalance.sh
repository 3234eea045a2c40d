#!/usr/bin/env bash
# kafka_0022_stop_rebalance: SIGTERM while the job waits out a rebalance (a
# second member holds part of the topic, so the job reads nothing and waits
# up to sessionizer.rebalance.wait.ms for the whole topic) ends it within
# seconds, with its final commit: exit 0, and a later run completes the
# table exactly.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2
"$PY" "$TEST_DIR/kafka_gen.py" --partitions 2 --records 300 --users 20 --seed 22 "$WORK/log"
for p in 0 1; do produce visits $p <"$WORK/log/p$p.jsonl"; done
ARGS=(--source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/out.db" --checkpoint "$WORK/ckpt"
      --group g22 --commit-interval 200ms --dlq "jsonl:$WORK/dlq.jsonl" "${FAST[@]}")
start_job a "${ARGS[@]}"
A_PID=$JOB_PID
wait_until 30 grep -q timestamps "$WORK/a.err" || die "the job did not start reading"
# A second member of the same group: the group gives it a partition.
kcat -C -b "$BROKERS" -G g22 -q -X session.timeout.ms=6000 visits >"$WORK/kcat.out" 2>"$WORK/kcat.err" &
PIDS+=("$!")
wait_until 40 grep -q "paused until it leaves" "$WORK/a.err" || die "the job did not pause"
sleep 1
stop_expect "$A_PID" 5 0 "while paused by a rebalance"
kill "${PIDS[-1]}"
start_job finish "${ARGS[@]}" --until-end
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "the finishing run exited with $RC"
check_oracle "$WORK/out.db" visits
echo "kafka_0022_stop_rebalance: passed"
