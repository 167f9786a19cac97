"""GnuTLS ``gnutls-cli --udp`` (Debian ``gnutls-bin``) against our DTLS server.

gnutls-cli completes the handshake, prints the negotiated suite ("- Description: ...") and then
sends what it reads from stdin as application data and writes what it receives to stdout. So a
CoAP request goes in as raw bytes and the CoAP response comes back as raw bytes after the
"- Simple Client Mode:" line. stdin stays open until the response is there: on EOF gnutls-cli
closes the session, possibly before the answer has arrived.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time

import pytest

from extplugtest.coap._codec import Message, parse
from extplugtest.dtls.pki import demo_ca_path

pytestmark = [pytest.mark.interop, pytest.mark.requires_bin("gnutls-cli")]

PSK_HEX = b"secretPSK".hex()
PRIORITY_PSK = (
    "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-CCM-8:-MAC-ALL:+AEAD"
)
PRIORITY_ECDSA = (
    "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+ECDHE-ECDSA:-CIPHER-ALL:+AES-128-CCM-8"
    ":-MAC-ALL:+AEAD:-GROUP-ALL:+GROUP-SECP256R1"
)
SIMPLE_CLIENT = b"- Simple Client Mode:"
DEADLINE = 20.0


def coap_get(path: str, mid: int) -> bytes:
    """A CON GET without token. No byte may be 0x0a: gnutls-cli reads stdin line by line."""
    request = Message(0, 1, mid)
    for segment in path.split("/"):
        request.add_option(11, segment)
    data = request.to_bytes()
    assert b"\n" not in data
    return data


def gnutls_cli(port: int, host: str, options: list[str], stdin: bytes) -> tuple[int, bytes, str]:
    """Run gnutls-cli, write *stdin*, wait (bounded) until a CoAP ACK for it arrives, then close
    stdin; returns (exit status, stdout bytes, stderr text)."""
    command = [shutil.which("gnutls-cli") or "gnutls-cli", "--udp", "--port", str(port), host,
               *options]  # fmt: skip
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    output = bytearray()
    try:
        if stdin:
            proc.stdin.write(stdin)
            proc.stdin.flush()
            ack = re.compile(b"\\x60." + re.escape(stdin[2:4]), re.DOTALL)  # ACK, same MID
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and proc.poll() is None:
                ready, _, _ = select.select([proc.stdout], [], [], 0.2)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    output += chunk
                start = output.find(SIMPLE_CLIENT)
                if start >= 0 and ack.search(output, start):
                    break
        rest, err = proc.communicate(timeout=DEADLINE)  # closes stdin: gnutls-cli says bye
    except subprocess.TimeoutExpired:
        proc.kill()
        rest, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode, bytes(output) + rest, err.decode(errors="replace")


def response_after_handshake(stdout: bytes, mid: int) -> Message:
    start = stdout.find(SIMPLE_CLIENT)
    assert start >= 0, stdout.decode(errors="replace")
    header = bytes((0x60, 0x45)) + mid.to_bytes(2, "big")  # ACK 2.05 Content, same MID
    at = stdout.find(header, start)
    assert at >= 0, stdout[start:].decode(errors="replace")
    return parse(stdout[at:])


def dtls_port(server, plugtest: bool = True) -> int:
    return (server.plugtest_port if plugtest else server.port) + 1


def test_psk_ccm8_get(default_server):
    mid = 0x1234
    status, stdout, stderr = gnutls_cli(
        dtls_port(default_server), "127.0.0.1",
        ["--pskusername", "Client_identity", "--pskkey", PSK_HEX, "--priority", PRIORITY_PSK],
        coap_get("test", mid),
    )  # fmt: skip
    text = stdout.decode(errors="replace")
    assert "- Description: (DTLS1.2-X.509)-(PSK)-(AES-128-CCM-8)" in text, text + stderr
    assert "- Handshake was completed" in text
    assert "extended master secret" in text
    response = response_after_handshake(stdout, mid)
    assert response.payload.startswith(b"Type: 0 (CON)\nCode: 1 (GET)\nMID: 4660"), response
    assert status == 0, stderr


def test_ecdhe_ecdsa_ccm8_get_verifies_the_demo_ca(default_server):
    """Without a client certificate: the extended endpoints (the plugtest ones need one)."""
    mid = 0x1235
    status, stdout, stderr = gnutls_cli(
        dtls_port(default_server, plugtest=False), "localhost",
        ["--x509cafile", str(demo_ca_path()), "--priority", PRIORITY_ECDSA],
        coap_get("mycontext", mid),
    )  # fmt: skip
    text = stdout.decode(errors="replace")
    assert "- Status: The certificate is trusted." in text, text + stderr
    assert (
        "- Description: (DTLS1.2-X.509)-(ECDHE-SECP256R1)-(ECDSA-SHA256)-(AES-128-CCM-8)" in text
    ), text
    response = response_after_handshake(stdout, mid)
    assert response.payload.startswith(b"ip: 127.0.0.1\n"), response
    assert status == 0, stderr


def test_wrong_psk_gets_decrypt_error(default_server):
    status, stdout, stderr = gnutls_cli(
        dtls_port(default_server), "127.0.0.1",
        ["--pskusername", "Client_identity", "--pskkey", "0102030405",
         "--priority", PRIORITY_PSK],
        b"",
    )  # fmt: skip
    output = stdout.decode(errors="replace") + stderr
    assert status != 0
    assert "Received alert [51]: Decrypt error" in output, output
    assert "Handshake was completed" not in output
