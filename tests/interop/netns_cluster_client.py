"""DTLS clients inside a network namespace, for tests/interop/test_cluster_netns.py.

Run as ``ip netns exec NS python tests/interop/netns_cluster_client.py BIND_ADDRESS``. Every
client socket is bound to BIND_ADDRESS (the namespace's own address, so records sent straight to
a node in another namespace leave through the namespace's interface). The script reads one JSON
command per line on stdin and writes one JSON answer per line on stdout (``{"ok": true, ...}``
or ``{"ok": false, "error": "<traceback>"}``); the test makes the assertions. Commands:

* ``{"op": "ready", "peers": [[host, port], ...], "timeout": s}``: send ClientHellos until every
  peer answers (bounded); ``{"ready": [bool, ...]}``.
* ``{"op": "connect", "entry": [host, port], "node_ids": [1, 2], "per_node": n, "min": n,
  "max": n}``: handshake new clients through *entry* until there are at least *min* and every
  node owns at least *per_node* of them; ``{"clients": [client, ...]}``.
* ``{"op": "requests", "requests": [[client, [host, port], path], ...], "timeout": s}``: a
  CON GET of *path* per request, in order (with all its Block2 blocks); ``{"answers":
  [{"source": [host, port], "code": c, "payload": text} or null (no answer), ...]}``.
* ``{"op": "clients"}``: ``{"clients": [...]}``; ``{"op": "exit"}``.

A client is ``{"index": i, "cid": hex, "owner": node id, "address": [host, port]}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.interop.cluster_helpers import (
    DtlsClient,
    answers_hello,
    request_whole,
)

BIND = sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0"


class NamespaceClient(DtlsClient):
    """A DtlsClient whose socket is bound to the namespace's address (not to loopback)."""

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((BIND, 0))
        return sock


CLIENTS: list[NamespaceClient] = []


def describe(index: int) -> dict:
    client = CLIENTS[index]
    return {
        "index": index,
        "cid": client.cid.hex(),
        "owner": client.owner,
        "address": list(client.address),
    }


def ready(command: dict) -> dict:
    peers = [tuple(peer) for peer in command["peers"]]
    deadline = time.monotonic() + float(command.get("timeout", 15.0))
    done = [False] * len(peers)
    while not all(done) and time.monotonic() < deadline:
        for i, peer in enumerate(peers):
            done[i] = done[i] or answers_hello(peer, bind=BIND)
        if not all(done):
            time.sleep(0.05)
    return {"ready": done}


def connect(command: dict) -> dict:
    entry = tuple(command["entry"])
    node_ids = list(command["node_ids"])
    per_node, minimum, maximum = command["per_node"], command["min"], command["max"]
    connected: list[int] = []

    def spread_ok() -> bool:
        owners = [CLIENTS[i].owner for i in connected]
        return all(owners.count(node_id) >= per_node for node_id in node_ids)

    while len(connected) < minimum or not spread_ok():
        if len(connected) >= maximum:
            owners = sorted(CLIENTS[i].owner for i in connected)
            raise AssertionError(f"the balancer did not spread: owners {owners}")
        client = NamespaceClient()
        CLIENTS.append(client)
        client.handshake(entry)
        connected.append(len(CLIENTS) - 1)
    return {"clients": [describe(i) for i in connected]}


def requests(command: dict) -> dict:
    timeout = float(command.get("timeout", 3.0))
    answers = []
    for index, peer, path in command["requests"]:
        answer = request_whole(CLIENTS[index], path, tuple(peer), timeout)
        if answer is None:
            answers.append(None)
            continue
        source, response = answer
        answers.append(
            {
                "source": list(source),
                "code": response.code,
                "payload": response.payload.decode(errors="replace"),
            }
        )
    return {"answers": answers}


HANDLERS = {
    "ready": ready,
    "connect": connect,
    "requests": requests,
    "clients": lambda _command: {"clients": [describe(i) for i in range(len(CLIENTS))]},
}


def main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            command = json.loads(line)
            if command["op"] == "exit":
                break
            result = {"ok": True, **HANDLERS[command["op"]](command)}
        except Exception:
            result = {"ok": False, "error": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    for client in CLIENTS:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
