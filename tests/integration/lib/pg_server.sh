#!/usr/bin/env bash
# pg_server.sh - a private, throw-away PostgreSQL server for tests and benchmarks.
#
# Why: the PostgreSQL sink is held to its contract against a real server, not
# a mock, and the fault campaign needs to stop, restart and crash that server
# at will. Each test gets its own cluster (initdb) in a fresh temporary
# directory, on a private port and a private unix-socket directory, so tests
# never touch a system cluster and can run side by side. PostgreSQL refuses
# to run as root, so when the caller is root the server runs as an
# unprivileged account (PG_SERVER_OS_USER, default "nobody") via runuser.
#
# Two ways to use it:
#
#   Sourced (bash):
#     . tests/integration/lib/pg_server.sh
#     trap pg_server_cleanup EXIT        # stop and delete, even on failure
#     pg_server_start                    # sets the PG_SERVER_* variables and PG_URI*
#     pg_server_psql -c 'SELECT 1'       # psql as the superuser over the socket
#     pg_server_restart 2                # fast shutdown, 2 s down, start again
#     pg_server_stop fast|smart|immediate ; pg_server_start_again
#     pg_server_kill                     # SIGKILL the postmaster (crash), no restart
#     pg_server_freeze ; pg_server_thaw  # SIGSTOP / SIGCONT the whole server (a hang)
#
#   As a command (any language):
#     eval "$(tests/integration/lib/pg_server.sh start /tmp/some-empty-dir)"
#     tests/integration/lib/pg_server.sh psql /tmp/some-empty-dir -c 'SELECT 1'
#     tests/integration/lib/pg_server.sh restart|stop|start-again|kill|freeze|thaw /tmp/some-empty-dir
#     tests/integration/lib/pg_server.sh destroy /tmp/some-empty-dir
#   "start" prints `export VAR=...` lines (also saved in DIR/env).
#
# Variables set by pg_server_start:
#   PG_SERVER_DIR         the private directory (data/, sock/, server.log)
#   PG_SERVER_PORT        TCP port on 127.0.0.1 (also the socket's port number)
#   PG_SERVER_SOCKET_DIR  unix-socket directory
#   PG_SERVER_SUPERUSER   "postgres"
#   PG_SERVER_PASSWORD    the superuser's (random) password, needed over TCP
#   PG_URI                superuser over the unix socket, no password (trust)
#   PG_URI_TCP            superuser over TCP 127.0.0.1, with the password (scram)
#
# Knobs (environment, read by pg_server_start):
#   PG_SERVER_BIN      default /usr/lib/postgresql/15/bin (or the newest installed)
#   PG_SERVER_OS_USER  account the server runs as when the caller is root (nobody)
#   PG_SERVER_FSYNC    on|off, default off (tests); benchmarks set on
#   PG_SERVER_CONF     extra postgresql.conf lines, newline-separated
#   PG_SERVER_TMP      parent of the private directory (default ${TMPDIR:-/tmp});
#                      it must be traversable by PG_SERVER_OS_USER

_pg_server_bin() {
    if [ -n "${PG_SERVER_BIN:-}" ]; then
        printf '%s\n' "$PG_SERVER_BIN"
        return
    fi
    if [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; then
        printf '%s\n' /usr/lib/postgresql/15/bin
        return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    printf '%s\n' "$d"
}

# Runs a command as the server's OS user (as ourselves when not root), from /
# so that an unreadable working directory cannot get in the way.
# The server must not inherit the caller's extra file descriptors: a test that
# feeds the job through a pipe on fd 3 would never see EOF on it while the
# postmaster keeps a copy open.
_pg_as() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && _pg_closefds runuser -u "$PG_SERVER_OS_USER" -- "$@")
    else
        (cd / && _pg_closefds "$@")
    fi
}

_pg_closefds() {
    local fd
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null; fi
    done
    "$@"
}

