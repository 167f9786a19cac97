#!/usr/bin/env python3
"""atheris fuzz target for CoAP over TCP (``extplugtest.coap._tcp_codec``, RFC 8323).

Run it as ``python tests/fuzz/fuzz_tcp_codec.py -atheris_runs=N [libFuzzer flags] [CORPUS ...]``;
``--seed-corpus=DIR`` writes a few valid streams into DIR and fuzzes with DIR as the corpus.

The first input byte picks what the rest is:

* even: one frame. ``frame_size`` and ``decode`` must agree with ``reference_decode`` below, a
  slow pure-Python reading of RFC 8323 §3.2 (for requests and responses on top of the RFC 7252
  reference parser of fuzz_codec.py, for signalling messages a raw option walk), and raise
  nothing but ``MessageFormatError``; a decoded request/response must re-encode to a frame that
  decodes to the same message.
* odd: a byte stream on one connection of a ``TcpEngine`` (Max-Message-Size 1152), fed in
  chunks whose size comes from the second byte. What the engine hands to the endpoint, what it
  writes (CSM, Pongs, 4.02/5.05, answers, Abort) and whether it closes must match
  ``reference_stream``, whatever the chunking; the kept incomplete frame stays below the bound.

Coverage feedback comes from the instrumented Python parts only (the codec is compiled Cython;
see README.md). This module imports neither atheris nor the codec at import time, so that unit
tests can reuse the reference model.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, NamedTuple

_spec = importlib.util.spec_from_file_location(
    "fuzz_codec_reference_tcp", Path(__file__).with_name("fuzz_codec.py")
)
assert _spec is not None and _spec.loader is not None
udp_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(udp_reference)

# ---------------------------------------------------------------------------------------------
# Reference model (pure Python, written from RFC 8323, independent of _tcp_codec.pyx)

FORMAT_ERROR = udp_reference.FORMAT_ERROR
INCOMPLETE = "incomplete"
CSM, PING, PONG, RELEASE, ABORT = 0xE1, 0xE2, 0xE3, 0xE4, 0xE5
BAD_OPTION, PROXYING_NOT_SUPPORTED, CONTENT = 0x82, 0xA5, 0x45
STREAM_MAX_MESSAGE_SIZE = 1152  # the smallest an engine may announce (§5.3.1 base value)


class Header(NamedTuple):
    token_offset: int  # Len/TKL byte, extended length, Code
    token_length: int
    body_length: int

    @property
    def total(self) -> int:
        return self.token_offset + self.token_length + self.body_length


def reference_header(data: bytes) -> Header | str:
    """§3.2: Len 0-12 direct; 13, 14, 15: 1, 2, 4 bytes holding Len-13, Len-269, Len-65805."""
    if not data:
        return INCOMPLETE
    nibble, tkl = data[0] >> 4, data[0] & 0x0F
    if tkl > 8:
        return FORMAT_ERROR
    extended = {13: 1, 14: 2, 15: 4}.get(nibble, 0)
    if len(data) < 2 + extended:
        return INCOMPLETE
    offset = {13: 13, 14: 269, 15: 65805}.get(nibble, 0)
    length = int.from_bytes(data[1 : 1 + extended], "big") + offset if extended else nibble
    return Header(2 + extended, tkl, length)


def raw_options(body: bytes) -> tuple[list[tuple[int, bytes]], bytes] | str:
    """Options and payload without any registry (signalling options, §5.2)."""
    pos, number, options = 0, 0, []
    while pos < len(body):
        byte = body[pos]
        pos += 1
        if byte == 0xFF:
            if pos == len(body):
                return FORMAT_ERROR
            return options, body[pos:]
        delta = udp_reference._extended(body, pos, byte >> 4)
        if delta is None:
            return FORMAT_ERROR
        length = udp_reference._extended(body, delta[1], byte & 0x0F)
        if length is None:
            return FORMAT_ERROR
        pos = length[1]
        if pos + length[0] > len(body) or number + delta[0] > 0xFFFF:
            return FORMAT_ERROR
        number += delta[0]
        options.append((number, body[pos : pos + length[0]]))
        pos += length[0]
    return options, b""


class Decoded(NamedTuple):
    code: int
    token: bytes
    options: tuple[tuple[int, bytes], ...]
    payload: bytes
    problems: int


def reference_decode(frame: bytes) -> Decoded | str:
    """One whole frame: FORMAT_ERROR or what it decodes to."""
    header = reference_header(frame)
    if not isinstance(header, Header) or header.total != len(frame):
        return FORMAT_ERROR
    code = frame[header.token_offset - 1]
    token = frame[header.token_offset : header.token_offset + header.token_length]
    body = frame[header.token_offset + header.token_length :]
    if code == 0 or code >> 5 == 7:
        raw = raw_options(body)
        if isinstance(raw, str):
            return raw
        return Decoded(code, token, tuple(raw[0]), raw[1], 0)
    # Without type and MID, the rest is what RFC 7252 §3 says after the header.
    parsed = udp_reference.reference_parse(bytes((0x40 | len(token), code, 0, 0)) + token + body)
    if isinstance(parsed, str):
        return FORMAT_ERROR
    return Decoded(code, token, parsed.options, parsed.payload, parsed.problems)


class Stream(NamedTuple):
    """What one connection does with a byte stream (after our CSM went out)."""

    delivered: list[tuple[str, Decoded]]  # ("request" | "response", message) to the endpoint
    written: list[int]  # codes of the frames written after the CSM
    closed: bool
    kept: int  # bytes of an incomplete frame kept at the end


def reference_stream(data: bytes, max_message_size: int = STREAM_MAX_MESSAGE_SIZE) -> Stream:
    """The engine's rules, §3-§5: Empty messages are ignored (unparsed); a frame above
    Max-Message-Size, a TKL above 8, a format error, a reserved code class, an unknown
    signalling code or critical signalling option, or a bad CSM is answered with Abort; Ping
    gets Pong; Release and Abort close; a request with a bad critical option gets 4.02, with
    Proxy-Uri/-Scheme 5.05; every other request is delivered and answered (the stream endpoint
    answers 2.05)."""
    delivered: list[tuple[str, Decoded]] = []
    written: list[int] = []
    pos = 0
    while pos < len(data):
        header = reference_header(data[pos:])
        if header == INCOMPLETE:
            break
        if header == FORMAT_ERROR or (
            isinstance(header, Header) and header.total > max_message_size
        ):
            return Stream(delivered, [*written, ABORT], True, 0)
        assert isinstance(header, Header)
        if header.total > len(data) - pos:
            break
        frame = data[pos : pos + header.total]
        pos += header.total
        if frame[header.token_offset - 1] == 0:
            continue  # §3.4: an Empty message is ignored, whatever it carries
        message = reference_decode(frame)
        if isinstance(message, str):
            return Stream(delivered, [*written, ABORT], True, 0)
        code, kind = message.code, message.code >> 5
        if kind == 7:
            known = {CSM: (2, 4), PING: (2,), PONG: (2,), RELEASE: (2, 4), ABORT: (2,)}
            if code not in known:
                return Stream(delivered, [*written, ABORT], True, 0)
            bad = [n for n, v in message.options if n % 2 == 1 and n not in known[code]]
            if code == CSM:
                bad += [2 for n, v in message.options if n == 2 and len(v) > 4]
            if bad and code in (CSM, PING):
                return Stream(delivered, [*written, ABORT], True, 0)
            if code == PING:
                written.append(PONG)
            elif code in (RELEASE, ABORT):
                return Stream(delivered, written, True, 0)
            continue
        if kind in (1, 6):
            return Stream(delivered, [*written, ABORT], True, 0)
        if kind != 0:
            delivered.append(("response", message))
        elif message.problems & udp_reference.PROBLEM_BAD_CRITICAL:
            written.append(BAD_OPTION)
        elif message.problems & udp_reference.PROBLEM_PROXY:
            written.append(PROXYING_NOT_SUPPORTED)
        else:
            delivered.append(("request", message))
            written.append(CONTENT)
    return Stream(delivered, written, False, len(data) - pos)


# ---------------------------------------------------------------------------------------------
# The target

_codec: Any = None
_tcp: Any = None


def _modules() -> tuple[Any, Any]:
    global _codec, _tcp
    if _tcp is None:
        from extplugtest.coap import _codec as codec
        from extplugtest.coap import _tcp_codec as tcp

        _codec, _tcp = codec, tcp
    return _codec, _tcp


def decoded(message: Any) -> Decoded:
    return Decoded(
        message.code,
        message.token,
        tuple(message.options),
        message.payload,
        message.problems,
    )


def check_frame(data: bytes) -> None:
    codec, tcp = _modules()
    expected = reference_decode(data)
    header = reference_header(data)
    try:
        size = tcp.frame_size(data)
    except codec.MessageFormatError:
        assert header == FORMAT_ERROR, f"frame_size rejected a header that is {header}"
    else:
        assert size == (header.total if isinstance(header, Header) else 0), (size, header)
    try:
        message = tcp.decode(data)
    except codec.MessageFormatError as exc:
        assert expected == FORMAT_ERROR, f"decode rejected ({exc}) what decodes to {expected}"
        return
    assert isinstance(expected, Decoded), f"decode accepted a frame that is {expected}"
    got = decoded(message)
    if message.code >> 5 != 7 and message.code != 0:
        assert got == expected, f"decoded {got}, expected {expected}"
        again = tcp.decode(tcp.encode(message))
        # Bad critical options are dropped, so only the proxy problem survives re-encoding.
        assert decoded(again)[:4] == got[:4], f"re-encoding gave {again!r}"
        assert again.problems == message.problems & udp_reference.PROBLEM_PROXY
    else:
        assert got == expected._replace(problems=0), f"decoded {got}, expected {expected}"


class StreamEndpoint:
    """What the engine calls: requests are answered 2.05 at once, responses recorded."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, Any]] = []

    def on_request(self, message: Any, peer: tuple) -> Any:
        codec, _ = _modules()
        self.delivered.append(("request", message))
        return codec.Message(1, CONTENT, 0, message.token, None, b"ok")

    def on_response(self, message: Any, peer: tuple) -> None:
        self.delivered.append(("response", message))


