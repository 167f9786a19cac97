"""The DTLS connector's two tables (by address, by CID) under random adds, moves, removals,
activity and time passing, without sockets: every connection stays findable the way its kind
allows, none leaks, and the by-address table stays within its bound (RFC 9146 §6 moves; a NAT
reusing ports). As Californium's connection store (inventory §6.4): idle connections stay while
there is room; at the bound only a stale one makes room, the least recently active first, and
without one the new connection is refused."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.resource import Resource
from extplugtest.dtls import connector as connector_module
from extplugtest.dtls._datapath import DtlsConnection, peer_key
from extplugtest.dtls._record import AEAD_AES_128_CCM_8, AeadCipher
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport, parking_key
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_server import DtlsConfig

ADDRESSES = [("127.0.0.1", port) for port in range(40000, 40006)]
MAX_CONNECTIONS = 4  # below LRU_LOOKS: making room looks at every connection
STALE_AFTER = 100.0
KEY, IV = bytes(16), bytes(4)


class Session:
    """What DtlsConnection.establish() takes from a handshake's session."""

    def __init__(self, cipher: AeadCipher) -> None:
        self.cipher = cipher
        self.next_write_seq = 1
        self.cid_negotiated = bool(cipher.read_cid)


class ConnectionTables(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.transport = DtlsServerTransport(
            CoapEndpoint(Resource("")), ("127.0.0.1", 0), DtlsConfig(PskStore()),
            limits=DtlsLimits(max_connections=MAX_CONNECTIONS, stale_after=STALE_AFTER),
        )  # fmt: skip
        self.now = 1000.0  # the connector's clock, as the data path stamps last_seen
        self.cids = iter(range(1, 10**6))
        self.live: list[DtlsConnection] = []  # added and not removed (as far as we know)

    def _prune(self) -> None:
        """Connections the transport removed on its own (evicted, replaced, not CID)."""
        by_cid = self.transport._by_cid
        by_address = self.transport._by_address
        self.live = [c for c in self.live if c in by_address.values() or c.read_cid in by_cid]

    @rule(address=st.sampled_from(ADDRESSES), with_cid=st.booleans())
    def add(self, address: tuple, with_cid: bool) -> None:
        """An established connection at *address* (as a finished handshake leaves it), if
        the store has room for it (as _client_hello asks)."""
        transport = self.transport
        old = transport._by_address.get(peer_key(address))
        if old is not None:  # a new handshake replaces the old connection of this address
            transport._remove(old)
        held = list(transport._by_address.values())
        stale = [c for c in held if self.now - c.last_seen > STALE_AFTER]
        evicted = transport.counters.connections_evicted
        if not transport._room(self.now):
            # refused only at the bound, and only when no connection is stale
            assert len(held) == MAX_CONNECTIONS and not stale
            assert set(transport._by_address.values()) == set(held)  # (the order may change)
            return
        if len(held) == MAX_CONNECTIONS:  # a stale one made room: the least recently active
            assert transport.counters.connections_evicted == evicted + 1
            gone = [c for c in held if c not in transport._by_address.values()]
            assert len(gone) == 1 and gone[0] in stale
            assert gone[0].last_seen == min(c.last_seen for c in held)
        else:  # room: idle connections stay
            assert list(transport._by_address.values()) == held
            assert transport.counters.connections_evicted == evicted
        cid = next(self.cids).to_bytes(6, "big") if with_cid else b""
        connection = DtlsConnection(address, cid, self.now)
        cipher = AeadCipher(AEAD_AES_128_CCM_8, KEY, IV, KEY, IV, read_cid=cid)
        connection.establish(Session(cipher))
        transport._add(connection)
        if cid:
            transport._by_cid[cid] = connection
        self.live.append(connection)
        self._prune()

    @precondition(lambda self: self.live)
    @rule(data=st.data(), address=st.sampled_from(ADDRESSES))
    def move(self, data: st.DataObject, address: tuple) -> None:
        """A CID record of a live CID connection came from *address* (the data path's move)."""
        movers = [c for c in self.live if c.read_cid]
        if not movers:
            return
        connection = data.draw(st.sampled_from(movers))
        if peer_key(address) == connection.key:
            return  # the data path moves only from another address
        reachable = [c for c in self.live if c.read_cid]
        self.transport.move(connection, address)
        assert self.transport._by_address[peer_key(address)] is connection
        # a move drops no CID connection: one whose address it took is parked, not removed
        assert all(self.transport._by_cid.get(c.read_cid) is c for c in reachable)
        self._prune()

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        connection = data.draw(st.sampled_from(self.live))
        self.transport._remove(connection)
        self.live.remove(connection)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def activity(self, data: st.DataObject) -> None:
        """An authenticated record of a live connection (the data path stamps it)."""
        data.draw(st.sampled_from(self.live)).last_seen = self.now

    @rule(seconds=st.sampled_from([1.0, 60.0, STALE_AFTER + 1, 86_400.0]))
    def time_passes(self, seconds: float) -> None:
        """The timer runs; idle connections stay, however long, while nothing needs room."""
        before = list(self.transport._by_address.items())
        self.now += seconds
        original = connector_module.time.monotonic
        connector_module.time.monotonic = lambda: self.now
        try:
            self.transport._on_timer()
        finally:
            connector_module.time.monotonic = original
        assert list(self.transport._by_address.items()) == before

    @invariant()
    def tables_agree(self) -> None:
        by_address, by_cid = self.transport._by_address, self.transport._by_cid
        assert len(by_address) <= MAX_CONNECTIONS
        held = list(by_address.values())
        assert len(held) == len({id(c) for c in held}), "a connection indexed twice"
        for key, connection in by_address.items():
            # by its address, or parked (a CID connection whose address another one took)
            assert key in (connection.key, parking_key(connection)), key
            if key != connection.key:
                assert connection.read_cid and by_cid.get(connection.read_cid) is connection
        for connection in by_cid.values():
            assert connection in held, "found by CID but in no bounded table: a leak"
        for connection in self.live:
            assert connection in held


ConnectionTables.TestCase.settings = settings(
    max_examples=max(150, settings().max_examples), stateful_step_count=30, deadline=None
)
test_connection_tables = ConnectionTables.TestCase
