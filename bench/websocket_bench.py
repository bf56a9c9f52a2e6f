"""Websocket benchmark: echo round trips per second.

    .venv/bin/python bench/websocket_bench.py [--duration 3] [--rounds 5]
        [--sizes 16,1024,65536] [--clients 1,100] [--binary]

Servers, each its own process on 127.0.0.1, all on uvloop (when installed),
all echoing every message back, compression off (the client offers none):
* ours: one gunicorn worker (aiopyramid's) serving an ``async def`` view
  mapped with WebsocketMapper;
* websockets: the ``websockets`` library's own server
  (``websockets.asyncio.server.serve``);
* aiohttp: aiohttp's web server with a ``WebSocketResponse`` handler;
* floor (only when named in --servers): no websocket server at all, a raw
  uvloop Protocol that answers the handshake with a canned 101 and each
  client frame with an unmasked copy of it, parsing nothing beyond frame
  lengths, in a few lines of Python: about the least a server on this
  loop can do per message, so what the loop, the kernel and the client
  cost with next to no server (not a strict bound: bench/
  callgrind_websocket.py counts ours about 5,000 instructions per round
  trip above it, the floor's own Python included).

The client is written to cost as little as possible, so that the servers
are what is measured: raw sockets, one precomputed masked frame per size,
an asyncio Protocol per connection (uvloop) that sends the next frame as
soon as the whole echo is back (a round trip), counting.  With N clients,
N connections each do round trips back to back.  The client and the server
share the machine: on 2 cores, each gets about one.

Rounds are interleaved: every round measures every server once per
(size, clients) case, in a rotating order; each figure is the median of the
rounds' round trips per second.  The ratio columns divide ours by the peer
within the same round, then take the median.

This needs ``websockets`` and ``aiohttp`` (``pip install -e '.[bench]'``).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

AIO_WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"
SERVERS = ["ours", "websockets", "aiohttp"]


# -- the servers (run as: websocket_bench.py --serve NAME PORT) -------------

def ours_app():
    """The gunicorn app: ``bench.websocket_bench:ours_app()``."""
    from pyramid.config import Configurator
    from pyramid.response import Response

    from aiopyramid.websocket.config import WebsocketMapper

    async def echo(ws):
        while True:
            message = await ws.recv()
            if message is None:
                break
            await ws.send(message)

    def hello(request):
        return Response(b"hello", content_type="text/plain")

    settings = {"aiopyramid.websocket.compression": "false",
                "aiopyramid.websocket.max_message_size": str(1 << 20)}
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        config.add_route("hello", "/hello")
        config.add_view(hello, route_name="hello")
        config.add_route("echo", "/echo")
        config.add_view(echo, route_name="echo", mapper=WebsocketMapper)
        return config.make_wsgi_app()


def new_loop():
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def websockets_echo(ws):
    """The `websockets` server's echo handler."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:  # the client drops each connection
        pass


def aiohttp_app():
    """aiohttp's echo app: /echo."""
    from aiohttp import WSMsgType, web

    async def echo(request):
        ws = web.WebSocketResponse(compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/echo", echo)
    return app


def serve_websockets(port):
    from websockets.asyncio.server import serve

    async def main():
        async with serve(websockets_echo, "127.0.0.1", port, compression=None,
                         max_size=1 << 20, ping_interval=None):
            await asyncio.get_running_loop().create_future()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


def serve_aiohttp(port):
    from aiohttp import web

    app = aiohttp_app()
    loop = new_loop()
    asyncio.set_event_loop(loop)
    web.run_app(app, host="127.0.0.1", port=port, print=None,
                access_log=None, loop=loop)


class Floor(asyncio.Protocol):
    """The floor server: see the module's doc."""

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""
        self.upgraded = False

    def data_received(self, data):
        buf = self.buf + data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.upgraded = True
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket"
                b"\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n"
                b"\r\n")
            buf = buf[end + 4:]
        out = []
        while len(buf) >= 6:
            n = buf[1] & 0x7F
            head = 2
            if n == 126:
                n = struct.unpack_from("!H", buf, 2)[0]
                head = 4
            elif n == 127:
                n = struct.unpack_from("!Q", buf, 2)[0]
                head = 10
            if len(buf) < head + 4 + n:
                break
            # the same length back, unmasked (the client counts bytes)
            out.append(bytes([buf[0], buf[1] & 0x7F]) + buf[2:head] +
                       buf[head + 4:head + 4 + n])
            buf = buf[head + 4 + n:]
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))



def serve_floor(port):
    async def main():
        loop = asyncio.get_running_loop()
        await loop.create_server(Floor, "127.0.0.1", port)
        await loop.create_future()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


