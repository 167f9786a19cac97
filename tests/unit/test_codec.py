"""Tests for the CoAP codec, ``extplugtest.coap._codec`` (RFC 7252 section 3, options §5.4).

Byte vectors are written by hand from RFC 7252 (header §3, option format §3.1, Appendix A
examples); the property tests compare the codec with the pure-Python reference model of
tests/fuzz/fuzz_codec.py (``reference_parse`` / ``option_rules``).
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extplugtest.coap._codec import (
    OPTION_FORMATS,
    OPTION_NAMES,
    OPTION_NUMBERS,
    Message,
    MessageFormatError,
    code_text,
    decode_uint,
    encode_uint,
    parse,
)

_FUZZ_PATH = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_codec.py"
_spec = importlib.util.spec_from_file_location("fuzz_codec_reference", _FUZZ_PATH)
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
CONTENT = 0x45  # 2.05

PROBLEM_BAD_CRITICAL = 1
PROBLEM_PROXY = 2


def fields(msg: Message) -> tuple:
    """Message has no __eq__; compare what is on the wire."""
    return (msg.type, msg.code, msg.mid, msg.token, list(msg.options), msg.payload)


def h(text: str) -> bytes:
    """Hex with spaces allowed."""
    return bytes.fromhex(text.replace(" ", ""))


def encode(type_: int, code: int, mid: int, token: bytes, options, payload: bytes) -> bytes:
    """Independent RFC 7252 §3 encoder (options given in ascending order)."""

    def nibble(value: int) -> tuple[int, bytes]:
        if value < 13:
            return value, b""
        if value < 269:
            return 13, bytes([value - 13])
        return 14, (value - 269).to_bytes(2, "big")

    out = bytearray([0x40 | (type_ << 4) | len(token), code, mid >> 8, mid & 0xFF])
    out += token
    last = 0
    for number, value in options:
        dn, dext = nibble(number - last)
        ln, lext = nibble(len(value))
        out += bytes([dn << 4 | ln]) + dext + lext + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Byte-exact vectors: parse gives the fields, and Message(fields).to_bytes() gives the bytes.

TEMPERATURE = b"temperature"

VECTORS = [
    # RFC 7252 §4.3 / Appendix A style: CON 0.00 ping, RST reply.
    ("ping", h("40 00 00 01"), (CON, 0, 1, b"", [], b"")),
    ("rst", h("70 00 00 01"), (RST, 0, 1, b"", [], b"")),
    ("empty ack", h("60 00 12 34"), (ACK, 0, 0x1234, b"", [], b"")),
    # Appendix A figure 16: CON [0x7d34] GET /temperature, no token.
    (
        "con get uri-path",
        h("40 01 7d 34 bb") + TEMPERATURE,
        (CON, GET, 0x7D34, b"", [(11, TEMPERATURE)], b""),
    ),
    # ... answered by ACK [0x7d34] 2.05 "22.3 C".
    (
        "ack 2.05 payload",
        h("60 45 7d 34 ff") + b"22.3 C",
        (ACK, CONTENT, 0x7D34, b"", [], b"22.3 C"),
    ),
    # Appendix A figure 18: same request with a one-byte token 0x20.
    (
        "1-byte token",
        h("41 01 7d 35 20 bb") + TEMPERATURE,
        (CON, GET, 0x7D35, b"\x20", [(11, TEMPERATURE)], b""),
    ),
    (
        "8-byte token",
        h("48 01 ab cd 01 02 03 04 05 06 07 08 b4") + b"test",
        (CON, GET, 0xABCD, bytes(range(1, 9)), [(11, b"test")], b""),
    ),
    (
        "two uri-path, delta 0, uri-query delta 4",
        h("50 01 00 07 b1 61 02 62 63 43 78 3d 31"),
        (NON, GET, 7, b"", [(11, b"a"), (11, b"bc"), (15, b"x=1")], b""),
    ),
    # Delta 12 is the largest direct nibble; Content-Format 0 is the empty value.
    (
        "delta 12, empty uint, payload",
        h("60 45 00 01 c0 ff 68 69"),
        (ACK, CONTENT, 1, b"", [(12, b"")], b"hi"),
    ),
    # Delta 13 -> nibble 13 with extended byte 0 (RFC 7252 §3.1: 13..268).
    ("delta 13", h("40 01 00 01 b0 d0 00"), (CON, GET, 1, b"", [(11, b""), (24, b"")], b"")),
    ("delta 14 (max-age)", h("60 45 00 01 d1 01 3c"), (ACK, CONTENT, 1, b"", [(14, b"<")], b"")),
    ("delta 268", h("40 01 00 01 d0 ff"), (CON, GET, 1, b"", [(268, b"")], b"")),
    # Delta 269.. -> nibble 14 with a 2-byte extension minus 269.
    ("delta 270", h("40 01 00 01 e0 00 01"), (CON, GET, 1, b"", [(270, b"")], b"")),
    ("option 65534", h("40 01 00 01 e0 fe f1"), (CON, GET, 1, b"", [(65534, b"")], b"")),
    ("size1 delta 60", h("40 02 00 01 d1 2f 40"), (CON, POST, 1, b"", [(60, b"\x40")], b"")),
    # Lengths: 12 direct, 13 -> nibble 13 ext 0, 268 -> ext 255, 269 -> nibble 14 ext 0.
    ("length 12", h("40 01 00 01 bc") + b"a" * 12, (CON, GET, 1, b"", [(11, b"a" * 12)], b"")),
    ("length 13", h("40 01 00 01 bd 00") + b"a" * 13, (CON, GET, 1, b"", [(11, b"a" * 13)], b"")),
    (
        "length 255",
        h("40 01 00 01 bd f2") + b"p" * 255,
        (CON, GET, 1, b"", [(11, b"p" * 255)], b""),
    ),
    ("length 268", h("40 01 00 01 2d ff") + bytes(268), (CON, GET, 1, b"", [(2, bytes(268))], b"")),
    (
        "length 269",
        h("40 01 00 01 2e 00 00") + bytes(269),
        (CON, GET, 1, b"", [(2, bytes(269))], b""),
    ),
    (
        "length 1000",
        h("40 01 00 01 2e 02 db") + b"z" * 1000,
        (CON, GET, 1, b"", [(2, b"z" * 1000)], b""),
    ),
    # Both nibbles extended in one option header: option 300 with a 300-byte value.
    (
        "delta and length 14",
        h("40 01 00 01 ee 00 1f 00 1f") + b"v" * 300,
        (CON, GET, 1, b"", [(300, b"v" * 300)], b""),
    ),
    (
        "observe notification with token, block2, payload",
        h("51 45 00 2a 7f 61 05 60 b1 06 ff") + b"data",
        (NON, CONTENT, 42, b"\x7f", [(6, b"\x05"), (12, b""), (23, b"\x06")], b"data"),
    ),
    ("payload of 0xff bytes", h("40 02 00 01 ff ff ff"), (CON, POST, 1, b"", [], b"\xff\xff")),
]


@pytest.mark.parametrize(
    ("wire", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_vector_parse(wire: bytes, expected: tuple) -> None:
    msg = parse(wire)
    assert fields(msg) == expected
    assert msg.problems == 0


@pytest.mark.parametrize(
    ("wire", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS]
)
def test_vector_serialise(wire: bytes, expected: tuple) -> None:
    type_, code, mid, token, options, payload = expected
    msg = Message(type_, code, mid, token, list(options), payload)
    assert msg.to_bytes() == wire
    assert encode(*expected) == wire  # the test encoder agrees with the hand-written bytes


@pytest.mark.parametrize("wire", [v[1] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector_round_trip(wire: bytes) -> None:
    assert parse(wire).to_bytes() == wire


def test_parse_accepts_buffers() -> None:
    wire = h("40 01 7d 34 bb") + TEMPERATURE
    assert fields(parse(bytearray(wire))) == fields(parse(wire))
    assert fields(parse(memoryview(wire))) == fields(parse(wire))


def test_parsed_values_are_copies() -> None:
    buf = bytearray(h("41 01 00 01 20 b1 61 ff 7a"))
    msg = parse(buf)
    buf[:] = bytes(len(buf))
    assert fields(msg) == (CON, GET, 1, b"\x20", [(11, b"a")], b"z")


# ---------------------------------------------------------------------------------------------
# Format errors (RFC 7252 §3, §4.1): MessageFormatError("... format error ...")

FORMAT_ERRORS = [
    *[(f"tkl {tkl}", bytes([0x40 | tkl, 1, 0, 1]) + bytes(tkl)) for tkl in range(9, 16)],
    ("tkl 15 without token bytes", h("4f 01 00 01")),
    ("truncated token", h("48 01 00 01 01 02 03 04")),
    ("token truncated by one", h("42 01 00 01 aa")),
    ("delta nibble 15", h("40 01 00 01 f0")),
    ("delta nibble 15 with length", h("40 01 00 01 f1 00")),
    ("length nibble 15", h("40 01 00 01 bf")),
    ("length nibble 15 delta 0", h("40 01 00 01 0f 00")),
    ("delta 13 missing extension", h("40 01 00 01 d0")),
    ("delta 14 missing extension", h("40 01 00 01 e0")),
    ("delta 14 half extension", h("40 01 00 01 e0 00")),
    ("length 13 missing extension", h("40 01 00 01 bd")),
    ("length 14 missing extension", h("40 01 00 01 be")),
    ("length 14 half extension", h("40 01 00 01 be 00")),
    ("delta 13 ok, length 13 missing", h("40 01 00 01 dd 00")),
    ("value past the end", h("40 01 00 01 b5 61 62")),
    ("extended value past the end", h("40 01 00 01 bd 00") + b"a" * 12),
    ("value past the end before marker", h("40 01 00 01 b3 61 ff")),
    ("payload marker without payload", h("40 01 00 01 ff")),
    ("payload marker after option", h("40 01 00 01 b1 61 ff")),
    ("payload marker after token", h("41 45 00 01 aa ff")),
    ("empty message with token", h("41 00 00 01 aa")),
    ("empty message with option", h("40 00 00 01 b1 61")),
    ("empty message with payload", h("40 00 00 01 ff 61")),
    ("empty message with marker", h("40 00 00 01 ff")),
    ("empty ack with payload", h("60 00 00 01 ff 61")),
    ("option number above 65535", h("40 01 00 01 e0 ff ff")),
    ("cumulative option number above 65535", h("40 01 00 01 e0 fe f1 e0 00 00")),
    # The codec keeps at most 64 options (MAX_OPTIONS in _codec.pxd).
    ("65 options", h("40 01 00 01 b0") + bytes(64)),
]


@pytest.mark.parametrize("wire", [v[1] for v in FORMAT_ERRORS], ids=[v[0] for v in FORMAT_ERRORS])
def test_format_error(wire: bytes) -> None:
    with pytest.raises(MessageFormatError) as info:
        parse(wire)
    assert "format error" in str(info.value)
    assert ref.reference_parse(wire) == ref.FORMAT_ERROR


IGNORED = [
    ("empty datagram", b""),
    ("one byte", h("40")),
    ("three bytes", h("40 01 00")),
    ("version 0", h("00 01 00 01")),
    ("version 2", h("80 01 00 01")),
    ("version 3", h("c0 01 00 01 b1 61")),
    ("version 0 with bad tkl", h("0f 01 00 01")),
    ("version 2 empty message with payload", h("80 00 00 01 ff 61")),
]


@pytest.mark.parametrize("wire", [v[1] for v in IGNORED], ids=[v[0] for v in IGNORED])
def test_ignored(wire: bytes) -> None:
    """Shorter than a header or not version 1: ignored silently, so a distinct message."""
    with pytest.raises(MessageFormatError) as info:
        parse(wire)
    assert isinstance(info.value, ValueError)
    assert str(info.value)
    assert "format error" not in str(info.value)
    assert ref.reference_parse(wire) == ref.IGNORE


def test_ignore_messages() -> None:
    with pytest.raises(MessageFormatError, match="empty"):
        parse(b"")
    with pytest.raises(MessageFormatError, match="version"):
        parse(h("80 01 00 01"))
    with pytest.raises(MessageFormatError, match="version"):
        parse(h("40 01"))


def test_64_options_are_accepted() -> None:
    msg = parse(h("40 01 00 01 b0") + bytes(63))
    assert msg.options == [(11, b"")] * 64


# ---------------------------------------------------------------------------------------------
# Option problems (§5.4.1 critical/elective, §5.4.5 repeats, §5.7.2 proxying)


def opt(number: int, value: bytes = b"") -> bytes:
    """A request carrying one option."""
    return encode(CON, GET, 1, b"", [(number, value)], b"")


@pytest.mark.parametrize(
    ("name", "wire", "problems", "options"),
    [
        ("unknown critical 9", opt(9), PROBLEM_BAD_CRITICAL, []),
        ("unknown critical 9 with value", opt(9, b"abc"), PROBLEM_BAD_CRITICAL, []),
        ("unknown critical 65535", opt(65535), PROBLEM_BAD_CRITICAL, []),
        ("unknown elective 10", opt(10, b"x"), 0, [(10, b"x")]),
        ("unknown elective 0 (reserved)", opt(0), 0, [(0, b"")]),
        ("unknown elective 65534", opt(65534, b"q"), 0, [(65534, b"q")]),
        ("uri-host length 0", opt(3), PROBLEM_BAD_CRITICAL, []),
        ("uri-host length 1", opt(3, b"h"), 0, [(3, b"h")]),
        ("accept 3 bytes", opt(17, b"\x00\x00\x28"), PROBLEM_BAD_CRITICAL, []),
        ("accept 2 bytes", opt(17, b"\x00\x28"), 0, [(17, b"\x00\x28")]),
        ("if-none-match with value", opt(5, b"\x00"), PROBLEM_BAD_CRITICAL, []),
        ("uri-port 3 bytes", opt(7, b"\x00\x16\x33"), PROBLEM_BAD_CRITICAL, []),
        ("uri-path 256 bytes", opt(11, b"p" * 256), PROBLEM_BAD_CRITICAL, []),
        ("max-age 5 bytes", opt(14, bytes(5)), 0, []),
        ("max-age 4 bytes", opt(14, bytes(4)), 0, [(14, bytes(4))]),
        ("etag length 0", opt(4), 0, []),
        ("etag 9 bytes", opt(4, bytes(9)), 0, []),
        ("observe 4 bytes", opt(6, bytes(4)), 0, []),
        ("content-format 3 bytes", opt(12, bytes(3)), 0, []),
        ("hop-limit length 0", opt(16), 0, []),
        ("hop-limit 2 bytes", opt(16, b"\x00\x10"), 0, []),
        ("echo 41 bytes", opt(252, bytes(41)), 0, []),
        ("echo 40 bytes", opt(252, bytes(40)), 0, [(252, bytes(40))]),
        ("no-response 2 bytes", opt(258, b"\x00\x02"), 0, []),
        ("request-tag 9 bytes", opt(292, bytes(9)), 0, []),
        (
            "proxy-uri",
            opt(35, b"coap://example.org/"),
            PROBLEM_PROXY,
            [(35, b"coap://example.org/")],
        ),
        ("proxy-uri 1034 bytes", opt(35, b"u" * 1034), PROBLEM_PROXY, [(35, b"u" * 1034)]),
        ("proxy-uri 1035 bytes", opt(35, b"u" * 1035), PROBLEM_BAD_CRITICAL, []),
        ("proxy-uri empty", opt(35), PROBLEM_BAD_CRITICAL, []),
        ("proxy-scheme", opt(39, b"coap"), PROBLEM_PROXY, [(39, b"coap")]),
        ("proxy-scheme empty", opt(39), PROBLEM_BAD_CRITICAL, []),
    ],
)
def test_option_problems(name: str, wire: bytes, problems: int, options: list) -> None:
    msg = parse(wire)
    assert msg.problems == problems
    assert msg.options == options


def test_repeated_non_repeatable_critical_is_a_problem() -> None:
    # Two Accept (17, critical, not repeatable): "unrecognised" second one (§5.4.5) -> 4.02.
    msg = parse(encode(CON, GET, 1, b"", [(17, b"\x28"), (17, b"\x32")], b""))
    assert msg.problems & PROBLEM_BAD_CRITICAL
    assert msg.options == [(17, b"\x28")]
    assert msg.accept == 40


def test_repeated_non_repeatable_elective_is_dropped() -> None:
    msg = parse(encode(CON, GET, 1, b"", [(14, b"\x3c"), (14, b"\x05"), (14, b"")], b""))
    assert msg.problems == 0
    assert msg.options == [(14, b"\x3c")]


def test_repeatable_options_keep_order() -> None:
    options = [(1, b""), (1, b"\x01"), (4, b"e1"), (4, b"e2"), (8, b"l"), (8, b"m"), (11, b"z")]
    options += [(11, b"a"), (15, b"q=1"), (15, b"a=2"), (20, b"x"), (20, b"y")]
    options += [(292, b""), (292, b"t")]
    wire = encode(CON, GET, 1, b"", options, b"")
    msg = parse(wire)
    assert msg.problems == 0
    assert msg.options == options
    assert msg.to_bytes() == wire


def test_problem_does_not_hide_later_options() -> None:
    options = [(9, b"bad"), (11, b"a"), (35, b"coap://x"), (60, b"\x10")]
    msg = parse(encode(CON, POST, 1, b"", options, b"body"))
    assert msg.problems == PROBLEM_BAD_CRITICAL | PROBLEM_PROXY
    assert msg.options == [(11, b"a"), (35, b"coap://x"), (60, b"\x10")]
    assert msg.payload == b"body"


def test_dropped_bad_length_then_repeat_is_still_dropped() -> None:
    # The first Max-Age is unrecognised (5 bytes); a second one is an extra occurrence.
    msg = parse(encode(CON, GET, 1, b"", [(14, bytes(5)), (14, b"\x01")], b""))
    assert msg.problems == 0
    assert msg.options == []


def test_empty_message_has_no_problems() -> None:
    msg = parse(h("40 00 00 01"))
    assert msg.problems == 0
    assert msg.is_empty


def test_registry() -> None:
    assert set(OPTION_NAMES) == set(ref.OPTION_RULES)
    assert OPTION_NUMBERS["Uri-Path"] == 11
    assert OPTION_NUMBERS["Proxy-Uri"] == 35
    assert OPTION_NUMBERS["Block2"] == 23
    assert OPTION_NAMES[258] == "No-Response"
    assert {OPTION_NUMBERS[n] for n in OPTION_NAMES.values()} == set(OPTION_NAMES)
    assert set(OPTION_FORMATS) == set(OPTION_NAMES)


# ---------------------------------------------------------------------------------------------
# Message helpers


def test_uri_helpers() -> None:
    msg = parse(h("40 01 00 01 b1 61 02 62 63 00 43 78 3d 31 04 79 3d c3 a9"))
    assert msg.uri_path == "a/bc/"
    assert msg.uri_path_segments == ["a", "bc", ""]
    assert msg.uri_query == ["x=1", "y=é"]
    assert Message().uri_path == ""
    assert Message().uri_query == []


def test_uint_helpers() -> None:
    msg = Message(CON, GET, 1)
    msg.add_option(12, 0).add_option(17, 50).add_option(6, 0x10203).add_option(14, 3600)
    assert msg.options == [(6, b"\x01\x02\x03"), (12, b""), (14, b"\x0e\x10"), (17, b"\x32")]
    assert (msg.observe, msg.content_format, msg.max_age, msg.accept) == (0x10203, 0, 3600, 50)
    assert msg.uint_option(60) is None
    assert Message().content_format is None
    assert parse(msg.to_bytes()).accept == 50


def test_add_option_ordering() -> None:
    msg = Message(CON, GET, 1)
    msg.add_option(15, "b=2").add_option(11, "x").add_option(15, "a=1").add_option(11, "y")
    msg.add_option(3, "host").add_option(60, 5).add_option(11, b"z")
    assert msg.options == [
        (3, b"host"),
        (11, b"x"),
        (11, b"y"),
        (11, b"z"),
        (15, b"b=2"),
        (15, b"a=1"),
        (60, b"\x05"),
    ]
    assert msg.uri_path == "x/y/z"


def test_add_option_value_types() -> None:
    msg = Message()
    msg.add_option(2, bytearray(b"ba")).add_option(4, memoryview(b"mv")).add_option(8, "é")
    assert msg.options == [(2, b"ba"), (4, b"mv"), (8, "é".encode())]
    with pytest.raises(TypeError):
        msg.add_option(11, 1.5)
    with pytest.raises(ValueError):
        msg.add_option(14, -1)


def test_set_and_remove_option() -> None:
    msg = Message(CON, GET, 1)
    msg.add_option(11, "a").add_option(11, "b").add_option(12, 0).add_option(15, "q")
    msg.set_option(11, "only")
    assert msg.options == [(11, b"only"), (12, b""), (15, b"q")]
    msg.set_option(14, 60)
    assert msg.options == [(11, b"only"), (12, b""), (14, b"\x3c"), (15, b"q")]
    msg.remove_option(12).remove_option(99)
    assert msg.options == [(11, b"only"), (14, b"\x3c"), (15, b"q")]
    assert msg.option(11) == b"only"
    assert msg.option(12) is None
    assert msg.option_values(15) == [b"q"]
    assert msg.has_option(14)
    assert not msg.has_option(12)


def test_option_first_value() -> None:
    msg = Message(options=[(4, b"e1"), (4, b"e2")])
    assert msg.option(4) == b"e1"
    assert msg.option_values(4) == [b"e1", b"e2"]


def test_to_bytes_sorts_options_stably() -> None:
    msg = Message(CON, GET, 1, b"", [(15, b"q1"), (11, b"a"), (15, b"q2"), (11, b"b")])
    wire = msg.to_bytes()
    assert wire == encode(CON, GET, 1, b"", [(11, b"a"), (11, b"b"), (15, b"q1"), (15, b"q2")], b"")


def test_to_bytes_errors() -> None:
    with pytest.raises(ValueError, match="token"):
        Message(CON, GET, 1, bytes(9)).to_bytes()
    with pytest.raises(ValueError):
        Message(CON, GET, 1, b"", [(65536, b"")]).to_bytes()
    with pytest.raises(ValueError):
        Message(CON, GET, 1, b"", [(-1, b"")]).to_bytes()
    # The longest value the option length field can express is 65535 + 269.
    assert len(Message(CON, GET, 1, b"", [(2, bytes(65804))]).to_bytes()) == 4 + 3 + 65804
    with pytest.raises(ValueError):
        Message(CON, GET, 1, b"", [(2, bytes(65805))]).to_bytes()


def test_to_bytes_8_byte_token() -> None:
    assert Message(CON, GET, 1, b"12345678").to_bytes() == h("48 01 00 01") + b"12345678"


def test_code_classes() -> None:
    assert Message(code=1).is_request and not Message(code=1).is_response
    assert Message(code=0x45).is_response and not Message(code=0x45).is_request
    assert Message(code=0).is_empty
    assert code_text(0x45) == "2.05"
    assert code_text(0x84) == "4.04"
    assert code_text(0xA5) == "5.05"


def test_repr() -> None:
    text = repr(parse(h("41 01 7d 34 2a bb") + TEMPERATURE))
    assert "CON" in text and "GET" in text and "Uri-Path" in text and "2A" in text


def test_encode_uint() -> None:
    assert encode_uint(0) == b""
    assert encode_uint(1) == b"\x01"
    assert encode_uint(255) == b"\xff"
    assert encode_uint(256) == b"\x01\x00"
    assert encode_uint(0xFFFFFFFF) == b"\xff\xff\xff\xff"
    with pytest.raises(ValueError):
        encode_uint(-1)
    assert decode_uint(b"") == 0
    assert decode_uint(b"\x00\x01\x00") == 256


# ---------------------------------------------------------------------------------------------
# Property tests


def examples(n: int) -> int:
    """n examples, or more if the loaded Hypothesis profile asks for more (e.g. "fuzz")."""
    return max(n, settings().max_examples)


REGISTRY_NUMBERS = sorted(ref.OPTION_RULES)
option_numbers = st.one_of(
    st.sampled_from([*REGISTRY_NUMBERS, 0, 2, 9, 10, 12, 13, 268, 269, 270, 65534, 65535]),
    st.integers(0, 65535),
)
option_values = st.one_of(st.binary(max_size=9), st.binary(max_size=300))
options_lists = st.lists(st.tuples(option_numbers, option_values), max_size=16)


@st.composite
def messages(draw):
    return (
        draw(st.integers(0, 3)),
        draw(st.integers(1, 255)),  # code 0 (Empty) must carry nothing; tested apart
        draw(st.integers(0, 0xFFFF)),
        draw(st.binary(max_size=8)),
        sorted(draw(options_lists), key=lambda o: o[0]),
        draw(st.binary(max_size=300)),
    )


@settings(max_examples=examples(300), deadline=None)
@given(messages())
def test_built_message_round_trip(m: tuple) -> None:
    type_, code, mid, token, options, payload = m
    wire = Message(type_, code, mid, token, list(options), payload).to_bytes()
    assert wire == encode(*m)
    kept, problems, dropped = ref.option_rules(options)
    msg = parse(wire)
    assert fields(msg) == (type_, code, mid, token, kept, payload)
    assert msg.problems == problems
    again = msg.to_bytes()
    assert fields(parse(again)) == fields(msg)
    if dropped == 0:
        assert again == wire


@settings(max_examples=examples(300), deadline=None)
@given(messages())
def test_canonical_message_is_reproduced(m: tuple) -> None:
    """serialise(parse(x)) == x when every option is kept (the encoding is unique)."""
    type_, code, mid, token, options, payload = m
    kept, _, _ = ref.option_rules(options)
    wire = encode(type_, code, mid, token, kept, payload)
    assert parse(wire).to_bytes() == wire


@given(st.integers(0, 3), st.integers(0, 0xFFFF))
def test_empty_message_round_trip(type_: int, mid: int) -> None:
    wire = Message(type_, 0, mid).to_bytes()
    assert wire == bytes([0x40 | type_ << 4, 0, mid >> 8, mid & 0xFF])
    assert fields(parse(wire)) == (type_, 0, mid, b"", [], b"")


header_first_byte = st.integers(0, 0x3F).map(lambda b: 0x40 | b)
datagrams = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda first, rest: bytes([first]) + rest, header_first_byte, st.binary(max_size=80)),
    st.builds(
        lambda first, code, rest: bytes([first, code]) + rest,
        st.integers(0x40, 0x48),
        st.integers(0, 255),
        st.binary(min_size=2, max_size=120),
    ),
)


@settings(max_examples=examples(1000), deadline=None)
@given(datagrams)
@example(h("40 01 00 01 e0 ff ff"))
@example(h("40 01 00 01 dd"))
def test_random_bytes_parse_or_format_error(data: bytes) -> None:
    try:
        msg = parse(data)
    except MessageFormatError:
        return
    assert isinstance(msg, Message)
    assert len(msg.token) <= 8
    msg.to_bytes()


@settings(max_examples=examples(1000), deadline=None)
@given(datagrams)
def test_random_bytes_match_reference(data: bytes) -> None:
    """Differential: accept/reject, every field, problems, re-serialisation (fuzz oracle)."""
    ref.check(data)


@settings(max_examples=examples(200), deadline=None)
@given(messages(), st.data())
def test_mutated_messages_match_reference(m: tuple, data) -> None:
    wire = bytearray(encode(*m))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    ref.check(bytes(wire[:cut]))
    ref.check(bytes(wire))
