"""The negotiated record size limit on the data path (RFC 8449 record_size_limit, RFC 6066
max_fragment_length; inventory §6.3): our PSK client offers a limit, and every record the
connector sends it keeps to it - a large /benchmark answer goes block-wise in blocks that fit
(the C fast path leaves it to Python), /mycontext's message-size-limit shows the limit - and a
record above our own limit is answered with a fatal record_overflow alert."""

from __future__ import annotations

import socket

import pytest
from test_dtls_client import connect

from extplugtest.coap._codec import Message, parse
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap.blockwise import decode_block, encode_block
from extplugtest.coap.codes import Option
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.dtls._record import APPLICATION_DATA
from extplugtest.dtls.connector import DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_header import AlertDescription
from extplugtest.dtls.handshake_server import DtlsConfig
from extplugtest.dtls.messages import (
    MAX_PLAINTEXT,
    ContentType,
    MaxFragmentLengthExtension,
    RecordSizeLimitExtension,
)
from extplugtest.resources.benchmark import Benchmark
from extplugtest.resources.context import MyContext
from extplugtest.resources.root import RootResource

CON, GET, POST = 0, 1, 2
URI_PATH, URI_QUERY = 11, 15


@pytest.fixture
def server(serve):
    root = RootResource()
    benchmark = Benchmark(True)
    root.add(benchmark, MyContext())
    transport = DtlsServerTransport(
        CoapEndpoint(root), ("127.0.0.1", 0), DtlsConfig(PskStore(), record_size_limit=1024),
        dedup=DeduplicationCache(), fast=benchmark.fast_path,
    )  # fmt: skip
    thread = serve(transport)
    thread.benchmark = benchmark
    return thread


class Peer:
    """Our client's connected socket and session; every record it receives is checked
    against *limit* (plaintext bytes)."""

    def __init__(self, server, limit: int | None, **options) -> None:
        self.sock, self.session = connect(server.address, **options)
        self.limit = limit
        self.mid = 0x200
        self.largest = 0

    def send(self, message: bytes) -> None:
        seq = self.session.next_write_seq
        self.session.next_write_seq += 1
        self.sock.send(self.session.cipher.seal(1, seq, APPLICATION_DATA, message))

    def receive(self) -> tuple[int, bytes]:
        content_type, plaintext = self.session.cipher.open(self.sock.recv(4096))
        self.largest = max(self.largest, len(plaintext))
        if self.limit is not None:
            assert len(plaintext) <= self.limit, f"a record of {len(plaintext)} bytes"
        return content_type, plaintext

    def request(self, path: str, *queries: str, code: int = GET, block2: int | None = None):
        self.mid += 1
        message = Message(CON, code, self.mid, self.mid.to_bytes(2, "big"))
        message.add_option(URI_PATH, path.encode())
        for query in queries:
            message.add_option(URI_QUERY, query.encode())
        if block2 is not None:
            message.add_option(Option.BLOCK2, block2)
        self.send(message.to_bytes())
        content_type, plaintext = self.receive()
        assert content_type == APPLICATION_DATA
        response = parse(plaintext)
        assert response.mid == self.mid
        return response

    def download(self, path: str, *queries: str, code: int = GET) -> tuple[bytes, set[int]]:
        """The whole body of a (maybe block-wise) response, and the SZX of its blocks."""
        response = self.request(path, *queries, code=code)
        body, sizes = bytes(response.payload), set()
        for _ in range(100):  # bounded: 8192 bytes in 16-byte blocks would be 512 ...
            block2 = response.uint_option(Option.BLOCK2)
            if block2 is None:
                break
            num, more, szx = decode_block(block2)
            sizes.add(szx)
            if not more:
                break
            response = self.request(path, *queries, code=code,
                                    block2=encode_block(num + 1, False, szx))  # fmt: skip
            body += response.payload
        return body, sizes

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    ("extension", "limit"),
    [(RecordSizeLimitExtension(256), 256), (MaxFragmentLengthExtension(1), 512),
     (RecordSizeLimitExtension(700), 700)],
    ids=["rsl-256", "mfl-512", "rsl-700"],
)  # fmt: skip
@pytest.mark.parametrize("cid", [b"clnt", None], ids=["cid", "no-cid"])
def test_large_answers_go_block_wise_within_the_limit(server, offer, extension, limit, cid):
    offer(extension)
    peer = Peer(server, limit, cid=cid)
    answered = server.benchmark.fast_path.answered_count
    # A small answer still comes from the fast path, whole.
    response = peer.request("benchmark", "rlen=100")
    assert len(response.payload) == 100 and response.uint_option(Option.BLOCK2) is None
    assert server.benchmark.fast_path.answered_count == answered + 1
    # What does not fit goes to Python and comes in blocks that fit (with their header).
    for code in (GET, POST):
        body, sizes = peer.download("benchmark", "rlen=1000", code=code)
        assert len(body) == 1000 and body.endswith(b"*" * 900)
        assert sizes and max(sizes) <= 5  # at most 512-byte blocks, whatever the endpoint's
    assert server.benchmark.fast_path.answered_count == answered + 1
    # /mycontext tells the limit (less the CID record's inner type byte, to be safe); over
    # 256 bytes it comes block-wise itself.
    context = peer.download("mycontext")[0].decode()
    expected = limit - (1 if cid else 0)  # (our records carry the client's CID)
    assert f"message-size-limit: {expected}" in context.splitlines()
    assert server.call(server.transport.peer_message_limit, peer.sock.getsockname()) == expected
    assert server.call(server.transport.engine.datapath_counters)["oversized"] == 0
    peer.close()


