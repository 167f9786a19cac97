"""DTLS-PSK on the management channel (extplugtest.cluster.security, inventory §5.7).

Two DtlsManagementSecurity instances exchange datagrams in memory on a fake clock: handshakes
in both directions and crossing, ping/pong payloads, wrong secrets, garbage, forced new
handshakes, retransmissions, the cluster MAC keys of §5.3 and the table bounds. One live run
has two ClusterManager + ManagementEndpoint pairs become ready over the secured channel.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from extplugtest.cluster import _header
from extplugtest.cluster.management import (
    PING,
    PONG,
    ClusterManager,
    ClusterState,
    ClusterTimers,
    ManagementEndpoint,
    encode_message,
)
from extplugtest.cluster.options import DYNAMIC_MGMT_IDENTITY, ManagementSecurityConfig
from extplugtest.cluster.security import (
    DtlsManagementSecurity,
    ManagementSecurityLimits,
)
from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls._record import APPLICATION_DATA
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_server import plain_record
from extplugtest.dtls.messages import (
    Alert,
    AlertLevel,
    ClientHello,
    ConnectionIdExtension,
    ContentType,
)

A, B, C, D = ("10.0.0.1", 5884), ("10.0.0.2", 5884), ("10.0.0.3", 5884), ("10.0.0.4", 5884)
SECRET = b"cluster-group-secret"
PING_A = encode_message(PING, 1, ClusterState.START)
PING_B = encode_message(PING, 2, ClusterState.START)
PONG_B = encode_message(PONG, 2, ClusterState.UP)

Address = tuple[str, int]
Datagram = tuple[Address, Address, bytes]  # (source, destination, bytes)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Network:
    """Delivers datagrams between security instances in order; *drop* may lose some."""

    def __init__(self, clock: Clock, **nodes: DtlsManagementSecurity) -> None:
        self.clock = clock
        self.nodes: dict[Address, DtlsManagementSecurity] = {}
        self.inbox: dict[Address, list[tuple[bytes, Address]]] = {}
        self.drop: Callable[[Datagram], bool] = lambda datagram: False
        self.delivered = 0

    def add(self, address: Address, security: DtlsManagementSecurity) -> None:
        self.nodes[address] = security
        self.inbox[address] = []

    def send(self, source: Address, destination: Address, datagrams: list[bytes]) -> None:
        self.exchange([(source, destination, data) for data in datagrams])

    def exchange(self, queue: list[Datagram]) -> None:
        """Deliver *queue* and every answer, first in first out (so flights may cross)."""
        for _ in range(1000):  # bounded: a handshake ping-pong storm would be a bug
            if not queue:
                return
            datagram = queue.pop(0)
            sender, target, data = datagram
            if self.drop(datagram) or target not in self.nodes:
                continue
            self.delivered += 1
            payloads, replies = self.nodes[target].unwrap(data, sender)
            self.inbox[target] += [(payload, sender) for payload in payloads]
            queue += [(target, sender, reply) for reply in replies]
        raise AssertionError("datagram storm")

    def wrap(self, source: Address, destination: Address, payload: bytes, **kw: bool) -> None:
        new_handshake = kw.get("new_handshake", False)
        out = self.nodes[source].wrap(payload, destination, new_handshake=new_handshake)
        self.send(source, destination, out)

    def run_until(self, end: float) -> None:
        """Advance the fake clock to each due tick up to *end*, sending what it resends."""
        for _ in range(1000):
            due = min(node.next_tick for node in self.nodes.values())
            if due > end:
                self.clock.now = end
                return
            self.clock.now = due
            for address, node in self.nodes.items():
                for data, peer in node.tick(due):
                    self.send(address, peer, [data])
        raise AssertionError("clock did not advance")


def network(*addresses: Address, secrets: dict[Address, bytes] | None = None, **kw) -> Network:
    clock = Clock()
    net = Network(clock)
    for address in addresses:
        secret = (secrets or {}).get(address, SECRET)
        net.add(address, DtlsManagementSecurity(DYNAMIC_MGMT_IDENTITY, secret, clock=clock, **kw))
    return net


def assert_crosswise(one: DtlsManagementSecurity, a: Address, two: DtlsManagementSecurity,
                     b: Address) -> None:  # fmt: skip
    """*one* (at *a*) signs with the key *two* (at *b*) checks with, and back (§5.3)."""
    mine, theirs = one.mac_for(b), two.mac_for(a)
    assert mine is not None and theirs is not None
    assert mine.write.digest == theirs.read.digest == "SHA256"
    record = bytes([25]) + os.urandom(40)
    packet = _header.encode(
        _header.CLUSTER_RECORD_INCOMING, ("192.0.2.1", 5684), record, mine.write
    )
    assert _header.decode(packet, theirs.read).record == record
    back = _header.encode(
        _header.CLUSTER_RECORD_OUTGOING, ("192.0.2.1", 5684), record, theirs.write
    )
    assert _header.decode(back, mine.read).record == record
    # The two directions have different keys: a node cannot check its own packets.
    with pytest.raises(_header.ClusterError):
        _header.decode(packet, mine.read)


# -- handshakes --------------------------------------------------------------------------------


@pytest.mark.parametrize("client", [A, B])
def test_handshake_and_ping_pong_round_trip(client: Address) -> None:
    net = network(A, B)
    server = B if client == A else A
    net.wrap(client, server, PING_A)
    assert net.inbox[server] == [(PING_A, client)]
    # The server has the session now: its answer leaves sealed at once.
    sealed = net.nodes[server].wrap(PONG_B, client, new_handshake=False)
    assert len(sealed) == 1 and sealed[0][0] == APPLICATION_DATA
    net.send(server, client, sealed)
    assert net.inbox[client] == [(PONG_B, server)]
    c, s = net.nodes[client].counters, net.nodes[server].counters
    assert (c.client_handshakes, c.server_handshakes, c.handshakes_succeeded) == (1, 0, 1)
    assert (s.client_handshakes, s.server_handshakes, s.handshakes_succeeded) == (0, 1, 1)
    assert s.hello_verify_requests == 1  # the cookie exchange came first
    assert (c.sealed, c.opened, s.sealed, s.opened) == (1, 1, 1, 1)
    for node in net.nodes.values():
        assert node.suite(client if node is net.nodes[server] else server) is (
            cs.TLS_PSK_WITH_AES_128_CCM_8
        )  # PSK first (§5.3)
        assert (node.sessions, node.handshakes) == (1, 0)
    assert_crosswise(net.nodes[client], client, net.nodes[server], server)


def test_payloads_wait_for_the_handshake_in_order() -> None:
    net = network(A, B)
    first = net.nodes[A].wrap(PING_A, B, new_handshake=False)
    assert net.nodes[A].wrap(b"second", B, new_handshake=False) == []  # queued
    net.send(A, B, first)
    assert [payload for payload, _ in net.inbox[B]] == [PING_A, b"second"]


def test_crossing_handshakes_end_in_one_session() -> None:
    """Both nodes send a discovery ping at once: the tie-break of the ClientHello randoms
    leaves one session, the same on both sides, and both pings arrive."""
    for _ in range(8):  # both orders of the randoms come up
        net = network(A, B)
        hello_a = net.nodes[A].wrap(PING_A, B, new_handshake=True)
        hello_b = net.nodes[B].wrap(PING_B, A, new_handshake=True)
        net.exchange([(A, B, hello_a[0]), (B, A, hello_b[0])])
        assert net.inbox[A] == [(PING_B, B)] and net.inbox[B] == [(PING_A, A)]
        a, b = net.nodes[A], net.nodes[B]
        assert a.sessions == b.sessions == 1 and a.handshakes == b.handshakes == 0
        assert a.counters.handshakes_succeeded == b.counters.handshakes_succeeded == 1
        assert a.counters.handshake_collisions == b.counters.handshake_collisions == 1
        assert a.counters.handshakes_failed == b.counters.handshakes_failed == 0
        assert_crosswise(a, A, b, B)
        net.run_until(30.0)  # nothing left to resend, nothing times out
        assert a.counters.handshakes_timed_out == b.counters.handshakes_timed_out == 0


def test_ecdhe_psk_is_allowed() -> None:
    net = network(A, B)
    clock = net.clock
    net.add(C, DtlsManagementSecurity(
        "dtls-mgmt", SECRET, clock=clock,
        cipher_suites=(cs.TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,),
    ))  # fmt: skip
    net.wrap(C, A, PING_A)
    assert net.inbox[A] == [(PING_A, C)]
    assert net.nodes[A].suite(C) is cs.TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256
    assert_crosswise(net.nodes[A], A, net.nodes[C], C)


def test_from_config_and_callback() -> None:
    config = ManagementSecurityConfig("cid-cluster-manager", os.urandom(32))
    clock = Clock()
    one = DtlsManagementSecurity.from_config(config, clock=clock)
    two = DtlsManagementSecurity.from_config(config, clock=clock)
    changes: list[tuple[Address, object]] = []
    one.on_keys_changed = lambda peer, keys: changes.append((peer, keys))
    net = Network(clock)
    net.add(A, one)
    net.add(B, two)
    net.wrap(A, B, PING_A)
    assert changes == [(B, one.mac_for(B))] and one.mac_for(B) is not None
    # An authenticated close_notify ends the session (and its keys).
    session = one._peers[B].session  # type: ignore[attr-defined]
    assert session is not None
    close = Alert(AlertLevel.WARNING, 0).encode()
    record = session.cipher.seal(1, session.next_write_seq, ContentType.ALERT, close)
    assert two.unwrap(record, A) == ([], [])
    assert two.mac_for(A) is None and two.counters.sessions_closed == 1


# -- refusals and forgeries --------------------------------------------------------------------


def test_wrong_secret_fails_and_delivers_nothing() -> None:
    net = network(A, B, secrets={A: b"another secret"})
    net.wrap(A, B, PING_A)
    assert net.inbox[B] == [] and net.inbox[A] == []
    a, b = net.nodes[A].counters, net.nodes[B].counters
    assert b.handshakes_failed == 1 and a.handshakes_failed == 1  # B's alert reached A
    assert a.dropped_queued == 1  # the ping that waited
    assert a.handshakes_succeeded == b.handshakes_succeeded == 0
    assert net.nodes[A].peers == net.nodes[B].peers == 0
    assert net.nodes[A].mac_for(B) is None and net.nodes[B].mac_for(A) is None


@pytest.mark.parametrize(
    ("identity", "secret"),
    [(b"password", b"sesame"), (b"Client_identity", b"secretPSK"), (b"cali.x", b".fornium")],
)
def test_demo_identities_do_not_open_the_channel(identity: bytes, secret: bytes) -> None:
    """Only the management identity: not the server's built-in PSK identities."""
    net = network(B)
    net.add(A, DtlsManagementSecurity(identity, secret, clock=net.clock))
    net.wrap(A, B, PING_A)
    assert net.inbox[B] == []
    assert net.nodes[B].counters.handshakes_failed == 1


