"""TD_COAP_CORE (plugtest-spec.md §1.4): the ping gate (CORE_31) and CC01-CC23.

Each test sends what Californium's cf-plugtest-checker sends and asserts what its class asserts
(quoted in the docstring as "Checker"); "TD" lines add the td-coap4 pass criteria the checker
leaves out. The client assembles block-wise responses and checks the result, as the checker does.
"""

from __future__ import annotations

import json

import cbor2
import pytest

from extplugtest.coap.codes import Code, ContentFormat, Type

TEXT = ContentFormat.TEXT_PLAIN


def assert_content(resp) -> None:
    """The checker's usual tail: ``hasContentType`` and ``hasNonEmptyPayload``."""
    assert resp.has_content_format(), f"2.xx with a payload but no Content-Format: {resp}"
    assert resp.payload, f"empty payload: {resp}"


# -- CORE_31: the checker's ping gate ----------------------------------------------------------


def test_core31_ping_gate(client, udp_only):
    """CORE_31 / ping gate: CON 0.00, TKL 0, no payload → RST within 5 s.

    Checker: ``request.isRejected()`` within 5 s, else "does not respond to ping, exiting...".
    TD: a 4-byte RST, MID = CMID, no token, no payload.
    """
    resp = client.ping()
    assert resp.type == Type.RST, f"ping not answered with RST: {resp}"
    assert resp.mid == resp.request.mid, resp
    assert resp.code == Code.EMPTY, resp
    assert resp.token == b"", resp
    assert len(resp.raw) == 4, f"the RST is not 4 bytes: {resp}"


# -- CC01-CC04: CON requests to /test ----------------------------------------------------------


def test_cc01_get_con(client):
    """CC01 (CORE_01): CON GET /test.

    Checker: type ACK, 2.05, MID equal, Content-Format, payload non-empty.
    TD: Token = CTOK.
    """
    resp = client.request(Code.GET, "test")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    assert resp.has_request_mid(), resp
    assert resp.token == resp.request.token, resp
    assert resp.content_format is not None, resp
    assert resp.payload, resp


def test_cc02_delete_con(client):
    """CC02 (CORE_02): CON DELETE /test.

    Checker: ACK, 2.02, MID equal. TD: Token echoed, Content-Format if there is a payload.
    """
    resp = client.request(Code.DELETE, "test")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.DELETED, resp
    assert resp.has_request_mid(), resp
    assert resp.token == resp.request.token, resp
    assert resp.has_content_format(), resp


def test_cc03_put_con(client):
    """CC03 (CORE_03): CON PUT /test, ct=0, payload ``TD_COAP_CORE_03``.

    Checker: ACK, 2.01 or 2.04, MID equal. TD: Token echoed.
    """
    resp = client.request(Code.PUT, "test", content_format=TEXT, payload="TD_COAP_CORE_03")
    assert resp.has_type(Type.ACK), resp
    assert resp.code in (Code.CREATED, Code.CHANGED), resp
    assert resp.has_request_mid(), resp
    assert resp.token == resp.request.token, resp


def test_cc04_post_con(client):
    """CC04 (CORE_04): CON POST /test, ct=0, payload ``TD_COAP_CORE_04``.

    Checker: ACK, 2.01 or 2.04, MID equal. TD: zero or more Location-Path, Token echoed.
    """
    resp = client.request(Code.POST, "test", content_format=TEXT, payload="TD_COAP_CORE_04")
    assert resp.has_type(Type.ACK), resp
    assert resp.code in (Code.CREATED, Code.CHANGED), resp
    assert resp.has_request_mid(), resp
    assert resp.token == resp.request.token, resp


# -- CC05-CC08: NON requests to /test ----------------------------------------------------------


def test_cc05_get_non(client):
    """CC05 (CORE_05): NON GET /test.

    Checker: NON, 2.05, Content-Format, non-empty payload.
    TD: Token = CTOK, a server-generated MID (no ACK is sent for a NON).
    """
    resp = client.request(Code.GET, "test", type=Type.NON)
    assert resp.has_type(Type.NON), resp
    assert resp.code == Code.CONTENT, resp
    assert resp.token == resp.request.token, resp
    assert resp.empty_ack is None, f"an ACK for a NON request: {resp.empty_ack}"
    assert_content(resp)


