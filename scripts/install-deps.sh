#!/usr/bin/env bash
# Install the Debian packages needed to build (and, by default, test) extplugtest.
#
#   scripts/install-deps.sh          # build + test packages (compiler, headers, libcoap clients)
#   scripts/install-deps.sh build    # only what building the Cython extensions needs
#
# Idempotent: when everything is installed it touches nothing and needs no root; otherwise it runs
# `apt-get update` once and installs what is missing (as root, or through sudo).
# Works on Debian 12 (bookworm) and 13 (trixie); "a|b" means the first of a, b that apt offers.
set -euo pipefail

BUILD_PACKAGES=(build-essential "pkgconf|pkg-config" libssl-dev python3-dev python3-venv)
# zlib1g-dev, libzstd-dev: the static archives Debian 13's libcrypto.a needs in the wheel build;
# cmake, xz-utils, bzip2 and a JDK: scripts/build-cid-peers.sh (Mbed TLS, Bouncy Castle).
TEST_PACKAGES=(libcoap3-bin gnutls-bin nginx libnginx-mod-stream autoconf automake libtool
    zlib1g-dev libzstd-dev cmake xz-utils bzip2 "openjdk-17-jdk-headless|default-jdk-headless")

case "${1:-all}" in
    build) wanted=("${BUILD_PACKAGES[@]}") ;;
    all) wanted=("${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
    *) echo "usage: $0 [build|all]" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "install-deps.sh: this is not a Debian system (no dpkg/apt-get); install the" \
        "equivalents of: ${wanted[*]//|/ or }" >&2
    exit 1
fi

installed() { [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" == installed ]]; }
available() {
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n "$candidate" && "$candidate" != "(none)" ]]
}

missing=()
for group in "${wanted[@]}"; do
    IFS='|' read -r -a alternatives <<<"$group"
    found=
    for package in "${alternatives[@]}"; do
        if installed "$package"; then found=1; break; fi
    done
    [[ -n "$found" ]] || missing+=("$group")
done

if ((${#missing[@]} == 0)); then
    echo "install-deps.sh: all Debian packages present (${wanted[*]})"
    exit 0
fi

if ((EUID == 0)); then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo)
else
    echo "install-deps.sh: missing Debian packages (${missing[*]}) and not root, no sudo: run as root" >&2
    exit 1
fi

apt_get() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"
}

echo "install-deps.sh: installing missing packages: ${missing[*]}"
apt_get update
to_install=()
for group in "${missing[@]}"; do
    IFS='|' read -r -a alternatives <<<"$group"
    chosen=
    for package in "${alternatives[@]}"; do
        if available "$package"; then chosen=$package; break; fi
    done
    if [[ -z "$chosen" ]]; then
        echo "install-deps.sh: no installable package among: ${group//|/, }" >&2
        exit 1
    fi
    to_install+=("$chosen")
done
apt_get install --no-install-recommends "${to_install[@]}"
echo "install-deps.sh: installed ${to_install[*]}"
