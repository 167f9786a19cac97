"""aiocoap's ``aiocoap-client`` (0.4.17, from this venv) against our extserver over UDP.

Without a terminal, aiocoap-client writes a 2.xx payload to stdout as is and exits 0; for an error
response it writes ``<code> <name>`` and the diagnostic payload to stderr and exits 1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.requires_bin("aiocoap-client")]

BENCHMARK_40 = "hello benchmark".ljust(40, "*")


def aiocoap_client(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``aiocoap-client ARGS``, preferring the one installed beside this Python."""
    exe = Path(sys.executable).with_name("aiocoap-client")
    command = str(exe) if exe.exists() else shutil.which("aiocoap-client") or "aiocoap-client"
    return subprocess.run([command, *args], capture_output=True, text=True, timeout=60, check=False)


def payload(*args: str) -> str:
    result = aiocoap_client(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_well_known_core_lists_benchmark(bench_server):
    listing = payload(f"{bench_server.uri}/.well-known/core")
    assert listing.startswith("<"), listing
    assert "</benchmark>" in listing


def test_post_benchmark_rlen(bench_server):
    assert payload("-m", "POST", f"{bench_server.uri}/benchmark?rlen=40") == BENCHMARK_40


def test_post_benchmark(bench_server):
    assert payload("-m", "POST", f"{bench_server.uri}/benchmark") == "hello benchmark"


def test_get_benchmark(bench_server):
    text = payload(f"{bench_server.uri}/benchmark")
    assert re.fullmatch(r"hello observe \d{3}", text), text


def test_non_request(bench_server):
    uri = f"{bench_server.uri}/benchmark?rlen=40"
    assert payload("--non", "-m", "POST", uri) == BENCHMARK_40


def test_root_banner(bench_server):
    first_line = payload(f"{bench_server.uri}/").splitlines()[0]
    assert re.fullmatch(r"\*{10,}", first_line), first_line


def test_benchmark_disabled_without_option(default_server):
    result = aiocoap_client("-m", "POST", f"{default_server.uri}/benchmark")
    assert result.returncode != 0
    assert result.stdout == ""
    assert "5.01" in result.stderr, result.stderr
    assert "benchmark is not supported on this host!" in result.stderr
