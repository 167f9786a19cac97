"""The resource tree: Python-level resources and what a handler sees of a request.

A handler (``handle_get`` etc.) receives an ``Exchange`` and returns a response ``Message``
built with ``response()``, or an awaitable of one. An awaitable means a separate response
(RFC 7252 §5.2.2): a CON request gets an empty ACK at once, the response follows as its own
CON. The endpoint fills in type, MID and token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, Option

if TYPE_CHECKING:
    from extplugtest.coap.blockwise import BlockRequest
    from extplugtest.coap.endpoint import CoapEndpoint
    from extplugtest.coap.observe import ObserveRelation

HandlerResult = Message | Awaitable[Message]


def response(
    code: int,
    payload: bytes | str = b"",
    content_format: int | None = None,
    max_age: int | None = None,
) -> Message:
    """A response message; text payloads are UTF-8 encoded."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    message = Message(code=code, payload=payload)
    if content_format is not None:
        message.add_option(Option.CONTENT_FORMAT, content_format)
    if max_age is not None:
        message.add_option(Option.MAX_AGE, max_age)
    return message


async def separate(result: Message, delay: float = 0.0) -> Message:
    """*result* as a separate response: the endpoint sends an empty ACK now and *result*
    after *delay* seconds (RFC 7252 §5.2.2)."""
    if delay > 0:
        await asyncio.sleep(delay)
    return result


_HANDLER_NAMES: dict[int, str] = {
    Code.GET: "handle_get",
    Code.POST: "handle_post",
    Code.PUT: "handle_put",
    Code.DELETE: "handle_delete",
}


class Exchange:
    """One request as a handler sees it."""

    __slots__ = ("blocks", "endpoint", "observe_registration", "peer", "request", "resource")

    def __init__(
        self, request: Message, peer: tuple, endpoint: CoapEndpoint, resource: Resource
    ) -> None:
        self.request = request
        self.peer = peer
        self.endpoint = endpoint
        self.resource = resource
        #: True while handling a GET with Observe=0 on an observable resource.
        self.observe_registration = False
        #: the block-wise context of the request (set by the endpoint)
        self.blocks: BlockRequest | None = None

    @property
    def query(self) -> list[str]:
        return self.request.uri_query


class Resource:
    """A node of the resource tree.

    ``attributes`` are its link-format attributes (RFC 6690), name -> list of values; an empty
    list is a flag such as ``obs``.
    """

    def __init__(
        self,
        name: str,
        *,
        title: str | None = None,
        visible: bool = True,
        observable: bool = False,
        observe_type: int | None = None,
        content_formats: tuple[int, ...] | None = None,
        attributes: dict[str, list[str]] | None = None,
    ) -> None:
        self.name = name
        self.parent: Resource | None = None
        self.children: dict[str, Resource] = {}
        self.visible = visible
        self.observable = observable
        #: Type.CON / Type.NON for every notification, or None: the registering request's type.
        self.observe_type = observe_type
        #: Californium's addSupportedContentFormats: another Accept is a 4.06 before any
        #: handler runs; also listed as the ``ct`` attribute.
        self.content_formats = content_formats
        self.attributes: dict[str, list[str]] = dict(attributes or {})
        if title is not None:
            self.attributes["title"] = [title]
        if observable:
            self.attributes["obs"] = []
        if content_formats is not None and "ct" not in self.attributes:
            self.attributes["ct"] = [str(cf) for cf in content_formats]
        #: observe relations on this resource (managed by ObserveManager).
        self.observers: set[ObserveRelation] = set()

    # -- tree -------------------------------------------------------------------------------
    def add(self, *children: Resource) -> Resource:
        for child in children:
            child.parent = self
            self.children[child.name] = child
        return self

    def remove(self, child: Resource) -> None:
        if self.children.get(child.name) is child:
            del self.children[child.name]
            child.parent = None

    def find(self, segments: list[str]) -> Resource | None:
        node: Resource | None = self
        for segment in segments:
            assert node is not None
            node = node.children.get(segment)
            if node is None:
                return None
        return node

    @property
    def path(self) -> str:
        parts = []
        node: Resource | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def walk(self) -> Iterator[Resource]:
        """This resource's descendants, depth first."""
        for child in self.children.values():
            yield child
            yield from child.walk()

    # -- requests ---------------------------------------------------------------------------
    def handle(self, exchange: Exchange) -> HandlerResult:
        name = _HANDLER_NAMES.get(exchange.request.code)
        if name is None:
            return response(Code.METHOD_NOT_ALLOWED)
        if self.content_formats is not None:
            accept = exchange.request.accept
            if accept is not None and accept not in self.content_formats:
                return response(Code.NOT_ACCEPTABLE)
        return getattr(self, name)(exchange)

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.METHOD_NOT_ALLOWED)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        return response(Code.METHOD_NOT_ALLOWED)

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        return response(Code.METHOD_NOT_ALLOWED)

    def handle_delete(self, exchange: Exchange) -> HandlerResult:
        return response(Code.METHOD_NOT_ALLOWED)

    def limit_counters(self) -> list[tuple[str, int]]:
        """What this resource refused or dropped at its bounds, for /diagnose (name, count)."""
        return []

    # -- life cycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The server started: begin timers and the like (called for every resource)."""

    def stop(self) -> None:
        """The server stops: cancel what start() began."""

    # -- observe ----------------------------------------------------------------------------
    def changed(self) -> None:
        """The representation changed: notify every observer (RFC 7641 §4.2)."""
        for relation in list(self.observers):
            relation.endpoint.observe.notify(relation)

    def clear_observers(self, code: int | None) -> None:
        """End every observe relation (Californium's clearAndNotifyObserveRelations): with a
        final notification of *code* (RFC 7641 §3.2, e.g. 4.04 after DELETE), or silently
        when *code* is None."""
        for relation in list(self.observers):
            # Leave the resource first, so that no notification of a newer state can replace
            # the final one while a CON notification is still in flight.
            self.observers.discard(relation)
            manager = relation.endpoint.observe
            if code is None:
                manager.cancel(relation.peer, relation.token)
            else:
                manager.send_notification(relation, response(code))
