#!/usr/bin/env bash
# kafka_0023_stop_dlq: SIGTERM while the Kafka dead-letter output waits for
# an unreachable cluster to acknowledge dead letters (message.timeout.ms is
# 300 s) ends the job within seconds. The final commit cannot be made: exit
# 1, the checkpoint stays where it was (before the unacknowledged letters),
# and a run after the outage writes every dead letter.
#
# Input is a FIFO (a live stream whose records we write one by one), dead
# letters go to a topic of the mock cluster, whose brokers go down between
# the first records and the last ones.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 1 --topic dead:1
mkfifo "$WORK/in"
ARGS=(--source "file:$WORK/in" --sink "sqlite:$WORK/out.db" --checkpoint "$WORK/ckpt"
      --commit-interval 200ms --dlq "kafka://$BROKERS/dead")
start_job job "${ARGS[@]}"
exec 3>"$WORK/in"
bad() { printf 'not a visit %s\n' "$1" >&3; printf 'not a visit %s\n' "$1" >>"$WORK/all.txt"; }
bad 1; bad 2; bad 3
dead() { kcat -C -b "$BROKERS" -t dead -e -q -f '%s\n' 2>/dev/null | sort -u; }
wait_until 30 bash -c "[ \$(kcat -C -b $BROKERS -t dead -e -q | wc -l) -ge 3 ]" ||
    die "the first dead letters did not arrive"
sleep 0.5 # their commit
kill -USR1 "$MOCK_PID"
log "brokers down"
bad 4; bad 5
sleep 2 # a commit is now waiting for their acknowledgement
kill -0 "$JOB_PID" 2>/dev/null || die "the job did not wait for the dead-letter topic"
# exit 1: the final commit cannot be made
stop_expect "$JOB_PID" 5 1 "while dead letters wait for the cluster"
exec 3>&-
grep -q "not acknowledged" "$WORK/job.err" || die "no clear message"

kill -USR2 "$MOCK_PID"
log "brokers up"
# The same bytes as a regular file at the same path: the checkpoint is
# bound to the path, and resumes where its last commit was.
rm "$WORK/in"
cp "$WORK/all.txt" "$WORK/in"
start_job again "${ARGS[@]}" --until-end
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "the run after the outage exited with $RC"
dead >"$WORK/dead.txt"
sort -u "$WORK/all.txt" | diff - "$WORK/dead.txt" >&2 || die "dead letters lost"
log "every dead letter is in the topic after the restart"
echo "kafka_0023_stop_dlq: passed"
