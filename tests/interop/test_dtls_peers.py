"""DTLS 1.2 (PSK) against real peers: OpenSSL s_client, libcoap over OpenSSL and GnuTLS."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from extplugtest.dtls.pki import demo_ca_path

pytestmark = pytest.mark.interop


def run(command: list[str], stdin: str = "", timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)


def coaps_uri(server, path: str, plugtest: bool = True) -> str:
    port = (server.plugtest_port if plugtest else server.port) + 1
    return f"coaps://127.0.0.1:{port}/{path}"


@pytest.mark.requires_bin("coap-client-openssl")
@pytest.mark.parametrize(
    ("identity", "secret"), [("Client_identity", "secretPSK"), ("password", "sesame"),
                             ("cali.0123456789ABCDEF", ".fornium")],
)  # fmt: skip
def test_libcoap_openssl_get(default_server, identity, secret):
    result = run([shutil.which("coap-client-openssl") or "coap-client-openssl", "-B", "5",
                  "-u", identity, "-k", secret, coaps_uri(default_server, "test")])  # fmt: skip
    assert result.stdout.startswith("Type: 0 (CON)\nCode: 1 (GET)\nMID: "), result.stderr


@pytest.mark.requires_bin("coap-client-gnutls")
def test_libcoap_gnutls_block_wise(default_server):
    client = shutil.which("coap-client-gnutls") or "coap-client-gnutls"
    result = run([client, "-B", "5", "-u", "password", "-k", "sesame",
                  coaps_uri(default_server, "large")])  # fmt: skip
    assert result.stdout.startswith("/---") and len(result.stdout.strip()) > 1200, result.stderr


@pytest.mark.requires_bin("coap-client-openssl")
def test_mycontext_over_dtls(default_server):
    result = run([shutil.which("coap-client-openssl") or "coap-client-openssl", "-B", "5",
                  "-u", "Client_identity", "-k", "secretPSK",
                  coaps_uri(default_server, "mycontext", plugtest=False)])  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[:1] == ["ip: 127.0.0.1"], result.stderr
    assert "peer: Client_identity" in lines
    assert any(line.startswith("cipher-suite: TLS_PSK_WITH_AES_128_") for line in lines)
    assert "ext-master-secret: true" in lines and lines[-1].startswith("server: ")


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize("cipher", ["PSK-AES128-CCM8", "PSK-AES128-CCM", "PSK-AES128-GCM-SHA256"])
def test_openssl_s_client_psk(default_server, cipher):
    port = default_server.plugtest_port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-psk", "73656372657450534b", "-psk_identity", "Client_identity",
                  "-cipher", cipher])  # fmt: skip
    assert f"Cipher is {cipher}" in result.stdout, result.stdout + result.stderr


@pytest.mark.requires_bin("openssl")
def test_wrong_psk_fails_with_decrypt_error(default_server):
    port = default_server.plugtest_port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-psk", "0102030405", "-psk_identity", "Client_identity",
                  "-cipher", "PSK-AES128-CCM8"])  # fmt: skip
    output = result.stdout + result.stderr
    assert "alert decrypt error" in output, output  # fatal alert 51 from the server


@pytest.mark.requires_bin("openssl")
@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-CCM8", "ECDHE-ECDSA-AES128-GCM-SHA256"])
@pytest.mark.parametrize("curve", ["X25519:prime256v1", "prime256v1"])
def test_openssl_s_client_ecdsa_verifies_the_demo_ca(default_server, cipher, curve):
    port = default_server.plugtest_port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-CAfile", str(demo_ca_path()), "-cipher", cipher, "-curves", curve])  # fmt: skip
    assert f"Cipher is {cipher}" in result.stdout, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout


@pytest.mark.parametrize("client", ["coap-client-openssl", "coap-client-gnutls"])
def test_libcoap_certificate_get(default_server, client):
    if shutil.which(client) is None:
        pytest.skip(f"{client} is not installed")
    result = run([client, "-B", "5", "-C", str(demo_ca_path()),
                  coaps_uri(default_server, "test")])  # fmt: skip
    assert result.stdout.startswith("Type: 0 (CON)\nCode: 1 (GET)\nMID: "), result.stderr


@pytest.mark.requires_bin("openssl")
def test_client_without_p256_gets_handshake_failure(default_server):
    """Our certificate key is P-256: a client that allows only X25519 cannot verify it."""
    port = default_server.plugtest_port + 1
    result = run(["openssl", "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                  "-CAfile", str(demo_ca_path()), "-cipher", "ECDHE-ECDSA-AES128-CCM8",
                  "-curves", "X25519"])  # fmt: skip
    assert "alert handshake failure" in result.stdout + result.stderr
