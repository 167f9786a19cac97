"""``/diagnose``: health counters of the endpoints (Californium ``Diagnose``, inventory §2.4).

GET ``/diagnose`` answers for the endpoint that received the request; one child per endpoint,
named ``<PROTOCOL>:<host:port>``, answers for its own endpoint. Each answer lists counter
groups, as Californium's ``CounterStatisticManager``\\ s do:

* the observe statistics of each server (tags ``EXTENDED-TEST`` and ``PLUG-TEST``, summed over
  that server's endpoints), then
* the CoAP message statistics of the endpoint (tag = the endpoint's URI);

and, our extension after Californium's groups, what was refused or dropped at a bound (every
table has one): the endpoint's (tag = URI + ``limits``; deduplication, observe, block-wise,
deferred and CON tables, TCP connections) and each server's resources' (tag = server tag +
``limits``; ``/requests``, ``/reverse-*``, ``/echo``, ``/large-create``).

Every counter is reported as a pair ``cur``/``all`` with Californium's meaning: ``all`` is the
value at the last transfer, ``cur`` what was added since. Californium transfers when it dumps
its health log, every ``SYS.HEALTH_STATUS_INTERVAL`` (60 s on the extended server); so do we,
on a timer, and ``since`` is the time since that transfer. (A transfer per GET would make one
client's "current" depend on what other clients read.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import cbor2

from extplugtest.coap.codes import Code, ContentFormat
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.resources.requests import JsonValue, gson_dumps, java_host_address
from extplugtest.resources.settings import ResourceSettings

if TYPE_CHECKING:
    from extplugtest.coap.endpoint import CoapEndpoint

HEALTH_INTERVAL = 60.0  # SYS.HEALTH_STATUS_INTERVAL of the extended server, seconds

#: CoAP.getProtocolForScheme
PROTOCOLS = {"coap": "UDP", "coaps": "DTLS", "coap+tcp": "TCP", "coaps+tcp": "TLS"}

#: ObserveStatisticLogger keys, in Californium's order
OBSERVE_KEYS = (
    "observes",
    "observing-endpoints",
    "observe-request",
    "cancel-request",
    "rejected-notifies",
)

#: HealthStatisticLogger keys (UDP), in Californium's order. A key is listed only if our
#: endpoint counts it (CoapEndpoint.counters() uses these names).
COAP_KEYS = (
    "send-requests",
    "send-responses",
    "send-acks",
    "send-rejects",
    "send-request retransmissions",
    "send-response retransmissions",
    "send-errors",
    "send-no-responses",
    "recv-requests",
    "recv-responses",
    "recv-acks",
    "recv-rejects",
    "recv-duplicate requests",
    "recv-duplicate responses",
    "recv-offloaded",
    "recv-ignored",
    "recv-malformed",
)

#: what an endpoint refused or dropped at one of its bounds (those it counts), our extension
LIMIT_KEYS = (
    "dedup-peers-evicted",
    "dedup-exchanges-overwritten",
    "refused-observes",
    "refused-requests",
    "deferred-refused",
    "send-con-refused",
    "send-timeouts",
    "blockwise-evicted",
    "blockwise-expired",
    "blockwise-incomplete",
    "recv-truncated",
    "handler-errors",
    "log-lines-suppressed",
    "tcp-refused",
    "tcp-closed-overflow",
    "tcp-closed-slow",
    "tcp-closed-stalled",
)
LIMITS_SUFFIX = "limits "

#: CoapServer.setTag of the two servers; CounterStatisticManager appends a space to a tag
EXTENDED_TAG = "EXTENDED-TEST "
PLUGTEST_TAG = "PLUG-TEST "

#: (tag, [(key, value now)]) - one CounterStatisticManager
Group = tuple[str, list[tuple[str, int]]]


def endpoint_key(endpoint: CoapEndpoint) -> str:
    """The child's name: ``protocol + ":" + StringUtil.toString(local address)``."""
    return f"{PROTOCOLS.get(endpoint.scheme, endpoint.scheme.upper())}:{_socket_address(endpoint)}"


