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
import random
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
    renew.add_argument("--handshakes-full", type=int, default=None, metavar="N",
                       help="after every N-th response a client does a new full handshake "
                       "(default: env COAPS_HANDSHAKES_FULL or 0)")  # fmt: skip
    renew.add_argument("--handshakes-close", type=int, default=None, metavar="N",
                       help="after every N-th response a client closes its session "
                       "(close_notify) and does a new handshake (default: env "
                       "COAPS_HANDSHAKES_CLOSE or 0)")  # fmt: skip
    group.add_argument(
        "--handshakes-burst",
        type=int,
        default=None,
        metavar="M",
        help="with --handshakes-full/-close: M handshakes in a row (default: env "
        "COAPS_HANDSHAKES_BURST or 1)",
    )
    group.add_argument(
        "--handshakes-parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"DTLS handshakes in flight at once (default {DEFAULT_PARALLEL})",
    )
    add_dtls_arguments(group)  # type: ignore[arg-type]


#: benchmark.sh's environment: the defaults of --handshakes-full/-close/-burst
HANDSHAKE_ENVIRONMENT = {
    "handshakes_full": "COAPS_HANDSHAKES_FULL",
    "handshakes_close": "COAPS_HANDSHAKES_CLOSE",
    "handshakes_burst": "COAPS_HANDSHAKES_BURST",
}


def handshake_defaults(args: argparse.Namespace, secure: bool) -> None:
    """Californium's Config.defaults(): an option not given takes its value from the
    environment (COAPS_HANDSHAKES_FULL, _CLOSE, _BURST), else 0 (a burst of 0 or 1 is one
    handshake). The environment counts for coaps:// only (Californium ignores it for the
    others); both FULL and CLOSE from it: close wins, as in Californium's next()."""
    given = {name for name in HANDSHAKE_ENVIRONMENT if getattr(args, name) is not None}
    for name, variable in HANDSHAKE_ENVIRONMENT.items():
        if name in given:
            continue
        value = 0
        text = os.environ.get(variable, "").strip() if secure else ""
        if text:
            try:
                value = int(text)
            except ValueError:
                raise HandshakeError(f"{variable} '{text}' is no number") from None
            if value < 0:
                raise HandshakeError(f"{variable} must not be negative")
        setattr(args, name, value)
    if "handshakes_full" in given or "handshakes_close" in given:
        # one given on the command line: the other one's environment does not count
        args.handshakes_full = args.handshakes_full if "handshakes_full" in given else 0
        args.handshakes_close = args.handshakes_close if "handshakes_close" in given else 0
    elif args.handshakes_full and args.handshakes_close:
        args.handshakes_full = 0
    args.handshakes_burst = max(1, args.handshakes_burst)


AUTHENTICATION_LINES = {
    "PSK": "Use PSK.",
    "RPK": "Use RPK.",
    "X509": "Use X509.",
    "ECDHE_PSK": "Use PSK/ECDHE.",
    "NONE": "No authentication.",
}


def authentication_line(args: argparse.Namespace, default: str = "PSK") -> str:
    """Californium's line for the first --auth mode; without --auth the first --cipher suite
    decides, else *default* (PSK for coaps, X509 for coaps+tcp, as cf-cli)."""
    from extplugtest.tools.oneshot import ToolError, parse_cipher_suites

    modes = [mode.strip().upper() for mode in (getattr(args, "auth", None) or "").split(":")]
    modes = [mode for mode in modes if mode]
    if not modes:
        try:
            suites = parse_cipher_suites(getattr(args, "cipher", None) or "")
        except ToolError as exc:
            raise HandshakeError(str(exc)) from None
        if suites:
            suite = suites[0]
            modes = ["X509" if suite.uses_certificate else suite.key_exchange.value]
    return AUTHENTICATION_LINES.get(modes[0] if modes else default, f"Use {default}.")


def identity_line(args: argparse.Namespace) -> str | None:
    """Californium's ``ID: <identity>[, <secret>]`` before the first request, when the first
    client's identity is given (-i, or its --psk-store entry)."""
    if args.psk_store:
        store = read_psk_store(args.psk_store)
        identity, secret = store[args.psk_index % len(store)]
        return f"ID: {identity.decode(errors='replace')}, {secret.decode(errors='replace')}"
    if args.identity:
        return f"ID: {args.identity}" + (f", {args.secret}" if args.secret is not None else "")
    return None


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
    started: float


@dataclass
class Handshakes:
    """What run_handshakes did, per socket: the session (None: failed), the handshake's
    duration in seconds, and why it failed (None: it did not)."""

    sessions: list[ClientSession | None]
    durations: list[float]
    errors: list[str | None]


