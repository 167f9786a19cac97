"""CoAP over TCP and TLS (RFC 8323): a listening socket on the event loop, connections run by the
C engine (``_tcp_codec.TcpEngine``).

Accepted plain sockets are read and written by the engine itself, in its own epoll set, which
the event loop watches as one descriptor;
with an ``ssl.SSLContext`` each accepted socket gets an asyncio TLS transport (handshake bounded
by ``TcpLimits.handshake_timeout``) whose protocol feeds the same engine. The limits: at most
``max_connections`` connections (handshakes included; beyond, new sockets are closed at once),
Californium's idle timeout, a bound on the time a message may take to arrive complete (slow and
half-open peers), on unsent bytes per connection and on the time they may stall. TCP keep-alive
probes find peers that vanished without a FIN. Everything is counted in the endpoint's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import cast

from cryptography import x509

from extplugtest.coap._tcp_codec import IO_BACKENDS, TcpConnection, TcpEngine
from extplugtest.coap._udp import FastResource
from extplugtest.coap.endpoint_tcp import TcpEndpoint
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.dtls.pki import x509_principal

logger = logging.getLogger("extplugtest.coap.tcp")

#: RFC 8323 §4.1: the ALPN protocol id of CoAP over TLS
ALPN = "coap"
#: Californium's --client-auth values (TCP.TLS_CLIENT_AUTHENTICATION_MODE: WANTED by default)
CLIENT_AUTH = {"NONE": ssl.CERT_NONE, "WANTED": ssl.CERT_OPTIONAL, "NEEDED": ssl.CERT_REQUIRED}

ACCEPT_BATCH = 64  # accepts per wake-up, so that other callbacks get their turn
ACCEPT_BACKOFF = 0.1  # seconds without accepting after running out of file descriptors
SWEEP_INTERVAL = 1.0


class TcpBackendError(Exception):
    """The I/O backend asked for (EXTPLUGTEST_TCP_IO, TcpLimits.io_backend) cannot be used."""

    def __init__(self, backend: str, error: Exception) -> None:
        if backend not in IO_BACKENDS:
            text = f"EXTPLUGTEST_TCP_IO must be one of {', '.join(IO_BACKENDS)}, not {backend!r}"
        else:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            text = (
                f"the {backend} backend for coap+tcp is not available here ({reason}); "
                "set EXTPLUGTEST_TCP_IO=auto or epoll"
            )
        super().__init__(text)


@dataclass
class TcpLimits:
    """Connection limits; the timeouts are the extended server's TCP settings (inventory §7.2)."""

    max_connections: int = 10_000
    #: TCP.CONNECTION_IDLE_TIMEOUT (60 min on the extended server)
    idle_timeout: float = 3600.0
    #: TCP.CONNECT_TIMEOUT: the first message, and every message begun, must be complete by then
    slow_timeout: float = 15.0
    #: TCP.TLS_HANDSHAKE_TIMEOUT
    handshake_timeout: float = 60.0
    #: unsent bytes that do not move for this long close the connection
    stall_timeout: float = 60.0
    #: announced in our CSM (§5.3.1); a larger frame is answered with Abort
    max_message_size: int = 8192 + 1024
    #: unsent bytes per connection; reading pauses at a quarter of it
    max_pending: int = 256 * 1024
    #: the kernel's send and receive buffer of every connection (SO_SNDBUF, SO_RCVBUF; Linux
    #: doubles the value for its bookkeeping): fixed, so that thousands of connections cannot
    #: grow to the autotuning maxima (net.ipv4.tcp_wmem/tcp_rmem, MBs each); 0 leaves them
    #: to the kernel
    socket_buffer: int = 64 * 1024
    backlog: int = 1024
    #: TCP keep-alive: probes after this many idle seconds, then every interval, count times
    keepalive_idle: int = 300
    keepalive_interval: int = 30
    keepalive_count: int = 4
    #: I/O of plain TCP sockets: "auto" (io_uring where the kernel allows it), "io_uring" or
    #: "epoll"; the environment variable EXTPLUGTEST_TCP_IO sets the default
    io_backend: str = field(default_factory=lambda: os.environ.get("EXTPLUGTEST_TCP_IO", "auto"))


