"""A graceful restart at the connector level (inventory §6.6): an established connection of our
own DTLS client is saved from one connector, written through the password wrapper, loaded into
a fresh connector, and the client's next record is opened and answered by the C data path of
the new one - no handshake, its replay window and sequence numbers honoured."""

from __future__ import annotations

import socket

import pytest

from extplugtest.coap._codec import Message, parse
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.dtls._record import APPLICATION_DATA
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_server import DtlsConfig
from extplugtest.dtls.persistence import (
    decode_store,
    encode_store,
    seal_store,
    unseal_store,
)
from extplugtest.resources.context import MyContext
from extplugtest.resources.echo import Echo
from extplugtest.resources.root import RootResource
from extplugtest.resources.settings import ResourceSettings

CON, POST, ACK, CONTENT, CHANGED = 0, 2, 2, 0x45, 0x44
URI_PATH = 11
MAX_AGE = 600.0


def dtls_transport(cid_length: int = 6, limits: DtlsLimits | None = None) -> DtlsServerTransport:
    root = RootResource()
    root.add(Echo(ResourceSettings()), MyContext())
    return DtlsServerTransport(
        CoapEndpoint(root), ("127.0.0.1", 0), DtlsConfig(PskStore(), cid_length=cid_length),
        dedup=DeduplicationCache(), limits=limits,
    )  # fmt: skip


