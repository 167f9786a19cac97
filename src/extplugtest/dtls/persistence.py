"""Save and restore the established connections of DTLS connectors: a graceful restart
without new handshakes (inventory §6.6).

The stream follows Californium's in spirit, not byte for byte (all integers big-endian):

```
wrapper   : 00 | plain stream                                  (no password)
            uint16 0x0301 | uint8 16 | 16-byte seed | AES-GCM-128(plain stream) ‖ 16-byte tag
            key ‖ iv = P_SHA256(HMAC key = password, "key expansion" ‖ seed), 16 + 16 bytes
plain     : time item (version 1): int64 wall-clock milliseconds of the save
            0A "COMPONENTS"
            repeat: uint16 label length | label (UTF-8, "dtls://<addr>:<port>")
                    connection items ... | 00             (one section per connector)
            FF FF                                          (end)
item      : uint8 version (00: end of the section) | uint16 length | body
```

A connection item (version 1) holds the age of its last activity at the save (so that it
survives the restart: the reader adds the time the file lay on disk), the peer address, our
CID, the session (suite, session id, master secret, flags, peer identity) and the epoch-1
state of the C data path: keys, implicit IVs, CIDs, the replay window, the last sealed and
the next write sequence number; then, only where a record size limit was negotiated (RFC 8449,
RFC 6066), a record sizes item (version 1: uint16 the peer's limit, uint16 ours). A reader
without that item takes 2^14 for both, and a stream without record size limits is the same as
before the item existed. Every item carries a version; a reader refuses versions it
does not know, items that overrun, values out of range and files above a size bound, always
with PersistenceError and nothing else. Only DTLS state is saved: no CoAP exchanges.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from extplugtest.dtls import ciphersuites
from extplugtest.dtls._record import AEAD_FOR_CIPHER_SUITE
from extplugtest.dtls.keys import prf

__all__ = [
    "CONSOLE_MAX_AGE",
    "MAX_STORE_SIZE",
    "PersistenceError",
    "SavedConnection",
    "SavedStore",
    "decode_store",
    "encode_store",
    "read_store_file",
    "seal_store",
    "unseal_store",
    "write_store_file",
]

#: the console's save/load keeps connections this long (inventory §1.1: 10 min)
CONSOLE_MAX_AGE = 600.0
#: a larger file is refused unread: 100 000 connections (DTLS.MAX_CONNECTIONS) of about 250
#: bytes on each of a few connectors fit with room to spare
MAX_STORE_SIZE = 256 * 1024 * 1024

#: EncryptedStreamUtil's default cipher: AES/GCM/NoPadding with a 128-bit key
CIPHER_AES_GCM_128 = 0x0301
SEED_LENGTH = 16
KEY_LENGTH = 16
IV_LENGTH = 16
TAG_LENGTH = 16
NO_PASSWORD = 0x00

COMPONENTS = b"COMPONENTS"
END_OF_LABELS = 0xFFFF
TIME_ITEM_VERSION = 1
CONNECTION_VERSION = 1
ADDRESS_VERSION = 1
SESSION_VERSION = 1
EPOCH_VERSION = 1
SEQUENCE_VERSION = 1
RECORD_SIZES_VERSION = 1

SEQ_MAX = (1 << 48) - 1
MAX_MILLIS = 1 << 43  # times and ages in ms: exact through a float of seconds and back
MAX_CID_LENGTH = 16  # DTLS.CONNECTION_ID_LENGTH (the CID table's bound)
MASTER_SECRET_LENGTH = 48
MAX_PLAINTEXT = 1 << 14  # a record without a negotiated limit (RFC 5246 §6.2.1)
MIN_RECORD_SIZE_LIMIT = 64  # RFC 8449 §4 (max_fragment_length's smallest is 512)
NO_CERTIFICATE_TYPE = 0xFF  # PSK (or an anonymous client): peer_certificate_type None
FLAG_EMS, FLAG_RENEGOTIATION, FLAG_CID, FLAG_RESUMED, FLAG_ANTI_REPLAY = 1, 2, 4, 8, 16


class PersistenceError(ValueError):
    """The stream cannot be read (corrupt, truncated, wrong password, unknown version, too
    large) or written; str() is one line for the user."""


@dataclass(frozen=True, slots=True)
class SavedConnection:
    """One established connection as the data path needs it to carry on."""

    address: tuple  # (host, port) or (host, port, flowinfo, scope_id)
    age: float  # seconds since its newest record, when saved
    session_age: float  # seconds since its handshake, when saved (the session cache's lifetime)
    read_cid: bytes  # ours (the connection's, even when no CID was negotiated)
    # the session
    suite_code: int
    session_id: bytes
    master_secret: bytes  # b"": unknown (then it is not resumable after the restart)
    identity: bytes  # PSK identity, or the certificate's principal name (UTF-8)
    peer_certificate_type: int | None
    extended_master_secret: bool
    secure_renegotiation: bool
    cid_negotiated: bool
    resumed: bool
    # the epoch state of the record layer (AeadCipher.export_state)
    epoch: int
    aead: int
    write_key: bytes
    write_iv: bytes
    read_key: bytes
    read_iv: bytes
    write_cid: bytes  # the peer's, on our records
    cipher_read_cid: bytes  # ours as the cipher requires it (b"": no CID on its records)
    anti_replay: bool
    next_write_seq: int
    last_sealed: int  # epoch << 48 | seq of the last record sealed
    window_highest: int
    window_bitmap: int
    # record sizes (Session.record_size_limit / receive_limit): the most plaintext bytes per
    # record to the peer and from it, 64..2^14
    record_size_limit: int = MAX_PLAINTEXT
    receive_limit: int = MAX_PLAINTEXT

    def aged(self, seconds: float) -> SavedConnection:
        """This connection *seconds* later (the time the stream was not in a process)."""
        return dataclasses.replace(
            self, age=self.age + seconds, session_age=self.session_age + seconds
        )


@dataclass
class SavedStore:
    """The connections of every connector, by label, and when they were saved."""

    saved_at: float = 0.0  # wall clock (time.time()) of the save
    connectors: dict[str, list[SavedConnection]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(connections) for connections in self.connectors.values())

    def aged_until(self, now: float) -> dict[str, list[SavedConnection]]:
        """The connections with the time since the save added to their ages (a clock that
        went backwards adds nothing)."""
        gap = max(0.0, now - self.saved_at)
        return {
            label: [saved.aged(gap) for saved in connections]
            for label, connections in self.connectors.items()
        }


# -- writing ----------------------------------------------------------------------------------
def _varbytes8(data: bytes) -> bytes:
    if len(data) > 0xFF:
        raise PersistenceError("a field is longer than 255 bytes")
    return bytes([len(data)]) + data


def _varbytes16(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise PersistenceError("a field is longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _item(version: int, body: bytes) -> bytes:
    if len(body) > 0xFFFF:
        raise PersistenceError("an item is longer than 65535 bytes")
    return bytes([version]) + len(body).to_bytes(2, "big") + body


def _millis(seconds: float) -> int:
    return min(max(0, round(seconds * 1000)), MAX_MILLIS)


def _address_item(address: tuple) -> bytes:
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    body = int(address[1]).to_bytes(2, "big") + ip.packed
    if ip.version == 6:
        scope = int(address[3]) if len(address) > 3 else 0
        body += scope.to_bytes(4, "big")
    return _item(ADDRESS_VERSION, body)


def _connection_item(saved: SavedConnection) -> bytes:
    flags = (
        (FLAG_EMS if saved.extended_master_secret else 0)
        | (FLAG_RENEGOTIATION if saved.secure_renegotiation else 0)
        | (FLAG_CID if saved.cid_negotiated else 0)
        | (FLAG_RESUMED if saved.resumed else 0)
    )
    certificate_type = (
        NO_CERTIFICATE_TYPE if saved.peer_certificate_type is None else saved.peer_certificate_type
    )
    session = _item(
        SESSION_VERSION,
        saved.suite_code.to_bytes(2, "big")
        + _varbytes8(saved.session_id)
        + _varbytes8(saved.master_secret)
        + bytes([flags, certificate_type])
        + _varbytes16(saved.identity),
    )
    epoch = _item(
        EPOCH_VERSION,
        saved.epoch.to_bytes(2, "big")
        + bytes([saved.aead, FLAG_ANTI_REPLAY if saved.anti_replay else 0])
        + b"".join(
            _varbytes8(value)
            for value in (
                saved.write_key, saved.write_iv, saved.read_key, saved.read_iv,
                saved.write_cid, saved.cipher_read_cid,
            )
        ),
    )  # fmt: skip
    sequence = _item(
        SEQUENCE_VERSION,
        saved.next_write_seq.to_bytes(6, "big")
        + saved.last_sealed.to_bytes(8, "big")
        + saved.window_highest.to_bytes(6, "big")
        + saved.window_bitmap.to_bytes(8, "big"),
    )
    record_sizes = b""
    if (saved.record_size_limit, saved.receive_limit) != (MAX_PLAINTEXT, MAX_PLAINTEXT):
        for limit in (saved.record_size_limit, saved.receive_limit):
            if not 0 <= limit <= 0xFFFF:  # (the reader checks the range)
                raise PersistenceError(f"a record size limit of {limit}")
        record_sizes = _item(
            RECORD_SIZES_VERSION,
            saved.record_size_limit.to_bytes(2, "big") + saved.receive_limit.to_bytes(2, "big"),
        )
    return _item(
        CONNECTION_VERSION,
        _millis(saved.age).to_bytes(8, "big")
        + _millis(saved.session_age).to_bytes(8, "big")
        + _address_item(saved.address)
        + _varbytes8(saved.read_cid)
        + session
        + epoch
        + sequence
        + record_sizes,
    )


def encode_store(
    connectors: Mapping[str, Iterable[SavedConnection]], saved_at: float | None = None
) -> bytes:
    """The plain stream of *connectors* (label -> its connections)."""
    saved_at = time.time() if saved_at is None else saved_at
    out = [_item(TIME_ITEM_VERSION, _millis(saved_at).to_bytes(8, "big")), _varbytes8(COMPONENTS)]
    for label, connections in connectors.items():
        out.append(_varbytes16(label.encode("utf-8")))
        out.extend(_connection_item(saved) for saved in connections)
        out.append(b"\x00")
    out.append(END_OF_LABELS.to_bytes(2, "big"))
    return b"".join(out)


# -- reading ----------------------------------------------------------------------------------
class _Reader:
    """Bounded reads from one buffer; every overrun is a PersistenceError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, count: int, what: str) -> bytes:
        if count > self.end - self.pos:
            raise PersistenceError(f"truncated: {what} overruns its item or the stream")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def varbytes8(self, what: str) -> bytes:
        return self.take(self.uint(1, what), what)

    def varbytes16(self, what: str) -> bytes:
        return self.take(self.uint(2, what), what)

    def item(self, known: int, what: str) -> _Reader:
        """The body of the next item, which must be of version *known*."""
        version = self.uint(1, what)
        if version != known:
            raise PersistenceError(f"{what} of version {version} is not supported")
        length = self.uint(2, what)
        self.take(length, what)
        return _Reader(self.data, self.pos - length, self.pos)

    def done(self, what: str) -> None:
        if self.pos != self.end:
            raise PersistenceError(f"{self.end - self.pos} unexpected bytes at the end of {what}")


