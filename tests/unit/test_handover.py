"""The graceful handover over HTTPS (extplugtest.server.handover; inventory §1.1, §5.10, §5.11,
§6.6): the /restore server and the download client on loopback, mutual TLS with the demo PKI
and a throwaway CA, the request bounds, the options, the k8s peer selection over PodList
documents, and the HTTP request reader the server shares with the monitor (property tests)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st

from extplugtest.cluster import monitor
from extplugtest.cluster.k8s import K8sApiSettings, K8sError, Pod, parse_pods
from extplugtest.cluster.monitor import (
    BadRequest,
    HttpRequest,
    parse_header_line,
    parse_request_line,
    read_request,
)
from extplugtest.cluster.options import HostPort
from extplugtest.coap.transport_tcp import demo_certs
from extplugtest.dtls._record import AEAD_FOR_CIPHER_SUITE
from extplugtest.dtls.persistence import (
    MAX_STORE_SIZE,
    SavedConnection,
    SavedStore,
    decode_store,
    encode_store,
)
from extplugtest.server import handover
from extplugtest.server.handover import (
    HandoverOptionError,
    RestoreConfig,
    RestoreError,
    RestoreServer,
    add_restore_options,
    download_store,
    find_restore_peer,
    restore_client_context,
    restore_config,
    restore_from_peer,
    restore_payload,
    restore_peer_name,
    restore_selector,
    restore_server_context,
    select_restore_peer,
)

LOOPBACK = "127.0.0.1"


def connection(
    number: int, age: float = 1.5, identity: bytes = b"Client_identity"
) -> SavedConnection:
    return SavedConnection(
        address=(LOOPBACK, 40000 + number), age=age, session_age=30.25,
        read_cid=number.to_bytes(6, "big"), suite_code=0xC0A8, session_id=b"s" * 32,
        master_secret=b"m" * 48, identity=identity, peer_certificate_type=None,
        extended_master_secret=True, secure_renegotiation=True, cid_negotiated=True,
        resumed=False, epoch=1, aead=AEAD_FOR_CIPHER_SUITE[0xC0A8], write_key=b"w" * 16,
        write_iv=b"wiv!", read_key=b"r" * 16, read_iv=b"riv!", write_cid=b"",
        cipher_read_cid=number.to_bytes(6, "big"), anti_replay=True, next_write_seq=17,
        last_sealed=(1 << 48) | 16, window_highest=12, window_bitmap=0b1011,
    )  # fmt: skip


def store_bytes(count: int = 3, **kwargs: Any) -> bytes:
    return encode_store(
        {"dtls://0.0.0.0:5784": [connection(n, **kwargs) for n in range(count)]}, 1.8e9
    )


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


class Provider:
    """*provide* and *on_served* of a RestoreServer that count their calls."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.provided = 0
        self.served = asyncio.Event()
        self.served_calls = 0

    def provide(self) -> bytes:
        self.provided += 1
        return self.payload

    def on_served(self) -> None:
        self.served_calls += 1
        self.served.set()


async def started(provider: Provider, context: ssl.SSLContext | None = None) -> RestoreServer:
    server = RestoreServer(provider.provide, provider.on_served, context)
    await server.start(LOOPBACK, 0)
    return server


async def tls_request(
    port: int, raw: bytes, context: ssl.SSLContext | None = None, wait: float = 10
) -> bytes:
    """*raw* over mutual TLS (the demo client certificate); the whole answer: up to the
    end of the input, or of the Content-Length body (the server waits for our close before
    it takes a /restore as delivered)."""
    reader, writer = await asyncio.open_connection(
        LOOPBACK, port, ssl=context or restore_client_context()
    )
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(_answer(reader), wait)
    finally:
        writer.close()


async def _answer(reader: asyncio.StreamReader) -> bytes:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        return error.partial
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return head + await reader.readexactly(int(value))
    return head + await reader.read()


