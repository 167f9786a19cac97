"""DTLS handshakes per second: our client against our server (with CID), server on CPU 0.

Starts ``extserver`` pinned to CPU 0, runs N full handshakes (HelloVerifyRequest included) from
this process pinned to CPU 1, each with a fresh socket, *parallel* at a time, and prints
handshakes/s and handshakes per server-CPU-second (the issue's figure; the client's Python cost
is not the server's).

    .venv/bin/python bench/dtls_handshakes.py [--handshakes 2000] [--parallel 50]
        [--key-exchange psk|ecdhe-psk|ecdhe-ecdsa]

ECDHE_ECDSA handshakes use the demo PKI (server certificate chain, the server asks for a client
certificate: WANTED) with X25519, as Californium's clients negotiate it.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time

from extplugtest.dtls import ciphersuites as cs
from extplugtest.dtls.handshake_client import ClientHandshake
from extplugtest.dtls.pki import demo_client_credentials
from throughput import CLK_TCK, LOOPBACK, SERVERS, Processes, start_server

MAX_HANDSHAKES = 100_000


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


KEY_EXCHANGES = {
    "psk": (cs.TLS_PSK_WITH_AES_128_CCM_8,),
    "ecdhe-psk": (cs.TLS_ECDHE_PSK_WITH_AES_128_CCM_8_SHA256,),
    "ecdhe-ecdsa": (cs.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,),
}


def run(port: int, total: int, parallel: int, key_exchange: str) -> tuple[int, int]:
    """(succeeded, failed) handshakes, *parallel* in flight, bounded by a deadline."""
    selector = selectors.DefaultSelector()
    certificate = demo_client_credentials() if key_exchange == "ecdhe-ecdsa" else None
    started = done = failed = 0
    deadline = time.monotonic() + 600

    def begin() -> None:
        nonlocal started
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.connect((LOOPBACK, port))
        handshake = ClientHandshake(
            b"cali.bench" + str(started).encode(), b".fornium",
            cipher_suites=KEY_EXCHANGES[key_exchange], certificate=certificate,
        )  # fmt: skip
        sock.send(handshake.start())
        selector.register(sock, selectors.EVENT_READ, handshake)
        started += 1

    for _ in range(min(parallel, total)):
        begin()
    while (done + failed) < total and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock, handshake = key.fileobj, key.data
            try:
                for datagram in handshake.on_datagram(sock.recv(4096)):
                    sock.send(datagram)
            except Exception:
                handshake = None
            if handshake is None or handshake.done:
                selector.unregister(sock)
                sock.close()
                if handshake is None:
                    failed += 1
                else:
                    done += 1
                if started < total:
                    begin()
    return done, failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=50)
    parser.add_argument("--key-exchange", choices=sorted(KEY_EXCHANGES), default="psk")
    args = parser.parse_args()
    if not 1 <= args.handshakes <= MAX_HANDSHAKES:
        parser.error(f"--handshakes must be 1..{MAX_HANDSHAKES}")
    os.sched_setaffinity(0, {1})
    with Processes() as processes, open(os.devnull, "wb") as log:
        server, port = start_server(SERVERS["ours"], processes, log)
        secure_port = port + 1
        before, start = server_cpu(server.pid), time.monotonic()
        done, failed = run(secure_port, args.handshakes, args.parallel, args.key_exchange)
        cpu, elapsed = server_cpu(server.pid) - before, time.monotonic() - start
    rate, per_cpu = done / elapsed, done / max(cpu, 1e-9)
    print(
        f"{args.key_exchange}: {done} handshakes ({failed} failed) in {elapsed:.2f} s: "
        f"{rate:,.0f}/s, server CPU {cpu:.2f} s: {per_cpu:,.0f} handshakes per server-CPU-s"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
