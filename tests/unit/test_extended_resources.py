"""/requests, /reverse-request, /reverse-observe and /diagnose (inventory §2.2-2.4): formats
byte for byte, limits and bounds, Californium's error texts, Accept handling."""

from __future__ import annotations

import asyncio
import re
import struct
import time
from collections.abc import Callable

import cbor2
import pytest

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.resource import Exchange, Resource, response
from extplugtest.coap.transmission import TransmissionParameters
from extplugtest.resources.diagnose import (
    COAP_KEYS,
    LIMIT_KEYS,
    OBSERVE_KEYS,
    Diagnose,
    endpoint_key,
    endpoint_tag,
)
from extplugtest.resources.extended import add_extended_resources
from extplugtest.resources.requests import (
    RequestInformation,
    RequestStatistic,
    gson_dumps,
    gson_string,
    java_host_address,
    java_length,
    java_raw_address,
)
from extplugtest.resources.reverse import (
    ReverseObserve,
    ReverseRequest,
    java_path_segments,
    split_queries,
)
from extplugtest.resources.settings import ResourceSettings

START = 1_700_000_000_123
FAST = TransmissionParameters(ack_timeout=0.2, ack_random_factor=1.0, max_retransmit=1)


def request(
    code: int, path: str, *queries: str, accept: int | None = None, mid: int = 1, token=b"\x01"
) -> Message:
    message = Message(type=Type.CON, code=code, mid=mid, token=token)
    for segment in path.split("/"):
        message.add_option(Option.URI_PATH, segment)
    for query in queries:
        message.add_option(Option.URI_QUERY, query)
    if accept is not None:
        message.add_option(Option.ACCEPT, accept)
    return message


def tree(*resources: Resource) -> Resource:
    return Resource("").add(*resources)


# -- Java formatting helpers --------------------------------------------------------------------


def test_gson_escapes_like_gson():
    assert gson_string("a\"b\\c\n\t<>&='\x01\u2028é") == (
        '"a\\"b\\\\c\\n\\t\\u003c\\u003e\\u0026\\u003d\\u0027\\u0001\\u2028é"'
    )
    assert gson_dumps([{"a": 1, "b": "x"}, {}]) == '[{"a":1,"b":"x"},{}]'


@pytest.mark.parametrize(
    ("address", "text"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "0:0:0:0:0:0:0:1"),
        ("2001:db8::ab:0", "2001:db8:0:0:0:0:ab:0"),
        (bytes(15) + b"\x01", "0:0:0:0:0:0:0:1"),
        (b"\x0a\x00\x00\x01", "10.0.0.1"),
    ],
)
def test_java_host_address(address, text):
    assert java_host_address(address) == text


def test_java_host_address_with_scope():
    assert java_host_address("fe80::1", 3) == "fe80:0:0:0:0:0:0:1%3"


def test_java_raw_address_unmaps_ipv4():
    assert java_raw_address("::ffff:10.1.2.3") == b"\x0a\x01\x02\x03"
    assert java_raw_address("::1") == bytes(15) + b"\x01"
    assert java_raw_address("fe80::1%eth0") == b"\xfe\x80" + bytes(13) + b"\x01"


def test_java_length_counts_utf16_units():
    assert java_length("aé€😀") == 5


# -- /requests ----------------------------------------------------------------------------------


@pytest.fixture
def statistic() -> RequestStatistic:
    return RequestStatistic(START)


@pytest.fixture
def requests_server(make_server, statistic):
    return make_server(tree(statistic))


def post_requests(client, *queries, accept=None, mid=1) -> Message:
    reply = client.exchange(request(Code.POST, "requests", *queries, accept=accept, mid=mid))
    assert reply is not None
    return reply


HISTORY = [
    RequestInformation("RID2", 1_700_000_000_500, b"\x7f\x00\x00\x01", 5683),
    RequestInformation("RID1", 1_700_000_000_400, bytes(15) + b"\x01", 40000),
    RequestInformation('R<"x">', 1_700_000_000_300, None, 0),
]


def test_text_format(statistic):
    assert statistic.to_text(HISTORY, 500) == (
        'systemstart:1700000000123\nRID2:1700000000500\nRID1:1700000000400\nR<"x">:1700000000300\n'
    )


def test_text_format_drops_what_does_not_fit(statistic):
    head = "systemstart:1700000000123\n"
    line = "RID2:1700000000500\n"
    assert statistic.to_text(HISTORY, len(head) + len(line)) == head + line
    assert statistic.to_text(HISTORY, len(head) + len(line) - 1) == head
    assert statistic.to_text(HISTORY, 1) == head  # systemstart is always there


def test_json_format(statistic):
    assert statistic.to_json(HISTORY, 500) == (
        '[{"systemstart":1700000000123},'
        '{"rid":"RID2","time":1700000000500,"ep":"127.0.0.1","port":5683},'
        '{"rid":"RID1","time":1700000000400,"ep":"0:0:0:0:0:0:0:1","port":40000},'
        '{"rid":"R\\u003c\\"x\\"\\u003e","time":1700000000300}]'
    )


