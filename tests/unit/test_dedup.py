"""Tests for the deduplication cache, ``extplugtest.coap._dedup`` (RFC 7252 §4.5).

Time is always passed explicitly (``now``); nothing sleeps. Plugtest spec §3.1: the key is
(source endpoint, MID), CON exchanges live EXCHANGE_LIFETIME = 247 s, NON ones 145 s, and a
duplicate gets the cached response replayed.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from extplugtest.coap._dedup import DeduplicationCache, key_from_address

V4 = ("192.0.2.1", 5683)
V4_OTHER_PORT = ("192.0.2.1", 5684)
V4_OTHER_HOST = ("192.0.2.2", 5683)
V4_MAPPED = ("::ffff:192.0.2.1", 5683, 0, 0)
V6 = ("2001:db8::1", 5683, 0, 0)
LINK_LOCAL_1 = ("fe80::1", 5683, 0, 1)
LINK_LOCAL_2 = ("fe80::1", 5683, 0, 2)

T0 = 1000.0  # an arbitrary monotonic clock reading


def cache(**kwargs) -> DeduplicationCache:
    return DeduplicationCache(**kwargs)


def present(c: DeduplicationCache, address, mid: int, now: float) -> bool:
    """Whether a live exchange exists, without touching the peer (update_response uses a
    plain lookup). Replaces the cached response, so only use it where that does not matter."""
    return c.update_response(address, mid, b"probe", now)


# ---------------------------------------------------------------------------------------------
# Lookups and responses


def test_defaults() -> None:
    c = DeduplicationCache()
    assert c.messages_per_peer == 16
    assert c.exchange_lifetime == 247.0
    assert c.non_lifetime == 145.0
    assert c.peer_inactivity == 180.0
    assert c.max_peers == 100000
    assert c.stats() == {
        "peers": 0,
        "max-peers": 100000,
        "peers-added": 0,
        "peers-evicted": 0,
        "peers-expired": 0,
        "peers-moved": 0,
        "exchanges": 0,
        "exchanges-overwritten": 0,
        "duplicates": 0,
    }


@pytest.mark.parametrize("kwargs", [{"max_peers": 0}, {"messages_per_peer": 0}])
def test_bounds_must_be_positive(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DeduplicationCache(**kwargs)


def test_new_request_is_not_a_duplicate() -> None:
    c = cache()
    assert c.duplicate_of(V4, 1, T0) is None
    assert c.stats()["peers"] == 1  # the lookup marks the peer active, like the engine
    assert c.stats()["duplicates"] == 0


def test_duplicate_while_pending_then_answered() -> None:
    c = cache()
    assert c.duplicate_of(V4, 0x1234, T0) is None
    c.record(V4, 0x1234, True, T0)
    assert c.duplicate_of(V4, 0x1234, T0 + 1) == b""  # no response yet
    assert c.update_response(V4, 0x1234, b"\x60\x45\x12\x34\xffok", T0 + 2) is True
    assert c.duplicate_of(V4, 0x1234, T0 + 3) == b"\x60\x45\x12\x34\xffok"
    assert c.stats()["duplicates"] == 2
    assert c.stats()["exchanges"] == 1


def test_record_with_response() -> None:
    c = cache()
    c.record(V4, 7, True, T0, b"\x60\x45\x00\x07")
    assert c.duplicate_of(V4, 7, T0 + 1) == b"\x60\x45\x00\x07"
    c.record(V4, 8, True, T0, bytearray(b"\x60\x00\x00\x08"))
    assert c.duplicate_of(V4, 8, T0 + 1) == b"\x60\x00\x00\x08"


def test_record_with_empty_response_stays_pending() -> None:
    c = cache()
    c.record(V4, 7, True, T0, b"")
    assert c.duplicate_of(V4, 7, T0 + 1) == b""


def test_other_mid_is_not_a_duplicate() -> None:
    c = cache()
    c.record(V4, 7, True, T0, b"resp")
    assert c.duplicate_of(V4, 8, T0) is None
    assert c.duplicate_of(V4, 7, T0) == b"resp"


def test_update_response_replaces_and_resizes() -> None:
    c = cache()
    c.record(V4, 1, True, T0)
    assert c.update_response(V4, 1, b"short", T0)
    assert c.update_response(V4, 1, b"a much longer response" * 20, T0 + 1)
    assert c.duplicate_of(V4, 1, T0 + 2) == b"a much longer response" * 20
    assert c.update_response(V4, 1, b"xy", T0 + 3)
    assert c.duplicate_of(V4, 1, T0 + 4) == b"xy"


def test_update_response_without_live_exchange() -> None:
    c = cache()
    assert c.update_response(V4, 1, b"x", T0) is False  # unknown peer
    assert c.stats()["peers"] == 0  # and it did not create one
    c.record(V4, 1, False, T0)
    assert c.update_response(V4, 2, b"x", T0) is False  # unknown MID
    assert c.update_response(V6, 1, b"x", T0) is False  # other peer
    assert c.update_response(V4, 1, b"", T0) is False  # nothing to store
    assert c.duplicate_of(V4, 1, T0) == b""
    assert c.update_response(V4, 1, b"x", T0 + 146) is False  # NON exchange expired


def test_largest_response() -> None:
    c = cache()
    c.record(V4, 1, True, T0)
    big = bytes(range(256)) * 256
    assert c.update_response(V4, 1, big[:65535], T0)
    assert c.duplicate_of(V4, 1, T0) == big[:65535]
    assert c.update_response(V4, 1, big + b"!", T0) is False  # does not fit a uint16 length
    assert c.duplicate_of(V4, 1, T0) == big[:65535]


# ---------------------------------------------------------------------------------------------
# Lifetimes


def test_con_exchange_lifetime_247s() -> None:
    c = cache()
    c.record(V4, 1, True, T0, b"ack")
    assert c.duplicate_of(V4, 1, T0 + 146.0) == b"ack"  # longer than NON_LIFETIME
    assert c.duplicate_of(V4, 1, T0 + 246.5) == b"ack"
    assert c.duplicate_of(V4, 1, T0 + 247.5) is None


def test_non_lifetime_145s() -> None:
    c = cache()
    c.record(V4, 1, False, T0, b"non")
    assert c.duplicate_of(V4, 1, T0 + 144.5) == b"non"
    assert c.duplicate_of(V4, 1, T0 + 145.5) is None


def test_custom_lifetimes() -> None:
    c = cache(exchange_lifetime=10.0, non_lifetime=5.0)
    c.record(V4, 1, True, T0)
    c.record(V4, 2, False, T0)
    assert c.duplicate_of(V4, 1, T0 + 9) == b""
    assert c.duplicate_of(V4, 2, T0 + 9) is None
    assert c.duplicate_of(V4, 1, T0 + 11) is None


def test_reused_mid_after_expiry_is_deduplicated() -> None:
    """A peer may reuse a MID once the old exchange has expired (RFC 7252 §4.4). The new
    exchange must then be deduplicated like any other, even though the expired one is
    still in the peer's ring."""
    c = cache()
    assert c.duplicate_of(V4, 7, T0) is None
    c.record(V4, 7, False, T0, b"first")
    assert c.duplicate_of(V4, 7, T0 + 150) is None  # expired: a new request
    c.record(V4, 7, False, T0 + 150, b"second")
    assert c.duplicate_of(V4, 7, T0 + 151) == b"second"


