"""Requests the server sends itself (CoapEndpoint.request): matching, separate responses,
RST, timeouts, notifications and their cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, Option, Type
from extplugtest.coap.resource import Resource
from extplugtest.coap.transmission import TransmissionParameters

FAST = TransmissionParameters(ack_timeout=0.1, ack_random_factor=1.0, max_retransmit=1)


@pytest.fixture
def server(make_server):
    return make_server(Resource(""), transmission=FAST)


@pytest.fixture
def device(server, make_client):
    return make_client(server.address)


def send_request(server, device, *, type=Type.CON, timeout=5.0, notifications=None):
    message = Message(type, Code.GET)
    message.add_option(Option.URI_PATH, "feed-CON")
    peer = device.sock.getsockname()
    callback = None if notifications is None else notifications.append

    async def go() -> Message:
        return await server.endpoint.request(
            message, peer, timeout=timeout, on_notification=callback
        )

    return asyncio.run_coroutine_threadsafe(go(), server.loop)


def test_piggybacked_response(server, device):
    future = send_request(server, device)
    request = device.receive()
    assert (request.type, request.code, request.uri_path) == (Type.CON, Code.GET, "feed-CON")
    assert len(request.token) == 8
    device.send(Message(Type.ACK, Code.CONTENT, request.mid, request.token, payload=b"hello"))
    assert future.result(timeout=5).payload == b"hello"


def test_separate_response_is_acknowledged(server, device):
    future = send_request(server, device)
    request = device.receive()
    device.send(Message(Type.ACK, 0, request.mid))
    device.send(Message(Type.CON, Code.CONTENT, 0x7777, request.token, payload=b"later"))
    ack = device.receive()
    assert (ack.type, ack.code, ack.mid) == (Type.ACK, 0, 0x7777)
    assert future.result(timeout=5).payload == b"later"


def test_rst_fails_the_request(server, device):
    future = send_request(server, device)
    request = device.receive()
    device.send(Message(Type.RST, 0, request.mid))
    with pytest.raises(ConnectionResetError):
        future.result(timeout=5)


def test_no_ack_times_out_after_retransmission(server, device):
    future = send_request(server, device)
    first = device.receive_raw()
    again = device.receive_raw()
    assert first == again  # one retransmission, same bytes
    with pytest.raises(TimeoutError):
        future.result(timeout=5)


def test_non_request_response_timeout(server, device):
    future = send_request(server, device, type=Type.NON, timeout=0.2)
    assert device.receive().type == Type.NON
    with pytest.raises((TimeoutError, concurrent.futures.TimeoutError)):
        future.result(timeout=5)


def test_notifications_until_cancelled(server, device):
    notes: list[Message] = []
    future = send_request(server, device, notifications=notes)
    request = device.receive()
    first = Message(Type.ACK, Code.CONTENT, request.mid, request.token, payload=b"n1")
    device.send(first.add_option(Option.OBSERVE, 1))
    assert future.result(timeout=5).payload == b"n1"
    note = Message(Type.CON, Code.CONTENT, 0x100, request.token, payload=b"n2")
    note.add_option(Option.OBSERVE, 2)
    device.send(note)
    assert device.receive().type == Type.ACK
    device.send(note)  # a retransmission: acknowledged again, delivered once
    assert device.receive().type == Type.ACK
    server.call(lambda: None)
    assert [n.payload for n in notes] == [b"n2"]
    peer = device.sock.getsockname()
    server.call(server.endpoint.cancel_observation, peer, request.token)
    later = Message(Type.NON, Code.CONTENT, 0x101, request.token, payload=b"n3")
    device.send(later.add_option(Option.OBSERVE, 3))
    reply = device.receive()
    assert (reply.type, reply.mid) == (Type.RST, 0x101)  # ends it at the device (RFC 7641 §3.6)
    assert [n.payload for n in notes] == [b"n2"]


def test_unmatched_con_response_gets_rst(server, device):
    device.send(Message(Type.CON, Code.CONTENT, 0x200, b"\x01\x02", payload=b"?"))
    reply = device.receive()
    assert (reply.type, reply.mid) == (Type.RST, 0x200)


def test_pending_requests_are_bounded(make_server, make_client):
    server = make_server(Resource(""), max_requests=0)
    device = make_client(server.address)
    with pytest.raises(OverflowError):
        send_request(server, device).result(timeout=5)


def test_unmatched_con_responses_do_not_push_out_real_ones(server, device, monkeypatch):
    """Only CON responses that matched are remembered: a flood of unmatched ones (each
    answered with RST) cannot make a retransmitted notification count twice."""
    monkeypatch.setattr("extplugtest.coap.client.RECENT_RESPONSES", 4)
    notes: list[Message] = []
    future = send_request(server, device, notifications=notes)
    request = device.receive()
    first = Message(Type.ACK, Code.CONTENT, request.mid, request.token, payload=b"n1")
    device.send(first.add_option(Option.OBSERVE, 1))
    future.result(timeout=5)
    note = Message(Type.CON, Code.CONTENT, 0x300, request.token, payload=b"n2")
    device.send(note.add_option(Option.OBSERVE, 2))
    assert device.receive().type == Type.ACK
    for mid in range(0x400, 0x408):  # twice the table's size
        device.send(Message(Type.CON, Code.CONTENT, mid, b"\x0f", payload=b"?"))
        assert device.receive().type == Type.RST
    device.send(note)  # the retransmission: acknowledged, not delivered again
    assert device.receive().type == Type.ACK
    server.call(lambda: None)
    assert [n.payload for n in notes] == [b"n2"]


def block2_reply(request: Message, num: int, more: bool, payload: bytes, type=Type.ACK) -> Message:
    reply = Message(type, Code.CONTENT, request.mid if type == Type.ACK else 0x600 + num,
                    request.token, payload=payload)  # fmt: skip
    return reply.add_option(Option.BLOCK2, num << 4 | (8 if more else 0) | 2)  # 64-byte blocks


def test_a_block_wise_response_is_completed_before_it_is_delivered(server, device):
    """RFC 7959 §2.4: the further blocks are fetched with GETs of the same URI and query (no
    Observe), and the response is delivered whole."""
    body = bytes(range(150))
    future = send_request(server, device)
    request = device.receive()
    device.send(block2_reply(request, 0, True, body[:64]))
    for num in (1, 2):
        follow = device.receive()
        assert (follow.code, follow.uri_path, follow.observe) == (Code.GET, "feed-CON", None)
        assert follow.uint_option(Option.BLOCK2) == num << 4 | 2
        device.send(block2_reply(follow, num, num < 2, body[64 * num : 64 * num + 64]))
    response = future.result(timeout=5)
    assert response.payload == body and response.uint_option(Option.BLOCK2) is None
    assert server.call(server.endpoint.counters)["recv-blocks fetched"] == 2


def test_a_block_wise_notification_is_completed_before_it_is_delivered(server, device):
    """RFC 7959 §3.4: a notification's block 0 carries Observe; the rest is fetched without."""
    notes: list[Message] = []
    future = send_request(server, device, notifications=notes)
    request = device.receive()
    first = Message(Type.ACK, Code.CONTENT, request.mid, request.token, payload=b"n1")
    device.send(first.add_option(Option.OBSERVE, 1))
    future.result(timeout=5)
    note = block2_reply(request, 0, True, b"a" * 64, type=Type.NON).add_option(Option.OBSERVE, 2)
    device.send(note)
    follow = device.receive()
    assert follow.observe is None and follow.uint_option(Option.BLOCK2) == 1 << 4 | 2
    device.send(block2_reply(follow, 1, False, b"b" * 10))
    server.call(lambda: None)
    for _ in range(50):  # the completion runs on the server's loop
        if notes:
            break
        server.call(lambda: None)
    assert [n.payload for n in notes] == [b"a" * 64 + b"b" * 10]


def test_a_block_that_does_not_follow_fails_the_response(server, device):
    future = send_request(server, device)
    request = device.receive()
    device.send(block2_reply(request, 0, True, b"x" * 64))
    follow = device.receive()
    device.send(block2_reply(follow, 3, False, b"y"))  # block 3 instead of 1
    with pytest.raises(TimeoutError):
        future.result(timeout=5)
    assert server.call(server.endpoint.counters)["recv-blocks failed"] == 1
