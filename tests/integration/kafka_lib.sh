# kafka_lib.sh - shared helpers of the Kafka integration tests (kafka_0*.sh).
#
# Each test sources this file, starts its own mock cluster (build/kafka-mock)
# in a private temporary directory, produces with kcat, runs build/sessionizer
# and checks the SQLite table, usually against kafka_oracle.py, which
# computes the expected sessions from the topic's contents independently of
# the C code. Every process a test starts is recorded and killed by its pid
# at exit, pass or fail.
#
# Environment (set by CTest): SESSIONIZER, KAFKA_MOCK; TEST_DIR is this
# directory. Tests use -X session.timeout.ms=6000, the smallest a real broker
# accepts by default, because the mock cluster holds a group rebalance for
# about that long after a member leaves or dies.
set -euo pipefail

TEST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${SESSIONIZER:?set SESSIONIZER to build/sessionizer}"
: "${KAFKA_MOCK:?set KAFKA_MOCK to build/kafka-mock}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sz-kafka.XXXXXX")
PIDS=()
PY=/usr/bin/python3 # Debian's, with python3-xxhash (not a pyenv shim)
FAST=(-X session.timeout.ms=6000 -X heartbeat.interval.ms=1000)

cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ $rc -ne 0 ] && [ -z "${KEEP:-}" ]; then
        echo "--- last lines of the logs in $WORK:" >&2
        for f in "$WORK"/*.err; do
            [ -f "$f" ] && { echo "== $f" >&2; tail -n 15 "$f" >&2; }
        done
    fi
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "FAIL: $*" >&2; exit 1; }

# start_mock PARTITIONS [more kafka-mock args]: sets MOCK_PID and BROKERS.
start_mock() {
    local parts=$1; shift
    "$KAFKA_MOCK" --partitions "$parts" "$@" >"$WORK/mock.addr" 2>"$WORK/mock.err" </dev/null &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    for _ in $(seq 100); do
        [ -s "$WORK/mock.addr" ] && break
        sleep 0.05
    done
    BROKERS=$(head -n1 "$WORK/mock.addr")
    [ -n "$BROKERS" ] || die "kafka-mock did not start"
    log "mock cluster at $BROKERS ($parts partitions)"
}

# produce TOPIC [PARTITION]: one message per line of standard input.
produce() {
    local topic=$1 part=${2:-}
    if [ -n "$part" ]; then kcat -P -b "$BROKERS" -t "$topic" -p "$part"
    else kcat -P -b "$BROKERS" -t "$topic"; fi
}

# dump_topic TOPIC: "partition<TAB>offset<TAB>timestamp<TAB>payload" lines.
dump_topic() {
    kcat -C -b "$BROKERS" -t "$1" -e -q -f '%p\t%o\t%T\t%s\n'
}

# log_lines_only FILE: fails unless every line of FILE is a log line
# ("2026-12-01T03:04:05.123Z warn kafka: ..."), librdkafka's included.
log_lines_only() {
    local bad
    bad=$(grep -Ev '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z (debug|info|warn|error) [a-z]+: ' "$1" | head -3) || true
    [ -z "$bad" ] || die "$1 has lines that are not log lines: $bad"
    [ -s "$1" ] || die "$1 is empty"
}

# start_job NAME ARGS...: runs sessionizer in the background; sets JOB_PID.
# Output goes to $WORK/NAME.out and $WORK/NAME.err.
start_job() {
    local name=$1; shift
    "$SESSIONIZER" run "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" </dev/null &
    JOB_PID=$!
    PIDS+=("$JOB_PID")
}

# wait_job PID SECONDS: waits for the job to exit and sets RC to its exit
# code, or to "timeout" (after killing it). Not usable in $( ): a subshell
# cannot wait for its parent's children.
wait_job() {
    local pid=$1 limit=$2
    RC=0
    for _ in $(seq $((limit * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        RC=timeout
        return 0
    fi
    wait "$pid" || RC=$?
}

# wait_until SECONDS COMMAND...: polls until the command succeeds.
wait_until() {
    local limit=$1; shift
    for _ in $(seq $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    return 1
}

# rows DB: the table as "session_id|user_id|pages" lines, sorted.
rows() {
    sqlite3 "$1" "SELECT session_id, user_id, pages FROM sessions ORDER BY session_id, user_id" \
        2>/dev/null
}

count_rows() { sqlite3 "$1" "SELECT count(*) FROM sessions" 2>/dev/null || echo 0; }

# check_oracle DB TOPIC [oracle args]: the table equals the oracle's
# sessions for the topic's current contents.
check_oracle() {
    local db=$1 topic=$2; shift 2
    dump_topic "$topic" >"$WORK/topic.dump"
    "$PY" "$TEST_DIR/kafka_oracle.py" "$@" "$WORK/topic.dump" >"$WORK/expected.rows"
    rows "$db" >"$WORK/actual.rows"
    if ! diff -q "$WORK/expected.rows" "$WORK/actual.rows" >/dev/null; then
        diff "$WORK/expected.rows" "$WORK/actual.rows" | head -20 >&2
        die "table $db differs from the oracle ($(wc -l <"$WORK/expected.rows") expected rows, $(wc -l <"$WORK/actual.rows") actual)"
    fi
}

# has_rows DB N: the table has exactly N rows (for wait_until).
has_rows() { [ "$(count_rows "$1")" = "$2" ]; }

# stop_within PID SECONDS: sends SIGTERM, waits at most SECONDS for the job
# to exit; sets RC (as wait_job) and TOOK (milliseconds from the signal to
# the exit).
stop_within() {
    local pid=$1 limit=$2 t0
    t0=$(date +%s%N)
    kill -TERM "$pid"
    wait_job "$pid" "$limit"
    TOOK=$((($(date +%s%N) - t0) / 1000000))
}

# stop_expect PID BOUND EXIT WHAT: the stop tests' check. SIGTERM to the
# job, which must exit with EXIT within BOUND seconds (it is given 20 s
# before it counts as hung); WHAT names the state it was stopped in, for the
# log and the failure messages. Sets RC and TOOK (stop_within).
stop_expect() {
    local pid=$1 bound=$2 want=$3 what=$4
    stop_within "$pid" 20
    log "SIGTERM $what: exit $RC after $TOOK ms"
    [ "$RC" != timeout ] || die "still running 20 s after SIGTERM ($what)"
    [ "$TOOK" -lt $((bound * 1000)) ] || die "took $TOOK ms to stop ($what; bound: $bound s)"
    [ "$RC" = "$want" ] || die "exit $RC ($what), expected $want"
}
