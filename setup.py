"""Builds aiopyramid._core from csrc/.

Switches (environment variables):
  AIOPYRAMID_DEBUG=1     -O0 -g, asserts on, -Werror
  AIOPYRAMID_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
  AIOPYRAMID_LLHTTP=system|fetch   where llhttp comes from (default: a
                         system llhttp found with pkg-config, else fetched)

llhttp (the HTTP/1.1 parser of Node.js) is never part of this repository:
its C sources come from the pinned, hash-checked ``llhttp`` sdist on PyPI
(``pip download``), unpacked into build/llhttp-<version>/, or from a system
libllhttp found with pkg-config.
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

LLHTTP_VERSION = "9.3.0.0"
LLHTTP_SHA256 = "0d989363e7fb6f270b9d49956e7a3945c26778f8c70a166815264309ac6a8295"
LLHTTP_FILES = ("llhttp.h", "api.c", "http.c", "llhttp.c")
HERE = os.path.dirname(os.path.abspath(__file__))


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


def llhttp_fetch():
    """The directory holding llhttp's sources, fetched when missing."""
    dest = os.path.join(HERE, "build", "llhttp-" + LLHTTP_VERSION)
    if all(os.path.exists(os.path.join(dest, f)) for f in LLHTTP_FILES):
        return dest
    name = "llhttp-%s.tar.gz" % LLHTTP_VERSION
    tmp = tempfile.mkdtemp(prefix="aiopyramid-llhttp-")
    try:
        print("aiopyramid: fetching llhttp %s sources (pip download "
              "llhttp==%s, sha256 %s)" % (LLHTTP_VERSION, LLHTTP_VERSION,
                                          LLHTTP_SHA256))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary", ":all:", "--no-build-isolation", "-q",
               "-d", tmp, "llhttp==" + LLHTTP_VERSION]
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(
                "aiopyramid: could not fetch llhttp %s's sources (%s: %s). "
                "The build needs PyPI (pip download llhttp==%s), or a system "
                "llhttp that pkg-config finds as 'libllhttp', or the sdist "
                "%s unpacked so that build/llhttp-%s/ holds %s."
                % (LLHTTP_VERSION, " ".join(cmd), e, LLHTTP_VERSION, name,
                   LLHTTP_VERSION, ", ".join(LLHTTP_FILES)))
        path = os.path.join(tmp, name)
        if not os.path.exists(path):
            sys.exit("aiopyramid: pip download gave no %s in %s" % (name, tmp))
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != LLHTTP_SHA256:
            sys.exit("aiopyramid: %s has sha256 %s, expected %s; refusing to "
                     "build with it" % (name, digest, LLHTTP_SHA256))
        os.makedirs(dest, exist_ok=True)
        prefix = "llhttp-%s/lib/" % LLHTTP_VERSION
        with tarfile.open(path) as tar:
            for f in LLHTTP_FILES:
                member = tar.extractfile(prefix + f)
                with open(os.path.join(dest, f), "wb") as out:
                    shutil.copyfileobj(member, out)
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

# llhttp: a system library, or its fetched sources built as a static library
# with flags of their own (generated code, not held to our -Werror)
libraries = []
library_dirs = []
llhttp_include = []
source = os.environ.get("AIOPYRAMID_LLHTTP", "")
system = llhttp_system() if source in ("", "system") else None
if source == "system" and system is None:
    sys.exit("aiopyramid: AIOPYRAMID_LLHTTP=system, but pkg-config finds no "
             "libllhttp")
if system is not None:
    llhttp_include, library_dirs, lib_names = system
    libraries = lib_names
else:
    llhttp_dir = llhttp_fetch()
    llhttp_include = [llhttp_dir]
    llhttp_cflags = ["-O2", "-fPIC", "-w"]
    if flag("AIOPYRAMID_SANITIZE"):
        llhttp_cflags += ["-fsanitize=address,undefined",
                          "-fno-omit-frame-pointer"]
    libraries = [("aiopyramid_llhttp", {
        "sources": [os.path.join(llhttp_dir, f) for f in
                    ("api.c", "http.c", "llhttp.c")],
        "include_dirs": [llhttp_dir],
        "cflags": llhttp_cflags,
    })]

core = Extension(
    "aiopyramid._core",
    sources=sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc"] + llhttp_include + greenlet_include_dirs(),
    library_dirs=library_dirs,
    libraries=[] if system is None else libraries,
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
    undef_macros=undef_macros,
)



class build_ext(_build_ext):
    """Builds the fetched llhttp static library first, also for a bare
    ``setup.py build_ext`` and for editable installs."""

    def run(self):
        if self.distribution.has_c_libraries():
            clib = self.get_finalized_command("build_clib")
            clib.force = self.force
            self.run_command("build_clib")
        super().run()


setup(ext_modules=[core], cmdclass={"build_ext": build_ext},
      libraries=[] if system is not None else libraries)
