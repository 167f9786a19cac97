"""``extclient benchmark``: Californium's BenchmarkClient for plain CoAP over UDP.

Many emulated clients, each with its own UDP socket and one request outstanding (closed loop),
against one URI. The generator core (``_loadgen``) runs in a worker thread without the GIL; this
module parses the command line, opens the sockets, prints Californium's progress lines every
10 s and the final summary, and optionally writes the results as JSON (for ``bench/``).

Differences from Californium, on purpose:

* ``--duration``/``--warmup`` (seconds) end a run by time; statistics cover the time after the
  warm-up. Without ``--requests`` a run with ``--duration`` is limited by time only.
* After a transmission error a client goes on at once with a new request (Californium's
  ``--no-stop`` waits 1 s first).
* ``--timeout`` (response timeout for NON requests and after an empty ACK) defaults to 10 s,
  not Californium's 30 s BENCHMARK_RESPONSE_TIMEOUT / 145 s NON_LIFETIME: in a short benchmark
  run a lost NON request would otherwise park its client for the rest of the run.
* Latency figures have microsecond resolution (Californium uses 5 ms buckets), and error
  responses get their own statistic (Californium mixes them into ``success-responses``).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import random
import resource
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from extplugtest.tools import _loadgen

PROGRESS_INTERVAL = 10.0  # seconds between progress lines (Californium's DEFAULT_TIMEOUT_SECONDS)
DEFAULT_REQUESTS = 100  # per client, when neither --requests nor --duration is given
MAX_CLIENTS = _loadgen.MAX_CLIENTS
MAX_REQUESTS = 1_000_000_000  # per client
MAX_DURATION = 3600.0  # seconds
MAX_WARMUP = 600.0
MAX_TIMEOUT_MS = 600_000
MAX_PAYLOAD = 1024  # no block-wise transfer: the request must fit one datagram
SOCKET_BUFFER = 64 * 1024  # per client socket; one request outstanding needs far less

METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4}
OPTION_URI_HOST = 3
OPTION_URI_PATH = 11
OPTION_CONTENT_FORMAT = 12
OPTION_URI_QUERY = 15
OPTION_ACCEPT = 17
TEXT_PLAIN = 0


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


def parse_uri(text: str) -> Target:
    """Split a coap:// URI into host, port and Uri-* options (RFC 7252 §6.4)."""
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
    if scheme in ("coaps", "coap+tcp", "coaps+tcp"):
        raise BenchmarkError(f"scheme '{scheme}' is not supported yet, use coap://", 2)
    if scheme != "coap":
        raise BenchmarkError(f"'{text}' is not a coap:// URI", 2)
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
    return Target(text, parts.hostname, port if port is not None else 5683, options)


