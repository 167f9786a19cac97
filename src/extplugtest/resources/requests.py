"""``/requests``: the receive test (Californium ``RequestStatistic``, inventory §2.2).

A device POSTs ``?dev=<id>&rid=<request id>[&ep][&rlen=n]`` and gets back the history of its
last requests as the server saw them: text, Gson-compact JSON or CBOR, cut to a maximum size.

Also home of the small helpers that print values the way the Java original does (Gson string
escaping, ``InetAddress.getHostAddress()``), which ``/diagnose`` shares.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from typing import NamedTuple

import cbor2

from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.query import QueryError, QueryParameters
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response

MAX_DEVICES = 16 * 1024  # LeastRecentlyUpdatedCache capacity
MAX_HISTORY = 24  # entries per device, newest first
DEFAULT_MAX_PAYLOAD = 500
MAX_RLEN = 1023
SUPPORTED = ("dev", "rid", "ep", "rlen")


# -- Java formatting helpers -----------------------------------------------------------------

_GSON_ESCAPES: dict[int, str] = {c: f"\\u{c:04x}" for c in range(0x20)}
_GSON_ESCAPES.update(
    {
        ord('"'): '\\"',
        ord("\\"): "\\\\",
        ord("\t"): "\\t",
        ord("\b"): "\\b",
        ord("\n"): "\\n",
        ord("\r"): "\\r",
        ord("\f"): "\\f",
        # Gson is HTML-safe by default
        ord("<"): "\\u003c",
        ord(">"): "\\u003e",
        ord("&"): "\\u0026",
        ord("="): "\\u003d",
        ord("'"): "\\u0027",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)

JsonValue = str | int | list["JsonValue"] | dict[str, "JsonValue"]


def gson_string(text: str) -> str:
    """A JSON string literal as ``new GsonBuilder().create()`` writes it."""
    return '"' + text.translate(_GSON_ESCAPES) + '"'


def gson_dumps(value: JsonValue) -> str:
    """Compact JSON as Gson writes it (dicts keep their insertion order)."""
    if isinstance(value, str):
        return gson_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(gson_dumps(item) for item in value) + "]"
    return "{" + ",".join(f"{gson_string(k)}:{gson_dumps(v)}" for k, v in value.items()) + "}"


def java_length(text: str) -> int:
    """``String.length()``: UTF-16 code units, which is what the Java size limits count."""
    return len(text.encode("utf-16-le")) // 2


def java_host_address(address: bytes | str, scope: int = 0) -> str:
    """``InetAddress.getHostAddress()``: IPv6 uncompressed (``0:0:0:0:0:0:0:1``), with
    ``%<scope id>`` when the address has one."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return str(ip)
    packed = ip.packed
    text = ":".join(f"{int.from_bytes(packed[i : i + 2], 'big'):x}" for i in range(0, 16, 2))
    return f"{text}%{scope}" if scope else text