def test_cc06_delete_non(client):
    """CC06 (CORE_06): NON DELETE /test.  Checker: NON, 2.02.  TD: Token echoed."""
    resp = client.request(Code.DELETE, "test", type=Type.NON)
    assert resp.has_type(Type.NON), resp
    assert resp.code == Code.DELETED, resp
    assert resp.token == resp.request.token, resp


def test_cc07_put_non(client):
    """CC07 (CORE_07): NON PUT /test, ct=0.  Checker: NON, 2.01 or 2.04.  TD: Token echoed."""
    resp = client.request(
        Code.PUT, "test", type=Type.NON, content_format=TEXT, payload="TD_COAP_CORE_07"
    )
    assert resp.has_type(Type.NON), resp
    assert resp.code in (Code.CREATED, Code.CHANGED), resp
    assert resp.token == resp.request.token, resp


def test_cc08_post_non(client):
    """CC08 (CORE_08): NON POST /test, ct=0.  Checker: NON, 2.01 or 2.04.  TD: Token echoed."""
    resp = client.request(
        Code.POST, "test", type=Type.NON, content_format=TEXT, payload="TD_COAP_CORE_08"
    )
    assert resp.has_type(Type.NON), resp
    assert resp.code in (Code.CREATED, Code.CHANGED), resp
    assert resp.token == resp.request.token, resp


# -- CC09-CC12: separate responses and tokens --------------------------------------------------


def test_cc09_separate_response(client):
    """CC09 (CORE_09): CON GET /separate.

    Checker: the final response is CON, 2.05, Content-Format, non-empty payload.
    TD: an empty ACK (code 0, MID = CMID, no payload; before or after the response), then a CON
    2.05 with a new MID and Token = CTOK, which the client ACKs.
    """
    resp = client.request(Code.GET, "separate")
    assert resp.has_type(Type.CON), f"not a separate CON response: {resp}"
    assert resp.code == Code.CONTENT, resp
    assert_content(resp)
    assert resp.token == resp.request.token, resp
    if client.has_message_types:
        ack = resp.empty_ack
        assert ack is not None, "no empty ACK for the CON request"
        assert ack.mid == resp.request.mid and ack.token == b"" and not ack.payload, ack
        assert resp.mid != resp.request.mid, f"the separate response reuses the CMID: {resp}"


def test_cc10_token(client):
    """CC10 (CORE_10): CON GET /test with a 1-8 byte token.

    Checker: ACK, 2.05, token equal and 1-8 bytes long, Content-Format, non-empty payload.
    """
    resp = client.request(Code.GET, "test", token=bytes.fromhex("0123456789abcdef"))
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    assert resp.token == resp.request.token, resp
    assert 1 <= len(resp.token) <= 8, resp
    assert_content(resp)


def test_cc11_token_separate(client):
    """CC11 (CORE_11): CON GET /separate with token ``BE EF``.

    Checker: CON, 2.05, token ``BEEF``, Content-Format, non-empty payload.
    TD: an empty ACK first, then the CON 2.05 with Token = CTOK.
    """
    resp = client.request(Code.GET, "separate", token=b"\xbe\xef")
    assert resp.has_type(Type.CON), f"not a separate CON response: {resp}"
    assert resp.code == Code.CONTENT, resp
    assert resp.token == b"\xbe\xef", resp
    assert_content(resp)
    if client.has_message_types:
        assert resp.empty_ack is not None, "no empty ACK for the CON request"


def test_cc12_empty_token(client):
    """CC12 (CORE_12): CON GET /test with TKL 0.

    Checker: ACK, 2.05, empty token, Content-Format, non-empty payload.
    """
    resp = client.request(Code.GET, "test", token=b"")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    assert resp.token == b"", resp
    assert_content(resp)


# -- CC13-CC17: URIs, lossy links, NON separate ------------------------------------------------


def test_cc13_uri_path_segments(client):
    """CC13 (CORE_13): CON GET /seg1/seg2/seg3.  Checker: ACK, 2.05, Content-Format, non-empty."""
    resp = client.request(Code.GET, "seg1/seg2/seg3")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    assert_content(resp)


def test_cc14_uri_query(client):
    """CC14 (CORE_14): CON GET /query?first=1&second=2&third=3.

    Checker: ACK or CON, 2.05, Content-Format, non-empty payload.
    """
    resp = client.request(Code.GET, "query", query="first=1&second=2&third=3")
    assert resp.has_type(Type.ACK, Type.CON), resp
    assert resp.code == Code.CONTENT, resp
    assert_content(resp)


