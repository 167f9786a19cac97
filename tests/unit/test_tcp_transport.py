"""CoAP over TCP (RFC 8323) end to end on loopback: an in-process TcpServerTransport, driven by
blocking client sockets that speak the framing of _tcp_codec.

Covered: the CSM exchange (§3.3, §5.3), requests and responses matched by token, pipelined and
fragmented frames, Ping/Pong and Custody (§5.4), Release and Abort in both directions (§5.5,
§5.6), Abort for malformed, oversized and bad-CSM messages, 4.02/5.05 as over UDP, deferred
responses, observe with cancel by GET Observe=1 and by closing (§7), BERT (§6), the server's own
requests, the connection limit, the idle, slow and stall timeouts, bounded buffers with read
pausing, and the counters.
"""

from __future__ import annotations

import asyncio
import platform
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop

from extplugtest.coap import _tcp_codec as tcp
from extplugtest.coap._codec import Message
from extplugtest.coap.blockwise import decode_block, encode_block
from extplugtest.coap.codes import Code, Option
from extplugtest.coap.endpoint_tcp import TcpEndpoint
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response, separate
from extplugtest.coap.transport_tcp import (
    TcpBackendError,
    TcpLimits,
    TcpServerTransport,
    demo_certs,
    demo_tls_server_context,
)
from extplugtest.resources.context import MyContext
from extplugtest.tools.tcp_transport import demo_tls_client_context

LARGE = bytes(range(256)) * 20  # 5120 bytes
WAIT = 5.0


class Text(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, "hello", 0)


class Large(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, LARGE, 42)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CHANGED, f"got {len(exchange.request.payload)}", 0)


class Observed(Resource):
    def __init__(self) -> None:
        super().__init__("obs", observable=True)
        self.value = 0

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, f"value {self.value}", 0)


class Slow(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return separate(response(Code.CONTENT, "later", 0), 0.05)


class Broken(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        raise RuntimeError("broken on purpose")


def tree() -> Resource:
    root = Resource("")
    root.add(Text("text"), Large("large"), Observed(), Slow("slow"), Broken("broken"))
    root.add(MyContext())
    return root


class TcpServer:
    """A TcpServerTransport on 127.0.0.1:0, run by its own uvloop in a thread."""

    def __init__(
        self, limits: TcpLimits, bulk_blocks: int = 4, tls: ssl.SSLContext | None = None
    ) -> None:
        self.loop = uvloop.new_event_loop()
        self.root = tree()
        self.endpoint = TcpEndpoint(self.root, bulk_blocks=bulk_blocks)
        self.transport = TcpServerTransport(
            self.endpoint, ("127.0.0.1", 0), limits=limits, ssl_context=tls
        )
        self.transport.open(self.loop)
        self.address = self.transport.local_address
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=WAIT)

    def counters(self) -> dict[str, int]:
        return self.call(self.endpoint.counters)

    def wait_for(self, name: str, value: int) -> dict[str, int]:
        """Poll the counters (bounded) until *name* reaches *value*."""
        deadline = time.monotonic() + WAIT
        while True:
            counters = self.counters()
            if counters[name] >= value or time.monotonic() > deadline:
                return counters
            time.sleep(0.02)

    def stop(self) -> None:
        self.call(self.transport.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=WAIT)
        self.loop.close()


class Peer:
    """A blocking CoAP-over-TCP client connection."""

    def __init__(
        self,
        address: tuple,
        *,
        csm: Message | None = None,
        rcvbuf: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT)
        self.sock.connect(address)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=address[0])
        self.buffer = bytearray()
        self.eof = False
        if csm is not None:
            self.send(csm)

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def send(self, message: Message | bytes) -> None:
        self.sock.sendall(tcp.encode(message) if isinstance(message, Message) else message)

    def receive(self, timeout: float = WAIT) -> Message | None:
        """The next frame, or None at EOF or after *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while True:
            size = tcp.frame_size(self.buffer)
            if size and len(self.buffer) >= size:
                frame = bytes(self.buffer[:size])
                del self.buffer[:size]
                return tcp.decode(frame)
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            except (ConnectionResetError, ssl.SSLEOFError):
                data = b""
            if not data:
                self.eof = True
            self.buffer += data

    def receive_non_signal(self, timeout: float = WAIT) -> Message | None:
        while (message := self.receive(timeout)) is not None and message.code >> 5 == 7:
            pass
        return message

    def closed(self, timeout: float = WAIT) -> bool:
        """Read until EOF (True) or *timeout*; what arrives meanwhile is kept in ``seen``."""
        self.seen: list[Message] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.receive(deadline - time.monotonic())
            if message is None:
                return self.eof
            self.seen.append(message)
        return False

    def request(self, code: int, path: str, token: bytes = b"\x01", **options: Any) -> Message:
        message = Message(0, code, 0, token, payload=options.pop("payload", b""))
        for segment in path.split("/"):
            message.add_option(Option.URI_PATH, segment)
        for number, value in options.pop("extra", ()):
            message.add_option(number, value)
        self.send(message)
        answer = self.receive_non_signal()
        assert answer is not None, f"no answer to {message}"
        return answer

    def close(self) -> None:
        self.sock.close()


def csm(max_message_size: int | None = None, block_wise: bool = False) -> Message:
    message = Message(code=tcp.CSM)
    if max_message_size is not None:
        message.add_option(tcp.MAX_MESSAGE_SIZE, max_message_size)
    if block_wise:
        message.add_option(tcp.BLOCK_WISE_TRANSFER, b"")
    return message


def io_uring_available() -> bool:
    try:
        tcp.TcpEngine(None, io="io_uring")
    except OSError:
        return False
    return True


@pytest.fixture(
    params=[
        pytest.param(
            "io_uring",
            marks=pytest.mark.skipif(not io_uring_available(), reason="no io_uring here"),
        ),
        "epoll",
    ]
)
def io_backend(request: pytest.FixtureRequest) -> str:
    """Every server test runs on both I/O backends of the engine's plain sockets."""
    return str(request.param)


