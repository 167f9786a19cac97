"""Throughput of our server against libcoap and aiocoap: CoAP CON GET over UDP, DTLS or TCP.

For every client count (default 50 and 500) and every server (ours, libcoap, aiocoap) this
starts the server fresh, pinned to CPU 0, and runs ``extclient benchmark`` pinned to CPU 1:
CON GET ``/benchmark?rlen=40`` (a 40-byte 2.05 answer from every server), a warm-up, then a
measurement window. Server CPU time (utime + stime from /proc/PID/stat) is taken over that
window only; the figure to compare is requests per server-CPU-second, and its ratio to libcoap.

Before each run the box must be idle (bounded wait; the load is recorded either way), so that
other work on the machine does not end up in the figures. Results are printed as a table and
written to ``bench/results/throughput-<time>.json``.

    .venv/bin/python bench/throughput.py [--clients 50,500] [--servers ours,libcoap,aiocoap]
                                         [--duration 10] [--warmup 2]
                                         [--transport udp|dtls|tcp] [--paired]

``--transport dtls``: coaps with PSK (Client_identity / secretPSK, which both servers know),
TLS_PSK_WITH_AES_128_CCM_8; ours hands out a 6-byte CID (RFC 9146), libcoap 4.3 has none;
every client does its handshake before the run (aiocoap has no DTLS server: skipped).

``--transport tcp``: coap+tcp (RFC 8323), GET ``/benchmark?rlen=40`` on one TCP connection per
client (the generator sends its CSM first, then its requests; no retransmission). Ours and
libcoap's ``coap-server-notls`` listen for TCP on their UDP port (libcoap's /benchmark is
created by PUT over UDP before the run; the resource is shared by the transports). aiocoap is
skipped (bench/aiocoap_server.py serves UDP only).

``--paired``: every server runs at the same time as libcoap instead of after it: both on
CPU 0, a generator each on CPU 1, one measurement window for both (the generators start
their requests together with ``extclient benchmark --start-at``). This VM's speed drifts by
10-20 % between runs a minute apart, which the ratio of two runs in turn inherits; two servers
measured side by side see the same drift (two of our servers paired the same way by a
separate script, not by this option, which pairs with libcoap: 1.00, 0.997-1.005). Each
server then has about half of CPU 0, so the figures are not those of a server alone on a core;
the ratio is the one to compare.

Only loopback addresses are used; every wait is bounded; every process started here is
killed at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent  # run this with the project's .venv/bin/python
LOOPBACK = "127.0.0.1"
SERVER_CPU = "0"
GENERATOR_CPU = "1"
PAYLOAD = "x" * 40  # what libcoap's /benchmark returns (created by PUT)
PATH = "benchmark?rlen=40"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 10.0  # seconds until a fresh server must answer a CoAP ping
START_TIMEOUT = 30.0  # seconds until the generator must print "Benchmark started."
#: side by side: the generators start their requests together this long after their launch
#: (connecting 500 clients to libcoap takes up to 2 s of SYN retries: its backlog is small)
TOGETHER_START_S = 6.0
#: ... and their starts may then differ by this share of the measurement window at most
MAX_START_GAP = 0.02
MAX_DURATION = 60.0
MAX_WARMUP = 30.0
MAX_REPEAT = 20  # rounds of a series (--repeat); the per-round spread asks for 10 or more


class BenchError(Exception):
    pass


@dataclass
class Server:
    name: str
    command: Callable[[int], list[str]]
    setup: Callable[[int], None] | None = None
    needs: str | None = None  # executable that must exist
    #: the command for --transport dtls (its coaps port is the plain one + 1); None: no DTLS
    dtls_command: Callable[[int], list[str]] | None = None
    dtls_needs: str | None = None
    #: the command for --transport tcp (coap+tcp on the plain port); None: no TCP server
    tcp_command: Callable[[int], list[str]] | None = None


#: the PSK of --transport dtls: in our server's store and given to libcoap
DTLS_IDENTITY, DTLS_SECRET = "Client_identity", "secretPSK"


def ours_command(port: int) -> list[str]:
    extserver = str(VENV_BIN / "extserver")
    return [extserver, "--benchmark", "--no-plugtest", "--no-external", "--no-ipv6",
            "--coap-port", str(port)]  # fmt: skip


def ours_epoll_command(port: int) -> list[str]:
    """Our server with its TCP sockets on epoll instead of io_uring (the A/B of the backend)."""
    return ["env", "EXTPLUGTEST_TCP_IO=epoll", *ours_command(port)]


def libcoap_command(port: int) -> list[str]:
    # -d 10: up to 10 resources may be created by PUT (see libcoap_setup)
    return ["coap-server-notls", "-A", LOOPBACK, "-p", str(port), "-d", "10"]


def libcoap_dtls_command(port: int) -> list[str]:
    return ["coap-server-openssl", "-A", LOOPBACK, "-p", str(port), "-d", "10",
            "-k", DTLS_SECRET, "-h", DTLS_IDENTITY]  # fmt: skip


def libcoap_setup(port: int) -> None:
    # The resource created by PUT returns the PUT payload to GET (any query is ignored).
    put = ["coap-client-notls", "-B", "5", "-m", "put", "-e", PAYLOAD]
    subprocess.run(
        [*put, f"coap://{LOOPBACK}:{port}/benchmark"], check=True, timeout=10, capture_output=True
    )


_responder: list[Path] = []  # the C responder, built once per run (bench/responder.py)


def responder_command(port: int) -> list[str]:
    from responder import build_responder

    if not _responder:
        binary = build_responder(Path(tempfile.mkdtemp(prefix="responder-")))
        if binary is None:
            raise BenchError("the C responder needs cc or gcc")
        _responder.append(binary)
    return [str(_responder[0]), str(port)]


def aiocoap_command(port: int) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "aiocoap_server.py"), "--port", str(port)]


SERVERS = {
    "ours": Server(
        "ours",
        ours_command,
        needs=str(VENV_BIN / "extserver"),
        dtls_command=ours_command,
        tcp_command=ours_command,  # --tcp is on by default: TCP on the UDP port
    ),
    "ours-epoll": Server(
        "ours-epoll",
        ours_epoll_command,
        needs=str(VENV_BIN / "extserver"),
        tcp_command=ours_epoll_command,
    ),
    "libcoap": Server(
        "libcoap",
        libcoap_command,
        libcoap_setup,
        needs="coap-server-notls",
        dtls_command=libcoap_dtls_command,
        dtls_needs="coap-server-openssl",
        tcp_command=libcoap_command,  # coap-server-notls listens on TCP too
    ),
    "aiocoap": Server("aiocoap", aiocoap_command),
    # no CoAP work at all: what the load generator itself can do (bench/README.md)
    "responder": Server("responder", responder_command),
}


# -- processes -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGTERM when this runner dies, so that no server outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Every process started here; all of them are stopped when the block is left."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[Any]] = []

    def start(self, command: list[str], **options: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **options
        )
        self.live.append(process)
        return process

    def stop(self, process: subprocess.Popen[Any]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process in self.live:
            self.live.remove(process)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in list(self.live):
            self.stop(process)


# -- measurements from /proc -----------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """utime + stime of a process in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def box_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def wait_idle(threshold: float, settle: int, timeout: float) -> dict[str, Any]:
    """Wait until the box was below *threshold* % busy (of all CPUs) for *settle* seconds."""
    started = time.monotonic()
    quiet = 0
    busy_pct = 100.0
    while time.monotonic() - started < timeout:
        busy0, total0 = box_cpu()
        time.sleep(1.0)
        busy1, total1 = box_cpu()
        busy_pct = 100 * (busy1 - busy0) / max(total1 - total0, 1e-9)
        quiet = quiet + 1 if busy_pct < threshold else 0
        if quiet >= settle:
            break
    return {
        "idle": quiet >= settle,
        "busy_pct": round(busy_pct, 1),
        "waited_s": round(time.monotonic() - started, 1),
        "loadavg": load_average(),
    }


