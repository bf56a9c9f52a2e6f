"""The request's authority: a CONNECT's target, an absolute-form target's
host and port, the Host header.  Each becomes the app's HTTP_HOST, which
Pyramid builds every URL from (request.host_url, route_url, redirects), so
one that is no host[:port] is a 400 before the app (RFC 9112 3.2: "a Host
header field with an invalid field value"; RFC 9110 4.2.1: an http URI
with an empty host is invalid)."""
import ipaddress
import random
import re

import pytest

from .inprocess import loop, run, serving  # noqa: F401 -- fixture
from .rawhttp import exchange
from .test_http_protocol import env_app


def _served(run, request):
    import json

    async def main():
        async with serving(env_app) as (port, srv):
            rs, closed = await exchange(port, request, count=1)
            return rs, closed, srv.requests
    rs, closed, served = run(main())
    env = json.loads(rs[0].body) if rs and rs[0].status == 200 else None
    return rs, closed, served, env


def _refused(run, request):
    rs, closed, served, env = _served(run, request)
    assert ([r.status for r in rs], closed, served) == ([400], True, 0), env


BAD_AUTHORITIES = [
    b"[::1",             # an IP literal never closed
    b"[::1]x",           # something after it besides a port
    b"[zz::1]",          # no IPv6 address
    b"[]",
    b"[v1]",             # an IPvFuture without its address
    b"h:0",              # no port to connect to
    b"h:65536",          # past the 16 bits of a port
    b"h:99999999999999999999999",
    b"h:8x",
    b"h:-1",
    b"h:1:2",
    b"h^x",              # no reg-name character
    b"h%zz",             # a broken percent escape
    b"h%4",
    b":80",              # no host
]

GOOD_AUTHORITIES = [
    b"example.com",
    b"Example.COM:8080",
    b"127.0.0.1:65535",
    b"[::1]:443",
    b"[2001:db8::ffff:192.0.2.1]",
    b"[v1.fe80::a+en1]:80",
    b"my_host.example:1",
    b"xn--bcher-kva.example",
    b"b%C3%BCcher.example",
    b"h:",               # RFC 3986's empty port: the scheme's default
]


@pytest.mark.parametrize("authority", BAD_AUTHORITIES)
def test_a_bad_host_header_is_refused(run, authority):
    _refused(run, b"GET / HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")


