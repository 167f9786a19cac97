"""Micro benchmarks of the hot path (pytest-benchmark).

Run: ``.venv/bin/python -m pytest bench/test_micro.py --benchmark-only`` (``make bench-micro``);
compare runs with ``--benchmark-autosave`` and ``--benchmark-compare``.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import socket

import pytest

from cluster_engines import (
    OWNER,
    ROUTER,
    NoSlowPath,
    benchmark_fast_path,
    benchmark_request,
    client_sealers,
    cluster_engine,
    owner_cids,
    request_record,
    udp_socket,
)
from extplugtest.cluster import _header as cluster_header
from extplugtest.coap._codec import Message, parse
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap._udp import UdpEngine
from test_micro_dtls import per_record

BATCH = 64


REQUEST = benchmark_request(0x1234)
RESPONSE = Message(
    type=2,
    code=0x44,
    mid=0x1234,
    token=b"\x01\x02\x03\x04",
    options=[(12, b"")],
    payload=b"hello benchmark".ljust(40, b"*"),
)


def test_parse_request(benchmark):
    message = benchmark(parse, REQUEST)
    assert message.uri_path == "benchmark"


def test_serialize_response(benchmark):
    data = benchmark(RESPONSE.to_bytes)
    assert len(data) > 40


def test_dedup_duplicate_lookup(benchmark):
    cache = DeduplicationCache(max_peers=4096)
    peers = [("127.0.0.1", 10000 + i) for i in range(2000)]
    for i, peer in enumerate(peers):
        cache.record(peer, i, True, 0.0, b"cached response")

    def lookups() -> int:
        found = 0
        for i, peer in enumerate(peers[:256]):
            found += cache.duplicate_of(peer, i, 1.0) is not None
        return found

    assert benchmark(lookups) == 256


@pytest.fixture
def engine_sockets():
    server, client = udp_socket(), udp_socket()
    yield server, client
    server.close()
    client.close()


def test_engine_batch_of_64_benchmark_requests(benchmark, engine_sockets):
    """One on_readable() call: recvmmsg, 64 x (parse, dedup, /benchmark in C), sendmmsg."""
    server, client = engine_sockets
    engine = UdpEngine(server.fileno(), socket.AF_INET, NoSlowPath(),
                       DeduplicationCache(max_peers=1024), benchmark_fast_path())  # fmt: skip
    address = server.getsockname()
    mids = iter(range(10**9))
    sent = 0

    def load_batch():
        nonlocal sent
        while True:  # drain the previous round's responses
            try:
                client.recv(2048)
            except BlockingIOError:
                break
        for _ in range(BATCH):
            client.sendto(benchmark_request(next(mids) & 0xFFFF), address)
        sent += BATCH

    benchmark.pedantic(engine.on_readable, setup=load_batch, rounds=300, warmup_rounds=10)
    assert engine.counters()["fast-path"] == sent > 0


#: a tls12_cid record (epoch 1) whose 6-byte CID names node 2, as a node 1 receives it
FOREIGN_CID_RECORD = bytes.fromhex("19fefd000100000000000702010203040500") + bytes([56]) + bytes(56)


@pytest.mark.parametrize("mac", [False, True], ids=["no-mac", "mac"])
def test_cluster_forward_path(benchmark, mac):
    """Route, encode and decode (+ sign and verify with the cluster MAC) of one foreign record,
    in C; the issue's bound is 1 us per datagram. The figure is in extra_info (ns)."""
    signer = cluster_header.ClusterMac(bytes(range(16))) if mac else None
    per_datagram = benchmark(
        cluster_header.measure_forward_path, FOREIGN_CID_RECORD, 6, 1, signer, 10_000
    )
    benchmark.extra_info["ns_per_datagram"] = round(per_datagram, 1)
    assert per_datagram > 0


# -- the cluster's forward path end to end, in one process -----------------------------------
@pytest.fixture
def cluster_pair():
    """Node 1 (the router) and node 2 (the owner of BATCH connections, all from the client's
    one address) of a static cluster (bench/cluster_engines.py), batches on, flushed at the
    end of each call (no event loop); ``send_batch(socket name)`` sends one freshly sealed
    record per connection from the client's socket; ``sent[0]`` counts them."""
    sockets = {name: udp_socket() for name in ("dtls1", "mgmt1", "dtls2", "mgmt2", "client")}
    client = sockets["client"]
    engines = {
        node: cluster_engine(node, sockets, [client.getsockname()] * BATCH)
        for node in (ROUTER, OWNER)
    }
    sealers = client_sealers(owner_cids(BATCH))
    seqs = iter(range(1, 10**9))
    sent = [0]

    def send_batch(to: str) -> None:
        """Drain the client's answers of the last round, then one record per connection."""
        while True:
            try:
                client.recv(2048)
            except BlockingIOError:
                break
        seq = next(seqs)
        address = sockets[to].getsockname()
        for i, sealer in enumerate(sealers):
            client.sendto(request_record(sealer, seq, seq * BATCH + i), address)
        sent[0] += BATCH

    yield engines, send_batch, sent
    for sock in sockets.values():
        sock.close()


