#!/usr/bin/env bash
# kafka_0008_keys: --user-from key --time-from kafka. The producer keys by
# user and the record's own Kafka timestamp is the event time: the value
# holds only the page (at a pointer). String users from the keys; a record
# without a key is dead-lettered (missing_field), a keyed one that is not a
# visit with its key ("key", "key_base64" when not UTF-8, as the Kafka
# dead-letter output keeps it). The table equals what the
# Python oracle computes from the topic's keys, timestamps and positions
# (session ids of string users, docs/semantics.md), visit counts included.
source "$(dirname "$0")/kafka_lib.sh"

start_mock 2 --topic clicks
{
    for i in $(seq 1 30); do
        u=$(( i % 4 ))
        printf 'user-%s@example.com|{"context": {"url": "/p%s"}, "app": "web"}\n' "$u" "$i"
    done
    printf 'caf\xc3\xa9-\xe2\x9c\x93|{"context": {"url": "/unicode"}}\n'
    printf 'user-9@example.com|not a visit\n'
    printf '\xff\xfe|not a visit either\n'
} >"$WORK/in.txt"
kcat -P -b "$BROKERS" -t clicks -p 0 -K'|' -l "$WORK/in.txt"
echo '{"context": {"url": "/nokey"}}' | produce clicks 1
kcat -P -b "$BROKERS" -t clicks -p 1 -K'|' <<<'user-1@example.com|{"context": {"url": "/other-partition"}}'

start_job run --source "kafka://$BROKERS/clicks" --sink "sqlite:$WORK/out.db" --until-end \
    --dlq "jsonl:$WORK/dlq.jsonl" --user-from key --time-from kafka --user-type string \
    --field page=/context/url --columns visit_count "${FAST[@]}"
wait_job "$JOB_PID" 60
[ "$RC" = 0 ] || die "the job exited with $RC: $(tail -3 "$WORK/run.err")"
grep -q '"reason":"missing_field","detail":"the Kafka record has no key (--user-from key)"' "$WORK/dlq.jsonl" ||
    die "the keyless record is not dead-lettered as such: $(head -c 600 "$WORK/dlq.jsonl")"
grep '"reason":"missing_field"' "$WORK/dlq.jsonl" | grep -qv '"key' ||
    die "the keyless record's dead letter has a key: $(grep missing_field "$WORK/dlq.jsonl")"
grep -q '"partition":0,"offset":31,"append_ts_ms":[0-9]*,"key":"user-9@example.com","record":"not a visit"}' \
    "$WORK/dlq.jsonl" || die "a keyed record's dead letter lacks its key: $(cat "$WORK/dlq.jsonl")"
grep -q '"partition":0,"offset":32,"append_ts_ms":[0-9]*,"key_base64":"//4=","record":"not a visit either"}' \
    "$WORK/dlq.jsonl" || die "a non-UTF-8 key is not in key_base64: $(cat "$WORK/dlq.jsonl")"
[ "$(wc -l <"$WORK/dlq.jsonl")" = 3 ] || die "expected 3 dead letters: $(cat "$WORK/dlq.jsonl")"

kcat -C -b "$BROKERS" -t clicks -e -q -f '%k\t%p\t%o\t%T\t%s\n' >"$WORK/topic.tsv"
"$PY" - "$WORK/topic.tsv" "$WORK/out.db" "$TEST_DIR" <<'PYEOF' || die "the table differs from the oracle: $(head -c 400 "$WORK/dlq.jsonl")"
import json, sqlite3, sys
sys.path.insert(0, sys.argv[3] + "/lib")
import oracle
visits = []
for line in open(sys.argv[1], encoding="utf-8", errors="surrogateescape"):
    key, p, o, ts, value = line.rstrip("\n").split("\t", 4)
    if not key or not value.startswith("{"):
        continue  # no key, or not a visit: dead-lettered (checked above)
    visits.append((key, int(ts) * 1000, int(ts), int(p), int(o), json.loads(value)["context"]["url"]))
visits.sort(key=lambda v: (v[2], v[3], v[4]))
# one pass of the engine's lateness rule per partition is not needed here:
# CreateTime grows with production, within any partition, by far less than L
extra = {}
want = oracle.group_sessions(visits, 50_000_000, 10000, {}, extra=extra)
con = sqlite3.connect(sys.argv[2])
got = {(r[0], r[1]): (json.loads(r[2]), r[3]) for r in
       con.execute("SELECT session_id, user_id, pages, visit_count FROM sessions")}
exp = {k: (v, extra[k][2]) for k, v in want.items()}
if got != exp:
    print("got ", sorted(got.items())[:5], "\nwant", sorted(exp.items())[:5], file=sys.stderr)
    sys.exit(1)
assert any(u.startswith("caf\u00e9") for _, u in got), "the UTF-8 key is a user"
print(f"{len(got)} sessions = oracle", file=sys.stderr)
PYEOF
log "keys as string users, Kafka timestamps as event times: table = oracle; the keyless record dead-lettered, keyed ones with their key"

# a file has neither: refused at start-up
echo '{"page": "A"}' >"$WORK/one.jsonl"
start_job file --source "file:$WORK/one.jsonl" --sink "sqlite:$WORK/f.db" --dlq "jsonl:$WORK/f.dlq" --user-from key
wait_job "$JOB_PID" 20
[ "$RC" = 2 ] && grep -q "needs a Kafka source" "$WORK/file.err" || die "--user-from key on a file: rc $RC $(cat "$WORK/file.err")"
log "--user-from key on a file refused at start-up"
