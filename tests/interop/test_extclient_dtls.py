"""extclient one-shot requests over coaps (our DTLS client) against extserver."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.conftest import free_udp_port

pytestmark = pytest.mark.interop


def extclient(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_get_with_default_cali_identity(default_server):
    result = extclient("get", f"coaps://127.0.0.1:{default_server.plugtest_port + 1}/test")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Type: 0 (CON)\nCode: 1 (GET)\nMID: ")


def test_block_wise_over_dtls(default_server):
    uri = f"coaps://127.0.0.1:{default_server.plugtest_port + 1}/large"
    result = extclient("get", uri, "--blocksize", "64")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("/---") and result.stdout.rstrip().endswith("/")


def test_context_shows_the_identity(default_server):
    uri = f"coaps://127.0.0.1:{default_server.port + 1}/mycontext"
    result = extclient("get", uri, "-i", "Client_identity", "-s", "secretPSK")
    assert result.returncode == 0, result.stderr
    assert "peer: Client_identity" in result.stdout.splitlines()


def test_wrong_secret_is_one_line_and_exit_1(default_server):
    uri = f"coaps://127.0.0.1:{default_server.port + 1}/mycontext"
    result = extclient("get", uri, "-i", "Client_identity", "-s", "wrong")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "decrypt_error" in lines[0]


def test_verbose_shows_the_dtls_session(default_server):
    """cf-client's -v: the cipher suite, our identity and both connection ids."""
    uri = f"coaps://127.0.0.1:{default_server.port + 1}/mycontext"
    result = extclient("get", "-v", uri, "-i", "Client_identity", "-s", "secretPSK")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if " DTLS " in line)
    assert "TLS_PSK_WITH_AES_128_CCM_8, identity Client_identity" in line
    assert "read-cid -" in line  # our client asks for no CID on the records it receives
    server_cid = next(v for k, _, v in (x.partition(": ") for x in result.stdout.splitlines())
                      if k == "read-cid")  # fmt: skip
    assert f"write-cid {server_cid}" in line  # the server's CID, as /mycontext names it


@pytest.mark.parametrize(
    "secret",
    [("-s", "secretPSK"), ("--secrethex", b"secretPSK".hex()), ("--secret64", "c2VjcmV0UFNL")],
)
def test_secret_as_text_hex_or_base64(default_server, secret):
    uri = f"coaps://127.0.0.1:{default_server.port + 1}/mycontext"
    result = extclient("get", uri, "-i", "Client_identity", *secret)
    assert result.returncode == 0, result.stderr
    assert "peer: Client_identity" in result.stdout.splitlines()


def test_psk_store_cid_length_and_local_port(default_server, tmp_path):
    """The benchmark's credential options in the one-shot requests: --psk-store with
    --psk-index, --cid-length (the server's records then carry our CID) and --local-port."""
    local_port = free_udp_port()
    store = tmp_path / "psk.txt"
    store.write_text("# comment\ncali.other=LmZvcm5pdW0=\nClient_identity=c2VjcmV0UFNL\n")
    uri = f"coaps://127.0.0.1:{default_server.port + 1}/mycontext"
    result = extclient(
        "get", uri, "--psk-store", str(store), "--psk-index", "1", "--cid-length", "4",
        "--local-port", str(local_port),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fields = dict(line.partition(": ")[::2] for line in result.stdout.splitlines())
    assert fields["peer"] == "Client_identity"
    assert len(bytes.fromhex(fields["write-cid"])) == 4  # ours, on the server's records
    assert fields["port"] == str(local_port)


def test_bad_credential_options_are_one_line_and_exit_2(default_server, tmp_path):
    uri = f"coaps://127.0.0.1:{default_server.port + 1}/mycontext"
    for args in (("--cid-length", "17"), ("--secrethex", "xyz"), ("--psk-store", "/nonexistent")):
        result = extclient("get", uri, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
