"""The asyncio CoAP client behind ``extclient get|post|...|observe|receivetest``
(``extplugtest.tools.request``), its command-line helpers and the receive-test bookkeeping.

Transfers run against in-process servers (``make_server``); the message layer's corner cases
(retransmission, RST, separate and duplicate responses) against a scripted fake transport.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Callable, Iterable

import cbor2
import pytest
import uvloop

from extplugtest.coap._codec import Message, parse
from extplugtest.coap.blockwise import decode_block, encode_block
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response, separate
from extplugtest.coap.transmission import TransmissionParameters
from extplugtest.tools import client as cli
from extplugtest.tools import oneshot, receivetest
from extplugtest.tools.request import (
    ClientError,
    CoapClient,
    RequestRejected,
    RequestTimeout,
    UdpTransport,
    describe,
    parse_uri,
)

LARGE = bytes(range(256)) * 5  # 1280 bytes
FAST = TransmissionParameters(ack_timeout=0.05, ack_random_factor=1.0, max_retransmit=2)


# -- a resource tree -------------------------------------------------------------------------


class Text(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, "hello", ContentFormat.TEXT_PLAIN)


class Large(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, LARGE, ContentFormat.OCTET_STREAM)


class Store(Resource):
    """PUT keeps the body, POST answers it upper-cased, GET returns it."""

    def __init__(self) -> None:
        super().__init__("store")
        self.body = b""

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, self.body, ContentFormat.TEXT_PLAIN)

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        self.body = exchange.request.payload
        return response(Code.CHANGED)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        self.body = exchange.request.payload
        return response(Code.CHANGED, self.body.upper(), ContentFormat.TEXT_PLAIN)


class Slow(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return separate(response(Code.CONTENT, "late", ContentFormat.TEXT_PLAIN), 0.05)


class Counter(Resource):
    """Observable; every ``changed()`` notifies the next number (as large as asked)."""

    def __init__(self, name: str, size: int = 0) -> None:
        super().__init__(name, observable=True)
        self.count = 0
        self.size = size

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        text = str(self.count).ljust(self.size, ".")
        return response(Code.CONTENT, text, ContentFormat.TEXT_PLAIN)

    def bump(self) -> None:
        self.count += 1
        self.changed()


def tree() -> Resource:
    root = Resource("")
    root.add(Text("text"), Large("large"), Store(), Slow("slow"))
    root.add(Counter("obs"), Counter("obs-large", 200))
    return root


@pytest.fixture
def server(make_server):
    return make_server(tree())


@pytest.fixture
def small_server(make_server):
    """The plugtest endpoint's sizes: 64-byte messages and blocks."""
    return make_server(tree(), max_message_size=64, preferred_block_size=64)


def run(coroutine):
    return uvloop.run(coroutine)


def get(path: str, code: int = Code.GET, payload: bytes = b"") -> Message:
    message = Message(Type.CON, code, payload=payload)
    for segment in path.split("/"):
        message.add_option(Option.URI_PATH, segment)
    if payload:
        message.add_option(Option.CONTENT_FORMAT, ContentFormat.TEXT_PLAIN)
    return message


def connect(address: tuple, **options) -> CoapClient:
    options.setdefault("timeout", 5.0)
    return CoapClient(UdpTransport(address[0], address[1]), **options)


# -- transfers against a real endpoint -------------------------------------------------------


def test_piggybacked_get(server):
    async def go():
        async with connect(server.address) as client:
            return await client.request(get("text"))

    result = run(go())
    assert result.code == Code.CONTENT and result.payload == b"hello"
    assert result.exchanges == 1 and result.size == len(result.message.to_bytes())


def test_separate_response_is_acknowledged(server):
    trace: list[tuple[str, Message]] = []

    async def go():
        async with connect(server.address, tracer=lambda d, m: trace.append((d, m))) as client:
            return await client.request(get("slow"))

    assert run(go()).payload == b"late"
    kinds = [(d, Type(m.type).name, m.code) for d, m in trace]
    assert kinds == [
        ("<==", "CON", Code.GET),
        ("==>", "ACK", Code.EMPTY),
        ("==>", "CON", Code.CONTENT),
        ("<==", "ACK", Code.EMPTY),
    ]
    assert trace[3][1].mid == trace[2][1].mid


