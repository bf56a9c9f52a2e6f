"""A small raw HTTP/1.1 client for the server tests: send bytes exactly as
given, read back responses and parse them strictly."""
import asyncio
import socket
import time


class Response:
    def __init__(self, status, reason, headers, body, version):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body
        self.version = version

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:60])


class Incomplete(Exception):
    pass


def parse_one(buf, method="GET", eof=False):
    """(Response, rest) from the start of buf; Incomplete if more is needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise Incomplete
    head = buf[:end].decode("latin-1").split("\r\n")
    version, status, *reason = head[0].split(" ", 2)
    status = int(status)
    headers = []
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower(), value.strip()))
    h = dict(headers)
    rest = buf[end + 4:]
    if method == "HEAD" or status < 200 or status in (204, 304):
        return Response(status, reason[0] if reason else "", headers, b"", version), rest
    if h.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                raise Incomplete
            size = int(rest[:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                raise Incomplete
            chunk = rest[line_end + 2:line_end + 2 + size]
            assert rest[line_end + 2 + size:line_end + 4 + size] == b"\r\n"
            rest = rest[line_end + 4 + size:]
            if size == 0:
                break
            body += chunk
        return Response(status, reason[0] if reason else "", headers, body, version), rest
    if "content-length" in h:
        n = int(h["content-length"])
        if len(rest) < n:
            raise Incomplete
        return Response(status, reason[0] if reason else "", headers, rest[:n], version), rest[n:]
    if not eof:
        raise Incomplete
    return Response(status, reason[0] if reason else "", headers, rest, version), b""


def parse_all(buf, methods=(), eof=True):
    out = []
    methods = list(methods)
    while buf:
        m = methods[len(out)] if len(out) < len(methods) else "GET"
        try:
            r, buf = parse_one(buf, m, eof=eof)
        except Incomplete:
            break
        out.append(r)
        if r.status == 100:
            out.pop()
    return out


async def exchange(port, *pieces, methods=(), count=None, timeout=10.0,
                   delay=0.0, host="127.0.0.1"):
    """Sends pieces (with `delay` between them), reads until `count`
    responses (not counting 100 Continue) or until the server closes.
    Returns (responses, closed)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i, p in enumerate(pieces):
            if i and delay:
                await asyncio.sleep(delay)
            writer.write(p)
            await writer.drain()
        buf = b""
        closed = False
        deadline = time.monotonic() + timeout
        while True:
            if count is not None and len(parse_all(buf, methods, eof=False)) >= count:
                # the server may also close right after: see if it does
                try:
                    more = await asyncio.wait_for(reader.read(65536), 0.05)
                except asyncio.TimeoutError:
                    more = None
                if more == b"":
                    closed = True
                elif more:
                    buf += more
                    continue
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete answer in %.1fs: %r" % (timeout, buf[:300]))
            data = await asyncio.wait_for(reader.read(65536), left)
            if not data:
                closed = True
                break
            buf += data
        return parse_all(buf, methods, eof=closed), closed
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def read_to_eof(sock):
    """Everything a socket receives until the peer closes."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def blocking_exchange(port, data, timeout=10.0, shut_write=False):
    """All bytes until the server closes (or timeout): for e2e tests."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return buf, True
            buf += chunk
        return buf, False
