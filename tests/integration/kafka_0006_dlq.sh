#!/usr/bin/env bash
# kafka_0006_dlq: --dlq kafka:TOPIC. Records that are not visits, and a late
# one, go to the dead-letter topic on the source's cluster: value = the
# original bytes, key = the original key, headers reason, detail, source,
# source_partition, source_offset, source_timestamp_ms, and the original
# record's own headers before those. A record cut at --max-record-bytes says
# so (truncated, original_bytes); one far ahead of its append time is
# "future". Counts reconcile: records = visits in sessions + messages in the
# dead-letter topic.
# Also: a dead-letter topic that does not exist is refused at start-up.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2 --topic visits --topic visits-dlq:1
# key|value, produced with kcat -K'|' to partition 0 (so that lateness is
# judged on one partition's watermark, whatever the interleaving)
cat >"$WORK/in.txt" <<'EOF'
u1|{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}
u1|{"user_id": 1, "page": "B.html", "event_time": "2023-02-20T03:03:26"}
bad1|{"user_id": "one", "page": "X.html", "event_time": "2023-02-20T03:03:27"}
bad2|not json at all
u2|{"user_id": 2, "page": "D.html", "event_time": "2023-02-20T03:05:00"}
late|{"user_id": 3, "page": "L.html", "event_time": "2023-02-20T03:04:00"}
u1|{"user_id": 1, "page": "E.html", "event_time": "2023-02-20T03:10:00"}
EOF
kcat -P -b "$BROKERS" -t visits -p 0 -K'|' -l "$WORK/in.txt"
echo 'hdr|not json, with headers' | kcat -P -b "$BROKERS" -t visits -p 0 -K'|' -H trace=abc -H reason=theirs
long=$(printf 'y%.0s' $(seq 400))
echo "big|$long" | kcat -P -b "$BROKERS" -t visits -p 0 -K'|'
# a producer with a broken clock: event time far beyond the record's append time
echo 'fut|{"user_id": 5, "page": "F.html", "event_time": "9999-12-31T23:59:59"}' | kcat -P -b "$BROKERS" -t visits -p 0 -K'|'
echo '{"user_id": 4, "page": "P1.html", "event_time": "2023-02-20T03:04:30"}' | produce visits 1

start_job run --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/out.db" --until-end \
    --dlq kafka:visits-dlq --max-record-bytes 300 "${FAST[@]}"
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "the job exited with $RC"
kcat -C -b "$BROKERS" -t visits-dlq -e -q -f '%k\t%s\t%h\n' >"$WORK/dlq.txt"
cat "$WORK/dlq.txt" >&2
[ "$(wc -l <"$WORK/dlq.txt")" = 6 ] || die "expected 6 dead letters"
expect() { # KEY VALUE-PREFIX HEADER-FRAGMENT...
    local line; line=$(grep "^$1	" "$WORK/dlq.txt") || die "no dead letter with key $1"
    local value; value=$(cut -f2 <<<"$line")
    [[ "$value" == "$2"* ]] || die "dead letter $1: value '$value'"
    shift 2
    for frag in "$@"; do [[ "$line" == *"$frag"* ]] || die "dead letter lacks '$frag': $line"; done
}
expect bad1 '{"user_id": "one", "page": "X.html"' "reason=" "source_partition=0" "source_offset=2" \
    "source_timestamp_ms=" "source=kafka topic visits"
expect bad2 'not json at all' "source_offset=3"
expect late '{"user_id": 3, "page": "L.html"' "reason=late" "source_offset=5" "detail=event time below the watermark"
expect hdr 'not json, with headers' "	trace=abc,reason=theirs,reason=invalid_json,detail=" "source_offset=7"
expect big "${long:0:300}" "truncated=true,original_bytes=400"
v=$(grep "^big	" "$WORK/dlq.txt" | cut -f2); [ ${#v} = 300 ] || die "the cut value has ${#v} bytes"
expect fut '{"user_id": 5, "page": "F.html"' "reason=future" "source_offset=9" \
    "detail=event time more than --max-future ahead of the record's append time"
grep -q "1 closed sessions\|closed sessions" "$WORK/run.err"
check_oracle "$WORK/out.db" visits
summary=$(grep " info sessionizer: 11 records" "$WORK/run.err") || die "summary: $(tail -1 "$WORK/run.err")"
[[ "$summary" == *"6 dead-lettered (4 invalid, 1 late, 0 over the session cap, 1 too far in the future)"* ]] || die "summary: $summary"
log "6 dead letters with key, bytes, their own headers and ours; a far-future one; counts reconcile"

# kafka:TOPIC takes the brokers of a kafka:// source: with a file source it
# is refused, naming the explicit form.
echo '{"user_id": 1, "page": "A.html", "event_time": "2023-02-20T03:03:20"}' >"$WORK/one.jsonl"
start_job nosource --source "file:$WORK/one.jsonl" --sink "sqlite:$WORK/out2.db" --until-end \
    --dlq kafka:visits-dlq
wait_job "$JOB_PID" 20
[ "$RC" = 1 ] || die "kafka:TOPIC without a Kafka source: exit $RC"
grep -q "kafka://HOST:PORT/visits-dlq" "$WORK/nosource.err" || die "no clear message: $(cat "$WORK/nosource.err")"
# ... and the explicit form works with any source.
start_job explicit --source "file:$WORK/in.txt" --sink "sqlite:$WORK/out3.db" --until-end \
    --dlq "kafka://$BROKERS/visits-dlq"
wait_job "$JOB_PID" 30
[ "$RC" = 0 ] || die "--dlq kafka://BROKERS/TOPIC with a file source: exit $RC"
n=$(kcat -C -b "$BROKERS" -t visits-dlq -e -q -f 'x\n' | wc -l)
[ "$n" = 13 ] || die "expected 6 + 7 dead letters in the topic, found $n"
log "kafka:TOPIC needs a Kafka source; kafka://BROKERS/TOPIC works from a file source"
echo "kafka_0006_dlq: passed"