# -- one run ---------------------------------------------------------------------------------


def free_udp_port(tcp: bool = False) -> int:
    """A free UDP port; with *tcp* one whose TCP port is free as well (a few tries)."""
    for _attempt in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
        if not tcp:
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
            try:
                stream.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    raise BenchError("no port free for both UDP and TCP")


def tcp_listening(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def coap_ping(port: int, mid: int, timeout: float = 0.2) -> bool:
    """An empty CON to the server; True when the RST with the same MID comes back."""
    request = bytes((0x40, 0x00, mid >> 8, mid & 0xFF))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((LOOPBACK, port))
            sock.send(request)
            reply = sock.recv(64)
        except OSError:  # timeout, or ICMP port unreachable while the server starts
            return False
    return len(reply) >= 4 and reply[0] >> 4 == 0x7 and reply[2:4] == request[2:4]


def wait_ready(port: int, process: subprocess.Popen[Any], tcp: bool = False) -> bool:
    """The server answers a CoAP ping (and, with *tcp*, accepts TCP connections)."""
    deadline = time.monotonic() + READY_TIMEOUT
    for attempt in range(1000):
        if time.monotonic() > deadline or process.poll() is not None:
            return False
        if coap_ping(port, mid=0x4000 + attempt) and (not tcp or tcp_listening(port)):
            return True
        time.sleep(0.05)
    return False


def start_server(
    server: Server, processes: Processes, log: IO[bytes], dtls: bool = False, tcp: bool = False
) -> tuple[subprocess.Popen[Any], int]:
    """A fresh server on CPU 0 that answers; a new port if the first one was taken meanwhile."""
    make_command = server.dtls_command if dtls and server.dtls_command else server.command
    if tcp and server.tcp_command:
        make_command = server.tcp_command
    for _attempt in range(3):
        port = free_udp_port(tcp)
        command = ["taskset", "-c", SERVER_CPU, *make_command(port)]
        process = processes.start(command, stdout=log, stderr=subprocess.STDOUT)
        if wait_ready(port, process, tcp):
            if server.setup:
                server.setup(port)
            return process, port
        processes.stop(process)
    log.flush()
    tail = Path(log.name).read_text(errors="replace")[-1500:]
    raise BenchError(f"{server.name} did not answer a CoAP ping\n{tail}")


def read_lines(stream: IO[str], lines: queue.Queue[tuple[float, str]]) -> None:
    for line in stream:
        lines.put((time.monotonic(), line.rstrip("\n")))


def sleep_until(moment: float, generator: subprocess.Popen[Any]) -> None:
    while (left := moment - time.monotonic()) > 0:
        if generator.poll() is not None:
            raise BenchError(f"extclient exited early with {generator.returncode}")
        time.sleep(min(left, 0.2))


@dataclass
class Generator:
    """A running ``extclient benchmark`` and what it printed so far."""

    process: subprocess.Popen[Any]
    started: float  # when it printed "Benchmark started."
    lines: queue.Queue[tuple[float, str]]
    output: list[str]

    def tail(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get()[1])
        return "\n".join(self.output[-20:])


def launch_generator(
    processes: Processes,
    cpu: str,
    uri: str,
    clients: int,
    args: argparse.Namespace,
    result_file: Path,
    extra: tuple[str, ...] = (),
) -> Generator:
    """``extclient benchmark`` (CON GET) pinned to *cpu*, launched (``wait_started`` then
    waits until it has started its clients)."""
    command = [
        "taskset", "-c", cpu, str(VENV_BIN / "extclient"), "benchmark", uri,
        "--clients", str(clients), "--method", "GET", "--con", "--no-stop",
        "--duration", str(args.duration), "--warmup", str(args.warmup),
        "--json", str(result_file), *extra,
    ]  # fmt: skip
    process = processes.start(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    return Generator(process, 0.0, lines, [])


def wait_started(run: Generator, start_timeout: float = START_TIMEOUT) -> Generator:
    """The launched generator, once it printed "Benchmark started." (its ``started``);
    raises BenchError when it does not start in time."""
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        try:
            stamp, line = run.lines.get(timeout=0.2)
        except queue.Empty:
            if run.process.poll() is not None:
                break
            continue
        run.output.append(line)
        if line == "Benchmark started.":
            run.started = stamp
            return run
    raise BenchError("extclient did not start:\n" + "\n".join(run.output[-10:]))


def shared_window(runs: list[Generator], args: argparse.Namespace) -> tuple[float, float]:
    """The stretch every started generator measures: from `warmup` s after its "Benchmark
    started." for `duration` s. Side by side they start together (--start-at); BenchError when
    a generator missed that moment, so that no server's figures cover a stretch alone."""
    first, last = min(r.started for r in runs), max(r.started for r in runs)
    if last - first > MAX_START_GAP * args.duration:
        raise BenchError(f"the generators started {last - first:.2f} s apart (not together)")
    return last + args.warmup, first + args.warmup + args.duration


def measure(server: Server, clients: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One server alone on CPU 0."""
    return measure_together([server], clients, args, work)[0]


def measure_together(
    servers: list[Server], clients: int, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    """The servers at the same time on CPU 0, a generator each on CPU 1, the generators
    starting together: their figures over the one window they share."""
    idle = wait_idle(args.idle_threshold, args.idle_settle, args.idle_timeout)
    dtls = args.transport == "dtls"
    tcp = args.transport == "tcp"
    with contextlib.ExitStack() as stack:
        processes = stack.enter_context(Processes())
        started = []
        for server in servers:
            log = stack.enter_context(open(work / f"{server.name}-{clients}.log", "wb"))
            process, port = start_server(server, processes, log, dtls, tcp)
            started.append((server, process, port, work / f"{server.name}-{clients}.json"))
        runs = []
        start_at = time.time() + TOGETHER_START_S if len(servers) > 1 else None
        for _server, _process, port, result_file in started:
            if dtls:
                uri = f"coaps://{LOOPBACK}:{port + 1}/{PATH}"
            elif tcp:
                uri = f"coap+tcp://{LOOPBACK}:{port}/{PATH}"
            else:
                uri = f"coap://{LOOPBACK}:{port}/{PATH}"
            extra: tuple[str, ...] = ("-i", DTLS_IDENTITY, "-s", DTLS_SECRET) if dtls else ()
            if args.source_addresses:
                extra += ("--source-addresses", args.source_addresses)
            if start_at is not None:
                extra += ("--start-at", f"{start_at:.3f}")
            runs.append(launch_generator(processes, GENERATOR_CPU, uri, clients, args,
                                         result_file, extra))  # fmt: skip
        for run in runs:
            wait_started(run)
        window_start, window_end = shared_window(runs, args)
        sleep_until(window_start, runs[0].process)
        cpu0 = [process_cpu(process.pid) for _s, process, _p, _f in started]
        box0, wall0 = box_cpu(), time.monotonic()
        sleep_until(window_end, runs[0].process)
        cpu1 = [process_cpu(process.pid) for _s, process, _p, _f in started]
        box1, wall1 = box_cpu(), time.monotonic()
        for run, (_server, _process, _port, result_file) in zip(runs, started, strict=True):
            try:
                run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise BenchError("extclient did not finish") from None
            if run.process.returncode != 0 or not result_file.exists():
                raise BenchError(f"extclient failed ({run.process.returncode}):\n{run.tail()}")
    wall = wall1 - wall0
    box_busy = (box1[0] - box0[0]) / wall
    loads = [json.loads(result_file.read_text()) for _s, _p, _port, result_file in started]
    generators_cpu = sum(load["generator_cpu_s"] / load["duration_s"] for load in loads)
    servers_cpu = sum(after - before for before, after in zip(cpu0, cpu1, strict=True)) / wall
    results = []
    for i, (server, _process, _port, _file) in enumerate(started):
        load = loads[i]
        server_cpu = (cpu1[i] - cpu0[i]) / wall
        results.append({
            "server": server.name,
            "clients": clients,
            "together_with": [s.name for s, _p, _port, _f in started if s is not server],
            "start_gap_s": runs[i].started - min(r.started for r in runs),
            "req_per_s": load["req_per_s"],
            "server_cpu_pct": 100 * server_cpu,
            "req_per_server_cpu_s": load["req_per_s"] / server_cpu if server_cpu > 0 else None,
            "generator_cpu_pct": 100 * load["generator_cpu_s"] / load["duration_s"],
            "other_cpu_pct": 100 * max(0.0, box_busy - servers_cpu - generators_cpu),
            "p50_ms": load["latency_ms"]["p50"],
            "p99_ms": load["latency_ms"]["p99"],
            "timeouts": load["transmission_errors"],
            "retransmissions": load["retransmissions"],
            "connections_closed": load.get("connections_closed", 0),  # coap+tcp
            "before": idle,
            "generator": load,
        })  # fmt: skip
    return results


# -- report ----------------------------------------------------------------------------------

COLUMNS = (
    ("server", "{}", 8),
    ("clients", "{}", 7),
    ("req/s", "{:,.0f}", 9),
    ("srv CPU %", "{:.0f}", 9),
    ("req/srv-CPU-s", "{:,.0f}", 13),
    ("vs libcoap", "{:.2f}", 10),
    ("p50 ms", "{:.2f}", 7),
    ("p99 ms", "{:.2f}", 8),
    ("retrans", "{}", 7),
    ("timeouts", "{}", 8),
    ("gen CPU %", "{:.0f}", 9),
    ("other %", "{:.0f}", 7),
    ("busy before", "{}", 11),
    ("load1", "{}", 5),
)


Column = tuple[str, str, int]  # heading, format of a value, width


def format_table(columns: tuple[Column, ...], rows: list[tuple[Any, ...]]) -> str:
    """Right-aligned columns; a None value prints as "-"."""
    lines = [" ".join(f"{name:>{width}}" for name, _, width in columns)]
    for values in rows:
        cells = [
            "-" if value is None else fmt.format(value)
            for (_, fmt, _), value in zip(columns, values, strict=True)
        ]
        lines.append(" ".join(f"{c:>{w}}" for c, (_, _, w) in zip(cells, columns, strict=True)))
    return "\n".join(lines)


def busy_before(run: dict[str, Any]) -> str:
    """The idle wait's last busy share, "!" when the box never became idle."""
    before = run["before"]
    return f"{before['busy_pct']:.0f}%" + ("" if before["idle"] else "!")


def available(server: Server, transport: str, errors: list[str]) -> bool:
    """Whether *server* can run over *transport* here; if not, a note says why."""
    needs = server.dtls_needs if transport == "dtls" else server.needs
    if transport == "dtls" and server.dtls_command is None:
        errors.append(f"{server.name}: no DTLS server, skipped")
    elif transport == "tcp" and server.tcp_command is None:
        errors.append(f"{server.name}: no coap+tcp server, skipped")
    elif needs and not shutil.which(needs):
        errors.append(f"{server.name}: {needs} not found, skipped")
    else:
        return True
    return False


def add_ratios(runs: list[dict[str, Any]]) -> None:
    """Per run: req/srv-CPU-s relative to libcoap's with the same client count in the same
    round, and with --paired in the same pair (None without that run)."""
    baseline = {run_key(r): r["req_per_server_cpu_s"] for r in runs if r["server"] == "libcoap"}
    for r in runs:
        base = baseline.get(run_key(r))
        value = r["req_per_server_cpu_s"]
        r["vs_libcoap"] = value / base if base and value else None


def medians(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per server and client count over the rounds: medians, and the range of the ratio."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["server"], r["clients"]), []).append(r)
    rows = []
    for (server, clients), group in groups.items():
        ratios = [r["vs_libcoap"] for r in group if r["vs_libcoap"] is not None]
        rows.append({
            "server": server, "clients": clients, "rounds": len(group),
            "req_per_s": statistics.median(r["req_per_s"] for r in group),
            "req_per_server_cpu_s": statistics.median(
                r["req_per_server_cpu_s"] for r in group if r["req_per_server_cpu_s"]),
            "vs_libcoap": statistics.median(ratios) if ratios else None,
            "vs_libcoap_range": [min(ratios), max(ratios)] if ratios else None,
        })  # fmt: skip
    return rows


def table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        ratio = r["vs_libcoap"]
        rows.append((
            r["server"], r["clients"], r["req_per_s"], r["server_cpu_pct"],
            r["req_per_server_cpu_s"], ratio, r["p50_ms"], r["p99_ms"], r["retransmissions"],
            r["timeouts"], r["generator_cpu_pct"], r["other_cpu_pct"], busy_before(r),
            r["before"]["loadavg"][0],
        ))  # fmt: skip
    return format_table(COLUMNS, rows)


def host_info() -> dict[str, Any]:
    libcoap = shutil.which("coap-server-notls")
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "libcoap": libcoap,
        "rmem_default": Path("/proc/sys/net/core/rmem_default").read_text().strip(),
        "loadavg": load_average(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="50,500", help="client counts (default 50,500)")
    parser.add_argument("--servers", default="ours,libcoap,aiocoap", help="servers to measure")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before it, s")
    parser.add_argument(
        "--idle-threshold", type=float, default=10.0,
        help="the box counts as idle below this busy %% of all CPUs (default 10)",
    )  # fmt: skip
    parser.add_argument("--idle-settle", type=int, default=3, help="idle seconds in a row")
    parser.add_argument(
        "--idle-timeout", type=float, default=120.0, help="max. wait for an idle box, s"
    )
    parser.add_argument("--transport", choices=("udp", "dtls", "tcp"), default="udp")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="rounds of all runs (1); with more, every ratio is against libcoap's run of the "
        "same round and the medians are printed",
    )  # fmt: skip
    parser.add_argument(
        "--source-addresses", metavar="CIDR",
        help="udp, dtls: the generator's clients send from the addresses of CIDR over one socket "
        "(extclient benchmark --source-addresses), e.g. 127.1.0.0/16",
    )  # fmt: skip
    parser.add_argument(
        "--paired", action="store_true",
        help="run every server at the same time as libcoap (both on CPU 0, a generator each on "
        "CPU 1): a ratio free of the box's drift between runs",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        args.clients = [int(v) for v in args.clients.split(",")]
    except ValueError:
        parser.error("--clients: comma-separated numbers")
    if not args.clients or len(args.clients) > 10 or not all(0 < c <= 20000 for c in args.clients):
        parser.error("--clients: up to 10 counts of 1..20000")
    args.servers = args.servers.split(",")
    for name in args.servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r} (known: {', '.join(SERVERS)})")
    if not 0 < args.duration <= MAX_DURATION or not 0 <= args.warmup <= MAX_WARMUP:
        parser.error(f"--duration 0..{MAX_DURATION:g}, --warmup 0..{MAX_WARMUP:g}")
    if not 0 <= args.idle_timeout <= 600 or not 1 <= args.idle_settle <= 60:
        parser.error("--idle-timeout 0..600, --idle-settle 1..60")
    if not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat 1..{MAX_REPEAT}")
    if args.source_addresses and args.transport == "tcp":
        parser.error("--source-addresses is for --transport udp or dtls")
    if args.paired and ("libcoap" not in args.servers or len(args.servers) < 2):
        parser.error("--paired needs libcoap and another server in --servers")
    return args


@dataclass
class Step:
    """One measurement of a runner's plan: *measure* returns the run's figures (with the idle
    wait's ``before``), *describe* the progress line's figures for it."""

    round: int  # 0-based
    label: str  # what is measured, e.g. "ours, 50 clients"
    measure: Callable[[], dict[str, Any] | list[dict[str, Any]]]  # a run, or runs together
    describe: Callable[[dict[str, Any]], str]


def run_plan(steps: list[Step], errors: list[str]) -> list[dict[str, Any]]:
    """Measure the steps in turn with a progress line each; a failed step becomes a note in
    *errors* and the plan goes on, Ctrl-C ends it. Every run gets its ``round`` (1-based)."""
    runs: list[dict[str, Any]] = []
    try:
        for step in steps:
            where = f"{step.label}, round {step.round + 1}"
            print(f"{where} ...", flush=True)
            try:
                measured = step.measure()
            except (BenchError, subprocess.SubprocessError, OSError) as exc:
                errors.append(f"{where}: {exc}")
                print(f"  failed: {exc}", flush=True)
                continue
            for run in measured if isinstance(measured, list) else [measured]:
                run["round"] = step.round + 1
                before = run["before"]
                print(
                    f"  {step.describe(run)} (load before {before['loadavg']}, busy "
                    f"{before['busy_pct']}%{'' if before['idle'] else ', NOT IDLE'})",
                    flush=True,
                )
                runs.append(run)
    except KeyboardInterrupt:
        errors.append("interrupted")
    return runs


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that the cleanup runs for it too."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def describe(run: dict[str, Any]) -> str:
    return (
        f"{run['server']}: {run['req_per_s']:,.0f} req/s, server {run['server_cpu_pct']:.0f}% CPU"
    )


def plan_steps(
    names: list[str],
    baseline: str,
    args: argparse.Namespace,
    alone: Callable[[str, int], dict[str, Any]],
    together: Callable[[str, int], list[dict[str, Any]]] | None,
    describe: Callable[[dict[str, Any]], str],
) -> list[Step]:
    """Round by round and per client count: every name measured in turn (``alone``), or, given
    ``together``, every other name side by side with *baseline* (the pair's number goes into
    its runs: ``run_key``). Shared by this script and cluster_throughput.py."""
    if together is None:
        return [
            Step(round_, f"{name}, {clients} clients",
                 functools.partial(alone, name, clients), describe)
            for round_ in range(args.repeat) for clients in args.clients for name in names
        ]  # fmt: skip
    measure_pair = together

    def pair(number: int, name: str, clients: int) -> list[dict[str, Any]]:
        runs = measure_pair(name, clients)
        for run in runs:
            run["pair"] = number
        return runs

    others = [name for name in names if name != baseline]
    return [
        Step(round_, f"{name} with {baseline}, {clients} clients",
             functools.partial(pair, number, name, clients), describe)
        for round_ in range(args.repeat) for clients in args.clients
        for number, name in enumerate(others, 1)
    ]  # fmt: skip


def run_key(run: dict[str, Any]) -> tuple[int, int, int]:
    """Which baseline run a run is compared with: same round, client count and pair."""
    return run["round"], run["clients"], run.get("pair", 0)


def plan(servers: list[str], args: argparse.Namespace, work: Path) -> list[Step]:
    """Every server in turn, or with --paired every other server together with libcoap."""

    def alone(name: str, clients: int) -> dict[str, Any]:
        return measure(SERVERS[name], clients, args, work)

    def with_libcoap(name: str, clients: int) -> list[dict[str, Any]]:
        return measure_together([SERVERS[name], SERVERS["libcoap"]], clients, args, work)

    return plan_steps(servers, "libcoap", args, alone, with_libcoap if args.paired else None,
                      describe)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        print("needs 2 CPUs: server on CPU 0, generator on CPU 1", file=sys.stderr)
        return 1
    if not shutil.which("taskset"):
        print("needs taskset (util-linux)", file=sys.stderr)
        return 1
    errors: list[str] = []
    info = host_info()
    print(f"host: {info['cpus']} CPUs, load {info['loadavg']}, kernel {info['kernel']}")
    servers = [name for name in args.servers if available(SERVERS[name], args.transport, errors)]
    with stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        steps = plan(servers, args, Path(tmp))
        runs = run_plan(steps, errors)
    add_ratios(runs)
    summary = medians(runs) if args.repeat > 1 else []
    if runs:
        print()
        print(table(runs))
    if summary:
        against = "its pair's libcoap" if args.paired else "libcoap's run"
        print(f"\nmedians over {args.repeat} rounds (ratio: per round, against {against}):")
        for m in summary:
            ratio = m["vs_libcoap"]
            spread = m["vs_libcoap_range"]
            print(
                f"{m['server']:>10} {m['clients']:>5}: {m['req_per_s']:,.0f} req/s, "
                f"{m['req_per_server_cpu_s']:,.0f} req/srv-CPU-s"
                + (f", {ratio:.2f}x libcoap ({spread[0]:.2f} .. {spread[1]:.2f})" if ratio else "")
            )
    for error in errors:
        print(f"note: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / time.strftime(f"throughput-{args.transport}-%Y%m%d-%H%M%S.json")
    settings = {
        "duration": args.duration,
        "warmup": args.warmup,
        "path": PATH,
        "request": "GET (coap+tcp)" if args.transport == "tcp" else "CON GET",
        "transport": args.transport,
        "source_addresses": args.source_addresses,
        "server_cpu": SERVER_CPU,
        "generator_cpu": GENERATOR_CPU,
        "paired": args.paired,
    }
    out.write_text(
        json.dumps(
            {"host": info, "settings": settings, "runs": runs, "medians": summary, "notes": errors},
            indent=2,
        )
        + "\n"
    )
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if runs and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
