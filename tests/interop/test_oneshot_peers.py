"""``extclient get|post|put|fetch|observe`` against three servers: our extserver (plugtest
endpoint), libcoap's ``coap-server-notls`` and a small aiocoap server."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import LOOPBACK, coap_ping, find_tool, free_udp_port

pytestmark = pytest.mark.interop

TEXT_300 = "".join(chr(0x61 + i % 26) for i in range(300))  # lower-case letters
TIME_OF_DAY = re.compile(r"\d{2}:\d{2}:\d{2}")


def extclient(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(*args: str) -> str:
    """stdout of a successful extclient run."""
    result = extclient(*args)
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr == ""
    return result.stdout


def traced(lines: str, direction: str, kind: str) -> list[str]:
    """The -v trace lines of one direction and kind, e.g. ("<==", "req")."""
    return [line for line in lines.splitlines() if f" {direction} {kind} " in line]


def wait_for_ping(
    port: int, process: subprocess.Popen, timeout: float = 10, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if coap_ping(port):
            return
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=5)
    output = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    pytest.fail(
        f"{process.args[0]} did not answer a CoAP ping on port {port}\n{output}", pytrace=False
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# -- our extserver: the plugtest endpoint ----------------------------------------------------


@pytest.fixture(scope="module")
def plugtest(start_extserver) -> str:
    server = start_extserver("--notify-interval", "200ms")
    return f"coap://{LOOPBACK}:{server.plugtest_port}"


def test_extserver_get(plugtest):
    assert ok("get", f"{plugtest}/test").startswith("Type: 0 (CON)\nCode: 1 (GET)\nMID: ")
    assert ok("get", "--non", f"{plugtest}/test").startswith("Type: 1 (NON)\n")


def test_extserver_separate_response(plugtest):
    out = ok("get", "-v", f"{plugtest}/separate")
    assert len(traced(out, "==>", "emp")) == 1  # the empty ACK
    assert len(traced(out, "<==", "emp")) == 1  # our ACK of the CON response
    assert "Code: 1 (GET)" in out


def test_extserver_large_with_blocksize_64(plugtest):
    plain = ok("get", f"{plugtest}/large")
    out = ok("get", "-v", "--blocksize", "64", f"{plugtest}/large")
    requests = traced(out, "<==", "req")
    assert len(requests) == 20 and all('"Block2":"(szx=2/64' in r for r in requests)
    assert '"Block2":"(szx=2/64, m=false, num=19)"' in traced(out, "==>", "res")[-1]
    assert out.endswith(plain)
    assert len(plain.rstrip("\n").encode()) == 1280 - 1  # the text ends with a newline


def test_extserver_large_post_300_bytes(plugtest):
    out = ok("post", "-v", "--blocksize", "64", "--payload", TEXT_300, f"{plugtest}/large-post")
    requests = "\n".join(traced(out, "<==", "req"))
    blocks = re.findall(r'"Block1":"\(szx=2/64, m=(\w+), num=(\d+)\)"', requests)
    assert blocks == [(str(n < 4).lower(), str(n)) for n in range(5)]
    assert len([line for line in traced(out, "==>", "res") if "ACK-2.31" in line]) == 4
    assert out.splitlines()[-1] == TEXT_300.upper()


def test_extserver_observe_two_notifications(plugtest):
    out = ok("observe", "-v", "--count", "2", f"{plugtest}/obs")
    payloads = [line for line in out.splitlines() if TIME_OF_DAY.fullmatch(line)]
    assert len(payloads) == 2
    requests = traced(out, "<==", "req")
    assert '"Observe":0' in requests[0] and '"Observe":1' in requests[-1]  # proactive cancel


def test_extserver_observe_by_duration(plugtest):
    started = time.monotonic()
    out = ok("observe", "--duration", "1", f"{plugtest}/obs")
    assert 1 <= time.monotonic() - started < 10
    assert len(out.splitlines()) >= 3  # every 200 ms a notification


def test_extserver_observe_interrupted_still_cancels(plugtest):
    process = subprocess.Popen(
        [sys.executable, "-m", "extplugtest.tools.client", "observe", "-v", f"{plugtest}/obs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # wait (at most 20 s) until the first notification is printed, then SIGTERM
        deadline = time.monotonic() + 20
        seen = ""
        while time.monotonic() < deadline and not TIME_OF_DAY.fullmatch(seen.strip()):
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            seen = process.stdout.readline()
        process.terminate()
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 130, err
    assert '"Observe":1' in traced(out, "<==", "req")[-1]


def test_extserver_error_response(plugtest):
    result = extclient("get", f"{plugtest}/nothing-here")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "extclient get: error: 4.04 NOT_FOUND\n"


def test_no_server_is_reported_at_once():
    started = time.monotonic()
    result = extclient("get", f"coap://{LOOPBACK}:{free_udp_port()}/x")
    assert result.returncode == 1 and "connection refused" in result.stderr
    assert time.monotonic() - started < 10


# -- libcoap ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def libcoap() -> Iterator[str]:
    exe = find_tool("coap-server-notls")
    if exe is None:
        pytest.skip("coap-server-notls not found")  # the marker below fails instead in CI
    port = free_udp_port()
    # -d 10: up to 10 resources created by PUT
    process = subprocess.Popen(
        [exe, "-A", LOOPBACK, "-p", str(port), "-d", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_ping(port, process)
        yield f"coap://{LOOPBACK}:{port}"
    finally:
        stop(process)


@pytest.mark.requires_bin("coap-server-notls")
def test_libcoap_time(libcoap):
    assert TIME_OF_DAY.search(ok("get", f"{libcoap}/time"))


@pytest.mark.requires_bin("coap-server-notls")
def test_libcoap_put_created_resource_block_wise(libcoap):
    body = (TEXT_300 * 10)[:3000]
    ok("put", "--blocksize", "64", "--payload", body, f"{libcoap}/created")
    assert ok("get", f"{libcoap}/created") == body + "\n"
    assert ok("get", "--blocksize", "16", f"{libcoap}/created") == body + "\n"


@pytest.mark.requires_bin("coap-server-notls")
def test_libcoap_observe_time(libcoap):
    out = ok("observe", "-v", "--count", "2", f"{libcoap}/time")
    assert len([line for line in out.splitlines() if TIME_OF_DAY.search(line)]) >= 2
    assert '"Observe":1' in traced(out, "<==", "req")[-1]


# -- aiocoap ---------------------------------------------------------------------------------

AIOCOAP_SERVER = """
import asyncio, sys
import aiocoap
import aiocoap.resource as resource


