"""The DTLS-CID cluster (inventory §5) with real processes on loopback.

Every node is an ``extserver --dtls-only --no-tcp`` process serving one cluster node; the load
balancers in front are ``extnat`` (random, sticky; ``-r`` for the reverse update) and nginx's
stream module (round robin). The clients are our sans-IO PSK ``ClientHandshake`` on plain UDP
sockets, so a test can send a client's records to any address: through the balancer, or
directly to a node that does not own the client's CID (CID byte 0 = the owner's node id), which
makes forwarding happen whatever the balancer picked.

What ``/mycontext`` shows is the evidence: ``node-id`` (the owner), ``read-cid`` (the session),
``port`` (the client address the owner sees) and ``via: dtls-cid-router`` (the newest record
came through another node). With backward (the default) an answer comes from the address the
client sent to; without it, straight from the owner.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.conftest import IN_CI, LOOPBACK, die_with_parent, free_udp_ports
from tests.interop.cluster_helpers import (
    CONTENT,
    Address,
    ClusterNodeProcess,
    DtlsClient,
    NatProcess,
    NodeSpec,
    allocate_nodes,
    answers_hello,
    diagnose_counters,
    name,
    parse_context,
    static_option,
    stop_process,
    wait_for,
)

from extplugtest.cluster._header import (
    CLUSTER_RECORD_INCOMING,
    CLUSTER_RECORD_OUTGOING,
    decode,
    encode,
)
from extplugtest.coap._codec import parse

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

VIA = "dtls-cid-router"
MIN_CLIENTS = 8
MAX_CLIENTS = 48
QUIET = 0.5  # how long "no answer" is waited for (a bounded absence check, not a timing claim)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., list[ClusterNodeProcess]]]:
    """Factory: ``start_cluster(count, mode="static"|"dynamic", *extra)`` starts *count* nodes
    (ids 1..count) in parallel and returns them once each answers a ClientHello."""
    started: list[ClusterNodeProcess] = []

    def start(count: int, mode: str = "static", *extra: str) -> list[ClusterNodeProcess]:
        specs = allocate_nodes(count)
        nodes = []
        for spec in specs:
            if mode == "static":
                args = ["--dtls-cluster", static_option(specs, spec)]
            else:
                others = ",".join(name(other.mgmt) for other in specs if other is not spec)
                args = [
                    "--dtls-cluster", f"{name(spec.dtls)};{name(spec.mgmt)};{spec.node_id}",
                    "--dtls-cluster-group", others,
                ]  # fmt: skip
            node = ClusterNodeProcess(spec, args, tmp_path, *extra)
            started.append(node)
            nodes.append(node)
        for node in nodes:
            node.wait_ready()
        return nodes

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def start_nat(tmp_path: Path) -> Iterator[Callable[..., NatProcess]]:
    started: list[NatProcess] = []

    def start(destinations: list[Address], *options: str) -> NatProcess:
        nat = NatProcess(destinations, tmp_path, *options)
        started.append(nat)
        return nat

    yield start
    for nat in started:
        nat.stop()


@pytest.fixture
def clients() -> Iterator[list[DtlsClient]]:
    """The test's clients, closed at the end."""
    created: list[DtlsClient] = []
    yield created
    for client in created:
        client.close()


# -- scenario steps ---------------------------------------------------------------------------


def connect_clients(
    clients: list[DtlsClient], entry: Address, node_ids: list[int], per_node: int = 2
) -> list[DtlsClient]:
    """Handshake new clients through *entry* until there are at least MIN_CLIENTS and every
    node owns at least *per_node* of them (the balancer picks the node of a handshake)."""
    connected: list[DtlsClient] = []

    def spread_ok() -> bool:
        owners = [client.owner for client in connected]
        return all(owners.count(node_id) >= per_node for node_id in node_ids)

    while len(connected) < MIN_CLIENTS or not spread_ok():
        owners = sorted(client.owner for client in connected)
        assert len(connected) < MAX_CLIENTS, f"the balancer did not spread: owners {owners}"
        client = DtlsClient()
        clients.append(client)
        client.handshake(entry)
        assert client.owner in node_ids, f"CID {client.cid.hex()} names no node"
        connected.append(client)
    return connected


