"""DTLS 1.2 key derivation and key exchange arithmetic.

* the TLS 1.2 PRF with SHA-256 (RFC 5246 §5), master secret (§8.1) and extended master
  secret (RFC 7627 §4), key block (§6.3), Finished verify_data (§7.4.9);
* the handshake transcript hash (RFC 6347 §4.2.6: unfragmented messages with their
  12-byte DTLS headers; RFC 7627 §3 session_hash);
* premaster secrets for PSK (RFC 4279 §2) and ECDHE_PSK (RFC 5489 §2);
* ECDHE on secp256r1 and x25519 (RFC 8422 §5.10, §5.11) and ECDSA-SHA256 signatures,
  with ``cryptography``; CertificateVerify signatures (RFC 5246 §7.4.8) over the transcript
  hash, which is the SHA-256 the signature algorithm would compute itself.

An invalid peer public value raises ``DecodeError`` with illegal_parameter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from extplugtest.dtls.ciphersuites import CipherSuite
from extplugtest.dtls.handshake_header import AlertDescription, DecodeError
from extplugtest.dtls.messages import NamedGroup

__all__ = [
    "CLIENT_FINISHED",
    "MASTER_SECRET_LENGTH",
    "SERVER_FINISHED",
    "SUPPORTED_GROUPS",
    "EcdheKeyPair",
    "KeyBlock",
    "Transcript",
    "ecdhe_psk_premaster_secret",
    "ecdsa_sign_sha256",
    "ecdsa_sign_sha256_digest",
    "ecdsa_verify_sha256",
    "ecdsa_verify_sha256_digest",
    "extended_master_secret",
    "key_block",
    "master_secret",
    "prf",
    "psk_premaster_secret",
    "verify_data",
]

MASTER_SECRET_LENGTH = 48
CLIENT_FINISHED = b"client finished"
SERVER_FINISHED = b"server finished"
SUPPORTED_GROUPS = (NamedGroup.SECP256R1, NamedGroup.X25519)
_SHA256 = hashes.SHA256()


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """PRF(secret, label, seed) = P_SHA256(secret, label + seed)[:length] (RFC 5246 §5)."""
    keyed = hmac.HMAC(secret, _SHA256)
    seed = label + seed
    out = bytearray()
    a = seed  # A(0)
    while len(out) < length:
        h = keyed.copy()
        h.update(a)
        a = h.finalize()  # A(i) = HMAC(secret, A(i-1))
        h = keyed.copy()
        h.update(a + seed)
        out += h.finalize()
    return bytes(out[:length])


def master_secret(pre_master_secret: bytes, client_random: bytes, server_random: bytes) -> bytes:
    """RFC 5246 §8.1."""
    return prf(
        pre_master_secret, b"master secret", client_random + server_random, MASTER_SECRET_LENGTH
    )


def extended_master_secret(pre_master_secret: bytes, session_hash: bytes) -> bytes:
    """RFC 7627 §4; session_hash covers the messages up to and including ClientKeyExchange."""
    return prf(pre_master_secret, b"extended master secret", session_hash, MASTER_SECRET_LENGTH)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    """The write keys and implicit IVs of both sides (AEAD suites: no MAC keys)."""

    client_write_key: bytes
    server_write_key: bytes
    client_write_iv: bytes
    server_write_iv: bytes


def key_block(
    master: bytes, client_random: bytes, server_random: bytes, suite: CipherSuite
) -> KeyBlock:
    """RFC 5246 §6.3: PRF(master, "key expansion", server_random + client_random), cut into
    client/server MAC keys (none here), write keys and IVs, in that order."""
    block = prf(master, b"key expansion", server_random + client_random, suite.key_block_length)
    pos = 2 * suite.mac_key_length
    key, iv = suite.key_length, suite.fixed_iv_length
    return KeyBlock(
        client_write_key=block[pos : pos + key],
        server_write_key=block[pos + key : pos + 2 * key],
        client_write_iv=block[pos + 2 * key : pos + 2 * key + iv],
        server_write_iv=block[pos + 2 * key + iv : pos + 2 * key + 2 * iv],
    )


def verify_data(master: bytes, label: bytes, handshake_hash: bytes, length: int = 12) -> bytes:
    """Finished.verify_data (RFC 5246 §7.4.9); label is CLIENT_FINISHED or SERVER_FINISHED."""
    return prf(master, label, handshake_hash, length)


class Transcript:
    """Running SHA-256 over the handshake messages (each in unfragmented form, header
    included: RFC 6347 §4.2.6). The first ClientHello and the HelloVerifyRequest are not
    part of it (§4.2.1)."""

    __slots__ = ("_hash",)

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, message: bytes) -> None:
        self._hash.update(message)

    def digest(self) -> bytes:
        """The hash so far; more messages can be added afterwards."""
        return self._hash.copy().digest()


def psk_premaster_secret(psk: bytes) -> bytes:
    """RFC 4279 §2: uint16 N, N zero bytes, uint16 N, psk."""
    n = len(psk).to_bytes(2, "big")
    return n + bytes(len(psk)) + n + psk


def ecdhe_psk_premaster_secret(shared_secret: bytes, psk: bytes) -> bytes:
    """RFC 5489 §2: uint16 len(Z), Z (the ECDH shared secret), uint16 len(psk), psk."""
    return len(shared_secret).to_bytes(2, "big") + shared_secret + len(psk).to_bytes(2, "big") + psk


class EcdheKeyPair:
    """An ephemeral key pair on secp256r1 (uncompressed points) or x25519."""

    __slots__ = ("_private", "group", "public")

    def __init__(
        self, group: int, private: ec.EllipticCurvePrivateKey | x25519.X25519PrivateKey
    ) -> None:
        self.group = group
        self._private = private
        if isinstance(private, x25519.X25519PrivateKey):
            self.public = private.public_key().public_bytes_raw()
        else:
            self.public = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )

    @classmethod
    def generate(cls, group: int) -> EcdheKeyPair:
        if group == NamedGroup.SECP256R1:
            return cls(group, ec.generate_private_key(ec.SECP256R1()))
        if group == NamedGroup.X25519:
            return cls(group, x25519.X25519PrivateKey.generate())
        raise ValueError(f"unsupported named group {group}")

    def exchange(self, peer_public: bytes) -> bytes:
        """The shared secret Z (RFC 8422 §5.10: the x-coordinate, leading zeros kept, or the
        X25519 output). A point not on the curve, a compressed or wrong-length point and an
        all-zero X25519 result (RFC 8422 §5.11) are illegal_parameter."""
        private = self._private
        try:
            if isinstance(private, x25519.X25519PrivateKey):
                if len(peer_public) != 32:
                    raise ValueError("x25519 public key must be 32 bytes")
                peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
                shared = private.exchange(peer)
                if not any(shared):  # cryptography already refuses this; be explicit
                    raise ValueError("all-zero x25519 shared secret")
                return shared
            if len(peer_public) != 65 or peer_public[0] != 4:
                raise ValueError("secp256r1 public key must be an uncompressed point")
            point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_public)
            return private.exchange(ec.ECDH(), point)
        except ValueError as exc:
            raise DecodeError(
                f"bad ECDH public value: {exc}", AlertDescription.ILLEGAL_PARAMETER
            ) from None


def ecdsa_sign_sha256(private_key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """A DER ECDSA signature with SHA-256 (ecdsa_secp256r1_sha256, RFC 8422 §5.4)."""
    return private_key.sign(data, ec.ECDSA(_SHA256))


def ecdsa_verify_sha256(
    public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes
) -> bool:
    try:
        public_key.verify(signature, data, ec.ECDSA(_SHA256))
    except InvalidSignature:
        return False
    return True


def ecdsa_sign_sha256_digest(private_key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """ecdsa_secp256r1_sha256 over data whose SHA-256 is *digest*: the CertificateVerify
    signature, computed from the running transcript hash (RFC 5246 §7.4.8)."""
    return private_key.sign(digest, ec.ECDSA(Prehashed(_SHA256)))


def ecdsa_verify_sha256_digest(
    public_key: ec.EllipticCurvePublicKey, digest: bytes, signature: bytes
) -> bool:
    try:
        public_key.verify(signature, digest, ec.ECDSA(Prehashed(_SHA256)))
    except (InvalidSignature, ValueError):
        return False
    return True
