#!/usr/bin/env bash
# pg_e2e_test.sh SESSIONIZER - the sessionizer program writing into a real
# PostgreSQL server (private, started by lib/pg_server.sh, removed at the end):
#
#  1. the reference walkthrough (samples/visits.jsonl), same rows as SQLite,
#     then the seed's steps: checkpoint deleted, one more visit, replay:
#     same session ids and pages, new ingestion_time;
#  2. replay of a 60k-visit input after checkpoint loss: same rows, every
#     ingestion_time newer;
#  3. the server stopped in the middle of a run (input on a pipe, the server
#     down while the job has sessions to commit, back 3 s later): the job
#     waits, nothing is lost, nothing duplicated (= the SQLite run);
#  4. restarts at random moments during a 300k-visit run, many commits;
#  5. the server down and the job stopped by SIGTERM while it waits, then a
#     retry that gives up (retry_timeout): the checkpoint never passes
#     unacknowledged rows, and the resumed run ends with the SQLite table;
#  6. wrong password / missing grant: fast failure, clear message, no password;
#  7. the checkpoint bound to the database and table (no credentials stored):
#     another spelling resumes, another table is refused.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin=$(cd "$(dirname "${1:?usage: pg_e2e_test.sh PATH/TO/sessionizer}")" && pwd)/$(basename "$1")
. "$here/lib/pg_server.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/pg-e2e.XXXXXX")
cleanup() {
    if [ -n "${job_pid:-}" ]; then kill "$job_pid" 2>/dev/null; fi
    pg_server_cleanup
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
check() { # check "description" command...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

pg_server_start || { echo "cannot start PostgreSQL"; exit 1; }
q() { PGOPTIONS="-c client_min_messages=warning" pg_server_psql -At -c "$1"; }
dump() { # dump FILE: the sessions table as session_id \t user_id \t pages (JSON)
    pg_server_psql -At -F $'\t' -c \
        "SELECT session_id, user_id, array_to_json(pages) FROM sessions ORDER BY 1, 2" >"$1"
}
same_as_sqlite() { # same_as_sqlite SQLITE_DB: sessions in PostgreSQL = sessions in SQLite
    dump "$work/pg.tsv"
    "$here/pg_compare.py" "$1" "$work/pg.tsv"
}
sqlite_run() { # sqlite_run INPUT DB: the reference run of the same input
    rm -f "$2"
    "$bin" run -q --source "file:$1" --sink "sqlite:$2" --checkpoint "$2.ck" --until-end \
        --dlq "jsonl:$2.dlq" && rm -rf "$2.ck"
}

echo "# 1. reference walkthrough"
sample=$root/samples/visits.jsonl
q "DROP TABLE IF EXISTS sessions"
"$bin" run -q --source "file:$sample" --sink "$PG_URI" --checkpoint "$work/ck1" --until-end \
    2>"$work/err1"
check "walkthrough run exits 0 ($(tr '\n' ' ' <"$work/err1"))" [ $? = 0 ]
sqlite_run "$sample" "$work/ref1.db"
check "walkthrough: PostgreSQL rows = SQLite rows" same_as_sqlite "$work/ref1.db"
check "walkthrough: 3 sessions" [ "$(q 'SELECT count(*) FROM sessions')" = 3 ]
check "walkthrough: user 1's sessions hold A.html, B.html, C.html in order" \
    [ "$(q "SELECT string_agg(array_to_string(pages, ','), ',' ORDER BY pages[1]) FROM sessions WHERE user_id = 1")" = "A.html,B.html,C.html" ]
check "walkthrough: ingestion_time is the write time (within the last minute)" \
    [ "$(q "SELECT bool_and(ingestion_time BETWEEN now() - interval '1 minute' AND now()) FROM sessions")" = t ]

# The seed's steps: the first three visits, then the checkpoint is lost, a
# new visit arrives, and the job runs again over the whole log.
q "DROP TABLE sessions"
head -n 3 "$sample" >"$work/walk.jsonl"
rm -rf "$work/ckw"
"$bin" run -q --source "file:$work/walk.jsonl" --sink "$PG_URI" --checkpoint "$work/ckw" --until-end
q "SELECT session_id, user_id, pages, ingestion_time FROM sessions ORDER BY 1" >"$work/walk1"
rm -rf "$work/ckw"
cp "$sample" "$work/walk.jsonl"
"$bin" run -q --source "file:$work/walk.jsonl" --sink "$PG_URI" --checkpoint "$work/ckw" --until-end
q "SELECT session_id, user_id, pages, ingestion_time FROM sessions ORDER BY 1" >"$work/walk2"
check "replay after checkpoint loss: user 1's sessions keep their ids and pages" \
    [ "$(cut -d'|' -f1-3 "$work/walk1")" = "$(grep '|1|' "$work/walk2" | cut -d'|' -f1-3)" ]
check "replay: user 2's new session added, nothing duplicated ($(wc -l <"$work/walk2") rows)" \
    [ "$(wc -l <"$work/walk2")" = 3 ]
check "replay: user 1's rows have a new ingestion_time" \
    [ "$(cut -d'|' -f4 "$work/walk1" | sort -u)" != "$(grep '|1|' "$work/walk2" | cut -d'|' -f4 | sort -u)" ]
echo "# seed walkthrough, first run:"; sed 's/^/#   /' "$work/walk1"
echo "# after checkpoint loss and replay:"; sed 's/^/#   /' "$work/walk2"

# The other spellings of the target: the postgres:// alias, and everything
# from libpq's environment variables.
q "DROP TABLE sessions"
"$bin" run -q --source "file:$sample" --sink "${PG_URI/postgresql:/postgres:}" --until-end \
    --dlq "jsonl:$work/dlq-postgres"
check "postgres:// works as postgresql://" [ "$(q 'SELECT count(*) FROM sessions')" = 3 ]
q "DROP TABLE sessions"
PGHOST=$PG_SERVER_SOCKET_DIR PGPORT=$PG_SERVER_PORT PGUSER=postgres PGDATABASE=postgres \
    "$bin" run -q --source "file:$sample" --sink "postgresql:" --until-end --dlq "jsonl:$work/dlq-env"
check "postgresql: alone takes libpq's environment" [ "$(q 'SELECT count(*) FROM sessions')" = 3 ]

echo "# 2. replay of a larger input after checkpoint loss"
"$here/pg_gen_visits.py" 60000 11 >"$work/v60k.jsonl"
q "DROP TABLE sessions"
"$bin" run -q --source "file:$work/v60k.jsonl" --sink "$PG_URI" --checkpoint "$work/ck2" \
    --until-end --commit-every 5000 --dlq "jsonl:$work/dlq2"
check "first run exits 0" [ $? = 0 ]
q "SELECT session_id, user_id, array_to_json(pages) FROM sessions ORDER BY 1, 2" >"$work/r2a"
t1=$(q "SELECT max(ingestion_time) FROM sessions")
rm -rf "$work/ck2"
"$bin" run -q --source "file:$work/v60k.jsonl" --sink "$PG_URI" --checkpoint "$work/ck2" \
    --until-end --commit-every 7000 --dlq "jsonl:$work/dlq2b"
check "replay run exits 0" [ $? = 0 ]
q "SELECT session_id, user_id, array_to_json(pages) FROM sessions ORDER BY 1, 2" >"$work/r2b"
check "replay: same $(wc -l <"$work/r2a") rows (session_id, user_id, pages)" cmp -s "$work/r2a" "$work/r2b"
check "replay: every ingestion_time is newer than the first run's latest" \
    [ "$(q "SELECT count(*) FROM sessions WHERE ingestion_time <= '$t1'")" = 0 ]
sqlite_run "$work/v60k.jsonl" "$work/ref2.db"
check "replay: = SQLite run of the same input" same_as_sqlite "$work/ref2.db"

echo "# 3. the server stops in the middle of a run and comes back"
"$here/pg_gen_visits.py" 100000 12 >"$work/v100k.jsonl"
sqlite_run "$work/v100k.jsonl" "$work/ref3.db"
q "DROP TABLE sessions"
mkfifo "$work/pipe"
"$bin" run -q --source - --sink "$PG_URI" --sink-opt retry_backoff_max=1s \
    --checkpoint "$work/ck3" --until-end --commit-every 2000 --dlq "jsonl:$work/dlq3" \
    <"$work/pipe" 2>"$work/err3" &
job_pid=$!
exec 3>"$work/pipe"
head -n 50000 "$work/v100k.jsonl" >&3
for _ in $(seq 1 100); do # wait for the first commits to reach the table
    [ "$(q 'SELECT count(*) FROM sessions' 2>/dev/null || echo 0)" -gt 0 ] && break
    sleep 0.1
done
before=$(q 'SELECT count(*) FROM sessions')
pg_server_stop fast
# The rest of the input, from the background: the job commits every 2000
# records, so it soon waits for the server and stops reading the pipe.
tail -n +50001 "$work/v100k.jsonl" >&3 &
writer=$!
sleep 3
check "job still running while the server is down" kill -0 "$job_pid"
pg_server_start_again
wait "$writer"
exec 3>&-
wait "$job_pid"
rc=$?
job_pid=
check "job exits 0 after the outage (rows before it: $before)" [ "$rc" = 0 ]
check "job said it was retrying" grep -q "retrying commit" "$work/err3"
check "job said when it got through" grep -q "commit succeeded after" "$work/err3"
check "every line it said is a log line (time, level)" \
    [ -z "$(grep -Ev '^[0-9-]{10}T[0-9:]{8}\.[0-9]{3}Z (info|warn|error) [a-z]+: ' "$work/err3")" ]
check "outage: = SQLite run of the same input (nothing lost, nothing duplicated)" \
    same_as_sqlite "$work/ref3.db"
grep -m 3 "retrying\|succeeded" "$work/err3" | sed 's/^/#   /'

echo "# 4. restarts at random moments during a long run"
"$here/pg_gen_visits.py" 300000 13 >"$work/v300k.jsonl"
sqlite_run "$work/v300k.jsonl" "$work/ref4.db"
q "DROP TABLE sessions"
"$bin" run -q --source "file:$work/v300k.jsonl" --sink "$PG_URI" --sink-opt batch_rows=500 \
    --sink-opt retry_backoff_max=500ms --checkpoint "$work/ck4" --until-end --commit-every 3000 \
    --dlq "jsonl:$work/dlq4" 2>"$work/err4" &
job_pid=$!
restarts=0
for delay in 0.3 0.2 0.45 0.25 0.35; do
    sleep "$delay"
    kill -0 "$job_pid" 2>/dev/null || break
    if [ $((restarts % 2)) = 0 ]; then pg_server_restart; else pg_server_kill && pg_server_start_again; fi
    restarts=$((restarts + 1))
done
wait "$job_pid"
rc=$?
job_pid=
check "job exits 0 through $restarts restarts/crashes of the server" [ "$rc" = 0 ]
[ "$rc" = 0 ] || grep -v "same error" "$work/err4" | tail -n 5 | sed 's/^/#   /' 
check "restarts happened while the job was writing ($(grep -c 'retrying commit' "$work/err4") retries)" \
    grep -q "retrying commit" "$work/err4"
check "restarts: = SQLite run of the same input" same_as_sqlite "$work/ref4.db"

echo "# 5. stopped while waiting, gave up, resumed: the checkpoint never ran ahead"
q "DROP TABLE sessions"
rm -rf "$work/ck5"
# First half committed normally.
head -n 50000 "$work/v100k.jsonl" >"$work/half.jsonl"
cp "$work/half.jsonl" "$work/grow.jsonl"
"$bin" run -q --source "file:$work/grow.jsonl" --sink "$PG_URI" --checkpoint "$work/ck5" \
    --commit-every 2000 --dlq "jsonl:$work/dlq5"
check "first half committed" [ $? = 0 ]
rows_half=$(q 'SELECT count(*) FROM sessions')
cp "$work/v100k.jsonl" "$work/grow.jsonl" # the log grows
pg_server_stop fast
"$bin" run -q --source "file:$work/grow.jsonl" --sink "$PG_URI" --checkpoint "$work/ck5" \
    --commit-every 2000 --dlq "jsonl:$work/dlq5" 2>"$work/err5" &
job_pid=$!
sleep 2
kill -TERM "$job_pid"
t0=$(date +%s%N)
wait "$job_pid"
rc=$?
job_pid=
took_ms=$((($(date +%s%N) - t0) / 1000000))
check "SIGTERM while waiting for the server stops the job promptly (${took_ms} ms, exit $rc)" \
    eval '[ "$took_ms" -lt 3000 ] && [ "$rc" != 0 ]' 
check "and says why" grep -q "interrupted while waiting to retry" "$work/err5"
"$bin" run -q --source "file:$work/grow.jsonl" --sink "$PG_URI" --sink-opt retry_timeout=2s \
    --sink-opt retry_backoff_max=300ms --checkpoint "$work/ck5" --commit-every 2000 \
    --dlq "jsonl:$work/dlq5" 2>"$work/err5b"
rc=$?
check "with retry_timeout=2s the job gives up with exit 1" [ "$rc" = 1 ]
check "and says it gave up" grep -q "gave up after" "$work/err5b"
pg_server_start_again
check "nothing was written while the server was down ($rows_half rows)" \
    [ "$(q 'SELECT count(*) FROM sessions')" = "$rows_half" ]
"$bin" run -q --source "file:$work/grow.jsonl" --sink "$PG_URI" --checkpoint "$work/ck5" \
    --until-end --commit-every 2000 --dlq "jsonl:$work/dlq5"
check "resumed run exits 0" [ $? = 0 ]
check "resumed: = SQLite run of the whole input" same_as_sqlite "$work/ref3.db"

echo "# 6. authentication and permission errors"
bad_uri="postgresql://postgres:Wrong-Secret-42@127.0.0.1:$PG_SERVER_PORT/postgres"
t0=$(date +%s%N)
"$bin" run -q --source "file:$sample" --sink "$bad_uri" --checkpoint "$work/ck6" --until-end \
    2>"$work/err6"
rc=$?
took_ms=$((($(date +%s%N) - t0) / 1000000))
check "wrong password: exit 1 in ${took_ms} ms" eval '[ "$rc" = 1 ] && [ "$took_ms" -lt 3000 ]' 
check "wrong password: says so ($(head -c 300 "$work/err6"))" grep -q "password authentication failed" "$work/err6"
check "wrong password: the password is nowhere in the output" bash -c "! grep -q Wrong-Secret-42 '$work/err6'"
check "wrong password: the target is named, password masked" grep -q "postgres:\*\*\*@127.0.0.1" "$work/err6"
check "wrong password: no checkpoint was committed" bash -c "[ ! -e '$work/ck6' ] || [ -z \"\$(ls -A '$work/ck6')\" ]"
q "CREATE ROLE app LOGIN PASSWORD 'App-Secret-77'"
"$bin" run -q --source "file:$sample" \
    --sink "postgresql://app:App-Secret-77@127.0.0.1:$PG_SERVER_PORT/postgres" \
    --checkpoint "$work/ck7" --until-end 2>"$work/err7"
rc=$?
check "no privilege on the table: exit 1, says permission denied ($(head -c 200 "$work/err7"))" \
    eval '[ "$rc" = 1 ] && grep -q "permission denied" "$work/err7"' 
check "no privilege: the password is nowhere in the output" bash -c "! grep -q App-Secret-77 '$work/err7'"

echo "# 7. the checkpoint is bound to its PostgreSQL database and table"
head -n 3 "$sample" >"$work/bind.jsonl"
"$bin" run -q --source "file:$work/bind.jsonl" --sink "$PG_URI_TCP" --checkpoint "$work/ck8" 2>"$work/err8"
check "bound: first run exits 0 ($(head -c 200 "$work/err8"))" [ $? = 0 ]
# The checkpoint's frames and snapshots store the identity as plain bytes
# (docs/checkpoint.md): look for it, and for the password, in every file.
ck8_files=$(find "$work/ck8" -type f \( -name 'log-*' -o -name 'snapshot-*' \) | wc -l)
sink_id="postgresql://127.0.0.1:$PG_SERVER_PORT/postgres table=\"sessions\""
check "bound: the checkpoint ($ck8_files files) holds the identity: host, port, database and table" \
    eval '[ "$ck8_files" -gt 0 ] && grep -rqaF -- "$sink_id" "$work/ck8"'
check "bound: no credentials in the checkpoint" \
    eval '[ "$ck8_files" -gt 0 ] && ! grep -rqaF -e "$PG_SERVER_PASSWORD" "$work/ck8"'
"$bin" run -q --source "file:$work/bind.jsonl" --sink "postgres${PG_URI_TCP#postgresql}" \
    --checkpoint "$work/ck8" 2>"$work/err9"
check "bound: the postgres:// spelling of the same database resumes ($(head -c 200 "$work/err9"))" [ $? = 0 ]
"$bin" run -q --source "file:$work/bind.jsonl" --sink "$PG_URI_TCP" --sink-opt table=other \
    --checkpoint "$work/ck8" 2>"$work/err10"
rc=$?
check "bound: another table is refused ($(head -c 300 "$work/err10"))" \
    eval '[ "$rc" = 1 ] && grep -q -- "--sink naming postgresql://127.0.0.1" "$work/err10"'
check "bound: the refusal shows no password" bash -c "! grep -q -e '$PG_SERVER_PASSWORD' '$work/err10'"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
