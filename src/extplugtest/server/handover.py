"""Graceful handover over HTTPS: the third way to keep the DTLS connections across a restart
(inventory §1.1, §5.10, §5.11, §6.6), beside the store file (server/restart.py) and the console.

* **Restore server** (``--k8s-restore ADDR`` or ``--local-restore ADDR``): HTTPS on *ADDR*,
  client certificates required and verified. ``GET /restore`` stops the DTLS endpoints (the
  *provide* callback: stop, save, ``encode_store``) and answers ``200`` with the plain store
  stream (``application/octet-stream``, ``Content-Length``; unencrypted, the channel is mutual
  TLS), then calls *on_served* (the old server turns not-ready, then not-alive). Other paths
  answer ``404``, other methods ``405``; one request per connection, the request line and
  headers bounded in size, count and time (the reader is cluster/monitor.py's), at most
  ``MAX_CONNECTIONS`` connections handled at a time, TLS handshakes bounded in time.

  A ``/restore`` after the store went out answers **410 Gone**, not an empty store: the
  connections are gone from this server, and an empty store would let a second (misdirected)
  downloader report a successful restore of nothing; 410 makes its client say why. A download
  that breaks off before the whole answer was written keeps the store for the next request (the
  client's retry), so a broken transfer loses nothing.

* **Download client** (at start, before the DTLS endpoints serve): ``GET /restore`` from the
  other server (``--other-restore``, or in k8s the peer pod's IP at the ``--k8s-restore``
  port), mutual TLS, the server verified against the CA but not its name (pods are addressed
  by IP: trust only a private CA). At most ``MAX_STORE_SIZE`` bytes, a read timeout, up to
  three attempts 200-400 ms apart while the server is unreachable or answers 503. Every failure
  is one ``RestoreError`` with a one-line message.

* **k8s peer selection** (§5.11 step 5): in a cluster (StatefulSets ``<name>-a``/``-b``) the
  pod of the other set with the same ordinal; otherwise (a Deployment) the pods with the own
  value of ``KUBECTL_RESTORE_SELECTOR_LABEL`` (default ``app``). The peer must carry
  ``restore=true`` and be the only one; a pod that carries ``restore=true`` itself is an old
  pod that restarted and restores nothing.

Where we differ from Californium, on purpose: TLS 1.3 only on both ends (ours talk to ours);
the answer has a ``Content-Length`` instead of chunks; 410 for a second download; the peer must
be in phase ``Running`` (as for discovery in cluster/k8s.py); in cluster mode the peer is
listed by its ``statefulset.kubernetes.io/pod-name`` label instead of fetched by name, so a
missing peer (the very first deployment) is an empty list rather than a 404.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import random
import re
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from extplugtest.cluster.k8s import K8sApiSettings, K8sDiscoverClient, K8sError, Pod
from extplugtest.cluster.monitor import (
    MAX_LINE,
    BadRequest,
    parse_header_line,
    read_request,
    response_head,
)
from extplugtest.cluster.options import ClusterOptionError, HostPort, parse_host_port
from extplugtest.coap.transport_tcp import demo_certs, tls_server_context
from extplugtest.dtls.persistence import (
    MAX_STORE_SIZE,
    PersistenceError,
    SavedConnection,
    SavedStore,
    decode_store,
    encode_store,
)

__all__ = [
    "DEFAULT_MAX_AGE_HOURS",
    "DEFAULT_RESTORE_SELECTOR_LABEL",
    "RESTORE_LABEL",
    "RESTORE_PATH",
    "RESTORE_SELECTOR_ENV",
    "HandoverOptionError",
    "PeerChoice",
    "RestoreConfig",
    "RestoreError",
    "RestoreServer",
    "add_restore_options",
    "download_store",
    "find_restore_peer",
    "restore_client_context",
    "restore_config",
    "restore_from_peer",
    "restore_payload",
    "restore_peer_name",
    "restore_selector",
    "restore_server_context",
    "restore_skip_reason",
    "select_restore_peer",
]

log = logging.getLogger(__name__)

RESTORE_PATH = "/restore"
HOUR = 3600.0
DEFAULT_MAX_AGE_HOURS = 12.0  # --restore-max-age
ALPN = "http/1.1"

# the server
MAX_CONNECTIONS = 8  # one downloader is expected; a few more must not pile up handlers
REQUEST_TIMEOUT = 5.0  # the request line and headers
HANDSHAKE_TIMEOUT = 5.0
SEND_STALL_TIMEOUT = 15.0  # the body: no progress for this long aborts the answer
CHUNK = 64 * 1024

# the client (Californium: 3 attempts, read timeout 15 s)
ATTEMPTS = 3
RETRY_DELAY = (0.2, 0.4)  # seconds between attempts, uniformly drawn
CONNECT_TIMEOUT = 5.0  # TCP connect and TLS handshake
READ_TIMEOUT = 15.0  # no byte for this long ends an attempt
DOWNLOAD_DEADLINE = 120.0  # a whole attempt: a peer that drips its answer cannot hold the start
MAX_RESPONSE_HEADERS = 32

# k8s (§5.11)
RESTORE_LABEL = "restore"
RESTORE_SELECTOR_ENV = "KUBECTL_RESTORE_SELECTOR_LABEL"
DEFAULT_RESTORE_SELECTOR_LABEL = "app"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
HOSTNAME_PATTERN = re.compile(r"(.*-)([ab])(-[0-9]+)")


class RestoreError(Exception):
    """No restore: the peer could not be found or asked, or its answer is no store. str() is
    one line for the log."""


class HandoverOptionError(ValueError):
    """A restore option, or a combination of them, that cannot work; str() is one line."""


def _one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


# -- TLS -------------------------------------------------------------------------------------


def restore_server_context(
    certificate: Path | None = None, key: Path | None = None, trust: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.3 with the server certificate (default: the demo one, CN=cf-server); client
    certificates are required and verified against *trust* (default: the demo CA)."""
    certs = demo_certs()
    context = tls_server_context(
        certificate or certs / "server.pem",
        key or certs / "server.key",
        trust or certs / "ca.pem",
        "NEEDED",
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN])
    return context


