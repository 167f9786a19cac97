"""``extclient get|post|put|delete|fetch URI`` and ``extclient observe URI``: one request, or
one observation, as Californium's cf-client sends them (plain ``coap://`` for now).

Without ``-v`` only the response payload is printed: text as text, JSON pretty-printed, CBOR in
diagnostic notation, anything else as hex. ``-v`` adds one line per message sent or received,
as Californium's MessageTracer logs them (every block of a block-wise transfer, every ACK).
Exit code 0 for a 2.xx response, 1 for an error response or a failed exchange (one line on
stderr), 2 for bad usage, 130 when interrupted.

Differences from Californium, on purpose:

* ``--timeout MS`` (default 30000) bounds every exchange, including the CON retransmissions,
  so that an unreachable server is reported in half a minute; Californium waits for the whole
  exchange lifetime. An ICMP port unreachable ends the request at once.
* A payload without a type is sent with a Content-Format: text/plain for ``--payload`` and
  ``--payload-random``, application/octet-stream for the others.
* ``observe`` counts the first response as a notification (RFC 7641 does), re-registers when
  no notification came within Max-Age + 2 s, and cancels proactively (GET with Observe=1)
  at the end, also after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import math
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cbor2
import uvloop

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import MIME_TYPES, Code, ContentFormat, Option, Type, mime_type
from extplugtest.tools.request import (
    MAX_BODY_SIZE,
    ClientError,
    CoapClient,
    Observation,
    Response,
    Target,
    Transport,
    code_name,
    describe,
    is_success,
    open_transport,
    parse_uri,
)

if TYPE_CHECKING:  # coaps modules are imported when used: coap:// starts faster without
    from extplugtest.dtls.ciphersuites import CipherSuite
    from extplugtest.dtls.pki import CertificateCredentials
    from extplugtest.tools.dtls_transport import DtlsClientOptions

T = TypeVar("T")

METHODS = {
    "get": Code.GET,
    "post": Code.POST,
    "put": Code.PUT,
    "delete": Code.DELETE,
    "fetch": Code.FETCH,
}
#: --json, --cbor, ...: Content-Format of a payload, Accept of a request without one
SHORTCUTS = {
    "text": ContentFormat.TEXT_PLAIN,
    "json": ContentFormat.JSON,
    "cbor": ContentFormat.CBOR,
    "xml": ContentFormat.XML,
    "octets": ContentFormat.OCTET_STREAM,
}
BLOCK_SIZES = (16, 32, 64, 128, 256, 512, 1024)
DEFAULT_TIMEOUT_MS = 30_000
MAX_TIMEOUT_MS = 600_000
MAX_DURATION = 7 * 24 * 3600.0
DEFAULT_MAX_AGE = 60  # RFC 7252 §5.10.5
REREGISTER_BACKOFF = 2.0  # Californium's NOTIFICATION_REREGISTRATION_BACKOFF
CANCEL_TIMEOUT = 5.0  # the proactive cancel after Ctrl-C waits this long at most
HEX_LINE = 32  # bytes per line of a binary payload


class ToolError(Exception):
    """A failure reported as one line on stderr; *exit_code* 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while waiting."""


# -- command line ----------------------------------------------------------------------------


def add_content_type_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    for name, number in SHORTCUTS.items():
        group.add_argument(
            f"--{name}",
            dest="ctype",
            action="store_const",
            const=number,
            help=f"use {mime_type(number)} (Content-Format of a payload, else Accept)",
        )
    group.add_argument(
        "--ctype",
        dest="ctype",
        type=parse_content_format,
        metavar="TYPE",
        help="content type as MIME type or number, e.g. application/json or 50",
    )


def add_transport_arguments(parser: argparse.ArgumentParser) -> None:
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--con", action="store_false", dest="non", default=False, help="CON request (default)"
    )
    kind.add_argument("--non", action="store_true", help="NON request")
    parser.add_argument(
        "--timeout", type=int, default=DEFAULT_TIMEOUT_MS, metavar="MS",
        help=f"longest wait for each response, retransmissions included "
        f"(default {DEFAULT_TIMEOUT_MS})",
    )  # fmt: skip
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="print every message sent and received (as Californium's MessageTracer)",
    )  # fmt: skip
    parser.add_argument(
        "-i", "--identity", help="PSK identity for coaps (default: a random cali.<hex> identity)"
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "-s", "--secret", help="PSK secret, UTF-8 (default: .fornium, as Californium's)"
    )
    secret.add_argument("--secrethex", metavar="HEX", help="PSK secret, hexadecimal")
    secret.add_argument("--secret64", metavar="B64", help="PSK secret, base64")
    parser.add_argument(
        "--psk-store", metavar="FILE",
        help="identity=base64 lines (as the benchmark's): the PSK is the --psk-index-th",
    )  # fmt: skip
    parser.add_argument(
        "--psk-index", type=int, default=0, metavar="N", help="entry of --psk-store (default 0)"
    )
    parser.add_argument(
        "--cid-length", type=int, metavar="N",
        help="coaps: a connection ID of N bytes for the server's records (0: support CIDs "
        "without one of ours; default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--local-port", type=int, metavar="PORT", help="local UDP port (default: any)"
    )
    add_dtls_arguments(parser)


def add_dtls_arguments(parser: argparse.ArgumentParser) -> None:
    """cf-cli's authentication options for coaps (inventory §3.1)."""
    parser.add_argument(
        "-a", "--auth", metavar="MODE[:MODE...]",
        help="coaps authentication: PSK (default), ECDHE_PSK, X509 or RPK (certificates with "
        "ECDHE_ECDSA); several separated by ':'",
    )  # fmt: skip
    parser.add_argument(
        "--cipher", metavar="SUITE[:SUITE...]",
        help="cipher suites to offer, IANA (TLS_...) or OpenSSL names (default: all that fit "
        "--auth)",
    )  # fmt: skip
    parser.add_argument(
        "-c", "--cert", metavar="FILE.pem",
        help="own certificate chain for X509/RPK, sent when the server asks (default: the "
        "demo client certificate, CN=cf-client)",
    )  # fmt: skip
    parser.add_argument(
        "--private-key", metavar="FILE.pem", help="private key of --cert (default: in --cert)"
    )
    parser.add_argument(
        "--anonymous", action="store_true",
        help="no client certificate (an empty one when the server asks)",
    )  # fmt: skip
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "-t", "--trust-store", "--trusts", metavar="FILE.pem",
        help="PEM bundle of the CAs the server's certificate must chain to (default: the demo "
        "CA)",
    )  # fmt: skip
    trust.add_argument(
        "--trust-all", action="store_true",
        help="accept any server certificate or raw public key (its signature still counts)",
    )  # fmt: skip


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", metavar="URI", help="coap://host[:port]/path?query (port 5683)")
    add_transport_arguments(parser)
    add_content_type_arguments(parser)
    parser.add_argument(
        "--accept", type=parse_content_format, metavar="TYPE",
        help="Accept option (MIME type or number); overrides the content type shortcut",
    )  # fmt: skip
    parser.add_argument(
        "--blocksize", type=int, metavar="N",
        help="block size 16..1024 (power of 2): early Block2 in every request, larger "
        "payloads in Block1 blocks of N bytes (default: block-wise above 1024 bytes)",
    )  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """get, post, put, delete, fetch."""
    add_common_arguments(parser)
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument("--payload", metavar="TEXT", help="payload, UTF-8")
    payload.add_argument("--payloadhex", metavar="HEX", help="payload, hexadecimal")
    payload.add_argument("--payload64", metavar="B64", help="payload, base64")
    payload.add_argument("--payload-file", metavar="FILE", help="payload from FILE")
    payload.add_argument(
        "--payload-random", type=int, metavar="N", help="N random printable ASCII characters"
    )


