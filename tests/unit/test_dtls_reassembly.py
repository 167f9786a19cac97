"""Handshake reassembly (RFC 6347 §4.2.3) and fragmentation."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extplugtest.dtls.handshake_header import (
    HEADER_LENGTH,
    HandshakeHeader,
    encode_handshake,
    iter_fragments,
)
from extplugtest.dtls.reassembly import (
    CompleteMessage,
    Outcome,
    Reassembler,
    fragment_message,
)

Fragment = tuple[HandshakeHeader, bytes]


def _fragments(msg_type: int, seq: int, body: bytes, cuts: list[int]) -> list[Fragment]:
    """Fragments of body split at the given offsets."""
    points = sorted({0, len(body), *(c for c in cuts if 0 < c < len(body))})
    return [
        (HandshakeHeader(msg_type, len(body), seq, a, b - a), body[a:b])
        for a, b in itertools.pairwise(points)
    ] or [(HandshakeHeader.whole(msg_type, seq, 0), b"")]


def _piece(msg_type: int, seq: int, body: bytes, start: int, end: int) -> Fragment:
    return HandshakeHeader(msg_type, len(body), seq, start, end - start), body[start:end]


def _drain(reassembler: Reassembler) -> list[CompleteMessage]:
    out = []
    for _ in range(1000):  # bounded
        message = reassembler.pop()
        if message is None:
            break
        out.append(message)
    return out


# ---------------------------------------------------------------------------------------------
# The property: whatever the fragmentation, order and duplication, the message comes out whole


@given(
    body=st.binary(min_size=1, max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=20),
    recuts=st.lists(st.integers(0, 600), max_size=20),
    data=st.data(),
)
def test_any_fragmentation_order_and_duplication(
    body: bytes, cuts: list[int], recuts: list[int], data: st.DataObject
) -> None:
    # Two different fragmentations (a retransmission may be re-fragmented, pion PR #1099),
    # plus random overlapping pieces, in random order with duplicates.
    fragments = _fragments(11, 2, body, cuts) + _fragments(11, 2, body, recuts)
    starts = data.draw(st.lists(st.integers(0, len(body) - 1), max_size=5))
    fragments += [_piece(11, 2, body, s, min(len(body), s + 37)) for s in starts]
    extra = data.draw(st.lists(st.sampled_from(fragments), max_size=5))
    order = data.draw(st.permutations(fragments + extra))
    reassembler = Reassembler(next_seq=2)
    message = None
    for header, fragment in order:
        outcome = reassembler.add(header, fragment)
        if message is None:
            assert outcome in (Outcome.ACCEPTED, Outcome.DUPLICATE)
            message = reassembler.pop()
        else:  # a retransmission of a message already handed out
            assert outcome is Outcome.OLD
    assert message == CompleteMessage(11, 2, body)
    assert reassembler.next_seq == 3
    assert reassembler.buffered_bytes == 0 and reassembler.buffered_messages == 0


@given(
    bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    cuts=st.lists(st.integers(1, 299), max_size=8),
    data=st.data(),
)
def test_a_shuffled_flight_comes_out_in_order(
    bodies: list[bytes], cuts: list[int], data: st.DataObject
) -> None:
    fragments: list[Fragment] = []
    for seq, body in enumerate(bodies, start=1):
        fragments += _fragments(10 + seq, seq, body, cuts)
    order = data.draw(st.permutations(fragments))
    reassembler = Reassembler(next_seq=1)
    messages: list[CompleteMessage] = []
    for header, fragment in order:
        assert reassembler.add(header, fragment) is Outcome.ACCEPTED
        messages += _drain(reassembler)
    assert [(m.message_seq, m.msg_type, m.body) for m in messages] == [
        (seq, 10 + seq, body) for seq, body in enumerate(bodies, start=1)
    ]
    assert reassembler.stats.messages == len(bodies)
    assert reassembler.stats.fragments == reassembler.stats.accepted == len(fragments)


@given(
    body=st.binary(max_size=2000),
    size=st.integers(HEADER_LENGTH + 1, 300),
    seq=st.integers(0, 0xFFFF),
)
def test_fragment_message_round_trip(body: bytes, size: int, seq: int) -> None:
    pieces = fragment_message(11, seq, body, size)
    assert all(len(piece) <= size for piece in pieces)
    assert len(pieces) == max(1, -(-len(body) // (size - HEADER_LENGTH)))
    reassembler = Reassembler(next_seq=seq)
    offset = 0
    for piece in pieces:
        ((header, fragment),) = iter_fragments(piece)
        assert header.msg_type == 11 and header.message_seq == seq
        assert header.length == len(body) and header.fragment_offset == offset
        offset += header.fragment_length
        reassembler.add(header, fragment)
    assert offset == len(body)
    message = reassembler.pop()
    assert message is not None and message.body == body
    assert message.to_bytes() == encode_handshake(11, seq, body)


def test_fragment_message_single_and_limits() -> None:
    assert fragment_message(14, 4, b"", 13) == [encode_handshake(14, 4, b"")]
    assert fragment_message(1, 0, b"abc", 15) == [encode_handshake(1, 0, b"abc")]
    assert len(fragment_message(1, 0, b"abcd", 15)) == 2
    with pytest.raises(ValueError):
        fragment_message(1, 0, b"abc", HEADER_LENGTH)


# ---------------------------------------------------------------------------------------------
# Byte ranges: compare with a set model


@given(
    length=st.integers(1, 200),
    ranges=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 60)), max_size=40),
)
def test_ranges_match_a_set_model(length: int, ranges: list[tuple[int, int]]) -> None:
    body = bytes(i % 251 for i in range(length))
    reassembler = Reassembler()
    covered: set[int] = set()
    for start, size in ranges:
        start = min(start, length - 1)
        end = min(length, start + size)
        header, fragment = _piece(1, 0, body, start, end)
        new = set(range(start, end)) - covered
        outcome = reassembler.add(header, fragment)
        assert outcome is (Outcome.ACCEPTED if new else Outcome.DUPLICATE)
        covered |= new
        if len(covered) == length:
            break
    message = reassembler.pop()
    assert (message is not None) == (len(covered) == length)
    if message is not None:
        assert message.body == body


def test_interleaved_single_bytes() -> None:
    # The worst case for the range list: 1-byte fragments at every other offset first.
    body = bytes(range(256)) * 16  # 4096 bytes
    reassembler = Reassembler(max_message_length=8192)
    for start in [*range(0, len(body), 2), *range(1, len(body), 2)]:
        assert reassembler.add(*_piece(11, 0, body, start, start + 1)) is Outcome.ACCEPTED
    message = reassembler.pop()
    assert message is not None and message.body == body


# ---------------------------------------------------------------------------------------------
# Outcomes and bounds


def test_old_and_duplicate() -> None:
    reassembler = Reassembler(next_seq=1)
    body = b"x" * 10
    assert reassembler.add(*_piece(1, 0, body, 0, 10)) is Outcome.OLD  # retransmitted flight
    assert reassembler.add(*_piece(1, 1, body, 0, 5)) is Outcome.ACCEPTED
    assert reassembler.add(*_piece(1, 1, body, 1, 4)) is Outcome.DUPLICATE
    assert reassembler.add(*_piece(1, 1, body, 5, 5)) is Outcome.DUPLICATE  # empty fragment
    assert reassembler.pop() is None
    assert reassembler.add(*_piece(1, 1, body, 3, 10)) is Outcome.ACCEPTED
    assert reassembler.has_partial(1)
    assert reassembler.add(*_piece(1, 1, body, 0, 10)) is Outcome.DUPLICATE  # complete, unpopped
    assert reassembler.pop() == CompleteMessage(1, 1, body)
    assert reassembler.add(*_piece(1, 1, body, 0, 10)) is Outcome.OLD
    stats = reassembler.stats
    assert (stats.fragments, stats.accepted, stats.duplicates, stats.old) == (7, 2, 3, 2)
    assert stats.messages == 1


def test_empty_messages() -> None:
    reassembler = Reassembler(next_seq=4)
    done = HandshakeHeader.whole(14, 4, 0)
    assert reassembler.add(done, b"") is Outcome.ACCEPTED
    assert reassembler.add(done, b"") is Outcome.DUPLICATE
    assert reassembler.pop() == CompleteMessage(14, 4, b"")
    # An empty fragment of a non-empty message allocates nothing.
    assert reassembler.add(HandshakeHeader(11, 100, 5, 50, 0), b"") is Outcome.DUPLICATE
    assert reassembler.buffered_messages == 0


def test_window() -> None:
    reassembler = Reassembler(next_seq=3, max_messages=4)
    assert reassembler.add(*_piece(1, 6, b"abc", 0, 3)) is Outcome.ACCEPTED  # 3 + 4 - 1
    assert reassembler.add(*_piece(1, 7, b"abc", 0, 3)) is Outcome.TOO_FAR
    assert reassembler.add(*_piece(1, 0xFFFF, b"abc", 0, 3)) is Outcome.TOO_FAR
    assert reassembler.stats.too_far == 2
    assert reassembler.pop() is None  # seq 3 is still missing


def test_inconsistent_fragments() -> None:
    reassembler = Reassembler()
    body = b"0123456789"
    assert reassembler.add(*_piece(11, 0, body, 0, 5)) is Outcome.ACCEPTED
    assert reassembler.add(*_piece(12, 0, body, 5, 10)) is Outcome.INCONSISTENT
    other_length = HandshakeHeader(11, 11, 0, 5, 5)
    assert reassembler.add(other_length, body[5:]) is Outcome.INCONSISTENT
    assert reassembler.stats.inconsistent == 2
    assert reassembler.pop() is None


def test_fragmented_message_length_limit() -> None:
    reassembler = Reassembler(max_message_length=100, max_bytes=10_000)
    big = bytes(101)
    assert reassembler.add(*_piece(11, 0, big, 0, 50)) is Outcome.TOO_LARGE
    assert reassembler.buffered_messages == 0
    # The limit is for reassembly: a whole message in one fragment is not affected.
    assert reassembler.add(*_piece(11, 0, big, 0, 101)) is Outcome.ACCEPTED
    assert reassembler.pop() == CompleteMessage(11, 0, big)
    assert reassembler.stats.too_large == 1


def test_byte_budget_and_eviction() -> None:
    reassembler = Reassembler(max_bytes=250, max_messages=8)
    body = bytes(100)
    assert reassembler.add(*_piece(1, 3, body, 0, 10)) is Outcome.ACCEPTED
    assert reassembler.add(*_piece(1, 2, body, 0, 10)) is Outcome.ACCEPTED
    assert reassembler.buffered_bytes == 200
    # A later message does not fit and may not evict earlier ones.
    assert reassembler.add(*_piece(1, 4, body, 0, 10)) is Outcome.NO_SPACE
    # An earlier one evicts the latest buffered message (seq 3).
    assert reassembler.add(*_piece(1, 1, body, 0, 10)) is Outcome.ACCEPTED
    assert not reassembler.has_partial(3) and reassembler.has_partial(2)
    assert reassembler.buffered_bytes == 200
    assert reassembler.stats.evicted == 1 and reassembler.stats.no_space == 1
    # The next expected message evicts as much as it needs.
    assert reassembler.add(*_piece(1, 0, bytes(240), 0, 10)) is Outcome.ACCEPTED
    assert reassembler.buffered_messages == 1 and reassembler.stats.evicted == 3
    # A whole next message passes even beyond the budget: it need not wait for anything.
    fresh = Reassembler(max_bytes=50)
    assert fresh.add(*_piece(1, 0, bytes(400), 0, 400)) is Outcome.ACCEPTED
    assert fresh.pop() == CompleteMessage(1, 0, bytes(400))
    # But a fragment of it is bounded.
    assert fresh.add(*_piece(1, 1, bytes(400), 0, 10)) is Outcome.NO_SPACE


def test_budget_holds_for_any_input() -> None:
    reassembler = Reassembler(max_bytes=1000, max_messages=5, max_message_length=900)
    for seq in range(10):
        for length in (50, 300, 899, 900, 901):
            reassembler.add(HandshakeHeader(1, length, seq, 0, 1), b"\0")
            assert reassembler.buffered_bytes <= 1000
            assert reassembler.buffered_messages <= 5


def test_reset_and_bad_arguments() -> None:
    reassembler = Reassembler()
    reassembler.add(*_piece(1, 0, b"abcd", 0, 2))
    reassembler.reset(1)
    assert reassembler.next_seq == 1 and reassembler.buffered_bytes == 0
    assert not reassembler.has_partial(0)
    with pytest.raises(ValueError):
        reassembler.add(HandshakeHeader(1, 4, 1, 0, 2), b"abc")
    with pytest.raises(ValueError):
        Reassembler(max_messages=0)
