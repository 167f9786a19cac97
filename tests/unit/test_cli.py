"""extserver's command line: help, one-line errors with their exit codes, and defaults."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from extplugtest.server.app import InterfaceSelection
from extplugtest.server.config import ConfigError, ServerConfig, parse_duration, parse_properties


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "extplugtest.server.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_californium_options():
    result = run("-h")
    assert result.returncode == 0
    for option in (
        "--no-loopback",
        "--no-external",
        "--no-ipv4",
        "--no-ipv6",
        "--interfaces-pattern",
        "--no-plugtest",
        "--benchmark",
        "--notify-interval",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["--notify-interval", "1ms"], 2, "--notify-interval must be at least 5ms"),
        (["--notify-interval", "soon"], 2, "is not a duration"),
        (["--config", "/nonexistent/x.properties"], 2, "cannot read /nonexistent/x.properties"),
        (["--coap-port", "70000"], 2, "is not a UDP port"),
        (["--interfaces-pattern", "^no-such-address$"], 1, "no interface address matches"),
    ],
)
def test_errors_are_one_line_with_exit_code(args, code, text):
    result = run(*args)
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("extserver: ") and text in lines[0]


def test_port_in_use_is_reported():
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        result = run("--no-external", "--no-ipv6", "--no-plugtest", "--coap-port", str(port))
    finally:
        blocker.close()
    assert result.returncode == 1
    assert f"cannot bind UDP 127.0.0.1:{port}" in result.stderr


def test_unknown_tcp_io_backend_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("EXTPLUGTEST_TCP_IO", "kqueue")
    result = run("--no-external", "--no-ipv6", "--no-plugtest", "--coap-port", "0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "extserver: EXTPLUGTEST_TCP_IO must be one of auto, io_uring, epoll, not 'kqueue'"
    ]


def test_config_file_keys(tmp_path):
    path = tmp_path / "CaliforniumReceivetest3.properties"
    path.write_text(
        "# comment\nCOAP.COAP_PORT=6000\nCOAP.EXCHANGE_LIFETIME=100[s]\n"
        "COAP.MAX_PEER_INACTIVITY_PERIOD=2[min]\nCOAP.DEDUPLICATOR=NO_DEDUPLICATOR\n"
        "COAP.MAX_ACTIVE_PEERS=\nDTLS.UNKNOWN_FOR_NOW=1\n"
    )
    config = ServerConfig()
    config.load(path)
    assert config.coap_port == 6000
    assert config.exchange_lifetime == 100.0
    assert config.max_peer_inactivity_period == 120.0
    assert not config.deduplication
    assert config.max_active_peers == 1_000_000  # blank means default
    assert config.ignored_keys == ["DTLS.UNKNOWN_FOR_NOW"]


def test_config_names_the_keys_it_does_not_use(caplog):
    config = ServerConfig()
    config.apply({f"COAP.UNUSED_{n}": "1" for n in range(7)} | {"COAP.COAP_PORT": "6001"}, "f")
    assert config.coap_port == 6001 and len(config.ignored_keys) == 7
    assert caplog.messages == [
        "f: 7 keys not used by extserver: "
        "COAP.UNUSED_0, COAP.UNUSED_1, COAP.UNUSED_2, COAP.UNUSED_3, COAP.UNUSED_4, ..."
    ]


def test_dtls_and_tcp_keys_reach_the_endpoint_limits(tmp_path):
    from extplugtest.server.app import ExtendedServer

    config = ServerConfig()
    config.apply(
        {
            "DTLS.MAX_CONNECTIONS": "500",
            "DTLS.STALE_CONNECTION_THRESHOLD": "10min",
            "DTLS.MAC_ERROR_FILTER_THRESHOLD": "0",
            "DTLS.MAC_ERROR_FILTER_QUIET_TIME": "2s",
            "TCP.CONNECT_TIMEOUT": "5s",
            "TCP.CONNECTION_IDLE_TIMEOUT": "12h",
            "TCP.TLS_HANDSHAKE_TIMEOUT": "30s",
        }
    )
    server = ExtendedServer(config, InterfaceSelection())
    dtls, tcp = server.dtls_limits, server.tcp_limits
    assert (dtls.max_connections, dtls.stale_after) == (500, 600.0)
    assert (dtls.mac_filter_threshold, dtls.mac_filter_quiet) == (0, 2.0)
    assert (tcp.slow_timeout, tcp.idle_timeout, tcp.handshake_timeout) == (5.0, 43200.0, 30.0)
    with pytest.raises(ConfigError, match=r"DTLS\.MAX_CONNECTIONS"):
        config.apply({"DTLS.MAX_CONNECTIONS": "0"})


def test_config_rejects_bad_values(tmp_path):
    path = tmp_path / "bad.properties"
    path.write_text("COAP.DEDUPLICATOR=CROP_ROTATION\n")
    with pytest.raises(ConfigError, match="CROP_ROTATION is unknown"):
        ServerConfig().load(path)


def test_durations():
    assert parse_duration("5000") == 5.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("5[s]") == 5.0
    assert parse_duration("3min") == 180.0
    assert parse_properties("a = 1\n! x\nb:2") == {"a": "1", "b": "2"}


ADDRESSES = [
    ("lo", 4, "127.0.0.1", 0),
    ("eth0", 4, "192.0.2.2", 0),
    ("lo", 6, "::1", 0),
    ("eth0", 6, "fd00::2", 0),
    ("eth0", 6, "fe80::1", 2),
]


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (InterfaceSelection(), ["127.0.0.1", "192.0.2.2", "::1", "fd00::2", "fe80::1"]),
        (InterfaceSelection(external=False), ["127.0.0.1", "::1", "fe80::1"]),
        (InterfaceSelection(loopback=False), ["192.0.2.2", "fd00::2"]),
        (InterfaceSelection(ipv6=False), ["127.0.0.1", "192.0.2.2"]),
        (InterfaceSelection(ipv4=False, external=False), ["::1", "fe80::1"]),
        (InterfaceSelection(patterns=[r"127\..*", r"fe80::1%eth0"]), ["127.0.0.1", "fe80::1"]),
    ],
)
def test_interface_selection(selection, expected):
    assert [address for address, _ in selection.select(ADDRESSES)] == expected


def test_k8s_cluster_outside_a_pod_is_one_clear_line():
    result = run("--no-external", "--no-ipv6", "--dtls-only", "--no-tcp", "--coap-port", "0",
                 "--k8s-dtls-cluster", ":45784;:45884;45884")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "k8s discovery: no CA file" in result.stderr


def test_cluster_options_are_checked():
    result = run("--dtls-cluster", "127.0.0.1:1;127.0.0.1:2;300")
    assert result.returncode == 2 and "node" in result.stderr
