"""Tests for the DTLS 1.2 record layer, ``extplugtest.dtls._record``.

Known-answer records are built independently with pyca/cryptography's AESCCM/AESGCM by
``reference_seal`` in tests/fuzz/fuzz_dtls_record.py (nonce of RFC 6655 §3 / RFC 5288 §3,
additional data of RFC 5246 §6.2.3.3 with the DTLS sequence number of RFC 6347 §4.1.2.1, and
RFC 9146 §4-5 for tls12_cid records); header vectors are written by hand from RFC 6347 §4.1.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extplugtest.dtls import _record as rec
from extplugtest.dtls._record import (
    AEAD_AES_128_CCM,
    AEAD_AES_128_CCM_8,
    AEAD_AES_128_GCM,
    ALERT,
    APPLICATION_DATA,
    CHANGE_CIPHER_SPEC,
    HANDSHAKE,
    TLS12_CID,
    AeadCipher,
    RecordError,
    ReplayWindow,
    parse_datagram,
)

_FUZZ_PATH = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_dtls_record.py"
_spec = importlib.util.spec_from_file_location("fuzz_dtls_record_reference", _FUZZ_PATH)
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

AEADS = [AEAD_AES_128_CCM_8, AEAD_AES_128_CCM, AEAD_AES_128_GCM]
AEAD_IDS = ["ccm8", "ccm", "gcm"]
TAG = {AEAD_AES_128_CCM_8: 8, AEAD_AES_128_CCM: 16, AEAD_AES_128_GCM: 16}
CLIENT_KEY, CLIENT_IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f"), bytes.fromhex("a0a1a2a3")
SERVER_KEY, SERVER_IV = bytes.fromhex("101112131415161718191a1b1c1d1e1f"), bytes.fromhex("b0b1b2b3")
SERVER_CID = bytes.fromhex("c1c2c3c4c5c6")  # Californium's default length, 6
CLIENT_CID = bytes.fromhex("d1d2")
SIZES = [0, 1, 15, 16, 17, 64, 1024, 16384]

# The module's AEAD numbers are the reference's.
assert (ref.CCM_8, ref.CCM, ref.GCM) == (AEAD_AES_128_CCM_8, AEAD_AES_128_CCM, AEAD_AES_128_GCM)


def server(aead: int, **options) -> AeadCipher:
    """The server side: writes with the server keys, reads the client's."""
    return AeadCipher(aead, SERVER_KEY, SERVER_IV, CLIENT_KEY, CLIENT_IV, **options)


def client(aead: int, **options) -> AeadCipher:
    return AeadCipher(aead, CLIENT_KEY, CLIENT_IV, SERVER_KEY, SERVER_IV, **options)


def client_record(
    aead: int,
    seq: int,
    payload: bytes,
    content_type: int = APPLICATION_DATA,
    cid: bytes = b"",
    **kw,
) -> bytes:
    """A record from the client, built by the reference."""
    return ref.reference_seal(aead, CLIENT_KEY, CLIENT_IV, 1, seq, content_type, payload, cid, **kw)


def examples(n: int) -> int:
    """n examples, or more if the loaded Hypothesis profile asks for more (e.g. "fuzz")."""
    return max(n, settings().max_examples)


def result_of(call, *args) -> int:
    with pytest.raises(RecordError) as info:
        call(*args)
    return info.value.result


# ---------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cid", [b"", SERVER_CID, b"\x07"], ids=["plain", "cid6", "cid1"])
def test_seal_matches_reference(aead: int, size: int, cid: bytes) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    cipher = client(aead, write_cid=cid)
    for seq, content_type in ((0, HANDSHAKE), (1, ALERT), (0x0000FFFFFFFF, APPLICATION_DATA)):
        record = cipher.seal(1, seq, content_type, payload)
        assert record == client_record(aead, seq, payload, content_type, cid)
        assert len(record) == cipher.record_length(size)


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cid", [b"", SERVER_CID], ids=["plain", "cid6"])
def test_open_reference_records(aead: int, size: int, cid: bytes) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    cipher = server(aead, read_cid=cid)
    for seq, content_type in ((5, HANDSHAKE), (6, APPLICATION_DATA), (7, ALERT)):
        record = client_record(aead, seq, payload, content_type, cid)
        assert cipher.open(record) == (content_type, payload)
    assert cipher.opened == 3
    assert cipher.highest_seq == 7


