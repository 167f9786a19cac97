"""Server side of CoAP Observe (RFC 7641).

A GET with Observe=0 on an observable resource registers (or re-registers, same peer and token)
a relation; Observe=1 or an RST to a notification cancels it. Notifications carry an increasing
24-bit sequence number. At most one CON notification per relation is in flight: a newer one
waits and replaces an older waiting one. NON notifications are sent as CON every
``check_count``-th time or after ``check_interval`` seconds, so that a vanished client is
noticed (§4.5). A notification with an error code ends the relation.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Option, Type
from extplugtest.coap.resource import Exchange, Resource
from extplugtest.coap.transmission import ACKNOWLEDGED

if TYPE_CHECKING:
    from extplugtest.coap.endpoint import CoapEndpoint


def _confirmable(request: Message, resource: Resource) -> bool:
    """The resource's observe type if it has one, else the registering request's type."""
    if resource.observe_type is not None:
        return resource.observe_type == Type.CON
    return request.type == Type.CON


class ObserveRelation:
    __slots__ = (
        "confirmable",
        "endpoint",
        "in_flight",
        "last_con",
        "last_mid",
        "notifications",
        "peer",
        "request",
        "resource",
        "sequence",
        "waiting",
    )

    def __init__(
        self, endpoint: CoapEndpoint, peer: tuple, request: Message, resource: Resource
    ) -> None:
        self.endpoint = endpoint
        self.peer = peer
        self.request = request
        self.resource = resource
        self.confirmable = _confirmable(request, resource)
        self.sequence = 0
        self.notifications = 0
        self.last_con = time.monotonic()
        self.last_mid: int | None = None
        self.in_flight = False
        self.waiting: Message | None = None

    @property
    def token(self) -> bytes:
        return self.request.token

    def next_sequence(self) -> int:
        self.sequence = (self.sequence + 1) & 0xFFFFFF
        return self.sequence


class ObserveManager:
    """The observe relations of one endpoint, bounded by ``max_relations``."""

    def __init__(
        self,
        endpoint: CoapEndpoint,
        max_relations: int = 50_000,
        check_count: int = 100,
        check_interval: float = 120.0,
    ) -> None:
        self.endpoint = endpoint
        self.max_relations = max_relations
        self.check_count = check_count
        self.check_interval = check_interval
        self._relations: dict[tuple[tuple, bytes], ObserveRelation] = {}
        self._by_mid: dict[tuple[tuple, int], ObserveRelation] = {}
        # counters (Californium's ObserveStatisticLogger names)
        self.observe_requests = 0
        self.cancel_requests = 0
        self.rejected_notifies = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._relations)

    def counters(self) -> dict[str, int]:
        return {
            "observes": len(self._relations),
            "observing-endpoints": len({peer for peer, _ in self._relations}),
            "observe-request": self.observe_requests,
            "cancel-request": self.cancel_requests,
            "rejected-notifies": self.rejected_notifies,
            "refused-observes": self.refused,
        }

    # -- registration -----------------------------------------------------------------------
    def register(self, exchange: Exchange, response: Message) -> bool:
        """Establish the relation of a successful GET+Observe=0; False when at the bound."""
        key = (exchange.peer, exchange.request.token)
        relation = self._relations.get(key)
        if relation is None:
            if len(self._relations) >= self.max_relations:
                self.refused += 1
                return False
            relation = ObserveRelation(
                self.endpoint, exchange.peer, exchange.request, exchange.resource
            )
            self._relations[key] = relation
        else:  # re-registration with the same token (§3.3.1)
            relation.resource.observers.discard(relation)
            relation.request = exchange.request
            relation.resource = exchange.resource
            relation.confirmable = _confirmable(exchange.request, exchange.resource)
        exchange.resource.observers.add(relation)
        self.observe_requests += 1
        response.set_option(Option.OBSERVE, relation.next_sequence())
        return True

    def cancel(self, peer: tuple, token: bytes) -> bool:
        relation = self._relations.get((peer, token))
        if relation is None:
            return False
        self.cancel_requests += 1
        self._remove(relation)
        return True

    def cancel_all(self) -> None:
        for relation in list(self._relations.values()):
            self._remove(relation)

    def _remove(self, relation: ObserveRelation) -> None:
        self._relations.pop((relation.peer, relation.token), None)
        if relation.last_mid is not None:
            self._by_mid.pop((relation.peer, relation.last_mid), None)
        relation.resource.observers.discard(relation)
        relation.waiting = None

    # -- notifications ----------------------------------------------------------------------
    def notify(self, relation: ObserveRelation) -> None:
        exchange = Exchange(relation.request, relation.peer, self.endpoint, relation.resource)
        exchange.observe_registration = True
        try:
            result = relation.resource.handle(exchange)
        except Exception:
            self.endpoint.log_handler_error(relation.resource)
            self._remove(relation)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda done: self._notify_done(relation, done))
        else:
            self.send_notification(relation, result)

    def _notify_done(self, relation: ObserveRelation, task: asyncio.Future) -> None:
        if task.cancelled() or task.exception() is not None:
            self._remove(relation)
            return
        self.send_notification(relation, task.result())

    def send_notification(self, relation: ObserveRelation, response: Message) -> None:
        if (relation.peer, relation.token) not in self._relations:
            return
        if relation.in_flight:  # one CON at a time; the newest waits (§4.5.2)
            relation.waiting = response
            return
        response.token = relation.token
        success = 0x40 <= response.code < 0x60
        if success:
            response.set_option(Option.OBSERVE, relation.next_sequence())
            relation.notifications += 1
        else:
            response.remove_option(Option.OBSERVE)
            self._remove(relation)
        now = time.monotonic()
        confirmable = (
            relation.confirmable
            or not success
            or relation.notifications % self.check_count == 0
            or now - relation.last_con > self.check_interval
        )
        mid = self.endpoint.next_mid()
        response.mid = mid
        if relation.last_mid is not None:
            self._by_mid.pop((relation.peer, relation.last_mid), None)
        relation.last_mid = mid
        if success:
            self._by_mid[(relation.peer, mid)] = relation
        response = self.endpoint.blockwise.notification(relation.peer, relation.request, response)
        if confirmable:
            response.type = Type.CON
            relation.last_con = now
            # one CON in flight (set first: over TCP the outcome arrives within the send)
            relation.in_flight = success
            if not self.endpoint.send_reliably_if_possible(
                response, relation.peer, lambda outcome: self._con_done(relation, outcome)
            ):
                relation.in_flight = False  # it went as NON (the CON table was full)
        else:
            response.type = Type.NON
            self.endpoint.send_message(response, relation.peer)

    def _con_done(self, relation: ObserveRelation, outcome: str) -> None:
        relation.in_flight = False
        if outcome != ACKNOWLEDGED:  # RST or no ACK at all: the client is gone (§3.6, §4.5)
            if outcome == "rst":
                self.rejected_notifies += 1
            self._remove(relation)
            return
        waiting, relation.waiting = relation.waiting, None
        if waiting is not None:
            self.send_notification(relation, waiting)

    def on_reset(self, peer: tuple, mid: int) -> bool:
        """An RST for a (NON) notification cancels its relation (§3.6)."""
        relation = self._by_mid.get((peer, mid))
        if relation is None:
            return False
        self.rejected_notifies += 1
        self._remove(relation)
        return True