def endpoint_tag(endpoint: CoapEndpoint) -> str:
    """``endpoint.getUri().toASCIIString()`` + the space of a normalised logging tag."""
    return f"{endpoint.scheme}://{_socket_address(endpoint, uri=True)} "


def _socket_address(endpoint: CoapEndpoint, uri: bool = False) -> str:
    assert endpoint.local_address is not None
    host, port = endpoint.local_address[:2]
    scope = endpoint.local_address[3] if len(endpoint.local_address) > 3 else 0
    text = java_host_address(host, scope)
    if ":" not in text:
        return f"{text}:{port}"
    if uri:  # a scope in a URI is percent-encoded
        text = text.replace("%", "%25")
    return f"[{text}]:{port}"


class HealthStatistics:
    """The counter groups of every endpoint, with Californium's transfer semantics."""

    def __init__(self, settings: ResourceSettings, root: Callable[[], Resource | None]) -> None:
        self.settings = settings
        self._root = root
        self._transferred: dict[tuple[str, str], int] = {}
        self.last_transfer = time.monotonic()

    def groups(self, endpoint: CoapEndpoint) -> list[Group]:
        endpoints = [e for e in self.settings.endpoints() if e.engine is not None]
        own_root = self._root()
        groups: list[Group] = []
        resource_limits: list[Group] = []
        # one observe group per server (resource tree), the extended server first
        roots = [own_root] + [e.root for e in endpoints if e.root is not own_root]
        for root in dict.fromkeys(roots):
            members = [e for e in endpoints if e.root is root]
            if not members or root is None:
                continue
            tag = EXTENDED_TAG if root is own_root else PLUGTEST_TAG
            snapshots = [e.counters() for e in members]
            values = [(key, sum(c.get(key, 0) for c in snapshots)) for key in OBSERVE_KEYS]
            groups.append((tag, values))
            limits = [pair for resource in root.walk() for pair in resource.limit_counters()]
            if limits:
                resource_limits.append((tag + LIMITS_SUFFIX, limits))
        if endpoint.secure_health is not None:  # DTLS (and cluster) health of a coaps endpoint
            tag = endpoint_tag(endpoint)
            for suffix, values in endpoint.secure_health().groups:
                groups.append((f"{tag}{suffix} ", values))
        counters = endpoint.counters()
        coap = [(key, counters[key]) for key in COAP_KEYS if key in counters]
        groups.append((endpoint_tag(endpoint), coap))
        limits = [(key, counters[key]) for key in LIMIT_KEYS if key in counters]
        groups.append((endpoint_tag(endpoint) + LIMITS_SUFFIX, limits))
        return groups + resource_limits

    def pairs(self, group: Group) -> list[tuple[str, int, int]]:
        """(key, cur, all) for each counter of *group*."""
        tag, values = group
        result = []
        for key, value in values:
            overall = self._transferred.get((tag, key), 0)
            result.append((key, value - overall, overall))
        return result

    def since(self) -> int:
        return int(time.monotonic() - self.last_transfer)

    def transfer(self) -> None:
        """Move every "current" into "all" (Californium's transferCounter)."""
        transferred: dict[tuple[str, str], int] = {}
        for endpoint in self.settings.endpoints():
            if endpoint.engine is None:  # closed
                continue
            for tag, values in self.groups(endpoint):
                for key, value in values:
                    transferred[(tag, key)] = value
        self._transferred = transferred
        self.last_transfer = time.monotonic()