def test_json_keeps_the_last_version_that_fits(statistic):
    full = statistic.to_json(HISTORY, 500)
    two = statistic.to_json(HISTORY[:2], 500)
    assert statistic.to_json(HISTORY, len(full)) == full
    assert statistic.to_json(HISTORY, len(full) - 1) == two
    assert statistic.to_json(HISTORY, 1) == '[{"systemstart":1700000000123}]'


def test_cbor_format_is_canonical_with_signed_short_port(statistic):
    payload = statistic.to_cbor(HISTORY[:2], 500)
    start = b"\xa1\x6bsystemstart\x1b" + START.to_bytes(8, "big")
    first = (
        b"\xa4"  # map(4), keys length-first: ep, rid, port, time
        + b"\x62ep\x44\x7f\x00\x00\x01"
        + b"\x63rid\x64RID2"
        + b"\x64port\x19\x16\x33"  # 5683
        + b"\x64time\x1b"
        + (1_700_000_000_500).to_bytes(8, "big")
    )
    second = (
        b"\xa4"
        + b"\x62ep\x50"
        + bytes(15)
        + b"\x01"
        + b"\x63rid\x64RID1"
        + b"\x64port\x39\x63\xbf"  # 40000 as a Java short: -25536
        + b"\x64time\x1b"
        + (1_700_000_000_400).to_bytes(8, "big")
    )
    assert payload == b"\x83" + start + first + second
    assert cbor2.loads(payload)[2]["port"] & 0xFFFF == 40000


def test_cbor_without_ep_and_size_limit(statistic):
    payload = statistic.to_cbor(HISTORY[2:], 500)
    assert list(cbor2.loads(payload)[1]) == ["rid", "time"]
    assert statistic.to_cbor(HISTORY, len(payload) - 1) == cbor2.dumps([{"systemstart": START}])
    full = statistic.to_cbor(HISTORY, 500)
    assert statistic.to_cbor(HISTORY, len(full)) == full


def test_cbor_array_header_beyond_23_entries(statistic):
    history = [RequestInformation(f"R{i}", i, None, 0) for i in range(24)]
    payload = statistic.to_cbor(history, 1023)
    assert payload[:2] == b"\x98\x19"  # 25 items
    assert payload == cbor2.dumps(
        [{"systemstart": START}] + [{"rid": f"R{i}", "time": i} for i in range(24)],
        canonical=True,
    )


@pytest.mark.parametrize(
    ("queries", "text"),
    [
        ((), "missing URI-query-options for 'dev' and 'rid'!"),
        (("dev=a",), "missing URI-query-option for 'rid'!"),
        (("rid=1",), "missing URI-query-option for 'dev'!"),
        (("dev", "rid=1"), "missing URI-query-option for 'dev'!"),
        (("dev=a", "rid=a:b"), "URI-query-option 'rid' contains :!"),
        (("dev=a", "rid=1", "x=1"), "URI-query-option 'x=1' is not supported!"),
        (("dev=a", "rid=1", "rlen=0"), "URI-query-option 'rlen=0' is less than 1!"),
        (("dev=a", "rid=1", "rlen=1024"), "URI-query-option 'rlen=1024' is more than 1023!"),
        (("dev=a", "rid=1", "rlen=x"), "URI-query-option 'rlen=x' is no number!"),
    ],
)
def test_requests_bad_queries(requests_server, make_client, queries, text):
    reply = post_requests(make_client(requests_server.address), *queries)
    assert reply.code == Code.BAD_OPTION
    assert reply.payload.decode() == text
    assert reply.content_format == ContentFormat.TEXT_PLAIN


def test_requests_get_is_405(requests_server, make_client):
    client = make_client(requests_server.address)
    reply = client.exchange(request(Code.GET, "requests", "dev=a", "rid=1"))
    assert reply.code == Code.METHOD_NOT_ALLOWED


def test_requests_text_over_the_wire(requests_server, make_client):
    client = make_client(requests_server.address)
    before = int(time.time() * 1000)
    post_requests(client, "dev=d1", "rid=RID1", mid=1)
    reply = post_requests(client, "dev=d1", "rid=RID2", mid=2)
    after = int(time.time() * 1000)
    assert (reply.code, reply.content_format) == (Code.CHANGED, ContentFormat.TEXT_PLAIN)
    match = re.fullmatch(rb"systemstart:1700000000123\nRID2:(\d+)\nRID1:(\d+)\n", reply.payload)
    assert match is not None
    assert before <= int(match[2]) <= int(match[1]) <= after


def test_requests_json_with_endpoint(requests_server, make_client):
    client = make_client(requests_server.address)
    reply = post_requests(client, "dev=d2", "rid=R", "ep", accept=ContentFormat.JSON)
    assert reply.content_format == ContentFormat.JSON
    port = client.sock.getsockname()[1]
    assert re.fullmatch(
        rb'\[\{"systemstart":1700000000123\},\{"rid":"R","time":\d+,"ep":"127.0.0.1","port":'
        + str(port).encode()
        + rb"\}\]",
        reply.payload,
    )