def test_garbage_and_forgeries_are_dropped_and_counted() -> None:
    net = network(A, B)
    b = net.nodes[B]
    assert b.unwrap(b"\x01garbage", A) == ([], [])
    assert b.unwrap(PING_A, A) == ([], [])  # a plain-UDP ping (61 is no record type)
    assert b.unwrap(b"", A) == ([], [])
    assert b.counters.dropped_malformed == 3
    header = bytes([APPLICATION_DATA, 0xFE, 0xFD, 0, 1]) + (1000).to_bytes(6, "big")
    forged = header + b"\x00\x20" + bytes(32)  # epoch 1, seq 1000, 32 bytes
    assert b.unwrap(forged, A) == ([], [])  # no session with A
    assert b.counters.dropped_no_session == 1
    net.wrap(A, B, PING_A)
    assert b.unwrap(forged, A) == ([], [])  # the session's key does not open it
    assert b.counters.dropped_unauthenticated == 1
    # A forged plain fatal alert cannot end the session.
    alert = plain_record(ContentType.ALERT, 99, Alert(AlertLevel.FATAL, 20).encode())
    assert b.unwrap(alert, A) == ([], [])
    assert b.counters.dropped_unexpected == 1 and b.established(A)
    # A replayed record is delivered once.
    sealed = net.nodes[A].wrap(PING_A, B, new_handshake=False)
    assert b.unwrap(sealed[0], A)[0] == [PING_A]
    assert b.unwrap(sealed[0], A) == ([], [])
    assert b.counters.dropped_replayed == 1
    # The record is bound to the session's peer address: from C it is nobody's.
    assert b.unwrap(sealed[0], C) == ([], []) and b.peers == 1
    assert b.sessions == 1 and b.handshakes == 0


