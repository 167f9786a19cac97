"""The plugtest resource set (inventory §1.5) and the shared /myip, /mycontext, /echo, hono
resources (§1.6, §2.5): texts, codes, options, observe, life cycles, discovery.

Small payloads go over loopback sockets; bodies above one datagram and state set-up are handled
in-process (``call``), so that the endpoint's block-wise layer does not change what is asserted.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import socket
import subprocess
import sys
import time

import cbor2
import pytest

from extplugtest import __version__
from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.linkformat import well_known
from extplugtest.coap.resource import Exchange, Resource
from extplugtest.resources import echo as echo_module
from extplugtest.resources.context import MyContext
from extplugtest.resources.echo import Echo, KeptPost
from extplugtest.resources.hono import Hono
from extplugtest.resources.myip import MyIp, java_host, java_socket_address
from extplugtest.resources.plugtest import add_plugtest_resources
from extplugtest.resources.plugtest.conditional import java_array_hash
from extplugtest.resources.plugtest.core import truncate
from extplugtest.resources.plugtest.large import LARGE_TEXT, MAX_CREATED, TOO_MANY_CREATED
from extplugtest.resources.plugtest.observe import ObservePumping
from extplugtest.resources.root import RootResource
from extplugtest.resources.settings import ResourceSettings

PEER = ("127.0.0.1", 40000)
TIME = re.compile(r"\d\d:\d\d:\d\d")
TEXT = ContentFormat.TEXT_PLAIN
TIMER_SLACK = 0.01  # loop timers round to milliseconds and may fire that much early


# -- helpers -------------------------------------------------------------------------------
class FakeEndpoint:
    scheme = "coap"
    security = None  # plain UDP: no DTLS context fields


def plugtest_tree(**settings) -> Resource:
    root = RootResource()
    add_plugtest_resources(root, ResourceSettings(**settings), exit_action=lambda: None)
    root.add(well_known(root))
    return root


def request(
    code: int,
    path: str,
    *queries: str,
    type: int = Type.CON,
    mid: int = 0x1234,
    token: bytes = b"\xca\xfe",
    payload: bytes | str = b"",
    options: tuple[tuple[int, bytes | int | str], ...] = (),
) -> Message:
    message = Message(type=type, code=code, mid=mid, token=token)
    for segment in path.strip("/").split("/"):
        if segment:
            message.add_option(Option.URI_PATH, segment)
    for query in queries:
        message.add_option(Option.URI_QUERY, query)
    for number, value in options:
        message.add_option(number, value)
    message.payload = payload.encode() if isinstance(payload, str) else payload
    return message


def call(root: Resource, message: Message, peer: tuple = PEER) -> Message:
    """Handle *message* in-process, as the endpoint's dispatch would."""
    resource = root.find(message.uri_path_segments)
    assert resource is not None
    result = resource.handle(Exchange(message, peer, FakeEndpoint(), resource))
    if inspect.isawaitable(result):

        async def wait() -> Message:
            return await result

        return asyncio.run(wait())
    return result


def option_texts(message: Message, number: int) -> list[str]:
    return [value.decode() for value in message.option_values(number)]


def receive(client, count: int, timeout: float = 2.0) -> list[Message]:
    messages = []
    for _ in range(count):
        message = client.receive(timeout)
        assert message is not None, f"only {len(messages)} of {count} messages arrived"
        messages.append(message)
    return messages


def ack(client, message: Message) -> None:
    client.send(Message(type=Type.ACK, mid=message.mid))


def observe_request(path: str, token: bytes, mid: int, type: int = Type.CON) -> Message:
    return request(Code.GET, path, type=type, mid=mid, token=token, options=((Option.OBSERVE, 0),))


@pytest.fixture
def plugtest(make_server, make_client):
    root = plugtest_tree()
    server = make_server(root)
    return root, server, make_client(server.address)


# -- discovery -----------------------------------------------------------------------------
#: plugtest-wellknown-core.txt: the reference after a checker run (/create1 created with one
#: byte, four /large-create children, /large-update, /validate and /obs PUT with ct=0).
REFERENCE_CORE = (
    '</create1>;ct=0;sz=1;title="Resource which does not exist yet (to perform atomic PUT)",'
    "</echo>;ct=\"0 42 40\";title=\"Resource, which echo's a POST. POSTs with URI-query 'keep' "
    'can later be read by GET",'
    '</large>;ct=0;rt="block";sz=1280;title="Large resource",'
    '</large-create>;ct=40;rt="block";title="Large resource that can be created using POST '
    'method",'
    "</large-create/1>;ct=0;sz=1280,"
    "</large-create/2>;ct=0;sz=1280,"
    "</large-create/3>;ct=0;sz=1280,"
    "</large-create/4>;ct=0;sz=196,"
    '</large-post>;rt="block";title="Handle POST with two-way blockwise transfer",'
    '</large-separate>;ct=0;rt="block";sz=1280;title="Large resource",'
    '</large-update>;ct=0;rt="block";sz=196;title="Large resource that can be updated using '
    'PUT method",'
    '</link1>;if="If1";rt="Type1 Type2";title="Link test resource",'
    '</link2>;if="If2";rt="Type2 Type3";title="Link test resource",'
    '</link3>;if="foo";rt="Type1 Type3";title="Link test resource",'
    '</location-query>;title="Perform POST transaction with responses containing several '
    'Location-Query options (CON mode)",'
    '</multi-format>;ct="0 41 50 60";title="Resource that exists in different content formats '
    '(text/plain utf8 and application/xml)",'
    '</obs>;ct=0;obs;rt="observe";title="Observable resource which changes every 5 seconds",'
    '</obs-large>;ct=0;obs;rt="observe";title="Observable resource which changes every 5 '
    'seconds",'
    '</obs-non>;obs;rt="observe";title="Observable resource which changes every 5 seconds",'
    '</obs-pumping>;ct=0;obs;rt="observe";title="Observable resource which changes every 5 '
    'seconds",'
    '</obs-pumping-non>;ct=0;obs;rt="observe";title="Observable resource which changes every 5 '
    'seconds",'
    "</obs-reset>,"
    '</path>;ct=40;title="Hierarchical link description entry",'
    '</path/sub1>;title="Hierarchical link description sub-resource",'
    '</path/sub2>;title="Hierarchical link description sub-resource",'
    '</path/sub3>;title="Hierarchical link description sub-resource",'
    '</query>;ct=0;title="Resource accepting query parameters",'
    '</seg1>;ct=0;title="Long path resource",'
    '</seg1/seg2>;title="Long path resource",'
    '</seg1/seg2/seg3>;title="Long path resource",'
    '</separate>;ct=0;title="Resource which cannot be served immediately and which cannot be '
    'acknowledged in a piggy-backed way",'
    "</shutdown>,"
    '</test>;ct=0;title="Default test resource",'
    '</validate>;ct=0;sz=35;title="Resource which varies"'
)