def test_header_layout_by_hand() -> None:
    # RFC 6347 §4.1: type, version fefd, epoch 1, seq 0x0102030405, length; then the explicit
    # nonce (epoch ‖ seq, RFC 6655 §3), ciphertext, 8-byte CCM_8 tag.
    record = client(AEAD_AES_128_CCM_8).seal(1, 0x0102030405, APPLICATION_DATA, b"abc")
    assert record[:13] == bytes.fromhex("17 fefd 0001 000102030405 0013")
    assert record[13:21] == bytes.fromhex("0001 000102030405")
    assert len(record) == 13 + 8 + 3 + 8
    # RFC 9146 §4: type 25, version, epoch, seq, cid (no length byte), length.
    record = client(AEAD_AES_128_GCM, write_cid=SERVER_CID).seal(1, 9, HANDSHAKE, b"")
    assert record[:19] == bytes.fromhex("19 fefd 0001 000000000009 c1c2c3c4c5c6 0019")
    assert len(record) == 19 + 8 + 1 + 16


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
def test_cid_padding_is_stripped(aead: int) -> None:
    cipher = server(aead, read_cid=SERVER_CID)
    for seq, padding in enumerate((0, 1, 7, 16, 300)):
        record = client_record(aead, seq, b"data", HANDSHAKE, SERVER_CID, padding=padding)
        assert cipher.open(record) == (HANDSHAKE, b"data")
    # An empty content with padding: the real type is the last non-zero byte.
    record = client_record(aead, 10, b"", ALERT, SERVER_CID, padding=3)
    assert cipher.open(record) == (ALERT, b"")
    # The maximum content plus padding still opens.
    big = bytes([1]) * 16384
    assert cipher.open(client_record(aead, 11, big, APPLICATION_DATA, SERVER_CID, padding=100)) == (
        APPLICATION_DATA,
        big,
    )


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
@pytest.mark.parametrize(
    "inner",
    [b"", b"\0", b"\0" * 20, b"abc\x19", b"abc\x18\0", b"abc\x99", b"\x17\x00\x1a"],
    ids=["empty", "zero", "zeros", "type25", "heartbeat", "type153", "type26"],
)
def test_bad_inner_plaintext(aead: int, inner: bytes) -> None:
    # RFC 9146 §4: all zeros has no real type; the real type must be a known content type.
    cipher = server(aead, read_cid=SERVER_CID)
    record = client_record(aead, 1, b"", cid=SERVER_CID, inner=inner)
    expected = rec.RECORD_TOO_SHORT if inner == b"" else rec.RECORD_BAD_INNER
    assert result_of(cipher.open, record) == expected
    assert cipher.discarded == 1 and cipher.auth_failures == 0


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
def test_plaintext_overflow(aead: int) -> None:
    cipher = client(aead)
    assert len(cipher.seal(1, 1, APPLICATION_DATA, bytes(16384))) == cipher.record_length(16384)
    assert result_of(cipher.seal, 1, 2, APPLICATION_DATA, bytes(16385)) == rec.RECORD_OVERFLOW
    # A peer's record above 2^14 authenticates but is a record_overflow (RFC 5246 §6.2.1).
    record = client_record(aead, 1, bytes(16385))
    assert result_of(server(aead).open, record) == rec.RECORD_OVERFLOW


def test_buffer_types_and_cid_override() -> None:
    cipher = client(AEAD_AES_128_CCM_8, write_cid=SERVER_CID)
    expected = client_record(AEAD_AES_128_CCM_8, 1, b"xyz", cid=SERVER_CID)
    assert cipher.seal(1, 1, APPLICATION_DATA, bytearray(b"xyz")) == expected
    assert cipher.seal(1, 2, APPLICATION_DATA, memoryview(b"xyz")) == client_record(
        AEAD_AES_128_CCM_8, 2, b"xyz", cid=SERVER_CID
    )
    # cid=b"" sends a plain record, another CID overrides write_cid.
    assert cipher.seal(1, 3, APPLICATION_DATA, b"xyz", b"") == client_record(
        AEAD_AES_128_CCM_8, 3, b"xyz"
    )
    assert cipher.seal(1, 4, APPLICATION_DATA, b"xyz", bytearray(b"\x01")) == client_record(
        AEAD_AES_128_CCM_8, 4, b"xyz", cid=b"\x01"
    )
    receiver = server(AEAD_AES_128_CCM_8, read_cid=SERVER_CID)
    assert receiver.open(bytearray(expected)) == (APPLICATION_DATA, b"xyz")
    with pytest.raises(TypeError):
        cipher.seal(1, 5, APPLICATION_DATA, "text")


