"""``extclient benchmark``: Californium's BenchmarkClient for CoAP over UDP, DTLS, TCP and TLS.

Many emulated clients, each with its own UDP socket (coap, coaps) or TCP connection (coap+tcp,
coaps+tcp, RFC 8323) and up to ``--nstart`` requests outstanding (closed loop), against one URI. The
generator core (``_loadgen``) runs in a worker thread without the GIL; this module parses the
command line, opens the sockets, prints Californium's progress lines every 10 s and the final
summary, and optionally writes the results as JSON (for ``bench/``; with one entry per progress
interval) and plots them (``--plot``, needs matplotlib).

Modes, as Californium's: requests (POST by default; ``--blocksize`` for block-wise), observe
(``--notifies``: GET with Observe, counting notifications, ``--reregister``/``--register``)
and reverse (``--reverse``: the clients serve ``feed-CON``/``feed-NON`` for the server's
/reverse-request and /reverse-observe). Without ``--no-stop`` a failed CON request or an error
response ends its client; with it, over coaps, a failed CON request is followed by a new full
handshake of its client (the server may have lost the session: a restarted node), as
Californium forces one. Failed requests print Californium's per-client lines (``client-N:
Error after N CON-requests. timeout (Ns)``, ``... failed after ...!``). A run without
progress for a progress interval (+ ``--interval``, over coaps at least 120 s) ends as stale;
a failed first request ends the benchmark (``Request <uri> POST failed, exit Benchmark.``).

Differences from Californium, on purpose:

* ``--duration``/``--warmup`` (seconds) end a run by time; statistics cover the time after the
  warm-up. Without ``--requests`` a run with ``--duration`` is limited by time only.
* ``--start-at`` (our extension): the requests begin at a given wall-clock time, after the
  clients connected, so that several generators (one per server measured side by side) share
  one measurement window.
* ``--timeout`` (response timeout for NON requests and after an empty ACK) defaults to 10 s,
  not Californium's 30 s BENCHMARK_RESPONSE_TIMEOUT / 145 s NON_LIFETIME: in a short benchmark
  run a lost NON request would otherwise park its client for the rest of the run.
* The first request (Californium's test()) is not counted in the run's figures.
* The Californium summary lines (``connects``, ``success-responses``, ...) are whole ms as
  Californium prints them; an extra ``latency`` line has microsecond resolution. Error
  responses get their own statistic (Californium mixes them into ``success-responses``).
* Decimal numbers use ``.`` (Californium uses the JVM's locale).
* ``--source-addresses CIDR`` (coap or coaps to an IPv4 server): instead of a socket per
  client, client i sends from the i-th host address of CIDR, all on one socket and port,
  batched with sendmmsg/recvmmsg; the server still sees one address per client. The way to
  drive thousands of clients from one core (on loopback any 127.x network; elsewhere the
  addresses must be configured on the host). With coaps each client's handshake runs on a
  socket of its own bound to its address and the shared port, closed after the handshakes;
  ``--handshakes-full/-close`` need a socket per client.
* coap+tcp: the connections are opened before the run (non-blocking, TCP_NODELAY); each client
  sends its CSM first, then its requests. ``--con``/``--non`` mean nothing there, nor does
  ``--ack-timeout`` (no retransmission); ``--timeout`` applies. A connection the server
  closes counts its outstanding requests as transmission errors and ends its client (there is
  no reconnect, also with ``--no-stop``). Reverse mode and ``--register`` are UDP only.
* coaps+tcp (port 5684): as coap+tcp over TLS 1.2/1.3 with ALPN "coap" (OpenSSL in the
  generator's loop); every client's TLS handshake runs before the run. The server's
  certificate must chain to the demo CA (or ``--trust-store``) and fit the URI's host, unless
  ``--trust-all``; the client certificate (the demo one, or ``-c``) goes along with ``-a X509``
  (or ``-c``), for servers that ask for one.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import json
import os
import random
import resource
import select
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from extplugtest.tools import _loadgen, benchmark_dtls

PROGRESS_INTERVAL = 10.0  # seconds between progress lines (Californium's DEFAULT_TIMEOUT_SECONDS)
DTLS_STALE_S = 120.0  # coaps: the --interval part of the stale check is at least this long
ERROR_LINES_PER_PERIOD = 3  # Californium's errorFilter: 3 "Error after" lines per 10 s
DEFAULT_REQUESTS = 100  # per client, when neither --requests nor --duration is given
MAX_CLIENTS = _loadgen.MAX_CLIENTS
MAX_NSTART = _loadgen.MAX_NSTART
MAX_REQUESTS = 1_000_000_000  # per client
MAX_NOTIFIES = 10_000_000  # per client (the server's limit for reverse observes)
MAX_DURATION = 3600.0  # seconds
MAX_WARMUP = 600.0
MAX_START_DELAY = 600.0  # --start-at: at most this far ahead
MAX_TIMEOUT_MS = 600_000
MAX_INTERVAL_MS = 3_600_000
MAX_PAYLOAD = 8192  # Californium's MAX_RESOURCE_BODY_SIZE; larger ones go block-wise (Block1)
BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)
JITTER_MS = _loadgen.JITTER_MS  # random part of every pause between requests
SOCKET_BUFFER = 64 * 1024  # per client socket; a few requests outstanding need far less
DEFAULT_FEED_INTERVAL_MS = 100  # Californium's Feed.DEFAULT_FEED_INTERVAL_IN_MILLIS
PLOT_HINT = "extclient: --plot needs matplotlib: pip install 'extplugtest[plot]'"

METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4}
OPTION_URI_HOST = 3
OPTION_URI_PATH = 11
OPTION_CONTENT_FORMAT = 12
OPTION_URI_QUERY = 15
OPTION_ACCEPT = 17
TEXT_PLAIN = 0
TCP_SCHEME = "coap+tcp"
TLS_SCHEME = "coaps+tcp"
STREAM_SCHEMES = (TCP_SCHEME, TLS_SCHEME)
CONNECT_BATCH = 256  # coap+tcp: connects under way at once
CONNECT_TIMEOUT = 10.0  # seconds for one batch of connects


class BenchmarkError(Exception):
    """A failure reported as one line on stderr; *exit_code* 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Target:
    uri: str  # normalised, as printed
    host: str
    port: int
    options: list[tuple[int, bytes]] = field(default_factory=list)
    scheme: str = "coap"


def parse_uri(text: str) -> Target:
    """Split a coap:// or coaps:// URI into host, port and Uri-* options (RFC 7252 §6.4)."""
    if "://" not in text:
        text = "coap://" + text  # Californium's default scheme
    if text.endswith("/") and not text.endswith("://"):
        text = text[:-1]  # as Californium
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise BenchmarkError(f"invalid URI '{text}': {exc}", 2) from None
    scheme = parts.scheme.lower()
    if scheme not in ("coap", "coaps", *STREAM_SCHEMES):
        raise BenchmarkError(
            f"'{text}' is not a coap://, coaps:// or coap+tcp:// URI (nor coaps+tcp://)", 2
        )
    if not parts.hostname:
        raise BenchmarkError(f"URI '{text}' has no host", 2)
    if parts.fragment:
        raise BenchmarkError("a CoAP URI must not have a fragment", 2)
    options: list[tuple[int, bytes]] = []
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        # A host name goes into Uri-Host (virtual hosting); an IP literal does not.
        options.append((OPTION_URI_HOST, parts.hostname.encode("idna")))
    path = parts.path.lstrip("/")
    if path:
        options += [(OPTION_URI_PATH, unquote_to_bytes(s)) for s in path.split("/")]
    if parts.query:
        options += [(OPTION_URI_QUERY, unquote_to_bytes(q)) for q in parts.query.split("&")]
    for number, value in options:
        if len(value) > 255:
            raise BenchmarkError(f"URI component longer than 255 bytes (option {number})", 2)
    default_port = 5684 if scheme in ("coaps", TLS_SCHEME) else 5683
    return Target(text, parts.hostname, port if port is not None else default_port, options,
                  scheme)  # fmt: skip


