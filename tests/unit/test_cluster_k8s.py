"""k8s pod discovery (extplugtest.cluster.k8s, inventory §5.9) against a local HTTPS API server
with a self-signed certificate, and the /alive and /ready monitor (§5.10)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from extplugtest.cluster import k8s, monitor
from extplugtest.cluster.k8s import (
    K8sApiSettings,
    K8sDiscoverClient,
    K8sError,
    keep_scope_fresh,
    node_id_from_hostname,
    parse_pods,
)
from extplugtest.cluster.management import ClusterManager
from extplugtest.cluster.monitor import MonitorService

NAMESPACE = "cali"
OWN_POD = "cf-extserver-a-1"
REVISION = "cf-extserver-a-7d9f8c6b5"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.test-token"


def pod(name: str, ip: str | None, phase: str = "Running", ready: bool = True, **extra: Any):
    """A v1 Pod as the API server returns it (trimmed to the fields that matter)."""
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
        ],
        "hostIP": "192.168.49.2",
        "startTime": "2026-01-01T00:00:00Z",
    }
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    status.update(extra)
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": f"uid-{name}",
            "labels": {
                "app": "cf-extserver",
                "controller-revision-hash": REVISION,
                "statefulset.kubernetes.io/pod-name": name,
                "initialDtlsClusterNodes": "3",
            },
        },
        "spec": {"containers": [{"name": "cf-extserver", "image": "extplugtest:latest"}]},
        "status": status,
    }


PODS = [
    pod("cf-extserver-a-0", "10.1.0.10"),
    pod(OWN_POD, "10.1.0.11"),
    pod("cf-extserver-a-2", "10.1.0.12", ready=False),  # starting: not ready, but Running
    pod("cf-extserver-a-3", None, phase="Pending", ready=False),
    pod("cf-extserver-a-4", "10.1.0.14", phase="Failed", ready=False),
]
# podIP missing, only podIPs (dual-stack shape)
PODS.append(pod("cf-extserver-a-5", None, podIPs=[{"ip": "10.1.0.15"}, {"ip": "fd00::15"}]))


class FakeApiServer:
    """An HTTPS server answering GET pods and pods?labelSelector=... like the API server."""

    def __init__(self, tmp_path: Path) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.status = 200
        self.body_size = 0  # > 0: every answer is a PodList padded to that many bytes
        self.sent = 0  # bytes of the padded answer written before the client hung up
        self.streamed = threading.Event()
        self.cert_file, key_file = self._self_signed(tmp_path)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Authorization")))
                if server.body_size:
                    server.stream(self)
                    return
                body, status = server.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, key_file)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_file, key_file

    def answer(self, path: str) -> tuple[dict[str, Any], int]:
        if self.status != 200:
            return {"kind": "Status", "apiVersion": "v1", "code": self.status}, self.status
        prefix = f"/api/v1/namespaces/{NAMESPACE}/pods"
        if path == f"{prefix}?labelSelector=controller-revision-hash%3D{REVISION}":
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "12345"},
                "items": [{k: v for k, v in p.items() if k != "kind"} for p in PODS],
            }, 200
        if path == f"{prefix}?labelSelector=app%3Dcf-extserver":
            return {"kind": "PodList", "apiVersion": "v1", "items": []}, 200
        for p in PODS:
            if path == f"{prefix}/{p['metadata']['name']}":
                return p, 200
        return {"kind": "Status", "apiVersion": "v1", "code": 404}, 404

    def stream(self, handler: BaseHTTPRequestHandler) -> None:
        """A valid PodList of ``body_size`` bytes (no items, a long padding string), written
        in 64 KiB pieces until it is complete or the client stops reading and hangs up."""
        head, tail = b'{"kind": "PodList", "apiVersion": "v1", "items": [], "pad": "', b'"}'
        piece = b"x" * 65536
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(self.body_size))
        handler.end_headers()
        sent = 0
        try:
            handler.wfile.write(head)
            sent = len(head)
            for _ in range(self.body_size // len(piece) + 1):
                left = self.body_size - len(tail) - sent
                if left <= 0:
                    break
                sent += handler.wfile.write(piece[:left]) or 0
            handler.wfile.write(tail)
            sent += len(tail)
        except OSError:  # (ssl.SSLError too) the client hung up
            handler.close_connection = True
        finally:
            self.sent = sent
            self.streamed.set()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeApiServer]:
    server = FakeApiServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def service_account(tmp_path: Path, api: FakeApiServer) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(TOKEN + "\n")
    (directory / "namespace").write_text(NAMESPACE)
    (directory / "ca.crt").write_bytes(api.cert_file.read_bytes())
    return directory


def settings_for(
    api: FakeApiServer, service_account: Path, tmp_path: Path, **env: str
) -> K8sApiSettings:
    return K8sApiSettings.from_environment(
        {"KUBECTL_HOST": f"127.0.0.1:{api.port}", **env},
        service_account_dir=service_account,
        custom_trust_file=tmp_path / "absent.pem",
        hostname=OWN_POD,
    )


def test_discovery(api: FakeApiServer, service_account: Path, tmp_path: Path) -> None:
    settings = settings_for(api, service_account, tmp_path)
    assert settings.namespace == NAMESPACE and settings.host == "127.0.0.1"
    client = K8sDiscoverClient(settings, management_port=5884)
    assert client.node_id == 1
    # Running pods other than this one; not-ready pods count (readiness waits for the cluster).
    assert client.discover_scope() == [
        ("10.1.0.10", 5884),
        ("10.1.0.12", 5884),
        ("10.1.0.15", 5884),
    ]
    assert client.initial_nodes() == 3
    paths = [path for path, _ in api.requests]
    assert paths == [
        f"/api/v1/namespaces/{NAMESPACE}/pods/{OWN_POD}",
        f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=controller-revision-hash%3D{REVISION}",
    ]
    assert {auth for _, auth in api.requests} == {f"Bearer {TOKEN}"}


def test_environment_overrides(api: FakeApiServer, service_account: Path, tmp_path: Path) -> None:
    settings = settings_for(
        api,
        service_account,
        tmp_path,
        KUBECTL_TOKEN="from-env",
        KUBECTL_SELECTOR="app=cf-extserver",
        KUBECTL_NODE_ID="7",
    )
    client = K8sDiscoverClient(settings, management_port=5884)
    assert client.node_id == 7
    assert client.discover_scope() == []
    assert api.requests == [
        (f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app%3Dcf-extserver", "Bearer from-env")
    ]


def test_untrusted_server_is_refused(
    api: FakeApiServer, service_account: Path, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = FakeApiServer._self_signed(tmp_path / "other")[0]
    (service_account / "ca.crt").write_bytes(other.read_bytes())
    client = K8sDiscoverClient(settings_for(api, service_account, tmp_path), 5884)
    with pytest.raises(K8sError, match="CERTIFICATE_VERIFY_FAILED"):
        client.discover_scope()
    assert client.failures == 1


def test_hostname_is_verified(api: FakeApiServer, service_account: Path, tmp_path: Path) -> None:
    settings = K8sApiSettings.from_environment(
        {"KUBECTL_HOST": f"127.0.0.2:{api.port}"},  # not in the certificate
        service_account_dir=service_account,
        custom_trust_file=tmp_path / "absent.pem",
        hostname=OWN_POD,
    )
    with pytest.raises(K8sError):
        K8sDiscoverClient(settings, 5884).own_pod()


def test_api_errors(api: FakeApiServer, service_account: Path, tmp_path: Path) -> None:
    api.status = 403
    client = K8sDiscoverClient(settings_for(api, service_account, tmp_path), 5884)
    with pytest.raises(K8sError, match="HTTP 403"):
        client.discover_scope()


def test_no_ca_no_trust(service_account: Path, tmp_path: Path) -> None:
    (service_account / "ca.crt").unlink()
    settings = K8sApiSettings.from_environment(
        {}, service_account_dir=service_account, custom_trust_file=tmp_path / "x", hostname="n-1"
    )
    with pytest.raises(K8sError, match="refusing"):
        K8sDiscoverClient(settings, 5884)


def test_keep_scope_fresh(api: FakeApiServer, service_account: Path, tmp_path: Path) -> None:
    client = K8sDiscoverClient(settings_for(api, service_account, tmp_path), 5884)
    manager = ClusterManager(client.node_id)

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keep_scope_fresh(client, manager, stop, interval=0.01))
        for _ in range(500):
            if manager.scope:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(run())
    assert manager.scope == {("10.1.0.10", 5884), ("10.1.0.12", 5884), ("10.1.0.15", 5884)}


def test_an_answer_above_the_size_cap_is_an_error(
    api: FakeApiServer, service_account: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most MAX_RESPONSE_BYTES + 1 bytes of an answer are read: a larger one, though valid
    JSON, is the module's K8sError (counted in ``failures``), and the client hangs up instead
    of reading on, so the server cannot deliver the rest. The cap is lowered to 64 KiB here;
    the answer is 64 MiB."""
    assert k8s.MAX_RESPONSE_BYTES == 8 * 1024 * 1024
    cap = 64 * 1024
    monkeypatch.setattr(k8s, "MAX_RESPONSE_BYTES", cap)
    api.body_size = 64 * 1024 * 1024
    settings = settings_for(api, service_account, tmp_path, KUBECTL_SELECTOR="app=cf-extserver")
    client = K8sDiscoverClient(settings, management_port=5884)  # one GET: the pod list
    with pytest.raises(K8sError, match=f"answer above {cap} bytes"):
        client.discover_scope()
    assert (client.requests, client.failures) == (1, 1)
    assert api.streamed.wait(10)
    assert cap < api.sent < api.body_size  # cut off: the client stopped reading