def test_two_directions_are_independent() -> None:
    """Client and server ciphers of one connection talk to each other, with CIDs both ways."""
    for aead in AEADS:
        c = client(aead, write_cid=SERVER_CID, read_cid=CLIENT_CID)
        s = server(aead, write_cid=CLIENT_CID, read_cid=SERVER_CID)
        assert s.open(c.seal(1, 1, HANDSHAKE, b"finished")) == (HANDSHAKE, b"finished")
        assert c.open(s.seal(1, 1, HANDSHAKE, b"finished")) == (HANDSHAKE, b"finished")
        # A record sealed with the wrong direction's key does not open.
        assert result_of(s.open, s.seal(1, 2, APPLICATION_DATA, b"x", SERVER_CID)) == (
            rec.RECORD_BAD_TAG
        )


def test_c_batch_helpers_match_reference() -> None:
    for aead, cid in ((AEAD_AES_128_CCM_8, b""), (AEAD_AES_128_GCM, SERVER_CID)):
        sender = client(aead, write_cid=cid)
        records = rec._seal_records(sender, 5, 64, 100)
        expected = b"".join(client_record(aead, 100 + i, bytes(64), cid=cid) for i in range(5))
        assert records == expected
        receiver = server(aead, read_cid=cid)
        assert rec._open_records(receiver, records) == 5
        assert rec._open_records(receiver, records) == 5  # the window is reset per call
        assert receiver.opened == 10
        # seq 100 has been sealed: sealing it again is refused.
        with pytest.raises(RecordError):
            rec._seal_records(sender, 1, 64, 100)


def test_aead_for_cipher_suite() -> None:
    suites = rec.AEAD_FOR_CIPHER_SUITE
    assert suites[0xC0A8] == suites[0xC0AE] == suites[0xD003] == AEAD_AES_128_CCM_8
    assert suites[0xC0A4] == suites[0xC0AC] == suites[0xD005] == AEAD_AES_128_CCM
    assert suites[0x00A8] == suites[0xC02B] == suites[0xC02F] == AEAD_AES_128_GCM
    assert rec.openssl_version().startswith("OpenSSL 3")


# ---------------------------------------------------------------------------------------------
# Round trips (hypothesis)

content_types = st.sampled_from([CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA])


@settings(max_examples=examples(300), deadline=None)
@given(
    aead=st.sampled_from(AEADS),
    keys=st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
    ivs=st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    cid=st.binary(max_size=20),
    epoch=st.integers(1, 0xFFFF),
    seqs=st.lists(st.integers(0, 2**48 - 1), min_size=1, max_size=4, unique=True),
    content_type=content_types,
    payload=st.one_of(st.binary(max_size=80), st.binary(max_size=2000)),
)
def test_roundtrip(aead, keys, ivs, cid, epoch, seqs, content_type, payload) -> None:
    a = AeadCipher(aead, keys[0], ivs[0], keys[1], ivs[1], epoch=epoch, write_cid=cid)
    b = AeadCipher(aead, keys[1], ivs[1], keys[0], ivs[0], epoch=epoch, read_cid=cid)
    for seq in sorted(seqs):
        record = a.seal(epoch, seq, content_type, payload)
        expected = ref.reference_seal(aead, keys[0], ivs[0], epoch, seq, content_type, payload, cid)
        assert record == expected
        assert b.open(record) == (content_type, payload)
        [parsed] = parse_datagram(record, len(cid))
        assert (parsed.epoch, parsed.seq, parsed.cid) == (epoch, seq, cid)
    assert b.highest_seq == max(seqs)


# ---------------------------------------------------------------------------------------------
# Tampering