# -- a throwaway PKI --------------------------------------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def throwaway_pki(directory: Path, server: bool) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a fresh CA and a client (or server) certificate from it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("throwaway-ca"))
        .issuer_name(_name("throwaway-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("cf-server" if server else "cf-client"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# -- the server and the client ----------------------------------------------------------------


def test_download_gets_the_store_of_the_callback_once() -> None:
    """The client gets exactly the store *provide* made (one call), *on_served* runs once
    after it went out; a second /restore is 410 Gone (final: not retried) and changes
    nothing."""
    payload = store_bytes(3)

    async def run() -> None:
        provider = Provider(payload)
        server = await started(provider)
        try:
            assert not server.handing_over and not server.served
            store = await download_store(LOOPBACK, server.port)
            assert store == decode_store(payload) and len(store) == 3
            await asyncio.wait_for(provider.served.wait(), 10)
            assert (provider.provided, provider.served_calls) == (1, 1)
            assert server.handing_over and server.served
            with pytest.raises(RestoreError, match="410") as caught:
                await download_store(LOOPBACK, server.port)
            assert one_line(str(caught.value))
            assert (provider.provided, provider.served_calls) == (1, 1)
            assert server.requests == 2  # the 410 was not retried
            raw = await tls_request(server.port, b"GET /restore HTTP/1.1\r\nHost: x\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 410 Gone\r\n")
        finally:
            await server.close()

    asyncio.run(run())


def test_the_answer_is_a_plain_octet_stream_with_a_length() -> None:
    payload = store_bytes(1)

    async def run() -> None:
        provider = Provider(payload)
        server = await started(provider)
        try:
            raw = await tls_request(server.port, b"GET /restore?x=1 HTTP/1.0\r\n\r\n")
        finally:
            await server.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"HTTP/1.1 200 OK"
        assert b"Content-Type: application/octet-stream" in lines
        assert f"Content-Length: {len(payload)}".encode() in lines
        assert body == payload  # unencrypted: no password wrapper byte

    asyncio.run(run())


def test_a_download_that_breaks_off_keeps_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that stops reading: after SEND_STALL_TIMEOUT without progress the server
    aborts the answer and keeps the store; the retry gets all of it, *provide* ran once and
    *on_served* only after the complete answer. The store (16 MiB) is larger than what the
    kernel buffers with the client's small receive buffer."""
    monkeypatch.setattr(handover, "SEND_STALL_TIMEOUT", 0.3)
    payload = store_bytes(260, identity=b"i" * 65000)
    assert len(payload) > 16 * 1024 * 1024  # 4 MiB: the largest send buffer (wmem_max)

    async def run() -> None:
        provider = Provider(payload)
        server = await started(provider)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, server.port))
            reader, writer = await asyncio.open_connection(
                sock=sock, ssl=restore_client_context(), server_hostname=""
            )
            writer.write(b"GET /restore HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200 ")
            for _ in range(1000):  # the handler gives up on the silent reader
                if server.handing_over and server._connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.handing_over and not server.served and server._connections == 0
            assert provider.served_calls == 0
            writer.close()
            store = await download_store(LOOPBACK, server.port)
            assert store == decode_store(payload)
            await asyncio.wait_for(provider.served.wait(), 10)
            assert (provider.provided, provider.served_calls) == (1, 1)
        finally:
            await server.close()

    asyncio.run(run())


def test_a_client_without_a_certificate_is_refused() -> None:
    """The server requires a client certificate: without one the TLS handshake fails, the
    request is never read, the DTLS endpoints are not touched; the client's error is one
    RestoreError line."""

    async def run() -> None:
        provider = Provider(store_bytes())
        server = await started(provider)
        anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        anonymous.check_hostname = False
        anonymous.load_verify_locations(demo_certs() / "ca.pem")
        try:
            with pytest.raises(RestoreError) as caught:
                await download_store(LOOPBACK, server.port, ssl_context=anonymous)
        finally:
            await server.close()
        assert one_line(str(caught.value))
        assert provider.provided == 0 and server.requests == 0 and not server.handing_over

    asyncio.run(run())