def check_context(client: DtlsClient, context: dict[str, str]) -> None:
    """The fields of the client's own session: the owner's node id and the client's CID."""
    assert context["node-id"] == str(client.owner), context
    assert context["read-cid"] == client.cid.hex().upper(), context
    assert context["peer"] == "Client_identity", context


def check_through_entry(
    connected: list[DtlsClient], entry: Address, expect_via: bool | None = False
) -> list[dict[str, str]]:
    """/mycontext of every client through *entry* (its balancer): it answers from *entry*;
    *expect_via*: whether ``via`` must be there (None: either)."""
    contexts = []
    for client in connected:
        source, context = client.context(entry)
        assert source == entry, f"answer from {source}, not from the balancer {entry}"
        check_context(client, context)
        if expect_via is not None:
            assert (context.get("via") == VIA) == expect_via, context
        contexts.append(context)
    return contexts


def check_forwarding(
    connected: list[DtlsClient], nodes: list[ClusterNodeProcess], backward: bool = True
) -> int:
    """Every client sends to every node that does not own its CID, directly (no balancer):
    the record is forwarded to the owner, which answers through that node (backward) or
    straight (no backward). Returns the number of forwarded requests."""
    by_id = {node.node_id: node for node in nodes}
    forwarded = 0
    for client in connected:
        for node in nodes:
            if node.node_id == client.owner:
                continue
            source, context = client.context(node.dtls)
            expected_source = node.dtls if backward else by_id[client.owner].dtls
            assert source == expected_source, (source, node.node_id, client.owner)
            check_context(client, context)
            assert context.get("via") == VIA, context
            assert (context["ip"], int(context["port"])) == client.address, context
            forwarded += 1
    return forwarded


def check_batches(
    connected: list[DtlsClient], nodes: list[ClusterNodeProcess], expected: bool
) -> None:
    """A burst of records at the node that does not own them: forwarded in one flush, they
    leave in batch datagrams (several cluster packets in one) unless batches are off. Bounded:
    up to 5 bursts, until a batch was counted."""
    by_id = {node.node_id: node for node in nodes}
    targets = {client: next(n for n in nodes if n.node_id != client.owner) for client in connected}
    for _burst in range(5):
        for client, node in targets.items():  # all sent before any answer is read
            client.sock.sendto(client.seal(client.get_message("mycontext").to_bytes()), node.dtls)
        for client in connected:
            assert receive(client.sock, 5.0) is not None
        sent = sum(diagnose_counters(connected[0], n.dtls).get("batches sent", 0) for n in nodes)
        if sent or not expected:
            break
    # One /diagnose per node, so that all its counters are of the same moment (the reading
    # requests may be forwarded themselves).
    counters = [diagnose_counters(connected[0], n.dtls) for n in by_id.values()]
    sent = sum(c.get("batches sent", 0) for c in counters)
    received = sum(c.get("batches received", 0) for c in counters)
    assert (sent > 0) == expected and (received > 0) == expected, (sent, received)
    # every datagram with IN/OUT packets counts, a batch as one: at least one per batch, and
    # without batches one per packet (each IN packet of a forwarded record, each OUT packet
    # of an answer that goes back through the router)
    datagrams = sum(c["cluster datagrams sent"] for c in counters)
    packets = sum(c["forwarded"] + c["backwarded"] for c in counters)
    assert datagrams >= sent and datagrams > 0
    if expected:
        assert datagrams < packets, (datagrams, packets)
    else:
        assert datagrams == packets, (datagrams, packets)


def wait_until_forwarding(client: DtlsClient, node: ClusterNodeProcess, timeout: float = 20.0):
    """Dynamic membership: poll (bounded) until *node* forwards the client's records, i.e. it
    has learned the owner's management address by ping/pong."""
    answer = wait_for(lambda: client.request("mycontext", node.dtls, timeout=0.5), timeout)
    assert answer is not None, (
        f"node {node.node_id} did not forward node {client.owner}'s records within {timeout} s"
    )


