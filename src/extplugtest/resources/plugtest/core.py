"""The TD_COAP_CORE resources: /test, /seg1/seg2/seg3, /query, /separate, /location-query and
/multi-format (Californium's DefaultTest, LongPath, Query, Separate, LocationQuery, MultiFormat;
inventory §1.5).

Their texts describe the request the way Californium's ``String.format`` does: the message type
and code as number and enum name, the MID in decimal, the token in uppercase hex.
"""

from __future__ import annotations

import cbor2

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response, separate

#: Californium cuts texts longer than this many characters and marks the cut with "»".
MAX_TEXT = 64


def request_summary(request: Message) -> str:
    """``"Type: %d (%s)\\nCode: %d (%s)\\nMID: %d"`` of *request*."""
    kind = Type(request.type)
    code = Code(request.code)
    return f"Type: {kind.value} ({kind.name})\nCode: {code.value} ({code.name})\nMID: {request.mid}"


def token_hex(request: Message) -> str:
    return request.token.hex().upper()


def truncate(text: str, keep: int) -> str:
    """A text above MAX_TEXT characters keeps *keep* of them plus "»" (62 or 63, per resource)."""
    return text if len(text) <= MAX_TEXT else text[:keep] + "»"


class DefaultTest(Resource):
    """``/test``: every method of CORE_01..08, 10, 12, 18."""

    def __init__(self) -> None:
        super().__init__(
            "test", title="Default test resource", content_formats=(ContentFormat.TEXT_PLAIN,)
        )

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        # Unlike /validate, the token line is there even for an empty token (CORE_12).
        text = f"{request_summary(request)}\nToken: {token_hex(request)}"
        return response(Code.CONTENT, truncate(text, 62), ContentFormat.TEXT_PLAIN, max_age=30)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        result = response(Code.CREATED)
        for segment in ("location1", "location2", "location3"):
            result.add_option(Option.LOCATION_PATH, segment)
        return result

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        if exchange.request.has_option(Option.IF_NONE_MATCH):
            return response(Code.PRECONDITION_FAILED)
        return response(Code.CHANGED)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        return response(Code.DELETED)  # the resource stays: later tests use it again


class LongPath(Resource):
    """``/seg1``, ``/seg1/seg2``, ``/seg1/seg2/seg3`` (CORE_13)."""

    def __init__(self, name: str, content_formats: tuple[int, ...] | None = None) -> None:
        super().__init__(name, title="Long path resource", content_formats=content_formats)

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        text = "Long path resource\n" + request_summary(exchange.request)
        return response(Code.CONTENT, text, ContentFormat.TEXT_PLAIN)


def long_path() -> Resource:
    """``/seg1`` with its descendants; only seg1 declares text/plain (as in Californium)."""
    seg1 = LongPath("seg1", (ContentFormat.TEXT_PLAIN,))
    seg2 = LongPath("seg2")
    seg2.add(LongPath("seg3"))
    return seg1.add(seg2)


class Query(Resource):
    """``/query``: echoes the Uri-Query options (CORE_14)."""

    def __init__(self) -> None:
        super().__init__(
            "query",
            title="Resource accepting query parameters",
            content_formats=(ContentFormat.TEXT_PLAIN,),
        )

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        text = f"{request_summary(exchange.request)}\n?" + "&".join(exchange.query)
        return response(Code.CONTENT, truncate(text, 63), ContentFormat.TEXT_PLAIN)


class Separate(Resource):
    """``/separate``: an empty ACK now, the response after *delay* seconds (CORE_09/11/16/17).

    Californium blocks its thread for the second; here only the response waits.
    """

    def __init__(self, delay: float = 1.0) -> None:
        super().__init__(
            "separate",
            title=(
                "Resource which cannot be served immediately and which cannot be acknowledged "
                "in a piggy-backed way"
            ),
            content_formats=(ContentFormat.TEXT_PLAIN,),
        )
        self.delay = delay

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        text = request_summary(exchange.request) + "\n"
        return separate(response(Code.CONTENT, text, ContentFormat.TEXT_PLAIN), self.delay)


class LocationQuery(Resource):
    """``/location-query``: two Location-Query options (CORE_19)."""

    def __init__(self) -> None:
        super().__init__(
            "location-query",
            title=(
                "Perform POST transaction with responses containing several Location-Query "
                "options (CON mode)"
            ),
        )

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        result = response(Code.CREATED)
        result.add_option(Option.LOCATION_QUERY, "first=1")
        result.add_option(Option.LOCATION_QUERY, "second=2")
        return result


class MultiFormat(Resource):
    """``/multi-format``: the request summary in the format the Accept option asks for
    (CORE_20). It checks Accept itself: its 4.06 carries a text without Content-Format."""

    NOT_ACCEPTABLE_TEXT = "text/plain, application/xml, application/json, or application/cbor only"

    def __init__(self) -> None:
        super().__init__(
            "multi-format",
            title=(
                "Resource that exists in different content formats "
                "(text/plain utf8 and application/xml)"
            ),
            attributes={"ct": ["0", "41", "50", "60"]},
        )

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        accept = request.accept
        kind = Type(request.type).name
        code = Code(request.code).name
        shown = -1 if accept is None else accept  # Californium's UNDEFINED
        payload: bytes | str
        if accept is None or accept == ContentFormat.TEXT_PLAIN:
            accept = ContentFormat.TEXT_PLAIN
            payload = f'Status type: "{kind}"\nCode: "{code}"\nMID: {request.mid}\nAccept: {shown}'
        elif accept == ContentFormat.XML:
            payload = f'<msg type="{kind}" code="{code}" mid="{request.mid}" accept="{shown}" />'
        elif accept == ContentFormat.JSON:
            payload = (
                f'{{ "type":"{kind}", "code":"{code}", "mid":{request.mid}, "accept":{shown} }}'
            )
        elif accept == ContentFormat.CBOR:
            # In the order the reference server puts them on the wire (the capture in
            # plugtest-transcript-udp.txt): type, code, mid, accept. The inventory's claim of
            # length-first order is contradicted by that capture.
            fields = {"type": kind, "code": code, "mid": request.mid, "accept": shown}
            payload = cbor2.dumps(fields)
        else:
            return response(Code.NOT_ACCEPTABLE, self.NOT_ACCEPTABLE_TEXT)
        return response(Code.CONTENT, payload, accept)
