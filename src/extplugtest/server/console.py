"""Californium's stdin console of the server (inventory §1.1): ``save[<pw>]``, ``load[<pw>]``
and ``exit``, each line echoed as ``> line``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

from extplugtest.dtls.persistence import (
    CONSOLE_MAX_AGE,
    PersistenceError,
    decode_store,
    encode_store,
    seal_store,
    unseal_store,
)
from extplugtest.server.app import ExtendedServer

MAX_CONSOLE_LINE = 4096  # longer console lines are dropped, not buffered without bound


class ServerConsole:
    """Californium's console (inventory §1.1): ``save[<pw>]`` stops the DTLS endpoints and
    keeps their connections in memory, encrypted with the raw bytes after ``save`` (a leading
    space included) if there are any; ``load[<pw>]`` restores them (at most 10 minutes old)
    and resumes; ``exit`` stops the server. Every line is echoed as ``> line``."""

    def __init__(self, server: ExtendedServer, stop: Callable[[], None]) -> None:
        self.server = server
        self.stop = stop
        self.saved: bytes | None = None  # the wrapped stream of the last save

    def execute(self, raw: bytes) -> list[str]:
        answer = [f"> {raw.decode('utf-8', 'replace')}"]
        if raw.startswith(b"save"):
            answer.append(self._save(raw[4:]))
        elif raw.startswith(b"load"):
            answer.append(self._load(raw[4:]))
        elif raw.strip() == b"exit":
            self.stop()
        elif raw.strip():
            answer.append("unknown command; use save[<password>], load[<password>] or exit")
        return answer

    def _save(self, password: bytes) -> str:
        if self.saved is not None:
            return "already saved: 'load' first"
        connectors = self.server.save_dtls()
        self.saved = seal_store(encode_store(connectors), password or None)
        total = sum(len(connections) for connections in connectors.values())
        return f"{total} DTLS connections saved in memory"

    def _load(self, password: bytes) -> str:
        if self.saved is None:
            return "nothing saved: 'save' first"
        try:
            store = decode_store(unseal_store(self.saved, password or None))
        except PersistenceError as error:
            return f"not loaded: {error}"
        self.saved = None
        restored = self.server.load_dtls(store.aged_until(time.time()), CONSOLE_MAX_AGE)
        return f"{restored} DTLS connections loaded"


class StdinConsole:
    """Console lines from stdin, answers on stdout. The end of the input (stdin from /dev/null,
    a closed pipe) ends only the console, never the server."""

    def __init__(self, console: ServerConsole, loop: asyncio.AbstractEventLoop, fd: int = 0):
        self.console = console
        self.loop = loop
        self.fd = fd
        self.buffer = b""
        self.reading = False
        self.polled = False

    def start(self) -> None:
        # A server in the background of a shell that reads its terminal would be stopped by
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
                self._execute(self.buffer)
                self.buffer = b""
            return False
        self.buffer += data
        while self.reading and b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self._execute(line.rstrip(b"\r"))
        if len(self.buffer) > MAX_CONSOLE_LINE:
            self.buffer = b""
        return self.reading

    def _execute(self, raw: bytes) -> None:
        if len(raw) > MAX_CONSOLE_LINE:
            print("line too long, ignored", flush=True)
            return
        for line in self.console.execute(raw):
            print(line)
        sys.stdout.flush()
