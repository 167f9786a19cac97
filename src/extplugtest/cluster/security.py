"""DTLS 1.2 PSK protection of the cluster management channel (inventory §5.7), without I/O.

``DtlsManagementSecurity`` is the ``ManagementSecurity`` of ``ManagementEndpoint``: every
ping/pong goes out as DTLS application data and comes in only if it authenticates. It plays
Californium's ``ClusterManagementDtlsConnector`` (role BOTH, ``SinglePskStore``):

* the node that sends to a peer without a session starts a client handshake; the payloads wait
  (bounded) and leave sealed once the session is established;
* a ClientHello starts a server handshake, after the stateless cookie exchange (RFC 6347
  §4.2.1), so a spoofed source costs one HelloVerifyRequest and no state;
* ``new_handshake=True`` (discovery pings, Californium's ``HANDSHAKE_MODE_FORCE``, §5.4) starts
  a new handshake even with a session; the old session serves until the new one replaces it;
* flights are resent by ``tick(now)``: 500 ms, doubled, 3 retransmissions (§5.7);
* at most 1024 peers (``DTLS_MAX_CONNECTIONS``), the least recently authenticated one makes
  room; handshakes are bounded separately. Everything dropped is counted.

Both nodes may start a client handshake to each other at once (two discovery pings cross).
Both must end with the same session, or their cluster MAC keys (§5.3) would differ. The tie is
broken by the ClientHello randoms, which both sides know after the cookie exchange: the
handshake with the larger client random goes on, the other side drops its own client handshake
and answers as server (its waiting payloads follow the server handshake).

Every session derives the cluster MAC keys of §5.3 from its master secret and randoms
(``extplugtest.cluster.keys.cluster_mac_keys``); ``mac_for(peer)`` hands them out.
The clock: ``clock`` stamps handshakes started by ``wrap``/``unwrap``; ``tick(now)`` must be
given the same clock (``time.monotonic`` is the clock of asyncio's loops and uvloop).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from extplugtest.cluster.keys import ClusterMacKeys, cluster_mac_keys
from extplugtest.cluster.management import Address, normalize_address
from extplugtest.cluster.options import ManagementSecurityConfig
from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls._record import (
    APPLICATION_DATA,
    RECORD_BAD_TAG,
    AeadCipher,
    Record,
    RecordError,
    parse_datagram,
)
from extplugtest.dtls.ciphersuites import CipherSuite
from extplugtest.dtls.cookie import CookieGenerator
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_header import (
    AlertDescription,
    DecodeError,
    HandshakeHeader,
    HandshakeType,
    iter_fragments,
)
from extplugtest.dtls.handshake_server import (
    DtlsConfig,
    HandshakeFailure,
    ServerHandshake,
    plain_record,
)
from extplugtest.dtls.messages import (
    DTLS_1_0,
    Alert,
    AlertLevel,
    ClientHello,
    ContentType,
    HelloVerifyRequest,
    encode_message,
)
from extplugtest.dtls.reassembly import CompleteMessage
from extplugtest.dtls.session_cache import SessionCache

__all__ = [
    "MANAGEMENT_CIPHER_SUITES",
    "DtlsManagementSecurity",
    "ManagementSecurityCounters",
    "ManagementSecurityLimits",
]

log = logging.getLogger(__name__)

#: PSK first, as Californium's preselected list makes the management channel negotiate
#: TLS_PSK_WITH_AES_128_CCM_8 (§5.3); ECDHE_PSK is allowed too (§5.7: "PSK and ECDHE_PSK").
MANAGEMENT_CIPHER_SUITES: tuple[CipherSuite, ...] = (
    cs.TLS_PSK_WITH_AES_128_CCM_8,
    cs.TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,
)
#: epoch of every session: a new handshake starts from epoch 0 again (no renegotiation)
_SESSION_EPOCH = 1


@dataclass(frozen=True, slots=True)
class ManagementSecurityLimits:
    """The management connector's overrides of §5.7, and our own bounds."""

    max_connections: int = 1024  # DTLS_MAX_CONNECTIONS: peers with a session or handshake
    max_handshakes: int = 256  # at once; one per possible node id (§5.5)
    max_queued: int = 16  # payloads per peer waiting for its handshake
    retransmission_timeout: float = 0.5  # DTLS_RETRANSMISSION_TIMEOUT, doubled per resend
    max_retransmissions: int = 3  # DTLS_MAX_RETRANSMISSIONS
    #: how long a finished server handshake can resend its last flight (RFC 6347 §4.2.4:
    #: the last flight has no timer, it answers the peer's retransmission)
    linger: float = 10.0

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_handshakes < 1 or self.max_queued < 1:
            raise ValueError("the management security limits must be at least 1")