def core(root: Resource, *queries: str) -> str:
    reply = call(root, request(Code.GET, ".well-known/core", *queries))
    assert reply.code == Code.CONTENT and reply.content_format == ContentFormat.LINK_FORMAT
    return reply.payload.decode()


def test_wellknown_core_matches_the_reference_after_a_checker_run():
    root = plugtest_tree()
    cf0 = ((Option.CONTENT_FORMAT, 0),)
    call(
        root,
        request(Code.PUT, "create1", payload=b"a", options=((Option.IF_NONE_MATCH, b""), *cf0)),
    )
    for body in (LARGE_TEXT, LARGE_TEXT, LARGE_TEXT, b"x" * 196):
        assert (
            call(root, request(Code.POST, "large-create", payload=body, options=cf0)).code
            == Code.CREATED
        )
    call(root, request(Code.PUT, "large-update", payload=b"y" * 196, options=cf0))
    call(root, request(Code.PUT, "validate", payload=b"z" * 35, options=cf0))
    call(root, request(Code.PUT, "obs", payload=b"New value", options=cf0))
    assert core(root) == REFERENCE_CORE


def test_wellknown_core_of_a_fresh_server():
    """Before any request: /create1 hidden, no /large-create children, no stored formats."""
    fresh = core(plugtest_tree())
    expected = REFERENCE_CORE
    expected = re.sub(r"</create1>[^<]*", "", expected)
    expected = re.sub(r"</large-create/\d>[^<]*", "", expected)
    expected = expected.replace("</large-update>;ct=0;", "</large-update>;")
    expected = expected.replace(
        'rt="block";sz=196;title="Large resource that can be updated',
        'rt="block";sz=1280;title="Large resource that can be updated',
    )
    expected = expected.replace("</validate>;ct=0;sz=35;", "</validate>;")
    expected = expected.replace("</obs>;ct=0;obs", "</obs>;obs")
    assert fresh == expected


@pytest.mark.parametrize(
    ("query", "paths"),
    [
        ("rt=Type1", ["/link1", "/link3"]),
        ("rt=Type2", ["/link1", "/link2"]),
        ("if=If*", ["/link1", "/link2"]),
        ("href=/link*", ["/link1", "/link2", "/link3"]),
        ("ct=40", ["/echo", "/large-create", "/path"]),
        ("sz=*", ["/large", "/large-separate", "/large-update"]),
    ],
)
def test_wellknown_core_filters(query, paths):
    assert re.findall(r"<([^>]*)>", core(plugtest_tree(), query)) == paths


def test_hidden_resources_exist_but_are_not_listed():
    root = plugtest_tree()
    listing = core(root)
    for name in ("myip", "mycontext", "telemetry", "event", "create1"):
        assert f"</{name}>" not in listing
        assert root.find([name]) is not None


# -- /test, /seg1, /query, /location-query -------------------------------------------------
def test_test_get_con(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "test", mid=60103, token=bytes.fromhex("ea787ad8")))
    assert (reply.type, reply.code, reply.mid) == (Type.ACK, Code.CONTENT, 60103)
    assert reply.payload == b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 60103\nToken: EA787AD8"
    assert reply.content_format == TEXT and reply.max_age == 30


def test_test_get_non_and_empty_token(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "test", type=Type.NON, mid=60107, token=b"\xcd"))
    assert reply.type == Type.NON and reply.payload.endswith(
        b"Type: 1 (NON)\nCode: 1 (GET)\nMID: 60107\nToken: CD"[-30:]
    )
    reply = client.exchange(request(Code.GET, "test", mid=60113, token=b""))
    assert reply.token == b""
    assert reply.payload == b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 60113\nToken: "


def test_test_post_put_delete(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.POST, "test", payload="TD_COAP_CORE_04"))
    assert reply.code == Code.CREATED
    assert option_texts(reply, Option.LOCATION_PATH) == ["location1", "location2", "location3"]
    assert client.exchange(request(Code.PUT, "test", mid=2, payload="x")).code == Code.CHANGED
    put = request(Code.PUT, "test", mid=3, options=((Option.IF_NONE_MATCH, b""),))
    assert client.exchange(put).code == Code.PRECONDITION_FAILED
    assert client.exchange(request(Code.DELETE, "test", mid=4)).code == Code.DELETED
    assert client.exchange(request(Code.GET, "test", mid=5)).code == Code.CONTENT  # still there


def test_test_accept_other_than_text_is_406(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "test", options=((Option.ACCEPT, 50),)))
    assert reply.code == Code.NOT_ACCEPTABLE and reply.payload == b"" and not reply.options


def test_truncation_marks_the_cut():
    assert truncate("x" * 64, 62) == "x" * 64
    assert truncate("x" * 65, 62) == "x" * 62 + "»"
    assert truncate("x" * 65, 63) == "x" * 63 + "»"


def test_long_path(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "seg1/seg2/seg3", mid=60114))
    assert reply.payload == b"Long path resource\nType: 0 (CON)\nCode: 1 (GET)\nMID: 60114"
    assert reply.content_format == TEXT
    assert (
        client.exchange(request(Code.POST, "seg1/seg2/seg3", mid=2)).code == Code.METHOD_NOT_ALLOWED
    )
    # only seg1 declares text/plain and checks Accept
    json = ((Option.ACCEPT, 50),)
    assert (
        client.exchange(request(Code.GET, "seg1", mid=3, options=json)).code == Code.NOT_ACCEPTABLE
    )
    assert client.exchange(request(Code.GET, "seg1/seg2", mid=4, options=json)).code == Code.CONTENT


def test_query(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "query", "first=1", "second=2", "third=3", mid=60115))
    assert reply.payload == b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 60115\n?first=1&second=2&third=3"
    reply = client.exchange(
        request(Code.GET, "query", "first=1", "second=2", "third=33", mid=60116)
    )
    text = "Type: 0 (CON)\nCode: 1 (GET)\nMID: 60116\n?first=1&second=2&third=33"
    assert reply.payload.decode() == text[:63] + "»"
    assert len(reply.payload) == 65


def test_location_query(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.POST, "location-query", payload="q"))
    assert reply.code == Code.CREATED
    assert option_texts(reply, Option.LOCATION_QUERY) == ["first=1", "second=2"]


# -- /separate -----------------------------------------------------------------------------
def test_separate_con_gets_empty_ack_then_con_response(plugtest):
    root, _, client = plugtest
    root.children["separate"].delay = 0.2
    started = time.monotonic()
    empty = client.exchange(request(Code.GET, "separate", mid=60111, token=b"\xbe\xef"))
    assert (empty.type, empty.code, empty.mid, empty.token) == (Type.ACK, Code.EMPTY, 60111, b"")
    assert time.monotonic() - started < 0.15
    reply = client.receive()
    assert time.monotonic() - started >= 0.2 - TIMER_SLACK
    assert (reply.type, reply.code, reply.token) == (Type.CON, Code.CONTENT, b"\xbe\xef")
    assert reply.payload == b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 60111\n"
    assert reply.content_format == TEXT
    ack(client, reply)


