"""The demo PKI, certificate credentials and the trust store that checks a peer's certificate.

Like Californium's demo-certs, the package ships a small P-256 PKI for tests and demos:
``certs/ca.pem`` (the trust anchor), ``certs/server.pem`` + ``server.key`` (CN=cf-server, SAN
localhost and 127.0.0.1/::1, signed by the CA) and ``certs/client.pem`` + ``client.key``. They are
public: never use them for anything but tests. ``python -m extplugtest.dtls.pki DIR`` makes a
fresh set (that is how the shipped one was made).

``TrustStore`` checks what a peer presents in its Certificate message (RFC 5246 §7.4.2,
RFC 7250): an X.509 chain must lead to one of the trust anchors (a PEM bundle; by default the
demo CA) by names and signatures, every certificate in its validity period and every issuer a
CA (basicConstraints). That is a small PKIX subset (RFC 5280 §6): no revocation, name or policy
constraints, path-length or key-usage checks. ``trust_all`` accepts any chain that is well
formed (Californium's ``--trust-all``), and raw public keys are trusted as Californium's servers
and cf-cli do (``setTrustAllRPKs``), unless ``trust_all_rpks`` is off, when only the keys of the
trust anchors are accepted.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import itertools
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from extplugtest.dtls.handshake_header import AlertDescription

VALIDITY = datetime.timedelta(days=3650)
MAX_CHAIN_LENGTH = 8  # longer chains are refused before any signature is checked


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


def demo_client_credentials() -> CertificateCredentials:
    """The shipped demo client credentials (certs/client.pem + client.key, CN=cf-client)."""
    return load_credentials(demo_certs_path() / "client.pem", demo_certs_path() / "client.key")


def load_credentials(chain_path: Path, key_path: Path) -> CertificateCredentials:
    """Credentials from a PEM chain file and a PEM (PKCS#8 or SEC1) EC key file.

    OSError when a file cannot be read, ValueError when the contents are not usable."""
    return CertificateCredentials.from_pem(chain_path.read_bytes(), key_path.read_bytes())


def demo_certs_path() -> Path:
    return Path(str(resources.files("extplugtest") / "certs"))


def demo_ca_path() -> Path:
    return demo_certs_path() / "ca.pem"


# ---------------------------------------------------------------------------------------------
# Verifying the peer's certificate


class UntrustedCertificate(ValueError):
    """The peer's certificate or key is not accepted; ``alert`` is the TLS alert to send."""

    def __init__(self, reason: str, alert: AlertDescription = AlertDescription.BAD_CERTIFICATE):
        super().__init__(reason)
        self.alert = alert


def x509_principal(certificate: x509.Certificate) -> str:
    """The subject DN as Java's ``X500Principal.getName()`` prints it (RFC 2253/4514: the
    last RDN first), which is the "peer" Californium shows for an X.509 client."""
    return certificate.subject.rfc4514_string()


def rpk_principal(public_key_info: bytes) -> str:
    """Californium's name of a raw public key: an RFC 6920 ``ni`` URI of the SHA-256 of the
    DER SubjectPublicKeyInfo, base64url without padding."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(public_key_info).digest()).rstrip(b"=")
    return "ni:///sha-256;" + digest.decode("ascii")


def _p256_key(key: object, what: str) -> ec.EllipticCurvePublicKey:
    """Only ecdsa_secp256r1_sha256 is offered (RFC 8422 §5.1): other keys cannot sign for us."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UntrustedCertificate(
            f"{what} is not a P-256 key", AlertDescription.UNSUPPORTED_CERTIFICATE
        )
    return key


