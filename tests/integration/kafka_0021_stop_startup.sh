#!/usr/bin/env bash
# kafka_0021_stop_startup: SIGTERM during start-up ends the job within
# seconds: (1) while it waits for an unreachable cluster (start-up timeout
# 15 s by default), with exit 1, a message that says so and no checkpoint
# written; (2) while it joins the consumer group, before any assignment,
# with exit 0 after its final commit; (3) while the Kafka dead-letter
# output waits for its cluster, with exit 1.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2
echo '{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}' | produce visits 0

# (1) every broker down before the job starts
kill -USR1 "$MOCK_PID"
sleep 0.5
start_job down --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/down.db" \
    --checkpoint "$WORK/ck-down" "${FAST[@]}"
sleep 2
kill -0 "$JOB_PID" 2>/dev/null || die "the job did not wait for the cluster"
stop_expect "$JOB_PID" 3 1 "(1) while connecting"
grep -q "stopped while waiting for the Kafka cluster" "$WORK/down.err" || die "no clear message"
[ ! -e "$WORK/ck-down" ] || die "a checkpoint was written"
kill -USR2 "$MOCK_PID"

# (2) joining the group: the mock takes ~3 s to assign the partitions
start_job join --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/join.db" \
    --checkpoint "$WORK/ck-join" "${FAST[@]}"
sleep 1.5
! grep -q timestamps "$WORK/join.err" || log "(2) note: the group was already joined"
stop_expect "$JOB_PID" 3 0 "(2) while joining the group"

# (3) the dead-letter output's cluster is unreachable (nothing listens there)
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
echo '{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}' >"$WORK/one.jsonl"
start_job dlq --source "file:$WORK/one.jsonl" --sink "sqlite:$WORK/dlq.db" \
    --dlq "kafka://127.0.0.1:$port/dead"
sleep 2
kill -0 "$JOB_PID" 2>/dev/null || die "the dead-letter output did not wait for its cluster"
stop_expect "$JOB_PID" 3 1 "(3) while the dead-letter output connects"
grep -q "stopped while waiting" "$WORK/dlq.err" || die "no clear message: $(cat "$WORK/dlq.err")"
echo "kafka_0021_stop_startup: passed"
