"""Replay the reference server's wire capture (reference-transcript-udp.txt) and compare.

Every request of the capture is sent, in order and with the captured MID and token, to a fresh
plugtest endpoint; its first answer must match the captured one: type, code, options and
payload byte for byte. What may differ is listed, with the reason, in DIFFERENCES and
VOLATILE: the stricter answers of plugtest-spec.md §1.9, and values that depend on the clock or
on state that the capture's server had from earlier runs.
"""

from __future__ import annotations

import ast
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from extplugtest.coap._codec import OPTION_NUMBERS, Message, encode_uint, parse
from extplugtest.coap.codes import Type

#: a copy of shared/reference/plugtest-transcript-udp.txt (the reference server on the wire)
TRANSCRIPT = Path(__file__).with_name("reference-transcript-udp.txt")
TYPES = {"CON": Type.CON, "NON": Type.NON, "ACK": Type.ACK, "RST": Type.RST}
OPTION = re.compile(r'([\w-]+)(?:\(num=(\d+),m=(\d),szx=(\d)/\d+\)|=("(?:[^"\\]|\\.)*"|\S*))')
TIME = re.compile(rb"\d\d:\d\d:\d\d")

#: case title -> (type, code) we answer instead, and why (plugtest-spec.md §1.9)
DIFFERENCES = {
    "unknown critical option 9 (CON)": ("ACK", 0x82),  # 4.02 Bad Option (RFC 7252 §5.4.1)
    "unknown critical option 9 (NON)": ("NON", 0x82),
    "Proxy-Uri": ("ACK", 0xA5),  # 5.05 Proxying Not Supported (§5.7.2)
    "TKL=9 (format error)": ("RST", 0),  # a malformed CON is rejected (§4.2)
    "GET /large Block2 beyond end 40/0/64": ("ACK", 0x82),  # 4.02: no such block
}


@dataclass
class Line:
    type: str
    code: int
    mid: int | None
    token: bytes
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""


@dataclass
class Case:
    title: str
    request: Line | None = None
    response: Line | None = None  # None: nothing expected


def _option_value(name: str, raw: str) -> bytes:
    if raw.startswith('"'):
        return ast.literal_eval(raw).encode()
    if raw.startswith("0x"):
        return bytes.fromhex(raw[2:])
    return encode_uint(int(raw))


def parse_line(text: str) -> Line:
    kind, rest = text.split(" ", 1)
    code_text, _, rest = rest.partition(" ") if rest[0].isdigit() else ("0.00", "", rest)
    cls, detail = code_text.split(".")
    fields = dict(re.findall(r"(mid|tok)=(\S+)", rest))
    options = []
    for match in OPTION.finditer(rest):
        name = match.group(1)
        if name in ("mid", "tok"):
            continue
        if match.group(2) is not None:  # Block1/Block2(num=,m=,szx=)
            num, more, szx = (int(match.group(i)) for i in (2, 3, 4))
            options.append((OPTION_NUMBERS[name], encode_uint((num << 4) | (more << 3) | szx)))
        elif name.startswith("opt"):
            options.append((int(name[3:]), _option_value(name, match.group(5))))
        else:
            options.append((OPTION_NUMBERS[name], _option_value(name, match.group(5))))
    token = fields.get("tok", "-")
    return Line(
        kind,
        (int(cls) << 5) | int(detail),
        int(fields["mid"]) if "mid" in fields else None,
        b"" if token == "-" else bytes.fromhex(token),
        sorted(options, key=lambda entry: entry[0]),
    )


def load_cases() -> list[Case]:
    cases: list[Case] = []
    last: Line | None = None
    for raw in TRANSCRIPT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("== "):
            cases.append(Case(line[3:]))
        elif line.startswith(">> "):
            if cases[-1].request is not None or not cases[-1].title:  # answers to notifications
                continue
            last = cases[-1].request = parse_line(line[3:])
        elif line.startswith("<< "):
            if cases[-1].request is None:  # a notification the capture waited for: no request
                cases[-1].request = cases[-1].response = None
                cases[-1].title = ""
                continue
            if line.startswith("<< (") or cases[-1].response is not None:
                last = None
                continue
            last = cases[-1].response = parse_line(line[3:])
        elif line.startswith("payload(") and last is not None:
            last.payload = ast.literal_eval(line.split("=", 1)[1])
    return [case for case in cases if case.request is not None and case.title]