class Text(resource.Resource):
    async def render_get(self, request):
        return aiocoap.Message(payload=b"hello aiocoap", content_format=0)

    async def render_fetch(self, request):
        return aiocoap.Message(payload=b"fetched " + request.payload, content_format=0)


class Store(resource.Resource):
    body = b""

    async def render_get(self, request):
        return aiocoap.Message(payload=self.body, content_format=0)

    async def render_put(self, request):
        self.body = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_post(self, request):
        return aiocoap.Message(
            code=aiocoap.CHANGED, payload=request.payload.upper(), content_format=0
        )


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
    site.add_resource(["text"], Text())
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
    script = Path(tmp_path_factory.mktemp("aiocoap")) / "server.py"
    script.write_text(AIOCOAP_SERVER)
    port = free_udp_port()
    log = script.with_suffix(".log")
    with open(log, "wb") as output:
        # UDP only: aiocoap's default TCP/TLS/WebSocket servers would also need free TCP
        # ports, and starting them only slows the start on a busy box.
        process = subprocess.Popen(
            [sys.executable, str(script), str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AIOCOAP_SERVER_TRANSPORT": "udp6"},
        )
    try:
        wait_for_ping(port, process, timeout=30, log=log)
        yield f"coap://{LOOPBACK}:{port}"
    finally:
        stop(process)


def test_aiocoap_get_and_fetch(aiocoap_server):
    assert ok("get", f"{aiocoap_server}/text") == "hello aiocoap\n"
    assert ok("fetch", "--payload", "this", f"{aiocoap_server}/text") == "fetched this\n"


def test_aiocoap_post_block_wise_both_ways(aiocoap_server):
    out = ok("post", "--blocksize", "64", "--payload", TEXT_300, f"{aiocoap_server}/store")
    assert out == TEXT_300.upper() + "\n"


def test_aiocoap_put_and_get_large(aiocoap_server):
    body = (TEXT_300 * 10)[:3000]
    ok("put", "--payload", body, f"{aiocoap_server}/store")  # Block1 above 1024 bytes
    assert ok("get", f"{aiocoap_server}/store") == body + "\n"


def test_aiocoap_observe(aiocoap_server):
    out = ok("observe", "-v", "--count", "3", f"{aiocoap_server}/counter")
    numbers = [int(line) for line in out.splitlines() if line.isdigit()]
    assert len(numbers) == 3 and numbers == sorted(numbers)
    assert '"Observe":1' in traced(out, "<==", "req")[-1]
