"""bench/cluster_clear.py: its arithmetic, its options, and one brief run end to end (the
figures are timings: only that every window has answers is checked)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cluster_clear
import cluster_throughput as runner


def sample(cpu_s: dict[int, float], answers: int) -> runner.Sample:
    return runner.Sample(cpu_s, 0.0, {"backward-received": answers})


def test_per_answer_is_node_cpu_over_answers_the_nat_passed_back() -> None:
    before = sample({1: 1.0, 2: 2.0}, 1_000)
    after = sample({1: 1.5, 2: 2.5}, 201_000)
    assert cluster_clear.per_answer(before, after) == (5.0, 200_000)  # 1 s / 200k


def test_a_window_without_answers_is_an_error() -> None:
    with pytest.raises(runner.BenchError):
        cluster_clear.per_answer(sample({1: 0.0}, 5), sample({1: 1.0}, 5))


@pytest.mark.parametrize(
    "argv",
    [["--setup", "sideways"], ["--window", "0"], ["--after", "0"], ["--clients", "0"],
     ["--window", "20", "--after", "3"]],
)  # fmt: skip
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cluster_clear.parse_args([*argv, "--budget", "0"])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")
def test_a_brief_run_measures_every_window(tmp_path: Path) -> None:
    args = argparse.Namespace(setup="single", budget=0.0, window=1.0, after=1, settle=0.0,
                              clients=20)  # fmt: skip
    figures = cluster_clear.measure(args, tmp_path)
    assert len(figures) == 2
    assert all(us > 0 and answers > 0 for us, answers in figures)
