"""What the NAT's ``clear`` does to the nodes, seen from inside one run: the same node
processes, their CPU per answer over a window before the clear and over windows after it.

Across runs (``cluster_throughput.py``) a setup's figure moves by 10-20 % on this VM; inside
one run the processes, their connections and the box stay the same, so the clear is the
only change. One setup (``cluster_throughput.py``'s: ``single``, ``backward``,
``no-backward``, or ``no-clear``, which keeps the entries and so shows the windows' own
spread) behind ``extnat``, 500 clients of ``extclient benchmark`` as there, the nodes in one
CPU budget of ``--budget`` % (0: none). After the generator started: ``--settle`` s, one
window of ``--window`` s, the clear, 3 s for its retransmissions, then ``--after`` windows.
The figure is node CPU (utime + stime) per answer the NAT passed back to the clients.

    .venv/bin/python bench/cluster_clear.py [--setup no-backward] [--budget 15]
        [--window 8] [--after 3] [--settle 4] [--clients 500]

Loopback only; every wait is bounded; all processes end with the run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cluster_throughput as runner
from cpu_budget import CpuBudget, CpuBudgetError
from throughput import Processes, wait_started

RETRANSMISSIONS_S = 3.0  # the answers lost at the clear come back within ACK_TIMEOUT * 1.5


def per_answer(before: runner.Sample, after: runner.Sample) -> tuple[float, int]:
    """(node CPU microseconds per answer, answers) between two samples."""
    cpu = sum(after.nodes[pid] - before.nodes[pid] for pid in before.nodes)
    answers = after.stats.get("backward-received", 0) - before.stats.get("backward-received", 0)
    if answers <= 0:
        raise runner.BenchError("no answers in a window")
    return 1e6 * cpu / answers, answers


def generator_duration(args: argparse.Namespace) -> float:
    """Seconds the generator runs after its warm-up: every window, and a margin."""
    return args.settle + (1 + args.after) * args.window + RETRANSMISSIONS_S + 5


def measure(args: argparse.Namespace, work: Path) -> list[tuple[float, int]]:
    """The windows' figures: the one before the clear first."""
    generator_args = runner.parse_args([
        "--setups", args.setup, "--warmup", "3", "--duration", str(generator_duration(args)),
    ])  # fmt: skip
    with contextlib.ExitStack() as stack:
        budget = stack.enter_context(CpuBudget(args.budget)) if args.budget else None
        processes = stack.enter_context(Processes())
        log = stack.enter_context(open(work / "run.log", "wb"))
        nodes = runner.start_nodes(args.setup, processes, log, generator_args)
        for node in nodes:
            if budget is not None:
                budget.add(node.process.pid)
        nat, port, control = runner.start_nat(args.setup, nodes, args.clients, generator_args,
                                              processes, log, work)  # fmt: skip
        entry = runner.Started(args.setup, nodes, nat, port, control, work / "load.json")
        run = runner.launch_setup_generator(processes, entry, args.clients, generator_args)
        wait_started(run, runner.START_TIMEOUT)
        time.sleep(args.settle)
        figures = []
        for window in range(1 + args.after):
            if window == 1:
                if not runner.keeps_entries(args.setup, generator_args):
                    runner.nat_command(control, "clear")
                time.sleep(RETRANSMISSIONS_S)
            start = runner.sample(entry)
            time.sleep(args.window)
            figures.append(per_answer(start, runner.sample(entry)))
        return figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=runner.SETUPS, default="no-backward")
    parser.add_argument("--budget", type=float, default=15.0, help="%% of a CPU (0: none)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds per window")
    parser.add_argument("--after", type=int, default=3, help="windows after the clear")
    parser.add_argument("--settle", type=float, default=4.0, help="seconds before the first")
    parser.add_argument("--clients", type=int, default=500)
    args = parser.parse_args(argv)
    if not (1 <= args.window <= 60 and 1 <= args.after <= 10 and 0 <= args.settle <= 60):
        parser.error("--window 1..60, --after 1..10, --settle 0..60")
    if generator_duration(args) > runner.MAX_DURATION:
        parser.error(f"--settle + the windows must stay within {runner.MAX_DURATION - 8:g} s")
    if not 1 <= args.clients <= 5000:
        parser.error("--clients 1..5000")
    if args.budget:
        try:
            CpuBudget(args.budget).close()  # no cgroup, not root: one line, now
        except CpuBudgetError as exc:
            parser.error(f"--budget: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cluster-clear-") as work:
        figures = measure(args, Path(work))
    (before, answered), after = figures[0], figures[1:]
    rate = answered / args.window
    print(f"{args.setup}: before the clear {before:.2f} us per answer ({rate:,.0f}/s)")
    for us, answers in after:
        rate = answers / args.window
        print(f"  after: {us:.2f} us per answer ({rate:,.0f}/s), {us / before - 1:+.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