class Client:
    """Our PSK client on one unconnected UDP socket: it keeps its session whatever server
    address it talks to."""

    def __init__(self, server: tuple, cid: bytes | None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        handshake = ClientHandshake(b"Client_identity", b"secretPSK", cid=cid)
        self.sock.sendto(handshake.start(), server)
        for _ in range(10):  # bounded: a PSK handshake takes 3 round trips
            for datagram in handshake.on_datagram(self.sock.recv(4096)):
                self.sock.sendto(datagram, server)
            if handshake.done:
                break
        assert handshake.session is not None
        self.session = handshake.session
        self.mid = 0x100

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def record(self, payload: bytes, path: str = "echo") -> bytes:
        self.mid += 1
        message = Message(CON, POST, self.mid, self.mid.to_bytes(2, "big"))
        message.add_option(URI_PATH, path.encode())
        message.payload = payload
        seq = self.session.next_write_seq
        self.session.next_write_seq += 1
        return self.session.cipher.seal(1, seq, APPLICATION_DATA, message.to_bytes())

    def receive(self, timeout: float = 2.0) -> tuple[int, Message] | None:
        """(the record's sequence number, the CoAP message), or None after *timeout*."""
        self.sock.settimeout(timeout)
        try:
            raw = self.sock.recv(4096)
        except TimeoutError:
            return None
        content_type, plaintext = self.session.cipher.open(raw)  # the client's replay check too
        assert content_type == APPLICATION_DATA
        return int.from_bytes(raw[5:11], "big"), parse(plaintext)

    def close(self) -> None:
        self.sock.close()


def exchange(client: Client, server: tuple, payload: bytes) -> tuple[int, Message]:
    client.sock.sendto(client.record(payload), server)
    answer = client.receive()
    assert answer is not None, f"no answer to {payload!r}"
    return answer


def saved_and_restored(old, new, password: bytes | None = b"pw") -> dict:
    """Stop and save *old*, through the stream and its wrapper, load into *new*."""
    old.call(old.transport.stop)
    saved = old.call(old.transport.save)
    stream = seal_store(encode_store({old.transport.label: saved}), password)
    store = decode_store(unseal_store(stream, password))
    (connections,) = store.aged_until(store.saved_at).values()
    counts = new.call(new.transport.load, connections, MAX_AGE)
    return {"saved": len(saved), **vars(counts)}


@pytest.mark.parametrize("cid", [b"", None], ids=["cid", "no-cid"])
def test_client_goes_on_with_a_fresh_connector_without_a_handshake(serve, cid):
    old, new = serve(dtls_transport()), serve(dtls_transport())
    client = Client(old.address, cid)
    first_seq, _ = exchange(client, old.address, b"one")
    replayed = client.record(b"replayed")  # answered by the old server, replayed to the new
    client.sock.sendto(replayed, old.address)
    old_seq, response = client.receive() or (None, None)
    assert response is not None and response.payload == b"replayed"
    context = old.call(old.transport.context_fields, client.address)

    assert saved_and_restored(old, new) == {"saved": 1, "restored": 1, "too_old": 0, "refused": 0}
    # The old connector has nothing left; the new one has the session, as /mycontext shows it.
    assert old.call(old.transport.dtls_counters)["associations"] == 0
    assert new.call(new.transport.context_fields, client.address) == context

    # The next record is opened and answered in C, with a higher sequence number than every
    # record of the old server (the client's own replay window would refuse a repeated one).
    seq, response = exchange(client, new.address, b"after")
    assert (response.type, response.code, response.payload) == (ACK, CHANGED, b"after")
    assert seq > old_seq > first_seq
    datapath = new.call(new.transport.engine.datapath_counters)
    assert datapath["records"] == 1
    counters = new.call(new.transport.dtls_counters)
    assert counters["handshakes started"] == 0 and counters["hello verify requests"] == 0

    # A record the old server had accepted is a replay for the new one: dropped, counted.
    client.sock.sendto(replayed, new.address)
    assert client.receive(timeout=0.3) is None
    assert new.call(new.transport.engine.datapath_counters)["replays"] == 1
    _, response = exchange(client, new.address, b"still there")
    assert response.payload == b"still there"
    client.close()


def test_console_save_and_load_in_one_connector(serve):
    """stop/save/load/resume on the same connector, as the console's save and load do."""
    server = serve(dtls_transport())
    client = Client(server.address, b"")
    exchange(client, server.address, b"before")
    server.call(server.transport.stop)
    saved = server.call(server.transport.save)
    client.sock.sendto(client.record(b"while saved"), server.address)  # nobody reads it
    assert client.receive(timeout=0.3) is None
    counts = server.call(server.transport.load, saved, MAX_AGE)
    server.call(server.transport.resume)
    assert counts.restored == 1
    # The record sent meanwhile waited in the socket: it is answered now, then the next one.
    _, response = client.receive() or (None, None)
    assert response is not None and response.payload == b"while saved"
    _, response = exchange(client, server.address, b"after")
    assert response.payload == b"after"
    assert server.call(server.transport.dtls_counters)["handshakes started"] == 1
    client.close()


def test_old_connections_are_skipped_and_counted(serve):
    old, new = serve(dtls_transport()), serve(dtls_transport())
    clients = [Client(old.address, b"") for _ in range(3)]
    old.call(old.transport.stop)
    saved = old.call(old.transport.save)
    saved[0] = saved[0].aged(MAX_AGE + 1)
    counts = new.call(new.transport.load, saved, MAX_AGE)
    assert (counts.restored, counts.too_old, counts.refused) == (2, 1, 0)
    assert new.call(new.transport.dtls_counters)["associations"] == 2
    for client in clients:
        client.close()


def test_a_connector_must_be_stopped_to_be_saved_and_handshakes_are_dropped(serve):
    server = serve(dtls_transport())
    client = Client(server.address, b"")
    with pytest.raises(RuntimeError, match="must be stopped"):
        server.call(server.transport.save)
    # a handshake in progress (its ClientHello with a cookie was answered)
    pending = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pending.settimeout(2)
    handshake = ClientHandshake(b"Client_identity", b"secretPSK")
    pending.sendto(handshake.start(), server.address)
    for datagram in handshake.on_datagram(pending.recv(4096)):  # the HelloVerifyRequest
        pending.sendto(datagram, server.address)
    pending.recv(4096)  # flight 4: the handshake exists now
    assert server.call(server.transport.dtls_counters)["handshakes pending"] == 1
    server.call(server.transport.stop)
    saved = server.call(server.transport.save)
    assert len(saved) == 1 and saved[0].address == client.address
    counters = server.call(server.transport.dtls_counters)
    assert counters["associations"] == 0 and counters["handshakes pending"] == 0
    pending.close()
    client.close()


def test_connections_that_do_not_fit_are_refused(serve):
    """A CID of another length than this connector's would never be parsed: refused."""
    old, new = serve(dtls_transport(cid_length=6)), serve(dtls_transport(cid_length=8))
    client = Client(old.address, b"")
    old.call(old.transport.stop)
    counts = new.call(new.transport.load, old.call(old.transport.save), MAX_AGE)
    assert (counts.restored, counts.refused) == (0, 1)
    client.close()


def test_restored_session_stays_resumable(serve):
    old, new = serve(dtls_transport()), serve(dtls_transport())
    client = Client(old.address, b"")
    old.call(old.transport.stop)
    new.call(new.transport.load, old.call(old.transport.save), MAX_AGE)
    cache = new.transport.config.session_cache
    cached = cache.get(client.session.session_id)
    assert cached is not None and cached.master_secret == client.session.master_secret
    client.close()


def test_restored_connections_idle_beyond_the_stale_threshold_stay(serve):
    """A connection last active longer ago than DTLS.STALE_CONNECTION_THRESHOLD (but within
    the maximum age) is restored and stays: no sweep removes it while there is room; it goes
    only when a new connection needs its room (inventory §6.4)."""
    limits = DtlsLimits(max_connections=2, stale_after=180.0)
    old, new = serve(dtls_transport()), serve(dtls_transport(limits=limits))
    clients = [Client(old.address, b"") for _ in range(3)]
    old.call(old.transport.stop)
    saved = sorted(old.call(old.transport.save), key=lambda saved: saved.address)
    ages = [400.0, 300.0, 10.0]  # stale, stale, fresh
    saved = [connection.aged(age) for connection, age in zip(saved, ages, strict=True)]
    counts = new.call(new.transport.load, saved, MAX_AGE)
    # oldest first: the 400 s one is evicted by the third (the least recently active stale)
    assert (counts.restored, counts.refused) == (3, 0)
    counters = new.call(new.transport.dtls_counters)
    assert counters["associations"] == 2 and counters["connections evicted"] == 1
    new.call(new.transport._on_timer)
    by_address = {client.address: client for client in clients}
    idle = by_address[saved[1].address]  # 300 s idle, restored, still there
    _, response = exchange(idle, new.address, b"after 300 s")
    assert response.payload == b"after 300 s"
    assert new.call(new.transport.connection, saved[0].address) is None
    for client in clients:
        client.close()


def test_restoring_into_a_full_store_refuses_without_a_stale_connection(serve):
    limits = DtlsLimits(max_connections=1, stale_after=180.0)
    old, new = serve(dtls_transport()), serve(dtls_transport(limits=limits))
    clients = [Client(old.address, b"") for _ in range(2)]
    old.call(old.transport.stop)
    saved = [connection.aged(10.0) for connection in old.call(old.transport.save)]
    counts = new.call(new.transport.load, saved, MAX_AGE)
    assert (counts.restored, counts.refused) == (1, 1)
    counters = new.call(new.transport.dtls_counters)
    assert counters["associations"] == 1 and counters["connections evicted"] == 0
    for client in clients:
        client.close()
