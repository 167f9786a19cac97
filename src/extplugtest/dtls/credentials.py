"""PSK credentials of the reference servers (inventory §1.2, PlugPskStore) plus --psk-file."""

from __future__ import annotations

import base64
import re
from pathlib import Path

#: identity -> secret, as Californium's plugtest and extended servers know them
BUILT_IN = {b"password": b"sesame", b"Client_identity": b"secretPSK"}
CALI_PREFIX = b"cali."
CALI_SECRET = b".fornium"
HONO_IDENTITY = re.compile(rb"^[^@]{8,}@.{8,}$")
HONO_SECRET = b"secret"


class PskFileError(ValueError):
    """A --psk-file line that cannot be read; str() names the file and line."""


def parse_psk_file(text: str, name: str = "psk file") -> dict[bytes, bytes]:
    """``identity=base64secret`` or ``identity=:0x<hex>`` lines; ``#`` starts a comment."""
    entries: dict[bytes, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        identity, sep, secret = line.partition("=")
        if not sep or not identity:
            raise PskFileError(f"{name}:{number}: expected identity=secret")
        try:
            if secret.startswith(":0x"):
                value = bytes.fromhex(secret[3:])
            else:
                value = base64.b64decode(secret, validate=True)
        except ValueError:
            message = f"{name}:{number}: the secret is neither base64 nor :0x<hex>"
            raise PskFileError(message) from None
        entries[identity.strip().encode()] = value
    return entries


class PskStore:
    """Looks up the secret of a PSK identity: the file's entries first, then the reference
    server's built-in identities and wildcards (``cali.*`` and Hono's ``x@y`` form)."""

    def __init__(self, entries: dict[bytes, bytes] | None = None) -> None:
        self.entries = dict(entries or {})

    @classmethod
    def from_file(cls, path: Path) -> PskStore:
        return cls(parse_psk_file(path.read_text(encoding="utf-8"), str(path)))

    def secret(self, identity: bytes) -> bytes | None:
        if identity in self.entries:
            return self.entries[identity]
        if identity in BUILT_IN:
            return BUILT_IN[identity]
        if identity.startswith(CALI_PREFIX):
            return CALI_SECRET
        if HONO_IDENTITY.match(identity):
            return HONO_SECRET
        return None