def restore_client_context(
    certificate: Path | None = None, key: Path | None = None, trust: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.3 with the client certificate (default: the demo one, CN=cf-client); the server
    is verified against *trust* (default: the demo CA) but its name is not checked: pods are
    addressed by IP (Californium does the same; trust only a private CA)."""
    certs = demo_certs()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(trust or certs / "ca.pem")
    context.load_cert_chain(certificate or certs / "client.pem", key or certs / "client.key")
    context.set_alpn_protocols([ALPN])
    return context


# -- the restore server ----------------------------------------------------------------------


def restore_payload(connectors: Mapping[str, Iterable[SavedConnection]], max_age: float) -> bytes:
    """The plain store stream of the connections active within *max_age* seconds
    (``--restore-max-age``; Californium filters when it writes /restore)."""
    return encode_store(
        {
            label: [saved for saved in connections if saved.age <= max_age]
            for label, connections in connectors.items()
        }
    )


class RestoreServer:
    """``GET /restore`` over mutual TLS, answered once with the store of *provide*.

    *provide* runs on the event loop at the first ``GET /restore``: it stops the DTLS
    endpoints, saves them and returns the plain store stream (``encode_store``,
    ``restore_payload``). *on_served* runs once, after the whole answer was written.
    ``handing_over`` is True from the call of *provide* on (the DTLS endpoints are stopped:
    not ready), ``served`` once the store went out (later requests: 410 Gone).
    """

    def __init__(
        self,
        provide: Callable[[], bytes],
        on_served: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.provide = provide
        self.on_served = on_served
        self.ssl_context = ssl_context if ssl_context is not None else restore_server_context()
        self.handing_over = False
        self.served = False
        self.requests = 0
        self.rejected = 0
        self._payload: bytes | None = None
        self._connections = 0
        self._lock = asyncio.Lock()  # one download at a time
        self._server: asyncio.Server | None = None

    async def start(self, host: str | None, port: int) -> asyncio.Server:
        """Listen on *host* (None or "": all addresses) and *port* (0: any)."""
        self._server = await asyncio.start_server(
            self._handle,
            host or None,
            port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            limit=MAX_LINE,
        )
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            self.rejected += 1
            writer.close()
            return
        self._connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError) as error:
            log.info("/restore: %s", _one_line(error))
        finally:
            self._connections -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(read_request(reader), REQUEST_TIMEOUT)
        except (asyncio.TimeoutError, BadRequest):
            await self._send(writer, 400, b"BAD REQUEST\n")
            return
        self.requests += 1
        if request.path != RESTORE_PATH:
            await self._send(writer, 404, b"NOT FOUND\n")
        elif request.method != "GET":
            await self._send(writer, 405, b"METHOD NOT ALLOWED\n", extra=("Allow: GET",))
        else:
            await self._restore(reader, writer)

    async def _restore(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._lock:
            if self.served:
                await self._send(writer, 410, b"GONE: the DTLS connections were handed over\n")
                return
            if self._payload is None:
                try:
                    payload = self.provide()
                except Exception:
                    log.exception("/restore: the store could not be made")
                    await self._send(writer, 500, b"INTERNAL SERVER ERROR\n")
                    return
                self._payload = payload
                self.handing_over = True
            payload = self._payload
            if not await self._send(
                writer, 200, payload, "application/octet-stream", reader=reader
            ):
                log.warning("/restore: the download broke off; the store is kept for a retry")
                return
            self._payload = None
            self.served = True
        peer = writer.get_extra_info("peername")
        log.warning("/restore: %d bytes of DTLS connections handed over to %s", len(payload), peer)
        if self.on_served is not None:
            try:
                self.on_served()
            except Exception:
                log.exception("/restore: on_served failed")

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        extra: Iterable[str] = (),
        reader: asyncio.StreamReader | None = None,
    ) -> bool:
        """The answer in pieces; False (connection aborted) when the peer stops taking it.
        With *reader*, True only when the peer confirms it has it all: the download client
        closes in order (TLS close_notify, FIN) once it read Content-Length bytes, and aborts
        (a reset) on any failure; a reset is also what a flushed write cannot tell apart from
        a delivered one, so the end of the input decides."""
        view = memoryview(body)
        written = False
        try:
            writer.write(response_head(status, len(body), content_type, extra))
            for offset in range(0, len(view), CHUNK):
                writer.write(view[offset : offset + CHUNK])
                await asyncio.wait_for(writer.drain(), SEND_STALL_TIMEOUT)
            written = True
            await asyncio.wait_for(writer.drain(), SEND_STALL_TIMEOUT)
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            if reader is None or not written:
                writer.transport.abort()
                return False
            # (the peer may have closed in order already, after reading it all: see below)
        if reader is None:
            return True
        try:
            more = await asyncio.wait_for(reader.read(1), SEND_STALL_TIMEOUT)
        except (ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            more = b"reset"
        if more:  # a reset, a timeout, or bytes no download client sends
            writer.transport.abort()
            return False
        return True


# -- the download client ---------------------------------------------------------------------


class _Final(RestoreError):
    """Asking again will not help."""


def _describe(host: str, port: int) -> str:
    return str(HostPort(host, port))


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
    except asyncio.LimitOverrunError:
        raise _Final("answer line too long") from None
    if len(line) > MAX_LINE:
        raise _Final("answer line too long")
    return line


async def _read_body(reader: asyncio.StreamReader, length: int | None, max_size: int) -> bytes:
    """*length* bytes, or up to the end (at most *max_size* + 1)."""
    want = max_size + 1 if length is None else length
    body = bytearray()
    while len(body) < want:  # bounded: every round reads at least one byte or ends
        piece = await asyncio.wait_for(reader.read(min(CHUNK, want - len(body))), READ_TIMEOUT)
        if not piece:
            if length is not None:
                raise asyncio.IncompleteReadError(bytes(body), length)
            break
        body += piece
    if len(body) > max_size:
        raise _Final(f"the store is above the limit of {max_size} bytes")
    return bytes(body)


async def _fetch(host: str, port: int, context: ssl.SSLContext, max_size: int) -> bytes:
    """One attempt: the body of a 200 answer. Raises _Final, RestoreError (worth another
    attempt) or the I/O errors of the connection."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host, port, ssl=context, ssl_handshake_timeout=CONNECT_TIMEOUT, limit=MAX_LINE
        ),
        CONNECT_TIMEOUT,
    )
    try:
        authority = _describe(host, port)
        writer.write(
            f"GET {RESTORE_PATH} HTTP/1.1\r\nHost: {authority}\r\n"
            "Accept: application/octet-stream\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        try:
            first = await _read_line(reader)
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise
            # TLS 1.3: a server that refuses our certificate closes after its handshake,
            # which the client finished already (a busy server closes the same way)
            raise RestoreError(
                "closed without an answer: our client certificate refused, or the server busy"
            ) from None
        status_line = first.decode("latin-1").rstrip("\r\n")
        version, _, rest = status_line.partition(" ")
        code_text, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code_text) != 3 or not code_text.isdigit():
            raise _Final("not an HTTP answer")
        status = int(code_text)
        headers: dict[str, str] = {}
        for _ in range(MAX_RESPONSE_HEADERS + 1):
            line = await _read_line(reader)
            if line in (b"\r\n", b"\n"):
                break
            if len(headers) == MAX_RESPONSE_HEADERS:
                raise _Final("too many headers in the answer")
            try:
                name, value = parse_header_line(line)
            except BadRequest:
                raise _Final("bad header line in the answer") from None
            headers.setdefault(name, value)
        if status == 503:
            raise RestoreError("HTTP 503: not ready to hand over")
        if status == 410:
            raise _Final("HTTP 410: the connections were handed over already")
        if status != 200:
            raise _Final(f"HTTP {status} {_one_line(reason)}".rstrip())
        if "transfer-encoding" in headers:
            raise _Final("a chunked answer (Transfer-Encoding) is not supported")
        length: int | None = None
        if "content-length" in headers:
            text = headers["content-length"]
            if not text.isdigit() or len(text) > 18:
                raise _Final(f"bad Content-Length {text!r}")
            length = int(text)
            if length > max_size:
                raise _Final(f"the store of {length} bytes is above the limit of {max_size}")
        body = await _read_body(reader, length, max_size)
        # An orderly close (close_notify, FIN) tells the server we have it all: only then
        # does it let the connections go (RestoreServer._send); any failure aborts instead.
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), CONNECT_TIMEOUT)
        return body
    finally:
        if not writer.is_closing():
            writer.transport.abort()  # a failure: the server keeps the store for a retry


