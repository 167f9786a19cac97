"""coaps for ``extclient benchmark``: the DTLS handshakes of all clients before the run.

Every client gets its own DTLS session on its own socket; the handshakes run here, up to
``--handshakes-parallel`` at a time (Californium's ``--handshakes-burst`` means something else:
repeated handshakes during the run), with our sans-IO client (dtls/handshake_client.py), flights
resent with back-off (RFC 6347 §4.2.4). Then the load generator seals and opens the records in
its C loop (``LoadGenerator.use_dtls``).

Credentials as Californium's BenchmarkClient (inventory §3): PSK by default, each client with
its own identity ``cali.`` + 16 hex digits and the secret ``.fornium`` (the reference servers
map every ``cali.*`` identity to it); ``-i/-s`` give one identity to all; ``--psk-store FILE``
(``identity=base64`` lines) gives client i entry ``(--psk-index + i) % size``; ``-a`` with
certificates (X509, RPK) uses the demo client certificate or ``-c``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extplugtest.dtls._record import ALERT
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.dtls.handshake_server import HandshakeFailure
from extplugtest.tools.dtls_transport import DtlsClientOptions

#: handshakes in flight at once unless --handshakes-parallel says otherwise
DEFAULT_PARALLEL = 200
#: a handshake that has not finished after this long failed (RFC 6347's flight timer would
#: give up after about a minute; a benchmark's clients should not wait that long)
HANDSHAKE_TIMEOUT = 30.0
FIRST_RETRANSMISSION = 1.0
MAX_RETRANSMISSION = 8.0


class HandshakeError(Exception):
    """Handshakes failed; str() is the line to show."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The coaps options of the benchmark (cf-cli's names)."""
    from extplugtest.tools.oneshot import add_dtls_arguments

    group = parser.add_argument_group("coaps (DTLS)")
    group.add_argument("-i", "--identity", help="PSK identity of every client (default: "
                       "cali.<16 hex> per client, as Californium)")  # fmt: skip
    group.add_argument("-s", "--secret", help="PSK secret, UTF-8 (default: .fornium)")
    group.add_argument("--psk-store", metavar="FILE",
                       help="PSK credentials, identity=base64 lines; client i uses entry "
                       "(--psk-index + i) modulo their number")  # fmt: skip
    group.add_argument("--psk-index", type=int, default=0, metavar="N",
                       help="first entry of --psk-store (default 0)")  # fmt: skip
    group.add_argument("--cid-length", type=int, default=0, metavar="N",
                       help="our connection ID length (RFC 9146); 0 (default): support "
                       "connection IDs, but the server sends none to us")  # fmt: skip
    renew = group.add_mutually_exclusive_group()
    renew.add_argument("--handshakes-full", type=int, default=0, metavar="N",
                       help="after every N-th response a client does a new full handshake "
                       "(Californium's COAPS_HANDSHAKES_FULL)")  # fmt: skip
    renew.add_argument("--handshakes-close", type=int, default=0, metavar="N",
                       help="after every N-th response a client closes its session "
                       "(close_notify) and does a new handshake")  # fmt: skip
    group.add_argument(
        "--handshakes-burst",
        type=int,
        default=1,
        metavar="M",
        help="with --handshakes-full/-close: M handshakes in a row (default 1)",
    )
    group.add_argument(
        "--handshakes-parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"DTLS handshakes in flight at once (default {DEFAULT_PARALLEL})",
    )
    add_dtls_arguments(group)  # type: ignore[arg-type]


def read_psk_store(path: str) -> list[tuple[bytes, bytes]]:
    """``identity=base64`` lines (Californium's --psk-store); blank lines and # comments
    are skipped."""
    try:
        with open(path, encoding="utf-8") as store:
            lines = store.read().splitlines()
    except OSError as exc:
        raise HandshakeError(f"cannot read {path}: {exc.strerror}") from None
    entries: list[tuple[bytes, bytes]] = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        identity, sep, secret = line.partition("=")
        try:
            if not sep or not identity:
                raise ValueError
            entries.append((identity.encode(), base64.b64decode(secret, validate=True)))
        except (ValueError, binascii.Error):
            raise HandshakeError(f"{path}:{number}: expected identity=base64") from None
    if not entries:
        raise HandshakeError(f"{path}: no credentials")
    return entries


def psk_credentials(args: argparse.Namespace, clients: int) -> list[tuple[bytes, bytes]]:
    """(identity, secret) of each client."""
    if args.psk_store:
        store = read_psk_store(args.psk_store)
        return [store[(args.psk_index + i) % len(store)] for i in range(clients)]
    secret = (args.secret or ".fornium").encode()
    if args.identity:
        return [(args.identity.encode(), secret)] * clients
    return [(b"cali." + os.urandom(8).hex().upper().encode(), secret) for _ in range(clients)]


@dataclass
class _Pending:
    sock: socket.socket
    handshake: ClientHandshake
    resend_at: float
    interval: float
    deadline: float