def resolve(target: Target) -> tuple[int, tuple[Any, ...]]:
    """(address family, socket address) of the target."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
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


def watch(runner: Runner) -> None:
    """Print a progress line every PROGRESS_INTERVAL s until the run ends."""
    index = 0
    last = runner.generator.totals()
    next_line = time.monotonic() + PROGRESS_INTERVAL
    while not runner.wait(max(0.0, next_line - time.monotonic())):
        if time.monotonic() >= next_line:
            index += 1
            now = runner.generator.totals()
            _say(progress_line(index, last, now, PROGRESS_INTERVAL))
            last = now
            next_line += PROGRESS_INTERVAL


def progress_line(index: int, last: dict[str, int], now: dict[str, int], interval: float) -> str:
    """One of Californium's 10-second progress lines (BenchmarkClient, '.' as decimal point)."""
    requests = now["sent"]
    new = requests - last["sent"]
    responses = now["success"] + now["error_responses"] - last["success"] - last["error_responses"]
    head = f"[{index:04d}]: {requests} requests"
    if responses == 0 and new == 0:
        return f"{head}, stale ({now['active']} clients, {now['pending']} pending)"
    retransmissions = now["retransmissions"] - last["retransmissions"]
    errors = now["timeouts"] + now["rejects"] - last["timeouts"] - last["rejects"]
    line = f"{head} ({int(responses / interval + 0.5)} reqs/s"
    if new:
        no_responses = ", no responses received!" if responses == 0 else ""
        share = retransmissions * 100 / new
        line += f", {retransmissions} retransmissions ({share:4.2f}%{no_responses})"
        line += f", {errors} transmission errors ({errors * 100 / new:4.2f}%)"
    else:
        line += f", {retransmissions} retransmissions, {errors} transmission errors"
    line += f", {now['active']} clients"
    if now["pending"]:
        line += f", {now['pending']} pending"
    return line + ")"


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def statistic_line(label: str, latency: dict[str, Any]) -> str:
    """Californium's TimeStatistic line, in ms with 2 decimals instead of 5 ms buckets."""
    if not latency["count"]:
        return f"{label:<18}: no values available!"
    return (
        f"{label:<18}: #: {latency['count']}, avg.: {_ms(latency['avg'])} ms, "
        f"95%: {_ms(latency['p95'])} ms, 99%: {_ms(latency['p99'])} ms, "
        f"99.9%: {_ms(latency['p99.9'])} ms, max.: {_ms(latency['max'])} ms"
    )


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    if result["expected"] is not None:
        lines.append(
            f"{result['requests_sent_total']} requests sent, {result['expected']} expected"
        )
    else:
        lines.append(f"{result['requests_sent_total']} requests sent")
    window = f" (after {result['warmup_s']:g} s warm-up)" if result["warmup_s"] else ""
    lines.append(
        f"{result['responses']} requests in {round(result['duration_s'] * 1000)} ms, "
        f"{round(result['req_per_s'])} reqs/s{window}"
    )
    sent = result["requests"] or 1
    lines.append(
        f"{result['retransmissions']} retransmissions "
        f"({result['retransmissions'] * 100 / sent:4.2f}%)"
    )
    lines.append(
        f"{result['transmission_errors']} transmission errors "
        f"({result['transmission_errors'] * 100 / sent:4.2f}%)"
        + (f", {result['rejects']} rejected" if result["rejects"] else "")
    )
    lines.append(statistic_line("success-responses", result["success_latency_us"]))
    lines.append(statistic_line("errors-responses", result["error_latency_us"]))
    latency = result["latency_ms"]
    if latency["count"]:
        lines.append(
            f"{'latency':<18}: p50: {latency['p50']:.3f} ms, p90: {latency['p90']:.3f} ms, "
            f"p99: {latency['p99']:.3f} ms, p99.9: {latency['p99.9']:.3f} ms, "
            f"max.: {latency['max']:.3f} ms"
        )
    return lines


