"""RFC 7252 message layer over real loopback sockets: rejects, pings, deduplication,
piggy-backed and separate responses, retransmission, and the errors the RFC prescribes."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from extplugtest.coap._codec import Message, parse
from extplugtest.coap.codes import Code, Option, Type
from extplugtest.coap.endpoint import CoapEndpoint, RateLimitedLog
from extplugtest.coap.resource import Exchange, HandlerResult, Resource, response
from extplugtest.coap.transmission import TransmissionParameters
from extplugtest.coap.transport_udp import UdpServerTransport

SILENCE = 0.3  # how long "no answer" is awaited; a sync ping follows to prove processing


class CountingResource(Resource):
    """POST increments a counter and returns it; GET returns it."""

    def __init__(self) -> None:
        super().__init__("counter")
        self.count = 0

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, str(self.count), 0)

    def handle_post(self, exchange: Exchange) -> HandlerResult:
        self.count += 1
        return response(Code.CHANGED, str(self.count), 0)


class SeparateResource(Resource):
    """Answers later (an awaitable handler): a separate response."""

    def __init__(self) -> None:
        super().__init__("separate")
        self.calls = 0

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        self.calls += 1
        return self._later()

    async def _later(self) -> Message:
        await asyncio.sleep(0.01)
        return response(Code.CONTENT, "late", 0)


class FailingResource(Resource):
    def handle_get(self, exchange: Exchange) -> HandlerResult:
        raise RuntimeError("boom")


class ObservedResource(Resource):
    def __init__(self) -> None:
        super().__init__("obs", observable=True)
        self.value = 0

    def handle_get(self, exchange: Exchange) -> HandlerResult:
        return response(Code.CONTENT, f"v{self.value}", 0)


def tree() -> Resource:
    root = Resource("")
    root.add(CountingResource(), SeparateResource(), FailingResource("fail"), ObservedResource())
    return root


FAST = TransmissionParameters(ack_timeout=0.1, ack_random_factor=1.0, max_retransmit=2)


@pytest.fixture
def server(make_server):
    return make_server(tree(), transmission=FAST)


@pytest.fixture
def client(server, make_client):
    return make_client(server.address)


def request(code: int, path: str, mid: int, token: bytes = b"\x01\x02", type: int = Type.CON):
    message = Message(type=type, code=code, mid=mid, token=token)
    for segment in path.strip("/").split("/"):
        if segment:
            message.add_option(Option.URI_PATH, segment)
    return message


def sync(client) -> None:
    """A ping round trip: everything sent before it has been processed."""
    client.send(bytes([0x40, 0, 0xFE, 0xED]))
    for _ in range(5):  # skip notifications that may be on their way
        if client.receive_raw() == bytes([0x70, 0, 0xFE, 0xED]):
            return
    raise AssertionError("no RST for the sync ping")


def counters(server) -> dict:
    return server.call(server.endpoint.counters)


# -- rejects and pings ------------------------------------------------------------------------
def test_ping_gets_rst_with_same_mid(client):
    client.send(bytes([0x40, 0x00, 0x12, 0x34]))
    assert client.receive_raw() == bytes([0x70, 0x00, 0x12, 0x34])


@pytest.mark.parametrize(
    "datagram",
    [
        bytes([0x49, 0x01, 0x00, 0x07]) + b"123456789",  # TKL 9 (§3)
        bytes([0x42, 0x01, 0x00, 0x07, 0xAA]),  # token cut short
        bytes([0x40, 0x01, 0x00, 0x07, 0xFF]),  # payload marker without payload
        bytes([0x40, 0x01, 0x00, 0x07, 0xF1, 0x00]),  # option delta nibble 15
        bytes([0x41, 0x00, 0x00, 0x07, 0x01]),  # empty message with a token (§4.1)
        bytes([0x40, 0x20, 0x00, 0x07]),  # reserved code class 1
    ],
)
def test_malformed_con_is_rejected_with_rst(client, server, datagram):
    client.send(datagram)
    assert client.receive_raw() == bytes([0x70, 0x00, 0x00, 0x07])


@pytest.mark.parametrize(
    "datagram",
    [
        bytes([0x59, 0x01, 0x00, 0x08]) + b"123456789",  # NON with TKL 9
        bytes([0x50, 0x01, 0x00, 0x08, 0xFF]),  # NON, marker without payload
        bytes([0x69, 0x45, 0x00, 0x08]) + b"123456789",  # ACK with TKL 9
        bytes([0x60, 0x01, 0x00, 0x08]),  # an ACK carrying a request
        bytes([0x70, 0x01, 0x00, 0x08]),  # an RST carrying a request
    ],
)
def test_malformed_non_ack_rst_are_dropped_silently(client, server, datagram):
    before = counters(server)["recv-malformed"]
    client.send(datagram)
    assert client.receive_raw(SILENCE) is None
    sync(client)
    assert counters(server)["recv-malformed"] == before + 1


def test_unknown_version_and_runt_datagrams_are_ignored(client, server):
    client.send(bytes([0x80, 0x01, 0x00, 0x09]))  # version 2
    client.send(b"\x40\x01")  # shorter than a header
    assert client.receive_raw(SILENCE) is None
    sync(client)
    assert counters(server)["recv-ignored"] >= 2


# -- option errors ----------------------------------------------------------------------------
def test_unknown_critical_option_is_402_piggybacked(client):
    message = request(Code.GET, "counter", 0x100).add_option(9, b"x")
    reply = client.exchange(message)
    assert (reply.type, reply.code, reply.mid, reply.token) == (
        Type.ACK,
        Code.BAD_OPTION,
        0x100,
        b"\x01\x02",
    )
    assert reply.payload  # a diagnostic text


def test_unknown_critical_option_in_non_is_non_402(client):
    message = request(Code.GET, "counter", 0x101, type=Type.NON).add_option(9, b"x")
    reply = client.exchange(message)
    assert (reply.type, reply.code, reply.token) == (Type.NON, Code.BAD_OPTION, b"\x01\x02")


def test_repeated_accept_is_402(client):
    message = request(Code.GET, "counter", 0x102).add_option(17, 0).add_option(17, 50)
    assert client.exchange(message).code == Code.BAD_OPTION


def test_unknown_elective_option_is_ignored(client):
    message = request(Code.GET, "counter", 0x103).add_option(10, b"x")
    assert client.exchange(message).code == Code.CONTENT


@pytest.mark.parametrize("number", [Option.PROXY_URI, Option.PROXY_SCHEME])
def test_proxy_options_get_505(client, number):
    message = request(Code.GET, "counter", 0x104).add_option(number, "coap://example/x")
    assert client.exchange(message).code == Code.PROXYING_NOT_SUPPORTED


def test_not_found_and_method_not_allowed(client):
    assert client.exchange(request(Code.GET, "nothing", 0x105)).code == Code.NOT_FOUND
    assert client.exchange(request(Code.DELETE, "counter", 0x106)).code == Code.METHOD_NOT_ALLOWED


def test_handler_exception_is_500_and_server_goes_on(client, server):
    assert client.exchange(request(Code.GET, "fail", 0x107)).code == Code.INTERNAL_SERVER_ERROR
    assert client.exchange(request(Code.GET, "counter", 0x108)).code == Code.CONTENT


# -- piggy-backed, NON, deduplication --------------------------------------------------------
def test_con_gets_piggybacked_ack(client):
    reply = client.exchange(request(Code.GET, "counter", 0x200, token=b"\xaa" * 8))
    assert (reply.type, reply.mid, reply.token) == (Type.ACK, 0x200, b"\xaa" * 8)


def test_empty_token_is_echoed(client):
    reply = client.exchange(request(Code.GET, "counter", 0x201, token=b""))
    assert reply.token == b"" and reply.code == Code.CONTENT


def test_non_gets_non_with_server_mid(client):
    reply = client.exchange(request(Code.GET, "counter", 0x202, type=Type.NON))
    assert reply.type == Type.NON and reply.token == b"\x01\x02"


@pytest.mark.parametrize("kind", [Type.CON, Type.NON])
def test_duplicate_is_answered_from_cache_and_handled_once(client, server, kind):
    first = request(Code.POST, "counter", 0x300, type=kind)
    client.send(first)
    reply1 = client.receive_raw()
    client.send(first)
    reply2 = client.receive_raw()
    assert reply1 == reply2  # byte for byte, payload included
    assert server.root.children["counter"].count == 1
    assert counters(server)["recv-duplicate requests"] == 1


def test_new_mid_is_a_new_request(client, server):
    client.exchange(request(Code.POST, "counter", 0x301))
    client.exchange(request(Code.POST, "counter", 0x302))
    assert server.root.children["counter"].count == 2


def test_without_deduplication_duplicates_run_twice(make_server, make_client):
    server = make_server(tree(), dedup=None)
    client = make_client(server.address)
    message = request(Code.POST, "counter", 0x303)
    client.exchange(message)
    client.exchange(message)
    assert server.root.children["counter"].count == 2


def test_rate_limited_log_keeps_a_bounded_set_of_keys(caplog, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("extplugtest.coap.endpoint.time.monotonic", lambda: now[0])
    log = RateLimitedLog(interval=10.0, max_keys=2)
    for key in ("handler:/echo/a", "handler:/echo/b", "handler:/echo/c", "handler:/echo/a"):
        log(key, "failed %s", key)
    assert [r.getMessage() for r in caplog.records] == [
        "failed handler:/echo/a",
        "failed handler:/echo/b",
    ]
    assert log.suppressed == 2 and len(log._last) == 2
    now[0] += 10.0  # both intervals over: their keys make room
    log("handler:/echo/c", "failed %s", "handler:/echo/c")
    assert caplog.records[-1].getMessage() == "failed handler:/echo/c"
    assert len(log._last) == 1


# -- separate responses and retransmission ---------------------------------------------------
def test_separate_response_empty_ack_then_con(client):
    client.send(request(Code.GET, "separate", 0x400, token=b"\x07"))
    ack = client.receive()
    assert (ack.type, ack.code, ack.mid, ack.token) == (Type.ACK, Code.EMPTY, 0x400, b"")
    late = client.receive()
    assert (late.type, late.code, late.token, late.payload) == (
        Type.CON,
        Code.CONTENT,
        b"\x07",
        b"late",
    )
    assert late.mid != 0x400
    client.send(Message(Type.ACK, 0, late.mid))
    assert client.receive_raw(SILENCE * 3) is None  # acknowledged: no retransmission


def test_unacknowledged_separate_response_is_retransmitted_then_given_up(client, server):
    client.send(request(Code.GET, "separate", 0x401))
    client.receive()  # empty ACK
    copies = []
    for _ in range(1 + FAST.max_retransmit + 1):
        raw = client.receive_raw(2.0)
        if raw is None:
            break
        copies.append(raw)
    assert len(copies) == 1 + FAST.max_retransmit
    assert len(set(copies)) == 1  # same MID, same bytes
    assert counters(server)["send-timeouts"] == 1


def test_rst_ends_retransmission(client, server):
    client.send(request(Code.GET, "separate", 0x402))
    client.receive()
    late = client.receive()
    client.send(Message(Type.RST, 0, late.mid))
    assert client.receive_raw(SILENCE * 3) is None


def test_duplicate_after_separate_response_gets_the_response(client, server):
    message = request(Code.GET, "separate", 0x403)
    client.send(message)
    client.receive()
    late = client.receive()
    client.send(Message(Type.ACK, 0, late.mid))
    client.send(message)
    again = client.receive()
    assert again.payload == b"late" and again.token == late.token
    assert server.root.children["separate"].calls == 1


def test_non_request_deferred_gets_non_response_without_ack(client):
    client.send(request(Code.GET, "separate", 0x404, type=Type.NON))
    reply = client.receive()
    assert (reply.type, reply.code, reply.payload) == (Type.NON, Code.CONTENT, b"late")


def test_deferred_responses_are_bounded(make_server, make_client):
    server = make_server(tree(), max_deferred=0)
    client = make_client(server.address)
    reply = client.exchange(request(Code.GET, "separate", 0x405))
    assert reply.code == Code.SERVICE_UNAVAILABLE
    assert counters(server)["deferred-refused"] == 1


def test_full_con_table_sends_separate_response_as_non(make_server, make_client):
    """At the bound of outstanding CON messages a separate response still reaches its
    client (as NON, counted): the client holds our empty ACK and would never ask again."""
    one_slot = TransmissionParameters(ack_timeout=30.0, max_outstanding=1)
    server = make_server(tree(), transmission=one_slot)
    client = make_client(server.address)
    client.send(request(Code.GET, "separate", 0x406, token=b"\x01"))
    assert client.receive().code == Code.EMPTY
    first = client.receive()  # takes the only slot: never acknowledged
    assert (first.type, first.payload) == (Type.CON, b"late")
    client.send(request(Code.GET, "separate", 0x407, token=b"\x02"))
    assert client.receive().code == Code.EMPTY
    second = client.receive()
    assert (second.type, second.token, second.payload) == (Type.NON, b"\x02", b"late")
    assert counters(server)["send-con-refused"] == 1


# -- observe ----------------------------------------------------------------------------------
def observe(mid: int, value: int, type: int = Type.CON, token: bytes = b"\x0b") -> Message:
    return request(Code.GET, "obs", mid, token=token, type=type).add_option(Option.OBSERVE, value)


def test_observe_register_notify_cancel(client, server):
    resource = server.root.children["obs"]
    reply = client.exchange(observe(0x500, 0, Type.NON))
    assert reply.code == Code.CONTENT and reply.observe is not None
    first = reply.observe
    resource.value = 1
    server.call(resource.changed)
    note = client.receive()
    assert (note.type, note.token, note.payload) == (Type.NON, b"\x0b", b"v1")
    assert note.observe > first
    assert client.exchange(observe(0x501, 1)).observe is None  # cancel (Observe=1)
    server.call(resource.changed)
    assert client.receive_raw(SILENCE) is None
    assert counters(server)["observes"] == 0


def test_rst_to_notification_cancels(client, server):
    resource = server.root.children["obs"]
    client.exchange(observe(0x502, 0, Type.NON))
    server.call(resource.changed)
    note = client.receive()
    client.send(Message(Type.RST, 0, note.mid))
    sync(client)
    assert counters(server)["observes"] == 0


def test_con_notifications_one_in_flight(client, server):
    resource = server.root.children["obs"]
    client.exchange(observe(0x503, 0, Type.CON))
    resource.value = 1
    server.call(resource.changed)
    first = client.receive()
    assert first.type == Type.CON
    resource.value = 2
    server.call(resource.changed)
    resource.value = 3
    server.call(resource.changed)  # replaces the waiting value 2
    again = client.receive()
    assert again.mid == first.mid  # a retransmission, not a new notification
    client.send(Message(Type.ACK, 0, first.mid))
    newest = client.receive()
    assert newest.payload == b"v3" and newest.observe > first.observe
    client.send(Message(Type.ACK, 0, newest.mid))


def test_full_con_table_keeps_notifications_flowing(make_server, make_client):
    """A CON notification refused by the full table goes as NON and leaves no CON in flight,
    so the relation keeps notifying (before, it waited for an ACK that could never come)."""
    one_slot = TransmissionParameters(ack_timeout=30.0, max_outstanding=1)
    server = make_server(tree(), transmission=one_slot)
    client = make_client(server.address)
    resource = server.root.children["obs"]
    client.send(request(Code.GET, "separate", 0x408, token=b"\x01"))
    assert client.receive().code == Code.EMPTY
    assert client.receive().type == Type.CON  # the only slot, never acknowledged
    client.exchange(observe(0x509, 0, Type.CON, token=b"\x0c"))
    server.call(setattr, server.endpoint.observe, "check_count", 1)  # every notification CON
    for value in (1, 2):
        resource.value = value
        server.call(resource.changed)
        note = client.receive()
        assert (note.type, note.token, note.payload) == (Type.NON, b"\x0c", f"v{value}".encode())
    assert counters(server)["send-con-refused"] == 2
    assert counters(server)["observes"] == 1


def test_observe_relations_are_bounded(make_server, make_client):
    server = make_server(tree(), max_observes=1)
    client = make_client(server.address)
    assert client.exchange(observe(0x504, 0, token=b"\x01")).observe is not None
    refused = client.exchange(observe(0x505, 0, token=b"\x02"))
    assert refused.code == Code.CONTENT and refused.observe is None
    assert counters(server)["refused-observes"] == 1


def test_ipv6_loopback_endpoint():
    """The same engine on an IPv6 socket: addresses come back as 4-tuples."""
    loop = uvloop.new_event_loop()
    endpoint = CoapEndpoint(tree())
    transport = UdpServerTransport(endpoint, ("::1", 0))
    transport.open(loop)
    client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        client.sendto(request(Code.POST, "counter", 0x600).to_bytes(), transport.local_address)
        loop.run_until_complete(asyncio.sleep(0.05))
        reply = parse(client.recv(2048))
        assert reply.code == Code.CHANGED and reply.mid == 0x600
        assert endpoint.uri.startswith("coap://[::1]:")
    finally:
        client.close()
        transport.close()
        loop.close()


def test_clear_observers_sends_error_notification_and_ends(client, server):
    resource = server.root.children["obs"]
    client.exchange(observe(0x506, 0, Type.NON))
    server.call(resource.clear_observers, Code.NOT_FOUND)
    note = client.receive()
    assert (note.type, note.code, note.observe) == (Type.CON, Code.NOT_FOUND, None)
    client.send(Message(Type.ACK, 0, note.mid))
    sync(client)
    assert counters(server)["observes"] == 0
