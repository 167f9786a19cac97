#!/usr/bin/env python3
"""atheris fuzz target for the DTLS record layer (``extplugtest.dtls._record``).

Run it as ``python tests/fuzz/fuzz_dtls_record.py -atheris_runs=N [libFuzzer flags] [CORPUS ...]``;
``--seed-corpus=DIR`` writes a few valid datagrams into DIR and fuzzes with DIR as the corpus.

The first input byte picks what the rest of the input is:

* ``0``: a datagram (the next byte mod 8 is the receiver's CID length). ``parse_datagram``
  must agree with ``reference_datagram`` below, a slow pure-Python reading of RFC 6347 §4.1
  and RFC 9146 §4 (records, the first error and its offset), and must raise nothing but
  ``RecordError``. Every record that parses is handed to ``AeadCipher.open``, which must
  reject it with ``RecordError`` (random bytes do not authenticate).
* ``1``: a bit mask XORed onto a genuine protected record (suite, CID and sequence number from
  the input): ``open`` must reject every changed record and open the unchanged one.
* ``2``: a plaintext and content type: ``seal`` must give the bytes of ``reference_seal``
  (pyca/cryptography's AESCCM/AESGCM with the RFC 6655 nonce and the RFC 5246 / RFC 9146
  additional data) and ``open`` must give the plaintext back, for all three suites.

Coverage feedback comes from the instrumented Python parts only (the record layer is compiled
Cython; see README.md for native coverage). This module imports neither atheris nor the
record layer at import time, so that unit tests can reuse the reference model.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------
# Reference model (pure Python, written from the RFCs, independent of _record.pyx)

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, TLS12_CID = 20, 21, 22, 23, 25
KNOWN_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA))
DTLS_1_0, DTLS_1_2 = b"\xfe\xff", b"\xfe\xfd"
MAX_FRAGMENT_LENGTH = 2**14 + 2048  # RFC 5246 §6.2.3
CLIENT_HELLO, HELLO_VERIFY_REQUEST = 1, 3

# The AEADs by the module's constants: (tag length, GCM?). RFC 6655 §3, RFC 5288 §3.
CCM_8, CCM, GCM = 1, 2, 3
TAG_LENGTHS = {CCM_8: 8, CCM: 16, GCM: 16}


class RefRecord(NamedTuple):
    content_type: int
    version: int
    epoch: int
    seq: int
    cid: bytes
    fragment: bytes
    raw: bytes


def reference_record(data: bytes, cid_length: int) -> RefRecord | str:
    """The record at the start of *data*, or the name of the RECORD_* error."""
    if len(data) < 13:
        return "RECORD_TRUNCATED"
    content_type = data[0]
    version = data[1:3]
    epoch = int.from_bytes(data[3:5], "big")
    seq = int.from_bytes(data[5:11], "big")
    cid = b""
    header = 13
    if content_type == TLS12_CID:
        # RFC 9146 §4: cid has no length byte, the receiver knows its length; §3: CIDs are
        # used only once the connection is encrypted (epoch > 0).
        if not 0 < cid_length <= 255 or epoch == 0:
            return "RECORD_UNEXPECTED_CID"
        header += cid_length
        if len(data) < header:
            return "RECORD_TRUNCATED"
        cid = data[11 : 11 + cid_length]
    elif content_type not in KNOWN_TYPES:
        return "RECORD_BAD_TYPE"
    length = int.from_bytes(data[header - 2 : header], "big")
    if length > MAX_FRAGMENT_LENGTH or header + length > len(data):
        return "RECORD_BAD_LENGTH"
    fragment = data[header : header + length]
    hello = (
        content_type == HANDSHAKE
        and epoch == 0
        and fragment[:1] in (bytes([CLIENT_HELLO]), bytes([HELLO_VERIFY_REQUEST]))
    )
    if version != DTLS_1_2 and not (version == DTLS_1_0 and hello):
        return "RECORD_BAD_VERSION"
    return RefRecord(
        content_type,
        int.from_bytes(version, "big"),
        epoch,
        seq,
        cid,
        fragment,
        data[: header + length],
    )


def reference_datagram(data: bytes, cid_length: int) -> tuple[list[RefRecord], str | None, int]:
    """(records, first error or None, its offset): RFC 6347 §4.1.1, several records in one
    datagram, parsing stops at the first malformed record. An empty datagram is truncated."""
    records: list[RefRecord] = []
    pos = 0
    while True:
        record = reference_record(data[pos:], cid_length)
        if isinstance(record, str):
            return records, record, pos
        records.append(record)
        pos += len(record.raw)
        if pos == len(data):
            return records, None, pos


def _aead(aead: int, key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM

    if aead == GCM:
        return AESGCM(key)
    return AESCCM(key, tag_length=TAG_LENGTHS[aead])


def reference_seal(
    aead: int,
    key: bytes,
    iv: bytes,
    epoch: int,
    seq: int,
    content_type: int,
    plaintext: bytes,
    cid: bytes = b"",
    padding: int = 0,
    inner: bytes | None = None,
) -> bytes:
    """A protected DTLS 1.2 record, built with pyca/cryptography.

    nonce = iv ‖ epoch ‖ seq (RFC 6655 §3, RFC 5288 §3), the explicit part in front of the
    ciphertext. Without CID the additional data is epoch ‖ seq ‖ type ‖ version ‖ length
    (RFC 5246 §6.2.3.3, RFC 6347 §4.1.2.1). With a CID the record is tls12_cid (RFC 9146 §4):
    DTLSInnerPlaintext = content ‖ real type ‖ *padding* zeros (or *inner* verbatim), and the
    additional data is RFC 9146 §5's.
    """
    explicit = epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")
    nonce = iv + explicit
    if cid:
        if inner is None:
            inner = plaintext + bytes([content_type]) + bytes(padding)
        aad = (
            b"\xff" * 8
            + bytes([TLS12_CID, len(cid), TLS12_CID])
            + DTLS_1_2
            + explicit
            + cid
            + len(inner).to_bytes(2, "big")
        )
        sealed = _aead(aead, key).encrypt(nonce, inner, aad)
        fragment = explicit + sealed
        return (
            bytes([TLS12_CID])
            + DTLS_1_2
            + explicit
            + cid
            + len(fragment).to_bytes(2, "big")
            + fragment
        )
    aad = explicit + bytes([content_type]) + DTLS_1_2 + len(plaintext).to_bytes(2, "big")
    fragment = explicit + _aead(aead, key).encrypt(nonce, plaintext, aad)
    return bytes([content_type]) + DTLS_1_2 + explicit + len(fragment).to_bytes(2, "big") + fragment


# ---------------------------------------------------------------------------------------------
# The target

KEY_A, IV_A = bytes(range(16)), b"\xa0\xa1\xa2\xa3"
KEY_B, IV_B = bytes(range(16, 32)), b"\xb0\xb1\xb2\xb3"
KEY_C, IV_C = bytes(range(32, 48)), b"\xc0\xc1\xc2\xc3"
CID = b"\x01\x02\x03\x04\x05\x06"

_record = None
_seal_counter = [0]


def _get_record():
    global _record
    if _record is None:
        from extplugtest.dtls import _record as record

        _record = record
    return _record


def _pair(aead: int, cid: bytes, anti_replay: bool = False):
    """(sender, receiver) ciphers of one connection: A's write keys are B's read keys."""
    rec = _get_record()
    sender = rec.AeadCipher(aead, KEY_A, IV_A, KEY_B, IV_B, write_cid=cid, anti_replay=anti_replay)
    receiver = rec.AeadCipher(aead, KEY_B, IV_B, KEY_A, IV_A, read_cid=cid, anti_replay=anti_replay)
    return sender, receiver


def check_datagram(data: bytes, cid_length: int) -> None:
    rec = _get_record()
    records, error, offset = reference_datagram(data, cid_length)
    try:
        got = rec.parse_datagram(data, cid_length)
    except rec.RecordError as exc:
        assert error is not None, f"parse rejected ({exc}) a datagram the reference accepts"
        assert exc.result == getattr(rec, error), f"parse says {exc}, the reference {error}"
        assert exc.offset == offset, f"error offset {exc.offset}, expected {offset}"
        got = exc.records
    else:
        assert error is None, f"parse accepted a datagram the reference rejects ({error})"
    assert [tuple(r) for r in got] == [tuple(r) for r in records], f"{got} != {records}"
    if not got:
        return
    # KEY_C seals nothing in this harness: libFuzzer's comparison tracing lifts genuine records
    # from the other modes into its dictionary, and those would authenticate under KEY_A.
    receiver = rec.AeadCipher(
        CCM_8, KEY_B, IV_B, KEY_C, IV_C, read_cid=bytes(range(1, 1 + cid_length))
    )
    for record in got:
        try:
            receiver.open(record.raw)
        except rec.RecordError:
            continue
        raise AssertionError(f"a random record authenticated: {record}")


def check_tamper(data: bytes) -> None:
    rec = _get_record()
    aead = (CCM_8, CCM, GCM)[data[0] % 3]
    cid = CID if len(data) > 1 and data[1] & 1 else b""
    seq = int.from_bytes(data[2:8].ljust(6, b"\0"), "big")
    mask = data[8:]
    sender, receiver = _pair(aead, cid)
    plaintext = bytes(range(len(mask) % 40))
    record = sender.seal(1, seq, APPLICATION_DATA, plaintext)
    changed = bytes(b ^ (mask[i] if i < len(mask) else 0) for i, b in enumerate(record))
    if changed == record:
        assert receiver.open(changed) == (APPLICATION_DATA, plaintext)
        return
    try:
        receiver.open(changed)
    except rec.RecordError:
        pass
    else:
        raise AssertionError(f"tampered record opened: {changed.hex()} (from {record.hex()})")
    assert receiver.open(record) == (APPLICATION_DATA, plaintext)  # the context still works


def check_roundtrip(data: bytes) -> None:
    content_type = (CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA)[data[0] % 4]
    cid = CID[: data[1] % 7] if len(data) > 1 else b""
    plaintext = data[2:]
    for aead in (CCM_8, CCM, GCM):
        sender, receiver = _pair(aead, cid)
        _seal_counter[0] += 1
        seq = _seal_counter[0]
        record = sender.seal(1, seq, content_type, plaintext)
        expected = reference_seal(aead, KEY_A, IV_A, 1, seq, content_type, plaintext, cid)
        assert record == expected, f"seal gave {record.hex()}, expected {expected.hex()}"
        assert receiver.open(record) == (content_type, plaintext)


def check(data: bytes) -> None:
    """The oracle; raises AssertionError (or whatever the record layer leaks) on a finding."""
    if len(data) < 2:
        data = data.ljust(2, b"\0")
    mode = data[0] % 3
    if mode == 0:
        check_datagram(data[2:], data[1] % 8)
    elif mode == 1:
        check_tamper(data[1:])
    else:
        check_roundtrip(data[1:])


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    check(data)


def _seeds() -> list[bytes]:
    hello = bytes([HANDSHAKE]) + DTLS_1_0 + bytes(8) + b"\x00\x04" + b"\x01\x00\x00\x00"
    app = bytes([APPLICATION_DATA]) + DTLS_1_2 + b"\x00\x01" + bytes(6) + b"\x00\x03abc"
    cid_record = bytes([TLS12_CID]) + DTLS_1_2 + b"\x00\x01" + bytes(5) + b"\x07" + CID
    cid_record += b"\x00\x02hi"
    return [
        b"\x00\x00" + hello,
        b"\x00\x00" + hello + app + app,
        b"\x00\x06" + cid_record + cid_record,
        b"\x00\x00" + app[:12],
        b"\x01\x00\x01" + bytes(6) + b"\xff",
        b"\x01\x01\x00" + bytes(6) + bytes(40) + b"\x01",
        b"\x02\x03\x06hello",
        b"\x02\x00\x00",
    ]


#: Inputs that make a useful starting corpus.
SEEDS: tuple[bytes, ...] = tuple(_seeds())


def main(argv: list[str]) -> None:
    import atheris
    from seed_corpus import fuzz  # beside this file (run as a script)

    global _record
    with atheris.instrument_imports(include=["extplugtest"]):
        from extplugtest.dtls import _record as record
    _record = record
    fuzz(argv, SEEDS, check, TestOneInput,
         (reference_record, reference_datagram, check_datagram, check_tamper, check))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv)
