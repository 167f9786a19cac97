"""Our DTLS client against our DTLS server: PSK, Connection ID, and an address change
(RFC 9146 §6): the server answers the CID record from the new address. ECDHE_ECDSA with a
client certificate (X.509 and raw public key) and ECDHE_PSK, and session resumption
(RFC 5246 §7.3) through the connector."""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import threading

import pytest
import uvloop

from extplugtest.coap._codec import Message, parse
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.linkformat import well_known
from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls.connector import DtlsServerTransport
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.handshake_header import AlertDescription
from extplugtest.dtls.handshake_server import PSK_SUITES, ClientAuth, DtlsConfig, HandshakeFailure
from extplugtest.dtls.messages import CertificateType
from extplugtest.dtls.pki import demo_client_credentials, demo_server_credentials, make_demo_pki
from extplugtest.resources.context import MyContext
from extplugtest.resources.plugtest.core import DefaultTest
from extplugtest.resources.root import RootResource
from extplugtest.tools import oneshot


@pytest.fixture
def server():
    yield from serve(DtlsConfig(PskStore()))


@pytest.fixture
def certificate_server():
    """With the demo server certificate; client certificates are NEEDED."""
    yield from serve(
        DtlsConfig(PskStore(), certificate=demo_server_credentials(), client_auth=ClientAuth.NEEDED)
    )


def serve(config: DtlsConfig):
    root = RootResource()
    root.add(DefaultTest(), MyContext())
    root.add(well_known(root))
    loop = uvloop.new_event_loop()
    transport = DtlsServerTransport(CoapEndpoint(root), ("127.0.0.1", 0), config)
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


def connect(address, identity=b"Client_identity", secret=b"secretPSK", cid=b"", **options):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect(address)
    handshake = ClientHandshake(identity, secret, cid=cid, **options)
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


ECDSA = (cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, cs.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)


def context_lines(sock, session, mid: int) -> list[str]:
    return get(sock, session, "mycontext", mid).payload.decode().splitlines()


@pytest.mark.parametrize(
    ("certificate_types", "peer"),
    [((CertificateType.X509,), "peer: O=extplugtest demo,CN=cf-client"),
     ((CertificateType.RAW_PUBLIC_KEY,), "peer: ni:///sha-256;")],
    ids=["x509", "rpk"],
)  # fmt: skip
def test_client_certificate_is_shown_as_peer(certificate_server, certificate_types, peer):
    sock, session = connect(
        certificate_server.local_address, cipher_suites=ECDSA,
        certificate=demo_client_credentials(), certificate_types=certificate_types,
    )  # fmt: skip
    lines = context_lines(sock, session, 20)
    assert any(line.startswith(peer) for line in lines), lines
    assert "cipher-suite: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8" in lines
    assert session.peer.startswith("ni:///" if "ni:" in peer else "O=extplugtest demo,CN=cf-server")
    sock.close()


def test_client_without_certificate_is_refused_when_needed(certificate_server):
    with pytest.raises(HandshakeFailure) as failure:
        connect(certificate_server.local_address, cipher_suites=ECDSA)
    assert failure.value.alert is AlertDescription.HANDSHAKE_FAILURE
    assert certificate_server.dtls_counters()["handshakes failed"] == 1


def test_ecdhe_psk(server):
    suites = (cs.TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,)
    sock, session = connect(server.local_address, cipher_suites=suites)
    lines = context_lines(sock, session, 21)
    assert "cipher-suite: TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256" in lines
    assert "peer: Client_identity" in lines
    sock.close()


@pytest.mark.parametrize("cid", [b"", None], ids=["cid", "no-cid"])
def test_session_is_resumed_from_another_socket(certificate_server, cid):
    """The abbreviated handshake through the connector: cookie exchange, ServerHello with the
    same session id, CCS and Finished; the resumed session keeps the client's principal."""
    first_sock, first = connect(
        certificate_server.local_address, cid=cid, cipher_suites=ECDSA,
        certificate=demo_client_credentials(),
    )  # fmt: skip
    first_sock.close()
    sock, session = connect(certificate_server.local_address, cid=cid, resume=first)
    assert session.resumed and session.session_id == first.session_id
    lines = context_lines(sock, session, 22)
    assert f"session-id: {first.session_id.hex().upper()}" in lines
    assert "peer: O=extplugtest demo,CN=cf-client" in lines
    assert ("read-cid: " + session.write_cid.hex().upper() in lines) == (cid is not None)
    assert certificate_server.config.session_cache.counters.resumed == 1
    sock.close()


# -- extclient's coaps options (cf-cli's --auth, --cipher, --trust-*, --cert) ------------------


def parse_extclient(*arguments: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    oneshot.add_arguments(parser)
    return parser.parse_args([*arguments, "coaps://127.0.0.1/test"])


def test_extclient_auth_modes_choose_suites_and_certificates():
    options = oneshot.dtls_options(parse_extclient())
    assert options.cipher_suites == PSK_SUITES and options.certificate is None
    options = oneshot.dtls_options(parse_extclient("-a", "RPK:X509"))
    assert {s.key_exchange for s in options.cipher_suites} == {cs.KeyExchange.ECDHE_ECDSA}
    assert options.certificate_types == (CertificateType.RAW_PUBLIC_KEY, CertificateType.X509)
    assert options.certificate is not None  # the demo client certificate
    options = oneshot.dtls_options(
        parse_extclient("--cipher", "ECDHE-ECDSA-AES128-CCM8", "--anonymous", "--trust-all")
    )
    assert options.cipher_suites == (cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,)
    assert options.certificate is None and options.trust_store.trust_all


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["-a", "NONE"], "use a coap:// URI"),
     (["-a", "PSK", "--cipher", "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8"], "does not fit --auth PSK"),
     (["--cipher", "RC4-MD5"], "unsupported cipher suite 'RC4-MD5'"),
     (["-t", "/nonexistent.pem"], "cannot read /nonexistent.pem"),
     (["-a", "X509", "--private-key", "key.pem"], "--private-key needs --cert")],
)  # fmt: skip
def test_extclient_bad_dtls_options_are_one_line_errors(arguments, message):
    with pytest.raises(oneshot.ToolError) as error:
        oneshot.dtls_options(parse_extclient(*arguments))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert error.value.exit_code == 2


def extclient(*arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "extplugtest.tools.client", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(
    ("auth", "peer"),
    [("X509", "peer: O=extplugtest demo,CN=cf-client"), ("RPK", "peer: ni:///sha-256;")],
)
def test_extclient_with_client_certificate(certificate_server, auth, peer):
    host, port = certificate_server.local_address
    result = extclient("get", "-a", auth, f"coaps://{host}:{port}/mycontext")
    assert result.returncode == 0, result.stderr
    assert any(line.startswith(peer) for line in result.stdout.splitlines()), result.stdout


def test_extclient_refuses_an_untrusted_server(certificate_server, tmp_path):
    make_demo_pki(tmp_path)  # another CA
    host, port = certificate_server.local_address
    result = extclient("get", "-a", "X509", "-t", str(tmp_path / "ca.pem"),
                       f"coaps://{host}:{port}/mycontext")  # fmt: skip
    assert result.returncode == 1
    assert "unknown_ca" in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
