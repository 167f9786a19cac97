"""The saved-connections stream (dtls/persistence.py, inventory §6.6): round trip, versions,
bounds, the password wrapper and the file; hostile bytes only ever raise PersistenceError."""

from __future__ import annotations

import contextlib
import os
import stat

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from extplugtest.dtls._record import AEAD_FOR_CIPHER_SUITE
from extplugtest.dtls.ciphersuites import ALL_SUITES
from extplugtest.dtls.messages import MAX_PLAINTEXT
from extplugtest.dtls.persistence import (
    PersistenceError,
    SavedConnection,
    SavedStore,
    decode_store,
    encode_store,
    read_store_file,
    seal_store,
    unseal_store,
    write_store_file,
)

SUITES = [suite.code for suite in ALL_SUITES]


def connection(**changes: object) -> SavedConnection:
    values: dict[str, object] = dict(
        address=("127.0.0.1", 40000), age=1.5, session_age=30.25, read_cid=b"\x01" * 6,
        suite_code=0xC0A8, session_id=b"s" * 32, master_secret=b"m" * 48,
        identity=b"Client_identity", peer_certificate_type=None, extended_master_secret=True,
        secure_renegotiation=True, cid_negotiated=True, resumed=False, epoch=1,
        aead=AEAD_FOR_CIPHER_SUITE[0xC0A8], write_key=b"w" * 16, write_iv=b"wiv!",
        read_key=b"r" * 16, read_iv=b"riv!", write_cid=b"", cipher_read_cid=b"\x01" * 6,
        anti_replay=True, next_write_seq=17, last_sealed=(1 << 48) | 16, window_highest=12,
        window_bitmap=0b1011,
    )  # fmt: skip
    values.update(changes)
    return SavedConnection(**values)  # type: ignore[arg-type]


@st.composite
def saved_connections(draw: st.DrawFn) -> SavedConnection:
    suite = draw(st.sampled_from(SUITES))
    epoch = draw(st.integers(1, 0xFFFF))
    cid_negotiated = draw(st.booleans())
    read_cid = draw(st.binary(min_size=0, max_size=16))
    ipv6 = draw(st.booleans())
    if ipv6:
        host = draw(st.sampled_from(["::1", "fe80::1", "2001:db8::7"]))
        address: tuple = (host, draw(st.integers(0, 0xFFFF)), 0, draw(st.integers(0, 2**32 - 1)))
    else:
        address = (draw(st.sampled_from(["127.0.0.1", "10.1.2.3"])), draw(st.integers(0, 0xFFFF)))
    return connection(
        address=address,
        age=draw(st.integers(0, 10**9)) / 1000,
        session_age=draw(st.integers(0, 10**9)) / 1000,
        read_cid=read_cid,
        suite_code=suite,
        session_id=draw(st.binary(max_size=32)),
        master_secret=draw(st.sampled_from([b"", os.urandom(48)])),
        identity=draw(st.binary(max_size=300)),
        peer_certificate_type=draw(st.sampled_from([None, 0, 2])),
        extended_master_secret=draw(st.booleans()),
        secure_renegotiation=draw(st.booleans()),
        cid_negotiated=cid_negotiated,
        resumed=draw(st.booleans()),
        epoch=epoch,
        aead=AEAD_FOR_CIPHER_SUITE[suite],
        write_key=draw(st.binary(min_size=16, max_size=16)),
        write_iv=draw(st.binary(min_size=4, max_size=4)),
        read_key=draw(st.binary(min_size=16, max_size=16)),
        read_iv=draw(st.binary(min_size=4, max_size=4)),
        write_cid=draw(st.binary(max_size=16)),
        cipher_read_cid=read_cid if cid_negotiated else b"",
        anti_replay=draw(st.booleans()),
        next_write_seq=draw(st.integers(0, 2**48 - 1)),
        last_sealed=draw(st.sampled_from([0, epoch << 48 | draw(st.integers(0, 2**48 - 1))])),
        window_highest=draw(st.integers(0, 2**48 - 1)),
        window_bitmap=draw(st.integers(0, 2**64 - 1)),
        # RFC 8449 / RFC 6066 limits; mostly none (then the stream has no record sizes item)
        record_size_limit=draw(st.sampled_from([MAX_PLAINTEXT, 64, 512, 1234])),
        receive_limit=draw(st.sampled_from([MAX_PLAINTEXT, 512, 4096])),
    )


