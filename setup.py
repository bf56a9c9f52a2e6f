"""Builds aiopyramid._core from csrc/.

Switches (environment variables):
  AIOPYRAMID_DEBUG=1     -O0 -g, asserts on, -Werror
  AIOPYRAMID_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
  AIOPYRAMID_LLHTTP=system|fetch|offline   where llhttp comes from:
      (unset)  a system llhttp found with pkg-config, else its sources
      system   only a system llhttp (pkg-config libllhttp)
      fetch    only llhttp's sources, fetched when not already here
      offline  only llhttp's sources already here (an sdist carries them,
               an earlier build fetched them); never the network

llhttp (the HTTP/1.1 parser of Node.js) is never part of this repository:
its C sources come from the pinned, hash-checked ``llhttp`` sdist on PyPI
(``pip download``, or the index's JSON API in build environments without
pip), unpacked into build/llhttp-<version>/ and checked file by file, or
from a system libllhttp found with pkg-config.  Only ``build_ext`` needs llhttp, so only
it (and ``sdist``, which packs the verified sources into
third_party/llhttp-<version>/ so that an sdist builds offline) may fetch;
``egg_info`` and the other metadata commands never touch the network.
"""
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.sdist import sdist as _sdist

LLHTTP_VERSION = "9.3.0.0"
LLHTTP_SHA256 = "0d989363e7fb6f270b9d49956e7a3945c26778f8c70a166815264309ac6a8295"
# the files as the sdist above holds them (lib/, and its LICENSE): a copy
# (an sdist's third_party/, an earlier fetch's build/) is checked against
# these before it is compiled
LLHTTP_FILE_SHA256 = {
    "llhttp.h": "c15c1952dbc6f83476aa51a7d4ed07d6c1908a754812ef27a52f726773144e27",
    "api.c": "2c8e26df05af120323130b388d9afd102f793fba84f59f3765f018d24144eb78",
    "http.c": "a1f2b23168f8e9b5bfa464c89027d3ca259fc649ae3d7e72bfff997d1aeb5d72",
    "llhttp.c": "33a53046b3bc81ca7d5eaffe61eb87e7bf0c9bf3ba48df6d93279a7ee03afcd3",
    "LICENSE": "6f08227589e22ce445925913630be296adc0c55e5ab3457df0af77d846a77053",
}
HERE = os.path.dirname(os.path.abspath(__file__))
LLHTTP_BUNDLED = os.path.join("third_party", "llhttp-" + LLHTTP_VERSION)
LLHTTP_FETCHED = os.path.join("build", "llhttp-" + LLHTTP_VERSION)


def greenlet_include_dirs():
    """greenlet has no get_include(): its header ships in the package folder
    (recent wheels) and under <prefix>/include/site/pythonX.Y/greenlet."""
    dirs = []
    try:
        import greenlet
    except ImportError:
        greenlet = None
    if greenlet is not None:
        pkg = os.path.dirname(greenlet.__file__)
        if os.path.exists(os.path.join(pkg, "greenlet.h")):
            dirs.append(os.path.dirname(pkg))  # so <greenlet/greenlet.h> works
    version = "python%d.%d" % sys.version_info[:2]
    for prefix in {sys.prefix, sys.base_prefix, sysconfig.get_paths()["data"]}:
        site = os.path.join(prefix, "include", "site", version)
        if os.path.exists(os.path.join(site, "greenlet", "greenlet.h")):
            dirs.append(site)
    if not dirs:
        sys.exit(
            "aiopyramid: greenlet's C header (greenlet/greenlet.h) was not "
            "found; install greenlet>=3 first (pip install 'greenlet>=3')"
        )
    return dirs


def llhttp_system():
    """(include_dirs, library_dirs, libraries) of a system llhttp, or None."""
    try:
        out = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "libllhttp"],
            capture_output=True, text=True, check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    inc = [f[2:] for f in out if f.startswith("-I")]
    libdirs = [f[2:] for f in out if f.startswith("-L")]
    libs = [f[2:] for f in out if f.startswith("-l")] or ["llhttp"]
    print("aiopyramid: using the system llhttp (pkg-config libllhttp)")
    return inc, libdirs, libs


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def llhttp_verified(folder):
    """True when folder holds llhttp's files, each with its pinned sha256;
    an error when it holds them with other contents."""
    paths = {f: os.path.join(HERE, folder, f) for f in LLHTTP_FILE_SHA256}
    if not all(os.path.exists(p) for p in paths.values()):
        return False
    for f, p in paths.items():
        digest = sha256_of(p)
        if digest != LLHTTP_FILE_SHA256[f]:
            sys.exit("aiopyramid: %s has sha256 %s, expected %s (llhttp %s); "
                     "refusing to build with it: delete %s to fetch it anew"
                     % (p, digest, LLHTTP_FILE_SHA256[f], LLHTTP_VERSION,
                        os.path.join(HERE, folder)))
    return True


