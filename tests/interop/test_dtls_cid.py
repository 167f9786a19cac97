"""DTLS 1.2 Connection ID (RFC 9146) against real third-party CID implementations.

The peers are built by ``scripts/build-cid-peers.sh`` into ``$PEERS_DIR`` (default ``.peers/``;
``make test`` runs it first): Mbed TLS 3.6 ``ssl_client2``/``ssl_server2`` and Bouncy Castle
1.80 with our ``tests/interop/java/BcCidClient.java``. Without them the tests are skipped, except
under CI, where the build step runs, so a missing peer is a failure.

* Mbed TLS ``ssl_client2 cid=1`` against our coaps port: the CID is negotiated both ways (ours
  is 6 bytes), the client's CID records reach the CoAP layer (its request is HTTP, not CoAP, so
  our server answers it with a CoAP reset, sealed for the client's CID) and nothing is alerted.
* ``BcCidClient``: a CoAP GET over a CID session, then a second GET from a NEW local port over
  the same session (a NAT rebinding): the RFC 9146 §6 address update, seen in ``/mycontext``.
* ``BcCidClient`` against ``ssl_server2 cid=1``: a check of our Java client itself.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import IN_CI, LOOPBACK, free_udp_port

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = Path(os.environ.get("PEERS_DIR") or ROOT / ".peers").resolve()
SSL_CLIENT2 = PEERS_DIR / "bin" / "ssl_client2"
SSL_SERVER2 = PEERS_DIR / "bin" / "ssl_server2"
JARS = [PEERS_DIR / "java" / f"{name}.jar" for name in ("bctls", "bcprov", "bcutil")]
CLASSES = PEERS_DIR / "java" / "classes"

IDENTITY = "Client_identity"
PSK_HEX = "73656372657450534b"  # secretPSK
OUR_CID_LENGTH = 6  # DtlsConfig.cid_length


def _require(*paths: Path, tool: str = "") -> None:
    missing = [str(path) for path in paths if not path.exists()]
    if tool and not shutil.which(tool):
        missing.append(tool)
    if not missing:
        return
    reason = (
        f"DTLS CID peers not built ({', '.join(missing)} missing): run scripts/build-cid-peers.sh"
    )
    log = PEERS_DIR / "build.log"
    if log.exists():
        failed = [line for line in log.read_text(errors="replace").splitlines() if "FAILED" in line]
        if failed:
            reason += f"; {log}: {failed[-1]}"
    if IN_CI:  # `make test` builds them first, so they must be there
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def mbedtls() -> None:
    _require(SSL_CLIENT2, SSL_SERVER2)


@pytest.fixture
def bc_client() -> None:
    _require(*JARS, CLASSES / "BcCidClient.class", tool="java")


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a peer to its end, bounded; its stdout and stderr merged."""
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as expired:  # run() has killed it
        output = expired.output or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        pytest.fail(f"$ {' '.join(command)}\ntimed out after {timeout} s\n{output}", pytrace=False)


def ssl_client2(port: int, cid_val: str) -> subprocess.CompletedProcess[str]:
    # hs_timeout bounds the handshake (1 + 2 + 4 s of retransmissions), read_timeout the wait
    # for the answer to the request.
    return run([str(SSL_CLIENT2), "dtls=1", f"server_addr={LOOPBACK}", f"server_port={port}",
                f"psk={PSK_HEX}", f"psk_identity={IDENTITY}",
                "force_ciphersuite=TLS-PSK-WITH-AES-128-CCM-8", "auth_mode=none",
                "cid=1", f"cid_val={cid_val}", "exchanges=1", "request_page=/test",
                "hs_timeout=1000-4000", "read_timeout=3000", "debug_level=0"],
               timeout=30)  # fmt: skip


def bc_cid_client(port: int, cid: str, *args: str) -> subprocess.CompletedProcess[str]:
    classpath = ":".join(str(path) for path in [*JARS, CLASSES])
    command = ["java", "-cp", classpath, "BcCidClient", LOOPBACK, str(port), IDENTITY, PSK_HEX,
               cid, *args]  # fmt: skip
    return run(command, timeout=60)


def field(output: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}: ?(.*)$", output, re.MULTILINE)
    assert match, f"no '{name}:' line in\n{output}"
    return match.group(1).strip()