stores = st.dictionaries(
    st.text(max_size=40).map(lambda text: f"dtls://{text}"),
    st.lists(saved_connections(), max_size=4),
    max_size=3,
)


@given(stores, st.integers(0, 2**40))
def test_round_trip(connectors, saved_at_ms):
    store = decode_store(encode_store(connectors, saved_at=saved_at_ms / 1000))
    assert store.saved_at == saved_at_ms / 1000
    assert store.connectors == connectors


@given(st.binary(max_size=600))
@example(b"\x01\x00\x08" + bytes(8) + b"\x0aCOMPONENTS" + b"\x00\x03abc\x01\xff\xff")
def test_arbitrary_bytes_raise_only_persistence_error(data):
    for call in (
        decode_store,
        lambda raw: unseal_store(raw, None),
        lambda raw: unseal_store(raw, b"pw"),
    ):
        with contextlib.suppress(PersistenceError):
            call(data)


@given(stores, st.data())
def test_mutated_streams_raise_only_persistence_error(connectors, data):
    """A real stream, truncated or with one byte changed: read or refused, never a crash."""
    stream = bytearray(encode_store(connectors))
    cut = data.draw(st.integers(0, len(stream)))
    position = data.draw(st.integers(0, len(stream) - 1))
    stream[position] = data.draw(st.integers(0, 255))
    for mutated in (bytes(stream), bytes(stream[:cut])):
        with contextlib.suppress(PersistenceError):
            decode_store(mutated)


def test_truncated_stream_is_refused():
    stream = encode_store({"dtls://127.0.0.1:5684": [connection()]})
    for cut in range(len(stream)):
        with pytest.raises(PersistenceError):
            decode_store(stream[:cut])


def test_unknown_item_version_is_refused():
    stream = bytearray(encode_store({"dtls://x": [connection()]}))
    # the first connection item follows the time mark, COMPONENTS and the label
    position = 11 + 11 + 2 + len("dtls://x")
    assert stream[position] == 1
    stream[position] = 2
    with pytest.raises(PersistenceError, match="connection of version 2 is not supported"):
        decode_store(bytes(stream))


def test_an_item_that_overruns_is_refused():
    stream = bytearray(encode_store({"dtls://x": [connection()]}))
    position = 11 + 11 + 2 + len("dtls://x")
    stream[position + 1 : position + 3] = (0xFFFF).to_bytes(2, "big")
    with pytest.raises(PersistenceError, match="truncated"):
        decode_store(bytes(stream))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"suite_code": 0x1234, "aead": 1}, "unknown cipher suite"),
        ({"aead": 3}, "another suite"),  # GCM for a CCM_8 suite
        ({"write_key": b"k" * 15}, "16 bytes"),
        ({"read_iv": b"12345"}, "4 bytes"),
        ({"master_secret": b"m" * 47}, "48 bytes"),
        ({"read_cid": bytes(17)}, "longer than 16"),
        ({"last_sealed": 2 << 48}, "another epoch"),
        ({"record_size_limit": 63}, "record size limit"),
        ({"receive_limit": MAX_PLAINTEXT + 1}, "record size limit"),
    ],
)
def test_values_the_data_path_cannot_use_are_refused(change, reason):
    stream = encode_store({"dtls://x": [connection(**change)]})
    with pytest.raises(PersistenceError, match=reason):
        decode_store(stream)


def test_too_large_is_refused_unread():
    stream = encode_store({"dtls://x": [connection()] * 10})
    with pytest.raises(PersistenceError, match="above the limit"):
        decode_store(stream, max_size=len(stream) - 1)
    with pytest.raises(PersistenceError, match="above the limit"):
        unseal_store(seal_store(stream, None), None, max_size=len(stream))


def test_ages_grow_by_the_time_on_disk():
    store = SavedStore(1000.0, {"dtls://x": [connection(age=2.0, session_age=5.0)]})
    (aged,) = store.aged_until(1010.0)["dtls://x"]
    assert (aged.age, aged.session_age) == (12.0, 15.0)
    (same,) = store.aged_until(990.0)["dtls://x"]  # a clock set back adds nothing
    assert same.age == 2.0


