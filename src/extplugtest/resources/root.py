"""The root resource: Californium's banner (inventory §1.4)."""

from __future__ import annotations

from extplugtest import __version__
from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response

STARS = "*" * 64
NOTE = (
    "Note: the data sent to this server is public visible to other\n"
    "      users! Don't send data, which requires data privacy.\n"
)


def banner(version: str = __version__, note: str | None = NOTE) -> str:
    product = f"extplugtest {version}"
    lines = [
        STARS,
        f"CoAP RFC 7252{product:>51}",
        STARS,
        "This server is extplugtest, a Python/Cython re-implementation of",
        "the Eclipse Californium (Cf) extended plugtest server.",
        "",
    ]
    text = "\n".join(lines) + "\n"
    if note:
        text += note
    return text + STARS


class RootResource(Resource):
    def __init__(self, note: str | None = NOTE) -> None:
        super().__init__("", visible=False)
        self._banner = banner(note=note).encode("utf-8")

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, self._banner, ContentFormat.TEXT_PLAIN)
