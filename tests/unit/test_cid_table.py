"""Tests for the connections-by-CID table, ``extplugtest.dtls._cid_table``: its dict-like
Python API, the references it holds, growth and shrinking, a model test against a dict, and
a server without CIDs. Its C lookup (``find``) is the data path's: test_dtls_datapath.py and
test_dtls_connector.py exercise it through the engine."""

from __future__ import annotations

import gc
import socket
import sys
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.resource import Resource
from extplugtest.dtls._cid_table import CidTable
from extplugtest.dtls.connector import DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_server import DtlsConfig

MIN_CAPACITY = 64
MAX_KEY_LENGTH = 16


class Value:
    """A value that can be watched with a weak reference."""


def key(number: int, length: int = 6) -> bytes:
    return number.to_bytes(length, "big")


def test_set_get_replace_delete() -> None:
    table: CidTable[str] = CidTable()
    assert len(table) == 0 and not table
    table[b"cid-1"] = "one"
    table[b"cid-2"] = "two"
    assert table[b"cid-1"] == "one" and table.get(b"cid-2") == "two"
    assert len(table) == 2 and table
    table[b"cid-1"] = "uno"  # replaces: no second entry
    assert table[b"cid-1"] == "uno" and len(table) == 2
    del table[b"cid-1"]
    assert b"cid-1" not in table and b"cid-2" in table and len(table) == 1
    with pytest.raises(KeyError):
        del table[b"cid-1"]
    with pytest.raises(KeyError):
        table[b"cid-1"]


def test_get_and_pop_defaults() -> None:
    table: CidTable[str] = CidTable()
    table[b"k"] = "v"
    assert table.get(b"missing") is None
    assert table.get(b"missing", "default") == "default"
    assert table.pop(b"missing", None) is None
    assert table.pop(b"missing", "default") == "default"
    with pytest.raises(KeyError):
        table.pop(b"missing")
    assert table.pop(b"k") == "v"
    assert len(table) == 0
    with pytest.raises(TypeError):
        table.pop(b"k", 1, 2)  # type: ignore[call-overload]


def test_shortest_and_longest_keys() -> None:
    table: CidTable[int] = CidTable()
    table[b"\x00"] = 1
    table[bytes(MAX_KEY_LENGTH)] = 16
    table[bytes(8)] = 8
    table[bytes(9)] = 9  # same bytes as the others, zero padded alike: only the length differs
    assert (table[b"\x00"], table[bytes(16)], table[bytes(8)], table[bytes(9)]) == (1, 16, 8, 9)
    assert bytes(2) not in table and bytes(15) not in table


@pytest.mark.parametrize(
    "bad",
    [b"", bytes(MAX_KEY_LENGTH + 1), bytes(255), bytearray(b"cid"), memoryview(b"cid"), "cid", 6],
)
def test_bad_keys_are_refused_on_set_and_miss_on_lookup(bad: object) -> None:
    table: CidTable[str] = CidTable()
    table[b"cid"] = "here"
    with pytest.raises(ValueError, match=r"bytes of length 1\.\.16"):
        table[bad] = "value"  # type: ignore[index]
    assert bad not in table
    assert table.get(bad) is None  # type: ignore[call-overload]
    assert table.pop(bad, "default") == "default"  # type: ignore[call-overload]
    with pytest.raises(KeyError):
        table[bad]  # type: ignore[index]
    with pytest.raises(KeyError):
        del table[bad]  # type: ignore[arg-type]
    assert len(table) == 1


def test_iteration_and_listings() -> None:
    table: CidTable[int] = CidTable()
    for number in range(10):
        table[key(number)] = number
    assert sorted(table) == sorted(table.keys()) == [key(n) for n in range(10)]
    assert sorted(table.values()) == list(range(10))
    assert sorted(table.items()) == [(key(n), n) for n in range(10)]
    for cid in table:  # over a list of the keys: the table may change meanwhile
        del table[cid]
    assert len(table) == 0 and list(table) == []


