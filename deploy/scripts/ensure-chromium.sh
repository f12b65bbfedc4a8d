#!/usr/bin/env bash
# Makes Debian's `chromium` (/usr/bin/chromium) available for the review app's browser tests
# (tests/review: Playwright for Python drives it through `executable_path`; Playwright's own browser
# download cannot reach its servers here, and is never attempted).
#
# Idempotent: does nothing when /usr/bin/chromium exists. Installs only as root with apt-get (CI
# and the dev machines run as root); otherwise it says how and exits 0, and the browser tests skip
# with their own message.
set -u

CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: $CHROMIUM not found and cannot install it here (needs root and apt-get)." >&2
  echo "ensure-chromium: install Debian's package yourself (apt-get install chromium) to run the browser tests." >&2
  exit 0
fi

echo "ensure-chromium: installing Debian's chromium package" >&2
export DEBIAN_FRONTEND=noninteractive
status=0
apt-get update -q >/dev/null 2>&1 || true
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 || status=$?
if [ "$status" != "0" ] || [ ! -x "$CHROMIUM" ]; then
  echo "ensure-chromium: apt-get install chromium failed (exit $status); the browser tests will skip." >&2
  exit 0
fi
echo "ensure-chromium: $($CHROMIUM --version 2>/dev/null | head -1)" >&2
