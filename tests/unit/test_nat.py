"""extnat: command line, console, NAT entries, load balancing, reverse update, faults.

Most tests run the NAT in-process (its event loop in a thread) between plain loopback sockets:
the test plays the clients and the destinations itself, so it sees exactly which source port a
destination gets and can answer from anywhere. A few run the ``extnat`` program for the stdin
console, the control socket, signals and exit codes. Every wait is bounded; assertions about
random choices use enough clients that a false failure is below 1e-9.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from extplugtest.tools import _natfwd
from extplugtest.tools.nat import Nat
from extplugtest.tools.nat_console import CommandConsole, send_command
from extplugtest.tools.nat_options import UsageError, parse_args

LOOPBACK = "127.0.0.1"
TIMEOUT = 2.0


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Peer:
    """A UDP socket on loopback: a client of the NAT or one of its destinations."""

    def __init__(self, host: str = LOOPBACK) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2 * 1024 * 1024)
        self.sock.bind((host, 0))
        self.address = self.sock.getsockname()
        self.host, self.port = self.address[0], self.address[1]

    @property
    def text(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def send(self, data: bytes, address: tuple) -> None:
        self.sock.sendto(data, address)

    def receive(self, timeout: float = TIMEOUT) -> tuple[bytes, tuple] | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(65536)
        except TimeoutError:
            return None

    def receive_all(self, count: int, timeout: float = TIMEOUT) -> list[tuple[bytes, tuple]]:
        """Up to *count* datagrams, until *timeout* s pass without one."""
        received = []
        while len(received) < count:
            item = self.receive(timeout)
            if item is None:
                break
            received.append(item)
        return received

    def close(self) -> None:
        self.sock.close()


class NatThread:
    """An in-process NAT on loopback, run by its own event loop in a thread."""

    def __init__(self, args: list[str]) -> None:
        options = parse_args(args)
        assert options is not None
        self.loop = uvloop.new_event_loop()
        self.nat = Nat(options, self.loop)
        self.nat.start()
        self.stopped = False
        self.console = CommandConsole(self.nat, self._stop)
        self.address = self.nat.fronts[0].getsockname()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _stop(self) -> None:
        self.stopped = True

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=5)

    def command(self, line: str) -> list[str]:
        result: list[str] = self.call(self.console.execute, line)
        return result

    def counters(self) -> dict[str, int]:
        result: dict[str, int] = self.call(self.nat.counters)
        return result

    def entry(self, client: Peer) -> tuple[int, str] | None:
        found = self.call(self.nat.entry, client.address)
        return None if found is None else (found[0], found[1].name)

    def close(self) -> None:
        self.call(self.nat.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: list[Peer] = []

    def make(host: str = LOOPBACK) -> Peer:
        peer = Peer(host)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def start_nat() -> Iterator[Callable[..., NatThread]]:
    started: list[NatThread] = []

    def start(*args: str) -> NatThread:
        nat = NatThread(list(args))
        started.append(nat)
        return nat

    yield start
    for nat in started:
        nat.close()


def roundtrip(nat: NatThread, client: Peer, backends: list[Peer], payload: bytes) -> Peer:
    """Client -> NAT -> a backend (which one is returned) -> answer -> client."""
    client.send(payload, nat.address)
    for backend in backends:
        item = backend.receive(timeout=0.05)
        if item is not None:
            break
    else:
        # not there yet: wait a little longer on all of them
        deadline = time.monotonic() + TIMEOUT
        item = None
        while item is None and time.monotonic() < deadline:
            for backend in backends:
                item = backend.receive(timeout=0.02)
                if item is not None:
                    break
        assert item is not None, "no backend received the datagram"
    data, source = item
    assert data == payload
    backend.send(b"re:" + data, source)
    answer = client.receive()
    assert answer is not None, "no answer through the NAT"
    assert answer[0] == b"re:" + payload
    assert answer[1][1] == nat.address[1]  # from the NAT's listen port
    return backend


# -- command line ----------------------------------------------------------------------------


def test_californium_form_with_wildcard_and_reverse() -> None:
    options = parse_args([":5784", "127.0.0.1:15784", "127.0.0.1:25784", "-r"])
    assert options is not None
    assert [e.address[1] for e in options.listen] == [5784]
    assert options.listen[0].family == socket.AF_UNSPEC
    assert [e.address for e in options.destinations] == [
        (LOOPBACK, 15784),
        (LOOPBACK, 25784),
    ]
    assert options.reverse
    assert "enable NAT reverse update." in options.notes


def test_californium_form_with_separator() -> None:
    options = parse_args(["127.0.0.1:5784", "[::1]:5784", "--", "127.0.0.1:1", "-d50", "-x"])
    assert options is not None
    assert [e.text for e in options.listen] == ["127.0.0.1:5784", "[::1]:5784"]
    assert options.listen[1].family == socket.AF_INET6
    assert [e.name for e in options.destinations] == ["127.0.0.1:1"]
    assert options.forward.loss == options.backward.loss == 50
    assert options.dtls_filter


def test_options_anywhere_and_with_or_without_equals() -> None:
    options = parse_args(["-tnat=5000", ":6684", "localhost:5684", "-n5", "-s=100:50"])
    assert options is not None
    assert options.nat_timeout_ms == 5000
    assert options.max_entries == 5
    assert (options.forward.max_size, options.forward.size_percent) == (100, 50)
    # localhost: IPv4 first, as Java's InetAddress.getByName
    assert options.destinations[0].address == (LOOPBACK, 5684)
    assert options.destinations[0].name == "localhost:5684"


def test_option_without_value_is_an_error() -> None:
    with pytest.raises(UsageError, match="needs a value"):
        parse_args(["-tlb", ":1", "127.0.0.1:2"])


def test_long_options() -> None:
    options = parse_args(
        [":1", "127.0.0.1:2", "-tln=100", "--delay-forward", "10:5:50",
         "--delay-backward=20", "--max-size-backward", "64", "--control", "/tmp/x.sock",
         "--no-console", "-f=5", "-b=7"]
    )  # fmt: skip
    assert options is not None
    assert options.lb_timeout_ms == 100
    assert (options.forward.delay_ms, options.forward.jitter_ms) == (10, 5)
    assert options.forward.delay_percent == 50
    assert options.backward.delay_ms == 20
    assert options.backward.max_size == 64
    assert options.control == "/tmp/x.sock"
    assert not options.console
    assert (options.forward.loss, options.backward.loss) == (5, 7)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([":1"], "at least one destination"),
        (["127.0.0.1:1", "--"], "missing destination"),
        (["--", "127.0.0.1:1"], "no listen address"),
        ([":1", "127.0.0.1:2", "-d=10", "-f=5"], "-d excludes"),
        ([":1", "127.0.0.1:2", "-f=5", "-d=10"], "-d excludes"),
        ([":1", "127.0.0.1:2", "-q"], "unknown"),
        ([":1", "127.0.0.1:2", "--bogus"], "unknown option"),
        ([":1", "127.0.0.1"], "HOST:PORT"),
        ([":1", "::1:5"], "brackets"),
        ([":1", ":5"], "needs a host"),
        ([":1", "127.0.0.1:0"], "needs a port"),
        ([":1", "127.0.0.1:70000"], "0..65535"),
        ([":1", "127.0.0.1:2", "-d=101"], "out of range"),
        ([":1", "127.0.0.1:2", "-n=0"], "out of range"),
        ([":1", "127.0.0.1:2", "-tnat=x"], "not a number"),
        ([":1", "127.0.0.1:2", "--delay-forward", "1:2:3:4"], "MS"),
        ([":1", "nonexistent.invalid:5"], "unresolved"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_args(args)


# -- forwarding ------------------------------------------------------------------------------


def test_forward_and_backward(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    client = peers()
    roundtrip(nat, client, [backend], b"hello")
    port, name = nat.entry(client)
    assert name == backend.text
    client.send(b"again", nat.address)
    data, source = backend.receive()
    assert data == b"again"
    assert source == (LOOPBACK, port)  # the entry keeps its outgoing socket
    counters = nat.counters()
    assert counters["forwarded"] == 2
    assert counters["backwarded"] == 1
    assert counters["entries"] == 1


def test_each_client_has_its_own_outgoing_port(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    clients = [peers() for _ in range(5)]
    for client in clients:
        client.send(b"x", nat.address)
    sources = {source for _, source in backend.receive_all(5)}
    assert len(sources) == 5
    assert nat.command("info")[0] == "5 NAT entries, reverse address update disabled."


def test_empty_and_large_datagrams_pass_unchanged(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    client = peers()
    for payload in (b"", bytes(range(256)) * 36):  # 0 and 9216 bytes (cf-nat cuts at 2048)
        roundtrip(nat, client, [backend], payload)


@needs_ipv6
def test_ipv6_listen_and_destinations(start_nat, peers) -> None:
    v6_backend = peers("::1")
    v4_backend = peers()
    nat = start_nat("[::1]:0", "--", v6_backend.text)
    client = peers("::1")
    roundtrip(nat, client, [v6_backend], b"six to six")
    assert nat.command(f"remove {v6_backend.text}") == [f"/[::1]:{v6_backend.port} removed"]
    nat.command(f"add {v4_backend.text}")
    # The entry moves to the IPv4 destination with a new (IPv4) outgoing socket.
    roundtrip(nat, client, [v4_backend], b"six to four")


@needs_ipv6
def test_wildcard_listen_takes_ipv4_and_ipv6_clients(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat(":0", backend.text)
    port = nat.address[1]
    for host in (LOOPBACK, "::1"):
        client = peers(host)
        client.send(b"ping", (host, port))
        _data, source = backend.receive()
        backend.send(b"pong", source)
        answer = client.receive()
        assert answer is not None and answer[0] == b"pong"
        assert answer[1][0] == host and answer[1][1] == port


# -- console: clear, reassign, rebalance, add, remove ----------------------------------------


def test_clear_gives_the_client_a_new_port_at_the_same_backend(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    client = peers()
    roundtrip(nat, client, [backend], b"1")
    first, _ = nat.entry(client)
    assert nat.command("clear") == ["1 - NAT entries dropped."]
    assert nat.entry(client) is None
    roundtrip(nat, client, [backend], b"2")
    second, _ = nat.entry(client)
    assert second != first


def test_clear_n(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    for _ in range(5):
        peers().send(b"x", nat.address)
    assert len(backend.receive_all(5)) == 5
    assert nat.command("clear 2") == ["2 - NAT entries dropped."]
    assert nat.command("clear 10") == ["3 - NAT entries dropped."]
    assert nat.command("clear x") == ["clear: 'x' is not a number"]


def test_reassign_changes_the_port_but_not_the_backend(start_nat, peers) -> None:
    backends = [peers(), peers()]
    nat = start_nat("127.0.0.1:0", backends[0].text, backends[1].text)
    client = peers()
    used = roundtrip(nat, client, backends, b"1")
    old_port, old_name = nat.entry(client)
    assert nat.command("reassign") == ["reassigned 1 NAT entries to new local addresses."]
    new_port, new_name = nat.entry(client)
    assert new_port != old_port
    assert new_name == old_name
    assert roundtrip(nat, client, backends, b"2") is used
    # The old mapping is gone: an answer to the old port does not reach the client.
    used.send(b"late", (LOOPBACK, old_port))
    assert client.receive(timeout=0.2) is None


def test_load_balancing_is_random_and_sticky(start_nat, peers) -> None:
    backends = [peers(), peers()]
    nat = start_nat("127.0.0.1:0", backends[0].text, backends[1].text)
    clients = [peers() for _ in range(40)]
    chosen: dict[int, set[int]] = {}
    for _ in range(3):
        for client in clients:
            client.send(str(client.port).encode(), nat.address)
        for index, backend in enumerate(backends):
            for data, _ in backend.receive_all(120, timeout=0.3):
                chosen.setdefault(int(data), set()).add(index)
    assert len(chosen) == 40
    assert all(len(indexes) == 1 for indexes in chosen.values())  # sticky
    counts = [sum(1 for ix in chosen.values() if ix == {i}) for i in range(2)]
    assert all(counts), counts  # both used (fails with probability 2 * 0.5**40)
    info = nat.command("info")
    usages = sorted(int(line.rsplit(" ", 1)[1]) for line in info if line.startswith("Dest"))
    assert usages == sorted(counts)


def test_rebalance_moves_entries(start_nat, peers) -> None:
    backends = [peers(), peers()]
    nat = start_nat("127.0.0.1:0", backends[0].text, backends[1].text)
    clients = [peers() for _ in range(40)]
    for client in clients:
        client.send(b"x", nat.address)
    assert sum(len(b.receive_all(40, timeout=0.3)) for b in backends) == 40
    before = {client.port: nat.entry(client)[1] for client in clients}
    answer = nat.command("rebalance")
    assert answer[0].startswith("reassigned ") and answer[0].endswith(" destinations of 40.")
    moved = int(answer[0].split()[1])
    after = {client.port: nat.entry(client)[1] for client in clients}
    assert moved == sum(1 for port in before if before[port] != after[port])
    assert moved > 0  # fails with probability 0.5**40
    # The next datagram of a moved client goes to its new destination.
    port = next(p for p in before if before[p] != after[p])
    client = next(c for c in clients if c.port == port)
    target = next(b for b in backends if b.text == after[port])
    client.send(b"moved", nat.address)
    assert target.receive()[0] == b"moved"


def test_add_and_remove(start_nat, peers) -> None:
    first, second = peers(), peers()
    nat = start_nat("127.0.0.1:0", first.text)
    client = peers()
    roundtrip(nat, client, [first], b"1")
    assert nat.command(f"add {second.text}") == [f"/{second.text} added"]
    assert nat.command(f"add {second.text}") == [f"/{second.text} is already a destination"]
    assert nat.command(f"remove {first.text}") == [f"/{first.text} removed"]
    assert nat.command(f"remove {first.text}") == [f"/{first.text} is not a destination"]
    # The entry still points at the removed destination until its next datagram: fail-over.
    roundtrip(nat, client, [second], b"2")
    assert nat.counters()["failovers"] == 1
    assert nat.command("info")[1:] == ["1 destinations.", f"Destination: {second.text}, usage: 1"]
    assert nat.command("add nowhere.invalid:1")[0].startswith("add: address nowhere.invalid")
    assert nat.command("add") == ["usage: add <host:port>"]


def test_no_destination_left(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    nat.command(f"remove {backend.text}")
    peers().send(b"x", nat.address)
    assert wait_until(lambda: nat.counters()["forward-dropped-no-destination"] == 1)
    assert backend.receive(timeout=0.1) is None


def test_a_backlog_larger_than_one_round_is_drained(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    client = peers()
    roundtrip(nat, client, [backend], b"open")
    port, _ = nat.entry(client)
    # Hold the NAT's loop while 200 answers queue up on the entry's socket: more than one
    # round reads from a socket, so the rest must be reported again.
    nat.loop.call_soon_threadsafe(time.sleep, 0.3)
    time.sleep(0.05)
    for i in range(200):  # 64 per round; the socket's default buffer holds about 270
        backend.send(b"%03d" % i, (LOOPBACK, port))
    arrived = [data for data, _ in client.receive_all(200)]
    assert arrived == [b"%03d" % i for i in range(200)]


# -- reverse address update ------------------------------------------------------------------


def _entry_and_other(nat: NatThread, client: Peer, backends: list[Peer]) -> tuple[Peer, Peer, int]:
    used = roundtrip(nat, client, backends, b"first")
    port, _ = nat.entry(client)
    other = backends[1] if used is backends[0] else backends[0]
    return used, other, port


def test_reverse_update_follows_the_answering_destination(start_nat, peers) -> None:
    backends = [peers(), peers()]
    nat = start_nat("127.0.0.1:0", backends[0].text, backends[1].text, "-r")
    client = peers()
    used, other, port = _entry_and_other(nat, client, backends)
    # Another node answers for the entry (a cluster without backward forwarding).
    other.send(b"from the other node", (LOOPBACK, port))
    assert client.receive()[0] == b"from the other node"
    assert nat.entry(client) == (port, other.text)
    client.send(b"next", nat.address)
    assert other.receive()[0] == b"next"
    assert used.receive(timeout=0.1) is None
    counters = nat.counters()
    assert counters["wrong-routed"] == 1 and counters["reverse-updates"] == 1


def test_without_reverse_update_a_wrong_routed_answer_is_dropped(start_nat, peers) -> None:
    backends = [peers(), peers()]
    nat = start_nat("127.0.0.1:0", backends[0].text, backends[1].text)
    client = peers()
    used, other, port = _entry_and_other(nat, client, backends)
    other.send(b"wrong", (LOOPBACK, port))
    assert client.receive(timeout=0.3) is None  # cf-nat sent 2048 bytes of buffer here
    assert nat.entry(client)[1] == used.text
    assert nat.counters()["wrong-routed-dropped"] == 1
    # ... and "reverse on" switches it on at run time.
    info = nat.command("reverse on")
    assert info[0] == "1 NAT entries, reverse address update enabled."
    other.send(b"right", (LOOPBACK, port))
    assert client.receive()[0] == b"right"
    assert nat.command("reverse off")[0].endswith("disabled.")


def test_reverse_update_ignores_strangers(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-r")
    client = peers()
    roundtrip(nat, client, [backend], b"1")
    port, _ = nat.entry(client)
    peers().send(b"spoofed", (LOOPBACK, port))
    assert client.receive(timeout=0.3) is None
    assert nat.entry(client)[1] == backend.text
    roundtrip(nat, client, [backend], b"2")


# -- bounds and timeouts ---------------------------------------------------------------------


def test_entry_bound(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-n=3")
    clients = [peers() for _ in range(4)]
    for client in clients:
        client.send(b"x", nat.address)
    assert len(backend.receive_all(4, timeout=0.3)) == 3
    counters = nat.counters()
    assert counters["entries"] == 3
    assert counters["forward-dropped-table-full"] == 1
    nat.command("clear 1")
    clients[3].send(b"now", nat.address)
    assert backend.receive()[0] == b"now"


def test_idle_entries_expire(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-tnat=100")
    client = peers()
    roundtrip(nat, client, [backend], b"x")
    assert wait_until(lambda: nat.counters()["entries"] == 0)
    assert nat.counters()["entries-expired"] == 1


def test_busy_entries_do_not_expire(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-tnat=300")
    client = peers()
    roundtrip(nat, client, [backend], b"0")
    port, _ = nat.entry(client)
    for i in range(8):  # 8 x 0.1 s: more than twice the timeout, never idle for long
        time.sleep(0.1)
        roundtrip(nat, client, [backend], str(i).encode())
    assert nat.entry(client) == (port, backend.text)


def answer_all(backend: Peer, quiet: float = 0.2) -> int:
    """Answer every datagram at once until none came for *quiet* s; returns how many."""
    count = 0
    while (item := backend.receive(timeout=quiet)) is not None:
        backend.send(b"re", item[1])
        count += 1
    return count


def test_silent_destination_goes_stale_then_probing(start_nat, peers) -> None:
    live, silent = peers(), peers()
    nat = start_nat("127.0.0.1:0", live.text, silent.text, "-tlb=400")
    clients = [peers() for _ in range(30)]
    for client in clients:
        client.send(b"x", nat.address)
    answer_all(live)
    on_silent = [c for c in clients if nat.entry(c)[1] == silent.text]
    assert on_silent  # fails with probability 0.5**30
    assert len(silent.receive_all(len(on_silent))) == len(on_silent)

    def stale() -> bool:
        return nat.command("info")[1] == "1 destinations, 1 stale destinations."

    assert wait_until(stale)
    assert any(line.startswith(f"Stale      : {silent.text}") for line in nat.command("info"))
    # A client of the stale destination fails over with its next datagram.
    on_silent[0].send(b"again", nat.address)
    assert answer_all(live) == 1
    assert nat.counters()["failovers"] == 1
    # After another timeout it is probed with the next new client ...
    assert wait_until(lambda: any(line.startswith("Probing") for line in nat.command("info")))
    newcomer = peers()
    newcomer.send(b"probe", nat.address)
    data, source = silent.receive()
    assert data == b"probe"
    assert any(line.startswith(f"Pending    : {silent.text}") for line in nat.command("info"))
    # ... and an answer revives it.
    silent.send(b"alive", source)
    assert newcomer.receive()[0] == b"alive"
    assert nat.command("info")[1] == "2 destinations."


def test_rebalance_reactivates_stale_destinations(start_nat, peers) -> None:
    live, silent = peers(), peers()
    nat = start_nat("127.0.0.1:0", live.text, silent.text, "-tlb=100")
    for _ in range(20):
        peers().send(b"x", nat.address)
    assert wait_until(lambda: "stale" in nat.command("info")[1])
    nat.command("rebalance")
    assert nat.command("info")[1] == "2 destinations."


# -- fault injection -------------------------------------------------------------------------


def test_forward_loss(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-f=50")
    client = peers()
    for i in range(400):
        client.send(b"%d" % i, nat.address)
    arrived = len(backend.receive_all(400, timeout=0.3))
    assert 100 < arrived < 300  # binomial(400, 0.5): outside with probability < 1e-20
    counters = nat.counters()
    assert counters["forwarded"] == arrived
    assert counters["forward-dropped-loss"] == 400 - arrived


def test_backward_loss_and_both_directions(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-b=100")
    client = peers()
    client.send(b"x", nat.address)
    _data, source = backend.receive()
    backend.send(b"answer", source)
    assert client.receive(timeout=0.3) is None
    assert nat.counters()["backward-dropped-loss"] == 1
    other = peers()
    nat2 = start_nat("127.0.0.1:0", other.text, "-d=100")
    client.send(b"x", nat2.address)
    assert other.receive(timeout=0.3) is None
    assert nat2.counters()["forward-dropped-loss"] == 1


def test_size_limits_per_direction(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-s=100", "--max-size-backward", "10")
    client = peers()
    client.send(b"a" * 101, nat.address)
    client.send(b"b" * 100, nat.address)
    data, source = backend.receive()
    assert data == b"b" * 100
    assert backend.receive(timeout=0.1) is None
    backend.send(b"c" * 11, source)
    backend.send(b"d" * 10, source)
    assert client.receive()[0] == b"d" * 10
    counters = nat.counters()
    assert counters["forward-dropped-size"] == 1
    assert counters["backward-dropped-size"] == 1


def test_delay_and_jitter(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "--delay-forward", "150",
                    "--delay-backward", "0:300")  # fmt: skip
    client = peers()
    started = time.monotonic()
    client.send(b"late", nat.address)
    _data, source = backend.receive()
    assert time.monotonic() - started >= 0.14
    # Backward: 30 datagrams with a random delay of 0..300 ms each arrive out of order.
    for i in range(30):
        backend.send(b"%02d" % i, source)
    arrived = [data for data, _ in client.receive_all(30)]
    assert sorted(arrived) == [b"%02d" % i for i in range(30)]
    assert arrived != sorted(arrived)  # in order with probability 1/30!
    counters = nat.counters()
    assert counters["forward-delayed"] == 1 and counters["backward-delayed"] == 30
    assert counters["delayed-waiting"] == 0


def test_delayed_datagrams_are_bounded_and_the_excess_is_dropped(peers) -> None:
    """At most max_delayed datagrams wait for their delay (each an event-loop timer), in
    both directions together: beyond, a datagram is dropped, counted as delayed-dropped and
    never scheduled; a delivered one frees its place. The forwarder is driven by hand with a
    scheduler that only records, so nothing becomes due by itself."""
    max_delayed, sent = 8, 24
    scheduled: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []

    def scheduler(delay: float, callback: Callable[..., None], *args: Any) -> None:
        scheduled.append((delay, callback, args))

    def pump(read: Callable[[], None], counter: str, expected: int) -> dict[str, int]:
        """Call *read* until *counter* reaches *expected* (loopback delivers promptly)."""
        for _ in range(500):
            read()
            counters = forwarder.counters()
            if counters[counter] >= expected:
                return counters
            time.sleep(0.002)
        raise AssertionError(f"{counter} stayed below {expected}")

    forwarder = _natfwd.Forwarder(16, scheduler=scheduler, max_delayed=max_delayed)
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        front.bind((LOOPBACK, 0))
        front.setblocking(False)
        index = forwarder.add_front(front.fileno())
        backend, client = peers(), peers()
        forwarder.add_destination(backend.address)
        forwarder.set_faults(_natfwd.FORWARD, delay=60.0)
        forwarder.set_faults(_natfwd.BACKWARD, delay=60.0)
        for i in range(sent):
            client.send(b"%02d" % i, front.getsockname())
            pump(lambda: forwarder.on_front_readable(index), "forward-received", i + 1)
            assert forwarder.waiting == len(scheduled) <= max_delayed  # never past the bound
        counters = forwarder.counters()
        assert counters["forward-delayed"] == sent and counters["forwarded"] == 0
        assert counters["delayed-dropped"] == sent - max_delayed
        assert [args[-1] for _, _, args in scheduled] == [b"%02d" % i for i in range(max_delayed)]
        assert backend.receive(timeout=0.05) is None  # the dropped ones do not come later
        # One is due: it goes out and frees a place, which a backward datagram then takes.
        _delay, deliver, args = scheduled.pop(0)
        deliver(*args)
        data, entry = backend.receive()
        assert data == b"00" and forwarder.waiting == max_delayed - 1
        backend.send(b"answer 1", entry)
        pump(forwarder.on_backward_readable, "backward-received", 1)
        assert forwarder.waiting == len(scheduled) == max_delayed
        backend.send(b"answer 2", entry)  # full again: dropped, in this direction too
        counters = pump(forwarder.on_backward_readable, "backward-received", 2)
        assert forwarder.waiting == len(scheduled) == max_delayed
        assert counters["backward-delayed"] == 2 and counters["backwarded"] == 0
        assert counters["delayed-dropped"] == sent - max_delayed + 1
        assert counters["forwarded"] == 1
    finally:
        forwarder.close()
        front.close()


def test_dtls_filter(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text, "-x")
    client = peers()
    client.send(b"\x40\x01\x12\x34", nat.address)  # CoAP: filtered
    record = bytes([22, 0xFE, 0xFD]) + bytes(11)  # a DTLS 1.2 handshake record header
    client.send(record, nat.address)
    assert backend.receive()[0] == record
    assert backend.receive(timeout=0.1) is None
    assert nat.counters()["forward-dropped-filter"] == 1


# -- console ---------------------------------------------------------------------------------


def test_console_answers_every_line(start_nat, peers) -> None:
    backend = peers()
    nat = start_nat("127.0.0.1:0", backend.text)
    assert nat.command("help")[0] == "help or ? - print this help"
    assert nat.command("?") == nat.command("help")
    assert nat.command("") == nat.command("info")
    assert nat.command("info") == [
        "0 NAT entries, reverse address update disabled.",
        "1 destinations.",
        f"Destination: {backend.text}, usage: 0",
    ]
    assert nat.command("bogus") == ["unknown command 'bogus', see help"]
    assert nat.command("reverse maybe") == ["usage: reverse (on|off)"]
    assert "forwarded: 0" in nat.command("stats")
    assert not nat.stopped
    assert nat.command("quit") == [">> exit"]
    assert nat.stopped


# -- the program -----------------------------------------------------------------------------

EXTNAT = [sys.executable, "-c", "import sys; from extplugtest.tools.nat import main; "
          "sys.exit(main())"]  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def run_extnat(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []

    def run(*args: str, stdin: int = subprocess.PIPE) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*EXTNAT, *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        processes.append(process)
        return process

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=5)


def wait_started(process: subprocess.Popen[str]) -> list[str]:
    """The startup lines up to extnat's "NAT on ..." line."""
    assert process.stdout is not None
    lines = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("extnat "):
            return lines
    raise AssertionError(f"extnat did not start: {lines}, {process.stderr.read()}")


