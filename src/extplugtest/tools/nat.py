"""``extnat``: UDP NAT and load balancer with a console (Californium's cf-nat).

Every client address gets a NAT entry with its own outgoing socket (so the destination sees a
port of its own per client, and a new one after ``clear`` or ``reassign``) and one destination,
picked at random among the active ones and kept. Datagrams are forwarded in C
(``_natfwd``); this module opens the sockets, runs the timers (entry expiry, destination
health, statistics) and carries out the console commands, which come from stdin and, with
``--control PATH``, from a UNIX socket (``nat_console``).

Differences from Californium, on purpose (its bugs: inventory §9 item 8):

* With reverse update off, an answer from another source than the entry's destination is
  dropped and counted (cf-nat sends its whole 2048-byte buffer to the client). With it on, an
  answer from an address that is no destination is dropped too (cf-nat's entry loses its
  destination and fails on the next forward).
* ``-s`` drops forward datagrams larger than the limit (cf-nat's check never triggers). Sizes
  and delays can be set per direction with long options.
* Datagrams of any size pass (cf-nat truncates at 2048 bytes).
* ``reassign`` gives each entry a new outgoing socket but keeps its destination (cf-nat also
  draws a new random destination); ``rebalance`` is the command that moves entries.
* A reply from a stale, probing or pending destination makes it active again at once.
* Every console line is answered (cf-nat is silent for ``reassign``, unknown commands and
  failed ``add``/``remove``); ``stats`` prints the counters.
* Options may come before the addresses, and bad options stop with exit code 2.
* The API-only features of NioNatUtil (mixLocalAddresses, assignLocalAddress) and the 4.x
  ``spoof`` command are not there.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import sys

from extplugtest import __version__
from extplugtest.coap.timer import PeriodicTimer
from extplugtest.stdin_console import StdinConsole
from extplugtest.tools import _natfwd
from extplugtest.tools.nat_console import CommandConsole, ControlServer
from extplugtest.tools.nat_options import Endpoint, NatOptions, UsageError, parse_args

EXIT_USAGE = 2
EXIT_FAILURE = 1
SOCKET_BUFFER = 4 * 1024 * 1024  # front sockets: thousands of clients in flight
STATISTICS_INTERVAL = 10.0  # Californium's MESSAGE_DROPPING_LOG_INTERVAL_MS
MIN_CHECK_INTERVAL = 0.01
STATE_LABELS = {
    _natfwd.STALE: "Stale      ",
    _natfwd.PROBING: "Probing    ",
    _natfwd.PENDING: "Pending    ",
    _natfwd.REMOVED: "Removed    ",
}
# Counters worth a log line when they grow (the forwarding counters always grow).
LOGGED_COUNTERS = (
    "forward-dropped-loss",
    "forward-dropped-size",
    "forward-dropped-filter",
    "forward-dropped-table-full",
    "forward-dropped-no-destination",
    "forward-send-errors",
    "backward-dropped-loss",
    "backward-dropped-size",
    "backward-send-errors",
    "wrong-routed",
    "wrong-routed-dropped",
    "delayed-dropped",
    "entries-expired",
    "entry-socket-errors",
)

logger = logging.getLogger("extplugtest.nat")


class NatError(Exception):
    """A failure to start, reported as one line with exit code 1."""


def open_front(endpoint: Endpoint) -> socket.socket:
    """A bound, non-blocking listen socket; ``:PORT`` is dual-stack where IPv6 exists."""
    candidates: list[tuple[int, tuple]]
    if endpoint.family == socket.AF_UNSPEC:
        port = endpoint.address[1]
        candidates = [(socket.AF_INET6, ("::", port)), (socket.AF_INET, ("0.0.0.0", port))]
    else:
        candidates = [(endpoint.family, endpoint.address)]
    error: OSError | None = None
    for family, address in candidates:
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:  # no IPv6 on this host: fall back to IPv4
            error = exc
            continue
        try:
            if family == socket.AF_INET6:
                wildcard = endpoint.family == socket.AF_UNSPEC
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if wildcard else 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind(address)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise NatError(f"cannot listen on {endpoint.text}: {exc.strerror}") from None
        return sock
    raise NatError(f"cannot listen on {endpoint.text}: {error}")


def show_address(address: tuple) -> str:
    host = address[0]
    return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"


def raise_file_limit(needed: int) -> None:
    """Every entry holds a socket: lift the soft limit of open files as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        logger.warning(
            "only %d open files allowed, fewer than the %d entries need; new clients will be "
            "dropped when they run out (see entry-socket-errors)",
            target,
            needed,
        )


