"""Cluster command-line options (extplugtest.cluster.options): Californium's syntax
(inventory §1.1, §5.8) and the checks on their combination."""

from __future__ import annotations

import argparse
import base64

import pytest

from extplugtest.cluster.options import (
    ClusterConfig,
    ClusterMode,
    ClusterOptionError,
    HostPort,
    add_cluster_options,
    cluster_config,
    join_dash_values,
    parse_host_port,
)


def parse(*argv: str, env: dict[str, str] | None = None) -> ClusterConfig:
    parser = argparse.ArgumentParser()
    add_cluster_options(parser)
    return cluster_config(parser.parse_args(join_dash_values(list(argv))), env or {})


def test_no_cluster() -> None:
    config = parse()
    assert config.mode is ClusterMode.NONE and not config.enabled
    assert parse("--k8s-monitor", ":8080").monitor == HostPort("", 8080)


def test_static_readme_example() -> None:
    config = parse("--dtls-cluster", ":15784;localhost:15884;1,---;localhost:25884;2")
    assert config.mode is ClusterMode.STATIC
    assert config.own_node_id == 1
    assert [n.node_id for n in config.local_nodes] == [1]
    assert config.nodes[1].dtls is None and config.nodes[1].mgmt == HostPort("localhost", 25884)
    assert config.local_nodes[0].dtls == HostPort("", 15784)
    assert config.backward and not config.mac and config.security is None


def test_static_readme_example_node_2() -> None:
    config = parse("--dtls-cluster", "---;localhost:15884;1,:25784;localhost:25884;2")
    assert config.own_node_id == 2
    assert join_dash_values(["--dtls-cluster", "---;h:1;1", "-v"]) == [
        "--dtls-cluster=---;h:1;1",
        "-v",
    ]


def test_dynamic_readme_example() -> None:
    config = parse(
        "--dtls-cluster",
        ":15784;localhost:15884;1",
        "--dtls-cluster-group=localhost:25884,localhost:35884",
        "--dtls-cluster-group-security=topSecret!",
        "--no-dtls-cluster-backward",
    )
    assert config.mode is ClusterMode.DYNAMIC
    assert config.group == (HostPort("localhost", 25884), HostPort("localhost", 35884))
    assert config.initial_nodes == 3
    assert config.security is not None and config.security.identity == "dtls-mgmt"
    assert config.security.secret == b"topSecret!"
    assert config.mac and not config.backward
    assert "topSecret" not in repr(config)
    two = parse("--dtls-cluster", ":15784;[::1]:15884;1", "--dtls-cluster-group", "[::1]:25884")
    assert two.initial_nodes == 2 and two.group == (HostPort("::1", 25884),)
    assert not parse(
        "--dtls-cluster",
        ":1;h:2;1",
        "--dtls-cluster-group",
        "h:3",
        "--dtls-cluster-group-security",
        "s",
        "--no-dtls-cluster-mac",
    ).mac


def test_k8s_mode() -> None:
    secret = base64.b64encode(b"s" * 32).decode()
    env = {"DTLS_CID_MGMT_IDENTITY": "cid-cluster-manager", "DTLS_CID_MGMT_SECRET_BASE64": secret}
    config = parse("--k8s-dtls-cluster", ":5784;:5884;5884", "--k8s-monitor", ":8080", env=env)
    assert config.mode is ClusterMode.K8S
    assert config.k8s is not None and config.k8s.external_mgmt_port == 5884
    assert config.k8s.mgmt == HostPort("", 5884)
    assert config.security is not None and config.security.secret == b"s" * 32
    assert config.mac
    assert not parse("--k8s-dtls-cluster", ":5784;:5884;5884").mac


@pytest.mark.parametrize(
    "argv",
    [
        ["--dtls-cluster", ":1;h:2"],
        ["--dtls-cluster", ":1;h:2;256"],
        ["--dtls-cluster", ":1;h:2;x"],
        ["--dtls-cluster", "---;h:2;1"],
        ["--dtls-cluster", ":1;h:2;1,:3;h:4;1"],
        ["--dtls-cluster", ":1;h:2;1", "--dtls-cluster-mac"],
        ["--dtls-cluster", ":1;h:2;1", "--dtls-cluster-group-security", "s"],
        ["--dtls-cluster-group", "h:1"],
        ["--k8s-dtls-cluster", ":1;:2;3", "--dtls-cluster", ":1;h:2;1"],
        ["--k8s-dtls-cluster", ":1;:2;70000"],
        ["--k8s-dtls-cluster", ":1;:2;3", "--dtls-cluster-mac"],
        ["--dtls-cluster", ":0;h:2;1"],
    ],
)
def test_rejected(argv: list[str]) -> None:
    with pytest.raises(ClusterOptionError):
        parse(*argv)


def test_parse_host_port() -> None:
    assert parse_host_port(":5684") == HostPort("", 5684)
    assert parse_host_port("10.0.0.1:1") == HostPort("10.0.0.1", 1)
    assert parse_host_port("[fe80::1]:5884") == HostPort("fe80::1", 5884)
    assert str(HostPort("fe80::1", 5884)) == "[fe80::1]:5884"
    for bad in ("5684", "fe80::1:5884", "h:x", "h:0"):
        with pytest.raises(ClusterOptionError):
            parse_host_port(bad)