def test_requests_cbor_with_endpoint(requests_server, make_client):
    client = make_client(requests_server.address)
    reply = post_requests(client, "dev=d3", "rid=R", "ep", accept=ContentFormat.CBOR)
    assert reply.content_format == ContentFormat.CBOR
    start, entry = cbor2.loads(reply.payload)
    assert start == {"systemstart": START}
    assert list(entry) == ["ep", "rid", "port", "time"]
    assert entry["ep"] == b"\x7f\x00\x00\x01"
    assert entry["port"] & 0xFFFF == client.sock.getsockname()[1]


def test_requests_rlen_limits_the_payload(requests_server, make_client):
    client = make_client(requests_server.address)
    for mid in range(1, 5):
        reply = post_requests(client, "dev=d4", f"rid=R{mid}", "rlen=60", mid=mid)
    # 26 bytes of systemstart + 19-20 bytes per entry: two entries fit in 60
    assert len(reply.payload) <= 60
    assert reply.payload.count(b"\n") == 3


def test_requests_default_limit_is_500(requests_server, make_client):
    client = make_client(requests_server.address)
    for mid in range(1, 25):
        reply = post_requests(client, "dev=d5", f"rid=RID{mid:013d}", mid=mid)
    assert len(reply.payload) <= 500
    assert len(reply.payload) > 500 - len(b"RID0000000000001:1700000000000\n")


def test_requests_default_limit_over_dtls_is_what_a_record_carries(statistic):
    """Over DTLS the limit is the connection's message-size-limit minus the response's
    header: 4 bytes, the token (1 byte here), a text Content-Format option and the marker."""

    class DtlsEndpoint:
        scheme = "coaps"

        @staticmethod
        def security(peer):
            return [("cipher-suite", "X"), ("message-size-limit", 1223)]

    message = request(Code.POST, "requests", "dev=d7", "rid=R")
    exchange = Exchange(message, PEER, DtlsEndpoint(), statistic)
    assert statistic.default_max_payload(exchange) == 1223 - (4 + 1 + 1 + 1)


def test_requests_unsupported_accept_is_406_but_recorded(requests_server, make_client, statistic):
    client = make_client(requests_server.address)
    reply = post_requests(client, "dev=d6", "rid=1", accept=ContentFormat.XML)
    assert reply.code == Code.NOT_ACCEPTABLE
    assert reply.payload == b"" and reply.content_format is None
    assert len(statistic) == 1


def test_requests_history_is_bounded_newest_first():
    statistic = RequestStatistic(START, max_history=3)
    for i in range(5):
        history = statistic.record("dev", f"R{i}", None, 0)
    assert [entry.rid for entry in history] == ["R4", "R3", "R2"]


def test_requests_devices_are_an_lru():
    statistic = RequestStatistic(START, max_devices=2)
    statistic.record("a", "1", None, 0)
    statistic.record("b", "1", None, 0)
    statistic.record("a", "2", None, 0)  # a is now the most recently updated
    statistic.record("c", "1", None, 0)  # evicts b
    assert (len(statistic), statistic.evicted) == (2, 1)
    assert [entry.rid for entry in statistic.record("a", "3", None, 0)] == ["3", "2", "1"]
    assert [entry.rid for entry in statistic.record("b", "2", None, 0)] == ["2"]
    assert statistic.evicted == 2


# -- a fake endpoint for the reverse resources ----------------------------------------------------

Responder = Callable[[Message], "Message | Exception | None"]


class FakeEndpoint:
    """Implements CoapEndpoint.request()/cancel_observation() for unit tests; *responder*
    answers each request (a Message, an exception, or None = never)."""

    scheme = "coap"
    security = None  # plain UDP: no DTLS context fields

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.sent: list[tuple[Message, tuple, float]] = []
        self.cancelled: list[bytes] = []
        self.listeners: dict[bytes, Callable[[Message], None]] = {}
        self._tokens = 0

    def request(self, message, peer, *, timeout=120.0, on_notification=None):
        if not message.token:
            self._tokens += 1
            message.token = bytes([0xA0, self._tokens])
        self.sent.append((message, peer, timeout))
        if on_notification is not None:
            self.listeners[message.token] = on_notification
        future = asyncio.get_running_loop().create_future()
        answer = self.responder(message)
        if isinstance(answer, Exception):
            future.set_exception(answer)
        elif answer is not None:
            answer.token = message.token
            future.set_result(answer)
        return future

    def cancel_observation(self, peer, token):
        self.cancelled.append(token)
        self.listeners.pop(token, None)

    def notify(self, token: bytes, code: int = Code.CONTENT, observe: int | None = 2) -> None:
        message = Message(type=Type.CON, code=code, token=token, payload=b"hello 0 feed-2")
        if observe is not None:
            message.add_option(Option.OBSERVE, observe)
        self.listeners[token](message)


def feed(message: Message) -> Message:
    """Californium's client Feed resource: 2.05, observable."""
    reply = Message(type=Type.ACK, code=Code.CONTENT, payload=b"hello 0 feed-1")
    if message.observe == 0:
        reply.add_option(Option.OBSERVE, 1)
    return reply


PEER = ("127.0.0.1", 40001)


def handle(resource: Resource, endpoint, *queries, accept=None, peer=PEER):
    message = request(Code.POST, resource.name, *queries, accept=accept)
    return resource.handle(Exchange(message, peer, endpoint, resource))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(coroutine)


