"""``extclient benchmark`` against our server and against libcoap's ``coap-server-notls``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import coap_ping, free_udp_port

from extplugtest.coap._codec import Message, parse

pytestmark = pytest.mark.interop


def run_benchmark(uri: str, *args: str, tmp_path, output: list[str] | None = None) -> dict:
    """Run ``extclient benchmark`` (bounded by --requests/--duration) and return its JSON;
    *output* gets the printed lines."""
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
    if output is not None:
        output.extend(completed.stdout.splitlines())
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


def test_source_addresses_against_extserver(bench_server, tmp_path):
    result = run_benchmark(
        f"{bench_server.uri}/benchmark?rlen=40",
        "--clients", "200", "--requests", "20", "--nstart", "2",
        "--source-addresses", "127.4.0.0/16",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["requests"] == 4000
    assert result["transmission_errors"] == 0


def test_nstart_interval_payload_against_extserver(bench_server, tmp_path):
    lines: list[str] = []
    result = run_benchmark(
        f"{bench_server.uri}/benchmark?rlen=40",
        "--clients", "5", "--requests", "4", "--nstart", "2", "--interval", "20",
        "--timeout", "5000", "--ack-timeout", "1000", "--payload", "hello benchmark",
        "--progress-interval", "0.2",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["responses"] == result["success"] == 20
    assert (result["nstart"], result["interval_ms"], result["timeout_ms"]) == (2, 20, 5000)
    assert result["payload"] == len("hello benchmark")
    assert result["client_requests"] == ["   5 clients with 4 requests."]
    assert "5 benchmark clients finished." in lines


def test_blockwise_against_extserver(bench_server, tmp_path):
    # 500 bytes up in 64-byte Block1 blocks, 300 bytes down in Block2 blocks
    result = run_benchmark(
        f"{bench_server.uri}/benchmark?rlen=300",
        "--clients", "3", "--requests", "5", "--blocksize", "64", "--payload-random", "500",
        "-m", "POST",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["responses"] == result["success"] == 15
    assert result["blocksize"] == 64
    # per request 8 Block1 blocks, the last answered with Block2 0 of 5: 7 + 4 follow-ups
    assert result["blocks"] == 15 * 11
    assert result["transmission_errors"] == 0


def test_payload_sources_and_method_against_extserver(bench_server, tmp_path):
    payload_file = tmp_path / "payload.bin"
    payload_file.write_bytes(b"from a file")
    for payload in (["--payloadhex", "68656c6c6f"], ["--payload-file", str(payload_file)]):
        result = run_benchmark(
            f"{bench_server.uri}/benchmark", "--clients", "2", "--requests", "3", "-m", "POST",
            *payload, tmp_path=tmp_path,
        )  # fmt: skip
        assert result["success"] == 6 and result["method"] == "POST"


def test_first_request_error_response_ends_the_benchmark(bench_server):
    """An unsupported query: 4.02 for the first request. Californium's test() fails: its line
    and the exit, with --no-stop too (error responses during a run: test_loadgen.py)."""
    uri = f"{bench_server.uri}/benchmark?nonsense=1"
    for extra in ([], ["--no-stop"]):
        completed = subprocess.run(
            [sys.executable, "-m", "extplugtest.tools.client", "benchmark", uri,
             "--clients", "2", "--requests", "3", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert completed.returncode == 1, completed.stdout + completed.stderr
        assert completed.stderr == (
            f"extclient benchmark: error: Request {uri} POST failed, exit Benchmark. "
            "Answered with 4.02.\n"
        )
        assert "Benchmark started." not in completed.stdout


def test_duration_warmup_plot_and_local_port(bench_server, tmp_path):
    pytest.importorskip("matplotlib")
    picture = tmp_path / "run.png"
    local_port = free_udp_port()
    result = run_benchmark(
        f"{bench_server.uri}/benchmark?rlen=40",
        "--clients", "4", "--duration", "1", "--warmup", "0.5", "--progress-interval", "0.5",
        "--non", "-m", "GET", "--local-port", str(local_port), "--plot", str(picture),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["type"] == "NON" and result["warmup_s"] == 0.5
    assert result["responses"] > 0 and result["series"]
    assert picture.read_bytes().startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def observe_server(start_extserver):
    """/benchmark notifies every 100 ms."""
    return start_extserver("--benchmark", "--no-plugtest", "--notify-interval", "100ms")


def test_observe_against_extserver(observe_server, tmp_path):
    lines: list[str] = []
    result = run_benchmark(
        f"{observe_server.uri}/benchmark",
        "--clients", "3", "--notifies", "6", "--reregister", "2", "--register", "3",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["notifies"] == result["notifies_expected"] == 18
    assert result["finished"] is True and result["method"] == "GET"
    assert "Expect 18 notifies received, reregister every 2 and register every 3 notify" in lines
    assert "18 notifies received, 18 expected" in lines


def test_reverse_request_against_extserver(bench_server, tmp_path):
    # every POST makes the server GET /feed-CON 30 times from the client
    lines: list[str] = []
    result = run_benchmark(
        f"{bench_server.uri}/reverse-request?req=30&res=feed-CON&rlen=40",
        "--clients", "3", "--requests", "2", "--reverse", "60",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert lines[1] == "Expect 180 notifies sent, interval 100 [ms]"
    assert result["reverse_responses"] >= result["reverse_expected"] == 180
    assert result["finished"] is True and result["feed_registrations"] == 0
    assert "180 reverse-responses sent, 180 expected" in lines


@pytest.mark.parametrize("feed", ["feed-CON", "feed-NON"])
def test_reverse_observe_against_extserver(bench_server, tmp_path, feed):
    # the server observes the client's feed, re-registering after 5 notifications
    lines: list[str] = []
    result = run_benchmark(
        f"{bench_server.uri}/reverse-observe?obs=5&res={feed}&rlen=100",
        "--clients", "2", "--requests", "1", "--reverse", "12", "--min", "40", "--max", "60",
        "--progress-interval", "0.2",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert lines[1] == "Expect 24 notifies sent, interval 40 ... 60 [ms]"
    assert result["reverse_responses"] >= 24 and result["finished"] is True
    assert result["feed_registrations"] >= 4  # 2 clients, registered again after 5
    assert result["feed_failures"] == 0
    # 12 notifications each, at least 40 ms apart, outlast the registration by far
    assert "Requests sent." in lines
    assert any(line.startswith("24 notifies sent, 24 expected, ") for line in lines)


def server_statistic(server, path: str) -> str:
    """POST /<path> without parameters: the resource's statistic text (inventory §2.3)."""
    request = Message(0, 2, 0x4321, b"ST")  # CON POST
    request.add_option(11, path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.connect(("127.0.0.1", server.port))
        sock.send(request.to_bytes())
        for _ in range(10):  # bounded: an empty ACK first would be followed by the answer
            reply = parse(sock.recv(2048))
            if reply.token == b"ST" and reply.code:
                return reply.payload.decode()
    raise AssertionError(f"no statistic from /{path}")


@pytest.fixture(scope="module")
def reverse_server(start_extserver):
    """A server of its own: its /reverse-* statistics count only these tests."""
    return start_extserver("--benchmark", "--no-plugtest")


@pytest.mark.parametrize("feed", ["feed-CON", "feed-NON"])
def test_reverse_observe_blockwise_against_extserver(reverse_server, tmp_path, feed):
    """benchmark.sh step 6 (rlen=400 --blocksize 64): the feed answers in Block2 blocks of
    64 bytes; the server takes the registration and counts the notifications."""
    before = int(
        re.search(r"(\d+) notifies", server_statistic(reverse_server, "reverse-observe"))[1]
    )
    result = run_benchmark(
        f"{reverse_server.uri}/reverse-observe?obs=3&res={feed}&rlen=400",
        "--blocksize", "64", "--clients", "1", "--requests", "1", "--reverse", "3",
        "--min", "30", "--max", "30",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["finished"] is True and result["reverse_responses"] >= 3
    assert result["feed_registrations"] >= 1 and result["feed_notifies"] >= 2
    assert result["feed_failures"] == 0 and result["feed_errors"] == 0
    statistic = server_statistic(reverse_server, "reverse-observe")
    # the registration's answer is not one of the server's "notifies", the rest are
    assert int(re.search(r"(\d+) notifies", statistic)[1]) - before >= 2


def test_reverse_request_blockwise_and_separate_against_extserver(reverse_server, tmp_path):
    """/reverse-request GETs feed-CON?rlen=400 (Block2 of 64 bytes), then with ?ack (an empty
    ACK, then the answer as CON): all of the server's GETs are answered, none is pending."""
    # two POSTs a run (the first request, then the run's), 3 GETs each, all answered
    for query, separate in (("rlen=400", 0), ("rlen=40&ack", 6)):
        result = run_benchmark(
            f"{reverse_server.uri}/reverse-request?req=3&res=feed-CON&{query}",
            "--blocksize", "64", "--clients", "1", "--requests", "1", "--reverse", "6",
            tmp_path=tmp_path,
        )  # fmt: skip
        assert result["finished"] is True and result["reverse_responses"] == 6
        assert result["feed_separate"] == separate and result["feed_errors"] == 0
        assert result["feed_failures"] == 0
    overall, sent, pending = map(
        int, re.findall(r"\d+", server_statistic(reverse_server, "reverse-request"))
    )
    assert (overall, pending) == (12, 0), (overall, sent, pending)


def test_reverse_observe_notifications_arrive_whole(reverse_server, tmp_path):
    """The server fetches the rest of each block-wise notification (RFC 7959 §3.4), so the
    feed serves further blocks: 400 bytes are 7 blocks of 64."""
    result = run_benchmark(
        f"{reverse_server.uri}/reverse-observe?obs=3&res=feed-CON&rlen=400",
        "--blocksize", "64", "--clients", "1", "--requests", "1", "--reverse", "3",
        "--min", "100", "--max", "100",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["finished"] is True
    assert result["feed_blocks"] >= 6 * (result["reverse_responses"] - 1)
    assert result["feed_blocks"] > 0


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
        # block-wise from a third-party server: 40 bytes in 16-byte Block2 blocks
        blockwise = run_benchmark(
            f"coap://127.0.0.1:{port}/benchmark",
            "--clients", "2", "--requests", "5", "-m", "GET", "--blocksize", "16",
            tmp_path=tmp_path,
        )  # fmt: skip
        assert blockwise["success"] == 10 and blockwise["blocks"] == 10 * 2
        # every client from its own address, all on one socket
        sources = run_benchmark(
            f"coap://127.0.0.1:{port}/benchmark",
            "--clients", "50", "--requests", "20", "-m", "GET",
            "--source-addresses", "127.3.0.0/24",
            tmp_path=tmp_path,
        )  # fmt: skip
        assert sources["success"] == 1000 and sources["transmission_errors"] == 0
    finally:
        server.kill()
        server.wait(timeout=10)


# -- coaps: DTLS sessions sealed and opened in the generator's loop --------------------------------


def coaps_uri(server, path: str) -> str:
    return f"coaps://127.0.0.1:{server.port + 1}/{path}"


def test_coaps_against_extserver(bench_server, tmp_path):
    """Californium's default credentials (cali.<hex> / .fornium per client), with CIDs."""
    lines: list[str] = []
    result = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=40"),
        "--clients", "20", "--requests", "25", "-m", "GET", "--cid-length", "4",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["requests"] == 500 and result["transmission_errors"] == 0
    assert result["success"] == result["responses"]
    assert "Benchmark clients handshakes: 20 in" in "\n".join(lines)
    assert lines[:2] == [
        "Create 20 secure benchmark clients, expect to send 500 requests overall to "
        f"{coaps_uri(bench_server, 'benchmark?rlen=40')}",
        "Use PSK.",
    ]
    # connects: each client's first response, its handshake included
    assert result["connect_latency_us"]["count"] == 20


def test_coaps_with_source_addresses(bench_server, tmp_path):
    """Handshakes on a socket per client (bound to its address), then records on one."""
    lines: list[str] = []
    result = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=40"),
        "--clients", "100", "--requests", "10", "--source-addresses", "127.5.0.0/24",
        "--cid-length", "4",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["success"] == 1000 and result["transmission_errors"] == 0
    assert any(line.startswith("Benchmark clients handshakes: 100 in ") for line in lines)
    # full 1024-byte blocks up (Block1) in records on the shared socket
    blocks = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=40"),
        "--clients", "5", "--requests", "3", "--payload-random", "3000", "--blocksize", "1024",
        "--source-addresses", "127.5.1.0/24",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert blocks["success"] == 15 and blocks["blocks"] == 15 * 2


def test_coaps_psk_store_and_certificates(bench_server, tmp_path):
    store = tmp_path / "cali.psk"
    store.write_text("# identity=base64 of the secret\ncali.1=LmZvcm5pdW0=\ncali.2=LmZvcm5pdW0=\n")
    result = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=10"),
        "--clients", "3", "--requests", "5", "--psk-store", str(store), "--psk-index", "1",
        "--non", tmp_path=tmp_path,
    )  # fmt: skip
    assert result["success"] >= 1 and result["transmission_errors"] == 0
    result = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=10"),
        "--clients", "3", "--requests", "5", "-a", "X509",
        "--cipher", "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", tmp_path=tmp_path,
    )  # fmt: skip
    assert result["requests"] == 15 and result["transmission_errors"] == 0
    # RPK: a key pair per client, each a principal of its own
    lines: list[str] = []
    result = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=10"),
        "--clients", "3", "--requests", "5", "-a", "RPK", tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["requests"] == 15 and result["transmission_errors"] == 0
    assert lines[1] == "Use RPK."


def test_coaps_wrong_secret_is_one_line(bench_server, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", "benchmark",
         coaps_uri(bench_server, "benchmark"), "--clients", "2", "--requests", "1",
         "-i", "Client_identity", "-s", "wrong"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stderr.count("\n") == 1 and "DTLS handshake failed" in completed.stderr


@pytest.mark.requires_bin("coap-server-openssl")
def test_coaps_against_libcoap(tmp_path):
    """A real peer: libcoap's DTLS server (PSK), its /time resource."""
    exe = shutil.which("coap-server-openssl")
    if exe is None:
        pytest.skip("coap-server-openssl not found")
    port = free_udp_port()
    process = subprocess.Popen(
        [exe, "-A", "127.0.0.1", "-p", str(port), "-k", "secretPSK", "-h", "Client_identity"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not coap_ping(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        result = run_benchmark(
            f"coaps://127.0.0.1:{port + 1}/time",
            "--clients", "5", "--requests", "10", "-m", "GET",
            "-i", "Client_identity", "-s", "secretPSK", tmp_path=tmp_path,
        )  # fmt: skip
    finally:
        process.kill()
        process.wait(timeout=5)
    assert result["requests"] == 50 and result["transmission_errors"] == 0


# -- coap+tcp (RFC 8323): one connection per client, framed in the generator's loop ---------------

#: libcoap's TCP servers listen with a backlog of 5 (``ss -ltn``): the clients of one run
#: against them stay within it (see test_tcp_against_libcoap_server)
LIBCOAP_BACKLOG = 4


def tcp_uri(server, path: str) -> str:
    return f"coap+tcp://127.0.0.1:{server.port}/{path}"


def test_tcp_against_extserver(bench_server, tmp_path):
    """Our server listens for coap+tcp on its UDP port."""
    lines: list[str] = []
    result = run_benchmark(
        tcp_uri(bench_server, "benchmark?rlen=40"),
        "--clients", "20", "--requests", "50", "--nstart", "2", "-m", "GET",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["requests"] == result["success"] == 1000
    assert (result["type"], result["transport"]) == ("TCP", "tcp")
    assert result["transmission_errors"] == result["connections_closed"] == 0
    assert result["retransmissions"] == 0
    assert "20 benchmark clients finished." in lines


def test_tcp_blockwise_payload_and_interval_against_extserver(bench_server, tmp_path):
    # 500 bytes up in 64-byte Block1 blocks, 300 bytes down in Block2 blocks, as over UDP
    result = run_benchmark(
        tcp_uri(bench_server, "benchmark?rlen=300"),
        "--clients", "3", "--requests", "5", "--blocksize", "64", "--payload-random", "500",
        "-m", "POST", "--interval", "10",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["responses"] == result["success"] == 15
    assert result["blocks"] == 15 * 11
    assert result["transmission_errors"] == 0


def test_tcp_observe_against_extserver(observe_server, tmp_path):
    result = run_benchmark(
        tcp_uri(observe_server, "benchmark"),
        "--clients", "3", "--notifies", "6", "--reregister", "2",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["notifies"] == result["notifies_expected"] == 18
    assert result["finished"] is True


def test_tcp_server_shutdown_mid_run_is_counted(start_extserver, tmp_path):
    """The server goes away during the run (it sends Release, then closes): every connection
    counts as closed, its outstanding requests as transmission errors, and the clients stop."""
    server = start_extserver("--benchmark", "--no-plugtest")
    result_file = tmp_path / "result.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "extplugtest.tools.client", "benchmark",
         tcp_uri(server, "benchmark?rlen=40"), "--clients", "5", "--duration", "60",
         "--no-stop", "--progress-interval", "0.5", "--json", str(result_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:  # bounded by the run's --duration and the kill below
            if line.startswith("[0001]"):  # a progress line: the run is under way
                break
        server.stop()
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, output
    result = json.loads(result_file.read_text())
    assert result["connections_closed"] == 5 and result["stopped_clients"] == 5
    assert result["stale"] is True and result["success"] > 0
    assert "5 connections closed by the server" in output
    assert "5 benchmark clients stopped." in output


@pytest.mark.requires_bin("coap-server-notls", "coap-client-notls")
def test_tcp_against_libcoap_server(tmp_path):
    """A real peer: libcoap's server speaks coap+tcp on its UDP port; /benchmark is created by
    PUT over UDP (the resource is shared by the transports)."""
    port = free_udp_port()
    server = subprocess.Popen(
        [shutil.which("coap-server-notls") or "coap-server-notls", "-A", "127.0.0.1",
         "-p", str(port), "-d", "10"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not coap_ping(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        create = subprocess.run(
            [shutil.which("coap-client-notls") or "coap-client-notls", "-B", "5", "-m", "put",
             "-e", "x" * 40, f"coap://127.0.0.1:{port}/benchmark"],
            capture_output=True, timeout=30,
        )  # fmt: skip
        assert create.returncode == 0
        # At most LIBCOAP_BACKLOG clients connect at once: libcoap listens with a backlog of 5,
        # and on a busy box more connects at once overflow its accept queue (the kernel then
        # drops the handshake's last ACK, and the server closes what the client took for open).
        result = run_benchmark(
            f"coap+tcp://127.0.0.1:{port}/benchmark",
            "--clients", str(LIBCOAP_BACKLOG), "--requests", "250", "-m", "GET",
            tmp_path=tmp_path,
        )  # fmt: skip
        assert result["requests"] == result["success"] == LIBCOAP_BACKLOG * 250
        assert result["transmission_errors"] == result["connections_closed"] == 0
        # block-wise from a third-party server over TCP: 40 bytes in 16-byte Block2 blocks
        blockwise = run_benchmark(
            f"coap+tcp://127.0.0.1:{port}/benchmark",
            "--clients", "2", "--requests", "5", "-m", "GET", "--blocksize", "16",
            tmp_path=tmp_path,
        )  # fmt: skip
        assert blockwise["success"] == 10 and blockwise["blocks"] == 10 * 2
    finally:
        server.kill()
        server.wait(timeout=10)


@pytest.mark.parametrize("mode", ["--handshakes-full", "--handshakes-close"])
def test_coaps_handshakes_during_the_run(bench_server, tmp_path, mode):
    """Californium's COAPS_HANDSHAKES_FULL/CLOSE: after every 5th response a client gets a new
    session (close_notify first with -close), here 2 in a row (--handshakes-burst)."""
    lines: list[str] = []
    result = run_benchmark(
        coaps_uri(bench_server, "benchmark?rlen=10"),
        "--clients", "4", "--requests", "10", "-m", "GET", mode, "5", "--handshakes-burst", "2",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["requests"] == 40 and result["transmission_errors"] == 0
    # every client is parked after its 5th and 10th response: 4 x 2 x 2 handshakes
    assert result["handshakes_during_run"] == 16 and result["handshake_failures"] == 0
    assert "16 DTLS handshakes during the run" in lines


def test_handshakes_during_the_run_need_coaps(bench_server, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", "benchmark",
         f"{bench_server.uri}/benchmark", "--handshakes-full", "5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 2 and "need a coaps:// URI" in completed.stderr


# -- coaps+tcp (RFC 8323 over TLS): OpenSSL in the generator's loop --------------------------------


def tls_uri(server, path: str) -> str:
    """Our server's TLS port is its plain port + 1 (as for DTLS)."""
    return f"coaps+tcp://127.0.0.1:{server.port + 1}/{path}"


def test_tls_against_extserver(bench_server, tmp_path):
    """The demo server certificate, verified against the demo CA (client auth is WANTED: the
    clients go without a certificate)."""
    lines: list[str] = []
    result = run_benchmark(
        tls_uri(bench_server, "benchmark?rlen=40"),
        "--clients", "20", "--requests", "50", "--nstart", "2", "-m", "GET",
        tmp_path=tmp_path, output=lines,
    )  # fmt: skip
    assert result["requests"] == result["success"] == 1000
    assert (result["type"], result["transport"]) == ("TCP", "tls")
    assert result["transmission_errors"] == result["connections_closed"] == 0
    assert "Benchmark clients handshakes: 20 in" in "\n".join(lines)
    assert "20 benchmark clients finished." in lines


def test_tls_blockwise_and_client_certificate_against_extserver(bench_server, tmp_path):
    # -a X509: the demo client certificate; block-wise both ways, as over TCP
    result = run_benchmark(
        tls_uri(bench_server, "benchmark?rlen=300"),
        "--clients", "3", "--requests", "5", "--blocksize", "64", "--payload-random", "500",
        "-m", "POST", "-a", "X509",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result["responses"] == result["success"] == 15
    assert result["blocks"] == 15 * 11
    assert result["transmission_errors"] == 0


def test_tls_untrusted_server_is_one_line(bench_server, tmp_path):
    """A trust store without the demo CA: the handshake fails with one line; --trust-all
    accepts the server anyway."""
    from extplugtest.dtls.pki import make_demo_pki

    make_demo_pki(tmp_path / "other")  # a fresh CA, not the server's
    other = tmp_path / "other" / "ca.pem"
    completed = subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", "benchmark",
         tls_uri(bench_server, "benchmark"), "--clients", "2", "--requests", "1",
         "--trust-store", str(other)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert completed.stderr.count("\n") == 1
    assert "TLS handshake of client" in completed.stderr
    assert "certificate" in completed.stderr
    result = run_benchmark(
        tls_uri(bench_server, "benchmark"), "--clients", "2", "--requests", "3",
        "--trust-all", tmp_path=tmp_path,
    )  # fmt: skip
    assert result["success"] == 6


def test_tls_on_a_plain_tcp_port_is_one_line(bench_server):
    completed = subprocess.run(
        [sys.executable, "-m", "extplugtest.tools.client", "benchmark",
         f"coaps+tcp://127.0.0.1:{bench_server.port}/benchmark", "--clients", "2",
         "--requests", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert completed.stderr.count("\n") == 1 and "TLS handshake" in completed.stderr


@pytest.mark.requires_bin("coap-server-openssl")
def test_tls_against_libcoap_server(tmp_path):
    """A real peer: libcoap's server with the demo certificate on its secure port (the plain
    one + 1), its /time resource; verified against the demo CA."""
    from extplugtest.dtls.pki import demo_certs_path

    exe = shutil.which("coap-server-openssl")
    if exe is None:
        pytest.skip("coap-server-openssl not found")
    certs = demo_certs_path()
    port = free_udp_port()
    process = subprocess.Popen(
        [exe, "-A", "127.0.0.1", "-p", str(port),
         "-c", str(certs / "server.pem"), "-j", str(certs / "server.key")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not coap_ping(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        result = run_benchmark(
            f"coaps+tcp://127.0.0.1:{port + 1}/time",
            "--clients", str(LIBCOAP_BACKLOG), "--requests", "40", "-m", "GET",
            tmp_path=tmp_path,
        )  # fmt: skip
    finally:
        process.kill()
        process.wait(timeout=5)
    assert result["requests"] == result["success"] == LIBCOAP_BACKLOG * 40
    assert result["transmission_errors"] == result["connections_closed"] == 0
    assert result["transport"] == "tls"


# -- coaps: recovery with a new handshake after a server restart ----------------------------------


def start_dtls_extserver(port: int, log: Path) -> subprocess.Popen:
    """``extserver`` on *port* (+1 for coaps), /benchmark only, no state kept between runs."""
    from tests.conftest import die_with_parent, find_tool
    from tests.interop.cluster_helpers import RUN_CLI, answers_hello

    exe = find_tool("extserver")
    command = [exe] if exe else [sys.executable, "-c", RUN_CLI]
    if os.environ.get("EXTSERVER_CMD"):
        command = shlex.split(os.environ["EXTSERVER_CMD"])
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [*command, "--no-external", "--no-ipv6", "--no-tcp", "--no-plugtest", "--benchmark",
             "--coap-port", str(port)],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:  # bounded
        if answers_hello(("127.0.0.1", port + 1)):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"extserver did not start:\n{log.read_text(errors='replace')}")


@pytest.mark.parametrize("extra", [[], ["--source-addresses", "127.6.0.0/24"]])
def test_coaps_clients_recover_with_a_new_handshake_after_a_server_restart(tmp_path, extra):
    """The seed's fail-over (a pod restarted, its DTLS state gone): each client's next CON
    request fails, it does a new full handshake (Californium forces one after an error, with
    --no-stop) and goes on; the run completes instead of ending as stale. With source
    addresses the handshake runs on a socket of the client's own."""
    from tests.interop.cluster_helpers import stop_process

    port = free_udp_port(tcp=True, span=2)
    server_log = tmp_path / "server.log"
    server = start_dtls_extserver(port, server_log)
    out = tmp_path / "benchmark.out"
    result_file = tmp_path / "result.json"
    with out.open("wb") as sink:
        load = subprocess.Popen(
            [sys.executable, "-m", "extplugtest.tools.client", "benchmark",
             f"coaps://127.0.0.1:{port + 1}/benchmark?rlen=10", "--clients", "3",
             "--requests", "20", "--interval", "20", "--no-stop", "--ack-timeout", "100",
             "--progress-interval", "0.5", "--json", str(result_file), *extra],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "Benchmark started." not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded
        assert "Benchmark started." in out.read_text(), out.read_text()
        time.sleep(1.0)  # some requests on the first sessions
        server.kill()  # all DTLS state gone, as a node killed
        server.wait(timeout=10)
        sent_before = last_requests(out.read_text())
        server = start_dtls_extserver(port, server_log)
        assert load.wait(timeout=90) == 0, out.read_text()
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(timeout=10)
        stop_process(server)
    lines = out.read_text().splitlines()
    result = json.loads(result_file.read_text())
    assert "3 benchmark clients finished." in lines, lines
    assert not any("stale" in line for line in lines), lines
    assert result["stale"] is False and result["responses"] == result["success"] == 60
    # requests answered after the restart: those sent after the kill, and the failed ones
    # (given back, sent again after the new handshake)
    assert sent_before < 60
    assert result["transmission_errors"] >= 3
    # each client's request failed, it said so and got a new session
    errors = [line for line in lines if re.match(r"^client-\d: Error after \d+ CON-requests\. "
                                                   r"timeout \(\d+s\)", line)]  # fmt: skip
    assert errors, lines
    assert result["handshakes_during_run"] >= 3, result
    assert any(re.match(r"^\d+ DTLS handshakes during the run", line) for line in lines)
    # the responses after the new handshakes are "connects" again (Californium's reconnect)
    assert result["connect_latency_us"]["count"] >= 3 + 3


def last_requests(output: str) -> int:
    """The requests of the last progress line in *output* (0 before the first)."""
    found = re.findall(r"^\[\d{4}\]: (\d+) requests", output, re.MULTILINE)
    return int(found[-1]) if found else 0
