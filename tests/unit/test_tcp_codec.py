"""Tests for the CoAP-over-TCP framing, ``extplugtest.coap._tcp_codec`` (RFC 8323 §3.2, §5).

Byte vectors come from RFC 8323 (figures 8, 15 and 16) and from the length rule of §3.2 written
out by hand; the property tests compare the codec with the pure-Python reference model of
tests/fuzz/fuzz_tcp_codec.py (``reference_decode``, ``reference_stream``), which sits on the
RFC 7252 reference parser of fuzz_codec.py.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from extplugtest.coap import _tcp_codec as tcp
from extplugtest.coap._codec import Message, MessageFormatError

_FUZZ_PATH = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_tcp_codec.py"
_spec = importlib.util.spec_from_file_location("fuzz_tcp_codec_reference", _FUZZ_PATH)
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

GET, POST = 1, 2
CONTENT = 0x45


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def fields(message: Message) -> tuple:
    return (message.code, message.token, list(message.options), message.payload)


# -- RFC 8323 examples ---------------------------------------------------------------------------


def test_figure_8_response_without_options():
    """2.03 with token 7f and nothing else: 0x01 0x43 0x7f."""
    frame = tcp.encode(Message(code=0x43, token=b"\x7f"))
    assert frame == h("01 43 7f")
    assert fields(tcp.decode(frame)) == (0x43, b"\x7f", [], b"")


def test_figures_15_and_16_ping_and_pong():
    assert tcp.encode(Message(code=tcp.PING, token=b"\x42")) == h("01 e2 42")
    pong = tcp.decode(h("01 e3 42"))
    assert (pong.code, pong.token) == (tcp.PONG, b"\x42")


def test_type_and_mid_are_not_sent():
    assert tcp.encode(Message(0, GET, 0x1234, b"t")) == tcp.encode(Message(2, GET, 7, b"t"))


# -- the length field (§3.2) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body_length", "head"),
    [
        (0, "01"),
        (12, "c1"),
        (13, "d1 00"),  # Len 13: an 8-bit extended length holding Len-13
        (268, "d1 ff"),
        (269, "e1 00 00"),  # Len 14: 16 bits holding Len-269
        (65804, "e1 ff ff"),
        (65805, "f1 00 00 00 00"),  # Len 15: 32 bits holding Len-65805
        (70000, "f1 00 00 10 63"),
    ],
)
def test_length_encodings(body_length, head):
    """The body is a payload marker and a payload: Len counts options+marker+payload only."""
    message = Message(code=CONTENT, token=b"\xaa", payload=b"p" * (body_length - 1))
    if body_length == 0:
        message.payload = b""
    frame = tcp.encode(message)
    assert frame[: len(h(head))] == h(head)
    assert frame[len(h(head))] == CONTENT and frame[len(h(head)) + 1] == 0xAA
    assert len(frame) == len(h(head)) + 2 + body_length
    assert tcp.frame_size(frame) == len(frame)
    assert tcp.frame_size(frame[: len(h(head)) + 1]) == len(frame)  # header done: size known
    assert fields(tcp.decode(frame)) == fields(message)
    assert frame == ref.reference_frame(CONTENT, b"\xaa", frame[len(h(head)) + 2 :])


@pytest.mark.parametrize("partial", ["", "d1", "e1 00", "f1 00 00 00", "f1 00 00 00 00"])
def test_frame_size_of_an_incomplete_header_is_0(partial):
    assert tcp.frame_size(h(partial)) == 0


@pytest.mark.parametrize("tkl", range(9, 16))
def test_token_length_above_8_is_a_format_error(tkl):
    frame = bytes((tkl,)) + b"\x01" + b"t" * tkl
    with pytest.raises(MessageFormatError):
        tcp.frame_size(frame)
    with pytest.raises(MessageFormatError):
        tcp.decode(frame)


# -- malformed frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        "",  # nothing
        "11 01",  # Len 1 but no body byte
        "01 01",  # TKL 1 but no token
        "00 01 ff",  # one byte more than Len says
        "d0 00",  # Len 13 without code
        "20 01 f0 00",  # option delta nibble 15 (reserved)
        "20 01 0f 00",  # option length nibble 15 (reserved)
        "10 01 ff",  # payload marker without payload
        "20 01 b4 61",  # Uri-Path of 4 bytes, one present
        "10 01 d0",  # delta 13 needs one more byte
        "20 01 e0 ff",  # delta 14 needs two more bytes
        "50 01 e0 ff fe e0 ff",  # option numbers above 65535
        "20 e1 f0 00",  # a signalling message with a reserved nibble
        "10 e2 ff",  # a Ping with a payload marker and no payload
        "10 00 48",  # an Empty message whose option runs over the end
    ],
)
def test_malformed_frames_are_rejected(frame):
    data = h(frame)
    assert ref.reference_decode(data) == ref.FORMAT_ERROR
    with pytest.raises(MessageFormatError):
        tcp.decode(data)


def test_problems_are_flagged_as_over_udp():
    """Unknown critical options and Proxy-Uri are flagged, not rejected (RFC 7252 §5.4.1)."""
    bad_critical = tcp.decode(ref.reference_frame(GET, b"", h("91 61")))  # option 9, "a"
    assert bad_critical.problems & 1 and bad_critical.options == []
    proxy = tcp.decode(ref.reference_frame(GET, b"", h("d9 16") + b"coap://a1"))
    assert proxy.problems & 2


def test_signalling_options_are_read_raw():
    """CSM option 2 is Max-Message-Size and 4 Block-wise-Transfer (§5.3), not the request
    options with these numbers (If-None-Match would reject a value, ETag an empty one)."""
    csm = Message(code=tcp.CSM)
    csm.add_option(tcp.MAX_MESSAGE_SIZE, 9216)
    csm.add_option(tcp.BLOCK_WISE_TRANSFER, b"")
    frame = tcp.encode(csm)
    assert frame == h("40 e1 22 24 00 20")
    decoded = tcp.decode(frame)
    assert decoded.options == [(2, h("2400")), (4, b"")]


def test_abort_with_bad_csm_option_and_diagnostic():
    abort = Message(code=tcp.ABORT, payload=b"no")
    abort.add_option(tcp.BAD_CSM_OPTION, 9)
    decoded = tcp.decode(tcp.encode(abort))
    assert (decoded.code, decoded.options, decoded.payload) == (tcp.ABORT, [(2, b"\x09")], b"no")


def test_encode_rejects_what_cannot_be_framed():
    with pytest.raises(ValueError):
        tcp.encode(Message(code=GET, token=b"123456789"))
    with pytest.raises(ValueError):
        tcp.encode(Message(code=GET, options=[(70000, b"")]))


# -- from UDP ------------------------------------------------------------------------------------


def test_from_datagram_keeps_code_token_options_payload():
    message = Message(0, CONTENT, 0x1234, b"\x01\x02", payload=b"hello")
    message.add_option(12, 0)
    assert tcp.from_datagram(message.to_bytes()) == tcp.encode(message)


@pytest.mark.parametrize("datagram", ["", "40 01 00", "42 01 00 00 aa", "49 01 00 00" + "00" * 9])
def test_from_datagram_rejects_what_is_no_message(datagram):
    with pytest.raises(MessageFormatError):
        tcp.from_datagram(h(datagram))


# -- properties ----------------------------------------------------------------------------------

#: registry options with values their formats allow (RFC 7252 §5.10, RFC 7959, RFC 7641)
OPTION_VALUES = st.one_of(
    st.tuples(st.just(11), st.binary(max_size=20)),  # Uri-Path
    st.tuples(st.just(15), st.binary(max_size=20)),  # Uri-Query
    st.tuples(st.just(4), st.binary(min_size=1, max_size=8)),  # ETag
    st.tuples(st.sampled_from([6, 12, 17, 23, 27]), st.binary(max_size=2)),
    st.tuples(st.sampled_from([14, 28, 60]), st.binary(max_size=4)),
    st.tuples(st.sampled_from([1024, 2048, 65000]), st.binary(max_size=300)),  # elective
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    code = draw(st.sampled_from([GET, POST, 3, 4, 5, 0x41, 0x44, CONTENT, 0x5F, 0x84, 0xA0]))
    options = draw(st.lists(OPTION_VALUES, max_size=8))
    unique: dict[int, bytes] = {}
    kept = []
    for number, value in sorted(options, key=lambda o: o[0]):
        if number in (6, 12, 17, 23, 27, 14, 28, 60, 4):  # not repeatable (ETag: keep one)
            if number in unique:
                continue
            unique[number] = value
        kept.append((number, value))
    payload = draw(st.one_of(st.just(b""), st.binary(max_size=400), st.just(b"x" * 70000)))
    return Message(0, code, 0, draw(st.binary(max_size=8)), kept, payload)


@given(messages())
def test_encode_decode_round_trip(message):
    frame = tcp.encode(message)
    assert tcp.frame_size(frame) == len(frame)
    assert fields(tcp.decode(frame)) == fields(message)
    assert frame == tcp.from_datagram(message.to_bytes())
    expected = ref.reference_decode(frame)
    assert expected != ref.FORMAT_ERROR
    assert (expected.code, expected.token, list(expected.options), expected.payload) == fields(
        message
    )


@given(st.binary(max_size=300))
@example(h("01 43 7f"))
@example(h("e0 00 00 01"))
@example(h("0f 01"))
def test_any_frame_agrees_with_the_reference(data):
    ref.check_frame(data)


@given(st.binary(max_size=600), st.integers(1, 64))
@example(h("40 e1 22 08 00 20") + h("91 01 4a b9") + b"benchmark", 3)
@example(h("01 e2 42 00 e4") + h("01 01 00"), 1)
@example(h("d0 ff 01"), 2)  # Len 13+255 = 268 body bytes, never complete
@example(h("e0 05 00 01"), 1)  # 1574 bytes: above a Max-Message-Size of 1152
def test_any_stream_agrees_with_the_reference(data, chunk):
    """Whatever the chunking, the engine does what reference_stream says (tests/fuzz)."""
    ref.check_stream(data, chunk)
