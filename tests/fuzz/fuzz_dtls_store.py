#!/usr/bin/env python3
"""atheris fuzz target for the graceful-restart store (``extplugtest.dtls.persistence``).

Run it as
``python tests/fuzz/fuzz_dtls_store.py -atheris_runs=N [libFuzzer flags] [CORPUS ...]``;
``--seed-corpus=DIR`` writes a few valid streams into DIR and fuzzes with DIR as the corpus.

A store file is read back at start-up, so it is input like any other: a damaged or forged file
must give ``PersistenceError`` (one warning line, the server starts without it), never another
exception. The first input byte picks what the rest is:

* even: a plain stream. ``decode_store`` raises nothing but ``PersistenceError``; a stream it
  accepts encodes back to the same bytes (the format has one spelling per store) and decodes
  to the same store.
* odd: a wrapped stream (the password wrapper). ``unseal_store`` with and without a password
  raises nothing but ``PersistenceError``; only the unencrypted marker opens without one, and
  what opens with the password stops opening when one bit of it flips.
"""

from __future__ import annotations

import sys

PASSWORD = b"fuzz password"

_persistence = None


def _get_persistence():
    global _persistence
    if _persistence is None:
        from extplugtest.dtls import persistence

        _persistence = persistence
    return _persistence


def check_plain(data: bytes) -> None:
    p = _get_persistence()
    try:
        store = p.decode_store(data)
    except p.PersistenceError:
        return
    again = p.encode_store(store.connectors, saved_at=store.saved_at)
    assert again == data, f"accepted {data.hex()} but encodes it as {again.hex()}"
    assert p.decode_store(again) == store


def check_wrapped(data: bytes) -> None:
    p = _get_persistence()
    for password in (None, PASSWORD):
        try:
            plain = p.unseal_store(data, password)
        except p.PersistenceError:
            continue
        if password is None:
            assert data[:1] == b"\x00", f"{data.hex()} opened without a password"
        else:  # (a seed sealed with it) the tag covers every byte: one flipped bit fails
            tampered = data[:-1] + bytes([data[-1] ^ 1])
            try:
                p.unseal_store(tampered, password)
            except p.PersistenceError:
                pass
            else:
                raise AssertionError(f"{tampered.hex()} opened after a bit flip")
        check_plain(plain)


def check(data: bytes) -> None:
    """The oracle; raises AssertionError (or whatever the module leaks) on a finding."""
    if not data:
        return
    if data[0] % 2 == 0:
        check_plain(data[1:])
    else:
        check_wrapped(data[1:])


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    check(data)


def _seeds() -> list[bytes]:
    p = _get_persistence()
    key = bytes(range(16))
    connection = p.SavedConnection(
        address=("127.0.0.1", 40000), age=1.5, session_age=30.0, read_cid=b"\x01" * 6,
        suite_code=0xC0A8, session_id=bytes(32), master_secret=bytes(48), identity=b"cali.1",
        peer_certificate_type=None, extended_master_secret=True, secure_renegotiation=True,
        cid_negotiated=True, resumed=False, epoch=1, aead=0, write_key=key, write_iv=bytes(4),
        read_key=key, read_iv=bytes(4), write_cid=b"", cipher_read_cid=b"\x01" * 6,
        anti_replay=True, next_write_seq=5, last_sealed=(1 << 48) | 4, window_highest=7,
        window_bitmap=0xFF,
    )  # fmt: skip
    # with the record sizes item (RFC 8449 / RFC 6066 limits), appended to the connection
    v6 = p.SavedConnection(**{**_fields(connection), "address": ("::1", 5684, 0, 0),
                              "record_size_limit": 512, "receive_limit": 1024})  # fmt: skip
    empty = p.encode_store({}, saved_at=1_700_000_000.0)
    one = p.encode_store({"dtls://127.0.0.1:5684": [connection]}, saved_at=1_700_000_000.0)
    two = p.encode_store({"dtls://[::1]:5684": [v6, connection], "dtls://x:1": []}, 1.0)
    return [
        b"\x00" + empty,
        b"\x00" + one,
        b"\x00" + two,
        b"\x00" + one[:40],
        b"\x01" + p.seal_store(one, None),
        b"\x01" + p.seal_store(one, PASSWORD),
        b"\x01" + p.seal_store(empty, PASSWORD)[:30],
    ]


def _fields(saved) -> dict:
    import dataclasses

    return {field.name: getattr(saved, field.name) for field in dataclasses.fields(saved)}


def main(argv: list[str]) -> None:
    import atheris
    from seed_corpus import fuzz  # beside this file (run as a script)

    global _persistence
    with atheris.instrument_imports(include=["extplugtest"]):
        from extplugtest.dtls import persistence
    _persistence = persistence
    fuzz(argv, _seeds(), check, TestOneInput, (check_plain, check_wrapped, check))


if __name__ == "__main__":
    main(sys.argv)