@dataclass
class TrustStore:
    """Trust anchors for the peer's certificate, and how raw public keys are treated."""

    anchors: tuple[x509.Certificate, ...] = ()
    trust_all: bool = False
    trust_all_rpks: bool = True
    _anchor_keys: frozenset[bytes] = field(default=frozenset(), init=False, repr=False)

    def __post_init__(self) -> None:
        self._anchor_keys = frozenset(
            anchor.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for anchor in self.anchors
        )

    @classmethod
    def from_pem_file(cls, path: Path) -> TrustStore:
        """A PEM bundle of trust anchors; OSError if unreadable, ValueError if it holds none."""
        try:
            anchors = x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError:
            raise ValueError(f"{path} holds no PEM certificate") from None
        return cls(tuple(anchors))

    @classmethod
    def demo(cls) -> TrustStore:
        """The demo CA (certs/ca.pem), the default of the server and of extclient."""
        return cls.from_pem_file(demo_ca_path())

    @property
    def authorities(self) -> tuple[bytes, ...]:
        """DER subject names of the anchors, for CertificateRequest.certificate_authorities
        (RFC 5246 §7.4.4). Empty with trust_all: any issuer is acceptable then."""
        if self.trust_all:
            return ()
        return tuple(anchor.subject.public_bytes() for anchor in self.anchors)

    def verify_chain(
        self, chain: tuple[bytes, ...], now: datetime.datetime | None = None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        """The peer's certificate and P-256 public key, if *chain* (DER, peer's certificate
        first, each one issued by the next) leads to a trust anchor; else UntrustedCertificate.
        """
        if not chain:
            raise UntrustedCertificate("empty certificate chain")
        if len(chain) > MAX_CHAIN_LENGTH:
            raise UntrustedCertificate(f"certificate chain longer than {MAX_CHAIN_LENGTH}")
        try:
            return self._verify_chain(chain, now)
        except UntrustedCertificate:
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            # cryptography parses lazily: a malformed field shows up only when it is used
            raise UntrustedCertificate(f"unusable certificate: {error}") from None

    def _verify_chain(
        self, chain: tuple[bytes, ...], now: datetime.datetime | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey]:
        certificates = [x509.load_der_x509_certificate(der) for der in chain]
        leaf = certificates[0]
        key = _p256_key(leaf.public_key(), "the certificate's key")
        now = now or datetime.datetime.now(datetime.timezone.utc)
        for certificate in certificates:
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise UntrustedCertificate(
                    f"certificate {x509_principal(certificate)} is expired or not yet valid",
                    AlertDescription.CERTIFICATE_EXPIRED,
                )
        for subject, issuer in itertools.pairwise(certificates):
            _check_issued_by(subject, issuer)
        if not self.trust_all:
            self._check_anchored(certificates[-1])
        return leaf, key

    def _check_anchored(self, last: x509.Certificate) -> None:
        """The chain's last certificate is an anchor, or an anchor issued it."""
        for anchor in self.anchors:
            if last == anchor:
                return
            if last.issuer == anchor.subject:
                try:
                    _check_issued_by(last, anchor)
                except UntrustedCertificate:
                    continue
                return
        raise UntrustedCertificate(
            f"no trusted issuer for {x509_principal(last)}", AlertDescription.UNKNOWN_CA
        )

    def verify_raw_public_key(self, public_key_info: bytes) -> ec.EllipticCurvePublicKey:
        """The P-256 key of a raw public key certificate (RFC 7250 §3), if trusted."""
        try:
            key = serialization.load_der_public_key(public_key_info)
        except (ValueError, UnsupportedAlgorithm):
            raise UntrustedCertificate("raw public key is no valid SubjectPublicKeyInfo") from None
        checked = _p256_key(key, "the raw public key")
        if not (self.trust_all or self.trust_all_rpks or public_key_info in self._anchor_keys):
            raise UntrustedCertificate("raw public key not trusted", AlertDescription.UNKNOWN_CA)
        return checked


def _check_issued_by(subject: x509.Certificate, issuer: x509.Certificate) -> None:
    """Name chaining, the issuer's signature, and the issuer being a CA (RFC 5280 §6.1.3,
    §6.1.4 k)."""
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise UntrustedCertificate(f"issuer {x509_principal(issuer)} is not a CA")
    try:
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise UntrustedCertificate(
            f"{x509_principal(subject)} is not signed by {x509_principal(issuer)}"
        ) from None


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "extplugtest demo"),
        ]
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; an end entity signs its ECDHE_ECDSA handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
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
        # RFC 5280 §4.2.1.1-3; OpenSSL's strict checks (X509_V_FLAG_X509_STRICT, on in Python
        # 3.13's default contexts) refuse a chain without the key identifiers and key usage.
        .add_extension(_key_usage(ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
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
