"""A CPU budget for a group of processes (a cgroup with a CFS quota), so that a benchmark can
make them the bottleneck: with their CPU capped, req/s measures what they get done per CPU
second at full load, with the batches of a saturated server, wherever the load generator
would otherwise set the pace.

cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``); needs root. The period is short (10 ms)
so that the throttled processes stall only briefly.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

PERIOD_US = 10_000
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller CFS quota
CGROUP_ROOT = Path("/sys/fs/cgroup")


class CpuBudgetError(Exception):
    pass


def _controller_root() -> tuple[Path, bool]:
    """(directory to create the group in, True for cgroup v2)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        if "cpu" not in (CGROUP_ROOT / "cgroup.controllers").read_text().split():
            raise CpuBudgetError("cgroup v2 without the cpu controller")
        with contextlib.suppress(OSError):
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
        return CGROUP_ROOT, True
    if (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return CGROUP_ROOT / "cpu", False
    raise CpuBudgetError(f"no cgroup cpu controller under {CGROUP_ROOT}")


class CpuBudget:
    """``with CpuBudget(25) as budget: budget.add(pid)``: the added processes (all their
    threads) share 25 % of one CPU, granted per *period_us* (10 ms unless given)."""

    def __init__(self, percent: float, period_us: int = PERIOD_US) -> None:
        if not 1 <= percent <= 100:
            raise CpuBudgetError("the CPU budget must be 1..100 % of one CPU")
        if not 1_000 <= period_us <= 1_000_000:  # the kernel's bounds for a CFS period
            raise CpuBudgetError("the quota's period must be 1 ms .. 1 s")
        quota = int(period_us * percent / 100)
        if quota < MIN_QUOTA_US:
            raise CpuBudgetError(
                f"{percent:g} % of a {period_us / 1000:g} ms period is under the kernel's "
                f"smallest quota (1 ms): use a longer period"
            )
        root, self.v2 = _controller_root()
        self.path = root / f"extplugtest-bench-{os.getpid()}-{time.monotonic_ns()}"
        try:
            self.path.mkdir()
            if self.v2:
                (self.path / "cpu.max").write_text(f"{quota} {period_us}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(period_us))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError as exc:
            self.close()
            raise CpuBudgetError(f"cannot set up a cgroup in {root}: {exc.strerror}") from None

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds the group was held back by its quota so far."""
        stat = dict(
            line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line
        )
        if self.v2:
            return int(stat.get("throttled_usec", 0)) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def close(self) -> None:
        """Remove the group (it must be empty: its processes ended or moved); bounded retry
        while the kernel still counts exiting processes."""
        for _attempt in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)

    def __enter__(self) -> CpuBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
