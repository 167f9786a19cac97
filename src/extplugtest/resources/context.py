"""``/mycontext`` (Californium's MyContext, inventory §2.5): what the server knows about the
request's communication context, as text, JSON, XML or CBOR.

Without DTLS the context has the fields ``ip``, ``port`` and ``server``; the DTLS fields
(``peer``, ``cipher-suite``, ``session-id``, CIDs, …) follow the same formatting rules.
"""

from __future__ import annotations

import cbor2

from extplugtest import __version__
from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response
from extplugtest.resources.myip import java_host, not_supported

Field = tuple[str, str | int | bool]
SERVER = f"extplugtest {__version__}"


def java_text(value: str | int | bool) -> str:
    """A value as Java's ``StringBuilder.append`` writes it (booleans in lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def as_text(fields: list[Field]) -> str:
    return "\n".join(f"{name}: {java_text(value)}" for name, value in fields)


def as_json(fields: list[Field]) -> str:
    members = [
        f'  "{name}": "{value}"' if isinstance(value, str) else f'  "{name}": {java_text(value)}'
        for name, value in fields
    ]
    return "{\n" + ",\n".join(members) + "\n}"


def as_xml(fields: list[Field]) -> str:
    return "<context " + "".join(f'{name}="{java_text(value)}" ' for name, value in fields) + "/>"


def as_cbor(fields: list[Field]) -> bytes:
    # Californium's CBORObject.NewMap() sorts keys length-first (canonical), not by insertion.
    return cbor2.dumps(dict(fields), canonical=True)


class MyContext(Resource):
    def __init__(self, visible: bool = True) -> None:
        super().__init__(
            "mycontext",
            title="Communication Context",
            visible=visible,
            attributes={"ct": ["0", "60", "50", "41"]},
        )

    def fields(self, exchange: Exchange) -> list[Field]:
        """The context fields in Californium's order (DTLS ones from the secure endpoint)."""
        peer = exchange.peer
        fields: list[Field] = [("ip", java_host(peer)), ("port", peer[1])]
        security = exchange.endpoint.security
        if security is not None:
            fields += security(peer)
        fields.append(("server", SERVER))
        return fields

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept is None:
            accept = ContentFormat.TEXT_PLAIN
        fields = self.fields(exchange)
        payload: str | bytes
        if accept == ContentFormat.TEXT_PLAIN:
            payload = as_text(fields)
        elif accept == ContentFormat.CBOR:
            payload = as_cbor(fields)
        elif accept == ContentFormat.JSON:
            payload = as_json(fields)
        elif accept == ContentFormat.XML:
            payload = as_xml(fields)
        else:
            return not_supported(accept)
        return response(Code.CONTENT, payload, accept)
