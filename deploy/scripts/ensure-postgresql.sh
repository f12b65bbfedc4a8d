#!/usr/bin/env bash
# Makes Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres under
# /usr/lib/postgresql/<major>/bin) available for the incident-store tests: the test session starts
# its own throw-away cluster in a temporary folder on a free loopback port (tests/server/store/pg.py).
# Idempotent; it never starts the packaged service nor creates a system cluster; see apt-ensure.sh
# for what happens when it cannot install.
set -u
. "$(dirname "$0")/apt-ensure.sh"

have_server() {
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      return 0
    fi
  done
  return 1
}

conf=/etc/postgresql-common/createcluster.conf
created_conf=0
if ! have_server && [ "$(id -u)" = "0" ] && [ ! -e "$conf" ]; then
  # no system cluster: the tests make their own
  mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" >"$conf" && created_conf=1
fi
status=0
apt_ensure ensure-postgresql have_server postgresql || status=1
if [ "$created_conf" = "1" ]; then rm -f "$conf"; fi
[ "$status" = "0" ] || exit 1
if have_server; then
  echo "ensure-postgresql: $(ls -d /usr/lib/postgresql/*/bin | tail -1)" >&2
fi
