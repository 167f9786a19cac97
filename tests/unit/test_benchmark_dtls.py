"""coaps credentials of ``extclient benchmark`` (Californium's BenchmarkClient rules)."""

from __future__ import annotations

import argparse
import socket
import time

import pytest

from extplugtest.tools.benchmark_dtls import (
    RETRY_DELAY,
    RETRY_JITTER,
    HandshakeError,
    HandshakeService,
    handshake_factory,
    psk_credentials,
    read_psk_store,
    run_handshakes,
)


def options(**given: object) -> argparse.Namespace:
    defaults = {"psk_store": None, "psk_index": 0, "identity": None, "secret": None}
    return argparse.Namespace(**(defaults | given))


def test_default_identities_are_californiums():
    credentials = psk_credentials(options(), 3)
    assert len({identity for identity, _ in credentials}) == 3
    for identity, secret in credentials:
        assert identity.startswith(b"cali.") and len(identity) == 5 + 16
        assert identity[5:].decode() == identity[5:].decode().upper()
        assert secret == b".fornium"


def test_given_identity_and_secret_for_all():
    assert psk_credentials(options(identity="me", secret="pw"), 2) == [(b"me", b"pw")] * 2


def test_psk_store_round_robin_from_the_index(tmp_path):
    store = tmp_path / "cali.psk"
    store.write_text("a=YQ==\n\n# comment\nb=Yg==\nc=Yw==\n")
    credentials = psk_credentials(options(psk_store=str(store), psk_index=2), 4)
    assert credentials == [(b"c", b"c"), (b"a", b"a"), (b"b", b"b"), (b"c", b"c")]


@pytest.mark.parametrize("text", ["no-equals\n", "=YQ==\n", "a=not base64!\n", "\n# only\n"])
def test_bad_psk_store_is_one_clear_error(tmp_path, text):
    store = tmp_path / "bad.psk"
    store.write_text(text)
    with pytest.raises(HandshakeError, match=str(store)):
        read_psk_store(str(store))


def test_missing_psk_store(tmp_path):
    with pytest.raises(HandshakeError, match="cannot read"):
        read_psk_store(str(tmp_path / "missing.psk"))


def benchmark_args(*argv: str) -> argparse.Namespace:
    from extplugtest.tools import client

    return client.build_parser().parse_args(["benchmark", "coaps://127.0.0.1/x", *argv])


def test_rpk_gives_every_client_a_key_pair_of_its_own():
    """Californium: a fresh secp256r1 key pair per client with RPK, so that every client is a
    principal of its own (the server tells them apart by it); kept for its next handshakes."""
    make = handshake_factory(benchmark_args("-a", "RPK"), 3)
    keys = [make(index).certificate.public_key_info for index in range(3)]
    assert len(set(keys)) == 3
    assert make(1).certificate.public_key_info == keys[1]
    assert make(0).certificate.chain == ()
    # X.509: the one certificate (and its key) for all
    make = handshake_factory(benchmark_args("-a", "X509"), 2)
    assert make(0).certificate.public_key_info == make(1).certificate.public_key_info


def refused_socket() -> socket.socket:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    return sock


def test_failed_handshakes_are_noted_or_raised():
    sockets = [refused_socket() for _ in range(2)]
    try:
        make = handshake_factory(benchmark_args(), 2)
        result = run_handshakes(sockets, make, stop_at_failure=False)
        assert result.sessions == [None, None]
        assert all(error and "refused" in error.lower() for error in result.errors)
        with pytest.raises(HandshakeError, match=r"^client 0: .*refused"):
            run_handshakes(sockets, make)
    finally:
        for sock in sockets:
            sock.close()


class ParkingGenerator:
    """Parks client 0 once (after a failure or not); nobody resumes it here."""

    def __init__(self, after_failure: bool) -> None:
        self.parked = [(0, after_failure)]
        self.resumed: list[int] = []

    def take_handshake_requests(self) -> list[tuple[int, bool]]:
        parked, self.parked = self.parked, []
        return parked

    def resume(self, index: int, session: object, handshake_s: float = 0.0) -> None:
        self.resumed.append(index)


@pytest.mark.parametrize("after_failure", [True, False])
def test_recovery_handshakes_are_tried_again(after_failure):
    """A client parked after a failed request gets its handshake tried again after a second
    while it fails (Californium's retry with a forced handshake); without retry it stays."""
    sock = refused_socket()
    service = HandshakeService(
        ParkingGenerator(after_failure), lambda index: sock,
        handshake_factory(benchmark_args(), 1), close=False, burst=1, retry=after_failure,
    )  # fmt: skip
    service.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and service.failures < (2 if after_failure else 1):
            time.sleep(0.05)  # bounded
        if not after_failure:  # a retry would have come by now
            time.sleep(RETRY_DELAY + RETRY_JITTER + 0.3)
    finally:
        service.stop()
        sock.close()
    if after_failure:
        assert service.failures >= 2
    else:
        assert service.failures == 1
    assert service.handshakes == 0