def payload(output: str, n: int) -> str:
    match = re.search(rf"^--- payload {n} ---\n(.*?)\n--- end {n} ---$", output, re.S | re.M)
    assert match, f"no payload {n} in\n{output}"
    return match.group(1)


def coaps_port(server, plugtest: bool = True) -> int:
    return (server.plugtest_port if plugtest else server.port) + 1


# -- Mbed TLS ssl_client2 -> our server ----------------------------------------------------------
@pytest.mark.parametrize("cid_val", ["c1c1", ""], ids=["cid-c1c1", "cid-empty"])
def test_mbedtls_client_negotiates_cid(default_server, mbedtls, cid_val):
    result = ssl_client2(coaps_port(default_server), cid_val)
    out = result.stdout
    context = f"$ {' '.join(result.args)}\n{out}"
    assert "Performing the SSL/TLS handshake... ok" in out, context
    assert "[ Ciphersuite is TLS-PSK-WITH-AES-128-CCM-8 ]" in out, context
    assert "(initial handshake) Use of Connection ID has been negotiated." in out, context
    # The peer CID is ours: what ssl_client2 puts on the records it sends us.
    peer_cid = re.search(
        r"\(initial handshake\) Peer CID \(length (\d+) Bytes\): ([0-9a-f ]*)", out
    )
    assert peer_cid, context
    assert int(peer_cid.group(1)) == OUR_CID_LENGTH, context
    assert len(bytes.fromhex(peer_cid.group(2))) == OUR_CID_LENGTH, context
    # Its request went out in a CID record; our server opened it, and the CoAP layer answered
    # the HTTP text ('G' = CON, 'E' = 2.05: a response nobody asked for) with a 4-byte reset,
    # which Mbed TLS accepted from a record carrying its own CID (c1c1, or none when empty).
    assert re.search(r"> Write to server:\s+\d+ bytes written", out), context
    read = re.search(r"< Read from server: (\d+) bytes read", out)
    assert read, context
    assert int(read.group(1)) == 4, context
    assert "alert" not in out.lower(), context
    assert "Last error was" not in out, context


# -- BcCidClient -> our server -------------------------------------------------------------------
def test_bc_client_get_and_rebind(default_server, bc_client):
    result = bc_cid_client(coaps_port(default_server), "c0ffee", "rebind", "test")
    out = result.stdout
    assert result.returncode == 0, out
    assert field(out, "handshake").startswith("ok"), out
    assert "suite=0xc0a8" in field(out, "handshake"), out
    assert field(out, "cid-receive") == "c0ffee", out  # what it asked for: on our records
    assert len(bytes.fromhex(field(out, "cid-send"))) == OUR_CID_LENGTH, out  # ours
    assert field(out, "response 1").startswith("2.05"), out
    assert payload(out, 1).startswith("Type: 0 (CON)"), out
    # the second GET comes from a new port, over the same session: RFC 9146 §6
    before, after = re.fullmatch(r"local port (\d+) -> (\d+)", field(out, "rebind")).groups()
    assert before != after, out
    assert field(out, "response 2").startswith("2.05"), out
    assert payload(out, 2).startswith("Type: 0 (CON)"), out


def test_bc_client_rebind_moves_the_connection(default_server, bc_client):
    """/mycontext after the rebinding: the server answers the new port and names the old one."""
    result = bc_cid_client(coaps_port(default_server, plugtest=False), "c0ffee", "rebind",
                           "mycontext")  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out
    first_port = field(out, "local-port")
    before, after = re.fullmatch(r"local port (\d+) -> (\d+)", field(out, "rebind")).groups()
    assert before == first_port, out
    context1 = payload(out, 1)
    assert f"port: {first_port}\n" in context1, out
    assert "read-cid: " + field(out, "cid-send").upper() in context1, out
    assert "write-cid: C0FFEE" in context1, out
    context2 = payload(out, 2)
    assert f"port: {after}\n" in context2, out
    assert f"prev-port: {before}" in context2, out
    # the same DTLS session, not a new handshake
    session = re.search(r"^session-id: (\w+)$", context1, re.M)
    assert session, out
    assert f"session-id: {session.group(1)}\n" in context2, out
    assert "read-cid: " + field(out, "cid-send").upper() in context2, out


