"""Packaging: the metadata commands never fetch llhttp; ``python -m build``
gives a wheel and an sdist that carries llhttp's verified sources, and each
installs into a fresh virtualenv (the sdist built there with no package
index reachable at all) and serves a request."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from packaging.version import Version

import aiopyramid

from .conftest import ROOT, ServerProcess, free_port

LLHTTP_DIR = "llhttp-9.3.0.0"
SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}


def no_index_env(**extra):
    """The environment for a step that must not reach any package index:
    pip's configuration files and its find-links are dropped, the index is
    off and points nowhere, and aiopyramid's own switch forbids a fetch."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1",
               PIP_INDEX_URL="http://127.0.0.1:9/simple/",
               AIOPYRAMID_LLHTTP="offline")
    env.update(extra)
    return env


def clean_env():
    """What a user's shell would have: none of the suite's switches (nor the
    sanitizer run's preloaded runtime: what is built here is a plain build)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AIOPYRAMID_", "PYTHON", "ASAN_", "UBSAN_"))
            and k != "LD_PRELOAD"}


def copy_tree(dest, with_llhttp):
    """The project's sources (no venv, no build products) in dest; with the
    llhttp sources an earlier build fetched when with_llhttp."""
    def ignore(folder, names):
        return [n for n in names if n in SKIP or n.endswith((".so", ".egg-info"))
                or n.startswith(".build")]

    shutil.copytree(ROOT, dest, ignore=ignore)
    if with_llhttp:
        fetched = os.path.join(ROOT, "build", LLHTTP_DIR)
        assert os.path.isdir(fetched), "make build fetches llhttp into build/ first"
        shutil.copytree(fetched, os.path.join(dest, "build", LLHTTP_DIR))
    return dest


def run(cmd, timeout=300, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert out.returncode == 0, "%s exited %s:\n%s\n%s" % (
        " ".join(map(str, cmd)), out.returncode, out.stdout[-4000:], out.stderr[-4000:])
    return out


def test_version_is_single_sourced_and_above_the_original():
    from importlib.metadata import version

    assert aiopyramid.__version__ == version("aiopyramid")
    assert Version(aiopyramid.__version__) >= Version("1.0.0.dev0") > Version("0.4.99")


@pytest.mark.parametrize("command", [["egg_info"], ["--version"]])
def test_metadata_commands_never_fetch_llhttp(tmp_path, command):
    src = copy_tree(tmp_path / "src", with_llhttp=False)
    out = run([sys.executable, "setup.py", "-q", *command], cwd=src,
              env=no_index_env(AIOPYRAMID_LLHTTP=""), timeout=120)
    assert "fetching llhttp" not in out.stdout + out.stderr
    assert not os.path.exists(src / "build" / LLHTTP_DIR)
    if command == ["--version"]:
        assert out.stdout.strip() == aiopyramid.__version__


def test_offline_build_without_llhttp_sources_says_what_to_do(tmp_path):
    src = copy_tree(tmp_path / "src", with_llhttp=False)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext"], cwd=src,
                         env=no_index_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "AIOPYRAMID_LLHTTP=offline forbids fetching them" in out.stderr
    assert "Build from an sdist" in out.stderr


APP = textwrap.dedent("""\
    import aiopyramid
    from pyramid.config import Configurator
    from pyramid.response import Response


    async def hello(request):
        return Response("%s %s" % (aiopyramid.__version__, aiopyramid.__file__))


    def main():
        with Configurator() as config:
            config.include("aiopyramid")
            config.add_route("hello", "/hello")
            config.add_view(hello, route_name="hello")
            return config.make_wsgi_app()
    """)


def serve_once(venv, tmp_path):
    """Serves APP with the venv's gunicorn and aiopyramid's worker; returns
    the body of GET /hello."""
    app_dir = tmp_path / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "hello_app.py").write_text(APP)
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "gunicorn", "--bind", "127.0.0.1:%d" % port,
             "--workers", "1", "--no-control-socket", "--worker-class",
             "aiopyramid.gunicorn.worker.AsyncGunicornWorker", "hello_app:main()"],
            cwd=app_dir, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    server = ServerProcess(proc, port, log_path)
    try:
        server.wait_ready("/hello", timeout=60)
        from .conftest import http_get

        status, body = http_get(port, "/hello")
        assert status == 200
        return body.decode()
    finally:
        server.stop()


@pytest.mark.slow
def test_build_gives_wheel_and_offline_sdist_that_install_and_serve(tmp_path):
    pytest.importorskip("build", reason="the test extra installs build")
    src = copy_tree(tmp_path / "src", with_llhttp=True)
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)],
        env=clean_env(), timeout=300)
    version = aiopyramid.__version__
    sdist = dist / ("aiopyramid-%s.tar.gz" % version)
    wheels = list(dist.glob("aiopyramid-%s-*.whl" % version))
    assert sdist.exists() and len(wheels) == 1, os.listdir(dist)
    listing = run(["tar", "tzf", str(sdist)]).stdout.split()
    for name in ("api.c", "http.c", "llhttp.c", "llhttp.h", "LICENSE"):
        assert "aiopyramid-%s/third_party/%s/%s" % (version, LLHTTP_DIR, name) in listing

    # the wheel, with its dependencies from the registry
    wheel_venv = tmp_path / "wheel-venv"
    run([sys.executable, "-m", "venv", str(wheel_venv)])
    run([str(wheel_venv / "bin" / "pip"), "install", "-q", "%s[gunicorn]" % wheels[0]],
        env=clean_env())
    body = serve_once(wheel_venv, tmp_path / "wheel")
    assert body.startswith(version + " " + str(wheel_venv)), body

    # the sdist: dependencies from the registry first, then the build itself
    # with no index reachable, so nothing can fetch llhttp
    sdist_venv = tmp_path / "sdist-venv"
    run([sys.executable, "-m", "venv", str(sdist_venv)])
    pip = str(sdist_venv / "bin" / "pip")
    run([pip, "install", "-q", "setuptools>=77,<82", "wheel", "greenlet>=3", "pyramid>=2.0",
         "gunicorn>=22"], env=clean_env())
    out = run([pip, "install", "-v", "--no-build-isolation", "--no-deps", str(sdist)],
              env=no_index_env())
    assert "fetching llhttp" not in out.stdout + out.stderr
    assert "third_party/%s" % LLHTTP_DIR in out.stdout + out.stderr
    body = serve_once(sdist_venv, tmp_path / "sdist")
    assert body.startswith(version + " " + str(sdist_venv)), body


def test_tampered_llhttp_sources_are_refused(tmp_path):
    src = copy_tree(tmp_path / "src", with_llhttp=True)
    bundled = src / "third_party" / LLHTTP_DIR
    shutil.copytree(src / "build" / LLHTTP_DIR, bundled)
    with open(bundled / "http.c", "a") as f:
        f.write("/* changed */\n")
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext"], cwd=src,
                         env=no_index_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "http.c has sha256" in out.stderr and "refusing to build with it" in out.stderr


@pytest.mark.slow
def test_sdist_from_a_fresh_clone_fetches_llhttp_in_an_isolated_build(tmp_path):
    """``python -m build --sdist`` on a clone that never built: the isolated
    build environment has no pip, and the sdist still gets llhttp's
    verified sources (from the package index)."""
    src = copy_tree(tmp_path / "src", with_llhttp=False)
    dist = tmp_path / "dist"
    out = run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(src)],
              env=clean_env())
    assert "fetching llhttp" in out.stdout + out.stderr
    sdist = dist / ("aiopyramid-%s.tar.gz" % aiopyramid.__version__)
    listing = run(["tar", "tzf", str(sdist)]).stdout.split()
    assert "aiopyramid-%s/third_party/%s/llhttp.c" % (aiopyramid.__version__, LLHTTP_DIR) in listing
