#!/usr/bin/env bash
# bench/pg_sink.sh [BUILD_DIR] - upserts/s into PostgreSQL: the sink's
# batching (unnest of bound arrays, batch_rows per statement) against one row
# per statement, a multi-row VALUES statement, and COPY into a staging table
# (the practical limit), on a private server started for the occasion.
#
# BUILD_DIR (default: build) must hold a built libsessionizer_core.a; this
# script compiles bench/pg_sink_bench.c against it. Figures and the machine
# they came from go to docs/postgresql.md.
#
# Knobs: N (sessions per run, default 200000), TXN (rows per transaction, i.e.
# per flush, default 10000), SINGLE_N (rows for the one-row-per-statement run,
# default 50000: it is slow).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
N=${N:-200000}
TXN=${TXN:-10000}
SINGLE_N=${SINGLE_N:-50000}

core=$build/libsessionizer_core.a
[ -f "$core" ] || { echo "no $core: build first (cmake --build $build)" >&2; exit 1; }
libs=("$core")
[ -f "$build/src/cql/libcql.a" ] && libs+=("$build/src/cql/libcql.a")
bin=$build/pg_sink_bench
# shellcheck disable=SC2046
cc -std=c17 -O2 -Wall -Wextra -Werror -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
    -I"$root/src" $(pkg-config --cflags libpq) "$root/bench/pg_sink_bench.c" "${libs[@]}" \
    $(pkg-config --libs sqlite3 libxxhash yajl rdkafka libpq openssl) -lm -lpthread -o "$bin"

. "$root/tests/integration/lib/pg_server.sh"
trap pg_server_cleanup EXIT
# Durable commits, as in production; a WAL budget large enough that no
# checkpoint lands in the middle of one run and not the others.
export PG_SERVER_FSYNC=on
export PG_SERVER_CONF="max_wal_size = 4GB
checkpoint_timeout = 30min"
pg_server_start

echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
echo "# server: $(pg_server_psql -Atc 'SHOW server_version'), fsync=on, synchronous_commit=on, shared_buffers=$(pg_server_psql -Atc 'SHOW shared_buffers'), unix socket"
echo "# $N sessions (~4 pages each), $TXN rows per transaction; 'update' = the same rows again (replay)"
printf '%-8s %6s %-7s %8s %8s %10s\n' mode batch phase rows seconds rows/s
run() {
    "$bin" "${uri:-$PG_URI}" "$@" | while read -r mode batch phase rows secs rate; do
        printf '%-8s %6s %-7s %8s %8s %10s\n' "$mode" "$batch" "$phase" "$rows" "$secs" "$rate"
    done
}
run single "$SINGLE_N" "$TXN"
run values "$N" "$TXN" 100
run values "$N" "$TXN" 1000
for b in 100 500 2000 10000; do run sink "$N" "$TXN" "$b"; done
run copy "$N" "$TXN"
run copyraw "$N" "$TXN"
echo "# the same over TCP (127.0.0.1, scram-sha-256): a network round trip per statement"
uri=$PG_URI_TCP run single "$SINGLE_N" "$TXN"
uri=$PG_URI_TCP run sink "$N" "$TXN" 2000
