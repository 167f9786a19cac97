"""The client side of a DTLS 1.2 handshake (RFC 6347 §4.2), without I/O; PSK suites.

``start()`` gives the first ClientHello; every received datagram goes to ``on_datagram``, which
returns the datagrams to send; ``retransmit()`` repeats the last flight (RFC 6347 §4.2.4). The
client offers the Connection ID extension (RFC 9146) with its own CID (empty: it supports CIDs
but wants none on the records it receives, as Californium's benchmark client does), the
extended master secret (RFC 7627) and the renegotiation indication (RFC 5746).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from extplugtest.dtls._record import AEAD_FOR_CIPHER_SUITE, AeadCipher, RecordError, parse_datagram
from extplugtest.dtls.ciphersuites import CipherSuite, KeyExchange, by_code
from extplugtest.dtls.handshake_header import AlertDescription, HandshakeType, iter_fragments
from extplugtest.dtls.handshake_server import PSK_SUITES, HandshakeFailure, plain_record
from extplugtest.dtls.keys import (
    CLIENT_FINISHED,
    SERVER_FINISHED,
    Transcript,
    extended_master_secret,
    key_block,
    master_secret,
    psk_premaster_secret,
    verify_data,
)
from extplugtest.dtls.messages import (
    DTLS_1_2,
    Alert,
    ChangeCipherSpec,
    ClientHello,
    ClientKeyExchange,
    ConnectionIdExtension,
    ContentType,
    ExtendedMasterSecretExtension,
    Finished,
    HelloVerifyRequest,
    RenegotiationInfoExtension,
    ServerHello,
    encode_message,
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


class ClientHandshake:
    def __init__(
        self,
        identity: bytes,
        secret: bytes,
        *,
        cid: bytes | None = b"",
        cipher_suites: tuple[CipherSuite, ...] = PSK_SUITES,
    ) -> None:
        self.identity = identity
        self.secret = secret
        self.cid = cid  # None: no CID extension at all
        self.cipher_suites = cipher_suites
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
        self.use_ems = False
        self.server_cid = b""
        self.server_ccs = False
        self.pending_epoch1: list[bytes] = []

    @property
    def done(self) -> bool:
        return self.session is not None

    def start(self) -> bytes:
        return self._hello(b"")

    def retransmit(self) -> list[bytes]:
        return list(self.flight)

    def _hello(self, cookie: bytes) -> bytes:
        extensions: list = [ExtendedMasterSecretExtension(), RenegotiationInfoExtension()]
        if self.cid is not None:
            extensions.append(ConnectionIdExtension(self.cid))
        hello = ClientHello(DTLS_1_2, self.random, b"", cookie,
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

    def on_datagram(self, data: bytes) -> list[bytes]:
        try:
            records = parse_datagram(data, cid_length=len(self.cid or b""))
        except RecordError as error:
            records = list(error.records)
        out: list[bytes] = []
        for record in records:
            out += self._record(record.content_type, record.epoch, record.fragment, record.raw)
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
            if message.msg_type == HandshakeType.SERVER_HELLO:
                self._server_hello(ServerHello.decode(message.body))
                self.transcript.update(message.to_bytes())
            elif message.msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
                self.transcript.update(message.to_bytes())  # PSK hint: not used
            elif message.msg_type == HandshakeType.SERVER_HELLO_DONE:
                self.transcript.update(message.to_bytes())
                out = self._finish_flight()
            elif message.msg_type == HandshakeType.FINISHED and self.cipher is not None:
                self._server_finished(Finished.decode(message.body).verify_data)
            else:
                raise HandshakeFailure(AlertDescription.UNEXPECTED_MESSAGE,
                                       f"unexpected message {message.msg_type}")  # fmt: skip
        return out

    def _server_hello(self, hello: ServerHello) -> None:
        suite = by_code(hello.cipher_suite)
        if (
            suite is None
            or suite not in self.cipher_suites
            or suite.key_exchange is not KeyExchange.PSK
        ):
            raise HandshakeFailure(AlertDescription.ILLEGAL_PARAMETER, "suite not offered")
        self.suite = suite
        self.server_random = hello.random
        self.use_ems = hello.extension(ExtendedMasterSecretExtension) is not None
        cid = hello.extension(ConnectionIdExtension)
        self.server_cid = cid.cid if cid is not None and self.cid is not None else b""
        self.cid_negotiated = cid is not None and self.cid is not None

    def _finish_flight(self) -> list[bytes]:
        assert self.suite is not None
        exchange = encode_message(ClientKeyExchange(identity=self.identity), self.message_seq)
        self.message_seq += 1
        self.transcript.update(exchange)
        pre_master = psk_premaster_secret(self.secret)
        if self.use_ems:
            self.master = extended_master_secret(pre_master, self.transcript.digest())
        else:
            self.master = master_secret(pre_master, self.random, self.server_random)
        keys = key_block(self.master, self.random, self.server_random, self.suite)
        self.cipher = AeadCipher(
            AEAD_FOR_CIPHER_SUITE[self.suite.code],
            keys.client_write_key, keys.client_write_iv,
            keys.server_write_key, keys.server_write_iv,
            write_cid=self.server_cid,
            read_cid=(self.cid or b"") if self.cid_negotiated else b"",
        )  # fmt: skip
        finished = Finished(verify_data(self.master, CLIENT_FINISHED, self.transcript.digest()))
        encoded = encode_message(finished, self.message_seq)
        self.message_seq += 1
        self.transcript.update(encoded)
        ccs = ChangeCipherSpec().encode()
        datagram = plain_record(ContentType.HANDSHAKE, self._next_seq(), exchange)
        datagram += plain_record(ContentType.CHANGE_CIPHER_SPEC, self._next_seq(), ccs)
        datagram += self.cipher.seal(1, 0, ContentType.HANDSHAKE, encoded)
        self.flight = [datagram]
        return [datagram]

    def _server_finished(self, received: bytes) -> None:
        assert self.cipher is not None and self.suite is not None
        # The transcript already holds our Finished (RFC 5246 §7.4.9).
        expected = verify_data(self.master, SERVER_FINISHED, self.transcript.digest())
        if not hmac.compare_digest(received, expected):
            raise HandshakeFailure(AlertDescription.DECRYPT_ERROR, "wrong server Finished")
        self.session = ClientSession(self.suite, self.cipher, self.cid or b"", self.server_cid,
                                     self.use_ems, next_write_seq=1)  # fmt: skip
        self.flight = []