def check_clear(nat: NatProcess, connected: list[DtlsClient]) -> list[dict[str, str]]:
    """``clear`` drops every NAT entry: each client gets a new NAT port and a random node;
    its session goes on (the same owner and CID), and a client that landed on another node
    shows ``via``."""
    before = {id(client): client.context(nat.address)[1]["port"] for client in connected}
    assert nat.command("clear") == [f"{len(connected)} - NAT entries dropped."]
    contexts = check_through_entry(connected, nat.address, expect_via=None)
    for client, context in zip(connected, contexts, strict=True):
        assert context["port"] != before[id(client)], "the NAT entry was not renewed"
        assert int(context["port"]) != client.address[1]
    assert sum(nat.usages().values()) == len(connected)
    return contexts


# -- 1. static cluster, backward, behind extnat -----------------------------------------------


@pytest.mark.parametrize("batch", [(), ("--no-dtls-cluster-batch",)], ids=["batch", "single"])
def test_static_cluster_behind_nat(start_cluster, start_nat, clients, batch):
    """With batches (several cluster packets per datagram, our default) and without (every
    packet on its own, as Californium's nodes send them)."""
    nodes = start_cluster(2, "static", *batch)
    nat = start_nat([node.dtls for node in nodes])
    connected = connect_clients(clients, nat.address, [1, 2])
    usages = nat.usages()
    assert all(usages[name(node.dtls)] >= 2 for node in nodes), usages
    # the handshake's node owns the CID, and the NAT entry sticks to it: no forwarding
    check_through_entry(connected, nat.address, expect_via=False)
    assert check_forwarding(connected, nodes) == len(connected)
    contexts = check_clear(nat, connected)
    # Which node the NAT picked for each client is not visible, but its usage counts bound
    # the number of clients that landed on the node they do not own: with b of node 1's
    # clients on node 2 and c of node 2's on node 1, via = b + c, usage(1) - owned(1) = c - b.
    routed = sum(context.get("via") == VIA for context in contexts)
    surplus = nat.usages()[name(nodes[0].dtls)] - [c.owner for c in connected].count(1)
    assert routed >= abs(surplus) and (routed - surplus) % 2 == 0, (routed, surplus)
    # the sessions still work directly with their owners (no via: nothing was forwarded)
    by_id = {node.node_id: node for node in nodes}
    for client in connected:
        source, context = client.context(by_id[client.owner].dtls)
        assert source == by_id[client.owner].dtls
        check_context(client, context)
        assert "via" not in context
    check_batches(connected, nodes, expected=not batch)


# -- 2. dynamic clusters (ping/pong) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "security"),
    [(2, ()), (3, ()), (2, ("--dtls-cluster-group-security", "cluster-secret"))],
    ids=["2", "3", "2-dtls-mac"],
)
def test_dynamic_cluster_behind_nat(start_cluster, start_nat, clients, count, security):
    """With --dtls-cluster-group-security the nodes ping each other over DTLS-PSK and every
    cluster packet carries the MAC keyed from those sessions (§5.3, §5.7)."""
    nodes = start_cluster(count, "dynamic", *security)
    nat = start_nat([node.dtls for node in nodes])
    node_ids = [node.node_id for node in nodes]
    connected = connect_clients(clients, nat.address, node_ids, per_node=1)
    # every node must learn every other node: poll with one client per owner
    for owner in node_ids:
        client = next(c for c in connected if c.owner == owner)
        for node in nodes:
            if node.node_id != owner:
                wait_until_forwarding(client, node)
    check_through_entry(connected, nat.address, expect_via=False)
    assert check_forwarding(connected, nodes) == len(connected) * (count - 1)
    check_clear(nat, connected)


# -- 3. no backward, behind extnat -r ---------------------------------------------------------


