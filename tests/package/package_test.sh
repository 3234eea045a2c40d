#!/usr/bin/env bash
# package_test.sh - the Debian package, built and installed as a user would:
#
#   1. dpkg-buildpackage -us -uc -b on a copy of the source tree (debian/);
#   2. dpkg -i the package; the binary, man page, unit and example
#      configuration are where they belong, /etc files are conffiles;
#   3. the README's demo (`make demo`) runs from the installed binary on the
#      installed sample and prints the walkthrough's three sessions;
#   4. systemd-analyze verify accepts the installed unit (it reads unit files
#      and needs no running systemd), and the example configuration loads;
#   5. dpkg --purge removes it all.
#
# It installs into the system's package database, so it takes a lock (tests
# of several checkouts on one machine take turns) and purges at the end, even
# on failure (also on SIGTERM/SIGINT).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

fail() { echo "FAILED: $*" >&2; failed=$((failed + 1)); }
ok() { passed=$((passed + 1)); }
check() { if eval "$1"; then ok; else fail "$2"; fi; }
passed=0 failed=0

# dpkg does not wait for its lock: another apt or dpkg on the machine
# (scripts/install-deps.sh) gets a minute to finish.
dpkg_retry() {
    local log=$(mktemp)
    for try in $(seq 30); do
        if $SUDO dpkg "$@" >"$log" 2>&1; then rm -f "$log"; return 0; fi
        grep -q "lock" "$log" && [ "$try" -lt 30 ] || { cat "$log" >&2; rm -f "$log"; return 1; }
        sleep 2
    done
}

exec 9>/tmp/sessionizer-package-test.lock
flock -w 1200 9

work=$(mktemp -d /tmp/sessionizer-package.XXXXXX)
installed=0
cleanup() {
    [ "$installed" -eq 1 ] && dpkg_retry --purge sessionizer
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' TERM INT HUP

# A run killed while the package was installed (a ctest timeout is a
# SIGKILL: no trap runs) leaves it behind; it is this project's package, so
# the next run removes it rather than failing for ever.
status=$(dpkg-query -W -f='${Status}' sessionizer 2>/dev/null || true)
if [ -n "$status" ] && [[ "$status" != *not-installed ]]; then
    echo "package_test: purging a sessionizer package left installed (an interrupted run?)"
    dpkg_retry --purge sessionizer
fi

# 1. Build from a copy: dpkg-buildpackage writes its results into the parent
# directory and its build tree into the source tree. One compiler process:
# ctest runs another test beside this one on a 2-core machine.
mkdir "$work/src"
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$root" && git ls-files -co --exclude-standard -z | tar --null -cf - -T -) | tar -xf - -C "$work/src"
else
    tar -C "$root" --exclude='./build*' --exclude=./demo -cf - . | tar -xf - -C "$work/src"
fi
start=$(date +%s)
if ! (cd "$work/src" && DEB_BUILD_OPTIONS="noddebs parallel=1" dpkg-buildpackage -us -uc -b \
        >"$work/build.log" 2>&1); then
    tail -n 40 "$work/build.log" >&2
    echo "FAILED: dpkg-buildpackage" >&2
    exit 1
fi
echo "package built in $(( $(date +%s) - start )) s"
deb=$(ls "$work"/sessionizer_*_*.deb)
check '[ -f "$deb" ]' "a .deb was built"

# 2. Install.
dpkg_retry -i "$deb" || exit 1
installed=1
check '[ "$(command -v sessionizer)" = /usr/bin/sessionizer ]' "sessionizer is /usr/bin/sessionizer"
version=$(/usr/bin/sessionizer --version)
check '[[ "$version" == "sessionizer "* ]]' "--version: $version"
# The man page ships in the package (a minimal image may exclude
# /usr/share/man from installation, so it is read from the .deb).
# (Outputs are captured before grep: grep -q would end a pipe early, and
# pipefail would count the writer's SIGPIPE as a failure.)
contents=$(dpkg -c "$deb")
check 'grep -q " ./usr/share/man/man1/sessionizer.1.gz$" <<<"$contents"' "the package ships sessionizer(1)"
dpkg -x "$deb" "$work/x"
manpage=$(man -l "$work/x/usr/share/man/man1/sessionizer.1.gz" 2>/dev/null)
check 'grep -q "SESSIONIZER_GAP" <<<"$manpage"' "the man page renders and lists the options' variables"
check '[ -f /lib/systemd/system/sessionizer.service ]' "the unit is installed"
conffiles=$(dpkg-query -W -f='${Conffiles}' sessionizer)
check 'grep -q "/etc/sessionizer/sessionizer.yaml" <<<"$conffiles"' "sessionizer.yaml is a conffile"
check 'grep -q "/etc/sessionizer/environment" <<<"$conffiles"' "environment is a conffile"

# 3. The README's demo, from the installed binary.
mkdir "$work/run"
cd "$work/run"
mkdir demo
/usr/bin/sessionizer run --source file:/usr/share/sessionizer/samples/visits.jsonl \
    --sink sqlite:demo/sessions.db --checkpoint demo/checkpoint \
    --dlq jsonl:demo/deadletter.jsonl --until-end 2>"$work/demo.err"
check 'grep -q "4 records: 4 visits in 3 closed sessions" "$work/demo.err"' \
      "the demo's summary: $(cat "$work/demo.err")"
got=$(sqlite3 -separator ' ' demo/sessions.db \
      "SELECT session_id, user_id, pages FROM sessions ORDER BY user_id, pages")
want='9083342062386381219 1 ["A.html","B.html"]
2197506010493845107 1 ["C.html"]
6602007354676743790 2 ["D.html"]'
check '[ "$got" = "$want" ]' "the demo's three sessions: got $got"

# 4. The unit and the example configuration.
out=$(systemd-analyze verify /lib/systemd/system/sessionizer.service 2>&1) && rc=0 || rc=$?
check '[ "$rc" -eq 0 ] && [ -z "$out" ]' "systemd-analyze verify: rc $rc: $out"
check 'grep -q "^ExecStart=/usr/bin/sessionizer run --config /etc/sessionizer/sessionizer.yaml$" /lib/systemd/system/sessionizer.service' \
      "ExecStart runs the installed binary on /etc/sessionizer/sessionizer.yaml"
check '/usr/bin/sessionizer config --config /etc/sessionizer/sessionizer.yaml >/dev/null' \
      "the example configuration loads"
# Without a source the service exits 2, which the unit does not restart.
/usr/bin/sessionizer run --config /etc/sessionizer/sessionizer.yaml 2>/dev/null && rc=0 || rc=$?
check '[ "$rc" -eq 2 ]' "the unconfigured example exits 2 (got $rc)"
check 'grep -q "^RestartPreventExitStatus=2$" /lib/systemd/system/sessionizer.service' \
      "status 2 is not restarted"
check 'grep -q "^Type=notify$" /lib/systemd/system/sessionizer.service && grep -q "^WatchdogSec=" /lib/systemd/system/sessionizer.service' \
      "Type=notify with a watchdog"

# 5. Purge.
cd /
dpkg_retry --purge sessionizer || true
installed=0
check '[ ! -e /usr/bin/sessionizer ] && [ ! -e /etc/sessionizer ] && [ ! -e /lib/systemd/system/sessionizer.service ]' \
      "dpkg --purge removes the binary, /etc/sessionizer and the unit"

echo "package: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
