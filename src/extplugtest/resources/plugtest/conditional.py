"""Conditional requests: ``/validate`` (ETag, If-Match; CORE_21/22) and ``/create1``
(If-None-Match; CORE_23), Californium's Validate and Create (inventory §1.5).

Both reset themselves after a failed precondition, so that the checker can run its test again.
"""

from __future__ import annotations

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response
from extplugtest.resources.plugtest.core import request_summary, token_hex, truncate

CONTENT_FORMAT_NOT_SET = "Content-Format not set"
#: /validate's ETag while it holds no data.
INITIAL_ETAG = b"\x00"


def java_array_hash(data: bytes) -> bytes:
    """The ETag of stored data: Java's ``Arrays.hashCode(byte[])`` (h = 31·h + signed byte,
    starting at 1, int32 wrap) as 4 bytes big endian."""
    h = 1
    for byte in data:
        h = (31 * h + (byte - 256 if byte > 127 else byte)) & 0xFFFFFFFF
    return h.to_bytes(4, "big")


def if_match(request: Message, etag: bytes) -> bool:
    """RFC 7252 §5.10.8.1: no If-Match, an empty one (any representation), or *etag* listed."""
    values = request.option_values(Option.IF_MATCH)
    return not values or any(value in (b"", etag) for value in values)


def stored_attributes(resource: Resource, data: bytes, content_format: int | None) -> None:
    """Link attributes of stored data: its content format (``ct``) and size (``sz``)."""
    if content_format is None:
        resource.attributes.pop("ct", None)
    else:
        resource.attributes["ct"] = [str(content_format)]
    resource.attributes["sz"] = [str(len(data))]


class Validate(Resource):
    """``/validate``: a resource that varies, with ETags."""

    def __init__(self) -> None:
        super().__init__("validate", title="Resource which varies")
        self.data: bytes | None = None
        self.content_format: int | None = None
        self.etag = INITIAL_ETAG

    def _store(self, data: bytes, content_format: int | None) -> None:
        self.data = data
        self.content_format = content_format
        self.etag = java_array_hash(data)
        stored_attributes(self, data, content_format)

    def _reset(self) -> None:
        # As in Californium, the link attributes keep describing the last stored data.
        self.data = None
        self.content_format = None
        self.etag = INITIAL_ETAG

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        if self.etag in request.option_values(Option.ETAG):
            result = response(Code.VALID)
            result.add_option(Option.ETAG, self.etag)
            self._reset()  # the resource varies by itself (CORE_21 step 3)
            return result
        if self.data is None:
            text = request_summary(request)
            if request.token:
                text += "\nToken: " + token_hex(request)
            result = response(Code.CONTENT, truncate(text, 63), ContentFormat.TEXT_PLAIN)
        else:
            result = response(Code.CONTENT, self.data, self.content_format)
        result.add_option(Option.ETAG, self.etag)
        return result

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        if if_match(request, self.etag):
            if request.content_format is None:
                return response(Code.BAD_REQUEST, CONTENT_FORMAT_NOT_SET, ContentFormat.TEXT_PLAIN)
            self._store(request.payload, request.content_format)
            result = response(Code.CHANGED)
            result.add_option(Option.ETAG, self.etag)
            return result
        if request.has_option(Option.IF_NONE_MATCH) and self.data is None:
            self._store(request.payload, request.content_format)
            return response(Code.CREATED)
        self._reset()
        return response(Code.PRECONDITION_FAILED)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        self._reset()
        return response(Code.DELETED)


class Create(Resource):
    """``/create1``: hidden until a PUT creates it; a PUT with If-None-Match on existing data
    answers 4.12 and drops the data (it stays listed, as in Californium)."""

    def __init__(self) -> None:
        super().__init__(
            "create1",
            title="Resource which does not exist yet (to perform atomic PUT)",
            visible=False,
        )
        self.data: bytes | None = None
        self.content_format: int | None = None

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        if self.data is not None and request.has_option(Option.IF_NONE_MATCH):
            self.data = None
            return response(Code.PRECONDITION_FAILED)
        if request.content_format is None:
            return response(Code.BAD_REQUEST, CONTENT_FORMAT_NOT_SET, ContentFormat.TEXT_PLAIN)
        self.data = request.payload
        self.content_format = request.content_format
        stored_attributes(self, self.data, self.content_format)
        self.visible = True
        return response(Code.CREATED)

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        if self.data is None:
            return response(Code.NOT_FOUND)
        accept = exchange.request.accept
        if accept is not None and accept != self.content_format:
            return response(Code.NOT_ACCEPTABLE)
        return response(Code.CONTENT, self.data, self.content_format)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        self.data = None
        self.visible = False
        return response(Code.DELETED)
