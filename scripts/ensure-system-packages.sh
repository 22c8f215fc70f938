#!/usr/bin/env bash
# Debian packages the test suite and benchmarks call as real peers: zstd and GNU tar (archive
# checks), curl (Range/resume checks), chromium (the web console's browser tests, driven by
# Playwright: `playwright install` cannot download its own browsers here), PostgreSQL 15 (the
# catalog tests start a throwaway cluster with its initdb/pg_ctl) and nginx (the load balancer
# in front of two replicas). Installs them when missing and we are root.
# Extra arguments name more, as TOOL or TOOL:PACKAGE (the benchmarks add aria2c:aria2).
set -euo pipefail
missing=()
for spec in zstd curl tar nginx "$@"; do
  tool=${spec%%:*}
  # nginx lives in /usr/sbin, which is not on every user's PATH.
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${spec#*:}")
done
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  # policy-rc.d (present in Debian container images) keeps postinst from starting services;
  # the tests start their own instances on free ports.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "please install: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
