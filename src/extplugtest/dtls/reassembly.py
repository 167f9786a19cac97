"""Handshake message reassembly and fragmentation (RFC 6347 §4.2.2, §4.2.3).

``Reassembler`` collects fragments by message_seq, fragment_offset and fragment_length.
Overlapping and duplicate fragments are accepted, and a retransmission may be fragmented
differently from the first transmission. Messages ahead of the next expected message_seq are
buffered, bounded by a window of message_seqs and by a byte budget. Messages come out in
message_seq order. ``add`` never raises for what a peer sends: it returns an ``Outcome`` and
counts it in ``stats``.

``fragment_message`` does the reverse for sending: it splits a message into fragments that
fit a given size.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from enum import Enum

from extplugtest.dtls.handshake_header import HEADER_LENGTH, HandshakeHeader, encode_handshake

__all__ = [
    "CompleteMessage",
    "Outcome",
    "Reassembler",
    "ReassemblyStats",
    "fragment_message",
]

#: Californium's DTLS.MAX_FRAGMENTED_HANDSHAKE_MESSAGE_LENGTH.
DEFAULT_MAX_MESSAGE_LENGTH = 8192


class Outcome(Enum):
    ACCEPTED = "accepted"  # new bytes stored
    DUPLICATE = "duplicate"  # nothing new (all bytes present, or an empty fragment)
    OLD = "old"  # message_seq below the next expected one: a retransmitted flight
    TOO_FAR = "too_far"  # message_seq beyond the buffering window
    TOO_LARGE = "too_large"  # a fragmented message longer than max_message_length
    NO_SPACE = "no_space"  # the byte budget is used up by earlier messages
    INCONSISTENT = "inconsistent"  # msg_type or length differ from earlier fragments


@dataclass(slots=True)
class ReassemblyStats:
    fragments: int = 0  # every fragment passed to add()
    accepted: int = 0
    duplicates: int = 0
    old: int = 0
    too_far: int = 0
    too_large: int = 0
    no_space: int = 0
    inconsistent: int = 0
    evicted: int = 0  # buffered later messages dropped to make room for an earlier one
    messages: int = 0  # complete messages handed out by pop()


@dataclass(frozen=True, slots=True)
class CompleteMessage:
    msg_type: int
    message_seq: int
    body: bytes

    def to_bytes(self) -> bytes:
        """Header (offset 0, fragment_length = length) + body: the transcript form."""
        return encode_handshake(self.msg_type, self.message_seq, self.body)


class _Partial:
    """One message being reassembled: its buffer and the byte ranges received so far
    (sorted, disjoint, non-adjacent [start, end) intervals)."""

    __slots__ = ("data", "ends", "length", "msg_type", "starts")

    def __init__(self, msg_type: int, length: int) -> None:
        self.msg_type = msg_type
        self.length = length
        self.data = bytearray(length)
        self.starts: list[int] = []
        self.ends: list[int] = []

    @property
    def complete(self) -> bool:
        if self.length == 0:
            return True
        return len(self.starts) == 1 and self.starts[0] == 0 and self.ends[0] == self.length

    def add(self, offset: int, fragment: bytes) -> bool:
        """Store a fragment; False if all its bytes were there already."""
        start, end = offset, offset + len(fragment)
        if start == end:
            return False
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, start)  # intervals [0, i) start at or before `start`
        if i and ends[i - 1] >= end:
            return False
        self.data[start:end] = fragment  # overlapping bytes are the same in a sane peer
        if i and ends[i - 1] >= start:  # touches the interval on the left: merge it
            i -= 1
            start = starts[i]
        j = bisect_right(starts, end)  # intervals [i, j) start inside or right after
        if j > i:
            end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]
        return True


class Reassembler:
    """Reassembly of the handshake messages received from one peer.

    ``next_seq`` is the message_seq expected next (after a HelloVerifyRequest exchange, the
    one after the verified ClientHello's). Messages with ``next_seq <= message_seq <
    next_seq + max_messages`` are buffered; together they may hold at most ``max_bytes``
    (the whole next expected message is always let through). A fragmented message may be
    at most ``max_message_length`` long.
    """

    def __init__(
        self,
        next_seq: int = 0,
        *,
        max_messages: int = 10,
        max_bytes: int = 16384,
        max_message_length: int = DEFAULT_MAX_MESSAGE_LENGTH,
    ) -> None:
        if max_messages < 1 or max_bytes < 0 or max_message_length < 0:
            raise ValueError("bounds must be positive")
        self._next_seq = next_seq
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_message_length = max_message_length
        self._partials: dict[int, _Partial] = {}
        self._buffered_bytes = 0
        self.stats = ReassemblyStats()

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def buffered_bytes(self) -> int:
        return self._buffered_bytes

    @property
    def buffered_messages(self) -> int:
        return len(self._partials)

    def reset(self, next_seq: int) -> None:
        """Drop everything buffered and expect ``next_seq`` next."""
        self._partials.clear()
        self._buffered_bytes = 0
        self._next_seq = next_seq

    def add(self, header: HandshakeHeader, fragment: bytes) -> Outcome:
        """Take one fragment (as split by ``iter_fragments``)."""
        if len(fragment) != header.fragment_length:
            raise ValueError("fragment does not match its header's fragment_length")
        outcome = self._add(header, fragment)
        stats = self.stats
        stats.fragments += 1
        if outcome is Outcome.ACCEPTED:
            stats.accepted += 1
        elif outcome is Outcome.DUPLICATE:
            stats.duplicates += 1
        elif outcome is Outcome.OLD:
            stats.old += 1
        elif outcome is Outcome.TOO_FAR:
            stats.too_far += 1
        elif outcome is Outcome.TOO_LARGE:
            stats.too_large += 1
        elif outcome is Outcome.NO_SPACE:
            stats.no_space += 1
        else:
            stats.inconsistent += 1
        return outcome

    def _add(self, header: HandshakeHeader, fragment: bytes) -> Outcome:
        seq = header.message_seq
        if seq < self._next_seq:
            return Outcome.OLD
        if seq >= self._next_seq + self.max_messages:
            return Outcome.TOO_FAR
        partial = self._partials.get(seq)
        if partial is not None:
            if partial.msg_type != header.msg_type or partial.length != header.length:
                return Outcome.INCONSISTENT
            if header.fragment_length == 0:
                return Outcome.DUPLICATE
        else:
            if header.fragment_length == 0 and header.length:
                return Outcome.DUPLICATE  # carries nothing; don't allocate for it
            whole = header.is_complete
            if not whole and header.length > self.max_message_length:
                return Outcome.TOO_LARGE
            if not (whole and seq == self._next_seq) and not self._make_room(seq, header.length):
                return Outcome.NO_SPACE
            partial = _Partial(header.msg_type, header.length)
            self._partials[seq] = partial
            self._buffered_bytes += header.length
            if header.length == 0:
                return Outcome.ACCEPTED
        if not partial.add(header.fragment_offset, fragment):
            return Outcome.DUPLICATE
        return Outcome.ACCEPTED

    def _make_room(self, seq: int, length: int) -> bool:
        """Fit ``length`` more bytes into the budget, evicting buffered messages later than
        ``seq`` (latest first) if needed, so that a late earlier message can't be starved."""
        if self._buffered_bytes + length <= self.max_bytes:
            return True
        later = sorted((s for s in self._partials if s > seq), reverse=True)
        for victim in later:
            self._buffered_bytes -= self._partials.pop(victim).length
            self.stats.evicted += 1
            if self._buffered_bytes + length <= self.max_bytes:
                return True
        return False

    def pop(self) -> CompleteMessage | None:
        """The next message in order once it is complete (advancing next_seq), else None."""
        seq = self._next_seq
        partial = self._partials.get(seq)
        if partial is None or not partial.complete:
            return None
        del self._partials[seq]
        self._buffered_bytes -= partial.length
        self._next_seq = seq + 1
        self.stats.messages += 1
        return CompleteMessage(partial.msg_type, seq, bytes(partial.data))

    def has_partial(self, message_seq: int) -> bool:
        """True if fragments of this message_seq are buffered."""
        return message_seq in self._partials


def fragment_message(
    msg_type: int, message_seq: int, body: bytes, max_fragment_size: int
) -> list[bytes]:
    """Split a message into handshake fragments (header + bytes) of at most
    ``max_fragment_size`` bytes each, in order; one fragment if it fits (RFC 6347 §4.2.3).

    ``max_fragment_size`` is the record plaintext room, the 12-byte header included.
    """
    room = max_fragment_size - HEADER_LENGTH
    if room < 1:
        raise ValueError(f"max_fragment_size {max_fragment_size} leaves no room for data")
    length = len(body)
    if length <= room:
        return [encode_handshake(msg_type, message_seq, body)]
    fragments = []
    for offset in range(0, length, room):
        chunk = body[offset : offset + room]
        header = HandshakeHeader(msg_type, length, message_seq, offset, len(chunk))
        fragments.append(header.encode() + chunk)
    return fragments