def resolve(target: Target) -> tuple[int, tuple[Any, ...]]:
    """(address family, socket address) of the target."""
    kind = socket.SOCK_STREAM if target.scheme in STREAM_SCHEMES else socket.SOCK_DGRAM
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=kind)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise BenchmarkError(f"cannot resolve host '{target.host}': {reason}") from None
    family, _, _, _, address = infos[0]
    return family, address


def raise_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchmarkError(
                f"{needed} open files needed, but the limit is {hard} (raise it with ulimit -n)"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def open_clients(
    count: int, family: int, address: tuple[Any, ...], local_port: int | None
) -> list[socket.socket]:
    """One connected, non-blocking UDP socket per client; the first may bind *local_port*."""
    raise_file_limit(count + 16)  # stdio, epoll and a few of Python's own
    sockets: list[socket.socket] = []
    try:
        for index in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            if index == 0 and local_port is not None:
                try:
                    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise BenchmarkError(f"local port {local_port} is already in use") from None
                    raise BenchmarkError(
                        f"cannot bind local port {local_port}: {exc.strerror}"
                    ) from None
            sock.connect(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise BenchmarkError(f"cannot open {count} sockets: too many open files") from None
        raise BenchmarkError(
            f"cannot reach {address[0]} port {address[1]}: {exc.strerror}"
        ) from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def host_count(network: ipaddress.IPv4Network) -> int:
    """Host addresses of *network*: without network and broadcast address from /30 on."""
    return network.num_addresses - 2 if network.prefixlen < 31 else network.num_addresses


def first_host(network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return network.network_address + (1 if network.prefixlen < 31 else 0)


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python has the name from 3.12 on
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)  # Linux values, as IP_PKTINFO
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
SOURCE_BUFFER_PER_CLIENT = 4096  # receive buffer of the shared socket, per request in flight
MAX_SOURCE_BUFFER = 64 << 20


def open_source_socket(
    network: ipaddress.IPv4Network,
    count: int,
    family: int,
    address: tuple[Any, ...],
    local_port: int | None,
    nstart: int,
) -> tuple[socket.socket, str]:
    """--source-addresses: one unconnected, non-blocking UDP socket with IP_PKTINFO for all
    *count* clients, and the first client's address. Checks that the first and the last
    address are local (a datagram from any other would be refused by the kernel)."""
    if family != socket.AF_INET:
        raise BenchmarkError("--source-addresses needs an IPv4 server address", 2)
    first = first_host(network)
    for probe_address in (first, first + (count - 1)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
            try:
                probe_socket.bind((str(probe_address), 0))
            except OSError:
                raise BenchmarkError(
                    f"{probe_address} (of --source-addresses {network}) is not an address of "
                    "this host: use 127.0.0.0/8 on loopback, or add the addresses "
                    "(ip address add)",
                    2,
                ) from None
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        # coaps: each client's handshake runs on a socket of its own bound to its address and
        # this port (the more specific binding gets its datagrams), see handshake_sockets
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # DF without path-MTU state: an unconnected socket then needs no per-destination IP
        # ID (RFC 6864 §4.1), which is a measurable part of the kernel's cost per datagram.
        # CoAP messages are meant to fit one datagram anyway (RFC 7252 §4.6).
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        # Every client's responses may wait here at once; SO_RCVBUFFORCE may exceed rmem_max
        # (root only), else the kernel caps SO_RCVBUF at rmem_max.
        size = min(MAX_SOURCE_BUFFER, max(SOCKET_BUFFER, count * nstart * SOURCE_BUFFER_PER_CLIENT))
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
        try:
            sock.bind(("0.0.0.0", local_port or 0))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BenchmarkError(f"local port {local_port} is already in use") from None
            raise BenchmarkError(f"cannot bind local port {local_port}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock, str(first)


def handshake_sockets(
    first: str, count: int, port: int, address: tuple[Any, ...]
) -> list[socket.socket]:
    """--source-addresses with coaps: for the handshakes, one connected, non-blocking socket
    per client bound to the client's address and the shared socket's *port*; closed after
    them, when the shared socket takes over the client's datagrams."""
    raise_file_limit(count + 32)
    sockets: list[socket.socket] = []
    try:
        for index in range(count):
            sockets.append(handshake_socket(first, index, port, address))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise BenchmarkError(f"cannot open the handshake sockets: {exc.strerror}") from None
    return sockets


def handshake_socket(first: str, index: int, port: int, address: tuple[Any, ...]) -> socket.socket:
    """--source-addresses with coaps: client *index*'s own socket for a handshake (OSError)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(ipaddress.IPv4Address(first) + index), port))
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def open_tcp_clients(
    count: int,
    family: int,
    address: tuple[Any, ...],
    local_port: int | None,
    timeout: float = CONNECT_TIMEOUT,
) -> list[socket.socket]:
    """coap+tcp: one connected, non-blocking TCP socket (TCP_NODELAY) per client; the first
    may bind *local_port*. Connects run CONNECT_BATCH at a time, each batch bounded by
    *timeout* seconds."""
    raise_file_limit(count + 16)
    where = f"{address[0]} port {address[1]}"
    sockets: list[socket.socket] = []
    try:
        for start in range(0, count, CONNECT_BATCH):
            batch: dict[int, socket.socket] = {}
            for index in range(start, min(start + CONNECT_BATCH, count)):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if index == 0 and local_port is not None:
                    bind_local(sock, family, local_port)
                error = sock.connect_ex(address)
                if error not in (0, errno.EINPROGRESS):
                    raise OSError(error, os.strerror(error))
                batch[sock.fileno()] = sock
            wait_connected(batch, timeout, where)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise BenchmarkError(f"cannot open {count} sockets: too many open files") from None
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ECONNREFUSED:
            reason += " (no CoAP-over-TCP server on that port?)"
        raise BenchmarkError(f"cannot connect to {where}: {reason}") from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bind_local(sock: socket.socket, family: int, local_port: int) -> None:
    try:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BenchmarkError(f"local port {local_port} is already in use") from None
        raise BenchmarkError(f"cannot bind local port {local_port}: {exc.strerror}") from None


def wait_connected(batch: dict[int, socket.socket], timeout: float, where: str) -> None:
    """Wait until every non-blocking connect of *batch* has completed (OSError if one failed)."""
    poller = select.poll()
    for fd in batch:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    left = set(batch)
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OSError(errno.ETIMEDOUT, f"{len(left)} connects timed out")
        for fd, _events in poller.poll(remaining * 1000):
            error = batch[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error))
            poller.unregister(fd)
            left.discard(fd)


class Runner:
    """Starts a generator run and waits for it in slices, so that the main thread can print
    progress lines; Ctrl-C (and SIGTERM, see client.py) stops the run."""

    def __init__(self, generator: _loadgen.LoadGenerator) -> None:
        self.generator = generator
        self.interrupted = False

    def start(self, **limits: Any) -> None:
        self.generator.start(**limits)

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* s; True once the run has ended."""
        try:
            return self._join(timeout)
        except KeyboardInterrupt:
            self.interrupted = True
            self.close()
            return True

    def close(self) -> None:
        """Stop the run and wait for its end (before the sockets are closed)."""
        self.generator.stop()
        self._join(None)

    def _join(self, timeout: float | None) -> bool:
        try:
            return self.generator.join(timeout)
        except OSError as exc:
            raise BenchmarkError(f"load generator failed: {exc}") from None


# -- progress ----------------------------------------------------------------------------------


def round_div(count: float, divisor: float) -> int:
    """Californium's roundDiv: the quotient rounded half up."""
    return int(count / divisor + 0.5) if divisor > 0 else 0


def requests_of(totals: dict[str, int]) -> int:
    """Californium's "requests": taken from the budget, failed ones given back not counted."""
    return totals["sent"] - totals["retried"]


def responses_of(totals: dict[str, int]) -> int:
    return totals["success"] + totals["error_responses"]


def format_share(count: int, label: str, base: int, responses: int) -> str:
    """Californium's formatRetransmissions/formatTransmissionErrors."""
    if base <= 0:
        return f"{count} {label}"
    amend = ", no responses received!" if responses == 0 else ""
    return f"{count} {label} ({count * 100 / base:4.2f}%{amend})"


def progress_line(index: int, last: dict[str, int], now: dict[str, int], interval: float) -> str:
    """One of Californium's 10-second progress lines (BenchmarkClient, '.' as decimal point)."""
    requests = requests_of(now)
    new_requests = requests - requests_of(last)
    responses = responses_of(now) - responses_of(last)
    transmissions = now["transmissions"] - last["transmissions"]
    retransmissions = now["retransmissions"] - last["retransmissions"]
    errors = now["transmission_errors"] - last["transmission_errors"]
    line = f"[{index:04d}]: {requests} requests ({round_div(responses, interval)} reqs/s"
    line += ", " + format_share(retransmissions, "retransmissions", transmissions, responses)
    line += ", " + format_share(errors, "transmission errors", new_requests, responses)
    if now["unavailable"]:
        unavailable = now["unavailable"] - last["unavailable"]
        if responses > 0:
            line += f", {unavailable} unavailables ({unavailable * 100 / responses:4.2f}%)"
        else:
            line += f", {unavailable} unavailables (no response-messages received!)"
    line += f", {now['active']} clients"
    if now["pending"]:
        line += f", {now['pending']} pending"
    return line + ")"


def stale_line(index: int, now: dict[str, int]) -> str:
    return (
        f"[{index:04d}]: {requests_of(now)} requests, stale "
        f"({now['active']} clients, {now['pending']} pending)"
    )


def notifies_line(index: int, last: dict[str, int], now: dict[str, int], interval: float) -> str:
    """Californium's progress line while the observe clients count notifications."""
    rate = round_div(now["notifies"] - last["notifies"], interval)
    return (
        f"[{index:04d}]: {now['notifies']} notifies, {requests_of(now)} request "
        f"({rate} notifies/s, {now['active']} clients)"
    )


def notifies_stale_line(index: int, now: dict[str, int]) -> str:
    return (
        f"[{index:04d}]: {now['notifies']} notifies, {requests_of(now)} request, stale "
        f"({now['active']} clients)"
    )


@dataclass
class Watch:
    """What the main thread saw while the run went on."""

    lines: int = 0
    stale: bool = False
    stale_s: float = 0.0  # the silent time before a stale end, taken off the run's time
    series: list[dict[str, Any]] = field(default_factory=list)


def interval_figures(
    start: float, stamp: float, length: float, last: dict[str, int], now: dict[str, int]
) -> dict[str, Any]:
    """One entry of the JSON series: the figures of one progress interval."""
    responses = responses_of(now) - responses_of(last)
    return {
        "t_s": round(stamp - start, 3),
        "timestamp": round(time.time() - (time.monotonic() - stamp), 3),
        "interval_s": round(length, 3),
        "requests": requests_of(now),
        "responses": responses,
        "req_per_s": responses / length if length > 0 else 0.0,
        "retransmissions": now["retransmissions"] - last["retransmissions"],
        "transmission_errors": now["transmission_errors"] - last["transmission_errors"],
        "notifies": now["notifies"] - last["notifies"],
        "reverse_responses": now["reverse_responses"] - last["reverse_responses"],
        "clients": now["active"],
    }


def reverse_line(
    index: int, last: dict[str, int], now: dict[str, int], interval: float, clients: int
) -> str:
    """Californium's progress line while the server sends its requests (reverse mode)."""
    count = now["reverse_responses"]
    rate = round_div(count - last["reverse_responses"], interval)
    if now["feed_registrations"]:
        return (
            f"[{index:04d}]: {count} notifies ({rate} notifies/s, {clients} clients, "
            f"{now['observers']} observes)"
        )
    return (
        f"[{index:04d}]: {count} reverse-responses ({rate} reverse-responses/s, {clients} clients)"
    )


def reverse_stale_line(index: int, now: dict[str, int], clients: int) -> str:
    count = now["reverse_responses"]
    if now["feed_registrations"]:
        return (
            f"[{index:04d}]: {count} notifies, stale ({clients} clients, "
            f"{now['observers']} observes)"
        )
    return f"[{index:04d}]: {count} reverse-responses, stale ({clients} clients)"


@dataclass
class Phases:
    """What the progress lines report: the requests, then (observe mode) the notifications
    received, or (reverse mode) the answers and notifications sent."""

    observe: bool = False
    reverse: bool = False
    interval_ms: int = 0  # --interval
    max_ms: int = 0  # reverse mode: --max
    clients: int = 0
    dtls: bool = False  # coaps: the stale check waits at least DTLS_STALE_S
    request_type: str = "CON"  # of the per-client error lines


def failure_reason(code: int, err: int, seconds: int) -> str:
    """Californium's reason of a failed request: the send error, ``timeout (Ns)`` or
    ``rejected``."""
    if code == -1:
        return "rejected"
    if code == -3:
        return os.strerror(err) if err else "connection closed"
    return f"timeout ({seconds}s)"


class ErrorLines:
    """Californium's per-client lines for failed requests: ``client-N: failed after N
    CON-requests! <reason>`` when the client stops, every one; ``client-N: Error after N
    CON-requests. <reason>`` when it goes on, through its FilteredLogger: at most 3 in a
    10 s period, the first one of a later period says how many there were in all."""

    def __init__(
        self,
        request_type: str = "CON",
        max_per_period: int = ERROR_LINES_PER_PERIOD,
        period: float = PROGRESS_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_type = request_type
        self.max_per_period = max_per_period
        self.period = period
        self.clock = clock
        self.counter = 0
        self.start = clock()
        self.dropped = 0

    def lines(self, events: list[tuple[int, int, int, int, int, bool]], dropped: int) -> list[str]:
        """The lines of *events* (``take_errors()``); *dropped* (its running count) are only
        counted."""
        if dropped > self.dropped:  # lost in the queue (before these): counted as filtered
            self.counter += dropped - self.dropped
            self.dropped = dropped
        out = []
        for client, count, code, err, seconds, failed in events:
            what = f"client-{client}: "
            reason = failure_reason(code, err, seconds)
            if failed:
                out.append(f"{what}failed after {count} {self.request_type}-requests! {reason}")
                continue
            line = self._filter(f"{what}Error after {count} {self.request_type}-requests. {reason}")
            if line is not None:
                out.append(line)
        return out

    def _filter(self, line: str) -> str | None:
        """FilteredLogger.log, as coded."""
        now = self.clock()
        show = self.counter < self.max_per_period
        if self.period + self.start - now > 0:
            self.counter += 1
        else:
            self.start = now
            if not show:
                line += f" ({self.counter} additional errors.)"
                show = True
            self.counter = 0
        return line if show else None


def watch(
    runner: Runner,
    progress_interval: float = PROGRESS_INTERVAL,
    phases: Phases | None = None,
) -> Watch:
    """Print a progress line every *progress_interval* s until the run ends; end it as stale
    when nothing came for *progress_interval* + --interval (Californium's stale check; for
    coaps the --interval part is at least DTLS_STALE_S, time for new handshakes). The
    clients' failed requests are printed as they come (Californium's per-client lines)."""
    phases = phases or Phases()
    seen = Watch()
    generator = runner.generator
    start = last_stamp = stale_since = time.monotonic()
    # the run's counters start at zero (it may have done a lot already)
    last = dict.fromkeys(generator.totals(), 0)
    next_line = start + progress_interval
    # Californium: the progress interval + --interval; + the pause's random part, which
    # matters with short progress intervals.
    pause = phases.interval_ms / 1000
    if phases.interval_ms:
        pause += JITTER_MS / 1000
    stale_after = progress_interval + (max(pause, DTLS_STALE_S) if phases.dtls else pause)
    errors = ErrorLines(phases.request_type)

    def report_errors() -> None:
        for line in errors.lines(*generator.take_errors()):
            _say(line)

    phase = "requests"  # then "notifies" (observe mode) or "reverse" (reverse mode)

    def clients(totals: dict[str, int]) -> int:
        return phases.clients - totals["stopped_clients"]

    def stale(totals: dict[str, int]) -> str:
        if phase == "notifies":
            return notifies_stale_line(seen.lines, totals)
        if phase == "reverse":
            return reverse_stale_line(seen.lines, totals, clients(totals))
        return stale_line(seen.lines, totals)

    # Short slices: a phase change is reported as soon as it happens.
    while not runner.wait(max(0.0, min(next_line - time.monotonic(), 0.1))):
        report_errors()
        now_stamp = time.monotonic()
        if phase == "requests":
            totals = generator.totals()
            if phases.observe and totals["pending"] == 0:
                phase = "notifies"
                _say("Observe-Requests sent.")
            elif phases.reverse and totals["active"] == 0:
                phase = "reverse"
                stale_since = now_stamp
                # Californium: max. interval + the progress interval, + one more for the start
                stale_after = progress_interval + max(phases.max_ms, 0) / 1000
                if not totals["reverse_responses"]:
                    stale_after += progress_interval
                _say("Requests sent.")
        if now_stamp < next_line:
            continue
        now = generator.totals()
        seen.series.append(interval_figures(start, now_stamp, now_stamp - last_stamp, last, now))
        progress = responses_of(now) - responses_of(last)
        progress += now["notifies"] - last["notifies"] if phase == "notifies" else 0
        progress += now["reverse_responses"] - last["reverse_responses"]
        if progress:
            stale_since = now_stamp
        seen.lines += 1
        if not progress and now_stamp - stale_since >= stale_after:
            seen.stale = True
            seen.stale_s = now_stamp - stale_since
            _say(stale(now))
            runner.close()
            break
        length = now_stamp - last_stamp
        if phase == "notifies":
            _say(notifies_line(seen.lines, last, now, length))
        elif phase == "reverse":
            _say(reverse_line(seen.lines, last, now, length, clients(now)))
        else:
            _say(progress_line(seen.lines, last, now, length))
        last, last_stamp = now, now_stamp
        next_line += progress_interval
    report_errors()
    end = time.monotonic()
    if not seen.stale and (end - last_stamp > 0.001 or not seen.series):
        # the last, partial interval (the only one of a run shorter than an interval)
        seen.series.append(interval_figures(start, end, end - last_stamp, last, generator.totals()))
    now = generator.totals()
    if not seen.stale and not runner.interrupted and now["active"] == 0 and now["stopped_clients"]:
        # Every client stopped after a failure before the work was done: Californium reports
        # that as stale (its watcher sees no clients left).
        seen.stale = True
        seen.lines += 1
        _say(stale(now))
    return seen


# -- summary -----------------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    """Californium's formatTime: ms up to 10 s, whole s above."""
    millis = int(seconds * 1000)
    return f"{int(seconds)} s" if millis > 10000 else f"{millis} ms"


def format_per_second(units: str, count: int, seconds: float) -> str:
    """Californium's formatPerSecond: ', N units/s', or nothing below 1 ms."""
    millis = int(seconds * 1000)
    return f", {round_div(count * 1000, millis)} {units}/s" if millis > 0 else ""


def created_line(clients: int, seconds: float) -> str:
    if clients == 1:
        return f"Benchmark client created. {format_time(seconds)}"
    return (
        f"Benchmark clients created. {format_time(seconds)}"
        f"{format_per_second('clients', clients - 1, seconds)}"
    )


def statistic_line(label: str, latency: dict[str, Any]) -> str:
    """Californium's TimeStatistic summary: whole ms (``sum.`` when the average is below 1 ms)."""
    if not latency["count"]:
        return f"{label:<18}: no values available!"
    count = latency["count"]
    total_ms = latency["sum"] // 1000
    average = total_ms / count
    mean = f"sum.: {total_ms} ms" if average < 1.0 else f"avg.: {average:.2f} ms"
    return (
        f"{label:<18}: #: {count}, {mean}, 95%: {latency['p95'] // 1000} ms, "
        f"99%: {latency['p99'] // 1000} ms, 99.9%: {latency['p99.9'] // 1000} ms, "
        f"max.: {latency['max'] // 1000} ms"
    )


def client_requests_lines(counts: list[int], overall: int) -> list[str]:
    """Californium's histogram of requests per client: ``%4d clients with %d[ to %d] requests.``,
    grouped by 10 requests (by overall / 50000 above 500000 requests)."""
    if len(counts) < 2:
        return []
    counts = sorted(counts)
    grouped = overall // 50000 if overall > 500000 else 10
    lines = []
    last = 0

    def group(index: int) -> str:
        line = f"{index - last:4d} clients with {counts[last]}"
        if counts[index - 1] != counts[last]:
            line += f" to {counts[index - 1]}"
        return line + " requests."

    for index in range(1, len(counts)):
        if counts[index] // grouped > counts[last] // grouped:
            lines.append(group(index))
            last = index
    lines.append(group(len(counts)))
    return lines


def reverse_summary_lines(result: dict[str, Any]) -> list[str]:
    """Californium's printResults for the reverse mode."""
    expected = result["reverse_expected"]
    # Californium counts down from the expected number: what came on top is not shown
    count = min(result["reverse_responses"], expected)
    duration = result["duration_s"]
    millis = round(duration * 1000)
    if result["feed_registrations"]:
        return [
            f"{count} notifies sent, {expected} expected, "
            f"{result['feed_registrations']} observe request",
            f"{count} notifies sent in {millis} ms{format_per_second('notifies', count, duration)}",
            f"{result['feed_failures']} sent notifies could not be completed",
        ]
    return [
        f"{count} reverse-responses sent, {expected} expected",
        f"{count} reverse-responses in {millis} ms"
        f"{format_per_second('reverse-responses', count, duration)}",
    ]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Californium's printResults, without the JVM's figures (cpu of the process instead)."""
    lines = []
    duration = result["duration_s"]
    lines.append(f"uptime: {round(result['uptime_s'] * 1000)} ms, {os.cpu_count() or 1} processors")
    cpu_ms = round(result["generator_cpu_s"] * 1000)
    per_processor = cpu_ms // (os.cpu_count() or 1)
    load = per_processor * 100 // max(1, round(duration * 1000))
    lines.append(f"cpu-time: {cpu_ms} ms (per-processor: {per_processor} ms, load: {load}%)")
    with contextlib.suppress(OSError):  # no load average on this system
        lines.append(f"average load: {os.getloadavg()[0]:.2f}")
    responses = result["responses"]
    if result["expected"] is not None:
        lines.append(f"{responses} requests sent, {result['expected']} expected")
    else:
        lines.append(f"{responses} requests sent")
    window = f" (after {result['warmup_s']:g} s warm-up)" if result["warmup_s"] else ""
    lines.append(
        f"{responses} requests in {round(duration * 1000)} ms"
        f"{format_per_second('reqs', responses, duration)}{window}"
    )
    if result["notifies_expected"]:
        notifies = result["notifies"]
        lines.append(f"{notifies} notifies received, {result['notifies_expected']} expected")
        lines.append(
            f"{notifies} notifies received in {round(duration * 1000)} ms"
            f"{format_per_second('notifies', notifies, duration)}"
        )
    if result["reverse_expected"]:
        lines += reverse_summary_lines(result)
    if result.get("connections_closed"):
        lines.append(f"{result['connections_closed']} connections closed by the server")
    if result.get("pings"):
        lines.append(f"{result['pings']} pings answered")
    if result.get("handshakes_during_run") or result.get("handshake_failures"):
        lines.append(f"{result['handshakes_during_run']} DTLS handshakes during the run"
                     + (f", {result['handshake_failures']} failed"
                        if result["handshake_failures"] else ""))  # fmt: skip
    if result["retransmissions"]:
        lines.append(format_share(result["retransmissions"], "retransmissions", responses, 1))
    if result["transmission_errors"]:
        lines.append(
            format_share(result["transmission_errors"], "transmission errors", responses, 1)
        )
    expected = result["expected"]
    if expected and responses < expected:
        state = "Interrupted" if result["interrupted"] else "Stale"
        lines.append(f"{state} at {responses} messages ({responses * 100 // expected}%)")
    if result["unavailable"]:
        unavailable = result["unavailable"]
        lines.append(format_share(unavailable, "unavailables", responses, 1))
        successful = responses - unavailable
        lines.append(
            f"{successful} successful requests in {round(duration * 1000)}ms"
            f"{format_per_second('reqs', successful, duration)}"
        )
    lines.append(statistic_line("connects", result["connect_latency_us"]))
    lines.append(statistic_line("success-responses", result["success_latency_us"]))
    lines.append(statistic_line("errors-responses", result["error_latency_us"]))
    lines.append(statistic_line("single-blocks", result["block_latency_us"]))
    latency = result["latency_ms"]
    if latency["count"]:
        lines.append(
            f"{'latency':<18}: #: {latency['count']}, avg.: {latency['avg']:.3f} ms, "
            f"50%: {latency['p50']:.3f} ms, 95%: {latency['p95']:.3f} ms, "
            f"99%: {latency['p99']:.3f} ms, 99.9%: {latency['p99.9']:.3f} ms, "
            f"max.: {latency['max']:.3f} ms"
        )
    return lines


def collect(
    generator: _loadgen.LoadGenerator,
    args: argparse.Namespace,
    target: Target,
    payload: bytes,
    expected: int | None,
    seen: Watch,
) -> dict[str, Any]:
    """The results of the measurement window, as written with --json."""
    window = generator.window()
    totals = generator.totals()
    responses = window["success"] + window["error_responses"]
    # Californium takes the silent time before a stale end off the run's time.
    duration = max(window["duration"] - seen.stale_s, 0.0)
    success = window["success_latency_us"]
    # The latency of every 2.xx response, the first of each client included.
    merged: dict[int, int] = {}
    for upper, count in [
        *generator.latency_histogram("success"),
        *generator.latency_histogram("connect"),
    ]:
        merged[upper] = merged.get(upper, 0) + count
    return {
        "uri": target.uri,
        "clients": args.clients,
        "method": args.method,
        "type": "TCP" if target.scheme in STREAM_SCHEMES else "NON" if args.non else "CON",
        "transport": {TCP_SCHEME: "tcp", TLS_SCHEME: "tls"}.get(target.scheme, "udp"),
        "source_addresses": args.source_addresses,
        "payload": len(payload),
        "nstart": args.nstart,
        "interval_ms": args.interval,
        "timeout_ms": args.timeout,
        "stop": args.stop,
        "blocksize": args.blocksize,
        "warmup_s": args.warmup,
        "duration_s": duration,
        "uptime_s": window["duration"],
        "stale": seen.stale,
        "requests_sent_total": totals["sent"],
        "expected": expected,
        "requests": window["sent"],
        "responses": responses,
        "success": window["success"],
        "error_responses": window["error_responses"],
        "unavailable": window["unavailable"],
        "transmissions": window["transmissions"],
        "retransmissions": window["retransmissions"],
        "blocks": window["blocks"],
        "transmission_errors": window["transmission_errors"],
        "timeouts": window["timeouts"],
        "rejects": window["rejects"],
        "retried": window["retried"],
        "stopped_clients": window["stopped_clients"],
        "socket_errors": window["socket_errors"],
        "connections_closed": window["connections_closed"],
        "pings": window["pings"],
        "releases": window["releases"],
        "aborts": window["aborts"],
        "protocol_errors": window["protocol_errors"],
        "notifies": window["notifies"],
        "notifies_expected": args.notifies * args.clients if args.notifies else 0,
        "reverse_responses": window["reverse_responses"],
        "reverse_expected": args.reverse * args.clients if args.reverse else 0,
        "feed_notifies": window["feed_notifies"],
        "feed_registrations": window["feed_registrations"],
        "feed_failures": window["feed_failures"],
        "feed_separate": window["feed_separate"],
        "feed_blocks": window["feed_blocks"],
        "feed_errors": window["feed_errors"],
        "req_per_s": responses / duration if duration > 0 else 0.0,
        "generator_cpu_s": window["cpu"],
        "connect_latency_us": window["connect_latency_us"],
        "success_latency_us": success,
        "error_latency_us": window["error_latency_us"],
        "block_latency_us": window["block_latency_us"],
        # success responses (2.xx) after each client's first, in ms
        "latency_ms": {
            key: (value / 1000 if key not in ("count", "sum") else value)
            for key, value in success.items()
        },
        "latency_histogram_us": sorted(merged.items()),
        "client_requests": client_requests_lines(
            generator.client_requests(), expected or responses
        ),
        "series": seen.series,
        "finished": (totals["active"] == 0 and totals["reverse_remaining"] <= 0)
        or totals["notifies_remaining"] == 0,
    }


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "uri", metavar="URI",
        help="coap://, coaps:// or coap+tcp://host[:port]/path?query (port 5683, coaps 5684)",
    )  # fmt: skip
    parser.add_argument(
        "--clients", type=int, default=5, metavar="N", help="emulated clients (default 5)"
    )
    parser.add_argument(
        "--requests",
        type=int,
        metavar="N",
        help="requests per client; up to 10 each client sends exactly N, above that the "
        f"N x clients requests are shared (default {DEFAULT_REQUESTS}, none with --duration)",
    )
    parser.add_argument(
        "--nstart", type=int, default=1, metavar="N",
        help=f"concurrent requests per client (default 1, max. {MAX_NSTART})",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=int, metavar="MS",
        help="pause after a response before the client's next request, plus 0..499 ms at "
        "random (default: env COAP_REQUEST_INTERVAL or 0)",
    )  # fmt: skip
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--con", action="store_false", dest="non", default=False, help="CON requests (default)"
    )
    kind.add_argument("--non", action="store_true", help="NON requests")
    parser.add_argument(
        "-m", "--method", type=str.upper, choices=sorted(METHODS), default=None,
        help="request method (default POST, as Californium; GET with --notifies)",
    )  # fmt: skip
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="TEXT", help="payload, UTF-8 (Content-Format 0)")
    payload.add_argument("--payloadhex", metavar="HEX", help="payload, hexadecimal")
    payload.add_argument("--payload-file", metavar="FILE", help="payload from FILE")
    payload.add_argument(
        "--payload-random", type=int, metavar="N",
        help="N random printable ASCII characters as payload",
    )  # fmt: skip
    parser.add_argument(
        "--blocksize", type=int, metavar="N",
        help="block-wise with N-byte blocks (16, 32, ..., 1024): every request asks for Block2 "
        "of that size, a larger payload goes as Block1 blocks; with --reverse the feeds answer "
        "in Block2 blocks of that size (default 1024)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=int, default=10_000, metavar="MS",
        help="response timeout for NON requests and after an empty ACK (default 10000)",
    )  # fmt: skip
    parser.add_argument(
        "--ack-timeout", type=int, default=2000, metavar="MS",
        help="CON ACK_TIMEOUT; the first wait is random up to 1.5 x (default 2000)",
    )  # fmt: skip
    parser.add_argument(
        "--stop", action=argparse.BooleanOptionalAction, default=True,
        help="a failed CON request or an error response stops its client (default); with "
        "--no-stop it counts as transmission error and the client retries after 1 s",
    )  # fmt: skip
    parser.add_argument(
        "--notifies", type=int, metavar="N",
        help="observe mode: GET with Observe, expect N notifications per client",
    )  # fmt: skip
    parser.add_argument(
        "--reregister", type=int, default=0, metavar="N",
        help="observe mode: re-register (same token) every N notifications",
    )  # fmt: skip
    parser.add_argument(
        "--register", type=int, default=0, metavar="N",
        help="observe mode: register anew (new token, reactive cancel) every N notifications",
    )  # fmt: skip
    parser.add_argument(
        "--reverse", type=int, metavar="N",
        help="reverse mode: serve feed-CON/feed-NON and expect N answers or notifications per "
        "client for the server's requests (URI e.g. reverse-request?req=N&res=feed-CON&rlen=40 "
        "or reverse-observe?obs=N&res=feed-NON)",
    )  # fmt: skip
    parser.add_argument(
        "--min", "--mininterval", type=int, dest="min_interval", metavar="MS",
        help="reverse mode: shortest pause between notifications (default 100; <= 0: that "
        "long after the previous one completed)",
    )  # fmt: skip
    parser.add_argument(
        "--max", "--maxinterval", type=int, dest="max_interval", metavar="MS",
        help="reverse mode: longest pause between notifications (default: --min)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, default=0.0, metavar="S",
        help=f"stop after S seconds of measurement (after the warm-up; max {MAX_DURATION:g})",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=0.0, metavar="S",
        help="seconds of load before the measurement window opens (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--start-at", type=float, metavar="EPOCH",
        help="start the requests at this wall-clock time (Unix seconds; the clients connect "
        "and do their handshakes before it), so that several generators share one window",
    )  # fmt: skip
    parser.add_argument(
        "--local-port", type=int, metavar="PORT", help="local port of the first client"
    )
    parser.add_argument(
        "--source-addresses", metavar="CIDR",
        help="coap:// or coaps:// to IPv4: client i sends from the i-th host address of CIDR "
        "(all on one port and one socket, batched: the way to drive thousands of clients from "
        "one core); "
        "the addresses must be local, e.g. 127.1.0.0/16 on loopback",
    )  # fmt: skip
    benchmark_dtls.add_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")
    parser.add_argument(
        "--plot", metavar="FILE.png",
        help="draw req/s over time and the latency distribution (needs matplotlib)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-interval", type=float, default=PROGRESS_INTERVAL, metavar="S",
        help=f"seconds between progress lines (default {PROGRESS_INTERVAL:g}, as Californium)",
    )  # fmt: skip


def validate(args: argparse.Namespace) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise BenchmarkError(message, 2)

    check(1 <= args.clients <= MAX_CLIENTS, f"--clients must be 1..{MAX_CLIENTS}")
    renew = args.handshakes_full or args.handshakes_close
    check(args.handshakes_full >= 0 and args.handshakes_close >= 0,
          "--handshakes-full/-close must not be negative")  # fmt: skip
    check(1 <= args.handshakes_burst <= 100, "--handshakes-burst must be 1..100")
    check(not renew or args.uri.lower().startswith("coaps://"),
          "--handshakes-full/-close need a coaps:// URI")  # fmt: skip
    check(not renew or args.nstart == 1, "--handshakes-full/-close need --nstart 1")
    check(
        args.requests is None or 1 <= args.requests <= MAX_REQUESTS,
        f"--requests must be 1..{MAX_REQUESTS}",
    )
    check(1 <= args.nstart <= MAX_NSTART, f"--nstart must be 1..{MAX_NSTART}")
    check(
        args.clients * args.nstart <= _loadgen.MAX_EXCHANGES,
        f"--clients x --nstart must be at most {_loadgen.MAX_EXCHANGES}",
    )
    check(
        args.interval is None or 0 <= args.interval <= MAX_INTERVAL_MS,
        f"--interval must be 0..{MAX_INTERVAL_MS} ms",
    )
    check(
        args.payload_random is None or 0 <= args.payload_random <= MAX_PAYLOAD,
        f"--payload-random must be 0..{MAX_PAYLOAD}",
    )
    check(
        args.blocksize is None or args.blocksize in BLOCK_SIZES,
        "--blocksize must be 16, 32, ..., 1024",
    )
    check(0 < args.timeout <= MAX_TIMEOUT_MS, f"--timeout must be 1..{MAX_TIMEOUT_MS} ms")
    check(0 < args.ack_timeout <= MAX_TIMEOUT_MS, f"--ack-timeout must be 1..{MAX_TIMEOUT_MS} ms")
    check(0 <= args.duration <= MAX_DURATION, f"--duration must be 0..{MAX_DURATION:g} s")
    check(0 <= args.warmup <= MAX_WARMUP, f"--warmup must be 0..{MAX_WARMUP:g} s")
    check(
        args.start_at is None or args.start_at - time.time() <= MAX_START_DELAY,
        f"--start-at must be within the next {MAX_START_DELAY:g} s",
    )
    check(args.local_port is None or 1 <= args.local_port <= 65535, "--local-port must be 1..65535")
    check(
        args.notifies is None or 1 <= args.notifies <= MAX_NOTIFIES,
        f"--notifies must be 1..{MAX_NOTIFIES}",
    )
    check(args.reregister >= 0 and args.register >= 0, "--reregister/--register must be >= 0")
    check(
        args.notifies is not None or not (args.reregister or args.register),
        "--reregister/--register need --notifies",
    )
    check(
        args.notifies is None or args.method in (None, "GET"),
        "--notifies observes with GET",
    )
    check(0.1 <= args.progress_interval <= 3600, "--progress-interval must be 0.1..3600 s")
    check(
        args.reverse is None or 1 <= args.reverse <= MAX_NOTIFIES,
        f"--reverse must be 1..{MAX_NOTIFIES}",
    )
    check(
        args.reverse is not None or (args.min_interval is None and args.max_interval is None),
        "--min/--max need --reverse",
    )
    check(
        args.reverse is None or args.notifies is None, "--reverse and --notifies exclude each other"
    )
    if args.source_addresses is not None:
        check(
            urlsplit(args.uri).scheme.lower() in ("coap", "coaps"),
            "--source-addresses works with coap:// and coaps:// URIs only",
        )
        check(
            not renew, "--handshakes-full/-close need a socket per client, not --source-addresses"
        )
        try:
            network = ipaddress.IPv4Network(args.source_addresses, strict=False)
        except ValueError:
            raise BenchmarkError(
                f"--source-addresses {args.source_addresses!r} is not an IPv4 network "
                "(e.g. 127.1.0.0/16)",
                2,
            ) from None
        check(
            host_count(network) >= args.clients,
            f"--source-addresses {network} has {host_count(network)} host addresses, "
            f"fewer than --clients {args.clients}",
        )
    for value in (args.min_interval, args.max_interval):
        check(
            value is None or abs(value) <= MAX_INTERVAL_MS,
            f"--min/--max must be -{MAX_INTERVAL_MS}..{MAX_INTERVAL_MS} ms",
        )


def read_payload(args: argparse.Namespace) -> bytes:
    if args.payload is not None:
        return args.payload.encode("utf-8")
    if args.payload_random is not None:
        return bytes(random.choices(range(0x20, 0x7F), k=args.payload_random))
    if args.payloadhex is not None:
        try:
            return bytes.fromhex(args.payloadhex)
        except ValueError as exc:
            raise BenchmarkError(f"invalid payload: {exc}", 2) from None
    if args.payload_file is not None:
        try:
            with open(args.payload_file, "rb") as source:
                return source.read(MAX_PAYLOAD + 1)
        except OSError as exc:
            raise BenchmarkError(f"cannot read {args.payload_file}: {exc.strerror}", 2) from None
    return b""


def reverse_intervals(args: argparse.Namespace) -> None:
    """Californium's Reverse.defaults(): 100 ms each if neither --min nor --max is given, the
    one given for both, and min <= max."""
    if args.min_interval is None and args.max_interval is None:
        args.min_interval = args.max_interval = DEFAULT_FEED_INTERVAL_MS
    elif args.max_interval is None:
        args.max_interval = args.min_interval
    elif args.min_interval is None:
        args.min_interval = args.max_interval
    elif args.max_interval < args.min_interval:
        args.min_interval, args.max_interval = args.max_interval, args.min_interval


def interval_default() -> int:
    """Californium's env COAP_REQUEST_INTERVAL (ms) when --interval is not given."""
    text = os.environ.get("COAP_REQUEST_INTERVAL", "").strip()
    try:
        value = int(text) if text else 0
    except ValueError:
        raise BenchmarkError(f"COAP_REQUEST_INTERVAL '{text}' is no number", 2) from None
    if not 0 <= value <= MAX_INTERVAL_MS:
        raise BenchmarkError(f"COAP_REQUEST_INTERVAL must be 0..{MAX_INTERVAL_MS}", 2)
    return value


def wait_for_start(start_at: float) -> None:
    """Sleep until the wall-clock time *start_at* (--start-at); a moment already past is
    said, and the run starts at once."""
    late = time.time() - start_at
    if late > 0:
        _say(f"--start-at passed {late:.3f} s ago while the clients connected.")
        return
    deadline = time.monotonic() - late
    while (left := deadline - time.monotonic()) > 0:  # bounded: MAX_START_DELAY
        time.sleep(min(left, 0.5))


def _say(line: str) -> None:
    print(line, flush=True)


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    scheme = urlsplit(args.uri if "://" in args.uri else "coap://" + args.uri).scheme.lower()
    try:
        # benchmark.sh's COAPS_HANDSHAKES_*: for coaps:// with a socket per client only
        benchmark_dtls.handshake_defaults(
            args, secure=scheme == "coaps" and args.source_addresses is None
        )
    except benchmark_dtls.HandshakeError as exc:
        raise BenchmarkError(str(exc), 2) from None
    validate(args)
    if args.plot and not plot_available():
        # checked before the run, so that a long run is not wasted
        print(PLOT_HINT, file=sys.stderr)
        return 2
    if args.interval is None:
        args.interval = interval_default()
    reverse_intervals(args)
    observe = args.notifies is not None
    if args.method is None:
        args.method = "GET" if observe else "POST"
    target = parse_uri(args.uri)
    tcp = target.scheme in STREAM_SCHEMES
    if tcp and args.reverse:
        raise BenchmarkError(f"--reverse is not supported over {target.scheme}", 2)
    if tcp and args.register:
        raise BenchmarkError(
            f"--register is not supported over {target.scheme} (use --reregister)", 2
        )
    payload = read_payload(args)
    if len(payload) > MAX_PAYLOAD:
        raise BenchmarkError(f"payload larger than {MAX_PAYLOAD} bytes", 2)
    requests = args.requests
    if observe:
        requests = 1  # as Californium: one registration per client, then notifications
    elif requests is None and not args.duration:
        requests = DEFAULT_REQUESTS
    expected = requests * args.clients if requests else None
    options: list[tuple[int, bytes | int]] = [*target.options, (OPTION_ACCEPT, TEXT_PLAIN)]
    if payload:
        options.append((OPTION_CONTENT_FORMAT, TEXT_PLAIN))
    family, address = resolve(target)

    none_stop = "" if args.stop else "none-stop "
    secure = "secure " if target.scheme in ("coaps", TLS_SCHEME) else ""
    if expected is not None:
        _say(
            f"Create {args.clients} {none_stop}{secure}benchmark clients, expect to send "
            f"{expected} requests overall to {target.uri}"
        )
    else:
        _say(
            f"Create {args.clients} {none_stop}{secure}benchmark clients, expect to send "
            f"requests for {args.duration:g} s overall to {target.uri}"
        )
    if args.reverse:
        expect = args.reverse * args.clients
        if args.min_interval == args.max_interval:
            _say(f"Expect {expect} notifies sent, interval {args.min_interval} [ms]")
        else:
            _say(
                f"Expect {expect} notifies sent, interval {args.min_interval} ... "
                f"{args.max_interval} [ms]"
            )
    if observe:
        _say(
            f"Expect {args.notifies * args.clients} notifies received, reregister every "
            f"{args.reregister} and register every {args.register} notify"
        )
    if secure:
        try:
            auth = benchmark_dtls.authentication_line(
                args, default="X509" if target.scheme == TLS_SCHEME else "PSK"
            )
            _say(auth)
            identity = benchmark_dtls.identity_line(args) if target.scheme == "coaps" else None
        except benchmark_dtls.HandshakeError as exc:
            raise BenchmarkError(str(exc), 2) from None
        if identity is not None and auth in ("Use PSK.", "Use PSK/ECDHE."):
            _say(identity)  # Californium: the first client's, before its first request
    created = time.monotonic()
    source_first = None
    if tcp:
        sockets = open_tcp_clients(args.clients, family, address, args.local_port)
    elif args.source_addresses is not None:
        shared, source_first = open_source_socket(
            ipaddress.IPv4Network(args.source_addresses, strict=False),
            args.clients, family, address, args.local_port, args.nstart,
        )  # fmt: skip
        sockets = [shared]
    else:
        sockets = open_clients(args.clients, family, address, args.local_port)
    generator: _loadgen.LoadGenerator | None = None
    try:
        try:
            generator = _loadgen.LoadGenerator(
                [sock.fileno() for sock in sockets] * (args.clients if source_first else 1),
                confirmable=not args.non,
                code=METHODS[args.method],
                options=options,
                payload=payload,
                ack_timeout_ms=args.ack_timeout,
                response_timeout_ms=args.timeout,
                nstart=args.nstart,
                interval_ms=args.interval,
                no_stop=not args.stop,
                block_size=args.blocksize or 0,
                observe=observe,
                reregister=args.reregister,
                register=args.register,
                serve_feeds=bool(args.reverse),
                feed_min_ms=args.min_interval or 0,
                feed_max_ms=args.max_interval or 0,
                transport="tcp" if tcp else "udp",
                source_first=source_first,
                server=(address[0], address[1]) if source_first else None,
            )
        except ValueError as exc:
            raise BenchmarkError(str(exc), 2) from None
        make_handshake = None
        if target.scheme == "coaps" and source_first:
            port = sockets[0].getsockname()[1]
            own = handshake_sockets(source_first, args.clients, port, address)
            try:
                make_handshake = handshakes(generator, own, args)
            finally:
                for sock in own:
                    sock.close()
        elif target.scheme == "coaps":
            make_handshake = handshakes(generator, sockets, args)
        elif target.scheme == TLS_SCHEME:
            tls_handshakes(generator, args, target)
        created = time.monotonic() - created
        probe(generator, args, target)
        _say(created_line(args.clients, created))
        if args.start_at is not None:
            wait_for_start(args.start_at)
        renewal = start_renewal(generator, sockets, args, make_handshake, source_first, address)
        runner = Runner(generator)
        try:
            runner.start(
                requests=requests or 0,
                duration=args.duration,
                warmup=args.warmup,
                notifies=args.notifies or 0,
                reverse=args.reverse or 0,
            )
            started_at = time.time()
            _say("Benchmark started.")
            phases = Phases(
                observe=observe,
                reverse=bool(args.reverse),
                interval_ms=args.interval,
                max_ms=args.max_interval or 0,
                clients=args.clients,
                dtls=target.scheme == "coaps",
                request_type="NON" if args.non and not tcp else "CON",
            )
            seen = watch(runner, args.progress_interval, phases)
        finally:
            runner.close()
            if renewal is not None:
                renewal.stop()
        result = collect(generator, args, target, payload, expected, seen)
        result["started_at"] = started_at  # wall clock, Unix seconds
        result["interrupted"] = runner.interrupted
        if renewal is not None:
            result["handshakes_during_run"] = renewal.handshakes
            result["handshake_failures"] = renewal.failures
    finally:
        if generator is not None and target.scheme == TLS_SCHEME:
            generator.shutdown_tls()  # close_notify; nothing while a loop still runs
        for sock in sockets:
            sock.close()
    if result["interrupted"]:
        _say(f"{args.clients} benchmark clients interrupted.")
    else:
        done = "stopped" if seen.stale or not result["finished"] else "finished"
        _say(f"{args.clients} benchmark clients {done}.")
    for line in result["client_requests"]:
        _say(line)
    for line in summary_lines(result):
        _say(line)
    if args.json:
        write_json(args.json, result)
    if args.plot:
        write_plot(args.plot, result)
    return 130 if result["interrupted"] else 0


def write_json(path: str, result: dict[str, Any]) -> None:
    # Written aside and renamed: a second Ctrl-C leaves no truncated file behind.
    partial = f"{path}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
        os.replace(partial, path)
    except OSError as exc:
        raise BenchmarkError(f"cannot write {path}: {exc.strerror}") from None


def write_plot(path: str, result: dict[str, Any]) -> None:
    """req/s per progress interval over time, and the latency distribution (2.xx responses)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figure, (rate_axes, latency_axes) = plt.subplots(2, 1, figsize=(9, 7))
    series = result["series"]
    rate_axes.plot(
        [entry["t_s"] for entry in series], [entry["req_per_s"] for entry in series], marker="o"
    )
    rate_axes.set_xlabel("time [s]")
    rate_axes.set_ylabel("requests/s")
    rate_axes.set_title(f"{result['clients']} clients, {result['type']} {result['uri']}")
    rate_axes.set_ylim(bottom=0)
    rate_axes.grid(True)
    buckets = result["latency_histogram_us"]
    if buckets:
        latency_axes.bar(
            [upper / 1000 for upper, _ in buckets],
            [count for _, count in buckets],
            width=[max(upper / 1000 * 0.02, 0.001) for upper, _ in buckets],
        )
        latency_axes.set_xscale("log")
    latency_axes.set_xlabel("latency [ms]")
    latency_axes.set_ylabel("responses")
    latency_axes.grid(True)
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as exc:
        raise BenchmarkError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(figure)


def handshakes(
    generator: _loadgen.LoadGenerator, sockets: list[socket.socket], args: argparse.Namespace
) -> Callable[[int], Any]:
    """coaps: every client's DTLS handshake before the run, with a progress line a second;
    returns the factory of client i's handshakes."""
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        _say(f"Benchmark clients handshakes: {done} of {total} ...")

    durations: list[float] = []
    try:
        make = benchmark_dtls.handshake_factory(args, len(sockets))
        sessions = benchmark_dtls.handshake_all(
            sockets, make, parallel=args.handshakes_parallel, progress=progress,
            durations=durations,
        )  # fmt: skip
    except benchmark_dtls.HandshakeError as exc:
        raise BenchmarkError(str(exc)) from None
    generator.use_dtls(sessions)
    generator.connect_times(durations)  # Californium's connects: the handshake included
    elapsed = time.monotonic() - started
    _say(f"Benchmark clients handshakes: {len(sessions)} in {format_time(elapsed)}"
         f"{format_per_second('handshakes', len(sessions), elapsed)}")  # fmt: skip
    return make


def tls_handshakes(
    generator: _loadgen.LoadGenerator, args: argparse.Namespace, target: Target
) -> None:
    """coaps+tcp: every client's TLS handshake (all at once, in the generator's C code) before
    the run, bounded by CONNECT_TIMEOUT, with a progress line a second."""
    from extplugtest.dtls.pki import demo_certs_path

    certs = demo_certs_path()
    auth = [mode.strip().upper() for mode in (getattr(args, "auth", None) or "").split(":")]
    with_certificate = (args.cert or "X509" in auth or "RPK" in auth) and not args.anonymous
    started = time.monotonic()
    try:
        generator.use_tls(
            ca_file=args.trust_store or str(certs / "ca.pem"),
            verify=not args.trust_all,
            server_name=target.host,
            cert_file=(args.cert or str(certs / "client.pem")) if with_certificate else None,
            key_file=(args.private_key or (None if args.cert else str(certs / "client.key")))
            if with_certificate
            else None,
        )
    except ValueError as exc:
        raise BenchmarkError(str(exc), 2) from None
    total = generator.client_count
    deadline = started + CONNECT_TIMEOUT
    try:
        waiting = generator.handshake_tls(min(1.0, CONNECT_TIMEOUT))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError(
                    f"TLS handshakes: {total - waiting} of {total} done after "
                    f"{CONNECT_TIMEOUT:g} s, the others timed out"
                )
            _say(f"Benchmark clients handshakes: {total - waiting} of {total} ...")
            waiting = generator.handshake_tls(min(1.0, left))
    except OSError as exc:  # ConnectionError: one client's handshake failed
        raise BenchmarkError(str(exc) if not exc.strerror else
                             f"TLS handshakes failed: {exc.strerror}") from None  # fmt: skip
    elapsed = time.monotonic() - started
    _say(f"Benchmark clients handshakes: {total} in {format_time(elapsed)}"
         f"{format_per_second('handshakes', total, elapsed)}")  # fmt: skip


def start_renewal(
    generator: _loadgen.LoadGenerator,
    sockets: list[socket.socket],
    args: argparse.Namespace,
    make_handshake: Callable[[int], Any] | None,
    source_first: str | None = None,
    address: tuple[Any, ...] = (),
) -> benchmark_dtls.HandshakeService | None:
    """coaps, for the run (after the probe): a service thread gives the clients the
    generator parks a new DTLS session. --handshakes-full/-close park a client every N-th
    response; with --no-stop a client whose CON request failed is parked for a new full
    handshake (Californium's forced handshake after an error: the server may have lost the
    session), tried again after a second while it fails."""
    every = args.handshakes_full or args.handshakes_close
    recover = not args.stop and not args.non
    if make_handshake is None or not (every or recover):
        return None
    if every:
        generator.handshakes_every(every)
    if recover:
        generator.dtls_recovery(True)
    socket_for: Callable[[int], socket.socket] = sockets.__getitem__
    release: Callable[[socket.socket], None] | None = None
    if source_first is not None:
        # the handshake on a socket of the client's own, bound to its address and the
        # shared port (the more specific binding gets its datagrams), closed after it
        port = sockets[0].getsockname()[1]

        def socket_for(index: int) -> socket.socket:
            return handshake_socket(source_first, index, port, address)

        def release(sock: socket.socket) -> None:
            sock.close()

    service = benchmark_dtls.HandshakeService(
        generator, socket_for, make_handshake,
        close=bool(args.handshakes_close), burst=args.handshakes_burst, retry=recover,
        release=release,
    )  # fmt: skip
    service.start()
    return service


def probe(generator: _loadgen.LoadGenerator, args: argparse.Namespace, target: Target) -> None:
    """Californium's test(): one request from the first client before the others start."""
    runner = Runner(generator)
    try:
        runner.start(clients=1, requests=1, duration=args.timeout / 1000, stop_on_error=True)
        # Short slices: in observe mode the client goes on observing after the response.
        while not runner.wait(0.01):
            if generator.client(0)["completed"]:
                break
    finally:
        runner.close()
    if runner.interrupted:
        raise KeyboardInterrupt
    client = generator.client(0)
    code = client["last_code"]
    if code > 0 and code >> 5 == 2:
        _say("Benchmark clients, first request successful.")
        return
    # Californium's test() failed: its line, and the run ends (it exits with -1)
    what = f"Request {target.uri} {args.method} failed, exit Benchmark."
    if client["last_error"]:
        reason = os.strerror(client["last_error"]).lower()
        if client["last_error"] == errno.ECONNREFUSED:
            reason += " (no CoAP server on that port?)"
    elif code == -1:
        reason = "rejected (RST)"
    elif code == -3:
        reason = "the server closed the connection"
    elif code <= 0:
        reason = f"no response within {args.timeout} ms"
    else:
        reason = f"answered with {code >> 5}.{code & 0x1F:02d}"
    raise BenchmarkError(f"{what} {reason[0].upper()}{reason[1:]}.")