def test_reused_mid_after_expiry_con() -> None:
    c = cache()
    c.record(V4, 7, True, T0, b"first")
    assert c.duplicate_of(V4, 7, T0 + 250) is None
    c.record(V4, 7, True, T0 + 250)
    assert c.duplicate_of(V4, 7, T0 + 252) == b""  # pending: the handler must not run again


# ---------------------------------------------------------------------------------------------
# Per-peer bound


def test_messages_per_peer_bound() -> None:
    c = cache(messages_per_peer=16)
    for mid in range(17):
        assert c.duplicate_of(V4, mid, T0 + mid) is None
        c.record(V4, mid, True, T0 + mid, bytes([mid]))
    stats = c.stats()
    assert stats["exchanges"] == 17
    assert stats["exchanges-overwritten"] == 1
    assert c.duplicate_of(V4, 0, T0 + 20) is None  # the oldest was overwritten
    for mid in range(1, 17):
        assert c.duplicate_of(V4, mid, T0 + 20) == bytes([mid])


def test_bound_is_per_peer() -> None:
    c = cache(messages_per_peer=4)
    for mid in range(4):
        c.record(V4, mid, True, T0)
        c.record(V6, mid, True, T0)
    c.record(V4, 100, True, T0)
    assert c.stats()["exchanges-overwritten"] == 1
    assert c.duplicate_of(V4, 0, T0) is None
    assert c.duplicate_of(V6, 0, T0) == b""


