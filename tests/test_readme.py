"""Every code block of README.md runs, as printed, one test per block.

A block is a fenced one (indented code blocks are refused); the HTML
comment on the line right before its fence says how it is run:

  (none, python)               run as a script in a fresh interpreter
  <!-- test: with previous --> python: appended to the block before it
                               (and what that one continued), run as one
  <!-- test: with config -->   python: run after ``config = Configurator()``
                               with aiopyramid included, then committed
  <!-- test: file PATH -->     written to PATH in a project folder that the
                               later shell and serve blocks run in (python
                               files are compiled, ini files parsed here)
  <!-- test: shell -->         bash, in that folder, must exit 0
  <!-- test: serve PATH -->    a command that serves: started in that
                               folder, GET PATH must answer 200, then it is
                               stopped. gunicorn gets a free port through
                               GUNICORN_CMD_ARGS; in ini files the port
                               6543 stands for that free port
  <!-- test: skip REASON -->   not run, for the reason given

The project folder's files are those of every ``file`` block above the
block under test, so each block is a test of its own.
"""
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from .conftest import ROOT, ServerProcess, free_port

README = os.path.join(ROOT, "README.md")
MARKER = re.compile(r"^<!--\s*test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")
TIMEOUT = 120
CONFIG_PRELUDE = (
    "from pyramid.config import Configurator\n"
    "config = Configurator(settings={})\n"
    "config.include('aiopyramid')\n")


class Block:
    def __init__(self, line, lang, marker, text):
        self.line, self.lang, self.text = line, lang, text
        # "kind arg", or python's "with previous" and "with config", which
        # may come together: "with previous, with config"
        self.directives = [d.strip() for d in (marker or "").split(",") if d.strip()]
        self.with_previous = "with previous" in self.directives
        self.with_config = "with config" in self.directives
        withs = self.with_previous + self.with_config
        self.kind, _, self.arg = (self.directives[0] if self.directives and not withs
                                  else "").partition(" ")
        self.arg = self.arg.strip()
        self.previous = None  # the python block before this one

    @property
    def id(self):
        return "L%d-%s%s" % (self.line, self.lang or "text",
                             "-" + (self.kind or "with") if self.directives else "")

    def chain(self):
        """The source of this block and of those it continues."""
        parts = [self.text]
        block = self
        while block.with_previous:
            block = block.previous
            assert block is not None, "'with previous' on the first python block"
            parts.insert(0, block.text)
        return "\n".join(parts)


