"""A fixed number of websocket echo round trips, for instruction counts.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/callgrind_websocket.py --server ours -n 2000

Run it twice (two values of -n) and divide the difference in instructions
("Collected" in valgrind's summary) by the difference in round trips: the
cost of one round trip, start-up, imports and the handshake taken out.
Instruction counts do not change with the machine's load; what they leave
out is the kernel (system calls, wake-ups), which bench/websocket_bench.py
measures with the rest.

    .venv/bin/python bench/callgrind_websocket.py --per-trip --loop uvloop

runs valgrind itself, twice (-n N and 2N) for each server, and prints the
instructions per round trip.

The servers run in this process, on its loop, over a real TCP connection on
127.0.0.1; so does the client, which is bench/websocket_bench.py's (a raw
Protocol sending one precomputed masked frame as soon as the whole echo is
back), the same for every server, so that the differences between servers
are the servers':

  --server ours        aiopyramid's HttpServer (what the gunicorn worker
                       runs), bench/websocket_bench.py's ``ours_app()``:
                       an ``async def echo(ws)`` under WebsocketMapper
  --server ours-class  the same with a WebsocketConnectionView whose
                       on_message is a coroutine
  --server ours-plain  a WebsocketConnectionView whose on_message is a plain
                       function calling ``self.send`` (never awaited)
  --server websockets  the ``websockets`` library's server
  --server aiohttp     aiohttp's web server and WebSocketResponse
  --server floor       bench/websocket_bench.py's floor: no websocket
                       server, a raw Protocol echoing each frame's bytes
                       (the client, the loop and a few thousand
                       instructions of Python: subtract it to compare what
                       the servers themselves cost)
  --clients N          N connections doing round trips at once (-n counts
                       each connection's)
"""
import argparse
import asyncio
import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, os.path.dirname(HERE))

from bench.websocket_bench import (  # noqa: E402
    Echoer, aiohttp_app, client_frame, websockets_echo)

SERVERS = ["ours", "ours-class", "ours-plain", "websockets", "aiohttp",
           "floor"]


def ours_class_app(plain):
    from pyramid.config import Configurator

    from aiopyramid.websocket.config import WebsocketMapper
    from aiopyramid.websocket.view import WebsocketConnectionView

    if plain:
        class Echo(WebsocketConnectionView):
            def on_message(self, message):
                self.send(message)
    else:
        class Echo(WebsocketConnectionView):
            async def on_message(self, message):
                await self.send(message)

    settings = {"aiopyramid.websocket.compression": "false"}
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("echo", "/echo")
        config.add_view(Echo, route_name="echo", mapper=WebsocketMapper)
        return config.make_wsgi_app()


async def start_ours(app):
    from aiopyramid.server import HttpServer

    loop = asyncio.get_running_loop()
    srv = HttpServer(app, loop, base_environ={"wsgi.version": (1, 0)})
    server = await loop.create_server(srv, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def start_websockets():
    from websockets.asyncio.server import serve

    server = await serve(websockets_echo, "127.0.0.1", 0, compression=None,
                         max_size=1 << 20, ping_interval=None)
    return server, list(server.sockets)[0].getsockname()[1]


async def start_aiohttp():
    from aiohttp import web

    app = aiohttp_app()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    return runner, sock.getsockname()[1]


async def main(server, n, size, clients, binary):
    loop = asyncio.get_running_loop()
    if server == "ours":
        from bench.websocket_bench import ours_app
        srv, port = await start_ours(ours_app())
    elif server in ("ours-class", "ours-plain"):
        srv, port = await start_ours(ours_class_app(server == "ours-plain"))
    elif server == "websockets":
        srv, port = await start_websockets()
    elif server == "floor":
        from bench.websocket_bench import Floor
        srv = await loop.create_server(Floor, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
    else:
        srv, port = await start_aiohttp()
    payload = (b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
    frame, echo_len = client_frame(payload, binary)
    done = loop.create_future()
    left = [clients]

    class Counted(Echoer):
        """Stops after n round trips of its own; the last one resolves
        `done`."""

        def data_received(self, data):
            super().data_received(data)
            if self.running and self.stats[0] >= n:
                self.running = False
                left[0] -= 1
                if left[0] == 0 and not done.done():
                    done.set_result(None)

    echoers = []
    for _ in range(clients):
        ready = loop.create_future()
        _, proto = await loop.create_connection(
            lambda: Counted(frame, echo_len, ready, [0]), "127.0.0.1", port)
        await asyncio.wait_for(ready, 30)
        echoers.append(proto)
    for e in echoers:
        e.go()
    await asyncio.wait_for(done, 600)
    for e in echoers:
        e.running = False
        e.transport.close()
    await asyncio.sleep(0.05)
    if server == "aiohttp":
        await srv.cleanup()
    else:
        srv.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=SERVERS, default="ours")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--binary", action="store_true")
    ap.add_argument("--servers", default="ours,websockets,aiohttp",
                    help="with --per-trip: which servers")
    ap.add_argument("--per-trip", action="store_true",
                    help="run under valgrind at -n and 2n; print instructions "
                         "per round trip")
    args = ap.parse_args()
    if args.per_trip:
        import re
        import subprocess

        for server in args.servers.split(","):
            counts = []
            for n in (args.n, 2 * args.n):
                cmd = ["valgrind", "--tool=callgrind",
                       "--callgrind-out-file=/dev/null", sys.executable,
                       os.path.abspath(__file__), "--server", server,
                       "--loop", args.loop, "-n", str(n), "--size",
                       str(args.size), "--clients", str(args.clients)]
                if args.binary:
                    cmd.append("--binary")
                out = subprocess.run(
                    cmd, capture_output=True, text=True, check=True,
                    env=dict(os.environ, PYTHONHASHSEED="0")).stderr
                counts.append(int(re.search(r"Collected : (\d+)", out).group(1)))
            print("%-10s %s loop, %d B, %d client(s): %.0f instructions per "
                  "round trip" % (server, args.loop, args.size, args.clients,
                                  (counts[1] - counts[0]) /
                                  (args.n * args.clients)), flush=True)
        sys.exit(0)

    def factory():
        if args.loop == "uvloop":
            import uvloop
            return uvloop.new_event_loop()
        return asyncio.new_event_loop()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args.server, args.n, args.size, args.clients,
                        args.binary))
