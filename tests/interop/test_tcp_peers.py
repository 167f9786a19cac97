"""CoAP over TCP and TLS (RFC 8323) with third-party peers, both directions where the peer has a
server:

* libcoap's ``coap-client-notls`` (``coap+tcp://``) and aiocoap's client against our extserver:
  requests, block-wise both ways (BERT with aiocoap, which announces it in its CSM), observe;
* libcoap's ``coap-client-openssl`` and aiocoap's client over ``coaps+tcp://``, verifying our
  demo server certificate (and, against ``--client-auth NEEDED``, presenting the demo client's);
* our ``extclient`` against libcoap's ``coap-server-notls`` / ``coap-server-openssl`` and an
  aiocoap server over TCP.

Loopback only; every process is stopped, every wait bounded.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import LOOPBACK, coap_ping, find_tool, free_udp_port

from extplugtest.coap.transport_tcp import demo_certs

pytestmark = pytest.mark.interop

TEXT_300 = "".join(chr(0x61 + i % 26) for i in range(300))
TIME_OF_DAY = re.compile(r"\d{2}:\d{2}:\d{2}")
BENCHMARK_40 = "hello benchmark".ljust(40, "*")


@pytest.fixture(scope="module")
def server(start_extserver) -> Any:
    return start_extserver("--benchmark", "--notify-interval", "200ms")


@pytest.fixture(scope="module")
def plugtest(server) -> str:
    return f"coap+tcp://{LOOPBACK}:{server.plugtest_port}"


@pytest.fixture(scope="module")
def extended(server) -> str:
    return f"coap+tcp://{LOOPBACK}:{server.port}"


@pytest.fixture(scope="module")
def secure(server) -> str:
    """The plugtest endpoint over TLS (the DTLS port; --client-auth WANTED by default)."""
    return f"coaps+tcp://{LOOPBACK}:{server.plugtest_port + 1}"


@pytest.fixture(scope="module")
def secure_needed(start_extserver) -> str:
    server = start_extserver("--no-plugtest", "--client-auth", "NEEDED")
    return f"coaps+tcp://{LOOPBACK}:{server.port + 1}"


CERTS = demo_certs()


def _listening(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def start(command: list[str], port: int, tcp_port: int) -> subprocess.Popen:
    """A server process that answers a CoAP ping on *port* and accepts TCP connections on
    *tcp_port* (bounded wait), or a test failure."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        if coap_ping(port) and _listening(tcp_port):
            return process
        time.sleep(0.05)
    stop(process)
    pytest.fail(f"{command[0]} did not serve UDP {port} and TCP {tcp_port}", pytrace=False)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# -- libcoap's client against our server --------------------------------------------------------