# -- the password wrapper ------------------------------------------------------------------------
PLAIN = encode_store({"dtls://127.0.0.1:5684": [connection()]})


def test_wrapper_round_trip_and_layout():
    sealed = seal_store(PLAIN, b"secret")
    assert sealed[:3] == b"\x03\x01\x10"  # AES-GCM-128, a 16-byte seed
    assert len(sealed) == 3 + 16 + len(PLAIN) + 16  # ciphertext and 128-bit tag
    assert unseal_store(sealed, b"secret") == PLAIN
    assert seal_store(PLAIN, b"secret") != sealed  # a fresh seed each time
    assert seal_store(PLAIN, None) == b"\x00" + PLAIN
    assert unseal_store(b"\x00" + PLAIN, None) == PLAIN


def test_wrong_or_missing_password_is_refused():
    sealed = seal_store(PLAIN, b"secret")
    with pytest.raises(PersistenceError, match="wrong password"):
        unseal_store(sealed, b"Secret")
    with pytest.raises(PersistenceError, match="password is needed"):
        unseal_store(sealed, None)
    with pytest.raises(PersistenceError, match="not encrypted"):
        unseal_store(seal_store(PLAIN, None), b"secret")


def test_truncated_or_flipped_wrapper_is_refused():
    sealed = seal_store(PLAIN, b"secret")
    for cut in (0, 1, 2, 3, 10, 19, 20, 34, len(sealed) - 1):
        with pytest.raises(PersistenceError):
            unseal_store(sealed[:cut], b"secret")
    for position in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[position] ^= 0x40
        with pytest.raises(PersistenceError):
            unseal_store(bytes(flipped), b"secret")


# -- the file ------------------------------------------------------------------------------------
def test_file_is_private_and_replaced_atomically(tmp_path):
    path = tmp_path / "dtls.store"
    path.write_bytes(b"old")
    write_store_file(path, seal_store(PLAIN, b"pw"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["dtls.store"]  # no temporary file left
    assert read_store_file(path, b"pw").connectors == decode_store(PLAIN).connectors


def test_unreadable_file_is_a_persistence_error(tmp_path):
    with pytest.raises(PersistenceError, match="cannot read"):
        read_store_file(tmp_path / "missing", None)
    with pytest.raises(PersistenceError, match="cannot write"):
        write_store_file(tmp_path / "no" / "such" / "dir", b"x")


# -- record sizes (RFC 8449, RFC 6066): an optional item appended to the connection -------------


def test_record_size_limits_survive_and_are_optional():
    """Without a negotiated limit the item is left out (the stream is as before it existed,
    and such a stream reads as 2^14 both ways); with one it is appended."""
    plain = encode_store({"dtls://x": [connection()]}, saved_at=1.0)
    limited = connection(record_size_limit=512, receive_limit=512)
    stream = encode_store({"dtls://x": [limited]}, saved_at=1.0)
    assert len(stream) == len(plain) + 3 + 4  # the item: version, length, two uint16
    assert decode_store(stream).connectors == {"dtls://x": [limited]}
    (restored,) = decode_store(plain).connectors["dtls://x"]
    assert (restored.record_size_limit, restored.receive_limit) == (MAX_PLAINTEXT, MAX_PLAINTEXT)


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"\x02\x00\x04\x02\x00\x02\x00", "record sizes of version 2"),
     (b"\x01\x00\x03\x02\x00\x02", "truncated"),
     (b"\x01\x00\x05\x02\x00\x02\x00\x00", "unexpected bytes"),
     (b"\x01\x00\x04\x00\x3f\x02\x00", "record size limits must be"),
     (b"\x01\x00\x04\x02\x00\x40\x01", "record size limits must be")],
    ids=["version", "short", "long", "below 64", "above 2^14"],
)  # fmt: skip
def test_bad_record_sizes_items_are_refused(body, reason):
    stream = bytearray(encode_store({"dtls://x": [connection()]}, saved_at=1.0))
    position = 11 + 11 + 2 + len("dtls://x")  # the connection item: grow it by the body
    length = int.from_bytes(stream[position + 1 : position + 3], "big")
    stream[position + 1 : position + 3] = (length + len(body)).to_bytes(2, "big")
    end = position + 3 + length
    stream[end:end] = body
    with pytest.raises(PersistenceError, match=reason):
        decode_store(bytes(stream))
