#!/usr/bin/env bash
# Makes Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres under
# /usr/lib/postgresql/<major>/bin) available for the incident-store tests: the test session starts
# its own throw-away cluster in a temporary folder on a free loopback port (tests/store/pg.py).
#
# Idempotent: does nothing when a server's binaries are there. Installs only as root with apt-get
# (CI and the dev machines run as root); otherwise it says how and exits 0, and the PostgreSQL
# variants of the store tests skip with their own message. It never starts the packaged system
# service (a policy-rc.d forbids it during the install), nor creates a system cluster.
set -u

have_server() {
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      return 0
    fi
  done
  return 1
}
if have_server; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-postgresql: no PostgreSQL server binaries and cannot install them here (needs root and apt-get)." >&2
  echo "ensure-postgresql: install Debian's package yourself (apt-get install postgresql) to run the PostgreSQL store tests." >&2
  exit 0
fi

echo "ensure-postgresql: installing Debian's postgresql package" >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created_policy=1
fi
mkdir -p /etc/postgresql-common
conf=/etc/postgresql-common/createcluster.conf
created_conf=0
if [ ! -e "$conf" ]; then
  # no system cluster: the tests make their own
  echo "create_main_cluster = false" >"$conf" && created_conf=1
fi
status=0
apt-get update -q >/dev/null 2>&1 || true
apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 || status=$?
if [ "$created_policy" = "1" ]; then rm -f "$policy"; fi
if [ "$created_conf" = "1" ]; then rm -f "$conf"; fi

if [ "$status" != "0" ] || ! have_server; then
  echo "ensure-postgresql: apt-get install postgresql failed (exit $status); the PostgreSQL store tests will skip." >&2
  exit 0
fi
echo "ensure-postgresql: $(ls -d /usr/lib/postgresql/*/bin | tail -1)" >&2