def test_no_backward_behind_reverse_nat(start_cluster, start_nat, clients):
    nodes = start_cluster(2, "static", "--no-dtls-cluster-backward")
    nat = start_nat([node.dtls for node in nodes], "-r")
    connected = connect_clients(clients, nat.address, [1, 2])
    check_through_entry(connected, nat.address, expect_via=False)
    # sent to the other node, answered by the owner itself
    assert check_forwarding(connected, nodes, backward=False) == len(connected)
    # After clear, a client that lands on the other node is forwarded; the owner answers
    # directly, and the NAT (-r) re-points the entry to it. Until at least one did (each
    # round leaves all clients on their owners with p = 2**-8 at most).
    for _round in range(6):
        updates = nat.stats()["reverse-updates"]
        first = check_clear(nat, connected)
        routed = sum(context.get("via") == VIA for context in first)
        assert nat.stats()["reverse-updates"] - updates == routed
        # every entry points to the owner now: nothing is forwarded any more
        check_through_entry(connected, nat.address, expect_via=False)
        if routed:
            break
    else:
        pytest.fail("after 6 rounds of clear no client landed on the other node")


# -- 4. a node dies ---------------------------------------------------------------------------


def test_killed_node(start_cluster, start_nat, clients):
    nodes = start_cluster(2)
    live, dead = nodes
    nat = start_nat([node.dtls for node in nodes])
    connected = connect_clients(clients, nat.address, [1, 2])
    check_through_entry(connected, nat.address)
    dead.kill()
    # the operator takes the dead node out of the balancer; its entries fail over
    assert nat.command(f"remove {name(dead.dtls)}") == [f"/{name(dead.dtls)} removed"]
    orphans = [client for client in connected if client.owner == dead.node_id]
    survivors = [client for client in connected if client.owner == live.node_id]
    with ThreadPoolExecutor(len(orphans)) as pool:
        answers = list(pool.map(lambda c: c.request("mycontext", nat.address, 1.5), orphans))
    assert answers == [None] * len(orphans), "a session of the dead node was answered"
    check_through_entry(survivors, nat.address, expect_via=False)
    for client in orphans:  # a new handshake lands on the live node
        client.handshake(nat.address)
        assert client.owner == live.node_id
    check_through_entry(connected, nat.address, expect_via=False)
    assert nat.usages() == {name(live.dtls): len(connected)}


# -- 5. forged and foreign cluster packets ----------------------------------------------------


class ForgedRun:
    """One node (1) whose static table has a node 2 at a management address the test holds
    (``fake``): so the test can be a cluster node, or, from ``stranger``, not be one."""

    def __init__(self, start_cluster: Callable[..., list[ClusterNodeProcess]], tmp_path: Path):
        self.fake = self._socket()
        self.stranger = self._socket()
        (dtls_port, mgmt_port) = free_udp_ports(2)
        self.spec = NodeSpec(1, (LOOPBACK, dtls_port), (LOOPBACK, mgmt_port))
        fake_spec = NodeSpec(2, (LOOPBACK, 0), self.fake.getsockname())
        option = static_option([self.spec, fake_spec], self.spec)
        self.node = ClusterNodeProcess(self.spec, ["--dtls-cluster", option], tmp_path)
        self.node.wait_ready()
        self.client = DtlsClient()
        self.client.handshake(self.node.dtls)
        assert self.client.owner == 1

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        return sock

    def close(self) -> None:
        self.node.stop()
        self.client.close()
        self.fake.close()
        self.stranger.close()

    def request_record(self, path: str = "mycontext") -> tuple[bytes, bytes]:
        """(token, a sealed CON GET record of the client)."""
        message = self.client.get_message(path)
        return message.token, self.client.seal(message.to_bytes())


def receive(sock: socket.socket, timeout: float) -> tuple[bytes, Address] | None:
    if select.select([sock], [], [], timeout)[0]:
        return sock.recvfrom(65536)
    return None


def nothing_arrives(*socks: socket.socket) -> bool:
    """True if none of *socks* receives a datagram within QUIET seconds."""
    return not select.select(list(socks), [], [], QUIET)[0]


