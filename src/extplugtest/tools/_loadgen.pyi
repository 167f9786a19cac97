from collections.abc import Iterable
from typing import Any

MAX_CLIENTS: int
MAX_NSTART: int
MAX_EXCHANGES: int
MAX_PAYLOAD: int
ACK_TIMEOUT_MS: int
MAX_RETRANSMIT: int
RETRY_DELAY_MS: int
JITTER_MS: int

def build_request(
    confirmable: bool,
    code: int,
    options: Iterable[tuple[int, bytes | int]],
    payload: bytes = ...,
    mid: int = ...,
    token: int = ...,
) -> bytes: ...
def size_exponent(size: int) -> int: ...

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
        nstart: int = ...,
        interval_ms: int = ...,
        no_stop: bool = ...,
        block_size: int = ...,
        retry_delay_ms: int = ...,
        jitter_ms: int = ...,
        observe: bool = ...,
        reregister: int = ...,
        register: int = ...,
        serve_feeds: bool = ...,
        feed_min_ms: int = ...,
        feed_max_ms: int = ...,
        transport: str = ...,
        source_first: str | None = ...,
        server: tuple[str, int] | None = ...,
    ) -> None: ...
    @property
    def client_count(self) -> int: ...
    @property
    def request(self) -> bytes: ...
    @property
    def request_frame(self) -> bytes: ...
    @property
    def transport(self) -> str: ...
    @property
    def running(self) -> bool: ...
    def start(
        self,
        clients: int = ...,
        requests: int = ...,
        duration: float = ...,
        warmup: float = ...,
        stop_on_error: bool = ...,
        notifies: int = ...,
        reverse: int = ...,
    ) -> None: ...
    def join(self, timeout: float | None = ...) -> bool: ...
    def run(self, **limits: Any) -> None: ...
    def stop(self) -> None: ...
    def use_dtls(self, sessions: Iterable[Any]) -> None: ...
    def handshakes_every(self, responses: int) -> None: ...
    def take_handshake_requests(self) -> list[int]: ...
    def cipher(self, index: int) -> Any: ...
    def write_seq(self, index: int) -> int: ...
    def resume(self, index: int, session: Any) -> None: ...
    def use_tls(
        self,
        *,
        ca_file: str | None = ...,
        verify: bool = ...,
        server_name: str | None = ...,
        cert_file: str | None = ...,
        key_file: str | None = ...,
    ) -> None: ...
    def handshake_tls(self, timeout: float) -> int: ...
    def tls_alpn(self, index: int) -> bytes: ...
    def shutdown_tls(self) -> None: ...
    def totals(self) -> dict[str, int]: ...
    def window(self) -> dict[str, Any]: ...
    def latency_histogram(self, kind: str = ...) -> list[tuple[int, int]]: ...
    def client_requests(self) -> list[int]: ...
    def client(self, index: int) -> dict[str, int]: ...
