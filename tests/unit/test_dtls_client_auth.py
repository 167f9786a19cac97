"""Client certificates in the ECDHE_ECDSA handshake (RFC 5246 §7.4.4, §7.4.6, §7.4.8; RFC 7250),
sans-IO: our client's and our server's handshake objects pass records to each other in memory.

Hostile cases: a CertificateVerify signed by another key, a chain from an unknown CA (on either
side), an expired certificate, an issuer that is no CA, a client without a certificate when
one is NEEDED, and a ClientKeyExchange in place of the requested Certificate.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls._record import parse_datagram
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.dtls.handshake_header import AlertDescription, HandshakeType, iter_fragments
from extplugtest.dtls.handshake_server import (
    ClientAuth,
    DtlsConfig,
    HandshakeFailure,
    ServerHandshake,
    Session,
    plain_record,
)
from extplugtest.dtls.keys import EcdheKeyPair
from extplugtest.dtls.messages import (
    DTLS_1_0,
    CertificateType,
    ClientHello,
    ClientKeyExchange,
    ContentType,
    HelloVerifyRequest,
    NamedGroup,
    encode_message,
)
from extplugtest.dtls.pki import (
    CertificateCredentials,
    TrustStore,
    UntrustedCertificate,
    demo_ca_path,
    demo_client_credentials,
    demo_server_credentials,
    make_demo_pki,
    rpk_principal,
)
from extplugtest.dtls.reassembly import CompleteMessage

ECDSA_CCM8 = (cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,)
DEMO_CLIENT = "O=extplugtest demo,CN=cf-client"  # X500Principal.getName(): last RDN first
MAX_ROUNDS = 10  # flights in one handshake, bounded


def server_config(**options) -> DtlsConfig:
    return DtlsConfig(PskStore(), certificate=demo_server_credentials(), **options)


class Pair:
    """One client handshake and the server handshake it creates; ``run()`` passes the
    datagrams between them (the cookie exchange is done here, as the connector does it)."""

    def __init__(self, config: DtlsConfig, client: ClientHandshake, read_cid: bytes = b"srvcid"):
        self.config = config
        self.client = client
        self.read_cid = read_cid
        self.server: ServerHandshake | None = None
        #: every datagram the server sent, for tests that look at the wire
        self.server_datagrams: list[bytes] = []

    def _server_handshake(self, datagram: bytes) -> list[bytes]:
        (record,) = parse_datagram(datagram, cid_length=len(self.read_cid))
        ((header, body),) = list(iter_fragments(record.fragment))
        assert header.msg_type == HandshakeType.CLIENT_HELLO
        hello = ClientHello.decode(body)
        if not hello.cookie:  # stateless HelloVerifyRequest (RFC 6347 §4.2.1)
            request = encode_message(HelloVerifyRequest(DTLS_1_0, b"cookie"), header.message_seq)
            return [plain_record(ContentType.HANDSHAKE, record.seq, request, DTLS_1_0)]
        message = CompleteMessage(header.msg_type, header.message_seq, body)
        self.server = ServerHandshake(self.config, message, record.seq, self.read_cid, hello)
        return self.server.start()

    def _to_server(self, datagram: bytes) -> list[bytes]:
        if self.server is None:
            return self._server_handshake(datagram)
        out: list[bytes] = []
        for record in parse_datagram(datagram, cid_length=len(self.read_cid)):
            out += self.server.on_record(record)
        return out

    def run(self) -> tuple[ClientSession, Session]:
        to_server = [self.client.start()]
        for _ in range(MAX_ROUNDS):
            to_client: list[bytes] = []
            for datagram in to_server:
                to_client += self._to_server(datagram)
            self.server_datagrams += to_client
            to_server = []
            for datagram in to_client:
                to_server += self.client.on_datagram(datagram)
            if self.server is not None and self.server.done and self.client.done:
                for datagram in to_server:  # nothing is left, or the server ignores it
                    self._to_server(datagram)
                assert self.client.session is not None and self.server.session is not None
                return self.client.session, self.server.session
        raise AssertionError("the handshake did not complete")


def ecdsa_client(**options) -> ClientHandshake:
    return ClientHandshake(cipher_suites=ECDSA_CCM8, **options)


def check_keys_match(client: ClientSession, server: Session) -> None:
    """Application data sealed by one side opens on the other."""
    sealed = client.cipher.seal(1, client.next_write_seq, ContentType.APPLICATION_DATA, b"ping")
    assert server.cipher.open(sealed) == (ContentType.APPLICATION_DATA, b"ping")
    sealed = server.cipher.seal(1, server.next_write_seq, ContentType.APPLICATION_DATA, b"pong")
    assert client.cipher.open(sealed) == (ContentType.APPLICATION_DATA, b"pong")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> Path:
    """A second CA with a client and server of its own: not trusted by the demo trust store."""
    directory = tmp_path_factory.mktemp("other-pki")
    make_demo_pki(directory)
    return directory


def credentials_in(directory: Path, name: str) -> CertificateCredentials:
    return CertificateCredentials.from_pem(
        (directory / f"{name}.pem").read_bytes(), (directory / f"{name}.key").read_bytes()
    )


# -- good handshakes --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [ClientAuth.WANTED, ClientAuth.NEEDED])
def test_x509_client_certificate_is_verified_and_named(mode):
    pair = Pair(
        server_config(client_auth=mode), ecdsa_client(certificate=demo_client_credentials())
    )
    client, server = pair.run()
    check_keys_match(client, server)
    assert server.identity.decode() == DEMO_CLIENT
    assert server.peer_certificate_type == CertificateType.X509
    assert client.peer == "O=extplugtest demo,CN=cf-server"
    assert client.suite is cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8


def test_certificate_request_names_the_trusted_authorities():
    pair = Pair(server_config(), ecdsa_client())
    pair.run()
    assert pair.client.certificate_request is not None
    demo_ca = TrustStore.demo().anchors[0].subject.public_bytes()
    assert pair.client.certificate_request.authorities == (demo_ca,)
    assert pair.client.certificate_request.signature_algorithms == (0x0403,)


def test_wanted_without_client_certificate_stays_unauthenticated():
    client, server = Pair(server_config(client_auth=ClientAuth.WANTED), ecdsa_client()).run()
    check_keys_match(client, server)
    assert server.identity == b"" and server.peer_certificate_type is None


def test_none_sends_no_certificate_request():
    pair = Pair(
        server_config(client_auth=ClientAuth.NONE),
        ecdsa_client(certificate=demo_client_credentials()),
    )
    _, server = pair.run()
    assert pair.client.certificate_request is None
    assert server.identity == b""


def test_raw_public_key_client_and_server():
    credentials = demo_client_credentials()
    pair = Pair(
        server_config(client_auth=ClientAuth.NEEDED),
        ecdsa_client(certificate=credentials, certificate_types=(CertificateType.RAW_PUBLIC_KEY,)),
    )
    client, server = pair.run()
    check_keys_match(client, server)
    assert server.peer_certificate_type == CertificateType.RAW_PUBLIC_KEY
    assert server.identity.decode() == rpk_principal(credentials.public_key_info)
    assert server.identity.startswith(b"ni:///sha-256;")
    assert client.peer.startswith("ni:///sha-256;")


def test_trust_all_accepts_a_chain_of_an_unknown_ca(other_pki):
    config = server_config(
        client_auth=ClientAuth.NEEDED, trust_store=TrustStore(TrustStore.demo().anchors, True)
    )
    client_handshake = ecdsa_client(certificate=credentials_in(other_pki, "client"))
    _, server = Pair(config, client_handshake).run()
    assert server.identity.decode() == DEMO_CLIENT  # the same names, another CA


def test_trust_store_from_a_pem_bundle(other_pki):
    bundle = other_pki / "bundle.pem"
    bundle.write_bytes((other_pki / "ca.pem").read_bytes() + demo_ca_path().read_bytes())
    store = TrustStore.from_pem_file(bundle)
    assert len(store.anchors) == 2
    config = server_config(client_auth=ClientAuth.NEEDED, trust_store=store)
    Pair(config, ecdsa_client(certificate=credentials_in(other_pki, "client"))).run()
    Pair(config, ecdsa_client(certificate=demo_client_credentials())).run()


def test_ecdhe_psk_client():
    client_handshake = ClientHandshake(
        b"Client_identity",
        b"secretPSK",
        cipher_suites=(cs.TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,),
    )
    client, server = Pair(server_config(), client_handshake).run()
    check_keys_match(client, server)
    assert server.identity == b"Client_identity" and server.peer_certificate_type is None


# -- hostile cases ----------------------------------------------------------------------------


def test_needed_without_certificate_fails_with_handshake_failure():
    pair = Pair(server_config(client_auth=ClientAuth.NEEDED), ecdsa_client())
    with pytest.raises(HandshakeFailure) as failure:
        pair.run()
    assert failure.value.alert is AlertDescription.HANDSHAKE_FAILURE
    assert pair.server is not None and pair.server.session is None


def test_untrusted_client_chain_fails_with_unknown_ca(other_pki):
    pair = Pair(
        server_config(client_auth=ClientAuth.WANTED),
        ecdsa_client(certificate=credentials_in(other_pki, "client")),
    )
    with pytest.raises(HandshakeFailure) as failure:
        pair.run()
    assert failure.value.alert is AlertDescription.UNKNOWN_CA


@pytest.mark.parametrize("trust_all", [False, True])
def test_bad_certificate_verify_signature_fails_with_decrypt_error(trust_all):
    """The client shows the demo certificate but signs with another key; --trust-all
    accepts any chain but still checks the signature."""
    demo = demo_client_credentials()
    impostor = CertificateCredentials(ec.generate_private_key(ec.SECP256R1()), demo.chain)
    config = server_config(
        client_auth=ClientAuth.NEEDED, trust_store=TrustStore(TrustStore.demo().anchors, trust_all)
    )
    pair = Pair(config, ecdsa_client(certificate=impostor))
    with pytest.raises(HandshakeFailure) as failure:
        pair.run()
    assert failure.value.alert is AlertDescription.DECRYPT_ERROR
    assert "CertificateVerify" in str(failure.value)


@pytest.mark.parametrize(
    "chain",
    [(b"\x30\x03\x02\x01\x00",), (b"not DER at all",)],
    ids=["truncated", "garbage"],
)
def test_malformed_client_certificate_is_a_bad_certificate(chain):
    garbage = CertificateCredentials(ec.generate_private_key(ec.SECP256R1()), chain)
    pair = Pair(server_config(client_auth=ClientAuth.WANTED), ecdsa_client(certificate=garbage))
    with pytest.raises(HandshakeFailure) as failure:
        pair.run()
    assert failure.value.alert is AlertDescription.BAD_CERTIFICATE


def test_raw_public_key_of_another_curve_is_unsupported():
    key = ec.generate_private_key(ec.SECP384R1())
    credentials = CertificateCredentials(key, ())
    raw = (CertificateType.RAW_PUBLIC_KEY,)
    pair = Pair(server_config(), ecdsa_client(certificate=credentials, certificate_types=raw))
    with pytest.raises(HandshakeFailure) as failure:
        pair.run()
    assert failure.value.alert is AlertDescription.UNSUPPORTED_CERTIFICATE


def test_untrusted_server_chain_fails_on_the_client(other_pki):
    config = DtlsConfig(PskStore(), certificate=credentials_in(other_pki, "server"))
    with pytest.raises(HandshakeFailure) as failure:
        Pair(config, ecdsa_client()).run()
    assert failure.value.alert is AlertDescription.UNKNOWN_CA
    # ... and --trust-all on the client accepts it
    trust_all = TrustStore(trust_all=True)
    Pair(config, ecdsa_client(trust_store=trust_all)).run()


def test_expired_client_certificate_fails():
    demo = demo_client_credentials()
    leaf = x509.load_der_x509_certificate(demo.chain[0])
    store = TrustStore.demo()
    later = leaf.not_valid_after_utc + datetime.timedelta(days=1)
    with pytest.raises(UntrustedCertificate) as failure:
        store.verify_chain(demo.chain, now=later)
    assert failure.value.alert is AlertDescription.CERTIFICATE_EXPIRED


def test_chain_whose_issuer_is_no_ca_is_refused():
    """A leaf 'issued' by the demo client certificate (CA:FALSE) does not chain."""
    demo = demo_client_credentials()
    issuer = x509.load_der_x509_certificate(demo.chain[0])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(demo.private_key, hashes.SHA256())
    )
    chain = (forged.public_bytes(serialization.Encoding.DER), *demo.chain)
    with pytest.raises(UntrustedCertificate, match="not a CA"):
        TrustStore.demo().verify_chain(chain)


def test_client_key_exchange_before_the_requested_certificate_is_unexpected():
    """The server asked for a certificate (RFC 5246 §7.4.6): a ClientKeyExchange first is
    out of order."""
    pair = Pair(server_config(client_auth=ClientAuth.WANTED), ecdsa_client())
    hello_verify = pair._to_server(pair.client.start())
    (hello,) = pair.client.on_datagram(hello_verify[0])
    pair._to_server(hello)
    assert pair.server is not None and pair.server.expected == HandshakeType.CERTIFICATE
    point = EcdheKeyPair.generate(NamedGroup.SECP256R1).public
    exchange = encode_message(ClientKeyExchange(public=point), pair.server.hello_seq + 1)
    (record,) = parse_datagram(plain_record(ContentType.HANDSHAKE, 5, exchange))
    with pytest.raises(HandshakeFailure) as failure:
        pair.server.on_record(record)
    assert failure.value.alert is AlertDescription.UNEXPECTED_MESSAGE
