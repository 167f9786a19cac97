"""Where we answer more strictly than the Californium reference (plugtest-spec.md §1.9, §3.1),
plus the error answers the reference gives too (plugtest-transcript-udp.txt).

None of this is exercised by the checker; a stricter server still passes all 46 tests.
"""

from __future__ import annotations

from extplugtest.coap.codes import Code, ContentFormat, Option, Type


def test_unknown_critical_option_con_is_4_02(client):
    """§1.9: CON GET /test + unknown critical option 9 → 4.02 Bad Option (RFC 7252 §5.4.1).

    The reference ignores the option and answers 2.05 (Californium #453).
    §3.1: "4.02 piggybacked, with a diagnostic payload"; never an RST.
    """
    resp = client.request(Code.GET, "test", options=[(9, b"x")])
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.BAD_OPTION, resp
    assert resp.has_request_mid(), resp
    assert resp.token == resp.request.token, resp


def test_unknown_elective_option_is_ignored(client):
    """§3.1: unknown elective (even) option 2 → ignored: CON GET /test → 2.05."""
    resp = client.request(Code.GET, "test", options=[(2, b"x")])
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.CONTENT, resp


def test_proxy_uri_is_5_05(client):
    """§1.9: CON GET with Proxy-Uri on a non-proxy → 5.05 Proxying Not Supported (§5.7.2).

    The reference answers 2.05 from some resource (Californium #2342).
    """
    resp = client.request(Code.GET, options=[(Option.PROXY_URI, "coap://example.org/x")])
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.PROXYING_NOT_SUPPORTED, resp


def test_proxy_scheme_is_5_05(client):
    """§3.1: Proxy-Uri / Proxy-Scheme on a non-proxy → 5.05 Proxying Not Supported."""
    resp = client.request(Code.GET, "test", options=[(Option.PROXY_SCHEME, "http")])
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.PROXYING_NOT_SUPPORTED, resp


def test_tkl_9_con_is_rst(client, udp_only):
    """§1.9: a CON with TKL=9 is a message format error → RST (RFC 7252 §3, §4.2).

    The reference stays silent. The RST echoes the MID and is 4 bytes (no token).
    """
    mid = client.next_mid()
    after = client.send_raw(bytes([0x49, Code.GET, mid >> 8, mid & 0xFF]) + b"123456789")
    reply = client.wait_for(lambda m: True, 5.0, after=after)
    assert reply is not None, "no answer to a CON with TKL 9"
    assert reply.type == Type.RST, reply
    assert reply.mid == mid, reply
    assert len(reply.raw) == 4, reply


def test_tkl_9_non_is_dropped(client, udp_only):
    """§3.1: "NON/ACK/RST with errors are silently dropped" (then a ping proves liveness)."""
    mid = client.next_mid()
    after = client.send_raw(bytes([0x59, Code.GET, mid >> 8, mid & 0xFF]) + b"123456789")
    assert client.collect(lambda m: True, 0.3, after=after) == []
    assert client.ping().type == Type.RST


def test_empty_con_with_token_is_rst(client, udp_only):
    """Transcript: an empty CON carrying a token (a format error) → RST, as the reference does."""
    mid = client.next_mid()
    after = client.send_raw(bytes([0x41, 0x00, mid >> 8, mid & 0xFF, 0x01]))
    reply = client.wait_for(lambda m: True, 5.0, after=after)
    assert reply is not None, "no answer to an empty CON with a token"
    assert reply.type == Type.RST and reply.mid == mid, reply


def test_unknown_path_is_4_04(client):
    """Transcript: CON GET /does-not-exist → ACK 4.04."""
    resp = client.request(Code.GET, "does-not-exist")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.NOT_FOUND, resp


def test_method_not_allowed_is_4_05(client):
    """§1.2 /seg1/seg2/seg3: "Other methods → 4.05"; transcript: POST → ACK 4.05."""
    resp = client.request(Code.POST, "seg1/seg2/seg3")
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.METHOD_NOT_ALLOWED, resp


def test_unsupported_accept_is_4_06(client):
    """§1.2 /test: "Accept ≠ 0 → 4.06"; transcript: Accept=50 on /test → ACK 4.06."""
    resp = client.request(Code.GET, "test", accept=ContentFormat.JSON)
    assert resp.has_type(Type.ACK), resp
    assert resp.code == Code.NOT_ACCEPTABLE, resp


def test_multi_format_unknown_accept_is_4_06(client):
    """§1.2 /multi-format: "Any other → 4.06" (transcript: Accept 42)."""
    resp = client.request(Code.GET, "multi-format", accept=ContentFormat.OCTET_STREAM)
    assert resp.code == Code.NOT_ACCEPTABLE, resp