def add_observe_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--count", type=int, metavar="N",
        help="stop after N notifications, the first response included (default: no limit)",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, metavar="S",
        help="stop after S seconds (default: no limit; Ctrl-C stops, too)",
    )  # fmt: skip


def parse_content_format(text: str) -> int:
    """A Content-Format number from a number, a MIME type or a shortcut name (json, ...)."""
    value = text.strip().lower()
    if value.isdigit() and int(value) <= 0xFFFF:
        return int(value)
    if value in SHORTCUTS:
        return SHORTCUTS[value]
    for number, name in MIME_TYPES.items():
        if name == value:
            return number
    raise argparse.ArgumentTypeError(f"unknown content type '{text}'")


def validate(args: argparse.Namespace) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise ToolError(message, 2)

    check(0 < args.timeout <= MAX_TIMEOUT_MS, f"--timeout must be 1..{MAX_TIMEOUT_MS} ms")
    cid_length = getattr(args, "cid_length", None)
    check(cid_length is None or 0 <= cid_length <= 16, "--cid-length must be 0..16")
    local_port = getattr(args, "local_port", None)
    check(local_port is None or 0 <= local_port <= 65535, "--local-port must be 0..65535")
    check(getattr(args, "psk_index", 0) >= 0, "--psk-index must not be negative")
    blocksize = getattr(args, "blocksize", None)
    check(blocksize is None or blocksize in BLOCK_SIZES, "--blocksize must be 16, 32, ..., 1024")
    random_size = getattr(args, "payload_random", None)
    check(
        random_size is None or 0 <= random_size <= MAX_BODY_SIZE,
        f"--payload-random must be 0..{MAX_BODY_SIZE}",
    )
    count = getattr(args, "count", None)
    check(count is None or count >= 1, "--count must be at least 1")
    duration = getattr(args, "duration", None)
    check(
        duration is None or 0 < duration <= MAX_DURATION,
        f"--duration must be more than 0 and at most {MAX_DURATION:g} s",
    )


