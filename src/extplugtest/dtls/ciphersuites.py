"""The DTLS 1.2 cipher suites the server supports, and their parameters.

All are AEAD suites with AES-128 (RFC 5246 §6.3 key block: no MAC keys, 16-byte keys, 4-byte
implicit IVs; RFC 5288 §3 / RFC 6655 §3: 8-byte explicit nonce per record) and the
TLS 1.2 PRF with SHA-256. The names are Californium's (``CipherSuite`` enum), which are
the IANA names; ``openssl_name`` is the OpenSSL spelling, for interop tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "ALL_SUITES",
    "DEFAULT_PREFERENCE",
    "TLS_EMPTY_RENEGOTIATION_INFO_SCSV",
    "Cipher",
    "CipherSuite",
    "KeyExchange",
    "by_code",
    "by_name",
    "common_suites",
    "parse_suite_names",
]

#: RFC 5746 §3.3 signalling cipher suite value (not a real suite).
TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF


class KeyExchange(Enum):
    PSK = "PSK"  # RFC 4279 §2
    ECDHE_PSK = "ECDHE_PSK"  # RFC 5489 §2
    ECDHE_ECDSA = "ECDHE_ECDSA"  # RFC 8422 §2.1


class Cipher(Enum):
    AES_128_CCM = "AES-128-CCM"  # RFC 6655
    AES_128_GCM = "AES-128-GCM"  # RFC 5288


@dataclass(frozen=True, slots=True)
class CipherSuite:
    code: int
    name: str
    openssl_name: str
    key_exchange: KeyExchange
    cipher: Cipher
    tag_length: int  # 8 for the CCM_8 suites, else 16
    key_length: int = 16  # enc_key_length
    fixed_iv_length: int = 4  # implicit part of the nonce, from the key block
    record_iv_length: int = 8  # explicit nonce sent in each record
    mac_key_length: int = 0  # AEAD: no MAC key
    prf_hash: str = "sha256"
    verify_data_length: int = 12  # RFC 5246 §7.4.9

    @property
    def key_block_length(self) -> int:
        """Bytes of key block needed (RFC 5246 §6.3)."""
        return 2 * (self.mac_key_length + self.key_length + self.fixed_iv_length)

    @property
    def uses_psk(self) -> bool:
        return self.key_exchange in (KeyExchange.PSK, KeyExchange.ECDHE_PSK)

    @property
    def uses_ecdhe(self) -> bool:
        return self.key_exchange in (KeyExchange.ECDHE_PSK, KeyExchange.ECDHE_ECDSA)

    @property
    def uses_certificate(self) -> bool:
        """Server authenticates with a certificate or raw public key."""
        return self.key_exchange is KeyExchange.ECDHE_ECDSA

    @property
    def record_expansion(self) -> int:
        """Bytes an AEAD record adds to its plaintext: explicit nonce + tag."""
        return self.record_iv_length + self.tag_length


_PSK, _ECDHE_PSK, _ECDSA = KeyExchange.PSK, KeyExchange.ECDHE_PSK, KeyExchange.ECDHE_ECDSA
_CCM, _GCM = Cipher.AES_128_CCM, Cipher.AES_128_GCM

TLS_PSK_WITH_AES_128_CCM_8 = CipherSuite(
    0xC0A8, "TLS_PSK_WITH_AES_128_CCM_8", "PSK-AES128-CCM8", _PSK, _CCM, 8
)
TLS_PSK_WITH_AES_128_CCM = CipherSuite(
    0xC0A4, "TLS_PSK_WITH_AES_128_CCM", "PSK-AES128-CCM", _PSK, _CCM, 16
)
TLS_PSK_WITH_AES_128_GCM_SHA256 = CipherSuite(
    0x00A8, "TLS_PSK_WITH_AES_128_GCM_SHA256", "PSK-AES128-GCM-SHA256", _PSK, _GCM, 16
)
# RFC 8442 §3; OpenSSL does not implement it, hence no OpenSSL name.
TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256 = CipherSuite(
    0xD003, "TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256", "", _ECDHE_PSK, _CCM, 8
)
TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 = CipherSuite(
    0xC0AE, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", "ECDHE-ECDSA-AES128-CCM8", _ECDSA, _CCM, 8
)
TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 = CipherSuite(
    0xC02B,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    _ECDSA,
    _GCM,
    16,
)

ALL_SUITES: tuple[CipherSuite, ...] = (
    TLS_PSK_WITH_AES_128_CCM_8,
    TLS_PSK_WITH_AES_128_CCM,
    TLS_PSK_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
)

#: The server's order: Californium's PRESELECTED_CIPHER_SUITES restricted to these suites
#: (inventory §6.1), then the 16-byte-tag CCM suite, which Californium does not preselect.
DEFAULT_PREFERENCE: tuple[CipherSuite, ...] = (
    TLS_PSK_WITH_AES_128_CCM_8,
    TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
    TLS_PSK_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    TLS_PSK_WITH_AES_128_CCM,
)

_BY_CODE = {suite.code: suite for suite in ALL_SUITES}
_BY_NAME = {suite.name: suite for suite in ALL_SUITES}


def by_code(code: int) -> CipherSuite | None:
    """The supported suite with this IANA code, or None."""
    return _BY_CODE.get(code)


def by_name(name: str) -> CipherSuite:
    """The suite with this Californium/IANA name (KeyError if unsupported)."""
    return _BY_NAME[name]


#: Californium's other suites (``CipherSuite`` enum of 4.x, inventory §6.1), which this server
#: does not implement: a properties file may name them, and is then told so.
CALIFORNIUM_ONLY_NAMES = frozenset(
    {
        "TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_PSK_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_PSK_WITH_AES_128_CCM_SHA256",
        "TLS_ECDHE_PSK_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_PSK_WITH_ARIA_128_CBC_SHA256",
        "TLS_PSK_WITH_AES_256_GCM_SHA384",
        "TLS_PSK_WITH_AES_256_CCM_8",
        "TLS_PSK_WITH_AES_256_CCM",
        "TLS_PSK_WITH_AES_128_CBC_SHA256",
        "TLS_PSK_WITH_ARIA_128_GCM_SHA256",
        "TLS_PSK_WITH_ARIA_256_GCM_SHA384",
        "TLS_PSK_WITH_ARIA_128_CBC_SHA256",
        "TLS_PSK_WITH_ARIA_256_CBC_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CCM",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CCM",
        "TLS_ECDHE_ECDSA_WITH_ARIA_128_GCM_SHA256",
        "TLS_ECDHE_ECDSA_WITH_ARIA_256_GCM_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_ARIA_128_CBC_SHA256",
        "TLS_ECDHE_ECDSA_WITH_ARIA_256_CBC_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_ARIA_128_GCM_SHA256",
        "TLS_ECDHE_RSA_WITH_ARIA_256_GCM_SHA384",
    }
)


def parse_suite_names(text: str, left_out: list[str] | None = None) -> tuple[CipherSuite, ...]:
    """A comma separated list of Californium suite names (DTLS.CIPHER_SUITES,
    DTLS.PRESELECTED_CIPHER_SUITES), in its order, duplicates dropped. ValueError names the
    first unknown or unsupported name, or says that the list is empty. With *left_out*, the
    Californium suites we do not implement are appended there instead (a preselection filters,
    as in Californium: its own properties file preselects AES-CBC and RSA suites)."""
    suites: list[CipherSuite] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        suite = _BY_NAME.get(name)
        if suite is None and left_out is not None and name in CALIFORNIUM_ONLY_NAMES:
            left_out.append(name)
            continue
        if suite is None:
            why = "not supported by extserver" if name in CALIFORNIUM_ONLY_NAMES else "unknown"
            supported = ", ".join(s.name for s in ALL_SUITES)
            raise ValueError(f"cipher suite {name} is {why} (supported: {supported})")
        if suite not in suites:
            suites.append(suite)
    if not suites:
        raise ValueError("no cipher suite")
    return tuple(suites)


def common_suites(server: Sequence[CipherSuite], client_codes: Iterable[int]) -> list[CipherSuite]:
    """The server's suites that the client offers, in the client's order.

    Californium (``ClientHello.getCommonCipherSuites``) lets the client's preference win; the
    caller then takes the first suite whose other requirements (PSK credentials, EC group,
    certificate) are met. Duplicates in the client's list are ignored.
    """
    allowed = {suite.code: suite for suite in server}
    result: list[CipherSuite] = []
    for code in client_codes:
        suite = allowed.pop(code, None)
        if suite is not None:
            result.append(suite)
    return result
