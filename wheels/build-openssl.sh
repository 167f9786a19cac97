#!/usr/bin/env bash
# Build a static OpenSSL (libcrypto.a + headers) into PREFIX, for the wheels: cibuildwheel runs it
# once per build container as before-all (.github/workflows/wheels.yml), then setup.py links it
# with EXTPLUGTEST_STATIC_OPENSSL=1 OPENSSL_DIR=PREFIX.
#
#   wheels/build-openssl.sh [PREFIX]        # default /opt/openssl
#
# Works in the manylinux_2_28 (AlmaLinux 8, yum) and musllinux_1_2 (Alpine, apk) images. The
# tarball is checked against its SHA-256 before use. OPENSSLDIR is a private path that does not
# exist on users' machines, and the extensions also skip config loading
# (csrc/openssl_init.h), so a host's openssl.cnf never reaches this copy.
set -euo pipefail

prefix=${1:-/opt/openssl}
# OpenSSL 3.5: LTS, supported until April 2030. A new release needs a new wheel release.
version=3.5.6
sha256=deae7c80cba99c4b4f940ecadb3c3338b13cb77418409238e57d7f31f2a3b736
url=https://github.com/openssl/openssl/releases/download/openssl-$version/openssl-$version.tar.gz

if [[ -f $prefix/lib/libcrypto.a ]]; then
    echo "build-openssl.sh: $prefix/lib/libcrypto.a exists, nothing to do"
    exit 0
fi

# Configure needs perl with IPC::Cmd (not in the EL8 image's minimal perl).
if command -v apk >/dev/null; then
    apk add --no-cache perl linux-headers make curl
elif command -v dnf >/dev/null; then
    dnf install -y perl-core curl
elif command -v yum >/dev/null; then
    yum install -y perl-core curl
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
curl -fsSL --retry 3 --max-time 300 -o openssl.tar.gz "$url"
echo "$sha256  openssl.tar.gz" | sha256sum -c -
tar -xzf openssl.tar.gz
cd "openssl-$version"
# no-shared: libcrypto.a only; -fPIC: it goes into shared objects (the extension modules).
# no-module/no-dso/no-engine: nothing loaded at run time; no-atexit: several static copies live in
# one process (one per extension), none should run OPENSSL_cleanup from atexit under the others.
./config no-shared no-tests no-apps no-docs no-module no-dso no-engine no-comp no-atexit -fPIC \
    --prefix="$prefix" --libdir=lib --openssldir=/opt/extplugtest/openssl
make -j"$(nproc)" >/dev/null
make install_sw >/dev/null
ls -l "$prefix/lib/libcrypto.a"
"$prefix/bin/openssl" version 2>/dev/null || grep -m1 'OPENSSL_VERSION_TEXT' "$prefix/include/openssl/opensslv.h"
