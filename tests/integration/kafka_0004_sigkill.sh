#!/usr/bin/env bash
# kafka_0004_sigkill: a live job (no --until-end) is SIGKILLed twice while a
# producer keeps writing, and restarted each time from its checkpoint; once
# everything is produced it is stopped and finished with --until-end. The
# table must equal an uninterrupted --until-end run over the same log (and
# the oracle's).
#
# The producer writes the log in chunks of 5 s of event time across all
# partitions; the jobs run with --lateness 60s so that the live run's
# caught-up decisions (which legitimately differ from a replay's, see
# docs/kafka.md) cannot turn a record late: what is tested here is that a
# crash loses and duplicates nothing.
#
# The consumer group's committed offsets must never run ahead of the
# checkpoint: the live runs make every checkpoint write wait 300 ms
# (SESSIONIZER_TEST_SYNC_DELAY_MS), so that at each SIGKILL commits are
# sealed but not yet on disk, and the group's offsets read right after the
# kill must be at or below those the restart resumes from (its "resuming ...
# at offsets" line). After the clean stop they must be equal.
source "$(dirname "$0")/kafka_lib.sh"
COMMITTED=$(dirname "$KAFKA_MOCK")/kafka-committed

# check_offsets GROUP_OFFSETS ERRFILE [equal]: each partition's committed
# offset is at or below (with equal: is) the one that the run logging
# ERRFILE resumed from.
check_offsets() {
    local group=$1 errfile=$2 mode=${3:-ahead} resumed
    wait_until 40 grep -q "resuming topic visits from the checkpoint" "$errfile" ||
        die "$errfile: the restart did not log where it resumes"
    resumed=$(grep -m1 "resuming topic visits from the checkpoint" "$errfile" | sed 's/.*offsets //')
    log "group offsets $group; the checkpoint resumes at $resumed"
    "$PY" - "$group" "$resumed" "$mode" <<'EOF'
import sys
g = dict(x.split(":") for x in sys.argv[1].split())
c = dict(x.split(":") for x in sys.argv[2].split())
for p, off in g.items():
    if int(off) > int(c[p]):
        sys.exit(f"the group's offset {off} of {p} is ahead of the checkpoint's {c[p]}")
    if sys.argv[3] == "equal" and int(off) != int(c[p]):
        sys.exit(f"the group's offset {off} of {p} differs from the checkpoint's {c[p]} after a clean stop")
EOF
}

start_mock 3
"$PY" "$TEST_DIR/kafka_gen.py" --partitions 3 --records 3000 --users 40 --seed 11 "$WORK/log"
"$PY" - "$WORK/log" <<'EOF'
import datetime, json, os, sys
d = sys.argv[1]
for p in range(3):
    chunks = {}
    for line in open(os.path.join(d, f"p{p}.jsonl")):
        try:
            t = datetime.datetime.fromisoformat(json.loads(line)["event_time"])
            k = int(t.replace(tzinfo=datetime.timezone.utc).timestamp()) // 5
        except Exception:
            k = -1  # invalid records go with the previous chunk
        k = k if k >= 0 else max(chunks, default=0)
        chunks.setdefault(k, []).append(line)
    for i, k in enumerate(sorted(chunks)):
        with open(os.path.join(d, f"c{k:012d}.p{p}"), "w") as f:
            f.writelines(chunks[k])
EOF
chunks=$(ls "$WORK/log" | grep '^c' | sed 's/\.p.$//' | sort -u)
n_chunks=$(echo "$chunks" | wc -l)
log "$n_chunks chunks of 5 s event time"

LIVE=(--source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/live.db" --checkpoint "$WORK/ckpt"
      --lateness 60s --commit-every 100 --dlq "jsonl:$WORK/live.dlq" "${FAST[@]}")
export SESSIONIZER_TEST_SYNC_DELAY_MS=300
start_job live.1 "${LIVE[@]}"
i=0 run=1
for c in $chunks; do
    i=$((i + 1))
    for f in "$WORK/log/$c".p*; do kcat -P -b "$BROKERS" -t visits -p "${f##*.p}" -l "$f"; done
    if [ $i = $((n_chunks / 3)) ] || [ $i = $((2 * n_chunks / 3)) ]; then
        # the instance must be reading (not still waiting for the group)
        wait_until 40 grep -q timestamps "$WORK/live.$run.err" || die "live.$run never read"
        sleep 0.5
        kill -9 "$JOB_PID"
        wait "$JOB_PID" 2>/dev/null || true
        log "SIGKILL after chunk $i ($(count_rows "$WORK/live.db") rows)"
        group=$("$COMMITTED" "$BROKERS" visits sessionizer) || die "cannot read the group's offsets"
        run=$((run + 1))
        start_job "live.$run" "${LIVE[@]}"
        check_offsets "$group" "$WORK/live.$run.err" || die "the group's offsets ran ahead of the checkpoint"
    fi
    sleep 0.05
done
log "produced $(dump_topic visits | tee "$WORK/topic.dump" | wc -l) records"
# Stop the last instance wherever it is (it may still be waiting for the
# group to evict the killed one) and finish with --until-end from the
# checkpoint.
sleep 3
kill -INT "$JOB_PID"
wait_job "$JOB_PID" 30
[ "$RC" = 0 ] || die "live run $run exited with $RC on SIGINT"
group=$("$COMMITTED" "$BROKERS" visits sessionizer) || die "cannot read the group's offsets"
unset SESSIONIZER_TEST_SYNC_DELAY_MS
start_job finish "${LIVE[@]}" --until-end
check_offsets "$group" "$WORK/finish.err" equal || die "the group's offsets after the stop are not the checkpoint's"
wait_job "$JOB_PID" 90
[ "$RC" = 0 ] || die "the finishing run exited with $RC"

start_job ref --source "kafka://$BROKERS/visits" --sink "sqlite:$WORK/ref.db" --lateness 60s \
    --until-end --group g-ref --dlq "jsonl:$WORK/ref.dlq" "${FAST[@]}"
wait_job "$JOB_PID" 90
[ "$RC" = 0 ] || die "the uninterrupted run exited with $RC"
rows "$WORK/ref.db" >"$WORK/ref.rows"
rows "$WORK/live.db" >"$WORK/live.rows"
"$PY" "$TEST_DIR/kafka_oracle.py" --lateness 60 "$WORK/topic.dump" >"$WORK/expected.rows"
cmp -s "$WORK/expected.rows" "$WORK/ref.rows" || die "the uninterrupted run differs from the oracle"
diff "$WORK/ref.rows" "$WORK/live.rows" | head >&2
cmp -s "$WORK/ref.rows" "$WORK/live.rows" || die "the killed live run's table differs from the uninterrupted run's"
log "$(wc -l <"$WORK/live.rows") sessions after 2 SIGKILLs, identical to the uninterrupted run"
echo "kafka_0004_sigkill: passed"