@pytest.fixture
def make_server(io_backend: str) -> Iterator[Callable[..., TcpServer]]:
    servers: list[TcpServer] = []

    def start(bulk_blocks: int = 4, tls: ssl.SSLContext | None = None, **limits: Any) -> TcpServer:
        limits.setdefault("io_backend", io_backend)
        server = TcpServer(TcpLimits(**limits), bulk_blocks, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., TcpServer]) -> TcpServer:
    return make_server()


@pytest.fixture
def connect() -> Iterator[Callable[..., Peer]]:
    peers: list[Peer] = []

    def open_peer(address: tuple, **options: Any) -> Peer:
        peer = Peer(address, **options)
        peers.append(peer)
        return peer

    yield open_peer
    for peer in peers:
        peer.close()


# -- CSM and plain exchanges ---------------------------------------------------------------------


def test_server_sends_its_csm_first_without_waiting(server, connect):
    peer = connect(server.address)  # sends nothing
    first = peer.receive()
    assert first is not None and first.code == tcp.CSM
    assert first.options == [(2, (9216).to_bytes(2, "big")), (4, b"")]


def test_request_is_answered_with_its_token(server, connect):
    peer = connect(server.address, csm=csm())
    assert peer.receive().code == tcp.CSM
    answer = peer.request(Code.GET, "text", token=b"\xbe\xef")
    assert (answer.code, answer.token, answer.payload) == (Code.CONTENT, b"\xbe\xef", b"hello")
    missing = peer.request(Code.GET, "nothing", token=b"")
    assert (missing.code, missing.token) == (Code.NOT_FOUND, b"")
    assert server.counters()["tcp-csm-received"] == 1


def test_missing_csm_is_tolerated_and_counted(server, connect):
    """§3.3 says Abort; Californium's clients send no CSM, so its base values apply."""
    peer = connect(server.address)
    assert peer.request(Code.GET, "text").code == Code.CONTENT
    assert server.counters()["tcp-csm-missing"] == 1


def test_pipelined_and_fragmented_requests(server, connect):
    peer = connect(server.address, csm=csm())
    frames = b"".join(
        tcp.encode(Message(0, Code.GET, 0, bytes([i]), [(Option.URI_PATH, b"text")]))
        for i in range(50)
    )
    for i in range(0, len(frames), 7):  # 7-byte pieces: frames split anywhere
        peer.send(frames[i : i + 7])
        time.sleep(0.001 if i % 70 == 0 else 0)
    tokens = [peer.receive_non_signal().token for _ in range(50)]
    assert tokens == [bytes([i]) for i in range(50)]


def test_empty_messages_are_ignored(server, connect):
    peer = connect(server.address, csm=csm())
    peer.send(b"\x00\x00" + b"\x10\x00\x48")  # two Empty messages, the second with garbage
    assert peer.request(Code.GET, "text").code == Code.CONTENT
    assert server.counters()["recv-ignored"] == 2


def test_bad_critical_option_and_proxy_as_over_udp(server, connect):
    peer = connect(server.address, csm=csm())
    bad = peer.request(Code.GET, "text", extra=[(9, b"x")])
    assert bad.code == Code.BAD_OPTION
    proxy = peer.request(Code.GET, "text", extra=[(Option.PROXY_URI, b"coap://x")])
    assert proxy.code == Code.PROXYING_NOT_SUPPORTED


def test_deferred_and_failing_handlers(server, connect):
    peer = connect(server.address, csm=csm())
    later = peer.request(Code.GET, "slow", token=b"s")
    assert (later.code, later.token, later.payload) == (Code.CONTENT, b"s", b"later")
    failed = peer.request(Code.GET, "broken", token=b"b")
    assert (failed.code, failed.token) == (Code.INTERNAL_SERVER_ERROR, b"b")


# -- signalling ----------------------------------------------------------------------------------


def test_ping_gets_pong_with_the_same_token_and_custody(server, connect):
    peer = connect(server.address, csm=csm())
    assert peer.receive().code == tcp.CSM
    peer.send(Message(code=tcp.PING, token=b"\x42"))
    pong = peer.receive()
    assert (pong.code, pong.token, pong.options) == (tcp.PONG, b"\x42", [])
    ping = Message(code=tcp.PING, token=b"\x43")
    ping.add_option(tcp.CUSTODY, b"")
    peer.send(ping)
    pong = peer.receive()
    assert (pong.code, pong.token, pong.options) == (tcp.PONG, b"\x43", [(2, b"")])
    assert server.counters()["recv-pings"] == 2


