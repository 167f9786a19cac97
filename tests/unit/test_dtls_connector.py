"""The DTLS server endpoint under hostile input: no state before the cookie, garbage counted."""

from __future__ import annotations

import os
import socket

import pytest

from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.resource import Resource
from extplugtest.dtls._record import (
    AEAD_AES_128_CCM,
    AEAD_AES_128_CCM_8,
    AEAD_AES_128_GCM,
    AeadCipher,
    parse_datagram,
)
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_header import HandshakeType, iter_fragments
from extplugtest.dtls.handshake_server import DtlsConfig, plain_record
from extplugtest.dtls.messages import ClientHello, ContentType, HelloVerifyRequest, encode_message
from extplugtest.dtls.mtu import detect_mtu

PSK_CCM8 = 0xC0A8


@pytest.fixture
def server(serve):
    return serve(
        DtlsServerTransport(
            CoapEndpoint(Resource("")), ("127.0.0.1", 0), DtlsConfig(PskStore()),
            limits=DtlsLimits(max_handshakes=4),
        )
    )  # fmt: skip


def client_hello(cookie: bytes = b"") -> bytes:
    hello = ClientHello(0xFEFD, os.urandom(32), b"", cookie, (PSK_CCM8,))
    return plain_record(ContentType.HANDSHAKE, 0, encode_message(hello, 0))


def test_client_hello_flood_keeps_no_state(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    for _ in range(200):
        sock.sendto(client_hello(), server.address)
        reply = sock.recv(2048)
        assert reply[0] == ContentType.HANDSHAKE and reply[13] == 3  # HelloVerifyRequest
    counters = server.call(server.transport.dtls_counters)
    assert counters["hello verify requests"] == 200
    assert counters["associations"] == 0 and counters["handshakes started"] == 0
    sock.close()


def test_forged_cookies_keep_no_state(server):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    for _ in range(50):
        sock.sendto(client_hello(os.urandom(32)), server.address)
        sock.recv(2048)  # a fresh HelloVerifyRequest, no handshake
    assert server.call(server.transport.dtls_counters)["associations"] == 0
    sock.close()


@pytest.mark.parametrize(
    "datagram",
    [b"\x16\xfe\xfd", b"\x01" * 40, b"\x17\xfe\xfd" + bytes(8) + b"\x00\x05abc",
     b"\x19\xfe\xfd\x00\x01" + bytes(6) + b"unkcid" + b"\x00\x10" + bytes(16)],
)  # fmt: skip
def test_garbage_is_dropped_and_counted(server, datagram):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.3)
    sock.sendto(datagram, server.address)
    with pytest.raises(TimeoutError):
        sock.recv(2048)
    counters = server.call(server.transport.dtls_counters)
    assert counters["associations"] == 0
    assert counters["dropped received records"] == 1
    sock.close()


@pytest.mark.parametrize(
    ("client_version", "expected"),
    [(0xFEFD, 0xFEFD), (0xFEFF, 0xFEFF), (0xFEFC, 0xFEFD), (0xFF00, 0xFEFF), (0x0303, 0xFEFD)],
    ids=["1.2", "1.0", "1.3", "below 1.0", "TLS 1.2"],
)
def test_hello_verify_request_takes_the_clients_version_clamped(server, client_version, expected):
    """Inventory §6.3: the HelloVerifyRequest's version (record and message) is the client's
    version clamped to [DTLS 1.0, DTLS 1.2]."""
    hello = ClientHello(client_version, os.urandom(32), b"", b"", (PSK_CCM8,))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.sendto(plain_record(ContentType.HANDSHAKE, 7, encode_message(hello, 0)), server.address)
    (record,) = parse_datagram(sock.recv(2048))
    header, body = next(iter_fragments(record.fragment))
    assert header.msg_type == HandshakeType.HELLO_VERIFY_REQUEST and record.seq == 7
    assert (record.version, HelloVerifyRequest.decode(body).server_version) == (expected, expected)
    sock.close()


