"""The app of tests/test_http_edge_attacks.py: plain views (run in the
executor) that read a streamed request body in odd patterns
(aiopyramid.stream_bodies on)."""
import hashlib
import json
import os
import threading
import time

from pyramid.config import Configurator
from pyramid.response import Response

KEPT = {}


def _digest(parts):
    h = hashlib.sha256()
    n = 0
    for p in parts:
        h.update(p)
        n += len(p)
    return "%d %s" % (n, h.hexdigest()[:16])


def _answer(text):
    return Response(text, content_type="text/plain")


def read1(request):
    read = request.environ["wsgi.input"].read

    def gen():
        while True:
            b = read(1)
            if not b:
                return
            yield b
    return _answer(_digest(gen()))


def readn(request):
    n = int(request.GET.get("n", "65536"))
    read = request.environ["wsgi.input"].read

    def gen():
        while True:
            b = read(n)
            if not b:
                return
            yield b
    return _answer(_digest(gen()))


def readall(request):
    inp = request.environ["wsgi.input"]
    data = inp.read()
    after = [inp.read(), inp.read(10), inp.readline(), inp.read(-1)]
    return _answer(_digest([data]) + " after=%r" % (after,))


def readline(request):
    inp = request.environ["wsgi.input"]
    lines = []
    for _ in range(100000):
        line = inp.readline()
        if not line:
            break
        lines.append(line)
    return _answer(_digest(lines) + " lines=%d" % len(lines))


def iterate(request):
    return _answer(_digest(list(request.environ["wsgi.input"])))


def readlines(request):
    return _answer(_digest(request.environ["wsgi.input"].readlines()))


def noread(request):
    return _answer("noread")


def readsome(request):
    n = int(request.GET.get("n", "1000"))
    data = request.environ["wsgi.input"].read(n)
    return _answer(_digest([data]))


def otherthread(request):
    inp = request.environ["wsgi.input"]
    out = []

    def run():
        try:
            parts = []
            while True:
                b = inp.read(65536)
                if not b:
                    break
                parts.append(b)
            out.append(_digest(parts))
        except BaseException as e:
            out.append("error %r" % (e,))
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    return _answer(out[0] if out else "thread still reading")


def twothreads(request):
    """Two threads reading the same wsgi.input at once."""
    inp = request.environ["wsgi.input"]
    out = [[], []]
    errs = []

    def run(i):
        try:
            while True:
                b = inp.read(1000)
                if not b:
                    break
                out[i].append(b)
        except BaseException as e:
            errs.append(repr(e))
    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    n = sum(len(b) for o in out for b in o)
    return _answer("%d errs=%r alive=%d" % (n, errs, sum(t.is_alive() for t in ts)))


def keep(request):
    KEPT["input"] = request.environ["wsgi.input"]
    n = int(request.GET.get("n", "0"))
    data = KEPT["input"].read(n) if n else b""
    return _answer("kept %d" % len(data))


def readkept(request):
    inp = KEPT.pop("input", None)
    if inp is None:
        return _answer("none")
    out = []

    def run():
        try:
            out.append(repr(inp.read(100)))
        except BaseException as e:
            out.append("error %r" % (e,))
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    return _answer(out[0] if out else "thread still reading")


def readkept_here(request):
    inp = KEPT.pop("input", None)
    if inp is None:
        return _answer("none")
    try:
        return _answer(repr(inp.read(100)))
    except BaseException as e:
        return _answer("error %r" % (e,))


def seektell(request):
    inp = request.environ["wsgi.input"]
    out = []
    for name in ("tell", "seek", "seekable"):
        try:
            f = getattr(inp, name)
            out.append("%s=%r" % (name, f() if name != "seek" else f(0)))
        except BaseException as e:
            out.append("%s:%s" % (name, type(e).__name__))
    return _answer(" ".join(out))


