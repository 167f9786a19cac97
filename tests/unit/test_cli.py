"""extserver's command line: help, one-line errors with their exit codes, and defaults."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading

import pytest
import uvloop
from test_dtls_client import connect
from test_dtls_client_auth import ECDSA_CCM8
from tests.conftest import free_udp_port

from extplugtest.cluster.options import join_dash_values
from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls.credentials import PskStore
from extplugtest.dtls.handshake_header import AlertDescription
from extplugtest.dtls.handshake_server import (
    ClientAuth,
    DtlsConfig,
    ExtendedMasterSecretMode,
    HandshakeFailure,
)
from extplugtest.dtls.pki import TrustStore
from extplugtest.server.app import ExtendedServer, InterfaceSelection
from extplugtest.server.cli import build_parser, dtls_configs
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
            "DTLS.RETRANSMISSION_TIMEOUT": "2s",
            "DTLS.MAX_RETRANSMISSION_TIMEOUT": "30s",
            "DTLS.RETRANSMISSION_TIMEOUT_SCALE": "1.5",
            "DTLS.RETRANSMISSION_INIT_RANDOM": "1.2",
            "DTLS.ADDITIONAL_ECC_TIMEOUT": "0",
            "DTLS.MAX_RETRANSMISSIONS": "6",
            "DTLS.MAX_TRANSMISSION_UNIT": "1280",
            "DTLS.MAX_TRANSMISSION_UNIT_LIMIT": "9000",
        }
    )
    server = ExtendedServer(config, InterfaceSelection())
    dtls, tcp = server.dtls_limits, server.tcp_limits
    assert (dtls.retransmission_timeout, dtls.retransmission_timeout_max) == (2.0, 30.0)
    assert (dtls.retransmission_scale, dtls.retransmission_init_random) == (1.5, 1.2)
    assert (dtls.additional_ecc_timeout, dtls.max_retransmissions) == (0.0, 6)
    assert (dtls.mtu, dtls.mtu_limit) == (1280, 9000)
    assert (dtls.max_connections, dtls.stale_after) == (500, 600.0)
    assert (dtls.mac_filter_threshold, dtls.mac_filter_quiet) == (0, 2.0)
    assert (tcp.slow_timeout, tcp.idle_timeout, tcp.handshake_timeout) == (5.0, 43200.0, 30.0)
    with pytest.raises(ConfigError, match=r"DTLS\.MAX_CONNECTIONS"):
        config.apply({"DTLS.MAX_CONNECTIONS": "0"})


# -- DTLS properties keys --------------------------------------------------------------------


def configs(properties: dict[str, str], client_auth: str | None = None):
    config = ServerConfig()
    config.apply(properties)
    return dtls_configs(config, PskStore(), TrustStore.demo(), client_auth)


def test_dtls_keys_reach_the_dtls_config():
    extended, plugtest = configs(
        {
            "DTLS.EXTENDED_MASTER_SECRET_MODE": "REQUIRED",
            "DTLS.CIPHER_SUITES": "TLS_PSK_WITH_AES_128_CCM_8, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8",
            "DTLS.RECORD_SIZE_LIMIT": "1024",
            "DTLS.CONNECTION_ID_LENGTH": "4",
        }
    )
    for config in (extended, plugtest):
        assert config.extended_master_secret_mode is ExtendedMasterSecretMode.REQUIRED
        assert config.cipher_suites == (
            cs.TLS_PSK_WITH_AES_128_CCM_8,
            cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        )
        assert config.record_size_limit == 1024 and config.cid_length == 4 and config.cid_enabled
    assert extended.session_cache is not plugtest.session_cache


def test_dtls_defaults():
    extended, plugtest = configs({})
    assert extended.extended_master_secret_mode is ExtendedMasterSecretMode.ENABLED
    assert extended.cipher_suites == cs.DEFAULT_PREFERENCE
    assert extended.record_size_limit is None and extended.cid_length == 6
    assert (extended.client_auth, plugtest.client_auth) == (ClientAuth.WANTED, ClientAuth.NEEDED)


def test_cipher_suites_win_over_the_preselected_ones():
    preselected = {"DTLS.PRESELECTED_CIPHER_SUITES": "TLS_PSK_WITH_AES_128_GCM_SHA256"}
    assert configs(preselected)[0].cipher_suites == (cs.TLS_PSK_WITH_AES_128_GCM_SHA256,)
    both = preselected | {"DTLS.CIPHER_SUITES": "TLS_PSK_WITH_AES_128_CCM"}
    assert configs(both)[0].cipher_suites == (cs.TLS_PSK_WITH_AES_128_CCM,)


def test_a_preselection_leaves_out_what_we_do_not_implement(caplog):
    """Californium's own properties file preselects AES-CBC and RSA suites: left out, named."""
    value = "TLS_PSK_WITH_AES_128_CBC_SHA256,TLS_PSK_WITH_AES_128_CCM_8"
    config = ServerConfig()
    config.apply({"DTLS.PRESELECTED_CIPHER_SUITES": value}, "f")
    assert config.dtls_suites == (cs.TLS_PSK_WITH_AES_128_CCM_8,)
    assert caplog.messages == [
        "f: DTLS.PRESELECTED_CIPHER_SUITES: TLS_PSK_WITH_AES_128_CBC_SHA256 not supported by "
        "extserver, left out"
    ]