def test_separate_non_gets_only_a_non_response(plugtest):
    root, _, client = plugtest
    root.children["separate"].delay = 0.1
    reply = client.exchange(request(Code.GET, "separate", type=Type.NON, mid=60112))
    assert (reply.type, reply.code) == (Type.NON, Code.CONTENT)
    assert reply.payload == b"Type: 1 (NON)\nCode: 1 (GET)\nMID: 60112\n"


def test_separate_does_not_block_other_requests(plugtest):
    root, _, client = plugtest
    root.children["separate"].delay = 0.5
    client.exchange(request(Code.GET, "separate", mid=1))  # empty ACK
    reply = client.exchange(request(Code.GET, "test", mid=2))
    assert reply.code == Code.CONTENT and reply.mid == 2  # before the separate response
    ack(client, client.receive())


# -- /multi-format -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "payload"),
    [
        (None, b'Status type: "CON"\nCode: "GET"\nMID: 60117\nAccept: -1'),
        (0, b'Status type: "CON"\nCode: "GET"\nMID: 60117\nAccept: 0'),
        (41, b'<msg type="CON" code="GET" mid="60117" accept="41" />'),
        (50, b'{ "type":"CON", "code":"GET", "mid":60117, "accept":50 }'),
        # the reference server's wire order (plugtest-transcript-udp.txt): type, code, mid, accept
        (60, b"\xa4dtypecCONdcodecGETcmid\x19\xea\xd5faccept\x18<"),
    ],
)
def test_multi_format(plugtest, accept, payload):
    _, _, client = plugtest
    options = () if accept is None else ((Option.ACCEPT, accept),)
    reply = client.exchange(request(Code.GET, "multi-format", mid=60117, options=options))
    assert reply.code == Code.CONTENT
    assert reply.content_format == (0 if accept is None else accept)
    assert reply.payload == payload
    if accept == 60:
        assert cbor2.loads(reply.payload) == {
            "type": "CON",
            "code": "GET",
            "mid": 60117,
            "accept": 60,
        }


def test_multi_format_other_accept_is_406_with_text(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "multi-format", options=((Option.ACCEPT, 42),)))
    assert reply.code == Code.NOT_ACCEPTABLE and reply.content_format is None
    assert (
        reply.payload == b"text/plain, application/xml, application/json, or application/cbor only"
    )


# -- /validate, /create1 -------------------------------------------------------------------
def test_java_array_hash():
    assert java_array_hash(b"") == (1).to_bytes(4, "big")  # Arrays.hashCode(new byte[0])
    assert java_array_hash(b"\x01") == (32).to_bytes(4, "big")
    assert java_array_hash(b"\xff") == (30).to_bytes(4, "big")  # signed byte -1
    # "It should change": computed with Java's int arithmetic
    h = 1
    for byte in b"It should change":
        h = (31 * h + byte) % 2**32
    assert java_array_hash(b"It should change") == h.to_bytes(4, "big")
    assert java_array_hash(b"\x80" * 10) == _java_int_hash([-128] * 10)


def _java_int_hash(values: list[int]) -> bytes:
    h = 1
    for value in values:
        h = ((31 * h + value + 2**31) % 2**32) - 2**31  # Java int overflow
    return (h % 2**32).to_bytes(4, "big")


def test_validate_etag_flow(plugtest):
    _, _, client = plugtest
    reply = client.exchange(
        request(Code.GET, "validate", mid=60122, token=bytes.fromhex("8223c51f"))
    )
    assert reply.code == Code.CONTENT and reply.option_values(Option.ETAG) == [b"\x00"]
    assert reply.payload == b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 60122\nToken: 8223C51F"
    assert reply.content_format == TEXT
    reply = client.exchange(request(Code.GET, "validate", mid=2, options=((Option.ETAG, b"\x00"),)))
    assert reply.code == Code.VALID and reply.option_values(Option.ETAG) == [b"\x00"]
    assert reply.payload == b""
    # without a token the token line is left out
    reply = client.exchange(request(Code.GET, "validate", mid=3, token=b""))
    assert reply.payload == b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 3"

    bogus = ((Option.IF_MATCH, b"\xde\xad"), (Option.CONTENT_FORMAT, 0))
    assert (
        client.exchange(request(Code.PUT, "validate", mid=4, payload="p", options=bogus)).code
        == Code.PRECONDITION_FAILED
    )

    put = request(
        Code.PUT,
        "validate",
        mid=5,
        payload="It should change",
        options=((Option.IF_MATCH, b"\x00"), (Option.CONTENT_FORMAT, 0)),
    )
    reply = client.exchange(put)
    etag = java_array_hash(b"It should change")
    assert reply.code == Code.CHANGED and reply.option_values(Option.ETAG) == [etag]
    reply = client.exchange(request(Code.GET, "validate", mid=6, options=((Option.ETAG, b"\x00"),)))
    assert reply.code == Code.CONTENT and reply.option_values(Option.ETAG) == [etag]
    assert reply.payload == b"It should change" and reply.content_format == 0

    # a PUT without If-Match matches; without Content-Format it is a 4.00
    reply = client.exchange(request(Code.PUT, "validate", mid=7, payload="x"))
    assert reply.code == Code.BAD_REQUEST and reply.payload == b"Content-Format not set"
    assert reply.content_format == TEXT
    # a failed If-Match resets the resource (it "varies")
    stale = ((Option.IF_MATCH, b"\x00"), (Option.CONTENT_FORMAT, 0))
    assert (
        client.exchange(request(Code.PUT, "validate", mid=8, payload="y", options=stale)).code
        == Code.PRECONDITION_FAILED
    )
    reply = client.exchange(request(Code.GET, "validate", mid=9))
    assert reply.option_values(Option.ETAG) == [b"\x00"] and reply.payload.startswith(b"Type: 0")


def test_validate_if_none_match_and_delete():
    root = plugtest_tree()
    create = request(
        Code.PUT,
        "validate",
        payload=b"new",
        options=((Option.IF_MATCH, b"\x01"), (Option.IF_NONE_MATCH, b"")),
    )
    assert call(root, create).code == Code.CREATED  # If-None-Match while empty
    reply = call(root, request(Code.GET, "validate"))
    assert reply.payload == b"new" and reply.content_format is None
    assert reply.option_values(Option.ETAG) == [java_array_hash(b"new")]
    assert call(root, create).code == Code.PRECONDITION_FAILED  # data exists now: reset
    assert call(root, request(Code.GET, "validate")).payload.startswith(b"Type:")
    call(root, request(Code.PUT, "validate", payload=b"v", options=((Option.CONTENT_FORMAT, 0),)))
    assert call(root, request(Code.DELETE, "validate")).code == Code.DELETED
    assert call(root, request(Code.GET, "validate")).option_values(Option.ETAG) == [b"\x00"]