def run_handshakes(
    sockets: list[socket.socket],
    make_handshake: Callable[[int], ClientHandshake],
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Callable[[int, int], None] | None = None,
    progress_interval: float = 1.0,
    stop_at_failure: bool = True,
    cancel: threading.Event | None = None,
) -> Handshakes:
    """Handshake on every (connected, non-blocking) socket, *parallel* at a time. The first
    failure raises HandshakeError, or with *stop_at_failure* False is noted and the others go
    on; *cancel* set ends the handshakes still under way as failed. Bounded: every handshake
    ends within HANDSHAKE_TIMEOUT."""
    result = Handshakes([None] * len(sockets), [0.0] * len(sockets), [None] * len(sockets))
    selector = selectors.DefaultSelector()
    pending: dict[int, _Pending] = {}
    next_index = done = 0
    next_progress = time.monotonic() + progress_interval

    def failed(index: int, reason: str) -> None:
        nonlocal done
        if stop_at_failure:
            raise HandshakeError(f"client {index}: {reason}")
        result.errors[index] = reason
        state = pending.pop(index)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(state.sock)
        done += 1

    try:
        while done < len(sockets):
            now = time.monotonic()
            while next_index < len(sockets) and len(pending) < max(1, parallel):
                handshake = make_handshake(next_index)
                sock = sockets[next_index]
                pending[next_index] = _Pending(
                    sock,
                    handshake,
                    now + FIRST_RETRANSMISSION,
                    FIRST_RETRANSMISSION,
                    now + HANDSHAKE_TIMEOUT,
                    now,
                )
                selector.register(sock, selectors.EVENT_READ, next_index)
                next_index += 1
                try:
                    _send(sock, [handshake.start()])
                except HandshakeError as exc:
                    failed(next_index - 1, str(exc))
            for key, _ in selector.select(timeout=0.05):
                index = key.data
                state = pending[index]
                try:
                    for _ in range(16):  # bounded: a flight is a few datagrams
                        try:
                            datagram = state.sock.recv(65536)
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError as exc:
                            raise HandshakeError(exc.strerror or str(exc)) from None
                        try:
                            _send(state.sock, state.handshake.on_datagram(datagram))
                        except HandshakeFailure as failure:
                            raise HandshakeError(f"DTLS handshake failed: {failure}") from None
                        if state.handshake.done:
                            break
                except HandshakeError as exc:
                    failed(index, str(exc))
                    continue
                if state.handshake.done:
                    result.sessions[index] = state.handshake.session
                    result.durations[index] = time.monotonic() - state.started
                    selector.unregister(state.sock)
                    del pending[index]
                    done += 1
            now = time.monotonic()
            for index, state in list(pending.items()):
                if cancel is not None and cancel.is_set():
                    failed(index, "cancelled")
                elif now >= state.deadline:
                    failed(index, f"no DTLS handshake within {HANDSHAKE_TIMEOUT:g} s")
                elif now >= state.resend_at:  # RFC 6347 §4.2.4.1: resend, double the timer
                    try:
                        _send(state.sock, state.handshake.retransmit())
                    except HandshakeError as exc:
                        failed(index, str(exc))
                        continue
                    state.interval = min(2 * state.interval, MAX_RETRANSMISSION)
                    state.resend_at = now + state.interval
            if progress is not None and now >= next_progress:
                progress(done, len(sockets))
                next_progress = now + progress_interval
    finally:
        selector.close()
    return result


def handshake_all(
    sockets: list[socket.socket],
    make_handshake: Callable[[int], ClientHandshake],
    *,
    parallel: int = DEFAULT_PARALLEL,
    progress: Callable[[int, int], None] | None = None,
    progress_interval: float = 1.0,
    durations: list[float] | None = None,
) -> list[ClientSession]:
    """Handshake on every (connected, non-blocking) socket, *parallel* at a time; returns the
    sessions in socket order (*durations* gets each one's seconds), or raises HandshakeError
    with the first failure."""
    result = run_handshakes(
        sockets, make_handshake, parallel=parallel, progress=progress,
        progress_interval=progress_interval,
    )  # fmt: skip
    if durations is not None:
        durations.extend(result.durations)
    return [session for session in result.sessions if session is not None]


def _send(sock: socket.socket, datagrams: list[bytes]) -> None:
    for datagram in datagrams:
        try:
            sock.send(datagram)
        except (BlockingIOError, InterruptedError):
            pass  # lost like a dropped datagram: the flight timer resends it
        except OSError as exc:
            raise HandshakeError(f"cannot send the DTLS handshake: {exc.strerror}") from None


