"""``--k8s-monitor``: plain-HTTP liveness and readiness endpoints (inventory §5.10), and the
small HTTP/1.1 request reader it shares with the HTTPS ``/restore`` server
(server/handover.py).

Any method on ``/alive`` answers ``200 OK`` (``503 STOPPED`` once the server was told to stop,
e.g. after a graceful handover), ``/ready`` answers ``200 OK`` when every readiness check
passes (servers running, cluster ready, restore done), otherwise ``503 DOWN``. One request
per connection; requests are bounded in size, header count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

__all__ = [
    "BadRequest",
    "HttpRequest",
    "MonitorService",
    "parse_header_line",
    "parse_request_line",
    "read_request",
    "response_head",
]

log = logging.getLogger(__name__)

MAX_LINE = 8192
MAX_HEADERS = 100
REQUEST_TIMEOUT = 5.0
MAX_CONNECTIONS = 64  # probes are few; a flood must not pile up handlers

# -- the shared request reader -----------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_VERSION = re.compile(r"HTTP/[0-9]\.[0-9]")
_TARGET = re.compile(r"[\x21-\x7e]+")  # visible ASCII, no spaces or controls


class BadRequest(ValueError):
    """A request that is malformed, too large or cut short: answered 400, if at all."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str  # as sent: origin form, "/path?query"
    version: str
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, value), in order

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header *name* (case-insensitive), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    return line[:-1] if line.endswith(b"\n") else line


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """(method, target, version) of ``METHOD SP target SP HTTP/x.y`` (line end optional);
    raises BadRequest for anything else."""
    parts = _strip_eol(line).decode("latin-1").split(" ")
    if len(parts) != 3:
        raise BadRequest("bad request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest("bad method")
    if not _TARGET.fullmatch(target):
        raise BadRequest("bad request target")
    if not _VERSION.fullmatch(version):
        raise BadRequest("bad HTTP version")
    return method, target, version


def parse_header_line(line: bytes) -> tuple[str, str]:
    """(lower-case name, value without surrounding blanks) of ``Name: value``; raises
    BadRequest for a line without a token name (obsolete line folding included)."""
    name, sep, value = _strip_eol(line).decode("latin-1").partition(":")
    if not sep or not _TOKEN.fullmatch(name):
        raise BadRequest("bad header line")
    return name.lower(), value.strip(" \t")


async def _read_line(reader: asyncio.StreamReader, max_line: int) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise BadRequest("request cut short") from None
    except asyncio.LimitOverrunError:
        raise BadRequest("line too long") from None
    if len(line) > max_line:
        raise BadRequest("line too long")
    return line


async def read_request(
    reader: asyncio.StreamReader, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS
) -> HttpRequest:
    """The request line and headers of one request (a body is not read). At most *max_line*
    bytes per line (the reader's own limit should not be larger: it buffers up to it) and
    *max_headers* headers. Raises BadRequest for anything malformed, too large or cut short
    (ConnectionError from the transport passes); bound the time with ``asyncio.wait_for``."""
    method, target, version = parse_request_line(await _read_line(reader, max_line))
    headers: list[tuple[str, str]] = []
    for _ in range(max_headers + 1):
        line = await _read_line(reader, max_line)
        if line in (b"\r\n", b"\n"):
            return HttpRequest(method, target, version, tuple(headers))
        if len(headers) == max_headers:
            break
        headers.append(parse_header_line(line))
    raise BadRequest("too many headers")


def response_head(
    status: int, length: int, content_type: str = "text/plain", extra: Iterable[str] = ()
) -> bytes:
    """The status line and headers of a ``Connection: close`` answer with a body of *length*
    bytes."""
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        *extra,
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- the monitor -------------------------------------------------------------------------------


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
            request = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT)
            status, body = self.answer(request.path)
            self.requests += 1
        except (asyncio.TimeoutError, BadRequest, ConnectionError):
            status, body = 400, "BAD REQUEST\n"
        try:
            payload = body.encode()
            writer.write(response_head(status, len(payload)) + payload)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._connections -= 1
            writer.close()