def test_a_client_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    ca, cert, key = throwaway_pki(tmp_path / "other-ca", server=False)

    async def run() -> None:
        provider = Provider(store_bytes())
        server = await started(provider)
        stranger = restore_client_context(cert, key)  # trusts the demo CA for the server
        try:
            with pytest.raises(RestoreError) as caught:
                await download_store(LOOPBACK, server.port, ssl_context=stranger)
            assert one_line(str(caught.value))
            # The same certificate is accepted by a server that trusts its CA.
            trusting = await started(provider, restore_server_context(trust=ca))
            try:
                assert len(await download_store(LOOPBACK, trusting.port, ssl_context=stranger))
            finally:
                await trusting.close()
        finally:
            await server.close()
        assert provider.provided == 1 and server.requests == 0

    asyncio.run(run())


def test_a_server_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    """The client verifies the server against the demo CA (not its name): a server of
    another CA is refused at once, without retries."""
    _, cert, key = throwaway_pki(tmp_path / "other-ca", server=True)

    async def run() -> None:
        provider = Provider(store_bytes())
        server = await started(provider, restore_server_context(cert, key))
        try:
            with pytest.raises(RestoreError, match="server certificate not trusted") as caught:
                await download_store(LOOPBACK, server.port)
        finally:
            await server.close()
        assert one_line(str(caught.value)) and "attempts" not in str(caught.value)
        assert provider.provided == 0

    asyncio.run(run())


def test_wrong_paths_and_methods() -> None:
    async def run() -> None:
        provider = Provider(store_bytes())
        server = await started(provider)
        try:
            for raw, status in [
                (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"404 Not Found"),
                (b"GET /restore/ HTTP/1.1\r\n\r\n", b"404 Not Found"),
                (b"GET /ready HTTP/1.1\r\n\r\n", b"404 Not Found"),
                (b"POST /restore HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405 Method Not"),
                (b"HEAD /restore HTTP/1.1\r\n\r\n", b"405 Method Not"),
                (b"PUT /restore HTTP/1.1\r\n\r\n", b"405 Method Not"),
            ]:
                answer = await tls_request(server.port, raw)
                assert answer.startswith(b"HTTP/1.1 " + status), (raw, answer)
                if status.startswith(b"405"):
                    assert b"\r\nAllow: GET\r\n" in answer
        finally:
            await server.close()
        assert provider.provided == 0 and not server.handing_over

    asyncio.run(run())


def test_oversized_malformed_and_slow_requests_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request line above MAX_LINE, too many headers, garbage, or a request that does not
    end within REQUEST_TIMEOUT (lowered to 0.2 s) is answered 400 and the connection closed;
    nothing is handed over."""
    monkeypatch.setattr(handover, "REQUEST_TIMEOUT", 0.2)
    too_long = b"GET /" + b"a" * monitor.MAX_LINE + b" HTTP/1.1\r\n\r\n"
    too_many = b"GET /restore HTTP/1.1\r\n" + b"X: y\r\n" * (monitor.MAX_HEADERS + 1) + b"\r\n"

    async def run() -> None:
        provider = Provider(store_bytes())
        server = await started(provider)
        try:
            for raw in (too_long, too_many, b"garbage\r\n\r\n", b"GET /restore HTTP/1.1\r\n"):
                answer = await tls_request(server.port, raw)
                assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw[:40]
            for _ in range(100):  # the last handler ends after our close
                if server._connections == 0:
                    break
                await asyncio.sleep(0.01)
        finally:
            await server.close()
        assert provider.provided == 0 and not server.handing_over and server._connections == 0

    asyncio.run(run())


def test_concurrent_connections_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_CONNECTIONS connections are handled at a time: one more is closed at once
    and counted in ``rejected``; when a handled one ends, its place is free again."""
    monkeypatch.setattr(handover, "MAX_CONNECTIONS", 2)
    get = b"GET /other HTTP/1.1\r\n\r\n"

    async def ask(port: int) -> bytes:
        try:
            return await tls_request(port, get, wait=5)
        except (ConnectionError, ssl.SSLError):
            return b""

    async def settle(server: RestoreServer, connections: int) -> None:
        for _ in range(1000):
            if server._connections == connections:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{server._connections} connections, not {connections}")

    async def run() -> None:
        server = await started(Provider(store_bytes()))
        held = []
        try:
            for _ in range(2):  # silent: each handler waits for its request
                held.append(
                    await asyncio.open_connection(
                        LOOPBACK, server.port, ssl=restore_client_context()
                    )
                )
            await settle(server, 2)
            assert await ask(server.port) == b""
            assert server.rejected == 1 and server.requests == 0
            reader, writer = held.pop()
            writer.write(get)
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 404 ")
            writer.close()
            await settle(server, 1)
            assert (await ask(server.port)).startswith(b"HTTP/1.1 404 ")
            assert server.rejected == 1 and server.requests == 2
        finally:
            for _, writer in held:
                writer.close()
            await server.close()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def test_retries_end_in_one_error_when_nothing_listens(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    caplog.set_level(logging.INFO, logger="extplugtest.server.handover")
    with pytest.raises(RestoreError, match="failed after 3 attempts") as caught:
        asyncio.run(download_store(LOOPBACK, port))
    assert one_line(str(caught.value)) and f"{LOOPBACK}:{port}" in str(caught.value)
    attempts = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert [r.getMessage().split(" at ")[0] for r in attempts] == [
        f"restore: attempt {n} of 3" for n in (1, 2, 3)
    ]


def test_503_is_retried_until_the_store_comes() -> None:
    """Californium retries while the answer is 503: a server that is not ready twice, then
    answers the store."""
    payload = store_bytes(2)
    answers: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if len(answers) < 2:
            answer = monitor.response_head(503, 5) + b"DOWN\n"
        else:
            answer = monitor.response_head(200, len(payload), "application/octet-stream")
            answer += payload
        answers.append(answer[:12])
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def run() -> SavedStore:
        server = await asyncio.start_server(handle, LOOPBACK, 0, ssl=restore_server_context())
        try:
            port = server.sockets[0].getsockname()[1]
            return await download_store(LOOPBACK, port)
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) == decode_store(payload)
    assert answers == [b"HTTP/1.1 503", b"HTTP/1.1 503", b"HTTP/1.1 200"]


