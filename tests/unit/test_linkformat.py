"""RFC 6690 link format: Californium's serialisation and the filtering rules of
plugtest-spec.md §3.5 (token-exact matching, '*' prefixes, href)."""

from __future__ import annotations

import pytest

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.coap.linkformat import format_link, matches, serialize, well_known
from extplugtest.coap.resource import Resource


def link_tree() -> Resource:
    root = Resource("")
    root.add(
        Resource("link1", title="Link test resource",
                 attributes={"rt": ["Type1", "Type2"], "if": ["If1"]}),
        Resource("link2", title="Link test resource",
                 attributes={"rt": ["Type2", "Type3"], "if": ["If2"]}),
        Resource("link3", title="Link test resource",
                 attributes={"rt": ["Type1", "Type3"], "if": ["foo"]}),
        Resource("large", attributes={"rt": ["block"], "sz": ["1280"], "ct": ["0"]}),
        Resource("obs", observable=True, attributes={"ct": ["0"], "rt": ["observe"]}),
        Resource("hidden", visible=False),
    )  # fmt: skip
    path = Resource("path", attributes={"ct": ["40"]})
    path.add(Resource("sub1"))
    root.add(path)
    root.add(well_known(root))
    return root


def test_link_serialisation_like_californium():
    root = link_tree()
    assert format_link(root.children["link1"]) == (
        '</link1>;if="If1";rt="Type1 Type2";title="Link test resource"'
    )
    assert format_link(root.children["large"]) == '</large>;ct=0;rt="block";sz=1280'
    assert format_link(root.children["obs"]) == '</obs>;ct=0;obs;rt="observe"'


def test_serialize_sorts_by_path_and_skips_nothing_it_is_given():
    root = link_tree()
    text = serialize([root.children["link2"], root.children["large"], root.children["link1"]])
    assert text.split(",") == [
        '</large>;ct=0;rt="block";sz=1280',
        '</link1>;if="If1";rt="Type1 Type2";title="Link test resource"',
        '</link2>;if="If2";rt="Type2 Type3";title="Link test resource"',
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("rt=Type1", {"/link1", "/link3"}),
        ("rt=Type2", {"/link1", "/link2"}),
        ("rt=Type", set()),  # token-exact: Type does not match Type1
        ("rt=*", {"/link1", "/link2", "/link3", "/large", "/obs"}),
        ("if=If*", {"/link1", "/link2"}),
        ("sz=*", {"/large"}),
        ("href=/link1", {"/link1"}),
        ("href=/link*", {"/link1", "/link2", "/link3"}),
        ("ct=40", {"/path"}),
        ("obs", {"/obs"}),
        ("title=Link*", {"/link1", "/link2", "/link3"}),
    ],
)
def test_filtering(query, expected):
    root = link_tree()
    visible = [r for r in root.walk() if r.visible]
    assert {r.path for r in visible if matches(r, query)} == expected


_mids = iter(range(1, 1000))


def wkc_request(*queries: str, accept: int | None = None) -> Message:
    message = Message(Type.CON, Code.GET, next(_mids), b"\x01")  # a new MID: no duplicate
    message.add_option(Option.URI_PATH, ".well-known").add_option(Option.URI_PATH, "core")
    for query in queries:
        message.add_option(Option.URI_QUERY, query)
    if accept is not None:
        message.add_option(Option.ACCEPT, accept)
    return message


def test_well_known_core_over_the_wire(make_server, make_client):
    server = make_server(link_tree())
    client = make_client(server.address)
    reply = client.exchange(wkc_request())
    assert reply.code == Code.CONTENT and reply.content_format == ContentFormat.LINK_FORMAT
    links = reply.payload.decode().split(",")
    assert "</hidden>" not in reply.payload.decode()
    assert "</.well-known/core>" not in reply.payload.decode()
    paths = [link.split(">")[0] for link in links]
    assert paths == sorted(paths)  # sorted by path, as Californium does
    assert "</path/sub1>" in links
    filtered = client.exchange(wkc_request("href=/link1"))
    assert filtered.payload.decode().startswith("</link1>;")
    assert "</link2>" not in filtered.payload.decode()
    empty = client.exchange(wkc_request("rt=nothing"))
    assert empty.code == Code.CONTENT and empty.payload == b""


def test_well_known_core_errors(make_server, make_client):
    server = make_server(link_tree())
    client = make_client(server.address)
    two = client.exchange(wkc_request("rt=Type1", "if=If1"))
    assert two.code == Code.BAD_OPTION
    assert two.payload == b"only one search query is supported!"
    assert two.content_format == ContentFormat.TEXT_PLAIN  # Californium's respond(code, String)
    assert client.exchange(wkc_request(accept=ContentFormat.JSON)).code == Code.NOT_ACCEPTABLE