def llhttp_sources(allow_fetch):
    """The directory holding llhttp's verified sources: the sdist's copy, an
    earlier fetch, or (allow_fetch) a fresh fetch."""
    for folder in (LLHTTP_BUNDLED, LLHTTP_FETCHED):
        if llhttp_verified(folder):
            return os.path.join(HERE, folder)
    if not allow_fetch:
        sys.exit(
            "aiopyramid: llhttp %s's sources are not here and "
            "AIOPYRAMID_LLHTTP=offline forbids fetching them. Build from an "
            "sdist (it carries them in %s), or fetch them first with network "
            "access (python setup.py build_ext), or install a system llhttp "
            "that pkg-config finds as 'libllhttp' and set "
            "AIOPYRAMID_LLHTTP=system." % (LLHTTP_VERSION, LLHTTP_BUNDLED))
    return llhttp_fetch()


def llhttp_fetch_failed(why):
    sys.exit(
        "aiopyramid: could not fetch llhttp %s's sources (%s). The build "
        "needs PyPI (pip download llhttp==%s), or aiopyramid's own sdist (it "
        "carries them), or a system llhttp that pkg-config finds as "
        "'libllhttp'." % (LLHTTP_VERSION, why, LLHTTP_VERSION))


def llhttp_download(name, tmp):
    """Downloads the sdist name into tmp from the package index (PyPI, or
    PIP_INDEX_URL) with its JSON simple API (PEP 691), where there is no pip
    to ask; the caller checks its sha256."""
    import json
    import ssl
    import urllib.parse
    import urllib.request

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple/")
    page = urllib.parse.urljoin(index.rstrip("/") + "/", "llhttp/")
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT"))
    try:
        req = urllib.request.Request(
            page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60, context=context) as r:
            files = json.load(r)["files"]
        url = next((f["url"] for f in files if f["filename"] == name), None)
        if url is None:
            llhttp_fetch_failed("%s lists no %s" % (page, name))
        with urllib.request.urlopen(urllib.parse.urljoin(page, url),
                                    timeout=60, context=context) as r, \
                open(os.path.join(tmp, name), "wb") as out:
            shutil.copyfileobj(r, out)
    except (OSError, ValueError, KeyError) as e:
        llhttp_fetch_failed("%s: %s" % (page, e))


