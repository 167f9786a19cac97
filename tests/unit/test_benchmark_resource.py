"""/benchmark (inventory §2.1): the C fast path and the Python resource answer alike."""

from __future__ import annotations

import re

import pytest

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.resource import Resource
from extplugtest.resources._benchmark import benchmark_payload
from extplugtest.resources.benchmark import DISABLED_TEXT, Benchmark


def test_large_response_goes_block_wise(make_server, make_client):
    server, _ = benchmark_server(make_server)
    reply = make_client(server.address).exchange(benchmark_request(Code.POST, 10, "rlen=5000"))
    assert reply.code == Code.CHANGED and len(reply.payload) == 1024
    assert reply.uint_option(Option.BLOCK2) == (0 << 4) | 0x08 | 6
    assert reply.uint_option(Option.SIZE2) == 5000


def benchmark_server(make_server, enabled: bool = True, fast: bool = True, **options):
    resource = Benchmark(enabled, **options)
    root = Resource("")
    root.add(resource)
    server = make_server(root, fast=resource.fast_path if fast else None)
    return server, resource


def benchmark_request(code: int, mid: int, *queries: str, type: int = Type.CON) -> Message:
    message = Message(type=type, code=code, mid=mid, token=b"\x42\x43")
    message.add_option(Option.URI_PATH, "benchmark")
    for query in queries:
        message.add_option(Option.URI_QUERY, query)
    return message


@pytest.mark.parametrize(
    ("get", "rlen", "expected"),
    [
        (False, 0, b"hello benchmark"),
        (False, 15, b"hello benchmark"),
        (False, 5, b"hello"),
        (False, 20, b"hello benchmark*****"),
        (True, 0, b"hello observe 042"),
        (True, 19, b"hello observe 042**"),
        (True, 1, b"h"),
    ],
)
def test_payload_rule(get, rlen, expected):
    assert benchmark_payload(get, 42, rlen) == expected


def test_payload_rule_bounds():
    assert len(benchmark_payload(False, 0, 8192)) == 8192
    with pytest.raises(ValueError):
        benchmark_payload(False, 0, -1)


@pytest.mark.parametrize("fast", [True, False])
def test_rlen_bound_follows_max_resource_body_size(make_server, make_client, fast):
    """COAP.MAX_RESOURCE_BODY_SIZE caps rlen in the C fast path as in Python (4.02 above)."""
    server, _ = benchmark_server(make_server, fast=fast, max_body_size=100)
    client = make_client(server.address)
    assert len(client.exchange(benchmark_request(Code.POST, 1, "rlen=100")).payload) == 100
    reply = client.exchange(benchmark_request(Code.POST, 2, "rlen=101"))
    assert (reply.code, reply.payload) == (
        Code.BAD_OPTION,
        b"URI-query-option 'rlen=101' is more than 100!",
    )


@pytest.mark.parametrize(
    "queries", [(), ("rlen=40",), ("rlen=0",), ("rlen=1",), ("rlen=1024",), ("rlen=2000",)]
)
@pytest.mark.parametrize("code", [Code.GET, Code.POST])
@pytest.mark.parametrize("kind", [Type.CON, Type.NON])
def test_fast_path_equals_python_resource(make_server, make_client, queries, code, kind):
    fast_server, fast_resource = benchmark_server(make_server, fast=True)
    slow_server, slow_resource = benchmark_server(make_server, fast=False)
    slow_resource.fast_path.nnn = fast_resource.fast_path.nnn = 123
    message = benchmark_request(code, 0x1234, *queries, type=kind)
    fast = make_client(fast_server.address).exchange(message)
    slow = make_client(slow_server.address).exchange(message)
    if kind == Type.NON:  # NON responses carry server-chosen MIDs
        fast.mid = slow.mid = 0
    assert fast.to_bytes() == slow.to_bytes()
    assert fast.code == (Code.CONTENT if code == Code.GET else Code.CHANGED)
    assert fast.content_format == ContentFormat.TEXT_PLAIN
    fast_counters = fast_server.call(fast_server.endpoint.counters)
    large = queries == ("rlen=2000",)  # beyond the fast path's message size
    assert fast_counters["fast-path"] == (0 if large else 1)


def test_get_payload_format(make_server, make_client):
    server, _ = benchmark_server(make_server)
    reply = make_client(server.address).exchange(benchmark_request(Code.GET, 1))
    assert re.fullmatch(rb"hello observe \d{3}", reply.payload)