def test_create1_life_cycle(plugtest):
    root, _, client = plugtest
    create1 = root.children["create1"]
    assert client.exchange(request(Code.GET, "create1", mid=1)).code == Code.NOT_FOUND

    def put(mid: int, payload: str) -> Message:
        options = ((Option.IF_NONE_MATCH, b""), (Option.CONTENT_FORMAT, 0))
        return request(Code.PUT, "create1", mid=mid, payload=payload, options=options)

    assert client.exchange(put(2, "a")).code == Code.CREATED
    assert (
        create1.visible and create1.attributes["ct"] == ["0"] and create1.attributes["sz"] == ["1"]
    )
    reply = client.exchange(request(Code.GET, "create1", mid=3))
    assert (reply.code, reply.payload, reply.content_format) == (Code.CONTENT, b"a", 0)
    json = ((Option.ACCEPT, 50),)
    assert (
        client.exchange(request(Code.GET, "create1", mid=4, options=json)).code
        == Code.NOT_ACCEPTABLE
    )
    # present + If-None-Match: 4.12, and the data is gone so that CC23 can run again
    assert client.exchange(put(5, "b")).code == Code.PRECONDITION_FAILED
    assert client.exchange(request(Code.GET, "create1", mid=6)).code == Code.NOT_FOUND
    assert client.exchange(put(7, "c")).code == Code.CREATED
    reply = client.exchange(request(Code.PUT, "create1", mid=8, payload="d"))
    assert reply.code == Code.BAD_REQUEST and reply.payload == b"Content-Format not set"
    assert client.exchange(request(Code.DELETE, "create1", mid=9)).code == Code.DELETED
    assert not create1.visible
    assert client.exchange(request(Code.GET, "create1", mid=10)).code == Code.NOT_FOUND


# -- block resources -----------------------------------------------------------------------
def test_large_text_layout():
    assert len(LARGE_TEXT) == 1280
    lines = LARGE_TEXT.decode().splitlines(keepends=True)
    assert len(lines) == 20 and all(len(line) == 64 for line in lines)
    assert lines[0] == "/" + "-" * 61 + "\\\n"
    assert lines[1] == "|                 RESOURCE BLOCK NO. 1 OF 5                   |\n"
    assert lines[2] == "|               [each line contains 64 bytes]                 |\n"
    assert lines[19] == "\\" + "-" * 61 + "/\n"
    assert lines[17] == "|                 RESOURCE BLOCK NO. 5 OF 5                   |\n"


def test_large_and_large_separate():
    root = plugtest_tree()
    for path in ("large", "large-separate"):
        reply = call(root, request(Code.GET, path))
        assert (reply.code, reply.payload, reply.content_format) == (Code.CONTENT, LARGE_TEXT, 0)
        reply = call(root, request(Code.GET, path, options=((Option.ACCEPT, 50),)))
        assert reply.code == Code.NOT_ACCEPTABLE


def test_large_separate_over_the_wire_is_a_separate_response(plugtest):
    _, _, client = plugtest
    empty = client.exchange(request(Code.GET, "large-separate", mid=77))
    assert (empty.type, empty.code) == (Type.ACK, Code.EMPTY)
    reply = client.receive()
    assert reply.type == Type.CON and reply.code == Code.CONTENT
    assert LARGE_TEXT.startswith(reply.payload[:64])
    ack(client, reply)


def test_large_update():
    root = plugtest_tree()
    assert call(root, request(Code.GET, "large-update")).payload == LARGE_TEXT
    reply = call(root, request(Code.PUT, "large-update", payload=b"x"))
    assert (reply.code, reply.payload) == (Code.BAD_REQUEST, b"Content-Format not set")
    body = b"<x>" + b"y" * 2000 + b"</x>"
    reply = call(
        root,
        request(Code.PUT, "large-update", payload=body, options=((Option.CONTENT_FORMAT, 41),)),
    )
    assert reply.code == Code.CHANGED
    reply = call(root, request(Code.GET, "large-update"))
    assert (reply.payload, reply.content_format) == (body, 41)
    reply = call(root, request(Code.GET, "large-update", options=((Option.ACCEPT, 0),)))
    assert (reply.code, reply.payload, reply.content_format) == (
        Code.NOT_ACCEPTABLE,
        b"application/xml only",
        0,
    )
    reply = call(root, request(Code.GET, "large-update", options=((Option.ACCEPT, 41),)))
    assert reply.code == Code.CONTENT
    assert root.children["large-update"].attributes["ct"] == ["41"]
    assert root.children["large-update"].attributes["sz"] == [str(len(body))]


def test_large_create_life_cycle():
    root = plugtest_tree()
    cf0 = ((Option.CONTENT_FORMAT, 0),)
    reply = call(root, request(Code.POST, "large-create", payload=b"x"))
    assert (reply.code, reply.payload) == (Code.BAD_REQUEST, b"Content-Format not set")
    reply = call(root, request(Code.POST, "large-create", payload=LARGE_TEXT, options=cf0))
    assert reply.code == Code.CREATED
    assert option_texts(reply, Option.LOCATION_PATH) == ["large-create", "1"]
    reply = call(
        root,
        request(Code.POST, "large-create", payload=b"two", options=((Option.CONTENT_FORMAT, 42),)),
    )
    assert option_texts(reply, Option.LOCATION_PATH) == ["large-create", "2"]
    reply = call(root, request(Code.GET, "large-create"))
    assert reply.content_format == ContentFormat.LINK_FORMAT
    assert reply.payload == b"</large-create/1>;ct=0;sz=1280,</large-create/2>;ct=42;sz=3"
    reply = call(root, request(Code.GET, "large-create/1"))
    assert (reply.code, reply.payload, reply.content_format) == (Code.CONTENT, LARGE_TEXT, 0)
    reply = call(root, request(Code.GET, "large-create/2", options=((Option.ACCEPT, 0),)))
    assert (reply.code, reply.payload) == (Code.NOT_ACCEPTABLE, b"application/octet-stream only")
    assert call(root, request(Code.DELETE, "large-create/1")).code == Code.DELETED
    assert root.find(["large-create", "1"]) is None
    # names are never reused
    reply = call(root, request(Code.POST, "large-create", payload=b"3", options=cf0))
    assert option_texts(reply, Option.LOCATION_PATH) == ["large-create", "3"]


def test_large_create_is_bounded():
    root = plugtest_tree()
    cf0 = ((Option.CONTENT_FORMAT, 0),)
    for _ in range(MAX_CREATED):
        assert (
            call(root, request(Code.POST, "large-create", payload=b"x", options=cf0)).code
            == Code.CREATED
        )
    reply = call(root, request(Code.POST, "large-create", payload=b"x", options=cf0))
    assert reply.code == Code.SERVICE_UNAVAILABLE and reply.payload.decode() == TOO_MANY_CREATED
    call(root, request(Code.DELETE, "large-create/7"))
    reply = call(root, request(Code.POST, "large-create", payload=b"x", options=cf0))
    assert option_texts(reply, Option.LOCATION_PATH) == ["large-create", str(MAX_CREATED + 1)]


