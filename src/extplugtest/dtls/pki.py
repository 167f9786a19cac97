"""The demo PKI and the server's certificate credentials.

Like Californium's demo-certs, the package ships a small P-256 PKI for tests and demos:
``certs/ca.pem`` (the trust anchor), ``certs/server.pem`` + ``server.key`` (CN=cf-server, SAN
localhost and 127.0.0.1/::1, signed by the CA) and ``certs/client.pem`` + ``client.key``. They are
public: never use them for anything but tests. ``python -m extplugtest.dtls.pki DIR`` makes a
fresh set (that is how the shipped one was made).
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)


@dataclass
class CertificateCredentials:
    """An EC private key and its certificate chain (DER, own certificate first)."""

    private_key: ec.EllipticCurvePrivateKey
    chain: tuple[bytes, ...]

    @property
    def public_key_info(self) -> bytes:
        """DER SubjectPublicKeyInfo: the raw public key of RFC 7250."""
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes) -> CertificateCredentials:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the private key is not an EC key")
        chain = tuple(
            cert.public_bytes(serialization.Encoding.DER)
            for cert in x509.load_pem_x509_certificates(chain_pem)
        )
        return cls(key, chain)


def demo_server_credentials() -> CertificateCredentials:
    """The shipped demo server credentials (certs/server.pem + server.key)."""
    certs = resources.files("extplugtest") / "certs"
    return CertificateCredentials.from_pem(
        (certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes()
    )


def demo_ca_path() -> Path:
    return Path(str(resources.files("extplugtest") / "certs" / "ca.pem"))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "extplugtest demo"),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    usage: list[x509.ObjectIdentifier] | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_demo_pki(directory: Path) -> None:
    """Write a fresh CA, server and client set into *directory*."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("cf-ca", ca_key, "cf-ca", ca_key, ca=True)
    hosts: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for name, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                        ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"cf-{name}", key, "cf-ca", ca_key, ca=False, usage=[usage],
                            names=hosts if name == "server" else None)  # fmt: skip
        (directory / f"{name}.pem").write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
        pkcs8 = serialization.PrivateFormat.PKCS8
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(pem, pkcs8, serialization.NoEncryption())
        )
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))


if __name__ == "__main__":
    make_demo_pki(Path(sys.argv[1] if len(sys.argv) > 1 else "certs"))
