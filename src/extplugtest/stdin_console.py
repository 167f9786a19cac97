"""Console lines from stdin, answers on stdout: the consoles of ``extserver`` (save, load,
exit) and ``extnat`` (info, clear, ...) read their commands this way.

The end of the input (stdin from /dev/null, a closed pipe) ends only the console, never the
program, which may well run without a terminal. Lines are bounded: a longer one is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable

MAX_LINE = 4096  # longer console lines are dropped, not buffered without bound


class StdinConsole:
    """Feeds every line of *fd* (without its line end) to *execute* and prints what it
    returns."""

    def __init__(
        self,
        execute: Callable[[bytes], list[str]],
        loop: asyncio.AbstractEventLoop,
        fd: int = 0,
    ) -> None:
        self.execute = execute
        self.loop = loop
        self.fd = fd
        self.buffer = b""
        self.reading = False
        self.polled = False

    def start(self) -> None:
        # A process in the background of a shell that reads its terminal would be stopped by
        # SIGTTIN; ignored, the read fails with EIO, which ends the console.
        with contextlib.suppress(AttributeError, OSError, ValueError):
            signal.signal(signal.SIGTTIN, signal.SIG_IGN)
        self.reading = True
        try:
            self.loop.add_reader(self.fd, self._readable)
            self.polled = True
        except (OSError, ValueError):
            # A regular file or /dev/null cannot be polled (epoll refuses it), but a read
            # never blocks either.
            self.loop.call_soon(self._read_file)

    def close(self) -> None:
        if self.polled:
            self.loop.remove_reader(self.fd)
            self.polled = False
        self.reading = False

    def _read_file(self) -> None:
        if self.reading and self._readable():
            self.loop.call_soon(self._read_file)

    def _readable(self) -> bool:
        """Read once; False when the input has ended."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return True
        except OSError:  # EIO (see start), EBADF: no stdin at all
            data = b""
        if not data:
            self.close()
            if self.buffer:
                self._line(self.buffer)
                self.buffer = b""
            return False
        self.buffer += data
        while self.reading and b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._line(line.rstrip(b"\r"))
        if len(self.buffer) > MAX_LINE:
            self.buffer = b""
        return self.reading

    def _line(self, raw: bytes) -> None:
        if len(raw) > MAX_LINE:
            print("line too long, ignored", flush=True)
            return
        for line in self.execute(raw):
            print(line)
        sys.stdout.flush()
