"""Cluster node discovery through the Kubernetes API (inventory §5.9), standard library only.

Every pod of the cluster asks the API server for the pods that carry its own value of the
selector label (default ``controller-revision-hash``, so the old and the new StatefulSet of a
blue/green update form separate clusters), and pings their management ports
(``ClusterManager.set_scope``). Its node id is the StatefulSet ordinal at the end of its pod
name (``cf-extserver-2`` -> 2) unless ``KUBECTL_NODE_ID`` says otherwise.

Requests (GET only, ``Authorization: Bearer <service-account token>``):

1. ``/api/v1/namespaces/{ns}/pods/{own pod}``: the own labels;
2. ``/api/v1/namespaces/{ns}/pods?labelSelector=<label>%3D<own value>``: the cluster.

Where we differ from Californium, on purpose:

* no trust-all fallback: without a CA file the client refuses to talk (the token would go to
  whoever answers);
* an unset ``KUBECTL_TOKEN`` still uses the service-account token file, which is re-read for
  every request (projected tokens rotate);
* only pods in phase ``Running`` join the scope (a ``Succeeded``/``Failed`` pod's IP may already
  belong to someone else). Readiness is *not* required: a pod becomes ready only once its
  cluster is, so requiring it would deadlock the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from extplugtest.cluster._header import CLUSTER_MAX_NODE_ID
from extplugtest.cluster.management import Address, ClusterManager, normalize_address

__all__ = [
    "DEFAULT_SELECTOR_LABEL",
    "INITIAL_NODES_LABEL",
    "K8sApiSettings",
    "K8sDiscoverClient",
    "K8sError",
    "Pod",
    "keep_scope_fresh",
    "node_id_from_hostname",
    "parse_pods",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
CUSTOM_TRUST_FILE = Path("/etc/certs/https_k8s_client_trust.pem")
DEFAULT_API_HOST = "kubernetes.default.svc"
DEFAULT_SELECTOR_LABEL = "controller-revision-hash"
INITIAL_NODES_LABEL = "initialDtlsClusterNodes"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
DISCOVER_INTERVAL = 10.0  # at most one pod list per 10 s (§5.9)
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a PodList of a few hundred pods is well below


class K8sError(RuntimeError):
    """The API server could not be asked, or its answer makes no sense."""


@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    labels: Mapping[str, str]
    phase: str
    ip: str | None
    ready: bool


def parse_pods(document: Mapping[str, Any]) -> list[Pod]:
    """The pods of a ``Pod`` or ``PodList`` document (API version v1)."""
    kind = document.get("kind")
    if document.get("apiVersion") != "v1":
        log.warning("k8s: unexpected apiVersion %r", document.get("apiVersion"))
    if kind == "Pod":
        items = [document]
    elif kind == "PodList":
        items = document.get("items") or []
    else:
        raise K8sError(f"expected a Pod or PodList, got kind {kind!r}")
    return [_parse_pod(item) for item in items if isinstance(item, Mapping)]


def _parse_pod(item: Mapping[str, Any]) -> Pod:
    metadata = item.get("metadata") or {}
    status = item.get("status") or {}
    ip = status.get("podIP")
    if not ip:
        ips = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
        ip = ips[0] if ips else None
    ready = any(
        condition.get("type") == "Ready" and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )
    return Pod(
        name=str(metadata.get("name", "")),
        labels=dict(metadata.get("labels") or {}),
        phase=str(status.get("phase", "")),
        ip=ip,
        ready=ready,
    )


def node_id_from_hostname(hostname: str, env_value: str | None = None) -> int:
    """``KUBECTL_NODE_ID``, else the StatefulSet ordinal after the last ``-`` of the pod name."""
    if env_value:
        text = env_value
    elif "-" in hostname:
        text = hostname.rsplit("-", 1)[1]
    else:
        raise K8sError(f"node-id not available: no ordinal in hostname {hostname!r}")
    try:
        node_id = int(text)
    except ValueError:
        raise K8sError(f"node-id not available from {text!r}") from None
    if not 0 <= node_id <= CLUSTER_MAX_NODE_ID:
        raise K8sError(f"node-id {node_id} outside 0..{CLUSTER_MAX_NODE_ID}")
    return node_id


@dataclass(frozen=True, slots=True)
class K8sApiSettings:
    """Where and how to ask the API server; ``from_environment`` reads the pod's view."""

    host: str = DEFAULT_API_HOST
    port: int = 443
    namespace: str = "default"
    token: str | None = None  # a fixed token (KUBECTL_TOKEN); wins over token_file
    token_file: Path | None = SERVICE_ACCOUNT_DIR / "token"
    ca_file: Path | None = SERVICE_ACCOUNT_DIR / "ca.crt"
    hostname: str = field(default_factory=socket.gethostname)  # the own pod's name
    selector_label: str = DEFAULT_SELECTOR_LABEL
    selector: str | None = None  # KUBECTL_SELECTOR: a complete label selector
    node_id: str | None = None  # KUBECTL_NODE_ID

    @classmethod
    def from_environment(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        service_account_dir: Path = SERVICE_ACCOUNT_DIR,
        custom_trust_file: Path = CUSTOM_TRUST_FILE,
        hostname: str | None = None,
    ) -> K8sApiSettings:
        env = os.environ if env is None else env
        host, port = DEFAULT_API_HOST, 443
        if env.get("KUBECTL_HOST"):
            host, _, port_text = env["KUBECTL_HOST"].rpartition(":")
            if not host or "]" in port_text:
                host, port_text = env["KUBECTL_HOST"], "443"
            host, port = host.strip("[]"), int(port_text)
        namespace = env.get("KUBECTL_NAMESPACE")
        namespace_file = service_account_dir / "namespace"
        if not namespace and namespace_file.is_file():
            namespace = namespace_file.read_text().strip()
        ca_file: Path | None = None
        for candidate in (custom_trust_file, service_account_dir / "ca.crt"):
            if candidate.is_file():
                ca_file = candidate
                break
        return cls(
            host=host,
            port=port,
            namespace=namespace or "default",
            token=env.get("KUBECTL_TOKEN") or None,
            token_file=service_account_dir / "token",
            ca_file=ca_file,
            hostname=hostname or socket.gethostname(),
            selector_label=env.get("KUBECTL_SELECTOR_LABEL") or DEFAULT_SELECTOR_LABEL,
            selector=env.get("KUBECTL_SELECTOR") or None,
            node_id=env.get("KUBECTL_NODE_ID") or None,
        )