def test_dtls_batch_direct_to_owner(benchmark, cluster_pair):
    """One on_readable() of the owner: 64 records of its connections, opened, answered,
    sealed and sent (the baseline of the forwarded case below)."""
    engines, send_batch, sent = cluster_pair
    benchmark.pedantic(engines[OWNER].on_readable, setup=lambda: send_batch("dtls2"),
                       rounds=300, warmup_rounds=10)  # fmt: skip
    per_record(benchmark, BATCH)
    assert engines[OWNER].counters()["fast-path"] == sent[0] > 0


def test_dtls_batch_forwarded_and_back(benchmark, cluster_pair):
    """The same 64 records sent to node 1: forwarded to node 2 in batch datagrams, answered
    there, back to node 1 (backward) and sent to the client - the whole forward path,
    including its two extra loopback hops, without two processes sharing a core."""
    engines, send_batch, sent = cluster_pair
    router, owner = engines[ROUTER], engines[OWNER]

    def forward_and_back() -> None:
        router.on_readable()
        owner.on_management_readable()
        router.on_management_readable()

    benchmark.pedantic(forward_and_back, setup=lambda: send_batch("dtls1"), rounds=300,
                       warmup_rounds=10)  # fmt: skip
    per_record(benchmark, BATCH)
    routed, owned = router.cluster_counters(), owner.cluster_counters()
    assert routed["forwarded"] == owned["process forwarded"] == sent[0] > 0
    assert owned["backwarded"] == routed["send backwarded"] == sent[0]
    assert owner.counters()["fast-path"] == sent[0]


# -- many connections in a cold cache: the order of their records ----------------------------
CONNECTIONS = 512
#: written over before every round: 4x this VM's L2, what other processes on the core leave
CACHE_FLUSH = bytearray(8 << 20)
FILLS = (bytes(len(CACHE_FLUSH)), b"\xff" * len(CACHE_FLUSH))


@pytest.fixture
def owner_of_many():
    """Node 2's engine with CONNECTIONS established connections, each client on a socket of its
    own (an address each: a dedup peer each); ``send(order)`` drains the last answers, sends
    one record per connection in *order* and flushes the caches; ``answer_all()`` runs the
    engine until every record sent is answered; ``sent[0]`` counts them."""
    sockets = {name: udp_socket() for name in ("dtls1", "mgmt1", "dtls2", "mgmt2")}
    clients = [udp_socket() for _ in range(CONNECTIONS)]
    engine = cluster_engine(OWNER, sockets, [client.getsockname() for client in clients])
    sealers = client_sealers(owner_cids(CONNECTIONS))
    target = sockets["dtls2"].getsockname()
    seqs = itertools.count(1)
    sent = [0]

    def send(order: list[int]) -> None:
        for client in clients:
            with contextlib.suppress(BlockingIOError):
                client.recv(2048)  # the one answer of the last round
        seq = next(seqs)
        for i in order:
            clients[i].sendto(request_record(sealers[i], seq, seq * CONNECTIONS + i), target)
        sent[0] += CONNECTIONS
        CACHE_FLUSH[:] = FILLS[seq & 1]

    def answer_all() -> None:
        for _ in range(CONNECTIONS):  # bounded: every call answers a batch at least
            engine.on_readable()
            if engine.counters()["fast-path"] >= sent[0]:
                return

    yield engine, send, answer_all, sent
    for sock in [*sockets.values(), *clients]:
        sock.close()


@pytest.mark.parametrize("order", ["setup-order", "shuffled"])
def test_dtls_records_of_many_connections_in_a_cold_cache(benchmark, owner_of_many, order):
    """One record for each of 512 connections, opened, answered, sealed and sent, after the
    caches were flushed: in the order the connections were set up (their state lies in that
    order too), or shuffled, as a NAT's clear or forwarding leaves them. What the second costs
    more is what a record pays for per-connection state that no prefetcher saw coming."""
    engine, send, answer_all, sent = owner_of_many
    records = list(range(CONNECTIONS))
    if order == "shuffled":
        random.Random(7).shuffle(records)
    benchmark.pedantic(answer_all, setup=lambda: send(records), rounds=100, warmup_rounds=5)
    per_record(benchmark, CONNECTIONS)
    assert engine.counters()["fast-path"] == sent[0] > 0
