#!/usr/bin/env bash
# install_test.sh BUILD_DIR - `cmake --install` (what `make install` runs)
# into a DESTDIR: every file where it belongs, the man page renders without a
# groff warning, the unit names the installed binary and configuration, and
# the README's demo runs from the installed binary on the installed sample.
set -euo pipefail
build=${1:?build dir}
passed=0 failed=0
check() { if eval "$1"; then passed=$((passed + 1)); else echo "FAILED: $2" >&2; failed=$((failed + 1)); fi; }

dest=$(mktemp -d /tmp/sessionizer-install.XXXXXX)
trap 'rm -rf "$dest"' EXIT
DESTDIR="$dest" cmake --install "$build" >/dev/null
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
p="$dest$prefix"
etc="$dest$( [ "$prefix" = /usr ] && echo /etc || echo "$prefix/etc" )"
unitdir=$(sed -n 's/^SYSTEMD_UNIT_DIR:[A-Z]*=//p' "$build/CMakeCache.txt")
unit="$dest${unitdir:-$prefix/lib/systemd/system}/sessionizer.service"
for f in "$p/bin/sessionizer" "$p/share/man/man1/sessionizer.1" "$unit" \
         "$etc/sessionizer/sessionizer.yaml" "$etc/sessionizer/environment" \
         "$p/share/sessionizer/samples/visits.jsonl" "$p/share/doc/sessionizer/README.md" \
         "$p/share/doc/sessionizer/configuration.md"; do
    check '[ -f "$f" ]' "installed: ${f#$dest}"
done
check '[ -x "$p/bin/sessionizer" ]' "the binary is executable"

warnings=$(groff -man -Tutf8 -ww -z "$p/share/man/man1/sessionizer.1" 2>&1)
check '[ -z "$warnings" ]' "groff has no warning on sessionizer.1: $warnings"
check 'grep -q "^\.SH ENVIRONMENT" "$p/share/man/man1/sessionizer.1"' "the man page has its sections"
# Every option of --help is in the man page (one source).
for opt in $("$p/bin/sessionizer" --help | grep -oE '^  (-[a-zA-Z], )?--(\[no-\])?[a-z-]+' | grep -oE '[a-z][a-z-]+$'); do
    esc="$(sed 's/-/\\-/g' <<<"$opt")\\fR"   # create-schema -> create\-schema\fR (bold, ended)
    check 'grep -qF -- "$esc" "$p/share/man/man1/sessionizer.1"' \
          "--$opt is in the man page"
done

check "grep -q '^ExecStart=$prefix/bin/sessionizer run --config ${etc#$dest}/sessionizer/sessionizer.yaml\$' '$unit'" \
      "ExecStart names the installed binary and configuration"
check "grep -q '^EnvironmentFile=-${etc#$dest}/sessionizer/environment\$' '$unit'" "EnvironmentFile"

# The README's demo from the installed binary.
run=$(mktemp -d)
(cd "$run" && mkdir demo && "$p/bin/sessionizer" run \
    --source "file:$p/share/sessionizer/samples/visits.jsonl" --sink sqlite:demo/sessions.db \
    --checkpoint demo/checkpoint --dlq jsonl:demo/deadletter.jsonl --until-end -q)
got=$(sqlite3 -separator ' ' "$run/demo/sessions.db" \
      "SELECT session_id, user_id, pages FROM sessions ORDER BY user_id, pages")
rm -rf "$run"
want='9083342062386381219 1 ["A.html","B.html"]
2197506010493845107 1 ["C.html"]
6602007354676743790 2 ["D.html"]'
check '[ "$got" = "$want" ]' "the demo from the installed binary: $got"

echo "install: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