# -- /reverse-request ---------------------------------------------------------------------------


def test_java_path_segments():
    assert java_path_segments("feed-CON") == ["feed-CON"]
    assert java_path_segments("/a/b/") == ["a", "b"]
    assert java_path_segments("a//b") == ["a", "", "b"]
    assert java_path_segments("") == [""]


def test_split_queries_forwards_the_others():
    assert split_queries(["req=2", "rlen=40", "res=x", "ack"], ("req", "res")) == (
        ["req=2", "res=x"],
        ["rlen=40", "ack"],
    )


def test_reverse_request_series():
    async def go():
        resource, endpoint = ReverseRequest(), FakeEndpoint(feed)
        reply = handle(resource, endpoint, "req=3", "res=feed-CON", "rlen=40")
        assert (reply.code, reply.payload, reply.content_format) == (Code.CHANGED, b"", None)
        assert endpoint.sent == []  # the 2.04 goes out first
        await settle()
        assert len(endpoint.sent) == 3
        for message, peer, timeout in endpoint.sent:
            assert (message.type, message.code, peer, timeout) == (Type.CON, Code.GET, PEER, 120)
            assert (message.uri_path, message.uri_query) == ("feed-CON", ["rlen=40"])
            assert message.observe is None
        stats = handle(resource, endpoint)
        assert stats.payload == b"3 reverse-requests, 3 sent, 0 pending."
        assert (stats.code, stats.content_format) == (Code.CHANGED, ContentFormat.TEXT_PLAIN)
        binary = handle(resource, endpoint, accept=ContentFormat.OCTET_STREAM)
        assert binary.payload == struct.pack(">qqq", 3, 3, 0)
        assert binary.content_format == ContentFormat.OCTET_STREAM

    run(go())


@pytest.mark.parametrize(
    "failure",
    [
        Message(type=Type.ACK, code=Code.NOT_FOUND),
        TimeoutError("no response"),
        ConnectionResetError("RST"),
        OverflowError("too many"),
    ],
)
def test_reverse_request_series_ends_on_failure(failure):
    async def go():
        answers = iter([feed, lambda message: failure])
        endpoint = FakeEndpoint(lambda message: next(answers)(message))
        resource = ReverseRequest()
        handle(resource, endpoint, "req=5", "res=feed-CON")
        await settle()
        assert len(endpoint.sent) == 2
        assert handle(resource, endpoint).payload == b"5 reverse-requests, 2 sent, 0 pending."

    run(go())


def test_reverse_request_pending_and_bound():
    async def go():
        resource, endpoint = ReverseRequest(max_series=1), FakeEndpoint(lambda message: None)
        handle(resource, endpoint, "req=4", "res=feed-CON")
        await settle()
        assert handle(resource, endpoint).payload == b"4 reverse-requests, 1 sent, 4 pending."
        refused = handle(resource, endpoint, "req=1", "res=feed-CON", peer=("127.0.0.1", 2))
        assert (refused.code, refused.payload) == (Code.SERVICE_UNAVAILABLE, b"")
        assert resource.refused == 1
        resource.stop()
        await settle()
        assert handle(resource, endpoint).payload == b"4 reverse-requests, 1 sent, 0 pending."

    run(go())


def test_reverse_request_series_of_one_device_and_resource_take_turns():
    """A second series for the same device and resource waits for the first (the device
    keeps one Block2 status per resource); another resource does not wait."""

    async def go():
        resource, endpoint = ReverseRequest(), FakeEndpoint(lambda message: None)
        handle(resource, endpoint, "req=1", "res=feed-CON")
        handle(resource, endpoint, "req=1", "res=feed-CON")
        handle(resource, endpoint, "req=1", "res=feed-NON")
        await settle()
        paths = [message.uri_path for message, _, _ in endpoint.sent]
        assert sorted(paths) == ["feed-CON", "feed-NON"]  # the second feed-CON series waits
        resource.stop()
        await settle()
        assert not resource._turns  # nothing left behind

    run(go())


@pytest.mark.parametrize(
    ("queries", "text"),
    [
        (("req=0", "res=x"), "URI-query-option 'req=0' is less than 1!"),
        (("req=10000001", "res=x"), "URI-query-option 'req=10000001' is more than 10000000!"),
        (("req=many", "res=x"), "URI-query-option 'req=many' is no number!"),
    ],
)
def test_reverse_request_bad_queries(queries, text):
    reply = handle(ReverseRequest(), FakeEndpoint(feed), *queries)
    assert (reply.code, reply.payload.decode(), reply.content_format) == (
        Code.BAD_OPTION,
        text,
        None,
    )


@pytest.mark.parametrize("resource_class", [ReverseRequest, ReverseObserve])
def test_reverse_accept(resource_class):
    resource = resource_class()
    reply = handle(resource, FakeEndpoint(feed), accept=ContentFormat.JSON)
    assert (reply.code, reply.payload) == (Code.NOT_ACCEPTABLE, b"")
    reply = handle(resource, FakeEndpoint(feed), accept=ContentFormat.TEXT_PLAIN)
    assert reply.code == Code.CHANGED


# -- /reverse-observe ---------------------------------------------------------------------------


