"""A synchronous CoAP test client for the plugtest conformance suite.

It behaves like the client stack of Californium's ``cf-plugtest-checker`` (plugtest-spec.md §1.3)
where that matters for the verdicts, and stays transparent everywhere else:

* one exchange at a time, on one local endpoint (one source port) per client;
* CON or NON requests, with the token and MID under the test's control; 8 random token bytes
  unless the test sets its own; **no retransmission** unless ``retransmit=True``;
* CON responses (separate responses, notifications) are ACKed when their token belongs to this
  client, and answered with RST otherwise (a locally cancelled observation gets an RST);
* block-wise like the checker's stack (MAX_MESSAGE_SIZE = PREFERRED_BLOCK_SIZE = 64): a request
  payload above 64 bytes goes out as Block1 at SZX 2; a Block2 response is fetched to the end; the
  caller gets the **assembled** payload with the **last** block's type, code and options;
* observe helpers: :meth:`CoapTestClient.observe` returns an :class:`Observation`.

The transport is behind two primitives, :meth:`CoapTestClient._send_bytes` and
:meth:`CoapTestClient._recv_bytes`; :class:`UdpClient` implements them for plain UDP. A DTLS client
only has to replace them (same message layer); a TCP client (RFC 8323: no types, MIDs or empty ACKs)
sets ``has_message_types = False`` and replaces the framing and :meth:`CoapTestClient.exchange`.
Checks of message types then pass, as the checker's ``checkType`` does over TCP.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from extplugtest.coap import _tcp_codec as tcp
from extplugtest.coap._codec import (
    FORMAT_STRING,
    FORMAT_UINT,
    OPTION_FORMATS,
    OPTION_NAMES,
    TYPE_NAMES,
    Message,
    MessageFormatError,
    code_text,
    decode_uint,
    encode_uint,
    parse,
)
from extplugtest.coap.codes import Code, Option, Type
from extplugtest.dtls._record import APPLICATION_DATA

#: The checker waits 5 s for every response (§1.3).
DEFAULT_TIMEOUT = 5.0
#: The checker's stack: MAX_MESSAGE_SIZE = PREFERRED_BLOCK_SIZE = 64, i.e. SZX 2.
CHECKER_SZX = 2
#: RFC 7252 §4.8 transmission parameters, used only with ``retransmit=True``.
ACK_TIMEOUT = 2.0
MAX_RETRANSMIT = 4
#: Bound on the number of blocks of one transfer (1280 B at 16 B is 80 blocks).
MAX_BLOCKS = 512
#: How long to wait for the empty ACK of a separate response that arrived before it.
LATE_ACK_WAIT = 0.5


class NoResponse(AssertionError):
    """The server did not answer in time (a test failure, not an error of the test)."""


class ProtocolViolation(AssertionError):
    """The server broke the protocol so that the exchange cannot go on (e.g. a wrong block)."""


class Block(NamedTuple):
    """A Block1/Block2 option value (RFC 7959 §2.2)."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 16 << self.szx

    @classmethod
    def decode(cls, value: bytes) -> Block:
        raw = decode_uint(value)
        return cls(raw >> 4, bool(raw & 0x08), raw & 0x07)

    def encode(self) -> bytes:
        return encode_uint((self.num << 4) | (0x08 if self.more else 0) | self.szx)

    def __str__(self) -> str:
        return f"(num={self.num},m={int(self.more)},szx={self.szx}/{self.size})"