def handshake_factory(args: argparse.Namespace, clients: int) -> Callable[[int], ClientHandshake]:
    """Client i's ClientHandshake, from the coaps options. With RPK (and no -c) every client
    has a key pair of its own (Californium: a fresh secp256r1 key pair per client, so that
    each one is a principal of its own), made at its first handshake and kept."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from extplugtest.dtls.messages import CertificateType
    from extplugtest.dtls.pki import CertificateCredentials
    from extplugtest.tools.oneshot import ToolError, dtls_options

    try:
        options: DtlsClientOptions = dtls_options(args)
    except ToolError as exc:
        raise HandshakeError(str(exc)) from None
    if not 0 <= args.cid_length <= 16:
        raise HandshakeError("--cid-length must be 0..16")
    credentials = psk_credentials(args, clients)
    own_keys = (
        options.certificate is not None
        and options.certificate_types == (CertificateType.RAW_PUBLIC_KEY,)
        and not getattr(args, "cert", None)
    )
    keys: dict[int, CertificateCredentials] = {}

    def certificate(index: int) -> CertificateCredentials | None:
        if not own_keys:
            return options.certificate
        if index not in keys:
            keys[index] = CertificateCredentials(ec.generate_private_key(ec.SECP256R1()), ())
        return keys[index]

    def make(index: int) -> ClientHandshake:
        identity, secret = credentials[index]
        return ClientHandshake(
            identity,
            secret,
            cid=os.urandom(args.cid_length),
            cipher_suites=options.cipher_suites,
            certificate=certificate(index),
            certificate_types=options.certificate_types,
            trust_store=options.trust_store,
        )

    return make


#: a parked client waits at most this long before the service looks again
SERVICE_POLL = 0.005


#: after a failed handshake of a client that recovers, the next one after this (+ random)
RETRY_DELAY = 1.0
RETRY_JITTER = 0.5


class HandshakeService:
    """The DTLS handshakes during the run, for the clients the generator parks: ``--handshakes
    -full N`` / ``--handshakes-close N`` (Californium's BenchmarkClient) park a client after
    every N-th response, for a new session (``--handshakes-burst M``: M handshakes in a row;
    after a close_notify with ``--handshakes-close``); with ``--no-stop`` a client whose CON
    request failed is parked for a new full handshake (Californium forces one then: the
    server may have lost the session, a restarted node). This thread gives each its session
    and hands it back; a failed handshake after a failure is tried again after RETRY_DELAY
    (with *retry*, also one of --handshakes-full/-close), else the client stays parked.
    Runs while the generator runs; every wait is bounded (stop() cancels)."""

    def __init__(
        self,
        generator: Any,
        socket_for: Callable[[int], socket.socket],
        make_handshake: Callable[[int], ClientHandshake],
        *,
        close: bool,
        burst: int,
        retry: bool = False,
        release: Callable[[socket.socket], None] | None = None,
    ) -> None:
        self.generator = generator
        self.socket_for = socket_for
        self.release = release
        self.make_handshake = make_handshake
        self.close = close
        self.burst = max(1, burst)
        self.retry = retry
        self.handshakes = 0
        self.failures = 0
        self._again: dict[int, float] = {}  # client -> when its next attempt is due
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="handshakes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _serve(self) -> None:
        while not self._stop.wait(SERVICE_POLL):  # bounded by stop()
            renew: list[int] = []
            recover: list[int] = []
            for index, after_failure in self.generator.take_handshake_requests():
                (recover if after_failure else renew).append(index)
            now = time.monotonic()
            for index, due in list(self._again.items()):
                if due <= now:
                    del self._again[index]
                    recover.append(index)
            if renew:
                self._handshakes(renew, close=self.close, rounds=self.burst)
            if recover:
                self._handshakes(recover, close=False, rounds=1)

    def _handshakes(self, parked: list[int], *, close: bool, rounds: int) -> None:
        sockets: list[socket.socket] = []
        usable: list[int] = []
        for index in parked:
            try:
                sockets.append(self.socket_for(index))
            except OSError:
                self._failed(index)
                continue
            usable.append(index)
        parked = usable
        try:
            if close:
                for index, sock in zip(parked, sockets, strict=True):
                    self._close_notify(index, sock)
            for sock in sockets:
                _drain(sock)  # what the old session left: not for the handshake
            left = list(range(len(parked)))
            last: dict[int, tuple[ClientSession, float]] = {}
            for _ in range(rounds):
                current = list(left)

                def make(position: int, current: list[int] = current) -> ClientHandshake:
                    return self.make_handshake(parked[current[position]])

                result = run_handshakes(
                    [sockets[i] for i in current], make, parallel=len(current),
                    stop_at_failure=False, cancel=self._stop,
                )  # fmt: skip
                still = []
                for position, i in enumerate(left):
                    session = result.sessions[position]
                    if session is None:
                        self._failed(parked[i])
                        last.pop(i, None)
                        continue
                    self.handshakes += 1
                    last[i] = (session, result.durations[position])
                    still.append(i)
                left = still
            for i, (session, duration) in last.items():
                self.generator.resume(parked[i], session, duration)
        finally:
            if self.release is not None:
                for sock in sockets:
                    self.release(sock)

    def _failed(self, index: int) -> None:
        self.failures += 1
        if self.retry and not self._stop.is_set():
            self._again[index] = time.monotonic() + RETRY_DELAY + random.random() * RETRY_JITTER
        # else: the client stays parked (counted), as a failed handshake stops it

    def _close_notify(self, index: int, sock: socket.socket) -> None:
        """RFC 5246 §7.2.1: end the old session with a close_notify alert."""
        cipher = self.generator.cipher(index)
        alert = cipher.seal(cipher.epoch, self.generator.write_seq(index), ALERT, b"\x01\x00")
        with contextlib.suppress(OSError):
            sock.send(alert)


def _drain(sock: socket.socket) -> None:
    """Read what waits on the socket (bounded)."""
    for _ in range(256):
        try:
            sock.recv(65536)
        except OSError:  # BlockingIOError: nothing left; others: the handshake will say
            return
