"""An in-process server on a loopback port, run by its own event loop in a thread, so that
tests can talk to it with plain blocking sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from extplugtest.coap._codec import Message, parse
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.resource import Resource
from extplugtest.coap.transport_udp import UdpServerTransport
from extplugtest.dtls import handshake_client
from extplugtest.dtls.messages import ClientHello, Extension


class TransportThread:
    """*transport* (anything with open(loop), local_address and close()) served by its own
    uvloop in a daemon thread."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.loop = uvloop.new_event_loop()
        self.transport.open(self.loop)
        self.address = self.transport.local_address
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run *function* on the server's loop and return its result."""
        future = asyncio.run_coroutine_threadsafe(_call(function, *args), self.loop)
        return future.result(timeout=5)

    def stop(self) -> None:
        self.call(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class ServerThread(TransportThread):
    """A CoAP server of *root* on plain UDP."""

    def __init__(self, root: Resource, **endpoint_options: Any) -> None:
        self.root = root
        dedup = endpoint_options.pop("dedup", DeduplicationCache(max_peers=1000))
        fast = endpoint_options.pop("fast", None)
        self.endpoint = CoapEndpoint(root, **endpoint_options)
        super().__init__(
            UdpServerTransport(self.endpoint, ("127.0.0.1", 0), dedup=dedup, fast=fast)
        )


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)


class Client:
    """A blocking UDP client socket aimed at one server."""

    def __init__(self, address: tuple) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)

    def send(self, data: bytes | Message) -> None:
        if isinstance(data, Message):
            data = data.to_bytes()
        self.sock.sendto(data, self.address)

    def receive_raw(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            return None

    def receive(self, timeout: float = 2.0) -> Message | None:
        raw = self.receive_raw(timeout)
        return None if raw is None else parse(raw)

    def exchange(self, data: bytes | Message, timeout: float = 2.0) -> Message | None:
        self.send(data)
        return self.receive(timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., ServerThread]]:
    servers: list[ServerThread] = []

    def start(root: Resource, **options: Any) -> ServerThread:
        server = ServerThread(root, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], TransportThread]]:
    """Factory: ``serve(transport)`` opens any server transport in a loop thread (stopped
    after the test)."""
    threads: list[TransportThread] = []

    def start(transport: Any) -> TransportThread:
        thread = TransportThread(transport)
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[[tuple], Client]]:
    clients: list[Client] = []

    def create(address: tuple) -> Client:
        client = Client(address)
        clients.append(client)
        return client

    yield create
    for client in clients:
        client.close()


@pytest.fixture
def offer(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``offer(*extensions)``: our client's ClientHellos carry these extensions as well."""

    def add(*extra: Extension) -> None:
        original = ClientHello

        def hello(*args, extensions=(), **options):
            return original(*args, extensions=(*extensions, *extra), **options)

        monkeypatch.setattr(handshake_client, "ClientHello", hello)

    return add
