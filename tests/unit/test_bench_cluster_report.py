"""bench/cluster_throughput.py: the penalties it reports, from runs made up here.

The runner itself needs root, two CPUs and minutes; what it computes from the runs is what a
reader of bench/README quotes, so the arithmetic is checked on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cluster_throughput


def run(setup: str, round_: int, req_per_s: float, per_cpu: float, pair: int = 0) -> dict[str, Any]:
    made: dict[str, Any] = {"setup": setup, "round": round_, "clients": 500,
                            "req_per_s": req_per_s, "req_per_node_cpu_s": per_cpu}  # fmt: skip
    if pair:
        made["pair"] = pair
    return made


def test_penalty_is_against_the_single_node_of_the_same_round() -> None:
    runs = [
        run("single", 0, 100.0, 200.0),
        run("backward", 0, 90.0, 150.0),
        run("single", 1, 50.0, 100.0),
        run("backward", 1, 50.0, 80.0),
    ]
    cluster_throughput.penalties(runs)
    assert runs[0]["penalty_req_per_node_cpu_s"] == 0.0
    assert runs[1]["penalty_req_per_s"] == pytest.approx(0.10)
    assert runs[1]["penalty_req_per_node_cpu_s"] == pytest.approx(0.25)
    assert runs[3]["penalty_req_per_node_cpu_s"] == pytest.approx(0.20)


def side_by_side_round(round_: int = 0) -> list[dict[str, Any]]:
    """One side-by-side round: backward with its single node (pair 1, a fast spell of the box),
    no-clear with its own (pair 2, a slow spell)."""
    return [
        run("single", round_, 100.0, 200.0, pair=1),
        run("backward", round_, 90.0, 150.0, pair=1),
        run("single", round_, 80.0, 100.0, pair=2),
        run("no-clear", round_, 80.0, 95.0, pair=2),
    ]


def test_side_by_side_penalty_is_against_the_single_node_of_the_same_pair() -> None:
    runs = side_by_side_round()
    cluster_throughput.penalties(runs)
    assert runs[1]["penalty_req_per_node_cpu_s"] == pytest.approx(0.25)
    assert runs[3]["penalty_req_per_node_cpu_s"] == pytest.approx(0.05)


def test_the_clear_costs_backward_against_no_clear_through_their_single_nodes() -> None:
    # Taken straight, backward (150) against no-clear (95) would look faster; relative to the
    # single node each ran with, it is 0.75 against 0.95.
    runs = side_by_side_round()
    runs += [run("single", 1, 100.0, 100.0), run("backward", 1, 100.0, 90.0)]  # no no-clear
    cluster_throughput.penalties(runs)
    figures = cluster_throughput.clear_penalties(runs)
    assert list(figures) == [500]
    assert list(figures[500]) == ["backward against no-clear"]
    backward = figures[500]["backward against no-clear"]
    assert backward["req_per_node_cpu_s"] == [pytest.approx(1 - 0.75 / 0.95)]
    assert backward["req_per_s"] == [pytest.approx(1 - 0.90 / 1.00)]


def test_the_clear_costs_no_backward_against_the_same_cluster_with_its_entries_kept() -> None:
    runs = [
        run("single", 0, 100.0, 200.0, pair=1),
        run("no-backward", 0, 95.0, 160.0, pair=1),
        run("single", 0, 100.0, 100.0, pair=2),
        run("no-backward-kept", 0, 100.0, 98.0, pair=2),
    ]
    cluster_throughput.penalties(runs)
    figures = cluster_throughput.clear_penalties(runs)
    assert list(figures[500]) == ["no-backward against no-backward-kept"]
    no_backward = figures[500]["no-backward against no-backward-kept"]
    assert no_backward["req_per_node_cpu_s"] == [pytest.approx(1 - 0.80 / 0.98)]
    assert no_backward["req_per_s"] == [pytest.approx(1 - 0.95 / 1.00)]


def test_no_clear_is_a_setup_the_command_line_takes() -> None:
    args = cluster_throughput.parse_args(["--setups", "single,backward,no-clear", "--side-by-side"])
    assert args.setups == ["single", "backward", "no-clear"]
    with pytest.raises(SystemExit):
        cluster_throughput.parse_args(["--setups", "single,sideways"])


def test_side_by_side_plan_pairs_every_setup_with_the_single_node_round_by_round(
    tmp_path: Path,
) -> None:
    args = cluster_throughput.parse_args(
        ["--setups", "single,backward,no-clear", "--side-by-side", "--repeat", "2",
         "--clients", "50,500"]
    )  # fmt: skip
    steps = cluster_throughput.plan(args, tmp_path)
    assert [(s.round, s.label) for s in steps] == [
        (round_, f"{setup} with single, {clients} clients")
        for round_ in (0, 1) for clients in (50, 500) for setup in ("backward", "no-clear")
    ]  # fmt: skip
    in_turn_args = cluster_throughput.parse_args(["--setups", "single,backward"])
    in_turn = cluster_throughput.plan(in_turn_args, tmp_path)
    assert [s.label for s in in_turn] == ["single, 500 clients", "backward, 500 clients"]


def test_a_pair_s_runs_carry_its_number() -> None:
    args = cluster_throughput.parse_args(["--setups", "single,backward,no-clear"])

    def together(name: str, clients: int) -> list[dict[str, Any]]:
        return [run("single", 0, 1.0, 1.0), run(name, 0, 1.0, 1.0)]

    steps = cluster_throughput.plan_steps(
        args.setups, "single", args, lambda name, clients: {}, together, str
    )
    measured = [step.measure() for step in steps]
    assert [[r.get("pair") for r in runs] for runs in measured] == [[1, 1], [2, 2]]
    assert [runs[1]["setup"] for runs in measured] == ["backward", "no-clear"]


def test_a_budget_per_node_splits_the_setup_s_budget_among_its_nodes() -> None:
    args = cluster_throughput.parse_args(["--setups", "single,backward"])
    assert cluster_throughput.budget_shares("backward", args) == []  # no budget
    args.node_cpu_budget = 30.0
    assert cluster_throughput.budget_shares("backward", args) == [30.0]  # one group
    args.budget_per_node = True
    assert cluster_throughput.budget_shares("single", args) == [30.0]
    assert cluster_throughput.budget_shares("backward", args) == [15.0, 15.0]


def test_budget_options_are_checked() -> None:
    for argv in (["--budget-per-node"], ["--budget-period-ms", "0"]):
        with pytest.raises(SystemExit):
            cluster_throughput.parse_args(argv)


def test_only_the_kept_setups_keep_their_entries_unless_the_single_node_is_kept_too() -> None:
    args = cluster_throughput.parse_args(["--setups", "single,backward,no-clear"])
    kept = [s for s in cluster_throughput.SETUPS if cluster_throughput.keeps_entries(s, args)]
    assert kept == ["no-clear", "no-backward-kept"]
    args = cluster_throughput.parse_args(["--setups", "single,no-clear", "--keep-single"])
    kept = [s for s in cluster_throughput.SETUPS if cluster_throughput.keeps_entries(s, args)]
    assert kept == ["single", "no-clear", "no-backward-kept"]


def test_by_default_the_nodes_share_cpu_0_and_the_nat_runs_with_the_generators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_throughput.os, "sched_getaffinity", lambda pid: {0, 1})
    args = cluster_throughput.parse_args([])
    assert [cluster_throughput.node_cpu(node, args) for node in (1, 2)] == [0, 0]
    assert (args.load_cpu, args.nat_cpu) == (1, 1)
    args = cluster_throughput.parse_args(["--nat-cpu", "0"])
    assert (args.load_cpu, args.nat_cpu) == (1, 0)


def test_node_cpus_give_every_cluster_node_a_core_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_throughput.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    args = cluster_throughput.parse_args(["--node-cpus", "0,1", "--nat-cpu", "2",
                                          "--load-cpu", "3"])  # fmt: skip
    # the single node is node 1: on the first CPU, as the cluster's node 1
    assert [cluster_throughput.node_cpu(node, args) for node in (1, 2, 3)] == [0, 1, 0]
    assert (args.load_cpu, args.nat_cpu) == (3, 2)


def test_cpus_the_runner_may_not_use_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_throughput.os, "sched_getaffinity", lambda pid: {0, 1})
    for argv in (["--node-cpus", "0,2"], ["--node-cpus", "a"], ["--node-cpus", ""],
                 ["--load-cpu", "2"], ["--nat-cpu", "5"]):  # fmt: skip
        with pytest.raises(SystemExit):
            cluster_throughput.parse_args(argv)
