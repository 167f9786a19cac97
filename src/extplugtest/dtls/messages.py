"""DTLS 1.2 handshake messages, hello extensions, ChangeCipherSpec and Alert.

Every message is a frozen dataclass with ``encode()`` (the body, without the 12-byte header
of ``handshake_header``) and a ``decode(body, ...)`` classmethod. Decoders are strict: every
length is checked, trailing bytes are rejected, and every failure is a ``DecodeError`` that
names the alert to send (decode_error, or illegal_parameter for a bad field value).
Encoders raise ``ValueError`` for values that cannot be put on the wire.

A few messages depend on the negotiated parameters, which their decoders take as arguments:
the key exchange (ServerKeyExchange, ClientKeyExchange) and the certificate type
(Certificate, RFC 7250). Extensions decode differently in a ServerHello (``from_server``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, TypeVar

from extplugtest.dtls.ciphersuites import KeyExchange
from extplugtest.dtls.handshake_header import (
    AlertDescription,
    DecodeError,
    HandshakeType,
    Reader,
    encode_handshake,
    u8,
    u16,
    vec8,
    vec16,
    vec24,
)

__all__ = [
    "DTLS_1_0",
    "DTLS_1_2",
    "MAX_PLAINTEXT",
    "Alert",
    "AlertDescription",
    "AlertLevel",
    "Certificate",
    "CertificateRequest",
    "CertificateType",
    "CertificateVerify",
    "ChangeCipherSpec",
    "ClientCertificateTypeExtension",
    "ClientHello",
    "ClientKeyExchange",
    "ConnectionIdExtension",
    "ContentType",
    "DecodeError",
    "EcPointFormat",
    "EcPointFormatsExtension",
    "EcdhParams",
    "ExtendedMasterSecretExtension",
    "Extension",
    "ExtensionType",
    "Finished",
    "HandshakeMessage",
    "HandshakeType",
    "HelloVerifyRequest",
    "MaxFragmentLengthExtension",
    "NamedGroup",
    "RecordSizeLimitExtension",
    "RenegotiationInfoExtension",
    "ServerCertificateTypeExtension",
    "ServerHello",
    "ServerHelloDone",
    "ServerKeyExchange",
    "ServerNameExtension",
    "SignatureAlgorithmsExtension",
    "SignatureScheme",
    "SupportedGroupsExtension",
    "UnknownExtension",
    "decode_extensions",
    "decode_handshake",
    "encode_extensions",
    "encode_message",
]

DTLS_1_0 = 0xFEFF  # RFC 6347 §4.1: {254, 255}
DTLS_1_2 = 0xFEFD  # {254, 253}
RANDOM_LENGTH = 32
MAX_SESSION_ID = 32
MAX_COOKIE = 255  # RFC 6347 §4.2.1: opaque cookie<0..2^8-1>
NULL_COMPRESSION = 0
NAMED_CURVE = 3  # ECCurveType named_curve (RFC 8422 §5.4)
MAX_PLAINTEXT = 1 << 14  # RFC 5246 §6.2.1: TLSPlaintext.length <= 2^14


class ContentType(IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    TLS12_CID = 25  # RFC 9146 §4


class ExtensionType(IntEnum):
    SERVER_NAME = 0  # RFC 6066 §3
    MAX_FRAGMENT_LENGTH = 1  # RFC 6066 §4
    SUPPORTED_GROUPS = 10  # RFC 8422 §5.1.1 (was elliptic_curves)
    EC_POINT_FORMATS = 11  # RFC 8422 §5.1.2
    SIGNATURE_ALGORITHMS = 13  # RFC 5246 §7.4.1.4.1
    CLIENT_CERTIFICATE_TYPE = 19  # RFC 7250 §3
    SERVER_CERTIFICATE_TYPE = 20
    ENCRYPT_THEN_MAC = 22  # RFC 7366 (not supported; kept as unknown)
    EXTENDED_MASTER_SECRET = 23  # RFC 7627 §5.1
    RECORD_SIZE_LIMIT = 28  # RFC 8449 §4
    SESSION_TICKET = 35  # RFC 5077 (not supported)
    CONNECTION_ID = 54  # RFC 9146 §3
    RENEGOTIATION_INFO = 0xFF01  # RFC 5746 §3.2


class NamedGroup(IntEnum):
    SECP256R1 = 23
    SECP384R1 = 24
    SECP521R1 = 25
    X25519 = 29
    X448 = 30


class EcPointFormat(IntEnum):
    UNCOMPRESSED = 0
    ANSIX962_COMPRESSED_PRIME = 1
    ANSIX962_COMPRESSED_CHAR2 = 2


class SignatureScheme(IntEnum):
    """TLS 1.2 SignatureAndHashAlgorithm as one uint16 (hash << 8 | signature)."""

    RSA_PKCS1_SHA256 = 0x0401
    ECDSA_SECP256R1_SHA256 = 0x0403
    RSA_PKCS1_SHA384 = 0x0501
    ECDSA_SECP384R1_SHA384 = 0x0503
    ED25519 = 0x0807
    ED448 = 0x0808


class CertificateType(IntEnum):
    """RFC 7250 §3 (IANA TLS Certificate Types)."""

    X509 = 0
    RAW_PUBLIC_KEY = 2


class ClientCertificateType(IntEnum):
    """CertificateRequest certificate_types (RFC 5246 §7.4.4, RFC 8422 §5.5)."""

    RSA_SIGN = 1
    ECDSA_SIGN = 64


class AlertLevel(IntEnum):
    WARNING = 1
    FATAL = 2


# ---------------------------------------------------------------------------------------------
# Extensions (RFC 5246 §7.4.1.4). Each class has TYPE, encode_data() and decode_data();
# ``from_server`` selects the ServerHello form where it differs.


class _TypedExtension:
    __slots__ = ()
    TYPE: ClassVar[int]

    @property
    def ext_type(self) -> int:
        return self.TYPE


@dataclass(frozen=True, slots=True)
class UnknownExtension:
    """Any extension without a codec here; its data is kept as received."""

    ext_type: int
    data: bytes

    def encode_data(self, from_server: bool) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class ServerNameExtension(_TypedExtension):
    """RFC 6066 §3: a non-empty list of (name_type, name); empty in a ServerHello.

    Only host_name (0) is defined; other name types are assumed to use the same
    opaque<1..2^16-1> layout.
    """

    TYPE: ClassVar[int] = ExtensionType.SERVER_NAME
    names: tuple[tuple[int, bytes], ...] = ()

    @property
    def host_name(self) -> str | None:
        for name_type, name in self.names:
            if name_type == 0:
                return name.decode("ascii", "replace")
        return None

    def encode_data(self, from_server: bool) -> bytes:
        if from_server != (not self.names):
            raise ValueError("server_name: names in a ClientHello, none in a ServerHello")
        if from_server:
            return b""
        body = b"".join(u8(kind) + vec16(name) for kind, name in self.names)
        return vec16(body)

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> ServerNameExtension:
        if from_server:  # the acknowledgement: "extension_data" SHALL be empty (§3)
            if data:
                raise DecodeError(f"server_name: {len(data)} bytes in a ServerHello")
            return cls()
        reader = Reader(data)
        body = reader.sub(2, "server_name_list", 1)
        reader.end("server_name")
        names: list[tuple[int, bytes]] = []
        while body.remaining:
            kind = body.u8("name_type")
            name = body.vector(2, "server name", 1)
            if any(kind == seen for seen, _ in names):
                raise DecodeError(
                    "server_name: two names of one type", AlertDescription.ILLEGAL_PARAMETER
                )
            names.append((kind, name))
        return cls(tuple(names))


@dataclass(frozen=True, slots=True)
class MaxFragmentLengthExtension(_TypedExtension):
    """RFC 6066 §4: 1 = 2^9, 2 = 2^10, 3 = 2^11, 4 = 2^12 bytes."""

    TYPE: ClassVar[int] = ExtensionType.MAX_FRAGMENT_LENGTH
    code: int

    @property
    def length(self) -> int:
        """The largest record plaintext both sides may send (RFC 6066 §4)."""
        return 1 << (8 + self.code)

    @classmethod
    def for_length(cls, length: int) -> MaxFragmentLengthExtension:
        """The extension of one of the four lengths (512, 1024, 2048, 4096)."""
        for code in range(1, 5):
            if 1 << (8 + code) == length:
                return cls(code)
        raise ValueError(f"max_fragment_length: {length} is not 512, 1024, 2048 or 4096")

    def encode_data(self, from_server: bool) -> bytes:
        if not 1 <= self.code <= 4:
            raise ValueError(f"max_fragment_length: code {self.code} is not 1..4")
        return u8(self.code)

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> MaxFragmentLengthExtension:
        if len(data) != 1:
            raise DecodeError(f"max_fragment_length: {len(data)} bytes")
        if not 1 <= data[0] <= 4:
            raise DecodeError(
                f"max_fragment_length: code {data[0]}", AlertDescription.ILLEGAL_PARAMETER
            )
        return cls(data[0])


def _u16_body(values: tuple[int, ...]) -> bytes:
    return b"".join(u16(value) for value in values)


@dataclass(frozen=True, slots=True)
class SupportedGroupsExtension(_TypedExtension):
    """RFC 8422 §5.1.1: NamedGroup named_group_list<2..2^16-1>."""

    TYPE: ClassVar[int] = ExtensionType.SUPPORTED_GROUPS
    groups: tuple[int, ...]

    def encode_data(self, from_server: bool) -> bytes:
        return vec16(_u16_body(self.groups))

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> SupportedGroupsExtension:
        reader = Reader(data)
        groups = reader.u16_list(2, "supported_groups", 2, 0xFFFF)
        reader.end("supported_groups")
        return cls(groups)


@dataclass(frozen=True, slots=True)
class EcPointFormatsExtension(_TypedExtension):
    """RFC 8422 §5.1.2: ECPointFormat ec_point_format_list<1..2^8-1>."""

    TYPE: ClassVar[int] = ExtensionType.EC_POINT_FORMATS
    formats: tuple[int, ...] = (EcPointFormat.UNCOMPRESSED,)

    def encode_data(self, from_server: bool) -> bytes:
        return vec8(bytes(self.formats))

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> EcPointFormatsExtension:
        reader = Reader(data)
        formats = tuple(reader.vector(1, "ec_point_formats", 1))
        reader.end("ec_point_formats")
        return cls(formats)


@dataclass(frozen=True, slots=True)
class SignatureAlgorithmsExtension(_TypedExtension):
    """RFC 5246 §7.4.1.4.1: supported_signature_algorithms<2..2^16-2>."""

    TYPE: ClassVar[int] = ExtensionType.SIGNATURE_ALGORITHMS
    schemes: tuple[int, ...]

    def encode_data(self, from_server: bool) -> bytes:
        return vec16(_u16_body(self.schemes))

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> SignatureAlgorithmsExtension:
        reader = Reader(data)
        schemes = reader.u16_list(2, "signature_algorithms", 2, 0xFFFE)
        reader.end("signature_algorithms")
        return cls(schemes)


@dataclass(frozen=True, slots=True)
class _CertificateTypeExtension(_TypedExtension):
    """RFC 7250 §3: a list<1..2^8-1> in the ClientHello, one type in the ServerHello."""

    types: tuple[int, ...]

    def encode_data(self, from_server: bool) -> bytes:
        if from_server:
            if len(self.types) != 1:
                raise ValueError(f"ServerHello certificate type needs one type: {self.types}")
            return u8(self.types[0])
        return vec8(bytes(self.types))

    @classmethod
    def _decode_types(cls, data: bytes, from_server: bool) -> tuple[int, ...]:
        if from_server:
            if len(data) != 1:
                raise DecodeError(f"certificate type: {len(data)} bytes in a ServerHello")
            return (data[0],)
        reader = Reader(data)
        types = tuple(reader.vector(1, "certificate types", 1))
        reader.end("certificate types")
        return types


@dataclass(frozen=True, slots=True)
class ClientCertificateTypeExtension(_CertificateTypeExtension):
    TYPE: ClassVar[int] = ExtensionType.CLIENT_CERTIFICATE_TYPE

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> ClientCertificateTypeExtension:
        return cls(cls._decode_types(data, from_server))


@dataclass(frozen=True, slots=True)
class ServerCertificateTypeExtension(_CertificateTypeExtension):
    TYPE: ClassVar[int] = ExtensionType.SERVER_CERTIFICATE_TYPE

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> ServerCertificateTypeExtension:
        return cls(cls._decode_types(data, from_server))


@dataclass(frozen=True, slots=True)
class ExtendedMasterSecretExtension(_TypedExtension):
    """RFC 7627 §5.1: empty extension_data."""

    TYPE: ClassVar[int] = ExtensionType.EXTENDED_MASTER_SECRET

    def encode_data(self, from_server: bool) -> bytes:
        return b""

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> ExtendedMasterSecretExtension:
        if data:
            raise DecodeError(f"extended_master_secret: {len(data)} bytes, must be empty")
        return cls()


@dataclass(frozen=True, slots=True)
class RecordSizeLimitExtension(_TypedExtension):
    """RFC 8449 §4: uint16 RecordSizeLimit, at least 64.

    In (D)TLS 1.2 the limit is on the record plaintext. A larger value than the protocol's
    2^14 is legal on the wire (a peer may know a version that allows more) and means 2^14
    here (``plaintext_limit``).
    """

    TYPE: ClassVar[int] = ExtensionType.RECORD_SIZE_LIMIT
    MINIMUM: ClassVar[int] = 64
    limit: int

    @property
    def plaintext_limit(self) -> int:
        return min(self.limit, MAX_PLAINTEXT)

    def encode_data(self, from_server: bool) -> bytes:
        if not self.MINIMUM <= self.limit <= 0xFFFF:
            raise ValueError(f"record_size_limit {self.limit} is not 64..65535")
        return u16(self.limit)

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> RecordSizeLimitExtension:
        if len(data) != 2:
            raise DecodeError(f"record_size_limit: {len(data)} bytes")
        limit = int.from_bytes(data, "big")
        if limit < 64:
            raise DecodeError(f"record_size_limit {limit} < 64", AlertDescription.ILLEGAL_PARAMETER)
        return cls(limit)


@dataclass(frozen=True, slots=True)
class ConnectionIdExtension(_TypedExtension):
    """RFC 9146 §3: opaque cid<0..2^8-1>; empty = "I accept CIDs but send none"."""

    TYPE: ClassVar[int] = ExtensionType.CONNECTION_ID
    cid: bytes = b""

    def encode_data(self, from_server: bool) -> bytes:
        return vec8(self.cid)

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> ConnectionIdExtension:
        reader = Reader(data)
        cid = reader.vector(1, "connection_id")
        reader.end("connection_id")
        return cls(cid)


@dataclass(frozen=True, slots=True)
class RenegotiationInfoExtension(_TypedExtension):
    """RFC 5746 §3.2: opaque renegotiated_connection<0..255>; empty in an initial handshake."""

    TYPE: ClassVar[int] = ExtensionType.RENEGOTIATION_INFO
    renegotiated_connection: bytes = b""

    def encode_data(self, from_server: bool) -> bytes:
        return vec8(self.renegotiated_connection)

    @classmethod
    def decode_data(cls, data: bytes, from_server: bool) -> RenegotiationInfoExtension:
        reader = Reader(data)
        value = reader.vector(1, "renegotiation_info")
        reader.end("renegotiation_info")
        return cls(value)


Extension = (
    ServerNameExtension
    | MaxFragmentLengthExtension
    | SupportedGroupsExtension
    | EcPointFormatsExtension
    | SignatureAlgorithmsExtension
    | ClientCertificateTypeExtension
    | ServerCertificateTypeExtension
    | ExtendedMasterSecretExtension
    | RecordSizeLimitExtension
    | ConnectionIdExtension
    | RenegotiationInfoExtension
    | UnknownExtension
)

_EXTENSION_DECODERS: dict[int, Callable[[bytes, bool], Extension]] = {
    ExtensionType.SERVER_NAME: ServerNameExtension.decode_data,
    ExtensionType.MAX_FRAGMENT_LENGTH: MaxFragmentLengthExtension.decode_data,
    ExtensionType.SUPPORTED_GROUPS: SupportedGroupsExtension.decode_data,
    ExtensionType.EC_POINT_FORMATS: EcPointFormatsExtension.decode_data,
    ExtensionType.SIGNATURE_ALGORITHMS: SignatureAlgorithmsExtension.decode_data,
    ExtensionType.CLIENT_CERTIFICATE_TYPE: ClientCertificateTypeExtension.decode_data,
    ExtensionType.SERVER_CERTIFICATE_TYPE: ServerCertificateTypeExtension.decode_data,
    ExtensionType.EXTENDED_MASTER_SECRET: ExtendedMasterSecretExtension.decode_data,
    ExtensionType.RECORD_SIZE_LIMIT: RecordSizeLimitExtension.decode_data,
    ExtensionType.CONNECTION_ID: ConnectionIdExtension.decode_data,
    ExtensionType.RENEGOTIATION_INFO: RenegotiationInfoExtension.decode_data,
}


def encode_extensions(extensions: tuple[Extension, ...], from_server: bool) -> bytes:
    """The extensions block; empty bytes when there are none (the block is optional)."""
    if not extensions:
        return b""
    body = b"".join(u16(ext.ext_type) + vec16(ext.encode_data(from_server)) for ext in extensions)
    return vec16(body)


def decode_extensions(reader: Reader, from_server: bool) -> tuple[Extension, ...]:
    """The optional extensions block at the end of a hello (RFC 5246 §7.4.1.2)."""
    if not reader.remaining:
        return ()
    block = reader.sub(2, "extensions")
    reader.end("hello")
    seen: set[int] = set()
    result: list[Extension] = []
    while block.remaining:
        ext_type = block.u16("extension type")
        data = block.vector(2, "extension data")
        if ext_type in seen:  # §7.4.1.4: at most one extension of each type
            raise DecodeError(f"extension {ext_type} twice", AlertDescription.ILLEGAL_PARAMETER)
        seen.add(ext_type)
        decoder = _EXTENSION_DECODERS.get(ext_type)
        if decoder is None:
            result.append(UnknownExtension(ext_type, data))
        else:
            result.append(decoder(data, from_server))
    return tuple(result)


E = TypeVar("E", bound=_TypedExtension)


class _HasExtensions:
    __slots__ = ()
    extensions: tuple[Extension, ...]

    def extension(self, cls: type[E]) -> E | None:
        """The extension of this class, or None."""
        for ext in self.extensions:
            if isinstance(ext, cls):
                return ext
        return None

    def has_extension(self, ext_type: int) -> bool:
        return any(ext.ext_type == ext_type for ext in self.extensions)


# ---------------------------------------------------------------------------------------------
# Hello messages


def _check_random(random: bytes) -> None:
    if len(random) != RANDOM_LENGTH:
        raise ValueError(f"random must be 32 bytes, not {len(random)}")


def _check_vector(data: bytes, maximum: int, what: str) -> None:
    if len(data) > maximum:
        raise ValueError(f"{what}: {len(data)} bytes > {maximum}")


@dataclass(frozen=True, slots=True)
class ClientHello(_HasExtensions):
    """RFC 6347 §4.2.1 / RFC 5246 §7.4.1.2 (DTLS adds the cookie)."""

    MSG_TYPE: ClassVar[int] = HandshakeType.CLIENT_HELLO
    client_version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: tuple[int, ...] = (NULL_COMPRESSION,)
    extensions: tuple[Extension, ...] = ()

    def cookie_input(self) -> bytes:
        """The fields a HelloVerifyRequest cookie covers, in wire form: client_version,
        random, session_id, cipher_suites and compression_methods (cookie and extensions
        excluded, as Californium's CookieGenerator)."""
        return (
            u16(self.client_version)
            + self.random
            + vec8(self.session_id)
            + vec16(_u16_body(self.cipher_suites))
            + vec8(bytes(self.compression_methods))
        )

    def encode(self) -> bytes:
        _check_random(self.random)
        _check_vector(self.session_id, MAX_SESSION_ID, "session_id")
        _check_vector(self.cookie, MAX_COOKIE, "cookie")
        if not self.cipher_suites or not self.compression_methods:
            raise ValueError("cipher_suites and compression_methods must not be empty")
        return (
            u16(self.client_version)
            + self.random
            + vec8(self.session_id)
            + vec8(self.cookie)
            + vec16(_u16_body(self.cipher_suites))
            + vec8(bytes(self.compression_methods))
            + encode_extensions(self.extensions, from_server=False)
        )

    @classmethod
    def decode(cls, body: bytes) -> ClientHello:
        reader = Reader(body)
        version = reader.u16("client_version")
        random = reader.raw(RANDOM_LENGTH, "random")
        session_id = reader.vector(1, "session_id", 0, MAX_SESSION_ID)
        cookie = reader.vector(1, "cookie")
        suites = reader.u16_list(2, "cipher_suites", 2, 0xFFFE)
        methods = tuple(reader.vector(1, "compression_methods", 1))
        extensions = decode_extensions(reader, from_server=False)
        return cls(version, random, session_id, cookie, suites, methods, extensions)


@dataclass(frozen=True, slots=True)
class HelloVerifyRequest:
    """RFC 6347 §4.2.1: server_version, opaque cookie<0..2^8-1>."""

    MSG_TYPE: ClassVar[int] = HandshakeType.HELLO_VERIFY_REQUEST
    server_version: int
    cookie: bytes

    def encode(self) -> bytes:
        _check_vector(self.cookie, MAX_COOKIE, "cookie")
        return u16(self.server_version) + vec8(self.cookie)

    @classmethod
    def decode(cls, body: bytes) -> HelloVerifyRequest:
        reader = Reader(body)
        version = reader.u16("server_version")
        cookie = reader.vector(1, "cookie")
        reader.end("hello_verify_request")
        return cls(version, cookie)


@dataclass(frozen=True, slots=True)
class ServerHello(_HasExtensions):
    """RFC 5246 §7.4.1.3."""

    MSG_TYPE: ClassVar[int] = HandshakeType.SERVER_HELLO
    server_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int = NULL_COMPRESSION
    extensions: tuple[Extension, ...] = ()

    def encode(self) -> bytes:
        _check_random(self.random)
        _check_vector(self.session_id, MAX_SESSION_ID, "session_id")
        return (
            u16(self.server_version)
            + self.random
            + vec8(self.session_id)
            + u16(self.cipher_suite)
            + u8(self.compression_method)
            + encode_extensions(self.extensions, from_server=True)
        )

    @classmethod
    def decode(cls, body: bytes) -> ServerHello:
        reader = Reader(body)
        version = reader.u16("server_version")
        random = reader.raw(RANDOM_LENGTH, "random")
        session_id = reader.vector(1, "session_id", 0, MAX_SESSION_ID)
        suite = reader.u16("cipher_suite")
        method = reader.u8("compression_method")
        extensions = decode_extensions(reader, from_server=True)
        return cls(version, random, session_id, suite, method, extensions)


# ---------------------------------------------------------------------------------------------
# Authentication and key exchange


@dataclass(frozen=True, slots=True)
class Certificate:
    """RFC 5246 §7.4.2, or RFC 7250 §3 for raw public keys.

    X.509: ``certificates`` is the DER chain, sender's certificate first, possibly empty
    (ASN.1Cert certificate_list<0..2^24-1>, each ASN.1Cert<1..2^24-1>).
    Raw public key: ``certificates`` holds the one DER SubjectPublicKeyInfo, sent as
    opaque ASN.1_subjectPublicKeyInfo<1..2^24-1> without a list around it. A zero length
    there is accepted as "no key" (a client without one; Californium does the same).
    """

    MSG_TYPE: ClassVar[int] = HandshakeType.CERTIFICATE
    certificates: tuple[bytes, ...] = ()
    certificate_type: int = CertificateType.X509

    @property
    def raw_public_key(self) -> bytes | None:
        if self.certificate_type != CertificateType.RAW_PUBLIC_KEY or not self.certificates:
            return None
        return self.certificates[0]

    def encode(self) -> bytes:
        if self.certificate_type == CertificateType.RAW_PUBLIC_KEY:
            if len(self.certificates) > 1:
                raise ValueError("a raw public key Certificate holds one key")
            return vec24(self.certificates[0] if self.certificates else b"")
        if any(not cert for cert in self.certificates):
            raise ValueError("empty certificate in the chain")
        return vec24(b"".join(vec24(cert) for cert in self.certificates))

    @classmethod
    def decode(cls, body: bytes, certificate_type: int = CertificateType.X509) -> Certificate:
        reader = Reader(body)
        if certificate_type == CertificateType.RAW_PUBLIC_KEY:
            key = reader.vector(3, "subjectPublicKeyInfo")
            reader.end("certificate")
            return cls((key,) if key else (), certificate_type)
        chain = reader.sub(3, "certificate_list")
        reader.end("certificate")
        certificates: list[bytes] = []
        while chain.remaining:
            certificates.append(chain.vector(3, "ASN.1Cert", 1))
        return cls(tuple(certificates), certificate_type)


@dataclass(frozen=True, slots=True)
class EcdhParams:
    """ServerECDHParams with a named curve (RFC 8422 §5.4); ``public`` is the encoded
    point (uncompressed for secp256r1, 32 bytes for x25519)."""

    named_group: int
    public: bytes

    def encode(self) -> bytes:
        if not 1 <= len(self.public) <= 0xFF:
            raise ValueError(f"ECPoint: {len(self.public)} bytes")
        return u8(NAMED_CURVE) + u16(self.named_group) + vec8(self.public)

    @classmethod
    def read(cls, reader: Reader) -> EcdhParams:
        curve_type = reader.u8("curve_type")
        if curve_type != NAMED_CURVE:  # explicit curves are deprecated (RFC 8422 §5.4)
            raise DecodeError(
                f"curve_type {curve_type} is not named_curve", AlertDescription.ILLEGAL_PARAMETER
            )
        group = reader.u16("namedcurve")
        public = reader.vector(1, "ECPoint", 1)
        return cls(group, public)


@dataclass(frozen=True, slots=True)
class ServerKeyExchange:
    """RFC 4279 §2 (PSK), RFC 8422 §5.4 (ECDHE_ECDSA), RFC 5489 §2 (ECDHE_PSK).

    * PSK: ``hint`` only (psk_identity_hint<0..2^16-1>);
    * ECDHE_ECDSA: ``params``, then ``signature_algorithm`` and ``signature`` (digitally-signed
      over client_random + server_random + params, see ``signed_content``);
    * ECDHE_PSK: ``hint`` (always present, may be empty), then ``params``; not signed.
    """

    MSG_TYPE: ClassVar[int] = HandshakeType.SERVER_KEY_EXCHANGE
    hint: bytes | None = None
    params: EcdhParams | None = None
    signature_algorithm: int | None = None
    signature: bytes | None = None

    def signed_content(self, client_random: bytes, server_random: bytes) -> bytes:
        """What the ECDSA signature covers (RFC 8422 §5.4)."""
        if self.params is None:
            raise ValueError("no ECDH parameters")
        return client_random + server_random + self.params.encode()

    def encode(self) -> bytes:
        out = b""
        if self.hint is not None:
            out += vec16(self.hint)
        if self.params is not None:
            out += self.params.encode()
        if self.signature is not None:
            if self.signature_algorithm is None:
                raise ValueError("signature without signature_algorithm")
            out += u16(self.signature_algorithm) + vec16(self.signature)
        return out

    @classmethod
    def decode(cls, body: bytes, key_exchange: KeyExchange) -> ServerKeyExchange:
        reader = Reader(body)
        if key_exchange is KeyExchange.PSK:
            result = cls(hint=reader.vector(2, "psk_identity_hint"))
        elif key_exchange is KeyExchange.ECDHE_PSK:
            hint = reader.vector(2, "psk_identity_hint")
            result = cls(hint=hint, params=EcdhParams.read(reader))
        else:
            params = EcdhParams.read(reader)
            algorithm = reader.u16("signature_algorithm")
            signature = reader.vector(2, "signature")
            result = cls(params=params, signature_algorithm=algorithm, signature=signature)
        reader.end("server_key_exchange")
        return result


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """RFC 5246 §7.4.4."""

    MSG_TYPE: ClassVar[int] = HandshakeType.CERTIFICATE_REQUEST
    certificate_types: tuple[int, ...] = (ClientCertificateType.ECDSA_SIGN,)
    signature_algorithms: tuple[int, ...] = (SignatureScheme.ECDSA_SECP256R1_SHA256,)
    authorities: tuple[bytes, ...] = ()  # DER DistinguishedNames

    def encode(self) -> bytes:
        if not self.certificate_types or not self.signature_algorithms:
            raise ValueError("certificate_types and signature_algorithms must not be empty")
        return (
            vec8(bytes(self.certificate_types))
            + vec16(_u16_body(self.signature_algorithms))
            + vec16(b"".join(vec16(name) for name in self.authorities))
        )

    @classmethod
    def decode(cls, body: bytes) -> CertificateRequest:
        reader = Reader(body)
        types = tuple(reader.vector(1, "certificate_types", 1))
        schemes = reader.u16_list(2, "supported_signature_algorithms", 2, 0xFFFE)
        names_reader = reader.sub(2, "certificate_authorities")
        reader.end("certificate_request")
        names: list[bytes] = []
        while names_reader.remaining:
            names.append(names_reader.vector(2, "DistinguishedName", 1))
        return cls(types, schemes, tuple(names))


@dataclass(frozen=True, slots=True)
class ServerHelloDone:
    """RFC 5246 §7.4.5: empty."""

    MSG_TYPE: ClassVar[int] = HandshakeType.SERVER_HELLO_DONE

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, body: bytes) -> ServerHelloDone:
        if body:
            raise DecodeError(f"server_hello_done: {len(body)} bytes, must be empty")
        return cls()