async def download_store(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    attempts: int = ATTEMPTS,
    max_size: int = MAX_STORE_SIZE,
) -> SavedStore:
    """The store of ``GET https://host:port/restore``: up to *attempts* tries, 200-400 ms
    apart, while the server cannot be reached, breaks off or answers 503. Raises RestoreError
    (only), with a one-line message."""
    context = ssl_context if ssl_context is not None else restore_client_context()
    where = f"https://{_describe(host, port)}{RESTORE_PATH}"
    reason = "no attempt"
    for attempt in range(1, attempts + 1):
        try:
            body = await asyncio.wait_for(_fetch(host, port, context, max_size), DOWNLOAD_DEADLINE)
        except _Final as error:
            raise RestoreError(f"{where}: {error}") from None
        except ssl.SSLCertVerificationError as error:
            raise RestoreError(
                f"{where}: server certificate not trusted: {_one_line(error.verify_message)}"
            ) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as error:
            reason = f"TLS connection closed: {_one_line(error)}"
        except ssl.SSLError as error:  # an alert, e.g. our certificate refused
            raise RestoreError(f"{where}: TLS: {_one_line(error.reason or error)}") from None
        except asyncio.IncompleteReadError as error:
            reason = f"answer cut short after {len(error.partial)} bytes"
        except asyncio.TimeoutError:
            reason = "timed out"
        except OSError as error:
            reason = _one_line(os.strerror(error.errno) if error.errno else error)
        except RestoreError as error:
            reason = str(error)
        else:
            try:
                return decode_store(body, max_size)
            except PersistenceError as error:
                raise RestoreError(f"{where}: not a store of DTLS connections: {error}") from None
        log.info("restore: attempt %d of %d at %s: %s", attempt, attempts, where, reason)
        if attempt < attempts:
            await asyncio.sleep(random.uniform(*RETRY_DELAY))
    raise RestoreError(f"{where}: failed after {attempts} attempts: {reason}")