# -- starting and stopping them ----------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name):
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if name == "ours":
        args = [sys.executable, "-m", "gunicorn", "--bind",
                "127.0.0.1:%d" % port, "--worker-class", AIO_WORKER,
                "--workers", "1", "--worker-connections", "2000",
                "--log-level", "warning", "bench.websocket_bench:ours_app()"]
    else:
        args = [sys.executable, os.path.abspath(__file__), "--serve", name,
                str(port)]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s" % (name, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("%s did not start" % name)


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- the client ------------------------------------------------------------------

def client_frame(payload, binary):
    """A masked client frame (a fixed, nonzero key) and the length of the
    server's unmasked echo of it."""
    n = len(payload)
    head = bytes([0x82 if binary else 0x81])
    if n < 126:
        head += bytes([0x80 | n])
        echo = 2 + n
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
        echo = 4 + n
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        echo = 10 + n
    key = b"\x12\x34\x56\x78"
    reps = key * (n // 4 + 1)
    masked = bytes(a ^ b for a, b in zip(payload, reps))
    return head + key + masked, echo


class Echoer(asyncio.Protocol):
    """One connection: handshake, then round trips until told to stop."""

    def __init__(self, frame, echo_len, ready, stats):
        self.frame = frame
        self.echo_len = echo_len
        self.ready = ready
        self.stats = stats
        self.head = b""
        self.upgraded = False
        self.got = 0
        self.running = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
            b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def data_received(self, data):
        if not self.upgraded:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(
                    "handshake refused: %r" % self.head[:200]))
                return
            self.upgraded = True
            data = self.head[end + 4:]
            self.head = b""
            if not self.ready.done():
                self.ready.set_result(None)
        self.got += len(data)
        while self.got >= self.echo_len:
            self.got -= self.echo_len
            self.stats[0] += 1
            if self.running:
                self.transport.write(self.frame)

    def go(self):
        self.running = True
        self.transport.write(self.frame)

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost"))
        self.running = False


async def measure(port, size, clients, duration, binary):
    """Round trips per second of `clients` connections echoing `size`-byte
    messages for `duration` seconds (after a short warm-up)."""
    loop = asyncio.get_running_loop()
    payload = (b"abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[:size]
    frame, echo_len = client_frame(payload, binary)
    stats = [0]
    echoers = []
    for _ in range(clients):
        ready = loop.create_future()
        _, proto = await loop.create_connection(
            lambda: Echoer(frame, echo_len, ready, stats), "127.0.0.1", port)
        await asyncio.wait_for(ready, 30)
        echoers.append(proto)
    for e in echoers:
        e.go()
    await asyncio.sleep(min(0.5, duration / 4))  # warm-up
    start_count, start = stats[0], time.perf_counter()
    await asyncio.sleep(duration)
    count, elapsed = stats[0] - start_count, time.perf_counter() - start
    for e in echoers:
        e.running = False
        e.transport.close()
    await asyncio.sleep(0.05)
    return count / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="16,1024,65536")
    parser.add_argument("--clients", default="1,100")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--binary", action="store_true",
                        help="binary messages (default: text)")
    parser.add_argument("--serve", nargs=2, metavar=("NAME", "PORT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        name, port = args.serve
        {"websockets": serve_websockets, "aiohttp": serve_aiohttp,
         "floor": serve_floor}[name](
            int(port))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    client_counts = [int(c) for c in args.clients.split(",")]
    servers = args.servers.split(",")
    cases = [(s, c) for s in sizes for c in client_counts]
    procs = {}
    try:
        for name in servers:
            procs[name] = start(name)
        results = {(n, case): [] for n in servers for case in cases}
        loop_runner = asyncio.Runner(loop_factory=new_loop)
        with loop_runner:
            for r in range(args.rounds):
                for i, case in enumerate(cases):
                    order = servers[(r + i) % len(servers):] + \
                        servers[:(r + i) % len(servers)]
                    for name in order:
                        rate = loop_runner.run(measure(
                            procs[name][1], case[0], case[1], args.duration,
                            args.binary))
                        results[name, case].append(rate)
                print("round %d/%d done" % (r + 1, args.rounds),
                      file=sys.stderr, flush=True)
    finally:
        for proc, _ in procs.values():
            stop(proc)
    kind = "binary" if args.binary else "text"
    print()
    print("Echo round trips/s (median of %d rounds of %.1f s; %s messages)"
          % (args.rounds, args.duration, kind))
    print()
    peers = [n for n in servers if n != "ours"]
    header = ["message", "clients"] + servers
    if "ours" in servers:
        header += ["ours / %s" % p for p in peers]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case in cases:
        row = ["%d B" % case[0], str(case[1])]
        row += ["%.0f" % statistics.median(results[n, case]) for n in servers]
        if "ours" in servers:
            for p in peers:
                ratios = [a / b for a, b in zip(results["ours", case],
                                                results[p, case]) if b]
                row.append("%.2fx" % statistics.median(ratios)
                           if ratios else "-")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
