"""TD_COAP_LINK (plugtest-spec.md §1.5): CL01-CL09, GET /.well-known/core with one Uri-Query.

Every response must be 2.05 with Content-Format 40; "every link the checker parses must match the
filter". The client assembles the (block-wise) listing first, as the checker's stack does. "TD"
lines add what td-coap4 expects to be listed, from the resource set of §1.2.
"""

from __future__ import annotations

import re

from extplugtest.coap.codes import Code, ContentFormat, Type

LINK_FORMAT = ContentFormat.LINK_FORMAT


def discover(client, query: str = ""):
    """GET /.well-known/core[?query]; checks 2.05 + ct 40 and returns (response, links)."""
    resp = client.request(Code.GET, ".well-known/core", query=query)
    assert resp.code == Code.CONTENT, resp
    assert resp.content_format == LINK_FORMAT, resp
    return resp, resp.links()


def targets(links) -> set[str]:
    return {link.target for link in links}


def test_cl01_discovery(client):
    """CL01 (LINK_01): GET /.well-known/core.

    Checker: 2.05, ct 40, non-empty (the type is not checked). TD: all links.
    """
    resp, links = discover(client)
    assert resp.payload, resp
    expected = {"/test", "/separate", "/large", "/obs", "/link1", "/path", "/validate"}
    assert expected <= targets(links), f"missing: {sorted(expected - targets(links))}"


def test_cl02_filter_rt(client):
    """CL02 (LINK_02): ?rt=Type1.

    Checker: 2.05, ct 40, every link has an ``rt`` token == "Type1".
    TD: only links of type Type1 (/link1 ``rt="Type1 Type2"``, /link3 ``rt="Type1 Type3"``).
    """
    _, links = discover(client, "rt=Type1")
    for link in links:
        assert "Type1" in link.tokens("rt"), link
    assert targets(links) >= {"/link1", "/link3"}, links


def test_cl03_filter_rt_wildcard(client):
    """CL03 (LINK_03): ?rt=*.

    Checker: ACK, 2.05, ct 40, non-empty, every link has ``rt``.
    TD: only links that have an rt attribute.
    """
    resp, links = discover(client, "rt=*")
    assert resp.has_type(Type.ACK), resp
    assert resp.payload, resp
    for link in links:
        assert link.has("rt"), link
    assert targets(links) >= {"/large", "/link1", "/obs"}, links


def test_cl04_filter_rt_multiple_values(client):
    """CL04 (LINK_04): ?rt=Type2.

    Checker: ACK, 2.05, ct 40, every link has an rt token == "Type2".
    TD: the groups ``rt="Type1 Type2"`` and ``rt="Type2 Type3"`` (/link1, /link2).
    """
    resp, links = discover(client, "rt=Type2")
    assert resp.has_type(Type.ACK), resp
    for link in links:
        assert "Type2" in link.tokens("rt"), link
    assert targets(links) >= {"/link1", "/link2"}, links


def test_cl05_filter_if_prefix(client):
    """CL05 (LINK_05): ?if=If*.

    Checker: ACK, 2.05, ct 40, every link has an ``if`` token starting with "If".
    TD: ``if="If1"`` and ``if="If2"``; not ``foo``, not links without if.
    """
    resp, links = discover(client, "if=If*")
    assert resp.has_type(Type.ACK), resp
    for link in links:
        assert any(token.startswith("If") for token in link.tokens("if")), link
    assert targets(links) >= {"/link1", "/link2"}, links
    assert "/link3" not in targets(links), links


def test_cl06_filter_sz_wildcard(client):
    """CL06 (LINK_06): ?sz=*.

    Checker: ACK, 2.05, ct 40, non-empty, every link has ``sz``.
    """
    resp, links = discover(client, "sz=*")
    assert resp.has_type(Type.ACK), resp
    assert resp.payload, resp
    for link in links:
        assert link.has("sz"), link
    assert "/large" in targets(links), links


def test_cl07_filter_href(client):
    """CL07 (LINK_07): ?href=/link1.

    Checker: ACK, 2.05, ct 40, every target == "/link1". TD: only ``</link1>``.
    """
    resp, links = discover(client, "href=/link1")
    assert resp.has_type(Type.ACK), resp
    assert [link.target for link in links] == ["/link1"], resp


def test_cl08_filter_href_prefix(client):
    """CL08 (LINK_08): ?href=/link*.

    Checker: ACK, 2.05, ct 40, every target starts with "/link".
    TD: /link1, /link2, /link3, not /test.
    """
    resp, links = discover(client, "href=/link*")
    assert resp.has_type(Type.ACK), resp
    for link in links:
        assert link.target.startswith("/link"), link
    assert targets(links) >= {"/link1", "/link2", "/link3"}, links


def test_cl09_hierarchy(client):
    """CL09 (LINK_09): ?ct=40, then GET /path, then GET /path/sub1.

    Checker: ACK 2.05 ct 40 with the substring ``</path>``; GET /path → ACK 2.05 ct 40 with
    ``</path/sub1>``; GET /path/sub1 → ACK 2.05.
    TD: the payload of /path/sub1 contains ``/path/sub1``.
    """
    resp, links = discover(client, "ct=40")
    assert resp.has_type(Type.ACK), resp
    assert "</path>" in resp.text, resp
    for link in links:
        assert "40" in link.tokens("ct"), link

    listing = client.request(Code.GET, "path")
    assert listing.has_type(Type.ACK), listing
    assert listing.code == Code.CONTENT, listing
    assert listing.content_format == LINK_FORMAT, listing
    assert "</path/sub1>" in listing.text, listing

    sub1 = client.request(Code.GET, "path/sub1")
    assert sub1.has_type(Type.ACK), sub1
    assert sub1.code == Code.CONTENT, sub1
    assert "/path/sub1" in sub1.text, sub1


def test_link_values_parse_for_californium(client):
    """§1.5 parser trap: Californium's ``LinkFormat.parse`` reads a value as a quoted string,
    ``\\w+`` or digits; an unquoted value with ``.``, ``-`` or ``/`` desynchronises it.

    "Quote every non-integer value ... write multiple values as one quoted, space-separated
    string." Checked on the whole listing: every unquoted value is a ``\\w+`` token.
    """
    _, links = discover(client)
    for link in links:
        for name, values in link.params.items():
            assert re.fullmatch(r"\w+", name), f"attribute name {name!r} in {link}"
            for value, quoted in values:
                if value is not None and not quoted:
                    assert re.fullmatch(r"\w+", value, re.ASCII), (
                        f"unquoted {name}={value} in {link.target}"
                    )


def test_link_filter_matches_tokens_exactly(client):
    """§3.5: "rt=Type must not match Type1"; a prefix match only with ``*``."""
    _, links = discover(client, "rt=Type")
    assert links == [], links


def test_link_multiple_queries(client):
    """§1.2: more than one query → the reference server answers 4.02."""
    resp = client.request(Code.GET, ".well-known/core", query="rt=Type1&if=If1")
    assert resp.code == Code.BAD_OPTION, resp
