"""DTLS-CID cluster throughput: a 2-node cluster behind ``extnat`` vs one node behind it.

Per client count (default 500) and per setup, on loopback, DTLS 1.2 PSK (CCM-8, 6-byte CID),
CON GET ``/benchmark?rlen=40`` by ``extclient benchmark`` through ``extnat``:

* ``single``: one plain ``extserver --benchmark --dtls-only --no-tcp`` behind the NAT (one
  destination), the baseline;
* ``backward``: a static 2-node cluster (``--dtls-cluster``, backward on, the default) behind
  the NAT with both nodes as destinations;
* ``no-backward``: the same cluster with ``--no-dtls-cluster-backward`` on both nodes, behind
  ``extnat -r`` (an answer from another node re-points the client's NAT entry to it);
* ``no-clear``: the ``backward`` cluster with the NAT's entries kept: every client stays with
  the node of its handshake, nothing is forwarded. This is Californium's own baseline (its
  README's 28,000 req/s before the clear against 22,000 after it), so ``backward`` against
  ``no-clear`` is the forwarding penalty as Californium reports it; against ``single`` it
  also carries the cost of two nodes instead of one;
* ``no-backward-kept``: the ``no-backward`` cluster with the NAT's entries kept, the same
  baseline for it: ``no-backward`` against ``no-backward-kept`` is what the clear costs a
  cluster without backward (Californium: "the 20% penalty is gone").

The handshakes go to the node the NAT picked, whose CID the client then carries, so nothing
would be forwarded. As in Californium's measurement, the NAT's entries are dropped (``clear``
over its control socket) right after the generator printed "Benchmark started.", i.e. at the
start of the warm-up: every client gets a new entry with a random destination, so about half
of the clients now send to the node that does not own their CID. With backward, each of
their records is forwarded to the owner and each answer goes back through the receiving node
for the rest of the run (two extra loopback hops per request); without backward, the owner
answers straight to the NAT, which re-points the entry (-r), so only the first record after
the clear is forwarded. ``clear`` is issued in the ``single`` setup too, so that all setups
have the same transient (the answers in flight at the clear are lost and sent again: the
generator runs with ``--ack-timeout 1000``, so those retransmissions end within the warm-up).

CPU placement (the same in every setup): all server nodes on CPU 0, ``extnat`` and the
generator on CPU 1 (``--nat-cpu 0`` moves the NAT to the nodes' core). On a box with more cores
``--node-cpus 0,1 --nat-cpu 2 --load-cpu 3`` gives every node of a cluster a core of its own,
as nodes on hosts of their own have (the single node takes the first; cluster node N the N-th,
round robin), with ``--node-cpu-budget PCT --budget-per-node`` to saturate them. Over the
generator's measurement window (warm-up excluded) the script takes the CPU time of every node
process and of the NAT (utime + stime from /proc/PID/stat) and the busy time of the whole box.
The figure to compare is requests per node-CPU-second (req/s divided by the summed CPU share of
the nodes); the penalty of a cluster setup is 1 - its figure / the single node's figure, for
req/s and for req per node-CPU-second. At the end each node's ``/diagnose`` (the nodes run with
``--diagnose``) is read over coaps, straight from the node, for its cluster counters
(forwarded, process forwarded, backwarded, send backwarded) and its received records; the NAT's
counters (``stats``: reverse-updates, drops) come over its control socket.

    .venv/bin/python bench/cluster_throughput.py [--clients 500] [--setups single,backward,
        no-backward,no-clear[,no-backward-kept]] [--duration 10] [--warmup 3]
        [--node-cpus 0] [--nat-cpu 1] [--load-cpu 1] [--repeat 1] [--side-by-side]
        [--node-cpu-budget PCT [--budget-per-node] [--budget-period-ms 10]]

``--node-cpu-budget PCT`` caps the nodes together at PCT % of one CPU (a cgroup with a CFS
quota, bench/cpu_budget.py; root): the nodes then are the bottleneck, and req/s compares what
one node and the cluster get done with the same CPU at full load, each with the batches of a
saturated server. Without it the nodes idle most of the time (the NAT and the generator on
CPU 1 set the pace), and two half-loaded nodes on one core batch less than one full node.
With ``--side-by-side`` every setup gets a budget of its own (PCT each); CPU 1 then feeds two
setups, so PCT must stay below what half of it can feed (10-15 % for 500 clients; the
``nodes_throttled_pct`` in the results says whether the budget bit). ``--budget-per-node``
puts every node in a group of its own with its share of PCT (as Kubernetes caps each pod);
a share must come to 1 ms of the period at least (``--budget-period-ms``). ``--keep-single``
spares the single node the clear as well (the baseline without what the clear itself costs).

``--repeat N`` runs all setups N times in turn (round by round, so that a slow spell of the
box hits all setups alike); each run's penalty is against the single node of its round, and
the medians over the rounds are printed at the end.

``--side-by-side`` runs every other setup at the same time as the single node: all nodes on
their CPUs (CPU 0), both NATs and generators as placed, the generators starting their requests
together (``extclient benchmark --start-at``), one window. Runs in turn inherit the VM's drift
between them (10-20 %); setups side by side see the same drift, so each pair's penalty is
steadier. Every node then shares its core with the other setup's nodes too, and CPU 1 carries
two NATs and two generators: the req/s are lower, the per node-CPU-second penalty is the
figure.

As in ``throughput.py`` (whose process and /proc helpers are used): the box must be idle
before each run (bounded wait, recorded either way), only loopback is used, every wait is
bounded, and every process started here is killed at the end, also on Ctrl-C or an error.
Results: a table, and ``bench/results/cluster-<time>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_budget import CpuBudget, CpuBudgetError
from extplugtest.coap._codec import Message, parse
from extplugtest.dtls.handshake_client import ClientHandshake
from throughput import (
    MAX_REPEAT,
    BenchError,
    Generator,
    Processes,
    Step,
    box_cpu,
    busy_before,
    format_table,
    host_info,
    launch_generator,
    load_average,
    plan_steps,
    process_cpu,
    run_key,
    run_plan,
    shared_window,
    sleep_until,
    stop_on_sigterm,
    wait_idle,
    wait_started,
)

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
NODE_CPUS = "0"  # every server node (--node-cpus)
LOAD_CPU = 1  # the generators (--load-cpu) and the NAT (--nat-cpu)
PATH = "benchmark?rlen=40"
IDENTITY, SECRET = "Client_identity", "secretPSK"
ACK_TIMEOUT_MS = 1000  # the answers lost at the clear are sent again within the warm-up
READY_TIMEOUT = 15.0
START_TIMEOUT = 90.0  # handshakes of all clients through the NAT
#: side by side: the generators start their requests together this long after their launch
#: (500 DTLS handshakes through the NAT each, both on CPU 1)
TOGETHER_START_S = 10.0
FINISH_TIMEOUT = 30.0
MAX_DURATION = 60.0
SETUPS = ("single", "backward", "no-backward", "no-clear", "no-backward-kept")
#: the cluster setups whose nodes answer straight to the client, behind ``extnat -r``
DIRECT_ANSWER_SETUPS = ("no-backward", "no-backward-kept")
#: Californium's comparison: a cluster after the clear against the same cluster without it
CLEAR_COMPARISONS = (("backward", "no-clear"), ("no-backward", "no-backward-kept"))
#: the setups whose NAT keeps its entries (no clear): the kept side of each comparison
KEPT_SETUPS = tuple(kept for _cleared, kept in CLEAR_COMPARISONS)
CLUSTER_KEYS = ("forwarded", "process forwarded", "backwarded", "send backwarded",
                "bad forward", "drop forward", "bad backward", "drop backward")  # fmt: skip
NODE_KEYS = (
    *CLUSTER_KEYS,
    "batches sent",
    "cluster datagrams sent",
    "received records",
    "address changes",
    "handshakes succeeded",
)
CONTENT = 0x45


# -- DTLS helpers (our sans-IO client) -------------------------------------------------------


def free_udp_ports(count: int) -> list[int]:
    """*count* distinct free UDP ports of 127.0.0.1 (held until all are chosen)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((LOOPBACK, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def answers_hello(port: int, timeout: float = 0.3) -> bool:
    """True if 127.0.0.1:*port* answers a ClientHello (a node: with a HelloVerifyRequest)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((LOOPBACK, port))
            sock.send(ClientHandshake(IDENTITY.encode(), SECRET.encode()).start())
            return len(sock.recv(4096)) > 0
        except OSError:
            return False


def wait_hello(port: int, process: subprocess.Popen[Any], timeout: float = READY_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    for _attempt in range(1000):
        if time.monotonic() > deadline or process.poll() is not None:
            return False
        if answers_hello(port):
            return True
        time.sleep(0.05)
    return False


def dtls_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    """GET *path* over coaps from 127.0.0.1:*port* (a fresh PSK session): the payload."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((LOOPBACK, port))
        client = ClientHandshake(IDENTITY.encode(), SECRET.encode())
        outgoing = [client.start()]
        for _round in range(50):
            if client.done:
                break
            for datagram in outgoing:
                sock.send(datagram)
            sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
            try:
                outgoing = client.on_datagram(sock.recv(65536))
            except TimeoutError:
                if time.monotonic() > deadline:
                    break
                outgoing = client.retransmit()
        session = client.session
        if not client.done or session is None:
            raise BenchError(f"no DTLS handshake with port {port}")
        request = Message(0, 1, 0x1234, os.urandom(4))
        for segment in path.split("/"):
            request.add_option(11, segment.encode())
        record = session.cipher.seal(1, session.next_write_seq, 23, request.to_bytes())
        session.next_write_seq += 1
        for _round in range(20):
            if time.monotonic() > deadline:
                break
            sock.send(record)  # a retransmission is the same record: the server deduplicates
            sock.settimeout(0.5)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            try:
                content_type, plaintext = session.cipher.open(data)
                response = parse(plaintext)
            except Exception:  # not a record of this session, or no CoAP
                continue
            if content_type == 23 and response.token == request.token:
                if response.code != CONTENT:
                    raise BenchError(f"/{path} on port {port}: code {response.code:#x}")
                return bytes(response.payload)
    raise BenchError(f"no answer to /{path} from port {port}")


def diagnose_counters(port: int) -> dict[str, int]:
    """Every ``name,cur,all`` line of the node's ``/diagnose`` text: cur + all, summed."""
    counters: dict[str, int] = {}
    for line in dtls_get(port, "diagnose").decode(errors="replace").splitlines():
        parts = line.strip().rsplit(",", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            counters[parts[0]] = counters.get(parts[0], 0) + int(parts[1]) + int(parts[2])
    return counters


# -- NAT control -----------------------------------------------------------------------------


def nat_command(control: Path, line: str, timeout: float = 5.0) -> list[str]:
    """One console command over the NAT's control socket: its answer lines."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control))
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n\n") and len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").splitlines()[:-1] if data else []


def nat_stats(control: Path) -> dict[str, int]:
    stats = {}
    for line in nat_command(control, "stats"):
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[name.strip()] = int(value)
    return stats


def nat_usages(control: Path) -> dict[str, int]:
    usages = {}
    for line in nat_command(control, "info"):
        if line.startswith("Destination: ") and ", usage: " in line:
            destination, _, usage = line[len("Destination: ") :].partition(", usage: ")
            if usage.strip().isdigit():
                usages[destination] = int(usage)
    return usages


# -- starting the setup ----------------------------------------------------------------------


@dataclass
class Node:
    node_id: int
    process: subprocess.Popen[Any]
    dtls_port: int


def extserver_base(coap_port: int) -> list[str]:
    return [
        str(VENV_BIN / "extserver"),
        "--benchmark",
        "--diagnose",
        "--dtls-only",
        "--no-tcp",
        "--no-plugtest",
        "--no-external",
        "--no-ipv6",
        "--coap-port",
        str(coap_port),
    ]


def node_cpu(node_id: int, args: argparse.Namespace) -> int:
    """The CPU of node *node_id* (1, 2, ...; the single node is node 1): the --node-cpus
    list in turn."""
    return args.node_cpus[(node_id - 1) % len(args.node_cpus)]


def start_nodes(
    setup: str, processes: Processes, log: IO[bytes], args: argparse.Namespace
) -> list[Node]:
    if setup == "single":
        coap_port, dtls_port = free_udp_ports(1)[0], 0
        for _attempt in range(5):  # the coaps port is the next one: it must be free too
            coap_port = free_udp_ports(1)[0]
            dtls_port = coap_port + 1
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((LOOPBACK, dtls_port))
                except OSError:
                    continue
            break
        commands = [(1, dtls_port, extserver_base(coap_port))]
    else:
        ports = free_udp_ports(6)  # per node: DTLS, management, (unused) CoAP
        specs = [(1, ports[0], ports[1], ports[2]), (2, ports[3], ports[4], ports[5])]
        commands = []
        for node_id, dtls, _mgmt, coap in specs:
            cluster = ",".join(
                f"{f'{LOOPBACK}:{d}' if n == node_id else '---'};{LOOPBACK}:{m};{n}"
                for n, d, m, _c in specs
            )
            extra = ["--no-dtls-cluster-backward"] if setup in DIRECT_ANSWER_SETUPS else []
            commands.append((node_id, dtls, [*extserver_base(coap), "--dtls-cluster", cluster,
                                             *extra]))  # fmt: skip
    nodes = []
    for node_id, dtls_port, command in commands:
        pinned = ["taskset", "-c", str(node_cpu(node_id, args)), *command]
        process = processes.start(pinned, stdout=log, stderr=subprocess.STDOUT)
        nodes.append(Node(node_id, process, dtls_port))
    for node in nodes:
        if not wait_hello(node.dtls_port, node.process):
            raise BenchError(f"node {node.node_id} ({setup}) did not answer a ClientHello")
    return nodes


def start_nat(
    setup: str, nodes: list[Node], clients: int, args: argparse.Namespace, processes: Processes,
    log: IO[bytes], work: Path,
) -> tuple[subprocess.Popen[Any], int, Path]:  # fmt: skip
    control = work / f"nat-{setup}-{clients}.sock"
    with_reverse = ["-r"] if setup in DIRECT_ANSWER_SETUPS else []
    for _attempt in range(3):
        (port,) = free_udp_ports(1)
        command = [
            "taskset", "-c", str(args.nat_cpu), str(VENV_BIN / "extnat"), f"{LOOPBACK}:{port}",
            *(f"{LOOPBACK}:{node.dtls_port}" for node in nodes), f"-n={max(2 * clients, 10000)}",
            *with_reverse, "--no-console", "--control", str(control),
        ]  # fmt: skip
        process = processes.start(command, stdout=log, stderr=subprocess.STDOUT)
        if wait_hello(port, process):
            deadline = time.monotonic() + READY_TIMEOUT
            while not control.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            if control.exists():
                nat_command(control, "clear")  # the probe's entry
                return process, port, control
        processes.stop(process)
    raise BenchError("extnat did not pass a ClientHello to a node")


# -- one run ---------------------------------------------------------------------------------


@dataclass
class Started:
    """A setup behind its NAT, with its generator launched."""

    setup: str
    nodes: list[Node]
    nat: subprocess.Popen[Any]
    nat_port: int
    control: Path
    result_file: Path


@dataclass
class Sample:
    """CPU seconds and NAT counters of a setup at one moment."""

    nodes: dict[int, float]
    nat: float
    stats: dict[str, int]


def sample(entry: Started) -> Sample:
    return Sample(
        {node.process.pid: process_cpu(node.process.pid) for node in entry.nodes},
        process_cpu(entry.nat.pid),
        nat_stats(entry.control),
    )


def launch_setup_generator(
    processes: Processes, entry: Started, clients: int, args: argparse.Namespace,
    start_at: float | None = None,
) -> Generator:  # fmt: skip
    """``extclient benchmark`` of *clients* through the setup's NAT (PSK, the runner's ACK
    timeout; starting its requests at *start_at* when given), launched."""
    uri = f"coaps://{LOOPBACK}:{entry.nat_port}/{PATH}"
    extra: tuple[str, ...] = ("-i", IDENTITY, "-s", SECRET, "--ack-timeout", str(ACK_TIMEOUT_MS))
    if start_at is not None:
        extra += ("--start-at", f"{start_at:.3f}")
    return launch_generator(
        processes, str(args.load_cpu), uri, clients, args, entry.result_file, extra
    )


def keeps_entries(setup: str, args: argparse.Namespace) -> bool:
    """Does the setup's NAT keep its entries (no clear)? no-clear and no-backward-kept
    always, the single node with --keep-single."""
    return setup in KEPT_SETUPS or (setup == "single" and args.keep_single)


def budget_shares(setup: str, args: argparse.Namespace) -> list[float]:
    """The CPU quotas (% of one CPU) of a setup's nodes: none without --node-cpu-budget; one
    group for all its nodes; or with --budget-per-node a group per node, each with its share
    of the setup's budget (as Kubernetes caps every pod on its own)."""
    if not args.node_cpu_budget:
        return []
    if not args.budget_per_node:
        return [args.node_cpu_budget]
    nodes = 1 if setup == "single" else 2
    return [args.node_cpu_budget / nodes] * nodes


def period_us(args: argparse.Namespace) -> int:
    return int(args.budget_period_ms * 1000)


def throttled_s(groups: list[CpuBudget]) -> float:
    """Seconds a setup's nodes were held back so far (a group per node: their mean)."""
    return sum(group.throttled_s() for group in groups) / len(groups) if groups else 0.0


def measure(setup: str, clients: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One setup alone."""
    return measure_together([setup], clients, args, work)[0]


def measure_together(
    setups: list[str], clients: int, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    """The setups at the same time (nodes, NATs and generators on their CPUs), their
    generators starting their requests together (--start-at); figures over one window."""
    idle = wait_idle(args.idle_threshold, args.idle_settle, args.idle_timeout)
    with contextlib.ExitStack() as stack:
        # a budget per setup (side by side, each setup's nodes get the same CPU); the groups go
        # after their processes (ExitStack: last in, first out)
        budgets = [
            [
                stack.enter_context(CpuBudget(share, period_us(args)))
                for share in budget_shares(setup, args)
            ]
            for setup in setups
        ]
        processes = stack.enter_context(Processes())
        entries: list[Started] = []
        for setup, groups in zip(setups, budgets, strict=True):
            name = f"{setup}-{clients}"
            log = stack.enter_context(open(work / f"{name}.log", "wb"))
            nodes = start_nodes(setup, processes, log, args)
            for k, node in enumerate(nodes):  # one group for all, or a group per node
                if groups:
                    groups[k % len(groups)].add(node.process.pid)
            nat, nat_port, control = start_nat(setup, nodes, clients, args, processes, log, work)
            entries.append(Started(setup, nodes, nat, nat_port, control, work / f"{name}.json"))
        start_at = time.time() + TOGETHER_START_S if len(setups) > 1 else None
        runs: list[Generator] = []
        for entry in entries:
            runs.append(launch_setup_generator(processes, entry, clients, args, start_at))
        for run in runs:
            wait_started(run, START_TIMEOUT)
        # every client to a new NAT entry with a random node (Californium's "clear")
        usages_before, cleared, cleared_after = [], [], []
        for entry, run in zip(entries, runs, strict=True):
            usages_before.append(nat_usages(entry.control))
            cleared.append(["(kept)"] if keeps_entries(entry.setup, args)
                           else nat_command(entry.control, "clear"))  # fmt: skip
            cleared_after.append(time.monotonic() - run.started)
        window_start, window_end = shared_window(runs, args)
        sleep_until(window_start, runs[0].process)
        samples0 = [sample(entry) for entry in entries]
        throttled0 = [throttled_s(groups) for groups in budgets]
        box0, wall0 = box_cpu(), time.monotonic()
        sleep_until(window_end, runs[0].process)
        samples1 = [sample(entry) for entry in entries]
        throttled1 = [throttled_s(groups) for groups in budgets]
        box1, wall1 = box_cpu(), time.monotonic()
        usages_after = [nat_usages(entry.control) for entry in entries]
        for entry, run in zip(entries, runs, strict=True):
            try:
                run.process.wait(timeout=FINISH_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise BenchError("extclient did not finish") from None
            if run.process.returncode != 0 or not entry.result_file.exists():
                raise BenchError(f"extclient failed ({run.process.returncode}):\n{run.tail()}")
        # the cluster counters of every node, straight from the node (includes the warm-up)
        counters = []
        for entry in entries:
            of_setup = {}
            for node in entry.nodes:
                seen = diagnose_counters(node.dtls_port)
                of_setup[str(node.node_id)] = {key: seen.get(key, 0) for key in NODE_KEYS}
            counters.append(of_setup)
        stats_end = [nat_stats(entry.control) for entry in entries]
    wall = wall1 - wall0
    box_busy = (box1[0] - box0[0]) / wall
    loads = [json.loads(entry.result_file.read_text()) for entry in entries]
    busy_known = sum(
        sum(samples1[i].nodes[pid] - samples0[i].nodes[pid] for pid in samples0[i].nodes)
        + samples1[i].nat
        - samples0[i].nat
        for i in range(len(entries))
    ) / wall + sum(load["generator_cpu_s"] / load["duration_s"] for load in loads)
    results = []
    for i, entry in enumerate(entries):
        load, before, after = loads[i], samples0[i], samples1[i]
        cpu_by_node = {str(n.node_id): (after.nodes[n.process.pid] - before.nodes[n.process.pid])
                       / wall for n in entry.nodes}  # fmt: skip
        nodes_cpu = sum(cpu_by_node.values())
        nat_cpu = (after.nat - before.nat) / wall
        generator_cpu = load["generator_cpu_s"] / load["duration_s"]
        nat_delta = {key: after.stats[key] - before.stats.get(key, 0) for key in after.stats}
        received = sum(c["received records"] for c in counters[i].values())
        forwarded = sum(c["forwarded"] for c in counters[i].values())
        results.append({
            "setup": entry.setup,
            "clients": clients,
            "together_with": [e.setup for e in entries if e is not entry],
            "start_gap_s": runs[i].started - min(r.started for r in runs),
            "req_per_s": load["req_per_s"],
            "nodes_cpu_pct": 100 * nodes_cpu,
            "node_cpu_budget_pct": args.node_cpu_budget,
            "budget_per_node": args.budget_per_node,
            "nodes_throttled_pct": 100 * (throttled1[i] - throttled0[i]) / wall,
            "node_cpu_pct": {k: round(100 * v, 1) for k, v in cpu_by_node.items()},
            "req_per_node_cpu_s": load["req_per_s"] / nodes_cpu if nodes_cpu > 0 else None,
            "nat_cpu_pct": 100 * nat_cpu,
            "generator_cpu_pct": 100 * generator_cpu,
            "other_cpu_pct": 100 * max(0.0, box_busy - busy_known),
            "box_busy_pct": 100 * box_busy,
            "p50_ms": load["latency_ms"]["p50"],
            "p99_ms": load["latency_ms"]["p99"],
            "retransmissions": load["retransmissions"],
            "timeouts": load["transmission_errors"],
            "cleared": cleared[i],
            "cleared_after_s": round(cleared_after[i], 3),
            "nat_usages_before_clear": usages_before[i],
            "nat_usages_end": usages_after[i],
            "nat_window": {k: v for k, v in nat_delta.items() if v},
            "nat_end": {k: v for k, v in stats_end[i].items() if v},
            "node_counters": counters[i],
            "forwarded_share": forwarded / received if received else None,
            "before": idle,
            "generator": load,
        })  # fmt: skip
    return results


# -- report ----------------------------------------------------------------------------------

COLUMNS = (
    ("setup", "{}", 11),
    ("rnd", "{}", 3),
    ("clients", "{}", 7),
    ("req/s", "{:,.0f}", 8),
    ("pen.", "{:+.1%}", 6),
    ("nodes CPU %", "{}", 11),
    ("req/node-CPU-s", "{:,.0f}", 14),
    ("pen.", "{:+.1%}", 6),
    ("NAT CPU %", "{:.0f}", 9),
    ("gen CPU %", "{:.0f}", 9),
    ("other %", "{:.0f}", 7),
    ("p50 ms", "{:.2f}", 6),
    ("p99 ms", "{:.2f}", 6),
    ("retr", "{}", 5),
    ("fwd %", "{:.0%}", 5),
    ("busy bef.", "{}", 9),
    ("load1", "{}", 5),
)


PENALTIES = (("req_per_s", "penalty_req_per_s"),
             ("req_per_node_cpu_s", "penalty_req_per_node_cpu_s"))  # fmt: skip


def penalties(runs: list[dict[str, Any]]) -> None:
    """Per run: 1 - figure / the single node's figure of the same round and client count (and
    side by side, of the same pair)."""

    base = {run_key(r): r for r in runs if r["setup"] == "single"}
    for r in runs:
        b = base.get(run_key(r))
        for key, out in PENALTIES:
            r[out] = 1 - r[key] / b[key] if b and b[key] and r[key] else None


def clear_penalties(
    runs: list[dict[str, Any]],
) -> dict[int, dict[str, dict[str, list[float]]]]:
    """Per client count and CLEAR_COMPARISONS pair ("backward against no-clear"), the penalty
    of the cleared setup against the kept one (Californium's comparison) per round: each
    figure taken relative to the single node it ran with (in turn: of its round), so that the
    box's drift between the two cancels."""
    out: dict[int, dict[str, dict[str, list[float]]]] = {}
    by_round: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault((r["clients"], r["round"]), {})[r["setup"]] = r
    for (clients, _round), setups in sorted(by_round.items()):
        for cleared_setup, kept_setup in CLEAR_COMPARISONS:
            cleared, kept = setups.get(cleared_setup), setups.get(kept_setup)
            if not cleared or not kept:
                continue
            figures = out.setdefault(clients, {}).setdefault(
                f"{cleared_setup} against {kept_setup}", {}
            )
            for key, penalty in PENALTIES:
                if cleared[penalty] is not None and kept[penalty] is not None:
                    value = 1 - (1 - cleared[penalty]) / (1 - kept[penalty])
                    figures.setdefault(key, []).append(value)
    return out


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With several rounds: the median of every figure per setup and client count."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["clients"], r["setup"]), []).append(r)
    medians = []
    for (clients, setup), group in groups.items():
        row: dict[str, Any] = {"setup": setup, "clients": clients, "rounds": len(group)}
        for key in ("req_per_s", "nodes_cpu_pct", "req_per_node_cpu_s", "nat_cpu_pct",
                    "forwarded_share", *(out for _, out in PENALTIES)):  # fmt: skip
            values = [r[key] for r in group if r[key] is not None]
            row[key] = statistics.median(values) if values else None
        medians.append(row)
    return medians


def table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        rows.append((
            r["setup"], r["round"], r["clients"], r["req_per_s"], r["penalty_req_per_s"],
            "+".join(f"{v:.0f}" for v in r["node_cpu_pct"].values()),
            r["req_per_node_cpu_s"], r["penalty_req_per_node_cpu_s"], r["nat_cpu_pct"],
            r["generator_cpu_pct"], r["other_cpu_pct"], r["p50_ms"], r["p99_ms"],
            r["retransmissions"], r["forwarded_share"], busy_before(r),
            r["before"]["loadavg"][0],
        ))  # fmt: skip
    return format_table(COLUMNS, rows)


def counters_report(runs: list[dict[str, Any]]) -> str:
    lines = []
    for r in runs:
        for node_id, counters in r["node_counters"].items():
            shown = ", ".join(f"{k} {v}" for k, v in counters.items() if v)
            lines.append(f"{r['setup']:>11} {r['clients']:>5} node {node_id}: {shown}")
        nat = r["nat_end"]
        picked = ", ".join(f"{d} {u}" for d, u in r["nat_usages_end"].items())
        lines.append(
            f"{r['setup']:>11} {r['clients']:>5} NAT: entries per node {picked}; "
            f"reverse-updates {nat.get('reverse-updates', 0)}, wrong-routed "
            f"{nat.get('wrong-routed', 0)}, {' '.join(r['cleared'])} "
            f"({r['cleared_after_s']:.2f} s after the start)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="500", help="client counts, e.g. 50,500 (500)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=",".join(SETUPS))
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, s")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up before it, s")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all setups (1)")
    parser.add_argument(
        "--node-cpus", default=NODE_CPUS, metavar="CPUS",
        help="CPUs of the server nodes: the single node on the first, cluster node N on the "
        "N-th in turn (0: all nodes on CPU 0; 0,1 on a box with 4+ CPUs: a core per node)",
    )  # fmt: skip
    parser.add_argument("--load-cpu", type=int, default=LOAD_CPU,
                        help="CPU of the generators (1)")  # fmt: skip
    parser.add_argument(
        "--nat-cpu", type=int,
        help="CPU of extnat: the generators' (default) or e.g. 0, with the nodes",
    )  # fmt: skip
    parser.add_argument(
        "--node-cpu-budget", type=float, metavar="PCT",
        help="cap the nodes of a setup together at PCT %% of one CPU (cgroup quota; root), "
        "so that they are the bottleneck",
    )  # fmt: skip
    parser.add_argument(
        "--budget-per-node", action="store_true",
        help="with --node-cpu-budget: every node in a group of its own with its share of the "
        "setup's budget (PCT / nodes), as Kubernetes caps each pod, instead of one group",
    )  # fmt: skip
    parser.add_argument(
        "--keep-single", action="store_true",
        help="no clear for the single node either: the baseline without the clear's effect "
        "(its lost answers come back later, in another order)",
    )  # fmt: skip
    parser.add_argument("--budget-period-ms", type=float, default=10.0,
                        help="the period of the CPU quotas (10 ms)")  # fmt: skip
    parser.add_argument(
        "--side-by-side", action="store_true",
        help="run every other setup at the same time as the single node (all nodes, NATs and "
        "generators on their CPUs): a penalty free of the box's drift between runs",
    )  # fmt: skip
    parser.add_argument("--idle-threshold", type=float, default=10.0, help="idle below this %%")
    parser.add_argument("--idle-settle", type=int, default=3, help="idle seconds in a row")
    parser.add_argument("--idle-timeout", type=float, default=120.0, help="max. idle wait, s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        args.clients = [int(v) for v in args.clients.split(",")]
    except ValueError:
        parser.error("--clients: comma-separated numbers")
    if not args.clients or len(args.clients) > 10 or not all(0 < c <= 5000 for c in args.clients):
        parser.error("--clients: up to 10 counts of 1..5000")
    if not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat 1..{MAX_REPEAT}")
    args.setups = args.setups.split(",")
    if not set(args.setups) <= set(SETUPS):
        parser.error(f"--setups: {', '.join(SETUPS)}")
    if not 0 < args.duration <= MAX_DURATION or not 2 <= args.warmup <= 30:
        parser.error(f"--duration 0..{MAX_DURATION:g}, --warmup 2..30 (the clear's transient)")
    if not 0 <= args.idle_timeout <= 600 or not 1 <= args.idle_settle <= 60:
        parser.error("--idle-timeout 0..600, --idle-settle 1..60")
    if args.side_by_side and ("single" not in args.setups or len(args.setups) < 2):
        parser.error("--side-by-side needs single and another setup in --setups")
    if not 1 <= args.budget_period_ms <= 1000:
        parser.error("--budget-period-ms 1..1000")
    try:
        args.node_cpus = [int(cpu) for cpu in args.node_cpus.split(",")]
    except ValueError:
        parser.error("--node-cpus: comma-separated CPU numbers, e.g. 0 or 0,1")
    if args.nat_cpu is None:
        args.nat_cpu = args.load_cpu
    usable = os.sched_getaffinity(0)
    for option, cpus in (("--node-cpus", args.node_cpus), ("--load-cpu", [args.load_cpu]),
                         ("--nat-cpu", [args.nat_cpu])):  # fmt: skip
        if not set(cpus) <= usable:
            parser.error(f"{option}: CPUs this process may use: "
                         f"{','.join(map(str, sorted(usable)))}")  # fmt: skip
    if args.budget_per_node and not args.node_cpu_budget:
        parser.error("--budget-per-node needs --node-cpu-budget")
    if args.node_cpu_budget is not None:
        try:
            for share in {s for setup in args.setups for s in budget_shares(setup, args)}:
                CpuBudget(share, period_us(args)).close()  # fails early: no cgroup, not root
        except (CpuBudgetError, OSError) as exc:
            parser.error(f"--node-cpu-budget: {exc}")
    return args


def describe(run: dict[str, Any]) -> str:
    return (
        f"{run['setup']}: {run['req_per_s']:,.0f} req/s, nodes {run['nodes_cpu_pct']:.0f}% CPU, "
        f"NAT {run['nat_cpu_pct']:.0f}%"
    )


def plan(args: argparse.Namespace, work: Path) -> list[Step]:
    """Every setup in turn, or with --side-by-side every other setup together with the single
    node."""

    def alone(setup: str, clients: int) -> dict[str, Any]:
        return measure(setup, clients, args, work)

    def with_single(setup: str, clients: int) -> list[dict[str, Any]]:
        return measure_together(["single", setup], clients, args, work)

    return plan_steps(args.setups, "single", args, alone,
                      with_single if args.side_by_side else None, describe)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not shutil.which("taskset"):
        print("needs taskset (util-linux) to pin the nodes, the NAT and the generators",
              file=sys.stderr)  # fmt: skip
        return 1
    info = host_info()
    print(
        f"host: {info['cpus']} CPUs, load {load_average()}, kernel {info['kernel']}; "
        f"nodes on CPU {','.join(map(str, args.node_cpus))}, generator on CPU {args.load_cpu}, "
        f"NAT on CPU {args.nat_cpu}"
    )
    errors: list[str] = []
    with stop_on_sigterm(), tempfile.TemporaryDirectory(prefix="cluster-throughput-") as tmp:
        runs = run_plan(plan(args, Path(tmp)), errors)
    penalties(runs)
    medians = summary(runs) if args.repeat > 1 else []
    if runs:
        print()
        print(table(runs))
        print()
        print(counters_report(runs))
    if medians:
        print(f"\nmedians over {args.repeat} rounds:")
        for m in medians:
            print(
                f"{m['setup']:>11} {m['clients']:>5}: {m['req_per_s']:,.0f} req/s "
                f"({m['penalty_req_per_s'] or 0:+.1%}), nodes {m['nodes_cpu_pct']:.0f}% CPU, "
                f"{m['req_per_node_cpu_s']:,.0f} req/node-CPU-s "
                f"({m['penalty_req_per_node_cpu_s'] or 0:+.1%}), NAT {m['nat_cpu_pct']:.0f}% CPU, "
                f"forwarded {m['forwarded_share'] or 0:.0%}"
            )
    clear_figures = clear_penalties(runs)
    for clients, comparisons in clear_figures.items():
        for comparison, figures in comparisons.items():
            shown = ", ".join(
                f"{key.replace('_', ' ')} {statistics.median(values):+.1%} "
                f"({', '.join(f'{v:+.1%}' for v in values)})"
                for key, values in figures.items()
            )
            print(f"\nthe clear's penalty, {comparison}, {clients} clients: {shown}")
    for error in errors:
        print(f"note: {error}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / time.strftime("cluster-%Y%m%d-%H%M%S.json")
    settings = {
        "duration": args.duration,
        "warmup": args.warmup,
        "path": PATH,
        "request": "CON GET over DTLS (PSK, CID)",
        "ack_timeout_ms": ACK_TIMEOUT_MS,
        "node_cpus": args.node_cpus,
        "generator_cpu": args.load_cpu,
        "nat_cpu": args.nat_cpu,
        "node_cpu_budget_pct": args.node_cpu_budget,
        "budget_per_node": args.budget_per_node,
        "keep_single": args.keep_single,
        "budget_period_ms": args.budget_period_ms,
        "side_by_side": args.side_by_side,
    }
    out.write_text(
        json.dumps(
            {
                "host": info,
                "settings": settings,
                "runs": runs,
                "medians": medians,
                "clear_penalties": clear_figures,
                "notes": errors,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0 if runs and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
