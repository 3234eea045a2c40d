#!/usr/bin/env bash
# Runs every libFuzzer target for a bounded time over its corpus.
#   tests/fuzz/run-all.sh BUILD_DIR SECONDS_PER_TARGET [PARALLEL]
# PARALLEL targets run at once (default: $JOBS, else 2: `make test` runs on
# two cores), each for the whole of its time, so that a slower machine does
# not fuzz less. New interesting inputs go to a scratch copy, not into the
# repository; a crash fails the run and leaves the input in tests/fuzz/
# (crash-*): add it to tests/fuzz/regressions/TARGET/ with the fix, so CTest
# replays it forever.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
secs=${2:-20}
parallel=${3:-${JOBS:-2}}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fuzz_one() { # name: runs it, leaves its log and its status in $work
  local bin=$build/fuzz/$1 target=${1#fuzz_}
  mkdir -p "$work/$1.scratch" "$here/corpus/$target"
  local rc=0
  (cd "$here" && "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=0 "$work/$1.scratch" "$here/corpus/$target" >"$work/$1.log" 2>&1) || rc=$?
  echo "$rc" >"$work/$1.rc"
}

names=()
for bin in "$build"/fuzz/fuzz_*; do names+=("$(basename "$bin")"); done
running=0
for name in "${names[@]}"; do
  echo "fuzz: $name for ${secs}s"
  fuzz_one "$name" &
  running=$((running + 1))
  if [ "$running" -ge "$parallel" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true

failed=0 passed=0
for name in "${names[@]}"; do
  if [ "$(cat "$work/$name.rc" 2>/dev/null || echo 1)" = 0 ]; then
    passed=$((passed + 1)); echo "fuzz: $name: $(tail -n 1 "$work/$name.log")"
  else
    failed=$((failed + 1)); echo "fuzz: $name FAILED:"; tail -n 40 "$work/$name.log"
  fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
