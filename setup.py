"""Builds aiopyramid._core from csrc/.

Switches (environment variables):
  AIOPYRAMID_DEBUG=1     -O0 -g, asserts on, -Werror
  AIOPYRAMID_SANITIZE=1  AddressSanitizer + UndefinedBehaviorSanitizer
"""
import glob
import os
import sys
import sysconfig

from setuptools import Extension, setup


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
    sources=sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=["csrc"] + greenlet_include_dirs(),
    extra_compile_args=extra_compile_args,
    extra_link_args=extra_link_args,
    undef_macros=undef_macros,
)

setup(ext_modules=[core])