def slowread(request):
    """Reads n bytes every d seconds."""
    n = int(request.GET.get("n", "65536"))
    d = float(request.GET.get("d", "0.05"))
    read = request.environ["wsgi.input"].read
    parts = []
    err = ""
    try:
        while True:
            b = read(n)
            if not b:
                break
            parts.append(b)
            time.sleep(d)
    except BaseException as e:
        err = " error %r" % (e,)
        STATE["errors"].append(err)
    STATE["done"] += 1
    return _answer(_digest(parts) + err)


STATE = {"done": 0, "errors": []}


def state(request):
    out = dict(STATE)
    out["threads"] = threading.active_count()
    out["pid"] = os.getpid()
    return Response(json.dumps(out).encode(), content_type="application/json")


async def hello(request):
    return _answer("hello")


def body_file_lines(request):
    """for line in request.body_file: a text upload read line by line."""
    t0 = time.monotonic()
    lines = list(request.body_file)
    return _answer(_digest(lines) + " lines=%d %.2fs" % (len(lines), time.monotonic() - t0))


def bigresp(request):
    """n MiB streamed out (a plain view)."""
    n = int(request.GET.get("n", "10"))
    piece = b"r" * (1 << 20)

    def gen():
        try:
            for _ in range(n):
                yield piece
        finally:
            STATE["bigresp_closed"] = STATE.get("bigresp_closed", 0) + 1
    return Response(app_iter=gen(), content_length=n << 20, content_type="application/octet-stream")


def handoffs(request):
    """Reads the body as ?how= says (readline, iterate, read1, readn) and
    answers what it read and how many reads were handed to the loop (calls
    of aiopyramid._executor.wait_in_thread while it read)."""
    from aiopyramid import _executor

    how = request.GET.get("how", "readline")
    inp = request.environ["wsgi.input"]
    real = _executor.wait_in_thread
    count = [0]

    def counting(*args, **kw):
        count[0] += 1
        return real(*args, **kw)
    _executor.wait_in_thread = counting
    parts = []
    try:
        if how == "iterate":
            parts = list(inp)
        else:
            n = {"readline": None, "read1": 1, "readn": 1000}[how]
            for _ in range(10 ** 6):
                b = inp.readline() if n is None else inp.read(n)
                if not b:
                    break
                parts.append(b)
    finally:
        _executor.wait_in_thread = real
    return _answer("%s pieces=%d handoffs=%d" % (_digest(parts), len(parts), count[0]))


def post_form(request):
    return _answer(" ".join("%s=%d" % (k, len(v) if isinstance(v, str) else -1)
                            for k, v in request.POST.items()))


def body(request):
    return _answer(_digest([request.body]))


def env(request):
    out = {k: v for k, v in request.environ.items() if isinstance(v, str)}
    return Response(json.dumps(out).encode(), content_type="application/json")


def main(global_config=None, **settings):
    # the views read a body streamed to their thread (past body_preread)
    settings.setdefault("aiopyramid.stream_bodies", "true")
    with Configurator(settings=settings) as config:
        config.include("aiopyramid")
        views = dict(read1=read1, readn=readn, readall=readall, readline=readline,
                     iterate=iterate, readlines=readlines, noread=noread,
                     readsome=readsome, otherthread=otherthread,
                     twothreads=twothreads, keep=keep, readkept=readkept,
                     readkept_here=readkept_here, seektell=seektell,
                     slowread=slowread, state=state, hello=hello,
                     post_form=post_form, body=body,
                     body_file_lines=body_file_lines, bigresp=bigresp,
                     handoffs=handoffs)
        for name, view in views.items():
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        config.add_route("any", "/*rest")
        config.add_view(env, route_name="any")
        return config.make_wsgi_app()


def main_threads(global_config=None, **settings):
    settings.setdefault("aiopyramid.executor_threads", os.environ.get("ATTACK_THREADS", "2"))
    return main(global_config, **settings)
