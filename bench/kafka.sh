#!/usr/bin/env bash
# bench/kafka.sh - visits/s from a Kafka topic, end to end, in the durable
# mode users run (--checkpoint, default commit settings) and without it,
# beside a bare librdkafka consumer reading the same topic, in one run.
#
#   bench/kafka.sh [BUILD_DIR]      (default: build, or the directory of
#                                    $BENCH_SESSIONIZER under bench/run; needs
#                                    sessionizer, kafka-mock and kafka-bare
#                                    built there)
#
# Two topics of 16 partitions on build/kafka-mock (librdkafka's mock
# cluster, on loopback), VISITS_PER_PARTITION visits per partition (default
# 45000: the mock keeps only about 5 MB per partition, and the log must be
# whole), produced once with kcat:
#   visits    20k users: a user comes back every ~25 s of event time, so
#             sessions have many pages and stay open across many commits
#   visits1   200k users: a user comes back every ~250 s, sessions of ~1 page
# Then, each REPEAT times (default 3), for each topic in turn:
#   bare-poll   kafka-bare with rd_kafka_consumer_poll()   (the peer)
#   durable     sessionizer run --until-end --sink null: --checkpoint DIR
#   plain       the same without --checkpoint
#   bare-batch  kafka-bare with rd_kafka_consume_batch_queue()
#   file        the same visits from a file (partitions interleaved record by
#               record), sessionizer --sink null:: what the engine alone
#               costs on this workload, for reading the gap
# (a new consumer group and checkpoint directory each time). The bare
# consumers get queued.min.messages=1000000 like the Kafka source (see
# src/source/kafka_conf.c: with librdkafka's default the fetcher stalls on
# 16 partitions, which would hand sessionizer the better configuration).
# Rates are records per second from the first record delivered to the last:
# the bare consumer measures that itself; for sessionizer the script stamps
# its stderr lines (the first-record line and the summary) as they arrive,
# so start-up (metadata, the consumer group join: 3 s on the mock) is left
# out of both. CPU seconds (user + sys, every thread of the process, start-up
# included) are given for each. The machine is shared: the figures to quote
# are the medians and their ratios, with the load average printed beside.
# Everything shares the machine's cores with the mock cluster's threads.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
[ -z "${1:-}" ] && [ -n "${BENCH_SESSIONIZER:-}" ] && B=$(dirname "$BENCH_SESSIONIZER")
PER=${VISITS_PER_PARTITION:-45000}
REPEAT=${REPEAT:-3}
PARTS=16
for t in sessionizer kafka-mock kafka-bare; do
    [ -x "$B/$t" ] || { echo "bench/kafka.sh: $B/$t is missing (build first)" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "bench/kafka.sh: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
W=$(mktemp -d "${TMPDIR:-/tmp}/sz-kafka-bench.XXXXXX")
MOCK=
cleanup() { [ -n "$MOCK" ] && kill "$MOCK" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

"$B/kafka-mock" --topic visits:$PARTS --topic visits1:$PARTS >"$W/addr" 2>"$W/mock.err" </dev/null &
MOCK=$!
for _ in $(seq 100); do [ -s "$W/addr" ] && break; sleep 0.05; done
BROKERS=$(head -n1 "$W/addr")
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# Visits: 50 per second of event time per partition, event time jittered by
# up to 4 s (within the 10 s lateness: nothing is dead-lettered).
TOPICS="visits:20000 visits1:200000"
for tu in $TOPICS; do
    topic=${tu%%:*} users=${tu##*:}
    mkdir -p "$W/$topic"
    /usr/bin/python3 - "$W/$topic" $PARTS "$PER" "$users" <<'EOF'
import sys
w, parts, per, users = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = 1676851200 + 3600  # 2023-02-20T01:00:00Z
for p in range(parts):
    with open(f"{w}/p{p}.jsonl", "w") as f:
        for i in range(per):
            t = base + i // 50 + (i * 7 + p) % 9 // 2 - 2
            u = (i * 7919 + p * 104729) % users
            hh, mm, ss = t % 86400 // 3600, t % 3600 // 60, t % 60
            f.write(f'{{"user_id": {u}, "page": "/product/{(i * 31 + p) % 5000}.html", '
                    f'"event_time": "2023-02-20T{hh:02d}:{mm:02d}:{ss:02d}"}}\n')
files = [open(f"{w}/p{p}.jsonl") for p in range(parts)]
with open(f"{w}/all.jsonl", "w") as out:
    for i in range(per):
        for f in files:
            out.write(f.readline())
EOF
    t0=$(date +%s.%N)
    producers=()
    for p in $(seq 0 $((PARTS - 1))); do
        kcat -P -b "$BROKERS" -t "$topic" -p "$p" -l -X linger.ms=20 -X batch.num.messages=10000 \
            "$W/$topic/p$p.jsonl" &
        producers+=($!)
    done
    wait "${producers[@]}"
    low=$(kcat -C -b "$BROKERS" -t "$topic" -o beginning -e -q -c 1 -f '%o' -p 0 2>/dev/null || true)
    echo "topic $topic: $PARTS partitions, $((PARTS * PER)) visits of $users users produced in" \
         "$(echo "$(date +%s.%N) - $t0" | bc) s; first offset of partition 0: ${low:-?}"
    [ "${low:-0}" = 0 ] || echo "WARNING: the mock dropped the head of the log (5 MB limit); lower VISITS_PER_PARTITION" >&2
done

stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
cpu_of() { awk '{printf "%.2f", $1 + $2}' "$W/time"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A RATE CPU
add() { RATE[$1]="${RATE[$1]:-} $2"; CPU[$1]="${CPU[$1]:-} $3"; }

# sz NAME TOPIC ARGS...: sessionizer from the first record to the summary line
sz() {
    local name=$1 topic=$2; shift 2
    /usr/bin/time -f "%U %S %M" -o "$W/time" "$B/sessionizer" run \
        --source "kafka://$BROKERS/$topic" --sink null: --until-end "$@" 2>&1 >/dev/null |
        stamp >"$W/sz.err" || true
    local first last n
    first=$(grep -m1 "timestamps" "$W/sz.err" | cut -d' ' -f1)
    last=$(grep -m1 " records: " "$W/sz.err" | cut -d' ' -f1)
    n=$(grep -m1 " records: " "$W/sz.err" | sed -E 's/.*sessionizer: ([0-9]+) records: .*/\1/')
    [ -n "$first" ] && [ -n "$last" ] && [ "${n:-0}" -gt 0 ] ||
        { echo "bench/kafka.sh: $name failed:" >&2; tail -5 "$W/sz.err" >&2; exit 1; }
    local rate
    rate=$(echo "$n / ($last - $first)" | bc)
    printf '  %-26s %7d records in %6.3f s = %7d records/s, %5s CPU s, peak RSS %d KiB\n' \
        "$name" "$n" "$(echo "$last - $first" | bc)" "$rate" "$(cpu_of)" "$(cut -d' ' -f3 "$W/time")"
    add "$name" "$rate" "$(cpu_of)"
}

bare() {
    local name=$1 topic=$2 mode=$3 out rate
    out=$(/usr/bin/time -f "%U %S %M" -o "$W/time" "$B/kafka-bare" "$BROKERS" "$topic" "$mode" \
        -X queued.min.messages=1000000)
    rate=$(sed -E 's/.*= ([0-9]+) records.*/\1/' <<<"$out")
    printf '  %-26s %s, %s CPU s\n' "$name" "$out" "$(cpu_of)"
    add "$name" "$rate" "$(cpu_of)"
}

for r in $(seq "$REPEAT"); do
    for tu in $TOPICS; do
        topic=${tu%%:*}
        echo "run $r, topic $topic:"
        bare "$topic.bare-poll" "$topic" poll
        rm -rf "$W/cp"
        sz "$topic.durable" "$topic" --group "bench-cp-$r-$$" --checkpoint "$W/cp"
        sz "$topic.plain" "$topic" --group "bench-$r-$$" --dlq "jsonl:$W/dlq"
        bare "$topic.bare-batch" "$topic" batch
        /usr/bin/time -f "%U %S %M" -o "$W/time" "$B/sessionizer" run \
            --source "file:$W/$topic/all.jsonl" --sink null: --until-end \
            --dlq "jsonl:$W/dlq-file" 2>"$W/file.err" >/dev/null
        frate=$(grep -m1 " records: " "$W/file.err" | sed -E 's/.*, ([0-9]+) records\/s.*/\1/')
        printf '  %-26s %7d records/s (whole run), %s CPU s\n' "$topic.file" "$frate" "$(cpu_of)"
        add "$topic.file" "$frate" "$(cpu_of)"
    done
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "medians of $REPEAT run(s); load average $load_start at the start, $load_end at the end"
for tu in $TOPICS; do
    topic=${tu%%:*} users=${tu##*:}
    # shellcheck disable=SC2086
    {
        bp=$(median ${RATE[$topic.bare-poll]}) bpc=$(median ${CPU[$topic.bare-poll]})
        bb=$(median ${RATE[$topic.bare-batch]})
        d=$(median ${RATE[$topic.durable]}) dc=$(median ${CPU[$topic.durable]})
        p=$(median ${RATE[$topic.plain]}) pc=$(median ${CPU[$topic.plain]})
        f=$(median ${RATE[$topic.file]}) fc=$(median ${CPU[$topic.file]})
    }
    printf 'median %s (%d users): bare-poll %.0f/s (%.2f CPU s), bare-batch %.0f/s; sessionizer --checkpoint %.0f/s (%.2f CPU s) = %.2fx bare-poll; without --checkpoint %.0f/s (%.2f CPU s) = %.2fx; file %.0f/s (%.2f CPU s)\n' \
        "$topic" "$users" "$bp" "$bpc" "$bb" "$d" "$dc" "$(echo "$d / $bp" | bc -l)" "$p" "$pc" \
        "$(echo "$p / $bp" | bc -l)" "$f" "$fc"
    # For bench/run's table (docs/performance.md): figure names stay the same
    # from run to run (bench.py takes medians by name).
    printf 'BENCH {"section": "kafka", "figure": "%s (%d users) with --checkpoint, 16 partitions, null sink", "value": %.0f, "peer": "bare librdkafka consumer (consumer_poll)", "peer_value": %.0f, "unit": "records/s", "target": ">= 0.8x", "target_ratio": 0.8}\n' \
        "$topic" "$users" "$d" "$bp"
    printf 'BENCH {"section": "kafka", "figure": "%s (%d users) with --checkpoint: CPU seconds", "value": %.2f, "peer": "bare librdkafka consumer (consumer_poll)", "peer_value": %.2f, "unit": "CPU s"}\n' \
        "$topic" "$users" "$dc" "$bpc"
    printf 'BENCH {"section": "kafka", "figure": "%s (%d users) without --checkpoint", "value": %.0f, "peer": "bare librdkafka consumer (consumer_poll)", "peer_value": %.0f, "unit": "records/s", "target": ">= 0.8x", "target_ratio": 0.8}\n' \
        "$topic" "$users" "$p" "$bp"
    printf 'BENCH {"section": "kafka", "figure": "%s (%d users) without --checkpoint: CPU seconds", "value": %.2f, "peer": "bare librdkafka consumer (consumer_poll)", "peer_value": %.2f, "unit": "CPU s"}\n' \
        "$topic" "$users" "$pc" "$bpc"
    printf 'BENCH {"section": "kafka", "figure": "%s (%d users): the same visits from a file (engine alone)", "value": %.0f, "peer": "bare librdkafka consumer (consumer_poll)", "peer_value": %.0f, "unit": "records/s"}\n' \
        "$topic" "$users" "$f" "$bp"
done
