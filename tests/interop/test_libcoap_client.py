"""libcoap's ``coap-client-notls`` (Debian libcoap3-bin, 4.3.x) against our extserver over UDP.

coap-client prints a 2.xx payload on stdout followed by a newline; for 4.xx/5.xx it prints
``<code> <diagnostic payload>`` on stderr. Its exit code is 0 either way, even on a timeout.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.requires_bin("coap-client-notls")]

BENCHMARK_40 = "hello benchmark".ljust(40, "*")


def coap_client(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``coap-client-notls -B 5 ARGS`` (wait at most 5 s for the response)."""
    exe = shutil.which("coap-client-notls") or "coap-client-notls"
    return subprocess.run(
        [exe, "-B", "5", *args], capture_output=True, text=True, timeout=30, check=False
    )


def payload(*args: str) -> str:
    """The 2.xx payload printed by coap-client for ARGS (without its trailing newline)."""
    result = coap_client(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout, f"no payload from coap-client {' '.join(args)}; stderr:\n{result.stderr}"
    return result.stdout.removesuffix("\n")


def test_well_known_core_lists_benchmark(bench_server):
    listing = payload("-m", "get", f"{bench_server.uri}/.well-known/core")
    assert listing.startswith("<"), listing
    assert "</benchmark>" in listing


def test_post_benchmark_rlen(bench_server):
    assert payload("-m", "post", f"{bench_server.uri}/benchmark?rlen=40") == BENCHMARK_40


def test_get_benchmark(bench_server):
    text = payload("-m", "get", f"{bench_server.uri}/benchmark")
    assert re.fullmatch(r"hello observe \d{3}", text), text


def test_non_request(bench_server):
    assert payload("-N", "-m", "post", f"{bench_server.uri}/benchmark?rlen=40") == BENCHMARK_40


def test_root_banner(bench_server):
    first_line = payload("-m", "get", f"{bench_server.uri}/").splitlines()[0]
    assert re.fullmatch(r"\*{10,}", first_line), first_line


def test_benchmark_disabled_without_option(default_server):
    result = coap_client("-m", "post", f"{default_server.uri}/benchmark")
    assert result.stdout == ""
    assert "5.01 benchmark is not supported on this host!" in result.stderr, result.stderr