TYPE_FLIP_RESULTS = (
    rec.RECORD_BAD_TYPE,
    rec.RECORD_UNEXPECTED_CID,
    rec.RECORD_CID_MISMATCH,
    rec.RECORD_BAD_LENGTH,
    rec.RECORD_BAD_TAG,
)


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
@pytest.mark.parametrize("cid", [b"", SERVER_CID], ids=["plain", "cid6"])
@pytest.mark.parametrize("size", [0, 64])
def test_every_byte_flip_fails(aead: int, cid: bytes, size: int) -> None:
    receiver = server(aead, read_cid=cid)
    record = client_record(aead, 42, bytes(range(size)), cid=cid)
    results = {}
    for i in range(len(record)):
        for mask in (0x01, 0x80, 0xFF):
            changed = bytearray(record)
            changed[i] ^= mask
            results[i, mask] = result_of(receiver.open, bytes(changed))
    # Header fields fail on their own checks, everything the AEAD covers fails authentication.
    header = 13 + len(cid)
    for (i, _mask), result in results.items():
        if i == 0:  # another type: unknown, CID framing changed, or a different AAD
            assert result in TYPE_FLIP_RESULTS, i
        elif i in (1, 2):
            assert result == rec.RECORD_BAD_VERSION, i
        elif i in (3, 4):  # epoch 0 cannot carry a CID
            assert result in (rec.RECORD_BAD_EPOCH, rec.RECORD_UNEXPECTED_CID), i
        elif 11 <= i < 11 + len(cid):
            assert result == rec.RECORD_CID_MISMATCH, i
        elif i in (header - 2, header - 1):
            assert result in (rec.RECORD_BAD_LENGTH, rec.RECORD_TOO_SHORT), i
        else:  # seq (in the AAD), explicit nonce, ciphertext, tag
            assert result == rec.RECORD_BAD_TAG, i
    tag_failures = sum(r == rec.RECORD_BAD_TAG for r in results.values())
    assert receiver.auth_failures == tag_failures
    assert receiver.discarded == len(results) - tag_failures
    # Nothing was accepted, so the window is empty and the genuine record still opens.
    assert receiver.highest_seq is None
    assert receiver.open(record) == (APPLICATION_DATA, bytes(range(size)))


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
def test_truncated_or_extended_records_fail(aead: int) -> None:
    receiver = server(aead)
    record = client_record(aead, 1, b"hello")
    for cut in range(len(record)):
        with pytest.raises(RecordError):
            receiver.open(record[:cut])
    assert result_of(receiver.open, record + b"\0") == rec.RECORD_BAD_LENGTH
    # A shorter length field that still covers nonce and tag: authentication fails.
    short = bytearray(record[:-1])
    short[11:13] = (len(short) - 13).to_bytes(2, "big")
    assert result_of(receiver.open, bytes(short)) == rec.RECORD_BAD_TAG
    # Shorter than explicit nonce + tag.
    tiny = record[:11] + (7 + TAG[aead]).to_bytes(2, "big") + record[13 : 13 + 7 + TAG[aead]]
    assert result_of(receiver.open, tiny) == rec.RECORD_TOO_SHORT
    assert receiver.open(record) == (APPLICATION_DATA, b"hello")


# ---------------------------------------------------------------------------------------------
# Connection state checks


def test_epoch_and_cid_checks() -> None:
    aead = AEAD_AES_128_CCM_8
    receiver = server(aead, epoch=2, read_cid=SERVER_CID)
    good = ref.reference_seal(aead, CLIENT_KEY, CLIENT_IV, 2, 1, HANDSHAKE, b"x", SERVER_CID)
    assert receiver.open(good) == (HANDSHAKE, b"x")
    epoch1 = ref.reference_seal(aead, CLIENT_KEY, CLIENT_IV, 1, 2, HANDSHAKE, b"x", SERVER_CID)
    assert result_of(receiver.open, epoch1) == rec.RECORD_BAD_EPOCH
    # RFC 9146 §3: once a CID is in use, a record without it (or with another one) is dropped.
    plain = ref.reference_seal(aead, CLIENT_KEY, CLIENT_IV, 2, 3, HANDSHAKE, b"x")
    assert result_of(receiver.open, plain) == rec.RECORD_CID_MISMATCH
    other = ref.reference_seal(aead, CLIENT_KEY, CLIENT_IV, 2, 4, HANDSHAKE, b"x", b"zzzzzz")
    assert result_of(receiver.open, other) == rec.RECORD_CID_MISMATCH
    # Without a read CID, tls12_cid records cannot even be parsed (the CID length is unknown).
    no_cid = server(aead, epoch=2)
    assert result_of(no_cid.open, good) == rec.RECORD_UNEXPECTED_CID
    assert receiver.discarded == 3 and no_cid.discarded == 1
    assert receiver.stats() == {
        "sealed": 0,
        "opened": 1,
        "auth-failures": 0,
        "replays": 0,
        "discarded": 3,
    }


