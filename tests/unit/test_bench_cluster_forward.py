"""bench/cluster_forward.py end to end, briefly: two node processes on loopback answer every
request, straight and forwarded, and the runner reports both (no figure is checked: they are
timings)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cluster_forward
from cpu_budget import CpuBudget, CpuBudgetError

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")


@pytest.fixture(autouse=True)
def keep_affinity():
    """The runner pins itself to the client's CPU: give the test process its CPUs back."""
    cpus = os.sched_getaffinity(0)
    yield
    os.sched_setaffinity(0, cpus)


@pytest.mark.parametrize("mode", ["direct", "forward"])
def test_a_run_answers_requests(mode):
    args = cluster_forward.parse_args(["--connections", "8", "--duration", "1", "--warmup", "0"])
    result = cluster_forward.run(mode, args)
    assert result["mode"] == mode
    assert result["req_per_s"] > 0 and result["us_per_request"] > 0
    router, owner = result["node_cpu_pct"]
    assert owner > 0
    if mode == "forward":
        assert router > 0  # the router did the forwarding


def test_main_prints_both_medians(capsys):
    argv = ["--connections", "4", "--duration", "1", "--warmup", "0", "--repeat", "1"]
    assert cluster_forward.main(argv) == 0
    out = capsys.readouterr().out
    assert "direct:" in out and "forward:" in out and "per forwarded record" in out


@pytest.mark.parametrize(
    "argv",
    [["--connections", "0"], ["--duration", "0"], ["--period-ms", "0"], ["--repeat", "21"],
     ["--budget", "0"], ["--budget-per-node"]],
)  # fmt: skip
def test_bad_options_are_refused(argv):
    with pytest.raises(SystemExit):
        cluster_forward.parse_args(argv)


@pytest.mark.parametrize("period_us", [999, 1_000_001])
def test_a_quota_period_outside_the_kernels_bounds_is_refused(period_us):
    # refused before any cgroup is touched (so this needs no root)
    with pytest.raises(CpuBudgetError, match="period"):
        CpuBudget(15, period_us)


def test_a_quota_under_the_kernels_smallest_is_refused():
    # 5 % of 10 ms is 0.5 ms: the kernel takes 1 ms at least (refused before any cgroup)
    with pytest.raises(CpuBudgetError, match="smallest quota"):
        CpuBudget(5, 10_000)


@pytest.mark.skipif(os.geteuid() != 0, reason="a cgroup needs root")
def test_a_run_with_a_budget_per_node_answers_requests():
    try:
        CpuBudget(50).close()
    except CpuBudgetError as exc:
        pytest.skip(f"no cgroup here: {exc}")
    args = cluster_forward.parse_args(["--connections", "8", "--duration", "1", "--warmup", "0",
                                       "--budget", "50", "--budget-per-node"])  # fmt: skip
    result = cluster_forward.run("forward", args)
    assert result["req_per_s"] > 0 and all(share > 0 for share in result["node_cpu_pct"])