def _read_address(reader: _Reader) -> tuple:
    body = reader.item(ADDRESS_VERSION, "address")
    port = body.uint(2, "port")
    remaining = body.end - body.pos
    if remaining == 4:
        return (str(ipaddress.IPv4Address(body.take(4, "address"))), port)
    if remaining == 20:
        host = str(ipaddress.IPv6Address(body.take(16, "address")))
        return (host, port, 0, body.uint(4, "scope"))
    raise PersistenceError(f"an address of {remaining} bytes")


def _read_seconds(reader: _Reader, what: str) -> float:
    """A time in milliseconds; bounded so that it survives the float (about 278 years)."""
    millis = reader.uint(8, what)
    _check(millis <= MAX_MILLIS, f"the {what} is out of range")
    return millis / 1000


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise PersistenceError(message)


def _read_connection(body: _Reader) -> SavedConnection:
    age = _read_seconds(body, "age")
    session_age = _read_seconds(body, "session age")
    address = _read_address(body)
    read_cid = body.varbytes8("cid")
    session = body.item(SESSION_VERSION, "session")
    suite_code = session.uint(2, "cipher suite")
    session_id = session.varbytes8("session id")
    master_secret = session.varbytes8("master secret")
    flags = session.uint(1, "flags")
    certificate_type = session.uint(1, "certificate type")
    identity = session.varbytes16("identity")
    session.done("the session")
    epoch_item = body.item(EPOCH_VERSION, "epoch state")
    epoch = epoch_item.uint(2, "epoch")
    aead = epoch_item.uint(1, "aead")
    cipher_flags = epoch_item.uint(1, "cipher flags")
    write_key, write_iv, read_key, read_iv, write_cid, cipher_read_cid = (
        epoch_item.varbytes8(what)
        for what in ("write key", "write iv", "read key", "read iv", "write cid", "read cid")
    )
    epoch_item.done("the epoch state")
    sequence = body.item(SEQUENCE_VERSION, "sequence numbers")
    next_write_seq = sequence.uint(6, "write sequence number")
    last_sealed = sequence.uint(8, "last sealed")
    window_highest = sequence.uint(6, "replay window")
    window_bitmap = sequence.uint(8, "replay window")
    sequence.done("the sequence numbers")
    record_size_limit = receive_limit = MAX_PLAINTEXT
    if body.pos < body.end:  # (an optional item, appended)
        record_sizes = body.item(RECORD_SIZES_VERSION, "record sizes")
        record_size_limit = record_sizes.uint(2, "record size limit")
        receive_limit = record_sizes.uint(2, "record size limit")
        record_sizes.done("the record sizes")
        _check(
            min(record_size_limit, receive_limit) >= MIN_RECORD_SIZE_LIMIT
            and max(record_size_limit, receive_limit) <= MAX_PLAINTEXT,
            f"record size limits must be {MIN_RECORD_SIZE_LIMIT}..{MAX_PLAINTEXT}",
        )
    body.done("a connection")
    # What the data path would refuse later is refused here, with a reason.
    suite = ciphersuites.by_code(suite_code)
    _check(suite is not None, f"unknown cipher suite 0x{suite_code:04X}")
    _check(AEAD_FOR_CIPHER_SUITE.get(suite_code) == aead, "record protection of another suite")
    _check(1 <= epoch <= 0xFFFF, "epoch 0 is not protected")
    _check(len(write_key) == len(read_key) == 16, "record keys must be 16 bytes")
    _check(len(write_iv) == len(read_iv) == 4, "implicit IVs must be 4 bytes")
    _check(len(master_secret) in (0, MASTER_SECRET_LENGTH), "a master secret must be 48 bytes")
    _check(len(read_cid) <= MAX_CID_LENGTH and len(cipher_read_cid) <= MAX_CID_LENGTH,
           "a connection id is longer than 16 bytes")  # fmt: skip
    _check(last_sealed == 0 or last_sealed >> 48 == epoch, "last sealed record of another epoch")
    _check(not flags & ~(FLAG_EMS | FLAG_RENEGOTIATION | FLAG_CID | FLAG_RESUMED), "unknown flags")
    _check(not cipher_flags & ~FLAG_ANTI_REPLAY, "unknown cipher flags")
    return SavedConnection(
        address=address,
        age=age,
        session_age=session_age,
        read_cid=read_cid,
        suite_code=suite_code,
        session_id=session_id,
        master_secret=master_secret,
        identity=identity,
        peer_certificate_type=None if certificate_type == NO_CERTIFICATE_TYPE else certificate_type,
        extended_master_secret=bool(flags & FLAG_EMS),
        secure_renegotiation=bool(flags & FLAG_RENEGOTIATION),
        cid_negotiated=bool(flags & FLAG_CID),
        resumed=bool(flags & FLAG_RESUMED),
        epoch=epoch,
        aead=aead,
        write_key=write_key,
        write_iv=write_iv,
        read_key=read_key,
        read_iv=read_iv,
        write_cid=write_cid,
        cipher_read_cid=cipher_read_cid,
        anti_replay=bool(cipher_flags & FLAG_ANTI_REPLAY),
        next_write_seq=next_write_seq,
        last_sealed=last_sealed,
        window_highest=window_highest,
        window_bitmap=window_bitmap,
        record_size_limit=record_size_limit,
        receive_limit=receive_limit,
    )