def test_release_closes_after_the_answers(server, connect):
    peer = connect(server.address, csm=csm())
    request = Message(0, Code.GET, 0, b"r", [(Option.URI_PATH, b"text")])
    peer.send(tcp.encode(request) + tcp.encode(Message(code=tcp.RELEASE)))
    assert peer.closed()
    assert [m.code for m in peer.seen] == [tcp.CSM, Code.CONTENT]
    assert server.wait_for("tcp-releases-received", 1)["tcp-connections"] == 0


def test_abort_from_the_client_closes(server, connect):
    peer = connect(server.address, csm=csm())
    peer.send(Message(code=tcp.ABORT, payload=b"bye"))
    assert peer.closed()
    assert server.wait_for("tcp-aborts-received", 1)["tcp-connections"] == 0


@pytest.mark.parametrize(
    ("data", "bad_option", "counter"),
    [
        (b"\x09\x01" + b"t" * 9, None, "recv-malformed"),  # TKL 9
        (b"\x20\x01\xf0\x00", None, "recv-malformed"),  # option delta nibble 15
        (b"\x00\x21", None, "recv-malformed"),  # code 1.01: a reserved class
        (b"\x00\xe9", None, "recv-malformed"),  # signalling code 7.09: unknown
        (b"\xf0\x00\x00\x00\x00\x01", None, "recv-oversized"),  # 65805 bytes announced
        (b"\x20\xe1\x91\x01", 9, "tcp-aborts-sent"),  # CSM with a critical option 9
        (b"\x60\xe1\x25" + b"\x00" * 5, 2, "tcp-aborts-sent"),  # Max-Message-Size of 5 bytes
    ],
)
def test_abort_for_what_cannot_be_processed(server, connect, data, bad_option, counter):
    """§5.6: format errors, oversized frames and a bad CSM are answered with Abort."""
    peer = connect(server.address)
    peer.send(data)
    assert peer.closed()
    abort = peer.seen[-1]
    assert abort.code == tcp.ABORT and abort.payload, peer.seen
    if bad_option is not None:
        assert abort.options == [(tcp.BAD_CSM_OPTION, bytes([bad_option]))]
    counters = server.wait_for("tcp-aborts-sent", 1)
    assert counters[counter] >= 1 and counters["tcp-connections"] == 0


def test_server_close_sends_release(make_server, connect):
    server = make_server()
    peer = connect(server.address, csm=csm())
    assert peer.receive().code == tcp.CSM
    server.call(server.transport.close)
    assert peer.closed()
    assert [m.code for m in peer.seen] == [tcp.RELEASE]


# -- observe over TCP (§7) ------------------------------------------------------------------------


def observe(peer: Peer, token: bytes, value: int) -> Message:
    return peer.request(Code.GET, "obs", token=token, extra=[(Option.OBSERVE, value)])


def test_observe_notifications_and_cancel_by_get(server, connect):
    peer = connect(server.address, csm=csm())
    registration = observe(peer, b"o1", 0)
    assert registration.code == Code.CONTENT and registration.observe is not None
    resource = server.root.children["obs"]
    for value in range(1, 4):
        resource.value = value
        server.call(resource.changed)
        note = peer.receive_non_signal()
        assert (note.token, note.payload) == (b"o1", f"value {value}".encode())
        assert note.observe is not None
    cancel = observe(peer, b"o1", 1)
    assert cancel.code == Code.CONTENT and cancel.observe is None
    assert server.counters()["observes"] == 0
    server.call(resource.changed)
    assert peer.receive(0.3) is None


def test_closing_the_connection_ends_its_observations(server, connect):
    peer = connect(server.address, csm=csm())
    observe(peer, b"o2", 0)
    other = connect(server.address, csm=csm())
    observe(other, b"o3", 0)
    assert server.counters()["observes"] == 2
    peer.close()
    counters = server.wait_for("tcp-closed-by-peer", 1)
    assert counters["observes"] == 1
    server.call(server.root.children["obs"].changed)
    assert other.receive_non_signal().token == b"o3"


# -- block-wise and BERT (§6) ---------------------------------------------------------------------


def block2(message: Message) -> tuple[int, bool, int]:
    return decode_block(message.uint_option(Option.BLOCK2))


def test_without_bert_large_answers_go_in_1024_byte_blocks(server, connect):
    peer = connect(server.address, csm=csm())
    first = peer.request(Code.GET, "large")
    assert block2(first) == (0, True, 6) and len(first.payload) == 1024
    bert = peer.request(Code.GET, "large", extra=[(Option.BLOCK2, encode_block(1, False, 7))])
    assert bert.code == Code.BAD_REQUEST  # SZX 7 without BERT in the CSM


def test_bert_download_when_both_csms_announce_it(server, connect):
    peer = connect(server.address, csm=csm(8192, block_wise=True))
    first = peer.request(Code.GET, "large")
    assert block2(first) == (0, True, 7) and first.payload == LARGE[:4096]
    rest = peer.request(Code.GET, "large", extra=[(Option.BLOCK2, encode_block(4, False, 7))])
    assert block2(rest) == (4, False, 7) and rest.payload == LARGE[4096:]


def test_bert_block_size_follows_the_peers_max_message_size(server, connect):
    peer = connect(server.address, csm=csm(2000, block_wise=True))  # room for one unit
    first = peer.request(Code.GET, "large")
    assert block2(first) == (0, True, 7) and len(first.payload) == 1024


