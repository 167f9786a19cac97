"""Graceful restart through a file (inventory §1.1, §6.6): ``--store-file``,
``--store-password64``, ``--store-max-age``. At stop every DTLS endpoint is stopped and its
established connections are written to the file; at the next start they are read back into
the endpoints of the same label and the file is deleted, so clients go on without a new
handshake. The format is dtls/persistence.py's.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from extplugtest.dtls.persistence import (
    PersistenceError,
    encode_store,
    read_store_file,
    seal_store,
    write_store_file,
)
from extplugtest.server.app import ExtendedServer
from extplugtest.server.config import ConfigError

HOUR = 3600.0

logger = logging.getLogger("extplugtest.server")


@dataclass
class StoreSettings:
    """--store-file, --store-password64, --store-max-age (inventory §1.1, §6.6)."""

    path: Path
    password: bytes | None
    max_age: float  # seconds


def store_settings(args: argparse.Namespace) -> StoreSettings | None:
    """The graceful-restart options, checked as Californium's group: the file and the maximum
    age together, the password only with them. Raises ConfigError."""
    if args.store_file is None and args.store_max_age is None:
        if args.store_password64 is not None:
            raise ConfigError("--store-password64 needs --store-file and --store-max-age")
        return None
    if args.store_file is None or args.store_max_age is None:
        raise ConfigError("--store-file and --store-max-age go together")
    if not args.store_max_age > 0:
        raise ConfigError("--store-max-age must be more than 0 hours")
    password = None
    if args.store_password64 is not None:
        try:
            password = base64.b64decode(args.store_password64, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("--store-password64 is not base64") from None
    return StoreSettings(args.store_file, password or None, args.store_max_age * HOUR)


def restore_from_file(server: ExtendedServer, store: StoreSettings) -> None:
    """At start: the saved connections into their endpoints, then the file is deleted. A file
    that cannot be read is one warning; the server starts without it (and leaves the file,
    e.g. for a corrected password, until the next stop replaces it)."""
    if not store.path.exists():
        return
    try:
        saved = read_store_file(store.path, store.password)
    except PersistenceError as error:
        logger.warning("%s not restored: %s; starting without it", store.path, error)
        return
    server.load_dtls(saved.aged_until(time.time()), store.max_age)
    with contextlib.suppress(FileNotFoundError):
        store.path.unlink()


def save_to_file(server: ExtendedServer, store: StoreSettings) -> None:
    """At stop: every DTLS endpoint stopped and saved to the file (temporary file, renamed)."""
    connectors = server.save_dtls()
    try:
        data = seal_store(encode_store(connectors), store.password)
        write_store_file(store.path, data)
    except PersistenceError as error:
        logger.warning("DTLS connections not saved: %s", error)
        return
    total = sum(len(connections) for connections in connectors.values())
    logger.warning("%d DTLS connections saved to %s", total, store.path)
