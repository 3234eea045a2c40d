#!/usr/bin/env bash
# pg_stop_test.sh SESSIONIZER - SIGTERM while the PostgreSQL sink waits for a
# hung server (SIGSTOPped: connections accepted, statements never answered)
# to answer a COMMIT in flight, whose io_timeout is a minute: the job ends
# within seconds (the statement gets 2 s of grace), with exit 1 since the
# final commit cannot be made; the checkpoint stays where it was, and a
# run after the server is back ends with the table of a SQLite run.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "$(dirname "${1:?usage: pg_stop_test.sh PATH/TO/sessionizer}")" && pwd)/$(basename "$1")
. "$here/lib/pg_server.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/pg-stop.XXXXXX")
job_pid= writer=
cleanup() {
    [ -n "$job_pid" ] && kill -9 "$job_pid" 2>/dev/null
    [ -n "$writer" ] && kill -9 "$writer" 2>/dev/null
    pg_server_thaw 2>/dev/null
    pg_server_cleanup
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -n 5 "$work/err" 2>/dev/null | sed 's/^/#   /'; exit 1; }

pg_server_start || fail "cannot start PostgreSQL"
q() { PGOPTIONS="-c client_min_messages=warning" pg_server_psql -At -c "$1"; }
"$here/pg_gen_visits.py" 20000 15 >"$work/visits.jsonl"
"$bin" run -q --source "file:$work/visits.jsonl" --sink "sqlite:$work/ref.db" --until-end \
    --dlq "jsonl:$work/ref.dlq" || fail "reference run"

mkfifo "$work/in"
ARGS=(--source "file:$work/in" --sink "$PG_URI" --checkpoint "$work/ck" --commit-every 1000
      --commit-interval 200ms --dlq "jsonl:$work/dlq")
"$bin" run -q "${ARGS[@]}" 2>"$work/err" &
job_pid=$!
exec 3>"$work/in"
head -n 10000 "$work/visits.jsonl" >&3
for _ in $(seq 1 100); do
    [ "$(q 'SELECT count(*) FROM sessions' 2>/dev/null || echo 0)" -gt 0 ] && break
    sleep 0.1
done
before=$(q 'SELECT count(*) FROM sessions')
[ "$before" -gt 0 ] || fail "no row reached the table"
pg_server_freeze
tail -n +10001 "$work/visits.jsonl" >&3 &
writer=$!
exec 3>&-
sleep 2 # the next commit is now waiting for the frozen server
kill -0 "$job_pid" 2>/dev/null || fail "the job did not wait for the server"
t0=$(date +%s%N)
kill -TERM "$job_pid"
for _ in $(seq 1 200); do kill -0 "$job_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$job_pid" 2>/dev/null && fail "still running 20 s after SIGTERM (server hung)"
wait "$job_pid"
rc=$?
job_pid=
took=$((($(date +%s%N) - t0) / 1000000))
echo "SIGTERM while a COMMIT waits for a hung server: exit $rc after $took ms"
[ "$took" -lt 5000 ] || fail "took $took ms to stop (bound: 5 s)"
[ "$rc" = 1 ] || fail "exit $rc, expected 1 (the final commit cannot be made)"
grep -q "interrupted" "$work/err" || fail "no clear message"
kill -9 "$writer" 2>/dev/null
writer=
pg_server_thaw

# The same bytes as a regular file at the same path (the checkpoint is bound
# to the path): the run resumes from the last commit made before the hang.
rm "$work/in"
cp "$work/visits.jsonl" "$work/in"
"$bin" run -q "${ARGS[@]}" --until-end 2>>"$work/err" || fail "the run after the hang failed"
pg_server_psql -At -F $'\t' -c \
    "SELECT session_id, user_id, array_to_json(pages) FROM sessions ORDER BY 1, 2" >"$work/pg.tsv"
"$here/pg_compare.py" "$work/ref.db" "$work/pg.tsv" || fail "table differs from the SQLite run"
echo "pg_stop_test: passed"
