"""coaps credentials of ``extclient benchmark`` (Californium's BenchmarkClient rules)."""

from __future__ import annotations

import argparse

import pytest

from extplugtest.tools.benchmark_dtls import HandshakeError, psk_credentials, read_psk_store


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
