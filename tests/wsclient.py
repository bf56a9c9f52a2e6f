"""Raw websocket frames for tests: a client that sends exactly the bytes a
test builds (masked or not, any split) and reads the server's frames, and a
runner for tests/ws_core_server.py."""
import os
import queue
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
MASK = b"\x37\xfa\x21\x3d"


def mask_bytes(payload, mask=MASK):
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(opcode, payload=b"", fin=True, rsv=0, masked=True, mask=MASK):
    """One client frame; rsv is the 3 RSV bits as a number (4: RSV1)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, m | 127]) + n.to_bytes(8, "big")
    if masked:
        return head + mask + mask_bytes(payload, mask)
    return head + payload


def close_frame(code=None, reason=b"", **kw):
    payload = b"" if code is None else code.to_bytes(2, "big") + reason
    return frame(CLOSE, payload, **kw)


class RawClient:
    opened = []  # closed by the tests' fixture

    def __init__(self, port, timeout=10.0):
        RawClient.opened.append(self)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def send_split(self, data, sizes):
        """data in pieces of the given sizes (cycled), each its own send."""
        i = k = 0
        while i < len(data):
            n = sizes[k % len(sizes)]
            self.sock.sendall(data[i:i + n])
            i += n
            k += 1
            time.sleep(0.0005)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed with %d of %d bytes" % (len(self.buf), n))
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        """(fin, rsv, opcode, payload) of the server's next frame."""
        b0, b1 = self._read(2)
        assert not b1 & 0x80, "a server frame must not be masked"
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self._read(2), "big")
        elif n == 127:
            n = int.from_bytes(self._read(8), "big")
        return bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, self._read(n)

    def recv_message(self, pongs=None):
        """(opcode, payload) of the next data message (fragments joined);
        control frames before it are skipped, pongs' payloads appended to
        `pongs` when given."""
        parts, first = [], None
        while True:
            fin, rsv, op, payload = self.recv_frame()
            if op >= 8:
                if op == CLOSE:
                    return op, payload
                if op == PONG and pongs is not None:
                    pongs.append(payload)
                continue
            if first is None:
                first = op
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def expect_close(self, code):
        """Reads to the server's close frame: its (code, reason); checks it
        is `code` and that the server then ends the connection."""
        while True:
            fin, rsv, op, payload = self.recv_frame()
            if op == CLOSE:
                break
        got = int.from_bytes(payload[:2], "big") if payload else None
        assert got == code, (got, payload[2:])
        self.read_to_eof()
        return got, payload[2:]

    def read_to_eof(self, timeout=10.0):
        self.sock.settimeout(timeout)
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            self.buf += chunk

    def close(self):
        self.sock.close()


class WsServer:
    """tests/ws_core_server.py in a child process: a crash there fails the
    test that caused it and nothing else."""

    def __init__(self, *args):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([HERE, ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "dev", os.path.join(HERE, "ws_core_server.py"), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.lines = queue.Queue()
        self.log = []
        threading.Thread(target=self._pump, daemon=True).start()
        line = self.wait_line("PORTS", 30)
        _, raw, http, pid = line.split()
        self.raw_port, self.http_port, self.pid = int(raw), int(http), int(pid)

    def _pump(self):
        for line in self.proc.stdout:
            line = line.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, prefix, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r line in %.0fs; output:\n%s" % (prefix, timeout, "\n".join(self.log)))
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError("server exited (%s) before a %r line; output:\n%s"
                                     % (self.proc.poll(), prefix, "\n".join(self.log)))
            if line.startswith(prefix):
                return line

    def client(self):
        return RawClient(self.raw_port)

    def stop(self):
        for c in RawClient.opened:
            c.close()
        RawClient.opened.clear()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        out = "\n".join(self.log)
        # a crash or an error logged by the loop fails the test
        assert "Traceback" not in out and "Fatal Python error" not in out \
            and "AddressSanitizer" not in out and "runtime error" not in out, out