def test_overwriting_an_expired_exchange_is_not_counted() -> None:
    c = cache(messages_per_peer=2)
    c.record(V4, 1, False, T0)
    c.record(V4, 2, False, T0)
    c.record(V4, 3, False, T0 + 200)  # the slot of MID 1 had expired
    assert c.stats()["exchanges-overwritten"] == 0
    c.record(V4, 4, False, T0 + 201)  # MID 2 expired too
    c.record(V4, 5, False, T0 + 202)  # MID 3 is live
    assert c.stats()["exchanges-overwritten"] == 1


# ---------------------------------------------------------------------------------------------
# Peer bound and sweep


def test_max_peers_evicts_least_recently_active() -> None:
    c = cache(max_peers=3)
    peers = [("10.0.0.1", 1), ("10.0.0.2", 1), ("10.0.0.3", 1)]
    for i, peer in enumerate(peers):
        c.record(peer, 1, True, T0 + i)
    c.duplicate_of(peers[0], 99, T0 + 10)  # touch the oldest: now peers[1] is the LRU one
    c.record(("10.0.0.4", 1), 1, True, T0 + 11)
    stats = c.stats()
    assert stats["peers"] == 3
    assert stats["peers-evicted"] == 1
    assert stats["peers-added"] == 4
    assert not present(c, peers[1], 1, T0 + 12)
    assert present(c, peers[0], 1, T0 + 12)
    assert present(c, peers[2], 1, T0 + 12)
    assert present(c, ("10.0.0.4", 1), 1, T0 + 12)


def test_the_lru_order_is_exact_to_a_second() -> None:
    """A peer moves to the newest end at most once a second (its requests then do not touch
    other peers' list links): touched again within the second it keeps its place."""
    c = cache(max_peers=2)
    c.record(V4, 1, True, T0)
    c.record(V6, 1, True, T0 + 0.1)
    c.record(V4, 2, True, T0 + 0.5)  # within the second: still the least recent
    c.record(V4_OTHER_HOST, 1, True, T0 + 0.6)  # evicts V4
    assert not present(c, V4, 2, T0 + 0.7)
    assert present(c, V6, 1, T0 + 0.7)
    c.record(V6, 2, True, T0 + 1.2)  # a second after it was placed: to the newest end
    c.record(V4, 3, True, T0 + 1.3)  # evicts V4_OTHER_HOST, not V6
    assert present(c, V6, 2, T0 + 1.4)
    assert not present(c, V4_OTHER_HOST, 1, T0 + 1.4)


def test_a_mid_in_a_free_slot_is_not_a_duplicate() -> None:
    """MID 0 matches the compact MID copy of the unused slots: their state decides."""
    c = cache()
    assert c.duplicate_of(V4, 0, T0) is None
    c.record(V4, 0, True, T0, b"zero")
    assert c.duplicate_of(V4, 0, T0) == b"zero"


def test_record_touches_peer() -> None:
    c = cache(max_peers=2)
    c.record(V4, 1, True, T0)
    c.record(V6, 1, True, T0 + 1)
    c.record(V4, 2, True, T0 + 2)  # V4 most recent again
    c.record(V4_OTHER_HOST, 1, True, T0 + 3)  # evicts V6
    assert present(c, V4, 1, T0 + 4)
    assert not present(c, V6, 1, T0 + 4)


def test_evicted_peer_comes_back_empty() -> None:
    c = cache(max_peers=1)
    c.record(V4, 1, True, T0, b"r")
    c.record(V6, 1, True, T0 + 1, b"r")
    assert c.stats()["peers-evicted"] == 1
    assert c.duplicate_of(V4, 1, T0 + 2) is None  # V4 was forgotten (and now evicts V6)
    assert c.stats()["peers-evicted"] == 2
    assert c.stats()["peers"] == 1