class Nat:
    """The NAT: sockets, the C forwarder, the timers and the console operations."""

    def __init__(self, options: NatOptions, loop: asyncio.AbstractEventLoop) -> None:
        self.options = options
        self.loop = loop
        self.fronts: list[socket.socket] = []
        self.destinations: dict[int, Endpoint] = {}  # forwarder slot -> destination
        self.forwarder: _natfwd.Forwarder | None = None
        self.timers: list[PeriodicTimer] = []
        self._last_counters: dict[str, int] = {}

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> list[str]:
        """Open everything and start forwarding; returns the bound listen addresses."""
        options = self.options
        raise_file_limit(options.max_entries + len(options.listen) + 64)
        forwarder = _natfwd.Forwarder(options.max_entries, scheduler=self.loop.call_later)
        self.forwarder = forwarder
        forwarder.reverse = options.reverse
        forwarder.dtls_filter = options.dtls_filter
        for direction, faults in (
            (_natfwd.FORWARD, options.forward),
            (_natfwd.BACKWARD, options.backward),
        ):
            forwarder.set_faults(
                direction,
                loss=faults.loss,
                max_size=faults.max_size,
                size_percent=faults.size_percent,
                delay=faults.delay_ms / 1000,
                jitter=faults.jitter_ms / 1000,
                delay_percent=faults.delay_percent,
            )
        for endpoint in options.destinations:
            slot = forwarder.add_destination(endpoint.address)
            if slot >= 0:  # a duplicate is one destination, as in cf-nat
                self.destinations[slot] = endpoint
        bound = []
        try:
            for endpoint in options.listen:
                sock = open_front(endpoint)
                self.fronts.append(sock)
                index = forwarder.add_front(sock.fileno())
                self.loop.add_reader(sock.fileno(), forwarder.on_front_readable, index)
                bound.append(show_address(sock.getsockname()))
        except BaseException:
            self.close()
            raise
        self.loop.add_reader(forwarder.epoll_fd, forwarder.on_backward_readable)
        if options.nat_timeout_ms > 0:
            interval = max(options.nat_timeout_ms / 4000, MIN_CHECK_INTERVAL)
            self.timers.append(PeriodicTimer(interval, self._expire))
        if options.lb_timeout_ms > 0:
            interval = max(options.lb_timeout_ms / 4000, MIN_CHECK_INTERVAL)
            self.timers.append(PeriodicTimer(interval, self.check_destinations))
        self.timers.append(PeriodicTimer(STATISTICS_INTERVAL, self._log_statistics))
        for timer in self.timers:
            timer.start(self.loop)
        return bound

    def close(self) -> None:
        for timer in self.timers:
            timer.stop()
        self.timers.clear()
        for sock in self.fronts:
            self.loop.remove_reader(sock.fileno())
        if self.forwarder is not None:
            if self.forwarder.epoll_fd >= 0:
                self.loop.remove_reader(self.forwarder.epoll_fd)
            self.forwarder.close()
            logger.info(
                "NAT stopped. %d forwarded messages, %d backwarded",
                self.counters()["forwarded"],
                self.counters()["backwarded"],
            )
        for sock in self.fronts:
            sock.close()
        self.fronts.clear()

    @property
    def fwd(self) -> _natfwd.Forwarder:
        assert self.forwarder is not None, "NAT not started"
        return self.forwarder

    # -- timers ----------------------------------------------------------------------------
    def _expire(self) -> None:
        expired = self.fwd.expire(self.options.nat_timeout_ms / 1000)
        if expired:
            logger.debug("%d NAT entries expired", expired)

    def check_destinations(self) -> None:
        """Destination health as cf-nat: no answer within -tlb makes a destination stale
        (one always stays active); a stale one is probed after another -tlb with the next new
        entry; a probe without answer within -tlb goes back to stale."""
        timeout = self.options.lb_timeout_ms / 1000
        fwd = self.fwd
        for slot in fwd.destination_slots():
            state, _usage, unanswered, age = fwd.destination(slot)
            name = self.destinations[slot].name
            if state in (_natfwd.ACTIVE, _natfwd.PENDING) and unanswered > timeout:
                if state == _natfwd.ACTIVE and self.active_count() <= 1:
                    continue
                fwd.set_destination_state(slot, _natfwd.STALE)
                logger.warning("expires %s", name)
            elif state == _natfwd.STALE and age > timeout:
                fwd.set_destination_state(slot, _natfwd.PROBING)
                logger.warning("revive %s", name)

    def _log_statistics(self) -> None:
        counters = self.counters()
        changes = []
        for name in LOGGED_COUNTERS:
            delta = counters[name] - self._last_counters.get(name, 0)
            if delta:
                changes.append(f"{name} {delta} (overall {counters[name]})")
        self._last_counters = counters
        if changes:
            logger.warning("%s", ", ".join(changes))

    # -- queries ---------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = self.fwd.counters()
        counters["entries"] = self.fwd.count
        counters["delayed-waiting"] = self.fwd.waiting
        return counters

    def states(self) -> dict[int, tuple[int, int, float, float]]:
        return {slot: self.fwd.destination(slot) for slot in self.fwd.destination_slots()}

    def active_count(self) -> int:
        return sum(1 for state in self.states().values() if state[0] == _natfwd.ACTIVE)

    @property
    def reverse(self) -> bool:
        return bool(self.fwd.reverse)

    @reverse.setter
    def reverse(self, on: bool) -> None:
        self.fwd.reverse = on

    def info_lines(self) -> list[str]:
        """cf-nat's info: entries, destinations with their usage, then the inactive ones."""
        states = self.states()
        active = [slot for slot, state in states.items() if state[0] == _natfwd.ACTIVE]
        stale = [slot for slot, state in states.items() if state[0] == _natfwd.STALE]
        update = "enabled." if self.reverse else "disabled."
        lines = [f"{self.fwd.count} NAT entries, reverse address update {update}"]
        if stale:
            lines.append(f"{len(active)} destinations, {len(stale)} stale destinations.")
        else:
            lines.append(f"{len(active)} destinations.")
        for slot in active:
            lines.append(f"Destination: {self.destinations[slot].name}, usage: {states[slot][1]}")
        for label_state in (_natfwd.STALE, _natfwd.PROBING, _natfwd.PENDING, _natfwd.REMOVED):
            for slot, (state, usage, unanswered, age) in states.items():
                if state != label_state:
                    continue
                if state == _natfwd.STALE:
                    last = int(age)
                else:
                    last = int(unanswered) if unanswered >= 0 else -1
                lines.append(
                    f"{STATE_LABELS[state]}: {self.destinations[slot].name}, usage: {usage}, "
                    f"last usage: {last}[s] {_natfwd.STATE_NAMES[state]}"
                )
        return lines

    def stats_lines(self) -> list[str]:
        return [f"{name}: {value}" for name, value in self.counters().items()]

    # -- commands --------------------------------------------------------------------------
    def clear(self, limit: int | None = None) -> int:
        return int(self.fwd.clear(-1 if limit is None else limit))

    def reassign(self) -> tuple[int, int]:
        reassigned, failed = self.fwd.reassign()
        return int(reassigned), int(failed)

    def rebalance(self) -> tuple[int, int]:
        """Stale, probing and pending destinations become active again, then every entry
        draws a new destination; returns (changed, entries)."""
        for slot, state in self.states().items():
            if state[0] in (_natfwd.STALE, _natfwd.PROBING, _natfwd.PENDING):
                self.fwd.set_destination_state(slot, _natfwd.ACTIVE)
        entries = self.fwd.count
        return int(self.fwd.rebalance()), entries

    def add(self, endpoint: Endpoint) -> bool:
        slot = self.fwd.add_destination(endpoint.address)
        if slot < 0:
            return False
        self.destinations[slot] = endpoint
        return True

    def remove(self, endpoint: Endpoint) -> bool:
        slot = self.fwd.find_destination(endpoint.address)
        if slot < 0:
            return False
        self.fwd.remove_destination(slot)
        if slot not in self.fwd.destination_slots():
            del self.destinations[slot]
        return True

    def entry(self, client: tuple) -> tuple[int, Endpoint] | None:
        """(outgoing local port, destination) of a client's entry, or None."""
        found = self.fwd.entry(client)
        if found is None:
            return None
        port, slot = found
        return int(port), self.destinations[slot]


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"extnat: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        return fail(f"error: {exc}", EXIT_USAGE)
    if options is None:
        return 0
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(options.verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for endpoint in options.listen:
        target = endpoint.name if endpoint.host else f"<any>:{endpoint.address[1]}"
        print(f"in : {endpoint.text} => {target}")
    for endpoint in options.destinations:
        print(f"out: {endpoint.text} => {show_address(endpoint.address)}")
    for note in options.notes:
        print(note)
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    nat = Nat(options, loop)
    stop = asyncio.Event()
    console = CommandConsole(nat, stop.set)
    control = ControlServer(console, options.control) if options.control else None
    stdin = (
        StdinConsole(lambda raw: console.execute(raw.decode("utf-8", "replace")), loop)
        if options.console
        else None
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            bound = nat.start()
            if control is not None:
                loop.run_until_complete(control.start())
        except NatError as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"cannot start: {exc.strerror or exc}")
        print(
            f"extnat {__version__}: NAT on {', '.join(bound)}, {len(nat.destinations)} "
            f"destinations, max. {options.max_entries} entries"
            + (f", control {options.control}" if options.control else "")
        )
        sys.stdout.flush()
        if stdin is not None:
            stdin.start()
        loop.run_until_complete(stop.wait())
    finally:
        if stdin is not None:
            stdin.close()
        if control is not None:
            loop.run_until_complete(control.close())
        nat.close()
        loop.close()
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