# -- options ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestoreConfig:
    """``--local-restore`` + ``--other-restore``, or ``--k8s-restore``; ``--restore-max-age``."""

    local: HostPort  # the own /restore server ("" host: all addresses)
    other: HostPort | None  # where to download from; None: k8s (the peer pod, same port)
    max_age: float = DEFAULT_MAX_AGE_HOURS * HOUR  # seconds

    @property
    def k8s(self) -> bool:
        return self.other is None


def add_restore_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group(
        "graceful handover over HTTPS",
        "a new server downloads the DTLS connections of the old one from its HTTPS /restore "
        "(mutual TLS); the old one stops its DTLS endpoints when it hands them over",
    )
    group.add_argument(
        "--k8s-restore",
        metavar="ADDR",
        help="k8s: /restore server on ADDR (e.g. :5884); download from the peer pod (the other "
        "StatefulSet's pod of the same ordinal, or the pod of the Deployment) with label "
        "restore=true, same port",
    )
    group.add_argument(
        "--local-restore",
        metavar="ADDR",
        help="/restore server on ADDR (with --other-restore)",
    )
    group.add_argument(
        "--other-restore",
        metavar="ADDR",
        help="download the connections at start from the /restore server on ADDR "
        "(:port: this host; with --local-restore)",
    )
    group.add_argument(
        "--restore-max-age",
        metavar="HOURS",
        help=f"hand over only connections active within this many hours "
        f"(default: {DEFAULT_MAX_AGE_HOURS:g})",
    )
    return group


