"""aiocoap 0.4.17 peer for bench/throughput.py: GET /benchmark answers 2.05 with 40 bytes.

aiocoap has no /benchmark of its own; like our server's ``/benchmark?rlen=40`` this returns a
40-byte payload (the query is ignored). It runs on uvloop with the ``udp6`` transport (the one
aiocoap uses by default for plain CoAP), bound to a loopback address only.

    python bench/aiocoap_server.py --port 5683 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress

import aiocoap
import uvloop
from aiocoap import resource

PAYLOAD = b"x" * 40


class Benchmark(resource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CONTENT, payload=PAYLOAD)


async def serve(host: str, port: int) -> None:
    site = resource.Site()
    site.add_resource(["benchmark"], Benchmark())
    await aiocoap.Context.create_server_context(site, bind=(host, port), transports=["udp6"])
    await asyncio.get_running_loop().create_future()  # serve until killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("only loopback addresses are allowed")
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
