"""``coaps://`` for extclient: a DTLS 1.2 channel with the Transport interface of request.py,
on our own handshake and record layer.

Credentials as Californium's cf-cli has them: ``-i/--identity`` and ``-s/--secret``; without
an identity a random ``cali.<16 hex>`` one with the secret ``.fornium``, which the reference
servers (and ours) accept for any ``cali.`` identity. The client offers an empty Connection ID
(it supports CIDs; the server's CID goes on its records), as Californium's benchmark client does.

``DtlsClientOptions`` holds what cf-cli's ``--auth``, ``--cipher``, ``--trust-all`` and the
certificate options choose: the cipher suites to offer (PSK by default), the client's
certificate and key (sent when an ECDHE_ECDSA server asks), X.509 or raw public keys (RFC 7250)
and the trust store for the server's certificate. A previous session given as ``resume`` is
offered for an abbreviated handshake (RFC 5246 §7.3).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from extplugtest.dtls._record import (
    ALERT,
    APPLICATION_DATA,
    HANDSHAKE,
    RecordError,
    parse_datagram,
)
from extplugtest.dtls.ciphersuites import CipherSuite
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.dtls.handshake_server import PSK_SUITES, HandshakeFailure
from extplugtest.dtls.messages import CertificateType
from extplugtest.dtls.pki import CertificateCredentials, TrustStore
from extplugtest.tools.request import ClientError, UdpTransport

HANDSHAKE_RETRANSMISSIONS = 4  # initial timeout 1 s, doubled each time (RFC 6347 §4.2.4.1)


@dataclass
class PskCredentials:
    identity: bytes
    secret: bytes

    @classmethod
    def default(cls) -> PskCredentials:
        return cls(b"cali." + os.urandom(8).hex().upper().encode(), b".fornium")


@dataclass
class DtlsClientOptions:
    cipher_suites: tuple[CipherSuite, ...] = PSK_SUITES
    #: ours, for a server that asks (ECDHE_ECDSA); None: an empty Certificate then
    certificate: CertificateCredentials | None = None
    certificate_types: tuple[int, ...] = (CertificateType.X509,)
    trust_store: TrustStore = field(default_factory=TrustStore.demo)
    #: ours, on the server's records (RFC 9146); b"": CIDs supported without one of ours
    cid: bytes = b""


class DtlsTransport:
    def __init__(
        self,
        host: str,
        port: int,
        credentials: PskCredentials,
        options: DtlsClientOptions | None = None,
        *,
        resume: ClientSession | None = None,
        local_port: int | None = None,
    ) -> None:
        self.udp = UdpTransport(host, port, local_port)
        self.peer = self.udp.peer
        self.credentials = credentials
        self.options = options if options is not None else DtlsClientOptions()
        self.resume = resume
        self.session: ClientSession | None = None
        self._handshake: ClientHandshake | None = None
        self._receive: Callable[[bytes], None] | None = None
        self._error: Callable[[Exception], None] | None = None
        self._done: asyncio.Future[None] | None = None
        #: gets one line about the session once the handshake is done (extclient -v)
        self.report: Callable[[str], None] | None = None

    async def open(
        self, receive: Callable[[bytes], None], error: Callable[[Exception], None]
    ) -> None:
        self._receive, self._error = receive, error
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        await self.udp.open(self._on_datagram, self._on_error)
        options = self.options
        handshake = self._handshake = ClientHandshake(
            self.credentials.identity,
            self.credentials.secret,
            cipher_suites=options.cipher_suites,
            certificate=options.certificate,
            certificate_types=options.certificate_types,
            trust_store=options.trust_store,
            resume=self.resume,
            cid=options.cid,
        )
        self.udp.send(handshake.start())
        timeout = 1.0
        for _ in range(1 + HANDSHAKE_RETRANSMISSIONS):
            try:
                await asyncio.wait_for(asyncio.shield(self._done), timeout)
                break
            except asyncio.TimeoutError:
                for datagram in handshake.retransmit():
                    self.udp.send(datagram)
                timeout *= 2
        else:
            self.udp.close()
            raise ClientError(f"DTLS handshake with {self.peer} timed out")
        self.session = handshake.session
        if self.report is not None and self.session is not None:
            self.report(self.describe_session(self.session))

    def describe_session(self, session: ClientSession) -> str:
        """cf-client's -v view of the DTLS session: suite, identities and connection ids."""
        parts = [f"DTLS {session.suite.name}"]
        if session.suite.uses_certificate:
            parts.append(f"server {session.peer or '-'}")
        else:
            parts.append(f"identity {self.credentials.identity.decode('utf-8', 'replace')}")
        parts += [f"read-cid {session.read_cid.hex().upper() or '-'}",
                  f"write-cid {session.write_cid.hex().upper() or '-'}"]  # fmt: skip
        if session.resumed:
            parts.append("resumed")
        return ", ".join(parts)

    def _on_error(self, error: Exception) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(ClientError(f"DTLS handshake with {self.peer}: {error}"))
        elif self._error is not None:
            self._error(error)

    def _on_datagram(self, data: bytes) -> None:
        handshake = self._handshake
        if self.session is None and handshake is not None:
            try:
                for datagram in handshake.on_datagram(data):
                    self.udp.send(datagram)
            except HandshakeFailure as failure:
                self._on_error(ClientError(f"{failure} ({failure.alert.name.lower()})"))
                return
            if handshake.done and self._done is not None and not self._done.done():
                self.session = handshake.session
                self._done.set_result(None)
            return
        session = self.session
        if session is None:
            return
        try:
            records = parse_datagram(data, cid_length=len(session.read_cid))
        except RecordError as error:
            records = list(error.records)
        if handshake is not None and any(
            r.epoch == 0 and r.content_type == HANDSHAKE for r in records
        ):
            # The server repeats its last flight: after an abbreviated handshake ours (CCS and
            # Finished) was lost, and the server still waits for it (RFC 6347 §4.2.4).
            for datagram in handshake.retransmit():
                self.udp.send(datagram)
            return
        for record in records:
            try:
                content_type, plaintext = session.cipher.open(record.raw)
            except ValueError:
                continue  # bad MAC or replay: dropped
            if content_type == APPLICATION_DATA and self._receive is not None:
                self._receive(plaintext)
            elif content_type == ALERT and self._error is not None:
                self._error(ClientError(f"DTLS alert from {self.peer}"))

    def send(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        self.udp.send(session.cipher.seal(1, session.next_write_seq, APPLICATION_DATA, data))
        session.next_write_seq += 1

    def close(self) -> None:
        self.udp.close()