def test_seal_errors() -> None:
    cipher = client(AEAD_AES_128_GCM)
    cipher.seal(1, 10, APPLICATION_DATA, b"")
    # A nonce never repeats under one key (RFC 5288 §3): seq must go up.
    assert result_of(cipher.seal, 1, 10, APPLICATION_DATA, b"") == rec.RECORD_NONCE_REUSE
    assert result_of(cipher.seal, 1, 9, APPLICATION_DATA, b"") == rec.RECORD_NONCE_REUSE
    cipher.seal(1, 11, APPLICATION_DATA, b"")
    assert result_of(cipher.seal, 2, 12, APPLICATION_DATA, b"") == rec.RECORD_BAD_EPOCH
    assert result_of(cipher.seal, 1, 2**48, APPLICATION_DATA, b"") == rec.RECORD_BAD_SEQ
    for content_type in (0, 19, 24, TLS12_CID, 255, 276):
        assert result_of(cipher.seal, 1, 12, content_type, b"") == rec.RECORD_BAD_TYPE
    assert len(cipher.seal(1, 2**48 - 1, APPLICATION_DATA, b"")) == cipher.record_length(0)
    assert result_of(cipher.seal, 1, 2**48 - 1, APPLICATION_DATA, b"") == rec.RECORD_NONCE_REUSE
    with pytest.raises(OverflowError):
        cipher.seal(1, -1, APPLICATION_DATA, b"")
    assert result_of(cipher.seal, 1, 2**48 + 1, APPLICATION_DATA, b"") == rec.RECORD_BAD_SEQ
    # A CID longer than 255 bytes cannot be encoded (RFC 9146 §3: cid<0..2^8-1>).
    assert result_of(cipher.seal, 1, 2**48, APPLICATION_DATA, b"", bytes(256)) == (
        rec.RECORD_BAD_SEQ
    )
    fresh = client(AEAD_AES_128_GCM)
    assert result_of(fresh.seal, 1, 0, APPLICATION_DATA, b"", bytes(256)) == (
        rec.RECORD_CID_MISMATCH
    )
    assert cipher.sealed == 3


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="AEAD"):
        AeadCipher(99, CLIENT_KEY, CLIENT_IV, SERVER_KEY, SERVER_IV)
    with pytest.raises(ValueError, match="keys"):
        AeadCipher(AEAD_AES_128_GCM, CLIENT_KEY[:15], CLIENT_IV, SERVER_KEY, SERVER_IV)
    with pytest.raises(ValueError, match="keys"):
        AeadCipher(AEAD_AES_128_GCM, CLIENT_KEY, CLIENT_IV, SERVER_KEY + b"x", SERVER_IV)
    with pytest.raises(ValueError, match="IV"):
        AeadCipher(AEAD_AES_128_GCM, CLIENT_KEY, CLIENT_IV[:3], SERVER_KEY, SERVER_IV)
    for epoch in (0, 0x10000):
        with pytest.raises(ValueError, match="epoch"):
            AeadCipher(AEAD_AES_128_GCM, CLIENT_KEY, CLIENT_IV, SERVER_KEY, SERVER_IV, epoch=epoch)
    with pytest.raises(ValueError, match="255"):
        client(AEAD_AES_128_GCM, read_cid=bytes(256))
    cipher = client(AEAD_AES_128_CCM, write_cid=bytes(255), epoch=7, anti_replay=False)
    assert (cipher.aead, cipher.tag_length, cipher.epoch) == (AEAD_AES_128_CCM, 16, 7)
    assert (cipher.write_cid, cipher.read_cid, cipher.anti_replay) == (bytes(255), b"", False)
    assert cipher.record_length(10) == 13 + 255 + 8 + 10 + 1 + 16


# ---------------------------------------------------------------------------------------------
# Anti-replay window (RFC 6347 §4.1.2.6)


