#!/usr/bin/env python3
"""atheris fuzz target for the DTLS-CID cluster header (``extplugtest.cluster._header``).

Run it as
``python tests/fuzz/fuzz_cluster_header.py -atheris_runs=N [libFuzzer flags] [CORPUS ...]``;
``--seed-corpus=DIR`` writes a few valid packets into DIR and fuzzes with DIR as the corpus.

The first input byte picks what the rest of the input is:

* ``0``: a packet from the management socket (the next byte's bit 0: the cluster uses MACs).
  ``decode`` must agree with ``reference_decode`` below, a slow pure-Python reading of the
  inventory §5.2 layout, and raise nothing but ``ClusterError``. With MACs, a packet that
  decodes must fail the MAC check (random bytes do not authenticate under KEY_C).
* ``1``: a datagram from a client (next byte mod 8: CID length, the one after: own node id):
  ``route`` must agree with ``reference_route`` (§5.5).
* ``2``: a round trip: address family, port, MAC on/off and record from the input; ``encode``
  must give ``reference_encode``'s bytes (MAC from Python's ``hmac``, §5.3) and ``decode`` the
  fields back; a flipped bit anywhere must fail the MAC check.

This module imports neither atheris nor the header module at import time, so that unit tests
can reuse the reference model.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import sys
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------
# Reference model (pure Python, from the inventory §5.2, §5.3, §5.5; independent of _header)

IN, OUT = 63, 62
TLS12_CID = 25
MAC_LENGTH = 8
MIN_RECORD = 26  # carried record must be longer than 13 + 12 bytes


class RefPacket(NamedTuple):
    type: int
    address: tuple[str, int]
    record: bytes
    mac: bytes


def reference_mac(key: bytes, header: bytes, record: bytes) -> bytes:
    """First 8 bytes of HMAC-SHA256 over the header up to the MAC and the record, or its first
    and last 32 bytes when the record has more than 64 - len(header) bytes."""
    mac = hmac.new(key, header, hashlib.sha256)
    if len(record) > 64 - len(header):
        mac.update(record[:32])
        mac.update(record[-32:])
    else:
        mac.update(record)
    return mac.digest()[:MAC_LENGTH]


def reference_encode(
    packet_type: int, address: tuple[str, int], record: bytes, key: bytes | None = None
) -> bytes:
    raw = ipaddress.ip_address(address[0]).packed
    header = bytes([packet_type]) + address[1].to_bytes(2, "little") + bytes([len(raw)]) + raw
    if key is None:
        return header + record
    return header + reference_mac(key, header, record) + record


def reference_decode(data: bytes, with_mac: bool) -> RefPacket | str:
    """The packet, or the name of the CLUSTER_* error."""
    if not data or data[0] not in (IN, OUT):
        return "CLUSTER_NOT_CLUSTER"
    if len(data) < 4:
        return "CLUSTER_TRUNCATED"
    n = data[3]
    if n not in (4, 16):
        return "CLUSTER_BAD_ADDRESS"
    header = 4 + n + (MAC_LENGTH if with_mac else 0)
    if len(data) < header:
        return "CLUSTER_TRUNCATED"
    if len(data) - header < MIN_RECORD:
        return "CLUSTER_SHORT_RECORD"
    host = str(ipaddress.ip_address(data[4 : 4 + n]))
    port = int.from_bytes(data[1:3], "little")
    mac = data[4 + n : 4 + n + MAC_LENGTH] if with_mac else b""
    return RefPacket(data[0], (host, port), data[header:], mac)


def comparable(packet: tuple) -> tuple:
    """A decoded packet with its host as an ip_address: inet_ntop and Python spell some IPv6
    addresses differently (``::ffff:0:0`` / ``::ffff:0.0.0.0``)."""
    packet_type, (host, port), record, mac = packet
    return packet_type, ipaddress.ip_address(host), port, record, mac


def reference_route(datagram: bytes, cid_length: int, own_node_id: int) -> int:
    """Node id in CID byte 0 of a tls12_cid record with a full header and epoch > 0 that is
    not ours; -1 (process locally) otherwise."""
    if cid_length <= 0 or len(datagram) < 13 + cid_length or datagram[0] != TLS12_CID:
        return -1
    if datagram[3:5] == b"\0\0":
        return -1
    node = datagram[11]
    return -1 if node == own_node_id & 0xFF else node


# ---------------------------------------------------------------------------------------------
# The target

KEY_A = bytes(range(16))
KEY_C = bytes(range(32, 48))  # never signs anything in this harness

_header = None


def _get_header():
    global _header
    if _header is None:
        from extplugtest.cluster import _header as header

        _header = header
    return _header


def check_decode(data: bytes, with_mac: bool) -> None:
    h = _get_header()
    expected = reference_decode(data, with_mac)
    try:
        got = h.decode(data, with_mac=with_mac)
    except h.ClusterError as exc:
        assert isinstance(expected, str), f"decode rejected ({exc}) what the reference accepts"
        assert exc.result == getattr(h, expected), f"decode says {exc}, the reference {expected}"
        return
    assert not isinstance(expected, str), f"decode accepted what the reference rejects: {expected}"
    assert comparable(got) == comparable(expected), f"{got} != {expected}"
    if with_mac:
        try:
            h.decode(data, mac=h.ClusterMac(KEY_C))
        except h.ClusterError as exc:
            assert exc.result == h.CLUSTER_BAD_MAC, str(exc)
        else:
            raise AssertionError(f"a random packet authenticated: {data.hex()}")


def check_route(data: bytes) -> None:
    h = _get_header()
    cid_length, own = data[0] % 8, data[1]
    datagram = data[2:]
    got = h.route(datagram, cid_length, own)
    expected = reference_route(datagram, cid_length, own)
    assert got == expected, f"route {got}, expected {expected} for {datagram.hex()}"


def check_roundtrip(data: bytes) -> None:
    h = _get_header()
    flags = data[0]
    port = int.from_bytes(data[1:3], "little") or 1
    if flags & 1:
        host = str(ipaddress.IPv6Address(data[3:19].ljust(16, b"\0")))
        record = data[19:]
    else:
        host = str(ipaddress.IPv4Address(data[3:7].ljust(4, b"\0")))
        record = data[7:]
    record = record.ljust(MIN_RECORD, b"\x17")
    packet_type = OUT if flags & 2 else IN
    key = KEY_A if flags & 4 else None
    mac = h.ClusterMac(key) if key else None
    packet = h.encode(packet_type, (host, port), record, mac)
    expected = reference_encode(packet_type, (host, port), record, key)
    assert packet == expected, f"encode gave {packet.hex()}, expected {expected.hex()}"
    decoded = h.decode(packet, mac=mac)
    assert comparable(decoded) == comparable((packet_type, (host, port), record, decoded.mac))
    if mac is None:
        return
    position = int.from_bytes(data[1:3], "big") % (len(packet) * 8)
    tampered = bytearray(packet)
    tampered[position // 8] ^= 1 << (position % 8)
    try:
        h.decode(bytes(tampered), mac=mac)
    except h.ClusterError:
        return
    # Outside the MACed parts (the middle of a long record) a change is allowed to pass: the
    # DTLS record's own MAC protects those bytes (§5.3).
    header_end = packet[3] + 4 + MAC_LENGTH
    offset = position // 8 - header_end
    assert 32 <= offset < len(record) - 32, f"tampered byte {position // 8} authenticated"


def check_batch(datagram: bytes) -> None:
    """A batch datagram splits exactly when its lengths add up (then re-encoding gives it back)."""
    try:
        parts = _header.split_batch(datagram)
    except _header.ClusterError as error:
        assert error.result == _header.CLUSTER_BAD_BATCH
        return
    assert _header.encode_batch(parts) == datagram


def check(data: bytes) -> None:
    """The oracle; raises AssertionError (or whatever the module leaks) on a finding."""
    if len(data) < 3:
        data = data.ljust(3, b"\0")
    mode = data[0] % 4
    if mode == 0:
        check_decode(data[2:], bool(data[1] & 1))
    elif mode == 1:
        check_route(data[1:])
    elif mode == 2:
        check_roundtrip(data[1:])
    else:
        check_batch(bytes([64]) + data[1:])


def TestOneInput(data: bytes) -> None:  # the name atheris expects
    check(data)


def _seeds() -> list[bytes]:
    cid_record = bytes([TLS12_CID, 0xFE, 0xFD, 0, 1]) + bytes(5) + b"\x07"
    cid_record += bytes([2, 1, 2, 3, 4, 5]) + b"\x00\x10" + bytes(range(16))
    v4 = reference_encode(IN, ("192.0.2.1", 5684), cid_record)
    v6 = reference_encode(OUT, ("2001:db8::1", 40000), cid_record + bytes(40), KEY_A)
    return [
        b"\x03\x00\x03abc\x00\x01x",  # a batch of two packets
        b"\x03\x00\x05ab",  # a batch whose length runs past the end
        b"\x00\x00" + v4,
        b"\x00\x01" + v6,
        b"\x00\x00" + v4[:20],
        b"\x00\x00\x3f\x00\x00\x05",
        b"\x01\x06\x01" + cid_record,
        b"\x01\x06\x02" + cid_record,
        b"\x01\x06\x01" + cid_record[:14],
        b"\x02\x04\x34\x16\xc0\x00\x02\x01" + cid_record,
        b"\x02\x07\x40\x9c" + bytes(16) + cid_record * 3,
    ]


#: Inputs that make a useful starting corpus.
SEEDS: tuple[bytes, ...] = tuple(_seeds())


def main(argv: list[str]) -> None:
    import atheris
    from seed_corpus import fuzz  # beside this file (run as a script)

    global _header
    with atheris.instrument_imports(include=["extplugtest"]):
        from extplugtest.cluster import _header as header
    _header = header
    fuzz(argv, SEEDS, check, TestOneInput,
         (reference_decode, reference_route, reference_encode, check_decode, check))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv)