def test_large_post():
    root = plugtest_tree()
    body = ("abc äöü " * 100).encode()
    reply = call(
        root, request(Code.POST, "large-post", payload=body, options=((Option.CONTENT_FORMAT, 0),))
    )
    assert (reply.code, reply.content_format) == (Code.CHANGED, 0)
    assert reply.payload == ("ABC ÄÖÜ " * 100).encode()
    reply = call(root, request(Code.POST, "large-post", payload=b"x"))
    assert (reply.code, reply.payload) == (Code.BAD_REQUEST, b"Content-Format not set")
    reply = call(
        root,
        request(
            Code.POST,
            "large-post",
            payload=b"x",
            options=((Option.CONTENT_FORMAT, 0), (Option.ACCEPT, 50)),
        ),
    )
    assert reply.code == Code.NOT_ACCEPTABLE and reply.payload == b""
    reply = call(root, request(Code.GET, "large-post"))
    assert (reply.code, reply.payload, reply.content_format) == (Code.CONTENT, b"", 40)
    assert (
        call(root, request(Code.GET, "large-post", options=((Option.ACCEPT, 0),))).code
        == Code.NOT_ACCEPTABLE
    )


# -- /path, /link* ------------------------------------------------------------------------
def test_path_hierarchy(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "path", mid=1))
    assert reply.content_format == ContentFormat.LINK_FORMAT
    assert reply.payload == (
        b'</path/sub1>;title="Hierarchical link description sub-resource",'
        b'</path/sub2>;title="Hierarchical link description sub-resource",'
        b'</path/sub3>;title="Hierarchical link description sub-resource"'
    )
    reply = client.exchange(request(Code.GET, "path/sub1", mid=2))
    assert (reply.payload, reply.content_format) == (b"/path/sub1", 0)


def test_link_resources_have_no_methods(plugtest):
    _, _, client = plugtest
    for mid, path in enumerate(("link1", "link2", "link3")):
        assert client.exchange(request(Code.GET, path, mid=mid)).code == Code.METHOD_NOT_ALLOWED


# -- observe -------------------------------------------------------------------------------
def test_obs_registration_notification_and_cancel(plugtest):
    root, server, client = plugtest
    obs = root.children["obs"]
    reply = client.exchange(observe_request("obs", b"t1", 1))
    assert (reply.type, reply.code) == (Type.ACK, Code.CONTENT)
    assert reply.observe is not None and reply.max_age == 5 and reply.content_format == 0
    assert TIME.fullmatch(reply.payload.decode())
    server.call(obs.tick)
    note = client.receive()
    assert (note.type, note.code, note.token) == (Type.CON, Code.CONTENT, b"t1")
    assert note.observe > reply.observe and note.max_age == 5
    assert TIME.fullmatch(note.payload.decode())
    ack(client, note)
    # OBS_12: Observe=1 with the same token cancels; the answer has no Observe
    cancel = request(Code.GET, "obs", mid=2, token=b"t1", options=((Option.OBSERVE, 1),))
    reply = client.exchange(cancel)
    assert reply.code == Code.CONTENT and reply.observe is None
    server.call(obs.tick)
    assert client.receive(0.3) is None


def test_obs_put_is_notified_at_once_then_the_time_again(plugtest):
    root, server, client = plugtest
    obs = root.children["obs"]
    client.exchange(observe_request("obs", b"t1", 1))
    client.send(
        request(Code.PUT, "obs", mid=2, payload="New value", options=((Option.CONTENT_FORMAT, 0),))
    )
    messages = receive(client, 2)
    note = next(m for m in messages if m.type == Type.CON)
    reply = next(m for m in messages if m.type == Type.ACK)
    assert reply.code == Code.CHANGED
    assert (note.code, note.payload, note.content_format) == (Code.CONTENT, b"New value", 0)
    ack(client, note)
    server.call(obs.tick)
    note = client.receive()
    assert TIME.fullmatch(note.payload.decode())
    ack(client, note)


def test_obs_put_in_another_format_ends_observations_with_406(plugtest):
    root, server, client = plugtest
    obs = root.children["obs"]
    client.exchange(observe_request("obs", b"t1", 1))
    client.send(
        request(Code.PUT, "obs", mid=2, payload="Random", options=((Option.CONTENT_FORMAT, 1),))
    )
    messages = receive(client, 2)
    note = next(m for m in messages if m.type == Type.CON)
    assert next(m for m in messages if m.type == Type.ACK).code == Code.CHANGED
    assert (note.code, note.token, note.observe, note.payload) == (
        Code.NOT_ACCEPTABLE,
        b"t1",
        None,
        b"",
    )
    ack(client, note)
    assert not obs.observers
    # the data keeps its format until the next tick falls back to text/plain (CO09/CO10)
    reply = client.exchange(request(Code.GET, "obs", mid=3))
    assert (reply.payload, reply.content_format) == (b"Random", 1)
    server.call(obs.tick)
    assert client.receive(0.3) is None
    reply = client.exchange(request(Code.GET, "obs", mid=4, options=((Option.ACCEPT, 0),)))
    assert reply.code == Code.CONTENT and reply.content_format == 0


def test_obs_final_406_waits_for_the_notification_in_flight(plugtest):
    """One CON notification at a time (RFC 7641 §4.5.2): the 4.06 follows the ACK of the
    pending one, and no notification of the new data may replace it."""
    root, server, client = plugtest
    client.exchange(observe_request("obs", b"t1", 1))
    server.call(root.children["obs"].tick)
    pending = client.receive()
    assert pending.code == Code.CONTENT  # not acknowledged yet
    reply = client.exchange(
        request(Code.PUT, "obs", mid=2, payload="Random", options=((Option.CONTENT_FORMAT, 1),))
    )
    assert (reply.type, reply.code) == (Type.ACK, Code.CHANGED)
    assert client.receive(0.2) is None
    ack(client, pending)
    final = client.receive()
    assert (final.code, final.observe) == (Code.NOT_ACCEPTABLE, None)
    ack(client, final)


def test_obs_delete_ends_observations_with_404(plugtest):
    root, server, client = plugtest
    obs = root.children["obs"]
    client.exchange(observe_request("obs", b"t1", 1))
    client.send(request(Code.DELETE, "obs", mid=2))
    messages = receive(client, 2)
    note = next(m for m in messages if m.type == Type.CON)
    assert next(m for m in messages if m.type == Type.ACK).code == Code.DELETED
    assert (note.code, note.token, note.observe) == (Code.NOT_FOUND, b"t1", None)
    ack(client, note)
    server.call(obs.tick)
    assert client.receive(0.3) is None
    assert client.exchange(request(Code.GET, "obs", mid=3)).code == Code.CONTENT  # it stays


def test_obs_checks_accept_and_content_format(plugtest):
    _, _, client = plugtest
    reply = client.exchange(request(Code.GET, "obs", mid=1, options=((Option.ACCEPT, 50),)))
    assert reply.code == Code.NOT_ACCEPTABLE
    reply = client.exchange(request(Code.PUT, "obs", mid=2, payload="x"))
    assert (reply.code, reply.payload) == (Code.BAD_REQUEST, b"Content-Format not set")


