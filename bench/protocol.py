"""CPU per request of the HTTP/1 protocol alone: gunicorn's ``ASGIProtocol`` against jobpool's
``service.server.Protocol`` (its deadlines and rules on top).

    python -m bench.protocol [--requests 3000] [--rounds 10]

One process, one uvloop loop: a server with each protocol and a bare ASGI app (reads the
body, answers 202), and a client posting the seed batch on one kept-alive connection.
Prints process CPU per request (client and server: the client's share is the same for
both, so the difference is the protocol's), the least and the median of the rounds, which
alternate between the two so that the load of a shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson
import uvloop
from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.config import Config

from service.config import Settings
from service.server import Protocol

BATCH = orjson.dumps(
    {"Data": [{"id": str(i), "time": f"2017-01-01T00:00:0{i}Z", "data": "abc"} for i in range(9)]}
)
REQUEST = (
    b"POST /v1/parcels HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BATCH), BATCH)
)
ANSWER = b'{"accepted":9}\n'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 202, "headers": [
        (b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER)),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": ANSWER})


class _Quiet:
    access_log_enabled = False

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Worker:
    """What a protocol reads of its gunicorn worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = Config()
        self.log = _Quiet()
        self.asgi = app
        self.loop = loop
        self.nr = self.nr_conns = 0
        self.max_requests = sys.maxsize
        self.alive = True
        self.state: dict[str, Any] = {}
        self.settings = Settings.from_env({})


async def cpu_per_request(protocol: type[Any], requests: int) -> float:
    loop = asyncio.get_running_loop()
    worker = _Worker(loop)
    server = await loop.create_server(lambda: protocol(worker), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])

    async def one() -> None:
        writer.write(REQUEST)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(ANSWER))

    for _ in range(200):  # warm up
        await one()
    began = time.process_time()
    for _ in range(requests):
        await one()
    spent = time.process_time() - began
    writer.close()
    server.close()
    return spent / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    protocols = {"gunicorn ASGIProtocol": ASGIProtocol, "service.server.Protocol": Protocol}
    results: dict[str, list[float]] = {name: [] for name in protocols}
    for _ in range(args.rounds):
        for name, protocol in protocols.items():
            results[name].append(uvloop.run(cpu_per_request(protocol, args.requests)))
    print(f"CPU us per request, client and server, {args.rounds} rounds of {args.requests}")
    for name, values in results.items():
        values.sort()
        print(f"{name:<26} least {values[0]:6.1f}   median {values[len(values) // 2]:6.1f}")


if __name__ == "__main__":
    main()