@pytest.mark.parametrize(
    ("payload", "max_size", "message"),
    [
        (b"not a store", None, "not a store of DTLS connections"),
        (store_bytes(3), 100, "above the limit of 100"),
    ],
)
def test_a_bad_or_oversized_answer_is_one_error(
    payload: bytes, max_size: int | None, message: str
) -> None:
    async def run() -> None:
        provider = Provider(payload)
        server = await started(provider)
        try:
            limit = MAX_STORE_SIZE if max_size is None else max_size
            with pytest.raises(RestoreError, match=message) as caught:
                await download_store(LOOPBACK, server.port, max_size=limit)
            assert one_line(str(caught.value)) and "attempts" not in str(caught.value)
        finally:
            await server.close()

    asyncio.run(run())


def test_a_failing_provider_answers_500_and_hands_nothing_over() -> None:
    def provide() -> bytes:
        raise RuntimeError("the endpoints are gone")

    async def run() -> None:
        server = RestoreServer(provide)
        await server.start(LOOPBACK, 0)
        try:
            with pytest.raises(RestoreError, match="HTTP 500"):
                await download_store(LOOPBACK, server.port)
        finally:
            await server.close()
        assert not server.handing_over and not server.served

    asyncio.run(run())


def test_restore_payload_keeps_connections_within_the_max_age() -> None:
    connectors = {"dtls://0.0.0.0:5784": [connection(1, age=10.0), connection(2, age=7200.0)]}
    store = decode_store(restore_payload(connectors, 3600.0))
    assert [saved.read_cid for saved in store.connectors["dtls://0.0.0.0:5784"]] == [
        (1).to_bytes(6, "big")
    ]


def test_restore_from_peer_pair_mode() -> None:
    """--local-restore/--other-restore: the store goes to *load*; without a server the
    restore is one warning and 0, and the caller starts without it."""
    payload = store_bytes(4)
    loaded: list[SavedStore] = []

    def load(store: SavedStore) -> int:
        loaded.append(store)
        return len(store)

    async def run() -> tuple[int, int]:
        provider = Provider(payload)
        server = await started(provider)
        try:
            config = RestoreConfig(HostPort("", 1), HostPort(LOOPBACK, server.port))
            first = await restore_from_peer(config, load)
            second = await restore_from_peer(config, load)  # 410: nothing more to load
        finally:
            await server.close()
        return first, second

    assert asyncio.run(run()) == (4, 0)
    assert loaded == [decode_store(payload)]


