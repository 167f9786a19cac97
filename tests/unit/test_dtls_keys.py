"""Key derivation, ECDHE, cookies, and whole handshakes against ``openssl s_client``.

The known-answer tests use the public TLS 1.2 PRF (P_SHA256) vector and OpenSSL's own
TLS1-PRF (``openssl kdf``). The handshake tests drive a real DTLS 1.2 client through
HelloVerifyRequest, the server flight, both Finished messages and one application record,
with a small linear server built from this package's building blocks (test-only record
protection with ``cryptography``'s AESCCM/AESGCM): the client only sends application data
after it has verified our Finished, so a decrypted "hello" proves that the PRF, the
(extended) master secret, the key block, verify_data, the messages and the transcript are
right.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac as std_hmac
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import openssl_cipher

from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls.ciphersuites import Cipher, CipherSuite, KeyExchange
from extplugtest.dtls.cookie import COOKIE_LENGTH, CookieGenerator, address_bytes
from extplugtest.dtls.handshake_header import (
    AlertDescription,
    DecodeError,
    HandshakeType,
    iter_fragments,
)
from extplugtest.dtls.keys import (
    CLIENT_FINISHED,
    SERVER_FINISHED,
    EcdheKeyPair,
    Transcript,
    ecdhe_psk_premaster_secret,
    ecdsa_sign_sha256,
    ecdsa_verify_sha256,
    extended_master_secret,
    key_block,
    master_secret,
    prf,
    psk_premaster_secret,
    verify_data,
)
from extplugtest.dtls.messages import (
    DTLS_1_0,
    DTLS_1_2,
    Alert,
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ChangeCipherSpec,
    ClientHello,
    ClientKeyExchange,
    ContentType,
    EcdhParams,
    EcPointFormatsExtension,
    ExtendedMasterSecretExtension,
    Extension,
    Finished,
    HandshakeMessage,
    HelloVerifyRequest,
    NamedGroup,
    RenegotiationInfoExtension,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchange,
    SignatureScheme,
    SupportedGroupsExtension,
    encode_message,
)
from extplugtest.dtls.reassembly import CompleteMessage, Reassembler, fragment_message

OPENSSL = shutil.which("openssl")
LOOPBACK = "127.0.0.1"
PSK_IDENTITY = b"Client_identity"
PSK = b"secretPSK"  # hex 73656372657450534b (peers.md)

# ---------------------------------------------------------------------------------------------
# PRF


# https://www.ietf.org/mail-archive/web/tls/current/msg03416.html (TLS 1.2 PRF, SHA-256)
PRF_SECRET = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
PRF_SEED = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
PRF_OUTPUT = bytes.fromhex(
    "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a6b301791e90d35c9c9a46b4e"
    "14baf9af0fa022f7077def17abfd3797c0564bab4fbc91666e9def9b97fce34f796789baa48082d122ee42c5"
    "a72e5a5110fff70187347b66"
)


def test_prf_known_answer() -> None:
    assert prf(PRF_SECRET, b"test label", PRF_SEED, 100) == PRF_OUTPUT


def test_prf_prefixes() -> None:
    for length in (0, 1, 31, 32, 33, 64, 99):
        assert prf(PRF_SECRET, b"test label", PRF_SEED, length) == PRF_OUTPUT[:length]


def _reference_p_sha256(secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 5246 §5 written out with the standard library."""
    out = b""
    a = seed
    while len(out) < length:
        a = std_hmac.new(secret, a, hashlib.sha256).digest()
        out += std_hmac.new(secret, a + seed, hashlib.sha256).digest()
    return out[:length]


