"""Cluster membership (extplugtest.cluster.management): ping/pong wire format (inventory §5.4),
dynamic membership driven by a fake clock, expiry, dropped forgeries, and one live run of two
asyncio endpoints on loopback."""

from __future__ import annotations

import asyncio
import random

import pytest

from extplugtest.cluster.management import (
    PING,
    PONG,
    ClusterManager,
    ClusterState,
    ClusterTimers,
    ManagementEndpoint,
    Outgoing,
    StaticCluster,
    decode_message,
    encode_message,
    normalize_address,
)

TIMERS = ClusterTimers()  # Californium's defaults: 2 s tick, 4 s refresh, 10 s discover, +6 s
A, B, C = ("10.0.0.1", 5884), ("10.0.0.2", 5884), ("10.0.0.3", 5884)


class FakeNetwork:
    """Delivers every Outgoing to the manager bound at its address, in order, on one clock."""

    def __init__(self, nodes: dict[tuple[str, int], ClusterManager]) -> None:
        self.nodes = nodes
        self.now = 0.0
        self.down: set[tuple[str, int]] = set()
        self.delivered = 0

    def start(self) -> None:
        for manager in self.nodes.values():
            manager.start(self.now)

    def deliver(self, source: tuple[str, int], outgoing: list[Outgoing]) -> None:
        queue = [(source, message) for message in outgoing]
        for _ in range(10_000):  # bounded: a ping storm would be a bug
            if not queue:
                return
            sender, message = queue.pop(0)
            target = self.nodes.get(message.address)
            if target is None or message.address in self.down:
                continue
            self.delivered += 1
            replies = target.receive(message.data, sender, self.now)
            queue.extend((message.address, reply) for reply in replies)
        raise AssertionError("message storm")

    def run_until(self, end: float) -> None:
        """Advance the clock tick by tick (each manager at its own next_tick) up to *end*."""
        for _ in range(100_000):
            live = {a: m for a, m in self.nodes.items() if a not in self.down}
            address, manager = min(live.items(), key=lambda item: item[1].next_tick)
            if manager.next_tick > end:
                self.now = end
                return
            self.now = manager.next_tick
            self.deliver(address, manager.tick(self.now))
        raise AssertionError("clock did not advance")


def cluster(*entries: tuple[tuple[str, int], int], **options) -> FakeNetwork:
    addresses = [address for address, _ in entries]
    nodes = {
        address: ClusterManager(
            node_id,
            [a for a in addresses if a != address],
            initial_nodes=len(entries),
            rng=random.Random(node_id),
            **options,
        )
        for address, node_id in entries
    }
    network = FakeNetwork(nodes)
    network.start()
    return network


# -- wire format -------------------------------------------------------------------------------


def test_ping_pong_bytes() -> None:
    # 0x3d PING | node id 2 as int32 little-endian | state UP
    assert encode_message(PING, 2, ClusterState.UP) == bytes.fromhex("3d0200000001")
    assert encode_message(PONG, 258, ClusterState.INITIALIZED) == bytes.fromhex("3c0201000002")
    assert decode_message(bytes.fromhex("3d0200000001")) == (PING, 2, ClusterState.UP)


@pytest.mark.parametrize(
    ("data", "counter"),
    [
        (b"\x3d\x02\x00\x00\x00", "dropped_length"),  # the README's 5 bytes
        (b"\x3d\x02\x00\x00\x00\x01\x00", "dropped_length"),
        (b"\x17\x02\x00\x00\x00\x01", "dropped_unknown_type"),
        (b"\x3d\x00\x01\x00\x00\x01", "dropped_bad_node_id"),  # 256
        (b"\x3d\xff\xff\xff\xff\x01", "dropped_bad_node_id"),  # -1
        (b"\x3d\x02\x00\x00\x00\x03", "dropped_bad_state"),
    ],
)
def test_malformed_messages_are_dropped_and_counted(data: bytes, counter: str) -> None:
    manager = ClusterManager(1, [B])
    assert manager.receive(data, B, 0.0) == []
    assert getattr(manager.counters, counter) == 1
    assert manager.nodes() == []


# -- dynamic membership ------------------------------------------------------------------------


def test_two_nodes_find_each_other() -> None:
    # Californium never starts the timer for a 2-node group (§9.9); this cluster must form.
    network = cluster((A, 1), (B, 2))
    network.run_until(1.0)
    a, b = network.nodes[A], network.nodes[B]
    assert a.node_address(2) == B and b.node_address(1) == A
    assert a.available(B) and b.available(A)
    assert a.ready and b.ready
    assert a.state == b.state == ClusterState.INITIALIZED
    assert a.node_address(1) is None  # the own node is not a forward target


def test_three_nodes_and_refresh() -> None:
    network = cluster((A, 1), (B, 2), (C, 3))
    network.run_until(1.0)
    for address, manager in network.nodes.items():
        others = {n.node_id: n.address for n in manager.nodes()}
        assert len(others) == 2 and address not in others.values()
        assert manager.ready
    # Nodes keep talking: a minute later nothing expired.
    network.run_until(60.0)
    for manager in network.nodes.values():
        assert len(manager.nodes()) == 2
        assert manager.counters.expired == 0
        assert manager.counters.pings + manager.counters.pongs > 10  # refreshes every 4 s


def test_not_ready_until_enough_nodes() -> None:
    network = cluster((A, 1), (B, 2), (C, 3))
    network.down.add(C)
    network.down.add(B)
    network.run_until(30.0)
    a = network.nodes[A]
    assert not a.ready and a.state == ClusterState.START
    assert a.counters.discoveries >= 3  # keeps looking for the scope


