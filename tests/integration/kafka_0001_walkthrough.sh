#!/usr/bin/env bash
# kafka_0001_walkthrough: the reference walkthrough (shared/seeds, docs/kafka.md)
# against the mock cluster, step by step:
#   topic visits with 2 partitions; produce A; start the job; produce B and C;
#   the session (A, B) appears in SQLite (C, two minutes after B, is beyond the
#   50 s gap and opens a session of its own); stop the job; delete the
#   checkpoint; restart; produce D; the (A, B) row is rewritten with the same
#   session_id and a new ingestion_time, and C's session is written too.
# Ids are checked against the oracle, i.e. against the hash of each session's
# earliest record's (timestamp, partition, offset) as kcat reads them.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2
DB=$WORK/sessions.db
ARGS=(--source "kafka://$BROKERS/visits" --sink "sqlite:$DB" --checkpoint "$WORK/ckpt"
      --dlq "jsonl:$WORK/dlq.jsonl" "${FAST[@]}")

echo '{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}' | produce visits
start_job job1 "${ARGS[@]}"
wait_until 30 grep -q timestamps "$WORK/job1.err" || die "the job did not read A"
printf '%s\n' '{"user_id": 1, "page": "B.html", "event_time": "2023-02-20T03:03:26"}' \
              '{"user_id": 1, "page": "C.html", "event_time": "2023-02-20T03:05:26"}' | produce visits
wait_until 20 has_rows "$DB" 1 || die "the (A, B) session was not written"
row1=$(sqlite3 "$DB" "SELECT session_id, user_id, pages, ingestion_time FROM sessions")
log "after B and C: $row1"
dump_topic visits >"$WORK/topic.dump"
"$PY" "$TEST_DIR/kafka_oracle.py" "$WORK/topic.dump" >"$WORK/expected.rows"
grep -q '|\["A.html","B.html"\]$' "$WORK/expected.rows" || die "oracle: no (A, B) session?"
id_ab=$(grep '|\["A.html","B.html"\]$' "$WORK/expected.rows" | cut -d'|' -f1)
[ "$(rows "$DB")" = "$id_ab|1|[\"A.html\",\"B.html\"]" ] || die "row $(rows "$DB"), expected id $id_ab"

kill -INT "$JOB_PID"
wait_job "$JOB_PID" 30
[ "$RC" = 0 ] || die "SIGINT: the job exited with $RC"
grep -q "stopped by signal after a final commit" "$WORK/job1.err" || die "no final commit"

rm -rf "$WORK/ckpt"
sleep 1 # so that the rewrite's ingestion_time is visibly new (millisecond resolution)
start_job job2 "${ARGS[@]}"
echo '{"user_id": 2, "page": "D.html", "event_time": "2023-02-20T04:55:26"}' | produce visits
wait_until 40 has_rows "$DB" 2 || die "D did not move the stream forward"
sqlite3 -header -column "$DB" "SELECT * FROM sessions ORDER BY user_id, ingestion_time" >&2
dump_topic visits >"$WORK/topic.dump"
"$PY" "$TEST_DIR/kafka_oracle.py" "$WORK/topic.dump" | grep -v '|2|\["D.html"\]$' >"$WORK/expected.rows"
rows "$DB" >"$WORK/actual.rows"
diff "$WORK/expected.rows" "$WORK/actual.rows" >&2 || die "table differs from the oracle"
row2=$(sqlite3 "$DB" "SELECT session_id, user_id, pages, ingestion_time FROM sessions WHERE session_id = $id_ab")
[ "${row2%|*}" = "${row1%|*}" ] || die "the (A, B) row changed: $row1 -> $row2"
[ "${row2##*|}" \> "${row1##*|}" ] || die "ingestion_time not renewed: $row1 -> $row2"
log "after D: $row2 (same id, new ingestion_time); D's session stays open (live run)"

kill -INT "$JOB_PID"
wait_job "$JOB_PID" 30
[ "$RC" = 0 ] || die "second SIGINT: the job exited with $RC"
[ ! -s "$WORK/dlq.jsonl" ] || die "unexpected dead letters: $(cat "$WORK/dlq.jsonl")"
echo "kafka_0001_walkthrough: passed"