@pytest.mark.parametrize("value", [
    b"evil.example/reset?x=",  # a path, into every URL the app builds
    b"u@evil.example",         # userinfo
    b"good.example evil.example",
    b"caf\xe9.example",        # obs-text
    b"\"good.example\"",
])
def test_a_host_header_that_is_no_authority_is_refused(run, value):
    _refused(run, b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n")


@pytest.mark.parametrize("authority", GOOD_AUTHORITIES)
def test_a_host_header_is_the_apps_as_sent(run, authority):
    rs, closed, served, env = _served(
        run, b"GET / HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n")
    assert [r.status for r in rs] == [200] and served == 1
    assert env["HTTP_HOST"] == authority.decode("latin-1")


def test_a_host_header_in_whitespace_is_the_host(run):
    rs, closed, served, env = _served(
        run, b"GET / HTTP/1.1\r\nHost: \t example.com:80 \t\r\n\r\n")
    assert [r.status for r in rs] == [200]
    assert env["HTTP_HOST"] == "example.com:80"


def test_an_empty_host_header_is_valid(run):
    # RFC 9110 7.2: what a client sends for a target with no authority
    rs, closed, served, env = _served(run, b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
    assert [r.status for r in rs] == [200]
    assert env["HTTP_HOST"] == ""


@pytest.mark.parametrize("authority", BAD_AUTHORITIES)
def test_a_bad_absolute_form_authority_is_refused(run, authority):
    _refused(run, b"GET http://" + authority + b"/p HTTP/1.1\r\nHost: good\r\n\r\n")


@pytest.mark.parametrize("authority", GOOD_AUTHORITIES)
def test_an_absolute_form_authority_is_the_apps_host(run, authority):
    rs, closed, served, env = _served(
        run, b"GET http://" + authority + b"/p?q HTTP/1.1\r\nHost: good\r\n\r\n")
    assert [r.status for r in rs] == [200] and served == 1
    assert env["HTTP_HOST"] == authority.decode("latin-1")
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/p", "q")


@pytest.mark.parametrize("authority", BAD_AUTHORITIES + [
    b"example.com",      # no port
    b"example.com:",     # an empty one
    b"[::1]",
])
def test_a_bad_connect_target_is_refused(run, authority):
    _refused(run, b"CONNECT " + authority + b" HTTP/1.1\r\nHost: good\r\n\r\n")


@pytest.mark.parametrize("authority", [a for a in GOOD_AUTHORITIES if a[-1:].isdigit()])
def test_a_connect_target_with_a_port_is_the_apps(run, authority):
    rs, closed, served, env = _served(
        run, b"CONNECT " + authority + b" HTTP/1.1\r\nHost: good\r\n\r\n")
    assert [r.status for r in rs] == [200] and served == 1
    assert env["REQUEST_METHOD"] == "CONNECT"


# -- against a reference ------------------------------------------------------

_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_IPV_FUTURE = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+")


def _reference(authority, port_needed):
    """RFC 3986 3.2.2-3 read by a regular expression and ipaddress."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return False
        literal, rest = authority[1:close], authority[close + 1:]
        if not _IPV_FUTURE.fullmatch(literal):
            if "%" in literal:  # no zone ids in http URIs (RFC 9110 4.2.1)
                return False
            try:
                ipaddress.IPv6Address(literal)
            except ValueError:
                return False
    else:
        host = authority.partition(":")[0]
        if not _REG_NAME.fullmatch(host):
            return False
        rest = authority[len(host):]
    if rest in ("", ":"):
        return not port_needed
    return (rest[0] == ":" and rest[1:].isascii() and rest[1:].isdigit()
            and 1 <= int(rest[1:]) <= 65535)


def _random_authorities(count, seed):
    """A host of pieces where a check could slip, bracketed or not, then a
    port of such pieces or none; one in five is all pieces, anywhere."""
    rng = random.Random(seed)
    pieces = ["a", "Z", "0", "9", "f", "v", "V", ".", "-", "_", "~", "!", "$",
              "'", "(", "*", "+", ",", ";", "=", "%", "%4", "%4f", "%zz", ":",
              "::", "[", "]", "@", "^", "\"", "{", "1", "ffff", "1.2.3.4",
              "01.2.3.4", "::1", "fe80::", "v1.", "%25eth0", "example.com"]
    ports = ["", ":", ":0", ":1", ":80", ":65535", ":65536", ":099", ":8x",
             ":-1", ":1:2", ":99999999999"]

    def some(choices, most):
        return "".join(rng.choice(choices) for _ in range(rng.randint(1, most)))
    for _ in range(count):
        shape = rng.random()
        if shape < 0.2:
            yield some(pieces + ports, 6)
            continue
        host = some(pieces, 4)
        yield ("[" + host + "]" if shape < 0.6 else host) + rng.choice(ports)


def test_the_checks_agree_with_a_reference_over_random_authorities(run):
    """1,000 authorities made at random from the pieces where a check could
    slip, each as a Host header, an absolute-form target and a CONNECT's
    target: served exactly where the reference takes it."""
    async def main():
        wrong = []
        async with serving(env_app) as (port, srv):
            for authority in _random_authorities(1000, seed=1703):
                raw = authority.encode()
                for head, needed in (
                        (b"GET / HTTP/1.1\r\nHost: " + raw, False),
                        (b"GET http://" + raw + b"/ HTTP/1.1\r\nHost: x", False),
                        (b"CONNECT " + raw + b" HTTP/1.1\r\nHost: x", True)):
                    request = head + b"\r\nConnection: close\r\n\r\n"
                    rs, closed = await exchange(port, request, count=1)
                    status = rs[0].status if rs else None
                    expected = _reference(authority, needed)
                    if needed and authority.startswith("*"):
                        expected = False  # read as the asterisk form's, no host
                    if (status == 200) != expected:
                        wrong.append((request, status))
        return wrong
    assert run(main()) == []
