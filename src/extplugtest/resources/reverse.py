"""``/reverse-request`` and ``/reverse-observe``: the server becomes the client (inventory §2.3).

A device POSTs here and the server sends requests back to the device's own resources
(Californium's client ``Feed``: ``feed-CON``/``feed-NON``, §3.6), from the endpoint that got
the POST to the address it came from.

* ``/reverse-request?req=n&res=path[&...]`` answers 2.04 at once, then GETs ``/path?...`` *n*
  times, one after the other. An error response, no response in 120 s or an RST end the series.
* ``/reverse-observe?obs=n&res=path[&timeout=s][&...]`` registers an observation of
  ``/path?...`` on the device and answers the POST (separately) with the observation's token
  once the first notification is there. After *n* more notifications, or *timeout* seconds
  without one, the server cancels it and registers anew (new token). ``obs=0`` cancels.

Without ``req``/``obs`` and ``res`` both answer with their statistics. Other query parameters
are forwarded to the device. Both keep their work bounded: at most ``max_series`` running
series and ``max_observations`` observations; more are refused with 5.03 (counted in
``refused``).

Deliberate differences from Californium, which as coded leaves stale state behind:

* ``obs=0`` for a peer without an observation answers 2.04 and leaves nothing behind
  (Californium keeps an empty entry that makes every later POST of that peer a 5.03);
* ``obs=0`` for an established observation cancels it for good (Californium's timeout timer
  keeps running and registers it again);
* a renewed POST replaces the observation's timer instead of adding a second one;
* an error notification, or one without Observe, ends the observation (the device ended it).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.query import QueryError, QueryParameters
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response

if TYPE_CHECKING:
    from extplugtest.coap.endpoint import CoapEndpoint

logger = logging.getLogger("extplugtest.resources.reverse")

MAX_REQUESTS = 10_000_000
MAX_NOTIFIES = 10_000_000
RESPONSE_TIMEOUT = 120.0  # Californium's ResponseTimeout for the reverse requests, seconds
DEFAULT_OBSERVE_TIMEOUT = 30  # seconds without a notification before re-registering
JAVA_INT_MAX = 2**31 - 1
MAX_SERIES = 50_000
MAX_OBSERVATIONS = 50_000
ACCEPTED = (None, ContentFormat.TEXT_PLAIN, ContentFormat.OCTET_STREAM)
#: how CoapEndpoint.request() fails: no response, RST, or too many requests outstanding
REQUEST_FAILED = (asyncio.TimeoutError, OSError, OverflowError)


def java_path_segments(path: str) -> list[str]:
    """``OptionSet.setUriPath``: drop one leading ``/``, then Java's ``split("/")``
    (trailing empty segments are dropped; an empty path is one empty segment)."""
    path = path.removeprefix("/")
    if not path:
        return [""]
    segments = path.split("/")
    while segments and not segments[-1]:
        segments.pop()
    return segments


def reverse_get(
    segments: Iterable[str], queries: Iterable[str], observe: bool = False, token: bytes = b""
) -> Message:
    """The GET the server sends to the device (a CON, like Californium's ``Request.newGet``)."""
    message = Message(type=Type.CON, code=Code.GET, token=token)
    if observe:
        message.add_option(Option.OBSERVE, 0)
    for segment in segments:
        message.add_option(Option.URI_PATH, segment)
    for query in queries:
        message.add_option(Option.URI_QUERY, query)
    return message


def split_queries(queries: Iterable[str], own: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The resource's own query parameters and those to forward to the device."""
    mine: list[str] = []
    forwarded: list[str] = []
    for query in queries:
        (mine if query.partition("=")[0] in own else forwarded).append(query)
    return mine, forwarded


def _is_error(code: int) -> bool:
    return code >= Code.BAD_REQUEST  # 4.xx and 5.xx


def _bad_option(error: QueryError) -> Message:
    # Californium answers these without a Content-Format
    return response(Code.BAD_OPTION, str(error))


class _Tasks:
    """Background tasks of a resource: kept referenced, errors logged, cancelled on stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("reverse task failed", exc_info=task.exception())

    def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


# -- /reverse-request --------------------------------------------------------------------------


class ReverseRequest(Resource):
    def __init__(
        self, *, max_series: int = MAX_SERIES, response_timeout: float = RESPONSE_TIMEOUT
    ) -> None:
        super().__init__("reverse-request", title="Reverse Request", attributes={"ct": ["0", "42"]})
        self.max_series = max_series
        self.response_timeout = response_timeout
        # Californium's statistic: requested GETs, sent GETs, GETs still to come
        self.overall_requests = 0
        self.sent_requests = 0
        self.pending_requests = 0
        self.refused = 0
        self._series = _Tasks()
        #: (scheme, peer, resource) -> [lock, series using it]: one series at a time per
        #: device and resource, so that two block-wise transfers of the same resource never
        #: run at once (a device keeps one Block2 status per resource, RFC 7959 §2.4)
        self._turns: dict[tuple, list] = {}

    def stop(self) -> None:
        self._series.cancel_all()

    def limit_counters(self) -> list[tuple[str, int]]:
        return [("reverse-request-refused", self.refused)]

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept not in ACCEPTED:
            return response(Code.NOT_ACCEPTABLE)
        own, forwarded = split_queries(exchange.query, ("req", "res"))
        try:
            query = QueryParameters(own)
            resource = query.get("res")
            count = query.get_int("req", 1, 1, MAX_REQUESTS) if "req" in query else None
        except QueryError as error:
            return _bad_option(error)
        if resource is None or count is None:
            return self._statistic(accept)
        if len(self._series) >= self.max_series:
            self.refused += 1
            return response(Code.SERVICE_UNAVAILABLE)
        self.overall_requests += count
        self.pending_requests += count
        self.sent_requests += 1
        # The task starts on the next loop turn, after this 2.04 went out.
        segments = java_path_segments(resource)
        self._series.start(self._run(exchange.endpoint, exchange.peer, segments, forwarded, count))
        return response(Code.CHANGED)

    async def _run(
        self,
        endpoint: CoapEndpoint,
        peer: tuple,
        segments: list[str],
        queries: list[str],
        count: int,
    ) -> None:
        remaining = count
        key = (endpoint.scheme, peer, tuple(segments))
        turn = self._turns.setdefault(key, [asyncio.Lock(), 0])  # bounded: one per series
        turn[1] += 1
        try:
            async with turn[0]:
                while remaining > 0:
                    request = reverse_get(segments, queries)
                    try:
                        reply = await endpoint.request(request, peer, timeout=self.response_timeout)
                    except REQUEST_FAILED:
                        return  # the series ends
                    if _is_error(reply.code):
                        return
                    remaining -= 1
                    self.pending_requests -= 1
                    if remaining:
                        self.sent_requests += 1
        finally:
            self.pending_requests -= remaining
            turn[1] -= 1
            if turn[1] == 0:
                del self._turns[key]

    def _statistic(self, accept: int | None) -> Message:
        if accept == ContentFormat.OCTET_STREAM:
            payload = struct.pack(
                ">qqq", self.overall_requests, self.sent_requests, self.pending_requests
            )
            return response(Code.CHANGED, payload, ContentFormat.OCTET_STREAM)
        text = (
            f"{self.overall_requests} reverse-requests, {self.sent_requests} sent, "
            f"{self.pending_requests} pending."
        )
        return response(Code.CHANGED, text, ContentFormat.TEXT_PLAIN)


# -- /reverse-observe --------------------------------------------------------------------------


@dataclass(eq=False)
class _Observation:
    """The observation of one device resource; key = (scheme, peer, res) as Californium's
    ``scheme://peer?res``."""

    key: tuple[str, tuple, str]
    endpoint: CoapEndpoint
    segments: list[str]
    queries: list[str]
    notifies: int
    timeout: float
    accept: int | None
    #: token of the established observation; empty while there is none
    token: bytes = b""
    registering: bool = False
    remaining: int = 0
    timer: asyncio.TimerHandle | None = None
    #: the POST waiting for its separate response
    answer: asyncio.Future[Message] | None = field(default=None, repr=False)

    @property
    def peer(self) -> tuple:
        return self.key[1]


class ReverseObserve(Resource):
    def __init__(
        self,
        *,
        max_observations: int = MAX_OBSERVATIONS,
        response_timeout: float = RESPONSE_TIMEOUT,
    ) -> None:
        super().__init__("reverse-observe", title="Reverse Observe", attributes={"ct": ["0", "42"]})
        self.max_observations = max_observations
        self.response_timeout = response_timeout
        self._observations: dict[tuple[str, tuple, str], _Observation] = {}
        self._registrations = _Tasks()
        self.overall_notifies = 0
        self.overall_observes = 0  # registration requests sent
        self.refused = 0

    def __len__(self) -> int:
        return len(self._observations)

    def limit_counters(self) -> list[tuple[str, int]]:
        return [("reverse-observe-refused", self.refused)]

    def stop(self) -> None:
        self._registrations.cancel_all()
        for observation in list(self._observations.values()):
            self._drop(observation)
            if observation.token:
                observation.endpoint.cancel_observation(observation.peer, observation.token)

    # -- the POST ---------------------------------------------------------------------------
    def handle_post(self, exchange: Exchange) -> HandlerResult:
        accept = exchange.request.accept
        if accept not in ACCEPTED:
            return response(Code.NOT_ACCEPTABLE)
        own, forwarded = split_queries(exchange.query, ("obs", "res", "timeout"))
        try:  # in Californium's order, so that the first bad parameter is the one reported
            query = QueryParameters(own)
            resource = query.get("res")
            timeout = query.get_int("timeout", DEFAULT_OBSERVE_TIMEOUT, 0, JAVA_INT_MAX)
            notifies = query.get_int("obs", 0, 0, MAX_NOTIFIES) if "obs" in query else None
        except QueryError as error:
            return _bad_option(error)
        if resource is None or notifies is None:
            return self._statistic(accept)

        endpoint = exchange.endpoint
        key = (endpoint.scheme, exchange.peer, resource)
        observation = self._observations.get(key)
        if observation is not None and observation.registering:
            return response(Code.SERVICE_UNAVAILABLE)  # the previous POST is still pending
        if notifies == 0:
            if observation is not None:
                self._cancel(observation)
            return response(Code.CHANGED)
        segments = java_path_segments(resource)
        if observation is None:
            if len(self._observations) >= self.max_observations:
                self.refused += 1
                return response(Code.SERVICE_UNAVAILABLE)
            observation = _Observation(
                key, endpoint, segments, forwarded, notifies, timeout, accept
            )
            self._observations[key] = observation
        else:  # a renewed POST keeps the established token (as Californium does)
            observation.segments, observation.queries = segments, forwarded
            observation.notifies, observation.timeout = notifies, timeout
            observation.accept = accept
        observation.answer = answer = asyncio.get_running_loop().create_future()
        self._register(observation)
        return answer  # an empty ACK now, the token when the first notification is there

    def _statistic(self, accept: int | None) -> Message:
        active = len(self._observations)
        if accept == ContentFormat.OCTET_STREAM:
            payload = struct.pack(">iq", active, self.overall_notifies)
            return response(Code.CHANGED, payload, ContentFormat.OCTET_STREAM)
        text = f"{active} active observes, {self.overall_notifies} notifies."
        return response(Code.CHANGED, text, ContentFormat.TEXT_PLAIN)

    # -- registration -----------------------------------------------------------------------
    def _register(self, observation: _Observation) -> None:
        observation.registering = True
        self._stop_timer(observation)
        self._registrations.start(self._registration(observation))

    async def _registration(self, observation: _Observation) -> None:
        endpoint, peer = observation.endpoint, observation.peer
        if observation.token:  # re-used below: forget the old relation's notifications
            endpoint.cancel_observation(peer, observation.token)
        request = reverse_get(
            observation.segments, observation.queries, observe=True, token=observation.token
        )
        self.overall_observes += 1
        try:
            reply = await endpoint.request(
                request,
                peer,
                timeout=self.response_timeout,
                on_notification=lambda message: self._on_notification(observation, message),
            )
        except REQUEST_FAILED:
            self._fail(observation, Code.INTERNAL_SERVER_ERROR, request.token)
            return
        if _is_error(reply.code):
            self._fail(observation, reply.code, reply.token)
            return
        if reply.observe is None:  # the device does not let us observe that
            self._fail(observation, Code.NOT_ACCEPTABLE, reply.token)
            return
        if self._observations.get(observation.key) is not observation:  # dropped meanwhile
            endpoint.cancel_observation(peer, reply.token)
            return
        if observation.token and observation.token != reply.token:
            endpoint.cancel_observation(peer, observation.token)
        observation.token = reply.token
        observation.registering = False
        observation.remaining = observation.notifies
        self._start_timer(observation)
        self._answer(observation, self._token_response(observation))

    def _token_response(self, observation: _Observation) -> Message:
        if observation.accept == ContentFormat.OCTET_STREAM:
            return response(Code.CHANGED, observation.token, ContentFormat.OCTET_STREAM)
        return response(Code.CHANGED, observation.token.hex().upper(), ContentFormat.TEXT_PLAIN)

    def _fail(self, observation: _Observation, code: int, token: bytes) -> None:
        if token:
            observation.endpoint.cancel_observation(observation.peer, token)
        self._drop(observation)
        self._answer(observation, response(code))

    @staticmethod
    def _answer(observation: _Observation, result: Message) -> None:
        answer, observation.answer = observation.answer, None
        if answer is not None and not answer.done():
            answer.set_result(result)

    # -- notifications and re-registration --------------------------------------------------
    def _on_notification(self, observation: _Observation, message: Message) -> None:
        self.overall_notifies += 1
        current = self._observations.get(observation.key) is observation
        if not current or observation.registering or message.token != observation.token:
            return  # a late one of an old relation
        if _is_error(message.code) or message.observe is None:
            self._cancel(observation)  # the device ended the relation
            return
        observation.remaining -= 1
        if observation.remaining <= 0:
            self._reregister(observation)
        else:
            self._start_timer(observation)

    def _reregister(self, observation: _Observation) -> None:
        """After *obs* notifications or *timeout* seconds of silence: cancel, register anew."""
        observation.timer = None
        if observation.token:
            observation.endpoint.cancel_observation(observation.peer, observation.token)
            observation.token = b""
        self._register(observation)

    def _start_timer(self, observation: _Observation) -> None:
        self._stop_timer(observation)
        loop = asyncio.get_running_loop()
        observation.timer = loop.call_later(observation.timeout, self._reregister, observation)

    @staticmethod
    def _stop_timer(observation: _Observation) -> None:
        if observation.timer is not None:
            observation.timer.cancel()
            observation.timer = None

    def _cancel(self, observation: _Observation) -> None:
        """End an established observation for good."""
        self._drop(observation)
        if observation.token:
            observation.endpoint.cancel_observation(observation.peer, observation.token)
            observation.token = b""

    def _drop(self, observation: _Observation) -> None:
        self._stop_timer(observation)
        if self._observations.get(observation.key) is observation:
            del self._observations[observation.key]