def demo_certs() -> Path:
    """The package's demo PKI (ca.pem, server.pem + server.key, client.pem + client.key)."""
    return Path(str(resources.files("extplugtest") / "certs"))


def tls_server_context(
    certificate: Path, key: Path, trust: Path, client_auth: str = "WANTED"
) -> ssl.SSLContext:
    """A TLS 1.2/1.3 server context for coaps+tcp: ALPN "coap" offered (RFC 8323 §4.1), the
    certificate chain and key, and client certificates checked against *trust* as
    *client_auth* asks (NONE, WANTED: verified if sent, NEEDED: required)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    context.set_alpn_protocols([ALPN])
    context.verify_mode = CLIENT_AUTH[client_auth]
    if context.verify_mode != ssl.CERT_NONE:
        context.load_verify_locations(trust)
    return context


def demo_tls_server_context(
    client_auth: str = "WANTED", trust: Path | None = None
) -> ssl.SSLContext:
    """The server context with the demo server certificate (CN=cf-server, signed by cf-ca);
    client certificates are checked against *trust* (default: the demo CA)."""
    certs = demo_certs()
    return tls_server_context(
        certs / "server.pem", certs / "server.key", trust or certs / "ca.pem", client_auth
    )


#: OpenSSL's names of the TLS 1.2 suites a client may get here -> the IANA names Californium
#: shows (TLS 1.3 suites already have their IANA names).
IANA_CIPHER_NAMES = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-CCM8": "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
    "ECDHE-ECDSA-AES128-CCM": "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-ECDSA-AES256-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
}


def tls_context_fields(ssl_object: ssl.SSLObject) -> list[tuple[str, str | int | bool]]:
    """The TLS fields of /mycontext (inventory §2.5): peer, cipher-suite, session-id."""
    fields: list[tuple[str, str | int | bool]] = []
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        fields.append(("peer", x509_principal(x509.load_der_x509_certificate(der))))
    cipher = ssl_object.cipher()
    if cipher is not None:
        fields.append(("cipher-suite", IANA_CIPHER_NAMES.get(cipher[0], cipher[0])))
    session = ssl_object.session
    if session is not None and session.id:
        fields.append(("session-id", session.id.hex().upper()))
    return fields


class _TlsStream(asyncio.Protocol):
    """A TLS connection: decrypted bytes go to the engine, answers through the transport."""

    def __init__(self, engine: TcpEngine, peer: tuple, streams: dict[tuple, _TlsStream]) -> None:
        self.engine = engine
        self.peer = peer
        self.streams = streams  # the open TLS connections by peer, for /mycontext
        self.connection: TcpConnection | None = None
        self.ssl_object: ssl.SSLObject | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses)
        self.connection = self.engine.attach(cast(asyncio.Transport, transport), self.peer)
        self.ssl_object = transport.get_extra_info("ssl_object")
        self.streams[self.peer] = self

    def data_received(self, data: bytes) -> None:
        if self.connection is not None:
            self.engine.feed(self.connection, data)

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streams.get(self.peer) is self:
            del self.streams[self.peer]
        if self.connection is not None:
            self.engine.connection_lost(self.connection)

    def pause_writing(self) -> None:
        if self.connection is not None:
            self.engine.pause_reading(self.connection, True)

    def resume_writing(self) -> None:
        if self.connection is not None:
            self.engine.pause_reading(self.connection, False)


class TcpServerTransport:
    """Listens on *address* and serves *endpoint* over TCP, or TLS with *ssl_context*."""

    def __init__(
        self,
        endpoint: TcpEndpoint,
        address: tuple,
        *,
        fast: FastResource | None = None,
        limits: TcpLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.requested_address = address
        self.fast = fast
        self.limits = limits or TcpLimits()
        self.ssl_context = ssl_context
        self.sock: socket.socket | None = None
        self.engine: TcpEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handshakes: set[asyncio.Task[object]] = set()
        #: TLS connections by peer (bounded by max_connections, as the engine's)
        self._tls_streams: dict[tuple, _TlsStream] = {}
        self._accepting = False
        self._sweeper = PeriodicTimer(SWEEP_INTERVAL, self._sweep)

    @property
    def kind(self) -> str:
        return "TCP" if self.ssl_context is None else "TLS"

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        host = self.requested_address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restarts in TIME_WAIT
            if self.limits.socket_buffer:
                # before listen(): accepted sockets inherit them, and the window scale
                # offered in the handshake follows the receive buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.socket_buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.limits.socket_buffer)
            sock.bind(self.requested_address)
            sock.listen(self.limits.backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.endpoint.scheme = "coap+tcp" if self.ssl_context is None else "coaps+tcp"
        try:
            self.engine = TcpEngine(
                self.endpoint,
                self.fast,
                self.limits.max_message_size,
                self.limits.max_pending,
                self.endpoint.max_message_size,  # larger answers leave the fast path: block-wise
                on_close=self.endpoint.connection_closed,
                io=self.limits.io_backend,
            )
        except (ValueError, OSError) as error:
            sock.close()
            raise TcpBackendError(self.limits.io_backend, error) from None
        self.endpoint.attach(self.engine, sock.getsockname())
        if self.ssl_context is not None:
            self.endpoint.security = self.context_fields
        self._loop = loop
        loop.add_reader(self.engine.poll_fd, self.engine.poll)  # every plain connection
        self._start_accepting()
        self._sweeper.start(loop)

    @property
    def local_address(self) -> tuple:
        assert self.sock is not None
        return self.sock.getsockname()

    # -- accepting ---------------------------------------------------------------------------
    def _start_accepting(self) -> None:
        if self.sock is not None and self._loop is not None and not self._accepting:
            self._loop.add_reader(self.sock.fileno(), self._accept)
            self._accepting = True

    def _stop_accepting(self) -> None:
        if self.sock is not None and self._loop is not None and self._accepting:
            self._loop.remove_reader(self.sock.fileno())
            self._accepting = False

    def _accept(self) -> None:
        assert self.sock is not None and self.engine is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.engine.count("tcp-accept-errors")
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the backlog keeps the socket readable; wait a little.
                    self.endpoint.log("tcp-accept", "accept on %s failed: %s", self.kind, error)
                    self._stop_accepting()
                    self._loop.call_later(ACCEPT_BACKOFF, self._start_accepting)
                return
            if len(self.engine) + len(self._handshakes) >= self.limits.max_connections:
                self.engine.count("tcp-refused")
                sock.close()
                continue
            try:
                self._configure(sock)
            except OSError:
                self.engine.count("tcp-accept-errors")
                sock.close()
                continue
            if self.ssl_context is None:
                self.engine.open(sock, peer)
            else:
                task = self._loop.create_task(self._handshake(sock, peer))
                self._handshakes.add(task)
                task.add_done_callback(self._handshakes.discard)

    def _configure(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        limits = self.limits
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, limits.keepalive_idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, limits.keepalive_interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, limits.keepalive_count)

    async def _handshake(self, sock: socket.socket, peer: tuple) -> None:
        assert self._loop is not None and self.engine is not None
        engine = self.engine
        try:
            await self._loop.connect_accepted_socket(
                lambda: _TlsStream(engine, peer, self._tls_streams),
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as error:
            engine.count("tcp-handshakes-failed")
            logger.debug("TLS handshake with %s failed: %r", peer, error)
            sock.close()

    def context_fields(self, peer: tuple) -> list[tuple[str, str | int | bool]]:
        stream = self._tls_streams.get(peer)
        if stream is None or stream.ssl_object is None:
            return []
        return tls_context_fields(stream.ssl_object)

    # -- upkeep ------------------------------------------------------------------------------
    def _sweep(self) -> None:
        assert self.engine is not None
        limits = self.limits
        self.engine.sweep(limits.idle_timeout, limits.slow_timeout, limits.stall_timeout)

    def close(self) -> None:
        self._sweeper.stop()
        if self.sock is None:
            return
        self._stop_accepting()
        for task in list(self._handshakes):
            task.cancel()
        if self.engine is not None:
            self.engine.close_all(release=True)  # §5.5: an orderly shutdown
            if self._loop is not None:
                self._loop.remove_reader(self.engine.poll_fd)
        self.endpoint.close()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.sock = None