def observe_post(resource, endpoint, *queries, accept=None, peer=PEER):
    return handle(resource, endpoint, "res=feed-CON", *queries, accept=accept, peer=peer)


def test_reverse_observe_registers_and_answers_with_the_token():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        answer = observe_post(resource, endpoint, "obs=3", "rlen=40")
        assert isinstance(answer, asyncio.Future)  # separate response: an empty ACK first
        assert endpoint.sent == []
        reply = await asyncio.wait_for(answer, 1)
        assert (reply.code, reply.payload, reply.content_format) == (
            Code.CHANGED,
            b"A001",
            ContentFormat.TEXT_PLAIN,
        )
        [(message, peer, _timeout)] = endpoint.sent
        assert (message.type, message.code, message.observe, peer) == (
            Type.CON,
            Code.GET,
            0,
            PEER,
        )
        assert (message.uri_path, message.uri_query) == ("feed-CON", ["rlen=40"])
        assert handle(resource, endpoint).payload == b"1 active observes, 0 notifies."
        resource.stop()

    run(go())


def test_reverse_observe_token_as_octets():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        answer = observe_post(resource, endpoint, "obs=3", accept=ContentFormat.OCTET_STREAM)
        reply = await asyncio.wait_for(answer, 1)
        assert (reply.payload, reply.content_format) == (b"\xa0\x01", ContentFormat.OCTET_STREAM)
        binary = handle(resource, endpoint, accept=ContentFormat.OCTET_STREAM)
        assert binary.payload == struct.pack(">iq", 1, 0)
        resource.stop()

    run(go())


def test_reverse_observe_reregisters_after_obs_notifications():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        await asyncio.wait_for(observe_post(resource, endpoint, "obs=2"), 1)
        endpoint.notify(b"\xa0\x01")
        assert len(endpoint.sent) == 1
        endpoint.notify(b"\xa0\x01")  # the 2nd: cancel and register anew, new token
        await settle()
        assert endpoint.cancelled == [b"\xa0\x01"]
        assert [message.token for message, _, _ in endpoint.sent] == [b"\xa0\x01", b"\xa0\x02"]
        assert resource.overall_observes == 2
        assert handle(resource, endpoint).payload == b"1 active observes, 2 notifies."
        resource.stop()
        assert endpoint.cancelled == [b"\xa0\x01", b"\xa0\x02"]

    run(go())


def test_reverse_observe_reregisters_after_timeout():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        await asyncio.wait_for(observe_post(resource, endpoint, "obs=5", "timeout=1"), 1)
        await asyncio.sleep(0.6)
        endpoint.notify(b"\xa0\x01")  # restarts the timeout
        await asyncio.sleep(0.6)
        assert len(endpoint.sent) == 1
        await asyncio.sleep(0.6)
        assert len(endpoint.sent) == 2 and endpoint.cancelled == [b"\xa0\x01"]
        resource.stop()

    run(go())


def test_reverse_observe_second_post_while_pending_is_503():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(lambda message: None)
        observe_post(resource, endpoint, "obs=1")
        again = observe_post(resource, endpoint, "obs=1")
        assert (again.code, again.payload) == (Code.SERVICE_UNAVAILABLE, b"")
        cancel = observe_post(resource, endpoint, "obs=0")
        assert cancel.code == Code.SERVICE_UNAVAILABLE
        # another peer, or another resource of the same peer, is independent
        other = observe_post(resource, endpoint, "obs=1", peer=("127.0.0.1", 2))
        assert isinstance(other, asyncio.Future)
        resource.stop()

    run(go())


def test_reverse_observe_renewal_reuses_the_token():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        await asyncio.wait_for(observe_post(resource, endpoint, "obs=5"), 1)
        reply = await asyncio.wait_for(observe_post(resource, endpoint, "obs=5"), 1)
        assert reply.payload == b"A001"
        assert [message.token for message, _, _ in endpoint.sent] == [b"\xa0\x01"] * 2
        assert handle(resource, endpoint).payload == b"1 active observes, 0 notifies."
        resource.stop()

    run(go())


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (Message(type=Type.ACK, code=Code.NOT_FOUND), Code.NOT_FOUND),
        (Message(type=Type.ACK, code=Code.CONTENT), Code.NOT_ACCEPTABLE),  # no Observe
        (TimeoutError("no response"), Code.INTERNAL_SERVER_ERROR),
        (ConnectionResetError("RST"), Code.INTERNAL_SERVER_ERROR),
        (OverflowError("too many"), Code.INTERNAL_SERVER_ERROR),
    ],
)
def test_reverse_observe_failures(answer, code):
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(lambda message: answer)
        reply = await asyncio.wait_for(observe_post(resource, endpoint, "obs=1"), 1)
        assert (reply.code, reply.payload) == (code, b"")
        assert len(resource) == 0
        # the peer may try again at once
        assert isinstance(observe_post(resource, endpoint, "obs=1"), asyncio.Future)
        resource.stop()

    run(go())


