"""Cluster MAC keys from the management channel's DTLS handshake (inventory §5.3).

Californium extends the TLS 1.2 key block (RFC 5246 §6.3) of the management DTLS session by
two more ``enc_key_length`` keys: after client/server MAC keys, write keys and IVs come the
``client_cluster_MAC_key`` and the ``server_cluster_MAC_key``. The DTLS client of the
management connection signs with the client key and verifies with the server key; the server
the other way round. The MAC is HMAC with the PRF hash of the suite (SHA-256 for every suite
this project offers).
"""

from __future__ import annotations

from dataclasses import dataclass

from extplugtest.cluster._header import ClusterMac
from extplugtest.dtls.ciphersuites import CipherSuite
from extplugtest.dtls.keys import prf

__all__ = ["ClusterMacKeys", "cluster_mac_keys"]


@dataclass(frozen=True, slots=True)
class ClusterMacKeys:
    """The MAC of one node pair: ``write`` signs packets to the peer, ``read`` checks its."""

    write: ClusterMac
    read: ClusterMac


def cluster_mac_keys(
    master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    suite: CipherSuite,
    *,
    is_client: bool,
) -> ClusterMacKeys:
    """The cluster MACs of one management DTLS session, for the side given by *is_client*."""
    if suite.prf_hash != "sha256":
        raise ValueError(f"cluster MAC keys need the SHA-256 PRF, not {suite.prf_hash}")
    length = suite.key_length
    block = prf(
        master_secret,
        b"key expansion",
        server_random + client_random,
        suite.key_block_length + 2 * length,
    )
    client_key = block[suite.key_block_length : suite.key_block_length + length]
    server_key = block[suite.key_block_length + length :]
    client, server = ClusterMac(client_key), ClusterMac(server_key)
    if is_client:
        return ClusterMacKeys(write=client, read=server)
    return ClusterMacKeys(write=server, read=client)
