"""DTLS.APPLICATION_AUTHORIZATION_TIMEOUT (inventory §6.3, §2.1): an anonymous certificate
handshake (ECDHE_ECDSA without a client certificate) is kept only if the application
authorizes it in time - /benchmark?auth does - else the connector's timer removes it. PSK and
certificate clients are not affected. The connector's clock is stepped, nothing sleeps."""

from __future__ import annotations

import pytest
from test_dtls_client import ECDSA, connect

from extplugtest.coap._codec import Message, parse
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.dtls._record import APPLICATION_DATA
from extplugtest.dtls.connector import DtlsLimits, DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_server import ClientAuth, DtlsConfig
from extplugtest.dtls.pki import demo_client_credentials, demo_server_credentials
from extplugtest.resources.benchmark import Benchmark
from extplugtest.resources.root import RootResource
from extplugtest.server.config import ServerConfig

TIMEOUT = 15.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(serve):
    return make_server(serve, TIMEOUT)


def make_server(serve, timeout: float):
    root = RootResource()
    root.add(Benchmark(True))
    config = DtlsConfig(
        PskStore(), certificate=demo_server_credentials(), client_auth=ClientAuth.WANTED
    )
    transport = DtlsServerTransport(
        CoapEndpoint(root), ("127.0.0.1", 0), config, dedup=DeduplicationCache(),
        limits=DtlsLimits(application_authorization_timeout=timeout),
    )  # fmt: skip
    transport.clock = clock = Clock()
    thread = serve(transport)
    thread.clock = clock
    return thread


def get(sock, session, mid: int, *queries: str) -> Message | None:
    request = Message(0, 1, mid, mid.to_bytes(2, "big"))
    request.add_option(11, "benchmark")
    for query in queries:
        request.add_option(15, query)
    sock.send(session.cipher.seal(1, session.next_write_seq, APPLICATION_DATA, request.to_bytes()))
    session.next_write_seq += 1
    try:
        return parse(session.cipher.open(sock.recv(4096))[1])
    except TimeoutError:
        return None


def step(server, seconds: float) -> dict[str, int]:
    """The connector's clock *seconds* later, its timer run; its counters."""
    server.clock.now += seconds
    server.call(server.transport._on_timer)
    return server.call(server.transport.dtls_counters)


def test_anonymous_connection_without_authorization_is_removed(server):
    sock, session = connect(server.address, cipher_suites=ECDSA)
    assert get(sock, session, 1).code == 0x45
    counters = server.call(server.transport.dtls_counters)
    assert counters["authorizations pending"] == 1
    counters = step(server, TIMEOUT - 1)  # not yet
    assert counters["associations"] == 1 and counters["connections unauthorized"] == 0
    assert get(sock, session, 2).code == 0x45  # (requests do not authorize)
    counters = step(server, 2)
    assert counters["associations"] == 0 and counters["authorizations pending"] == 0
    assert counters["connections unauthorized"] == 1
    sock.settimeout(0.3)
    assert get(sock, session, 3) is None  # the connection is gone
    sock.close()


def test_benchmark_auth_keeps_the_anonymous_connection(server):
    sock, session = connect(server.address, cipher_suites=ECDSA)
    assert get(sock, session, 1, "auth").code == 0x45
    counters = server.call(server.transport.dtls_counters)
    assert counters["authorizations pending"] == 0 and counters["connections authorized"] == 1
    counters = step(server, 10 * TIMEOUT)
    assert counters["associations"] == 1 and counters["connections unauthorized"] == 0
    assert get(sock, session, 2).code == 0x45
    assert get(sock, session, 3, "auth").code == 0x45  # again: nothing more to do
    assert server.call(server.transport.dtls_counters)["connections authorized"] == 1
    sock.close()


@pytest.mark.parametrize(
    "options",
    [{}, {"cipher_suites": ECDSA, "certificate": demo_client_credentials()}],
    ids=["psk", "certificate"],
)
def test_psk_and_certificate_clients_are_not_affected(server, options):
    sock, session = connect(server.address, **options)
    assert server.call(server.transport.dtls_counters)["authorizations pending"] == 0
    counters = step(server, 10 * TIMEOUT)
    assert counters["associations"] == 1 and counters["connections unauthorized"] == 0
    assert get(sock, session, 1).code == 0x45
    assert server.call(server.transport.authorize, sock.getsockname()) is False
    sock.close()


def test_timeout_zero_is_off(serve):
    server = make_server(serve, 0.0)
    sock, session = connect(server.address, cipher_suites=ECDSA)
    counters = step(server, 1000.0)
    assert counters["associations"] == 1 and counters["authorizations pending"] == 0
    assert get(sock, session, 1).code == 0x45
    sock.close()


def test_a_pending_connection_is_not_saved(server):
    anonymous, _ = connect(server.address, cipher_suites=ECDSA)
    psk, _ = connect(server.address)
    transport = server.transport
    server.call(transport.stop)
    saved = server.call(transport.save)
    assert [s.address[1] for s in saved] == [psk.getsockname()[1]]
    assert server.call(transport.dtls_counters)["authorizations pending"] == 0
    anonymous.close()
    psk.close()


def test_the_properties_key_and_the_defaults():
    config = ServerConfig()
    assert config.dtls_application_authorization_timeout == 15.0  # the extended server's
    config.apply({"DTLS.APPLICATION_AUTHORIZATION_TIMEOUT": "2s"})
    assert config.dtls_application_authorization_timeout == 2.0
    assert "DTLS.APPLICATION_AUTHORIZATION_TIMEOUT" not in config.ignored_keys


def test_the_extended_endpoints_have_it_and_the_plugtest_ones_not():
    from extplugtest.server.app import ExtendedServer, InterfaceSelection

    config = ServerConfig()
    config.apply({"DTLS.APPLICATION_AUTHORIZATION_TIMEOUT": "3s"})
    app = ExtendedServer(config, InterfaceSelection(), dtls=DtlsConfig(PskStore()))
    assert app.dtls_limits.application_authorization_timeout == 3.0
    assert app.plugtest_dtls_limits.application_authorization_timeout == 0.0
