#!/usr/bin/env bash
# Makes `prometheus`, `promtool` (Debian's `prometheus` package) and `amtool` (Debian's
# `prometheus-alertmanager`) available for tests/deploy. Idempotent; the packaged services are never
# started (the tests run their own Prometheus on a free loopback port); see apt-ensure.sh for what
# happens when it cannot install.
set -u
. "$(dirname "$0")/apt-ensure.sh"

have_all() {
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1
}

apt_ensure ensure-prometheus have_all prometheus prometheus-alertmanager || exit 1
if have_all; then
  echo "ensure-prometheus: $(prometheus --version 2>&1 | head -1)" >&2
fi