def target_of(text: str, default_port: int | None = None) -> Target:
    try:
        target = parse_uri(text, default_port)
        open_transport(target)  # only to check the scheme: a transport opens nothing yet
    except ValueError as exc:
        raise ToolError(str(exc), 2) from None
    return target


def read_payload(args: argparse.Namespace) -> tuple[bytes, int] | None:
    """The payload given on the command line and its default Content-Format, or None."""
    octets = ContentFormat.OCTET_STREAM
    if getattr(args, "payload", None) is not None:
        return args.payload.encode("utf-8"), ContentFormat.TEXT_PLAIN
    if getattr(args, "payload_random", None) is not None:
        data = bytes(random.choices(range(0x20, 0x7F), k=args.payload_random))
        return data, ContentFormat.TEXT_PLAIN
    try:
        if getattr(args, "payloadhex", None) is not None:
            return bytes.fromhex(args.payloadhex), octets
        if getattr(args, "payload64", None) is not None:
            return base64.b64decode(args.payload64, validate=True), octets
    except (ValueError, binascii.Error) as exc:
        raise ToolError(f"invalid payload: {exc}", 2) from None
    if getattr(args, "payload_file", None) is not None:
        try:
            with open(args.payload_file, "rb") as source:
                data = source.read(MAX_BODY_SIZE + 1)
        except OSError as exc:
            raise ToolError(f"cannot read {args.payload_file}: {exc.strerror}", 2) from None
        if len(data) > MAX_BODY_SIZE:
            raise ToolError(f"{args.payload_file} is larger than {MAX_BODY_SIZE} bytes", 2)
        return data, octets
    return None


def build_request(args: argparse.Namespace, code: int, target: Target) -> Message:
    message = Message(Type.NON if args.non else Type.CON, code, options=list(target.options))
    payload = read_payload(args)
    if payload is not None:
        data, default_format = payload
        message.payload = data
        content_format = args.ctype if args.ctype is not None else default_format
        message.add_option(Option.CONTENT_FORMAT, content_format)
        accept = args.accept
    else:
        accept = args.accept if args.accept is not None else args.ctype
    if accept is not None:
        message.add_option(Option.ACCEPT, accept)
    return message


# -- output ----------------------------------------------------------------------------------


