"""``/benchmark`` (Californium ``Benchmark``, inventory §2.1).

Its common requests never get here: ``BenchmarkFastPath`` answers them in C. This class
answers everything else with the same payload rule: the disabled resource (5.01), Accept
mismatch (4.06), bad queries (4.02), ``ack`` (separate response), ``auth``, observe, large
``rlen``.

``auth`` (inventory §2.1): the request's peer is authorized by the application - over DTLS an
anonymous certificate handshake (no client certificate, no principal) is then kept beyond
DTLS.APPLICATION_AUTHORIZATION_TIMEOUT (Californium's ApplicationAuthorizer.authorize with
ApplicationPrincipal.ANONYMOUS). Anywhere else it changes nothing.
"""

from __future__ import annotations

import asyncio
import time

from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.query import QueryError, QueryParameters
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response, separate
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.resources._benchmark import BenchmarkFastPath, benchmark_payload

MAX_RESOURCE_BODY_SIZE = 8192  # COAP.MAX_RESOURCE_BODY_SIZE of the extended server
DISABLED_TEXT = "benchmark is not supported on this host!"


class Benchmark(Resource):
    def __init__(
        self,
        enabled: bool,
        notify_interval: float = 5.0,
        max_body_size: int = MAX_RESOURCE_BODY_SIZE,
    ) -> None:
        super().__init__(
            "benchmark",
            title="Benchmark" if enabled else "Benchmark (disabled)",
            observable=enabled,
            attributes={"ct": ["0"]},
        )
        self.enabled = enabled
        self.notify_interval = notify_interval
        self.fast_path = BenchmarkFastPath()
        self.fast_path.enabled = enabled
        self.fast_path.max_body = self.max_body_size = max_body_size
        self.timer = PeriodicTimer(notify_interval, self._on_timer)
        self.tick()

    # -- timer ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Take the new NNN of ``hello observe NNN`` (the millisecond part of the clock)."""
        self.fast_path.nnn = int(time.time() * 1000) % 1000

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.enabled:
            self.timer.start(loop)

    def stop(self) -> None:
        self.timer.stop()

    def _on_timer(self) -> None:
        self.tick()
        self.changed()

    # -- requests ---------------------------------------------------------------------------
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return self._answer(exchange, get=True)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        return self._answer(exchange, get=False)

    def _answer(self, exchange: Exchange, get: bool) -> HandlerResult:
        if not self.enabled:
            return response(Code.NOT_IMPLEMENTED, DISABLED_TEXT, ContentFormat.TEXT_PLAIN)
        accept = exchange.request.accept
        if accept is not None and accept != ContentFormat.TEXT_PLAIN:
            return response(Code.NOT_ACCEPTABLE)
        try:
            query = QueryParameters(exchange.query, ("rlen", "ack", "auth"))
            rlen = query.get_int("rlen", 0, 0, self.max_body_size)
        except QueryError as error:
            return response(Code.BAD_OPTION, str(error), ContentFormat.TEXT_PLAIN)
        if "auth" in query and exchange.endpoint.authorize is not None:
            exchange.endpoint.authorize(exchange.peer)  # (only a pending one: else nothing)
        payload = benchmark_payload(get, self.fast_path.nnn, rlen)
        result = response(Code.CONTENT if get else Code.CHANGED, payload, ContentFormat.TEXT_PLAIN)
        if "ack" in query:
            return separate(result)
        return result
