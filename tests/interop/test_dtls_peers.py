"""DTLS 1.2 against real peers: OpenSSL s_client/s_server, libcoap over OpenSSL and GnuTLS.

PSK and ECDHE_ECDSA; client certificates (our server with --client-auth NEEDED, the plugtest
endpoints' default; our client against ``openssl s_server -Verify``), session resumption
(``s_client -sess_out/-sess_in``), max_fragment_length (``s_client -maxfraglen``) and
record_size_limit (``gnutls-cli --recordsize``).

Certificate clients without a certificate use the extended endpoints: the plugtest ones need
one (client authentication NEEDED, inventory §1.3).
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time

import pytest
from tests.conftest import openssl_cipher

from extplugtest.coap._codec import Message, parse
from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.dtls.pki import (
    demo_ca_path,
    demo_certs_path,
    demo_client_credentials,
    make_demo_pki,
)

pytestmark = pytest.mark.interop

PSK_CCM8 = openssl_cipher("PSK-AES128-CCM8")
ECDSA_CCM8 = openssl_cipher("ECDHE-ECDSA-AES128-CCM8")


def run(command: list[str], stdin: str = "", timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)


def coaps_uri(server, path: str, plugtest: bool = True) -> str:
    port = (server.plugtest_port if plugtest else server.port) + 1
    return f"coaps://127.0.0.1:{port}/{path}"


@pytest.mark.requires_bin("coap-client-openssl")
@pytest.mark.parametrize(
    ("identity", "secret"), [("Client_identity", "secretPSK"), ("password", "sesame"),
                             ("cali.0123456789ABCDEF", ".fornium")],
)  # fmt: skip
def test_libcoap_openssl_get(default_server, identity, secret):
    result = run([shutil.which("coap-client-openssl") or "coap-client-openssl", "-B", "5",
                  "-u", identity, "-k", secret, coaps_uri(default_server, "test")])  # fmt: skip
    assert result.stdout.startswith("Type: 0 (CON)\nCode: 1 (GET)\nMID: "), result.stderr


@pytest.mark.requires_bin("coap-client-gnutls")
def test_libcoap_gnutls_block_wise(default_server):
    client = shutil.which("coap-client-gnutls") or "coap-client-gnutls"
    result = run([client, "-B", "5", "-u", "password", "-k", "sesame",
                  coaps_uri(default_server, "large")])  # fmt: skip
    assert result.stdout.startswith("/---") and len(result.stdout.strip()) > 1200, result.stderr


@pytest.mark.requires_bin("coap-client-openssl")
def test_mycontext_over_dtls(default_server):
    result = run([shutil.which("coap-client-openssl") or "coap-client-openssl", "-B", "5",
                  "-u", "Client_identity", "-k", "secretPSK",
                  coaps_uri(default_server, "mycontext", plugtest=False)])  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[:1] == ["ip: 127.0.0.1"], result.stderr
    assert "peer: Client_identity" in lines
    assert any(line.startswith("cipher-suite: TLS_PSK_WITH_AES_128_") for line in lines)
    assert "ext-master-secret: true" in lines and lines[-1].startswith("server: ")


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize("cipher", ["PSK-AES128-CCM8", "PSK-AES128-CCM", "PSK-AES128-GCM-SHA256"])
def test_openssl_s_client_psk(default_server, cipher):
    port = default_server.plugtest_port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-psk", "73656372657450534b", "-psk_identity", "Client_identity",
                  "-cipher", openssl_cipher(cipher)])  # fmt: skip
    assert f"Cipher is {cipher}" in result.stdout, result.stdout + result.stderr


@pytest.mark.requires_bin("openssl")
def test_wrong_psk_fails_with_decrypt_error(default_server):
    port = default_server.plugtest_port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-psk", "0102030405", "-psk_identity", "Client_identity",
                  "-cipher", PSK_CCM8])  # fmt: skip
    output = result.stdout + result.stderr
    assert "alert decrypt error" in output, output  # fatal alert 51 from the server


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-AES128-GCM-SHA256"])
@pytest.mark.parametrize("curve", ["X25519:prime256v1", "prime256v1"])
def test_openssl_s_client_ecdsa_verifies_the_demo_ca(default_server, cipher, curve):
    port = default_server.port + 1  # client authentication WANTED: no certificate is fine
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-CAfile", str(demo_ca_path()), "-cipher", openssl_cipher(cipher),
                  "-curves", curve])  # fmt: skip
    assert f"Cipher is {cipher}" in result.stdout, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout


@pytest.mark.parametrize("client", ["coap-client-openssl", "coap-client-gnutls"])
def test_libcoap_certificate_get(default_server, client):
    if shutil.which(client) is None:
        pytest.skip(f"{client} is not installed")
    result = run([client, "-B", "5", "-C", str(demo_ca_path()),
                  coaps_uri(default_server, "mycontext", plugtest=False)])  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[:1] == ["ip: 127.0.0.1"], result.stderr
    assert any(line.startswith("cipher-suite: TLS_ECDHE_ECDSA_WITH_AES_128_") for line in lines)


@pytest.mark.requires_bin("openssl")
def test_client_without_p256_gets_handshake_failure(default_server):
    """Our certificate key is P-256: a client that allows only X25519 cannot verify it."""
    port = default_server.port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-CAfile", str(demo_ca_path()), "-cipher", ECDSA_CCM8,
                  "-curves", "X25519"])  # fmt: skip
    assert "alert handshake failure" in result.stdout + result.stderr


@pytest.mark.requires_bin("openssl")
def test_anonymous_certificate_client_is_refused_on_the_plugtest_port(default_server):
    """Inventory §1.3: the plugtest endpoints keep client authentication NEEDED, the extended
    ones are WANTED (both by default)."""
    options = ["-CAfile", str(demo_ca_path()), "-cipher", ECDSA_CCM8]
    plugtest = run(["openssl", "s_client", "-dtls1_2", "-connect",
                    f"127.0.0.1:{default_server.plugtest_port + 1}", *options])  # fmt: skip
    assert "alert handshake failure" in plugtest.stdout + plugtest.stderr, plugtest.stdout
    extended = run(["openssl", "s_client", "-dtls1_2", "-connect",
                    f"127.0.0.1:{default_server.port + 1}", *options])  # fmt: skip
    output = extended.stdout + extended.stderr
    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-CCM8" in output and "alert" not in output


# -- record sizes (inventory §6.3) --------------------------------------------------------------


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize(
    ("credentials", "plugtest"),
    [(["-psk", "73656372657450534b", "-psk_identity", "Client_identity", "-cipher", PSK_CCM8],
      True),
     (["-CAfile", str(demo_ca_path()), "-cipher", ECDSA_CCM8], False)],
    ids=["psk", "ecdsa"],
)  # fmt: skip
def test_openssl_max_fragment_length_is_echoed(default_server, credentials, plugtest):
    """RFC 6066 §4: the server echoes -maxfraglen 512, and from then on every record keeps to
    it: OpenSSL drops longer ones, and the ECDSA flight's certificate (about 1 KB) is longer,
    so that handshake completes only if the server fragments it."""
    port = (default_server.plugtest_port if plugtest else default_server.port) + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-maxfraglen", "512", "-tlsextdebug", *credentials])  # fmt: skip
    output = result.stdout + result.stderr
    assert 'TLS server extension "max fragment length" (id=1), len=1' in output, output
    assert "New, TLSv1.2, Cipher is " in output and "alert" not in output


@pytest.mark.requires_bin("gnutls-cli")
def test_gnutls_record_size_limit_is_answered(default_server):
    """RFC 8449: GnuTLS offers record_size_limit and (512 being one of its lengths)
    max_fragment_length; the server answers only the former, with its own limit (2^14,
    Californium's default)."""
    result = run(["gnutls-cli", "--udp", "-p", str(default_server.plugtest_port + 1), "127.0.0.1",
                  "--pskusername", "Client_identity", "--pskkey", "73656372657450534b",
                  "--priority", "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:"
                  "+AES-128-CCM-8", "--recordsize", "512", "-d", "4"])  # fmt: skip
    output = result.stdout + result.stderr
    assert "Sending extension Record Size Limit/28" in output, output
    assert "Sending extension Maximum Record Size/1" in output  # offered too ...
    assert "Parsing extension 'Record Size Limit/28'" in output
    assert "record_size_limit 16384 negotiated" in output
    assert "Parsing extension 'Maximum Record Size/1'" not in output  # ... but not answered
    assert "- Handshake was completed" in output


# -- client certificates and resumption --------------------------------------------------------

CERTS = demo_certs_path()
CLIENT_CERTIFICATE = ["-cert", str(CERTS / "client.pem"), "-key", str(CERTS / "client.key")]
DEMO_CLIENT = "O=extplugtest demo,CN=cf-client"


@pytest.fixture(scope="module")
def needed_server(start_extserver):
    """The extended endpoints only, with DTLS client certificates required."""
    return start_extserver("--no-plugtest", "--no-tcp", "--client-auth", "NEEDED")


def names(output: str) -> str:
    """OpenSSL 3.0 prints a name as "CN = a, O = b", newer releases as "CN=a, O=b": the latter."""
    return output.replace(" = ", "=")


def s_client(port: int, *options: str, stdin: str = "") -> str:
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-CAfile", str(demo_ca_path()), *options], stdin=stdin)  # fmt: skip
    return result.stdout + result.stderr


@pytest.mark.requires_bin("openssl")
def test_openssl_client_certificate_with_client_auth_needed(needed_server):
    output = s_client(needed_server.port + 1, "-cipher", ECDSA_CCM8,
                      *CLIENT_CERTIFICATE)  # fmt: skip
    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-CCM8" in output, output
    assert "Acceptable client certificate CA names\nCN=cf-ca, O=extplugtest demo" in names(output)
    assert "Verify return code: 0 (ok)" in output


@pytest.mark.requires_bin("openssl")
def test_openssl_without_certificate_is_refused_when_needed(needed_server):
    output = s_client(needed_server.port + 1, "-cipher", ECDSA_CCM8)
    assert "alert handshake failure" in output, output


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A client certificate of another CA (the demo trust store does not know it)."""
    directory = tmp_path_factory.mktemp("other-ca")
    make_demo_pki(directory)
    return ["-cert", str(directory / "client.pem"), "-key", str(directory / "client.key")]


@pytest.mark.requires_bin("openssl")
def test_client_certificate_of_an_unknown_ca(start_extserver, needed_server, other_ca):
    """Refused against the demo trust store: unknown_ca (the chain's authority key identifier
    names the other CA, so s_client sends that CA, not the demo CA of the same name from
    -CAfile); accepted with --trust-all."""
    options = ["-cipher", ECDSA_CCM8, *other_ca]
    assert "alert unknown ca" in s_client(needed_server.port + 1, *options)
    trusting = start_extserver("--no-plugtest", "--no-tcp", "--client-auth", "NEEDED",
                               "--trust-all")  # fmt: skip
    output = s_client(trusting.port + 1, *options)
    assert "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES128-CCM8" in output, output


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize(
    "credentials",
    [["-psk", "73656372657450534b", "-psk_identity", "Client_identity",
      "-cipher", PSK_CCM8],
     ["-cipher", ECDSA_CCM8, *CLIENT_CERTIFICATE]],
    ids=["psk", "ecdsa"],
)  # fmt: skip
def test_openssl_resumes_the_session(needed_server, credentials, tmp_path):
    """RFC 5246 §7.3: the second s_client offers the saved session and gets it back."""
    port = needed_server.port + 1
    saved = tmp_path / "session.pem"
    first = s_client(port, *credentials, "-sess_out", str(saved))
    assert "New, TLSv1.2" in first and saved.exists(), first
    session_id = next(line for line in first.splitlines() if "Session-ID:" in line)
    second = s_client(port, *credentials, "-sess_in", str(saved))
    assert "Reused, TLSv1.2" in second, second
    assert session_id in second


@pytest.mark.parametrize("client", ["coap-client-openssl", "coap-client-gnutls"])
@pytest.mark.parametrize("trust", ["-C", "-R"])
def test_libcoap_client_certificate(needed_server, client, trust):
    """-c/-j: libcoap's client certificate and key; -C: CA to verify the server (and send
    as the client's chain), -R: root CA store only. The server names the client."""
    if shutil.which(client) is None:
        pytest.skip(f"{client} is not installed")
    result = run([client, "-B", "5", trust, str(demo_ca_path()),
                  "-c", str(CERTS / "client.pem"), "-j", str(CERTS / "client.key"),
                  f"coaps://127.0.0.1:{needed_server.port + 1}/mycontext"])  # fmt: skip
    assert f"peer: {DEMO_CLIENT}" in result.stdout.splitlines(), result.stdout + result.stderr
    assert "cipher-suite: TLS_ECDHE_ECDSA_WITH_AES_128_" in result.stdout


# -- our client against openssl s_server ---------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def s_server(port: int, *options: str) -> subprocess.Popen:
    """One connection; stdin stays open (s_server ends on EOF), the output goes to a pipe."""
    return subprocess.Popen(
        ["openssl", "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}",
         "-cert", str(CERTS / "server.pem"), "-key", str(CERTS / "server.key"),
         "-cipher", ECDSA_CCM8, "-naccept", "1", *options],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def read_until(process: subprocess.Popen, marker: str, timeout: float = 10) -> str:
    """The process's output until *marker* shows up, it exits, or the time is up."""
    output = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break  # the process ended
            output += chunk
    return output.decode(errors="replace")


def handshake_with(port: int, handshake: ClientHandshake) -> ClientSession:
    """Our client's handshake over a loopback socket; retries while s_server starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.connect(("127.0.0.1", port))
        outgoing = [handshake.start()]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not handshake.done:
            for datagram in outgoing:
                sock.send(datagram)
            try:
                outgoing = handshake.on_datagram(sock.recv(4096))
            except (TimeoutError, ConnectionRefusedError):
                outgoing = handshake.retransmit()  # not listening yet, or a lost datagram
        assert handshake.session is not None, "no handshake with s_server"
        session = handshake.session
        sock.send(session.cipher.seal(1, session.next_write_seq, 23, b"hello s_server\n"))
        return session


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize("with_certificate", [True, False])
def test_our_ecdsa_client_against_openssl_s_server(with_certificate):
    port = free_port()
    verify = ["-Verify", "1"] if with_certificate else ["-verify", "1"]  # required / asked for
    server = s_server(port, "-CAfile", str(demo_ca_path()), *verify)
    try:
        handshake = ClientHandshake(
            cipher_suites=(cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,),
            certificate=demo_client_credentials() if with_certificate else None,
            cid=None,  # OpenSSL 3.0 has no RFC 9146
        )
        session = handshake_with(port, handshake)
        assert session.peer == "O=extplugtest demo,CN=cf-server"
        output = read_until(server, "hello s_server")
    finally:
        server.kill()
        server.wait(timeout=5)
    assert "CIPHER is ECDHE-ECDSA-AES128-CCM8" in output, output
    assert "hello s_server" in output
    # s_server prints the client certificate it verified (none: an empty Certificate)
    assert ("subject=CN=cf-client, O=extplugtest demo" in names(output)) == with_certificate


# -- CoAP through openssl s_client: record sizes and application authorization ------------------


class CoapOverSClient:
    """``openssl s_client -quiet``: CoAP messages written to its stdin go out as one record
    each; the plaintext of every record it receives comes out of its stdout (one read per
    record, as long as one request is outstanding)."""

    def __init__(self, port: int, *options: str, stderr_path) -> None:
        self.stderr = stderr_path.open("wb")
        self.process = subprocess.Popen(
            ["openssl", "s_client", "-dtls1_2", "-quiet", "-connect", f"127.0.0.1:{port}",
             "-CAfile", str(demo_ca_path()), *options],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )  # fmt: skip
        self.stderr_path = stderr_path
        self.mid = 0x300

    def request(self, path: str, *queries: str, block2: int | None = None,
                timeout: float = 10) -> Message | None:  # fmt: skip
        """The response to a CON GET (None: none within *timeout*)."""
        self.mid += 1
        message = Message(0, 1, self.mid, self.mid.to_bytes(2, "big"))
        for segment in path.split("/"):
            message.add_option(11, segment)
        for query in queries:
            message.add_option(15, query)
        if block2 is not None:
            message.add_option(23, block2)
        assert self.process.stdin is not None and self.process.stdout is not None
        os.write(self.process.stdin.fileno(), message.to_bytes())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded; skips stale answers
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.process.stdout.fileno(), 65536)
            assert chunk, f"s_client ended: {self.stderr_path.read_text(errors='replace')}"
            response = parse(chunk)
            if response.mid == self.mid:
                return response
        return None

    def download(self, path: str, *queries: str) -> tuple[bytes, set[int]]:
        """A whole block-wise body and the SZX of its blocks."""
        response = self.request(path, *queries)
        assert response is not None, self.stderr_path.read_text(errors="replace")
        body, sizes = bytes(response.payload), set()
        for _ in range(200):  # bounded
            value = response.uint_option(23)
            if value is None:
                break
            num, more, szx = value >> 4, bool(value & 8), value & 7
            sizes.add(szx)
            if not more:
                break
            response = self.request(path, *queries, block2=((num + 1) << 4) | szx)
            assert response is not None, self.stderr_path.read_text(errors="replace")
            body += response.payload
        return body, sizes

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        self.stderr.close()


@pytest.fixture
def s_clients(tmp_path):
    clients: list[CoapOverSClient] = []

    def start(port: int, *options: str) -> CoapOverSClient:
        client = CoapOverSClient(port, *options, stderr_path=tmp_path / f"s_client{len(clients)}")
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()


PSK_OPTIONS = ["-psk", "73656372657450534b", "-psk_identity", "Client_identity",
               "-cipher", PSK_CCM8]  # fmt: skip


@pytest.mark.requires_bin("openssl")
def test_openssl_max_fragment_length_gets_large_answers(start_extserver, s_clients):
    """RFC 6066 §4: with -maxfraglen 512 OpenSSL refuses any longer record; the server answers
    a large /benchmark (extended port: the C fast path must leave it to Python) and the
    plugtest /large block-wise in blocks that fit into 512-byte records."""
    server = start_extserver("--benchmark", "--no-tcp")
    extended = s_clients(server.port + 1, "-maxfraglen", "512", *PSK_OPTIONS)
    body, sizes = extended.download("benchmark", "rlen=1000")
    assert len(body) == 1000 and body.startswith(b"hello observe ") and body.endswith(b"*" * 900)
    assert max(sizes) <= 4  # 256-byte blocks: a 512-byte one does not fit with its header
    small = extended.request("benchmark", "rlen=300")  # fits: one message, from the fast path
    assert small is not None and len(small.payload) == 300 and small.uint_option(23) is None
    plugtest = s_clients(server.plugtest_port + 1, "-maxfraglen", "512", *PSK_OPTIONS)
    body, sizes = plugtest.download("large")
    assert len(body) > 1024 and max(sizes) <= 4


AUTHORIZATION_PROPERTIES = "DTLS.APPLICATION_AUTHORIZATION_TIMEOUT=1s\n"


@pytest.fixture(scope="module")
def authorizing_server(start_extserver, tmp_path_factory):
    """The extended endpoints with a short DTLS.APPLICATION_AUTHORIZATION_TIMEOUT."""
    properties = tmp_path_factory.mktemp("authorization") / "Californium3.properties"
    properties.write_text(AUTHORIZATION_PROPERTIES)
    return start_extserver("--benchmark", "--no-plugtest", "--no-tcp", "--config", str(properties))


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize("auth", [True, False], ids=["auth", "no-auth"])
def test_anonymous_openssl_client_needs_benchmark_auth(authorizing_server, s_clients, auth):
    """Inventory §6.3 / §2.1: an ECDHE_ECDSA client without a certificate keeps its connection
    beyond DTLS.APPLICATION_AUTHORIZATION_TIMEOUT (1 s here) only after /benchmark?auth."""
    client = s_clients(authorizing_server.port + 1, "-cipher", ECDSA_CCM8)
    first = client.request("benchmark", *(["auth"] if auth else []))
    assert first is not None and first.code == 0x45, client.stderr_path.read_text()
    time.sleep(2.5)  # past the timeout (the connector's timer runs every 0.25 s)
    later = client.request("benchmark", timeout=3 if not auth else 10)
    if auth:
        assert later is not None and later.payload.startswith(b"hello observe ")
    else:
        assert later is None  # the connection is gone: the record is dropped
