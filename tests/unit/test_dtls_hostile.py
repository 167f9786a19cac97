"""Hostile input against a LIVE DTLS endpoint: a DtlsServerTransport on a real UDP socket on
127.0.0.1 (its own event loop in a thread), attacked with plain blocking sockets.

Checks go through public behaviour only: what comes back on the wire, ``dtls_counters()`` and
``connection(address)``. After every hostile batch a proper client (our ClientHandshake) must
still complete a handshake and get a 2.05 for a CoAP GET.

"Nothing was answered" is checked without waiting for a timeout: after the hostile datagrams the
same socket sends a *sentinel*, a ClientHello without cookie whose record sequence number is
unique. The server reads its socket in order, so the first datagram that comes back must be the
HelloVerifyRequest for the sentinel (it reuses the ClientHello's record sequence number,
RFC 6347 §4.2.1); an answer to anything sent before would arrive first.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from extplugtest.coap._codec import Message, parse
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.dtls._record import Record, parse_datagram
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.dtls.handshake_header import AlertDescription, HandshakeType, iter_fragments
from extplugtest.dtls.handshake_server import DtlsConfig, HandshakeFailure, plain_record
from extplugtest.dtls.messages import (
    ClientHello,
    ContentType,
    HelloVerifyRequest,
    encode_message,
)
from extplugtest.resources.plugtest.core import DefaultTest
from extplugtest.resources.root import RootResource

PSK_CCM8 = 0xC0A8
APPLICATION_DATA = 23
SENTINEL_SEQ = 0x5E_4715_E1
MAX_DATAGRAM = 4096


class Server:
    """A DtlsServerTransport serving /test on 127.0.0.1, run by an event loop in a thread."""

    def __init__(self, limits: DtlsLimits | None = None) -> None:
        root = RootResource()
        root.add(DefaultTest())
        self.loop = uvloop.new_event_loop()
        self.transport = DtlsServerTransport(
            CoapEndpoint(root), ("127.0.0.1", 0), DtlsConfig(PskStore()), limits=limits
        )
        self.transport.open(self.loop)
        self.address = self.transport.local_address
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=5)

    def counters(self) -> dict[str, int]:
        """/diagnose's DTLS counters."""
        counters = self.call(self.transport.dtls_counters)
        counters["filtered"] = counters["dropped received filtered"]
        assert counters["filtered"] == self.call(self.transport.filtered)
        return counters

    def connection(self, address: tuple) -> Any:
        return self.call(self.transport.connection, address)

    def stop(self) -> None:
        self.call(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def make_dtls_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(limits: DtlsLimits | None = None) -> Server:
        servers.append(Server(limits))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_dtls_server) -> Server:
    return make_dtls_server()


@pytest.fixture
def sockets() -> Iterator[Callable[..., socket.socket]]:
    """Factory of UDP sockets on 127.0.0.1 (or another 127/8 address), closed at the end."""
    made: list[socket.socket] = []

    def new(host: str = "127.0.0.1", timeout: float = 3.0) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(sock)
        sock.bind((host, 0))
        sock.settimeout(timeout)
        return sock

    yield new
    for sock in made:
        sock.close()


# -- building blocks -------------------------------------------------------------------------
def hello_record(
    cookie: bytes = b"", seq: int = 0, hello_random: bytes | None = None, message_seq: int = 0
) -> bytes:
    hello = ClientHello(0xFEFD, hello_random or os.urandom(32), b"", cookie, (PSK_CCM8,))
    return plain_record(ContentType.HANDSHAKE, seq, encode_message(hello, message_seq))


def record(
    content_type: int,
    seq: int,
    payload: bytes,
    *,
    epoch: int = 0,
    version: int = 0xFEFD,
    length: int | None = None,
) -> bytes:
    """A record header with any field values (length: the length field, default: true)."""
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + seq.to_bytes(6, "big")
        + (len(payload) if length is None else length).to_bytes(2, "big")
        + payload
    )


def fragment(msg_type: int, length: int, message_seq: int, offset: int, data: bytes) -> bytes:
    """A handshake fragment with any header values (no range checks)."""
    return (
        bytes([msg_type])
        + length.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + len(data).to_bytes(3, "big")
        + data
    )