def test_cid_length_minus_one_disables_cid():
    """Inventory §6.2: -1 = disabled (it was refused); the connector keeps a cid_length of 0."""
    extended, plugtest = configs({"DTLS.CONNECTION_ID_LENGTH": "-1"})
    for config in (extended, plugtest):
        assert config.cid_length == 0 and not config.cid_enabled


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("DTLS.CIPHER_SUITES", "TLS_PSK_WITH_AES_128_CCM_8,TLS_FOO", "TLS_FOO is unknown"),
        ("DTLS.CIPHER_SUITES", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
         "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 is not supported by extserver"),
        ("DTLS.PRESELECTED_CIPHER_SUITES", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
         "no cipher suite"),
        ("DTLS.PRESELECTED_CIPHER_SUITES", "TLS_FOO", "TLS_FOO is unknown"),
        ("DTLS.CIPHER_SUITES", " , ", "no cipher suite"),
        ("DTLS.EXTENDED_MASTER_SECRET_MODE", "SOMETIMES", "SOMETIMES is unknown"),
        ("DTLS.CLIENT_AUTHENTICATION_MODE", "MAYBE", "MAYBE is unknown"),
        ("DTLS.RECORD_SIZE_LIMIT", "63", "is not 64..16384"),
        ("DTLS.RECORD_SIZE_LIMIT", "16385", "is not 64..16384"),
        ("DTLS.CONNECTION_ID_LENGTH", "-2", "DTLS.CONNECTION_ID_LENGTH must be"),
        ("DTLS.RETRANSMISSION_TIMEOUT", "0", "DTLS.RETRANSMISSION_TIMEOUT must be above 0"),
        ("DTLS.MAX_RETRANSMISSIONS", "33", "DTLS.MAX_RETRANSMISSIONS 0..32"),
        ("DTLS.MAX_TRANSMISSION_UNIT", "100", "must be 576..65535"),
    ],
)  # fmt: skip
def test_bad_dtls_values_are_one_line_config_errors(key, value, text):
    with pytest.raises(ConfigError) as info:
        ServerConfig().apply({key: value}, "f.properties")
    message = str(info.value)
    assert text in message and "\n" not in message and message.startswith("f.properties: ")


