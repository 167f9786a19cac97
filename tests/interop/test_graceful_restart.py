"""Graceful restart with real processes (inventory §6.6): ``extserver --store-file`` saves its DTLS
connections when SIGTERM stops it and restores them at the next start, so that DTLS clients -
our own PSK clients and an ``extclient benchmark`` running across the restart - go on with
their sessions and CIDs without a new handshake. And the console's ``save``/``load`` in one
process."""

from __future__ import annotations

import base64
import os
import re
import select
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import LOOPBACK, die_with_parent, find_tool, free_udp_port
from tests.interop.cluster_helpers import (
    RUN_CLI,
    DtlsClient,
    answers_hello,
    diagnose_counters,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.interop

PASSWORD64 = base64.b64encode(b"graceful secret").decode()
START_TIMEOUT = 15.0
BENCHMARK_SECONDS = 10


class Server:
    """One ``extserver`` (DTLS only, /benchmark and /diagnose) with the store options; can be
    started again with the same command."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        port = free_udp_port(tcp=True, span=2)
        self.dtls = (LOOPBACK, port + 1)
        self.store = tmp_path / "dtls.store"
        self.tmp_path = tmp_path
        exe = find_tool("extserver")
        command = [exe] if exe else [sys.executable, "-c", RUN_CLI]
        if os.environ.get("EXTSERVER_CMD"):
            command = shlex.split(os.environ["EXTSERVER_CMD"])
        self.command = [
            *command, "--no-external", "--no-ipv6", "--dtls-only", "--no-tcp", "--no-plugtest",
            "--benchmark", "--diagnose", "--coap-port", str(port),
            "--store-file", str(self.store), "--store-max-age", "1",
            "--store-password64", PASSWORD64, *extra,
        ]  # fmt: skip
        self.generation = 0
        self.proc: subprocess.Popen | None = None

    def start(self, stdin: int = subprocess.DEVNULL) -> None:
        self.generation += 1
        self.stderr_path = self.tmp_path / f"server-{self.generation}.err"
        self.stdout_path = self.tmp_path / f"server-{self.generation}.out"
        with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
            self.proc = subprocess.Popen(
                self.command, stdin=stdin, stdout=out, stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if answers_hello(self.dtls):
                return
            time.sleep(0.05)
        raise AssertionError(f"extserver did not start\n{self.describe()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def describe(self) -> str:
        assert self.proc is not None
        status = self.proc.poll()
        state = "still running" if status is None else f"exited with {status}"
        return (f"$ {shlex.join(self.command)}\n({state})\n--- stderr ---\n"
                f"{self.stderr()[-3000:]}\n--- stdout ---\n{self.stdout()[-2000:]}")  # fmt: skip

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def server(tmp_path):
    server = Server(tmp_path)
    yield server
    server.stop()


def session_fields(client: DtlsClient, peer: tuple) -> dict[str, str]:
    _, context = client.context(peer)
    return {key: context[key] for key in ("peer", "cipher-suite", "session-id", "read-cid")}


def benchmark(uri: str, out: Path) -> subprocess.Popen:
    """``extclient benchmark`` against *uri* for BENCHMARK_SECONDS, its output in *out*."""
    with out.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "extplugtest.tools.client", "benchmark", uri,
             "--clients", "3", "--duration", str(BENCHMARK_SECONDS), "--interval", "100",
             "--progress-interval", "1"],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip


def test_sigterm_restart_keeps_the_dtls_sessions(server, tmp_path):
    server.start()
    clients = [DtlsClient() for _ in range(3)]
    for client in clients:
        client.handshake(server.dtls)
    before = [session_fields(client, server.dtls) for client in clients]
    load_path = tmp_path / "benchmark.out"
    load = benchmark(f"coaps://{LOOPBACK}:{server.dtls[1]}/benchmark", load_path)
    try:
        started = wait_for(lambda: "Benchmark started." in load_path.read_text(), timeout=20.0)
        assert started, load_path.read_text()
        time.sleep(2)  # some seconds of load before the restart (the benchmark keeps going)

        assert server.terminate() == 0, server.describe()
        assert re.search(r"\b6 DTLS connections saved to ", server.stderr()), server.describe()
        assert stat.S_IMODE(server.store.stat().st_mode) == 0o600
        server.start()
        assert not server.store.exists(), "the store file is deleted once read"
        assert re.search(r"dtls://127\.0\.0\.1:\d+: 6 DTLS connections restored, 0 too old",
                         server.stderr()), server.describe()  # fmt: skip

        # Our clients: the same sessions (identity, suite, session id, CID), no handshake.
        assert [session_fields(client, server.dtls) for client in clients] == before
        load.wait(timeout=BENCHMARK_SECONDS + 60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
    output = load_path.read_text()
    assert load.returncode == 0, output
    # The benchmark's 3 clients connected once each, and their requests went on being
    # answered by the restarted server: it completed without a failure.
    assert re.search(r"^connects\s+: #: 3,", output, re.MULTILINE), output
    assert "3 benchmark clients stopped." in output, output
    # The sessions survived: no stale line (over coaps the stale check waits 120 s, so a
    # lost session would show as failures and new handshakes instead), no failed request,
    # no handshake after the restart.
    assert "stale" not in output, output
    assert not re.search(r"^client-\d+: (Error|failed) after ", output, re.MULTILINE), output
    assert "DTLS handshakes during the run" not in output, output
    counters = diagnose_counters(clients[0], server.dtls)
    assert counters.get("handshakes succeeded") == 0, counters
    assert counters.get("handshakes started") == 0, counters
    # more than our own few requests: the benchmark's after the restart
    assert counters.get("received records", 0) > 20, counters
    for client in clients:
        client.close()


def test_unreadable_store_file_is_one_warning(server):
    server.store.write_bytes(b"\x03\x01\x10" + os.urandom(40))  # not our password's
    server.start()
    lines = [line for line in server.stderr().splitlines() if "not restored" in line]
    assert len(lines) == 1 and "wrong password" in lines[0], server.describe()
    client = DtlsClient()
    client.handshake(server.dtls)  # the server works without it
    assert client.context(server.dtls)[1]["cipher-suite"]
    client.close()


def console_answer(proc: subprocess.Popen, line: str, timeout: float = 10.0) -> list[str]:
    """Send *line* to the console; its echo and the answer lines up to the next echo."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline and len(lines) < 2:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                lines.append(raw.decode())
    return lines


def test_console_save_and_load_in_one_process(tmp_path):
    port = free_udp_port(tcp=True, span=2)
    dtls = (LOOPBACK, port + 1)
    exe = find_tool("extserver")
    command = [exe] if exe else [sys.executable, "-c", RUN_CLI]
    proc = subprocess.Popen(
        [*command, "--no-external", "--no-ipv6", "--dtls-only", "--no-tcp", "--no-plugtest",
         "--diagnose", "--coap-port", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        assert wait_for(lambda: answers_hello(dtls), timeout=START_TIMEOUT)
        client = DtlsClient()
        client.handshake(dtls)
        before = session_fields(client, dtls)
        # the URIs printed at the start come first
        assert wait_for(lambda: select.select([proc.stdout], [], [], 0)[0], timeout=5.0)
        assert proc.stdout is not None
        os.read(proc.stdout.fileno(), 65536)
        assert console_answer(proc, "save secret") == [
            "> save secret", "1 DTLS connections saved in memory"
        ]  # fmt: skip
        assert client.request("mycontext", dtls, timeout=1.0) is None  # nobody answers now
        assert console_answer(proc, "load wrong")[1].startswith("not loaded: wrong password")
        assert console_answer(proc, "load secret") == ["> load secret", "1 DTLS connections loaded"]
        assert session_fields(client, dtls) == before
        assert diagnose_counters(client, dtls).get("handshakes succeeded") == 1  # the first only
        assert console_answer(proc, "help")[1].startswith("unknown command")
        assert console_answer(proc, "exit")[0] == "> exit"
        assert proc.wait(timeout=10) == 0
        client.close()
    finally:
        stop_process(proc)
