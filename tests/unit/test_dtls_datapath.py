"""The C data path of the DTLS endpoint (dtls/_datapath.pyx) through a live socket: records of
established connections answered in C, replays and forgeries counted, the slow path for
several records in one datagram, address changes by CID (RFC 9146 §6), the LRU bound."""

from __future__ import annotations

import socket
import time

import pytest

from extplugtest.coap._codec import Message, parse
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.resource import Resource
from extplugtest.dtls._datapath import DtlsConnection, peer_key
from extplugtest.dtls._record import APPLICATION_DATA
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_server import DtlsConfig
from extplugtest.resources.echo import Echo
from extplugtest.resources.settings import ResourceSettings

GET, POST, CON, ACK = 1, 2, 0, 2
URI_PATH, URI_QUERY = 11, 15


def dtls_transport(limits: DtlsLimits | None = None) -> DtlsServerTransport:
    root = Resource("")
    root.add(Echo(ResourceSettings()))
    return DtlsServerTransport(
        CoapEndpoint(root), ("127.0.0.1", 0), DtlsConfig(PskStore()), limits=limits,
        dedup=DeduplicationCache(),
    )  # fmt: skip


@pytest.fixture
def make_server(serve):
    """``make_server(limits)``: a DTLS server thread; ``.transport`` is the connector."""
    return lambda limits=None: serve(dtls_transport(limits))


@pytest.fixture
def server(make_server):
    return make_server()


class Client:
    """Our PSK client on one UDP socket; *cid* as in ClientHandshake (b"": the server's CID
    on our records, none on its records)."""

    def __init__(self, address: tuple, cid: bytes | None = b"") -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        handshake = ClientHandshake(b"Client_identity", b"secretPSK", cid=cid)
        self.sock.sendto(handshake.start(), address)
        for _ in range(10):  # bounded: a PSK handshake takes 3 round trips
            for datagram in handshake.on_datagram(self.sock.recv(4096)):
                self.sock.sendto(datagram, address)
            if handshake.done:
                break
        assert handshake.session is not None
        self.session = handshake.session
        self.mid = 0x100

    def seal(self, payload: bytes, seq: int | None = None) -> bytes:
        session = self.session
        if seq is None:
            seq = session.next_write_seq
            session.next_write_seq += 1
        return session.cipher.seal(1, seq, APPLICATION_DATA, payload)

    def request(self, code: int = POST, payload: bytes = b"", path: str = "echo") -> bytes:
        self.mid += 1
        message = Message(CON, code, self.mid, self.mid.to_bytes(2, "big"))
        message.add_option(URI_PATH, path.encode())
        message.payload = payload
        return message.to_bytes()

    def receive(self) -> Message:
        content_type, plaintext = self.session.cipher.open(self.sock.recv(4096))
        assert content_type == APPLICATION_DATA
        return parse(plaintext)

    def rebind(self, port: int = 0) -> None:
        """A new source port (*port*, or any), as after a NAT rebinding."""
        self.sock.close()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(2)

    def close(self) -> None:
        self.sock.close()


def records_in_c(server) -> int:
    return server.call(server.transport.engine.datapath_counters)["records"]


def test_peer_key_is_the_connections_key():
    connection = DtlsConnection(("127.0.0.1", 5684), b"cid", 0.0)
    assert connection.key == peer_key(("127.0.0.1", 5684))
    assert connection.key != peer_key(("127.0.0.1", 5685))
    connection.address = ("::1", 5684, 0, 0)
    assert connection.key == peer_key(("::1", 5684, 0, 0))


@pytest.mark.parametrize("cid", [b"", None], ids=["cid", "no-cid"])
def test_requests_are_answered_in_c(server, cid):
    client = Client(server.address, cid=cid)
    for index in range(20):
        client.sock.sendto(client.seal(client.request(payload=b"ping %d" % index)),
                           server.address)  # fmt: skip
        response = client.receive()
        assert (response.type, response.code, response.mid) == (ACK, 0x44, client.mid)
        assert response.payload == b"ping %d" % index
    assert records_in_c(server) == 20
    client.close()