def test_sweep_removes_only_idle_peers() -> None:
    c = cache(peer_inactivity=180.0)
    c.record(V4, 1, True, T0, b"a")
    c.record(V6, 1, True, T0 + 100, b"b")
    c.record(V4_OTHER_PORT, 1, True, T0 + 150, b"c")
    assert c.sweep(T0 + 100) == 0
    assert c.sweep(T0 + 200) == 1  # V4 idle for 200 s
    stats = c.stats()
    assert stats["peers"] == 2
    assert stats["peers-expired"] == 1
    assert not present(c, V4, 1, T0 + 200)
    assert c.duplicate_of(V6, 1, T0 + 200) == b"b"  # touches V6 at T0 + 200
    assert c.sweep(T0 + 340) == 1  # V4_OTHER_PORT idle for 190 s, V6 for 140 s
    assert c.stats()["peers"] == 1
    assert c.duplicate_of(V6, 1, T0 + 340) == b"b"
    assert c.sweep(T0 + 10_000) == 1
    assert c.stats()["peers"] == 0
    assert c.stats()["peers-expired"] == 3
    assert c.sweep(T0 + 20_000) == 0


def test_sweep_on_empty_cache() -> None:
    assert cache().sweep(T0) == 0


def test_many_peers_grow_the_table() -> None:
    c = cache()
    peers = [(f"10.{i >> 8 & 255}.{i & 255}.1", 5683 + i % 3) for i in range(3000)]
    for i, peer in enumerate(peers):
        c.record(peer, i & 0xFFFF, True, T0, i.to_bytes(2, "big"))
    assert c.stats()["peers"] == 3000
    for i, peer in enumerate(peers):
        assert c.duplicate_of(peer, i & 0xFFFF, T0 + 1) == i.to_bytes(2, "big")
    assert c.sweep(T0 + 500) == 3000
    assert c.stats()["peers"] == 0


def test_many_peers_with_eviction() -> None:
    c = cache(max_peers=1500)
    peers = [(f"2001:db8::{i:x}", 5683, 0, 0) for i in range(3000)]
    for i, peer in enumerate(peers):
        c.record(peer, 1, True, T0 + i / 1000)
    stats = c.stats()
    assert stats["peers"] == 1500
    assert stats["peers-evicted"] == 1500
    assert not any(present(c, peer, 1, T0 + 5) for peer in peers[:1500])
    assert all(present(c, peer, 1, T0 + 5) for peer in peers[1500:])


# ---------------------------------------------------------------------------------------------
# Peer keys


def test_distinct_peers() -> None:
    c = cache()
    for peer in (V4, V4_OTHER_PORT, V4_OTHER_HOST, V6, LINK_LOCAL_1, LINK_LOCAL_2):
        assert c.duplicate_of(peer, 1, T0) is None
        c.record(peer, 1, True, T0, repr(peer).encode())
    assert c.stats()["peers"] == 6
    for peer in (V4, V4_OTHER_PORT, V4_OTHER_HOST, V6, LINK_LOCAL_1, LINK_LOCAL_2):
        assert c.duplicate_of(peer, 1, T0) == repr(peer).encode()


def test_a_moved_peer_keeps_its_exchanges_and_leaves_nothing_behind() -> None:
    """A DTLS connection that moved (RFC 9146 §6) is the same endpoint: a retransmission from
    the new address is a duplicate, and the old address has no entry left."""
    c = cache()
    c.record(V4, 7, True, T0, b"answer")
    assert c.move(V4, V4_OTHER_PORT) is True
    assert c.duplicate_of(V4_OTHER_PORT, 7, T0 + 1) == b"answer"
    assert c.duplicate_of(V4, 7, T0 + 1) is None  # a new peer, nothing remembered
    stats = c.stats()
    assert (stats["peers-moved"], stats["duplicates"], stats["peers-added"]) == (1, 1, 2)


