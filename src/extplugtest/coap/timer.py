"""A periodic timer on the event loop, for observe timers, sweeps and health statistics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

logger = logging.getLogger("extplugtest.coap.timer")


class PeriodicTimer:
    """Runs *callback* every *interval* seconds between ``start(loop)`` and ``stop()``."""

    def __init__(self, interval: float, callback: Callable[[], None]) -> None:
        self.interval = interval
        self.callback = callback
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is None:
            self._loop = loop
            self._handle = loop.call_later(self.interval, self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        assert self._loop is not None
        # The next period first: a failing callback must not end the timer.
        self._handle = self._loop.call_later(self.interval, self._fire)
        try:
            self.callback()
        except Exception:
            logger.exception("periodic task %r failed", self.callback)
