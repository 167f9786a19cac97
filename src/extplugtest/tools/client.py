"""``extclient``: the CoAP client tools (Californium's cf-extplugtest-client and cf-client).

Each subcommand lives in its own module with ``add_arguments(parser)`` and ``run(args) -> int``
and is registered in ``SUBCOMMANDS``: ``benchmark`` (benchmark.py), ``receivetest``
(receivetest.py) and the one-shot requests ``get``/``post``/``put``/``delete``/``fetch``/``observe``
(oneshot.py).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn

from extplugtest._build_info import VersionAction
from extplugtest.tools import benchmark, oneshot, receivetest

# name -> (help, add_arguments, run)
SUBCOMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
] = {
    "benchmark": (
        "closed-loop load test with many emulated clients (Californium's BenchmarkClient)",
        benchmark.add_arguments,
        benchmark.run,
    ),
    **{
        name: (f"one {name.upper()} request (cf-client)", oneshot.add_arguments, oneshot.run)
        for name in oneshot.METHODS
    },
    "observe": (
        "observe a resource (GET with Observe), cancel at the end",
        oneshot.add_observe_arguments,
        oneshot.run_observe,
    ),
    "receivetest": (
        "POST to /requests and show what the server recorded (Californium's ReceivetestClient)",
        receivetest.add_arguments,
        receivetest.run,
    ),
}


class _Parser(argparse.ArgumentParser):
    """Reports bad usage as one line (plus a hint) instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="extclient", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action=VersionAction)  # package and OpenSSL versions
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (text, add_arguments, run) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=text, description=text)
        add_arguments(sub)
        sub.set_defaults(run=run, prog=sub.prog)
    return parser


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a tool like Ctrl-C, so that it still prints its results (as Californium's
    shutdown hook does)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not in the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return args.run(args)
    except benchmark.BenchmarkError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
