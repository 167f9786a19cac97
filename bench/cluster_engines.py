"""Two ClusterEngines of a static cluster without a server around them, for benchmarks of the
forward path: node 2 owns established DTLS connections (PSK keys fixed here, CCM-8, 6-byte
CIDs naming node 2) and answers ``/benchmark`` in C; node 1 forwards what it gets for them.
Used by ``test_micro.py`` (both engines in one process) and ``cluster_forward.py`` (each in
a process of its own)."""

from __future__ import annotations

import socket

from extplugtest.cluster._router import ClusterEngine
from extplugtest.coap._codec import Message
from extplugtest.coap._dedup import DeduplicationCache
from extplugtest.dtls._cid_table import CidTable
from extplugtest.dtls._datapath import DtlsConnection
from extplugtest.dtls._record import AEAD_AES_128_CCM_8, APPLICATION_DATA, AeadCipher
from extplugtest.resources._benchmark import BenchmarkFastPath

CID_LENGTH = 6
OWNER, ROUTER = 2, 1
CLIENT_KEY, CLIENT_IV = bytes(range(16)), b"\xc0\xc1\xc2\xc3"
SERVER_KEY, SERVER_IV = bytes(range(16, 32)), b"\xd0\xd1\xd2\xd3"
#: per node: its DTLS socket and its management socket
SOCKET_NAMES = {ROUTER: ("dtls1", "mgmt1"), OWNER: ("dtls2", "mgmt2")}


def benchmark_request(mid: int) -> bytes:
    message = Message(type=0, code=2, mid=mid, token=b"\x01\x02\x03\x04")
    message.add_option(11, "benchmark").add_option(15, "rlen=40")
    return message.to_bytes()


class NoSlowPath:
    """The endpoint of an engine whose requests the fast path answers, every one."""

    def on_request(self, request, peer):  # pragma: no cover - the fast path answers all
        raise AssertionError("fast path expected")


class NoConnector:
    """The DTLS connector of an engine whose records all belong to established connections."""

    def datagram(self, data, address):  # pragma: no cover - every record is established
        raise AssertionError("a record reached the connector")


class Session:
    """What DtlsConnection.establish() takes from a handshake's session."""

    def __init__(self, cipher: AeadCipher) -> None:
        self.cipher = cipher
        self.next_write_seq = 1


def benchmark_fast_path() -> BenchmarkFastPath:
    """The ``/benchmark`` fast path, switched on (what ``extserver --benchmark`` does)."""
    fast = BenchmarkFastPath()
    fast.enabled = True
    return fast


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    return sock


def owner_cids(count: int) -> list[bytes]:
    """*count* read CIDs of the owner (its node id in the first byte)."""
    return [bytes([OWNER, 0, 0, 0, i >> 8, i & 0xFF]) for i in range(count)]


def client_sealers(cids: list[bytes]) -> list[AeadCipher]:
    """The client's side of each connection: seals records carrying its CID."""
    return [
        AeadCipher(AEAD_AES_128_CCM_8, CLIENT_KEY, CLIENT_IV, SERVER_KEY, SERVER_IV, write_cid=cid)
        for cid in cids
    ]


def request_record(sealer: AeadCipher, seq: int, mid: int) -> bytes:
    """A ``GET /benchmark?rlen=40`` in an epoch-1 record of sequence number *seq*."""
    return sealer.seal(1, seq, APPLICATION_DATA, benchmark_request(mid & 0xFFFF))


def cluster_engine(node: int, sockets: dict, clients: list[tuple] | None = None) -> ClusterEngine:
    """Node *node*'s engine on its sockets from *sockets* (by SOCKET_NAMES), the other node
    known; the owner also gets one established connection per client address in *clients*
    (the i-th with the i-th of owner_cids)."""
    other = OWNER if node == ROUTER else ROUTER
    dtls, management = (sockets[name] for name in SOCKET_NAMES[node])
    engine = ClusterEngine(dtls.fileno(), socket.AF_INET, NoSlowPath(),
                           DeduplicationCache(max_peers=4096), benchmark_fast_path())  # fmt: skip
    engine.cluster(node, management.fileno(), lambda data, address: None)
    engine.set_node(other, sockets[SOCKET_NAMES[other][1]].getsockname())
    by_cid: CidTable[DtlsConnection] = CidTable()
    if node == OWNER and clients:
        for cid, address in zip(owner_cids(len(clients)), clients, strict=True):
            cipher = AeadCipher(AEAD_AES_128_CCM_8, SERVER_KEY, SERVER_IV, CLIENT_KEY, CLIENT_IV,
                                read_cid=cid)  # fmt: skip
            connection = DtlsConnection(address, cid, 0.0)
            connection.establish(Session(cipher))
            by_cid[cid] = connection
    engine.serve(by_cid, {}, CID_LENGTH, NoConnector())
    return engine
