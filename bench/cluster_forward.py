"""The cluster's forward path with the two nodes in two processes: node CPU per request when
every record goes straight to its owner, against every record forwarded and back.

Node 1 (the router) and node 2 (the owner of ``--connections`` established DTLS connections)
are the ClusterEngines of ``cluster_engines.py``, each forked into a process of its own on
CPU 0 with a plain epoll loop (no server, no NAT). The client, this process on CPU 1, has a
UDP socket per connection and keeps one ``GET /benchmark`` record per connection in flight:
to node 2 (``direct``) or to node 1, which forwards it to node 2 and sends the answer back
(``forward``, backward on, batches on). Over the window (after the warm-up) the nodes' CPU
time (utime + stime from /proc) per answered request is the figure; ``forward`` minus
``direct`` is what a forwarded record costs the two nodes, the extra hops included.

``--budget PCT`` puts both nodes into one cgroup with a CFS quota (bench/cpu_budget.py, root),
as ``cluster_throughput.py --node-cpu-budget`` does, with ``--period-ms`` as its period: the
nodes are then the bottleneck, at the price of being throttled every period. With
``--budget-per-node`` each node gets a group of its own with that quota (as Kubernetes caps
each pod), so the two do not have to share one quota's turns.

    .venv/bin/python bench/cluster_forward.py [--connections 256] [--duration 6]
        [--warmup 2] [--repeat 3] [--budget PCT [--budget-per-node]] [--period-ms 10]

The modes alternate, ``--repeat`` runs of each; the medians are printed at the end. Loopback
only; every wait is bounded; the node processes are killed at the end of every run.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_engines import (
    OWNER,
    ROUTER,
    SOCKET_NAMES,
    client_sealers,
    cluster_engine,
    owner_cids,
    request_record,
    udp_socket,
)
from cpu_budget import CpuBudget, CpuBudgetError
from throughput import MAX_REPEAT, process_cpu

NODE_CPU, CLIENT_CPU = 0, 1
ANSWER_TIMEOUT = 2.0  # seconds without any answer: the run failed
NODE_GRACE = 10.0  # a node process ends by itself this long after the run's planned end


def serve_node(node: int, sockets: dict, clients: list[tuple], until: float) -> None:
    """The body of a node's process: its engine on its two sockets until *until*."""
    os.sched_setaffinity(0, {NODE_CPU})
    engine = cluster_engine(node, sockets, clients)
    dtls, management = (sockets[name].fileno() for name in SOCKET_NAMES[node])
    poller = select.epoll()
    poller.register(dtls, select.EPOLLIN)
    poller.register(management, select.EPOLLIN)
    while time.monotonic() < until:
        for fd, _event in poller.poll(0.5):
            if fd == dtls:
                engine.on_readable()
            else:
                engine.on_management_readable()


def run(mode: str, args: argparse.Namespace) -> dict:
    """One run of *mode* (direct or forward): requests answered and node CPU in the window."""
    sockets = {name: udp_socket() for names in SOCKET_NAMES.values() for name in names}
    clients = [udp_socket() for _ in range(args.connections)]
    addresses = [client.getsockname() for client in clients]
    until = time.monotonic() + args.warmup + args.duration + NODE_GRACE
    pids = []
    budgets: list[CpuBudget] = []
    try:
        for node in (ROUTER, OWNER):
            pid = os.fork()
            if pid == 0:
                try:
                    serve_node(node, sockets, addresses, until)
                finally:
                    os._exit(0)
            pids.append(pid)
        if args.budget:  # one group for both nodes, or (--budget-per-node) one each
            groups = len(pids) if args.budget_per_node else 1
            for _group in range(groups):
                budgets.append(CpuBudget(args.budget, int(args.period_ms * 1000)))
            for k, pid in enumerate(pids):
                budgets[k % groups].add(pid)
        return drive(mode, clients, sockets, pids, args)
    finally:
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        for budget in budgets:
            budget.close()
        for sock in [*sockets.values(), *clients]:
            sock.close()


