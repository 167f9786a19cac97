"""The cluster router's outbox (extplugtest.cluster._router): forwarded records leave in
cluster datagrams to the node their CID names, several in one batch datagram while they fit
(our extension), in the order they came, or one per datagram without batches (Californium)."""

from __future__ import annotations

import itertools
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extplugtest.cluster._header import (
    CLUSTER_MIN_RECORD_LENGTH,
    CLUSTER_RECORD_INCOMING,
    decode,
    split_batch,
)
from extplugtest.cluster._router import ClusterEngine
from extplugtest.dtls._cid_table import CidTable

BATCH = 0x40  # type of a batch datagram
BATCH_LIMIT = 1400
CID_LENGTH = 6


def cid_record(node: int, seq: int, size: int) -> bytes:
    """A tls12_cid record (epoch 1) whose CID names *node*, with *size* bytes of payload."""
    cid = bytes([node, 1, 2, 3, 4, 5])
    payload = seq.to_bytes(4, "big") + bytes(size - 4)
    return (
        b"\x19\xfe\xfd\x00\x01" + seq.to_bytes(6, "big") + cid + struct.pack(">H", size) + payload
    )


class NoConnector:
    def datagram(self, data, address):
        raise AssertionError("a record for another node reached the connector")


@pytest.fixture
def sockets():
    opened = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for sock in opened:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2.0)
    yield opened
    for sock in opened:
        sock.close()


def node_1(dtls, management, others: dict, batch: bool = True) -> ClusterEngine:
    """Node 1's engine on the DTLS socket, the management sockets of *others* (node id ->
    socket) known."""
    dtls.setblocking(False)
    engine = ClusterEngine(dtls.fileno(), socket.AF_INET, None)
    engine.serve(CidTable(), {}, CID_LENGTH, NoConnector())
    engine.cluster(1, management.fileno(), lambda data, address: None, batch=batch)
    for node, sock in others.items():
        engine.set_node(node, sock.getsockname())
    return engine


def pump(engine: ClusterEngine, client, dtls, records: list[bytes]) -> dict:
    """Send *records* from the client to node 1 and let it handle them: its cluster counters."""
    for record in records:
        client.sendto(record, dtls.getsockname())
    for _ in range(100):  # bounded: one receive batch per call
        engine.on_readable()
        counters = engine.cluster_counters()
        if counters["forwarded"] + counters["drop forward"] == len(records):
            break
    return counters


def drain(sock, limit: int) -> list[bytes]:
    """The datagrams waiting on *sock* (at most *limit*)."""
    sock.setblocking(False)
    datagrams = []
    for _ in range(limit):
        try:
            datagrams.append(sock.recv(65536))
        except BlockingIOError:
            break
    return datagrams


def forward(sockets, records: list[bytes], batch: bool = True) -> tuple[list[bytes], dict]:
    """Send *records* from a client to node 1: the datagrams node 2's management socket
    gets, and node 1's cluster counters."""
    dtls, management, node2, client = sockets
    counters = pump(node_1(dtls, management, {2: node2}, batch), client, dtls, records)
    datagrams = [node2.recv(65536) for _ in range(counters["cluster datagrams sent"])]
    return datagrams, counters


def packets_of(datagram: bytes) -> list[bytes]:
    return split_batch(datagram) if datagram[0] == BATCH else [datagram]


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "no-batch"])
def test_forwarded_records_arrive_in_order(sockets, batch):
    sizes = [60, 100, 1300, 80, 2000, 40, 500, 700, 90] * 6
    records = [cid_record(2, seq, size) for seq, size in enumerate(sizes)]
    datagrams, counters = forward(sockets, records, batch)
    packets = [packet for datagram in datagrams for packet in packets_of(datagram)]
    decoded = [decode(packet) for packet in packets]
    assert [p.type for p in decoded] == [CLUSTER_RECORD_INCOMING] * len(records)
    assert [p.record for p in decoded] == records
    assert {p.address for p in decoded} == {sockets[3].getsockname()}
    assert counters["forwarded"] == len(records)
    assert counters["cluster datagrams sent"] == len(datagrams)
    batches = [d for d in datagrams if d[0] == BATCH]
    assert counters["batches sent"] == len(batches)
    if not batch:
        assert not batches and len(datagrams) == len(records)
        return
    # every batch holds several packets and fits the limit; a datagram closes only when the
    # next packet (its record plus the largest header) does not fit behind it
    assert all(len(split_batch(d)) > 1 and len(d) <= BATCH_LIMIT for d in batches)
    for before, after in itertools.pairwise(datagrams):
        size = len(before) if before[0] == BATCH else 3 + len(before)
        assert size + 2 + len(decode(packets_of(after)[0]).record) + 28 > BATCH_LIMIT
    assert len(datagrams) < len(records)


def test_packets_to_two_nodes_are_batched_per_node(sockets):
    node3 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    node3.bind(("127.0.0.1", 0))
    node3.settimeout(2.0)
    dtls, management, node2, client = sockets
    engine = node_1(dtls, management, {2: node2, 3: node3})
    records = [cid_record(2 + seq % 2, seq, 100) for seq in range(40)]
    counters = pump(engine, client, dtls, records)
    received = {sock: drain(sock, counters["cluster datagrams sent"]) for sock in (node2, node3)}
    node3.close()
    assert sum(map(len, received.values())) == counters["cluster datagrams sent"] <= 6
    for sock, node in ((node2, 2), (node3, 3)):
        got = [decode(p).record for d in received[sock] for p in packets_of(d)]
        assert got == [r for r in records if r[11] == node]


def test_records_for_an_unknown_node_are_dropped_and_counted(sockets):
    records = [cid_record(3, seq, 50) for seq in range(5)] + [cid_record(2, 9, 50)]
    datagrams, counters = forward(sockets, records)
    assert counters["drop forward"] == 5 and counters["forwarded"] == 1
    assert [decode(d).record for d in datagrams] == records[5:]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([2, 3, 4]), st.integers(min_value=4, max_value=1900)),
        min_size=1,
        max_size=40,  # within the default receive buffer of the DTLS socket
    ),
    st.booleans(),
)
def test_outbox_keeps_order_and_limits_per_node(records_spec, batch):
    """Any mix of records for nodes 2 and 3 (and 4, unknown): each known node gets exactly
    its records, in order; a batch holds several packets within the limit; records for 4
    and records too short to forward are dropped and counted."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(5)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        dtls, management, node2, client, node3 = sockets
        engine = node_1(dtls, management, {2: node2, 3: node3}, batch)
        records = [cid_record(node, seq, size) for seq, (node, size) in enumerate(records_spec)]
        counters = pump(engine, client, dtls, records)
        # dropped: records for the unknown node, and those shorter than a cluster packet may
        # carry (13 + 12 bytes, §5.2)
        dropped = [r for r in records if r[11] == 4 or len(r) < CLUSTER_MIN_RECORD_LENGTH]
        records = [r for r in records if r not in dropped]
        assert counters["drop forward"] == len(dropped)
        seen = 0
        for sock, node in ((node2, 2), (node3, 3)):
            datagrams = drain(sock, len(records))
            seen += len(datagrams)
            got = [decode(p).record for d in datagrams for p in packets_of(d)]
            assert got == [r for r in records if r[11] == node]
            for datagram in datagrams:
                if datagram[0] == BATCH:
                    assert batch and len(split_batch(datagram)) > 1
                    assert len(datagram) <= BATCH_LIMIT
        assert seen == counters["cluster datagrams sent"]
    finally:
        for sock in sockets:
            sock.close()
