#!/usr/bin/env bash
# Install a built extplugtest wheel into a fresh venv and check that it works on its own.
#
#   wheels/smoke_test.sh build/wheelhouse/extplugtest-*.whl
#
# Environment: PYTHON (default python3; must match the wheel's CPython tag); SMOKE_PORT (default:
# random in 20000-39999): extended endpoints on SMOKE_PORT (coap) and +1 (coaps), plugtest ones
# on +2 and +3, loopback only.
#
# The venv's commands run with PATH=<venv>/bin only, so no compiler is reachable, and pip installs
# everything with --only-binary=:all: (our wheel; uvloop, cryptography and cbor2 from PyPI). Then:
#   1-2. wheels/check_installed.py: every extension module imports from the venv's site-packages
#      (not from a source tree) and is a .so; if the wheel links OpenSSL statically, `ldd` shows
#      no libcrypto and the static copies ignore the host's OpenSSL config (OPENSSL_CONF);
#   3. `extserver --version`, `extclient --version`, `extnat --version` run;
#   4. extserver starts on loopback, answers a coap and a coaps (DTLS 1.2, PSK) GET from
#      `extclient`, its process has the venv's extension modules mapped, and it stops on SIGTERM.
# Every wait is bounded.
set -euo pipefail

(($# == 1)) || {
    echo "usage: $0 WHEEL" >&2
    exit 2
}
wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ -f $wheel ]] || {
    echo "smoke_test.sh: no such wheel: $1" >&2
    exit 2
}

started=$SECONDS
say() { printf '==> smoke_test.sh [+%ds]: %s\n' "$((SECONDS - started))" "$*"; }
die() {
    printf 'smoke_test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

# The real interpreter, not a shim that needs PATH (pyenv).
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
work=$(mktemp -d "${TMPDIR:-/tmp}/extplugtest-smoke.XXXXXX")
venv=$work/venv
server_pid=
cleanup() {
    local status=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if ((status != 0)) && [[ -s $work/server.log ]]; then
        echo "---- extserver output" >&2
        tail -n 40 "$work/server.log" >&2
    fi
    rm -rf "$work"
}
trap cleanup EXIT

say "fresh venv ($("$python" -V 2>&1)) in $work"
"$python" -m venv "$venv"
# What the venv's commands see: its bin/ and nothing else (no gcc, no cc).
# (Tools from outside, such as timeout, are passed by absolute path.)
run() { env PATH="$venv/bin" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$@"; }
timeout=$(command -v timeout)
if run "$BASH" -c 'command -v gcc || command -v cc || command -v cython' >/dev/null; then
    die "a compiler is reachable on the restricted PATH"
fi
cd "$work" # no source tree on sys.path

say "pip install --only-binary=:all: ${wheel##*/}"
run "$timeout" 600 "$venv/bin/python" -m pip install -q --only-binary=:all: "$wheel"
run "$venv/bin/python" -m pip list --format=freeze | grep -iE '^(extplugtest|uvloop|cryptography|cbor2)=' |
    tr '\n' ' '
echo

say "extension modules (wheels/check_installed.py)"
# Its last line is "static" or "shared".
check=$(run "$venv/bin/python" "$here/check_installed.py")
printf '%s\n' "${check%$'\n'*}"
linkage=${check##*$'\n'}
site=$(run "$venv/bin/python" -c 'import os, sysconfig; print(os.path.realpath(sysconfig.get_paths()["platlib"]))')

say "--version"
version=$(run "$venv/bin/extserver" --version)
printf '%s\n' "$version" | sed 's/^/    /'
[[ $version == *$'\n'"OpenSSL in the C extensions: OpenSSL "* ]] ||
    die "extserver --version shows no OpenSSL version"
for tool in extclient extnat; do
    version=$(run "$venv/bin/$tool" --version)
    printf '    %s\n' "${version%%$'\n'*}"
done

port=${SMOKE_PORT:-$((20000 + RANDOM % 20000))}
say "extserver on 127.0.0.1, ports $port-$((port + 3))"
# Not through run(): $! must be the server's own pid (env execs it).
env PATH="$venv/bin" "$venv/bin/extserver" --no-external --no-ipv6 --coap-port "$port" --plugtest-port "$((port + 2))" \
    >"$work/server.log" 2>&1 &
server_pid=$!

# Until it answers (each try waits at most 1 s), at most 60 tries.
ready=
for _ in $(seq 60); do
    kill -0 "$server_pid" 2>/dev/null || die "extserver exited early"
    if run "$timeout" 10 "$venv/bin/extclient" get --timeout 1000 "coap://127.0.0.1:$port/.well-known/core" \
        >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.5
done
[[ -n $ready ]] || die "extserver did not answer on coap://127.0.0.1:$port within the time limit"

get() {
    local uri=$1 out
    out=$(run "$timeout" 60 "$venv/bin/extclient" get --timeout 20000 "$uri") || die "GET $uri failed"
    printf '    GET %s -> %s\n' "$uri" "$(printf '%s' "$out" | head -c 120 | tr '\n' ' ')"
}
say "requests"
get "coap://127.0.0.1:$((port + 2))/test"
get "coaps://127.0.0.1:$((port + 3))/test"
get "coaps://127.0.0.1:$((port + 1))/.well-known/core"

mapped=$(grep -o "/[^ ]*/extplugtest/[^ ]*\.so" "/proc/$server_pid/maps" | sort -u || true)
while read -r path; do
    [[ -z $path || $path == "$site"/* ]] || die "extserver maps $path, outside $site"
done <<<"$mapped"
for module in coap/_udp coap/_codec dtls/_record; do
    grep -q "/extplugtest/$module\." <<<"$mapped" || die "extserver has no $module from $site mapped"
done
echo "    extserver maps $(wc -l <<<"$mapped") extension modules, all from $site"

say "stopping extserver (SIGTERM, at most 10 s)"
kill -TERM "$server_pid"
for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$server_pid" 2>/dev/null; then
    die "extserver still running 10 s after SIGTERM"
fi
status=0
wait "$server_pid" || status=$?
server_pid=
echo "    exit status $status"
say "PASSED (${wheel##*/}, OpenSSL $linkage)"