def decode_store(data: bytes, max_size: int = MAX_STORE_SIZE) -> SavedStore:
    """The connections of a plain stream. Raises PersistenceError (only) for anything else."""
    if len(data) > max_size:
        raise PersistenceError(f"{len(data)} bytes is above the limit of {max_size}")
    reader = _Reader(bytes(data))
    time_item = reader.item(TIME_ITEM_VERSION, "time mark")
    saved_at = _read_seconds(time_item, "time mark")
    time_item.done("the time mark")
    if reader.varbytes8("components mark") != COMPONENTS:
        raise PersistenceError("not a stream of DTLS connections")
    store = SavedStore(saved_at)
    while True:  # bounded: every round consumes at least two bytes
        length = reader.uint(2, "label")
        if length == END_OF_LABELS:
            break
        try:
            label = reader.take(length, "label").decode("utf-8")
        except UnicodeDecodeError:
            raise PersistenceError("a label is not UTF-8") from None
        if label in store.connectors:
            raise PersistenceError(f"{label} appears twice")
        connections = store.connectors[label] = []
        while reader.data[reader.pos : reader.pos + 1] != b"\x00":  # consumes >= 3 bytes
            connections.append(_read_connection(reader.item(CONNECTION_VERSION, "connection")))
        reader.take(1, "end of section")
    reader.done("the stream")
    return store


