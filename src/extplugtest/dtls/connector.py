"""The DTLS server endpoint: connections by CID and by address, handshakes, and CoAP on top.

The socket belongs to a DtlsEngine (dtls/_datapath.pyx). It opens every protected record of an
established connection in C: CoAP goes to its engine, the rest (alerts, a repeated Finished,
an older record from another address) comes back here through plaintext(); the newest
authenticated CID record moves its connection to its source address (RFC 9146 §6). Every
other record comes here as it arrived: found by CID for tls12_cid records (RFC 9146), else by
source address. A ClientHello from an unknown peer is answered statelessly with a
HelloVerifyRequest (RFC 6347 §4.2.1) until it carries a valid cookie; only then a connection
and its handshake exist. Connections and handshakes are bounded. As Californium's
InMemoryConnectionStore (inventory §6.4), an idle connection stays while there is room; at the
bound only a stale one (idle longer than DTLS.STALE_CONNECTION_THRESHOLD), the least recently
active first, makes room for a new one, else the new handshake is refused. Everything is
counted.

Record sizes: a peer that negotiated a smaller record size limit (RFC 8449 record_size_limit,
RFC 6066 max_fragment_length) gets CoAP messages that fit into one of its records (the
block-wise layer learns its limit from peer_message_limit; the data path drops what would not
fit, and its fast path leaves such answers to Python); a record of it above our own limit is
answered with a fatal record_overflow alert and ends the connection.

Application authorization (DTLS.APPLICATION_AUTHORIZATION_TIMEOUT, inventory §6.3): an
anonymous certificate handshake (ECDHE_ECDSA without a client certificate) is kept only if the
application authorizes its connection (authorize(), /benchmark?auth) within the timeout; the
timer removes the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap._udp import FastResource
from extplugtest.coap.endpoint import CoapEndpoint, SecureHealth
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.coap.transport_udp import bind_udp_socket
from extplugtest.dtls._cid_table import CidTable
from extplugtest.dtls._datapath import DtlsConnection, DtlsEngine, peer_key
from extplugtest.dtls._record import (
    APPLICATION_DATA,
    TLS12_CID,
    AeadCipher,
    Record,
    RecordError,
    parse_datagram,
)
from extplugtest.dtls.ciphersuites import by_code
from extplugtest.dtls.cookie import CookieGenerator
from extplugtest.dtls.handshake_header import (
    AlertDescription,
    DecodeError,
    HandshakeType,
    iter_fragments,
)
from extplugtest.dtls.handshake_server import (
    DtlsConfig,
    HandshakeFailure,
    ServerHandshake,
    Session,
    plain_record,
)
from extplugtest.dtls.messages import (
    DTLS_1_0,
    DTLS_1_2,
    MAX_PLAINTEXT,
    Alert,
    AlertLevel,
    ClientHello,
    ContentType,
    HelloVerifyRequest,
    encode_message,
)
from extplugtest.dtls.mtu import detect_mtu
from extplugtest.dtls.persistence import SavedConnection
from extplugtest.dtls.reassembly import CompleteMessage
from extplugtest.dtls.session_cache import CachedSession

logger = logging.getLogger("extplugtest.dtls")

SEQ_MAX = (1 << 48) - 1
TIMER_INTERVAL = 0.25  # flight retransmissions are checked this often
#: how long a finished handshake stays for a client that lost our last flight
HANDSHAKE_LIFETIME = 30.0
#: entries looked at when making room, per call (keeps it O(1) per new connection)
LRU_LOOKS = 64
#: MTU without detection (Californium's DEFAULT_IPV4_MTU / DEFAULT_IPV6_MTU) and the bytes
#: left for IP and UDP headers (IPV4_HEADER_LENGTH: 8 UDP + 20 IP + 36 options; IPv6 128)
DEFAULT_IPV4_MTU = 576
DEFAULT_IPV6_MTU = 1280
IPV4_HEADER_ALLOWANCE = 64
IPV6_HEADER_ALLOWANCE = 128


#: DtlsHealthLogger's keys, in Californium's order (inventory §2.4)
DTLS_HEALTH_KEYS = (
    "associations", "handshakes pending", "handshakes succeeded", "handshakes failed",
    "received records", "dropped received records", "dropped received mac-errors",
    "sending records",
)  # fmt: skip
#: DtlsClusterHealthLogger's keys, in Californium's order, and ours
CLUSTER_HEALTH_KEYS = (
    "forwarded", "process forwarded", "bad forward", "drop forward", "backwarded",
    "send backwarded", "bad backward", "drop backward", "management received",
    "batches sent", "batches received", "cluster datagrams sent",
)  # fmt: skip


@dataclass
class DtlsLimits:
    """Bounds and timers of the connector, with the extended server's values (inventory
    §1.3, §6.3-§6.5); the comments name the Californium keys."""

    max_connections: int = 100_000  # DTLS.MAX_CONNECTIONS
    max_handshakes: int = 10_000
    #: DTLS.STALE_CONNECTION_THRESHOLD: at the bound, only a connection idle longer than this
    #: may make room for a new one
    stale_after: float = 180.0
    mac_filter_threshold: int = 8  # DTLS.MAC_ERROR_FILTER_THRESHOLD (0: no filter)
    mac_filter_quiet: float = 4.0  # DTLS.MAC_ERROR_FILTER_QUIET_TIME
    # Handshake flights (RFC 6347 §4.2.4.1): the first timeout, each next one scaled, at most
    # the maximum; an ECDHE flight (ECDHE_ECDSA, ECDHE_PSK) starts with the ECC addition more.
    # After max_retransmissions resends without an answer the handshake fails.
    retransmission_timeout: float = 3.0  # DTLS.RETRANSMISSION_TIMEOUT (servers: 3 s)
    retransmission_timeout_max: float = 60.0  # DTLS.MAX_RETRANSMISSION_TIMEOUT
    retransmission_scale: float = 2.0  # DTLS.RETRANSMISSION_TIMEOUT_SCALE
    retransmission_init_random: float = 1.0  # DTLS.RETRANSMISSION_INIT_RANDOM (1.0: none)
    additional_ecc_timeout: float = 8.0  # DTLS.ADDITIONAL_ECC_TIMEOUT (servers: 8 s)
    max_retransmissions: int = 4  # DTLS.MAX_RETRANSMISSIONS
    #: DTLS.MAX_TRANSMISSION_UNIT (None: the interface's, see dtls/mtu.py) and
    #: DTLS.MAX_TRANSMISSION_UNIT_LIMIT, for message-size-limit
    mtu: int | None = None
    mtu_limit: int = 1500
    #: DTLS.APPLICATION_AUTHORIZATION_TIMEOUT (extended: 15 s; 0: off): a certificate
    #: handshake without a client certificate (anonymous) is kept only if the application
    #: authorizes its connection within this time (/benchmark?auth), else it is removed
    application_authorization_timeout: float = 15.0


#: A key of the by-address table: a peer key (bytes), or a parked connection's (see move).
IndexKey = bytes | tuple[str, bytes]


def parking_key(connection: DtlsConnection) -> IndexKey:
    """The by-address key of a CID connection whose last address another connection took:
    not bytes, so no datagram ever finds it by address."""
    return ("parked", connection.read_cid)


def is_ipv6_peer(address: tuple) -> bool:
    """An IPv6 peer (an IPv4-mapped address counts as IPv4, as a Java Inet4Address)."""
    host = str(address[0])
    return ":" in host and not (host.lower().startswith("::ffff:") and "." in host)


@dataclass
class RestoreCounts:
    """What load() did with the connections of a saved store."""

    restored: int = 0
    too_old: int = 0  # last active longer ago than the maximum age
    refused: int = 0  # do not fit this connector (its CID length or node id, a CID in use)


@dataclass
class DtlsCounters:
    received_records: int = 0
    dropped_records: int = 0
    hello_verify_requests: int = 0
    handshakes_started: int = 0
    handshakes_succeeded: int = 0
    handshakes_failed: int = 0
    handshakes_refused: int = 0
    connections_evicted: int = 0
    renegotiations_rejected: int = 0  # answered with a no_renegotiation alert
    address_changes: int = 0
    connections_parked: int = 0
    sending_records: int = 0
    authorizations_pending: int = 0  # (set by dtls_counters)
    connections_authorized: int = 0  # anonymous, authorized in time
    connections_unauthorized: int = 0  # anonymous, removed at the authorization timeout
    by_name: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {
            "received records": self.received_records,
            "dropped received records": self.dropped_records,
            "dropped received mac-errors": 0,  # the engine's (dtls_counters)
            "dropped received mac-filtered": 0,
            "hello verify requests": self.hello_verify_requests,
            "handshakes pending": 0,
            "handshakes started": self.handshakes_started,
            "handshakes succeeded": self.handshakes_succeeded,
            "handshakes failed": self.handshakes_failed,
            "handshakes refused": self.handshakes_refused,
            "connections evicted": self.connections_evicted,
            "address changes": self.address_changes,
            "connections parked": self.connections_parked,
            "sending records": self.sending_records,
            # ours, after Californium's
            "dropped received filtered": 0,  # the data path's (dtls_counters)
            "renegotiations rejected": self.renegotiations_rejected,
            "dropped received overflows": 0,  # the engine's: record_overflow alerts
            "authorizations pending": self.authorizations_pending,
            "connections authorized": self.connections_authorized,
            "connections unauthorized": self.connections_unauthorized,
        }


class DtlsServerTransport:
    """A DTLS server socket serving *endpoint*'s resources (coaps)."""

    def __init__(
        self,
        endpoint: CoapEndpoint,
        address: tuple,
        config: DtlsConfig,
        *,
        dedup: DeduplicationCache | None = None,
        fast: FastResource | None = None,
        limits: DtlsLimits | None = None,
        buffer_size: int = 4 * 1024 * 1024,
        engine_type: type[DtlsEngine] = DtlsEngine,
        node_id: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        #: DTLS-CID cluster: the engine that routes (cluster._router.ClusterEngine), and this
        #: node's id, which every CID handed out here starts with (inventory §5.5)
        self.engine_type = engine_type
        self.node_id = node_id
        self.requested_address = address
        self.config = config
        self.dedup = dedup
        self.fast = fast
        self.limits = limits or DtlsLimits()
        self.buffer_size = buffer_size
        self.cookies = CookieGenerator()
        self.counters = DtlsCounters()
        self.sock: socket.socket | None = None
        self.engine: DtlsEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Keyed by peer_key(address), in the order of DtlsConnection.positioned (the data path
        # only stamps last_seen; _make_room and _sweep mend the order where they look).
        self._by_address: OrderedDict[IndexKey, DtlsConnection] = OrderedDict()
        self._by_cid: CidTable[DtlsConnection] = CidTable()  # the data path finds in it too
        self._handshakes = 0
        #: handshakes in progress -> (when their flight is due again, the current interval,
        #: the retransmissions so far)
        self._flights: dict[DtlsConnection, tuple[float, float, int]] = {}
        #: the MTU of the bound interface (capped), None: unknown (see message_size_limit)
        self.mtu: int | None = None
        #: established connections whose handshake stays a while for a lost last flight
        self._lingering: deque[tuple[float, DtlsConnection]] = deque()
        #: anonymous connections waiting for the application's authorization -> their
        #: deadline; in deadline order (one timeout for all), each in the tables (bounded)
        self._unauthorized: dict[DtlsConnection, float] = {}
        #: the clock of the timers (a test steps it)
        self.clock = time.monotonic
        self._timer = PeriodicTimer(TIMER_INTERVAL, self._on_timer)
        #: stop()ped for a save: the socket stays bound but is not read (inventory §6.6)
        self.stopped = False

    # -- life cycle --------------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = bind_udp_socket(self.requested_address, self.buffer_size, self.buffer_size)
        family = sock.family
        self.sock = sock
        mtu = self.limits.mtu or detect_mtu(sock.getsockname()[0])
        self.mtu = min(mtu, self.limits.mtu_limit) if mtu else None
        self.endpoint.scheme = "coaps"
        self.engine = self.engine_type(
            sock.fileno(), family, self.endpoint, self.dedup, self.fast,
            self.endpoint.max_message_size,
        )  # fmt: skip
        self.engine.serve(
            self._by_cid, self._by_address, self.config.cid_length, self,
            mac_filter_threshold=self.limits.mac_filter_threshold,
            mac_filter_quiet=self.limits.mac_filter_quiet,
        )  # fmt: skip
        self.endpoint.attach(self.engine, sock.getsockname())
        self.endpoint.security = self.context_fields
        self.endpoint.authorize = self.authorize
        self.endpoint.blockwise.message_limit = self.peer_message_limit
        self.endpoint.secure_health = self.health
        self._loop = loop
        loop.add_reader(sock.fileno(), self.engine.on_readable)
        self._timer.start(loop)

    @property
    def local_address(self) -> tuple:
        assert self.sock is not None
        return self.sock.getsockname()

    def close(self) -> None:
        self._timer.stop()
        self.stopped = True
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.endpoint.close()
            self.sock.close()
            self.sock = None

    def connection(self, address: tuple) -> DtlsConnection | None:
        return self._by_address.get(peer_key(address))

    # -- receiving (what the engine's data path hands over) ----------------------------------
    def datagram(self, data: bytes, address: tuple) -> None:
        if self.stopped:  # (e.g. a record a cluster node forwarded while this one is saved)
            self.counters.dropped_records += 1
            return
        # (Californium's default datagram filter ran in the data path: every datagram here
        # passed it, and it looks at a datagram's first record only, DtlsEngine._receive)
        try:
            records = parse_datagram(data, cid_length=self.config.cid_length)
        except RecordError as error:
            records = list(error.records)
            self.counters.dropped_records += 1
        for record in records:
            self.counters.received_records += 1
            self._record(record, address)

    def _record(self, record: Record, address: tuple) -> None:
        if record.content_type == TLS12_CID:
            connection = self._by_cid.get(record.cid)
        else:
            connection = self._by_address.get(peer_key(address))
        if connection is None or (
            record.epoch == 0
            and record.content_type == ContentType.HANDSHAKE
            and connection.session is not None
        ):  # an unknown peer, or a new handshake from an established one
            if record.epoch == 0 and record.content_type == ContentType.HANDSHAKE:
                self._client_hello(record, address)
            else:
                self.counters.dropped_records += 1
            return
        if connection.session is not None:
            # The engine opens every protected record of an established connection itself;
            # what comes here is plain (epoch 0) or for an epoch it does not have.
            self.counters.dropped_records += 1
            return
        connection.last_seen = time.monotonic()
        if connection.handshake is not None:
            self._handshake_record(connection, record)

    def _client_hello(self, record: Record, address: tuple) -> None:
        """Stateless until the cookie verifies (RFC 6347 §4.2.1)."""
        try:
            fragments = list(iter_fragments(record.fragment))
            if len(fragments) != 1:
                raise DecodeError("a ClientHello in one unfragmented record is required")
            header, body = fragments[0]
            if (
                header.msg_type != HandshakeType.CLIENT_HELLO
                or header.fragment_length != header.length
            ):
                raise DecodeError("not a whole ClientHello")
            hello = ClientHello.decode(body)
        except DecodeError:
            self.counters.dropped_records += 1
            return
        if not hello.cookie or not self.cookies.verify(address, hello):
            # Californium: the client's version clamped to [1.0, 1.2], in the message and the
            # record (a smaller number is a newer version).
            version = min(max(hello.client_version, DTLS_1_2), DTLS_1_0)
            request = HelloVerifyRequest(version, self.cookies.generate(address, hello))
            payload = encode_message(request, header.message_seq)
            # The HVR reuses the ClientHello's record sequence number (plugtest-spec §4).
            self._send(plain_record(ContentType.HANDSHAKE, record.seq, payload, version), address)
            self.counters.hello_verify_requests += 1
            return
        if self._handshakes >= self.limits.max_handshakes:
            self.counters.handshakes_refused += 1
            return
        now = time.monotonic()
        old = self._by_address.get(peer_key(address))
        if old is not None:  # a new handshake replaces the old connection of this address
            self._remove(old)
        if not self._room(now):  # full of connections that are not stale
            self.counters.handshakes_refused += 1
            return
        connection = DtlsConnection(address, self._new_cid(), now)
        handshake = ServerHandshake(
            self.config,
            CompleteMessage(header.msg_type, header.message_seq, body),
            record.seq,
            connection.read_cid,
            hello,
        )
        connection.handshake = handshake
        self._add(connection)
        # The client's Finished may already come as a tls12_cid record with our CID (if we
        # have one: DTLS.CONNECTION_ID_LENGTH may be 0).
        if connection.read_cid:
            self._by_cid[connection.read_cid] = connection
        self._handshakes += 1
        self.counters.handshakes_started += 1
        try:
            flight = handshake.start()
        except (HandshakeFailure, DecodeError) as failure:
            self._fail(connection, failure)
            return
        timeout = self._initial_timeout(handshake)
        self._flights[connection] = (now + timeout, timeout, 0)
        self._send_all(flight, address)

    def _initial_timeout(self, handshake: ServerHandshake) -> float:
        """The first retransmission timeout of *handshake*'s flight: DTLS.RETRANSMISSION_TIMEOUT
        (randomised up to DTLS.RETRANSMISSION_INIT_RANDOM times), plus DTLS.ADDITIONAL_ECC_TIMEOUT
        when the client has ECDH to compute for it (ECDHE_ECDSA, ECDHE_PSK; not a resumption)."""
        limits = self.limits
        timeout = limits.retransmission_timeout
        if limits.retransmission_init_random > 1.0:
            timeout *= random.uniform(1.0, limits.retransmission_init_random)
        if handshake.ecdhe is not None:
            timeout += limits.additional_ecc_timeout
        return min(timeout, limits.retransmission_timeout_max)

    def _handshake_record(self, connection: DtlsConnection, record: Record) -> None:
        handshake = connection.handshake
        assert handshake is not None
        if record.content_type == ContentType.ALERT and record.epoch == 0:
            try:
                alert = Alert.decode(record.fragment)
            except DecodeError:
                self.counters.dropped_records += 1
                return
            if alert.is_fatal or alert.description == 0:  # the peer gave up (or closed)
                self.counters.handshakes_failed += 1
                logger.info("DTLS handshake with %s: peer sent %s", connection.address, alert.name)
                self._remove(connection)
            return
        try:
            flight = handshake.on_record(record)
        except (HandshakeFailure, DecodeError) as failure:
            self._fail(connection, failure)
            return
        if flight:  # our flight again (the client resent its own), or our last one
            # (The timer goes on: a client resending its flight does not prolong the
            # handshake beyond DTLS.MAX_RETRANSMISSIONS of ours.)
            self._send_all(flight, connection.address)
        if handshake.session is not None:
            connection.establish(handshake.session)
            connection.master_secret = handshake.master  # for a graceful restart
            self._flights.pop(connection, None)  # RFC 6347 §4.2.4: the last flight has no timer
            if len(self._lingering) >= self.limits.max_connections:  # bounded like the table
                self._lingering.popleft()[1].handshake = None
            self._lingering.append((time.monotonic() + HANDSHAKE_LIFETIME, connection))
            self._handshakes -= 1
            self.counters.handshakes_succeeded += 1
            timeout = self.limits.application_authorization_timeout
            if timeout > 0 and connection.session.anonymous:
                self._unauthorized[connection] = self.clock() + timeout
            # The handshake stays a little for a lost last flight: it resends on the
            # client's retransmitted Finished; the timer clears it.
            if not connection.session.cid_negotiated:
                self._by_cid.pop(connection.read_cid, None)

    def _fail(self, connection: DtlsConnection, failure: Exception) -> None:
        self.counters.handshakes_failed += 1
        alert = getattr(failure, "alert", None)
        if alert is not None and connection.handshake is not None:
            self._send(connection.handshake.alert(alert), connection.address)
        logger.info("DTLS handshake with %s failed: %s", connection.address, failure)
        self._remove(connection)

    def plaintext(self, connection: DtlsConnection, content_type: int, plaintext: bytes) -> None:
        """What the engine opened and does not handle itself: application data of a record
        that came from another address but is not the newest (RFC 9146 §6: answered to the
        connection's address), alerts, and a repeated Finished."""
        if content_type == APPLICATION_DATA:
            assert self.engine is not None
            self.engine.feed(plaintext, connection)
        elif content_type == ContentType.ALERT:
            alert = Alert.decode(plaintext)
            if alert.description == 0 or alert.level == 2:  # close_notify or fatal
                self._remove(connection)
        elif content_type == ContentType.HANDSHAKE:
            try:
                header, _ = next(iter_fragments(plaintext))
            except (DecodeError, StopIteration):
                self.counters.dropped_records += 1
                return
            if header.msg_type == HandshakeType.CLIENT_HELLO:
                self._reject_renegotiation(connection)
            elif connection.handshake is not None:
                # the client's Finished again: our last flight was lost
                self._send_all(list(connection.handshake.flight), connection.address)

    def _reject_renegotiation(self, connection: DtlsConnection) -> None:
        """A ClientHello in the current epoch of an established connection: renegotiation,
        which Californium always rejects (inventory §6.3). RFC 5246 §7.2.2 / RFC 5746 §4.2: a
        warning no_renegotiation alert, protected like any record of the connection; the
        connection stays."""
        cipher = connection.cipher
        assert cipher is not None and self.engine is not None
        alert = Alert(AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION).encode()
        try:
            record = cipher.seal(cipher.epoch, connection.next_write_seq, ContentType.ALERT, alert)
        except RecordError:  # (the sequence numbers are used up)
            self.counters.dropped_records += 1
            return
        connection.next_write_seq += 1
        self.counters.renegotiations_rejected += 1
        self.counters.sending_records += 1
        self.engine.send_record(connection, record)

    def record_overflow(self, connection: DtlsConnection) -> None:
        """A record of *connection* was larger than our limit (RFC 8449 §4, RFC 6066 §4): a
        fatal record_overflow alert, protected like any record of the connection, and the
        connection goes."""
        cipher = connection.cipher
        logger.info("DTLS record of %s above the record size limit", connection.address)
        if cipher is not None and self.engine is not None:
            alert = Alert(AlertLevel.FATAL, AlertDescription.RECORD_OVERFLOW).encode()
            with contextlib.suppress(RecordError):  # (the sequence numbers are used up)
                record = cipher.seal(cipher.epoch, connection.next_write_seq, ContentType.ALERT,
                                     alert)  # fmt: skip
                connection.next_write_seq += 1
                self.counters.sending_records += 1
                self.engine.send_record(connection, record)
        self._remove(connection)

    # -- application authorization (DTLS.APPLICATION_AUTHORIZATION_TIMEOUT) ------------------
    def authorize(self, address: tuple) -> bool:
        """The application authorizes the connection of *address* (Californium's
        ApplicationAuthorizer.authorize with ApplicationPrincipal.ANONYMOUS): an anonymous
        connection is kept beyond the authorization timeout. True if it was pending."""
        connection = self._by_address.get(peer_key(address))
        if connection is None or self._unauthorized.pop(connection, None) is None:
            return False
        self.counters.connections_authorized += 1
        return True

    def authorization_pending(self, address: tuple) -> bool:
        connection = self._by_address.get(peer_key(address))
        return connection is not None and connection in self._unauthorized

    def _expire_authorizations(self, now: float) -> None:
        """Remove the anonymous connections not authorized in time (oldest first; every
        entry is looked at once at most)."""
        unauthorized = self._unauthorized
        while unauthorized:
            connection, deadline = next(iter(unauthorized.items()))
            if deadline > now:
                break
            del unauthorized[connection]
            self.counters.connections_unauthorized += 1
            logger.info("DTLS connection of %s: not authorized in time", connection.address)
            self._remove(connection)

    # -- sending -----------------------------------------------------------------------------
    def _send_all(self, datagrams: list[bytes], address: tuple) -> None:
        for datagram in datagrams:
            self._send(datagram, address)

    def _send(self, datagram: bytes, address: tuple) -> None:
        assert self.sock is not None
        self.counters.sending_records += 1
        with contextlib.suppress(OSError):  # UDP: a failed send is a lost datagram
            self.sock.sendto(datagram, address)

    # -- the connection store ----------------------------------------------------------------
    def _new_cid(self) -> bytes:
        for _ in range(16):
            cid = os.urandom(self.config.cid_length)
            if self.node_id is not None:
                cid = bytes([self.node_id]) + cid[1:]
            if cid not in self._by_cid:
                return cid
        raise RuntimeError("no free connection id")

    def _add(self, connection: DtlsConnection) -> None:
        """Into the by-address table; the caller made room (_room)."""
        assert len(self._by_address) < self.limits.max_connections
        self._by_address[connection.key] = connection

    def _room(self, now: float) -> bool:
        """Is there room for one more connection? At the bound a stale connection makes it
        (Californium's InMemoryConnectionStore); without one: no."""
        if len(self._by_address) < self.limits.max_connections:
            return True
        return self._make_room(now)

    def _make_room(self, now: float) -> bool:
        """Evict the least recently active of the oldest-placed connections if it is stale (a
        sampled LRU: the data path only stamps last_seen, so the table's order is that of
        placement); False if it is not. The sampled ones that were active since they were
        placed go to the end, so the next attempt samples others."""
        sample = list(itertools.islice(self._by_address.values(), LRU_LOOKS))
        if not sample:
            return False
        least = min(sample, key=lambda connection: connection.last_seen)
        victim = least if now - least.last_seen > self.limits.stale_after else None
        for connection in sample:
            if connection is not victim and connection.last_seen > connection.positioned:
                connection.positioned = now
                key = self._index_key(connection)
                if key is not None:  # (it is: the sample came from the table)
                    self._by_address.move_to_end(key)
        if victim is None:
            return False
        self._remove(victim)
        self.counters.connections_evicted += 1
        return True

    def _index_key(self, connection: DtlsConnection) -> IndexKey | None:
        """The key *connection* has in the by-address table: its address's, or its parking
        key while another connection holds its last address (see move); None: not in it."""
        for key in (connection.key, parking_key(connection)):
            if self._by_address.get(key) is connection:
                return key
        return None

    def _remove(self, connection: DtlsConnection) -> None:
        key = self._index_key(connection)
        if key is not None:
            del self._by_address[key]
        if self._by_cid.get(connection.read_cid) is connection:
            del self._by_cid[connection.read_cid]
        if connection.handshake is not None and connection.session is None:
            self._handshakes -= 1
        self._flights.pop(connection, None)
        self._unauthorized.pop(connection, None)
        connection.handshake = None

    def move(self, connection: DtlsConnection, address: tuple) -> None:
        """The newest authenticated CID record came from *address* (RFC 9146 §6)."""
        key = peer_key(address)
        other = self._by_address.get(key)
        if other is not None and other is not connection:
            if self._by_cid.get(other.read_cid) is other and other.cipher is not None:
                # Another CID connection had this address last (a NAT reused the port): it
                # is still reachable by its CID, so it is parked, not dropped; its next
                # record moves it to where its peer is now.
                del self._by_address[key]
                self._by_address[parking_key(other)] = other
                self.counters.connections_parked += 1
            else:
                self._remove(other)  # without a CID the address was its only way in
        old_key = self._index_key(connection)
        if old_key is not None:
            del self._by_address[old_key]
        if self.dedup is not None and old_key == connection.key:
            # Its exchanges go with it (the endpoint is the same: a retransmission from the new
            # address is a duplicate) - unless it was parked: that address's are the other's.
            self.dedup.move(connection.address, address)
        connection.previous_address = connection.address
        connection.address = address
        connection.positioned = time.monotonic()
        self._by_address[key] = connection
        self.counters.address_changes += 1

    def _on_timer(self) -> None:
        """Flight retransmissions (RFC 6347 §4.2.4.1) and the end of lingering handshakes.
        Idle connections are not swept: they stay until a new one needs their room. Anonymous
        connections not authorized in time are removed."""
        now = time.monotonic()
        limits = self.limits
        for connection, (due, interval, count) in list(self._flights.items()):
            handshake = connection.handshake
            if handshake is None or connection.session is not None:
                self._flights.pop(connection, None)
            elif now < due:
                continue
            elif count >= limits.max_retransmissions:  # no answer to the last one either
                self.counters.handshakes_failed += 1
                logger.info("DTLS handshake with %s: flight timed out", connection.address)
                self._remove(connection)
            else:  # resend the flight, scale the timer
                self._send_all(list(handshake.flight), connection.address)
                interval = min(interval * limits.retransmission_scale,
                               limits.retransmission_timeout_max)  # fmt: skip
                self._flights[connection] = (now + interval, interval, count + 1)
        while self._lingering and self._lingering[0][0] <= now:
            self._lingering.popleft()[1].handshake = None
        self._expire_authorizations(self.clock())

    # -- graceful restart (inventory §6.6; dtls/persistence.py) -------------------------------
    @property
    def label(self) -> str:
        """This connector's section in a saved store: ``dtls://<addr>:<port>`` (Californium's
        serialisation label); a restarted server finds its connections by it."""
        address = self.local_address if self.sock is not None else self.requested_address
        host = str(address[0]).replace("%", "%25")
        return f"dtls://[{host}]:{address[1]}" if ":" in host else f"dtls://{host}:{address[1]}"

    def stop(self) -> None:
        """Handle no more datagrams (to save): the socket stays bound, so its port stays ours
        and the kernel keeps what arrives meanwhile, but nobody reads it; timers stop."""
        if self.stopped:
            return
        self.stopped = True
        self._timer.stop()
        if self.sock is not None and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())

    def resume(self) -> None:
        """Handle datagrams again after stop()."""
        if not self.stopped or self.sock is None or self._loop is None or self.engine is None:
            return
        self.stopped = False
        self._loop.add_reader(self.sock.fileno(), self.engine.on_readable)
        self._timer.start(self._loop)

    def save(self) -> list[SavedConnection]:
        """Export every established connection and remove it; handshakes in progress are
        dropped, as are anonymous connections still waiting for the application's
        authorization. "A connector must be stopped to be saved" (inventory §6.6): no datagram
        may move a sequence number or the replay window after its export."""
        if not self.stopped:
            raise RuntimeError("a connector must be stopped to be saved")
        now = time.monotonic()
        connections = list(self._by_address.values())
        saved = [
            self._export(connection, now)
            for connection in connections
            if connection.session is not None
            and connection.cipher is not None
            and connection not in self._unauthorized
        ]
        for connection in connections:
            self._remove(connection)
        self._by_cid.clear()
        self._flights.clear()
        self._lingering.clear()
        self._unauthorized.clear()
        self._handshakes = 0
        return saved

    @staticmethod
    def _export(connection: DtlsConnection, now: float) -> SavedConnection:
        session = connection.session
        assert connection.cipher is not None
        state = connection.cipher.export_state()
        return SavedConnection(
            address=connection.address,
            age=max(0.0, now - connection.last_seen),
            session_age=max(0.0, now - connection.started),
            read_cid=connection.read_cid,
            suite_code=session.suite.code,
            session_id=session.session_id,
            master_secret=connection.master_secret or b"",
            identity=session.identity,
            peer_certificate_type=session.peer_certificate_type,
            extended_master_secret=session.extended_master_secret,
            secure_renegotiation=session.secure_renegotiation,
            cid_negotiated=session.cid_negotiated,
            resumed=session.resumed,
            record_size_limit=session.record_size_limit,
            receive_limit=session.receive_limit,
            epoch=state["epoch"],
            aead=state["aead"],
            write_key=state["write_key"],
            write_iv=state["write_iv"],
            read_key=state["read_key"],
            read_iv=state["read_iv"],
            write_cid=state["write_cid"],
            cipher_read_cid=state["read_cid"],
            anti_replay=state["anti_replay"],
            next_write_seq=connection.next_write_seq,
            last_sealed=state["last_sealed"],
            window_highest=state["window_highest"],
            window_bitmap=state["window_bitmap"],
        )

    def load(self, connections: list[SavedConnection], max_age: float) -> RestoreCounts:
        """Insert saved connections (their ages as of now) into the tables, each with its C
        cipher state: the next record of such a peer is opened and answered by the data path.
        Connections last active longer than *max_age* seconds ago are skipped."""
        counts = RestoreCounts()
        now = time.monotonic()
        # Oldest first: a newer connection of the same address takes it over (see _place).
        for saved in sorted(connections, key=lambda saved: -saved.age):
            if saved.age > max_age:
                counts.too_old += 1
                continue
            connection = self._import(saved, now)
            if connection is None or not self._place(connection, now):
                counts.refused += 1
                continue
            self._cache_session(saved)
            counts.restored += 1
        return counts

    def _import(self, saved: SavedConnection, now: float) -> DtlsConnection | None:
        """A connection of *saved*, or None if it cannot be one of this connector."""
        suite = by_code(saved.suite_code)
        cid = saved.read_cid if saved.cid_negotiated else b""
        if suite is None or saved.cipher_read_cid != cid:
            return None
        if saved.cid_negotiated and (
            len(cid) != self.config.cid_length  # the data path would not parse its records
            or cid in self._by_cid
            or (self.node_id is not None and cid[0] != self.node_id)  # another node's CID
        ):
            return None
        try:
            cipher = AeadCipher(
                saved.aead, saved.write_key, saved.write_iv, saved.read_key, saved.read_iv,
                epoch=saved.epoch, write_cid=saved.write_cid, read_cid=saved.cipher_read_cid,
                anti_replay=saved.anti_replay,
            )  # fmt: skip
            cipher.restore_state(saved.window_highest, saved.window_bitmap, saved.last_sealed)
        except ValueError:
            return None
        # Never a sequence number twice under one key: behind the last sealed record.
        next_write_seq = max(
            saved.next_write_seq, (saved.last_sealed & SEQ_MAX) + 1 if saved.last_sealed else 0
        )
        session = Session(
            suite, cipher, saved.identity, saved.session_id, cid, saved.write_cid,
            saved.cid_negotiated, saved.extended_master_secret, saved.secure_renegotiation,
            next_write_seq=next_write_seq, peer_certificate_type=saved.peer_certificate_type,
            resumed=saved.resumed, record_size_limit=saved.record_size_limit,
            receive_limit=saved.receive_limit,
        )  # fmt: skip
        connection = DtlsConnection(saved.address, saved.read_cid, now - saved.age)
        connection.started = now - saved.session_age
        connection.establish(session)
        connection.master_secret = saved.master_secret
        return connection

    def _place(self, connection: DtlsConnection, now: float) -> bool:
        """Into the tables; an older connection of the same address is parked if its CID
        still finds it, else it goes (as in move). False: no room (the table is full of
        connections that are not stale)."""
        other = self._by_address.get(connection.key)
        if other is not None and not (
            self._by_cid.get(other.read_cid) is other and other.cipher is not None
        ):
            self._remove(other)
        if not self._room(now):
            return False
        other = self._by_address.get(connection.key)  # (unless it made the room)
        if other is not None:
            del self._by_address[connection.key]
            self._by_address[parking_key(other)] = other
            self.counters.connections_parked += 1
        self._add(connection)
        if connection.session.cid_negotiated:
            self._by_cid[connection.read_cid] = connection
        return True

    def _cache_session(self, saved: SavedConnection) -> None:
        """A restored session stays resumable (under the rule of ServerHandshake)."""
        suite = by_code(saved.suite_code)
        if suite is None or not saved.master_secret or not saved.session_id:
            return
        if not saved.extended_master_secret and self.config.extended_master_secret:
            return
        cache = self.config.session_cache
        cache.put(
            CachedSession(
                saved.session_id, suite, saved.master_secret, saved.extended_master_secret,
                saved.identity, saved.peer_certificate_type,
                created=cache.now() - saved.session_age,
            )
        )  # fmt: skip

    def context_fields(self, address: tuple) -> list[tuple[str, str | int | bool]]:
        """The DTLS fields of /mycontext (inventory §2.5), in Californium's order."""
        connection = self._by_address.get(peer_key(address))
        if connection is None or connection.session is None:
            return []
        session = connection.session
        fields: list[tuple[str, str | int | bool]] = []
        if self.node_id is not None:
            fields.append(("node-id", str(self.node_id)))
        if session.identity:  # none for an anonymous certificate handshake, as Californium
            fields.append(("peer", session.identity.decode("utf-8", "replace")))
        fields += [
            ("cipher-suite", session.suite.name),
            ("session-id", session.session_id.hex().upper()),
        ]
        if session.cid_negotiated:
            fields += [("read-cid", session.read_cid.hex().upper()),
                       ("write-cid", session.write_cid.hex().upper())]  # fmt: skip
        if connection.router_node >= 0:  # its newest record came through another node
            fields.append(("via", "dtls-cid-router"))
        fields += [
            ("secure-renegotiation", session.secure_renegotiation),
            ("ext-master-secret", session.extended_master_secret),
            ("newest-record", connection.newest),
            (
                "message-size-limit",
                min(self.message_size_limit(session, address), connection.send_limit),
            ),
        ]
        if connection.moved and connection.previous_address is not None:
            fields += [("prev-ip", connection.previous_address[0]),
                       ("prev-port", connection.previous_address[1])]  # fmt: skip
        return fields

    def message_size_limit(self, session: Session, address: tuple) -> int:
        """Application bytes that fit in one record of a datagram to *address*, as
        Californium (inventory §6.3 "MTU"): the MTU (DTLS.MAX_TRANSMISSION_UNIT, else the bound
        interface's, capped at DTLS.MAX_TRANSMISSION_UNIT_LIMIT; unknown: IPv4 576, IPv6
        1280) less the IP/UDP header allowance (IPv4 64, IPv6 128), less the record's
        overhead: header (13), write CID, explicit nonce (8) and tag, inner type (CID only).
        (/mycontext shows the smaller of this and the peer's record size limit.)"""
        ipv6 = is_ipv6_peer(address)
        mtu = self.mtu or (DEFAULT_IPV6_MTU if ipv6 else DEFAULT_IPV4_MTU)
        datagram = mtu - (IPV6_HEADER_ALLOWANCE if ipv6 else IPV4_HEADER_ALLOWANCE)
        return max(0, datagram - session.cipher.record_length(0))

    def peer_message_limit(self, address: tuple) -> int | None:
        """The largest CoAP message one record to *address* may carry when its peer
        negotiated a smaller record size limit than ours (the block-wise layer keeps to it),
        else None."""
        connection = self._by_address.get(peer_key(address))
        if connection is None or connection.send_limit >= MAX_PLAINTEXT:
            return None
        return connection.send_limit

    def health(self) -> SecureHealth:
        """/diagnose: Californium's DTLS health keys in its order, then ours; the cluster's."""
        counters = self.dtls_counters()
        cluster = [(key, counters.pop(key)) for key in CLUSTER_HEALTH_KEYS if key in counters]
        dtls = [(key, counters.pop(key)) for key in DTLS_HEALTH_KEYS if key in counters]
        groups = [("dtls", dtls + sorted(counters.items()))]
        if cluster:
            groups.append(("cluster", cluster))
        return SecureHealth(self.limits.max_connections, self.node_id, groups)

    def filtered(self) -> int:
        """Datagrams the default datagram filter dropped in the data path (part of "dropped
        received records")."""
        return self.engine.datapath_counters()["filtered"] if self.engine is not None else 0

    def dtls_counters(self) -> dict[str, int]:
        counters = self.counters.as_dict()
        if self.engine is not None:  # what the C data path handled itself
            datapath = self.engine.datapath_counters()
            counters["received records"] += datapath["records"]
            counters["dropped received records"] += (
                datapath["dropped"] + datapath["replays"] + datapath["filtered"]
            )
            counters["dropped received mac-errors"] += datapath["mac errors"]
            counters["dropped received mac-filtered"] += datapath["mac filtered"]
            counters["dropped received filtered"] += datapath["filtered"]
            counters["sending records"] += datapath["sealed"]
            counters["dropped received records"] += datapath["overflows"]
            counters["dropped received overflows"] += datapath["overflows"]
            counters["dropped sending oversized"] = datapath["oversized"]
        cluster_counters = getattr(self.engine, "cluster_counters", None)
        if cluster_counters is not None:
            counters.update(cluster_counters())
        cache = self.config.session_cache
        counters["sessions cached"] = len(cache)
        counters["sessions resumed"] = cache.counters.resumed
        counters["handshakes pending"] = self._handshakes
        counters["authorizations pending"] = len(self._unauthorized)
        counters["associations"] = len(self._by_address)
        return counters