def test_bert_upload(server, connect):
    peer = connect(server.address, csm=csm(8192, block_wise=True))
    body = b"u" * 5000
    step = peer.request(
        Code.POST, "large", extra=[(Option.BLOCK1, encode_block(0, True, 7))], payload=body[:4096]
    )
    assert step.code == Code.CONTINUE
    assert decode_block(step.uint_option(Option.BLOCK1)) == (0, True, 7)
    done = peer.request(
        Code.POST, "large", extra=[(Option.BLOCK1, encode_block(4, False, 7))], payload=body[4096:]
    )
    assert (done.code, done.payload) == (Code.CHANGED, b"got 5000")
    assert decode_block(done.uint_option(Option.BLOCK1)) == (4, False, 7)


def test_bert_block_of_a_wrong_size_is_4_08(server, connect):
    peer = connect(server.address, csm=csm(8192, block_wise=True))
    step = peer.request(
        Code.POST, "large", extra=[(Option.BLOCK1, encode_block(0, True, 7))], payload=b"x" * 1000
    )
    assert step.code == Code.REQUEST_ENTITY_INCOMPLETE


# -- the server's own requests -------------------------------------------------------------------


def test_server_request_over_the_connection(server, connect):
    peer = connect(server.address, csm=csm())
    assert peer.receive().code == tcp.CSM
    address = peer.address

    async def ask() -> Message:
        request = Message(0, Code.GET)
        request.add_option(Option.URI_PATH, "feed")
        return await server.endpoint.request(request, address, timeout=WAIT)

    future = asyncio.run_coroutine_threadsafe(ask(), server.loop)
    request = peer.receive()
    assert (request.code, request.uri_path) == (Code.GET, "feed")
    peer.send(Message(code=Code.CONTENT, token=request.token, payload=b"fed"))
    assert future.result(timeout=WAIT).payload == b"fed"
    pending = asyncio.run_coroutine_threadsafe(ask(), server.loop)
    assert peer.receive() is not None
    peer.close()
    with pytest.raises(ConnectionResetError):
        pending.result(timeout=WAIT)


# -- limits --------------------------------------------------------------------------------------


def test_connection_limit_refuses_at_once(make_server, connect):
    server = make_server(max_connections=2)
    peers = [connect(server.address, csm=csm()) for _ in range(2)]
    for peer in peers:
        assert peer.receive().code == tcp.CSM
    third = connect(server.address, csm=csm())
    assert third.closed() and third.seen == []
    assert server.counters()["tcp-refused"] == 1
    peers[0].close()
    server.wait_for("tcp-closed-by-peer", 1)
    fourth = connect(server.address, csm=csm())
    assert fourth.request(Code.GET, "text").code == Code.CONTENT


def test_idle_connection_is_released_and_closed(make_server, connect):
    server = make_server(idle_timeout=0.3)
    peer = connect(server.address, csm=csm())
    assert peer.closed(timeout=3.0)
    assert [m.code for m in peer.seen] == [tcp.CSM, tcp.RELEASE]
    assert server.counters()["tcp-closed-idle"] == 1


def test_slow_loris_and_silent_connections_are_closed(make_server, connect):
    server = make_server(slow_timeout=0.3)
    slow = connect(server.address, csm=csm())
    silent = connect(server.address)
    frame = tcp.encode(Message(0, Code.GET, 0, b"", [(Option.URI_PATH, b"text")]))
    slow.send(frame[:3])  # and never the rest
    assert slow.closed(timeout=3.0)
    assert [m.code for m in slow.seen] == [tcp.CSM, tcp.ABORT]
    assert silent.closed(timeout=3.0)
    assert server.counters()["tcp-closed-slow"] == 2


def test_a_peer_that_does_not_read_is_paused_then_closed(make_server, connect):
    """Unsent bytes stay bounded: reading pauses, and a stalled connection is closed."""
    server = make_server(max_pending=16384, stall_timeout=0.5)
    peer = connect(server.address, csm=csm(), rcvbuf=4096)
    request = tcp.encode(Message(0, Code.GET, 0, b"", [(Option.URI_PATH, b"large")]))
    peer.sock.setblocking(False)
    sent = 0
    for _ in range(4000):  # until the server stops reading and the kernel buffers are full
        try:
            sent += peer.sock.send(request * 50)
        except BlockingIOError:
            time.sleep(0.01)
            if server.counters()["tcp-read-pauses"]:
                break
        except (ConnectionResetError, BrokenPipeError):
            break
    counters = server.wait_for("tcp-closed-stalled", 1)
    assert counters["tcp-read-pauses"] >= 1
    assert counters["tcp-closed-stalled"] == 1 and counters["tcp-connections"] == 0