@given(st.binary(max_size=80), st.binary(max_size=40), st.binary(max_size=80), st.integers(0, 200))
def test_prf_matches_reference(secret: bytes, label: bytes, seed: bytes, length: int) -> None:
    assert prf(secret, label, seed, length) == _reference_p_sha256(secret, label + seed, length)


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
def test_prf_matches_openssl_tls1_prf() -> None:
    rng = random.Random(7)
    for secret_len, seed_len, length in ((48, 64, 104), (16, 13, 12), (100, 1, 1), (1, 77, 200)):
        secret = rng.randbytes(secret_len)
        seed = rng.randbytes(seed_len)
        result = subprocess.run(
            [
                str(OPENSSL),
                "kdf",
                "-keylen",
                str(length),
                "-kdfopt",
                "digest:SHA256",
                "-kdfopt",
                f"hexsecret:{secret.hex()}",
                "-kdfopt",
                "seed:key expansion",
                "-kdfopt",
                f"hexseed:{seed.hex()}",
                "TLS1-PRF",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        expected = bytes.fromhex(result.stdout.strip().replace(":", ""))
        assert prf(secret, b"key expansion", seed, length) == expected


# ---------------------------------------------------------------------------------------------
# Secrets, key block, verify_data


def test_master_secrets_are_the_prf_with_their_labels() -> None:
    pms, cr, sr = os.urandom(48), os.urandom(32), os.urandom(32)
    assert master_secret(pms, cr, sr) == prf(pms, b"master secret", cr + sr, 48)
    session_hash = hashlib.sha256(b"transcript").digest()
    ems = extended_master_secret(pms, session_hash)
    assert ems == prf(pms, b"extended master secret", session_hash, 48)
    assert len(ems) == 48 and ems != master_secret(pms, cr, sr)


@pytest.mark.parametrize("suite", cs.ALL_SUITES, ids=lambda s: s.name)
def test_key_block_layout(suite: CipherSuite) -> None:
    master, cr, sr = os.urandom(48), os.urandom(32), os.urandom(32)
    block = prf(master, b"key expansion", sr + cr, 40)  # server_random first (§6.3)
    keys = key_block(master, cr, sr, suite)
    assert suite.key_block_length == 40
    assert keys.client_write_key == block[0:16]
    assert keys.server_write_key == block[16:32]
    assert keys.client_write_iv == block[32:36]
    assert keys.server_write_iv == block[36:40]


def test_verify_data() -> None:
    master = os.urandom(48)
    digest = hashlib.sha256(b"messages").digest()
    client = verify_data(master, CLIENT_FINISHED, digest)
    assert client == prf(master, b"client finished", digest, 12)
    assert client != verify_data(master, SERVER_FINISHED, digest)


def test_transcript_digest_is_non_destructive() -> None:
    transcript = Transcript()
    transcript.update(b"one")
    first = transcript.digest()
    assert first == transcript.digest() == hashlib.sha256(b"one").digest()
    transcript.update(b"two")
    assert transcript.digest() == hashlib.sha256(b"onetwo").digest()


def test_psk_premaster_secret() -> None:
    # RFC 4279 §2: uint16 N, N zeros, uint16 N, psk.
    assert psk_premaster_secret(PSK) == bytes.fromhex("0009" + "00" * 9 + "0009") + PSK
    assert psk_premaster_secret(b"") == bytes(4)


def test_ecdhe_psk_premaster_secret() -> None:
    # RFC 5489 §2: uint16 len(Z), Z, uint16 len(psk), psk; not the plain-PSK zeros.
    z = bytes(range(32))
    assert ecdhe_psk_premaster_secret(z, PSK) == b"\x00\x20" + z + b"\x00\x09" + PSK


# ---------------------------------------------------------------------------------------------
# ECDHE and ECDSA


@pytest.mark.parametrize("group", [NamedGroup.SECP256R1, NamedGroup.X25519])
def test_ecdhe_agreement(group: NamedGroup) -> None:
    server = EcdheKeyPair.generate(group)
    client = EcdheKeyPair.generate(group)
    expected_public = 65 if group == NamedGroup.SECP256R1 else 32
    assert len(server.public) == len(client.public) == expected_public
    shared = server.exchange(client.public)
    assert shared == client.exchange(server.public)
    assert len(shared) == 32  # secp256r1: the x coordinate with leading zeros kept


def _illegal(pair: EcdheKeyPair, public: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        pair.exchange(public)
    assert info.value.alert == AlertDescription.ILLEGAL_PARAMETER


def test_ecdhe_rejects_bad_secp256r1_points() -> None:
    pair = EcdheKeyPair.generate(NamedGroup.SECP256R1)
    good = EcdheKeyPair.generate(NamedGroup.SECP256R1).public
    _illegal(pair, b"")
    _illegal(pair, good[:-1])
    _illegal(pair, good + b"\x00")
    _illegal(pair, b"\x02" + good[1:33])  # compressed
    _illegal(pair, good[:-1] + bytes([good[-1] ^ 1]))  # not on the curve
    _illegal(pair, b"\x04" + bytes(64))  # the point (0, 0)


def test_ecdhe_rejects_bad_x25519_points() -> None:
    pair = EcdheKeyPair.generate(NamedGroup.X25519)
    _illegal(pair, bytes(31))
    _illegal(pair, bytes(33))
    _illegal(pair, bytes(32))  # low order: all-zero shared secret (RFC 8422 §5.11)
    _illegal(pair, b"\x01" + bytes(31))  # u = 1, low order too


def test_ecdhe_unsupported_group() -> None:
    with pytest.raises(ValueError):
        EcdheKeyPair.generate(NamedGroup.SECP384R1)


def test_ecdsa_sign_verify() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signature = ecdsa_sign_sha256(key, b"content")
    assert ecdsa_verify_sha256(key.public_key(), b"content", signature)
    assert not ecdsa_verify_sha256(key.public_key(), b"contenT", signature)


# ---------------------------------------------------------------------------------------------
# Cookies


def _hello(**changes: object) -> ClientHello:
    fields: dict[str, object] = {
        "client_version": DTLS_1_2,
        "random": bytes(range(32)),
        "session_id": b"",
        "cookie": b"",
        "cipher_suites": (0xC0A8, 0x00FF),
        "compression_methods": (0,),
        "extensions": (ExtendedMasterSecretExtension(),),
    }
    fields.update(changes)
    return ClientHello(**fields)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cookie_covers_address_and_hello_fields_but_not_extensions() -> None:
    cookies = CookieGenerator(clock=FakeClock())
    address = ("192.0.2.1", 5684)
    cookie = cookies.generate(address, _hello())
    assert len(cookie) == COOKIE_LENGTH
    assert cookies.verify(address, _hello(cookie=cookie))
    # Extensions may change between the two ClientHellos (tinydtls PR #230).
    assert cookies.verify(address, _hello(cookie=cookie, extensions=()))
    assert not cookies.verify(("192.0.2.1", 5685), _hello(cookie=cookie))
    assert not cookies.verify(("192.0.2.2", 5684), _hello(cookie=cookie))
    for change in (
        {"client_version": DTLS_1_0},
        {"random": bytes(32)},
        {"session_id": b"\x01"},
        {"cipher_suites": (0xC0A8,)},
        {"compression_methods": (0, 1)},
    ):
        assert not cookies.verify(address, _hello(cookie=cookie, **change)), change
    assert not cookies.verify(address, _hello(cookie=cookie[:-1]))
    assert not cookies.verify(address, _hello(cookie=b""))


def test_cookie_is_hmac_sha256_over_californium_layout() -> None:
    secret = bytes(range(32))
    cookies = CookieGenerator(random=lambda n: secret[:n])
    hello = _hello(session_id=b"\xaa\xbb")
    message = (
        bytes([192, 0, 2, 1]) + (5684).to_bytes(2, "big")
        + b"\xfe\xfd" + bytes(range(32)) + b"\x02\xaa\xbb"
        + b"\x00\x04\xc0\xa8\x00\xff" + b"\x01\x00"
    )  # fmt: skip
    expected = std_hmac.new(secret, message, hashlib.sha256).digest()
    assert cookies.generate(("192.0.2.1", 5684), hello) == expected


def test_cookie_ipv6_address() -> None:
    assert address_bytes(("::1", 1, 0, 0)) == bytes(15) + b"\x01\x00\x01"
    assert address_bytes(("fe80::1%eth0", 2, 0, 3))[:2] == b"\xfe\x80"
    cookies = CookieGenerator()
    cookie = cookies.generate(("::1", 5684, 0, 0), _hello())
    assert cookies.verify(("::1", 5684, 0, 0), _hello(cookie=cookie))
    assert not cookies.verify(("::2", 5684, 0, 0), _hello(cookie=cookie))


def test_cookie_secret_rotation() -> None:
    clock = FakeClock()
    cookies = CookieGenerator(lifetime=60, clock=clock)
    address = (LOOPBACK, 40000)
    old = cookies.generate(address, _hello())
    clock.now += 59
    assert cookies.verify(address, _hello(cookie=old))
    clock.now += 2  # rotated: the previous secret is still accepted
    new = cookies.generate(address, _hello())
    assert new != old
    assert cookies.verify(address, _hello(cookie=old))
    assert cookies.verify(address, _hello(cookie=new))
    clock.now += 61  # rotated again: the first secret is gone
    assert not cookies.verify(address, _hello(cookie=old))
    assert cookies.verify(address, _hello(cookie=new))
    clock.now += 500  # idle for several periods: nothing old survives
    assert not cookies.verify(address, _hello(cookie=new))


def test_cookie_rejects_bad_lifetime() -> None:
    with pytest.raises(ValueError):
        CookieGenerator(lifetime=0)


# A test-only linear DTLS 1.2 server, to run real handshakes with openssl s_client


def _record(content_type: int, version: int, epoch: int, seq: int, fragment: bytes) -> bytes:
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + ((epoch << 48) | seq).to_bytes(8, "big")
        + len(fragment).to_bytes(2, "big")
        + fragment
    )


@dataclass
class Record:
    content_type: int
    version: int
    epoch: int
    seq: int
    fragment: bytes


def _records(datagram: bytes) -> list[Record]:
    out = []
    pos = 0
    while len(datagram) - pos >= 13:
        length = int.from_bytes(datagram[pos + 11 : pos + 13], "big")
        out.append(
            Record(
                datagram[pos],
                int.from_bytes(datagram[pos + 1 : pos + 3], "big"),
                int.from_bytes(datagram[pos + 3 : pos + 5], "big"),
                int.from_bytes(datagram[pos + 5 : pos + 11], "big"),
                datagram[pos + 13 : pos + 13 + length],
            )
        )
        pos += 13 + length
    return out


class RecordCipher:
    """RFC 5246 §6.2.3.3 AEAD with the RFC 6655 / RFC 5288 nonce (4-byte IV ‖ epoch ‖ seq)."""

    def __init__(self, suite: CipherSuite, key: bytes, iv: bytes) -> None:
        if suite.cipher is Cipher.AES_128_GCM:
            self.aead: AESCCM | AESGCM = AESGCM(key)
        else:
            self.aead = AESCCM(key, tag_length=suite.tag_length)
        self.iv = iv
        self.tag_length = suite.tag_length

    @staticmethod
    def _aad(content_type: int, epoch: int, seq: int, length: int) -> bytes:
        return (
            ((epoch << 48) | seq).to_bytes(8, "big")
            + bytes([content_type])
            + DTLS_1_2.to_bytes(2, "big")
            + length.to_bytes(2, "big")
        )

    def seal(self, content_type: int, epoch: int, seq: int, plaintext: bytes) -> bytes:
        explicit = ((epoch << 48) | seq).to_bytes(8, "big")
        aad = self._aad(content_type, epoch, seq, len(plaintext))
        return explicit + self.aead.encrypt(self.iv + explicit, plaintext, aad)

    def open(self, record: Record) -> bytes:
        explicit, ciphertext = record.fragment[:8], record.fragment[8:]
        aad = self._aad(
            record.content_type, record.epoch, record.seq, len(ciphertext) - self.tag_length
        )
        return self.aead.decrypt(self.iv + explicit, ciphertext, aad)


@dataclass
class Credentials:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


@dataclass
class Scenario:
    suite: CipherSuite
    client_args: list[str] = field(default_factory=list)
    allow_ems: bool = True
    credentials: Credentials | None = None  # the server's, for ECDHE_ECDSA
    prefer_group: int = NamedGroup.X25519
    max_fragment_size: int | None = None  # fragment our flight with fragment_message
    shuffle_seed: int | None = None  # send our flight's records in a shuffled order
    client_auth: bool = False  # send a CertificateRequest


@dataclass
class HandshakeResult:
    extended_master_secret: bool
    group: int | None
    application_data: bytes
    client_certificate: bytes | None
    outcomes: dict[str, int]
    client_output: str = ""


class LinearServer:
    """One handshake with one client, step by step; not a state machine. Waits are bounded
    by ``deadline``, and it gives up as soon as the client process exits."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes], deadline: float):
        self.sock = sock
        self.proc = proc
        self.deadline = deadline
        self.address: tuple[str, int] | None = None
        self.reassembler = Reassembler(next_seq=0)
        self.read_cipher: RecordCipher | None = None
        self.write_cipher: RecordCipher | None = None
        self.pending_epoch1: list[Record] = []
        self.application_data: list[bytes] = []
        self.write_seq = [0, 0]  # per epoch
        self.last_client_seq = 0  # of the latest epoch-0 handshake record
        self.outcomes: dict[str, int] = {}

    def _receive(self) -> list[Record]:
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("handshake did not finish in time")
            if self.proc.poll() is not None:
                raise AssertionError(f"the client exited with {self.proc.returncode}")
            self.sock.settimeout(min(remaining, 0.5))
            try:
                datagram, address = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if self.address is None:
                self.address = address
            return _records(datagram)

    def _process(self, record: Record) -> None:
        if record.epoch == 1 and self.read_cipher is None:
            self.pending_epoch1.append(record)  # keys not derived yet
            return
        payload = record.fragment
        if record.epoch == 1:
            assert self.read_cipher is not None
            payload = self.read_cipher.open(record)
        if record.content_type == ContentType.HANDSHAKE:
            if record.epoch == 0:
                self.last_client_seq = record.seq
            for header, fragment in iter_fragments(payload):
                outcome = self.reassembler.add(header, fragment).value
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        elif record.content_type == ContentType.ALERT:
            raise AssertionError(f"client sent alert {Alert.decode(payload)}")
        elif record.content_type == ContentType.APPLICATION_DATA:
            self.application_data.append(payload)

    def first_record(self) -> Record:
        """The first ClientHello record (before any state exists)."""
        while True:
            for record in self._receive():
                if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
                    return record

    def message(self) -> CompleteMessage:
        """The next handshake message in order."""
        while True:
            complete = self.reassembler.pop()
            if complete is not None:
                return complete
            for record in self._receive():
                self._process(record)

    def set_read_cipher(self, cipher: RecordCipher) -> None:
        self.read_cipher = cipher
        pending, self.pending_epoch1 = self.pending_epoch1, []
        for record in pending:
            self._process(record)

    def wait_application_data(self) -> bytes:
        while not self.application_data:
            for record in self._receive():
                self._process(record)
        return self.application_data[0]

    def send(self, records: list[bytes]) -> None:
        assert self.address is not None
        for record in records:
            self.sock.sendto(record, self.address)

    def plain(self, content_type: int, payload: bytes, version: int = DTLS_1_2) -> bytes:
        seq = self.write_seq[0]
        self.write_seq[0] += 1
        return _record(content_type, version, 0, seq, payload)

    def protected(self, content_type: int, payload: bytes) -> bytes:
        assert self.write_cipher is not None
        seq = self.write_seq[1]
        self.write_seq[1] += 1
        sealed = self.write_cipher.seal(content_type, 1, seq, payload)
        return _record(content_type, DTLS_1_2, 1, seq, sealed)


def _server_hello_extensions(hello: ClientHello, use_ems: bool, suite: CipherSuite) -> tuple:
    extensions: list[Extension] = []
    if use_ems:
        extensions.append(ExtendedMasterSecretExtension())
    scsv = cs.TLS_EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites
    if scsv or hello.extension(RenegotiationInfoExtension):
        extensions.append(RenegotiationInfoExtension())  # RFC 5746 §3.6
    if suite.uses_ecdhe and hello.extension(EcPointFormatsExtension):
        extensions.append(EcPointFormatsExtension())
    return tuple(extensions)


def run_handshake(scenario: Scenario) -> HandshakeResult:
    assert OPENSSL is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
        command = [OPENSSL, "s_client", "-dtls1_2", "-connect", f"{LOOPBACK}:{port}"]
        command += ["-cipher", openssl_cipher(scenario.suite.openssl_name), *scenario.client_args]
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            result = _serve(LinearServer(sock, proc, time.monotonic() + 20), scenario)
        except BaseException:
            proc.kill()
            output = proc.communicate(timeout=10)[0].decode(errors="replace")
            print(f"$ {' '.join(command)}\n{output}")
            raise
        proc.kill()
        result.client_output = proc.communicate(timeout=10)[0].decode(errors="replace")
        return result


def _serve(server: LinearServer, scenario: Scenario) -> HandshakeResult:
    suite = scenario.suite
    # Flight 1 -> 2: ClientHello without cookie, HelloVerifyRequest (RFC 6347 §4.2.1). The
    # HVR reuses the ClientHello's record sequence number and message_seq.
    first = server.first_record()
    (header, body), *_ = iter_fragments(first.fragment)
    hello1 = ClientHello.decode(body)
    assert hello1.cookie == b"" and header.message_seq == 0
    assert server.address is not None
    cookies = CookieGenerator()
    hvr = HelloVerifyRequest(DTLS_1_0, cookies.generate(server.address, hello1))
    hvr_bytes = encode_message(hvr, header.message_seq)
    server.send([_record(ContentType.HANDSHAKE, DTLS_1_0, 0, first.seq, hvr_bytes)])
    server.reassembler.reset(header.message_seq + 1)

    # Flight 3: ClientHello with the cookie; the transcript starts here.
    message = server.message()
    assert message.msg_type == HandshakeType.CLIENT_HELLO
    hello = ClientHello.decode(message.body)
    assert cookies.verify(server.address, hello), "openssl's second ClientHello: bad cookie"
    assert suite.code in hello.cipher_suites
    transcript = Transcript()
    transcript_bytes = bytearray()  # for CertificateVerify, which signs the messages

    def hash_message(encoded: bytes) -> None:
        transcript.update(encoded)
        transcript_bytes.extend(encoded)

    hash_message(message.to_bytes())
    use_ems = scenario.allow_ems and hello.extension(ExtendedMasterSecretExtension) is not None

    # Flight 4: ServerHello [Certificate ServerKeyExchange [CertificateRequest]]
    # ServerHelloDone.
    server_random = os.urandom(32)
    extensions = _server_hello_extensions(hello, use_ems, suite)
    flight: list[HandshakeMessage] = [
        ServerHello(DTLS_1_2, server_random, os.urandom(32), suite.code, extensions=extensions)
    ]
    pair = None
    group = None
    if suite.key_exchange is KeyExchange.ECDHE_ECDSA:
        credentials = scenario.credentials
        assert credentials is not None
        groups_ext = hello.extension(SupportedGroupsExtension)
        offered = groups_ext.groups if groups_ext else (NamedGroup.SECP256R1,)
        group = scenario.prefer_group if scenario.prefer_group in offered else 23
        pair = EcdheKeyPair.generate(group)
        params = EcdhParams(group, pair.public)
        signed = ServerKeyExchange(params=params).signed_content(hello.random, server_random)
        flight.append(Certificate((credentials.der,)))
        flight.append(
            ServerKeyExchange(
                params=params,
                signature_algorithm=SignatureScheme.ECDSA_SECP256R1_SHA256,
                signature=ecdsa_sign_sha256(credentials.key, signed),
            )
        )
        if scenario.client_auth:
            flight.append(CertificateRequest())
    flight.append(ServerHelloDone())
    # The server's message_seq: 0 went to the HVR, so the ServerHello takes the second
    # ClientHello's (normally 1; plugtest-spec §4), and so does its first record's seq.
    next_seq = message.message_seq
    server.write_seq[0] = server.last_client_seq
    records = []
    for item in flight:
        encoded = encode_message(item, next_seq)
        hash_message(encoded)
        if scenario.max_fragment_size is None:
            records.append(server.plain(ContentType.HANDSHAKE, encoded))
        else:
            for fragment in fragment_message(
                item.MSG_TYPE, next_seq, item.encode(), scenario.max_fragment_size
            ):
                records.append(server.plain(ContentType.HANDSHAKE, fragment))
        next_seq += 1
    if scenario.shuffle_seed is not None:
        random.Random(scenario.shuffle_seed).shuffle(records)
    server.send(records)

    # Flight 5: [Certificate] ClientKeyExchange [CertificateVerify] ChangeCipherSpec Finished.
    message = server.message()
    client_certificate = None
    if scenario.client_auth:
        assert message.msg_type == HandshakeType.CERTIFICATE
        chain = Certificate.decode(message.body).certificates
        assert chain, "the client sent no certificate"
        client_certificate = chain[0]
        hash_message(message.to_bytes())
        message = server.message()
    assert message.msg_type == HandshakeType.CLIENT_KEY_EXCHANGE
    key_exchange = ClientKeyExchange.decode(message.body, suite.key_exchange)
    if suite.key_exchange is KeyExchange.PSK:
        assert key_exchange.identity == PSK_IDENTITY
        pre_master = psk_premaster_secret(PSK)
    else:
        assert pair is not None and key_exchange.public is not None
        pre_master = pair.exchange(key_exchange.public)
    hash_message(message.to_bytes())
    # RFC 7627 §3: the session hash ends with the ClientKeyExchange (before CertificateVerify).
    if use_ems:
        master = extended_master_secret(pre_master, transcript.digest())
    else:
        master = master_secret(pre_master, hello.random, server_random)
    if client_certificate is not None:
        message = server.message()
        assert message.msg_type == HandshakeType.CERTIFICATE_VERIFY
        verify = CertificateVerify.decode(message.body)
        assert verify.signature_algorithm == SignatureScheme.ECDSA_SECP256R1_SHA256
        public_key = x509.load_der_x509_certificate(client_certificate).public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert ecdsa_verify_sha256(public_key, bytes(transcript_bytes), verify.signature)
        hash_message(message.to_bytes())
    keys = key_block(master, hello.random, server_random, suite)
    server.write_cipher = RecordCipher(suite, keys.server_write_key, keys.server_write_iv)
    expected_client_finished = verify_data(master, CLIENT_FINISHED, transcript.digest())
    server.set_read_cipher(RecordCipher(suite, keys.client_write_key, keys.client_write_iv))
    message = server.message()
    assert message.msg_type == HandshakeType.FINISHED
    assert Finished.decode(message.body).verify_data == expected_client_finished
    hash_message(message.to_bytes())

    # Flight 6: ChangeCipherSpec, Finished.
    finished = Finished(verify_data(master, SERVER_FINISHED, transcript.digest()))
    server.send(
        [
            server.plain(ContentType.CHANGE_CIPHER_SPEC, ChangeCipherSpec().encode()),
            server.protected(ContentType.HANDSHAKE, encode_message(finished, next_seq)),
        ]
    )

    # The client only sends application data once it accepted our Finished.
    stdin = server.proc.stdin
    assert stdin is not None
    stdin.write(b"hello\n")
    stdin.flush()
    data = server.wait_application_data()
    return HandshakeResult(use_ems, group, data, client_certificate, dict(server.outcomes))


def _self_signed(common_name: str) -> Credentials:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return Credentials(key, certificate)


@pytest.fixture(scope="module")
def server_credentials() -> Credentials:
    return _self_signed("extplugtest test server")


@pytest.fixture(scope="module")
def client_cert_args(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """s_client arguments for a client certificate with a long subject (so that the
    Certificate message needs fragmenting at a small MTU)."""
    credentials = _self_signed("extplugtest test client " + "x" * 40)
    directory = tmp_path_factory.mktemp("client-cert")
    cert_path = directory / "client.pem"
    key_path = directory / "client.key"
    cert_path.write_bytes(credentials.certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        credentials.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ["-cert", str(cert_path), "-key", str(key_path)]


PSK_ARGS = ["-psk", PSK.hex(), "-psk_identity", PSK_IDENTITY.decode()]
PSK_SUITES = [s for s in cs.ALL_SUITES if s.key_exchange is KeyExchange.PSK]
ECDSA_SUITES = [s for s in cs.ALL_SUITES if s.key_exchange is KeyExchange.ECDHE_ECDSA]
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")


@needs_openssl
@pytest.mark.parametrize("suite", PSK_SUITES, ids=lambda s: s.name)
def test_psk_handshake_with_openssl(suite: CipherSuite) -> None:
    result = run_handshake(Scenario(suite, PSK_ARGS))
    assert result.application_data == b"hello\n"
    assert result.extended_master_secret  # OpenSSL offers EMS by default
    assert suite.openssl_name in result.client_output


@needs_openssl
def test_psk_handshake_without_extended_master_secret() -> None:
    scenario = Scenario(cs.TLS_PSK_WITH_AES_128_CCM_8, PSK_ARGS, allow_ems=False)
    result = run_handshake(scenario)
    assert result.application_data == b"hello\n"
    assert not result.extended_master_secret


@needs_openssl
@pytest.mark.parametrize("suite", ECDSA_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("group", [NamedGroup.SECP256R1, NamedGroup.X25519], ids=str)
def test_ecdsa_handshake_with_openssl(
    suite: CipherSuite, group: NamedGroup, server_credentials: Credentials
) -> None:
    scenario = Scenario(suite, credentials=server_credentials, prefer_group=group)
    result = run_handshake(scenario)
    assert result.application_data == b"hello\n"
    assert result.group == group


@needs_openssl
def test_fragmented_and_reordered_server_flight(server_credentials: Credentials) -> None:
    # Our fragments (fragment_message), sent out of order: OpenSSL must reassemble them.
    scenario = Scenario(
        cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        credentials=server_credentials,
        max_fragment_size=60,
        shuffle_seed=3,
    )
    assert run_handshake(scenario).application_data == b"hello\n"


@needs_openssl
def test_client_certificate_fragmented_by_openssl(
    server_credentials: Credentials, client_cert_args: list[str]
) -> None:
    # CertificateRequest, the client's Certificate (fragmented: OpenSSL's minimum MTU is
    # 256) and CertificateVerify over the transcript up to the ClientKeyExchange.
    scenario = Scenario(
        cs.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ["-mtu", "256", *client_cert_args],
        credentials=server_credentials,
        client_auth=True,
    )
    result = run_handshake(scenario)
    assert result.application_data == b"hello\n"
    assert result.client_certificate is not None and len(result.client_certificate) > 256
    assert result.extended_master_secret
    assert result.outcomes["accepted"] > 5  # the fragments of the Certificate


def test_ecdhe_psk_key_exchange_round_trip() -> None:
    # No available peer implements ECDHE_PSK with CCM_8 (0xD003); check both sides agree.
    server_pair = EcdheKeyPair.generate(NamedGroup.SECP256R1)
    client_pair = EcdheKeyPair.generate(NamedGroup.SECP256R1)
    kx = KeyExchange.ECDHE_PSK
    ske = ServerKeyExchange(hint=b"", params=EcdhParams(NamedGroup.SECP256R1, server_pair.public))
    ske2 = ServerKeyExchange.decode(ske.encode(), kx)
    assert ske2 == ske and ske.encode()[:2] == b"\x00\x00"  # the empty hint is still there
    cke = ClientKeyExchange.decode(ClientKeyExchange(PSK_IDENTITY, client_pair.public).encode(), kx)
    assert ske2.params is not None and cke.public is not None
    client_pms = ecdhe_psk_premaster_secret(client_pair.exchange(ske2.params.public), PSK)
    server_pms = ecdhe_psk_premaster_secret(server_pair.exchange(cke.public), PSK)
    assert client_pms == server_pms and len(client_pms) == 2 + 32 + 2 + len(PSK)