def collect(
    generator: _loadgen.LoadGenerator,
    args: argparse.Namespace,
    target: Target,
    expected: int | None,
) -> dict[str, Any]:
    """The results of the measurement window, as written with --json."""
    window = generator.window()
    totals = generator.totals()
    responses = window["success"] + window["error_responses"]
    duration = window["duration"]
    success = window["success_latency_us"]
    return {
        "uri": target.uri,
        "clients": args.clients,
        "method": args.method,
        "type": "NON" if args.non else "CON",
        "payload": args.payload_random,
        "warmup_s": args.warmup,
        "duration_s": duration,
        "requests_sent_total": totals["sent"],
        "expected": expected,
        "requests": window["sent"],
        "responses": responses,
        "success": window["success"],
        "error_responses": window["error_responses"],
        "retransmissions": window["retransmissions"],
        "transmission_errors": window["timeouts"] + window["rejects"],
        "timeouts": window["timeouts"],
        "rejects": window["rejects"],
        "socket_errors": window["socket_errors"],
        "req_per_s": responses / duration if duration > 0 else 0.0,
        "generator_cpu_s": window["cpu"],
        "success_latency_us": success,
        "error_latency_us": window["error_latency_us"],
        # success responses (2.xx) only, in ms
        "latency_ms": {
            key: (value / 1000 if key != "count" else value) for key, value in success.items()
        },
        "finished": totals["active"] == 0,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", metavar="URI", help="coap://host[:port]/path?query (port 5683)")
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
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--con", action="store_false", dest="non", default=False, help="CON requests (default)"
    )
    kind.add_argument("--non", action="store_true", help="NON requests")
    parser.add_argument(
        "-m", "--method", type=str.upper, choices=sorted(METHODS), default="POST",
        help="request method (default POST, as Californium)",
    )  # fmt: skip
    parser.add_argument(
        "--payload-random", type=int, default=0, metavar="N",
        help="N random printable ASCII characters as payload (Content-Format 0)",
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
        "--duration", type=float, default=0.0, metavar="S",
        help=f"stop after S seconds of measurement (after the warm-up; max {MAX_DURATION:g})",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=0.0, metavar="S",
        help="seconds of load before the measurement window opens (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--local-port", type=int, metavar="PORT", help="local port of the first client"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON to FILE")


def validate(args: argparse.Namespace) -> None:
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise BenchmarkError(message, 2)

    check(1 <= args.clients <= MAX_CLIENTS, f"--clients must be 1..{MAX_CLIENTS}")
    check(
        args.requests is None or 1 <= args.requests <= MAX_REQUESTS,
        f"--requests must be 1..{MAX_REQUESTS}",
    )
    check(0 <= args.payload_random <= MAX_PAYLOAD, f"--payload-random must be 0..{MAX_PAYLOAD}")
    check(0 < args.timeout <= MAX_TIMEOUT_MS, f"--timeout must be 1..{MAX_TIMEOUT_MS} ms")
    check(0 < args.ack_timeout <= MAX_TIMEOUT_MS, f"--ack-timeout must be 1..{MAX_TIMEOUT_MS} ms")
    check(0 <= args.duration <= MAX_DURATION, f"--duration must be 0..{MAX_DURATION:g} s")
    check(0 <= args.warmup <= MAX_WARMUP, f"--warmup must be 0..{MAX_WARMUP:g} s")
    check(args.local_port is None or 1 <= args.local_port <= 65535, "--local-port must be 1..65535")


def _say(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace) -> int:
    validate(args)
    target = parse_uri(args.uri)
    requests = args.requests
    if requests is None and not args.duration:
        requests = DEFAULT_REQUESTS
    expected = requests * args.clients if requests else None
    payload = bytes(random.choices(range(0x20, 0x7F), k=args.payload_random))
    options: list[tuple[int, bytes | int]] = [*target.options, (OPTION_ACCEPT, TEXT_PLAIN)]
    if payload:
        options.append((OPTION_CONTENT_FORMAT, TEXT_PLAIN))
    family, address = resolve(target)

    if expected is not None:
        _say(
            f"Create {args.clients} benchmark clients, expect to send {expected} requests "
            f"overall to {target.uri}"
        )
    else:
        _say(
            f"Create {args.clients} benchmark clients, expect to send requests for "
            f"{args.duration:g} s overall to {target.uri}"
        )
    _say("No authentication.")
    created = time.monotonic()
    sockets = open_clients(args.clients, family, address, args.local_port)
    try:
        created = time.monotonic() - created
        generator = _loadgen.LoadGenerator(
            [sock.fileno() for sock in sockets],
            confirmable=not args.non,
            code=METHODS[args.method],
            options=options,
            payload=payload,
            ack_timeout_ms=args.ack_timeout,
            response_timeout_ms=args.timeout,
        )
        probe(generator, args, target)
        _say(
            f"Benchmark clients created. {round(created * 1000)} ms, "
            f"{round(args.clients / max(created, 1e-6))} clients/s"
        )
        runner = Runner(generator)
        try:
            runner.start(requests=requests or 0, duration=args.duration, warmup=args.warmup)
            _say("Benchmark started.")
            watch(runner)
        finally:
            runner.close()
        result = collect(generator, args, target, expected)
        result["interrupted"] = runner.interrupted
    finally:
        for sock in sockets:
            sock.close()
    done = "finished" if result["finished"] else "stopped"
    _say(f"{args.clients} benchmark clients {done}.")
    for line in summary_lines(result):
        _say(line)
    if args.json:
        write_json(args.json, result)
    return 130 if result["interrupted"] else 0


def write_json(path: str, result: dict[str, Any]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
            out.write("\n")
    except OSError as exc:
        raise BenchmarkError(f"cannot write {path}: {exc.strerror}") from None


def probe(generator: _loadgen.LoadGenerator, args: argparse.Namespace, target: Target) -> None:
    """Californium's test(): one request from the first client before the others start."""
    runner = Runner(generator)
    try:
        runner.start(clients=1, requests=1, duration=args.timeout / 1000, stop_on_error=True)
        while not runner.wait(1.0):
            pass
    finally:
        runner.close()
    if runner.interrupted:
        raise KeyboardInterrupt
    client = generator.client(0)
    code = client["last_code"]
    what = f"first request {args.method} {target.uri} failed"
    if client["last_error"]:
        reason = os.strerror(client["last_error"]).lower()
        if client["last_error"] == errno.ECONNREFUSED:
            reason += " (no CoAP server on that port?)"
        raise BenchmarkError(f"{what}: {reason}")
    if code == -1:
        raise BenchmarkError(f"{what}: rejected (RST)")
    if code <= 0:
        raise BenchmarkError(f"{what}: no response within {args.timeout} ms")
    if code >> 5 == 2:
        _say("Benchmark clients, first request successful.")
    else:
        _say(f"Benchmark clients, first request answered with {code >> 5}.{code & 0x1F:02d}.")