class StreamTransport:
    """An asyncio transport stand-in that keeps what is written."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def split_frames(data: bytes) -> list[bytes]:
    _, tcp = _modules()
    frames, pos = [], 0
    while pos < len(data):
        size = tcp.frame_size(data[pos:])
        assert 0 < size <= len(data) - pos, f"the engine wrote a broken frame: {data.hex()}"
        frames.append(data[pos : pos + size])
        pos += size
    return frames


def check_stream(data: bytes, chunk: int) -> None:
    _, tcp = _modules()
    endpoint = StreamEndpoint()
    transport = StreamTransport()
    closed: list[tuple] = []
    engine = tcp.TcpEngine(
        endpoint, max_message_size=STREAM_MAX_MESSAGE_SIZE, on_close=closed.append
    )
    connection = engine.attach(transport, ("192.0.2.1", 5683))
    for start in range(0, len(data), chunk):
        engine.feed(connection, data[start : start + chunk])
        assert connection.buffered < STREAM_MAX_MESSAGE_SIZE
    expected = reference_stream(data)
    got = [(kind, decoded(message)) for kind, message in endpoint.delivered]
    assert got == expected.delivered, f"delivered {got}, expected {expected.delivered}"
    frames = split_frames(bytes(transport.written))
    assert frames and tcp.decode(frames[0]).code == CSM, "no CSM first"
    codes = [tcp.decode(frame).code for frame in frames[1:]]
    assert codes == expected.written, f"wrote {codes}, expected {expected.written}"
    assert connection.closed == expected.closed == transport.closed == bool(closed)
    assert expected.closed or connection.buffered == expected.kept


def check(data: bytes) -> None:
    """The oracle; raises AssertionError (or whatever leaks) on a finding."""
    if not data:
        return
    if data[0] % 2 == 0:
        check_frame(data[1:])
    elif len(data) > 1:
        check_stream(data[2:], 1 + data[1] % 64)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    check(data)


def reference_frame(code: int, token: bytes = b"", body: bytes = b"") -> bytes:
    """§3.2 framing of options-and-payload bytes, for the seeds and the unit tests."""
    length = len(body)
    if length < 13:
        head = bytes((length << 4 | len(token),))
    elif length < 269:
        head = bytes((0xD0 | len(token), length - 13))
    elif length < 65805:
        head = bytes((0xE0 | len(token),)) + (length - 269).to_bytes(2, "big")
    else:
        head = bytes((0xF0 | len(token),)) + (length - 65805).to_bytes(4, "big")
    return head + bytes((code,)) + token + body


#: Valid inputs that make a useful starting corpus.
SEEDS: tuple[bytes, ...] = (
    b"\x00" + bytes.fromhex("01437f"),  # 2.03 with token 7f (RFC 8323 figure 8)
    b"\x00" + bytes.fromhex("01e242"),  # Ping with token 42 (figure 15)
    b"\x00" + reference_frame(2, b"\x01\xab", b"\xb4test\xff" + b"x" * 16),  # Len 13
    b"\x00" + reference_frame(1, b"", b"\xb1a\xff" + b"b" * 266),  # Len 14
    b"\x01\x05"
    + reference_frame(CSM, b"", bytes.fromhex("22080020"))  # Max-Message-Size 2048, BWT
    + reference_frame(1, b"\x4a", b"\xb9benchmark"),
    b"\x01\x03" + reference_frame(PING, b"\x42", b"\x20") + reference_frame(RELEASE),
)


def main(argv: list[str]) -> None:
    import atheris
    from seed_corpus import fuzz  # beside this file (run as a script)

    global _codec, _tcp
    with atheris.instrument_imports(include=["extplugtest"]):
        from extplugtest.coap import _codec as codec
        from extplugtest.coap import _tcp_codec as tcp
    _codec, _tcp = codec, tcp
    fuzz(argv, SEEDS, check, TestOneInput,
         (reference_header, raw_options, reference_decode, reference_stream, check,
          udp_reference.reference_parse))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv)
