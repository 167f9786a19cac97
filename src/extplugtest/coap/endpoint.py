"""The Python half of the CoAP message layer (RFC 7252 §4-5) for one server endpoint.

The C engine (``_udp.UdpEngine``) handles parsing, pings, malformed messages, deduplication
and the fast path; everything that reaches this class is a well-formed message for which
Python code is needed: dispatch to a resource, separate responses, observe, and the ACKs/RSTs
for CON messages the server sent itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from extplugtest.coap._codec import Message
from extplugtest.coap.blockwise import BlockwiseLayer
from extplugtest.coap.client import OutgoingRequests
from extplugtest.coap.codes import Code, Type
from extplugtest.coap.observe import ObserveManager
from extplugtest.coap.resource import Exchange, Resource, response
from extplugtest.coap.transmission import (
    ACKNOWLEDGED,
    REJECTED,
    ConfirmableSender,
    TransmissionParameters,
)

if TYPE_CHECKING:
    from extplugtest.coap._udp import UdpEngine


@dataclass
class SecureHealth:
    """What a secure transport adds to /diagnose (Californium's DtlsHealthLogger and
    DtlsClusterHealthLogger): groups of (key, value) under a tag suffix."""

    max_connections: int
    node_id: int | None
    groups: list[tuple[str, list[tuple[str, int]]]]


logger = logging.getLogger("extplugtest.coap.endpoint")


class RateLimitedLog:
    """At most one log line per *interval* seconds per key; the rest is counted."""

    def __init__(self, interval: float = 10.0, max_keys: int = 1024) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def __call__(self, key: str, message: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self.suppressed += 1
            return
        if key not in self._last and len(self._last) >= self.max_keys:
            # keys are resource paths, which clients can invent (/echo/<id>): forget the
            # keys whose interval is over; still full, this line is suppressed too
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._last) >= self.max_keys:
                self.suppressed += 1
                return
        self._last[key] = now
        logger.warning(message, *args, exc_info=exc_info)


class CoapEndpoint:
    """Dispatches requests of one endpoint to the resource tree rooted at *root*."""

    def __init__(
        self,
        root: Resource,
        *,
        scheme: str = "coap",
        max_message_size: int = 1024,
        preferred_block_size: int = 1024,
        transmission: TransmissionParameters | None = None,
        max_observes: int = 50_000,
        max_deferred: int = 10_000,
        max_body_size: int = 8192,
        max_requests: int = 10_000,
        notification_check_count: int = 100,
        notification_check_interval: float = 120.0,
    ) -> None:
        self.root = root
        self.scheme = scheme
        self.max_message_size = max_message_size
        self.preferred_block_size = preferred_block_size
        self.engine: UdpEngine | None = None
        self.local_address: tuple | None = None
        self.sender = ConfirmableSender(self.send_bytes, transmission)
        self.observe = ObserveManager(
            self,
            max_relations=max_observes,
            check_count=notification_check_count,
            check_interval=notification_check_interval,
        )
        self.blockwise = BlockwiseLayer(max_message_size, preferred_block_size, max_body_size)
        self.requests = OutgoingRequests(self, max_requests)
        self.max_deferred = max_deferred
        self._deferred: set[asyncio.Future] = set()
        self.log = RateLimitedLog()
        #: the secure transport's context fields of a peer (/mycontext), or None for plain UDP
        self.security: Callable[[tuple], list[tuple[str, str | int | bool]]] | None = None
        #: /diagnose of a secure endpoint (DTLS): max-connections, node-id and its own counter
        #: groups, from the transport (dtls.connector.DtlsServerTransport.health)
        self.secure_health: Callable[[], SecureHealth] | None = None
        #: a secure transport's application authorization of a peer (DTLS: an anonymous
        #: certificate handshake is kept only once authorized, DTLS.APPLICATION_AUTHORIZATION_
        #: TIMEOUT); True if it was pending. None: nothing to authorize (plain UDP)
        self.authorize: Callable[[tuple], bool] | None = None
        self.deferred_refused = 0

    def attach(self, engine: UdpEngine, local_address: tuple) -> None:
        self.engine = engine
        self.local_address = local_address

    @property
    def uri(self) -> str:
        assert self.local_address is not None
        host = self.local_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.local_address[1]}"

    # -- sending ----------------------------------------------------------------------------
    def next_mid(self) -> int:
        assert self.engine is not None
        return self.engine.next_mid()

    def send_bytes(self, data: bytes, peer: tuple) -> None:
        assert self.engine is not None
        self.engine.send(data, peer)

    def send_message(self, message: Message, peer: tuple) -> None:
        self.send_bytes(message.to_bytes(), peer)
        if message.code:
            assert self.engine is not None
            self.engine.count("send-responses")

    def send_confirmable(
        self, message: Message, peer: tuple, on_done: Callable[[str], None] | None = None
    ) -> bool:
        """Send *message* as CON, retransmitted until answered; False (nothing sent) when
        the sender's table of outstanding CON messages is full."""
        message.type = Type.CON
        if not self.sender.send(message.to_bytes(), peer, message.mid, on_done):
            return False
        if message.code:
            assert self.engine is not None
            self.engine.count("send-responses")
        return True

    def send_reliably_if_possible(
        self, message: Message, peer: tuple, on_done: Callable[[str], None] | None = None
    ) -> bool:
        """A response or notification as CON; when the table of outstanding CON messages is
        full it still goes out, as NON (RFC 7252 §5.2.2 wants a CON, but an unreliable
        answer beats none: the client already has our empty ACK and would never ask again).
        False when it went as NON; *on_done* is then never called."""
        if self.send_confirmable(message, peer, on_done):
            return True
        message.type = Type.NON
        self.send_message(message, peer)
        return False

    def log_handler_error(self, resource: Resource) -> None:
        self.log(f"handler:{resource.path}", "handler of %s failed", resource.path, exc_info=True)

    # -- from the engine --------------------------------------------------------------------
    def on_request(self, request: Message, peer: tuple) -> Message | None:
        resource = self.root.find(request.uri_path_segments)
        if resource is None:
            return self._finish(request, response(Code.NOT_FOUND))
        blocks, answer = self.blockwise.incoming(request, peer)
        if answer is not None:  # 2.31 Continue, a kept block, or a block-wise error
            return self._finish(request, answer)
        exchange = Exchange(request, peer, self, resource)
        exchange.blocks = blocks
        observe = request.observe if request.code == Code.GET else None
        if observe == 0 and resource.observable:
            exchange.observe_registration = True
        elif observe == 1:
            self.observe.cancel(peer, request.token)
        try:
            result = resource.handle(exchange)
        except Exception:
            self.log_handler_error(resource)
            return self._finish(request, response(Code.INTERNAL_SERVER_ERROR))
        if inspect.isawaitable(result):
            if len(self._deferred) >= self.max_deferred:
                self.deferred_refused += 1
                if hasattr(result, "close"):
                    result.close()
                return self._finish(request, response(Code.SERVICE_UNAVAILABLE))
            task = asyncio.ensure_future(result)
            self._deferred.add(task)
            task.add_done_callback(lambda done: self._deferred_done(exchange, done))
            return None
        return self._complete(exchange, result)

    def on_empty(self, type: int, mid: int, peer: tuple) -> None:
        outcome = ACKNOWLEDGED if type == Type.ACK else REJECTED
        if self.sender.complete(peer, mid, outcome):
            return  # (an empty ACK to one of our CON requests: its response comes later)
        if type == Type.RST and self.observe.on_reset(peer, mid):
            return
        assert self.engine is not None
        self.engine.count("recv-ignored")

    def on_response(self, message: Message, peer: tuple) -> None:
        self.requests.on_response(message, peer)

    # -- requests of the server's own (reverse requests, reverse observe) -------------------
    def request(
        self,
        message: Message,
        peer: tuple,
        *,
        timeout: float = 120.0,
        on_notification: Callable[[Message], None] | None = None,
    ) -> asyncio.Future[Message]:
        """Send a request to *peer*; the future gets its response (see OutgoingRequests)."""
        return self.requests.send(message, peer, timeout, on_notification)

    def cancel_observation(self, peer: tuple, token: bytes) -> None:
        self.requests.cancel(peer, token)

    # -- completing requests ----------------------------------------------------------------
    def _complete(self, exchange: Exchange, result: Message) -> Message:
        return self._finish(exchange.request, self._settle(exchange, result))

    def _settle(self, exchange: Exchange, result: Message) -> Message:
        """A handler's response: establish or end the observation, slice it into blocks."""
        if exchange.observe_registration:
            if 0x40 <= result.code < 0x60:
                self.observe.register(exchange, result)
            else:
                self.observe.cancel(exchange.peer, exchange.request.token)
        if exchange.blocks is not None:
            result = self.blockwise.outgoing(exchange.blocks, result)
        return result

    def _finish(self, request: Message, result: Message) -> Message:
        """Piggy-back on the ACK of a CON; a NON request gets a NON response (§5.2)."""
        result.token = request.token
        if request.type == Type.CON:
            result.type = Type.ACK
            result.mid = request.mid
        else:
            result.type = Type.NON
            result.mid = self.next_mid()
        return result

    def _deferred_done(self, exchange: Exchange, task: asyncio.Future) -> None:
        self._deferred.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.log(
                f"handler:{exchange.resource.path}",
                "handler of %s failed: %r",
                exchange.resource.path,
                error,
            )
            result = response(Code.INTERNAL_SERVER_ERROR)
        else:
            result = task.result()
        result = self._settle(exchange, result)
        request = exchange.request
        result.token = request.token
        result.mid = self.next_mid()
        if request.type == Type.CON:  # separate response (§5.2.2)
            self.send_reliably_if_possible(result, exchange.peer)
        else:
            result.type = Type.NON
            self.send_message(result, exchange.peer)
        assert self.engine is not None  # duplicates of the request now get the response
        self.engine.update_cached_response(exchange.peer, request.mid, result.to_bytes())

    def close(self) -> None:
        self.requests.cancel_all()
        self.sender.cancel_all()
        self.observe.cancel_all()
        for task in list(self._deferred):
            task.cancel()

    def counters(self) -> dict[str, int]:
        assert self.engine is not None
        counters: dict[str, int] = dict(self.engine.counters())
        counters["send-response retransmissions"] = self.sender.retransmissions
        counters["send-timeouts"] = self.sender.timeouts
        counters["send-con-refused"] = self.sender.refused  # went as NON: the CON table full
        counters["deferred-refused"] = self.deferred_refused  # answered 5.03
        counters["log-lines-suppressed"] = self.log.suppressed
        counters.update(self.observe.counters())
        counters.update(self.blockwise.counters())
        counters.update(self.requests.counters())
        if self.engine.dedup is not None:
            counters.update({f"dedup-{k}": v for k, v in self.engine.dedup.stats().items()})
        return counters