@dataclass(slots=True)
class ManagementSecurityCounters:
    client_handshakes: int = 0  # started by us
    server_handshakes: int = 0  # started by a peer's ClientHello with a valid cookie
    hello_verify_requests: int = 0
    handshakes_succeeded: int = 0
    handshakes_failed: int = 0  # alert, wrong PSK, bad message
    handshakes_timed_out: int = 0  # no answer after the last retransmission
    handshakes_refused: int = 0  # max_handshakes reached
    handshake_collisions: int = 0  # both sides started a client handshake (tie-break)
    retransmissions: int = 0  # flights resent
    sessions_evicted: int = 0  # made room for a new peer
    sessions_closed: int = 0  # by an authenticated close_notify or fatal alert
    sealed: int = 0  # payloads sent as application data
    opened: int = 0  # payloads received and authenticated
    dropped_malformed: int = 0  # datagrams that are no DTLS records
    dropped_unauthenticated: int = 0  # records whose AEAD tag is wrong (forged, other key)
    dropped_replayed: int = 0  # duplicates and too old records
    dropped_no_session: int = 0  # protected records from a peer without a session
    dropped_unexpected: int = 0  # records that fit no state (stray handshake, plain alert)
    dropped_table_full: int = 0  # a new peer, and no room
    dropped_queue_full: int = 0  # payloads beyond max_queued
    dropped_queued: int = 0  # waiting payloads discarded because their handshake failed

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class _SinglePskStore(PskStore):
    """The one management identity (Californium's SinglePskStore): the server's built-in demo
    identities must not open the management channel."""

    def secret(self, identity: bytes) -> bytes | None:
        return self.entries.get(identity)


@dataclass(slots=True)
class _Session:
    cipher: AeadCipher
    next_write_seq: int
    suite: CipherSuite
    is_client: bool
    mac_keys: ClusterMacKeys


_Handshake = ClientHandshake | ServerHandshake


@dataclass(slots=True, eq=False)
class _Peer:
    """Everything about one peer address: its session, the handshake in progress (either
    role), the payloads that wait for it."""

    address: Address
    session: _Session | None = None
    handshake: _Handshake | None = None
    #: when the current flight is resent next, the current interval, resends of this flight
    due: float = math.inf
    interval: float = 0.0
    retransmissions: int = 0
    #: a completed server handshake that resends its last flight while the peer repeats its
    #: own (until ``linger_until`` or the first application data from the peer)
    finished_server: ServerHandshake | None = None
    linger_until: float = 0.0
    #: the random of the peer's ClientHello that lost the tie-break: its retransmissions and
    #: late copies are ignored
    rejected_random: bytes = b""
    queue: deque[bytes] = field(default_factory=deque)