def test_expiry_and_rediscovery() -> None:
    network = cluster((A, 1), (B, 2), (C, 3))
    network.run_until(1.0)
    network.down.add(C)
    network.run_until(1.0 + TIMERS.node_timeout + 2 * TIMERS.timer_interval + 0.5)
    for address in (A, B):
        manager = network.nodes[address]
        assert manager.node_address(3) is None
        assert not manager.available(C)
        assert manager.counters.expired == 1
        assert manager.node_address(2 if address == A else 1) is not None
    # C comes back (a restarted pod): discovery pings find it again.
    network.down.discard(C)
    network.nodes[C] = ClusterManager(3, [A, B], initial_nodes=3)
    network.nodes[C].start(network.now)
    network.run_until(network.now + TIMERS.discover_interval + TIMERS.timer_interval)
    assert network.nodes[A].node_address(3) == C
    assert network.nodes[C].ready  # the running cluster reports INITIALIZED


def test_discovery_pings_are_marked() -> None:
    manager = ClusterManager(1, [B, C], initial_nodes=3)
    manager.start(0.0)
    out = manager.tick(manager.next_tick)
    assert {message.address for message in out} == {B, C}
    assert all(message.discovery for message in out)
    assert all(decode_message(message.data) == (PING, 1, ClusterState.START) for message in out)


def test_forged_pings_are_dropped_and_counted() -> None:
    manager = ClusterManager(1, [B], initial_nodes=2)
    manager.start(0.0)
    attacker = ("203.0.113.66", 5884)
    ping = encode_message(PING, 2, ClusterState.UP)
    assert manager.receive(ping, attacker, 1.0) == []  # not in the discovery scope
    assert manager.receive(encode_message(PING, 1, ClusterState.UP), B, 1.0) == []  # our id
    assert manager.counters.dropped_foreign == 1
    assert manager.counters.dropped_own_id == 1
    assert manager.nodes() == [] and not manager.ready
    # The genuine node is answered with a PONG carrying our id and (new) state.
    reply = manager.receive(ping, B, 2.0)
    assert reply[0] == Outgoing(encode_message(PONG, 1, ClusterState.INITIALIZED), B, False)
    assert manager.node_address(2) == B and manager.ready


def test_node_moves_to_a_new_address() -> None:
    manager = ClusterManager(1, [B, C], initial_nodes=2)
    manager.receive(encode_message(PING, 2, ClusterState.UP), B, 0.0)
    manager.receive(encode_message(PING, 2, ClusterState.UP), ("10.0.0.3", 5884, 0, 0), 1.0)
    assert manager.node_address(2) == C
    assert not manager.available(B)
    assert manager.counters.moved == 1
    # An address that now speaks for another node id replaces the old one.
    manager.receive(encode_message(PING, 3, ClusterState.UP), C, 2.0)
    assert manager.node_address(2) is None and manager.node_address(3) == C
    assert len(manager.nodes()) == 1


def test_node_table_is_bounded() -> None:
    manager = ClusterManager(1, accept_foreign=True, max_nodes=2)
    for node_id in range(2, 10):
        manager.receive(encode_message(PING, node_id, 0), (f"10.0.1.{node_id}", 1), 0.0)
    assert len(manager.nodes()) == 2
    assert manager.counters.dropped_table_full == 6


def test_node_ids_are_bytes() -> None:
    with pytest.raises(ValueError):
        ClusterManager(256)
    with pytest.raises(ValueError):
        StaticCluster(1, {300: A})


def test_normalize_address() -> None:
    assert normalize_address(("::ffff:10.0.0.1", 5884, 0, 0)) == A
    assert normalize_address(("2001:0db8:0000::0001", 1)) == ("2001:db8::1", 1)


def test_static_cluster() -> None:
    static = StaticCluster(1, {1: A, 2: B})
    assert static.node_address(2) == B
    assert static.node_address(1) is None
    assert static.available(B) and not static.available(C)
    assert static.ready
    assert static.receive(encode_message(PING, 2, 0), B, 0.0) == []
    assert static.counters.dropped_static == 1


# -- live: two asyncio endpoints on loopback ---------------------------------------------------


def test_two_endpoints_on_loopback() -> None:
    async def scenario() -> None:
        fast = ClusterTimers(
            timer_interval=0.05, refresh_interval=0.1, discover_interval=0.2, expiration_time=0.2
        )
        received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        node1 = ClusterManager(1, initial_nodes=2, timers=fast)
        node2 = ClusterManager(2, initial_nodes=2, timers=fast)
        one = await ManagementEndpoint.create(node1, ("127.0.0.1", 0))
        two = await ManagementEndpoint.create(
            node2,
            ("127.0.0.1", 0),
            on_cluster_packet=lambda data, addr: received.put_nowait((data, addr)),
        )
        try:
            node1.set_scope([two.local_address])
            node2.set_scope([one.local_address])
            await asyncio.wait_for(asyncio.gather(one.wait_ready(), two.wait_ready()), 10)
            assert node1.node_address(2) == two.local_address
            assert node2.node_address(1) == one.local_address
            # Cluster records share the socket and go to the connector's callback.
            packet = bytes([63, 0x34, 0x16, 4, 192, 0, 2, 1]) + bytes(30)
            one.send_cluster_packet(packet, node1.node_address(2))  # type: ignore[arg-type]
            data, sender = await asyncio.wait_for(received.get(), 10)
            assert data == packet and sender == one.local_address
            # Garbage on the socket is counted, never raised.
            one.transport.sendto(b"\x01garbage", two.local_address)  # type: ignore[union-attr]
            for _ in range(200):
                if node2.counters.dropped_length:
                    break
                await asyncio.sleep(0.01)
            assert node2.counters.dropped_length == 1
        finally:
            one.close()
            two.close()

    asyncio.run(scenario())
