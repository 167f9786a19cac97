"""Californium's stdin console of the server (inventory §1.1): ``save[<pw>]``, ``load[<pw>]``
and ``exit``, each line echoed as ``> line``."""

from __future__ import annotations

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