def test_unsupported_suite_stops_the_server(tmp_path):
    path = tmp_path / "x.properties"
    path.write_text("DTLS.CIPHER_SUITES=TLS_PSK_WITH_AES_256_CCM_8\n")
    result = run("--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TLS_PSK_WITH_AES_256_CCM_8 is not supported" in lines[0]


# -- client authentication of the two servers (inventory §1.3) ---------------------------------


@pytest.mark.parametrize(
    ("key", "option", "expected"),
    [
        (None, None, (ClientAuth.WANTED, ClientAuth.NEEDED)),
        ("NONE", None, (ClientAuth.NONE, ClientAuth.NONE)),
        ("NEEDED", None, (ClientAuth.NEEDED, ClientAuth.NEEDED)),
        (None, "WANTED", (ClientAuth.WANTED, ClientAuth.WANTED)),
        ("NEEDED", "NONE", (ClientAuth.NONE, ClientAuth.NONE)),  # --client-auth wins
    ],
)
def test_client_auth_of_extended_and_plugtest_endpoints(key, option, expected):
    properties = {} if key is None else {"DTLS.CLIENT_AUTHENTICATION_MODE": key}
    extended, plugtest = configs(properties, option)
    assert (extended.client_auth, plugtest.client_auth) == expected


def test_plugtest_endpoints_default_to_needed():
    """An ExtendedServer given only the extended servers' DTLS settings."""
    dtls = DtlsConfig(PskStore(), client_auth=ClientAuth.WANTED)
    server = ExtendedServer(ServerConfig(), InterfaceSelection(), dtls=dtls)
    assert server.plugtest_dtls is not None and server.plugtest_dtls is not dtls
    assert server.plugtest_dtls.client_auth is ClientAuth.NEEDED
    assert server.plugtest_dtls.session_cache is not dtls.session_cache
    assert server.plugtest_dtls.psk_store is dtls.psk_store
    assert ExtendedServer(ServerConfig(), InterfaceSelection()).plugtest_dtls is None


def _two_free_port_pairs() -> tuple[int, int]:
    for _ in range(20):  # bounded: two ports whose next ports are free as well, not overlapping
        first, second = free_udp_port(span=2), free_udp_port(span=2)
        if abs(first - second) > 1:
            return first, second
    raise AssertionError("no free ports")


@pytest.fixture
def running_server():
    """An in-process extserver (DTLS only, 127.0.0.1) with the command line's DTLS settings."""
    loop = uvloop.new_event_loop()
    config = ServerConfig()
    config.coap_port, config.plugtest_port = _two_free_port_pairs()
    extended, plugtest = dtls_configs(config, PskStore(), TrustStore.demo())
    server = ExtendedServer(
        config, InterfaceSelection(ipv6=False, patterns=[r"127\.0\.0\.1"]),
        dtls=extended, plugtest_dtls=plugtest, dtls_only=True, tcp=False,
    )  # fmt: skip
    server.start(loop)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server
    asyncio.run_coroutine_threadsafe(_call(server.close), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


async def _call(function):
    return function()


def test_anonymous_certificate_client_is_refused_on_the_plugtest_port(running_server):
    config = running_server.config
    with pytest.raises(HandshakeFailure) as failure:
        connect(("127.0.0.1", config.plugtest_port + 1), cipher_suites=ECDSA_CCM8)
    assert failure.value.alert is AlertDescription.HANDSHAKE_FAILURE
    sock, session = connect(("127.0.0.1", config.coap_port + 1), cipher_suites=ECDSA_CCM8)
    assert session.suite is cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8  # WANTED: anonymous is fine
    sock.close()


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
        # Java's InetAddress.getHostAddress() writes IPv6 uncompressed (inventory §1.1)
        (InterfaceSelection(patterns=["0:0:0:0:0:0:0:1"]), ["::1"]),
        (InterfaceSelection(patterns=[r"fd00:0:0:0:0:0:0:\d+"]), ["fd00::2"]),
        (InterfaceSelection(patterns=[r"fe80:0:0:0:0:0:0:1%eth0"]), ["fe80::1"]),
        (InterfaceSelection(patterns=[r"0:.*%lo", r".*%eth0"]), ["::1", "fd00::2", "fe80::1"]),
        (InterfaceSelection(patterns=["0:0:0:0:0:0:0:1%eth0"]), []),  # ::1 is on lo
    ],
)
def test_interface_selection(selection, expected):
    assert [address for address, _ in selection.select(ADDRESSES)] == expected


# -- argparse ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [["--interfaces=lo"], ["--interfaces", "lo"], ["--client-a", "NONE"], ["--bench"]]
)
def test_option_prefixes_are_not_taken(argv, capsys):
    """2.5.0's --interfaces is not silently --interfaces-pattern (allow_abbrev=False)."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_interfaces_is_refused_on_the_command_line():
    result = run("--interfaces=lo")
    assert result.returncode == 2
    assert "unrecognized arguments: --interfaces=lo" in result.stderr


def test_whole_options_and_cluster_values_still_parse():
    """The cluster helper's --dtls-cluster=---;... (join_dash_values), -vv and --opt=value."""
    argv = [
        "--dtls-cluster", "---;127.0.0.1:5884;2",
        "--dtls-cluster", "127.0.0.1:5784;127.0.0.1:5884;1",
        "-vv", "--interfaces-pattern=127\\..*", "--no-dtls-cluster-mac",
    ]  # fmt: skip
    args = build_parser().parse_args(join_dash_values(argv))
    assert args.dtls_cluster == ["---;127.0.0.1:5884;2", "127.0.0.1:5784;127.0.0.1:5884;1"]
    assert args.verbose == 2 and args.interfaces_pattern == "127\\..*"
    assert args.dtls_cluster_mac is False


def test_k8s_cluster_outside_a_pod_is_one_clear_line():
    result = run("--no-external", "--no-ipv6", "--dtls-only", "--no-tcp", "--coap-port", "0",
                 "--k8s-dtls-cluster", ":45784;:45884;45884")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "k8s discovery: no CA file" in result.stderr


def test_cluster_options_are_checked():
    result = run("--dtls-cluster", "127.0.0.1:1;127.0.0.1:2;300")
    assert result.returncode == 2 and "node" in result.stderr


def test_max_resource_body_size_bounds_the_benchmark_rlen():
    from extplugtest.server.app import ExtendedServer

    config = ServerConfig()
    config.apply({"COAP.MAX_RESOURCE_BODY_SIZE": "100"})
    server = ExtendedServer(config, InterfaceSelection(), benchmark=True)
    assert server.benchmark.max_body_size == server.benchmark.fast_path.max_body == 100
