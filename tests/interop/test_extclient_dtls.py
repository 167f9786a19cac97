"""extclient one-shot requests over coaps (our DTLS client) against extserver."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
