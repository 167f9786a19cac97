"""The server side of a DTLS 1.2 handshake (RFC 6347 §4.2), without I/O.

Records go in (``on_record``), datagrams to send come out. The connector has already checked
the cookie of the ClientHello (RFC 6347 §4.2.1) before this object exists, so a client pays a
round trip before any state is kept. PSK suites (RFC 4279) with the Connection ID extension
(RFC 9146), the extended master secret (RFC 7627) and the renegotiation indication (RFC 5746;
renegotiation itself is not supported), the record size limit (RFC 8449) or else the maximum
fragment length (RFC 6066 §4). Key exchanges: PSK (RFC 4279), ECDHE_PSK (RFC 5489) and
ECDHE_ECDSA (RFC 8422) with an X.509 chain or a raw public key (RFC 7250).

With ECDHE_ECDSA the server asks for a client certificate (RFC 5246 §7.4.4) unless client
authentication is NONE; it checks the chain (or raw public key) against the trust store and the
CertificateVerify signature over the transcript (§7.4.8). NEEDED refuses a client without one.

A ClientHello that offers the id of a cached session gets the abbreviated handshake
(RFC 5246 §7.3): ServerHello with that id, ChangeCipherSpec and Finished in one flight, then the
client's ChangeCipherSpec and Finished complete it. The extended master secret rules of
RFC 7627 §5.3 decide whether a session may be resumed; with Californium's default mode
(ENABLED) a session without it gets no session id at all.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives.asymmetric import ec

from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls._record import AEAD_FOR_CIPHER_SUITE, AeadCipher, Record
from extplugtest.dtls.ciphersuites import CipherSuite, KeyExchange
from extplugtest.dtls.credentials import PskStore
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
    ecdsa_verify_sha256_digest,
    extended_master_secret,
    key_block,
    master_secret,
    psk_premaster_secret,
    verify_data,
)
from extplugtest.dtls.messages import (
    DTLS_1_2,
    MAX_PLAINTEXT,
    NULL_COMPRESSION,
    Alert,
    AlertLevel,
    Certificate,
    CertificateRequest,
    CertificateType,
    CertificateVerify,
    ChangeCipherSpec,
    ClientCertificateType,
    ClientCertificateTypeExtension,
    ClientHello,
    ClientKeyExchange,
    ConnectionIdExtension,
    ContentType,
    EcdhParams,
    EcPointFormatsExtension,
    ExtendedMasterSecretExtension,
    Extension,
    Finished,
    MaxFragmentLengthExtension,
    NamedGroup,
    RecordSizeLimitExtension,
    RenegotiationInfoExtension,
    ServerCertificateTypeExtension,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchange,
    SignatureScheme,
    SupportedGroupsExtension,
    encode_message,
)
from extplugtest.dtls.pki import (
    CertificateCredentials,
    TrustStore,
    UntrustedCertificate,
    rpk_principal,
    x509_principal,
)
from extplugtest.dtls.reassembly import CompleteMessage, Reassembler
from extplugtest.dtls.session_cache import CachedSession, SessionCache

PSK_SUITES = tuple(s for s in cs.DEFAULT_PREFERENCE if s.key_exchange is KeyExchange.PSK)
#: the groups we offer for ECDHE, in our order of preference (RFC 8422 §5.1.1)
GROUPS = (NamedGroup.X25519, NamedGroup.SECP256R1)


class HandshakeFailure(Exception):
    """The handshake ends with a fatal alert; str() says why (for the log)."""

    def __init__(self, alert: AlertDescription, reason: str) -> None:
        super().__init__(reason)
        self.alert = alert


class ClientAuth(Enum):
    """DTLS.CLIENT_AUTHENTICATION_MODE: whether an ECDHE_ECDSA client must show a certificate."""

    NONE = "NONE"  # no CertificateRequest
    WANTED = "WANTED"  # asked for; a client without one stays unauthenticated
    NEEDED = "NEEDED"  # a client without one fails the handshake


class ExtendedMasterSecretMode(Enum):
    """DTLS.EXTENDED_MASTER_SECRET_MODE (RFC 7627; inventory §6.3)."""

    NONE = "NONE"  # never used: the extension is not answered
    OPTIONAL = "OPTIONAL"  # used when offered; sessions without it are resumable too
    ENABLED = "ENABLED"  # used when offered; a session without it gets no session id
    REQUIRED = "REQUIRED"  # a client that does not offer it fails the handshake


#: the signature algorithms we verify in CertificateVerify (RFC 5246 §7.4.4)
CLIENT_SIGNATURE_SCHEMES = (SignatureScheme.ECDSA_SECP256R1_SHA256,)


@dataclass
class DtlsConfig:
    psk_store: PskStore
    cipher_suites: tuple[CipherSuite, ...] = cs.DEFAULT_PREFERENCE
    #: the server's certificate and key, for the ECDHE_ECDSA suites (None: PSK only)
    certificate: CertificateCredentials | None = None
    #: length of the CIDs this server assigns (0: support the extension, use no CID inbound;
    #: -1, DTLS.CONNECTION_ID_LENGTH's "disabled": stored as 0 with cid_enabled False)
    cid_length: int = 6
    #: False: the client's connection_id extension is ignored (RFC 9146 not negotiated)
    cid_enabled: bool = True
    extended_master_secret_mode: ExtendedMasterSecretMode = ExtendedMasterSecretMode.ENABLED
    #: the extended test server's value (inventory §1.3); Scandium's own default is NEEDED
    client_auth: ClientAuth = ClientAuth.WANTED
    #: checks client certificates; the demo CA unless --trust-store/--trust-all
    trust_store: TrustStore = field(default_factory=TrustStore.demo)
    #: sessions that a ClientHello may resume by session id
    session_cache: SessionCache = field(default_factory=SessionCache)
    #: DTLS.RECORD_SIZE_LIMIT: the limit our ServerHello answers a record_size_limit with
    #: (RFC 8449; the largest record plaintext we accept); None: 2^14, Californium's default
    #: (the session's maximum fragment length)
    record_size_limit: int | None = None

    def __post_init__(self) -> None:
        if self.cid_length < 0:
            self.cid_length, self.cid_enabled = 0, False
        limit = self.record_size_limit
        if limit is not None and not RecordSizeLimitExtension.MINIMUM <= limit <= MAX_PLAINTEXT:
            raise ValueError(f"record size limit {limit} is not 64..{MAX_PLAINTEXT}")

    @property
    def extended_master_secret(self) -> bool:
        """Whether only sessions with the extended master secret are resumable (ENABLED and
        REQUIRED); what the connector checks before it caches a restored session."""
        return self.extended_master_secret_mode in (
            ExtendedMasterSecretMode.ENABLED,
            ExtendedMasterSecretMode.REQUIRED,
        )


@dataclass
class Session:
    """What an established connection keeps of its handshake."""

    suite: CipherSuite
    cipher: AeadCipher
    identity: bytes
    session_id: bytes
    read_cid: bytes  # ours: on the records the client sends
    write_cid: bytes  # the client's: on our records (b"": plain records)
    cid_negotiated: bool
    extended_master_secret: bool
    secure_renegotiation: bool
    next_write_seq: int  # epoch 1
    #: how *identity* was authenticated: None for PSK (or no client certificate), else the
    #: CertificateType of the client's certificate; then *identity* is its principal name
    #: (an X.509 subject DN, or an ni: URI of a raw public key), UTF-8
    peer_certificate_type: int | None = None
    resumed: bool = False  # an abbreviated handshake (RFC 5246 §7.3)
    #: the most plaintext bytes one record to the client may carry: its record_size_limit
    #: (RFC 8449, at most 2^14) or the negotiated max_fragment_length (RFC 6066 §4; then
    #: also the limit for its records to us); 2^14 when it sent neither. The records the
    #: connector seals for this session must keep to it.
    record_size_limit: int = MAX_PLAINTEXT
    #: the most plaintext bytes one record from the client may carry: our own advertised
    #: record_size_limit (RFC 8449 §4), the negotiated max_fragment_length (RFC 6066 §4), else
    #: 2^14; a larger record is a fatal record_overflow
    receive_limit: int = MAX_PLAINTEXT

    @property
    def anonymous(self) -> bool:
        """A certificate handshake (ECDHE_ECDSA) without a client certificate: such a
        connection waits for the application's authorization
        (DTLS.APPLICATION_AUTHORIZATION_TIMEOUT, inventory §6.3)."""
        return self.suite.key_exchange is KeyExchange.ECDHE_ECDSA and (
            self.peer_certificate_type is None
        )


#: Largest datagram of a flight: the IPv6 minimum MTU (1280) less the IPv6 and UDP headers,
#: so that no flight depends on IP fragmentation.
MAX_FLIGHT_DATAGRAM = 1232
RECORD_HEADER = 13  # type, version, epoch, sequence number, length
HANDSHAKE_HEADER = 12  # type, length, message_seq, fragment_offset, fragment_length


def split_handshake_message(encoded: bytes, limit: int) -> list[bytes]:
    """An encoded (unfragmented) handshake message as fragments of at most *limit* bytes each,
    header included (RFC 6347 §4.2.3)."""
    if len(encoded) <= limit:
        return [encoded]
    msg_type_length_seq, body = encoded[:6], encoded[HANDSHAKE_HEADER:]
    chunk = limit - HANDSHAKE_HEADER
    return [
        msg_type_length_seq
        + offset.to_bytes(3, "big")
        + len(body[offset : offset + chunk]).to_bytes(3, "big")
        + body[offset : offset + chunk]
        for offset in range(0, len(body), chunk)
    ]


def plain_record(content_type: int, seq: int, payload: bytes, version: int = DTLS_1_2) -> bytes:
    """An epoch-0 record (RFC 6347 §4.1)."""
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + seq.to_bytes(8, "big")  # epoch 0 in the top 16 bits
        + len(payload).to_bytes(2, "big")
        + payload
    )


class ServerHandshake:
    def __init__(
        self,
        config: DtlsConfig,
        hello_message: CompleteMessage,
        record_seq: int,
        read_cid: bytes,
        hello: ClientHello | None = None,
    ) -> None:
        self.config = config
        # *hello*: the decoded ClientHello, when the caller has it already (the cookie check)
        self.hello = hello if hello is not None else ClientHello.decode(hello_message.body)
        self.read_cid = read_cid
        self.transcript = Transcript()
        self.transcript.update(hello_message.to_bytes())  # RFC 6347 §4.2.1: from ClientHello 2
        self.hello_seq = hello_message.message_seq
        self.reassembler = Reassembler(next_seq=hello_message.message_seq + 1)
        # The ServerHello takes the second ClientHello's message_seq and record sequence
        # number (plugtest-spec §4: what OpenSSL, tinydtls and Californium expect).
        self.message_seq = hello_message.message_seq
        self.write_seq = record_seq
        self.flight: list[bytes] = []
        self.session: Session | None = None
        self.cipher: AeadCipher | None = None
        self.master = b""
        self.identity = b""
        self.suite: CipherSuite | None = None
        self.use_ems = False
        self.secure_renegotiation = False
        self.write_cid = b""
        self.cid_negotiated = False
        self.server_random = os.urandom(32)
        self.session_id = os.urandom(32)
        #: the client's limit on the records we send (RFC 8449 / RFC 6066)
        self.record_size_limit = MAX_PLAINTEXT
        self.receive_limit = MAX_PLAINTEXT
        self.client_ccs = False
        self.pending_epoch1: list[Record] = []
        self.ecdhe: EcdheKeyPair | None = None
        #: the handshake message we accept next from the client
        self.expected = HandshakeType.CLIENT_KEY_EXCHANGE
        self.resumed: CachedSession | None = None
        #: the certificate type of a requested client certificate (None: not requested)
        self.client_certificate_type: int | None = None
        self.client_key: ec.EllipticCurvePublicKey | None = None
        self.peer_certificate_type: int | None = None

    @property
    def done(self) -> bool:
        return self.session is not None

    # -- flight 4 ----------------------------------------------------------------------------
    def start(self) -> list[bytes]:
        """Negotiate and answer with ServerHello ... ServerHelloDone (as one datagram), or,
        resuming a session, with ServerHello, ChangeCipherSpec and Finished."""
        hello = self.hello
        if hello.client_version > DTLS_1_2:  # a smaller number is a newer version
            raise HandshakeFailure(AlertDescription.PROTOCOL_VERSION, "client below DTLS 1.2")
        if NULL_COMPRESSION not in hello.compression_methods:
            raise HandshakeFailure(AlertDescription.ILLEGAL_PARAMETER, "no null compression")
        offers_ems = hello.extension(ExtendedMasterSecretExtension) is not None
        mode = self.config.extended_master_secret_mode
        if mode is ExtendedMasterSecretMode.REQUIRED and not offers_ems:
            raise HandshakeFailure(
                AlertDescription.HANDSHAKE_FAILURE, "the extended master secret is required"
            )
        if mode is ExtendedMasterSecretMode.ENABLED and not offers_ems:
            self.session_id = b""  # Californium: such a session cannot be resumed
        self.resumed = self._resumable_session()
        if self.resumed is not None:
            self.suite = self.resumed.suite
        else:
            suites = cs.common_suites(self.config.cipher_suites, hello.cipher_suites)
            suites = [s for s in suites if self._usable(s)]
            if not suites:
                raise HandshakeFailure(AlertDescription.HANDSHAKE_FAILURE, "no common cipher suite")
            self.suite = suites[0]
        extensions = self._common_extensions()
        if self.resumed is not None:
            return self._abbreviated_flight(extensions)
        flight: list[object] = []
        if self.suite.uses_ecdhe:
            self.ecdhe = EcdheKeyPair.generate(self._group())
            if hello.extension(EcPointFormatsExtension):
                extensions.append(EcPointFormatsExtension())  # uncompressed (RFC 8422 §5.2)
            params = EcdhParams(self.ecdhe.group, self.ecdhe.public)
            if self.suite.key_exchange is KeyExchange.ECDHE_PSK:
                flight.append(ServerKeyExchange(hint=b"", params=params))
            else:
                flight += self._certificate_messages(params, extensions)
        server_hello = ServerHello(
            DTLS_1_2, self.server_random, self.session_id, self.suite.code,
            extensions=tuple(extensions),
        )  # fmt: skip
        messages = [server_hello, *flight, ServerHelloDone()]
        self.flight = self._flight_datagrams([self._encode(m) for m in messages])
        return list(self.flight)

    def _flight_datagrams(self, encoded_messages: list[bytes]) -> list[bytes]:
        """Handshake messages as datagrams: one record per message (or per fragment of a
        message too large for a datagram or for the client's record size limit, RFC 6347
        §4.2.3), several records per datagram up to MAX_FLIGHT_DATAGRAM. Several messages in
        one record are legal TLS, but some DTLS stacks (tinydtls) refuse them, and
        Californium does not send them either."""
        datagrams: list[bytes] = []
        current = b""
        for encoded in encoded_messages:
            for record in self._handshake_records(encoded):
                if current and len(current) + len(record) > MAX_FLIGHT_DATAGRAM:
                    datagrams.append(current)
                    current = b""
                current += record
        if current:
            datagrams.append(current)
        return datagrams

    def _handshake_records(self, encoded: bytes) -> list[bytes]:
        """An encoded handshake message as epoch-0 records, fragmented to fit a datagram and
        the client's limit: RFC 6066 §4 wants every fragment after the ServerHello within the
        negotiated max_fragment_length (RFC 8449 exempts unprotected records, but keeping to
        its limit costs nothing; Californium fragments to it too)."""
        limit = min(MAX_FLIGHT_DATAGRAM - RECORD_HEADER, self.record_size_limit)
        return [
            plain_record(ContentType.HANDSHAKE, self._next_seq(), fragment)
            for fragment in split_handshake_message(encoded, limit)
        ]

    def _common_extensions(self) -> list[Extension]:
        """EMS, renegotiation indication and CID: answered alike in full and abbreviated
        handshakes (a resumed session takes the CID of this ClientHello)."""
        hello = self.hello
        extensions: list[Extension] = []
        if self._offers_ems():
            self.use_ems = True
            extensions.append(ExtendedMasterSecretExtension())
        renegotiation = hello.extension(RenegotiationInfoExtension)
        if renegotiation is not None and renegotiation.renegotiated_connection:
            raise HandshakeFailure(AlertDescription.HANDSHAKE_FAILURE, "renegotiation info set")
        if renegotiation is not None or cs.TLS_EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites:
            self.secure_renegotiation = True  # RFC 5746 §3.6
            extensions.append(RenegotiationInfoExtension())
        cid = hello.extension(ConnectionIdExtension)
        if cid is not None and self.config.cid_enabled:
            # RFC 9146 §3: the client's CID is what we put on our records
            self.cid_negotiated = True
            self.write_cid = cid.cid
            extensions.append(ConnectionIdExtension(self.read_cid))
        extensions += self._record_size_extensions()
        return extensions

    def _record_size_extensions(self) -> list[Extension]:
        """RFC 8449: a record_size_limit is answered with our own limit; then a
        max_fragment_length is ignored (§5). Otherwise RFC 6066 §4: max_fragment_length is
        echoed and limits the records of both sides. As Californium's ServerHandshaker."""
        record_size_limit = self.hello.extension(RecordSizeLimitExtension)
        if record_size_limit is not None:
            self.record_size_limit = record_size_limit.plaintext_limit
            own = self.config.record_size_limit
            self.receive_limit = MAX_PLAINTEXT if own is None else own
            return [RecordSizeLimitExtension(self.receive_limit)]
        max_fragment_length = self.hello.extension(MaxFragmentLengthExtension)
        if max_fragment_length is not None:
            self.record_size_limit = self.receive_limit = max_fragment_length.length
            return [max_fragment_length]
        return []

    def _offers_ems(self) -> bool:
        return self.config.extended_master_secret_mode is not ExtendedMasterSecretMode.NONE and (
            self.hello.extension(ExtendedMasterSecretExtension) is not None
        )

    # -- resumption (RFC 5246 §7.3) ----------------------------------------------------------
    def _resumable_session(self) -> CachedSession | None:
        """The cached session the ClientHello offers, if it can be resumed; None means a
        full handshake (with a new session id)."""
        session_id = self.hello.session_id
        if not session_id:
            return None
        cached = self.config.session_cache.get(session_id)
        if cached is None:
            return None
        # RFC 5246 §7.4.1.2: the offer must include the session's suite (and we must
        # still allow it).
        if cached.suite.code not in self.hello.cipher_suites or (
            cached.suite not in self.config.cipher_suites
        ):
            return None
        offers_ems = self.hello.extension(ExtendedMasterSecretExtension) is not None
        if cached.extended_master_secret and not offers_ems:
            # RFC 7627 §5.3: the server MUST abort the abbreviated handshake.
            raise HandshakeFailure(
                AlertDescription.HANDSHAKE_FAILURE,
                "resumption of an extended master secret session without the extension",
            )
        if not cached.extended_master_secret and self._offers_ems():
            return None  # RFC 7627 §5.3: a full handshake instead
        return cached

    def _abbreviated_flight(self, extensions: list[Extension]) -> list[bytes]:
        """ServerHello (same session id), ChangeCipherSpec, Finished: one datagram."""
        cached = self.resumed
        assert cached is not None and self.suite is not None
        self.session_id = cached.session_id
        self.identity = cached.identity
        self.peer_certificate_type = cached.peer_certificate_type
        self.master = cached.master_secret
        server_hello = ServerHello(
            DTLS_1_2, self.server_random, self.session_id, self.suite.code,
            extensions=tuple(extensions),
        )  # fmt: skip
        hello_records = b"".join(self._handshake_records(self._encode(server_hello)))
        self._install_keys()
        assert self.cipher is not None
        # RFC 5246 §7.4.9: in the abbreviated handshake the server's Finished comes first and
        # covers ClientHello and ServerHello.
        finished = Finished(verify_data(self.master, SERVER_FINISHED, self.transcript.digest()))
        ccs = plain_record(ContentType.CHANGE_CIPHER_SPEC, self._next_seq(),
                           ChangeCipherSpec().encode())  # fmt: skip
        sealed = self.cipher.seal(1, 0, ContentType.HANDSHAKE, self._encode(finished))
        self.expected = HandshakeType.FINISHED
        self.flight = [hello_records + ccs + sealed]
        return list(self.flight)

    # -- negotiation ---------------------------------------------------------------------
    def _usable(self, suite: CipherSuite) -> bool:
        """Whether *suite* can be used with this client: credentials, group, key type."""
        if suite.key_exchange is KeyExchange.PSK:
            return True
        if not self._offered_groups():
            return False
        if suite.key_exchange is KeyExchange.ECDHE_PSK:
            return True
        # Our certificate key is on secp256r1, and in TLS 1.2 the client's supported groups
        # also limit the curves of certificate keys (RFC 8422 §5.1).
        return (
            self.config.certificate is not None
            and self._certificate_type() is not None
            and NamedGroup.SECP256R1 in self._offered_groups()
        )

    def _offered_groups(self) -> list[int]:
        groups = self.hello.extension(SupportedGroupsExtension)
        offered = groups.groups if groups is not None else (NamedGroup.SECP256R1,)
        return [group for group in GROUPS if group in offered]

    def _group(self) -> int:
        return self._offered_groups()[0]

    def _certificate_type(self) -> int | None:
        """X.509 unless the client asks only for a raw public key (RFC 7250 §4.1)."""
        return _choose_certificate_type(self.hello.extension(ServerCertificateTypeExtension))

    def _certificate_messages(self, params: EcdhParams, extensions: list[Extension]) -> list:
        credentials = self.config.certificate
        assert credentials is not None
        kind = self._certificate_type()
        if self.hello.extension(ServerCertificateTypeExtension) is not None:
            assert kind is not None
            extensions.append(ServerCertificateTypeExtension((kind,)))
        if kind == CertificateType.RAW_PUBLIC_KEY:
            certificate = Certificate((credentials.public_key_info,), kind)
        else:
            certificate = Certificate(credentials.chain)
        unsigned = ServerKeyExchange(params=params)
        signed = unsigned.signed_content(self.hello.random, self.server_random)
        key_exchange = ServerKeyExchange(
            params=params,
            signature_algorithm=SignatureScheme.ECDSA_SECP256R1_SHA256,
            signature=ecdsa_sign_sha256(credentials.private_key, signed),
        )
        messages: list[object] = [certificate, key_exchange]
        request = self._certificate_request(extensions)
        if request is not None:
            messages.append(request)
        return messages

    def _certificate_request(self, extensions: list[Extension]) -> CertificateRequest | None:
        """Ask for a client certificate (RFC 5246 §7.4.4), in a type both sides support
        (RFC 7250 §4.2: the ServerHello then names it)."""
        mode = self.config.client_auth
        if mode is ClientAuth.NONE:
            return None
        offered = self.hello.extension(ClientCertificateTypeExtension)
        kind = _choose_certificate_type(offered)
        if kind is None:
            if mode is ClientAuth.NEEDED:
                raise HandshakeFailure(
                    AlertDescription.UNSUPPORTED_CERTIFICATE,
                    "no common client certificate type, and a client certificate is needed",
                )
            return None  # WANTED: no CertificateRequest then (Californium 4.0)
        if offered is not None:
            extensions.append(ClientCertificateTypeExtension((kind,)))
        self.client_certificate_type = kind
        self.expected = HandshakeType.CERTIFICATE
        return CertificateRequest(
            (ClientCertificateType.ECDSA_SIGN,),
            CLIENT_SIGNATURE_SCHEMES,
            self.config.trust_store.authorities if kind == CertificateType.X509 else (),
        )

    def _encode(self, message: object) -> bytes:
        encoded = encode_message(message, self.message_seq)  # type: ignore[arg-type]
        self.message_seq += 1
        self.transcript.update(encoded)
        return encoded

    def _next_seq(self) -> int:
        seq = self.write_seq
        self.write_seq += 1
        return seq

    # -- records -----------------------------------------------------------------------------
    def on_record(self, record: Record) -> list[bytes]:
        """Feed one record of this client; returns the datagrams to send."""
        if record.epoch == 0:
            if record.content_type == ContentType.CHANGE_CIPHER_SPEC:
                ChangeCipherSpec.decode(record.fragment)
                if self.cipher is None:
                    raise HandshakeFailure(AlertDescription.UNEXPECTED_MESSAGE, "early CCS")
                self.client_ccs = True
                out: list[bytes] = []
                pending, self.pending_epoch1 = self.pending_epoch1, []
                for early in pending:
                    out += self.on_record(early)
                return out
            if record.content_type == ContentType.HANDSHAKE:
                return self._handshake_payload(record.fragment)
            return []
        if record.epoch != 1:
            return []
        if not self.client_ccs:
            if len(self.pending_epoch1) < 8:  # Finished before CCS (reordered): keep a few
                self.pending_epoch1.append(record)
            return []
        assert self.cipher is not None
        try:
            content_type, plaintext = self.cipher.open(record.raw)
        except ValueError:
            # The client's Finished does not authenticate: with PSK this is a wrong key
            # (RFC 4279 §2 lets us answer decrypt_error either way).
            raise HandshakeFailure(
                AlertDescription.DECRYPT_ERROR, "the client's Finished does not authenticate"
            ) from None
        if content_type == ContentType.HANDSHAKE:
            return self._handshake_payload(plaintext)
        return []

    def _handshake_payload(self, payload: bytes) -> list[bytes]:
        out: list[bytes] = []
        for header, fragment in iter_fragments(payload):
            if header.message_seq < self.reassembler.next_seq:
                # An old message again: the client lost our last flight (RFC 6347 §4.2.4).
                if self.flight and not out:
                    out = list(self.flight)
                continue
            self.reassembler.add(header, fragment)
        while (message := self.reassembler.pop()) is not None:
            out = self._message(message)
        return out

    def _message(self, message: CompleteMessage) -> list[bytes]:
        """The client's flight in the order RFC 5246 §7.3 fixes: [Certificate]
        ClientKeyExchange [CertificateVerify] Finished; only Finished when resuming."""
        if message.msg_type != self.expected or self.session is not None:
            raise HandshakeFailure(
                AlertDescription.UNEXPECTED_MESSAGE,
                f"unexpected handshake message {message.msg_type}",
            )
        if message.msg_type == HandshakeType.CERTIFICATE:
            self._client_certificate(message)
        elif message.msg_type == HandshakeType.CLIENT_KEY_EXCHANGE:
            self._client_key_exchange(message)
        elif message.msg_type == HandshakeType.CERTIFICATE_VERIFY:
            self._certificate_verify(message)
        elif message.msg_type == HandshakeType.FINISHED:
            return self._finished(message)
        return []

    # -- client authentication (RFC 5246 §7.4.6, §7.4.8) -----------------------------------
    def _client_certificate(self, message: CompleteMessage) -> None:
        assert self.client_certificate_type is not None
        certificate = Certificate.decode(message.body, self.client_certificate_type)
        self.transcript.update(message.to_bytes())
        self.expected = HandshakeType.CLIENT_KEY_EXCHANGE
        if not certificate.certificates:
            if self.config.client_auth is ClientAuth.NEEDED:
                # RFC 5246 §7.4.6: the server may answer an empty Certificate with a fatal
                # handshake_failure alert.
                raise HandshakeFailure(
                    AlertDescription.HANDSHAKE_FAILURE, "the client sent no certificate"
                )
            return  # WANTED: the client stays unauthenticated
        trust = self.config.trust_store
        try:
            if self.client_certificate_type == CertificateType.RAW_PUBLIC_KEY:
                public_key_info = certificate.certificates[0]
                self.client_key = trust.verify_raw_public_key(public_key_info)
                self.identity = rpk_principal(public_key_info).encode()
            else:
                leaf, self.client_key = trust.verify_chain(certificate.certificates)
                self.identity = x509_principal(leaf).encode()
        except UntrustedCertificate as untrusted:
            raise HandshakeFailure(untrusted.alert, f"client certificate: {untrusted}") from None
        self.peer_certificate_type = self.client_certificate_type

    def _certificate_verify(self, message: CompleteMessage) -> None:
        assert self.client_key is not None
        verify = CertificateVerify.decode(message.body)
        if verify.signature_algorithm not in CLIENT_SIGNATURE_SCHEMES:
            # RFC 5246 §7.4.8: one of the algorithms of our CertificateRequest
            raise HandshakeFailure(
                AlertDescription.ILLEGAL_PARAMETER,
                f"CertificateVerify with signature algorithm {verify.signature_algorithm:#06x}",
            )
        # The signature covers all handshake messages up to, not including, this one.
        if not ecdsa_verify_sha256_digest(
            self.client_key, self.transcript.digest(), verify.signature
        ):
            raise HandshakeFailure(
                AlertDescription.DECRYPT_ERROR, "the client's CertificateVerify does not verify"
            )
        self.transcript.update(message.to_bytes())
        self.expected = HandshakeType.FINISHED

    # -- key exchange ------------------------------------------------------------------------
    def _client_key_exchange(self, message: CompleteMessage) -> None:
        assert self.suite is not None
        exchange = ClientKeyExchange.decode(message.body, self.suite.key_exchange)
        psk = b""
        if self.suite.uses_psk:
            self.identity = exchange.identity or b""
            secret = self.config.psk_store.secret(self.identity)
            # RFC 4279 §2: an unknown identity may be treated like a wrong key, so that
            # identities cannot be probed: the Finished check fails with decrypt_error.
            psk = secret if secret is not None else os.urandom(16)
        shared = b""
        if self.ecdhe is not None:
            if not exchange.public:
                raise HandshakeFailure(AlertDescription.DECODE_ERROR, "no ECDH public key")
            shared = self.ecdhe.exchange(exchange.public)
        self.transcript.update(message.to_bytes())
        if self.suite.key_exchange is KeyExchange.PSK:
            pre_master = psk_premaster_secret(psk)
        elif self.suite.key_exchange is KeyExchange.ECDHE_PSK:
            pre_master = ecdhe_psk_premaster_secret(shared, psk)
        else:
            pre_master = shared
        if self.use_ems:
            # RFC 7627 §3: the session hash ends with ClientKeyExchange (no CertificateVerify)
            self.master = extended_master_secret(pre_master, self.transcript.digest())
        else:
            self.master = master_secret(pre_master, self.hello.random, self.server_random)
        self._install_keys()
        has_key = self.client_key is not None
        self.expected = HandshakeType.CERTIFICATE_VERIFY if has_key else HandshakeType.FINISHED

    def _install_keys(self) -> None:
        assert self.suite is not None
        keys = key_block(self.master, self.hello.random, self.server_random, self.suite)
        self.cipher = AeadCipher(
            AEAD_FOR_CIPHER_SUITE[self.suite.code],
            keys.server_write_key,
            keys.server_write_iv,
            keys.client_write_key,
            keys.client_write_iv,
            write_cid=self.write_cid,
            read_cid=self.read_cid if self.cid_negotiated else b"",
        )

    def _finished(self, message: CompleteMessage) -> list[bytes]:
        assert self.cipher is not None and self.suite is not None
        expected = verify_data(self.master, CLIENT_FINISHED, self.transcript.digest())
        if not hmac.compare_digest(Finished.decode(message.body).verify_data, expected):
            raise HandshakeFailure(AlertDescription.DECRYPT_ERROR, "wrong Finished (wrong PSK?)")
        self.transcript.update(message.to_bytes())
        if self.resumed is not None:
            # Our Finished went out first; the client's completes the handshake and
            # nothing is left to (re)send.
            self.flight = []
            self.config.session_cache.counters.resumed += 1
        else:
            finished = Finished(verify_data(self.master, SERVER_FINISHED, self.transcript.digest()))
            ccs = plain_record(ContentType.CHANGE_CIPHER_SPEC, self._next_seq(),
                               ChangeCipherSpec().encode())  # fmt: skip
            sealed = self.cipher.seal(
                1, 0, ContentType.HANDSHAKE, encode_message(finished, self.message_seq)
            )
            self.message_seq += 1
            self.flight = [ccs + sealed]
            self._cache_session()
        self.session = Session(
            self.suite,
            self.cipher,
            self.identity,
            self.session_id,
            self.read_cid if self.cid_negotiated else b"",
            self.write_cid,
            self.cid_negotiated,
            self.use_ems,
            self.secure_renegotiation,
            next_write_seq=1,
            peer_certificate_type=self.peer_certificate_type,
            resumed=self.resumed is not None,
            record_size_limit=self.record_size_limit,
            receive_limit=self.receive_limit,
        )
        return list(self.flight)

    def _cache_session(self) -> None:
        """Keep the new session for resumption; not one without a session id (ENABLED mode
        without the extended master secret: RFC 7627 §5.3 lets a server refuse to resume
        such sessions, and Californium gives them no session id)."""
        assert self.suite is not None
        if not self.session_id:
            return
        self.config.session_cache.put(
            CachedSession(
                self.session_id,
                self.suite,
                self.master,
                self.use_ems,
                self.identity,
                self.peer_certificate_type,
                created=self.config.session_cache.now(),
            )
        )

    # -- failures ----------------------------------------------------------------------------
    def alert(self, description: AlertDescription) -> bytes:
        """A fatal alert record. Plain: until our ChangeCipherSpec the client reads epoch 0."""
        payload = Alert(AlertLevel.FATAL, description).encode()
        return plain_record(ContentType.ALERT, self._next_seq(), payload)


def _choose_certificate_type(
    offered: ClientCertificateTypeExtension | ServerCertificateTypeExtension | None,
) -> int | None:
    """The first type of the client's list that we support (RFC 7250 §4.1); X.509 when the
    client sent no list; None when nothing fits."""
    if offered is None:
        return CertificateType.X509
    for kind in offered.types:
        if kind in (CertificateType.X509, CertificateType.RAW_PUBLIC_KEY):
            return kind
    return None


def decode_failure(error: DecodeError) -> HandshakeFailure:
    return HandshakeFailure(error.alert, str(error))