def test_cc15_lossy_piggybacked(client):
    """CC15 (CORE_15): CON GET /test (the checker injects no loss).

    Checker: ACK or CON, 2.05, Content-Format, non-empty payload.
    """
    resp = client.request(Code.GET, "test")
    assert resp.has_type(Type.ACK, Type.CON), resp
    assert resp.code == Code.CONTENT, resp
    assert_content(resp)


def test_cc16_lossy_separate(client):
    """CC16 (CORE_16): CON GET /separate, then the identical request again (same MID).

    Checker: CON, 2.05, Content-Format, non-empty payload (it waits up to 45 s); after the
    re-sent duplicate "either a duplicate reply or silence passes".
    Here a reply to the duplicate must at least belong to it: an ACK with the request's MID
    (empty or 2.05) or a 2.05 with the request's token.
    """
    resp = client.request(Code.GET, "separate", timeout=10.0)
    assert resp.has_type(Type.CON), f"not a separate CON response: {resp}"
    assert resp.code == Code.CONTENT, resp
    assert_content(resp)
    if not client.has_message_types:
        return
    request = resp.request
    after = client.send(request)  # the identical request: same bytes, same MID and token
    replies = client.collect(lambda m: True, 2.0, after=after)
    for reply in replies:
        own_ack = reply.type == Type.ACK and reply.mid == request.mid
        own_response = reply.token == request.token and reply.code == Code.CONTENT
        assert own_ack or own_response, f"unrelated reply to the duplicate request: {reply}"
        assert reply.code in (Code.EMPTY, Code.CONTENT), reply


def test_cc17_separate_non(client):
    """CC17 (CORE_17): NON GET /separate.

    Checker: NON, 2.05, Content-Format, non-empty payload.
    TD: the server must NOT send an (empty) ACK; the NON 2.05 carries Token = CTOK.
    """
    resp = client.request(Code.GET, "separate", type=Type.NON)
    assert resp.has_type(Type.NON), resp
    assert resp.code == Code.CONTENT, resp
    assert resp.token == resp.request.token, resp
    assert_content(resp)
    assert resp.empty_ack is None, f"an ACK for a NON request: {resp.empty_ack}"


# -- CC18-CC19: Location options ---------------------------------------------------------------


def test_cc18_location_path(client):
    """CC18 (CORE_18): CON POST /test, ct=0.

    Checker: ACK, 2.01, Location-Path list exactly ``[location1, location2, location3]``.
    """
    resp = client.request(Code.POST, "test", content_format=TEXT, payload="TD_COAP_CORE_18")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CREATED, resp
    assert resp.location_path == ["location1", "location2", "location3"], resp


def test_cc19_location_query(client):
    """CC19 (CORE_19): CON POST /location-query.

    Checker: ACK, 2.01, Location-Query list exactly ``[first=1, second=2]``.
    """
    resp = client.request(Code.POST, "location-query", content_format=TEXT, payload="q")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CREATED, resp
    assert resp.location_query == ["first=1", "second=2"], resp


# -- CC20: Accept ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept", [ContentFormat.TEXT_PLAIN, ContentFormat.XML, ContentFormat.JSON, ContentFormat.CBOR]
)
def test_cc20_accept(client, accept):
    """CC20 (CORE_20): CON GET /multi-format with Accept 0, 41, 50 and 60.

    Checker: each ACK, 2.05, Content-Format == Accept, non-empty payload; it decodes the JSON
    and the CBOR payloads. TD: the payload is in that format.
    """
    resp = client.request(Code.GET, "multi-format", accept=accept)
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp
    assert resp.content_format == accept, resp
    assert resp.payload, resp
    if accept == ContentFormat.JSON:
        assert isinstance(json.loads(resp.payload), dict), resp
    elif accept == ContentFormat.CBOR:
        assert isinstance(cbor2.loads(resp.payload), dict), resp
    elif accept == ContentFormat.XML:
        assert resp.text.lstrip().startswith("<"), resp


# -- CC21-CC23: ETag, If-Match, If-None-Match --------------------------------------------------