@pytest.mark.parametrize("socket_buffer", [32768, 0])
def test_kernel_buffers_of_a_connection_are_fixed(make_server, connect, socket_buffer):
    """Kernel memory per connection stays bounded: the accepted socket keeps the buffers of
    the listener (Linux doubles the value), however much goes through it; with 0 the
    kernel's autotuning lets the send buffer grow."""
    server = make_server(socket_buffer=socket_buffer)
    peer = connect(server.address, csm=csm())
    path = [(Option.URI_PATH, b"large")]
    for i in range(10):  # some hundred kB each way
        peer.send(
            b"".join(tcp.encode(Message(0, Code.GET, 0, bytes([i, j]), path)) for j in range(64))
        )
        answers = [peer.receive_non_signal() for _ in range(64)]
        assert all(a is not None and a.code == Code.CONTENT for a in answers)

    def buffers() -> tuple[int, int]:
        (conn,) = server.transport.engine.connections.values()
        with socket.fromfd(conn.fd, socket.AF_INET, socket.SOCK_STREAM) as sock:  # a dup
            return (
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            )

    send_buffer, receive_buffer = server.call(buffers)
    if socket_buffer:
        assert (send_buffer, receive_buffer) == (2 * socket_buffer, 2 * socket_buffer)
    else:
        assert send_buffer > 2 * 32768  # net.ipv4.tcp_wmem: 16 kB at first, then grown


def test_a_slow_reader_gets_every_answer_in_order(make_server, connect):
    """Reading pauses while the answers wait and resumes when the peer reads: nothing of what
    came meanwhile is lost or reordered (with io_uring the receive is cancelled and re-armed,
    and what arrived before the cancel is kept)."""
    server = make_server(max_pending=16384)
    peer = connect(server.address, csm=csm(), rcvbuf=4096)
    count = 0
    path = [(Option.URI_PATH, b"large")]
    for _ in range(200):  # until reading pauses (the kernel buffers hold a few MB first)
        peer.send(
            b"".join(
                tcp.encode(Message(0, Code.GET, 0, i.to_bytes(2, "big"), path))
                for i in range(count, count + 100)
            )
        )
        count += 100
        if server.counters()["tcp-read-pauses"]:
            break
    answers = [peer.receive_non_signal() for _ in range(count)]
    assert [a.token if a else None for a in answers] == [i.to_bytes(2, "big") for i in range(count)]
    assert all(a is not None and a.code == Code.CONTENT for a in answers)
    counters = server.counters()
    assert counters["tcp-read-pauses"] >= 1 and counters["tcp-connections"] == 1
    assert counters["tcp-closed-overflow"] == 0 and counters["tcp-closed-stalled"] == 0


class Deferred(Resource):
    """Answers every GET later, outside the read that brought the request, with *size*
    bytes: output that pausing the connection's reads cannot hold back."""

    def __init__(self, size: int) -> None:
        super().__init__("deferred")
        self.payload = bytes(size)

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return separate(response(Code.CONTENT, self.payload, 0))


def test_a_peer_that_never_reads_is_closed_at_the_pending_bound(make_server, connect):
    """The unsent bytes of a connection never exceed max_pending: a peer that sends 200
    requests and reads nothing gets 200 deferred 900-byte answers (180 kB) that the handlers
    hand over whether reading is paused or not; once the next one would go past the bound the
    connection is closed, counted as tcp-closed-overflow, and the answers still due find no
    connection (send-errors). The server goes on serving others."""
    max_pending, count = 4096, 200
    server = make_server(max_message_size=1152, max_pending=max_pending, socket_buffer=4096)
    server.call(server.root.add, Deferred(900))
    engine = server.transport.engine
    send_confirmable = server.endpoint.send_confirmable
    samples: list[int | None] = []  # after every deferred answer: the unsent bytes, or None

    def sampled(message: Message, peer: tuple, on_done: Any = None) -> bool:
        sent = send_confirmable(message, peer, on_done)
        connection = engine.connection(peer)
        samples.append(None if connection is None else connection.pending)
        return bool(sent)

    server.endpoint.send_confirmable = sampled  # (separate answers of CON requests go here)
    peer = connect(server.address, csm=csm(), rcvbuf=4096)
    path = [(Option.URI_PATH, b"deferred")]
    requests = [Message(0, Code.GET, 0, i.to_bytes(2, "big"), path) for i in range(count)]
    peer.send(b"".join(tcp.encode(request) for request in requests))  # and never read
    counters = server.wait_for("tcp-closed-overflow", 1)
    assert counters["tcp-closed-overflow"] == 1 and counters["tcp-connections"] == 0
    deadline = time.monotonic() + WAIT
    while len(server.call(list, samples)) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    seen = server.call(list, samples)
    assert len(seen) == count
    open_samples = [pending for pending in seen if pending is not None]
    assert max(open_samples) <= max_pending  # the bound held after every answer
    assert max(open_samples) > max_pending // 4  # (the answers did pile up past the pause mark)
    assert 0 < len(open_samples) < count  # closed before all went out: the rest were dropped
    # the answer that met the bound is the overflow; each one after it is a send error
    assert server.counters()["send-errors"] == count - len(open_samples) - 1
    assert peer.closed()  # what the kernel held, then EOF
    assert all(m.code in (tcp.CSM, Code.CONTENT) for m in peer.seen)
    other = connect(server.address, csm=csm())
    assert other.request(Code.GET, "text").code == Code.CONTENT


class Answering:
    """An endpoint for a bare TcpEngine: it answers every request with *payload*, or with
    the request's token ten times."""

    def __init__(self, payload: bytes | None = None) -> None:
        self.payload = payload

    def on_request(self, message: Message, peer: tuple) -> Message:
        payload = message.token * 10 if self.payload is None else self.payload
        return Message(0, Code.CONTENT, 0, message.token, payload=payload)

    def on_response(self, message: Message, peer: tuple) -> None:
        pass


