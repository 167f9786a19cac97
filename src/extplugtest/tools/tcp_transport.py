"""``coap+tcp://`` (and ``coaps+tcp://``) for extclient: one RFC 8323 connection with the
Transport interface of request.py.

``CoapClient`` speaks RFC 7252 messages; this transport reframes them (§3.2: no type, no MID)
and is ``reliable``, so the client does not retransmit. Our CSM goes out first (§3.3); the
server's CSM, Ping (answered with Pong, §5.4), Release and Abort (§5.5, §5.6: the channel fails)
are handled here. Received responses reach the client as NON messages with MIDs of their own,
so that its duplicate detection never merges two of them; empty ACK/RST the client would send
mean nothing over TCP and are dropped. A request from the server is answered with 5.01 (§3.3:
a side without a server must answer every request with an error).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import cast

from extplugtest.coap import _tcp_codec as tcp
from extplugtest.coap._codec import Message, MessageFormatError
from extplugtest.coap.codes import Code, Type
from extplugtest.coap.transport_tcp import ALPN, demo_certs
from extplugtest.tools.request import ClientError

CONNECT_TIMEOUT = 30.0  # Californium's TCP.CONNECT_TIMEOUT of the benchmark client
#: announced in our CSM (§5.3.1): a 1024-byte block with room for its options
MAX_MESSAGE_SIZE = 1152 + 1024
#: a frame announcing more than this ends the connection (the buffer stays bounded)
RECEIVE_LIMIT = 65536
NOT_IMPLEMENTED = 0xA1  # 5.01


def demo_tls_client_context() -> ssl.SSLContext:
    """TLS 1.2/1.3 with ALPN "coap" (RFC 8323 §4.1): the server must have a certificate of the
    package's demo CA for its address (as Californium's clients trust its demo trust store);
    the demo client certificate goes along for servers that ask for one."""
    certs = demo_certs()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=certs / "ca.pem")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certs / "client.pem", certs / "client.key")
    context.set_alpn_protocols([ALPN])
    return context


class _Stream(asyncio.Protocol):
    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._on_lost(exc)


class TcpTransport:
    """One connection to *host*:*port*; TLS with *ssl_context* (see demo_tls_client_context)."""

    reliable = True

    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        #: the server's CSM values (§5.3.1 base values until its CSM arrives)
        self.server_max_message_size = tcp.BASE_MESSAGE_SIZE
        self.server_block_wise = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._mid = 0
        self._receive: Callable[[bytes], None] | None = None
        self._error: Callable[[Exception], None] | None = None

    async def open(
        self, receive: Callable[[bytes], None], error: Callable[[Exception], None]
    ) -> None:
        self._receive, self._error = receive, error
        loop = asyncio.get_running_loop()
        kind = "TLS" if self.ssl_context is not None else "TCP"
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Stream(self),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                ),
                CONNECT_TIMEOUT,
            )
        except asyncio.TimeoutError:
            raise ClientError(f"{kind} connection to {self.peer} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ClientError(f"cannot connect to {self.peer} ({kind}): {reason}") from None
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        csm = Message(code=tcp.CSM)
        csm.add_option(tcp.MAX_MESSAGE_SIZE, MAX_MESSAGE_SIZE)
        self._write(tcp.encode(csm))

    def send(self, data: bytes) -> None:
        """A message of the client, UDP-encoded: reframed; empty ACK/RST are dropped."""
        if len(data) >= 2 and data[1] != Code.EMPTY:
            self._write(tcp.from_datagram(data))

    def _write(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def close(self) -> None:
        if self._transport is not None:
            self._write(tcp.encode(Message(code=tcp.RELEASE)))  # §5.5: an orderly end
            self._transport.close()
            self._transport = None

    # -- receiving ---------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        self._buffer += data
        while True:  # each round consumes one complete frame
            try:
                size = tcp.frame_size(self._buffer)
                if size > RECEIVE_LIMIT:
                    raise MessageFormatError(f"a message of {size} bytes")
                if not size or len(self._buffer) < size:
                    return
                message = tcp.decode(bytes(self._buffer[:size]))
            except MessageFormatError as exc:
                self._abort(f"message format error: {exc}")
                return
            del self._buffer[:size]
            self._on_message(message)

    def _on_message(self, message: Message) -> None:
        if message.code >> 5 == 7:
            self._on_signal(message)
        elif message.is_request:
            answer = Message(code=NOT_IMPLEMENTED, token=message.token)
            self._write(tcp.encode(answer))
        elif message.code != Code.EMPTY and self._receive is not None:
            self._mid = (self._mid + 1) & 0xFFFF
            message.type, message.mid = Type.NON, self._mid
            self._receive(message.to_bytes())

    def _on_signal(self, message: Message) -> None:
        if message.code == tcp.CSM:
            for number, value in message.options:
                if number == tcp.MAX_MESSAGE_SIZE:
                    self.server_max_message_size = int.from_bytes(value, "big")
                elif number == tcp.BLOCK_WISE_TRANSFER:
                    self.server_block_wise = True
        elif message.code == tcp.PING:
            self._write(tcp.encode(Message(code=tcp.PONG, token=message.token)))
        elif message.code in (tcp.RELEASE, tcp.ABORT):
            what = "released" if message.code == tcp.RELEASE else "aborted"
            diagnostic = message.payload.decode("utf-8", "replace")
            self._fail(ConnectionError(f"the server {what} the connection {diagnostic}".strip()))

    def _abort(self, diagnostic: str) -> None:
        """§5.6: Abort with a diagnostic payload, then close."""
        self._write(tcp.encode(Message(code=tcp.ABORT, payload=diagnostic.encode())))
        self._fail(ConnectionError(diagnostic))

    def _fail(self, error: Exception) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._error is not None:
            self._error(error)

    def _on_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            if self._error is not None:
                self._error(exc or ConnectionError("the server closed the connection"))
