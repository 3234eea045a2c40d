#!/usr/bin/env bash
# scaleout.sh - the figures of docs/scaling.md: CPU per record of --scale-out
# against a single instance, 2 instances against 1, and the cost of a lost
# machine. On the mock cluster (build/kafka-mock) and a private PostgreSQL
# (tests/integration/lib/pg_server.sh); run `make build` first.
#
#   bench/scaleout.sh [RECORDS_OF_PARTITION_0 [PARTITIONS]]   (default 50000 8)
#   ROUNDS=3 (rounds of every configuration, one after the other, so that
#   each round's ratios compare runs made under about the same load)
#   SESSIONIZER=path (another binary, e.g. a copy, for an A/B run)
#   BASELINE=path (a binary whose 1-instance scale-out also runs in every
#   round, beside ours: a before/after in the same minutes)
#   USERS=N (kafka_gen's users, default 5000; few users make long sessions:
#   USERS=50 gives ~130 visits a session, up to several hundred)
#   COMMIT=DURATION (--commit-interval of every run; default the option's).
#   A pre-produced log is read in a burst of a second or two, so that a
#   session spans many commits, as it does live, only with commits every
#   few milliseconds: the task store's figures in docs/scaling.md use
#   USERS=50 COMMIT=5ms
#   QUICK=1 (only the single instance and the 1-instance scale-outs: no 2
#   instances, null: sinks or lost machine)
#   USER_TYPE=string (every run with --user-type string, the log's users as
#   UUIDs: what string users cost against the int run of the same minutes)
#
# kafka_gen.py gives partition p RECORDS/(p+1) records (the default: ~136k
# records in 8 partitions, under the mock's ~5 MB per partition), spread
# over the topic's partitions so that two instances get as much each. CPU
# seconds are user + system of our process (all its threads), not the
# broker's or PostgreSQL's: on a shared machine they vary far less than wall
# times. The output is also kept in bench/out/scaleout-DATE.txt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SZ=${SESSIONIZER:-$ROOT/build/sessionizer}
MOCK=$ROOT/build/kafka-mock
PY=/usr/bin/python3
N=${1:-50000}
P=${2:-8}
ROUNDS=${ROUNDS:-3}
USERS=${USERS:-5000}
QUICK=${QUICK:-}
BASELINE=${BASELINE:-}
COMMIT_ARGS=()
[ -n "${COMMIT:-}" ] && COMMIT_ARGS=(--commit-interval "$COMMIT")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sz-scaleout-bench.XXXXXX")
chmod 755 "$WORK"
mkdir -p "$ROOT/bench/out"
exec > >(tee "$ROOT/bench/out/scaleout-$(date -u +%Y%m%dT%H%M%S).txt") 2>&1
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
MOCK_PID=$!
PIDS+=($MOCK_PID)
for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.05; done
B=$(head -n1 "$WORK/addr")
$PY "$ROOT/tests/integration/kafka_gen.py" --partitions "$P" --records "$N" --users "$USERS" "$WORK/gen" >/dev/null
USER_OPTS=()
if [ "${USER_TYPE:-int}" = string ]; then
    USER_OPTS=(--user-type string)
    # user u -> a UUID-shaped string of 36 bytes (the broken records stay broken)
    for f in "$WORK"/gen/p*.jsonl; do
        $PY -c 'import re, sys
for l in open(sys.argv[1]):
    sys.stdout.write(re.sub(r"\"user_id\": (\d+),", lambda m: "\"user_id\": \"%08x-9b3d-4c5e-8f7a-1b2c3d4e5f60\"," % int(m.group(1)), l))' "$f" >"$f.s"
        mv "$f.s" "$f"
    done
