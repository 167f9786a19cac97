"""Helpers for the DTLS-CID cluster interop tests (tests/interop/test_cluster.py).

* ``ClusterNodeProcess``: one ``extserver`` node of a cluster (``--dtls-only --no-tcp``), with its
  DTLS and management addresses; ``wait_ready`` sends ClientHellos until the node answers.
* ``DtlsClient``: our sans-IO PSK client (``ClientHandshake``) on its own UDP socket. It can
  handshake with any address (a node, a NAT, nginx), send CoAP GETs to any address, and rebind
  to a new local port while keeping its DTLS session (the CID makes that work).
* ``NatProcess``: ``extnat`` with ``--control``, for ``clear``, ``remove``, ``info``, ``stats``.
* ``wait_for``: poll a predicate until a deadline (never a bare sleep as an assertion).
* ``parse_context``, ``parse_counters``: the payloads of ``/mycontext`` and ``/diagnose``.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import (
    LOOPBACK,
    die_with_parent,
    find_tool,
    free_udp_ports,
    nat_destination_usages,
)

from extplugtest.coap._codec import Message, parse
from extplugtest.dtls._record import APPLICATION_DATA
from extplugtest.dtls.handshake_client import ClientHandshake, ClientSession
from extplugtest.tools.nat_console import send_command

PSK_IDENTITY = b"Client_identity"
PSK_SECRET = b"secretPSK"
STARTUP_TIMEOUT = 15.0
CON, GET, CONTENT = 0, 1, 69
RUN_CLI = "import sys; from extplugtest.server.cli import main; sys.exit(main())"
URI_PATH = 11
BLOCK2 = 23
MAX_BLOCKS = 64  # a /diagnose text is a few KiB

Address = tuple[str, int]


def request_whole(
    client: DtlsClient, path: str, peer: Address, timeout: float = 3.0
) -> tuple[Address, Message] | None:
    """GET *path* with all its Block2 blocks (RFC 7959 §2.4): the first answer with the
    whole payload, or None when an answer is missing."""
    first = client.request(path, peer, timeout)
    if first is None:
        return None
    source, response = first
    payload = response.payload
    block = response.uint_option(BLOCK2)
    for _ in range(MAX_BLOCKS):
        if block is None or not block & 0x08 or response.code != CONTENT:  # complete
            return source, Message(response.type, response.code, response.mid, response.token,
                                   [], payload)  # fmt: skip
        szx = block & 0x07
        answer = client.request(path, peer, timeout, block2=((block >> 4) + 1) << 4 | szx)
        if answer is None:
            return None
        payload += answer[1].payload
        block = answer[1].uint_option(BLOCK2)
    raise AssertionError(f"{path}: more than {MAX_BLOCKS} blocks")


def diagnose_counters(client: DtlsClient, peer: Address) -> dict[str, int]:
    """The ``all + cur`` of every counter in the text of ``/diagnose`` (all its blocks)."""
    answer = request_whole(client, "diagnose", peer)
    assert answer is not None and answer[1].code == CONTENT, answer
    return parse_counters(answer[1].payload)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05):
    """Poll *predicate* until it returns something true (returned) or the time is up (None)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after *timeout*; always reaps."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def answers_hello(address: Address, timeout: float = 0.2, bind: str = LOOPBACK) -> bool:
    """True if *address* answers a ClientHello (a node: with a HelloVerifyRequest) sent from
    *bind*."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, 0))
        sock.settimeout(timeout)
        try:
            sock.sendto(ClientHandshake(PSK_IDENTITY, PSK_SECRET).start(), address)
            return len(sock.recv(4096)) > 0
        except OSError:
            return False


# -- extserver cluster nodes ------------------------------------------------------------------


@dataclass
class NodeSpec:
    node_id: int
    dtls: Address
    mgmt: Address


def allocate_nodes(count: int) -> list[NodeSpec]:
    """*count* nodes with ids 1..count on free loopback ports (a DTLS and a management port)."""
    ports = free_udp_ports(2 * count)
    return [
        NodeSpec(i + 1, (LOOPBACK, ports[2 * i]), (LOOPBACK, ports[2 * i + 1]))
        for i in range(count)
    ]


def static_option(nodes: list[NodeSpec], own: NodeSpec) -> str:
    """``--dtls-cluster`` of *own* in a static cluster of *nodes*: ``---`` for the others."""
    return ",".join(
        f"{name(node.dtls) if node is own else '---'};{name(node.mgmt)};{node.node_id}"
        for node in nodes
    )


class ClusterNodeProcess:
    """One ``extserver`` process serving cluster node *spec* (only its cluster DTLS endpoint)."""

    def __init__(self, spec: NodeSpec, cluster_args: list[str], log_dir: Path, *extra: str):
        self.spec = spec
        self.node_id = spec.node_id
        self.dtls = spec.dtls
        self.mgmt = spec.mgmt
        (coap_port,) = free_udp_ports(1)  # unused with --dtls-only and a cluster
        exe = find_tool("extserver")
        if os.environ.get("EXTSERVER_CMD"):
            command = shlex.split(os.environ["EXTSERVER_CMD"])
        elif exe:
            command = [exe]
        else:
            command = [sys.executable, "-c", RUN_CLI]
        self.command = [
            *command, "--no-external", "--no-ipv6", "--dtls-only", "--no-tcp", "--no-plugtest",
            "--diagnose", "--coap-port", str(coap_port), *cluster_args, *extra,
        ]  # fmt: skip
        self.stderr_path = log_dir / f"node-{spec.node_id}-{spec.dtls[1]}.err"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent,
            )

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if answers_hello(self.dtls):
                return
            time.sleep(0.05)
        raise AssertionError(f"cluster node {self.node_id} did not start\n{self.describe()}")

    def describe(self) -> str:
        status = self.proc.poll()
        state = "still running" if status is None else f"exited with {status}"
        stderr = self.stderr_path.read_text(errors="replace")[-3000:]
        return f"$ {shlex.join(self.command)}\n({state})\n--- stderr ---\n{stderr}"

    def kill(self) -> None:
        """Stop the node at once (SIGKILL): it leaves nothing behind, as a crashed pod."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        stop_process(self.proc)