def test_early_negotiation_above_the_limit_gets_smaller_blocks(server, offer):
    """RFC 7959 §2.2/§2.4: a client asking for 1024-byte blocks gets blocks that fit, NUM
    counting the smaller blocks; asking again in the large size still finds the right offset."""
    offer(RecordSizeLimitExtension(300))
    peer = Peer(server, 300)
    response = peer.request("benchmark", "rlen=2000", block2=encode_block(0, False, 6))
    assert decode_block(response.uint_option(Option.BLOCK2)) == (0, True, 4)  # 256 bytes
    first = response.payload
    response = peer.request("benchmark", "rlen=2000", block2=encode_block(1, False, 6))
    assert decode_block(response.uint_option(Option.BLOCK2)) == (4, True, 4)  # offset 1024
    assert len(first) == len(response.payload) == 256
    peer.close()


def test_without_a_limit_nothing_changes(server):
    peer = Peer(server, None)
    answered = server.benchmark.fast_path.answered_count
    response = peer.request("benchmark", "rlen=1000")
    assert len(response.payload) == 1000 and response.uint_option(Option.BLOCK2) is None
    assert server.benchmark.fast_path.answered_count == answered + 1
    assert server.call(server.transport.peer_message_limit, peer.sock.getsockname()) is None
    peer.close()


def test_the_data_path_refuses_to_send_what_does_not_fit(server, offer):
    """The last guard: a message above the limit is not sent (counted), whoever made it."""
    offer(RecordSizeLimitExtension(256))
    peer = Peer(server, 256, cid=None)
    engine = server.transport.engine
    address = peer.sock.getsockname()
    assert server.call(engine.send, b"\x50\x45\x00\x01" + b"x" * 300, address) is False
    assert server.call(engine.datapath_counters)["oversized"] == 1
    assert server.call(engine.send, b"\x50\x45\x00\x02" + b"x" * 200, address) is True
    assert peer.receive()[1].endswith(b"x" * 200)
    peer.close()


@pytest.mark.parametrize(
    ("extension", "accepted", "refused"),
    [(MaxFragmentLengthExtension(1), 512, 513), (RecordSizeLimitExtension(256), 1024, 1025)],
    ids=["mfl: the negotiated length", "rsl: our own limit"],
)  # fmt: skip
def test_a_record_above_our_limit_is_a_record_overflow(server, offer, extension, accepted, refused):
    """RFC 6066 §4 / RFC 8449 §4: a fatal record_overflow alert; the connection is gone."""
    offer(extension)
    peer = Peer(server, None, cid=None)
    message = Message(CON, POST, 0x100, b"\x01")
    message.add_option(URI_PATH, b"nothing")
    header = len(message.to_bytes()) + 1
    message.payload = b"a" * (accepted - header)
    peer.send(message.to_bytes())
    assert parse(peer.receive()[1]).code == 0x84  # 4.04: read and answered
    message.mid, message.payload = 0x101, b"a" * (refused - header)
    peer.send(message.to_bytes())
    content_type, alert = peer.receive()
    assert (content_type, alert) == (
        ContentType.ALERT,
        bytes([2, AlertDescription.RECORD_OVERFLOW]),
    )
    counters = server.call(server.transport.dtls_counters)
    assert counters["associations"] == 0
    assert counters["dropped received overflows"] == 1
    message.mid, message.payload = 0x102, b""
    peer.send(message.to_bytes())  # no connection any more: dropped
    peer.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        peer.receive()
    peer.close()


def test_the_limits_survive_a_graceful_restart(serve, offer):
    """dtls/persistence.py keeps both limits (its record sizes item): the restored connection
    of the new connector answers within the client's limit without a new handshake."""
    from test_dtls_restore import Client, dtls_transport, saved_and_restored

    offer(RecordSizeLimitExtension(256))
    old, new = serve(dtls_transport()), serve(dtls_transport())
    client = Client(old.address, None)
    assert saved_and_restored(old, new)["restored"] == 1
    connection = new.call(new.transport.connection, client.address)
    assert (connection.send_limit, connection.receive_limit) == (256, MAX_PLAINTEXT)
    assert new.call(new.transport.peer_message_limit, client.address) == 256
    client.sock.sendto(client.record(b"e" * 600), new.address)  # the echo: 2.04 with it all
    answer = client.receive()
    assert answer is not None
    _, response = answer
    assert len(response.to_bytes()) <= 256 and response.uint_option(Option.BLOCK2) is not None
    client.close()


def test_a_restored_max_fragment_length_still_limits_both_ways(serve, offer):
    from test_dtls_restore import Client, dtls_transport, saved_and_restored

    offer(MaxFragmentLengthExtension(1))
    old, new = serve(dtls_transport()), serve(dtls_transport())
    client = Client(old.address, None)
    assert saved_and_restored(old, new)["restored"] == 1
    connection = new.call(new.transport.connection, client.address)
    assert (connection.send_limit, connection.receive_limit) == (512, 512)
    client.sock.sendto(client.record(b"e" * 600), new.address)
    raw = client.sock.recv(4096)
    assert client.session.cipher.open(raw) == (ContentType.ALERT, b"\x02\x16")  # overflow
    client.close()