def is_hello_verify_request(datagram: bytes, seq: int | None = None) -> bool:
    records = parse_datagram(datagram)
    if len(records) != 1 or records[0].content_type != ContentType.HANDSHAKE:
        return False
    header, _ = next(iter_fragments(records[0].fragment))
    return header.msg_type == HandshakeType.HELLO_VERIFY_REQUEST and (
        seq is None or records[0].seq == seq
    )


def cookie_of(datagram: bytes) -> bytes:
    header, body = next(iter_fragments(parse_datagram(datagram)[0].fragment))
    assert header.msg_type == HandshakeType.HELLO_VERIFY_REQUEST
    return HelloVerifyRequest.decode(body).cookie


def assert_nothing_answered(sock: socket.socket, server: Server) -> None:
    """The first datagram back must be the HelloVerifyRequest for the sentinel."""
    sock.sendto(hello_record(seq=SENTINEL_SEQ), server.address)
    reply = sock.recv(MAX_DATAGRAM)
    assert is_hello_verify_request(reply, SENTINEL_SEQ), f"unexpected answer {reply.hex()}"


def handshake(
    sock: socket.socket, identity: bytes = b"Client_identity", secret: bytes = b"secretPSK"
) -> ClientSession:
    """A complete PSK handshake on a connected socket (raises HandshakeFailure on an alert)."""
    client = ClientHandshake(identity, secret)
    sock.send(client.start())
    for _ in range(10):  # bounded: HVR, flight 4, flight 6 (and a few retransmissions)
        for datagram in client.on_datagram(sock.recv(MAX_DATAGRAM)):
            sock.send(datagram)
        if client.done:
            assert client.session is not None
            return client.session
    raise AssertionError("no handshake within 10 datagrams")


def get_request(mid: int, path: str = "test") -> bytes:
    request = Message(0, 1, mid, mid.to_bytes(2, "big"))
    for segment in path.split("/"):
        request.add_option(11, segment)
    return request.to_bytes()


def seal(session: ClientSession, data: bytes) -> bytes:
    """An application record of the session, with the next sequence number."""
    seq = session.next_write_seq
    session.next_write_seq += 1
    return session.cipher.seal(1, seq, APPLICATION_DATA, data)


def receive_response(sock: socket.socket, session: ClientSession) -> Message:
    content_type, plaintext = session.cipher.open(sock.recv(MAX_DATAGRAM))
    assert content_type == APPLICATION_DATA
    return parse(plaintext)


def assert_test_response(response: Message, mid: int) -> None:
    assert response.code == 0x45 and response.mid == mid, response  # 2.05 Content
    assert response.payload.startswith(b"Type: 0 (CON)\nCode: 1 (GET)\nMID: ")


def assert_serves(server: Server, sockets, mid: int = 0x0777) -> None:
    """A proper client: handshake and a CoAP GET /test answered with 2.05."""
    sock = sockets()
    sock.connect(server.address)
    session = handshake(sock)
    sock.send(seal(session, get_request(mid)))
    assert_test_response(receive_response(sock, session), mid)


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


