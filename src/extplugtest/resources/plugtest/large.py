"""The TD_COAP_BLOCK resources: ``/large``, ``/large-update``, ``/large-create`` (and its
children), ``/large-post``, ``/large-separate`` (Californium's Large, LargeUpdate, LargeCreate,
LargePost, LargeSeparate; inventory §1.5).

They deal in whole bodies: the endpoint slices responses into Block2 blocks and assembles
Block1 uploads before a handler sees them.
"""

from __future__ import annotations

from extplugtest.coap.codes import Code, ContentFormat, Option, mime_type
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response, separate
from extplugtest.resources.plugtest.conditional import CONTENT_FORMAT_NOT_SET, stored_attributes
from extplugtest.resources.plugtest.discovery import subtree


def _large_text() -> bytes:
    """1280 bytes: 5 blocks of 4 lines of 64 bytes each."""
    lines = []
    for number in range(1, 6):
        lines += [
            "/" + "-" * 61 + "\\\n",
            f"|                 RESOURCE BLOCK NO. {number} OF 5                   |\n",
            "|               [each line contains 64 bytes]                 |\n",
            "\\" + "-" * 61 + "/\n",
        ]
    return "".join(lines).encode("ascii")


LARGE_TEXT = _large_text()
BLOCK_ATTRIBUTES = {"rt": ["block"]}
#: /large-create keeps at most this many children (Californium has no bound).
MAX_CREATED = 100
TOO_MANY_CREATED = f"Too many resources! DELETE some of the {MAX_CREATED} first."


def only(content_format: int) -> str:
    """The 4.06 text of a resource with one format: Californium's ``"<mime> only"``."""
    return mime_type(content_format) + " only"


def _stored_get(exchange: Exchange, data: bytes, content_format: int) -> HandlerResult:
    accept = exchange.request.accept
    if accept is not None and accept != content_format:
        return response(Code.NOT_ACCEPTABLE, only(content_format), ContentFormat.TEXT_PLAIN)
    return response(Code.CONTENT, data, content_format)


class Large(Resource):
    """``/large``: 1280 bytes of text (BLOCK_01/02/06)."""

    def __init__(self, name: str = "large") -> None:
        super().__init__(
            name,
            title="Large resource",
            content_formats=(ContentFormat.TEXT_PLAIN,),
            attributes={**BLOCK_ATTRIBUTES, "sz": [str(len(LARGE_TEXT))]},
        )

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, LARGE_TEXT, ContentFormat.TEXT_PLAIN)


class LargeSeparate(Large):
    """``/large-separate``: /large as a separate response."""

    def __init__(self) -> None:
        super().__init__("large-separate")

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return separate(response(Code.CONTENT, LARGE_TEXT, ContentFormat.TEXT_PLAIN))


class LargeUpdate(Resource):
    """``/large-update``: a body replaced by PUT (BLOCK_03)."""

    def __init__(self) -> None:
        super().__init__(
            "large-update",
            title="Large resource that can be updated using PUT method",
            attributes={**BLOCK_ATTRIBUTES, "sz": [str(len(LARGE_TEXT))]},
        )
        self.data = LARGE_TEXT
        self.content_format: int = ContentFormat.TEXT_PLAIN

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return _stored_get(exchange, self.data, self.content_format)

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        if request.content_format is None:
            return response(Code.BAD_REQUEST, CONTENT_FORMAT_NOT_SET, ContentFormat.TEXT_PLAIN)
        self.data = request.payload
        self.content_format = request.content_format
        stored_attributes(self, self.data, self.content_format)
        return response(Code.CHANGED)


class LargeCreate(Resource):
    """``/large-create``: each POST creates a child ``/large-create/<n>`` (BLOCK_04)."""

    def __init__(self) -> None:
        super().__init__(
            "large-create",
            title="Large resource that can be created using POST method",
            attributes={**BLOCK_ATTRIBUTES, "ct": [str(ContentFormat.LINK_FORMAT)]},
        )
        self.counter = 0
        self.refused = 0

    def limit_counters(self) -> list[tuple[str, int]]:
        return [("large-create-refused", self.refused)]

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, subtree(self), ContentFormat.LINK_FORMAT)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        if request.content_format is None:
            return response(Code.BAD_REQUEST, CONTENT_FORMAT_NOT_SET, ContentFormat.TEXT_PLAIN)
        if len(self.children) >= MAX_CREATED:
            self.refused += 1
            return response(Code.SERVICE_UNAVAILABLE, TOO_MANY_CREATED, ContentFormat.TEXT_PLAIN)
        self.counter += 1
        child = Created(str(self.counter), request.payload, request.content_format)
        self.add(child)
        result = response(Code.CREATED)
        for segment in child.path.split("/")[1:]:
            result.add_option(Option.LOCATION_PATH, segment)
        return result


class Created(Resource):
    """A child of /large-create: its POSTed body, readable and deletable."""

    def __init__(self, name: str, data: bytes, content_format: int) -> None:
        super().__init__(name)
        self.data = data
        self.content_format = content_format
        stored_attributes(self, data, content_format)

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return _stored_get(exchange, self.data, self.content_format)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        if self.parent is not None:
            self.parent.remove(self)
        return response(Code.DELETED)


class LargePost(Resource):
    """``/large-post``: answers a POSTed text upper-cased (BLOCK_05)."""

    def __init__(self) -> None:
        super().__init__(
            "large-post",
            title="Handle POST with two-way blockwise transfer",
            attributes=dict(BLOCK_ATTRIBUTES),
        )

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept is not None and accept != ContentFormat.LINK_FORMAT:
            return response(Code.NOT_ACCEPTABLE)
        return response(Code.CONTENT, subtree(self), ContentFormat.LINK_FORMAT)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        if request.content_format is None:
            return response(Code.BAD_REQUEST, CONTENT_FORMAT_NOT_SET, ContentFormat.TEXT_PLAIN)
        if request.accept is not None and request.accept != ContentFormat.TEXT_PLAIN:
            return response(Code.NOT_ACCEPTABLE)
        text = request.payload.decode("utf-8", "replace").upper()
        return response(Code.CHANGED, text, ContentFormat.TEXT_PLAIN)