def _text(payload: bytes) -> str | None:
    """*payload* as text if it is UTF-8 without control characters (but tab and newlines)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((ord(c) < 0x20 and c not in "\t\r\n") or ord(c) == 0x7F for c in text):
        return None
    return text


def hex_lines(payload: bytes) -> str:
    return "\n".join(payload[i : i + HEX_LINE].hex() for i in range(0, len(payload), HEX_LINE))


def cbor_diagnostic(value: object, indent: int = 0) -> str:
    """CBOR diagnostic notation (RFC 8949 §8), maps and arrays one item a line."""
    pad, end = "  " * (indent + 1), "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            f"{pad}{cbor_diagnostic(k, indent + 1)}: {cbor_diagnostic(v, indent + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        items = [pad + cbor_diagnostic(item, indent + 1) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if value is cbor2.undefined:
        return "undefined"
    if isinstance(value, (bytes, bytearray)):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({cbor_diagnostic(value.value, indent)})"
    if isinstance(value, cbor2.CBORSimpleValue):
        return f"simple({value.value})"
    return json.dumps(str(value), ensure_ascii=False)  # e.g. a datetime (tag 0/1)


def render_payload(payload: bytes, content_format: int | None) -> str:
    """The payload for the terminal: JSON pretty, CBOR as diagnostic notation, text as is,
    anything else as hex."""
    if not payload:
        return ""
    mime = "" if content_format is None else mime_type(content_format)
    if "deflate" in mime:
        return hex_lines(payload)
    if mime.endswith("json"):
        with contextlib.suppress(ValueError):
            return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    elif mime.endswith("cbor"):
        try:
            return cbor_diagnostic(cbor2.loads(payload))
        except (cbor2.CBORError, ValueError, TypeError, LookupError, OverflowError):  # malformed
            return hex_lines(payload)
    text = _text(payload)
    textual = (
        not mime
        or mime.startswith(("text/", "unknown/"))
        or mime.endswith(("xml", "json", "link-format"))
    )
    if text is not None and textual:
        return text.removesuffix("\n")
    return hex_lines(payload)


def error_text(message: Message) -> str:
    """``4.04 NOT_FOUND`` plus the diagnostic payload, on one line."""
    text = code_name(message.code)
    diagnostic = _text(message.payload) if message.payload else None
    if diagnostic:
        text += ": " + " ".join(diagnostic.split())
    elif message.payload:
        text += f" ({len(message.payload)} bytes payload)"
    return text


def say(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # The reader went away (``| head``): drop the rest of the output rather than fail in
        # the middle of an exchange, as the trace is printed from protocol callbacks.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def show(response: Response, prog: str) -> int:
    """Print a response: the payload of a success (exit status 0), else one line on stderr
    (exit status 1)."""
    if not is_success(response.code):
        print(f"{prog}: error: {error_text(response.message)}", file=sys.stderr, flush=True)
        return 1
    text = render_payload(response.payload, response.content_format)
    if text:
        say(text)
    return 0


def make_tracer(peer: str) -> Callable[[str, Message], None]:
    def trace(direction: str, message: Message) -> None:
        kind = "req" if message.is_request else "res"
        if message.code == Code.EMPTY:
            kind = "emp"
        say(f"{peer} {direction} {kind} {describe(message)}")

    return trace


# -- running ---------------------------------------------------------------------------------


async def until_stopped(
    awaitable: Awaitable[T], stop: asyncio.Event, timeout: float | None = None
) -> T:
    """*awaitable*'s result; raises Interrupted when *stop* is set first, TimeoutError after
    *timeout* seconds. What is still running then is cancelled."""
    work = asyncio.ensure_future(awaitable)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if not work.cancelled():
        return work.result()
    if stop.is_set():
        raise Interrupted
    raise asyncio.TimeoutError


def psk_of(args: argparse.Namespace) -> tuple[bytes | None, bytes | None]:
    """(identity, secret) of -i with -s/--secrethex/--secret64, or of --psk-store."""
    if getattr(args, "psk_store", None):
        from extplugtest.tools.benchmark_dtls import HandshakeError, read_psk_store

        try:
            store = read_psk_store(args.psk_store)
        except HandshakeError as exc:
            raise ToolError(str(exc), 2) from None
        return store[args.psk_index % len(store)]
    identity = None if args.identity is None else args.identity.encode()
    try:
        if getattr(args, "secrethex", None) is not None:
            return identity, bytes.fromhex(args.secrethex)
        if getattr(args, "secret64", None) is not None:
            return identity, base64.b64decode(args.secret64, validate=True)
    except (ValueError, binascii.Error):
        raise ToolError("--secrethex/--secret64: not hexadecimal/base64", 2) from None
    return identity, None if args.secret is None else args.secret.encode()


def client_for(args: argparse.Namespace, target: Target) -> CoapClient:
    identity, secret = psk_of(args)
    local_port = getattr(args, "local_port", None)
    transport: Transport
    if target.scheme == "coaps":
        from extplugtest.tools.dtls_transport import DtlsTransport, PskCredentials

        credentials = PskCredentials.default()
        if identity is not None:
            credentials = PskCredentials(identity, secret if secret is not None else b".fornium")
        options = dtls_options(args)
        if getattr(args, "cid_length", None):
            options.cid = os.urandom(args.cid_length)
        transport = DtlsTransport(
            target.host, target.port, credentials, options, local_port=local_port
        )
        if args.verbose:
            transport.report = lambda line: say(f"{target.authority} {line}")
    else:
        try:
            transport = open_transport(target, identity, secret, local_port=local_port)
        except ValueError as exc:
            raise ToolError(str(exc), 2) from None
    return CoapClient(
        transport,
        timeout=args.timeout / 1000,
        block_size=getattr(args, "blocksize", None),
        tracer=make_tracer(target.authority) if args.verbose else None,
    )


#: cf-cli's --auth modes and the key exchanges (KeyExchange values) of their cipher suites
AUTH_MODES = {"PSK": "PSK", "ECDHE_PSK": "ECDHE_PSK", "X509": "ECDHE_ECDSA", "RPK": "ECDHE_ECDSA"}


def dtls_options(args: argparse.Namespace) -> DtlsClientOptions:
    """The coaps handshake options of --auth, --cipher, --cert, --trust-store, ..."""
    from extplugtest.dtls.ciphersuites import DEFAULT_PREFERENCE, KeyExchange
    from extplugtest.dtls.messages import CertificateType
    from extplugtest.dtls.pki import TrustStore
    from extplugtest.tools.dtls_transport import DtlsClientOptions

    modes = [mode.strip().upper() for mode in (getattr(args, "auth", None) or "").split(":")]
    modes = [mode for mode in modes if mode]
    for mode in modes:
        if mode == "NONE":
            raise ToolError("--auth NONE: use a coap:// URI for no authentication", 2)
        if mode not in AUTH_MODES:
            raise ToolError(f"unknown --auth mode '{mode}' (PSK, ECDHE_PSK, X509, RPK)", 2)
    suites = parse_cipher_suites(getattr(args, "cipher", None) or "")
    if not modes:  # the suites decide, else PSK (cf-cli's default without a certificate)
        modes = ["X509" if suite.uses_certificate else suite.key_exchange.value for suite in suites]
        modes = list(dict.fromkeys(modes)) or ["PSK"]
    exchanges = [KeyExchange(AUTH_MODES[mode]) for mode in modes]
    if suites:
        for suite in suites:
            if suite.key_exchange not in exchanges:
                raise ToolError(
                    f"cipher suite {suite.name} does not fit --auth {':'.join(modes)}", 2
                )
    else:
        for exchange in dict.fromkeys(exchanges):  # in the order of --auth
            suites += [suite for suite in DEFAULT_PREFERENCE if suite.key_exchange is exchange]
    options = DtlsClientOptions(cipher_suites=tuple(suites))
    types = {"X509": CertificateType.X509, "RPK": CertificateType.RAW_PUBLIC_KEY}
    certificate_types = tuple(types[mode] for mode in modes if mode in types)
    options.certificate_types = certificate_types or (CertificateType.X509,)
    try:
        if getattr(args, "trust_store", None):
            options.trust_store = TrustStore.from_pem_file(Path(args.trust_store))
        options.trust_store.trust_all = bool(getattr(args, "trust_all", False))
        if KeyExchange.ECDHE_ECDSA in exchanges and not getattr(args, "anonymous", False):
            options.certificate = own_certificate(args)
    except OSError as exc:
        raise ToolError(f"cannot read {exc.filename}: {exc.strerror}", 2) from None
    except ValueError as exc:
        raise ToolError(str(exc), 2) from None
    return options


def parse_cipher_suites(text: str) -> list[CipherSuite]:
    """Suites by IANA/Californium or OpenSSL name, ':'-separated, in the given order."""
    from extplugtest.dtls.ciphersuites import ALL_SUITES

    names = {suite.name: suite for suite in ALL_SUITES}
    names |= {suite.openssl_name: suite for suite in ALL_SUITES if suite.openssl_name}
    suites: list[CipherSuite] = []
    for name in (part.strip() for part in text.split(":")):
        if not name:
            continue
        suite = names.get(name) or names.get(name.upper())
        if suite is None:
            raise ToolError(f"unsupported cipher suite '{name}'", 2)
        suites.append(suite)
    return list(dict.fromkeys(suites))


def own_certificate(args: argparse.Namespace) -> CertificateCredentials:
    from extplugtest.dtls.pki import demo_client_credentials, load_credentials

    cert = getattr(args, "cert", None)
    key = getattr(args, "private_key", None)
    if cert is None:
        if key is not None:
            raise ValueError("--private-key needs --cert")
        return demo_client_credentials()
    try:
        return load_credentials(Path(cert), Path(key or cert))
    except ValueError as exc:
        raise ValueError(f"cannot use {cert} / {key or cert}: {exc}") from None


def run_tool(args: argparse.Namespace, work: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    """Run *work* on a uvloop event loop; SIGINT/SIGTERM set its stop event (so that an
    observation can still be cancelled). Errors become one line on stderr."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(_supervised(work))
    except ToolError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ClientError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted:
        return 130
    finally:
        loop.close()