@pytest.mark.parametrize(
    ("epoch", "seq"), [(0, 1 << 32), (0, (1 << 48) - 1), (2, 1), (0xFFFF, 0)]
)  # fmt: skip
def test_default_datagram_filter_before_the_handshake(server, epoch, seq):
    """Inventory §6.4, "drop if epoch > 1 or seq >= 2^32", before the connector sees it: a
    ClientHello with such a header gets no HelloVerifyRequest."""
    hello = ClientHello(0xFEFD, os.urandom(32), b"", b"", (PSK_CCM8,))
    record = plain_record(ContentType.HANDSHAKE, seq, encode_message(hello, 0))
    record = record[:3] + epoch.to_bytes(2, "big") + record[5:]
    transport = server.transport
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.3)
    sock.sendto(record, server.address)
    with pytest.raises(TimeoutError):
        sock.recv(2048)
    counters = server.call(transport.dtls_counters)
    assert counters["dropped received records"] == 1 == server.call(transport.filtered)
    assert counters["hello verify requests"] == 0 and counters["received records"] == 0
    sock.settimeout(2)
    sock.sendto(client_hello(), server.address)  # seq 0: answered
    sock.recv(2048)
    assert server.call(transport.dtls_counters)["hello verify requests"] == 1
    sock.close()


class FakeSession:
    def __init__(self, aead: int, write_cid: bytes) -> None:
        self.cipher = AeadCipher(aead, bytes(16), bytes(4), bytes(16), bytes(4),
                                 write_cid=write_cid)  # fmt: skip


@pytest.mark.parametrize(
    ("mtu", "address", "aead", "write_cid", "expected"),
    [
        # the example of the brief: 1500 - 64 - 13 - 2 - (8 + 8) - 1
        (1500, ("127.0.0.1", 5684), AEAD_AES_128_CCM_8, b"\x01\x02", 1404),
        # IPv6: allowance 128; GCM: 8 + 16; no write CID: no inner type
        (1500, ("::1", 5684, 0, 0), AEAD_AES_128_GCM, b"", 1500 - 128 - 13 - 24),
        # an IPv4-mapped peer is an IPv4 one
        (1500, ("::ffff:127.0.0.1", 5684, 0, 0), AEAD_AES_128_CCM, b"", 1500 - 64 - 13 - 24),
        # no MTU detected: IPv4 576, IPv6 1280
        (None, ("192.0.2.1", 5684), AEAD_AES_128_CCM_8, bytes(6), 576 - 64 - 13 - 6 - 16 - 1),
        (None, ("2001:db8::1", 5684, 0, 0), AEAD_AES_128_CCM_8, b"", 1280 - 128 - 13 - 16),
    ],
)
def test_message_size_limit(mtu, address, aead, write_cid, expected):
    """Inventory §6.3 "MTU": MTU - header allowance - 13 - write CID - (8 + tag) - 1 (CID)."""
    transport = DtlsServerTransport(
        CoapEndpoint(Resource("")), ("127.0.0.1", 0), DtlsConfig(PskStore())
    )
    transport.mtu = mtu
    assert transport.message_size_limit(FakeSession(aead, write_cid), address) == expected


def test_the_mtu_is_capped_and_may_be_configured(serve):
    """DTLS.MAX_TRANSMISSION_UNIT overrides the detection; DTLS.MAX_TRANSMISSION_UNIT_LIMIT
    caps both (the loopback interface's 65536 becomes 1500)."""
    endpoint = CoapEndpoint(Resource(""))
    detected = serve(DtlsServerTransport(endpoint, ("127.0.0.1", 0), DtlsConfig(PskStore())))
    assert detected.transport.mtu == min(detect_mtu("127.0.0.1") or 576, 1500)
    limits = DtlsLimits(mtu=9000, mtu_limit=2000)
    configured = serve(
        DtlsServerTransport(
            CoapEndpoint(Resource("")), ("127.0.0.1", 0), DtlsConfig(PskStore()), limits=limits
        )
    )
    assert configured.transport.mtu == 2000
