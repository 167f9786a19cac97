"""The benchmark load generator over coap+tcp (RFC 8323) and ``extclient benchmark coap+tcp://``.

Each test runs the generator against a tiny in-process TCP server on 127.0.0.1 (one thread per
connection) that speaks the framing of _tcp_codec: it sends its CSM first, reads frames and
hands each to a handler function that decides what goes back (responses, signalling, partial
or coalesced frames, a close). Every run is bounded by a request limit and a duration; no
assertion depends on timing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from extplugtest.coap import _tcp_codec as tcp
from extplugtest.coap._codec import Message
from extplugtest.tools import _loadgen, benchmark, client

GET = 1
CONTENT = 0x45  # 2.05
NOT_IMPLEMENTED = 0xA1  # 5.01
PAYLOAD = b"x" * 40
WAIT = 5.0

Handler = Callable[["Connection", Message], None]


class Connection:
    """One accepted connection of the TcpServer; ``received`` keeps every frame (decoded)."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.peer_port = sock.getpeername()[1]
        self.received: list[Message] = []
        self.closed = False

    def send(self, data: bytes | Message) -> None:
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.sendall(tcp.encode(data) if isinstance(data, Message) else data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def requests(self) -> list[Message]:
        return [m for m in self.received if 1 <= m.code <= 31]

    def signals(self, code: int) -> list[Message]:
        return [m for m in self.received if m.code == code]


def answer(request: Message, code: int = CONTENT, payload: bytes = PAYLOAD) -> bytes:
    return tcp.encode(Message(0, code, 0, request.token, payload=payload))


def server_csm(max_message_size: int | None = 2048) -> bytes:
    message = Message(code=tcp.CSM)
    if max_message_size is not None:
        message.add_option(tcp.MAX_MESSAGE_SIZE, max_message_size)
    return tcp.encode(message)


def respond(conn: Connection, message: Message) -> None:
    if 1 <= message.code <= 31:
        conn.send(answer(message))


class TcpServer:
    """A CoAP-over-TCP peer: CSM first, then *handler(connection, message)* per frame, called
    in the connection's thread."""

    def __init__(self, handler: Handler = respond, csm: bytes | None = None) -> None:
        self.handler = handler
        self.csm = server_csm() if csm is None else csm
        self.connections: list[Connection] = []
        self.stopping = False
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = Connection(sock, len(self.connections))
            self.connections.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: Connection) -> None:
        conn.sock.settimeout(0.1)
        if self.csm:
            conn.send(self.csm)
        buffer = bytearray()
        while not self.stopping and not conn.closed:
            try:
                data = conn.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            buffer += data
            while (size := tcp.frame_size(buffer)) and len(buffer) >= size:
                message = tcp.decode(bytes(buffer[:size]))
                del buffer[:size]
                conn.received.append(message)
                self.handler(conn, message)
        conn.closed = True
        conn.sock.close()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return predicate()

    def close(self) -> None:
        self.stopping = True
        self.listener.close()
        for thread in self.threads:
            thread.join(WAIT)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., TcpServer]]:
    started: list[TcpServer] = []

    def start(handler: Handler = respond, **options: Any) -> TcpServer:
        server = TcpServer(handler, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def make_generator() -> Iterator[Callable[..., _loadgen.LoadGenerator]]:
    """make_generator(port, clients, **LoadGenerator options): connected TCP clients."""
    sockets: list[socket.socket] = []

    def make(port: int, clients: int = 1, **options: Any) -> _loadgen.LoadGenerator:
        own = benchmark.open_tcp_clients(clients, socket.AF_INET, ("127.0.0.1", port), None)
        sockets.extend(own)
        options.setdefault("code", GET)
        options.setdefault("options", [(11, b"benchmark"), (17, b"")])
        options.setdefault("transport", "tcp")
        return _loadgen.LoadGenerator([s.fileno() for s in own], **options)

    yield make
    for sock in sockets:
        sock.close()


def by_index(server: TcpServer, count: int) -> list[Connection]:
    assert server.wait_for(lambda: len(server.connections) == count)
    return sorted(server.connections, key=lambda c: c.index)


# -- framing, CSM, matching --------------------------------------------------------------------


def test_csm_first_then_framed_requests_matched_by_token(
    server_factory: Any, make_generator: Any
) -> None:
    server = server_factory()
    generator = make_generator(server.port, clients=3)
    assert generator.transport == "tcp"
    # the template as a frame: no type, no MID (token 0 before the run)
    assert generator.request_frame == tcp.from_datagram(generator.request)
    generator.run(requests=5, duration=20)
    totals = generator.totals()
    assert totals["success"] == totals["sent"] == 15
    assert totals["transmission_errors"] == totals["retransmissions"] == 0
    assert totals["csm_received"] == 3 and totals["connections_closed"] == 0
    assert generator.client(0)["peer_max_message_size"] == 2048
    for conn in server.connections:
        first = conn.received[0]
        assert first.code == tcp.CSM and first.options == [(2, (9216).to_bytes(2, "big"))]
        requests = conn.requests()
        assert len(requests) == 5
        assert all(r.code == GET and r.uri_path == "benchmark" for r in requests)
        assert all(len(r.token) == 4 for r in requests)
        assert len({r.token for r in requests}) == 5


def test_udp_generator_has_no_frame() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        generator = _loadgen.LoadGenerator([sock.fileno()], options=[(11, b"x")])
        assert generator.transport == "udp" and generator.request_frame == b""


def test_csm_without_max_message_size_means_the_base_value(
    server_factory: Any, make_generator: Any
) -> None:
    server = server_factory(csm=server_csm(None))
    generator = make_generator(server.port, clients=1)
    generator.run(requests=2, duration=20)
    assert generator.totals()["success"] == 2
    assert generator.client(0)["peer_max_message_size"] == tcp.BASE_MESSAGE_SIZE


def dribble(conn: Connection, message: Message) -> None:
    """Every response byte by byte, a large one (16-bit extended length) among them."""
    if not 1 <= message.code <= 31:
        return
    large = len(conn.requests()) % 2 == 0
    frame = answer(message, payload=b"y" * 1000 if large else PAYLOAD)
    for index in range(len(frame)):
        conn.send(frame[index : index + 1])
        if index % 64 == 0:
            time.sleep(0.0005)


def coalesce(conn: Connection, message: Message) -> None:
    """Several frames per write: an empty message, a Pong nobody asked for, the response."""
    if 1 <= message.code <= 31:
        empty = tcp.encode(Message(0, 0, 0, b""))
        pong = tcp.encode(Message(0, tcp.PONG, 0, b"\x01"))
        conn.send(empty + pong + answer(message))


@pytest.mark.parametrize("handler", [dribble, coalesce])
def test_partial_and_coalesced_frames(
    server_factory: Any, make_generator: Any, handler: Handler
) -> None:
    server = server_factory(handler)
    generator = make_generator(server.port, clients=2, nstart=2)
    generator.run(requests=6, duration=20)
    totals = generator.totals()
    assert totals["success"] == 12 and totals["transmission_errors"] == 0
    assert totals["protocol_errors"] == totals["connections_closed"] == 0
    if handler is coalesce:
        assert totals["ignored"] == 2 * 12  # the empty message and the Pong per response


def notify_burst(conn: Connection, message: Message) -> None:
    """A registration's response and five more notifications, all in one write."""
    if 1 <= message.code <= 31:
        frames = []
        for sequence in range(2, 8):
            notification = Message(0, CONTENT, 0, message.token, payload=PAYLOAD)
            notification.add_option(6, sequence)
            frames.append(tcp.encode(notification))
        conn.send(b"".join(frames))


def test_notifications_read_after_the_last_expected_one_are_not_counted(
    server_factory: Any, make_generator: Any
) -> None:
    """The run ends with the expected notification; the rest of that read came too late."""
    server = server_factory(notify_burst)
    generator = make_generator(server.port, observe=True)
    generator.run(requests=1, notifies=3, duration=20)
    totals = generator.totals()
    assert totals["notifies"] == 3 and totals["notifies_remaining"] == 0


# -- signalling ----------------------------------------------------------------------------------


def ping_on_third(conn: Connection, message: Message) -> None:
    if 1 <= message.code <= 31:
        if len(conn.requests()) == 3:
            conn.send(tcp.encode(Message(0, tcp.PING, 0, b"\x99\x98")))
        conn.send(answer(message))


def test_ping_mid_run_gets_pong_with_the_same_token(
    server_factory: Any, make_generator: Any
) -> None:
    server = server_factory(ping_on_third)
    generator = make_generator(server.port, clients=2)
    generator.run(requests=6, duration=20)
    totals = generator.totals()
    assert totals["success"] == 12 and totals["pings"] == 2
    for conn in by_index(server, 2):
        assert server.wait_for(lambda conn=conn: conn.signals(tcp.PONG))
        assert [pong.token for pong in conn.signals(tcp.PONG)] == [b"\x99\x98"]


def close_first_on_third(conn: Connection, message: Message) -> None:
    if 1 <= message.code <= 31:
        if conn.index == 0 and len(conn.requests()) == 3:
            conn.close()  # the third request stays unanswered
        else:
            conn.send(answer(message))


@pytest.mark.parametrize("no_stop", [False, True])
def test_closed_connection_counts_outstanding_requests_and_stops_the_client(
    server_factory: Any, make_generator: Any, no_stop: bool
) -> None:
    server = server_factory(close_first_on_third)
    generator = make_generator(server.port, clients=3, no_stop=no_stop)
    generator.run(requests=5, duration=20)
    totals = generator.totals()
    assert totals["connections_closed"] == 1
    assert totals["transmission_errors"] == 1 and totals["stopped_clients"] == 1
    assert totals["success"] == 2 + 5 + 5
    closed = [generator.client(i) for i in range(3) if generator.client(i)["closed"]]
    assert len(closed) == 1 and closed[0]["last_code"] == -3 and closed[0]["completed"] == 2
    # a later run: the closed client is stopped from the start, the others go on
    generator.run(requests=2, duration=20)
    totals = generator.totals()
    assert totals["success"] == 4 and totals["stopped_clients"] == 1


def abort_or_release(conn: Connection, message: Message) -> None:
    if not 1 <= message.code <= 31:
        return
    count = len(conn.requests())
    if conn.index == 0 and count == 2:
        conn.send(tcp.encode(Message(0, tcp.ABORT, 0, b"")))  # unanswered
    elif conn.index == 1 and count == 2:
        # Release first: the answer to the pending request is the last one
        conn.send(tcp.encode(Message(0, tcp.RELEASE, 0, b"")) + answer(message))
    else:
        conn.send(answer(message))


def test_abort_closes_and_release_ends_new_requests(
    server_factory: Any, make_generator: Any
) -> None:
    server = server_factory(abort_or_release)
    sockets = benchmark.open_tcp_clients(3, socket.AF_INET, ("127.0.0.1", server.port), None)
    try:
        conns = by_index(server, 3)
        # the client of connection i
        ports = [sock.getsockname()[1] for sock in sockets]
        aborted, released, normal = (ports.index(conn.peer_port) for conn in conns)
        generator = _loadgen.LoadGenerator(
            [s.fileno() for s in sockets], code=GET, options=[(11, b"x")], transport="tcp"
        )
        generator.run(requests=5, duration=20)
        totals = generator.totals()
        assert totals["aborts"] == 1 and totals["connections_closed"] == 1
        assert totals["releases"] == 1
        assert totals["transmission_errors"] == 1 and totals["stopped_clients"] == 1
        assert generator.client(aborted)["closed"]
        assert generator.client(aborted)["completed"] == 1
        assert generator.client(released)["released"]
        assert not generator.client(released)["closed"]
        assert generator.client(released)["completed"] == 2 and len(conns[1].requests()) == 2
        assert generator.client(normal)["completed"] == 5
    finally:
        for sock in sockets:
            sock.close()


def swallow_second(conn: Connection, message: Message) -> None:
    if 1 <= message.code <= 31 and len(conn.requests()) != 2:
        conn.send(answer(message))


def test_response_timeout_without_retransmission(server_factory: Any, make_generator: Any) -> None:
    server = server_factory(swallow_second)
    stopping = make_generator(server.port, clients=1, response_timeout_ms=200)
    stopping.run(requests=4, duration=20)
    totals = stopping.totals()
    assert totals["timeouts"] == totals["transmission_errors"] == 1
    assert totals["stopped_clients"] == 1 and totals["retransmissions"] == 0
    assert stopping.client(0)["last_code"] == -2 and not stopping.client(0)["closed"]


def test_response_timeout_with_no_stop_retries_with_a_new_token(
    server_factory: Any, make_generator: Any
) -> None:
    server = server_factory(swallow_second)
    generator = make_generator(
        server.port, clients=1, response_timeout_ms=200, no_stop=True, retry_delay_ms=10,
        jitter_ms=0,
    )  # fmt: skip
    generator.run(requests=4, duration=20)
    totals = generator.totals()
    assert totals["timeouts"] == totals["retried"] == 1
    assert totals["success"] == 4 and totals["retransmissions"] == 0
    requests = server.connections[0].requests()
    assert len(requests) == 5 and len({r.token for r in requests}) == 5


@pytest.mark.parametrize(
    "bad",
    [
        bytes((0xF0, 0x00, 0x01, 0x86, 0xA0, CONTENT)),  # announces a 100 kB frame
        bytes((0x09, CONTENT)) + b"123456789",  # TKL 9
    ],
)
def test_oversized_or_malformed_frame_gets_abort(
    server_factory: Any, make_generator: Any, bad: bytes
) -> None:
    def handler(conn: Connection, message: Message) -> None:
        if 1 <= message.code <= 31:
            conn.send(bad)

    server = server_factory(handler)
    generator = make_generator(server.port, clients=1)
    generator.run(requests=3, duration=20)
    totals = generator.totals()
    assert totals["protocol_errors"] == totals["connections_closed"] == 1
    assert totals["transmission_errors"] == 1
    conn = server.connections[0]
    assert server.wait_for(lambda: conn.signals(tcp.ABORT))


def request_first(conn: Connection, message: Message) -> None:
    if 1 <= message.code <= 31:
        if len(conn.requests()) == 1:
            conn.send(tcp.encode(Message(0, GET, 0, b"\x05")))
        conn.send(answer(message))


def test_request_of_the_server_gets_not_implemented(
    server_factory: Any, make_generator: Any
) -> None:
    server = server_factory(request_first)
    generator = make_generator(server.port, clients=1)
    generator.run(requests=3, duration=20)
    assert generator.totals()["success"] == 3
    conn = server.connections[0]
    assert server.wait_for(lambda: [m for m in conn.received if m.code == NOT_IMPLEMENTED])
    reply = next(m for m in conn.received if m.code == NOT_IMPLEMENTED)
    assert reply.token == b"\x05"


def test_tcp_argument_checks(server_factory: Any, make_generator: Any) -> None:
    server = server_factory()
    for options in ({"serve_feeds": True}, {"register": 2, "observe": True}, {"transport": "x"}):
        with pytest.raises(ValueError):
            make_generator(server.port, clients=1, **options)
    generator = make_generator(server.port, clients=1)
    with pytest.raises(ValueError):
        generator.use_dtls([object()])


# -- extclient benchmark coap+tcp:// -------------------------------------------------------------


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = client.main(["benchmark", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_tcp_uri() -> None:
    target = benchmark.parse_uri("coap+tcp://127.0.0.1/benchmark?rlen=40")
    assert (target.scheme, target.port) == ("coap+tcp", 5683)
    assert target.options == [(11, b"benchmark"), (15, b"rlen=40")]


def test_cli_tcp_run_prints_californium_lines_and_json(
    capsys: Any, tmp_path: Any, server_factory: Any
) -> None:
    server = server_factory()
    result_file = tmp_path / "result.json"
    uri = f"coap+tcp://127.0.0.1:{server.port}/benchmark?rlen=40"
    code, out, err = run_cli(
        capsys, uri, "--clients", "3", "--requests", "20", "--method", "get", "--nstart", "2",
        "--payload", "hello", "--json", str(result_file),
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Create 3 benchmark clients, expect to send 60 requests overall to {uri}"
    assert "Benchmark clients, first request successful." in lines
    assert "3 benchmark clients finished." in lines
    assert "60 requests sent, 60 expected" in lines
    result = json.loads(result_file.read_text())
    assert (result["type"], result["transport"]) == ("TCP", "tcp")
    assert result["requests"] == result["responses"] == result["success"] == 60
    assert result["transmission_errors"] == result["connections_closed"] == 0
    request = server.connections[0].requests()[-1]
    assert request.code == GET and request.payload == b"hello"
    assert request.uri_query == ["rlen=40"]


def test_cli_tcp_closed_connections_are_reported(
    capsys: Any, tmp_path: Any, server_factory: Any
) -> None:
    def close_late(conn: Connection, message: Message) -> None:
        if 1 <= message.code <= 31:
            if conn.index == 1 and len(conn.requests()) == 2:
                conn.close()
            else:
                conn.send(answer(message))

    server = server_factory(close_late)
    result_file = tmp_path / "result.json"
    code, out, err = run_cli(
        capsys, f"coap+tcp://127.0.0.1:{server.port}/x", "--clients", "3", "--requests", "4",
        "--no-stop", "--json", str(result_file),
    )  # fmt: skip
    assert code == 0, err
    assert "1 connections closed by the server" in out.splitlines()
    result = json.loads(result_file.read_text())
    assert result["connections_closed"] == 1 and result["transmission_errors"] == 1


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_tcp_connection_refused(capsys: Any) -> None:
    port = free_tcp_port()
    code, _out, err = run_cli(capsys, f"coap+tcp://127.0.0.1:{port}/x", "--requests", "1")
    assert code == 1
    assert f"cannot connect to 127.0.0.1 port {port}: Connection refused" in err
    assert err.count("\n") == 1


def test_cli_tcp_first_request_on_a_closed_connection(capsys: Any, server_factory: Any) -> None:
    def close(conn: Connection, message: Message) -> None:
        if 1 <= message.code <= 31:
            conn.close()

    server = server_factory(close)
    code, _out, err = run_cli(capsys, f"coap+tcp://127.0.0.1:{server.port}/x", "--requests", "1")
    assert code == 1
    assert "/x POST failed, exit Benchmark. The server closed the connection." in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reverse", "2"], "--reverse is not supported over coap+tcp"),
        (["--notifies", "2", "--register", "1"], "--register is not supported over coap+tcp"),
    ],
)
def test_cli_tcp_refuses_what_it_does_not_do(capsys: Any, argv: list[str], message: str) -> None:
    code, _out, err = run_cli(capsys, "coap+tcp://127.0.0.1:9/x", *argv)
    assert code == 2 and message in err and err.count("\n") == 1
