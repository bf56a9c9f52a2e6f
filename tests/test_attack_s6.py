"""ATTACK (attack-s6): what the last session changed, from outside (real
gunicorn with our worker; raw bytes over real sockets)."""
import asyncio
import gc
import os
import time

import pytest

from .inprocess import run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange, parse_all

pytest.importorskip("gunicorn")

# Python's own young threshold in this interpreter: 700, 2,000 from 3.13
PYTHON_YOUNG = gc.get_threshold()[0]


async def _ask(reader, writer, paths, timeout=30):
    writer.write(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p
                          for p in paths))
    await writer.drain()
    buf = b""
    deadline = time.monotonic() + timeout
    while True:
        rs = parse_all(buf, eof=False)
        if len(rs) == len(paths):
            assert [r.status for r in rs] == [200] * len(paths), rs
            return rs
        left = deadline - time.monotonic()
        assert left > 0, "no answer in %ds" % timeout
        chunk = await asyncio.wait_for(reader.read(65536), left)
        assert chunk, "closed"
        buf += chunk


# -- the GC pacer under a steady load of waiting requests -------------------

# the steady state: before it, the waiting requests' arrival set off
# collections that found no garbage, and the first cycles wait once for the
# threshold those earned (the case of the test below)
WARM_UP = 1.5


@pytest.mark.parametrize("kind", [
    "python",
    # tuned: the collections that arrivals set off found few cycles and
    # earned up to 100 per request in flight, and the longer wait that
    # followed filled with cycles: 3,300-7,000 alive at once against 336
    # with the threshold read from each collection's garbage per object,
    # 1,900-6,400 on one CPU with the most of the last second's (2ac570c);
    # the worker's loop now collects as often as the garbage found per
    # second asks
    "tuned",
])
def test_attack_waiting_requests_turning_over_do_not_let_cycles_pile_up(
        gunicorn, kind):
    """A steady load: 300 connections each asking in turn for a 0.2 s wait
    (long polls, a slow upstream; no garbage), and one client whose
    requests each leave a one-object cycle holding 4 KiB (Pyramid's
    exception view leaves one per error, holding the request and its
    environ).  Under Python's threshold about 340 are alive at once; the
    README says an app whose requests leave cycles keeps about as much
    under the tuning.  test_attack_s4's waiting requests never answered,
    so no collection earned anything; these are answered all the time."""
    most = [0]
    seconds = 6.0

    async def waiter(end):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            while time.monotonic() < end:
                await _ask(r, w, [b"/wait?s=0.2"])
        finally:
            w.close()

    async def cycler(end):
        r, w = await asyncio.open_connection("127.0.0.1", srv.port)
        steady = time.monotonic() + WARM_UP
        try:
            while time.monotonic() < end:
                rs = await _ask(r, w, [b"/cycle"] * 5 + [b"/live"])
                if time.monotonic() > steady:
                    most[0] = max(most[0], int(rs[-1].body.split()[0]))
        finally:
            w.close()

    async def main():
        end = time.monotonic() + seconds
        await asyncio.wait_for(asyncio.gather(
            *(waiter(end) for _ in range(300)), cycler(end)), seconds + 60)

    # the server and this client on one CPU, as on a slower machine: there
    # the pacer of 2ac570c let 1,900-6,400 be alive at once in 4 runs of 5
    # (CI met it on 3.12 at 3,400); on two it mostly passed
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # the server inherits it
    try:
        srv = gunicorn("--worker-connections", "1000", "--keep-alive", "30",
                       app="attack_s6_app:main()", env={"AIOPYRAMID_GC": kind})
        asyncio.run(main())
    finally:
        os.sched_setaffinity(0, cpus)
    assert most[0] < PYTHON_YOUNG, "%d cycles alive at once" % most[0]