def test_reverse_observe_cancel():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        nothing = observe_post(resource, endpoint, "obs=0")
        assert (nothing.code, len(resource)) == (Code.CHANGED, 0)
        await asyncio.wait_for(observe_post(resource, endpoint, "obs=2"), 1)
        cancel = observe_post(resource, endpoint, "obs=0")
        assert (cancel.code, cancel.payload) == (Code.CHANGED, b"")
        assert endpoint.cancelled == [b"\xa0\x01"] and len(resource) == 0
        await asyncio.sleep(0.01)
        assert len(endpoint.sent) == 1  # and no re-registration later

    run(go())


def test_reverse_observe_error_notification_ends_it():
    async def go():
        resource, endpoint = ReverseObserve(), FakeEndpoint(feed)
        await asyncio.wait_for(observe_post(resource, endpoint, "obs=2"), 1)
        endpoint.notify(b"\xa0\x01", code=Code.NOT_FOUND, observe=None)
        assert len(resource) == 0 and endpoint.cancelled == [b"\xa0\x01"]

    run(go())


def test_reverse_observe_bound():
    async def go():
        resource, endpoint = ReverseObserve(max_observations=1), FakeEndpoint(feed)
        await asyncio.wait_for(observe_post(resource, endpoint, "obs=2"), 1)
        refused = observe_post(resource, endpoint, "obs=2", peer=("127.0.0.1", 2))
        assert (refused.code, resource.refused) == (Code.SERVICE_UNAVAILABLE, 1)
        resource.stop()
        assert len(resource) == 0

    run(go())


@pytest.mark.parametrize(
    ("queries", "text"),
    [
        (("obs=x", "res=r"), "URI-query-option 'obs=x' is no number!"),
        (("obs=-1", "res=r"), "URI-query-option 'obs=-1' is less than 0!"),
        (("obs=10000001", "res=r"), "URI-query-option 'obs=10000001' is more than 10000000!"),
        (("obs=1", "timeout=-1"), "URI-query-option 'timeout=-1' is less than 0!"),
        # timeout is read before obs
        (("obs=x", "timeout=y"), "URI-query-option 'timeout=y' is no number!"),
    ],
)
def test_reverse_observe_bad_queries(queries, text):
    reply = handle(ReverseObserve(), FakeEndpoint(feed), *queries)
    assert (reply.code, reply.payload.decode(), reply.content_format) == (
        Code.BAD_OPTION,
        text,
        None,
    )


# -- reverse requests through the real endpoint, against a device socket -------------------------


@pytest.fixture
def reverse_server(make_server):
    root = tree(ReverseRequest(), ReverseObserve())
    return make_server(root, transmission=FAST)


def answer_feed(device, counter: int, observe: int | None = None) -> Message:
    """Be Californium's Feed resource for one GET /feed-CON?rlen=20."""
    get = device.receive()
    assert (get.type, get.code, get.uri_path, get.uri_query) == (
        Type.CON,
        Code.GET,
        "feed-CON",
        ["rlen=20"],
    )
    payload = f"hello 0 feed-{counter}".encode().ljust(20, b"*")[:20]
    reply = Message(Type.ACK, Code.CONTENT, get.mid, get.token, payload=payload)
    reply.add_option(Option.CONTENT_FORMAT, 0)
    if observe is not None:
        reply.add_option(Option.OBSERVE, observe)
    device.send(reply)
    return get


def test_reverse_request_over_the_wire(reverse_server, make_client):
    device = make_client(reverse_server.address)
    post = request(Code.POST, "reverse-request", "req=2", "res=feed-CON", "rlen=20", mid=7)
    reply = device.exchange(post)
    assert (reply.type, reply.code, reply.mid) == (Type.ACK, Code.CHANGED, 7)
    answer_feed(device, 1)
    answer_feed(device, 2)
    time.sleep(0.1)
    stats = device.exchange(request(Code.POST, "reverse-request", mid=8))
    assert stats.payload == b"2 reverse-requests, 2 sent, 0 pending."


def test_reverse_observe_over_the_wire(reverse_server, make_client):
    device = make_client(reverse_server.address)
    post = request(Code.POST, "reverse-observe", "obs=1", "res=feed-CON", "rlen=20", mid=9)
    device.send(post)
    ack = device.receive()
    assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 9)
    get = answer_feed(device, 1, observe=1)
    assert get.observe == 0
    separate = device.receive()
    assert (separate.type, separate.code, separate.token) == (Type.CON, Code.CHANGED, b"\x01")
    assert separate.payload == get.token.hex().upper().encode()
    device.send(Message(Type.ACK, 0, separate.mid))
    # one notification (obs=1): the server cancels and registers anew, with a new token
    note = Message(Type.NON, Code.CONTENT, 0x4242, get.token, payload=b"hello 0 feed-2")
    device.send(note.add_option(Option.OBSERVE, 2))
    again = answer_feed(device, 3, observe=1)
    assert again.observe == 0 and again.token != get.token
    stats = device.exchange(request(Code.POST, "reverse-observe", mid=10))
    assert stats.payload == b"1 active observes, 1 notifies."


# -- /diagnose ----------------------------------------------------------------------------------