# The children of process $1, from /proc (no dependency on procps).
_pg_children() {
    local parent=$1 f line fields
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        line=${line##*) } # after "pid (comm) ", comm may hold spaces
        read -r -a fields <<<"$line" # state ppid ...
        if [ "${fields[1]:-}" = "$parent" ]; then
            f=${f#/proc/}
            echo "${f%/stat}"
        fi
    done
}

_pg_port_free() {
    # Nothing listening on 127.0.0.1:$1 (a connect that fails) and no socket file.
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Single-quoted values ('...' with ' written as '\''), which a shell can eval
# and another language can read by stripping the quotes.
_pg_q() {
    local v=${1//\'/\'\\\'\'}
    printf "'%s'" "$v"
}

_pg_write_env() {
    local var
    for var in PG_SERVER_DIR PG_SERVER_PORT PG_SERVER_SOCKET_DIR PG_SERVER_SUPERUSER \
        PG_SERVER_PASSWORD PG_SERVER_OS_USER PG_SERVER_BIN PG_URI PG_URI_TCP; do
        printf 'export %s=%s\n' "$var" "$(_pg_q "${!var}")"
    done >"$PG_SERVER_DIR/env"
}

_pg_load_env() {
    # For the command form: reload the variables of a server started earlier.
    if [ ! -f "$1/env" ]; then
        echo "pg_server.sh: $1 holds no server started by pg_server.sh start" >&2
        return 1
    fi
    # shellcheck disable=SC1090
    . "$1/env"
}

pg_server_start() {
    PG_SERVER_BIN=$(_pg_server_bin)
    if [ -z "$PG_SERVER_BIN" ] || [ ! -x "$PG_SERVER_BIN/initdb" ]; then
        echo "pg_server: PostgreSQL server binaries not found (install the Debian package postgresql)" >&2
        return 1
    fi
    PG_SERVER_OS_USER=${PG_SERVER_OS_USER:-nobody}
    if [ "$(id -u)" != 0 ]; then
        PG_SERVER_OS_USER=$(id -un)
    fi
    local parent=${PG_SERVER_TMP:-${TMPDIR:-/tmp}}
    if [ -z "${PG_SERVER_DIR:-}" ]; then
        PG_SERVER_DIR=$(mktemp -d "$parent/pg-server.XXXXXX") || return 1
    fi
    mkdir -p "$PG_SERVER_DIR" || return 1
    chmod 0755 "$PG_SERVER_DIR"
    PG_SERVER_SOCKET_DIR=$PG_SERVER_DIR/sock
    PG_SERVER_SUPERUSER=postgres
    PG_SERVER_PASSWORD=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
    mkdir -p "$PG_SERVER_DIR/data" "$PG_SERVER_SOCKET_DIR"
    printf '%s\n' "$PG_SERVER_PASSWORD" >"$PG_SERVER_DIR/pwfile"
    if [ "$(id -u)" = 0 ]; then
        chown "$PG_SERVER_OS_USER" "$PG_SERVER_DIR/data" "$PG_SERVER_SOCKET_DIR" "$PG_SERVER_DIR/pwfile"
        touch "$PG_SERVER_DIR/server.log"
        chown "$PG_SERVER_OS_USER" "$PG_SERVER_DIR/server.log"
    fi
    chmod 0700 "$PG_SERVER_DIR/data"
    chmod 0600 "$PG_SERVER_DIR/pwfile"
    if ! _pg_as "$PG_SERVER_BIN/initdb" -D "$PG_SERVER_DIR/data" -U "$PG_SERVER_SUPERUSER" \
        --pwfile="$PG_SERVER_DIR/pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        -E UTF8 --no-locale --no-sync >"$PG_SERVER_DIR/initdb.log" 2>&1; then
        echo "pg_server: initdb failed:" >&2
        cat "$PG_SERVER_DIR/initdb.log" >&2
        return 1
    fi
    rm -f "$PG_SERVER_DIR/pwfile"

    local try port
    for try in 1 2 3 4 5 6 7 8; do
        # Below the kernel's ephemeral range (32768-60999 on Linux): the
        # server stops and starts again on this port in the tests, and while
        # it is down any outgoing connection on the machine could be given
        # an ephemeral port equal to it, and the restart would then fail.
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        _pg_port_free "$port" || continue
        [ -e "$PG_SERVER_SOCKET_DIR/.s.PGSQL.$port" ] && continue
        {
            echo "# added by pg_server.sh"
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$PG_SERVER_SOCKET_DIR'"
            echo "fsync = ${PG_SERVER_FSYNC:-off}"
            echo "max_connections = 50"
            echo "log_min_messages = warning"
            echo "log_connections = off"
            if [ -n "${PG_SERVER_CONF:-}" ]; then printf '%s\n' "$PG_SERVER_CONF"; fi
        } >"$PG_SERVER_DIR/port.conf"
        if [ "$(id -u)" = 0 ]; then chown "$PG_SERVER_OS_USER" "$PG_SERVER_DIR/port.conf"; fi
        # Included last, so a retry with another port simply rewrites it.
        grep -q "^include_if_exists = '$PG_SERVER_DIR/port.conf'" "$PG_SERVER_DIR/data/postgresql.conf" ||
            echo "include_if_exists = '$PG_SERVER_DIR/port.conf'" >>"$PG_SERVER_DIR/data/postgresql.conf"
        PG_SERVER_PORT=$port
        if _pg_start_once; then
            PG_URI="postgresql://$PG_SERVER_SUPERUSER@/postgres?host=$PG_SERVER_SOCKET_DIR&port=$PG_SERVER_PORT"
            PG_URI_TCP="postgresql://$PG_SERVER_SUPERUSER:$PG_SERVER_PASSWORD@127.0.0.1:$PG_SERVER_PORT/postgres"
            export PG_SERVER_DIR PG_SERVER_PORT PG_SERVER_SOCKET_DIR PG_SERVER_SUPERUSER \
                PG_SERVER_PASSWORD PG_SERVER_OS_USER PG_SERVER_BIN PG_URI PG_URI_TCP
            _pg_write_env
            return 0
        fi
        # Most likely the port was taken between the check and the bind: try another.
    done
    echo "pg_server: could not start PostgreSQL; last log lines:" >&2
    tail -n 20 "$PG_SERVER_DIR/server.log" >&2
    return 1
}

_pg_start_once() {
    if ! _pg_as "$PG_SERVER_BIN/pg_ctl" -D "$PG_SERVER_DIR/data" -l "$PG_SERVER_DIR/server.log" \
        -w -t 60 start >"$PG_SERVER_DIR/pg_ctl.out" 2>&1; then
        return 1
    fi
}

# Starts the (stopped) server of PG_SERVER_DIR again, same port and data.
# After a kill, the lock files name a dead postmaster; if its pid has been
# reused meanwhile by an unrelated process, PostgreSQL refuses to start: such
# stale lock files are removed and the start tried again (3 times at most).
pg_server_start_again() {
    local try pid
    for try in 1 2 3; do
        _pg_start_once && return 0
        pid=$(head -n 1 "$PG_SERVER_DIR/data/postmaster.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && ! _pg_postmaster_pid >/dev/null; then
            rm -f "$PG_SERVER_DIR/data/postmaster.pid" "$PG_SERVER_SOCKET_DIR"/.s.PGSQL.*.lock
        fi
        sleep 0.5
    done
    cat "$PG_SERVER_DIR/pg_ctl.out" >&2
    tail -n 5 "$PG_SERVER_DIR/server.log" >&2
    return 1
}

# pg_server_stop [smart|fast|immediate]: stops the server, keeps the data.
pg_server_stop() {
    # Only a running server: with a stale lock file, pg_ctl would signal
    # whatever process now has the dead postmaster's pid.
    _pg_postmaster_pid >/dev/null || return 1
    _pg_as "$PG_SERVER_BIN/pg_ctl" -D "$PG_SERVER_DIR/data" -m "${1:-fast}" -w -t 60 stop >/dev/null
}

# pg_server_restart [seconds_down]: fast shutdown (clients get admin_shutdown,
# 57P01), optionally stays down a while, starts again on the same port.
pg_server_restart() {
    pg_server_stop fast || return 1
    if [ -n "${1:-}" ]; then sleep "$1"; fi
    pg_server_start_again
}

# pg_server_kill: SIGKILL the postmaster, as a crash would (children notice and
# exit). The server stays down until pg_server_start_again, which runs recovery.
pg_server_kill() {
    local pid children p i
    pid=$(_pg_postmaster_pid) || return 1
    children=$(_pg_children "$pid")
    # As the server's account: a pid that is not ours cannot be hit.
    _pg_signal KILL "$pid"
    # The backends notice their postmaster's death and exit on their own; wait
    # for them, or the next start finds the shared memory still in use.
    for i in $(seq 1 100); do
        local alive=
        for p in $pid $children; do
            if kill -0 "$p" 2>/dev/null; then alive=1; fi
        done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    return 0
}

# _pg_signal SIG PID...: sends SIG as the server's account (bash's own kill,
# no procps needed), so that no process of another account can be hit.
_pg_signal() {
    local sig=$1
    shift
    _pg_as /bin/bash -c 'sig=$1; shift; kill -s "$sig" "$@" 2>/dev/null' _ "$sig" "$@"
}

# The pid of this server's running postmaster, checked: after a crash the
# lock file names a dead process whose pid may since have been given to any
# other process (pid_max can be as low as 32768), which must never be signalled.
_pg_postmaster_pid() {
    local pid cmd
    pid=$(head -n 1 "$PG_SERVER_DIR/data/postmaster.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$PG_SERVER_BIN/postgres")" ] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    case $cmd in *"$PG_SERVER_DIR/data"*) echo "$pid" ;; *) return 1 ;; esac
}

# pg_server_freeze / pg_server_thaw: SIGSTOP / SIGCONT the postmaster and all
# its processes: a server that hangs without closing anything (connections
# are accepted by the kernel and never answered), as a stuck host would.
_pg_server_pids() {
    local pid
    pid=$(_pg_postmaster_pid) || return 1
    echo "$pid" $(_pg_children "$pid")
}

pg_server_freeze() {
    local pids
    pids=$(_pg_server_pids) || return 1
    # shellcheck disable=SC2086
    _pg_signal STOP $pids
}

pg_server_thaw() {
    local pids
    pids=$(_pg_server_pids) || return 1
    # shellcheck disable=SC2086
    _pg_signal CONT $pids
}

# Is the server accepting connections?
pg_server_ready() {
    "$PG_SERVER_BIN/pg_isready" -q -h "$PG_SERVER_SOCKET_DIR" -p "$PG_SERVER_PORT"
}

# psql as the superuser over the private socket; -X -q -v ON_ERROR_STOP=1.
pg_server_psql() {
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_SERVER_SOCKET_DIR" -p "$PG_SERVER_PORT" \
        -U "$PG_SERVER_SUPERUSER" -d postgres "$@"
}

# Stops the server whatever its state and removes the private directory.
# Safe to call twice and from an EXIT trap.
pg_server_cleanup() {
    if [ -z "${PG_SERVER_DIR:-}" ] || [ ! -d "$PG_SERVER_DIR" ]; then
        return 0
    fi
    if [ -f "$PG_SERVER_DIR/data/postmaster.pid" ]; then
        pg_server_stop fast 2>/dev/null || pg_server_stop immediate 2>/dev/null || true
        local pid
        if pid=$(_pg_postmaster_pid); then _pg_signal KILL "$pid"; fi
    fi
    rm -rf "$PG_SERVER_DIR"
    PG_SERVER_DIR=
}

# Command form.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -u
    cmd=${1:-}
    dir=${2:-}
    if [ -z "$cmd" ] || [ -z "$dir" ]; then
        echo "usage: $0 start|psql|restart|stop|start-again|kill|freeze|thaw|destroy DIR [args]" >&2
        exit 2
    fi
    shift 2
    case $cmd in
    start)
        PG_SERVER_DIR=$dir
        if [ -e "$dir/env" ]; then
            echo "pg_server.sh: $dir already holds a server" >&2
            exit 1
        fi
        pg_server_start || { pg_server_cleanup; exit 1; }
        cat "$PG_SERVER_DIR/env"
        ;;
    psql) _pg_load_env "$dir" && pg_server_psql "$@" ;;
    restart) _pg_load_env "$dir" && pg_server_restart "$@" ;;
    stop) _pg_load_env "$dir" && pg_server_stop "$@" ;;
    start-again) _pg_load_env "$dir" && pg_server_start_again ;;
    kill) _pg_load_env "$dir" && pg_server_kill ;;
    freeze) _pg_load_env "$dir" && pg_server_freeze ;;
    thaw) _pg_load_env "$dir" && pg_server_thaw ;;
    destroy) _pg_load_env "$dir" && pg_server_cleanup ;;
    *)
        echo "pg_server.sh: unknown command '$cmd'" >&2
        exit 2
        ;;
    esac
fi
