"""``/echo`` (Californium's Echo, inventory §1.6): answers a POST with its own payload.

Query parameters: ``rlen=n`` cuts or pads (``*``) the echo to n bytes; ``ack`` answers with an
empty ACK and a separate response; ``delay=ms`` delays the response (only with --echo-delay);
``keep`` keeps the POST as the observable child ``/echo/<name>``: the name is the client's
DTLS/TLS principal (PSK identity, certificate subject) if it has no ``/`` (a raw public key's
``ni:///...`` has), else ``id=<name>``, as Californium's Echo does.

Kept POSTs live at most 6 hours, and at most 500 of them: a new one replaces the least recently
updated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option
from extplugtest.coap.linkformat import serialize
from extplugtest.coap.query import QueryError, QueryParameters
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response, separate
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.resources.settings import ResourceSettings

TITLE = "Resource, which echo's a POST. POSTs with URI-query 'keep' can later be read by GET"
QUERIES = ("ack", "delay", "rlen", "keep", "id")
MAX_DELAY_MS = 3_600_000
#: Californium answers 5.03 once 999 delayed responses are pending.
MAX_PENDING = 999
TOO_MANY_PENDING = "Too many delayed responses pending!"
MAX_KEPT = 500
KEEP_SECONDS = 6 * 3600.0
PURGE_INTERVAL = 60.0

TEXT = ContentFormat.TEXT_PLAIN
OCTETS = ContentFormat.OCTET_STREAM


def negotiate(content_format: int | None, accept: int | None) -> int | None:
    """The content format of an echo (text/plain or octet-stream), None for a 4.06.

    No Accept echoes the request's format (octet-stream if it has none); with both, they must
    agree."""
    if content_format not in (None, TEXT, OCTETS):
        return None
    if accept is None:
        return OCTETS if content_format is None else content_format
    if content_format is None:
        return accept if accept in (TEXT, OCTETS) else None
    return accept if accept == content_format else None


def resize(payload: bytes, length: int) -> bytes:
    """``rlen``: 0 keeps the payload, else cut or pad it with ``*`` to *length* bytes."""
    if length == 0:
        return payload
    return payload[:length].ljust(length, b"*")


def principal_name(exchange: Exchange) -> str | None:
    """The peer's DTLS/TLS principal as /mycontext shows it, if usable as one path segment."""
    security = exchange.endpoint.security
    if security is None:
        return None
    for key, value in security(exchange.peer):
        if key == "peer" and "/" not in str(value):
            return str(value)
    return None


class Echo(Resource):
    def __init__(
        self, settings: ResourceSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__("echo", title=TITLE, attributes={"ct": ["0", "42", "40"]})
        self.max_length = settings.max_resource_body_size
        self.delays = settings.echo_delay
        self.clock = clock
        self.pending = 0
        self.kept_evicted = 0  # kept POSTs dropped for a newer one at MAX_KEPT
        self.delays_refused = 0  # 5.03 at MAX_PENDING
        self._timer = PeriodicTimer(PURGE_INTERVAL, self.purge)

    def limit_counters(self) -> list[tuple[str, int]]:
        return [
            ("echo-kept-evicted", self.kept_evicted),
            ("echo-delay-refused", self.delays_refused),
        ]

    # -- kept POSTs (self.children, least recently updated first) --------------------------
    def kept(self) -> list[KeptPost]:
        return [child for child in self.children.values() if isinstance(child, KeptPost)]

    def keep(self, name: str, request: Message, scheme: str) -> KeptPost:
        self.purge()
        child = self.children.get(name)
        if isinstance(child, KeptPost):
            self.remove(child)  # added again below: now the most recently updated
        else:
            kept = self.kept()
            if len(kept) >= MAX_KEPT:
                self.forget(kept[0])
                self.kept_evicted += 1
            child = KeptPost(name)
        self.add(child)
        child.update(request, scheme, self.clock())
        return child

    def forget(self, child: KeptPost) -> None:
        self.remove(child)
        child.clear_observers(Code.NOT_FOUND)

    def purge(self) -> None:
        """Drop the POSTs kept longer than KEEP_SECONDS."""
        now = self.clock()
        for child in self.kept():
            if now - child.updated < KEEP_SECONDS:
                break
            self.forget(child)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer.start(loop)

    def stop(self) -> None:
        self._timer.stop()

    # -- requests ---------------------------------------------------------------------------
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept is not None and accept != ContentFormat.LINK_FORMAT:
            return response(Code.NOT_ACCEPTABLE)
        self.purge()
        links = serialize(child for child in self.kept() if child.visible)
        return response(Code.CONTENT, links, ContentFormat.LINK_FORMAT, max_age=0)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        content_format = negotiate(request.content_format, request.accept)
        if content_format is None:
            return response(Code.NOT_ACCEPTABLE)
        try:
            query = QueryParameters(exchange.query, QUERIES)
            length = query.get_int("rlen", 0, 0, self.max_length)
            delay = query.get_int("delay", 0, 0, MAX_DELAY_MS)
        except QueryError as error:
            return response(Code.BAD_OPTION, str(error), TEXT)
        result = response(Code.CHANGED, resize(request.payload, length), content_format)
        name = principal_name(exchange) or query.get("id")
        # A name with "/" could not be requested as one Uri-Path segment.
        if "keep" in query and name and "/" not in name:
            kept = self.keep(name, request, exchange.endpoint.scheme)
            for segment in kept.path.split("/")[1:]:
                result.add_option(Option.LOCATION_PATH, segment)
        if delay > 0 and self.delays:
            if self.pending >= MAX_PENDING:
                self.delays_refused += 1
                result = response(Code.SERVICE_UNAVAILABLE, TOO_MANY_PENDING, TEXT)
            else:
                return self._respond_later(result, delay / 1000)
        return separate(result) if "ack" in query else result

    def _respond_later(self, result: Message, seconds: float) -> asyncio.Future[Message]:
        """*result* after *seconds*, counted as pending until it is due or cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        timer = loop.call_later(seconds, future.set_result, result)
        self.pending += 1

        def done(_: asyncio.Future[Message]) -> None:
            self.pending -= 1
            timer.cancel()

        future.add_done_callback(done)
        return future


class KeptPost(Resource):
    """``/echo/<name>``: the last POST kept under that name, observable."""

    def __init__(self, name: str) -> None:
        super().__init__(name, observable=True)
        self.payload = b""
        self.content_format: int | None = None
        self.updated = 0.0

    def update(self, request: Message, scheme: str, now: float) -> None:
        self.payload = request.payload
        self.content_format = request.content_format
        self.attributes.pop("ct", None)
        if self.content_format is not None:
            self.attributes["ct"] = [str(self.content_format)]
        # Java's SimpleDateFormat("dd.MMM-HH:mm:ss"), e.g. 07.Mar-14:05:01
        self.attributes["time"] = [time.strftime("%d.%b-%H:%M:%S")]
        self.attributes["scheme"] = [scheme]
        self.updated = now
        self.changed()

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        content_format = negotiate(self.content_format, exchange.request.accept)
        if content_format is None:
            return response(Code.NOT_ACCEPTABLE)
        return response(Code.CONTENT, self.payload, content_format, max_age=0)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        if isinstance(self.parent, Echo):
            self.parent.forget(self)
        return response(Code.DELETED)
