"""Configuration: Californium's properties keys and defaults for the extended server.

The file format is Java properties (``KEY=value``, ``#`` comments); a blank value means the
default. Durations are written as Californium writes them: ``247[s]``, ``3[min]``, ``500[ms]``
(a bare number is milliseconds for keys that are durations, as in Californium).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from extplugtest.dtls.ciphersuites import DEFAULT_PREFERENCE, CipherSuite, parse_suite_names
from extplugtest.dtls.handshake_server import ClientAuth, ExtendedMasterSecretMode
from extplugtest.dtls.messages import MAX_PLAINTEXT

DEFAULT_FILE = "CaliforniumReceivetest3.properties"

logger = logging.getLogger(__name__)

_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:\[?\s*(ns|us|ms|s|min|h|d)\s*\]?)?\s*$")


EXTENDED_MASTER_SECRET_MODES = tuple(mode.value for mode in ExtendedMasterSecretMode)
CLIENT_AUTH_MODES = tuple(mode.value for mode in ClientAuth)


class ConfigError(ValueError):
    """A configuration value that cannot be used; str() says which and why."""


def parse_duration(text: str, default_unit: str = "ms") -> float:
    """Seconds from ``5000``, ``500ms``, ``5[s]``, ``3min`` ..."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"'{text}' is not a duration (use e.g. 500ms, 5s, 3min)")
    return float(match.group(1)) * _UNITS[match.group(2) or default_unit]


