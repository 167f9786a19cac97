"""The DTLS-CID cluster with every node in its own network namespace (issue 7).

test_cluster.py runs all nodes on 127.0.0.1 with different ports; here every node has its own
network stack and its own address, as the nodes of a real cluster (pods, hosts) have:

    namespace hub:  bridge br0 ---- veth ---- namespace n1: eth0 10.77.S.11  extserver node 1
                                |-- veth ---- namespace n2: eth0 10.77.S.12  extserver node 2
                                '-- veth ---- namespace lb: eth0 10.77.S.1   extnat + clients

(S random per run; the namespaces are connected to nothing else, so the subnet is private.)
Both nodes use the same ports (DTLS 5784, management 5884) on their own addresses, with the
README's static ``--dtls-cluster``. extnat in ``lb`` balances 10.77.S.1:5784 over the nodes;
the DTLS clients (tests/interop/netns_cluster_client.py, a JSON line driver) run in ``lb`` too,
bound to 10.77.S.1. The forwarding between nodes crosses namespaces: a record sent to the node
that does not own its CID goes from that node's management socket to the owner's, through the
bridge, and the answer comes back the same way (backward).

extnat's ``--control`` socket is a path in the filesystem, reachable from the test process in
the root namespace. Namespace names carry the test's pid; everything (processes, namespaces,
and so the veths and the bridge) is removed at the end, also on failure. Skipped when not root,
without iproute2, or where network namespaces cannot be created.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import die_with_parent, find_tool, nat_destination_usages
from tests.interop.cluster_helpers import (
    CONTENT,
    EXTNAT,
    RUN_CLI,
    parse_context,
    parse_counters,
    stop_process,
    wait_for,
)

from extplugtest.tools.nat_console import send_command

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

PREFIX = "xptns"  # namespace names: xptns<pid>-<role>
DTLS_PORT, MGMT_PORT = 5784, 5884
VIA = "dtls-cid-router"
STEP_TIMEOUT = 30.0  # one driver command, at most
CLIENT_SCRIPT = Path(__file__).with_name("netns_cluster_client.py")

Address = tuple[str, int]


def show(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


# -- the namespaces ---------------------------------------------------------------------------


def run_ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs whose process is gone (a run killed before its teardown)."""
    listing = run_ip("netns", "list").stdout
    for match in re.finditer(rf"^({PREFIX}(\d+)-\w+)", listing, re.MULTILINE):
        if not Path(f"/proc/{match.group(2)}").exists():
            run_ip("netns", "delete", match.group(1))


