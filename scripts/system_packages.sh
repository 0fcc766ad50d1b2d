#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python's (a real browser, a real Pushgateway, a
# real Redis).
# Installs only what is missing; needs root (or sudo) the first time on a fresh machine.
#   chromium                 headless browser for the dashboard's end-to-end test (playwright drives it)
#   prometheus-pushgateway   the Pushgateway that short-lived Airflow tasks push metrics to
#   redis-server             the Celery broker of the CeleryExecutor test (started on 127.0.0.1 by the test)
# `scripts/system_packages.sh aarch64` installs what scripts/test_aarch64.sh needs instead (not
# part of the suite: building and emulating the core's tests for aarch64 takes several minutes):
#   gcc-aarch64-linux-gnu libc6-dev-arm64-cross   the cross linker and C library
#   qemu-user                                     runs the aarch64 test binaries (qemu-aarch64)
set -euo pipefail

if [[ ${1:-} == aarch64 ]]; then
    PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
else
    PACKAGES=(chromium prometheus-pushgateway redis-server)
fi

log() { printf '\033[1m[system]\033[0m %s\n' "$*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    echo "missing Debian packages: ${missing[*]}; install them as root:" >&2
    echo "    apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
