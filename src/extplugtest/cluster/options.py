"""Command-line options of the DTLS-CID cluster, with Californium's names (inventory §1.1, §5).

``add_cluster_options(parser)`` adds the option group; ``cluster_config(args)`` checks the
combination and returns a ``ClusterConfig``:

* static:  ``--dtls-cluster "<dtls>;<mgmt>;<node-id>,..."``; ``---`` as ``<dtls>`` marks another
  node, every entry with a dtls address is a node served by this process;
* dynamic: ``--dtls-cluster`` (own nodes) plus ``--dtls-cluster-group "<mgmt>,..."`` (the other
  nodes' management addresses), optionally ``--dtls-cluster-group-security <secret>``;
* k8s:     ``--k8s-dtls-cluster "<dtls>;<mgmt>;<external-mgmt-port>"``, management security
  from ``DTLS_CID_MGMT_IDENTITY`` / ``DTLS_CID_MGMT_SECRET_BASE64``.

Addresses: ``:port`` is the wildcard address, otherwise ``host:port`` (IPv6 in brackets).
Node ids must be 0..255: they are CID byte 0 (§5.5; Californium lets larger ids collide, §9.4).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from extplugtest.cluster._header import CLUSTER_MAX_NODE_ID
from extplugtest.cluster.management import ClusterTimers

__all__ = [
    "DYNAMIC_MGMT_IDENTITY",
    "ClusterConfig",
    "ClusterMode",
    "ClusterNodeSpec",
    "ClusterOptionError",
    "HostPort",
    "K8sClusterSpec",
    "ManagementSecurityConfig",
    "add_cluster_options",
    "cluster_config",
    "join_dash_values",
    "parse_host_port",
]

FOREIGN = "---"
DYNAMIC_MGMT_IDENTITY = "dtls-mgmt"  # §5.7


class ClusterOptionError(ValueError):
    """A cluster option, or a combination of them, that cannot work."""


class ClusterMode(Enum):
    NONE = "none"
    STATIC = "static"
    DYNAMIC = "dynamic"
    K8S = "k8s"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # "" = wildcard
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClusterNodeSpec:
    """One ``--dtls-cluster`` entry; ``dtls`` is None for another node (``---``)."""

    dtls: HostPort | None
    mgmt: HostPort
    node_id: int

    @property
    def local(self) -> bool:
        return self.dtls is not None


@dataclass(frozen=True, slots=True)
class K8sClusterSpec:
    dtls: HostPort
    mgmt: HostPort
    external_mgmt_port: int  # the management port of the other pods


@dataclass(frozen=True, slots=True)
class ManagementSecurityConfig:
    """PSK of the management DTLS channel (§5.7)."""

    identity: str
    secret: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    mode: ClusterMode = ClusterMode.NONE
    nodes: tuple[ClusterNodeSpec, ...] = ()
    group: tuple[HostPort, ...] = ()  # dynamic discovery scope
    k8s: K8sClusterSpec | None = None
    security: ManagementSecurityConfig | None = None
    mac: bool = False
    backward: bool = True
    batch: bool = True  # several cluster packets per datagram (cluster/_router.pyx)
    monitor: HostPort | None = None
    timers: ClusterTimers = field(default_factory=ClusterTimers)

    @property
    def enabled(self) -> bool:
        return self.mode is not ClusterMode.NONE

    @property
    def local_nodes(self) -> tuple[ClusterNodeSpec, ...]:
        """Nodes served by this process: one cluster DTLS endpoint each."""
        return tuple(node for node in self.nodes if node.local)

    @property
    def own_node_id(self) -> int | None:
        """The node id of the first local entry (k8s: known only after discovery)."""
        local = self.local_nodes
        return local[0].node_id if local else None

    @property
    def initial_nodes(self) -> int:
        """Dynamic mode: the whole group, this node included (Californium counted only the
        others, which made a 2-node group never start its timer, §9.9)."""
        return len(self.group) + 1


def parse_host_port(text: str) -> HostPort:
    """``:port`` (wildcard), ``host:port`` or ``[ipv6]:port``."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or (host.count(":") and not (host.startswith("[") and host.endswith("]"))):
        raise ClusterOptionError(f"'{text}': expected host:port, :port or [ipv6]:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ClusterOptionError(f"'{text}': bad port {port_text!r}") from None
    if not 0 < port < 65536:
        raise ClusterOptionError(f"'{text}': port outside 1..65535")
    return HostPort(host.strip("[]"), port)


def _node_id(text: str, where: str) -> int:
    try:
        node_id = int(text)
    except ValueError:
        raise ClusterOptionError(f"'{where}': bad node id {text!r}") from None
    if not 0 <= node_id <= CLUSTER_MAX_NODE_ID:
        raise ClusterOptionError(f"'{where}': node id outside 0..{CLUSTER_MAX_NODE_ID}")
    return node_id


def _split(values: list[str] | None) -> list[str]:
    """Repeated options with comma-separated lists, as picocli's ``split=","``."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def _cluster_node(entry: str) -> ClusterNodeSpec:
    parts = entry.split(";")
    if len(parts) != 3:
        raise ClusterOptionError(f"'{entry}': expected <dtls-interface>;<mgmt-interface>;<node-id>")
    dtls = None if parts[0].strip() == FOREIGN else parse_host_port(parts[0])
    return ClusterNodeSpec(dtls, parse_host_port(parts[1]), _node_id(parts[2].strip(), entry))


def _k8s_cluster(entry: str) -> K8sClusterSpec:
    parts = entry.split(";")
    if len(parts) != 3:
        raise ClusterOptionError(
            f"'{entry}': expected <dtls-interface>;<mgmt-interface>;<external-mgmt-port>"
        )
    try:
        port = int(parts[2])
    except ValueError:
        raise ClusterOptionError(f"'{entry}': bad external management port") from None
    if not 0 < port < 65536:
        raise ClusterOptionError(f"'{entry}': external management port outside 1..65535")
    return K8sClusterSpec(parse_host_port(parts[0]), parse_host_port(parts[1]), port)


def _k8s_security(env: Mapping[str, str]) -> ManagementSecurityConfig | None:
    identity = env.get("DTLS_CID_MGMT_IDENTITY")
    secret = env.get("DTLS_CID_MGMT_SECRET_BASE64")
    if not identity or not secret:
        return None
    try:
        return ManagementSecurityConfig(identity, base64.b64decode(secret, validate=True))
    except binascii.Error:
        raise ClusterOptionError("DTLS_CID_MGMT_SECRET_BASE64 is not base64") from None


def join_dash_values(argv: list[str]) -> list[str]:
    """``--dtls-cluster "---;..."`` as ``--dtls-cluster=---;...``: argparse takes a separate
    value that starts with ``-`` for an option, but the README's node 2 example starts with
    ``---`` (§5.8). Call this on argv before ``parse_args``."""
    out: list[str] = []
    values = iter(argv)
    for arg in values:
        if arg == "--dtls-cluster":
            value = next(values, None)
            if value is not None and value.startswith(FOREIGN):
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def add_cluster_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    flag = argparse.BooleanOptionalAction
    group = parser.add_argument_group("DTLS connection ID cluster")
    group.add_argument(
        "--dtls-cluster",
        action="append",
        metavar="DTLS;MGMT;NODE-ID[,...]",
        help="cluster nodes: <dtls-interface>;<mgmt-interface>;<node-id>; --- as "
        "<dtls-interface> for the other nodes (static mode, or with --dtls-cluster-group the "
        "own nodes of a dynamic cluster)",
    )
    group.add_argument(
        "--dtls-cluster-group",
        action="append",
        metavar="MGMT[,...]",
        help="dynamic mode: management interfaces of the other nodes",
    )
    group.add_argument(
        "--dtls-cluster-group-security",
        metavar="SECRET",
        help="protect the dynamic management channel with DTLS-PSK (identity dtls-mgmt); "
        "enables the cluster MAC by default",
    )
    group.add_argument(
        "--k8s-dtls-cluster",
        metavar="DTLS;MGMT;EXTERNAL-MGMT-PORT",
        help="k8s mode: nodes are the pods found through the Kubernetes API",
    )
    group.add_argument(
        "--dtls-cluster-backward",
        action=flag,
        default=True,
        help="send answers to forwarded records back through the receiving node (default: on)",
    )
    group.add_argument(
        "--dtls-cluster-batch",
        action=flag,
        default=True,
        help="several cluster packets to a node in one datagram (our extension; default: on; "
        "turn it off in a cluster with Californium nodes)",
    )
    group.add_argument(
        "--dtls-cluster-mac",
        action=flag,
        default=None,
        help="8-byte MAC on forwarded/backwarded records (default: on with a secured "
        "management channel; needs one)",
    )
    group.add_argument(
        "--k8s-monitor",
        metavar="ADDR",
        help="plain-HTTP /alive and /ready endpoints, e.g. :8080",
    )
    return group


def cluster_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> ClusterConfig:
    """The ClusterConfig of parsed *args*; raises ClusterOptionError (exit with usage)."""
    env = os.environ if env is None else env
    nodes = tuple(_cluster_node(entry) for entry in _split(args.dtls_cluster))
    group = tuple(parse_host_port(entry) for entry in _split(args.dtls_cluster_group))
    monitor = parse_host_port(args.k8s_monitor) if args.k8s_monitor else None
    secret = args.dtls_cluster_group_security
    if args.k8s_dtls_cluster:
        if nodes or group or secret is not None:
            raise ClusterOptionError(
                "--k8s-dtls-cluster excludes --dtls-cluster, --dtls-cluster-group and "
                "--dtls-cluster-group-security"
            )
        mode = ClusterMode.K8S
        security = _k8s_security(env)
    elif nodes:
        ids = [node.node_id for node in nodes]
        if len(set(ids)) != len(ids):
            raise ClusterOptionError("--dtls-cluster: node ids must be unique")
        if not any(node.local for node in nodes):
            raise ClusterOptionError("--dtls-cluster: no entry with a dtls interface")
        mode = ClusterMode.DYNAMIC if group else ClusterMode.STATIC
        if secret is not None and not group:
            raise ClusterOptionError("--dtls-cluster-group-security needs --dtls-cluster-group")
        if secret == "":
            raise ClusterOptionError("--dtls-cluster-group-security: empty secret")
        security = (
            ManagementSecurityConfig(DYNAMIC_MGMT_IDENTITY, secret.encode("utf-8"))
            if secret is not None
            else None
        )
        if group:
            # Other nodes listed with --- join a dynamic cluster's discovery scope.
            group += tuple(n.mgmt for n in nodes if not n.local and n.mgmt not in group)
    else:
        if group or secret is not None:
            raise ClusterOptionError("--dtls-cluster-group needs --dtls-cluster")
        return ClusterConfig(monitor=monitor)
    mac = security is not None if args.dtls_cluster_mac is None else args.dtls_cluster_mac
    if mac and security is None:
        raise ClusterOptionError("--dtls-cluster-mac needs a secured management channel")
    return ClusterConfig(
        mode=mode,
        nodes=nodes,
        group=group,
        k8s=_k8s_cluster(args.k8s_dtls_cluster) if mode is ClusterMode.K8S else None,
        security=security,
        mac=mac,
        backward=args.dtls_cluster_backward,
        batch=args.dtls_cluster_batch,
        monitor=monitor,
    )