@pytest.fixture
def forged(start_cluster, tmp_path) -> Iterator[ForgedRun]:
    run = ForgedRun(start_cluster, tmp_path)
    yield run
    run.close()


def test_forged_cluster_packets(forged):
    run, client, mgmt = forged, forged.client, forged.node.mgmt
    client_address = client.address

    # A record whose CID names node 2 is forwarded to node 2 (us) as IN: client address + datagram.
    foreign = client.seal(b"\x40\x01\x00\x01", cid=bytes([2]) + client.cid[1:])
    client.sock.sendto(foreign, run.node.dtls)
    packet = receive(run.fake, 5.0)
    assert packet is not None, "the record for node 2 was not forwarded"
    data, source = packet
    assert source == mgmt
    decoded = decode(data)
    assert decoded.type == CLUSTER_RECORD_INCOMING
    assert decoded.address == client_address
    assert decoded.record == foreign

    # An IN from node 2 (us) is processed; the answer comes back to us as OUT (backward).
    token, record = run.request_record()
    run.fake.sendto(encode(CLUSTER_RECORD_INCOMING, client_address, record), mgmt)
    packet = receive(run.fake, 5.0)
    assert packet is not None, "no OUT packet for an IN from a cluster node"
    out = decode(packet[0])
    assert out.type == CLUSTER_RECORD_OUTGOING
    assert out.address == client_address
    _content_type, plaintext = client.session.cipher.open(out.record)
    response = parse(plaintext)
    assert response.token == token and response.code == CONTENT
    context = parse_context(response.payload)
    assert context.get("via") == VIA and int(context["port"]) == client_address[1]
    answer_record = out.record

    # An OUT from node 2 (us): node 1 sends the record to the client from its DTLS socket.
    run.fake.sendto(encode(CLUSTER_RECORD_OUTGOING, client_address, answer_record), mgmt)
    assert receive(client.sock, 5.0) == (answer_record, run.node.dtls)

    # The same from a socket that is no cluster node: dropped, no answer anywhere.
    _token, record = run.request_record()
    run.stranger.sendto(encode(CLUSTER_RECORD_INCOMING, client_address, record), mgmt)
    assert nothing_arrives(run.stranger, run.fake, client.sock), "a forged IN was processed"
    run.stranger.sendto(encode(CLUSTER_RECORD_OUTGOING, client_address, answer_record), mgmt)
    assert nothing_arrives(run.stranger, run.fake, client.sock), "a forged OUT was sent"

    # A record for an unknown node (7) on the DTLS port: dropped, neither processed nor sent on.
    client.sock.sendto(client.seal(b"\x40\x01\x00\x02", cid=bytes([7]) + client.cid[1:]),
                       run.node.dtls)  # fmt: skip
    assert nothing_arrives(run.fake, client.sock), "a record for node 7 was not dropped"

    # The node still serves its client.
    source, context = client.context(run.node.dtls)
    assert source == run.node.dtls
    check_context(client, context)
    assert "via" not in context


def test_diagnose_reports_cluster_counters(forged):
    run, client, mgmt = forged, forged.client, forged.node.mgmt
    client.sock.sendto(client.seal(b"\x40\x01\x00\x01", cid=bytes([2]) + client.cid[1:]),
                       run.node.dtls)  # fmt: skip
    assert receive(run.fake, 5.0) is not None  # forwarded
    _token, record = run.request_record()
    run.fake.sendto(encode(CLUSTER_RECORD_INCOMING, client.address, record), mgmt)
    out = receive(run.fake, 5.0)  # process forwarded, backwarded
    assert out is not None
    run.fake.sendto(encode(CLUSTER_RECORD_OUTGOING, client.address, decode(out[0]).record), mgmt)
    assert receive(client.sock, 5.0) is not None  # send backwarded
    run.stranger.sendto(encode(CLUSTER_RECORD_INCOMING, client.address, record), mgmt)
    run.stranger.sendto(encode(CLUSTER_RECORD_OUTGOING, client.address, record), mgmt)
    client.sock.sendto(client.seal(b"\x40\x01\x00\x02", cid=bytes([7]) + client.cid[1:]),
                       run.node.dtls)  # fmt: skip
    expected = {"forwarded": 1, "process forwarded": 1, "backwarded": 1, "send backwarded": 1,
                "bad forward": 1, "bad backward": 1, "drop forward": 1}  # fmt: skip

    def counted() -> dict[str, int] | None:
        counters = diagnose_counters(client, run.node.dtls)
        seen = {key: counters.get(key, 0) for key in expected}
        return seen if all(seen[key] >= expected[key] for key in expected) else None

    seen = wait_for(counted, timeout=3.0, interval=0.2)
    assert seen, diagnose_counters(client, run.node.dtls)