def test_replay_window_basics() -> None:
    w = ReplayWindow()
    assert w.highest is None and w.bitmap == 0
    assert w.check(1000) == rec.RECORD_OK
    assert w.accept(1000) is True
    assert w.check(1000) == rec.RECORD_DUPLICATE
    assert w.check(1001) == rec.RECORD_OK
    assert w.check(937) == rec.RECORD_OK  # 1000 - 63: the left edge
    assert w.check(936) == rec.RECORD_TOO_OLD
    assert w.accept(990) is False  # older, inside the window: marked, edge stays
    assert w.check(990) == rec.RECORD_DUPLICATE
    assert w.highest == 1000 and w.bitmap == 1 | 1 << 10
    # Window shift: 1005 moves the right edge by 5.
    assert w.accept(1005) is True
    assert w.bitmap == 1 | 1 << 5 | 1 << 15
    assert w.check(1000) == rec.RECORD_DUPLICATE and w.check(1001) == rec.RECORD_OK
    # Far ahead: everything before the new window is too old, the old bits are gone.
    assert w.accept(1_000_000) is True
    assert w.bitmap == 1
    assert w.check(1005) == rec.RECORD_TOO_OLD
    assert w.check(1_000_000 - 63) == rec.RECORD_OK
    # Sequence number 0 and the 48-bit maximum.
    w = ReplayWindow()
    assert w.check(0) == rec.RECORD_OK and w.accept(0)
    assert w.check(0) == rec.RECORD_DUPLICATE
    assert w.accept(2**48 - 1) and w.check(2**48 - 1) == rec.RECORD_DUPLICATE
    assert w.check(0) == rec.RECORD_TOO_OLD


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.one_of(st.integers(0, 200), st.integers(0, 2**48 - 1)), max_size=60))
def test_replay_window_model(seqs: list[int]) -> None:
    """Against a set-based model: new and within 64 of the highest -> OK."""
    w = ReplayWindow()
    seen: set[int] = set()
    for seq in seqs:
        highest = max(seen) if seen else None
        if highest is not None and seq in seen and highest - seq < 64:
            expected = rec.RECORD_DUPLICATE
        elif highest is not None and highest - seq >= 64:
            expected = rec.RECORD_TOO_OLD
        else:
            expected = rec.RECORD_OK
        assert w.check(seq) == expected, (seq, sorted(seen))
        if expected == rec.RECORD_OK:
            assert w.accept(seq) is (highest is None or seq > highest)
            seen.add(seq)
        assert w.highest == (max(seen) if seen else None)


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
def test_cipher_replay_protection(aead: int) -> None:
    receiver = server(aead)
    records = {seq: client_record(aead, seq, seq.to_bytes(2, "big")) for seq in range(200)}
    assert receiver.open(records[100]) == (APPLICATION_DATA, b"\x00\x64")
    # Duplicate: dropped before decryption, counted as a replay.
    assert result_of(receiver.open, records[100]) == rec.RECORD_DUPLICATE
    # Reordered inside the window: fine, once.
    assert receiver.open(records[40]) == (APPLICATION_DATA, b"\x00\x28")
    assert result_of(receiver.open, records[40]) == rec.RECORD_DUPLICATE
    assert result_of(receiver.open, records[36]) == rec.RECORD_TOO_OLD
    assert receiver.open(records[37])[1] == b"\x00\x25"
    # Window shift.
    assert receiver.open(records[150])[1] == b"\x00\x96"
    assert result_of(receiver.open, records[86]) == rec.RECORD_TOO_OLD
    assert receiver.open(records[87])[1] == b"\x00\x57"
    # Far ahead is accepted (RFC 6347 §4.1.2.6 only drops old and duplicate records).
    far = client_record(aead, 2**40, b"far")
    assert receiver.open(far) == (APPLICATION_DATA, b"far")
    assert result_of(receiver.open, records[199]) == rec.RECORD_TOO_OLD
    assert receiver.highest_seq == 2**40
    assert receiver.replays == 5 and receiver.opened == 6 and receiver.auth_failures == 0


@pytest.mark.parametrize("aead", AEADS, ids=AEAD_IDS)
def test_window_updated_only_after_authentication(aead: int) -> None:
    receiver = server(aead)
    record = client_record(aead, 500, b"genuine")
    forged = bytearray(record)
    forged[-1] ^= 1
    assert result_of(receiver.open, bytes(forged)) == rec.RECORD_BAD_TAG
    assert receiver.highest_seq is None  # a forgery moves nothing
    assert receiver.open(record) == (APPLICATION_DATA, b"genuine")
    # Now checked before decryption: a forged copy of a seen record is a replay, not a
    # MAC failure (it does not feed Californium's MAC error filter either).
    assert result_of(receiver.open, bytes(forged)) == rec.RECORD_DUPLICATE
    assert (receiver.auth_failures, receiver.replays) == (1, 1)


def test_anti_replay_disabled() -> None:
    receiver = server(AEAD_AES_128_CCM_8, anti_replay=False)
    record = client_record(AEAD_AES_128_CCM_8, 7, b"again")
    for _ in range(3):
        assert receiver.open(record) == (APPLICATION_DATA, b"again")
    assert receiver.highest_seq == 7  # the window is still kept (for "newest" decisions)


# ---------------------------------------------------------------------------------------------
# Record parsing (RFC 6347 §4.1, RFC 9146 §4)


