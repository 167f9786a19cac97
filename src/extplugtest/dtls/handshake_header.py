"""Wire primitives of the DTLS 1.2 handshake layer.

* ``DecodeError``: the one exception every decoder in this package raises; it carries the
  TLS alert to send (RFC 5246 §7.2.2: decode_error for bad lengths, illegal_parameter for a
  field out of range or inconsistent with another).
* ``Reader``: a bounds-checked cursor over received bytes, and the ``uN``/``vecN`` encoders.
* ``HandshakeHeader``: the 12-byte DTLS handshake header (RFC 6347 §4.2.2), and
  ``iter_fragments``, which splits a handshake record into its fragments (§4.2.3: a record
  may carry several).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "HEADER_LENGTH",
    "AlertDescription",
    "DecodeError",
    "HandshakeHeader",
    "HandshakeType",
    "Reader",
    "encode_handshake",
    "iter_fragments",
    "u8",
    "u16",
    "u24",
    "vec8",
    "vec16",
    "vec24",
]


class AlertDescription(IntEnum):
    """TLS alert descriptions (RFC 5246 §7.2, RFC 4279 §2, RFC 5746, RFC 6066, RFC 8446)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21
    RECORD_OVERFLOW = 22
    DECOMPRESSION_FAILURE = 30
    HANDSHAKE_FAILURE = 40
    NO_CERTIFICATE = 41
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    EXPORT_RESTRICTION = 60
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110
    CERTIFICATE_UNOBTAINABLE = 111
    UNRECOGNIZED_NAME = 112
    BAD_CERTIFICATE_STATUS_RESPONSE = 113
    BAD_CERTIFICATE_HASH_VALUE = 114
    UNKNOWN_PSK_IDENTITY = 115
    CERTIFICATE_REQUIRED = 116
    NO_APPLICATION_PROTOCOL = 120


class DecodeError(Exception):
    """Received bytes that do not decode; ``alert`` is the fatal alert to answer with."""

    def __init__(
        self, message: str, alert: AlertDescription = AlertDescription.DECODE_ERROR
    ) -> None:
        super().__init__(message)
        self.alert = alert


class HandshakeType(IntEnum):
    """HandshakeType (RFC 5246 §7.4, RFC 6347 §4.2.2 adds hello_verify_request)."""

    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


# ---------------------------------------------------------------------------------------------
# Encoding helpers (RFC 5246 §4: big-endian integers, vectors with a length prefix)


def _uint(value: int, size: int) -> bytes:
    if not 0 <= value < 1 << (8 * size):
        raise ValueError(f"{value} does not fit into {size} bytes")
    return value.to_bytes(size, "big")


def u8(value: int) -> bytes:
    return _uint(value, 1)


def u16(value: int) -> bytes:
    return _uint(value, 2)


def u24(value: int) -> bytes:
    return _uint(value, 3)


def vec8(data: bytes) -> bytes:
    """opaque<0..2^8-1> (the length prefix, then the data); ValueError if too long."""
    return u8(len(data)) + data


def vec16(data: bytes) -> bytes:
    return u16(len(data)) + data


def vec24(data: bytes) -> bytes:
    return u24(len(data)) + data


class Reader:
    """Bounds-checked reading of received bytes; every failure is a ``DecodeError``."""

    __slots__ = ("_data", "_end", "_pos")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        # Slices must be bytes (messages keep them), not views of a receive buffer.
        self._data = data if type(data) is bytes else bytes(data)
        self._pos = start
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _take(self, count: int, what: str) -> int:
        pos = self._pos
        if count > self._end - pos:
            raise DecodeError(f"{what}: {count} bytes needed, {self._end - pos} left")
        self._pos = pos + count
        return pos

    def raw(self, count: int, what: str) -> bytes:
        pos = self._take(count, what)
        return self._data[pos : pos + count]

    def uint(self, size: int, what: str) -> int:
        pos = self._take(size, what)
        return int.from_bytes(self._data[pos : pos + size], "big")

    def u8(self, what: str) -> int:
        pos = self._take(1, what)
        return self._data[pos]

    def u16(self, what: str) -> int:
        return self.uint(2, what)

    def vector(self, size: int, what: str, minimum: int = 0, maximum: int | None = None) -> bytes:
        """opaque name<minimum..maximum> with a ``size``-byte length (RFC 5246 §4.3)."""
        length = self.uint(size, what)
        if length < minimum or (maximum is not None and length > maximum):
            raise DecodeError(f"{what}: length {length} outside {minimum}..{maximum}")
        return self.raw(length, what)

    def sub(self, size: int, what: str, minimum: int = 0, maximum: int | None = None) -> Reader:
        """A reader over the body of a vector, for vectors of structures."""
        length = self.uint(size, what)
        if length < minimum or (maximum is not None and length > maximum):
            raise DecodeError(f"{what}: length {length} outside {minimum}..{maximum}")
        start = self._take(length, what)
        return Reader(self._data, start, start + length)

    def u16_list(self, size: int, what: str, minimum: int, maximum: int) -> tuple[int, ...]:
        """A vector of uint16 values (cipher suites, groups, signature schemes)."""
        body = self.vector(size, what, minimum, maximum)
        if len(body) % 2:
            raise DecodeError(f"{what}: odd length {len(body)}")
        return tuple(int.from_bytes(body[i : i + 2], "big") for i in range(0, len(body), 2))

    def end(self, what: str) -> None:
        """The structure must use every byte (no trailing data)."""
        if self._pos != self._end:
            raise DecodeError(f"{what}: {self._end - self._pos} trailing bytes")