def test_closed_connections_are_let_go(io_backend):
    """The engine keeps no reference to a connection once it is closed, whatever the kernel
    still had under way for it (io_uring requests hold one until their last completion)."""
    import sys

    engine = tcp.TcpEngine(Answering(b"x" * 100), io=io_backend)
    listener = socket.create_server(("127.0.0.1", 0))
    connections = []
    for round_ in range(20):
        client = socket.create_connection(listener.getsockname(), timeout=WAIT)
        sock, peer = listener.accept()
        sock.setblocking(False)
        conn = engine.open(sock, peer)
        client.sendall(tcp.encode(Message(0, Code.GET, 0, b"\x07")) * 3)
        if round_ % 2:
            client.close()  # closed by the peer: FIN while requests are under way
        deadline = time.monotonic() + WAIT
        while len(engine) and time.monotonic() < deadline:
            engine.poll()
            if round_ % 2 == 0:
                engine.close(peer)  # closed by us
            time.sleep(0.001)
        if round_ % 2 == 0:
            client.close()
        connections.append(conn)
    del conn
    engine.close_all()
    assert len(engine) == 0
    assert all(conn.closed for conn in connections)
    # getrefcount counts its argument and the loop variable: nothing else may hold one
    assert [sys.getrefcount(conn) for conn in connections] == [3] * len(connections)
    listener.close()


def test_io_backend_choice(monkeypatch):
    assert tcp.TcpEngine(None, io="epoll").io_backend == "epoll"
    assert tcp.TcpEngine(None).io_backend == ("io_uring" if io_uring_available() else "epoll")
    with pytest.raises(ValueError, match="io must be one of auto, io_uring, epoll"):
        tcp.TcpEngine(None, io="kqueue")
    with pytest.raises(ValueError, match="power of two"):
        tcp.TcpEngine(None, ring_buffers=3)
    monkeypatch.setenv("EXTPLUGTEST_TCP_IO", "epoll")
    assert TcpLimits().io_backend == "epoll"
    error = TcpBackendError("io_uring", OSError(1, "Operation not permitted"))
    assert str(error) == (
        "the io_uring backend for coap+tcp is not available here (Operation not permitted); "
        "set EXTPLUGTEST_TCP_IO=auto or epoll"
    )


def kernel_version() -> tuple[int, ...]:
    release = platform.release().split("-")[0].split(".")
    return tuple(int(part) for part in release[:2] if part.isdigit())


def engine_with_clients(count: int, **options: Any) -> tuple[Any, list[Peer], socket.socket]:
    engine = tcp.TcpEngine(Answering(), io="io_uring", **options)
    listener = socket.create_server(("127.0.0.1", 0))
    clients = []
    for _ in range(count):
        clients.append(Peer(listener.getsockname()))
        sock, address = listener.accept()
        sock.setblocking(False)
        engine.open(sock, address)
    return engine, clients, listener


def collect_answers(engine: Any, clients: list[Peer], per_client: int) -> dict[int, list[Message]]:
    """Poll the engine until every client has *per_client* answers (bounded by WAIT)."""
    answers: dict[int, list[Message]] = {i: [] for i in range(len(clients))}
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        engine.poll()
        for i, peer in enumerate(clients):
            while len(answers[i]) < per_client:
                message = peer.receive_non_signal(timeout=0.001)
                if message is None:
                    break
                answers[i].append(message)
        if all(len(got) == per_client for got in answers.values()):
            break
    return answers


def close_engine(engine: Any, clients: list[Peer], listener: socket.socket) -> None:
    for peer in clients:
        peer.close()
    engine.close_all()
    listener.close()


def test_a_connection_fits_what_the_reap_prefetches():
    """The io_uring reap prefetches the next completion's connection object whole: a field
    added beyond that size would be a cache miss per request again."""
    assert tcp.TcpConnection.__basicsize__ <= tcp.PREFETCHED_CONNECTION_BYTES


@pytest.mark.skipif(not io_uring_available(), reason="no io_uring here")
def test_io_uring_receive_buffers_are_filled_incrementally_where_the_kernel_can():
    """Linux 6.12 lets one buffer take many receives side by side (IOU_PBUF_RING_INC):
    chosen there, else a buffer per receive; the choice can be turned off."""
    incremental = kernel_version() >= (6, 12)
    expected = (64, 65536, True) if incremental else (1024, 4096, False)
    assert tcp.TcpEngine(None, io="io_uring").receive_buffers == expected
    assert tcp.TcpEngine(None, io="io_uring", ring_incremental=False).receive_buffers == (
        1024,
        4096,
        False,
    )
    assert tcp.TcpEngine(
        None, io="io_uring", ring_buffers=4, ring_buffer_size=100
    ).receive_buffers == (4, 100, incremental)
    assert tcp.TcpEngine(None, io="epoll").receive_buffers is None


