"""DTLS handshake messages, extensions, header, ChangeCipherSpec and Alert.

* round trips (hypothesis) for every message type and extension;
* every truncation and any trailing byte is rejected with ``DecodeError``;
* field checks with the alert to send (decode_error / illegal_parameter);
* real ClientHellos: a stored OpenSSL 3.0 capture, and live captures from
  ``openssl s_client`` (and ``gnutls-cli`` if installed) on a loopback socket;
* a short run of the atheris target ``tests/fuzz/fuzz_dtls_handshake.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import shutil
import socket
import subprocess
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import openssl_cipher

from extplugtest.dtls.ciphersuites import KeyExchange
from extplugtest.dtls.handshake_header import (
    AlertDescription,
    DecodeError,
    HandshakeHeader,
    HandshakeType,
    iter_fragments,
)
from extplugtest.dtls.messages import (
    DTLS_1_0,
    DTLS_1_2,
    MAX_PLAINTEXT,
    Alert,
    AlertLevel,
    Certificate,
    CertificateRequest,
    CertificateType,
    CertificateVerify,
    ChangeCipherSpec,
    ClientCertificateTypeExtension,
    ClientHello,
    ClientKeyExchange,
    ConnectionIdExtension,
    EcdhParams,
    EcPointFormatsExtension,
    ExtendedMasterSecretExtension,
    Extension,
    ExtensionType,
    Finished,
    HelloVerifyRequest,
    MaxFragmentLengthExtension,
    NamedGroup,
    RecordSizeLimitExtension,
    RenegotiationInfoExtension,
    ServerCertificateTypeExtension,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchange,
    ServerNameExtension,
    SignatureAlgorithmsExtension,
    SignatureScheme,
    SupportedGroupsExtension,
    UnknownExtension,
    decode_handshake,
    encode_message,
)

LOOPBACK = "127.0.0.1"
FUZZ_TARGET = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_dtls_handshake.py"

# ---------------------------------------------------------------------------------------------
# Strategies

u8s = st.integers(0, 0xFF)
u16s = st.integers(0, 0xFFFF)
randoms = st.binary(min_size=32, max_size=32)
session_ids = st.binary(max_size=32)
KNOWN_TYPES = {int(t) for t in ExtensionType} - {
    ExtensionType.ENCRYPT_THEN_MAC,
    ExtensionType.SESSION_TICKET,
}


def extension_strategy(from_server: bool) -> st.SearchStrategy[Extension]:
    cert_types = st.tuples(u8s) if from_server else st.lists(u8s, min_size=1, max_size=4).map(tuple)
    names = st.lists(
        st.tuples(u8s, st.binary(min_size=1, max_size=20)),
        min_size=0 if from_server else 1,
        max_size=0 if from_server else 3,
        unique_by=lambda item: item[0],
    ).map(tuple)
    u16_lists = st.lists(u16s, min_size=1, max_size=10).map(tuple)
    return st.one_of(
        st.builds(ServerNameExtension, names),
        st.builds(MaxFragmentLengthExtension, st.integers(1, 4)),
        st.builds(SupportedGroupsExtension, u16_lists),
        st.builds(EcPointFormatsExtension, st.lists(u8s, min_size=1, max_size=4).map(tuple)),
        st.builds(SignatureAlgorithmsExtension, u16_lists),
        st.builds(ClientCertificateTypeExtension, cert_types),
        st.builds(ServerCertificateTypeExtension, cert_types),
        st.just(ExtendedMasterSecretExtension()),
        st.builds(RecordSizeLimitExtension, st.integers(64, 0xFFFF)),
        st.builds(ConnectionIdExtension, st.binary(max_size=255)),
        st.builds(RenegotiationInfoExtension, st.binary(max_size=255)),
        st.builds(
            UnknownExtension, u16s.filter(lambda t: t not in KNOWN_TYPES), st.binary(max_size=40)
        ),
    )


def extension_lists(from_server: bool) -> st.SearchStrategy[tuple[Extension, ...]]:
    return st.lists(
        extension_strategy(from_server), max_size=8, unique_by=lambda ext: ext.ext_type
    ).map(tuple)


client_hellos = st.builds(
    ClientHello,
    u16s,
    randoms,
    session_ids,
    st.binary(max_size=255),
    st.lists(u16s, min_size=1, max_size=30).map(tuple),
    st.lists(u8s, min_size=1, max_size=3).map(tuple),
    extension_lists(False),
)
server_hellos = st.builds(ServerHello, u16s, randoms, session_ids, u16s, u8s, extension_lists(True))
ecdh_params = st.builds(EcdhParams, u16s, st.binary(min_size=1, max_size=255))


def server_key_exchanges(kx: KeyExchange) -> st.SearchStrategy[ServerKeyExchange]:
    hints = st.binary(max_size=64)
    if kx is KeyExchange.PSK:
        return st.builds(ServerKeyExchange, hint=hints)
    if kx is KeyExchange.ECDHE_PSK:
        return st.builds(ServerKeyExchange, hint=hints, params=ecdh_params)
    return st.builds(
        ServerKeyExchange,
        params=ecdh_params,
        signature_algorithm=u16s,
        signature=st.binary(max_size=80),
    )


def client_key_exchanges(kx: KeyExchange) -> st.SearchStrategy[ClientKeyExchange]:
    identities = st.binary(max_size=128)
    points = st.binary(min_size=1, max_size=255)
    if kx is KeyExchange.PSK:
        return st.builds(ClientKeyExchange, identity=identities)
    if kx is KeyExchange.ECDHE_PSK:
        return st.builds(ClientKeyExchange, identity=identities, public=points)
    return st.builds(ClientKeyExchange, public=points)


certificates_x509 = st.builds(
    Certificate,
    st.lists(st.binary(min_size=1, max_size=100), max_size=4).map(tuple),
    st.just(CertificateType.X509),
)
certificates_rpk = st.builds(
    Certificate,
    st.lists(st.binary(min_size=1, max_size=100), max_size=1).map(tuple),
    st.just(CertificateType.RAW_PUBLIC_KEY),
)
certificate_requests = st.builds(
    CertificateRequest,
    st.lists(u8s, min_size=1, max_size=4).map(tuple),
    st.lists(u16s, min_size=1, max_size=10).map(tuple),
    st.lists(st.binary(min_size=1, max_size=40), max_size=3).map(tuple),
)

#: (strategy, decode(body) -> message) for every message type and decoding context.
CASES: dict[str, tuple[st.SearchStrategy[Any], Any]] = {
    "client_hello": (client_hellos, ClientHello.decode),
    "server_hello": (server_hellos, ServerHello.decode),
    "hello_verify_request": (
        st.builds(HelloVerifyRequest, u16s, st.binary(max_size=255)),
        HelloVerifyRequest.decode,
    ),
    "certificate_x509": (certificates_x509, Certificate.decode),
    "certificate_rpk": (
        certificates_rpk,
        lambda body: Certificate.decode(body, CertificateType.RAW_PUBLIC_KEY),
    ),
    "certificate_request": (certificate_requests, CertificateRequest.decode),
    "server_hello_done": (st.just(ServerHelloDone()), ServerHelloDone.decode),
    "certificate_verify": (
        st.builds(CertificateVerify, u16s, st.binary(max_size=80)),
        CertificateVerify.decode,
    ),
    "finished": (st.builds(Finished, st.binary(min_size=12, max_size=12)), Finished.decode),
}
for _kx in KeyExchange:
    CASES[f"server_key_exchange_{_kx.name}"] = (
        server_key_exchanges(_kx),
        lambda body, kx=_kx: ServerKeyExchange.decode(body, kx),
    )
    CASES[f"client_key_exchange_{_kx.name}"] = (
        client_key_exchanges(_kx),
        lambda body, kx=_kx: ClientKeyExchange.decode(body, kx),
    )


def _without_extensions(message: Any) -> Any:
    if isinstance(message, ClientHello | ServerHello):
        return dataclasses.replace(message, extensions=())
    return None


# ---------------------------------------------------------------------------------------------
# Round trips and strict decoding, for every message type


@pytest.mark.parametrize("case", sorted(CASES))
@given(data=st.data())
def test_round_trip(case: str, data: st.DataObject) -> None:
    strategy, decode = CASES[case]
    message = data.draw(strategy)
    body = message.encode()
    decoded = decode(body)
    assert decoded == message
    assert decoded.encode() == body


@pytest.mark.parametrize("case", sorted(CASES))
@given(data=st.data())
def test_every_truncation_is_rejected(case: str, data: st.DataObject) -> None:
    strategy, decode = CASES[case]
    message = data.draw(strategy)
    body = message.encode()
    bare = _without_extensions(message)
    optional_end = len(bare.encode()) if bare is not None else -1
    for cut in range(len(body)):
        if cut == optional_end:  # the extensions block is optional (RFC 5246 §7.4.1.2)
            assert decode(body[:cut]) == bare
            continue
        with pytest.raises(DecodeError) as info:
            decode(body[:cut])
        assert info.value.alert == AlertDescription.DECODE_ERROR


@pytest.mark.parametrize("case", sorted(CASES))
@given(data=st.data(), extra=st.binary(min_size=1, max_size=3))
def test_trailing_bytes_are_rejected(case: str, data: st.DataObject, extra: bytes) -> None:
    strategy, decode = CASES[case]
    message = data.draw(strategy)
    body = message.encode() + extra
    if _without_extensions(message) is not None and not message.extensions and extra == b"\0\0":
        assert decode(body) == message  # an empty extensions block
        return
    with pytest.raises(DecodeError):
        decode(body)


@given(message=st.one_of(client_hellos, server_hellos), seq=u16s)
def test_decode_handshake_dispatch(message: ClientHello | ServerHello, seq: int) -> None:
    wire = encode_message(message, seq)
    ((header, body),) = iter_fragments(wire)
    assert header == HandshakeHeader.whole(message.MSG_TYPE, seq, len(body))
    assert decode_handshake(header.msg_type, body) == message


def test_decode_handshake_contexts() -> None:
    cke = ClientKeyExchange(identity=b"id")
    assert decode_handshake(16, cke.encode(), KeyExchange.PSK) == cke
    with pytest.raises(ValueError):
        decode_handshake(16, cke.encode())
    rpk = Certificate((b"\x30\x00",), CertificateType.RAW_PUBLIC_KEY)
    assert decode_handshake(11, rpk.encode(), certificate_type=2) == rpk
    for msg_type in (0, 4, 99, 255):  # hello_request, new_session_ticket, unknown
        with pytest.raises(DecodeError) as info:
            decode_handshake(msg_type, b"")
        assert info.value.alert == AlertDescription.UNEXPECTED_MESSAGE


# ---------------------------------------------------------------------------------------------
# Extensions


@given(ext=extension_strategy(False))
def test_extension_round_trip_client_form(ext: Extension) -> None:
    hello = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0A8,), (0,), (ext,))
    assert ClientHello.decode(hello.encode()).extensions == (ext,)


@given(ext=extension_strategy(True))
def test_extension_round_trip_server_form(ext: Extension) -> None:
    hello = ServerHello(DTLS_1_2, bytes(32), b"", 0xC0A8, 0, (ext,))
    assert ServerHello.decode(hello.encode()).extensions == (ext,)


def _hello_with(*raw_extensions: tuple[int, bytes], from_server: bool = False) -> bytes:
    block = b"".join(
        t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in raw_extensions
    )
    if from_server:
        head = ServerHello(DTLS_1_2, bytes(32), b"", 0xC0A8).encode()
    else:
        head = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0A8,)).encode()
    return head + len(block).to_bytes(2, "big") + block


def _rejects(body: bytes, alert: AlertDescription, from_server: bool = False) -> None:
    decode = ServerHello.decode if from_server else ClientHello.decode
    with pytest.raises(DecodeError) as info:
        decode(body)
    assert info.value.alert == alert, str(info.value)


DECODE, ILLEGAL = AlertDescription.DECODE_ERROR, AlertDescription.ILLEGAL_PARAMETER


@pytest.mark.parametrize(
    ("ext_type", "data", "alert"),
    [
        (0, b"", DECODE),  # server_name: no list in a ClientHello
        (0, b"\x00\x00", DECODE),  # server_name: empty list
        (0, b"\x00\x05\x00\x00\x01a", DECODE),  # list shorter than its length
        (0, b"\x00\x08\x00\x00\x01a\x00\x00\x01b", ILLEGAL),  # two host_names
        (1, b"\x05", ILLEGAL),  # max_fragment_length code 5
        (1, b"\x00", ILLEGAL),  # code 0
        (1, b"", DECODE),
        (1, b"\x01\x01", DECODE),  # one byte only
        (10, b"\x00\x00", DECODE),  # supported_groups: empty
        (10, b"\x00\x03\x00\x17\x00", DECODE),  # odd length
        (10, b"\x00\x02\x00\x17\x00", DECODE),  # trailing byte
        (11, b"\x00", DECODE),  # ec_point_formats: empty
        (13, b"\x00\x01\x04", DECODE),  # signature_algorithms: odd
        (19, b"\x00", DECODE),  # client_certificate_type: empty list
        (19, b"\x02\x00", DECODE),  # list longer than the data
        (23, b"\x00", DECODE),  # extended_master_secret: not empty
        (28, b"\x00\x3f", ILLEGAL),  # record_size_limit 63
        (28, b"\x40", DECODE),
        (28, b"\x00\x40\x00", DECODE),
        (54, b"", DECODE),  # connection_id: no length byte
        (54, b"\x02\x01", DECODE),
        (0xFF01, b"\x01", DECODE),  # renegotiation_info: truncated
    ],
)
def test_extension_rejects(ext_type: int, data: bytes, alert: AlertDescription) -> None:
    _rejects(_hello_with((ext_type, data)), alert)


@given(code=u8s, from_server=st.booleans())
def test_max_fragment_length_codes(code: int, from_server: bool) -> None:
    """RFC 6066 §4: codes 1..4 are 2^9..2^12 bytes, anything else is illegal_parameter; the
    encoder refuses what the decoder would."""
    body = _hello_with((1, bytes([code])), from_server=from_server)
    if 1 <= code <= 4:
        decode = ServerHello.decode if from_server else ClientHello.decode
        ext = decode(body).extension(MaxFragmentLengthExtension)
        assert ext == MaxFragmentLengthExtension(code) and ext.length == 1 << (8 + code)
        assert MaxFragmentLengthExtension.for_length(ext.length) == ext
    else:
        _rejects(body, ILLEGAL, from_server=from_server)
        with pytest.raises(ValueError):
            MaxFragmentLengthExtension(code).encode_data(from_server)


@given(limit=u16s, from_server=st.booleans())
def test_record_size_limit_values(limit: int, from_server: bool) -> None:
    """RFC 8449 §4: below 64 is illegal_parameter; above 2^14 is legal and means 2^14 in
    (D)TLS 1.2."""
    body = _hello_with((28, limit.to_bytes(2, "big")), from_server=from_server)
    if limit < 64:
        _rejects(body, ILLEGAL, from_server=from_server)
        with pytest.raises(ValueError):
            RecordSizeLimitExtension(limit).encode_data(from_server)
        return
    decode = ServerHello.decode if from_server else ClientHello.decode
    ext = decode(body).extension(RecordSizeLimitExtension)
    assert ext == RecordSizeLimitExtension(limit)
    assert ext.plaintext_limit == min(limit, MAX_PLAINTEXT)


def test_max_fragment_length_of_other_lengths() -> None:
    for length in (256, 1000, 8192, MAX_PLAINTEXT):
        with pytest.raises(ValueError):
            MaxFragmentLengthExtension.for_length(length)


def test_server_form_certificate_type_is_one_byte() -> None:
    body = _hello_with((20, b"\x02"), from_server=True)
    ext = ServerHello.decode(body).extension(ServerCertificateTypeExtension)
    assert ext == ServerCertificateTypeExtension((2,))
    _rejects(_hello_with((20, b"\x01\x02"), from_server=True), DECODE, from_server=True)
    _rejects(_hello_with((19, b""), from_server=True), DECODE, from_server=True)
    with pytest.raises(ValueError):
        ServerHello(
            DTLS_1_2, bytes(32), b"", 1, 0, (ClientCertificateTypeExtension((0, 2)),)
        ).encode()


def test_server_name_acknowledgement_is_empty() -> None:
    ack = ServerHello.decode(_hello_with((0, b""), from_server=True))
    assert ack.extension(ServerNameExtension) == ServerNameExtension()
    names = b"\x00\x04\x00\x00\x01a"
    _rejects(_hello_with((0, names), from_server=True), DECODE, from_server=True)
    with pytest.raises(ValueError):
        ServerHello(DTLS_1_2, bytes(32), b"", 1, 0, (ServerNameExtension(((0, b"a"),)),)).encode()
    with pytest.raises(ValueError):
        ClientHello(DTLS_1_2, bytes(32), b"", b"", (1,), (0,), (ServerNameExtension(),)).encode()
    sni = ServerNameExtension(((0, b"example.org"),))
    assert sni.host_name == "example.org"
    assert ServerNameExtension(((1, b"x"),)).host_name is None


def test_duplicate_extensions_are_illegal() -> None:
    _rejects(_hello_with((23, b""), (23, b"")), ILLEGAL)
    _rejects(_hello_with((999, b""), (999, b"x")), ILLEGAL)


def test_extension_block_lengths() -> None:
    good = _hello_with((23, b""))
    _rejects(good[:-1], DECODE)  # extension data cut
    _rejects(good + b"\x00", DECODE)  # after the block
    bad_block = good[:-6] + b"\x00\x05" + good[-4:]  # block length says 5, has 4
    _rejects(bad_block, DECODE)
    inner = good[:-2] + b"\x00\x01"  # extension length 1 beyond the block
    _rejects(inner, DECODE)


def test_extension_helpers() -> None:
    hello = ClientHello.decode(_hello_with((23, b""), (54, b"\x00"), (0xABCD, b"zz")))
    assert hello.extension(ExtendedMasterSecretExtension) == ExtendedMasterSecretExtension()
    assert hello.extension(ConnectionIdExtension) == ConnectionIdExtension(b"")
    assert hello.extension(SupportedGroupsExtension) is None
    assert hello.has_extension(0xABCD) and not hello.has_extension(10)
    assert hello.extensions[2] == UnknownExtension(0xABCD, b"zz")


# ---------------------------------------------------------------------------------------------
# Hello fields


def test_client_hello_field_limits() -> None:
    base = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0A8,))
    body = base.encode()
    # session_id length 33
    _rejects(body[:34] + b"\x21" + bytes(33) + body[35:], DECODE)
    # cipher_suites: empty, and odd
    empty_suites = body[:36] + b"\x00\x00" + body[40:]
    _rejects(empty_suites, DECODE)
    _rejects(body[:36] + b"\x00\x03\xc0\xa8\x00" + body[40:], DECODE)
    # compression_methods: empty
    _rejects(body[:40] + b"\x00", DECODE)
    for bad in (
        dataclasses.replace(base, random=bytes(31)),
        dataclasses.replace(base, session_id=bytes(33)),
        dataclasses.replace(base, cookie=bytes(256)),
        dataclasses.replace(base, cipher_suites=()),
        dataclasses.replace(base, compression_methods=()),
    ):
        with pytest.raises(ValueError):
            bad.encode()


def test_encoders_reject_values_out_of_range() -> None:
    hello = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0A8,))
    for bad in (
        dataclasses.replace(hello, client_version=0x10000),
        dataclasses.replace(hello, cipher_suites=(-1,)),
        dataclasses.replace(hello, compression_methods=(256,)),
        dataclasses.replace(hello, extensions=(UnknownExtension(0x10000, b""),)),
        dataclasses.replace(hello, extensions=(ConnectionIdExtension(bytes(256)),)),
        dataclasses.replace(hello, extensions=(MaxFragmentLengthExtension(0),)),
        dataclasses.replace(hello, extensions=(MaxFragmentLengthExtension(5),)),
        dataclasses.replace(hello, extensions=(RecordSizeLimitExtension(63),)),
        dataclasses.replace(hello, extensions=(RecordSizeLimitExtension(0x10000),)),
        CertificateVerify(0x10000, b""),
        Alert(256, 0),
        ServerKeyExchange(hint=bytes(0x10000)),
    ):
        with pytest.raises(ValueError):
            bad.encode()


def test_cookie_input_excludes_cookie_and_extensions() -> None:
    hello = ClientHello(DTLS_1_2, bytes(range(32)), b"\x01", b"cookie", (0xC0A8, 0xFF), (0,))
    with_ext = dataclasses.replace(hello, extensions=(ExtendedMasterSecretExtension(),))
    expected = b"\xfe\xfd" + bytes(range(32)) + b"\x01\x01" + b"\x00\x04\xc0\xa8\x00\xff\x01\x00"
    assert hello.cookie_input() == with_ext.cookie_input() == expected


def test_hello_verify_request_layout() -> None:
    hvr = HelloVerifyRequest(DTLS_1_0, b"\xaa" * 32)
    assert hvr.encode() == b"\xfe\xff\x20" + b"\xaa" * 32
    wire = encode_message(hvr, 0)
    assert wire[:12] == bytes.fromhex("030000230000000000000023")


# ---------------------------------------------------------------------------------------------
# Certificate, key exchange, Finished


def test_raw_public_key_certificate_has_no_list() -> None:
    spki = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004") + bytes(64)
    rpk = Certificate((spki,), CertificateType.RAW_PUBLIC_KEY)
    assert rpk.encode() == len(spki).to_bytes(3, "big") + spki  # RFC 7250 §3, no extra length
    assert rpk.raw_public_key == spki
    empty = Certificate((), CertificateType.RAW_PUBLIC_KEY)
    assert empty.encode() == b"\x00\x00\x00"
    assert Certificate.decode(b"\x00\x00\x00", CertificateType.RAW_PUBLIC_KEY) == empty
    with pytest.raises(ValueError):
        Certificate((spki, spki), CertificateType.RAW_PUBLIC_KEY).encode()


def test_x509_certificate_list() -> None:
    chain = Certificate((b"\x30\x01a", b"\x30\x01b"))
    assert chain.encode() == bytes.fromhex("00000c 000003 300161 000003 300162")
    assert Certificate.decode(b"\x00\x00\x00") == Certificate()
    with pytest.raises(DecodeError):
        Certificate.decode(bytes.fromhex("000003 000000"))  # empty ASN.1Cert
    with pytest.raises(ValueError):
        Certificate((b"",)).encode()
    assert chain.raw_public_key is None


def test_server_key_exchange_layouts() -> None:
    point = b"\x04" + bytes(64)
    params = EcdhParams(NamedGroup.SECP256R1, point)
    assert params.encode() == b"\x03\x00\x17\x41" + point
    psk = ServerKeyExchange(hint=b"hint")
    assert psk.encode() == b"\x00\x04hint"
    ecdhe_psk = ServerKeyExchange(hint=b"", params=params)
    assert ecdhe_psk.encode() == b"\x00\x00" + params.encode()  # RFC 5489: hint always there
    signed = ServerKeyExchange(
        params=params, signature_algorithm=SignatureScheme.ECDSA_SECP256R1_SHA256, signature=b"s"
    )
    assert signed.encode() == params.encode() + b"\x04\x03\x00\x01s"
    cr, sr = b"c" * 32, b"s" * 32
    assert signed.signed_content(cr, sr) == cr + sr + params.encode()
    with pytest.raises(ValueError):
        psk.signed_content(cr, sr)
    with pytest.raises(ValueError):
        ServerKeyExchange(signature=b"x").encode()


def test_explicit_curves_are_illegal() -> None:
    body = b"\x01" + bytes(10)  # curve_type explicit_prime
    with pytest.raises(DecodeError) as info:
        ServerKeyExchange.decode(body, KeyExchange.ECDHE_ECDSA)
    assert info.value.alert == AlertDescription.ILLEGAL_PARAMETER


def test_empty_points_are_rejected() -> None:
    with pytest.raises(DecodeError):
        ServerKeyExchange.decode(b"\x03\x00\x17\x00\x04\x03\x00\x00", KeyExchange.ECDHE_ECDSA)
    with pytest.raises(DecodeError):
        ClientKeyExchange.decode(b"\x00", KeyExchange.ECDHE_ECDSA)
    with pytest.raises(ValueError):
        ClientKeyExchange(public=b"").encode()
    with pytest.raises(ValueError):
        EcdhParams(23, bytes(256)).encode()


def test_client_key_exchange_layouts() -> None:
    assert ClientKeyExchange(identity=b"id").encode() == b"\x00\x02id"
    assert ClientKeyExchange(public=b"\x04ab").encode() == b"\x03\x04ab"
    assert ClientKeyExchange(b"", b"\x01").encode() == b"\x00\x00\x01\x01"
    # Zero-length identity is legal (mbedtls #614).
    assert ClientKeyExchange.decode(b"\x00\x00", KeyExchange.PSK) == ClientKeyExchange(b"")


def test_certificate_request_layout() -> None:
    request = CertificateRequest()
    assert request.encode() == bytes.fromhex("0140 00020403 0000")
    with pytest.raises(DecodeError):
        CertificateRequest.decode(bytes.fromhex("00 00020403 0000"))  # no certificate type
    with pytest.raises(DecodeError):
        CertificateRequest.decode(bytes.fromhex("0140 0000 0000"))  # no algorithms
    with pytest.raises(DecodeError):
        CertificateRequest.decode(bytes.fromhex("0140 00020403 00020000"))  # empty DN


def test_finished_length() -> None:
    assert Finished.decode(bytes(12)) == Finished(bytes(12))
    for size in (0, 11, 13):
        with pytest.raises(DecodeError):
            Finished.decode(bytes(size))
    assert Finished.decode(bytes(32), length=32).verify_data == bytes(32)


def test_server_hello_done_is_empty() -> None:
    assert ServerHelloDone().encode() == b""
    with pytest.raises(DecodeError):
        ServerHelloDone.decode(b"\x00")


# ---------------------------------------------------------------------------------------------
# ChangeCipherSpec and Alert


def test_change_cipher_spec() -> None:
    assert ChangeCipherSpec().encode() == b"\x01"
    assert ChangeCipherSpec.decode(b"\x01") == ChangeCipherSpec()
    with pytest.raises(DecodeError) as info:
        ChangeCipherSpec.decode(b"\x02")
    assert info.value.alert == AlertDescription.ILLEGAL_PARAMETER
    for bad in (b"", b"\x01\x01"):
        with pytest.raises(DecodeError) as info:
            ChangeCipherSpec.decode(bad)
        assert info.value.alert == AlertDescription.DECODE_ERROR


def test_alerts() -> None:
    alert = Alert.decode(b"\x02\x33")
    assert alert == Alert.fatal(AlertDescription.DECRYPT_ERROR)
    assert alert.is_fatal and alert.name == "decrypt_error" and str(alert) == "fatal decrypt_error"
    close = Alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)
    assert (
        close.encode() == b"\x01\x00"
        and not close.is_fatal
        and str(close) == "warning close_notify"
    )
    assert Alert(2, 115).name == "unknown_psk_identity"
    assert str(Alert(7, 250)) == "level(7) alert(250)"
    for bad in (b"", b"\x02", b"\x02\x28\x00"):
        with pytest.raises(DecodeError):
            Alert.decode(bad)


@given(level=u8s, description=u8s)
def test_alert_round_trip(level: int, description: int) -> None:
    alert = Alert(level, description)
    assert Alert.decode(alert.encode()) == alert


# ---------------------------------------------------------------------------------------------
# The handshake header


@given(
    msg_type=u8s,
    seq=u16s,
    length=st.integers(0, 2**24 - 1),
    data=st.data(),
)
def test_header_round_trip(msg_type: int, seq: int, length: int, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, length))
    fragment_length = data.draw(st.integers(0, length - offset))
    header = HandshakeHeader(msg_type, length, seq, offset, fragment_length)
    wire = header.encode()
    assert len(wire) == 12
    assert HandshakeHeader.decode(wire) == header
    assert HandshakeHeader.decode(b"xx" + wire, 2) == header
    assert header.is_complete == (offset == 0 and fragment_length == length)
    assert header.unfragmented() == HandshakeHeader(msg_type, length, seq, 0, length)


def test_header_rejects() -> None:
    with pytest.raises(DecodeError):
        HandshakeHeader.decode(bytes(11))
    beyond = HandshakeHeader(1, 10, 0, 6, 4).encode()[:-1] + b"\x05"  # 6 + 5 > 10
    with pytest.raises(DecodeError):
        HandshakeHeader.decode(beyond)
    for bad in (
        HandshakeHeader(256, 0, 0, 0, 0),
        HandshakeHeader(1, 0, 65536, 0, 0),
        HandshakeHeader(1, 10, 0, 6, 5),
        HandshakeHeader(1, 2**24, 0, 0, 0),
    ):
        with pytest.raises(ValueError):
            bad.encode()


def test_iter_fragments() -> None:
    done = encode_message(ServerHelloDone(), 4)
    hvr = encode_message(HelloVerifyRequest(DTLS_1_0, b"c"), 0)
    assert [(h.msg_type, f) for h, f in iter_fragments(done + hvr)] == [
        (14, b""),
        (3, b"\xfe\xff\x01c"),
    ]
    assert list(iter_fragments(b"")) == []
    for cut in range(1, len(hvr)):
        with pytest.raises(DecodeError):
            list(iter_fragments(hvr[:cut]))
    with pytest.raises(DecodeError):
        list(iter_fragments(done + b"\x00"))


# ---------------------------------------------------------------------------------------------
# Real ClientHellos

# The first datagram of `openssl s_client -dtls1_2 -cipher ECDHE-ECDSA-AES128-CCM8`
# (OpenSSL 3.0.19), captured on loopback.
OPENSSL_CLIENT_HELLO = bytes.fromhex(
    "16feff0000000000000000008c010000800000000000000080fefde55fe95aa95cb21f89d226d76c1b254e2f"
    "636af828274142d5eed3189c1c170c00000004c0ae00ff01000052000b000403000102000a000c000a001d00"
    "17001e00190018002300000016000000170000000d002a0028040305030603080708080809080a080b080408"
    "050806040105010601030303010302040205020602"
)


def _parse_first_record(datagram: bytes) -> tuple[HandshakeHeader, ClientHello, bytes]:
    assert datagram[0] == 22  # handshake
    assert datagram[1:3] in (b"\xfe\xff", b"\xfe\xfd")
    assert datagram[3:11] == bytes(8) or datagram[3:5] == b"\x00\x00"  # epoch 0
    length = int.from_bytes(datagram[11:13], "big")
    assert len(datagram) == 13 + length
    ((header, body),) = iter_fragments(datagram[13:])
    assert header.msg_type == HandshakeType.CLIENT_HELLO
    assert header.is_complete and header.message_seq == 0
    hello = decode_handshake(header.msg_type, body)
    assert isinstance(hello, ClientHello)
    return header, hello, body


def test_stored_openssl_client_hello() -> None:
    header, hello, body = _parse_first_record(OPENSSL_CLIENT_HELLO)
    assert header.length == 128
    assert hello.client_version == DTLS_1_2
    assert hello.session_id == b"" and hello.cookie == b""
    assert hello.cipher_suites == (0xC0AE, 0x00FF)  # the suite + renegotiation SCSV
    assert hello.compression_methods == (0,)
    assert [ext.ext_type for ext in hello.extensions] == [11, 10, 35, 22, 23, 13]
    assert hello.extension(EcPointFormatsExtension) == EcPointFormatsExtension((0, 1, 2))
    groups = hello.extension(SupportedGroupsExtension)
    assert groups is not None and groups.groups == (29, 23, 30, 25, 24)
    schemes = hello.extension(SignatureAlgorithmsExtension)
    assert schemes is not None and SignatureScheme.ECDSA_SECP256R1_SHA256 in schemes.schemes
    assert len(schemes.schemes) == 20
    assert hello.extension(ExtendedMasterSecretExtension) is not None
    assert hello.extensions[2] == UnknownExtension(35, b"")  # session_ticket, kept raw
    assert hello.encode() == body
    assert encode_message(hello, 0) == OPENSSL_CLIENT_HELLO[13:]


def _capture_first_datagram(command: list[str], timeout: float = 10.0) -> bytes:
    """Run a DTLS client against a loopback socket and return its first datagram."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        argv = [part.replace("{port}", str(port)) for part in command]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            datagram = sock.recv(65536)
        finally:
            proc.kill()
            proc.communicate(timeout=10)
        return datagram


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_live_openssl_psk_client_hello() -> None:
    datagram = _capture_first_datagram(
        [
            "openssl", "s_client", "-dtls1_2", "-connect", f"{LOOPBACK}:{{port}}",
            "-psk", "73656372657450534b", "-psk_identity", "Client_identity",
            "-cipher", openssl_cipher("PSK-AES128-CCM8"),
        ]
    )  # fmt: skip
    _, hello, body = _parse_first_record(datagram)
    assert hello.client_version == DTLS_1_2
    # RFC 5746 §3.4: the renegotiation SCSV (OpenSSL 3.0) or an empty renegotiation_info (3.5)
    assert hello.cipher_suites in ((0xC0A8, 0x00FF), (0xC0A8,))
    if hello.cipher_suites == (0xC0A8,):
        assert hello.extension(RenegotiationInfoExtension) == RenegotiationInfoExtension(b"")
    assert hello.cookie == b""
    assert hello.extension(ExtendedMasterSecretExtension) is not None
    assert hello.extension(SupportedGroupsExtension) is None  # no ECC suite offered
    assert hello.encode() == body