@pytest.mark.parametrize("kind", ["python", "tuned"])
def test_attack_clean_requests_then_cycles_wait_once(gunicorn, kind):
    """test_attack_s4's waiting requests, arriving while another client's
    requests are answered clean (no cycle: they earn the threshold, as
    the pacer means them to), then 6,000 requests that each leave a
    one-object cycle holding 4 KiB (an error path's: Pyramid's exception
    view leaves one holding the request and its environ).  The pacer
    learns of the cycles only at its next collection: the first ones wait
    for the threshold the clean requests earned (with 300 waiting, 19,000:
    all of the attack's 3,000 alive at once against ~310 under Python's
    threshold), which the README states as the bound (at most 100 objects
    per request in flight); once collections have found them, no more
    than under Python's threshold are alive at once.  50 waiting here, so
    that 6,000 cycles are sure to pass the threshold earned."""
    import socket

    WAITING = 50

    srv = gunicorn("--worker-connections", "1000", "--keep-alive", "30",
                   app="attack_s6_app:main()", env={"AIOPYRAMID_GC": kind})
    held = []

    async def main(c):
        r, w = await asyncio.open_connection(sock=c)
        for _ in range(WAITING // 10):
            for _ in range(10):
                s = socket.create_connection(("127.0.0.1", srv.port),
                                             timeout=15)
                s.sendall(b"GET /wait?s=600 HTTP/1.1\r\nHost: t\r\n\r\n")
                held.append(s)
            await asyncio.sleep(0.05)
            for _ in range(5):
                await _ask(r, w, [b"/clean"] * 10)
        alive = []
        for _ in range(600):
            rs = await _ask(r, w, [b"/cycle"] * 10 + [b"/live"])
            alive.append(int(rs[-1].body.split()[0]))
        w.close()
        return alive

    c = socket.create_connection(("127.0.0.1", srv.port), timeout=15)
    try:
        alive = asyncio.run(asyncio.wait_for(main(c), 120))
    finally:
        for s in held:
            s.close()
    # a collection is where the count of cycles alive falls
    drops = [i for i in range(1, len(alive)) if alive[i] < alive[i - 1]]
    assert len(drops) >= 3, alive
    in_flight = WAITING + 1  # the waiting requests and the cycles' own
    assert max(alive[:drops[0]]) <= 100 * in_flight, alive[:drops[0]]
    # after the collection that found the first burst, and the one after
    # (its threshold followed the first's finding, diluted by the waiting
    # requests' objects alive)
    after = alive[drops[1]:]
    assert max(after) < PYTHON_YOUNG, "%d cycles alive at once" % max(after)


# -- the body WebOb made seekable, read again after the response -----------

def _body_later_app(later):
    import json

    from pyramid.config import Configurator
    from pyramid.response import Response

    async def view(request):
        data = request.json_body  # WebOb's seekable copy replaces wsgi.input

        async def again():
            await asyncio.sleep(0.05)
            try:
                later.append(request.json_body == data)
            except Exception as e:  # noqa: BLE001 -- what the task met
                later.append(repr(e))

        asyncio.get_running_loop().create_task(again())
        return Response(b"queued")

    with Configurator() as config:
        config.include("aiopyramid")
        config.add_route("v", "/")
        config.add_view(view, route_name="v")
        return config.make_wsgi_app()


def test_a_small_body_made_seekable_is_readable_after_the_response(run):
    """A view reads its JSON body and hands the request to a task that
    reads it again once the response is gone (an audit log, a queue).
    A small body (WebOb's copy in memory, up to 10 KiB) holds no
    descriptor and no disk space: nothing to gain by closing it.  The
    server closed it as the request's run ended (the close meant for a
    spooled temporary file), and the task's second read raised 'I/O
    operation on closed file', which gunicorn's own workers never do."""
    later = []
    app = _body_later_app(later)
    body = b'{"x": 1}'

    async def main():
        async with serving(app) as (port, srv):
            rs, _ = await exchange(
                port, b"POST / HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body, count=1)
            for _ in range(100):
                if later:
                    break
                await asyncio.sleep(0.01)
            return rs
    rs = run(main())
    assert [r.status for r in rs] == [200]
    assert later == [True], later


# -- each request's environ is its own connection's -------------------------

def test_attack_environ_is_each_connections_own_whatever_apps_do(gunicorn):
    """60 kept-alive connections (two listeners, a trusted proxy's
    X-Forwarded-Proto on some requests) pipeline requests whose views
    delete REMOTE_ADDR, REMOTE_PORT, SERVER_*, wsgi.url_scheme and
    SCRIPT_NAME, set REMOTE_ADDR to another address and add keys, some
    after an await: each answer must show its own connection's addresses
    and scheme, its own headers, and nothing an earlier request did."""
    import json
    import random

    from .conftest import free_port

    rnd = random.Random(6)
    other = free_port()
    srv = gunicorn("--bind", "127.0.0.1:%d" % other, "--keep-alive", "30",
                   "--forwarded-allow-ips", "127.0.0.1",
                   app="attack_s6_app:main()")
    problems = []

    async def client(cid):
        port = srv.port if cid % 2 else other
        r, w = await asyncio.open_connection("127.0.0.1", port)
        lport = w.get_extra_info("sockname")[1]
        try:
            for turn in range(10):
                reqs = [(rnd.choice([b"/env", b"/env?mutate=1",
                                     b"/aenv?mutate=1&s=0.005", b"/aenv"]),
                         rnd.choice([None, b"https", b"http"]),
                         b"%d-%d-%d" % (cid, turn, k))
                        for k in range(rnd.randint(1, 6))]
                w.write(b"".join(
                    b"GET %s HTTP/1.1\r\nHost: h%d\r\nX-Id: %s\r\n%s\r\n" % (
                        path, cid, xid,
                        b"X-Forwarded-Proto: %s\r\n" % xp if xp else b"")
                    for path, xp, xid in reqs))
                await w.drain()
                buf = b""
                while len(parse_all(buf, eof=False)) < len(reqs):
                    chunk = await asyncio.wait_for(r.read(65536), 20)
                    assert chunk, "closed"
                    buf += chunk
                for (path, xp, xid), resp in zip(reqs, parse_all(buf)):
                    e = json.loads(resp.body)
                    want = {"REMOTE_ADDR": "127.0.0.1",
                            "REMOTE_PORT": str(lport),
                            "SERVER_NAME": "127.0.0.1",
                            "SERVER_PORT": str(port),
                            "wsgi.url_scheme": (xp or b"http").decode(),
                            "HTTP_X_ID": xid.decode(),
                            "HTTP_HOST": "h%d" % cid, "SCRIPT_NAME": "",
                            "extra": [], "injected": None}
                    got = {k: e.get(k) for k in want}
                    if got != want or e.get("changed"):
                        problems.append((path, got, want))
        finally:
            w.close()

    async def main():
        await asyncio.wait_for(
            asyncio.gather(*(client(i) for i in range(60))), 120)

    asyncio.run(main())
    assert problems == [], problems[:3]


# -- the eight-bytes-at-a-time scan of status and header values -------------

def test_attack_control_bytes_found_at_every_offset_of_short_values(run):
    """A control byte (besides HTAB) at each offset of values of 1-17
    bytes, around the scan's eight-byte words, in a header value and in
    the status (test_attack_s5 has the header values only): a 500 every
    time; HTAB, SP, DEL's neighbours and latin-1's upper half at each
    offset pass."""
    case = {}

    def app(environ, start_response):
        start_response(*case["v"])
        return [b"x"]

    bad_bytes = [0x00, 0x01, 0x0A, 0x0D, 0x1B, 0x1F, 0x7F]
    good_bytes = [0x09, 0x20, 0x7E, 0x80, 0x9F, 0xFF]

    async def main():
        wrong = []
        async with serving(app, error_log=lambda msg, exc: None) as (port, srv):
            for n in range(1, 18):
                for off in range(n):
                    for c in bad_bytes + good_bytes:
                        v = "\xe9" * off + chr(c) + "a" * (n - off - 1)
                        for status, headers in (("200 OK", [("X-A", v)]),
                                                ("200 " + v, [])):
                            case["v"] = (status, headers)
                            rs, _ = await exchange(
                                port, b"GET / HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n", count=1)
                            want = 200 if c in good_bytes else 500
                            if [r.status for r in rs] != [want]:
                                wrong.append((n, off, c, status[:4],
                                              [r.status for r in rs]))
        return wrong
    assert run(main()) == []