def test_client_hello_without_cookie_keeps_no_state() -> None:
    net = network(A, B)
    hello = net.nodes[A].wrap(PING_A, B, new_handshake=False)
    for _ in range(5):  # spoofed sources get a HelloVerifyRequest each, and nothing is kept
        payloads, replies = net.nodes[B].unwrap(hello[0], C)
        assert payloads == [] and len(replies) == 1
    assert net.nodes[B].peers == 0 and net.nodes[B].handshakes == 0
    assert net.nodes[B].counters.hello_verify_requests == 5


# -- new handshakes and retransmissions --------------------------------------------------------


@pytest.mark.parametrize("forcing", [A, B])
def test_new_handshake_forces_a_new_session(forcing: Address) -> None:
    net = network(A, B)
    net.wrap(A, B, PING_A)
    other = B if forcing == A else A
    old = net.nodes[forcing].mac_for(other)
    out = net.nodes[forcing].wrap(b"discovery", other, new_handshake=True)
    assert len(out) == 1 and out[0][0] == ContentType.HANDSHAKE  # a ClientHello, not data
    # The old session still serves other payloads while the new handshake runs.
    assert net.nodes[forcing].established(other)
    net.send(forcing, other, out)
    assert net.inbox[other][-1] == (b"discovery", forcing)
    new = net.nodes[forcing].mac_for(other)
    assert new is not None and new is not old
    assert net.nodes[A].counters.handshakes_succeeded == 2
    assert net.nodes[A].sessions == net.nodes[B].sessions == 1
    assert_crosswise(net.nodes[A], A, net.nodes[B], B)
    net.wrap(other, forcing, b"after")
    assert net.inbox[forcing][-1] == (b"after", other)


