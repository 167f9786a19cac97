"""The server's cache of resumable sessions (RFC 5246 §7.3 abbreviated handshake, by session id).

A full handshake that completes stores its session under the session id of the ServerHello;
a later ClientHello that offers this id may resume it. The cache is bounded: when it is full,
the least recently used session goes (and is counted), and an entry expires after
``lifetime`` seconds (Californium's ``DTLS.SESSION_TIMEOUT``, 24 h). There are no session
tickets (RFC 5077), as in Californium.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from extplugtest.dtls.ciphersuites import CipherSuite

DEFAULT_MAX_SESSIONS = 100_000  # like the connector's connection limit
DEFAULT_LIFETIME = 24 * 3600.0  # DTLS.SESSION_TIMEOUT (inventory §6.5)


@dataclass(frozen=True)
class CachedSession:
    """What an abbreviated handshake needs of the original one (RFC 5246 §7.4.1.2)."""

    session_id: bytes
    suite: CipherSuite
    master_secret: bytes
    extended_master_secret: bool
    identity: bytes  # the authenticated peer (PSK identity or certificate principal)
    peer_certificate_type: int | None
    created: float


@dataclass
class SessionCacheCounters:
    stored: int = 0
    hits: int = 0
    misses: int = 0
    resumed: int = 0  # abbreviated handshakes completed (counted by the server handshake)
    expired: int = 0
    evicted: int = 0


class SessionCache:
    def __init__(
        self,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        lifetime: float = DEFAULT_LIFETIME,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("the session cache needs room for at least one session")
        self.max_sessions = max_sessions
        self.lifetime = lifetime
        self.clock = clock
        self.counters = SessionCacheCounters()
        self._sessions: OrderedDict[bytes, CachedSession] = OrderedDict()  # LRU order

    def __len__(self) -> int:
        return len(self._sessions)

    def now(self) -> float:
        return self.clock()

    def get(self, session_id: bytes) -> CachedSession | None:
        """The live session with this id (now the most recently used), or None."""
        session = self._sessions.get(session_id)
        if session is None:
            self.counters.misses += 1
            return None
        if self.clock() - session.created > self.lifetime:
            del self._sessions[session_id]
            self.counters.expired += 1
            self.counters.misses += 1
            return None
        self._sessions.move_to_end(session_id)
        self.counters.hits += 1
        return session

    def put(self, session: CachedSession) -> None:
        if not session.session_id:
            return  # an empty id cannot be offered again (RFC 5246 §7.4.1.3)
        self._sessions[session.session_id] = session
        self._sessions.move_to_end(session.session_id)
        self.counters.stored += 1
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
            self.counters.evicted += 1

    def remove(self, session_id: bytes) -> None:
        self._sessions.pop(session_id, None)