def test_bc_client_empty_cid(default_server, bc_client):
    """An empty CID: the client supports CID (we get no CID on our records), we still use ours."""
    result = bc_cid_client(coaps_port(default_server), "", "test")
    out = result.stdout
    assert result.returncode == 0, out
    assert field(out, "handshake").startswith("ok"), out
    assert field(out, "cid-receive") == "", out
    assert len(bytes.fromhex(field(out, "cid-send"))) == OUR_CID_LENGTH, out
    assert field(out, "response 1").startswith("2.05"), out
    assert payload(out, 1).startswith("Type: 0 (CON)"), out


# -- BcCidClient -> Mbed TLS ssl_server2 (a check of the client itself) ---------------------------
def udp_port_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


@pytest.fixture
def mbedtls_server(mbedtls, tmp_path) -> Iterator[int]:
    port = free_udp_port()
    command = [str(SSL_SERVER2), "dtls=1", f"server_addr={LOOPBACK}", f"server_port={port}",
               f"psk={PSK_HEX}", "force_ciphersuite=TLS-PSK-WITH-AES-128-CCM-8",
               "cid=1", "cid_val=beef0102", "read_timeout=10000"]  # fmt: skip
    log = tmp_path / "ssl_server2.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not udp_port_bound(port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert udp_port_bound(port), f"ssl_server2 did not bind {port}\n{log.read_text()}"
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_bc_client_against_mbedtls_server(mbedtls_server, bc_client):
    result = bc_cid_client(mbedtls_server, "c0ffee", "hello")
    out = result.stdout
    assert result.returncode == 0, out
    assert field(out, "handshake").startswith("ok"), out
    assert field(out, "cid-receive") == "c0ffee", out
    assert field(out, "cid-send") == "beef0102", out  # ssl_server2's cid_val
    # ssl_server2 answers any request with its HTTP page
    assert field(out, "response 1").startswith("not CoAP"), out
    assert "Mbed TLS Test Server" in payload(out, 1), out


# -- our client -> Mbed TLS ssl_server2 cid=1 -----------------------------------------------------
@pytest.mark.parametrize("own_cid", [b"\xc0\xff\xee", b""], ids=["cid", "empty-cid"])
def test_our_client_against_mbedtls_server(mbedtls_server, own_cid):
    """Our DTLS client negotiates RFC 9146 CIDs with Mbed TLS both ways and exchanges
    application data in tls12_cid records."""
    from extplugtest.dtls._record import APPLICATION_DATA, TLS12_CID, parse_datagram
    from extplugtest.dtls.handshake_client import ClientHandshake

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    server = (LOOPBACK, mbedtls_server)
    try:
        handshake = ClientHandshake(IDENTITY.encode(), bytes.fromhex(PSK_HEX), cid=own_cid)
        sock.sendto(handshake.start(), server)
        sock.settimeout(1)
        for _ in range(20):  # bounded: three round trips, and a resent flight now and then
            try:
                received = sock.recv(4096)
            except TimeoutError:  # RFC 6347 §4.2.4: resend the last flight
                for datagram in handshake.retransmit():
                    sock.sendto(datagram, server)
                continue
            for datagram in handshake.on_datagram(received):
                sock.sendto(datagram, server)
            if handshake.done:
                break
        sock.settimeout(5)
        session = handshake.session
        assert session is not None
        assert session.write_cid == bytes.fromhex("beef0102")  # ssl_server2's cid_val
        assert session.read_cid == own_cid
        request = b"GET / HTTP/1.0\r\n\r\n"
        sock.sendto(session.cipher.seal(1, session.next_write_seq, APPLICATION_DATA, request),
                    server)  # fmt: skip
        answer = b""
        for _ in range(20):  # the page may come in several records
            datagram = sock.recv(16384)
            for record in parse_datagram(datagram, cid_length=len(own_cid)):
                assert (record.content_type == TLS12_CID) == bool(own_cid)
                content_type, plaintext = session.cipher.open(record.raw)
                if content_type == APPLICATION_DATA:
                    answer += plaintext
            if b"Mbed TLS Test Server" in answer:
                break
        assert b"Mbed TLS Test Server" in answer
    finally:
        sock.close()
