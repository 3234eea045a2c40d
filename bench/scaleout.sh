#!/usr/bin/env bash
# scaleout.sh - the figures of docs/scaling.md: CPU per record of --scale-out
# against a single instance, 2 instances against 1, and the cost of a lost
# machine. On the mock cluster (build/kafka-mock) and a private PostgreSQL
# (tests/integration/lib/pg_server.sh); run `make build` first.
#
#   bench/scaleout.sh [RECORDS_OF_PARTITION_0 [PARTITIONS]]   (default 50000 8)
#
# kafka_gen.py gives partition p RECORDS/(p+1) records (the default: ~136k
# records in 8 partitions, under the mock's ~5 MB per partition).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SZ=$ROOT/build/sessionizer
MOCK=$ROOT/build/kafka-mock
PY=/usr/bin/python3
N=${1:-50000}
P=${2:-8}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sz-scaleout-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
. "$ROOT/tests/integration/lib/pg_server.sh"
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    pg_server_cleanup || true
    rm -rf "$WORK"
}
trap cleanup EXIT
PG_SERVER_TMP=$WORK pg_server_start >/dev/null
"$MOCK" --partitions "$P" --topic visits >"$WORK/addr" 2>"$WORK/mock.err" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.05; done
B=$(head -n1 "$WORK/addr")
$PY "$ROOT/tests/integration/kafka_gen.py" --partitions "$P" --records "$N" --users 5000 "$WORK/gen" >/dev/null
for p in $(seq 0 $((P - 1))); do kcat -P -b "$B" -t visits -p "$p" -l "$WORK/gen/p$p.jsonl"; done
TOTAL=$(cat "$WORK"/gen/p*.jsonl | wc -l)
FAST=(-X session.timeout.ms=6000 -X heartbeat.interval.ms=1000)
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $TOTAL records in $P partitions"

# run NAME ARGS...: one process, its wall and CPU seconds into $WORK/NAME.time
run() {
    local name=$1; shift
    /usr/bin/time -f "%e %U %S" -o "$WORK/$name.time" "$SZ" run "$@" -q --dlq "jsonl:$WORK/$name.dlq" \
        "${FAST[@]}" 2>"$WORK/$name.err" || { tail -5 "$WORK/$name.err"; exit 1; }
}
cpu() { tail -n1 "$WORK/$1.time" | awk '{printf "%.2f", $2 + $3}'; }
wall() { tail -n1 "$WORK/$1.time" | awk '{printf "%.2f", $1}'; }

run single --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=single --group single --until-end
echo "single instance:        wall $(wall single) s, CPU $(cpu single) s, $(awk -v c="$(cpu single)" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}') CPU us/record"
run one --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=one --group one --until-end
echo "scale-out, 1 instance:  wall $(wall one) s, CPU $(cpu one) s, $(awk -v c="$(cpu one)" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}') CPU us/record"
run two_a --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=two --group two --until-end &
A=$!
run two_b --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=two --group two --until-end
wait $A
C2=$(awk -v a="$(cpu two_a)" -v b="$(cpu two_b)" 'BEGIN{printf "%.2f", a + b}')
W2=$(awk -v a="$(wall two_a)" -v b="$(wall two_b)" 'BEGIN{printf "%.2f", (a > b ? a : b)}')
echo "scale-out, 2 instances: wall $W2 s, CPU $C2 s (both), $(awk -v c="$C2" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}') CPU us/record"
# The same without a sink's cost: what the repartition itself costs.
run single_null --source "kafka://$B/visits" --sink null: --group single_null --until-end
echo "single instance, null: sink:        wall $(wall single_null) s, CPU $(cpu single_null) s, $(awk -v c="$(cpu single_null)" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}') CPU us/record"
run single_ck_null --source "kafka://$B/visits" --sink null: --checkpoint "$WORK/ck" --group single_ck_null --until-end
echo "single instance, --checkpoint, null: wall $(wall single_ck_null) s, CPU $(cpu single_ck_null) s, $(awk -v c="$(cpu single_ck_null)" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}') CPU us/record"
run one_null --scale-out --state "$PG_URI" --source "kafka://$B/visits" --sink null: --group one_null --until-end
echo "scale-out, 1 instance, null: sink:  wall $(wall one_null) s, CPU $(cpu one_null) s, $(awk -v c="$(cpu one_null)" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}') CPU us/record"
for t in single one two; do
    echo "table $t: $(pg_server_psql -AtX -c "SELECT count(*), sum(cardinality(pages)) FROM $t")"