def test_obs_non_notifies_with_non(plugtest):
    root, server, client = plugtest
    reply = client.exchange(observe_request("obs-non", b"n1", 1, type=Type.NON))
    assert reply.type == Type.NON and reply.observe is not None
    server.call(root.children["obs-non"].tick)
    note = client.receive()
    assert (note.type, note.code, note.token) == (Type.NON, Code.CONTENT, b"n1")
    assert note.observe > reply.observe


def test_obs_registered_with_con_on_obs_non_still_gets_non(plugtest):
    root, server, client = plugtest
    client.exchange(observe_request("obs-non", b"n2", 1))
    server.call(root.children["obs-non"].tick)
    assert client.receive().type == Type.NON


def test_obs_large_layout(plugtest):
    root, server, client = plugtest
    reply = client.exchange(request(Code.GET, "obs-large", mid=1))
    text = reply.payload.decode()
    assert len(reply.payload) == 162 and reply.max_age == 5 and reply.content_format == 0
    top, middle, bottom = text.split("\n")
    assert top == bottom == "-" * 64
    assert len(middle) == 32 and TIME.fullmatch(middle.rstrip())
    reply = client.exchange(observe_request("obs-large", b"L", 2))
    server.call(root.children["obs-large"].tick)
    note = client.receive()
    assert note.type == Type.CON and len(note.payload) == 162
    ack(client, note)


class Draws(random.Random):
    """A random source returning the given numbers."""

    def __new__(cls, *values: float) -> Draws:  # Python 3.10's Random() takes no values
        return super().__new__(cls)

    def __init__(self, *values: float) -> None:
        super().__init__()
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_obs_pumping_payload_sizes():
    now = r"\d\d:\d\d:\d\d"
    pumping = ObservePumping(Type.CON, 5.0, Draws(0.9, 0.1, 0.9, 0.1, 0.1))
    assert re.fullmatch(f"-{{31}}\n {{11}}{now}\n-{{31}}\n", pumping.text)  # 84 bytes
    assert len(pumping.text) == 84
    pumping.update()
    assert re.fullmatch(f"-{{63}}\n {{27}}{now}\n-{{63}}\n", pumping.text)
    assert len(pumping.text) == 164
    pumping.update()
    assert re.fullmatch(now, pumping.text)
    assert pumping.observe_type == Type.CON and pumping.name == "obs-pumping"
    non = ObservePumping(Type.NON, 5.0)
    assert non.observe_type == Type.NON and non.name == "obs-pumping-non"


def test_obs_pumping_over_the_wire(plugtest):
    root, server, client = plugtest
    reply = client.exchange(observe_request("obs-pumping-non", b"p", 1, type=Type.NON))
    assert reply.code == Code.CONTENT and reply.max_age == 5 and reply.content_format == 0
    server.call(root.children["obs-pumping-non"].tick)
    assert client.receive().type == Type.NON


def test_obs_reset(plugtest):
    root, server, client = plugtest
    client.exchange(observe_request("obs", b"a", 1))
    client.exchange(observe_request("obs-large", b"b", 2))
    reply = client.exchange(request(Code.POST, "obs-reset", mid=3, payload="open"))
    assert reply.code == Code.FORBIDDEN
    reply = client.exchange(request(Code.POST, "obs-reset", mid=4, payload="sesame"))
    assert reply.code == Code.CHANGED
    assert client.receive(0.3) is None  # silently (OBS_04)
    server.call(root.children["obs"].tick)
    server.call(root.children["obs-large"].tick)
    assert client.receive(0.3) is None
    # re-registration with the same token works again
    reply = client.exchange(observe_request("obs", b"a", 5))
    assert reply.observe is not None


def test_obs_reset_notfound_sends_404(plugtest):
    root, _, client = plugtest
    client.exchange(observe_request("obs", b"a", 1))
    client.send(request(Code.POST, "obs-reset", "notfound", mid=2, payload="sesame"))
    messages = receive(client, 2)
    note = next(m for m in messages if m.type == Type.CON)
    assert (note.code, note.token, note.observe) == (Code.NOT_FOUND, b"a", None)
    ack(client, note)
    assert not root.children["obs"].observers


def test_observe_timers_follow_notify_interval(make_server, make_client):
    root = plugtest_tree(notify_interval=0.05)
    server = make_server(root)
    client = make_client(server.address)
    obs = root.children["obs"]
    client.exchange(observe_request("obs", b"t", 1))
    server.call(obs.start, server.loop)
    try:
        note = client.receive(1.0)
        assert note is not None and note.type == Type.CON
        ack(client, note)
    finally:
        server.call(obs.stop)


# -- /shutdown -----------------------------------------------------------------------------
def test_shutdown_needs_sesame_and_exits_once(plugtest):
    root, _, client = plugtest
    shutdown = root.children["shutdown"]
    calls = []
    shutdown.exit_action = lambda: calls.append(time.monotonic())
    shutdown.delay = 0.1
    assert (
        client.exchange(request(Code.POST, "shutdown", mid=1, payload="open")).code
        == Code.FORBIDDEN
    )
    started = time.monotonic()
    assert (
        client.exchange(request(Code.POST, "shutdown", mid=2, payload="sesame")).code
        == Code.CHANGED
    )
    assert not calls  # the response leaves first
    assert (
        client.exchange(request(Code.POST, "shutdown", mid=3, payload="sesame")).code
        == Code.CHANGED
    )
    time.sleep(0.3)
    assert len(calls) == 1 and calls[0] - started >= 0.1 - TIMER_SLACK


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_extserver() -> tuple[subprocess.Popen, int]:
    """``extserver`` on two free ports (new ones if a port was taken meanwhile: another test's
    socket may take one between the probe and the bind), once it printed its banner."""
    for _attempt in range(3):
        coap_port, plugtest_port = _free_port(), _free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "extplugtest.server.cli",
                "--no-ipv6",
                "--interfaces-pattern",
                r"127\.0\.0\.1",
                "--coap-port",
                str(coap_port),
                "--plugtest-port",
                str(plugtest_port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        if process.stdout.readline().startswith("extserver"):
            return process, plugtest_port
        process.kill()
        _out, err = process.communicate(timeout=10)
        last_error = err
    raise AssertionError(f"extserver did not start: {last_error}")


def test_shutdown_ends_extserver_with_exit_code_0(make_client):
    process, plugtest_port = _start_extserver()
    try:
        client = make_client(("127.0.0.1", plugtest_port))
        reply = client.exchange(request(Code.POST, "shutdown", payload="sesame"), timeout=5)
        assert reply is not None and reply.code == Code.CHANGED
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- /myip ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("peer", "host", "address"),
    [
        (("127.0.0.1", 5683), "127.0.0.1", "127.0.0.1:5683"),
        (("::1", 5683, 0, 0), "0:0:0:0:0:0:0:1", "[0:0:0:0:0:0:0:1]:5683"),
        (("2001:db8::a:0:1", 9, 0, 0), "2001:db8:0:0:0:a:0:1", "[2001:db8:0:0:0:a:0:1]:9"),
        (("fe80::1", 1, 0, 3), "fe80:0:0:0:0:0:0:1%3", "[fe80:0:0:0:0:0:0:1%3]:1"),
        (("::ffff:10.1.2.3", 7, 0, 0), "10.1.2.3", "10.1.2.3:7"),
    ],
)
def test_java_address_texts(peer, host, address):
    assert java_host(peer) == host
    assert java_socket_address(peer) == address