def test_replayed_and_forged_records_are_dropped_and_counted(server):
    client = Client(server.address)
    record = client.seal(client.request(payload=b"once"))
    client.sock.sendto(record, server.address)
    assert client.receive().payload == b"once"
    client.sock.sendto(record, server.address)  # replay: no second answer
    forged = bytearray(client.seal(client.request(payload=b"forged")))
    forged[-1] ^= 1
    client.sock.sendto(bytes(forged), server.address)
    client.sock.sendto(client.seal(client.request(payload=b"after")), server.address)
    assert client.receive().payload == b"after"  # the next answer is for the genuine record
    counters = server.call(server.transport.engine.datapath_counters)
    assert counters["replays"] == 1 and counters["mac errors"] == 1
    dtls = server.call(server.transport.dtls_counters)
    assert dtls["dropped received mac-errors"] >= 1
    client.close()


def test_every_record_of_a_datagram_is_answered_in_c(server):
    client = Client(server.address)
    before = server.call(server.transport.engine.datapath_counters)  # the handshake's are slow
    datagram = client.seal(client.request(payload=b"first"))
    datagram += client.seal(client.request(payload=b"second"))
    client.sock.sendto(datagram, server.address)
    assert [client.receive().payload, client.receive().payload] == [b"first", b"second"]
    after = server.call(server.transport.engine.datapath_counters)
    assert after["records"] - before["records"] == 2
    assert after["slow records"] == before["slow records"]
    client.close()


def test_large_response_is_sealed_too(server):
    client = Client(server.address)
    client.mid += 1
    message = Message(CON, POST, client.mid, b"big")
    message.add_option(URI_PATH, b"echo")
    message.add_option(URI_QUERY, b"rlen=1000")
    client.sock.sendto(client.seal(message.to_bytes()), server.address)
    response = client.receive()
    assert response.code == 0x44 and response.payload == b"*" * 1000
    client.close()


def test_cid_record_from_a_new_port_moves_the_connection(server):
    client = Client(server.address)
    client.sock.sendto(client.seal(client.request(payload=b"before")), server.address)
    assert client.receive().payload == b"before"
    old_port = client.sock.getsockname()[1]
    stale = client.seal(client.request(payload=b"stale"))  # older than the next one
    client.rebind()
    client.sock.sendto(client.seal(client.request(payload=b"moved")), server.address)
    assert client.receive().payload == b"moved"
    new_address = client.sock.getsockname()
    connection = server.call(server.transport.connection, new_address)
    assert connection is not None and connection.previous_address[1] == old_port
    assert server.call(server.transport.connection, ("127.0.0.1", old_port)) is None
    # An older record from yet another port is answered, but moves nothing (RFC 9146 §6).
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.sendto(stale, server.address)
    assert client.receive().payload == b"stale"  # to the connection's address
    assert server.call(server.transport.connection, new_address) is connection
    assert server.call(server.transport.dtls_counters)["address changes"] == 1
    other.close()
    client.close()


def test_a_retransmission_after_a_move_is_still_a_duplicate(server):
    """The connection's deduplication state moves with it: the same CON (same MID) sent
    again from a new port - a NAT rebinding between a request and its retransmission - is
    answered from the cache, not handled twice (RFC 7252 §4.5)."""
    client = Client(server.address)
    request = client.request(payload=b"once")
    client.sock.sendto(client.seal(request), server.address)
    assert client.receive().payload == b"once"
    client.rebind()
    client.sock.sendto(client.seal(request), server.address)  # a new record, the same MID
    response = client.receive()
    assert (response.mid, response.payload) == (client.mid, b"once")
    counters = server.call(server.transport.engine.counters)
    assert counters["recv-duplicate requests"] == 1
    assert server.call(server.transport.engine.dedup.stats)["peers"] == 1
    client.close()


