"""The DTLS server endpoint under hostile input: no state before the cookie, garbage counted."""

from __future__ import annotations

import os
import socket

import pytest

from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.resource import Resource
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_server import DtlsConfig, plain_record
from extplugtest.dtls.messages import ClientHello, ContentType, encode_message

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