@dataclass(frozen=True, slots=True)
class CertificateVerify:
    """RFC 5246 §7.4.8: digitally-signed over the handshake messages so far."""

    MSG_TYPE: ClassVar[int] = HandshakeType.CERTIFICATE_VERIFY
    signature_algorithm: int
    signature: bytes

    def encode(self) -> bytes:
        return u16(self.signature_algorithm) + vec16(self.signature)

    @classmethod
    def decode(cls, body: bytes) -> CertificateVerify:
        reader = Reader(body)
        algorithm = reader.u16("signature_algorithm")
        signature = reader.vector(2, "signature")
        reader.end("certificate_verify")
        return cls(algorithm, signature)


@dataclass(frozen=True, slots=True)
class ClientKeyExchange:
    """RFC 4279 §2 (PSK: ``identity``), RFC 8422 §5.7 (ECDHE: ``public``, an explicit
    ECPoint<1..2^8-1>), RFC 5489 §2 (ECDHE_PSK: ``identity`` then ``public``)."""

    MSG_TYPE: ClassVar[int] = HandshakeType.CLIENT_KEY_EXCHANGE
    identity: bytes | None = None
    public: bytes | None = None

    def encode(self) -> bytes:
        out = b""
        if self.identity is not None:
            out += vec16(self.identity)
        if self.public is not None:
            if not 1 <= len(self.public) <= 0xFF:
                raise ValueError(f"ECPoint: {len(self.public)} bytes")
            out += vec8(self.public)
        return out

    @classmethod
    def decode(cls, body: bytes, key_exchange: KeyExchange) -> ClientKeyExchange:
        reader = Reader(body)
        identity = None
        public = None
        if key_exchange is not KeyExchange.ECDHE_ECDSA:
            identity = reader.vector(2, "psk_identity")
        if key_exchange is not KeyExchange.PSK:
            public = reader.vector(1, "ecdh_Yc", 1)
        reader.end("client_key_exchange")
        return cls(identity, public)