# ---------------------------------------------------------------------------------------------
# The DTLS handshake header (RFC 6347 §4.2.2)

HEADER_LENGTH = 12
MAX_LENGTH = (1 << 24) - 1


@dataclass(frozen=True, slots=True)
class HandshakeHeader:
    """msg_type(1) length(3) message_seq(2) fragment_offset(3) fragment_length(3)."""

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    fragment_length: int

    @classmethod
    def whole(cls, msg_type: int, message_seq: int, length: int) -> HandshakeHeader:
        """The header of an unfragmented message."""
        return cls(msg_type, length, message_seq, 0, length)

    @property
    def is_complete(self) -> bool:
        """True when this fragment is the whole message."""
        return self.fragment_offset == 0 and self.fragment_length == self.length

    def encode(self) -> bytes:
        if not (
            0 <= self.msg_type <= 0xFF
            and 0 <= self.message_seq <= 0xFFFF
            and self.fragment_offset >= 0
            and self.fragment_length >= 0
            and self.fragment_offset + self.fragment_length <= self.length <= MAX_LENGTH
        ):
            raise ValueError(f"handshake header out of range: {self}")
        return (
            u8(self.msg_type)
            + u24(self.length)
            + u16(self.message_seq)
            + u24(self.fragment_offset)
            + u24(self.fragment_length)
        )

    @classmethod
    def decode(cls, data: bytes, offset: int = 0) -> HandshakeHeader:
        """Decode the header at ``offset``; the fragment must lie inside the message."""
        if len(data) - offset < HEADER_LENGTH:
            raise DecodeError(f"handshake header: {len(data) - offset} of 12 bytes")
        header = data[offset : offset + HEADER_LENGTH]
        length = int.from_bytes(header[1:4], "big")
        fragment_offset = int.from_bytes(header[6:9], "big")
        fragment_length = int.from_bytes(header[9:12], "big")
        if fragment_offset + fragment_length > length:
            raise DecodeError(
                f"handshake fragment {fragment_offset}+{fragment_length} beyond length {length}"
            )
        return cls(
            header[0], length, int.from_bytes(header[4:6], "big"), fragment_offset, fragment_length
        )

    def unfragmented(self) -> HandshakeHeader:
        """The header of the whole message (offset 0, fragment_length = length), as hashed
        into the Finished / extended master secret transcript (RFC 6347 §4.2.6)."""
        return HandshakeHeader.whole(self.msg_type, self.message_seq, self.length)


def iter_fragments(payload: bytes) -> Iterator[tuple[HandshakeHeader, bytes]]:
    """Split the plaintext of a handshake record into (header, fragment bytes) pairs.

    A record may hold several fragments (RFC 6347 §4.2.3); a truncated one raises
    ``DecodeError`` (fragments before it have been yielded already).
    """
    payload = bytes(payload)
    pos = 0
    while pos < len(payload):
        header = HandshakeHeader.decode(payload, pos)
        start = pos + HEADER_LENGTH
        end = start + header.fragment_length
        if end > len(payload):
            raise DecodeError(
                f"handshake fragment: {header.fragment_length} bytes announced, "
                f"{len(payload) - start} in the record"
            )
        yield header, payload[start:end]
        pos = end


def encode_handshake(msg_type: int, message_seq: int, body: bytes) -> bytes:
    """A whole message with its header: the unfragmented form used in the transcript."""
    return HandshakeHeader.whole(msg_type, message_seq, len(body)).encode() + body
