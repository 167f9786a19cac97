"""Assembles the server: resource trees, endpoints per interface address, timers."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from extplugtest.cluster._router import ClusterEngine
from extplugtest.cluster.k8s import K8sApiSettings, K8sDiscoverClient, K8sError, keep_scope_fresh
from extplugtest.cluster.management import ClusterManager, Membership, StaticCluster
from extplugtest.cluster.monitor import MonitorService
from extplugtest.cluster.node import ClusterNode
from extplugtest.cluster.options import ClusterConfig, ClusterMode, ClusterNodeSpec, HostPort
from extplugtest.cluster.security import DtlsManagementSecurity
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.endpoint_tcp import TcpEndpoint
from extplugtest.coap.linkformat import well_known
from extplugtest.coap.resource import Resource
from extplugtest.coap.transmission import TransmissionParameters
from extplugtest.coap.transport_tcp import TcpBackendError, TcpLimits, TcpServerTransport
from extplugtest.coap.transport_udp import UdpServerTransport
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.handshake_server import ClientAuth, DtlsConfig
from extplugtest.dtls.persistence import SavedConnection
from extplugtest.dtls.session_cache import SessionCache
from extplugtest.resources.benchmark import Benchmark
from extplugtest.resources.extended import add_extended_resources
from extplugtest.resources.plugtest import add_plugtest_resources
from extplugtest.resources.requests import java_host_address
from extplugtest.resources.root import RootResource
from extplugtest.resources.settings import ResourceSettings
from extplugtest.server._netif import interface_addresses
from extplugtest.server.config import ServerConfig

logger = logging.getLogger("extplugtest.server")

#: COAP.TCP_NUMBER_OF_BULK_BLOCKS: BERT blocks of 4 KiB on the extended server, 1 KiB plugtest
BULK_BLOCKS_EXTENDED = 4
BULK_BLOCKS_PLUGTEST = 1

Transport = UdpServerTransport | DtlsServerTransport | TcpServerTransport


class StartupError(Exception):
    """The server cannot start; str() is the one line to show the user."""


@dataclass
class InterfaceSelection:
    """Which local addresses get endpoints (Californium's --[no-]loopback etc.)."""

    loopback: bool = True
    external: bool = True
    ipv4: bool = True
    ipv6: bool = True
    patterns: list[str] = field(default_factory=list)

    def select(self, addresses: list[tuple[str, int, str, int]]) -> list[tuple[str, int]]:
        """(address text, scope id) of the addresses to bind, in a stable order.

        A pattern must match a whole address text (Java's ``Matcher.matches()``), in our form
        (``::1``) or in Java's ``InetAddress.getHostAddress()`` form (``0:0:0:0:0:0:0:1``);
        an IPv6 address is also matched with ``%<interface name>`` after either form."""
        chosen = []
        for name, version, text, scope in addresses:
            ip = ipaddress.ip_address(text)
            if (version == 4 and not self.ipv4) or (version == 6 and not self.ipv6):
                continue
            # Like Californium's SimpleInetAddressFilter, link-local counts as "loopback".
            local = ip.is_loopback or ip.is_link_local
            if (local and not self.loopback) or (not local and not self.external):
                continue
            if self.patterns and not self._matches(text, name, version):
                continue
            chosen.append((text, scope))
        return chosen

    def _matches(self, text: str, name: str, version: int) -> bool:
        forms = [text]
        if version == 6:
            java = java_host_address(text)
            forms += [java, f"{text}%{name}", f"{java}%{name}"]
        return any(re.fullmatch(p, form) for p in self.patterns for form in forms)


def _bind_address(address: str, scope: int, port: int) -> tuple:
    return (address, port) if scope == 0 else (address, port, 0, scope)


def is_external(address: str) -> bool:
    """Californium classifies by isLoopbackAddress() here, so link-local counts as external."""
    return not ipaddress.ip_address(address).is_loopback


class ExtendedServer:
    """The extended endpoints (benchmark etc.) and, optionally, the plugtest endpoints."""

    def __init__(
        self,
        config: ServerConfig,
        interfaces: InterfaceSelection,
        *,
        plugtest: bool = True,
        benchmark: bool = False,
        diagnose: bool = False,
        notify_interval: float = 5.0,
        echo_delay: bool = False,
        dtls: DtlsConfig | None = None,
        plugtest_dtls: DtlsConfig | None = None,
        dtls_only: bool = False,
        tcp: bool = True,
        tcp_limits: TcpLimits | None = None,
        tls: ssl.SSLContext | None = None,
        cluster: ClusterConfig | None = None,
        dtls_wildcard: bool = False,
    ) -> None:
        self.config = config
        #: --k8s-monitor, also without a cluster (Californium's DockerfileNoCluster)
        self.monitor_address = cluster.monitor if cluster is not None else None
        #: the DTLS-CID cluster: its nodes' DTLS endpoints replace the extended server's
        #: DTLS endpoints, and the plugtest server is left out (as Californium does)
        self.cluster = cluster if cluster is not None and cluster.enabled else None
        if self.cluster is not None:
            plugtest = False
        self.interfaces = interfaces
        #: DTLS endpoints on the next port (5784, 5684), or None for plain CoAP only
        self.dtls = dtls
        #: the plugtest server's DTLS settings: client authentication NEEDED unless the caller
        #: says otherwise (inventory §1.3), and sessions of its own, so that a session of the
        #: extended endpoints (WANTED: maybe anonymous) is not resumed on the plugtest ones
        if plugtest_dtls is None and dtls is not None:
            plugtest_dtls = dataclasses.replace(
                dtls, client_auth=ClientAuth.NEEDED, session_cache=SessionCache()
            )
        self.plugtest_dtls = plugtest_dtls if dtls is not None else None
        self.dtls_only = dtls_only and dtls is not None
        #: the HTTPS handover (server/handover.py): one extended DTLS endpoint on the IPv4
        #: wildcard address instead of one per address, so that its label
        #: (dtls://0.0.0.0:5784) is the same on the old and the new host (inventory §1.2)
        self.dtls_wildcard = dtls_wildcard and dtls is not None
        #: TCP endpoints (RFC 8323) on the plain ports; --dtls-only forces them off
        self.tcp = tcp and not self.dtls_only
        self.tcp_limits = tcp_limits or TcpLimits(
            idle_timeout=config.tcp_connection_idle_timeout,
            slow_timeout=config.tcp_connect_timeout,
            handshake_timeout=config.tcp_tls_handshake_timeout,
        )
        self.dtls_limits = DtlsLimits(
            max_connections=config.dtls_max_connections,
            stale_after=config.dtls_stale_connection_threshold,
            mac_filter_threshold=config.dtls_mac_error_filter_threshold,
            mac_filter_quiet=config.dtls_mac_error_filter_quiet_time,
            retransmission_timeout=config.dtls_retransmission_timeout,
            retransmission_timeout_max=config.dtls_max_retransmission_timeout,
            retransmission_scale=config.dtls_retransmission_timeout_scale,
            retransmission_init_random=config.dtls_retransmission_init_random,
            additional_ecc_timeout=config.dtls_additional_ecc_timeout,
            max_retransmissions=config.dtls_max_retransmissions,
            mtu=config.dtls_mtu,
            mtu_limit=config.dtls_mtu_limit,
            application_authorization_timeout=config.dtls_application_authorization_timeout,
        )
        #: the plugtest endpoints' DTLS limits: no application authorization (they require
        #: client certificates, inventory §6.3)
        self.plugtest_dtls_limits = dataclasses.replace(
            self.dtls_limits, application_authorization_timeout=0.0
        )
        #: TLS endpoints (coaps+tcp) on the secure ports, with --tcp
        self.tls = tls if self.tcp else None
        self.settings = ResourceSettings(
            notify_interval=notify_interval,
            echo_delay=echo_delay,
            max_resource_body_size=config.max_resource_body_size,
            endpoints=lambda: [t.endpoint for t in self.transports],
        )
        self.benchmark = Benchmark(benchmark, notify_interval, config.max_resource_body_size)
        self.extended_root = RootResource()
        self.extended_root.add(self.benchmark)
        add_extended_resources(self.extended_root, self.settings, diagnose)
        self.extended_root.add(well_known(self.extended_root))
        self.plugtest_root: Resource | None = None
        if plugtest:
            self.plugtest_root = RootResource()
            add_plugtest_resources(self.plugtest_root, self.settings)
            self.plugtest_root.add(well_known(self.plugtest_root))
        self.transports: list[Transport] = []
        self.cluster_nodes: list[ClusterNode] = []
        self.monitor: MonitorService | None = None
        #: more conditions of /ready, e.g. the handover's (restore done, not handed over)
        self.ready_checks: list[Callable[[], bool]] = []
        self._k8s_stop: asyncio.Event | None = None
        self._background: list[asyncio.Task[Any]] = []

    def _endpoint(
        self,
        root: Resource,
        address: str,
        plugtest: bool,
        endpoint_class: type[CoapEndpoint] = CoapEndpoint,
        **extra: Any,
    ) -> CoapEndpoint:
        """An endpoint with Californium's per-server and per-interface settings: the plugtest
        server uses 64-byte messages and blocks everywhere, the extended server on external
        UDP interfaces (anti-amplification, inventory §1.2)."""
        config = self.config
        small = plugtest or is_external(address)
        return endpoint_class(
            root,
            max_message_size=(
                config.external_max_message_size if small else config.max_message_size
            ),
            preferred_block_size=(
                config.external_preferred_block_size if small else config.preferred_block_size
            ),
            transmission=TransmissionParameters(
                config.ack_timeout, config.ack_random_factor, config.max_retransmit
            ),
            max_observes=config.max_server_observes,
            max_body_size=config.max_resource_body_size,
            notification_check_count=4 if plugtest else config.notification_check_interval_count,
            notification_check_interval=(30.0 if plugtest else config.notification_check_interval),
            **extra,
        )

    def _dedup(self, plugtest: bool) -> DeduplicationCache | None:
        config = self.config
        if not config.deduplication:
            return None
        return DeduplicationCache(
            max_peers=min(config.max_active_peers, 10_000) if plugtest else config.max_active_peers,
            messages_per_peer=config.peers_mark_and_sweep_messages,
            exchange_lifetime=config.exchange_lifetime,
            non_lifetime=config.non_lifetime,
            peer_inactivity=config.max_peer_inactivity_period,
        )

    def start(self, loop: asyncio.AbstractEventLoop) -> list[str]:
        """Bind every endpoint; returns their URIs. Raises StartupError when that fails."""
        addresses = self.interfaces.select(interface_addresses())
        if not addresses:
            raise StartupError(
                "no interface address matches the selection; relax --interfaces-pattern or "
                "--no-loopback/--no-external/--no-ipv4/--no-ipv6"
            )
        roots: list[tuple[Resource, int, bool]] = [
            (self.extended_root, self.config.coap_port, True)
        ]
        if self.plugtest_root is not None:
            roots.append((self.plugtest_root, self.config.plugtest_port, False))
        try:
            for root, port, extended in roots:
                for address, scope in addresses:
                    if not self.dtls_only:
                        self._open(loop, self._udp(root, address, scope, port, extended))
                    if self.tcp:
                        self._open(loop, self._tcp(root, address, scope, port, extended))
                    wildcard = extended and self.dtls_wildcard
                    if self.dtls is not None and self.cluster is None and not wildcard:
                        self._open(loop, self._dtls(root, address, scope, port + 1, extended))
                    if self.tls is not None:
                        self._open(
                            loop, self._tcp(root, address, scope, port + 1, extended, self.tls)
                        )
            if self.dtls_wildcard and self.cluster is None:
                port = self.config.coap_port + 1
                self._open(loop, self._dtls(self.extended_root, "0.0.0.0", 0, port, True))
            if self.cluster is not None:
                self._open_cluster(loop, self.cluster)
            if self.monitor_address is not None:
                self._start_monitor(loop, self.monitor_address)
        except StartupError:
            self.close()
            raise
        for resource in self._all_resources():
            resource.start(loop)
        return [self._describe(t) for t in self.transports]

    @staticmethod
    def _describe(transport: Any) -> str:
        """The endpoint's URI; for plain TCP also the I/O backend (io_uring or epoll)."""
        uri = str(transport.endpoint.uri)
        plain_tcp = isinstance(transport, TcpServerTransport) and transport.ssl_context is None
        if plain_tcp and transport.engine is not None:
            return f"{uri} ({transport.engine.io_backend})"
        return uri

    def _udp(
        self, root: Resource, address: str, scope: int, port: int, extended: bool
    ) -> UdpServerTransport:
        return UdpServerTransport(
            self._endpoint(root, address, plugtest=not extended),
            _bind_address(address, scope, port),
            dedup=self._dedup(plugtest=not extended),
            fast=self.benchmark.fast_path if extended else None,
            receive_buffer_size=self.config.udp_receive_buffer_size,
            send_buffer_size=self.config.udp_send_buffer_size,
        )

    def _dtls(
        self, root: Resource, address: str, scope: int, port: int, extended: bool
    ) -> DtlsServerTransport:
        dtls = self.dtls if extended else self.plugtest_dtls
        assert dtls is not None
        # DTLS endpoints use the loopback sizes on every interface (inventory §1.2).
        return DtlsServerTransport(
            self._endpoint(root, "127.0.0.1", plugtest=not extended),
            _bind_address(address, scope, port),
            dtls,
            dedup=self._dedup(plugtest=not extended),
            fast=self.benchmark.fast_path if extended else None,
            limits=self.dtls_limits if extended else self.plugtest_dtls_limits,
            buffer_size=self.config.udp_receive_buffer_size,
        )

    def _tcp(
        self,
        root: Resource,
        address: str,
        scope: int,
        port: int,
        extended: bool,
        tls: ssl.SSLContext | None = None,
    ) -> TcpServerTransport:
        # TCP shares the plain port, TLS the secure one (inventory §1.2); both use the loopback
        # sizes on every interface.
        endpoint = self._endpoint(
            root,
            "127.0.0.1",
            plugtest=not extended,
            endpoint_class=TcpEndpoint,
            bulk_blocks=BULK_BLOCKS_EXTENDED if extended else BULK_BLOCKS_PLUGTEST,
        )
        assert isinstance(endpoint, TcpEndpoint)
        return TcpServerTransport(
            endpoint,
            _bind_address(address, scope, port),
            fast=self.benchmark.fast_path if extended else None,
            limits=self.tcp_limits,
            ssl_context=tls,
        )

    # -- the DTLS-CID cluster (inventory §5) ---------------------------------------------------
    def _open_cluster(self, loop: asyncio.AbstractEventLoop, cluster: ClusterConfig) -> None:
        if self.dtls is None:
            raise StartupError("a DTLS-CID cluster needs DTLS: drop --no-dtls")
        if self.dtls.cid_length < 6:
            raise StartupError(
                "a DTLS-CID cluster needs DTLS.CONNECTION_ID_LENGTH of at least 6 (the node id "
                "is its first byte)"
            )
        for node, membership in self._cluster_members(loop, cluster):
            assert node.dtls is not None
            transport = DtlsServerTransport(
                self._endpoint(self.extended_root, "127.0.0.1", plugtest=False),
                _resolve(node.dtls),
                self.dtls,
                dedup=self._dedup(plugtest=False),
                fast=self.benchmark.fast_path,
                limits=self.dtls_limits,
                buffer_size=self.config.udp_receive_buffer_size,
                engine_type=ClusterEngine,
                node_id=node.node_id,
            )
            self._open(loop, transport)
            security = (
                None if cluster.security is None
                else DtlsManagementSecurity.from_config(cluster.security)
            )  # fmt: skip
            cluster_node = ClusterNode(
                transport, _resolve(node.mgmt), membership, backward=cluster.backward,
                security=security, mac=cluster.mac and security is not None,
                batch=cluster.batch,
            )  # fmt: skip
            try:
                cluster_node.open(loop)
            except OSError as error:
                raise StartupError(
                    f"cannot bind the cluster management socket {node.mgmt}: "
                    f"{error.strerror or error}; choose another --dtls-cluster address"
                ) from None
            self.cluster_nodes.append(cluster_node)

    def _cluster_members(
        self, loop: asyncio.AbstractEventLoop, cluster: ClusterConfig
    ) -> list[tuple[ClusterNodeSpec, Membership]]:
        """The nodes this process serves, each with its membership (inventory §5.1)."""
        if cluster.mode is ClusterMode.STATIC:
            table = {other.node_id: _resolve(other.mgmt) for other in cluster.nodes}
            return [(node, StaticCluster(node.node_id, table)) for node in cluster.local_nodes]
        if cluster.mode is ClusterMode.DYNAMIC:
            scope = [_resolve(address) for address in cluster.group]
            members: list[tuple[ClusterNodeSpec, Membership]] = []
            for node in cluster.local_nodes:
                manager = ClusterManager(
                    node.node_id, scope, initial_nodes=cluster.initial_nodes, timers=cluster.timers
                )
                members.append((node, manager))
            return members
        # k8s (§5.9): node id and cluster size from the own pod, the scope from the pod list.
        assert cluster.k8s is not None
        try:
            client = K8sDiscoverClient(
                K8sApiSettings.from_environment(), cluster.k8s.external_mgmt_port
            )
            initial_nodes = client.initial_nodes()
        except (K8sError, ValueError, OSError) as error:
            raise StartupError(f"k8s discovery: {error}") from None
        manager = ClusterManager(client.node_id, initial_nodes=initial_nodes, timers=cluster.timers)
        self._k8s_stop = asyncio.Event()
        self._background.append(loop.create_task(keep_scope_fresh(client, manager, self._k8s_stop)))
        node = ClusterNodeSpec(cluster.k8s.dtls, cluster.k8s.mgmt, client.node_id)
        return [(node, manager)]

    def _start_monitor(self, loop: asyncio.AbstractEventLoop, address: HostPort) -> None:
        """--k8s-monitor: /alive, and /ready once every cluster node is ready and every one
        of ``ready_checks`` passes (§5.10)."""
        self.monitor = MonitorService([self.cluster_ready, self._ready_checks_pass])
        self._background.append(loop.create_task(self.monitor.start(address.host, address.port)))

    def cluster_ready(self) -> bool:
        """Every cluster node is ready (True without a cluster)."""
        return all(node.membership.ready for node in self.cluster_nodes)

    def _ready_checks_pass(self) -> bool:
        return all(check() for check in self.ready_checks)

    def _open(self, loop: asyncio.AbstractEventLoop, transport: Transport) -> None:
        try:
            transport.open(loop)
        except TcpBackendError as error:
            raise StartupError(str(error)) from None
        except OSError as error:
            address, port = transport.requested_address[:2]
            where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if isinstance(transport, TcpServerTransport):
                kind = transport.kind
            else:
                kind = "DTLS" if isinstance(transport, DtlsServerTransport) else "UDP"
            raise StartupError(
                f"cannot bind {kind} {where}: {error.strerror or error}; stop the other "
                "server or choose another port (--coap-port, --plugtest-port; DTLS uses the "
                "next port)"
            ) from None
        self.transports.append(transport)

    def _all_resources(self) -> list[Resource]:
        roots = [self.extended_root] + ([self.plugtest_root] if self.plugtest_root else [])
        return [resource for root in roots for resource in (root, *root.walk())]

    def close(self) -> None:
        if self._k8s_stop is not None:
            self._k8s_stop.set()
        for task in self._background:
            task.cancel()
        self._background.clear()
        for node in self.cluster_nodes:
            node.close()
        self.cluster_nodes.clear()
        for resource in self._all_resources():
            resource.stop()
        for transport in self.transports:
            transport.close()
        self.transports.clear()

    # -- graceful restart of the DTLS state (inventory §6.6) ------------------------------------
    def dtls_transports(self) -> list[DtlsServerTransport]:
        return [t for t in self.transports if isinstance(t, DtlsServerTransport)]

    def save_dtls(self) -> dict[str, list[SavedConnection]]:
        """Stop every DTLS endpoint (no more datagrams handled) and take its established
        connections out: label -> connections. One log line per endpoint."""
        saved: dict[str, list[SavedConnection]] = {}
        for transport in self.dtls_transports():
            transport.stop()
            connections = transport.save()
            saved.setdefault(transport.label, []).extend(connections)
            logger.warning("%s: %d DTLS connections saved", transport.label, len(connections))
        return saved

    def load_dtls(self, connectors: dict[str, list[SavedConnection]], max_age: float) -> int:
        """Put saved connections back into the DTLS endpoints of the same label and let those
        handle datagrams again; returns how many were restored. One log line per endpoint."""
        restored = 0
        for transport in self.dtls_transports():
            counts = transport.load(connectors.get(transport.label, []), max_age)
            transport.resume()
            restored += counts.restored
            logger.warning(
                "%s: %d DTLS connections restored, %d too old, %d refused",
                transport.label, counts.restored, counts.too_old, counts.refused,
            )  # fmt: skip
        labels = {transport.label for transport in self.dtls_transports()}
        for label, connections in connectors.items():
            if label not in labels and connections:
                logger.warning("%s: no such endpoint, %d connections dropped", label,
                               len(connections))  # fmt: skip
        return restored

    def counters(self) -> dict[str, dict[str, int]]:
        return {t.endpoint.uri: t.endpoint.counters() for t in self.transports}


def _resolve(address: HostPort) -> tuple[str, int]:
    """An address of a cluster option as a socket address: ``:port`` is the IPv4 wildcard, a
    host name its first IPv4 (else IPv6) address."""
    if not address.host:
        return ("0.0.0.0", address.port)
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as error:
        raise StartupError(f"cannot resolve {address.host}: {error.strerror}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return (str(infos[0][4][0]), address.port)
