"""Block-wise transfers (RFC 7959, RFC 9175 Request-Tag) through a real endpoint."""

from __future__ import annotations

import pytest

from extplugtest.coap._codec import Message
from extplugtest.coap.blockwise import BlockwiseLayer, decode_block, encode_block
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response

LARGE = bytes(range(256)) * 5  # 1280 bytes


class LargeResource(Resource):
    def __init__(self) -> None:
        super().__init__("large")
        self.gets = 0

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        self.gets += 1
        return response(Code.CONTENT, LARGE, ContentFormat.OCTET_STREAM)


class StoreResource(Resource):
    """PUT stores the body; POST answers it upper-cased (like /large-post)."""

    def __init__(self) -> None:
        super().__init__("store")
        self.bodies: list[bytes] = []

    def handle_put(self, exchange: Exchange) -> HandlerResult:
        self.bodies.append(exchange.request.payload)
        return response(Code.CHANGED)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        self.bodies.append(exchange.request.payload)
        return response(Code.CHANGED, exchange.request.payload.upper(), ContentFormat.TEXT_PLAIN)


def tree() -> Resource:
    root = Resource("")
    root.add(LargeResource(), StoreResource())
    return root


@pytest.fixture
def server(make_server):
    # The plugtest endpoint's sizes: 64-byte messages and blocks.
    return make_server(tree(), max_message_size=64, preferred_block_size=64)


@pytest.fixture
def client(server, make_client):
    return make_client(server.address)


_mids = iter(range(1, 60000))


def req(code: int, path: str, *, block1=None, block2=None, payload=b"", tag=None) -> Message:
    message = Message(Type.CON, code, next(_mids), b"\x05\x06")
    message.add_option(Option.URI_PATH, path)
    if tag is not None:
        message.add_option(Option.REQUEST_TAG, tag)
    if block2 is not None:
        message.add_option(Option.BLOCK2, encode_block(*block2))
    if block1 is not None:
        message.add_option(Option.BLOCK1, encode_block(*block1))
    message.payload = payload
    return message


def block2_of(message: Message) -> tuple[int, bool, int]:
    return decode_block(message.uint_option(Option.BLOCK2))


def block1_of(message: Message) -> tuple[int, bool, int]:
    return decode_block(message.uint_option(Option.BLOCK1))


def test_late_negotiation_starts_block_wise_by_itself(client):
    reply = client.exchange(req(Code.GET, "large"))
    assert reply.code == Code.CONTENT
    assert block2_of(reply) == (0, True, 2)
    assert reply.uint_option(Option.SIZE2) == len(LARGE)
    assert reply.payload == LARGE[:64]


