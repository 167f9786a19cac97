from collections.abc import Iterable
from typing import NamedTuple

from typing_extensions import Buffer

CLUSTER_RECORD_INCOMING: int
CLUSTER_RECORD_OUTGOING: int
CLUSTER_ADDRESS_OFFSET: int
CLUSTER_MAC_LENGTH: int
CLUSTER_MAX_HEADER_LENGTH: int
CLUSTER_MIN_RECORD_LENGTH: int
CLUSTER_MAX_NODE_ID: int
CLUSTER_ROUTE_LOCAL: int

CLUSTER_OK: int
CLUSTER_NOT_CLUSTER: int
CLUSTER_TRUNCATED: int
CLUSTER_BAD_ADDRESS: int
CLUSTER_SHORT_RECORD: int
CLUSTER_BAD_MAC: int
CLUSTER_NO_SPACE: int
CLUSTER_BAD_TYPE: int
CLUSTER_CRYPTO: int

RESULT_NAMES: dict[int, str]

class ClusterPacket(NamedTuple):
    type: int
    address: tuple[str, int]
    record: bytes
    mac: bytes

class ClusterError(ValueError):
    result: int
    def __init__(self, result: int) -> None: ...

class ClusterMac:
    @property
    def digest(self) -> str: ...
    @property
    def signed_packets(self) -> int: ...
    @property
    def verified_packets(self) -> int: ...
    @property
    def mac_failures(self) -> int: ...
    def __init__(self, key: Buffer, digest: str = "SHA256") -> None: ...
    def compute(self, packet: Buffer) -> bytes: ...

def encode(
    type: int, address: tuple[str, int], record: Buffer, mac: ClusterMac | None = None
) -> bytes: ...
def decode(
    packet: Buffer, mac: ClusterMac | None = None, with_mac: bool = False
) -> ClusterPacket: ...
def route(datagram: Buffer, cid_length: int, own_node_id: int) -> int: ...
def measure_forward_path(
    datagram: Buffer,
    cid_length: int,
    own_node_id: int,
    mac: ClusterMac | None = None,
    iterations: int = 100000,
) -> float: ...

CLUSTER_BATCH: int
CLUSTER_BAD_BATCH: int

def encode_batch(packets: Iterable[bytes]) -> bytes: ...
def split_batch(datagram: Buffer) -> list[bytes]: ...