@pytest.mark.skipif(not io_uring_available(), reason="no io_uring here")
@pytest.mark.parametrize("incremental", [False, True], ids=["buffer-per-receive", "incremental"])
def test_io_uring_receive_rearms_when_its_buffers_run_out(incremental: bool):
    """With 2 receive buffers of 8 bytes for 8 connections that all send 4 bytes at once
    the kernel ends multishot receives (ENOBUFS); each is armed again and every request is
    answered."""
    engine, clients, listener = engine_with_clients(
        8, ring_buffers=2, ring_buffer_size=8, ring_incremental=incremental
    )
    for round_ in range(5):
        for i, peer in enumerate(clients):
            peer.send(tcp.encode(Message(0, Code.GET, 0, bytes([i, round_]))))
        answers = collect_answers(engine, clients, 1)
        assert [[a.payload for a in answers[i]] for i in range(len(clients))] == [
            [bytes([i, round_]) * 10] for i in range(len(clients))
        ]
    assert engine.counters()["tcp-ring-rearms"] >= 1
    close_engine(engine, clients, listener)


@pytest.mark.skipif(not io_uring_available(), reason="no io_uring here")
@pytest.mark.parametrize("incremental", [False, True], ids=["buffer-per-receive", "incremental"])
def test_io_uring_frames_split_across_receive_buffers(incremental: bool):
    """Receive buffers of 40 bytes and frames of 11-16 bytes sent three at a time: many
    frames end in another buffer than they begin (and, filled incrementally, one buffer holds
    parts of several connections' frames). Every request is answered, in order."""
    engine, clients, listener = engine_with_clients(
        6, ring_buffers=8, ring_buffer_size=40, ring_incremental=incremental
    )
    rounds, burst = 4, 3
    for round_ in range(rounds):
        for i, peer in enumerate(clients):
            frames = b""
            for k in range(burst):
                request = Message(0, Code.GET, 0, bytes([i, round_, k]) + b"\x00" * (i % 6))
                request.add_option(Option.URI_PATH, "split")
                frames += tcp.encode(request)
            peer.send(frames)
    answers = collect_answers(engine, clients, rounds * burst)
    for i in range(len(clients)):
        assert [a.token for a in answers[i]] == [
            bytes([i, round_, k]) + b"\x00" * (i % 6)
            for round_ in range(rounds)
            for k in range(burst)
        ]
    assert engine.counters()["recv-requests"] == len(clients) * rounds * burst
    close_engine(engine, clients, listener)


def test_a_tls_peer_that_does_not_read_is_paused_then_closed(make_server, connect):
    server = make_server(tls=demo_tls_server_context("NONE"), max_pending=16384, stall_timeout=0.5)
    peer = connect(server.address, csm=csm(), rcvbuf=4096, tls=client_context(False))
    request = tcp.encode(Message(0, Code.GET, 0, b"", [(Option.URI_PATH, b"large")]))
    peer.sock.settimeout(0.05)
    for _ in range(400):  # until the server stops reading and the buffers are full
        try:
            peer.sock.sendall(request * 50)
        except (TimeoutError, ssl.SSLError, ConnectionResetError, BrokenPipeError):
            if server.counters()["tcp-read-pauses"]:
                break
    counters = server.wait_for("tcp-closed-stalled", 1)
    assert counters["tcp-read-pauses"] >= 1
    assert counters["tcp-closed-stalled"] == 1 and counters["tcp-connections"] == 0


def test_counters_have_the_shared_names(server, connect):
    peer = connect(server.address, csm=csm())
    peer.request(Code.GET, "text")
    counters = server.counters()
    for name in ("recv-requests", "send-responses", "tcp-accepted", "observes"):
        assert name in counters
    assert counters["recv-requests"] == 1 and counters["send-responses"] >= 1


# -- TLS (RFC 8323 §4.1) ---------------------------------------------------------------------------


def client_context(certificate: bool = True, version: ssl.TLSVersion | None = None):
    context = ssl.create_default_context(cafile=demo_certs() / "ca.pem")
    context.set_alpn_protocols(["coap"])
    if certificate:
        context.load_cert_chain(demo_certs() / "client.pem", demo_certs() / "client.key")
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_with_alpn_coap_on_1_2_and_1_3(make_server, connect, version):
    server = make_server(tls=demo_tls_server_context("WANTED"))
    peer = connect(server.address, tls=client_context(version=version), csm=csm())
    assert peer.sock.selected_alpn_protocol() == "coap"
    assert peer.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(version, "TLSv1.3")
    assert peer.receive().code == tcp.CSM
    assert peer.request(Code.GET, "text").payload == b"hello"
    assert server.endpoint.scheme == "coaps+tcp"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_mycontext_shows_the_tls_session(make_server, connect, version):
    server = make_server(tls=demo_tls_server_context("WANTED"))
    peer = connect(server.address, tls=client_context(version=version), csm=csm())
    text = peer.request(Code.GET, "mycontext").payload.decode()
    fields = dict(line.split(": ", 1) for line in text.splitlines())
    assert fields["port"] == str(peer.sock.getsockname()[1])
    # the demo client certificate's subject as RFC 4514 (openssl -nameopt RFC2253) writes it
    assert fields["peer"] == "O=extplugtest demo,CN=cf-client"
    expected = {ssl.TLSVersion.TLSv1_2: "TLS_ECDHE_ECDSA_WITH_"}.get(version, "TLS_AES_")
    assert fields["cipher-suite"].startswith(expected)
    plain = connect(make_server().address, csm=csm())  # no TLS: no TLS fields
    assert "cipher-suite" not in plain.request(Code.GET, "mycontext").payload.decode()