def parse(path=README):
    """(blocks, problems): the fenced blocks, and any indented code block."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    blocks, problems = [], []
    i, last_python = 0, None
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            if (lines[i].startswith("    ") and i and not lines[i - 1].strip()
                    and not _in_list(lines, i)):
                problems.append("line %d: an indented code block; fence it and "
                                "mark how it is run" % (i + 1))
            i += 1
            continue
        start = i
        marker = MARKER.match(lines[i - 1]) if i else None
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        block = Block(start + 1, m.group(1), marker.group(1) if marker else None,
                      "\n".join(body) + "\n")
        if block.lang == "python":
            block.previous = last_python
            last_python = block
        blocks.append(block)
    return blocks, problems


def _in_list(lines, i):
    """True when line i continues a list item (indented under it)."""
    j = i - 1
    while j >= 0 and (not lines[j].strip() or lines[j].startswith(" ")):
        j -= 1
    return j >= 0 and re.match(r"^(\s*[-*+]|\s*\d+\.)\s", lines[j]) is not None


BLOCKS, PROBLEMS = parse()


def test_readme_has_no_unmarked_or_indented_blocks():
    assert not PROBLEMS, "\n".join(PROBLEMS)
    for block in BLOCKS:
        if block.lang != "python":
            assert block.kind in ("file", "shell", "serve", "skip"), (
                "README line %d: a %s block needs a '<!-- test: ... -->' marker "
                "saying how it is run" % (block.line, block.lang or "plain"))
        if block.kind == "skip":
            assert block.arg, "README line %d: say why it is skipped" % block.line


def project(tmp_path, upto, port=None):
    """The project folder with the files of the file blocks before upto."""
    folder = tmp_path / "project"
    folder.mkdir(exist_ok=True)
    for block in BLOCKS:
        if block is upto:
            break
        if block.kind == "file":
            path = folder / block.arg
            path.parent.mkdir(parents=True, exist_ok=True)
            text = block.text
            if port is not None and path.suffix == ".ini":
                text = re.sub(r"\b6543\b", str(port), text)
            path.write_text(text)
    return folder


def env():
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "PYTHONDEVMODE", "PYTHONWARNINGS")
         and not k.startswith("GUNICORN_")}
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    return e


def check(proc_args, cwd, **kw):
    out = subprocess.run(proc_args, cwd=cwd, env=kw.pop("env", env()), capture_output=True,
                         text=True, timeout=TIMEOUT, **kw)
    assert out.returncode == 0, "exited %s\n--- stdout\n%s\n--- stderr\n%s" % (
        out.returncode, out.stdout[-6000:], out.stderr[-6000:])
    return out


def serve(block, tmp_path):
    port = free_port()
    folder = project(tmp_path, block, port=port)
    e = env()
    e["GUNICORN_CMD_ARGS"] = "--bind 127.0.0.1:%d --workers 1 --no-control-socket" % port
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", "-c", block.text], cwd=folder, env=e,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready(block.arg, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block, tmp_path):
    if block.kind == "skip":
        pytest.skip(block.arg)
    if block.kind == "file":
        if block.arg.endswith(".py"):
            compile(block.text, block.arg, "exec")
        elif block.arg.endswith(".ini"):
            import configparser

            configparser.ConfigParser().read_string(block.text)
        return
    if block.kind == "shell":
        check(["bash", "-e", "-c", block.text], project(tmp_path, block))
        return
    if block.kind == "serve":
        serve(block, tmp_path)
        return
    assert block.lang == "python", block.id
    assert not block.kind, "unknown marker %r at README line %d" % (block.directives, block.line)
    assert len(block.directives) == block.with_previous + block.with_config, block.directives
    source = block.chain()
    if block.with_config:
        source = CONFIG_PRELUDE + source + "\nconfig.commit()\n"
    script = tmp_path / "block.py"
    script.write_text(source)
    check([sys.executable, str(script)], project(tmp_path, block))


def test_executor_threads_are_named_as_the_readme_says(make_app):
    import asyncio

    from .conftest import get

    def name(request):
        from pyramid.response import Response

        return Response(threading.current_thread().name)

    app = make_app(lambda c: (c.add_route("n", "/n"), c.add_view(name, route_name="n")),
                   settings={"aiopyramid.executor_threads": "2"})
    body = asyncio.run(get(app, "/n")).text
    assert re.fullmatch(r"aiopyramid-view_\d+", body), body
    with open(README, encoding="utf-8") as f:
        assert "(named `aiopyramid-view_0`, `aiopyramid-view_1`, ...)" in f.read()


def test_make_run_serves_and_says_how_to_stop(tmp_path):
    """What ``make run`` runs: examples/serve.py, which says how to stop it
    once it is ready."""
    port = free_port()
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "examples", "serve.py"), "--port", str(port),
             "--no-control-socket"],
            env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready("/hello", timeout=60)
        log_text = server.log()
        assert "press Ctrl-C to stop" in log_text, log_text
        assert "pkg_resources" not in log_text, log_text
    finally:
        server.stop()


def test_our_import_hides_only_pyramids_pkg_resources_warning(tmp_path):
    code = textwrap.dedent("""\
        import warnings
        import aiopyramid.gunicorn.worker  # imports Pyramid
        warnings.warn("a user's own warning")
        """)
    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "pkg_resources" not in out.stderr
    assert "a user's own warning" in out.stderr
    # asked for warnings: nothing is hidden
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], env=env(),
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert "pkg_resources is deprecated" in out.stderr


def test_demo_ini_serves_with_pserve_as_the_readme_says(tmp_path):
    """README: ``PYTHONPATH=examples .venv/bin/pserve examples/development.ini``
    (here on a free port instead of 6543)."""
    with open(README, encoding="utf-8") as f:
        assert "`PYTHONPATH=examples .venv/bin/pserve examples/development.ini`" in f.read()
    port = free_port()
    with open(os.path.join(ROOT, "examples", "development.ini"), encoding="utf-8") as f:
        ini = re.sub(r"\b6543\b", str(port), f.read())
    (tmp_path / "development.ini").write_text(ini)
    e = env()
    e["PYTHONPATH"] = os.path.join(ROOT, "examples")
    log_path = tmp_path / "pserve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "pserve"), "development.ini"],
            cwd=tmp_path, env=e, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready("/hello", timeout=60)
    finally:
        server.stop()