PRIO_PSK = "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-CCM-8:-MAC-ALL:+AEAD"


@pytest.mark.skipif(shutil.which("gnutls-cli") is None, reason="gnutls-cli not installed")
def test_live_gnutls_psk_client_hello() -> None:
    datagram = _capture_first_datagram(
        [
            "gnutls-cli", "--udp", "--port", "{port}", LOOPBACK,
            "--pskusername", "Client_identity", "--pskkey", "73656372657450534b",
            "--priority", PRIO_PSK,
        ]
    )  # fmt: skip
    _, hello, body = _parse_first_record(datagram)
    assert hello.client_version == DTLS_1_2
    assert 0xC0A8 in hello.cipher_suites
    assert hello.encode() == body


# ---------------------------------------------------------------------------------------------
# Fuzz target smoke run (see tests/unit/test_fuzz_smoke.py)


def test_fuzz_target_oracle_on_seeds() -> None:
    """The target's seeds pass its own oracle in-process (no atheris needed)."""
    spec = importlib.util.spec_from_file_location("fuzz_dtls_handshake", FUZZ_TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seeds = module.seeds()
    assert len(seeds) >= 10
    for seed in seeds:
        module.check(seed)
    for seed in seeds:  # and their truncations: only DecodeError may escape decoders
        for cut in range(0, len(seed), 7):
            module.check(seed[:cut])