# -- options ----------------------------------------------------------------------------------


def options(*argv: str) -> RestoreConfig | None:
    parser = argparse.ArgumentParser()
    add_restore_options(parser)
    return restore_config(parser.parse_args(list(argv)))


def test_options() -> None:
    assert options() is None
    k8s = options("--k8s-restore", ":5884")
    assert k8s == RestoreConfig(HostPort("", 5884), None, 12 * 3600.0) and k8s.k8s
    pair = options(
        "--local-restore", "127.0.0.1:5885", "--other-restore", "[::1]:5886",
        "--restore-max-age", "0.5",
    )  # fmt: skip
    assert pair == RestoreConfig(HostPort(LOOPBACK, 5885), HostPort("::1", 5886), 1800.0)
    assert pair is not None and not pair.k8s
    remote = options("--local-restore", ":5884", "--other-restore", "10.0.0.2:5884")
    assert remote is not None and remote.other == HostPort("10.0.0.2", 5884)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--local-restore", ":5884"], "go together"),
        (["--other-restore", "10.0.0.2:5884"], "go together"),
        (["--k8s-restore", ":5884", "--local-restore", ":5885"], "excludes"),
        (["--k8s-restore", ":5884", "--other-restore", "h:5885"], "excludes"),
        (["--k8s-restore", "5884"], "--k8s-restore: '5884': expected host:port"),
        (["--k8s-restore", ":0"], "port outside"),
        (["--local-restore", "::1:5884", "--other-restore", ":1"], "--local-restore: "),
        (["--local-restore", ":1", "--other-restore", "h:x"], "--other-restore: 'h:x': bad port"),
        (["--local-restore", ":5884", "--other-restore", ":5884"], "own --local-restore"),
        (["--local-restore", "h:5884", "--other-restore", "h:5884"], "own --local-restore"),
        (["--restore-max-age", "3"], "needs --k8s-restore"),
        (["--k8s-restore", ":1", "--restore-max-age", "0"], "more than 0"),
        (["--k8s-restore", ":1", "--restore-max-age", "nan"], "more than 0"),
        (["--k8s-restore", ":1", "--restore-max-age", "12h"], "not a number"),
    ],
)
def test_option_errors_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(HandoverOptionError) as caught:
        options(*argv)
    assert message in str(caught.value) and one_line(str(caught.value))


# -- the k8s peer (§5.11 step 5) over PodList documents ---------------------------------------


def pod_item(
    name: str, ip: str | None, restore: bool = False, phase: str = "Running", **labels: str
) -> dict[str, Any]:
    """A PodList item as the API server returns it (trimmed to the fields that matter)."""
    metadata_labels = {"app": "cf-extserver", "statefulset.kubernetes.io/pod-name": name}
    if restore:
        metadata_labels["restore"] = "true"
    metadata_labels.update(labels)
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "metadata": {"name": name, "namespace": "cali", "labels": metadata_labels},
        "spec": {"containers": [{"name": "cf-extserver"}]},
        "status": status,
    }


def pod_list(*items: dict[str, Any]) -> list[Pod]:
    return parse_pods({"kind": "PodList", "apiVersion": "v1", "items": list(items)})


def own(name: str, **kwargs: Any) -> Pod:
    return pod_list(pod_item(name, "10.1.1.1", **kwargs))[0]


def test_restore_peer_name() -> None:
    assert restore_peer_name("cf-extserver-b-1") == "cf-extserver-a-1"
    assert restore_peer_name("cf-extserver-a-12") == "cf-extserver-b-12"
    assert restore_peer_name("x-a-b-0") == "x-a-a-0"  # the last a/b before the ordinal
    for name in ("cf-extserver-1", "cf-extserver-c-1", "cf-extserver-a-", "a-1", "cf-a-1\n"):
        assert restore_peer_name(name) is None, name


