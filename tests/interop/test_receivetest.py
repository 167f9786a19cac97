"""``extclient receivetest`` against our ``/requests`` (extended endpoint): the three formats,
the -v listing, and the report of requests the server did not record."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import LOOPBACK, ExtServer, free_udp_port, free_udp_ports

pytestmark = pytest.mark.interop

DATE = r"\d{2}:\d{2}:\d{2} \d{2}\.\d{2}\.\d{4}"  # HH:mm:ss dd.MM.yyyy
HEAD = re.compile(r"Response: (\d+) bytes, Payload: (\d+) bytes\nRTT: \d+ms\n\n")


def receivetest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", "receivetest", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def ok(cwd: Path, *args: str) -> str:
    """stdout after the head lines, which are checked."""
    result = receivetest(cwd, *args)
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    head = HEAD.search(result.stdout)
    assert head, result.stdout
    assert int(head.group(1)) > int(head.group(2)) > 0
    return result.stdout[head.end() :]


def device_id(cwd: Path) -> str:
    return re.search(r"^UUID=(\S+)$", (cwd / "UUID.properties").read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def server(start_extserver) -> str:
    return start_extserver().uri  # the extended endpoint


def test_text_creates_the_device_file(server, tmp_path):
    body = ok(tmp_path, server)
    lines = body.splitlines()
    assert re.fullmatch(r"systemstart:\d+", lines[0])
    assert re.fullmatch(r"RID\d+:\d+", lines[1]) and len(lines) == 2
    first = device_id(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", first)
    assert len(ok(tmp_path, server).splitlines()) == 3  # the same device: one more entry
    ok(tmp_path, server, "--reset-uuid")
    assert device_id(tmp_path) != first


def test_json(server, tmp_path):
    ok(tmp_path, server)
    history = json.loads(ok(tmp_path, server, "--json"))
    assert "systemstart" in history[0]
    assert [set(entry) for entry in history[1:]] == [{"rid", "time", "ep", "port"}] * 2
    assert history[1]["ep"] == LOOPBACK and history[1]["rid"].startswith("RID")


def test_cbor(server, tmp_path):
    body = ok(tmp_path, server, "--cbor")
    assert '"systemstart": ' in body and "\"ep\": h'7f000001'" in body


@pytest.mark.parametrize("kind", ["--json", "--cbor"])
def test_verbose_listing(server, tmp_path, kind):
    ok(tmp_path, server, kind)
    lines = [line for line in ok(tmp_path, server, kind, "-v").splitlines() if " <== " not in line]
    lines = [line for line in lines if " ==> " not in line]  # without the message trace
    assert re.fullmatch(f"Server's system start: {DATE}", lines[0])
    for request, source in zip(lines[1::2], lines[2::2], strict=True):
        assert re.fullmatch(rf"Request: {DATE}, received: -?\d+ ms", request)
        assert re.fullmatch(rf"    \({re.escape(LOOPBACK)}:\d+\)", source)
    assert len(lines) == 5


def test_extra_query_and_errors(server, tmp_path):
    result = receivetest(tmp_path, f"{server}?rlen=60")
    assert result.returncode == 0 and result.stdout.startswith("extra: rlen=60\n")
    assert int(HEAD.search(result.stdout).group(2)) <= 60
    refused = receivetest(tmp_path, f"{server}?rlen=0")
    assert refused.returncode == 1
    assert refused.stderr.startswith("extclient receivetest: error: 4.02 BAD_OPTION: ")
    assert len(refused.stderr.splitlines()) == 1


@pytest.fixture
def restartable(tmp_path) -> Iterator[list[ExtServer]]:
    """Servers started on the same ports one after the other (the test starts them)."""
    servers: list[ExtServer] = []
    yield servers
    for server in servers:
        server.stop()


def start_on(ports: list[int], log_dir: Path, servers: list[ExtServer]) -> ExtServer:
    server = ExtServer((), ports[0], ports[1], log_dir)
    servers.append(server)
    if not server.wait_ready():
        pytest.fail(f"extserver did not start\n{server.describe()}", pytrace=False)
    return server


def test_lost_requests(restartable, tmp_path):
    work = tmp_path / "device"
    work.mkdir()
    ports = free_udp_ports(2)
    first = start_on(ports, tmp_path, restartable)
    ok(work, first.uri)
    # A request that never reaches a server is reported by the next answered one.
    failed = receivetest(work, f"coap://{LOOPBACK}:{free_udp_port()}")
    assert failed.returncode == 1 and "connection refused" in failed.stderr
    lost = re.search(r"^RIDS=RID\d+,(RID\d+)$", (work / "UUID.properties").read_text(), re.M)
    body = ok(work, first.uri)
    assert f"Lost request: {lost.group(1)} (" in body
    assert "Lost" not in ok(work, first.uri)  # reported once
    # After a restart the server knows nothing of the requests before it.
    before = re.search(r"^RIDS=(RID\d+)$", (work / "UUID.properties").read_text(), re.M)
    first.stop()
    second = start_on(ports, tmp_path, restartable)
    body = ok(work, second.uri, "--json")
    line = re.search(rf"^Lost request: {before.group(1)} \({DATE}\), (.*)$", body, re.M)
    assert line and line.group(1) == "the server restarted since"