def header(
    content_type: int,
    version: int = 0xFEFD,
    epoch: int = 0,
    seq: int = 0,
    cid: bytes = b"",
    length: int | None = None,
    fragment: bytes = b"",
) -> bytes:
    length = len(fragment) if length is None else length
    return (
        bytes([content_type])
        + version.to_bytes(2, "big")
        + epoch.to_bytes(2, "big")
        + seq.to_bytes(6, "big")
        + cid
        + length.to_bytes(2, "big")
        + fragment
    )


def parse_error(data: bytes, cid_length: int = 0) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse_datagram(data, cid_length)
    return info.value


def test_parse_several_records() -> None:
    hello = header(HANDSHAKE, 0xFEFF, fragment=b"\x01\x00\x00\x10")
    ccs = header(CHANGE_CIPHER_SPEC, seq=1, fragment=b"\x01")
    finished = header(HANDSHAKE, epoch=1, seq=0, fragment=bytes(40))
    cid = header(TLS12_CID, epoch=1, seq=0x123456789ABC, cid=SERVER_CID, fragment=b"xyz")
    records = parse_datagram(hello + ccs + finished + cid, 6)
    assert [r.content_type for r in records] == [HANDSHAKE, CHANGE_CIPHER_SPEC, HANDSHAKE, 25]
    assert records[0] == rec.Record(HANDSHAKE, 0xFEFF, 0, 0, b"", b"\x01\x00\x00\x10", hello)
    assert records[3] == rec.Record(25, 0xFEFD, 1, 0x123456789ABC, SERVER_CID, b"xyz", cid)
    assert records[2].raw == finished and records[1].fragment == b"\x01"
    # An empty fragment is a well-formed record.
    assert parse_datagram(header(APPLICATION_DATA, epoch=1)) == [
        rec.Record(APPLICATION_DATA, 0xFEFD, 1, 0, b"", b"", header(APPLICATION_DATA, epoch=1))
    ]


def test_parse_errors() -> None:
    good = header(APPLICATION_DATA, epoch=1, fragment=b"abc")
    assert parse_error(b"").result == rec.RECORD_TRUNCATED
    for cut in range(1, 13):
        assert parse_error(good[:cut]).result == rec.RECORD_TRUNCATED
    for cut in range(13, len(good)):
        assert parse_error(good[:cut]).result == rec.RECORD_BAD_LENGTH
    assert parse_error(header(APPLICATION_DATA, length=4, fragment=b"abc")).result == (
        rec.RECORD_BAD_LENGTH
    )
    # Longer than 2^14 + 2048 (RFC 5246 §6.2.3), even when the datagram holds it.
    too_long = header(APPLICATION_DATA, epoch=1, fragment=bytes(18433))
    assert parse_error(too_long).result == rec.RECORD_BAD_LENGTH
    assert len(parse_datagram(header(APPLICATION_DATA, epoch=1, fragment=bytes(18432)))) == 1
    for content_type in (0, 19, 24, 26, 255):
        assert parse_error(header(content_type)).result == rec.RECORD_BAD_TYPE
    # Error offset and the records before the bad one.
    error = parse_error(good + good + b"\x17\xfe")
    assert (error.result, error.offset) == (rec.RECORD_TRUNCATED, 2 * len(good))
    assert [r.raw for r in error.records] == [good, good]
    assert "truncated header" in str(error)
    # A bound on the number of records (the C path's array size).
    assert len(parse_datagram(good * 3, max_records=3)) == 3
    error = parse_error_limited(good * 4, 3)
    assert (error.result, error.offset, len(error.records)) == (rec.RECORD_TOO_MANY, 48, 3)


def parse_error_limited(data: bytes, max_records: int) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse_datagram(data, 0, max_records)
    return info.value


def test_parse_versions() -> None:
    # DTLS 1.0 only for a ClientHello (1) or HelloVerifyRequest (3) in epoch 0.
    for msg_type in (1, 3):
        assert parse_datagram(header(HANDSHAKE, 0xFEFF, fragment=bytes([msg_type])))
    bad = [
        header(HANDSHAKE, 0xFEFF, fragment=b"\x02"),  # ServerHello
        header(HANDSHAKE, 0xFEFF),  # no handshake type at all
        header(HANDSHAKE, 0xFEFF, epoch=1, fragment=b"\x01"),
        header(APPLICATION_DATA, 0xFEFF, fragment=b"\x01"),
        header(ALERT, 0xFEFF, fragment=b"\x01\x00"),
        header(HANDSHAKE, 0x0303, fragment=b"\x01"),  # TLS 1.2
        header(HANDSHAKE, 0xFEFC, fragment=b"\x01"),  # DTLS 1.3
        header(TLS12_CID, 0xFEFF, epoch=1, cid=SERVER_CID, fragment=b"\x01"),
    ]
    for data in bad:
        assert parse_error(data, 6).result == rec.RECORD_BAD_VERSION, data.hex()


