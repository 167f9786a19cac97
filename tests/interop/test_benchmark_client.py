"""``extclient benchmark`` against our server and against libcoap's ``coap-server-notls``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from tests.conftest import coap_ping, free_udp_port

pytestmark = pytest.mark.interop


def run_benchmark(uri: str, *args: str, tmp_path) -> dict:
    result_file = tmp_path / "result.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "extplugtest.tools.client",
            "benchmark",
            uri,
            *args,
            "--json",
            str(result_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Benchmark started." in completed.stdout
    return json.loads(result_file.read_text())


@pytest.mark.parametrize("kind", ["--con", "--non"])
def test_against_extserver(bench_server, tmp_path, kind):
    result = run_benchmark(
        f"{bench_server.uri}/benchmark?rlen=40",
        "--clients",
        "20",
        "--requests",
        "50",
        kind,
        tmp_path=tmp_path,
    )
    assert result["requests"] == 1000
    assert result["transmission_errors"] == 0


@pytest.mark.requires_bin("coap-server-notls")
def test_against_libcoap_server(tmp_path):
    port = free_udp_port()
    server = subprocess.Popen(
        [
            shutil.which("coap-server-notls") or "coap-server-notls",
            "-A",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            "10",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not coap_ping(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        create = subprocess.run(
            [
                shutil.which("coap-client-notls") or "coap-client-notls",
                "-B",
                "5",
                "-m",
                "put",
                "-e",
                "x" * 40,
                f"coap://127.0.0.1:{port}/benchmark",
            ],
            capture_output=True,
            timeout=30,
        )
        assert create.returncode == 0
        result = run_benchmark(
            f"coap://127.0.0.1:{port}/benchmark",
            "--clients",
            "20",
            "--requests",
            "50",
            "-m",
            "GET",
            tmp_path=tmp_path,
        )
        assert result["requests"] == 1000
        assert result["transmission_errors"] == 0
    finally:
        server.kill()
        server.wait(timeout=10)
