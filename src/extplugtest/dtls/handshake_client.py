"""The client side of a DTLS 1.2 handshake (RFC 6347 §4.2), without I/O.

``start()`` gives the first ClientHello; every received datagram goes to ``on_datagram``, which
returns the datagrams to send; ``retransmit()`` repeats the last flight (RFC 6347 §4.2.4). The
client offers the Connection ID extension (RFC 9146) with its own CID (empty: it supports CIDs
but wants none on the records it receives, as Californium's benchmark client does), the
extended master secret (RFC 7627) and the renegotiation indication (RFC 5746).

Key exchanges: PSK (RFC 4279), ECDHE_PSK (RFC 5489) and ECDHE_ECDSA (RFC 8422). With
ECDHE_ECDSA the server's X.509 chain, or its raw public key (RFC 7250), is checked against a
trust store and its ServerKeyExchange signature verified; when the server asks (RFC 5246
§7.4.4) the client sends its certificate and a CertificateVerify, or an empty Certificate when
it has none. Giving a previous ``ClientSession`` as ``resume`` offers its session id: if the
server agrees, the abbreviated handshake follows (RFC 5246 §7.3, EMS rules of RFC 7627 §5.3).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from extplugtest.dtls._record import AEAD_FOR_CIPHER_SUITE, AeadCipher, RecordError, parse_datagram
from extplugtest.dtls.ciphersuites import CipherSuite, KeyExchange, by_code
from extplugtest.dtls.handshake_header import (
    AlertDescription,
    DecodeError,
    HandshakeType,
    iter_fragments,
)
from extplugtest.dtls.handshake_server import (
    CLIENT_SIGNATURE_SCHEMES,
    GROUPS,
    PSK_SUITES,
    HandshakeFailure,
    plain_record,
)
from extplugtest.dtls.keys import (
    CLIENT_FINISHED,
    SERVER_FINISHED,
    EcdheKeyPair,
    Transcript,
    ecdhe_psk_premaster_secret,
    ecdsa_sign_sha256_digest,
    ecdsa_verify_sha256,
    extended_master_secret,
    key_block,
    master_secret,
    psk_premaster_secret,
    verify_data,
)
from extplugtest.dtls.messages import (
    DTLS_1_2,
    Alert,
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
    EcPointFormatsExtension,
    ExtendedMasterSecretExtension,
    Extension,
    Finished,
    HelloVerifyRequest,
    RenegotiationInfoExtension,
    ServerCertificateTypeExtension,
    ServerHello,
    ServerKeyExchange,
    SignatureAlgorithmsExtension,
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
from extplugtest.dtls.reassembly import Reassembler


@dataclass
class ClientSession:
    suite: CipherSuite
    cipher: AeadCipher
    read_cid: bytes  # ours, on the records we receive
    write_cid: bytes  # the server's, on the records we send (b"": plain records)
    extended_master_secret: bool
    next_write_seq: int
    #: for a later resumption (RFC 5246 §7.3); an empty id cannot be resumed
    session_id: bytes = b""
    master_secret: bytes = b""
    #: the server's principal (certificate subject DN or raw key ni: URI; "" with PSK)
    peer: str = ""
    resumed: bool = False


class ClientHandshake:
    def __init__(
        self,
        identity: bytes = b"",
        secret: bytes = b"",
        *,
        cid: bytes | None = b"",
        cipher_suites: tuple[CipherSuite, ...] = PSK_SUITES,
        certificate: CertificateCredentials | None = None,
        certificate_types: tuple[int, ...] = (CertificateType.X509,),
        trust_store: TrustStore | None = None,
        resume: ClientSession | None = None,
    ) -> None:
        """*identity*/*secret*: the PSK (PSK and ECDHE_PSK suites); *certificate*: ours, sent
        when the server asks; *certificate_types*: X.509 and/or raw public keys (RFC 7250), in
        our order, for both sides; *trust_store*: checks the server (default: the demo CA)."""
        self.identity = identity
        self.secret = secret
        self.cid = cid  # None: no CID extension at all
        if resume is not None and resume.suite not in cipher_suites:
            cipher_suites = (resume.suite, *cipher_suites)  # RFC 5246 §7.4.1.2
        self.cipher_suites = cipher_suites
        self.certificate = certificate
        if not certificate_types:
            raise ValueError("at least one certificate type is needed")
        self.certificate_types = certificate_types
        self.trust_store = trust_store if trust_store is not None else TrustStore.demo()
        self.resume = resume if resume is not None and resume.session_id else None
        self.random = os.urandom(32)
        self.transcript = Transcript()
        self.reassembler = Reassembler(next_seq=0)
        self.message_seq = 0
        self.write_seq = 0
        self.flight: list[bytes] = []
        self.session: ClientSession | None = None
        self.cipher: AeadCipher | None = None
        self.master = b""
        self.suite: CipherSuite | None = None
        self.server_random = b""
        self.session_id = b""
        self.use_ems = False
        self.server_cid = b""
        self.cid_negotiated = False
        self.server_ccs = False
        self.pending_epoch1: list[bytes] = []
        self.abbreviated = False
        self.server_certificate_type: int = CertificateType.X509
        self.client_certificate_type: int = CertificateType.X509
        self.server_key: ec.EllipticCurvePublicKey | None = None
        self.peer = ""
        self.ecdhe: EcdheKeyPair | None = None
        self.shared_secret = b""
        self.key_exchange_seen = False
        self.certificate_request: CertificateRequest | None = None

    @property
    def done(self) -> bool:
        return self.session is not None

    def start(self) -> bytes:
        return self._hello(b"")

    def retransmit(self) -> list[bytes]:
        return list(self.flight)

    # -- flight 1 and 3 ----------------------------------------------------------------------
    def _hello(self, cookie: bytes) -> bytes:
        extensions: list[Extension] = [
            ExtendedMasterSecretExtension(),
            RenegotiationInfoExtension(),
        ]
        if self.cid is not None:
            extensions.append(ConnectionIdExtension(self.cid))
        if any(suite.uses_ecdhe for suite in self.cipher_suites):
            # RFC 8422 §5.1: the groups for ECDHE (and, in TLS 1.2, certificate keys)
            extensions += [SupportedGroupsExtension(GROUPS), EcPointFormatsExtension()]
        if any(suite.uses_certificate for suite in self.cipher_suites):
            # RFC 5246 §7.4.1.4.1: what the server may sign with (and we verify)
            extensions.append(SignatureAlgorithmsExtension(CLIENT_SIGNATURE_SCHEMES))
            if self.certificate_types != (CertificateType.X509,):
                # RFC 7250 §4.1; without the extensions both sides use X.509
                types = self.certificate_types
                extensions.append(ServerCertificateTypeExtension(types))
                if self.certificate is not None:
                    extensions.append(ClientCertificateTypeExtension(types))
        session_id = self.resume.session_id if self.resume is not None else b""
        hello = ClientHello(DTLS_1_2, self.random, session_id, cookie,
                            tuple(s.code for s in self.cipher_suites),
                            extensions=tuple(extensions))  # fmt: skip
        encoded = encode_message(hello, self.message_seq)
        self.message_seq += 1
        if cookie:  # the transcript starts with the ClientHello that carries the cookie
            self.transcript = Transcript()
            self.transcript.update(encoded)
        record = plain_record(ContentType.HANDSHAKE, self._next_seq(), encoded)
        self.flight = [record]
        return record

    def _next_seq(self) -> int:
        seq = self.write_seq
        self.write_seq += 1
        return seq

    # -- records -----------------------------------------------------------------------------
    def on_datagram(self, data: bytes) -> list[bytes]:
        try:
            records = parse_datagram(data, cid_length=len(self.cid or b""))
        except RecordError as error:
            records = list(error.records)
        out: list[bytes] = []
        try:
            for record in records:
                out += self._record(record.content_type, record.epoch, record.fragment, record.raw)
        except DecodeError as error:
            raise HandshakeFailure(error.alert, str(error)) from None
        return out

    def _record(self, content_type: int, epoch: int, fragment: bytes, raw: bytes) -> list[bytes]:
        if content_type == ContentType.ALERT and epoch == 0:
            alert = Alert.decode(fragment)
            raise HandshakeFailure(AlertDescription(alert.description), "alert from the server")
        if epoch == 0 and content_type == ContentType.CHANGE_CIPHER_SPEC:
            if self.cipher is None:
                raise HandshakeFailure(AlertDescription.UNEXPECTED_MESSAGE, "early CCS")
            self.server_ccs = True
            out: list[bytes] = []
            pending, self.pending_epoch1 = self.pending_epoch1, []
            for early in pending:
                out += self.on_datagram(early)
            return out
        if epoch == 0 and content_type == ContentType.HANDSHAKE:
            return self._handshake(fragment)
        if epoch == 1:
            if not self.server_ccs or self.cipher is None:
                if len(self.pending_epoch1) < 8:
                    self.pending_epoch1.append(raw)
                return []
            try:
                inner_type, plaintext = self.cipher.open(raw)
            except ValueError:
                raise HandshakeFailure(AlertDescription.BAD_RECORD_MAC, "bad Finished") from None
            if inner_type == ContentType.HANDSHAKE:
                return self._handshake(plaintext)
        return []

    def _handshake(self, payload: bytes) -> list[bytes]:
        out: list[bytes] = []
        for header, fragment in iter_fragments(payload):
            if header.msg_type == HandshakeType.HELLO_VERIFY_REQUEST and self.suite is None:
                request = HelloVerifyRequest.decode(fragment)
                self.reassembler.reset(header.message_seq + 1)
                return [self._hello(request.cookie)]
            if header.message_seq >= self.reassembler.next_seq:
                self.reassembler.add(header, fragment)
        while (message := self.reassembler.pop()) is not None:
            kind, body = message.msg_type, message.body
            if kind == HandshakeType.SERVER_HELLO and self.suite is None:
                self.transcript.update(message.to_bytes())
                self._server_hello(ServerHello.decode(body))
            elif kind == HandshakeType.CERTIFICATE and self._expects_certificate():
                self._server_certificate(Certificate.decode(body, self.server_certificate_type))
                self.transcript.update(message.to_bytes())
            elif kind == HandshakeType.SERVER_KEY_EXCHANGE and self._expects_key_exchange():
                assert self.suite is not None
                self._server_key_exchange(ServerKeyExchange.decode(body, self.suite.key_exchange))
                self.key_exchange_seen = True
                self.transcript.update(message.to_bytes())
            elif kind == HandshakeType.CERTIFICATE_REQUEST and self._expects_request():
                self.certificate_request = CertificateRequest.decode(body)
                self.transcript.update(message.to_bytes())
            elif kind == HandshakeType.SERVER_HELLO_DONE and self._expects_done():
                self.transcript.update(message.to_bytes())
                out = self._finish_flight()
            elif kind == HandshakeType.FINISHED and self.cipher is not None and self.server_ccs:
                out = self._server_finished(Finished.decode(body).verify_data, message.to_bytes())
            else:
                raise HandshakeFailure(AlertDescription.UNEXPECTED_MESSAGE,
                                       f"unexpected message {kind}")  # fmt: skip
        return out

    # The server's flight 4 in the order of RFC 5246 §7.3: ServerHello, [Certificate],
    # [ServerKeyExchange], [CertificateRequest], ServerHelloDone.
    def _in_flight_4(self) -> bool:
        """After the ServerHello of a full handshake, before our flight 5."""
        return self.suite is not None and not self.abbreviated and self.cipher is None

    def _uses_certificate(self) -> bool:
        return self.suite is not None and self.suite.uses_certificate

    def _expects_certificate(self) -> bool:
        return self._in_flight_4() and self._uses_certificate() and self.server_key is None

    def _expects_key_exchange(self) -> bool:
        if not self._in_flight_4() or self.key_exchange_seen:
            return False
        return self.server_key is not None or not self._uses_certificate()

    def _expects_request(self) -> bool:
        return (
            self._in_flight_4()
            and self._uses_certificate()
            and self.key_exchange_seen
            and self.certificate_request is None
        )

    def _expects_done(self) -> bool:
        suite = self.suite
        if not self._in_flight_4() or suite is None:
            return False
        return self.key_exchange_seen or not suite.uses_ecdhe  # PSK: the hint is optional

    # -- flight 4 ----------------------------------------------------------------------------
    def _server_hello(self, hello: ServerHello) -> None:
        suite = by_code(hello.cipher_suite)
        if suite is None or suite not in self.cipher_suites:
            raise HandshakeFailure(AlertDescription.ILLEGAL_PARAMETER, "suite not offered")
        self.suite = suite
        self.server_random = hello.random
        self.session_id = hello.session_id
        self.use_ems = hello.extension(ExtendedMasterSecretExtension) is not None
        cid = hello.extension(ConnectionIdExtension)
        self.server_cid = cid.cid if cid is not None and self.cid is not None else b""
        self.cid_negotiated = cid is not None and self.cid is not None
        # RFC 7250 §4.2: the one type the server chose, out of those we offered
        server_type = hello.extension(ServerCertificateTypeExtension)
        if server_type is not None:
            self.server_certificate_type = server_type.types[0]
        client_type = hello.extension(ClientCertificateTypeExtension)
        if client_type is not None:
            self.client_certificate_type = client_type.types[0]
        if suite.uses_certificate and self.server_certificate_type not in self.certificate_types:
            raise HandshakeFailure(
                AlertDescription.UNSUPPORTED_CERTIFICATE, "server certificate type not offered"
            )
        resume = self.resume
        if resume is not None and hello.session_id == resume.session_id:
            self._resume_session(resume)

    def _resume_session(self, resume: ClientSession) -> None:
        """The server resumes (RFC 5246 §7.3): its CCS and Finished come next."""
        if self.suite is not resume.suite:
            raise HandshakeFailure(AlertDescription.ILLEGAL_PARAMETER, "resumed another suite")
        if self.use_ems != resume.extended_master_secret:
            # RFC 7627 §5.3: the client MUST abort on a changed extended master secret state.
            raise HandshakeFailure(
                AlertDescription.HANDSHAKE_FAILURE, "resumption changes the extended master secret"
            )
        self.abbreviated = True
        self.master = resume.master_secret
        self.peer = resume.peer
        self._install_keys()

    def _server_certificate(self, certificate: Certificate) -> None:
        try:
            if self.server_certificate_type == CertificateType.RAW_PUBLIC_KEY:
                if not certificate.certificates:
                    raise UntrustedCertificate("no raw public key")
                public_key_info = certificate.certificates[0]
                self.server_key = self.trust_store.verify_raw_public_key(public_key_info)
                self.peer = rpk_principal(public_key_info)
            else:
                leaf, self.server_key = self.trust_store.verify_chain(certificate.certificates)
                self.peer = x509_principal(leaf)
        except UntrustedCertificate as untrusted:
            raise HandshakeFailure(untrusted.alert, f"server certificate: {untrusted}") from None

    def _server_key_exchange(self, exchange: ServerKeyExchange) -> None:
        if exchange.params is None:
            return  # PSK: only the identity hint, which we do not use
        if exchange.params.named_group not in GROUPS:
            raise HandshakeFailure(AlertDescription.ILLEGAL_PARAMETER, "group not offered")
        if self._uses_certificate():
            assert self.server_key is not None and exchange.signature is not None
            if exchange.signature_algorithm not in CLIENT_SIGNATURE_SCHEMES:
                raise HandshakeFailure(
                    AlertDescription.ILLEGAL_PARAMETER, "signature algorithm not offered"
                )
            signed = exchange.signed_content(self.random, self.server_random)
            if not ecdsa_verify_sha256(self.server_key, signed, exchange.signature):
                raise HandshakeFailure(
                    AlertDescription.DECRYPT_ERROR, "the ServerKeyExchange signature is wrong"
                )
        self.ecdhe = EcdheKeyPair.generate(exchange.params.named_group)
        self.shared_secret = self.ecdhe.exchange(exchange.params.public)

    # -- flight 5 ----------------------------------------------------------------------------
    def _finish_flight(self) -> list[bytes]:
        """[Certificate] ClientKeyExchange [CertificateVerify] ChangeCipherSpec Finished."""
        assert self.suite is not None
        datagram = b""
        signing_key: ec.EllipticCurvePrivateKey | None = None
        if self.certificate_request is not None:
            certificate, signing_key = self._client_certificate(self.certificate_request)
            encoded = self._encode(certificate)
            datagram += plain_record(ContentType.HANDSHAKE, self._next_seq(), encoded)
        key_exchange = self.suite.key_exchange
        public = self.ecdhe.public if self.ecdhe is not None else None
        identity = self.identity if self.suite.uses_psk else None
        exchange = self._encode(ClientKeyExchange(identity=identity, public=public))
        datagram += plain_record(ContentType.HANDSHAKE, self._next_seq(), exchange)
        if key_exchange is KeyExchange.PSK:
            pre_master = psk_premaster_secret(self.secret)
        elif key_exchange is KeyExchange.ECDHE_PSK:
            pre_master = ecdhe_psk_premaster_secret(self.shared_secret, self.secret)
        else:
            pre_master = self.shared_secret
        if self.use_ems:  # RFC 7627 §3: up to ClientKeyExchange, CertificateVerify excluded
            self.master = extended_master_secret(pre_master, self.transcript.digest())
        else:
            self.master = master_secret(pre_master, self.random, self.server_random)
        if signing_key is not None:  # RFC 5246 §7.4.8: over all messages so far
            signature = ecdsa_sign_sha256_digest(signing_key, self.transcript.digest())
            verify = CertificateVerify(SignatureScheme.ECDSA_SECP256R1_SHA256, signature)
            encoded = self._encode(verify)
            datagram += plain_record(ContentType.HANDSHAKE, self._next_seq(), encoded)
        self._install_keys()
        datagram += self._change_cipher_spec_and_finished()
        self.flight = [datagram]
        return [datagram]

    def _client_certificate(
        self, request: CertificateRequest
    ) -> tuple[Certificate, ec.EllipticCurvePrivateKey | None]:
        """Our certificate if we have one the server accepts (RFC 5246 §7.4.6), else an
        empty one; and the key for the CertificateVerify."""
        kind = self.client_certificate_type
        usable = (
            self.certificate is not None
            and ClientCertificateType.ECDSA_SIGN in request.certificate_types
            and SignatureScheme.ECDSA_SECP256R1_SHA256 in request.signature_algorithms
            and kind in self.certificate_types
        )
        if not usable or self.certificate is None:
            return Certificate((), kind), None
        key = self.certificate.private_key
        if kind == CertificateType.RAW_PUBLIC_KEY:
            return Certificate((self.certificate.public_key_info,), kind), key
        return Certificate(self.certificate.chain), key

    def _encode(self, message: object) -> bytes:
        encoded = encode_message(message, self.message_seq)  # type: ignore[arg-type]
        self.message_seq += 1
        self.transcript.update(encoded)
        return encoded

    def _install_keys(self) -> None:
        assert self.suite is not None
        keys = key_block(self.master, self.random, self.server_random, self.suite)
        self.cipher = AeadCipher(
            AEAD_FOR_CIPHER_SUITE[self.suite.code],
            keys.client_write_key, keys.client_write_iv,
            keys.server_write_key, keys.server_write_iv,
            write_cid=self.server_cid,
            read_cid=(self.cid or b"") if self.cid_negotiated else b"",
        )  # fmt: skip

    def _change_cipher_spec_and_finished(self) -> bytes:
        assert self.cipher is not None
        finished = Finished(verify_data(self.master, CLIENT_FINISHED, self.transcript.digest()))
        encoded = self._encode(finished)
        ccs = plain_record(ContentType.CHANGE_CIPHER_SPEC, self._next_seq(),
                           ChangeCipherSpec().encode())  # fmt: skip
        return ccs + self.cipher.seal(1, 0, ContentType.HANDSHAKE, encoded)

    # -- the end -----------------------------------------------------------------------------
    def _server_finished(self, received: bytes, message: bytes) -> list[bytes]:
        assert self.cipher is not None and self.suite is not None
        # Full handshake: the transcript already holds our Finished (RFC 5246 §7.4.9);
        # abbreviated: the server's Finished comes first and covers both hellos.
        expected = verify_data(self.master, SERVER_FINISHED, self.transcript.digest())
        if not hmac.compare_digest(received, expected):
            raise HandshakeFailure(AlertDescription.DECRYPT_ERROR, "wrong server Finished")
        out: list[bytes] = []
        if self.abbreviated:
            self.transcript.update(message)
            datagram = self._change_cipher_spec_and_finished()
            self.flight = [datagram]  # resent if the server repeats its flight
            out = [datagram]
        else:
            self.flight = []
        self.session = ClientSession(
            self.suite, self.cipher, self.cid or b"", self.server_cid, self.use_ems,
            next_write_seq=1, session_id=self.session_id, master_secret=self.master,
            peer=self.peer, resumed=self.abbreviated,
        )  # fmt: skip
        return out
