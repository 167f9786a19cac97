"""Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1).

Cookie = HMAC-SHA256(secret, client IP bytes ‖ port (2 bytes, big endian) ‖ ClientHello
client_version ‖ random ‖ session_id ‖ cipher_suites ‖ compression_methods), each vector with
its length prefix, as Californium's ``CookieGenerator``. The cookie and the extensions are
left out, so a client may change its extensions between the two ClientHellos (tinydtls
PR #230). The 32-byte secret is replaced every ``lifetime`` seconds; a cookie made with the
previous secret is still accepted during the next period. Not thread-safe: use it from the
event loop only.
"""

from __future__ import annotations

import hmac
import os
import socket
import time
from collections.abc import Callable

from extplugtest.dtls.messages import ClientHello

__all__ = ["COOKIE_LENGTH", "Address", "CookieGenerator", "address_bytes"]

#: A peer address as asyncio reports it: (host, port) or (host, port, flowinfo, scope_id).
Address = tuple[str, int] | tuple[str, int, int, int]

COOKIE_LENGTH = 32
SECRET_LENGTH = 32


def address_bytes(address: Address) -> bytes:
    """The packed IP address (4 or 16 bytes; an IPv6 scope is ignored) and 2-byte port."""
    host = address[0].partition("%")[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host) + address[1].to_bytes(2, "big")


class CookieGenerator:
    def __init__(
        self,
        lifetime: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        self._lifetime = lifetime
        self._clock = clock
        self._random = random
        self._current = random(SECRET_LENGTH)
        self._previous: bytes | None = None
        self._next_rotation = clock() + lifetime

    def _secrets(self) -> tuple[bytes, bytes | None]:
        """(current, previous) secrets, rotating first if the period is over."""
        now = self._clock()
        if now >= self._next_rotation:
            # The old current secret stays valid for one period after its own period, but
            # not if a whole period passed without any cookie traffic.
            recent = now < self._next_rotation + self._lifetime
            self._previous = self._current if recent else None
            self._current = self._random(SECRET_LENGTH)
            self._next_rotation = now + self._lifetime
        return self._current, self._previous

    @staticmethod
    def _mac(secret: bytes, address: bytes, hello: ClientHello) -> bytes:
        return hmac.digest(secret, address + hello.cookie_input(), "sha256")

    def generate(self, address: Address, hello: ClientHello) -> bytes:
        """The cookie for this client address and ClientHello (32 bytes)."""
        current, _ = self._secrets()
        return self._mac(current, address_bytes(address), hello)

    def verify(self, address: Address, hello: ClientHello) -> bool:
        """True if ``hello.cookie`` was made for this address and hello by the current or
        the previous secret (constant-time comparison)."""
        cookie = hello.cookie
        if len(cookie) != COOKIE_LENGTH:
            return False
        current, previous = self._secrets()
        packed = address_bytes(address)
        ok = hmac.compare_digest(cookie, self._mac(current, packed, hello))
        if previous is not None:
            ok |= hmac.compare_digest(cookie, self._mac(previous, packed, hello))
        return ok
