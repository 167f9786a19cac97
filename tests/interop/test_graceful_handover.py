"""The graceful handover over HTTPS with real processes on two "hosts" (inventory §5.10, §5.11,
§6.6): an old ``extserver`` A hands its DTLS connections over to a new one, B, which downloads
them from A's ``/restore`` (mutual TLS) at its start. The DTLS clients go on with B - their old
sessions and CIDs, no new handshake - when their records are routed to B's address (as a k8s
Service routes them once the old pod is not ready).

Each host is a network namespace of its own, on a private bridge (the NetnsLab of
tests/interop/test_cluster_netns.py):

    namespace hub:  bridge br0 ---- veth ---- namespace cl: eth0 10.77.S.1   DTLS clients, probes
                                |-- veth ---- namespace a:  eth0 10.77.S.11  extserver A (old)
                                '-- veth ---- namespace b:  eth0 10.77.S.12  extserver B (new)

Both servers use the same ports on their own addresses: the extended DTLS endpoint on
0.0.0.0:5784 (one wildcard endpoint with a restore option, so that its label
``dtls://0.0.0.0:5784`` is the same on both hosts), ``/restore`` on :5884 and the health
endpoints (``--k8s-monitor``) on :8080. The DTLS clients are tests/interop/netns_cluster_client.py
(our sans-IO PSK client with the server's CID) in ``cl``; ``/alive`` and ``/ready`` are asked
from ``cl`` too, as a kubelet asks from outside the pod. Every wait is bounded in time (and so
in count); every process and namespace is removed at the end, also on failure. Skipped when not
root, without iproute2, or where network namespaces cannot be created.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.interop import test_cluster_netns
from tests.interop.cluster_helpers import CONTENT, parse_counters, stop_process, wait_for
from tests.interop.test_cluster_netns import Driver, NetnsLab, describe, extserver_command

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

COAP_PORT = 5783
DTLS_PORT = COAP_PORT + 1
RESTORE_PORT, MONITOR_PORT = 5884, 8080
LABEL = f"dtls://0.0.0.0:{DTLS_PORT}"
START_TIMEOUT = 20.0  # a server answers ClientHellos / is ready: at most
SWITCH_TIMEOUT = 20.0  # a health endpoint reaches the expected state: at most
SESSION_FIELDS = ("peer", "cipher-suite", "session-id", "read-cid")
CLIENTS = 3

#: the fixture of test_cluster_netns.py: namespaces on a bridge (skips when not root or without
#: iproute2), every process and namespace removed at the end, also on failure
lab = test_cluster_netns.lab

Address = tuple[str, int]

# One HTTP request from inside a namespace: "<status> <body>" on stdout (0: no answer).
PROBE = """\
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2.0) as answer:
        print(answer.status, answer.read().decode().strip())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode().strip())
except OSError as error:
    print(0, error)
"""

# A second GET /restore from inside a namespace, with the product's download client (one
# attempt): "410 <reason>" when refused as Gone, "200 <connections>" when a store came.
SECOND_DOWNLOAD = """\
import asyncio, sys
from extplugtest.server.handover import RestoreError, download_store
try:
    store = asyncio.run(download_store(sys.argv[1], int(sys.argv[2]), attempts=1))
except RestoreError as error:
    print(410 if "HTTP 410" in str(error) else 0, error)
else:
    print(200, len(store))