def test_program_stdin_console(run_extnat, peers) -> None:
    backend = peers()
    port = free_port()
    process = run_extnat(f":{port}", backend.text, "-r", "-tnat=5000")
    lines = wait_started(process)
    assert lines[:4] == [
        f"in : :{port} => <any>:{port}",
        f"out: {backend.text} => {backend.text}",
        "enable NAT reverse update.",
        "NAT timeout 5000[ms].",
    ]
    out, err = process.communicate("info\nclear\nexit\n", timeout=10)
    assert out.splitlines() == [
        "0 NAT entries, reverse address update enabled.",
        "1 destinations.",
        f"Destination: {backend.text}, usage: 0",
        "0 - NAT entries dropped.",
        ">> exit",
    ]
    assert process.returncode == 0, err


def test_program_control_socket_and_signals(run_extnat, peers, tmp_path: Path) -> None:
    backend = peers()
    control = str(tmp_path / "nat.sock")
    port = free_port()
    process = run_extnat(f"127.0.0.1:{port}", backend.text, "--control", control,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    wait_started(process)
    client = peers()
    client.send(b"x", (LOOPBACK, port))
    assert backend.receive()[0] == b"x"
    assert send_command(control, "info")[0] == "1 NAT entries, reverse address update disabled."
    assert send_command(control, "reassign") == ["reassigned 1 NAT entries to new local addresses."]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert not os.path.exists(control)  # removed on exit


def test_program_exit_over_control_socket(run_extnat, peers, tmp_path: Path) -> None:
    backend = peers()
    control = str(tmp_path / "nat.sock")
    # A socket file left behind by a NAT that died is taken over ...
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(control)
    process = run_extnat(f"127.0.0.1:{free_port()}", backend.text, "--control", control,
                         "--no-console")  # fmt: skip
    wait_started(process)
    # ... but not one in use.
    second = run_extnat(f"127.0.0.1:{free_port()}", backend.text, "--control", control)
    _, err = second.communicate(timeout=10)
    assert second.returncode == 1
    assert err == f"extnat: cannot start: control socket {control} is in use\n"
    assert send_command(control, "exit") == [">> exit"]
    assert process.wait(timeout=10) == 0


def test_program_usage_error_is_one_line(run_extnat) -> None:
    process = run_extnat(":1", "127.0.0.1:2", "-d=10", "-b=5")
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 2
    assert err.count("\n") == 1 and err.startswith("extnat: error: ")


def test_program_port_in_use(run_extnat, peers) -> None:
    taken = peers()
    process = run_extnat(taken.text, "127.0.0.1:9")
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 1
    assert err == f"extnat: cannot listen on {taken.text}: Address already in use\n"


def test_program_help(run_extnat) -> None:
    process = run_extnat("-h")
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "usage: extnat :PORT DEST:PORT" in out
