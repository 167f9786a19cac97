"""Reliable transmission of the CON messages a server sends itself (RFC 7252 §4.2).

Separate responses and CON notifications are retransmitted with exponential back-off until an
ACK or RST with their MID arrives: the first timeout is drawn from [ACK_TIMEOUT,
ACK_TIMEOUT * ACK_RANDOM_FACTOR], it doubles each time, and after MAX_RETRANSMIT
retransmissions the message has failed. Every new CON message starts with a fresh counter.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4

#: outcome passed to the completion callback
ACKNOWLEDGED = "ack"
REJECTED = "rst"
TIMED_OUT = "timeout"


@dataclass
class TransmissionParameters:
    ack_timeout: float = ACK_TIMEOUT
    ack_random_factor: float = ACK_RANDOM_FACTOR
    max_retransmit: int = MAX_RETRANSMIT
    #: bound on CON messages awaiting an ACK at once (per endpoint)
    max_outstanding: int = 100_000


class _Outstanding:
    __slots__ = ("address", "attempts", "data", "on_done", "timeout", "timer")

    def __init__(
        self, data: bytes, address: tuple, timeout: float, on_done: Callable[[str], None] | None
    ) -> None:
        self.data = data
        self.address = address
        self.timeout = timeout
        self.attempts = 0
        self.on_done = on_done
        self.timer: asyncio.TimerHandle | None = None


class ConfirmableSender:
    """Sends CON messages through *send* and retransmits them until they are answered."""

    def __init__(
        self,
        send: Callable[[bytes, tuple], object],
        params: TransmissionParameters | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._send = send
        self.params = params or TransmissionParameters()
        self._loop = loop
        self._outstanding: dict[tuple[tuple, int], _Outstanding] = {}
        self.retransmissions = 0
        self.timeouts = 0
        self.refused = 0

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def send(
        self,
        data: bytes,
        address: tuple,
        mid: int,
        on_done: Callable[[str], None] | None = None,
    ) -> bool:
        """Send a CON message; False (and nothing sent) when the bound is reached."""
        if len(self._outstanding) >= self.params.max_outstanding:
            self.refused += 1
            return False
        loop = self._loop or asyncio.get_running_loop()
        timeout = self.params.ack_timeout * random.uniform(1.0, self.params.ack_random_factor)
        entry = _Outstanding(data, address, timeout, on_done)
        key = (address, mid)
        previous = self._outstanding.pop(key, None)
        if previous is not None and previous.timer is not None:
            previous.timer.cancel()
        self._outstanding[key] = entry
        entry.timer = loop.call_later(timeout, self._retransmit, key)
        self._send(data, address)
        return True

    def resend(self, address: tuple, mid: int) -> bool:
        """Send an outstanding message again now (its peer repeated the request)."""
        entry = self._outstanding.get((address, mid))
        if entry is None:
            return False
        self._send(entry.data, address)
        return True

    def complete(self, address: tuple, mid: int, outcome: str) -> bool:
        """An ACK or RST arrived for *mid*; False when nothing was waiting for it."""
        entry = self._outstanding.pop((address, mid), None)
        if entry is None:
            return False
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.on_done is not None:
            entry.on_done(outcome)
        return True

    def cancel_all(self) -> None:
        for entry in self._outstanding.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self._outstanding.clear()

    def _retransmit(self, key: tuple[tuple, int]) -> None:
        entry = self._outstanding.get(key)
        if entry is None:
            return
        if entry.attempts >= self.params.max_retransmit:
            del self._outstanding[key]
            self.timeouts += 1
            if entry.on_done is not None:
                entry.on_done(TIMED_OUT)
            return
        entry.attempts += 1
        entry.timeout *= 2
        self.retransmissions += 1
        loop = self._loop or asyncio.get_running_loop()
        entry.timer = loop.call_later(entry.timeout, self._retransmit, key)
        self._send(entry.data, entry.address)
