"""A small asyncio CoAP client: the engine of ``extclient get|post|put|delete|fetch|observe``
and ``extclient receivetest``.

Layers, bottom up:

* ``Transport``: a datagram channel to one peer. ``UdpTransport`` is plain UDP (``coap://``);
  DTLS (``coaps://``) is meant to implement the same three methods and slot in through
  ``open_transport``. CoAP over TCP and TLS (``coap+tcp://``, ``coaps+tcp://``;
  tcp_transport.py) reframes the messages and is ``reliable``: CON requests are not retransmitted
  over it.
* ``CoapClient.exchange``: one request, its first response (RFC 7252 §4-5). CON requests are
  retransmitted with exponential back-off until an ACK, RST or response arrives; responses are
  matched by token (piggy-backed ones by MID and token); a CON response is acknowledged, and a
  retransmission of it acknowledged again but delivered once. Responses nobody waits for are
  rejected with RST, which also ends a stale observation at the server (RFC 7641 §3.6).
* ``CoapClient.request``: one whole transfer (RFC 7959). A body larger than the block size goes
  up in Block1 blocks (2.31 Continue in between, smaller blocks if the server asks for them),
  a response with Block2 is fetched block by block, and with a configured block size every
  request carries an early Block2 option so that the server answers in blocks of that size.
* ``CoapClient.observe``: an ``Observation`` (RFC 7641) that registers, yields fresh
  notifications (large ones completed with Block2 GETs) and cancels proactively (Observe=1).

``describe`` renders a message as Californium's MessageTracer does, for ``-v``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import random
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote_to_bytes, urlsplit

from extplugtest.coap._codec import (
    CODE_NAMES,
    FORMAT_EMPTY,
    FORMAT_STRING,
    FORMAT_UINT,
    OPTION_FORMATS,
    OPTION_NAMES,
    TYPE_NAMES,
    Message,
    MessageFormatError,
    code_text,
    decode_uint,
    parse,
)
from extplugtest.coap.blockwise import block_size, decode_block, encode_block, size_exponent
from extplugtest.coap.codes import Code, Option, Type, mime_type
from extplugtest.coap.transmission import TransmissionParameters

DEFAULT_PORTS = {"coap": 5683, "coaps": 5684, "coap+tcp": 5683, "coaps+tcp": 5684}
TOKEN_LENGTH = 8  # Californium's default token size
DEFAULT_TIMEOUT = 30.0  # seconds; Californium's BENCHMARK_RESPONSE_TIMEOUT
MAX_MESSAGE_SIZE = 1024  # larger bodies go block-wise (Californium's MAX_MESSAGE_SIZE)
MAX_BODY_SIZE = 1 << 20  # bound of a body sent or assembled, and so of every block loop
RECENT_RESPONSES = 256  # MIDs of CON/NON responses remembered to recognise duplicates
MAX_QUEUED_NOTIFICATIONS = 1000  # notifications waiting for a slow reader; more are dropped
OBSERVE_WINDOW = 1 << 23  # RFC 7641 §3.4: sequence numbers are compared modulo 2^24
OBSERVE_STALE = 128.0  # seconds after which any notification counts as fresh (§3.4)

#: option numbers of the block-wise layer; a follow-up request is built without them
BLOCK_OPTIONS = (Option.BLOCK1, Option.BLOCK2, Option.SIZE1, Option.SIZE2)


class ClientError(Exception):
    """An exchange that failed without a response: timeout, RST, transport or protocol error."""


class RequestTimeout(ClientError):
    """No response in time (or no ACK after the last retransmission)."""


class RequestRejected(ClientError):
    """The peer answered the request with RST."""


# -- URIs ------------------------------------------------------------------------------------


@dataclass
class Target:
    """A parsed ``coap://`` URI: where to send, and the Uri-* options of a request."""

    uri: str
    scheme: str
    host: str
    port: int
    #: Uri-Host (for a host name), Uri-Path and Uri-Query options
    options: list[tuple[int, bytes]]
    query: str = ""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_uri(text: str, default_port: int | None = None) -> Target:
    """Split a CoAP URI into host, port and Uri-* options (RFC 7252 §6.4).

    Without a scheme ``coap://`` is assumed and a trailing ``/`` is dropped, as Californium's
    cf-cli does. Raises ValueError with a one-line reason."""
    if "://" not in text:
        text = "coap://" + text
    if text.endswith("/") and not text.endswith("://"):
        text = text[:-1]
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URI '{text}': {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        if scheme in ("coap+ws", "coaps+ws"):
            raise ValueError(f"scheme '{scheme}' is not supported, use coap:// or coap+tcp://")
        raise ValueError(f"'{text}' is not a coap:// URI")
    if not parts.hostname:
        raise ValueError(f"URI '{text}' has no host")
    if parts.fragment:
        raise ValueError("a CoAP URI must not have a fragment")
    options: list[tuple[int, bytes]] = []
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        # A host name goes into Uri-Host (virtual hosting); an IP literal does not.
        options.append((Option.URI_HOST, parts.hostname.encode("idna")))
    path = parts.path.lstrip("/")
    if path:
        options += [(Option.URI_PATH, unquote_to_bytes(s)) for s in path.split("/")]
    if parts.query:
        options += [(Option.URI_QUERY, unquote_to_bytes(q)) for q in parts.query.split("&")]
    for number, value in options:
        if len(value) > 255:
            raise ValueError(f"URI component longer than 255 bytes ({OPTION_NAMES[number]})")
    if port is None:
        port = default_port if default_port is not None else DEFAULT_PORTS[scheme]
    return Target(text, scheme, parts.hostname, port, options, parts.query)


# -- transport -------------------------------------------------------------------------------


class Transport(Protocol):
    """A datagram channel to one peer: what ``CoapClient`` needs of UDP, and later of DTLS."""

    #: the peer as "host:port", for messages and traces
    peer: str

    async def open(
        self, receive: Callable[[bytes], None], error: Callable[[Exception], None]
    ) -> None:
        """Connect (for DTLS: handshake). Then every datagram from the peer goes to *receive*
        and a failure of the channel (ICMP port unreachable, a fatal alert) to *error*.
        Raises ClientError when the channel cannot be opened."""
        ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(
        self, receive: Callable[[bytes], None], error: Callable[[Exception], None]
    ) -> None:
        self.receive = receive
        self.error = error

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.receive(data)

    def error_received(self, exc: Exception) -> None:
        self.error(exc)


class UdpTransport:
    """Plain UDP on a connected socket: the kernel drops datagrams from other sources, and an
    ICMP port unreachable comes back as ConnectionRefusedError, so a missing server is
    reported at once instead of after the retransmissions."""

    def __init__(self, host: str, port: int, local_port: int | None = None) -> None:
        self.host = host
        self.port = port
        self.local_port = local_port  # None: any
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._transport: asyncio.DatagramTransport | None = None

    async def open(
        self, receive: Callable[[bytes], None], error: Callable[[Exception], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ClientError(f"cannot resolve host '{self.host}': {reason}") from None
        # IPv4 first, as Java (and so Californium) resolves "localhost"
        infos.sort(key=lambda info: info[0] != socket.AF_INET)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.local_port is not None:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", self.local_port))
            sock.connect(address)
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(receive, error), sock=sock
            )
        except OSError as exc:
            sock.close()
            raise ClientError(f"cannot reach {self.peer}: {exc.strerror or exc}") from None
        self._transport = transport

    def send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def open_transport(
    target: Target,
    identity: bytes | None = None,
    secret: bytes | None = None,
    local_port: int | None = None,
) -> Transport:
    """The transport for *target*'s scheme; *identity*/*secret*: the PSK for coaps."""
    if target.scheme == "coap":
        return UdpTransport(target.host, target.port, local_port)
    if target.scheme == "coaps":
        from extplugtest.tools.dtls_transport import DtlsTransport, PskCredentials

        credentials = PskCredentials.default()
        if identity is not None:
            credentials = PskCredentials(identity, secret if secret is not None else b".fornium")
        return DtlsTransport(target.host, target.port, credentials, local_port=local_port)
    if local_port is not None:
        raise ValueError("a local port can be chosen for coap and coaps only")
    if target.scheme in ("coap+tcp", "coaps+tcp"):
        from extplugtest.tools.tcp_transport import TcpTransport, demo_tls_client_context

        tls = demo_tls_client_context() if target.scheme == "coaps+tcp" else None
        return TcpTransport(target.host, target.port, tls)
    raise ValueError(f"scheme '{target.scheme}' is not supported yet, use coap:// or coaps://")


# -- messages --------------------------------------------------------------------------------


def copy_message(
    message: Message,
    *,
    payload: bytes | None = None,
    token: bytes | None = None,
    drop: tuple[int, ...] = (),
) -> Message:
    """A copy of *message* without MID, with another payload/token and without *drop*."""
    options = [(number, value) for number, value in message.options if number not in drop]
    return Message(
        message.type,
        message.code,
        0,
        message.token if token is None else token,
        options,
        message.payload if payload is None else payload,
    )


def is_success(code: int) -> bool:
    return code >> 5 == 2


def is_notification(message: Message) -> bool:
    return message.has_option(Option.OBSERVE) and is_success(message.code)


def code_name(code: int) -> str:
    """``2.05 CONTENT``: the code and its name as Californium's ResponseCode spells it."""
    try:
        return f"{code_text(code)} {Code(code).name}"
    except ValueError:
        return code_text(code)


@dataclass
class Response:
    """The outcome of ``CoapClient.request``: the last response message, whose payload is the
    whole (block-wise assembled) body."""

    message: Message
    #: bytes of the last datagram (Californium's ``response.getBytes().length``)
    size: int
    #: seconds from the first transmission to the last response
    rtt: float
    #: number of request/response exchanges the transfer took
    exchanges: int = 1

    @property
    def code(self) -> int:
        return self.message.code

    @property
    def payload(self) -> bytes:
        return self.message.payload

    @property
    def content_format(self) -> int | None:
        return self.message.content_format


# -- the client ------------------------------------------------------------------------------

_Delivery = tuple[Message, int]  # a response and the size of its datagram
_Queued = _Delivery | ClientError


class _Exchange:
    """One request in flight: its CON retransmission state and where its responses go."""

    __slots__ = (
        "acknowledged",
        "attempts",
        "future",
        "interval",
        "notifications",
        "request",
        "timer",
    )

    def __init__(
        self,
        request: Message,
        future: asyncio.Future[_Delivery],
        notifications: asyncio.Queue[_Queued] | None,
    ) -> None:
        self.request = request
        self.future = future
        #: later responses with the same token (notifications), or None: one response only
        self.notifications = notifications
        self.acknowledged = False
        self.attempts = 0
        self.interval = 0.0  # the current retransmission timeout
        self.timer: asyncio.TimerHandle | None = None


class CoapClient:
    """Requests to the one peer behind *transport*.

    *timeout* bounds every exchange, from the first transmission to the response, including
    the CON retransmissions; *block_size* (16..1024) asks for blocks of that size (early
    Block2) and sends larger bodies in Block1 blocks of that size; without it bodies above
    MAX_MESSAGE_SIZE go in 1024-byte blocks. *tracer* sees every message sent ("<==") and
    received ("==>"), as Californium's MessageTracer.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        block_size: int | None = None,
        params: TransmissionParameters | None = None,
        tracer: Callable[[str, Message], None] | None = None,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.block_szx = None if block_size is None else size_exponent(block_size)
        self.max_message_size = MAX_MESSAGE_SIZE if block_size is None else block_size
        self.params = params or TransmissionParameters()
        self.tracer = tracer
        self._mid = random.randrange(0x10000)
        self._by_mid: dict[int, _Exchange] = {}  # CON requests that wait for their ACK
        self._by_token: dict[bytes, _Exchange] = {}  # requests that wait for responses
        self._recent: OrderedDict[int, Message | None] = OrderedDict()
        self.retransmissions = 0

    async def open(self) -> None:
        await self.transport.open(self._on_datagram, self._on_error)

    def close(self) -> None:
        self._fail_all(ClientError("client closed"))
        self.transport.close()

    async def __aenter__(self) -> CoapClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    # -- one exchange ------------------------------------------------------------------------
    async def exchange(
        self, request: Message, notifications: asyncio.Queue[_Queued] | None = None
    ) -> _Delivery:
        """Send *request* (a fresh MID; a random token unless it has one) and return its first
        response with the size of its datagram. With *notifications*, later responses with
        the token go there until ``forget(token)``."""
        loop = asyncio.get_running_loop()
        request.mid = self._next_mid()
        if not request.token:
            request.token = os.urandom(TOKEN_LENGTH)
        exchange = _Exchange(request, loop.create_future(), notifications)
        # A re-registration or cancel with an observation's token takes its place.
        self._by_token[request.token] = exchange
        if request.type == Type.CON:
            self._by_mid[request.mid] = exchange
            exchange.interval = self.params.ack_timeout * random.uniform(
                1.0, self.params.ack_random_factor
            )
            if not getattr(self.transport, "reliable", False):  # TCP needs no retransmission
                self._schedule(exchange)
        self._send(request)
        try:
            return await asyncio.wait_for(exchange.future, self.timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"no response from {self.transport.peer} within {self.timeout:g} s"
            ) from None
        finally:
            self._settle(exchange)
            future = exchange.future
            observing = (
                notifications is not None
                and future.done()
                and not future.cancelled()
                and future.exception() is None
                and is_notification(future.result()[0])
            )
            if not observing:
                self._drop_token(exchange)

    def forget(self, token: bytes) -> None:
        """Stop routing responses with *token*; later ones are rejected with RST."""
        exchange = self._by_token.pop(token, None)
        if exchange is not None:
            self._settle(exchange)

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _send(self, message: Message) -> None:
        if self.tracer is not None:
            self.tracer("<==", message)
        self.transport.send(message.to_bytes())

    def _schedule(self, exchange: _Exchange) -> None:
        loop = asyncio.get_running_loop()
        exchange.timer = loop.call_later(exchange.interval, self._retransmit, exchange)

    def _retransmit(self, exchange: _Exchange) -> None:
        """RFC 7252 §4.2: resend with doubled timeout, at most MAX_RETRANSMIT times."""
        exchange.timer = None
        if exchange.future.done() or exchange.acknowledged:
            return
        if exchange.attempts >= self.params.max_retransmit:
            self._settle(exchange)
            exchange.future.set_exception(
                RequestTimeout(
                    f"no response from {self.transport.peer} after "
                    f"{exchange.attempts} retransmissions"
                )
            )
            return
        exchange.attempts += 1
        exchange.interval *= 2
        self.retransmissions += 1
        self._schedule(exchange)
        self._send(exchange.request)

    def _settle(self, exchange: _Exchange) -> None:
        """No more retransmissions of *exchange*."""
        if exchange.timer is not None:
            exchange.timer.cancel()
            exchange.timer = None
        if self._by_mid.get(exchange.request.mid) is exchange:
            del self._by_mid[exchange.request.mid]

    def _drop_token(self, exchange: _Exchange) -> None:
        if self._by_token.get(exchange.request.token) is exchange:
            del self._by_token[exchange.request.token]

    def _fail_all(self, error: ClientError) -> None:
        for exchange in list(self._by_token.values()):
            self._settle(exchange)
            if not exchange.future.done():
                exchange.future.set_exception(error)
            elif exchange.notifications is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    exchange.notifications.put_nowait(error)
        for exchange in list(self._by_mid.values()):
            self._settle(exchange)

    # -- receiving ---------------------------------------------------------------------------
    def _on_error(self, exc: Exception) -> None:
        """The channel failed (for UDP: an ICMP error, or a send error): so does every
        exchange in flight, and every observation."""
        if isinstance(exc, OSError) and exc.errno == errno.ECONNREFUSED:
            reason = "connection refused (no CoAP server on that port?)"
        else:
            reason = (getattr(exc, "strerror", None) or str(exc)).lower()
        self._fail_all(ClientError(f"{self.transport.peer}: {reason}"))

    def _on_datagram(self, data: bytes) -> None:
        try:
            message = parse(data)
        except (MessageFormatError, ValueError):
            return  # not CoAP, or malformed: nothing sensible to answer
        if self.tracer is not None:
            self.tracer("==>", message)
        if message.code == Code.EMPTY:
            if message.type in (Type.ACK, Type.RST):
                self._on_empty_ack(message)
            elif message.type == Type.CON:
                self._send(Message(Type.RST, 0, message.mid))  # CoAP ping
            return
        if message.is_request:  # a client serves nothing
            if message.type == Type.CON:
                self._send(Message(Type.RST, 0, message.mid))
            return
        if message.type == Type.ACK:  # piggy-backed response
            exchange = self._by_mid.get(message.mid)
            if exchange is not None and exchange.request.token == message.token:
                self._settle(exchange)
                self._deliver(exchange, message, len(data))
            return
        self._on_separate(message, len(data))

    def _on_empty_ack(self, message: Message) -> None:
        exchange = self._by_mid.get(message.mid)
        if exchange is None:
            return
        self._settle(exchange)
        if message.type == Type.RST:
            self._drop_token(exchange)
            if not exchange.future.done():
                exchange.future.set_exception(
                    RequestRejected(f"request rejected with RST by {self.transport.peer}")
                )
        else:
            exchange.acknowledged = True  # a separate response follows (RFC 7252 §5.2.2)

    def _on_separate(self, message: Message, size: int) -> None:
        """A CON or NON response: separate, or a notification."""
        if message.mid in self._recent:  # a duplicate: answer as before, deliver once
            reply = self._recent[message.mid]
            if reply is not None:
                self._send(reply)
            return
        exchange = self._by_token.get(message.token)
        reply = None
        if exchange is None:
            if message.type == Type.CON or message.has_option(Option.OBSERVE):
                reply = Message(Type.RST, 0, message.mid)
        elif message.type == Type.CON:
            reply = Message(Type.ACK, 0, message.mid)
        self._recent[message.mid] = reply
        if len(self._recent) > RECENT_RESPONSES:
            self._recent.popitem(last=False)
        if reply is not None:
            self._send(reply)
        if exchange is not None:
            self._settle(exchange)  # the response also stands for a lost ACK
            self._deliver(exchange, message, size)

    def _deliver(self, exchange: _Exchange, message: Message, size: int) -> None:
        if not exchange.future.done():
            exchange.future.set_result((message, size))
        elif exchange.notifications is not None:
            with contextlib.suppress(asyncio.QueueFull):
                exchange.notifications.put_nowait((message, size))

    # -- transfers ---------------------------------------------------------------------------
    async def request(self, request: Message) -> Response:
        """*request* as one transfer, block-wise in either direction where needed."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        if len(request.payload) > MAX_BODY_SIZE:
            raise ClientError(f"payload larger than {MAX_BODY_SIZE} bytes")
        if len(request.payload) > self.max_message_size:
            message, size, count = await self._upload(request)
        else:
            single = copy_message(request)
            self._early_block2(single)
            message, size = await self.exchange(single)
            count = 1
        message, size, more = await self.complete(request, message, size)
        return Response(message, size, loop.time() - start, count + more)

    def _early_block2(self, request: Message) -> None:
        if self.block_szx is not None and not request.has_option(Option.BLOCK2):
            request.add_option(Option.BLOCK2, encode_block(0, False, self.block_szx))

    async def _upload(self, request: Message) -> tuple[Message, int, int]:
        """Send the body in Block1 blocks (RFC 7959 §2.5); the answer to the last block (or
        an error before it) is the response."""
        body = request.payload
        szx = self.block_szx if self.block_szx is not None else size_exponent(MAX_MESSAGE_SIZE)
        offset = 0
        # Bounded: every round sends at least 16 new bytes of a body of at most MAX_BODY_SIZE.
        for count in range(1, len(body) // 16 + 2):
            size = block_size(szx)
            more = offset + size < len(body)
            block = copy_message(
                request, payload=body[offset : offset + size], token=b"", drop=BLOCK_OPTIONS
            )
            block.add_option(Option.BLOCK1, encode_block(offset // size, more, szx))
            if offset == 0:
                block.add_option(Option.SIZE1, len(body))
            if not more:
                self._early_block2(block)
            message, datagram = await self.exchange(block)
            if not more or not self._continues(message):
                return message, datagram, count
            answer = message.uint_option(Option.BLOCK1)
            if answer is not None and decode_block(answer)[2] < szx:
                szx = decode_block(answer)[2]  # the server asks for smaller blocks
            offset += size
        raise ClientError("block-wise upload did not end")  # pragma: no cover - bounded above

    @staticmethod
    def _continues(message: Message) -> bool:
        """Whether the server takes more blocks: 2.31 Continue (atomic), or, from a server
        that handles every block on its own, a success echoing Block1 with M set."""
        if message.code == Code.CONTINUE:
            return True
        answer = message.uint_option(Option.BLOCK1)
        return is_success(message.code) and answer is not None and decode_block(answer)[1]

    async def complete(
        self, request: Message, first: Message, size: int
    ) -> tuple[Message, int, int]:
        """Fetch the remaining Block2 blocks of *first*, the answer to *request*; returns the
        response with the whole body, the size of the last datagram and the number of
        exchanges added. Follow-ups repeat the request without payload, Block1 or Observe
        (RFC 7959 §2.4, RFC 7641 §3.4 for notifications)."""
        value = first.uint_option(Option.BLOCK2)
        if value is None or not is_success(first.code):
            return first, size, 0
        num, more, szx = decode_block(value)
        if not more:
            return self._assembled(first, first.payload), size, 0
        if num != 0 or szx == 7 or len(first.payload) != block_size(szx):
            raise ClientError(f"unexpected first block ({num}/{block_size(szx)} bytes)")
        body = bytearray(first.payload)
        etag = first.option(Option.ETAG)
        # Content-Format stays: aiocoap finds the kept response by all cache-key options.
        template = copy_message(
            request, payload=b"", token=b"", drop=(*BLOCK_OPTIONS, Option.OBSERVE)
        )
        last = first
        count = 0
        while more:  # bounded: each round adds a full block, at most MAX_BODY_SIZE in all
            if len(body) > MAX_BODY_SIZE:
                raise ClientError(f"response body larger than {MAX_BODY_SIZE} bytes")
            follow_up = copy_message(template)
            follow_up.add_option(
                Option.BLOCK2, encode_block(len(body) // block_size(szx), False, szx)
            )
            last, size = await self.exchange(follow_up)
            count += 1
            value = last.uint_option(Option.BLOCK2)
            if not is_success(last.code):
                return last, size, count  # an error in the middle ends the transfer
            if value is None:
                raise ClientError("block-wise transfer: a block without Block2 option")
            num, more, szx = decode_block(value)
            if szx == 7 or num * block_size(szx) != len(body):
                raise ClientError(f"block-wise transfer: unexpected block {num}")
            if more and len(last.payload) != block_size(szx):
                raise ClientError(f"block-wise transfer: block {num} is not a full block")
            if etag is not None and last.option(Option.ETAG) != etag:
                raise ClientError("block-wise transfer: the resource changed (ETag)")
            body += last.payload
        return self._assembled(first, bytes(body), last), size, count

    @staticmethod
    def _assembled(first: Message, body: bytes, last: Message | None = None) -> Message:
        """The first block's options (Content-Format, Observe, ...) with the whole body."""
        message = copy_message(first, payload=body, drop=(Option.BLOCK2, Option.SIZE2))
        message.mid = (last or first).mid
        message.type = (last or first).type
        return message

    def observe(self, request: Message) -> Observation:
        return Observation(self, request)


class Observation:
    """An observe relation (RFC 7641) on the resource of *request* (a GET).

    ``register()`` sends the request with Observe=0 and returns the first response; then
    ``next()`` returns the following fresh notifications (reordered ones are dropped, §3.4),
    and ``cancel()`` ends the relation proactively with Observe=1 (§3.6)."""

    def __init__(self, client: CoapClient, request: Message) -> None:
        self.client = client
        self.request = copy_message(request, token=request.token or os.urandom(TOKEN_LENGTH))
        self.request.set_option(Option.OBSERVE, 0)
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue(MAX_QUEUED_NOTIFICATIONS)
        #: True while the server keeps notifying
        self.active = False
        self._last: tuple[int, float] | None = None  # (sequence number, arrival time)

    @property
    def token(self) -> bytes:
        return self.request.token

    async def register(self) -> Response:
        """(Re-)register with the same token; the answer counts as a notification."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        registration = copy_message(self.request)
        self.client._early_block2(registration)
        message, size = await self.client.exchange(registration, self.queue)
        self.active = is_notification(message)
        self._fresh(message, loop.time())
        message, size, more = await self.client.complete(self.request, message, size)
        return Response(message, size, loop.time() - start, 1 + more)

    async def next(self) -> Response:
        """The next fresh notification; raises ClientError when the channel failed."""
        loop = asyncio.get_running_loop()
        while True:  # each round consumes a queued notification; waits only in get()
            item = await self.queue.get()
            if isinstance(item, ClientError):
                self.active = False
                raise item
            message, size = item
            start = loop.time()
            if not self._fresh(message, start):
                continue
            if not is_notification(message):  # an error or a plain response ends it
                self.active = False
                self.client.forget(self.token)
            message, size, more = await self.client.complete(self.request, message, size)
            return Response(message, size, loop.time() - start, 1 + more)

    def _fresh(self, message: Message, now: float) -> bool:
        """RFC 7641 §3.4: newer than the last notification, or the last is too old."""
        number = message.observe
        if number is None:
            return True
        last = self._last
        fresh = (
            last is None
            or (last[0] < number and number - last[0] < OBSERVE_WINDOW)
            or (last[0] > number and last[0] - number > OBSERVE_WINDOW)
            or now > last[1] + OBSERVE_STALE
        )
        if fresh:
            self._last = (number, now)
        return fresh

    async def cancel(self) -> Response | None:
        """Proactive cancel: GET with Observe=1 and the same token (RFC 7641 §3.6). Returns
        its response, or None when the relation had ended already."""
        if not self.active:
            self.client.forget(self.token)
            return None
        self.active = False
        cancel = copy_message(self.request)
        cancel.set_option(Option.OBSERVE, 1)
        self.client._early_block2(cancel)
        message, size = await self.client.exchange(cancel)
        message, size, more = await self.client.complete(self.request, message, size)
        return Response(message, size, 0.0, 1 + more)

    def close(self) -> None:
        """Forget the relation without a message; the next notification gets RST."""
        self.active = False
        self.client.forget(self.token)


# -- tracing (Californium's Message.toString) ------------------------------------------------


def _option_value(number: int, value: bytes) -> str:
    """Californium's Option.toValueString."""
    kind = OPTION_FORMATS.get(number)
    if number in (Option.CONTENT_FORMAT, Option.ACCEPT):
        return f'"{mime_type(decode_uint(value))}"'
    if number in (Option.BLOCK1, Option.BLOCK2):
        num, more, szx = decode_block(decode_uint(value))
        return f'"(szx={szx}/{block_size(szx)}, m={str(more).lower()}, num={num})"'
    if kind == FORMAT_UINT:
        return str(decode_uint(value))
    if kind == FORMAT_STRING:
        return '"' + value.decode("utf-8", "replace") + '"'
    if kind == FORMAT_EMPTY:
        return ""
    return "0x" + value.hex()


def describe_options(message: Message) -> str:
    """Californium's OptionSet.toString: ``{"Uri-Path":["a","b"], "Accept":"text/plain"}``."""
    groups: dict[int, list[str]] = {}
    for number, value in message.options:
        groups.setdefault(number, []).append(_option_value(number, value))
    parts = []
    for number, values in groups.items():
        name = OPTION_NAMES.get(number, f"Unknown ({number})")
        text = values[0] if len(values) == 1 else "[" + ",".join(values) + "]"
        parts.append(f'"{name}":{text}')
    return "{" + ", ".join(parts) + "}"


def describe_payload(payload: bytes) -> str:
    """Californium's payload tracing: the first 24 characters of ASCII text, else hex.

    Line breaks are escaped, so that a trace stays one line per message."""
    if not payload:
        return "no payload"
    if all(0x20 <= b < 0x7F or b in (0x09, 0x0A, 0x0D) for b in payload):
        text = payload[:24].decode("ascii")
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
        if len(payload) > 24:
            return f'"{text}".. {len(payload)} bytes'
        return f'"{text}"'
    shown = " ".join(f"{b:02x}" for b in payload[:256])
    return shown + (f" .. {len(payload)} bytes" if len(payload) > 256 else "")


def describe(message: Message) -> str:
    """One message as Californium's MessageTracer prints it, e.g.
    ``CON-GET    MID=12345, Token=0A1B, OptionSet={"Uri-Path":"test"}, no payload``."""
    kind = TYPE_NAMES[message.type]
    if message.code == Code.EMPTY:
        return f"{kind}        MID={message.mid:5d}"
    if message.is_request:
        code = CODE_NAMES.get(message.code, code_text(message.code))
    else:
        code = code_text(message.code)
    return (
        f"{kind}-{code:<6s} MID={message.mid:5d}, Token={message.token.hex().upper()}, "
        f"OptionSet={describe_options(message)}, {describe_payload(message.payload)}"
    )