done
grep -h "stage 1 assigned\|stage 2 assigned\|stage 1 read" "$WORK"/two_*.err | cut -c1-200

# The cost of a lost machine: instance A (tiny fetches, so that it is still
# reading) is SIGKILLed 4 s after its first assignment, then B takes over.
SLOW=(-X message.max.bytes=1000 -X fetch.max.bytes=1000 -X max.partition.fetch.bytes=300)
"$SZ" run --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=lost \
    --group lost --until-end -q --dlq "jsonl:$WORK/lostA.dlq" "${FAST[@]}" "${SLOW[@]}" 2>"$WORK/lostA.err" &
A=$!
PIDS+=($A)
for _ in $(seq 600); do grep -q "stage 1 assigned" "$WORK/lostA.err" && break; sleep 0.1; done
sleep 4
kill -9 $A
wait $A 2>/dev/null || true
# what A had delivered to the repartition topic: the highest source offset per partition
kcat -C -b "$B" -t lost-repartition -e -q -f '%R%s' > "$WORK/lost.rep"
run lostB --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=lost --group lost --until-end
$PY - "$WORK/lost.rep" "$WORK/lostB.err" "$TOTAL" <<'PYEOF'
import re, struct, sys
data = open(sys.argv[1], "rb").read()
def varint(b, i):
    v = shift = 0
    while True:
        c = b[i]; i += 1
        v |= (c & 0x7F) << shift; shift += 7
        if c < 0x80: return v, i
def unzigzag(v): return (v >> 1) ^ -(v & 1)
reach = {}
i = 0
while i + 4 <= len(data):  # the repartition records (src/task/scaleout.c)
    (n,) = struct.unpack(">i", data[i:i + 4]); v = data[i + 4:i + 4 + n]; i += 4 + n
    if v[0:1] == b"B":  # a batch of visits: partition, zigzag offset delta, 4 more varints, page
        j, off = 2, 0
        while j < len(v):
            p, j = varint(v, j); d, j = varint(v, j); off += unzigzag(d)
            for _ in range(4): _, j = varint(v, j)
            plen, j = varint(v, j); j += plen
            reach[p] = max(reach.get(p, 0), off + 1)
    else:  # a marker: partition, next offset
        p, j = varint(v, 2); off, j = varint(v, j)
        reach[p] = max(reach.get(p, 0), off)
err = open(sys.argv[2]).read()
committed = {int(p): int(o) for p, o in re.findall(r"p(\d+)@(-?\d+)", err.split("stage 1 assigned", 1)[1].splitlines()[0])}
dups = int(re.search(r"dropped (\d+) duplicates", err).group(1))
since = sum(max(0, reach.get(p, 0) - max(c, 0)) for p, c in committed.items())
total = int(sys.argv[3])
print(f"lost machine: it had delivered {sum(reach.values())} records' worth of the log, committed "
      f"{sum(max(c, 0) for c in committed.values())}; records since its last commit, read again by "
      f"its successor: {since} (their visits, dropped as duplicates at stage 2: {dups}); "
      f"a single instance that lost its checkpoint re-reads all {total}")
PYEOF
echo "table lost: $(pg_server_psql -AtX -c "SELECT count(*), sum(cardinality(pages)) FROM lost")"