def test_lost_flights_are_retransmitted_by_tick() -> None:
    """Every handshake datagram is lost the first time it is sent: each flight (and the
    stateless HelloVerifyRequest, answered again for the repeated ClientHello) needs its
    resend. Application data is not resent by DTLS (the ping/pong layer retries)."""
    net = network(A, B)
    seen: set[bytes] = set()

    def lose_first_copy(datagram: Datagram) -> bool:
        first = datagram[2] not in seen and datagram[2][0] != APPLICATION_DATA
        seen.add(datagram[2])
        return first

    net.drop = lose_first_copy
    net.wrap(A, B, PING_A)
    assert net.inbox[B] == []
    net.run_until(20.0)
    assert net.inbox[B] == [(PING_A, A)]
    assert net.nodes[A].established(B) and net.nodes[B].established(A)
    assert net.nodes[A].counters.retransmissions >= 3
    assert net.nodes[A].counters.handshakes_timed_out == 0


def test_lost_last_flight_is_resent_by_the_server() -> None:
    """B's CCS + Finished is lost: A resends its flight, B (done) answers with its last flight
    again (RFC 6347 §4.2.4), A completes and the ping goes out."""
    net = network(A, B)
    dropped: list[bytes] = []

    def lose_server_finished(datagram: Datagram) -> bool:
        source, _, data = datagram
        if source == B and data[0] == ContentType.CHANGE_CIPHER_SPEC and not dropped:
            dropped.append(data)
            return True
        return False

    net.drop = lose_server_finished
    net.wrap(A, B, PING_A)
    assert dropped and net.nodes[B].established(A) and not net.nodes[A].established(B)
    net.run_until(1.0)
    assert net.nodes[A].established(B) and net.inbox[B] == [(PING_A, A)]
    assert net.nodes[B].counters.retransmissions == 1
    assert_crosswise(net.nodes[A], A, net.nodes[B], B)