def _address(option: str, text: str) -> HostPort:
    try:
        return parse_host_port(text)
    except ClusterOptionError as error:
        raise HandoverOptionError(f"{option}: {error}") from None


def restore_config(args: argparse.Namespace) -> RestoreConfig | None:
    """The RestoreConfig of parsed *args*, None without restore options; raises
    HandoverOptionError (exit with usage)."""
    k8s, local, other = args.k8s_restore, args.local_restore, args.other_restore
    max_age = DEFAULT_MAX_AGE_HOURS
    if args.restore_max_age is not None:
        try:
            max_age = float(args.restore_max_age)
        except ValueError:
            raise HandoverOptionError(
                f"--restore-max-age: {args.restore_max_age!r} is not a number of hours"
            ) from None
        if not (math.isfinite(max_age) and max_age > 0):
            raise HandoverOptionError("--restore-max-age must be more than 0 hours")
    if k8s is not None:
        if local is not None or other is not None:
            raise HandoverOptionError("--k8s-restore excludes --local-restore and --other-restore")
        return RestoreConfig(_address("--k8s-restore", k8s), None, max_age * HOUR)
    if local is None and other is None:
        if args.restore_max_age is not None:
            raise HandoverOptionError(
                "--restore-max-age needs --k8s-restore or --local-restore and --other-restore"
            )
        return None
    if local is None or other is None:
        raise HandoverOptionError("--local-restore and --other-restore go together")
    local_address = _address("--local-restore", local)
    other_address = _address("--other-restore", other)
    if other_address == local_address or (
        not other_address.host and other_address.port == local_address.port
    ):
        raise HandoverOptionError(
            "--other-restore is this server's own --local-restore: use another port"
        )
    return RestoreConfig(local_address, other_address, max_age * HOUR)


# -- the k8s peer (§5.11 step 5) -------------------------------------------------------------


def restore_peer_name(hostname: str) -> str | None:
    """The pod of the other StatefulSet with the same ordinal: ``<name>-a-<n>`` <->
    ``<name>-b-<n>``; None if *hostname* has not that form."""
    match = HOSTNAME_PATTERN.fullmatch(hostname)
    if match is None:
        return None
    head, side, ordinal = match.groups()
    return f"{head}{'b' if side == 'a' else 'a'}{ordinal}"


def _marked(pod: Pod) -> bool:
    return str(pod.labels.get(RESTORE_LABEL, "")).lower() == "true"


def restore_skip_reason(own: Pod, *, cluster: bool) -> str | None:
    """Why this pod restores nothing at all, or None if it looks for a peer."""
    if _marked(own):
        return f"{own.name} carries {RESTORE_LABEL}=true: an old pod that restarted"
    if cluster and restore_peer_name(own.name) is None:
        return f"{own.name} is not <name>-(a|b)-<n>: no peer in another StatefulSet"
    return None


def restore_selector(own: Pod, *, cluster: bool, label: str) -> str:
    """The label selector that lists the peer candidates: in a cluster the peer pod by name,
    otherwise the own value of *label*. Raises K8sError when the own pod lacks *label*."""
    if cluster:
        peer = restore_peer_name(own.name)
        if peer is None:
            raise K8sError(f"{own.name} is not <name>-(a|b)-<n>")
        return f"{POD_NAME_LABEL}={peer}"
    value = own.labels.get(label)
    if value is None:
        raise K8sError(f"own pod has no label {label!r} ({RESTORE_SELECTOR_ENV})")
    return f"{label}={value}"


@dataclass(frozen=True, slots=True)
class PeerChoice:
    peer: Pod | None  # None: no restore (see reason)
    reason: str  # one line for the log
    retry: bool = False  # no peer yet, but asking again may find one