@dataclass
class Link:
    """One link-value of an RFC 6690 link-format document."""

    target: str
    #: attribute name -> list of (value or None for a flag, was it a quoted-string)
    params: dict[str, list[tuple[str | None, bool]]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.params

    def tokens(self, name: str) -> list[str]:
        """All space-separated values of an attribute (``rt="Type1 Type2"`` -> both)."""
        return [t for value, _ in self.params.get(name, []) if value for t in value.split()]


def parse_link_format(text: str) -> list[Link]:
    """Parse RFC 6690 link-format; commas and semicolons inside quoted strings are data.

    Raises ValueError on a syntax error (a missing ``<``/``>`` or an unterminated string).
    """
    links: list[Link] = []
    pos, end = 0, len(text)
    while pos < end:
        if text[pos] != "<":
            raise ValueError(f"expected '<' at {pos}: {text[pos : pos + 40]!r}")
        close = text.find(">", pos)
        if close < 0:
            raise ValueError(f"unterminated '<' at {pos}")
        link = Link(text[pos + 1 : close])
        pos = close + 1
        while pos < end and text[pos] == ";":
            pos += 1
            name_end = pos
            while name_end < end and text[name_end] not in "=;,":
                name_end += 1
            name = text[pos:name_end].strip()
            pos = name_end
            value: str | None = None
            quoted = False
            if pos < end and text[pos] == "=":
                pos += 1
                if pos < end and text[pos] == '"':
                    quoted = True
                    chars = []
                    pos += 1
                    while pos < end and text[pos] != '"':
                        if text[pos] == "\\" and pos + 1 < end:
                            pos += 1
                        chars.append(text[pos])
                        pos += 1
                    if pos >= end:
                        raise ValueError(f"unterminated quoted string in {link.target}")
                    pos += 1
                    value = "".join(chars)
                else:
                    value_end = pos
                    while value_end < end and text[value_end] not in ";,":
                        value_end += 1
                    value = text[pos:value_end]
                    pos = value_end
            link.params.setdefault(name, []).append((value, quoted))
        links.append(link)
        if pos < end:
            if text[pos] != ",":
                raise ValueError(f"expected ',' at {pos}: {text[pos : pos + 40]!r}")
            pos += 1
            while pos < end and text[pos] in " \r\n\t":
                pos += 1
    return links


def describe(msg: Message, raw: bytes | None = None) -> str:
    """One line per message, in the style of plugtest-transcript-udp.txt."""
    kind = TYPE_NAMES[msg.type] if 0 <= msg.type < len(TYPE_NAMES) else str(msg.type)
    parts = [kind, code_text(msg.code), f"mid={msg.mid}", f"tok={msg.token.hex() or '-'}"]
    for number, value in msg.options:
        name = OPTION_NAMES.get(number, f"opt{number}")
        fmt = OPTION_FORMATS.get(number)
        if number in (Option.BLOCK1, Option.BLOCK2):
            text = str(Block.decode(value))
        elif fmt == FORMAT_UINT:
            text = f"={decode_uint(value)}"
        elif fmt == FORMAT_STRING:
            text = "=" + repr(value.decode("utf-8", "replace"))
        else:
            text = f"=0x{value.hex()}"
        parts.append(name + text)
    if msg.payload:
        shown = msg.payload if len(msg.payload) <= 80 else msg.payload[:77] + b"..."
        parts.append(f"payload({len(msg.payload)})={shown!r}")
    if raw is not None and msg.type == Type.RST:
        parts.append(f"[{len(raw)} bytes]")
    return " ".join(parts)


def _block(msg: Message, number: int) -> Block | None:
    value = msg.option(number)
    return None if value is None else Block.decode(value)


@dataclass(eq=False)
class Response:
    """A received message (response, notification, empty ACK or RST) with check helpers.

    For a block-wise transfer ``payload`` is the assembled body and the options are those of the
    last block, as the checker sees them. ``exchanges`` lists every (request, response) pair of
    the transfer (each response unassembled).
    """

    message: Message
    raw: bytes = b""
    payload: bytes = b""
    request: Message | None = None
    empty_ack: Message | None = None
    typed: bool = True
    exchanges: list[tuple[Message, Response]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.payload:
            self.payload = self.message.payload

    # -- message fields -------------------------------------------------------------------------
    @property
    def type(self) -> int:
        return self.message.type

    @property
    def code(self) -> int:
        return self.message.code

    @property
    def mid(self) -> int:
        return self.message.mid

    @property
    def token(self) -> bytes:
        return self.message.token

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def option(self, number: int) -> bytes | None:
        return self.message.option(number)

    def option_values(self, number: int) -> list[bytes]:
        return self.message.option_values(number)

    def has_option(self, number: int) -> bool:
        return self.message.has_option(number)

    @property
    def content_format(self) -> int | None:
        return self.message.content_format

    @property
    def observe(self) -> int | None:
        return self.message.observe

    @property
    def max_age(self) -> int | None:
        return self.message.max_age

    @property
    def etag(self) -> bytes | None:
        return self.message.option(Option.ETAG)

    @property
    def block1(self) -> Block | None:
        return _block(self.message, Option.BLOCK1)

    @property
    def block2(self) -> Block | None:
        return _block(self.message, Option.BLOCK2)

    @property
    def location_path(self) -> list[str]:
        return [v.decode("utf-8", "replace") for v in self.option_values(Option.LOCATION_PATH)]

    @property
    def location_query(self) -> list[str]:
        return [v.decode("utf-8", "replace") for v in self.option_values(Option.LOCATION_QUERY)]

    def links(self) -> list[Link]:
        """The payload parsed as link-format (RFC 6690)."""
        return parse_link_format(self.text)

    # -- the checker's predicates --------------------------------------------------------------
    def has_type(self, *types: int) -> bool:
        """The checker's ``checkType``: always true over a transport without message types."""
        return not self.typed or self.type in types

    def has_request_mid(self) -> bool:
        """A piggy-backed response echoes the request's MID (no MIDs over TCP)."""
        return not self.typed or (self.request is not None and self.mid == self.request.mid)

    def has_content_format(self) -> bool:
        """The checker's ``hasContentType``: a Content-Format, an empty payload, or no 2.xx."""
        return self.content_format is not None or not self.payload or not 0x40 <= self.code < 0x60

    def __str__(self) -> str:
        line = describe(self.message, self.raw)
        if self.payload is not self.message.payload and self.payload != self.message.payload:
            shown = self.payload if len(self.payload) <= 80 else self.payload[:77] + b"..."
            line += f" assembled({len(self.payload)})={shown!r}"
        if len(self.exchanges) > 1:
            line += f" [{len(self.exchanges)} exchanges]"
        return line

    __repr__ = __str__


@dataclass
class _Entry:
    seq: int
    message: Message
    raw: bytes


class CoapTestClient:
    """The transport-independent part: message construction, matching, block-wise, observe."""

    transport = "abstract"
    #: False over TCP/TLS (RFC 8323): no types, MIDs, empty ACKs or RSTs.
    has_message_types = True

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, retransmit: bool = False) -> None:
        self.timeout = timeout
        self.retransmit = retransmit
        self._mid = secrets.randbelow(0x10000)
        self._seq = 0
        self._inbox: list[_Entry] = []
        self._live_tokens: set[bytes] = set()
        self._observed_tokens: set[bytes] = set()
        self._server_cons: dict[int, tuple[bytes, bytes]] = {}  # server CON MID -> (it, reply)
        self.log: list[tuple[str, str]] = []  # (">>" or "<<", description), for diagnostics
        self.malformed: list[bytes] = []

    # -- transport primitives (override) -------------------------------------------------------
    def _send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def _recv_bytes(self, timeout: float) -> bytes | None:
        """One datagram/frame, or None when nothing arrives within ``timeout`` seconds."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> CoapTestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building messages ---------------------------------------------------------------------
    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    @staticmethod
    def new_token(length: int = 8) -> bytes:
        return secrets.token_bytes(length)

    def make_request(
        self,
        method: int,
        path: str = "",
        *,
        type: int = Type.CON,
        token: bytes | None = None,
        mid: int | None = None,
        query: str | Iterable[str] = (),
        content_format: int | None = None,
        accept: int | None = None,
        observe: int | None = None,
        etag: bytes | None = None,
        if_match: bytes | None = None,
        if_none_match: bool = False,
        block1: tuple[int, bool, int] | None = None,
        block2: tuple[int, bool, int] | None = None,
        options: Iterable[tuple[int, bytes | str | int]] = (),
        payload: bytes | str = b"",
    ) -> Message:
        """A request; ``path`` like ``"seg1/seg2/seg3"``, ``query`` like ``"first=1&second=2"``."""
        msg = Message(
            type,
            method,
            self.next_mid() if mid is None else mid,
            self.new_token() if token is None else token,
        )
        if if_match is not None:
            msg.add_option(Option.IF_MATCH, if_match)
        if etag is not None:
            msg.add_option(Option.ETAG, etag)
        if if_none_match:
            msg.add_option(Option.IF_NONE_MATCH, b"")
        if observe is not None:
            msg.add_option(Option.OBSERVE, observe)
        for segment in path.split("/"):
            if segment:
                msg.add_option(Option.URI_PATH, segment)
        if content_format is not None:
            msg.add_option(Option.CONTENT_FORMAT, content_format)
        queries = query.split("&") if isinstance(query, str) else list(query)
        for item in queries:
            if item:
                msg.add_option(Option.URI_QUERY, item)
        if accept is not None:
            msg.add_option(Option.ACCEPT, accept)
        if block2 is not None:
            msg.add_option(Option.BLOCK2, Block(*block2).encode())
        if block1 is not None:
            msg.add_option(Option.BLOCK1, Block(*block1).encode())
        for number, value in options:
            msg.add_option(number, value)
        msg.payload = payload.encode() if isinstance(payload, str) else payload
        return msg

    @staticmethod
    def derive(
        base: Message,
        mid: int,
        *,
        drop: Iterable[int] = (),
        add: Iterable[tuple[int, bytes]] = (),
        payload: bytes = b"",
    ) -> Message:
        """A copy of ``base`` with a new MID, some options removed or added, and a new payload."""
        dropped = set(drop)
        options = [(n, v) for n, v in base.options if n not in dropped]
        options.extend(add)
        options.sort(key=lambda item: item[0])  # stable: keeps the order of repeated options
        return Message(base.type, base.code, mid, base.token, options, payload)

    # -- sending and receiving -----------------------------------------------------------------
    def mark(self) -> int:
        """A position in the receive sequence: later waits can ignore what came before it."""
        return self._seq

    def send(self, msg: Message) -> int:
        """Send a message; returns the receive position at sending time."""
        if msg.is_request:
            self._live_tokens.add(msg.token)
        self.log.append((">>", describe(msg)))
        self._send_bytes(msg.to_bytes())
        return self._seq

    def send_raw(self, data: bytes) -> int:
        self.log.append((">>", f"raw {data.hex()}"))
        self._send_bytes(data)
        return self._seq

    def _reply_empty(self, kind: int, mid: int) -> bytes:
        data = Message(kind, 0, mid).to_bytes()
        self._send_bytes(data)
        self.log.append((">>", f"{TYPE_NAMES[kind]} 0.00 mid={mid} (auto)"))
        return data

    def _pump(self, timeout: float) -> _Entry | None:
        """Receive one message into the inbox (ACKing or RSTing server CONs on the way)."""
        data = self._recv_bytes(max(timeout, 0.0))
        if data is None:
            return None
        try:
            msg = parse(data)
        except MessageFormatError:
            self.malformed.append(bytes(data))
            self.log.append(("<<", f"malformed {bytes(data).hex()}"))
            return None
        self.log.append(("<<", describe(msg, bytes(data))))
        if self.has_message_types and msg.type == Type.CON:
            earlier = self._server_cons.get(msg.mid)
            if earlier is not None and earlier[0] == data:  # a retransmission
                self._send_bytes(earlier[1])  # answer again, deliver once
                return None
            if earlier is not None:  # a new CON reusing a MID: delivered, but worth a note
                self.log.append(("!!", f"the server reused MID {msg.mid} for a new message"))
            if msg.is_response and msg.token in self._live_tokens:
                reply = self._reply_empty(Type.ACK, msg.mid)
            else:  # unknown token (e.g. a locally cancelled observation), a ping, a request
                reply = self._reply_empty(Type.RST, msg.mid)
            self._server_cons[msg.mid] = (bytes(data), reply)
        self._seq += 1
        entry = _Entry(self._seq, msg, bytes(data))
        self._inbox.append(entry)
        return entry

    def _take(
        self, match: Callable[[Message], bool], deadline: float, after: int = 0
    ) -> _Entry | None:
        """The first unconsumed message after ``after`` that matches, or None at the deadline."""
        while True:
            for index, entry in enumerate(self._inbox):
                if entry.seq > after and match(entry.message):
                    del self._inbox[index]
                    return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(remaining)

    def wait_for(
        self, match: Callable[[Message], bool], timeout: float, *, after: int = 0
    ) -> Response | None:
        entry = self._take(match, time.monotonic() + timeout, after)
        return None if entry is None else self._wrap(entry)

    def collect(
        self, match: Callable[[Message], bool], duration: float, *, after: int = 0
    ) -> list[Response]:
        """Everything matching that arrives within ``duration`` seconds (for silence checks)."""
        deadline = time.monotonic() + duration
        found = []
        while (entry := self._take(match, deadline, after)) is not None:
            found.append(self._wrap(entry))
        return found

    def take_received(
        self, match: Callable[[Message], bool], *, after: int = 0, until: int | None = None
    ) -> list[Response]:
        """Consume the matching messages already received in (after, until], without waiting."""
        taken = [
            e
            for e in self._inbox
            if e.seq > after and (until is None or e.seq <= until) and match(e.message)
        ]
        for entry in taken:
            self._inbox.remove(entry)
        return [self._wrap(e) for e in taken]

    def _wrap(self, entry: _Entry, **kwargs: Any) -> Response:
        return Response(entry.message, entry.raw, typed=self.has_message_types, **kwargs)

    # -- one request/response exchange -----------------------------------------------------------
    def exchange(self, request: Message, timeout: float | None = None) -> Response:
        """Send one request and wait for its response: piggy-backed, separate or NON.

        The empty ACK of a separate response is kept in ``Response.empty_ack`` (it may arrive
        before or after the response). An RST is returned as the response.
        """
        timeout = self.timeout if timeout is None else timeout
        data = request.to_bytes()
        after = self.send(request)
        start = time.monotonic()
        deadline = start + timeout
        con = request.type == Type.CON
        observed = request.token in self._observed_tokens
        cancelling = request.observe == 1
        empty_ack: Message | None = None
        attempt, next_retransmit = 0, start + ACK_TIMEOUT

        def match(msg: Message) -> bool:
            if msg.type in (Type.ACK, Type.RST):
                return msg.mid == request.mid
            if not msg.is_response or msg.token != request.token:
                return False
            if observed and cancelling and msg.observe is not None:
                return False  # a late notification, not the answer to the cancel
            # A CON request's token shared with an observation: only after the empty ACK.
            return not (con and observed and empty_ack is None)

        while True:
            wait_until = deadline
            if self.retransmit and con and empty_ack is None and attempt < MAX_RETRANSMIT:
                wait_until = min(deadline, next_retransmit)
            entry = self._take(match, wait_until, after)
            if entry is None:
                if time.monotonic() < deadline:  # retransmission time
                    attempt += 1
                    next_retransmit = time.monotonic() + ACK_TIMEOUT * (2**attempt)
                    self._send_bytes(data)
                    self.log.append((">>", f"retransmission {attempt}"))
                    continue
                what = "the separate response" if empty_ack is not None else "a response"
                raise NoResponse(
                    f"no {what} to {describe(request)} within {timeout:g} s; "
                    f"received meanwhile: {self.recent_traffic()}"
                )
            msg = entry.message
            if msg.type == Type.ACK and msg.code == Code.EMPTY:
                empty_ack = msg
                continue
            separate = msg.type in (Type.CON, Type.NON)
            if con and separate and empty_ack is None and self.has_message_types:
                late = self._take(
                    lambda m: m.type == Type.ACK and m.mid == request.mid,
                    time.monotonic() + LATE_ACK_WAIT,
                    after,
                )
                empty_ack = None if late is None else late.message
            return self._wrap(entry, request=request, empty_ack=empty_ack)

    def recent_traffic(self, count: int = 6) -> str:
        lines = [f"{d} {text}" for d, text in self.log[-count:]]
        return "; ".join(lines) or "nothing"

    def ping(self, timeout: float | None = None) -> Response:
        """CoAP ping (CORE_31): an empty CON with TKL 0; returns the RST (or whatever came)."""
        return self.exchange(Message(Type.CON, Code.EMPTY, self.next_mid()), timeout)

    # -- requests with transparent block-wise transfer ------------------------------------------
    def request(
        self,
        method: int,
        path: str = "",
        *,
        payload: bytes | str = b"",
        timeout: float | None = None,
        block1_szx: int = CHECKER_SZX,
        **kwargs: Any,
    ) -> Response:
        """``make_request(method, path, **kwargs)`` run by :meth:`transfer` (block-wise)."""
        base = self.make_request(method, path, **kwargs)
        body = payload.encode() if isinstance(payload, str) else payload
        return self.transfer(base, body, timeout=timeout, block1_szx=block1_szx)

    def transfer(
        self,
        base: Message,
        payload: bytes = b"",
        *,
        timeout: float | None = None,
        block1_szx: int = CHECKER_SZX,
    ) -> Response:
        """Run one request block-wise, as the checker's stack does.

        A payload above the block size goes out as Block1 (NUM 0, 1, ... at ``block1_szx``,
        following a smaller SZX the server asks for); each intermediate block must be answered
        with 2.31 Continue, otherwise that answer ends the transfer. A response with Block2 M=1
        is then fetched to the end with the same request (same token, new MIDs, no Block1, no
        payload, no Observe). The result carries the last block's options and all payloads.
        """
        exchanges: list[tuple[Message, Response]] = []

        def step(request: Message) -> Response:
            response = self.exchange(request, timeout)
            exchanges.append((request, response))
            return response

        size = 16 << block1_szx
        if len(payload) > size:
            szx, num = block1_szx, 0
            for _ in range(MAX_BLOCKS):
                size = 16 << szx
                chunk = payload[num * size : (num + 1) * size]
                more = (num + 1) * size < len(payload)
                block = Block(num, more, szx)
                request = self.derive(
                    base,
                    base.mid if num == 0 else self.next_mid(),
                    drop=(Option.BLOCK1,),
                    add=[(Option.BLOCK1, block.encode())],
                    payload=chunk,
                )
                response = step(request)
                if not more or response.code != Code.CONTINUE:
                    break
                answered = response.block1
                if answered is None or answered.num != num:
                    raise ProtocolViolation(
                        f"2.31 for Block1 {block} carries Block1 {answered}: {response}"
                    )
                offset = (num + 1) * size
                if answered.szx < szx:  # the server asks for smaller blocks
                    szx = answered.szx
                num = offset // (16 << szx)
            else:
                raise ProtocolViolation(f"Block1 transfer longer than {MAX_BLOCKS} blocks")
        else:
            request = self.derive(base, base.mid, payload=payload)
            response = step(request)
        return self._fetch_rest(base, response, exchanges, step)

    def _fetch_rest(
        self,
        base: Message,
        first: Response,
        exchanges: list[tuple[Message, Response]],
        step: Callable[[Message], Response],
    ) -> Response:
        body = bytearray(first.message.payload)
        last = first
        for _ in range(MAX_BLOCKS):
            block = last.block2
            if block is None or not block.more or not 0x40 <= last.code < 0x60:
                break
            offset = (block.num + 1) * block.size
            wanted = Block(offset // block.size, False, block.szx)
            request = self.derive(
                base,
                self.next_mid(),
                drop=(Option.BLOCK1, Option.BLOCK2, Option.OBSERVE),
                add=[(Option.BLOCK2, wanted.encode())],
            )
            response = step(request)
            if not 0x40 <= response.code < 0x60:
                last = response  # an error ends the transfer; report it as the result
                body = bytearray(response.message.payload)
                break
            got = response.block2
            if got is None or got.num * got.size != offset:
                raise ProtocolViolation(
                    f"asked for Block2 {wanted} (offset {offset}), got {got}: {response}"
                )
            body += response.message.payload
            last = response
        else:
            raise ProtocolViolation(f"Block2 transfer longer than {MAX_BLOCKS} blocks")
        return Response(
            last.message,
            last.raw,
            payload=bytes(body),
            request=last.request,
            empty_ack=last.empty_ack,
            typed=self.has_message_types,
            exchanges=exchanges,
        )

    # -- observe ---------------------------------------------------------------------------------
    def observe(
        self,
        path: str,
        *,
        type: int = Type.CON,
        token: bytes | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Observation:
        """GET with Observe=0; the registration response is ``Observation.registration``."""
        request = self.make_request(Code.GET, path, type=type, token=token, observe=0, **kwargs)
        self._observed_tokens.add(request.token)
        response = self.exchange(request, timeout)
        return Observation(self, request, response, self.mark())

    def forget(self, token: bytes) -> None:
        """Local cancel: later CON responses with this token get an RST."""
        self._live_tokens.discard(token)
        self._observed_tokens.discard(token)


class Observation:
    """One observe relation as this client sees it; a context manager that cancels on exit."""

    def __init__(
        self, client: CoapTestClient, request: Message, registration: Response, position: int
    ) -> None:
        self.client = client
        self.request = request
        self.token = request.token
        self.registration = registration
        self._position = position  # notifications are what arrives after the registration
        self.active = True

    def _is_notification(self, msg: Message) -> bool:
        return msg.is_response and msg.token == self.token and msg.type in (Type.CON, Type.NON)

    def next(self, timeout: float, *, after: int | None = None) -> Response:
        """The next notification (received after position ``after``, if given)."""
        start = self._position if after is None else max(after, self._position)
        found = self.client.wait_for(self._is_notification, timeout, after=start)
        if found is None:
            raise NoResponse(
                f"no notification for token {self.token.hex()} within {timeout:g} s; "
                f"recent traffic: {self.client.recent_traffic()}"
            )
        return found

    def received(self, *, until: int | None = None) -> list[Response]:
        """Consume the notifications already received (up to position ``until``), oldest first."""
        return self.client.take_received(self._is_notification, after=self._position, until=until)

    def silence(self, duration: float) -> list[Response]:
        """The notifications arriving within ``duration`` seconds from now (expected: none)."""
        return self.client.collect(self._is_notification, duration, after=self.client.mark())

    def cancel(self, timeout: float | None = None) -> Response:
        """Proactive cancel (OBS_12): GET Observe=1 with the same token; then a local cancel."""
        request = self.client.derive(
            self.request,
            self.client.next_mid(),
            drop=(Option.OBSERVE,),
            add=[(Option.OBSERVE, encode_uint(1))],
        )
        try:
            return self.client.exchange(request, timeout)
        finally:
            self.forget()

    def forget(self) -> None:
        """Local cancel: the client answers the next CON notification with RST (OBS_06)."""
        self.active = False
        self.client.forget(self.token)

    def __enter__(self) -> Observation:
        return self

    def __exit__(self, *exc: object) -> None:
        """The checker's ``stopObservation()``: proactive cancel, then local cancel."""
        if self.active:
            with suppress(AssertionError, OSError):
                self.cancel(timeout=1.0)
        self.forget()


class UdpClient(CoapTestClient):
    """CoAP over plain UDP from one connected socket (one source port for the whole client)."""

    transport = "udp"

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.connect((host, port))
        self.address = (host, port)

    def _send_bytes(self, data: bytes) -> None:
        self.sock.send(data)

    def _recv_bytes(self, timeout: float) -> bytes | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionRefusedError as exc:  # ICMP port unreachable: the server is gone
            raise NoResponse(f"{self.address} is unreachable (ICMP port unreachable)") from exc

    def close(self) -> None:
        self.sock.close()


class TcpClient(CoapTestClient):
    """CoAP over TCP (RFC 8323) on one connection: no types, MIDs, empty ACKs or RSTs.

    It sends a CSM without options first (§3.3) and keeps the server's signalling messages in
    ``signals`` (the server's CSM must come first); a Ping is answered with a Pong. Received
    frames are handed to the shared message layer as NON messages with MID 0, and requests go
    out reframed, so type and MID checks pass as the checker's ``checkType`` does over TCP.
    """

    transport = "tcp"
    has_message_types = False

    def __init__(
        self, host: str, port: int, *, tls: ssl.SSLContext | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect((host, port))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.address = (host, port)
        self.buffer = bytearray()
        self.signals: list[Message] = []
        self._send_frame(tcp.encode(Message(code=tcp.CSM)))

    def _send_frame(self, frame: bytes) -> None:
        try:
            self.sock.sendall(frame)
        except OSError as exc:
            raise NoResponse(f"{self.address}: the connection is gone ({exc})") from exc

    def _send_bytes(self, data: bytes) -> None:
        self._send_frame(tcp.from_datagram(data))

    def _frame(self) -> bytes | None:
        size = tcp.frame_size(self.buffer)
        if not size or len(self.buffer) < size:
            return None
        frame = bytes(self.buffer[:size])
        del self.buffer[:size]
        return frame

    def _recv_bytes(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:  # each round consumes a frame or waits for bytes until the deadline
            frame = self._frame()
            if frame is not None:
                try:
                    message = tcp.decode(frame)
                except MessageFormatError:
                    self.malformed.append(frame)
                    continue
                if message.code >> 5 != 7:
                    return message.to_bytes()
                self.signals.append(message)
                self.log.append(("<<", f"signal {code_text(message.code)} {message.options}"))
                if message.code == tcp.PING:
                    self._send_frame(tcp.encode(Message(code=tcp.PONG, token=message.token)))
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(max(remaining, 0.001))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except ConnectionResetError:
                data = b""
            if not data:
                raise NoResponse(f"{self.address} closed the connection")
            self.buffer += data

    def exchange(self, request: Message, timeout: float | None = None) -> Response:
        """Send one request and wait for the response with its token (§3.3). While cancelling
        an observation, notifications with that token (they carry Observe) are skipped."""
        timeout = self.timeout if timeout is None else timeout
        after = self.send(request)
        skip_notifications = request.token in self._observed_tokens and request.observe == 1

        def match(msg: Message) -> bool:
            if not msg.is_response or msg.token != request.token:
                return False
            return not (skip_notifications and msg.observe is not None)

        entry = self._take(match, time.monotonic() + timeout, after)
        if entry is None:
            raise NoResponse(
                f"no response to {describe(request)} within {timeout:g} s; "
                f"received meanwhile: {self.recent_traffic()}"
            )
        return self._wrap(entry, request=request)

    def close(self) -> None:
        self.sock.close()


class TlsClient(TcpClient):
    """CoAP over TLS (coaps+tcp) to the secure port (the plain one + 1, as for DTLS): ALPN
    "coap", the server verified against the demo CA, the demo client certificate presented."""

    transport = "tls"

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        from extplugtest.tools.tcp_transport import demo_tls_client_context

        super().__init__(host, port + 1, tls=demo_tls_client_context(), **kwargs)


class DtlsClient(UdpClient):
    """CoAP over DTLS 1.2 (coaps) to the secure port (the plain one + 1): our client's PSK
    handshake (Client_identity / secretPSK, from the reference servers' store) with a
    Connection ID, then every CoAP message in one application record."""

    transport = "dtls"
    HANDSHAKE_TIMEOUT = 10.0

    def __init__(self, host: str, port: int, **kwargs: Any) -> None:
        from extplugtest.dtls.handshake_client import ClientHandshake

        super().__init__(host, port + 1, **kwargs)
        handshake = ClientHandshake(b"Client_identity", b"secretPSK")
        self.sock.send(handshake.start())
        deadline = time.monotonic() + self.HANDSHAKE_TIMEOUT
        wait = 0.5
        while not handshake.done:  # bounded by the deadline; flights resent as RFC 6347 says
            if time.monotonic() > deadline:
                self.sock.close()
                raise NoResponse(f"DTLS handshake with {self.address} timed out")
            self.sock.settimeout(wait)
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                for record in handshake.retransmit():
                    self.sock.send(record)
                wait = min(2 * wait, 2.0)
                continue
            for record in handshake.on_datagram(datagram):
                self.sock.send(record)
        assert handshake.session is not None
        self.session = handshake.session

    def _send_bytes(self, data: bytes) -> None:
        session = self.session
        self.sock.send(session.cipher.seal(1, session.next_write_seq, APPLICATION_DATA, data))
        session.next_write_seq += 1

    def _recv_bytes(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline: non-application records are skipped
            datagram = super()._recv_bytes(max(deadline - time.monotonic(), 0.0))
            if datagram is None:
                return None
            try:
                content_type, plaintext = self.session.cipher.open(datagram)
            except ValueError:
                continue  # not one authentic record: dropped, as a DTLS stack does
            if content_type == APPLICATION_DATA:
                return plaintext
