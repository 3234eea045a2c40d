#!/usr/bin/env bash
# Runs every libFuzzer target for a bounded time over its corpus.
#   tests/fuzz/run-all.sh BUILD_DIR SECONDS_PER_TARGET
# New interesting inputs go to a scratch copy, not into the repository; a
# crash fails the run and leaves the input in tests/fuzz/ (crash-*): add it
# to tests/fuzz/regressions/TARGET/ with the fix, so CTest replays it forever.
set -euo pipefail
build=$(cd "${1:?build dir}" && pwd)
secs=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)
failed=0 passed=0
for bin in "$build"/fuzz/fuzz_*; do
  name=$(basename "$bin"); target=${name#fuzz_}
  scratch=$(mktemp -d)
  mkdir -p "$here/corpus/$target"
  echo "fuzz: $name for ${secs}s"
  if (cd "$here" && "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=0 "$scratch" "$here/corpus/$target" >"$scratch.log" 2>&1); then
    passed=$((passed + 1)); tail -n 1 "$scratch.log"
  else
    failed=$((failed + 1)); tail -n 40 "$scratch.log"
  fi
  rm -rf "$scratch" "$scratch.log"
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