def test_parse_pods_shapes() -> None:
    single = parse_pods(pod("x-0", "10.0.0.1"))
    assert single[0].name == "x-0" and single[0].ready and single[0].ip == "10.0.0.1"
    assert parse_pods({"kind": "PodList", "apiVersion": "v1", "items": None}) == []
    with pytest.raises(K8sError):
        parse_pods({"kind": "Status", "apiVersion": "v1"})


def test_node_id_from_hostname() -> None:
    assert node_id_from_hostname("cf-extserver-b-12") == 12
    assert node_id_from_hostname("whatever", "3") == 3
    for bad in ("cf-extserver", "cf-extserver-x", "cf-extserver-256"):
        with pytest.raises(K8sError):
            node_id_from_hostname(bad)


# -- /alive and /ready ------------------------------------------------------------------------


def test_monitor() -> None:
    ready = {"cluster": False}

    async def request(port: int, raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer

    async def run() -> None:
        monitor = MonitorService([lambda: ready["cluster"]])
        await monitor.start("127.0.0.1", 0)
        try:
            get = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
            alive = await request(monitor.port, get % b"/alive")
            assert alive.startswith(b"HTTP/1.1 200 ") and alive.endswith(b"\r\n\r\nOK\n")
            down = await request(monitor.port, get % b"/ready")
            assert down.startswith(b"HTTP/1.1 503 ") and down.endswith(b"DOWN\n")
            ready["cluster"] = True
            up = await request(monitor.port, b"HEAD /ready HTTP/1.0\r\n\r\n")
            assert up.startswith(b"HTTP/1.1 200 ")
            assert (await request(monitor.port, get % b"/other")).startswith(b"HTTP/1.1 404 ")
            assert (await request(monitor.port, b"garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            monitor.alive = False
            stopped = await request(monitor.port, get % b"/alive")
            assert stopped.startswith(b"HTTP/1.1 503 ") and stopped.endswith(b"STOPPED\n")
        finally:
            await monitor.close()

    asyncio.run(run())


def test_monitor_connection_bound() -> None:
    """At most MAX_CONNECTIONS (64) connections are handled at a time (each may wait
    REQUEST_TIMEOUT for its request): one more is closed at once, its request unanswered, and
    counted in ``rejected``; when a handled one ends, its place is free again."""
    bound = monitor.MAX_CONNECTIONS
    assert bound == 64
    get = b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n"

    async def ask(port: int) -> bytes:
        """A complete request on a new connection: the answer, b"" if closed unanswered."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(get)
            return await asyncio.wait_for(reader.read(), 5)
        except ConnectionError:  # (written after the server closed: a reset)
            return b""
        finally:
            writer.close()

    async def settle(service: MonitorService, connections: int) -> None:
        for _ in range(500):
            if service._connections == connections:
                return
            await asyncio.sleep(0.002)
        raise AssertionError(f"{service._connections} connections, not {connections}")

    async def run() -> None:
        service = MonitorService()
        await service.start("127.0.0.1", 0)
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(bound):  # silent: each handler waits for its request
                held.append(await asyncio.open_connection("127.0.0.1", service.port))
            await settle(service, bound)
            for extra in range(1, 4):
                assert await ask(service.port) == b""
                assert service._connections == bound and service.rejected == extra
            assert service.requests == 0
            reader, writer = held.pop()  # one handled connection asks and ends
            writer.write(get)
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 ")
            writer.close()
            await settle(service, bound - 1)
            assert (await ask(service.port)).startswith(b"HTTP/1.1 200 ")
            assert service.rejected == 3 and service.requests == 2
        finally:
            for _, writer in held:
                writer.close()
            try:
                await settle(service, 0)
            finally:
                await service.close()

    asyncio.run(run())
