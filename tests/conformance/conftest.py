"""Fixtures of the plugtest conformance suite (plugtest-spec.md §1.3-1.7, §1.9).

* ``target``: one ``extserver`` for the whole session, its plugtest endpoint and observe timing
  (``--notify-interval 200ms``, so the observe tests see a notification every 0.2 s).
* ``transport``: the transports the suite runs over, one parameter per entry of ``TRANSPORTS``.
  ``udp``, ``dtls`` (coaps), ``tcp`` and ``tls`` (RFC 8323); another client (a subclass of
  ``CoapTestClient`` in client.py or in a module beside it) is added to ``TRANSPORTS`` and every
  test runs over it too.
* ``client``: a fresh client (a new source port) for each test, closed afterwards.
* ``new_client``: a factory for further clients in the same test.
* ``udp_only``: skips a test of the UDP message layer (types, MIDs, empty ACK/RST) on a transport
  without message types (RFC 8323), where the checker skips such checks too.

client.py is loaded under the unique module name ``conformance_client``, so it cannot collide
with another ``client`` module on ``sys.path`` (the test directories are not packages).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_client_module() -> ModuleType:
    name = "conformance_client"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("client.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cc = _load_client_module()

LOOPBACK = "127.0.0.1"
NOTIFY_INTERVAL = 0.2  # seconds; passed to extserver as --notify-interval

#: Transport name -> factory(host, port) of a connected CoapTestClient.
TRANSPORTS: dict[str, Callable[..., Any]] = {
    "udp": cc.UdpClient,
    "dtls": cc.DtlsClient,
    "tcp": cc.TcpClient,
    "tls": cc.TlsClient,
}


@dataclass(frozen=True)
class PlugtestTarget:
    """The server under test and the timing the observe tests derive from it."""

    server: Any  # tests/conftest.py ExtServer
    host: str
    port: int
    notify_interval: float

    @property
    def quiet(self) -> float:
        """How long "no (further) notification" is awaited: 5 notify intervals, at least 1 s."""
        return max(1.0, 5 * self.notify_interval)

    def notification_timeout(self, max_age: int | None) -> float:
        """The checker waits Max-Age + 1 s per notification (Max-Age defaults to 60 s).

        The notify interval here is 0.2 s, so the wait is capped at the 6 s the checker uses for
        the reference's Max-Age 5; a missing Max-Age must not stretch the suite to minutes.
        """
        return min((60 if max_age is None else max_age) + 1.0, 6.0)


@pytest.fixture(scope="session")
def target(start_extserver: Callable[..., Any]) -> PlugtestTarget:
    interval_ms = round(NOTIFY_INTERVAL * 1000)
    server = start_extserver("--notify-interval", f"{interval_ms}ms")
    return PlugtestTarget(server, LOOPBACK, server.plugtest_port, NOTIFY_INTERVAL)


@pytest.fixture(scope="session", params=sorted(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_client(target: PlugtestTarget, transport: str) -> Iterator[Callable[..., Any]]:
    """Factory: ``new_client()`` (keyword arguments go to the client) -> a connected client."""
    clients: list[Any] = []

    def make(**kwargs: Any) -> Any:
        client = TRANSPORTS[transport](target.host, target.port, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(new_client: Callable[..., Any]) -> Any:
    """A fresh ``CoapTestClient`` (client.py) talking to the plugtest endpoint."""
    return new_client()


@pytest.fixture
def udp_only(client: Any) -> None:
    if not client.has_message_types:
        pytest.skip(f"UDP message-layer check; {client.transport} has no message types")