async def _supervised(work: Callable[[asyncio.Event], Awaitable[int]]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (ValueError, RuntimeError, NotImplementedError):  # not in the main thread
            pass
    try:
        return await work(stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def run(args: argparse.Namespace) -> int:
    """get, post, put, delete, fetch."""

    async def work(stop: asyncio.Event) -> int:
        validate(args)
        target = target_of(args.uri)
        message = build_request(args, METHODS[args.command], target)
        async with client_for(args, target) as client:
            response = await until_stopped(client.request(message), stop)
        return show(response, args.prog)

    return run_tool(args, work)


def run_observe(args: argparse.Namespace) -> int:
    async def work(stop: asyncio.Event) -> int:
        validate(args)
        target = target_of(args.uri)
        message = build_request(args, Code.GET, target)
        async with client_for(args, target) as client:
            observation = client.observe(message)
            try:
                return await _observe(args, observation, stop)
            finally:
                await _end(observation, args.timeout / 1000)

    return run_tool(args, work)


async def _observe(args: argparse.Namespace, observation: Observation, stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    deadline = None if args.duration is None else loop.time() + args.duration
    response = await until_stopped(observation.register(), stop)
    received = 1
    if show(response, args.prog):
        return 1
    if not observation.active:
        raise ToolError(f"{args.uri} is not observable (response without Observe option)")
    try:
        # Bounded by --count, --duration or Ctrl-C; each round waits for a notification or
        # re-registers after Max-Age.
        while args.count is None or received < args.count:
            max_age = response.message.max_age
            wait = (DEFAULT_MAX_AGE if max_age is None else max_age) + REREGISTER_BACKOFF
            if deadline is not None:
                if deadline <= loop.time():
                    break
                wait = min(wait, deadline - loop.time())
            try:
                response = await until_stopped(observation.next(), stop, wait)
            except asyncio.TimeoutError:
                if deadline is not None and deadline <= loop.time():
                    break
                response = await until_stopped(observation.register(), stop)  # RFC 7641 §3.3.1
            received += 1
            if show(response, args.prog):
                return 1
            if not observation.active:
                raise ToolError(f"the server ended the observation after {received} notifications")
    except Interrupted:
        return 130
    return 0


async def _end(observation: Observation, timeout: float) -> None:
    """Cancel proactively if the relation is still up; a failure to do so is no error."""
    if not observation.active:
        observation.close()
        return
    try:
        await asyncio.wait_for(observation.cancel(), min(timeout, CANCEL_TIMEOUT))
    except (ClientError, asyncio.TimeoutError):
        observation.close()
