"""Forwarding rate of ``extnat``: CoAP CON GET through the NAT with thousands of client addresses.

Per backend kind (default ``c``, a C responder built here with cc; ``ours`` is ``extserver
--benchmark``, ``libcoap`` is ``coap-server-notls``) this runs, on loopback:

1. ``direct``: ``extclient benchmark`` straight against the first backend, the baseline;
2. ``nat``: the same through ``extnat`` (pinned to CPU 0), every client with its own source
   address, so every client is a NAT entry with its own outgoing socket.

The generator and the backends share CPU 1, so the NAT has a core of its own and its CPU time
over the measurement window is what it costs. The NAT's own counters (read over its control
socket at the start and the end of the window) give the datagrams it forwarded, both
directions together; the figure to compare with the target is datagrams per NAT-CPU-second.
``direct`` vs ``nat`` req/s shows whether the NAT slows the benchmark down.

    .venv/bin/python bench/nat_throughput.py [--clients 2000] [--backends c,ours]
                                             [--destinations 2] [--duration 10] [--warmup 2]

As in ``throughput.py``: the box must be idle before each run (bounded wait, recorded either
way), only loopback is used, every wait is bounded, and every process started here is killed
at the end, also on Ctrl-C or an error. Results: a table, and
``bench/results/nat-throughput-<time>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

# The process, /proc and idle-wait helpers are shared with the server benchmark.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from responder import build_responder
from throughput import (
    BenchError,
    Processes,
    Step,
    box_cpu,
    busy_before,
    coap_ping,
    format_table,
    free_udp_port,
    host_info,
    launch_generator,
    load_average,
    process_cpu,
    run_plan,
    sleep_until,
    stop_on_sigterm,
    wait_idle,
    wait_started,
)

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
NAT_CPU = "0"
LOAD_CPU = "1"  # generator and backends
PATH = "benchmark?rlen=40"
PAYLOAD = "x" * 40
READY_TIMEOUT = 10.0
START_TIMEOUT = 60.0  # 2000 client sockets and their first request
MAX_DURATION = 60.0


def backend_available(kind: str, responder: Path | None, errors: list[str]) -> bool:
    """Whether backend *kind* can run here; if not, a note says why."""
    if kind == "c" and responder is None:
        errors.append("c: no C compiler, skipped")
        return False
    if kind == "libcoap" and not shutil.which("coap-server-notls"):
        errors.append("libcoap: coap-server-notls not found, skipped")
        return False
    return True


def describe_run(run: dict[str, Any]) -> str:
    dgrams = run["datagrams_per_s"]
    figures = f"{run['req_per_s']:,.0f} req/s"
    if dgrams:
        figures += f", {dgrams:,.0f} datagrams/s, NAT {run['nat_cpu_pct']:.0f}% CPU"
    return figures


def backend_command(kind: str, port: int, responder: Path | None) -> list[str]:
    if kind == "c":
        assert responder is not None
        return [str(responder), str(port)]
    if kind == "ours":
        return [str(VENV_BIN / "extserver"), "--benchmark", "--no-plugtest", "--no-external",
                "--no-ipv6", "--coap-port", str(port)]  # fmt: skip
    if kind == "libcoap":
        return ["coap-server-notls", "-A", LOOPBACK, "-p", str(port), "-d", "10"]
    raise BenchError(f"unknown backend {kind!r}")


def wait_ping(port: int, process: subprocess.Popen[Any], timeout: float = READY_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    for attempt in range(1000):
        if time.monotonic() > deadline or process.poll() is not None:
            return False
        if coap_ping(port, mid=0x4000 + attempt):
            return True
        time.sleep(0.05)
    return False


def start_backends(
    kind: str, count: int, processes: Processes, log: IO[bytes], responder: Path | None
) -> list[tuple[subprocess.Popen[Any], int]]:
    backends = []
    for _ in range(count):
        port = free_udp_port()
        command = ["taskset", "-c", LOAD_CPU, *backend_command(kind, port, responder)]
        process = processes.start(command, stdout=log, stderr=subprocess.STDOUT)
        if not wait_ping(port, process):
            raise BenchError(f"backend {kind} on port {port} did not answer a ping")
        if kind == "libcoap":
            put = ["coap-client-notls", "-B", "5", "-m", "put", "-e", PAYLOAD]
            subprocess.run([*put, f"coap://{LOOPBACK}:{port}/benchmark"], check=True, timeout=10,
                           capture_output=True)  # fmt: skip
        backends.append((process, port))
    return backends


def nat_stats(control: Path) -> dict[str, int]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(control))
        sock.sendall(b"stats\n")
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    stats = {}
    for line in data.decode().splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            stats[name] = int(value)
    return stats


def start_nat(
    ports: list[int], clients: int, processes: Processes, log: IO[bytes], work: Path
) -> tuple[subprocess.Popen[Any], int, Path]:
    control = work / "nat.sock"
    for _attempt in range(3):
        port = free_udp_port()
        command = [
            "taskset", "-c", NAT_CPU, str(VENV_BIN / "extnat"), f"{LOOPBACK}:{port}",
            *(f"{LOOPBACK}:{p}" for p in ports), f"-n={max(clients + 100, 10000)}",
            "--no-console", "--control", str(control),
        ]  # fmt: skip
        process = processes.start(command, stdout=log, stderr=subprocess.STDOUT)
        if wait_ping(port, process):
            return process, port, control
        processes.stop(process)
    raise BenchError("extnat did not forward a CoAP ping")


def measure(
    kind: str, mode: str, args: argparse.Namespace, work: Path, responder: Path | None
) -> dict[str, Any]:
    idle = wait_idle(args.idle_threshold, args.idle_settle, args.idle_timeout)
    name = f"{kind}-{mode}"
    result_file = work / f"{name}.json"
    with Processes() as processes, open(work / f"{name}.log", "wb") as log:
        backends = start_backends(kind, args.destinations, processes, log, responder)
        nat = control = None
        if mode == "nat":
            nat, port, control = start_nat([p for _, p in backends], args.clients, processes,
                                           log, work)  # fmt: skip
        else:
            port = backends[0][1]  # direct: the first backend only
        uri = f"coap://{LOOPBACK}:{port}/{PATH}"
        run = wait_started(
            launch_generator(processes, LOAD_CPU, uri, args.clients, args, result_file),
            START_TIMEOUT,
        )
        generator, started = run.process, run.started
        pids = [p.pid for p, _ in backends]
        sleep_until(started + args.warmup, generator)
        cpu0 = {pid: process_cpu(pid) for pid in pids}
        nat_cpu0 = process_cpu(nat.pid) if nat else 0.0
        stats0 = nat_stats(control) if control else {}
        box0, wall0 = box_cpu(), time.monotonic()
        sleep_until(started + args.warmup + args.duration, generator)
        cpu1 = {pid: process_cpu(pid) for pid in pids}
        nat_cpu1 = process_cpu(nat.pid) if nat else 0.0
        stats1 = nat_stats(control) if control else {}
        box1, wall1 = box_cpu(), time.monotonic()
        try:
            generator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("extclient did not finish") from None
        if generator.returncode != 0 or not result_file.exists():
            raise BenchError(f"extclient failed ({generator.returncode}):\n{run.tail()}")
    load = json.loads(result_file.read_text())
    wall = wall1 - wall0
    backend_cpu = sum(cpu1[pid] - cpu0[pid] for pid in pids) / wall
    nat_cpu = (nat_cpu1 - nat_cpu0) / wall
    generator_cpu = load["generator_cpu_s"] / load["duration_s"]
    box_busy = (box1[0] - box0[0]) / wall
    delta = {key: stats1[key] - stats0.get(key, 0) for key in stats1}
    datagrams = (delta.get("forwarded", 0) + delta.get("backwarded", 0)) / wall if nat else None
    drops = {k: v for k, v in delta.items() if v and ("dropped" in k or "errors" in k)}
    return {
        "backend": kind,
        "mode": mode,
        "clients": args.clients,
        "destinations": args.destinations if nat else 1,
        "req_per_s": load["req_per_s"],
        "datagrams_per_s": datagrams,
        "nat_cpu_pct": 100 * nat_cpu if nat else None,
        "datagrams_per_nat_cpu_s": datagrams / nat_cpu if nat and nat_cpu > 0 else None,
        "entries": stats1.get("entries"),
        "nat_drops": drops,
        "backend_cpu_pct": 100 * backend_cpu,
        "generator_cpu_pct": 100 * generator_cpu,
        "other_cpu_pct": 100 * max(0.0, box_busy - nat_cpu - backend_cpu - generator_cpu),
        "p50_ms": load["latency_ms"]["p50"],
        "p99_ms": load["latency_ms"]["p99"],
        "retransmissions": load["retransmissions"],
        "timeouts": load["transmission_errors"],
        "before": idle,
        "generator": load,
    }


COLUMNS = (
    ("backend", "{}", 8),
    ("mode", "{}", 6),
    ("clients", "{}", 7),
    ("req/s", "{:,.0f}", 9),
    ("dgrams/s", "{:,.0f}", 9),
    ("NAT CPU %", "{:.0f}", 9),
    ("dgrams/NAT-CPU-s", "{:,.0f}", 16),
    ("p50 ms", "{:.2f}", 7),
    ("p99 ms", "{:.2f}", 7),
    ("retrans", "{}", 7),
    ("load CPU %", "{:.0f}", 10),
    ("other %", "{:.0f}", 7),
    ("busy before", "{}", 11),
    ("load1", "{}", 5),
)


def table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        rows.append((
            r["backend"], r["mode"], r["clients"], r["req_per_s"], r["datagrams_per_s"],
            r["nat_cpu_pct"], r["datagrams_per_nat_cpu_s"], r["p50_ms"], r["p99_ms"],
            r["retransmissions"], r["backend_cpu_pct"] + r["generator_cpu_pct"],
            r["other_cpu_pct"], busy_before(r), r["before"]["loadavg"][0],
        ))  # fmt: skip
    return format_table(COLUMNS, rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000, help="client addresses (2000)")
    parser.add_argument("--backends", default="c", help="c, ours, libcoap (comma-separated)")
    parser.add_argument("--destinations", type=int, default=2, help="backends behind the NAT")
    parser.add_argument("--modes", default="direct,nat", help="direct, nat (comma-separated)")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before it, s")
    parser.add_argument("--idle-threshold", type=float, default=10.0, help="idle below this %%")
    parser.add_argument("--idle-settle", type=int, default=3, help="idle seconds in a row")
    parser.add_argument("--idle-timeout", type=float, default=120.0, help="max. idle wait, s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    args.modes = args.modes.split(",")
    if not set(args.backends) <= {"c", "ours", "libcoap"} or not set(args.modes) <= {
        "direct",
        "nat",
    }:
        parser.error("--backends: c, ours, libcoap; --modes: direct, nat")
    if not 1 <= args.clients <= 10000 or not 1 <= args.destinations <= 8:
        parser.error("--clients 1..10000, --destinations 1..8")
    if not 0 < args.duration <= MAX_DURATION or not 0 <= args.warmup <= 30:
        parser.error(f"--duration 0..{MAX_DURATION:g}, --warmup 0..30")
    if not 0 <= args.idle_timeout <= 600 or not 1 <= args.idle_settle <= 60:
        parser.error("--idle-timeout 0..600, --idle-settle 1..60")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        print("needs 2 CPUs and taskset (NAT on CPU 0, load on CPU 1)", file=sys.stderr)
        return 1
    info = host_info()
    print(f"host: {info['cpus']} CPUs, load {load_average()}, kernel {info['kernel']}")
    errors: list[str] = []
    with stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="nat-throughput-") as tmp:
        work = Path(tmp)
        responder = build_responder(work) if "c" in args.backends else None
        backends = [kind for kind in args.backends if backend_available(kind, responder, errors)]
        steps = [
            Step(
                0, f"{kind} {mode}, {args.clients} clients",
                functools.partial(measure, kind, mode, args, work, responder),
                describe_run,
            )
            for kind in backends for mode in args.modes
        ]  # fmt: skip
        runs = run_plan(steps, errors)
    if runs:
        print()
        print(table(runs))
    for error in errors:
        print(f"note: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / time.strftime("nat-throughput-%Y%m%d-%H%M%S.json")
    settings = {"duration": args.duration, "warmup": args.warmup, "path": PATH,
                "request": "CON GET", "nat_cpu": NAT_CPU, "load_cpu": LOAD_CPU}  # fmt: skip
    out.write_text(
        json.dumps({"host": info, "settings": settings, "runs": runs, "notes": errors}, indent=2)
        + "\n"
    )
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if runs and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