def llhttp_fetch():
    """The directory holding llhttp's sources, fetched when missing."""
    dest = os.path.join(HERE, LLHTTP_FETCHED)
    name = "llhttp-%s.tar.gz" % LLHTTP_VERSION
    tmp = tempfile.mkdtemp(prefix="aiopyramid-llhttp-")
    try:
        print("aiopyramid: fetching llhttp %s sources (the sdist "
              "llhttp==%s from the package index, sha256 %s)"
              % (LLHTTP_VERSION, LLHTTP_VERSION, LLHTTP_SHA256))
        try:
            import pip  # noqa: F401  (build's isolated environments lack it)
        except ImportError:
            llhttp_download(name, tmp)
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
                   "--no-binary", ":all:", "--no-build-isolation", "-q",
                   "-d", tmp, "llhttp==" + LLHTTP_VERSION]
            try:
                subprocess.run(cmd, check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                llhttp_fetch_failed("%s: %s" % (" ".join(cmd), e))
        path = os.path.join(tmp, name)
        if not os.path.exists(path):
            sys.exit("aiopyramid: the download gave no %s in %s" % (name, tmp))
        digest = sha256_of(path)
        if digest != LLHTTP_SHA256:
            sys.exit("aiopyramid: %s has sha256 %s, expected %s; refusing to "
                     "build with it" % (name, digest, LLHTTP_SHA256))
        os.makedirs(dest, exist_ok=True)
        prefix = "llhttp-%s/lib/" % LLHTTP_VERSION
        with tarfile.open(path) as tar:
            for f in LLHTTP_FILE_SHA256:
                member = tar.extractfile(
                    ("llhttp-%s/" % LLHTTP_VERSION if f == "LICENSE"
                     else prefix) + f)
                with open(os.path.join(dest, f), "wb") as out:
                    shutil.copyfileobj(member, out)
        if not llhttp_verified(LLHTTP_FETCHED):
            sys.exit("aiopyramid: %s lacks llhttp's files" % name)
        print("aiopyramid: llhttp %s sources (sha256 verified) in %s"
              % (LLHTTP_VERSION, dest))
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def flag(name):
    return os.environ.get(name, "") not in ("", "0")


extra_compile_args = ["-Wall", "-Wextra", "-Wno-unused-parameter",
                      "-Wno-missing-field-initializers", "-std=c11"]
extra_link_args = []
undef_macros = []
if flag("AIOPYRAMID_DEBUG") or flag("AIOPYRAMID_SANITIZE"):
    extra_compile_args += ["-O0", "-g3", "-Werror"]
    undef_macros.append("NDEBUG")
else:
    extra_compile_args += ["-O2"]
if flag("AIOPYRAMID_SANITIZE"):
    # No stack redzones: greenlet switches by copying raw stack slices to
    # the heap, and ASan would flag that copy reading our frames' redzones.
    # Heap and global checks, and UBSan, stay on.
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined", "--param=asan-stack=0"]
    extra_compile_args += san
    extra_link_args += san

core = Extension(
    "aiopyramid._core",
    # csrc/websocket/fuzz/ holds the fuzz harness's own main: not the module's
    sources=sorted(f for f in glob.glob("csrc/**/*.c", recursive=True)
                   if "fuzz" not in f.split(os.sep)),
    depends=sorted(glob.glob("csrc/**/*.h", recursive=True)),
    include_dirs=["csrc"],  # + llhttp's and greenlet's: build_ext adds them
    libraries=["z"],        # zlib, for permessage-deflate (zlib1g-dev)
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
    undef_macros=undef_macros,
)


class build_ext(_build_ext):
    """Finds llhttp (a system library, or its verified sources built as a
    static library with flags of their own: generated code, not held to our
    -Werror) and greenlet's header, then builds _core.  The one command that
    may fetch llhttp; also runs for editable installs."""

    def run(self):
        source = os.environ.get("AIOPYRAMID_LLHTTP", "")
        if source not in ("", "system", "fetch", "offline"):
            sys.exit("aiopyramid: AIOPYRAMID_LLHTTP=%s; expected system, "
                     "fetch or offline (or unset)" % source)
        system = llhttp_system() if source in ("", "system") else None
        if source == "system" and system is None:
            sys.exit("aiopyramid: AIOPYRAMID_LLHTTP=system, but pkg-config "
                     "finds no libllhttp")
        greenlet = greenlet_include_dirs()
        if system is not None:
            include_dirs, library_dirs, libraries = system
        else:
            llhttp_dir = llhttp_sources(allow_fetch=source != "offline")
            cflags = ["-O2", "-fPIC", "-w"]
            if flag("AIOPYRAMID_SANITIZE"):
                cflags += ["-fsanitize=address,undefined",
                           "-fno-omit-frame-pointer"]
            self.distribution.libraries = [("aiopyramid_llhttp", {
                "sources": [os.path.join(llhttp_dir, f) for f in
                            ("api.c", "http.c", "llhttp.c")],
                "include_dirs": [llhttp_dir],
                "cflags": cflags,
            })]
            # built first; _build_ext.run links it (has_c_libraries())
            self.get_finalized_command("build_clib").force = self.force
            self.run_command("build_clib")
            include_dirs, library_dirs, libraries = [llhttp_dir], [], []
        for ext in self.extensions:
            ext.include_dirs += include_dirs + greenlet
            ext.library_dirs += library_dirs
            ext.libraries += libraries
        super().run()


class sdist(_sdist):
    """Packs llhttp's verified sources into third_party/, so that building
    from the sdist needs no network (build_ext finds them there)."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        source = os.environ.get("AIOPYRAMID_LLHTTP", "")
        llhttp_dir = llhttp_sources(allow_fetch=source != "offline")
        dest = os.path.join(base_dir, LLHTTP_BUNDLED)
        os.makedirs(dest, exist_ok=True)
        for f in LLHTTP_FILE_SHA256:
            shutil.copyfile(os.path.join(llhttp_dir, f), os.path.join(dest, f))


setup(ext_modules=[core], cmdclass={"build_ext": build_ext, "sdist": sdist})