# -- the password wrapper (EncryptedStreamUtil) -----------------------------------------------
def _key_and_iv(password: bytes, seed: bytes) -> tuple[bytes, bytes]:
    block = prf(password, b"key expansion", seed, KEY_LENGTH + IV_LENGTH)
    return block[:KEY_LENGTH], block[KEY_LENGTH:]


def seal_store(plain: bytes, password: bytes | None) -> bytes:
    """*plain* wrapped: encrypted with *password* (AES-GCM-128), or marked as unencrypted."""
    if not password:
        return bytes([NO_PASSWORD]) + plain
    seed = os.urandom(SEED_LENGTH)
    key, iv = _key_and_iv(password, seed)
    return (
        CIPHER_AES_GCM_128.to_bytes(2, "big")
        + bytes([SEED_LENGTH])
        + seed
        + AESGCM(key).encrypt(iv, plain, None)
    )


def unseal_store(data: bytes, password: bytes | None, max_size: int = MAX_STORE_SIZE) -> bytes:
    """The plain stream of a wrapped one. Raises PersistenceError for a wrong password, a
    password that is missing or not needed, and anything corrupt."""
    if len(data) > max_size:
        raise PersistenceError(f"{len(data)} bytes is above the limit of {max_size}")
    if not data:
        raise PersistenceError("empty")
    if data[0] == NO_PASSWORD:
        if password:
            raise PersistenceError("not encrypted, but a password was given")
        return bytes(data[1:])
    reader = _Reader(bytes(data))
    cipher = reader.uint(2, "cipher")
    if cipher != CIPHER_AES_GCM_128:
        raise PersistenceError(f"cipher 0x{cipher:04X} is not supported")
    if reader.uint(1, "seed") != SEED_LENGTH:
        raise PersistenceError("unexpected seed length")
    seed = reader.take(SEED_LENGTH, "seed")
    if not password:
        raise PersistenceError("encrypted: a password is needed")
    if reader.end - reader.pos < TAG_LENGTH:
        raise PersistenceError("truncated: no authentication tag")
    key, iv = _key_and_iv(password, seed)
    try:
        return AESGCM(key).decrypt(iv, reader.data[reader.pos :], None)
    except InvalidTag:
        raise PersistenceError("wrong password, or the file is corrupt") from None


# -- files ------------------------------------------------------------------------------------
def write_store_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write *data* to *path* atomically (a temporary file beside it, then renamed), readable
    by the owner only: it holds secrets."""
    target = Path(path)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        raise PersistenceError(f"cannot write {target}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp: mode 0600 already
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise PersistenceError(f"cannot write {target}: {error.strerror or error}") from None


def read_store_file(
    path: str | os.PathLike[str], password: bytes | None, max_size: int = MAX_STORE_SIZE
) -> SavedStore:
    """The store in *path* (not deleted here). Raises PersistenceError."""
    try:
        with open(path, "rb") as source:
            data = source.read(max_size + 1)
    except OSError as error:
        raise PersistenceError(f"cannot read {path}: {error.strerror or error}") from None
    return decode_store(unseal_store(data, password, max_size), max_size)