class DiagnoseServer:
    """A server with /diagnose whose settings list the given servers' endpoints."""

    def __init__(
        self, make_server, *resources: Resource, plugtest: bool = False, **options
    ) -> None:
        self.settings = ResourceSettings(start_time_ms=START, endpoints=self.endpoints)
        self.diagnose = Diagnose(self.settings, health_interval=0)
        self.server = make_server(tree(self.diagnose, *resources), **options)
        self.others = [make_server(Resource(""))] if plugtest else []
        self.server.call(self.diagnose.start, self.server.loop)

    def endpoints(self):
        return [self.server.endpoint] + [other.endpoint for other in self.others]

    def counters(self):
        return self.server.call(self.server.endpoint.counters)


def coap_lines(counters: dict[str, int], values: dict[str, tuple[int, int]]) -> list[str]:
    """The CoAP group's lines: every key our endpoint counts, in Californium's order."""
    expected_order = [
        "send-requests",
        "send-responses",
        "send-acks",
        "send-rejects",
        "send-request retransmissions",
        "send-response retransmissions",
        "send-errors",
        "send-no-responses",
        "recv-requests",
        "recv-responses",
        "recv-acks",
        "recv-rejects",
        "recv-duplicate requests",
        "recv-duplicate responses",
        "recv-offloaded",
        "recv-ignored",
        "recv-malformed",
    ]
    assert list(COAP_KEYS) == expected_order
    return [
        f"   {key},{values.get(key, (0, 0))[0]},{values.get(key, (0, 0))[1]}"
        for key in expected_order
        if key in counters
    ]


def limit_lines(counters: dict[str, int], values: dict[str, int] | None = None) -> list[str]:
    """The endpoint's limits group: every bound it counts, in LIMIT_KEYS' order."""
    values = values or {}
    return [f"   {key},{values.get(key, 0)},0" for key in LIMIT_KEYS if key in counters]


OBSERVE_LINES = [
    "   observes,0,0",
    "   observing-endpoints,0,0",
    "   observe-request,0,0",
    "   cancel-request,0,0",
    "   rejected-notifies,0,0",
]


def test_diagnose_text(make_server, make_client):
    diagnose = DiagnoseServer(make_server)
    port = diagnose.server.address[1]
    reply = make_client(diagnose.server.address).exchange(request(Code.GET, "diagnose"))
    assert (reply.code, reply.content_format) == (Code.CONTENT, ContentFormat.TEXT_PLAIN)
    # this GET is the endpoint's first request; its response is not sent yet
    expected = [
        "systemstart:1700000000123",
        "since: 0s",
        "EXTENDED-TEST ",
        *OBSERVE_LINES,
        f"coap://127.0.0.1:{port} ",
        *coap_lines(diagnose.counters(), {"recv-requests": (1, 0)}),
        f"coap://127.0.0.1:{port} limits ",
        *limit_lines(diagnose.counters()),
    ]
    assert reply.payload.decode() == "\n".join(expected) + "\n"
    assert "max. connnections" not in reply.payload.decode()  # only for coaps


def test_diagnose_transfer_moves_current_to_all(make_server, make_client):
    diagnose = DiagnoseServer(make_server)
    client = make_client(diagnose.server.address)
    client.exchange(request(Code.GET, "diagnose", mid=1))
    diagnose.server.call(diagnose.diagnose.health.transfer)
    reply = client.exchange(request(Code.GET, "diagnose", mid=2))
    text = reply.payload.decode()
    assert "\n   recv-requests,1,1\n" in text
    assert "\n   send-responses,0,1\n" in text


def test_diagnose_json_and_cbor(make_server, make_client):
    diagnose = DiagnoseServer(make_server, max_message_size=4096)  # the JSON in one message
    port = diagnose.server.address[1]
    client = make_client(diagnose.server.address)
    json_reply = client.exchange(request(Code.GET, "diagnose", accept=ContentFormat.JSON, mid=1))
    assert json_reply.content_format == ContentFormat.JSON
    observe = ",".join(f'"{key}":{{"cur":0,"all":0}}' for key in OBSERVE_KEYS)
    counters = diagnose.counters()
    values = {"recv-requests": (1, 0)}
    coap = ",".join(
        f'"{key}":{{"cur":{values.get(key, (0, 0))[0]},"all":0}}'
        for key in COAP_KEYS
        if key in counters
    )
    limits = ",".join(f'"{key}":{{"cur":0,"all":0}}' for key in LIMIT_KEYS if key in counters)
    assert json_reply.payload.decode() == (
        '{"systemstart":1700000000123,"since":"0s",'
        f'"EXTENDED-TEST ":{{{observe}}},"coap://127.0.0.1:{port} ":{{{coap}}},'
        f'"coap://127.0.0.1:{port} limits ":{{{limits}}}}}'
    )

    cbor_reply = client.exchange(request(Code.GET, "diagnose", accept=ContentFormat.CBOR, mid=2))
    assert cbor_reply.content_format == ContentFormat.CBOR
    decoded = cbor2.loads(cbor_reply.payload)
    assert list(decoded) == [
        "systemstart",
        "since",
        "EXTENDED-TEST ",
        f"coap://127.0.0.1:{port} ",
        f"coap://127.0.0.1:{port} limits ",
    ]
    assert list(decoded["EXTENDED-TEST "]) == list(OBSERVE_KEYS)  # insertion order
    assert decoded[f"coap://127.0.0.1:{port} "]["recv-requests"] == {"cur": 2, "all": 0}
    assert cbor_reply.payload == cbor2.dumps(decoded)
    assert cbor_reply.payload[:1] == b"\xa5" and b"\x63cur\x02\x63all\x00" in cbor_reply.payload