# -- our DTLS client --------------------------------------------------------------------------


class DtlsClient:
    """A PSK DTLS client with the server's CID, on an unconnected UDP socket (answers may come
    from any address: a NAT, a node that backwards, the owner that answers directly)."""

    def __init__(self) -> None:
        self.sock = self._socket()
        self.session: ClientSession | None = None
        self.handshake_peer: Address | None = None
        self._mid = int.from_bytes(os.urandom(2), "big")

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        return sock

    @property
    def address(self) -> Address:
        return self.sock.getsockname()

    @property
    def cid(self) -> bytes:
        """The CID the server gave us (its read-cid): its first byte is the owner node's id."""
        assert self.session is not None
        return self.session.write_cid

    @property
    def owner(self) -> int:
        return self.cid[0]

    def rebind(self) -> None:
        """A new local port, the same DTLS session (a NAT rebinding done by the client)."""
        self.sock.close()
        self.sock = self._socket()

    def close(self) -> None:
        self.sock.close()

    def drain(self) -> None:
        while select.select([self.sock], [], [], 0)[0]:
            self.sock.recv(65536)

    def handshake(self, peer: Address, timeout: float = 10.0) -> ClientSession:
        """A full PSK handshake with *peer* (retransmitting flights); the new session."""
        self.drain()
        handshake = ClientHandshake(PSK_IDENTITY, PSK_SECRET)
        outgoing = [handshake.start()]
        deadline = time.monotonic() + timeout
        while not handshake.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no DTLS handshake with {name(peer)} within {timeout} s")
            for datagram in outgoing:
                self.sock.sendto(datagram, peer)
            ready = select.select([self.sock], [], [], min(0.5, remaining))[0]
            if not ready:
                outgoing = handshake.retransmit()
                continue
            data = self.sock.recv(65536)
            outgoing = handshake.on_datagram(data)
        assert handshake.session is not None
        self.session = handshake.session
        self.handshake_peer = peer
        return self.session

    def seal(self, plaintext: bytes, cid: bytes | None = None) -> bytes:
        """An application-data record of our session (*cid*: another CID than the server's)."""
        session = self.session
        assert session is not None
        record = session.cipher.seal(1, session.next_write_seq, APPLICATION_DATA, plaintext, cid)
        session.next_write_seq += 1
        return record

    def get_message(self, path: str, block2: int | None = None) -> Message:
        self._mid = (self._mid + 1) & 0xFFFF
        message = Message(CON, GET, self._mid, os.urandom(4))
        for segment in path.strip("/").split("/"):
            message.add_option(URI_PATH, segment.encode())
        if block2:  # (block 0 needs no option)
            message.add_option(BLOCK2, block2.to_bytes((block2.bit_length() + 7) // 8, "big"))
        return message

    def request(
        self,
        path: str,
        peer: Address,
        timeout: float = 3.0,
        retransmit: float = 0.75,
        block2: int | None = None,
    ) -> tuple[Address, Message] | None:
        """GET *path* from *peer*: (the answer's source, the response), or None on a timeout.

        The CON request is sent again (in a new record, the same MID) every *retransmit*
        seconds; datagrams that are not our response are skipped."""
        assert self.session is not None
        message = self.get_message(path, block2)
        plaintext = message.to_bytes()
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                return None
            if now >= next_send:
                self.sock.sendto(self.seal(plaintext), peer)
                next_send = now + retransmit
            wait = min(deadline, next_send) - now
            if not select.select([self.sock], [], [], max(wait, 0))[0]:
                continue
            data, source = self.sock.recvfrom(65536)
            try:
                content_type, payload = self.session.cipher.open(data)
                response = parse(payload)
            except Exception:  # not a record of our session, or no CoAP
                continue
            if content_type == APPLICATION_DATA and response.token == message.token:
                return source, response

    def context(self, peer: Address, timeout: float = 3.0) -> tuple[Address, dict[str, str]]:
        """``/mycontext`` from *peer*: (the answer's source, its fields)."""
        answer = self.request("mycontext", peer, timeout)
        assert answer is not None, f"no answer to /mycontext from {name(peer)}"
        source, response = answer
        assert response.code == CONTENT, response
        return source, parse_context(response.payload)


def parse_context(payload: bytes) -> dict[str, str]:
    fields = {}
    for line in payload.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def parse_counters(payload: bytes) -> dict[str, int]:
    """``/diagnose``: the ``all + cur`` of every ``name,all,cur`` counter line, summed over
    the endpoints that report it."""
    counters: dict[str, int] = {}
    for line in payload.decode().splitlines():
        parts = line.strip().rsplit(",", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            counters[parts[0]] = counters.get(parts[0], 0) + int(parts[1]) + int(parts[2])
    return counters


# -- extnat -----------------------------------------------------------------------------------

EXTNAT = [sys.executable, "-c", "import sys; from extplugtest.tools.nat import main; "
          "sys.exit(main())"]  # fmt: skip


class NatProcess:
    """``extnat 127.0.0.1:<port> DEST... [options] --control <socket>``."""

    def __init__(self, destinations: Iterable[Address], log_dir: Path, *options: str) -> None:
        (self.port,) = free_udp_ports(1)
        self.address: Address = (LOOPBACK, self.port)
        self.control = str(log_dir / f"nat-{self.port}.sock")
        self.stderr_path = log_dir / f"nat-{self.port}.err"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*EXTNAT, name(self.address), *(name(d) for d in destinations), *options,
                 "--control", self.control],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent,
            )  # fmt: skip
        # The control socket opens after the listen sockets.
        if not wait_for(lambda: os.path.exists(self.control) or self.proc.poll() is not None):
            raise AssertionError("extnat did not start")
        if self.proc.poll() is not None:
            raise AssertionError(f"extnat exited: {self.stderr_path.read_text()}")

    def command(self, line: str) -> list[str]:
        return send_command(self.control, line)

    def usages(self) -> dict[str, int]:
        return nat_destination_usages(self.control)

    def stats(self) -> dict[str, int]:
        result = {}
        for line in self.command("stats"):
            key, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                result[key.strip()] = int(value)
        return result

    def stop(self) -> None:
        stop_process(self.proc)
