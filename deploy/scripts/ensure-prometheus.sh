#!/usr/bin/env bash
# Makes `prometheus`, `promtool` (Debian's `prometheus` package) and `amtool` (Debian's
# `prometheus-alertmanager`) available for tests/deploy.
#
# Idempotent: does nothing when all three are on PATH. Installs only as root with apt-get (CI and the
# dev machines run as root); otherwise it says how and exits 0, and the real-Prometheus tests skip
# with their own message. It never starts the packaged system service: the tests run their own
# Prometheus on a free loopback port.
set -u

have_all() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1
}
if have_all; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-prometheus: prometheus/promtool/amtool not found and cannot install them here (needs root and apt-get)." >&2
  echo "ensure-prometheus: install Debian's packages yourself (apt-get install prometheus prometheus-alertmanager) to run the real-Prometheus tests." >&2
  exit 0
fi

echo "ensure-prometheus: installing Debian's prometheus and prometheus-alertmanager packages" >&2
export DEBIAN_FRONTEND=noninteractive
# Forbid service starts during the install (policy-rc.d exit 101), unless a policy already exists.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created_policy=1
fi
status=0
apt-get update -q >/dev/null 2>&1 || true
apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager >/dev/null 2>&1 || status=$?
if [ "$created_policy" = "1" ]; then rm -f "$policy"; fi

if [ "$status" != "0" ] || ! have_all; then
  echo "ensure-prometheus: apt-get install prometheus prometheus-alertmanager failed (exit $status); the tests that need them will skip." >&2
  exit 0
fi
echo "ensure-prometheus: $(prometheus --version 2>&1 | head -1)" >&2
