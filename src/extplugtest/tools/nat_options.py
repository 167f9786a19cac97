"""Command line of ``extnat``: Californium cf-nat's forms plus a few long options.

Accepted (options may stand anywhere, before or after the addresses)::

    extnat :PORT DEST [DEST ...] [options]              # listen on the wildcard address
    extnat LOCAL [LOCAL ...] -- DEST [DEST ...] [options]
    extnat LOCAL DEST [DEST ...] [options]              # one LOCAL needs no "--"

Californium's short options: ``-r``, ``-x``, ``-tnat=MS``, ``-tlb=MS`` (also ``-tln``, the
spelling of its usage text), ``-n=N``, ``-d=%``, ``-f=%``, ``-b=%``, ``-s=SIZE[:%]``; the ``=``
is optional (``-d50``). Where cf-nat prints a complaint and goes on (a second ``-d``, an unknown
option, an unresolvable host), extnat stops with a one-line error and exit code 2.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from extplugtest import __version__

DEFAULT_NAT_TIMEOUT_MS = 30_000  # NioNatUtil.NAT_TIMEOUT_MS
DEFAULT_LB_TIMEOUT_MS = 15_000  # NioNatUtil.LB_TIMEOUT_MS
DEFAULT_MAX_ENTRIES = 10_000  # NioNatUtil.MAXIMUM_NAT_ENTRIES
MAX_ENTRIES = 1_000_000
MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_DELAY_MS = 60_000
MAX_DATAGRAM = 65_535

USAGE = f"""\
extnat {__version__}: UDP NAT and load balancer (Californium's cf-nat)

usage: extnat :PORT DEST:PORT [DEST:PORT ...] [options]
   or: extnat LOCAL:PORT [LOCAL:PORT ...] -- DEST:PORT [DEST ...] [options]

Addresses are HOST:PORT, IPv6 in brackets ([::1]:5684); :PORT listens on all addresses
(IPv6 and IPv4). Every client address gets its own NAT entry with its own outgoing socket and
one destination, chosen at random and kept (load balancing when several DESTs are given).

Californium's options (the '=' is optional):
  -r                      reverse address update: an answer from another destination than the
                          entry's re-points the entry to it (otherwise such answers are dropped)
  -x                      DTLS filter: forward only datagrams that look like DTLS records
  -tnat=MS                NAT entry idle timeout, 0 = never (default {DEFAULT_NAT_TIMEOUT_MS})
  -tlb=MS                 load-balancer destination timeout, 0 = off (default \
{DEFAULT_LB_TIMEOUT_MS})
  -n=N                    maximum NAT entries; new clients are dropped when full \
(default {DEFAULT_MAX_ENTRIES})
  -d=%                    drop forward and backward datagrams with this probability
  -f=% / -b=%             drop forward / backward datagrams only (not with -d)
  -s=SIZE[:%]             drop forward datagrams larger than SIZE bytes (with probability %)

More fault injection (all off by default; FWD = client to destination, BWD = back):
  --max-size-forward SIZE[:%]    the same as -s
  --max-size-backward SIZE[:%]   drop backward datagrams larger than SIZE bytes
  --delay-forward MS[:JITTER[:%]]  delay forward datagrams by MS plus up to JITTER ms
  --delay-backward MS[:JITTER[:%]] the same for backward datagrams (jitter reorders)

Control:
  --control PATH          also take console commands on a UNIX stream socket at PATH
                          (one command per line; each answer ends with an empty line)
  --no-console            do not read commands from stdin
  -v, --verbose           more log output (-vv for debug)
  -h, --help              this text;  --version  the version

Console commands: help, info (or an empty line), stats, clear [n], reassign, rebalance,
add HOST:PORT, remove HOST:PORT, reverse on|off, exit (or quit).
"""


class UsageError(Exception):
    """Bad command line: reported as one line, exit code 2."""


@dataclass
class Endpoint:
    """A listen address or destination as given (*text*), resolved to a socket address."""

    text: str
    family: int
    address: tuple  # (host, port) or (host, port, flowinfo, scope_id)
    host: str  # as given: a name or a literal (without brackets); "" for the wildcard

    @property
    def name(self) -> str:
        """Californium's NatAddress.name: host as given, ':', port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.address[1]}"

    @property
    def java_text(self) -> str:
        """Java's InetSocketAddress.toString(): ``name/ip:port`` (``/ip:port`` for literals)."""
        ip = self.address[0]
        shown = f"[{ip}]" if ":" in ip else ip
        name = "" if _is_literal(self.host) else self.host
        return f"{name}/{shown}:{self.address[1]}"


@dataclass
class Faults:
    """Fault injection for one direction; percentages 0..100."""

    loss: float = 0.0
    max_size: int = 0
    size_percent: float = 100.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    delay_percent: float = 100.0

    @property
    def active(self) -> bool:
        return bool(self.loss or self.max_size or self.delay_ms or self.jitter_ms)


@dataclass
class NatOptions:
    listen: list[Endpoint]
    destinations: list[Endpoint]
    reverse: bool = False
    dtls_filter: bool = False
    nat_timeout_ms: int = DEFAULT_NAT_TIMEOUT_MS
    lb_timeout_ms: int = DEFAULT_LB_TIMEOUT_MS
    max_entries: int = DEFAULT_MAX_ENTRIES
    forward: Faults = field(default_factory=Faults)
    backward: Faults = field(default_factory=Faults)
    control: str | None = None
    console: bool = True
    verbose: int = 0
    notes: list[str] = field(default_factory=list)  # Californium's echo of what was set


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return True


def split_host_port(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (host ""), as URI("proxy://" + text) reads it."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise UsageError(f"'{text}': expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise UsageError(f"'{text}': expected HOST:PORT")
        if ":" in host:
            raise UsageError(f"'{text}': an IPv6 address needs brackets, [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"'{text}': port must be 0..65535")
    return host, int(port_text)


def resolve(host: str, port: int) -> tuple[int, tuple]:
    """(family, address) of a host; IPv4 first, as Java's InetAddress.getByName."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"address {host}:{port} is unresolved ({reason})") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, address = infos[0]
    return family, address


def parse_endpoint(text: str, *, listen: bool) -> Endpoint:
    host, port = split_host_port(text)
    if not host:
        if not listen:
            raise UsageError(f"'{text}': a destination needs a host")
        # The wildcard: dual-stack IPv6 where possible (see nat.py), like Java's.
        return Endpoint(text, socket.AF_UNSPEC, ("", port), "")
    if not listen and port == 0:
        raise UsageError(f"'{text}': a destination needs a port")
    family, address = resolve(host, port)
    return Endpoint(text, family, address, host.partition("%")[0])


def _value(arg: str, prefix_length: int) -> str:
    value = arg[prefix_length:]
    value = value.removeprefix("=")
    if not value:
        raise UsageError(f"option '{arg}' needs a value")
    return value


def _number(arg: str, text: str, low: float, high: float, integer: bool = True) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise UsageError(f"option '{arg}': '{text}' is not a number") from None
    if not low <= value <= high:
        raise UsageError(f"option '{arg}': {text} is out of range {low:g}..{high:g}")
    return value


def _percent(arg: str, text: str) -> float:
    return _number(arg, text, 0, 100, integer=False)


def _size_limit(arg: str, text: str) -> tuple[int, float]:
    size, _, percent = text.partition(":")
    return (
        int(_number(arg, size, 1, MAX_DATAGRAM)),
        _percent(arg, percent) if percent else 100.0,
    )


def _delay(arg: str, text: str) -> tuple[float, float, float]:
    parts = text.split(":")
    if len(parts) > 3:
        raise UsageError(f"option '{arg}': expected MS[:JITTER[:%]]")
    delay = _number(arg, parts[0], 0, MAX_DELAY_MS, integer=False)
    jitter = _number(arg, parts[1], 0, MAX_DELAY_MS, integer=False) if len(parts) > 1 else 0.0
    percent = _percent(arg, parts[2]) if len(parts) > 2 else 100.0
    return delay, jitter, percent


LONG_WITH_VALUE = (
    "--control",
    "--max-size-forward",
    "--max-size-backward",
    "--delay-forward",
    "--delay-backward",
)


def parse_args(argv: list[str]) -> NatOptions | None:
    """The options, or None when only help or the version was asked for (already printed)."""
    positionals: list[str] = []
    separator: int | None = None
    options = NatOptions([], [])
    dropping = ""  # Californium's droppingMode: -d excludes -f and -b
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            if separator is not None:
                raise UsageError("'--' given twice")
            separator = len(positionals)
            continue
        if arg in ("-h", "--help", "-?"):
            print(USAGE, end="")
            return None
        if arg == "--version":
            from extplugtest._build_info import version_text

            print(version_text("extnat"))
            return None
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name in LONG_WITH_VALUE and not eq:
                if index >= len(argv):
                    raise UsageError(f"option '{name}' needs a value")
                value = argv[index]
                index += 1
            _long_option(options, name, value, arg)
            continue
        if len(arg) > 1 and arg[0] == "-":
            dropping = _short_option(options, arg, dropping)
            continue
        positionals.append(arg)
    if separator is None:
        if len(positionals) < 2:
            raise UsageError("need a listen address and at least one destination (see -h)")
        local, destinations = positionals[:1], positionals[1:]
    else:
        local, destinations = positionals[:separator], positionals[separator:]
        if not local:
            raise UsageError("no listen address before '--'")
        if not destinations:
            raise UsageError("missing destination after '--'")
    options.listen = [parse_endpoint(text, listen=True) for text in local]
    options.destinations = [parse_endpoint(text, listen=False) for text in destinations]
    if len(options.listen) > 16:
        raise UsageError("at most 16 listen addresses")
    return options


def _long_option(options: NatOptions, name: str, value: str, arg: str) -> None:
    if name == "--control":
        if not value:
            raise UsageError("option '--control' needs a path")
        options.control = value
    elif name == "--no-console":
        options.console = False
    elif name == "--verbose":
        options.verbose += 1
    elif name in ("--max-size-forward", "--max-size-backward"):
        faults = options.forward if name == "--max-size-forward" else options.backward
        faults.max_size, faults.size_percent = _size_limit(arg, value)
    elif name in ("--delay-forward", "--delay-backward"):
        faults = options.forward if name == "--delay-forward" else options.backward
        faults.delay_ms, faults.jitter_ms, faults.delay_percent = _delay(arg, value)
    else:
        raise UsageError(f"unknown option '{name}' (see -h)")


def _short_option(options: NatOptions, arg: str, dropping: str) -> str:
    """One of Californium's options; returns the dropping mode so far."""
    option = arg[1]
    note = options.notes.append
    if arg == "-r":
        options.reverse = True
        note("enable NAT reverse update.")
    elif arg == "-x":
        options.dtls_filter = True
        note("enable DTLS filter.")
    elif arg in ("-v", "-vv"):
        options.verbose += len(arg) - 1
    elif arg.startswith("-tnat"):
        options.nat_timeout_ms = int(_number(arg, _value(arg, 5), 0, MAX_TIMEOUT_MS))
        note(f"NAT timeout {options.nat_timeout_ms}[ms].")
    elif arg.startswith(("-tlb", "-tln")):
        options.lb_timeout_ms = int(_number(arg, _value(arg, 4), 0, MAX_TIMEOUT_MS))
        note(f"LoadBalancer timeout {options.lb_timeout_ms}[ms].")
    elif option == "n":
        options.max_entries = int(_number(arg, _value(arg, 2), 1, MAX_ENTRIES))
        note(f"NAT max. entries {options.max_entries}")
    elif option in "dfb":
        if dropping and (option == "d" or dropping == "d"):
            raise UsageError(f"'{arg}': -d excludes -f and -b (dropping already provided)")
        value = _percent(arg, _value(arg, 2))
        if option in "df":
            options.forward.loss = value
        if option in "db":
            options.backward.loss = value
        what = {"d": "messages", "f": "forward messages", "b": "backwards messages"}[option]
        note(f"dropping {value:g}% of {what}.")
        return option
    elif option == "s":
        options.forward.max_size, options.forward.size_percent = _size_limit(arg, _value(arg, 2))
        note(f"size limit {options.forward.max_size} bytes, {options.forward.size_percent:g} %.")
    else:
        raise UsageError(f"option '{arg}' unknown (see -h)")
    return dropping
