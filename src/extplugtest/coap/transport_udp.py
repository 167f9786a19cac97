"""UDP transport: a bound socket driven by the event loop through the C engine."""

from __future__ import annotations

import asyncio
import socket
import time

from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.coap._udp import FastResource, UdpEngine
from extplugtest.coap.endpoint import CoapEndpoint
from extplugtest.coap.timer import PeriodicTimer

DEFAULT_BUFFER_SIZE = 4 * 1024 * 1024
SWEEP_INTERVAL = 10.0  # Californium's MARK_AND_SWEEP_INTERVAL


def bind_udp_socket(
    address: tuple, receive_buffer: int, send_buffer: int, reuse_port: bool = False
) -> socket.socket:
    """A non-blocking UDP socket bound to *address* (IPv6 sockets IPv6 only), with large
    buffers: with the kernel default, hundreds of clients starve (peers.md §5)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class UdpServerTransport:
    """Binds *address*, feeds datagrams to *endpoint* and serves until ``close()``."""

    def __init__(
        self,
        endpoint: CoapEndpoint,
        address: tuple,
        *,
        dedup: DeduplicationCache | None = None,
        fast: FastResource | None = None,
        receive_buffer_size: int = DEFAULT_BUFFER_SIZE,
        send_buffer_size: int = DEFAULT_BUFFER_SIZE,
        reuse_port: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.requested_address = address
        self.dedup = dedup
        self.fast = fast
        self.buffer_sizes_requested = (receive_buffer_size, send_buffer_size)
        self.reuse_port = reuse_port
        self.sock: socket.socket | None = None
        self.engine: UdpEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper = PeriodicTimer(SWEEP_INTERVAL, self._sweep)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        receive, send = self.buffer_sizes_requested
        sock = bind_udp_socket(self.requested_address, receive, send, self.reuse_port)
        family = sock.family
        self.sock = sock
        self.engine = UdpEngine(
            sock.fileno(),
            family,
            self.endpoint,
            self.dedup,
            self.fast,
            self.endpoint.max_message_size,  # larger answers leave the fast path: block-wise
        )
        self.endpoint.attach(self.engine, sock.getsockname())
        self._loop = loop
        loop.add_reader(sock.fileno(), self.engine.on_readable)
        if self.dedup is not None:
            self._sweeper.start(loop)

    @property
    def local_address(self) -> tuple:
        assert self.sock is not None
        return self.sock.getsockname()

    @property
    def buffer_sizes(self) -> tuple[int, int]:
        """The kernel's SO_RCVBUF and SO_SNDBUF (it doubles what was asked, up to rmem_max)."""
        assert self.sock is not None
        return (
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        )

    def _sweep(self) -> None:
        assert self.dedup is not None
        self.dedup.sweep(time.monotonic())  # the engine stamps with CLOCK_MONOTONIC too

    def close(self) -> None:
        self._sweeper.stop()
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.endpoint.close()
            self.sock.close()
            self.sock = None