def drive(mode: str, clients: list, sockets: dict, pids: list[int],
          args: argparse.Namespace) -> dict:  # fmt: skip
    """The client's closed loop: a new record on a connection for each of its answers."""
    os.sched_setaffinity(0, {CLIENT_CPU})
    target = sockets["dtls1" if mode == "forward" else "dtls2"].getsockname()
    sealers = client_sealers(owner_cids(len(clients)))
    seqs = [0] * len(clients)
    poller = select.epoll()
    index_of = {}
    for i, client in enumerate(clients):
        poller.register(client.fileno(), select.EPOLLIN)
        index_of[client.fileno()] = i

    def send(i: int) -> None:
        seqs[i] += 1
        clients[i].sendto(request_record(sealers[i], seqs[i], seqs[i] * len(clients) + i), target)

    time.sleep(0.5)  # the nodes' engines are set up
    for i in range(len(clients)):
        send(i)
    answered = 0
    start = time.monotonic()
    window = None
    while True:
        now = time.monotonic()
        if window is None and now - start >= args.warmup:
            window = (now, [process_cpu(pid) for pid in pids], answered)
        if window is not None and now - window[0] >= args.duration:
            break
        events = poller.poll(ANSWER_TIMEOUT)
        if not events:
            raise RuntimeError(f"{mode}: no answer for {ANSWER_TIMEOUT:g} s")
        for fd, _event in events:
            i = index_of[fd]
            for _ in range(64):  # bounded: a connection has one request in flight
                try:
                    clients[i].recv(2048)
                except BlockingIOError:
                    break
                answered += 1
                send(i)
    assert window is not None
    seconds = time.monotonic() - window[0]
    cpu = [after - before for before, after in zip(window[1], map(process_cpu, pids),
                                                   strict=True)]  # fmt: skip
    requests = answered - window[2]
    return {
        "mode": mode,
        "req_per_s": requests / seconds,
        "node_cpu_pct": [round(100 * c / seconds, 1) for c in cpu],
        "us_per_request": 1e6 * sum(cpu) / requests,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each mode (3)")
    parser.add_argument("--budget", type=float, metavar="PCT",
                        help="both nodes in one cgroup with this CPU quota (root)")  # fmt: skip
    parser.add_argument("--budget-per-node", action="store_true",
                        help="each node in a group of its own with the whole --budget")  # fmt: skip
    parser.add_argument("--period-ms", type=float, default=10.0, help="the quota's period")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 4096:
        parser.error("--connections 1..4096")
    if not (1 <= args.duration <= 60 and 0 <= args.warmup <= 30
            and 1 <= args.repeat <= MAX_REPEAT):  # fmt: skip
        parser.error(f"--duration 1..60, --warmup 0..30, --repeat 1..{MAX_REPEAT}")
    if not 1 <= args.period_ms <= 1000:
        parser.error("--period-ms 1..1000")
    if args.budget_per_node and args.budget is None:
        parser.error("--budget-per-node needs --budget")
    if args.budget is not None:
        try:
            CpuBudget(args.budget, int(args.period_ms * 1000)).close()  # no cgroup, not root
        except CpuBudgetError as exc:
            parser.error(f"--budget: {exc}")
    if (os.cpu_count() or 1) < 2:
        parser.error("needs 2 CPUs (the nodes on CPU 0, the client on CPU 1)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[str, list[float]] = {"direct": [], "forward": []}
    for _round in range(args.repeat):
        for mode in runs:
            result = run(mode, args)
            runs[mode].append(result["us_per_request"])
            print(f"{mode:>8}: {result['req_per_s']:>9,.0f} req/s, node CPU "
                  f"{result['node_cpu_pct']} %, {result['us_per_request']:.2f} us per request",
                  flush=True)  # fmt: skip
    direct, forward = (statistics.median(runs[mode]) for mode in ("direct", "forward"))
    extra = forward - direct
    print(f"medians: direct {direct:.2f} us, forward {forward:.2f} us per request: "
          f"{extra:+.2f} us per forwarded record ({extra / direct:+.0%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