def java_raw_address(host: str) -> bytes:
    """``InetAddress.getAddress()`` of a peer: 4 bytes for IPv4, also for an IPv4-mapped IPv6
    peer (Java hands those out as ``Inet4Address``), else 16 bytes."""
    ip = ipaddress.ip_address(host.partition("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.packed


# -- the resource ----------------------------------------------------------------------------


class RequestInformation(NamedTuple):
    rid: str
    time_ms: int
    #: raw source address (4 or 16 bytes), None without ``ep``
    address: bytes | None
    port: int


class RequestStatistic(Resource):
    """POST-only receive-test statistic; GET and the rest are 4.05."""

    def __init__(
        self,
        start_time_ms: int,
        *,
        max_devices: int = MAX_DEVICES,
        max_history: int = MAX_HISTORY,
    ) -> None:
        # Californium only advertises the formats (addContentType), it checks Accept itself,
        # after the request was recorded.
        super().__init__(
            "requests",
            title="Resource that collects requests for client statistics",
            attributes={"ct": ["0", "50", "60"]},
        )
        self.start_time_ms = start_time_ms
        self.max_devices = max_devices
        self.max_history = max_history
        #: device id -> its newest-first history; ordered least recently updated first
        self._devices: OrderedDict[str, deque[RequestInformation]] = OrderedDict()
        #: devices dropped because the cache was full
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._devices)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        try:
            query = QueryParameters(exchange.query, SUPPORTED)
            rid = query.get("rid")
            dev = query.get("dev")
            rlen = None
            if "rlen" in query:
                rlen = query.get_int("rlen", DEFAULT_MAX_PAYLOAD, 1, MAX_RLEN)
        except QueryError as error:
            return response(Code.BAD_OPTION, str(error), ContentFormat.TEXT_PLAIN)
        problem = _missing(dev, rid)
        if problem is not None:
            return response(Code.BAD_OPTION, problem, ContentFormat.TEXT_PLAIN)
        assert dev is not None and rid is not None

        address, port = None, 0
        if "ep" in query:
            address, port = java_raw_address(exchange.peer[0]), exchange.peer[1]
        history = self.record(dev, rid, address, port)

        max_payload = rlen if rlen is not None else self.default_max_payload(exchange)
        accept = exchange.request.accept
        if accept is None or accept == ContentFormat.TEXT_PLAIN:
            payload = self.to_text(history, max_payload).encode("utf-8")
        elif accept == ContentFormat.JSON:
            payload = self.to_json(history, max_payload).encode("utf-8")
        elif accept == ContentFormat.CBOR:
            payload = self.to_cbor(history, max_payload)
        else:
            return response(Code.NOT_ACCEPTABLE)
        return response(Code.CHANGED, payload, accept or ContentFormat.TEXT_PLAIN)

    def limit_counters(self) -> list[tuple[str, int]]:
        return [("requests-devices-evicted", self.evicted)]

    def default_max_payload(self, exchange: Exchange) -> int:
        """Without ``rlen``: over DTLS what one record of the connection carries
        (KEY_MESSAGE_SIZE_LIMIT) minus the response's header - 4 bytes, the token, a text
        Content-Format option (1 byte) and the payload marker - as Californium; else 500."""
        security = exchange.endpoint.security
        if security is not None:
            for key, value in security(exchange.peer):
                if key == "message-size-limit" and isinstance(value, int):
                    header = 4 + len(exchange.request.token) + 1 + 1
                    return max(0, value - header)
        return DEFAULT_MAX_PAYLOAD

    def record(
        self, dev: str, rid: str, address: bytes | None, port: int
    ) -> list[RequestInformation]:
        """Add a request to *dev*'s history; returns the history, newest first."""
        history = self._devices.get(dev)
        if history is None:
            if len(self._devices) >= self.max_devices:
                self._devices.popitem(last=False)
                self.evicted += 1
            history = self._devices[dev] = deque(maxlen=self.max_history)
        else:
            self._devices.move_to_end(dev)
        history.appendleft(RequestInformation(rid, int(time.time() * 1000), address, port))
        return list(history)

    # -- the three formats: each adds entries while the payload stays within the limit ----
    def to_text(self, history: list[RequestInformation], max_payload: int) -> str:
        lines = [f"systemstart:{self.start_time_ms}\n"]
        length = java_length(lines[0])
        for entry in history:
            line = f"{entry.rid}:{entry.time_ms}\n"
            length += java_length(line)
            if length > max_payload:
                break
            lines.append(line)
        return "".join(lines)

    def to_json(self, history: list[RequestInformation], max_payload: int) -> str:
        elements = [gson_dumps({"systemstart": self.start_time_ms})]
        # "[" + ",".join(elements) + "]", counted as it grows
        length = 2 + java_length(elements[0])
        for entry in history:
            item: dict[str, JsonValue] = {"rid": entry.rid, "time": entry.time_ms}
            if entry.address is not None:
                item["ep"] = java_host_address(entry.address)
                item["port"] = entry.port
            element = gson_dumps(item)
            length += 1 + java_length(element)
            if length > max_payload:
                break
            elements.append(element)
        return "[" + ",".join(elements) + "]"

    def to_cbor(self, history: list[RequestInformation], max_payload: int) -> bytes:
        # Californium's CBORObject.NewMap() sorts keys canonically (length first): ep, rid,
        # port, time. The port is a Java short: ports above 32767 come out negative.
        items = [cbor2.dumps({"systemstart": self.start_time_ms})]
        length = len(items[0])
        for entry in history:
            item: dict[str, object] = {"rid": entry.rid, "time": entry.time_ms}
            if entry.address is not None:
                item["ep"] = entry.address
                item["port"] = _java_short(entry.port)
            encoded = cbor2.dumps(item, canonical=True)
            length += len(encoded)
            if len(_cbor_array_head(len(items) + 1)) + length > max_payload:
                break
            items.append(encoded)
        return _cbor_array_head(len(items)) + b"".join(items)


def _missing(dev: str | None, rid: str | None) -> str | None:
    if rid is None and dev is None:
        return "missing URI-query-options for 'dev' and 'rid'!"
    if rid is None:
        return "missing URI-query-option for 'rid'!"
    if dev is None:
        return "missing URI-query-option for 'dev'!"
    if ":" in rid:
        return "URI-query-option 'rid' contains :!"
    return None


def _java_short(value: int) -> int:
    return (value & 0xFFFF) - 0x10000 if value & 0x8000 else value & 0xFFFF


def _cbor_array_head(count: int) -> bytes:
    """The header of a definite-length CBOR array (major type 4) of *count* items."""
    if count < 24:
        return bytes([0x80 | count])
    if count < 0x100:
        return bytes([0x98, count])
    return bytes([0x99]) + count.to_bytes(2, "big")