@pytest.mark.parametrize("szx", [0, 1, 2])
def test_early_negotiation_is_honoured_exactly(client, server, szx):
    size = 16 << szx
    body = b""
    for num in range(len(LARGE) // size + 1):
        reply = client.exchange(req(Code.GET, "large", block2=(num, False, szx)))
        assert reply.code == Code.CONTENT
        got_num, more, got_szx = block2_of(reply)
        assert (got_num, got_szx) == (num, szx)
        body += reply.payload
        if not more:
            break
        assert len(reply.payload) == size
    assert body == LARGE
    assert server.root.children["large"].gets == 1  # follow-ups come from the kept response


def test_block_beyond_the_end_is_402(client):
    client.exchange(req(Code.GET, "large", block2=(0, False, 2)))
    assert client.exchange(req(Code.GET, "large", block2=(40, False, 2))).code == Code.BAD_OPTION


def test_block_request_without_kept_response_runs_the_handler(client, server):
    reply = client.exchange(req(Code.GET, "large", block2=(3, False, 2)))
    assert block2_of(reply) == (3, True, 2) and reply.payload == LARGE[192:256]


def upload(client, code: int, body: bytes, szx: int = 2, tag=None) -> list[Message]:
    size = 16 << szx
    blocks = [body[i : i + size] for i in range(0, len(body), size)]
    replies = []
    for num, chunk in enumerate(blocks):
        more = num < len(blocks) - 1
        replies.append(client.exchange(req(code, "store", block1=(num, more, szx),
                                           payload=chunk, tag=tag)))  # fmt: skip
    return replies


def test_block1_put_is_atomic_with_231_continue(client, server):
    replies = upload(client, Code.PUT, LARGE)
    for num, reply in enumerate(replies[:-1]):
        assert reply.code == Code.CONTINUE
        assert block1_of(reply) == (num, True, 2)
        assert reply.payload == b""
    assert replies[-1].code == Code.CHANGED
    assert block1_of(replies[-1]) == (19, False, 2)
    assert server.root.children["store"].bodies == [LARGE]


def test_block1_and_block2_post_follow_ups_from_the_kept_response(client, server):
    text = b"abcdefgh" * 20  # 160 bytes: 3 blocks up, 3 blocks down
    replies = upload(client, Code.POST, text)
    last = replies[-1]
    assert last.code == Code.CHANGED
    assert block1_of(last) == (2, False, 2)
    assert block2_of(last) == (0, True, 2)
    assert last.uint_option(Option.SIZE2) == len(text)
    body = last.payload
    for num in (1, 2):  # follow-ups: same options, no Block1, no payload
        reply = client.exchange(req(Code.POST, "store", block2=(num, False, 2)))
        assert reply.code == Code.CHANGED and block2_of(reply)[0] == num
        body += reply.payload
    assert body == text.upper()
    assert server.root.children["store"].bodies == [text]  # the handler ran once


def test_block1_out_of_order_is_408(client):
    first = client.exchange(req(Code.PUT, "store", block1=(0, True, 2), payload=b"x" * 64))
    assert first.code == Code.CONTINUE
    skipped = client.exchange(req(Code.PUT, "store", block1=(2, True, 2), payload=b"x" * 64))
    assert skipped.code == Code.REQUEST_ENTITY_INCOMPLETE


def test_block1_not_starting_at_zero_is_408(client):
    reply = client.exchange(req(Code.PUT, "store", block1=(1, True, 2), payload=b"x" * 64))
    assert reply.code == Code.REQUEST_ENTITY_INCOMPLETE


def test_too_large_body_is_413_with_size1(make_server, make_client):
    server = make_server(tree(), max_message_size=64, preferred_block_size=64, max_body_size=256)
    client = make_client(server.address)
    replies = upload(client, Code.PUT, b"y" * 320)
    assert replies[-2].code == Code.CONTINUE
    assert replies[-1].code == Code.REQUEST_ENTITY_TOO_LARGE
    assert replies[-1].uint_option(Option.SIZE1) == 256
    single = client.exchange(req(Code.PUT, "store", payload=b"z" * 300))
    assert single.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert single.uint_option(Option.SIZE1) == 256
    assert server.root.children["store"].bodies == []


def test_request_tag_separates_operations(client, server):
    """Blocks of two uploads with different Request-Tags are not merged (RFC 9175 §3)."""
    a = client.exchange(req(Code.PUT, "store", block1=(0, True, 2), payload=b"a" * 64, tag=b"A"))
    b = client.exchange(req(Code.PUT, "store", block1=(0, True, 2), payload=b"b" * 64, tag=b"B"))
    assert a.code == b.code == Code.CONTINUE
    end_a = client.exchange(req(Code.PUT, "store", block1=(1, False, 2), payload=b"a", tag=b"A"))
    end_b = client.exchange(req(Code.PUT, "store", block1=(1, False, 2), payload=b"b", tag=b"B"))
    assert end_a.code == end_b.code == Code.CHANGED
    assert server.root.children["store"].bodies == [b"a" * 65, b"b" * 65]


def test_transfers_are_bounded_and_evicted():
    layer = BlockwiseLayer(64, 64, 8192, max_transfers=1)
    first = req(Code.PUT, "store", block1=(0, True, 2), payload=b"1" * 64)
    second = req(Code.PUT, "store", block1=(0, True, 2), payload=b"2" * 64, tag=b"other")
    assert layer.incoming(first, ("127.0.0.1", 1))[1].code == Code.CONTINUE
    assert layer.incoming(second, ("127.0.0.1", 1))[1].code == Code.CONTINUE
    assert layer.counters()["blockwise-evicted"] == 1
    resumed = req(Code.PUT, "store", block1=(1, False, 2), payload=b"1")
    assert layer.incoming(resumed, ("127.0.0.1", 1))[1].code == Code.REQUEST_ENTITY_INCOMPLETE


def test_an_active_upload_keeps_its_place_and_an_idle_one_expires(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("extplugtest.coap.blockwise.time.monotonic", lambda: now[0])
    layer = BlockwiseLayer(64, 64, 8192, lifetime=10.0)
    peer = ("127.0.0.1", 1)

    def block(tag: bytes, num: int) -> Message:
        return req(Code.PUT, "store", block1=(num, True, 2), payload=b"x" * 64, tag=tag)

    layer.incoming(block(b"a", 0), peer)
    now[0] = 101.0
    layer.incoming(block(b"b", 0), peer)
    now[0] = 108.0
    layer.incoming(block(b"a", 1), peer)  # a is active again
    now[0] = 112.0  # b idle for 11 s, a for 4 s
    layer.incoming(block(b"c", 0), peer)
    assert layer.counters()["blockwise-expired"] == 1
    assert layer.incoming(block(b"a", 2), peer)[1].code == Code.CONTINUE
    assert layer.incoming(block(b"b", 1), peer)[1].code == Code.REQUEST_ENTITY_INCOMPLETE


def test_incomplete_transfers_expire():
    layer = BlockwiseLayer(64, 64, 8192, lifetime=0.0)
    start = req(Code.PUT, "store", block1=(0, True, 2), payload=b"1" * 64)
    other = req(Code.PUT, "store", block1=(0, True, 2), payload=b"2" * 64, tag=b"x")
    layer.incoming(start, ("127.0.0.1", 1))
    layer.incoming(other, ("127.0.0.1", 1))  # storing sweeps the expired one
    assert layer.counters()["blockwise-expired"] >= 1
    resumed = req(Code.PUT, "store", block1=(1, False, 2), payload=b"1")
    assert layer.incoming(resumed, ("127.0.0.1", 1))[1].code == Code.REQUEST_ENTITY_INCOMPLETE


def test_bert_szx_on_udp_is_400(client):
    assert client.exchange(req(Code.GET, "large", block2=(0, False, 7))).code == Code.BAD_REQUEST


# -- a peer's message limit (a DTLS record size limit, RFC 8449 / RFC 6066) ---------------------


def limited_layer(limits: dict) -> BlockwiseLayer:
    layer = BlockwiseLayer()
    layer.message_limit = limits.get
    return layer


def get_request(token: bytes = b"\x01\x02\x03\x04", block2: int | None = None) -> Message:
    request = Message(Type.CON, Code.GET, 7, token)
    request.add_option(Option.URI_PATH, "large")
    if block2 is not None:
        request.add_option(Option.BLOCK2, block2)
    return request


@pytest.mark.parametrize(("limit", "szx"), [(200, 3), (300, 4), (600, 5), (1100, 6)])
def test_a_peers_limit_chooses_a_block_size_that_fits(limit, szx):
    """The whole message, its token included, fits into the limit."""
    layer = limited_layer({("127.0.0.1", 1): limit})
    request = get_request()
    context, answer = layer.incoming(request, ("127.0.0.1", 1))
    assert answer is None
    part = layer.outgoing(context, response(Code.CONTENT, LARGE, ContentFormat.OCTET_STREAM))
    part.token = request.token
    assert decode_block(part.uint_option(Option.BLOCK2)) == (0, True, szx)
    assert len(part.to_bytes()) <= limit
    # the follow-up comes from the kept response, in the same size
    context, answer = layer.incoming(get_request(block2=encode_block(1, False, szx)),
                                     ("127.0.0.1", 1))  # fmt: skip
    assert answer is not None and decode_block(answer.uint_option(Option.BLOCK2))[:1] == (1,)
    answer.token = request.token
    assert (
        len(answer.to_bytes()) <= limit
        and answer.payload == LARGE[1 << (szx + 4) :][: 1 << (szx + 4)]
    )


def test_a_small_response_that_fits_the_limit_is_not_sliced():
    layer = limited_layer({("127.0.0.1", 1): 300})
    context, _ = layer.incoming(get_request(), ("127.0.0.1", 1))
    small = response(Code.CONTENT, b"x" * 200)
    assert layer.outgoing(context, small) is small
    other, _ = layer.incoming(get_request(), ("127.0.0.1", 2))  # no limit: as before
    assert (
        layer.outgoing(other, response(Code.CONTENT, b"x" * 1000)).uint_option(Option.BLOCK2)
        is None
    )


def test_a_larger_asked_block_is_answered_smaller_at_the_same_offset():
    """RFC 7959 §2.4: NUM of the answer counts the smaller blocks."""
    layer = limited_layer({("127.0.0.1", 1): 300})
    context, _ = layer.incoming(get_request(block2=encode_block(1, False, 5)), ("127.0.0.1", 1))
    part = layer.outgoing(context, response(Code.CONTENT, LARGE))
    assert decode_block(part.uint_option(Option.BLOCK2)) == (2, True, 4)
    assert part.payload == LARGE[512:768]
    # (the last 1024-byte block has 256 bytes only: it fits as asked)
    context, _ = layer.incoming(get_request(block2=encode_block(1, False, 6)), ("127.0.0.1", 1))
    part = layer.outgoing(context, response(Code.CONTENT, LARGE))
    assert decode_block(part.uint_option(Option.BLOCK2)) == (1, False, 6)


def test_a_large_notification_is_sliced_to_the_limit():
    layer = limited_layer({("127.0.0.1", 1): 300})
    notification = response(Code.CONTENT, LARGE)
    notification.token = b"\x01\x02\x03\x04"
    first = layer.notification(("127.0.0.1", 1), get_request(), notification)
    assert decode_block(first.uint_option(Option.BLOCK2))[2] == 4
    assert len(first.to_bytes()) <= 300