def test_diagnose_shows_what_the_bounds_refused(make_server, make_client):
    """The limits groups: an observe refused at MAX_SERVER_OBSERVES (the endpoint's) and a
    /reverse-request series refused at its bound (the server's resources')."""

    class Observable(Resource):
        def handle_get(self, exchange: Exchange) -> Message:
            return response(Code.CONTENT, "x", ContentFormat.TEXT_PLAIN)

    diagnose = DiagnoseServer(
        make_server,
        ReverseRequest(max_series=0),
        Observable("obs", observable=True),
        max_observes=0,
    )
    port = diagnose.server.address[1]
    client = make_client(diagnose.server.address)
    observe = request(Code.GET, "obs", mid=1).add_option(Option.OBSERVE, 0)
    assert client.exchange(observe).observe is None  # refused at the bound: no relation
    series = request(Code.POST, "reverse-request", "req=1", "res=feed", mid=2)
    assert client.exchange(series).code == Code.SERVICE_UNAVAILABLE
    text = client.exchange(request(Code.GET, "diagnose", mid=3)).payload.decode()
    limits = text.split(f"coap://127.0.0.1:{port} limits \n")[1].split("EXTENDED-TEST limits")[0]
    assert "   refused-observes,1,0\n" in limits
    assert text.endswith("EXTENDED-TEST limits \n   reverse-request-refused,1,0\n")


def test_diagnose_unsupported_accept(make_server, make_client):
    diagnose = DiagnoseServer(make_server)
    client = make_client(diagnose.server.address)
    reply = client.exchange(request(Code.GET, "diagnose", accept=ContentFormat.XML))
    assert (reply.code, reply.payload, reply.content_format) == (Code.NOT_ACCEPTABLE, b"", None)


def test_diagnose_children_per_endpoint(make_server, make_client):
    diagnose = DiagnoseServer(make_server, plugtest=True)
    own, other = diagnose.endpoints()
    names = list(diagnose.diagnose.children)
    assert names == [f"UDP:127.0.0.1:{own.local_address[1]}", endpoint_key(other)]
    assert diagnose.diagnose.children[names[0]].attributes["title"] == [
        f"Resource for diagnose statistic of {names[0]}"
    ]
    client = make_client(diagnose.server.address)
    reply = client.exchange(request(Code.GET, f"diagnose/{names[1]}"))
    text = reply.payload.decode()
    # both servers' observe groups, then the CoAP group of the child's endpoint
    assert text.index("EXTENDED-TEST \n") < text.index("PLUG-TEST \n")
    assert f"\ncoap://127.0.0.1:{other.local_address[1]} \n" in text
    assert f"\ncoap://127.0.0.1:{own.local_address[1]} \n" not in text


def test_diagnose_coaps_adds_node_id_and_max_connections(make_server):
    diagnose = DiagnoseServer(make_server)
    text = diagnose.diagnose.to_text(1000000, 3, [("", [("associations", 5)])])
    assert text == (
        "systemstart:1700000000123\n"
        "node-id:3\n"
        "max. connnections:1000000\n"
        "since: 0s\n"
        "1\n"  # an untagged group is numbered
        "   associations,5,0\n"
    )
    json_text = diagnose.diagnose.to_json(1000000, 3, [])
    assert json_text == '{"systemstart":1700000000123,"node-id":3,"max-connections":1000000}'


class _Endpoint:
    def __init__(self, scheme: str, local_address: tuple) -> None:
        self.scheme = scheme
        self.local_address = local_address


@pytest.mark.parametrize(
    ("scheme", "address", "key", "tag"),
    [
        ("coap", ("127.0.0.1", 5783), "UDP:127.0.0.1:5783", "coap://127.0.0.1:5783 "),
        (
            "coap",
            ("::1", 5783, 0, 0),
            "UDP:[0:0:0:0:0:0:0:1]:5783",
            "coap://[0:0:0:0:0:0:0:1]:5783 ",
        ),
        (
            "coaps",
            ("fe80::1", 5784, 0, 2),
            "DTLS:[fe80:0:0:0:0:0:0:1%2]:5784",
            "coaps://[fe80:0:0:0:0:0:0:1%252]:5784 ",
        ),
    ],
)
def test_diagnose_names(scheme, address, key, tag):
    endpoint = _Endpoint(scheme, address)
    assert endpoint_key(endpoint) == key
    assert endpoint_tag(endpoint) == tag


# -- assembly -----------------------------------------------------------------------------------


def test_add_extended_resources():
    root = Resource("")
    add_extended_resources(root, ResourceSettings(), diagnose=False)
    assert "diagnose" not in root.children
    for name in ("requests", "reverse-request", "reverse-observe", "myip", "mycontext", "echo"):
        assert root.children[name].visible
    assert not root.children["telemetry"].visible and not root.children["event"].visible
    add_extended_resources(root := Resource(""), ResourceSettings(), diagnose=True)
    assert root.children["diagnose"].visible
