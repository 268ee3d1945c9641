#!/usr/bin/env bash
# The Debian packages `make test` drives for real: Chromium for the UI test (Playwright launches
# /usr/bin/chromium; no browser is ever downloaded) and PostgreSQL for the production-shaped
# reliability tests (a throwaway cluster on a loopback port, started by the tests themselves).
# Installed through apt-get when missing and run as root; otherwise: stop now with the command.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
((${#missing[@]})) || exit 0

command=(apt-get install -y --no-install-recommends "${missing[@]}")
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "make test: installing Debian's ${missing[*]} (needed by the tests)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    "${command[@]}" -qq >/dev/null
    exit 0
fi
echo "make test needs Debian's ${missing[*]}. Run this once, then make test again:" >&2
echo "    sudo apt-get update && sudo ${command[*]}" >&2
exit 1
