#!/usr/bin/env python3
"""atheris fuzz target for the CoAP codec (``extplugtest.coap._codec.parse``).

Run it as ``python tests/fuzz/fuzz_codec.py -atheris_runs=N [libFuzzer flags] [CORPUS_DIR ...]``;
``--seed-corpus=DIR`` writes a few valid messages into DIR and fuzzes with DIR as the corpus.

The oracle, for every input:

* ``parse`` returns a ``Message`` or raises ``MessageFormatError``; anything else is a crash;
* it agrees with ``reference_parse`` below, a slow, independent pure-Python reading of RFC 7252
  section 3 (plus the option rules of section 5.4 and the codec's documented 64-option limit):
  accept/reject, "ignore" versus "format error", every field, the kept options and ``problems``;
* ``to_bytes()`` of a parsed message parses again to an equal message, and gives back the very
  same bytes when no option was dropped (the CoAP option encoding is unique, so a message whose
  options were all kept is canonical).

Coverage feedback: the codec is compiled Cython, which atheris's bytecode instrumentation cannot
see into (native coverage needs a clang ``-fsanitize=fuzzer-no-link`` build, see README.md).
``instrument_imports`` instruments the Python parts of the ``extplugtest`` package, and the
reference parser is instrumented too: it branches on the same structure (header, nibbles,
extended forms, option registry), so its coverage steers libFuzzer through the message format.

This module imports neither atheris nor the codec at import time, so that unit tests can reuse
``reference_parse``.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------
# Reference model (pure Python, written from the RFCs, independent of _codec.pyx)

#: number -> (minimum length, maximum length, repeatable).
#: RFC 7252 §5.10 table 4, RFC 7641 §2 (Observe), RFC 7959 §2.1 and §4 (Block1/2, Size2),
#: RFC 7967 §2 (No-Response), RFC 9175 §2.2.1 and §3.2.1 (Echo, Request-Tag),
#: RFC 8768 §3 (Hop-Limit).
OPTION_RULES: dict[int, tuple[int, int, bool]] = {
    1: (0, 8, True),  # If-Match
    3: (1, 255, False),  # Uri-Host
    4: (1, 8, True),  # ETag
    5: (0, 0, False),  # If-None-Match
    6: (0, 3, False),  # Observe
    7: (0, 2, False),  # Uri-Port
    8: (0, 255, True),  # Location-Path
    11: (0, 255, True),  # Uri-Path
    12: (0, 2, False),  # Content-Format
    14: (0, 4, False),  # Max-Age
    15: (0, 255, True),  # Uri-Query
    16: (1, 1, False),  # Hop-Limit
    17: (0, 2, False),  # Accept
    20: (0, 255, True),  # Location-Query
    23: (0, 3, False),  # Block2
    27: (0, 3, False),  # Block1
    28: (0, 4, False),  # Size2
    35: (1, 1034, False),  # Proxy-Uri
    39: (1, 255, False),  # Proxy-Scheme
    60: (0, 4, False),  # Size1
    252: (1, 40, False),  # Echo
    258: (0, 1, False),  # No-Response
    292: (0, 8, True),  # Request-Tag
}
PROXY_OPTIONS = frozenset((35, 39))
MAX_OPTIONS = 64  # the codec's documented limit on kept options (_codec.pxd)
PROBLEM_BAD_CRITICAL = 1
PROBLEM_PROXY = 2

IGNORE = "ignore"  # shorter than a header, or not version 1: silently ignored (§3)
FORMAT_ERROR = "format-error"  # §4.2/§4.3: RST for a CON, silently dropped otherwise


class Reference(NamedTuple):
    """What a well-formed datagram must parse to."""

    type: int
    code: int
    mid: int
    token: bytes
    options: tuple[tuple[int, bytes], ...]
    payload: bytes
    problems: int
    dropped: int  # options left out as "unrecognised" (§5.4.1)

    @property
    def fields(self) -> tuple:
        return (self.type, self.code, self.mid, self.token, self.options, self.payload)


def option_rules(options: list[tuple[int, bytes]]) -> tuple[list[tuple[int, bytes]], int, int]:
    """Apply §5.4.1/§5.4.5 to options in wire order: (kept options, problems, dropped count).

    An unknown option, a known one with a length out of range, and any further occurrence of a
    non-repeatable one are unrecognised: critical (odd) ones set PROBLEM_BAD_CRITICAL, elective
    ones are ignored. Unknown elective options are kept (the handler may still look at them).
    Proxy-Uri / Proxy-Scheme set PROBLEM_PROXY.
    """
    kept: list[tuple[int, bytes]] = []
    problems = 0
    dropped = 0
    seen: set[int] = set()
    for number, value in options:
        rule = OPTION_RULES.get(number)
        if rule is None:
            unrecognised = number % 2 == 1
        else:
            low, high, repeatable = rule
            unrecognised = not low <= len(value) <= high or (not repeatable and number in seen)
        seen.add(number)
        if unrecognised:
            dropped += 1
            if number % 2 == 1:
                problems |= PROBLEM_BAD_CRITICAL
            continue
        if number in PROXY_OPTIONS:
            problems |= PROBLEM_PROXY
        kept.append((number, value))
    return kept, problems, dropped


def _extended(data: bytes, pos: int, nibble: int) -> tuple[int, int] | None:
    """Decode an option delta or length nibble (§3.1); None for a format error."""
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos + 1 > len(data):
            return None
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            return None
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    return None  # 15 is reserved


def reference_parse(data: bytes) -> Reference | str:
    """Parse like RFC 7252 §3 says; IGNORE, FORMAT_ERROR or a Reference."""
    data = bytes(data)
    if len(data) < 4 or data[0] >> 6 != 1:
        return IGNORE
    tkl = data[0] & 0x0F
    if tkl > 8 or 4 + tkl > len(data):
        return FORMAT_ERROR
    kind = (data[0] >> 4) & 3
    code = data[1]
    mid = int.from_bytes(data[2:4], "big")
    token = data[4 : 4 + tkl]
    if code == 0:
        # §4.1: an Empty message is the 4-byte header and nothing else.
        if len(data) != 4:
            return FORMAT_ERROR
        return Reference(kind, code, mid, token, (), b"", 0, 0)
    pos = 4 + tkl
    number = 0
    wire_options: list[tuple[int, bytes]] = []
    payload = b""
    while pos < len(data):
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == len(data):
                return FORMAT_ERROR  # payload marker followed by a zero-length payload
            payload = data[pos:]
            break
        delta = _extended(data, pos, byte >> 4)
        if delta is None:
            return FORMAT_ERROR
        pos = delta[1]
        length = _extended(data, pos, byte & 0x0F)
        if length is None:
            return FORMAT_ERROR
        pos = length[1]
        if pos + length[0] > len(data):
            return FORMAT_ERROR
        number += delta[0]
        if number > 0xFFFF:
            return FORMAT_ERROR
        wire_options.append((number, data[pos : pos + length[0]]))
        pos += length[0]
    kept, problems, dropped = option_rules(wire_options)
    if len(kept) > MAX_OPTIONS:
        return FORMAT_ERROR
    return Reference(kind, code, mid, token, tuple(kept), payload, problems, dropped)


# ---------------------------------------------------------------------------------------------
# The target

_codec = None


def _get_codec():
    global _codec
    if _codec is None:
        from extplugtest.coap import _codec as codec

        _codec = codec
    return _codec


def message_fields(msg) -> tuple:
    return (msg.type, msg.code, msg.mid, msg.token, tuple(msg.options), msg.payload)


def check(data: bytes) -> None:
    """The oracle; raises AssertionError (or whatever parse leaks) on a finding."""
    codec = _get_codec()
    expected = reference_parse(data)
    try:
        msg = codec.parse(data)
    except codec.MessageFormatError as exc:
        assert not isinstance(expected, Reference), (
            f"parse rejected ({exc}) a message the reference accepts: {expected}"
        )
        kind = FORMAT_ERROR if "format error" in str(exc) else IGNORE
        assert kind == expected, f"parse says {exc!r}, the reference says {expected}"
        return
    assert isinstance(expected, Reference), f"parse accepted a message that is {expected}"
    got = message_fields(msg)
    assert got == expected.fields, f"parsed {got}, expected {expected.fields}"
    assert msg.problems == expected.problems, f"problems {msg.problems}, expected {expected}"
    wire = msg.to_bytes()
    again = codec.parse(wire)
    assert message_fields(again) == got, f"re-parse of {wire.hex()} gave {again!r}"
    # Bad critical options are dropped, so only the proxy problem survives re-serialisation.
    assert again.problems == msg.problems & PROBLEM_PROXY
    if expected.dropped == 0:
        assert wire == data, f"canonical message re-serialised as {wire.hex()}"
    else:
        # Dropping an option never lengthens the encoding, but it can leave the length
        # unchanged: the next option's delta may then need an extended byte.
        assert wire != data and len(wire) <= len(data)


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    check(data)


#: Valid messages that make a useful starting corpus.
SEEDS: tuple[bytes, ...] = (
    bytes.fromhex("40000001"),  # CON ping
    bytes.fromhex("40017d34bb") + b"temperature",  # CON GET /temperature
    bytes.fromhex("60457d34ff") + b"22.3 C",  # ACK 2.05 with payload
    bytes.fromhex("4801abcd0102030405060708b474657374"),  # 8-byte token, Uri-Path "test"
    bytes.fromhex("50020001b3") + b"obs" + bytes.fromhex("d12440ff") + b"x",  # Size1: delta 13
    bytes.fromhex("4001000190e0fee8"),  # critical option 9, elective 65534 (delta 14)
    bytes.fromhex("40010001d916") + b"coap://a1",  # Proxy-Uri
    bytes.fromhex("40010001bd00") + b"a" * 13,  # Uri-Path with a 13-byte value (length 13)
)


def main(argv: list[str]) -> None:
    import atheris
    from seed_corpus import fuzz  # beside this file (run as a script)

    global _codec
    with atheris.instrument_imports(include=["extplugtest"]):
        from extplugtest.coap import _codec as codec
    _codec = codec
    fuzz(argv, SEEDS, check, TestOneInput, (option_rules, _extended, reference_parse, check))


if __name__ == "__main__":
    main(sys.argv)
