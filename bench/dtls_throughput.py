"""DTLS (PSK, CCM-8) /benchmark throughput: requests per server-CPU-second, ours vs libcoap.

Each server runs pinned to CPU 0 (ours: ``extserver --benchmark``; libcoap:
``coap-server-openssl`` with a PUT-created ``/benchmark``); this process, pinned to CPU 1, does
the handshakes with our DTLS client and then keeps one CON GET ``/benchmark?rlen=40``
outstanding per client for the measurement window. The generator is Python, so its rate is low;
the figure to compare is requests per server-CPU-second (the server's own cost).

    .venv/bin/python bench/dtls_throughput.py [--clients 50] [--duration 10]
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time

from extplugtest.coap._codec import Message, parse
from extplugtest.dtls.handshake_client import ClientHandshake
from throughput import CLK_TCK, LOOPBACK, SERVERS, Processes, start_server

IDENTITY, SECRET = b"Client_identity", b"secretPSK"
MAX_CLIENTS = 2000


def server_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def handshake(port: int) -> tuple[socket.socket, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((LOOPBACK, port))
    client = ClientHandshake(IDENTITY, SECRET)
    sock.send(client.start())
    for _ in range(10):
        for datagram in client.on_datagram(sock.recv(4096)):
            sock.send(datagram)
        if client.done:
            sock.setblocking(False)
            return sock, client.session
    raise RuntimeError("handshake failed")


def measure(port: int, pid: int, clients: int, duration: float) -> tuple[float, float]:
    sessions = [handshake(port) for _ in range(clients)]
    selector = selectors.DefaultSelector()
    mids = [0] * clients

    def send(index: int) -> None:
        sock, session = sessions[index]
        mids[index] = (mids[index] + 1) & 0xFFFF
        request = Message(0, 1, mids[index], index.to_bytes(2, "big"))
        request.add_option(11, "benchmark").add_option(15, "rlen=40")
        sock.send(session.cipher.seal(1, session.next_write_seq, 23, request.to_bytes()))
        session.next_write_seq += 1

    for index, (sock, _) in enumerate(sessions):
        selector.register(sock, selectors.EVENT_READ, index)
        send(index)
    answered = 0
    start, cpu_start = time.monotonic(), server_cpu(pid)
    while time.monotonic() - start < duration:
        for key, _ in selector.select(timeout=0.5):
            sock, session = sessions[key.data]
            try:
                reply = parse(session.cipher.open(sock.recv(4096))[1])
            except (OSError, ValueError):
                continue
            if reply.code == 0x45:
                answered += 1
            send(key.data)
    elapsed, cpu = time.monotonic() - start, server_cpu(pid) - cpu_start
    for sock, _ in sessions:
        sock.close()
    return answered / elapsed, answered / max(cpu, 1e-9)


def libcoap(port: int, processes: Processes) -> subprocess.Popen:
    server = processes.start(["taskset", "-c", "0", "coap-server-openssl", "-A", LOOPBACK,
                              "-p", str(port - 1), "-k", SECRET.decode(), "-d", "10"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(0.5)
    subprocess.run(["coap-client-notls", "-B", "5", "-m", "put", "-e", "x" * 40,
                    f"coap://{LOOPBACK}:{port - 1}/benchmark"], check=True, timeout=10,
                   capture_output=True)  # fmt: skip
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS or not 1 <= args.duration <= 120:
        parser.error(f"--clients 1..{MAX_CLIENTS}, --duration 1..120")
    os.sched_setaffinity(0, {1})
    results = {}
    with Processes() as processes, open(os.devnull, "wb") as log:
        server, port = start_server(SERVERS["ours"], processes, log)
        results["ours"] = measure(port + 1, server.pid, args.clients, args.duration)
        processes.stop(server)
        if shutil.which("coap-server-openssl"):
            plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            plain.bind((LOOPBACK, 0))
            free = plain.getsockname()[1]
            plain.close()
            server = libcoap(free + 1, processes)
            results["libcoap"] = measure(free + 1, server.pid, args.clients, args.duration)
    base = results.get("libcoap", (0, 0))[1]
    for name, (rate, per_cpu) in results.items():
        ratio = f"{per_cpu / base:.2f}x libcoap" if base else ""
        print(f"{name:8} {args.clients} clients: {rate:,.0f} req/s, "
              f"{per_cpu:,.0f} req per server-CPU-s {ratio}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