"""


# -- helpers ---------------------------------------------------------------------------------


class Server:
    """``extserver`` with the handover options in its own namespace; stdout and stderr in
    files of the test's directory."""

    def __init__(self, lab: NetnsLab, role: str, namespace: str, address: str,
                 other: str, log_dir: Path) -> None:  # fmt: skip
        self.role = role
        self.address = address
        self.dtls: Address = (address, DTLS_PORT)
        self.stderr_path = log_dir / f"server-{role}.err"
        self.stdout_path = log_dir / f"server-{role}.out"
        command = [
            *extserver_command(), "--coap-port", str(COAP_PORT),
            "--local-restore", f":{RESTORE_PORT}", "--other-restore", f"{other}:{RESTORE_PORT}",
            "--k8s-monitor", f":{MONITOR_PORT}",
            "--benchmark", "--diagnose", "--no-plugtest", "--no-tcp",
            # a fresh namespace's IPv6 link-local address is still tentative (DAD): not bindable
            "--no-ipv6",
        ]  # fmt: skip
        with self.stdout_path.open("wb") as out:
            self.process = lab.spawn(namespace, command, self.stderr_path, stdout=out)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def warnings(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if " WARNING " in line]

    def describe(self) -> str:
        stdout = self.stdout_path.read_text(errors="replace")[-2000:]
        process = describe(self.process, self.stderr_path)
        return f"server {self.role}: {process}\n--- stdout ---\n{stdout}"

    def running(self) -> bool:
        return self.process.poll() is None


class Prober:
    """``/alive`` and ``/ready`` of the servers, asked from the namespace *namespace*."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    def __call__(self, server: Server, path: str) -> tuple[int, str]:
        url = f"http://{server.address}:{MONITOR_PORT}{path}"
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-I", "-c", PROBE, url],
            capture_output=True, text=True, timeout=15, check=False,
        )  # fmt: skip
        status, _, text = result.stdout.strip().partition(" ")
        return (int(status), text) if status.isdigit() else (0, result.stderr.strip()[-300:])

    def wait(self, server: Server, path: str, expected: tuple[int, str]) -> None:
        """Until *server* answers *path* with *expected* (bounded by SWITCH_TIMEOUT)."""
        seen: list[tuple[int, str]] = []

        def reached() -> bool:
            if not server.running():
                pytest.fail(f"server {server.role} exited\n{server.describe()}")
            seen.append(self(server, path))
            return seen[-1] == expected

        if not wait_for(reached, SWITCH_TIMEOUT, 0.2):
            pytest.fail(f"{path} of server {server.role}: {seen[-3:]}, expected {expected}\n"
                        f"{server.describe()}")  # fmt: skip


def wait_dtls(driver: Driver, server: Server) -> None:
    """Until *server* answers ClientHellos from the client namespace (bounded)."""
    (ready,) = driver("ready", peers=[list(server.dtls)], timeout=START_TIMEOUT)["ready"]
    assert ready, f"server {server.role} does not answer ClientHellos\n{server.describe()}"


def sessions(driver: Driver, clients: list[dict], server: Server) -> list[dict[str, str]]:
    """``/mycontext`` of every client from *server*: the session fields; the answers come from
    *server*'s DTLS address and see the client's own address."""
    result = []
    contexts = driver.contexts([(client["index"], server.dtls) for client in clients])
    for client, (source, context) in zip(clients, contexts, strict=True):
        assert source == server.dtls, (source, server.dtls)
        assert (context["ip"], int(context["port"])) == tuple(client["address"]), context
        assert context["read-cid"] == client["cid"].upper(), (client, context)
        result.append({key: context[key] for key in SESSION_FIELDS})
    return result


def counters(driver: Driver, index: int, server: Server) -> dict[str, int]:
    (answer,) = driver("requests", requests=[[index, list(server.dtls), "diagnose"]])["answers"]
    assert answer is not None and answer["code"] == CONTENT, answer
    return parse_counters(answer["payload"].encode())


def attach(lab: NetnsLab, *hosts: tuple[str, int]) -> list[tuple[str, str]]:
    try:
        return [lab.attach(role, host) for role, host in hosts]
    except RuntimeError as error:  # veth or bridge forbidden in this sandbox
        pytest.skip(f"cannot connect network namespaces here: {error}")


# -- the tests -------------------------------------------------------------------------------


def start_first(lab: NetnsLab, driver: Driver, probe: Prober, namespace: str, address: str,
                other: str, log_dir: Path) -> Server:  # fmt: skip
    """The first (old) server: its download from *other* fails (nothing there yet), it logs
    that once and starts anyway: it answers ClientHellos and is ready."""
    server = Server(lab, "a", namespace, address, other, log_dir)
    wait_dtls(driver, server)
    probe.wait(server, "/ready", (200, "OK"))
    assert probe(server, "/alive") == (200, "OK")
    failed = [line for line in server.warnings() if "no DTLS connections restored" in line]
    assert len(failed) == 1, server.describe()
    assert f"https://{other}:{RESTORE_PORT}/restore: failed after 3 attempts" in failed[0]
    return server


def connect_clients(driver: Driver, server: Server, address: str) -> tuple[list[dict], list]:
    """CLIENTS DTLS clients hand-shake with *server* (PSK, with its CID) and are answered:
    (the clients, their session fields)."""
    clients = driver("connect", entry=list(server.dtls), node_ids=[], per_node=0,
                     min=CLIENTS, max=CLIENTS)["clients"]  # fmt: skip
    assert len(clients) == CLIENTS and all(c["address"][0] == address for c in clients)
    fields = sessions(driver, clients, server)
    assert all(session["peer"] == "Client_identity" for session in fields), fields
    assert len({session["session-id"] for session in fields}) == CLIENTS, fields
    return clients, fields


def check_restored(old: Server, new: Server) -> None:
    """*new* downloaded all of *old*'s connections into its wildcard endpoint."""
    assert re.search(rf"{re.escape(LABEL)}: {CLIENTS} DTLS connections saved", old.stderr()), (
        old.describe()
    )
    restored = f"{CLIENTS} of {CLIENTS} DTLS connections restored from {old.address}:"
    assert f"{restored}{RESTORE_PORT}" in new.stderr(), new.describe()
    loaded = f"{LABEL}: {CLIENTS} DTLS connections restored, 0 too old, 0 refused"
    assert loaded in new.stderr(), new.describe()
    assert not [line for line in new.warnings() if "no DTLS connections restored" in line]


