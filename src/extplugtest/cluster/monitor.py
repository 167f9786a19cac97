"""``--k8s-monitor``: plain-HTTP liveness and readiness endpoints (inventory §5.10).

Any method on ``/alive`` answers ``200 OK`` (``503 STOPPED`` once the server was told to stop,
e.g. after a graceful handover), ``/ready`` answers ``200 OK`` when every readiness check
passes (servers running, cluster ready, restore done), otherwise ``503 DOWN``. One request
per connection; requests are bounded in size, header count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

__all__ = ["MonitorService"]

log = logging.getLogger(__name__)

MAX_LINE = 8192
MAX_HEADERS = 100
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 64  # probes are few; a flood must not pile up handlers


class MonitorService:
    """*ready_checks*: callables that must all return True for ``/ready``."""

    def __init__(self, ready_checks: Iterable[Callable[[], bool]] = ()) -> None:
        self.ready_checks = list(ready_checks)
        self.alive = True
        self.requests = 0
        self.rejected = 0
        self._connections = 0
        self._server: asyncio.Server | None = None

    def is_ready(self) -> bool:
        try:
            return all(check() for check in self.ready_checks)
        except Exception:
            log.exception("readiness check failed")
            return False

    async def start(self, host: str | None, port: int) -> asyncio.Server:
        """Listen on *host* (None or "": all addresses) and *port* (0: any)."""
        self._server = await asyncio.start_server(self._handle, host or None, port, limit=MAX_LINE)
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def answer(self, path: str) -> tuple[int, str]:
        """(status, body) for a request path."""
        path = path.split("?", 1)[0]
        if path == "/alive":
            return (200, "OK\n") if self.alive else (503, "STOPPED\n")
        if path == "/ready":
            return (200, "OK\n") if self.alive and self.is_ready() else (503, "DOWN\n")
        return 404, "NOT FOUND\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            self.rejected += 1
            writer.close()
            return
        self._connections += 1
        try:
            status, body = await asyncio.wait_for(self._read_request(reader), REQUEST_TIMEOUT)
            self.requests += 1
        except (
            asyncio.TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            status, body = 400, "BAD REQUEST\n"
        try:
            reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
            payload = body.encode()
            writer.write(
                f"HTTP/1.1 {status} {reason[status]}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._connections -= 1
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[int, str]:
        request_line = await reader.readuntil(b"\n")
        if len(request_line) > MAX_LINE:
            raise ValueError("request line too long")
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("bad request line")
        for _ in range(MAX_HEADERS):
            line = await reader.readuntil(b"\n")
            if line in (b"\r\n", b"\n"):
                return self.answer(parts[1])
        raise ValueError("too many headers")