@pytest.mark.parametrize(
    ("queries", "text"),
    [
        (("foo",), "URI-query-option 'foo' is not supported!"),
        (("rlen=abc",), "URI-query-option 'rlen=abc' is no number!"),
        (("rlen=8193",), "URI-query-option 'rlen=8193' is more than 8192!"),
        (("rlen=-1",), "URI-query-option 'rlen=-1' is less than 0!"),
    ],
)
def test_bad_queries_are_402(make_server, make_client, queries, text):
    server, _ = benchmark_server(make_server)
    reply = make_client(server.address).exchange(benchmark_request(Code.POST, 2, *queries))
    assert reply.code == Code.BAD_OPTION and reply.payload.decode() == text


def test_accept_other_than_text_is_406(make_server, make_client):
    server, _ = benchmark_server(make_server)
    message = benchmark_request(Code.POST, 3).add_option(Option.ACCEPT, ContentFormat.JSON)
    reply = make_client(server.address).exchange(message)
    assert reply.code == Code.NOT_ACCEPTABLE and reply.payload == b""


def test_disabled_is_501(make_server, make_client):
    server, _ = benchmark_server(make_server, enabled=False)
    client = make_client(server.address)
    for code, mid in ((Code.POST, 4), (Code.GET, 5)):
        reply = client.exchange(benchmark_request(code, mid, "rlen=40"))
        assert reply.code == Code.NOT_IMPLEMENTED and reply.payload.decode() == DISABLED_TEXT


def test_put_is_405(make_server, make_client):
    server, _ = benchmark_server(make_server)
    reply = make_client(server.address).exchange(benchmark_request(Code.PUT, 6))
    assert reply.code == Code.METHOD_NOT_ALLOWED


def test_ack_query_gives_separate_response(make_server, make_client):
    server, _ = benchmark_server(make_server)
    client = make_client(server.address)
    client.send(benchmark_request(Code.POST, 7, "rlen=20", "ack"))
    ack = client.receive()
    assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 7)
    late = client.receive()
    assert (late.type, late.code, late.payload) == (Type.CON, Code.CHANGED, b"hello benchmark*****")
    client.send(Message(Type.ACK, 0, late.mid))


def test_observe_notifies_on_timer_tick(make_server, make_client):
    server, resource = benchmark_server(make_server)
    client = make_client(server.address)
    message = benchmark_request(Code.GET, 8, "rlen=20", type=Type.NON)
    reply = client.exchange(message.add_option(Option.OBSERVE, 0))
    assert reply.observe is not None
    server.call(resource._on_timer)
    note = client.receive()
    assert note.type == Type.NON and note.observe > reply.observe
    assert re.fullmatch(rb"hello observe \d{3}\*\*\*", note.payload)
    server.call(resource.stop)


def test_duplicate_of_large_response_is_replayed_whole(make_server, make_client):
    """With a maximum message size above the engine's batch slot (2048 bytes), a response is
    sent whole and its duplicate must be replayed whole too."""
    resource = Benchmark(True)
    root = Resource("")
    root.add(resource)
    server = make_server(root, fast=resource.fast_path, max_message_size=8192)
    client = make_client(server.address)
    message = benchmark_request(Code.POST, 9, "rlen=5000")
    client.send(message)
    first = client.receive_raw()
    client.send(message)
    second = client.receive_raw()
    assert first == second and len(first) > 5000
    assert server.call(server.endpoint.counters)["recv-duplicate requests"] == 1


def test_fast_path_leaves_large_answers_to_block_wise(make_server, make_client):
    """On an endpoint with 64-byte messages (external UDP), rlen=100 goes block-wise."""
    resource = Benchmark(True)
    root = Resource("")
    root.add(resource)
    server = make_server(root, fast=resource.fast_path, max_message_size=64,
                         preferred_block_size=64)  # fmt: skip
    client = make_client(server.address)
    small = client.exchange(benchmark_request(Code.POST, 11, "rlen=40"))
    large = client.exchange(benchmark_request(Code.POST, 12, "rlen=100"))
    assert len(small.payload) == 40 and small.uint_option(Option.BLOCK2) is None
    assert len(large.payload) == 64 and large.uint_option(Option.SIZE2) == 100
    assert server.call(server.endpoint.counters)["fast-path"] == 1
