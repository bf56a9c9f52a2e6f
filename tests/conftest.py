"""Shared fixtures.  Server fixtures start real processes on 127.0.0.1 with a
free port, wait until they answer, and always stop them."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from pyramid.request import Request

from aiopyramid.helpers import spawn_greenlet

from .rawhttp import read_to_eof


@pytest.fixture
def run():
    """Run a coroutine to completion on a fresh event loop."""
    return asyncio.run


# the legacy authentication API is deprecated by Pyramid 2; the modules that
# test aiopyramid's wrappers of it ignore that: pytestmark = LEGACY_AUTH_WARNINGS
LEGACY_AUTH_WARNINGS = [
    pytest.mark.filterwarnings(
        "ignore:Authentication and authorization policies have been "
        "deprecated:DeprecationWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:The new security policy has deprecated:DeprecationWarning"
    ),
]


async def get(app, path, **kw):
    """One request through the whole app, in a pooled request greenlet (the
    way the servers run it)."""
    request = Request.blank(path, **kw)
    return await spawn_greenlet(request.get_response, app)


@pytest.fixture
def make_app():
    """A Pyramid app with aiopyramid included; configure(config) adds views."""
    from pyramid.config import Configurator

    def make(configure, settings=None):
        with Configurator(settings=settings or {}) as config:
            config.include("aiopyramid")
            configure(config)
            return config.make_wsgi_app()

    return make


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = "aiopyramid.gunicorn.worker.AsyncGunicornWorker"


def run_python(code, timeout=60):
    """Runs code in a fresh interpreter (-X dev); returns its stdout.  A
    crash, a hang (timeout) or a non-zero exit fails the calling test."""
    try:
        proc = subprocess.run([sys.executable, "-X", "dev", "-W", "ignore", "-c", code],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail("hung for %ss:\n%s" % (timeout, (e.stderr or b"")[-3000:]))
    assert proc.returncode == 0, (
        "exit %d\n--- stdout\n%s\n--- stderr\n%s"
        % (proc.returncode, proc.stdout[-3000:], proc.stderr[-6000:]))
    return proc.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_ok(port, path, timeout=15):
    """The body of a GET answered 200 (an AssertionError otherwise; an
    OSError when nothing answers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                  % path.encode())
        head, _, body = read_to_eof(s).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def http_get(port, path="/hello", timeout=5.0):
    """(status, body) of a simple GET, or None if nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % path.encode())
            data = read_to_eof(s)
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return None
    return int(head.split(b" ", 2)[1]), body


class ServerProcess:
    def __init__(self, proc, port, log_path):
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, path="/hello", timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited with %s:\n%s" % (self.proc.returncode, self.log()))
            r = http_get(self.port, path, timeout=2.0)
            if r is not None and r[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError("server not ready after %.0fs:\n%s" % (timeout, self.log()))

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def spawn_server(args, port, log_path, env=None, cwd=HERE, ready_path="/hello"):
    """A ServerProcess running args (tests/ and the repository on its
    PYTHONPATH, dev mode and warnings off, env added), its output in
    log_path; ready when ready_path answers 200 (None: not waited for),
    stopped if it does not."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [HERE, ROOT] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    full_env.pop("PYTHONDEVMODE", None)
    full_env["PYTHONWARNINGS"] = "ignore"
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=cwd, start_new_session=True)
    server = ServerProcess(proc, port, log_path)
    if ready_path is not None:
        try:
            server.wait_ready(ready_path)
        except BaseException:
            server.stop()
            raise
    return server


def gunicorn_args(port, app, *extra, worker=WORKER):
    """One gunicorn worker of worker's class serving app on 127.0.0.1:port."""
    return [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port,
            "--worker-class", worker, "--workers", "1", "--no-control-socket",
            "--graceful-timeout", "10", *extra, app]


def gunicorn_on_loop(request, tmp_path_factory, app, tag):
    """For a module fixture with params=["uvloop", "asyncio"]: one gunicorn
    with our worker serving app on the loop named by request.param, for
    the module's tests (yielded, stopped after)."""
    pytest.importorskip("gunicorn")
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    port = free_port()
    srv = spawn_server(gunicorn_args(port, app), port,
                       tmp_path_factory.mktemp(tag) / "server.log",
                       env={"AIOPYRAMID_LOOP": request.param}, cwd=ROOT)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def cert(tmp_path):
    """A self-signed certificate for 127.0.0.1: (cert.pem, key.pem)."""
    import shutil
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout",
                    str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    return cert, key


@pytest.fixture
def start_server(tmp_path):
    """start_server(cmd_args, port=..., env=...) -> ServerProcess, ready."""
    started = []

    def start(args, port, env=None, cwd=HERE, ready_path="/hello", wait=True):
        log_path = tmp_path / ("server-%d.log" % len(started))
        server = spawn_server(args, port, log_path, env, cwd, ready_path if wait else None)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def gunicorn(start_server):
    """gunicorn(*extra_args, app=..., env=...) with aiopyramid's worker."""

    def run(*extra, app="http_e2e_app:main()", env=None, worker=WORKER, wait=True):
        port = free_port()
        return start_server(gunicorn_args(port, app, *extra, worker=worker), port,
                            env=env, wait=wait)

    return run
