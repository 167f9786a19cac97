"""``extnat`` in front of real CoAP servers: two extservers and libcoap's coap-server-notls.

The NAT runs as a program with ``--control``; libcoap's ``coap-client-notls`` and our own
``extclient benchmark`` are the clients. ``/myip`` of extserver shows the address the server
sees, so the tests can watch the NAT change it (``clear``, ``reassign``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import nat_destination_usages

from extplugtest.tools.nat_console import send_command

pytestmark = [pytest.mark.interop, pytest.mark.requires_bin("coap-client-notls")]

LOOPBACK = "127.0.0.1"
EXTNAT = [sys.executable, "-c", "import sys; from extplugtest.tools.nat import main; "
          "sys.exit(main())"]  # fmt: skip
EXTCLIENT = [sys.executable, "-c", "import sys; from extplugtest.tools.client import main; "
             "sys.exit(main())"]  # fmt: skip


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def coap_client(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("coap-client-notls") or "coap-client-notls"
    return subprocess.run(
        [exe, "-B", "5", *args], capture_output=True, text=True, timeout=30, check=False
    )


def coap_ping(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(b"\x40\x00\x12\x34", (LOOPBACK, port))
            return sock.recv(64)[:4] == b"\x70\x00\x12\x34"
        except OSError:
            return False


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def libcoap_server() -> Iterator[int]:
    """coap-server-notls on a free loopback port."""
    (port,) = free_ports(1)
    exe = shutil.which("coap-server-notls") or "coap-server-notls"
    process = subprocess.Popen(
        [exe, "-A", LOOPBACK, "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: coap_ping(port)), "coap-server-notls did not start"
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


class NatProcess:
    def __init__(self, process: subprocess.Popen[str], port: int, control: str) -> None:
        self.process = process
        self.port = port
        self.control = control
        self.uri = f"coap://{LOOPBACK}:{port}"

    def command(self, line: str) -> list[str]:
        return send_command(self.control, line)

    def usages(self) -> dict[str, int]:
        return nat_destination_usages(self.control)


@pytest.fixture
def start_nat(tmp_path: Path) -> Iterator[Callable[..., NatProcess]]:
    started: list[subprocess.Popen[str]] = []

    def start(*destinations: str) -> NatProcess:
        (port,) = free_ports(1)
        control = str(tmp_path / f"nat-{port}.sock")
        process = subprocess.Popen(
            [*EXTNAT, f"{LOOPBACK}:{port}", *destinations, "--control", control],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        started.append(process)
        # The control socket opens after the listen sockets (a ping would make an entry).
        assert wait_for(lambda: os.path.exists(control)), "extnat did not start"
        return NatProcess(process, port, control)

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_clients_spread_over_our_servers_and_libcoap(start_extserver, libcoap_server, start_nat):
    ours = [start_extserver("--no-plugtest"), start_extserver("--no-plugtest")]
    names = [f"{LOOPBACK}:{server.port}" for server in ours] + [f"{LOOPBACK}:{libcoap_server}"]
    nat = start_nat(*names)
    banners = set()
    used: set[int] = set()
    for _ in range(30):  # 30 client addresses: 30 NAT entries
        # A port picked just before its use, and again if the NAT's own sockets took it
        # meanwhile (bounded); never one used before, which would be an old entry.
        for _attempt in range(5):
            (port,) = free_ports(1)
            if port in used:
                continue
            result = coap_client("-p", str(port), "-m", "get", f"{nat.uri}/")
            if "Address already in use" not in result.stdout + result.stderr:
                break
        used.add(port)
        assert result.returncode == 0 and result.stdout, result.stderr + result.stdout
        banners.add("libcoap" if "libcoap" in result.stdout else "ours")
    assert banners == {"libcoap", "ours"}
    usages = nat.usages()
    assert sum(usages.values()) == 30
    assert all(usages[name] > 0 for name in names), usages  # each unused with p = (2/3)**30


def test_address_change_after_clear_and_reassign(start_extserver, start_nat):
    server = start_extserver("--no-plugtest")
    nat = start_nat(f"{LOOPBACK}:{server.port}")
    (client_port,) = free_ports(1)

    def my_ip() -> str:
        result = coap_client("-p", str(client_port), "-m", "get", f"{nat.uri}/myip")
        assert result.returncode == 0 and result.stdout, result.stderr
        return result.stdout.strip()

    first = my_ip()
    assert re.fullmatch(r"127\.0\.0\.1:\d+", first)
    assert my_ip() == first  # the same client address keeps its NAT entry
    assert nat.command("clear") == ["1 - NAT entries dropped."]
    second = my_ip()
    assert second != first  # same server, new port
    assert nat.command("reassign") == ["reassigned 1 NAT entries to new local addresses."]
    third = my_ip()
    assert third not in (first, second)
    assert nat.usages() == {f"{LOOPBACK}:{server.port}": 1}


def test_add_and_remove_a_real_backend(start_extserver, libcoap_server, start_nat):
    server = start_extserver("--no-plugtest")
    ours, theirs = f"{LOOPBACK}:{server.port}", f"{LOOPBACK}:{libcoap_server}"
    nat = start_nat(ours)
    (client_port,) = free_ports(1)

    def banner() -> str:
        result = coap_client("-p", str(client_port), "-m", "get", f"{nat.uri}/")
        assert result.returncode == 0 and result.stdout, result.stderr
        return "libcoap" if "libcoap" in result.stdout else "ours"

    assert banner() == "ours"
    assert nat.command(f"add {theirs}") == [f"/{theirs} added"]
    assert nat.command(f"remove {ours}") == [f"/{ours} removed"]
    assert banner() == "libcoap"  # the entry fails over to the remaining destination
    assert nat.usages() == {theirs: 1}


def test_benchmark_through_the_nat(start_extserver, start_nat, tmp_path: Path):
    servers = [start_extserver("--benchmark", "--no-plugtest") for _ in range(2)]
    nat = start_nat(*(f"{LOOPBACK}:{server.port}" for server in servers))
    result_file = tmp_path / "result.json"
    run = subprocess.run(
        [*EXTCLIENT, "benchmark", f"{nat.uri}/benchmark?rlen=40", "--clients", "200",
         "--requests", "20", "-m", "GET", "--json", str(result_file)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(result_file.read_text())
    assert result["transmission_errors"] == 0
    assert result["success"] == result["requests"] == 4000
    usages = nat.usages()
    assert sum(usages.values()) == 200  # one entry per benchmark client
    assert all(usages.values()), usages
    stats = dict(line.split(": ") for line in nat.command("stats"))
    assert int(stats["forward-send-errors"]) == int(stats["backward-send-errors"]) == 0
