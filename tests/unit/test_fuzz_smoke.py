"""Smoke test: the codec fuzz target runs a short, bounded session without a finding."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import pytest

FUZZ_TARGET = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_codec.py"
RUNS = 20000
TIMEOUT = 120  # seconds; the run takes a few seconds


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_fuzz_codec_smoke(tmp_path: pathlib.Path) -> None:
    # cwd and artifact prefix in tmp_path: a crash-* reproducer never lands in the tree.
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZ_TARGET),
            f"-atheris_runs={RUNS}",
            "-max_len=512",
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