def test_a_cid_connection_whose_address_another_takes_is_parked_not_dropped(server):
    """A NAT that reuses a port: client A moves to the address client B had. B is still
    reachable by its CID (parked, counted), and its next record moves it to its new port."""
    first, second = Client(server.address), Client(server.address)
    for client in (first, second):
        client.sock.sendto(client.seal(client.request(payload=b"hello")), server.address)
        assert client.receive().payload == b"hello"
    taken = second.sock.getsockname()
    second.rebind()
    first.rebind(taken[1])  # the port second had
    first.sock.sendto(first.seal(first.request(payload=b"a")), server.address)
    assert first.receive().payload == b"a"
    second.sock.sendto(second.seal(second.request(payload=b"b")), server.address)
    assert second.receive().payload == b"b"
    assert server.call(server.transport.connection, taken).read_cid == first.session.write_cid
    moved = server.call(server.transport.connection, second.sock.getsockname())
    assert moved is not None and moved.read_cid == second.session.write_cid
    counters = server.call(server.transport.dtls_counters)
    assert (counters["connections parked"], counters["address changes"]) == (1, 2)
    assert counters["associations"] == 2
    first.close()
    second.close()


def test_the_least_recently_active_connection_makes_room(make_server):
    server = make_server(DtlsLimits(max_connections=2))
    first = Client(server.address)
    second = Client(server.address)
    time.sleep(0.01)  # so that the next record is stamped after the connections were placed
    first.sock.sendto(first.seal(first.request(payload=b"active")), server.address)
    assert first.receive().payload == b"active"
    third = Client(server.address)  # evicts `second`, idle since its handshake
    assert server.call(server.transport.connection, second.sock.getsockname()) is None
    assert server.call(server.transport.connection, first.sock.getsockname()) is not None
    assert server.call(server.transport.connection, third.sock.getsockname()) is not None
    assert server.call(server.transport.dtls_counters)["connections evicted"] == 1
    for client in (first, second, third):
        client.close()


def test_flights_are_resent_with_back_off(server, monkeypatch):
    from extplugtest.dtls import connector

    clock = [time.monotonic()]
    monkeypatch.setattr(connector.time, "monotonic", lambda: clock[0])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    handshake = ClientHandshake(b"Client_identity", b"secretPSK")
    sock.sendto(handshake.start(), server.address)
    hello_verify = sock.recv(4096)
    for datagram in handshake.on_datagram(hello_verify):
        sock.sendto(datagram, server.address)
    sock.recv(4096)  # the server's flight 4 (ServerHello ... ServerHelloDone)
    resent_at = []
    for step in range(1, 16):  # 0.5 s steps over 7.5 s: due at 1, 3 (=1+2) and 7 (=3+4) s
        clock[0] += 0.5
        server.call(server.transport._on_timer)
        sock.settimeout(0.05)
        received = 0
        for _ in range(8):  # a flight may take several datagrams
            try:
                sock.recv(4096)
                received += 1
            except TimeoutError:
                break
        if received:
            resent_at.append(step * 0.5)
    assert resent_at == [1.0, 3.0, 7.0]
    sock.close()


def test_mac_error_filter_drops_records_until_a_quiet_gap(make_server):
    quiet = 2.0
    server = make_server(DtlsLimits(mac_filter_threshold=8, mac_filter_quiet=quiet))
    client = Client(server.address)
    for _ in range(9):  # more than the threshold, without a gap
        forged = bytearray(client.seal(client.request(payload=b"forged")))
        forged[-1] ^= 1
        client.sock.sendto(bytes(forged), server.address)
    client.sock.sendto(client.seal(client.request(payload=b"filtered")), server.address)
    client.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.receive()
    counters = server.call(server.transport.dtls_counters)
    assert counters["dropped received mac-errors"] == 9
    assert counters["dropped received mac-filtered"] == 1
    time.sleep(quiet + 0.2)  # the quiet gap: records are opened again
    client.sock.settimeout(2)
    client.sock.sendto(client.seal(client.request(payload=b"again")), server.address)
    assert client.receive().payload == b"again"
    client.close()