def test_cluster_peer_is_the_other_statefulset_with_the_same_ordinal() -> None:
    me = own("cf-extserver-b-1")
    pods = pod_list(
        pod_item("cf-extserver-a-0", "10.1.0.10", restore=True),
        pod_item("cf-extserver-a-1", "10.1.0.11", restore=True),
        pod_item("cf-extserver-b-1", "10.1.1.1"),
    )
    choice = select_restore_peer(me, pods, cluster=True)
    assert choice.peer is not None and choice.peer.name == "cf-extserver-a-1"
    assert choice.peer.ip == "10.1.0.11"


@pytest.mark.parametrize(
    ("items", "reason", "retry"),
    [
        ([], "no pod cf-extserver-a-1", False),  # the first deployment: nothing to restore
        ([pod_item("cf-extserver-a-1", "10.1.0.11")], "no running pod with restore=true", True),
        ([pod_item("cf-extserver-a-1", None, restore=True, phase="Pending")], "no running", True),
        ([pod_item("cf-extserver-a-1", "10.1.0.11", True, "Failed")], "no running", True),
        ([pod_item("cf-extserver-a-0", "10.1.0.10", restore=True)], "no pod", False),
    ],
)
def test_cluster_peer_not_found(items: list[dict[str, Any]], reason: str, retry: bool) -> None:
    choice = select_restore_peer(own("cf-extserver-b-1"), pod_list(*items), cluster=True)
    assert choice.peer is None and reason in choice.reason and choice.retry is retry
    assert one_line(choice.reason)


def test_a_pod_marked_restore_itself_skips_the_restore() -> None:
    """A restarted old pod carries restore=true: no (reverse) restore, in either mode."""
    me = own("cf-extserver-a-1", restore=True)
    pods = pod_list(pod_item("cf-extserver-b-1", "10.1.0.21", restore=True))
    for cluster in (True, False):
        choice = select_restore_peer(me, pods, cluster=cluster)
        assert choice.peer is None and not choice.retry and "restarted" in choice.reason
    assert not select_restore_peer(own("cf-extserver-0"), pods, cluster=True).retry


def test_single_mode_peer_by_the_selector_label() -> None:
    me = own("cf-extserver-7d9f8c6b5-x2k4z")
    new = pod_item("cf-extserver-7d9f8c6b5-q8w1e", "10.1.1.2")
    old = pod_item("cf-extserver-5c4b3a291-abcde", "10.1.0.5", restore=True)
    choice = select_restore_peer(
        me, pod_list(new, old, pod_item(me.name, "10.1.1.1")), cluster=False
    )
    assert choice.peer is not None and choice.peer.name == "cf-extserver-5c4b3a291-abcde"
    other_old = pod_item("cf-extserver-5c4b3a291-fghij", "10.1.0.6", restore=True)
    two = select_restore_peer(me, pod_list(new, old, other_old), cluster=False)
    assert two.peer is None and two.retry and "2 pods carry restore=true" in two.reason
    none = select_restore_peer(me, pod_list(new), cluster=False)
    assert none.peer is None and none.retry
    alone = select_restore_peer(me, pod_list(pod_item(me.name, "10.1.1.1")), cluster=False)
    assert alone.peer is None and alone.reason == "no other pod"


def test_restore_selector() -> None:
    me = own("cf-extserver-b-3", tier="blue")
    assert restore_selector(me, cluster=True, label="app") == (
        "statefulset.kubernetes.io/pod-name=cf-extserver-a-3"
    )
    assert restore_selector(me, cluster=False, label="app") == "app=cf-extserver"
    assert restore_selector(me, cluster=False, label="tier") == "tier=blue"
    with pytest.raises(K8sError, match="no label 'zone'"):
        restore_selector(me, cluster=False, label="zone")


