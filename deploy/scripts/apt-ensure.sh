#!/usr/bin/env bash
# Shared by the ensure-*.sh scripts: install Debian packages that some tests run for real.
#
#   apt_ensure NAME CHECK_FUNCTION PACKAGE...
#
# Does nothing when CHECK_FUNCTION succeeds. Otherwise installs PACKAGE... with apt-get as root,
# forbidding service starts during the install (a temporary policy-rc.d; the tests run their own
# servers on free loopback ports), then checks again.
#
# When the packages cannot be had (not root, no apt-get, the install failed): by default it says
# how to install them and returns 0, and the tests that need them skip with their own message.
# With PROBEWATCH_TESTS_REQUIRE_ALL=1 (what `make test`, and so CI, sets) it returns 1 instead, so
# a check that needs a real component can never pass by being skipped.
set -u

apt_ensure() {
  local name=$1 check=$2
  shift 2
  if "$check"; then
    return 0
  fi
  local strict=${PROBEWATCH_TESTS_REQUIRE_ALL:-0}
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "$name: cannot install $* here (needs root and apt-get); install Debian's package(s) yourself: apt-get install $*" >&2
    [ "$strict" = "1" ] && return 1
    return 0
  fi
  echo "$name: installing Debian's $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  local policy=/usr/sbin/policy-rc.d created_policy=0 status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created_policy=1
  fi
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 || status=$?
  if [ "$created_policy" = "1" ]; then rm -f "$policy"; fi
  if [ "$status" != "0" ] || ! "$check"; then
    echo "$name: apt-get install $* failed (exit $status); the tests that need it cannot run" >&2
    [ "$strict" = "1" ] && return 1
    return 0
  fi
  return 0
}
