"""Cluster membership: which node id lives at which management address (inventory §5.4).

Sans-IO core, asyncio shell:

* ``StaticCluster``: the node table of ``--dtls-cluster`` alone (static mode, §5.1): fixed,
  always available, no management protocol on the socket.
* ``ClusterManager``: the dynamic node table of ``--dtls-cluster-group`` and k8s mode, kept by
  ping/pong. It never reads a clock or a socket: every call takes ``now`` (seconds, any
  monotonic origin) and returns the datagrams to send. Tests drive it with a fake clock.
* ``ManagementEndpoint``: the asyncio datagram protocol on the management socket. It feeds
  ping/pong into the membership, runs its timer, and hands cluster records (first byte 62/63,
  §5.7) to the DTLS connector's callback.

Wire format of ping/pong (§5.4, §9.2; the README's 5 bytes are wrong): ``type`` (61 PING,
60 PONG), node id int32 little-endian, own ``ClusterState`` byte.

Where Californium has a quirk we do the correct thing (§9):

* the timer always runs; Californium never starts it when fewer than 2 initial nodes are
  expected, so a 2-node ``--dtls-cluster-group`` never pinged anyone (§9.9);
* node ids are 0..255, the CID byte that carries them (§5.5, §9.4);
* only addresses of the discovery scope may join (``accept_foreign=False``): on a plain-UDP
  management channel anybody who reaches the port could otherwise claim a node id and have
  that node's client records forwarded to it. Everything else is dropped and counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, NamedTuple, Protocol, cast

from extplugtest.cluster._header import (
    CLUSTER_MAX_NODE_ID,
    CLUSTER_RECORD_INCOMING,
    CLUSTER_RECORD_OUTGOING,
)
from extplugtest.cluster.keys import ClusterMacKeys

__all__ = [
    "MESSAGE_LENGTH",
    "PING",
    "PONG",
    "Address",
    "ClusterManager",
    "ClusterNode",
    "ClusterState",
    "ClusterTimers",
    "ManagementCounters",
    "ManagementEndpoint",
    "ManagementMessage",
    "ManagementSecurity",
    "Membership",
    "Outgoing",
    "SocketAddress",
    "StaticCluster",
    "decode_message",
    "encode_message",
    "normalize_address",
]

log = logging.getLogger(__name__)

PING = 0x3D  # 61, MAGIC_ID_PING
PONG = 0x3C  # 60, MAGIC_ID_PONG
MESSAGE_LENGTH = 6
_MESSAGE = struct.Struct("<Bib")  # type, node id int32 LE, state
_CLUSTER_RECORD_TYPES = (CLUSTER_RECORD_INCOMING, CLUSTER_RECORD_OUTGOING)

#: (host, port) with the host as a normalized IP address text.
Address = tuple[str, int]
#: What sockets and asyncio hand out: (host, port) or (host, port, flowinfo, scope id).
SocketAddress = tuple[Any, ...]


class ClusterState(IntEnum):
    """A node's own view, sent in every ping/pong (Californium's ClusterState ordinal)."""

    START = 0
    UP = 1  # enough nodes known
    INITIALIZED = 2  # ready: enough nodes report UP or INITIALIZED


class ManagementMessage(NamedTuple):
    type: int  # PING or PONG
    node_id: int
    state: ClusterState


def encode_message(message_type: int, node_id: int, state: ClusterState) -> bytes:
    return _MESSAGE.pack(message_type, node_id, state)


def decode_message(data: bytes) -> ManagementMessage | str:
    """The message, or the name of the counter its drop goes to."""
    if len(data) != MESSAGE_LENGTH:
        return "dropped_length"
    message_type, node_id, state = _MESSAGE.unpack(data)
    if message_type not in (PING, PONG):
        return "dropped_unknown_type"
    if not 0 <= node_id <= CLUSTER_MAX_NODE_ID:
        return "dropped_bad_node_id"
    if not 0 <= state <= ClusterState.INITIALIZED:
        return "dropped_bad_state"
    return ManagementMessage(message_type, node_id, ClusterState(state))


def normalize_address(address: SocketAddress) -> Address:
    """(host, port) with a canonical IP text: asyncio's 4-tuples for IPv6, IPv4-mapped IPv6
    and long IPv6 forms all become the key the node table uses."""
    ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.compressed, int(address[1]))


@dataclass(frozen=True, slots=True)
class ClusterTimers:
    """CLUSTER_MGMT.* (DtlsClusterManagerConfig), in seconds."""

    timer_interval: float = 2.0  # TIMER_INTERVAL
    refresh_interval: float = 4.0  # REFRESH_INTERVAL: ping nodes quiet for this long
    discover_interval: float = 10.0  # DISCOVER_INTERVAL
    expiration_time: float = 6.0  # EXPIRATION_TIME, after the refresh interval

    @property
    def first_tick(self) -> float:
        """Delay of the first tick: min(interval / 2, 100 ms)."""
        return min(self.timer_interval / 2, 0.1)

    @property
    def node_timeout(self) -> float:
        """A node not heard from for this long is removed (REFRESH + EXPIRATION)."""
        return self.refresh_interval + self.expiration_time


class Outgoing(NamedTuple):
    """A management datagram to send. ``discovery``: a ping to a scope address not in the
    table (a secured channel starts a new handshake for it, §5.4)."""

    data: bytes
    address: Address
    discovery: bool = False


@dataclass(slots=True)
class ManagementCounters:
    """Health counters of the management channel (§5.6 lists Californium's)."""

    received: int = 0
    sent: int = 0
    pings: int = 0
    pongs: int = 0
    dropped_length: int = 0  # not 6 bytes
    dropped_unknown_type: int = 0
    dropped_bad_node_id: int = 0  # outside 0..255
    dropped_bad_state: int = 0
    dropped_foreign: int = 0  # source not in the discovery scope
    dropped_own_id: int = 0  # claims our node id
    dropped_table_full: int = 0
    dropped_static: int = 0  # ping/pong on a static cluster
    dropped_cluster_records: int = 0  # 62/63 with no connector attached
    expired: int = 0
    moved: int = 0  # a node id seen at a new address
    discoveries: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class ClusterNode:
    node_id: int
    address: Address
    last_seen: float
    state: ClusterState


class Membership(Protocol):
    """What the DTLS connector asks (Californium's ClusterNodesProvider) and what the
    management endpoint drives."""

    own_node_id: int
    counters: ManagementCounters

    def node_address(self, node_id: int) -> Address | None:
        """Management address of *node_id* (forward target), None if unknown."""

    def available(self, address: Address) -> bool:
        """Whether a router address is a live node (backward target)."""

    def node_table(self) -> dict[int, Address]:
        """Every other node known now: node id -> management address."""

    @property
    def ready(self) -> bool: ...

    @property
    def next_tick(self) -> float: ...

    def start(self, now: float) -> list[Outgoing]: ...

    def receive(self, data: bytes, source: SocketAddress, now: float) -> list[Outgoing]: ...

    def tick(self, now: float) -> list[Outgoing]: ...


class StaticCluster:
    """Static mode (§5.1, §5.8): the node table comes from ``--dtls-cluster`` only."""

    def __init__(self, own_node_id: int, nodes: Mapping[int, Address]) -> None:
        _check_node_id(own_node_id)
        for node_id in nodes:
            _check_node_id(node_id)
        self.own_node_id = own_node_id
        self._nodes = {node_id: normalize_address(a) for node_id, a in nodes.items()}
        self._addresses = frozenset(self._nodes.values())
        self.counters = ManagementCounters()

    def node_address(self, node_id: int) -> Address | None:
        return self._nodes.get(node_id) if node_id != self.own_node_id else None

    def available(self, address: Address) -> bool:
        return normalize_address(address) in self._addresses

    def node_table(self) -> dict[int, Address]:
        return {n: a for n, a in self._nodes.items() if n != self.own_node_id}

    @property
    def ready(self) -> bool:
        return True

    @property
    def next_tick(self) -> float:
        return math.inf

    def start(self, now: float) -> list[Outgoing]:
        return []

    def receive(self, data: bytes, source: SocketAddress, now: float) -> list[Outgoing]:
        self.counters.received += 1
        self.counters.dropped_static += 1
        return []

    def tick(self, now: float) -> list[Outgoing]:
        return []


class ClusterManager:
    """Dynamic membership by ping/pong (Californium's DtlsClusterManager, §5.4).

    *scope*: the management addresses of the other nodes (``--dtls-cluster-group`` or the k8s
    pods; ``set_scope`` replaces it). *initial_nodes*: cluster size (this node included) at
    which this node is ready. The table holds at most *max_nodes* nodes.
    """

    def __init__(
        self,
        own_node_id: int,
        scope: Iterable[SocketAddress] = (),
        *,
        initial_nodes: int = 1,
        timers: ClusterTimers | None = None,
        max_nodes: int = CLUSTER_MAX_NODE_ID + 1,
        accept_foreign: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        _check_node_id(own_node_id)
        if max_nodes < 1:
            raise ValueError("max_nodes must be at least 1")
        self.own_node_id = own_node_id
        self.initial_nodes = initial_nodes
        self.timers = timers or ClusterTimers()
        self.max_nodes = max_nodes
        self.accept_foreign = accept_foreign
        self.counters = ManagementCounters()
        self._rng = rng or random.Random()
        self._scope: frozenset[Address] = frozenset()
        self._by_id: dict[int, ClusterNode] = {}
        self._by_address: dict[Address, ClusterNode] = {}
        self._ready = False
        self._next_tick = math.inf
        self._last_discovery = -math.inf
        self.set_scope(scope)

    # -- queries (the connector's ClusterNodesProvider) ------------------------------------

    def node_address(self, node_id: int) -> Address | None:
        node = self._by_id.get(node_id)
        return node.address if node is not None else None

    def available(self, address: Address) -> bool:
        return normalize_address(address) in self._by_address

    def nodes(self) -> list[ClusterNode]:
        return sorted(self._by_id.values(), key=lambda node: node.node_id)

    def node_table(self) -> dict[int, Address]:
        return {node.node_id: node.address for node in self._by_id.values()}

    @property
    def scope(self) -> frozenset[Address]:
        return self._scope

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def state(self) -> ClusterState:
        if self._ready:
            return ClusterState.INITIALIZED
        if len(self._by_id) + 1 >= self.initial_nodes:
            return ClusterState.UP
        return ClusterState.START

    @property
    def next_tick(self) -> float:
        return self._next_tick

    # -- inputs ----------------------------------------------------------------------------

    def set_scope(self, scope: Iterable[SocketAddress]) -> None:
        """Replace the discovery scope (k8s rediscovery). Known nodes stay until they expire."""
        self._scope = frozenset(normalize_address(a) for a in scope)

    def start(self, now: float) -> list[Outgoing]:
        """Schedule the first tick; a cluster of one is ready at once (the timer still runs,
        so nodes that appear later are found: §9.9)."""
        self._next_tick = now + self.timers.first_tick
        self._update_ready()
        return []

    def receive(self, data: bytes, source: SocketAddress, now: float) -> list[Outgoing]:
        """One management datagram (ping/pong payload) from *source*."""
        counters = self.counters
        counters.received += 1
        message = decode_message(data)
        if isinstance(message, str):
            setattr(counters, message, getattr(counters, message) + 1)
            return []
        try:
            address = normalize_address(source)
        except ValueError:
            counters.dropped_foreign += 1
            return []
        if message.node_id == self.own_node_id:
            # Our own ping echoed, or another node configured with our id.
            counters.dropped_own_id += 1
            return []
        if not self.accept_foreign and address not in self._scope:
            counters.dropped_foreign += 1
            return []
        state_before = self.state
        if not self._remember(message.node_id, address, message.state, now):
            return []
        self._update_ready()
        out: list[Outgoing] = []
        if message.type == PING:
            counters.pings += 1
            out.append(self._message(PONG, address))
        else:
            counters.pongs += 1
        if self.state != state_before:
            # Announce the new state at once (Californium: only on ready), so that the others
            # need not wait for the next refresh to count this node as UP.
            out.extend(
                self._message(PING, node.address)
                for node in self._by_id.values()
                if node.address != address or message.type == PONG
            )
        return out

    def tick(self, now: float) -> list[Outgoing]:
        """The timer (§5.4): expire, refresh, discover. Call at ``next_tick``."""
        timers = self.timers
        expired = [n for n in self._by_id.values() if now - n.last_seen > timers.node_timeout]
        for node in expired:
            self._forget(node)
        self.counters.expired += len(expired)
        stale = [n for n in self._by_id.values() if now - n.last_seen >= timers.refresh_interval]
        self._rng.shuffle(stale)
        out = [self._message(PING, node.address) for node in stale]
        if expired or not self._by_id or now - self._last_discovery >= timers.discover_interval:
            self._last_discovery = now
            self.counters.discoveries += 1
            known = self._by_address.keys()
            out.extend(
                self._message(PING, address, discovery=True)
                for address in sorted(self._scope)
                if address not in known
            )
        self._next_tick = now + timers.timer_interval
        return out

    # -- internals -------------------------------------------------------------------------

    def _remember(self, node_id: int, address: Address, state: ClusterState, now: float) -> bool:
        node = self._by_id.get(node_id)
        if node is None:
            if len(self._by_id) >= self.max_nodes:
                self.counters.dropped_table_full += 1
                return False
            node = ClusterNode(node_id, address, now, state)
            self._by_id[node_id] = node
            log.info("cluster node %d: node %d joined at %s", self.own_node_id, node_id, address)
        elif node.address != address:
            # A restarted pod has a new IP; the newest ping wins.
            self.counters.moved += 1
            del self._by_address[node.address]
            node.address = address
        previous = self._by_address.get(address)
        if previous is not None and previous is not node:
            # The address now speaks for another node id: the old one left.
            del self._by_id[previous.node_id]
        self._by_address[address] = node
        node.last_seen = now
        node.state = state
        return True

    def _forget(self, node: ClusterNode) -> None:
        log.info("cluster node %d: node %d expired", self.own_node_id, node.node_id)
        del self._by_id[node.node_id]
        self._by_address.pop(node.address, None)

    def _update_ready(self) -> None:
        """Become ready (§5.4)."""
        if self._ready:
            return
        states = [node.state for node in self._by_id.values()]
        up = sum(state != ClusterState.START for state in states)
        # Any INITIALIZED peer means a running cluster: join it at once.
        if up + 1 >= self.initial_nodes or ClusterState.INITIALIZED in states:
            self._ready = True
            log.info("cluster node %d: ready with %d nodes", self.own_node_id, up + 1)

    def _message(self, message_type: int, address: Address, discovery: bool = False) -> Outgoing:
        self.counters.sent += 1
        return Outgoing(
            encode_message(message_type, self.own_node_id, self.state), address, discovery
        )


def _check_node_id(node_id: int) -> None:
    if not 0 <= node_id <= CLUSTER_MAX_NODE_ID:
        raise ValueError(f"node id {node_id} outside 0..{CLUSTER_MAX_NODE_ID} (CID byte 0)")


class ManagementSecurity(Protocol):
    """DTLS-PSK protection of the management channel (§5.7); the implementation is
    ``extplugtest.cluster.security.DtlsManagementSecurity``: a DTLS 1.2 PSK endpoint (role
    BOTH, identity ``dtls-mgmt`` with the ``--dtls-cluster-group-security`` secret, or the k8s
    ``DTLS_CID_MGMT_*`` env) sharing the management socket; retransmission 500 ms, 3 retries,
    at most 1024 connections. Its handshakes derive the cluster MAC keys
    (``extplugtest.cluster.keys.cluster_mac_keys``). ``ManagementEndpoint`` routes every
    management datagram through it when one is given, and runs its timer.
    """

    def wrap(self, payload: bytes, peer: Address, *, new_handshake: bool) -> list[bytes]:
        """Datagrams that carry *payload* to *peer* as application data (or start the
        handshake and queue it); *new_handshake* forces a fresh one (discovery pings)."""

    def unwrap(self, datagram: bytes, peer: Address) -> tuple[list[bytes], list[bytes]]:
        """(application payloads for the membership, datagrams to send back to *peer*)."""

    def mac_for(self, peer: Address) -> ClusterMacKeys | None:
        """The ``ClusterMacKeys`` of the session with *peer*, None without keys."""

    @property
    def next_tick(self) -> float:
        """When ``tick`` is due next (loop clock; inf: nothing to do)."""

    def tick(self, now: float) -> list[tuple[bytes, Address]]:
        """Handshake retransmissions that are due: (datagram, peer) pairs to send."""


ClusterPacketHandler = Callable[[bytes, Address], None]


class ManagementEndpoint(asyncio.DatagramProtocol):
    """The management socket: demultiplexes cluster records from ping/pong (§5.7) and runs
    the membership's timer on the event loop clock.

    *on_cluster_packet* receives every datagram whose first byte is 62 or 63 with the
    sending node's address (the DTLS connector decodes, checks the MAC and processes it).
    ``send_cluster_packet`` is the connector's way out (forward and backward).
    """

    def __init__(
        self,
        membership: Membership,
        *,
        on_cluster_packet: ClusterPacketHandler | None = None,
        security: ManagementSecurity | None = None,
    ) -> None:
        self.membership = membership
        self.on_cluster_packet = on_cluster_packet
        self.security = security
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._security_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()

    @classmethod
    async def create(
        cls,
        membership: Membership,
        local_addr: tuple[str, int],
        **kwargs: object,
    ) -> ManagementEndpoint:
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: cls(membership, **kwargs),  # type: ignore[arg-type]
            local_addr=local_addr,
        )
        return endpoint

    @property
    def local_address(self) -> Address:
        assert self.transport is not None
        return normalize_address(self.transport.get_extra_info("sockname"))

    # -- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()
        self._send(self.membership.start(self._loop.time()))
        self._check_ready()
        self._schedule()

    def datagram_received(self, data: bytes, addr: SocketAddress) -> None:
        try:
            if data and data[0] in _CLUSTER_RECORD_TYPES:
                if self.on_cluster_packet is None:
                    self.membership.counters.dropped_cluster_records += 1
                else:
                    self.on_cluster_packet(data, (addr[0], addr[1]))
                return
            self._receive_management(data, addr)
        except Exception:  # a bad datagram must never stop the endpoint
            log.exception("management datagram from %s failed", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("management socket: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._security_timer is not None:
            self._security_timer.cancel()
            self._security_timer = None

    # -- API -------------------------------------------------------------------------------

    def send_cluster_packet(self, packet: bytes, node_address: Address) -> None:
        """Send a forward (IN) or backward (OUT) packet to another node."""
        if self.transport is not None:
            self.transport.sendto(packet, node_address)

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- internals -------------------------------------------------------------------------

    def _receive_management(self, data: bytes, addr: SocketAddress) -> None:
        assert self._loop is not None
        payloads = [data]
        if self.security is not None:
            payloads, replies = self.security.unwrap(data, normalize_address(addr))
            for reply in replies:
                self._sendto(reply, addr)
        for payload in payloads:
            self._send(self.membership.receive(payload, addr, self._loop.time()))
        self._check_ready()
        self._schedule_security()

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        try:
            self._send(self.membership.tick(self._loop.time()))
        except Exception:
            log.exception("cluster management timer failed")
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        when = self.membership.next_tick
        if self.transport is not None and not self.transport.is_closing() and when != math.inf:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _schedule_security(self) -> None:
        """Run the security's timer (handshake retransmissions) at its next deadline; a new
        handshake may bring it forward."""
        security, loop = self.security, self._loop
        if security is None or loop is None:
            return
        when = security.next_tick
        if when == math.inf or self.transport is None or self.transport.is_closing():
            return
        timer = self._security_timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._security_timer = loop.call_at(when, self._on_security_timer, when)

    def _on_security_timer(self, when: float) -> None:
        assert self._loop is not None and self.security is not None
        self._security_timer = None
        try:
            # The loop may run a handle up to its clock resolution early: the deadline it
            # was scheduled for is due by then.
            now = max(self._loop.time(), when)
            for datagram, address in self.security.tick(now):
                self._sendto(datagram, address)
        except Exception:
            log.exception("management security timer failed")
        self._schedule_security()

    def _check_ready(self) -> None:
        if self.membership.ready and not self._ready.is_set():
            self._ready.set()

    def _send(self, outgoing: list[Outgoing]) -> None:
        for message in outgoing:
            if self.security is None:
                self._sendto(message.data, message.address)
                continue
            for datagram in self.security.wrap(
                message.data, message.address, new_handshake=message.discovery
            ):
                self._sendto(datagram, message.address)
        self._schedule_security()

    def _sendto(self, data: bytes, address: SocketAddress) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)