@dataclass(frozen=True, slots=True)
class Finished:
    """RFC 5246 §7.4.9: verify_data[verify_data_length], 12 bytes for every suite here."""

    MSG_TYPE: ClassVar[int] = HandshakeType.FINISHED
    verify_data: bytes

    def encode(self) -> bytes:
        return self.verify_data

    @classmethod
    def decode(cls, body: bytes, length: int = 12) -> Finished:
        if len(body) != length:
            raise DecodeError(f"finished: {len(body)} bytes, expected {length}")
        return cls(body)


HandshakeMessage = (
    ClientHello
    | HelloVerifyRequest
    | ServerHello
    | Certificate
    | ServerKeyExchange
    | CertificateRequest
    | ServerHelloDone
    | CertificateVerify
    | ClientKeyExchange
    | Finished
)


def decode_handshake(
    msg_type: int,
    body: bytes,
    key_exchange: KeyExchange | None = None,
    certificate_type: int = CertificateType.X509,
) -> HandshakeMessage:
    """Decode a reassembled message body of the given type.

    ``key_exchange`` is needed for ServerKeyExchange and ClientKeyExchange (ValueError if
    missing); an unknown or unsupported type (e.g. hello_request) is unexpected_message.
    """
    if msg_type == HandshakeType.CLIENT_HELLO:
        return ClientHello.decode(body)
    if msg_type == HandshakeType.SERVER_HELLO:
        return ServerHello.decode(body)
    if msg_type == HandshakeType.HELLO_VERIFY_REQUEST:
        return HelloVerifyRequest.decode(body)
    if msg_type == HandshakeType.CERTIFICATE:
        return Certificate.decode(body, certificate_type)
    if msg_type == HandshakeType.CERTIFICATE_REQUEST:
        return CertificateRequest.decode(body)
    if msg_type == HandshakeType.SERVER_HELLO_DONE:
        return ServerHelloDone.decode(body)
    if msg_type == HandshakeType.CERTIFICATE_VERIFY:
        return CertificateVerify.decode(body)
    if msg_type == HandshakeType.FINISHED:
        return Finished.decode(body)
    if msg_type in (HandshakeType.SERVER_KEY_EXCHANGE, HandshakeType.CLIENT_KEY_EXCHANGE):
        if key_exchange is None:
            raise ValueError("key_exchange is needed to decode a key exchange message")
        if msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
            return ServerKeyExchange.decode(body, key_exchange)
        return ClientKeyExchange.decode(body, key_exchange)
    raise DecodeError(f"unexpected handshake type {msg_type}", AlertDescription.UNEXPECTED_MESSAGE)


