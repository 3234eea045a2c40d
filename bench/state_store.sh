#!/bin/sh
# state_store.sh - build and run the checkpoint state-store benchmark
# (bench/state_store.c; results and reasoning in docs/checkpoint.md).
#
#   bench/state_store.sh                  # 3 runs, medians (about 3 minutes)
#   bench/state_store.sh --runs 1 --stores sqlite,rocksdb
#
# Arguments are passed to the benchmark. TMPDIR chooses where the stores are
# written: it must be a real disk (not tmpfs), or fsync measures nothing.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${STATE_STORE_BIN:-$here/out/state_store}

missing=
for pkg in libsqlite3-dev liblmdb-dev librocksdb-dev libxxhash-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
        missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "installing:$missing" >&2
    sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get install -y --no-install-recommends $missing >&2
fi

mkdir -p "$(dirname "$out")"
gcc -std=c17 -O2 -Wall -Wextra -o "$out" "$here/state_store.c" \
    -lsqlite3 -llmdb -lrocksdb -lxxhash

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
     "$(awk '/MemTotal/ {printf "%.0f GB RAM", $2/1048576}' /proc/meminfo)," \
     "$(df -PT "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2 " on " $1}')," \
     "kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$out" "$@"