def test_large_response_late_negotiation(server, small_server):
    async def go(address):
        async with connect(address) as client:
            return await client.request(get("large"))

    whole = run(go(server.address))  # 1280 bytes: the server slices it at 1024
    assert whole.payload == LARGE and whole.exchanges == 2
    assert not whole.message.has_option(Option.BLOCK2)
    small = run(go(small_server.address))
    assert small.payload == LARGE and small.exchanges == 20


@pytest.mark.parametrize("size", [16, 256])
def test_early_negotiation_asks_for_the_block_size(server, size):
    sent: list[Message] = []

    async def go():
        tracer = lambda d, m: sent.append(m) if d == "<==" else None  # noqa: E731
        async with connect(server.address, block_size=size, tracer=tracer) as client:
            return await client.request(get("large"))

    result = run(go())
    assert result.payload == LARGE and result.exchanges == -(-len(LARGE) // size)
    assert all(block_of(m, Option.BLOCK2)[2] == (size.bit_length() - 5) for m in sent)


def block_of(message: Message, option: int) -> tuple[int, bool, int]:
    return decode_block(message.uint_option(option))


def test_block1_upload_and_block2_answer(small_server):
    body = bytes(range(0x41, 0x5B)) * 12  # 312 bytes of upper-case text
    sent: list[Message] = []

    async def go():
        tracer = lambda d, m: sent.append(m) if d == "<==" else None  # noqa: E731
        async with connect(small_server.address, block_size=64, tracer=tracer) as client:
            return await client.request(get("store", Code.POST, body.lower()))

    result = run(go())
    assert result.code == Code.CHANGED and result.payload == body
    uploads = [m for m in sent if m.has_option(Option.BLOCK1)]
    assert [block_of(m, Option.BLOCK1) for m in uploads] == [(n, n < 4, 2) for n in range(5)]
    assert uploads[0].uint_option(Option.SIZE1) == len(body)
    assert sum(len(m.payload) for m in uploads) == len(body)
    # the follow-ups for the answer repeat the POST without payload and Block1
    follow_ups = sent[len(uploads) :]
    assert follow_ups and all(m.code == Code.POST and not m.payload for m in follow_ups)


def test_block1_above_the_message_size_without_blocksize(server):
    body = b"x" * 3000

    async def go():
        async with connect(server.address) as client:
            put = await client.request(get("store", Code.PUT, body))
            back = await client.request(get("store"))
            return put, back

    put, back = run(go())
    assert put.code == Code.CHANGED and put.exchanges == 3
    assert back.payload == body


def test_error_response_is_a_response(server):
    async def go():
        async with connect(server.address) as client:
            return await client.request(get("missing"))

    assert run(go()).code == Code.NOT_FOUND


def test_observe_notifications_and_proactive_cancel(server):
    resource = server.root.children["obs"]

    async def go():
        async with connect(server.address) as client:
            observation = client.observe(get("obs"))
            first = await observation.register()
            server.call(resource.bump)
            second = await asyncio.wait_for(observation.next(), 2)
            cancelled = await observation.cancel()
            return first, second, cancelled, observation.active

    first, second, cancelled, active = run(go())
    assert first.payload == b"0" and first.message.observe is not None
    assert second.payload == b"1" and second.message.observe > first.message.observe
    assert cancelled is not None and cancelled.message.observe is None and not active
    assert not resource.observers


def test_large_notifications_are_completed_with_block2(small_server):
    resource = small_server.root.children["obs-large"]

    async def go():
        async with connect(small_server.address) as client:
            observation = client.observe(get("obs-large"))
            first = await observation.register()
            small_server.call(resource.bump)
            second = await asyncio.wait_for(observation.next(), 2)
            await observation.cancel()
            return first, second

    first, second = run(go())
    assert first.payload == b"0".ljust(200, b".") and first.exchanges == 4
    assert second.payload == b"1".ljust(200, b".")


def test_connection_refused_is_reported_at_once(server):
    address = server.address
    server.stop()
    server.stop = lambda: None  # stopped already: nothing left for the fixture's teardown

    async def go():
        async with connect(address, timeout=10) as client:
            await client.request(get("text"))

    with pytest.raises(ClientError, match="connection refused"):
        run(asyncio.wait_for(go(), 5))


# -- the message layer against a scripted peer -----------------------------------------------


class FakeTransport:
    """Answers every datagram the client sends with what *script* returns for it."""

    peer = "fake:5683"

    def __init__(self, script: Callable[[Message], Iterable[Message | bytes]] | None = None):
        self.script = script or (lambda message: ())
        self.sent: list[Message] = []

    async def open(self, receive, error) -> None:
        self.receive = receive
        self.error = error

    def send(self, data: bytes) -> None:
        message = parse(data)
        self.sent.append(message)
        loop = asyncio.get_running_loop()
        for reply in self.script(message):
            raw = reply if isinstance(reply, bytes) else reply.to_bytes()
            loop.call_soon(self.receive, raw)

    def close(self) -> None:
        pass


def fake_client(transport: FakeTransport, timeout: float = 2.0) -> CoapClient:
    return CoapClient(transport, timeout=timeout, params=FAST)


def test_con_is_retransmitted_then_times_out():
    transport = FakeTransport()

    async def go():
        async with fake_client(transport) as client:
            await client.request(get("text"))

    with pytest.raises(RequestTimeout, match="after 2 retransmissions"):
        run(go())
    assert len(transport.sent) == 3
    assert len({(m.mid, m.token) for m in transport.sent}) == 1


def test_non_is_not_retransmitted():
    transport = FakeTransport()
    request = get("text")
    request.type = Type.NON

    async def go():
        async with fake_client(transport, timeout=0.3) as client:
            await client.request(request)

    with pytest.raises(RequestTimeout, match=r"within 0\.3 s"):
        run(go())
    assert len(transport.sent) == 1


def test_reset_rejects_the_request():
    transport = FakeTransport(lambda m: [Message(Type.RST, 0, m.mid)])

    async def go():
        async with fake_client(transport) as client:
            await client.request(get("text"))

    with pytest.raises(RequestRejected):
        run(go())


def test_piggybacked_response_with_another_token_is_ignored():
    def script(m: Message):
        if len(transport.sent) == 1:
            return [Message(Type.ACK, Code.CONTENT, m.mid, b"other", payload=b"no")]
        return [Message(Type.ACK, Code.CONTENT, m.mid, m.token, payload=b"yes")]

    transport = FakeTransport(script)

    async def go():
        async with fake_client(transport) as client:
            return await client.request(get("text"))

    assert run(go()).payload == b"yes"
    assert len(transport.sent) == 2  # the retransmission got the right answer


def test_duplicate_con_response_is_acknowledged_again_and_delivered_once():
    def script(m: Message):
        if m.code == Code.GET:
            answer = Message(Type.CON, Code.CONTENT, 0x777, m.token, payload=b"once")
            # empty ACK, the separate response, and its retransmission
            return [Message(Type.ACK, 0, m.mid), answer, answer]
        return []

    transport = FakeTransport(script)

    async def go():
        async with fake_client(transport) as client:
            result = await client.request(get("text"))
            await asyncio.sleep(0.05)
            return result

    assert run(go()).payload == b"once"
    acks = [m for m in transport.sent if m.type == Type.ACK]
    assert [(a.mid, a.code) for a in acks] == [(0x777, 0), (0x777, 0)]


def test_separate_response_without_ack_ends_the_retransmission():
    transport = FakeTransport(
        lambda m: (
            [Message(Type.CON, Code.CONTENT, 0x99, m.token, payload=b"x")]
            if m.code == Code.GET
            else []
        )
    )

    async def go():
        async with fake_client(transport) as client:
            result = await client.request(get("text"))
            await asyncio.sleep(0.2)  # longer than the retransmission timeout
            return result

    assert run(go()).payload == b"x"
    assert [m.code for m in transport.sent if m.type == Type.CON] == [Code.GET]


def test_unknown_responses_get_rst_and_pings_are_answered():
    transport = FakeTransport()

    async def go():
        async with fake_client(transport) as client:
            client._on_datagram(Message(Type.CON, Code.CONTENT, 5, b"\x01\x02").to_bytes())
            client._on_datagram(Message(Type.NON, Code.CONTENT, 6, b"\x03").to_bytes())
            note = Message(Type.NON, Code.CONTENT, 7, b"\x04")
            note.add_option(Option.OBSERVE, 9)
            client._on_datagram(note.to_bytes())
            client._on_datagram(Message(Type.CON, 0, 8).to_bytes())  # CoAP ping
            client._on_datagram(b"\xff\x00")  # not CoAP: ignored

    run(go())
    assert [(Type(m.type).name, m.mid) for m in transport.sent] == [
        ("RST", 5),
        ("RST", 7),
        ("RST", 8),
    ]


def test_server_may_ask_for_smaller_block1_blocks():
    def script(m: Message):
        num, more, _ = decode_block(m.uint_option(Option.BLOCK1))
        if more:
            answer = Message(Type.ACK, Code.CONTINUE, m.mid, m.token)
            answer.add_option(Option.BLOCK1, encode_block(num, True, 1))  # 32 bytes, please
            return [answer]
        return [Message(Type.ACK, Code.CHANGED, m.mid, m.token)]

    transport = FakeTransport(script)

    async def go():
        client = CoapClient(transport, timeout=2, block_size=64, params=FAST)
        async with client:
            return await client.request(get("store", Code.PUT, b"z" * 150))

    assert run(go()).code == Code.CHANGED
    blocks = [decode_block(m.uint_option(Option.BLOCK1)) for m in transport.sent]
    # 64 bytes in block 0 of 64, then 32-byte blocks from offset 64: numbers 2, 3, ...
    assert blocks == [(0, True, 2), (2, True, 1), (3, True, 1), (4, False, 1)]
    assert sum(len(m.payload) for m in transport.sent) == 150


def test_transport_error_fails_the_exchange():
    transport = FakeTransport()

    async def go():
        async with fake_client(transport) as client:
            task = asyncio.ensure_future(client.request(get("text")))
            await asyncio.sleep(0.01)
            transport.error(ConnectionRefusedError(111, "Connection refused"))
            await task

    with pytest.raises(ClientError, match="fake:5683: connection refused"):
        run(go())


def test_reordered_notifications_are_dropped():
    def script(m: Message):
        if m.code != Code.GET:
            return []
        replies = []
        for mid, number in ((1, 5), (2, 7), (3, 6), (4, 8)):
            note = Message(Type.NON, Code.CONTENT, mid, m.token, payload=str(number).encode())
            note.add_option(Option.OBSERVE, number)
            replies.append(note)
        return replies

    transport = FakeTransport(script)

    async def go():
        async with fake_client(transport) as client:
            observation = client.observe(get("obs"))
            first = await observation.register()
            seen = [first.payload]
            for _ in range(2):
                seen.append((await asyncio.wait_for(observation.next(), 1)).payload)
            observation.close()
            return seen

    assert run(go()) == [b"5", b"7", b"8"]


# -- describing messages (-v) ----------------------------------------------------------------


def test_describe_as_californium_traces():
    request = Message(Type.CON, Code.GET, 513, b"\x0a\x1b")
    request.add_option(Option.URI_PATH, "a").add_option(Option.URI_PATH, "b")
    request.add_option(Option.ACCEPT, ContentFormat.JSON)
    request.add_option(Option.BLOCK2, encode_block(1, False, 2))
    assert describe(request) == (
        'CON-GET    MID=  513, Token=0A1B, OptionSet={"Uri-Path":["a","b"], '
        '"Accept":"application/json", "Block2":"(szx=2/64, m=false, num=1)"}, no payload'
    )
    answer = Message(Type.ACK, Code.CONTENT, 513, b"\x0a\x1b", payload=b"x" * 30)
    answer.add_option(Option.ETAG, b"\x01\x02").add_option(Option.MAX_AGE, 30)
    assert describe(answer).endswith(
        'OptionSet={"ETag":0x0102, "Max-Age":30}, "xxxxxxxxxxxxxxxxxxxxxxxx".. 30 bytes'
    )
    binary = Message(Type.NON, Code.CONTENT, 1, b"", payload=b"\x00\xff")
    assert describe(binary).startswith("NON-2.05   MID=    1, Token=, ")
    assert describe(binary).endswith(", 00 ff")
    assert describe(Message(Type.ACK, 0, 77)) == "ACK        MID=   77"


@pytest.mark.parametrize(
    ("uri", "host", "port", "options"),
    [
        ("coap://127.0.0.1:5700/a/b?x=1&y", "127.0.0.1", 5700, [(11, b"a"), (11, b"b"),
                                                             (15, b"x=1"), (15, b"y")]),
        ("localhost/", "localhost", 5683, [(3, b"localhost")]),
        ("coap://[::1]/%C3%A4", "::1", 5683, [(11, "ä".encode())]),
        ("coaps://127.0.0.1", "127.0.0.1", 5684, []),
    ],
)  # fmt: skip
def test_parse_uri(uri, host, port, options):
    target = parse_uri(uri)
    assert (target.host, target.port, target.options) == (host, port, options)


@pytest.mark.parametrize("uri", ["http://x", "coap://", "coap://h/#f", "coap+ws://h"])
def test_parse_uri_errors(uri):
    with pytest.raises(ValueError):
        parse_uri(uri)


# -- command-line helpers --------------------------------------------------------------------


def test_render_payload():
    assert oneshot.render_payload(b"a\n", ContentFormat.TEXT_PLAIN) == "a"
    assert oneshot.render_payload(b'{"a":[1]}', ContentFormat.JSON) == json.dumps(
        {"a": [1]}, indent=2
    )
    assert oneshot.render_payload(b"\x00\x01", ContentFormat.OCTET_STREAM) == "0001"
    assert oneshot.render_payload(b"abc", ContentFormat.OCTET_STREAM) == "616263"
    assert oneshot.render_payload(b"abc", None) == "abc"
    assert oneshot.render_payload(b"\xff\x00", None) == "ff00"
    cbor = cbor2.dumps({"ep": b"\x7f\x00\x00\x01", "n": [1, -2.5, True, None]})
    assert oneshot.render_payload(cbor, ContentFormat.CBOR) == (
        '{\n  "ep": h\'7f000001\',\n  "n": [\n    1,\n    -2.5,\n    true,\n    null\n  ]\n}'
    )
    assert oneshot.render_payload(b"\xff", ContentFormat.CBOR) == "ff"


def test_content_types_and_payloads():
    parser = argparse.ArgumentParser()
    oneshot.add_arguments(parser)

    def build(*argv: str) -> Message:
        args = parser.parse_args(["coap://127.0.0.1/p", *argv])
        return oneshot.build_request(args, Code.POST, oneshot.target_of(args.uri))

    plain = build("--json")
    assert plain.accept == ContentFormat.JSON and plain.content_format is None
    with_payload = build("--json", "--payload", "{}")
    assert with_payload.content_format == ContentFormat.JSON and with_payload.accept is None
    assert build("--payload", "x").content_format == ContentFormat.TEXT_PLAIN
    binary = build("--payloadhex", "00ff", "--accept", "application/cbor")
    assert binary.payload == b"\x00\xff" and binary.content_format == ContentFormat.OCTET_STREAM
    assert binary.accept == ContentFormat.CBOR
    assert build("--payload64", "AAE=", "--ctype", "60").content_format == ContentFormat.CBOR
    assert build("--payload-random", "20", "--non").type == Type.NON
    assert all(0x20 <= b < 0x7F for b in build("--payload-random", "50").payload)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "coap://127.0.0.1:1/x", "--blocksize", "100"], "--blocksize must be"),
        (["get", "coap://127.0.0.1:1/x", "--timeout", "0"], "--timeout must be"),
        (["post", "coap://127.0.0.1:1/x", "--payloadhex", "zz"], "invalid payload"),
        (["post", "coap://127.0.0.1:1/x", "--payload-file", "/nonexistent"], "cannot read"),
        (["observe", "coap://127.0.0.1:1/x", "--count", "0"], "--count must be"),
        (["get", "http://127.0.0.1/x"], "is not a coap:// URI"),
        (["get", "coap+ws://127.0.0.1/x"], "is not supported"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith(f"extclient {argv[0]}: error: ") and message in err[0]
    )