def test_handover_moves_the_dtls_sessions_to_the_new_host(lab: NetnsLab, tmp_path: Path) -> None:
    (cl, cl_addr), (ns_a, addr_a), (ns_b, addr_b) = attach(lab, ("cl", 1), ("a", 11), ("b", 12))
    driver = Driver(lab, cl, cl_addr, tmp_path)
    probe = Prober(cl)

    # -- the old server A, and DTLS clients with sessions on it -------------------------------
    a = start_first(lab, driver, probe, ns_a, addr_a, addr_b, tmp_path)
    clients, before = connect_clients(driver, a, cl_addr)
    assert counters(driver, clients[0]["index"], a)["handshakes succeeded"] == CLIENTS

    # -- the new server B downloads A's connections at its start and turns ready --------------
    b = Server(lab, "b", ns_b, addr_b, addr_a, tmp_path)
    probe.wait(b, "/ready", (200, "OK"))
    assert probe(b, "/alive") == (200, "OK")
    check_restored(a, b)
    # A handed over: its DTLS endpoint is stopped, it is not ready any more (the Service
    # stops routing to it). Its /alive: see test_the_old_server_confirms_every_handover.
    probe.wait(a, "/ready", (503, "DOWN"))

    # -- the clients' next requests go to B (as the Service routes them now) -------------------
    after = sessions(driver, clients, b)
    assert after == before, "the sessions on B are not those of A"
    seen = counters(driver, clients[1]["index"], b)
    assert seen.get("handshakes started") == 0, seen
    assert seen.get("handshakes succeeded") == 0, seen
    # our CLIENTS /mycontext requests (maybe retransmitted) and this /diagnose
    assert seen.get("received records", 0) >= CLIENTS + 1, seen
    assert probe(b, "/ready") == (200, "OK")

    # the sessions moved, they were not copied: A's DTLS endpoint stays stopped
    (answer,) = driver("requests", requests=[[clients[2]["index"], list(a.dtls), "mycontext"]],
                       timeout=1.5)["answers"]  # fmt: skip
    assert answer is None, f"A still answers after the handover: {answer}"
    assert probe(a, "/ready") == (503, "DOWN")
    for server in (a, b):
        assert server.running(), server.describe()


