"""The console of ``extnat``: cf-nat's commands, read from stdin and from a control socket.

``CommandConsole.execute(line)`` answers one command line with a list of lines. The same
interpreter serves the terminal (``StdinConsole``: answers go to stdout) and the UNIX stream
socket of ``--control PATH`` (``ControlServer``: each answer is followed by an empty line, so
that a script knows where it ends). ``send_command(path, line)`` is that script side::

    python -m extplugtest.tools.nat_console /tmp/nat.sock clear
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from extplugtest.tools.nat_options import UsageError, parse_endpoint

if TYPE_CHECKING:
    from extplugtest.tools.nat import Nat

HELP = [
    "help or ? - print this help",
    "info or <empty line> - list number of NAT entries and destinations",
    "stats - list the forwarding and drop counters",
    "exit or quit - stop and exit",
    "clear [n] - drop all NAT entries, or drop n NAT entries",
    "reassign - reassign incoming addresses (a new outgoing port for every NAT entry)",
    "rebalance - reassign outgoing addresses (a new random destination for every NAT entry)",
    "add <host:port> - add new destination to load balancer",
    "remove <host:port> - remove destination from load balancer",
    "reverse (on|off) - enable/disable reverse address updates.",
]
MAX_LINE = 4096  # longer console lines are dropped, not buffered without bound
MAX_CONTROL_CLIENTS = 8


class CommandConsole:
    """Runs one console line against *nat*; *stop* is called for exit/quit."""

    def __init__(self, nat: Nat, stop: Callable[[], None]) -> None:
        self.nat = nat
        self.stop = stop

    def execute(self, line: str) -> list[str]:
        words = line.split()
        command = words[0].lower() if words else "info"
        args = words[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if command in ("?",):
            handler = self._cmd_help
        elif command == "quit":
            handler = self._cmd_exit
        if handler is None:
            return [f"unknown command '{line.strip()}', see help"]
        result: list[str] = handler(args)
        return result

    def _cmd_help(self, args: list[str]) -> list[str]:
        return list(HELP)

    def _cmd_info(self, args: list[str]) -> list[str]:
        return self.nat.info_lines()

    def _cmd_stats(self, args: list[str]) -> list[str]:
        return self.nat.stats_lines()

    def _cmd_exit(self, args: list[str]) -> list[str]:
        self.stop()
        return [">> exit"]

    def _cmd_clear(self, args: list[str]) -> list[str]:
        if len(args) > 1:
            return ["usage: clear [n]"]
        limit = None
        if args:
            if not args[0].isdigit():
                return [f"clear: '{args[0]}' is not a number"]
            limit = int(args[0])
        return [f"{self.nat.clear(limit)} - NAT entries dropped."]

    def _cmd_reassign(self, args: list[str]) -> list[str]:
        reassigned, failed = self.nat.reassign()
        line = f"reassigned {reassigned} NAT entries to new local addresses."
        if failed:
            line += f" {failed} failed (no socket), they keep their address."
        return [line]

    def _cmd_rebalance(self, args: list[str]) -> list[str]:
        count, entries = self.nat.rebalance()
        return [f"reassigned {count} destinations of {entries}."]

    def _cmd_add(self, args: list[str]) -> list[str]:
        if len(args) != 1:
            return ["usage: add <host:port>"]
        try:
            endpoint = parse_endpoint(args[0], listen=False)
        except UsageError as exc:
            return [f"add: {exc}"]
        try:
            added = self.nat.add(endpoint)
        except ValueError as exc:  # the destination table is full
            return [f"add: {exc}"]
        if not added:
            return [f"{endpoint.java_text} is already a destination"]
        return [f"{endpoint.java_text} added"]

    def _cmd_remove(self, args: list[str]) -> list[str]:
        if len(args) != 1:
            return ["usage: remove <host:port>"]
        try:
            endpoint = parse_endpoint(args[0], listen=False)
        except UsageError as exc:
            return [f"remove: {exc}"]
        if not self.nat.remove(endpoint):
            return [f"{endpoint.java_text} is not a destination"]
        return [f"{endpoint.java_text} removed"]

    def _cmd_reverse(self, args: list[str]) -> list[str]:
        if len(args) != 1 or args[0].lower() not in ("on", "off"):
            return ["usage: reverse (on|off)"]
        self.nat.reverse = args[0].lower() == "on"
        return self.nat.info_lines()


class ControlServer:
    """``--control PATH``: the console on a UNIX stream socket, for scripts and tests."""

    def __init__(self, console: CommandConsole, path: str) -> None:
        self.console = console
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._remove_stale()
        self.server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)  # console commands are for the owner only

    def _remove_stale(self) -> None:
        """A socket file left by a NAT that died is removed; one in use is an error."""
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is no socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.path)
            except ConnectionRefusedError:
                os.unlink(self.path)
                return
        raise OSError(errno.EADDRINUSE, f"control socket {self.path} is in use")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= MAX_CONTROL_CLIENTS:
            writer.write(b"too many control connections\n\n")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            while True:
                try:
                    raw = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b"line too long\n\n")
                    break
                if not raw:
                    break
                answer = self.console.execute(raw.decode("utf-8", "replace"))
                writer.write(("\n".join(answer) + "\n\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(task)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self.clients):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def send_command(path: str, line: str, timeout: float = 5.0) -> list[str]:
    """Send one console line to a NAT's control socket and return the answer's lines."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line.strip("\n").encode() + b"\n")
        data = b""
        while not data.endswith(b"\n\n") and len(data) < 1 << 20:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").removesuffix("\n\n").split("\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m extplugtest.tools.nat_console PATH COMMAND...", file=sys.stderr)
        return 2
    try:
        for line in send_command(args[0], " ".join(args[1:])):
            print(line)
    except OSError as exc:
        print(f"nat_console: {args[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