# -- malformed datagrams from unknown peers -------------------------------------------------
def test_truncated_records_are_dropped(server, sockets):
    whole = hello_record(seq=1)
    cuts = [1, 2, 5, 11, 12, 13, 14, 25, len(whole) // 2, len(whole) - 1]
    sock = sockets()
    before = server.counters()
    for cut in cuts:
        sock.sendto(whole[:cut], server.address)
    assert_nothing_answered(sock, server)
    delta = counters_delta(before, server.counters())
    assert delta["dropped received records"] >= len(cuts)
    assert delta["hello verify requests"] == 1  # the sentinel's
    assert delta["handshakes started"] == 0 and server.counters()["associations"] == 0
    assert_serves(server, sockets)


def garbled_datagrams() -> list[tuple[str, bytes]]:
    hello = encode_message(ClientHello(0xFEFD, bytes(32), b"", b"", (PSK_CCM8,)), 0)
    body = hello[12:]
    h = ContentType.HANDSHAKE
    return [
        ("content type 99", record(99, 1, hello)),
        ("content type 0", record(0, 1, hello)),
        ("TLS 1.2 record version", record(h, 1, hello, version=0x0303)),
        ("record version 0", record(h, 1, hello, version=0)),
        ("epoch 1 handshake from an unknown peer", record(h, 1, hello, epoch=1)),
        ("epoch 0xffff", record(h, 1, hello, epoch=0xFFFF)),
        ("record length 0", record(h, 1, b"")),
        ("record length 0, bytes follow", record(h, 1, b"", length=0) + hello),
        ("record length beyond the datagram", record(h, 1, hello, length=len(hello) + 1)),
        ("record length 0xffff", record(h, 1, hello, length=0xFFFF)),
        ("unknown CID record", b"\x19\xfe\xfd\x00\x01" + bytes(6) + b"unkcid\x00\x20" + bytes(32)),
        ("alert from an unknown peer", record(ContentType.ALERT, 1, b"\x02\x28")),
        ("CCS from an unknown peer", record(ContentType.CHANGE_CIPHER_SPEC, 1, b"\x01")),
        ("application data epoch 0", record(APPLICATION_DATA, 1, get_request(1))),
        ("application data epoch 1", record(APPLICATION_DATA, 1, bytes(40), epoch=1)),
        ("handshake type 0xff", record(h, 1, fragment(0xFF, len(body), 0, 0, body))),
        ("ServerHello instead of ClientHello", record(h, 1, fragment(2, len(body), 0, 0, body))),
        ("fragmented ClientHello", record(h, 1, fragment(1, len(body) + 10, 0, 0, body))),
        ("fragment offset beyond length", record(h, 1, fragment(1, len(body), 0, 5, body))),
        ("handshake length 0xffffff", record(h, 1, fragment(1, 0xFFFFFF, 0, 0, body))),
        ("fragment length beyond the record", record(h, 1, hello[:9] + b"\x00\x10\x00" + body)),
        ("ClientHello body cut short", record(h, 1, fragment(1, 30, 0, 0, body[:30]))),
    ]


def test_garbled_headers_are_dropped(server, sockets):
    datagrams = garbled_datagrams()
    sock = sockets()
    before = server.counters()
    for _name, datagram in datagrams:
        sock.sendto(datagram, server.address)
    assert_nothing_answered(sock, server)
    delta = counters_delta(before, server.counters())
    assert delta["hello verify requests"] == 1, [name for name, _ in datagrams]
    assert delta["handshakes started"] == 0
    assert delta["dropped received records"] >= len(datagrams) - 1  # length 0: maybe no record
    assert server.counters()["associations"] == 0
    assert_serves(server, sockets)


@pytest.mark.parametrize("name", [name for name, _ in garbled_datagrams()])
def test_each_garbled_header_alone(server, sockets, name):
    """One at a time, so that a failure names the datagram."""
    datagram = dict(garbled_datagrams())[name]
    sock = sockets()
    sock.sendto(datagram, server.address)
    assert_nothing_answered(sock, server)
    assert server.counters()["associations"] == 0
    assert server.connection(sock.getsockname()) is None


def test_random_garbage(server, sockets):
    rng = random.Random(0x5EED)
    sock = sockets()
    prefixes = [
        b"",
        b"\x16\xfe\xfd",
        b"\x16\xfe\xfd\x00\x00",
        b"\x17\xfe\xfd\x00\x01",
        b"\x19\xfe\xfd\x00\x01",
        b"\x15\xfe\xfd",
        b"\x14\xfe\xff\x00\x00",
    ]
    for count in range(300):
        size = rng.choice([0, 1, 2, 13, 14, 40, 100, 600, 1400, rng.randrange(1, 2000)])
        datagram = (rng.choice(prefixes) + rng.randbytes(size))[: max(size, 1)]
        sock.sendto(datagram, server.address)
        if count % 50 == 49:  # keep the receive buffer small
            assert_nothing_answered(sock, server)
    assert_nothing_answered(sock, server)
    counters = server.counters()
    assert counters["associations"] == 0 and counters["handshakes started"] == 0
    assert counters["hello verify requests"] == 7  # the sentinels only
    assert_serves(server, sockets)


def test_oversized_datagrams_are_dropped(server, sockets):
    """Datagrams larger than any record the server accepts: a 60000-byte ClientHello-looking
    record, and a valid ClientHello padded to 3000 bytes by a big extension."""
    sock = sockets()
    big = os.urandom(60000)
    sock.sendto(record(ContentType.HANDSHAKE, 1, fragment(1, len(big), 0, 0, big)), server.address)
    body = ClientHello(0xFEFD, os.urandom(32), b"", b"", (PSK_CCM8,)).encode()  # no extensions
    extension = b"\xff\xee" + (3000).to_bytes(2, "big") + bytes(3000)  # an unknown one
    padded = body + len(extension).to_bytes(2, "big") + extension
    sock.sendto(
        record(ContentType.HANDSHAKE, 2, fragment(1, len(padded), 0, 0, padded)), server.address
    )
    assert_nothing_answered(sock, server)
    counters = server.counters()
    assert counters["associations"] == 0 and counters["handshakes started"] == 0
    assert_serves(server, sockets)


# -- ClientHello floods -------------------------------------------------------------------------
def test_client_hello_flood_from_many_addresses_keeps_no_state(server, sockets):
    clients = [sockets(f"127.3.{i // 200}.{1 + i % 200}") for i in range(40)]
    for sock in clients:
        for seq in range(3):
            sock.sendto(hello_record(seq=seq), server.address)
        for seq in range(3, 5):  # forged cookies
            sock.sendto(hello_record(os.urandom(32), seq=seq, message_seq=1), server.address)
    for sock in clients:
        for _ in range(5):
            assert is_hello_verify_request(sock.recv(MAX_DATAGRAM))
    counters = server.counters()
    assert counters["hello verify requests"] == 200
    assert counters["associations"] == 0
    assert counters["handshakes started"] == 0 and counters["handshakes pending"] == 0
    assert all(server.connection(sock.getsockname()) is None for sock in clients)
    assert_serves(server, sockets)
    assert server.counters()["associations"] == 1  # the proper client only


def test_cookie_is_bound_to_address_and_hello(server, sockets):
    first = sockets("127.4.0.1")
    other = sockets("127.4.0.2")
    hello_random = os.urandom(32)
    first.sendto(hello_record(seq=0, hello_random=hello_random), server.address)
    cookie = cookie_of(first.recv(MAX_DATAGRAM))
    # the cookie from another address, and with another ClientHello: a new HVR, no state
    other.sendto(
        hello_record(cookie, seq=1, hello_random=hello_random, message_seq=1), server.address
    )
    assert is_hello_verify_request(other.recv(MAX_DATAGRAM), 1)
    first.sendto(hello_record(cookie, seq=1, message_seq=1), server.address)
    assert is_hello_verify_request(first.recv(MAX_DATAGRAM), 1)
    counters = server.counters()
    assert counters["handshakes started"] == 0 and counters["associations"] == 0
    # the right address with the right ClientHello: the handshake starts (a ServerHello)
    first.sendto(
        hello_record(cookie, seq=2, hello_random=hello_random, message_seq=1), server.address
    )
    reply = parse_datagram(first.recv(MAX_DATAGRAM))
    header, _ = next(iter_fragments(reply[0].fragment))
    assert header.msg_type == HandshakeType.SERVER_HELLO
    assert server.counters()["handshakes pending"] == 1
    assert_serves(server, sockets)


def verified_hello(sock: socket.socket, server: Server) -> bytes:
    """Cookie exchange, then the ClientHello with the cookie; returns the server's answer."""
    hello_random = os.urandom(32)
    sock.sendto(hello_record(seq=0, hello_random=hello_random), server.address)
    cookie = cookie_of(sock.recv(MAX_DATAGRAM))
    sock.sendto(
        hello_record(cookie, seq=1, hello_random=hello_random, message_seq=1), server.address
    )
    return cookie


def test_half_open_handshakes_are_bounded(make_dtls_server, sockets):
    server = make_dtls_server(DtlsLimits(max_handshakes=4))
    clients = [sockets(f"127.5.0.{i + 1}") for i in range(10)]
    for sock in clients:
        verified_hello(sock, server)
    assert_nothing_answered(sockets("127.5.1.1"), server)  # all ClientHellos are processed
    counters = server.counters()
    assert counters["handshakes started"] == 4 and counters["handshakes pending"] == 4
    assert counters["handshakes refused"] == 6
    assert counters["associations"] == 4


def test_fatal_alert_ends_a_half_open_handshake(make_dtls_server, sockets):
    server = make_dtls_server(DtlsLimits(max_handshakes=4))
    clients = [sockets(f"127.5.2.{i + 1}") for i in range(4)]
    for sock in clients:
        verified_hello(sock, server)
        sock.recv(MAX_DATAGRAM)  # the ServerHello flight
    assert server.counters()["handshakes pending"] == 4
    for sock in clients:
        sock.sendto(record(ContentType.ALERT, 2, b"\x02\x28"), server.address)  # fatal, 40
    assert_nothing_answered(sockets("127.5.3.1"), server)
    assert server.counters()["handshakes pending"] == 0
    assert_serves(server, sockets)  # there is room again


# -- the handshake under attack -------------------------------------------------------------
class Flight5:
    """A client up to its flight 5: the cookie exchange and the server's flight 4 are done;
    the ClientKeyExchange, CCS and Finished records are there to be sent in any form."""

    def __init__(
        self,
        server: Server,
        sock: socket.socket,
        identity: bytes = b"Client_identity",
        secret: bytes = b"secretPSK",
    ) -> None:
        sock.connect(server.address)
        self.sock = sock
        self.client = ClientHandshake(identity, secret)
        sock.send(self.client.start())
        out = self.client.on_datagram(sock.recv(MAX_DATAGRAM))  # HVR -> ClientHello 2
        sock.send(out[0])
        flight: list[bytes] = []
        for _ in range(4):
            flight = self.client.on_datagram(sock.recv(MAX_DATAGRAM))
            if flight:
                break
        assert len(flight) == 1, "no flight 5"
        records = parse_datagram(flight[0], cid_length=len(self.client.server_cid))
        assert [r.content_type for r in records[:2]] == [
            ContentType.HANDSHAKE,
            ContentType.CHANGE_CIPHER_SPEC,
        ]
        self.exchange: Record = records[0]
        self.finished: Record = records[2]
        header, body = next(iter_fragments(self.exchange.fragment))
        assert header.msg_type == HandshakeType.CLIENT_KEY_EXCHANGE
        self.message_seq = header.message_seq
        self.body = body
        self.seq = self.exchange.seq

    def send_fragments(self, *fragments: bytes) -> None:
        """Each fragment in a record of its own, with increasing sequence numbers."""
        for data in fragments:
            self.sock.send(record(ContentType.HANDSHAKE, self.seq, data))
            self.seq += 1

    def cke(self, offset: int, end: int, data: bytes | None = None) -> bytes:
        chunk = self.body[offset:end] if data is None else data
        return fragment(
            HandshakeType.CLIENT_KEY_EXCHANGE, len(self.body), self.message_seq, offset, chunk
        )

    def finish(self) -> None:
        """CCS and the encrypted Finished."""
        self.sock.send(record(ContentType.CHANGE_CIPHER_SPEC, self.seq, b"\x01"))
        self.seq += 1
        self.sock.send(self.finished.raw)

    def outcome(self) -> ClientSession | HandshakeFailure:
        """The server's answer: its verified Finished (a session), or a fatal alert."""
        for _ in range(6):  # bounded: a resent flight 4 may come first
            try:
                for datagram in self.client.on_datagram(self.sock.recv(MAX_DATAGRAM)):
                    self.sock.send(datagram)
            except HandshakeFailure as failure:
                return failure
            if self.client.done:
                assert self.client.session is not None
                return self.client.session
        raise AssertionError("neither a Finished nor an alert from the server")


def test_oversized_fragments_and_consistent_overlaps_complete(server, sockets):
    attack = Flight5(server, sockets())
    m = attack.message_seq
    cke = HandshakeType.CLIENT_KEY_EXCHANGE
    attack.send_fragments(
        fragment(cke, 0xFFFFFF, m, 0, os.urandom(64)),  # length field at the 24-bit maximum
        fragment(cke, 0x10000, m, 0, os.urandom(500)),  # above any message limit
        fragment(cke, 9000, m, 8000, os.urandom(1000)),
        fragment(cke, 4000, m + 1000, 0, os.urandom(500)),  # far in the future
        *[fragment(22, 8000, m + k, 0, os.urandom(1000)) for k in range(2, 10)],  # byte budget
    )
    n = len(attack.body)
    # the real ClientKeyExchange: out of order, overlapping, duplicated
    attack.send_fragments(
        attack.cke(n - 7, n),
        attack.cke(0, 5),
        attack.cke(3, n - 5),
        attack.cke(3, n - 5),
        attack.cke(0, 1),
    )
    attack.finish()
    session = attack.outcome()
    assert isinstance(session, ClientSession), session
    attack.sock.send(seal(session, get_request(0x0101)))
    assert_test_response(receive_response(attack.sock, session), 0x0101)
    counters = server.counters()
    assert counters["handshakes succeeded"] == 1 and counters["handshakes pending"] == 0
    assert_serves(server, sockets)


def test_conflicting_fragments_fail_or_complete_correctly(server, sockets):
    attack = Flight5(server, sockets())
    n = len(attack.body)
    forged = bytes(b ^ 0x55 for b in attack.body[4:8]) + attack.body[8:]
    attack.send_fragments(
        attack.cke(0, 8),
        fragment(HandshakeType.CLIENT_KEY_EXCHANGE, n + 40, attack.message_seq, 0, bytes(n)),
        fragment(HandshakeType.CERTIFICATE_VERIFY, n, attack.message_seq, 0, attack.body),
        attack.cke(4, n, forged),  # overlaps [4, 8) with different bytes
        attack.cke(0, n),  # the whole message again
    )
    attack.finish()
    outcome = attack.outcome()
    if isinstance(outcome, HandshakeFailure):  # a fatal alert, but not an internal error
        assert outcome.alert != AlertDescription.INTERNAL_ERROR, outcome
        assert server.counters()["handshakes failed"] == 1
    else:  # the server kept the genuine bytes: the session must really work
        attack.sock.send(seal(outcome, get_request(0x0202)))
        assert_test_response(receive_response(attack.sock, outcome), 0x0202)
        assert server.counters()["handshakes succeeded"] == 1
    assert server.counters()["handshakes pending"] == 0
    assert_serves(server, sockets)


@pytest.mark.parametrize(
    ("identity", "secret"),
    [(b"Client_identity", b"wrong secret"), (b"nobody-knows-me", b"secretPSK")],
)
def test_wrong_psk_gets_decrypt_error(server, sockets, identity, secret):
    attack = Flight5(server, sockets(), identity=identity, secret=secret)
    attack.send_fragments(attack.cke(0, len(attack.body)))
    attack.finish()
    alert = attack.sock.recv(MAX_DATAGRAM)
    records = parse_datagram(alert)
    assert [(r.content_type, r.epoch) for r in records] == [(ContentType.ALERT, 0)], alert.hex()
    assert records[0].fragment == bytes((2, AlertDescription.DECRYPT_ERROR))  # fatal, 51
    counters = server.counters()
    assert counters["handshakes failed"] == 1 and counters["handshakes pending"] == 0
    assert counters["handshakes succeeded"] == 0
    assert server.connection(attack.sock.getsockname()) is None
    assert_serves(server, sockets)


# -- an established session under attack ------------------------------------------------------
def established(server: Server, sock: socket.socket) -> tuple[ClientSession, bytes]:
    """A session with one GET done; returns it and the record of that GET."""
    sock.connect(server.address)
    session = handshake(sock)
    first = seal(session, get_request(0x0001))
    sock.send(first)
    assert_test_response(receive_response(sock, session), 0x0001)
    return session, first


def test_bad_macs_are_counted_and_the_session_survives(server, sockets):
    sock = sockets()
    session, _ = established(server, sock)
    header = 13 + len(session.write_cid)  # our records carry the server's CID
    genuine = seal(session, get_request(0x0002))  # not sent yet: forged copies go first
    # Six forged copies plus one from elsewhere: not above the MAC error filter's threshold
    # (Californium's DTLS.MAC_ERROR_FILTER_THRESHOLD, 8), which would drop the genuine record.
    flips = [len(genuine) - 1, len(genuine) - 8, header, header + 8, 10]  # 10: the seq
    bad = []
    for at in flips:
        forged = bytearray(genuine)
        forged[at] ^= 0x01
        bad.append(bytes(forged))
    # The high bits of the seq: 2^40 and more, which the default datagram filter drops
    # unopened (inventory §6.4: seq >= 2^32), not a MAC error.
    filtered = bytearray(genuine)
    filtered[5] ^= 0x01
    elsewhere = sockets()
    before = server.counters()
    for datagram in bad:
        sock.send(datagram)
    sock.send(bytes(filtered))
    elsewhere.sendto(bad[0], server.address)  # with our CID from another address
    sock.send(genuine)  # the sequence number of the forged ones, authentic: accepted
    assert_test_response(receive_response(sock, session), 0x0002)
    delta = counters_delta(before, server.counters())
    assert delta["dropped received mac-errors"] == len(bad) + 1
    assert delta["filtered"] == 1
    assert delta["address changes"] == 0
    assert server.connection(sock.getsockname()) is not None
    assert server.connection(elsewhere.getsockname()) is None
    sock.send(seal(session, get_request(0x0004)))
    assert_test_response(receive_response(sock, session), 0x0004)
    assert_serves(server, sockets)


def test_garbage_on_an_established_session(server, sockets):
    """Truncated and garbled records and a bogus epoch-0 handshake record from the peer's
    address: dropped, the session lives on."""
    sock = sockets()
    session, _ = established(server, sock)
    genuine = seal(session, get_request(0x0010))
    for datagram in [
        genuine[:5],
        genuine[:20],
        genuine[:-3],
        record(ContentType.HANDSHAKE, 7, fragment(16, 17, 1, 0, os.urandom(17))),
        record(ContentType.HANDSHAKE, 8, os.urandom(40)),
        record(ContentType.CHANGE_CIPHER_SPEC, 9, b"\x01"),
        record(APPLICATION_DATA, 10, get_request(0x0011)),
        record(APPLICATION_DATA, 11, os.urandom(30), epoch=2),
        os.urandom(100),
    ]:
        sock.send(datagram)
    sock.send(seal(session, get_request(0x0012)))
    assert_test_response(receive_response(sock, session), 0x0012)  # the first answer
    assert server.connection(sock.getsockname()) is not None
    assert_serves(server, sockets)


def test_replayed_application_records_are_dropped(server, sockets):
    sock = sockets()
    session, first = established(server, sock)
    request = seal(session, get_request(0x0020))
    sock.send(request)
    assert_test_response(receive_response(sock, session), 0x0020)
    elsewhere = sockets()
    before = server.counters()
    for _ in range(5):
        sock.send(request)
    sock.send(first)  # older: the session's first request
    elsewhere.sendto(request, server.address)  # a replay from another address
    sock.send(seal(session, get_request(0x0022)))
    # the next answer is for the new request: no second response to a replayed one
    assert_test_response(receive_response(sock, session), 0x0022)
    delta = counters_delta(before, server.counters())
    dropped = delta["dropped received records"] + delta["dropped received mac-errors"]
    assert dropped == 7
    assert delta["address changes"] == 0
    assert server.connection(elsewhere.getsockname()) is None
    assert_serves(server, sockets)


@pytest.mark.skipif(not hasattr(DtlsLimits(), "mac_filter_threshold"), reason="no MAC error filter")
def test_mac_error_filter_blocks_then_recovers(make_dtls_server, sockets):
    """More bad MACs than the threshold without a quiet gap: the connection's records are
    dropped unopened (counted); after the quiet time the session works again."""
    quiet = 0.5
    server = make_dtls_server(DtlsLimits(mac_filter_threshold=3, mac_filter_quiet=quiet))
    sock = sockets()
    session, _ = established(server, sock)
    genuine = seal(session, get_request(0x0030))
    forged = genuine[:-1] + bytes([genuine[-1] ^ 0x01])
    for _ in range(6):
        sock.send(forged)
    sock.send(genuine)  # filtered: not opened, not answered
    assert_nothing_answered(sockets(), server)  # (another socket: everything is processed)
    counters = server.counters()
    assert counters["dropped received mac-filtered"] >= 1
    assert counters["dropped received mac-errors"] >= 3
    time.sleep(quiet * 3)  # the quiet gap (bounded; no assertion on time)
    sock.send(seal(session, get_request(0x0031)))
    assert_test_response(receive_response(sock, session), 0x0031)
    assert_serves(server, sockets)


# -- Californium's default datagram filter (inventory §6.4) --------------------------------------
def test_epoch_above_1_or_seq_from_2_to_the_32_is_filtered_before_decryption(server, sockets):
    """ "Drop if epoch > 1 or seq >= 2^32", on the first record header: counted as a dropped
    record, not as a MAC error (so it feeds no MAC error filter); the session lives on."""
    sock = sockets()
    session, _ = established(server, sock)
    request = get_request(0x0040)
    before = server.counters()
    # Authentic records (the client's own keys) with seq 2^32 and 2^47, a forged epoch 2, and
    # epoch 0 ClientHellos with seq 2^32 (no HelloVerifyRequest for them).
    genuine = seal(session, request)  # (sealed first: the client's cipher seals upwards)
    sock.send(session.cipher.seal(1, 1 << 32, APPLICATION_DATA, request))
    sock.send(session.cipher.seal(1, 1 << 47, APPLICATION_DATA, request))
    sock.send(genuine[:3] + b"\x00\x02" + genuine[5:])
    sock.send(hello_record(seq=1 << 32))
    sockets().sendto(hello_record(seq=(1 << 48) - 1), server.address)
    sock.send(genuine)
    assert_test_response(receive_response(sock, session), 0x0040)  # the first answer
    delta = counters_delta(before, server.counters())
    assert delta["filtered"] == 5
    assert delta["dropped received records"] == 5
    assert delta["dropped received mac-errors"] == 0
    assert delta["hello verify requests"] == 0 and delta["handshakes started"] == 0
    assert_serves(server, sockets)


# -- renegotiation (inventory §6.3: always rejected) ---------------------------------------------
def test_renegotiation_is_answered_with_a_no_renegotiation_warning(server, sockets):
    """A ClientHello in epoch 1 of an established connection: a warning no_renegotiation
    alert (RFC 5246 §7.2.2, RFC 5746 §4.2) protected in epoch 1, not our last flight again;
    the connection stays and is counted once per ClientHello."""
    sock = sockets()
    session, _ = established(server, sock)
    hello = ClientHello(0xFEFD, os.urandom(32), b"", b"", (PSK_CCM8,))
    for attempt in range(2):  # while the finished handshake lingers: still no flight
        seq = session.next_write_seq
        session.next_write_seq += 1
        message = encode_message(hello, 3 + attempt)
        sock.send(session.cipher.seal(1, seq, ContentType.HANDSHAKE, message))
        records = parse_datagram(sock.recv(MAX_DATAGRAM), cid_length=len(session.read_cid))
        assert [r.epoch for r in records] == [1], records
        content_type, alert = session.cipher.open(records[0].raw)
        assert (content_type, alert) == (ContentType.ALERT, bytes((1, 100)))  # warning, 100
    sock.send(seal(session, get_request(0x0050)))
    assert_test_response(receive_response(sock, session), 0x0050)  # the next datagram
    counters = server.counters()
    assert counters["renegotiations rejected"] == 2
    assert counters["handshakes started"] == 1 and counters["associations"] == 1
    assert server.connection(sock.getsockname()) is not None


# -- the connection store (inventory §6.4) -------------------------------------------------------
def test_a_full_store_refuses_handshakes_until_a_connection_is_stale(
    make_dtls_server, sockets, monkeypatch
):
    """At DTLS.MAX_CONNECTIONS a new handshake may only evict a connection idle longer than
    DTLS.STALE_CONNECTION_THRESHOLD, the least recently active first; else it is refused."""
    from extplugtest.dtls import connector

    server = make_dtls_server(DtlsLimits(max_connections=2, stale_after=180.0))
    first, second = sockets(), sockets()
    established(server, first)
    second_session, _ = established(server, second)  # active after `first`
    late = sockets("127.5.4.1")
    verified_hello(late, server)
    assert_nothing_answered(late, server)  # no ServerHello: refused
    counters = server.counters()
    assert counters["handshakes refused"] == 1 and counters["connections evicted"] == 0
    assert counters["associations"] == 2 and counters["handshakes started"] == 2
    # Three minutes and a second later both are stale: `first`, the least recently active,
    # makes room for the next handshake.
    later = time.monotonic() + 181.0
    monkeypatch.setattr(connector.time, "monotonic", lambda: later)
    verified_hello(late, server)
    header, _ = next(iter_fragments(parse_datagram(late.recv(MAX_DATAGRAM))[0].fragment))
    assert header.msg_type == HandshakeType.SERVER_HELLO
    counters = server.counters()
    assert counters["connections evicted"] == 1 and counters["associations"] == 2
    assert server.connection(first.getsockname()) is None
    assert server.connection(second.getsockname()) is not None
    second.send(seal(second_session, get_request(0x0060)))
    assert_test_response(receive_response(second, second_session), 0x0060)
