#!/usr/bin/env bash
# Makes Debian's `chromium` (/usr/bin/chromium) available for the review app's browser tests
# (tests/server/review: Playwright for Python drives it through `executable_path`; Playwright's own browser
# download cannot reach its servers here, and is never attempted). Idempotent; see apt-ensure.sh
# for what happens when it cannot install.
set -u
. "$(dirname "$0")/apt-ensure.sh"

CHROMIUM=/usr/bin/chromium
have_chromium() { [ -x "$CHROMIUM" ]; }

apt_ensure ensure-chromium have_chromium chromium fonts-dejavu-core || exit 1
if have_chromium; then
  echo "ensure-chromium: $($CHROMIUM --version 2>/dev/null | head -1)" >&2
fi