def test_a_move_replaces_what_the_new_address_had() -> None:
    """An entry already at the new address belonged to an endpoint that used it before."""
    c = cache()
    c.record(V4, 1, True, T0, b"mine")
    c.record(V4_OTHER_HOST, 1, True, T0, b"theirs")
    assert c.move(V4, V4_OTHER_HOST) is True
    assert c.duplicate_of(V4_OTHER_HOST, 1, T0) == b"mine"
    assert c.stats()["peers"] == 1


def test_a_move_of_nothing_or_to_the_same_address_changes_nothing() -> None:
    c = cache()
    assert c.move(V4, V6) is False
    c.record(V4, 1, True, T0, b"r")
    assert c.move(V4, V4_MAPPED) is False  # the same peer key
    assert c.stats()["peers-moved"] == 0
    assert c.duplicate_of(V4, 1, T0) == b"r"


def test_ipv4_and_ipv4_mapped_ipv6_are_the_same_peer() -> None:
    """Intended: the key of an IPv4 peer is its IPv4-mapped IPv6 address, so a dual-stack
    socket (which reports ::ffff:a.b.c.d) and an IPv4 socket see the same peer."""
    assert key_from_address(V4) == key_from_address(V4_MAPPED)
    assert key_from_address(V4) != key_from_address(V4_OTHER_PORT)
    assert key_from_address(V4) != key_from_address(("::192.0.2.1", 5683, 0, 0))
    c = cache()
    c.record(V4, 1, True, T0, b"r")
    assert c.duplicate_of(V4_MAPPED, 1, T0) == b"r"
    assert c.stats()["peers"] == 1


def test_key_layout() -> None:
    key = key_from_address(("192.0.2.1", 0x1633))
    assert len(key) == 24
    assert key[:16] == ipaddress.ip_address("::ffff:192.0.2.1").packed
    assert key_from_address(V6)[:16] == ipaddress.ip_address("2001:db8::1").packed
    assert key_from_address(LINK_LOCAL_1) != key_from_address(LINK_LOCAL_2)
    # A textual scope in the host part is ignored; the scope id of the tuple counts.
    assert key_from_address(("fe80::1%eth0", 5683, 0, 1)) == key_from_address(LINK_LOCAL_1)


# ---------------------------------------------------------------------------------------------
# Model-based test


def _canonical(address) -> tuple:
    ip = ipaddress.ip_address(address[0].split("%")[0])
    if ip.version == 4:
        ip = ipaddress.IPv6Address("::ffff:" + str(ip))
    return (ip.packed, address[1], address[3] if len(address) > 3 else 0)


ADDRESSES = [V4, V4_MAPPED, V4_OTHER_PORT, V6, LINK_LOCAL_1, LINK_LOCAL_2]
MAX_PEERS = 3
MESSAGES_PER_PEER = 4
CON_LIFETIME = 247.0
NON_LIFETIME = 145.0
INACTIVITY = 180.0
PROMOTE_INTERVAL = 1.0  # _dedup.pyx: a peer goes to the front of the LRU list at most this often


@dataclass
class ModelExchange:
    mid: int
    stamp: float
    confirmable: bool
    response: bytes = b""

    def live(self, now: float) -> bool:
        return now - self.stamp <= (CON_LIFETIME if self.confirmable else NON_LIFETIME)


@dataclass
class ModelPeer:
    last_seen: float
    promoted: float  # when it last went to the newest end of the LRU order
    exchanges: deque = field(default_factory=deque)  # oldest first, at most MESSAGES_PER_PEER

    def live(self, mid: int, now: float) -> ModelExchange | None:
        for ex in reversed(self.exchanges):
            if ex.mid == mid and ex.live(now):
                return ex
        return None


