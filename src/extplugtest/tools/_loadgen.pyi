from collections.abc import Iterable
from typing import Any

MAX_CLIENTS: int
ACK_TIMEOUT_MS: int
MAX_RETRANSMIT: int

def build_request(
    confirmable: bool,
    code: int,
    options: Iterable[tuple[int, bytes | int]],
    payload: bytes = ...,
    mid: int = ...,
    token: int = ...,
) -> bytes: ...

class LoadGenerator:
    def __init__(
        self,
        fds: Iterable[int],
        *,
        confirmable: bool = ...,
        code: int = ...,
        options: Iterable[tuple[int, bytes | int]] = ...,
        payload: bytes = ...,
        ack_timeout_ms: int = ...,
        max_retransmit: int = ...,
        response_timeout_ms: int = ...,
    ) -> None: ...
    @property
    def client_count(self) -> int: ...
    @property
    def request(self) -> bytes: ...
    @property
    def running(self) -> bool: ...
    def start(
        self,
        clients: int = ...,
        requests: int = ...,
        duration: float = ...,
        warmup: float = ...,
        stop_on_error: bool = ...,
    ) -> None: ...
    def join(self, timeout: float | None = ...) -> bool: ...
    def run(self, **limits: Any) -> None: ...
    def stop(self) -> None: ...
    def totals(self) -> dict[str, int]: ...
    def window(self) -> dict[str, Any]: ...
    def client(self, index: int) -> dict[str, int]: ...
