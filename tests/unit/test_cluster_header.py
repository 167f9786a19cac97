"""Cluster record header, cluster MAC and forward decision (extplugtest.cluster._header).

Byte vectors follow inventory §5.2 (type, port little-endian, address length, address,
[MAC], record) and §5.3 (MAC); the independent reference model lives in
tests/fuzz/fuzz_cluster_header.py.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import ipaddress
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extplugtest.cluster import _header as h
from extplugtest.cluster.keys import cluster_mac_keys
from extplugtest.dtls.ciphersuites import by_name
from extplugtest.dtls.keys import prf

_FUZZ_PATH = pathlib.Path(__file__).resolve().parents[1] / "fuzz" / "fuzz_cluster_header.py"
_spec = importlib.util.spec_from_file_location("fuzz_cluster_header_reference", _FUZZ_PATH)
assert _spec is not None and _spec.loader is not None
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
#: A tls12_cid record (epoch 1, seq 7) with the CID 02 01 02 03 04 05: node 2.
CID_RECORD = bytes.fromhex("19fefd00010000000000070201020304050010") + bytes(range(16))


def examples(n: int) -> int:
    return max(n, settings().max_examples)


def result_of(call, *args, **kwargs) -> int:
    with pytest.raises(h.ClusterError) as info:
        call(*args, **kwargs)
    return info.value.result


# -- byte-exact vectors ------------------------------------------------------------------------


def test_ipv4_forward_vector() -> None:
    packet = h.encode(h.CLUSTER_RECORD_INCOMING, ("192.0.2.1", 5684), CID_RECORD)
    # 0x3f IN | port 5684 = 0x1634 little-endian | n = 4 | 192.0.2.1 | record
    assert packet == bytes.fromhex("3f341604c0000201") + CID_RECORD


def test_ipv6_backward_vector() -> None:
    packet = h.encode(h.CLUSTER_RECORD_OUTGOING, ("2001:db8::1", 40000), CID_RECORD)
    expected = bytes.fromhex("3e409c1020010db8000000000000000000000001") + CID_RECORD
    assert packet == expected


def test_mac_vector_matches_hmac_sha256() -> None:
    mac = h.ClusterMac(KEY)
    packet = h.encode(h.CLUSTER_RECORD_INCOMING, ("192.0.2.1", 5684), CID_RECORD, mac)
    header = bytes.fromhex("3f341604c0000201")
    # 34 record bytes <= 64 - 8: the whole record is MACed.
    expected_mac = hmac.new(KEY, header + CID_RECORD, hashlib.sha256).digest()[:8]
    assert packet == header + expected_mac + CID_RECORD
    assert mac.signed_packets == 1


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1"])
@pytest.mark.parametrize("extra", [0, 1, 10, 21, 22, 23, 29, 30, 31, 100, 1400])
def test_mac_window_first_and_last_32_bytes(host: str, extra: int) -> None:
    # Around the 64 - (4 + n) threshold, where the two 32-byte parts start to overlap.
    record = CID_RECORD[:26] + bytes(range(extra % 256)) * (1 + extra // 256)
    record = record[: 26 + extra]
    header_length = 8 if "." in host else 20
    mac = h.ClusterMac(KEY)
    packet = h.encode(h.CLUSTER_RECORD_OUTGOING, (host, 1), record, mac)
    header = packet[:header_length]
    window = record if len(record) <= 64 - header_length else record[:32] + record[-32:]
    expected = hmac.new(KEY, header + window, hashlib.sha256).digest()[:8]
    assert packet[header_length : header_length + 8] == expected
    assert packet == ref.reference_encode(h.CLUSTER_RECORD_OUTGOING, (host, 1), record, KEY)


def test_mac_sha384() -> None:
    mac = h.ClusterMac(KEY, "SHA384")
    packet = h.encode(h.CLUSTER_RECORD_INCOMING, ("10.0.0.1", 7), CID_RECORD, mac)
    expected = hmac.new(KEY, packet[:8] + CID_RECORD, hashlib.sha384).digest()[:8]
    assert packet[8:16] == expected
    assert h.decode(packet, mac).record == CID_RECORD


# -- decode ------------------------------------------------------------------------------------


def test_decode_fields() -> None:
    packet = h.encode(h.CLUSTER_RECORD_INCOMING, ("198.51.100.7", 61616), CID_RECORD)
    assert h.decode(packet) == (h.CLUSTER_RECORD_INCOMING, ("198.51.100.7", 61616), CID_RECORD, b"")


@pytest.mark.parametrize(
    ("packet", "result"),
    [
        (b"", h.CLUSTER_NOT_CLUSTER),
        (b"\x3d\x02\x00\x00\x00\x01", h.CLUSTER_NOT_CLUSTER),  # a ping
        (b"\x19" + CID_RECORD, h.CLUSTER_NOT_CLUSTER),
        (b"\x3f\x00", h.CLUSTER_TRUNCATED),
        (b"\x3f\x00\x00\x05" + bytes(40), h.CLUSTER_BAD_ADDRESS),
        (b"\x3f\x00\x00\x00" + bytes(40), h.CLUSTER_BAD_ADDRESS),
        (b"\x3e\x00\x00\x10" + bytes(10), h.CLUSTER_TRUNCATED),
        (b"\x3f\x00\x00\x04" + bytes(4) + bytes(25), h.CLUSTER_SHORT_RECORD),
    ],
)
def test_decode_rejects(packet: bytes, result: int) -> None:
    assert result_of(h.decode, packet) == result


def test_shortest_record_accepted() -> None:
    packet = b"\x3f\x00\x00\x04" + bytes(4) + bytes(26)
    assert len(h.decode(packet).record) == 26
    assert result_of(h.decode, packet, with_mac=True) == h.CLUSTER_SHORT_RECORD


def test_encode_rejects() -> None:
    assert result_of(h.encode, 61, ("10.0.0.1", 1), CID_RECORD) == h.CLUSTER_BAD_TYPE
    assert result_of(h.encode, 63, ("10.0.0.1", 1), bytes(25)) == h.CLUSTER_SHORT_RECORD
    with pytest.raises(ValueError):
        h.encode(63, ("not-an-ip", 1), CID_RECORD)


# -- MAC good/bad --------------------------------------------------------------------------------


def test_mac_good_and_bad() -> None:
    sender, receiver, stranger = h.ClusterMac(KEY), h.ClusterMac(KEY), h.ClusterMac(bytes(16))
    packet = h.encode(h.CLUSTER_RECORD_INCOMING, ("192.0.2.1", 5684), CID_RECORD, sender)
    assert h.decode(packet, receiver).address == ("192.0.2.1", 5684)
    assert result_of(h.decode, packet, stranger) == h.CLUSTER_BAD_MAC
    for index in range(len(packet)):  # the whole packet is covered for a short record
        tampered = bytearray(packet)
        tampered[index] ^= 0x01
        with pytest.raises(h.ClusterError):
            h.decode(bytes(tampered), receiver)
    assert receiver.verified_packets == 1
    assert receiver.mac_failures >= len(packet) - 4  # not counted: type / length rejects
    assert stranger.mac_failures == 1


def test_spoofed_client_address_is_detected() -> None:
    # The MAC protects the client address the router vouches for (§5.3).
    mac = h.ClusterMac(KEY)
    packet = bytearray(h.encode(h.CLUSTER_RECORD_INCOMING, ("192.0.2.1", 5684), CID_RECORD, mac))
    packet[4:8] = bytes([203, 0, 113, 9])
    assert result_of(h.decode, bytes(packet), mac) == h.CLUSTER_BAD_MAC


def test_mac_key_validation() -> None:
    with pytest.raises(ValueError):
        h.ClusterMac(b"")
    with pytest.raises(ValueError):
        h.ClusterMac(KEY, "MD5")


def test_cluster_mac_keys_from_key_block() -> None:
    suite = by_name("TLS_PSK_WITH_AES_128_CCM_8")
    master, client_random, server_random = bytes(48), bytes([1]) * 32, bytes([2]) * 32
    client = cluster_mac_keys(master, client_random, server_random, suite, is_client=True)
    server = cluster_mac_keys(master, client_random, server_random, suite, is_client=False)
    block = prf(master, b"key expansion", server_random + client_random, 40 + 32)
    client_key, server_key = block[40:56], block[56:72]
    packet = h.encode(63, ("10.1.2.3", 5684), CID_RECORD, client.write)
    assert packet == ref.reference_encode(63, ("10.1.2.3", 5684), CID_RECORD, client_key)
    assert h.decode(packet, server.read).record == CID_RECORD
    back = h.encode(62, ("10.1.2.3", 5684), CID_RECORD, server.write)
    assert back == ref.reference_encode(62, ("10.1.2.3", 5684), CID_RECORD, server_key)
    assert h.decode(back, client.read).record == CID_RECORD
    assert result_of(h.decode, back, server.read) == h.CLUSTER_BAD_MAC


# -- forward decision --------------------------------------------------------------------------


def test_route_foreign_own_and_local() -> None:
    assert h.route(CID_RECORD, 6, own_node_id=1) == 2
    assert h.route(CID_RECORD, 6, own_node_id=2) == h.CLUSTER_ROUTE_LOCAL
    assert h.route(CID_RECORD, 6, own_node_id=258) == h.CLUSTER_ROUTE_LOCAL  # 258 & 0xff == 2
    handshake = bytes.fromhex("16fefd00000000000000000010") + bytes(16)
    assert h.route(handshake, 6, 1) == h.CLUSTER_ROUTE_LOCAL
    epoch0 = CID_RECORD[:3] + b"\x00\x00" + CID_RECORD[5:]
    assert h.route(epoch0, 6, 1) == h.CLUSTER_ROUTE_LOCAL
    assert h.route(CID_RECORD[:18], 6, 1) == h.CLUSTER_ROUTE_LOCAL  # header cut
    assert h.route(CID_RECORD[:19], 6, 1) == 2
    assert h.route(CID_RECORD, 0, 1) == h.CLUSTER_ROUTE_LOCAL  # no CIDs on this node
    assert h.route(b"", 6, 1) == h.CLUSTER_ROUTE_LOCAL


@settings(max_examples=examples(500))
@given(st.binary(max_size=40), st.integers(0, 8), st.integers(0, 300))
def test_route_matches_reference(datagram: bytes, cid_length: int, own: int) -> None:
    assert h.route(datagram, cid_length, own) == ref.reference_route(datagram, cid_length, own)


def test_measure_forward_path_runs() -> None:
    assert h.measure_forward_path(CID_RECORD, 6, 1, iterations=1000) > 0
    assert h.measure_forward_path(CID_RECORD, 6, 1, h.ClusterMac(KEY), iterations=100) > 0
    with pytest.raises(ValueError):
        h.measure_forward_path(CID_RECORD, 6, 2, iterations=10)  # own record: never forwarded


# -- properties --------------------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@settings(max_examples=examples(300))
@given(
    st.sampled_from([h.CLUSTER_RECORD_INCOMING, h.CLUSTER_RECORD_OUTGOING]),
    hosts,
    st.integers(1, 65535),
    st.binary(min_size=26, max_size=300),
    st.booleans(),
)
def test_roundtrip(packet_type: int, host: str, port: int, record: bytes, with_mac: bool) -> None:
    key = KEY if with_mac else None
    mac = h.ClusterMac(KEY) if with_mac else None
    packet = h.encode(packet_type, (host, port), record, mac)
    assert packet == ref.reference_encode(packet_type, (host, port), record, key)
    decoded = h.decode(packet, mac)
    assert decoded.type == packet_type
    assert ipaddress.ip_address(decoded.address[0]) == ipaddress.ip_address(host)
    assert decoded.address[1] == port
    assert decoded.record == record
    expected = ref.reference_decode(packet, with_mac)
    assert ref.comparable(decoded) == ref.comparable(expected)


@settings(max_examples=examples(500))
@given(st.binary(max_size=80), st.booleans())
def test_decode_matches_reference(data: bytes, with_mac: bool) -> None:
    expected = ref.reference_decode(data, with_mac)
    if isinstance(expected, str):
        assert result_of(h.decode, data, with_mac=with_mac) == getattr(h, expected)
    else:
        assert ref.comparable(h.decode(data, with_mac=with_mac)) == ref.comparable(expected)


@settings(max_examples=examples(200))
@given(st.binary(min_size=26, max_size=200), st.data())
def test_any_bit_flip_in_maced_bytes_fails(record: bytes, data: st.DataObject) -> None:
    mac = h.ClusterMac(KEY)
    packet = h.encode(h.CLUSTER_RECORD_INCOMING, ("192.0.2.1", 5684), record, mac)
    bit = data.draw(st.integers(0, len(packet) * 8 - 1))
    tampered = bytearray(packet)
    tampered[bit // 8] ^= 1 << (bit % 8)
    offset = bit // 8 - 16  # into the record
    covered = len(record) <= 56 or not 32 <= offset < len(record) - 32
    if covered:
        with pytest.raises(h.ClusterError):
            h.decode(bytes(tampered), mac)
    else:
        assert h.decode(bytes(tampered), mac).record != record


# -- batches (our extension: several cluster packets in one datagram) ----------------------------


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20))
def test_batch_round_trip(packets):
    from extplugtest.cluster._header import encode_batch, split_batch

    assert split_batch(encode_batch(packets)) == packets


@pytest.mark.parametrize(
    "datagram",
    [b"", b"\x3f\x00\x01x", b"\x40\x00", b"\x40\x00\x00", b"\x40\x00\x05abc",
     b"\x40\x00\x01a\x00"],
    ids=["empty", "not-a-batch", "short-length", "zero-length", "beyond-end", "trailing-byte"],
)  # fmt: skip
def test_malformed_batches_are_refused(datagram):
    from extplugtest.cluster._header import CLUSTER_BAD_BATCH, ClusterError, split_batch

    with pytest.raises(ClusterError) as error:
        split_batch(datagram)
    assert error.value.result == CLUSTER_BAD_BATCH
