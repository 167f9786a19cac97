from collections.abc import Iterable
from typing import Any, NamedTuple

from typing_extensions import Buffer

# ContentType (RFC 5246 §6.2.1, RFC 9146 §3)
CHANGE_CIPHER_SPEC: int
ALERT: int
HANDSHAKE: int
APPLICATION_DATA: int
TLS12_CID: int

AEAD_AES_128_CCM_8: int
AEAD_AES_128_CCM: int
AEAD_AES_128_GCM: int

DTLS_1_0: int
DTLS_1_2: int
HEADER_LENGTH: int
EXPLICIT_NONCE_LENGTH: int
MAX_CID_LENGTH: int
MAX_PLAINTEXT_LENGTH: int
MAX_FRAGMENT_LENGTH: int

RECORD_OK: int
RECORD_TRUNCATED: int
RECORD_BAD_LENGTH: int
RECORD_BAD_TYPE: int
RECORD_BAD_VERSION: int
RECORD_UNEXPECTED_CID: int
RECORD_TOO_MANY: int
RECORD_BAD_EPOCH: int
RECORD_CID_MISMATCH: int
RECORD_DUPLICATE: int
RECORD_TOO_OLD: int
RECORD_TOO_SHORT: int
RECORD_BAD_TAG: int
RECORD_BAD_INNER: int
RECORD_OVERFLOW: int
RECORD_NO_SPACE: int
RECORD_NONCE_REUSE: int
RECORD_BAD_SEQ: int
RECORD_CRYPTO: int

AEAD_FOR_CIPHER_SUITE: dict[int, int]
RESULT_NAMES: dict[int, str]

class Record(NamedTuple):
    content_type: int
    version: int
    epoch: int
    seq: int
    cid: bytes
    fragment: bytes
    raw: bytes

class RecordError(ValueError):
    result: int
    offset: int
    records: list[Record]
    def __init__(self, result: int, offset: int = 0, records: Iterable[Record] = ()) -> None: ...

def openssl_version() -> str: ...
def parse_datagram(
    data: Buffer, cid_length: int = 0, max_records: int | None = None
) -> list[Record]: ...
def filtered_datagram(data: Buffer) -> bool: ...

class ReplayWindow:
    def __init__(self) -> None: ...
    def check(self, seq: int) -> int: ...
    def accept(self, seq: int) -> bool: ...
    @property
    def highest(self) -> int | None: ...
    @property
    def bitmap(self) -> int: ...

class AeadCipher:
    aead: int
    tag_length: int
    epoch: int
    write_cid: bytes
    read_cid: bytes
    anti_replay: bool
    sealed: int
    opened: int
    auth_failures: int
    replays: int
    discarded: int
    def __init__(
        self,
        aead: int,
        write_key: Buffer,
        write_iv: Buffer,
        read_key: Buffer,
        read_iv: Buffer,
        *,
        epoch: int = 1,
        write_cid: Buffer = b"",
        read_cid: Buffer = b"",
        anti_replay: bool = True,
    ) -> None: ...
    def seal(
        self,
        epoch: int,
        seq: int,
        content_type: int,
        plaintext: Buffer,
        cid: Buffer | None = None,
    ) -> bytes: ...
    def open(self, record: Buffer) -> tuple[int, bytes]: ...
    def record_length(self, plaintext_length: int) -> int: ...
    @property
    def highest_seq(self) -> int | None: ...
    def export_state(self) -> dict[str, Any]: ...
    def restore_state(self, window_highest: int, window_bitmap: int, last_sealed: int) -> None: ...
    def stats(self) -> dict[str, int]: ...

def _seal_records(cipher: AeadCipher, count: int, size: int, first_seq: int) -> bytes: ...
def _open_records(cipher: AeadCipher, records: Buffer) -> int: ...