class FakeApi:
    """The k8s API for the restore lookups: GET the own pod, GET pods?labelSelector=...;
    HTTPS with the demo server certificate (127.0.0.1 in its SAN)."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.paths: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.paths.append(self.path)
                status, document = api.answer(self.path)
                data = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(demo_certs() / "server.pem", demo_certs() / "server.key")
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(path)
        prefix = "/api/v1/namespaces/cali/pods"
        if parts.path == prefix:
            label, _, value = parse_qs(parts.query)["labelSelector"][0].partition("=")
            items = [p for p in self.pods if p["metadata"]["labels"].get(label) == value]
            return 200, {"kind": "PodList", "apiVersion": "v1", "items": items}
        for item in self.pods:
            if parts.path == f"{prefix}/{unquote(item['metadata']['name'])}":
                return 200, {"kind": "Pod", "apiVersion": "v1", **item}
        return 404, {"kind": "Status", "apiVersion": "v1", "code": 404}

    def settings(self, hostname: str) -> K8sApiSettings:
        return K8sApiSettings(
            host=LOOPBACK, port=self.port, namespace="cali", token="t", token_file=None,
            ca_file=demo_certs() / "ca.pem", hostname=hostname,
            selector="controller-revision-hash=x", node_id="x",  # not used for the restore
        )  # fmt: skip

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_api() -> Iterator[Callable[[list[dict[str, Any]]], FakeApi]]:
    apis: list[FakeApi] = []

    def make(pods: list[dict[str, Any]]) -> FakeApi:
        apis.append(FakeApi(pods))
        return apis[-1]

    yield make
    for api in apis:
        api.close()


def test_find_restore_peer_through_the_api(fake_api: Callable[..., FakeApi]) -> None:
    api = fake_api(
        [
            pod_item("cf-extserver-a-1", "10.1.0.11", restore=True),
            pod_item("cf-extserver-b-1", "10.1.1.1"),
        ]
    )
    peer = find_restore_peer(api.settings("cf-extserver-b-1"), cluster=True, env={})
    assert peer is not None and (peer.name, peer.ip) == ("cf-extserver-a-1", "10.1.0.11")
    assert api.paths == [
        "/api/v1/namespaces/cali/pods/cf-extserver-b-1",
        "/api/v1/namespaces/cali/pods?labelSelector="
        "statefulset.kubernetes.io%2Fpod-name%3Dcf-extserver-a-1",
    ]
    # the restarted old pod: one request, no restore
    api.paths.clear()
    assert find_restore_peer(api.settings("cf-extserver-a-1"), cluster=True, env={}) is None
    assert len(api.paths) == 1


def test_find_restore_peer_single_mode_and_retries(fake_api: Callable[..., FakeApi]) -> None:
    api = fake_api(
        [
            pod_item("web-7d9f-x2k4z", "10.1.1.1", tier="t1"),
            pod_item("web-5c4b-abcde", "10.1.0.5", restore=True, tier="t1"),
            pod_item("web-5c4b-fghij", "10.1.0.6", restore=True, tier="t2"),
        ]
    )
    env = {"KUBECTL_RESTORE_SELECTOR_LABEL": "tier"}
    new = api.settings("web-7d9f-x2k4z")
    peer = find_restore_peer(new, cluster=False, env=env)
    assert peer is not None and peer.name == "web-5c4b-abcde"
    assert api.paths[-1].endswith("?labelSelector=tier%3Dt1")
    # With the default label (app) both old pods match: not exactly one, asked 3 times.
    sleeps: list[float] = []
    with pytest.raises(RestoreError, match="after 3 attempts: 2 pods carry") as caught:
        find_restore_peer(
            api.settings("web-7d9f-x2k4z"), cluster=False, env={}, sleep=sleeps.append
        )
    assert one_line(str(caught.value))
    assert len(sleeps) == 2 and all(0.2 <= s <= 0.4 for s in sleeps)
    # An unreachable API is the same one error.
    api.close()
    with pytest.raises(RestoreError, match="after 3 attempts") as caught:
        find_restore_peer(
            api.settings("web-7d9f-x2k4z"), cluster=False, env={}, sleep=sleeps.append
        )
    assert one_line(str(caught.value))


def test_restore_from_peer_k8s_mode(fake_api: Callable[..., FakeApi]) -> None:
    """--k8s-restore: the peer pod found through the API is asked at the own port."""
    payload = store_bytes(2)

    async def run() -> int:
        provider = Provider(payload)
        server = await started(provider)
        api = fake_api(
            [
                pod_item("cf-extserver-a-0", LOOPBACK, restore=True),
                pod_item("cf-extserver-b-0", "10.1.1.1"),
            ]
        )
        try:
            config = RestoreConfig(HostPort("", server.port), None)
            return await restore_from_peer(
                config, len, cluster=True, k8s_settings=api.settings("cf-extserver-b-0")
            )
        finally:
            await server.close()

    assert asyncio.run(run()) == 2


# -- the shared request reader (cluster/monitor.py) -------------------------------------------

METHODS = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]{0,11}", fullmatch=True)
TARGETS = st.from_regex(r"/[\x21-\x7e]{0,40}", fullmatch=True)
VERSIONS = st.sampled_from(["HTTP/1.0", "HTTP/1.1", "HTTP/2.0"])
HEADER_NAMES = st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True)
HEADER_VALUES = st.from_regex(r"[\x21-\x7e]([\x20-\x7e]{0,30}[\x21-\x7e])?", fullmatch=True)


@given(METHODS, TARGETS, VERSIONS, st.sampled_from([b"\r\n", b"\n", b""]))
def test_request_line_round_trip(method: str, target: str, version: str, eol: bytes) -> None:
    line = f"{method} {target} {version}".encode() + eol
    assert parse_request_line(line) == (method, target, version)


@given(st.binary(max_size=200))
@example(b"GET /restore HTTP/1.1\r\n")
@example(b"GET  /restore HTTP/1.1\r\n")
@example(b"GET /re store HTTP/1.1")
@example(b"GET /\x00 HTTP/1.1")
def test_request_line_only_bad_request(line: bytes) -> None:
    """Any bytes: a triple that satisfies the grammar, or BadRequest, nothing else."""
    try:
        method, target, version = parse_request_line(line)
    except BadRequest:
        return
    assert method and target and version.startswith("HTTP/")
    assert all(0x21 <= ord(c) <= 0x7E for c in method + target)


@given(HEADER_NAMES, HEADER_VALUES, st.sampled_from(["", " ", "\t "]))
def test_header_line_round_trip(name: str, value: str, blank: str) -> None:
    assert parse_header_line(f"{name}:{blank}{value}{blank}\r\n".encode()) == (
        name.lower(),
        value,
    )


def _read(data: bytes, limit: int = 256, max_headers: int = 4) -> HttpRequest:
    async def run() -> HttpRequest:
        reader = asyncio.StreamReader(limit=limit)
        reader.feed_data(data)
        reader.feed_eof()
        return await read_request(reader, max_line=limit, max_headers=max_headers)

    return asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(
    METHODS,
    TARGETS,
    VERSIONS,
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6),
    st.binary(max_size=40),
)
def test_read_request_round_trip_and_bounds(
    method: str, target: str, version: str, headers: list[tuple[str, str]], rest: bytes
) -> None:
    """A well-formed request is read back exactly (what follows it is not read); more than
    max_headers headers or a line above max_line is BadRequest."""
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    data = head.encode() + b"\r\n" + rest
    lines_fit = all(len(line) + 2 <= 256 for line in head.split("\r\n"))
    if len(headers) > 4 or not lines_fit:
        with pytest.raises(BadRequest):
            _read(data)
        return
    request = _read(data)
    assert (request.method, request.target, request.version) == (method, target, version)
    assert request.headers == tuple((n.lower(), v) for n, v in headers)
    assert request.path == target.split("?", 1)[0]
    if headers:
        assert request.header(headers[0][0].upper()) == headers[0][1]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
@example(b"GET / HTTP/1.1\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n")
@example(b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 5 + b"\r\n")
@example(b"GET / HTTP/1.1\r\n" + b"X" * 300 + b"\r\n\r\n")
@example(b" GET / HTTP/1.1\r\n\r\n")
@example(b"GET / HTTP/1.1\r\n folded\r\n\r\n")
def test_read_request_hostile_bytes(data: bytes) -> None:
    """Any bytes, cut anywhere: an HttpRequest or BadRequest, nothing else."""
    try:
        request = _read(data)
    except BadRequest:
        return
    assert len(request.headers) <= 4