def test_myip(plugtest):
    _, _, client = plugtest
    port = client.sock.getsockname()[1]
    reply = client.exchange(request(Code.GET, "myip", mid=1))
    assert (reply.payload, reply.content_format) == (f"127.0.0.1:{port}".encode(), 0)
    reply = client.exchange(request(Code.GET, "myip", mid=2, options=((Option.ACCEPT, 50),)))
    assert reply.payload == f'{{ "ip" : "127.0.0.1",\n "port" : {port} }}'.encode()
    assert reply.content_format == 50
    reply = client.exchange(request(Code.GET, "myip", mid=3, options=((Option.ACCEPT, 41),)))
    assert reply.payload == f'<ip host="127.0.0.1" port="{port}" />'.encode()
    reply = client.exchange(request(Code.GET, "myip", mid=4, options=((Option.ACCEPT, 60),)))
    assert reply.code == Code.NOT_ACCEPTABLE and reply.content_format == 0
    assert reply.payload == b'Type "application/cbor" is not supported for this resource!'


def test_myip_visibility():
    assert MyIp().visible and not MyIp(visible=False).visible
    assert MyIp().attributes == {"title": ["MyIP"], "ct": ["0", "50", "41"]}


# -- /mycontext ----------------------------------------------------------------------------
SERVER = f"extplugtest {__version__}"


@pytest.mark.parametrize(
    ("accept", "payload"),
    [
        (None, f"ip: 127.0.0.1\nport: 40000\nserver: {SERVER}".encode()),
        (0, f"ip: 127.0.0.1\nport: 40000\nserver: {SERVER}".encode()),
        (50, f'{{\n  "ip": "127.0.0.1",\n  "port": 40000,\n  "server": "{SERVER}"\n}}'.encode()),
        (41, f'<context ip="127.0.0.1" port="40000" server="{SERVER}" />'.encode()),
        # canonical order: ip, port, server
        (
            60,
            b"\xa3bipi127.0.0.1dport\x19\x9c@fserver"
            + bytes([0x60 + len(SERVER)])
            + SERVER.encode(),
        ),
    ],
)
def test_mycontext_formats(accept, payload):
    root = plugtest_tree()
    options = () if accept is None else ((Option.ACCEPT, accept),)
    reply = call(root, request(Code.GET, "mycontext", options=options))
    assert reply.code == Code.CONTENT and reply.payload == payload
    assert reply.content_format == (0 if accept is None else accept)


def test_mycontext_cbor_keys_are_length_first():
    from extplugtest.resources.context import as_cbor

    fields = [("server", "s"), ("peer", "p"), ("ip", "i"), ("via", "v"), ("port", 1)]
    encoded = as_cbor(fields)
    assert list(cbor2.loads(encoded)) == ["ip", "via", "peer", "port", "server"]


def test_mycontext_unsupported_accept_and_attributes():
    root = plugtest_tree()
    reply = call(root, request(Code.GET, "mycontext", options=((Option.ACCEPT, 42),)))
    assert reply.code == Code.NOT_ACCEPTABLE and reply.content_format == 0
    assert reply.payload == b'Type "application/octet-stream" is not supported for this resource!'
    context = MyContext()
    assert context.visible and context.attributes["ct"] == ["0", "60", "50", "41"]
    assert context.attributes["title"] == ["Communication Context"]


# -- hono ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["telemetry", "event"])
@pytest.mark.parametrize(
    ("accept", "payload", "content_format"),
    [
        (None, "{} published!", 0),
        (0, "{} published!", 0),
        (50, '{{ "type" : "{}", "msg" : "published!" }}', 50),
        (42, "{} published!", 42),
    ],
)
def test_hono(name, accept, payload, content_format):
    root = plugtest_tree()
    options = () if accept is None else ((Option.ACCEPT, accept),)
    reply = call(root, request(Code.POST, name, payload=b"{}", options=options))
    assert reply.code == Code.CHANGED
    assert (reply.payload, reply.content_format) == (payload.format(name).encode(), content_format)


def test_hono_other_accept_and_methods():
    root = plugtest_tree()
    reply = call(root, request(Code.POST, "telemetry", options=((Option.ACCEPT, 60),)))
    assert reply.code == Code.NOT_ACCEPTABLE and reply.payload == b""
    assert call(root, request(Code.GET, "event")).code == Code.METHOD_NOT_ALLOWED
    assert not Hono("event").visible


# -- /echo ---------------------------------------------------------------------------------
def echo_post(
    *queries: str,
    payload: bytes = b"hello",
    cf: int | None = None,
    accept: int | None = None,
    mid: int = 1,
) -> Message:
    options: list[tuple[int, int]] = []
    if cf is not None:
        options.append((Option.CONTENT_FORMAT, cf))
    if accept is not None:
        options.append((Option.ACCEPT, accept))
    return request(Code.POST, "echo", *queries, mid=mid, payload=payload, options=tuple(options))


@pytest.mark.parametrize(
    ("cf", "accept", "result"),
    [
        (None, None, 42),
        (0, None, 0),
        (42, None, 42),
        (None, 0, 0),
        (None, 42, 42),
        (0, 0, 0),
        (None, 50, None),
        (50, None, None),
        (0, 42, None),
    ],
)
def test_echo_content_negotiation(cf, accept, result):
    reply = call(plugtest_tree(), echo_post(cf=cf, accept=accept))
    if result is None:
        assert reply.code == Code.NOT_ACCEPTABLE and reply.payload == b""
    else:
        assert (reply.code, reply.payload, reply.content_format) == (Code.CHANGED, b"hello", result)


@pytest.mark.parametrize(
    ("query", "payload"),
    [
        ("rlen=0", b"hello"),
        ("rlen=3", b"hel"),
        ("rlen=8", b"hello***"),
        ("rlen=8192", b"hello" + b"*" * 8187),
    ],
)
def test_echo_rlen(query, payload):
    assert call(plugtest_tree(), echo_post(query)).payload == payload


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("rlen=8193", "URI-query-option 'rlen=8193' is more than 8192!"),
        ("rlen=x", "URI-query-option 'rlen=x' is no number!"),
        ("delay=-1", "URI-query-option 'delay=-1' is less than 0!"),
        ("other", "URI-query-option 'other' is not supported!"),
    ],
)
def test_echo_bad_queries(query, text):
    reply = call(plugtest_tree(), echo_post(query))
    assert (reply.code, reply.payload.decode(), reply.content_format) == (Code.BAD_OPTION, text, 0)


