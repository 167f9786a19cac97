"""One node of a DTLS-CID cluster in this process (inventory §5.1, §5.6).

A ``ClusterNode`` joins three pieces: the node's DTLS endpoint, whose engine is a
``ClusterEngine`` (cluster/_router.pyx: forwarding, backwarding, all in C); the management
socket, which that engine reads, handing ping/pong to the membership; and the membership
itself (``StaticCluster`` or the ping/pong ``ClusterManager``), whose node table is copied into
the engine whenever it may have changed. With a secured management channel (DTLS-PSK,
cluster/security.py) the cluster MAC keys of each node's session are copied in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, cast

from extplugtest.cluster._header import ClusterMac
from extplugtest.cluster._router import ClusterEngine
from extplugtest.cluster.management import (
    Address,
    ManagementEndpoint,
    ManagementSecurity,
    Membership,
    SocketAddress,
)
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.coap.transport_udp import bind_udp_socket
from extplugtest.dtls.connector import DtlsServerTransport

logger = logging.getLogger("extplugtest.cluster")

#: how often the node table is copied into the engine besides after every management datagram
#: (the membership's own timers expire nodes)
SYNC_INTERVAL = 0.5
#: management socket buffers: the DTLS ones plus room for the cluster header (§5.2)
BUFFER_SIZE = 1_000_028


class SocketDatagramTransport:
    """What ManagementEndpoint needs of an asyncio datagram transport, over a socket that the
    cluster engine reads (so that cluster packets never pass through Python)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._closing = False

    def sendto(self, data: bytes, address: SocketAddress) -> None:
        if not self._closing:
            if self.sock.family == socket.AF_INET:
                address = address[:2]
            with contextlib.suppress(OSError):  # UDP: a failed send is a lost datagram
                self.sock.sendto(data, address)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock.getsockname() if name == "sockname" else default


class ClusterNode:
    """Node *membership.own_node_id* behind the DTLS endpoint *transport* (opened with
    ``engine_type=ClusterEngine`` and this node id), managed on *management_address*."""

    def __init__(
        self,
        transport: DtlsServerTransport,
        management_address: Address,
        membership: Membership,
        *,
        backward: bool = True,
        security: ManagementSecurity | None = None,
        mac: bool = False,
        batch: bool = True,
    ) -> None:
        if mac and security is None:
            raise ValueError("the cluster MAC needs the secured management channel")
        self.transport = transport
        self.management_address = management_address
        self.membership = membership
        self.backward = backward
        self.security = security
        self.mac = mac
        self.batch = batch
        self.management = ManagementEndpoint(membership, security=security)
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._table: dict[int, Address] = {}
        self._macs: dict[int, tuple[ClusterMac, ClusterMac] | None] = {}
        self._sync_timer = PeriodicTimer(SYNC_INTERVAL, self.sync)

    @property
    def node_id(self) -> int:
        return self.membership.own_node_id

    @property
    def engine(self) -> ClusterEngine | None:
        engine = self.transport.engine
        return engine if isinstance(engine, ClusterEngine) else None

    @property
    def local_management_address(self) -> tuple:
        assert self.sock is not None
        return self.sock.getsockname()

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the management socket and start; the DTLS transport is open already."""
        engine = self.engine
        if engine is None:
            raise RuntimeError("the DTLS endpoint of a cluster node needs a ClusterEngine")
        self.sock = bind_udp_socket(self.management_address, BUFFER_SIZE, BUFFER_SIZE)
        engine.cluster(self.node_id, self.sock.fileno(), self._management_datagram,
                       backward=self.backward, mac=self.mac, batch=self.batch,
                       defer=loop.call_soon)  # fmt: skip
        self._loop = loop
        loop.add_reader(self.sock.fileno(), engine.on_management_readable)
        # ManagementEndpoint starts its membership timer from the running loop.
        transport = cast(asyncio.DatagramTransport, SocketDatagramTransport(self.sock))
        loop.call_soon(self.management.connection_made, transport)
        loop.call_soon(self.sync)
        self._sync_timer.start(loop)

    def _management_datagram(self, data: bytes, address: SocketAddress) -> None:
        self.management.datagram_received(data, address)
        self.sync()

    def sync(self) -> None:
        """Copy the membership's node table into the engine (only what changed)."""
        engine = self.engine
        if engine is None:
            return
        table = self.membership.node_table()
        for node_id in self._table.keys() - table.keys():
            engine.set_node(node_id, None)
        for node_id, address in table.items():
            if self._table.get(node_id) != address:
                engine.set_node(node_id, address)
        self._table = table
        if self.mac and self.security is not None:
            for node_id, address in table.items():
                keys = self.security.mac_for(address)
                macs = None if keys is None else (keys.write, keys.read)
                if self._macs.get(node_id) != macs:
                    engine.set_node_mac(node_id, *(macs or (None, None)))
                    self._macs[node_id] = macs

    def close(self) -> None:
        self._sync_timer.stop()
        self.management.connection_lost(None)
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
