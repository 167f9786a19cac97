"""The benchmark load generator (``_loadgen``) and ``extclient benchmark``.

Each test runs the generator against a tiny asyncio UDP responder on 127.0.0.1 whose behaviour
(piggybacked, NON, separate, lossy, silent, RST, error code) is a small handler function. The
timeouts are shortened (ACK_TIMEOUT in ms) so that retransmissions and transmission errors show
up within a fraction of a second. No assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from extplugtest.coap._codec import Message, parse
from extplugtest.tools import _loadgen, benchmark, client

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
CONTENT = 0x45  # 2.05
NOT_FOUND = 0x84  # 4.04

Send = Callable[[bytes], None]
Handler = Callable[["Responder", Message, Send], None]


class Responder:
    """A CoAP responder on 127.0.0.1 driven by an asyncio loop in a background thread.

    *handler(responder, request, send)* is called for every datagram (parsed) in the loop
    thread; ``received`` keeps everything that arrived, for the assertions.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[Message] = []
        self.loop = asyncio.new_event_loop()
        self.next_mid = 0x7000
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(5), "responder did not start"

    def _serve(self, ready: threading.Event) -> None:
        responder = self

        class Protocol(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, address: Any) -> None:
                message = parse(data)
                responder.received.append(message)
                responder.handler(
                    responder, message, lambda out: self.transport.sendto(out, address)
                )

        asyncio.set_event_loop(self.loop)
        self.transport, _ = self.loop.run_until_complete(
            self.loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
        )
        self.port = self.transport.get_extra_info("sockname")[1]
        ready.set()
        self.loop.run_forever()
        self.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        self.loop.call_later(delay, callback)

    def mid(self) -> int:
        self.next_mid += 1
        return self.next_mid

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Poll *predicate* until it holds: the last datagrams may still be in flight."""
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return predicate()

    def requests(self) -> list[Message]:
        return [m for m in self.received if 1 <= m.code <= 31]


def response(request: Message, type: int, code: int = CONTENT, mid: int | None = None) -> bytes:
    message = Message(type, code, request.mid if mid is None else mid, request.token)
    message.payload = b"x" * 40
    return message.to_bytes()


def empty(type: int, mid: int) -> bytes:
    return Message(type, 0, mid).to_bytes()


def piggybacked(responder: Responder, request: Message, send: Send) -> None:
    if request.type == CON and request.code:
        send(response(request, ACK))


@pytest.fixture
def responder_factory() -> Iterator[Callable[[Handler], Responder]]:
    started: list[Responder] = []

    def start(handler: Handler) -> Responder:
        responder = Responder(handler)
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.close()


@pytest.fixture
def make_generator() -> Iterator[Callable[..., _loadgen.LoadGenerator]]:
    """make_generator(port, clients, **LoadGenerator options) with its sockets."""
    sockets: list[socket.socket] = []

    def make(port: int, clients: int = 1, **options: Any) -> _loadgen.LoadGenerator:
        own = []
        for _ in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            own.append(sock)
        sockets.extend(own)
        options.setdefault("code", GET)
        options.setdefault("options", [(11, b"benchmark"), (17, b"")])
        return _loadgen.LoadGenerator([s.fileno() for s in own], **options)

    yield make
    for sock in sockets:
        sock.close()


# -- request encoding --------------------------------------------------------------------------


def test_build_request_encodes_uri_accept_and_payload() -> None:
    raw = _loadgen.build_request(
        True,
        POST,
        [(15, b"rlen=40"), (11, b"benchmark"), (17, b""), (12, 0)],
        b"hello",
        mid=0x1234,
        token=0xA1B2C3D4,
    )
    message = parse(raw)
    assert (message.type, message.code, message.mid) == (CON, POST, 0x1234)
    assert message.token == bytes.fromhex("A1B2C3D4")
    assert message.uri_path == "benchmark"
    assert message.uri_query == ["rlen=40"]
    assert message.accept == 0
    assert message.content_format == 0
    assert message.payload == b"hello"


def test_build_request_rejects_oversized_request() -> None:
    with pytest.raises(ValueError):
        _loadgen.build_request(True, POST, [], b"x" * 3000)


# -- the generator against responders ---------------------------------------------------------


def test_con_piggybacked_few_requests_each_client_sends_exactly_n(
    responder_factory: Any, make_generator: Any
) -> None:
    responder = responder_factory(piggybacked)
    generator = make_generator(responder.port, clients=4)
    generator.run(requests=3)
    totals = generator.totals()
    assert totals["sent"] == 12 and totals["success"] == 12
    assert totals["retransmissions"] == totals["timeouts"] == totals["ignored"] == 0
    assert totals["active"] == 0 and totals["pending"] == 0
    requests = responder.requests()
    assert len(requests) == 12
    assert all(r.type == CON and r.code == GET and r.uri_path == "benchmark" for r in requests)
    assert all(r.accept == 0 for r in requests)
    # a fresh MID and token for every request
    assert len({(r.mid, r.token) for r in requests}) == 12
    assert len({r.token for r in requests}) == 12
    window = generator.window()
    latency = window["success_latency_us"]
    assert latency["count"] == 12
    assert latency["p50"] <= latency["p99"] <= latency["max"]


def test_many_requests_share_one_counter(responder_factory: Any, make_generator: Any) -> None:
    responder = responder_factory(piggybacked)
    generator = make_generator(responder.port, clients=3)
    generator.run(requests=20)  # > 10: 60 requests overall, shared
    assert generator.totals()["sent"] == 60
    assert generator.totals()["success"] == 60
    assert len(responder.requests()) == 60


def test_non_requests(responder_factory: Any, make_generator: Any) -> None:
    def handler(responder: Responder, request: Message, send: Send) -> None:
        send(response(request, NON, mid=responder.mid()))

    responder = responder_factory(handler)
    generator = make_generator(responder.port, clients=2, confirmable=False)
    generator.run(requests=5)
    assert all(r.type == NON for r in responder.requests())
    totals = generator.totals()
    assert totals["sent"] == totals["success"] == 10
    assert totals["retransmissions"] == 0


def test_separate_response_is_acknowledged(responder_factory: Any, make_generator: Any) -> None:
    sent_responses: list[int] = []

    def handler(responder: Responder, request: Message, send: Send) -> None:
        if request.code == 0:
            return  # our ACKs; kept in ``received``
        send(empty(ACK, request.mid))
        mid = responder.mid()
        sent_responses.append(mid)
        separate = response(request, CON, mid=mid)
        # sent twice, as if our first ACK was lost
        responder.later(0.01, lambda: (send(separate), send(separate)))

    responder = responder_factory(handler)
    generator = make_generator(responder.port, clients=2, ack_timeout_ms=1000)
    generator.run(requests=3)
    totals = generator.totals()
    assert totals["sent"] == totals["success"] == 6
    assert totals["retransmissions"] == 0

    def acks() -> list[Message]:
        return [m for m in responder.received if m.code == 0 and m.type == ACK]

    assert responder.wait_for(lambda: {m.mid for m in acks()} == set(sent_responses))
    # duplicates are acknowledged again (the very last one may come after the run has ended)
    assert len(acks()) > len(sent_responses)
    assert not [m for m in responder.received if m.type == RST]


def test_lost_requests_are_retransmitted(responder_factory: Any, make_generator: Any) -> None:
    seen = {"count": 0}

    def every_other(responder: Responder, request: Message, send: Send) -> None:
        seen["count"] += 1
        if seen["count"] % 2:
            return  # drop
        send(response(request, ACK))

    responder = responder_factory(every_other)
    generator = make_generator(responder.port, clients=1, ack_timeout_ms=20)
    generator.run(requests=4)
    totals = generator.totals()
    assert totals["sent"] == totals["success"] == 4
    assert totals["retransmissions"] == 4  # each first transmission was dropped
    requests = responder.requests()
    assert len(requests) == 8
    # a retransmission repeats MID and token
    assert [(r.mid, r.token) for r in requests[0::2]] == [(r.mid, r.token) for r in requests[1::2]]


def test_silent_server_gives_transmission_errors(
    responder_factory: Any, make_generator: Any
) -> None:
    responder = responder_factory(lambda responder, request, send: None)
    generator = make_generator(responder.port, clients=2, ack_timeout_ms=10, max_retransmit=2)
    generator.run(requests=2)
    totals = generator.totals()
    assert totals["sent"] == 4
    assert totals["timeouts"] == 4
    assert totals["retransmissions"] == 8
    assert totals["success"] == 0
    assert len(responder.requests()) == 12
    assert generator.client(0)["last_code"] == -2


def test_non_without_response_times_out(responder_factory: Any, make_generator: Any) -> None:
    responder = responder_factory(lambda responder, request, send: None)
    generator = make_generator(responder.port, clients=1, confirmable=False, response_timeout_ms=20)
    generator.run(requests=2)
    totals = generator.totals()
    assert totals["sent"] == totals["timeouts"] == 2
    assert totals["retransmissions"] == 0


def test_rst_and_error_codes(responder_factory: Any, make_generator: Any) -> None:
    def handler(responder: Responder, request: Message, send: Send) -> None:
        if request.token[-1] % 2:
            send(empty(RST, request.mid))
        else:
            send(response(request, ACK, code=NOT_FOUND))

    responder = responder_factory(handler)
    generator = make_generator(responder.port, clients=1)
    generator.run(requests=4)
    totals = generator.totals()
    assert totals["rejects"] == 2
    assert totals["error_responses"] == 2
    assert totals["success"] == 0
    assert generator.window()["error_latency_us"]["count"] == 2


def test_unmatched_responses_are_ignored(responder_factory: Any, make_generator: Any) -> None:
    def handler(responder: Responder, request: Message, send: Send) -> None:
        wrong = Message(ACK, CONTENT, request.mid, b"\x00\x00\x00\x00").to_bytes()
        send(wrong)  # wrong token
        send(response(request, ACK, mid=request.mid ^ 1))  # wrong MID
        send(response(request, ACK))

    responder = responder_factory(handler)
    generator = make_generator(responder.port, clients=1)
    generator.run(requests=3)
    totals = generator.totals()
    assert totals["success"] == 3
    assert totals["ignored"] == 6


def test_duration_and_stop_end_an_unlimited_run(
    responder_factory: Any, make_generator: Any
) -> None:
    responder = responder_factory(piggybacked)
    generator = make_generator(responder.port, clients=2)
    generator.run(duration=0.2, warmup=0.1)
    assert generator.totals()["active"] == 2  # stopped, not finished
    window = generator.window()
    assert window["sent"] <= generator.totals()["sent"]
    assert window["duration"] > 0

    # a stop() right after start() is not lost
    generator.start(duration=60)
    generator.stop()
    assert generator.join(5)
    assert not generator.running

    generator.start(duration=60)
    with pytest.raises(RuntimeError):
        generator.start(duration=60)
    assert generator.running
    generator.stop()
    assert generator.join(5)


def test_ctrl_c_stops_the_run_and_leaves_consistent_results(
    responder_factory: Any, make_generator: Any
) -> None:
    responder = responder_factory(piggybacked)
    generator = make_generator(responder.port, clients=2)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        generator.run(duration=30)
    timer.join()
    assert not generator.running
    # read after the loop has really ended: no half-written window
    assert 0 < generator.window()["duration"] < 30


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_port_stops_on_error(make_generator: Any) -> None:
    generator = make_generator(free_udp_port(), clients=1, ack_timeout_ms=10_000)
    generator.run(requests=1, duration=5, stop_on_error=True)
    assert generator.client(0)["last_error"] != 0
    assert generator.totals()["socket_errors"] >= 1


def test_generator_argument_checks(make_generator: Any) -> None:
    with pytest.raises(ValueError):
        _loadgen.LoadGenerator([])
    generator = make_generator(9, clients=1)
    with pytest.raises(ValueError):
        generator.run()  # neither requests nor duration


# -- the command line --------------------------------------------------------------------------


def test_progress_line_format() -> None:
    zero = dict.fromkeys(
        ("sent", "retransmissions", "success", "error_responses", "timeouts", "rejects"), 0
    )
    now = {
        **zero,
        "sent": 286184,
        "success": 286180,
        "retransmissions": 4922,
        "active": 2000,
        "pending": 0,
    }
    assert benchmark.progress_line(1, zero, now, 10.0) == (
        "[0001]: 286184 requests (28618 reqs/s, 4922 retransmissions (1.72%), "
        "0 transmission errors (0.00%), 2000 clients)"
    )
    stale = {**now, "active": 3, "pending": 1}
    assert benchmark.progress_line(2, now, stale, 10.0) == (
        "[0002]: 286184 requests, stale (3 clients, 1 pending)"
    )


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("127.0.0.1/benchmark?rlen=40", [(11, b"benchmark"), (15, b"rlen=40")]),
        ("coap://localhost:5683/a/b%20c/", [(3, b"localhost"), (11, b"a"), (11, b"b c")]),
        ("coap://[::1]", []),
    ],
)
def test_parse_uri(uri: str, options: list[tuple[int, bytes]]) -> None:
    target = benchmark.parse_uri(uri)
    assert target.port == 5683
    assert target.options == options


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = client.main(["benchmark", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["http://127.0.0.1/x"], "is not a coap:// URI"),
        (["coaps://127.0.0.1/x"], "scheme 'coaps' is not supported"),
        (["coap://127.0.0.1:99999/x"], "invalid URI"),
        (["coap://127.0.0.1/x", "--clients", "0"], "--clients must be 1..20000"),
        (["coap://127.0.0.1/x", "--clients", "20001"], "--clients must be 1..20000"),
        (["coap://127.0.0.1/x", "--duration", "99999"], "--duration must be"),
        (["coap://127.0.0.1/x", "--payload-random", "5000"], "--payload-random must be"),
    ],
)
def test_cli_bad_input(capsys: Any, argv: list[str], message: str) -> None:
    code, _out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("extclient benchmark: error: ")
    assert message in err
    assert err.count("\n") == 1


def test_cli_bad_option_value(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        client.main(["benchmark", "coap://127.0.0.1/x", "--clients", "many"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("extclient benchmark: error: argument --clients")
    assert err.count("\n") == 1


def test_cli_connection_refused(capsys: Any) -> None:
    uri = f"coap://127.0.0.1:{free_udp_port()}/x"
    code, _out, err = run_cli(capsys, uri, "--requests", "1")
    assert code == 1
    assert "first request POST" in err and "connection refused" in err
    assert err.count("\n") == 1


def test_cli_local_port_in_use(capsys: Any, responder_factory: Any) -> None:
    responder = responder_factory(piggybacked)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 0))
        port = busy.getsockname()[1]
        code, _out, err = run_cli(
            capsys, f"coap://127.0.0.1:{responder.port}/x", "--local-port", str(port)
        )
    assert code == 1
    assert f"local port {port} is already in use" in err


def test_cli_run_prints_californium_lines_and_json(
    capsys: Any, tmp_path: Any, responder_factory: Any
) -> None:
    responder = responder_factory(piggybacked)
    result_file = tmp_path / "result.json"
    uri = f"coap://127.0.0.1:{responder.port}/benchmark?rlen=40"
    code, out, err = run_cli(
        capsys, uri, "--clients", "3", "--requests", "20", "--method", "get",
        "--payload-random", "8", "--json", str(result_file),
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Create 3 benchmark clients, expect to send 60 requests overall to {uri}"
    assert "Benchmark clients, first request successful." in lines
    assert any(line.startswith("Benchmark clients created. ") for line in lines)
    assert "Benchmark started." in lines
    assert "3 benchmark clients finished." in lines
    assert "60 requests sent, 60 expected" in lines
    assert any(line.startswith("success-responses : #: 60, avg.: ") for line in lines)
    assert "errors-responses  : no values available!" in lines
    assert any(line.startswith("latency           : p50: ") for line in lines)
    result = json.loads(result_file.read_text())
    assert result["requests"] == result["responses"] == result["success"] == 60
    assert result["transmission_errors"] == 0
    assert set(result["latency_ms"]) >= {"p50", "p90", "p99", "p99.9", "max"}
    # the requests themselves: GET with the random printable payload, Content-Format and Accept 0
    request = responder.requests()[-1]
    assert request.code == GET and request.uri_query == ["rlen=40"]
    assert len(request.payload) == 8 and all(0x20 <= b <= 0x7E for b in request.payload)
    assert request.content_format == 0 and request.accept == 0