def test_parse_cid_records() -> None:
    record = header(TLS12_CID, epoch=1, cid=SERVER_CID, fragment=b"abcd")
    assert parse_datagram(record, 6)[0].cid == SERVER_CID
    # The CID length is the receiver's: without one the record cannot be framed.
    assert parse_error(record, 0).result == rec.RECORD_UNEXPECTED_CID
    assert parse_error(record, -1).result == rec.RECORD_UNEXPECTED_CID
    assert parse_error(record, 256).result == rec.RECORD_UNEXPECTED_CID
    # With another length the length field is read elsewhere: the framing breaks.
    assert parse_error(record, 4).result == rec.RECORD_BAD_LENGTH
    assert parse_error(record, 8).result == rec.RECORD_BAD_LENGTH
    # Epoch 0 records never carry a CID.
    assert parse_error(header(TLS12_CID, cid=SERVER_CID), 6).result == rec.RECORD_UNEXPECTED_CID
    # Header shorter than 13 + CID.
    assert parse_error(record[:18], 6).result == rec.RECORD_TRUNCATED


def test_parse_reference_agrees_on_examples() -> None:
    for seed in ref.SEEDS:
        ref.check(seed)


@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=200), st.integers(0, 8))
def test_parse_random_bytes_match_reference(data: bytes, cid_length: int) -> None:
    ref.check_datagram(data, cid_length)


record_strategy = st.builds(
    header,
    st.sampled_from([20, 21, 22, 23, 24, 25, 26]),
    st.sampled_from([0xFEFD, 0xFEFF, 0x0303]),
    st.integers(0, 2),
    st.integers(0, 2**48 - 1),
    st.sampled_from([b"", SERVER_CID]),
    st.none(),
    st.binary(max_size=40),
)


@settings(max_examples=examples(500), deadline=None)
@given(st.lists(record_strategy, max_size=5), st.sampled_from([0, 6]), st.data())
def test_parse_structured_datagrams_match_reference(records, cid_length, data) -> None:
    datagram = bytearray(b"".join(records))
    if datagram and data.draw(st.booleans()):
        datagram[data.draw(st.integers(0, len(datagram) - 1))] = data.draw(st.integers(0, 255))
    ref.check_datagram(bytes(datagram), cid_length)


# ---------------------------------------------------------------------------------------------
# The fuzz target's smoke run is in tests/unit/test_fuzz_smoke.py.


# -- Californium's default datagram filter (inventory §6.4) -------------------------------------
def _header(epoch: int, seq: int, content_type: int = APPLICATION_DATA) -> bytes:
    return bytes([content_type, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + seq.to_bytes(6, "big")


@pytest.mark.parametrize(
    ("epoch", "seq", "filtered"),
    [
        (0, 0, False), (1, (1 << 32) - 1, False), (1, 1 << 32, True), (0, 1 << 32, True),
        (1, (1 << 48) - 1, True), (1, 1 << 40, True), (2, 0, True), (0xFFFF, 5, True),
    ],
)  # fmt: skip
def test_filtered_datagram_looks_at_epoch_and_seq_of_the_first_header(epoch, seq, filtered):
    """ "Drop if epoch > 1 or seq >= 2^32", before any parsing: a later record does not count."""
    first = _header(epoch, seq) + b"\x00\x01\x00"
    assert rec.filtered_datagram(first) is filtered
    assert rec.filtered_datagram(first + _header(0, 0) + b"\x00\x00") is filtered
    assert rec.filtered_datagram(_header(1, 1) + b"\x00\x01\x00" + first) is False


def test_filtered_datagram_leaves_short_datagrams_to_the_parser():
    assert not rec.filtered_datagram(b"")
    assert not rec.filtered_datagram(_header(2, 1 << 40)[:12])


@given(st.binary(max_size=64))
def test_filtered_datagram_agrees_with_the_header_fields(data):
    expected = len(data) >= 13 and (
        int.from_bytes(data[3:5], "big") > 1 or int.from_bytes(data[5:11], "big") >= 1 << 32
    )
    assert rec.filtered_datagram(data) is expected