def select_restore_peer(own: Pod, pods: Iterable[Pod], *, cluster: bool) -> PeerChoice:
    """The restore peer of *own* among *pods* (a PodList, e.g. of ``restore_selector``):
    a running pod with an IP, not *own*, in a cluster the one named ``restore_peer_name``,
    marked ``restore=true``, and exactly one such."""
    skip = restore_skip_reason(own, cluster=cluster)
    if skip is not None:
        return PeerChoice(None, skip)
    wanted = restore_peer_name(own.name) if cluster else None
    candidates = [
        pod for pod in pods if pod.name != own.name and (wanted is None or pod.name == wanted)
    ]
    if wanted is not None and not candidates:
        return PeerChoice(None, f"no pod {wanted}: nothing to restore from")
    usable = [pod for pod in candidates if pod.ip and pod.phase == "Running"]
    marked = [pod for pod in usable if _marked(pod)]
    if len(marked) == 1:
        return PeerChoice(marked[0], f"restore from {marked[0].name} ({marked[0].ip})")
    if marked:
        names = ", ".join(sorted(pod.name for pod in marked))
        return PeerChoice(None, f"{len(marked)} pods carry {RESTORE_LABEL}=true: {names}", True)
    if not candidates:
        return PeerChoice(None, "no other pod", True)
    names = ", ".join(sorted(pod.name for pod in candidates))
    return PeerChoice(None, f"no running pod with {RESTORE_LABEL}=true among {names}", True)


def find_restore_peer(
    settings: K8sApiSettings,
    *,
    cluster: bool,
    env: Mapping[str, str] | None = None,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> Pod | None:
    """The restore peer through the k8s API (blocking; ``asyncio.to_thread`` from a loop):
    None when this pod restores nothing (logged), the peer, or RestoreError when none was
    found after *attempts* tries 200-400 ms apart."""
    env = os.environ if env is None else env
    label = env.get(RESTORE_SELECTOR_ENV) or DEFAULT_RESTORE_SELECTOR_LABEL
    # K8sDiscoverClient derives a node id from the pod name at construction; a Deployment's
    # pod name has no ordinal, and the id is not used here.
    settings = dataclasses.replace(settings, selector=None, node_id="0")
    reason = "no attempt"
    for attempt in range(1, attempts + 1):
        try:
            own = K8sDiscoverClient(settings, 0).own_pod()
            skip = restore_skip_reason(own, cluster=cluster)
            if skip is not None:
                log.info("restore: none: %s", skip)
                return None
            selector = restore_selector(own, cluster=cluster, label=label)
            peers = K8sDiscoverClient(dataclasses.replace(settings, selector=selector), 0)
            choice = select_restore_peer(own, peers.list_pods(), cluster=cluster)
        except K8sError as error:
            reason = _one_line(error)
        else:
            if choice.peer is not None:
                log.info("restore: %s", choice.reason)
                return choice.peer
            if not choice.retry:
                log.info("restore: none: %s", choice.reason)
                return None
            reason = choice.reason
        if attempt < attempts:
            sleep(random.uniform(*RETRY_DELAY))
    raise RestoreError(f"k8s: no restore peer after {attempts} attempts: {reason}")


# -- at start --------------------------------------------------------------------------------


async def restore_from_peer(
    config: RestoreConfig,
    load: Callable[[SavedStore], int],
    *,
    cluster: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    k8s_settings: K8sApiSettings | None = None,
) -> int:
    """At start: the peer's store downloaded and handed to *load* (e.g.
    ``lambda store: server.load_dtls(store.aged_until(time.time()), config.max_age)``), which
    returns how many connections it restored. No peer, or a failed download, is one warning
    and 0: the server starts without (Californium reports ready either way)."""
    try:
        if config.other is not None:
            host, port = config.other.host or "127.0.0.1", config.other.port
        else:
            try:
                settings = k8s_settings or K8sApiSettings.from_environment()
            except (ValueError, OSError) as error:
                raise RestoreError(f"k8s: {_one_line(error)}") from None
            pod = await asyncio.to_thread(find_restore_peer, settings, cluster=cluster)
            if pod is None or pod.ip is None:
                return 0
            host, port = pod.ip, config.local.port
        store = await download_store(host, port, ssl_context=ssl_context)
    except RestoreError as error:
        log.warning("no DTLS connections restored: %s", error)
        return 0
    restored = load(store)
    log.warning(
        "%d of %d DTLS connections restored from %s", restored, len(store), _describe(host, port)
    )
    return restored