class NetnsLab:
    """Network namespaces on one bridge (in the namespace ``hub``), each with an address."""

    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.subnet = random.randrange(256)
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []

    def address(self, host: int) -> str:
        return f"10.77.{self.subnet}.{host}"

    def check(self, *args: str) -> str:
        result = run_ip(*args)
        if result.returncode:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def add_namespace(self, role: str) -> str:
        name = f"{self.tag}-{role}"
        self.check("netns", "add", name)
        self.namespaces.append(name)
        self.check("-n", name, "link", "set", "lo", "up")
        return name

    def create_hub(self) -> None:
        self.hub = self.add_namespace("hub")
        self.check("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self.check("-n", self.hub, "link", "set", "br0", "up")

    def attach(self, role: str, host: int) -> tuple[str, str]:
        """A namespace with eth0 = *host* in the subnet, on the hub's bridge: (name, address)."""
        name = self.add_namespace(role)
        port = f"p-{role}"
        self.check("-n", self.hub, "link", "add", port, "type", "veth",
                   "peer", "name", "eth0", "netns", name)  # fmt: skip
        self.check("-n", self.hub, "link", "set", port, "master", "br0")
        self.check("-n", self.hub, "link", "set", port, "up")
        address = self.address(host)
        self.check("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        self.check("-n", name, "link", "set", "eth0", "up")
        return name, address

    def spawn(self, namespace: str, command: list[str], stderr: Path, **kwargs) -> subprocess.Popen:
        """*command* in *namespace* (``ip netns exec`` execs it: the pid is the command's)."""
        with stderr.open("wb") as err:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *command],
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent,
                **{"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, **kwargs},
            )
        self.processes.append(process)
        return process

    def sockets(self, namespace: str) -> list[tuple[str, str]]:
        """(netid, local address) of every UDP and TCP socket in *namespace*."""
        result = subprocess.run(
            ["ip", "netns", "exec", namespace, "ss", "-Hantu"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return sorted((line.split()[0], line.split()[4]) for line in result.stdout.splitlines())

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                stop_process(process)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        for name in reversed(self.namespaces):  # the veths and the bridge go with them
            run_ip("netns", "delete", name)


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) not found")
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) not found")
    remove_stale_namespaces()
    lab = NetnsLab()
    try:
        try:
            lab.create_hub()
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            pytest.skip(f"cannot create a network namespace with a bridge here: {error}")
        yield lab
    finally:
        lab.close()
        leftover = [name for name in lab.namespaces if name in run_ip("netns", "list").stdout]
        assert not leftover, f"network namespaces left behind: {leftover}"


# -- the client driver ------------------------------------------------------------------------


class Driver:
    """tests/interop/netns_cluster_client.py in a namespace: one JSON line per command."""

    def __init__(self, lab: NetnsLab, namespace: str, address: str, log_dir: Path) -> None:
        self.stderr_path = log_dir / "driver.err"
        self.process = lab.spawn(
            namespace,
            [sys.executable, str(CLIENT_SCRIPT), address],
            self.stderr_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.buffer = b""

    def __call__(self, op: str, **arguments) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        self.process.stdin.flush()
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + STEP_TIMEOUT
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the client driver did not answer {op}\n{self.stderr()}")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the client driver exited\n{self.stderr()}")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        answer = json.loads(line)
        assert answer["ok"], f"{op} failed in the client driver:\n{answer['error']}"
        return answer

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def contexts(self, requests: list[tuple[int, Address]]) -> list[tuple[Address, dict]]:
        """``/mycontext`` per (client index, peer): (the answer's source, its fields)."""
        answers = self("requests", requests=[[i, list(p), "mycontext"] for i, p in requests])
        result = []
        for (index, peer), answer in zip(requests, answers["answers"], strict=True):
            assert answer is not None, f"client {index}: no answer to /mycontext from {peer}"
            assert answer["code"] == CONTENT, answer
            source = (answer["source"][0], answer["source"][1])
            result.append((source, parse_context(answer["payload"].encode())))
        return result


# -- the processes ----------------------------------------------------------------------------


def extserver_command() -> list[str]:
    exe = find_tool("extserver")
    return [exe] if exe else [sys.executable, "-c", RUN_CLI]


def start_node(
    lab: NetnsLab, node_id: int, namespace: str, own: str, other: str, log_dir: Path
) -> subprocess.Popen:
    """``extserver`` serving cluster node *node_id* on *own* (the other node is at *other*).

    The interface selection keeps the namespace's address only (no loopback, no IPv6): with
    --dtls-only and a cluster, no per-interface endpoint opens anyway, which the test checks."""
    entries = {
        node_id: f"{own}:{DTLS_PORT};{own}:{MGMT_PORT};{node_id}",
        3 - node_id: f"---;{other}:{MGMT_PORT};{3 - node_id}",
    }
    command = [
        *extserver_command(), "--no-loopback", "--no-ipv6",
        "--interfaces-pattern", f"^{re.escape(own)}$", "--dtls-only", "--no-tcp", "--diagnose",
        "--dtls-cluster", ",".join(entries[i] for i in (1, 2)),
    ]  # fmt: skip
    return lab.spawn(namespace, command, log_dir / f"node-{node_id}.err")


def describe(process: subprocess.Popen, stderr: Path) -> str:
    status = process.poll()
    state = "still running" if status is None else f"exited with {status}"
    return f"$ {' '.join(map(str, process.args))}\n({state})\n{stderr.read_text()[-3000:]}"


# -- the test ---------------------------------------------------------------------------------


def test_cluster_nodes_in_own_namespaces(lab: NetnsLab, tmp_path: Path) -> None:
    try:
        lb, lb_addr = lab.attach("lb", 1)
        n1, addr1 = lab.attach("n1", 11)
        n2, addr2 = lab.attach("n2", 12)
    except RuntimeError as error:  # veth or bridge forbidden in this sandbox
        pytest.skip(f"cannot connect network namespaces here: {error}")
    dtls = {1: (addr1, DTLS_PORT), 2: (addr2, DTLS_PORT)}
    entry = (lb_addr, DTLS_PORT)

    nodes = {
        1: start_node(lab, 1, n1, addr1, addr2, tmp_path),
        2: start_node(lab, 2, n2, addr2, addr1, tmp_path),
    }
    control = str(tmp_path / "nat.sock")
    extnat = find_tool("extnat")
    nat_command = [
        *([extnat] if extnat else EXTNAT), show(entry), show(dtls[1]), show(dtls[2]),
        "--no-console", "--control", control,
    ]  # fmt: skip
    nat = lab.spawn(lb, nat_command, tmp_path / "nat.err")
    driver = Driver(lab, lb, lb_addr, tmp_path)

    # -- startup: the nodes answer ClientHellos from the other namespace -----------------------
    ready = driver("ready", peers=[list(dtls[1]), list(dtls[2])], timeout=15.0)["ready"]
    for node_id, is_ready in zip((1, 2), ready, strict=True):
        assert is_ready, f"node {node_id} did not start\n" + describe(
            nodes[node_id], tmp_path / f"node-{node_id}.err"
        )
    assert wait_for(lambda: os.path.exists(control) or nat.poll() is not None, 10.0)
    assert nat.poll() is None, describe(nat, tmp_path / "nat.err")

    # Each node opened its cluster DTLS endpoint and its management socket on the namespace's
    # address, and nothing else (no plain UDP, TCP, TLS or plugtest endpoint).
    for node_id, namespace, address in ((1, n1, addr1), (2, n2, addr2)):
        expected = [("udp", f"{address}:{DTLS_PORT}"), ("udp", f"{address}:{MGMT_PORT}")]
        if not wait_for(lambda ns=namespace, e=expected: lab.sockets(ns) == e, 5.0, 0.1):
            pytest.fail(f"node {node_id}: sockets {lab.sockets(namespace)}, expected {expected}")

    # -- handshakes through the NAT: the NAT spreads them, the handshake's node owns the CID --
    clients = driver("connect", entry=list(entry), node_ids=[1, 2], per_node=2, min=6, max=40)
    clients = clients["clients"]
    count = len(clients)
    usages = nat_destination_usages(control)
    assert all(usages[show(dtls[i])] >= 2 for i in (1, 2)), usages
    for client in clients:
        assert client["address"][0] == lb_addr
        assert client["cid"][:2] == f"{client['owner']:02x}", client

    def check_context(client: dict, context: dict) -> None:
        assert context["node-id"] == str(client["owner"]), context
        assert context["read-cid"] == client["cid"].upper(), context
        assert context["peer"] == "Client_identity", context

    # through the NAT: the entry sticks to the handshake's node, nothing is forwarded; the
    # node sees the NAT's outgoing address in the lb namespace
    nat_ports = {}
    for client, (source, context) in zip(
        clients, driver.contexts([(c["index"], entry) for c in clients]), strict=True
    ):
        assert source == entry
        check_context(client, context)
        assert "via" not in context, context
        assert context["ip"] == lb_addr and int(context["port"]) != client["address"][1]
        nat_ports[client["index"]] = context["port"]

    # -- forwarding across namespaces: each client sends to the node it does not own ---------
    others = [(c["index"], dtls[3 - c["owner"]]) for c in clients]
    for client, (_index, peer), (source, context) in zip(
        clients, others, driver.contexts(others), strict=True
    ):
        assert source == peer, "the answer did not come back through the receiving node"
        check_context(client, context)
        assert context.get("via") == VIA, context
        assert (context["ip"], int(context["port"])) == tuple(client["address"]), context

    # the health counters of both nodes count it (the receiving node forwarded, the owner
    # processed the forwarded records and backwarded the answers)
    def counters(node_id: int) -> dict[str, int]:
        index = next(c["index"] for c in clients if c["owner"] == node_id)
        (answer,) = driver("requests", requests=[[index, list(dtls[node_id]), "diagnose"]])[
            "answers"
        ]
        assert answer is not None and answer["code"] == CONTENT, answer
        return parse_counters(answer["payload"].encode())

    for node_id in (1, 2):
        foreign = sum(c["owner"] != node_id for c in clients)
        own = count - foreign
        seen = counters(node_id)
        assert seen.get("forwarded", 0) >= foreign, (node_id, seen)
        assert seen.get("process forwarded", 0) >= own, (node_id, seen)
        assert seen.get("backwarded", 0) >= own, (node_id, seen)
        assert seen.get("send backwarded", 0) >= foreign, (node_id, seen)

    # -- clear on the NAT, from the root namespace: new NAT entries, random nodes -------------
    # The sessions go on with the same owner and CID; a client that lands on the other node
    # is forwarded (via). Repeated until that happened at least once (each round leaves every
    # client on its owner with p = 2**-count at most).
    for _round in range(6):
        assert send_command(control, "clear") == [f"{count} - NAT entries dropped."]
        contexts = driver.contexts([(c["index"], entry) for c in clients])
        routed = 0
        for client, (source, context) in zip(clients, contexts, strict=True):
            assert source == entry
            check_context(client, context)
            assert context["ip"] == lb_addr, context
            assert context["port"] != nat_ports[client["index"]], "the NAT entry was not renewed"
            nat_ports[client["index"]] = context["port"]
            routed += context.get("via") == VIA
        assert sum(nat_destination_usages(control).values()) == count
        if routed:
            break
    else:
        pytest.fail("after 6 rounds of clear no client landed on the node it does not own")

    # the sessions still work directly with their owners (not forwarded)
    owners = [(c["index"], dtls[c["owner"]]) for c in clients]
    for client, (_index, peer), (source, context) in zip(
        clients, owners, driver.contexts(owners), strict=True
    ):
        assert source == peer
        check_context(client, context)
        assert "via" not in context, context
        assert (context["ip"], int(context["port"])) == tuple(client["address"]), context

    for node_id, process in nodes.items():
        assert process.poll() is None, describe(process, tmp_path / f"node-{node_id}.err")
    assert nat.poll() is None, describe(nat, tmp_path / "nat.err")