def test_handshake_times_out() -> None:
    net = network(A)  # B never answers
    a = net.nodes[A]
    assert len(a.wrap(PING_A, B, new_handshake=True)) == 1
    resent = []
    for _ in range(10):
        due = a.next_tick
        if due == float("inf"):
            break
        resent.append((due, len(a.tick(due))))
    # 500 ms, doubled, 3 retransmissions (§5.7), then the handshake is given up.
    assert resent == [(0.5, 1), (1.5, 1), (3.5, 1), (7.5, 0)]
    assert a.counters.handshakes_timed_out == 1 and a.counters.dropped_queued == 1
    assert a.peers == 0 and a.handshakes == 0


# -- bounds ------------------------------------------------------------------------------------


def test_queue_and_handshakes_are_bounded() -> None:
    limits = ManagementSecurityLimits(max_handshakes=1, max_queued=2)
    net = network(A, limits=limits)
    a = net.nodes[A]
    assert len(a.wrap(b"1", B, new_handshake=False)) == 1
    assert a.wrap(b"2", B, new_handshake=False) == []
    assert a.wrap(b"3", B, new_handshake=False) == []
    assert a.counters.dropped_queue_full == 1
    assert a.wrap(b"x", C, new_handshake=False) == []  # a second handshake at once
    assert a.counters.handshakes_refused == 1 and a.counters.dropped_queued == 1
    assert a.handshakes == 1 and a.peers == 1
    # The server side: a cookie-verified ClientHello beyond the limit is refused too.
    net.add(B, DtlsManagementSecurity("dtls-mgmt", SECRET, clock=net.clock, limits=limits))
    net.add(C, DtlsManagementSecurity("dtls-mgmt", SECRET, clock=net.clock))
    net.add(D, DtlsManagementSecurity("dtls-mgmt", SECRET, clock=net.clock))
    net.drop = lambda datagram: datagram[0] == B and datagram[2][13] == 2  # lose ServerHellos
    net.wrap(C, B, b"c")
    net.wrap(D, B, b"d")
    assert net.nodes[B].handshakes == 1 and net.nodes[B].counters.handshakes_refused == 1


def test_sessions_are_bounded_least_recently_active_first() -> None:
    net = network(A, B, C, D, limits=ManagementSecurityLimits(max_connections=2))
    a = net.nodes[A]
    net.wrap(A, B, b"to b")
    net.wrap(A, C, b"to c")
    net.wrap(B, A, b"b is alive")  # B is now the more recently authenticated peer
    assert a.sessions == 2
    net.wrap(A, D, b"to d")
    assert net.inbox[D] == [(b"to d", A)]
    assert a.sessions == 2 and a.counters.sessions_evicted == 1
    assert a.mac_for(C) is None and a.mac_for(B) is not None and a.mac_for(D) is not None


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        ManagementSecurityLimits(max_connections=0)
    with pytest.raises(ValueError):
        DtlsManagementSecurity("dtls-mgmt", b"")
    with pytest.raises(ValueError):
        DtlsManagementSecurity(
            "dtls-mgmt", SECRET, cipher_suites=(cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,)
        )


def test_client_offers_no_connection_id() -> None:
    """Plain records on the management channel: the client sends no CID extension."""
    record = ClientHandshake(b"dtls-mgmt", SECRET, cid=None).start()
    hello = ClientHello.decode(record[13 + 12 :])  # record and handshake headers
    assert hello.extension(ConnectionIdExtension) is None


# -- live: two endpoints on loopback over the secured channel ----------------------------------


