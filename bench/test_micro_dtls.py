"""Micro benchmarks of the DTLS record layer (pytest-benchmark): seal and open of 64-byte records.

Run: ``.venv/bin/python -m pytest bench/test_micro_dtls.py --benchmark-only``.

Two figures per AEAD (target: >= 2 million records per second on one core, < 500 ns each):

* ``test_seal_python`` / ``test_open_python``: a Python loop of BATCH ``AeadCipher.seal`` /
  ``open`` calls, one per record, i.e. including the call, argument and bytes object
  overhead. ``open`` opens the same record again and again, so its cipher runs with
  ``anti_replay=False`` (the window is still updated; only the duplicate check is skipped).
* ``test_seal_c_batch`` / ``test_open_c_batch``: BATCH records in one call through the C path
  (``seal_into`` / ``parse_record_view`` + ``open_view``, replay check on), as the server's
  datagram loop will use it.

The per-record time is the mean divided by BATCH: ``ns_per_record`` and
``records_per_second`` in ``extra_info`` (``--benchmark-json=FILE``, or
``--benchmark-columns=mean`` / 1000).
"""

from __future__ import annotations

import itertools

import pytest

from extplugtest.dtls._record import (
    AEAD_AES_128_CCM,
    AEAD_AES_128_CCM_8,
    AEAD_AES_128_GCM,
    APPLICATION_DATA,
    AeadCipher,
    _open_records,
    _seal_records,
)

BATCH = 1000
SIZE = 64
KEY_A, IV_A = bytes(range(16)), b"\xa0\xa1\xa2\xa3"
KEY_B, IV_B = bytes(range(16, 32)), b"\xb0\xb1\xb2\xb3"
CID = b"\x01\x02\x03\x04\x05\x06"

CASES = {
    "ccm8": (AEAD_AES_128_CCM_8, b""),
    "ccm8-cid": (AEAD_AES_128_CCM_8, CID),
    "ccm": (AEAD_AES_128_CCM, b""),
    "gcm": (AEAD_AES_128_GCM, b""),
}


def pair(case: str, anti_replay: bool = True) -> tuple[AeadCipher, AeadCipher]:
    aead, cid = CASES[case]
    sender = AeadCipher(aead, KEY_A, IV_A, KEY_B, IV_B, write_cid=cid)
    receiver = AeadCipher(aead, KEY_B, IV_B, KEY_A, IV_A, read_cid=cid, anti_replay=anti_replay)
    return sender, receiver


def per_record(benchmark, count: int) -> None:
    """``ns_per_record`` and ``records_per_second`` of a benchmark of *count* records per call
    into its extra_info (nothing under ``--benchmark-disable``: one call, not timed)."""
    if benchmark.stats is None:
        return
    stats = benchmark.stats.stats
    benchmark.extra_info["ns_per_record"] = round(stats.mean / count * 1e9, 1)
    benchmark.extra_info["records_per_second"] = round(count / stats.mean)


@pytest.mark.parametrize("case", CASES)
def test_seal_python(benchmark, case: str) -> None:
    sender, receiver = pair(case)
    first = itertools.count(0, BATCH)  # a sequence number is never sealed twice
    payload = bytes(SIZE)
    seal = sender.seal

    def batch() -> bytes:
        start = next(first)
        for seq in range(start, start + BATCH - 1):
            seal(1, seq, APPLICATION_DATA, payload)
        return seal(1, start + BATCH - 1, APPLICATION_DATA, payload)

    record = benchmark(batch)
    assert receiver.open(record) == (APPLICATION_DATA, payload)
    per_record(benchmark, BATCH)


@pytest.mark.parametrize("case", CASES)
def test_open_python(benchmark, case: str) -> None:
    sender, receiver = pair(case, anti_replay=False)
    record = sender.seal(1, 1, APPLICATION_DATA, bytes(SIZE))
    open_ = receiver.open

    def batch() -> tuple[int, bytes]:
        for _ in range(BATCH - 1):
            open_(record)
        return open_(record)

    assert benchmark(batch) == (APPLICATION_DATA, bytes(SIZE))
    per_record(benchmark, BATCH)


@pytest.mark.parametrize("case", CASES)
def test_seal_c_batch(benchmark, case: str) -> None:
    sender, receiver = pair(case)
    first = itertools.count(0, BATCH)

    def batch() -> bytes:
        return _seal_records(sender, BATCH, SIZE, next(first))

    records = benchmark(batch)
    assert len(records) == BATCH * sender.record_length(SIZE)
    assert _open_records(receiver, records) == BATCH
    per_record(benchmark, BATCH)


@pytest.mark.parametrize("case", CASES)
def test_open_c_batch(benchmark, case: str) -> None:
    sender, receiver = pair(case)
    records = _seal_records(sender, BATCH, SIZE, 0)
    assert benchmark(_open_records, receiver, records) == BATCH
    per_record(benchmark, BATCH)
