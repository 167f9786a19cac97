"""Soak run: our server under full load from many clients, memory and throughput over time.

Starts ``extserver --benchmark`` (deduplication on) pinned to CPU 0 and ``extclient benchmark``
with 2000 clients pinned to CPU 1 for five minutes (CON POST ``/benchmark?rlen=40``). Samples the
server's RSS every 10 s and reads the client's progress lines; prints the peak RSS and the
throughput of the first and of the last minute. The issue targets: RSS under 150 MB, and the
last minute within 10 % of the first.

    .venv/bin/python bench/soak.py [--clients 2000] [--duration 300]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import (
    GENERATOR_CPU,
    LOOPBACK,
    SERVERS,
    VENV_BIN,
    BenchError,
    Processes,
    start_server,
)

PROGRESS = re.compile(r"^\[(\d{4})\]: \d+ requests \((\d+) reqs/s")
MAX_DURATION = 1800


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def server_pid(launcher: subprocess.Popen) -> int:
    """taskset execs the server, so the launcher's pid is the server's."""
    return launcher.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=300, help="seconds (max 1800)")
    args = parser.parse_args(argv)
    if not 60 <= args.duration <= MAX_DURATION:
        parser.error("--duration must be 60..1800 seconds")
    rates: list[int] = []
    peak = 0
    with tempfile.TemporaryDirectory() as work, Processes() as processes:
        log = open(Path(work) / "server.log", "wb")  # noqa: SIM115 - closed with the directory
        server, port = start_server(SERVERS["ours"], processes, log)
        pid = server_pid(server)
        generator = processes.start(
            ["taskset", "-c", GENERATOR_CPU, str(VENV_BIN / "extclient"), "benchmark",
             f"coap://{LOOPBACK}:{port}/benchmark?rlen=40", "--clients", str(args.clients),
             "--no-stop", "--duration", str(args.duration), "--warmup", "2"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert generator.stdout is not None
        deadline = time.monotonic() + args.duration + 60
        for line in generator.stdout:
            peak = max(peak, rss_kib(pid))
            match = PROGRESS.match(line)
            if match:
                rates.append(int(match.group(2)))
                print(f"{line.rstrip()}  rss {rss_kib(pid) / 1024:.1f} MiB", flush=True)
            if time.monotonic() > deadline:
                raise BenchError("the generator did not finish in time")
        generator.wait(timeout=30)
        peak = max(peak, rss_kib(pid))
        log.close()
    if len(rates) < 12:
        raise BenchError(f"only {len(rates)} progress lines: too short to compare minutes")
    first, last = sum(rates[:6]) / 6, sum(rates[-6:]) / 6
    print(f"peak RSS: {peak / 1024:.1f} MiB")
    print(f"first minute: {first:,.0f} req/s, last minute: {last:,.0f} req/s "
          f"({(last - first) * 100 / first:+.1f} %)")  # fmt: skip
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"soak: {error}", file=sys.stderr)
        sys.exit(1)