fi
# Generated partition i goes to a topic partition chosen so that the range
# assignor's two halves hold about as many records each (the best split):
# with kafka_gen's sizes as they are, 2 instances would split stage 1's work
# 3 to 1.
$PY - "$P" "$N" >"$WORK/map" <<'PYEOF'
import itertools, sys
P, N = int(sys.argv[1]), int(sys.argv[2])
size = [max(1, N // (i + 1)) for i in range(P)]
first = range(P // 2) if P > 16 else min(  # past 16 partitions, too many splits to try
    itertools.combinations(range(P), P // 2), key=lambda c: abs(sum(size) - 2 * sum(size[i] for i in c)))
rest = [i for i in range(P) if i not in first]
for p, i in enumerate(list(first) + rest): print(i, p)
PYEOF
while read -r i p; do kcat -P -b "$B" -t visits -p "$p" -l "$WORK/gen/p$i.jsonl"; done <"$WORK/map"
TOTAL=$(cat "$WORK"/gen/p*.jsonl | wc -l)
FAST=(-X session.timeout.ms=6000 -X heartbeat.interval.ms=1000)
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $TOTAL records in $P partitions, $USERS ${USER_TYPE:-int} users; $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')${COMMIT:+; --commit-interval $COMMIT}${BASELINE:+; baseline $BASELINE}"

# run NAME ARGS...: one process, its wall and CPU seconds into $WORK/NAME.time
# (BIN=path: another binary)
run() {
    local name=$1; shift
    /usr/bin/time -f "%e %U %S" -o "$WORK/$name.time" "${BIN:-$SZ}" run "$@" -q --dlq "jsonl:$WORK/$name.dlq" \
        "${FAST[@]}" "${COMMIT_ARGS[@]}" ${USER_OPTS[@]+"${USER_OPTS[@]}"} 2>"$WORK/$name.err" || \
        { tail -5 "$WORK/$name.err"; exit 1; }
}
# what a scale-out run's task store wrote, per visit applied by stage 2
store_bytes() {
    $PY - "$WORK/$1.err" <<'PYEOF'
import re, sys
err = open(sys.argv[1]).read()
m = re.search(r"task store: (\d+) commits(?: \((\d+) snapshots\))? wrote (\d+) bytes", err)
v = re.search(r"applied (\d+) visits", err)
if not m or not v: print("task store: ?"); sys.exit()
c, snaps, b, visits = int(m.group(1)), m.group(2), int(m.group(3)), int(v.group(1))
print(f"task store: {b} bytes in {c} commits{' (' + snaps + ' snapshots)' if snaps else ''} "
      f"for {visits} visits: {b / max(visits, 1):.1f} B/visit")
PYEOF
}
cpu() { tail -n1 "$WORK/$1.time" | awk '{printf "%.2f", $2 + $3}'; }
wall() { tail -n1 "$WORK/$1.time" | awk '{printf "%.2f", $1}'; }
load() { cut -d' ' -f1 /proc/loadavg; }
# the broker's (the mock cluster's process) CPU seconds so far
bcpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$MOCK_PID/stat"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a - b}'; }
# The processing window of scale-out runs: from the first stage 1 assignment
# (after start-up: the mock never answers CreateTopics, a 5 s wait) to the
# last instance's exit line; a join's rebalance is inside it.
window() {
    cat "$@" | $PY -c '
import re, sys, datetime
t = lambda l: datetime.datetime.fromisoformat(l[:23])
first = last = None
for l in sys.stdin:
    if "stage 1 assigned" in l and first is None: first = t(l)
    if "stage 1 read" in l: last = max(last, t(l)) if last else t(l)
print("%.2f" % (last - first).total_seconds())'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }
us() { awk -v c="$1" -v n="$TOTAL" 'BEGIN{printf "%.2f", c / n * 1e6}'; }
table_of() { pg_server_psql -AtX -c "SELECT count(*), sum(cardinality(pages)) FROM $1"; }
# the same rows (id, user, pages) as the single instance's table
same() {
    pg_server_psql -AtX -c "SELECT count(*) FROM ((SELECT session_id, user_id, pages FROM $1 EXCEPT
        SELECT session_id, user_id, pages FROM $2) UNION ALL (SELECT session_id, user_id, pages FROM $2
        EXCEPT SELECT session_id, user_id, pages FROM $1)) d" | awk '{print ($1 == 0 ? "equal" : $1 " rows differ")}'
}

SUMMARY=()
for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    L0=$(load)
    K0=$(bcpu)
    run single$round --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=single$round --group single$round --until-end
    K1=$(bcpu)
    run one$round --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=one$round --group one$round --until-end
    K2=$(bcpu)
    if [ -n "$BASELINE" ]; then
        BIN=$BASELINE run base$round --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=base$round --group base$round --until-end
        echo "scale-out, 1 instance, baseline: wall $(wall base$round) s, CPU $(cpu base$round) s, $(us "$(cpu base$round)") CPU us/record; $(store_bytes base$round)"
        echo "table base$round: $(table_of "base$round"), against single$round: $(same "base$round" single$round)"
    fi
    echo "scale-out, 1 instance: $(store_bytes one$round)"
    if [ -n "$QUICK" ]; then
        CS=$(cpu single$round); C1=$(cpu one$round)
        echo "single instance:           wall $(wall single$round) s, CPU $CS s, $(us "$CS") CPU us/record"
        echo "scale-out, 1 instance:     wall $(wall one$round) s, CPU $C1 s, $(us "$C1") CPU us/record"
        echo "table one$round: $(table_of "one$round"), against single$round: $(same "one$round" single$round)"
        SUMMARY+=("$round | $(load) | $(div "$C1" "$CS")x${BASELINE:+ | $(div "$(cpu base$round)" "$CS")x}")
        continue
    fi
    run two_a$round --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=two$round --group two$round --until-end &
    A=$!
    run two_b$round --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=two$round --group two$round --until-end
    wait $A
    K3=$(bcpu)
    # The same without a sink's cost: what the repartition itself costs.
    run single_null$round --source "kafka://$B/visits" --sink null: --group single_null$round --until-end
    run single_ck_null$round --source "kafka://$B/visits" --sink null: --checkpoint "$WORK/ck$round" --group single_ck_null$round --until-end
    run one_null$round --scale-out --state "$PG_URI" --source "kafka://$B/visits" --sink null: --group one_null$round --until-end
    L1=$(load)
    CS=$(cpu single$round); C1=$(cpu one$round)
    C2=$(awk -v a="$(cpu two_a$round)" -v b="$(cpu two_b$round)" 'BEGIN{printf "%.2f", a + b}')
    W2=$(awk -v a="$(wall two_a$round)" -v b="$(wall two_b$round)" 'BEGIN{printf "%.2f", (a > b ? a : b)}')
    echo "load average (1 min) $L0 at the start, $L1 at the end of the round"
    echo "broker (mock cluster) CPU: single $(sub "$K1" "$K0") s, scale-out 1 instance $(sub "$K2" "$K1") s, 2 instances $(sub "$K3" "$K2") s"
    echo "single instance:           wall $(wall single$round) s, CPU $CS s, $(us "$CS") CPU us/record"
    X1=$(window "$WORK/one$round.err"); X2=$(window "$WORK"/two_?$round.err)
    echo "scale-out, 1 instance:     wall $(wall one$round) s, CPU $C1 s, $(us "$C1") CPU us/record; processing $X1 s"
    echo "scale-out, 2 instances:    wall $W2 s, CPU $C2 s (both), $(us "$C2") CPU us/record; processing $X2 s"
    echo "single, null: sink:        wall $(wall single_null$round) s, CPU $(cpu single_null$round) s"
    echo "single, --checkpoint, null: wall $(wall single_ck_null$round) s, CPU $(cpu single_ck_null$round) s"
    echo "scale-out, 1, null: sink:  wall $(wall one_null$round) s, CPU $(cpu one_null$round) s"
    for t in one$round two$round; do echo "table $t: $(table_of "$t"), against single$round: $(same "$t" single$round)"; done
    echo "table single$round: $(table_of "single$round")"
    grep -h "stage . assigned\|stage 1 read" "$WORK"/two_*$round.err | sort | cut -c1-200
    SUMMARY+=("$round | $L0-$L1 | $(div "$C1" "$CS")x | $(div "$C2" "$CS")x | $(div "$(cpu one_null$round)" "$(cpu single_null$round)")x | $(div "$(cpu one_null$round)" "$(cpu single_ck_null$round)")x | $(div "$(wall one$round)" "$W2")x | $(div "$X1" "$X2")x")
done
if [ -n "$QUICK" ]; then
    echo "== same-run ratios (CPU seconds, against the single instance of the same round)"
    echo "round | load | 1 instance / single${BASELINE:+ | baseline 1 instance / single}"
    for l in "${SUMMARY[@]}"; do echo "$l"; done
    exit 0
fi
echo "== same-run ratios (CPU seconds summed over instances, against the single instance of the same round)"
echo "round | load | 1 instance / single | 2 instances / single | null: 1 / single | null: 1 / single --checkpoint | wall 1 instance / wall 2 instances | processing 1 / processing 2"
for l in "${SUMMARY[@]}"; do echo "$l"; done
# What the repartition adds to the brokers' traffic (the model of N machines).
read -r NREC NBYTES < <(kcat -C -b "$B" -t one1-repartition -e -q -f '%S\n' | awk '{n++; s += $1} END {print n, s}')
VISITS=$(grep -o "produced [0-9]* visits" "$WORK/one1.err" | grep -o "[0-9]*")
IN_BYTES=$(cat "$WORK"/gen/p*.jsonl | wc -c)
echo "repartition topic: $NREC records, $NBYTES value bytes for $VISITS visits: $(div "$NBYTES" "$VISITS") B/visit (the input: $(div "$IN_BYTES" "$TOTAL") B/record)"

# The cost of a lost machine: instance A (tiny fetches, so that it is still
# reading) is SIGKILLed LOST_AFTER (default 0.3 s) after its first
# assignment, then B takes over. On a quiet machine A read the whole log in
# about 1 s, so a kill at 1 s measured nothing.
SLOW=(-X message.max.bytes=1000 -X fetch.max.bytes=1000 -X max.partition.fetch.bytes=300)
"$SZ" run --scale-out --source "kafka://$B/visits" --sink "$PG_URI" --sink-opt table=lost \
    --group lost --until-end -q --dlq "jsonl:$WORK/lostA.dlq" "${FAST[@]}" "${SLOW[@]}" \
    ${USER_OPTS[@]+"${USER_OPTS[@]}"} 2>"$WORK/lostA.err" &
A=$!
PIDS+=($A)
for _ in $(seq 600); do grep -q "stage 1 assigned" "$WORK/lostA.err" && break; sleep 0.1; done
sleep "${LOST_AFTER:-0.3}"
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
while i + 4 <= len(data):  # the repartition records (src/task/repartition.h)
    (n,) = struct.unpack(">i", data[i:i + 4]); v = data[i + 4:i + 4 + n]; i += 4 + n
    if v[0:1] == b"B":  # a batch of visits: partition, zigzag offset delta, 4 more varints, page
        j, off = 2, 0   # (version 3, string users: the 4th is the user's length, its bytes follow)
        while j < len(v):
            p, j = varint(v, j); d, j = varint(v, j); off += unzigzag(d)
            for _ in range(4): x, j = varint(v, j)
            if v[1] == 3: j += x
            plen, j = varint(v, j); j += plen
            reach[p] = max(reach.get(p, 0), off + 1)
    else:  # a marker: partition, next offset
        p, j = varint(v, 2); off, j = varint(v, j)
        reach[p] = max(reach.get(p, 0), off)
err = open(sys.argv[2]).read()
if "stage 1 assigned" not in err:
    sys.exit("lost machine: its successor was never assigned stage 1 (the first instance had finished "
             "the group before its kill: try a smaller LOST_AFTER)")
committed = {int(p): int(o) for p, o in re.findall(r"p(\d+)@(-?\d+)", err.split("stage 1 assigned", 1)[1].splitlines()[0])}
dups = int(re.search(r"dropped (\d+) duplicates", err).group(1))
since = sum(max(0, reach.get(p, 0) - max(c, 0)) for p, c in committed.items())
total = int(sys.argv[3])
print(f"lost machine: it had delivered {sum(reach.values())} records' worth of the log, committed "
      f"{sum(max(c, 0) for c in committed.values())}; records since its last commit, read again by "
      f"its successor: {since} (their visits, dropped as duplicates at stage 2: {dups}); "
      f"a single instance that lost its checkpoint re-reads all {total}")
PYEOF
echo "table lost: $(table_of lost), against single1: $(same lost single1)"