def test_two_secured_endpoints_on_loopback() -> None:
    async def scenario() -> None:
        fast = ClusterTimers(
            timer_interval=0.05, refresh_interval=0.1, discover_interval=0.2, expiration_time=0.2
        )
        security1 = DtlsManagementSecurity(DYNAMIC_MGMT_IDENTITY, SECRET)
        security2 = DtlsManagementSecurity(DYNAMIC_MGMT_IDENTITY, SECRET)
        node1 = ClusterManager(1, initial_nodes=2, timers=fast)
        node2 = ClusterManager(2, initial_nodes=2, timers=fast)
        one = await ManagementEndpoint.create(node1, ("127.0.0.1", 0), security=security1)
        two = await ManagementEndpoint.create(node2, ("127.0.0.1", 0), security=security2)
        try:
            node1.set_scope([two.local_address])
            node2.set_scope([one.local_address])
            await asyncio.wait_for(asyncio.gather(one.wait_ready(), two.wait_ready()), 10)
            assert node1.node_address(2) == two.local_address
            assert node2.node_address(1) == one.local_address
            assert security1.established(two.local_address)
            assert security2.established(one.local_address)
            # Refreshes go on over the session; both sides keep one session each.
            for _ in range(500):
                if security1.counters.opened >= 4 and security2.counters.opened >= 4:
                    break
                await asyncio.sleep(0.01)
            assert security1.counters.opened >= 4 and security2.counters.opened >= 4
            assert security1.sessions == security2.sessions == 1
            assert_crosswise(security1, one.local_address, security2, two.local_address)
            # A plain ping (unsecured) is dropped by the security, never reaches the table.
            received = node2.counters.received
            assert one.transport is not None
            one.transport.sendto(encode_message(PING, 7, ClusterState.UP), two.local_address)
            for _ in range(200):
                if security2.counters.dropped_malformed:
                    break
                await asyncio.sleep(0.01)
            assert security2.counters.dropped_malformed == 1
            assert node2.node_address(7) is None and node2.counters.received >= received
        finally:
            one.close()
            two.close()

    asyncio.run(scenario())


def test_endpoint_timer_resends_handshake_flights() -> None:
    """Node 2's port is silent at first: node 1's endpoint resends its ClientHello on the
    security's timer, and once node 2 listens there the handshake completes."""

    async def scenario() -> None:
        fast = ClusterTimers(
            timer_interval=0.05, refresh_interval=0.1, discover_interval=0.2, expiration_time=0.2
        )
        loop = asyncio.get_running_loop()
        closed: asyncio.Future[None] = loop.create_future()

        class Silent(asyncio.DatagramProtocol):
            def connection_lost(self, exc: Exception | None) -> None:
                closed.set_result(None)

        silent, _ = await loop.create_datagram_endpoint(Silent, local_addr=("127.0.0.1", 0))
        port = silent.get_extra_info("sockname")[1]
        security1 = DtlsManagementSecurity(DYNAMIC_MGMT_IDENTITY, SECRET)
        security2 = DtlsManagementSecurity(DYNAMIC_MGMT_IDENTITY, SECRET)
        node1 = ClusterManager(1, [("127.0.0.1", port)], initial_nodes=2, timers=fast)
        node2 = ClusterManager(2, initial_nodes=2, timers=fast)
        one = await ManagementEndpoint.create(node1, ("127.0.0.1", 0), security=security1)
        two: ManagementEndpoint | None = None
        try:
            for _ in range(500):
                if security1.counters.retransmissions:
                    break
                await asyncio.sleep(0.01)
            assert security1.counters.retransmissions >= 1 and not security1.sessions
            silent.close()
            await asyncio.wait_for(closed, 10)  # the port is free again
            node2.set_scope([one.local_address])
            two = await ManagementEndpoint.create(node2, ("127.0.0.1", port), security=security2)
            await asyncio.wait_for(asyncio.gather(one.wait_ready(), two.wait_ready()), 10)
            assert security1.established(("127.0.0.1", port))
            assert_crosswise(security1, one.local_address, security2, ("127.0.0.1", port))
        finally:
            silent.close()
            one.close()
            if two is not None:
                two.close()

    asyncio.run(scenario())