def test_cli_output_and_exit_codes(server, capsys):
    uri = f"coap://127.0.0.1:{server.address[1]}"
    assert cli.main(["get", f"{uri}/text"]) == 0
    assert capsys.readouterr().out == "hello\n"
    assert cli.main(["get", f"{uri}/missing"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "extclient get: error: 4.04 NOT_FOUND\n"
    assert cli.main(["put", f"{uri}/store", "--payload", "abc", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and " <== req CON-PUT " in lines[0] and " ==> res ACK-2.04 " in lines[1]


def test_cli_timeout(capsys):
    with FakeUdpPeer() as port:
        assert cli.main(["get", f"coap://127.0.0.1:{port}/x", "--non", "--timeout", "200"]) == 1
    err = capsys.readouterr().err
    assert err == f"extclient get: error: no response from 127.0.0.1:{port} within 0.2 s\n"


class FakeUdpPeer:
    """A bound UDP socket that never answers (so no ICMP error either)."""

    def __enter__(self) -> int:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


# -- receivetest bookkeeping -----------------------------------------------------------------


def test_properties_as_java_reads_them():
    text = "# comment\n! other\nUUID=abc\nkey\\:x = a\\=b\\u0041\n  spaced value \n\nempty=\n"
    assert receivetest.read_properties(text) == {
        "UUID": "abc",
        "key:x": "a=bA",
        "spaced": "value ",
        "empty": "",
    }


def test_device_file_lifecycle(tmp_path):
    path = str(tmp_path / "UUID.properties")
    device = receivetest.Device.load(path, reset=False)
    assert len(device.uuid) == 36
    device.sent("RID1000")
    device.sent("RID2000")
    again = receivetest.Device.load(path, reset=False)
    assert again.uuid == device.uuid and again.rids == ["RID1000", "RID2000"]
    again.settle("RID3000")
    third = receivetest.Device.load(path, reset=False)
    assert third.rids == ["RID3000"] and third.answered == {"RID3000"}
    assert receivetest.Device.load(path, reset=True).uuid != device.uuid
    (tmp_path / "other.properties").write_text("#no id\nX=1\n")
    assert receivetest.Device.load(str(tmp_path / "other.properties"), False).uuid == "anonymous"


def test_parse_history_in_all_formats():
    text = b"systemstart:100\nRID2000:2001\nRID1000:1003\n"
    assert receivetest.parse_history(text, ContentFormat.TEXT_PLAIN) == (
        100,
        [receivetest.Entry("RID2000", 2001), receivetest.Entry("RID1000", 1003)],
    )
    json_payload = (
        b'[{"systemstart":100},{"rid":"RID2000","time":2001,"ep":"0:0:0:0:0:0:0:1","port":40000}]'
    )
    start, entries = receivetest.parse_history(json_payload, ContentFormat.JSON)
    assert start == 100 and entries == [
        receivetest.Entry("RID2000", 2001, "0:0:0:0:0:0:0:1", 40000)
    ]
    cbor_payload = cbor2.dumps(
        [
            {"systemstart": 100},
            {"ep": b"\x7f\x00\x00\x01", "rid": "RID2000", "port": -25536, "time": 2001},
        ]
    )
    start, entries = receivetest.parse_history(cbor_payload, ContentFormat.CBOR)
    assert entries == [receivetest.Entry("RID2000", 2001, "127.0.0.1", 40000)]


def test_listing_as_californium_prints_it():
    entries = [
        receivetest.Entry("RID1700000000000", 1700000000012, "0:0:0:0:0:0:0:1", 5000),
        receivetest.Entry("RID1690000000000", 1700000000000, "127.0.0.1", 6000),
        receivetest.Entry("custom", 1700000000000),
    ]
    lines = receivetest.listing(1600000000000, entries, {"RID1700000000000"})
    fmt = receivetest.java_time
    assert lines == [
        f"Server's system start: {fmt(1600000000000)}",
        f"Request: {fmt(1700000000000)}, received: 12 ms * lost response!",
        "    ([0:0:0:0:0:0:0:1]:5000)",
        f"Request: {fmt(1690000000000)}, received: {fmt(1700000000000)}",
        "    (127.0.0.1:6000)",
        f"Request: custom, received: {fmt(1700000000000)}",
    ]


def test_lost_report():
    device = receivetest.Device("unused", "dev", ["RID1000", "RID2000", "RID3000", "RID4000"])
    device.answered = {"RID1000"}
    device.writable = False
    entries = [
        receivetest.Entry("RID5000", 5001),  # this run's request
        receivetest.Entry("RID2000", 2001),  # recorded, its response lost
        receivetest.Entry("RID1000", 1001),
    ]
    # RID3000 and RID4000 were sent after RID1000, which the server shows: missing, so lost.
    lines, lost_responses = receivetest.lost_report(device, "RID5000", 0, entries)
    fmt = receivetest.java_time
    assert lines == [
        f"Lost response: RID2000 ({fmt(2000)})",
        f"Lost request: RID3000 ({fmt(3000)})",
        f"Lost request: RID4000 ({fmt(4000)})",
    ]
    assert lost_responses == {"RID2000"}
    # after a restart at 4500 nothing older is recorded; nothing older than shown is judged
    lines, _ = receivetest.lost_report(device, "RID5000", 4500, entries[:1])
    assert lines == [
        f"Lost request: RID{t}000 ({fmt(t * 1000)}), the server restarted since"
        for t in (1, 2, 3, 4)
    ]
    assert receivetest.lost_report(device, "RID5000", 0, entries[:1]) == ([], set())
