#!/usr/bin/env bash
# The C extensions under AddressSanitizer and UndefinedBehaviorSanitizer: built in a copy of the
# tree (build/sanitize, never in place), then the unit and conformance tests, the micro benchmarks
# (once each) and the fuzz smoke tests run against that build, every extserver/extclient/extnat
# they start included (the environment below is inherited). Any sanitizer report fails the run.
#
#   scripts/sanitize.sh [pytest arguments]      (make sanitize; needs the venv of `make build`)
#
# Arguments replace the default selection (e.g. scripts/sanitize.sh tests/unit/test_codec.py -x).
# tests/interop is not in it: the preloaded runtime would reach the third-party peers too
# (gnutls-cli hangs under it), and what those tests add in our code the others exercise.
#
# Python itself is not instrumented: the runtime is preloaded, Python's own allocator is switched
# off (PYTHONMALLOC=malloc) so that ASan sees every object, and leak checking is off (an
# interpreter keeps its objects until exit by design).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
out=$root/build/sanitize

fail() { echo "sanitize: $1" >&2; exit "${2:-1}"; }
[[ -x $python ]] || fail "no $python: run make build first" 2
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
[[ -f $asan && -f $ubsan ]] || fail "gcc has no libasan/libubsan: apt-get install gcc" 2

echo "==> sanitize: building the extensions with -fsanitize=address,undefined in $out"
rm -rf "$out"
mkdir -p "$out/logs"
# The Cython output (.c) comes along with its time stamps, so only the C compiler runs again.
cp -a src csrc setup.py pyproject.toml README.md "$out/"
find "$out/src" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
(
    cd "$out"
    CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g" \
        LDFLAGS="-fsanitize=address,undefined" \
        "$python" setup.py -q build_ext --inplace -j "$(nproc)" >"$out/logs/build.log" 2>&1
) || { tail -30 "$out/logs/build.log"; fail "the sanitizer build failed (log above)"; }

export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:log_path=$out/logs/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONMALLOC=malloc
export PYTHONPATH=$out/src

# The tests must import the instrumented build, not the editable install of the venv.
"$python" - "$out/src" <<'EOF' || fail "the tests would not import the sanitizer build"
import sys
import extplugtest.coap._codec as codec
import extplugtest.dtls._record as record
for module in (codec, record):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
EOF

echo "==> sanitize: unit and conformance tests, micro benchmarks (once each)"
# --capture=sys: a sanitizer's report (written to fd 2 by C code) reaches the log even when it
# stops the test process.
selection=("$@")
((${#selection[@]})) || selection=(tests/unit tests/conformance bench/test_micro.py bench/test_micro_dtls.py)
status=0
"$python" -m pytest -q -p no:cacheprovider --capture=sys --benchmark-disable "${selection[@]}" ||
    status=$?

mapfile -t reports < <(find "$out/logs" -name 'asan*' -type f)
if ((${#reports[@]})); then
    for report in "${reports[@]}"; do
        echo "--- $report"
        head -60 "$report"
    done
    fail "AddressSanitizer reported errors (above)"
fi
((status == 0)) || fail "pytest failed under the sanitizers (exit $status)" "$status"
echo "==> sanitize: no sanitizer reports"
