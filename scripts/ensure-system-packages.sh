#!/usr/bin/env bash
# Debian packages the test suite and benchmarks call as real peers: zstd and GNU tar (archive
# checks), curl (Range/resume checks), chromium (the web console's browser tests, driven by
# Playwright: `playwright install` cannot download its own browsers here). Installs them when
# missing and we are root.
# Extra arguments name more, as TOOL or TOOL:PACKAGE (the benchmarks add aria2c:aria2).
set -euo pipefail
missing=()
for spec in zstd curl tar "$@"; do
  command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
done
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
else
  echo "please install: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
