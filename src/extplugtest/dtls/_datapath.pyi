from typing import Any

from typing_extensions import Buffer

from extplugtest.coap._udp import UdpEngine
from extplugtest.dtls._cid_table import CidTable
from extplugtest.dtls._record import AeadCipher

def peer_key(address: tuple[Any, ...]) -> bytes: ...

class DtlsConnection:
    key: bytes
    read_cid: bytes
    cipher: AeadCipher | None
    next_write_seq: int
    handshake: Any
    session: Any
    master_secret: bytes
    previous_address: tuple[Any, ...] | None
    started: float
    last_seen: float
    positioned: float
    newest: bool
    moved: bool
    mac_errors: int
    last_mac_error: float
    router_node: int
    send_limit: int
    receive_limit: int
    address: tuple[Any, ...]
    def __init__(self, address: tuple[Any, ...], read_cid: bytes, now: float) -> None: ...
    def establish(self, session: Any) -> None: ...

class DtlsEngine(UdpEngine):
    def serve(
        self,
        by_cid: CidTable[DtlsConnection],
        by_address: dict[Any, DtlsConnection],  # peer key (bytes) -> connection; other keys
        # (a connector's own, e.g. parked connections') are never found by a datagram
        cid_length: int,
        connector: Any,
        *,
        mac_filter_threshold: int = 0,
        mac_filter_quiet: float = 0.0,
    ) -> None: ...
    def feed(self, data: Buffer, connection: DtlsConnection) -> None: ...
    def send_record(self, connection: DtlsConnection, record: Buffer) -> None: ...
    def datapath_counters(self) -> dict[str, int]: ...
