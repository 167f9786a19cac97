"""Smoke test: every atheris fuzz target (tests/fuzz/fuzz_*.py) runs a short, bounded session
without a finding. A new target is picked up by its file name."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

FUZZ_DIR = pathlib.Path(__file__).resolve().parents[1] / "fuzz"
TARGETS = sorted(FUZZ_DIR.glob("fuzz_*.py"))
RUNS = 20000
TIMEOUT = 300  # seconds; each run takes a few seconds
#: inputs longer than this teach little; handshake messages need more room than datagrams
MAX_LEN = {"fuzz_dtls_handshake": 1024}


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
@pytest.mark.parametrize("target", TARGETS, ids=[t.stem for t in TARGETS])
def test_fuzz_target_smoke(tmp_path: pathlib.Path, target: pathlib.Path) -> None:
    # cwd and artifact prefix in tmp_path: a crash-* reproducer never lands in the tree.
    result = subprocess.run(
        [
            sys.executable,
            str(target),
            f"-atheris_runs={RUNS}",
            f"-max_len={MAX_LEN.get(target.stem, 512)}",
            f"-artifact_prefix={tmp_path}/",
            f"--seed-corpus={tmp_path / 'corpus'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS} " in result.stderr
    assert not list(tmp_path.glob("crash-*"))


def test_every_parser_has_a_fuzz_target() -> None:
    names = {target.stem for target in TARGETS}
    assert {"fuzz_codec", "fuzz_dtls_record", "fuzz_dtls_handshake"} <= names
