"""A websocket server on _core.WebSocket alone (no Pyramid, no HTTP server
of ours), run as a child process by tests/test_websocket_core.py.

Two listening sockets on 127.0.0.1, printed as ``PORTS <raw> <http>``:
- raw: every connection is a websocket at once (a plain protocol whose
  connection_made makes a WebSocket and calls attach(transport, b"")), for
  clients that send frames with no handshake;
- http: a tiny handshake server: the request head is read by hand, passed
  to _core.websocket_handshake as an environ, and answered with the 101 (or
  the refusal's status and message); bytes past the head go to attach().

Each websocket runs `view` below, an echo with a few commands; when it ends
the server prints ``END <close_code> <close_reason>``.
"""
import argparse
import asyncio
import json
import os
import sys

from aiopyramid import _core
from aiopyramid.websocket.exceptions import WebsocketClosed


def say(*words):
    print(*words, flush=True)


async def view(ws):
    quiet = False
    count = 0
    try:
        while True:
            msg = await ws.recv()
            if msg is None:
                break
            if isinstance(msg, str) and msg.startswith("cmd:"):
                args = msg.split(":")
                cmd = args[1]
                if cmd == "quiet":
                    quiet = True
                elif cmd == "close":
                    await ws.close(int(args[2]), args[3])
                elif cmd == "ping":
                    await ws.ping(args[2].encode())
                    await ws.send("pinged")
                elif cmd == "flood":
                    n, size = int(args[2]), int(args[3])
                    block = b"x" * size
                    for i in range(n):
                        await ws.send(block)
                        if i % 16 == 0:
                            say("SENT", i)
                    say("SENT", n)
                elif cmd == "info":
                    await ws.send(json.dumps({
                        "compressed": ws.compressed, "closed": ws.closed,
                        "close_code": ws.close_code}))
                elif cmd == "badclose":
                    try:
                        await ws.close(int(args[2]))
                    except ValueError as e:
                        await ws.send("ValueError: %s" % e)
                elif cmd == "yieldfrom":
                    # the original guide's generator style
                    def gen():
                        m = yield from ws.recv()
                        yield from ws.send("gen:" + m)
                    await asyncio.ensure_future(_drive(gen()))
                elif cmd == "tworecv":
                    first = asyncio.ensure_future(_drive(_recv_once(ws)))
                    await asyncio.sleep(0)
                    try:
                        ws.recv()
                    except RuntimeError as e:
                        await ws.send("RuntimeError: %s" % e)
                    first.cancel()
                    try:
                        await first
                    except asyncio.CancelledError:
                        pass
                continue
            count += 1
            if not quiet:
                await ws.send(msg)
    finally:
        say("COUNT", count)
        say("END", ws.close_code, ws.close_reason)
        try:
            await ws.send("late")
        except WebsocketClosed:
            say("SEND-AFTER-CLOSE raised WebsocketClosed")


async def _recv_once(ws):
    return await ws.recv()


async def _drive(gen):
    import types

    @types.coroutine
    def wrap():
        return (yield from gen)

    return await wrap()


def ws_options(args):
    return dict(max_message_size=args.max_size, use_bytes=args.use_bytes,
                ping_interval=args.ping_interval,
                ping_timeout=args.ping_timeout,
                close_timeout=args.close_timeout)


class Raw(asyncio.Protocol):
    def __init__(self, loop, args):
        self.loop, self.args = loop, args

    def connection_made(self, transport):
        ws = _core.WebSocket(self.loop, **ws_options(self.args))
        ws.attach(transport, b"")
        self.loop.create_task(view(ws))


class Handshake(asyncio.Protocol):
    def __init__(self, loop, args):
        self.loop, self.args = loop, args
        self.buf = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, proto = lines[0].split(" ")
        environ = {"REQUEST_METHOD": method, "SERVER_PROTOCOL": proto,
                   "PATH_INFO": target}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = "HTTP_" + name.strip().upper().replace("-", "_")
            value = value.strip()
            environ[key] = environ[key] + "," + value if key in environ else value
        try:
            headers, subprotocol, deflate = _core.websocket_handshake(
                environ, subprotocols=self.args.subprotocols,
                compression=self.args.compression)
        except _core.WebsocketHandshakeError as e:
            body = str(e).encode()
            extra = "".join("%s: %s\r\n" % h for h in e.headers)
            self.transport.write(
                b"HTTP/1.1 %d Refused\r\n%sContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (e.status, extra.encode(), len(body), body))
            self.transport.close()
            return
        say("SUBPROTOCOL", subprotocol)
        say("DEFLATE", json.dumps(deflate))
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + "".join("%s: %s\r\n" % h for h in headers).encode()
            + b"\r\n")
        ws = _core.WebSocket(self.loop, deflate=deflate, **ws_options(self.args))
        ws.attach(self.transport, rest)
        self.loop.create_task(view(ws))


async def main(args):
    loop = asyncio.get_running_loop()
    raw = await loop.create_server(lambda: Raw(loop, args), "127.0.0.1", 0)
    http = await loop.create_server(lambda: Handshake(loop, args),
                                    "127.0.0.1", 0)
    say("PORTS", raw.sockets[0].getsockname()[1],
        http.sockets[0].getsockname()[1], os.getpid())
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--max-size", type=int, default=1048576)
    p.add_argument("--use-bytes", action="store_true")
    p.add_argument("--ping-interval", type=float, default=0.0)
    p.add_argument("--ping-timeout", type=float, default=20.0)
    p.add_argument("--close-timeout", type=float, default=10.0)
    p.add_argument("--no-compression", dest="compression",
                   action="store_false")
    p.add_argument("--subprotocols", nargs="*", default=[])
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args()
    if args.uvloop:
        import uvloop
        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
