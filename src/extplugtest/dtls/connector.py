"""The DTLS server endpoint: connections by CID and by address, handshakes, and CoAP on top.

The socket belongs to a DtlsEngine (dtls/_datapath.pyx). It opens every protected record of an
established connection in C: CoAP goes to its engine, the rest (alerts, a repeated Finished,
an older record from another address) comes back here through plaintext(); the newest
authenticated CID record moves its connection to its source address (RFC 9146 §6). Every
other record comes here as it arrived: found by CID for tls12_cid records (RFC 9146), else by
source address. A ClientHello from an unknown peer is answered statelessly with a
HelloVerifyRequest (RFC 6347 §4.2.1) until it carries a valid cookie; only then a connection
and its handshake exist. Connections and handshakes are bounded; the least recently active
connection makes room; everything is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
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
from extplugtest.dtls.handshake_header import DecodeError, HandshakeType, iter_fragments
from extplugtest.dtls.handshake_server import (
    DtlsConfig,
    HandshakeFailure,
    ServerHandshake,
    Session,
    plain_record,
)
from extplugtest.dtls.messages import (
    DTLS_1_0,
    Alert,
    ClientHello,
    ContentType,
    HelloVerifyRequest,
    encode_message,
)
from extplugtest.dtls.persistence import SavedConnection
from extplugtest.dtls.reassembly import CompleteMessage
from extplugtest.dtls.session_cache import CachedSession

logger = logging.getLogger("extplugtest.dtls")

SEQ_MAX = (1 << 48) - 1
TIMER_INTERVAL = 0.25  # flight retransmissions and sweeps are checked this often
RETRANSMIT_INITIAL = 1.0  # RFC 6347 §4.2.4.1: 1 s initial, doubled up to 60 s
RETRANSMIT_MAX = 60.0
HANDSHAKE_LIFETIME = 30.0
#: entries looked at when making room or sweeping, per call (keeps both O(1) per record)
LRU_LOOKS = 64


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
    max_connections: int = 100_000
    max_handshakes: int = 10_000
    stale_after: float = 180.0  # DTLS.STALE_CONNECTION_THRESHOLD
    mac_filter_threshold: int = 8  # DTLS.MAC_ERROR_FILTER_THRESHOLD (0: no filter)
    mac_filter_quiet: float = 4.0  # DTLS.MAC_ERROR_FILTER_QUIET_TIME


#: A key of the by-address table: a peer key (bytes), or a parked connection's (see move).
IndexKey = bytes | tuple[str, bytes]


def parking_key(connection: DtlsConnection) -> IndexKey:
    """The by-address key of a CID connection whose last address another connection took:
    not bytes, so no datagram ever finds it by address."""
    return ("parked", connection.read_cid)


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
    address_changes: int = 0
    connections_parked: int = 0
    sending_records: int = 0
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
        #: handshakes in progress -> (when their flight is due again, the current interval)
        self._flights: dict[DtlsConnection, tuple[float, float]] = {}
        #: established connections whose handshake stays a while for a lost last flight
        self._lingering: deque[tuple[float, DtlsConnection]] = deque()
        self._timer = PeriodicTimer(TIMER_INTERVAL, self._on_timer)
        #: stop()ped for a save: the socket stays bound but is not read (inventory §6.6)
        self.stopped = False

    # -- life cycle --------------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = bind_udp_socket(self.requested_address, self.buffer_size, self.buffer_size)
        family = sock.family
        self.sock = sock
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
            request = HelloVerifyRequest(DTLS_1_0, self.cookies.generate(address, hello))
            payload = encode_message(request, header.message_seq)
            # The HVR reuses the ClientHello's record sequence number (plugtest-spec §4).
            self._send(plain_record(ContentType.HANDSHAKE, record.seq, payload, DTLS_1_0), address)
            self.counters.hello_verify_requests += 1
            return
        if self._handshakes >= self.limits.max_handshakes:
            self.counters.handshakes_refused += 1
            return
        old = self._by_address.get(peer_key(address))
        if old is not None:  # a new handshake replaces the old connection of this address
            self._remove(old)
        connection = DtlsConnection(address, self._new_cid(), time.monotonic())
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
        self._flights[connection] = (time.monotonic() + RETRANSMIT_INITIAL, RETRANSMIT_INITIAL)
        try:
            self._send_all(handshake.start(), address)
        except (HandshakeFailure, DecodeError) as failure:
            self._fail(connection, failure)

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
        if flight:  # the peer's flight is complete: ours answers it, its timer restarts
            self._send_all(flight, connection.address)
            self._flights[connection] = (time.monotonic() + RETRANSMIT_INITIAL, RETRANSMIT_INITIAL)
        if handshake.session is not None:
            connection.establish(handshake.session)
            connection.master_secret = handshake.master  # for a graceful restart
            self._flights.pop(connection, None)  # RFC 6347 §4.2.4: the last flight has no timer
            if len(self._lingering) >= self.limits.max_connections:  # bounded like the table
                self._lingering.popleft()[1].handshake = None
            self._lingering.append((time.monotonic() + HANDSHAKE_LIFETIME, connection))
            self._handshakes -= 1
            self.counters.handshakes_succeeded += 1
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
        elif content_type == ContentType.HANDSHAKE and connection.handshake is not None:
            # the client's Finished again: our last flight was lost
            self._send_all(list(connection.handshake.flight), connection.address)

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
        if len(self._by_address) >= self.limits.max_connections:
            self._make_room(time.monotonic())
        self._by_address[connection.key] = connection

    def _make_room(self, now: float) -> None:
        """Evict the least recently active of the oldest-placed connections (a sampled LRU: the
        data path only stamps last_seen, so the table's order is that of placement). The
        sampled ones that were active since they were placed go to the end, so the next
        eviction samples others."""
        sample = list(itertools.islice(self._by_address.values(), LRU_LOOKS))
        victim = min(sample, key=lambda connection: connection.last_seen)
        for connection in sample:
            if connection is not victim and connection.last_seen > connection.positioned:
                connection.positioned = now
                key = self._index_key(connection)
                if key is not None:  # (it is: the sample came from the table)
                    self._by_address.move_to_end(key)
        self._remove(victim)
        self.counters.connections_evicted += 1

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
        now = time.monotonic()
        for connection, (due, interval) in list(self._flights.items()):
            handshake = connection.handshake
            if handshake is None or connection.session is not None:
                self._flights.pop(connection, None)
            elif now - connection.started > HANDSHAKE_LIFETIME:
                self.counters.handshakes_failed += 1
                self._remove(connection)
            elif now >= due:  # RFC 6347 §4.2.4.1: resend the flight, double the timer
                self._send_all(list(handshake.flight), connection.address)
                interval = min(2 * interval, RETRANSMIT_MAX)
                self._flights[connection] = (now + interval, interval)
        while self._lingering and self._lingering[0][0] <= now:
            self._lingering.popleft()[1].handshake = None
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop stale connections, from the oldest placed on; active ones met on the way go to
        the end (bounded per tick: the next tick goes on)."""
        for _ in range(LRU_LOOKS * 16):
            if not self._by_address:
                return
            key, oldest = next(iter(self._by_address.items()))
            if now - oldest.last_seen > self.limits.stale_after:
                self._remove(oldest)
            elif oldest.last_seen > oldest.positioned:  # active since it was placed
                oldest.positioned = now
                self._by_address.move_to_end(key)
            else:
                return

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
        dropped. "A connector must be stopped to be saved" (inventory §6.6): no datagram may
        move a sequence number or the replay window after its export."""
        if not self.stopped:
            raise RuntimeError("a connector must be stopped to be saved")
        now = time.monotonic()
        connections = list(self._by_address.values())
        saved = [
            self._export(connection, now)
            for connection in connections
            if connection.session is not None and connection.cipher is not None
        ]
        for connection in connections:
            self._remove(connection)
        self._by_cid.clear()
        self._flights.clear()
        self._lingering.clear()
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
            if connection is None:
                counts.refused += 1
                continue
            self._place(connection)
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
            resumed=saved.resumed,
        )  # fmt: skip
        connection = DtlsConnection(saved.address, saved.read_cid, now - saved.age)
        connection.started = now - saved.session_age
        connection.establish(session)
        connection.master_secret = saved.master_secret
        return connection

    def _place(self, connection: DtlsConnection) -> None:
        """Into the tables; an older connection of the same address is parked if its CID
        still finds it, else it goes (as in move)."""
        other = self._by_address.get(connection.key)
        if other is not None:
            if self._by_cid.get(other.read_cid) is other and other.cipher is not None:
                del self._by_address[connection.key]
                self._by_address[parking_key(other)] = other
                self.counters.connections_parked += 1
            else:
                self._remove(other)
        self._add(connection)
        if connection.session.cid_negotiated:
            self._by_cid[connection.read_cid] = connection

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
            ("message-size-limit", self.message_size_limit(session, address)),
        ]
        if connection.moved and connection.previous_address is not None:
            fields += [("prev-ip", connection.previous_address[0]),
                       ("prev-port", connection.previous_address[1])]  # fmt: skip
        return fields

    @staticmethod
    def message_size_limit(session: Session, address: tuple) -> int:
        """Application bytes that fit in one record of a datagram within the IPv6 minimum MTU
        (1280) less the IP and UDP headers."""
        datagram = 1280 - (48 if ":" in address[0] else 28)
        return datagram - session.cipher.record_length(0)

    def health(self) -> SecureHealth:
        """/diagnose: Californium's DTLS health keys in its order, then ours; the cluster's."""
        counters = self.dtls_counters()
        cluster = [(key, counters.pop(key)) for key in CLUSTER_HEALTH_KEYS if key in counters]
        dtls = [(key, counters.pop(key)) for key in DTLS_HEALTH_KEYS if key in counters]
        groups = [("dtls", dtls + sorted(counters.items()))]
        if cluster:
            groups.append(("cluster", cluster))
        return SecureHealth(self.limits.max_connections, self.node_id, groups)

    def dtls_counters(self) -> dict[str, int]:
        counters = self.counters.as_dict()
        if self.engine is not None:  # what the C data path handled itself
            datapath = self.engine.datapath_counters()
            counters["received records"] += datapath["records"]
            counters["dropped received records"] += datapath["dropped"] + datapath["replays"]
            counters["dropped received mac-errors"] += datapath["mac errors"]
            counters["dropped received mac-filtered"] += datapath["mac filtered"]
            counters["sending records"] += datapath["sealed"]
        cluster_counters = getattr(self.engine, "cluster_counters", None)
        if cluster_counters is not None:
            counters.update(cluster_counters())
        cache = self.config.session_cache
        counters["sessions cached"] = len(cache)
        counters["sessions resumed"] = cache.counters.resumed
        counters["handshakes pending"] = self._handshakes
        counters["associations"] = len(self._by_address)
        return counters
