"""``/telemetry`` and ``/event`` (Californium's Hono, inventory §1.6): hidden POST targets
for Eclipse Hono clients, answering ``<name> published!``."""

from __future__ import annotations

from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response


class Hono(Resource):
    def __init__(self, name: str) -> None:
        super().__init__(
            name,
            title=f"Hono test request for {name}",
            visible=False,
            # Any other Accept is a 4.06 with an empty payload before handle_post runs.
            content_formats=(
                ContentFormat.JSON,
                ContentFormat.TEXT_PLAIN,
                ContentFormat.OCTET_STREAM,
            ),
        )

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept == ContentFormat.JSON:
            payload = f'{{ "type" : "{self.name}", "msg" : "published!" }}'
            return response(Code.CHANGED, payload, ContentFormat.JSON)
        if accept == ContentFormat.OCTET_STREAM:
            return response(Code.CHANGED, f"{self.name} published!", ContentFormat.OCTET_STREAM)
        return response(Code.CHANGED, f"{self.name} published!", ContentFormat.TEXT_PLAIN)