def encode(line: Line) -> bytes:
    if len(line.token) > 8:  # TKL 9: not a message our codec would write
        assert line.mid is not None
        header = bytes([0x40 | (TYPES[line.type] << 4) | len(line.token), line.code])
        return header + line.mid.to_bytes(2, "big") + line.token
    message = Message(TYPES[line.type], line.code, line.mid or 0, line.token, payload=line.payload)
    for number, value in line.options:
        message.add_option(number, value)
    return message.to_bytes()


CASES = load_cases()


def exchange(sock: socket.socket, address: tuple, request: Line) -> Message | None:
    """Send *request* and return its first answer. Notifications of earlier observations
    that arrive meanwhile are acknowledged and skipped; a separate response after an empty
    ACK is acknowledged too (the empty ACK is the answer compared)."""
    sock.sendto(encode(request), address)
    answer = None
    for _ in range(20):
        try:
            message = parse(sock.recv(2048))
        except TimeoutError:
            break
        ours = message.token == request.token and message.code != 0
        if message.type == Type.CON:
            sock.sendto(Message(Type.ACK, 0, message.mid).to_bytes(), address)
        if answer is None and (ours or (message.code == 0 and message.mid == request.mid)):
            answer = message
            if not (message.type == Type.ACK and message.code == 0):
                break  # an empty ACK: the separate response follows
        elif answer is not None and ours:
            break
    return answer


@pytest.fixture(scope="module")
def replay(start_extserver):
    """One fresh server for the whole capture, in order: the capture is stateful."""
    server = start_extserver("--notify-interval", "5s")
    address = ("127.0.0.1", server.plugtest_port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.bind(("127.0.0.1", 0))
    answers: dict[str, Message] = {}
    for case in CASES:
        assert case.request is not None
        answer = exchange(sock, address, case.request)
        if answer is not None:
            answers[case.title] = answer
    sock.close()
    return answers


@pytest.mark.parametrize("case", CASES, ids=[case.title for case in CASES])
def test_answer_matches_the_reference(replay, case):
    answer = replay.get(case.title)
    if case.title in DIFFERENCES:
        kind, code = DIFFERENCES[case.title]
        assert answer is not None and (answer.type, answer.code) == (TYPES[kind], code)
        return
    expected = case.response
    assert expected is not None, "the capture has no answer for this request"
    assert answer is not None, "no answer"
    assert (answer.type, answer.code) == (TYPES[expected.type], expected.code)
    assert answer.token == expected.token
    if expected.type == "ACK":
        assert answer.mid == expected.mid
    ours, theirs = answer.options, expected.options
    observe = OPTION_NUMBERS["Observe"]
    size2 = OPTION_NUMBERS["Size2"]
    if any(number == observe for number, _ in theirs):  # the sequence number is per server
        ours = [(n, v) for n, v in ours if n != observe]
        theirs = [(n, v) for n, v in theirs if n != observe]
        assert answer.observe is not None
    if "well-known" in case.title:  # the capture's server had resources from earlier runs
        ours = [(n, v) for n, v in ours if n != size2]
        theirs = [(n, v) for n, v in theirs if n != size2]
    if "/large-create" in case.title:  # ... and had created children before: /4, ours /1
        location = OPTION_NUMBERS["Location-Path"]
        ours = [(n, b"N" if n == location and v.isdigit() else v) for n, v in ours]
        theirs = [(n, b"N" if n == location and v.isdigit() else v) for n, v in theirs]
    assert sorted(ours) == sorted(theirs)
    if TIME.fullmatch(expected.payload):
        assert TIME.fullmatch(answer.payload)
    else:
        assert answer.payload == expected.payload