# -- 6. nginx (stream module, UDP) as the load balancer ----------------------------------------

NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if os.access(path, os.X_OK)), None
    )


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[Callable[[list[Address]], Address]]:
    exe = find_nginx()
    if exe is None:
        reason = "nginx not found; install nginx and libnginx-mod-stream (scripts/install-deps.sh)"
        if IN_CI:
            pytest.fail(f"{reason} (required in CI)", pytrace=False)
        pytest.skip(reason)
    built_in = (
        "--with-stream "
        in subprocess.run(
            [exe, "-V"], capture_output=True, text=True, timeout=10, check=False
        ).stderr
    )
    if not built_in and not NGINX_MODULE.exists():
        pytest.skip("nginx has no stream module; install libnginx-mod-stream")
    processes: list[subprocess.Popen] = []

    def start(upstreams: list[Address]) -> Address:
        (port,) = free_udp_ports(1)
        servers = "".join(f"        server {name(address)};\n" for address in upstreams)
        load = "" if built_in else f"load_module {NGINX_MODULE};\n"
        config = tmp_path / "nginx.conf"
        config.write_text(
            f"{load}daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {tmp_path / 'nginx.pid'};\nerror_log stderr notice;\n"
            "events { worker_connections 1024; }\n"
            f"stream {{\n    upstream nodes {{\n{servers}    }}\n"
            f"    server {{\n        listen {LOOPBACK}:{port} udp;\n        proxy_pass nodes;\n"
            "        proxy_timeout 30s;\n    }\n}\n"  # no proxy_responses: DTLS flights vary
        )
        err = (tmp_path / "nginx.err").open("wb")
        process = subprocess.Popen(
            [exe, "-e", "stderr", "-p", str(tmp_path), "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        err.close()
        processes.append(process)
        entry = (LOOPBACK, port)

        def up() -> bool:
            return process.poll() is not None or answers_hello(entry)

        assert wait_for(up, timeout=10.0), "nginx did not pass a ClientHello on"
        assert process.poll() is None, (tmp_path / "nginx.err").read_text()
        return entry

    yield start
    for process in processes:
        stop_process(process)


def test_static_cluster_behind_nginx(start_cluster, start_nginx, clients):
    nodes = start_cluster(2)
    entry = start_nginx([node.dtls for node in nodes])
    connected = connect_clients(clients, entry, [1, 2])
    check_through_entry(connected, entry, expect_via=False)
    assert check_forwarding(connected, nodes) == len(connected)
    # Each client rebinds (a new source port: a new nginx session, the next node in round
    # robin order) and goes on with its session. Two rounds, with the round robin shifted by
    # an odd number between them, so each client lands once on the node it does not own.
    via = []
    for round_number in range(2):
        if round_number and len(connected) % 2 == 0:
            with contextlib.closing(DtlsClient()) as shifter:
                shifter.handshake(entry)
        for client in connected:
            old_port = client.address[1]
            client.rebind()
            source, context = client.context(entry)
            assert source == entry
            check_context(client, context)
            assert int(context["port"]) not in (old_port, client.address[1])
            via.append(context.get("via") == VIA)
    assert any(via), "no rebound client landed on the other node"
    assert sum(via) == len(connected), via
