#!/usr/bin/env bash
# Build the third-party DTLS 1.2 Connection ID (RFC 9146) peers that tests/interop/test_dtls_cid.py
# runs against our DTLS server:
#
#   * Mbed TLS 3.6.x ssl_client2 / ssl_server2, built with cmake from Debian trixie's SOURCE package;
#   * Bouncy Castle bctls/bcprov/bcutil (1.80 in trixie) jars, and our small Java client
#     tests/interop/java/BcCidClient.java compiled against them.
#
#   scripts/build-cid-peers.sh            # PEERS_DIR defaults to .peers/ in the repository
#   PEERS_DIR=/some/cache scripts/build-cid-peers.sh
#
# Nothing is installed system-wide and the system's apt sources are not touched: trixie is reached
# through an apt state of its own under $PEERS_DIR/apt (its own sources.list, lists and cache),
# used only for `apt-get source --download-only` and `apt-get download`. Idempotent: what is already
# in $PEERS_DIR is kept (the Java client is recompiled when its source changes), so a second run
# takes well under a second. Every network or build step is bounded by `timeout`.
# Exits non-zero with one clear last line when something cannot be had; details go to
# $PEERS_DIR/build.log (its tail is printed on failure).
#
# Layout of $PEERS_DIR:
#   bin/ssl_client2 bin/ssl_server2        Mbed TLS test programs (CID on: MBEDTLS_SSL_DTLS_CONNECTION_ID)
#   java/bctls.jar java/bcprov.jar java/bcutil.jar   the Bouncy Castle jars
#   java/classes/BcCidClient*.class        our client (run: java -cp <jars>:java/classes BcCidClient ...)
#   VERSIONS                               what was built, one line per peer
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/.peers}
SUITE=${CID_PEERS_SUITE:-trixie}
JAVA_SOURCE=$ROOT/tests/interop/java/BcCidClient.java
BC_PACKAGES=(libbctls-java libbcprov-java libbcutil-java)

die() {
    if [[ -s "${LOG:-}" ]]; then
        echo "--- last lines of $LOG ---" >&2
        tail -n 15 "$LOG" >&2
    fi
    echo "build-cid-peers.sh: FAILED: $*" >&2
    [[ -n "${LOG:-}" && -d "${LOG%/*}" ]] && echo "build-cid-peers.sh: FAILED: $*" >>"$LOG"
    exit 1
}

mkdir -p "$PEERS_DIR" || die "cannot create PEERS_DIR=$PEERS_DIR"
PEERS_DIR=$(cd "$PEERS_DIR" && pwd)
LOG=$PEERS_DIR/build.log
: >"$LOG"
started=$SECONDS

# One build at a time per cache directory (e.g. two terminals, or make -j).
exec 9>"$PEERS_DIR/.lock"
command -v flock >/dev/null && { flock -w 900 9 || die "another build holds $PEERS_DIR/.lock"; }

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "'$tool' is missing (needed: $*; Debian: cmake, make, gcc, openjdk-17-jdk-headless, bzip2, xz-utils)"
    done
}

# Run a step with its output in the log, bounded in time.
step() {
    local seconds=$1
    shift
    echo "+ $*" >>"$LOG"
    timeout --kill-after=10 "$seconds" "$@" >>"$LOG" 2>&1
}

# -- the separate apt state (peers.md §4.1) ------------------------------------------------------
APT_DIR=$PEERS_DIR/apt
APTO=()
apt_ready=
apt_state() {
    [[ -n "$apt_ready" ]] && return 0
    need apt-get dpkg-deb
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [[ -n "$uri" ]] || uri=$(awk '$1 == "deb" && $0 ~ /debian/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
        /etc/apt/sources.list 2>/dev/null || true)
    [[ -n "$uri" ]] || uri=http://deb.debian.org/debian
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/download"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [[ -r "$keyring" ]] || die "$keyring is missing (Debian package debian-archive-keyring)"
    printf 'deb [signed-by=%s] %s %s main\ndeb-src [signed-by=%s] %s %s main\n' \
        "$keyring" "$uri" "$SUITE" "$keyring" "$uri" "$SUITE" >"$APT_DIR/sources.list"
    APTO=(-q -o "Dir::Etc::sourcelist=$APT_DIR/sources.list" -o Dir::Etc::sourceparts=-
        -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
        -o Acquire::Retries=3 -o Acquire::http::Timeout=30
        -o Acquire::Languages=none -o APT::Get::List-Cleanup=false)
    # as root, apt would hand the downloads to user _apt, who cannot write into $PEERS_DIR
    ((EUID == 0)) && APTO+=(-o APT::Sandbox::User=root)
    # The lists are kept; refreshed when older than a day (a trixie point release may have moved on).
    if [[ -z "$(find "$APT_DIR/lists" -maxdepth 1 -name '*Sources*' -mmin -1440 2>/dev/null)" ]]; then
        echo "build-cid-peers.sh: apt-get update ($SUITE, separate state in $APT_DIR)"
        local t0=$SECONDS
        step 300 apt-get "${APTO[@]}" update || die "apt-get update of Debian $SUITE ($uri) failed"
        echo "build-cid-peers.sh: apt-get update took $((SECONDS - t0)) s"
    fi
    apt_ready=1
}