def parse_properties(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    return values


#: properties key -> (ServerConfig attribute, conversion)
_PROPERTY_KEYS: dict[str, tuple[str, object]] = {
    "COAP.COAP_PORT": ("coap_port", int),
    "COAP.MAX_MESSAGE_SIZE": ("max_message_size", int),
    "COAP.PREFERRED_BLOCK_SIZE": ("preferred_block_size", int),
    "EXTERNAL_UDP_MAX_MESSAGE_SIZE": ("external_max_message_size", int),
    "EXTERNAL_UDP_PREFERRED_BLOCK_SIZE": ("external_preferred_block_size", int),
    "COAP.MAX_RESOURCE_BODY_SIZE": ("max_resource_body_size", int),
    "COAP.DEDUPLICATOR": ("deduplicator", str),
    "COAP.PEERS_MARK_AND_SWEEP_MESSAGES": ("peers_mark_and_sweep_messages", int),
    "COAP.MAX_ACTIVE_PEERS": ("max_active_peers", int),
    "COAP.MAX_PEER_INACTIVITY_PERIOD": ("max_peer_inactivity_period", "duration"),
    "COAP.EXCHANGE_LIFETIME": ("exchange_lifetime", "duration"),
    "COAP.NON_LIFETIME": ("non_lifetime", "duration"),
    "COAP.ACK_TIMEOUT": ("ack_timeout", "duration"),
    "COAP.ACK_INIT_RANDOM": ("ack_random_factor", float),
    "COAP.MAX_RETRANSMIT": ("max_retransmit", int),
    "COAP.MAX_SERVER_OBSERVES": ("max_server_observes", int),
    "COAP.NOTIFICATION_CHECK_INTERVAL": ("notification_check_interval", "duration"),
    "COAP.NOTIFICATION_CHECK_INTERVAL_COUNT": ("notification_check_interval_count", int),
    "UDP.RECEIVE_BUFFER_SIZE": ("udp_receive_buffer_size", int),
    "UDP.SEND_BUFFER_SIZE": ("udp_send_buffer_size", int),
    "DTLS.CONNECTION_ID_LENGTH": ("dtls_cid_length", int),
    "DTLS.CLIENT_AUTHENTICATION_MODE": ("dtls_client_auth", str),
    "DTLS.EXTENDED_MASTER_SECRET_MODE": ("dtls_extended_master_secret_mode", str),
    "DTLS.CIPHER_SUITES": ("dtls_cipher_suites", "suites"),
    "DTLS.PRESELECTED_CIPHER_SUITES": ("dtls_preselected_cipher_suites", "preselection"),
    "DTLS.RECORD_SIZE_LIMIT": ("dtls_record_size_limit", int),
    "DTLS.MAX_CONNECTIONS": ("dtls_max_connections", int),
    "DTLS.STALE_CONNECTION_THRESHOLD": ("dtls_stale_connection_threshold", "duration"),
    "DTLS.MAC_ERROR_FILTER_THRESHOLD": ("dtls_mac_error_filter_threshold", int),
    "DTLS.MAC_ERROR_FILTER_QUIET_TIME": ("dtls_mac_error_filter_quiet_time", "duration"),
    "DTLS.RETRANSMISSION_TIMEOUT": ("dtls_retransmission_timeout", "duration"),
    "DTLS.MAX_RETRANSMISSION_TIMEOUT": ("dtls_max_retransmission_timeout", "duration"),
    "DTLS.RETRANSMISSION_TIMEOUT_SCALE": ("dtls_retransmission_timeout_scale", float),
    "DTLS.RETRANSMISSION_INIT_RANDOM": ("dtls_retransmission_init_random", float),
    "DTLS.ADDITIONAL_ECC_TIMEOUT": ("dtls_additional_ecc_timeout", "duration"),
    "DTLS.MAX_RETRANSMISSIONS": ("dtls_max_retransmissions", int),
    "DTLS.MAX_TRANSMISSION_UNIT": ("dtls_mtu", int),
    "DTLS.MAX_TRANSMISSION_UNIT_LIMIT": ("dtls_mtu_limit", int),
    "DTLS.APPLICATION_AUTHORIZATION_TIMEOUT": (
        "dtls_application_authorization_timeout",
        "duration",
    ),
    "TCP.CONNECT_TIMEOUT": ("tcp_connect_timeout", "duration"),
    "TCP.CONNECTION_IDLE_TIMEOUT": ("tcp_connection_idle_timeout", "duration"),
    "TCP.TLS_HANDSHAKE_TIMEOUT": ("tcp_tls_handshake_timeout", "duration"),
}


@dataclass
class ServerConfig:
    """The settings the server uses, with the extended server's defaults (inventory §1.3)."""

    coap_port: int = 5783
    plugtest_port: int = 5683
    max_message_size: int = 1024
    preferred_block_size: int = 1024
    external_max_message_size: int = 64
    external_preferred_block_size: int = 64
    max_resource_body_size: int = 8192
    deduplicator: str = "PEERS_MARK_AND_SWEEP"
    peers_mark_and_sweep_messages: int = 16
    max_active_peers: int = 1_000_000
    max_peer_inactivity_period: float = 180.0
    exchange_lifetime: float = 247.0
    non_lifetime: float = 145.0
    ack_timeout: float = 2.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    max_server_observes: int = 50_000
    notification_check_interval: float = 120.0
    notification_check_interval_count: int = 100
    udp_receive_buffer_size: int = 4 * 1024 * 1024
    udp_send_buffer_size: int = 4 * 1024 * 1024
    #: -1: CID disabled (the client's extension is ignored); 0: support only (inventory §6.2)
    dtls_cid_length: int = 6
    #: NONE, WANTED or NEEDED for both servers; None: each server's default (extended WANTED,
    #: plugtest NEEDED; inventory §1.3). --client-auth overrides it.
    dtls_client_auth: str | None = None
    dtls_extended_master_secret_mode: str = "ENABLED"
    #: DTLS.CIPHER_SUITES: exactly these (None: the preselected ones)
    dtls_cipher_suites: tuple[CipherSuite, ...] | None = None
    #: DTLS.PRESELECTED_CIPHER_SUITES (None: Californium's plugtest list, as far as we have it)
    dtls_preselected_cipher_suites: tuple[CipherSuite, ...] | None = None
    #: our record_size_limit (RFC 8449), 64..16384; None: 16384
    dtls_record_size_limit: int | None = None
    dtls_max_connections: int = 1_000_000
    dtls_stale_connection_threshold: float = 180.0
    dtls_mac_error_filter_threshold: int = 8
    dtls_mac_error_filter_quiet_time: float = 4.0
    # handshake flights (inventory §6.3; the servers' values)
    dtls_retransmission_timeout: float = 3.0
    dtls_max_retransmission_timeout: float = 60.0
    dtls_retransmission_timeout_scale: float = 2.0
    dtls_retransmission_init_random: float = 1.0
    dtls_additional_ecc_timeout: float = 8.0
    dtls_max_retransmissions: int = 4
    dtls_mtu: int | None = None  # blank: the interface's
    dtls_mtu_limit: int = 1500
    #: an anonymous certificate handshake is kept only if authorized within this time
    #: (/benchmark?auth); 0: off. The extended server's 15 s; the plugtest server has it off
    #: (inventory §1.3, §6.3)
    dtls_application_authorization_timeout: float = 15.0
    tcp_connect_timeout: float = 15.0
    tcp_connection_idle_timeout: float = 3600.0
    tcp_tls_handshake_timeout: float = 60.0
    #: keys of the properties file this server has no use for (a Californium file has many)
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def deduplication(self) -> bool:
        return self.deduplicator != "NO_DEDUPLICATOR"

    @property
    def dtls_suites(self) -> tuple[CipherSuite, ...]:
        """The DTLS cipher suites: DTLS.CIPHER_SUITES if set, else the preselected ones (as
        Californium, where the preselection filters the automatically chosen suites)."""
        if self.dtls_cipher_suites is not None:
            return self.dtls_cipher_suites
        if self.dtls_preselected_cipher_suites is not None:
            return self.dtls_preselected_cipher_suites
        return DEFAULT_PREFERENCE

    def apply(self, properties: dict[str, str], source: str = "configuration") -> None:
        """Take the known keys of *properties*; the others are listed in ignored_keys and
        named in one log line, so that a mistyped key does not go unnoticed."""
        ignored = [key for key in properties if key not in _PROPERTY_KEYS]
        self.ignored_keys += ignored
        if ignored:
            shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
            logger.warning("%s: %d keys not used by extserver: %s", source, len(ignored), shown)
        for key, value in properties.items():
            if key not in _PROPERTY_KEYS or value == "":
                continue
            attribute, kind = _PROPERTY_KEYS[key]
            try:
                if kind == "duration":
                    converted: object = parse_duration(value)
                elif kind == "suites":
                    converted = parse_suite_names(value)
                elif kind == "preselection":
                    left_out: list[str] = []
                    converted = parse_suite_names(value, left_out)
                    if left_out:
                        logger.warning(
                            "%s: %s: %s not supported by extserver, left out",
                            source, key, ", ".join(left_out),
                        )  # fmt: skip
                elif kind is str:
                    converted = value
                else:
                    converted = kind(value)  # type: ignore[operator]
            except (ValueError, ConfigError) as error:
                raise ConfigError(f"{source}: {key}={value} is invalid ({error})") from None
            setattr(self, attribute, converted)
        self.validate(source)

    def validate(self, source: str = "configuration") -> None:
        if self.deduplicator not in ("PEERS_MARK_AND_SWEEP", "MARK_AND_SWEEP", "NO_DEDUPLICATOR"):
            raise ConfigError(
                f"{source}: COAP.DEDUPLICATOR={self.deduplicator} is unknown "
                "(use PEERS_MARK_AND_SWEEP, MARK_AND_SWEEP or NO_DEDUPLICATOR)"
            )
        for name in ("coap_port", "plugtest_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{source}: {name} {getattr(self, name)} is not a UDP port")
        if not -1 <= self.dtls_cid_length <= 16:
            raise ConfigError(
                f"{source}: DTLS.CONNECTION_ID_LENGTH must be 0..16, or -1 (disabled)"
            )
        if self.dtls_client_auth is not None and self.dtls_client_auth not in CLIENT_AUTH_MODES:
            raise ConfigError(
                f"{source}: DTLS.CLIENT_AUTHENTICATION_MODE={self.dtls_client_auth} is unknown "
                f"(use {', '.join(CLIENT_AUTH_MODES)})"
            )
        if self.dtls_extended_master_secret_mode not in EXTENDED_MASTER_SECRET_MODES:
            raise ConfigError(
                f"{source}: DTLS.EXTENDED_MASTER_SECRET_MODE="
                f"{self.dtls_extended_master_secret_mode} is unknown "
                f"(use {', '.join(EXTENDED_MASTER_SECRET_MODES)})"
            )
        limit = self.dtls_record_size_limit
        if limit is not None and not 64 <= limit <= MAX_PLAINTEXT:
            raise ConfigError(
                f"{source}: DTLS.RECORD_SIZE_LIMIT={limit} is not 64..{MAX_PLAINTEXT}"
            )
        if self.dtls_max_connections < 1 or self.dtls_mac_error_filter_threshold < 0:
            raise ConfigError(
                f"{source}: DTLS.MAX_CONNECTIONS must be positive and "
                "DTLS.MAC_ERROR_FILTER_THRESHOLD not negative"
            )
        if self.peers_mark_and_sweep_messages < 1 or self.max_active_peers < 1:
            raise ConfigError(f"{source}: deduplication bounds must be positive")
        if not (
            0 < self.dtls_retransmission_timeout <= self.dtls_max_retransmission_timeout
            and self.dtls_retransmission_timeout_scale >= 1.0
            and self.dtls_retransmission_init_random >= 1.0
            and self.dtls_additional_ecc_timeout >= 0
            and 0 <= self.dtls_max_retransmissions <= 32
        ):
            raise ConfigError(
                f"{source}: DTLS.RETRANSMISSION_TIMEOUT must be above 0 and at most "
                "DTLS.MAX_RETRANSMISSION_TIMEOUT, the scale and init random at least 1.0, "
                "DTLS.ADDITIONAL_ECC_TIMEOUT not negative, DTLS.MAX_RETRANSMISSIONS 0..32"
            )
        if not 576 <= self.dtls_mtu_limit <= 65535 or (
            self.dtls_mtu is not None and not 576 <= self.dtls_mtu <= 65535
        ):
            raise ConfigError(f"{source}: DTLS.MAX_TRANSMISSION_UNIT(_LIMIT) must be 576..65535")
        if self.dtls_application_authorization_timeout < 0:
            raise ConfigError(
                f"{source}: DTLS.APPLICATION_AUTHORIZATION_TIMEOUT must not be negative"
            )

    def load(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="latin-1")
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror}") from None
        self.apply(parse_properties(text), str(path))
