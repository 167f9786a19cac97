"""aiocoap's ``aiocoap-client`` over DTLS (its ``tinydtls`` transport: DTLSSocket 0.2.3, PSK only)
against our extserver's coaps port.

DTLSSocket opens AF_INET6 sockets, so the server runs with IPv6 endpoints and the client talks
to ``[::1]``. The credentials file maps the URI to the PSK Client_identity / secretPSK, which
every server knows (the reference servers' built-in store).

Skipped when DTLSSocket is not installed (the ``test`` extra has it; building it needs autoconf,
automake and libtool: scripts/install-deps.sh).

tinydtls cannot read a record that carries several handshake messages: the server sends one
message per record (as Californium does by default, DTLS.USE_MULTI_HANDSHAKE_MESSAGE_RECORDS=
false); these tests found that.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("DTLSSocket.dtls", reason="DTLSSocket (tinydtls) is not installed")

pytestmark = [pytest.mark.interop, pytest.mark.requires_bin("aiocoap-client")]

CLIENT_TIMEOUT = 25.0  # DTLSSocket's connect gives up after about 10 s


@pytest.fixture(scope="module")
def ipv6_server(start_extserver):
    """The default server with IPv6 endpoints too (the fixture adds --no-ipv6 first)."""
    return start_extserver("--ipv6")


def aiocoap_get(tmp_path: Path, port: int, path: str) -> subprocess.CompletedProcess[str]:
    credentials = tmp_path / f"credentials-{port}.json"
    credentials.write_text(json.dumps({
        f"coaps://[::1]:{port}/*": {"dtls": {
            "psk": {"ascii": "secretPSK"}, "client-identity": {"ascii": "Client_identity"},
        }},
    }))  # fmt: skip
    exe = Path(sys.executable).with_name("aiocoap-client")
    command = str(exe) if exe.exists() else shutil.which("aiocoap-client") or "aiocoap-client"
    args = [command, "--credentials", str(credentials), f"coaps://[::1]:{port}/{path}"]
    try:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as expired:
        return subprocess.CompletedProcess(
            args, -1, str(expired.stdout or ""), f"timed out: {expired.stderr or ''}"
        )


def assert_test_resource(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Type: 0 (CON)\nCode: 1 (GET)\nMID: "), result.stdout


def test_aiocoap_tinydtls_psk_get(ipv6_server, tmp_path):
    assert_test_resource(aiocoap_get(tmp_path, ipv6_server.plugtest_port + 1, "test"))


def test_aiocoap_tinydtls_mycontext(ipv6_server, tmp_path):
    """/mycontext on the extended port: the DTLS fields of our side of the session."""
    result = aiocoap_get(tmp_path, ipv6_server.port + 1, "mycontext")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "peer: Client_identity" in lines, result.stdout
    assert "cipher-suite: TLS_PSK_WITH_AES_128_CCM_8" in lines, result.stdout
    assert "ext-master-secret: true" in lines
    assert not any(line.startswith("read-cid:") for line in lines)  # tinydtls: no CID