def encode_message(message: HandshakeMessage, message_seq: int) -> bytes:
    """The message with its 12-byte header, unfragmented (the transcript form)."""
    return encode_handshake(message.MSG_TYPE, message_seq, message.encode())


# ---------------------------------------------------------------------------------------------
# ChangeCipherSpec and Alert records


@dataclass(frozen=True, slots=True)
class ChangeCipherSpec:
    """RFC 5246 §7.1: one byte, value 1."""

    CONTENT_TYPE: ClassVar[int] = ContentType.CHANGE_CIPHER_SPEC

    def encode(self) -> bytes:
        return b"\x01"

    @classmethod
    def decode(cls, payload: bytes) -> ChangeCipherSpec:
        if len(payload) != 1:
            raise DecodeError(f"change_cipher_spec: {len(payload)} bytes")
        if payload[0] != 1:
            raise DecodeError(
                f"change_cipher_spec value {payload[0]}", AlertDescription.ILLEGAL_PARAMETER
            )
        return cls()


@dataclass(frozen=True, slots=True)
class Alert:
    """RFC 5246 §7.2: level and description (kept as ints; unknown values are legal)."""

    CONTENT_TYPE: ClassVar[int] = ContentType.ALERT
    level: int
    description: int

    @property
    def is_fatal(self) -> bool:
        return self.level == AlertLevel.FATAL

    @property
    def name(self) -> str:
        """e.g. ``decrypt_error``; ``alert(N)`` for an unknown description."""
        try:
            return AlertDescription(self.description).name.lower()
        except ValueError:
            return f"alert({self.description})"

    def __str__(self) -> str:
        try:
            level = AlertLevel(self.level).name.lower()
        except ValueError:
            level = f"level({self.level})"
        return f"{level} {self.name}"

    def encode(self) -> bytes:
        return bytes((self.level, self.description))

    @classmethod
    def decode(cls, payload: bytes) -> Alert:
        """Exactly one alert per record (what every DTLS stack sends)."""
        if len(payload) != 2:
            raise DecodeError(f"alert: {len(payload)} bytes")
        return cls(payload[0], payload[1])

    @classmethod
    def fatal(cls, description: AlertDescription) -> Alert:
        return cls(AlertLevel.FATAL, description)
