"""``extclient receivetest [URI]``: Californium's ReceivetestClient (inventory §3.7).

One POST to ``<uri>/requests?dev=<device id>&rid=RID<ms>&ep[&<the URI's query>]``. The server
answers with the requests it recorded for this device (newest first, cut to its size limit);
the client prints ``Response: <raw> bytes, Payload: <n> bytes``, ``RTT: <ms>ms`` and the
answer: as text, pretty JSON or CBOR diagnostic notation, or with ``-v`` and ``--json`` /
``--cbor`` as a listing (``Server's system start: ...``, ``Request: ..., received: <diff> ms``,
``    (<ip>:<port>)``).

The device id is the ``UUID`` key of a Java properties file, ``UUID.properties`` in the
current directory (``--uuid-file``), created with a random UUID on the first run and anew with
``--reset-uuid``. The same file keeps the request ids sent since the last answered one
(``RIDS``, and ``ANSWERED`` for those that got a response), so that the next answered run can
tell what became of them, from the history the server returns:

* ``Lost request: RID<ms> (<time>)``: the server did not record it, though it should be in the
  part of the history it returned;
* ``Lost request: RID<ms> (<time>), the server restarted since``: not recorded, and the
  server's system start is later than the request;
* ``Lost response: RID<ms> (<time>)``: recorded by the server, but its response never came
  (in the ``-v`` listing marked ``* lost response!``, as Californium does).

Differences from Californium, on purpose:

* The default URI is ``coap://localhost:5783`` (Californium's sandbox host is not reachable
  everywhere), and without a port 5783 is used for any host: ``/requests`` only exists on the
  extended endpoint.
* The lost-request report above; Californium only marks lost responses, from a list that the
  caller has to pass in.
* An error response or no response is one line on stderr and exit code 1 (Californium prints
  the response, or ``No response received.``, and exits with 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field

import cbor2

from extplugtest.coap._codec import Message
from extplugtest.coap.codes import Code, ContentFormat, Option, Type
from extplugtest.resources.requests import java_host_address
from extplugtest.tools.oneshot import (
    ToolError,
    add_content_type_arguments,
    add_transport_arguments,
    client_for,
    render_payload,
    run_tool,
    say,
    show,
    target_of,
    until_stopped,
    validate,
)
from extplugtest.tools.request import is_success

DEFAULT_URI = "coap://localhost:5783"
DEFAULT_PORT = 5783  # the extended endpoint, where /requests lives
UUID_FILE = "UUID.properties"
UUID_KEY = "UUID"
RIDS_KEY = "RIDS"
ANSWERED_KEY = "ANSWERED"
ANONYMOUS = "anonymous"  # Californium's device id when the file has none or cannot be written
REQUEST_ID_PREFIX = "RID"
MAX_KEPT = 24  # request ids kept in the file: the server keeps 24 per device, too
MAX_DIFF_TIME_MS = 30_000  # larger differences are shown as absolute times
TIME_FORMAT = "%H:%M:%S %d.%m.%Y"  # Java's "HH:mm:ss dd.MM.yyyy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "uri", metavar="URI", nargs="?", default=DEFAULT_URI,
        help=f"server, coap://host[:port][?extra query] (default {DEFAULT_URI}; port "
        f"{DEFAULT_PORT})",
    )  # fmt: skip
    add_transport_arguments(parser)
    add_content_type_arguments(parser)
    parser.add_argument(
        "--uuid-file", default=UUID_FILE, metavar="FILE",
        help=f"properties file with the device id (default ./{UUID_FILE})",
    )  # fmt: skip
    parser.add_argument("--reset-uuid", action="store_true", help="create a new device id")


def java_time(ms: int) -> str:
    return time.strftime(TIME_FORMAT, time.localtime(ms / 1000))


def rid_time(rid: str) -> int | None:
    """The send time in ms of a request id ``RID<ms>``, None for another id."""
    digits = rid[len(REQUEST_ID_PREFIX) :]
    if rid.startswith(REQUEST_ID_PREFIX) and digits.isdigit():
        return int(digits)
    return None


# -- the device file (a Java properties file) ------------------------------------------------


def _unescape(text: str) -> str:
    out = []
    chars = iter(text)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        escaped = next(chars, "")
        if escaped == "u":
            digits = "".join(next(chars, "") for _ in range(4))
            with contextlib.suppress(ValueError):
                out.append(chr(int(digits, 16)))
        else:
            out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(escaped, escaped))
    return "".join(out)


def read_properties(text: str) -> dict[str, str]:
    """``java.util.Properties.load`` for single-line entries (``key=value``, ``key: value``,
    ``key value``; ``#`` and ``!`` comments)."""
    values = {}
    for raw in text.splitlines():
        line = raw.lstrip()
        if not line or line[0] in "#!":
            continue
        index = 0
        while index < len(line) and line[index] not in "=: \t\f":
            index += 2 if line[index] == "\\" else 1
        key, rest = line[:index], line[index:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        values[_unescape(key)] = _unescape(rest)
    return values


@dataclass
class Device:
    """The device id and the request ids sent since the last answered one (oldest first)."""

    path: str
    uuid: str
    rids: list[str] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)
    #: False once the file could not be written: nothing is tracked then
    writable: bool = True

    @classmethod
    def load(cls, path: str, reset: bool) -> Device:
        values: dict[str, str] | None = None
        if not reset:
            try:
                with open(path, encoding="latin-1") as source:  # Java's properties charset
                    values = read_properties(source.read())
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise ToolError(f"cannot read {path}: {exc.strerror}") from None
        if values is None:
            device = cls(path, str(uuid.uuid4()))
            if not device.save():
                device.uuid = ANONYMOUS
            return device
        rids = [rid for rid in values.get(RIDS_KEY, "").split(",") if rid]
        answered = {rid for rid in values.get(ANSWERED_KEY, "").split(",") if rid}
        return cls(path, values.get(UUID_KEY) or ANONYMOUS, rids[-MAX_KEPT:], answered)

    def save(self) -> bool:
        """Write the file (atomically); False (and a warning) when that is not possible."""
        if not self.writable:
            return False
        lines = [
            "#Californium CoAP UUID file",
            "#" + time.strftime("%a %b %d %H:%M:%S %Z %Y"),
            f"{UUID_KEY}={self.uuid}",
        ]
        if self.rids:
            lines.append(f"{RIDS_KEY}={','.join(self.rids)}")
            kept = [rid for rid in self.rids if rid in self.answered]
            if kept:
                lines.append(f"{ANSWERED_KEY}={','.join(kept)}")
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w", encoding="latin-1") as out:
                out.write("\n".join(lines) + "\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            print(f"warning: cannot write {self.path}: {exc.strerror}", file=sys.stderr)
            self.writable = False
            return False
        return True

    def sent(self, rid: str) -> None:
        self.rids = [*self.rids, rid][-MAX_KEPT:]
        self.save()

    def settle(self, rid: str) -> None:
        """*rid* was answered and the older ones are accounted for: keep only *rid*."""
        self.rids = [rid]
        self.answered = {rid}
        self.save()

    def discard(self, rid: str) -> None:
        self.rids = [r for r in self.rids if r != rid]
        self.save()


# -- the server's answer ---------------------------------------------------------------------


@dataclass
class Entry:
    rid: str
    time: int  # ms, when the server received it
    address: str | None = None  # with ``ep``
    port: int | None = None


def parse_history(payload: bytes, content_format: int | None) -> tuple[int | None, list[Entry]]:
    """The server's system start and the recorded requests, from any of the three formats.
    Raises ValueError, KeyError, TypeError or CBORError for anything else."""
    if content_format == ContentFormat.JSON:
        return _from_items(json.loads(payload), json_format=True)
    if content_format == ContentFormat.CBOR:
        return _from_items(cbor2.loads(payload), json_format=False)
    start = None
    entries = []
    for line in payload.decode("utf-8").splitlines():
        name, _, value = line.rpartition(":")
        if name == "systemstart":
            start = int(value)
        elif name:
            entries.append(Entry(name, int(value)))
    return start, entries


def _from_items(items: object, json_format: bool) -> tuple[int | None, list[Entry]]:
    if not isinstance(items, list):
        raise ValueError("not an array")
    start = None
    entries = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("not an array of maps")
        if "rid" not in item:
            start = int(item["systemstart"])
            continue
        entry = Entry(str(item["rid"]), int(item["time"]))
        if "ep" in item:
            # JSON carries getHostAddress(), CBOR the raw address; the CBOR port is a Java
            # short (negative above 32767)
            ep = item["ep"]
            entry.address = str(ep) if json_format else java_host_address(bytes(ep))
            entry.port = int(item["port"]) & 0xFFFF
        entries.append(entry)
    return start, entries


def listing(start: int | None, entries: list[Entry], lost_responses: set[str]) -> list[str]:
    """Californium's -v rendering of the JSON/CBOR history."""
    lines = []
    if start is not None:
        lines.append(f"Server's system start: {java_time(start)}")
    for entry in entries:
        sent = rid_time(entry.rid)
        if sent is None:
            line = f"Request: {entry.rid}, received: {java_time(entry.time)}"
        else:
            diff = entry.time - sent
            received = f"{diff} ms" if abs(diff) < MAX_DIFF_TIME_MS else java_time(entry.time)
            line = f"Request: {java_time(sent)}, received: {received}"
            if entry.rid in lost_responses:
                line += " * lost response!"
        lines.append(line)
        if entry.address is not None:
            host = f"[{entry.address}]" if ":" in entry.address else entry.address
            lines.append(f"    ({host}:{entry.port})")
    return lines


def lost_report(
    device: Device, current: str, start: int | None, entries: list[Entry]
) -> tuple[list[str], set[str]]:
    """Lines about the earlier requests of *device*, and the ids whose response was lost."""
    recorded = {entry.rid for entry in entries}
    # Only requests sent after the oldest one shown can be judged: the history is cut to size.
    shown = [t for t in (rid_time(entry.rid) for entry in entries) if t is not None]
    oldest = min(shown, default=None)
    lines = []
    lost_responses = set()
    for rid in device.rids:
        sent = rid_time(rid)
        if rid == current or sent is None:
            continue
        when = f"{rid} ({java_time(sent)})"
        if rid in recorded:
            if rid not in device.answered:
                lost_responses.add(rid)
                lines.append(f"Lost response: {when}")
        elif start is not None and sent < start:
            lines.append(f"Lost request: {when}, the server restarted since")
        elif oldest is not None and sent > oldest:
            lines.append(f"Lost request: {when}")
    return lines, lost_responses


# -- running ---------------------------------------------------------------------------------


def build_request(args: argparse.Namespace, device: Device, rid: str) -> Message:
    target = target_of(args.uri, DEFAULT_PORT)
    message = Message(Type.NON if args.non else Type.CON, Code.POST)
    for number, value in target.options:
        if number == Option.URI_HOST:
            message.add_option(number, value)
    message.add_option(Option.URI_PATH, "requests")
    for query in (f"dev={device.uuid}", f"rid={rid}", "ep"):
        message.add_option(Option.URI_QUERY, query)
    for number, value in target.options:
        if number == Option.URI_QUERY:  # the URI's extra query goes last, as Californium
            message.add_option(number, value)
    if args.ctype is not None:
        message.add_option(Option.ACCEPT, args.ctype)
    return message


def run(args: argparse.Namespace) -> int:
    async def work(stop: asyncio.Event) -> int:
        validate(args)
        target = target_of(args.uri, DEFAULT_PORT)
        device = Device.load(args.uuid_file, args.reset_uuid)
        if target.query:
            say(f"extra: {target.query}")
        rid = f"{REQUEST_ID_PREFIX}{int(time.time() * 1000)}"
        message = build_request(args, device, rid)
        device.sent(rid)  # kept as unanswered should the response not come
        async with client_for(args, target) as client:
            response = await until_stopped(client.request(message), stop)
        if not is_success(response.code):
            device.discard(rid)  # answered, but refused: neither lost nor recorded
            return show(response, args.prog)
        say(f"Response: {response.size} bytes, Payload: {len(response.payload)} bytes")
        say(f"RTT: {round(response.rtt * 1000)}ms")
        say("")
        try:
            start, entries = parse_history(response.payload, response.content_format)
        except (cbor2.CBORError, ValueError, KeyError, TypeError):
            start, entries = None, []  # not a history: shown as it is, nothing to judge
        lines, lost_responses = lost_report(device, rid, start, entries)
        verbose_formats = (ContentFormat.JSON, ContentFormat.CBOR)
        if args.verbose and response.content_format in verbose_formats and entries:
            for line in listing(start, entries, lost_responses):
                say(line)
        else:
            say(render_payload(response.payload, response.content_format))
        for line in lines:
            say(line)
        device.settle(rid)
        return 0

    return run_tool(args, work)