class HandoverNotConfirmed(AssertionError):
    """The old server did not take a complete /restore answer as handed over."""


#: blue/green steps: a download once raced the old server's last write (an RST taken for a
#: broken transfer in about half of the steps), so several steps in a row
HANDOVERS = 12


def test_the_old_server_confirms_every_handover(lab: NetnsLab, tmp_path: Path) -> None:
    """Blue/green updates one after the other, each new server on the host of the one before
    the old: every old server takes the download as done (log, a second download is 410 Gone,
    /alive turns 503), and the clients' sessions go along from server to server."""
    (cl, cl_addr), (ns_a, addr_a), (ns_b, addr_b) = attach(lab, ("cl", 1), ("a", 11), ("b", 12))
    hosts = [(ns_a, addr_a), (ns_b, addr_b)]
    driver = Driver(lab, cl, cl_addr, tmp_path)
    probe = Prober(cl)
    old = start_first(lab, driver, probe, ns_a, addr_a, addr_b, tmp_path)
    clients, before = connect_clients(driver, old, cl_addr)

    def outcome() -> str | None:
        text = old.stderr()
        if re.search(r"/restore: \d+ bytes of DTLS connections handed over to", text):
            return "handed over"
        return "broke off" if "/restore: the download broke off" in text else None

    for step in range(1, HANDOVERS + 1):
        namespace, address = hosts[step % 2]
        new = Server(lab, f"{namespace[-1]}{step}", namespace, address, old.address, tmp_path)
        probe.wait(new, "/ready", (200, "OK"))
        check_restored(old, new)
        assert sessions(driver, clients, new) == before, f"step {step}: other sessions"
        probe.wait(old, "/ready", (503, "DOWN"))

        # the old server's view of the download (logged after the answer was written)
        result = wait_for(outcome, SWITCH_TIMEOUT, 0.1)
        assert result is not None, old.describe()
        second = subprocess.run(
            ["ip", "netns", "exec", cl, sys.executable, "-c", SECOND_DOWNLOAD, old.address,
             str(RESTORE_PORT)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if result != "handed over" or not second.stdout.startswith("410 "):
            raise HandoverNotConfirmed(
                f"step {step}: {new.role} restored all {CLIENTS} connections, but the old "
                f"server {old.role} logged {result!r}, and a second GET /restore got "
                f"{second.stdout.strip() or second.stderr[-500:]!r}\n{old.describe()}"
            )
        if step == 1:  # once: /alive turns 503 a few seconds after the handover
            probe.wait(old, "/alive", (503, "STOPPED"))
        stop_process(old.process)
        old = new

    seen = counters(driver, clients[0]["index"], old)
    assert seen.get("handshakes started") == 0, seen


def test_restore_from_nothing_starts_ready_with_one_warning(
    lab: NetnsLab,
    tmp_path: Path,
) -> None:
    (cl, cl_addr), (ns_b, addr_b) = attach(lab, ("cl", 1), ("b", 12))
    nothing = lab.address(11)  # no namespace has this address: no host answers there
    driver = Driver(lab, cl, cl_addr, tmp_path)
    probe = Prober(cl)

    b = Server(lab, "b", ns_b, addr_b, nothing, tmp_path)
    probe.wait(b, "/ready", (200, "OK"))
    assert probe(b, "/alive") == (200, "OK")
    warnings = b.warnings()
    assert len(warnings) == 1, b.describe()
    assert "no DTLS connections restored: " in warnings[0], warnings
    assert f"https://{nothing}:{RESTORE_PORT}/restore: failed after 3 attempts" in warnings[0]

    # it serves new clients as any server
    wait_dtls(driver, b)
    (client,) = driver("connect", entry=list(b.dtls), node_ids=[], per_node=0, min=1, max=1)[
        "clients"
    ]
    (fields,) = sessions(driver, [client], b)
    assert fields["peer"] == "Client_identity", fields
    assert counters(driver, client["index"], b)["handshakes succeeded"] == 1
    assert b.running(), b.describe()
