"""Shared test helpers.

* ``start_extserver(*args)``: a session fixture (a factory) that runs ``extserver`` as a subprocess
  on free loopback ports, waits until it answers a CoAP ping and kills it when the session ends.
  ``bench_server`` (``--benchmark --no-plugtest``) and ``default_server`` are shared instances.
* ``free_udp_port()``: a UDP port on 127.0.0.1 that is free right now (``tcp=True``: for TCP too).
* ``@pytest.mark.requires_bin("coap-client-notls")``: skip when a third-party binary is missing.
  Under CI (``CI=true``) a missing binary is an error instead: CI installs them, so they must run.
* ``EXTSERVER_CMD``: run this command (shell-split) instead of the installed ``extserver``.
* Hypothesis profiles: ``ci`` (no deadline, used when CI is set) and ``fuzz`` (``make fuzz``),
  selected with ``HYPOTHESIS_PROFILE``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
READY_TIMEOUT = 10.0

INSTALL_HINTS = {
    "coap-client": "Debian package libcoap3-bin (scripts/install-deps.sh)",
    "aiocoap-client": "pip package aiocoap (the 'test' extra: make build)",
}

try:
    from hypothesis import settings
except ImportError:  # the test extra is not installed (e.g. a wheel smoke test)
    pass
else:
    settings.register_profile("ci", deadline=None, print_blob=True)
    settings.register_profile("fuzz", deadline=None, max_examples=50_000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "default"))


def find_tool(name: str) -> str | None:
    """Path of a program: the running venv's bin/ first, then PATH."""
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def openssl_cipher(names: str) -> str:
    """An ``openssl s_client/s_server -cipher`` list that keeps the CCM8 suites everywhere.

    OpenSSL 3.0 (Debian 12) offers the CCM8 suites (8-byte tag) at its default security level;
    newer releases (Debian 13's 3.5) only at level 0 and otherwise fail with "no ciphers
    available". ``@SECLEVEL=0`` means the same to both.
    """
    return f"{names}:@SECLEVEL=0"


def free_udp_ports(count: int) -> list[int]:
    """``count`` distinct UDP ports on 127.0.0.1 that are free right now."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _bindable(port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def free_udp_port(tcp: bool = False, span: int = 1) -> int:
    """A UDP port on 127.0.0.1 that is free right now. With *tcp*, one whose TCP port is free as
    well, and so are the *span* - 1 ports after it (UDP and TCP): for servers that listen on
    both with one number, the secure ones on the next (a free UDP port alone promises nothing
    about the TCP listener)."""
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM)
    for _attempt in range(50):
        port = free_udp_ports(1)[0]
        if not tcp or all(_bindable(port + i, kind) for i in range(span) for kind in kinds):
            return port
    raise RuntimeError(f"no {span} port(s) on {LOOPBACK} free for both UDP and TCP")


def coap_ping(port: int, timeout: float = 0.2, mid: int = 0x1234) -> bool:
    """Send a CoAP ping (empty CON) to 127.0.0.1:port; True if the matching RST comes back."""
    request = bytes((0x40, 0x00, mid >> 8, mid & 0xFF))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((LOOPBACK, port))
        try:
            sock.send(request)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reply = sock.recv(2048)
                if len(reply) >= 4 and reply[0] == 0x70 and reply[2:4] == request[2:4]:
                    return True
        except OSError:  # timeout, or ICMP port unreachable while the server starts
            return False
    return False


def die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no server outlives a killed run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ExtServer:
    """One ``extserver`` process bound to 127.0.0.1:port (extended) and :plugtest_port."""

    def __init__(self, args: tuple[str, ...], port: int, plugtest_port: int, log_dir: Path):
        self.args = args
        self.port = port
        self.plugtest_port = plugtest_port
        self.uri = f"coap://{LOOPBACK}:{port}"
        self.stdout_path = log_dir / f"extserver-{port}.out"
        self.stderr_path = log_dir / f"extserver-{port}.err"
        if os.environ.get("EXTSERVER_CMD"):  # e.g. to run the suite under another server build
            command = shlex.split(os.environ["EXTSERVER_CMD"])
        else:
            exe = find_tool("extserver")
            command = [exe] if exe else [sys.executable, "-c", _RUN_CLI]
        command += ["--no-external", "--no-ipv6", "--coap-port", str(port)]
        command += ["--plugtest-port", str(plugtest_port), *args]
        self.command = command
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Ping until the server answers (True) or exits or the time is up (False)."""
        deadline = time.monotonic() + timeout
        mid = 0x4000
        while time.monotonic() < deadline and self.proc.poll() is None:
            mid += 1
            if coap_ping(self.port, mid=mid):
                return True
            time.sleep(0.05)
        return False

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        status = self.proc.poll()
        state = "still running" if status is None else f"exited with {status}"
        out = self.stdout_path.read_text(errors="replace")[-2000:]
        return (
            f"$ {shlex.join(self.command)}\n({state})\n"
            f"--- stderr ---\n{self.stderr()[-4000:]}\n--- stdout (tail) ---\n{out}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


_RUN_CLI = "import sys; from extplugtest.server.cli import main; sys.exit(main())"


@pytest.fixture(scope="session")
def start_extserver(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ExtServer]]:
    """Factory: ``start_extserver("--benchmark", ...)`` returns a running, answering ExtServer."""
    log_dir = tmp_path_factory.mktemp("extserver")
    servers: list[ExtServer] = []

    def start(*args: str) -> ExtServer:
        for _attempt in range(3):  # a new pair of ports if a port was taken meanwhile
            port, plugtest_port = free_udp_ports(2)
            server = ExtServer(args, port, plugtest_port, log_dir)
            servers.append(server)
            if server.wait_ready():
                return server
            exited = server.proc.poll() is not None
            server.stop()
            if not (exited and "in use" in server.stderr().lower()):
                break
        why = "exited" if exited else f"did not answer a CoAP ping within {READY_TIMEOUT:.0f} s"
        pytest.fail(f"extserver {why}\n{server.describe()}", pytrace=False)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def bench_server(start_extserver: Callable[..., ExtServer]) -> ExtServer:
    """A shared server with ``--benchmark --no-plugtest``."""
    return start_extserver("--benchmark", "--no-plugtest")


@pytest.fixture(scope="session")
def default_server(start_extserver: Callable[..., ExtServer]) -> ExtServer:
    """A shared server with the default options (no /benchmark, plugtest endpoint on)."""
    return start_extserver()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires_bin(name): needs the named program (skipped if missing, except in CI)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_bin"):
        for name in marker.args:
            if find_tool(name):
                continue
            hint = next((h for key, h in INSTALL_HINTS.items() if name.startswith(key)), "")
            reason = f"{name} not found" + (f"; install {hint}" if hint else "")
            if IN_CI:
                pytest.fail(f"{reason} (required in CI)", pytrace=False)
            pytest.skip(reason)


def nat_destination_usages(control: str) -> dict[str, int]:
    """Destination -> number of NAT entries, from a running extnat's ``info`` (control socket)."""
    from extplugtest.tools.nat_console import send_command

    result = {}
    for line in send_command(control, "info"):
        match = re.fullmatch(r"Destination: (\S+), usage: (\d+)", line)
        if match:
            result[match[1]] = int(match[2])
    return result