def handshake_all(
    sockets: list[socket.socket],
    make_handshake: Callable[[int], ClientHandshake],
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Callable[[int, int], None] | None = None,
    progress_interval: float = 1.0,
) -> list[ClientSession]:
    """Handshake on every (connected, non-blocking) socket, *parallel* at a time; returns the
    sessions in socket order, or raises HandshakeError with the first failure."""
    sessions: list[ClientSession | None] = [None] * len(sockets)
    selector = selectors.DefaultSelector()
    pending: dict[int, _Pending] = {}
    next_index = done = 0
    next_progress = time.monotonic() + progress_interval
    try:
        while done < len(sockets):
            now = time.monotonic()
            while next_index < len(sockets) and len(pending) < max(1, parallel):
                handshake = make_handshake(next_index)
                sock = sockets[next_index]
                _send(sock, [handshake.start()])
                pending[next_index] = _Pending(
                    sock,
                    handshake,
                    now + FIRST_RETRANSMISSION,
                    FIRST_RETRANSMISSION,
                    now + HANDSHAKE_TIMEOUT,
                )
                selector.register(sock, selectors.EVENT_READ, next_index)
                next_index += 1
            for key, _ in selector.select(timeout=0.05):
                index = key.data
                state = pending[index]
                for _ in range(16):  # bounded: a flight is a few datagrams
                    try:
                        datagram = state.sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        raise HandshakeError(f"client {index}: {exc.strerror}") from None
                    try:
                        _send(state.sock, state.handshake.on_datagram(datagram))
                    except HandshakeFailure as failure:
                        raise HandshakeError(f"client {index}: DTLS handshake failed: "
                                             f"{failure}") from None  # fmt: skip
                    if state.handshake.done:
                        break
                if state.handshake.done:
                    sessions[index] = state.handshake.session
                    selector.unregister(state.sock)
                    del pending[index]
                    done += 1
            now = time.monotonic()
            for index, state in list(pending.items()):
                if now >= state.deadline:
                    raise HandshakeError(
                        f"client {index}: no DTLS handshake within {HANDSHAKE_TIMEOUT:g} s"
                    )
                if now >= state.resend_at:  # RFC 6347 §4.2.4.1: resend, double the timer
                    _send(state.sock, state.handshake.retransmit())
                    state.interval = min(2 * state.interval, MAX_RETRANSMISSION)
                    state.resend_at = now + state.interval
            if progress is not None and now >= next_progress:
                progress(done, len(sockets))
                next_progress = now + progress_interval
    finally:
        selector.close()
    return [session for session in sessions if session is not None]


def _send(sock: socket.socket, datagrams: list[bytes]) -> None:
    for datagram in datagrams:
        try:
            sock.send(datagram)
        except (BlockingIOError, InterruptedError):
            pass  # lost like a dropped datagram: the flight timer resends it
        except OSError as exc:
            raise HandshakeError(f"cannot send the DTLS handshake: {exc.strerror}") from None


def handshake_factory(args: argparse.Namespace, clients: int) -> Callable[[int], ClientHandshake]:
    """Client i's ClientHandshake, from the coaps options."""
    from extplugtest.tools.oneshot import ToolError, dtls_options

    try:
        options: DtlsClientOptions = dtls_options(args)
    except ToolError as exc:
        raise HandshakeError(str(exc)) from None
    if not 0 <= args.cid_length <= 16:
        raise HandshakeError("--cid-length must be 0..16")
    credentials = psk_credentials(args, clients)

    def make(index: int) -> ClientHandshake:
        identity, secret = credentials[index]
        return ClientHandshake(
            identity,
            secret,
            cid=os.urandom(args.cid_length),
            cipher_suites=options.cipher_suites,
            certificate=options.certificate,
            certificate_types=options.certificate_types,
            trust_store=options.trust_store,
        )

    return make


#: a parked client waits at most this long before the service looks again
SERVICE_POLL = 0.005


class HandshakeService:
    """``--handshakes-full N`` / ``--handshakes-close N`` (Californium's BenchmarkClient): the
    generator parks a client after every N-th response; this thread gives it a new session
    (``--handshakes-burst M``: M handshakes in a row), after a close_notify with
    ``--handshakes-close``, and hands it back. Runs while the generator runs."""

    def __init__(
        self,
        generator: Any,
        sockets: list[socket.socket],
        make_handshake: Callable[[int], ClientHandshake],
        *,
        close: bool,
        burst: int,
    ) -> None:
        self.generator = generator
        self.sockets = sockets
        self.make_handshake = make_handshake
        self.close = close
        self.burst = max(1, burst)
        self.handshakes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="handshakes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _serve(self) -> None:
        while not self._stop.wait(SERVICE_POLL):  # bounded by stop()
            parked = self.generator.take_handshake_requests()
            if parked:
                self._renew(parked)

    def _renew(self, parked: list[int]) -> None:
        sockets = [self.sockets[index] for index in parked]
        if self.close:
            for index, sock in zip(parked, sockets, strict=True):
                self._close_notify(index, sock)
        sessions: list[ClientSession] = []
        for _ in range(self.burst):
            try:
                sessions = handshake_all(
                    sockets, lambda i: self.make_handshake(parked[i]), parallel=len(sockets)
                )
            except HandshakeError:
                self.failures += len(parked)
                return  # the clients stay parked: counted, as a failed handshake stops them
            self.handshakes += len(sessions)
        for index, session in zip(parked, sessions, strict=True):
            self.generator.resume(index, session)

    def _close_notify(self, index: int, sock: socket.socket) -> None:
        """RFC 5246 §7.2.1: end the old session with a close_notify alert."""
        cipher = self.generator.cipher(index)
        alert = cipher.seal(cipher.epoch, self.generator.write_seq(index), ALERT, b"\x01\x00")
        with contextlib.suppress(OSError):
            sock.send(alert)