class DedupMachine(RuleBasedStateMachine):
    """The cache against a plain model: an LRU dict of peers (a peer moves to the newest end
    at most once per PROMOTE_INTERVAL), each with the last N requests."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = DeduplicationCache(
            max_peers=MAX_PEERS,
            messages_per_peer=MESSAGES_PER_PEER,
            exchange_lifetime=CON_LIFETIME,
            non_lifetime=NON_LIFETIME,
            peer_inactivity=INACTIVITY,
        )
        self.now = T0
        self.peers: OrderedDict[tuple, ModelPeer] = OrderedDict()  # least recent first
        self.counters = dict.fromkeys(
            (
                "peers-added",
                "peers-evicted",
                "peers-expired",
                "peers-moved",
                "exchanges",
                "exchanges-overwritten",
                "duplicates",
            ),
            0,
        )

    def _touch(self, address) -> ModelPeer:
        key = _canonical(address)
        peer = self.peers.get(key)
        if peer is None:
            if len(self.peers) >= MAX_PEERS:
                self.peers.popitem(last=False)
                self.counters["peers-evicted"] += 1
            peer = self.peers[key] = ModelPeer(self.now, self.now)
            self.counters["peers-added"] += 1
        elif key != next(reversed(self.peers)) and self.now - peer.promoted >= PROMOTE_INTERVAL:
            self.peers.move_to_end(key)  # at most once per PROMOTE_INTERVAL
            peer.promoted = self.now
        peer.last_seen = self.now
        return peer

    # Discrete steps around the lifetimes (145/247 s) and the inactivity (180 s); floats made
    # shrinking a failure take minutes.
    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 30.0, 100.0, 146.0, 181.0, 248.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(
        address=st.sampled_from(ADDRESSES),
        mid=st.integers(0, 5),
        confirmable=st.booleans(),
        response=st.sampled_from([None, b"", b"r1", b"response-2" * 30]),
    )
    def request(self, address, mid: int, confirmable: bool, response: bytes | None) -> None:
        """What the engine does: look up, and remember the request if it is new."""
        got = self.cache.duplicate_of(address, mid, self.now)
        peer = self._touch(address)
        ex = peer.live(mid, self.now)
        if ex is not None:
            self.counters["duplicates"] += 1
            assert got == ex.response, (address, mid, self.now)
            return
        assert got is None, (address, mid, self.now)
        self.cache.record(address, mid, confirmable, self.now, response)
        # The oldest of N remembered requests makes room; count it if it was still live.
        if len(peer.exchanges) == MESSAGES_PER_PEER and peer.exchanges.popleft().live(self.now):
            self.counters["exchanges-overwritten"] += 1
        peer.exchanges.append(ModelExchange(mid, self.now, confirmable, response or b""))
        self.counters["exchanges"] += 1

    @rule(
        address=st.sampled_from(ADDRESSES),
        mid=st.integers(0, 5),
        response=st.sampled_from([b"", b"sep", b"x" * 700]),
    )
    def update(self, address, mid: int, response: bytes) -> None:
        got = self.cache.update_response(address, mid, response, self.now)
        peer = self.peers.get(_canonical(address))
        ex = None if peer is None else peer.live(mid, self.now)
        expected = ex is not None and bool(response)
        assert got is expected
        if expected:
            ex.response = response

    @rule(old=st.sampled_from(ADDRESSES), new=st.sampled_from(ADDRESSES))
    def move(self, old, new) -> None:
        """A connection moved: its peer takes the new key in place (its LRU position and
        activity stay); whatever had the new key goes."""
        old_key, new_key = _canonical(old), _canonical(new)
        expected = old_key in self.peers and old_key != new_key
        assert self.cache.move(old, new) is expected
        if expected:
            self.peers.pop(new_key, None)
            self.peers = OrderedDict(
                (new_key if key == old_key else key, peer) for key, peer in self.peers.items()
            )
            self.counters["peers-moved"] += 1

    @precondition(lambda self: self.peers)
    @rule()
    def sweep(self) -> None:
        expired = [k for k, p in self.peers.items() if self.now - p.last_seen > INACTIVITY]
        for key in expired:
            del self.peers[key]
        self.counters["peers-expired"] += len(expired)
        assert self.cache.sweep(self.now) == len(expired)

    @invariant()
    def stats_agree(self) -> None:
        stats = self.cache.stats()
        assert stats["peers"] == len(self.peers) <= MAX_PEERS
        for name, value in self.counters.items():
            assert stats[name] == value, name


DedupMachine.TestCase.settings = settings(
    max_examples=max(200, settings().max_examples),  # more under the "fuzz" profile
    stateful_step_count=40,
    deadline=None,
)
test_dedup_model = DedupMachine.TestCase
