"""The TD_COAP_OBS resources: ``/obs``, ``/obs-non``, ``/obs-large``, ``/obs-pumping``,
``/obs-pumping-non`` and ``/obs-reset`` (Californium's Observe, ObserveNon, ObserveLarge,
ObservePumping, ObserveReset; inventory §1.5).

Each observable one changes on a timer every notify interval and notifies its observers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from extplugtest.coap.codes import Code, ContentFormat, Type
from extplugtest.coap.query import QueryParameters
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.resources.plugtest.conditional import CONTENT_FORMAT_NOT_SET
from extplugtest.resources.plugtest.shutdown import PASSWORD

logger = logging.getLogger("extplugtest.resources.plugtest")

TITLE = "Observable resource which changes every 5 seconds"
#: Max-Age of every observe response: the checker waits Max-Age + 1 s for a notification.
MAX_AGE = 5
PADDING = "-" * 64


def local_time() -> str:
    """Java's ``SimpleDateFormat("HH:mm:ss")`` of now, local time."""
    return time.strftime("%H:%M:%S")


class Periodic(Resource):
    """An observable resource that takes a new state every *interval* seconds."""

    def __init__(
        self,
        name: str,
        observe_type: int,
        interval: float,
        content_formats: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(
            name,
            title=TITLE,
            observable=True,
            observe_type=observe_type,
            content_formats=content_formats,
            attributes={"rt": ["observe"]},
        )
        self.interval = interval
        self._timer = PeriodicTimer(interval, self.tick)
        self.update()

    def update(self) -> None:
        """Take the next state."""
        raise NotImplementedError

    def tick(self) -> None:
        """One timer period: the next state, notified to the observers."""
        self.update()
        self.changed()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer.start(loop)

    def stop(self) -> None:
        self._timer.stop()


class Observe(Periodic):
    """``/obs`` (CON notifications) and ``/obs-non`` (NON): the time, or once the data of the
    last PUT. A PUT in another content format ends every observation with 4.06 (OBS_08),
    DELETE ends them with 4.04 (OBS_07); the resource itself stays."""

    def __init__(self, name: str, observe_type: int, interval: float) -> None:
        self.time = ""
        self.data = b""
        self.content_format: int = ContentFormat.TEXT_PLAIN
        self.updated = False  # the PUT data is served once, then the time again
        super().__init__(name, observe_type, interval)

    def update(self) -> None:
        self.time = local_time()
        self.content_format = ContentFormat.TEXT_PLAIN  # CO09/10 expect text after CO08

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept is not None and accept != self.content_format:
            return response(Code.NOT_ACCEPTABLE)
        payload: bytes | str = self.time
        if self.updated:
            payload = self.data
            self.updated = False
        return response(Code.CONTENT, payload, self.content_format, max_age=MAX_AGE)

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        request = exchange.request
        content_format = request.content_format
        if content_format is None:
            return response(Code.BAD_REQUEST, CONTENT_FORMAT_NOT_SET, ContentFormat.TEXT_PLAIN)
        self.updated = True
        if content_format != self.content_format:
            self.clear_observers(Code.NOT_ACCEPTABLE)
        self.data = request.payload
        self.content_format = content_format
        self.attributes["ct"] = [str(content_format)]
        self.changed()  # notify now, before the timer overwrites the data (OBS_09)
        return response(Code.CHANGED)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        self.updated = False
        self.clear_observers(Code.NOT_FOUND)
        return response(Code.DELETED)


class ObserveLarge(Periodic):
    """``/obs-large``: 162 bytes, more than one 64-byte block (OBS_13)."""

    def __init__(self, interval: float) -> None:
        self.text = ""
        super().__init__("obs-large", Type.CON, interval, (ContentFormat.TEXT_PLAIN,))

    def update(self) -> None:
        self.text = f"{PADDING}\n{local_time():<32}\n{PADDING}"

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, self.text, ContentFormat.TEXT_PLAIN, max_age=MAX_AGE)


class ObservePumping(Periodic):
    """``/obs-pumping`` (CON) and ``/obs-pumping-non`` (NON): each period a payload of 84, 164
    or 8 bytes, picked at random, so that some notifications need Block2 (OBS_14)."""

    def __init__(
        self, observe_type: int, interval: float, rng: random.Random | None = None
    ) -> None:
        self.rng = rng or random.Random()
        self.text = ""
        name = "obs-pumping-non" if observe_type == Type.NON else "obs-pumping"
        super().__init__(name, observe_type, interval, (ContentFormat.TEXT_PLAIN,))

    def update(self) -> None:
        now = local_time()
        # Two draws as in Californium: p = .5, .25, .25.
        if self.rng.random() > 0.5:
            self.text = f"{PADDING[:31]}\n{now:>19}\n{PADDING[:31]}\n"
        elif self.rng.random() > 0.5:
            self.text = f"{PADDING[:63]}\n{now:>35}\n{PADDING[:63]}\n"
        else:
            self.text = now

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, self.text, ContentFormat.TEXT_PLAIN, max_age=MAX_AGE)


class ObserveReset(Resource):
    """``/obs-reset``: POST ``sesame`` ends the observations of every observable sibling,
    silently, or with 4.04 notifications when the query has ``notfound`` (OBS_04 simulates a
    server reboot with it)."""

    def __init__(self) -> None:
        super().__init__("obs-reset")

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        if exchange.request.payload != PASSWORD:
            return response(Code.FORBIDDEN)
        code = Code.NOT_FOUND if "notfound" in QueryParameters(exchange.query) else None
        logger.info("obs-reset received POST, clearing observers")
        siblings = list(self.parent.children.values()) if self.parent is not None else []
        for sibling in siblings:
            if sibling.observable:
                sibling.clear_observers(code)
        return response(Code.CHANGED)