class K8sDiscoverClient:
    """The discovery scope and node id of this pod (Californium's K8sDiscoverClient).

    Blocking calls (``http.client``) with a 5 s connect and 10 s read timeout; from asyncio
    use ``discover_scope_async`` or ``keep_scope_fresh``.
    """

    def __init__(self, settings: K8sApiSettings, management_port: int) -> None:
        if settings.ca_file is None:
            raise K8sError(
                "no CA file for the k8s API server (refusing to trust all): run in a pod with a "
                f"service account, or put the CA into {CUSTOM_TRUST_FILE}"
            )
        self.settings = settings
        self.management_port = management_port
        self.node_id = node_id_from_hostname(settings.hostname, settings.node_id)
        self._context = ssl.create_default_context(cafile=str(settings.ca_file))
        self._own_labels: Mapping[str, str] | None = None
        self.requests = 0
        self.failures = 0

    # -- queries ---------------------------------------------------------------------------

    def own_pod(self) -> Pod:
        pods = parse_pods(self._get(self._pods_path() + "/" + quote(self.settings.hostname, "")))
        if len(pods) != 1:
            raise K8sError("own pod not found")
        self._own_labels = pods[0].labels
        return pods[0]

    def label_selector(self) -> str:
        if self.settings.selector:
            return self.settings.selector
        labels = self._own_labels if self._own_labels is not None else self.own_pod().labels
        value = labels.get(self.settings.selector_label)
        if value is None:
            raise K8sError(f"own pod has no label {self.settings.selector_label!r}")
        return f"{self.settings.selector_label}={value}"

    def initial_nodes(self) -> int:
        """The own pod's ``initialDtlsClusterNodes`` label (the replica count), else 1."""
        labels = self._own_labels if self._own_labels is not None else self.own_pod().labels
        try:
            return max(1, int(labels.get(INITIAL_NODES_LABEL, "1")))
        except ValueError:
            return 1

    def list_pods(self) -> list[Pod]:
        selector = quote(self.label_selector(), safe="")
        return parse_pods(self._get(f"{self._pods_path()}?labelSelector={selector}"))

    def discover_scope(self) -> list[Address]:
        """Management addresses of the other running pods of this cluster."""
        return [
            normalize_address((pod.ip, self.management_port))
            for pod in self.list_pods()
            if pod.ip and pod.name != self.settings.hostname and pod.phase == "Running"
        ]

    async def discover_scope_async(self) -> list[Address]:
        return await asyncio.to_thread(self.discover_scope)

    # -- HTTP ------------------------------------------------------------------------------

    def _pods_path(self) -> str:
        return f"/api/v1/namespaces/{quote(self.settings.namespace, '')}/pods"

    def _token(self) -> str | None:
        if self.settings.token:
            return self.settings.token
        path = self.settings.token_file
        if path is not None and path.is_file():
            return path.read_text().strip() or None
        return None

    def _get(self, path: str) -> Mapping[str, Any]:
        self.requests += 1
        headers = {"Accept": "application/json"}
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection = http.client.HTTPSConnection(
            self.settings.host, self.settings.port, context=self._context, timeout=CONNECT_TIMEOUT
        )
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(READ_TIMEOUT)
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read(MAX_RESPONSE_BYTES + 1)
            if response.status != 200:
                raise K8sError(f"GET {path}: HTTP {response.status} {response.reason}")
            if len(body) > MAX_RESPONSE_BYTES:
                raise K8sError(f"GET {path}: answer above {MAX_RESPONSE_BYTES} bytes")
            document = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.failures += 1
            raise K8sError(f"GET {path}: {exc}") from exc
        except K8sError:
            self.failures += 1
            raise
        finally:
            connection.close()
        if not isinstance(document, Mapping):
            self.failures += 1
            raise K8sError(f"GET {path}: not a JSON object")
        return document


async def keep_scope_fresh(
    client: K8sDiscoverClient,
    manager: ClusterManager,
    stop: asyncio.Event,
    interval: float = DISCOVER_INTERVAL,
) -> None:
    """Refresh the manager's scope from the API every *interval* seconds until *stop* is set.
    A failed refresh keeps the last scope (the nodes keep pinging each other meanwhile)."""
    while not stop.is_set():
        try:
            manager.set_scope(await client.discover_scope_async())
        except K8sError as exc:
            log.warning("k8s discovery failed: %s", exc)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
