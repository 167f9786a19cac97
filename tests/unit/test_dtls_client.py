"""Our DTLS client against our DTLS server: PSK, Connection ID, and an address change
(RFC 9146 §6): the server answers the CID record from the new address."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
import uvloop

from extplugtest.coap._codec import Message, parse
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.linkformat import well_known
from extplugtest.dtls.connector import DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_server import DtlsConfig, HandshakeFailure
from extplugtest.resources.context import MyContext
from extplugtest.resources.plugtest.core import DefaultTest
from extplugtest.resources.root import RootResource


@pytest.fixture
def server():
    root = RootResource()
    root.add(DefaultTest(), MyContext())
    root.add(well_known(root))
    loop = uvloop.new_event_loop()
    transport = DtlsServerTransport(CoapEndpoint(root), ("127.0.0.1", 0), DtlsConfig(PskStore()))
    transport.open(loop)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield transport
    asyncio.run_coroutine_threadsafe(_call(transport.close), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


async def _call(function):
    return function()


def connect(address, identity=b"Client_identity", secret=b"secretPSK", cid=b""):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect(address)
    handshake = ClientHandshake(identity, secret, cid=cid)
    sock.send(handshake.start())
    for _ in range(10):  # bounded: HVR, flight 4, flight 6
        for datagram in handshake.on_datagram(sock.recv(4096)):
            sock.send(datagram)
        if handshake.done:
            return sock, handshake.session
    raise AssertionError("no handshake")


def get(sock, session, path: str, mid: int) -> Message:
    request = Message(0, 1, mid, b"\x01")
    for segment in path.split("/"):
        request.add_option(11, segment)
    sock.send(session.cipher.seal(1, session.next_write_seq, 23, request.to_bytes()))
    session.next_write_seq += 1
    return parse(session.cipher.open(sock.recv(4096))[1])


def test_psk_handshake_with_cid_and_request(server):
    sock, session = connect(server.local_address)
    assert len(session.write_cid) == 6  # the server's CID: our records carry it
    assert get(sock, session, "test", 1).payload.startswith(b"Type: 0 (CON)\nCode: 1 (GET)")
    context = get(sock, session, "mycontext", 2).payload.decode()
    assert "peer: Client_identity" in context
    assert f"read-cid: {session.write_cid.hex().upper()}" in context
    sock.close()


def test_address_change_is_followed(server):
    sock, session = connect(server.local_address)
    get(sock, session, "test", 3)
    moved = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    moved.settimeout(2)
    moved.connect(server.local_address)
    old_port = sock.getsockname()[1]
    context = get(moved, session, "mycontext", 4).payload.decode()
    assert f"port: {moved.getsockname()[1]}" in context
    assert f"prev-port: {old_port}" in context
    assert server.dtls_counters()["address changes"] == 1
    sock.close()
    moved.close()


def test_wrong_secret_fails(server):
    with pytest.raises(HandshakeFailure):
        connect(server.local_address, secret=b"wrong")


def test_unknown_identity_fails_like_a_wrong_secret(server):
    with pytest.raises(HandshakeFailure):
        connect(server.local_address, identity=b"nobody-knows-me")


def test_replayed_record_is_dropped(server):
    sock, session = connect(server.local_address)
    request = Message(0, 1, 9, b"\x02").add_option(11, "test")
    record = session.cipher.seal(1, session.next_write_seq, 23, request.to_bytes())
    session.next_write_seq += 1
    sock.send(record)
    sock.recv(4096)
    sock.send(record)  # the same record again: the replay window drops it (no answer)
    with pytest.raises(TimeoutError):
        sock.settimeout(0.3)
        sock.recv(4096)
    sock.close()
