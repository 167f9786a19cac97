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
from extplugtest.dtls.ciphersuites import by_name
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

    def __init__(self, address: tuple, cid: bytes | None = b"", suites: tuple = ()) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        options = {"cipher_suites": suites} if suites else {}
        handshake = ClientHandshake(b"Client_identity", b"secretPSK", cid=cid, **options)
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


def test_at_the_bound_a_stale_connection_makes_room_least_recently_active_first(
    make_server, monkeypatch
):
    """Californium's connection store (inventory §6.4): a new connection evicts only a
    connection idle longer than DTLS.STALE_CONNECTION_THRESHOLD, the least recently active."""
    from extplugtest.dtls import connector

    server = make_server(DtlsLimits(max_connections=2, stale_after=180.0))
    first = Client(server.address)
    second = Client(server.address)
    time.sleep(0.01)  # so that the next record is stamped after the connections were placed
    first.sock.sendto(first.seal(first.request(payload=b"active")), server.address)
    assert first.receive().payload == b"active"
    later = time.monotonic() + 181.0  # both idle longer than the threshold
    monkeypatch.setattr(connector.time, "monotonic", lambda: later)
    third = Client(server.address)  # evicts `second`, idle since its handshake
    assert server.call(server.transport.connection, second.sock.getsockname()) is None
    assert server.call(server.transport.connection, first.sock.getsockname()) is not None
    assert server.call(server.transport.connection, third.sock.getsockname()) is not None
    counters = server.call(server.transport.dtls_counters)
    assert (counters["connections evicted"], counters["handshakes refused"]) == (1, 0)
    for client in (first, second, third):
        client.close()


@pytest.mark.parametrize("cid", [b"", None], ids=["cid", "no-cid"])
def test_idle_connections_stay_while_there_is_room(server, monkeypatch, cid):
    """No sweep: a client idle for an hour (far beyond DTLS.STALE_CONNECTION_THRESHOLD) goes on
    without a handshake while the store has room."""
    from extplugtest.dtls import connector

    client = Client(server.address, cid=cid)
    later = time.monotonic() + 3600.0
    monkeypatch.setattr(connector.time, "monotonic", lambda: later)
    for _ in range(3):
        server.call(server.transport._on_timer)
    client.sock.sendto(client.seal(client.request(payload=b"still here")), server.address)
    assert client.receive().payload == b"still here"
    counters = server.call(server.transport.dtls_counters)
    assert counters["associations"] == 1 and counters["handshakes started"] == 1
    assert counters["connections evicted"] == 0
    client.close()


def resent_at(server, sock: socket.socket, suites: tuple, monkeypatch) -> tuple[list[float], float]:
    """Start a handshake up to the server's flight 4, then step the connector's clock by 1 s:
    the times its flight went out again, and when the handshake failed."""
    from extplugtest.dtls import connector

    clock = [time.monotonic()]
    monkeypatch.setattr(connector.time, "monotonic", lambda: clock[0])
    handshake = ClientHandshake(b"Client_identity", b"secretPSK", cipher_suites=suites)
    sock.sendto(handshake.start(), server.address)
    for datagram in handshake.on_datagram(sock.recv(4096)):  # the HelloVerifyRequest
        sock.sendto(datagram, server.address)
    sock.recv(4096)  # the server's flight 4 (ServerHello ... ServerHelloDone)
    resent: list[float] = []
    sending = server.call(server.transport.dtls_counters)["sending records"]
    for second in range(1, 400):  # bounded: fails at 197 s at the latest
        clock[0] += 1.0
        server.call(server.transport._on_timer)
        counters = server.call(server.transport.dtls_counters)
        if counters["handshakes failed"]:
            assert counters["handshakes pending"] == 0 and counters["associations"] == 0
            return resent, float(second)
        if counters["sending records"] > sending:
            resent.append(float(second))
            sending = counters["sending records"]
    raise AssertionError("the handshake did not fail")


@pytest.mark.parametrize(
    ("suite", "expected"),
    [
        # DTLS.RETRANSMISSION_TIMEOUT 3 s (servers), doubled: 3, 6, 12, 24; after
        # DTLS.MAX_RETRANSMISSIONS (4) the next 48 s end the handshake
        ("TLS_PSK_WITH_AES_128_CCM_8", ([3.0, 9.0, 21.0, 45.0], 93.0)),
        # plus DTLS.ADDITIONAL_ECC_TIMEOUT 8 s for an ECDHE flight: 11, 22, 44, 60 (max), 60
        ("TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256", ([11.0, 33.0, 77.0, 137.0], 197.0)),
    ],
)
def test_flights_are_resent_with_back_off(server, monkeypatch, suite, expected):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    assert resent_at(server, sock, (by_name(suite),), monkeypatch) == expected
    sock.close()


def test_message_size_limit_is_what_one_record_carries_within_the_mtu(server):
    """/mycontext's message-size-limit (inventory §6.3 "MTU"): the loopback MTU capped at
    DTLS.MAX_TRANSMISSION_UNIT_LIMIT (1500), less the IPv4 allowance 64, the header 13, the
    2-byte write CID, 8 explicit nonce + 8 CCM_8 tag, and the inner type: 1404."""
    from extplugtest.dtls.mtu import detect_mtu

    ccm_8 = by_name("TLS_PSK_WITH_AES_128_CCM_8")
    client = Client(server.address, cid=b"\xab\xcd", suites=(ccm_8,))
    fields = dict(server.call(server.transport.context_fields, client.sock.getsockname()))
    mtu = min(detect_mtu("127.0.0.1") or 576, 1500)
    assert fields["message-size-limit"] == mtu - 64 - 13 - 2 - 16 - 1
    if mtu == 1500:  # (the loopback MTU is 65536 on Linux)
        assert fields["message-size-limit"] == 1404
    # The server's own records stay within it: a 1024-byte payload (COAP.MAX_MESSAGE_SIZE)
    # is answered in one record of at most message-size-limit plaintext bytes.
    client.sock.sendto(client.seal(client.request(payload=bytes(1024))), server.address)
    record = client.sock.recv(4096)
    assert len(record) - (13 + 2 + 16 + 1) <= fields["message-size-limit"]
    client.close()


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