class DtlsManagementSecurity:
    """DTLS-PSK for the management socket (role BOTH); a ``ManagementSecurity``.

    *identity* / *secret*: the PSK, ``dtls-mgmt`` and the ``--dtls-cluster-group-security``
    bytes in dynamic mode, ``DTLS_CID_MGMT_*`` in k8s mode (``from_config``).
    ``on_keys_changed(peer, keys)`` is called when a session with *peer* is established
    (its new cluster MAC keys) or ends (None).
    """

    def __init__(
        self,
        identity: bytes | str,
        secret: bytes,
        *,
        limits: ManagementSecurityLimits | None = None,
        cipher_suites: tuple[CipherSuite, ...] = MANAGEMENT_CIPHER_SUITES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not secret:
            raise ValueError("the management PSK secret must not be empty")
        if not cipher_suites or any(not suite.uses_psk for suite in cipher_suites):
            raise ValueError("the management channel needs PSK or ECDHE_PSK cipher suites")
        self.identity = identity.encode() if isinstance(identity, str) else bytes(identity)
        self._secret = bytes(secret)
        self.limits = limits or ManagementSecurityLimits()
        self.cipher_suites = cipher_suites
        self._clock = clock
        self._config = DtlsConfig(
            psk_store=_SinglePskStore({self.identity: self._secret}),
            cipher_suites=cipher_suites,
            cid_length=0,  # plain records: node addresses are stable, no CID needed
            # No peer resumes (our client never offers a session id): keep the cache minimal.
            session_cache=SessionCache(max_sessions=1, clock=clock),
        )
        self._cookies = CookieGenerator(clock=clock)
        #: least recently authenticated first (the eviction order)
        self._peers: OrderedDict[Address, _Peer] = OrderedDict()
        #: peers with a handshake in progress
        self._pending: dict[Address, _Peer] = {}
        #: (until when, peer) of finished server handshakes that may resend their last flight
        self._lingering: deque[tuple[float, _Peer]] = deque()
        self.counters = ManagementSecurityCounters()
        self.on_keys_changed: Callable[[Address, ClusterMacKeys | None], None] | None = None

    @classmethod
    def from_config(
        cls,
        config: ManagementSecurityConfig,
        *,
        limits: ManagementSecurityLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> DtlsManagementSecurity:
        """From the parsed cluster options (dynamic ``dtls-mgmt`` or the k8s env)."""
        return cls(config.identity, config.secret, limits=limits, clock=clock)

    # -- queries -----------------------------------------------------------------------------

    def mac_for(self, peer: Address) -> ClusterMacKeys | None:
        """The cluster MAC keys of the session with *peer* (§5.3): ``write`` signs the cluster
        packets we send to it, ``read`` checks the ones it sends; the HMAC digest is
        ``keys.write.digest`` ("SHA256"). None without an established session. The objects
        stay the same for the whole session."""
        state = self._peers.get(peer)
        if state is None:  # e.g. an IPv4-mapped IPv6 source: the table's keys are normalized
            try:
                state = self._peers.get(normalize_address(peer))
            except ValueError:
                return None
        session = state.session if state is not None else None
        return session.mac_keys if session is not None else None

    def established(self, peer: Address) -> bool:
        state = self._peers.get(peer)
        return state is not None and state.session is not None

    def suite(self, peer: Address) -> CipherSuite | None:
        state = self._peers.get(peer)
        return state.session.suite if state is not None and state.session is not None else None

    @property
    def sessions(self) -> int:
        return sum(state.session is not None for state in self._peers.values())

    @property
    def handshakes(self) -> int:
        return len(self._pending)

    @property
    def peers(self) -> int:
        return len(self._peers)

    @property
    def next_tick(self) -> float:
        """When ``tick`` has a flight to resend or a handshake to give up (inf: nothing)."""
        return min((state.due for state in self._pending.values()), default=math.inf)

    # -- ManagementSecurity ------------------------------------------------------------------

    def wrap(self, payload: bytes, peer: Address, *, new_handshake: bool) -> list[bytes]:
        """*payload* sealed for *peer*, or the ClientHello of a new handshake (the payload
        waits for it), or nothing while a handshake is already in progress."""
        state = self._peers.get(peer)
        if state is not None and state.session is not None and not new_handshake:
            return [self._seal(state.session, payload)]
        if state is None:
            state = self._new_peer(peer)
            if state is None:
                return []
        if len(state.queue) >= self.limits.max_queued:
            self.counters.dropped_queue_full += 1
            return []
        state.queue.append(payload)
        if state.handshake is not None:
            return []  # one handshake at a time; its end sends the payload
        return self._start_client(state)

    def unwrap(self, datagram: bytes, peer: Address) -> tuple[list[bytes], list[bytes]]:
        """(authenticated application payloads, datagrams to send back to *peer*)."""
        try:
            records = parse_datagram(datagram, cid_length=0)
        except RecordError as error:
            records = list(error.records)
            self.counters.dropped_malformed += 1
        payloads: list[bytes] = []
        replies: list[bytes] = []
        resent_last_flight = False
        for record in records:
            state = self._peers.get(peer)
            if record.epoch == 0 and record.content_type == ContentType.HANDSHAKE:
                hello = _client_hello(record)
                if hello is not None:
                    replies += self._client_hello(peer, state, record, *hello)
                    continue
            if state is None:
                self.counters.dropped_no_session += 1
            elif state.handshake is not None and _belongs_to_handshake(record):
                replies += self._handshake_record(state, state.handshake, record)
            elif record.content_type == ContentType.HANDSHAKE:
                if state.finished_server is not None and _repeats_client_flight(record):
                    # The peer repeats its last flight (RFC 6347 §4.2.4): it lost our
                    # ChangeCipherSpec and Finished. Once per datagram.
                    if not resent_last_flight:
                        replies += state.finished_server.flight
                        resent_last_flight = True
                        self.counters.retransmissions += 1
                elif record.epoch == 0 or state.finished_server is None:
                    self.counters.dropped_unexpected += 1
                # else: the encrypted Finished of the repeated flight, answered above
            elif record.content_type == ContentType.CHANGE_CIPHER_SPEC:
                pass  # part of a repeated flight, see above
            elif record.epoch == 0:
                self.counters.dropped_unexpected += 1  # a plain alert cannot end a session
            else:
                payloads += self._protected_record(state, record)
        return payloads, replies

    def tick(self, now: float) -> list[tuple[bytes, Address]]:
        """Resend the flights that are due (RFC 6347 §4.2.4.1), give up handshakes after the
        last retransmission; returns (datagram, peer) pairs to send."""
        out: list[tuple[bytes, Address]] = []
        for state in list(self._pending.values()):
            handshake = state.handshake
            if handshake is None or state.due > now:
                continue
            if state.retransmissions >= self.limits.max_retransmissions:
                self.counters.handshakes_timed_out += 1
                log.info("management DTLS handshake with %s timed out", state.address)
                self._end_handshake(state, failed=True)
                continue
            state.retransmissions += 1
            state.interval *= 2
            state.due = now + state.interval
            self.counters.retransmissions += 1
            flight = (
                handshake.retransmit()
                if isinstance(handshake, ClientHandshake)
                else list(handshake.flight)
            )
            out += [(datagram, state.address) for datagram in flight]
        self._end_lingering(now)
        return out

    def _end_lingering(self, now: float) -> None:
        lingering = self._lingering
        while lingering and (
            lingering[0][0] <= now or len(lingering) > self.limits.max_connections
        ):
            until, state = lingering.popleft()
            if state.linger_until == until:  # not lingering again for a newer handshake
                state.finished_server = None

    # -- handshakes --------------------------------------------------------------------------

    def _start_client(self, state: _Peer) -> list[bytes]:
        if not self._may_start_handshake(state):
            return []
        # cid=None: no Connection ID extension, the management channel uses plain records.
        handshake = ClientHandshake(
            self.identity, self._secret, cid=None, cipher_suites=self.cipher_suites
        )
        self._begin(state, handshake)
        self.counters.client_handshakes += 1
        return [handshake.start()]

    def _client_hello(
        self,
        peer: Address,
        state: _Peer | None,
        record: Record,
        header: HandshakeHeader,
        body: bytes,
        hello: ClientHello,
    ) -> list[bytes]:
        """Stateless until the cookie verifies (RFC 6347 §4.2.1), then a server handshake."""
        if not hello.cookie or not self._cookies.verify(peer, hello):
            request = HelloVerifyRequest(DTLS_1_0, self._cookies.generate(peer, hello))
            self.counters.hello_verify_requests += 1
            # The HVR reuses the ClientHello's record sequence number, as the connector does.
            payload = encode_message(request, header.message_seq)
            return [plain_record(ContentType.HANDSHAKE, record.seq, payload, DTLS_1_0)]
        if state is not None:
            handshake = state.handshake
            if hello.random == state.rejected_random or (
                state.finished_server is not None
                and state.finished_server.hello.random == hello.random
            ):
                self.counters.dropped_unexpected += 1  # a late copy of a settled ClientHello
                return []
            if isinstance(handshake, ServerHandshake) and handshake.hello.random == hello.random:
                # Its retransmission: the peer lost our flight, the handshake resends it.
                return self._handshake_record(state, handshake, record)
            if isinstance(handshake, ClientHandshake):
                self.counters.handshake_collisions += 1
                if hello.random <= handshake.random:
                    # Our handshake has the larger client random: it goes on, the peer's
                    # side gives up its own when our ClientHello reaches it.
                    state.rejected_random = hello.random
                    return []
            if handshake is not None:
                # The peer's handshake wins, or the peer started over: the old one ends,
                # the waiting payloads stay for the new one.
                self._end_handshake(state, failed=False)
        else:
            state = self._new_peer(peer)
            if state is None:
                return []
        if not self._may_start_handshake(state):
            return []
        handshake = ServerHandshake(
            self._config,
            CompleteMessage(header.msg_type, header.message_seq, body),
            record.seq,
            b"",
            hello,
        )
        self._begin(state, handshake)
        self.counters.server_handshakes += 1
        try:
            return handshake.start()
        except (HandshakeFailure, DecodeError) as failure:
            return self._fail(state, handshake, failure)

    def _may_start_handshake(self, state: _Peer) -> bool:
        if len(self._pending) < self.limits.max_handshakes:
            return True
        self.counters.handshakes_refused += 1
        self.counters.dropped_queued += len(state.queue)
        state.queue.clear()
        if state.session is None:
            self._remove(state)
        return False

    def _begin(self, state: _Peer, handshake: _Handshake) -> None:
        state.handshake = handshake
        state.interval = self.limits.retransmission_timeout
        state.due = self._clock() + state.interval
        state.retransmissions = 0
        self._pending[state.address] = state

    def _handshake_record(self, state: _Peer, handshake: _Handshake, record: Record) -> list[bytes]:
        if record.content_type == ContentType.ALERT and record.epoch == 0:
            return self._handshake_alert(state, handshake, record)
        try:
            if isinstance(handshake, ClientHandshake):
                flight = handshake.on_datagram(record.raw)
            else:
                flight = handshake.on_record(record)
        except (HandshakeFailure, DecodeError, ValueError) as failure:
            return self._fail(state, handshake, failure)
        if flight:  # a new flight: its timer starts again (RFC 6347 §4.2.4.1)
            state.interval = self.limits.retransmission_timeout
            state.due = self._clock() + state.interval
            state.retransmissions = 0
        if handshake.done:
            return flight + self._establish(state, handshake)
        return flight

    def _handshake_alert(self, state: _Peer, handshake: _Handshake, record: Record) -> list[bytes]:
        try:
            alert = Alert.decode(record.fragment)
        except DecodeError:
            self.counters.dropped_unexpected += 1
            return []
        if alert.is_fatal or alert.description == AlertDescription.CLOSE_NOTIFY:
            self.counters.handshakes_failed += 1
            log.info("management DTLS handshake with %s: peer sent %s", state.address, alert)
            self._end_handshake(state, failed=True)
        return []

    def _fail(self, state: _Peer, handshake: _Handshake, failure: Exception) -> list[bytes]:
        """End a failed handshake, answering with its fatal alert (plain: epoch 0)."""
        self.counters.handshakes_failed += 1
        log.info("management DTLS handshake with %s failed: %s", state.address, failure)
        description = getattr(failure, "alert", AlertDescription.HANDSHAKE_FAILURE)
        if isinstance(handshake, ServerHandshake):
            alert = handshake.alert(description)
        else:
            payload = Alert(AlertLevel.FATAL, description).encode()
            alert = plain_record(ContentType.ALERT, handshake.write_seq, payload)
            handshake.write_seq += 1
        self._end_handshake(state, failed=True)
        return [alert]

    def _end_handshake(self, state: _Peer, *, failed: bool) -> None:
        state.handshake = None
        state.due = math.inf
        self._pending.pop(state.address, None)
        if failed:
            self.counters.dropped_queued += len(state.queue)
            state.queue.clear()
            if state.session is None:
                self._remove(state)

    def _establish(self, state: _Peer, handshake: _Handshake) -> list[bytes]:
        """The handshake is complete: its session replaces any older one, and the waiting
        payloads leave on it."""
        suite = handshake.suite
        assert suite is not None
        if isinstance(handshake, ClientHandshake):
            client = handshake.session
            assert client is not None
            client_random, is_client = handshake.random, True
            cipher, next_write_seq = client.cipher, client.next_write_seq
        else:
            server = handshake.session
            assert server is not None
            client_random, is_client = handshake.hello.random, False
            cipher, next_write_seq = server.cipher, server.next_write_seq
            now = self._clock()
            state.finished_server = handshake
            state.linger_until = now + self.limits.linger
            self._lingering.append((state.linger_until, state))
            self._end_lingering(now)  # also here: tick runs only while handshakes are pending
        keys = cluster_mac_keys(
            handshake.master, client_random, handshake.server_random, suite, is_client=is_client
        )
        state.session = _Session(cipher, next_write_seq, suite, is_client, keys)
        self._end_handshake(state, failed=False)
        if is_client:
            state.finished_server = None
        state.rejected_random = b""
        self._peers.move_to_end(state.address)
        self.counters.handshakes_succeeded += 1
        log.info(
            "management DTLS session with %s (%s, %s)",
            state.address,
            suite.name,
            "client" if is_client else "server",
        )
        if self.on_keys_changed is not None:
            self.on_keys_changed(state.address, keys)
        waiting = [self._seal(state.session, payload) for payload in state.queue]
        state.queue.clear()
        return waiting

    # -- sessions ----------------------------------------------------------------------------

    def _seal(self, session: _Session, payload: bytes) -> bytes:
        seq = session.next_write_seq
        session.next_write_seq += 1
        self.counters.sealed += 1
        return session.cipher.seal(_SESSION_EPOCH, seq, APPLICATION_DATA, payload)

    def _protected_record(self, state: _Peer, record: Record) -> list[bytes]:
        session = state.session
        if session is None:
            self.counters.dropped_no_session += 1
            return []
        try:
            content_type, plaintext = session.cipher.open(record.raw)
        except RecordError as error:
            if error.result == RECORD_BAD_TAG:
                self.counters.dropped_unauthenticated += 1
            else:  # replayed, too old, or not of this epoch
                self.counters.dropped_replayed += 1
            return []
        self._peers.move_to_end(state.address)
        if content_type == APPLICATION_DATA:
            # The peer has our Finished: no more last flight to resend.
            state.finished_server = None
            self.counters.opened += 1
            return [plaintext]
        if content_type == ContentType.ALERT:
            self._session_alert(state, plaintext)
        else:
            self.counters.dropped_unexpected += 1
        return []

    def _session_alert(self, state: _Peer, plaintext: bytes) -> None:
        try:
            alert = Alert.decode(plaintext)
        except DecodeError:
            self.counters.dropped_unexpected += 1
            return
        if alert.is_fatal or alert.description == AlertDescription.CLOSE_NOTIFY:
            log.info("management DTLS session with %s ended: %s", state.address, alert)
            self.counters.sessions_closed += 1
            state.session = None
            state.finished_server = None
            if self.on_keys_changed is not None:
                self.on_keys_changed(state.address, None)
            if state.handshake is None:
                self._remove(state)

    # -- the peer table ----------------------------------------------------------------------

    def _new_peer(self, address: Address) -> _Peer | None:
        if len(self._peers) >= self.limits.max_connections and not self._make_room():
            self.counters.dropped_table_full += 1
            return None
        state = _Peer(address)
        self._peers[address] = state
        return state

    def _make_room(self) -> bool:
        """Evict the least recently authenticated peer without a handshake in progress (at
        most max_handshakes entries have one, so the scan finds one if any)."""
        candidates = itertools.islice(self._peers.values(), self.limits.max_handshakes + 1)
        victim = next((state for state in candidates if state.handshake is None), None)
        if victim is None:
            return False
        self.counters.sessions_evicted += 1
        self.counters.dropped_queued += len(victim.queue)
        self._remove(victim)
        return True

    def _remove(self, state: _Peer) -> None:
        if self._peers.get(state.address) is state:
            del self._peers[state.address]
        if self._pending.get(state.address) is state:
            del self._pending[state.address]
        state.finished_server = None
        if state.session is not None:
            state.session = None
            if self.on_keys_changed is not None:
                self.on_keys_changed(state.address, None)


def _client_hello(record: Record) -> tuple[HandshakeHeader, bytes, ClientHello] | None:
    """The ClientHello in this epoch-0 handshake record; None for any other message (a
    ClientHello must come whole in one record, as the connector requires)."""
    try:
        fragments = list(iter_fragments(record.fragment))
        if len(fragments) != 1:
            return None
        header, body = fragments[0]
        if (
            header.msg_type != HandshakeType.CLIENT_HELLO
            or header.fragment_offset != 0
            or header.fragment_length != header.length
        ):
            return None
        return header, body, ClientHello.decode(body)
    except (DecodeError, ValueError):
        return None


def _repeats_client_flight(record: Record) -> bool:
    """The plain part of the client's last flight (RFC 5246 §7.3: [Certificate]
    ClientKeyExchange ...), not a stray HelloVerifyRequest or ServerHello."""
    if record.epoch != 0 or len(record.fragment) < 1:
        return False
    return record.fragment[0] in (HandshakeType.CERTIFICATE, HandshakeType.CLIENT_KEY_EXCHANGE)


def _belongs_to_handshake(record: Record) -> bool:
    """Plain records, and the protected Finished (epoch 1, outer type handshake: no CID), go to
    the handshake in progress; protected application data and alerts to the session."""
    return record.epoch == 0 or record.content_type == ContentType.HANDSHAKE
