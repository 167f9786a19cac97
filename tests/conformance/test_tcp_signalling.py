"""RFC 8323 checks the plugtest has no test case for (plugtest-spec.md §3.4): the server's CSM
comes first and unasked, Ping gets a Pong with the same token, Release and Abort end the
connection, and a notification's Observe value is only ever advisory (§7.1: clients must ignore
it; ours still increases). Run over the ``tcp`` and ``tls`` transports (the raw-socket checks
over ``tcp`` only)."""

from __future__ import annotations

import socket
import time

import pytest

from extplugtest.coap import _tcp_codec as tcp
from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code


@pytest.fixture
def tcp_client(client):
    if client.has_message_types:
        pytest.skip(f"RFC 8323 signalling; {client.transport} has none")
    return client


def raw_connection(target) -> socket.socket:
    return socket.create_connection((target.host, target.port), timeout=5)


def read_frames(sock: socket.socket, count: int = 0, timeout: float = 5.0) -> tuple[list, bool]:
    """Frames until *count* of them arrived (0: until EOF) or *timeout* s; and EOF seen?"""
    buffer, frames = bytearray(), []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (count and len(frames) >= count):
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            data = b""
        if not data:
            return frames, True
        buffer += data
        while (size := tcp.frame_size(buffer)) and len(buffer) >= size:
            frames.append(tcp.decode(bytes(buffer[:size])))
            del buffer[:size]
    return frames, False


def test_server_csm_comes_first(tcp_client):
    """§3.3: each side's first message is a CSM; the server does not wait for the client's."""
    answer = tcp_client.request(Code.GET, "test")
    assert answer.code == Code.CONTENT
    csm = tcp_client.signals[0]
    assert csm.code == tcp.CSM, tcp_client.signals
    sizes = [int.from_bytes(v, "big") for n, v in csm.options if n == tcp.MAX_MESSAGE_SIZE]
    assert not sizes or sizes[0] >= tcp.BASE_MESSAGE_SIZE


def test_csm_without_waiting_for_the_client(target, transport):
    if transport != "tcp":
        pytest.skip("RFC 8323 signalling")
    with raw_connection(target) as sock:
        frames, _ = read_frames(sock, count=1)
    assert frames and frames[0].code == tcp.CSM


def test_ping_is_answered_with_pong_and_the_same_token(target, transport):
    if transport != "tcp":
        pytest.skip("RFC 8323 signalling")
    with raw_connection(target) as sock:
        sock.sendall(tcp.encode(Message(code=tcp.CSM)) + bytes.fromhex("01e242"))
        frames, _ = read_frames(sock, count=2)
    assert [(f.code, f.token) for f in frames[:2]] == [(tcp.CSM, b""), (tcp.PONG, b"\x42")]


def test_release_and_abort_end_the_connection(target, transport):
    if transport != "tcp":
        pytest.skip("RFC 8323 signalling")
    for signal in (tcp.RELEASE, tcp.ABORT):
        with raw_connection(target) as sock:
            sock.sendall(tcp.encode(Message(code=tcp.CSM)) + tcp.encode(Message(code=signal)))
            frames, eof = read_frames(sock)
        assert eof and [f.code for f in frames] == [tcp.CSM]


def test_malformed_message_is_answered_with_abort(target, transport):
    """§5.6: a message format error over a reliable transport is answered with Abort."""
    if transport != "tcp":
        pytest.skip("RFC 8323 signalling")
    with raw_connection(target) as sock:
        sock.sendall(tcp.encode(Message(code=tcp.CSM)) + bytes.fromhex("2001f000"))
        frames, eof = read_frames(sock)
    assert eof and [f.code for f in frames] == [tcp.CSM, tcp.ABORT]
    assert frames[1].payload, "Abort without a diagnostic payload"


def test_observe_cancel_by_get_observe_1(tcp_client, target):
    """§7 keeps RFC 7641's GET Observe=1 as the way to cancel without closing."""
    with tcp_client.observe("obs") as obs:
        assert obs.registration.observe is not None
        obs.next(target.notification_timeout(obs.registration.max_age))
        cancel = obs.cancel(timeout=5.0)
        assert cancel.code == Code.CONTENT and cancel.observe is None
        assert obs.silence(target.quiet) == []