# -- Mbed TLS ssl_client2 / ssl_server2 ----------------------------------------------------------
build_mbedtls() {
    if [[ -x "$PEERS_DIR/bin/ssl_client2" && -x "$PEERS_DIR/bin/ssl_server2" && -s "$PEERS_DIR/.mbedtls-version" ]]; then
        echo "build-cid-peers.sh: Mbed TLS $(cat "$PEERS_DIR/.mbedtls-version"): cached"
        return 0
    fi
    need cmake make cc tar
    apt_state
    local src=$PEERS_DIR/src
    mkdir -p "$src"
    local orig
    orig=$(find "$src" -maxdepth 1 -name 'mbedtls_3.6.*.orig.tar.*' ! -name '*.asc' | sort -V | tail -n 1)
    if [[ -z "$orig" ]]; then
        echo "build-cid-peers.sh: downloading the mbedtls source package from Debian $SUITE"
        (cd "$src" && step 300 apt-get "${APTO[@]}" source --download-only mbedtls) ||
            die "apt-get source --download-only mbedtls (Debian $SUITE) failed"
        orig=$(find "$src" -maxdepth 1 -name 'mbedtls_3.6.*.orig.tar.*' ! -name '*.asc' | sort -V | tail -n 1)
        [[ -n "$orig" ]] || die "Debian $SUITE's mbedtls source is not 3.6.x: $(find "$src" -maxdepth 1 -name 'mbedtls_*' -printf '%f ')"
    fi
    local version=${orig##*/mbedtls_}
    version=${version%%.orig.tar.*}
    local tree=$src/mbedtls-$version
    if [[ ! -f "$tree/CMakeLists.txt" ]]; then
        rm -rf "$tree" "$src/unpack"
        mkdir -p "$src/unpack"
        step 120 tar -xf "$orig" -C "$src/unpack" || die "cannot unpack $orig"
        local top
        top=$(find "$src/unpack" -mindepth 1 -maxdepth 1 -type d | head -n 1)
        [[ -f "$top/CMakeLists.txt" ]] || die "$orig has no CMakeLists.txt at its top"
        mv "$top" "$tree"
        rm -rf "$src/unpack"
    fi
    grep -q '^#define MBEDTLS_SSL_DTLS_CONNECTION_ID$' "$tree/include/mbedtls/mbedtls_config.h" ||
        die "Mbed TLS $version: MBEDTLS_SSL_DTLS_CONNECTION_ID is not on in its default configuration"
    echo "build-cid-peers.sh: building Mbed TLS $version ssl_client2 ssl_server2 (cmake, 2 jobs)"
    local t0=$SECONDS
    local build=$tree/build
    # -O0: these are test peers, and it halves the build (about 7 s instead of 15 s on 2 cores)
    step 300 cmake -Wno-dev -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=None -DCMAKE_C_FLAGS=-O0 \
        -DENABLE_TESTING=OFF -DENABLE_PROGRAMS=ON -DMBEDTLS_FATAL_WARNINGS=OFF \
        -DUSE_SHARED_MBEDTLS_LIBRARY=OFF ||
        die "cmake configure of Mbed TLS $version failed"
    step 900 cmake --build "$build" -j 2 --target ssl_client2 ssl_server2 ||
        die "building Mbed TLS $version ssl_client2/ssl_server2 failed"
    mkdir -p "$PEERS_DIR/bin"
    cp "$build/programs/ssl/ssl_client2" "$build/programs/ssl/ssl_server2" "$PEERS_DIR/bin/"
    echo "build-cid-peers.sh: Mbed TLS $version built in $((SECONDS - t0)) s"
    echo "$version" >"$PEERS_DIR/.mbedtls-version"
    rm -rf "$tree"  # the tarball stays (5 MB); the unpacked tree and objects are not needed
}

# -- Bouncy Castle jars --------------------------------------------------------------------------
fetch_bc() {
    local jar=$PEERS_DIR/java
    if [[ -s "$jar/bctls.jar" && -s "$jar/bcprov.jar" && -s "$jar/bcutil.jar" && -s "$PEERS_DIR/.bc-version" ]]; then
        echo "build-cid-peers.sh: Bouncy Castle $(cat "$PEERS_DIR/.bc-version") jars: cached"
        return 0
    fi
    apt_state
    local dl=$APT_DIR/download
    rm -f "$dl"/*.deb
    echo "build-cid-peers.sh: downloading ${BC_PACKAGES[*]} from Debian $SUITE"
    (cd "$dl" && step 300 apt-get "${APTO[@]}" download "${BC_PACKAGES[@]}") ||
        die "apt-get download ${BC_PACKAGES[*]} (Debian $SUITE) failed"
    rm -rf "$dl/x"
    local deb
    for deb in "$dl"/*.deb; do
        step 60 dpkg-deb -x "$deb" "$dl/x" || die "dpkg-deb -x $deb failed"
    done
    mkdir -p "$jar"
    local name file version=
    for name in bctls bcprov bcutil; do
        # the versioned file (bctls-1.80.jar); bctls.jar beside it is a symlink
        file=$(find "$dl/x/usr/share/java" -maxdepth 1 -type f -name "$name-[0-9]*.jar" | sort -V | tail -n 1)
        [[ -n "$file" ]] || die "no $name-<version>.jar in the downloaded ${BC_PACKAGES[*]}"
        cp "$file" "$jar/$name.jar"
        [[ "$name" == bctls ]] && version=$(basename "$file" .jar) && version=${version#bctls-}
    done
    echo "$version" >"$PEERS_DIR/.bc-version"
    rm -rf "$dl/x" "$dl"/*.deb
}

# -- our Java client -----------------------------------------------------------------------------
build_java_client() {
    need javac java sha256sum
    [[ -f "$JAVA_SOURCE" ]] || die "$JAVA_SOURCE is missing"
    local classes=$PEERS_DIR/java/classes stamp sum
    stamp=$classes/.source-sha256
    sum=$(sha256sum "$JAVA_SOURCE" | cut -d' ' -f1)
    if [[ -f "$classes/BcCidClient.class" && "$(cat "$stamp" 2>/dev/null)" == "$sum" ]]; then
        echo "build-cid-peers.sh: BcCidClient: cached"
        return 0
    fi
    echo "build-cid-peers.sh: compiling BcCidClient.java"
    rm -rf "$classes"
    mkdir -p "$classes"
    local jar=$PEERS_DIR/java
    step 180 javac -nowarn -d "$classes" -cp "$jar/bctls.jar:$jar/bcprov.jar:$jar/bcutil.jar" "$JAVA_SOURCE" ||
        die "javac BcCidClient.java failed"
    echo "$sum" >"$stamp"
}

build_mbedtls
fetch_bc
build_java_client

{
    echo "mbedtls $(cat "$PEERS_DIR/.mbedtls-version") $PEERS_DIR/bin/ssl_client2 $PEERS_DIR/bin/ssl_server2"
    echo "bouncycastle $(cat "$PEERS_DIR/.bc-version") $PEERS_DIR/java/bctls.jar $PEERS_DIR/java/bcprov.jar $PEERS_DIR/java/bcutil.jar"
    echo "bccidclient $(cut -c1-12 "$PEERS_DIR/java/classes/.source-sha256") $PEERS_DIR/java/classes"
} >"$PEERS_DIR/VERSIONS"
echo "build-cid-peers.sh: ready in $((SECONDS - started)) s ($PEERS_DIR):"
sed 's/^/    /' "$PEERS_DIR/VERSIONS"
