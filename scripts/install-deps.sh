#!/usr/bin/env bash
# Installs the Debian packages sessionizer needs to build and test, when any
# is missing. CI starts from a bare Debian 12 machine; a developer machine
# that has them all installs nothing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libsqlite3-dev sqlite3          # embedded sink and the checkpoint store
  libyajl-dev                     # JSON parser
  libyaml-dev                     # configuration files (--config)
  libxxhash-dev                   # session-id and checksum hash
  librdkafka-dev kcat             # Kafka source; kcat is the tests' producer
  libpq-dev postgresql            # PostgreSQL sink; the tests start a real server
  libssl-dev                      # TLS for the CQL client
  libmicrohttpd-dev               # the metrics and health endpoint (--metrics-listen)
  libsystemd-dev                  # sd_notify: READY, STOPPING, the watchdog
  liburing-dev                    # --memory-limit: the cold store's reads ahead
  prometheus                      # promtool and a real server scraping the endpoint in the tests
  python3 python3-cassandra       # independent check of the CQL bytes
  python3-xxhash                  # the tests' independent session-id oracle
  procps psmisc                   # pkill/killall for the crash tests
  debhelper dpkg-dev              # the Debian package (debian/, tests/package)
  systemd man-db groff-base       # systemd-analyze verify, man -l, groff -ww on the man page
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