def test_cc21_etag_validation(client):
    """CC21 (CORE_21): GET /validate; GET with its ETag; PUT; GET with the old ETag.

    Checker: 1) ACK 2.05 + ETag + payload. 2) ACK 2.03 + ETag byte-equal to E1.
    3) PUT ``It should change`` (result not checked). 4) ACK 2.05 + ETag != E1.
    TD: 2) has an empty payload; 4) has the new payload.
    """
    first = client.request(Code.GET, "validate")
    assert first.has_type(Type.ACK), first
    assert first.code == Code.CONTENT, first
    assert first.etag is not None, f"no ETag: {first}"
    assert first.payload, first
    e1 = first.etag

    valid = client.request(Code.GET, "validate", etag=e1)
    assert valid.has_type(Type.ACK), valid
    assert valid.code == Code.VALID, valid
    assert valid.etag == e1, valid
    assert valid.payload == b"", f"2.03 with a payload: {valid}"

    client.request(Code.PUT, "validate", content_format=TEXT, payload="It should change")

    changed = client.request(Code.GET, "validate", etag=e1)
    assert changed.has_type(Type.ACK), changed
    assert changed.code == Code.CONTENT, changed
    assert changed.etag is not None and changed.etag != e1, changed
    assert changed.payload == b"It should change", changed


def test_cc22_if_match(client):
    """CC22 (CORE_22): GET (E1); PUT If-Match E1; GET (E2); PUT without If-Match; PUT If-Match E1.

    Checker: 2.05 + E1 + payload + Content-Format; PUT If-Match E1 → 2.04; GET → 2.05 with
    E2 != E1; PUT without If-Match ("third party"); PUT If-Match E1 → ACK 4.12.
    TD: the GET after the update returns the new payload.
    """
    first = client.request(Code.GET, "validate")
    assert first.code == Code.CONTENT, first
    assert first.etag is not None, f"no ETag: {first}"
    assert_content(first)
    e1 = first.etag

    update = client.request(
        Code.PUT, "validate", if_match=e1, content_format=TEXT, payload="TD_COAP_CORE_22 update"
    )
    assert update.code == Code.CHANGED, update

    second = client.request(Code.GET, "validate")
    assert second.code == Code.CONTENT, second
    assert second.etag is not None and second.etag != e1, second
    assert second.payload == b"TD_COAP_CORE_22 update", second

    client.request(Code.PUT, "validate", content_format=TEXT, payload="TD_COAP_CORE_22 third party")

    stale = client.request(
        Code.PUT, "validate", if_match=e1, content_format=TEXT, payload="TD_COAP_CORE_22 stale"
    )
    assert stale.has_type(Type.ACK), stale
    assert stale.code == Code.PRECONDITION_FAILED, stale


def test_cc23_if_none_match(client):
    """CC23 (CORE_23): PUT /create1 with If-None-Match, twice.

    Checker: if the first PUT already gets 4.12 it retries once (the server must reset /create1
    after answering 4.12). Then ACK 2.01, then ACK 4.12.
    """

    def put_create1(text: str):
        return client.request(
            Code.PUT, "create1", if_none_match=True, content_format=TEXT, payload=text
        )

    first = put_create1("TD_COAP_CORE_23 first")
    if first.code == Code.PRECONDITION_FAILED:
        first = put_create1("TD_COAP_CORE_23 first, retried")
    assert first.has_type(Type.ACK), first
    assert first.code == Code.CREATED, first

    second = put_create1("TD_COAP_CORE_23 second")
    assert second.has_type(Type.ACK), second
    assert second.code == Code.PRECONDITION_FAILED, second


def test_cc23_create1_resets_after_412(client):
    """CC23 precondition (§1.2): after answering 4.12 /create1 is absent again.

    "PUT + If-None-Match while absent → 2.01; while present → 4.12 and the resource is reset to
    absent. The checker relies on that reset to re-run CC23."
    """

    def put_create1(text: str):
        return client.request(
            Code.PUT, "create1", if_none_match=True, content_format=TEXT, payload=text
        )

    created = put_create1("x")
    if created.code == Code.PRECONDITION_FAILED:  # it existed before: that 4.12 reset it
        created = put_create1("x, retried")
    assert created.code == Code.CREATED, created
    refused = put_create1("y")
    assert refused.code == Code.PRECONDITION_FAILED, refused
    again = put_create1("z")
    assert again.code == Code.CREATED, f"/create1 not reset after the 4.12: {again}"


def test_test_resource_survives_delete(client):
    """§1.2: DELETE /test → 2.02, "but the resource stays because later tests reuse it"."""
    assert client.request(Code.DELETE, "test").code == Code.DELETED
    resp = client.request(Code.GET, "test")
    assert resp.code == Code.CONTENT, resp
