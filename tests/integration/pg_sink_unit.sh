#!/usr/bin/env bash
# pg_sink_unit.sh BINARY - runs a C test that needs a PostgreSQL server
# (pg_sink_unit.c, task_store_unit.c) against a private server started with
# lib/pg_server.sh, removed at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: pg_sink_unit.sh PATH/TO/TEST_BINARY}
. "$here/lib/pg_server.sh"
trap pg_server_cleanup EXIT
pg_server_start
export PG_SERVER_SCRIPT="$here/lib/pg_server.sh"
"$bin"