def test_growth_keeps_every_entry_and_shrinking_too() -> None:
    table: CidTable[int] = CidTable()
    assert table.capacity == MIN_CAPACITY
    count = 5000  # 64 -> 16384 slots: eight doublings
    for number in range(count):
        table[key(number)] = number
        assert len(table) * 2 <= table.capacity
    assert table.capacity == 16384
    assert all(table[key(number)] == number for number in range(count))
    for number in range(count - 10):
        del table[key(number)]
    assert table.capacity < 16384  # it shrank, keeping the rest
    assert table.capacity >= MIN_CAPACITY
    assert sorted(table.values()) == list(range(count - 10, count))
    table.clear()
    assert len(table) == 0 and table.capacity == MIN_CAPACITY and key(count - 1) not in table


@given(order=st.permutations(range(MIN_CAPACITY // 2)))
def test_removals_in_any_order_from_a_half_full_table(order: list[int]) -> None:
    """32 entries in 64 slots make runs of occupied slots: every removal shifts some back."""
    table: CidTable[int] = CidTable()
    keys = [key(number, 1 + number % MAX_KEY_LENGTH) for number in range(len(order))]
    for number, cid in enumerate(keys):
        table[cid] = number
    assert table.capacity == MIN_CAPACITY
    for removed, number in enumerate(order):
        assert table.pop(keys[number]) == number
        assert len(table) == len(order) - removed - 1
        assert all(table.get(keys[n]) == n for n in order[removed + 1 :])


def test_references_drop_after_delete_pop_replace_clear_and_dealloc() -> None:
    table: CidTable[Value] = CidTable()
    value = Value()
    before = sys.getrefcount(value)
    table[b"a"] = value
    assert sys.getrefcount(value) == before + 1
    table[b"a"] = value  # replacing with itself keeps one reference
    assert sys.getrefcount(value) == before + 1
    del table[b"a"]
    assert sys.getrefcount(value) == before
    table[b"b"] = value
    assert table.pop(b"b") is value
    assert sys.getrefcount(value) == before

    watched = []
    for cid in (b"replaced", b"cleared", b"deallocated"):
        table[cid] = Value()
        watched.append(weakref.ref(table[cid]))
    table[b"replaced"] = Value()
    assert watched[0]() is None
    table.clear()
    assert watched[1]() is None
    table[b"deallocated"] = dead = Value()
    watched[2] = weakref.ref(dead)
    del dead, table
    gc.collect()
    assert watched[2]() is None


def test_a_finalizer_that_changes_the_table() -> None:
    """A value's finalizer runs when the table lets go of it, and may use the table."""
    table: CidTable[object] = CidTable()

    class Reinserting:
        def __del__(self) -> None:
            table[b"from-finalizer"] = "late"

    table[b"a"] = Reinserting()
    table[b"a"] = "replacement"
    assert table[b"from-finalizer"] == "late"
    table[b"b"] = Reinserting()
    del table[b"b"]
    table[b"c"] = Reinserting()
    table.clear()
    assert table[b"from-finalizer"] == "late" and len(table) == 1


def test_a_server_without_cids_puts_nothing_in_its_table(serve: Callable[[Any], Any]) -> None:
    """DTLS.CONNECTION_ID_LENGTH 0: the connections have no CID (b"" is not a key), and the
    second one's handshake works while the first one lives."""
    transport = DtlsServerTransport(
        CoapEndpoint(Resource("")), ("127.0.0.1", 0), DtlsConfig(PskStore(), cid_length=0)
    )
    server = serve(transport)
    sockets = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sockets.append(sock)
        sock.settimeout(2)
        sock.connect(server.address)
        handshake = ClientHandshake(b"Client_identity", b"secretPSK", cid=b"")
        sock.send(handshake.start())
        for _ in range(10):  # bounded: HVR, flight 4, flight 6
            for datagram in handshake.on_datagram(sock.recv(4096)):
                sock.send(datagram)
            if handshake.done:
                break
        assert handshake.session is not None and handshake.session.write_cid == b""
    assert server.call(len, transport._by_cid) == 0
    for sock in sockets:
        sock.close()


def test_repr() -> None:
    table: CidTable[int] = CidTable()
    table[b"x"] = 1
    assert repr(table) == "<CidTable: 1 entries in 64 slots>"


# -- the model: a dict -------------------------------------------------------------------------
# Each run works on a pool of keys drawn up front (fixed ones sharing prefixes and zero padding,
# short ones from a small alphabet, random ones), enough to fill the table past its first
# doubling, so that runs of occupied slots form and removals shift entries back.
FIXED_KEYS = [b"\x00" * n for n in (1, 2, 7, 8, 9, 16)] + [
    b"node" + bytes([n]) + b"cid" for n in range(8)
]
KEYS = st.one_of(
    st.sampled_from(FIXED_KEYS),
    st.lists(st.sampled_from([0, 1, 255]), min_size=1, max_size=MAX_KEY_LENGTH).map(bytes),
    st.binary(min_size=1, max_size=MAX_KEY_LENGTH),
)


class AgainstDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table: CidTable[int] = CidTable()
        self.model: dict[bytes, int] = {}
        self.pool: list[bytes] = []
        self.values = iter(range(10**9))

    @initialize(pool=st.lists(KEYS, min_size=MIN_CAPACITY, max_size=3 * MIN_CAPACITY, unique=True))
    def draw_pool(self, pool: list[bytes]) -> None:
        self.pool = pool

    def _set(self, cid: bytes) -> None:
        value = next(self.values)
        self.table[cid] = value
        self.model[cid] = value

    def _key(self, data: st.DataObject) -> bytes:
        """Mostly one in the table (its removal shifts others back), else any of the pool."""
        if self.model and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(sorted(self.model)))
        return data.draw(st.sampled_from(self.pool))

    @rule(data=st.data())
    def set(self, data: st.DataObject) -> None:
        self._set(data.draw(st.sampled_from(self.pool)))

    @rule(data=st.data(), count=st.integers(10, 60))
    def set_many(self, data: st.DataObject, count: int) -> None:
        for cid in data.draw(st.lists(st.sampled_from(self.pool), min_size=count, max_size=count)):
            self._set(cid)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        cid = self._key(data)
        if cid in self.model:
            del self.table[cid]
            del self.model[cid]
        else:
            with pytest.raises(KeyError):
                del self.table[cid]

    @rule(data=st.data(), with_default=st.booleans())
    def pop(self, data: st.DataObject, with_default: bool) -> None:
        cid = self._key(data)
        if with_default:
            assert self.table.pop(cid, -1) == self.model.pop(cid, -1)
        elif cid in self.model:
            assert self.table.pop(cid) == self.model.pop(cid)
        else:
            with pytest.raises(KeyError):
                self.table.pop(cid)

    @rule(data=st.data())
    def remove_most(self, data: st.DataObject) -> None:
        """Down to an eighth full or less, in any order: the table may shrink."""
        doomed = data.draw(st.permutations(sorted(self.model)))[: len(self.model) * 7 // 8]
        for cid in doomed:
            assert self.table.pop(cid) == self.model.pop(cid)

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.pool))
        assert self.table.get(cid) == self.model.get(cid)
        assert (cid in self.table) == (cid in self.model)

    @invariant()
    def agrees(self) -> None:
        table, model = self.table, self.model
        assert len(table) == len(model)
        assert all(table.get(cid) == model.get(cid) for cid in self.pool)
        assert sorted(table) == sorted(model)
        assert sorted(table.items()) == sorted(model.items())
        capacity = table.capacity
        assert capacity >= MIN_CAPACITY and capacity & (capacity - 1) == 0
        assert len(table) * 2 <= capacity


AgainstDict.TestCase.settings = settings(
    max_examples=max(200, settings().max_examples), stateful_step_count=40, deadline=None
)
test_against_dict = AgainstDict.TestCase