def coap_client(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("coap-client-notls") or "coap-client-notls"
    return subprocess.run(
        [exe, "-B", "5", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def payload(*args: str) -> str:
    result = coap_client(*args)
    assert result.returncode == 0 and result.stdout, f"{args}: {result.stderr}"
    return result.stdout.removesuffix("\n")


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_get(plugtest):
    assert payload("-m", "get", f"{plugtest}/test").startswith("Type: 0 (CON)\nCode: 1 (GET)")


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block2_download(plugtest):
    text = payload("-m", "get", f"{plugtest}/large")
    assert len(text.rstrip("\n").encode()) == 1280 - 1 and text.startswith("/-----")


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_block1_upload(plugtest):
    args = ("-b", "64", "-m", "post", "-t", "0", "-e", TEXT_300, f"{plugtest}/large-post")
    assert payload(*args) == TEXT_300.upper()


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_observe(plugtest):
    result = coap_client("-s", "2", "-m", "get", f"{plugtest}/obs", timeout=20)
    assert len(TIME_OF_DAY.findall(result.stdout)) >= 3, result.stdout + result.stderr


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_benchmark(extended):
    assert payload("-m", "post", f"{extended}/benchmark?rlen=40") == BENCHMARK_40


@pytest.mark.requires_bin("coap-client-notls")
def test_libcoap_error_response(plugtest):
    result = coap_client("-m", "get", f"{plugtest}/nothing-here")
    assert "4.04" in result.stderr, result.stderr


@pytest.mark.requires_bin("coap-client-openssl")
def test_libcoap_tls_verifies_the_demo_server(secure):
    exe = shutil.which("coap-client-openssl") or "coap-client-openssl"
    trust = ("-R", str(CERTS / "ca.pem"))
    result = subprocess.run(
        [exe, "-B", "5", *trust, "-m", "get", f"{secure}/test"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.startswith("Type: 0 (CON)"), result.stderr


@pytest.mark.requires_bin("coap-client-openssl")
def test_libcoap_tls_client_auth_needed(secure_needed):
    exe = shutil.which("coap-client-openssl") or "coap-client-openssl"
    base = [exe, "-B", "3", "-R", str(CERTS / "ca.pem"), "-m", "get"]
    own = ["-c", str(CERTS / "client.pem"), "-j", str(CERTS / "client.key")]
    uri = f"{secure_needed}/.well-known/core"
    with_certificate = subprocess.run(
        [*base, *own, uri], capture_output=True, text=True, timeout=30, check=False
    )
    assert "</benchmark>" in with_certificate.stdout, with_certificate.stderr
    without = subprocess.run([*base, uri], capture_output=True, text=True, timeout=30, check=False)
    assert "</benchmark>" not in without.stdout


# -- aiocoap's client against our server ---------------------------------------------------------


def aiocoap_run(work: Any, trust_for: str | None = None) -> Any:
    """Run ``work(context)`` with a fresh aiocoap client context, at most 30 s; with
    *trust_for* ("coaps+tcp://host:port") it trusts the demo CA there."""
    aiocoap = pytest.importorskip("aiocoap")

    async def main() -> Any:
        context = await aiocoap.Context.create_client_context()
        if trust_for is not None:
            from aiocoap.credentials import TLSCert

            context.client_credentials[f"{trust_for}/*"] = TLSCert(str(CERTS / "ca.pem"))
        try:
            return await asyncio.wait_for(work(aiocoap, context), 30)
        finally:
            await context.shutdown()

    return asyncio.run(main())


def test_aiocoap_get_and_block2(plugtest):
    async def work(aiocoap: Any, context: Any) -> tuple[Any, Any]:
        test = context.request(aiocoap.Message(code=aiocoap.GET, uri=f"{plugtest}/test"))
        large = context.request(aiocoap.Message(code=aiocoap.GET, uri=f"{plugtest}/large"))
        return await test.response, await large.response

    test, large = aiocoap_run(work)
    assert test.code.is_successful() and test.payload.startswith(b"Type: 0 (CON)")
    assert len(large.payload) == 1280


def test_aiocoap_bert_both_ways(extended):
    """aiocoap's CSM announces Block-wise-Transfer and 1 MiB: our 7000-byte echo comes back
    in BERT blocks of 4096 bytes (RFC 8323 §6; COAP.TCP_NUMBER_OF_BULK_BLOCKS = 4)."""
    body = bytes(range(256)) * 27 + b"end"

    async def work(aiocoap: Any, context: Any) -> Any:
        request = aiocoap.Message(code=aiocoap.POST, uri=f"{extended}/echo", payload=body)
        request.opt.content_format = 42
        return await context.request(request).response

    response = aiocoap_run(work)
    assert response.code == 68 and response.payload == body  # 2.04
    block2 = response.opt.block2
    assert block2 is not None and block2.size_exponent == 7 and block2.block_number == 4


def test_aiocoap_observe_and_cancel(plugtest):
    async def work(aiocoap: Any, context: Any) -> list[bytes]:
        request = context.request(
            aiocoap.Message(code=aiocoap.GET, uri=f"{plugtest}/obs", observe=0)
        )
        first = await request.response
        notes = [first.payload]
        async for note in request.observation:
            notes.append(note.payload)
            if len(notes) == 3:
                request.observation.cancel()
                break
        return notes

    notes = aiocoap_run(work)
    assert len(notes) == 3 and all(TIME_OF_DAY.fullmatch(n.decode()) for n in notes)


def test_aiocoap_tls(secure):
    async def work(aiocoap: Any, context: Any) -> Any:
        request = aiocoap.Message(code=aiocoap.GET, uri=f"{secure}/large")
        return await context.request(request).response

    response = aiocoap_run(work, trust_for=secure)
    assert response.code.is_successful() and len(response.payload) == 1280


# -- extclient against the peers' servers --------------------------------------------------------


def extclient(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def libcoap_server() -> Iterator[str]:
    exe = find_tool("coap-server-notls")
    if exe is None:
        pytest.skip("coap-server-notls not found")  # the marker fails instead in CI
    port = free_udp_port(tcp=True)
    process = start([exe, "-A", LOOPBACK, "-p", str(port), "-d", "10"], port, port)
    try:
        yield f"coap+tcp://{LOOPBACK}:{port}"
    finally:
        stop(process)


@pytest.mark.requires_bin("coap-server-notls")
def test_extclient_libcoap_get_put_observe(libcoap_server):
    assert TIME_OF_DAY.search(extclient("get", f"{libcoap_server}/time"))
    body = (TEXT_300 * 10)[:3000]
    extclient("put", "--blocksize", "64", "--payload", body, f"{libcoap_server}/created")
    assert extclient("get", f"{libcoap_server}/created") == body + "\n"
    out = extclient("observe", "-v", "--count", "2", f"{libcoap_server}/time")
    assert len(TIME_OF_DAY.findall(out)) >= 2
    assert '"Observe":1' in [line for line in out.splitlines() if "<== req" in line][-1]


@pytest.fixture(scope="module")
def libcoap_tls_server() -> Iterator[str]:
    exe = find_tool("coap-server-openssl")
    if exe is None:
        pytest.skip("coap-server-openssl not found")
    port = free_udp_port(tcp=True, span=2)
    credentials = ["-c", str(CERTS / "server.pem"), "-j", str(CERTS / "server.key")]
    process = start([exe, "-A", LOOPBACK, "-p", str(port), *credentials], port, port + 1)
    try:
        yield f"coaps+tcp://{LOOPBACK}:{port + 1}"  # libcoap's secure port is the next one
    finally:
        stop(process)


@pytest.mark.requires_bin("coap-server-openssl")
def test_extclient_libcoap_tls(libcoap_tls_server):
    """extclient verifies the server against the demo CA (libcoap serves the demo cert)."""
    assert TIME_OF_DAY.search(extclient("get", f"{libcoap_tls_server}/time"))
    out = extclient("observe", "--count", "2", f"{libcoap_tls_server}/time")
    assert len(TIME_OF_DAY.findall(out)) >= 2


AIOCOAP_SERVER = """
import asyncio, sys
import aiocoap
import aiocoap.resource as resource


class Store(resource.Resource):
    body = b"empty"

    async def render_get(self, request):
        return aiocoap.Message(payload=self.body, content_format=0)

    async def render_post(self, request):
        self.body = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload.upper())


class Counter(resource.ObservableResource):
    count = 0

    def tick(self):
        self.count += 1
        self.updated_state()
        asyncio.get_running_loop().call_later(0.2, self.tick)

    async def render_get(self, request):
        return aiocoap.Message(payload=str(self.count).encode(), content_format=0)


async def main(port):
    site = resource.Site()
    site.add_resource(["store"], Store())
    counter = Counter()
    site.add_resource(["counter"], counter)
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    counter.tick()
    await asyncio.get_running_loop().create_future()


asyncio.run(main(int(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def aiocoap_server(tmp_path_factory) -> Iterator[str]:
    pytest.importorskip("aiocoap")
    script = Path(tmp_path_factory.mktemp("aiocoap-tcp")) / "server.py"
    script.write_text(AIOCOAP_SERVER)
    port = free_udp_port(tcp=True)
    process = start([sys.executable, str(script), str(port)], port, port)
    try:
        yield f"coap+tcp://{LOOPBACK}:{port}"
    finally:
        stop(process)


def test_extclient_aiocoap_post_get_observe(aiocoap_server):
    out = extclient("post", "--blocksize", "64", "--payload", TEXT_300, f"{aiocoap_server}/store")
    assert out == TEXT_300.upper() + "\n"
    assert extclient("get", f"{aiocoap_server}/store") == TEXT_300 + "\n"
    out = extclient("observe", "--count", "3", f"{aiocoap_server}/counter")
    numbers = [int(line) for line in out.splitlines() if line.isdigit()]
    assert len(numbers) == 3 and numbers == sorted(numbers)