def test_tls_bert_and_observe(make_server, connect):
    server = make_server(tls=demo_tls_server_context("NONE"))
    peer = connect(server.address, tls=client_context(False), csm=csm(8192, block_wise=True))
    first = peer.request(Code.GET, "large")
    assert block2(first) == (0, True, 7) and first.payload == LARGE[:4096]
    observe(peer, b"t1", 0)
    server.call(server.root.children["obs"].changed)
    assert peer.receive_non_signal().token == b"t1"


def test_tls_client_auth_needed(make_server, connect):
    """Without a client certificate the handshake fails (TLS 1.3 reports it on the first
    read, as the alert, a reset or, with OpenSSL 3.5, a broken pipe): not even the server's
    CSM arrives."""
    server = make_server(tls=demo_tls_server_context("NEEDED"))
    try:
        refused = connect(server.address, tls=client_context(certificate=False), csm=csm())
        received = refused.receive()
    except (ssl.SSLError, ConnectionError):
        received = None
    assert received is None
    assert server.wait_for("tcp-handshakes-failed", 1)["tcp-handshakes-failed"] == 1
    good = connect(server.address, tls=client_context(certificate=True), csm=csm())
    assert good.request(Code.GET, "text").code == Code.CONTENT


def test_tls_handshake_timeout(make_server, connect):
    server = make_server(tls=demo_tls_server_context("NONE"), handshake_timeout=0.3)
    silent = connect(server.address)  # TCP only, no ClientHello
    assert silent.closed(timeout=3.0)
    assert server.counters()["tcp-handshakes-failed"] == 1


def test_extclient_context_verifies_the_demo_server(make_server, connect):
    server = make_server(tls=demo_tls_server_context("NEEDED"))
    peer = connect(server.address, tls=demo_tls_client_context(), csm=csm())
    assert peer.request(Code.GET, "text").code == Code.CONTENT


def _strict_handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake in memory (no sockets); the client's object once both are done."""
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    near = client.wrap_bio(bios[0], bios[1], server_hostname="localhost")
    far = server.wrap_bio(bios[2], bios[3], server_side=True)
    done: set[int] = set()
    for _ in range(10):  # TLS 1.3 needs 2 flights, 1.2 3; more means a stuck handshake
        for index, side in enumerate((near, far)):
            try:
                side.do_handshake()
                done.add(index)
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if len(done) == 2:
            return near
    raise AssertionError("the in-memory handshake did not finish")


@pytest.mark.parametrize("pki", ["shipped", "fresh"])
def test_demo_pki_passes_strict_verification(pki, tmp_path):
    """Python 3.13's default contexts verify with X509_STRICT (key identifiers, key usage):
    the demo chain must pass it both ways, as server and as client certificate."""
    from extplugtest.dtls.pki import make_demo_pki

    certs = demo_certs()
    if pki == "fresh":
        make_demo_pki(tmp_path)
        certs = tmp_path
    client = ssl.create_default_context(cafile=certs / "ca.pem")
    client.load_cert_chain(certs / "client.pem", certs / "client.key")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs / "server.pem", certs / "server.key")
    server.load_verify_locations(certs / "ca.pem")
    server.verify_mode = ssl.CERT_REQUIRED
    for context in (client, server):
        context.verify_flags |= ssl.VERIFY_X509_STRICT
    near = _strict_handshake(client, server)
    subject = dict(item for rdn in near.getpeercert()["subject"] for item in rdn)
    assert subject["commonName"] == "cf-server"


# -- extserver ------------------------------------------------------------------------------------


def test_extserver_tcp_and_tls_endpoints(start_extserver, connect):
    """--tcp (default on): TCP on the UDP port, TLS on the DTLS port; --no-tcp: neither."""
    server = start_extserver("--no-plugtest")
    plain = connect(("127.0.0.1", server.port))
    assert plain.receive().code == tcp.CSM
    secure = connect(("127.0.0.1", server.port + 1), tls=client_context())
    assert secure.receive().code == tcp.CSM
    without = start_extserver("--no-plugtest", "--no-tcp")
    for port in (without.port, without.port + 1):
        with pytest.raises(ConnectionRefusedError):
            connect(("127.0.0.1", port))


def test_tls_client_certificates_of_another_trust_store(make_server, connect, tmp_path):
    """--trust-store applies to TLS too: a client certificate of another CA is refused with
    the demo CA and accepted with that CA as the trust store."""
    from extplugtest.dtls.pki import make_demo_pki

    make_demo_pki(tmp_path)
    client = ssl.create_default_context(cafile=demo_certs() / "ca.pem")
    client.set_alpn_protocols(["coap"])
    client.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    refusing = make_server(tls=demo_tls_server_context("NEEDED"))
    # TLS 1.3 reports the refused certificate after the client's side of the handshake:
    # as an error on the next read or as a closed connection without an answer
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, AssertionError)):
        connect(refusing.address, tls=client, csm=csm()).request(Code.GET, "text")
    assert refusing.counters()["tcp-handshakes-failed"] == 1
    trusting = make_server(tls=demo_tls_server_context("NEEDED", tmp_path / "ca.pem"))
    peer = connect(trusting.address, tls=client, csm=csm())
    assert peer.request(Code.GET, "text").payload == b"hello"
