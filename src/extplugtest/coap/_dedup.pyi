class DeduplicationCache:
    peer_count: int
    max_peers: int
    messages_per_peer: int
    exchange_lifetime: float
    non_lifetime: float
    peer_inactivity: float
    def __init__(
        self,
        max_peers: int = 100000,
        messages_per_peer: int = 16,
        exchange_lifetime: float = 247.0,
        non_lifetime: float = 145.0,
        peer_inactivity: float = 180.0,
    ) -> None: ...
    def duplicate_of(self, address: tuple, mid: int, now: float) -> bytes | None: ...
    def record(
        self,
        address: tuple,
        mid: int,
        confirmable: bool,
        now: float,
        response: bytes | None = None,
    ) -> None: ...
    def move(self, old_address: tuple, new_address: tuple) -> bool: ...
    def update_response(self, address: tuple, mid: int, response: bytes, now: float) -> bool: ...
    def sweep(self, now: float) -> int: ...
    def stats(self) -> dict[str, int]: ...

def key_from_address(address: tuple) -> bytes: ...