class Diagnose(Resource):
    """``/diagnose`` and, as children, ``/diagnose/<PROTOCOL>:<address>``."""

    def __init__(
        self,
        settings: ResourceSettings,
        *,
        health_interval: float = HEALTH_INTERVAL,
        name: str = "diagnose",
        title: str = "Resource for diagnose statistics",
        health: HealthStatistics | None = None,
        endpoint: CoapEndpoint | None = None,
    ) -> None:
        super().__init__(name, title=title, attributes={"ct": ["0", "50", "60"]})
        self.settings = settings
        self.health_interval = health_interval
        self.health = health or HealthStatistics(settings, self._tree_root)
        #: a child's endpoint; None for /diagnose itself (the receiving endpoint)
        self.endpoint = endpoint
        self._timer = PeriodicTimer(health_interval, self.health.transfer)

    def _tree_root(self) -> Resource | None:
        node: Resource | None = self
        while node is not None and node.parent is not None:
            node = node.parent
        return node

    # -- life cycle -------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.endpoint is not None:  # a child: the parent owns children and timer
            return
        self.update()
        self.health.last_transfer = time.monotonic()
        if self.health_interval > 0:
            self._timer.start(loop)

    def stop(self) -> None:
        self._timer.stop()

    def update(self) -> None:
        """One child per endpoint of the server (Californium's ``Diagnose.update``)."""
        for child in list(self.children.values()):
            self.remove(child)
        for endpoint in self.settings.endpoints():
            if endpoint.local_address is None:
                continue
            key = endpoint_key(endpoint)
            self.add(
                Diagnose(
                    self.settings,
                    name=key,
                    title=f"Resource for diagnose statistic of {key}",
                    health=self.health,
                    endpoint=endpoint,
                )
            )

    # -- requests ---------------------------------------------------------------------------
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        receiving = exchange.endpoint
        max_connections = node_id = None
        reported = self.endpoint or receiving
        if reported.secure_health is not None:
            health = reported.secure_health()
            max_connections, node_id = health.max_connections, health.node_id
        groups = self.health.groups(self.endpoint or receiving)
        accept = exchange.request.accept
        if accept is None or accept == ContentFormat.TEXT_PLAIN:
            payload = self.to_text(max_connections, node_id, groups).encode("utf-8")
        elif accept == ContentFormat.JSON:
            payload = self.to_json(max_connections, node_id, groups).encode("utf-8")
        elif accept == ContentFormat.CBOR:
            payload = self.to_cbor(max_connections, node_id, groups)
        else:
            return response(Code.NOT_ACCEPTABLE)
        return response(Code.CONTENT, payload, accept or ContentFormat.TEXT_PLAIN)

    def to_text(self, max_connections: int | None, node_id: int | None, groups: list[Group]) -> str:
        lines = [f"systemstart:{self.settings.start_time_ms}"]
        if node_id is not None:
            lines.append(f"node-id:{node_id}")
        if max_connections is not None:
            lines.append(f"max. connnections:{max_connections}")  # sic, as in Californium
        if groups:
            lines.append(f"since: {self.health.since()}s")
            for tag, group in self._tagged(groups):
                lines.append(tag)
                lines.extend(f"   {key},{cur},{all_}" for key, cur, all_ in group)
        return "\n".join(lines) + "\n"

    def to_json(self, max_connections: int | None, node_id: int | None, groups: list[Group]) -> str:
        return gson_dumps(self._tree(max_connections, node_id, groups))

    def to_cbor(
        self, max_connections: int | None, node_id: int | None, groups: list[Group]
    ) -> bytes:
        # CBORObject.NewOrderedMap(): insertion order, which is cbor2's default
        return cbor2.dumps(self._tree(max_connections, node_id, groups))

    def _tree(
        self, max_connections: int | None, node_id: int | None, groups: list[Group]
    ) -> dict[str, JsonValue]:
        tree: dict[str, JsonValue] = {"systemstart": self.settings.start_time_ms}
        if node_id is not None:
            tree["node-id"] = node_id
        if max_connections is not None:
            tree["max-connections"] = max_connections
        if groups:
            tree["since"] = f"{self.health.since()}s"
            for tag, group in self._tagged(groups):
                tree[tag] = {key: {"cur": cur, "all": all_} for key, cur, all_ in group}
        return tree

    def _tagged(self, groups: list[Group]) -> list[tuple[str, list[tuple[str, int, int]]]]:
        """Groups with their tag; an untagged group is numbered 1, 2, ... as in Californium."""
        result = []
        number = 0
        for group in groups:
            tag = group[0]
            if not tag:
                number += 1
                tag = str(number)
            result.append((tag, self.health.pairs(group)))
        return result