def test_echo_rlen_bound_follows_settings():
    root = plugtest_tree(max_resource_body_size=100)
    assert call(root, echo_post("rlen=101")).code == Code.BAD_OPTION


def test_echo_ack_is_a_separate_response(plugtest):
    _, _, client = plugtest
    empty = client.exchange(echo_post("ack", cf=0))
    assert (empty.type, empty.code) == (Type.ACK, Code.EMPTY)
    reply = client.receive()
    assert (reply.type, reply.code, reply.payload) == (Type.CON, Code.CHANGED, b"hello")
    ack(client, reply)


def test_echo_delay_only_with_echo_delay(make_server, make_client):
    server = make_server(plugtest_tree(echo_delay=True))
    client = make_client(server.address)
    started = time.monotonic()
    empty = client.exchange(echo_post("delay=200", mid=1))
    assert empty.code == Code.EMPTY
    reply = client.receive()
    assert reply.code == Code.CHANGED and time.monotonic() - started >= 0.2 - TIMER_SLACK
    ack(client, reply)
    # without --echo-delay the delay is ignored
    server = make_server(plugtest_tree())
    client = make_client(server.address)
    assert client.exchange(echo_post("delay=200", mid=2)).code == Code.CHANGED


def test_echo_too_many_pending_delays(make_server, make_client):
    root = plugtest_tree(echo_delay=True)
    server = make_server(root)
    client = make_client(server.address)
    echo = root.children["echo"]
    server.call(setattr, echo, "pending", echo_module.MAX_PENDING)
    reply = client.exchange(echo_post("delay=10", mid=1))
    assert (
        reply.code == Code.SERVICE_UNAVAILABLE
        and reply.payload == b"Too many delayed responses pending!"
    )
    server.call(setattr, echo, "pending", 0)
    client.exchange(echo_post("delay=10", mid=2))  # empty ACK
    ack(client, client.receive())
    time.sleep(0.05)
    assert server.call(getattr, echo, "pending") == 0


def test_echo_keep_life_cycle(plugtest):
    root, _, client = plugtest
    reply = client.exchange(echo_post("keep", "id=dev1", cf=0, payload=b"first", mid=1))
    assert reply.code == Code.CHANGED and option_texts(reply, Option.LOCATION_PATH) == [
        "echo",
        "dev1",
    ]
    reply = client.exchange(request(Code.GET, "echo", mid=2))
    assert reply.max_age == 0 and reply.content_format == ContentFormat.LINK_FORMAT
    assert re.fullmatch(
        r'</echo/dev1>;ct=0;obs;scheme="coap";time="\d\d\.[A-Z][a-z]{2}-\d\d:\d\d:\d\d"',
        reply.payload.decode(),
    )
    assert "</echo/dev1>" in core(root)
    reply = client.exchange(observe_request("echo/dev1", b"k", 3))
    assert (reply.payload, reply.content_format, reply.max_age) == (b"first", 0, 0)
    assert reply.observe is not None
    client.send(echo_post("keep", "id=dev1", cf=0, payload=b"second", mid=4))
    messages = receive(client, 2)
    assert next(m for m in messages if m.type == Type.ACK).code == Code.CHANGED
    note = next(m for m in messages if m.type == Type.CON)
    assert (note.payload, note.token) == (b"second", b"k")
    ack(client, note)
    # GET with another Accept than the kept format
    reply = client.exchange(request(Code.GET, "echo/dev1", mid=5, options=((Option.ACCEPT, 42),)))
    assert reply.code == Code.NOT_ACCEPTABLE
    client.send(request(Code.DELETE, "echo/dev1", mid=6))
    messages = receive(client, 2)
    assert next(m for m in messages if m.type == Type.ACK).code == Code.DELETED
    note = next(m for m in messages if m.type == Type.CON)
    assert (note.code, note.observe) == (Code.NOT_FOUND, None)
    ack(client, note)
    assert client.exchange(request(Code.GET, "echo/dev1", mid=7)).code == Code.NOT_FOUND
    assert client.exchange(request(Code.GET, "echo", mid=8)).payload == b""


def test_echo_keep_needs_a_usable_name():
    root = plugtest_tree()
    for queries in (("keep",), ("keep", "id="), ("keep", "id=a/b"), ("id=x",)):
        reply = call(root, echo_post(*queries))
        assert reply.code == Code.CHANGED and not reply.has_option(Option.LOCATION_PATH)
    assert not root.children["echo"].children


class SecureEndpoint(FakeEndpoint):
    """A DTLS endpoint whose peer authenticated as *principal*."""

    scheme = "coaps"

    def __init__(self, principal: str) -> None:
        self.security = lambda peer: [("peer", principal), ("cipher-suite", "X")]


@pytest.mark.parametrize(
    ("principal", "kept_as"),
    [("Client_identity", "Client_identity"), ("ni:///sha-256;AbC", "dev1")],
)
def test_echo_keeps_under_the_principal_unless_it_has_a_slash(principal, kept_as):
    root = plugtest_tree()
    message = echo_post("keep", "id=dev1")
    resource = root.find(message.uri_path_segments)
    reply = resource.handle(Exchange(message, PEER, SecureEndpoint(principal), resource))
    assert option_texts(reply, Option.LOCATION_PATH) == ["echo", kept_as]
    assert list(root.children["echo"].children) == [kept_as]


def test_echo_get_accepts_link_format_only():
    root = plugtest_tree()
    assert (
        call(root, request(Code.GET, "echo", options=((Option.ACCEPT, 0),))).code
        == Code.NOT_ACCEPTABLE
    )
    assert (
        call(root, request(Code.GET, "echo", options=((Option.ACCEPT, 40),))).code == Code.CONTENT
    )


def test_echo_keeps_at_most_500_least_recently_updated_out():
    echo = Echo(ResourceSettings())
    post = echo_post(cf=0)
    for n in range(echo_module.MAX_KEPT):
        echo.keep(f"d{n}", post, "coap")
    echo.keep("d0", post, "coap")  # d0 is now the most recently updated
    echo.keep("new", post, "coap")
    names = list(echo.children)
    assert len(names) == echo_module.MAX_KEPT
    assert "d1" not in names and names[-2:] == ["d0", "new"]
    assert ("echo-kept-evicted", 1) in echo.limit_counters()


def test_echo_kept_posts_expire_after_6_hours():
    now = [1000.0]
    echo = Echo(ResourceSettings(), clock=lambda: now[0])
    post = echo_post(cf=0)
    echo.keep("old", post, "coap")
    now[0] += 3600
    echo.keep("young", post, "coap")
    now[0] += echo_module.KEEP_SECONDS - 3600 + 1
    echo.purge()
    assert list(echo.children) == ["young"]
    assert isinstance(echo.children["young"], KeptPost)
